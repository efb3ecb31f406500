//! `agentregistry fsck | backup | restore` end to end, with the real binary.
//!
//! Goal: a backup taken while the server serves (through its admin endpoint) restores into a
//! new home whose server answers every package document and tarball byte for byte as the
//! original did; fsck exits 0 on a clean home (offline and through a running server) and 1,
//! naming the blob, on a corrupted one; restore refuses while a server runs; the admin
//! endpoints refuse requests without the admin token.
//!
//! Method: servers run on `127.0.0.1:0` with `--public-url` fixed, so documents (which embed
//! tarball URLs) do not depend on the port; they are killed by pid. Requests are raw HTTP/1.1
//! over `std::net::TcpStream` with `Connection: close`. Tarballs are gzip npm tarballs
//! (package.json matching the publish, as the registry checks) around seeded pseudo-random
//! payloads; their sha512 integrity is computed here.
//! Every wait has a deadline: socket timeouts, channel receives; no sleeps.

#![expect(clippy::unwrap_used, reason = "test fixtures fail loudly by design")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha512};

const PUBLIC_URL: &str = "http://registry.invalid:4873";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const CLI_TIMEOUT: Duration = Duration::from_secs(120);
const LISTENING_PREFIX: &str = "agentregistry listening on http://";
const ABBREVIATED: &str = "application/vnd.npm.install-v1+json";

/// One `agentregistry serve` process; killed by its pid on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<u8>>>,
}

impl Server {
    fn start(home: &Path) -> Server {
        let mut cmd = cli();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--cores", "2"])
            .args(["--public-url", PUBLIC_URL])
            .arg("--home")
            .arg(home)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&log);
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                writer.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(reader.read_line(&mut line).map(|_| line));
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(line)) => line,
            other => panic!("no listening line ({other:?}):\n{}", server.log()),
        };
        let authority = line
            .trim_end()
            .strip_prefix(LISTENING_PREFIX)
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        server.addr = authority.parse().unwrap();
        server
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }

    fn request(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Res {
        request(self.addr, method, target, headers, body)
    }

    fn get(&self, target: &str, headers: &[(&str, &str)]) -> Res {
        let res = self.request("GET", target, headers, b"");
        assert_eq!(res.status, 200, "GET {target}: {}", res.text());
        res
    }

    fn login(&self, user: &str) -> String {
        let body = json!({"name": user, "password": "correct horse battery staple"});
        let res = self.request(
            "PUT",
            &format!("/-/user/org.couchdb.user:{user}"),
            &[("Content-Type", "application/json")],
            &serde_json::to_vec(&body).unwrap(),
        );
        assert_eq!(res.status, 201, "login: {}", res.text());
        res.json()["token"].as_str().unwrap().to_owned()
    }

    fn publish(&self, token: &str, name: &str, version: &str, tarball: &[u8]) {
        let res = self.request(
            "PUT",
            &format!("/{}", name.replace('/', "%2f")),
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &format!("Bearer {token}")),
            ],
            &serde_json::to_vec(&publish_body(name, version, tarball)).unwrap(),
        );
        assert_eq!(res.status, 201, "publish {name}@{version}: {}", res.text());
    }

    /// Every document and tarball of `names`, as served: target -> body.
    fn snapshot(&self, names: &[&str]) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for name in names {
            let path = format!("/{}", name.replace('/', "%2f"));
            let full = self.get(&path, &[]);
            let abbreviated = self.get(&path, &[("Accept", ABBREVIATED)]);
            out.insert(format!("{path} (abbreviated)"), abbreviated.body);
            for manifest in full.json()["versions"].as_object().unwrap().values() {
                let url = manifest["dist"]["tarball"].as_str().unwrap();
                let target = url.strip_prefix(PUBLIC_URL).unwrap().to_owned();
                let tarball = self.get(&target, &[]).body;
                out.insert(target, tarball);
            }
            out.insert(path, full.body);
        }
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- server log ---\n{}", self.log());
        }
    }
}

