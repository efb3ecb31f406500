//! Name validation: `PackageName::parse` and `Version::parse`, run by every request that names
//! a package. Each iteration parses a mix of real names (scoped and unscoped) or versions.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use engine::names::{PackageName, Version};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NAMES: [&str; 4] = [
    "express",
    "@babel/core",
    "@typescript/typescript-linux-x64",
    "lodash.merge",
];

const VERSIONS: [&str; 4] = [
    "4.21.2",
    "7.29.13",
    "7.0.2-dev.20260101",
    "1.0.0-rc.1+build.5",
];

fn bench_names(c: &mut Criterion) {
    let mut group = c.benchmark_group("names");
    group.throughput(Throughput::Elements(NAMES.len() as u64));
    group.bench_function("package_name_parse", |b| {
        b.iter(|| {
            for name in NAMES {
                black_box(PackageName::parse(black_box(name)).expect("valid fixture name"));
            }
        });
    });
    group.throughput(Throughput::Elements(VERSIONS.len() as u64));
    group.bench_function("version_parse", |b| {
        b.iter(|| {
            for version in VERSIONS {
                black_box(Version::parse(black_box(version)).expect("valid fixture version"));
            }
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = benches::config();
    targets = bench_names
}
criterion_main!(benches);
