//! Metrics in Prometheus text format (`GET /metrics`, also `/-/metrics`).
//!
//! Recording: every core owns a `CoreMetrics` (plain fields in a `RefCell`: no atomics, no
//! locks on the request path); shard writers own their `WriterMetrics` the same way. A scrape
//! asks every other core and every writer for a snapshot by message (`Mailbox`), merges the
//! snapshots, and renders text. Scrapes never touch another thread's state directly, so they
//! cannot slow the hot path beyond the one message each owner answers between requests.
//!
//! Latency is recorded in microseconds in hdrhistograms (1 us .. 60 s, 3 significant digits)
//! and exported as summaries with quantiles 0.5, 0.9, 0.99 and 0.999.

use std::fmt::Write as _;

use futures_channel::oneshot;
use hdrhistogram::Histogram;

/// Route families, the `route` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    Ping,
    Whoami,
    Login,
    User,
    Packument,
    PackumentAbbreviated,
    Version,
    Tarball,
    Publish,
    Unpublish,
    DistTags,
    Metrics,
    Admin,
    Invalid,
}

impl RouteKind {
    const ALL: [RouteKind; 14] = [
        RouteKind::Ping,
        RouteKind::Whoami,
        RouteKind::Login,
        RouteKind::User,
        RouteKind::Packument,
        RouteKind::PackumentAbbreviated,
        RouteKind::Version,
        RouteKind::Tarball,
        RouteKind::Publish,
        RouteKind::Unpublish,
        RouteKind::DistTags,
        RouteKind::Metrics,
        RouteKind::Admin,
        RouteKind::Invalid,
    ];
    const COUNT: usize = RouteKind::ALL.len();

    fn label(self) -> &'static str {
        match self {
            RouteKind::Ping => "ping",
            RouteKind::Whoami => "whoami",
            RouteKind::Login => "login",
            RouteKind::User => "user",
            RouteKind::Packument => "packument",
            RouteKind::PackumentAbbreviated => "packument_abbreviated",
            RouteKind::Version => "version",
            RouteKind::Tarball => "tarball",
            RouteKind::Publish => "publish",
            RouteKind::Unpublish => "unpublish",
            RouteKind::DistTags => "dist_tags",
            RouteKind::Metrics => "metrics",
            RouteKind::Admin => "admin",
            RouteKind::Invalid => "invalid",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

const LATENCY_MAX_US: u64 = 60_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("constant bounds are valid")
}

/// One core's counters. Owned by the core; cloned into a snapshot at scrape.
#[derive(Clone)]
pub struct CoreMetrics {
    pub driver: &'static str,
    requests: [[u64; 5]; RouteKind::COUNT],
    latency: Vec<Histogram<u64>>,
    latency_sum_us: [u64; RouteKind::COUNT],
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connections_open: u64,
    pub connections_total: u64,
    pub cache_hits: u64,
    pub cache_revalidations: u64,
    pub cache_loads: u64,
}

impl Default for CoreMetrics {
    fn default() -> CoreMetrics {
        CoreMetrics {
            driver: "unknown",
            requests: [[0; 5]; RouteKind::COUNT],
            latency: (0..RouteKind::COUNT).map(|_| histogram()).collect(),
            latency_sum_us: [0; RouteKind::COUNT],
            bytes_in: 0,
            bytes_out: 0,
            connections_open: 0,
            connections_total: 0,
            cache_hits: 0,
            cache_revalidations: 0,
            cache_loads: 0,
        }
    }
}

impl CoreMetrics {
    /// Records one answered request.
    pub fn record(&mut self, route: RouteKind, status: u16, micros: u64, bytes_out: u64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[route.index()][class] += 1;
        self.latency[route.index()].saturating_record(micros.max(1));
        self.latency_sum_us[route.index()] += micros;
        self.bytes_out += bytes_out;
    }

