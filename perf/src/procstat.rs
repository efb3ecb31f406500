//! CPU and memory accounting from `/proc`: server CPU (utime + stime of a process and all its
//! descendants, e.g. nginx's master and workers), this process's own CPU (the load
//! generator), machine-wide busy and softirq time, and resident memory (`VmRSS`).
//!
//! The load generator shares the machine's cores with the server, so every run records who
//! used the CPU: "req/s per server core" (req/s divided by the server's CPU-seconds per
//! wall-second) is the figure that stays comparable across runs (MEASUREMENTS.md section 3).
//! "Foreign" CPU is what neither the server nor the load generator nor softirq explains.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, Result};

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux unless told otherwise).
fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|v| *v > 0.0)
            .unwrap_or(100.0)
    })
}

/// Fields of `/proc/PID/stat` after the `comm` field: index 0 is `state` (field 3).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = text.rfind(')')?;
    Some(
        text[close + 1..]
            .split_ascii_whitespace()
            .map(str::to_owned)
            .collect(),
    )
}

/// utime + stime of one process (all its threads), in ticks.
fn process_ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `root` and all its live descendants.
#[must_use]
pub(crate) fn process_tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_fields(pid)
                .and_then(|f| f.get(1).cloned())
                .and_then(|p| p.parse::<u32>().ok())
            {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get(&out[i]) {
            out.extend(kids.iter().copied());
        }
        i += 1;
    }
    out
}

/// Sum of `VmRSS` (KiB) over `root` and its descendants.
#[must_use]
pub(crate) fn tree_rss_kib(root: u32) -> u64 {
    process_tree(root)
        .into_iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_ascii_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// Memory figures of one process from `/proc/PID/status`, in KiB.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub(crate) struct Memory {
    /// `VmRSS`: resident memory.
    pub(crate) rss: u64,
    /// `RssAnon`: resident anonymous memory (heap, stacks).
    pub(crate) anon: u64,
    /// `RssFile`: resident file-backed pages (the binary, mapped files).
    pub(crate) file: u64,
    /// `VmHWM`: the resident high-water mark.
    pub(crate) hwm: u64,
    /// `Threads`.
    pub(crate) threads: u64,
}

/// `VmRSS`, `RssAnon`, `RssFile`, `VmHWM` and `Threads` of `pid`.
#[must_use]
pub(crate) fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_ascii_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(Memory {
        rss: field("VmRSS:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
        hwm: field("VmHWM:"),
        threads: field("Threads:"),
    })
}

/// CPUs counted in `/proc/stat` (not this process's affinity mask, which `taskset` narrows).
pub(crate) fn online_cpus() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .map(|t| {
            t.lines()
                .filter(|l| {
                    l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
                })
                .count()
        })
        .unwrap_or(1)
        .max(1) as f64
}

/// Machine-wide CPU ticks from the first line of `/proc/stat`.
#[derive(Clone, Copy, Debug, Default)]
struct MachineTicks {
    total: u64,
    idle: u64,
    softirq: u64,
}

fn machine_ticks() -> Result<MachineTicks> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text.lines().next().context("/proc/stat is empty")?;
    let values: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    anyhow::ensure!(values.len() == 8, "unexpected /proc/stat line: {line}");
    Ok(MachineTicks {
        total: values.iter().sum(),
        idle: values[3] + values[4],
        softirq: values[6],
    })
}

/// A CPU measurement window opened before a run.
pub(crate) struct CpuWindow {
    server_pid: Option<u32>,
    server_start: HashMap<u32, u64>,
    self_start: u64,
    machine_start: MachineTicks,
    at: Instant,
}

/// CPU used during a window, in cores (CPU-seconds per wall-second).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub(crate) struct CpuUsage {
    /// The server process tree; `None` without a server pid.
    pub(crate) server: Option<f64>,
    /// This process (the load generator).
    pub(crate) client: f64,
    pub(crate) softirq: f64,
    /// All busy CPU on the machine.
    pub(crate) busy: f64,
    /// Busy CPU not explained by server, client or softirq (other tenants).
    pub(crate) foreign: Option<f64>,
}

