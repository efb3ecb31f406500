//! fsck, backup and restore over a real data directory.
//!
//! Goal: every kind of damage fsck knows is detected with the right kind, `repair` fixes only
//! the safe ones (and says so), a second fsck is clean except for what cannot be repaired,
//! nothing referenced is ever deleted, a truncated redb file is reported as corruption, and a
//! backup taken while the stores are open restores into an identical, fsck-clean directory.
//!
//! Method: a two-shard data directory is filled through `ShardStore::apply_batch` (the real
//! write path), then damaged by hand: blob files edited, deleted and truncated; redb tables
//! edited through redb directly (with the stores closed); a temp file and an orphan blob
//! added; one config slot flipped. `tarball` is too big to be stored inline (these tests damage
//! files); `small` tarballs are stored inline in their shard, and damaged there.

#![expect(clippy::unwrap_used, reason = "test fixtures fail loudly by design")]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use engine::auth::{AuthStore, UserRecord};
use engine::backup;
use engine::blob::{BlobId, BlobStore};
use engine::config_record::{ConfigFile, ConfigRecord};
use engine::data_dir::DataDir;
use engine::fixture;
use engine::fsck::{self, FindingKind, FsckError, Report};
use engine::integrity;
use engine::limits::INLINE_BLOB_BYTES_MAX;
use engine::packument::StoredPackage;
use engine::served::DocKind;
use engine::shard::{shard_for, ShardId, ShardStore, WriteOp};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{json, Value};

const BASE: &str = "http://127.0.0.1:4873";
const SHARDS: u16 = 2;
const PACKAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("packages");
const SERVED: TableDefinition<&str, &[u8]> = TableDefinition::new("served");
const MANIFESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("manifests");
const DOC_ABBR_GZ: TableDefinition<&str, &[u8]> = TableDefinition::new("doc_abbr_gz");
const DOC_FULL_GZ: TableDefinition<&str, &[u8]> = TableDefinition::new("doc_full_gz");
const REVS: TableDefinition<&str, u64> = TableDefinition::new("revs");
const BLOB_INLINE: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("blob_inline");
const INLINE_ROWS: TableDefinition<u64, &[u8]> = TableDefinition::new("inline_rows");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const FULL_SEGMENTS: TableDefinition<(&str, u32), &[u8]> =
    TableDefinition::new("doc_full_gz_segments");
const ABBR_SEGMENTS: TableDefinition<(&str, u32), &[u8]> =
    TableDefinition::new("doc_abbr_gz_segments");

/// A tarball too big to be stored inline: a blob file.
fn tarball(name: &str) -> Vec<u8> {
    let unit = format!("tarball of {name} ");
    unit.repeat(INLINE_BLOB_BYTES_MAX / unit.len() + 1)
        .into_bytes()
}

/// A tarball stored inline in its package's shard.
fn small(name: &str) -> Vec<u8> {
    format!("small tarball of {name} ").repeat(100).into_bytes()
}

fn publish(name: &str, version: &str) -> WriteOp {
    publish_bytes(name, version, tarball(name))
}

fn publish_bytes(name: &str, version: &str, bytes: Vec<u8>) -> WriteOp {
    let Value::Object(manifest) = json!({"name": name, "version": version}) else {
        unreachable!()
    };
    WriteOp::Publish {
        request: fixture::one_version(name, version, manifest, bytes),
        user: "ada".into(),
    }
}

/// A data directory with its stores open, as a server holds them.
struct Open {
    data: DataDir,
    shards: Vec<ShardStore>,
    blobs: BlobStore,
    auth: AuthStore,
}

impl Open {
    fn new(home: &Path) -> Open {
        let data = DataDir::open_or_create(home, u32::from(SHARDS)).unwrap();
        let shards = (0..data.shard_count())
            .map(|i| ShardStore::open(&data.shard_path(ShardId(i)), ShardId(i), BASE).unwrap())
            .collect();
        let blobs = BlobStore::open(&data.blobs_path()).unwrap();
        let auth = AuthStore::open(&data.auth_path()).unwrap();
        ConfigFile::open_or_create(&data.config_path(), &ConfigRecord::new(BASE, 0)).unwrap();
        Open {
            data,
            shards,
            blobs,
            auth,
        }
    }

    fn publish(&self, names: &[&str]) {
        for name in names {
            let results =
                self.shard(name)
                    .apply_batch(vec![publish(name, "1.0.0")], &self.blobs, now());
            assert!(results.iter().all(Result::is_ok), "{results:?}");
        }
    }

    /// Publishes `name@1.0.0` with an inline-sized tarball (`small(name)`).
    fn publish_small(&self, names: &[&str]) {
        for name in names {
            let op = publish_bytes(name, "1.0.0", small(name));
            let results = self.shard(name).apply_batch(vec![op], &self.blobs, now());
            assert!(results.iter().all(Result::is_ok), "{results:?}");
        }
    }

    fn shard(&self, name: &str) -> &ShardStore {
        &self.shards[usize::from(shard_for(name, SHARDS).0)]
    }

    /// Blob `id` of package `name`: inline in its shard (in the row its record names, if
    /// any), else the file.
    fn tarball(&self, name: &str, id: &BlobId) -> Vec<u8> {
        let row = self.row_of(name, id);
        match self.shard(name).read_inline(id, row).unwrap() {
            Some(bytes) => bytes,
            None => self.blobs.read(id).unwrap(),
        }
    }

