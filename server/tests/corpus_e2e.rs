//! The real dependency tree: every tarball of `../shared/corpus` (471 real npm tarballs, see
//! its README) is published through the HTTP publish path the way npm sends it, then the
//! tree's `e2e-package.json` (485 packages once resolved) is installed cold, from an empty
//! cache, with the real npm, pnpm and bun. Goal: prove that real packages, real manifests and
//! real resolution work end to end, not just hand-made fixtures.

#![expect(clippy::unwrap_used, reason = "test code fails loudly by design")]

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};

use common::{repo_root, Client, Registry, Tool};
use serde_json::{json, Value};

struct CorpusEntry {
    name: String,
    version: String,
    tarball: PathBuf,
    integrity: String,
}

fn corpus_dir() -> PathBuf {
    let dir = repo_root().join("../shared/corpus");
    assert!(
        dir.join("manifest.tsv").is_file(),
        "the shared corpus is missing at {}: it ships beside the repository (shared/corpus)",
        dir.display()
    );
    dir
}

fn corpus() -> Vec<CorpusEntry> {
    let dir = corpus_dir();
    let manifest = std::fs::read_to_string(dir.join("manifest.tsv")).unwrap();
    manifest
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(cols.len(), 5, "manifest.tsv row: {line}");
            CorpusEntry {
                name: cols[0].to_owned(),
                version: cols[1].to_owned(),
                tarball: dir.join(cols[2]),
                integrity: cols[4].to_owned(),
            }
        })
        .collect()
}

/// The `package/package.json` (first path component may differ) of a `.tgz`.
fn manifest_of(tgz: &[u8]) -> Value {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        let parts: Vec<_> = path.components().collect();
        if parts.len() == 2 && parts[1].as_os_str() == "package.json" {
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            return serde_json::from_str(&text).unwrap();
        }
    }
    panic!("no package.json in tarball");
}

fn publish_body(entry: &CorpusEntry, tgz: &[u8]) -> Vec<u8> {
    let mut manifest = manifest_of(tgz);
    manifest["name"] = json!(entry.name);
    manifest["version"] = json!(entry.version);
    manifest["dist"] = json!({ "integrity": entry.integrity });
    let file = format!("{}-{}.tgz", entry.name, entry.version);
    let body = json!({
        "_id": entry.name,
        "name": entry.name,
        "dist-tags": { "latest": entry.version },
        "versions": { entry.version.clone(): manifest },
        "_attachments": { file: {
            "content_type": "application/octet-stream",
            "data": common::base64_encode(tgz),
            "length": tgz.len(),
        }},
    });
    serde_json::to_vec(&body).unwrap()
}

fn publish_corpus(registry: &Registry, token: &str) {
    let entries = corpus();
    assert!(entries.len() > 400, "corpus has {} entries", entries.len());
    let auth = format!("Bearer {token}");
    let chunks: Vec<&[CorpusEntry]> = entries.chunks(entries.len().div_ceil(8)).collect();
    std::thread::scope(|scope| {
        for chunk in chunks {
            let auth = auth.as_str();
            scope.spawn(move || {
                for entry in chunk {
                    let tgz = std::fs::read(&entry.tarball).unwrap();
                    let body = publish_body(entry, &tgz);
                    let path = format!("/{}", entry.name.replace('/', "%2f"));
                    let headers = [
                        ("Authorization", auth),
                        ("Content-Type", "application/json"),
                    ];
                    let response = registry.request("PUT", &path, &headers, Some(&body));
                    assert!(
                        response.status == 201 || response.status == 200,
                        "publishing {}@{}: {}",
                        entry.name,
                        entry.version,
                        response.describe()
                    );
                }
            });
        }
    });
}

fn install_tree(client: &Client<'_>) -> PathBuf {
    let dir = client.new_dir("tree");
    std::fs::copy(
        corpus_dir().join("e2e-package.json"),
        dir.join("package.json"),
    )
    .unwrap();
    client.install(&dir);
    dir
}

fn assert_tree(dir: &Path, tool: &str) {
    let script = "const v = (p) => require(require.resolve(p + '/package.json', \
                  {paths: [process.cwd()]})).version;\
                  require('express'); require('axios');\
                  process.stdout.write([v('express'), v('typescript'), v('react')].join(' '))";
    let versions = common::node_eval(script, &[], Some(dir));
    assert_eq!(versions, "5.3.0 7.0.2 19.3.1", "{tool}: installed versions");
}

#[test]
fn real_corpus_tree_installs_with_npm_pnpm_and_bun() {
    let registry = Registry::start();
    let token = registry.login_http(&registry.name("corpus-loader"), "corpus-pass-1");
    publish_corpus(&registry, &token);
    for tool in [Tool::Bun, Tool::Pnpm, Tool::Npm] {
        let Some(client) = Client::new(tool, &registry) else {
            continue;
        };
        let dir = install_tree(&client);
        assert_tree(&dir, tool.name());
    }
}
