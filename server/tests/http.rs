//! Server integration over real loopback sockets (STYLE section 10 item 5): the `agentregistry`
//! binary of this build is started on `127.0.0.1:0` with a fresh home and spoken to in raw
//! HTTP/1.1 over `std::net::TcpStream`, so every byte on the wire is the test's choice.
//!
//! Goal: the npm surface answers correctly (publish, packuments, version documents, tarballs,
//! dist-tags), every bad input gets the JSON error of SPEC section 6 with the right status and
//! leaves the store exactly as it was, and the connection layer holds up (keep-alive,
//! pipelining, chunked bodies, `Expect: 100-continue`, stalled clients, concurrent publishes).
//!
//! Method:
//! - One server process per test, killed by its pid on drop; its stderr is kept and printed
//!   when the test fails. The core publish-and-read scenario and the wire-level tests run
//!   under both I/O drivers (`--io-driver legacy` and `--io-driver uring`; uring is skipped
//!   with a note when the server exits saying io_uring is unavailable); the rest run under
//!   the default driver (`auto`).
//! - Every final response is checked for `X-Content-Type-Options: nosniff`, and every 4xx/5xx
//!   for a JSON body `{"error": <string>, "message": <string>}`.
//! - "Store unchanged" compares a `StoreSnapshot` taken before and after each bad request:
//!   every file and directory of the data directory byte for byte (blobs, `blobs/tmp`, the
//!   shard and auth redb files, `format.json`, `config.bin`; only `admin.token`, rewritten at
//!   each start, is left out), plus what HTTP serves for every package the test knows (full
//!   and abbreviated packument, dist-tags, each tarball, and the 404 of packages that must not
//!   exist). Measured: reads, refused publishes (409, 422, 400) and refused dist-tag removals
//!   leave the redb files byte-identical, so they are compared directly, not only over HTTP.
//! - Tarballs are real gzip tarballs built by `python3` (tarfile), which also computes their
//!   sha512 integrity, sha1 shasum and base64 (no crypto crate among the dev-dependencies).
//!   The multi-megabyte test packs seeded pseudo-random bytes (seed printed) with a matching
//!   package.json, since the server reads every tarball and checks its package.json.
//! - No sleeps: every wait is a socket read with a timeout or a channel receive with a deadline.

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long the server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Read and write timeout of every test socket.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Read timeout of the first request to a fresh server (it only answers a ping).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of a helper process (`python3`).
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response head the test client accepts.
const RESPONSE_HEAD_BYTES_MAX: usize = 64 * 1024;
/// Largest response body the test client accepts.
const RESPONSE_BODY_BYTES_MAX: usize = 16 << 20;
/// Server log kept in memory (the newest bytes), printed when a test fails.
const SERVER_LOG_BYTES_MAX: usize = 128 << 10;
/// The abbreviated packument's media type.
const ABBREVIATED: &str = "application/vnd.npm.install-v1+json";
/// Every test user's password.
const PASSWORD: &str = "correct horse battery staple";
/// What the server says when it exits because `--io-driver uring` cannot run (the only
/// reason a uring test is skipped; a log that merely mentions `io_uring` does not count).
const URING_UNAVAILABLE: &str = "io_uring requested but";
/// The listening line's prefix (the server's stdout contract).
const LISTENING_PREFIX: &str = "agentregistry listening on http://";

// ---------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------

/// One `agentregistry serve` process with its own temporary home; killed by pid on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    base_url: String,
    home: PathBuf,
    _home_dir: tempfile::TempDir,
    log: Arc<Mutex<Vec<u8>>>,
    log_done: mpsc::Receiver<()>,
    driver: &'static str,
}

/// Why a server did not come up.
struct StartFailure {
    log: String,
}

impl Server {
    /// Starts a server with the default I/O driver (`auto`).
    fn start() -> Server {
        Server::start_driver("auto")
            .unwrap_or_else(|e| panic!("the server did not start:\n{}", e.log))
    }

    /// Starts a server with `--io-driver DRIVER`; `Err` when the process exits first.
    fn start_driver(driver: &'static str) -> Result<Server, StartFailure> {
        let home_dir = tempfile::Builder::new()
            .prefix("http-test-home-")
            .tempdir()
            .expect("creating a temporary home");
        let home = home_dir.path().join("home");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentregistry"));
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "2",
            "--io-driver",
        ])
        .arg(driver)
        .arg("--home")
        .arg(&home);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("AGENTREGISTRY_") {
                cmd.env_remove(key);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning the agentregistry binary");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (log_done_tx, log_done) = mpsc::channel();
        let log_writer = Arc::clone(&log);
        thread::spawn(move || {
            keep_tail(stderr, &log_writer);
            let _ = log_done_tx.send(());
        });
        let (line_tx, line_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let first = reader.read_line(&mut line).map(|_| line);
            let _ = line_tx.send(first);
            // Keep draining so the server never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            base_url: String::new(),
            home,
            _home_dir: home_dir,
            log,
            log_done,
            driver,
        };
        let line = match line_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(server.failure(&format!("reading stdout failed: {e}"))),
            Err(_) => return Err(server.failure("no listening line before the deadline")),
        };
        let Some(authority) = line
            .strip_suffix('\n')
            .and_then(|l| l.strip_prefix(LISTENING_PREFIX))
        else {
            return Err(server.failure(&format!(
                "expected stdout line `{LISTENING_PREFIX}127.0.0.1:PORT`, got {line:?}"
            )));
        };
        server.addr = authority
            .parse()
            .unwrap_or_else(|e| panic!("listening line {line:?}: bad address ({e})"));
        assert!(
            server.addr.ip().is_loopback() && server.addr.port() != 0,
            "the server must listen on a real loopback port, said {line:?}"
        );
        server.base_url = format!("http://{authority}");
        Ok(server)
    }

    /// Stops the process and returns why it failed, with its log.
    fn failure(&mut self, why: &str) -> StartFailure {
        let _ = self.child.kill();
        let status = self.child.wait();
        let _ = self.log_done.recv_timeout(Duration::from_secs(5));
        StartFailure {
            log: format!(
                "{why}; exit: {status:?}\n--- server log ---\n{}",
                self.log()
            ),
        }
    }

    fn log(&self) -> String {
        let log = self.log.lock().expect("log lock");
        String::from_utf8_lossy(&log).into_owned()
    }

    fn send(&self, req: &Req) -> Response {
        send(self.addr, req)
    }

    fn get(&self, target: &str) -> Response {
        self.send(&Req::new("GET", target))
    }

    /// Registers (open registration on loopback) and returns a bearer token.
    fn login(&self, user: &str) -> String {
        let body = json!({"name": user, "password": PASSWORD});
        let res =
            self.send(&Req::new("PUT", &format!("/-/user/org.couchdb.user:{user}")).json(&body));
        assert_eq!(res.status, 201, "login of {user}: {}", res.describe());
        res.json()["token"]
            .as_str()
            .unwrap_or_else(|| panic!("login answer has no token: {}", res.describe()))
            .to_owned()
    }

    fn publish(&self, token: &str, fixture: &Fixture) -> Response {
        self.send(&fixture.publish_req(token))
    }

    /// Publishes and expects 201.
    fn publish_ok(&self, token: &str, fixture: &Fixture) {
        let res = self.publish(token, fixture);
        assert_eq!(
            res.status,
            201,
            "publish of {}@{}: {}",
            fixture.name,
            fixture.version,
            res.describe()
        );
        assert_eq!(res.json()["ok"], json!(true), "{}", res.describe());
    }

    /// The request path of a tarball URL the server put in a document.
    fn path_of(&self, url: &str) -> String {
        url.strip_prefix(&self.base_url)
            .unwrap_or_else(|| panic!("tarball URL {url:?} is not under {}", self.base_url))
            .to_owned()
    }

    /// The tarball path of `name@version` as the packument advertises it.
    fn tarball_path(&self, name: &str, version: &str) -> String {
        let res = self.get(&package_path(name));
        assert_eq!(
            res.status,
            200,
            "GET packument of {name}: {}",
            res.describe()
        );
        let url = res.json()["versions"][version]["dist"]["tarball"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}@{version} has no dist.tarball: {}", res.describe()))
            .to_owned();
        self.path_of(&url)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's pid only.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let _ = self.log_done.recv_timeout(Duration::from_secs(2));
            eprintln!(
                "--- server log ({} driver, home {}) ---\n{}\n--- end of server log ---",
                self.driver,
                self.home.display(),
                self.log()
            );
        }
    }
}

/// Copies `stream` into `log`, keeping only the newest `SERVER_LOG_BYTES_MAX` bytes.
fn keep_tail(mut stream: impl Read, log: &Mutex<Vec<u8>>) {
    let mut chunk = [0u8; 8192];
    while let Ok(n) = stream.read(&mut chunk) {
        if n == 0 {
            break;
        }
        let mut log = log.lock().expect("log lock");
        log.extend_from_slice(&chunk[..n]);
        if log.len() > SERVER_LOG_BYTES_MAX {
            let cut = log.len() - SERVER_LOG_BYTES_MAX;
            log.drain(..cut);
        }
    }
}

