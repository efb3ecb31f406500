//! Checksums paid on every publish: npm's sha512 SRI + sha1 shasum (`integrity::compute`) and
//! the blake3 blob id (`BlobId::of`), over real corpus tarballs of three sizes.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use engine::blob::BlobId;
use engine::integrity::{compute, verify};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench_integrity(c: &mut Criterion) {
    let mut group = c.benchmark_group("integrity");
    for (size, name, version) in benches::SIZES {
        let bytes = benches::load_tarball(name, version).bytes;
        let checksums = compute(&bytes);
        verify(
            &checksums,
            &bytes,
            Some(&checksums.integrity),
            Some(&checksums.shasum),
        )
        .expect("computed checksums verify");
        if size == "large" {
            group.sample_size(20);
        }
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(format!("sha512_sha1_{size}"), |b| {
            b.iter(|| compute(black_box(&bytes)));
        });
        group.bench_function(format!("blake3_{size}"), |b| {
            b.iter(|| BlobId::of(black_box(&bytes)));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = benches::config();
    targets = bench_integrity
}
criterion_main!(benches);
