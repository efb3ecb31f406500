//! Harness shared by `hostile.rs` and `crash.rs` (`http.rs` borrows its tarball builder): the `agentregistry` binary of
//! this build as a child process, a raw HTTP/1.1 client over `std::net::TcpStream`, publish
//! fixtures, and byte-for-byte store snapshots. Copied from `http.rs` and generalized: a server
//! can run on a caller-chosen home (so it can be killed and restarted on it), keep its whole
//! log, run under a raised `RLIMIT_NOFILE`, and report its pid (for `/proc/PID/status`).
//!
//! Invariants: every child process is killed by its own pid (never by name) on drop; every
//! socket operation has a timeout; every helper process runs under a deadline; there are no
//! sleeps: waits are channel receives or socket reads with deadlines.

#![allow(
    dead_code,
    reason = "shared by two test binaries; each one uses a subset (expect would fail in the other)"
)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long the server may take to print its listening line.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Read and write timeout of every test socket.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of a helper process (`python3`, the CLI).
pub(crate) const HELPER_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response head the test client accepts.
const RESPONSE_HEAD_BYTES_MAX: usize = 64 * 1024;
/// Largest response body the test client accepts.
const RESPONSE_BODY_BYTES_MAX: usize = 80 << 20;
/// Server log kept in memory by default (the newest bytes), printed when a test fails.
pub(crate) const SERVER_LOG_BYTES_MAX: usize = 256 << 10;
/// The listening line's prefix (the server's stdout contract).
const LISTENING_PREFIX: &str = "agentregistry listening on http://";
/// The abbreviated packument's media type.
pub(crate) const ABBREVIATED: &str = "application/vnd.npm.install-v1+json";
/// The password every helper login uses.
pub(crate) const PASSWORD: &str = "correct horse battery staple";

// ---------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------

/// How to start a server.
pub(crate) struct Launch {
    /// The data directory; `None`: a fresh temporary one, removed with the `Server`.
    pub(crate) home: Option<PathBuf>,
    /// `AGENTREGISTRY_*` variables to set (every inherited one is removed).
    pub(crate) env: Vec<(String, String)>,
    /// Start through `sh -c 'ulimit -n ...; exec agentregistry ...'` to raise the server's
    /// open-file limit (65536, or the hard limit when that is lower).
    pub(crate) raise_nofile: bool,
    /// Newest stderr bytes kept.
    pub(crate) log_bytes_max: usize,
}

impl Default for Launch {
    fn default() -> Launch {
        Launch {
            home: None,
            env: Vec::new(),
            raise_nofile: false,
            log_bytes_max: SERVER_LOG_BYTES_MAX,
        }
    }
}

/// The server's stderr: the newest bytes and how many were written in all.
#[derive(Default)]
pub(crate) struct Log {
    pub(crate) tail: Vec<u8>,
    pub(crate) total: u64,
}

/// One `agentregistry serve` process; killed by pid on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
    pub(crate) base_url: String,
    pub(crate) home: PathBuf,
    _home_dir: Option<tempfile::TempDir>,
    log: Arc<Mutex<Log>>,
    log_done: mpsc::Receiver<()>,
    line_rx: mpsc::Receiver<std::io::Result<String>>,
    /// Set once the process was killed (by the test) or reaped.
    exited: Option<std::process::ExitStatus>,
}

/// Why a server did not come up.
#[derive(Debug)]
pub(crate) struct StartFailure {
    pub(crate) log: String,
}

impl Server {
    /// A server on a fresh home with the default options; panics if it does not start.
    pub(crate) fn start() -> Server {
        Server::launch(Launch::default())
            .unwrap_or_else(|e| panic!("the server did not start:\n{}", e.log))
    }

    /// Starts a server and waits for its listening line.
    pub(crate) fn launch(launch: Launch) -> Result<Server, StartFailure> {
        let mut server = Server::spawn(launch);
        server.wait_listening(START_TIMEOUT)?;
        Ok(server)
    }

