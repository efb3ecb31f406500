//! The served record: everything a read of one package needs, pre-rendered on write so that
//! `GET /NAME`, the abbreviated packument and tarball lookups never parse or render.
//!
//! Layout (little-endian), stored as one redb value per package:
//!   0       format u8 (= 1)
//!   1..9    rev u64
//!   then    base_url, etag_full, etag_abbreviated: each u32 length + bytes
//!   then    lengths u32 x4: full, full_gzip, abbreviated, abbreviated_gzip (gzip 0 = absent)
//!   then    tarball count u32; each: file (u16 length + bytes), blob [u8; 32], size u64
//!   then    the four bodies, back to back
//! Decoding checks every length against the buffer: a corrupt record is an error, not a panic.

use std::io::Write;

use bytes::Bytes;
use flate2::write::GzEncoder;

use crate::blob::{BlobId, BLOB_ID_BYTES};
use crate::packument::StoredPackage;

const FORMAT: u8 = 1;
/// flate2 level for pre-compressed documents (paid once per write, served many times).
const GZIP_LEVEL: u32 = 6;

/// One representation of a document: identity bytes, optional gzip bytes, and its ETag.
#[derive(Clone, Debug)]
pub struct Document {
    /// A quoted strong validator, e.g. `"a1b2..."`; the gzip form appends `-gz` inside quotes.
    pub etag: Bytes,
    pub etag_gzip: Bytes,
    pub identity: Bytes,
    pub gzip: Option<Bytes>,
}

/// A tarball of this package: file name -> blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedTarball {
    pub file: Box<str>,
    pub blob: BlobId,
    pub size: u64,
}

/// The decoded served record.
#[derive(Clone, Debug)]
pub struct Served {
    pub rev: u64,
    pub base_url: Box<str>,
    pub full: Document,
    pub abbreviated: Document,
    pub tarballs: Vec<ServedTarball>,
}

impl Served {
    /// Looks a tarball up by file name.
    #[must_use]
    pub fn tarball(&self, file: &str) -> Option<&ServedTarball> {
        self.tarballs.iter().find(|t| &*t.file == file)
    }

    /// Total bytes held (for cache accounting).
    #[must_use]
    pub fn weight_bytes(&self) -> usize {
        let doc = |d: &Document| d.identity.len() + d.gzip.as_ref().map_or(0, Bytes::len);
        doc(&self.full) + doc(&self.abbreviated) + self.tarballs.len() * 64 + 256
    }
}

/// Why a served record could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("served record is corrupt: {detail}")]
pub struct ServedCorrupt {
    pub detail: &'static str,
}

/// Renders `stored` for `base_url` and encodes the served record.
#[must_use]
pub fn encode_served(stored: &StoredPackage, base_url: &str) -> Vec<u8> {
    let rendered = stored.render(base_url);
    let full_gzip = gzip(&rendered.full);
    let abbreviated_gzip = gzip(&rendered.abbreviated);
    let etag_full = etag(&rendered.full);
    let etag_abbreviated = etag(&rendered.abbreviated);
    let bodies_len = rendered.full.len()
        + rendered.abbreviated.len()
        + full_gzip.as_ref().map_or(0, Vec::len)
        + abbreviated_gzip.as_ref().map_or(0, Vec::len);
    let mut out = Vec::with_capacity(bodies_len + 256 + stored.tarballs.len() * 80);
    out.push(FORMAT);
    out.extend_from_slice(&stored.rev.to_le_bytes());
    for field in [
        base_url.as_bytes(),
        etag_full.as_bytes(),
        etag_abbreviated.as_bytes(),
    ] {
        put_u32_bytes(&mut out, field);
    }
    for body in [
        Some(&rendered.full),
        full_gzip.as_ref(),
        Some(&rendered.abbreviated),
        abbreviated_gzip.as_ref(),
    ] {
        let len = body.map_or(0, Vec::len);
        out.extend_from_slice(
            &u32::try_from(len)
                .expect("documents are bounded")
                .to_le_bytes(),
        );
    }
    let count = u32::try_from(stored.tarballs.len()).expect("versions are bounded");
    out.extend_from_slice(&count.to_le_bytes());
    for tarball in stored.tarballs.values() {
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
    }
    for body in [
        Some(&rendered.full),
        full_gzip.as_ref(),
        Some(&rendered.abbreviated),
    ] {
        out.extend_from_slice(body.map_or(&[][..], Vec::as_slice));
    }
    out.extend_from_slice(abbreviated_gzip.as_deref().unwrap_or_default());
    out
}

