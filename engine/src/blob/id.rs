//! `BlobId`: the blake3 digest that names a blob. npm's `integrity` (sha512 SRI) is a separate
//! concept, kept in package metadata and verified on publish; the blob store only knows blake3.

use std::fmt;

/// Number of bytes in a blake3 digest.
pub const BLOB_ID_BYTES: usize = 32;

/// The blake3 digest of a blob's bytes. Two blobs with the same id are the same bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(pub [u8; BLOB_ID_BYTES]);

impl BlobId {
    /// Hashes `bytes`.
    #[must_use]
    pub fn of(bytes: &[u8]) -> BlobId {
        BlobId(*blake3::hash(bytes).as_bytes())
    }

    /// Lowercase hex, 64 characters.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 lowercase or uppercase hex characters.
    #[must_use]
    pub fn from_hex(s: &str) -> Option<BlobId> {
        let mut out = [0u8; BLOB_ID_BYTES];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(BlobId(out))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", self.to_hex())
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = BlobId::of(b"hello");
        assert_eq!(BlobId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(BlobId::from_hex("zz"), None);
        assert_eq!(BlobId::from_hex(&"0".repeat(63)), None);
    }
}
