//! Request-head parsing. `head` is pure: bytes in, `RequestHead` (borrowing the bytes) or a
//! `ParseError` out; `ParseError::status` is the one place HTTP parse errors become statuses.
//! httparse does the tokenizing; this file adds the registry's rules: bounded sizes, one
//! unambiguous body framing (request smuggling is refused), and the few headers we use.

use crate::limits::{HEADERS_COUNT_MAX, HEAD_BYTES_MAX, TARGET_BYTES_MAX};

/// Request methods the registry serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    Post,
    Delete,
    Other,
}

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// The parts of a request head the registry uses, borrowed from the connection buffer.
#[derive(Debug)]
pub struct RequestHead<'b> {
    pub method: Method,
    /// The raw request target (path and query), not yet decoded.
    pub target: &'b str,
    pub framing: Framing,
    pub keep_alive: bool,
    /// `Accept` asks for `application/vnd.npm.install-v1+json` (the abbreviated packument).
    pub accept_abbreviated: bool,
    /// `Accept` names JSON (npm, pnpm and bun do; yarn sends no Accept at all).
    pub accept_json: bool,
    /// `Accept` names Prometheus' formats (`text/plain` or `openmetrics`).
    pub accept_metrics: bool,
    /// `Accept-Encoding` allows gzip.
    pub accept_gzip: bool,
    pub if_none_match: Option<&'b [u8]>,
    pub authorization: Option<&'b [u8]>,
    /// The `Host` header, when it is a plausible authority (letters, digits, `.-:[]`).
    pub host: Option<&'b str>,
    pub expect_continue: bool,
}

/// Why a request head was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    #[error("request head exceeds {HEAD_BYTES_MAX} bytes")]
    HeadTooLarge,
    #[error("more than {HEADERS_COUNT_MAX} request headers")]
    TooManyHeaders,
    #[error("request target exceeds {TARGET_BYTES_MAX} bytes")]
    TargetTooLong,
    #[error("invalid Content-Length")]
    BadContentLength,
    #[error("conflicting body framing (Content-Length with Transfer-Encoding, or repeated)")]
    AmbiguousFraming,
    #[error("unsupported Transfer-Encoding (only chunked is accepted)")]
    UnsupportedTransferEncoding,
    #[error("unsupported HTTP version (HTTP/1.0 and HTTP/1.1 are served)")]
    UnsupportedVersion,
}

impl ParseError {
    /// The status and error type this failure is answered with.
    #[must_use]
    pub fn status(self) -> (u16, &'static str) {
        match self {
            ParseError::Malformed(_)
            | ParseError::BadContentLength
            | ParseError::AmbiguousFraming => (400, "bad_request"),
            ParseError::HeadTooLarge | ParseError::TooManyHeaders => {
                (431, "request_header_fields_too_large")
            }
            ParseError::TargetTooLong => (414, "uri_too_long"),
            ParseError::UnsupportedTransferEncoding => (501, "not_implemented"),
            ParseError::UnsupportedVersion => (505, "http_version_not_supported"),
        }
    }
}