    /// The inline row `name`'s record gives blob `id`.
    fn row_of(&self, name: &str, id: &BlobId) -> Option<u64> {
        let stored = self.shard(name).read_stored(name).unwrap()?;
        let hex = id.to_hex();
        stored.tarballs.values().find(|t| t.blob == hex)?.row
    }

    /// An online backup of every store into `dest`.
    fn backup_to(&self, dest: &Path) -> backup::BackupSummary {
        let shards: Vec<&ShardStore> = self.shards.iter().collect();
        backup::backup(
            &self.data,
            &shards,
            &self.blobs,
            &self.auth,
            dest,
            &mut |_| {},
        )
        .unwrap()
    }

    fn check(&self, repair: bool) -> Report {
        let shards: Vec<&ShardStore> = self.shards.iter().collect();
        fsck::check(&self.data, &shards, &self.blobs, repair, &mut |_| {})
    }

    /// Every package's served record (full document bytes) and tarball bytes.
    fn contents(&self) -> BTreeMap<String, (Vec<u8>, Vec<u8>)> {
        let mut out = BTreeMap::new();
        for shard in &self.shards {
            for name in shard.read_names().unwrap() {
                let index = shard.read_index(&name).unwrap().unwrap();
                let full = shard.read_doc(&name, DocKind::Full).unwrap().unwrap();
                let tarball = self.tarball(&name, &index.tarballs[0].blob);
                out.insert(name, (full.body.to_vec(), tarball));
            }
        }
        out
    }
}

/// Restores `backup` into the empty `target`, asserting that the restored home checks clean.
fn restore_clean(backup: &Path, target: &Path) -> backup::RestoreSummary {
    let restored = backup::restore(backup, target, false, &mut |_| {}).unwrap();
    assert!(
        restored.report.is_clean(),
        "{}",
        restored.report.render_text()
    );
    restored
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn offline(home: &Path, repair: bool) -> Report {
    fsck::check_offline(home, repair, &mut |_| {}).unwrap()
}

fn blob_path(home: &Path, name: &str) -> PathBuf {
    BlobStore::attach(&home.join("blobs")).path_of(&BlobId::of(&tarball(name)))
}

fn shard_file(home: &Path, name: &str) -> PathBuf {
    home.join("shards")
        .join(format!("{:03}.redb", shard_for(name, SHARDS).0))
}

/// Runs `edit` in one write transaction of the shard that holds `name` (stores closed).
fn edit_shard(home: &Path, name: &str, edit: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::open(shard_file(home, name)).unwrap();
    let txn = db.begin_write().unwrap();
    edit(&txn);
    txn.commit().unwrap();
}

fn kinds(report: &Report) -> BTreeMap<FindingKind, u64> {
    report.counts.clone()
}

fn subjects(report: &Report, kind: FindingKind) -> Vec<String> {
    report
        .findings
        .iter()
        .filter(|f| f.kind == kind)
        .map(|f| f.subject.clone())
        .collect()
}

#[test]
fn clean_store_is_clean_online_and_offline_and_offline_is_refused_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let open = Open::new(&home);
    open.publish(&["a", "b", "@s/c", "d"]);
    let online = open.check(false);
    assert!(online.is_clean(), "{}", online.render_text());
    assert!(online.online);
    assert_eq!(online.checked.packages, 4);
    assert_eq!(online.checked.versions, 4);
    assert_eq!(online.checked.blobs, 4);
    let locked = fsck::check_offline(&home, false, &mut |_| {});
    assert!(
        matches!(locked, Err(FsckError::Locked { .. })),
        "{locked:?}"
    );
    drop(open);
    let mut phases = Vec::new();
    let report = fsck::check_offline(&home, false, &mut |p| phases.push(p.phase)).unwrap();
    assert!(report.is_clean(), "{}", report.render_text());
    assert!(!report.online);
    assert!(phases.contains(&fsck::Phase::Blobs), "{phases:?}");
}

/// Served documents extended publish by publish (`served::encode_appended`), several
/// publishes of one package in one group commit among them, check clean online and offline:
/// their gzip forms inflate to a fresh rendering and keep sound cuts. A gzip form whose bytes
/// were changed after its cut is reported.
#[test]
fn documents_extended_by_publishes_check_clean() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let open = Open::new(&home);
    let shard = open.shard("grows");
    for n in 0..30 {
        let version = format!("1.0.{n}");
        let results = shard.apply_batch(
            vec![publish_bytes("grows", &version, small(&version))],
            &open.blobs,
            now(),
        );
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
    let batch = (30..33)
        .map(|n| {
            let version = format!("1.0.{n}");
            publish_bytes("grows", &version, small(&version))
        })
        .collect();
    let results = shard.apply_batch(batch, &open.blobs, now());
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let online = open.check(false);
    assert!(online.is_clean(), "{}", online.render_text());
    let full = shard.read_doc("grows", DocKind::Full).unwrap().unwrap();
    let full: Value = serde_json::from_slice(&full.body).unwrap();
    assert_eq!(full["versions"].as_object().unwrap().len(), 33);
    assert_eq!(full["dist-tags"]["latest"], "1.0.0");
    // The gzip form was extended, not encoded again: a fresh encoding has other bytes.
    let stored = shard.read_stored("grows").unwrap().unwrap();
    let fresh = engine::served::encode_served(&stored, BASE);
    let gzip = shard.read_doc("grows", DocKind::FullGzip).unwrap().unwrap();
    let fresh_gzip = engine::served::decode_doc(
        fresh.docs[DocKind::FullGzip.stored_index()]
            .value
            .clone()
            .into(),
    )
    .unwrap();
    assert_eq!(gzip.etag, fresh_gzip.etag);
    assert_ne!(gzip.body, fresh_gzip.body);
    drop(open);
    let report = offline(&home, false);
    assert!(report.is_clean(), "{}", report.render_text());
    // Flip one byte of the abbreviated gzip form's deflate data after its cut.
    edit_shard(&home, "grows", |txn| {
        let mut table = txn.open_table(DOC_ABBR_GZ).unwrap();
        let mut value = table.get("grows").unwrap().unwrap().value().to_vec();
        let at = value.len() - 12;
        value[at] ^= 0x5a;
        table.insert("grows", value.as_slice()).unwrap();
    });
    let damaged = offline(&home, false);
    assert!(!damaged.is_clean(), "{}", damaged.render_text());
}

