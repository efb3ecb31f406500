//! Publishing: parse npm's publish document (`PUT /NAME`), then plan the change to a stored
//! package. Both steps are pure: `parse_publish` turns untrusted bytes into validated values
//! (names, versions, decoded tarballs with verified checksums), and the `plan_*` functions
//! compute the next `StoredPackage` or refuse. `ShardStore` applies plans.
//!
//! Every tarball is read (`tarball::inspect`, never unpacked) after its checksums verify: it
//! must be a readable npm tarball whose `package.json` has the published name and version, so
//! the registry never serves a manifest that disagrees with what clients install ("manifest
//! confusion"). Its file count and unpacked size become `dist.fileCount` and
//! `dist.unpackedSize` when the client sent none.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::blob::BlobId;
use crate::integrity::{self, IntegrityError};
use crate::limits;
use crate::names::{DistTag, DistTagError, NameError, PackageName, Version, VersionError};
use crate::packument::{StoredPackage, TarballRef};
use crate::tarball::{self, TarballError, TarballLimits};

/// Why a publish (or a dist-tag change) was refused. Each variant maps to one HTTP status in
/// the server's `api_error.rs`.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the publish body is not valid JSON: {detail}")]
    MalformedJson { detail: String },
    #[error("the publish body is missing {field}")]
    Missing { field: &'static str },
    #[error("{field} is not of the expected type: {detail}")]
    WrongType { field: String, detail: &'static str },
    #[error("package name in the URL ({url:?}) and in the body ({body:?}) differ")]
    NameMismatch { url: String, body: String },
    #[error("invalid package name: {0}")]
    InvalidName(#[from] NameError),
    #[error("invalid version: {0}")]
    InvalidVersion(#[from] VersionError),
    #[error("invalid dist-tag: {0}")]
    InvalidDistTag(#[from] DistTagError),
    #[error("version key {key:?} and manifest version {manifest:?} differ")]
    VersionMismatch { key: String, manifest: String },
    #[error("no tarball attachment for version {version}")]
    MissingAttachment { version: String },
    #[error("{count} attachments for {versions} new versions: each version needs exactly one")]
    AttachmentCount { count: usize, versions: usize },
    #[error("attachment {file:?} is not valid base64")]
    BadBase64 { file: String },
    #[error("attachment {file:?} declares length {declared} but decodes to {actual} bytes")]
    LengthMismatch {
        file: String,
        declared: u64,
        actual: usize,
    },
    #[error("tarball of {size} bytes exceeds the limit of {max} bytes")]
    TarballTooLarge { size: usize, max: usize },
    #[error("the publish body has no versions")]
    NoVersions,
    #[error("{0}")]
    Integrity(#[from] IntegrityError),
    #[error("the tarball of version {version} is refused: {problem}")]
    BadTarball {
        version: String,
        problem: TarballProblem,
    },
    #[error("{name}@{version} already exists with different content; versions are immutable")]
    VersionExists { name: String, version: String },
    #[error("{name}@{version} was published before and unpublished; it cannot be reused")]
    VersionReused { name: String, version: String },
    #[error("user {user:?} is not a maintainer of {name}")]
    NotMaintainer { name: String, user: String },
    #[error("package {name} not found")]
    PackageNotFound { name: String },
    #[error("version {version} of {name} does not exist")]
    VersionNotFound { name: String, version: String },
    #[error("dist-tag {tag:?} does not exist on {name}")]
    TagNotFound { name: String, tag: String },
    #[error(
        "revision {given:?} is not the current revision {current:?} of {name}; reload and retry"
    )]
    RevConflict {
        name: String,
        given: String,
        current: String,
    },
    #[error("the revision in the URL ({url:?}) and the body's _rev ({body:?}) differ")]
    RevMismatch { url: String, body: String },
    #[error("{rev:?} is not a revision (expected N-hex, as in the document's _rev)")]
    BadRev { rev: String },
    #[error("a package needs at least one maintainer")]
    NoMaintainers,
    #[error("user {user:?} does not exist")]
    UnknownUser { user: String },
    #[error("the latest dist-tag cannot be removed")]
    LatestTagRequired,
    #[error("{name} would have {count} versions, over the limit of {max}")]
    TooManyVersions {
        name: String,
        count: usize,
        max: usize,
    },
}

/// Why a version's tarball was refused (`PublishError::BadTarball`).
#[derive(Debug, thiserror::Error)]
pub enum TarballProblem {
    #[error("{0}")]
    Unreadable(#[from] TarballError),
    #[error("its package.json is not a JSON object: {detail}")]
    PackageJson { detail: String },
    #[error(
        "its package.json has {field} {}, but the published manifest has {manifest:?}",
        describe(tarball.as_deref())
    )]
    Disagrees {
        field: &'static str,
        tarball: Option<String>,
        manifest: String,
    },
}

fn describe(value: Option<&str>) -> String {
    value.map_or_else(|| "none".to_owned(), |v| format!("{v:?}"))
}

/// One new version in a publish: manifest and decoded, verified tarball.
#[derive(Debug)]
pub struct NewVersion {
    pub version: Version,
    pub manifest: Map<String, Value>,
    pub tarball: Vec<u8>,
    pub blob: BlobId,
    pub checksums: integrity::Checksums,
    /// Regular files in the tarball (`dist.fileCount`).
    pub file_count: u64,
    /// Sum of the tarball's file sizes in bytes (`dist.unpackedSize`).
    pub unpacked_size: u64,
}

/// A validated publish request.
#[derive(Debug)]
pub struct PublishRequest {
    pub name: PackageName,
    pub versions: Vec<NewVersion>,
    pub dist_tags: Vec<(DistTag, Version)>,
}

#[derive(Deserialize)]
pub(crate) struct RawBody {
    #[serde(rename = "_id")]
    id: Option<Value>,
    name: Option<Value>,
    #[serde(rename = "_rev")]
    pub(crate) rev: Option<Value>,
    #[serde(rename = "dist-tags")]
    pub(crate) dist_tags: Option<Value>,
    pub(crate) versions: Option<Value>,
    #[serde(rename = "_attachments")]
    attachments: Option<Value>,
    pub(crate) maintainers: Option<Value>,
}

/// What a `PUT /NAME` carries: new versions (with tarballs), or a metadata update of an
/// existing package (deprecate, unpublish of versions, dist-tags, owners).
#[derive(Debug)]
pub enum PackagePut {
    Publish(PublishRequest),
    Update(crate::update::UpdateRequest),
}

/// Parses a `PUT /NAME` body: a publish when it carries attachments, else a metadata update.
///
/// # Errors
/// The first problem found.
pub fn parse_package_put(
    url_name: &PackageName,
    body: &mut [u8],
) -> Result<PackagePut, PublishError> {
    let raw = parse_raw(url_name, body)?;
    let has_attachments = matches!(&raw.attachments, Some(Value::Object(a)) if !a.is_empty());
    if has_attachments {
        publish_from_raw(url_name, raw).map(PackagePut::Publish)
    } else {
        crate::update::update_from_raw(url_name, raw).map(PackagePut::Update)
    }
}

fn parse_raw(url_name: &PackageName, body: &mut [u8]) -> Result<RawBody, PublishError> {
    let raw: RawBody =
        simd_json::serde::from_slice(body).map_err(|e| PublishError::MalformedJson {
            detail: truncate(&e.to_string()),
        })?;
    for (field, value) in [("name", &raw.name), ("_id", &raw.id)] {
        match value {
            None => {}
            Some(Value::String(s)) if s == url_name.as_str() => {}
            Some(Value::String(s)) => {
                return Err(PublishError::NameMismatch {
                    url: url_name.as_str().to_owned(),
                    body: truncate(s),
                })
            }
            Some(_) => return Err(wrong_type(field, "expected a string")),
        }
    }
    Ok(raw)
}

/// Parses and validates npm's publish document for the package named in the URL. Every tarball
/// is base64-decoded, checked against its declared length and checksums, hashed (blake3), and
/// read (`check_tarball`). `body` is modified in place (simd-json parses destructively).
///
/// # Errors
/// The first problem found, as a `PublishError` naming it.
pub fn parse_publish(
    url_name: &PackageName,
    body: &mut [u8],
) -> Result<PublishRequest, PublishError> {
    let raw = parse_raw(url_name, body)?;
    publish_from_raw(url_name, raw)
}

fn publish_from_raw(url_name: &PackageName, raw: RawBody) -> Result<PublishRequest, PublishError> {
    let versions = match raw.versions {
        Some(Value::Object(v)) => v,
        None => return Err(PublishError::Missing { field: "versions" }),
        Some(_) => return Err(wrong_type("versions", "expected an object")),
    };
    if versions.is_empty() {
        return Err(PublishError::NoVersions);
    }
    let mut attachments = match raw.attachments {
        Some(Value::Object(a)) => a,
        None => {
            return Err(PublishError::Missing {
                field: "_attachments",
            })
        }
        Some(_) => return Err(wrong_type("_attachments", "expected an object")),
    };
    if attachments.len() != versions.len() {
        return Err(PublishError::AttachmentCount {
            count: attachments.len(),
            versions: versions.len(),
        });
    }
    let single = versions.len() == 1;
    let mut new_versions = Vec::with_capacity(versions.len());
    for (key, manifest) in versions {
        let version = Version::parse(&key)?;
        let Value::Object(manifest) = manifest else {
            return Err(wrong_type(
                &format!("versions[{key}]"),
                "expected an object",
            ));
        };
        check_manifest(url_name, &key, &manifest)?;
        let file_key = pick_attachment(&attachments, url_name, &version, single)?;
        let attachment = attachments
            .remove(&file_key)
            .expect("pick_attachment returned a key");
        new_versions.push(decode_version(
            url_name,
            version,
            manifest,
            &file_key,
            &attachment,
        )?);
    }
    let dist_tags = parse_dist_tags(raw.dist_tags)?;
    Ok(PublishRequest {
        name: url_name.clone(),
        versions: new_versions,
        dist_tags,
    })
}

fn check_manifest(
    url_name: &PackageName,
    key: &str,
    manifest: &Map<String, Value>,
) -> Result<(), PublishError> {
    match manifest.get("name") {
        Some(Value::String(n)) if n == url_name.as_str() => {}
        Some(Value::String(n)) => {
            return Err(PublishError::NameMismatch {
                url: url_name.as_str().to_owned(),
                body: truncate(n),
            })
        }
        Some(_) => return Err(wrong_type("versions[].name", "expected a string")),
        None => {
            return Err(PublishError::Missing {
                field: "versions[].name",
            })
        }
    }
    match manifest.get("version") {
        Some(Value::String(v)) if v == key => Ok(()),
        Some(Value::String(v)) => Err(PublishError::VersionMismatch {
            key: truncate(key),
            manifest: truncate(v),
        }),
        Some(_) => Err(wrong_type("versions[].version", "expected a string")),
        None => Err(PublishError::Missing {
            field: "versions[].version",
        }),
    }
}

/// npm names the attachment `{name}-{version}.tgz` (scope included); older clients used the
/// basename. A single version with a single attachment pairs regardless of the key.
fn pick_attachment(
    attachments: &Map<String, Value>,
    name: &PackageName,
    version: &Version,
    single: bool,
) -> Result<String, PublishError> {
    let full = format!("{}-{}.tgz", name.as_str(), version.as_str());
    let base = name.tarball_file(version);
    for candidate in [&full, &base] {
        if attachments.contains_key(candidate.as_str()) {
            return Ok(candidate.clone());
        }
    }
    if single {
        if let Some(key) = attachments.keys().next() {
            return Ok(key.clone());
        }
    }
    Err(PublishError::MissingAttachment {
        version: version.as_str().to_owned(),
    })
}

fn decode_version(
    name: &PackageName,
    version: Version,
    manifest: Map<String, Value>,
    file: &str,
    attachment: &Value,
) -> Result<NewVersion, PublishError> {
    let Value::Object(attachment) = attachment else {
        return Err(wrong_type("_attachments[]", "expected an object"));
    };
    let data = match attachment.get("data") {
        Some(Value::String(d)) => d,
        Some(_) => {
            return Err(wrong_type(
                "_attachments[].data",
                "expected a base64 string",
            ))
        }
        None => {
            return Err(PublishError::Missing {
                field: "_attachments[].data",
            })
        }
    };
    if data.len() / 4 * 3 > limits::TARBALL_BYTES_MAX + 3 {
        return Err(PublishError::TarballTooLarge {
            size: data.len() / 4 * 3,
            max: limits::TARBALL_BYTES_MAX,
        });
    }
    let tarball = base64_simd::STANDARD
        .decode_to_vec(data.as_bytes())
        .map_err(|_| PublishError::BadBase64 {
            file: truncate(file),
        })?;
    if tarball.len() > limits::TARBALL_BYTES_MAX {
        return Err(PublishError::TarballTooLarge {
            size: tarball.len(),
            max: limits::TARBALL_BYTES_MAX,
        });
    }
    match attachment.get("length") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => {
            let declared = n.as_u64().ok_or_else(|| {
                wrong_type("_attachments[].length", "expected a non-negative integer")
            })?;
            if usize::try_from(declared).ok() != Some(tarball.len()) {
                return Err(PublishError::LengthMismatch {
                    file: truncate(file),
                    declared,
                    actual: tarball.len(),
                });
            }
        }
        Some(_) => return Err(wrong_type("_attachments[].length", "expected a number")),
    }
    let checksums = integrity::compute(&tarball);
    let dist = manifest.get("dist").and_then(Value::as_object);
    let claimed = |field: &str| dist.and_then(|d| d.get(field)).and_then(Value::as_str);
    integrity::verify(
        &checksums,
        &tarball,
        claimed("integrity"),
        claimed("shasum"),
    )?;
    let summary = check_tarball(name, &version, &tarball)?;
    let blob = BlobId::of(&tarball);
    Ok(NewVersion {
        version,
        manifest,
        tarball,
        blob,
        checksums,
        file_count: summary.file_count,
        unpacked_size: summary.unpacked_size,
    })
}

/// Reads `tarball` within the registry's limits and checks that its `package.json` names the
/// package and version being published. npm normalizes the manifest it sends (a leading `v` or
/// `=` is dropped, build metadata may be), so the version compares by semver precedence.
///
/// # Errors
/// `BadTarball` when the archive is unreadable, has no package.json, or disagrees.
fn check_tarball(
    name: &PackageName,
    version: &Version,
    tarball: &[u8],
) -> Result<tarball::TarballSummary, PublishError> {
    let refuse = |problem| PublishError::BadTarball {
        version: version.as_str().to_owned(),
        problem,
    };
    let summary = tarball::inspect(tarball, &TarballLimits::DEFAULT)
        .map_err(|e| refuse(TarballProblem::Unreadable(e)))?;
    let json: Map<String, Value> = serde_json::from_slice(&summary.package_json).map_err(|e| {
        refuse(TarballProblem::PackageJson {
            detail: truncate(&e.to_string()),
        })
    })?;
    let text = |field: &str| json.get(field).and_then(Value::as_str);
    let tarball_name = text("name").map(str::trim);
    if tarball_name != Some(name.as_str()) {
        return Err(refuse(TarballProblem::Disagrees {
            field: "name",
            tarball: tarball_name.map(truncate),
            manifest: name.as_str().to_owned(),
        }));
    }
    let tarball_version = text("version");
    let same_version = tarball_version.is_some_and(|v| {
        v == version.as_str()
            || semver::Version::parse(v.trim().trim_start_matches(['=', 'v']))
                .is_ok_and(|v| v.cmp_precedence(&version.semver()).is_eq())
    });
    if !same_version {
        return Err(refuse(TarballProblem::Disagrees {
            field: "version",
            tarball: tarball_version.map(truncate),
            manifest: version.as_str().to_owned(),
        }));
    }
    Ok(summary)
}

pub(crate) fn parse_dist_tags(raw: Option<Value>) -> Result<Vec<(DistTag, Version)>, PublishError> {
    let tags = match raw {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(tags)) => tags,
        Some(_) => return Err(wrong_type("dist-tags", "expected an object")),
    };
    let mut out = Vec::with_capacity(tags.len());
    for (tag, version) in tags {
        let Value::String(version) = version else {
            return Err(wrong_type(
                &format!("dist-tags[{tag}]"),
                "expected a version string",
            ));
        };
        out.push((DistTag::parse(&tag)?, Version::parse(&version)?));
    }
    Ok(out)
}

