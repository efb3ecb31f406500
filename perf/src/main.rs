//! `perf`: AgentRegistry's load harness. Loopback only, bounded in requests and seconds.
//!
//! - `load`: fill a registry through the HTTP publish path (real corpus or synthetic).
//! - `bench`: one workload against one target with this crate's own event-loop load
//!   generator (monoio), reporting req/s, MiB/s, p50/p99/p99.9, errors, and the server's
//!   CPU and RSS when `--server-pid` is given.
//! - `compare`: the workloads against AgentRegistry, nginx and Verdaccio 6, started here.
//! - `clients`: timed cold `npm` / `pnpm` / `bun install`s of the corpus tree on all three,
//!   one at a time or K at once (`--concurrent`, a 20-package tree).
//! - `scale`: AgentRegistry at 1,000 and at 100,000 synthetic packages: packument GET
//!   throughput, restart time and idle RSS.
//! - `pass`: one GET of both documents of every synthetic package, in order: the rate of
//!   reads that miss the server's packument cache (after a start or an idle release).
//!
//! See `perf/README.md` for usage and `perf/RESULTS.md` for the latest numbers.

mod bench;
mod clients;
mod compare;
mod corpus;
mod fixture;
mod http;
mod load;
mod loadgen;
mod procstat;
mod scale;
mod semverish;
mod swarm;
mod targets;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::bench::{CorpusKind, GenOpts, PackageSet, RunCtx, Spec, Workload};
use crate::http::Target;

#[derive(Parser)]
#[command(
    name = "perf",
    about = "AgentRegistry load harness (loopback only, bounded)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load a registry through its HTTP publish path.
    Load(LoadArgs),
    /// Run one workload against one target.
    Bench(BenchArgs),
    /// Compare AgentRegistry, nginx and Verdaccio on the same workloads.
    Compare(compare::CompareOpts),
    /// Time cold npm, pnpm and bun installs (one at a time or K concurrent) against the targets.
    Clients(clients::ClientsOpts),
    /// AgentRegistry at 1,000 and 100,000 packages: GET throughput, restart time, idle RSS.
    Scale(scale::ScaleOpts),
    /// One GET of each document of every synthetic package (abbreviated and full), in order.
    Pass(PassArgs),
}

#[derive(clap::Args)]
struct PassArgs {
    /// Registry base URL, e.g. http://127.0.0.1:4873 (loopback only).
    #[arg(long)]
    target: String,
    /// Synthetic packages the registry holds (`perf load --corpus synthetic`).
    #[arg(long)]
    packages: usize,
    /// Connections (as `perf scale --pass-connections`).
    #[arg(long, default_value_t = 8)]
    connections: usize,
}

#[derive(clap::Args)]
struct CorpusArgs {
    /// Which package set the registry holds.
    #[arg(long, value_enum, default_value_t = CorpusKind::Real)]
    corpus: CorpusKind,
    /// Synthetic: number of packages.
    #[arg(long, default_value_t = 1000)]
    packages: usize,
    /// Synthetic: versions per package.
    #[arg(long, default_value_t = 5)]
    versions: usize,
    /// The real corpus' folder (default: shared/corpus beside the repository).
    #[arg(long)]
    corpus_dir: Option<PathBuf>,
}

impl CorpusArgs {
    fn dir(&self) -> PathBuf {
        self.corpus_dir
            .clone()
            .unwrap_or_else(corpus::default_corpus_dir)
    }
}

