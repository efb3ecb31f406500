//! `agentregistry serve`, top-down: validate config -> bind -> open the data directory ->
//! open shards, blobs, auth -> seed the config record -> start writers, auth worker and the
//! config watcher -> announce readiness -> run the cores until the process is stopped.
//!
//! Stopping: every acknowledged write was durable before it was acknowledged, so the process
//! may be killed at any moment and loses nothing. SIGTERM and SIGINT stop it cleanly: each
//! shard writer finishes its group commit and checkpoints its redb file (allocator state
//! saved), so the next start opens it in milliseconds instead of rebuilding that state by
//! walking every tree (seconds at 100,000 packages).

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use engine::auth::AuthStore;
use engine::blob::BlobStore;
use engine::config_record::{ConfigFile, ConfigRecord, FLAG_OPEN_REGISTRATION};
use engine::data_dir::DataDir;
use engine::shard::{ShardId, ShardStore};
use rand::RngCore;

use crate::auth::AuthWorker;
use crate::blob_read::BlobReaders;
use crate::cache::SharedPackages;
use crate::config::Config;
use crate::cores::{self, Shared};
use crate::idle::IdleClock;
use crate::live_config::{self, LiveConfig};
use crate::writer::Writers;

/// Runs the registry until the process is stopped.
///
/// # Errors
/// Anything that prevents serving: a bad data directory, a port in use, storage errors.
pub fn run(config: &Config) -> anyhow::Result<()> {
    let listener =
        bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    let base_url = config.base_url(&listener);
    let data = DataDir::open_or_create(&config.home, config.shards_new)?;
    let (config_file, record) = open_config_record(&data, &base_url, config)?;
    if record.has(engine::config_record::FLAG_DEBUG) {
        tracing::info!("debug flag set in the config record");
    }
    let mut shards = Vec::with_capacity(usize::from(data.shard_count()));
    for index in 0..data.shard_count() {
        let id = ShardId(index);
        let shard = ShardStore::open(&data.shard_path(id), id, &base_url)
            .with_context(|| format!("cannot open shard {index}"))?;
        shards.push(Arc::new(shard));
    }
    let blobs = Arc::new(BlobStore::open(&data.blobs_path())?);
    let auth = Arc::new(AuthStore::open(&data.auth_path())?);
    write_admin_token(data.home())?;
    crate::admin::write_server_file(data.home(), listener.local_addr()?)?;
    let idle_secs = config.idle_release_secs;
    let (writers, _writer_threads) = Writers::start(&shards, &blobs, &auth, idle_secs)?;
    let auth_worker = AuthWorker::start(Arc::clone(&auth), idle_secs)?;
    let blob_readers = BlobReaders::start(&blobs, idle_secs)?;
    let blobs_for_scan = Arc::clone(&blobs);
    std::thread::Builder::new()
        .name("blob-stats".into())
        .spawn(move || {
            if let Err(e) = blobs_for_scan.scan_stats() {
                tracing::error!(error = %e, "counting blobs for metrics failed");
            }
        })?;
    let live = Arc::new(LiveConfig::new(&record));
    let (core_mailboxes, mailbox_receivers): (Vec<_>, Vec<_>) =
        (0..config.cores).map(|_| flume::bounded(4)).unzip();
    live_config::start_watcher(config_file, Arc::clone(&live))?;
    let shared = Arc::new(Shared {
        base_url: base_url.clone(),
        public_url_explicit: config.public_url.is_some(),
        shards,
        packages: Arc::new(SharedPackages::new(config.package_cache_bytes)),
        blobs,
        blob_readers,
        auth,
        auth_worker,
        writers,
        live,
        core_mailboxes,
        idle: IdleClock::new(
            config.cores,
            config.idle_release_secs,
            crate::idle::unix_secs(),
        ),
    });
    tracing::info!(
        home = %data.home().display(),
        shard.count = data.shard_count(),
        cores = config.cores,
        url = %base_url,
        "agentregistry ready"
    );
    stop_on_signal(&shared.writers)?;
    let bound = listener.local_addr()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "agentregistry listening on http://{bound}")?;
    stdout.flush()?;
    drop(stdout);
    cores::run(config.driver, &listener, &shared, mailbox_receivers)
}

/// How long a stop waits for each shard writer's last commit and checkpoint.
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// On SIGTERM or SIGINT: checkpoint every shard (`Writers::stop_all`), then exit 0.
fn stop_on_signal(writers: &Writers) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("cannot install signal handlers")?;
    let writers = writers.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::info!(
                    signal,
                    "stopping: finishing commits and checkpointing shards"
                );
                writers.stop_all(STOP_TIMEOUT);
                tracing::info!("stopped");
                std::process::exit(0);
            }
        })?;
    Ok(())
}

/// Listen backlog. The std default (128) overflows when a swarm opens hundreds of
/// connections at once, and every overflowed client waits a second for a SYN retransmit.
const LISTEN_BACKLOG: i32 = 4096;

/// How long `bind` keeps retrying a port that is still held. A stopped server's io_uring
/// instance is torn down by the kernel after the process exits, and the listening socket its
/// pending accepts hold closes only then: a restart right after a stop would otherwise fail.
const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(3);

fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let started = std::time::Instant::now();
    loop {
        match try_bind(addr) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && addr.port() != 0
                    && started.elapsed() < BIND_RETRY =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

fn try_bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Opens `config.bin` (created with defaults on first start: registration open when the
/// registry listens on loopback) and applies `AGENTREGISTRY_*` variables from the environment.
fn open_config_record(
    data: &DataDir,
    base_url: &str,
    config: &Config,
) -> anyhow::Result<(ConfigFile, ConfigRecord)> {
    let flags = if config.listen.ip().is_loopback() {
        FLAG_OPEN_REGISTRATION
    } else {
        0
    };
    let initial = ConfigRecord::new(base_url, flags);
    let (mut file, mut record) = ConfigFile::open_or_create(&data.config_path(), &initial)?;
    let seeded = crate::config_cli::apply_env(record, |name| std::env::var(name).ok())
        .map_err(|e| anyhow::anyhow!("environment: {e}"))?;
    let hash = engine::config_record::registry_hash(base_url);
    let wanted = ConfigRecord {
        registry_hash: hash,
        ..seeded
    };
    if wanted != record {
        record = file.write(&wanted)?;
    }
    Ok((file, record))
}

/// SPEC section 2: an admin session token in `<home>/admin.token`, mode 0600, new each start.
fn write_admin_token(home: &Path) -> anyhow::Result<()> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let path = home.join("admin.token");
    let _ = fs::remove_file(&path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(hex::encode(bytes).as_bytes())?;
    file.sync_all()?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    Ok(())
}