/// What a planned write produces.
#[derive(Debug)]
pub struct Plan {
    /// The package after the change.
    pub stored: StoredPackage,
    /// Blobs that must be durable before the metadata commits: (version naming it, id,
    /// bytes). The writer stores an inline-sized one in a row and records the row in that
    /// version's `TarballRef`.
    pub blobs: Vec<(String, BlobId, Vec<u8>)>,
    /// False when the request repeated an already-applied publish (idempotent retry).
    pub changed: bool,
}

/// Plans a publish by `user` at `now` onto `current` (None for a new package).
///
/// Re-publishing a version with byte-identical content is an idempotent no-op (a retried
/// request whose first answer was lost); different content is `VersionExists`.
///
/// # Errors
/// `NotMaintainer`, `VersionExists`, `VersionReused`, `VersionNotFound` (a dist-tag naming a
/// version that does not exist), `TooManyVersions`.
pub fn plan_publish(
    current: Option<StoredPackage>,
    request: PublishRequest,
    user: &str,
    now: SystemTime,
) -> Result<Plan, PublishError> {
    let name = request.name.as_str().to_owned();
    let now = humantime::format_rfc3339_millis(now).to_string();
    let mut stored = current.unwrap_or_else(|| new_package(&request.name, user, &now));
    check_maintainer(&stored, &name, user)?;
    let mut blobs = Vec::new();
    let mut added = Vec::new();
    for mut new in request.versions {
        let version = new.version.as_str().to_owned();
        // A request names each version once, so the versions seen here are the stored ones.
        if stored.versions().is_some_and(|v| v.contains_key(&version)) {
            let same = stored
                .tarballs
                .get(&version)
                .is_some_and(|t| t.blob == new.blob.to_hex());
            if same {
                continue;
            }
            return Err(PublishError::VersionExists { name, version });
        }
        let time = stored.doc.get("time").and_then(Value::as_object);
        if time.is_some_and(|t| t.contains_key(&version)) {
            return Err(PublishError::VersionReused { name, version });
        }
        let file = request.name.tarball_file(&new.version);
        let manifest = std::mem::take(&mut new.manifest);
        let manifest = finish_manifest(manifest, &request.name, &new, &file, user);
        stored.tarballs.insert(
            version.clone(),
            TarballRef {
                file,
                blob: new.blob.to_hex(),
                size: new.tarball.len() as u64,
                row: None,
            },
        );
        versions_mut(&mut stored).insert(version.clone(), Value::Object(manifest));
        time_mut(&mut stored).insert(version.clone(), Value::String(now.clone()));
        blobs.push((version.clone(), new.blob, new.tarball));
        added.push(new.version);
    }
    let count = stored.versions().map_or(0, Map::len);
    if count > limits::VERSIONS_PER_PACKAGE_MAX {
        return Err(PublishError::TooManyVersions {
            name,
            count,
            max: limits::VERSIONS_PER_PACKAGE_MAX,
        });
    }
    let mut tags_changed = false;
    for (tag, version) in &request.dist_tags {
        if stored
            .versions()
            .is_none_or(|v| !v.contains_key(version.as_str()))
        {
            return Err(PublishError::VersionNotFound {
                name,
                version: version.to_string(),
            });
        }
        let tags = dist_tags_mut(&mut stored);
        if tags.get(tag.as_str()).and_then(Value::as_str) != Some(version.as_str()) {
            tags.insert(
                tag.as_str().to_owned(),
                Value::String(version.as_str().to_owned()),
            );
            tags_changed = true;
        }
    }
    if stored
        .doc
        .get("dist-tags")
        .is_none_or(|t| t.get("latest").is_none())
    {
        if let Some(highest) = added.iter().max_by(|a, b| a.semver().cmp(&b.semver())) {
            dist_tags_mut(&mut stored)
                .insert("latest".into(), Value::String(highest.as_str().to_owned()));
            tags_changed = true;
        }
    }
    let changed = !added.is_empty() || tags_changed;
    if changed {
        refresh_top_level(&mut stored);
        time_mut(&mut stored).insert("modified".into(), Value::String(now));
        stored.rev += 1;
    }
    Ok(Plan {
        stored,
        blobs,
        changed,
    })
}

