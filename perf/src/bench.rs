//! `perf bench` and the workload runner `compare` reuses: builds the request set of a
//! workload (abbreviated or full packuments, tarballs, a publish storm, or the swarm), runs
//! it bounded in time and count, and measures server CPU, load-generator CPU, softirq,
//! foreign CPU and the server's RSS around the run. One run gives one `Row`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;

use crate::corpus;
use crate::http::Target;
use crate::loadgen::{self, Driver, FixedRequests, PublishSource, Source};
use crate::procstat::{self, CpuWindow};
use crate::swarm;

/// What a run asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub(crate) enum Workload {
    /// `GET /NAME` with `Accept: application/vnd.npm.install-v1+json` (gzip).
    Abbreviated,
    /// `GET /NAME` with `Accept: application/json` (gzip), what npm asks for.
    Full,
    /// `GET /NAME/-/NAME-V.tgz`.
    Tarball,
    /// `PUT /NAME` of a new unique version per request, over many packages.
    Publish,
    /// K simulated cold clients resolving and downloading the corpus tree.
    Swarm,
}

impl Workload {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Workload::Abbreviated => "abbreviated",
            Workload::Full => "full",
            Workload::Tarball => "tarball",
            Workload::Publish => "publish",
            Workload::Swarm => "swarm",
        }
    }
}

/// Which packages a registry holds (for picking random requests).
#[derive(Clone, Debug, clap::ValueEnum, PartialEq, Eq)]
pub(crate) enum CorpusKind {
    Real,
    Synthetic,
}

/// The loaded package set.
#[derive(Clone, Debug)]
pub(crate) struct PackageSet {
    pub(crate) names: Vec<String>,
    /// (name, version) of every tarball.
    pub(crate) tarballs: Vec<(String, String)>,
}

impl PackageSet {
    pub(crate) fn real(entries: &[corpus::Entry]) -> PackageSet {
        PackageSet {
            names: corpus::names(entries),
            tarballs: entries
                .iter()
                .map(|e| (e.name.clone(), e.version.clone()))
                .collect(),
        }
    }

    pub(crate) fn synthetic(packages: usize, versions: usize) -> PackageSet {
        let names: Vec<String> = (0..packages).map(corpus::synthetic_name).collect();
        let tarballs = names
            .iter()
            .flat_map(|n| (0..versions).map(move |j| (n.clone(), corpus::synthetic_version(j))))
            .collect();
        PackageSet { names, tarballs }
    }
}

/// Load-generator settings shared by `bench` and `compare`.
#[derive(Clone, Debug, clap::Args, serde::Serialize)]
pub(crate) struct GenOpts {
    /// Load-generator threads (event loops). 1 matches MEASUREMENTS.md's `wrk -t1`.
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// The load generator's I/O driver.
    #[arg(long, value_enum, default_value_t = Driver::Legacy)]
    pub(crate) driver: Driver,
    /// Swarm: concurrent simulated clients.
    #[arg(long, default_value_t = 8)]
    pub(crate) swarm_clients: usize,
    /// Swarm: connections per client (15-64 is what real clients open).
    #[arg(long, default_value_t = 16)]
    pub(crate) swarm_connections: usize,
    /// Swarm: seconds a tree in progress at the deadline may still take.
    #[arg(long, default_value_t = 60)]
    pub(crate) swarm_grace: u64,
    /// Publish storm: distinct packages the new versions are spread over.
    #[arg(long, default_value_t = 2000)]
    pub(crate) publish_packages: usize,
    /// Publish storm: the packages are `perf-pub-NAMESPACE-NNNNN`. By default every run
    /// takes a namespace of its own (its start time in hex), so each run, and each round of
    /// `compare`, publishes into fresh packages and rounds measure the same thing. A fixed
    /// namespace (lowercase letters, digits, `-`) makes successive runs publish into the same
    /// packages, which then grow by one version per request.
    #[arg(long, value_parser = publish_namespace)]
    pub(crate) publish_namespace: Option<String>,
    /// Publish storm: requests built before the clock starts, per second of the run (the
    /// rest are built while the run goes on, which costs load-generator CPU).
    #[arg(long, default_value_t = 3000)]
    pub(crate) publish_prepared_per_second: usize,
    /// Per-request timeout in seconds (counted as a socket error).
    #[arg(long, default_value_t = 20)]
    pub(crate) timeout: u64,
}

