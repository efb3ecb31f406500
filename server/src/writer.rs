//! Shard writers: one thread per shard, the only code that writes that shard's redb file.
//! Cores hand writes over a bounded channel and await a oneshot reply, so fsyncs and the CPU
//! cost of a publish (base64, sha512, rendering, gzip) never block a core's event loop.
//!
//! A raw `PUT` body first goes to the prepare pool (`PUBLISH_PREPARE_THREADS` threads), which
//! parses and verifies it (JSON, base64, sha512/sha1, blake3), checks a publish against the
//! committed state and makes its tarball durable when it is a file (bigger than
//! `engine::limits::INLINE_BLOB_BYTES_MAX`), then forwards the op to the shard's writer. An
//! inline-sized tarball is written by the writer into the shard, in the commit that records
//! the version: no file, no fsync of its own.
//! That work (CPU, and fsyncs that mostly wait on the disk) thus runs for many publishes at
//! once and overlaps the writers' commits instead of lengthening them.
//!
//! Group commit: a writer blocks for the first op, then takes every op already queued (up to
//! `WRITER_BATCH_MAX`) and applies them in one transaction: one fsync for the whole batch
//! (plus the syncs of the batch's blob files, issued in parallel; see
//! `ShardStore::apply_batch`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use engine::auth::AuthStore;
use engine::blob::{BlobError, BlobId, BlobStore};
use engine::names::PackageName;
use engine::publish::{self, PackagePut, PublishError};
use engine::shard::{FreeSpace, ShardId, ShardStore, WriteError, WriteOp, WriteOutcome};
use futures_channel::oneshot;

use crate::idle::WorkerRelease;
use crate::limits::{
    PREPARE_BATCH_MAX, PUBLISH_PREPARE_THREADS, WRITER_BATCH_MAX, WRITER_QUEUE_DEPTH,
};
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
    senders: Vec<flume::Sender<(WriteOp, Reply)>>,
    parse: flume::Sender<ParseJob>,
    mailboxes: Vec<Mailbox<WriterMetrics>>,
    /// Stop requests, one per writer; each is answered once that writer has checkpointed.
    stops: Vec<flume::Sender<flume::Sender<()>>>,
    /// Bodies the parse pool refused (counted with the writers' refusals in metrics).
    parse_refused: Arc<AtomicU64>,
}

/// A raw body for the parse pool, and where its op goes next.
struct ParseJob {
    shard: ShardId,
    job: WriterJob,
    reply: Reply,
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
        idle_release_secs: u64,
    ) -> std::io::Result<(Writers, Vec<JoinHandle<()>>)> {
        let mut senders = Vec::with_capacity(shards.len());
        let mut mailboxes = Vec::with_capacity(shards.len());
        let mut threads = Vec::with_capacity(shards.len());
        let mut stops = Vec::with_capacity(shards.len());
        for shard in shards {
            let (tx, rx) = flume::bounded(WRITER_QUEUE_DEPTH);
            let (mailbox_tx, mailbox_rx) = flume::bounded(4);
            let (stop_tx, stop_rx) = flume::bounded(1);
            let shard = Arc::clone(shard);
            let blobs = Arc::clone(blobs);
            let inbox = Inbox {
                jobs: rx,
                metrics: mailbox_rx,
                stop: stop_rx,
            };
            let thread = std::thread::Builder::new()
                .name(format!("shard-writer-{}", shard.id().0))
                .spawn(move || run(&shard, &blobs, &inbox, idle_release_secs))?;
            senders.push(tx);
            mailboxes.push(mailbox_tx);
            stops.push(stop_tx);
            threads.push(thread);
        }
        let (parse, parse_rx) = flume::bounded::<ParseJob>(WRITER_QUEUE_DEPTH);
        let parse_refused = Arc::new(AtomicU64::new(0));
        for i in 0..PUBLISH_PREPARE_THREADS {
            let pool = PreparePool {
                rx: parse_rx.clone(),
                writers: senders.clone(),
                shards: shards.to_vec(),
                blobs: Arc::clone(blobs),
                auth: Arc::clone(auth),
                refused: Arc::clone(&parse_refused),
                idle_release_secs,
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("publish-prepare-{i}"))
                    .spawn(move || pool.run())?,
            );
        }
        let writers = Writers {
            senders,
            parse,
            mailboxes,
            stops,
            parse_refused,
        };
        Ok((writers, threads))
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
        if let Some(first) = out.first_mut() {
            first.refused += self.parse_refused.load(Ordering::Relaxed);
        }
        out
    }

    /// Stops every writer after the group commit it is in, each with a checkpoint
    /// (`ShardStore::checkpoint`) so the next start is fast, and waits for them, at most
    /// `timeout` each. Writes submitted afterwards fail with `WriterGone`. Blocking: call it
    /// from a plain thread, not a core.
    pub fn stop_all(&self, timeout: std::time::Duration) {
        let acks: Vec<_> = self
            .stops
            .iter()
            .filter_map(|stop| {
                let (ack, done) = flume::bounded(1);
                stop.send(ack).ok().map(|()| done)
            })
            .collect();
        for done in acks {
            let _ = done.recv_timeout(timeout);
        }
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
        match job {
            WriterJob::Op(op) => self.senders[usize::from(shard.0)]
                .send_async((op, tx))
                .await
                .map_err(|_| WriterGone)?,
            put @ WriterJob::Put { .. } => self
                .parse
                .send_async(ParseJob {
                    shard,
                    job: put,
                    reply: tx,
                })
                .await
                .map_err(|_| WriterGone)?,
        }
        rx.await.map_err(|_| WriterGone)
    }
}

