//! Backup and restore of a data directory.
//!
//! A backup is a directory `DEST/backup-<UTC timestamp>` laid out like a data directory:
//!   backup.json        manifest: {"format":"agentregistry-backup", counts, damaged blobs}
//!   format.json        copied as is
//!   config.bin         copied as is, under a shared lock (no config write interleaves)
//!   auth.redb          a fresh redb file holding one read transaction's view of auth.redb
//!   shards/NNN.redb    a fresh redb file per shard, holding one read transaction's view
//!                      (inline tarballs included: they are a table of the shard)
//!   blobs/             every blob file the shard snapshots reference, verified while copied
//!
//! Consistency: each shard is copied table by table from ONE read transaction, so each shard
//! copy is a committed state. Blobs are immutable and durable before the metadata naming them
//! commits, so every blob the snapshots reference exists when it is copied AFTER the read
//! transactions were taken: the backup is self-consistent while the server keeps writing.
//! The backup is written into `DEST/tmp-<timestamp>`, fsynced, and renamed to its final name
//! only when complete; the rename is then made durable.
//!
//! Restore copies a backup into a staging directory beside the home, verifies the staging
//! copy with fsck, and only then moves it into place. A non-empty home is refused unless
//! forced; even then it is not deleted but renamed to `<home>.pre-restore-<timestamp>`.
//! A home whose redb files are held open (a running server) is always refused.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use redb::{Database, ReadTransaction, ReadableDatabase, TableDefinition, TableError};
use serde::{Deserialize, Serialize};

use crate::auth::{AuthStore, TOKENS, USERS};
use crate::blob::{create_dir_durable, sync_dir, BlobError, BlobId, BlobStore};
use crate::data_dir::{DataDir, OpenError};
use crate::fsck::{self, FsckError, Phase, Progress, RedbOpenFailure, Report};
use crate::shard::{ShardId, ShardStore};

/// The manifest's `format` value.
const MANIFEST_FORMAT: &str = "agentregistry-backup";
const MANIFEST_FILE: &str = "backup.json";
const MANIFEST_VERSION: u32 = 1;
/// Tables a shard file may hold; any other table stops the backup rather than being lost.
/// `doc_full` and `doc_abbr` are only in a shard of served format 5 that this build has not
/// opened yet; they are not copied (opening the restored shard renders its documents again).
const SHARD_TABLES: [&str; 13] = [
    "packages",
    "manifests",
    "served",
    "doc_full",
    "doc_full_gz",
    "doc_full_gz_segments",
    "doc_abbr",
    "doc_abbr_gz",
    "doc_abbr_gz_segments",
    "revs",
    "meta",
    "blob_inline",
    "inline_rows",
];
/// Tables `auth.redb` may hold.
const AUTH_TABLES: [&str; 2] = ["users", "tokens"];

/// What a backup holds (also its manifest, `backup.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    pub format: String,
    pub format_version: u32,
    /// The backup directory.
    pub path: PathBuf,
    /// RFC 3339, UTC.
    pub created: String,
    pub source_home: PathBuf,
    pub shard_count: u16,
    pub packages: u64,
    /// Referenced blobs copied: files, and tarballs stored inline in the shard copies.
    pub blobs: u64,
    pub blob_bytes: u64,
    /// Referenced blobs that could not be copied (missing or corrupt in the source), with why.
    pub damaged_blobs: Vec<String>,
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSummary {
    pub home: PathBuf,
    /// Where the home's previous contents were moved (`--force` on a non-empty home).
    pub previous: Option<PathBuf>,
    /// fsck of the restored data, taken before it was moved into place.
    pub report: Report,
}

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "{} is open in another process (is an agentregistry server running on this home?)",
        .path.display()
    )]
    Locked { path: PathBuf },
    #[error(
        "{} is held open by a running agentregistry server: stop the server before restoring",
        .path.display()
    )]
    ServerRunning { path: PathBuf },
    #[error("{} is not an AgentRegistry data directory: {detail}", .home.display())]
    NotADataDir { home: PathBuf, detail: String },
    #[error("{} is not an AgentRegistry backup: {detail}", .path.display())]
    NotABackup { path: PathBuf, detail: String },
    #[error(
        "{} is not empty: restore into an empty or new directory, or pass --force (the current \
         contents are then moved aside, not deleted)",
        .home.display()
    )]
    HomeNotEmpty { home: PathBuf },
    #[error("{} is corrupt: {detail}", .path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "{} holds table {table:?}, which this build does not know how to back up",
        .path.display()
    )]
    UnknownTable { path: PathBuf, table: String },
    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{}: {source}", .path.display())]
    Storage { path: PathBuf, source: redb::Error },
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Fsck(#[from] FsckError),
    #[error(
        "the restored copy at {} failed verification ({} findings); the home was not touched:\n{}",
        .staged.display(),
        .report.findings.len(),
        .report.render_text()
    )]
    Verify {
        staged: PathBuf,
        report: Box<Report>,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Io { op, path, source }
}

