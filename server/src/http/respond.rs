//! Responses. A handler returns a `Reply`; `write_head` serializes its head into the
//! connection's reused output buffer. Bodies are `Bytes` or a cached document, so
//! pre-rendered documents are shared, never copied per request (small ones are appended to
//! the head for a single write).

use std::ops::Deref;

use bytes::Bytes;

use crate::cache::CachedDoc;

/// Content types the registry answers with.
pub const JSON: &str = "application/json";
pub const ABBREVIATED_JSON: &str = "application/vnd.npm.install-v1+json";
pub const OCTET_STREAM: &str = "application/octet-stream";

/// What a handler answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Body,
    pub etag: Option<Etag>,
    pub gzip: bool,
    /// The representation depends on `Accept` (packuments).
    pub vary_accept: bool,
    /// Close the connection after this reply.
    pub close: bool,
}

/// A reply's body.
#[derive(Debug, Clone)]
pub enum Body {
    Bytes(Bytes),
    /// A cached packument: the reply holds the document's one allocation (its reference count
    /// sits in the cache line the lookup already read), not a second reference-counted buffer.
    Doc(CachedDoc),
}

impl Body {
    /// The body as `Bytes` (for a write of its own; a cached document is not copied).
    #[must_use]
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Body::Bytes(bytes) => bytes.clone(),
            Body::Doc(doc) => Bytes::from_owner(doc.clone()),
        }
    }
}

impl Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Body::Bytes(bytes) => bytes,
            Body::Doc(doc) => doc.body(),
        }
    }
}

/// Longest validator an `Etag` holds. The server's are at most 53 bytes (a rebased
/// document's: quote, 32 hex digits, `-h`, 16 hex digits, quote).
pub const ETAG_BYTES_MAX: usize = 63;

/// An `ETag` value, held inline: copying ~40 bytes is cheaper than a reference count in
/// another allocation's cache line.
#[derive(Clone, Copy)]
pub struct Etag {
    len: u8,
    bytes: [u8; ETAG_BYTES_MAX],
}

impl Etag {
    /// `value`, or `None` when it is longer than `ETAG_BYTES_MAX`.
    #[must_use]
    pub fn new(value: &[u8]) -> Option<Etag> {
        let len = u8::try_from(value.len())
            .ok()
            .filter(|&len| usize::from(len) <= ETAG_BYTES_MAX)?;
        let mut bytes = [0; ETAG_BYTES_MAX];
        bytes[..value.len()].copy_from_slice(value);
        Some(Etag { len, bytes })
    }

    /// The value, quotes included.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Etag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl Reply {
    /// A JSON reply.
    #[must_use]
    pub fn json(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            content_type: JSON,
            body: Body::Bytes(body.into()),
            etag: None,
            gzip: false,
            vary_accept: false,
            close: false,
        }
    }

    /// `200` with a cached packument and its validator (JSON; the caller sets the exact
    /// content type and encoding).
    #[must_use]
    pub fn document(doc: CachedDoc) -> Reply {
        Reply {
            status: 200,
            content_type: JSON,
            etag: Etag::new(doc.etag()),
            body: Body::Doc(doc),
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
    pub fn not_modified(etag: Option<Etag>, vary_accept: bool) -> Reply {
        Reply {
            status: 304,
            content_type: JSON,
            body: Body::Bytes(Bytes::new()),
            etag,
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
        out.extend_from_slice(etag.as_bytes());
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

    #[test]
    fn validators_up_to_the_longest_the_server_makes_fit() {
        // A rebased document's: quote, 32 hex digits, -h, 16 hex digits, quote.
        let rebased = format!("\"{}-h{}\"", "a".repeat(32), "b".repeat(16));
        let etag = Etag::new(rebased.as_bytes()).unwrap();
        assert_eq!(etag.as_bytes(), rebased.as_bytes());
        assert!(Etag::new(&[b'a'; ETAG_BYTES_MAX]).is_some());
        assert!(Etag::new(&[b'a'; ETAG_BYTES_MAX + 1]).is_none());
    }
}
