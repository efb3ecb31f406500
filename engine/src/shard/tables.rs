//! The redb tables of a shard and their encodings. Keys are canonical package names.
//!
//! - `packages`: name -> `StoredPackage` (JSON): the source of truth for metadata. Since
//!   data format 2 a version's manifest is `MANIFEST_IN_ROW` there and its JSON is in
//!   `manifests`, so a publish writes the new manifest and a record without the old ones
//!   (records of earlier builds, with manifests inline, are read as they are).
//! - `manifests`: `name` NUL `version` -> that version's manifest (JSON).
//! - `served`:   name -> served index (`served.rs`): revision and tarball index.
//! - `doc_full_gz`, `doc_abbr_gz`: name -> the pre-rendered full and abbreviated documents,
//!   gzip'd (`served.rs`), in separate tables so a read copies, and redb caches, only the
//!   document clients ask for. Served format 5 also stored the identity forms (`doc_full`,
//!   `doc_abbr`); opening such a shard drops those tables (`LEGACY_DOCS`).
//! - `doc_full_gz_segments`, `doc_abbr_gz_segments`: (name, n) -> the n-th segment of the
//!   document's gzip member (served format 9): the compressed bytes before a cut that appends
//!   moved out of the document value, written once each (`served.rs`).
//! - `revs`:     name -> u64 revision: lets a core check a cached served value cheaply.
//! - `meta`:     key -> bytes: facts about the shard (e.g. the base URL documents embed).
//! - `inline_rows`: u64 row -> tarball bytes, for tarballs of at most
//!   `limits::INLINE_BLOB_BYTES_MAX` bytes of the packages in this shard (data format 3). A
//!   row is written in the transaction that commits the version naming it, whose
//!   `TarballRef` carries the row number and the blake3 id the bytes must hash to (verified
//!   on every read, like a blob file). Rows are numbered in commit order, one past the
//!   table's last, so a batch's inserts all land at the right edge of the B-tree: a few
//!   pages per commit, where keys spread by their hash dirtied one leaf per tarball
//!   (ARCHITECTURE.md, "Inline tarballs by row").
//! - `blob_inline`: blake3 `BlobId` (32 bytes) -> tarball bytes, what builds of data format 2
//!   stored inline; read for the versions whose `TarballRef` has no row, removed with them,
//!   never written to otherwise.

use redb::TableDefinition;

pub(crate) const PACKAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("packages");
pub(crate) const SERVED: TableDefinition<&str, &[u8]> = TableDefinition::new("served");
/// Indexed by `DocKind::stored_index`.
pub(crate) const DOCS: [TableDefinition<&str, &[u8]>; 2] = [
    TableDefinition::new("doc_full_gz"),
    TableDefinition::new("doc_abbr_gz"),
];
/// The segments of the documents in `DOCS`, in the same order: (name, n) -> bytes.
pub(crate) const DOC_SEGMENTS: [TableDefinition<(&str, u32), &[u8]>; 2] = [
    TableDefinition::new("doc_full_gz_segments"),
    TableDefinition::new("doc_abbr_gz_segments"),
];

/// A document segments table.
pub(crate) type SegmentTable<'txn> = redb::Table<'txn, (&'static str, u32), &'static [u8]>;

/// Segments of one document, by number, borrowed from their table.
pub(crate) type Segments<'t> = Vec<(u32, redb::AccessGuard<'t, &'static [u8]>)>;

/// The stored segments of `name`'s document in `table`, in order: those numbered below
/// `count`, or every one when `count` is `None`.
pub(crate) fn segments_of<'t>(
    table: &'t impl redb::ReadableTable<(&'static str, u32), &'static [u8]>,
    name: &str,
    count: Option<u32>,
) -> Result<Segments<'t>, redb::StorageError> {
    let range = match count {
        Some(count) => table.range((name, 0u32)..(name, count))?,
        None => table.range((name, 0u32)..=(name, u32::MAX))?,
    };
    range
        .map(|entry| entry.map(|(key, bytes)| (key.value().1, bytes)))
        .collect()
}

