//! Fuzz target: `server::http::body::decode_chunked` on arbitrary bytes, with a small and a
//! large body limit. Never panics; a decoded body respects the limit and the input length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use server::http::body::decode_chunked;

fn check(data: &[u8]) {
    for max in [64, server::limits::BODY_BYTES_MAX] {
        if let Ok(Some((body, used))) = decode_chunked(data, max) {
            assert!(used <= data.len(), "used {used} bytes of {}", data.len());
            assert!(
                body.len() <= max,
                "body of {} bytes over max {max}",
                body.len()
            );
            assert!(
                body.len() <= used,
                "body longer than the bytes it came from"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| check(data));
