//! The served records: everything a read of one package needs, pre-rendered on write so that
//! `GET /NAME`, the abbreviated packument and tarball lookups never parse or render.
//!
//! A package has three served values, each in its own redb table (`shard/tables.rs`), so that
//! a read copies only what it answers with: a cold abbreviated GET reads the ~0.5-2 KB gzip
//! abbreviated document, not the full one, and the pages a workload touches stay in redb's
//! cache. Only the gzip form of each document is stored: every client we serve (npm, pnpm,
//! yarn, bun) accepts gzip, and a request that does not gets the stored form inflated
//! (`identity_doc`), which costs microseconds next to the page writes and the fsync a second
//! stored copy cost every publish (ARCHITECTURE.md, "What a publish writes").
//! Layouts (little-endian):
//!
//! The index (`served` table), what a tarball GET needs:
//!   0       format u8 (= 10)
//!   1..9    rev u64
//!   then    base_url: u32 length + bytes
//!   then    tarball count u32; each: file (u16 length + bytes), blob [u8; 32], size u64,
//!           inline row u64 (0: none); in the order of the package's versions (publish
//!           order), so that a publish appends its entries to the old index
//!           (`encode_appended`) and gets what a fresh encoding gives
//!
//! The gzip form of the full and of the abbreviated document (`doc_full_gz`, `doc_abbr_gz`):
//!   0       format u8 (= 10)
//!   1..9    rev u64
//!   9       etag length u8, then the etag (quoted, ending in `-gz"`)
//!   then    the cut (`Cut`): body u32, gzip u32, crc u32, chain u128, window u64
//!   then    segments u32, closed u32: how many segments hold the member's first `closed`
//!           bytes (`doc_full_gz_segments`, `doc_abbr_gz_segments`: (name, n) -> bytes)
//!   then    the rest of the gzip member, to the end of the value
//!
//! The cut is where a publish appends: documents start with `versions`, and a publish only
//! appends versions (`packument::Rendered`). The gzip form is deflated with a sync point at
//! the cut, so appending re-uses every compressed byte before it and deflates only the new
//! versions and what follows them (`encode_appended`), instead of the whole document. The
//! cut carries what an append needs of the bytes before it, so that it reads none of them:
//! their CRC-32 (the gzip trailer's continues from it), the hash chain of their version
//! entries (the validator is derived from it and the tail) and a hash of the last entry
//! (the compressor's dictionary, rendered again and checked against it).
//!
//! Bytes before a cut never change while the package only grows, so an append moves them
//! out of the value once there are `SEGMENT_BYTES` of them past the last segment: they
//! become the next segment, written once, and the value keeps only what follows (served
//! format 9). What a publish rewrites is then bounded (the open part and the tail), not the
//! whole document. A document encoded afresh (a first publish, an unpublish, a re-render)
//! has no segments, so packages that were never appended to read one value as before; a
//! reader of a document with segments reads them in the same transaction and assembles
//! the whole value (`assemble_doc`) once per cache fill.
//!
//! Every value carries the package's revision, so a reader that combines values read at
//! different times can tell whether they belong together. Decoding checks every length
//! against the buffer: a corrupt value is an error, not a panic.

use bytes::Bytes;

use crate::blob::{BlobId, BLOB_ID_BYTES};
use crate::packument::{chain_entry, AppendedDoc, Entries, StoredPackage, TarballRef};

/// The layout version of every served value. A shard whose `meta` records another version
/// (or none) re-renders all of them when opened (`ShardStore::open`).
/// 8: each tarball entry of the index ends with its inline row (0: none).
/// 9: documents keep the compressed bytes before their cut in segments (module docs).
/// 10: the index lists tarballs in version (publish) order, not sorted by version.
pub const FORMAT: u8 = 10;
/// An append closes a segment once the compressed bytes before its new cut, past the last
/// segment, reach this many. Each segment is one insert at a random place of its table (one
/// more page to write at the commit), so fewer, larger segments measured better than
/// smaller values: in the 64-publisher storm, 4 KiB gave p99 18.3-20.8 ms (median 19.2)
/// against 17.7-22.4 (median 20.2) for 2 KiB (perf/RESULTS.md, session 16). The value a
/// publish rewrites stays under this much plus the tail.
pub const SEGMENT_BYTES: usize = 4 * 1024;
/// Deflate levels (flate2 on its zlib-rs backend) for pre-compressed documents, by the
/// identity document's size. The gzip form is paid once per write and served many times, but
/// most writes are publishes of small packages. zlib-rs level 1 (deflate_quick: static
/// Huffman codes) made `encode_served` of a one-version package 35% cheaper than
/// miniz_oxide's level 1 did, for documents ~19% bigger; its level 2 is 5% smaller than
/// miniz_oxide's level 1 but 20% dearer. Big documents, read often, keep level 6
/// (ARCHITECTURE.md).
const GZIP_LEVEL_SMALL: u32 = 1;
const GZIP_LEVEL_LARGE: u32 = 6;
/// Documents up to this size use `GZIP_LEVEL_SMALL`.
const GZIP_SMALL_DOC_BYTES_MAX: usize = 16 * 1024;
/// The level of what an append deflates (the new versions and the tail), whatever the
/// document's size: its cost is then the same for the hundredth version as for the second.
/// Level 6 on a big document's tail (the readme, replaced by most publishes) was most of
/// an append's CPU (ARCHITECTURE.md, "Documents in segments"); a re-render deflates the
/// whole document at `gzip_level` again.
const GZIP_LEVEL_APPEND: u32 = GZIP_LEVEL_SMALL;

/// One representation of a packument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DocKind {
    Full,
    FullGzip,
    Abbreviated,
    AbbreviatedGzip,
}

impl DocKind {
    /// Every kind, in table order.
    pub const ALL: [DocKind; 4] = [
        DocKind::Full,
        DocKind::FullGzip,
        DocKind::Abbreviated,
        DocKind::AbbreviatedGzip,
    ];

    /// The representation a request asks for.
    #[must_use]
    pub fn of(abbreviated: bool, gzip: bool) -> DocKind {
        match (abbreviated, gzip) {
            (false, false) => DocKind::Full,
            (false, true) => DocKind::FullGzip,
            (true, false) => DocKind::Abbreviated,
            (true, true) => DocKind::AbbreviatedGzip,
        }
    }

    /// Position in `ALL`.
    #[must_use]
    pub fn index(self) -> usize {
        self as usize
    }

    /// Which stored document serves this kind: its position in `STORED` (and in
    /// `EncodedServed::docs` and the `doc_*` tables).
    #[must_use]
    pub fn stored_index(self) -> usize {
        match self {
            DocKind::Full | DocKind::FullGzip => 0,
            DocKind::Abbreviated | DocKind::AbbreviatedGzip => 1,
        }
    }

    /// The stored kinds: the gzip form of each document (module docs).
    pub const STORED: [DocKind; 2] = [DocKind::FullGzip, DocKind::AbbreviatedGzip];

    /// True for the gzip forms.
    #[must_use]
    pub fn is_gzip(self) -> bool {
        matches!(self, DocKind::FullGzip | DocKind::AbbreviatedGzip)
    }

    /// A short name for reports.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            DocKind::Full => "full",
            DocKind::FullGzip => "full gzip",
            DocKind::Abbreviated => "abbreviated",
            DocKind::AbbreviatedGzip => "abbreviated gzip",
        }
    }
}