/// `table` of `txn`, or `None` when the shard has no such table (one written by an older
/// build).
pub(crate) fn open_existing<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, redb::TableError> {
    match txn.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Drops every segment of `name`'s document in `table`.
pub(crate) fn remove_segments(
    table: &mut SegmentTable<'_>,
    name: &str,
) -> Result<(), redb::StorageError> {
    table.retain_in((name, 0u32)..=(name, u32::MAX), |_, _| false)
}

/// Document tables of earlier served formats, dropped when a shard is opened.
pub(crate) const LEGACY_DOCS: [TableDefinition<&str, &[u8]>; 2] = [
    TableDefinition::new("doc_full"),
    TableDefinition::new("doc_abbr"),
];
pub(crate) const MANIFESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("manifests");
pub(crate) const REVS: TableDefinition<&str, u64> = TableDefinition::new("revs");

/// Puts in place the manifests `stored`'s record leaves to rows
/// (`StoredPackage::manifests_in_rows`), read from `manifests` (`None`: the shard has no such
/// table, an older one, whose records keep every manifest inline). A missing or unreadable
/// row is an error naming the version.
pub(crate) fn fill_manifests<T: redb::ReadableTable<&'static str, &'static [u8]>>(
    manifests: Option<&T>,
    name: &str,
    stored: &mut crate::packument::StoredPackage,
) -> Result<(), String> {
    for version in stored.manifests_in_rows() {
        let missing = || format!("the manifest of version {version} is missing");
        let table = manifests.ok_or_else(missing)?;
        let row = table
            .get(manifest_key(name, &version).as_str())
            .map_err(|e| format!("the manifest of version {version}: {e}"))?
            .ok_or_else(missing)?;
        stored
            .fill_manifest(&version, row.value())
            .map_err(|e| format!("the manifest of version {version}: {e}"))?;
    }
    Ok(())
}

/// `manifests` key of one version of `name` (neither contains NUL).
pub(crate) fn manifest_key(name: &str, version: &str) -> String {
    let mut key = String::with_capacity(name.len() + 1 + version.len());
    key.push_str(name);
    key.push('\0');
    key.push_str(version);
    key
}

/// The `manifests` keys of every version of `name`: from `name` NUL to `name` U+0001.
pub(crate) fn manifest_keys_of(name: &str) -> std::ops::Range<String> {
    format!("{name}\u{0}")..format!("{name}\u{1}")
}
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const BLOB_INLINE: TableDefinition<&[u8; 32], &[u8]> =
    TableDefinition::new("blob_inline");
pub(crate) const INLINE_ROWS: TableDefinition<u64, &[u8]> = TableDefinition::new("inline_rows");

/// Where a shard keeps one inline tarball.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum InlineKey {
    /// A row of `inline_rows`.
    Row(u64),
    /// An entry of `blob_inline`, by the tarball's id.
    Id(crate::blob::BlobId),
}

/// The inline tarball at `key`, as stored (not verified), or `None` when it is not there (or
/// the shard has no such table).
pub(crate) fn read_inline_at(
    txn: &redb::ReadTransaction,
    key: InlineKey,
) -> Result<Option<Vec<u8>>, redb::Error> {
    let absent = |e: redb::TableError| match e {
        redb::TableError::TableDoesNotExist(_) => Ok(None),
        e => Err(redb::Error::from(e)),
    };
    match key {
        InlineKey::Row(row) => match txn.open_table(INLINE_ROWS) {
            Ok(table) => Ok(table.get(row)?.map(|v| v.value().to_vec())),
            Err(e) => absent(e),
        },
        InlineKey::Id(id) => match txn.open_table(BLOB_INLINE) {
            Ok(table) => Ok(table.get(&id.0)?.map(|v| v.value().to_vec())),
            Err(e) => absent(e),
        },
    }
}

/// Removes the inline tarball at `key` in `txn`: from `rows`, or from `blob_inline`, opened
/// at the first such key and kept in `legacy`. Returns how many bytes it held.
pub(crate) fn remove_inline<'txn>(
    txn: &'txn redb::WriteTransaction,
    rows: &mut redb::Table<'txn, u64, &'static [u8]>,
    legacy: &mut Option<redb::Table<'txn, &'static [u8; 32], &'static [u8]>>,
    key: InlineKey,
) -> Result<Option<u64>, redb::Error> {
    let old = match key {
        InlineKey::Row(row) => rows.remove(row)?.map(|old| old.value().len()),
        InlineKey::Id(id) => {
            let table = match legacy {
                Some(table) => table,
                None => legacy.insert(txn.open_table(BLOB_INLINE)?),
            };
            table.remove(&id.0)?.map(|old| old.value().len())
        }
    };
    Ok(old.map(|len| len as u64))
}

