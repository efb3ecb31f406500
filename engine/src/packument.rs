//! The package document model. A package is stored as a `StoredPackage`: the npm-visible full
//! document (`doc`), whose versions' `dist.tarball` hold a path relative to the registry's
//! public URL, plus the tarball index (version -> file, blob, size) and a revision counter.
//!
//! `render` turns a stored package into the bytes clients receive: the full packument
//! (`GET /NAME`) and the abbreviated one (`Accept: application/vnd.npm.install-v1+json`),
//! with absolute tarball URLs. Rendering happens on write, never per request.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use serde::de::IgnoredAny;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::blob::BlobId;

/// One version's tarball, as indexed for `GET /NAME/-/FILE.tgz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TarballRef {
    /// npm's file name, `{basename}-{version}.tgz`.
    pub file: String,
    /// blake3 of the tarball bytes, hex.
    pub blob: String,
    /// Size in bytes.
    pub size: u64,
    /// The row of the shard's `inline_rows` table holding the tarball, for a tarball of at
    /// most `limits::INLINE_BLOB_BYTES_MAX` bytes stored since data format 3; absent for a
    /// blob file and for an inline tarball an earlier build stored (`blob_inline`, by id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<u64>,
}

impl TarballRef {
    /// The blob id, parsed from hex.
    #[must_use]
    pub fn blob_id(&self) -> Option<BlobId> {
        BlobId::from_hex(&self.blob)
    }
}

/// A package as stored in its shard (the source of truth for metadata).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredPackage {
    /// Incremented by every change; `_rev` is derived from it.
    pub rev: u64,
    /// The full npm document, `dist.tarball` relative to the public URL.
    pub doc: Map<String, Value>,
    /// version -> tarball.
    pub tarballs: BTreeMap<String, TarballRef>,
}

/// The two documents clients read, rendered for one public URL.
///
/// Each starts with its `versions` object, versions in publish order, and everything that
/// a publish changes besides (dist-tags, time, readme, `_rev`, ...) comes after it. A
/// publish only appends versions, so it leaves `body[..cut]` as it was: the cut is where the
/// `}` closing `versions` starts, and the served gzip form keeps a sync point there
/// (`served::encode_appended`).
#[derive(Debug)]
pub struct Rendered {
    pub full: Vec<u8>,
    pub full_cut: usize,
    pub full_entries: Entries,
    pub abbreviated: Vec<u8>,
    pub abbreviated_cut: usize,
    pub abbreviated_entries: Entries,
}

/// What the `versions` entries of a rendered document leave for the next append, without
/// reading the document again: the entries' hash chain (`chain_entry`, folded over every
/// entry as it was written) and where the last entry starts in the buffer that was written
/// (equal to the buffer's length before writing when no entry was written).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entries {
    pub chain: u128,
    pub last: usize,
}

/// The hash chain of a document's `versions` entries: `chain` (0 before the first entry)
/// extended by one entry's bytes as rendered (`"1.0.0":{...}`, with the comma before it
/// unless it is the first). It depends on the entries' bytes only, not on how many publishes
/// wrote them, so an appended document and a fresh rendering of the same package agree,
/// and a validator derived from it names the document's content.
#[must_use]
pub fn chain_entry(chain: u128, entry: &[u8]) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&chain.to_le_bytes());
    hasher.update(entry);
    hasher.digest128()
}

/// What appending versions changes in one document: `mid`, the new versions' entries, goes
/// at the old cut, and `tail` replaces everything after it. The new document is
/// `old[..old_cut] + mid + tail` and its cut is `old_cut + mid.len()`.
/// `window` is the entry of the last version before the append as the old document has it
/// (what the compressor must take as its dictionary, and what the old document's cut lets an
/// append check), when it was rendered; `entries` the chain continued over `mid`'s entries, with the start of the
/// last of them in `mid`.
#[derive(Debug)]
pub struct AppendedDoc {
    pub window: Vec<u8>,
    pub mid: Vec<u8>,
    pub entries: Entries,
    pub tail: Vec<u8>,
}

/// `AppendedDoc` for the full and the abbreviated document.
#[derive(Debug)]
pub struct Appended {
    pub full: AppendedDoc,
    pub abbreviated: AppendedDoc,
}

/// Fields of a version manifest kept in the abbreviated packument (npm's registry docs).
const ABBREVIATED_VERSION_FIELDS: &[&str] = &[
    "name",
    "version",
    "deprecated",
    "dependencies",
    "optionalDependencies",
    "devDependencies",
    "bundleDependencies",
    "bundledDependencies",
    "peerDependencies",
    "peerDependenciesMeta",
    "acceptDependencies",
    "bin",
    "directories",
    "engines",
    "cpu",
    "os",
    "libc",
    "_hasShrinkwrap",
    "hasInstallScript",
    "funding",
    "license",
    "dist",
];

