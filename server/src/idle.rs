//! Giving memory back once the server is idle.
//!
//! Under traffic the caches fill up to their budgets (packuments: 96 MiB per CPU, shared;
//! tarballs 128 MiB and rebased documents 32 MiB per core) and each core keeps a read
//! transaction per shard. That memory is what makes the next request fast, but a registry
//! on a developer's machine or beside a swarm of agents spends most of its life waiting,
//! and should not hold hundreds of MiB while it does. When no core has answered a request
//! for `--idle-release-secs` seconds (`limits::IDLE_RELEASE_SECS_DEFAULT`; 0 never), the
//! shared packument cache is emptied, then every core empties its own caches, drops its kept
//! read transactions and asks the allocator to give its free memory back to the system.
//!
//! That last step is needed because mimalloc returns a thread's freed pages to the system
//! only while that thread runs the allocator: a core that allocates nothing keeps them. The
//! release runs on each core's own thread (`Core::follow_release`), after the shared cache
//! was emptied, so the documents a core allocated are free by the time it collects.
//!
//! Worker threads (shard writers, publish preparation, blob reads, auth) allocate too, most
//! of all during a publish storm (request bodies, decoded tarballs, rendered documents). No
//! core can collect their heaps, so each does its own (`WorkerRelease`): once it has done
//! work, a wait for its next job that lasts the same delay returns its free memory. A
//! worker that did nothing since waits without a timeout, so an idle server wakes no one.
//!
//! Who releases the shared cache is decided with one compare-and-swap, so one core does it
//! per idle period, and each core follows `releases` to do its own part exactly once per
//! release. Activity is the Unix second of each core's latest response, stored when the
//! second changes (`Core::write_date`): one relaxed store per core per second under load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// When the server has been idle long enough, and how many releases have happened.
pub struct IdleClock {
    /// Per core: the Unix second of its latest response (the start, before any).
    last_answer: Box<[AtomicU64]>,
    /// One past the latest answer second a release has followed: a release is due once per
    /// quiet period.
    released_after: AtomicU64,
    /// Releases of the shared cache so far; each core releases its own memory once per step.
    releases: AtomicU64,
    /// Quiet seconds before a release; 0 never releases.
    delay_secs: u64,
}

