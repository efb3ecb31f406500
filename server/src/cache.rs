//! The packument cache (shared by the cores) and per-core caches (owned by one core, `!Send`,
//! no locks).
//!
//! `SharedPackages` + `PackageCache`: (name, document kind) -> the served document, and
//! name -> the tarball index, each loaded on first use, alone (a server answering abbreviated
//! gzip documents holds only those). The values live in one map shared by every core, split
//! into `PACKAGE_CACHE_SEGMENTS` mutex-guarded segments by the name's hash, so a package read
//! on one core is a hit on the others and the budget holds each package once (with a cache
//! per core, every core held its own copy of the same packages and a second core added no
//! capacity). No lock is held across a storage read. A value is valid while the shard's commit
//! generation is unchanged and even (odd means a commit is running, see
//! `ShardStore::generation`); after any commit to the shard it is revalidated by reading the
//! package's revision (a few bytes) and reloaded only when that changed. Each core's
//! `PackageCache` reads through its own `ShardReader` per shard, which keeps one redb read
//! transaction open while that same rule says nothing changed (engine/src/shard/reader.rs).
//! When the budget is exceeded, the segment being inserted into drops a sixteenth of its
//! bytes (in hash order, which is unrelated to use, so this is random eviction).
//!
//! A document hit touches few cache lines, because at 100,000 packages almost none of them
//! are in the CPU's caches: the name is hashed once (xxh3, for the segment and for the
//! segment's `DocTable`, whose slot a core prefetches while it routes the request), the slot
//! holds the hash, the generation and the document's pointer, and the document is one
//! allocation (`CachedDoc`: reference count, revision, name, validator, body), so comparing
//! the name, taking a reference and reading the validator and the body walk one run of
//! lines (ARCHITECTURE.md, "A cache hit reads one run of lines").
//!
//! `TarballCache`: blob id -> bytes. Blobs are immutable, so entries never go stale; bytes are
//! verified against their blake3 name when loaded, from the package's shard (inline tarballs)
//! or from the blob store (files). When full it is cleared.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use engine::blob::{BlobId, BlobStore};
use engine::limits::INLINE_BLOB_BYTES_MAX;
use engine::served::{DocKind, ServedDoc, ServedIndex};
use engine::shard::{ReadError, ShardReader, ShardStore};

use crate::doc_table::{DocSlot, DocTable};

use crate::limits::{
    PACKAGE_CACHE_SEGMENTS, REBASED_CACHE_BYTES_MAX, TARBALL_CACHE_BYTES_MAX,
    TARBALL_CACHE_ENTRY_BYTES_MAX,
};

/// Charged per cached document beyond its allocation's bytes: the table slot (32 bytes) and
/// its control byte, the table's spare capacity, and the allocation's reference counts.
const DOC_OVERHEAD_BYTES: usize = 80;
/// Charged per cached tarball index beyond `ServedIndex::weight_bytes`: the key, the map
/// node and the `Arc`.
const INDEX_OVERHEAD_BYTES: usize = 128;

/// `CachedDoc`'s header: revision (u64), name length (u16), validator length (u8), all
/// little-endian.
const DOC_HEADER_BYTES: usize = 11;

/// How much of a document a hit fetches at once (`CachedDoc::touch`): 16 lines, as many
/// misses as a recent x86 core's L1 keeps in flight; the hardware prefetcher streams the rest
/// of a bigger document. Measured (`packument_cache/hit_100k`, 1.8 KB documents): no touch
/// 454 ns, 1 KiB 430 ns, 4 KiB 833 ns (more lines than fill buffers stall the core); through
/// HTTP, 6 alternating rounds at 100,000 packages: 100k/1k 0.914/0.906 without, 0.929/0.940
/// with 1 KiB (ARCHITECTURE.md, "A cache hit reads one run of lines").
const TOUCH_BYTES_MAX: usize = 1024;

/// One served document in one allocation: `[rev][name len][etag len][name][etag][body]`
/// behind one reference count. Cloning it touches the first cache line, which a hit reads
/// anyway for the name; the body follows it.
#[derive(Clone)]
pub struct CachedDoc(Arc<[u8]>);

