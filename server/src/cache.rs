//! The packument cache (shared by the cores) and per-core caches (owned by one core, `!Send`,
//! no locks).
//!
//! `SharedPackages` + `PackageCache`: name -> the served values read so far (each document
//! kind and the tarball index are loaded on first use, alone: a server answering abbreviated
//! gzip documents holds only those). The entries live in one map shared by every core, split
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

use crate::limits::{
    PACKAGE_CACHE_SEGMENTS, REBASED_CACHE_BYTES_MAX, TARBALL_CACHE_BYTES_MAX,
    TARBALL_CACHE_ENTRY_BYTES_MAX,
};

/// Key, map node and `Entry` overhead charged per package.
const ENTRY_OVERHEAD_BYTES: usize = 192;

struct Slot<T> {
    value: Arc<T>,
    rev: u64,
    generation: u64,
    weight: usize,
}

#[derive(Default)]
struct Entry {
    docs: [Option<Slot<ServedDoc>>; 4],
    index: Option<Slot<ServedIndex>>,
}

impl Entry {
    fn weight(&self) -> usize {
        let docs: usize = self.docs.iter().flatten().map(|s| s.weight).sum();
        docs + self.index.as_ref().map_or(0, |s| s.weight)
    }
}

/// A served value the cache holds, and where in an `Entry`.
trait Cached: Sized {
    fn slot(entry: &mut Entry, kind: usize) -> &mut Option<Slot<Self>>;
    fn rev_and_weight(&self) -> (u64, usize);
}

impl Cached for ServedDoc {
    fn slot(entry: &mut Entry, kind: usize) -> &mut Option<Slot<Self>> {
        &mut entry.docs[kind]
    }
    fn rev_and_weight(&self) -> (u64, usize) {
        (self.rev, self.weight_bytes())
    }
}

impl Cached for ServedIndex {
    fn slot(entry: &mut Entry, _: usize) -> &mut Option<Slot<Self>> {
        &mut entry.index
    }
    fn rev_and_weight(&self) -> (u64, usize) {
        (self.rev, self.weight_bytes())
    }
}

#[derive(Default)]
struct Segment {
    entries: HashMap<Box<str>, Entry>,
    bytes: usize,
}

/// The served values every core has read, within one byte budget.
pub struct SharedPackages {
    segments: Box<[Mutex<Segment>]>,
    /// Bytes charged over all segments.
    bytes: AtomicUsize,
    budget: usize,
}

impl SharedPackages {
    /// An empty cache that holds at most about `budget` bytes of values and overhead.
    #[must_use]
    pub fn new(budget: usize) -> SharedPackages {
        SharedPackages {
            segments: (0..PACKAGE_CACHE_SEGMENTS)
                .map(|_| Mutex::default())
                .collect(),
            bytes: AtomicUsize::new(0),
            budget,
        }
    }

