//! `ShardStore`: owns one shard's redb database; the only code that touches its tables.
//!
//! Reads (`read_*`) may run on any core through redb's MVCC read transactions. Writes go
//! through `apply_batch`, called only by the shard's single writer: one write transaction per
//! batch (group commit), committed with `Durability::Immediate`, after every blob file the
//! batch references is durable. Tarballs of at most `limits::INLINE_BLOB_BYTES_MAX` bytes are
//! not files: they are stored in rows of the shard's `inline_rows` table by that same
//! transaction (durable with the commit, no fsync of their own). A failed commit latches the store
//! `Poisoned` (fail-stop): no later write is attempted until restart.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::tables::{
    adjust_inline_bytes, fill_manifests, manifest_key, manifest_keys_of, read_inline_at,
    read_inline_bytes, read_meta_u64, remove_inline, InlineKey, ServedTables, BLOB_INLINE, DOCS,
    DOC_SEGMENTS, INLINE_ROWS, LEGACY_DOCS, MANIFESTS, META, META_BASE_URL, META_INLINE_NEXT_ROW,
    META_SERVED_FORMAT, PACKAGES, REVS, SERVED,
};
use super::{ShardId, ShardReader};
use crate::blob::{self, BlobError, BlobId, BlobStore};
use crate::limits::{INLINE_BLOB_BYTES_MAX, INLINE_BLOB_SPACE_FACTOR};
use crate::names::{DistTag, PackageName, Version};
use crate::packument::{AppendWants, KeptVersions, ManifestRows, PublishFacts, StoredPackage};
use crate::publish::{self, Plan, PublishError, PublishRequest};
use crate::served::{
    doc_rev, encode_appended, encode_served, index_rev, DocKind, EncodedDoc, EncodedServed,
    ServedDoc, ServedIndex, FORMAT as SERVED_FORMAT,
};
use crate::update::{self, UpdateRequest};

/// Page cache per shard. redb fills it lazily and has no call to empty it, so it stays full
/// when the server idles (`server/src/idle.rs` empties every other cache). 8 MiB (was 32,
/// and 64 before that): the server's packument cache holds the hot documents themselves,
/// and at 100,000 packages on two shards 4, 8, 16 and 32 MiB gave the same cold-read rate
/// (one GET of each document of every package: 60-73k req/s each) and the same publish
/// storm (3.4-4.0k/s), while 32 MiB kept 64 MiB more RSS after an idle release
/// (ARCHITECTURE.md, "Idle memory goes back").
const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// A change to one package, applied by the shard's writer.
#[derive(Debug)]
pub enum WriteOp {
    Publish {
        request: PublishRequest,
        user: String,
    },
    /// A publish whose blob files the caller already made durable (`ShardStore::
    /// check_publish`, then `BlobStore::write_all`); the writer only checks they are still
    /// present. Its inline-sized tarballs are stored by the writer, in its commit.
    PublishPrepared {
        request: PublishRequest,
        user: String,
    },
    DistTagSet {
        name: PackageName,
        tag: DistTag,
        version: Version,
        user: String,
    },
    DistTagRemove {
        name: PackageName,
        tag: DistTag,
        user: String,
    },
    /// Deprecate, unpublish versions, dist-tags, owners (`update.rs`).
    Update {
        request: UpdateRequest,
        user: String,
    },
    /// Unpublish every version (the package becomes a tombstone).
    UnpublishAll {
        name: PackageName,
        rev: Option<String>,
        user: String,
    },
}

impl WriteOp {
    /// The package this op changes.
    #[must_use]
    pub fn package(&self) -> &PackageName {
        match self {
            WriteOp::Publish { request, .. } | WriteOp::PublishPrepared { request, .. } => {
                &request.name
            }
            WriteOp::Update { request, .. } => &request.name,
            WriteOp::DistTagSet { name, .. }
            | WriteOp::DistTagRemove { name, .. }
            | WriteOp::UnpublishAll { name, .. } => name,
        }
    }
}

/// What an applied op reports.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The publish is durable. `changed` is false for an idempotent retry.
    Published { rev: u64, changed: bool },
    /// The dist-tags after the change.
    DistTags(BTreeMap<String, String>),
    /// A metadata update is durable; `rev` is the package's new revision.
    Updated { rev: u64 },
}

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Refused(#[from] PublishError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("storage error in shard {shard}: {source}")]
    Storage { shard: u16, source: redb::Error },
    #[error("stored package {name} is corrupt: {detail}")]
    Corrupt { name: String, detail: String },
    #[error("shard {shard} stopped accepting writes after an earlier storage failure")]
    Poisoned { shard: u16 },
    #[error(
        "not enough free disk space in shard {shard}: {needed} bytes needed, {available} free"
    )]
    NoSpace {
        shard: u16,
        needed: u64,
        available: u64,
    },
}

/// Free space kept back for redb's copy-on-write pages and the file system itself.
const SPACE_RESERVE_BYTES: u64 = 4 * 1024 * 1024;

/// Bytes a plan may add to disk: new blob files, new inline blobs (`INLINE_BLOB_SPACE_FACTOR`
/// times their size, in the shard file), plus the package record and its rendered forms (full
/// and abbreviated documents and their gzip forms, at most about 3x the record).
fn space_needed(
    record_bytes: u64,
    new: &BatchBlobs,
    pending: &HashMap<BlobId, Vec<u8>>,
    blobs: &BlobStore,
) -> u64 {
    let new_files: u64 = new
        .files
        .iter()
        .filter(|(id, _)| !pending.contains_key(id) && !blobs.has(id))
        .map(|(_, bytes)| bytes.len() as u64)
        .sum();
    let new_inline: u64 = new
        .inline
        .iter()
        .map(|(_, bytes)| bytes.len() as u64 * INLINE_BLOB_SPACE_FACTOR)
        .sum();
    new_files + new_inline + 4 * record_bytes
}

/// One op's new blobs, sorted by where they go.
#[derive(Default)]
struct BatchBlobs {
    /// Bigger than `INLINE_BLOB_BYTES_MAX`: files of the blob store.
    files: Vec<(BlobId, Vec<u8>)>,
    /// Inline-sized: (row, bytes), one row per new version.
    inline: Vec<(u64, Vec<u8>)>,
}

/// Numbers the rows of `inline_rows` a batch inserts: from the next row `meta` records (and
/// past the table's last row), read once at the first one, then counting up; `write_inline`
/// records where the batch stopped. Row 0 is never used (the served index encodes "no row"
/// as 0).
struct RowNumbers<'t, 'txn> {
    txn: &'t redb::WriteTransaction,
    table: &'t redb::Table<'txn, u64, &'static [u8]>,
    next: Option<u64>,
}

impl RowNumbers<'_, '_> {
    fn take(&mut self) -> Result<u64, redb::Error> {
        let row = match self.next {
            Some(row) => row,
            None => {
                let past_last = self.table.last()?.map_or(1, |(row, _)| row.value() + 1);
                let recorded = read_meta_u64(&self.txn.open_table(META)?, META_INLINE_NEXT_ROW)?;
                past_last.max(recorded)
            }
        };
        self.next = Some(row + 1);
        Ok(row)
    }
}

/// Free bytes on the shard's and the blob store's file systems, read once (`statvfs`) and
/// then compared against a growing total as a batch plans: two `statvfs` calls per batch
/// instead of two per publish (each one a path lookup; 1.6% of a writer's CPU at 2,000
/// publishes/s when they were per op).
#[derive(Debug, Clone, Copy)]
pub struct FreeSpace {
    shard: u16,
    /// `None`: that file system cannot report its free space, and is not refused on that
    /// account.
    available: [Option<u64>; 2],
}