/// Starts a server with `driver`, or prints a note and returns `None` when the driver is
/// `uring` and the server exits saying `io_uring` is unavailable.
fn start_or_skip(driver: &'static str) -> Option<Server> {
    let server = match Server::start_driver(driver) {
        Ok(server) => server,
        Err(e) if driver == "uring" && e.log.contains(URING_UNAVAILABLE) => {
            eprintln!(
                "note: SKIPPED under the uring driver: io_uring is unavailable\n{}",
                e.log
            );
            return None;
        }
        Err(e) => panic!("the server ({driver} driver) did not start:\n{}", e.log),
    };
    // The cores start after the listening line; a uring failure shows up as an exit now.
    match try_send_within(server.addr, &Req::new("GET", "/-/ping"), PROBE_TIMEOUT) {
        Ok(res) if res.status == 200 => Some(server),
        outcome => {
            let mut server = server;
            let failure = server.failure("the first request failed");
            if driver == "uring" && failure.log.contains(URING_UNAVAILABLE) {
                eprintln!(
                    "note: SKIPPED under the uring driver: io_uring is unavailable\n{}",
                    failure.log
                );
                return None;
            }
            let got = match outcome {
                Ok(res) => res.describe(),
                Err(e) => e,
            };
            panic!(
                "GET /-/ping on a fresh server ({driver} driver): expected 200, got {got}\n{}",
                failure.log
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client
// ---------------------------------------------------------------------------------------

/// One request, serialized by `bytes`.
#[derive(Clone)]
struct Req {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    fn new(method: &str, target: &str) -> Req {
        Req {
            method: method.to_owned(),
            target: target.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn bearer(self, token: &str) -> Req {
        self.header("Authorization", &format!("Bearer {token}"))
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Req {
        self.body = body.into();
        self
    }

    fn json(self, value: &Value) -> Req {
        self.header("Content-Type", "application/json")
            .body(serde_json::to_vec(value).expect("JSON serializes"))
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The head only. A `Content-Length` is added for PUT/POST and non-empty bodies unless the
    /// request sets its own framing headers. `Host` names `addr`, as real clients do (the
    /// server may build URLs from it).
    fn head_bytes(&self, addr: SocketAddr) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {addr}\r\n",
            self.method, self.target
        );
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let framed = self.has_header("content-length") || self.has_header("transfer-encoding");
        if !framed && (!self.body.is_empty() || matches!(self.method.as_str(), "PUT" | "POST")) {
            let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        }
        head.push_str("\r\n");
        head.into_bytes()
    }

    fn bytes(&self, addr: SocketAddr) -> Vec<u8> {
        let mut out = self.head_bytes(addr);
        out.extend_from_slice(&self.body);
        out
    }

    fn describe(&self) -> String {
        let shown = self.target.chars().take(120).collect::<String>();
        format!("{} {shown} ({} body bytes)", self.method, self.body.len())
    }
}

/// One parsed response.
#[derive(Clone, Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The request, for messages.
    what: String,
    /// The answer to a HEAD request (no body).
    head_only: bool,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("expected a JSON body ({e}): {}", self.describe()))
    }

    /// The `error` field of a JSON error body.
    fn error_type(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }

    fn describe(&self) -> String {
        let mut shown = self.text();
        if shown.len() > 2000 {
            let mut cut = 2000;
            while !shown.is_char_boundary(cut) {
                cut -= 1;
            }
            shown.truncate(cut);
            shown.push_str("...[cut]");
        }
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}"))
            .collect();
        format!(
            "[{}] -> {} {{{}}} body {shown:?}",
            self.what,
            self.status,
            headers.join("; ")
        )
    }

    /// Asserts the SPEC section 6 invariants every final response must hold.
    fn check_invariants(&self) {
        assert_eq!(
            self.header("x-content-type-options"),
            Some("nosniff"),
            "every response needs X-Content-Type-Options: nosniff: {}",
            self.describe()
        );
        if self.status >= 400 {
            let content_type = self.header("content-type").unwrap_or_default();
            assert!(
                content_type.starts_with("application/json"),
                "an error must be JSON (content-type): {}",
                self.describe()
            );
            if self.head_only {
                return;
            }
            let body: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
                panic!("an error body must be JSON ({e}): {}", self.describe())
            });
            assert!(
                body["error"].as_str().is_some_and(|s| !s.is_empty())
                    && body["message"].as_str().is_some_and(|s| !s.is_empty()),
                "an error body must be {{\"error\": type, \"message\": text}}: {}",
                self.describe()
            );
        }
    }

    /// Asserts status and error type (and the invariants).
    fn expect_error(&self, status: u16, kind: &str) {
        assert_eq!(
            (self.status, self.error_type().as_str()),
            (status, kind),
            "expected {status} {kind:?}: {}",
            self.describe()
        );
    }
}

/// One client connection with a read buffer; every socket op has a timeout.
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        Conn::open_with(addr, IO_TIMEOUT)
    }

    fn open_with(addr: SocketAddr, timeout: Duration) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    fn connect(addr: SocketAddr) -> Conn {
        Conn::open(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
    }

    fn write(&mut self, bytes: &[u8]) {
        self.reader
            .get_mut()
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("writing {} bytes to the server: {e}", bytes.len()));
    }

    /// Reads one response, interim (1xx) ones included.
    fn read_any(&mut self, head_only: bool, what: &str) -> Result<Response, String> {
        read_response(&mut self.reader, head_only, what)
    }

    /// Reads one final response and checks its invariants; panics on I/O errors.
    fn read(&mut self, head_only: bool, what: &str) -> Response {
        let res = self
            .read_any(head_only, what)
            .unwrap_or_else(|e| panic!("reading the response to [{what}]: {e}"));
        assert!(
            res.status >= 200,
            "unexpected interim response: {}",
            res.describe()
        );
        res.check_invariants();
        res
    }

    /// True when the server closed the connection (EOF) before the read timeout.
    fn closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.reader.read(&mut byte) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }
}

fn read_response(
    reader: &mut BufReader<TcpStream>,
    head_only: bool,
    what: &str,
) -> Result<Response, String> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = reader
            .read_until(b'\n', &mut head)
            .map_err(|e| format!("reading the response head: {e} (got {:?})", lossy(&head)))?;
        if n == 0 {
            return Err(format!(
                "connection closed mid-head (got {:?})",
                lossy(&head)
            ));
        }
        if head.len() > RESPONSE_HEAD_BYTES_MAX {
            return Err("response head too large".to_owned());
        }
        if &head[before..] == b"\r\n" {
            break;
        }
    }
    let text = String::from_utf8(head).map_err(|_| "response head is not UTF-8".to_owned())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if version != "HTTP/1.1" {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut res = Response {
        status,
        headers,
        body: Vec::new(),
        what: what.to_owned(),
        head_only,
    };
    if status < 200 || head_only || status == 204 || status == 304 {
        return Ok(res);
    }
    if res.header("transfer-encoding").is_some() {
        return Err(format!(
            "unexpected Transfer-Encoding in {}",
            res.describe()
        ));
    }
    let length = res
        .header("content-length")
        .ok_or_else(|| format!("no Content-Length in {}", res.describe()))?;
    let length: usize = length
        .parse()
        .map_err(|_| format!("bad Content-Length in {}", res.describe()))?;
    if length > RESPONSE_BODY_BYTES_MAX {
        return Err(format!("body of {length} bytes is too large"));
    }
    res.body = vec![0; length];
    reader
        .read_exact(&mut res.body)
        .map_err(|e| format!("reading a {length}-byte body: {e}"))?;
    Ok(res)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One request on a new connection; `Err` on any I/O or framing failure.
fn try_send(addr: SocketAddr, req: &Req) -> Result<Response, String> {
    try_send_within(addr, req, IO_TIMEOUT)
}

/// `try_send` with `timeout` on every socket operation.
fn try_send_within(addr: SocketAddr, req: &Req, timeout: Duration) -> Result<Response, String> {
    let mut conn =
        Conn::open_with(addr, timeout).map_err(|e| format!("connecting to {addr}: {e}"))?;
    conn.reader
        .get_mut()
        .write_all(&req.bytes(addr))
        .map_err(|e| format!("writing the request: {e}"))?;
    let res = conn.read_any(req.method == "HEAD", &req.describe())?;
    res.check_invariants();
    Ok(res)
}

/// One request on a new connection; panics on I/O failures.
fn send(addr: SocketAddr, req: &Req) -> Response {
    try_send(addr, req).unwrap_or_else(|e| panic!("[{}]: {e}", req.describe()))
}

// ---------------------------------------------------------------------------------------
// Fixtures: real tarballs and npm publish documents
// ---------------------------------------------------------------------------------------

/// Builds gzip tarballs of tiny packages and their checksums. Input: JSON list of
/// `{name, version, salt}`; output: JSON list of `{hex, integrity, shasum, b64}`.
const FIXTURE_PY: &str = r#"
import base64, hashlib, io, json, sys, tarfile
out = []
for spec in json.load(sys.stdin):
    files = {
        "package/package.json": json.dumps({"name": spec["name"], "version": spec["version"],
            "main": "index.js", "license": "MIT"}, indent=2) + "\n",
        "package/index.js": "module.exports = %s;\n" % json.dumps(spec["salt"]),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 1700000000
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    out.append({
        "hex": data.hex(),
        "integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(),
        "shasum": hashlib.sha1(data).hexdigest(),
        "b64": base64.b64encode(data).decode(),
    })
json.dump(out, sys.stdout)
"#;

/// A package version ready to publish.
#[derive(Clone, Debug)]
struct Fixture {
    name: String,
    version: String,
    tarball: Vec<u8>,
    integrity: String,
    shasum: String,
    b64: String,
    /// Extra manifest fields (description, dependencies, ...).
    extra: serde_json::Map<String, Value>,
}

/// Builds one fixture per `(name, version, salt)`; a different salt gives different bytes.
fn fixtures(specs: &[(&str, &str, &str)]) -> Vec<Fixture> {
    let input: Vec<Value> = specs
        .iter()
        .map(|(name, version, salt)| json!({"name": name, "version": version, "salt": salt}))
        .collect();
    let input = serde_json::to_vec(&input).expect("JSON serializes");
    let output = run_helper("python3", &["-c", FIXTURE_PY], &input);
    let built: Vec<Value> =
        serde_json::from_slice(&output).expect("the fixture helper prints JSON");
    assert_eq!(built.len(), specs.len());
    specs
        .iter()
        .zip(built)
        .map(|((name, version, _), b)| {
            let field = |k: &str| b[k].as_str().expect("fixture field").to_owned();
            Fixture {
                name: (*name).to_owned(),
                version: (*version).to_owned(),
                tarball: hex_decode(&field("hex")),
                integrity: field("integrity"),
                shasum: field("shasum"),
                b64: field("b64"),
                extra: serde_json::Map::new(),
            }
        })
        .collect()
}

fn fixture(name: &str, version: &str, salt: &str) -> Fixture {
    fixtures(&[(name, version, salt)]).remove(0)
}

impl Fixture {
    fn manifest(&self) -> Value {
        let mut manifest = json!({
            "name": self.name,
            "version": self.version,
            "main": "index.js",
            "license": "MIT",
            "dist": {"integrity": self.integrity, "shasum": self.shasum},
        });
        let object = manifest.as_object_mut().expect("an object");
        for (k, v) in &self.extra {
            object.insert(k.clone(), v.clone());
        }
        manifest
    }

    /// npm's publish document.
    fn body(&self) -> Value {
        let file = format!("{}-{}.tgz", self.name, self.version);
        json!({
            "_id": self.name,
            "name": self.name,
            "dist-tags": {"latest": self.version},
            "versions": {self.version.clone(): self.manifest()},
            "_attachments": {file: {
                "content_type": "application/octet-stream",
                "data": self.b64,
                "length": self.tarball.len(),
            }},
        })
    }

    fn publish_req(&self, token: &str) -> Req {
        Req::new("PUT", &package_path(&self.name))
            .bearer(token)
            .json(&self.body())
    }
}

/// `/name` or `/@scope%2fname`.
fn package_path(name: &str) -> String {
    format!("/{}", name.replace('/', "%2f"))
}

/// Percent-encodes every byte but ASCII letters, digits and `-._@`.
fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._@".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn hex_decode(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd hex length");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digits"))
        .collect()
}

