//! The package sets the harness publishes and reads: the real corpus (`shared/corpus`, 471
//! real npm tarballs whose `package/package.json` is the manifest) and a synthetic set of
//! N packages x M versions with realistic manifests (dependencies, description, a readme of
//! a few KiB) and valid gzip tarballs made with `tar` + `flate2`. Also npm's publish body
//! and the URL paths npm uses for packuments and tarballs.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sha1::Digest as _;

/// One row of `manifest.tsv`.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) version: String,
    /// Absolute path of the `.tgz`.
    pub(crate) tarball: PathBuf,
    /// Path relative to the corpus' `tarballs/` folder (the registry URL layout).
    pub(crate) relative: String,
    pub(crate) size: u64,
}

/// Where the shared corpus lives unless `--corpus-dir` says otherwise: beside the repository.
#[must_use]
pub(crate) fn default_corpus_dir() -> PathBuf {
    let beside_repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus");
    if beside_repo.join("manifest.tsv").is_file() {
        return beside_repo;
    }
    PathBuf::from("/work/shared/corpus")
}

/// The real corpus' entries, in `manifest.tsv` order.
pub(crate) fn read_manifest(dir: &Path) -> Result<Vec<Entry>> {
    let path = dir.join("manifest.tsv");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        anyhow::ensure!(cols.len() == 5, "manifest.tsv row: {line}");
        let relative = cols[2]
            .strip_prefix("tarballs/")
            .with_context(|| format!("tarball path outside tarballs/: {line}"))?
            .to_owned();
        out.push(Entry {
            name: cols[0].to_owned(),
            version: cols[1].to_owned(),
            tarball: dir.join(cols[2]),
            relative,
            size: cols[3].parse().with_context(|| format!("size in {line}"))?,
        });
    }
    anyhow::ensure!(!out.is_empty(), "{} lists no tarballs", path.display());
    Ok(out)
}

/// Distinct package names, sorted.
#[must_use]
pub(crate) fn names(entries: &[Entry]) -> Vec<String> {
    let mut names: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
    names.sort();
    names.dedup();
    names
}

/// Entries grouped by package, versions in ascending semver order (the last published is the
/// highest, so it ends up as `latest`).
#[must_use]
pub(crate) fn by_package(entries: &[Entry]) -> Vec<Vec<Entry>> {
    let mut map: BTreeMap<&str, Vec<Entry>> = BTreeMap::new();
    for e in entries {
        map.entry(&e.name).or_default().push(e.clone());
    }
    map.into_values()
        .map(|mut v| {
            v.sort_by(|a, b| {
                match (
                    semver::Version::parse(&a.version),
                    semver::Version::parse(&b.version),
                ) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => a.version.cmp(&b.version),
                }
            });
            v
        })
        .collect()
}

/// `GET` path of a packument: `/name` or `/@scope%2fname` (what npm sends).
#[must_use]
pub(crate) fn packument_path(name: &str) -> String {
    format!("/{}", name.replace('/', "%2f"))
}

/// Tarball file name: `name-1.0.0.tgz` (`@scope/name` -> `name-1.0.0.tgz`).
#[must_use]
pub(crate) fn tarball_basename(name: &str, version: &str) -> String {
    let bare = name.rsplit('/').next().unwrap_or(name);
    format!("{bare}-{version}.tgz")
}

/// `GET` path of a tarball: `/name/-/name-1.0.0.tgz`, `/@scope/name/-/name-1.0.0.tgz`.
#[must_use]
pub(crate) fn tarball_path(name: &str, version: &str) -> String {
    format!("/{name}/-/{}", tarball_basename(name, version))
}

/// The `package.json` inside a `.tgz` (first path component may be anything).
pub(crate) fn manifest_of(tgz: &[u8]) -> Result<Value> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    for entry in archive.entries().context("reading tarball")? {
        let mut entry = entry.context("reading tarball entry")?;
        let path = entry.path().context("tarball entry path")?.into_owned();
        let parts: Vec<_> = path.components().collect();
        if parts.len() == 2 && parts[1].as_os_str() == "package.json" {
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .context("reading package.json")?;
            return serde_json::from_str(&text).context("parsing package.json");
        }
    }
    anyhow::bail!("no package/package.json in tarball")
}

