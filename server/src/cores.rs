//! Thread per core. Each core runs one monoio runtime (io_uring, falling back to epoll by
//! itself) that accepts on the shared listener and serves its connections to completion.
//!
//! Which work runs where (the one rule for cross-core work):
//! - Reads (packuments, tarballs, tokens) run on the core that accepted the connection,
//!   through redb MVCC read transactions on the owning shard (any core may read any shard),
//!   with per-core caches. No cross-core hop on the read path: ARCHITECTURE.md has the
//!   measurement behind this choice.
//! - Writes go to the shard's single writer thread (`writer.rs`) over a bounded channel; the
//!   core awaits the durable result. Auth hashing and auth writes go to the auth worker.
//!
//! Shared state (`Shared`) is immutable after startup except through atomics (shard
//! generations, the live config record); per-core state (`Core`) is `!Send` and never locked.

use std::cell::{Cell, RefCell};
use std::net::TcpListener;
use std::rc::Rc;
use std::sync::Arc;
use std::time::SystemTime;

use engine::auth::AuthStore;
use engine::blob::BlobStore;
use engine::shard::{shard_for, ShardStore};

use crate::auth::{AuthWorker, BasicCache};
use crate::blob_read::BlobReaders;
use crate::cache::{PackageCache, RebasedCache, SharedPackages, TarballCache};
use crate::config::DriverChoice;
use crate::idle::IdleClock;
use crate::live_config::LiveConfig;
use crate::metrics::{CoreMetrics, Mailbox, SnapshotRequest};
use crate::writer::Writers;

/// State every core shares (read-mostly; mutation only through atomics inside).
pub struct Shared {
    /// The base URL documents are pre-rendered for.
    pub base_url: String,
    /// Set when the operator gave `--public-url`: then tarball URLs always use it. Otherwise
    /// a client that reached us under another `Host` (e.g. `localhost` vs `127.0.0.1`) gets
    /// URLs for that host, as Verdaccio does, so its credentials and http allow-lists apply.
    pub public_url_explicit: bool,
    pub shards: Vec<Arc<ShardStore>>,
    /// The packument cache every core reads through (each with its own `PackageCache`).
    pub packages: Arc<SharedPackages>,
    pub blobs: Arc<BlobStore>,
    /// Reads blob files off the event loop (first reads of big tarballs).
    pub blob_readers: BlobReaders,
    pub auth: Arc<AuthStore>,
    pub auth_worker: AuthWorker,
    pub writers: Writers,
    pub live: Arc<LiveConfig>,
    /// Each core's metrics mailbox, by core index (see `metrics.rs`).
    pub core_mailboxes: Vec<Mailbox<CoreMetrics>>,
    /// When to give memory back (`idle.rs`).
    pub idle: IdleClock,
}

impl Shared {
    /// The base URL for a request that named `host`, when it differs from `base_url`.
    #[must_use]
    pub fn rebase_for(&self, host: Option<&str>) -> Option<String> {
        if self.public_url_explicit {
            return None;
        }
        let host = host?;
        let authority = self.base_url.strip_prefix("http://")?;
        (host != authority).then(|| format!("http://{host}"))
    }

    /// The shard that owns `name`.
    #[must_use]
    pub fn shard(&self, name: &str) -> &Arc<ShardStore> {
        let count = u16::try_from(self.shards.len()).expect("shard count fits u16");
        &self.shards[usize::from(shard_for(name, count).0)]
    }
}

/// One core's own state.
pub struct Core {
    pub index: usize,
    pub shared: Arc<Shared>,
    pub packages: RefCell<PackageCache>,
    pub rebased: RefCell<RebasedCache>,
    pub tarballs: RefCell<TarballCache>,
    pub basic: RefCell<BasicCache>,
    pub metrics: RefCell<CoreMetrics>,
    date: RefCell<(u64, String)>,
    /// The shared cache's releases this core has followed (`follow_release`).
    releases_followed: Cell<u64>,
}

impl Core {
    fn new(index: usize, shared: Arc<Shared>) -> Core {
        Core {
            index,
            packages: RefCell::new(PackageCache::new(Arc::clone(&shared.packages))),
            shared,
            rebased: RefCell::default(),
            tarballs: RefCell::default(),
            basic: RefCell::default(),
            metrics: RefCell::default(),
            date: RefCell::new((0, String::new())),
            releases_followed: Cell::new(0),
        }
    }

    /// A copy of this core's metrics, cache counters included.
    pub fn metrics_snapshot(&self) -> CoreMetrics {
        let mut snapshot = self.metrics.borrow().clone();
        let cache = self.packages.borrow();
        snapshot.cache_hits = cache.hits;
        snapshot.cache_revalidations = cache.revalidations;
        snapshot.cache_loads = cache.loads;
        snapshot
    }

    /// Empties this core's caches and kept read transactions and returns its free memory to
    /// the system, once per release of the shared cache (`idle.rs`). Runs between requests.
    fn follow_release(&self) {
        let releases = self.shared.idle.releases();
        if self.releases_followed.get() == releases {
            return;
        }
        self.releases_followed.set(releases);
        self.packages.borrow_mut().release_all();
        self.rebased.borrow_mut().clear();
        self.tarballs.borrow_mut().clear();
        crate::idle::return_free_memory();
        tracing::debug!(core = self.index, "idle: memory released");
    }