    /// Spawns the process without waiting for it to listen (`wait_listening` does that).
    pub(crate) fn spawn(launch: Launch) -> Server {
        let (home, home_dir) = match launch.home {
            Some(home) => (home, None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("hostile-home-")
                    .tempdir()
                    .expect("creating a temporary home");
                (dir.path().join("home"), Some(dir))
            }
        };
        let bin = env!("CARGO_BIN_EXE_agentregistry");
        let serve_args = ["serve", "--listen", "127.0.0.1:0", "--cores", "2", "--home"];
        let mut cmd = if launch.raise_nofile {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(
                    "ulimit -n 65536 2>/dev/null || ulimit -n \"$(ulimit -Hn)\" || exit 97; \
                     exec \"$0\" \"$@\"",
                )
                .arg(bin);
            cmd
        } else {
            Command::new(bin)
        };
        cmd.args(serve_args).arg(&home);
        clear_registry_env(&mut cmd);
        for (key, value) in &launch.env {
            cmd.env(key, value);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning the agentregistry binary");
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Log::default()));
        let (log_done_tx, log_done) = mpsc::channel();
        let log_writer = Arc::clone(&log);
        let cap = launch.log_bytes_max;
        thread::spawn(move || {
            keep_tail(stderr, &log_writer, cap);
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
        Server {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            base_url: String::new(),
            home,
            _home_dir: home_dir,
            log,
            log_done,
            line_rx,
            exited: None,
        }
    }

    /// Waits up to `timeout` for the listening line and records the address.
    pub(crate) fn wait_listening(&mut self, timeout: Duration) -> Result<(), StartFailure> {
        let line = match self.line_rx.recv_timeout(timeout) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(self.failure(&format!("reading stdout failed: {e}"))),
            Err(_) => return Err(self.failure("no listening line before the deadline")),
        };
        let Some(authority) = line
            .strip_suffix('\n')
            .and_then(|l| l.strip_prefix(LISTENING_PREFIX))
        else {
            return Err(self.failure(&format!(
                "expected stdout line `{LISTENING_PREFIX}127.0.0.1:PORT`, got {line:?}"
            )));
        };
        self.addr = authority
            .parse()
            .unwrap_or_else(|e| panic!("listening line {line:?}: bad address ({e})"));
        assert!(
            self.addr.ip().is_loopback() && self.addr.port() != 0,
            "the server must listen on a real loopback port, said {line:?}"
        );
        self.base_url = format!("http://{authority}");
        Ok(())
    }