/// Plans `dist-tag add`: point `tag` at an existing `version`.
///
/// # Errors
/// `PackageNotFound`, `NotMaintainer`, `VersionNotFound`.
pub fn plan_dist_tag_set(
    current: Option<StoredPackage>,
    name: &PackageName,
    tag: &DistTag,
    version: &Version,
    user: &str,
    now: SystemTime,
) -> Result<Plan, PublishError> {
    let mut stored = current.ok_or_else(|| not_found(name))?;
    check_maintainer(&stored, name.as_str(), user)?;
    if stored
        .versions()
        .is_none_or(|v| !v.contains_key(version.as_str()))
    {
        return Err(PublishError::VersionNotFound {
            name: name.as_str().to_owned(),
            version: version.as_str().to_owned(),
        });
    }
    let tags = dist_tags_mut(&mut stored);
    let changed = tags.get(tag.as_str()).and_then(Value::as_str) != Some(version.as_str());
    if changed {
        tags.insert(
            tag.as_str().to_owned(),
            Value::String(version.as_str().to_owned()),
        );
        touch(&mut stored, now);
    }
    Ok(Plan {
        stored,
        blobs: Vec::new(),
        changed,
    })
}

/// Plans `dist-tag rm`. Removing a tag that is already absent is `TagNotFound`; `latest`
/// cannot be removed (clients resolve installs through it).
///
/// # Errors
/// `PackageNotFound`, `NotMaintainer`, `TagNotFound`, `LatestTagRequired`.
pub fn plan_dist_tag_remove(
    current: Option<StoredPackage>,
    name: &PackageName,
    tag: &DistTag,
    user: &str,
    now: SystemTime,
) -> Result<Plan, PublishError> {
    let mut stored = current.ok_or_else(|| not_found(name))?;
    check_maintainer(&stored, name.as_str(), user)?;
    if tag.as_str() == "latest" {
        return Err(PublishError::LatestTagRequired);
    }
    if dist_tags_mut(&mut stored).remove(tag.as_str()).is_none() {
        return Err(PublishError::TagNotFound {
            name: name.as_str().to_owned(),
            tag: tag.as_str().to_owned(),
        });
    }
    touch(&mut stored, now);
    Ok(Plan {
        stored,
        blobs: Vec::new(),
        changed: true,
    })
}