/// Goal: documents whose start appends moved into segments check clean, are backed up and
/// restored with their segments, and a missing segment, a stray one and segments of no
/// package are reported and repaired (the package's documents rendered afresh, serving the
/// same bytes). Method: 80 publishes of one package, one batch each, then the segment
/// tables edited with the stores closed.
#[test]
fn document_segments_are_checked_repaired_and_backed_up() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let open = Open::new(&home);
    let shard = open.shard("grows");
    for n in 0..80 {
        let version = format!("1.0.{n}");
        let op = publish_bytes("grows", &version, small(&version));
        let results = shard.apply_batch(vec![op], &open.blobs, now());
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
    open.publish(&["other"]);
    let online = open.check(false);
    assert!(online.is_clean(), "{}", online.render_text());
    let expected = open.contents();
    let summary = open.backup_to(&dir.path().join("backups"));
    drop(open);
    // Repairs everything found, after which the home checks clean.
    let repair_clean = |home: &Path| {
        let repaired = offline(home, true);
        let unrepaired = repaired.unrepaired().count();
        assert_eq!(unrepaired, 0, "{}", repaired.render_text());
        let report = offline(home, false);
        assert!(report.is_clean(), "{}", report.render_text());
    };
    let segments = |home: &Path, table| {
        let db = redb::Database::open(shard_file(home, "grows")).unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(table).unwrap();
        table.iter().unwrap().count()
    };
    assert!(
        segments(&home, FULL_SEGMENTS) >= 2,
        "appends closed segments"
    );
    let target = dir.path().join("restored");
    restore_clean(&summary.path, &target);
    assert_eq!(
        segments(&target, FULL_SEGMENTS),
        segments(&home, FULL_SEGMENTS)
    );
    assert_eq!(Open::new(&target).contents(), expected);
    let report = offline(&home, false);
    assert!(report.is_clean(), "{}", report.render_text());

    // A segment past the ones the value names: reported, and the document is still served.
    edit_shard(&home, "grows", |txn| {
        txn.open_table(FULL_SEGMENTS)
            .unwrap()
            .insert(("grows", 999), &b"stray"[..])
            .unwrap();
    });
    let damaged = offline(&home, false);
    assert_eq!(subjects(&damaged, FindingKind::StaleServed), ["grows"]);
    assert!(
        damaged.findings[0].detail.contains("does not use"),
        "{damaged:?}"
    );
    assert_eq!(Open::new(&home).contents(), expected);

    // A missing segment: the document cannot be assembled.
    edit_shard(&home, "grows", |txn| {
        txn.open_table(FULL_SEGMENTS)
            .unwrap()
            .remove(("grows", 0))
            .unwrap();
    });
    let damaged = offline(&home, false);
    assert_eq!(subjects(&damaged, FindingKind::StaleServed), ["grows"]);
    assert!(
        damaged.findings[0].detail.contains("missing"),
        "{damaged:?}"
    );
    repair_clean(&home);
    assert_eq!(
        segments(&home, FULL_SEGMENTS),
        0,
        "a re-render has no segments"
    );
    assert_eq!(
        segments(&home, ABBR_SEGMENTS),
        0,
        "a re-render has no segments"
    );

    // A segment the document does not name, and segments of no package.
    edit_shard(&home, "grows", |txn| {
        let mut table = txn.open_table(ABBR_SEGMENTS).unwrap();
        table.insert(("grows", 3), &b"stray"[..]).unwrap();
        table.insert(("nobody", 0), &b"stray"[..]).unwrap();
        table.insert(("nobody", 1), &b"stray"[..]).unwrap();
    });
    let damaged = offline(&home, false);
    assert_eq!(
        subjects(&damaged, FindingKind::StaleServed),
        ["grows", "nobody"]
    );
    repair_clean(&home);
    assert_eq!(segments(&home, ABBR_SEGMENTS), 0);
    // The same documents, at a later revision (a repair gives the package a new one).
    let without_rev = |contents: BTreeMap<String, (Vec<u8>, Vec<u8>)>| {
        let out: BTreeMap<String, (Value, Vec<u8>)> = contents
            .into_iter()
            .map(|(name, (full, tarball))| {
                let mut full: Value = serde_json::from_slice(&full).unwrap();
                full.as_object_mut().unwrap().remove("_rev");
                (name, (full, tarball))
            })
            .collect();
        out
    };
    let repaired = without_rev(Open::new(&home).contents());
    assert!(
        repaired == without_rev(expected),
        "repaired documents differ"
    );
}

