//! Blob store layer: a durable write of a new blob (temp file, fsync, rename, fsync of the
//! directory) and a read that re-hashes the bytes (blake3) to verify them, for real tarballs
//! of three sizes.
//!
//! `BlobStore::write` is a no-op for a blob already present, so `write_fsync_*` removes the
//! blob after each timed write (untimed); its fan-out directories stay, as in a used store.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use engine::blob::{BlobId, BlobStore};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench_blob(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let store = BlobStore::open(dir.path()).expect("blob store");
    let tarballs: Vec<_> = benches::SIZES
        .iter()
        .map(|&(size, name, version)| (size, benches::load_tarball(name, version).bytes))
        .collect();

    let mut group = c.benchmark_group("blob");
    group
        .sample_size(20)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(4));
    for (size, bytes) in &tarballs {
        let id = BlobId::of(bytes);
        let path = store.path_of(&id);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(format!("write_fsync_{size}"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    store.write(&id, black_box(bytes)).expect("blob write");
                    spent += start.elapsed();
                    std::fs::remove_file(&path).expect("remove the blob just written");
                }
                spent
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("blob");
    for (size, bytes) in &tarballs {
        let id = BlobId::of(bytes);
        store.write(&id, bytes).expect("blob write");
        if *size == "large" {
            group.sample_size(20);
        }
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(format!("read_verify_{size}"), |b| {
            b.iter(|| store.read(black_box(&id)).expect("blob read"));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = benches::config();
    targets = bench_blob
}
criterion_main!(benches);
