//! The live config record as every core sees it: the record's fields packed into one
//! `AtomicU64` plus its generation, read lock-free on any core. A watcher thread re-reads
//! `config.bin` every `POLL_MS` (a 64-byte pread) and publishes a new generation, so a change
//! made by `agentregistry config set` in another process applies within 100 ms, no restart.
//! The two atomics are not one snapshot: a reader may briefly pair new fields with the old
//! generation, which only delays a generation-keyed refresh by one poll.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engine::config_record::{pack, unpack, ConfigFile, ConfigRecord};

const POLL_MS: u64 = 20;
const _: () = assert!(POLL_MS * 4 <= 100, "SPEC: changes apply within 100 ms");

/// The config record, readable from any core without locks.
#[derive(Debug)]
pub struct LiveConfig {
    packed: AtomicU64,
    generation: AtomicU64,
}

impl LiveConfig {
    /// Starts from `record`.
    #[must_use]
    pub fn new(record: &ConfigRecord) -> LiveConfig {
        LiveConfig {
            packed: AtomicU64::new(pack(record)),
            generation: AtomicU64::new(record.generation),
        }
    }

    /// The current record.
    #[must_use]
    pub fn record(&self) -> ConfigRecord {
        unpack(
            self.packed.load(Ordering::Acquire),
            self.generation.load(Ordering::Acquire),
        )
    }

    /// True when `flag` is set.
    #[must_use]
    pub fn has(&self, flag: u32) -> bool {
        self.record().flags & flag != 0
    }

    /// Publishes `record` to every core.
    pub fn store(&self, record: &ConfigRecord) {
        self.packed.store(pack(record), Ordering::Release);
        self.generation.store(record.generation, Ordering::Release);
    }
}

/// Starts the thread that follows `config.bin`. A record that fails its checks is logged and
/// ignored (the last good one stays live); the file's two-slot format makes that rare.
///
/// # Errors
/// Thread creation failures.
pub fn start_watcher(file: ConfigFile, live: Arc<LiveConfig>) -> std::io::Result<()> {
    let path: PathBuf = file.path().to_path_buf();
    std::thread::Builder::new()
        .name("config-watcher".into())
        .spawn(move || {
            let mut last_error = String::new();
            loop {
                std::thread::sleep(Duration::from_millis(POLL_MS));
                match file.read() {
                    Ok(record) => {
                        if record.generation != live.record().generation {
                            tracing::info!(
                                config.generation = record.generation,
                                config.flags = record.flags,
                                "config record changed"
                            );
                            live.store(&record);
                        }
                        last_error.clear();
                    }
                    Err(e) => {
                        let message = e.to_string();
                        if message != last_error {
                            tracing::error!(path = %path.display(), error = %message,
                            "config record unreadable; keeping the last good one");
                            last_error = message;
                        }
                    }
                }
            }
        })?;
    Ok(())
}
