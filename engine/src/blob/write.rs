//! Durable write-once file creation: temp file -> write -> fsync -> rename -> fsync directory.
//! After `write_durable` returns Ok, the file survives a crash under its final name with exactly
//! the given bytes; before that, the final name either does not exist or (when it already
//! existed) is untouched. Temp files left by a crash live in the store's `tmp/` directory and
//! are removed when the store opens.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static TEMP_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `final_path` durably, through a temp file in `tmp_dir` (same file system).
/// `final_path`'s parent must exist. Blocks: two fsyncs.
pub(crate) fn write_durable(tmp_dir: &Path, final_path: &Path, bytes: &[u8]) -> io::Result<()> {
    let sequence = TEMP_SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let tmp_path = tmp_dir.join(format!("{}-{sequence}.tmp", std::process::id()));
    let result = write_then_rename(&tmp_path, final_path, bytes);
    if result.is_err() {
        // The temp file is ours alone; removing it cannot touch stored data.
        let _ = fs::remove_file(&tmp_path);
    }
    result
}

fn write_then_rename(tmp_path: &Path, final_path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp_path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(tmp_path, final_path)?;
    let parent = final_path
        .parent()
        .ok_or_else(|| io::Error::other("blob path has no parent"))?;
    sync_dir(parent)
}

/// Which fan-out directories of one store are known, in this process, to have a durable
/// entry in their parent: set once a sync of the parent succeeded after the directory
/// existed. A batch then syncs only the directory that receives the new link, not the whole
/// path to the root: every fsync flushes the device cache on ext4, clean directory or not, and
/// the two ancestors were a third of a publish storm's syncs.
///
/// Indexed by the blob id's first two bytes (`ab/cd` is leaf `0xabcd` in middle `0xab`), so
/// it costs 8 KiB per store whatever the store holds.
pub(crate) struct DurableDirs {
    leaves: Box<[AtomicU64]>,
    middles: [AtomicU64; 4],
}