/// `meta` key: the public base URL the served documents were rendered for.
pub(crate) const META_BASE_URL: &str = "base_url";
/// `meta` key: the layout version (`served::FORMAT`, one byte) of the served values.
pub(crate) const META_SERVED_FORMAT: &str = "served_format";

/// `meta` key: total bytes of the values in `inline_rows` and `blob_inline` (u64,
/// little-endian), kept in the transactions that change them, so metrics need no scan.
pub(crate) const META_INLINE_BLOB_BYTES: &str = "inline_blob_bytes";

/// `meta` key: the next row of `inline_rows` to use (u64, little-endian), so that a row
/// freed at the end of the table (its version unpublished) is never given to another
/// tarball.
pub(crate) const META_INLINE_NEXT_ROW: &str = "inline_next_row";

/// A u64 `meta` value (0 when absent or not 8 bytes).
pub(crate) fn read_meta_u64(
    meta: &impl redb::ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<u64, redb::StorageError> {
    Ok(meta
        .get(key)?
        .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
        .map_or(0, u64::from_le_bytes))
}

/// The served tables of a write transaction, opened once for many packages.
pub(crate) struct ServedTables<'txn> {
    index: redb::Table<'txn, &'static str, &'static [u8]>,
    docs: [redb::Table<'txn, &'static str, &'static [u8]>; 2],
    segments: [SegmentTable<'txn>; 2],
}

impl<'txn> ServedTables<'txn> {
    pub(crate) fn open(txn: &'txn redb::WriteTransaction) -> Result<Self, redb::TableError> {
        Ok(ServedTables {
            index: txn.open_table(SERVED)?,
            docs: [txn.open_table(DOCS[0])?, txn.open_table(DOCS[1])?],
            segments: [
                txn.open_table(DOC_SEGMENTS[0])?,
                txn.open_table(DOC_SEGMENTS[1])?,
            ],
        })
    }

    /// Stores every served value of `name`: a document encoded afresh drops the segments of
    /// the one before it; an appended one adds the segment it closed.
    pub(crate) fn put(
        &mut self,
        name: &str,
        encoded: &crate::served::EncodedServed,
    ) -> Result<(), redb::StorageError> {
        self.index.insert(name, encoded.index.as_slice())?;
        for ((table, segments), doc) in self
            .docs
            .iter_mut()
            .zip(&mut self.segments)
            .zip(&encoded.docs)
        {
            if doc.fresh {
                remove_segments(segments, name)?;
            }
            if let Some((n, bytes)) = &doc.segment {
                segments.insert((name, *n), bytes.as_slice())?;
            }
            table.insert(name, doc.value.as_slice())?;
        }
        Ok(())
    }

    /// Removes every served value of `name` (a tombstone: reads answer 404).
    pub(crate) fn remove(&mut self, name: &str) -> Result<(), redb::StorageError> {
        self.index.remove(name)?;
        for (table, segments) in self.docs.iter_mut().zip(&mut self.segments) {
            table.remove(name)?;
            remove_segments(segments, name)?;
        }
        Ok(())
    }
}

/// The byte total of the inline tarballs as recorded in `meta` (0 when never recorded).
pub(crate) fn read_inline_bytes(
    meta: &impl redb::ReadableTable<&'static str, &'static [u8]>,
) -> Result<u64, redb::StorageError> {
    read_meta_u64(meta, META_INLINE_BLOB_BYTES)
}

/// Adds `added` and subtracts `removed` bytes from the inline tarballs' total in `meta`, in
/// the caller's write transaction (the one that changes `inline_rows` or `blob_inline`).
pub(crate) fn adjust_inline_bytes(
    meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    added: u64,
    removed: u64,
) -> Result<(), redb::StorageError> {
    if added == removed {
        return Ok(());
    }
    let total = read_inline_bytes(meta)?
        .saturating_add(added)
        .saturating_sub(removed);
    meta.insert(META_INLINE_BLOB_BYTES, &total.to_le_bytes()[..])?;
    Ok(())
}