impl FreeSpace {
    fn read(shard: u16, shard_file: &Path, blob_root: &Path) -> FreeSpace {
        let free = |path: &Path| {
            rustix::fs::statvfs(path)
                .ok()
                .map(|stat| stat.f_bavail.saturating_mul(stat.f_frsize))
        };
        FreeSpace {
            shard,
            available: [
                free(shard_file.parent().unwrap_or(shard_file)),
                free(blob_root),
            ],
        }
    }

    /// Refuses (`NoSpace`) when either file system lacks `needed` bytes beyond the reserve.
    ///
    /// # Errors
    /// `NoSpace`.
    pub fn check(&self, needed: u64) -> Result<(), WriteError> {
        for available in self.available.into_iter().flatten() {
            if available < needed.saturating_add(SPACE_RESERVE_BYTES) {
                return Err(WriteError::NoSpace {
                    shard: self.shard,
                    needed,
                    available,
                });
            }
        }
        Ok(())
    }
}

impl WriteError {
    /// True when the cause is a full disk: the client gets 507.
    #[must_use]
    pub fn is_storage_full(&self) -> bool {
        match self {
            WriteError::NoSpace { .. } => true,
            WriteError::Blob(b) => b.is_storage_full(),
            WriteError::Storage {
                source: redb::Error::Io(e),
                ..
            } => crate::error::is_storage_full(e),
            _ => false,
        }
    }
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("storage error in shard {shard}: {source}")]
    Storage { shard: u16, source: redb::Error },
    #[error("stored record for {name} is corrupt: {detail}")]
    Corrupt { name: String, detail: String },
    /// A tarball read: a blob that does not hash to its id (inline or file), or a blob file
    /// that is missing or unreadable.
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// One shard's database.
pub struct ShardStore {
    id: ShardId,
    path: std::path::PathBuf,
    db: Database,
    base_url: Box<str>,
    /// Commit sequence for readers' caches: odd while `apply_batch` commits, even otherwise;
    /// +1 before and +1 after each commit. See `generation`.
    generation: AtomicU64,
    /// Held across each `commit_visible`.
    commit_lock: std::sync::Mutex<()>,
    poisoned: AtomicBool,
    /// The writer's dictionaries for the next append to recently written packages (only
    /// `apply_batch` and `release_memory`, on the writer's thread, take the lock).
    windows: std::sync::Mutex<Windows>,
}