/// Runs a helper program with `stdin`, under `HELPER_TIMEOUT`; returns its stdout.
fn run_helper(program: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
    let pid = child.id();
    let mut child_stdin = child.stdin.take().expect("stdin is piped");
    let input = stdin.to_vec();
    thread::spawn(move || {
        let _ = child_stdin.write_all(&input);
    });
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(HELPER_TIMEOUT) {
        Ok(Ok(out)) => {
            assert!(
                out.status.success(),
                "{program} failed ({}): {}",
                out.status,
                lossy(&out.stderr)
            );
            out.stdout
        }
        Ok(Err(e)) => panic!("waiting for {program}: {e}"),
        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{program} did not finish within {HELPER_TIMEOUT:?}");
        }
    }
}

/// Decompresses gzip bytes with python3.
fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let script =
        "import gzip, sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))";
    run_helper("python3", &["-c", script], bytes)
}

/// A unique suffix so names never collide between tests of one run.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

// ---------------------------------------------------------------------------------------
// Store snapshots
// ---------------------------------------------------------------------------------------

/// What the store holds, as seen on disk and over HTTP.
#[derive(PartialEq, Eq)]
struct StoreSnapshot {
    /// Every file and directory under `<home>` but `admin.token`: relative path -> content
    /// (directories: None).
    files: BTreeMap<PathBuf, Option<Vec<u8>>>,
    /// `GET` target (and Accept variant) -> (status, body).
    http: BTreeMap<String, (u16, Vec<u8>)>,
}

impl StoreSnapshot {
    /// Snapshots `server` for `packages` (published or not).
    fn take(server: &Server, packages: &[&str]) -> StoreSnapshot {
        let mut files = BTreeMap::new();
        walk(&server.home, &server.home, &mut files);
        files.remove(Path::new("admin.token"));
        let mut http = BTreeMap::new();
        for name in packages {
            let full = server.get(&package_path(name));
            if full.status == 200 {
                let doc = full.json();
                let versions = doc["versions"].as_object().cloned().unwrap_or_default();
                for (version, manifest) in versions {
                    let url = manifest["dist"]["tarball"].as_str().unwrap_or_default();
                    let path = server.path_of(url);
                    let res = server.get(&path);
                    http.insert(
                        format!("tarball {name}@{version} {path}"),
                        (res.status, res.body),
                    );
                }
            }
            http.insert(format!("full {name}"), (full.status, full.body));
            let abbreviated = server.send(
                &Req::new("GET", &package_path(name))
                    .header("Accept", "application/vnd.npm.install-v1+json"),
            );
            http.insert(
                format!("abbreviated {name}"),
                (abbreviated.status, abbreviated.body),
            );
            let tags = server.get(&format!(
                "/-/package/{}/dist-tags",
                package_path(name)[1..].to_owned()
            ));
            http.insert(format!("dist-tags {name}"), (tags.status, tags.body));
        }
        StoreSnapshot { files, http }
    }

    /// Panics with the differences when `after` differs from `self`.
    fn assert_same(&self, after: &StoreSnapshot, what: &str) {
        if self == after {
            return;
        }
        let mut diffs = Vec::new();
        for key in self.files.keys().chain(after.files.keys()) {
            if self.files.get(key) != after.files.get(key) {
                diffs.push(format!(
                    "<home>/{}: before {}, after {}",
                    key.display(),
                    describe_entry(self.files.get(key)),
                    describe_entry(after.files.get(key))
                ));
            }
        }
        for key in self.http.keys().chain(after.http.keys()) {
            let (before, now) = (self.http.get(key), after.http.get(key));
            if before != now {
                let show = |e: Option<&(u16, Vec<u8>)>| {
                    e.map_or("absent".to_owned(), |(s, b)| format!("{s} {:?}", lossy(b)))
                };
                diffs.push(format!(
                    "{key}:\n  before {}\n  after  {}",
                    show(before),
                    show(now)
                ));
            }
        }
        diffs.dedup();
        panic!("the store changed after {what}:\n{}", diffs.join("\n"));
    }
}

fn describe_entry(entry: Option<&Option<Vec<u8>>>) -> String {
    match entry {
        None => "absent".to_owned(),
        Some(None) => "a directory".to_owned(),
        Some(Some(bytes)) => format!("a file of {} bytes", bytes.len()),
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        let relative = path.strip_prefix(root).expect("under root").to_path_buf();
        if path.is_dir() {
            out.insert(relative, None);
            walk(root, &path, out);
        } else {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.insert(relative, Some(bytes));
        }
    }
}

/// Sends each request on a new connection, checks (status, error type), and checks the store
/// is unchanged after each one.
fn expect_refused_unchanged(server: &Server, packages: &[&str], cases: &[(Req, u16, &str)]) {
    let mut before = StoreSnapshot::take(server, packages);
    for (req, status, kind) in cases {
        let res = server.send(req);
        res.expect_error(*status, kind);
        let after = StoreSnapshot::take(server, packages);
        before.assert_same(&after, &req.describe());
        before = after;
    }
}

// ---------------------------------------------------------------------------------------
// The core scenario under both I/O drivers
// ---------------------------------------------------------------------------------------

/// Login, publish (unscoped and scoped), idempotent retry, immutable versions, and every read:
/// packument (full and abbreviated), version document, tarball (both scoped URL forms),
/// dist-tags.
fn core_scenario(server: &Server) {
    let token = server.login("core-user");
    let plain = unique("core-pkg");
    let scoped = format!("@core/{}", unique("lib"));
    let built = fixtures(&[
        (&plain, "1.0.0", "first"),
        (&scoped, "2.0.0", "scoped"),
        (&plain, "1.0.0", "other bytes"),
    ]);
    let (first, scoped_fix, conflicting) = (&built[0], &built[1], &built[2]);

    server.publish_ok(&token, first);
    server.publish_ok(&token, scoped_fix);

    // Retrying an acknowledged publish is a no-op answered 200.
    let retry = server.publish(&token, first);
    assert_eq!(retry.status, 200, "identical retry: {}", retry.describe());
    // Same version, other bytes: refused, nothing changes.
    let before = StoreSnapshot::take(server, &[&plain, &scoped]);
    server
        .publish(&token, conflicting)
        .expect_error(409, "version_exists");
    before.assert_same(
        &StoreSnapshot::take(server, &[&plain, &scoped]),
        "a 409 publish",
    );

    for fix in [first, scoped_fix] {
        let full = server.get(&package_path(&fix.name));
        assert_eq!(full.status, 200, "{}", full.describe());
        let doc = full.json();
        assert_eq!(doc["name"], json!(fix.name), "{}", full.describe());
        assert_eq!(
            doc["dist-tags"]["latest"],
            json!(fix.version),
            "{}",
            full.describe()
        );
        let dist = &doc["versions"][&fix.version]["dist"];
        assert_eq!(
            dist["integrity"],
            json!(fix.integrity),
            "{}",
            full.describe()
        );
        assert_eq!(dist["shasum"], json!(fix.shasum), "{}", full.describe());

        let abbreviated = server.send(
            &Req::new("GET", &package_path(&fix.name))
                .header("Accept", "application/vnd.npm.install-v1+json"),
        );
        assert_eq!(abbreviated.status, 200, "{}", abbreviated.describe());
        let abbreviated_doc = abbreviated.json();
        assert_eq!(
            abbreviated_doc["versions"][&fix.version]["dist"]["integrity"],
            json!(fix.integrity)
        );

        let version_doc = server.get(&format!("{}/{}", package_path(&fix.name), fix.version));
        assert_eq!(version_doc.status, 200, "{}", version_doc.describe());
        assert_eq!(version_doc.json()["version"], json!(fix.version));

        let tarball = server.get(&server.tarball_path(&fix.name, &fix.version));
        assert_eq!(tarball.status, 200, "{}", tarball.describe());
        assert!(
            tarball.body == fix.tarball,
            "tarball bytes differ: {}",
            tarball.describe()
        );

        let tags = server.get(&format!(
            "/-/package/{}/dist-tags",
            &package_path(&fix.name)[1..]
        ));
        assert_eq!(tags.status, 200, "{}", tags.describe());
        assert_eq!(tags.json(), json!({"latest": fix.version}));
    }

    // Scoped tarballs answer under both `@scope%2fname` and `@scope/name`.
    let base = scoped.split('/').nth(1).expect("a scoped name");
    for path in [
        format!("/{}/-/{base}-2.0.0.tgz", scoped.replace('/', "%2f")),
        format!("/{scoped}/-/{base}-2.0.0.tgz"),
    ] {
        let res = server.get(&path);
        assert_eq!(res.status, 200, "{}", res.describe());
        assert!(res.body == scoped_fix.tarball, "{path}: bytes differ");
    }
    let missing = server.get(&format!("/{}", unique("never-published")));
    missing.expect_error(404, "not_found");
}