/// The binary, with no `AGENTREGISTRY_*` variable inherited.
fn cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentregistry"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AGENTREGISTRY_") {
            cmd.env_remove(key);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs the CLI with `args` under a deadline; the process is killed by pid if it passes.
fn run(args: &[&str]) -> Output {
    let child = cli()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(CLI_TIMEOUT) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("agentregistry {args:?} did not finish within {CLI_TIMEOUT:?}");
        }
    }
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

struct Res {
    status: u16,
    body: Vec<u8>,
}

impl Res {
    fn text(&self) -> String {
        format!("{} {}", self.status, String::from_utf8_lossy(&self.body))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
}

fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Res {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim().parse().unwrap())
        .unwrap();
    let body = raw[end + 4..].to_vec();
    assert_eq!(body.len(), length, "{method} {target}: truncated answer");
    Res { status, body }
}

/// Seeded pseudo-random bytes (xorshift), `len` long.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// A gzip'd npm tarball of `name@version` (the registry checks its package.json against the
/// published manifest) carrying `payload(seed, len)`: different seeds give different blobs of
/// about `len` bytes.
fn tarball(name: &str, version: &str, seed: u64, len: usize) -> Vec<u8> {
    let manifest = json!({"name": name, "version": version}).to_string();
    let payload = payload(seed, len);
    let mut builder = tar::Builder::new(Vec::new());
    for (path, body) in [
        ("package/package.json", manifest.as_bytes()),
        ("package/payload.bin", payload.as_slice()),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, body).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&builder.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

fn publish_body(name: &str, version: &str, tarball: &[u8]) -> Value {
    let integrity = format!(
        "sha512-{}",
        base64_simd::STANDARD.encode_to_string(Sha512::digest(tarball))
    );
    let basename = name.rsplit('/').next().unwrap();
    let file = format!("{basename}-{version}.tgz");
    json!({
        "_id": name,
        "name": name,
        "dist-tags": {"latest": version},
        "versions": {version: {
            "name": name, "version": version, "description": format!("{name} for fsck tests"),
            "dist": {"integrity": integrity},
        }},
        "_attachments": {file: {
            "content_type": "application/octet-stream",
            "data": base64_simd::STANDARD.encode_to_string(tarball),
            "length": tarball.len(),
        }},
    })
}

/// Every file under `dir`, recursively, except in `tmp/`.
fn blob_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && path.file_name().is_some_and(|n| n != "tmp") {
            out.extend(blob_files(&path));
        } else if path.is_file() {
            out.push(path);
        }
    }
    out
}

fn home_arg(home: &Path) -> String {
    home.display().to_string()
}

/// The path the backup CLI printed (`backup written to PATH`).
fn backup_path(output: &Output) -> PathBuf {
    let text = stdout(output);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("backup written to "))
        .unwrap_or_else(|| panic!("no backup path in:\n{}", describe(output)));
    PathBuf::from(line)
}