/// What a prepare-pool thread holds.
struct PreparePool {
    rx: flume::Receiver<ParseJob>,
    writers: Vec<flume::Sender<(WriteOp, Reply)>>,
    shards: Vec<Arc<ShardStore>>,
    blobs: Arc<BlobStore>,
    auth: Arc<AuthStore>,
    refused: Arc<AtomicU64>,
    idle_release_secs: u64,
}

/// A parsed op on its way to a writer.
struct Prepared {
    shard: ShardId,
    op: WriteOp,
    reply: Reply,
    /// Blob files (new tarballs too big to be inline) that must be durable before the op
    /// goes to the writer.
    blobs: Vec<BlobId>,
}

impl PreparePool {
    /// Prepares batches until every sender is gone: a thread blocks for one body, then takes
    /// every body already queued (up to `PREPARE_BATCH_MAX`). Each is parsed and verified,
    /// and a publish is checked against the committed state. An op with no tarball file to
    /// write (inline-sized tarballs, metadata changes) goes to its writer at once; the
    /// batch's new tarball files are made durable together (`BlobStore::write_all`: a few
    /// shared journal commits for the whole batch), and only then are their ops handed to
    /// their writers. The writers are left with planning, inline tarballs and one commit per
    /// group.
    fn run(self) {
        let mut release = WorkerRelease::new(self.idle_release_secs);
        while let Some(first) = release.recv(&self.rx) {
            let mut batch = vec![first];
            while batch.len() < PREPARE_BATCH_MAX {
                match self.rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let mut ready = Vec::with_capacity(batch.len());
            let mut reserved = 0u64;
            // Free space per shard, read once for the batch when a publish first needs it.
            let mut space: Vec<Option<FreeSpace>> = vec![None; self.shards.len()];
            for ParseJob { shard, job, reply } in batch {
                match self.check(shard, job, &mut reserved, &mut space) {
                    // No blob file to make durable (inline-sized tarballs, metadata
                    // changes): on to the writer now, not after the rest of the batch.
                    Ok((op, blobs)) if blobs.is_empty() => {
                        // A stopped writer drops the reply, which the waiting core reports.
                        let _ = self.writers[usize::from(shard.0)].send((op, reply));
                    }
                    Ok((op, blobs)) => ready.push(Prepared {
                        shard,
                        op,
                        reply,
                        blobs,
                    }),
                    Err(e) => self.refuse(reply, e),
                }
            }
            self.store_blobs_then_forward(ready);
        }
    }

    /// Parses one body; for a publish, also the writer's refusals and the space its tarballs
    /// need (counted into `reserved` for the batch, and checked against the shard's free
    /// space as `space` read it for this batch).
    fn check(
        &self,
        shard: ShardId,
        job: WriterJob,
        reserved: &mut u64,
        space: &mut [Option<FreeSpace>],
    ) -> Result<(WriteOp, Vec<BlobId>), WriteError> {
        match prepare(job, &self.auth)? {
            WriteOp::Publish { request, user } => {
                let store = &self.shards[usize::from(shard.0)];
                let (blobs, needed) = store.check_publish(&request, &user, &self.blobs)?;
                let free = space[usize::from(shard.0)]
                    .get_or_insert_with(|| store.free_space(&self.blobs));
                free.check(*reserved + needed)?;
                *reserved += needed;
                Ok((WriteOp::PublishPrepared { request, user }, blobs))
            }
            other => Ok((other, Vec::new())),
        }
    }

    fn store_blobs_then_forward(&self, ready: Vec<Prepared>) {
        let mut items: Vec<(BlobId, &[u8])> = Vec::new();
        for prepared in &ready {
            let WriteOp::PublishPrepared { request, .. } = &prepared.op else {
                continue;
            };
            for version in &request.versions {
                if prepared.blobs.contains(&version.blob)
                    && !items.iter().any(|(id, _)| *id == version.blob)
                {
                    items.push((version.blob, version.tarball.as_slice()));
                }
            }
        }
        let results = self.blobs.write_all(&items);
        let failed: Vec<(BlobId, BlobError)> = items
            .iter()
            .zip(results)
            .filter_map(|((id, _), result)| result.err().map(|e| (*id, e)))
            .collect();
        for prepared in ready {
            let failure = prepared
                .blobs
                .iter()
                .find_map(|id| failed.iter().find(|(f, _)| f == id));
            if let Some((_, e)) = failure {
                self.refuse(prepared.reply, WriteError::Blob(e.duplicate()));
                continue;
            }
            // A stopped writer drops the reply, which the waiting core reports.
            let _ = self.writers[usize::from(prepared.shard.0)].send((prepared.op, prepared.reply));
        }
    }

    fn refuse(&self, reply: Reply, e: WriteError) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let _ = reply.send(Err(e));
    }
}

