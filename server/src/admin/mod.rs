//! Administration: `fsck`, `backup` and `restore`, from the command line (`cli`) and, while a
//! server runs, through its admin endpoints:
//! - `POST /-/admin/fsck`, body `{"repair": bool}` -> the fsck report (JSON);
//! - `POST /-/admin/backup`, body `{"dir": "/abs/path"}` -> the backup summary (JSON).
//!
//! Both need `Authorization: Bearer <contents of <home>/admin.token>` (written, mode 0600, at
//! every start by `serve`); the presented token is compared with the file's by their sha256
//! digests, so the comparison's timing says nothing about the secret. The work runs on a
//! spawned std thread, never on a core's event loop, and the core awaits its result through a
//! oneshot channel. One admin job runs at a time; a second is answered 409.
//!
//! At start `serve` also writes `<home>/server.json` (`ServerFile`): how the CLI, finding the
//! redb files locked by this server, reaches it.

pub mod cli;
mod client;

use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use engine::data_dir::DataDir;
use engine::shard::ShardStore;
use futures_channel::oneshot;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api_error::ApiError;
use crate::cores::{Core, Shared};
use crate::http::parse::RequestHead;
use crate::http::respond::Reply;

/// The file, in the home, that tells the CLI where the running server listens.
pub const SERVER_FILE: &str = "server.json";
/// The file, in the home, holding the admin token of the running server.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// `<home>/server.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerFile {
    /// A loopback URL of the listener, e.g. `http://127.0.0.1:4873`.
    pub url: String,
    pub pid: u32,
}

/// Writes `<home>/server.json` for the listener at `bound` (temp file, fsync, rename).
///
/// # Errors
/// I/O errors.
pub fn write_server_file(home: &Path, bound: SocketAddr) -> io::Result<()> {
    let mut addr = bound;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let file = ServerFile {
        url: format!("http://{addr}"),
        pid: std::process::id(),
    };
    let bytes = serde_json::to_vec_pretty(&file).map_err(io::Error::other)?;
    let tmp = home.join("server.json.tmp");
    let mut out = fs::File::create(&tmp)?;
    out.write_all(&bytes)?;
    out.sync_all()?;
    fs::rename(&tmp, home.join(SERVER_FILE))?;
    fs::File::open(home)?.sync_all()
}

/// Set while an admin job runs.
static JOB_RUNNING: AtomicBool = AtomicBool::new(false);

/// Clears `JOB_RUNNING` when the job ends, however it ends.
struct JobSlot;

impl Drop for JobSlot {
    fn drop(&mut self) {
        JOB_RUNNING.store(false, Ordering::Release);
    }
}

#[derive(Deserialize)]
struct FsckRequest {
    #[serde(default)]
    repair: bool,
}

#[derive(Deserialize)]
struct BackupRequest {
    dir: PathBuf,
}

/// `POST /-/admin/fsck`.
pub async fn fsck(head: &RequestHead<'_>, body: &[u8], core: &Core) -> Result<Reply, ApiError> {
    let home = authorize(head, &core.shared)?;
    let request: FsckRequest = if body.iter().all(u8::is_ascii_whitespace) {
        FsckRequest { repair: false }
    } else {
        parse_body(body)?
    };
    let shared = Arc::clone(&core.shared);
    let report = run_job(move || {
        let data = data_dir(&home, &shared)?;
        let shards: Vec<&ShardStore> = shared.shards.iter().map(AsRef::as_ref).collect();
        let report =
            engine::fsck::check(&data, &shards, &shared.blobs, request.repair, &mut |_| {});
        Ok(report)
    })
    .await?;
    let json = serde_json::to_vec(&report).expect("a report serializes");
    Ok(Reply::json(200, json))
}

