//! The checking passes: metadata (package records, served records, revs, and the shard's
//! inline blobs, hashed in the same read transaction), blob files (read and hashed on a few
//! threads), orphan blobs and temp files.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use redb::{ReadableDatabase, ReadableTable};
use serde_json::Value;

use super::report::FindingKind::{
    CorruptBlob, CorruptPackage, IntegrityMismatch, MissingBlob, OrphanBlob, OrphanManifest,
    RedbCorrupt, RevsMismatch, StaleServed, TempFile,
};
use super::{
    Ctx, Expect, FindingKind, InlineOrphan, Phase, Progress, Report, Scan, ShardView, ONLINE_GRACE,
};
use crate::blob::{self, BlobError, BlobId, BlobStore};
use crate::integrity;
use crate::packument::StoredPackage;
use crate::served::{
    assemble_doc, decode_doc, decode_index, doc_segments, encode_served, gzip_doc_agrees,
    identity_doc, DocKind,
};
use crate::shard::tables::{
    fill_manifests, manifest_keys_of, open_existing, read_inline_at, segments_of, InlineKey,
};
use crate::shard::ShardStore;

/// Threads that read and hash blobs in parallel.
const BLOB_CHECK_THREADS_MAX: usize = 4;
/// Referencing versions named in one blob finding; the rest are counted.
const WHO_LISTED_MAX: usize = 3;

pub(super) fn scan_metadata(
    ctx: &Ctx<'_>,
    report: &mut Report,
    progress: &mut dyn FnMut(Progress),
) -> Scan {
    let mut scan = Scan {
        complete: true,
        ..Scan::default()
    };
    let total = ctx.shards.len() as u64;
    for (index, shard) in ctx.shards.iter().enumerate() {
        progress(Progress {
            phase: Phase::Metadata,
            done: index as u64,
            total,
        });
        let mut fixes = BTreeMap::new();
        if let Err(e) = scan_shard(index, shard, &mut scan, &mut fixes, report) {
            scan.complete = false;
            report.push(
                RedbCorrupt,
                shard.path.display().to_string(),
                format!("reading shard {} failed: {e}", shard.id.0),
            );
        }
        scan.fixes.push(fixes);
        report.checked.shards += 1;
    }
    progress(Progress {
        phase: Phase::Metadata,
        done: total,
        total,
    });
    scan
}

fn scan_shard(
    view: usize,
    shard: &ShardView<'_>,
    scan: &mut Scan,
    fixes: &mut BTreeMap<String, Vec<usize>>,
    report: &mut Report,
) -> Result<(), redb::Error> {
    scan.shard_refs.clear();
    scan.shard_rows.clear();
    // Whether this shard's records all decode (else what it names is unknown), kept apart
    // from the other shards'.
    let complete_so_far = std::mem::replace(&mut scan.complete, true);
    let scanned = scan_shard_records(shard, scan, fixes, report);
    let shard_complete = scan.complete;
    scan.complete &= complete_so_far;
    let txn = scanned?;
    scan_inline(view, &txn, shard_complete, scan, report)
}