/// Where a document grows. `body` is the offset in the identity body of the `}` that closes
/// `versions`, `crc` the CRC-32 of the identity body before it, `chain` the hash chain of the
/// version entries before it (`packument::chain_entry`) and `window` the xxh3-64 of the
/// dictionary an append deflates with (`window_of`: the end of the last entry). All are the
/// same in the identity and the gzip form. In the gzip form, `gzip` is the offset in the
/// gzip body just after the sync point that ends the deflate data of `identity[..body]` (0
/// in the identity form).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    pub body: u32,
    pub gzip: u32,
    pub crc: u32,
    pub chain: u128,
    pub window: u64,
}

/// One decoded document: its body and validator, at revision `rev`.
#[derive(Clone, Debug)]
pub struct ServedDoc {
    pub rev: u64,
    /// A quoted strong validator, e.g. `"a1b2..."`; the gzip form is `"a1b2...-gz"`.
    pub etag: Bytes,
    pub cut: Cut,
    pub body: Bytes,
}

impl ServedDoc {
    /// Bytes held (for cache accounting).
    #[must_use]
    pub fn weight_bytes(&self) -> usize {
        self.body.len() + self.etag.len() + 64
    }

    /// Whether an `If-None-Match` candidate (already stripped of `W/`) names this document in
    /// either encoding: the identity and gzip forms of one revision are the same resource.
    #[must_use]
    pub fn etag_matches(&self, candidate: &[u8]) -> bool {
        etag_matches(&self.etag, candidate)
    }
}

/// Whether an `If-None-Match` candidate (already stripped of `W/`) names the document whose
/// validator is `etag`, in either encoding (see `ServedDoc::etag_matches`).
#[must_use]
pub fn etag_matches(etag: &[u8], candidate: &[u8]) -> bool {
    let token = etag_token(etag);
    let Some(inner) = candidate
        .strip_prefix(b"\"")
        .and_then(|c| c.strip_suffix(b"\""))
    else {
        return false;
    };
    inner == token || inner.strip_suffix(b"-gz") == Some(token)
}

/// The validator's opaque part: no quotes, no `-gz`.
fn etag_token(etag: &[u8]) -> &[u8] {
    let inner = etag
        .strip_prefix(b"\"")
        .and_then(|e| e.strip_suffix(b"\""))
        .unwrap_or(etag);
    inner.strip_suffix(b"-gz").unwrap_or(inner)
}

/// A tarball of this package: file name -> blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedTarball {
    pub file: Box<str>,
    pub blob: BlobId,
    pub size: u64,
    /// Its row of the shard's `inline_rows` (`TarballRef::row`).
    pub row: Option<u64>,
}

/// The decoded index: which tarballs the package serves.
#[derive(Clone, Debug)]
pub struct ServedIndex {
    pub rev: u64,
    pub base_url: Box<str>,
    pub tarballs: Vec<ServedTarball>,
}

impl ServedIndex {
    /// Looks a tarball up by file name.
    #[must_use]
    pub fn tarball(&self, file: &str) -> Option<&ServedTarball> {
        self.tarballs.iter().find(|t| &*t.file == file)
    }

    /// Bytes held (for cache accounting).
    #[must_use]
    pub fn weight_bytes(&self) -> usize {
        self.base_url.len()
            + self
                .tarballs
                .iter()
                .map(|t| t.file.len() + 64)
                .sum::<usize>()
            + 64
    }
}

/// Why a served value could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("served record is corrupt: {detail}")]
pub struct ServedCorrupt {
    pub detail: &'static str,
}

/// The encoded values of one package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedServed {
    pub index: Vec<u8>,
    /// The gzip documents, indexed by `DocKind::stored_index`.
    pub docs: [EncodedDoc; 2],
}

/// One encoded document: its value and what changes among its segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedDoc {
    /// The document value (module docs).
    pub value: Vec<u8>,
    /// The segment this encoding closed, by number, to be stored with the value.
    pub segment: Option<(u32, Vec<u8>)>,
    /// Encoded from scratch: the value has no segments, and every segment stored for the
    /// package's earlier documents is to be dropped.
    pub fresh: bool,
    /// The end of the document's last version entry, as rendered: the dictionary the next
    /// append deflates with. A writer that keeps it (with the package's revision) appends
    /// without reading or rendering that version's manifest (`encode_appended`).
    pub window: Vec<u8>,
}

impl EncodedDoc {
    /// The whole value of a document encoded from scratch (it has no segments); None for
    /// an appended one, whose earlier segments are in the store.
    #[must_use]
    pub fn fresh_value(&self) -> Option<&[u8]> {
        (self.fresh && self.segment.is_none()).then_some(&self.value[..])
    }
}

/// Renders `stored` for `base_url` and encodes its served values.
#[must_use]
pub fn encode_served(stored: &StoredPackage, base_url: &str) -> EncodedServed {
    let rendered = stored.render(base_url);
    let fresh = |body: &[u8], cut: usize, entries: Entries| EncodedDoc {
        value: encode_gzip_doc(stored.rev, body, cut, entries),
        segment: None,
        fresh: true,
        window: window_of(&body[..cut], entries.last).to_vec(),
    };
    EncodedServed {
        index: encode_index(stored, base_url),
        docs: [
            fresh(&rendered.full, rendered.full_cut, rendered.full_entries),
            fresh(
                &rendered.abbreviated,
                rendered.abbreviated_cut,
                rendered.abbreviated_entries,
            ),
        ],
    }
}

/// Encodes the served values of `stored` from `old`, its stored documents (indexed by
/// `DocKind::stored_index`) from when it had its first `from` versions, all still in place
/// and unchanged (a publish only appends), and `old_index` its index then. Renders only the
/// new versions, what follows them and, unless `windows` has them (each document's
/// `EncodedDoc::window` from that time), the entries of the version before them; deflates
/// only the new parts: the compressed bytes before each cut are copied and nothing of the
/// old document is inflated (its cut has the CRC-32, the entry chain and the dictionary's
/// hash, which a window given must match). `old` are the document values only: an append
/// needs none of the segments before them, and closes at most one more (`SEGMENT_BYTES`).
/// The result, assembled with the stored segments, decodes to what `encode_served` gives,
/// though the gzip bytes differ.
///
/// Bytes before a cut that are damaged are copied as they are: `fsck` finds them (by
/// inflating every stored document), and an unpublish or a repair renders the package anew.
///
/// None when the old documents do not fit (another layout, a cut out of bounds, a last
/// entry that renders otherwise than its cut says, as when its manifest is a placeholder)
/// or `from` leaves nothing to append: the caller encodes from scratch.
#[must_use]
pub fn encode_appended(
    stored: &StoredPackage,
    base_url: &str,
    from: usize,
    old_index: &[u8],
    old: [&[u8]; 2],
    windows: Option<[&[u8]; 2]>,
) -> Option<EncodedServed> {
    let index = index_appended(old_index, stored, base_url, from)?;
    let old = [split_doc(old[0]).ok()?, split_doc(old[1]).ok()?];
    let chains = [old[0].cut.chain, old[1].cut.chain];
    let appended = stored.render_appended(base_url, from, chains, windows.is_none())?;
    let one = |gzip: &SplitDoc<'_>, part: &AppendedDoc, kept: Option<&[u8]>| {
        let window = kept.unwrap_or_else(|| window_of(&part.window, 0));
        if xxhash_rust::xxh3::xxh3_64(window) != gzip.cut.window {
            return None;
        }
        let cut = usize::try_from(gzip.cut.body).ok()?;
        let len = cut + part.mid.len() + part.tail.len();
        let (open, new_cut) = gzip_appended(window, gzip, part, len)?;
        let etag = gzip_etag(&etag(part.entries.chain, &part.tail));
        // The member's bytes past the last segment and before the new cut: a segment of their
        // own once there are enough of them.
        let sealed = usize::try_from(new_cut.gzip - gzip.closed).ok()?;
        let close = sealed >= SEGMENT_BYTES;
        let head = DocHead {
            rev: stored.rev,
            etag: &etag,
            cut: new_cut,
            segments: gzip.segments.checked_add(u32::from(close))?,
            closed: if close { new_cut.gzip } else { gzip.closed },
        };
        Some(EncodedDoc {
            value: head.value(&open[if close { sealed } else { 0 }..]),
            segment: close.then(|| (gzip.segments, open[..sealed].to_vec())),
            fresh: false,
            window: window_of(&part.mid, part.entries.last).to_vec(),
        })
    };
    let full = one(&old[0], &appended.full, windows.map(|w| w[0]))?;
    let abbreviated = one(&old[1], &appended.abbreviated, windows.map(|w| w[1]))?;
    Some(EncodedServed {
        index,
        docs: [full, abbreviated],
    })
}

