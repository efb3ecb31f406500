//! Responses. A handler returns a `Reply`; `write_head` serializes its head into the
//! connection's reused output buffer. Bodies are `Bytes`, so pre-rendered documents are
//! shared, never copied per request (small ones are appended to the head for a single write).

use std::fmt::Write as _;

use bytes::Bytes;

/// Content types the registry answers with.
pub const JSON: &str = "application/json";
pub const ABBREVIATED_JSON: &str = "application/vnd.npm.install-v1+json";
pub const OCTET_STREAM: &str = "application/octet-stream";

/// What a handler answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
    pub etag: Option<Bytes>,
    pub gzip: bool,
    /// The representation depends on `Accept` (packuments).
    pub vary_accept: bool,
    /// Close the connection after this reply.
    pub close: bool,
}

impl Reply {
    /// A JSON reply.
    #[must_use]
    pub fn json(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            content_type: JSON,
            body: body.into(),
            etag: None,
            gzip: false,
            vary_accept: false,
            close: false,
        }
    }

    /// `{"error": kind, "message": message}` (SPEC section 6).
    #[must_use]
    pub fn error(status: u16, kind: &str, message: &str) -> Reply {
        let body = serde_json::json!({ "error": kind, "message": message });
        Reply::json(
            status,
            serde_json::to_vec(&body).expect("a JSON value serializes"),
        )
    }

    /// 304 for a matching validator.
    #[must_use]
    pub fn not_modified(etag: Bytes, vary_accept: bool) -> Reply {
        Reply {
            status: 304,
            content_type: JSON,
            body: Bytes::new(),
            etag: Some(etag),
            gzip: false,
            vary_accept,
            close: false,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        422 => "Unprocessable Entity",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

/// Appends the response head for `reply` to `out`. `head_only` (HEAD requests) keeps the
/// Content-Length of the body that is not sent.
pub fn write_head(out: &mut Vec<u8>, reply: &Reply, keep_alive: bool, date: &str) {
    let mut head = String::with_capacity(256);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\n",
        reply.status,
        reason(reply.status)
    );
    let _ = write!(head, "Date: {date}\r\nServer: agentregistry\r\n");
    if reply.status != 304 {
        let _ = write!(head, "Content-Type: {}\r\n", reply.content_type);
    }
    let _ = write!(head, "Content-Length: {}\r\n", reply.body.len());
    head.push_str("X-Content-Type-Options: nosniff\r\n");
    if let Some(etag) = &reply.etag {
        head.push_str("ETag: ");
        head.push_str(std::str::from_utf8(etag).unwrap_or("\"\""));
        head.push_str("\r\n");
    }
    if reply.gzip {
        head.push_str("Content-Encoding: gzip\r\n");
    }
    if reply.vary_accept {
        head.push_str("Vary: Accept, Accept-Encoding\r\n");
    }
    head.push_str(if keep_alive && !reply.close {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    out.extend_from_slice(head.as_bytes());
}

/// The interim response for `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_and_head() {
        let reply = Reply::error(404, "not_found", "package \"x\" not found");
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"], "not_found");
        let mut out = Vec::new();
        write_head(&mut out, &reply, true, "Sun, 22 Nov 2026 00:00:00 GMT");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains(&format!("Content-Length: {}\r\n", reply.body.len())));
        assert!(text.contains("X-Content-Type-Options: nosniff\r\n"));
        assert!(text.ends_with("Connection: keep-alive\r\n\r\n"));
    }
}
