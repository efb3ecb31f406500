//! Shard writers: one thread per shard, the only code that writes that shard's redb file.
//! Cores hand writes over a bounded channel and await a oneshot reply, so fsyncs and the CPU
//! cost of a publish (base64, sha512, rendering, gzip) never block a core's event loop.
//!
//! Group commit: a writer blocks for the first job, then takes every job already queued (up to
//! `WRITER_BATCH_MAX`) and applies them in one transaction: one fsync for the whole batch.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use engine::auth::AuthStore;
use engine::blob::BlobStore;
use engine::names::PackageName;
use engine::publish::{self, PackagePut, PublishError};
use engine::shard::{ShardId, ShardStore, WriteError, WriteOp, WriteOutcome};
use futures_channel::oneshot;

use crate::limits::{WRITER_BATCH_MAX, WRITER_QUEUE_DEPTH};
use crate::metrics::{Mailbox, SnapshotRequest, WriterMetrics};

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
    mailboxes: Vec<Mailbox<WriterMetrics>>,
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
        let mut mailboxes = Vec::with_capacity(shards.len());
        let mut threads = Vec::with_capacity(shards.len());
        for shard in shards {
            let (tx, rx) = flume::bounded(WRITER_QUEUE_DEPTH);
            let (mailbox_tx, mailbox_rx) = flume::bounded(4);
            let shard = Arc::clone(shard);
            let blobs = Arc::clone(blobs);
            let auth = Arc::clone(auth);
            let thread = std::thread::Builder::new()
                .name(format!("shard-writer-{}", shard.id().0))
                .spawn(move || run(&shard, &blobs, &auth, &rx, &mailbox_rx))?;
            senders.push(tx);
            mailboxes.push(mailbox_tx);
            threads.push(thread);
        }
        Ok((Writers { senders, mailboxes }, threads))
    }

    /// Every writer's metrics (writers answer between group commits).
    pub async fn metrics(&self) -> Vec<WriterMetrics> {
        let mut out = Vec::with_capacity(self.mailboxes.len());
        for mailbox in &self.mailboxes {
            let (tx, rx) = oneshot::channel();
            if mailbox.send_async(tx).await.is_ok() {
                if let Ok(snapshot) = rx.await {
                    out.push(snapshot);
                }
            }
        }
        out
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

enum Event {
    Job((WriterJob, Reply)),
    Metrics(SnapshotRequest<WriterMetrics>),
    Closed,
}

fn run(
    shard: &ShardStore,
    blobs: &BlobStore,
    auth: &AuthStore,
    rx: &flume::Receiver<(WriterJob, Reply)>,
    mailbox: &flume::Receiver<SnapshotRequest<WriterMetrics>>,
) {
    let mut metrics = WriterMetrics::default();
    loop {
        let event = flume::Selector::new()
            .recv(rx, |job| job.map_or(Event::Closed, Event::Job))
            .recv(mailbox, |request| {
                request.map_or(Event::Closed, Event::Metrics)
            })
            .wait();
        let first = match event {
            Event::Job(job) => job,
            Event::Metrics(reply) => {
                let _ = reply.send(metrics.clone());
                continue;
            }
            Event::Closed => return,
        };
        apply_group(shard, blobs, auth, rx, first, &mut metrics);
    }
}

/// One group commit: `first` plus every job already queued, up to `WRITER_BATCH_MAX`.
fn apply_group(
    shard: &ShardStore,
    blobs: &BlobStore,
    auth: &AuthStore,
    rx: &flume::Receiver<(WriterJob, Reply)>,
    first: (WriterJob, Reply),
    metrics: &mut WriterMetrics,
) {
    let started = Instant::now();
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
                metrics.refused += 1;
                let _ = reply.send(Err(WriteError::Refused(e)));
            }
        }
        if ops.len() < WRITER_BATCH_MAX {
            next = rx.try_recv().ok();
        }
    }
    if ops.is_empty() {
        return;
    }
    metrics.ops += ops.len() as u64;
    let results = shard.apply_batch(ops, blobs, SystemTime::now());
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    metrics.batches += 1;
    metrics.commit.saturating_record(micros.max(1));
    metrics.commit_sum_us += micros;
    for (reply, result) in replies.into_iter().zip(results) {
        match &result {
            Ok(WriteOutcome::Published { changed: true, .. }) => metrics.publishes += 1,
            Ok(_) => {}
            Err(_) => metrics.refused += 1,
        }
        // A client that went away does not undo a durable write; nothing to do.
        let _ = reply.send(result);
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
                    match (&request.rev, rev) {
                        (Some(body), Some(url)) if *body != url => {
                            return Err(PublishError::RevMismatch {
                                url,
                                body: body.clone(),
                            });
                        }
                        (None, url) => request.rev = url,
                        _ => {}
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