impl StoredPackage {
    /// The package name (`doc.name`).
    #[must_use]
    pub fn name(&self) -> &str {
        self.doc
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The `versions` object.
    #[must_use]
    pub fn versions(&self) -> Option<&Map<String, Value>> {
        self.doc.get("versions").and_then(Value::as_object)
    }

    /// The `dist-tags` object as strings.
    #[must_use]
    pub fn dist_tags(&self) -> BTreeMap<String, String> {
        self.doc
            .get("dist-tags")
            .and_then(Value::as_object)
            .map(|tags| {
                tags.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// npm's `_rev` for this revision.
    #[must_use]
    pub fn rev_string(&self) -> String {
        let digest = xxhash_rust::xxh3::xxh3_64(format!("{}@{}", self.name(), self.rev).as_bytes());
        format!("{}-{digest:016x}", self.rev)
    }

    /// Encodes for storage.
    ///
    /// # Panics
    /// Never: a `Map` of `Value`s always serializes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        seal_record(serde_json::to_vec(self).expect("a JSON value tree always serializes"))
    }

    /// Decodes what `encode` (or `encode_split`: then the manifests in rows are still
    /// `MANIFEST_IN_ROW`, see `manifests_in_rows`) wrote.
    ///
    /// # Errors
    /// The stored bytes are not a valid package record.
    pub fn decode(bytes: &[u8]) -> Result<StoredPackage, serde_json::Error> {
        serde_json::from_slice(&record_json(bytes)?)
    }

    /// Encodes for storage with each manifest in a row of its own (data format 2): the
    /// record, where every version's manifest is `MANIFEST_IN_ROW`, and (version, manifest
    /// JSON) for each version. The record is what `encode` writes otherwise.
    #[must_use]
    pub fn encode_split(&self) -> (Vec<u8>, ManifestRows) {
        encode_record_split(self, None)
    }

    /// The versions whose manifest the record leaves to a row (`MANIFEST_IN_ROW`). After
    /// `decode_for_append`, only those among the versions it decoded.
    #[must_use]
    pub fn manifests_in_rows(&self) -> Vec<String> {
        self.versions()
            .into_iter()
            .flatten()
            .filter(|(_, manifest)| is_in_row(manifest))
            .map(|(version, _)| version.clone())
            .collect()
    }

    /// The package a record and its rows (`encode_split`, `KeptVersions::encode_with`)
    /// stand for (for tests).
    #[cfg(test)]
    pub(crate) fn decode_with_rows(record: &[u8], rows: &[(String, Vec<u8>)]) -> StoredPackage {
        let mut stored = StoredPackage::decode(record).expect("a record decodes");
        for (version, row) in rows {
            stored.fill_manifest(version, row).expect("a row decodes");
        }
        assert!(stored.manifests_in_rows().is_empty(), "every row given");
        stored
    }

    /// Puts `manifest`, read from its row, in place of `MANIFEST_IN_ROW`.
    ///
    /// # Errors
    /// The row is not JSON.
    pub fn fill_manifest(&mut self, version: &str, row: &[u8]) -> Result<(), serde_json::Error> {
        let manifest: Value = serde_json::from_slice(row)?;
        if let Some(slot) = self
            .doc
            .get_mut("versions")
            .and_then(Value::as_object_mut)
            .and_then(|versions| versions.get_mut(version))
        {
            *slot = manifest;
        }
        Ok(())
    }

    /// One version's manifest with its absolute tarball URL (`GET /NAME/VERSION`).
    #[must_use]
    pub fn render_version(&self, version: &str, base_url: &str) -> Option<Vec<u8>> {
        let mut manifest = self.versions()?.get(version)?.clone();
        absolutize_tarball(&mut manifest, base_url);
        Some(serde_json::to_vec(&manifest).expect("a JSON value tree always serializes"))
    }

    /// Renders the full and abbreviated documents with tarball URLs under `base_url`
    /// (no trailing slash), serialized straight from the stored document (no copy of it is
    /// built). The full document is `versions` (every relative `dist.tarball` made absolute),
    /// then the other keys of `doc` in their order with `_rev` set; the abbreviated one is
    /// `versions` cut to `ABBREVIATED_VERSION_FIELDS`, then `name`, `modified`, `dist-tags`
    /// and `time`. A `versions` that is missing or not an object renders as `{}`.
    #[must_use]
    pub fn render(&self, base_url: &str) -> Rendered {
        let rev = self.rev_string();
        let versions = self.versions();
        let render_one = |abbreviated: bool| {
            let mut out = Vec::with_capacity(1024);
            out.extend_from_slice(b"{\"versions\":{");
            let entries = match versions {
                Some(versions) => write_versions(
                    &mut out,
                    versions,
                    0..versions.len(),
                    base_url,
                    abbreviated,
                    0,
                ),
                None => Entries {
                    chain: 0,
                    last: out.len(),
                },
            };
            let cut = out.len();
            if abbreviated {
                self.write_abbreviated_tail(&mut out);
            } else {
                self.write_full_tail(&mut out, &rev);
            }
            (out, cut, entries)
        };
        let (full, full_cut, full_entries) = render_one(false);
        let (abbreviated, abbreviated_cut, abbreviated_entries) = render_one(true);
        Rendered {
            full,
            full_cut,
            full_entries,
            abbreviated,
            abbreviated_cut,
            abbreviated_entries,
        }
    }

    /// The parts of both documents that change when versions `from..` (in `versions` order)
    /// are appended to a package that had `from` versions, all of them still in place and
    /// unchanged (what `publish::plan_publish` does), and, with `window`, the entry of
    /// version `from - 1` (whose manifest must then be there, not a placeholder; without,
    /// `AppendedDoc::window` is empty). `chains` are the old documents' entry chains (full,
    /// abbreviated). None when `from` is 0 or past the versions: there is nothing to
    /// append to.
    #[must_use]
    pub fn render_appended(
        &self,
        base_url: &str,
        from: usize,
        chains: [u128; 2],
        window: bool,
    ) -> Option<Appended> {
        let versions = self.versions()?;
        if from == 0 || from >= versions.len() {
            return None;
        }
        let rev = self.rev_string();
        let part = |abbreviated: bool, chain: u128| {
            let mut last = Vec::new();
            if window {
                last.reserve(1024);
                write_versions(
                    &mut last,
                    versions,
                    from - 1..from,
                    base_url,
                    abbreviated,
                    0,
                );
            }
            let mut mid = Vec::with_capacity(1024);
            let entries = write_versions(
                &mut mid,
                versions,
                from..versions.len(),
                base_url,
                abbreviated,
                chain,
            );
            let mut tail = Vec::with_capacity(1024);
            if abbreviated {
                self.write_abbreviated_tail(&mut tail);
            } else {
                self.write_full_tail(&mut tail, &rev);
            }
            AppendedDoc {
                window: last,
                mid,
                entries,
                tail,
            }
        };
        Some(Appended {
            full: part(false, chains[0]),
            abbreviated: part(true, chains[1]),
        })
    }

    /// `}` closing `versions`, then every other key of `doc` in order with `_rev` set, `}`.
    fn write_full_tail(&self, out: &mut Vec<u8>, rev: &str) {
        out.push(b'}');
        let mut has_rev = false;
        for (key, value) in &self.doc {
            match key.as_str() {
                "versions" => {}
                "_rev" => {
                    has_rev = true;
                    write_entry(out, key, &rev);
                }
                _ => write_entry(out, key, value),
            }
        }
        if !has_rev {
            write_entry(out, "_rev", &rev);
        }
        out.push(b'}');
    }

    /// `}` closing `versions`, then `name`, `modified`, `dist-tags` and `time`, `}`.
    fn write_abbreviated_tail(&self, out: &mut Vec<u8>) {
        let time = self.doc.get("time");
        out.push(b'}');
        write_entry(out, "name", &self.name());
        let modified = time.and_then(|t| t.get("modified")).unwrap_or(&Value::Null);
        write_entry(out, "modified", modified);
        match self.doc.get("dist-tags") {
            Some(tags) => write_entry(out, "dist-tags", tags),
            None => write_entry(out, "dist-tags", &Map::new()),
        }
        if let Some(time) = time {
            write_entry(out, "time", time);
        }
        out.push(b'}');
    }
}

/// (version, manifest JSON) for rows of the shard's `manifests` table.
pub type ManifestRows = Vec<(String, Vec<u8>)>;

/// What a record holds in place of a manifest kept in a row of the shard's `manifests`
/// table (data format 2). A manifest is a JSON object; this number never is one.
pub const MANIFEST_IN_ROW: u64 = 0;

fn is_in_row(manifest: &Value) -> bool {
    manifest.as_u64() == Some(MANIFEST_IN_ROW)
}

/// What an old record holds of its first `count` versions, as its text: the entries of
/// `versions` and of `tarballs` (`KeptVersions`).
#[derive(Clone, Copy)]
struct Kept<'a> {
    versions: &'a str,
    tarballs: &'a str,
    count: usize,
}

/// The record of `stored` with the manifests of its versions written as `MANIFEST_IN_ROW` and
/// returned as rows. With `kept`, its text stands for the first `count` versions' entries
/// of `versions` and `tarballs`, and only the versions after them are written (and rowed);
/// `stored.tarballs` may then lack the earlier versions' tarballs.
fn encode_record_split(stored: &StoredPackage, kept: Option<Kept<'_>>) -> (Vec<u8>, ManifestRows) {
    let from = kept.map_or(0, |k| k.count);
    let mut rows = Vec::new();
    let mut out =
        Vec::with_capacity(kept.map_or(0, |k| k.versions.len() + k.tarballs.len()) + 4096);
    out.extend_from_slice(b"{\"rev\":");
    write_json(&mut out, &stored.rev);
    out.extend_from_slice(b",\"doc\":{");
    for (i, (key, value)) in stored.doc.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json(&mut out, key);
        out.push(b':');
        match value {
            Value::Object(versions) if key == "versions" => {
                out.push(b'{');
                out.extend_from_slice(kept.map_or("", |k| k.versions).as_bytes());
                for (j, (version, manifest)) in versions.iter().enumerate().skip(from) {
                    if j > 0 {
                        out.push(b',');
                    }
                    write_json(&mut out, version);
                    out.push(b':');
                    write_json(&mut out, &MANIFEST_IN_ROW);
                    let mut row = Vec::with_capacity(1024);
                    write_json(&mut row, manifest);
                    rows.push((version.clone(), row));
                }
                out.push(b'}');
            }
            _ => write_json(&mut out, value),
        }
    }
    out.extend_from_slice(b"},\"tarballs\":");
    match kept {
        None => write_json(&mut out, &stored.tarballs),
        Some(kept) => {
            // The old entries as they were, then the new versions' in their order: the
            // object is read into a map, so its entries need not be sorted.
            out.push(b'{');
            out.extend_from_slice(kept.tarballs.as_bytes());
            let mut first = kept.tarballs.is_empty();
            let added = stored
                .versions()
                .into_iter()
                .flat_map(|v| v.keys().skip(from));
            for version in added {
                if let Some(tarball) = stored.tarballs.get(version) {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    write_json(&mut out, version);
                    out.push(b':');
                    write_json(&mut out, tarball);
                }
            }
            out.push(b'}');
        }
    }
    out.push(b'}');
    (seal_record(out), rows)
}

/// Writes JSON into a `Vec` (which cannot fail).
fn write_json(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    serde_json::to_writer(&mut *out, value).expect("a JSON value tree always serializes");
}

/// `,"key":value`.
fn write_entry(out: &mut Vec<u8>, key: &str, value: &(impl Serialize + ?Sized)) {
    out.push(b',');
    write_json(out, key);
    out.push(b':');
    write_json(out, value);
}

/// The entries of `versions` at positions `range`, `"1.0.0":{...}`, each preceded by a comma
/// unless it is the first version: what goes inside the `versions` object. Returns `chain`
/// extended over each entry written, and where the last one starts in `out`.
fn write_versions(
    out: &mut Vec<u8>,
    versions: &Map<String, Value>,
    range: std::ops::Range<usize>,
    base_url: &str,
    abbreviated: bool,
    mut chain: u128,
) -> Entries {
    let mut last = out.len();
    for (i, (version, manifest)) in versions
        .iter()
        .enumerate()
        .skip(range.start)
        .take(range.len())
    {
        last = out.len();
        if i > 0 {
            out.push(b',');
        }
        write_json(out, version);
        out.push(b':');
        write_json(
            out,
            &Manifest {
                manifest,
                base_url,
                abbreviated,
            },
        );
        chain = chain_entry(chain, &out[last..]);
    }
    Entries { chain, last }
}

/// The version manifests of a package record, kept as the record's bytes, for a batch of
/// publishes: a publish only appends versions, so the writer decodes everything else
/// (`decode_for_append`), plans on a package whose old manifests are `null` placeholders, and
/// writes the record back with the kept bytes in their place (`encode_with`). Decoding and
/// re-encoding every manifest was the biggest cost of a publish to a package with many
/// versions; the tarball entries are kept the same way (decoding them, with a hex blob id
/// each, was the next: 3.5% of the writer late in a publish storm).
#[derive(Debug)]
pub struct KeptVersions {
    /// The text inside the record's `versions` object: `"1.0.0":{...},...`.
    inner: String,
    /// How many versions the record had.
    count: usize,
    /// The text inside the record's `tarballs` object: `"1.0.0":{"file":...},...`.
    tarballs: String,
    /// The size of the whole record.
    record_bytes: usize,
}

/// A writer that only counts bytes.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A record's `doc` as `decode_for_append` reads it, in one pass over the bytes: every
/// field's raw value in order, except `versions` (None in `fields`), whose entries are
/// split as they go by.
struct AppendDoc<'a> {
    fields: Vec<(Cow<'a, str>, Option<&'a RawValue>)>,
    versions: Option<Vec<(&'a str, &'a RawValue)>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for AppendDoc<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = AppendDoc<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<AppendDoc<'a>, M::Error> {
                let mut doc = AppendDoc {
                    fields: Vec::with_capacity(map.size_hint().unwrap_or(16)),
                    versions: None,
                };
                while let Some(key) = map.next_key::<Cow<'a, str>>()? {
                    if key == "versions" {
                        if doc.versions.is_some() {
                            return Err(serde::de::Error::custom("versions appears twice"));
                        }
                        doc.versions = Some(map.next_value::<RawEntries<'a>>()?.0);
                        doc.fields.push((key, None));
                    } else {
                        doc.fields.push((key, Some(map.next_value()?)));
                    }
                }
                Ok(doc)
            }
        }
        deserializer.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// The entries of a record's `versions` or `tarballs` object, in order: version keys