/// What a writer listens to.
struct Inbox {
    jobs: flume::Receiver<(WriteOp, Reply)>,
    metrics: flume::Receiver<SnapshotRequest<WriterMetrics>>,
    stop: flume::Receiver<flume::Sender<()>>,
}

enum Event {
    Job((WriteOp, Reply)),
    Metrics(SnapshotRequest<WriterMetrics>),
    Stop(flume::Sender<()>),
    Closed,
}

fn run(shard: &ShardStore, blobs: &BlobStore, inbox: &Inbox, idle_release_secs: u64) {
    let mut metrics = WriterMetrics::default();
    let mut release = WorkerRelease::new(idle_release_secs);
    loop {
        let selector = flume::Selector::new()
            .recv(&inbox.jobs, |job| job.map_or(Event::Closed, Event::Job))
            .recv(&inbox.metrics, |request| {
                request.map_or(Event::Closed, Event::Metrics)
            })
            .recv(&inbox.stop, |stop| stop.map_or(Event::Closed, Event::Stop));
        let event = match release.wait_limit() {
            None => selector.wait(),
            Some(limit) => {
                let Ok(event) = selector.wait_timeout(limit) else {
                    shard.release_memory();
                    release.idle();
                    continue;
                };
                event
            }
        };
        let first = match event {
            Event::Job(job) => job,
            Event::Metrics(reply) => {
                let _ = reply.send(metrics.clone());
                continue;
            }
            Event::Stop(ack) => {
                match shard.checkpoint() {
                    Ok(()) => tracing::info!(shard.id = shard.id().0, "shard checkpointed"),
                    Err(e) => {
                        tracing::warn!(shard.id = shard.id().0, error = %e, "checkpoint failed");
                    }
                }
                let _ = ack.send(());
                return;
            }
            Event::Closed => return,
        };
        release.worked();
        apply_group(shard, blobs, &inbox.jobs, first, &mut metrics);
    }
}

/// One group commit: `first` plus every op already queued, up to `WRITER_BATCH_MAX`.
fn apply_group(
    shard: &ShardStore,
    blobs: &BlobStore,
    rx: &flume::Receiver<(WriteOp, Reply)>,
    first: (WriteOp, Reply),
    metrics: &mut WriterMetrics,
) {
    let started = Instant::now();
    let mut ops = vec![first.0];
    let mut replies = vec![first.1];
    while ops.len() < WRITER_BATCH_MAX {
        let Ok((op, reply)) = rx.try_recv() else {
            break;
        };
        ops.push(op);
        replies.push(reply);
    }
    metrics.ops += ops.len() as u64;
    let (results, phases) = shard.apply_batch_timed(ops, blobs, SystemTime::now());
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    metrics.batches += 1;
    for (total, phase) in metrics.phases_us.iter_mut().zip(phases.as_array()) {
        *total += phase;
    }
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