    /// Waits up to `timeout` for the listening line; `None` when it has not come yet.
    pub(crate) fn poll_listening(&mut self, timeout: Duration) -> Option<Result<(), StartFailure>> {
        match self.line_rx.recv_timeout(timeout) {
            Ok(Ok(line)) => {
                let Some(authority) = line
                    .strip_suffix('\n')
                    .and_then(|l| l.strip_prefix(LISTENING_PREFIX))
                else {
                    return Some(Err(self.failure(&format!(
                        "expected stdout line `{LISTENING_PREFIX}127.0.0.1:PORT`, got {line:?}"
                    ))));
                };
                self.addr = authority.parse().expect("listening address");
                self.base_url = format!("http://{authority}");
                Some(Ok(()))
            }
            Ok(Err(e)) => Some(Err(self.failure(&format!("reading stdout failed: {e}")))),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                Some(Err(self.failure("stdout closed before the listening line")))
            }
        }
    }

    /// Kills the process (SIGKILL to its pid), reaps it and returns why it failed, with its log.
    pub(crate) fn failure(&mut self, why: &str) -> StartFailure {
        let status = self.kill();
        let _ = self.log_done.recv_timeout(Duration::from_secs(5));
        StartFailure {
            log: format!(
                "{why}; exit: {status:?}\n--- server log ---\n{}",
                self.log()
            ),
        }
    }

    /// SIGKILL to this child's pid only, then reap it. Idempotent.
    pub(crate) fn kill(&mut self) -> Option<std::process::ExitStatus> {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
        self.exited
    }

    /// Waits up to `timeout` for the process to exit on its own; its status if it did.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Poll the exit with the log reader's end as the event (stderr closes at exit).
            match self.log_done.recv_timeout(Duration::from_millis(20)) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    if let Ok(status) = self.child.wait() {
                        self.exited = Some(status);
                        return Some(status);
                    }
                }
            }
        }
    }

    /// The kept stderr (lossy UTF-8).
    pub(crate) fn log(&self) -> String {
        let log = self.log.lock().expect("log lock");
        String::from_utf8_lossy(&log.tail).into_owned()
    }

    /// The kept stderr bytes and the total written.
    pub(crate) fn log_bytes(&self) -> (Vec<u8>, u64) {
        let log = self.log.lock().expect("log lock");
        (log.tail.clone(), log.total)
    }

    /// Waits (bounded) until the stderr reader saw EOF; only after the process exited.
    pub(crate) fn drain_log(&self) {
        let _ = self.log_done.recv_timeout(Duration::from_secs(5));
    }

    /// VmRSS of the server process in KiB, from `/proc/PID/status`.
    pub(crate) fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("reading /proc/PID/status of the server");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line")
    }

    pub(crate) fn send(&self, req: &Req) -> Response {
        send(self.addr, req)
    }

    pub(crate) fn get(&self, target: &str) -> Response {
        self.send(&Req::new("GET", target))
    }

    /// Registers (open registration on loopback) and returns a bearer token.
    pub(crate) fn login(&self, user: &str) -> String {
        self.login_with(user, PASSWORD)
    }

    pub(crate) fn login_with(&self, user: &str, password: &str) -> String {
        let body = json!({"name": user, "password": password});
        let res =
            self.send(&Req::new("PUT", &format!("/-/user/org.couchdb.user:{user}")).json(&body));
        assert_eq!(res.status, 201, "login of {user}: {}", res.describe());
        res.json()["token"]
            .as_str()
            .unwrap_or_else(|| panic!("login answer has no token: {}", res.describe()))
            .to_owned()
    }

    pub(crate) fn publish(&self, token: &str, fixture: &Fixture) -> Response {
        self.send(&fixture.publish_req(token))
    }

    /// Publishes and expects 201.
    pub(crate) fn publish_ok(&self, token: &str, fixture: &Fixture) {
        let res = self.publish(token, fixture);
        assert_eq!(
            res.status,
            201,
            "publish of {}@{}: {}",
            fixture.name,
            fixture.version,
            res.describe()
        );
    }

    /// The request path of a tarball URL the server put in a document.
    pub(crate) fn path_of(&self, url: &str) -> String {
        url.strip_prefix(&self.base_url)
            .unwrap_or_else(|| panic!("tarball URL {url:?} is not under {}", self.base_url))
            .to_owned()
    }

    /// The tarball path of `name@version` as the packument advertises it.
    pub(crate) fn tarball_path(&self, name: &str, version: &str) -> String {
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
        self.kill();
        if thread::panicking() {
            let _ = self.log_done.recv_timeout(Duration::from_secs(2));
            let log = self.log();
            let shown = if log.len() > 64 * 1024 {
                let mut cut = log.len() - 64 * 1024;
                while !log.is_char_boundary(cut) {
                    cut += 1;
                }
                &log[cut..]
            } else {
                &log[..]
            };
            eprintln!(
                "--- server log (pid {}, home {}) ---\n{shown}\n--- end of server log ---",
                self.pid,
                self.home.display(),
            );
        }
    }
}