/// borrowed (a key with an escape fails the decode; versions never have one) and values
/// (manifests, tarball entries) raw.
struct RawEntries<'a>(Vec<(&'a str, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for RawEntries<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = RawEntries<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<RawEntries<'a>, M::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(key) = map.next_key::<&'a str>()? {
                    out.push((key, map.next_value()?));
                }
                Ok(RawEntries(out))
            }
        }
        deserializer.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// The text of `json` from the opening quote of the first entry's key to the end of the last
/// entry's manifest: what the `versions` object holds between its braces, found from where
/// the borrowed entries point (no second pass). None when they do not point into `json`.
fn entries_text<'a>(json: &'a [u8], entries: &[(&str, &RawValue)]) -> Option<&'a str> {
    let (Some((first, _)), Some((_, last))) = (entries.first(), entries.last()) else {
        return Some("");
    };
    let base = json.as_ptr() as usize;
    let start = (first.as_ptr() as usize)
        .checked_sub(base)?
        .checked_sub(1)?;
    let end = (last.get().as_ptr() as usize).checked_sub(base)? + last.get().len();
    let text = json.get(start..end)?;
    if text.first() != Some(&b'"') {
        return None;
    }
    std::str::from_utf8(text).ok()
}

/// A stored record of at least `RECORD_ZSTD_MIN_BYTES` of JSON is that JSON compressed as one
/// zstd frame (with its content size); a smaller one is the JSON itself, which starts with
/// `{`, never with the frame magic (so are the records of earlier builds). A record is the
/// largest value a publish writes; compressing it costs the writer a pass over it and
/// saves the pages. Measured (ARCHITECTURE.md, "What a publish writes"): for records of a
/// few KiB the pass cost more than the pages saved, for tens of KiB it paid.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Records with less JSON than this are stored plain.
const RECORD_ZSTD_MIN_BYTES: usize = 16 * 1024;
/// zstd's fastest positive level: records are written on every publish, and JSON this
/// repetitive compresses 3-4x even so.
const RECORD_ZSTD_LEVEL: i32 = 1;
/// A frame that claims more than this is corrupt (10,000 versions of 64 KiB manifests).
const RECORD_JSON_BYTES_MAX: u64 = 1 << 30;