/// The dictionary an append after `entries[last..]` deflates with: the end of the last
/// entry before the cut, at most `DICTIONARY_BYTES`.
fn window_of(entries: &[u8], last: usize) -> &[u8] {
    let last_entry = entries.get(last..).unwrap_or_default();
    &last_entry[last_entry.len().saturating_sub(DICTIONARY_BYTES)..]
}

/// The index value of `stored` for `base_url`: the tarballs of its versions in their order,
/// then any tarball whose version is not among them (none, when the record is sound).
fn encode_index(stored: &StoredPackage, base_url: &str) -> Vec<u8> {
    let mut index = Vec::with_capacity(64 + base_url.len() + stored.tarballs.len() * 80);
    let versions = stored.versions();
    let in_order = versions
        .into_iter()
        .flat_map(|v| v.keys())
        .filter_map(|version| stored.tarballs.get(version));
    let others = stored
        .tarballs
        .iter()
        .filter(|(version, _)| !versions.is_some_and(|v| v.contains_key(*version)))
        .map(|(_, tarball)| tarball);
    let tarballs: Vec<&TarballRef> = in_order.chain(others).collect();
    write_index_head(&mut index, stored.rev, base_url, tarballs.len());
    for tarball in tarballs {
        write_index_entry(&mut index, tarball);
    }
    index
}

/// The index of `stored` from `old`, its index from when it had its first `from` versions
/// (each with its tarball): the old entries copied as they are, then those of the versions
/// after them, as `encode_index` orders them, and the new revision. None when `old` is not
/// such an index for `base_url`: the caller encodes from scratch.
fn index_appended(
    old: &[u8],
    stored: &StoredPackage,
    base_url: &str,
    from: usize,
) -> Option<Vec<u8>> {
    let mut r = Reader { buf: old, at: 0 };
    if r.u8().ok()? != FORMAT {
        return None;
    }
    r.u64().ok()?;
    if r.u32_bytes().ok()? != base_url.as_bytes() || r.u32().ok()? as usize != from {
        return None;
    }
    let entries = &old[r.at..];
    let added: Vec<&TarballRef> = stored
        .versions()?
        .keys()
        .skip(from)
        .filter_map(|version| stored.tarballs.get(version))
        .collect();
    let mut index = Vec::with_capacity(old.len() + added.len() * 80);
    write_index_head(&mut index, stored.rev, base_url, from + added.len());
    index.extend_from_slice(entries);
    for tarball in added {
        write_index_entry(&mut index, tarball);
    }
    Some(index)
}

/// An index's fields before its entries.
fn write_index_head(out: &mut Vec<u8>, rev: u64, base_url: &str, count: usize) {
    out.push(FORMAT);
    out.extend_from_slice(&rev.to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(base_url.len())
            .expect("base URLs are short")
            .to_le_bytes(),
    );
    out.extend_from_slice(base_url.as_bytes());
    let count = u32::try_from(count).expect("versions are bounded");
    out.extend_from_slice(&count.to_le_bytes());
}

/// One tarball's entry of an index.
fn write_index_entry(out: &mut Vec<u8>, tarball: &TarballRef) {
    let file = tarball.file.as_bytes();
    out.extend_from_slice(
        &u16::try_from(file.len())
            .expect("file names are short")
            .to_le_bytes(),
    );
    out.extend_from_slice(file);
    let blob = tarball.blob_id().map_or([0; BLOB_ID_BYTES], |b| b.0);
    out.extend_from_slice(&blob);
    out.extend_from_slice(&tarball.size.to_le_bytes());
    out.extend_from_slice(&tarball.row.unwrap_or(0).to_le_bytes());
}

/// The stored (gzip) value of one rendered document whose cut is at `cut`, with `entries`
/// from its rendering.
fn encode_gzip_doc(rev: u64, body: &[u8], cut: usize, entries: Entries) -> Vec<u8> {
    let (zipped, gzip_cut) = gzip_with_cut(body, cut);
    let cut_at = Cut {
        body: u32::try_from(cut).expect("documents are bounded"),
        gzip: u32::try_from(gzip_cut).expect("documents are bounded"),
        crc: zlib_rs::crc32::crc32(0, &body[..cut]),
        chain: entries.chain,
        window: xxhash_rust::xxh3::xxh3_64(window_of(&body[..cut], entries.last)),
    };
    let etag = gzip_etag(&etag(entries.chain, &body[cut..]));
    let head = DocHead {
        rev,
        etag: &etag,
        cut: cut_at,
        segments: 0,
        closed: 0,
    };
    head.value(&zipped)
}

/// A document value's header fields.
struct DocHead<'a> {
    rev: u64,
    etag: &'a str,
    cut: Cut,
    segments: u32,
    closed: u32,
}

impl DocHead<'_> {
    /// The value: this header, then `rest`, the member's bytes after the first `closed`.
    fn value(&self, rest: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(rest.len() + 68 + self.etag.len());
        self.write(&mut out);
        out.extend_from_slice(rest);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.push(FORMAT);
        out.extend_from_slice(&self.rev.to_le_bytes());
        out.push(u8::try_from(self.etag.len()).expect("etags are short"));
        out.extend_from_slice(self.etag.as_bytes());
        out.extend_from_slice(&self.cut.body.to_le_bytes());
        out.extend_from_slice(&self.cut.gzip.to_le_bytes());
        out.extend_from_slice(&self.cut.crc.to_le_bytes());
        out.extend_from_slice(&self.cut.chain.to_le_bytes());
        out.extend_from_slice(&self.cut.window.to_le_bytes());
        out.extend_from_slice(&self.segments.to_le_bytes());
        out.extend_from_slice(&self.closed.to_le_bytes());
    }
}

/// How many segments a document value says hold the start of its member (0: the value
/// holds all of it and decodes on its own).
///
/// # Errors
/// `ServedCorrupt` when the header does not fit.
pub fn doc_segments(value: &[u8]) -> Result<u32, ServedCorrupt> {
    split_doc(value).map(|doc| doc.segments)
}

