//! Shard writers: one thread per shard, the only code that writes that shard's redb file.
//! Cores hand writes over a bounded channel and await a oneshot reply, so fsyncs and the CPU
//! cost of a publish (base64, sha512, rendering, gzip) never block a core's event loop.
//!
//! Group commit: a writer blocks for the first job, then takes every job already queued (up to
//! `WRITER_BATCH_MAX`) and applies them in one transaction: one fsync for the whole batch.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::SystemTime;

use engine::auth::AuthStore;
use engine::blob::BlobStore;
use engine::names::PackageName;
use engine::publish::{self, PackagePut, PublishError};
use engine::shard::{ShardId, ShardStore, WriteError, WriteOp, WriteOutcome};
use futures_channel::oneshot;

use crate::limits::{WRITER_BATCH_MAX, WRITER_QUEUE_DEPTH};

/// Work for a shard writer.
pub enum WriterJob {
    /// A raw `PUT /NAME` body (a publish, or a metadata update such as deprecate,
    /// unpublish of a version or owner changes), parsed on the writer thread (CPU-heavy).
    /// `rev` comes from a `/-rev/REV` URL and applies when the body names none.
    Put {
        name: PackageName,
        body: Vec<u8>,
        user: String,
        rev: Option<String>,
    },
    /// An already-validated op.
    Op(WriteOp),
}

type Reply = oneshot::Sender<Result<WriteOutcome, WriteError>>;

/// Senders to every shard writer, indexed by shard.
#[derive(Clone)]
pub struct Writers {
    senders: Vec<flume::Sender<(WriterJob, Reply)>>,
}

/// Why a write could not even be attempted.
#[derive(Debug, thiserror::Error)]
#[error("the shard writer has stopped")]
pub struct WriterGone;

impl Writers {
    /// Starts one writer thread per shard.
    ///
    /// # Errors
    /// Thread creation failures.
    pub fn start(
        shards: &[Arc<ShardStore>],
        blobs: &Arc<BlobStore>,
        auth: &Arc<AuthStore>,
    ) -> std::io::Result<(Writers, Vec<JoinHandle<()>>)> {
        let mut senders = Vec::with_capacity(shards.len());
        let mut threads = Vec::with_capacity(shards.len());
        for shard in shards {
            let (tx, rx) = flume::bounded(WRITER_QUEUE_DEPTH);
            let shard = Arc::clone(shard);
            let blobs = Arc::clone(blobs);
            let auth = Arc::clone(auth);
            let thread = std::thread::Builder::new()
                .name(format!("shard-writer-{}", shard.id().0))
                .spawn(move || run(&shard, &blobs, &auth, &rx))?;
            senders.push(tx);
            threads.push(thread);
        }
        Ok((Writers { senders }, threads))
    }

    /// Submits `job` to `shard`'s writer and waits for its durable result.
    ///
    /// # Errors
    /// `WriterGone` when the writer thread has exited.
    pub async fn submit(
        &self,
        shard: ShardId,
        job: WriterJob,
    ) -> Result<Result<WriteOutcome, WriteError>, WriterGone> {
        let (tx, rx) = oneshot::channel();
        self.senders[usize::from(shard.0)]
            .send_async((job, tx))
            .await
            .map_err(|_| WriterGone)?;
        rx.await.map_err(|_| WriterGone)
    }
}

fn run(
    shard: &ShardStore,
    blobs: &BlobStore,
    auth: &AuthStore,
    rx: &flume::Receiver<(WriterJob, Reply)>,
) {
    while let Ok(first) = rx.recv() {
        let mut ops = Vec::new();
        let mut replies = Vec::new();
        let mut next = Some(first);
        while let Some((job, reply)) = next.take() {
            match prepare(job, auth) {
                Ok(op) => {
                    ops.push(op);
                    replies.push(reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(WriteError::Refused(e)));
                }
            }
            if ops.len() < WRITER_BATCH_MAX {
                next = rx.try_recv().ok();
            }
        }
        if ops.is_empty() {
            continue;
        }
        let results = shard.apply_batch(ops, blobs, SystemTime::now());
        for (reply, result) in replies.into_iter().zip(results) {
            // A client that went away does not undo a durable write; nothing to do.
            let _ = reply.send(result);
        }
    }
}

fn prepare(job: WriterJob, auth: &AuthStore) -> Result<WriteOp, PublishError> {
    match job {
        WriterJob::Op(op) => Ok(op),
        WriterJob::Put {
            name,
            mut body,
            user,
            rev,
        } => {
            match publish::parse_package_put(&name, &mut body)? {
                PackagePut::Publish(request) => Ok(WriteOp::Publish { request, user }),
                PackagePut::Update(mut request) => {
                    if request.rev.is_none() {
                        request.rev = rev;
                    }
                    for maintainer in request.maintainers.iter().flatten() {
                        // An unreadable auth store refuses the change rather than guessing.
                        if !matches!(auth.read_user(maintainer), Ok(Some(_))) {
                            return Err(PublishError::UnknownUser {
                                user: maintainer.clone(),
                            });
                        }
                    }
                    Ok(WriteOp::Update { request, user })
                }
            }
        }
    }
}
