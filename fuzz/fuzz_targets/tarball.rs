//! Fuzz target: `engine::tarball::inspect` (gzip members, tar framing, GNU and PAX extensions,
//! paths, package.json lookup) on arbitrary bytes, under the default limits and under tight
//! ones (so the limit paths run too). Never panics; an accepted tarball fits the limits it was
//! read under. `engine/tests/tarball.rs` runs the same `check` in its proptests.
#![no_main]

use engine::tarball::{inspect, TarballLimits};
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8]) {
    let tight = TarballLimits {
        unpacked_bytes_max: 64 * 1024,
        entry_count_max: 16,
        package_json_bytes_max: 1024,
        extension_bytes_max: 1024,
    };
    for limits in [TarballLimits::DEFAULT, tight] {
        if let Ok(summary) = inspect(data, &limits) {
            assert!(summary.unpacked_size <= limits.unpacked_bytes_max);
            assert!(summary.file_count <= limits.entry_count_max);
            assert!(summary.package_json.len() as u64 <= limits.package_json_bytes_max);
        }
    }
}

fuzz_target!(|data: &[u8]| check(data));
