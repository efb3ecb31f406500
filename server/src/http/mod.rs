//! HTTP/1.1 on owned buffers: `parse` turns bytes into a typed `RequestHead` (or a typed
//! error with its status), `body` frames and bounds request bodies (Content-Length or
//! chunked), `respond` writes a `Reply` into the connection's output buffer.

pub mod body;
pub mod parse;
pub mod respond;
