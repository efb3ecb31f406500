//! Shard store integration tests: publishes, dist-tags and group commits through
//! `ShardStore::apply_batch`, checked through the read API and again after reopening; plus a
//! model test that runs random op sequences against the store and a `BTreeMap` reference.

#![expect(clippy::unwrap_used, reason = "test fixtures fail loudly by design")]

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use engine::blob::{BlobError, BlobId, BlobStore};
use engine::fixture;
use engine::integrity;
use engine::limits::INLINE_BLOB_BYTES_MAX;
use engine::names::{DistTag, PackageName, Version};
use engine::publish::{PublishError, PublishRequest};
use engine::served::{DocKind, ServedTarball};
use engine::shard::{
    ReadError, ShardId, ShardReader, ShardStore, WriteError, WriteOp, WriteOutcome,
};
use engine::update::UpdateRequest;
use proptest::prelude::*;
use serde_json::{json, Value};

const BASE: &str = "http://127.0.0.1:4873";
const INLINE_ROWS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("inline_rows");
const BLOB_INLINE: redb::TableDefinition<&[u8; 32], &[u8]> =
    redb::TableDefinition::new("blob_inline");
const DOC_SEGMENTS: [redb::TableDefinition<(&str, u32), &[u8]>; 2] = [
    redb::TableDefinition::new("doc_full_gz_segments"),
    redb::TableDefinition::new("doc_abbr_gz_segments"),
];

fn request(name: &str, version: &str, tarball: &[u8]) -> PublishRequest {
    let Value::Object(manifest) = json!({"name": name, "version": version}) else {
        unreachable!()
    };
    fixture::one_version(name, version, manifest, tarball.to_vec())
}