    fn merge(&mut self, other: &CoreMetrics) {
        for (mine, theirs) in self.requests.iter_mut().zip(&other.requests) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            // Same bounds on both sides, so adding cannot fail.
            let _ = mine.add(theirs);
        }
        for (a, b) in self.latency_sum_us.iter_mut().zip(&other.latency_sum_us) {
            *a += b;
        }
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.connections_open += other.connections_open;
        self.connections_total += other.connections_total;
        self.cache_hits += other.cache_hits;
        self.cache_revalidations += other.cache_revalidations;
        self.cache_loads += other.cache_loads;
    }
}

/// One shard writer's counters. Owned by the writer thread.
#[derive(Clone)]
pub struct WriterMetrics {
    pub batches: u64,
    pub ops: u64,
    pub publishes: u64,
    pub refused: u64,
    pub commit: Histogram<u64>,
    pub commit_sum_us: u64,
    /// Microseconds spent in each phase of the group commits (`BatchPhases::NAMES`).
    pub phases_us: [u64; 4],
}

impl Default for WriterMetrics {
    fn default() -> WriterMetrics {
        WriterMetrics {
            batches: 0,
            ops: 0,
            publishes: 0,
            refused: 0,
            commit: histogram(),
            commit_sum_us: 0,
            phases_us: [0; 4],
        }
    }
}

impl WriterMetrics {
    fn merge(&mut self, other: &WriterMetrics) {
        self.batches += other.batches;
        self.ops += other.ops;
        self.publishes += other.publishes;
        self.refused += other.refused;
        let _ = self.commit.add(&other.commit);
        self.commit_sum_us += other.commit_sum_us;
        for (total, phase) in self.phases_us.iter_mut().zip(other.phases_us) {
            *total += phase;
        }
    }
}

/// A request for a snapshot, answered by the owner of the metrics.
pub type SnapshotRequest<T> = oneshot::Sender<T>;

/// Sender side of a metrics owner's mailbox.
pub type Mailbox<T> = flume::Sender<SnapshotRequest<T>>;

/// Facts read at scrape time from shared state.
pub struct StoreFacts {
    /// Per shard: (packages, file bytes).
    pub shards: Vec<(u64, u64)>,
    /// Blob files (tarballs bigger than `INLINE_BLOB_BYTES_MAX`, and older small ones).
    pub blob_count: Option<u64>,
    pub blob_bytes: Option<u64>,
    /// Tarballs stored inline in the shards, summed: (count, bytes). Counted apart from the
    /// files because they are read differently (redb table length and a byte total kept in
    /// each shard's `meta`, against a one-time directory scan).
    pub inline_blobs: (u64, u64),
    pub config_generation: u64,
    /// Bytes charged to the shared packument cache, and its budget.
    pub packument_cache: (usize, usize),
    /// Times the caches were emptied after the server idled (`idle.rs`).
    pub idle_releases: u64,
}

/// Merges and renders one scrape. `cores` are per core (index order).
#[must_use]
pub fn render(cores: &[CoreMetrics], writers: &[WriterMetrics], facts: &StoreFacts) -> String {
    let mut total = CoreMetrics::default();
    for core in cores {
        total.merge(core);
    }
    let mut writer_total = WriterMetrics::default();
    for writer in writers {
        writer_total.merge(writer);
    }
    let mut out = String::with_capacity(8 * 1024);
    render_requests(&mut out, &total);
    render_counter(
        &mut out,
        "bytes_received_total",
        "Request bytes received.",
        total.bytes_in,
    );
    render_counter(
        &mut out,
        "bytes_sent_total",
        "Response bytes sent.",
        total.bytes_out,
    );
    render_counter(
        &mut out,
        "packument_cache_hits_total",
        "Packument reads answered from the packument cache without touching storage.",
        total.cache_hits,
    );
    render_counter(
        &mut out,
        "packument_cache_revalidations_total",
        "Cached packuments confirmed current by reading only their revision.",
        total.cache_revalidations,
    );
    render_counter(
        &mut out,
        "packument_cache_loads_total",
        "Packuments loaded from storage into the packument cache.",
        total.cache_loads,
    );
    render_counter(
        &mut out,
        "connections_total",
        "Connections accepted.",
        total.connections_total,
    );
    header(
        &mut out,
        "connections_open",
        "Open connections per core.",
        "gauge",
    );
    for (index, core) in cores.iter().enumerate() {
        let _ = writeln!(
            out,
            "agentregistry_connections_open{{core=\"{index}\"}} {}",
            core.connections_open
        );
    }
    header(
        &mut out,
        "io_driver",
        "The I/O driver each core runs (value 1).",
        "gauge",
    );
    for (index, core) in cores.iter().enumerate() {
        let _ = writeln!(
            out,
            "agentregistry_io_driver{{core=\"{index}\",driver=\"{}\"}} 1",
            core.driver
        );
    }
    render_writers(&mut out, &writer_total);
    render_facts(&mut out, facts);
    out
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP agentregistry_{name} {help}");
    let _ = writeln!(out, "# TYPE agentregistry_{name} {kind}");
}