#[test]
fn core_scenario_legacy_driver() {
    let server = start_or_skip("legacy").expect("the legacy driver is always available");
    core_scenario(&server);
}

#[test]
fn core_scenario_uring_driver() {
    if let Some(server) = start_or_skip("uring") {
        core_scenario(&server);
    }
}

// ---------------------------------------------------------------------------------------
// Bad input: each gets its JSON error and leaves the store exactly as it was
// ---------------------------------------------------------------------------------------

#[test]
fn bad_publishes_are_refused_and_change_nothing() {
    let server = Server::start();
    let token = server.login("bad-input-user");
    let stable = fixture("stable-pkg", "1.0.0", "stable");
    server.publish_ok(&token, &stable);
    let fresh_name = "fresh-pkg";
    let fresh = fixture(fresh_name, "1.0.0", "fresh");
    let next = fixture("stable-pkg", "1.0.1", "next");
    let other_bytes = fixture("stable-pkg", "1.0.0", "other bytes");
    let put = |name: &str, body: Value| {
        Req::new("PUT", &package_path(name))
            .bearer(&token)
            .json(&body)
    };
    let with = |fix: &Fixture, edit: &dyn Fn(&mut Value)| {
        let mut body = fix.body();
        edit(&mut body);
        put(&fix.name, body)
    };
    let attachment = |fix: &Fixture| format!("{}-{}.tgz", fix.name, fix.version);
    let stranger = server.login("bad-input-stranger");

    let mut cases: Vec<(Req, u16, &str)> = vec![
        (
            Req::new("PUT", "/fresh-pkg")
                .bearer(&token)
                .header("Content-Type", "application/json")
                .body(&b"{\"name\": \"fresh-pkg\", \"versions\": {"[..]),
            400,
            "malformed_json",
        ),
        (
            Req::new("PUT", "/fresh-pkg")
                .bearer(&token)
                .body(&b"\xff\xfe not json"[..]),
            400,
            "malformed_json",
        ),
        (
            with(&fresh, &|b| {
                b["_attachments"][attachment(&fresh)]["data"] = json!("!!!not base64***");
            }),
            400,
            "bad_base64",
        ),
        (
            with(&next, &|b| {
                b["versions"]["1.0.1"]["dist"]["integrity"] = json!(stable.integrity);
            }),
            422,
            "integrity_mismatch",
        ),
        (
            with(&next, &|b| {
                b["versions"]["1.0.1"]["dist"]["shasum"] = json!(stable.shasum);
            }),
            422,
            "integrity_mismatch",
        ),
        (
            with(&fresh, &|b| {
                b["_attachments"][attachment(&fresh)]["length"] = json!(fresh.tarball.len() + 1);
            }),
            422,
            "integrity_mismatch",
        ),
        (
            // The body names another package than the URL.
            put("fresh-pkg", stable.body()),
            400,
            "name_mismatch",
        ),
        (
            with(&fresh, &|b| {
                b["versions"]["1.0.0"]["name"] = json!("stable-pkg");
            }),
            400,
            "name_mismatch",
        ),
        (other_bytes.publish_req(&token), 409, "version_exists"),
        // Without credentials, and with a token the server never issued.
        (
            Req::new("PUT", "/fresh-pkg").json(&fresh.body()),
            401,
            "unauthorized",
        ),
        (
            Req::new("PUT", "/fresh-pkg")
                .bearer("not-a-token")
                .json(&fresh.body()),
            401,
            "unauthorized",
        ),
        // Another user may not publish into a package they do not maintain.
        (next.publish_req(&stranger), 403, "forbidden"),
        // An empty body.
        (
            Req::new("PUT", "/fresh-pkg").bearer(&token),
            400,
            "bad_request",
        ),
    ];
    // A body without attachments is a metadata update (npm deprecate, unpublish): of a package
    // that does not exist it is a 404, and it cannot add a version.
    let mut no_attachments = fresh.body();
    no_attachments
        .as_object_mut()
        .expect("an object")
        .remove("_attachments");
    cases.push((put(fresh_name, no_attachments), 404, "not_found"));
    let mut new_version_without_tarball = next.body();
    new_version_without_tarball["_attachments"] = json!({});
    cases.push((
        put("stable-pkg", new_version_without_tarball),
        400,
        "bad_request",
    ));
    let mut no_versions = fresh.body();
    no_versions["versions"] = json!({});
    cases.push((put(fresh_name, no_versions), 400, "bad_request"));
    // Invalid versions: the key, and a version that is not semver.
    for bad_version in ["1.0", "01.0.0", "1.0.0-", "v 1", "9007199254740992.0.0"] {
        let mut body = fresh.body();
        let mut manifest = body["versions"]["1.0.0"].clone();
        manifest["version"] = json!(bad_version);
        body["versions"] = json!({bad_version: manifest});
        body["dist-tags"] = json!({"latest": bad_version});
        cases.push((put(fresh_name, body), 400, "invalid_version"));
    }
    expect_refused_unchanged(&server, &["stable-pkg", fresh_name], &cases);
    // The snapshot is sensitive: a publish that lands changes it.
    let before = StoreSnapshot::take(&server, &["stable-pkg", fresh_name]);
    server.publish_ok(&token, &next);
    assert!(
        before != StoreSnapshot::take(&server, &["stable-pkg", fresh_name]),
        "a snapshot must see a successful publish"
    );
    assert!(
        std::fs::read_dir(server.home.join("blobs/tmp"))
            .expect("blobs/tmp exists")
            .next()
            .is_none(),
        "no temp files may be left behind by refused publishes"
    );
}

#[test]
fn invalid_package_names_are_refused_and_change_nothing() {
    let server = Server::start();
    let token = server.login("name-user");
    let stable = fixture("name-stable", "1.0.0", "x");
    server.publish_ok(&token, &stable);
    let long = "a".repeat(215);
    let names: Vec<&str> = vec![
        &long,
        "UpperCase",
        "@Scope/lower",
        ".hidden",
        "_underscore",
        "has space",
        " leading-space",
        "tilde~name",
        "quote'name",
        "bang!name",
        "paren(name)",
        "star*name",
        "node_modules",
        "favicon.ico",
        "@scope/.dot",
        "@scope/_under",
        "percent%41",
        "..",
        "@/empty-scope",
    ];
    let built = fixture("placeholder", "1.0.0", "names");
    let mut cases = Vec::new();
    for name in &names {
        let mut fix = built.clone();
        fix.name = (*name).to_owned();
        // The URL carries the name percent-encoded (the server decodes it once); the scope
        // separator stays a real '/'. The body names the same package.
        let target = format!("/{}", percent_encode(name).replace("%2F", "/"));
        let req = Req::new("PUT", &target).bearer(&token).json(&fix.body());
        cases.push((req, 400, "invalid_package_name"));
    }
    let mut packages: Vec<&str> = names.clone();
    packages.retain(|n| !n.contains(['%', ' ', '\'', '(', ')', '!', '*', '~']) && *n != "..");
    packages.push("name-stable");
    // Snapshot readable names only (GET of the others is itself refused).
    let mut before = StoreSnapshot::take(&server, &packages);
    for (req, status, kind) in &cases {
        let res = server.send(req);
        res.expect_error(*status, kind);
        let after = StoreSnapshot::take(&server, &packages);
        before.assert_same(&after, &req.describe());
        before = after;
    }
    // Reads of those names are refused the same way (4xx JSON, never a document).
    for name in &names {
        let target = format!("/{}", percent_encode(name).replace("%2F", "/"));
        let res = server.get(&target);
        assert!(
            matches!(res.status, 400 | 404),
            "GET of invalid name {name:?}: {}",
            res.describe()
        );
    }
}

