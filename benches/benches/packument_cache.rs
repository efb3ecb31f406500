//! The packument cache's hit path (`cargo bench -p benches --bench packument_cache`), what
//! every `GET /NAME` of a cached package costs before the HTTP head is written:
//! `PackageCache::doc` for a random package, then the body copied after the head as the
//! connection does (`conn.rs`, bodies up to 32 KiB).
//!
//! - `packument_cache/hit_1k`: 1,000 cached packages (their documents fit the CPU's caches).
//! - `packument_cache/hit_100k`: 100,000 cached packages (~180 MiB of documents: almost every
//!   hit reads memory). The gap between the two is what `perf scale` measures through HTTP.
//! - `packument_cache/hit_100k_prefetched`: the same, with the next package's table slot
//!   prefetched (`PackageCache::prefetch`) before each hit, as a core does while it routes
//!   a request.
//!
//! Each package is one version of call-bound's real manifest under its own name
//! (`p000000`...), published through `ShardStore::apply_batch` into one shard, and read once
//! before the measurement so every later read is a hit.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use engine::blob::BlobStore;
use engine::fixture;
use engine::served::DocKind;
use engine::shard::{ShardId, ShardStore, WriteOp};
use serde_json::Value;
use server::cache::{PackageCache, SharedPackages};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BASE_URL: &str = "http://127.0.0.1:4873";
const PUBLISH_BATCH: usize = 2_000;
/// Larger than every document of 100,000 packages together, so nothing is evicted.
const CACHE_BUDGET: usize = 1 << 30;

fn name(i: usize) -> String {
    format!("p{i:06}")
}

/// Publishes `count` one-version packages into `store`.
fn fill(store: &ShardStore, blobs: &BlobStore, count: usize) {
    let template = benches::load_tarball("call-bound", "1.0.4");
    let names: Vec<String> = (0..count).map(name).collect();
    for chunk in names.chunks(PUBLISH_BATCH) {
        let ops = chunk
            .iter()
            .map(|name| {
                let tarball = format!("{name}@1.0.4").into_bytes();
                let mut manifest = template.manifest.clone();
                manifest.insert("name".into(), Value::String(name.clone()));
                WriteOp::Publish {
                    request: fixture::one_version(name, "1.0.4", manifest, tarball),
                    user: benches::USER.to_owned(),
                }
            })
            .collect();
        for result in store.apply_batch(ops, blobs, benches::epoch()) {
            result.expect("fixture publish applies");
        }
    }
}

/// A uniform random package (xorshift64), as `perf scale` asks for.
fn pick<'a>(rng: &mut u64, names: &'a [String]) -> &'a str {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    &names[usize::try_from(*rng % names.len() as u64).unwrap_or(0)]
}

/// One hit: the lookup, then the body copied after the head as `conn.rs` does.
fn hit(cache: &mut PackageCache, store: &ShardStore, name: &str, out: &mut Vec<u8>) {
    let doc = cache
        .doc(store, black_box(name), DocKind::FullGzip)
        .expect("read")
        .expect("cached");
    out.clear();
    out.extend_from_slice(doc.body());
    black_box(out);
}

fn bench_cache(c: &mut Criterion) {
    let mut group = c.benchmark_group("packument_cache");
    for (id, count) in [("hit_1k", 1_000), ("hit_100k", 100_000)] {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
        let blobs = BlobStore::open(&dir.path().join("blobs")).expect("blob store");
        let store = ShardStore::open(&dir.path().join("shard-0.redb"), ShardId(0), BASE_URL)
            .expect("shard");
        fill(&store, &blobs, count);
        let names: Vec<String> = (0..count).map(name).collect();
        let mut cache = PackageCache::new(Arc::new(SharedPackages::new(CACHE_BUDGET)));
        let mut bytes = 0;
        for name in &names {
            let doc = cache.doc(&store, name, DocKind::FullGzip).expect("read");
            bytes += doc.expect("published").body().len();
        }
        assert_eq!(cache.loads, count as u64);
        eprintln!(
            "packument_cache: {count} packages, {} B of gzip full documents",
            bytes
        );
        let mut out = Vec::with_capacity(64 * 1024);
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        group.bench_function(id, |b| {
            b.iter(|| {
                let name = pick(&mut rng, &names);
                hit(&mut cache, &store, name, &mut out);
            });
        });
        if count >= 100_000 {
            // The next request's slot prefetched before this one is answered, as a core
            // prefetches while it routes (conn.rs): what `PackageCache::prefetch` saves.
            let mut next = names[0].as_str();
            group.bench_function("hit_100k_prefetched", |b| {
                b.iter(|| {
                    let name = next;
                    next = pick(&mut rng, &names);
                    cache.prefetch(next, DocKind::FullGzip);
                    hit(&mut cache, &store, name, &mut out);
                });
            });
        }
        assert_eq!(cache.loads, count as u64, "every measured read was a hit");
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = benches::config();
    targets = bench_cache
}
criterion_main!(benches);