thread_local! {
    /// One zstd context each per thread: a fresh compression context allocates and zeroes
    /// its tables every time.
    static RECORD_COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static RECORD_DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// The stored form of a record's JSON.
fn seal_record(json: Vec<u8>) -> Vec<u8> {
    if json.len() < RECORD_ZSTD_MIN_BYTES {
        return json;
    }
    RECORD_COMPRESSOR.with_borrow_mut(|slot| {
        let compressor = slot.get_or_insert_with(|| {
            zstd::bulk::Compressor::new(RECORD_ZSTD_LEVEL).expect("zstd allocates a context")
        });
        compressor
            .compress(&json)
            .expect("zstd compresses into a buffer it sizes itself")
    })
}

/// The JSON of a stored record: the frame decompressed, or the bytes themselves when they
/// are not a zstd frame (records of earlier builds).
///
/// # Errors
/// A frame that does not name its size, names too large a one, or does not decompress.
fn record_json(bytes: &[u8]) -> Result<Cow<'_, [u8]>, serde_json::Error> {
    if !bytes.starts_with(&ZSTD_MAGIC) {
        return Ok(Cow::Borrowed(bytes));
    }
    let invalid = |what: String| <serde_json::Error as serde::de::Error>::custom(what);
    let size = match zstd::zstd_safe::get_frame_content_size(bytes) {
        Ok(Some(size)) if size <= RECORD_JSON_BYTES_MAX => size,
        _ => {
            return Err(invalid(
                "the record's zstd frame names no sound size".into(),
            ))
        }
    };
    let capacity = usize::try_from(size).map_err(|e| invalid(e.to_string()))?;
    RECORD_DECOMPRESSOR.with_borrow_mut(|slot| {
        let decompressor = match slot {
            Some(d) => d,
            None => {
                slot.insert(zstd::bulk::Decompressor::new().map_err(|e| invalid(e.to_string()))?)
            }
        };
        let json = decompressor
            .decompress(bytes, capacity)
            .map_err(|e| invalid(format!("the record does not decompress: {e}")))?;
        if json.len() != capacity {
            return Err(invalid("the record is shorter than its frame says".into()));
        }
        Ok(Cow::Owned(json))
    })
}

/// What a batch of publishes to one package needs of its record (`decode_for_append`).
#[derive(Clone, Copy, Debug, Default)]
pub struct AppendWants<'a> {
    /// Versions whose manifests and tarball entries are decoded: those the publishes
    /// publish, and those their dist-tags name.
    pub versions: &'a [&'a str],
    /// The dist-tags the publishes set: the versions the record has them name are not
    /// needed for them.
    pub tags: &'a [&'a str],
    /// The revision at which the caller holds the rendered entries of the package's last
    /// version (`served::EncodedDoc::window`): at that revision its manifest is not needed.
    pub windows_at: Option<u64>,
}

/// The record's shape as `decode_for_append` reads it.
#[derive(Deserialize)]
struct AppendRecord<'a> {
    rev: u64,
    #[serde(borrow)]
    doc: AppendDoc<'a>,
    #[serde(borrow)]
    tarballs: RawEntries<'a>,
}