#[test]
fn framing_and_limit_errors_are_refused_and_change_nothing() {
    let server = Server::start();
    let token = server.login("framing-user");
    let stable = fixture("framing-pkg", "1.0.0", "stable");
    server.publish_ok(&token, &stable);
    let fresh = fixture("framing-fresh", "1.0.0", "fresh");
    let packages = ["framing-pkg", "framing-fresh"];
    let valid_body = serde_json::to_vec(&fresh.body()).expect("JSON");
    let mut before = StoreSnapshot::take(&server, &packages);

    // Each: raw bytes, expected status and error type; the connection must close after.
    let mut too_many = b"GET /-/ping HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..120 {
        too_many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    too_many.extend_from_slice(b"\r\n");
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9 * 1024));
    let head_for = |extra: &str| {
        let mut raw = format!(
            "PUT /framing-fresh HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\n{extra}\r\n"
        )
        .into_bytes();
        raw.extend_from_slice(&valid_body);
        raw
    };
    let n = valid_body.len();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "too many headers",
            too_many,
            431,
            "request_header_fields_too_large",
        ),
        (
            "target over 8 KiB",
            long_target.into_bytes(),
            414,
            "uri_too_long",
        ),
        (
            "Content-Length with Transfer-Encoding",
            head_for(&format!(
                "Content-Length: {n}\r\nTransfer-Encoding: chunked\r\n"
            )),
            400,
            "bad_request",
        ),
        (
            "two different Content-Lengths",
            head_for(&format!(
                "Content-Length: {n}\r\nContent-Length: {}\r\n",
                n + 1
            )),
            400,
            "bad_request",
        ),
        (
            "Transfer-Encoding: gzip",
            head_for("Transfer-Encoding: gzip\r\n"),
            501,
            "not_implemented",
        ),
        (
            "Transfer-Encoding: gzip, chunked",
            head_for("Transfer-Encoding: gzip, chunked\r\n"),
            501,
            "not_implemented",
        ),
        (
            "negative Content-Length",
            head_for("Content-Length: -5\r\n"),
            400,
            "bad_request",
        ),
    ];
    for (what, raw, status, kind) in cases {
        let mut conn = Conn::connect(server.addr);
        conn.write(&raw);
        let res = conn.read(false, what);
        res.expect_error(status, kind);
        assert!(
            conn.closed_by_server(),
            "{what}: the connection must be closed after"
        );
        let after = StoreSnapshot::take(&server, &packages);
        before.assert_same(&after, what);
        before = after;
    }

    // A head over the 64 KiB limit: sent until the server answers (it may stop reading).
    let mut conn = Conn::connect(server.addr);
    let mut big = b"GET /-/ping HTTP/1.1\r\nHost: x\r\n".to_vec();
    while big.len() <= 66 * 1024 {
        big.extend_from_slice(
            format!("X-Filler-{}: {}\r\n", big.len(), "f".repeat(1000)).as_bytes(),
        );
    }
    let _ = conn.reader.get_mut().write_all(&big);
    let res = conn.read(false, "a 66 KiB request head");
    res.expect_error(431, "request_header_fields_too_large");

    // A body over the publish limit is refused from its Content-Length alone, promptly.
    let mut conn = Conn::connect(server.addr);
    let started = Instant::now();
    conn.write(
        format!(
            "PUT /framing-fresh HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 200000000\r\n\r\n"
        )
        .as_bytes(),
    );
    let res = conn.read(false, "PUT with Content-Length: 200000000 and no body");
    let elapsed = started.elapsed();
    assert_eq!(res.status, 413, "{}", res.describe());
    assert!(
        elapsed < Duration::from_secs(3),
        "413 must come without waiting for the body; took {elapsed:?}"
    );
    // A small-body endpoint refuses a large declared body too.
    let res = send(
        server.addr,
        &Req::new("PUT", "/-/package/framing-pkg/dist-tags/beta")
            .bearer(&token)
            .header("Content-Length", "1000000"),
    );
    assert_eq!(res.status, 413, "{}", res.describe());
    // ... and a chunked body that grows past it. The server may answer before reading all of
    // it, so the body is written from another thread and write errors are ignored.
    let mut conn = Conn::connect(server.addr);
    let head = Req::new("PUT", "/-/package/framing-pkg/dist-tags/beta")
        .bearer(&token)
        .header("Transfer-Encoding", "chunked")
        .head_bytes(server.addr);
    conn.write(&head);
    let mut writer = conn
        .reader
        .get_ref()
        .try_clone()
        .expect("cloning the socket");
    let pusher = thread::spawn(move || {
        for _ in 0..9 {
            let mut chunk = b"2000\r\n".to_vec();
            chunk.extend_from_slice(&[b'"'; 0x2000]);
            chunk.extend_from_slice(b"\r\n");
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = writer.write_all(b"0\r\n\r\n");
    });
    let res = conn.read(false, "a 72 KiB chunked body to a 64 KiB endpoint");
    assert_eq!(res.status, 413, "{}", res.describe());
    pusher.join().expect("the writer thread");

    // Malformed chunk syntax is a 400.
    let mut conn = Conn::connect(server.addr);
    let mut raw = Req::new("PUT", "/framing-fresh")
        .bearer(&token)
        .header("Transfer-Encoding", "chunked")
        .head_bytes(server.addr);
    raw.extend_from_slice(b"zz\r\nhello\r\n0\r\n\r\n");
    conn.write(&raw);
    conn.read(false, "a malformed chunk size")
        .expect_error(400, "bad_request");
    before.assert_same(&StoreSnapshot::take(&server, &packages), "oversized bodies");

    // Unknown endpoints and wrong methods are JSON errors too.
    let routing: Vec<(Req, u16, &str)> = vec![
        (Req::new("GET", "/-/no-such-endpoint"), 404, "not_found"),
        (Req::new("GET", "/a/b/c/d"), 404, "not_found"),
        (Req::new("GET", "/"), 404, "not_found"),
        (
            Req::new("DELETE", "/framing-pkg").bearer(&token),
            405,
            "method_not_allowed",
        ),
        (Req::new("POST", "/-/ping"), 405, "method_not_allowed"),
        (
            Req::new("PATCH", "/framing-pkg").bearer(&token),
            405,
            "method_not_allowed",
        ),
        (
            Req::new("PUT", "/framing-pkg/1.0.0")
                .bearer(&token)
                .body("{}"),
            405,
            "method_not_allowed",
        ),
    ];
    expect_refused_unchanged(&server, &packages, &routing);
    before.assert_same(&StoreSnapshot::take(&server, &packages), "routing errors");
}

#[test]
fn path_traversal_never_reaches_the_file_system() {
    let server = Server::start();
    let token = server.login("traversal-user");
    let pkg = fixture("trav-pkg", "1.0.0", "t");
    server.publish_ok(&token, &pkg);
    // Something that must never leak, whatever the request.
    let home = server.home.display().to_string();
    let format_json = std::fs::read_to_string(server.home.join("format.json")).expect("format");
    let targets = [
        "/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2fetc%2fpasswd",
        "/../../etc/passwd",
        "/%252e%252e/x",
        "/%252e%252e%252fformat.json",
        "/a%5c..%5cb",
        "/..%5c..%5cformat.json",
        "/a%00b",
        "/trav-pkg%00/-/trav-pkg-1.0.0.tgz",
        "/%c0%ae%c0%ae/x",
        "/%c0%ae%c0%ae/%c0%ae%c0%ae/format.json",
        "/%e0%80%ae%e0%80%ae/x",
        "/trav-pkg/-/..%2f..%2fformat.json",
        "/trav-pkg/-/../../format.json",
        "/trav-pkg/-/%2e%2e%2fformat.json",
        "/trav-pkg/-/..",
        "/trav-pkg/-/%2e%2e",
        "/trav-pkg/-/.%2e%2fconfig.bin",
        "/trav-pkg/-/trav-pkg-1.0.0.tgz%2f..%2f..%2fformat.json",
        "/trav-pkg/..%2f..%2fformat.json",
        "/trav-pkg/%2e%2e",
        "/%2e%2e",
        "/.%2e/format.json",
        "/%2fetc%2fpasswd",
        "//etc/passwd",
        "/@scope%2f..%2f..%2fformat.json",
        "/@..%2f..%2fformat.json/-/x.tgz",
        "/-/package/..%2f..%2fformat.json/dist-tags",
        "/-/package/%2e%2e/dist-tags",
        "/-/user/org.couchdb.user:..%2f..%2fauth.redb",
        "/blobs/tmp",
        "/format.json",
        "/config.bin",
        "/shards/000.redb",
    ];
    let packages = ["trav-pkg"];
    let mut before = StoreSnapshot::take(&server, &packages);
    for target in targets {
        for method in ["GET", "HEAD"] {
            let res = server.send(&Req::new(method, target).bearer(&token));
            let what = format!("{method} {target}");
            assert!(
                (400..500).contains(&res.status),
                "{what}: expected a 4xx JSON error: {}",
                res.describe()
            );
            if method == "GET" {
                let body = res.text();
                assert!(
                    res.json()["error"].is_string(),
                    "{what}: {}",
                    res.describe()
                );
                for secret in [
                    "root:",
                    "AREG",
                    "format_version",
                    home.as_str(),
                    format_json.trim(),
                ] {
                    assert!(
                        !body.contains(secret),
                        "{what} leaked {secret:?}: {}",
                        res.describe()
                    );
                }
            }
        }
        let after = StoreSnapshot::take(&server, &packages);
        before.assert_same(&after, target);
        before = after;
    }
}

