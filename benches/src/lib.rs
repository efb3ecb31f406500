//! Fixtures shared by the criterion benches in `benches/benches/`: real npm tarballs from the
//! shared corpus, npm-shaped publish bodies built from them, a many-version stored package, and
//! the common criterion settings. Nothing here is timed; every function is setup.
//!
//! The corpus is `shared/corpus/` beside the repository (its README describes it), or the
//! directory named by `AGENTREGISTRY_CORPUS`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use criterion::Criterion;
use engine::names::PackageName;
use engine::packument::StoredPackage;
use engine::publish::{parse_publish, plan_publish};
use serde_json::{json, Map, Value};

/// The user every fixture publishes as.
pub const USER: &str = "bench";

/// A fixed publish time, so fixtures are the same on every run.
#[must_use]
pub fn epoch() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000)
}

/// Criterion defaults for the whole suite: short runs, and no plots (rendering them costs
/// seconds per bench on this 2-core machine), so the suite finishes in minutes.
#[must_use]
pub fn config() -> Criterion {
    Criterion::default()
        .without_plots()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

/// The corpus directory.
#[must_use]
pub fn corpus_dir() -> PathBuf {
    match std::env::var_os("AGENTREGISTRY_CORPUS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/corpus")),
    }
}

/// The three tarball sizes the size-dependent benches use, by bench suffix.
///
/// `small` is the corpus median (p50 6.2 KiB), `medium` is near its p99 (~616 KiB),
/// `large` is its largest tarball (9.2 MiB).
pub const SIZES: [(&str, &str, &str); 3] = [
    ("small", "call-bound", "1.0.4"),
    ("medium", "axios", "1.21.1"),
    ("large", "@typescript/typescript-linux-x64", "7.0.2"),
];

/// One real tarball from the corpus, with the manifest and readme read out of it.
#[derive(Clone, Debug)]
pub struct CorpusTarball {
    pub name: String,
    pub version: String,
    pub bytes: Vec<u8>,
    /// `package/package.json`.
    pub manifest: Map<String, Value>,
    /// `package/README*`, which npm sends as the version's `readme`.
    pub readme: Option<String>,
}

/// Loads `name@version` from the corpus (looked up in `manifest.tsv`).
///
/// # Panics
/// When the corpus is missing or the tarball is not in it: a bench cannot run without it.
#[must_use]
pub fn load_tarball(name: &str, version: &str) -> CorpusTarball {
    let dir = corpus_dir();
    let index = std::fs::read_to_string(dir.join("manifest.tsv"))
        .expect("corpus manifest.tsv (set AGENTREGISTRY_CORPUS if the corpus lives elsewhere)");
    let path = index
        .lines()
        .map(|line| line.split('\t').collect::<Vec<_>>())
        .find(|cols| cols.len() >= 3 && cols[0] == name && cols[1] == version)
        .map(|cols| dir.join(cols[2]))
        .expect("tarball listed in corpus manifest.tsv");
    let bytes = std::fs::read(&path).expect("corpus tarball readable");
    let (manifest, readme) = read_package_files(&bytes);
    CorpusTarball {
        name: name.to_owned(),
        version: version.to_owned(),
        bytes,
        manifest,
        readme,
    }
}

/// Reads `*/package.json` and `*/README*` (top-level entries of the archive's one directory).
fn read_package_files(tgz: &[u8]) -> (Map<String, Value>, Option<String>) {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    let mut manifest = None;
    let mut readme = None;
    for entry in archive.entries().expect("tarball is a gzip'd tar") {
        let mut entry = entry.expect("tar entry readable");
        let path = entry.path().expect("tar entry path").into_owned();
        let parts: Vec<_> = path.iter().collect();
        if parts.len() != 2 {
            continue;
        }
        let file = parts[1].to_string_lossy().to_ascii_lowercase();
        if file == "package.json" {
            let mut text = Vec::new();
            entry.read_to_end(&mut text).expect("package.json readable");
            let Value::Object(m) = serde_json::from_slice(&text).expect("package.json is JSON")
            else {
                panic!("package.json is not an object");
            };
            manifest = Some(m);
        } else if file.starts_with("readme") && readme.is_none() {
            let mut text = String::new();
            if entry.read_to_string(&mut text).is_ok() {
                readme = Some(text);
            }
        }
    }
    (manifest.expect("tarball has package.json"), readme)
}

/// The publish body `npm publish` sends for `t` (libnpmpublish's shape): the manifest with
/// `_id`, `readme` and `dist{integrity, shasum, tarball}`, and the base64 tarball attachment.
#[must_use]
pub fn publish_body(t: &CorpusTarball) -> Vec<u8> {
    let version = t.version.as_str();
    let checksums = engine::integrity::compute(&t.bytes);
    let name = t.name.as_str();
    let base = name.rsplit('/').next().unwrap_or(name);
    let mut manifest = t.manifest.clone();
    manifest.insert("version".into(), json!(version));
    manifest.insert("_id".into(), json!(format!("{name}@{version}")));
    manifest.insert("_nodeVersion".into(), json!("24.11.1"));
    manifest.insert("_npmVersion".into(), json!("11.6.2"));
    if let Some(readme) = &t.readme {
        manifest.insert("readme".into(), json!(readme));
        manifest.insert("readmeFilename".into(), json!("README.md"));
    }
    manifest.insert(
        "dist".into(),
        json!({
            "integrity": checksums.integrity,
            "shasum": checksums.shasum,
            "tarball": format!("http://127.0.0.1:4873/{name}/-/{base}-{version}.tgz"),
        }),
    );
    let body = json!({
        "_id": name,
        "name": name,
        "description": t.manifest.get("description").cloned().unwrap_or(Value::Null),
        "dist-tags": { "latest": version },
        "versions": { version: manifest },
        "access": null,
        "_attachments": {
            format!("{name}-{version}.tgz"): {
                "content_type": "application/octet-stream",
                "data": base64_simd::STANDARD.encode_to_string(&t.bytes),
                "length": t.bytes.len(),
            }
        }
    });
    serde_json::to_vec(&body).expect("a JSON value serializes")
}

