//! Publish path, engine side: `parse_publish` of npm-shaped publish bodies built from real
//! corpus tarballs (simd-json parse, base64 decode, sha512 + sha1 verify, blake3, reading the
//! tarball), and `plan_publish` of one new version onto a 300-version package.

use std::hint::black_box;
use std::io::{Read, Write};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use engine::names::PackageName;
use engine::packument::StoredPackage;
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
    let stored = stored_package(&express, &benches::versions(300));
    let name = PackageName::parse("express").expect("valid name");
    let body = benches::publish_body(&as_version(&express, "9.0.0"));
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

/// `t` repacked as `version`: the same files with `package.json`'s version rewritten, since
/// the registry refuses a tarball whose package.json disagrees with the published version.
fn as_version(t: &benches::CorpusTarball, version: &str) -> benches::CorpusTarball {
    let mut manifest = t.manifest.clone();
    manifest.insert("version".into(), serde_json::json!(version));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(t.bytes.as_slice()));
    let mut builder = tar::Builder::new(Vec::new());
    for entry in archive.entries().expect("corpus tarballs are tar") {
        let mut entry = entry.expect("corpus tar entries read");
        let path = entry.path().expect("corpus paths are valid").into_owned();
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .expect("corpus tar bodies read");
        if path.iter().count() == 2 && path.ends_with("package.json") {
            data = serde_json::to_vec_pretty(&manifest).expect("a JSON map serializes");
        }
        let mut header = entry.header().clone();
        header.set_size(data.len() as u64);
        builder
            .append_data(&mut header, &path, data.as_slice())
            .expect("appending to an in-memory tar");
    }
    let tar = builder.into_inner().expect("finishing an in-memory tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).expect("gzip into memory");
    benches::CorpusTarball {
        version: version.to_owned(),
        bytes: gz.finish().expect("gzip into memory"),
        manifest,
        ..t.clone()
    }
}

/// `t` published as each of `versions` (repacked per version), one publish each, through
/// `parse_publish` + `plan_publish`.
fn stored_package(t: &benches::CorpusTarball, versions: &[String]) -> StoredPackage {
    let name = PackageName::parse(&t.name).expect("corpus names are valid");
    let mut stored = None;
    for (i, version) in versions.iter().enumerate() {
        let mut body = benches::publish_body(&as_version(t, version));
        let request = parse_publish(&name, &mut body).expect("fixture publish body parses");
        let now = benches::epoch() + Duration::from_secs(3600 * i as u64);
        let plan = plan_publish(stored.take(), request, benches::USER, now).expect("plans");
        stored = Some(plan.stored);
    }
    stored.expect("at least one version")
}

criterion_group! {
    name = benches;
    config = benches::config();
    targets = bench_publish
}
criterion_main!(benches);