/// Copies `stream` into `log`, keeping only the newest `cap` bytes.
fn keep_tail(mut stream: impl Read, log: &Mutex<Log>, cap: usize) {
    let mut chunk = [0u8; 8192];
    while let Ok(n) = stream.read(&mut chunk) {
        if n == 0 {
            break;
        }
        let mut log = log.lock().expect("log lock");
        log.tail.extend_from_slice(&chunk[..n]);
        log.total += n as u64;
        if log.tail.len() > cap {
            let cut = log.tail.len() - cap;
            log.tail.drain(..cut);
        }
    }
}

/// Removes every inherited `AGENTREGISTRY_*` variable, so only what a test sets applies.
pub(crate) fn clear_registry_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AGENTREGISTRY_") {
            cmd.env_remove(key);
        }
    }
}

/// `agentregistry ARGS...` (not `serve`) under `HELPER_TIMEOUT`; its output, whatever the exit.
pub(crate) fn run_cli(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentregistry"));
    cmd.args(args);
    clear_registry_env(&mut cmd);
    run_with_deadline(cmd, None, &format!("agentregistry {}", args.join(" ")))
}

/// `agentregistry config --home HOME ARGS...`; stdout, panics unless it exits 0.
pub(crate) fn config_cli(home: &Path, args: &[&str]) -> String {
    let home = home.to_str().expect("a UTF-8 home path");
    let mut all = vec!["config", "--home", home];
    all.extend_from_slice(args);
    let out = run_cli(&all);
    let stdout = lossy(&out.stdout);
    assert!(
        out.status.success(),
        "agentregistry {}: expected exit 0, got {}\nstdout: {stdout}\nstderr: {}",
        all.join(" "),
        out.status,
        lossy(&out.stderr)
    );
    stdout
}

/// Runs `cmd` (stdin from `stdin`, else closed) under `HELPER_TIMEOUT`; kills it by pid after.
pub(crate) fn run_with_deadline(mut cmd: Command, stdin: Option<Vec<u8>>, what: &str) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(HELPER_TIMEOUT) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("waiting for {what}: {e}"),
        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{what} did not finish within {HELPER_TIMEOUT:?}");
        }
    }
}

/// Runs a helper program with `stdin`; returns its stdout, panics unless it exits 0.
pub(crate) fn run_helper(program: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = run_with_deadline(cmd, Some(stdin.to_vec()), program);
    assert!(
        out.status.success(),
        "{program} failed ({}): {}",
        out.status,
        lossy(&out.stderr)
    );
    out.stdout
}

// ---------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client
// ---------------------------------------------------------------------------------------

/// One request, serialized by `bytes`.
#[derive(Clone)]
pub(crate) struct Req {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Req {
    pub(crate) fn new(method: &str, target: &str) -> Req {
        Req {
            method: method.to_owned(),
            target: target.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub(crate) fn bearer(self, token: &str) -> Req {
        self.header("Authorization", &format!("Bearer {token}"))
    }

    pub(crate) fn body(mut self, body: impl Into<Vec<u8>>) -> Req {
        self.body = body.into();
        self
    }

    pub(crate) fn json(self, value: &Value) -> Req {
        self.header("Content-Type", "application/json")
            .body(serde_json::to_vec(value).expect("JSON serializes"))
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The head only. A `Content-Length` is added for PUT/POST and non-empty bodies unless the
    /// request sets its own framing headers.
    pub(crate) fn head_bytes(&self, addr: SocketAddr) -> Vec<u8> {
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

    pub(crate) fn bytes(&self, addr: SocketAddr) -> Vec<u8> {
        let mut out = self.head_bytes(addr);
        out.extend_from_slice(&self.body);
        out
    }

    pub(crate) fn describe(&self) -> String {
        let shown = self.target.chars().take(120).collect::<String>();
        format!("{} {shown} ({} body bytes)", self.method, self.body.len())
    }
}

/// One parsed response.
#[derive(Clone, Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// The request, for messages.
    pub(crate) what: String,
    /// The answer to a HEAD request (no body).
    pub(crate) head_only: bool,
}

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("expected a JSON body ({e}): {}", self.describe()))
    }