fn touch(stored: &mut StoredPackage, now: SystemTime) {
    let now = humantime::format_rfc3339_millis(now).to_string();
    time_mut(stored).insert("modified".into(), Value::String(now));
    stored.rev += 1;
}

pub(crate) fn not_found(name: &PackageName) -> PublishError {
    PublishError::PackageNotFound {
        name: name.as_str().to_owned(),
    }
}

fn new_package(name: &PackageName, user: &str, now: &str) -> StoredPackage {
    let mut doc = Map::new();
    doc.insert("_id".into(), Value::String(name.as_str().to_owned()));
    doc.insert("name".into(), Value::String(name.as_str().to_owned()));
    doc.insert("dist-tags".into(), Value::Object(Map::new()));
    doc.insert("versions".into(), Value::Object(Map::new()));
    let mut time = Map::new();
    time.insert("created".into(), Value::String(now.to_owned()));
    time.insert("modified".into(), Value::String(now.to_owned()));
    doc.insert("time".into(), Value::Object(time));
    doc.insert("maintainers".into(), Value::Array(vec![maintainer(user)]));
    StoredPackage {
        rev: 0,
        doc,
        tarballs: BTreeMap::new(),
    }
}

pub(crate) fn maintainer(user: &str) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), Value::String(user.to_owned()));
    Value::Object(m)
}