impl std::fmt::Debug for ShardStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardStore")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ShardStore {
    /// The `packages` table, for fsck and backup inside the engine (`tables.rs`).
    pub(crate) const TABLE_PACKAGES: TableDefinition<'static, &'static str, &'static [u8]> =
        PACKAGES;
    /// The `served` table (indexes), for fsck and backup inside the engine.
    pub(crate) const TABLE_SERVED: TableDefinition<'static, &'static str, &'static [u8]> = SERVED;
    /// The manifests table (fsck and backup inside the engine).
    pub(crate) const TABLE_MANIFESTS: TableDefinition<'static, &'static str, &'static [u8]> =
        MANIFESTS;
    /// The document tables, indexed by `DocKind::stored_index`, for fsck and backup.
    pub(crate) const TABLE_DOCS: [TableDefinition<'static, &'static str, &'static [u8]>; 2] = DOCS;
    /// The documents' segment tables, in the order of `TABLE_DOCS`, for fsck and backup.
    pub(crate) const TABLE_DOC_SEGMENTS: [TableDefinition<
        'static,
        (&'static str, u32),
        &'static [u8],
    >; 2] = DOC_SEGMENTS;
    /// The `revs` table, for fsck and backup inside the engine.
    pub(crate) const TABLE_REVS: TableDefinition<'static, &'static str, u64> = REVS;
    /// The `meta` table, for fsck and backup inside the engine.
    pub(crate) const TABLE_META: TableDefinition<'static, &'static str, &'static [u8]> = META;
    /// The `blob_inline` table (inline tarballs of data format 2), for fsck and backup.
    pub(crate) const TABLE_BLOB_INLINE: TableDefinition<'static, &'static [u8; 32], &'static [u8]> =
        BLOB_INLINE;
    /// The `inline_rows` table, for fsck and backup inside the engine.
    pub(crate) const TABLE_INLINE_ROWS: TableDefinition<'static, u64, &'static [u8]> = INLINE_ROWS;
    /// The `meta` key of the base URL served records were rendered for.
    pub(crate) const META_KEY_BASE_URL: &'static str = META_BASE_URL;

    /// Opens (or creates) the shard file. When the documents were rendered for another base
    /// URL, re-renders every served record before returning. Blocks: fsync.
    ///
    /// # Errors
    /// redb errors (including a file that fails its checksums), or corrupt stored records.
    pub fn open(path: &Path, id: ShardId, base_url: &str) -> Result<ShardStore, ReadError> {
        let storage = |source: redb::Error| ReadError::Storage {
            shard: id.0,
            source,
        };
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| storage(e.into()))?;
        let store = ShardStore {
            id,
            path: path.to_path_buf(),
            db,
            base_url: base_url.into(),
            generation: AtomicU64::new(0),
            commit_lock: std::sync::Mutex::new(()),
            poisoned: AtomicBool::new(false),
            windows: std::sync::Mutex::default(),
        };
        store.prepare(base_url).map_err(storage)?;
        Ok(store)
    }

    fn prepare(&self, base_url: &str) -> Result<(), redb::Error> {
        let txn = super::begin_durable_write(&self.db)?;
        let (url_stale, format_stale) = {
            let mut meta = txn.open_table(META)?;
            txn.open_table(PACKAGES)?;
            txn.open_table(MANIFESTS)?;
            txn.open_table(REVS)?;
            txn.open_table(INLINE_ROWS)?;
            let stored_url = meta.get(META_BASE_URL)?.map(|v| v.value().to_vec());
            let url_stale = stored_url.as_deref() != Some(base_url.as_bytes());
            if url_stale {
                meta.insert(META_BASE_URL, base_url.as_bytes())?;
            }
            let format = meta.get(META_SERVED_FORMAT)?.map(|v| v.value().to_vec());
            let format_stale = format.as_deref() != Some(&[SERVED_FORMAT][..]);
            if format_stale {
                meta.insert(META_SERVED_FORMAT, &[SERVED_FORMAT][..])?;
            }
            (url_stale, format_stale)
        };
        if format_stale {
            // Values in an older layout are dropped whole; every live package is rendered
            // again below.
            txn.delete_table(SERVED)?;
            for table in DOCS.into_iter().chain(LEGACY_DOCS) {
                txn.delete_table(table)?;
            }
            for table in DOC_SEGMENTS {
                txn.delete_table(table)?;
            }
        }
        let packages = txn.open_table(PACKAGES)?;
        let manifests = txn.open_table(MANIFESTS)?;
        let mut served = ServedTables::open(&txn)?;
        if url_stale || format_stale {
            let mut rendered = 0u64;
            for entry in packages.iter()? {
                let (name, bytes) = entry?;
                let live = StoredPackage::decode(bytes.value())
                    .ok()
                    .and_then(|mut s| {
                        fill_manifests(Some(&manifests), name.value(), &mut s).ok()?;
                        Some(s)
                    })
                    .filter(|s| s.versions().is_some_and(|v| !v.is_empty()));
                if let Some(stored) = live {
                    served.put(name.value(), &encode_served(&stored, base_url))?;
                    rendered += 1;
                }
            }
            if rendered > 0 {
                tracing::info!(
                    shard.id = self.id.0,
                    packages = rendered,
                    "re-rendered served documents (new base URL or served format)"
                );
            }
        }
        drop((packages, manifests, served));
        txn.commit()?;
        Ok(())
    }

    /// This shard's id.
    #[must_use]
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// The base URL served documents embed.
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The redb database, for fsck and backup inside the engine: they read through MVCC read
    /// transactions; fsck's repairs take a write transaction, which redb serializes with the
    /// writer's.
    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    /// Commits `txn`, a write transaction of this shard's database, with `generation` odd while
    /// the commit runs. Every commit that changes what readers see goes through here: the
    /// writer's batches and an online fsck repair. The lock keeps those two from interleaving
    /// their steps: redb lets the second begin its transaction as soon as the first commit
    /// returns, and without the lock its "+1 before" could land before the first one's
    /// "+1 after", leaving the number even while a commit runs.
    pub(crate) fn commit_visible(
        &self,
        txn: redb::WriteTransaction,
    ) -> Result<(), redb::CommitError> {
        let _serial = self
            .commit_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::AcqRel);
        let committed = txn.commit();
        self.generation.fetch_add(1, Ordering::AcqRel);
        committed
    }

    /// Commit sequence, read by the cores' caches before they read data. Even and unchanged
    /// since a value was loaded: no commit started or ran since, so the value is current.
    /// Odd: a commit is running; its result may already be visible to readers while this
    /// number does not yet say so, so nothing may be trusted on the number alone (found by
    /// the kill -9 harness: a packument read during that window listed a version whose
    /// tarball the still-trusted cached index did not name, a 404).
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn read_error(&self, source: impl Into<redb::Error>) -> ReadError {
        ReadError::Storage {
            shard: self.id.0,
            source: source.into(),
        }
    }

    /// The package's revision, if it exists.
    ///
    /// # Errors
    /// redb errors.
    pub fn read_rev(&self, name: &str) -> Result<Option<u64>, ReadError> {
        ShardReader::new().read_rev(self, self.generation(), name)
    }

    /// One pre-rendered document of the package (one copy out of redb into a shared buffer),
    /// in a read transaction of its own (the cores read through their `ShardReader`s).
    ///
    /// # Errors
    /// redb errors, or a corrupt value.
    pub fn read_doc(&self, name: &str, kind: DocKind) -> Result<Option<ServedDoc>, ReadError> {
        ShardReader::new().read_doc(self, self.generation(), name, kind)
    }

    /// The package's served index: its revision and tarballs.
    ///
    /// # Errors
    /// redb errors, or a corrupt value.
    pub fn read_index(&self, name: &str) -> Result<Option<ServedIndex>, ReadError> {
        ShardReader::new().read_index(self, self.generation(), name)
    }

    /// The stored package (parsed): for version documents and administration, not hot paths.
    ///
    /// # Errors
    /// redb errors, or a corrupt record.
    pub fn read_stored(&self, name: &str) -> Result<Option<StoredPackage>, ReadError> {
        let txn = self.db.begin_read().map_err(|e| self.read_error(e))?;
        let table = txn.open_table(PACKAGES).map_err(|e| self.read_error(e))?;
        let Some(value) = table.get(name).map_err(|e| self.read_error(e))? else {
            return Ok(None);
        };
        let corrupt = |detail: String| ReadError::Corrupt {
            name: name.to_owned(),
            detail,
        };
        let mut stored =
            StoredPackage::decode(value.value()).map_err(|e| corrupt(e.to_string()))?;
        let manifests = txn.open_table(MANIFESTS).ok();
        fill_manifests(manifests.as_ref(), name, &mut stored).map_err(corrupt)?;
        Ok(Some(stored))
    }

    /// What a publish is checked against (`PublishFacts`), read without building the stored
    /// document: the prepare pool's check of every publish.
    ///
    /// # Errors
    /// redb errors, or a corrupt record.
    pub fn read_publish_facts(&self, name: &str) -> Result<Option<PublishFacts>, ReadError> {
        self.read_record(name, PublishFacts::decode)
    }

    /// The package's record in `packages`, decoded by `decode`.
    fn read_record<T>(
        &self,
        name: &str,
        decode: impl FnOnce(&[u8]) -> Result<T, serde_json::Error>,
    ) -> Result<Option<T>, ReadError> {
        let txn = self.db.begin_read().map_err(|e| self.read_error(e))?;
        let table = txn.open_table(PACKAGES).map_err(|e| self.read_error(e))?;
        let Some(value) = table.get(name).map_err(|e| self.read_error(e))? else {
            return Ok(None);
        };
        decode(value.value())
            .map(Some)
            .map_err(|e| ReadError::Corrupt {
                name: name.to_owned(),
                detail: e.to_string(),
            })
    }

    /// The tarball `id` when it is stored inline in this shard, verified against its blake3
    /// id: in row `row` of `inline_rows` when its `TarballRef` names one, else in
    /// `blob_inline` (stored by a build of data format 2). `None` when it is not there (it
    /// may be a file of the blob store). A package's inline tarballs are in the package's
    /// own shard.
    ///
    /// # Errors
    /// redb errors; `Blob(Corrupt)` when the stored bytes do not hash to `id` (never served).
    pub fn read_inline(&self, id: &BlobId, row: Option<u64>) -> Result<Option<Vec<u8>>, ReadError> {
        let txn = self.db.begin_read().map_err(|e| self.read_error(e))?;
        let key = row.map_or(InlineKey::Id(*id), InlineKey::Row);
        let Some(bytes) = read_inline_at(&txn, key).map_err(|e| self.read_error(e))? else {
            return Ok(None);
        };
        blob::verify(id, &bytes)?;
        Ok(Some(bytes))
    }

    /// `read_inline` of the tarball of `name@version` as the package's record names it;
    /// `None` when the package or version is unknown or its tarball is not inline.
    ///
    /// # Errors
    /// As `read_inline`, and `Corrupt` when the record does not decode.
    pub fn read_inline_of(&self, name: &str, version: &str) -> Result<Option<Vec<u8>>, ReadError> {
        let Some(stored) = self.read_record(name, StoredPackage::decode)? else {
            return Ok(None);
        };
        let Some(tarball) = stored.tarballs.get(version) else {
            return Ok(None);
        };
        let Some(id) = tarball.blob_id() else {
            return Ok(None);
        };
        self.read_inline(&id, tarball.row)
    }

    /// Number and total bytes of the tarballs stored inline in this shard (for metrics): the
    /// lengths of `inline_rows` and `blob_inline` and the total kept in `meta`; no scan.
    ///
    /// # Errors
    /// redb errors.
    pub fn inline_blob_stats(&self) -> Result<(u64, u64), ReadError> {
        let txn = self.db.begin_read().map_err(|e| self.read_error(e))?;
        let rows = match txn.open_table(INLINE_ROWS) {
            Ok(table) => table.len().map_err(|e| self.read_error(e))?,
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(self.read_error(e)),
        };
        let count = match txn.open_table(BLOB_INLINE) {
            Ok(table) => table.len().map_err(|e| self.read_error(e))?,
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(self.read_error(e)),
        } + rows;
        let meta = txn.open_table(META).map_err(|e| self.read_error(e))?;
        let bytes = read_inline_bytes(&meta).map_err(|e| self.read_error(e))?;
        Ok((count, bytes))
    }

    /// The first half of a publish's work off the writer thread: refuses what the writer
    /// would certainly refuse given the committed state (so a refused publish writes nothing)
    /// and returns the blob files the request needs stored (its new versions' tarballs bigger
    /// than `INLINE_BLOB_BYTES_MAX`, deduplicated) with the bytes the request may add to disk
    /// (inline-sized tarballs included: the writer stores those in its commit). The caller
    /// makes the files durable (`BlobStore::write_all`, many requests at once) and then hands
    /// the writer `WriteOp::PublishPrepared`.
    /// A publish that passes here can still lose a race to another one in the writer; its
    /// blob is then an orphan, which fsck reports and may remove (never corruption).
    /// Blocks: a read transaction.
    ///
    /// # Errors
    /// `Refused` (maintainer, immutable or reused version), or a read error.
    pub fn check_publish(
        &self,
        request: &PublishRequest,
        user: &str,
        blobs: &BlobStore,
    ) -> Result<(Vec<BlobId>, u64), WriteError> {
        let name = request.name.as_str();
        let current = self.read_publish_facts(name).map_err(|e| match e {
            ReadError::Storage { shard, source } => WriteError::Storage { shard, source },
            ReadError::Corrupt { name, detail } => WriteError::Corrupt { name, detail },
            ReadError::Blob(e) => WriteError::Blob(e),
        })?;
        if let Some(facts) = &current {
            if !facts.is_maintainer(user) {
                return Err(WriteError::Refused(PublishError::NotMaintainer {
                    name: name.to_owned(),
                    user: user.to_owned(),
                }));
            }
        }
        let mut fresh: Vec<BlobId> = Vec::new();
        let mut needed = 0u64;
        for new in &request.versions {
            let version = new.version.as_str();
            if let Some(facts) = &current {
                if facts.has_version(version) {
                    if facts.blob(version) == Some(new.blob.to_hex().as_str()) {
                        continue;
                    }
                    return Err(WriteError::Refused(PublishError::VersionExists {
                        name: name.to_owned(),
                        version: version.to_owned(),
                    }));
                }
                if facts.was_published(version) {
                    return Err(WriteError::Refused(PublishError::VersionReused {
                        name: name.to_owned(),
                        version: version.to_owned(),
                    }));
                }
            }
            if new.tarball.len() <= INLINE_BLOB_BYTES_MAX {
                // Counted even when a file already holds it: an overestimate, without a stat.
                needed += new.tarball.len() as u64 * INLINE_BLOB_SPACE_FACTOR;
            } else if !fresh.contains(&new.blob) {
                fresh.push(new.blob);
                if !blobs.has(&new.blob) {
                    needed += new.tarball.len() as u64;
                }
            }
        }
        Ok((fresh, needed))
    }

    /// The free space of the shard's and the blob store's file systems now, to check a
    /// batch's needs against (`FreeSpace::check`) before anything is written.
    #[must_use]
    pub fn free_space(&self, blobs: &BlobStore) -> FreeSpace {
        FreeSpace::read(self.id.0, &self.path, blobs.root())
    }

    /// Drops what the writer keeps between batches to make publishes cheaper (the next
    /// append's dictionaries): called by the writer when it idles.
    pub fn release_memory(&self) {
        self.windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// Commits an empty transaction that records redb's allocator state ("quick repair"), so
    /// that the next open, after this process exits without closing the database, loads that
    /// state instead of rebuilding it by walking and verifying every tree (seconds at 100,000
    /// packages). Called by the shard's writer when the server stops; a crash still costs
    /// the full repair, which is correct, only slower. Blocks: one fsync.
    ///
    /// # Errors
    /// `Poisoned`, or the commit's storage error.
    pub fn checkpoint(&self) -> Result<(), WriteError> {
        let shard = self.id.0;
        if self.poisoned.load(Ordering::Acquire) {
            return Err(WriteError::Poisoned { shard });
        }
        let storage = |source: redb::Error| WriteError::Storage { shard, source };
        let mut txn = super::begin_durable_write(&self.db).map_err(|e| storage(e.into()))?;
        txn.set_quick_repair(true);
        txn.commit().map_err(|e| storage(e.into()))
    }

    /// Number of live packages (for metrics).
    ///
    /// # Errors
    /// redb errors.
    pub fn package_count(&self) -> Result<u64, ReadError> {
        let txn = self.db.begin_read().map_err(|e| self.read_error(e))?;
        let table = txn.open_table(REVS).map_err(|e| self.read_error(e))?;
        table.len().map_err(|e| self.read_error(e))
    }

    /// Size of the shard's file in bytes (for metrics).
    #[must_use]
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Names of every package in this shard, sorted.
    ///
    /// # Errors
    /// redb errors.
    pub fn read_names(&self) -> Result<Vec<String>, ReadError> {
        let txn = self.db.begin_read().map_err(|e| self.read_error(e))?;
        let table = txn.open_table(REVS).map_err(|e| self.read_error(e))?;
        let mut names = Vec::new();
        for entry in table.iter().map_err(|e| self.read_error(e))? {
            let (name, _) = entry.map_err(|e| self.read_error(e))?;
            names.push(name.value().to_owned());
        }
        Ok(names)
    }

    /// `name`'s record for a batch: for a package only publishes touch (`named`: the
    /// versions and tags they name), decoded without its old manifests and tarball entries,
    /// which go to `kept` (`StoredPackage::decode_for_append`; nor the last version's
    /// manifest when `windows` has its entries); otherwise, or when that decode fails, in
    /// full.
    fn read_for_batch(
        txn: &redb::WriteTransaction,
        name: &str,
        named: Option<&PublishNames>,
        windows: &Windows,
        kept: &mut HashMap<String, KeptVersions>,
    ) -> Result<Option<StoredPackage>, WriteError> {
        let Some(named) = named else {
            return read_in_txn(txn, name);
        };
        let versions: Vec<&str> = named.versions.iter().map(String::as_str).collect();
        let tags: Vec<&str> = named.tags.iter().map(String::as_str).collect();
        let wants = AppendWants {
            versions: &versions,
            tags: &tags,
            windows_at: windows.rev(name),
        };
        let read = read_in_txn_with(txn, name, |bytes| {
            match StoredPackage::decode_for_append(bytes, &wants) {
                Ok((stored, versions)) => Ok((stored, Some(versions))),
                Err(_) => StoredPackage::decode(bytes).map(|stored| (stored, None)),
            }
        })?;
        let Some((mut stored, versions)) = read else {
            return Ok(None);
        };
        // Only the manifests the decode kept (tagged, last) are read from their rows.
        fill_in_txn(txn, name, &mut stored)?;
        if let Some(versions) = versions {
            kept.insert(name.to_owned(), versions);
        }
        Ok(Some(stored))
    }

    /// Applies `ops` in order in one durable transaction (group commit) and returns one result
    /// per op. An op that is refused leaves no trace; the others still commit. Blob files are
    /// made durable before the commit, so metadata never names a missing blob; inline-sized
    /// tarballs go into rows of `inline_rows` in the commit itself. Packages touched by
    /// several ops are rendered once. Blocks: fsync (blob files, then the commit).
    pub fn apply_batch(
        &self,
        ops: Vec<WriteOp>,
        blobs: &BlobStore,
        now: SystemTime,
    ) -> Vec<Result<WriteOutcome, WriteError>> {
        self.apply_batch_timed(ops, blobs, now).0
    }

    /// `apply_batch`, and how long each of its phases took (for the writer's metrics).
    pub fn apply_batch_timed(
        &self,
        ops: Vec<WriteOp>,
        blobs: &BlobStore,
        now: SystemTime,
    ) -> (Vec<Result<WriteOutcome, WriteError>>, BatchPhases) {
        let mut clock = PhaseClock::start();
        let results = self.apply_batch_in(ops, blobs, now, &mut clock);
        (results, clock.finish())
    }

    fn apply_batch_in(
        &self,
        ops: Vec<WriteOp>,
        blobs: &BlobStore,
        now: SystemTime,
        clock: &mut PhaseClock,
    ) -> Vec<Result<WriteOutcome, WriteError>> {
        let shard = self.id.0;
        if self.poisoned.load(Ordering::Acquire) {
            return ops
                .iter()
                .map(|_| Err(WriteError::Poisoned { shard }))
                .collect();
        }
        let storage = |source: redb::Error| WriteError::Storage { shard, source };
        let all_fail = |e: redb::Error| {
            let detail = e.to_string();
            let io = || redb::Error::Io(std::io::Error::other(detail.clone()));
            ops.iter().map(|_| Err(storage(io()))).collect()
        };
        let txn = match super::begin_durable_write(&self.db) {
            Ok(txn) => txn,
            Err(e) => return all_fail(e.into()),
        };
        let mut inline = match txn.open_table(INLINE_ROWS) {
            Ok(table) => table,
            Err(e) => return all_fail(e.into()),
        };
        let mut rows = RowNumbers {
            txn: &txn,
            table: &inline,
            next: None,
        };
        let mut results = Vec::with_capacity(ops.len());
        // For each op that planned: its package and the blob files it needs.
        let mut needs: Vec<Option<(String, bool, Vec<BlobId>)>> = Vec::with_capacity(ops.len());
        let mut pending: HashMap<BlobId, Vec<u8>> = HashMap::new();
        // Inline-sized tarballs to insert, by row, with the package whose op brought each.
        let mut inline_pending: BTreeMap<u64, (String, Vec<u8>)> = BTreeMap::new();
        let mut reserved = 0u64;
        // Read at the first change that needs space, then reused for the rest of the batch.
        let mut space: Option<FreeSpace> = None;
        let mut touched: HashMap<String, StoredPackage> = HashMap::new();
        // The blobs each package named before this batch, to find those it stops naming;
        // not kept for packages only publishes touch, which stop naming none.
        let mut before: HashMap<String, BlobsNamed> = HashMap::new();
        // For each package, its version count and revision before this batch while every op
        // on it was a publish (which only appends versions): its served documents can then be
        // extended instead of encoded again (`served::encode_appended`).
        let mut appendable: HashMap<String, Option<(usize, u64)>> = HashMap::new();
        // Packages that only publishes touch, with the versions their dist-tags name: their
        // records are read without decoding the old manifests (`decode_for_append`), and
        // written back with those manifests' bytes (`KeptVersions::encode_with`).
        let publish_only = publish_only(&ops);
        let mut kept: HashMap<String, KeptVersions> = HashMap::new();
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for op in ops {
            let name = op.package().as_str().to_owned();
            let publish = matches!(
                op,
                WriteOp::Publish { .. } | WriteOp::PublishPrepared { .. }
            );
            let current = match touched.get(&name) {
                Some(stored) => Some(stored.clone()),
                None => {
                    let named = publish_only.get(&name);
                    match Self::read_for_batch(&txn, &name, named, &windows, &mut kept) {
                        Ok(current) => {
                            if !publish_only.contains_key(&name) {
                                before
                                    .entry(name.clone())
                                    .or_insert_with(|| blob_ids(current.as_ref()));
                            }
                            appendable.entry(name.clone()).or_insert_with(|| {
                                let current = current.as_ref()?;
                                Some((current.versions()?.len(), current.rev))
                            });
                            current
                        }
                        Err(e) => {
                            results.push(Err(e));
                            needs.push(None);
                            continue;
                        }
                    }
                }
            };
            if !publish {
                appendable.insert(name.clone(), None);
            }
            let prepared = matches!(op, WriteOp::PublishPrepared { .. });
            let (mut plan, outcome) = match plan_op(current, op, now) {
                Ok(planned) => planned,
                Err(e) => {
                    results.push(Err(WriteError::Refused(e)));
                    needs.push(None);
                    continue;
                }
            };
            let new = match sort_blobs(&mut plan, prepared, &mut rows, blobs) {
                Ok(new) => new,
                Err(e) => {
                    results.push(Err(storage(e)));
                    needs.push(None);
                    continue;
                }
            };
            if plan.changed {
                // Refuse while nothing is written yet: a commit that runs out of space would
                // poison the shard, a refusal here leaves everything as it was.
                // The record's size: estimated from the kept bytes for a package planned on
                // them (its placeholders would encode small), else encoded.
                let record_bytes = match kept.get(&name) {
                    Some(kept) => kept.record_bytes_estimate(&plan.stored),
                    None => plan.stored.encode().len(),
                };
                let needed = space_needed(record_bytes as u64, &new, &pending, blobs);
                let space = space.get_or_insert_with(|| self.free_space(blobs));
                if let Err(e) = space.check(needed + reserved) {
                    results.push(Err(e));
                    needs.push(None);
                    continue;
                }
                reserved += needed;
            }
            let ids = new.files.iter().map(|(id, _)| *id).collect();
            for (id, bytes) in new.files {
                pending.entry(id).or_insert(bytes);
            }
            for (row, bytes) in new.inline {
                inline_pending.insert(row, (name.clone(), bytes));
            }
            needs.push(Some((name.clone(), plan.changed, ids)));
            let outcome = match outcome {
                PlannedOutcome::Published => WriteOutcome::Published {
                    rev: plan.stored.rev,
                    changed: plan.changed,
                },
                PlannedOutcome::DistTags => WriteOutcome::DistTags(plan.stored.dist_tags()),
                PlannedOutcome::Updated => WriteOutcome::Updated {
                    rev: plan.stored.rev,
                },
            };
            if plan.changed {
                touched.insert(name, plan.stored);
            }
            results.push(Ok(outcome));
        }
        clock.lap();
        // Blob files become durable (in parallel, waiting on the disk) while this thread
        // encodes the records that will name them (CPU); the metadata commits only after both.
        let items: Vec<(BlobId, &[u8])> = pending
            .iter()
            .map(|(id, bytes)| (*id, bytes.as_slice()))
            .collect();
        let touched_now = Touched {
            packages: &touched,
            appendable: &appendable,
            kept: &kept,
            windows: &windows,
        };
        let (blob_results, (mut encoded, unencodable)) = if items.is_empty() {
            // Prepared publishes, inline-sized tarballs and metadata changes: no thread to
            // start and join.
            (
                Vec::new(),
                encode_touched(&txn, &touched_now, &self.base_url),
            )
        } else {
            std::thread::scope(|scope| {
                let writing = scope.spawn(|| blobs.write_all(&items));
                let encoded = encode_touched(&txn, &touched_now, &self.base_url);
                let blob_results = writing.join().unwrap_or_else(|_| {
                    items
                        .iter()
                        .map(|(id, _)| {
                            Err(BlobError::Io {
                                op: "write",
                                path: blobs.path_of(id),
                                source: std::io::Error::other("blob writer thread panicked"),
                            })
                        })
                        .collect()
                });
                (blob_results, encoded)
            })
        };
        let failed: HashMap<BlobId, BlobError> = items
            .iter()
            .zip(blob_results)
            .filter_map(|((id, _), result)| result.err().map(|e| (*id, e)))
            .collect();
        if !failed.is_empty() {
            // An op whose blob is not durable fails. Later ops in the batch on the same
            // package were planned on top of it, so the whole package's changes are dropped.
            let mut failed_packages: HashMap<String, BlobError> = HashMap::new();
            for need in needs.iter().flatten() {
                let (name, changed, ids) = need;
                if let Some(e) = ids.iter().find_map(|id| failed.get(id)) {
                    if *changed {
                        failed_packages.entry(name.clone()).or_insert(e.duplicate());
                    }
                }
            }
            for (result, need) in results.iter_mut().zip(&needs) {
                let Some((name, _, ids)) = need else { continue };
                let cause = ids
                    .iter()
                    .find_map(|id| failed.get(id))
                    .or_else(|| failed_packages.get(name));
                if let (Ok(_), Some(e)) = (&*result, cause) {
                    *result = Err(WriteError::Blob(e.duplicate()));
                }
            }
            encoded.retain(|record| !failed_packages.contains_key(&record.name));
        }
        // A package whose record could not be written back (never expected: the kept bytes
        // come from a record that decoded) commits nothing; its ops fail.
        for (result, need) in results.iter_mut().zip(&needs) {
            let Some((name, _, _)) = need else { continue };
            if let (Ok(_), Some(detail)) = (&*result, unencodable.get(name)) {
                *result = Err(WriteError::Corrupt {
                    name: name.clone(),
                    detail: detail.clone(),
                });
            }
        }
        clock.lap();
        if encoded.is_empty() {
            return results;
        }
        let written = write_encoded(&txn, &encoded)
            .and_then(|()| {
                let changes =
                    inline_changes(&encoded, &touched, &before, &publish_only, inline_pending);
                write_inline(&txn, &mut inline, changes)
            })
            .map_err(storage);
        drop(inline);
        clock.lap();
        // Odd while the commit runs: a reader's cache trusts nothing loaded or checked then
        // (the commit becomes visible before this thread gets to say so afterwards).
        let committed =
            written.and_then(|()| self.commit_visible(txn).map_err(|e| storage(e.into())));
        match committed {
            Ok(()) => {
                for package in encoded {
                    match package.served {
                        Some((served, rev)) => windows.put(&package.name, rev, served.docs),
                        None => windows.remove(&package.name),
                    }
                }
                results
            }
            Err(e) => {
                // Fail-stop: the file's state after a failed commit is not trusted further.
                self.poisoned.store(true, Ordering::Release);
                tracing::error!(shard.id = shard, error = %e, "shard commit failed; poisoned");
                let full = e.is_storage_full();
                results
                    .into_iter()
                    .map(|r| match r {
                        Ok(_) if full => Err(storage(redb::Error::Io(std::io::Error::from(
                            std::io::ErrorKind::StorageFull,
                        )))),
                        Ok(_) => Err(WriteError::Poisoned { shard }),
                        Err(e) => Err(e),
                    })
                    .collect()
            }
        }
    }
}