#[test]
fn backup_while_serving_restores_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let names = ["alpha", "@scope/beta", "gamma"];
    let server = Server::start(&home);
    let token = server.login("ada");
    server.publish(
        &token,
        "alpha",
        "1.0.0",
        &tarball("alpha", "1.0.0", 1, 10_000),
    );
    server.publish(
        &token,
        "alpha",
        "1.1.0",
        &tarball("alpha", "1.1.0", 2, 300_000),
    );
    server.publish(
        &token,
        "@scope/beta",
        "2.0.0",
        &tarball("@scope/beta", "2.0.0", 3, 50_000),
    );
    server.publish(
        &token,
        "gamma",
        "0.1.0",
        &tarball("gamma", "0.1.0", 4, 1_000),
    );
    let before = server.snapshot(&names);
    assert_eq!(before.len(), 3 * 2 + 4);
    // Only alpha@1.1.0 (about 300 KB) is a blob file; the others are stored in their shards.
    assert_eq!(blob_files(&home.join("blobs")).len(), 1);

    // The admin endpoints need the admin token.
    let refused = server.request("POST", "/-/admin/fsck", &[], b"{}");
    assert_eq!(refused.status, 401, "{}", refused.text());
    let wrong = server.request(
        "POST",
        "/-/admin/backup",
        &[("Authorization", "Bearer not-the-token")],
        br#"{"dir":"/tmp/x"}"#,
    );
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    let server_file: Value =
        serde_json::from_slice(&std::fs::read(home.join("server.json")).unwrap()).unwrap();
    assert_eq!(
        server_file["url"],
        Value::String(format!("http://{}", server.addr))
    );

    // fsck and backup while serving go through the server.
    let fsck = run(&["fsck", "--home", &home_arg(&home)]);
    assert_eq!(fsck.status.code(), Some(0), "{}", describe(&fsck));
    assert!(
        stdout(&fsck).contains("through the server"),
        "{}",
        describe(&fsck)
    );
    let backups = dir.path().join("backups");
    let backup = run(&["backup", &home_arg(&backups), "--home", &home_arg(&home)]);
    assert_eq!(backup.status.code(), Some(0), "{}", describe(&backup));
    let backup_dir = backup_path(&backup);
    assert!(backup_dir.join("backup.json").is_file());
    assert!(
        stdout(&backup).contains("3 packages"),
        "{}",
        describe(&backup)
    );
    drop(server);

    let restored = dir.path().join("restored");
    let restore = run(&[
        "restore",
        &home_arg(&backup_dir),
        "--home",
        &home_arg(&restored),
    ]);
    assert_eq!(restore.status.code(), Some(0), "{}", describe(&restore));
    let server = Server::start(&restored);
    let after = server.snapshot(&names);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (target, body) in &before {
        assert!(after[target] == *body, "{target} differs after restore");
    }
    // The restored users still log in, and their tokens still work.
    server.publish(&token, "delta", "1.0.0", &tarball("delta", "1.0.0", 5, 100));

    // Restore refuses while a server runs on the home.
    let refused = run(&[
        "restore",
        &home_arg(&backup_dir),
        "--home",
        &home_arg(&restored),
        "--force",
    ]);
    assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("stop it"), "{}", describe(&refused));
}

#[test]
fn fsck_exit_codes_clean_and_corrupt_blob() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let server = Server::start(&home);
    let token = server.login("ada");
    // Too big to be stored inline (64 KiB and less are): a blob file this test can damage.
    let bytes = tarball("solo", "1.0.0", 9, 100_000);
    server.publish(&token, "solo", "1.0.0", &bytes);
    server.publish(
        &token,
        "other",
        "1.0.0",
        &tarball("other", "1.0.0", 10, 5_000),
    );
    drop(server);

    let clean = run(&["fsck", "--home", &home_arg(&home)]);
    assert_eq!(clean.status.code(), Some(0), "{}", describe(&clean));
    assert!(stdout(&clean).contains("clean"), "{}", describe(&clean));

    // The blob of `solo` is the only file of its size (about 100 KB); its name is its hex id.
    let path = blob_files(&home.join("blobs"))
        .into_iter()
        .find(|p| std::fs::metadata(p).unwrap().len() == bytes.len() as u64)
        .unwrap();
    let hex = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut damaged = std::fs::read(&path).unwrap();
    damaged[100] ^= 0xff;
    std::fs::write(&path, damaged).unwrap();

    let corrupt = run(&["fsck", "--home", &home_arg(&home)]);
    assert_eq!(corrupt.status.code(), Some(1), "{}", describe(&corrupt));
    assert!(stdout(&corrupt).contains(&hex), "{}", describe(&corrupt));
    assert!(
        stdout(&corrupt).contains("corrupt_blob"),
        "{}",
        describe(&corrupt)
    );

    let json = run(&["fsck", "--home", &home_arg(&home), "--json", "--repair"]);
    assert_eq!(json.status.code(), Some(1), "{}", describe(&json));
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["counts"]["corrupt_blob"], 1);
    assert_eq!(report["findings"][0]["subject"], Value::String(hex));
    assert!(path.exists(), "--repair never deletes a referenced blob");

    let missing = run(&["fsck", "--home", &home_arg(&dir.path().join("nowhere"))]);
    assert_eq!(missing.status.code(), Some(2), "{}", describe(&missing));
}