fn render_counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "agentregistry_{name} {value}");
}

fn render_requests(out: &mut String, total: &CoreMetrics) {
    header(
        out,
        "requests_total",
        "Requests answered, by route and status class.",
        "counter",
    );
    for route in RouteKind::ALL {
        for (class, count) in total.requests[route.index()].iter().enumerate() {
            if *count > 0 {
                let _ = writeln!(
                    out,
                    "agentregistry_requests_total{{route=\"{}\",status=\"{}xx\"}} {count}",
                    route.label(),
                    class + 1
                );
            }
        }
    }
    header(
        out,
        "request_duration_seconds",
        "Time from a parsed request head to its queued reply, by route.",
        "summary",
    );
    for route in RouteKind::ALL {
        let histogram = &total.latency[route.index()];
        if histogram.is_empty() {
            continue;
        }
        summary(
            out,
            "request_duration_seconds",
            &format!("route=\"{}\"", route.label()),
            histogram,
            total.latency_sum_us[route.index()],
        );
    }
}

fn summary(out: &mut String, name: &str, labels: &str, histogram: &Histogram<u64>, sum_us: u64) {
    for quantile in [0.5, 0.9, 0.99, 0.999] {
        let value = histogram.value_at_quantile(quantile);
        let _ = writeln!(
            out,
            "agentregistry_{name}{{{labels},quantile=\"{quantile}\"}} {}",
            seconds(value)
        );
    }
    let _ = writeln!(
        out,
        "agentregistry_{name}_sum{{{labels}}} {}",
        seconds(sum_us)
    );
    let _ = writeln!(
        out,
        "agentregistry_{name}_count{{{labels}}} {}",
        histogram.len()
    );
}

#[expect(
    clippy::cast_precision_loss,
    reason = "microsecond counts stay far below 2^52"
)]
fn seconds(micros: u64) -> f64 {
    micros as f64 / 1e6
}

fn render_writers(out: &mut String, w: &WriterMetrics) {
    render_counter(
        out,
        "publishes_total",
        "Publishes made durable.",
        w.publishes,
    );
    render_counter(
        out,
        "writes_total",
        "Write operations applied by shard writers.",
        w.ops,
    );
    render_counter(
        out,
        "writes_refused_total",
        "Write operations refused.",
        w.refused,
    );
    render_counter(
        out,
        "commits_total",
        "Group commits (one fsync each).",
        w.batches,
    );
    header(
        out,
        "commit_duration_seconds",
        "Time to apply and durably commit one group of writes.",
        "summary",
    );
    if !w.commit.is_empty() {
        summary(
            out,
            "commit_duration_seconds",
            "writer=\"all\"",
            &w.commit,
            w.commit_sum_us,
        );
    }
    header(
        out,
        "commit_phase_seconds_total",
        "Time group commits spent in each phase: plan (read records, plan ops, check space), \
         encode (records and documents), write (table inserts), commit (page writes, fsyncs).",
        "counter",
    );
    for (name, us) in engine::shard::BatchPhases::NAMES.iter().zip(w.phases_us) {
        let _ = writeln!(
            out,
            "agentregistry_commit_phase_seconds_total{{phase=\"{name}\"}} {:.6}",
            us as f64 / 1e6
        );
    }
}