/// Checks the shard's inline blobs in the read transaction that scanned its records: one
/// its records name is judged like a blob file (hash, size, integrity); one they do not name
/// is an orphan (recorded only when every record of the shard decoded). Rows of
/// `inline_rows` are judged against the id the naming `TarballRef` gives; entries of
/// `blob_inline` (data format 2) against their key.
fn scan_inline(
    view: usize,
    txn: &redb::ReadTransaction,
    shard_complete: bool,
    scan: &mut Scan,
    report: &mut Report,
) -> Result<(), redb::Error> {
    let mut unjudged = 0u64;
    match txn.open_table(ShardStore::TABLE_INLINE_ROWS) {
        Ok(rows) => {
            for entry in rows.iter()? {
                let (key, value) = entry?;
                let row = key.value();
                let bytes = value.value();
                if let Some(id) = scan.shard_rows.get(&row).copied() {
                    let expects = scan.refs.get(&id).map_or(&[][..], Vec::as_slice);
                    scan.inline.insert(id, judge_bytes(&id, bytes, expects));
                } else if shard_complete {
                    scan.inline_orphans.push(InlineOrphan {
                        view,
                        key: InlineKey::Row(row),
                        id: BlobId::of(bytes),
                        size: bytes.len() as u64,
                        corrupt: None,
                    });
                } else {
                    unjudged += 1;
                }
            }
        }
        // A shard not yet opened by a build of data format 3.
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    // None in a shard no build of data format 2 stored tarballs in.
    let inline = open_existing(txn, ShardStore::TABLE_BLOB_INLINE)?;
    if let Some(inline) = &inline {
        for entry in inline.iter()? {
            let (key, value) = entry?;
            let id = BlobId(*key.value());
            let bytes = value.value();
            if scan.shard_refs.contains(&id) {
                let expects = scan.refs.get(&id).map_or(&[][..], Vec::as_slice);
                // A row holding it too was judged above; a sound copy is what a read finds.
                let judged = judge_bytes(&id, bytes, expects);
                if !matches!(scan.inline.get(&id), Some(BlobOutcome::Sound { .. })) {
                    scan.inline.insert(id, judged);
                }
            } else if shard_complete {
                scan.inline_orphans.push(InlineOrphan {
                    view,
                    key: InlineKey::Id(id),
                    id,
                    size: bytes.len() as u64,
                    corrupt: match blob::verify(&id, bytes) {
                        Ok(()) => None,
                        Err(e) => Some(e.to_string()),
                    },
                });
            } else {
                unjudged += 1;
            }
        }
    }
    if unjudged > 0 {
        report.notes.push(format!(
            "{unjudged} unreferenced inline blobs were not called orphans: a record of their \
             shard could not be read"
        ));
    }
    Ok(())
}

/// The package, served and revs passes of one shard; returns the read transaction they used.
fn scan_shard_records(
    shard: &ShardView<'_>,
    scan: &mut Scan,
    fixes: &mut BTreeMap<String, Vec<usize>>,
    report: &mut Report,
) -> Result<redb::ReadTransaction, redb::Error> {
    let txn = shard.db.begin_read()?;
    let packages = txn.open_table(ShardStore::TABLE_PACKAGES)?;
    let served = txn.open_table(ShardStore::TABLE_SERVED)?;
    // Tables a shard not yet opened by this version lacks: every document is then reported
    // missing; no document has segments (served format 8 or older); every manifest is in
    // its record (before data format 2).
    let docs = [
        open_existing(&txn, ShardStore::TABLE_DOCS[0])?,
        open_existing(&txn, ShardStore::TABLE_DOCS[1])?,
    ];
    let segment_tables = [
        open_existing(&txn, ShardStore::TABLE_DOC_SEGMENTS[0])?,
        open_existing(&txn, ShardStore::TABLE_DOC_SEGMENTS[1])?,
    ];
    let revs = txn.open_table(ShardStore::TABLE_REVS)?;
    let manifests = open_existing(&txn, ShardStore::TABLE_MANIFESTS)?;
    let mut names = BTreeSet::new();
    for entry in packages.iter()? {
        let (key, value) = entry?;
        let name = key.value().to_owned();
        report.checked.packages += 1;
        let mut in_rows = Vec::new();
        let decoded = StoredPackage::decode(value.value())
            .map_err(|e| e.to_string())
            .and_then(|mut stored| {
                in_rows = stored.manifests_in_rows();
                fill_manifests(manifests.as_ref(), &name, &mut stored)?;
                Ok(stored)
            });
        let stored = match decoded {
            Ok(stored) => stored,
            Err(e) => {
                scan.complete = false;
                report.push(
                    CorruptPackage,
                    &name,
                    format!("the record does not decode: {e}"),
                );
                names.insert(name);
                continue;
            }
        };
        let mut values = ServedValues {
            index: served.get(name.as_str())?.map(|v| v.value().to_vec()),
            docs: Default::default(),
            segments: 0,
            problems: Vec::new(),
        };
        for (kind, ((slot, table), segment_table)) in DocKind::STORED
            .into_iter()
            .zip(values.docs.iter_mut().zip(&docs).zip(&segment_tables))
        {
            let segments = match segment_table {
                Some(table) => segments_of(table, &name, None)?,
                None => Vec::new(),
            };
            values.segments += segments.len();
            let Some(value) = (match table {
                Some(table) => table.get(name.as_str())?.map(|v| v.value().to_vec()),
                None => None,
            }) else {
                continue;
            };
            // A value with segments is judged whole; segments past its count are stray.
            let count = doc_segments(&value).unwrap_or(0) as usize;
            let parts: Vec<(u32, &[u8])> = segments
                .iter()
                .filter(|(n, _)| (*n as usize) < count)
                .map(|(n, bytes)| (*n, bytes.value()))
                .collect();
            let stray = segments.len() - parts.len();
            *slot = Some(if count == 0 {
                value
            } else {
                match assemble_doc(&value, &parts) {
                    Ok(whole) => whole,
                    Err(e) => {
                        values
                            .problems
                            .push(format!("the served {} document: {e}", kind.label()));
                        value
                    }
                }
            });
            // After a document that cannot be assembled: the worse problem is named first.
            if stray > 0 {
                values.problems.push(format!(
                    "the served {} document has {stray} segments it does not use",
                    kind.label()
                ));
            }
        }
        let rev = revs.get(name.as_str())?.map(|v| v.value());
        let mut found = check_package(shard, &name, &stored, &values, rev, scan, report);
        if let Some(manifests) = &manifests {
            let keys = manifest_keys_of(&name);
            for entry in manifests.range(keys.start.as_str()..keys.end.as_str())? {
                let (key, _) = entry?;
                let version = key.value().get(name.len() + 1..).unwrap_or_default();
                if !in_rows.iter().any(|v| v == version) {
                    let subject = format!("{name}@{version}");
                    let detail = "a manifest row the package record does not name".into();
                    found.push(report.push(OrphanManifest, &subject, detail));
                }
            }
        }
        if !found.is_empty() {
            fixes.insert(name.clone(), found);
        }
        names.insert(name);
    }
    // Rows of names with no record at all (rows of a package whose record does not decode are
    // not judged: that record may name them).
    if let Some(manifests) = &manifests {
        for entry in manifests.iter()? {
            let (key, _) = entry?;
            let key = key.value();
            let (name, version) = key.split_once('\0').unwrap_or((key, ""));
            if !names.contains(name) {
                let detail = "a manifest row of a package that has no record".into();
                let i = report.push(OrphanManifest, format!("{name}@{version}"), detail);
                fixes.entry(name.to_owned()).or_default().push(i);
            }
        }
    }
    for entry in served.iter()? {
        let (key, value) = entry?;
        let name = key.value();
        if !names.contains(name) {
            // Served all the same: its blobs are checked, and are not orphans while it stays.
            note_served_refs(name, value.value(), scan);
            let i = report.push(StaleServed, name, "a served record with no package".into());
            fixes.entry(name.to_owned()).or_default().push(i);
        }
    }
    for (kind, table) in DocKind::STORED.into_iter().zip(&docs) {
        let Some(table) = table else { continue };
        for entry in table.iter()? {
            let (key, _) = entry?;
            let name = key.value();
            if !names.contains(name) {
                let detail = format!("a served {} document with no package", kind.label());
                let i = report.push(StaleServed, name, detail);
                fixes.entry(name.to_owned()).or_default().push(i);
            }
        }
    }
    for (kind, table) in DocKind::STORED.into_iter().zip(&segment_tables) {
        let Some(table) = table else { continue };
        let mut last: Option<String> = None;
        for entry in table.iter()? {
            let (key, _) = entry?;
            let (name, _) = key.value();
            if !names.contains(name) && last.as_deref() != Some(name) {
                let detail = format!("served {} document segments with no package", kind.label());
                let i = report.push(StaleServed, name, detail);
                fixes.entry(name.to_owned()).or_default().push(i);
                last = Some(name.to_owned());
            }
        }
    }
    for entry in revs.iter()? {
        let (key, _) = entry?;
        let name = key.value();
        if !names.contains(name) {
            let i = report.push(RevsMismatch, name, "a rev with no package".into());
            fixes.entry(name.to_owned()).or_default().push(i);
        }
    }
    drop((packages, served, docs, segment_tables, revs, manifests));
    Ok(txn)
}

/// One package's served values as stored: the index and the documents by
/// `DocKind::stored_index` (assembled with their segments when they have any).
struct ServedValues {
    index: Option<Vec<u8>>,
    docs: [Option<Vec<u8>>; 2],
    /// Segments stored under the package's name, in both documents.
    segments: usize,
    /// What assembling the documents found wrong.
    problems: Vec<String>,
}

/// Checks one decoded package against its served values and rev; returns the indices of the
/// findings a re-render fixes.
fn check_package(
    shard: &ShardView<'_>,
    name: &str,
    stored: &StoredPackage,
    served: &ServedValues,
    rev: Option<u64>,
    scan: &mut Scan,
    report: &mut Report,
) -> Vec<usize> {
    let mut fixable = Vec::new();
    check_tarball_index(name, stored, scan, report);
    let live = stored.versions().is_some_and(|v| !v.is_empty());
    if !live {
        if let Some(bytes) = &served.index {
            note_served_refs(name, bytes, scan);
        }
        if served.index.is_some() || served.docs.iter().any(Option::is_some) || served.segments > 0
        {
            fixable.push(report.push(
                StaleServed,
                name,
                "every version is unpublished, but served values remain".into(),
            ));
        }
        if rev.is_some() {
            let detail = "every version is unpublished, but a rev remains".into();
            fixable.push(report.push(RevsMismatch, name, detail));
        }
        return fixable;
    }
    if let Some(detail) = served_problem(shard, stored, served) {
        if let Some(bytes) = &served.index {
            note_served_refs(name, bytes, scan);
        }
        fixable.push(report.push(StaleServed, name, detail));
    }
    if rev != Some(stored.rev) {
        let detail = format!("revs holds {rev:?}, the package is at rev {}", stored.rev);
        fixable.push(report.push(RevsMismatch, name, detail));
    }
    fixable
}

/// Why the served values are not what rendering `stored` gives, if they are not.
fn served_problem(
    shard: &ShardView<'_>,
    stored: &StoredPackage,
    served: &ServedValues,
) -> Option<String> {
    let Some(bytes) = &served.index else {
        return Some("the served record is missing".into());
    };
    if let Some(problem) = served.problems.first() {
        return Some(problem.clone());
    }
    let decoded = match decode_index(bytes) {
        Ok(decoded) => decoded,
        Err(e) => return Some(format!("the served record is garbage: {e}")),
    };
    if decoded.rev != stored.rev {
        return Some(format!(
            "the served record is at rev {}, the package at rev {}",
            decoded.rev, stored.rev
        ));
    }
    let base_url = shard.base_url.as_deref().unwrap_or(&decoded.base_url);
    if &*decoded.base_url != base_url {
        return Some(format!(
            "the served record was rendered for {}, the shard serves {base_url}",
            decoded.base_url
        ));
    }
    let fresh = encode_served(stored, base_url);
    if &fresh.index != bytes {
        return Some("the served record differs from a fresh rendering of the package".into());
    }
    for kind in DocKind::STORED {
        let Some(doc) = &served.docs[kind.stored_index()] else {
            return Some(format!("the served {} document is missing", kind.label()));
        };
        // A gzip form built by appends has other bytes than a fresh one: it must inflate to
        // the fresh document and keep a sound cut (`served::gzip_doc_agrees`).
        let decode = |value: &[u8]| decode_doc(bytes::Bytes::copy_from_slice(value)).ok();
        let fresh = fresh.docs[kind.stored_index()]
            .fresh_value()
            .and_then(decode);
        let identity = fresh.as_ref().and_then(|f| identity_doc(f).ok());
        let agrees = match (decode(doc), fresh, identity) {
            (Some(stored), Some(fresh), Some(identity)) => {
                gzip_doc_agrees(&stored, &fresh, &identity.body)
            }
            _ => false,
        };
        if !agrees {
            return Some(format!(
                "the served {} document differs from a fresh rendering of the package",
                kind.label()
            ));
        }
    }
    None
}

/// Blobs a (stale) served record names are served today: check them too, and never call them
/// orphans.
fn note_served_refs(name: &str, bytes: &[u8], scan: &mut Scan) {
    if let Ok(served) = decode_index(bytes) {
        for t in served.tarballs {
            scan.shard_refs.insert(t.blob);
            if let Some(row) = t.row {
                scan.shard_rows.insert(row, t.blob);
            }
            scan.refs.entry(t.blob).or_default().push(Expect {
                who: format!("{name} (served record, {})", t.file),
                integrity: None,
                shasum: None,
                size: Some(t.size),
            });
        }
    }
}

fn check_tarball_index(name: &str, stored: &StoredPackage, scan: &mut Scan, report: &mut Report) {
    let versions = stored.versions();
    for (version, tarball) in &stored.tarballs {
        let who = format!("{name}@{version}");
        let Some(manifest) = versions.and_then(|v| v.get(version)) else {
            scan.complete = false;
            let detail = "the tarball index names a version that `versions` lacks".into();
            report.push(CorruptPackage, who, detail);
            continue;
        };
        let Some(id) = tarball.blob_id() else {
            scan.complete = false;
            let detail = format!(
                "the tarball index names blob {:?}, not a hex id",
                tarball.blob
            );
            report.push(CorruptPackage, who, detail);
            continue;
        };
        let dist = manifest.get("dist");
        let text = |field: &str| dist.and_then(|d| d.get(field)).and_then(Value::as_str);
        report.checked.versions += 1;
        scan.shard_refs.insert(id);
        if let Some(row) = tarball.row {
            scan.shard_rows.insert(row, id);
        }
        scan.refs.entry(id).or_default().push(Expect {
            integrity: text("integrity").map(str::to_owned),
            shasum: text("shasum").map(str::to_owned),
            size: Some(tarball.size),
            who,
        });
    }
    for version in versions.into_iter().flat_map(|v| v.keys()) {
        if !stored.tarballs.contains_key(version) {
            let detail = "the version has no entry in the tarball index".into();
            report.push(CorruptPackage, format!("{name}@{version}"), detail);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Blobs
// ---------------------------------------------------------------------------------------

/// What reading one blob showed.
pub(super) enum BlobOutcome {
    /// The bytes hash to the name; `problems` are (expect index, kind, detail).
    Sound {
        size: u64,
        problems: Vec<(usize, FindingKind, String)>,
    },
    Missing,
    Corrupt(String),
}

/// Judges every referenced blob: those in `inline` from their outcome (found inline in the
/// shard naming them), the others by reading their file. Returns the blobs found nowhere.
pub(super) fn check_blobs(
    ctx: &Ctx<'_>,
    refs: &BTreeMap<BlobId, Vec<Expect>>,
    inline: BTreeMap<BlobId, BlobOutcome>,
    report: &mut Report,
    progress: &mut dyn FnMut(Progress),
) -> Vec<BlobId> {
    let total = refs.len() as u64;
    let mut judged = 0u64;
    let mut found_inline = BTreeSet::new();
    for (id, outcome) in inline {
        if let Some(expects) = refs.get(&id) {
            judge_blob(&id, expects, outcome, report);
            found_inline.insert(id);
            judged += 1;
        }
    }
    let work: Vec<(&BlobId, &Vec<Expect>)> = refs
        .iter()
        .filter(|(id, _)| !found_inline.contains(*id))
        .collect();
    let mut missing = Vec::new();
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, BLOB_CHECK_THREADS_MAX);
    let (tx, rx) = mpsc::sync_channel::<(usize, BlobOutcome)>(threads * 2);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, work, blobs) = (&next, &work, ctx.blobs);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((id, expects)) = work.get(i) else {
                    break;
                };
                if tx.send((i, read_blob(blobs, id, expects))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        progress(Progress {
            phase: Phase::Blobs,
            done: judged,
            total,
        });
        for (done, (i, outcome)) in (judged + 1..).zip(rx) {
            let (id, expects) = work[i];
            if matches!(outcome, BlobOutcome::Missing) {
                missing.push(*id);
            }
            judge_blob(id, expects, outcome, report);
            progress(Progress {
                phase: Phase::Blobs,
                done,
                total,
            });
        }
    });
    missing
}

fn read_blob(blobs: &BlobStore, id: &BlobId, expects: &[Expect]) -> BlobOutcome {
    let bytes = match blobs.read(id) {
        Ok(bytes) => bytes,
        Err(BlobError::NotFound { .. }) => return BlobOutcome::Missing,
        Err(BlobError::Corrupt { detail, .. }) => return BlobOutcome::Corrupt(detail),
        Err(e @ BlobError::Io { .. }) => return BlobOutcome::Corrupt(format!("unreadable: {e}")),
    };
    judge_sound_bytes(id, &bytes, expects)
}

/// Judges an inline blob's bytes like a file's: first that they hash to `id`.
fn judge_bytes(id: &BlobId, bytes: &[u8], expects: &[Expect]) -> BlobOutcome {
    match blob::verify(id, bytes) {
        Ok(()) => judge_sound_bytes(id, bytes, expects),
        Err(BlobError::Corrupt { detail, .. }) => {
            BlobOutcome::Corrupt(format!("stored inline: {detail}"))
        }
        Err(e) => BlobOutcome::Corrupt(e.to_string()),
    }
}

/// Size and integrity checks of bytes that hash to `id`.
fn judge_sound_bytes(id: &BlobId, bytes: &[u8], expects: &[Expect]) -> BlobOutcome {
    let computed = integrity::compute(bytes);
    let size = bytes.len() as u64;
    let mut problems = Vec::new();
    for (index, expect) in expects.iter().enumerate() {
        if let Some(indexed) = expect.size.filter(|s| *s != size) {
            let detail = format!("the tarball index says {indexed} bytes, blob {id} has {size}");
            problems.push((index, CorruptPackage, detail));
        }
        let claimed = (expect.integrity.as_deref(), expect.shasum.as_deref());
        if let Err(e) = integrity::verify(&computed, bytes, claimed.0, claimed.1) {
            problems.push((index, IntegrityMismatch, format!("{e} (blob {id})")));
        }
    }
    BlobOutcome::Sound { size, problems }
}

fn judge_blob(id: &BlobId, expects: &[Expect], outcome: BlobOutcome, report: &mut Report) {
    report.checked.blobs += 1;
    let who = || {
        let mut names: Vec<&str> = expects.iter().map(|e| e.who.as_str()).collect();
        let more = names.len().saturating_sub(WHO_LISTED_MAX);
        names.truncate(WHO_LISTED_MAX);
        let mut out = format!("referenced by {}", names.join(", "));
        if more > 0 {
            let _ = write!(out, " and {more} more");
        }
        out
    };
    match outcome {
        BlobOutcome::Missing => {
            let detail = format!("the blob is not in the store; {}", who());
            report.push(MissingBlob, id.to_hex(), detail);
        }
        BlobOutcome::Corrupt(detail) => {
            let detail = format!("{detail}; {}", who());
            report.push(CorruptBlob, id.to_hex(), detail);
        }
        BlobOutcome::Sound { size, problems } => {
            report.checked.blob_bytes += size;
            for (index, kind, detail) in problems {
                report.push(kind, expects[index].who.clone(), detail);
            }
        }
    }
}

/// Lists unreferenced blobs as findings; returns those repair may delete. An orphan whose
/// content matches a version whose blob is missing is kept: the tarball index may name the
/// wrong blob (damaged metadata), and this file may be the version's real tarball.
pub(super) fn find_orphans(
    ctx: &Ctx<'_>,
    listed: &[BlobId],
    missing: &[BlobId],
    scan: &Scan,
    report: &mut Report,
) -> Vec<(BlobId, usize)> {
    if !scan.complete {
        report.notes.push(
            "orphan blobs were not looked for: a shard or a package record could not be read, \
             so what it references is unknown"
                .into(),
        );
        return Vec::new();
    }
    let mut orphans = Vec::new();
    let mut young = 0u64;
    for id in listed.iter().filter(|id| !scan.refs.contains_key(id)) {
        let path = ctx.blobs.path_of(id);
        if ctx.is_young(&path) {
            young += 1;
            continue;
        }
        let size = fs::metadata(&path).map_or(0, |m| m.len());
        let mut detail = format!("{size} bytes, named by no version and no served record");
        let lost = lost_tarball_of(ctx.blobs, id, missing, scan);
        if let Some(who) = &lost {
            let _ = write!(
                detail,
                "; its content matches {who}, whose blob is missing: kept, the tarball index \
                 may name the wrong blob"
            );
        }
        let index = report.push(OrphanBlob, id.to_hex(), detail);
        if lost.is_none() {
            orphans.push((*id, index));
        }
    }
    if young > 0 {
        report.notes.push(format!(
            "{young} unreferenced blobs younger than {}s were left alone (publishes in flight?)",
            ONLINE_GRACE.as_secs()
        ));
    }
    orphans
}

/// The version (among those whose blob is missing) whose integrity blob `id`'s content has.
fn lost_tarball_of(
    blobs: &BlobStore,
    id: &BlobId,
    missing: &[BlobId],
    scan: &Scan,
) -> Option<String> {
    if missing.is_empty() {
        return None;
    }
    let bytes = blobs.read(id).ok()?;
    lost_tarball_in(&bytes, missing, scan)
}

/// The version (among those whose blob is missing) whose integrity `bytes` have.
fn lost_tarball_in(bytes: &[u8], missing: &[BlobId], scan: &Scan) -> Option<String> {
    let computed = integrity::compute(bytes);
    missing
        .iter()
        .filter_map(|m| scan.refs.get(m))
        .flatten()
        .find(|e| {
            let claim = e.integrity.as_deref();
            claim.is_some() && integrity::verify(&computed, bytes, claim, None).is_ok()
        })
        .map(|e| e.who.clone())
}

/// Lists the inline blobs their shard does not name as findings; returns those repair may
/// delete (view index, where the shard keeps it, finding index). As with files, an orphan whose content matches a
/// version whose blob is missing is kept.
pub(super) fn find_inline_orphans(
    ctx: &Ctx<'_>,
    missing: &[BlobId],
    scan: &Scan,
    report: &mut Report,
) -> Vec<(usize, InlineKey, usize)> {
    let mut orphans = Vec::new();
    for orphan in &scan.inline_orphans {
        let shard = &ctx.shards[orphan.view];
        let place = match orphan.key {
            InlineKey::Row(row) => format!(" (row {row})"),
            InlineKey::Id(_) => String::new(),
        };
        let mut detail = format!(
            "{} bytes stored inline in shard {}{place}, named by no version and no served \
             record of that shard",
            orphan.size, shard.id.0
        );
        if let Some(corrupt) = &orphan.corrupt {
            let _ = write!(detail, "; its bytes are corrupt: {corrupt}");
        }
        let lost = if orphan.corrupt.is_none() && !missing.is_empty() {
            read_inline(shard, orphan.key).and_then(|bytes| lost_tarball_in(&bytes, missing, scan))
        } else {
            None
        };
        if let Some(who) = &lost {
            let _ = write!(
                detail,
                "; its content matches {who}, whose blob is missing: kept, the tarball index \
                 may name the wrong blob"
            );
        }
        let index = report.push(OrphanBlob, orphan.id.to_hex(), detail);
        if lost.is_none() {
            orphans.push((orphan.view, orphan.key, index));
        }
    }
    orphans
}

/// The bytes of the inline blob at `key` in `shard`, if it can be read.
fn read_inline(shard: &ShardView<'_>, key: InlineKey) -> Option<Vec<u8>> {
    let txn = shard.db.begin_read().ok()?;
    read_inline_at(&txn, key).ok()?
}

pub(super) fn find_temp_files(ctx: &Ctx<'_>, report: &mut Report) -> Vec<(PathBuf, usize)> {
    let mut found = Vec::new();
    let mut candidates: Vec<PathBuf> = match fs::read_dir(ctx.blobs.tmp_dir()) {
        Ok(entries) => entries.filter_map(|e| Some(e.ok()?.path())).collect(),
        Err(_) => Vec::new(),
    };
    candidates.sort();
    candidates.push(ctx.data.home().join("format.json.tmp"));
    let own_prefix = format!("{}-", std::process::id());
    let mut skipped = 0u64;
    for path in candidates {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let own = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&own_prefix));
        if ctx.online && (own || ctx.is_young(&path)) {
            skipped += 1;
            continue;
        }
        let detail = format!("{} bytes, left by an interrupted write", meta.len());
        found.push((
            path.clone(),
            report.push(TempFile, path.display().to_string(), detail),
        ));
    }
    if skipped > 0 {
        report.notes.push(format!(
            "{skipped} temp files of the running server or younger than {}s were left alone",
            ONLINE_GRACE.as_secs()
        ));
    }
    found
}
