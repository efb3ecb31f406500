//! `perf scale`: AgentRegistry at 1,000 and at 100,000 packages, in one run.
//!
//! 1. Start `agentregistry serve` on a fresh home and a free loopback port (the port stays
//!    the same for every later start, so the base URL, and with it every pre-rendered
//!    document, stays valid across restarts).
//! 2. Publish `--small` synthetic packages through the HTTP publish path, then measure
//!    abbreviated and full packument GETs over random loaded packages (one GET of every
//!    package first, so the cache is warm at both sizes, then `--repetitions` runs of
//!    `--seconds` s each at `--connections` connections; medians).
//! 3. Keep publishing up to `--packages` packages over `--load-connections` connections
//!    (the load rate is reported), then measure the same again, over all packages and over
//!    the first `--small` only (the same documents as in step 2: this separates the effect
//!    of the working set from that of the database's size).
//! 4. Stop the server (SIGTERM by PID), then start it `--restarts` times on the same home:
//!    spawn to first `200` on `GET /-/ping`, spawn to the listening line, spawn to the
//!    timestamp of the server's own `agentregistry ready` log line; medians.
//! 5. On the last start: RSS after `--idle-seconds` of idleness, after one pass of GETs
//!    (abbreviated and full) over every package, `--idle-seconds` later (caches still
//!    kept), and after `--release-wait-seconds` without requests (the server empties its
//!    caches after 30 s by default, `serve --idle-release-secs`); the data directory's
//!    size.
//!
//! It prints markdown tables, the 100k/1k ratios and a verdict for each of the issue's
//! scale targets.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

use crate::bench::{self, GenOpts, PackageSet, Row, RunCtx, Spec, Workload};
use crate::compare::median;
use crate::corpus;
use crate::http::{Conn, Target};
use crate::load::{self, LoadReport};
use crate::procstat::{self, Memory};
use crate::targets::{self, Server, StartTiming};

const USER: &str = "perfloader";
const PASSWORD: &str = "perf-loader-pass-1";

/// `scale` options.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct ScaleOpts {
    /// Packages loaded before the first measurement (N1).
    #[arg(long, default_value_t = 1000)]
    pub(crate) small: usize,
    /// Packages loaded in total before the second measurement (N2).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) packages: usize,
    /// Versions of each of the first N1 packages.
    #[arg(long, default_value_t = 1)]
    pub(crate) versions: usize,
    /// Versions of each further package.
    #[arg(long, default_value_t = 1)]
    pub(crate) extra_versions: usize,
    /// Connections (threads) that publish while loading.
    #[arg(long, default_value_t = 64)]
    pub(crate) load_connections: usize,
    /// Connections of each GET run.
    #[arg(long, default_value_t = 64)]
    pub(crate) connections: usize,
    /// Seconds per GET run.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) seconds: f64,
    /// GET runs per workload and package set (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub(crate) repetitions: usize,
    /// Seconds of unrecorded warm-up traffic per workload before each package set.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) warmup: f64,
    /// Starts on the loaded home (each one after a SIGTERM of the previous).
    #[arg(long, default_value_t = 5)]
    pub(crate) restarts: usize,
    /// Seconds the restarted server idles before its RSS is read.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) idle_seconds: f64,
    /// Seconds without requests after the pass before the last RSS reading: past the
    /// server's idle release (`serve --idle-release-secs`, 30 by default).
    #[arg(long, default_value_t = 40.0)]
    pub(crate) release_wait_seconds: f64,
    /// Connections of the GET pass over every package after the last restart.
    #[arg(long, default_value_t = 8)]
    pub(crate) pass_connections: usize,
    /// Before each GET run, wait up to this many seconds for the machine to be quiet.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) quiet_wait: f64,
    /// Busy cores below which the machine counts as quiet.
    #[arg(long, default_value_t = 0.25)]
    pub(crate) quiet_threshold: f64,
    /// The agentregistry binary (default: target/release/agentregistry, built if missing).
    #[arg(long)]
    pub(crate) agentregistry_bin: Option<PathBuf>,
    /// `--cores` for AgentRegistry (default: its own default, half the CPUs).
    #[arg(long)]
    pub(crate) agentregistry_cores: Option<usize>,
    /// Keep the temporary directory (home and logs) for later investigation.
    #[arg(long)]
    pub(crate) keep: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) gen: GenOpts,
}

