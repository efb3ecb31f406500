//! Per-core caches (owned by one core, `!Send`, no locks).
//!
//! `PackageCache`: name -> decoded served record. A hit is valid while the shard's commit
//! generation is unchanged; after any commit to the shard, an entry is revalidated by reading
//! the package's revision (a few bytes) and reloaded only when it changed.
//! `TarballCache`: blob id -> bytes. Blobs are immutable, so entries never go stale; bytes are
//! verified against their blake3 name when loaded.
//! Both are bounded in bytes; when full they are cleared (simple, and a refill is cheap).

use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use engine::blob::{BlobError, BlobId, BlobStore};
use engine::served::Served;
use engine::shard::{ReadError, ShardStore};

use crate::limits::{
    PACKAGE_CACHE_BYTES_MAX, TARBALL_CACHE_BYTES_MAX, TARBALL_CACHE_ENTRY_BYTES_MAX,
};

struct Entry {
    served: Rc<Served>,
    generation: u64,
}

/// Cached served records of one core.
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
    /// The served record of `name`, from cache when still valid.
    ///
    /// # Errors
    /// Storage errors from the shard.
    pub fn get(&mut self, shard: &ShardStore, name: &str) -> Result<Option<Rc<Served>>, ReadError> {
        // Read the generation before the data: a commit racing with this read bumps it, so
        // the next request revalidates instead of trusting a possibly older record.
        let generation = shard.generation();
        if let Some(entry) = self.entries.get_mut(name) {
            if entry.generation == generation {
                self.hits += 1;
                return Ok(Some(Rc::clone(&entry.served)));
            }
            if shard.read_rev(name)? == Some(entry.served.rev) {
                entry.generation = generation;
                self.revalidations += 1;
                return Ok(Some(Rc::clone(&entry.served)));
            }
        }
        let Some(served) = shard.read_served(name)? else {
            if let Some(old) = self.entries.remove(name) {
                self.bytes -= old.served.weight_bytes();
            }
            return Ok(None);
        };
        self.loads += 1;
        let served = Rc::new(served);
        let weight = served.weight_bytes();
        if weight <= PACKAGE_CACHE_BYTES_MAX / 4 {
            if self.bytes + weight > PACKAGE_CACHE_BYTES_MAX {
                self.entries.clear();
                self.bytes = 0;
            }
            let old = self.entries.insert(
                name.into(),
                Entry {
                    served: Rc::clone(&served),
                    generation,
                },
            );
            self.bytes += weight;
            if let Some(old) = old {
                self.bytes -= old.served.weight_bytes();
            }
        }
        Ok(Some(served))
    }
}

/// Cached tarball bytes of one core.
#[derive(Default)]
pub struct TarballCache {
    entries: HashMap<BlobId, Bytes>,
    bytes: usize,
}

impl TarballCache {
    /// The bytes of blob `id`, verified against its digest when read from disk.
    ///
    /// # Errors
    /// `NotFound`, `Corrupt` or I/O errors from the blob store.
    pub fn get(&mut self, blobs: &BlobStore, id: &BlobId) -> Result<Bytes, BlobError> {
        if let Some(bytes) = self.entries.get(id) {
            return Ok(bytes.clone());
        }
        let bytes = Bytes::from(blobs.read(id)?);
        if bytes.len() <= TARBALL_CACHE_ENTRY_BYTES_MAX {
            if self.bytes + bytes.len() > TARBALL_CACHE_BYTES_MAX {
                self.entries.clear();
                self.bytes = 0;
            }
            self.bytes += bytes.len();
            self.entries.insert(*id, bytes.clone());
        }
        Ok(bytes)
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
    /// `document` (rendered for `from_base`) with its tarball URLs re-pointed at `to_base`.
    pub fn get(
        &mut self,
        name: &str,
        served: &Served,
        abbreviated: bool,
        to_base: &str,
    ) -> Rc<Rebased> {
        let key = (to_base.into(), name.into(), abbreviated);
        if let Some(hit) = self.entries.get(&key) {
            if hit.rev == served.rev {
                return Rc::clone(hit);
            }
        }
        let document = if abbreviated {
            &served.abbreviated
        } else {
            &served.full
        };
        let text = String::from_utf8_lossy(&document.identity);
        let from = format!("\"tarball\":\"{}/", served.base_url);
        let to = format!("\"tarball\":\"{to_base}/");
        let body = Bytes::from(text.replace(&from, &to));
        let tag = xxhash_rust::xxh3::xxh3_64(to_base.as_bytes());
        let inner = document.etag.strip_suffix(b"\"").unwrap_or(&document.etag);
        let mut etag = inner.to_vec();
        etag.extend_from_slice(format!("-h{tag:016x}\"").as_bytes());
        let rebased = Rc::new(Rebased {
            rev: served.rev,
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
