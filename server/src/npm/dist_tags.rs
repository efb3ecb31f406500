//! `GET/PUT/DELETE /-/package/NAME/dist-tags[/TAG]`: npm dist-tag ls/add/rm.

use engine::names::{DistTag, PackageName, Version};
use engine::shard::{WriteOp, WriteOutcome};

use crate::api_error::ApiError;
use crate::cores::Core;
use crate::http::respond::Reply;
use crate::writer::WriterJob;

pub(super) fn get(name: &PackageName, core: &Core) -> Result<Reply, ApiError> {
    let shard = core.shared.shard(name.as_str());
    let stored = shard
        .read_stored(name.as_str())?
        .ok_or_else(|| super::packument::not_found(name))?;
    Ok(Reply::json(
        200,
        serde_json::to_vec(&stored.dist_tags()).expect("a map serializes"),
    ))
}

pub(super) async fn set(
    name: PackageName,
    tag: &str,
    body: &[u8],
    user: String,
    core: &Core,
) -> Result<Reply, ApiError> {
    let tag = DistTag::parse(tag)?;
    // npm sends the version as a JSON string; accept a bare version too (curl users).
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(_) => {
            return Err(ApiError::bad_request(
                "the body must be a JSON string version",
            ))
        }
        Err(_) => std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("the body is not UTF-8"))?
            .trim()
            .to_owned(),
    };
    let version = Version::parse(&text)?;
    let op = WriteOp::DistTagSet {
        name: name.clone(),
        tag,
        version,
        user,
    };
    submit(&name, op, core, 201).await
}

pub(super) async fn remove(
    name: PackageName,
    tag: &str,
    user: String,
    core: &Core,
) -> Result<Reply, ApiError> {
    let tag = DistTag::parse(tag)?;
    let op = WriteOp::DistTagRemove {
        name: name.clone(),
        tag,
        user,
    };
    submit(&name, op, core, 200).await
}

async fn submit(
    name: &PackageName,
    op: WriteOp,
    core: &Core,
    status: u16,
) -> Result<Reply, ApiError> {
    let shard = core.shared.shard(name.as_str()).id();
    match core
        .shared
        .writers
        .submit(shard, WriterJob::Op(op))
        .await??
    {
        WriteOutcome::DistTags(tags) => Ok(Reply::json(
            status,
            serde_json::to_vec(&tags).expect("a map serializes"),
        )),
        WriteOutcome::Published { .. } | WriteOutcome::Updated { .. } => Err(ApiError::new(
            500,
            "internal_error",
            "unexpected writer outcome",
        )),
    }
}
