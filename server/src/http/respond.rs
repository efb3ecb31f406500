//! Responses. A handler returns a `Reply`; `write_head` serializes its head into the
//! connection's reused output buffer. Bodies are `Bytes`, so pre-rendered documents are
//! shared, never copied per request (small ones are appended to the head for a single write).

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
        204 => "No Content",
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

/// Appends the response head for `reply` to `out`, writing straight into the reused buffer
/// (no allocation, no formatting machinery: this runs for every response). `date` appends the
/// `Date` value. HEAD requests keep the Content-Length of the body that is not sent.
pub fn write_head(
    out: &mut Vec<u8>,
    reply: &Reply,
    keep_alive: bool,
    date: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(reply.status));
    out.push(b' ');
    out.extend_from_slice(reason(reply.status).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    date(out);
    out.extend_from_slice(b"\r\nServer: agentregistry\r\n");
    if reply.status != 304 {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(reply.content_type.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Length: ");
    push_decimal(out, reply.body.len() as u64);
    out.extend_from_slice(b"\r\nX-Content-Type-Options: nosniff\r\n");
    if let Some(etag) = &reply.etag {
        out.extend_from_slice(b"ETag: ");
        out.extend_from_slice(etag);
        out.extend_from_slice(b"\r\n");
    }
    if reply.gzip {
        out.extend_from_slice(b"Content-Encoding: gzip\r\n");
    }
    if reply.vary_accept {
        out.extend_from_slice(b"Vary: Accept, Accept-Encoding\r\n");
    }
    out.extend_from_slice(if keep_alive && !reply.close {
        b"Connection: keep-alive\r\n\r\n"
    } else {
        b"Connection: close\r\n\r\n"
    });
}

fn push_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        // `value % 10` is below 10, so the cast cannot truncate.
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
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
        write_head(&mut out, &reply, true, |o| {
            o.extend_from_slice(b"Sun, 22 Nov 2026 00:00:00 GMT");
        });
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains(&format!("Content-Length: {}\r\n", reply.body.len())));
        assert!(text.contains("X-Content-Type-Options: nosniff\r\n"));
        assert!(text.ends_with("Connection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn decimal() {
        for value in [0u64, 7, 10, 304, 65_535, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, value);
            assert_eq!(out, value.to_string().into_bytes());
        }
    }
}
