//! Metadata updates of an existing package, as npm sends them: a `PUT /NAME[/-rev/REV]` whose
//! body carries no attachments (`npm deprecate`, `npm unpublish NAME@VERSION`, `npm owner
//! add|rm`, edits of dist-tags) and `DELETE /NAME/-rev/REV` (`npm unpublish NAME --force`).
//!
//! Only these fields of the body are honoured: each existing version's `deprecated`, which
//! existing versions remain (missing ones are unpublished), `dist-tags`, and `maintainers`.
//! Everything else in a version manifest is immutable. Unpublished versions stay reserved in
//! `time`, so `name@version` can never be published again with other bytes. A package whose
//! last version is unpublished becomes a tombstone: it reads as 404 but keeps its history.

use std::collections::BTreeSet;
use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::names::{DistTag, PackageName, Version};
use crate::packument::StoredPackage;
use crate::publish::{
    check_maintainer, dist_tags_mut, maintainer, not_found, parse_dist_tags, refresh_top_level,
    time_mut, truncate, versions_mut, wrong_type, Plan, PublishError, RawBody,
};

/// A validated metadata update.
#[derive(Debug)]
pub struct UpdateRequest {
    pub name: PackageName,
    /// The `_rev` the client based its change on (CouchDB-style optimistic concurrency).
    pub rev: Option<String>,
    /// version -> manifest as the client sent it; `None` leaves versions alone.
    pub versions: Option<Map<String, Value>>,
    pub dist_tags: Option<Vec<(DistTag, Version)>>,
    /// Maintainer user names; `None` leaves them alone.
    pub maintainers: Option<Vec<String>>,
}