impl StoredPackage {
    /// Decodes a record for a batch of publishes: every version manifest is `null` except
    /// those `wants` names, those the record's dist-tags name that the publishes do not set
    /// again (what `publish::plan_publish` reads when it copies the `latest` version's
    /// fields to the top), and the last one (what `render_appended` renders again, as the
    /// compressor's dictionary) unless the caller holds its rendered entries at the
    /// record's revision (`AppendWants::windows_at`); the manifests' bytes are kept for
    /// `KeptVersions::encode_with`. So are the entries of `tarballs`: only those of the
    /// versions `wants` names are decoded (`plan_publish` reads the tarball of a version
    /// published again). One pass over the record's JSON: the manifests and tarball entries
    /// are skipped once, and their text is taken from where their entries point. Only for
    /// planning publishes: the result must not be rendered or encoded.
    ///
    /// # Errors
    /// The bytes are not a valid package record, its `versions` or `tarballs` is not an
    /// object, or a version key has a JSON escape (the caller then decodes the record in
    /// full).
    pub fn decode_for_append(
        bytes: &[u8],
        wants: &AppendWants<'_>,
    ) -> Result<(StoredPackage, KeptVersions), serde_json::Error> {
        let invalid = |what: &str| <serde_json::Error as serde::de::Error>::custom(what);
        let json = record_json(bytes)?;
        let record: AppendRecord<'_> = serde_json::from_slice(&json)?;
        let mut named: BTreeSet<&str> = wants.versions.iter().copied().collect();
        let tarballs_named = named.clone();
        let mut doc = Map::new();
        let mut tagged = Vec::new();
        for (key, raw) in &record.doc.fields {
            let Some(raw) = raw else {
                doc.insert(key.to_string(), Value::Null);
                continue;
            };
            let value: Value = serde_json::from_str(raw.get())?;
            if key == "dist-tags" {
                if let Value::Object(tags) = &value {
                    tagged.extend(
                        tags.iter()
                            .filter(|(tag, _)| !wants.tags.contains(&tag.as_str()))
                            .filter_map(|(_, version)| version.as_str())
                            .map(str::to_owned),
                    );
                }
            }
            doc.insert(key.to_string(), value);
        }
        named.extend(tagged.iter().map(String::as_str));
        let entries = record.doc.versions.ok_or_else(|| invalid("no versions"))?;
        let inner = entries_text(&json, &entries)
            .ok_or_else(|| invalid("the versions' entries are not where they were read"))?;
        let tarballs_inner = entries_text(&json, &record.tarballs.0)
            .ok_or_else(|| invalid("the tarballs' entries are not where they were read"))?;
        if let Some((last, _)) = entries.last() {
            if wants.windows_at != Some(record.rev) {
                named.insert(last);
            }
        }
        let mut versions = Map::new();
        for (version, manifest) in &entries {
            let value = if named.contains(*version) {
                serde_json::from_str(manifest.get())?
            } else {
                Value::Null
            };
            if versions.insert((*version).to_owned(), value).is_some() {
                return Err(invalid("a version appears twice"));
            }
        }
        doc.insert("versions".into(), Value::Object(versions));
        let mut tarballs = BTreeMap::new();
        for (version, tarball) in &record.tarballs.0 {
            if tarballs_named.contains(*version) {
                let tarball: TarballRef = serde_json::from_str(tarball.get())?;
                tarballs.insert((*version).to_owned(), tarball);
            }
        }
        let kept = KeptVersions {
            inner: inner.to_owned(),
            count: entries.len(),
            tarballs: tarballs_inner.to_owned(),
            record_bytes: bytes.len(),
        };
        let stored = StoredPackage {
            rev: record.rev,
            doc,
            tarballs,
        };
        Ok((stored, kept))
    }
}

impl KeptVersions {
    /// How many versions the record had.
    #[must_use]
    pub fn count(&self) -> usize {
        self.count
    }

    /// About the size of `encode_with(stored)`, without writing it: the old record, the new
    /// manifests and their `time` and tarball entries. For space checks.
    #[must_use]
    pub fn record_bytes_estimate(&self, stored: &StoredPackage) -> usize {
        let added: usize = stored
            .versions()
            .into_iter()
            .flat_map(|v| v.iter().skip(self.count))
            .map(|(version, manifest)| {
                let mut counter = ByteCount(0);
                serde_json::to_writer(&mut counter, manifest)
                    .expect("a JSON value tree always serializes");
                counter.0 + 3 * version.len() + 256
            })
            .sum();
        self.record_bytes + added
    }

    /// The record of `stored`, planned from `decode_for_append`'s package by appending
    /// versions, and the new versions' manifests as rows: the kept bytes of the old entries
    /// (inline manifests of earlier builds, or `MANIFEST_IN_ROW`), then each new version with
    /// `MANIFEST_IN_ROW`, so the record does not grow by a manifest per publish. None when
    /// `stored` lost versions or has no `versions` object (it was not planned by publishes
    /// only).
    #[must_use]
    pub fn encode_with(&self, stored: &StoredPackage) -> Option<(Vec<u8>, ManifestRows)> {
        let versions = stored.versions()?;
        if versions.len() < self.count {
            return None;
        }
        Some(encode_record_split(
            stored,
            Some(Kept {
                versions: &self.inner,
                tarballs: &self.tarballs,
                count: self.count,
            }),
        ))
    }
}

/// One version's manifest with an absolute `dist.tarball`; abbreviated, only the fields of
/// `ABBREVIATED_VERSION_FIELDS`, in that order (a manifest that is not an object becomes `{}`).
struct Manifest<'a> {
    manifest: &'a Value,
    base_url: &'a str,
    abbreviated: bool,
}

impl Serialize for Manifest<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Value::Object(fields) = self.manifest else {
            return if self.abbreviated {
                serializer.serialize_map(Some(0))?.end()
            } else {
                self.manifest.serialize(serializer)
            };
        };
        let dist = |value| Dist {
            dist: value,
            base_url: self.base_url,
        };
        if self.abbreviated {
            let kept = ABBREVIATED_VERSION_FIELDS
                .iter()
                .filter(|f| fields.contains_key(**f))
                .count();
            let mut map = serializer.serialize_map(Some(kept))?;
            for &field in ABBREVIATED_VERSION_FIELDS {
                match fields.get(field) {
                    Some(value) if field == "dist" => map.serialize_entry(field, &dist(value))?,
                    Some(value) => map.serialize_entry(field, value)?,
                    None => {}
                }
            }
            map.end()
        } else {
            let mut map = serializer.serialize_map(Some(fields.len()))?;
            for (key, value) in fields {
                if key == "dist" {
                    map.serialize_entry(key, &dist(value))?;
                } else {
                    map.serialize_entry(key, value)?;
                }
            }
            map.end()
        }
    }
}

