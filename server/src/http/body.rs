//! Request bodies: bounds and chunked transfer decoding. `decode_chunked` is pure so the fuzz
//! target and proptests drive exactly what the connection runs.

/// Why a body was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds {max} bytes")]
    TooLarge { max: usize },
    #[error("malformed chunked body: {0}")]
    BadChunk(&'static str),
}

impl BodyError {
    /// The status and error type this failure is answered with.
    #[must_use]
    pub fn status(self) -> (u16, &'static str) {
        match self {
            BodyError::TooLarge { .. } => (413, "payload_too_large"),
            BodyError::BadChunk(_) => (400, "bad_request"),
        }
    }
}

/// Decodes a complete chunked body from the start of `buf`. `Ok(None)`: incomplete.
/// On success returns the body and how many bytes of `buf` it used (trailers included).
///
/// # Errors
/// `TooLarge` as soon as the decoded size would pass `max`; `BadChunk` on syntax errors.
pub fn decode_chunked(buf: &[u8], max: usize) -> Result<Option<(Vec<u8>, usize)>, BodyError> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (start, size) = match httparse::parse_chunk_size(&buf[at..]) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return partial(buf, at),
            Err(_) => return Err(BodyError::BadChunk("invalid chunk size line")),
        };
        at += start;
        let size = usize::try_from(size).map_err(|_| BodyError::TooLarge { max })?;
        if size == 0 {
            return trailers(buf, at).map(|end| end.map(|end| (body, end)));
        }
        if body.len().saturating_add(size) > max {
            return Err(BodyError::TooLarge { max });
        }
        let Some(chunk_end) = at.checked_add(size).filter(|&e| e + 2 <= buf.len()) else {
            return Ok(None);
        };
        body.extend_from_slice(&buf[at..chunk_end]);
        if &buf[chunk_end..chunk_end + 2] != b"\r\n" {
            return Err(BodyError::BadChunk("chunk data not followed by CRLF"));
        }
        at = chunk_end + 2;
    }
}

fn partial(buf: &[u8], at: usize) -> Result<Option<(Vec<u8>, usize)>, BodyError> {
    // A chunk-size line has no business being longer than this.
    if buf.len() - at > 1024 {
        return Err(BodyError::BadChunk("chunk size line too long"));
    }
    Ok(None)
}

/// After the last chunk: optional trailer lines, then CRLF. Returns the end offset.
fn trailers(buf: &[u8], mut at: usize) -> Result<Option<usize>, BodyError> {
    loop {
        let rest = &buf[at..];
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return if rest.len() > 8 * 1024 {
                Err(BodyError::BadChunk("trailers too long"))
            } else {
                Ok(None)
            };
        };
        at += line_end + 2;
        if line_end == 0 {
            return Ok(Some(at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_and_bounds() {
        let raw = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (body, used) = decode_chunked(raw, 100).unwrap().unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(&raw[used..], b"NEXT");
        assert_eq!(decode_chunked(b"5\r\nhel", 100), Ok(None));
        assert_eq!(decode_chunked(raw, 4), Err(BodyError::TooLarge { max: 4 }));
        assert!(decode_chunked(b"zz\r\n", 100).is_err());
        assert!(decode_chunked(b"5\r\nhelloXX0\r\n\r\n", 100).is_err());
        assert!(decode_chunked(b"ffffffffffffffffff\r\n", 100).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(chunks in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 1..50), 0..8)) {
            let mut raw = Vec::new();
            for c in &chunks {
                raw.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                raw.extend_from_slice(c);
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"0\r\n\r\n");
            let (body, used) = decode_chunked(&raw, 1 << 20).unwrap().unwrap();
            prop_assert_eq!(body, chunks.concat());
            prop_assert_eq!(used, raw.len());
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_chunked(&bytes, 64);
        }
    }
}
