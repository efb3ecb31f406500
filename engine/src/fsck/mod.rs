//! fsck: verifies a data directory and, when asked, repairs what is safe to repair.
//!
//! What is checked:
//! - `format.json` names this build's format (otherwise nothing else is touched);
//! - every redb file (shards, `auth.redb`) passes redb's integrity check: offline only, as
//!   the check needs the file to itself;
//! - per shard, in one MVCC read transaction: every package record decodes, and its
//!   `versions` and tarball index agree; its served record is exactly what rendering the
//!   package for the shard's base URL gives (same rev, same bytes); `revs` holds its rev; no
//!   served record or rev exists without a live package; every manifest row is one its
//!   package's record keeps in a row;
//! - every blob a version or a served record names exists (inline in the package's shard, or
//!   as a file), hashes to its blake3 name, has the indexed size, and matches the version's
//!   `dist.integrity` and `dist.shasum`. Inline blobs are checked in the shard's read
//!   transaction, so a concurrent unpublish (which removes both the version and its inline
//!   blob in one commit) is never seen half done;
//! - no blob is unreferenced (an orphan): a file named by no version and no served record of
//!   any shard, or an inline blob named by none of its own shard; no temp file is left in
//!   `blobs/tmp`;
//! - both slots of the config record decode and agree.
//!
//! Repair (`repair: true`) does only what cannot lose data, and says on each finding what it
//! did: it re-renders stale served records and rebuilds `revs` and manifest rows from the
//! package records (one write transaction per shard, re-reading every package inside it),
//! deletes temp files and orphan blobs, and rewrites a bad config slot from the good one. It
//! never deletes a package record or a referenced blob: a missing or corrupt referenced
//! blob, a corrupt package record and redb corruption are reported, never "repaired" away.
//!
//! Inline orphans are deleted per shard, in a write transaction that re-reads that shard's
//! references and commits the deletion: an inline blob is written in the same transaction as
//! the version naming it, so no age rule is needed, and redb serializes the deletion with the
//! shard's writer.
//!
//! File orphans are deleted only when every shard and every package record could be read, and
//! only behind a write barrier: fsck takes every shard's write transaction, so no writer is between
//! writing (or finding) a blob and committing the metadata that names it (`apply_batch` begins
//! its transaction before it touches blobs), re-reads every reference inside those
//! transactions, deletes the candidates still unreferenced, and aborts the transactions.
//! Online (inside a running server), blobs and temp files younger than `ONLINE_GRACE` and temp
//! files of the server's own process are left alone: they may belong to a publish in flight.
//!
//! Online repairs commit outside the shard's writer thread (redb serializes the write
//! transactions) and leave the shard's commit generation alone: a core that cached a stale but
//! decodable served record keeps it until the package next changes or the server restarts (a
//! record that does not decode is never cached, so its repair shows at once). Deleting orphans
//! online holds every shard's writes for one pass over every package record.
//!
//! Entry points: `check` runs inside the server over its open stores; `check_offline` opens a
//! data directory whose server is stopped (redb's exclusive lock refuses it otherwise, which
//! is reported as `FsckError::Locked` so the CLI can ask the server instead).

mod config;
mod repair;
mod report;
mod scan;

pub use report::{Checked, Finding, FindingKind, Phase, Progress, Report};

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redb::{Database, ReadableDatabase, TableHandle};
use serde_json::Value;

use crate::blob::{BlobError, BlobId, BlobStore};
use crate::data_dir::{DataDir, OpenError, FORMAT_VERSION, FORMAT_VERSION_MIN};
use crate::shard::tables::InlineKey;
use crate::shard::{ShardId, ShardStore};
use FindingKind::{FormatBad, RedbCorrupt};

use config::{check_config, repair_config};
use repair::{repair_inline_orphans, repair_orphans, repair_served, repair_temp_files};
use scan::{check_blobs, find_inline_orphans, find_orphans, find_temp_files, scan_metadata};

pub(crate) use repair::{collect_references, Named};

