//! The content-addressed blob store: tarball bytes named by their blake3 digest, one file
//! each. Only tarballs bigger than `limits::INLINE_BLOB_BYTES_MAX` are written here; smaller
//! ones are stored inline in their package's shard (`ShardStore::read_blob_inline`), because
//! a file per small tarball (inode allocation, file and directory fsyncs) cost more than the
//! shard commit they ride on. Small files written before that rule still serve.
//!
//! Layout: `<root>/<hex[0..2]>/<hex[2..4]>/<hex>`; temp files in `<root>/tmp/`.
//! Invariants: a blob file, once renamed into place, is never modified; its content hashes to
//! its name (checked by `read`, so a torn or corrupted file is reported, never served);
//! identical bytes are stored once. Paths are built only from a `BlobId`, never from request
//! input, so no URL can name a file outside the store.
//!
//! `BlobStore` is `Sync`: any core may read; writes happen on shard writer threads.

mod id;
mod write;

pub use id::{BlobId, BLOB_ID_BYTES};
pub(crate) use write::{create_dir_durable, sync_dir};

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

/// What can go wrong in the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {id} is not in the store")]
    NotFound { id: BlobId },
    #[error("blob {id} is corrupt: {detail}")]
    Corrupt { id: BlobId, detail: String },
    #[error("blob store I/O error during {op} on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl BlobError {
    /// An equivalent error (same message and storage-full classification), for reporting one
    /// failure to every request that depended on it.
    #[must_use]
    pub fn duplicate(&self) -> BlobError {
        match self {
            BlobError::NotFound { id } => BlobError::NotFound { id: *id },
            BlobError::Corrupt { id, detail } => BlobError::Corrupt {
                id: *id,
                detail: detail.clone(),
            },
            BlobError::Io { op, path, source } => BlobError::Io {
                op,
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
        }
    }

    /// True when the underlying cause is a full disk (or quota).
    #[must_use]
    pub fn is_storage_full(&self) -> bool {
        matches!(self, BlobError::Io { source, .. } if crate::error::is_storage_full(source))
    }
}

/// A directory of write-once blobs.
#[derive(Debug)]
pub struct BlobStore {
    root: PathBuf,
    tmp: PathBuf,
    stats: BlobStats,
    durable_dirs: write::DurableDirs,
}

/// Count and bytes of stored blobs, for metrics. Files this process creates are counted as
/// they are written; files that existed before `open` are counted by `scan_stats` (run once,
/// in the background), which skips anything newer than `opened`, so nothing counts twice.
#[derive(Debug)]
struct BlobStats {
    opened: SystemTime,
    count: AtomicU64,
    bytes: AtomicU64,
    scanned: AtomicBool,
}