fn storage_err(path: &Path) -> impl FnOnce(redb::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Storage { path, source }
}

/// The stores a backup reads.
struct Sources<'a> {
    data: &'a DataDir,
    shards: Vec<(ShardId, &'a Database)>,
    auth: &'a Database,
    blobs: &'a BlobStore,
}

/// Takes a consistent backup of a running server's stores into `dest/backup-<timestamp>`.
/// Blocks: reads every referenced blob; fsync.
///
/// # Errors
/// I/O and storage errors; an unknown table. Missing or corrupt source blobs are not errors:
/// the backup completes and lists them in `damaged_blobs`.
pub fn backup(
    data: &DataDir,
    shards: &[&ShardStore],
    blobs: &BlobStore,
    auth: &AuthStore,
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<BackupSummary, BackupError> {
    let sources = Sources {
        data,
        shards: shards.iter().map(|s| (s.id(), s.database())).collect(),
        auth: auth.database(),
        blobs,
    };
    write_backup(&sources, dest, progress)
}

/// Backs up the data directory at `home`, whose server must be stopped.
///
/// # Errors
/// `Locked` when a server holds the files; a redb file that fails its integrity check
/// (`Corrupt`); the errors of `backup`.
pub fn backup_offline(
    home: &Path,
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<BackupSummary, BackupError> {
    let count = fsck::read_format(home).map_err(|detail| BackupError::NotADataDir {
        home: home.to_path_buf(),
        detail,
    })?;
    let data = DataDir::open_or_create(home, u32::from(count))?;
    let mut shard_dbs = Vec::with_capacity(usize::from(count));
    for index in 0..count {
        let id = ShardId(index);
        shard_dbs.push((id, open_source(&data.shard_path(id))?));
    }
    let auth = open_source(&data.auth_path())?;
    let blobs = BlobStore::attach(&data.blobs_path());
    let sources = Sources {
        data: &data,
        shards: shard_dbs.iter().map(|(id, db)| (*id, db)).collect(),
        auth: &auth,
        blobs: &blobs,
    };
    write_backup(&sources, dest, progress)
}

fn open_source(path: &Path) -> Result<Database, BackupError> {
    fsck::open_checked(path).map_err(|failure| match failure {
        RedbOpenFailure::Locked => BackupError::Locked {
            path: path.to_path_buf(),
        },
        RedbOpenFailure::Corrupt(detail) => BackupError::Corrupt {
            path: path.to_path_buf(),
            detail,
        },
    })
}

/// UTC `YYYYMMDDTHHMMSSmmmZ`: sorts by time, safe in a file name.
fn timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect()
}

fn write_backup(
    src: &Sources<'_>,
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<BackupSummary, BackupError> {
    create_dir_durable(dest).map_err(io_err("create", dest))?;
    let stamp = timestamp();
    let staging = dest.join(format!("tmp-{stamp}"));
    let final_path = dest.join(format!("backup-{stamp}"));
    fs::create_dir(&staging).map_err(io_err("create", &staging))?;
    let written = fill_backup(src, &staging, &final_path, progress).and_then(|summary| {
        fs::rename(&staging, &final_path).map_err(io_err("rename", &staging))?;
        sync_dir(dest).map_err(io_err("fsync", dest))?;
        Ok(summary)
    });
    if written.is_err() {
        // Only our own partial copy: removing it cannot touch the source.
        let _ = fs::remove_dir_all(&staging);
    }
    written
}

/// Writes the whole backup into `staging` (durably), to be renamed to `final_path`.
fn fill_backup(
    src: &Sources<'_>,
    staging: &Path,
    final_path: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<BackupSummary, BackupError> {
    let shards_dir = staging.join("shards");
    fs::create_dir(&shards_dir).map_err(io_err("create", &shards_dir))?;
    // Every snapshot is taken before any blob is copied (see the top of this file).
    let mut snapshots = Vec::with_capacity(src.shards.len());
    for (id, db) in &src.shards {
        let path = src.data.shard_path(*id);
        let snapshot = db.begin_read().map_err(|e| storage_err(&path)(e.into()))?;
        snapshots.push((*id, path, snapshot));
    }
    let auth_path = src.data.auth_path();
    let auth_snapshot = src
        .auth
        .begin_read()
        .map_err(|e| storage_err(&auth_path)(e.into()))?;
    let mut referenced = BTreeSet::new();
    let mut packages = 0u64;
    let mut inline = InlineCopied::default();
    let total_tables = snapshots.len() as u64 + 1;
    for (done, (_, path, snapshot)) in (0..).zip(&snapshots) {
        progress(Progress {
            phase: Phase::Copy,
            done,
            total: total_tables,
        });
        let name = path.file_name().ok_or_else(|| BackupError::NotADataDir {
            home: src.data.home().to_path_buf(),
            detail: format!("shard path {} has no file name", path.display()),
        })?;
        packages += copy_shard(
            snapshot,
            path,
            &shards_dir.join(name),
            &mut referenced,
            &mut inline,
        )?;
    }
    copy_auth(&auth_snapshot, &auth_path, &staging.join("auth.redb"))?;
    drop((snapshots, auth_snapshot));
    copy_file_durable(
        &src.data.home().join("format.json"),
        &staging.join("format.json"),
    )?;
    copy_config(&src.data.config_path(), &staging.join("config.bin"))?;
    let (blob_bytes, damaged_blobs) = copy_blobs(src.blobs, &referenced, staging, progress)?;
    let summary = BackupSummary {
        format: MANIFEST_FORMAT.into(),
        format_version: MANIFEST_VERSION,
        path: final_path.to_path_buf(),
        created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        source_home: src.data.home().to_path_buf(),
        shard_count: src.data.shard_count(),
        packages,
        blobs: referenced.len() as u64 - damaged_blobs.len() as u64 + inline.count,
        blob_bytes: blob_bytes + inline.bytes,
        damaged_blobs,
    };
    write_manifest(staging, &summary)?;
    sync_dir(&shards_dir).map_err(io_err("fsync", &shards_dir))?;
    sync_dir(staging).map_err(io_err("fsync", staging))?;
    Ok(summary)
}

/// Referenced tarballs copied with the shard files, inline.
#[derive(Default)]
struct InlineCopied {
    count: u64,
    bytes: u64,
}

/// Copies one shard snapshot into a fresh redb file; returns its package count, adds the blob
/// files it references to `referenced` and counts the referenced blobs it holds inline (those
/// are copied with the shard, so they are not looked for in the blob store).
fn copy_shard(
    snapshot: &ReadTransaction,
    source: &Path,
    target: &Path,
    referenced: &mut BTreeSet<BlobId>,
    inline: &mut InlineCopied,
) -> Result<u64, BackupError> {
    check_tables(snapshot, source, &SHARD_TABLES)?;
    let storage = |e: redb::Error| storage_err(source)(e);
    let db = create_target(target)?;
    let txn = db
        .begin_write()
        .map_err(|e| storage_err(target)(e.into()))?;
    let copied = copy_table(snapshot, &txn, ShardStore::TABLE_PACKAGES)
        .and_then(|()| copy_table(snapshot, &txn, ShardStore::TABLE_MANIFESTS))
        .and_then(|()| copy_table(snapshot, &txn, ShardStore::TABLE_SERVED))
        .and_then(|()| {
            ShardStore::TABLE_DOCS
                .into_iter()
                .try_for_each(|table| copy_table(snapshot, &txn, table))
        })
        .and_then(|()| {
            ShardStore::TABLE_DOC_SEGMENTS
                .into_iter()
                .try_for_each(|table| copy_table(snapshot, &txn, table))
        })
        .and_then(|()| copy_table(snapshot, &txn, ShardStore::TABLE_REVS))
        .and_then(|()| copy_table(snapshot, &txn, ShardStore::TABLE_META))
        .and_then(|()| copy_table(snapshot, &txn, ShardStore::TABLE_BLOB_INLINE))
        .and_then(|()| copy_table(snapshot, &txn, ShardStore::TABLE_INLINE_ROWS));
    copied.map_err(storage_err(target))?;
    txn.commit().map_err(|e| storage_err(target)(e.into()))?;
    let packages = match snapshot.open_table(ShardStore::TABLE_PACKAGES) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(storage(e.into())),
    };
    let served = snapshot
        .open_table(ShardStore::TABLE_SERVED)
        .map_err(|e| storage(e.into()))?;
    // A record that does not decode is copied as it is; restore's fsck reports it.
    let mut named = fsck::Named::default();
    fsck::collect_references(&packages, &served, &mut named).map_err(|e| storage(e.into()))?;
    // Inline tarballs are not looked for in the blob store; restore's fsck verifies them.
    let mut ids = named.ids;
    match snapshot.open_table(ShardStore::TABLE_INLINE_ROWS) {
        Ok(table) => {
            for (row, id) in &named.rows {
                if let Some(value) = table.get(row).map_err(|e| storage(e.into()))? {
                    if ids.remove(id) {
                        inline.count += 1;
                        inline.bytes += value.value().len() as u64;
                    }
                }
            }
        }
        Err(TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(storage(e.into())),
    }
    match snapshot.open_table(ShardStore::TABLE_BLOB_INLINE) {
        Ok(table) => {
            for id in ids {
                if let Some(value) = table.get(&id.0).map_err(|e| storage(e.into()))? {
                    inline.count += 1;
                    inline.bytes += value.value().len() as u64;
                    continue;
                }
                referenced.insert(id);
            }
        }
        Err(TableError::TableDoesNotExist(_)) => referenced.extend(ids),
        Err(e) => return Err(storage(e.into())),
    }
    redb::ReadableTableMetadata::len(&packages).map_err(|e| storage(e.into()))
}

fn copy_auth(snapshot: &ReadTransaction, source: &Path, target: &Path) -> Result<(), BackupError> {
    check_tables(snapshot, source, &AUTH_TABLES)?;
    let db = create_target(target)?;
    let txn = db
        .begin_write()
        .map_err(|e| storage_err(target)(e.into()))?;
    copy_table(snapshot, &txn, USERS)
        .and_then(|()| copy_table(snapshot, &txn, TOKENS))
        .map_err(storage_err(target))?;
    txn.commit().map_err(|e| storage_err(target)(e.into()))
}

fn create_target(path: &Path) -> Result<Database, BackupError> {
    redb::Builder::new()
        .set_cache_size(fsck::REDB_CACHE_BYTES)
        .create(path)
        .map_err(|e| storage_err(path)(e.into()))
}

/// Refuses a snapshot holding a table this build would not copy.
fn check_tables(
    snapshot: &ReadTransaction,
    path: &Path,
    known: &[&str],
) -> Result<(), BackupError> {
    let names = fsck::table_names(snapshot).map_err(storage_err(path))?;
    let multimap = snapshot
        .list_multimap_tables()
        .map_err(|e| storage_err(path)(e.into()))?
        .map(|t| redb::MultimapTableHandle::name(&t).to_owned());
    match names
        .into_iter()
        .filter(|n| !known.contains(&n.as_str()))
        .chain(multimap)
        .next()
    {
        Some(table) => Err(BackupError::UnknownTable {
            path: path.to_path_buf(),
            table,
        }),
        None => Ok(()),
    }
}

fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    snapshot: &ReadTransaction,
    txn: &redb::WriteTransaction,
    definition: TableDefinition<K, V>,
) -> Result<(), redb::Error> {
    let source = match snapshot.open_table(definition) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut target = txn.open_table(definition)?;
    for entry in redb::ReadableTable::iter(&source)? {
        let (key, value) = entry?;
        target.insert(key.value(), value.value())?;
    }
    Ok(())
}

fn copy_file_durable(source: &Path, target: &Path) -> Result<(), BackupError> {
    fs::copy(source, target).map_err(io_err("copy", source))?;
    File::open(target)
        .and_then(|f| f.sync_all())
        .map_err(io_err("fsync", target))
}

/// Copies `config.bin` under a shared lock, so a concurrent config write (which holds the
/// exclusive lock) is either wholly before or wholly after the copy.
fn copy_config(source: &Path, target: &Path) -> Result<(), BackupError> {
    let file = File::open(source).map_err(io_err("open", source))?;
    file.lock_shared().map_err(io_err("lock", source))?;
    let bytes = fs::read(source);
    // Closing the descriptor releases the lock too; an unlock failure changes nothing.
    let _ = file.unlock();
    let bytes = bytes.map_err(io_err("read", source))?;
    fs::write(target, bytes).map_err(io_err("write", target))?;
    File::open(target)
        .and_then(|f| f.sync_all())
        .map_err(io_err("fsync", target))
}

/// Copies every referenced blob, verifying its blake3 name on the way (`BlobStore::read`),
/// durably (`BlobStore::write`). Returns the bytes copied and the blobs that could not be.
fn copy_blobs(
    source: &BlobStore,
    referenced: &BTreeSet<BlobId>,
    staging: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(u64, Vec<String>), BackupError> {
    let target = BlobStore::open(&staging.join("blobs"))?;
    let total = referenced.len() as u64;
    let mut bytes_copied = 0u64;
    let mut damaged = Vec::new();
    for (done, id) in (0..).zip(referenced) {
        progress(Progress {
            phase: Phase::Blobs,
            done,
            total,
        });
        match source.read(id) {
            Ok(bytes) => {
                target.write(id, &bytes)?;
                bytes_copied += bytes.len() as u64;
            }
            Err(e @ (BlobError::NotFound { .. } | BlobError::Corrupt { .. })) => {
                damaged.push(e.to_string());
            }
            Err(e) => return Err(e.into()),
        }
    }
    progress(Progress {
        phase: Phase::Blobs,
        done: total,
        total,
    });
    Ok((bytes_copied, damaged))
}

fn write_manifest(dir: &Path, summary: &BackupSummary) -> Result<(), BackupError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes =
        serde_json::to_vec_pretty(summary).map_err(|e| io_err("encode", &path)(e.into()))?;
    fs::write(&path, bytes).map_err(io_err("write", &path))?;
    File::open(&path)
        .and_then(|f| f.sync_all())
        .map_err(io_err("fsync", &path))
}

fn read_manifest(dir: &Path) -> Result<BackupSummary, BackupError> {
    let path = dir.join(MANIFEST_FILE);
    let not_a_backup = |detail: String| BackupError::NotABackup {
        path: dir.to_path_buf(),
        detail,
    };
    let bytes = fs::read(&path).map_err(|e| not_a_backup(format!("{MANIFEST_FILE}: {e}")))?;
    let manifest: BackupSummary = serde_json::from_slice(&bytes)
        .map_err(|e| not_a_backup(format!("{MANIFEST_FILE}: {e}")))?;
    if manifest.format != MANIFEST_FORMAT || manifest.format_version != MANIFEST_VERSION {
        return Err(not_a_backup(format!(
            "{MANIFEST_FILE} names format {:?} version {}; this build reads {MANIFEST_FORMAT:?} \
             version {MANIFEST_VERSION}",
            manifest.format, manifest.format_version
        )));
    }
    Ok(manifest)
}

/// Restores the backup at `backup_dir` into `home` (see the top of this file), then returns
/// the fsck report of the restored data. Blocks: copies every file; fsync.
///
/// # Errors
/// `NotABackup`, `ServerRunning`, `HomeNotEmpty` (without `force`), `Verify` (the restored
/// copy has findings: it is left in its staging directory and the home is untouched), I/O.
pub fn restore(
    backup_dir: &Path,
    home: &Path,
    force: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<RestoreSummary, BackupError> {
    read_manifest(backup_dir)?;
    let count = fsck::read_format(backup_dir).map_err(|detail| BackupError::NotABackup {
        path: backup_dir.to_path_buf(),
        detail,
    })?;
    refuse_running_server(home)?;
    let non_empty = fs::read_dir(home).is_ok_and(|mut d| d.next().is_some());
    if non_empty && !force {
        return Err(BackupError::HomeNotEmpty {
            home: home.to_path_buf(),
        });
    }
    let (parent, name) = split_home(home)?;
    create_dir_durable(&parent).map_err(io_err("create", &parent))?;
    let stamp = timestamp();
    let staging = parent.join(format!(".{name}.restore-{stamp}"));
    let verified = stage(backup_dir, &staging, count, progress)
        .and_then(|()| Ok(fsck::check_offline(&staging, false, progress)?));
    let mut report = match verified {
        Ok(report) => report,
        Err(e) => {
            // Only our own partial copy: removing it cannot touch the backup or the home.
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if !report.is_clean() {
        return Err(BackupError::Verify {
            staged: staging,
            report: Box::new(report),
        });
    }
    let previous = if non_empty {
        let aside = parent.join(format!("{name}.pre-restore-{stamp}"));
        fs::rename(home, &aside).map_err(io_err("rename", home))?;
        Some(aside)
    } else {
        if home.is_dir() {
            fs::remove_dir(home).map_err(io_err("remove", home))?;
        }
        None
    };
    fs::rename(&staging, home).map_err(io_err("rename", &staging))?;
    sync_dir(&parent).map_err(io_err("fsync", &parent))?;
    report.home = home.to_path_buf();
    Ok(RestoreSummary {
        home: home.to_path_buf(),
        previous,
        report,
    })
}

fn split_home(home: &Path) -> Result<(PathBuf, String), BackupError> {
    let absolute = std::path::absolute(home).map_err(io_err("resolve", home))?;
    let name = absolute.file_name().and_then(|n| n.to_str());
    match (absolute.parent(), name) {
        (Some(parent), Some(name)) => Ok((parent.to_path_buf(), name.to_owned())),
        _ => Err(BackupError::NotADataDir {
            home: home.to_path_buf(),
            detail: "restore needs a home with a parent directory and a UTF-8 name".into(),
        }),
    }
}

/// Refuses when any redb file of `home` is held open by another process.
fn refuse_running_server(home: &Path) -> Result<(), BackupError> {
    let mut candidates = vec![home.join("auth.redb")];
    if let Ok(entries) = fs::read_dir(home.join("shards")) {
        candidates.extend(entries.filter_map(|e| Some(e.ok()?.path())));
    }
    match candidates
        .into_iter()
        .find(|p| p.is_file() && fsck::is_locked(p))
    {
        Some(path) => Err(BackupError::ServerRunning { path }),
        None => Ok(()),
    }
}

/// Copies the backup into `staging` (a new directory), durably.
fn stage(
    backup_dir: &Path,
    staging: &Path,
    count: u16,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), BackupError> {
    fs::create_dir(staging).map_err(io_err("create", staging))?;
    copy_file_durable(
        &backup_dir.join("format.json"),
        &staging.join("format.json"),
    )?;
    let source = DataDir::open_or_create(backup_dir, u32::from(count))?;
    let target = DataDir::open_or_create(staging, u32::from(count))?;
    copy_file_durable(&source.config_path(), &target.config_path())?;
    copy_file_durable(&source.auth_path(), &target.auth_path())?;
    for index in 0..count {
        progress(Progress {
            phase: Phase::Copy,
            done: u64::from(index),
            total: u64::from(count),
        });
        let id = ShardId(index);
        copy_file_durable(&source.shard_path(id), &target.shard_path(id))?;
    }
    let from = BlobStore::attach(&source.blobs_path());
    let ids = from.list()?;
    let referenced: BTreeSet<BlobId> = ids.into_iter().collect();
    let blobs_parent = target.home().to_path_buf();
    let (_, damaged) = copy_blobs(&from, &referenced, &blobs_parent, progress)?;
    if let Some(first) = damaged.first() {
        return Err(BackupError::Corrupt {
            path: source.blobs_path(),
            detail: format!(
                "{} blobs of the backup are damaged, first: {first}",
                damaged.len()
            ),
        });
    }
    let shards = target.home().join("shards");
    sync_dir(&shards).map_err(io_err("fsync", &shards))?;
    sync_dir(staging).map_err(io_err("fsync", staging))
}
