//! Metrics (`cargo bench -p benches --bench metrics`): what recording costs a core per
//! request, and what a scrape costs.
//!
//! - `metrics/record`: what `conn::exchange` does per answered request: add the request's
//!   bytes to `bytes_in`, then `CoreMetrics::record` (status class counter, latency into the
//!   route's hdrhistogram, latency sum, bytes out), each through the core's `RefCell`, as
//!   there. Requests cycle through `SAMPLE_COUNT` precomputed ones from `MIX`.
//! - `metrics/request_clock`: the `Instant::now()` / `elapsed()` pair that times a request.
//! - `metrics/snapshot`: one core's snapshot for a scrape (`CoreMetrics::clone`, as
//!   `Core::metrics_snapshot` makes it; one hdrhistogram per route), and its drop.
//! - `metrics/render_{2,16}_cores`: `metrics::render`, the scrape's own work: merge every
//!   core's and writer's snapshot, then render the Prometheus text. The mailbox hops that
//!   fetch the snapshots are not included.
//!
//! Every core's metrics hold `LOADED_REQUESTS` recorded requests from `MIX`, so histograms
//! and counters are populated as on a registry that has been serving for a while.

use std::cell::RefCell;
use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use server::metrics::{render, CoreMetrics, RouteKind, StoreFacts, WriterMetrics};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A power of two, so the next sample is picked with a mask.
const SAMPLE_COUNT: usize = 4096;
const _: () = assert!(SAMPLE_COUNT.is_power_of_two());
const LOADED_REQUESTS: usize = 100_000;
const LOADED_COMMITS: usize = 2_000;

/// Request mix of an agent swarm installing: (weight, route, status, response body bytes).
const MIX: [(u32, RouteKind, u16, u64); 9] = [
    (55, RouteKind::PackumentAbbreviated, 200, 12_000),
    (10, RouteKind::Packument, 304, 0),
    (25, RouteKind::Tarball, 200, 40_000),
    (3, RouteKind::Publish, 201, 80),
    (2, RouteKind::Whoami, 200, 20),
    (2, RouteKind::Packument, 404, 60),
    (1, RouteKind::DistTags, 200, 40),
    (1, RouteKind::Ping, 200, 2),
    (1, RouteKind::Invalid, 400, 70),
];

/// One answered request, as `conn::exchange` sees it when it records.
#[derive(Clone, Copy)]
struct Sample {
    route: RouteKind,
    status: u16,
    micros: u64,
    bytes_in: u64,
    bytes_out: u64,
}

/// xorshift64: deterministic, so every run records the same requests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Roughly log-uniform in `low..high`: latencies span decades.
    fn log_between(&mut self, low: u64, high: u64) -> u64 {
        let decades = f64::from(u32::try_from(self.next() % 1_000).expect("< 1000")) / 1_000.0;
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "bounded positive values far below 2^52"
        )]
        let value = (low as f64 * (high as f64 / low as f64).powf(decades)) as u64;
        value.clamp(low, high)
    }
}

fn samples(seed: u64, count: usize) -> Vec<Sample> {
    let weight_total: u32 = MIX.iter().map(|m| m.0).sum();
    let mut rng = Rng(seed | 1);
    (0..count)
        .map(|_| {
            let mut pick = u32::try_from(rng.next() % u64::from(weight_total)).expect("< total");
            let &(_, route, status, body) = MIX
                .iter()
                .find(|m| {
                    if pick < m.0 {
                        return true;
                    }
                    pick -= m.0;
                    false
                })
                .expect("pick is below the weight total");
            Sample {
                route,
                status,
                micros: rng.log_between(20, 20_000),
                bytes_in: 300 + rng.next() % 200,
                bytes_out: 180 + body,
            }
        })
        .collect()
}

/// What `conn::exchange` does with the core's metrics for one request.
fn record_request(metrics: &RefCell<CoreMetrics>, s: &Sample) {
    metrics.borrow_mut().bytes_in += s.bytes_in;
    metrics
        .borrow_mut()
        .record(s.route, s.status, s.micros, s.bytes_out);
}

fn loaded_core(seed: u64) -> CoreMetrics {
    let mut core = CoreMetrics::default();
    core.driver = "io_uring";
    core.connections_open = 64;
    core.connections_total = 1_000;
    core.cache_hits = 60_000;
    core.cache_revalidations = 4_000;
    core.cache_loads = 500;
    let metrics = RefCell::new(core);
    for s in samples(seed, LOADED_REQUESTS) {
        record_request(&metrics, &s);
    }
    metrics.into_inner()
}

fn loaded_writer(seed: u64) -> WriterMetrics {
    let mut rng = Rng(seed | 1);
    let mut writer = WriterMetrics::default();
    for _ in 0..LOADED_COMMITS {
        let micros = rng.log_between(500, 50_000);
        writer.commit.saturating_record(micros);
        writer.commit_sum_us += micros;
        writer.batches += 1;
        writer.ops += 1 + rng.next() % 8;
    }
    writer.publishes = writer.ops - writer.ops / 20;
    writer.refused = writer.ops / 20;
    writer
}

fn facts(shard_count: u64) -> StoreFacts {
    StoreFacts {
        shards: (0..shard_count)
            .map(|i| (1_000 + i, 64 * 1024 * 1024 + i))
            .collect(),
        blob_count: Some(20_000),
        blob_bytes: Some(4 * 1024 * 1024 * 1024),
        inline_blobs: (80_000, 240 * 1024 * 1024),
        config_generation: 12,
        packument_cache: (150 * 1024 * 1024, 192 * 1024 * 1024),
        idle_releases: 4,
    }
}

fn bench_metrics(c: &mut Criterion) {
    let mut group = c.benchmark_group("metrics");

    let requests = samples(7, SAMPLE_COUNT);
    let metrics = RefCell::new(loaded_core(1));
    group.bench_function("record", |b| {
        let mut next = 0usize;
        b.iter(|| {
            let s = &requests[next & (SAMPLE_COUNT - 1)];
            next = next.wrapping_add(1);
            record_request(&metrics, black_box(s));
        });
    });

    group.bench_function("request_clock", |b| {
        b.iter(|| {
            let started = black_box(Instant::now());
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
        });
    });

    let core = metrics.into_inner();
    group.bench_function("snapshot", |b| {
        b.iter(|| black_box(&core).clone());
    });

    // A render takes milliseconds at 16 cores: fewer samples keep the run within seconds.
    group.sample_size(20);
    for core_count in [2u64, 16] {
        let cores: Vec<CoreMetrics> = (0..core_count).map(|i| loaded_core(i + 1)).collect();
        let writers: Vec<WriterMetrics> = (0..core_count).map(|i| loaded_writer(i + 1)).collect();
        let facts = facts(core_count);
        let text = render(&cores, &writers, &facts);
        eprintln!(
            "metrics/render_{core_count}_cores: {} lines, {} B",
            text.lines().count(),
            text.len()
        );
        group.bench_function(format!("render_{core_count}_cores"), |b| {
            b.iter(|| render(black_box(&cores), &writers, &facts));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = benches::config();
    targets = bench_metrics
}
criterion_main!(benches);