/// How long one group commit spent in each phase, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchPhases {
    /// Reading the touched records, planning every op, checking blobs and free space.
    pub plan_us: u64,
    /// Encoding records and served documents (while new blob files are synced).
    pub encode_us: u64,
    /// Inserting the values into the transaction's tables.
    pub write_us: u64,
    /// redb's commit: page writes and fsyncs.
    pub commit_us: u64,
}

impl BatchPhases {
    /// Names of the phases, in order, as metrics label them.
    pub const NAMES: [&'static str; 4] = ["plan", "encode", "write", "commit"];

    /// The phases' durations, in the order of `NAMES`.
    #[must_use]
    pub fn as_array(&self) -> [u64; 4] {
        [self.plan_us, self.encode_us, self.write_us, self.commit_us]
    }
}

/// Times the phases of one batch: each `lap` ends the current phase; `finish` charges what
/// is left (after the last lap, or an early return) to the phase that was running.
struct PhaseClock {
    last: std::time::Instant,
    phase: usize,
    us: [u64; 4],
}

impl PhaseClock {
    fn start() -> PhaseClock {
        PhaseClock {
            last: std::time::Instant::now(),
            phase: 0,
            us: [0; 4],
        }
    }

    fn lap(&mut self) {
        let now = std::time::Instant::now();
        let spent = u64::try_from(now.duration_since(self.last).as_micros()).unwrap_or(u64::MAX);
        let slot = self.phase.min(self.us.len() - 1);
        self.us[slot] = self.us[slot].saturating_add(spent);
        self.last = now;
        self.phase += 1;
    }