pub(crate) fn check_maintainer(
    stored: &StoredPackage,
    name: &str,
    user: &str,
) -> Result<(), PublishError> {
    let is_maintainer = stored
        .doc
        .get("maintainers")
        .and_then(Value::as_array)
        .is_some_and(|m| {
            m.iter()
                .any(|m| m.get("name").and_then(Value::as_str) == Some(user))
        });
    if is_maintainer {
        Ok(())
    } else {
        Err(PublishError::NotMaintainer {
            name: name.to_owned(),
            user: user.to_owned(),
        })
    }
}

fn finish_manifest(
    mut manifest: Map<String, Value>,
    name: &PackageName,
    new: &NewVersion,
    file: &str,
    user: &str,
) -> Map<String, Value> {
    manifest.insert(
        "_id".into(),
        Value::String(format!("{}@{}", name, new.version)),
    );
    manifest.insert("_npmUser".into(), maintainer(user));
    manifest.remove("readme");
    manifest.remove("readmeFilename");
    let install_script = manifest
        .get("scripts")
        .and_then(Value::as_object)
        .is_some_and(|s| {
            ["preinstall", "install", "postinstall"]
                .iter()
                .any(|k| s.contains_key(*k))
        });
    if install_script {
        manifest.insert("hasInstallScript".into(), Value::Bool(true));
    }
    let mut dist = match manifest.remove("dist") {
        Some(Value::Object(d)) => d,
        _ => Map::new(),
    };
    dist.retain(|k, v| matches!(k.as_str(), "fileCount" | "unpackedSize") && v.is_u64());
    dist.entry("fileCount")
        .or_insert_with(|| Value::from(new.file_count));
    dist.entry("unpackedSize")
        .or_insert_with(|| Value::from(new.unpacked_size));
    dist.insert(
        "integrity".into(),
        Value::String(new.checksums.integrity.clone()),
    );
    dist.insert("shasum".into(), Value::String(new.checksums.shasum.clone()));
    dist.insert("tarball".into(), Value::String(format!("{name}/-/{file}")));
    manifest.insert("dist".into(), Value::Object(dist));
    manifest
}