impl BlobStore {
    /// Opens (creating if needed) the store at `root` and clears temp files left by a crash.
    ///
    /// # Errors
    /// I/O errors creating or listing the directories.
    pub fn open(root: &Path) -> Result<BlobStore, BlobError> {
        let tmp = root.join("tmp");
        let io_err = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| BlobError::Io { op, path, source }
        };
        create_dir_durable(&tmp).map_err(io_err("create", &tmp))?;
        for entry in fs::read_dir(&tmp).map_err(io_err("list", &tmp))? {
            let entry = entry.map_err(io_err("list", &tmp))?;
            // Temp files are never referenced by metadata: a crash left them half-written.
            let _ = fs::remove_file(entry.path());
        }
        let stats = BlobStats {
            opened: SystemTime::now(),
            count: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            scanned: AtomicBool::new(false),
        };
        Ok(BlobStore {
            root: root.to_path_buf(),
            tmp,
            stats,
            durable_dirs: write::DurableDirs::new(),
        })
    }

    /// Attaches to the store at `root` as it is: creates no directory and, unlike `open`,
    /// leaves temp files in place, so fsck can report them, and backup and restore can read a
    /// store they must not change. Does no I/O.
    #[must_use]
    pub fn attach(root: &Path) -> BlobStore {
        BlobStore {
            root: root.to_path_buf(),
            tmp: root.join("tmp"),
            stats: BlobStats {
                opened: SystemTime::now(),
                count: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                scanned: AtomicBool::new(false),
            },
            durable_dirs: write::DurableDirs::new(),
        }
    }

    /// The directory of in-flight writes (`<root>/tmp`).
    #[must_use]
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Deletes blob `id` durably (unlink, then fsync of its directory). Only fsck calls this,
    /// for a blob it proved unreferenced while holding every shard's write lock (no writer is
    /// then between finding or writing a blob and committing the metadata that names it).
    /// The metrics counters are not adjusted. Blocks: fsync.
    ///
    /// # Errors
    /// `NotFound`, or I/O errors.
    pub fn remove_unreferenced(&self, id: &BlobId) -> Result<(), BlobError> {
        let path = self.path_of(id);
        let io_err = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| BlobError::Io { op, path, source }
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::NotFound { id: *id });
            }
            Err(e) => return Err(io_err("remove", &path)(e)),
        }
        let dir = path
            .parent()
            .expect("blob paths always have a fan-out parent");
        sync_dir(dir).map_err(io_err("fsync", dir))
    }

    /// Counts the blobs that existed when the store was opened (slow: lists every file; run
    /// it off the request path). Afterwards `stats` reports exact totals.
    ///
    /// # Errors
    /// I/O errors listing the store.
    pub fn scan_stats(&self) -> Result<(), BlobError> {
        let (mut count, mut bytes) = (0u64, 0u64);
        for id in self.list()? {
            let Ok(meta) = fs::metadata(self.path_of(&id)) else {
                continue;
            };
            if meta.modified().is_ok_and(|m| m >= self.stats.opened) {
                continue;
            }
            count += 1;
            bytes += meta.len();
        }
        self.stats.count.fetch_add(count, Ordering::Relaxed);
        self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.stats.scanned.store(true, Ordering::Release);
        Ok(())
    }

    /// (blob count, total bytes), once `scan_stats` has finished.
    #[must_use]
    pub fn stats(&self) -> Option<(u64, u64)> {
        self.stats.scanned.load(Ordering::Acquire).then(|| {
            (
                self.stats.count.load(Ordering::Relaxed),
                self.stats.bytes.load(Ordering::Relaxed),
            )
        })
    }

    /// The root directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds (or would hold) blob `id`.
    #[must_use]
    pub fn path_of(&self, id: &BlobId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join(&hex[0..2]).join(&hex[2..4]).join(hex)
    }

    /// True when blob `id` is stored.
    #[must_use]
    pub fn has(&self, id: &BlobId) -> bool {
        self.path_of(id).is_file()
    }

    /// Stores `bytes`, whose blake3 digest the caller computed as `id` (checked in debug
    /// builds; release builds trust the caller, which hashed the same bytes). Returns once the
    /// blob is durable. Storing bytes that are already present is a no-op.
    /// Blocks: fsync (file and directory).
    ///
    /// # Errors
    /// I/O errors; a full disk is reported by `BlobError::is_storage_full`.
    pub fn write(&self, id: &BlobId, bytes: &[u8]) -> Result<(), BlobError> {
        debug_assert_eq!(BlobId::of(bytes), *id, "caller passed a wrong blob id");
        let path = self.path_of(id);
        if path.is_file() {
            // Identical bytes are stored once, but a damaged copy is replaced: the rename of a
            // fresh durable file over it is atomic, so readers see old or new, never partial.
            if fs::read(&path).is_ok_and(|stored| BlobId::of(&stored) == *id) {
                return Ok(());
            }
            tracing::warn!(blob = %id, "replacing a damaged blob with republished bytes");
            return write::write_durable(&self.tmp, &path, bytes).map_err(|source| BlobError::Io {
                op: "write",
                path: path.clone(),
                source,
            });
        }
        let dir = path
            .parent()
            .expect("blob paths always have a fan-out parent");
        create_dir_durable(dir).map_err(|source| BlobError::Io {
            op: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        write::write_durable(&self.tmp, &path, bytes).map_err(|source| BlobError::Io {
            op: "write",
            path: path.clone(),
            source,
        })?;
        self.stats.count.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Stores every `(id, bytes)` like `write` and returns one result per item, in order,
    /// with one round of concurrent syncs for the whole batch instead of two sequential
    /// fsyncs per blob (`write::write_batch_durable`). A blob already present is verified
    /// (replaced when damaged) and synced too, since a concurrent batch may have renamed it
    /// into place and not finished syncing it.
    /// Blocks: until every blob is durable or failed.
    pub fn write_all(&self, items: &[(BlobId, &[u8])]) -> Vec<Result<(), BlobError>> {
        let batch: Vec<write::BatchItem<'_>> = items
            .iter()
            .map(|(id, bytes)| {
                debug_assert_eq!(BlobId::of(bytes), *id, "caller passed a wrong blob id");
                let path = self.path_of(id);
                let intact = fs::read(&path).is_ok_and(|stored| BlobId::of(&stored) == *id);
                if !intact && path.is_file() {
                    tracing::warn!(blob = %id, "replacing a damaged blob with republished bytes");
                }
                write::BatchItem {
                    path,
                    leaf: u16::from_be_bytes([id.0[0], id.0[1]]),
                    bytes: (!intact).then_some(*bytes),
                }
            })
            .collect();
        let written = write::write_batch_durable(&self.tmp, &batch, &self.durable_dirs);
        written
            .into_iter()
            .zip(batch)
            .zip(items)
            .map(|((result, item), (_, bytes))| match result {
                Ok(()) => {
                    if item.bytes.is_some() {
                        self.stats.count.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .bytes
                            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    }
                    Ok(())
                }
                Err((op, source)) => Err(BlobError::Io {
                    op,
                    path: item.path,
                    source,
                }),
            })
            .collect()
    }

    /// Reads blob `id` and verifies that its bytes hash to `id`.
    ///
    /// # Errors
    /// `NotFound`, `Corrupt` when the content does not match its name, or `Io`.
    pub fn read(&self, id: &BlobId) -> Result<Vec<u8>, BlobError> {
        let path = self.path_of(id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::NotFound { id: *id });
            }
            Err(source) => {
                return Err(BlobError::Io {
                    op: "read",
                    path,
                    source,
                })
            }
        };
        verify(id, &bytes)?;
        Ok(bytes)
    }

    /// Lists every stored blob id (for fsck and metrics). Not for request paths.
    ///
    /// # Errors
    /// I/O errors listing directories.
    pub fn list(&self) -> Result<Vec<BlobId>, BlobError> {
        let mut ids = Vec::new();
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BlobError::Io {
                op: "list",
                path,
                source,
            }
        };
        for outer in fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let outer = outer.map_err(io_err(&self.root))?.path();
            if outer == self.tmp || !outer.is_dir() {
                continue;
            }
            for inner in fs::read_dir(&outer).map_err(io_err(&outer))? {
                let inner = inner.map_err(io_err(&outer))?.path();
                for file in fs::read_dir(&inner).map_err(io_err(&inner))? {
                    let file = file.map_err(io_err(&inner))?;
                    if let Some(id) = file.file_name().to_str().and_then(BlobId::from_hex) {
                        ids.push(id);
                    }
                }
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }
}