/// The whole value of a document stored as `value` and `segments` (its segments by number,
/// in order): the same header with no segments, then the member assembled, which
/// `decode_doc` reads.
///
/// # Errors
/// `ServedCorrupt` when the value does not decode, a segment is missing or out of order, or
/// the segments' bytes are not the `closed` bytes the value names.
pub fn assemble_doc(value: &[u8], segments: &[(u32, &[u8])]) -> Result<Vec<u8>, ServedCorrupt> {
    let doc = split_doc(value)?;
    if segments.len() != doc.segments as usize
        || segments
            .iter()
            .enumerate()
            .any(|(i, (n, _))| *n as usize != i)
    {
        return Err(ServedCorrupt {
            detail: "a segment of the document is missing",
        });
    }
    let closed: usize = segments.iter().map(|(_, bytes)| bytes.len()).sum();
    if closed != doc.closed as usize {
        return Err(ServedCorrupt {
            detail: "the document's segments do not hold the bytes it names",
        });
    }
    let etag = std::str::from_utf8(doc.etag).map_err(|_| ServedCorrupt {
        detail: "etag is not UTF-8",
    })?;
    let head = DocHead {
        rev: doc.rev,
        etag,
        cut: doc.cut,
        segments: 0,
        closed: 0,
    };
    let mut out = Vec::with_capacity(value.len() + closed + 8);
    head.write(&mut out);
    for (_, bytes) in segments {
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(doc.body);
    Ok(out)
}

/// Decodes an index value.
///
/// # Errors
/// `ServedCorrupt` when any length or field does not fit.
pub fn decode_index(buf: &[u8]) -> Result<ServedIndex, ServedCorrupt> {
    let mut r = Reader { buf, at: 0 };
    if r.u8()? != FORMAT {
        return Err(ServedCorrupt {
            detail: "unknown format",
        });
    }
    let rev = r.u64()?;
    let base_url = std::str::from_utf8(r.u32_bytes()?)
        .map_err(|_| ServedCorrupt {
            detail: "base url is not UTF-8",
        })?
        .into();
    let count = r.u32()? as usize;
    let mut tarballs = Vec::with_capacity(count.min(crate::limits::VERSIONS_PER_PACKAGE_MAX));
    for _ in 0..count {
        let len = usize::from(r.u16()?);
        let file = std::str::from_utf8(r.take(len)?)
            .map_err(|_| ServedCorrupt {
                detail: "file name is not UTF-8",
            })?
            .into();
        let mut blob = [0u8; BLOB_ID_BYTES];
        blob.copy_from_slice(r.take(BLOB_ID_BYTES)?);
        let size = r.u64()?;
        let row = Some(r.u64()?).filter(|row| *row != 0);
        tarballs.push(ServedTarball {
            file,
            blob: BlobId(blob),
            size,
            row,
        });
    }
    if r.at != buf.len() {
        return Err(ServedCorrupt {
            detail: "trailing bytes",
        });
    }
    Ok(ServedIndex {
        rev,
        base_url,
        tarballs,
    })
}

/// The revision of an index value of this layout, or None when it is not one.
#[must_use]
pub fn index_rev(buf: &[u8]) -> Option<u64> {
    let mut r = Reader { buf, at: 0 };
    (r.u8().ok()? == FORMAT).then(|| r.u64().ok())?
}

/// The revision of a document value, or None when it is not one.
#[must_use]
pub fn doc_rev(buf: &[u8]) -> Option<u64> {
    split_doc(buf).ok().map(|doc| doc.rev)
}

/// Decodes a whole document value (one without segments, or one `assemble_doc` made); the
/// returned `Bytes` share `buf`'s allocation.
///
/// # Errors
/// `ServedCorrupt` when the header does not fit, the etag is not a quoted validator, or the
/// value has segments.
pub fn decode_doc(buf: Bytes) -> Result<ServedDoc, ServedCorrupt> {
    let split = split_doc(&buf)?;
    if split.segments != 0 || split.closed != 0 {
        return Err(ServedCorrupt {
            detail: "the document's segments are not assembled",
        });
    }
    let etag_at = split.etag.as_ptr() as usize - buf.as_ptr() as usize;
    let body_at = buf.len() - split.body.len();
    Ok(ServedDoc {
        rev: split.rev,
        etag: buf.slice(etag_at..etag_at + split.etag.len()),
        cut: split.cut,
        body: buf.slice(body_at..),
    })
}

/// The identity form of a stored gzip document: its body inflated, the same validator
/// without `-gz`, the same cut.
///
/// # Errors
/// `ServedCorrupt` when the body does not inflate (a damaged member fails its CRC-32 or
/// length check) or the cut lies outside it.
pub fn identity_doc(gzip: &ServedDoc) -> Result<ServedDoc, ServedCorrupt> {
    let body = inflate_member(&gzip.body).map_err(|_| ServedCorrupt {
        detail: "the gzip document does not inflate",
    })?;
    if usize::try_from(gzip.cut.body).map_or(true, |cut| cut > body.len()) {
        return Err(ServedCorrupt {
            detail: "the cut lies outside the document",
        });
    }
    let token = etag_token(&gzip.etag);
    let mut etag = Vec::with_capacity(token.len() + 2);
    etag.push(b'"');
    etag.extend_from_slice(token);
    etag.push(b'"');
    Ok(ServedDoc {
        rev: gzip.rev,
        etag: Bytes::from(etag),
        cut: Cut {
            gzip: 0,
            ..gzip.cut
        },
        body: Bytes::from(body),
    })
}

/// Inflates one gzip member, checking its CRC-32 and length; reserves the length its
/// trailer names.
fn inflate_member(member: &[u8]) -> std::io::Result<Vec<u8>> {
    let named = member
        .len()
        .checked_sub(4)
        .and_then(|at| member.get(at..))
        .map_or(0, |isize| {
            u32::from_le_bytes(isize.try_into().expect("4 bytes")) as usize
        });
    // The trailer is only a hint: a damaged one must not make us reserve gigabytes.
    let reserve = named.min(member.len().saturating_mul(64));
    let mut out = Vec::with_capacity(reserve);
    std::io::Read::read_to_end(&mut flate2::bufread::GzDecoder::new(member), &mut out)?;
    Ok(out)
}

/// A document value's fields, borrowed.
struct SplitDoc<'a> {
    rev: u64,
    etag: &'a [u8],
    cut: Cut,
    segments: u32,
    /// Bytes of the member in the segments.
    closed: u32,
    /// The member's bytes after the first `closed`.
    body: &'a [u8],
}

fn split_doc(buf: &[u8]) -> Result<SplitDoc<'_>, ServedCorrupt> {
    let mut r = Reader { buf, at: 0 };
    if r.u8()? != FORMAT {
        return Err(ServedCorrupt {
            detail: "unknown format",
        });
    }
    let rev = r.u64()?;
    let etag_len = usize::from(r.u8()?);
    let etag = r.take(etag_len)?;
    if etag.len() < 2 || etag[0] != b'"' || etag[etag.len() - 1] != b'"' {
        return Err(ServedCorrupt {
            detail: "etag is not a quoted validator",
        });
    }
    let cut = Cut {
        body: r.u32()?,
        gzip: r.u32()?,
        crc: r.u32()?,
        chain: r.u128()?,
        window: r.u64()?,
    };
    let segments = r.u32()?;
    let closed = r.u32()?;
    if (segments == 0) != (closed == 0) {
        return Err(ServedCorrupt {
            detail: "segments and their bytes disagree",
        });
    }
    Ok(SplitDoc {
        rev,
        etag,
        cut,
        segments,
        closed,
        body: &buf[r.at..],
    })
}

/// The validator of the document whose version entries hash to `chain` and whose bytes
/// after them are `tail`: a function of the document's bytes alone, however many appends
/// wrote them.
fn etag(chain: u128, tail: &[u8]) -> String {
    format!("\"{:032x}\"", chain_entry(chain, tail))
}