pub(crate) fn update_from_raw(
    name: &PackageName,
    raw: RawBody,
) -> Result<UpdateRequest, PublishError> {
    let rev = match raw.rev {
        None | Some(Value::Null) => None,
        Some(Value::String(rev)) => Some(rev),
        Some(_) => return Err(wrong_type("_rev", "expected a string")),
    };
    let versions = match raw.versions {
        None | Some(Value::Null) => None,
        Some(Value::Object(versions)) => Some(versions),
        Some(_) => return Err(wrong_type("versions", "expected an object")),
    };
    let dist_tags = match raw.dist_tags {
        None | Some(Value::Null) => None,
        some => Some(parse_dist_tags(some)?),
    };
    let maintainers = match raw.maintainers {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => Some(
            list.iter()
                .map(|m| match m {
                    Value::String(s) => Ok(s.clone()),
                    Value::Object(o) => o
                        .get("name")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .ok_or_else(|| wrong_type("maintainers[].name", "expected a string")),
                    _ => Err(wrong_type("maintainers[]", "expected an object or string")),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err(wrong_type("maintainers", "expected an array")),
    };
    Ok(UpdateRequest {
        name: name.clone(),
        rev,
        versions,
        dist_tags,
        maintainers,
    })
}

fn check_rev(stored: &StoredPackage, rev: Option<&str>) -> Result<(), PublishError> {
    match rev {
        Some(given) if given != stored.rev_string() => Err(PublishError::RevConflict {
            name: stored.name().to_owned(),
            given: truncate(given),
            current: stored.rev_string(),
        }),
        _ => Ok(()),
    }
}

/// Plans a metadata update by `user`.
///
/// # Errors
/// `PackageNotFound`, `NotMaintainer`, `RevConflict`, `MissingAttachment` (a new version
/// without a tarball), `VersionNotFound` (a dist-tag naming a missing version),
/// `NoMaintainers`.
pub fn plan_update(
    current: Option<StoredPackage>,
    request: UpdateRequest,
    user: &str,
    now: SystemTime,
) -> Result<Plan, PublishError> {
    let mut stored = live(current, &request.name)?;
    check_maintainer(&stored, request.name.as_str(), user)?;
    check_rev(&stored, request.rev.as_deref())?;
    let before = stored.doc.clone();
    if let Some(versions) = &request.versions {
        apply_versions(&mut stored, versions)?;
    }
    if let Some(tags) = &request.dist_tags {
        let existing = version_set(&stored);
        let mut map = Map::new();
        for (tag, version) in tags {
            if !existing.contains(version.as_str()) {
                return Err(PublishError::VersionNotFound {
                    name: request.name.as_str().to_owned(),
                    version: version.as_str().to_owned(),
                });
            }
            map.insert(
                tag.as_str().to_owned(),
                Value::String(version.as_str().to_owned()),
            );
        }
        *dist_tags_mut(&mut stored) = map;
    }
    repair_tags(&mut stored);
    if let Some(names) = &request.maintainers {
        if names.is_empty() {
            return Err(PublishError::NoMaintainers);
        }
        let list = names.iter().map(|n| maintainer(n)).collect();
        stored.doc.insert("maintainers".into(), Value::Array(list));
    }
    let changed = stored.doc != before;
    if changed {
        finish(&mut stored, now);
    }
    Ok(Plan {
        stored,
        blobs: Vec::new(),
        changed,
    })
}

/// Plans `npm unpublish NAME --force`: every version goes; the history stays.
///
/// # Errors
/// `PackageNotFound`, `NotMaintainer`, `RevConflict`.
pub fn plan_unpublish_all(
    current: Option<StoredPackage>,
    name: &PackageName,
    rev: Option<&str>,
    user: &str,
    now: SystemTime,
) -> Result<Plan, PublishError> {
    let mut stored = live(current, name)?;
    check_maintainer(&stored, name.as_str(), user)?;
    check_rev(&stored, rev)?;
    versions_mut(&mut stored).clear();
    stored.tarballs.clear();
    dist_tags_mut(&mut stored).clear();
    finish(&mut stored, now);
    Ok(Plan {
        stored,
        blobs: Vec::new(),
        changed: true,
    })
}

/// The package, unless it does not exist or is a tombstone.
fn live(current: Option<StoredPackage>, name: &PackageName) -> Result<StoredPackage, PublishError> {
    current
        .filter(|s| s.versions().is_some_and(|v| !v.is_empty()))
        .ok_or_else(|| not_found(name))
}

fn version_set(stored: &StoredPackage) -> BTreeSet<String> {
    stored
        .versions()
        .map(|v| v.keys().cloned().collect())
        .unwrap_or_default()
}

fn apply_versions(
    stored: &mut StoredPackage,
    wanted: &Map<String, Value>,
) -> Result<(), PublishError> {
    let existing = version_set(stored);
    if let Some(new) = wanted.keys().find(|v| !existing.contains(*v)) {
        return Err(PublishError::MissingAttachment {
            version: truncate(new),
        });
    }
    for version in &existing {
        let Some(manifest) = wanted.get(version) else {
            versions_mut(stored).remove(version);
            stored.tarballs.remove(version);
            continue;
        };
        let message = manifest
            .get("deprecated")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(Value::Object(stored_manifest)) = versions_mut(stored).get_mut(version) else {
            continue;
        };
        if message.is_empty() {
            stored_manifest.remove("deprecated");
        } else {
            stored_manifest.insert(
                "deprecated".into(),
                Value::String(truncate_message(message)),
            );
        }
    }
    Ok(())
}

/// Deprecation messages are shown to every installer; keep them to a sane length.
fn truncate_message(message: &str) -> String {
    message.chars().take(1024).collect()
}

/// Drops tags that point at removed versions and keeps `latest` pointing at a version (the
/// highest remaining one when its target went away), as npm's registry does.
fn repair_tags(stored: &mut StoredPackage) {
    let existing = version_set(stored);
    let tags = dist_tags_mut(stored);
    tags.retain(|_, v| v.as_str().is_some_and(|v| existing.contains(v)));
    if !tags.contains_key("latest") {
        let highest = existing
            .iter()
            .filter_map(|v| Version::parse(v).ok())
            .max_by(|a, b| a.semver().cmp(&b.semver()));
        if let Some(highest) = highest {
            tags.insert("latest".into(), Value::String(highest.as_str().to_owned()));
        }
    }
}

fn finish(stored: &mut StoredPackage, now: SystemTime) {
    refresh_top_level(stored);
    let now = humantime::format_rfc3339_millis(now).to_string();
    time_mut(stored).insert("modified".into(), Value::String(now));
    stored.rev += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn package() -> StoredPackage {
        let Value::Object(doc) = json!({
            "name": "a", "dist-tags": {"latest": "1.1.0", "old": "1.0.0"},
            "maintainers": [{"name": "ada"}],
            "versions": {"1.0.0": {"version": "1.0.0"}, "1.1.0": {"version": "1.1.0"}},
            "time": {"1.0.0": "t", "1.1.0": "t"}
        }) else {
            unreachable!()
        };
        StoredPackage {
            rev: 1,
            doc,
            tarballs: Default::default(),
        }
    }

    fn request(body: Value) -> UpdateRequest {
        let mut bytes = serde_json::to_vec(&body).unwrap();
        let name = PackageName::parse("a").unwrap();
        match crate::publish::parse_package_put(&name, &mut bytes).unwrap() {
            crate::publish::PackagePut::Update(u) => u,
            crate::publish::PackagePut::Publish(_) => panic!("not an update"),
        }
    }

    #[test]
    fn deprecate_then_undeprecate() {
        let body = json!({"versions": {"1.0.0": {"deprecated": "use 1.1"}, "1.1.0": {}}});
        let plan = plan_update(Some(package()), request(body), "ada", SystemTime::now()).unwrap();
        assert_eq!(
            plan.stored.versions().unwrap()["1.0.0"]["deprecated"],
            "use 1.1"
        );
        assert_eq!(plan.stored.rev, 2);
        let body = json!({"versions": {"1.0.0": {"deprecated": ""}, "1.1.0": {}}});
        let plan = plan_update(Some(plan.stored), request(body), "ada", SystemTime::now()).unwrap();
        assert!(plan.stored.versions().unwrap()["1.0.0"]
            .get("deprecated")
            .is_none());
    }

    #[test]
    fn unpublish_version_repairs_tags_and_keeps_time() {
        let body = json!({"versions": {"1.0.0": {}}, "dist-tags": {"old": "1.0.0"}});
        let plan = plan_update(Some(package()), request(body), "ada", SystemTime::now()).unwrap();
        let tags = plan.stored.dist_tags();
        assert_eq!(tags.get("latest").map(String::as_str), Some("1.0.0"));
        assert!(plan.stored.doc["time"].get("1.1.0").is_some());
        assert!(!plan.stored.versions().unwrap().contains_key("1.1.0"));
    }

    #[test]
    fn refusals() {
        let stale = json!({"_rev": "0-old", "versions": {"1.0.0": {}}});
        assert!(matches!(
            plan_update(Some(package()), request(stale), "ada", SystemTime::now()),
            Err(PublishError::RevConflict { .. })
        ));
        let other = json!({"versions": {"1.0.0": {}}});
        assert!(matches!(
            plan_update(Some(package()), request(other), "eve", SystemTime::now()),
            Err(PublishError::NotMaintainer { .. })
        ));
        let new = json!({"versions": {"1.0.0": {}, "1.1.0": {}, "2.0.0": {}}});
        assert!(matches!(
            plan_update(Some(package()), request(new), "ada", SystemTime::now()),
            Err(PublishError::MissingAttachment { .. })
        ));
        let nobody = json!({"maintainers": []});
        assert!(matches!(
            plan_update(Some(package()), request(nobody), "ada", SystemTime::now()),
            Err(PublishError::NoMaintainers)
        ));
    }

    #[test]
    fn unpublish_all_leaves_a_tombstone() {
        let name = PackageName::parse("a").unwrap();
        let plan = plan_unpublish_all(Some(package()), &name, None, "ada", SystemTime::now());
        let stored = plan.unwrap().stored;
        assert!(stored.versions().unwrap().is_empty());
        assert!(stored.doc["time"].get("1.0.0").is_some());
        assert!(matches!(
            plan_unpublish_all(Some(stored), &name, None, "ada", SystemTime::now()),
            Err(PublishError::PackageNotFound { .. })
        ));
    }
}