/// Online, unreferenced blobs and temp files younger than this may belong to a publish in
/// flight (written, not yet committed), so they are neither reported nor deleted.
pub const ONLINE_GRACE: Duration = Duration::from_secs(600);
/// redb page cache while fsck or backup has a file open.
pub(crate) const REDB_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Why an offline check could not run at all. Problems in the data are findings, not errors.
#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    #[error(
        "{} is open in another process (is an agentregistry server running on this home?)",
        .path.display()
    )]
    Locked { path: PathBuf },
    #[error("{} is not an AgentRegistry data directory: {detail}", .home.display())]
    NotADataDir { home: PathBuf, detail: String },
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// Why a redb file could not be opened for fsck or backup.
#[derive(Debug)]
pub(crate) enum RedbOpenFailure {
    /// Another process has it open (a running server).
    Locked,
    /// The file fails redb's integrity check or cannot be read; the message says how.
    Corrupt(String),
}

/// Checks a data directory inside a running server, over the stores it has open.
/// redb page checksums are not verified (that needs each file to itself: run offline).
/// Blocks: reads every blob; fsync when repairing.
pub fn check(
    data: &DataDir,
    shards: &[&ShardStore],
    blobs: &BlobStore,
    repair: bool,
    progress: &mut dyn FnMut(Progress),
) -> Report {
    let mut report = Report::new(data.home(), true, repair);
    report.notes.push(
        "redb page checksums were not verified: the server holds the files; stop it and run \
         `agentregistry fsck` for that check"
            .into(),
    );
    let views = shards
        .iter()
        .map(|s| ShardView {
            id: s.id(),
            path: data.shard_path(s.id()),
            db: s.database(),
            base_url: Some(s.base_url().to_owned()),
            store: Some(*s),
        })
        .collect();
    let ctx = Ctx {
        data,
        shards: views,
        blobs,
        repair,
        online: true,
        all_shards_open: true,
        started: SystemTime::now(),
    };
    run(&ctx, &mut report, progress);
    report
}

/// Checks (and with `repair`, repairs) the data directory at `home`, whose server must be
/// stopped: every redb file is opened exclusively, and integrity-checked by redb.
/// Opening a file with redb's check commits redb's own allocator state; no table changes.
/// Blocks: reads every file; fsync.
///
/// # Errors
/// `Locked` when a server has the files open; `NotADataDir`; I/O errors opening the directory.
pub fn check_offline(
    home: &Path,
    repair: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<Report, FsckError> {
    let mut report = Report::new(home, false, repair);
    let Some(data) = open_data_dir(home, &mut report)? else {
        return Ok(report);
    };
    let count = data.shard_count();
    let mut dbs: Vec<(ShardId, Option<Database>)> = Vec::with_capacity(usize::from(count));
    for index in 0..count {
        let id = ShardId(index);
        progress(Progress {
            phase: Phase::Open,
            done: u64::from(index),
            total: u64::from(count) + 1,
        });
        dbs.push((id, open_for_check(&data.shard_path(id), &mut report)?));
    }
    drop(open_for_check(&data.auth_path(), &mut report)?);
    let blobs = BlobStore::attach(&data.blobs_path());
    let all_shards_open = dbs.iter().all(|(_, db)| db.is_some());
    let mut views = Vec::with_capacity(dbs.len());
    for (id, db) in &dbs {
        let Some(db) = db else { continue };
        let base_url = read_base_url(db);
        views.push(ShardView {
            id: *id,
            path: data.shard_path(*id),
            db,
            base_url,
            store: None,
        });
    }
    let ctx = Ctx {
        data: &data,
        shards: views,
        blobs: &blobs,
        repair,
        online: false,
        all_shards_open,
        started: SystemTime::now(),
    };
    run(&ctx, &mut report, progress);
    Ok(report)
}

/// Reads `format.json` and opens the directory, or records why it cannot be checked.
fn open_data_dir(home: &Path, report: &mut Report) -> Result<Option<DataDir>, FsckError> {
    if !home.is_dir() {
        return Err(FsckError::NotADataDir {
            home: home.to_path_buf(),
            detail: "no such directory".into(),
        });
    }
    match read_format(home) {
        Ok(count) => Ok(Some(DataDir::open_or_create(home, u32::from(count))?)),
        Err(detail) => {
            report.push(FormatBad, "format.json", detail);
            report.notes.push(
                "nothing else was checked: without a valid format.json the layout is unknown"
                    .into(),
            );
            Ok(None)
        }
    }
}

/// Opens a redb file for fsck; a file that cannot be opened becomes a finding.
fn open_for_check(path: &Path, report: &mut Report) -> Result<Option<Database>, FsckError> {
    if !path.exists() {
        report.push(
            RedbCorrupt,
            path.display().to_string(),
            "the file is missing".into(),
        );
        return Ok(None);
    }
    match open_checked(path) {
        Ok(db) => Ok(Some(db)),
        Err(RedbOpenFailure::Locked) => Err(FsckError::Locked {
            path: path.to_path_buf(),
        }),
        Err(RedbOpenFailure::Corrupt(detail)) => {
            report.push(RedbCorrupt, path.display().to_string(), detail);
            Ok(None)
        }
    }
}

/// Opens an existing redb file exclusively and runs redb's integrity check on it (every page
/// checksum of the committed trees). A newest commit that fails its checksums is refused, not
/// rolled back: redb cannot tell a commit torn by a crash from a damaged one, and rolling a
/// damaged durable commit back would lose acknowledged writes. (A server start rolls a torn
/// commit back; an acknowledged write is never in one, as it is acknowledged after the commit.)
/// Every commit this build makes is two-phase (`shard::begin_durable_write`), so a killed
/// process cannot leave a torn one; such a finding then points at damage, or at a file last
/// written by an older build.
pub(crate) fn open_checked(path: &Path) -> Result<Database, RedbOpenFailure> {
    let rollback = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&rollback);
    let opened = redb::Builder::new()
        .set_cache_size(REDB_CACHE_BYTES)
        .set_check_integrity_on_open(true)
        .set_repair_callback(move |session| {
            // redb reports 0.3 only on its path that falls back to the previous commit.
            let p = session.progress();
            if p > 0.2 && p < 0.5 {
                seen.store(true, Ordering::Relaxed);
                session.abort();
            }
        })
        .open(path);
    match opened {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(RedbOpenFailure::Locked),
        Err(redb::DatabaseError::RepairAborted) if rollback.load(Ordering::Relaxed) => {
            Err(RedbOpenFailure::Corrupt(
                "the newest commit fails its checksums (a crash during a commit, or damage); \
                 redb would roll back to the previous commit: not done by fsck. Starting the \
                 server performs that rollback; restore from a backup if data was acknowledged"
                    .into(),
            ))
        }
        Err(e) => Err(RedbOpenFailure::Corrupt(format!(
            "redb refuses the file: {e}; the server will not serve from it: restore from a \
             backup"
        ))),
    }
}

