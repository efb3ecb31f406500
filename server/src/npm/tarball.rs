//! `GET /NAME/-/FILE.tgz`. The file name is looked up in the package's tarball index (never
//! joined to a path); the bytes come from the package's shard (inline tarballs) or the blob
//! store (files) through the core's tarball cache, verified against their blake3 name when
//! read from storage. Files are read on the blob reader threads (`blob_read.rs`), never on
//! the core's event loop.

use bytes::Bytes;
use engine::limits::INLINE_BLOB_BYTES_MAX;
use engine::names::PackageName;
use engine::shard::ReadError;

use crate::api_error::ApiError;
use crate::cores::Core;
use crate::http::respond::{Reply, OCTET_STREAM};

pub(super) async fn get(name: &PackageName, file: &str, core: &Core) -> Result<Reply, ApiError> {
    let shard = core.shared.shard(name.as_str());
    let index = core.packages.borrow_mut().index(shard, name.as_str())?;
    let index = index.ok_or_else(|| super::packument::not_found(name))?;
    let tarball = index
        .tarball(file)
        .ok_or_else(|| ApiError::not_found(format!("tarball {file:?} of {name} not found")))?;
    let (blob, size, row) = (tarball.blob, tarball.size, tarball.row);
    let cached = core.tarballs.borrow().cached(&blob);
    let bytes = match cached {
        Some(bytes) => bytes,
        // A file: read and hashed on a reader thread while this core serves others.
        None if size > INLINE_BLOB_BYTES_MAX as u64 => {
            let bytes = Bytes::from(
                core.shared
                    .blob_readers
                    .read(blob)
                    .await
                    .map_err(ReadError::Blob)?,
            );
            core.tarballs.borrow_mut().insert(blob, bytes.clone());
            bytes
        }
        // Inline (or a small file from before inline blobs): cheap enough to read here.
        None => core
            .tarballs
            .borrow_mut()
            .get(shard, &core.shared.blobs, &blob, size, row)?,
    };
    let mut reply = Reply::json(200, bytes);
    reply.content_type = OCTET_STREAM;
    Ok(reply)
}