impl CachedDoc {
    /// `doc` of package `name`; `None` when the name or the validator does not fit the header
    /// (never for a valid npm name, at most 214 bytes, or a validator the engine makes).
    #[must_use]
    pub fn new(name: &str, doc: &ServedDoc) -> Option<CachedDoc> {
        let name_len = u16::try_from(name.len()).ok()?;
        let etag_len = u8::try_from(doc.etag.len()).ok()?;
        let mut data =
            Vec::with_capacity(DOC_HEADER_BYTES + name.len() + doc.etag.len() + doc.body.len());
        data.extend_from_slice(&doc.rev.to_le_bytes());
        data.extend_from_slice(&name_len.to_le_bytes());
        data.push(etag_len);
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&doc.etag);
        data.extend_from_slice(&doc.body);
        Some(CachedDoc(Arc::from(data)))
    }

    /// The package's revision this document was rendered from.
    #[must_use]
    pub fn rev(&self) -> u64 {
        let mut rev = [0; 8];
        rev.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(rev)
    }

    fn name_len(&self) -> usize {
        usize::from(u16::from_le_bytes([self.0[8], self.0[9]]))
    }

    fn etag_len(&self) -> usize {
        usize::from(self.0[10])
    }

    /// The package name.
    #[must_use]
    pub fn name(&self) -> &[u8] {
        &self.0[DOC_HEADER_BYTES..DOC_HEADER_BYTES + self.name_len()]
    }

    /// The quoted strong validator (see `ServedDoc::etag`).
    #[must_use]
    pub fn etag(&self) -> &[u8] {
        let start = DOC_HEADER_BYTES + self.name_len();
        &self.0[start..start + self.etag_len()]
    }

    /// The document's bytes (gzip or identity, as its kind says).
    #[must_use]
    pub fn body(&self) -> &[u8] {
        &self.0[DOC_HEADER_BYTES + self.name_len() + self.etag_len()..]
    }

    /// Whether an `If-None-Match` candidate names this document in either encoding.
    #[must_use]
    pub fn etag_matches(&self, candidate: &[u8]) -> bool {
        engine::served::etag_matches(self.etag(), candidate)
    }

    /// Whether both are the same allocation.
    #[must_use]
    pub fn ptr_eq(&self, other: &CachedDoc) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Reads one byte of each cache line of the first `TOUCH_BYTES_MAX` bytes, each read
    /// independent of the others, so the CPU fetches those lines all at once instead of one
    /// after another as the name compare, the validator and the body copy reach them.
    pub(crate) fn touch(&self) {
        let head = &self.0[..self.0.len().min(TOUCH_BYTES_MAX)];
        let sum = head.iter().step_by(64).fold(0u8, |sum, &b| sum ^ b);
        std::hint::black_box(sum);
    }

    /// Bytes charged to the cache (the length is in the pointer: no read of the allocation).
    pub(crate) fn weight(&self) -> usize {
        self.0.len() + DOC_OVERHEAD_BYTES
    }
}

impl AsRef<[u8]> for CachedDoc {
    /// The body (what `Bytes::from_owner` serves).
    fn as_ref(&self) -> &[u8] {
        self.body()
    }
}

impl std::fmt::Debug for CachedDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedDoc")
            .field("name", &String::from_utf8_lossy(self.name()))
            .field("rev", &self.rev())
            .field("body_len", &self.body().len())
            .finish_non_exhaustive()
    }
}

/// A tarball index in a segment's map.
struct IndexSlot {
    value: Arc<ServedIndex>,
    generation: u64,
}

impl IndexSlot {
    fn weight(&self) -> usize {
        self.value.weight_bytes() + INDEX_OVERHEAD_BYTES
    }
}

#[derive(Default)]
struct Segment {
    /// One table per `DocKind` (by `DocKind::index`).
    docs: [DocTable; DocKind::ALL.len()],
    indexes: HashMap<Box<str>, IndexSlot>,
    bytes: usize,
    /// Eviction passes so far: each starts at the next table, so no kind is always first.
    evictions: usize,
}

/// A segment, and where its document tables' slots are for `PackageCache::prefetch`, which
/// reads them without the lock: a stale value only makes a useless prefetch (a prefetch of
/// any address is harmless), and they are rewritten under the lock whenever a table may
/// have moved.
#[derive(Default)]
struct SegmentCell {
    segment: Mutex<Segment>,
    layouts: [(AtomicUsize, AtomicUsize); DocKind::ALL.len()],
}

impl SegmentCell {
    fn publish_layouts(&self, segment: &Segment) {
        for (table, (base, mask)) in segment.docs.iter().zip(&self.layouts) {
            let (b, m) = table.layout();
            base.store(b, Ordering::Relaxed);
            mask.store(m, Ordering::Relaxed);
        }
    }
}