fn read_base_url(db: &Database) -> Option<String> {
    let txn = db.begin_read().ok()?;
    let meta = txn.open_table(ShardStore::TABLE_META).ok()?;
    let value = meta.get(ShardStore::META_KEY_BASE_URL).ok()??;
    String::from_utf8(value.value().to_vec()).ok()
}

/// The shard count `format.json` declares, or why it cannot be trusted.
pub(crate) fn read_format(home: &Path) -> Result<u16, String> {
    let path = home.join("format.json");
    let bytes = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    if value.get("format").and_then(Value::as_str) != Some("agentregistry") {
        return Err(format!("not an AgentRegistry format file: {value}"));
    }
    let version = value.get("format_version").and_then(Value::as_u64);
    if !version
        .is_some_and(|v| (u64::from(FORMAT_VERSION_MIN)..=u64::from(FORMAT_VERSION)).contains(&v))
    {
        return Err(format!(
            "format_version is {version:?}, this build reads versions {FORMAT_VERSION_MIN} to \
             {FORMAT_VERSION}"
        ));
    }
    value
        .get("shard_count")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (1..=1024).contains(c))
        .ok_or_else(|| format!("shard_count is not between 1 and 1024: {value}"))
}

/// One shard as fsck sees it.
struct ShardView<'a> {
    id: ShardId,
    path: PathBuf,
    db: &'a Database,
    /// The URL served records must be rendered for (`None`: unknown, not compared).
    base_url: Option<String>,
    /// The live store when fsck runs inside the server (its caches must learn of repairs).
    store: Option<&'a ShardStore>,
}

struct Ctx<'a> {
    data: &'a DataDir,
    shards: Vec<ShardView<'a>>,
    blobs: &'a BlobStore,
    repair: bool,
    online: bool,
    /// Every shard file opened; otherwise nothing can be proven unreferenced.
    all_shards_open: bool,
    started: SystemTime,
}

