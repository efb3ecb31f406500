//! Packument layer (runs on every write): render a 300-version package to its full and
//! abbreviated documents, encode the served values (render + two gzips + etags), and extend
//! them by one published version (`encode_appended_301v`); and the
//! read side, decoding the gzip abbreviated document (`served/decode`, what a cache miss of a
//! pnpm or bun request decodes) and the tarball index (`served/decode_index`).
//!
//! `StoredPackage::render` produces both documents in one call, so the full and abbreviated
//! renders are measured together (`render_both_300v`). The package is express 5.3.0's real
//! manifest published as 300 versions through `parse_publish` + `plan_publish` (its tarball
//! repacked per version, as the registry checks that they agree).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use engine::served::{
    assemble_doc, decode_doc, decode_index, encode_appended, encode_served, DocKind,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BASE_URL: &str = "http://127.0.0.1:4873";

fn bench_packument(c: &mut Criterion) {
    let express = benches::load_tarball("express", "5.3.0");
    let stored = benches::stored_package(&express, &benches::versions(300));
    let rendered = stored.render(BASE_URL);
    let encoded = encode_served(&stored, BASE_URL);
    let record = Bytes::from(
        encoded.docs[DocKind::AbbreviatedGzip.stored_index()]
            .value
            .clone(),
    );
    eprintln!(
        "packument 300v: full {} B, abbreviated {} B, abbreviated gzip value {} B, index {} B",
        rendered.full.len(),
        rendered.abbreviated.len(),
        record.len(),
        encoded.index.len()
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

    // The publish of version 301: the served documents of the 300 versions extended (what
    // the writer does for a publish) against `encode_served_300v` of the whole package.
    let grown = benches::stored_package(&express, &benches::versions(301));
    let old = [&encoded.docs[0].value[..], &encoded.docs[1].value[..]];
    let appended = encode_appended(&grown, BASE_URL, 300, &encoded.index, old, None)
        .expect("the documents fit");
    // The next publish appends to a document whose start is in segments (served format 9):
    // what every append after the first one after a re-render does.
    let grown_again = benches::stored_package(&express, &benches::versions(302));
    let open = [&appended.docs[0].value[..], &appended.docs[1].value[..]];
    assert!(encode_appended(&grown_again, BASE_URL, 301, &appended.index, open, None).is_some());
    let mut group = c.benchmark_group("packument");
    group.bench_function("encode_appended_301v", |b| {
        b.iter(|| encode_appended(black_box(&grown), BASE_URL, 300, &encoded.index, old, None));
    });
    // `_windows`: the same append by a writer that kept the dictionaries of its last
    // encoding, so the version before is neither decoded nor rendered (what consecutive
    // publishes do).
    let windows = [&appended.docs[0].window[..], &appended.docs[1].window[..]];
    for (name, kept) in [
        ("encode_appended_302v_segmented", None),
        ("encode_appended_302v_windows", Some(windows)),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let grown = black_box(&grown_again);
                encode_appended(grown, BASE_URL, 301, &appended.index, open, kept)
            });
        });
    }
    group.finish();

    // The package record, decoded and encoded again by every write to the package.
    let record_bytes = stored.encode();
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Bytes(record_bytes.len() as u64));
    group.bench_function("encode_300v", |b| {
        b.iter(|| black_box(&stored).encode());
    });
    group.bench_function("decode_300v", |b| {
        b.iter(|| {
            engine::packument::StoredPackage::decode(black_box(&record_bytes))
                .expect("record decodes")
        });
    });
    // What the writer reads of the record for a batch of publishes (manifests kept raw).
    group.bench_function("decode_for_append_300v", |b| {
        b.iter(|| {
            engine::packument::StoredPackage::decode_for_append(
                black_box(&record_bytes),
                &engine::packument::AppendWants::default(),
            )
            .expect("record decodes")
        });
    });
    group.finish();

    // A first publish, as in a publish storm: the documents are small, so the fixed cost of
    // setting up two gzip streams counts.
    let single = benches::stored_package(&express, &benches::versions(1));
    let mut group = c.benchmark_group("packument");
    group.bench_function("encode_served_1v", |b| {
        b.iter(|| encode_served(black_box(&single), BASE_URL));
    });
    group.finish();

    let mut group = c.benchmark_group("served");
    group.throughput(Throughput::Bytes(record.len() as u64));
    group.bench_function("decode", |b| {
        b.iter(|| decode_doc(black_box(&record).clone()).expect("document decodes"));
    });
    // A cache fill of a document grown by appends: its value and its segments copied into
    // one buffer (what `ShardReader::read_doc` adds to `decode` for such a document).
    let segment = appended.docs[0]
        .segment
        .as_ref()
        .map(|(n, bytes)| (*n, &bytes[..]))
        .expect("the first append after a fresh encoding closes a segment");
    let whole = assemble_doc(&appended.docs[0].value, &[segment]).expect("assembles");
    group.throughput(Throughput::Bytes(whole.len() as u64));
    group.bench_function("assemble_301v", |b| {
        b.iter(|| assemble_doc(black_box(&appended.docs[0].value), &[segment]).expect("assembles"));
    });
    group.throughput(Throughput::Bytes(encoded.index.len() as u64));
    group.bench_function("decode_index", |b| {
        b.iter(|| decode_index(black_box(&encoded.index)).expect("index decodes"));
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = benches::config();
    targets = bench_packument
}
criterion_main!(benches);
