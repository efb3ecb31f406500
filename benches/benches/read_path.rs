//! Read path: the two designs ARCHITECTURE.md compares for `GET /NAME`
//! (`cargo bench -p benches --bench read_path`).
//!
//! - `read_path/mvcc_local_read`: the serving core reads the gzip abbreviated document (what
//!   pnpm and bun ask for) itself through a redb MVCC read transaction
//!   (`ShardStore::read_doc`) on the current thread.
//! - `read_path/owner_core_roundtrip_{idle,busy}`: the serving core sends the name over a flume
//!   channel to the thread that owns the shard, which does the same read and replies over a
//!   flume `bounded(1)` channel; the round trip is measured. The owner either blocks in `recv`
//!   (idle: each request pays a wake-up of a parked thread) or spins on `try_recv` (busy). The
//!   requesting side always spins on `try_recv` for the reply, as a serving core with other
//!   connections would never park while waiting.
//!
//! The record is call-bound's real manifest published as enough versions through
//! `ShardStore::apply_batch` that its full document is at least 10 KiB (its tarball repacked
//! per version, as the registry checks that they agree). Until the served values were split
//! per representation (served format 2), these benches read the whole served record instead.

use std::hint::black_box;
use std::sync::Arc;
use std::thread::JoinHandle;

use criterion::{criterion_group, criterion_main, Criterion};
use engine::blob::BlobStore;
use engine::names::PackageName;
use engine::publish::parse_publish;
use engine::served::{DocKind, ServedDoc};
use engine::shard::{ReadError, ShardId, ShardStore, WriteOp};
use flume::{Receiver, Sender, TryRecvError};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BASE_URL: &str = "http://x";
const RECORD_BYTES_MIN: usize = 10 * 1024;

type Reply = Result<Option<ServedDoc>, ReadError>;

const KIND: DocKind = DocKind::AbbreviatedGzip;

/// Publishes call-bound until its full document reaches `RECORD_BYTES_MIN`; returns its name.
fn fill(store: &ShardStore, blobs: &BlobStore) -> String {
    let tarball = benches::load_tarball("call-bound", "1.0.4");
    let mut count = 1;
    let (versions, record_len) = loop {
        let versions = benches::versions(count);
        let stored = benches::stored_package(&tarball, &versions);
        let len = stored.render(BASE_URL).full.len();
        if len >= RECORD_BYTES_MIN {
            break (versions, len);
        }
        count += 1;
    };
    let name = PackageName::parse(&tarball.name).expect("valid name");
    let ops = versions
        .iter()
        .map(|version| {
            let mut body = benches::publish_body(&benches::as_version(&tarball, version));
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
        "read_path: {} with {} versions, full document {record_len} B",
        tarball.name,
        versions.len()
    );
    tarball.name
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
            if reply_tx.send(store.read_doc(&name, KIND)).is_err() {
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
    assert!(store.read_doc(&name, KIND).expect("read").is_some());

    let mut group = c.benchmark_group("read_path");
    group.bench_function("mvcc_local_read", |b| {
        b.iter(|| store.read_doc(black_box(&name), KIND).expect("read"));
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