/// Medians of one workload on one package set.
#[derive(Clone, Debug, serde::Serialize)]
struct Measured {
    set: String,
    packages: usize,
    workload: Workload,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    server_cores: Option<f64>,
    rps_per_core: Option<f64>,
    client_cores: f64,
    foreign_cores: Option<f64>,
    errors: u64,
    runs_rps: Vec<f64>,
    /// Share of packument reads answered from a core's cache, over the recorded runs.
    cache_hit_share: Option<f64>,
    cache_loads: Option<f64>,
}

/// One start on the loaded home.
#[derive(Clone, Debug, serde::Serialize)]
struct StartRow {
    listening_ms: f64,
    ping_ms: f64,
    /// Spawn to the timestamp of the `agentregistry ready` log line.
    log_ready_ms: Option<f64>,
    /// Spawn to the timestamp of the last `core started` log line.
    log_cores_ms: Option<f64>,
    /// RSS right after the first ping.
    rss_kib: u64,
    /// How long the previous process took to exit after SIGTERM.
    previous_stop_ms: f64,
    log_lines: usize,
}

/// Sizes under a directory.
#[derive(Clone, Debug, Default, serde::Serialize)]
struct Usage {
    part: String,
    files: u64,
    apparent: u64,
    allocated: u64,
}