/// A manifest field, with `tarball` made absolute when it is the `dist` object.
struct Dist<'a> {
    dist: &'a Value,
    base_url: &'a str,
}

impl Serialize for Dist<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Value::Object(fields) = self.dist else {
            return self.dist.serialize(serializer);
        };
        let mut map = serializer.serialize_map(Some(fields.len()))?;
        for (key, value) in fields {
            match value {
                Value::String(tarball) if key == "tarball" && !is_absolute(tarball) => {
                    map.serialize_entry(key, &format_args!("{}/{tarball}", self.base_url))?;
                }
                _ => map.serialize_entry(key, value)?,
            }
        }
        map.end()
    }
}

fn is_absolute(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// What checking a publish against a stored package needs (maintainers, published and
/// once-published versions, each version's blob), read from the stored record without
/// building its document: the keys of `versions` and `time` are collected and their values
/// skipped. The prepare pool asks this for every publish; the full decode was ~8% of the
/// server's CPU in a publish storm.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PublishFacts {
    maintainers: Vec<String>,
    versions: BTreeSet<String>,
    times: BTreeSet<String>,
    blobs: BTreeMap<String, String>,
}

/// The record's shape as `PublishFacts::decode` reads it. A record this does not fit (a
/// hand-edited one, say) is decoded in full instead.
#[derive(Deserialize)]
struct FactsRecord<'a> {
    #[serde(borrow)]
    doc: FactsDoc<'a>,
    #[serde(borrow)]
    tarballs: BTreeMap<Cow<'a, str>, FactsTarball<'a>>,
}

#[derive(Deserialize)]
struct FactsDoc<'a> {
    #[serde(default)]
    maintainers: Option<Value>,
    #[serde(borrow, default)]
    versions: Option<BTreeMap<Cow<'a, str>, IgnoredAny>>,
    #[serde(borrow, default)]
    time: Option<BTreeMap<Cow<'a, str>, IgnoredAny>>,
}

#[derive(Deserialize)]
struct FactsTarball<'a> {
    #[serde(borrow)]
    blob: Cow<'a, str>,
}

impl PublishFacts {
    /// Reads the facts from the bytes `StoredPackage::encode` wrote.
    ///
    /// # Errors
    /// The bytes are not a valid package record.
    pub fn decode(bytes: &[u8]) -> Result<PublishFacts, serde_json::Error> {
        let json = record_json(bytes)?;
        match serde_json::from_slice::<FactsRecord<'_>>(&json) {
            Ok(record) => Ok(PublishFacts {
                maintainers: maintainer_names(record.doc.maintainers.as_ref()),
                versions: keys(record.doc.versions),
                times: keys(record.doc.time),
                blobs: record
                    .tarballs
                    .into_iter()
                    .map(|(version, t)| (version.into_owned(), t.blob.into_owned()))
                    .collect(),
            }),
            Err(_) => StoredPackage::decode(bytes).map(|stored| PublishFacts::of(&stored)),
        }
    }

    /// The facts of a decoded package.
    #[must_use]
    pub fn of(stored: &StoredPackage) -> PublishFacts {
        let object_keys = |field: &str| {
            stored
                .doc
                .get(field)
                .and_then(Value::as_object)
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        PublishFacts {
            maintainers: maintainer_names(stored.doc.get("maintainers")),
            versions: object_keys("versions"),
            times: object_keys("time"),
            blobs: stored
                .tarballs
                .iter()
                .map(|(version, t)| (version.clone(), t.blob.clone()))
                .collect(),
        }
    }

    /// `user` is one of the package's maintainers.
    #[must_use]
    pub fn is_maintainer(&self, user: &str) -> bool {
        self.maintainers.iter().any(|m| m == user)
    }

    /// `version` is published (in `versions`).
    #[must_use]
    pub fn has_version(&self, version: &str) -> bool {
        self.versions.contains(version)
    }

    /// `version` was published once (it has a `time` entry), even if since unpublished.
    #[must_use]
    pub fn was_published(&self, version: &str) -> bool {
        self.times.contains(version)
    }

    /// The blob (blake3 hex) of `version`'s tarball.
    #[must_use]
    pub fn blob(&self, version: &str) -> Option<&str> {
        self.blobs.get(version).map(String::as_str)
    }
}

