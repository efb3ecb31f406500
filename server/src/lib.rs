//! AgentRegistry's server: thread-per-core HTTP, the npm protocol, and the CLI.
//!
//! The request path, hop by hop (each hop one function in its own file):
//! 1. `cores`: one monoio runtime per core accepts on the shared listener.
//! 2. `conn::serve`: reads into an owned buffer, `http::parse::head` -> `RequestHead`.
//! 3. `route::route(method, target)` -> `Route` (pure).
//! 4. `conn` reads the bounded body (`http::body`), then `npm::handle(route, head, body, core)`.
//! 5. Reads: `Shared::shard(name)` (= `engine::shard::shard_for`) -> the core's
//!    `PackageCache` -> pre-rendered bytes. Writes: `writer::Writers::submit` to the shard's
//!    writer thread -> `ShardStore::apply_batch` (group commit) -> durable reply.
//! 6. `http::respond::write_head` + body -> the connection's output buffer.

pub mod admin;
pub mod api_error;
pub mod auth;
pub mod blob_read;
pub mod cache;
pub mod config;
pub mod config_cli;
pub mod conn;
pub mod cores;
pub mod doc_table;
pub mod http;
pub mod idle;
pub mod limits;
pub mod live_config;
pub mod metrics;
pub mod npm;
pub mod route;
pub mod serve;
pub mod writer;