fn render_facts(out: &mut String, facts: &StoreFacts) {
    header(out, "shard_packages", "Packages per shard.", "gauge");
    for (index, (packages, _)) in facts.shards.iter().enumerate() {
        let _ = writeln!(
            out,
            "agentregistry_shard_packages{{shard=\"{index}\"}} {packages}"
        );
    }
    header(
        out,
        "shard_file_bytes",
        "Size of each shard's redb file.",
        "gauge",
    );
    for (index, (_, bytes)) in facts.shards.iter().enumerate() {
        let _ = writeln!(
            out,
            "agentregistry_shard_file_bytes{{shard=\"{index}\"}} {bytes}"
        );
    }
    if let (Some(count), Some(bytes)) = (facts.blob_count, facts.blob_bytes) {
        header(
            out,
            "blobs",
            "Blobs in the content-addressed store.",
            "gauge",
        );
        let _ = writeln!(out, "agentregistry_blobs {count}");
        header(
            out,
            "blob_bytes",
            "Bytes in the content-addressed store.",
            "gauge",
        );
        let _ = writeln!(out, "agentregistry_blob_bytes {bytes}");
    }
    header(
        out,
        "inline_blobs",
        "Tarballs stored inline in the shards (not counted in agentregistry_blobs).",
        "gauge",
    );
    let _ = writeln!(out, "agentregistry_inline_blobs {}", facts.inline_blobs.0);
    header(
        out,
        "inline_blob_bytes",
        "Bytes of the tarballs stored inline in the shards.",
        "gauge",
    );
    let _ = writeln!(
        out,
        "agentregistry_inline_blob_bytes {}",
        facts.inline_blobs.1
    );
    header(
        out,
        "config_generation",
        "Generation of the live config record.",
        "gauge",
    );
    let _ = writeln!(
        out,
        "agentregistry_config_generation {}",
        facts.config_generation
    );
    header(
        out,
        "packument_cache_bytes",
        "Bytes held by the shared packument cache (values and overhead).",
        "gauge",
    );
    let _ = writeln!(
        out,
        "agentregistry_packument_cache_bytes {}",
        facts.packument_cache.0
    );
    header(
        out,
        "packument_cache_budget_bytes",
        "The shared packument cache's budget.",
        "gauge",
    );
    let _ = writeln!(
        out,
        "agentregistry_packument_cache_budget_bytes {}",
        facts.packument_cache.1
    );
    render_counter(
        out,
        "idle_releases_total",
        "Times the caches were emptied and memory returned after the server idled.",
        facts.idle_releases,
    );
}

/// `GET /metrics`: asks every core and writer for a snapshot, merges, renders.
pub async fn scrape(core: &crate::cores::Core) -> crate::http::respond::Reply {
    let shared = &core.shared;
    let mut cores = Vec::with_capacity(shared.core_mailboxes.len());
    for (index, mailbox) in shared.core_mailboxes.iter().enumerate() {
        if index == core.index {
            cores.push(core.metrics_snapshot());
            continue;
        }
        let (tx, rx) = oneshot::channel();
        if mailbox.send_async(tx).await.is_ok() {
            if let Ok(snapshot) = rx.await {
                cores.push(snapshot);
            }
        }
    }
    let writers = shared.writers.metrics().await;
    let facts = StoreFacts {
        shards: shared
            .shards
            .iter()
            .map(|s| (s.package_count().unwrap_or(0), s.file_bytes()))
            .collect(),
        blob_count: shared.blobs.stats().map(|(count, _)| count),
        blob_bytes: shared.blobs.stats().map(|(_, bytes)| bytes),
        inline_blobs: shared
            .shards
            .iter()
            .filter_map(|s| s.inline_blob_stats().ok())
            .fold((0, 0), |(c, b), (count, bytes)| (c + count, b + bytes)),
        config_generation: shared.live.record().generation,
        packument_cache: (shared.packages.bytes(), shared.packages.budget()),
        idle_releases: shared.idle.releases(),
    };
    let mut reply = crate::http::respond::Reply::json(200, render(&cores, &writers, &facts));
    reply.content_type = "text/plain; version=0.0.4; charset=utf-8";
    reply
}