fn publish(name: &str, version: &str, tarball: &[u8]) -> WriteOp {
    WriteOp::Publish {
        request: request(name, version, tarball),
        user: "ada".into(),
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    store: ShardStore,
    blobs: BlobStore,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(&dir.path().join("s.redb"), ShardId(0), BASE).unwrap();
        let blobs = BlobStore::open(&dir.path().join("blobs")).unwrap();
        Fixture { dir, store, blobs }
    }

    fn apply(&self, ops: Vec<WriteOp>) -> Vec<Result<WriteOutcome, WriteError>> {
        self.store.apply_batch(ops, &self.blobs, SystemTime::now())
    }

    fn reopen(self, base: &str) -> Fixture {
        let Fixture { dir, store, blobs } = self;
        drop(store);
        let store = ShardStore::open(&dir.path().join("s.redb"), ShardId(0), base).unwrap();
        Fixture { dir, store, blobs }
    }

    /// A served tarball's bytes: inline in the shard, else the blob file.
    fn tarball(&self, tarball: &ServedTarball) -> Vec<u8> {
        match self.store.read_inline(&tarball.blob, tarball.row).unwrap() {
            Some(bytes) => bytes,
            None => self.blobs.read(&tarball.blob).unwrap(),
        }
    }

    /// The tarball of `name@version`, as its package's served index names it.
    fn tarball_of(&self, name: &str, version: &str) -> Vec<u8> {
        let index = self.store.read_index(name).unwrap().unwrap();
        let file = PackageName::parse(name)
            .unwrap()
            .tarball_file(&Version::parse(version).unwrap());
        self.tarball(index.tarball(&file).unwrap())
    }

    /// Unpublishes one version of `name` the way `npm unpublish name@version` does (a PUT of
    /// the document without it).
    fn unpublish_version(&self, name: &str, version: &str) {
        let stored = self.store.read_stored(name).unwrap().unwrap();
        let mut versions = stored.versions().unwrap().clone();
        versions.remove(version);
        let results = self.apply(vec![WriteOp::Update {
            request: UpdateRequest {
                name: PackageName::parse(name).unwrap(),
                rev: None,
                versions: Some(versions),
                dist_tags: None,
                maintainers: None,
            },
            user: "ada".into(),
        }]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }

    /// The inline row `name@version`'s record names.
    fn row_of(&self, name: &str, version: &str) -> Option<u64> {
        let stored = self.store.read_stored(name).unwrap().unwrap();
        stored.tarballs[version].row
    }

    fn full(&self, name: &str) -> Value {
        let doc = self.store.read_doc(name, DocKind::Full).unwrap().unwrap();
        serde_json::from_slice(&doc.body).unwrap()
    }
}

#[test]
fn publish_read_reopen() {
    let f = Fixture::new();
    let results = f.apply(vec![
        publish("a", "1.0.0", b"one"),
        publish("@s/b", "2.0.0", b"two"),
    ]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let full = f.full("a");
    assert_eq!(full["dist-tags"]["latest"], "1.0.0");
    assert_eq!(
        full["versions"]["1.0.0"]["dist"]["tarball"],
        format!("{BASE}/a/-/a-1.0.0.tgz")
    );
    assert_eq!(
        full["versions"]["1.0.0"]["dist"]["integrity"],
        integrity::compute(b"one").integrity
    );
    let scoped = f.store.read_index("@s/b").unwrap().unwrap();
    let tarball = scoped.tarball("b-2.0.0.tgz").unwrap();
    assert_eq!(f.tarball(tarball), b"two");
    let f = f.reopen(BASE);
    assert_eq!(f.full("a")["versions"]["1.0.0"]["version"], "1.0.0");
    assert_eq!(
        f.store.read_names().unwrap(),
        vec!["@s/b".to_owned(), "a".to_owned()]
    );
}

/// Publishes into a package extend its stored gzip documents instead of encoding them
/// again: after each publish the gzip forms serve what a fresh encoding serves but are not
/// its bytes (an extended member keeps a sync point at every earlier cut, a fresh one has
/// one). Were the extension refused (say, the last manifest left a placeholder), the
/// writer would silently encode from scratch and this would fail.
#[test]
fn publishes_extend_the_stored_documents() {
    let f = Fixture::new();
    for minor in 0..6 {
        let version = format!("1.{minor}.0");
        let results = f.apply(vec![publish("grows", &version, version.as_bytes())]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let stored = f.store.read_stored("grows").unwrap().unwrap();
        assert_served_like_fresh(&f, "grows", &stored);
        let fresh = engine::served::encode_served(&stored, BASE);
        for kind in DocKind::STORED {
            let doc = f.store.read_doc("grows", kind).unwrap().unwrap();
            let fresh_doc =
                engine::served::decode_doc(fresh.docs[kind.stored_index()].value.clone().into())
                    .unwrap();
            assert_eq!(
                doc.body == fresh_doc.body,
                minor == 0,
                "{version} {}: extended only after the first publish",
                kind.label()
            );
        }
    }
}

/// Segments of each document of `name`, counted with the store closed.
fn segments_of(fx: Fixture, name: &str) -> (Fixture, [usize; 2]) {
    let Fixture { dir, store, blobs } = fx;
    drop(store);
    let path = dir.path().join("s.redb");
    let mut counts = [0; 2];
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        for (count, table) in counts.iter_mut().zip(DOC_SEGMENTS) {
            *count = match txn.open_table(table) {
                Ok(table) => redb::ReadableTable::range(&table, (name, 0u32)..=(name, u32::MAX))
                    .unwrap()
                    .count(),
                Err(redb::TableError::TableDoesNotExist(_)) => 0,
                Err(e) => panic!("{e}"),
            };
        }
    }
    let store = ShardStore::open(&path, ShardId(0), BASE).unwrap();
    (Fixture { dir, store, blobs }, counts)
}

/// Goal: a document grown by appends keeps its start in segments, written once each, and
/// every read (gzip and identity, through a kept reader too, after a reopen) serves what a
/// fresh encoding serves; a re-render (an unpublish) and a tombstone drop the segments.
/// Method: 80 versions published one batch at a time, the segment tables counted with the
/// store closed.
#[test]
fn appended_documents_keep_their_start_in_segments() {
    let mut fx = Fixture::new();
    let mut reader = ShardReader::new();
    let mut last = [0usize; 2];
    for patch in 0..80 {
        let version = format!("1.0.{patch}");
        let results = fx.apply(vec![publish("seg", &version, version.as_bytes())]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let stored = fx.store.read_stored("seg").unwrap().unwrap();
        assert_served_like_fresh(&fx, "seg", &stored);
        let kept = reader
            .read_doc(
                &fx.store,
                fx.store.generation(),
                "seg",
                DocKind::Abbreviated,
            )
            .unwrap()
            .unwrap();
        let direct = fx
            .store
            .read_doc("seg", DocKind::Abbreviated)
            .unwrap()
            .unwrap();
        assert_eq!(kept.body, direct.body);
        if patch % 20 == 19 {
            let counts;
            (fx, counts) = segments_of(fx, "seg");
            assert!(counts[0] >= last[0] && counts[1] >= last[1], "{counts:?}");
            last = counts;
        }
    }
    assert!(
        last[0] >= 2 && last[1] >= 1,
        "appends closed segments: {last:?}"
    );
    let stored = fx.store.read_stored("seg").unwrap().unwrap();
    assert_served_like_fresh(&fx, "seg", &stored);
    assert_eq!(fx.full("seg")["versions"].as_object().unwrap().len(), 80);
    // A re-render starts the documents over, without segments.
    fx.unpublish_version("seg", "1.0.3");
    let stored = fx.store.read_stored("seg").unwrap().unwrap();
    assert_served_like_fresh(&fx, "seg", &stored);
    let (fx, counts) = segments_of(fx, "seg");
    assert_eq!(counts, [0, 0]);
    // Appends after it close segments again; a tombstone drops them.
    for patch in 80..110 {
        let version = format!("1.0.{patch}");
        let results = fx.apply(vec![publish("seg", &version, version.as_bytes())]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
    let stored = fx.store.read_stored("seg").unwrap().unwrap();
    assert_served_like_fresh(&fx, "seg", &stored);
    let (fx, counts) = segments_of(fx, "seg");
    assert!(counts[0] >= 1, "{counts:?}");
    let results = fx.apply(vec![WriteOp::UnpublishAll {
        name: PackageName::parse("seg").unwrap(),
        rev: None,
        user: "ada".into(),
    }]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(fx
        .store
        .read_doc("seg", DocKind::FullGzip)
        .unwrap()
        .is_none());
    let (_, counts) = segments_of(fx, "seg");
    assert_eq!(counts, [0, 0]);
}

#[test]
fn same_version_in_one_batch_first_wins_and_retries_are_idempotent() {
    let f = Fixture::new();
    let results = f.apply(vec![
        publish("a", "1.0.0", b"first"),
        publish("a", "1.0.0", b"second"),
    ]);
    assert!(matches!(
        results[0],
        Ok(WriteOutcome::Published { changed: true, .. })
    ));
    assert!(matches!(
        results[1],
        Err(WriteError::Refused(PublishError::VersionExists { .. }))
    ));
    let retry = f.apply(vec![publish("a", "1.0.0", b"first")]);
    assert!(matches!(
        retry[0],
        Ok(WriteOutcome::Published { changed: false, .. })
    ));
    let served = f.store.read_index("a").unwrap().unwrap();
    assert_eq!(f.tarball(served.tarball("a-1.0.0.tgz").unwrap()), b"first");
    // The refused op's tarball is stored nowhere.
    assert_eq!(f.store.inline_blob_stats().unwrap(), (1, 5));
}

#[test]
fn refused_ops_leave_no_trace() {
    let f = Fixture::new();
    f.apply(vec![publish("a", "1.0.0", b"x")]);
    let before = f.store.read_doc("a", DocKind::Full).unwrap().unwrap();
    let other = WriteOp::Publish {
        request: request("a", "1.1.0", b"y"),
        user: "eve".into(),
    };
    let results = f.apply(vec![other]);
    assert!(matches!(
        results[0],
        Err(WriteError::Refused(PublishError::NotMaintainer { .. }))
    ));
    let after = f.store.read_doc("a", DocKind::Full).unwrap().unwrap();
    assert_eq!(before.body, after.body);
    assert_eq!(before.rev, after.rev);
    assert!(!f.blobs.has(&BlobId::of(b"y")));
    assert_eq!(f.store.inline_blob_stats().unwrap(), (1, 1));
}

#[test]
fn dist_tags_and_base_url_change() {
    let f = Fixture::new();
    f.apply(vec![
        publish("a", "1.0.0", b"x"),
        publish("a", "1.1.0", b"y"),
    ]);
    let name = PackageName::parse("a").unwrap();
    let beta = DistTag::parse("beta").unwrap();
    let set = WriteOp::DistTagSet {
        name: name.clone(),
        tag: beta.clone(),
        version: Version::parse("1.0.0").unwrap(),
        user: "ada".into(),
    };
    let results = f.apply(vec![set]);
    let Ok(WriteOutcome::DistTags(tags)) = &results[0] else {
        panic!("{results:?}")
    };
    assert_eq!(tags.get("beta").map(String::as_str), Some("1.0.0"));
    assert_eq!(tags.get("latest").map(String::as_str), Some("1.0.0"));
    let remove_latest = WriteOp::DistTagRemove {
        name: name.clone(),
        tag: DistTag::parse("latest").unwrap(),
        user: "ada".into(),
    };
    assert!(f.apply(vec![remove_latest])[0].is_err());
    let remove = WriteOp::DistTagRemove {
        name,
        tag: beta,
        user: "ada".into(),
    };
    assert!(f.apply(vec![remove])[0].is_ok());
    let f = f.reopen("http://localhost:9999");
    let full = f.full("a");
    assert!(full["dist-tags"].get("beta").is_none());
    assert_eq!(
        full["versions"]["1.1.0"]["dist"]["tarball"],
        "http://localhost:9999/a/-/a-1.1.0.tgz"
    );
}

/// A shard written by a build with another served layout (here: the format byte in `meta`
/// missing, an old-style value in `served`, no gzip document tables, and the identity
/// document tables of served format 5) is re-rendered when opened, and the identity tables
/// are dropped.
#[test]
fn older_served_format_is_rerendered_on_open() {
    let f = Fixture::new();
    f.apply(vec![
        publish("a", "1.0.0", b"x"),
        publish("b", "1.0.0", b"y"),
    ]);
    let want_full = f.full("a");
    let want_index = f.store.read_index("b").unwrap().unwrap();
    let Fixture { dir, store, blobs } = f;
    drop(store);
    {
        let db = redb::Database::open(dir.path().join("s.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                .unwrap();
            meta.remove("served_format").unwrap();
            let mut served = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("served"))
                .unwrap();
            served.insert("a", &b"\x01old layout"[..]).unwrap();
            served.insert("gone", &b"\x01old layout"[..]).unwrap();
        }
        for table in ["doc_full_gz", "doc_abbr_gz"] {
            txn.delete_table(redb::TableDefinition::<&str, &[u8]>::new(table))
                .unwrap();
        }
        for table in ["doc_full", "doc_abbr"] {
            txn.open_table(redb::TableDefinition::<&str, &[u8]>::new(table))
                .unwrap()
                .insert("a", &b"\x05old identity document"[..])
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let store = ShardStore::open(&dir.path().join("s.redb"), ShardId(0), BASE).unwrap();
    drop(store);
    {
        use redb::{ReadableDatabase, TableHandle};
        let db = redb::Database::open(dir.path().join("s.redb")).unwrap();
        let txn = db.begin_read().unwrap();
        let tables: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_owned())
            .collect();
        assert!(
            !tables.iter().any(|t| t == "doc_full" || t == "doc_abbr"),
            "{tables:?}"
        );
        assert!(tables.iter().any(|t| t == "doc_full_gz"), "{tables:?}");
    }
    let store = ShardStore::open(&dir.path().join("s.redb"), ShardId(0), BASE).unwrap();
    let f = Fixture { dir, store, blobs };
    assert_eq!(f.full("a"), want_full);
    for name in ["a", "b"] {
        for kind in DocKind::ALL {
            assert!(
                f.store.read_doc(name, kind).unwrap().is_some(),
                "{name} {kind:?}"
            );
        }
    }
    let index = f.store.read_index("b").unwrap().unwrap();
    assert_eq!(index.tarballs, want_index.tarballs);
    assert!(f.store.read_index("gone").unwrap().is_none());
}

/// Served format 8 keeps each manifest in a row of `manifests` and `0` in its place in the
/// record; records of earlier builds keep every manifest inline. Method: publish, check the
/// record and the rows; then rewrite the record with its manifests inline and the rows
/// gone (as an earlier build wrote it), reopen, and check that reads, a further publish (an
/// append onto inline manifests), a dist-tag change (a full rewrite) and the documents all
/// give what a fresh encoding gives.
#[test]
fn manifests_live_in_rows_and_inline_records_still_read() {
    use redb::{ReadableDatabase, ReadableTableMetadata};
    let packages = redb::TableDefinition::<&str, &[u8]>::new("packages");
    let manifests = redb::TableDefinition::<&str, &[u8]>::new("manifests");
    let f = Fixture::new();
    let results = f.apply(vec![
        publish("a", "1.0.0", b"one"),
        publish("a", "1.1.0", b"two"),
    ]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let stored = f.store.read_stored("a").unwrap().unwrap();
    assert_eq!(stored.versions().unwrap()["1.1.0"]["version"], "1.1.0");
    let Fixture { dir, store, blobs } = f;
    drop(store);
    {
        let db = redb::Database::open(dir.path().join("s.redb")).unwrap();
        let txn = db.begin_read().unwrap();
        let record = txn.open_table(packages).unwrap();
        let raw: Value = serde_json::from_slice(record.get("a").unwrap().unwrap().value()).unwrap();
        assert_eq!(raw["doc"]["versions"]["1.0.0"], 0, "{raw}");
        let rows = txn.open_table(manifests).unwrap();
        assert_eq!(rows.len().unwrap(), 2);
        drop((record, rows, txn));
        // As an earlier build wrote it: manifests inline, no rows.
        let txn = db.begin_write().unwrap();
        txn.open_table(packages)
            .unwrap()
            .insert("a", stored.encode().as_slice())
            .unwrap();
        txn.delete_table(manifests).unwrap();
        txn.commit().unwrap();
    }
    let store = ShardStore::open(&dir.path().join("s.redb"), ShardId(0), BASE).unwrap();
    let f = Fixture { dir, store, blobs };
    assert_eq!(f.store.read_stored("a").unwrap().unwrap(), stored);
    let results = f.apply(vec![publish("a", "1.2.0", b"three")]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let grown = f.store.read_stored("a").unwrap().unwrap();
    assert_eq!(grown.versions().unwrap().len(), 3);
    assert_eq!(
        grown.versions().unwrap()["1.0.0"],
        stored.versions().unwrap()["1.0.0"]
    );
    assert_served_like_fresh(&f, "a", &grown);
    let tag = DistTag::parse("next").unwrap();
    let results = f.apply(vec![WriteOp::DistTagSet {
        name: PackageName::parse("a").unwrap(),
        tag,
        version: Version::parse("1.0.0").unwrap(),
        user: "ada".into(),
    }]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let tagged = f.store.read_stored("a").unwrap().unwrap();
    assert_eq!(tagged.dist_tags()["next"], "1.0.0");
    assert_eq!(tagged.versions(), grown.versions());
    assert_served_like_fresh(&f, "a", &tagged);
    let f = f.reopen(BASE);
    assert_eq!(f.store.read_stored("a").unwrap().unwrap(), tagged);
}

#[derive(Clone, Debug)]
enum ModelOp {
    Publish {
        package: usize,
        minor: u8,
        content: u8,
    },
    Tag {
        package: usize,
        tag: usize,
        minor: u8,
    },
    Untag {
        package: usize,
        tag: usize,
    },
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        (0..3usize, 0..4u8, 0..2u8).prop_map(|(package, minor, content)| ModelOp::Publish {
            package,
            minor,
            content
        }),
        (0..3usize, 0..2usize, 0..4u8).prop_map(|(package, tag, minor)| ModelOp::Tag {
            package,
            tag,
            minor
        }),
        (0..3usize, 0..2usize).prop_map(|(package, tag)| ModelOp::Untag { package, tag }),
    ]
}

const PACKAGES: [&str; 3] = ["alpha", "@s/beta", "gamma"];
const TAGS: [&str; 2] = ["next", "beta"];

#[derive(Default, Clone, Debug, PartialEq)]
struct ModelPackage {
    versions: BTreeMap<String, Vec<u8>>,
    tags: BTreeMap<String, String>,
}

fn to_write_op(op: &ModelOp) -> WriteOp {
    match *op {
        ModelOp::Publish {
            package,
            minor,
            content,
        } => publish(
            PACKAGES[package],
            &format!("1.{minor}.0"),
            &[minor, content],
        ),
        ModelOp::Tag {
            package,
            tag,
            minor,
        } => WriteOp::DistTagSet {
            name: PackageName::parse(PACKAGES[package]).unwrap(),
            tag: DistTag::parse(TAGS[tag]).unwrap(),
            version: Version::parse(&format!("1.{minor}.0")).unwrap(),
            user: "ada".into(),
        },
        ModelOp::Untag { package, tag } => WriteOp::DistTagRemove {
            name: PackageName::parse(PACKAGES[package]).unwrap(),
            tag: DistTag::parse(TAGS[tag]).unwrap(),
            user: "ada".into(),
        },
    }
}

/// Applies `op` to the reference; returns whether it should succeed.
fn apply_model(model: &mut BTreeMap<String, ModelPackage>, op: &ModelOp) -> bool {
    match *op {
        ModelOp::Publish {
            package,
            minor,
            content,
        } => {
            let p = model.entry(PACKAGES[package].to_owned()).or_default();
            let version = format!("1.{minor}.0");
            match p.versions.get(&version) {
                Some(bytes) => *bytes == [minor, content],
                None => {
                    p.versions.insert(version.clone(), vec![minor, content]);
                    p.tags.entry("latest".into()).or_insert(version);
                    true
                }
            }
        }
        ModelOp::Tag {
            package,
            tag,
            minor,
        } => {
            let version = format!("1.{minor}.0");
            match model.get_mut(PACKAGES[package]) {
                Some(p) if p.versions.contains_key(&version) => {
                    p.tags.insert(TAGS[tag].to_owned(), version);
                    true
                }
                _ => false,
            }
        }
        ModelOp::Untag { package, tag } => match model.get_mut(PACKAGES[package]) {
            Some(p) => p.tags.remove(TAGS[tag]).is_some(),
            None => false,
        },
    }
}

/// The served documents of `name` say what a fresh encoding of `stored` says, whether they
/// were encoded from scratch or extended by publishes: the same identity bytes and
/// validators, gzip forms that inflate to the identity bytes with sound cuts.
fn assert_served_like_fresh(f: &Fixture, name: &str, stored: &engine::packument::StoredPackage) {
    if stored.versions().is_none_or(serde_json::Map::is_empty) {
        return;
    }
    let fresh = engine::served::encode_served(stored, BASE);
    for kind in [DocKind::Full, DocKind::Abbreviated] {
        let identity = f.store.read_doc(name, kind).unwrap().unwrap();
        let fresh_gzip =
            engine::served::decode_doc(fresh.docs[kind.stored_index()].value.clone().into())
                .unwrap();
        let fresh_identity = engine::served::identity_doc(&fresh_gzip).unwrap();
        assert_eq!(
            identity.body,
            fresh_identity.body,
            "{name} {}",
            kind.label()
        );
        assert_eq!(identity.etag, fresh_identity.etag);
        assert_eq!(identity.cut, fresh_identity.cut);
        let gzip_kind = DocKind::ALL[kind.index() + 1];
        let stored_gzip = f.store.read_doc(name, gzip_kind).unwrap().unwrap();
        assert!(
            engine::served::gzip_doc_agrees(&stored_gzip, &fresh_gzip, &identity.body),
            "{name} {}",
            gzip_kind.label()
        );
    }
}

fn observe(f: &Fixture) -> BTreeMap<String, ModelPackage> {
    let mut out = BTreeMap::new();
    for name in f.store.read_names().unwrap() {
        let served = f.store.read_index(&name).unwrap().unwrap();
        let stored = f.store.read_stored(&name).unwrap().unwrap();
        assert_served_like_fresh(f, &name, &stored);
        let mut versions = BTreeMap::new();
        let keys: BTreeSet<String> = stored.versions().unwrap().keys().cloned().collect();
        for version in keys {
            let file = PackageName::parse(&name)
                .unwrap()
                .tarball_file(&Version::parse(&version).unwrap());
            versions.insert(version, f.tarball(served.tarball(&file).unwrap()));
        }
        out.insert(
            name,
            ModelPackage {
                versions,
                tags: stored.dist_tags(),
            },
        );
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Goal: the store behaves like the reference map for any op sequence, whatever the batch
    /// boundaries, and reopening preserves exactly the committed state.
    #[test]
    fn matches_reference_model(
        batches in proptest::collection::vec(proptest::collection::vec(model_op(), 1..5), 1..6)
    ) {
        let mut f = Fixture::new();
        let mut model = BTreeMap::new();
        for batch in &batches {
            let expected: Vec<bool> = batch.iter().map(|op| apply_model(&mut model, op)).collect();
            let results = f.apply(batch.iter().map(to_write_op).collect());
            let got: Vec<bool> = results.iter().map(Result::is_ok).collect();
            prop_assert_eq!(&got, &expected, "batch {:?} -> {:?}", batch, results);
            prop_assert_eq!(&observe(&f), &model);
        }
        f = f.reopen(BASE);
        prop_assert_eq!(&observe(&f), &model);
    }
}

/// A tarball one byte too big to be stored inline: a blob file.
fn file_sized(seed: &str) -> Vec<u8> {
    let mut bytes = seed
        .as_bytes()
        .repeat(INLINE_BLOB_BYTES_MAX / seed.len() + 1);
    bytes.truncate(INLINE_BLOB_BYTES_MAX + 1);
    bytes
}

/// The prepare pool's path: `check_publish` refuses what the writer would refuse, and names
/// the blob files to store; a `PublishPrepared` whose blob vanished in between (online fsck
/// removes old unreferenced blobs) has it written again by the writer, never committed without
/// it.
#[test]
fn prepared_publishes_are_checked_and_never_commit_without_their_blob() {
    let fx = Fixture::new();
    let bytes = file_sized("first tarball");
    let first = request("prep", "1.0.0", &bytes);
    let (ids, needed) = fx.store.check_publish(&first, "ada", &fx.blobs).unwrap();
    assert_eq!(ids, vec![BlobId::of(&bytes)]);
    assert_eq!(needed, bytes.len() as u64);
    let items: Vec<(BlobId, &[u8])> = vec![(ids[0], bytes.as_slice())];
    assert!(fx.blobs.write_all(&items).iter().all(Result::is_ok));
    // The blob is deleted before the writer gets the op.
    std::fs::remove_file(fx.blobs.path_of(&ids[0])).unwrap();
    let results = fx.apply(vec![WriteOp::PublishPrepared {
        request: first,
        user: "ada".into(),
    }]);
    assert!(matches!(
        results[0],
        Ok(WriteOutcome::Published { changed: true, .. })
    ));
    assert_eq!(fx.blobs.read(&ids[0]).unwrap(), bytes);
    assert_eq!(fx.store.inline_blob_stats().unwrap(), (0, 0));

    // Other bytes for the same version, and another user: refused before anything is written.
    let conflict = request("prep", "1.0.0", b"other bytes");
    assert!(matches!(
        fx.store.check_publish(&conflict, "ada", &fx.blobs),
        Err(WriteError::Refused(PublishError::VersionExists { .. }))
    ));
    let stranger = request("prep", "2.0.0", b"stranger bytes");
    assert!(matches!(
        fx.store.check_publish(&stranger, "eve", &fx.blobs),
        Err(WriteError::Refused(PublishError::NotMaintainer { .. }))
    ));
    // An identical retry needs no blob.
    let retry = request("prep", "1.0.0", &bytes);
    let (ids, needed) = fx.store.check_publish(&retry, "ada", &fx.blobs).unwrap();
    assert!(ids.is_empty() && needed == 0);
}

/// Goal: the inline rule. A tarball of at most `INLINE_BLOB_BYTES_MAX` bytes is stored in the
/// shard by the writer's commit (the prepare pool names no file for it, but counts its space),
/// never as a file; one byte more is a file. Both read back byte for byte, after a reopen too,
/// and the metrics counters follow.
#[test]
fn small_tarballs_are_stored_inline_and_big_ones_as_files() {
    let fx = Fixture::new();
    let small = b"s".repeat(INLINE_BLOB_BYTES_MAX);
    let big = file_sized("big");
    let (small_id, big_id) = (BlobId::of(&small), BlobId::of(&big));
    let prepared = request("small", "1.0.0", &small);
    let (ids, needed) = fx.store.check_publish(&prepared, "ada", &fx.blobs).unwrap();
    assert!(
        ids.is_empty(),
        "no file for an inline-sized tarball: {ids:?}"
    );
    assert_eq!(needed, 2 * small.len() as u64);
    let results = fx.apply(vec![
        WriteOp::PublishPrepared {
            request: prepared,
            user: "ada".into(),
        },
        publish("big", "1.0.0", &big),
    ]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(!fx.blobs.has(&small_id), "the small tarball became a file");
    assert!(fx.blobs.has(&big_id));
    assert_eq!(
        fx.store.read_inline_of("small", "1.0.0").unwrap().unwrap(),
        small
    );
    assert_eq!(fx.row_of("small", "1.0.0"), Some(1));
    assert_eq!(fx.store.read_inline_of("big", "1.0.0").unwrap(), None);
    assert_eq!(fx.row_of("big", "1.0.0"), None);
    assert_eq!(fx.blobs.read(&big_id).unwrap(), big);
    assert_eq!(
        fx.store.inline_blob_stats().unwrap(),
        (1, small.len() as u64)
    );
    let fx = fx.reopen(BASE);
    assert_eq!(fx.tarball_of("small", "1.0.0"), small);
    assert_eq!(fx.tarball_of("big", "1.0.0"), big);
    assert_eq!(
        fx.store.inline_blob_stats().unwrap(),
        (1, small.len() as u64)
    );
}

/// Goal: an inline-sized tarball that is already a file (an orphan of a publish that lost a
/// race) is stored in a row all the same, without a look at the blob store, and read from
/// the row; rows are numbered in commit order, one per new version.
#[test]
fn an_existing_small_file_does_not_stop_the_row() {
    let fx = Fixture::new();
    let bytes = b"an old small tarball".to_vec();
    let id = BlobId::of(&bytes);
    fx.blobs.write(&id, &bytes).unwrap();
    let results = fx.apply(vec![
        publish("old", "1.0.0", &bytes),
        publish("old", "1.0.1", b"next"),
    ]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(fx.row_of("old", "1.0.0"), Some(1));
    assert_eq!(fx.row_of("old", "1.0.1"), Some(2));
    assert_eq!(
        fx.store.inline_blob_stats().unwrap(),
        (2, bytes.len() as u64 + 4)
    );
    // The file is removed: the row still serves it.
    std::fs::remove_file(fx.blobs.path_of(&id)).unwrap();
    assert_eq!(fx.tarball_of("old", "1.0.0"), bytes);
    let results = fx.apply(vec![publish("new", "1.0.0", b"third")]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(fx.row_of("new", "1.0.0"), Some(3));
}

/// Goal: unpublishing removes the versions' inline tarballs in the same commit, and keeps
/// those of the versions that remain; the byte counter follows.
#[test]
fn unpublish_removes_inline_tarballs() {
    let fx = Fixture::new();
    let (one, two) = (b"one".to_vec(), b"two!".to_vec());
    let results = fx.apply(vec![
        publish("u", "1.0.0", &one),
        publish("u", "2.0.0", &two),
    ]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(fx.store.inline_blob_stats().unwrap(), (2, 7));
    let row_one = fx.row_of("u", "1.0.0");
    assert!(row_one.is_some());
    fx.unpublish_version("u", "1.0.0");
    assert_eq!(
        fx.store.read_inline(&BlobId::of(&one), row_one).unwrap(),
        None
    );
    assert_eq!(fx.tarball_of("u", "2.0.0"), two);
    assert_eq!(fx.store.inline_blob_stats().unwrap(), (1, 4));
    let results = fx.apply(vec![WriteOp::UnpublishAll {
        name: PackageName::parse("u").unwrap(),
        rev: None,
        user: "ada".into(),
    }]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(fx.store.inline_blob_stats().unwrap(), (0, 0));
    // Published and unpublished in one batch: nothing is left inline.
    let results = fx.apply(vec![
        publish("v", "1.0.0", b"brief"),
        WriteOp::UnpublishAll {
            name: PackageName::parse("v").unwrap(),
            rev: None,
            user: "ada".into(),
        },
    ]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(fx.store.inline_blob_stats().unwrap(), (0, 0));
}

/// Goal: a shard as a build of data format 2 left it (inline tarballs in `blob_inline` by
/// id, records without rows) is served as before: its tarballs are read by id, an unpublish
/// removes them, and new versions go to rows numbered past every row ever used. Method:
/// versions published through the write path, then the shard rewritten in the old layout with
/// the store closed (records without rows, manifests inline, served values of an older
/// format, so the open renders them again).
#[test]
fn a_data_format_2_shard_keeps_serving_its_inline_tarballs() {
    let fx = Fixture::new();
    let (one, two) = (b"legacy one".to_vec(), b"legacy two!".to_vec());
    let results = fx.apply(vec![
        publish("old", "1.0.0", &one),
        publish("old", "2.0.0", &two),
    ]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut stored = fx.store.read_stored("old").unwrap().unwrap();
    for tarball in stored.tarballs.values_mut() {
        tarball.row = None;
    }
    let Fixture { dir, store, blobs } = fx;
    drop(store);
    let path = dir.path().join("s.redb");
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let packages: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("packages");
        let manifests: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("manifests");
        let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
        txn.open_table(packages)
            .unwrap()
            .insert("old", stored.encode().as_slice())
            .unwrap();
        txn.delete_table(manifests).unwrap();
        txn.delete_table(INLINE_ROWS).unwrap();
        let mut legacy = txn.open_table(BLOB_INLINE).unwrap();
        for bytes in [&one, &two] {
            legacy
                .insert(&BlobId::of(bytes).0, bytes.as_slice())
                .unwrap();
        }
        drop(legacy);
        txn.open_table(meta)
            .unwrap()
            .insert("served_format", &[7u8][..])
            .unwrap();
        txn.commit().unwrap();
    }
    let store = ShardStore::open(&path, ShardId(0), BASE).unwrap();
    let fx = Fixture { dir, store, blobs };
    assert_eq!(fx.row_of("old", "1.0.0"), None);
    assert_eq!(fx.tarball_of("old", "1.0.0"), one);
    assert_eq!(fx.tarball_of("old", "2.0.0"), two);
    assert_eq!(fx.store.inline_blob_stats().unwrap(), (2, 21));
    // A new version gets a row past the two the table held before it was emptied.
    let results = fx.apply(vec![publish("old", "3.0.0", b"new three")]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(fx.row_of("old", "3.0.0"), Some(3));
    assert_eq!(fx.tarball_of("old", "3.0.0"), b"new three");
    assert_eq!(fx.store.inline_blob_stats().unwrap(), (3, 30));
    fx.unpublish_version("old", "1.0.0");
    assert_eq!(fx.store.read_inline(&BlobId::of(&one), None).unwrap(), None);
    assert_eq!(fx.tarball_of("old", "2.0.0"), two);
    assert_eq!(fx.store.inline_blob_stats().unwrap(), (2, 20));
    let fx = fx.reopen(BASE);
    assert_eq!(fx.tarball_of("old", "2.0.0"), two);
    assert_eq!(fx.tarball_of("old", "3.0.0"), b"new three");
}

/// Goal: an inline blob whose stored bytes no longer hash to its id is a `Corrupt` error on
/// read, never its bytes.
#[test]
fn a_corrupt_inline_blob_is_an_error_not_bytes() {
    let fx = Fixture::new();
    let bytes = b"the real tarball".to_vec();
    assert!(fx.apply(vec![publish("c", "1.0.0", &bytes)])[0].is_ok());
    let row = fx.row_of("c", "1.0.0").unwrap();
    let Fixture { dir, store, blobs } = fx;
    drop(store);
    let path = dir.path().join("s.redb");
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(INLINE_ROWS)
            .unwrap()
            .insert(row, &b"the rotten tarball"[..])
            .unwrap();
        txn.commit().unwrap();
    }
    let store = ShardStore::open(&path, ShardId(0), BASE).unwrap();
    let read = store.read_inline_of("c", "1.0.0");
    assert!(
        matches!(read, Err(ReadError::Blob(BlobError::Corrupt { .. }))),
        "{read:?}"
    );
    drop((store, blobs, dir));
}

/// The commit generation the cores' caches rely on: even whenever no commit runs, and a
/// revision never changes between two reads of the same even generation. Checked against a
/// writer committing as fast as it can (the old rule, one bump after the commit, let a reader
/// see the new revision under the old number).
#[test]
fn a_revision_never_changes_under_an_unchanged_even_generation() {
    let f = Fixture::new();
    assert!(f.store.generation().is_multiple_of(2));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut checked = 0u64;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 0..300 {
                let results = f.apply(vec![publish("g", &format!("1.0.{i}"), b"tarball")]);
                assert!(results.iter().all(Result::is_ok), "{results:?}");
            }
            stop.store(true, std::sync::atomic::Ordering::Release);
        });
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            let before = f.store.generation();
            let first = f.store.read_rev("g").unwrap();
            let second = f.store.read_rev("g").unwrap();
            let after = f.store.generation();
            if before.is_multiple_of(2) && before == after {
                assert_eq!(first, second, "revision changed under generation {before}");
                checked += 1;
            }
        }
    });
    assert!(checked > 0, "no read ever ran between commits");
    // 300 commits, each +1 before and +1 after.
    assert_eq!(f.store.generation(), 600);
}

/// A `ShardReader` keeps its read transaction while the generation is unchanged and even,
/// and begins a new one as soon as a commit has run: it reads every completed commit.
#[test]
fn a_reused_read_transaction_sees_every_completed_commit() {
    let f = Fixture::new();
    let results = f.apply(vec![publish("g", "1.0.0", b"one")]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut reader = ShardReader::new();
    let generation = f.store.generation();
    let first = reader.read_rev(&f.store, generation, "g").unwrap().unwrap();
    let doc = reader
        .read_doc(&f.store, generation, "g", DocKind::AbbreviatedGzip)
        .unwrap()
        .unwrap();
    assert_eq!(doc.rev, first);
    assert_eq!(reader.read_rev(&f.store, generation, "nope").unwrap(), None);
    assert_eq!(
        (reader.begun, reader.reused),
        (1, 2),
        "one transaction, reused"
    );

    let results = f.apply(vec![publish("g", "1.0.1", b"two")]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let generation = f.store.generation();
    let second = reader.read_rev(&f.store, generation, "g").unwrap().unwrap();
    assert_ne!(second, first, "the commit before this read must be visible");
    assert_eq!(second, f.store.read_rev("g").unwrap().unwrap());
    let doc = reader
        .read_doc(&f.store, generation, "g", DocKind::FullGzip)
        .unwrap()
        .unwrap();
    assert_eq!(doc.rev, second);
    let index = reader
        .read_index(&f.store, generation, "g")
        .unwrap()
        .unwrap();
    assert_eq!(index.rev, second);
    assert_eq!((reader.begun, reader.reused), (2, 4));

    // An odd generation (a commit running) never reuses.
    reader.read_rev(&f.store, generation + 1, "g").unwrap();
    reader.read_rev(&f.store, generation + 1, "g").unwrap();
    assert_eq!(reader.begun, 4);
}

/// The property the server relies on, under a racing writer: a read through a reused
/// transaction never returns a revision older than one whose commit had completed (its
/// `apply_batch` returned, which is when a client gets its 201) before the read started.
#[test]
fn a_reused_read_transaction_never_misses_a_completed_commit() {
    let f = Fixture::new();
    let results = f.apply(vec![publish("g", "1.0.0", b"v")]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let completed = std::sync::atomic::AtomicU64::new(f.store.read_rev("g").unwrap().unwrap());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut reader = ShardReader::new();
    let mut reads = 0u64;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 1..300 {
                let results = f.apply(vec![publish("g", &format!("1.0.{i}"), b"v")]);
                assert!(results.iter().all(Result::is_ok), "{results:?}");
                let rev = f.store.read_rev("g").unwrap().unwrap();
                completed.store(rev, std::sync::atomic::Ordering::Release);
            }
            stop.store(true, std::sync::atomic::Ordering::Release);
        });
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            // A request: what had completed when it started, then the generation, then data.
            let floor = completed.load(std::sync::atomic::Ordering::Acquire);
            let generation = f.store.generation();
            let rev = reader.read_rev(&f.store, generation, "g").unwrap().unwrap();
            assert!(
                rev >= floor,
                "read rev {rev} after rev {floor} had completed"
            );
            let doc = reader
                .read_doc(&f.store, generation, "g", DocKind::AbbreviatedGzip)
                .unwrap()
                .unwrap();
            assert!(doc.rev >= floor, "read doc rev {} after {floor}", doc.rev);
            reads += 1;
        }
    });
    assert!(reads > 0);
    assert!(reader.reused > 0, "the test never reused a transaction");
    assert!(reader.begun > 1, "the test never saw a commit");
}

/// `release_if_stale` drops a kept transaction once the shard has committed, and only then.
#[test]
fn a_kept_read_transaction_is_released_once_stale() {
    let f = Fixture::new();
    let results = f.apply(vec![publish("g", "1.0.0", b"one")]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut reader = ShardReader::new();
    reader
        .read_rev(&f.store, f.store.generation(), "g")
        .unwrap();
    reader.release_if_stale(&f.store);
    assert!(reader.holds_transaction(), "nothing committed: kept");
    let results = f.apply(vec![publish("g", "1.0.1", b"two")]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    reader.release_if_stale(&f.store);
    assert!(!reader.holds_transaction());
}