    fn finish(mut self) -> BatchPhases {
        self.lap();
        let [plan_us, encode_us, write_us, commit_us] = self.us;
        BatchPhases {
            plan_us,
            encode_us,
            write_us,
            commit_us,
        }
    }
}

/// Every blob a package names (its tarball index), each with where the shard keeps it when
/// it is inline-sized (`None`: a file of the blob store).
type BlobsNamed = Vec<(BlobId, Option<InlineKey>)>;

/// The blobs `stored` names, or none.
fn blob_ids(stored: Option<&StoredPackage>) -> BlobsNamed {
    stored
        .into_iter()
        .flat_map(|s| s.tarballs.values())
        .filter_map(|tarball| {
            let id = tarball.blob_id()?;
            let key = match tarball.row {
                Some(row) => Some(InlineKey::Row(row)),
                None if tarball.size <= INLINE_BLOB_BYTES_MAX as u64 => Some(InlineKey::Id(id)),
                None => None,
            };
            Some((id, key))
        })
        .collect()
}

/// Takes `plan`'s blobs and sorts them: files (for a prepared publish, only those no longer
/// present: online fsck may have deleted an old orphan the prepare pool found) and the
/// inline-sized ones, each given the next row, which its version's `TarballRef` records.
/// A version's tarball names that version (`publish::check_tarball`), so no other version
/// can share its row: nothing is looked up to deduplicate.
fn sort_blobs(
    plan: &mut Plan,
    prepared: bool,
    rows: &mut RowNumbers<'_, '_>,
    blobs: &BlobStore,
) -> Result<BatchBlobs, redb::Error> {
    let mut new = BatchBlobs::default();
    for (version, id, bytes) in plan.blobs.drain(..) {
        if bytes.len() <= INLINE_BLOB_BYTES_MAX {
            let row = rows.take()?;
            if let Some(tarball) = plan.stored.tarballs.get_mut(&version) {
                tarball.row = Some(row);
            }
            new.inline.push((row, bytes));
        } else if !prepared || !blobs.has(&id) {
            // Made durable by the prepare pool; checked again here, inside this shard's
            // write transaction, because online fsck deletes old unreferenced blobs while
            // holding every shard's write lock. A blob it removed is written again.
            new.files.push((id, bytes));
        }
    }
    Ok(new)
}

/// What a commit changes in `inline_rows` (and, removing only, `blob_inline`).
struct InlineChanges {
    insert: Vec<(u64, Vec<u8>)>,
    remove: Vec<InlineKey>,
}

/// The inline rows to insert (pending ones that a committing package names: a package whose
/// blob files failed commits nothing, and a version published and unpublished in one batch
/// needs no tarball) and the inline tarballs to remove (named before the batch by a
/// committing package, named by no committing package after it: its versions were
/// unpublished). A package only publishes touched (`publish_only`) names every blob its ops
/// brought and stops naming none, so its tarball index is not read here: that was two of the
/// three hex decodes per stored version per publish (the third encoded the served index,
/// which publishes now append to), which together took 2.8% of a storm into packages of
/// 21-30 versions.
///
/// Removing is safe because an inline tarball is named by one version only: a row by the
/// version it was written for, and an entry of `blob_inline` by its id, which every publish
/// ties to one package and version (`publish::check_tarball` checks that the tarball's
/// `package.json` names them); a package's blobs live in its own shard. An unpublished
/// `name@version` stays reserved, so its tarball is never named again.
fn inline_changes(
    encoded: &[EncodedPackage],
    touched: &HashMap<String, StoredPackage>,
    before: &HashMap<String, BlobsNamed>,
    publish_only: &HashMap<String, PublishNames>,
    pending: BTreeMap<u64, (String, Vec<u8>)>,
) -> InlineChanges {
    let mut named = BTreeSet::new();
    let mut committing_publish_only = HashSet::new();
    for package in encoded {
        if publish_only.contains_key(&package.name) {
            committing_publish_only.insert(package.name.as_str());
        } else {
            for (id, key) in blob_ids(touched.get(&package.name)) {
                named.insert(key.unwrap_or(InlineKey::Id(id)));
            }
        }
    }
    let insert = pending
        .into_iter()
        .filter(|(row, (owner, _))| {
            committing_publish_only.contains(owner.as_str())
                || named.contains(&InlineKey::Row(*row))
        })
        .map(|(row, (_, bytes))| (row, bytes))
        .collect();
    let remove = encoded
        .iter()
        .filter_map(|package| before.get(&package.name))
        .flatten()
        .filter_map(|(_, key)| *key)
        .filter(|key| !named.contains(key))
        .collect();
    InlineChanges { insert, remove }
}

/// Applies `changes` to `inline_rows` (`blob_inline` for removals of what earlier builds
/// stored there) and their byte total in `meta`.
fn write_inline<'txn>(
    txn: &'txn redb::WriteTransaction,
    rows: &mut redb::Table<'txn, u64, &'static [u8]>,
    changes: InlineChanges,
) -> Result<(), redb::Error> {
    if changes.insert.is_empty() && changes.remove.is_empty() {
        return Ok(());
    }
    let (mut added, mut removed) = (0u64, 0u64);
    let next_row = changes.insert.iter().map(|(row, _)| row + 1).max();
    for (row, bytes) in &changes.insert {
        if let Some(old) = rows.insert(row, bytes.as_slice())? {
            removed += old.value().len() as u64;
        }
        added += bytes.len() as u64;
    }
    let mut legacy = None;
    for key in &changes.remove {
        removed += remove_inline(txn, rows, &mut legacy, *key)?.unwrap_or(0);
    }
    drop(legacy);
    let mut meta = txn.open_table(META)?;
    adjust_inline_bytes(&mut meta, added, removed)?;
    if let Some(next_row) = next_row {
        if next_row > read_meta_u64(&meta, META_INLINE_NEXT_ROW)? {
            meta.insert(META_INLINE_NEXT_ROW, &next_row.to_le_bytes()[..])?;
        }
    }
    Ok(())
}