#[test]
fn small_tarballs_are_inline_served_and_survive_a_kill() {
    // Goal: a tarball of at most 64 KiB is stored in its shard, not as a file, one bigger is a
    // file; both are served byte for byte, also after the server is killed (SIGKILL, no clean
    // stop) and started again, and the metrics count the inline one.
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let small = tarball("tiny", "1.0.0", 11, 2_000);
    let large = tarball("huge", "1.0.0", 12, 100_000);
    assert!(small.len() <= 64 * 1024 && large.len() > 64 * 1024);
    let server = Server::start(&home);
    let token = server.login("ada");
    server.publish(&token, "tiny", "1.0.0", &small);
    server.publish(&token, "huge", "1.0.0", &large);
    let files: Vec<Vec<u8>> = blob_files(&home.join("blobs"))
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(
        files,
        vec![large.clone()],
        "only the large tarball is a file"
    );
    assert_eq!(server.get("/tiny/-/tiny-1.0.0.tgz", &[]).body, small);
    assert_eq!(server.get("/huge/-/huge-1.0.0.tgz", &[]).body, large);
    let metrics = server.get("/metrics", &[]).text();
    assert!(
        metrics.contains("agentregistry_inline_blobs 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "agentregistry_inline_blob_bytes {}\n",
            small.len()
        )),
        "{metrics}"
    );
    drop(server);

    let server = Server::start(&home);
    assert_eq!(server.get("/tiny/-/tiny-1.0.0.tgz", &[]).body, small);
    assert_eq!(server.get("/huge/-/huge-1.0.0.tgz", &[]).body, large);
    drop(server);
    let fsck = run(&["fsck", "--home", &home_arg(&home)]);
    assert_eq!(fsck.status.code(), Some(0), "{}", describe(&fsck));
}

#[test]
fn a_file_tarball_is_read_off_the_core_and_never_served_corrupt() {
    // Goal: a tarball bigger than 64 KiB (a blob file) is read and verified on the blob reader
    // threads: served byte for byte while other requests go on, and, once its file is
    // corrupted on disk, refused with a JSON error on a core that had not cached it, while
    // the package's documents are still served.
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let large = tarball("huge", "1.0.0", 21, 300_000);
    assert!(large.len() > 64 * 1024);
    let server = Server::start(&home);
    let token = server.login("ada");
    server.publish(&token, "huge", "1.0.0", &large);
    let fetches: Vec<_> = (0..8)
        .map(|_| {
            let addr = server.addr;
            std::thread::spawn(move || request(addr, "GET", "/huge/-/huge-1.0.0.tgz", &[], b""))
        })
        .collect();
    for fetch in fetches {
        let res = fetch.join().unwrap();
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.body, large);
    }
    drop(server);

    let files = blob_files(&home.join("blobs"));
    assert_eq!(files.len(), 1);
    let mut bytes = std::fs::read(&files[0]).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::write(&files[0], &bytes).unwrap();
    let server = Server::start(&home);
    for _ in 0..4 {
        let res = server.request("GET", "/huge/-/huge-1.0.0.tgz", &[], b"");
        assert_eq!(res.status, 500, "{}", res.text());
        let error = res.json();
        assert!(
            error["message"].as_str().unwrap().contains("corrupt"),
            "{error}"
        );
        assert!(error["error"].is_string(), "{error}");
    }
    assert_eq!(server.get("/huge", &[]).json()["name"], "huge");
}