/// `t` repacked as `version`: the same files with `package.json`'s version rewritten, since
/// the registry refuses a tarball whose package.json disagrees with the published version.
///
/// # Panics
/// When `t` is not a readable gzip tar (corpus tarballs are).
#[must_use]
pub fn as_version(t: &CorpusTarball, version: &str) -> CorpusTarball {
    let mut manifest = t.manifest.clone();
    manifest.insert("version".into(), serde_json::json!(version));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(t.bytes.as_slice()));
    let mut builder = tar::Builder::new(Vec::new());
    for entry in archive.entries().expect("corpus tarballs are tar") {
        let mut entry = entry.expect("corpus tar entries read");
        let path = entry.path().expect("corpus paths are valid").into_owned();
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .expect("corpus tar bodies read");
        if path.iter().count() == 2 && path.ends_with("package.json") {
            data = serde_json::to_vec_pretty(&manifest).expect("a JSON map serializes");
        }
        let mut header = entry.header().clone();
        header.set_size(data.len() as u64);
        builder
            .append_data(&mut header, &path, data.as_slice())
            .expect("appending to an in-memory tar");
    }
    let tar = builder.into_inner().expect("finishing an in-memory tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).expect("gzip into memory");
    CorpusTarball {
        version: version.to_owned(),
        bytes: gz.finish().expect("gzip into memory"),
        manifest,
        ..t.clone()
    }
}

/// `count` distinct version strings, in publish order: `1.0.0 .. 1.0.9, 1.1.0, ..`.
#[must_use]
pub fn versions(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("{}.{}.{}", 1 + i / 100, (i / 10) % 10, i % 10))
        .collect()
}

/// A stored package built through the real publish path (`parse_publish` + `plan_publish`):
/// `t` repacked as each of `versions` (`as_version`) and published, one publish each.
///
/// # Panics
/// When a publish is refused (the fixture is wrong).
#[must_use]
pub fn stored_package(t: &CorpusTarball, versions: &[String]) -> StoredPackage {
    let name = PackageName::parse(&t.name).expect("corpus names are valid");
    let mut stored = None;
    for (i, version) in versions.iter().enumerate() {
        let mut body = publish_body(&as_version(t, version));
        let request = parse_publish(&name, &mut body).expect("fixture publish body parses");
        let now = epoch() + Duration::from_secs(3600 * i as u64);
        let plan = plan_publish(stored.take(), request, USER, now).expect("fixture publish plans");
        stored = Some(plan.stored);
    }
    stored.expect("at least one version")
}

/// An npm 11 `GET` of a scoped packument, headers as npm sends them.
pub const NPM_GET_HEAD: &[u8] = b"GET /@babel%2fcore HTTP/1.1\r\n\
accept: application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*\r\n\
npm-auth-type: web\r\n\
npm-command: install\r\n\
npm-session: 6c7d9e2f1a3b4c5d\r\n\
user-agent: npm/11.6.2 node/v24.11.1 linux x64 workspaces/false\r\n\
pacote-version: 21.0.3\r\n\
pacote-req-type: packument\r\n\
pacote-pkg-id: registry:@babel/core\r\n\
accept-encoding: gzip,deflate\r\n\
authorization: Bearer npm_kQ8x2Vb7nE4rT1yU6iO3pA9sD5fG0hJ2kL7zX\r\n\
Host: 127.0.0.1:4873\r\n\
Connection: keep-alive\r\n\r\n";

/// An npm 11 publish (`PUT /NAME`) head, headers as npm sends them.
pub const NPM_PUBLISH_HEAD: &[u8] = b"PUT /express HTTP/1.1\r\n\
accept: */*\r\n\
npm-auth-type: web\r\n\
npm-command: publish\r\n\
npm-session: 9a8b7c6d5e4f3a2b\r\n\
user-agent: npm/11.6.2 node/v24.11.1 linux x64 workspaces/false\r\n\
content-type: application/json\r\n\
accept-encoding: gzip,deflate\r\n\
authorization: Bearer npm_kQ8x2Vb7nE4rT1yU6iO3pA9sD5fG0hJ2kL7zX\r\n\
content-length: 34012\r\n\
Host: 127.0.0.1:4873\r\n\
Connection: keep-alive\r\n\r\n";

/// `body` in HTTP/1.1 chunked transfer coding with `chunk` bytes per chunk.
#[must_use]
pub fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / chunk * 12 + 16);
    for piece in body.chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}