impl DurableDirs {
    pub(crate) fn new() -> DurableDirs {
        DurableDirs {
            leaves: (0..1024).map(|_| AtomicU64::new(0)).collect(),
            middles: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn bit(words: &[AtomicU64], k: usize) -> (&AtomicU64, u64) {
        (&words[k / 64], 1 << (k % 64))
    }

    pub(super) fn leaf_known(&self, leaf: u16) -> bool {
        let (word, mask) = Self::bit(&self.leaves, usize::from(leaf));
        word.load(Ordering::Acquire) & mask != 0
    }

    pub(super) fn middle_known(&self, leaf: u16) -> bool {
        let (word, mask) = Self::bit(&self.middles, usize::from(leaf >> 8));
        word.load(Ordering::Acquire) & mask != 0
    }

    /// After a successful sync of everything on the way to leaf `leaf`.
    fn mark(&self, leaf: u16) {
        let (word, mask) = Self::bit(&self.leaves, usize::from(leaf));
        word.fetch_or(mask, Ordering::AcqRel);
        let (word, mask) = Self::bit(&self.middles, usize::from(leaf >> 8));
        word.fetch_or(mask, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for DurableDirs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = |words: &[AtomicU64]| -> u32 {
            words
                .iter()
                .map(|w| w.load(Ordering::Relaxed).count_ones())
                .sum()
        };
        f.debug_struct("DurableDirs")
            .field("leaves", &count(&self.leaves))
            .field("middles", &count(&self.middles))
            .finish()
    }
}

/// One blob of a batch for `write_batch_durable`.
pub(crate) struct BatchItem<'a> {
    pub(crate) path: PathBuf,
    /// The fan-out leaf `path` is in (the id's first two bytes), for `DurableDirs`.
    pub(crate) leaf: u16,
    /// The bytes to store, or None when the file at `path` was just verified to hold them
    /// (it is then only synced: it may have been renamed into place by a concurrent batch
    /// whose syncs have not finished).
    pub(crate) bytes: Option<&'a [u8]>,
}

/// Makes every item durable under its path, with one round of concurrent syncs for the
/// whole batch instead of two sequential fsyncs per file:
/// 1. missing fan-out directories are created;
/// 2. each new blob is written to a temp file and renamed into place, without syncing;
/// 3. every file and the directory it is linked in are fsynced, and so is each directory on
///    the way to it that this batch created or that `durable` does not know to be durable,
///    from up to `BLOB_WRITE_THREADS_MAX` threads at once.
///
/// An item is reported Ok only after all three succeeded for it. A crash before step 3 ends
/// can leave a file under its final name with incomplete content; nothing references it (the
/// metadata commits only after Ok), reads verify content against the name, fsck reports such
/// a file as an orphan, and a later write of the same blob replaces it (`BlobStore::write`
/// heals a file whose content does not match). Blocks: syncs, overlapped.
pub(crate) fn write_batch_durable(
    tmp_dir: &Path,
    items: &[BatchItem<'_>],
    durable: &DurableDirs,
) -> Vec<Result<(), (&'static str, io::Error)>> {
    let mut results: Vec<Result<(), (&'static str, io::Error)>> =
        items.iter().map(|_| Ok(())).collect();
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let Some(dir) = item.path.parent() else {
            results[i] = Err(("create", io::Error::other("blob path has no parent")));
            continue;
        };
        match create_dirs_deferred(dir, &mut dirs) {
            Ok(()) => {
                // The leaf receives the new link. Its parent and the root, even when they
                // already existed, unless known durable: another writer may have created
                // one and not synced it yet.
                let mut ancestors = dir.ancestors().map(Path::to_path_buf);
                dirs.extend(ancestors.next());
                let middle = ancestors.next();
                let root = ancestors.next();
                if !durable.leaf_known(item.leaf) {
                    dirs.extend(middle);
                }
                if !durable.middle_known(item.leaf) {
                    dirs.extend(root);
                }
            }
            Err(e) => results[i] = Err(("create", e)),
        }
    }
    let mut files: Vec<Option<File>> = items.iter().map(|_| None).collect();
    for (i, item) in items.iter().enumerate() {
        if results[i].is_err() {
            continue;
        }
        let opened = match item.bytes {
            Some(bytes) => write_then_rename_unsynced(tmp_dir, &item.path, bytes),
            None => File::open(&item.path).map_err(|e| ("open", e)),
        };
        match opened {
            Ok(file) => files[i] = Some(file),
            Err(e) => results[i] = Err(e),
        }
    }
    let file_count = files.iter().flatten().count();
    let syncs: Vec<SyncTarget> = files
        .iter_mut()
        .filter_map(Option::take)
        .map(SyncTarget::File)
        .chain(dirs.iter().cloned().map(SyncTarget::Dir))
        .collect();
    let mut synced = sync_all(syncs).into_iter();
    let file_results: Vec<io::Result<()>> = synced.by_ref().take(file_count).collect();
    let failed_dirs: Vec<(&PathBuf, io::Error)> = dirs
        .iter()
        .zip(synced)
        .filter_map(|(dir, result)| result.err().map(|e| (dir, e)))
        .collect();
    let mut file_results = file_results.into_iter();
    for (i, item) in items.iter().enumerate() {
        if results[i].is_err() {
            continue;
        }
        if let Some(Err(e)) = file_results.next() {
            results[i] = Err(("fsync", e));
        } else if let Some((_, e)) = failed_dirs
            .iter()
            .find(|(dir, _)| item.path.starts_with(dir))
        {
            // Not durable under its name while a directory on the way did not sync.
            results[i] = Err(("fsync", io::Error::new(e.kind(), e.to_string())));
        } else {
            durable.mark(item.leaf);
        }
    }
    results
}

/// Something the sync round makes durable.
enum SyncTarget {
    File(File),
    Dir(PathBuf),
}

impl SyncTarget {
    fn sync(&self) -> io::Result<()> {
        match self {
            SyncTarget::File(file) => file.sync_all(),
            SyncTarget::Dir(dir) => sync_dir(dir),
        }
    }
}

struct SyncJob {
    target: SyncTarget,
    index: usize,
    reply: flume::Sender<(usize, io::Result<()>)>,
}

/// The process's sync threads: `BLOB_WRITE_THREADS_MAX` long-lived threads that take fsyncs
/// from one queue. Spawning threads per batch cost about a tenth of the server's CPU in a
/// publish storm (clone, stack setup, TLB shootdowns on exit). None when no thread could be
/// started; syncs then run on the caller's thread.
fn sync_pool() -> Option<&'static flume::Sender<SyncJob>> {
    static POOL: OnceLock<Option<flume::Sender<SyncJob>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = flume::unbounded::<SyncJob>();
        let mut started = 0;
        for k in 0..crate::limits::BLOB_WRITE_THREADS_MAX {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("blob-sync-{k}"))
                .spawn(move || {
                    for job in rx.iter() {
                        let result = job.target.sync();
                        // The batch stopped waiting only if its thread died; nothing to do.
                        let _ = job.reply.send((job.index, result));
                    }
                });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::warn!(error = %e, "could not start a blob sync thread"),
            }
        }
        (started > 0).then_some(tx)
    })
    .as_ref()
}