impl CpuWindow {
    /// Opens a window; `server_pid` is the root of the server's process tree.
    pub(crate) fn start(server_pid: Option<u32>) -> Result<CpuWindow> {
        let server_start = server_pid.map(tree_ticks).unwrap_or_default();
        Ok(CpuWindow {
            server_pid,
            server_start,
            self_start: process_ticks(std::process::id()).unwrap_or(0),
            machine_start: machine_ticks()?,
            at: Instant::now(),
        })
    }

    /// Closes the window.
    pub(crate) fn finish(&self) -> Result<CpuUsage> {
        let wall = self.at.elapsed().as_secs_f64().max(1e-6);
        let tck = clk_tck();
        let cores = |ticks: u64| ticks as f64 / tck / wall;
        let server = self.server_pid.map(|pid| {
            let now = tree_ticks(pid);
            // Processes that exited during the window are lost; new ones count from zero.
            let delta: u64 = now
                .iter()
                .map(|(p, t)| t.saturating_sub(self.server_start.get(p).copied().unwrap_or(0)))
                .sum();
            cores(delta)
        });
        let client = cores(
            process_ticks(std::process::id())
                .unwrap_or(0)
                .saturating_sub(self.self_start),
        );
        let machine = machine_ticks()?;
        let total = machine
            .total
            .saturating_sub(self.machine_start.total)
            .max(1) as f64;
        let idle = machine.idle.saturating_sub(self.machine_start.idle) as f64;
        let softirq_ticks = machine.softirq.saturating_sub(self.machine_start.softirq) as f64;
        let ncpu = online_cpus();
        // /proc/stat counts ticks over all CPUs: scale by the CPU count to get cores.
        let busy = (total - idle) / total * ncpu;
        let softirq = softirq_ticks / total * ncpu;
        let foreign = server.map(|s| (busy - s - client - softirq).max(0.0));
        Ok(CpuUsage {
            server,
            client,
            softirq,
            busy,
            foreign,
        })
    }
}

fn tree_ticks(root: u32) -> HashMap<u32, u64> {
    process_tree(root)
        .into_iter()
        .filter_map(|pid| process_ticks(pid).map(|t| (pid, t)))
        .collect()
}

/// Waits until the machine is quiet (busy CPU below `threshold` cores over two consecutive
/// 0.5 s samples) or `max` has passed. Returns the busy cores of the last sample and
/// whether it was quiet. Our own idle servers count as busy, so keep them idle meanwhile.
pub(crate) fn wait_for_quiet(threshold: f64, max: std::time::Duration) -> Result<(f64, bool)> {
    let until = Instant::now() + max;
    let ncpu = online_cpus();
    let mut quiet_samples = 0;
    loop {
        let a = machine_ticks()?;
        std::thread::sleep(std::time::Duration::from_millis(500));
        let b = machine_ticks()?;
        let total = b.total.saturating_sub(a.total).max(1) as f64;
        let idle = b.idle.saturating_sub(a.idle) as f64;
        let last = (total - idle) / total * ncpu;
        if last < threshold {
            quiet_samples += 1;
            if quiet_samples >= 2 {
                return Ok((last, true));
            }
        } else {
            quiet_samples = 0;
        }
        if Instant::now() >= until || max.is_zero() {
            return Ok((last, false));
        }
    }
}

/// fdatasync latency of a 4 KiB overwrite in `dir` for `duration`: (count, p50 ms, p99 ms).
/// Publishes are durable, so the disk's sync latency bounds them; other tenants' writes
/// (ext4 journal commits carry their dirty data) can make it much worse than idle.
pub(crate) fn fsync_probe(
    dir: &std::path::Path,
    duration: std::time::Duration,
) -> Result<(usize, f64, f64)> {
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join(format!("perf-fsync-probe-{}", std::process::id()));
    let mut file = std::fs::File::create(&path).context("creating the fsync probe file")?;
    let block = [0x5au8; 4096];
    let mut samples = Vec::new();
    let until = Instant::now() + duration;
    while Instant::now() < until {
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&block)?;
        let t = Instant::now();
        file.sync_data()?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    samples.sort_by(f64::total_cmp);
    let q = |p: f64| {
        samples
            .get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Ok((samples.len(), q(0.5), q(0.99)))
}
