//! Publish requests built directly, for tests and benches of the layers below the HTTP parse
//! (`publish::parse_publish` builds real ones from a client's body). Not for production
//! paths: invalid names and versions panic.

use serde_json::{Map, Value};

use crate::blob::BlobId;
use crate::integrity;
use crate::names::{PackageName, Version};
use crate::publish::{NewVersion, PublishRequest};

/// A request publishing `version` of `name` with `manifest` and `tarball`, and no dist-tags.
/// The blob id and checksums are computed from `tarball`; its file count is 1 and its
/// unpacked size its length (the store takes both as given and never reads the tarball).
///
/// # Panics
/// `name` or `version` is not valid.
#[must_use]
pub fn one_version(
    name: &str,
    version: &str,
    manifest: Map<String, Value>,
    tarball: Vec<u8>,
) -> PublishRequest {
    PublishRequest {
        name: PackageName::parse(name).expect("a valid package name"),
        versions: vec![NewVersion {
            version: Version::parse(version).expect("a valid version"),
            manifest,
            blob: BlobId::of(&tarball),
            checksums: integrity::compute(&tarball),
            file_count: 1,
            unpacked_size: tarball.len() as u64,
            tarball,
        }],
        dist_tags: Vec::new(),
    }
}
