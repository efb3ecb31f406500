//! `ShardReader`: one reader's (a core's) redb read transaction of one shard, kept open and
//! reused while the shard's commit generation is unchanged and even.
//!
//! `ShardStore::read_doc` and friends begin a read transaction and open a table for every
//! call. On a cache miss that was a measurable share of the request (redb's `begin_read`
//! registers the transaction under a mutex and `open_table` looks the table up in the
//! table tree; dropping the transaction deregisters it). A reader keeps the transaction
//! and the tables it opened, and reuses them under the same rule the cores' caches follow:
//!
//! - the caller reads `ShardStore::generation` *before* the read and passes it in;
//! - a kept transaction is reused only when it was begun after the caller had read the very
//!   same generation, and that generation is even. Every commit adds 1 before it starts and
//!   1 after it returns (`ShardStore::commit_visible`: the writer and fsck's repairs), so an
//!   unchanged even generation means no commit started since the transaction was begun, and every
//!   commit that had completed before the generation was read is visible to it;
//! - otherwise the kept transaction is dropped and a new one begun (and tagged with the
//!   caller's generation).
//!
//! So a read never returns data older than a commit that completed before the caller read
//! the generation, which the caller does at the start of each request. A kept transaction
//! pins the pages of its snapshot: `release_if_stale` drops it once the shard has moved on,
//! and the server calls it periodically so an idle core does not keep freed pages from
//! being reused.

use bytes::Bytes;
use redb::{ReadOnlyTable, ReadTransaction, ReadableDatabase};

use super::tables::{segments_of, DOCS, DOC_SEGMENTS, REVS, SERVED};
use super::{ReadError, ShardStore};
use crate::served::{
    assemble_doc, decode_doc, decode_index, doc_segments, identity_doc, DocKind, ServedDoc,
    ServedIndex,
};

type BytesTable = ReadOnlyTable<&'static str, &'static [u8]>;
type SegmentsTable = ReadOnlyTable<(&'static str, u32), &'static [u8]>;

struct Snapshot {
    /// The generation the caller had read before this transaction was begun.
    generation: u64,
    txn: ReadTransaction,
    revs: Option<ReadOnlyTable<&'static str, u64>>,
    docs: [Option<BytesTable>; 2],
    segments: [Option<SegmentsTable>; 2],
    index: Option<BytesTable>,
}

/// `table` of the snapshot's transaction, opened into `slot` at its first use.
fn opened<'s, K: redb::Key + 'static, V: redb::Value + 'static>(
    slot: &'s mut Option<ReadOnlyTable<K, V>>,
    txn: &ReadTransaction,
    table: redb::TableDefinition<K, V>,
    store: &ShardStore,
) -> Result<&'s ReadOnlyTable<K, V>, ReadError> {
    if slot.is_none() {
        *slot = Some(txn.open_table(table).map_err(|e| store.read_error(e))?);
    }
    Ok(slot.as_ref().expect("opened above"))
}

/// One reader's reusable read transaction of one shard. Not shared: each core owns one per
/// shard.
#[derive(Default)]
pub struct ShardReader {
    snapshot: Option<Snapshot>,
    /// Reads that reused a kept transaction.
    pub reused: u64,
    /// Read transactions begun.
    pub begun: u64,
}

impl ShardReader {
    /// A reader with no transaction yet.
    #[must_use]
    pub fn new() -> ShardReader {
        ShardReader::default()
    }

    /// The kept transaction when `generation` allows its reuse, else a new one.
    fn snapshot(
        &mut self,
        store: &ShardStore,
        generation: u64,
    ) -> Result<&mut Snapshot, ReadError> {
        let reusable = generation.is_multiple_of(2)
            && self
                .snapshot
                .as_ref()
                .is_some_and(|s| s.generation == generation);
        if reusable {
            self.reused += 1;
        } else {
            // Drop the old one first: it pins pages the writer could reuse.
            self.snapshot = None;
            let txn = store
                .database()
                .begin_read()
                .map_err(|e| store.read_error(e))?;
            self.begun += 1;
            self.snapshot = Some(Snapshot {
                generation,
                txn,
                revs: None,
                docs: [None, None],
                segments: [None, None],
                index: None,
            });
        }
        Ok(self.snapshot.as_mut().expect("set above"))
    }

