//! The `tarball` fuzz target's body, shared with the proptests in `engine/tests/tarball.rs`
//! (the fuzz crate includes this file by path): `inspect` under the default limits and tight
//! ones never panics, and whatever it accepts fits the limits it was given.

use engine::tarball::{inspect, TarballLimits};

pub(crate) fn check(data: &[u8]) {
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