#[test]
fn every_kind_is_detected_and_only_safe_ones_are_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let open = Open::new(&home);
    let names = [
        "flipped",
        "deleted",
        "truncated",
        "garbage",
        "rev",
        "claims",
        "fine",
    ];
    open.publish(&names);
    let orphan = b"bytes nothing references".to_vec();
    open.blobs.write(&BlobId::of(&orphan), &orphan).unwrap();
    drop(open);

    // Blob damage: one flipped byte, a deleted file, a truncated file.
    let flipped = blob_path(&home, "flipped");
    let mut bytes = fs::read(&flipped).unwrap();
    bytes[10] ^= 0x20;
    fs::write(&flipped, bytes).unwrap();
    fs::remove_file(blob_path(&home, "deleted")).unwrap();
    let truncated = blob_path(&home, "truncated");
    let len = fs::metadata(&truncated).unwrap().len();
    fs::File::options()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // Metadata damage: a garbage served record, a wrong rev, a wrong integrity claim.
    edit_shard(&home, "garbage", |txn| {
        let mut served = txn.open_table(SERVED).unwrap();
        served
            .insert("garbage", &b"\x01not a served record"[..])
            .unwrap();
    });
    edit_shard(&home, "rev", |txn| {
        txn.open_table(REVS).unwrap().insert("rev", 99).unwrap();
    });
    edit_shard(&home, "claims", |txn| {
        // The manifest is in its own row (served format 8).
        let mut manifests = txn.open_table(MANIFESTS).unwrap();
        let key = "claims\u{0}1.0.0";
        let mut manifest: Value =
            serde_json::from_slice(manifests.get(key).unwrap().unwrap().value()).unwrap();
        manifest["dist"]["integrity"] = Value::String(integrity::compute(b"other bytes").integrity);
        manifests
            .insert(key, serde_json::to_vec(&manifest).unwrap().as_slice())
            .unwrap();
    });
    // Leftovers: a temp file; a flipped byte in config slot 1.
    let temp = home.join("blobs").join("tmp").join("4242-0.tmp");
    fs::write(&temp, b"half a tarball").unwrap();
    let config = home.join("config.bin");
    let mut record = fs::read(&config).unwrap();
    record[32 + 9] ^= 0x01;
    fs::write(&config, record).unwrap();

    let before = offline(&home, false);
    let expected: BTreeMap<FindingKind, u64> = [
        (FindingKind::CorruptBlob, 2),
        (FindingKind::MissingBlob, 1),
        (FindingKind::IntegrityMismatch, 1),
        // The edited package no longer renders to its served record either.
        (FindingKind::StaleServed, 2),
        (FindingKind::RevsMismatch, 1),
        (FindingKind::OrphanBlob, 1),
        (FindingKind::TempFile, 1),
        (FindingKind::ConfigSlotBad, 1),
    ]
    .into();
    assert_eq!(kinds(&before), expected, "{}", before.render_text());
    let hex = |name: &str| BlobId::of(&tarball(name)).to_hex();
    let mut corrupt = subjects(&before, FindingKind::CorruptBlob);
    corrupt.sort();
    let mut want = vec![hex("flipped"), hex("truncated")];
    want.sort();
    assert_eq!(corrupt, want);
    assert_eq!(
        subjects(&before, FindingKind::MissingBlob),
        [hex("deleted")]
    );
    assert_eq!(
        subjects(&before, FindingKind::IntegrityMismatch),
        ["claims@1.0.0"]
    );
    assert_eq!(
        subjects(&before, FindingKind::OrphanBlob),
        [BlobId::of(&orphan).to_hex()]
    );
    assert!(before.findings.iter().all(|f| f.repaired.is_none()));
    assert!(temp.exists(), "a check without --repair changes nothing");
    let text = before.render_text();
    assert!(text.contains(&hex("flipped")), "{text}");

    let repaired = offline(&home, true);
    assert_eq!(kinds(&repaired), expected, "{}", repaired.render_text());
    for finding in &repaired.findings {
        let repairable = matches!(
            finding.kind,
            FindingKind::StaleServed
                | FindingKind::RevsMismatch
                | FindingKind::OrphanBlob
                | FindingKind::TempFile
                | FindingKind::ConfigSlotBad
        );
        assert_eq!(
            finding.repaired.is_some(),
            repairable,
            "{finding:?}\n{}",
            repaired.render_text()
        );
    }
    assert!(!temp.exists());
    assert!(
        flipped.exists(),
        "a corrupt referenced blob is never deleted"
    );
    assert!(
        truncated.exists(),
        "a corrupt referenced blob is never deleted"
    );
    for name in ["garbage", "rev", "claims", "fine"] {
        assert!(blob_path(&home, name).exists(), "{name}'s blob was deleted");
    }

    let after = offline(&home, false);
    let unrepairable: BTreeMap<FindingKind, u64> = [
        (FindingKind::CorruptBlob, 2),
        (FindingKind::MissingBlob, 1),
        (FindingKind::IntegrityMismatch, 1),
    ]
    .into();
    assert_eq!(kinds(&after), unrepairable, "{}", after.render_text());

    let open = Open::new(&home);
    let garbage = open.shards[usize::from(shard_for("garbage", SHARDS).0)]
        .read_index("garbage")
        .unwrap()
        .unwrap();
    // A repaired record gets a new revision, so cores that cached the bad one reload it.
    assert_eq!(garbage.rev, 2);
    let rev = open.shards[usize::from(shard_for("rev", SHARDS).0)]
        .read_rev("rev")
        .unwrap();
    assert_eq!(rev, Some(2));
}