#[derive(clap::Args)]
struct LoadArgs {
    /// Registry base URL, e.g. http://127.0.0.1:4873 (loopback only).
    #[arg(long)]
    registry: String,
    #[command(flatten)]
    corpus: CorpusArgs,
    /// Parallel publishing connections.
    #[arg(long, default_value_t = 8)]
    threads: usize,
    #[arg(long, default_value = "perfloader")]
    user: String,
    #[arg(long, default_value = "perf-loader-pass-1")]
    password: String,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Registry base URL, e.g. http://127.0.0.1:4873 (loopback only).
    #[arg(long)]
    target: String,
    #[arg(long, value_enum)]
    workload: Workload,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Stop after this many requests (default: time-bounded only).
    #[arg(long)]
    requests: Option<u64>,
    /// Open loop: offer this many requests per second, evenly spaced, whatever the answers
    /// take; latency counts from when each request was due (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// The server's PID: its CPU (with descendants) and RSS are recorded.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Token for the publish storm (default: log in as --user).
    #[arg(long)]
    token: Option<String>,
    #[arg(long, default_value = "perfloader")]
    user: String,
    #[arg(long, default_value = "perf-loader-pass-1")]
    password: String,
    #[command(flatten)]
    corpus: CorpusArgs,
    #[command(flatten)]
    gen: GenOpts,
    /// Print the row as JSON too.
    #[arg(long)]
    json: bool,
}

/// `nproc`, CPU model, memory and kernel, as a markdown list.
pub(crate) fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, v)| v.trim())
        .to_owned();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_ascii_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1048576.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "- machine: {:.0} CPUs ({model}), {mem_gib:.1} GiB, Linux {}",
        procstat::online_cpus(),
        kernel.trim()
    )
}

fn run_load(args: &LoadArgs) -> Result<()> {
    let target = Target::parse(&args.registry)?;
    let token = load::login(&target, &args.user, &args.password)?;
    let report = match args.corpus.corpus {
        CorpusKind::Real => {
            let entries = corpus::read_manifest(&args.corpus.dir())?;
            load::load_real(&target, &token, &entries, args.threads)?
        }
        CorpusKind::Synthetic => load::load_synthetic(
            &target,
            &token,
            args.corpus.packages,
            args.corpus.versions,
            args.threads,
        )?,
    };
    println!("loaded {}: {report}", target.base);
    Ok(())
}

fn run_bench(args: &BenchArgs) -> Result<()> {
    let target = Target::parse(&args.target)?;
    let dir = args.corpus.dir();
    let set = match args.corpus.corpus {
        CorpusKind::Real => PackageSet::real(&corpus::read_manifest(&dir)?),
        CorpusKind::Synthetic => PackageSet::synthetic(args.corpus.packages, args.corpus.versions),
    };
    let token = match (&args.token, args.workload) {
        (Some(t), _) => Some(t.clone()),
        (None, Workload::Publish) => Some(
            load::login(&target, &args.user, &args.password).context("logging in to publish")?,
        ),
        (None, _) => None,
    };
    let roots = dir.join("e2e-package.json");
    let ctx = RunCtx {
        target: &target,
        label: "target",
        server_pid: args.server_pid,
        set: &set,
        token: token.as_deref(),
        swarm_roots: Some(&roots),
        gen: &args.gen,
    };
    let row = bench::run(
        &ctx,
        &Spec {
            workload: args.workload,
            connections: args.connections,
            seconds: args.seconds,
            max_requests: args.requests,
            rate: args.rate.filter(|r| *r > 0.0),
        },
    )?;
    println!("{}\n{}", bench::TABLE_HEAD, bench::table_line(&row));
    if !row.note.is_empty() {
        println!("note: {}", row.note);
    }
    if args.json {
        println!("{}", serde_json::to_string(&row)?);
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Load(args) => run_load(args),
        Command::Bench(args) => run_bench(args),
        Command::Compare(opts) => compare::run(opts),
        Command::Clients(opts) => clients::run(opts),
        Command::Scale(opts) => scale::run(opts),
        Command::Pass(args) => run_pass(args),
    }
}

fn run_pass(args: &PassArgs) -> Result<()> {
    let target = Target::parse(&args.target)?;
    let started = std::time::Instant::now();
    scale::get_pass(&target, args.packages, args.connections)?;
    let seconds = started.elapsed().as_secs_f64();
    let requests = 2 * args.packages;
    println!(
        "{requests} GETs in {seconds:.2} s: {:.0} req/s",
        requests as f64 / seconds
    );
    Ok(())
}