    /// The HTTP `Date` value, formatted at most once per second per core.
    pub fn write_date(&self, out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut date = self.date.borrow_mut();
        if date.0 != secs || date.1.is_empty() {
            *date = (secs, httpdate::fmt_http_date(now));
            self.shared.idle.answered(self.index, secs);
        }
        out.extend_from_slice(date.1.as_bytes());
    }
}

/// Starts `cores` threads serving `listener` and waits for them (they run until the process
/// exits).
///
/// # Errors
/// A core that cannot build any runtime, or thread creation failures.
pub fn run(
    driver: DriverChoice,
    listener: &TcpListener,
    shared: &Arc<Shared>,
    mailboxes: Vec<flume::Receiver<SnapshotRequest<CoreMetrics>>>,
) -> anyhow::Result<()> {
    let mut threads = Vec::with_capacity(mailboxes.len());
    for (index, mailbox) in mailboxes.into_iter().enumerate() {
        let listener = listener.try_clone()?;
        let shared = Arc::clone(shared);
        let thread = std::thread::Builder::new()
            .name(format!("core-{index}"))
            .spawn(move || run_core(index, driver, listener, shared, mailbox))?;
        threads.push(thread);
    }
    for thread in threads {
        match thread.join() {
            Ok(result) => result?,
            Err(_) => anyhow::bail!("a core thread panicked"),
        }
    }
    Ok(())
}

fn run_core(
    index: usize,
    driver: DriverChoice,
    listener: TcpListener,
    shared: Arc<Shared>,
    mailbox: flume::Receiver<SnapshotRequest<CoreMetrics>>,
) -> anyhow::Result<()> {
    let core = Rc::new(Core::new(index, shared));
    let want_uring = driver != DriverChoice::Legacy;
    if want_uring && monoio::utils::detect_uring() {
        // Only this thread submits to its ring, and completions are reaped at its own kernel
        // entries: the kernel need not interrupt it (an IPI and a forced return to the kernel)
        // to run completion work. A kernel without these flags (before 6.0) builds the ring
        // without them.
        let ring = |urb: Option<io_uring::Builder>| {
            let builder = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().with_entries(1024);
            match urb {
                Some(urb) => builder.uring_builder(urb),
                None => builder,
            }
            .enable_timer()
            .build()
        };
        let mut tuned = io_uring::IoUring::builder();
        tuned.setup_coop_taskrun().setup_single_issuer();
        let mut ring_flags = "coop_taskrun,single_issuer";
        let built = ring(Some(tuned)).or_else(|_| {
            ring_flags = "none";
            ring(None)
        });
        match built {
            Ok(mut runtime) => {
                tracing::info!(
                    core = index,
                    io.driver = "io_uring",
                    io.ring_flags = ring_flags,
                    "core started"
                );
                core.metrics.borrow_mut().driver = "io_uring";
                return runtime.block_on(start(listener, core, mailbox));
            }
            // MEASUREMENTS.md: detection can succeed and ring creation still fail (memlock).
            Err(e) if driver == DriverChoice::Auto => {
                tracing::warn!(core = index, error = %e, "io_uring ring failed; using epoll");
            }
            Err(e) => anyhow::bail!("core {index}: io_uring requested but unavailable: {e}"),
        }
    } else if driver == DriverChoice::Uring {
        anyhow::bail!("core {index}: io_uring requested but the kernel does not offer it");
    }
    let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()?;
    tracing::info!(core = index, io.driver = "epoll", "core started");
    core.metrics.borrow_mut().driver = "epoll";
    runtime.block_on(start(listener, core, mailbox))
}

async fn start(
    listener: TcpListener,
    core: Rc<Core>,
    mailbox: flume::Receiver<SnapshotRequest<CoreMetrics>>,
) -> anyhow::Result<()> {
    let answering = Rc::clone(&core);
    monoio::spawn(async move {
        while let Ok(reply) = mailbox.recv_async().await {
            let _ = reply.send(answering.metrics_snapshot());
        }
    });
    let releasing = Rc::clone(&core);
    monoio::spawn(async move {
        let period = std::time::Duration::from_millis(crate::limits::READ_TXN_RELEASE_MS);
        loop {
            monoio::time::sleep(period).await;
            releasing
                .packages
                .borrow_mut()
                .release_stale(&releasing.shared.shards);
            let shared = &releasing.shared;
            if shared.idle.claim_release(crate::idle::unix_secs()) {
                shared.packages.clear();
                shared.idle.released();
                tracing::info!(core = releasing.index, "idle: caches emptied");
            }
            releasing.follow_release();
        }
    });
    accept_loop(listener, core).await
}

async fn accept_loop(listener: TcpListener, core: Rc<Core>) -> anyhow::Result<()> {
    // The epoll driver waits for readiness and then calls accept(2): on a blocking socket that
    // call would park the whole core whenever another core took the connection first.
    listener.set_nonblocking(true)?;
    let listener = monoio::net::TcpListener::from_std(listener)?;
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                monoio::spawn(crate::conn::serve(stream, Rc::clone(&core)));
            }
            Err(e) => {
                // EMFILE and friends: log and keep serving the connections we have.
                tracing::warn!(core = core.index, error = %e, "accept failed");
                monoio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}