impl Ctx<'_> {
    /// Online, a file modified within `ONLINE_GRACE` may belong to a write in flight.
    fn is_young(&self, path: &Path) -> bool {
        if !self.online {
            return false;
        }
        let Some(cutoff) = self.started.checked_sub(ONLINE_GRACE) else {
            return true;
        };
        fs::metadata(path)
            .and_then(|m| m.modified())
            .map_or(true, |m| m > cutoff)
    }
}

/// A version's (or served record's) expectations of a blob.
struct Expect {
    who: String,
    integrity: Option<String>,
    shasum: Option<String>,
    size: Option<u64>,
}

/// What the metadata pass found that later passes and repairs need.
#[derive(Default)]
struct Scan {
    refs: BTreeMap<BlobId, Vec<Expect>>,
    /// Blobs the shard being scanned names (cleared per shard).
    shard_refs: BTreeSet<BlobId>,
    /// Inline rows the shard being scanned names, with the blob each must hold (cleared per
    /// shard).
    shard_rows: BTreeMap<u64, BlobId>,
    /// Referenced blobs found inline in the shard that names them, judged in that shard's
    /// read transaction; `check_blobs` reports these instead of reading a file.
    inline: BTreeMap<BlobId, scan::BlobOutcome>,
    /// Inline blobs their shard does not name.
    inline_orphans: Vec<InlineOrphan>,
    /// Per shard view: package name -> indices of its findings that a re-render fixes.
    fixes: Vec<BTreeMap<String, Vec<usize>>>,
    /// Every shard and package record was read: only then can a blob be called unreferenced.
    complete: bool,
}

/// An inline blob no version and no served record of its shard names.
struct InlineOrphan {
    /// Index into `Ctx::shards`.
    view: usize,
    /// Where the shard keeps it.
    key: InlineKey,
    /// The id it is stored under, or (a row) the blake3 of its bytes.
    id: BlobId,
    size: u64,
    /// Why its bytes do not hash to its id, when they do not.
    corrupt: Option<String>,
}

fn run(ctx: &Ctx<'_>, report: &mut Report, progress: &mut dyn FnMut(Progress)) {
    // Listing blobs before the metadata snapshots means that any listed blob committed
    // before the snapshots is seen as referenced.
    let listed = match ctx.blobs.list() {
        Ok(listed) => Some(listed),
        Err(BlobError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Some(Vec::new())
        }
        Err(e) => {
            report
                .notes
                .push(format!("blobs were not listed ({e}): orphans not checked"));
            None
        }
    };
    let mut scan = scan_metadata(ctx, report, progress);
    scan.complete &= ctx.all_shards_open && listed.is_some();
    let inline = std::mem::take(&mut scan.inline);
    let missing = check_blobs(ctx, &scan.refs, inline, report, progress);
    let orphans = match &listed {
        Some(listed) => find_orphans(ctx, listed, &missing, &scan, report),
        None => Vec::new(),
    };
    let inline_orphans = find_inline_orphans(ctx, &missing, &scan, report);
    let temps = find_temp_files(ctx, report);
    let config_fix = check_config(&ctx.data.config_path(), report);
    if !ctx.repair {
        return;
    }
    progress(Progress {
        phase: Phase::Repair,
        done: 0,
        total: 1,
    });
    repair_served(ctx, &scan, report);
    repair_temp_files(&temps, report);
    repair_orphans(ctx, &orphans, report);
    repair_inline_orphans(ctx, &inline_orphans, report);
    if let Some(fix) = config_fix {
        repair_config(&ctx.data.config_path(), &fix, report);
    }
    progress(Progress {
        phase: Phase::Repair,
        done: 1,
        total: 1,
    });
}

/// True when a redb file is held open by another process. Opens read-only and changes
/// nothing; a file that cannot be opened for other reasons is not "locked".
pub(crate) fn is_locked(path: &Path) -> bool {
    matches!(
        redb::Builder::new()
            .set_cache_size(1024 * 1024)
            .open_read_only(path),
        Err(redb::DatabaseError::DatabaseAlreadyOpen)
    )
}

/// Names of the tables in a redb read transaction (to refuse copying unknown ones).
pub(crate) fn table_names(txn: &redb::ReadTransaction) -> Result<Vec<String>, redb::Error> {
    Ok(txn.list_tables()?.map(|t| t.name().to_owned()).collect())
}
