//! Routing layer: `shard_for` (which shard owns a package) and `route` (method + target ->
//! endpoint) for the two hot requests, a scoped tarball and a scoped packument, as npm sends
//! them.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use engine::shard::shard_for;
use server::http::parse::Method;
use server::route::route;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench_route(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    group.bench_function("shard_for", |b| {
        b.iter(|| shard_for(black_box("@babel/core"), black_box(2)));
    });
    group.bench_function("route_scoped_tarball", |b| {
        b.iter(|| {
            route(
                black_box(Method::Get),
                black_box("/@babel/core/-/core-7.29.13.tgz"),
            )
        });
    });
    group.bench_function("route_packument", |b| {
        b.iter(|| route(black_box(Method::Get), black_box("/@babel%2fcore")));
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = benches::config();
    targets = bench_route
}
criterion_main!(benches);
