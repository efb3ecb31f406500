//! npm's tarball checksums: `integrity` (Subresource Integrity string, sha512 in practice) and
//! `shasum` (hex sha1). Computed once per published tarball and compared with what the client
//! claimed; the computed values are what the registry stores and serves.

use sha1::Sha1;
use sha2::{Digest, Sha512};

/// The checksums of one tarball.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checksums {
    /// `sha512-<base64>`.
    pub integrity: String,
    /// 40 lowercase hex characters.
    pub shasum: String,
}

/// Why a claimed checksum was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IntegrityError {
    #[error("dist.integrity {claimed:?} does not match the tarball (its sha512 is {actual})")]
    IntegrityMismatch { claimed: String, actual: String },
    #[error("dist.integrity {claimed:?} names no supported algorithm (sha512 or sha1)")]
    IntegrityUnsupported { claimed: String },
    #[error("dist.shasum {claimed:?} does not match the tarball (its sha1 is {actual})")]
    ShasumMismatch { claimed: String, actual: String },
}

/// Computes the sha512 SRI string and hex sha1 of `bytes`.
#[must_use]
pub fn compute(bytes: &[u8]) -> Checksums {
    let sha512 = Sha512::digest(bytes);
    let sha1 = Sha1::digest(bytes);
    Checksums {
        integrity: format!("sha512-{}", base64_simd::STANDARD.encode_to_string(sha512)),
        shasum: hex::encode(sha1),
    }
}

/// Verifies the client's claims against the computed checksums. An SRI string may list several
/// hashes separated by whitespace; as in npm's `ssri`, the strongest algorithm present decides,
/// and one matching entry of it suffices. Absent claims are not an error.
///
/// # Errors
/// The first claim that does not match.
pub fn verify(
    computed: &Checksums,
    bytes: &[u8],
    claimed_integrity: Option<&str>,
    claimed_shasum: Option<&str>,
) -> Result<(), IntegrityError> {
    if let Some(claimed) = claimed_integrity {
        verify_sri(computed, bytes, claimed)?;
    }
    if let Some(claimed) = claimed_shasum {
        if !claimed.eq_ignore_ascii_case(&computed.shasum) {
            return Err(IntegrityError::ShasumMismatch {
                claimed: truncate(claimed),
                actual: computed.shasum.clone(),
            });
        }
    }
    Ok(())
}

fn verify_sri(computed: &Checksums, bytes: &[u8], claimed: &str) -> Result<(), IntegrityError> {
    let entries: Vec<&str> = claimed.split_whitespace().collect();
    let sha512: Vec<&str> = entries
        .iter()
        .filter_map(|e| e.strip_prefix("sha512-"))
        .collect();
    let mismatch = || IntegrityError::IntegrityMismatch {
        claimed: truncate(claimed),
        actual: computed.integrity.clone(),
    };
    if !sha512.is_empty() {
        let ours = &computed.integrity["sha512-".len()..];
        // An SRI entry may carry `?options` after the digest.
        return if sha512.iter().any(|d| d.split('?').next() == Some(ours)) {
            Ok(())
        } else {
            Err(mismatch())
        };
    }
    let sha1: Vec<&str> = entries
        .iter()
        .filter_map(|e| e.strip_prefix("sha1-"))
        .collect();
    if !sha1.is_empty() {
        let ours = base64_simd::STANDARD.encode_to_string(Sha1::digest(bytes));
        return if sha1
            .iter()
            .any(|d| d.split('?').next() == Some(ours.as_str()))
        {
            Ok(())
        } else {
            Err(mismatch())
        };
    }
    Err(IntegrityError::IntegrityUnsupported {
        claimed: truncate(claimed),
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        let c = compute(b"abc");
        assert_eq!(c.shasum, "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert!(c
            .integrity
            .starts_with("sha512-3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkq"));
    }

    #[test]
    fn verify_accepts_matching_and_refuses_mismatch() {
        let bytes = b"tarball";
        let c = compute(bytes);
        assert_eq!(
            verify(&c, bytes, Some(&c.integrity), Some(&c.shasum)),
            Ok(())
        );
        assert_eq!(verify(&c, bytes, None, None), Ok(()));
        let both = format!("sha1-abc {}", c.integrity);
        assert_eq!(verify(&c, bytes, Some(&both), None), Ok(()));
        let other = compute(b"other");
        assert!(matches!(
            verify(&c, bytes, Some(&other.integrity), None),
            Err(IntegrityError::IntegrityMismatch { .. })
        ));
        assert!(matches!(
            verify(&c, bytes, None, Some(&other.shasum)),
            Err(IntegrityError::ShasumMismatch { .. })
        ));
        assert!(matches!(
            verify(&c, bytes, Some("md5-xyz"), None),
            Err(IntegrityError::IntegrityUnsupported { .. })
        ));
    }
}
