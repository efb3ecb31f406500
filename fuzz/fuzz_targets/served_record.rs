//! Fuzz target: `engine::served::decode_doc`, `identity_doc` and `decode_index` on arbitrary
//! bytes (served values read back from a shard file). Never panics; an accepted document's etag
//! and body lie inside the input, its inflated form keeps its cut inside the body, and an
//! accepted index names no more tarballs than the input could hold.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8]) {
    if let Ok(doc) = engine::served::decode_doc(Bytes::copy_from_slice(data)) {
        let held = doc.etag.len() + doc.body.len();
        assert!(held <= data.len(), "{held} bytes in {} bytes", data.len());
        // What a request without gzip is served: the stored form inflated.
        if let Ok(identity) = engine::served::identity_doc(&doc) {
            assert!(identity.cut.body as usize <= identity.body.len());
            assert!(identity.etag.len() <= doc.etag.len());
        }
    }
    if let Ok(index) = engine::served::decode_index(data) {
        let least = index.tarballs.len() * 42;
        assert!(least <= data.len(), "{least} bytes of tarballs in {}", data.len());
    }
}

fuzz_target!(|data: &[u8]| check(data));