/// `sha512-...` SRI string of `bytes`.
#[must_use]
pub(crate) fn integrity(bytes: &[u8]) -> String {
    let digest = sha2::Sha512::digest(bytes);
    format!("sha512-{}", base64_simd::STANDARD.encode_to_string(digest))
}

fn shasum(bytes: &[u8]) -> String {
    let digest = sha1::Sha1::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// npm's publish body for one version: the manifest plus `dist`, and the base64 tarball.
#[must_use]
pub(crate) fn publish_body(base_url: &str, mut manifest: Value, tgz: &[u8]) -> Vec<u8> {
    let name = manifest["name"].as_str().unwrap_or_default().to_owned();
    let version = manifest["version"].as_str().unwrap_or_default().to_owned();
    manifest["_id"] = json!(format!("{name}@{version}"));
    manifest["dist"] = json!({
        "integrity": integrity(tgz),
        "shasum": shasum(tgz),
        "tarball": format!("{base_url}{}", tarball_path(&name, &version)),
    });
    let body = json!({
        "_id": name,
        "name": name,
        "description": manifest.get("description").cloned().unwrap_or(Value::Null),
        "dist-tags": { "latest": version },
        "versions": { version.clone(): manifest },
        "access": null,
        "_attachments": { format!("{name}-{version}.tgz"): {
            "content_type": "application/octet-stream",
            "data": base64_simd::STANDARD.encode_to_string(tgz),
            "length": tgz.len(),
        }},
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The publish body of a real corpus entry (name and version forced to the manifest row's).
pub(crate) fn real_publish_body(base_url: &str, entry: &Entry) -> Result<Vec<u8>> {
    let tgz = std::fs::read(&entry.tarball)
        .with_context(|| format!("reading {}", entry.tarball.display()))?;
    let mut manifest =
        manifest_of(&tgz).with_context(|| format!("{}@{}", entry.name, entry.version))?;
    manifest["name"] = json!(entry.name);
    manifest["version"] = json!(entry.version);
    Ok(publish_body(base_url, manifest, &tgz))
}

// ---------------------------------------------------------------------------------------
// Synthetic packages
// ---------------------------------------------------------------------------------------

/// Name of synthetic package `i`.
#[must_use]
pub(crate) fn synthetic_name(i: usize) -> String {
    format!("perf-synth-{i:05}")
}

/// Version `j` of a synthetic package.
#[must_use]
pub(crate) fn synthetic_version(j: usize) -> String {
    format!("1.0.{j}")
}

/// A deterministic 64-bit mix (splitmix64), for reproducible synthetic content.
#[must_use]
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

const WORDS: [&str; 24] = [
    "agent",
    "registry",
    "tarball",
    "resolve",
    "install",
    "cache",
    "stream",
    "parse",
    "render",
    "publish",
    "durable",
    "shard",
    "packument",
    "semver",
    "range",
    "token",
    "loopback",
    "core",
    "buffer",
    "gzip",
    "manifest",
    "swarm",
    "client",
    "version",
];

fn prose(seed: u64, words: usize) -> String {
    let mut out = String::with_capacity(words * 8);
    let mut x = seed;
    for k in 0..words {
        x = mix(x);
        if k > 0 {
            out.push(if k % 13 == 0 { '\n' } else { ' ' });
        }
        out.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
    }
    out
}

/// A realistic manifest: 3-14 dependencies on other synthetic packages, a description, a
/// readme of 2-6 KiB, scripts, keywords, repository, engines.
#[must_use]
pub(crate) fn synthetic_manifest(name: &str, version: &str, seed: u64, packages: usize) -> Value {
    let mut deps = serde_json::Map::new();
    let dep_count = 3 + (mix(seed) % 12) as usize;
    for k in 0..dep_count {
        let other = (mix(seed ^ (k as u64 + 1)) % packages.max(1) as u64) as usize;
        deps.insert(synthetic_name(other), json!("^1.0.0"));
    }
    let readme_words = 300 + (mix(seed ^ 0xAB) % 600) as usize;
    json!({
        "name": name,
        "version": version,
        "description": format!("Synthetic package for AgentRegistry load tests: {}", prose(seed ^ 7, 12)),
        "main": "index.js",
        "types": "index.d.ts",
        "license": "MIT",
        "author": { "name": "perf harness", "email": "perf@example.invalid" },
        "repository": { "type": "git", "url": format!("git+https://example.invalid/{name}.git") },
        "homepage": format!("https://example.invalid/{name}#readme"),
        "keywords": prose(seed ^ 11, 6).split_whitespace().collect::<Vec<_>>(),
        "scripts": { "test": "node test.js", "build": "tsc -p ." },
        "engines": { "node": ">=18" },
        "dependencies": deps,
        "devDependencies": { "typescript": "^5.4.0" },
        "readme": format!("# {name}\n\n{}", prose(seed ^ 13, readme_words)),
        "readmeFilename": "README.md",
    })
}

/// A valid gzip tarball with `package/package.json`, `package/index.js` and
/// `package/README.md` (readme moved out of the manifest, as npm packs it).
pub(crate) fn synthetic_tarball(manifest: &Value, level: u32) -> Result<Vec<u8>> {
    let mut packed = manifest.clone();
    let readme = packed
        .as_object_mut()
        .and_then(|m| m.remove("readme"))
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let package_json = serde_json::to_vec_pretty(&packed)?;
    let name = manifest["name"].as_str().unwrap_or_default();
    let index_js = format!(
        "'use strict';\n// {name}\nmodule.exports = function hello() {{ return {:?}; }};\n",
        manifest["version"].as_str().unwrap_or_default()
    );
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    let mut builder = tar::Builder::new(gz);
    for (path, data) in [
        ("package/package.json", package_json.as_slice()),
        ("package/index.js", index_js.as_bytes()),
        ("package/README.md", readme.as_bytes()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(499_162_500);
        header.set_cksum();
        builder.append_data(&mut header, path, data)?;
    }
    let gz = builder.into_inner()?;
    Ok(gz.finish()?)
}

/// Publish body of synthetic package `i` version `j`.
pub(crate) fn synthetic_publish_body(
    base_url: &str,
    i: usize,
    j: usize,
    packages: usize,
) -> Result<Vec<u8>> {
    let name = synthetic_name(i);
    let version = synthetic_version(j);
    let seed = mix((i as u64) << 20 | j as u64);
    let manifest = synthetic_manifest(&name, &version, seed, packages);
    let tgz = synthetic_tarball(&manifest, 6)?;
    Ok(publish_body(base_url, manifest, &tgz))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_tarball_round_trips() -> Result<()> {
        let m = synthetic_manifest("perf-synth-00001", "1.0.0", 42, 100);
        let tgz = synthetic_tarball(&m, 6)?;
        let back = manifest_of(&tgz)?;
        assert_eq!(back["name"], "perf-synth-00001");
        assert!(back.get("readme").is_none());
        let readme = m["readme"].as_str().unwrap_or_default();
        assert!(readme.len() > 1500, "readme of {} B", readme.len());
        Ok(())
    }

    #[test]
    fn synthetic_publish_body_tarball_matches_its_name_and_version() -> Result<()> {
        let body = synthetic_publish_body("http://127.0.0.1:4873", 12345, 2, 100_000)?;
        let body: Value = serde_json::from_slice(&body)?;
        assert_eq!(body["name"], "perf-synth-12345");
        let attachment = &body["_attachments"]["perf-synth-12345-1.0.2.tgz"];
        let tgz = base64_simd::STANDARD
            .decode_to_vec(attachment["data"].as_str().unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("base64: {e}"))?;
        assert_eq!(attachment["length"], tgz.len());
        let packed = manifest_of(&tgz)?;
        assert_eq!(packed["name"], "perf-synth-12345");
        assert_eq!(packed["version"], "1.0.2");
        assert_eq!(
            body["versions"]["1.0.2"]["dist"]["integrity"],
            integrity(&tgz).as_str()
        );
        Ok(())
    }

    #[test]
    fn paths() {
        assert_eq!(packument_path("@babel/core"), "/@babel%2fcore");
        assert_eq!(
            tarball_path("@babel/core", "7.0.0"),
            "/@babel/core/-/core-7.0.0.tgz"
        );
        assert_eq!(tarball_path("ms", "2.1.3"), "/ms/-/ms-2.1.3.tgz");
    }
}