/// Syncs every target, concurrently on the sync threads, and returns the results in order.
fn sync_all(targets: Vec<SyncTarget>) -> Vec<io::Result<()>> {
    let count = targets.len();
    let Some(pool) = sync_pool().filter(|_| count > 1) else {
        return targets.iter().map(SyncTarget::sync).collect();
    };
    let (reply, replies) = flume::bounded(count);
    let mut slots: Vec<Option<io::Result<()>>> = Vec::new();
    slots.resize_with(count, || None);
    for (index, target) in targets.into_iter().enumerate() {
        let job = SyncJob {
            target,
            index,
            reply: reply.clone(),
        };
        if let Err(flume::SendError(job)) = pool.send(job) {
            slots[index] = Some(job.target.sync());
        }
    }
    drop(reply);
    // Ends when every job replied, or when the last sender is gone (a thread died with it).
    for (index, result) in replies.iter() {
        slots[index] = Some(result);
    }
    slots
        .into_iter()
        .map(|slot| slot.unwrap_or_else(|| Err(io::Error::other("blob sync thread died"))))
        .collect()
}

/// Writes `bytes` to a new file that appears at `final_path` complete or not at all, without
/// syncing. Returns the open file, for the batch's sync round.
///
/// The file is made with `O_TMPFILE` in its own fan-out directory and linked into place:
/// its inode is allocated near that directory (a shared temp directory concentrates every
/// allocation in one block group, which ext4 then searches at length: about half the
/// server's CPU in a publish storm), and a crash leaves no name behind. Where that is not
/// available (no `O_TMPFILE` support, no `/proc`), or the name exists (a damaged copy being
/// replaced, or a concurrent identical write), it falls back to a temp file in `tmp_dir`
/// renamed over the name.
fn write_then_rename_unsynced(
    tmp_dir: &Path,
    final_path: &Path,
    bytes: &[u8],
) -> Result<File, (&'static str, io::Error)> {
    if let Some(file) = write_then_link(final_path, bytes) {
        return Ok(file);
    }
    let sequence = TEMP_SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let tmp_path = tmp_dir.join(format!("{}-{sequence}.tmp", std::process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp_path)
        .and_then(|mut file| file.write_all(bytes).map(|()| file))
        .map_err(|e| ("write", e))
        .and_then(|file| {
            fs::rename(&tmp_path, final_path)
                .map(|()| file)
                .map_err(|e| ("rename", e))
        });
    if written.is_err() {
        // The temp file is ours alone; removing it cannot touch stored data.
        let _ = fs::remove_file(&tmp_path);
    }
    written
}

/// The `O_TMPFILE` + `linkat` path of `write_then_rename_unsynced`; None when it cannot be
/// taken (the caller falls back; an unlinked `O_TMPFILE` inode vanishes when dropped).
fn write_then_link(final_path: &Path, bytes: &[u8]) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;

    let dir = final_path.parent()?;
    let mut file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o644)
        .open(dir)
        .ok()?;
    file.write_all(bytes).ok()?;
    let source = format!("/proc/self/fd/{}", file.as_raw_fd());
    // AT_SYMLINK_FOLLOW resolves the /proc magic link to the unnamed inode.
    let linked = rustix::fs::linkat(
        rustix::fs::CWD,
        source.as_str(),
        rustix::fs::CWD,
        final_path,
        rustix::fs::AtFlags::SYMLINK_FOLLOW,
    );
    linked.is_ok().then_some(file)
}

/// Creates `dir` and any missing ancestors without syncing, adding the parent of each
/// directory it creates to `to_sync`.
fn create_dirs_deferred(dir: &Path, to_sync: &mut BTreeSet<PathBuf>) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir
        .parent()
        .ok_or_else(|| io::Error::other("directory has no parent"))?;
    create_dirs_deferred(parent, to_sync)?;
    match fs::create_dir(dir) {
        Ok(()) => {
            to_sync.insert(parent.to_path_buf());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// fsyncs a directory so that a rename or create inside it is durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (and missing parents) and makes the new entries durable.
pub(crate) fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}