/// The `name` of each object in a `maintainers` array.
fn maintainer_names(maintainers: Option<&Value>) -> Vec<String> {
    maintainers
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|m| m.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn keys(map: Option<BTreeMap<Cow<'_, str>, IgnoredAny>>) -> BTreeSet<String> {
    map.map(|m| m.into_keys().map(Cow::into_owned).collect())
        .unwrap_or_default()
}

fn absolutize_tarball(manifest: &mut Value, base_url: &str) {
    if let Some(Value::Object(dist)) = manifest.get_mut("dist") {
        if let Some(Value::String(tarball)) = dist.get_mut("tarball") {
            if !is_absolute(tarball) {
                *tarball = format!("{base_url}/{tarball}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> StoredPackage {
        let doc = json!({
            "_id": "a", "name": "a", "dist-tags": {"latest": "1.0.0"},
            "versions": {"1.0.0": {"name": "a", "version": "1.0.0", "readme": "x",
                "scripts": {"test": "t"}, "dependencies": {"b": "^1"},
                "dist": {"tarball": "a/-/a-1.0.0.tgz", "integrity": "sha512-x", "shasum": "y"}}},
            "time": {"created": "2026-01-01T00:00:00.000Z", "modified": "2026-01-01T00:00:00.000Z",
                "1.0.0": "2026-01-01T00:00:00.000Z"}
        });
        let Value::Object(doc) = doc else {
            unreachable!()
        };
        StoredPackage {
            rev: 3,
            doc,
            tarballs: BTreeMap::new(),
        }
    }

    /// The rendering as it was done before `render` serialized straight from the document
    /// (a copy of the document, changed, then serialized), with `versions` moved first as
    /// `render` lays it out. `render` must give the same bytes.
    fn render_reference(stored: &StoredPackage, base_url: &str) -> (Vec<u8>, Vec<u8>) {
        let mut versions = match stored.doc.get("versions") {
            Some(Value::Object(versions)) => versions.clone(),
            _ => Map::new(),
        };
        for manifest in versions.values_mut() {
            absolutize_tarball(manifest, base_url);
        }
        let mut full = Map::new();
        full.insert("versions".into(), Value::Object(versions.clone()));
        for (key, value) in &stored.doc {
            if key != "versions" {
                full.insert(key.clone(), value.clone());
            }
        }
        full.insert("_rev".into(), Value::String(stored.rev_string()));
        let mut abbreviated = Map::new();
        let mut versions_abbreviated = Map::new();
        for (version, manifest) in &versions {
            versions_abbreviated.insert(version.clone(), abbreviate(manifest));
        }
        abbreviated.insert("versions".into(), Value::Object(versions_abbreviated));
        abbreviated.insert("name".into(), Value::String(stored.name().to_owned()));
        let modified = stored
            .doc
            .get("time")
            .and_then(|t| t.get("modified"))
            .cloned()
            .unwrap_or(Value::Null);
        abbreviated.insert("modified".into(), modified);
        abbreviated.insert(
            "dist-tags".into(),
            stored
                .doc
                .get("dist-tags")
                .cloned()
                .unwrap_or_else(|| Value::Object(Map::new())),
        );
        if let Some(time) = stored.doc.get("time") {
            abbreviated.insert("time".into(), time.clone());
        }
        (
            serde_json::to_vec(&full).unwrap(),
            serde_json::to_vec(&abbreviated).unwrap(),
        )
    }

    fn abbreviate(manifest: &Value) -> Value {
        let mut out = Map::new();
        if let Value::Object(fields) = manifest {
            for &field in ABBREVIATED_VERSION_FIELDS {
                if let Some(value) = fields.get(field) {
                    out.insert(field.to_owned(), value.clone());
                }
            }
        }
        Value::Object(out)
    }

    /// `render` writes the bytes the copy-and-serialize reference writes, for ordinary and
    /// odd documents: `_rev` already present, absolute and relative tarballs, manifests that
    /// are not objects, `dist` that is not an object, a `tarball` key outside `dist`,
    /// missing `time`, `dist-tags` or `versions`, and strings that need escaping.
    #[test]
    fn render_matches_the_reference() {
        let mut docs = vec![sample().doc];
        let Value::Object(odd) = json!({
            "name": "o\"dd\u{1}", "_rev": "stale", "description": "é\n",
            "versions": {
                "1.0.0": {"name": "o", "bin": {"tarball": "x"}, "dist": {"tarball": "o/-/o-1.0.0.tgz"}},
                "2.0.0": {"dist": {"tarball": "https://elsewhere/o-2.0.0.tgz", "shasum": "s"}},
                "3.0.0": "not an object",
                "4.0.0": {"dist": "not an object", "version": "4.0.0", "deprecated": "no"},
                "5.0.0": {"dist": {"tarball": 7}}
            },
            "time": "not an object"
        }) else {
            unreachable!()
        };
        docs.push(odd);
        let Value::Object(bare) = json!({"name": "bare", "versions": []}) else {
            unreachable!()
        };
        docs.push(bare);
        docs.push(Map::new());
        for doc in docs {
            let stored = StoredPackage {
                rev: 9,
                doc,
                tarballs: BTreeMap::new(),
            };
            for base in ["http://127.0.0.1:4873", "https://r.example/pre\"fix"] {
                let ours = stored.render(base);
                let (full, abbreviated) = render_reference(&stored, base);
                for (doc, cut) in [
                    (&ours.full, ours.full_cut),
                    (&ours.abbreviated, ours.abbreviated_cut),
                ] {
                    assert!(doc.starts_with(b"{\"versions\":{"));
                    assert_eq!(doc[cut], b'}', "the cut is where `versions` closes");
                }
                assert_eq!(
                    String::from_utf8(ours.full).unwrap(),
                    String::from_utf8(full).unwrap()
                );
                assert_eq!(
                    String::from_utf8(ours.abbreviated).unwrap(),
                    String::from_utf8(abbreviated).unwrap()
                );
            }
        }
    }

    /// Appending versions changes nothing before the cut: the old rendering up to its cut,
    /// then `render_appended`'s `mid` and `tail`, is the new rendering byte for byte, for
    /// every split of the versions and whatever the rest of the old document said.
    #[test]
    fn appended_parts_extend_the_old_rendering() {
        let mut stored = sample();
        let Value::Object(more) = json!({
            "1.0.1": {"name": "a", "version": "1.0.1", "dist": {"tarball": "a/-/a-1.0.1.tgz"}},
            "2.0.0-rc.1": "odd",
            "2.0.0": {"name": "a", "version": "2.0.0", "description": "\u{2028}\"",
                "dist": {"tarball": "https://cdn/a-2.0.0.tgz"}}
        }) else {
            unreachable!()
        };
        let Some(Value::Object(versions)) = stored.doc.get_mut("versions") else {
            unreachable!()
        };
        versions.extend(more);
        stored.doc.insert("readme".into(), json!("new readme"));
        stored.rev = 11;
        let base = "http://127.0.0.1:4873";
        let new = stored.render(base);
        let count = stored.versions().unwrap().len();
        for from in 1..count {
            let mut old = sample();
            let kept: Map<String, Value> = stored
                .versions()
                .unwrap()
                .iter()
                .take(from)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            old.doc.insert("versions".into(), Value::Object(kept));
            old.doc
                .insert("dist-tags".into(), json!({"latest": "0.0.1"}));
            let old = old.render(base);
            let chains = [old.full_entries.chain, old.abbreviated_entries.chain];
            let appended = stored.render_appended(base, from, chains, true).unwrap();
            let without = stored.render_appended(base, from, chains, false).unwrap();
            assert!(without.full.window.is_empty() && without.abbreviated.window.is_empty());
            assert_eq!(without.full.mid, appended.full.mid);
            assert_eq!(without.abbreviated.tail, appended.abbreviated.tail);
            for (old_doc, old_cut, old_entries, part, new_doc, new_cut, new_entries) in [
                (
                    &old.full,
                    old.full_cut,
                    old.full_entries,
                    &appended.full,
                    &new.full,
                    new.full_cut,
                    new.full_entries,
                ),
                (
                    &old.abbreviated,
                    old.abbreviated_cut,
                    old.abbreviated_entries,
                    &appended.abbreviated,
                    &new.abbreviated,
                    new.abbreviated_cut,
                    new.abbreviated_entries,
                ),
            ] {
                // The window is the old document's last entry; the chain continued over the
                // new entries is the fresh rendering's, and so is the last entry.
                assert_eq!(part.window, old_doc[old_entries.last..old_cut]);
                assert_eq!(part.entries.chain, new_entries.chain, "from {from}");
                assert_eq!(
                    part.mid[part.entries.last..],
                    new_doc[new_entries.last..new_cut]
                );
                let mut joined = old_doc[..old_cut].to_vec();
                joined.extend_from_slice(&part.mid);
                assert_eq!(joined.len(), new_cut, "from {from}");
                joined.extend_from_slice(&part.tail);
                assert_eq!(
                    String::from_utf8(joined).unwrap(),
                    String::from_utf8(new_doc.clone()).unwrap(),
                    "from {from}"
                );
            }
        }
        assert!(stored.render_appended(base, 0, [0; 2], true).is_none());
        assert!(stored.render_appended(base, count, [0; 2], true).is_none());
    }

    #[test]
    fn render_makes_absolute_urls_and_abbreviates() {
        let rendered = sample().render("http://127.0.0.1:4873");
        let full: Value = serde_json::from_slice(&rendered.full).unwrap();
        assert_eq!(
            full["versions"]["1.0.0"]["dist"]["tarball"],
            "http://127.0.0.1:4873/a/-/a-1.0.0.tgz"
        );
        assert!(full["_rev"].as_str().unwrap().starts_with("3-"));
        let abbreviated: Value = serde_json::from_slice(&rendered.abbreviated).unwrap();
        assert_eq!(abbreviated["modified"], "2026-01-01T00:00:00.000Z");
        assert_eq!(abbreviated["time"]["1.0.0"], "2026-01-01T00:00:00.000Z");
        assert_eq!(abbreviated["versions"]["1.0.0"]["dependencies"]["b"], "^1");
        assert!(abbreviated["versions"]["1.0.0"].get("scripts").is_none());
        assert!(abbreviated["versions"]["1.0.0"].get("readme").is_none());
    }

    /// The skimming decode reads what the full decode reads, for records that fit its shape
    /// and for those that do not (which it decodes in full).
    #[test]
    fn publish_facts_agree_with_the_full_decode() {
        let mut stored = sample();
        stored.doc.insert(
            "maintainers".into(),
            json!([{"name": "alice", "email": "a@x"}, {"name": "b\"ob"}, "stray", {"email": "c"}]),
        );
        stored.tarballs.insert(
            "1.0.0".into(),
            TarballRef {
                file: "a-1.0.0.tgz".into(),
                blob: "ab".repeat(32),
                size: 10,
                row: None,
            },
        );
        stored.doc["time"]["0.9.0"] = json!("2025-01-01T00:00:00.000Z");
        let facts = PublishFacts::decode(&stored.encode()).unwrap();
        assert_eq!(facts, PublishFacts::of(&stored));
        assert!(facts.is_maintainer("alice") && facts.is_maintainer("b\"ob"));
        assert!(!facts.is_maintainer("stray") && !facts.is_maintainer("c"));
        assert!(facts.has_version("1.0.0") && !facts.has_version("0.9.0"));
        assert!(facts.was_published("0.9.0") && facts.was_published("1.0.0"));
        assert_eq!(facts.blob("1.0.0"), Some("ab".repeat(32).as_str()));
        assert_eq!(facts.blob("0.9.0"), None);

        // Shapes the skim does not read: still the same facts, through the full decode.
        for (field, value) in [
            ("versions", json!(["1.0.0"])),
            ("time", json!("soon")),
            ("maintainers", json!({"name": "alice"})),
        ] {
            let mut odd = stored.clone();
            odd.doc.insert(field.into(), value);
            let facts = PublishFacts::decode(&odd.encode()).unwrap();
            assert_eq!(facts, PublishFacts::of(&odd), "{field}");
        }
        assert!(PublishFacts::decode(b"{\"doc\":").is_err());
    }

    #[test]
    fn encode_decode_round_trip() {
        let stored = sample();
        assert_eq!(StoredPackage::decode(&stored.encode()).unwrap(), stored);
    }

    /// Big records are stored as zstd frames, small ones as JSON; plain JSON records (also
    /// big ones, from earlier builds) decode through every decoder; damaged frames are
    /// errors, not panics or wrong data.
    #[test]
    fn records_are_compressed_and_plain_json_still_reads() {
        let small = sample();
        assert_eq!(small.encode(), serde_json::to_vec(&small).unwrap());
        let mut stored = sample();
        let one = stored.doc["versions"]["1.0.0"].clone();
        for n in 1..200 {
            let mut manifest = one.clone();
            manifest["version"] = json!(format!("1.0.{n}"));
            stored.doc["versions"][format!("1.0.{n}")] = manifest;
        }
        let sealed = stored.encode();
        let json = serde_json::to_vec(&stored).unwrap();
        assert!(json.len() >= RECORD_ZSTD_MIN_BYTES);
        assert!(sealed.starts_with(&ZSTD_MAGIC));
        assert!(
            sealed.len() < json.len() / 2,
            "{} of {}",
            sealed.len(),
            json.len()
        );
        for bytes in [&sealed, &json] {
            assert_eq!(StoredPackage::decode(bytes).unwrap(), stored);
            let facts = PublishFacts::decode(bytes).unwrap();
            assert_eq!(facts, PublishFacts::of(&stored));
            let (_, kept) =
                StoredPackage::decode_for_append(bytes, &AppendWants::default()).unwrap();
            assert_eq!(
                kept.encode_with(&stored).unwrap(),
                (sealed.clone(), Vec::new())
            );
        }
        for cut in [5, sealed.len() / 2, sealed.len() - 1] {
            assert!(
                StoredPackage::decode(&sealed[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut flipped = sealed.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x40;
        assert!(StoredPackage::decode(&flipped).is_err());
        // A frame header that claims more than any record may hold.
        let mut huge = ZSTD_MAGIC.to_vec();
        huge.extend_from_slice(&[0xc0, 0, 0, 0, 0, 0x40, 0, 0, 0]);
        assert!(StoredPackage::decode(&huge).is_err());
    }
}
