//! Publish path, engine side: `parse_publish` of npm-shaped publish bodies built from real
//! corpus tarballs (simd-json parse, base64 decode, sha512 + sha1 verify, blake3, reading the
//! tarball), and `plan_publish` of one new version onto a 300-version package.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use engine::names::PackageName;
use engine::publish::{parse_publish, plan_publish};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench_publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    for (size, name, version) in benches::SIZES {
        let tarball = benches::load_tarball(name, version);
        let body = benches::publish_body(&tarball);
        let name = PackageName::parse(name).expect("corpus names are valid");
        parse_publish(&name, &mut body.clone()).expect("fixture publish body parses");
        eprintln!(
            "publish/{size}: {name}@{version}, tarball {} B, body {} B",
            tarball.bytes.len(),
            body.len()
        );
        if size == "large" {
            group.sample_size(10).sampling_mode(SamplingMode::Flat);
        }
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("parse_body_{size}"), |b| {
            b.iter_batched(
                || body.clone(),
                |mut body| parse_publish(&name, &mut body).expect("parses"),
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();

    let express = benches::load_tarball("express", "5.3.0");
    let stored = benches::stored_package(&express, &benches::versions(300));
    let name = PackageName::parse("express").expect("valid name");
    let body = benches::publish_body(&benches::as_version(&express, "9.0.0"));
    let now = benches::epoch() + Duration::from_secs(86_400 * 365);
    let mut group = c.benchmark_group("publish");
    group.bench_function("plan_onto_300v", |b| {
        b.iter_batched(
            || {
                let request = parse_publish(&name, &mut body.clone()).expect("parses");
                (stored.clone(), request)
            },
            |(current, request)| {
                plan_publish(Some(current), request, benches::USER, black_box(now)).expect("plans")
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = benches::config();
    targets = bench_publish
}
criterion_main!(benches);