/// The served values every core has read, within one byte budget.
pub struct SharedPackages {
    segments: Box<[SegmentCell]>,
    /// Bytes charged over all segments.
    bytes: AtomicUsize,
    budget: usize,
}

/// The name's hash: the top bits pick the segment, the whole value keys the segment's table.
fn name_hash(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

impl SharedPackages {
    /// An empty cache that holds at most about `budget` bytes of values and overhead.
    #[must_use]
    pub fn new(budget: usize) -> SharedPackages {
        SharedPackages {
            segments: (0..PACKAGE_CACHE_SEGMENTS)
                .map(|_| SegmentCell::default())
                .collect(),
            bytes: AtomicUsize::new(0),
            budget,
        }
    }

    fn cell(&self, hash: u64) -> &SegmentCell {
        let index = usize::try_from(hash >> 32).unwrap_or(0) % self.segments.len();
        &self.segments[index]
    }

    fn segment(&self, hash: u64) -> MutexGuard<'_, Segment> {
        // A panic aborts the process (release profile), so a poisoned lock is never seen
        // in production; tests keep going with the data as it is.
        self.cell(hash)
            .segment
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records where `segment`'s tables are now (call with its lock held, after a change
    /// that may have moved one).
    fn publish_layouts(&self, hash: u64, segment: &Segment) {
        self.cell(hash).publish_layouts(segment);
    }

    /// Drops every value, one segment at a time (the server has been idle: `idle.rs`). A core
    /// that reads meanwhile loads again, as after an eviction. The values are freed after
    /// each segment's lock is released.
    pub fn clear(&self) {
        for cell in &self.segments {
            let emptied = {
                let mut segment = cell.segment.lock().unwrap_or_else(PoisonError::into_inner);
                let emptied = std::mem::take(&mut *segment);
                segment.evictions = emptied.evictions;
                cell.publish_layouts(&segment);
                self.bytes.fetch_sub(emptied.bytes, Ordering::Relaxed);
                emptied
            };
            drop(emptied);
        }
    }

    /// Bytes charged to the cache (for tests and metrics).
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The budget given to `new`.
    #[must_use]
    pub fn budget(&self) -> usize {
        self.budget
    }

    fn charge(&self, segment: &mut Segment, add: usize, remove: usize) {
        segment.bytes = segment.bytes + add - remove;
        if add >= remove {
            self.bytes.fetch_add(add - remove, Ordering::Relaxed);
        } else {
            self.bytes.fetch_sub(remove - add, Ordering::Relaxed);
        }
    }

    /// Drops a sixteenth of `segment`'s bytes (at least one value), in hash order, starting
    /// at a different table each pass. A segment is 1/`PACKAGE_CACHE_SEGMENTS` of the cache,
    /// so a pass is short, and the cache stays about 97% used.
    fn evict(&self, segment: &mut Segment) {
        let target = segment.bytes / 16 * 15;
        let mut bytes = segment.bytes;
        let tables = segment.docs.len() + 1;
        let first = segment.evictions % tables;
        segment.evictions += 1;
        for step in 0..tables {
            if bytes <= target {
                break;
            }
            let table = (first + step) % tables;
            if let Some(docs) = segment.docs.get_mut(table) {
                docs.retain(|slot| {
                    if bytes <= target {
                        return true;
                    }
                    bytes -= slot.doc.weight();
                    false
                });
            } else {
                segment.indexes.retain(|_, slot| {
                    if bytes <= target {
                        return true;
                    }
                    bytes -= slot.weight();
                    false
                });
            }
        }
        let freed = segment.bytes - bytes;
        self.charge(segment, 0, freed);
    }

    /// Whether a value of `weight` bytes may be stored in `segment` (evicting first when the
    /// budget is exceeded).
    fn make_room(&self, segment: &mut Segment, weight: usize) -> bool {
        if weight > self.budget / 4 {
            return false;
        }
        if self.bytes() + weight > self.budget {
            self.evict(segment);
            // The other segments hold the budget (rare: traffic skewed to a few segments).
            // Stay bounded: do not grow past an eighth over the budget.
            if self.bytes() + weight > self.budget / 8 * 9 {
                return false;
            }
        }
        true
    }
}

/// One core's view of the shared packument cache: its own read transactions (one
/// `ShardReader` per shard) and its own counters.
pub struct PackageCache {
    shared: Arc<SharedPackages>,
    readers: Vec<ShardReader>,
    /// Answered from the cache without touching storage.
    pub hits: u64,
    /// Confirmed current by reading only the revision.
    pub revalidations: u64,
    /// Loaded from storage.
    pub loads: u64,
}

impl PackageCache {
    /// A core's handle on `shared`.
    #[must_use]
    pub fn new(shared: Arc<SharedPackages>) -> PackageCache {
        PackageCache {
            shared,
            readers: Vec::new(),
            hits: 0,
            revalidations: 0,
            loads: 0,
        }
    }

    /// Starts fetching the table slot where a lookup of document `kind` of `name` begins, so
    /// that it is on its way while the request is validated and dispatched.
    pub fn prefetch(&self, name: &str, kind: DocKind) {
        let hash = name_hash(name);
        let (base, mask) = &self.shared.cell(hash).layouts[kind.index()];
        DocTable::prefetch(
            base.load(Ordering::Relaxed),
            mask.load(Ordering::Relaxed),
            hash,
        );
    }

    /// Document `kind` of `name`, from cache when still valid.
    ///
    /// # Errors
    /// Storage errors from the shard; `Corrupt` for a name or validator too long to cache
    /// (which no valid package has).
    pub fn doc(
        &mut self,
        shard: &ShardStore,
        name: &str,
        kind: DocKind,
    ) -> Result<Option<CachedDoc>, ReadError> {
        // Read the generation before the data: a commit racing with this read bumps it, so
        // the next request revalidates instead of trusting a possibly older value.
        let generation = shard.generation();
        // Odd: a commit is running and may already be visible (`ShardStore::generation`).
        let settled = generation.is_multiple_of(2);
        let hash = name_hash(name);
        let table = kind.index();
        let cached = {
            let segment = self.shared.segment(hash);
            match segment.docs[table].find(hash, name) {
                Some(slot) if settled && slot.generation == generation => {
                    self.hits += 1;
                    return Ok(Some(slot.doc.clone()));
                }
                Some(slot) => Some(slot.doc.clone()),
                None => None,
            }
        };
        // No lock from here on while storage is read: the other cores keep hitting.
        let reader = self.reader(shard);
        if let Some(doc) = cached {
            if reader.read_rev(shard, generation, name)? == Some(doc.rev()) {
                let mut segment = self.shared.segment(hash);
                if let Some(slot) = segment.docs[table].find_mut(hash, name) {
                    // Only the value just checked, and never back to an older number.
                    if slot.doc.ptr_eq(&doc) && slot.generation < generation {
                        slot.generation = generation;
                    }
                }
                self.revalidations += 1;
                return Ok(Some(doc));
            }
        }
        let Some(served) = reader.read_doc(shard, generation, name, kind)? else {
            let mut segment = self.shared.segment(hash);
            if let Some(old) = segment.docs[table].remove(hash, name) {
                self.shared.charge(&mut segment, 0, old.doc.weight());
            }
            return Ok(None);
        };
        self.loads += 1;
        let doc = CachedDoc::new(name, &served).ok_or_else(|| ReadError::Corrupt {
            name: name.to_owned(),
            detail: "name or validator too long to cache".to_owned(),
        })?;
        let shared = &*self.shared;
        let weight = doc.weight();
        let mut segment = shared.segment(hash);
        if !shared.make_room(&mut segment, weight) {
            return Ok(Some(doc));
        }
        let fresh = DocSlot {
            hash,
            generation,
            doc: doc.clone(),
        };
        let old = match segment.docs[table].find_mut(hash, name) {
            // Another core may have stored a value checked under a later generation
            // meanwhile: keep that one.
            Some(slot) if slot.generation > generation => return Ok(Some(doc)),
            Some(slot) => std::mem::replace(slot, fresh).doc.weight(),
            None => {
                segment.docs[table].insert_new(fresh);
                0
            }
        };
        shared.publish_layouts(hash, &segment);
        shared.charge(&mut segment, weight, old);
        Ok(Some(doc))
    }

    /// The tarball index of `name`, from cache when still valid.
    ///
    /// # Errors
    /// Storage errors from the shard.
    pub fn index(
        &mut self,
        shard: &ShardStore,
        name: &str,
    ) -> Result<Option<Arc<ServedIndex>>, ReadError> {
        let generation = shard.generation();
        let settled = generation.is_multiple_of(2);
        let hash = name_hash(name);
        let cached = {
            let segment = self.shared.segment(hash);
            match segment.indexes.get(name) {
                Some(slot) if settled && slot.generation == generation => {
                    self.hits += 1;
                    return Ok(Some(Arc::clone(&slot.value)));
                }
                Some(slot) => Some(Arc::clone(&slot.value)),
                None => None,
            }
        };
        let reader = self.reader(shard);
        if let Some(value) = cached {
            if reader.read_rev(shard, generation, name)? == Some(value.rev) {
                let mut segment = self.shared.segment(hash);
                if let Some(slot) = segment.indexes.get_mut(name) {
                    if Arc::ptr_eq(&slot.value, &value) && slot.generation < generation {
                        slot.generation = generation;
                    }
                }
                self.revalidations += 1;
                return Ok(Some(value));
            }
        }
        let Some(value) = reader.read_index(shard, generation, name)? else {
            let mut segment = self.shared.segment(hash);
            if let Some(old) = segment.indexes.remove(name) {
                self.shared.charge(&mut segment, 0, old.weight());
            }
            return Ok(None);
        };
        self.loads += 1;
        let fresh = IndexSlot {
            value: Arc::new(value),
            generation,
        };
        let value = Arc::clone(&fresh.value);
        let shared = &*self.shared;
        let weight = fresh.weight();
        let mut segment = shared.segment(hash);
        if !shared.make_room(&mut segment, weight) {
            return Ok(Some(value));
        }
        let old = match segment.indexes.get_mut(name) {
            Some(slot) if slot.generation > generation => return Ok(Some(value)),
            Some(slot) => std::mem::replace(slot, fresh).weight(),
            None => {
                segment.indexes.insert(name.into(), fresh);
                0
            }
        };
        shared.charge(&mut segment, weight, old);
        Ok(Some(value))
    }

    /// Drops every kept read transaction whose shard has committed since (see
    /// `ShardReader::release_if_stale`); `shards` are the server's shards, by index.
    pub fn release_stale(&mut self, shards: &[Arc<ShardStore>]) {
        for (reader, shard) in self.readers.iter_mut().zip(shards) {
            reader.release_if_stale(shard);
        }
    }

    /// Drops every kept read transaction (the server has been idle: `idle.rs`).
    pub fn release_all(&mut self) {
        for reader in &mut self.readers {
            reader.release();
        }
    }

    /// Read transactions this core began, and reads that reused one (for tests and
    /// profiles).
    #[must_use]
    pub fn transactions(&self) -> (u64, u64) {
        self.readers.iter().fold((0, 0), |(b, r), reader| {
            (b + reader.begun, r + reader.reused)
        })
    }

    fn reader(&mut self, shard: &ShardStore) -> &mut ShardReader {
        let index = usize::from(shard.id().0);
        if self.readers.len() <= index {
            self.readers.resize_with(index + 1, ShardReader::new);
        }
        &mut self.readers[index]
    }
}

/// Cached tarball bytes of one core.
#[derive(Default)]
pub struct TarballCache {
    entries: HashMap<BlobId, Bytes>,
    bytes: usize,
}

impl TarballCache {
    /// The bytes of blob `id`, whose tarball index says it has `size` bytes and is in inline
    /// row `row`, verified against its digest when read from storage: from `shard` (the
    /// package's own shard) when it is stored inline there, else from the blob store. A blob
    /// bigger than `INLINE_BLOB_BYTES_MAX` is never inline, so its shard is not asked.
    ///
    /// # Errors
    /// Storage errors of the shard; `Blob`: `Corrupt` (inline or file), `NotFound` or I/O
    /// errors of the blob store.
    pub fn get(
        &mut self,
        shard: &ShardStore,
        blobs: &BlobStore,
        id: &BlobId,
        size: u64,
        row: Option<u64>,
    ) -> Result<Bytes, ReadError> {
        if let Some(bytes) = self.entries.get(id) {
            return Ok(bytes.clone());
        }
        let inline = if size <= INLINE_BLOB_BYTES_MAX as u64 {
            shard.read_inline(id, row)?
        } else {
            None
        };
        let bytes = match inline {
            Some(bytes) => Bytes::from(bytes),
            None => Bytes::from(blobs.read(id)?),
        };
        self.insert(*id, bytes.clone());
        Ok(bytes)
    }

    /// The bytes of blob `id` if this core holds them.
    #[must_use]
    pub fn cached(&self, id: &BlobId) -> Option<Bytes> {
        self.entries.get(id).cloned()
    }

    /// Drops every entry and the map's memory (the server has been idle: `idle.rs`).
    pub fn clear(&mut self) {
        *self = TarballCache::default();
    }

    /// Keeps `bytes`, already verified to be blob `id` (unless too big to keep).
    pub fn insert(&mut self, id: BlobId, bytes: Bytes) {
        if bytes.len() <= TARBALL_CACHE_ENTRY_BYTES_MAX {
            if self.bytes + bytes.len() > TARBALL_CACHE_BYTES_MAX {
                self.entries.clear();
                self.bytes = 0;
            }
            self.bytes += bytes.len();
            if let Some(old) = self.entries.insert(id, bytes) {
                self.bytes -= old.len();
            }
        }
    }
}

/// A document re-pointed at another base URL (identity bytes only: the alternate-host path is
/// the exception, so it is not worth a gzip pass per host).
pub struct Rebased {
    pub rev: u64,
    pub etag: Bytes,
    pub body: Bytes,
}

/// Per-core cache of documents rebased for a client's `Host`, keyed by (host, name,
/// abbreviated). Bounded like the others.
#[derive(Default)]
pub struct RebasedCache {
    entries: HashMap<(Box<str>, Box<str>, bool), Rc<Rebased>>,
    bytes: usize,
}

impl RebasedCache {
    /// Drops every entry and the map's memory (the server has been idle: `idle.rs`).
    pub fn clear(&mut self) {
        *self = RebasedCache::default();
    }

    /// `document` (an identity document rendered for `from_base`) with its tarball URLs
    /// re-pointed at `to_base`.
    pub fn get(
        &mut self,
        name: &str,
        document: &CachedDoc,
        abbreviated: bool,
        from_base: &str,
        to_base: &str,
    ) -> Rc<Rebased> {
        let key = (to_base.into(), name.into(), abbreviated);
        if let Some(hit) = self.entries.get(&key) {
            if hit.rev == document.rev() {
                return Rc::clone(hit);
            }
        }
        let text = String::from_utf8_lossy(document.body());
        let from = format!("\"tarball\":\"{from_base}/");
        let to = format!("\"tarball\":\"{to_base}/");
        let body = Bytes::from(text.replace(&from, &to));
        let tag = xxhash_rust::xxh3::xxh3_64(to_base.as_bytes());
        let inner = document
            .etag()
            .strip_suffix(b"\"")
            .unwrap_or(document.etag());
        let mut etag = inner.to_vec();
        etag.extend_from_slice(format!("-h{tag:016x}\"").as_bytes());
        let rebased = Rc::new(Rebased {
            rev: document.rev(),
            etag: Bytes::from(etag),
            body,
        });
        if self.bytes + rebased.body.len() > REBASED_CACHE_BYTES_MAX {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += rebased.body.len();
        self.entries.insert(key, Rc::clone(&rebased));
        rebased
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use engine::blob::BlobStore;
    use engine::fixture;
    use engine::shard::{ShardId, WriteOp};

    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<ShardStore>,
        blobs: BlobStore,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(
                ShardStore::open(&dir.path().join("s.redb"), ShardId(0), "http://x").unwrap(),
            );
            let blobs = BlobStore::open(&dir.path().join("blobs")).unwrap();
            Fixture {
                _dir: dir,
                store,
                blobs,
            }
        }

        /// A fixture holding packages `p0` .. `p{count - 1}`, one version each.
        fn with_packages(count: usize) -> Fixture {
            let f = Fixture::new();
            for i in 0..count {
                f.publish(&format!("p{i}"), "1.0.0");
            }
            f
        }

        fn publish(&self, name: &str, version: &str) {
            let tarball = format!("{name}@{version}").into_bytes();
            let serde_json::Value::Object(manifest) =
                serde_json::json!({"name": name, "version": version})
            else {
                unreachable!()
            };
            let op = WriteOp::Publish {
                request: fixture::one_version(name, version, manifest, tarball),
                user: "ada".into(),
            };
            let results = self
                .store
                .apply_batch(vec![op], &self.blobs, SystemTime::now());
            assert!(results.iter().all(Result::is_ok), "{results:?}");
        }
    }

    const KIND: DocKind = DocKind::AbbreviatedGzip;

    #[test]
    fn one_load_serves_every_core() {
        let f = Fixture::new();
        f.publish("a", "1.0.0");
        let shared = Arc::new(SharedPackages::new(1 << 20));
        let mut core0 = PackageCache::new(Arc::clone(&shared));
        let mut core1 = PackageCache::new(Arc::clone(&shared));
        let first = core0.doc(&f.store, "a", KIND).unwrap().unwrap();
        let second = core1.doc(&f.store, "a", KIND).unwrap().unwrap();
        assert!(first.ptr_eq(&second), "one copy for both cores");
        assert_eq!((core0.loads, core0.hits), (1, 0));
        assert_eq!((core1.loads, core1.hits), (0, 1));
        assert!(shared.bytes() > 0);
        assert!(core0.doc(&f.store, "nope", KIND).unwrap().is_none());
    }

    #[test]
    fn a_commit_is_seen_by_every_core() {
        let f = Fixture::new();
        f.publish("a", "1.0.0");
        let shared = Arc::new(SharedPackages::new(1 << 20));
        let mut core0 = PackageCache::new(Arc::clone(&shared));
        let mut core1 = PackageCache::new(Arc::clone(&shared));
        let old = core0.doc(&f.store, "a", KIND).unwrap().unwrap();
        core1.index(&f.store, "a").unwrap().unwrap();
        f.publish("a", "1.0.1");
        let rev = f.store.read_rev("a").unwrap().unwrap();
        assert_ne!(old.rev(), rev);
        // Core 1 finds core 0's slot out of date and reloads it for both.
        let new = core1.doc(&f.store, "a", KIND).unwrap().unwrap();
        assert_eq!(new.rev(), rev);
        assert_eq!(core1.loads, 2);
        let again = core0.doc(&f.store, "a", KIND).unwrap().unwrap();
        assert!(new.ptr_eq(&again));
        assert_eq!(core0.hits, 1);
        // The index slot is checked on its own: a new revision, reloaded.
        assert_eq!(core0.index(&f.store, "a").unwrap().unwrap().rev, rev);
        assert_eq!(core0.loads, 2);
        // A commit to another package: revalidated by revision, not reloaded.
        f.publish("b", "1.0.0");
        let same = core0.doc(&f.store, "a", KIND).unwrap().unwrap();
        assert!(new.ptr_eq(&same));
        assert_eq!(core0.revalidations, 1);
    }

    #[test]
    fn misses_reuse_one_read_transaction_until_a_commit() {
        let f = Fixture::with_packages(10);
        let shared = Arc::new(SharedPackages::new(1 << 20));
        let mut core = PackageCache::new(Arc::clone(&shared));
        for i in 0..10 {
            core.doc(&f.store, &format!("p{i}"), KIND).unwrap().unwrap();
        }
        assert_eq!(core.loads, 10);
        assert_eq!(core.transactions(), (1, 9));
        core.release_stale(std::slice::from_ref(&f.store));
        assert!(
            core.readers[0].holds_transaction(),
            "nothing committed: kept"
        );
        f.publish("p0", "1.0.1");
        core.release_stale(std::slice::from_ref(&f.store));
        assert!(!core.readers[0].holds_transaction(), "released once stale");
        let doc = core.doc(&f.store, "p0", KIND).unwrap().unwrap();
        assert_eq!(Some(doc.rev()), f.store.read_rev("p0").unwrap());
        assert_eq!(core.transactions().0, 2);
    }

    /// `clear` (the idle release) empties every segment and its accounting, leaves the
    /// prefetch layouts pointing at no table, and the next reads load the same values again.
    #[test]
    fn clearing_empties_the_cache_and_reads_load_again() {
        let f = Fixture::with_packages(50);
        let shared = Arc::new(SharedPackages::new(1 << 20));
        let mut core = PackageCache::new(Arc::clone(&shared));
        let read = |core: &mut PackageCache| -> Vec<(CachedDoc, u64)> {
            (0..50)
                .map(|i| {
                    let name = format!("p{i}");
                    let doc = core.doc(&f.store, &name, KIND).unwrap().unwrap();
                    let index = core.index(&f.store, &name).unwrap().unwrap();
                    (doc, index.rev)
                })
                .collect()
        };
        let before = read(&mut core);
        assert_eq!(core.loads, 100);
        assert!(shared.bytes() > 0);
        core.release_all();
        assert!(!core.readers[0].holds_transaction());
        shared.clear();
        assert_eq!(shared.bytes(), 0);
        for cell in &shared.segments {
            let segment = cell.segment.lock().unwrap();
            assert!(segment.docs.iter().all(|t| t.len() == 0));
            assert!(segment.indexes.is_empty());
            assert_eq!(segment.bytes, 0);
            for (table, (base, mask)) in segment.docs.iter().zip(&cell.layouts) {
                assert_eq!(
                    table.layout(),
                    (base.load(Ordering::Relaxed), mask.load(Ordering::Relaxed))
                );
            }
        }
        let after = read(&mut core);
        assert_eq!(core.loads, 200, "everything loaded again");
        for ((old, old_rev), (new, new_rev)) in before.iter().zip(&after) {
            assert!(!old.ptr_eq(new));
            assert_eq!(old.as_ref(), new.as_ref());
            assert_eq!(old_rev, new_rev);
        }
        let charged: usize = after.iter().map(|(doc, _)| doc.weight()).sum();
        assert!(
            shared.bytes() > charged,
            "documents and indexes charged again"
        );
    }

    #[test]
    fn the_budget_holds() {
        let f = Fixture::with_packages(300);
        let budget = 64 * 1024;
        let shared = Arc::new(SharedPackages::new(budget));
        let mut core0 = PackageCache::new(Arc::clone(&shared));
        let mut core1 = PackageCache::new(Arc::clone(&shared));
        for round in 0..3 {
            for i in 0..300 {
                let core = if (i + round) % 2 == 0 {
                    &mut core0
                } else {
                    &mut core1
                };
                let name = format!("p{i}");
                for kind in DocKind::ALL {
                    let doc = core.doc(&f.store, &name, kind).unwrap().unwrap();
                    assert_eq!(Some(doc.rev()), f.store.read_rev(&name).unwrap());
                }
                let index = core.index(&f.store, &name).unwrap().unwrap();
                assert_eq!(Some(index.rev), f.store.read_rev(&name).unwrap());
                assert!(shared.bytes() <= budget / 8 * 9, "{}", shared.bytes());
            }
        }
        assert!(shared.bytes() > budget / 2, "{}", shared.bytes());
        // Bytes charged match what the segments hold.
        let held: usize = shared
            .segments
            .iter()
            .map(|s| {
                let s = s.segment.lock().unwrap();
                let docs: usize = s
                    .docs
                    .iter()
                    .flat_map(DocTable::iter)
                    .map(|slot| slot.doc.weight())
                    .sum();
                docs + s.indexes.values().map(IndexSlot::weight).sum::<usize>()
            })
            .sum();
        assert_eq!(held, shared.bytes());
    }

    #[test]
    fn a_cached_document_keeps_its_parts() {
        let name = "n".repeat(214);
        let served = ServedDoc {
            rev: 0x0102_0304_0506_0708,
            etag: Bytes::from_static(b"\"0123456789abcdef0123456789abcdef-gz\""),
            cut: engine::served::Cut::default(),
            body: Bytes::from_static(b"{\"name\":\"n\"}"),
        };
        let doc = CachedDoc::new(&name, &served).unwrap();
        assert_eq!(doc.rev(), served.rev);
        assert_eq!(doc.name(), name.as_bytes());
        assert_eq!(doc.etag(), &served.etag[..]);
        assert_eq!(doc.body(), &served.body[..]);
        assert_eq!(Bytes::from_owner(doc.clone()), served.body);
        assert!(doc.etag_matches(b"\"0123456789abcdef0123456789abcdef\""));
        assert!(!doc.etag_matches(b"\"0123456789abcdef0123456789abcdee\""));
        let long_etag = ServedDoc {
            etag: Bytes::from(vec![b'a'; 256]),
            ..served
        };
        assert!(CachedDoc::new("n", &long_etag).is_none());
    }

    #[test]
    fn equal_hashes_are_told_apart_by_name() {
        let served = |rev| ServedDoc {
            rev,
            etag: Bytes::from_static(b"\"e\""),
            cut: engine::served::Cut::default(),
            body: Bytes::from_static(b"{}"),
        };
        let mut table = DocTable::default();
        for (name, rev) in [("a", 1), ("b", 2)] {
            let doc = CachedDoc::new(name, &served(rev)).unwrap();
            table.insert_new(DocSlot {
                hash: 7,
                generation: 0,
                doc,
            });
        }
        for (name, rev) in [("a", 1), ("b", 2)] {
            let slot = table.find(7, name).unwrap();
            assert_eq!(slot.doc.rev(), rev);
        }
        assert!(table.find(7, "c").is_none());
        assert!(table.find(8, "a").is_none());
        assert_eq!(table.remove(7, "a").unwrap().doc.rev(), 1);
        assert_eq!(table.find(7, "b").unwrap().doc.rev(), 2);
    }
}
