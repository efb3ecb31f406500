//! HTTP layer: request-head parsing (`server::http::parse::head`) of the heads npm 11 sends
//! for an install GET and a publish PUT, and chunked body decoding of a real publish body.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use server::http::body::decode_chunked;
use server::http::parse::head;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench_http_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("http_parse");
    for (id, bytes) in [
        ("head_npm_get", benches::NPM_GET_HEAD),
        ("head_publish", benches::NPM_PUBLISH_HEAD),
    ] {
        assert!(
            matches!(head(bytes), Ok(Some(_))),
            "fixture head {id} must parse"
        );
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(id, |b| b.iter(|| head(black_box(bytes))));
    }
    // The medium publish body (axios, ~840 KiB of JSON) in 16 KiB chunks.
    let (_, name, version) = benches::SIZES[1];
    let body = benches::publish_body(&benches::load_tarball(name, version));
    let wire = benches::chunked(&body, 16 * 1024);
    let max = server::limits::BODY_BYTES_MAX;
    let decoded = decode_chunked(&wire, max).expect("fixture chunked body decodes");
    assert_eq!(decoded.map(|(b, _)| b.len()), Some(body.len()));
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("decode_chunked_medium", |b| {
        b.iter(|| decode_chunked(black_box(&wire), max));
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = benches::config();
    targets = bench_http_parse
}
criterion_main!(benches);
