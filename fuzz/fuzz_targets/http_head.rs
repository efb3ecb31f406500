//! Fuzz target: `server::http::parse::head` on arbitrary bytes (the first thing every
//! connection runs on what a client sends). Never panics; a parsed head fits in the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn check(data: &[u8]) {
    if let Ok(Some((head, len))) = server::http::parse::head(data) {
        assert!(len <= data.len(), "head length {len} past the input");
        assert!(!head.target.is_empty(), "a parsed head has a target");
    }
}

fuzz_target!(|data: &[u8]| check(data));