/// `--publish-namespace`: checked when the arguments are parsed, so that `compare` refuses a
/// bad one before it starts any server. The names it makes must be valid npm names.
fn publish_namespace(ns: &str) -> Result<String, String> {
    let valid = !ns.is_empty()
        && ns.len() <= 64
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(ns.to_owned())
    } else {
        Err(format!(
            "takes 1-64 lowercase letters, digits and '-', not {ns:?}"
        ))
    }
}

/// One workload run's parameters.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    pub(crate) workload: Workload,
    pub(crate) connections: usize,
    pub(crate) seconds: f64,
    pub(crate) max_requests: Option<u64>,
    /// Open loop at this many requests per second (see `loadgen::Plan::rate`); None is a
    /// closed loop.
    pub(crate) rate: Option<f64>,
}

/// One measured run.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Row {
    pub(crate) workload: Workload,
    pub(crate) target: String,
    pub(crate) connections: usize,
    /// Open loop: the offered rate in requests per second.
    pub(crate) rate: Option<f64>,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) seconds: f64,
    pub(crate) rps: f64,
    pub(crate) mib_s: f64,
    /// Request latency (swarm: time per client tree), milliseconds.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) server_cores: Option<f64>,
    pub(crate) client_cores: f64,
    pub(crate) softirq_cores: f64,
    pub(crate) foreign_cores: Option<f64>,
    pub(crate) rss_mib: Option<f64>,
    /// Swarm only: complete trees, trees per second.
    pub(crate) trees: Option<u64>,
    pub(crate) note: String,
}

impl Row {
    /// req/s per server core (req/s divided by the server's CPU-seconds per second).
    pub(crate) fn rps_per_core(&self) -> Option<f64> {
        self.server_cores
            .filter(|c| *c > 0.01)
            .map(|c| self.rps / c)
    }

    pub(crate) fn key(&self) -> String {
        workload_key(self.workload, self.connections, self.rate)
    }
}

/// `publish c64`, or `publish c64 @2000/s` for an open-loop run.
pub(crate) fn workload_key(workload: Workload, connections: usize, rate: Option<f64>) -> String {
    match rate {
        None => format!("{} c{connections}", workload.label()),
        Some(r) => format!("{} c{connections} @{r:.0}/s", workload.label()),
    }
}

fn requests_for(workload: Workload, target: &Target, set: &PackageSet) -> Vec<Bytes> {
    match workload {
        Workload::Abbreviated => set
            .names
            .iter()
            .map(|n| {
                loadgen::get_request(
                    &target.authority,
                    &corpus::packument_path(n),
                    "Accept: application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*\r\nAccept-Encoding: gzip\r\n",
                )
            })
            .collect(),
        Workload::Full => set
            .names
            .iter()
            .map(|n| {
                loadgen::get_request(
                    &target.authority,
                    &corpus::packument_path(n),
                    "Accept: application/json\r\nAccept-Encoding: gzip\r\n",
                )
            })
            .collect(),
        Workload::Tarball => set
            .tarballs
            .iter()
            .map(|(n, v)| {
                loadgen::get_request(
                    &target.authority,
                    &corpus::tarball_path(n, v),
                    "Accept-Encoding: gzip\r\n",
                )
            })
            .collect(),
        Workload::Publish | Workload::Swarm => Vec::new(),
    }
}

fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

/// Everything a run needs besides the spec.
pub(crate) struct RunCtx<'a> {
    pub(crate) target: &'a Target,
    pub(crate) label: &'a str,
    pub(crate) server_pid: Option<u32>,
    pub(crate) set: &'a PackageSet,
    pub(crate) token: Option<&'a str>,
    pub(crate) swarm_roots: Option<&'a PathBuf>,
    pub(crate) gen: &'a GenOpts,
}

