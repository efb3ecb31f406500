//! Fuzz target: `engine::publish::parse_publish` (simd-json, base64, checksums) for the fixed
//! package `a` on arbitrary bytes, copied into a `Vec` first because the parse is destructive.
//! Never panics; an accepted publish has at least one version and blob ids that match.
#![no_main]

use std::sync::OnceLock;

use engine::blob::BlobId;
use engine::names::PackageName;
use libfuzzer_sys::fuzz_target;

fn name() -> &'static PackageName {
    static NAME: OnceLock<PackageName> = OnceLock::new();
    NAME.get_or_init(|| PackageName::parse("a").expect("'a' is a valid package name"))
}

fn check(data: &[u8]) {
    let mut body = data.to_vec();
    if let Ok(request) = engine::publish::parse_publish(name(), &mut body) {
        assert!(
            !request.versions.is_empty(),
            "accepted a publish without versions"
        );
        for version in &request.versions {
            assert_eq!(
                version.blob,
                BlobId::of(&version.tarball),
                "blob id mismatch"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| check(data));