enum PlannedOutcome {
    Published,
    DistTags,
    Updated,
}

fn plan_op(
    current: Option<StoredPackage>,
    op: WriteOp,
    now: SystemTime,
) -> Result<(Plan, PlannedOutcome), PublishError> {
    match op {
        WriteOp::Publish { request, user } | WriteOp::PublishPrepared { request, user } => Ok((
            publish::plan_publish(current, request, &user, now)?,
            PlannedOutcome::Published,
        )),
        WriteOp::DistTagSet {
            name,
            tag,
            version,
            user,
        } => Ok((
            publish::plan_dist_tag_set(current, &name, &tag, &version, &user, now)?,
            PlannedOutcome::DistTags,
        )),
        WriteOp::DistTagRemove { name, tag, user } => Ok((
            publish::plan_dist_tag_remove(current, &name, &tag, &user, now)?,
            PlannedOutcome::DistTags,
        )),
        WriteOp::Update { request, user } => Ok((
            update::plan_update(current, request, &user, now)?,
            PlannedOutcome::Updated,
        )),
        WriteOp::UnpublishAll { name, rev, user } => Ok((
            update::plan_unpublish_all(current, &name, rev.as_deref(), &user, now)?,
            PlannedOutcome::Updated,
        )),
    }
}

fn read_in_txn(
    txn: &redb::WriteTransaction,
    name: &str,
) -> Result<Option<StoredPackage>, WriteError> {
    let Some(mut stored) = read_in_txn_with(txn, name, StoredPackage::decode)? else {
        return Ok(None);
    };
    fill_in_txn(txn, name, &mut stored)?;
    Ok(Some(stored))
}

