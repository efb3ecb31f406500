//! Read path: the two designs ARCHITECTURE.md compares for `GET /NAME`
//! (`cargo bench -p benches --bench read_path`).
//!
//! - `read_path/mvcc_local_read`: the serving core reads the served record itself through a
//!   redb MVCC read transaction (`ShardStore::read_served`) on the current thread.
//! - `read_path/owner_core_roundtrip_{idle,busy}`: the serving core sends the name over a flume
//!   channel to the thread that owns the shard, which does the same read and replies over a
//!   flume `bounded(1)` channel; the round trip is measured. The owner either blocks in `recv`
//!   (idle: each request pays a wake-up of a parked thread) or spins on `try_recv` (busy). The
//!   requesting side always spins on `try_recv` for the reply, as a serving core with other
//!   connections would never park while waiting.
//!
//! The record is call-bound's real manifest published as enough versions through
//! `ShardStore::apply_batch` that its served record is at least 10 KiB (its tarball repacked
//! per version, as the registry checks that they agree).

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use engine::blob::BlobStore;
use engine::names::PackageName;
use engine::packument::StoredPackage;
use engine::publish::{parse_publish, plan_publish};
use engine::served::{encode_served, Served};
use engine::shard::{ReadError, ShardId, ShardStore, WriteOp};
use flume::{Receiver, Sender, TryRecvError};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BASE_URL: &str = "http://x";
const RECORD_BYTES_MIN: usize = 10 * 1024;

type Reply = Result<Option<Served>, ReadError>;

/// Publishes call-bound until its served record reaches `RECORD_BYTES_MIN`; returns its name.
fn fill(store: &ShardStore, blobs: &BlobStore) -> String {
    let tarball = benches::load_tarball("call-bound", "1.0.4");
    let mut count = 1;
    let (versions, record_len) = loop {
        let versions = benches::versions(count);
        let stored = stored_package(&tarball, &versions);
        let len = encode_served(&stored, BASE_URL).len();
        if len >= RECORD_BYTES_MIN {
            break (versions, len);
        }
        count += 1;
    };
    let name = PackageName::parse(&tarball.name).expect("valid name");
    let ops = versions
        .iter()
        .map(|version| {
            let mut body = benches::publish_body(&as_version(&tarball, version));
            let request = parse_publish(&name, &mut body).expect("fixture publish body parses");
            WriteOp::Publish {
                request,
                user: benches::USER.to_owned(),
            }
        })
        .collect();
    for result in store.apply_batch(ops, blobs, benches::epoch()) {
        result.expect("fixture publish applies");
    }
    eprintln!(
        "read_path: {} with {} versions, served record {record_len} B",
        tarball.name,
        versions.len()
    );
    tarball.name
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

fn spawn_owner(
    store: ShardStore,
    busy: bool,
) -> (Sender<Arc<str>>, Receiver<Reply>, JoinHandle<ShardStore>) {
    let (request_tx, request_rx) = flume::bounded::<Arc<str>>(1);
    let (reply_tx, reply_rx) = flume::bounded::<Reply>(1);
    let owner = std::thread::spawn(move || {
        loop {
            let name = if busy {
                match request_rx.try_recv() {
                    Ok(name) => name,
                    Err(TryRecvError::Empty) => {
                        std::hint::spin_loop();
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                match request_rx.recv() {
                    Ok(name) => name,
                    Err(_) => break,
                }
            };
            if reply_tx.send(store.read_served(&name)).is_err() {
                break;
            }
        }
        store
    });
    (request_tx, reply_rx, owner)
}

fn roundtrip(request_tx: &Sender<Arc<str>>, reply_rx: &Receiver<Reply>, name: &Arc<str>) -> Reply {
    request_tx.send(Arc::clone(name)).expect("owner is running");
    loop {
        match reply_rx.try_recv() {
            Ok(reply) => return reply,
            Err(TryRecvError::Empty) => std::hint::spin_loop(),
            Err(TryRecvError::Disconnected) => panic!("owner thread stopped"),
        }
    }
}

fn bench_read_path(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let blobs = BlobStore::open(&dir.path().join("blobs")).expect("blob store");
    let mut store =
        ShardStore::open(&dir.path().join("shard-0.redb"), ShardId(0), BASE_URL).expect("shard");
    let name: Arc<str> = fill(&store, &blobs).into();
    assert!(store.read_served(&name).expect("read").is_some());

    let mut group = c.benchmark_group("read_path");
    group.bench_function("mvcc_local_read", |b| {
        b.iter(|| store.read_served(black_box(&name)).expect("read"));
    });
    for (id, busy) in [
        ("owner_core_roundtrip_idle", false),
        ("owner_core_roundtrip_busy", true),
    ] {
        let (request_tx, reply_rx, owner) = spawn_owner(store, busy);
        group.bench_function(id, |b| {
            b.iter(|| roundtrip(&request_tx, &reply_rx, black_box(&name)).expect("read"));
        });
        drop(request_tx);
        store = owner.join().expect("owner thread exits cleanly");
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = benches::config();
    targets = bench_read_path
}
criterion_main!(benches);