/// Parses one request head from the start of `buf`. `Ok(None)`: incomplete, read more.
/// On success also returns the head's length in bytes.
///
/// # Errors
/// A `ParseError`; the connection answers it and closes.
pub fn head(buf: &[u8]) -> Result<Option<(RequestHead<'_>, usize)>, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_COUNT_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let status = match request.parse(buf) {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(ParseError::UnsupportedVersion),
        Err(_) => {
            return Err(ParseError::Malformed(
                "invalid request line or header syntax",
            ))
        }
    };
    let httparse::Status::Complete(head_len) = status else {
        if buf.len() > HEAD_BYTES_MAX {
            return Err(ParseError::HeadTooLarge);
        }
        return Ok(None);
    };
    if head_len > HEAD_BYTES_MAX {
        return Err(ParseError::HeadTooLarge);
    }
    let target = request
        .path
        .ok_or(ParseError::Malformed("missing request target"))?;
    if target.len() > TARGET_BYTES_MAX {
        return Err(ParseError::TargetTooLong);
    }
    let method = match request
        .method
        .ok_or(ParseError::Malformed("missing method"))?
    {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "PUT" => Method::Put,
        "POST" => Method::Post,
        "DELETE" => Method::Delete,
        _ => Method::Other,
    };
    let minor = request
        .version
        .ok_or(ParseError::Malformed("missing version"))?;
    let mut head = RequestHead {
        method,
        target,
        framing: Framing::None,
        keep_alive: minor == 1,
        accept_abbreviated: false,
        accept_json: false,
        accept_metrics: false,
        accept_gzip: false,
        if_none_match: None,
        authorization: None,
        host: None,
        expect_continue: false,
    };
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    for header in request.headers.iter() {
        let name = header.name;
        let value = header.value;
        if name.eq_ignore_ascii_case("content-length") {
            let parsed = parse_content_length(value)?;
            if content_length.is_some_and(|c| c != parsed) {
                return Err(ParseError::AmbiguousFraming);
            }
            content_length = Some(parsed);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !trim(value).eq_ignore_ascii_case(b"chunked") {
                return Err(ParseError::UnsupportedTransferEncoding);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            if contains_token(value, b"close") {
                head.keep_alive = false;
            } else if contains_token(value, b"keep-alive") {
                head.keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("accept") {
            head.accept_abbreviated |= contains(value, b"application/vnd.npm.install-v1+json");
            head.accept_json |= contains(value, b"json");
            head.accept_metrics |=
                contains(value, b"text/plain") || contains(value, b"openmetrics");
        } else if name.eq_ignore_ascii_case("accept-encoding") {
            head.accept_gzip |= contains_token(value, b"gzip");
        } else if name.eq_ignore_ascii_case("if-none-match") {
            head.if_none_match = Some(trim(value));
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(trim(value));
        } else if name.eq_ignore_ascii_case("host") {
            head.host = plausible_host(value);
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = trim(value).eq_ignore_ascii_case(b"100-continue");
        }
    }
    head.framing = match (content_length, chunked) {
        (Some(_), true) => return Err(ParseError::AmbiguousFraming),
        (Some(0) | None, false) => Framing::None,
        (Some(n), false) => Framing::Length(n),
        (None, true) => Framing::Chunked,
    };
    Ok(Some((head, head_len)))
}

fn plausible_host(value: &[u8]) -> Option<&str> {
    let value = trim(value);
    let ok = !value.is_empty()
        && value.len() <= 255
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if ok {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

fn parse_content_length(value: &[u8]) -> Result<u64, ParseError> {
    let value = trim(value);
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::BadContentLength);
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ParseError::BadContentLength)
}

fn trim(value: &[u8]) -> &[u8] {
    value.trim_ascii()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// True when the comma-separated list `value` has `token` (ignoring `;q=` parameters; a
/// `q=0` entry is treated as present, which only makes us offer gzip to a client that
/// refused it, never the reverse).
fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|item| {
        let item = item.split(|&b| b == b';').next().unwrap_or_default();
        trim(item).eq_ignore_ascii_case(token)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_a_typical_npm_request() {
        let raw = b"GET /express HTTP/1.1\r\nHost: x\r\nAccept: application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8\r\nAccept-Encoding: gzip,deflate\r\nIf-None-Match: \"abc\"\r\nAuthorization: Bearer t\r\n\r\nGET";
        let (head, len) = head(raw).unwrap().unwrap();
        assert_eq!(len, raw.len() - 3);
        assert_eq!(head.method, Method::Get);
        assert_eq!(head.target, "/express");
        assert!(head.keep_alive && head.accept_abbreviated && head.accept_gzip);
        assert_eq!(head.if_none_match, Some(&b"\"abc\""[..]));
        assert_eq!(head.authorization, Some(&b"Bearer t"[..]));
        assert_eq!(head.framing, Framing::None);
    }

    #[test]
    fn framing_rules() {
        let cases: &[(&[u8], Result<Framing, ParseError>)] = &[
            (
                b"PUT /a HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
                Ok(Framing::Length(5)),
            ),
            (
                b"PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Ok(Framing::Chunked),
            ),
            (
                b"PUT /a HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(ParseError::AmbiguousFraming),
            ),
            (
                b"PUT /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                Err(ParseError::AmbiguousFraming),
            ),
            (
                b"PUT /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                Ok(Framing::Length(5)),
            ),
            (
                b"PUT /a HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                Err(ParseError::BadContentLength),
            ),
            (
                b"PUT /a HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n",
                Err(ParseError::BadContentLength),
            ),
            (
                b"PUT /a HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Err(ParseError::UnsupportedTransferEncoding),
            ),
        ];
        for (raw, expected) in cases {
            let got = head(raw).map(|h| h.unwrap().0.framing);
            assert_eq!(&got, expected, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn limits() {
        let mut big = b"GET /a HTTP/1.1\r\n".to_vec();
        while big.len() <= HEAD_BYTES_MAX {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let many: Vec<u8> = std::iter::once(b"GET /a HTTP/1.1\r\n".to_vec())
            .chain((0..=HEADERS_COUNT_MAX).map(|i| format!("H{i}: v\r\n").into_bytes()))
            .chain(std::iter::once(b"\r\n".to_vec()))
            .flatten()
            .collect();
        assert!(matches!(head(&many), Err(ParseError::TooManyHeaders)));
        assert!(matches!(
            head(&big),
            Err(ParseError::HeadTooLarge | ParseError::TooManyHeaders)
        ));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(TARGET_BYTES_MAX));
        assert_eq!(
            head(long.as_bytes()).unwrap_err(),
            ParseError::TargetTooLong
        );
        assert!(head(b"GET /a HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        assert!(
            !head(b"GET /a HTTP/1.0\r\n\r\n")
                .unwrap()
                .unwrap()
                .0
                .keep_alive
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = head(&bytes);
        }
    }
}
