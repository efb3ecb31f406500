//! `PUT /NAME`: npm publish. The raw body goes to the shard's writer, which parses and
//! verifies it off the event loop and answers once the tarball and metadata are durable.

use engine::names::PackageName;
use engine::shard::WriteOutcome;

use crate::api_error::ApiError;
use crate::cores::Core;
use crate::http::respond::Reply;
use crate::writer::WriterJob;

pub(super) async fn publish(
    name: PackageName,
    body: Vec<u8>,
    user: String,
    core: &Core,
) -> Result<Reply, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the publish body is empty"));
    }
    let shard = core.shared.shard(name.as_str()).id();
    let job = WriterJob::Publish {
        name: name.clone(),
        body,
        user,
    };
    let outcome = core.shared.writers.submit(shard, job).await??;
    let WriteOutcome::Published { rev, changed } = outcome else {
        return Err(ApiError::new(
            500,
            "internal_error",
            "unexpected writer outcome",
        ));
    };
    let body = serde_json::json!({
        "ok": true,
        "id": name.as_str(),
        "rev": format!("{rev}"),
        "success": true,
    });
    let status = if changed { 201 } else { 200 };
    Ok(Reply::json(
        status,
        serde_json::to_vec(&body).expect("a JSON value serializes"),
    ))
}
