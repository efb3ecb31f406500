//! The package document model. A package is stored as a `StoredPackage`: the npm-visible full
//! document (`doc`), whose versions' `dist.tarball` hold a path relative to the registry's
//! public URL, plus the tarball index (version -> file, blob, size) and a revision counter.
//!
//! `render` turns a stored package into the bytes clients receive: the full packument
//! (`GET /NAME`) and the abbreviated one (`Accept: application/vnd.npm.install-v1+json`),
//! with absolute tarball URLs. Rendering happens on write, never per request.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
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
#[derive(Debug)]
pub struct Rendered {
    pub full: Vec<u8>,
    pub abbreviated: Vec<u8>,
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
        serde_json::to_vec(self).expect("a JSON value tree always serializes")
    }

    /// Decodes what `encode` wrote.
    ///
    /// # Errors
    /// The stored bytes are not a valid package record.
    pub fn decode(bytes: &[u8]) -> Result<StoredPackage, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// One version's manifest with its absolute tarball URL (`GET /NAME/VERSION`).
    #[must_use]
    pub fn render_version(&self, version: &str, base_url: &str) -> Option<Vec<u8>> {
        let mut manifest = self.versions()?.get(version)?.clone();
        absolutize_tarball(&mut manifest, base_url);
        Some(serde_json::to_vec(&manifest).expect("a JSON value tree always serializes"))
    }

    /// Renders the full and abbreviated documents with tarball URLs under `base_url`
    /// (no trailing slash).
    #[must_use]
    pub fn render(&self, base_url: &str) -> Rendered {
        let mut full = self.doc.clone();
        full.insert("_rev".into(), Value::String(self.rev_string()));
        if let Some(Value::Object(versions)) = full.get_mut("versions") {
            for manifest in versions.values_mut() {
                absolutize_tarball(manifest, base_url);
            }
        }
        let mut abbreviated = Map::new();
        abbreviated.insert("name".into(), Value::String(self.name().to_owned()));
        let modified = self
            .doc
            .get("time")
            .and_then(|t| t.get("modified"))
            .cloned()
            .unwrap_or(Value::Null);
        abbreviated.insert("modified".into(), modified);
        abbreviated.insert(
            "dist-tags".into(),
            self.doc
                .get("dist-tags")
                .cloned()
                .unwrap_or_else(|| Value::Object(Map::new())),
        );
        let mut versions_abbreviated = Map::new();
        if let Some(Value::Object(versions)) = full.get("versions") {
            for (version, manifest) in versions {
                versions_abbreviated.insert(version.clone(), abbreviate(manifest));
            }
        }
        abbreviated.insert("versions".into(), Value::Object(versions_abbreviated));
        if let Some(time) = self.doc.get("time") {
            abbreviated.insert("time".into(), time.clone());
        }
        Rendered {
            full: serde_json::to_vec(&full).expect("a JSON value tree always serializes"),
            abbreviated: serde_json::to_vec(&abbreviated)
                .expect("a JSON value tree always serializes"),
        }
    }
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

fn absolutize_tarball(manifest: &mut Value, base_url: &str) {
    if let Some(Value::Object(dist)) = manifest.get_mut("dist") {
        if let Some(Value::String(tarball)) = dist.get_mut("tarball") {
            if !tarball.starts_with("http://") && !tarball.starts_with("https://") {
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

    #[test]
    fn encode_decode_round_trip() {
        let stored = sample();
        assert_eq!(StoredPackage::decode(&stored.encode()).unwrap(), stored);
    }
}