// ---------------------------------------------------------------------------------------
// The connection layer, under both drivers
// ---------------------------------------------------------------------------------------

/// Three GETs in one write on one connection get three responses, in order; the connection
/// then still serves a fourth request.
fn pipelining(server: &Server) {
    let token = server.login("pipe-user");
    let pkg = fixture(&unique("pipe-pkg"), "1.0.0", "p");
    server.publish_ok(&token, &pkg);
    let reqs = [
        Req::new("GET", &package_path(&pkg.name)),
        Req::new("GET", "/-/no-such-endpoint"),
        Req::new("GET", &format!("/-/package/{}/dist-tags", pkg.name)),
    ];
    let expected: Vec<Response> = reqs.iter().map(|r| server.send(r)).collect();
    let mut conn = Conn::connect(server.addr);
    let batch: Vec<u8> = reqs.iter().flat_map(|r| r.bytes(server.addr)).collect();
    conn.write(&batch);
    for (req, want) in reqs.iter().zip(&expected) {
        let got = conn.read(false, &req.describe());
        assert_eq!(
            (got.status, &got.body),
            (want.status, &want.body),
            "pipelined answer to {} differs from the unpipelined one: {}",
            req.describe(),
            got.describe()
        );
        assert_ne!(
            got.header("connection"),
            Some("close"),
            "{}",
            got.describe()
        );
    }
    conn.write(&Req::new("GET", "/-/ping").bytes(server.addr));
    let ping = conn.read(false, "GET /-/ping after the batch");
    assert_eq!(ping.status, 200, "{}", ping.describe());
    // A pipelined publish followed by a GET of what it published.
    let next = fixture(&pkg.name, "1.0.1", "p2");
    let mut batch = next.publish_req(&token).bytes(server.addr);
    batch.extend_from_slice(
        &Req::new("GET", &format!("{}/1.0.1", package_path(&pkg.name))).bytes(server.addr),
    );
    conn.write(&batch);
    let published = conn.read(false, "pipelined publish");
    assert_eq!(published.status, 201, "{}", published.describe());
    let version = conn.read(false, "GET after a pipelined publish");
    assert_eq!(version.status, 200, "{}", version.describe());
    assert_eq!(version.json()["version"], json!("1.0.1"));
}

/// A publish with a chunked body (several chunks, several writes) works, and a pipelined
/// request after it is answered too.
fn chunked_publish(server: &Server) {
    let token = server.login("chunk-user");
    let pkg = fixture(&unique("chunk-pkg"), "1.0.0", "chunked");
    let body = serde_json::to_vec(&pkg.body()).expect("JSON");
    let req = Req::new("PUT", &package_path(&pkg.name))
        .bearer(&token)
        .header("Content-Type", "application/json")
        .header("Transfer-Encoding", "chunked");
    let mut conn = Conn::connect(server.addr);
    conn.write(&req.head_bytes(server.addr));
    for (i, chunk) in body.chunks(97).enumerate() {
        let mut piece = format!("{:x}", chunk.len()).into_bytes();
        if i % 3 == 1 {
            piece.extend_from_slice(b";ext=1");
        }
        piece.extend_from_slice(b"\r\n");
        piece.extend_from_slice(chunk);
        piece.extend_from_slice(b"\r\n");
        conn.write(&piece);
    }
    let mut end = b"0\r\n\r\n".to_vec();
    end.extend_from_slice(&Req::new("GET", "/-/ping").bytes(server.addr));
    conn.write(&end);
    let res = conn.read(false, "chunked publish");
    assert_eq!(res.status, 201, "{}", res.describe());
    let ping = conn.read(false, "GET /-/ping pipelined after the chunked body");
    assert_eq!(ping.status, 200, "{}", ping.describe());
    let tarball = server.get(&server.tarball_path(&pkg.name, "1.0.0"));
    assert!(
        tarball.body == pkg.tarball,
        "tarball differs: {}",
        tarball.describe()
    );
}

/// `Expect: 100-continue` gets `100 Continue` before the body is sent, then the final answer.
fn expect_continue_publish(server: &Server) {
    let token = server.login("continue-user");
    let pkg = fixture(&unique("continue-pkg"), "1.0.0", "continue");
    let req = pkg.publish_req(&token).header("Expect", "100-continue");
    let mut conn = Conn::connect(server.addr);
    conn.write(&req.head_bytes(server.addr));
    let interim = conn
        .read_any(false, "head with Expect: 100-continue")
        .unwrap_or_else(|e| panic!("expected HTTP/1.1 100 Continue before sending the body: {e}"));
    assert_eq!(interim.status, 100, "{}", interim.describe());
    conn.write(&req.body);
    let res = conn.read(false, "publish after 100 Continue");
    assert_eq!(res.status, 201, "{}", res.describe());
    let tarball = server.get(&server.tarball_path(&pkg.name, "1.0.0"));
    assert!(tarball.body == pkg.tarball, "tarball differs");
}

/// Clients that stall mid-head or mid-body do not block anyone else; a stalled head completed
/// later is still answered.
fn stalled_clients(server: &Server) {
    let token = server.login("stall-user");
    let mut stalled_heads: Vec<Conn> = (0..4)
        .map(|_| {
            let mut conn = Conn::connect(server.addr);
            conn.write(b"GET /-/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Partial: ");
            conn
        })
        .collect();
    let pkg = fixture(&unique("stall-pkg"), "1.0.0", "stall");
    let publish = pkg.publish_req(&token);
    let mut stalled_body = Conn::connect(server.addr);
    stalled_body.write(&publish.head_bytes(server.addr));
    stalled_body.write(&publish.body[..10]);

    // Everyone else is served meanwhile, reads and writes alike.
    let started = Instant::now();
    for _ in 0..5 {
        let res = server.get("/-/ping");
        assert_eq!(res.status, 200, "{}", res.describe());
    }
    let other = fixture(&unique("stall-other"), "1.0.0", "other");
    server.publish_ok(&token, &other);
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "other clients waited {elapsed:?} behind stalled ones"
    );

    // The stalled clients finish and are answered.
    for conn in &mut stalled_heads {
        conn.write(b"1\r\n\r\n");
        let res = conn.read(false, "a stalled head, completed");
        assert_eq!(res.status, 200, "{}", res.describe());
    }
    stalled_body.write(&publish.body[10..]);
    let res = stalled_body.read(false, "a stalled publish body, completed");
    assert_eq!(res.status, 201, "{}", res.describe());
}

macro_rules! under_both_drivers {
    ($scenario:ident, $legacy:ident, $uring:ident) => {
        #[test]
        fn $legacy() {
            let server = start_or_skip("legacy").expect("the legacy driver is always available");
            $scenario(&server);
        }

        #[test]
        fn $uring() {
            if let Some(server) = start_or_skip("uring") {
                $scenario(&server);
            }
        }
    };
}

under_both_drivers!(
    pipelining,
    pipelining_legacy_driver,
    pipelining_uring_driver
);
under_both_drivers!(
    chunked_publish,
    chunked_publish_legacy_driver,
    chunked_publish_uring_driver
);
under_both_drivers!(
    expect_continue_publish,
    expect_continue_legacy_driver,
    expect_continue_uring_driver
);
under_both_drivers!(
    stalled_clients,
    stalled_clients_legacy_driver,
    stalled_clients_uring_driver
);

// ---------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------