    fn segment(&self, name: &str) -> MutexGuard<'_, Segment> {
        let hash = xxhash_rust::xxh3::xxh3_64(name.as_bytes());
        // The map inside a segment hashes the name again; the top bits pick the segment.
        let index = usize::try_from(hash >> 32).unwrap_or(0) % self.segments.len();
        // A panic aborts the process (release profile), so a poisoned lock is never seen
        // in production; tests keep going with the data as it is.
        self.segments[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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

    /// Drops a sixteenth of `segment`'s bytes (at least one entry), in hash order. A
    /// segment is 1/`PACKAGE_CACHE_SEGMENTS` of the cache, so a pass is short, and the cache
    /// stays about 97% used (it was 3/4 to fully used when a quarter of the whole per-core
    /// map was dropped at once).
    fn evict(&self, segment: &mut Segment) {
        let target = segment.bytes / 16 * 15;
        let mut bytes = segment.bytes;
        segment.entries.retain(|_, entry| {
            if bytes <= target {
                return true;
            }
            bytes -= entry.weight() + ENTRY_OVERHEAD_BYTES;
            false
        });
        let freed = segment.bytes - bytes;
        self.charge(segment, 0, freed);
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

    /// Document `kind` of `name`, from cache when still valid.
    ///
    /// # Errors
    /// Storage errors from the shard.
    pub fn doc(
        &mut self,
        shard: &ShardStore,
        name: &str,
        kind: DocKind,
    ) -> Result<Option<Arc<ServedDoc>>, ReadError> {
        self.lookup(shard, name, kind.index(), |reader, generation| {
            reader.read_doc(shard, generation, name, kind)
        })
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
        self.lookup(shard, name, 0, |reader, generation| {
            reader.read_index(shard, generation, name)
        })
    }

    /// Drops every kept read transaction whose shard has committed since (see
    /// `ShardReader::release_if_stale`); `shards` are the server's shards, by index.
    pub fn release_stale(&mut self, shards: &[Arc<ShardStore>]) {
        for (reader, shard) in self.readers.iter_mut().zip(shards) {
            reader.release_if_stale(shard);
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

    fn lookup<T: Cached>(
        &mut self,
        shard: &ShardStore,
        name: &str,
        kind: usize,
        load: impl FnOnce(&mut ShardReader, u64) -> Result<Option<T>, ReadError>,
    ) -> Result<Option<Arc<T>>, ReadError> {
        // Read the generation before the data: a commit racing with this read bumps it, so
        // the next request revalidates instead of trusting a possibly older value.
        let generation = shard.generation();
        // Odd: a commit is running and may already be visible (`ShardStore::generation`).
        let settled = generation.is_multiple_of(2);
        let cached = {
            let mut segment = self.shared.segment(name);
            match segment
                .entries
                .get_mut(name)
                .and_then(|e| T::slot(e, kind).as_mut())
            {
                Some(slot) if settled && slot.generation == generation => {
                    self.hits += 1;
                    return Ok(Some(Arc::clone(&slot.value)));
                }
                Some(slot) => Some((slot.rev, Arc::clone(&slot.value))),
                None => None,
            }
        };
        // No lock from here on while storage is read: the other cores keep hitting.
        let reader = self.reader(shard);
        if let Some((rev, value)) = cached {
            if reader.read_rev(shard, generation, name)? == Some(rev) {
                let mut segment = self.shared.segment(name);
                if let Some(slot) = segment
                    .entries
                    .get_mut(name)
                    .and_then(|e| T::slot(e, kind).as_mut())
                {
                    // Only the value just checked, and never back to an older number.
                    if Arc::ptr_eq(&slot.value, &value) && slot.generation < generation {
                        slot.generation = generation;
                    }
                }
                self.revalidations += 1;
                return Ok(Some(value));
            }
        }
        let Some(value) = load(reader, generation)? else {
            let mut segment = self.shared.segment(name);
            if let Some(old) = segment.entries.remove(name) {
                self.shared
                    .charge(&mut segment, 0, old.weight() + ENTRY_OVERHEAD_BYTES);
            }
            return Ok(None);
        };
        self.loads += 1;
        let value = Arc::new(value);
        let (rev, weight) = value.rev_and_weight();
        let shared = &*self.shared;
        if weight > shared.budget / 4 {
            return Ok(Some(value));
        }
        let mut segment = shared.segment(name);
        if shared.bytes() + weight + ENTRY_OVERHEAD_BYTES > shared.budget {
            shared.evict(&mut segment);
            // The other segments hold the budget (rare: traffic skewed to a few segments).
            // Stay bounded: do not grow past an eighth over the budget.
            if shared.bytes() + weight + ENTRY_OVERHEAD_BYTES > shared.budget / 8 * 9 {
                return Ok(Some(value));
            }
        }
        let entry = if segment.entries.contains_key(name) {
            segment.entries.get_mut(name)
        } else {
            shared.charge(&mut segment, ENTRY_OVERHEAD_BYTES, 0);
            Some(segment.entries.entry(name.into()).or_default())
        };
        let Some(entry) = entry else {
            return Ok(Some(value));
        };
        let slot = T::slot(entry, kind);
        // Another core may have stored a value checked under a later generation meanwhile:
        // keep that one.
        if slot.as_ref().is_some_and(|s| s.generation > generation) {
            return Ok(Some(value));
        }
        let old = slot.take().map_or(0, |s| s.weight);
        // Values of another revision in the entry are left alone: each slot is checked
        // against the revision on its own next use.
        *slot = Some(Slot {
            value: Arc::clone(&value),
            rev,
            generation,
            weight,
        });
        shared.charge(&mut segment, weight, old);
        Ok(Some(value))
    }
}

/// Cached tarball bytes of one core.
#[derive(Default)]
pub struct TarballCache {
    entries: HashMap<BlobId, Bytes>,
    bytes: usize,
}

impl TarballCache {
    /// The bytes of blob `id`, whose tarball index says it has `size` bytes, verified against
    /// its digest when read from storage: from `shard` (the package's own shard) when it is
    /// stored inline there, else from the blob store. A blob bigger than
    /// `INLINE_BLOB_BYTES_MAX` is never inline, so its shard is not asked.
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
    ) -> Result<Bytes, ReadError> {
        if let Some(bytes) = self.entries.get(id) {
            return Ok(bytes.clone());
        }
        let inline = if size <= INLINE_BLOB_BYTES_MAX as u64 {
            shard.read_blob_inline(id)?
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
    /// `document` (an identity document rendered for `from_base`) with its tarball URLs
    /// re-pointed at `to_base`.
    pub fn get(
        &mut self,
        name: &str,
        document: &ServedDoc,
        abbreviated: bool,
        from_base: &str,
        to_base: &str,
    ) -> Rc<Rebased> {
        let key = (to_base.into(), name.into(), abbreviated);
        if let Some(hit) = self.entries.get(&key) {
            if hit.rev == document.rev {
                return Rc::clone(hit);
            }
        }
        let text = String::from_utf8_lossy(&document.body);
        let from = format!("\"tarball\":\"{from_base}/");
        let to = format!("\"tarball\":\"{to_base}/");
        let body = Bytes::from(text.replace(&from, &to));
        let tag = xxhash_rust::xxh3::xxh3_64(to_base.as_bytes());
        let inner = document.etag.strip_suffix(b"\"").unwrap_or(&document.etag);
        let mut etag = inner.to_vec();
        etag.extend_from_slice(format!("-h{tag:016x}\"").as_bytes());
        let rebased = Rc::new(Rebased {
            rev: document.rev,
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

    use engine::blob::{BlobId, BlobStore};
    use engine::integrity;
    use engine::names::{PackageName, Version};
    use engine::publish::{NewVersion, PublishRequest};
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

        fn publish(&self, name: &str, version: &str) {
            let tarball = format!("{name}@{version}").into_bytes();
            let serde_json::Value::Object(manifest) =
                serde_json::json!({"name": name, "version": version})
            else {
                unreachable!()
            };
            let request = PublishRequest {
                name: PackageName::parse(name).unwrap(),
                versions: vec![NewVersion {
                    version: Version::parse(version).unwrap(),
                    manifest,
                    blob: BlobId::of(&tarball),
                    checksums: integrity::compute(&tarball),
                    file_count: 1,
                    unpacked_size: tarball.len() as u64,
                    tarball,
                }],
                dist_tags: Vec::new(),
            };
            let op = WriteOp::Publish {
                request,
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
        assert!(Arc::ptr_eq(&first, &second), "one copy for both cores");
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
        assert_ne!(old.rev, rev);
        // Core 1 finds core 0's slot out of date and reloads it for both.
        let new = core1.doc(&f.store, "a", KIND).unwrap().unwrap();
        assert_eq!(new.rev, rev);
        assert_eq!(core1.loads, 2);
        let again = core0.doc(&f.store, "a", KIND).unwrap().unwrap();
        assert!(Arc::ptr_eq(&new, &again));
        assert_eq!(core0.hits, 1);
        // The index slot is checked on its own: a new revision, reloaded.
        assert_eq!(core0.index(&f.store, "a").unwrap().unwrap().rev, rev);
        assert_eq!(core0.loads, 2);
        // A commit to another package: revalidated by revision, not reloaded.
        f.publish("b", "1.0.0");
        let same = core0.doc(&f.store, "a", KIND).unwrap().unwrap();
        assert!(Arc::ptr_eq(&new, &same));
        assert_eq!(core0.revalidations, 1);
    }

    #[test]
    fn misses_reuse_one_read_transaction_until_a_commit() {
        let f = Fixture::new();
        for i in 0..10 {
            f.publish(&format!("p{i}"), "1.0.0");
        }
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
        assert_eq!(Some(doc.rev), f.store.read_rev("p0").unwrap());
        assert_eq!(core.transactions().0, 2);
    }

    #[test]
    fn the_budget_holds() {
        let f = Fixture::new();
        for i in 0..300 {
            f.publish(&format!("p{i}"), "1.0.0");
        }
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
                    assert_eq!(Some(doc.rev), f.store.read_rev(&name).unwrap());
                }
                assert!(shared.bytes() <= budget / 8 * 9, "{}", shared.bytes());
            }
        }
        assert!(shared.bytes() > budget / 2, "{}", shared.bytes());
        // Bytes charged match what the segments hold.
        let held: usize = shared
            .segments
            .iter()
            .map(|s| {
                let s = s.lock().unwrap();
                s.entries
                    .values()
                    .map(|e| e.weight() + ENTRY_OVERHEAD_BYTES)
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(held, shared.bytes());
    }
}