/// A manifest row no record names (a stray version of a live package, and a row of a name
/// with no record) is reported; `--repair` writes the package's rows again from its record and
/// deletes the rows of the name without one; the package still reads as before.
#[test]
fn orphan_manifest_rows_are_found_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let open = Open::new(&home);
    open.publish_small(&["kept", "fine"]);
    let before = open.contents();
    drop(open);
    let row = br#"{"name":"kept","version":"9.9.9"}"#;
    edit_shard(&home, "kept", |txn| {
        let mut manifests = txn.open_table(MANIFESTS).unwrap();
        manifests.insert("kept\u{0}9.9.9", &row[..]).unwrap();
    });
    edit_shard(&home, "ghost", |txn| {
        let mut manifests = txn.open_table(MANIFESTS).unwrap();
        manifests.insert("ghost\u{0}1.0.0", &row[..]).unwrap();
    });

    let found = offline(&home, false);
    assert_eq!(
        kinds(&found),
        [(FindingKind::OrphanManifest, 2)].into(),
        "{}",
        found.render_text()
    );
    let mut orphans = subjects(&found, FindingKind::OrphanManifest);
    orphans.sort();
    assert_eq!(orphans, ["ghost@1.0.0", "kept@9.9.9"]);
    assert!(found.findings.iter().all(|f| f.repaired.is_none()));

    let repaired = offline(&home, true);
    assert!(
        repaired.findings.iter().all(|f| f.repaired.is_some()),
        "{}",
        repaired.render_text()
    );
    let after = offline(&home, false);
    assert!(after.is_clean(), "{}", after.render_text());
    for (owner, key) in [("kept", "kept\u{0}9.9.9"), ("ghost", "ghost\u{0}1.0.0")] {
        let db = redb::Database::open(shard_file(&home, owner)).unwrap();
        let txn = db.begin_read().unwrap();
        let manifests = txn.open_table(MANIFESTS).unwrap();
        assert!(
            manifests.get(key).unwrap().is_none(),
            "{key} is still there"
        );
        let kept = manifests.get("kept\u{0}1.0.0").unwrap();
        if owner == "kept" {
            assert!(kept.is_some(), "the named row was deleted");
        }
    }
    let open = Open::new(&home);
    let contents = open.contents();
    assert_eq!(contents.keys().collect::<Vec<_>>(), ["fine", "kept"]);
    for (name, (full, tarball)) in &before {
        let (full_after, tarball_after) = &contents[name];
        assert_eq!(tarball, tarball_after);
        let doc = |bytes: &[u8]| -> Value {
            let mut doc: Value = serde_json::from_slice(bytes).unwrap();
            // The repair renders the package under a new revision.
            doc.as_object_mut().unwrap().remove("_rev");
            doc
        };
        assert_eq!(doc(full), doc(full_after), "{name}");
    }
}

#[test]
fn online_repair_rerenders_served_records() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let open = Open::new(&home);
    open.publish(&["a", "b", "c", "d"]);
    let good = open.contents();
    drop(open);
    // A junk index, a missing document, a document of another package, an orphan document.
    edit_shard(&home, "a", |txn| {
        txn.open_table(SERVED)
            .unwrap()
            .insert("a", &b"junk"[..])
            .unwrap();
    });
    edit_shard(&home, "b", |txn| {
        txn.open_table(DOC_ABBR_GZ).unwrap().remove("b").unwrap();
    });
    let d_full = {
        let open = Open::new(&home);
        let shard = &open.shards[usize::from(shard_for("d", SHARDS).0)];
        let doc = shard.read_doc("d", DocKind::FullGzip).unwrap().unwrap();
        let mut value = vec![2u8];
        value.extend_from_slice(&doc.rev.to_le_bytes());
        value.push(u8::try_from(doc.etag.len()).unwrap());
        value.extend_from_slice(&doc.etag);
        value.extend_from_slice(&doc.body);
        value
    };
    edit_shard(&home, "c", |txn| {
        txn.open_table(DOC_FULL_GZ)
            .unwrap()
            .insert("c", d_full.as_slice())
            .unwrap();
    });
    edit_shard(&home, "nobody", |txn| {
        txn.open_table(DOC_FULL_GZ)
            .unwrap()
            .insert("nobody", d_full.as_slice())
            .unwrap();
    });
    let open = Open::new(&home);
    let report = open.check(true);
    assert_eq!(
        kinds(&report),
        [(FindingKind::StaleServed, 4)].into(),
        "{}",
        report.render_text()
    );
    assert!(report.findings.iter().all(|f| f.repaired.is_some()));
    assert!(open.check(false).is_clean());
    // Repaired packages get a new revision (so `_rev` in their documents changes); their
    // tarballs do not.
    let repaired = open.contents();
    assert_eq!(
        repaired.iter().map(|(k, v)| (k, &v.1)).collect::<Vec<_>>(),
        good.iter().map(|(k, v)| (k, &v.1)).collect::<Vec<_>>()
    );
    let shard = &open.shards[usize::from(shard_for("nobody", SHARDS).0)];
    assert!(shard.read_doc("nobody", DocKind::Full).unwrap().is_none());
    for name in ["a", "b", "c", "d"] {
        let shard = &open.shards[usize::from(shard_for(name, SHARDS).0)];
        for kind in DocKind::ALL {
            assert!(
                shard.read_doc(name, kind).unwrap().is_some(),
                "{name} {kind:?}"
            );
        }
    }
}

