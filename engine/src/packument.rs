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
    /// (no trailing slash). Serialized straight from the stored document (no copy of it is
    /// built): the full document is `doc` with `_rev` set and every version's relative
    /// `dist.tarball` made absolute; the abbreviated one is `name`, `modified`, `dist-tags`,
    /// the versions cut to `ABBREVIATED_VERSION_FIELDS` and `time`.
    #[must_use]
    pub fn render(&self, base_url: &str) -> Rendered {
        let rev = self.rev_string();
        let full = serde_json::to_vec(&FullDoc {
            doc: &self.doc,
            rev: &rev,
            base_url,
        })
        .expect("a JSON value tree always serializes");
        let abbreviated = serde_json::to_vec(&AbbreviatedDoc {
            stored: self,
            base_url,
        })
        .expect("a JSON value tree always serializes");
        Rendered { full, abbreviated }
    }
}

/// The full packument, as `StoredPackage::render` describes it.
struct FullDoc<'a> {
    doc: &'a Map<String, Value>,
    rev: &'a str,
    base_url: &'a str,
}

impl Serialize for FullDoc<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let has_rev = self.doc.contains_key("_rev");
        let mut map = serializer.serialize_map(Some(self.doc.len() + usize::from(!has_rev)))?;
        for (key, value) in self.doc {
            match (key.as_str(), value) {
                ("_rev", _) => map.serialize_entry(key, self.rev)?,
                ("versions", Value::Object(versions)) => map.serialize_entry(
                    key,
                    &Versions {
                        versions,
                        base_url: self.base_url,
                        abbreviated: false,
                    },
                )?,
                _ => map.serialize_entry(key, value)?,
            }
        }
        if !has_rev {
            map.serialize_entry("_rev", self.rev)?;
        }
        map.end()
    }
}

/// The abbreviated packument.
struct AbbreviatedDoc<'a> {
    stored: &'a StoredPackage,
    base_url: &'a str,
}

impl Serialize for AbbreviatedDoc<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let doc = &self.stored.doc;
        let time = doc.get("time");
        let mut map = serializer.serialize_map(Some(4 + usize::from(time.is_some())))?;
        map.serialize_entry("name", self.stored.name())?;
        let modified = time.and_then(|t| t.get("modified")).unwrap_or(&Value::Null);
        map.serialize_entry("modified", modified)?;
        match doc.get("dist-tags") {
            Some(tags) => map.serialize_entry("dist-tags", tags)?,
            None => map.serialize_entry("dist-tags", &Map::new())?,
        }
        match doc.get("versions") {
            Some(Value::Object(versions)) => map.serialize_entry(
                "versions",
                &Versions {
                    versions,
                    base_url: self.base_url,
                    abbreviated: true,
                },
            )?,
            _ => map.serialize_entry("versions", &Map::new())?,
        }
        if let Some(time) = time {
            map.serialize_entry("time", time)?;
        }
        map.end()
    }
}

/// A `versions` object with absolute tarball URLs, each manifest whole or abbreviated.
struct Versions<'a> {
    versions: &'a Map<String, Value>,
    base_url: &'a str,
    abbreviated: bool,
}

impl Serialize for Versions<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.versions.len()))?;
        for (version, manifest) in self.versions {
            let manifest = Manifest {
                manifest,
                base_url: self.base_url,
                abbreviated: self.abbreviated,
            };
            map.serialize_entry(version, &manifest)?;
        }
        map.end()
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
        match serde_json::from_slice::<FactsRecord<'_>>(bytes) {
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

    /// The rendering as it was done before `render` serialized straight from the document:
    /// a copy of the document, changed, then serialized. `render` must give the same bytes.
    fn render_reference(stored: &StoredPackage, base_url: &str) -> Rendered {
        let mut full = stored.doc.clone();
        full.insert("_rev".into(), Value::String(stored.rev_string()));
        if let Some(Value::Object(versions)) = full.get_mut("versions") {
            for manifest in versions.values_mut() {
                absolutize_tarball(manifest, base_url);
            }
        }
        let mut abbreviated = Map::new();
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
        let mut versions_abbreviated = Map::new();
        if let Some(Value::Object(versions)) = full.get("versions") {
            for (version, manifest) in versions {
                versions_abbreviated.insert(version.clone(), abbreviate(manifest));
            }
        }
        abbreviated.insert("versions".into(), Value::Object(versions_abbreviated));
        if let Some(time) = stored.doc.get("time") {
            abbreviated.insert("time".into(), time.clone());
        }
        Rendered {
            full: serde_json::to_vec(&full).unwrap(),
            abbreviated: serde_json::to_vec(&abbreviated).unwrap(),
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
                let reference = render_reference(&stored, base);
                assert_eq!(
                    String::from_utf8(ours.full).unwrap(),
                    String::from_utf8(reference.full).unwrap()
                );
                assert_eq!(
                    String::from_utf8(ours.abbreviated).unwrap(),
                    String::from_utf8(reference.abbreviated).unwrap()
                );
            }
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
}
