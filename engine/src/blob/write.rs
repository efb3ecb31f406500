//! Durable write-once file creation: temp file -> write -> fsync -> rename -> fsync directory.
//! After `write_durable` returns Ok, the file survives a crash under its final name with exactly
//! the given bytes; before that, the final name either does not exist or (when it already
//! existed) is untouched. Temp files left by a crash live in the store's `tmp/` directory and
//! are removed when the store opens.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

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