#[derive(serde::Serialize)]
struct Report {
    small: usize,
    packages: usize,
    loads: Vec<(String, usize, f64, f64, f64)>,
    measured: Vec<Measured>,
    starts: Vec<StartRow>,
    memory: Vec<(String, Memory)>,
    usage: Vec<Usage>,
    pass_seconds: f64,
    rows: Vec<Row>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

pub(crate) fn run(opts: &ScaleOpts) -> Result<()> {
    anyhow::ensure!(
        opts.small >= 1 && opts.packages >= opts.small,
        "need 1 <= --small <= --packages"
    );
    let started = Instant::now();
    let bin = targets::agentregistry_binary(opts.agentregistry_bin.as_deref())?;
    let dir = tempfile::Builder::new().prefix("perf-scale-").tempdir()?;
    let home = dir.path().join("home");
    let port = targets::free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let cores = opts.agentregistry_cores;
    println!("# perf scale\n");
    println!("{}", crate::machine_description());
    println!(
        "- server: {} on {listen}, home {}, --cores {}",
        bin.display(),
        home.display(),
        cores.map_or_else(|| "default".to_owned(), |c| c.to_string())
    );
    println!(
        "- N1 = {} packages x {} version(s), N2 = {} packages (the extra ones x {} version(s)); GET runs: {} x {} s at {} connections, {} load-generator thread(s)",
        opts.small,
        opts.versions,
        opts.packages,
        opts.extra_versions,
        opts.repetitions,
        opts.seconds,
        opts.connections,
        opts.gen.threads
    );

    let mut memory: Vec<(String, Memory)> = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let (mut server, fresh) = start(&bin, &home, &listen, cores, &dir.path().join("start-0.log"))?;
    println!("- fresh home: spawn to first ping {:.1} ms", ms(fresh.ping));
    std::thread::sleep(Duration::from_secs_f64(opts.idle_seconds));
    memory.push((
        "fresh empty home, idle".to_owned(),
        procstat::memory(server.pid).unwrap_or_default(),
    ));
    let target = server.target.clone();
    let token = load::login(&target, USER, PASSWORD)?;

    // Step 2: N1 packages.
    eprintln!("loading {} packages", opts.small);
    let load_small = load::load_synthetic_range(
        &target,
        &token,
        0..opts.small,
        opts.versions,
        opts.small,
        opts.load_connections,
        Some((opts.small / 4).max(1)),
    )?;
    println!("- load to N1: {load_small}");
    let mut measured = Vec::new();
    let small_set = PackageSet::synthetic(opts.small, opts.versions);
    let label_small = format!("{} packages", opts.small);
    measured.extend(measure(opts, &server, &small_set, &label_small, &mut rows)?);
    memory.push((
        format!("{label_small}, after the GET runs"),
        procstat::memory(server.pid).unwrap_or_default(),
    ));

    // Step 3: up to N2.
    let extra = opts.packages - opts.small;
    let load_big = if extra > 0 {
        eprintln!("loading {extra} more packages");
        let report = load::load_synthetic_range(
            &target,
            &token,
            opts.small..opts.packages,
            opts.extra_versions,
            opts.small,
            opts.load_connections,
            Some((extra / 20).max(1)),
        )?;
        println!("- load from N1 to N2: {report}");
        Some(report)
    } else {
        None
    };
    memory.push((
        format!("{} packages, right after the load", opts.packages),
        procstat::memory(server.pid).unwrap_or_default(),
    ));
    let big_set = PackageSet::synthetic(opts.packages, 1);
    let label_big = format!("{} packages", opts.packages);
    measured.extend(measure(opts, &server, &big_set, &label_big, &mut rows)?);
    let label_hot = format!("{} packages, first {} only", opts.packages, opts.small);
    if extra > 0 {
        measured.extend(measure(opts, &server, &small_set, &label_hot, &mut rows)?);
    }
    memory.push((
        format!("{label_big}, after the GET runs"),
        procstat::memory(server.pid).unwrap_or_default(),
    ));
    let shards_metrics = metrics_text(&target).map(|t| shard_lines(&t));

    // Step 4: restarts.
    let mut starts = Vec::new();
    let mut last_spawn = SystemTime::now();
    for k in 0..opts.restarts.max(1) {
        let stop_started = Instant::now();
        let status = server.stop();
        let previous_stop = stop_started.elapsed();
        eprintln!(
            "stopped the server (pid {}) with SIGTERM in {:.1} ms: {}",
            server.pid,
            ms(previous_stop),
            status.map_or_else(|| "unknown status".to_owned(), |s| s.to_string())
        );
        drop(server);
        std::thread::sleep(Duration::from_millis(500));
        let log = dir.path().join(format!("start-{}.log", k + 1));
        let (next, timing) = start(&bin, &home, &listen, cores, &log)?;
        let rss = procstat::memory(next.pid).unwrap_or_default().rss;
        let logged = log_times(&log, timing.spawned_at);
        let row = StartRow {
            listening_ms: ms(timing.listening),
            ping_ms: ms(timing.ping),
            log_ready_ms: logged.ready.map(ms),
            log_cores_ms: logged.cores_started.map(ms),
            rss_kib: rss,
            previous_stop_ms: ms(previous_stop),
            log_lines: logged.lines,
        };
        eprintln!(
            "restart {}: ping after {:.1} ms (listening line {:.1} ms, log 'ready' {})",
            k + 1,
            row.ping_ms,
            row.listening_ms,
            row.log_ready_ms
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"))
        );
        starts.push(row);
        server = next;
        last_spawn = timing.spawned_at;
    }

    // Step 5: wait for the start-up blob count to finish, then idle RSS, a pass over every
    // package, idle again.
    let blob_scan = wait_blob_scan(&server.target, last_spawn, Duration::from_secs(120));
    eprintln!(
        "blob statistics scan done {} after the last spawn",
        blob_scan.map_or_else(
            || "never (within 120 s)".to_owned(),
            |d| format!("{:.0} ms", ms(d))
        )
    );
    std::thread::sleep(Duration::from_secs_f64(opts.idle_seconds));
    memory.push((
        format!(
            "restarted on {} packages, idle {} s",
            opts.packages, opts.idle_seconds
        ),
        procstat::memory(server.pid).unwrap_or_default(),
    ));
    let pass_started = Instant::now();
    get_pass(&server.target, opts.packages, opts.pass_connections)?;
    let pass_seconds = pass_started.elapsed().as_secs_f64();
    memory.push((
        format!(
            "right after one GET pass over all {} packages",
            opts.packages
        ),
        procstat::memory(server.pid).unwrap_or_default(),
    ));
    std::thread::sleep(Duration::from_secs_f64(opts.idle_seconds));
    memory.push((
        format!("{} s after the pass (caches still kept)", opts.idle_seconds),
        procstat::memory(server.pid).unwrap_or_default(),
    ));
    std::thread::sleep(Duration::from_secs_f64(
        (opts.release_wait_seconds - opts.idle_seconds).max(0.0),
    ));
    memory.push((
        format!(
            "after the pass, idle {} s (caches released)",
            opts.release_wait_seconds
        ),
        procstat::memory(server.pid).unwrap_or_default(),
    ));
    let usage = usage_of(&home)?;
    let _ = server.stop();
    drop(server);

    // Report.
    let loads: Vec<(String, usize, f64, f64, f64)> = [
        Some(("to N1".to_owned(), &load_small)),
        load_big.as_ref().map(|r| ("N1 to N2".to_owned(), r)),
    ]
    .into_iter()
    .flatten()
    .map(|(label, r): (String, &LoadReport)| {
        let secs = r.elapsed.as_secs_f64();
        (
            label,
            r.publishes,
            mib(r.bytes),
            secs,
            r.publishes as f64 / secs.max(1e-9),
        )
    })
    .collect();
    println!(
        "\n## Load (HTTP publishes, {} connections)\n",
        opts.load_connections
    );
    println!(
        "| phase | publishes | MiB of bodies | seconds | publishes/s |\n|---|---|---|---|---|"
    );
    for (label, n, m, s, rate) in &loads {
        println!("| {label} | {n} | {m:.1} | {s:.1} | {rate:.0} |");
    }

    println!(
        "\n## Packument GETs (median of {} runs of {} s, {} connections)\n",
        opts.repetitions, opts.seconds, opts.connections
    );
    println!("| package set | workload | req/s | p50 ms | p99 ms | p99.9 ms | server cores | req/s per server core | loadgen cores | foreign | cache hits | errors | req/s of each run |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for m in &measured {
        println!(
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {} | {:.2} | {} | {} | {} | {} |",
            m.set,
            m.workload.label(),
            m.rps,
            m.p50_ms,
            m.p99_ms,
            m.p999_ms,
            opt(m.server_cores, 2),
            opt(m.rps_per_core, 0),
            m.client_cores,
            opt(m.foreign_cores, 2),
            m.cache_hit_share
                .map_or_else(|| "-".to_owned(), |s| format!("{:.1}%", s * 100.0)),
            m.errors,
            m.runs_rps
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let find = |set: &str, w: Workload| measured.iter().find(|m| m.set == set && m.workload == w);
    println!("\n### Ratios (N2 / N1)\n");
    println!("| workload | req/s, all {n2} / {n1} | req/s per server core | req/s, first {n1} of {n2} / {n1} | p99 ratio |\n|---|---|---|---|---|", n1 = opts.small, n2 = opts.packages);
    let mut ratios = Vec::new();
    for w in [Workload::Abbreviated, Workload::Full] {
        let (Some(a), Some(b)) = (find(&label_small, w), find(&label_big, w)) else {
            continue;
        };
        let hot = find(&label_hot, w).map(|h| h.rps / a.rps);
        let per_core = a.rps_per_core.zip(b.rps_per_core).map(|(x, y)| y / x);
        ratios.push((w, b.rps / a.rps));
        println!(
            "| {} | **{:.3}** | {} | {} | {:.2} |",
            w.label(),
            b.rps / a.rps,
            opt(per_core, 3),
            opt(hot, 3),
            b.p99_ms / a.p99_ms.max(1e-9)
        );
    }

    println!(
        "\n## Starts on the loaded home ({} packages), each after SIGTERM of the previous process\n",
        opts.packages
    );
    println!("| start | spawn to listening line ms | spawn to first ping ms | spawn to log 'ready' ms | spawn to last log 'core started' ms | RSS at first ping MiB | previous process exit after SIGTERM ms |\n|---|---|---|---|---|---|---|");
    for (k, s) in starts.iter().enumerate() {
        println!(
            "| {} | {:.1} | {:.1} | {} | {} | {:.1} | {:.1} |",
            k + 1,
            s.listening_ms,
            s.ping_ms,
            opt(s.log_ready_ms, 1),
            opt(s.log_cores_ms, 1),
            s.rss_kib as f64 / 1024.0,
            s.previous_stop_ms
        );
    }
    let median_ping = median(starts.iter().map(|s| s.ping_ms).collect()).unwrap_or(f64::NAN);
    let median_listening =
        median(starts.iter().map(|s| s.listening_ms).collect()).unwrap_or(f64::NAN);
    let median_ready = median(starts.iter().filter_map(|s| s.log_ready_ms).collect());
    let median_cores = median(starts.iter().filter_map(|s| s.log_cores_ms).collect());
    println!(
        "| **median** | {median_listening:.1} | **{median_ping:.1}** | {} | {} | | |",
        opt(median_ready, 1),
        opt(median_cores, 1)
    );
    println!(
        "\nAfter the last start, the server's blob statistics scan (`agentregistry_blobs` appears in `/-/metrics`) finished {} after the spawn.",
        blob_scan.map_or_else(|| "not within 120 s".to_owned(), |d| format!("{:.0} ms", ms(d)))
    );
    println!(
        "\nFresh (empty) home for comparison: spawn to first ping {:.1} ms, listening line {:.1} ms.",
        ms(fresh.ping),
        ms(fresh.listening)
    );

    println!("\n## Memory of the server process (KiB from /proc/PID/status, shown in MiB)\n");
    println!("| moment | VmRSS | RssAnon | RssFile | VmHWM | threads |\n|---|---|---|---|---|---|");
    for (label, m) in &memory {
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            m.rss as f64 / 1024.0,
            m.anon as f64 / 1024.0,
            m.file as f64 / 1024.0,
            m.hwm as f64 / 1024.0,
            m.threads
        );
    }
    println!(
        "\nThe GET pass (abbreviated + full, gzip, every package once, {} connections) took {pass_seconds:.1} s ({:.0} req/s).",
        opts.pass_connections,
        (2 * opts.packages) as f64 / pass_seconds.max(1e-9)
    );

    println!("\n## Data directory ({} packages)\n", opts.packages);
    println!("| part | files | apparent MiB | allocated MiB |\n|---|---|---|---|");
    for u in &usage {
        println!(
            "| {} | {} | {:.1} | {:.1} |",
            u.part,
            u.files,
            mib(u.apparent),
            mib(u.allocated)
        );
    }
    if let Some(lines) = &shards_metrics {
        println!("\nServer metrics before the restarts:\n");
        for l in lines {
            println!("    {l}");
        }
    }

    println!("\n## The issue's scale targets\n");
    println!("| target | measured | verdict |\n|---|---|---|");
    for (w, r) in &ratios {
        println!(
            "| {} packument req/s at {} packages within 10% of {} | {:.1}% of it | {} |",
            w.label(),
            opts.packages,
            opts.small,
            r * 100.0,
            verdict(*r >= 0.9)
        );
    }
    println!(
        "| start with {} packages < 200 ms | median spawn to first ping {median_ping:.1} ms | {} |",
        opts.packages,
        verdict(median_ping < 200.0)
    );
    for (label, m) in memory.iter().filter(|(l, _)| l.contains("idle")) {
        if label.contains("fresh") {
            continue;
        }
        println!(
            "| idle RSS at {} packages < 100 MiB ({label}) | {:.1} MiB | {} |",
            opts.packages,
            m.rss as f64 / 1024.0,
            verdict(m.rss < 100 * 1024)
        );
    }
    if opts.packages < 100_000 {
        println!(
            "\nNote: N2 = {} packages; the targets are stated for 100,000.",
            opts.packages
        );
    }
    println!(
        "\nscale took {:.0} s in total",
        started.elapsed().as_secs_f64()
    );

    if let Some(path) = &opts.json {
        let report = Report {
            small: opts.small,
            packages: opts.packages,
            loads,
            measured,
            starts,
            memory,
            usage,
            pass_seconds,
            rows,
        };
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if opts.keep {
        let kept = dir.keep();
        println!("kept {}", kept.display());
    }
    Ok(())
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

fn start(
    bin: &Path,
    home: &Path,
    listen: &str,
    cores: Option<usize>,
    log: &Path,
) -> Result<(Server, StartTiming)> {
    targets::start_agentregistry_on(bin, home, listen, cores, None, log)
}

/// A pass that reads every package of `set` once, a warm-up, then `repetitions` runs of each
/// workload over `set`; one median row each.
fn measure(
    opts: &ScaleOpts,
    server: &Server,
    set: &PackageSet,
    label: &str,
    rows: &mut Vec<Row>,
) -> Result<Vec<Measured>> {
    let ctx = RunCtx {
        target: &server.target,
        label,
        server_pid: Some(server.pid),
        set,
        token: None,
        swarm_roots: None,
        gen: &opts.gen,
    };
    let workloads = [Workload::Abbreviated, Workload::Full];
    // Every package of the set read once, so the runs compare warm caches at both sizes
    // (random traffic alone leaves e^-k of the packages unread after k reads per package).
    let pass_started = Instant::now();
    get_pass(&server.target, set.names.len(), opts.connections)?;
    let pass_seconds = pass_started.elapsed().as_secs_f64();
    println!(
        "- warm pass over {label}: {} GETs (abbreviated + full, each package once, {} connections) in {pass_seconds:.1} s = {:.0} req/s",
        2 * set.names.len(),
        opts.connections,
        (2 * set.names.len()) as f64 / pass_seconds.max(1e-9)
    );
    if opts.warmup > 0.0 {
        for workload in workloads {
            bench::run(
                &ctx,
                &Spec {
                    workload,
                    connections: opts.connections,
                    seconds: opts.warmup,
                    max_requests: None,
                    rate: None,
                },
            )?;
        }
    }
    let mut runs: Vec<(Workload, Row, Option<CacheCounters>)> = Vec::new();
    for rep in 0..opts.repetitions.max(1) {
        for workload in workloads {
            procstat::wait_for_quiet(
                opts.quiet_threshold,
                Duration::from_secs_f64(opts.quiet_wait),
            )?;
            let before = metrics_text(&server.target).and_then(|t| cache_counters(&t));
            let row = bench::run(
                &ctx,
                &Spec {
                    workload,
                    connections: opts.connections,
                    seconds: opts.seconds,
                    max_requests: None,
                    rate: None,
                },
            )
            .with_context(|| format!("{} over {label}", workload.label()))?;
            let after = metrics_text(&server.target).and_then(|t| cache_counters(&t));
            let delta = before.zip(after).map(|(b, a)| a.minus(&b));
            eprintln!(
                "  {label}, {} run {}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, server {} cores{}",
                workload.label(),
                rep + 1,
                row.rps,
                row.p50_ms,
                row.p99_ms,
                opt(row.server_cores, 2),
                delta.map_or_else(String::new, |d| format!(
                    ", cache hits {:.1}%",
                    d.hit_share() * 100.0
                ))
            );
            if !row.note.is_empty() {
                eprintln!("    note: {}", row.note);
            }
            rows.push(row.clone());
            runs.push((workload, row, delta));
        }
    }
    Ok(workloads
        .iter()
        .map(|&w| {
            let mine: Vec<&(Workload, Row, Option<CacheCounters>)> =
                runs.iter().filter(|(x, _, _)| *x == w).collect();
            let med = |f: &dyn Fn(&Row) -> Option<f64>| {
                median(mine.iter().filter_map(|(_, r, _)| f(r)).collect())
            };
            let cache = mine
                .iter()
                .filter_map(|(_, _, c)| *c)
                .fold(None, |acc: Option<CacheCounters>, c| {
                    Some(acc.map_or(c, |a| a.plus(&c)))
                });
            Measured {
                set: label.to_owned(),
                packages: set.names.len(),
                workload: w,
                rps: med(&|r| Some(r.rps)).unwrap_or(0.0),
                p50_ms: med(&|r| Some(r.p50_ms)).unwrap_or(0.0),
                p99_ms: med(&|r| Some(r.p99_ms)).unwrap_or(0.0),
                p999_ms: med(&|r| Some(r.p999_ms)).unwrap_or(0.0),
                server_cores: med(&|r| r.server_cores),
                rps_per_core: med(&Row::rps_per_core),
                client_cores: med(&|r| Some(r.client_cores)).unwrap_or(0.0),
                foreign_cores: med(&|r| r.foreign_cores),
                errors: mine.iter().map(|(_, r, _)| r.errors).sum(),
                runs_rps: mine.iter().map(|(_, r, _)| r.rps).collect(),
                cache_hit_share: cache.map(|c| c.hit_share()),
                cache_loads: cache.map(|c| c.loads),
            }
        })
        .collect())
}

/// The server's packument cache counters (all cores).
#[derive(Clone, Copy, Debug, Default)]
struct CacheCounters {
    hits: f64,
    revalidations: f64,
    loads: f64,
}

impl CacheCounters {
    fn minus(&self, other: &CacheCounters) -> CacheCounters {
        CacheCounters {
            hits: self.hits - other.hits,
            revalidations: self.revalidations - other.revalidations,
            loads: self.loads - other.loads,
        }
    }

    fn plus(&self, other: &CacheCounters) -> CacheCounters {
        CacheCounters {
            hits: self.hits + other.hits,
            revalidations: self.revalidations + other.revalidations,
            loads: self.loads + other.loads,
        }
    }

    fn hit_share(&self) -> f64 {
        let total = self.hits + self.revalidations + self.loads;
        if total > 0.0 {
            (self.hits + self.revalidations) / total
        } else {
            0.0
        }
    }
}

fn metrics_text(target: &Target) -> Option<String> {
    let mut conn = Conn::new(target);
    let response = conn.request("GET", "/-/metrics", &[], None).ok()?;
    if response.status != 200 {
        return None;
    }
    String::from_utf8(response.decoded_body().ok()?).ok()
}

/// The value of the first sample line of `name` (`agentregistry_NAME VALUE`).
fn metric(text: &str, name: &str) -> Option<f64> {
    let prefix = format!("agentregistry_{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

fn cache_counters(text: &str) -> Option<CacheCounters> {
    Some(CacheCounters {
        hits: metric(text, "packument_cache_hits_total")?,
        revalidations: metric(text, "packument_cache_revalidations_total")?,
        loads: metric(text, "packument_cache_loads_total")?,
    })
}

/// The metric lines about shards and blobs (package counts and file sizes).
fn shard_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| {
            !l.starts_with('#')
                && (l.starts_with("agentregistry_shard_") || l.starts_with("agentregistry_blob"))
        })
        .map(str::to_owned)
        .collect()
}

/// `GET` of the abbreviated and the full packument of synthetic packages `0..packages`,
/// each once, over `connections` connections; every answer must be 200.
pub(crate) fn get_pass(target: &Target, packages: usize, connections: usize) -> Result<()> {
    let items: Vec<usize> = (0..packages).collect();
    load::fan_out(target, &items, connections, |conn, &i| {
        let path = corpus::packument_path(&corpus::synthetic_name(i));
        let mut bytes = 0u64;
        for accept in ["application/vnd.npm.install-v1+json", "application/json"] {
            let r = conn.request(
                "GET",
                &path,
                &[("Accept", accept), ("Accept-Encoding", "gzip")],
                None,
            )?;
            anyhow::ensure!(r.status == 200, "GET {path} ({accept}): {}", r.status);
            bytes += r.body.len() as u64;
        }
        Ok(bytes)
    })?;
    Ok(())
}

/// Files, apparent bytes and allocated bytes of `home`, per top-level entry and in total.
fn usage_of(home: &Path) -> Result<Vec<Usage>> {
    fn walk(path: &Path, usage: &mut Usage) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path)?;
        usage.allocated += meta.blocks() * 512;
        if meta.is_dir() {
            for entry in std::fs::read_dir(path)? {
                walk(&entry?.path(), usage)?;
            }
        } else {
            usage.files += 1;
            usage.apparent += meta.len();
        }
        Ok(())
    }
    let mut parts = Vec::new();
    let mut total = Usage {
        part: "total".to_owned(),
        ..Usage::default()
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(home)
        .with_context(|| format!("reading {}", home.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    entries.sort();
    for path in entries {
        let mut usage = Usage {
            part: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ..Usage::default()
        };
        walk(&path, &mut usage)?;
        total.files += usage.files;
        total.apparent += usage.apparent;
        total.allocated += usage.allocated;
        parts.push(usage);
    }
    parts.push(total);
    Ok(parts)
}

/// What a start's log says, as offsets from the spawn.
struct LogTimes {
    /// The `agentregistry ready` line (shards, blobs and auth opened, threads started).
    ready: Option<Duration>,
    /// The last `core started` line (the event loops run).
    cores_started: Option<Duration>,
    lines: usize,
}

/// Reads `log` (tracing's lines, which begin with an RFC 3339 UTC timestamp).
fn log_times(log: &Path, spawned_at: SystemTime) -> LogTimes {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let text = strip_ansi(&text);
    let at = |needle: &str| {
        text.lines()
            .rfind(|l| l.contains(needle))
            .and_then(|l| l.split_ascii_whitespace().next())
            .and_then(parse_rfc3339_utc)
            .and_then(|at| at.duration_since(spawned_at).ok())
    };
    LogTimes {
        ready: at("agentregistry ready"),
        cores_started: at("core started"),
        lines: text.lines().filter(|l| !l.trim().is_empty()).count(),
    }
}

/// Polls `/-/metrics` every 100 ms until the blob count (computed by a scan of the blob
/// directory in the background after each start) appears; returns when, from the spawn.
fn wait_blob_scan(target: &Target, spawned_at: SystemTime, max: Duration) -> Option<Duration> {
    let until = Instant::now() + max;
    while Instant::now() < until {
        if metrics_text(target).is_some_and(|t| metric(&t, "blobs").is_some()) {
            return SystemTime::now().duration_since(spawned_at).ok();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `2026-11-22T19:40:00.123456Z` as a `SystemTime`.
fn parse_rfc3339_utc(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|v| v.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|v| v.parse::<u64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let digits = frac.len().min(9);
    let nanos: u64 = frac.get(..digits)?.parse::<u64>().ok()? * 10u64.pow(9 - digits as u32);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        let t = parse_rfc3339_utc("2026-11-22T19:40:00.250000Z").map(|t| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis())
        });
        // date -u -d 2026-11-22T19:40:00Z +%s = 1795376400
        assert_eq!(t.and_then(Result::ok), Some(1_795_376_400_250));
        assert!(parse_rfc3339_utc("garbage").is_none());
    }

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(strip_ansi("\u{1b}[2m2026\u{1b}[0m INFO"), "2026 INFO");
    }

    #[test]
    fn metric_lines() {
        let text = "# HELP x\nagentregistry_packument_cache_hits_total 12\nagentregistry_packument_cache_loads_total 3\nagentregistry_packument_cache_revalidations_total 1\n";
        let c = cache_counters(text).unwrap_or_default();
        assert!((c.hit_share() - 13.0 / 16.0).abs() < 1e-9);
    }
}