/// Checks that `bytes` hash to `id`.
///
/// # Errors
/// `Corrupt` naming the digest actually found.
pub fn verify(id: &BlobId, bytes: &[u8]) -> Result<(), BlobError> {
    let actual = BlobId::of(bytes);
    if actual == *id {
        Ok(())
    } else {
        Err(BlobError::Corrupt {
            id: *id,
            detail: format!("content hashes to {actual} ({} bytes)", bytes.len()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_dedupe_and_detect_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let bytes = b"tarball bytes".to_vec();
        let id = BlobId::of(&bytes);
        assert!(!store.has(&id));
        store.write(&id, &bytes).unwrap();
        store.write(&id, &bytes).unwrap();
        assert_eq!(store.read(&id).unwrap(), bytes);
        assert_eq!(store.list().unwrap(), vec![id]);
        fs::write(store.path_of(&id), b"tarball bytez").unwrap();
        assert!(matches!(store.read(&id), Err(BlobError::Corrupt { .. })));
        let missing = BlobId::of(b"other");
        assert!(matches!(
            store.read(&missing),
            Err(BlobError::NotFound { .. })
        ));
    }

    /// A batch marks the fan-out directories it synced as durable (later batches then sync
    /// only the directory a new blob is linked in); a store attached or opened afresh knows
    /// none, so the first batch in a process syncs the whole path again.
    #[test]
    fn write_all_learns_which_fan_out_directories_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let bytes = b"first".to_vec();
        let id = BlobId::of(&bytes);
        let leaf = u16::from_be_bytes([id.0[0], id.0[1]]);
        assert!(!store.durable_dirs.leaf_known(leaf));
        assert!(!store.durable_dirs.middle_known(leaf));
        let results = store.write_all(&[(id, &bytes[..])]);
        assert!(results.iter().all(Result::is_ok));
        assert!(store.durable_dirs.leaf_known(leaf));
        assert!(store.durable_dirs.middle_known(leaf));
        // Another leaf in the same middle directory is not known yet; its middle is.
        let sibling = leaf ^ 1;
        assert!(!store.durable_dirs.leaf_known(sibling));
        assert!(store.durable_dirs.middle_known(sibling));
        assert_eq!(store.read(&id).unwrap(), bytes);
        let reopened = BlobStore::open(dir.path()).unwrap();
        assert!(!reopened.durable_dirs.leaf_known(leaf));
    }

    #[test]
    fn write_all_stores_new_present_and_damaged_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let blobs: Vec<Vec<u8>> = (0..40u32)
            .map(|i| format!("tarball {i}").repeat(50).into_bytes())
            .collect();
        let ids: Vec<BlobId> = blobs.iter().map(|b| BlobId::of(b)).collect();
        store.write(&ids[0], &blobs[0]).unwrap();
        store.write(&ids[1], &blobs[1]).unwrap();
        fs::write(store.path_of(&ids[1]), b"damaged").unwrap();
        let items: Vec<(BlobId, &[u8])> = ids
            .iter()
            .zip(&blobs)
            .map(|(id, b)| (*id, b.as_slice()))
            .collect();
        let results = store.write_all(&items);
        assert_eq!(results.len(), blobs.len());
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        for (id, bytes) in ids.iter().zip(&blobs) {
            assert_eq!(&store.read(id).unwrap(), bytes);
        }
        let mut listed = store.list().unwrap();
        let mut expected = ids.clone();
        listed.sort_unstable();
        expected.sort_unstable();
        assert_eq!(listed, expected);
        assert_eq!(fs::read_dir(&store.tmp).unwrap().count(), 0);
    }

    #[test]
    fn open_clears_leftover_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        drop(BlobStore::open(dir.path()).unwrap());
        fs::write(dir.path().join("tmp").join("123-0.tmp"), b"half").unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(&store.tmp).unwrap().count(), 0);
    }
}