/// The `route` label of a routed request.
#[must_use]
pub fn kind_of(
    route: &Result<crate::route::Route, crate::route::RouteError>,
    abbreviated: bool,
) -> RouteKind {
    use crate::route::Route;
    match route {
        Err(_) => RouteKind::Invalid,
        Ok(route) => match route {
            Route::Ping => RouteKind::Ping,
            Route::Metrics => RouteKind::Metrics,
            Route::Whoami => RouteKind::Whoami,
            Route::Login { .. } | Route::WebLogin => RouteKind::Login,
            Route::UserGet { .. }
            | Route::Logout { .. }
            | Route::TokensList
            | Route::TokenCreate
            | Route::TokenDelete { .. } => RouteKind::User,
            Route::Packument { .. } if abbreviated => RouteKind::PackumentAbbreviated,
            Route::Packument { .. } => RouteKind::Packument,
            Route::VersionDoc { .. } => RouteKind::Version,
            Route::Tarball { .. } => RouteKind::Tarball,
            Route::Publish { .. } => RouteKind::Publish,
            Route::Unpublish { .. } | Route::TarballDelete { .. } => RouteKind::Unpublish,
            Route::DistTagsGet { .. } | Route::DistTagSet { .. } | Route::DistTagDelete { .. } => {
                RouteKind::DistTags
            }
            Route::AdminFsck | Route::AdminBackup => RouteKind::Admin,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_renders() {
        let mut a = CoreMetrics {
            driver: "io_uring",
            ..CoreMetrics::default()
        };
        let mut b = CoreMetrics {
            driver: "epoll",
            ..CoreMetrics::default()
        };
        a.record(RouteKind::Packument, 200, 100, 10);
        b.record(RouteKind::Packument, 304, 300, 0);
        b.record(RouteKind::Tarball, 404, 50, 5);
        let mut w = WriterMetrics {
            publishes: 2,
            ..WriterMetrics::default()
        };
        w.commit.saturating_record(400);
        let facts = StoreFacts {
            shards: vec![(3, 4096)],
            blob_count: Some(2),
            blob_bytes: Some(10),
            inline_blobs: (5, 3000),
            config_generation: 7,
            packument_cache: (1234, 5678),
            idle_releases: 3,
        };
        let text = render(&[a, b], &[w], &facts);
        assert!(text.contains("agentregistry_requests_total{route=\"packument\",status=\"2xx\"} 1"));
        assert!(text.contains("agentregistry_requests_total{route=\"packument\",status=\"3xx\"} 1"));
        assert!(text.contains("agentregistry_requests_total{route=\"tarball\",status=\"4xx\"} 1"));
        assert!(
            text.contains("agentregistry_request_duration_seconds_count{route=\"packument\"} 2")
        );
        assert!(text.contains("agentregistry_io_driver{core=\"1\",driver=\"epoll\"} 1"));
        assert!(text.contains("agentregistry_publishes_total 2"));
        assert!(text.contains("agentregistry_shard_packages{shard=\"0\"} 3"));
        assert!(text.contains("agentregistry_config_generation 7"));
        assert!(text.contains("agentregistry_inline_blobs 5"));
        assert!(text.contains("agentregistry_inline_blob_bytes 3000"));
        assert!(text.contains("agentregistry_bytes_sent_total 15"));
        assert!(text.contains("agentregistry_packument_cache_bytes 1234"));
        assert!(text.contains("agentregistry_packument_cache_budget_bytes 5678"));
        assert!(text.contains("agentregistry_idle_releases_total 3"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
        }
    }
}
