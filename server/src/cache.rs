//! Per-core caches (owned by one core, `!Send`, no locks).
//!
//! `PackageCache`: name -> the served values read so far (each document kind and the tarball
//! index are loaded on first use, alone: a core serving abbreviated gzip documents holds only
//! those). A value is valid while the shard's commit generation is unchanged and even (odd
//! means a commit is running, see `ShardStore::generation`); after any commit
//! to the shard it is revalidated by reading the package's revision (a few bytes) and reloaded
//! only when that changed. When full, a quarter of the entries is evicted (in hash order,
//! which is unrelated to use, so this is random eviction: the cache stays 3/4 to fully used).
//! `TarballCache`: blob id -> bytes. Blobs are immutable, so entries never go stale; bytes are
//! verified against their blake3 name when loaded, from the package's shard (inline tarballs)
//! or from the blob store (files). When full it is cleared.

use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use engine::blob::{BlobId, BlobStore};
use engine::limits::INLINE_BLOB_BYTES_MAX;
use engine::served::{DocKind, ServedDoc, ServedIndex};
use engine::shard::{ReadError, ShardStore};

use crate::limits::{
    PACKAGE_CACHE_BYTES_MAX, TARBALL_CACHE_BYTES_MAX, TARBALL_CACHE_ENTRY_BYTES_MAX,
};

/// Key, map node and `Entry` overhead charged per package.
const ENTRY_OVERHEAD_BYTES: usize = 192;

struct Slot<T> {
    value: Rc<T>,
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

/// Cached served values of one core.
#[derive(Default)]
pub struct PackageCache {
    entries: HashMap<Box<str>, Entry>,
    bytes: usize,
    /// Answered from the cache without touching storage.
    pub hits: u64,
    /// Confirmed current by reading only the revision.
    pub revalidations: u64,
    /// Loaded from storage.
    pub loads: u64,
}

impl PackageCache {
    /// Document `kind` of `name`, from cache when still valid.
    ///
    /// # Errors
    /// Storage errors from the shard.
    pub fn doc(
        &mut self,
        shard: &ShardStore,
        name: &str,
        kind: DocKind,
    ) -> Result<Option<Rc<ServedDoc>>, ReadError> {
        self.lookup(shard, name, kind.index(), || shard.read_doc(name, kind))
    }

    /// The tarball index of `name`, from cache when still valid.
    ///
    /// # Errors
    /// Storage errors from the shard.
    pub fn index(
        &mut self,
        shard: &ShardStore,
        name: &str,
    ) -> Result<Option<Rc<ServedIndex>>, ReadError> {
        self.lookup(shard, name, 0, || shard.read_index(name))
    }

    fn lookup<T: Cached>(
        &mut self,
        shard: &ShardStore,
        name: &str,
        kind: usize,
        load: impl FnOnce() -> Result<Option<T>, ReadError>,
    ) -> Result<Option<Rc<T>>, ReadError> {
        // Read the generation before the data: a commit racing with this read bumps it, so
        // the next request revalidates instead of trusting a possibly older value.
        let generation = shard.generation();
        // Odd: a commit is running and may already be visible (`ShardStore::generation`).
        let settled = generation.is_multiple_of(2);
        if let Some(slot) = self
            .entries
            .get_mut(name)
            .and_then(|e| T::slot(e, kind).as_mut())
        {
            if settled && slot.generation == generation {
                self.hits += 1;
                return Ok(Some(Rc::clone(&slot.value)));
            }
            if shard.read_rev(name)? == Some(slot.rev) {
                slot.generation = generation;
                self.revalidations += 1;
                return Ok(Some(Rc::clone(&slot.value)));
            }
        }
        let Some(value) = load()? else {
            if let Some(old) = self.entries.remove(name) {
                self.bytes -= old.weight() + ENTRY_OVERHEAD_BYTES;
            }
            return Ok(None);
        };
        self.loads += 1;
        let value = Rc::new(value);
        let (rev, weight) = value.rev_and_weight();
        if weight > PACKAGE_CACHE_BYTES_MAX / 4 {
            return Ok(Some(value));
        }
        if self.bytes + weight + ENTRY_OVERHEAD_BYTES > PACKAGE_CACHE_BYTES_MAX {
            self.evict();
        }
        let entry = match self.entries.get_mut(name) {
            Some(entry) => entry,
            None => {
                self.bytes += ENTRY_OVERHEAD_BYTES;
                self.entries.entry(name.into()).or_default()
            }
        };
        let slot = T::slot(entry, kind);
        if let Some(old) = slot.take() {
            self.bytes -= old.weight;
        }
        // Values of another revision in the entry are left alone: each slot is checked
        // against the revision on its own next use.
        *slot = Some(Slot {
            value: Rc::clone(&value),
            rev,
            generation,
            weight,
        });
        self.bytes += weight;
        Ok(Some(value))
    }

    /// Drops entries until at most 3/4 of the budget is used.
    fn evict(&mut self) {
        let target = PACKAGE_CACHE_BYTES_MAX / 4 * 3;
        let mut bytes = self.bytes;
        self.entries.retain(|_, entry| {
            if bytes <= target {
                return true;
            }
            bytes -= entry.weight() + ENTRY_OVERHEAD_BYTES;
            false
        });
        self.bytes = bytes;
    }

    /// Bytes charged to the cache (for tests and metrics).
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
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
        if self.bytes + rebased.body.len() > PACKAGE_CACHE_BYTES_MAX {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += rebased.body.len();
        self.entries.insert(key, Rc::clone(&rebased));
        rebased
    }
}
