//! `PUT /NAME[/-rev/REV]`: npm publish, or a metadata update (deprecate, unpublish of a
//! version, owner changes); `DELETE /NAME/-rev/REV` (unpublish everything) and npm's tarball
//! cleanup `DELETE /NAME/-/FILE/-rev/REV`. Raw bodies go to the shard's writer, which parses
//! and verifies them off the event loop and answers once the change is durable.

use engine::names::{PackageName, Version};
use engine::publish::PublishError;
use engine::shard::{WriteOp, WriteOutcome};

use crate::api_error::ApiError;
use crate::cores::Core;
use crate::http::respond::Reply;
use crate::writer::WriterJob;

pub(super) async fn put(
    name: PackageName,
    body: Vec<u8>,
    user: String,
    rev: Option<String>,
    core: &Core,
) -> Result<Reply, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    if let Some(rev) = &rev {
        check_rev(rev)?;
    }
    let job = WriterJob::Put {
        name: name.clone(),
        body,
        user,
        rev,
    };
    submit(&name, job, core).await
}

pub(super) async fn unpublish(
    name: PackageName,
    rev: String,
    user: String,
    core: &Core,
) -> Result<Reply, ApiError> {
    check_rev(&rev)?;
    let op = WriteOp::UnpublishAll {
        name: name.clone(),
        rev: Some(rev),
        user,
    };
    submit(&name, WriterJob::Op(op), core).await
}

/// A `_rev` as this registry writes them: decimal revision, `-`, hex digest.
fn check_rev(rev: &str) -> Result<(), ApiError> {
    let valid = rev.split_once('-').is_some_and(|(n, digest)| {
        !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && !digest.is_empty()
            && digest.bytes().all(|b| b.is_ascii_hexdigit())
    });
    if valid {
        Ok(())
    } else {
        Err(PublishError::BadRev {
            rev: rev.chars().take(80).collect(),
        }
        .into())
    }
}

/// npm's cleanup after unpublishing a version. Blobs are shared between versions with
/// identical bytes and collected by fsck, so this only confirms that `file` is the tarball of
/// a version this package had and that no remaining version references it.
pub(super) fn tarball_delete(
    name: &PackageName,
    file: &str,
    core: &Core,
) -> Result<Reply, ApiError> {
    let version = file
        .strip_prefix(name.basename())
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.strip_suffix(".tgz"))
        .and_then(|v| Version::parse(v).ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!("{file:?} is not a tarball name of {name}"))
        })?;
    let shard = core.shared.shard(name.as_str());
    let stored = shard.read_stored(name.as_str())?;
    let known = stored.as_ref().is_some_and(|s| {
        s.doc
            .get("time")
            .and_then(|t| t.get(version.as_str()))
            .is_some()
    });
    if !known {
        return Err(ApiError::not_found(format!(
            "{name} never had version {version}"
        )));
    }
    if stored.is_some_and(|s| s.tarballs.contains_key(version.as_str())) {
        return Err(ApiError::bad_request(format!(
            "{file} still belongs to a published version of {name}; unpublish the version first"
        )));
    }
    Ok(Reply::json(200, &br#"{"ok":true}"#[..]))
}

async fn submit(name: &PackageName, job: WriterJob, core: &Core) -> Result<Reply, ApiError> {
    let shard = core.shared.shard(name.as_str()).id();
    let (rev, status) = match core.shared.writers.submit(shard, job).await?? {
        WriteOutcome::Published { rev, changed } => (rev, if changed { 201 } else { 200 }),
        WriteOutcome::Updated { rev } => (rev, 200),
        WriteOutcome::DistTags(_) => {
            return Err(ApiError::new(
                500,
                "internal_error",
                "unexpected writer outcome",
            ))
        }
    };
    let body = serde_json::json!({
        "ok": true,
        "id": name.as_str(),
        "rev": rev.to_string(),
        "success": true,
    });
    Ok(Reply::json(
        status,
        serde_json::to_vec(&body).expect("a JSON value serializes"),
    ))
}