#[test]
fn orphans_are_kept_when_a_shard_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let open = Open::new(&home);
    open.publish(&["a"]);
    let orphan = b"unreferenced".to_vec();
    open.blobs.write(&BlobId::of(&orphan), &orphan).unwrap();
    drop(open);
    let other = (0..SHARDS)
        .map(|i| home.join("shards").join(format!("{i:03}.redb")))
        .find(|p| *p != shard_file(&home, "a"))
        .unwrap();
    fs::remove_file(&other).unwrap();
    let report = offline(&home, true);
    assert_eq!(
        subjects(&report, FindingKind::RedbCorrupt),
        [other.display().to_string()]
    );
    assert_eq!(report.count(FindingKind::OrphanBlob), 0);
    assert!(BlobStore::attach(&home.join("blobs")).has(&BlobId::of(&orphan)));
    assert!(
        report.notes.iter().any(|n| n.contains("orphan")),
        "{report:?}"
    );
}

#[test]
fn a_redb_file_with_its_tail_truncated_is_reported_as_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let open = Open::new(&home);
    let names: Vec<String> = (0..40).map(|i| format!("pkg-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    open.publish(&names);
    drop(open);
    let path = shard_file(&home, "pkg-0");
    let len = fs::metadata(&path).unwrap().len();
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - len / 4)
        .unwrap();
    let report = offline(&home, true);
    let corrupt: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::RedbCorrupt)
        .collect();
    assert_eq!(corrupt.len(), 1, "{}", report.render_text());
    assert_eq!(corrupt[0].subject, path.display().to_string());
    assert!(corrupt[0].repaired.is_none());
    assert!(
        corrupt[0].detail.contains("restore from a backup"),
        "{}",
        corrupt[0].detail
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), len - len / 4);
    // The server refuses the file too, so it is never served.
    let opened = ShardStore::open(&path, shard_for("pkg-0", SHARDS), BASE);
    assert!(opened.is_err());
}

#[test]
fn backup_while_open_restores_identical_and_clean() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let open = Open::new(&home);
    open.publish(&["a", "b", "@s/c", "d", "e"]);
    open.auth
        .create_user(&UserRecord {
            name: "ada".into(),
            password_phc: "$argon2id$x".into(),
            email: None,
            created: "now".into(),
        })
        .unwrap();
    let expected = open.contents();
    let dest = dir.path().join("backups");
    let summary = open.backup_to(&dest);
    assert_eq!(summary.packages, 5);
    assert_eq!(summary.blobs, 5);
    assert!(summary.damaged_blobs.is_empty());
    assert!(summary.path.starts_with(&dest));
    assert!(summary.path.join("backup.json").is_file());
    let leftovers: Vec<_> = fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A running server (open stores) blocks a restore into its home.
    let refused = backup::restore(&summary.path, &home, true, &mut |_| {});
    assert!(
        matches!(refused, Err(backup::BackupError::ServerRunning { .. })),
        "{refused:?}"
    );
    let target = dir.path().join("restored");
    let restored = restore_clean(&summary.path, &target);
    assert_eq!(restored.previous, None);
    let reopened = Open::new(&target);
    assert_eq!(reopened.contents(), expected);
    assert!(reopened.auth.read_user("ada").unwrap().is_some());
    drop(reopened);

    // Non-empty homes: refused without force; with force, kept aside.
    let refused = backup::restore(&summary.path, &target, false, &mut |_| {});
    assert!(
        matches!(refused, Err(backup::BackupError::HomeNotEmpty { .. })),
        "{refused:?}"
    );
    let forced = backup::restore(&summary.path, &target, true, &mut |_| {}).unwrap();
    let previous = forced.previous.unwrap();
    assert!(previous.join("format.json").is_file());
    assert!(offline(&target, false).is_clean());
}

#[test]
fn offline_backup_and_a_damaged_backup_is_refused_on_restore() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let open = Open::new(&home);
    open.publish(&["a", "b"]);
    drop(open);
    let dest = dir.path().join("backups");
    let summary = backup::backup_offline(&home, &dest, &mut |_| {}).unwrap();
    assert_eq!(summary.packages, 2);
    let blob = BlobStore::attach(&summary.path.join("blobs")).path_of(&BlobId::of(&tarball("a")));
    fs::write(&blob, b"rot").unwrap();
    let target = dir.path().join("restored");
    let refused = backup::restore(&summary.path, &target, false, &mut |_| {});
    assert!(
        matches!(refused, Err(backup::BackupError::Corrupt { .. })),
        "{refused:?}"
    );
    assert!(!target.exists());
    let staged: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".restore-"))
        .collect();
    assert!(
        staged.is_empty(),
        "a failed restore leaves no staging copy: {staged:?}"
    );
}

#[test]
fn an_orphan_holding_a_missing_versions_tarball_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let open = Open::new(&home);
    open.publish(&["lost"]);
    drop(open);
    // Damaged metadata: the index names a blob that does not exist; the real one looks orphan.
    let wrong = BlobId::of(b"not the tarball").to_hex();
    edit_shard(&home, "lost", |txn| {
        let mut packages = txn.open_table(PACKAGES).unwrap();
        let mut stored =
            StoredPackage::decode(packages.get("lost").unwrap().unwrap().value()).unwrap();
        stored.tarballs.get_mut("1.0.0").unwrap().blob = wrong.clone();
        packages.insert("lost", stored.encode().as_slice()).unwrap();
    });
    // The first repair re-renders the served record (which named the real blob) from the
    // damaged package record; from then on nothing names the real blob.
    let first = offline(&home, true);
    assert_eq!(
        first.count(FindingKind::StaleServed),
        1,
        "{}",
        first.render_text()
    );
    let report = offline(&home, true);
    assert_eq!(subjects(&report, FindingKind::MissingBlob), [wrong]);
    let orphan = report
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::OrphanBlob)
        .unwrap();
    assert!(orphan.detail.contains("lost@1.0.0"), "{}", orphan.detail);
    assert!(orphan.repaired.is_none());
    assert!(blob_path(&home, "lost").exists());
}