    /// The `error` field of a JSON error body.
    pub(crate) fn error_type(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    pub(crate) fn describe(&self) -> String {
        let mut shown = self.text();
        if shown.len() > 1000 {
            let mut cut = 1000;
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

    /// The SPEC section 6 invariants every final response must hold; `Err` says which broke.
    pub(crate) fn invariant_violation(&self) -> Option<String> {
        if self.header("x-content-type-options") != Some("nosniff") {
            return Some(format!(
                "every response needs X-Content-Type-Options: nosniff: {}",
                self.describe()
            ));
        }
        if self.status >= 400 {
            let content_type = self.header("content-type").unwrap_or_default();
            if !content_type.starts_with("application/json") {
                return Some(format!(
                    "an error must be JSON (content-type): {}",
                    self.describe()
                ));
            }
            if self.head_only {
                return None;
            }
            let body: Value = match serde_json::from_slice(&self.body) {
                Ok(body) => body,
                Err(e) => {
                    return Some(format!(
                        "an error body must be JSON ({e}): {}",
                        self.describe()
                    ))
                }
            };
            if !(body["error"].as_str().is_some_and(|s| !s.is_empty())
                && body["message"].as_str().is_some_and(|s| !s.is_empty()))
            {
                return Some(format!(
                    "an error body must be {{\"error\": type, \"message\": text}}: {}",
                    self.describe()
                ));
            }
        }
        None
    }

    /// Panics unless the invariants hold.
    pub(crate) fn check_invariants(&self) {
        if let Some(why) = self.invariant_violation() {
            panic!("{why}");
        }
    }

    /// Asserts status and error type (and the invariants).
    pub(crate) fn expect_error(&self, status: u16, kind: &str) {
        assert_eq!(
            (self.status, self.error_type().as_str()),
            (status, kind),
            "expected {status} {kind:?}: {}",
            self.describe()
        );
    }
}

/// One client connection with a read buffer; every socket op has a timeout.
pub(crate) struct Conn {
    pub(crate) reader: BufReader<TcpStream>,
}

impl Conn {
    pub(crate) fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        Conn::open_with(addr, IO_TIMEOUT)
    }

    pub(crate) fn open_with(addr: SocketAddr, timeout: Duration) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    pub(crate) fn connect(addr: SocketAddr) -> Conn {
        Conn::open(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
    }

    pub(crate) fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        self.reader
            .get_mut()
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("writing {} bytes to the server: {e}", bytes.len()));
    }

    pub(crate) fn try_write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// Reads one response, interim (1xx) ones included.
    pub(crate) fn read_any(&mut self, head_only: bool, what: &str) -> Result<Response, String> {
        read_response(&mut self.reader, head_only, what)
    }

    /// Reads one final response and checks its invariants; panics on I/O errors.
    pub(crate) fn read(&mut self, head_only: bool, what: &str) -> Response {
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

    /// Sends `req` on this (keep-alive) connection and reads its final response.
    pub(crate) fn exchange(&mut self, req: &Req, addr: SocketAddr) -> Result<Response, String> {
        self.reader
            .get_mut()
            .write_all(&req.bytes(addr))
            .map_err(|e| format!("writing the request: {e}"))?;
        self.read_any(req.method == "HEAD", &req.describe())
    }

    /// True when the server closed the connection (EOF or reset) before the read timeout.
    pub(crate) fn closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.reader.read(&mut byte) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }
}

/// Reads one response; `Err` on I/O or framing failures (a clean EOF before any byte says
/// "connection closed mid-head (got \"\")").
pub(crate) fn read_response(
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

pub(crate) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One request on a new connection; `Err` on any I/O or framing failure.
pub(crate) fn try_send(addr: SocketAddr, req: &Req) -> Result<Response, String> {
    try_send_within(addr, req, IO_TIMEOUT)
}

/// `try_send` with `timeout` on every socket operation.
pub(crate) fn try_send_within(
    addr: SocketAddr,
    req: &Req,
    timeout: Duration,
) -> Result<Response, String> {
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
pub(crate) fn send(addr: SocketAddr, req: &Req) -> Response {
    try_send(addr, req).unwrap_or_else(|e| panic!("[{}]: {e}", req.describe()))
}

/// Raw bytes on a new connection; reads one final response (checked) or panics.
pub(crate) fn send_raw(addr: SocketAddr, raw: &[u8], what: &str) -> Response {
    let mut conn = Conn::connect(addr);
    conn.write(raw);
    conn.read(false, what)
}

// ---------------------------------------------------------------------------------------
// Fixtures
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

/// Checksums of arbitrary byte strings. Input: JSON list of hex strings; output: JSON list of
/// `{integrity, shasum, b64}`.
const CHECKSUMS_PY: &str = r#"
import base64, hashlib, json, sys
out = []
for h in json.load(sys.stdin):
    data = bytes.fromhex(h)
    out.append({"integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(),
                "shasum": hashlib.sha1(data).hexdigest(),
                "b64": base64.b64encode(data).decode()})
json.dump(out, sys.stdout)
"#;

/// A package version ready to publish.
#[derive(Clone, Debug)]
pub(crate) struct Fixture {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) tarball: Vec<u8>,
    pub(crate) integrity: String,
    pub(crate) shasum: String,
    pub(crate) b64: String,
}

/// Builds one real gzip tarball fixture per `(name, version, salt)`.
pub(crate) fn fixtures(specs: &[(&str, &str, &str)]) -> Vec<Fixture> {
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
            }
        })
        .collect()
}