    /// Drops the kept transaction when the shard's generation has moved past it (or is odd),
    /// so the pages it pins can be reused by the writer. Cheap: one atomic load.
    pub fn release_if_stale(&mut self, store: &ShardStore) {
        let generation = store.generation();
        if self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.generation != generation || !generation.is_multiple_of(2))
        {
            self.snapshot = None;
        }
    }

    /// Drops the kept transaction, if any (the reader has been idle).
    pub fn release(&mut self) {
        self.snapshot = None;
    }

    /// Whether a transaction is kept (for tests).
    #[must_use]
    pub fn holds_transaction(&self) -> bool {
        self.snapshot.is_some()
    }

    /// The package's revision, if it exists. `generation`: `store.generation()`, read by the
    /// caller before this call.
    ///
    /// # Errors
    /// redb errors.
    pub fn read_rev(
        &mut self,
        store: &ShardStore,
        generation: u64,
        name: &str,
    ) -> Result<Option<u64>, ReadError> {
        let snapshot = self.snapshot(store, generation)?;
        let table = opened(&mut snapshot.revs, &snapshot.txn, REVS, store)?;
        let rev = table.get(name).map_err(|e| store.read_error(e))?;
        Ok(rev.map(|v| v.value()))
    }

    /// One pre-rendered document of the package (one copy out of redb into a shared buffer;
    /// a document with segments is assembled from them in this transaction; an identity
    /// kind is the stored gzip form inflated), as `ShardStore::read_doc`. `generation`: as
    /// for `read_rev`.
    ///
    /// # Errors
    /// redb errors, or a corrupt value.
    pub fn read_doc(
        &mut self,
        store: &ShardStore,
        generation: u64,
        name: &str,
        kind: DocKind,
    ) -> Result<Option<ServedDoc>, ReadError> {
        let snapshot = self.snapshot(store, generation)?;
        let at = kind.stored_index();
        let table = opened(&mut snapshot.docs[at], &snapshot.txn, DOCS[at], store)?;
        let Some(value) = table.get(name).map_err(|e| store.read_error(e))? else {
            return Ok(None);
        };
        let whole = match doc_segments(value.value()) {
            Ok(0) | Err(_) => Ok(Bytes::copy_from_slice(value.value())),
            Ok(count) => {
                let table = opened(
                    &mut snapshot.segments[at],
                    &snapshot.txn,
                    DOC_SEGMENTS[at],
                    store,
                )?;
                // Only the segments the value names: a stray one (fsck reports it) does not
                // stop the document from being served.
                let segments =
                    segments_of(table, name, Some(count)).map_err(|e| store.read_error(e))?;
                let parts: Vec<(u32, &[u8])> = segments
                    .iter()
                    .map(|(n, bytes)| (*n, bytes.value()))
                    .collect();
                assemble_doc(value.value(), &parts).map(Bytes::from)
            }
        };
        drop(value);
        whole
            .and_then(decode_doc)
            .and_then(|doc| {
                if kind.is_gzip() {
                    Ok(doc)
                } else {
                    identity_doc(&doc)
                }
            })
            .map(Some)
            .map_err(|e| ReadError::Corrupt {
                name: name.to_owned(),
                detail: format!("{} document: {e}", kind.label()),
            })
    }

    /// The package's served index, as `ShardStore::read_index`. `generation`: as for
    /// `read_rev`.
    ///
    /// # Errors
    /// redb errors, or a corrupt value.
    pub fn read_index(
        &mut self,
        store: &ShardStore,
        generation: u64,
        name: &str,
    ) -> Result<Option<ServedIndex>, ReadError> {
        let snapshot = self.snapshot(store, generation)?;
        let table = opened(&mut snapshot.index, &snapshot.txn, SERVED, store)?;
        let Some(value) = table.get(name).map_err(|e| store.read_error(e))? else {
            return Ok(None);
        };
        decode_index(value.value())
            .map(Some)
            .map_err(|e| ReadError::Corrupt {
                name: name.to_owned(),
                detail: e.to_string(),
            })
    }
}