/// Runs `publish` for each fixture on its own thread, all released at once; returns the
/// responses in fixture order.
fn publish_concurrently(server: &Server, token: &str, built: &[Fixture]) -> Vec<Response> {
    let barrier = Arc::new(Barrier::new(built.len()));
    let handles: Vec<_> = built
        .iter()
        .map(|fix| {
            let (addr, req, barrier) = (server.addr, fix.publish_req(token), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                send(addr, &req)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("a publishing thread panicked"))
        .collect()
}

#[test]
fn concurrent_publishes_of_different_versions_all_land() {
    let server = Server::start();
    let token = server.login("conc-user");
    let name = "conc-versions";
    let versions: Vec<String> = (0..8).map(|i| format!("1.0.{i}")).collect();
    let specs: Vec<(&str, &str, &str)> = versions
        .iter()
        .map(|v| (name, v.as_str(), v.as_str()))
        .collect();
    let built = fixtures(&specs);
    let answers = publish_concurrently(&server, &token, &built);
    for (fix, res) in built.iter().zip(&answers) {
        assert_eq!(
            res.status,
            201,
            "{}@{}: {}",
            name,
            fix.version,
            res.describe()
        );
    }
    let doc = server.get(&package_path(name)).json();
    let listed: Vec<&String> = doc["versions"]
        .as_object()
        .expect("versions")
        .keys()
        .collect();
    assert_eq!(
        listed.len(),
        8,
        "the packument must list all 8 versions: {listed:?}"
    );
    for fix in &built {
        assert_eq!(
            doc["versions"][&fix.version]["dist"]["integrity"],
            json!(fix.integrity)
        );
        let tarball = server.get(&server.tarball_path(name, &fix.version));
        assert!(
            tarball.body == fix.tarball,
            "{name}@{}: served tarball differs from the published one",
            fix.version
        );
        assert!(
            doc["time"][&fix.version].is_string(),
            "time[{}] missing",
            fix.version
        );
    }
}

#[test]
fn concurrent_publishes_of_one_version_have_one_winner() {
    let server = Server::start();
    let token = server.login("race-user");
    let name = "conc-race";
    let salts: Vec<String> = (0..8).map(|i| format!("contender {i}")).collect();
    let specs: Vec<(&str, &str, &str)> =
        salts.iter().map(|s| (name, "1.0.0", s.as_str())).collect();
    let built = fixtures(&specs);
    let answers = publish_concurrently(&server, &token, &built);
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    let winners: Vec<usize> = (0..8).filter(|&i| statuses[i] == 201).collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one 201 expected, statuses {statuses:?}"
    );
    for (i, res) in answers.iter().enumerate() {
        if i != winners[0] {
            res.expect_error(409, "version_exists");
        }
    }
    let winner = &built[winners[0]];
    let tarball = server.get(&server.tarball_path(name, "1.0.0"));
    assert!(
        tarball.body == winner.tarball,
        "the served tarball must be the winner's bytes"
    );
    let doc = server.get(&package_path(name)).json();
    assert_eq!(
        doc["versions"]["1.0.0"]["dist"]["integrity"],
        json!(winner.integrity)
    );
    assert_eq!(
        doc["versions"].as_object().map(serde_json::Map::len),
        Some(1)
    );
}

/// Checksums of arbitrary bytes (stdin): `{integrity, shasum, b64}`.
const CHECKSUMS_PY: &str = r#"
import base64, hashlib, json, sys
data = sys.stdin.buffer.read()
json.dump({"integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(),
           "shasum": hashlib.sha1(data).hexdigest(),
           "b64": base64.b64encode(data).decode()}, sys.stdout)
"#;

/// `len` pseudo-random bytes from `seed` (xorshift64*), so a failure replays exactly.
fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A multi-megabyte tarball (larger than every read buffer, the per-core tarball cache's
/// entry limit and the copy-into-head threshold) publishes over a keep-alive connection with a
/// pipelined request behind it, and reads back byte for byte, repeatedly.
#[test]
fn large_tarball_round_trips() {
    let seed = 0x5eed_0001_u64;
    eprintln!("large_tarball_round_trips: seed {seed:#x}");
    let server = Server::start();
    let token = server.login("large-user");
    let payload = pseudo_random_bytes(seed, 3 * 1024 * 1024 + 17);
    let tarball = support::npm_tarball("large-pkg", "1.0.0", &payload);
    assert!(tarball.len() > 3 * 1024 * 1024, "{} bytes", tarball.len());
    let sums: Value =
        serde_json::from_slice(&run_helper("python3", &["-c", CHECKSUMS_PY], &tarball))
            .expect("the checksum helper prints JSON");
    let field = |k: &str| sums[k].as_str().expect("checksum field").to_owned();
    let pkg = Fixture {
        name: "large-pkg".to_owned(),
        version: "1.0.0".to_owned(),
        tarball,
        integrity: field("integrity"),
        shasum: field("shasum"),
        b64: field("b64"),
        extra: serde_json::Map::new(),
    };
    let mut conn = Conn::connect(server.addr);
    let mut batch = pkg.publish_req(&token).bytes(server.addr);
    batch.extend_from_slice(&Req::new("GET", "/large-pkg/1.0.0").bytes(server.addr));
    conn.write(&batch);
    let res = conn.read(false, "publish of a 3 MiB tarball");
    assert_eq!(res.status, 201, "{}", res.describe());
    let doc = conn.read(false, "GET pipelined behind the large publish");
    assert_eq!(doc.status, 200, "{}", doc.describe());
    assert_eq!(doc.json()["dist"]["integrity"], json!(pkg.integrity));
    let path = server.tarball_path("large-pkg", "1.0.0");
    for round in 0..3 {
        let req = Req::new("GET", &path);
        conn.write(&req.bytes(server.addr));
        let res = conn.read(false, &req.describe());
        assert_eq!(res.status, 200, "round {round}: {}", res.describe());
        assert!(
            res.body == pkg.tarball,
            "round {round}: served {} bytes differ from the published {} (seed {seed:#x})",
            res.body.len(),
            pkg.tarball.len()
        );
    }
    let head = server.send(&Req::new("HEAD", &path));
    assert_eq!(head.status, 200, "{}", head.describe());
    let length = pkg.tarball.len().to_string();
    assert_eq!(head.header("content-length"), Some(length.as_str()));
}

// ---------------------------------------------------------------------------------------
// Packument representations and caching headers
// ---------------------------------------------------------------------------------------

#[test]
fn packument_representations_etags_and_gzip() {
    let server = Server::start();
    let token = server.login("doc-user");
    let name = "doc-pkg";
    let mut pkg = fixture(name, "1.0.0", "doc");
    // Large enough (full and abbreviated) to be served gzip: a long description and many
    // dependencies (the abbreviated document keeps dependencies).
    pkg.extra.insert(
        "description".into(),
        json!("A long description. ".repeat(100)),
    );
    let deps: serde_json::Map<String, Value> = (0..60)
        .map(|i| (format!("dependency-number-{i}"), json!("^1.2.3")))
        .collect();
    pkg.extra.insert("dependencies".into(), Value::Object(deps));
    server.publish_ok(&token, &pkg);
    let path = package_path(name);

    let full = server.get(&path);
    assert_eq!(full.status, 200, "{}", full.describe());
    assert!(
        full.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{}",
        full.describe()
    );
    let abbreviated = server.send(&Req::new("GET", &path).header("Accept", ABBREVIATED));
    assert_eq!(abbreviated.status, 200, "{}", abbreviated.describe());
    assert!(
        abbreviated
            .header("content-type")
            .is_some_and(|c| c.starts_with(ABBREVIATED)),
        "abbreviated content-type: {}",
        abbreviated.describe()
    );
    let abbreviated_doc = abbreviated.json();
    assert!(
        abbreviated_doc["time"]["1.0.0"].is_string(),
        "the abbreviated document carries time: {}",
        abbreviated.describe()
    );
    assert!(abbreviated_doc["versions"]["1.0.0"]["dependencies"].is_object());
    // npm's Accept header lists both types with q-values.
    let npm_accept = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";
    let npm_style = server.send(&Req::new("GET", &path).header("Accept", npm_accept));
    assert_eq!(
        npm_style.body, abbreviated.body,
        "npm's Accept header selects abbreviated"
    );

    for res in [&full, &abbreviated] {
        let vary = res.header("vary").unwrap_or_default().to_ascii_lowercase();
        assert!(
            vary.contains("accept"),
            "Vary must include Accept: {}",
            res.describe()
        );
    }
    let etag_full = full.header("etag").expect("full ETag").to_owned();
    let etag_abbreviated = abbreviated
        .header("etag")
        .expect("abbreviated ETag")
        .to_owned();
    assert_ne!(
        etag_full, etag_abbreviated,
        "the two representations need different ETags"
    );

    // 304 exactly when a matching validator is sent.
    let conditional = |accept: Option<&str>, etag: Option<&str>| {
        let mut req = Req::new("GET", &path);
        if let Some(accept) = accept {
            req = req.header("Accept", accept);
        }
        if let Some(etag) = etag {
            req = req.header("If-None-Match", etag);
        }
        server.send(&req)
    };
    let res = conditional(None, Some(&etag_full));
    assert_eq!(res.status, 304, "{}", res.describe());
    assert!(res.body.is_empty());
    assert!(
        res.header("etag").is_some(),
        "a 304 repeats the ETag: {}",
        res.describe()
    );
    let res = conditional(Some(ABBREVIATED), Some(&etag_abbreviated));
    assert_eq!(res.status, 304, "{}", res.describe());
    let res = conditional(None, Some(&format!("\"other\", W/{etag_full}")));
    assert_eq!(
        res.status,
        304,
        "a validator list with a weak match: {}",
        res.describe()
    );
    let res = conditional(None, None);
    assert_eq!(
        res.status,
        200,
        "no If-None-Match, no 304: {}",
        res.describe()
    );
    let res = conditional(None, Some("\"not-the-etag\""));
    assert_eq!(res.status, 200, "{}", res.describe());
    assert_eq!(res.body, full.body);
    let res = conditional(Some(ABBREVIATED), Some(&etag_full));
    assert_eq!(
        res.status,
        200,
        "the full ETag does not validate the abbreviated: {}",
        res.describe()
    );
    assert_eq!(res.body, abbreviated.body);

    // gzip when accepted, for documents of 1 KiB and more.
    for (accept, identity) in [(None, &full), (Some(ABBREVIATED), &abbreviated)] {
        assert!(
            identity.body.len() >= 1024,
            "fixture too small: {} bytes",
            identity.body.len()
        );
        let mut req = Req::new("GET", &path).header("Accept-Encoding", "gzip, deflate, br");
        if let Some(accept) = accept {
            req = req.header("Accept", accept);
        }
        let zipped = server.send(&req);
        assert_eq!(zipped.status, 200, "{}", zipped.describe());
        assert_eq!(
            zipped.header("content-encoding"),
            Some("gzip"),
            "{}",
            zipped.describe()
        );
        assert!(
            zipped.body.starts_with(&[0x1f, 0x8b]),
            "gzip magic bytes expected"
        );
        assert_eq!(
            gunzip(&zipped.body),
            identity.body,
            "gzip body decodes to the identity body"
        );
        let vary = zipped
            .header("vary")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(vary.contains("accept"), "{}", zipped.describe());
        let zipped_etag = zipped.header("etag").expect("gzip ETag").to_owned();
        let res = server.send(&req.clone().header("If-None-Match", &zipped_etag));
        assert_eq!(
            res.status,
            304,
            "revalidating the gzip form: {}",
            res.describe()
        );
    }
    // Without Accept-Encoding: never gzip.
    assert_eq!(full.header("content-encoding"), None, "{}", full.describe());

    // HEAD: the same head, no body.
    let head = server.send(&Req::new("HEAD", &path));
    assert_eq!(head.status, 200, "{}", head.describe());
    assert_eq!(
        head.header("content-length"),
        Some(full.body.len().to_string().as_str())
    );
    assert_eq!(head.header("etag"), Some(etag_full.as_str()));
}

// ---------------------------------------------------------------------------------------
// Version documents and dist-tags
// ---------------------------------------------------------------------------------------

#[test]
fn version_documents_and_dist_tags() {
    let server = Server::start();
    let token = server.login("tags-user");
    let name = "tags-pkg";
    let built = fixtures(&[(name, "1.0.0", "a"), (name, "1.1.0", "b")]);
    server.publish_ok(&token, &built[0]);
    server.publish_ok(&token, &built[1]);
    let path = package_path(name);
    let tags_path = format!("/-/package/{name}/dist-tags");

    let doc = server.get(&format!("{path}/1.0.0"));
    assert_eq!(doc.status, 200, "{}", doc.describe());
    assert_eq!(doc.json()["version"], json!("1.0.0"));
    assert_eq!(doc.json()["dist"]["integrity"], json!(built[0].integrity));
    let latest = server.get(&format!("{path}/latest"));
    assert_eq!(latest.status, 200, "{}", latest.describe());
    assert_eq!(
        latest.json()["version"],
        json!("1.1.0"),
        "latest follows the newest publish"
    );
    server
        .get(&format!("{path}/9.9.9"))
        .expect_error(404, "not_found");
    server
        .get(&format!("{path}/no-such-tag"))
        .expect_error(404, "not_found");

    let set = |tag: &str, body: &str| {
        server.send(
            &Req::new("PUT", &format!("{tags_path}/{tag}"))
                .bearer(&token)
                .header("Content-Type", "application/json")
                .body(body.to_owned()),
        )
    };
    let res = set("beta", "\"1.0.0\"");
    assert!(
        matches!(res.status, 200 | 201),
        "dist-tag add: {}",
        res.describe()
    );
    let tags = server.get(&tags_path);
    assert_eq!(
        tags.json(),
        json!({"latest": "1.1.0", "beta": "1.0.0"}),
        "{}",
        tags.describe()
    );
    let beta = server.get(&format!("{path}/beta"));
    assert_eq!(
        beta.json()["version"],
        json!("1.0.0"),
        "{}",
        beta.describe()
    );
    assert_eq!(
        server.get(&path).json()["dist-tags"]["beta"],
        json!("1.0.0")
    );

    // Refusals leave the tags alone.
    let before = StoreSnapshot::take(&server, &[name]);
    let unauthorized = server.send(
        &Req::new("PUT", &format!("{tags_path}/rc"))
            .header("Content-Type", "application/json")
            .body("\"1.0.0\""),
    );
    unauthorized.expect_error(401, "unauthorized");
    let res = set("rc", "\"7.7.7\"");
    assert_eq!(
        res.status,
        404,
        "a tag to a missing version: {}",
        res.describe()
    );
    let res = set("rc", "\"not a version\"");
    res.expect_error(400, "invalid_version");
    let res = set("1.0.0", "\"1.0.0\"");
    assert_eq!(
        res.status,
        400,
        "a tag that is a version: {}",
        res.describe()
    );
    let res = server.send(&Req::new("DELETE", &format!("{tags_path}/latest")).bearer(&token));
    assert_eq!(
        res.status,
        400,
        "DELETE latest must be refused: {}",
        res.describe()
    );
    before.assert_same(
        &StoreSnapshot::take(&server, &[name]),
        "refused dist-tag changes",
    );

    let res = server.send(&Req::new("DELETE", &format!("{tags_path}/beta")).bearer(&token));
    assert!(
        matches!(res.status, 200 | 201 | 204),
        "dist-tag rm: {}",
        res.describe()
    );
    let tags = server.get(&tags_path);
    assert_eq!(
        tags.json(),
        json!({"latest": "1.1.0"}),
        "{}",
        tags.describe()
    );
    server
        .get(&format!("{path}/beta"))
        .expect_error(404, "not_found");
    let res = server.send(&Req::new("DELETE", &format!("{tags_path}/beta")).bearer(&token));
    assert_eq!(
        res.status,
        404,
        "removing a missing tag: {}",
        res.describe()
    );
}

/// Goal: `/metrics` reports what happened, in Prometheus text format, merged across cores and
/// writers. Method: publish, read, miss, then scrape (also as a scraper's Accept and through
/// `/-/metrics`) and check counters and the sample-line syntax; a JSON client asking for the
/// package `metrics` gets a 404 packument, not the scrape.
#[test]
fn metrics_scrape_counts_requests_and_publishes() {
    let server = Server::start();
    let token = server.login("metrics-user");
    server.publish_ok(&token, &fixture("metrics-pkg", "1.0.0", "m"));
    for _ in 0..3 {
        assert_eq!(server.get("/metrics-pkg").status, 200);
    }
    assert_eq!(server.get("/absent-pkg").status, 404);
    let scrape =
        server.send(&Req::new("GET", "/metrics").header("Accept", "text/plain;version=0.0.4;q=1"));
    assert_eq!(scrape.status, 200, "{}", scrape.describe());
    let content_type = scrape.header("content-type").unwrap_or_default().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = scrape.text();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (_, value) = line
            .rsplit_once(' ')
            .expect("sample lines end with a value");
        assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }
    let has = |needle: &str| assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    has("agentregistry_requests_total{route=\"packument\",status=\"2xx\"} 3");
    has("agentregistry_requests_total{route=\"packument\",status=\"4xx\"} 1");
    has("agentregistry_requests_total{route=\"publish\",status=\"2xx\"} 1");
    has("agentregistry_publishes_total 1");
    has("agentregistry_request_duration_seconds{route=\"packument\",quantile=\"0.99\"}");
    has("agentregistry_commit_duration_seconds_count{writer=\"all\"} 1");
    // The phases of that one group commit: each present, the commit's own (page writes and
    // fsyncs) not zero, and together no longer than the whole group.
    let sample = |prefix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("missing {prefix:?} in\n{text}"))
    };
    let phases: Vec<f64> = ["plan", "encode", "write", "commit"]
        .iter()
        .map(|p| {
            sample(&format!(
                "agentregistry_commit_phase_seconds_total{{phase=\"{p}\"}} "
            ))
        })
        .collect();
    assert!(phases[3] > 0.0, "commit phase {phases:?}");
    let group = sample("agentregistry_commit_duration_seconds_sum{writer=\"all\"} ");
    assert!(
        phases.iter().sum::<f64>() <= group + 1e-5,
        "phases {phases:?} longer than the group's {group}"
    );
    has("agentregistry_io_driver{core=\"0\",driver=");
    has("agentregistry_config_generation ");
    let again = server.get("/-/metrics");
    assert_eq!(again.status, 200);
    assert!(
        again.text().contains("route=\"metrics\""),
        "the first scrape is counted"
    );
    let as_package = server.send(&Req::new("GET", "/metrics").header("Accept", "application/json"));
    as_package.expect_error(404, "not_found");
}

