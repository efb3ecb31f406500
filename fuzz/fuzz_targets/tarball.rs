//! Fuzz target: `engine::tarball::inspect` (gzip members, tar framing, GNU and PAX extensions,
//! paths, package.json lookup) on arbitrary bytes, under the default limits and under tight
//! ones (so the limit paths run too). Never panics; an accepted tarball fits the limits it was
//! read under. The body is `engine/tests/common/tarball_check.rs`, which the proptests in
//! `engine/tests/tarball.rs` run too.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../engine/tests/common/tarball_check.rs"]
mod tarball_check;

fuzz_target!(|data: &[u8]| tarball_check::check(data));