/// The current Unix second (0 if the clock is before 1970).
#[must_use]
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl IdleClock {
    /// A clock for `cores` cores started at Unix second `now` that releases after
    /// `delay_secs` quiet seconds (0: never).
    #[must_use]
    pub fn new(cores: usize, delay_secs: u64, now: u64) -> IdleClock {
        IdleClock {
            last_answer: (0..cores).map(|_| AtomicU64::new(now)).collect(),
            released_after: AtomicU64::new(0),
            releases: AtomicU64::new(0),
            delay_secs,
        }
    }

    /// Core `core` answered a request during Unix second `secs`.
    pub fn answered(&self, core: usize, secs: u64) {
        if let Some(last) = self.last_answer.get(core) {
            last.store(secs, Ordering::Relaxed);
        }
    }

    /// Whether the caller should release the shared cache now (then it must call
    /// `released` after): every core has been quiet for the delay at `now`, and no release
    /// followed that quiet period yet. At most one caller per period gets `true`.
    #[must_use]
    pub fn claim_release(&self, now: u64) -> bool {
        if self.delay_secs == 0 {
            return false;
        }
        let latest = self
            .last_answer
            .iter()
            .map(|last| last.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        if now < latest.saturating_add(self.delay_secs) {
            return false;
        }
        let mark = latest + 1;
        let claimed = self.released_after.load(Ordering::Relaxed);
        claimed < mark
            && self
                .released_after
                .compare_exchange(claimed, mark, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The shared cache has been emptied: every core may now release its own part.
    pub fn released(&self) {
        // Release: a core that sees the new count also sees the emptied cache.
        self.releases.fetch_add(1, Ordering::Release);
    }

    /// Releases so far.
    #[must_use]
    pub fn releases(&self) -> u64 {
        self.releases.load(Ordering::Acquire)
    }
}

/// A worker thread's own release of memory after it idled (see the module's docs).
pub struct WorkerRelease {
    /// How long a wait must last to release; `None` never releases.
    delay: Option<Duration>,
    /// Whether this thread took a job since it last released.
    worked: bool,
}

impl WorkerRelease {
    /// Releases after `delay_secs` seconds without a job (0: never).
    #[must_use]
    pub fn new(delay_secs: u64) -> WorkerRelease {
        WorkerRelease {
            delay: (delay_secs > 0).then(|| Duration::from_secs(delay_secs)),
            worked: false,
        }
    }

    /// How long the next wait for a job may last before `idle` is due; `None`: as long as
    /// it takes.
    #[must_use]
    pub fn wait_limit(&self) -> Option<Duration> {
        if self.worked {
            self.delay
        } else {
            None
        }
    }

    /// The thread took a job.
    pub fn worked(&mut self) {
        self.worked = true;
    }

    /// A wait of `wait_limit` ended without a job: return this thread's free memory.
    pub fn idle(&mut self) {
        return_free_memory();
        self.worked = false;
    }

    /// The next message of `rx` (`None` once every sender is gone), releasing memory on the
    /// way when the wait is long enough.
    pub fn recv<T>(&mut self, rx: &flume::Receiver<T>) -> Option<T> {
        loop {
            let received = match self.wait_limit() {
                None => rx.recv().ok(),
                Some(limit) => match rx.recv_timeout(limit) {
                    Ok(message) => Some(message),
                    Err(flume::RecvTimeoutError::Timeout) => {
                        self.idle();
                        continue;
                    }
                    Err(flume::RecvTimeoutError::Disconnected) => None,
                },
            };
            if received.is_some() {
                self.worked();
            }
            return received;
        }
    }
}

/// Asks mimalloc (the global allocator, `main.rs`) to free this thread's empty pages and
/// return free memory to the system now instead of at its next allocations.
#[expect(
    unsafe_code,
    reason = "mimalloc's collect is only reachable through its C API"
)]
pub fn return_free_memory() {
    // SAFETY: `mi_collect` takes no pointers and only walks the calling thread's own heap
    // and the process's arenas, under mimalloc's own synchronization; it is valid on any
    // thread at any time (an unused heap has nothing to collect).
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_once_per_quiet_period() {
        let clock = IdleClock::new(2, 30, 1_000);
        assert!(!clock.claim_release(1_029), "quiet for 29 s only");
        assert!(clock.claim_release(1_030));
        assert!(!clock.claim_release(1_031), "the same quiet period again");
        clock.released();
        assert_eq!(clock.releases(), 1);
        clock.answered(1, 1_100);
        assert!(!clock.claim_release(1_120), "core 1 answered 20 s ago");
        clock.answered(0, 1_110);
        assert!(!clock.claim_release(1_135), "core 0 answered 25 s ago");
        assert!(clock.claim_release(1_140));
        assert!(!clock.claim_release(5_000));
    }

    #[test]
    fn zero_delay_never_releases() {
        let clock = IdleClock::new(1, 0, 1_000);
        assert!(!clock.claim_release(u64::MAX));
    }

    #[test]
    fn one_claim_wins_among_threads() {
        let clock = std::sync::Arc::new(IdleClock::new(4, 1, 10));
        let wins: usize = (0..4)
            .map(|_| {
                let clock = std::sync::Arc::clone(&clock);
                std::thread::spawn(move || (0..1_000).filter(|_| clock.claim_release(20)).count())
            })
            .map(|thread| thread.join().unwrap())
            .sum();
        assert_eq!(wins, 1);
    }

    #[test]
    fn a_worker_waits_with_a_limit_only_after_work() {
        let (tx, rx) = flume::unbounded();
        let mut release = WorkerRelease::new(1);
        assert_eq!(release.wait_limit(), None, "nothing to release yet");
        tx.send(1).unwrap();
        assert_eq!(release.recv(&rx), Some(1));
        assert_eq!(release.wait_limit(), Some(Duration::from_secs(1)));
        // The next job comes after the limit: the thread released, then took it.
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1_300));
            tx.send(2).unwrap();
        });
        assert_eq!(release.recv(&rx), Some(2));
        sender.join().unwrap();
        assert_eq!(release.recv(&rx), None, "every sender is gone");
        assert_eq!(WorkerRelease::new(0).wait_limit(), None);
    }

    #[test]
    fn collecting_is_safe_on_any_thread() {
        let kept: Vec<Vec<u8>> = (0..1_000).map(|i| vec![0; i]).collect();
        drop(kept);
        return_free_memory();
        std::thread::spawn(return_free_memory).join().unwrap();
    }
}