/// Goal: `npm token create|list|revoke` semantics. Method: create a read-write and a read-only
/// token with the password, list them (keys, no secrets), check the read-only one can read but
/// not publish, revoke the read-write one and check it is refused afterwards.
#[test]
fn tokens_create_list_readonly_and_revoke() {
    let server = Server::start();
    let login = server.login("token-user");
    let create = |body: Value| {
        server.send(
            &Req::new("POST", "/-/npm/v1/tokens")
                .bearer(&login)
                .json(&body),
        )
    };
    create(json!({"password": "wrong-password"})).expect_error(401, "unauthorized");
    create(json!({"password": "pw", "cidr_whitelist": ["10.0.0.0/8"]}))
        .expect_error(400, "bad_request");
    let rw = create(json!({"password": PASSWORD, "name": "ci"}));
    assert_eq!(rw.status, 200, "{}", rw.describe());
    let rw = rw.json();
    let rw_token = rw["token"].as_str().unwrap().to_owned();
    let ro = create(json!({"password": PASSWORD, "packages_and_scopes_permission": "read-only"}));
    let ro_token = ro.json()["token"].as_str().unwrap().to_owned();
    let listed = server
        .send(&Req::new("GET", "/-/npm/v1/tokens").bearer(&login))
        .json();
    let objects = listed["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 3, "{listed}");
    let text = listed.to_string();
    assert!(
        !text.contains(&rw_token) && !text.contains(&ro_token),
        "list leaks secrets"
    );
    server.publish_ok(&rw_token, &fixture("token-pkg", "1.0.0", "t"));
    let refused = server.publish(&ro_token, &fixture("token-pkg", "1.1.0", "t"));
    refused.expect_error(403, "forbidden");
    let read = server.send(&Req::new("GET", "/token-pkg").bearer(&ro_token));
    assert_eq!(read.status, 200, "{}", read.describe());
    let key = rw["key"].as_str().unwrap();
    let revoke =
        server.send(&Req::new("DELETE", &format!("/-/npm/v1/tokens/token/{key}")).bearer(&login));
    assert_eq!(revoke.status, 204, "{}", revoke.describe());
    let after = server.send(&Req::new("GET", "/-/whoami").bearer(&rw_token));
    after.expect_error(401, "unauthorized");
}