/// Runs one workload against one target.
pub(crate) fn run(ctx: &RunCtx<'_>, spec: &Spec) -> Result<Row> {
    let duration = Duration::from_secs_f64(spec.seconds);
    let gen = ctx.gen;
    if spec.workload == Workload::Swarm {
        let roots_file = ctx
            .swarm_roots
            .context("the swarm needs the corpus' e2e-package.json")?;
        let plan = swarm::SwarmPlan {
            addr: ctx.target.addr,
            authority: ctx.target.authority.clone(),
            clients: gen.swarm_clients,
            connections_per_client: gen.swarm_connections,
            threads: gen.threads,
            duration,
            grace: Duration::from_secs(gen.swarm_grace),
            roots: swarm::roots_of(roots_file)?,
            driver: gen.driver,
        };
        let window = CpuWindow::start(ctx.server_pid)?;
        let out = swarm::run(&plan)?;
        let cpu = window.finish()?;
        let secs = out.elapsed.as_secs_f64();
        let q = |p: f64| out.tree_ms.value_at_quantile(p) as f64;
        return Ok(Row {
            workload: Workload::Swarm,
            target: ctx.label.to_owned(),
            connections: gen.swarm_clients * gen.swarm_connections,
            rate: None,
            requests: out.requests,
            errors: out.errors,
            seconds: secs,
            rps: out.requests as f64 / secs,
            mib_s: out.bytes as f64 / 1048576.0 / secs,
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: out.tree_ms.max() as f64,
            server_cores: cpu.server,
            client_cores: cpu.client,
            softirq_cores: cpu.softirq,
            foreign_cores: cpu.foreign,
            rss_mib: ctx
                .server_pid
                .map(|p| procstat::tree_rss_kib(p) as f64 / 1024.0),
            trees: Some(out.trees),
            note: format!(
                "{} clients x {} conns; {} trees done, {} incomplete; {} packuments + {} tarballs per tree; {} missing (404), {} range fallbacks{}",
                gen.swarm_clients,
                gen.swarm_connections,
                out.trees,
                out.incomplete,
                out.packuments_per_tree,
                out.tarballs_per_tree,
                out.missing,
                out.fallbacks,
                out.first_error
                    .map(|e| format!("; first error: {e}"))
                    .unwrap_or_default()
            ),
        });
    }
    let source = if spec.workload == Workload::Publish {
        let token = ctx.token.context("the publish storm needs a token")?;
        Source::Publish(Arc::new(PublishSource::new(
            &ctx.target.base,
            &ctx.target.authority,
            token,
            gen.publish_packages,
            gen.publish_namespace.as_deref(),
            prepared_publishes(
                spec,
                gen.publish_prepared_per_second
                    .max(spec.rate.unwrap_or(0.0).ceil() as usize),
            ),
        )?))
    } else {
        let requests = requests_for(spec.workload, ctx.target, ctx.set);
        anyhow::ensure!(!requests.is_empty(), "no packages to request");
        Source::Fixed(Arc::new(FixedRequests::new(&requests)?))
    };
    let plan = loadgen::Plan {
        addr: ctx.target.addr,
        connections: spec.connections,
        threads: gen.threads,
        duration,
        max_requests: spec.max_requests,
        rate: spec.rate,
        source,
        driver: gen.driver,
        request_timeout: Duration::from_secs(gen.timeout),
    };
    let window = CpuWindow::start(ctx.server_pid)?;
    let out = loadgen::run(&plan)?;
    let cpu = window.finish()?;
    let secs = out.elapsed.as_secs_f64();
    let statuses = out
        .statuses
        .iter()
        .map(|(s, n)| format!("{s}x{n}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut note = String::new();
    if out.errors() > 0 {
        note = format!(
            "errors: {} status ({statuses}), {} socket{}",
            out.status_errors,
            out.socket_errors,
            out.first_error
                .as_ref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
    }
    Ok(Row {
        workload: spec.workload,
        target: ctx.label.to_owned(),
        connections: spec.connections,
        rate: spec.rate,
        requests: out.requests,
        errors: out.errors(),
        seconds: secs,
        rps: out.requests as f64 / secs,
        mib_s: out.bytes as f64 / 1048576.0 / secs,
        p50_ms: ms(out.latency.value_at_quantile(0.5)),
        p99_ms: ms(out.latency.value_at_quantile(0.99)),
        p999_ms: ms(out.latency.value_at_quantile(0.999)),
        max_ms: ms(out.latency.max()),
        server_cores: cpu.server,
        client_cores: cpu.client,
        softirq_cores: cpu.softirq,
        foreign_cores: cpu.foreign,
        rss_mib: ctx
            .server_pid
            .map(|p| procstat::tree_rss_kib(p) as f64 / 1024.0),
        trees: None,
        note,
    })
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

/// Markdown table header for rows.
pub(crate) const TABLE_HEAD: &str = "| workload | target | req/s | MiB/s | p50 ms | p99 ms | p99.9 ms | errors | server cores | req/s per server core | loadgen cores | softirq | foreign | server RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

/// One markdown table line.
pub(crate) fn table_line(row: &Row) -> String {
    let (p50, p99, p999) = if row.workload == Workload::Swarm {
        (
            format!("tree {:.0}", row.p50_ms),
            format!("tree {:.0}", row.p99_ms),
            format!("tree {:.0}", row.p999_ms),
        )
    } else {
        (
            format!("{:.3}", row.p50_ms),
            format!("{:.3}", row.p99_ms),
            format!("{:.3}", row.p999_ms),
        )
    };
    format!(
        "| {} | {} | {:.0} | {:.1} | {p50} | {p99} | {p999} | {} | {} | {} | {:.2} | {:.2} | {} | {} |",
        row.key(),
        row.target,
        row.rps,
        row.mib_s,
        row.errors,
        opt(row.server_cores, 2),
        opt(row.rps_per_core(), 0),
        row.client_cores,
        row.softirq_cores,
        opt(row.foreign_cores, 2),
        opt(row.rss_mib, 0),
    )
}

/// AgentRegistry's writer counters from `GET /-/metrics` (Prometheus text): publishes made
/// durable, group commits, the cumulative commit-duration p50 and p99 in ms, and the seconds
/// group commits spent in each phase (plan, encode, write, commit; zeros from a server that
/// does not report them).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WriterMetrics {
    pub(crate) publishes: f64,
    pub(crate) commits: f64,
    pub(crate) commit_p50_ms: f64,
    pub(crate) commit_p99_ms: f64,
    pub(crate) phases_s: [f64; 4],
}

/// Names of the phases in `WriterMetrics::phases_s`, as the server labels them.
pub(crate) const COMMIT_PHASES: [&str; 4] = ["plan", "encode", "write", "commit"];

pub(crate) fn writer_metrics(target: &Target) -> Option<WriterMetrics> {
    let mut conn = crate::http::Conn::new(target);
    let response = conn.request("GET", "/-/metrics", &[], None).ok()?;
    if response.status != 200 {
        return None;
    }
    let text = String::from_utf8(response.decoded_body().ok()?).ok()?;
    let value = |prefix: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    Some(WriterMetrics {
        publishes: value("agentregistry_publishes_total ")?,
        commits: value("agentregistry_commits_total ")?,
        commit_p50_ms: value(
            r#"agentregistry_commit_duration_seconds{writer="all",quantile="0.5"}"#,
        )
        .unwrap_or(0.0)
            * 1e3,
        commit_p99_ms: value(
            r#"agentregistry_commit_duration_seconds{writer="all",quantile="0.99"}"#,
        )
        .unwrap_or(0.0)
            * 1e3,
        phases_s: COMMIT_PHASES.map(|phase| {
            value(&format!(
                "agentregistry_commit_phase_seconds_total{{phase=\"{phase}\"}} "
            ))
            .unwrap_or(0.0)
        }),
    })
}

/// How many publish requests to build before a storm starts: enough for `per_second` over the
/// run, never more than the run's request budget, and at most 100,000 (about 300 MB).
fn prepared_publishes(spec: &Spec, per_second: usize) -> usize {
    let by_time = (spec.seconds.max(0.0) * per_second as f64).ceil() as usize;
    let by_budget = spec
        .max_requests
        .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
    by_time.min(by_budget).min(100_000)
}

#[cfg(test)]
mod tests {
    use super::publish_namespace;

    #[test]
    fn publish_namespaces_make_valid_npm_names_or_are_refused() {
        assert_eq!(publish_namespace("grow-1").as_deref(), Ok("grow-1"));
        for bad in ["", "Grow", "a_b", "a/b", "é", &"a".repeat(65)] {
            assert!(publish_namespace(bad).is_err(), "{bad:?}");
        }
    }
}
