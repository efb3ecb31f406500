//! Startup configuration: `RawConfig` (flags and environment, every field optional) ->
//! `Config::validate` -> `Config` (immutable, derived values computed once). Nothing reads the
//! environment or files after startup; live switches are the config record (`live_config`).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

use crate::limits::PACKAGE_CACHE_BYTES_PER_CPU;

/// Which monoio driver the cores run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverChoice {
    /// io_uring when the kernel allows it, else epoll (logged).
    Auto,
    /// io_uring only; fail to start without it.
    Uring,
    /// epoll only.
    Legacy,
}

/// What `serve` was given.
#[derive(Debug, Default)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub home: Option<PathBuf>,
    pub public_url: Option<String>,
    pub cores: Option<usize>,
    pub shards: Option<u32>,
    pub driver: Option<DriverChoice>,
    pub idle_release_secs: Option<u64>,
}

/// Validated startup configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub home: PathBuf,
    /// Explicit public URL, if given; otherwise derived from the bound address.
    pub public_url: Option<String>,
    pub cores: usize,
    /// Shard count for a new data directory (an existing one keeps its own).
    pub shards_new: u32,
    /// The packument cache's budget (`limits::PACKAGE_CACHE_BYTES_PER_CPU`).
    pub package_cache_bytes: usize,
    pub driver: DriverChoice,
    /// Quiet seconds before caches are emptied and memory returned (`idle.rs`); 0 never.
    pub idle_release_secs: u64,
}

/// The number of cores (event loops) when `--cores` is not given: half the CPUs, at least
/// one. The registry is local-first: the clients that load it (agents, package managers) and
/// the kernel's loopback networking run on the same CPUs. A core thread that shares a CPU
/// with a busy client is time-sliced with it, and every connection it holds waits a
/// scheduler slice: on 2 CPUs with the load generator beside the server, two cores gave
/// 158k or 218k packument GETs/s from run to run with p99 2.4 ms or 0.5 ms, one core gave
/// 215-221k/s with p99 0.40-0.45 ms every time (ARCHITECTURE.md, "Half the CPUs are
/// cores"). Writers (one per shard) and the prepare pool use the other CPUs too.
#[must_use]
pub fn default_cores(cpus: usize) -> usize {
    (cpus / 2).max(1)
}

/// Default listen address (SPEC section 2: loopback only).
pub const LISTEN_DEFAULT: &str = "127.0.0.1:4873";

impl Config {
    /// Validates `raw`, filling defaults.
    ///
    /// # Errors
    /// A message naming the bad field.
    pub fn validate(raw: RawConfig) -> Result<Config, String> {
        let listen_text = raw.listen.unwrap_or_else(|| LISTEN_DEFAULT.to_owned());
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|e| format!("--listen {listen_text:?} is not HOST:PORT ({e})"))?;
        let home = match raw.home {
            Some(home) => home,
            None => {
                let base = std::env::var_os("HOME").ok_or("neither --home nor $HOME is set")?;
                PathBuf::from(base).join(".agentregistry")
            }
        };
        let cores_available = std::thread::available_parallelism().map_or(1, usize::from);
        let cores = raw.cores.unwrap_or_else(|| default_cores(cores_available));
        if !(1..=256).contains(&cores) {
            return Err(format!("--cores must be between 1 and 256, got {cores}"));
        }
        // One shard, so one writer, per core: see ARCHITECTURE.md, "One shard per core".
        let shards_new = raw.shards.unwrap_or(u32::try_from(cores).unwrap_or(1));
        if let Some(url) = &raw.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "--public-url {url:?} must start with http:// or https://"
                ));
            }
        }
        Ok(Config {
            listen,
            home,
            public_url: raw.public_url.map(|u| u.trim_end_matches('/').to_owned()),
            cores,
            shards_new,
            package_cache_bytes: PACKAGE_CACHE_BYTES_PER_CPU
                .saturating_mul(cores_available.max(cores)),
            driver: raw.driver.unwrap_or(DriverChoice::Auto),
            idle_release_secs: raw
                .idle_release_secs
                .unwrap_or(crate::limits::IDLE_RELEASE_SECS_DEFAULT),
        })
    }

    /// The public base URL documents embed, once the listener's real address is known.
    #[must_use]
    pub fn base_url(&self, bound: &TcpListener) -> String {
        if let Some(url) = &self.public_url {
            return url.clone();
        }
        let addr = bound.local_addr().unwrap_or(self.listen);
        if addr.ip().is_unspecified() {
            format!("http://127.0.0.1:{}", addr.port())
        } else {
            format!("http://{addr}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{default_cores, Config, RawConfig, PACKAGE_CACHE_BYTES_PER_CPU};

    #[test]
    fn cores_default_to_half_the_cpus_and_at_least_one() {
        let table = [(1, 1), (2, 1), (3, 1), (4, 2), (8, 4), (64, 32)];
        for (cpus, cores) in table {
            assert_eq!(default_cores(cpus), cores, "{cpus} CPUs");
        }
    }

    /// A new data directory gets one shard per core unless `--shards` says otherwise.
    #[test]
    fn shards_default_to_the_cores() {
        let config = |cores, shards| {
            Config::validate(RawConfig {
                home: Some("/nonexistent".into()),
                cores,
                shards,
                ..RawConfig::default()
            })
            .unwrap()
        };
        assert_eq!(config(Some(3), None).shards_new, 3);
        assert_eq!(config(Some(3), Some(5)).shards_new, 5);
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(
            config(None, None).shards_new as usize,
            default_cores(cpus),
            "the default follows the default cores"
        );
    }

    /// The packument cache follows the CPUs, not `--cores`: fewer cores than CPUs keep the
    /// whole budget, more cores than CPUs raise it.
    #[test]
    fn the_cache_budget_follows_the_cpus_unless_cores_exceed_them() {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let budget = |cores| {
            Config::validate(RawConfig {
                home: Some("/nonexistent".into()),
                cores: Some(cores),
                ..RawConfig::default()
            })
            .unwrap()
            .package_cache_bytes
        };
        assert_eq!(budget(1), PACKAGE_CACHE_BYTES_PER_CPU * cpus);
        assert_eq!(budget(cpus + 3), PACKAGE_CACHE_BYTES_PER_CPU * (cpus + 3));
    }
}
