//! The served records: everything a read of one package needs, pre-rendered on write so that
//! `GET /NAME`, the abbreviated packument and tarball lookups never parse or render.
//!
//! A package has five served values, each in its own redb table (`shard/tables.rs`), so that
//! a read copies only what it answers with: a cold abbreviated GET with gzip reads the ~0.5 KB
//! gzip abbreviated document, not all four representations (~4 KB), and the pages a workload
//! touches stay in redb's cache. Layouts (little-endian):
//!
//! The index (`served` table), what a tarball GET needs:
//!   0       format u8 (= 2)
//!   1..9    rev u64
//!   then    base_url: u32 length + bytes
//!   then    tarball count u32; each: file (u16 length + bytes), blob [u8; 32], size u64
//!
//! One document per `DocKind` (`doc_*` tables):
//!   0       format u8 (= 2)
//!   1..9    rev u64
//!   9       etag length u8, then the etag (quoted; a gzip form ends in `-gz"`)
//!   then    the body, to the end of the value
//!
//! Every value carries the package's revision, so a reader that combines values read at
//! different times can tell whether they belong together. Decoding checks every length
//! against the buffer: a corrupt value is an error, not a panic.

use bytes::Bytes;

use crate::blob::{BlobId, BLOB_ID_BYTES};
use crate::packument::StoredPackage;

/// The layout version of every served value. A shard whose `meta` records another version
/// (or none) re-renders all of them when opened (`ShardStore::open`).
pub const FORMAT: u8 = 4;
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

    /// Position in `ALL` (and in `EncodedServed::docs`).
    #[must_use]
    pub fn index(self) -> usize {
        self as usize
    }

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

/// One decoded document: its body and validator, at revision `rev`.
#[derive(Clone, Debug)]
pub struct ServedDoc {
    pub rev: u64,
    /// A quoted strong validator, e.g. `"a1b2..."`; the gzip form is `"a1b2...-gz"`.
    pub etag: Bytes,
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
        let token = etag_token(&self.etag);
        let Some(inner) = candidate
            .strip_prefix(b"\"")
            .and_then(|c| c.strip_suffix(b"\""))
        else {
            return false;
        };
        inner == token || inner.strip_suffix(b"-gz") == Some(token)
    }
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

/// The five encoded values of one package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedServed {
    pub index: Vec<u8>,
    /// Indexed by `DocKind::index`.
    pub docs: [Vec<u8>; 4],
}

