//! `perf compare`: the same workloads, in one run, against AgentRegistry, nginx (static
//! files, the same bytes) and Verdaccio 6, all started here (`fixture.rs`). Each round runs
//! every step against every target (target order rotated per round, so drifting foreign
//! load hits all of them alike); the tables give each round, then medians over rounds, the
//! ratios (always computed within one round, then the median taken), and the targets.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::bench::{self, GenOpts, PackageSet, Row, RunCtx, Spec, Workload};
use crate::fixture::{Fixture, FixtureOpts};
use crate::targets::Kind;

/// `compare` options.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct CompareOpts {
    /// Seconds per workload run.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) seconds: f64,
    /// Rounds (each runs every step on every target); medians are over rounds.
    #[arg(long, default_value_t = 1)]
    pub(crate) rounds: usize,
    /// Steps as WORKLOAD:CONNECTIONS[@RATE] (swarm ignores the connection count; RATE makes
    /// the run an open loop at RATE requests/s).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "abbreviated:64,abbreviated:256,full:64,full:256,tarball:64,swarm:0,publish:64,publish:64@2000"
    )]
    pub(crate) steps: Vec<String>,
    /// Request cap per run (default: none, time-bounded only).
    #[arg(long)]
    pub(crate) requests: Option<u64>,
    /// Seconds of warm-up traffic per GET workload and target before the first round.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) warmup: f64,
    /// Before each run, wait up to this many seconds for the machine to be quiet (other
    /// tenants' builds and tests share the 2 cores; MEASUREMENTS.md does the same).
    #[arg(long, default_value_t = 15.0)]
    pub(crate) quiet_wait: f64,
    /// Busy cores below which the machine counts as quiet.
    #[arg(long, default_value_t = 0.25)]
    pub(crate) quiet_threshold: f64,
    /// Write every row as JSON here.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) gen: GenOpts,
    #[command(flatten)]
    pub(crate) fixture: FixtureOpts,
}

/// `WORKLOAD[:CONNECTIONS[@RATE]]`: RATE makes the run an open loop at RATE requests/s.
fn parse_step(step: &str) -> Result<(Workload, usize, Option<f64>)> {
    let (w, rest) = step.split_once(':').unwrap_or((step, "64"));
    let (c, rate) = match rest.split_once('@') {
        Some((c, r)) => {
            let rate: f64 = r.trim().parse().with_context(|| format!("step {step:?}"))?;
            anyhow::ensure!(rate > 0.0, "step {step:?}: the rate must be positive");
            (c, Some(rate))
        }
        None => (rest, None),
    };
    let workload = <Workload as clap::ValueEnum>::from_str(w.trim(), true)
        .map_err(|e| anyhow::anyhow!("step {step:?}: {e}"))?;
    let connections = c.trim().parse().with_context(|| format!("step {step:?}"))?;
    Ok((workload, connections, rate))
}