/// Decodes a served record; the returned `Bytes` share `buf`'s allocation.
///
/// # Errors
/// `ServedCorrupt` when any length or field does not fit.
pub fn decode_served(buf: Bytes) -> Result<Served, ServedCorrupt> {
    let mut r = Reader { buf: &buf, at: 0 };
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
    let etag_full = r.u32_bytes()?.to_vec();
    let etag_abbreviated = r.u32_bytes()?.to_vec();
    let mut lens = [0usize; 4];
    for len in &mut lens {
        *len = r.u32()? as usize;
    }
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
    let mut bodies = [Bytes::new(), Bytes::new(), Bytes::new(), Bytes::new()];
    for (body, len) in bodies.iter_mut().zip(lens) {
        let start = r.at;
        r.take(len)?;
        *body = buf.slice(start..start + len);
    }
    if r.at != buf.len() {
        return Err(ServedCorrupt {
            detail: "trailing bytes",
        });
    }
    let [full, full_gzip, abbreviated, abbreviated_gzip] = bodies;
    Ok(Served {
        rev,
        base_url,
        full: document(etag_full, full, full_gzip),
        abbreviated: document(etag_abbreviated, abbreviated, abbreviated_gzip),
        tarballs,
    })
}

fn document(etag: Vec<u8>, identity: Bytes, gzip: Bytes) -> Document {
    let mut etag_gzip = etag.clone();
    if etag_gzip.len() >= 2 {
        etag_gzip.truncate(etag_gzip.len() - 1);
        etag_gzip.extend_from_slice(b"-gz\"");
    }
    Document {
        etag: Bytes::from(etag),
        etag_gzip: Bytes::from(etag_gzip),
        identity,
        gzip: (!gzip.is_empty()).then_some(gzip),
    }
}

fn etag(bytes: &[u8]) -> String {
    format!("\"{:032x}\"", xxhash_rust::xxh3::xxh3_128(bytes))
}

fn gzip(bytes: &[u8]) -> Option<Vec<u8>> {
    // Every document gets a gzip form: clients (and Verdaccio, which people compare us with)
    // expect `Content-Encoding: gzip` whenever they accept it; the cost is paid once per write.
    if bytes.is_empty() {
        return None;
    }
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4),
        flate2::Compression::new(GZIP_LEVEL),
    );
    encoder
        .write_all(bytes)
        .expect("writing to a Vec cannot fail");
    Some(encoder.finish().expect("writing to a Vec cannot fail"))
}

fn put_u32_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(
        &u32::try_from(bytes.len())
            .expect("field is short")
            .to_le_bytes(),
    );
    out.extend_from_slice(bytes);
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

    proptest::proptest! {
        /// The fuzz target `served_record` drives the same function with libFuzzer.
        #[test]
        fn decode_never_panics_and_stays_in_bounds(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)
        ) {
            let buf = Bytes::from(bytes);
            if let Ok(served) = decode_served(buf.clone()) {
                proptest::prop_assert!(served.full.identity.len() <= buf.len());
                proptest::prop_assert!(served.abbreviated.identity.len() <= buf.len());
            }
        }
    }

    #[test]
    fn round_trip_and_truncation_detected() {
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
        let encoded = encode_served(&stored, "http://h");
        let served = decode_served(Bytes::from(encoded.clone())).unwrap();
        assert_eq!(served.rev, 7);
        assert_eq!(&*served.base_url, "http://h");
        assert!(served.full.gzip.is_some());
        assert_ne!(served.full.etag, served.abbreviated.etag);
        assert_eq!(
            served.tarball("a-1.0.0.tgz").unwrap().blob,
            BlobId::of(b"x")
        );
        for cut in 0..encoded.len() {
            assert!(decode_served(Bytes::copy_from_slice(&encoded[..cut])).is_err());
        }
    }
}
