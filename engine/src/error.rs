//! Error helpers shared by the engine's per-operation error enums.

use std::io;

/// True when `e` means the disk (or a quota) is full: the server answers 507 and the store
/// stays as it was.
#[must_use]
pub fn is_storage_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || e.raw_os_error() == Some(libc::ENOSPC)
        || e.raw_os_error() == Some(libc::EDQUOT)
}