/// `fill_manifests` from `txn`'s `manifests`; a missing row is `Corrupt`.
fn fill_in_txn(
    txn: &redb::WriteTransaction,
    name: &str,
    stored: &mut StoredPackage,
) -> Result<(), WriteError> {
    if stored.manifests_in_rows().is_empty() {
        return Ok(());
    }
    let manifests = txn.open_table(MANIFESTS).ok();
    fill_manifests(manifests.as_ref(), name, stored).map_err(|detail| WriteError::Corrupt {
        name: name.to_owned(),
        detail,
    })
}

/// `name`'s record in `txn`, decoded by `decode`; an unreadable table or a record `decode`
/// refuses is `Corrupt`.
fn read_in_txn_with<T>(
    txn: &redb::WriteTransaction,
    name: &str,
    decode: impl FnOnce(&[u8]) -> Result<T, serde_json::Error>,
) -> Result<Option<T>, WriteError> {
    let corrupt = |detail: String| WriteError::Corrupt {
        name: name.to_owned(),
        detail,
    };
    let table = txn
        .open_table(PACKAGES)
        .map_err(|e| corrupt(e.to_string()))?;
    let value = table.get(name).map_err(|e| corrupt(e.to_string()))?;
    match value {
        None => Ok(None),
        Some(v) => decode(v.value())
            .map(Some)
            .map_err(|e| corrupt(e.to_string())),
    }
}

/// The dictionary of the next append to each package the writer wrote lately, both
/// documents' (`EncodedDoc::window`), with the package's revision: a publish to it then
/// neither reads nor renders the manifest of the version before it
/// (`StoredPackage::decode_for_append`, `served::encode_appended`, which checks a window
/// against the document's cut). Bounded by `WINDOWS_BYTES_MAX` (dropped whole when full)
/// and emptied when the writer idles.
#[derive(Debug, Default)]
struct Windows {
    by_name: HashMap<Box<str>, (u64, [Vec<u8>; 2])>,
    bytes: usize,
}

/// What `Windows` holds at most, per shard: a window is at most 8 KiB (the compressor's
/// dictionary), typically 0.5-2 KiB, so thousands of packages publishing at once.
const WINDOWS_BYTES_MAX: usize = 8 << 20;

impl Windows {
    /// The revision `name`'s windows are for.
    fn rev(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).map(|(rev, _)| *rev)
    }

    /// `name`'s windows when they are for revision `rev`.
    fn get(&self, name: &str, rev: u64) -> Option<&[Vec<u8>; 2]> {
        match self.by_name.get(name) {
            Some((at, windows)) if *at == rev => Some(windows),
            _ => None,
        }
    }

    /// Keeps the windows of `docs`, just committed at revision `rev`.
    fn put(&mut self, name: &str, rev: u64, docs: [EncodedDoc; 2]) {
        self.remove(name);
        let windows = docs.map(|doc| doc.window);
        let bytes = name.len() + windows.iter().map(Vec::len).sum::<usize>();
        if self.bytes + bytes > WINDOWS_BYTES_MAX {
            self.clear();
        }
        self.bytes += bytes;
        self.by_name.insert(name.into(), (rev, windows));
    }

    fn remove(&mut self, name: &str) {
        if let Some((_, windows)) = self.by_name.remove(name) {
            self.bytes -= name.len() + windows.iter().map(Vec::len).sum::<usize>();
        }
    }

    fn clear(&mut self) {
        self.by_name = HashMap::new();
        self.bytes = 0;
    }
}