fn gzip_etag(etag: &str) -> String {
    format!("{}-gz\"", &etag[..etag.len() - 1])
}

/// The gzip member header flate2's `GzEncoder` writes: no name, no mtime, OS "unknown", and
/// the extra-flags byte it derives from the level (4 for the fastest level, 0 for the
/// others below 9). The same input always gives the same bytes, because fsck compares a
/// stored document with a fresh rendering byte for byte.
fn gzip_header(level: u32) -> [u8; 10] {
    let xfl = if level >= 9 {
        2
    } else if level <= 1 {
        4
    } else {
        0
    };
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 0xff]
}

thread_local! {
    /// One raw-deflate compressor per level per thread, reset between documents. A fresh
    /// one allocates and zeroes ~300 KB of tables; in a publish storm that was 5-7% of
    /// server CPU.
    static DEFLATE_SMALL: std::cell::RefCell<flate2::Compress> = std::cell::RefCell::new(
        flate2::Compress::new(flate2::Compression::new(GZIP_LEVEL_SMALL), false),
    );
    static DEFLATE_LARGE: std::cell::RefCell<flate2::Compress> = std::cell::RefCell::new(
        flate2::Compress::new(flate2::Compression::new(GZIP_LEVEL_LARGE), false),
    );
}

fn gzip_level(len: usize) -> u32 {
    if len <= GZIP_SMALL_DOC_BYTES_MAX {
        GZIP_LEVEL_SMALL
    } else {
        GZIP_LEVEL_LARGE
    }
}

/// The compressor for `level`, reset, to `f`.
fn with_deflate<T>(level: u32, f: impl FnOnce(&mut flate2::Compress) -> T) -> T {
    let deflate = if level == GZIP_LEVEL_SMALL {
        &DEFLATE_SMALL
    } else {
        &DEFLATE_LARGE
    };
    deflate.with_borrow_mut(|deflate| {
        deflate.reset();
        f(deflate)
    })
}

/// One gzip member of `bytes` with a sync point after `bytes[..cut]`, and the offset in
/// the member where the deflate data after that sync point starts.
// Every document gets a gzip form: clients (and Verdaccio, which people compare us with)
// expect `Content-Encoding: gzip` whenever they accept it; the cost is paid once per write.
fn gzip_with_cut(bytes: &[u8], cut: usize) -> (Vec<u8>, usize) {
    let level = gzip_level(bytes.len());
    with_deflate(level, |deflate| {
        let mut out = Vec::with_capacity(bytes.len() / 4 + 64);
        out.extend_from_slice(&gzip_header(level));
        deflate_into(
            deflate,
            &bytes[..cut],
            &mut out,
            flate2::FlushCompress::Sync,
        );
        let gzip_cut = out.len();
        deflate_into(
            deflate,
            &bytes[cut..],
            &mut out,
            flate2::FlushCompress::Finish,
        );
        gzip_trailer(&mut out, zlib_rs::crc32::crc32(0, bytes), bytes.len());
        (out, gzip_cut)
    })
}

/// The gzip member of `prefix + part.mid + part.tail` (`len` bytes) from `old`, the stored
/// document of `prefix + old tail` with its cut after `prefix`, where `window` is the end of
/// `prefix`: the member up to that sync point, then `mid` deflated with `window` as its
/// dictionary (the decoder's window at that point ends with exactly those bytes), a new
/// sync point, and `tail`. Returns the member's bytes after `old.closed` (those before are
/// in segments and stay) and the new cut; None when the cut does not fit `old`.
fn gzip_appended(
    window: &[u8],
    old: &SplitDoc<'_>,
    part: &AppendedDoc,
    len: usize,
) -> Option<(Vec<u8>, Cut)> {
    let cut = old.cut;
    let closed = usize::try_from(old.closed).ok()?;
    let gzip_cut = usize::try_from(cut.gzip).ok()?;
    // The kept bytes end at a sync point: checked here when the value holds them, and when
    // a segment was closed at it otherwise.
    let kept = old.body.get(..gzip_cut.checked_sub(closed)?)?;
    let sound = if kept.is_empty() {
        closed >= GZIP_HEADER_BYTES + SYNC_MARKER.len()
    } else {
        gzip_cut >= GZIP_HEADER_BYTES + SYNC_MARKER.len() && kept.ends_with(SYNC_MARKER)
    };
    if !sound {
        return None;
    }
    let new_cut = Cut {
        body: cut.body.checked_add(u32::try_from(part.mid.len()).ok()?)?,
        gzip: 0,
        crc: zlib_rs::crc32::crc32(cut.crc, &part.mid),
        chain: part.entries.chain,
        window: xxhash_rust::xxh3::xxh3_64(window_of(&part.mid, part.entries.last)),
    };
    let out = with_deflate(GZIP_LEVEL_APPEND, |deflate| {
        if !window.is_empty() {
            deflate
                .set_dictionary(window)
                .expect("a reset raw deflate stream takes a dictionary");
        }
        let mut out = Vec::with_capacity(kept.len() + (part.mid.len() + part.tail.len()) / 3);
        out.extend_from_slice(kept);
        deflate_into(deflate, &part.mid, &mut out, flate2::FlushCompress::Sync);
        let gzip = closed + out.len();
        deflate_into(deflate, &part.tail, &mut out, flate2::FlushCompress::Finish);
        gzip_trailer(
            &mut out,
            zlib_rs::crc32::crc32(new_cut.crc, &part.tail),
            len,
        );
        (out, gzip)
    });
    let gzip = u32::try_from(out.1).ok()?;
    Some((out.0, Cut { gzip, ..new_cut }))
}

/// Whether a stored gzip document value says what `fresh` (the same document freshly
/// encoded) says: the same revision, validator and cut, a gzip body that inflates to
/// `identity` (the fresh identity body), and a cut that is a real sync point after
/// `identity[..cut.body]` (the deflate data before it ends with a sync flush's empty
/// stored block), so that the next append builds on sound bytes. The gzip bytes
/// themselves may differ: appends deflate pieces at different times (`encode_appended`).
#[must_use]
pub fn gzip_doc_agrees(stored: &ServedDoc, fresh: &ServedDoc, identity: &[u8]) -> bool {
    let cut_without_gzip = |cut: Cut| Cut { gzip: 0, ..cut };
    if stored.rev != fresh.rev
        || stored.etag != fresh.etag
        || cut_without_gzip(stored.cut) != cut_without_gzip(fresh.cut)
    {
        return false;
    }
    let mut whole = Vec::with_capacity(identity.len());
    let inflated = std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&stored.body[..]),
        &mut whole,
    );
    if inflated.is_err() || whole != identity {
        return false;
    }
    let (Ok(cut), Ok(gzip_cut)) = (
        usize::try_from(stored.cut.body),
        usize::try_from(stored.cut.gzip),
    ) else {
        return false;
    };
    let Some(deflated) = stored.body.get(GZIP_HEADER_BYTES..gzip_cut) else {
        return false;
    };
    inflate_to_sync(deflated, cut)
        .is_some_and(|prefix| prefix == identity[..cut.min(identity.len())])
}

thread_local! {
    /// One raw-inflate state per thread, reset between documents (a fresh one allocates
    /// its window every time).
    static INFLATE: std::cell::RefCell<flate2::Decompress> =
        std::cell::RefCell::new(flate2::Decompress::new(false));
}