pub(crate) fn run(opts: &CompareOpts) -> Result<()> {
    let started = Instant::now();
    let steps: Vec<(Workload, usize, Option<f64>)> = opts
        .steps
        .iter()
        .map(|s| parse_step(s))
        .collect::<Result<_>>()?;
    let fixture = Fixture::setup(&opts.fixture)?;
    let set = PackageSet::real(&fixture.entries);
    let roots = fixture.corpus_dir.join("e2e-package.json");
    println!("# perf compare\n");
    println!("{}", crate::machine_description());
    for t in &fixture.targets {
        if let Some(load) = &t.load {
            println!(
                "- load of the real corpus into {}: {load}",
                t.server.kind.label()
            );
        }
    }
    println!(
        "- setup took {:.0} s; {} s per run, {} round(s)\n",
        started.elapsed().as_secs_f64(),
        opts.seconds,
        opts.rounds
    );

    if opts.warmup > 0.0 {
        for t in &fixture.targets {
            for workload in [Workload::Abbreviated, Workload::Full, Workload::Tarball] {
                let ctx = RunCtx {
                    target: &t.server.target,
                    label: t.server.kind.label(),
                    server_pid: Some(t.server.pid),
                    set: &set,
                    token: t.token.as_deref(),
                    swarm_roots: Some(&roots),
                    gen: &opts.gen,
                };
                bench::run(
                    &ctx,
                    &Spec {
                        workload,
                        connections: 16,
                        seconds: opts.warmup,
                        max_requests: None,
                        rate: None,
                    },
                )?;
            }
        }
    }

    let mut rounds: Vec<Vec<Row>> = Vec::new();
    for round in 0..opts.rounds.max(1) {
        println!("## Round {}\n\n{}", round + 1, bench::TABLE_HEAD);
        let mut rows = Vec::new();
        for &(workload, connections, rate) in &steps {
            let n = fixture.targets.len();
            for k in 0..n {
                let t = &fixture.targets[(k + round) % n];
                if workload == Workload::Publish && t.server.kind == Kind::Nginx {
                    continue;
                }
                // An open-loop publish step is for AgentRegistry's latency at the target
                // rate; Verdaccio answers ~100/s, so offering it 2,000/s only measures its
                // queue (its ratio comes from the closed-loop step).
                if workload == Workload::Publish
                    && rate.is_some()
                    && t.server.kind == Kind::Verdaccio
                {
                    continue;
                }
                let ctx = RunCtx {
                    target: &t.server.target,
                    label: t.server.kind.label(),
                    server_pid: Some(t.server.pid),
                    set: &set,
                    token: t.token.as_deref(),
                    swarm_roots: Some(&roots),
                    gen: &opts.gen,
                };
                let spec = Spec {
                    workload,
                    connections,
                    seconds: opts.seconds,
                    max_requests: opts.requests,
                    rate,
                };
                crate::procstat::wait_for_quiet(
                    opts.quiet_threshold,
                    Duration::from_secs_f64(opts.quiet_wait),
                )?;
                let probe_writer =
                    workload == Workload::Publish && t.server.kind == Kind::AgentRegistry;
                let fsync = match (probe_writer, t.server.dir()) {
                    (true, Some(dir)) => {
                        Some(crate::procstat::fsync_probe(dir, Duration::from_secs(1))?)
                    }
                    _ => None,
                };
                let before = probe_writer
                    .then(|| bench::writer_metrics(&t.server.target))
                    .flatten();
                let mut row = bench::run(&ctx, &spec)
                    .with_context(|| format!("{} against {}", workload.label(), ctx.label))?;
                if let Some((n, p50, p99)) = fsync {
                    row.note.push_str(&format!(
                        "fsync probe before the run: {n} fdatasyncs of 4 KiB in 1 s, p50 {p50:.2} ms, p99 {p99:.2} ms; "
                    ));
                }
                if let (Some(b), Some(a)) = (before, bench::writer_metrics(&t.server.target)) {
                    let publishes = a.publishes - b.publishes;
                    let commits = (a.commits - b.commits).max(1.0);
                    row.note.push_str(&format!(
                        "server: {publishes:.0} durable publishes in {commits:.0} group commits ({:.1} per commit); commit duration since start p50 {:.1} ms, p99 {:.1} ms",
                        publishes / commits,
                        a.commit_p50_ms,
                        a.commit_p99_ms
                    ));
                    if publishes > 0.0 {
                        let split: Vec<String> = bench::COMMIT_PHASES
                            .iter()
                            .zip(a.phases_s.iter().zip(b.phases_s))
                            .map(|(name, (after, before))| {
                                format!("{name} {:.0}", (after - before) / publishes * 1e6)
                            })
                            .collect();
                        row.note.push_str(&format!(
                            "; writer time per publish (us): {}",
                            split.join(", ")
                        ));
                    }
                }
                println!("{}", bench::table_line(&row));
                if !row.note.is_empty() {
                    eprintln!("  note ({} {}): {}", row.key(), row.target, row.note);
                }
                rows.push(row);
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        println!();
        print_ratios(&format!("Ratios, round {}", round + 1), &[rows.clone()]);
        rounds.push(rows);
    }
    if rounds.len() > 1 {
        print_medians(&rounds);
        print_ratios("Ratios: median over rounds of each round's ratio", &rounds);
    }
    print_targets(&rounds);
    for r in rounds.iter().flatten() {
        if !r.note.is_empty() {
            println!("- note, {} {}: {}", r.key(), r.target, r.note);
        }
    }
    println!(
        "\ncompare took {:.0} s in total",
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &opts.json {
        let all: Vec<&Row> = rounds.iter().flatten().collect();
        std::fs::write(path, serde_json::to_vec_pretty(&all)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

pub(crate) fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// Keys in the order they were run.
fn keys(rounds: &[Vec<Row>]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in rounds.iter().flatten() {
        if !out.contains(&r.key()) {
            out.push(r.key());
        }
    }
    out
}

fn find<'a>(rows: &'a [Row], key: &str, target: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.key() == key && r.target == target)
}

/// A per-round quantity for (key, AgentRegistry vs other), then the median over rounds.
fn ratio_median(
    rounds: &[Vec<Row>],
    key: &str,
    other: &str,
    f: impl Fn(&Row, &Row) -> Option<f64>,
) -> Option<f64> {
    median(
        rounds
            .iter()
            .filter_map(|rows| {
                let ar = find(rows, key, "agentregistry")?;
                let o = find(rows, key, other)?;
                f(ar, o)
            })
            .collect(),
    )
}

fn fmt_ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}x"))
}

fn print_ratios(title: &str, rounds: &[Vec<Row>]) {
    println!("### {title}\n");
    println!("| workload | AR/nginx req/s | AR/nginx req/s per server core | AR/Verdaccio req/s | AR/Verdaccio req/s per server core | nginx/AR p50 | Verdaccio/AR p50 |");
    println!("|---|---|---|---|---|---|---|");
    for key in keys(rounds) {
        let rps = |a: &Row, o: &Row| (o.rps > 0.0).then(|| a.rps / o.rps);
        let per_core = |a: &Row, o: &Row| Some(a.rps_per_core()? / o.rps_per_core()?);
        let p50 = |a: &Row, o: &Row| (a.p50_ms > 0.0).then(|| o.p50_ms / a.p50_ms);
        println!(
            "| {key} | {} | {} | {} | {} | {} | {} |",
            fmt_ratio(ratio_median(rounds, &key, "nginx", rps)),
            fmt_ratio(ratio_median(rounds, &key, "nginx", per_core)),
            fmt_ratio(ratio_median(rounds, &key, "verdaccio", rps)),
            fmt_ratio(ratio_median(rounds, &key, "verdaccio", per_core)),
            fmt_ratio(ratio_median(rounds, &key, "nginx", p50)),
            fmt_ratio(ratio_median(rounds, &key, "verdaccio", p50)),
        );
    }
    println!();
}

fn print_medians(rounds: &[Vec<Row>]) {
    println!(
        "## Medians over {} rounds (each column's median)\n\n{}",
        rounds.len(),
        bench::TABLE_HEAD
    );
    let mut targets: Vec<String> = Vec::new();
    for r in rounds.iter().flatten() {
        if !targets.contains(&r.target) {
            targets.push(r.target.clone());
        }
    }
    for key in keys(rounds) {
        for target in &targets {
            let rows: Vec<&Row> = rounds
                .iter()
                .filter_map(|rows| find(rows, &key, target))
                .collect();
            let Some(first) = rows.first() else { continue };
            let med = |f: &dyn Fn(&Row) -> f64| median(rows.iter().map(|r| f(r)).collect());
            let med_opt = |f: &dyn Fn(&Row) -> Option<f64>| {
                median(rows.iter().filter_map(|r| f(r)).collect())
            };
            let row = Row {
                workload: first.workload,
                target: target.clone(),
                connections: first.connections,
                rate: first.rate,
                requests: rows.iter().map(|r| r.requests).sum(),
                errors: rows.iter().map(|r| r.errors).sum(),
                seconds: med(&|r| r.seconds).unwrap_or(0.0),
                rps: med(&|r| r.rps).unwrap_or(0.0),
                mib_s: med(&|r| r.mib_s).unwrap_or(0.0),
                p50_ms: med(&|r| r.p50_ms).unwrap_or(0.0),
                p99_ms: med(&|r| r.p99_ms).unwrap_or(0.0),
                p999_ms: med(&|r| r.p999_ms).unwrap_or(0.0),
                max_ms: med(&|r| r.max_ms).unwrap_or(0.0),
                server_cores: med_opt(&|r| r.server_cores),
                client_cores: med(&|r| r.client_cores).unwrap_or(0.0),
                softirq_cores: med(&|r| r.softirq_cores).unwrap_or(0.0),
                foreign_cores: med_opt(&|r| r.foreign_cores),
                rss_mib: med_opt(&|r| r.rss_mib),
                trees: None,
                note: String::new(),
            };
            let mut line = bench::table_line(&row);
            if let Some(per_core) = median(rows.iter().filter_map(|r| r.rps_per_core()).collect()) {
                // The per-core column is the median of per-run values, not a quotient of medians.
                let fields: Vec<&str> = line.split(" | ").collect();
                if fields.len() > 9 {
                    let mut owned: Vec<String> = fields.iter().map(|s| (*s).to_owned()).collect();
                    owned[9] = format!("{per_core:.0}");
                    line = owned.join(" | ");
                }
            }
            println!("{line}");
        }
    }
    println!();
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "**MISSED**",
        None => "not measured",
    }
}

/// The performance targets, judged from this run's medians.
fn print_targets(rounds: &[Vec<Row>]) {
    println!("## The issue's targets (medians over rounds)\n");
    println!("| target | measured | verdict |\n|---|---|---|");
    let med_row = |key: &str, target: &str, f: &dyn Fn(&Row) -> f64| {
        median(
            rounds
                .iter()
                .filter_map(|rows| find(rows, key, target).map(f))
                .collect(),
        )
    };
    let rps = |a: &Row, o: &Row| (o.rps > 0.0).then(|| a.rps / o.rps);
    let per_core = |a: &Row, o: &Row| Some(a.rps_per_core()? / o.rps_per_core()?);
    for workload in ["abbreviated", "full"] {
        for conns in [64, 256] {
            let key = format!("{workload} c{conns}");
            let r = ratio_median(rounds, &key, "nginx", rps);
            let pc = ratio_median(rounds, &key, "nginx", per_core);
            println!(
                "| {key}: >= 1.3x nginx req/s | {} (per server core {}) | {} |",
                fmt_ratio(r),
                fmt_ratio(pc),
                verdict(r.map(|r| r >= 1.3))
            );
            if conns == 64 {
                let p99 = med_row(&key, "agentregistry", &|r| r.p99_ms);
                println!(
                    "| {key}: p99 < 1 ms | {} | {} |",
                    p99.map_or("-".to_owned(), |v| format!("{v:.3} ms")),
                    verdict(p99.map(|v| v < 1.0))
                );
            }
            let v = ratio_median(rounds, &key, "verdaccio", rps);
            println!(
                "| {key}: >= 50x Verdaccio req/s | {} | {} |",
                fmt_ratio(v),
                verdict(v.map(|r| r >= 50.0))
            );
        }
    }
    let key = "tarball c64";
    let r = ratio_median(rounds, key, "nginx", rps);
    println!(
        "| {key}: >= 1.0x nginx req/s | {} (per server core {}) | {} |",
        fmt_ratio(r),
        fmt_ratio(ratio_median(rounds, key, "nginx", per_core)),
        verdict(r.map(|r| r >= 1.0))
    );
    let v = ratio_median(rounds, key, "verdaccio", rps);
    println!(
        "| {key}: >= 15x Verdaccio req/s | {} | {} |",
        fmt_ratio(v),
        verdict(v.map(|r| r >= 15.0))
    );
    let key = "publish c64";
    let p = med_row(key, "agentregistry", &|r| r.rps);
    println!(
        "| {key}: >= 2,000 durable publishes/s | {} | {} |",
        p.map_or("-".to_owned(), |v| format!("{v:.0}/s")),
        verdict(p.map(|v| v >= 2000.0))
    );
    let p99 = med_row(key, "agentregistry", &|r| r.p99_ms);
    println!(
        "| {key}: p99 < 20 ms (closed loop) | {} | {} |",
        p99.map_or("-".to_owned(), |v| format!("{v:.2} ms")),
        verdict(p99.map(|v| v < 20.0))
    );
    // Open loop: 2,000 publishes/s offered and answered, p99 from when each was due.
    for open in keys(rounds)
        .into_iter()
        .filter(|k| k.starts_with("publish ") && k.contains('@'))
    {
        let offered = rounds
            .iter()
            .flatten()
            .find(|r| r.key() == open)
            .and_then(|r| r.rate)
            .unwrap_or(0.0);
        let answered = med_row(&open, "agentregistry", &|r| r.rps);
        let p99 = med_row(&open, "agentregistry", &|r| r.p99_ms);
        let ok = answered
            .zip(p99)
            .map(|(a, p)| offered >= 2000.0 && a >= 0.98 * offered && p < 20.0);
        println!(
            "| {open}: 2,000/s offered, all answered, p99 < 20 ms | {} answered, p99 {} | {} |",
            answered.map_or("-".to_owned(), |v| format!("{v:.0}/s")),
            p99.map_or("-".to_owned(), |v| format!("{v:.2} ms")),
            verdict(ok)
        );
    }
    let v = ratio_median(rounds, key, "verdaccio", rps);
    println!(
        "| {key}: >= 15x Verdaccio | {} | {} |",
        fmt_ratio(v),
        verdict(v.map(|r| r >= 15.0))
    );
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_with_and_without_a_rate() {
        assert_eq!(
            parse_step("publish:64").unwrap(),
            (Workload::Publish, 64, None)
        );
        assert_eq!(
            parse_step("publish:64@2000").unwrap(),
            (Workload::Publish, 64, Some(2000.0))
        );
        assert_eq!(
            parse_step("abbreviated").unwrap(),
            (Workload::Abbreviated, 64, None)
        );
        for bad in [
            "publish:64@0",
            "publish:64@-5",
            "publish:64@x",
            "publish:x",
            "nope:64",
        ] {
            assert!(parse_step(bad).is_err(), "{bad}");
        }
        let key = bench::workload_key(Workload::Publish, 64, Some(2000.0));
        assert_eq!(key, "publish c64 @2000/s");
        assert_eq!(bench::workload_key(Workload::Full, 256, None), "full c256");
    }
}
