//! Packument layer (runs on every write): render a 300-version package to its full and
//! abbreviated documents, and encode the served record (render + two gzips + etags); and the
//! read side, decoding that served record.
//!
//! `StoredPackage::render` produces both documents in one call, so the full and abbreviated
//! renders are measured together (`render_both_300v`). The package is express 5.3.0's real
//! manifest published as 300 versions through `parse_publish` + `plan_publish` (its tarball
//! repacked per version, as the registry checks that they agree).

use std::hint::black_box;
use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use engine::names::PackageName;
use engine::packument::StoredPackage;
use engine::publish::{parse_publish, plan_publish};
use engine::served::{decode_served, encode_served};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BASE_URL: &str = "http://127.0.0.1:4873";

fn bench_packument(c: &mut Criterion) {
    let express = benches::load_tarball("express", "5.3.0");
    let stored = stored_package(&express, &benches::versions(300));
    let rendered = stored.render(BASE_URL);
    let record = Bytes::from(encode_served(&stored, BASE_URL));
    eprintln!(
        "packument 300v: full {} B, abbreviated {} B, served record {} B",
        rendered.full.len(),
        rendered.abbreviated.len(),
        record.len()
    );
    let output = (rendered.full.len() + rendered.abbreviated.len()) as u64;

    let mut group = c.benchmark_group("packument");
    group.throughput(Throughput::Bytes(output));
    group.bench_function("render_both_300v", |b| {
        b.iter(|| black_box(&stored).render(BASE_URL));
    });
    group.sample_size(20);
    group.bench_function("encode_served_300v", |b| {
        b.iter(|| encode_served(black_box(&stored), BASE_URL));
    });
    group.finish();

    let mut group = c.benchmark_group("served");
    group.throughput(Throughput::Bytes(record.len() as u64));
    group.bench_function("decode", |b| {
        b.iter(|| decode_served(black_box(&record).clone()).expect("record decodes"));
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
    targets = bench_packument
}
criterion_main!(benches);