/// Inflates `deflated`, raw deflate data that must end in a sync point (a sync flush's
/// empty stored block) without ending the stream, to exactly `len` bytes; None when it does
/// not (damaged data, another length, a stream that ends).
fn inflate_to_sync(deflated: &[u8], len: usize) -> Option<Vec<u8>> {
    // A sync point ends with an empty stored block: LEN 0, NLEN 0xffff.
    if !deflated.ends_with(SYNC_MARKER) {
        return None;
    }
    INFLATE.with_borrow_mut(|inflate| {
        inflate.reset(false);
        // Room for one byte more than expected, so that too long an output shows.
        let mut out = Vec::with_capacity(len + 1);
        loop {
            let consumed = usize::try_from(inflate.total_in()).ok()?;
            let rest = deflated.get(consumed..)?;
            let (in_before, out_before) = (inflate.total_in(), inflate.total_out());
            match inflate.decompress_vec(rest, &mut out, flate2::FlushDecompress::Sync) {
                Ok(flate2::Status::Ok | flate2::Status::BufError) => {}
                // The stream must not end at the sync point: the tail follows it.
                Ok(flate2::Status::StreamEnd) | Err(_) => return None,
            }
            if out.len() > len {
                return None;
            }
            if usize::try_from(inflate.total_in()).ok() == Some(deflated.len()) {
                break;
            }
            if inflate.total_in() == in_before && inflate.total_out() == out_before {
                return None;
            }
        }
        (out.len() == len).then_some(out)
    })
}

/// The last bytes of a sync flush: an empty stored block's LEN (0) and NLEN (0xffff).
const SYNC_MARKER: &[u8] = &[0, 0, 0xff, 0xff];
/// Bytes of a gzip member header as `gzip_header` writes it.
const GZIP_HEADER_BYTES: usize = 10;
/// How much of the last version entry before the cut an append hands the compressor as its
/// dictionary. Deflate could reach 32 KiB back, but loading a dictionary costs a hash insert
/// per byte (a 32 KiB one was 5% of a publish storm's CPU), and what a new version repeats
/// is mostly in the version just before it, the one entry an append renders again.
const DICTIONARY_BYTES: usize = 8 * 1024;

/// Deflates all of `input` into `out` and flushes as `flush` says: `Sync` ends on a byte
/// boundary with every input byte emitted (an empty stored block), `Finish` ends the stream.
fn deflate_into(
    deflate: &mut flate2::Compress,
    input: &[u8],
    out: &mut Vec<u8>,
    flush: flate2::FlushCompress,
) {
    let start = deflate.total_in();
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity() / 2 + 64);
        }
        let consumed = usize::try_from(deflate.total_in() - start).expect("input fits in memory");
        let status = deflate
            .compress_vec(&input[consumed..], out, flush)
            .expect("deflating into a Vec cannot fail");
        let done = usize::try_from(deflate.total_in() - start).expect("input fits in memory")
            == input.len();
        match flush {
            flate2::FlushCompress::Finish if status == flate2::Status::StreamEnd => break,
            flate2::FlushCompress::Finish => {}
            // The flush is complete once all input is in and the output had room to spare.
            _ if done && out.capacity() - out.len() > 0 => break,
            _ => {}
        }
    }
}