#[test]
fn online_repair_deletes_old_orphans_behind_the_barrier_and_spares_young_files() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let open = Open::new(&home);
    open.publish(&["a", "b", "c"]);
    let hour_ago = SystemTime::now() - std::time::Duration::from_secs(3600);
    let old = b"an old orphan".to_vec();
    let young = b"a young orphan, maybe a publish in flight".to_vec();
    for bytes in [&old, &young] {
        open.blobs.write(&BlobId::of(bytes), bytes).unwrap();
    }
    let age = |path: &Path| {
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    };
    age(&open.blobs.path_of(&BlobId::of(&old)));
    let tmp = home.join("blobs").join("tmp");
    let stale_temp = tmp.join("1-0.tmp");
    let own_temp = tmp.join(format!("{}-0.tmp", std::process::id()));
    for path in [&stale_temp, &own_temp] {
        fs::write(path, b"partial").unwrap();
        age(path);
    }
    let report = open.check(true);
    assert_eq!(
        subjects(&report, FindingKind::OrphanBlob),
        [BlobId::of(&old).to_hex()],
        "{}",
        report.render_text()
    );
    assert_eq!(
        subjects(&report, FindingKind::TempFile),
        [stale_temp.display().to_string()]
    );
    assert!(
        report.unrepaired().next().is_none(),
        "{}",
        report.render_text()
    );
    assert!(!open.blobs.has(&BlobId::of(&old)));
    assert!(open.blobs.has(&BlobId::of(&young)));
    assert!(own_temp.exists() && !stale_temp.exists());
    // Writes still go through after the barrier was released.
    open.publish(&["d"]);
    assert_eq!(open.contents().len(), 4);
}

#[test]
fn a_publish_racing_an_orphan_deletion_never_loses_its_blob() {
    // Goal: the write barrier. An old orphan is republished (same bytes, so the blob store
    // finds it present and skips the write) while an online repair deletes orphans. Whatever
    // the interleaving, the committed version's blob must exist afterwards.
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let open = Open::new(&home);
    let hour_ago = SystemTime::now() - std::time::Duration::from_secs(3600);
    for round in 0..12 {
        let name = format!("race-{round}");
        // Odd rounds: an inline-sized orphan file. The publish keeps it as its file when it
        // commits first; when the repair deleted the file first, the publish finds no file
        // and stores the bytes inline in its shard. Either way the blob is there.
        let bytes = if round % 2 == 0 {
            tarball(&name)
        } else {
            small(&name)
        };
        let id = BlobId::of(&bytes);
        open.blobs.write(&id, &bytes).unwrap();
        fs::File::options()
            .write(true)
            .open(open.blobs.path_of(&id))
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let op = publish_bytes(&name, "1.0.0", bytes.clone());
                let results = open.shard(&name).apply_batch(vec![op], &open.blobs, now());
                assert!(results.iter().all(Result::is_ok), "{results:?}");
            });
            open.check(true);
        });
        let inline = open.shard(&name).read_inline_of(&name, "1.0.0").unwrap();
        let file = open.blobs.read(&id).ok();
        assert!(
            inline.as_ref() == Some(&bytes) || file.as_ref() == Some(&bytes),
            "round {round}: the published blob was deleted (inline: {}, file: {})",
            inline.is_some(),
            file.is_some()
        );
        if round % 2 == 0 {
            assert!(
                file.is_some(),
                "round {round}: a big tarball is always a file"
            );
        }
        assert!(open.check(false).is_clean());
    }
}