pub(crate) fn fixture(name: &str, version: &str, salt: &str) -> Fixture {
    fixtures(&[(name, version, salt)]).remove(0)
}

/// A gzip'd npm tarball of `name@version`: `package/package.json` (which the registry checks
/// against the published manifest) and `package/payload.bin` holding `payload`. Deterministic
/// (no timestamps), and as large as `payload` when the payload is incompressible.
pub(crate) fn npm_tarball(name: &str, version: &str, payload: &[u8]) -> Vec<u8> {
    let manifest = json!({"name": name, "version": version, "main": "index.js"}).to_string();
    let mut builder = tar::Builder::new(Vec::new());
    for (path, body) in [
        ("package/package.json", manifest.as_bytes()),
        ("package/payload.bin", payload),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, path, body)
            .expect("appending to an in-memory tar");
    }
    let tar = builder.into_inner().expect("finishing an in-memory tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip into memory");
    gz.finish().expect("gzip into memory")
}

/// Fixtures whose tarballs carry arbitrary payload bytes (`npm_tarball`), so different bytes
/// give different tarballs of about their size; the checksums come from one python3 run for the
/// whole batch.
pub(crate) fn raw_fixtures(items: Vec<(String, String, Vec<u8>)>) -> Vec<Fixture> {
    tarball_fixtures(
        items
            .into_iter()
            .map(|(name, version, payload)| {
                let tarball = npm_tarball(&name, &version, &payload);
                (name, version, tarball)
            })
            .collect(),
    )
}

/// Fixtures whose tarballs are exactly the given bytes, valid or not (hostile tarballs), with
/// matching checksums so they get past integrity checks.
pub(crate) fn tarball_fixtures(items: Vec<(String, String, Vec<u8>)>) -> Vec<Fixture> {
    let hexes: Vec<String> = items.iter().map(|(_, _, b)| hex_encode(b)).collect();
    let input = serde_json::to_vec(&hexes).expect("JSON serializes");
    let output = run_helper("python3", &["-c", CHECKSUMS_PY], &input);
    let sums: Vec<Value> =
        serde_json::from_slice(&output).expect("the checksum helper prints JSON");
    assert_eq!(sums.len(), items.len());
    items
        .into_iter()
        .zip(sums)
        .map(|((name, version, tarball), s)| {
            let field = |k: &str| s[k].as_str().expect("checksum field").to_owned();
            Fixture {
                name,
                version,
                tarball,
                integrity: field("integrity"),
                shasum: field("shasum"),
                b64: field("b64"),
            }
        })
        .collect()
}

