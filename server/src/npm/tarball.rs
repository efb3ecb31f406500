//! `GET /NAME/-/FILE.tgz`. The file name is looked up in the package's tarball index (never
//! joined to a path); the bytes come from the package's shard (inline tarballs) or the blob
//! store (files) through the core's tarball cache, verified against their blake3 name when
//! read from storage.

use engine::names::PackageName;

use crate::api_error::ApiError;
use crate::cores::Core;
use crate::http::respond::{Reply, OCTET_STREAM};

pub(super) fn get(name: &PackageName, file: &str, core: &Core) -> Result<Reply, ApiError> {
    let shard = core.shared.shard(name.as_str());
    let index = core.packages.borrow_mut().index(shard, name.as_str())?;
    let index = index.ok_or_else(|| super::packument::not_found(name))?;
    let tarball = index
        .tarball(file)
        .ok_or_else(|| ApiError::not_found(format!("tarball {file:?} of {name} not found")))?;
    let bytes =
        core.tarballs
            .borrow_mut()
            .get(shard, &core.shared.blobs, &tarball.blob, tarball.size)?;
    let mut reply = Reply::json(200, bytes);
    reply.content_type = OCTET_STREAM;
    Ok(reply)
}
