//! Fuzz target: `PackageName`, `Version` and `DistTag` parsing of the input (when UTF-8).
//! Never panics; accepted values round-trip, a version's semver form exists, and no dist-tag
//! is also a version (npm would read `pkg@tag` as a version).
#![no_main]

use engine::names::{DistTag, PackageName, Version};
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(name) = PackageName::parse(s) {
        assert_eq!(name.as_str(), s);
    }
    if let Ok(version) = Version::parse(s) {
        let _ = version.semver();
        assert_eq!(
            Version::parse(version.as_str()).ok().as_ref(),
            Some(&version)
        );
    }
    if let Ok(tag) = DistTag::parse(s) {
        assert_eq!(tag.as_str(), s);
        assert!(
            Version::parse(s).is_err(),
            "dist-tag {s:?} is also a version"
        );
    }
}

fuzz_target!(|data: &[u8]| check(data));