/// One touched package's records, encoded for the commit.
struct EncodedPackage {
    name: String,
    record: Vec<u8>,
    /// Rows to write.
    rows: ManifestRows,
    /// Whether `rows` are all of the package's manifests (its other rows are deleted), or
    /// only its new versions' (an append).
    all_rows: bool,
    /// The served values, or None for a tombstone (every version unpublished).
    served: Option<(EncodedServed, u64)>,
}

/// What a batch changed, for `encode_touched`.
struct Touched<'a> {
    packages: &'a HashMap<String, StoredPackage>,
    appendable: &'a HashMap<String, Option<(usize, u64)>>,
    /// Packages planned on `decode_for_append`: old manifests are placeholders.
    kept: &'a HashMap<String, KeptVersions>,
    /// The dictionaries of the writer's last encodings.
    windows: &'a Windows,
}

/// What the publishes to one package name.
#[derive(Debug, Default)]
struct PublishNames {
    /// The versions they publish and those their dist-tags name.
    versions: Vec<String>,
    /// The dist-tags they set.
    tags: Vec<String>,
}

/// Each package's name, with what its publishes name, when every op on it in `ops` is a
/// publish.
fn publish_only(ops: &[WriteOp]) -> HashMap<String, PublishNames> {
    let mut out: HashMap<String, PublishNames> = HashMap::new();
    let mut other: BTreeSet<&str> = BTreeSet::new();
    for op in ops {
        match op {
            WriteOp::Publish { request, .. } | WriteOp::PublishPrepared { request, .. } => {
                let named = out.entry(request.name.as_str().to_owned()).or_default();
                for (tag, version) in &request.dist_tags {
                    named.tags.push(tag.as_str().to_owned());
                    named.versions.push(version.as_str().to_owned());
                }
                let published = request.versions.iter().map(|v| v.version.as_str());
                named.versions.extend(published.map(str::to_owned));
            }
            other_op => {
                other.insert(other_op.package().as_str());
            }
        }
    }
    out.retain(|name, _| !other.contains(name.as_str()));
    out
}

/// Encodes every touched package's records; also returns the packages that could not be
/// encoded, with why. A package whose ops were all publishes has its served documents
/// extended from the stored ones (`served::encode_appended`) when those are at the revision
/// it had before the batch; any other is rendered from scratch. A package planned on kept
/// manifests has its record written with their bytes, and is decoded from that record
/// first when it must be rendered from scratch.
fn encode_touched(
    txn: &redb::WriteTransaction,
    touched: &Touched<'_>,
    base_url: &str,
) -> (Vec<EncodedPackage>, HashMap<String, String>) {
    // The index and document tables, opened once for the batch; a table that cannot be
    // opened only costs the shortcut.
    let served: Option<Vec<redb::Table<'_, &'static str, &'static [u8]>>> = touched
        .appendable
        .values()
        .any(Option::is_some)
        .then(|| {
            std::iter::once(SERVED)
                .chain(DOCS)
                .map(|t| txn.open_table(t).ok())
                .collect()
        })
        .flatten();
    let extended = |name: &str, stored: &StoredPackage| -> Option<EncodedServed> {
        let (from, rev) = (*touched.appendable.get(name)?)?;
        let served = served.as_ref()?;
        let mut old = Vec::with_capacity(served.len());
        for (i, table) in served.iter().enumerate() {
            let value = table.get(name).ok()??;
            // The values must be the ones of the package as it was before the batch.
            let value_rev = if i == 0 {
                index_rev(value.value())
            } else {
                doc_rev(value.value())
            };
            if value_rev != Some(rev) {
                return None;
            }
            old.push(value);
        }
        let windows = touched.windows.get(name, rev);
        let windows = windows.map(|[full, abbreviated]| [&full[..], &abbreviated[..]]);
        encode_appended(
            stored,
            base_url,
            from,
            old[0].value(),
            [old[1].value(), old[2].value()],
            windows,
        )
    };
    let mut encoded = Vec::with_capacity(touched.packages.len());
    let mut failed = HashMap::new();
    for (name, stored) in touched.packages {
        let kept = touched.kept.get(name);
        let ((record, rows), all_rows) = match kept {
            Some(kept) => match kept.encode_with(stored) {
                Some(split) => (split, false),
                None => {
                    failed.insert(name.clone(), "a publish lost versions".to_owned());
                    continue;
                }
            },
            None => (stored.encode_split(), true),
        };
        let served = if stored.versions().is_some_and(|v| !v.is_empty()) {
            let served = match (extended(name, stored), kept) {
                (Some(served), _) => served,
                (None, None) => encode_served(stored, base_url),
                // Placeholders cannot be rendered: the whole package, from its new record,
                // the new rows and the stored ones.
                (None, Some(_)) => match full_package(txn, name, &record, &rows) {
                    Ok(full) => encode_served(&full, base_url),
                    Err(e) => {
                        failed.insert(name.clone(), e);
                        continue;
                    }
                },
            };
            Some((served, stored.rev))
        } else {
            None
        };
        encoded.push(EncodedPackage {
            name: name.clone(),
            record,
            rows,
            all_rows,
            served,
        });
    }
    (encoded, failed)
}

/// The package `record` (with manifests in rows) stands for, its manifests read from `rows`
/// (this batch's) or else from the stored rows.
fn full_package(
    txn: &redb::WriteTransaction,
    name: &str,
    record: &[u8],
    rows: &ManifestRows,
) -> Result<StoredPackage, String> {
    let mut full = StoredPackage::decode(record).map_err(|e| e.to_string())?;
    for (version, row) in rows {
        full.fill_manifest(version, row)
            .map_err(|e| e.to_string())?;
    }
    let manifests = txn.open_table(MANIFESTS).ok();
    fill_manifests(manifests.as_ref(), name, &mut full)?;
    Ok(full)
}

fn write_encoded(
    txn: &redb::WriteTransaction,
    encoded: &[EncodedPackage],
) -> Result<(), redb::Error> {
    let mut manifests = txn.open_table(MANIFESTS)?;
    for package in encoded {
        let name = package.name.as_str();
        if package.all_rows {
            let keys = manifest_keys_of(name);
            manifests.retain_in(keys.start.as_str()..keys.end.as_str(), |_, _| false)?;
        }
        for (version, row) in &package.rows {
            manifests.insert(manifest_key(name, version).as_str(), row.as_slice())?;
        }
    }
    drop(manifests);
    let mut packages = txn.open_table(PACKAGES)?;
    let mut served = ServedTables::open(txn)?;
    let mut revs = txn.open_table(REVS)?;
    for package in encoded {
        let name = package.name.as_str();
        packages.insert(name, package.record.as_slice())?;
        if let Some((values, rev)) = &package.served {
            served.put(name, values)?;
            revs.insert(name, *rev)?;
        } else {
            // A tombstone: reads answer 404, history stays.
            served.remove(name)?;
            revs.remove(name)?;
        }
    }
    Ok(())
}