/// Copies the descriptive fields of the `latest` version to the top of the document, as npm's
/// registry does.
pub(crate) fn refresh_top_level(stored: &mut StoredPackage) {
    const FIELDS: [&str; 7] = [
        "description",
        "license",
        "keywords",
        "homepage",
        "repository",
        "bugs",
        "author",
    ];
    let latest = stored
        .doc
        .get("dist-tags")
        .and_then(|tags| tags.get("latest"))
        .and_then(Value::as_str);
    let Some(manifest) = latest.and_then(|l| stored.versions()?.get(l)) else {
        return;
    };
    // Only the fields copied, not the whole manifest.
    let values = FIELDS.map(|field| manifest.get(field).cloned());
    for (field, value) in FIELDS.into_iter().zip(values) {
        match value {
            Some(value) => stored.doc.insert(field.to_owned(), value),
            None => stored.doc.remove(field),
        };
    }
}

pub(crate) fn versions_mut(stored: &mut StoredPackage) -> &mut Map<String, Value> {
    object_mut(stored, "versions")
}

pub(crate) fn dist_tags_mut(stored: &mut StoredPackage) -> &mut Map<String, Value> {
    object_mut(stored, "dist-tags")
}

pub(crate) fn time_mut(stored: &mut StoredPackage) -> &mut Map<String, Value> {
    object_mut(stored, "time")
}

fn object_mut<'a>(stored: &'a mut StoredPackage, key: &str) -> &'a mut Map<String, Value> {
    let slot = stored
        .doc
        .entry(key)
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().expect("just made an object")
}

pub(crate) fn wrong_type(field: &str, detail: &'static str) -> PublishError {
    PublishError::WrongType {
        field: truncate(field),
        detail,
    }
}

pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packument::AppendWants;
    use proptest::prelude::*;
    use std::io::Write;

    /// A gzip'd npm tarball: `package/package.json` naming `name@version`, and one more file.
    fn tgz(name: &str, version: &str) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let manifest = serde_json::json!({"name": name, "version": version}).to_string();
        for (path, body) in [
            ("package/package.json", manifest.as_bytes()),
            ("package/index.js", &b"module.exports = 1;\n"[..]),
        ] {
            let mut header = tar::Header::new_ustar();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, body).unwrap();
        }
        let tar = builder.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    fn valid_body(tarball: &[u8]) -> Vec<u8> {
        let checksums = integrity::compute(tarball);
        serde_json::to_vec(&serde_json::json!({
            "_id": "a", "name": "a", "dist-tags": {"latest": "1.0.0"},
            "versions": {"1.0.0": {"name": "a", "version": "1.0.0",
                "dist": {"integrity": checksums.integrity, "shasum": checksums.shasum}}},
            "_attachments": {"a-1.0.0.tgz": {"content_type": "application/octet-stream",
                "data": base64_simd::STANDARD.encode_to_string(tarball),
                "length": tarball.len()}}
        }))
        .unwrap()
    }

    fn parse(tarball: &[u8]) -> Result<PublishRequest, PublishError> {
        let name = PackageName::parse("a").unwrap();
        parse_publish(&name, &mut valid_body(tarball))
    }

    #[test]
    fn valid_body_parses_and_blob_matches() {
        let tarball = tgz("a", "1.0.0");
        let request = parse(&tarball).unwrap();
        assert_eq!(request.versions.len(), 1);
        assert_eq!(request.versions[0].blob, BlobId::of(&tarball));
        assert_eq!(request.versions[0].file_count, 2);
        assert_eq!(
            request.versions[0].unpacked_size,
            (r#"{"name":"a","version":"1.0.0"}"#.len() + 20) as u64
        );
    }

    #[test]
    fn tarball_that_is_not_an_npm_tarball_is_refused() {
        let e = parse(b"tarball").unwrap_err();
        assert!(
            matches!(
                &e,
                PublishError::BadTarball {
                    problem: TarballProblem::Unreadable(TarballError::NotGzip),
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "the tarball of version 1.0.0 is refused: the tarball is not gzip-compressed"
        );
    }

    /// Manifest confusion: the tarball's package.json must name the published name@version.
    #[test]
    fn tarball_naming_another_package_or_version_is_refused() {
        for (name, version, field) in [("b", "1.0.0", "name"), ("a", "1.0.1", "version")] {
            let e = parse(&tgz(name, version)).unwrap_err();
            assert!(
                matches!(&e, PublishError::BadTarball {
                    problem: TarballProblem::Disagrees { field: f, .. }, ..
                } if *f == field),
                "{e:?}"
            );
        }
        let e = parse(&tgz("b", "1.0.0")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the tarball of version 1.0.0 is refused: its package.json has name \"b\", \
             but the published manifest has \"a\""
        );
        // npm drops a leading `v` from the manifest it sends, not from the packed package.json.
        assert!(parse(&tgz("a", "v1.0.0")).is_ok());
        assert!(parse(&tgz("a", "1.0.0-rc.1")).is_err());
    }

    #[test]
    fn stored_manifest_gets_file_count_and_unpacked_size() {
        let request = parse(&tgz("a", "1.0.0")).unwrap();
        let (file_count, unpacked_size) = (
            request.versions[0].file_count,
            request.versions[0].unpacked_size,
        );
        let plan = plan_publish(None, request, "alice", SystemTime::UNIX_EPOCH).unwrap();
        let dist = &plan.stored.versions().unwrap()["1.0.0"]["dist"];
        assert_eq!(dist["fileCount"], file_count);
        assert_eq!(dist["unpackedSize"], unpacked_size);

        // Values the client sent are kept.
        let tarball = tgz("a", "1.0.0");
        let mut body: Value = serde_json::from_slice(&valid_body(&tarball)).unwrap();
        body["versions"]["1.0.0"]["dist"]["fileCount"] = Value::from(7);
        body["versions"]["1.0.0"]["dist"]["unpackedSize"] = Value::from(1234);
        let name = PackageName::parse("a").unwrap();
        let request = parse_publish(&name, &mut serde_json::to_vec(&body).unwrap()).unwrap();
        let plan = plan_publish(None, request, "alice", SystemTime::UNIX_EPOCH).unwrap();
        let dist = &plan.stored.versions().unwrap()["1.0.0"]["dist"];
        assert_eq!(dist["fileCount"], 7);
        assert_eq!(dist["unpackedSize"], 1234);
    }

    /// A publish of `version` with `description` and the given dist-tags, as parsed.
    fn request(version: &str, description: &str, tags: &[(&str, &str)]) -> PublishRequest {
        let tarball = format!("tarball of {version} {description}").into_bytes();
        let Value::Object(manifest) = serde_json::json!({
            "name": "a", "version": version, "description": description,
            "dependencies": {"b": "^1.0.0"}, "keywords": ["x", "y\"z"]
        }) else {
            unreachable!()
        };
        PublishRequest {
            dist_tags: tags
                .iter()
                .map(|(t, v)| (DistTag::parse(t).unwrap(), Version::parse(v).unwrap()))
                .collect(),
            ..crate::fixture::one_version("a", version, manifest, tarball)
        }
    }

    /// Planning a publish on a record decoded for appending (old manifests as placeholders,
    /// their bytes kept) and writing it back with `encode_with` gives the record that
    /// planning on the fully decoded package and `encode` give: new versions, tags onto new
    /// and old versions, the top-level fields copied from whichever version `latest` names,
    /// idempotent retries and refusals alike.
    #[test]
    fn publishes_planned_on_kept_versions_match_the_full_decode() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let mut stored = plan_publish(None, request("1.0.0", "one", &[]), "alice", now)
            .unwrap()
            .stored;
        for (i, version) in ["1.0.1", "1.0.2", "1.0.3", "1.0.4", "1.0.5"]
            .iter()
            .enumerate()
        {
            let description = format!("release {i} \u{e9}\n");
            stored = plan_publish(
                Some(stored),
                request(version, &description, &[]),
                "alice",
                now,
            )
            .unwrap()
            .stored;
        }
        stored.doc.insert(
            "dist-tags".into(),
            serde_json::json!({"latest": "1.0.2", "next": "1.0.5"}),
        );
        let bytes = stored.encode();
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
        let cases: [Case<'_>; 8] = [
            ("1.0.6", "six", &[]),
            ("1.0.6", "six", &[("latest", "1.0.6")]),
            ("1.0.6", "six", &[("latest", "1.0.3")]),
            ("1.0.6", "six", &[("beta", "1.0.1"), ("latest", "1.0.4")]),
            ("1.0.5", "release 4 \u{e9}\n", &[]),
            // A retry of a version neither tagged nor last: its tarball entry is decoded
            // because the publish names it.
            ("1.0.3", "release 2 \u{e9}\n", &[]),
            ("1.0.4", "other content", &[]),
            ("1.0.7", "seven", &[("latest", "9.9.9")]),
        ];
        for (version, description, tags) in cases {
            let full = plan_publish(
                Some(StoredPackage::decode(&bytes).unwrap()),
                request(version, description, tags),
                "alice",
                now,
            );
            // What the writer names: the versions the tags name and the one published, and
            // the tags set (the record's versions for those are not decoded).
            let mut named: Vec<&str> = tags.iter().map(|(_, v)| *v).collect();
            named.push(version);
            let set: Vec<&str> = tags.iter().map(|(t, _)| *t).collect();
            let wants = AppendWants {
                versions: &named,
                tags: &set,
                windows_at: None,
            };
            let (placeholder, kept) = StoredPackage::decode_for_append(&bytes, &wants).unwrap();
            assert_eq!(kept.count(), 6);
            let fast = plan_publish(
                Some(placeholder),
                request(version, description, tags),
                "alice",
                now,
            );
            if description.starts_with("release") {
                assert!(
                    full.as_ref().is_ok_and(|p| !p.changed),
                    "a retry is no change"
                );
            }
            match (full, fast) {
                (Ok(full), Ok(fast)) => {
                    assert_eq!(full.changed, fast.changed, "{version} {tags:?}");
                    let (record, rows) = kept.encode_with(&fast.stored).unwrap();
                    let written =
                        record.len() + rows.iter().map(|(_, row)| row.len()).sum::<usize>();
                    let estimate = kept.record_bytes_estimate(&fast.stored);
                    assert!(
                        estimate >= written && estimate <= written * 2,
                        "{estimate} for {written}"
                    );
                    let decoded = StoredPackage::decode_with_rows(&record, &rows);
                    assert_eq!(decoded, full.stored, "{version} {tags:?}");
                    assert_eq!(
                        serde_json::to_string(&decoded.doc).unwrap(),
                        serde_json::to_string(&full.stored.doc).unwrap(),
                        "the same key order"
                    );
                }
                (Err(full), Err(fast)) => assert_eq!(full.to_string(), fast.to_string()),
                (full, fast) => panic!("{version} {tags:?}: {full:?} against {fast:?}"),
            }
        }
        // A record without a `versions` object is not decoded for appending.
        let mut odd = stored.clone();
        odd.doc.insert("versions".into(), serde_json::json!([]));
        assert!(StoredPackage::decode_for_append(&odd.encode(), &AppendWants::default()).is_err());
        odd.doc.remove("versions");
        assert!(StoredPackage::decode_for_append(&odd.encode(), &AppendWants::default()).is_err());
        // A version key with an escape is refused (the writer then decodes in full); a record
        // with whitespace between its tokens is read like a compact one.
        let escaped = br#"{"rev":1,"doc":{"name":"a","versions":{"1.0.\u0030":{}}},"tarballs":{}}"#;
        assert!(StoredPackage::decode(escaped).is_ok());
        assert!(StoredPackage::decode_for_append(escaped, &AppendWants::default()).is_err());
        let pretty = serde_json::to_vec_pretty(&stored).unwrap();
        let (placeholder, kept) =
            StoredPackage::decode_for_append(&pretty, &AppendWants::default()).unwrap();
        assert_eq!(kept.count(), 6);
        let (record, rows) = kept.encode_with(&placeholder).unwrap();
        assert!(rows.is_empty(), "no new versions");
        assert_eq!(StoredPackage::decode(&record).unwrap(), stored);
    }

    proptest! {
        /// The fuzz target `publish_body` drives the same function with libFuzzer; this keeps
        /// arbitrary bytes, and damaged copies of a valid body, in the default test run.
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let name = PackageName::parse("a").unwrap();
            let mut bytes = bytes;
            let _ = parse_package_put(&name, &mut bytes);
        }

        #[test]
        fn damaged_valid_bodies_never_panic(
            cut in 0usize..1200,
            flip in 0usize..1200,
            bit in 0u8..8,
        ) {
            let name = PackageName::parse("a").unwrap();
            let mut body = valid_body(&tgz("a", "1.0.0"));
            let flip = flip % body.len();
            body[flip] ^= 1 << bit;
            body.truncate(cut.min(body.len()).max(1));
            if let Ok(request) = parse_publish(&name, &mut body) {
                for version in &request.versions {
                    prop_assert_eq!(version.blob, BlobId::of(&version.tarball));
                }
            }
        }
    }
}