/// Renders `stored` for `base_url` and encodes its served values.
#[must_use]
pub fn encode_served(stored: &StoredPackage, base_url: &str) -> EncodedServed {
    let rendered = stored.render(base_url);
    let mut index = Vec::with_capacity(64 + base_url.len() + stored.tarballs.len() * 80);
    index.push(FORMAT);
    index.extend_from_slice(&stored.rev.to_le_bytes());
    index.extend_from_slice(
        &u32::try_from(base_url.len())
            .expect("base URLs are short")
            .to_le_bytes(),
    );
    index.extend_from_slice(base_url.as_bytes());
    let count = u32::try_from(stored.tarballs.len()).expect("versions are bounded");
    index.extend_from_slice(&count.to_le_bytes());
    for tarball in stored.tarballs.values() {
        let file = tarball.file.as_bytes();
        index.extend_from_slice(
            &u16::try_from(file.len())
                .expect("file names are short")
                .to_le_bytes(),
        );
        index.extend_from_slice(file);
        let blob = tarball.blob_id().map_or([0; BLOB_ID_BYTES], |b| b.0);
        index.extend_from_slice(&blob);
        index.extend_from_slice(&tarball.size.to_le_bytes());
    }
    let doc = |body: &[u8], etag: &str| {
        let mut out = Vec::with_capacity(body.len() + 48);
        out.push(FORMAT);
        out.extend_from_slice(&stored.rev.to_le_bytes());
        out.push(u8::try_from(etag.len()).expect("etags are short"));
        out.extend_from_slice(etag.as_bytes());
        out.extend_from_slice(body);
        out
    };
    let full_etag = etag(&rendered.full);
    let abbreviated_etag = etag(&rendered.abbreviated);
    EncodedServed {
        index,
        docs: [
            doc(&rendered.full, &full_etag),
            doc(&gzip(&rendered.full), &gzip_etag(&full_etag)),
            doc(&rendered.abbreviated, &abbreviated_etag),
            doc(&gzip(&rendered.abbreviated), &gzip_etag(&abbreviated_etag)),
        ],
    }
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
        tarballs.push(ServedTarball {
            file,
            blob: BlobId(blob),
            size,
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

/// Decodes a document value; the returned `Bytes` share `buf`'s allocation.
///
/// # Errors
/// `ServedCorrupt` when the header does not fit or the etag is not a quoted validator.
pub fn decode_doc(buf: Bytes) -> Result<ServedDoc, ServedCorrupt> {
    let mut r = Reader { buf: &buf, at: 0 };
    if r.u8()? != FORMAT {
        return Err(ServedCorrupt {
            detail: "unknown format",
        });
    }
    let rev = r.u64()?;
    let etag_len = usize::from(r.u8()?);
    let etag_at = r.at;
    let etag = r.take(etag_len)?;
    if etag.len() < 2 || etag[0] != b'"' || etag[etag.len() - 1] != b'"' {
        return Err(ServedCorrupt {
            detail: "etag is not a quoted validator",
        });
    }
    let body_at = r.at;
    Ok(ServedDoc {
        rev,
        etag: buf.slice(etag_at..etag_at + etag_len),
        body: buf.slice(body_at..),
    })
}

fn etag(bytes: &[u8]) -> String {
    format!("\"{:032x}\"", xxhash_rust::xxh3::xxh3_128(bytes))
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

fn gzip(bytes: &[u8]) -> Vec<u8> {
    // Every document gets a gzip form: clients (and Verdaccio, which people compare us with)
    // expect `Content-Encoding: gzip` whenever they accept it; the cost is paid once per write.
    let level = gzip_level(bytes.len());
    let deflate = if level == GZIP_LEVEL_SMALL {
        &DEFLATE_SMALL
    } else {
        &DEFLATE_LARGE
    };
    deflate.with_borrow_mut(|deflate| gzip_with(deflate, level, bytes))
}

/// One gzip member of `bytes`: the header, one raw deflate stream from `deflate` (reset
/// first, created at `level`), the CRC-32 and the length.
fn gzip_with(deflate: &mut flate2::Compress, level: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() / 4 + 64);
    out.extend_from_slice(&gzip_header(level));
    deflate.reset();
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity() / 2 + 64);
        }
        let consumed = usize::try_from(deflate.total_in()).expect("input fits in memory");
        let status = deflate
            .compress_vec(&bytes[consumed..], &mut out, flate2::FlushCompress::Finish)
            .expect("deflating into a Vec cannot fail");
        if status == flate2::Status::StreamEnd {
            break;
        }
    }
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE is the input length modulo 2^32 (RFC 1952).
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out
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
    /// writes, for inputs small and large (both levels), compressible and not, one after
    /// another; and the result is a gzip member any decoder reads back.
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
            let level = gzip_level(input.len());
            let mut fresh = flate2::Compress::new(flate2::Compression::new(level), false);
            let fresh = gzip_with(&mut fresh, level, input);
            let ours = gzip(input);
            assert_eq!(ours, fresh, "input of {} bytes", input.len());
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&ours[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, input);
            // The header is the one `GzEncoder` writes at this level.
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
            std::io::Write::write_all(&mut encoder, input).unwrap();
            assert_eq!(ours[..10], encoder.finish().unwrap()[..10]);
        }
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
        let docs: Vec<ServedDoc> = encoded
            .docs
            .iter()
            .map(|d| decode_doc(Bytes::from(d.clone())).unwrap())
            .collect();
        assert!(docs.iter().all(|d| d.rev == 7));
        assert_eq!(docs[DocKind::Full.index()].body, rendered.full);
        assert_eq!(
            docs[DocKind::Abbreviated.index()].body,
            rendered.abbreviated
        );
        let unzipped = |d: &ServedDoc| {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&d.body[..]), &mut out)
                .unwrap();
            out
        };
        assert_eq!(unzipped(&docs[DocKind::FullGzip.index()]), rendered.full);
        assert_eq!(
            unzipped(&docs[DocKind::AbbreviatedGzip.index()]),
            rendered.abbreviated
        );
        assert_ne!(docs[0].etag, docs[2].etag);
        for cut in 0..10 + docs[0].etag.len() {
            assert!(decode_doc(Bytes::copy_from_slice(&encoded.docs[0][..cut])).is_err());
        }
    }

    #[test]
    fn both_encodings_share_a_validator() {
        let encoded = encode_served(&sample(), "http://h");
        let identity = decode_doc(Bytes::from(encoded.docs[0].clone())).unwrap();
        let gzip = decode_doc(Bytes::from(encoded.docs[1].clone())).unwrap();
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
        let abbreviated = decode_doc(Bytes::from(encoded.docs[2].clone())).unwrap();
        assert!(!abbreviated.etag_matches(&identity.etag));
    }
}