/// The CRC-32 and the length of the input modulo 2^32 (ISIZE, RFC 1952).
fn gzip_trailer(out: &mut Vec<u8>, crc: u32, len: usize) {
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ServedCorrupt> {
        let end = self.at.checked_add(n).ok_or(ServedCorrupt {
            detail: "length overflow",
        })?;
        let slice = self.buf.get(self.at..end).ok_or(ServedCorrupt {
            detail: "truncated",
        })?;
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, ServedCorrupt> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ServedCorrupt> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("took 2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, ServedCorrupt> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("took 4 bytes"),
        ))
    }
    fn u128(&mut self) -> Result<u128, ServedCorrupt> {
        Ok(u128::from_le_bytes(
            self.take(16)?.try_into().expect("took 16 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, ServedCorrupt> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("took 8 bytes"),
        ))
    }
    fn u32_bytes(&mut self) -> Result<&'a [u8], ServedCorrupt> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packument::TarballRef;
    use serde_json::{json, Value};

    /// The reusable compressors write exactly what a fresh compressor at the same level
    /// writes with the same flushes, for inputs small and large (both levels), compressible
    /// and not, one after another, cut anywhere; the result is a gzip member any decoder
    /// reads back, with `GzEncoder`'s header.
    #[test]
    fn reused_compressor_matches_a_fresh_one() {
        use std::io::Read;
        let mut noise = Vec::with_capacity(300_000);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..300_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            noise.push(x as u8);
        }
        let json = br#"{"name":"a","versions":{"1.0.0":{"dist":{}}}}"#.repeat(5_000);
        for input in [&b""[..], b"x", &json, &noise, b"{}", &json[..777]] {
            for cut in [0, input.len() / 3, input.len()] {
                let level = gzip_level(input.len());
                let mut fresh = flate2::Compress::new(flate2::Compression::new(level), false);
                let mut expected = gzip_header(level).to_vec();
                deflate_into(
                    &mut fresh,
                    &input[..cut],
                    &mut expected,
                    flate2::FlushCompress::Sync,
                );
                let expected_cut = expected.len();
                deflate_into(
                    &mut fresh,
                    &input[cut..],
                    &mut expected,
                    flate2::FlushCompress::Finish,
                );
                gzip_trailer(&mut expected, zlib_rs::crc32::crc32(0, input), input.len());
                let (ours, ours_cut) = gzip_with_cut(input, cut);
                assert_eq!(ours, expected, "input of {} bytes", input.len());
                assert_eq!(ours_cut, expected_cut);
                let mut back = Vec::new();
                flate2::read::GzDecoder::new(&ours[..])
                    .read_to_end(&mut back)
                    .unwrap();
                assert_eq!(back, input);
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
                std::io::Write::write_all(&mut encoder, input).unwrap();
                assert_eq!(ours[..10], encoder.finish().unwrap()[..10]);
            }
        }
        let mut crc = flate2::Crc::new();
        crc.update(&json);
        assert_eq!(zlib_rs::crc32::crc32(0, &json), crc.sum());
        assert_eq!(
            zlib_rs::crc32::crc32(zlib_rs::crc32::crc32(0, &json[..100]), &json[100..]),
            crc.sum()
        );
    }

    /// A package published one version at a time, each time encoded from the documents of
    /// the time before (never from scratch), serves what a fresh encoding serves: the same
    /// validators and cuts, and gzip forms that inflate to the same bytes with a sound sync
    /// point. Manifests are big enough that the documents pass 32 KiB
    /// (a dictionary of the whole window) and the gzip level changes on the way.
    #[test]
    fn appended_encodings_serve_what_fresh_ones_serve() {
        use std::io::Read;
        let mut stored = sample();
        let base = "http://h";
        let mut served: Option<EncodedServed> = None;
        let mut segments = [Segments::default(), Segments::default()];
        for n in 0..60u32 {
            let version = format!("1.0.{n}");
            let manifest = json!({
                "name": "a", "version": version,
                "description": format!("release {n} {}", "lorem ipsum ".repeat((n % 7) as usize * 40)),
                "dependencies": {"b": format!("^{n}.0.0")},
                "dist": {
                    "tarball": format!("a/-/a-{version}.tgz"),
                    "shasum": format!("{n:040}"),
                    // As incompressible as real integrity strings.
                    "integrity": format!(
                        "sha512-{}{}",
                        BlobId::of(version.as_bytes()).to_hex(),
                        BlobId::of(&n.to_le_bytes()).to_hex()
                    )
                }
            });
            let from = stored.versions().map_or(0, serde_json::Map::len);
            let Some(Value::Object(versions)) = stored.doc.get_mut("versions") else {
                unreachable!()
            };
            versions.insert(version.clone(), manifest);
            // Versions whose sorted order is not their publish order; some tarballs in rows.
            stored.tarballs.insert(
                version.clone(),
                TarballRef {
                    file: format!("a-{version}.tgz"),
                    blob: BlobId::of(version.as_bytes()).to_hex(),
                    size: u64::from(n) + 100,
                    row: (n % 2 == 0).then_some(u64::from(n) + 1),
                },
            );
            stored
                .doc
                .insert("dist-tags".into(), json!({"latest": version}));
            stored
                .doc
                .insert("readme".into(), json!(format!("readme {n}")));
            stored.rev += 1;
            let fresh = encode_served(&stored, base);
            let next = match &served {
                None => fresh.clone(),
                Some(old) => {
                    let rendered =
                        encode_appended(&stored, base, from, &old.index, values(old), None)
                            .expect("the old documents fit");
                    // The windows the last encoding left stand for the entries before.
                    let windows = [&old.docs[0].window[..], &old.docs[1].window[..]];
                    let kept = encode_appended(
                        &stored,
                        base,
                        from,
                        &old.index,
                        values(old),
                        Some(windows),
                    );
                    assert_eq!(kept.as_ref(), Some(&rendered));
                    rendered
                }
            };
            assert_eq!(next.index, fresh.index);
            for ((kept, doc), fresh) in segments.iter_mut().zip(&next.docs).zip(&fresh.docs) {
                let whole = kept.store(doc);
                // What a publish rewrites is bounded: the open part and the tail.
                assert!(doc.value.len() < SEGMENT_BYTES + 4 * 1024 || n == 0);
                let fresh_doc = doc_of(fresh.fresh_value().unwrap());
                let body = identity_doc(&fresh_doc).unwrap().body;
                assert!(
                    gzip_doc_agrees(&doc_of(&whole), &fresh_doc, &body),
                    "after {version}"
                );
                let doc = decode_doc(Bytes::from(whole)).unwrap();
                let mut back = Vec::new();
                flate2::read::GzDecoder::new(&doc.body[..])
                    .read_to_end(&mut back)
                    .unwrap();
                assert_eq!(back, body);
            }
            served = Some(next);
        }
        let closed = [segments[0].0.len(), segments[1].0.len()];
        assert!(
            closed[0] >= 2 && closed[1] >= 2,
            "appends closed segments: {closed:?}"
        );
        let full = identity_doc(&doc_of(&segments[0].whole(&served.unwrap().docs[0]))).unwrap();
        assert!(
            full.body.len() > 64 * 1024,
            "the documents grew past the window"
        );
    }

    /// A document's stored segments, as the shard keeps them.
    #[derive(Default)]
    struct Segments(std::collections::BTreeMap<u32, Vec<u8>>);

    impl Segments {
        /// Stores `doc` as the shard's writer does; returns the whole value.
        fn store(&mut self, doc: &EncodedDoc) -> Vec<u8> {
            if doc.fresh {
                self.0.clear();
            }
            if let Some((n, bytes)) = &doc.segment {
                assert!(
                    self.0.insert(*n, bytes.clone()).is_none(),
                    "segment {n} again"
                );
            }
            self.whole(doc)
        }

        fn whole(&self, doc: &EncodedDoc) -> Vec<u8> {
            let parts: Vec<(u32, &[u8])> = self.0.iter().map(|(n, b)| (*n, &b[..])).collect();
            assemble_doc(&doc.value, &parts).unwrap()
        }
    }

    fn doc_of(value: &[u8]) -> ServedDoc {
        decode_doc(Bytes::copy_from_slice(value)).unwrap()
    }

    fn values(encoded: &EncodedServed) -> [&[u8]; 2] {
        [&encoded.docs[0].value[..], &encoded.docs[1].value[..]]
    }

    fn as_refs(d: &[Vec<u8>; 2]) -> [&[u8]; 2] {
        [&d[0][..], &d[1][..]]
    }

    /// Old documents that do not fit are refused (the caller encodes from scratch), and a
    /// gzip form that lies about its cut or its bytes does not pass the fsck check.
    #[test]
    fn mismatched_documents_are_refused() {
        let mut stored = sample();
        let Some(Value::Object(versions)) = stored.doc.get_mut("versions") else {
            unreachable!()
        };
        versions.insert(
            "1.0.0".into(),
            json!({"dist": {"tarball": "a/-/a-1.0.0.tgz"}}),
        );
        let old = encode_served(&stored, "http://h");
        let Some(Value::Object(versions)) = stored.doc.get_mut("versions") else {
            unreachable!()
        };
        versions.insert(
            "1.0.1".into(),
            json!({"dist": {"tarball": "a/-/a-1.0.1.tgz"}}),
        );
        stored.tarballs.insert(
            "1.0.1".into(),
            TarballRef {
                file: "a-1.0.1.tgz".into(),
                blob: BlobId::of(b"y").to_hex(),
                size: 2,
                row: Some(3),
            },
        );
        stored.rev += 1;
        let docs = |o: &EncodedServed| [o.docs[0].value.clone(), o.docs[1].value.clone()];
        // An append onto `old`'s index and the given document values.
        let append = |stored: &StoredPackage, from, docs: &[Vec<u8>; 2], windows| {
            encode_appended(stored, "http://h", from, &old.index, as_refs(docs), windows)
        };
        let appended = append(&stored, 1, &docs(&old), None);
        assert_eq!(
            appended.unwrap().index,
            encode_served(&stored, "http://h").index
        );
        // An old index for another URL, of another count of versions, at another layout or
        // cut short is refused.
        let other = encode_served(&stored, "http://other").index;
        let two = encode_served(&stored, "http://h").index;
        let mut layout = old.index.clone();
        layout[0] = FORMAT - 1;
        for index in [&other, &two, &layout, &old.index[..9].to_vec()] {
            assert!(
                encode_appended(&stored, "http://h", 1, index, as_refs(&docs(&old)), None)
                    .is_none()
            );
        }
        assert_eq!(index_rev(&old.index), Some(7));
        assert_eq!(index_rev(&layout), None);
        assert!(append(&stored, 0, &docs(&old), None).is_none());
        assert!(append(&stored, 2, &docs(&old), None).is_none());
        // A gzip cut past its body, a dictionary hash that is not the last entry's, and a
        // last manifest that is a placeholder (it renders otherwise) are refused.
        let bad = docs(&old);
        let at = 10 + decode_doc(Bytes::from(bad[0].clone())).unwrap().etag.len() + 4;
        // Segments the value does not have are refused, and so is a value that names some.
        let mut bad = docs(&old);
        bad[0][at + 36..at + 40].copy_from_slice(&1u32.to_le_bytes());
        assert!(append(&stored, 1, &bad, None).is_none());
        assert!(decode_doc(Bytes::from(bad[0].clone())).is_err());
        bad[0][at + 40..at + 44].copy_from_slice(&16u32.to_le_bytes());
        assert!(decode_doc(Bytes::from(bad[0].clone())).is_err());
        assert!(assemble_doc(&bad[0], &[]).is_err());
        assert!(assemble_doc(&bad[0], &[(1, &[0; 16])]).is_err());
        assert!(assemble_doc(&bad[0], &[(0, &[0; 15])]).is_err());
        let mut bad = docs(&old);
        bad[0][at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(append(&stored, 1, &bad, None).is_none());
        // The cut: gzip (at), crc (at + 4), chain (at + 8), window (at + 24), then segments
        // (at + 32), closed (at + 36) and the member.
        let mut bad = docs(&old);
        bad[1][at + 24] ^= 1;
        assert!(append(&stored, 1, &bad, None).is_none());
        let mut placeholder = stored.clone();
        let Some(Value::Object(versions)) = placeholder.doc.get_mut("versions") else {
            unreachable!()
        };
        versions.insert("1.0.0".into(), Value::Null);
        let docs_of_old = docs(&old);
        assert!(append(&placeholder, 1, &docs_of_old, None).is_none());
        // Windows kept stand for the placeholder's entries; windows that are not those
        // entries are refused.
        let windows = [&old.docs[0].window[..], &old.docs[1].window[..]];
        let kept = append(&placeholder, 1, &docs_of_old, Some(windows));
        let rendered = append(&stored, 1, &docs_of_old, None);
        assert_eq!(kept, rendered);
        assert!(append(&placeholder, 1, &docs_of_old, Some([b"x", b"y"])).is_none());
        // Damage before the cut is copied, not read: the result no longer agrees with a fresh
        // encoding, which is how fsck finds it.
        let member_at = at + 40;
        let mut bad = docs(&old);
        bad[0][member_at + 16] ^= 0x55;
        let copied = append(&stored, 1, &bad, None).unwrap();
        let fresh_full = doc_of(&encode_served(&stored, "http://h").docs[0].value);
        let fresh_identity = identity_doc(&fresh_full).unwrap().body;
        assert!(copied.docs[0].segment.is_none());
        assert!(!gzip_doc_agrees(
            &doc_of(&copied.docs[0].value),
            &fresh_full,
            &fresh_identity
        ));
        // Damage after the cut is not read: the tail is rendered anew.
        let mut tail_damaged = docs(&old);
        let last = tail_damaged[0].len() - 9;
        tail_damaged[0][last] ^= 0x55;
        let fresh = append(&stored, 1, &docs(&old), None).unwrap();
        let mended = append(&stored, 1, &tail_damaged, None).unwrap();
        assert_eq!(mended, fresh);
        assert!(encode_appended(&stored, "http://h", 1, &old.index, [b"", b""], None).is_none());
        // fsck's check: a sound gzip form agrees; a moved sync point or other bytes do not.
        let sound = doc_of(&old.docs[0].value);
        let identity = identity_doc(&sound).unwrap().body;
        assert!(gzip_doc_agrees(&sound, &sound, &identity));
        let mut moved = old.docs[0].value.clone();
        let gzip_cut = u32::from_le_bytes(moved[at..at + 4].try_into().unwrap());
        moved[at..at + 4].copy_from_slice(&(gzip_cut - 1).to_le_bytes());
        assert!(!gzip_doc_agrees(&doc_of(&moved), &sound, &identity));
        let mut flipped = old.docs[0].value.clone();
        flipped[last] ^= 0x55;
        assert!(!gzip_doc_agrees(&doc_of(&flipped), &sound, &identity));
        assert!(identity_doc(&doc_of(&flipped)).is_err());
        assert!(!gzip_doc_agrees(&sound, &sound, b"other"));
    }

    proptest::proptest! {
        /// The fuzz target `served_record` drives the same functions with libFuzzer.
        #[test]
        fn decode_never_panics_and_stays_in_bounds(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)
        ) {
            let buf = Bytes::from(bytes);
            if let Ok(doc) = decode_doc(buf.clone()) {
                proptest::prop_assert!(doc.body.len() + doc.etag.len() <= buf.len());
            }
            // A value naming segments assembles only with exactly those bytes.
            let count = doc_segments(&buf).unwrap_or(0);
            let part = [0u8; 16];
            let parts: Vec<(u32, &[u8])> = (0..count.min(4)).map(|n| (n, &part[..])).collect();
            if let Ok(whole) = assemble_doc(&buf, &parts) {
                proptest::prop_assert!(whole.len() == buf.len() + 16 * parts.len());
                proptest::prop_assert!(decode_doc(Bytes::from(whole)).is_ok());
            }
            if let Ok(index) = decode_index(&buf) {
                proptest::prop_assert!(index.tarballs.len() * BLOB_ID_BYTES <= buf.len());
            }
        }
    }

    fn sample() -> StoredPackage {
        let Value::Object(doc) = json!({"name": "a", "versions": {}, "readme": "x".repeat(5000)})
        else {
            unreachable!()
        };
        let mut stored = StoredPackage {
            rev: 7,
            doc,
            tarballs: Default::default(),
        };
        stored.tarballs.insert(
            "1.0.0".into(),
            TarballRef {
                file: "a-1.0.0.tgz".into(),
                blob: BlobId::of(b"x").to_hex(),
                size: 1,
                row: None,
            },
        );
        stored
    }

    #[test]
    fn round_trip_and_truncation_detected() {
        let stored = sample();
        let encoded = encode_served(&stored, "http://h");
        let index = decode_index(&encoded.index).unwrap();
        assert_eq!(index.rev, 7);
        assert_eq!(&*index.base_url, "http://h");
        assert_eq!(index.tarball("a-1.0.0.tgz").unwrap().blob, BlobId::of(b"x"));
        for cut in 0..encoded.index.len() {
            assert!(decode_index(&encoded.index[..cut]).is_err());
        }
        let rendered = stored.render("http://h");
        let docs: Vec<ServedDoc> = encoded.docs.iter().map(|d| doc_of(&d.value)).collect();
        assert!(docs.iter().all(|d| d.rev == 7));
        let identity = |kind: DocKind| identity_doc(&docs[kind.stored_index()]).unwrap();
        assert_eq!(identity(DocKind::Full).body, rendered.full);
        assert_eq!(identity(DocKind::Abbreviated).body, rendered.abbreviated);
        assert_eq!(identity(DocKind::Full).cut.body as usize, rendered.full_cut);
        assert_eq!(
            identity(DocKind::Abbreviated).cut.body as usize,
            rendered.abbreviated_cut
        );
        assert_ne!(docs[0].etag, docs[1].etag);
        for cut in 0..10 + docs[0].etag.len() {
            assert!(decode_doc(Bytes::copy_from_slice(&encoded.docs[0].value[..cut])).is_err());
        }
        // A truncated gzip member does not inflate.
        for cut in [1, 8, 20] {
            let mut short = docs[0].clone();
            short.body = short.body.slice(..short.body.len() - cut);
            assert!(identity_doc(&short).is_err());
        }
    }

    #[test]
    fn both_encodings_share_a_validator() {
        let encoded = encode_served(&sample(), "http://h");
        let gzip = doc_of(&encoded.docs[0].value);
        let identity = identity_doc(&gzip).unwrap();
        assert!(gzip.etag.ends_with(b"-gz\""));
        assert_eq!(
            gzip.etag[..gzip.etag.len() - 4],
            identity.etag[..identity.etag.len() - 1]
        );
        for doc in [&identity, &gzip] {
            assert!(doc.etag_matches(&identity.etag));
            assert!(doc.etag_matches(&gzip.etag));
            assert!(!doc.etag_matches(b"\"other\""));
            assert!(!doc.etag_matches(&identity.etag[1..]));
        }
        let abbreviated = identity_doc(&doc_of(&encoded.docs[1].value)).unwrap();
        assert!(!abbreviated.etag_matches(&identity.etag));
    }
}
