//! Blob files read and verified off the cores' event loops.
//!
//! A tarball bigger than `engine::limits::INLINE_BLOB_BYTES_MAX` is a file of the blob store.
//! The first request for it on a core reads the whole file and checks its blake3: for the
//! 9.7 MB typescript tarball that held every other connection of the core for 44-90 ms.
//! The cores hand such reads to `BLOB_READ_THREADS` threads and await the bytes; other
//! requests go on meanwhile. Once read, a core keeps the bytes in its `TarballCache`.

use std::sync::Arc;

use engine::blob::{BlobError, BlobId, BlobStore};
use futures_channel::oneshot;

use crate::idle::WorkerRelease;
use crate::limits::{BLOB_READ_QUEUE_DEPTH, BLOB_READ_THREADS};

type Job = (BlobId, oneshot::Sender<Result<Vec<u8>, BlobError>>);

/// The handle the cores send reads to.
pub struct BlobReaders {
    tx: flume::Sender<Job>,
    blobs: Arc<BlobStore>,
}

impl BlobReaders {
    /// Starts the reader threads.
    ///
    /// # Errors
    /// Thread creation failures.
    /// Each returns its free memory after `idle_release_secs` without a read (`idle.rs`).
    pub fn start(blobs: &Arc<BlobStore>, idle_release_secs: u64) -> std::io::Result<BlobReaders> {
        let (tx, rx) = flume::bounded::<Job>(BLOB_READ_QUEUE_DEPTH);
        for i in 0..BLOB_READ_THREADS {
            let rx = rx.clone();
            let blobs = Arc::clone(blobs);
            std::thread::Builder::new()
                .name(format!("blob-read-{i}"))
                .spawn(move || {
                    let mut release = WorkerRelease::new(idle_release_secs);
                    while let Some((id, reply)) = release.recv(&rx) {
                        let _ = reply.send(blobs.read(&id));
                    }
                })?;
        }
        Ok(BlobReaders {
            tx,
            blobs: Arc::clone(blobs),
        })
    }

    /// The bytes of blob `id`, verified against its digest (`BlobStore::read`), read on a
    /// reader thread.
    ///
    /// # Errors
    /// `NotFound`, `Corrupt` or I/O errors of the blob store; an I/O error when the readers
    /// have stopped.
    pub async fn read(&self, id: BlobId) -> Result<Vec<u8>, BlobError> {
        let gone = || BlobError::Io {
            op: "read",
            path: self.blobs.path_of(&id),
            source: std::io::Error::other("the blob reader threads have stopped"),
        };
        let (reply, answer) = oneshot::channel();
        self.tx.send_async((id, reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}