/// `POST /-/admin/backup`.
pub async fn backup(head: &RequestHead<'_>, body: &[u8], core: &Core) -> Result<Reply, ApiError> {
    let home = authorize(head, &core.shared)?;
    let request: BackupRequest = parse_body(body)?;
    if !request.dir.is_absolute() {
        return Err(ApiError::bad_request(
            "\"dir\" must be an absolute path on the server's machine",
        ));
    }
    let shared = Arc::clone(&core.shared);
    let summary = run_job(move || {
        let data = data_dir(&home, &shared)?;
        let shards: Vec<&ShardStore> = shared.shards.iter().map(AsRef::as_ref).collect();
        engine::backup::backup(
            &data,
            &shards,
            &shared.blobs,
            &shared.auth,
            &request.dir,
            &mut |_| {},
        )
        .map_err(|e| job_failed("backup", &e))
    })
    .await?;
    let json = serde_json::to_vec(&summary).expect("a summary serializes");
    Ok(Reply::json(200, json))
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "malformed_json", format!("the body is not valid: {e}")))
}

/// An admin job's failure. Its message goes back in full: the caller is the operator who holds
/// the admin token, and needs to know which path or file failed.
fn job_failed(what: &str, e: &dyn std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "admin {what} failed");
    ApiError::new(500, "admin_job_failed", format!("{what} failed: {e}"))
}

/// The home directory: the blob store lives at `<home>/blobs` (`DataDir::blobs_path`).
fn home_of(shared: &Shared) -> Result<PathBuf, ApiError> {
    shared
        .blobs
        .root()
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| job_failed("locating the data directory", &"blob root has no parent"))
}

fn data_dir(home: &Path, shared: &Shared) -> Result<DataDir, ApiError> {
    let shard_count = u32::try_from(shared.shards.len()).unwrap_or(u32::MAX);
    let data = DataDir::open_or_create(home, shard_count)
        .map_err(|e| job_failed("opening the data directory", &e))?;
    if usize::from(data.shard_count()) != shared.shards.len() {
        return Err(job_failed(
            "opening the data directory",
            &"format.json disagrees with the shards this server has open",
        ));
    }
    Ok(data)
}

/// Checks `Authorization: Bearer <admin token>`; returns the home.
fn authorize(head: &RequestHead<'_>, shared: &Shared) -> Result<PathBuf, ApiError> {
    let unauthorized = || {
        ApiError::unauthorized(
            "admin endpoints need `Authorization: Bearer <contents of <home>/admin.token>`",
        )
    };
    let value = head.authorization.ok_or_else(unauthorized)?;
    let value = std::str::from_utf8(value).map_err(|_| unauthorized())?;
    let (scheme, presented) = value.split_once(' ').ok_or_else(unauthorized)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthorized());
    }
    let home = home_of(shared)?;
    let expected = fs::read_to_string(home.join(ADMIN_TOKEN_FILE))
        .map_err(|e| job_failed("reading the admin token", &e))?;
    let expected = expected.trim();
    // Digests of equal length, compared in constant time: neither the token's length nor
    // how many leading bytes match shows in the answer's timing.
    let presented_digest = Sha256::digest(presented.trim().as_bytes());
    let expected_digest = Sha256::digest(expected.as_bytes());
    let same: bool = presented_digest
        .as_slice()
        .ct_eq(expected_digest.as_slice())
        .into();
    if expected.is_empty() || !same {
        return Err(ApiError::unauthorized("the admin token is not valid"));
    }
    Ok(home)
}

/// Runs `job` on its own thread and awaits its result without blocking the core.
async fn run_job<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    if JOB_RUNNING.swap(true, Ordering::AcqRel) {
        return Err(ApiError::new(
            409,
            "admin_busy",
            "another admin job (fsck or backup) is running; retry when it has finished",
        ));
    }
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("admin-job".into())
        .spawn(move || {
            let _slot = JobSlot;
            let _ = tx.send(job());
        });
    if let Err(e) = spawned {
        JOB_RUNNING.store(false, Ordering::Release);
        return Err(job_failed("starting the admin job", &e));
    }
    rx.await
        .map_err(|_| job_failed("the admin job", &"it stopped without an answer"))?
}