impl Fixture {
    pub(crate) fn manifest(&self) -> Value {
        json!({
            "name": self.name,
            "version": self.version,
            "main": "index.js",
            "license": "MIT",
            "dist": {"integrity": self.integrity, "shasum": self.shasum},
        })
    }

    /// npm's publish document.
    pub(crate) fn body(&self) -> Value {
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

    pub(crate) fn body_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body()).expect("JSON serializes")
    }

    pub(crate) fn publish_req(&self, token: &str) -> Req {
        Req::new("PUT", &package_path(&self.name))
            .bearer(token)
            .json(&self.body())
    }
}

/// `/name` or `/@scope%2fname`.
pub(crate) fn package_path(name: &str) -> String {
    format!("/{}", name.replace('/', "%2f"))
}

pub(crate) fn hex_decode(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd hex length");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digits"))
        .collect()
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Standard base64 with padding (for Basic credentials).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A unique suffix so names never collide between tests of one run.
pub(crate) fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A small seeded PRNG (xorshift64*), so a failure replays exactly from its printed seed.
#[derive(Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng((seed ^ 0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi` (`hi > lo`).
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

// ---------------------------------------------------------------------------------------
// Store snapshots
// ---------------------------------------------------------------------------------------

/// What the store holds, as seen on disk and over HTTP.
#[derive(PartialEq, Eq)]
pub(crate) struct StoreSnapshot {
    /// Every file and directory under `<home>` but `admin.token`: relative path -> content
    /// (directories: None).
    files: BTreeMap<PathBuf, Option<Vec<u8>>>,
    /// `GET` target (and Accept variant) -> (status, body).
    http: BTreeMap<String, (u16, Vec<u8>)>,
}

impl StoreSnapshot {
    /// Snapshots `server` for `packages` (published or not).
    pub(crate) fn take(server: &Server, packages: &[&str]) -> StoreSnapshot {
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
            let abbreviated =
                server.send(&Req::new("GET", &package_path(name)).header("Accept", ABBREVIATED));
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
    pub(crate) fn assert_same(&self, after: &StoreSnapshot, what: &str) {
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

/// Every regular file under `dir` (recursively).
pub(crate) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = BTreeMap::new();
    if dir.is_dir() {
        walk(dir, dir, &mut out);
    }
    out.into_iter()
        .filter(|(_, content)| content.is_some())
        .map(|(path, _)| dir.join(path))
        .collect()
}

/// Copies the directory tree `from` to `to` (files and directories only).
pub(crate) fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copying {}: {e}", entry.path().display()));
        }
    }
}

/// Sends each request on a new connection, checks (status, error type), and checks the store
/// is unchanged after each one.
pub(crate) fn expect_refused_unchanged(
    server: &Server,
    packages: &[&str],
    cases: &[(Req, u16, &str)],
) {
    let mut before = StoreSnapshot::take(server, packages);
    for (req, status, kind) in cases {
        let res = server.send(req);
        res.expect_error(*status, kind);
        let after = StoreSnapshot::take(server, packages);
        before.assert_same(&after, &req.describe());
        before = after;
    }
}

/// Sum of `agentregistry_connections_open{core=...}` in a `/metrics` scrape.
pub(crate) fn connections_open(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("agentregistry_connections_open{"))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// The `p`-quantile (0..=1) of `samples` (sorted in place).
pub(crate) fn quantile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index.min(samples.len() - 1)]
}
