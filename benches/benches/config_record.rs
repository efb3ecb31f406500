//! Config record layer: the 32-byte slot codec, the `AtomicU64` pack/unpack snapshot, a read
//! of `config.bin` (pread of both slots) and a durable write (two fsyncs).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use engine::config_record::{
    decode_slot, encode_slot, pack, unpack, ConfigFile, ConfigRecord, FLAG_PRIVATE_REGISTRY,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench_config_record(c: &mut Criterion) {
    let record = ConfigRecord::new("http://127.0.0.1:4873", FLAG_PRIVATE_REGISTRY);
    let slot = encode_slot(&record);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let (mut file, _) =
        ConfigFile::open_or_create(&dir.path().join("config.bin"), &record).expect("config.bin");

    let mut group = c.benchmark_group("config_record");
    group.bench_function("decode_slot", |b| b.iter(|| decode_slot(black_box(&slot))));
    group.bench_function("pack_unpack", |b| {
        b.iter(|| unpack(pack(black_box(&record)), black_box(7)));
    });
    group.bench_function("read", |b| {
        b.iter(|| file.read().expect("config read"));
    });
    group
        .sample_size(20)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("write_fsync", |b| {
        b.iter(|| file.write(black_box(&record)).expect("config write"));
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = benches::config();
    targets = bench_config_record
}
criterion_main!(benches);
