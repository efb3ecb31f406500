//! Fuzz target: `engine::served::decode_served` on arbitrary bytes (a served record read back
//! from a shard file). Never panics; an accepted record's bodies lie inside the input.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8]) {
    if let Ok(served) = engine::served::decode_served(Bytes::copy_from_slice(data)) {
        let bodies = served.full.identity.len()
            + served.full.gzip.as_ref().map_or(0, Bytes::len)
            + served.abbreviated.identity.len()
            + served.abbreviated.gzip.as_ref().map_or(0, Bytes::len);
        assert!(
            bodies <= data.len(),
            "bodies of {bodies} bytes in {} bytes",
            data.len()
        );
    }
}

fuzz_target!(|data: &[u8]| check(data));