#[test]
fn inline_blobs_are_checked_and_inline_orphans_repaired() {
    // Goal: fsck sees inline tarballs as present (never as missing files), reports a corrupt
    // inline blob as corrupt_blob (kept by repair) and an inline entry no version names as an
    // orphan, which repair deletes (a row, and an entry of a data format 2 shard's
    // `blob_inline`); the byte counter follows. Method: small tarballs published through the
    // write path, then the shard's inline tables edited with the stores closed.
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let open = Open::new(&home);
    open.publish_small(&["tiny", "rotten", "fine-small"]);
    open.publish(&["large"]);
    for name in ["tiny", "rotten", "fine-small"] {
        let id = BlobId::of(&small(name));
        assert!(!open.blobs.has(&id), "{name}'s small tarball became a file");
        assert_eq!(open.tarball(name, &id), small(name));
    }
    let online = open.check(false);
    assert!(online.is_clean(), "{}", online.render_text());
    assert_eq!(online.checked.blobs, 4);
    let rotten = BlobId::of(&small("rotten"));
    let rotten_row = open.row_of("rotten", &rotten).expect("an inline row");
    drop(open);
    assert!(offline(&home, false).is_clean());

    edit_shard(&home, "rotten", |txn| {
        let mut bytes = small("rotten");
        bytes[3] ^= 0x20;
        txn.open_table(INLINE_ROWS)
            .unwrap()
            .insert(rotten_row, bytes.as_slice())
            .unwrap();
    });
    let stray = b"inline bytes no version names".to_vec();
    let stray_id = BlobId::of(&stray);
    let stray_row = insert_inline(&home, "tiny", &stray);
    let legacy = b"inline bytes a data format 2 build left".to_vec();
    let legacy_id = BlobId::of(&legacy);
    insert_legacy_inline(&home, "fine-small", &legacy);
    let before = offline(&home, false);
    let expected: BTreeMap<FindingKind, u64> =
        [(FindingKind::CorruptBlob, 1), (FindingKind::OrphanBlob, 2)].into();
    assert_eq!(kinds(&before), expected, "{}", before.render_text());
    assert_eq!(
        subjects(&before, FindingKind::CorruptBlob),
        [rotten.to_hex()]
    );
    let orphans: BTreeSet<String> = subjects(&before, FindingKind::OrphanBlob)
        .into_iter()
        .collect();
    assert_eq!(orphans, [stray_id.to_hex(), legacy_id.to_hex()].into());

    let repaired = offline(&home, true);
    assert_eq!(kinds(&repaired), expected, "{}", repaired.render_text());
    for finding in &repaired.findings {
        assert_eq!(
            finding.repaired.is_some(),
            finding.kind == FindingKind::OrphanBlob,
            "{finding:?}"
        );
    }
    let after = offline(&home, false);
    assert_eq!(
        kinds(&after),
        [(FindingKind::CorruptBlob, 1)].into(),
        "{}",
        after.render_text()
    );
    let open = Open::new(&home);
    let tiny_shard = open.shard("tiny");
    assert_eq!(
        tiny_shard.read_inline(&stray_id, Some(stray_row)).unwrap(),
        None
    );
    let legacy_shard = open.shard("fine-small");
    assert_eq!(legacy_shard.read_inline(&legacy_id, None).unwrap(), None);
    let rotten_read = open.shard("rotten").read_inline_of("rotten", "1.0.0");
    assert!(rotten_read.is_err(), "corrupt inline bytes were returned");
    // The corrupt referenced blob is kept; the counter lost only the orphan's bytes.
    let total: u64 = open
        .shards
        .iter()
        .map(|s| s.inline_blob_stats().unwrap().1)
        .sum();
    let published: u64 = ["tiny", "rotten", "fine-small"]
        .iter()
        .map(|n| small(n).len() as u64)
        .sum();
    assert_eq!(total, published);

    // Online (stores open, as in a server), an inline orphan needs no age: it is deleted at
    // once.
    drop(open);
    let stray_row = insert_inline(&home, "tiny", &stray);
    let open = Open::new(&home);
    let report = open.check(true);
    assert_eq!(
        subjects(&report, FindingKind::OrphanBlob),
        [stray_id.to_hex()],
        "{}",
        report.render_text()
    );
    assert!(report
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::OrphanBlob)
        .all(|f| f.repaired.is_some()));
    assert_eq!(
        open.shard("tiny")
            .read_inline(&stray_id, Some(stray_row))
            .unwrap(),
        None
    );
}

/// Inserts `bytes` into a new inline row of the shard of `name`, counted in `meta` as the
/// write path counts it, but named by no version: an orphan (stores closed). Returns the row.
fn insert_inline(home: &Path, name: &str, bytes: &[u8]) -> u64 {
    let mut row = 0;
    edit_shard(home, name, |txn| {
        let mut rows = txn.open_table(INLINE_ROWS).unwrap();
        row = rows.last().unwrap().map_or(1, |(k, _)| k.value() + 1);
        rows.insert(row, bytes).unwrap();
        count_inline_bytes(txn, bytes.len());
    });
    row
}

/// Inserts `bytes` into the shard's `blob_inline` under their id, as a build of data format 2
/// stored inline tarballs, named by no version (stores closed).
fn insert_legacy_inline(home: &Path, name: &str, bytes: &[u8]) {
    edit_shard(home, name, |txn| {
        txn.open_table(BLOB_INLINE)
            .unwrap()
            .insert(&BlobId::of(bytes).0, bytes)
            .unwrap();
        count_inline_bytes(txn, bytes.len());
    });
}

fn count_inline_bytes(txn: &redb::WriteTransaction, added: usize) {
    let mut meta = txn.open_table(META).unwrap();
    let total = meta
        .get("inline_blob_bytes")
        .unwrap()
        .map_or(0, |v| u64::from_le_bytes(v.value().try_into().unwrap()));
    let total = total + added as u64;
    meta.insert("inline_blob_bytes", &total.to_le_bytes()[..])
        .unwrap();
}

#[test]
fn backup_and_restore_carry_inline_tarballs() {
    // Goal: a backup copies inline tarballs with their shards (never looked for, or reported
    // damaged, in the blob store), counts them, and the restored home serves them.
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let open = Open::new(&home);
    open.publish_small(&["s1", "s2", "@s/s3"]);
    open.publish(&["big"]);
    let expected = open.contents();
    let dest = dir.path().join("backups");
    let summary = open.backup_to(&dest);
    assert!(
        summary.damaged_blobs.is_empty(),
        "{:?}",
        summary.damaged_blobs
    );
    assert_eq!(summary.packages, 4);
    assert_eq!(summary.blobs, 4);
    let files = BlobStore::attach(&summary.path.join("blobs"))
        .list()
        .unwrap();
    assert_eq!(files, vec![BlobId::of(&tarball("big"))]);
    drop(open);
    let target = dir.path().join("restored");
    restore_clean(&summary.path, &target);
    let reopened = Open::new(&target);
    assert_eq!(reopened.contents(), expected);
    for name in ["s1", "s2", "@s/s3"] {
        let id = BlobId::of(&small(name));
        assert_eq!(
            reopened.shard(name).read_inline_of(name, "1.0.0").unwrap(),
            Some(small(name))
        );
        assert!(reopened.row_of(name, &id).is_some());
    }
}
