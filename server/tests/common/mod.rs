//! Harness for the real-client end-to-end suite (`npm_e2e.rs`, STYLE section 10 item 6).
//!
//! `Registry` is the registry under test: by default the `agentregistry` binary of this build,
//! started on `127.0.0.1:0` with a fresh temporary home and killed by its pid (only that
//! process) on drop. With `AGENTREGISTRY_E2E_URL` set it is an already running registry on
//! loopback, tested black-box: any npm-compatible registry, e.g. Verdaccio.
//! `Client` is one real package manager (npm, pnpm, yarn berry, bun) with its own HOME, its
//! own `.npmrc` / `.yarnrc.yml` and its own empty cache.
//!
//! Invariants: every child process runs under a deadline and its process group is killed
//! when the deadline passes; every failure message says what was expected, what came back,
//! and carries the tool's stdout and stderr (and the server's log when the test panics).
//!
//! Environment:
//! - `AGENTREGISTRY_E2E_URL=http://127.0.0.1:PORT`: test that registry instead of spawning
//!   one. Package and user names then get a unique suffix so tests (and reruns) never
//!   collide in the shared registry.
//! - `AGENTREGISTRY_E2E_NOT_AGENTREGISTRY=1` (only with `AGENTREGISTRY_E2E_URL`): the target
//!   is another registry (Verdaccio); the few AgentRegistry-specific checks that call
//!   `Registry::relax` accept the other registry's answer and print a note.
//! - `AGENTREGISTRY_E2E_SKIP_MISSING_TOOLS=1`: a test whose client is not installed passes
//!   with a note instead of failing.
//! - `AGENTREGISTRY_E2E_KEEP=1`: keep temporary homes, caches and projects for inspection.
//!
//! Only std, `serde_json` and `tempfile`; external helpers are `node`, `kill`, `gzip`, and
//! `python3` (to give `npm login` a terminal, see `fixtures/pty_answer.py`).

#![allow(
    dead_code,
    reason = "shared by several test binaries; each one uses a subset (expect would fail in the others)"
)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// How long the server may take to print its listening line.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Default deadline of one client command (installs on 2 busy cores included).
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline of small helper commands (`node -e`, `gzip`, `kill`).
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long output readers may outlive their process before its group is killed.
const READER_GRACE: Duration = Duration::from_secs(10);
/// Longest first stdout line of the server that is read as the listening line.
const LISTENING_LINE_BYTES_MAX: u64 = 256;
/// Read and write timeout of one raw HTTP exchange.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Captured stdout or stderr of one command; the rest is drained and dropped.
const CAPTURE_BYTES_MAX: u64 = 4 << 20;
/// Raw HTTP response size accepted by `Registry::request`.
const RESPONSE_BYTES_MAX: u64 = 64 << 20;
/// Server log kept in memory (the newest bytes).
const SERVER_LOG_BYTES_MAX: usize = 256 << 10;
/// Output shown per stream in failure messages.
const SHOWN_BYTES_MAX: usize = 16 << 10;
const _: () = assert!(SHOWN_BYTES_MAX <= SERVER_LOG_BYTES_MAX);

const ENV_URL: &str = "AGENTREGISTRY_E2E_URL";
const ENV_NOT_AGENTREGISTRY: &str = "AGENTREGISTRY_E2E_NOT_AGENTREGISTRY";
const ENV_SKIP_MISSING_TOOLS: &str = "AGENTREGISTRY_E2E_SKIP_MISSING_TOOLS";
const ENV_KEEP: &str = "AGENTREGISTRY_E2E_KEEP";

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The workspace root (`server/..`).
pub(crate) fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("server/ always has a parent directory")
        .to_path_buf()
}

/// `server/tests/fixtures/<name>`.
pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A temporary directory that is deleted on drop unless `AGENTREGISTRY_E2E_KEEP` is set.
pub(crate) struct Scratch {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Scratch {
    pub(crate) fn new(prefix: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("creating a directory under the system temp dir");
        let path = dir.path().to_path_buf();
        if env_flag(ENV_KEEP) {
            eprintln!("note: keeping {}", path.display());
            let _kept = dir.keep();
            return Scratch { dir: None, path };
        }
        Scratch {
            dir: Some(dir),
            path,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        // `dir` is only held so that dropping it deletes `path`.
        debug_assert!(self.dir.as_ref().is_none_or(|d| d.path() == self.path));
        &self.path
    }
}

// ---------------------------------------------------------------------------------------
// Child processes under a deadline
// ---------------------------------------------------------------------------------------

/// What one finished (or killed) command produced.
pub(crate) struct CmdOutput {
    /// The command line, for messages.
    pub(crate) what: String,
    /// `None` when the command was killed at its deadline.
    pub(crate) status: Option<ExitStatus>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl CmdOutput {
    pub(crate) fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Command line, exit status and both streams, for failure messages.
    pub(crate) fn describe(&self) -> String {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => "KILLED at its deadline (timed out)".to_string(),
        };
        format!(
            "command: {}\nstatus: {status}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- end ---",
            self.what,
            tail(&self.stdout, SHOWN_BYTES_MAX),
            tail(&self.stderr, SHOWN_BYTES_MAX),
        )
    }
}

/// The last `bytes_max` bytes of `text` (on a char boundary), marked when cut.
fn tail(text: &str, bytes_max: usize) -> String {
    if text.len() <= bytes_max {
        return text.to_string();
    }
    let mut start = text.len() - bytes_max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[... {start} bytes cut ...]\n{}", &text[start..])
}

/// Reads up to `CAPTURE_BYTES_MAX` bytes of `stream`, drains the rest, and reports the
/// captured text on `done` when the stream ends (all writers closed it).
fn spawn_capture(
    mut stream: impl Read + Send + 'static,
    done: mpsc::Sender<(usize, String)>,
    slot: usize,
) {
    thread::spawn(move || {
        let mut captured = Vec::new();
        let read = (&mut stream)
            .take(CAPTURE_BYTES_MAX)
            .read_to_end(&mut captured);
        let drained = std::io::copy(&mut stream, &mut std::io::sink());
        let mut text = String::from_utf8_lossy(&captured).into_owned();
        if let Err(e) = read.and(drained) {
            let _ = write!(text, "\n[harness: reading this stream failed: {e}]");
        }
        // The receiver may be gone if the harness already gave up; nothing to do then.
        let _ = done.send((slot, text));
    });
}

/// Sends SIGKILL to the process group `pgid`, which the harness created for one command
/// (`process_group(0)` makes the command's pid the group id), so only that command and the
/// processes it started are hit.
fn kill_process_group(pgid: u32) {
    let mut kill = Command::new("kill");
    kill.args(["-s", "KILL", "--", &format!("-{pgid}")]);
    // ESRCH (group already gone) is fine; there is nothing else to do on failure.
    let _ = kill
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `cmd` with stdin closed, stdout and stderr captured, in its own process group.
/// When `deadline` passes the whole group is killed. Never panics on the command's failure;
/// callers decide (see `expect_success`).
pub(crate) fn run_with_deadline(mut cmd: Command, deadline: Duration) -> CmdOutput {
    let what = describe_command(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            return CmdOutput {
                what,
                status: None,
                stdout: String::new(),
                stderr: format!("[harness: spawning failed: {e}]"),
            }
        }
    };
    let pgid = child.id();
    let (streams_tx, streams_rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout was set to piped above");
    let stderr = child.stderr.take().expect("stderr was set to piped above");
    spawn_capture(stdout, streams_tx.clone(), 0);
    spawn_capture(stderr, streams_tx, 1);

    let (status_tx, status_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = status_tx.send(child.wait());
    });
    let mut timed_out = false;
    let status = match status_rx.recv_timeout(deadline) {
        Ok(status) => status.ok(),
        Err(RecvTimeoutError::Timeout) => {
            timed_out = true;
            kill_process_group(pgid);
            status_rx.recv().ok().and_then(Result::ok)
        }
        Err(RecvTimeoutError::Disconnected) => None,
    };

    // Children the command left behind may still hold the pipes; give them a grace period,
    // then kill the rest of the group so the readers see end-of-file.
    let mut texts = [String::new(), String::new()];
    let mut pending = 2;
    let mut killed_group = timed_out;
    while pending > 0 {
        match streams_rx.recv_timeout(READER_GRACE) {
            Ok((slot, text)) => {
                texts[slot] = text;
                pending -= 1;
            }
            Err(RecvTimeoutError::Timeout) if !killed_group => {
                killed_group = true;
                kill_process_group(pgid);
            }
            Err(_) => break,
        }
    }
    let [stdout, mut stderr] = texts;
    if killed_group && !timed_out {
        stderr.push_str("\n[harness: processes left behind by the command were killed]");
    }
    CmdOutput {
        what,
        status: if timed_out { None } else { status },
        stdout,
        stderr,
    }
}

fn describe_command(cmd: &Command) -> String {
    let mut line = String::new();
    if let Some(dir) = cmd.get_current_dir() {
        let _ = write!(line, "(cd {} && ", dir.display());
    }
    let _ = write!(line, "{}", cmd.get_program().to_string_lossy());
    for arg in cmd.get_args() {
        let _ = write!(line, " {}", arg.to_string_lossy());
    }
    if cmd.get_current_dir().is_some() {
        line.push(')');
    }
    line
}

/// Panics with the full output unless the command exited 0.
pub(crate) fn expect_success(out: CmdOutput, expectation: &str) -> CmdOutput {
    assert!(
        out.success(),
        "{expectation}: expected exit status 0\n{}",
        out.describe()
    );
    out
}

/// Runs `node -e SCRIPT ARGS...` and returns its stdout; panics on failure.
pub(crate) fn node_eval(script: &str, args: &[&str], cwd: Option<&Path>) -> String {
    let mut cmd = Command::new("node");
    cmd.arg("-e").arg(script).args(args);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    expect_success(run_with_deadline(cmd, HELPER_TIMEOUT), "node helper").stdout
}

/// npm's integrity string (`sha512-<base64>`) of `bytes`, computed by node's crypto.
pub(crate) fn sha512_integrity(bytes: &[u8]) -> String {
    let scratch = Scratch::new("e2e-hash-");
    let file = scratch.path().join("blob");
    std::fs::write(&file, bytes).expect("writing a temp file");
    let script = "const c = require('crypto');\
                  const b = require('fs').readFileSync(process.argv[1]);\
                  const d = c.createHash('sha512').update(b).digest('base64');\
                  process.stdout.write('sha512-' + d)";
    node_eval(script, &[&file.to_string_lossy()], None)
}

/// Decompresses a gzip body with the system `gzip`; panics when it is not valid gzip.
pub(crate) fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let scratch = Scratch::new("e2e-gzip-");
    let file = scratch.path().join("body.gz");
    std::fs::write(&file, bytes).expect("writing a temp file");
    let mut cmd = Command::new("gzip");
    cmd.arg("-dc").arg(&file);
    let out = run_with_deadline(cmd, HELPER_TIMEOUT);
    assert!(
        out.success(),
        "expected a valid gzip body ({} bytes)\n{}",
        bytes.len(),
        out.describe()
    );
    // Decompressed JSON is UTF-8; the lossy round trip only matters for binary bodies.
    out.stdout.into_bytes()
}

/// Standard base64 with padding (publish bodies carry the tarball this way).
pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
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

// ---------------------------------------------------------------------------------------
// The registry under test
// ---------------------------------------------------------------------------------------

/// Shared, bounded server log: stderr plus stdout after the listening line.
type SharedLog = Arc<Mutex<Vec<u8>>>;

fn append_log(log: &SharedLog, bytes: &[u8]) {
    let mut log = log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    log.extend_from_slice(bytes);
    if log.len() > SERVER_LOG_BYTES_MAX {
        let cut = log.len() - SERVER_LOG_BYTES_MAX;
        log.drain(..cut);
    }
}

struct ServerProcess {
    child: Child,
    log: SharedLog,
    _home: Scratch,
}

enum Target {
    /// The `agentregistry` binary of this build, owned by this `Registry`.
    Spawned(ServerProcess),
    /// A registry someone else runs (`AGENTREGISTRY_E2E_URL`).
    External { not_agentregistry: bool },
}

/// The registry under test; see the module doc.
pub(crate) struct Registry {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    url: String,
    /// `127.0.0.1:PORT`, for the socket and the `Host` header.
    authority: String,
    /// Suffix for package and user names ("" for a registry of our own).
    unique: String,
    target: Target,
}

static REGISTRY_COUNT: AtomicU32 = AtomicU32::new(0);

impl Registry {
    /// Spawns `agentregistry serve` on `127.0.0.1:0` with a fresh home, or attaches to
    /// `AGENTREGISTRY_E2E_URL`. Panics (with the server's stderr) when it does not come up.
    pub(crate) fn start() -> Registry {
        match std::env::var(ENV_URL) {
            Ok(url) if !url.is_empty() => Registry::attach(&url),
            _ => Registry::spawn(),
        }
    }

    fn attach(url: &str) -> Registry {
        let url = url.trim_end_matches('/').to_string();
        let authority = loopback_authority(&url).unwrap_or_else(|| {
            panic!("{ENV_URL} must be http://127.0.0.1:PORT or http://localhost:PORT, got {url:?}")
        });
        let seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let index = REGISTRY_COUNT.fetch_add(1, Ordering::Relaxed);
        let unique = format!("-{seconds:x}{:x}{index}", std::process::id());
        let not_agentregistry = env_flag(ENV_NOT_AGENTREGISTRY);
        let registry = Registry {
            url,
            authority,
            unique,
            target: Target::External { not_agentregistry },
        };
        registry.expect_ping();
        registry
    }

    fn spawn() -> Registry {
        let home = Scratch::new("agentregistry-e2e-home-");
        let binary = env!("CARGO_BIN_EXE_agentregistry");
        let mut cmd = Command::new(binary);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--home"])
            .arg(home.path())
            .env_remove("AGENTREGISTRY_HOME")
            .env_remove("AGENTREGISTRY_LISTEN")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = describe_command(&cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning `{what}` failed: {e}"));
        let log: SharedLog = Arc::new(Mutex::new(Vec::new()));

        let stderr = child.stderr.take().expect("stderr was set to piped above");
        let stderr_log = Arc::clone(&log);
        let (stderr_done_tx, stderr_done_rx) = mpsc::channel::<()>();
        thread::spawn(move || {
            let mut stderr = stderr;
            let mut buf = [0_u8; 8192];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                append_log(&stderr_log, &buf[..n]);
            }
            let _ = stderr_done_tx.send(());
        });

        let stdout = child.stdout.take().expect("stdout was set to piped above");
        let stdout_log = Arc::clone(&log);
        let (line_tx, line_rx) = mpsc::channel::<std::io::Result<String>>();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut first = String::new();
            // Bounded: a server that never ends its first line cannot grow this.
            let read = (&mut reader)
                .take(LISTENING_LINE_BYTES_MAX)
                .read_line(&mut first)
                .map(|_| first);
            let _ = line_tx.send(read);
            let mut buf = [0_u8; 8192];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                append_log(&stdout_log, &buf[..n]);
            }
        });

        let first_line = line_rx.recv_timeout(SERVER_START_TIMEOUT);
        let url = match first_line {
            Ok(Ok(line)) if line.is_empty() => {
                Err("it closed stdout without printing anything (did it exit?)".to_string())
            }
            Ok(Ok(line)) => parse_listening_line(&line).map_err(|e| format!("{e}: {line:?}")),
            Ok(Err(e)) => Err(format!("reading its stdout failed: {e}")),
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "it printed no line to stdout within {}s",
                SERVER_START_TIMEOUT.as_secs()
            )),
            Err(RecvTimeoutError::Disconnected) => Err("its stdout reader died".to_string()),
        };
        let url = match url {
            Ok(url) => url,
            Err(problem) => {
                // Stop it, then let stderr drain so the message carries all of it.
                let _ = child.kill();
                let status = child
                    .wait()
                    .map_or_else(|e| e.to_string(), |s| s.to_string());
                let _ = stderr_done_rx.recv_timeout(READER_GRACE);
                let log = log
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                panic!(
                    "`{what}` did not start: expected exactly one stdout line \
                     `agentregistry listening on http://127.0.0.1:PORT`, but {problem}\n\
                     it ended with: {status}\n--- server stderr ---\n{}\n--- end ---",
                    tail(&String::from_utf8_lossy(&log), SHOWN_BYTES_MAX)
                );
            }
        };
        let authority = url.trim_start_matches("http://").to_string();
        let server = ServerProcess {
            child,
            log,
            _home: home,
        };
        let registry = Registry {
            url,
            authority,
            unique: String::new(),
            target: Target::Spawned(server),
        };
        registry.expect_ping();
        registry
    }

    /// `GET /-/ping` must answer 200 right after the listening line (or for an external one,
    /// at once): the contract says the line is printed as soon as it serves.
    fn expect_ping(&self) {
        let ping = self.get("/-/ping", &[]);
        assert_eq!(
            ping.status,
            200,
            "GET /-/ping on {}: expected 200 once the registry says it listens\n{}",
            self.url,
            ping.describe()
        );
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// `127.0.0.1:PORT`.
    pub(crate) fn authority(&self) -> &str {
        &self.authority
    }

    /// A package or user name for this test: `base` itself on a registry of our own, `base`
    /// plus a unique suffix on a shared external registry.
    pub(crate) fn name(&self, base: &str) -> String {
        format!("{base}{}", self.unique)
    }

    /// True when the registry under test is another registry and the caller should accept
    /// its answer for the AgentRegistry-specific `check` instead of failing. Prints a note.
    pub(crate) fn relax(&self, check: &str) -> bool {
        match self.target {
            Target::External {
                not_agentregistry: true,
            } => {
                eprintln!("note: relaxed ({ENV_NOT_AGENTREGISTRY}=1): {check}");
                true
            }
            _ => false,
        }
    }

    /// The server's stderr (and late stdout) so far, newest bytes; empty for external ones.
    pub(crate) fn server_log(&self) -> String {
        match &self.target {
            Target::Spawned(server) => {
                let log = server
                    .log
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                tail(&String::from_utf8_lossy(&log), SHOWN_BYTES_MAX)
            }
            Target::External { .. } => String::new(),
        }
    }

    /// One raw HTTP/1.1 exchange (`Connection: close`) on a fresh loopback socket.
    /// `path` starts with `/` and is sent as is (callers percent-encode).
    pub(crate) fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        let what = format!("{method} {}{path}", self.url);
        http_exchange(&self.authority, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{what}: {e}\n--- server log ---\n{}", self.server_log()))
    }

    pub(crate) fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.request("GET", path, headers, None)
    }

    /// The legacy `CouchDB` login npm falls back to, done the way npm 11's `npm-profile`
    /// `loginCouch` does it: `PUT /-/user/org.couchdb.user:NAME`; on 409 (user exists, the
    /// answer Verdaccio gives) `GET` the same path `?write=true` and `PUT .../-rev/<_rev>`
    /// with the merged document and HTTP Basic credentials (npm sends the literal
    /// `undefined` when there is no `_rev`). Registration is open, so a new user is
    /// created. Returns the bearer token.
    pub(crate) fn login_http(&self, user: &str, password: &str) -> String {
        let mut body = serde_json::json!({
            "_id": format!("org.couchdb.user:{user}"),
            "name": user,
            "password": password,
            "type": "user",
            "roles": [],
            "date": "2026-01-01T00:00:00.000Z",
        });
        let path = format!("/-/user/org.couchdb.user:{user}");
        let json = [("Content-Type", "application/json")];
        let bytes = body.to_string().into_bytes();
        let mut response = self.request("PUT", &path, &json, Some(&bytes));
        let mut step = format!("PUT {path}");
        if response.status == 409 {
            let read_path = format!("{path}?write=true");
            let existing = self.get(&read_path, &[]);
            assert_eq!(
                existing.status,
                200,
                "GET {read_path} (npm's next step after a 409 on login): expected 200\n{}",
                existing.describe()
            );
            if let (Value::Object(fields), Value::Object(body_fields)) =
                (existing.json(&read_path), &mut body)
            {
                for (key, value) in fields {
                    let absent = body_fields.get(&key).is_none_or(|v| !json_truthy(v));
                    if absent || key == "roles" {
                        body_fields.insert(key, value);
                    }
                }
            }
            let rev = body
                .get("_rev")
                .and_then(Value::as_str)
                .unwrap_or("undefined")
                .to_string();
            step = format!("PUT {path}/-rev/{rev} (with Basic auth)");
            let bytes = body.to_string().into_bytes();
            let basic = format!(
                "Basic {}",
                base64_encode(format!("{user}:{password}").as_bytes())
            );
            let headers = [json[0], ("Authorization", basic.as_str())];
            response = self.request("PUT", &format!("{path}/-rev/{rev}"), &headers, Some(&bytes));
        }
        assert!(
            matches!(response.status, 200 | 201),
            "{step} (couchdb login/registration of {user:?}): expected 201 (or 200) with a \
             token\n{}",
            response.describe()
        );
        let answer = response.json(&step);
        match answer.get("token").and_then(Value::as_str) {
            Some(token) if !token.is_empty() => token.to_string(),
            _ => panic!(
                "{step}: expected a JSON body with a non-empty string \"token\"\n{}",
                response.describe()
            ),
        }
    }
}

/// JavaScript truthiness of a JSON value (npm-profile merges with `!body[k]`).
fn json_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Target::Spawned(server) = &mut self.target {
            // Child::kill signals exactly the pid we spawned.
            let _ = server.child.kill();
            let _ = server.child.wait();
            if thread::panicking() {
                let log = server
                    .log
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                eprintln!(
                    "--- agentregistry log ({}) ---\n{}\n--- end of agentregistry log ---",
                    self.url,
                    tail(&String::from_utf8_lossy(&log), SHOWN_BYTES_MAX)
                );
            }
        }
    }
}

/// `agentregistry listening on http://127.0.0.1:PORT` (plus line end) -> the URL.
fn parse_listening_line(line: &str) -> Result<String, &'static str> {
    const PREFIX: &str = "agentregistry listening on http://127.0.0.1:";
    let line = line
        .strip_suffix('\n')
        .ok_or("the line is incomplete (no newline)")?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let port = line
        .strip_prefix(PREFIX)
        .ok_or("the line has the wrong format")?;
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("the port is not a bound (non-zero) port number"),
        Ok(_) => Ok(format!("http://127.0.0.1:{port}")),
    }
}

/// `http://127.0.0.1:PORT` / `http://localhost:PORT` -> `host:PORT`; anything else -> None
/// (tests never leave loopback).
fn loopback_authority(url: &str) -> Option<String> {
    let authority = url.strip_prefix("http://")?;
    let (host, port) = authority.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    matches!(host, "127.0.0.1" | "localhost" | "[::1]").then(|| authority.to_string())
}

// ---------------------------------------------------------------------------------------
// Raw HTTP/1.1 over std::net
// ---------------------------------------------------------------------------------------

/// A parsed HTTP response; header names are lowercase, the body is de-chunked but not
/// decompressed.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// `METHOD path`, for messages.
    pub(crate) what: String,
}

impl Response {
    /// The first header named `name` (any case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, comma-split and trimmed (for `Vary`, `Cache-Control`).
    pub(crate) fn header_tokens(&self, name: &str) -> Vec<String> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_string()))
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// The body as JSON; panics with the response when it is not.
    pub(crate) fn json(&self, context: &str) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{context}: expected a JSON body, parsing failed ({e})\n{}",
                self.describe()
            )
        })
    }

    /// Status line, headers and (a printable prefix of) the body.
    pub(crate) fn describe(&self) -> String {
        let mut text = format!("response to {}: status {}\n", self.what, self.status);
        for (k, v) in &self.headers {
            let _ = writeln!(text, "  {k}: {v}");
        }
        let printable = self
            .body
            .iter()
            .take(2048)
            .all(|b| b.is_ascii() && (*b >= 0x20 || b.is_ascii_whitespace()));
        if printable {
            let shown =
                String::from_utf8_lossy(&self.body[..self.body.len().min(2048)]).into_owned();
            let _ = write!(text, "  body ({} bytes): {shown}", self.body.len());
        } else {
            let _ = write!(text, "  body: {} bytes (binary)", self.body.len());
        }
        text
    }
}

fn http_exchange(
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Response, String> {
    let what = format!("{method} {path}");
    let mut stream =
        TcpStream::connect(authority).map_err(|e| format!("connecting to {authority}: {e}"))?;
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(HTTP_TIMEOUT))
        .map_err(|e| e.to_string())?;

    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    let mut has_user_agent = false;
    for (name, value) in headers {
        has_user_agent |= name.eq_ignore_ascii_case("user-agent");
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if !has_user_agent {
        head.push_str("User-Agent: agentregistry-e2e\r\n");
    }
    if let Some(body) = body {
        let _ = write!(head, "Content-Length: {}\r\n", body.len());
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body.unwrap_or_default());
    stream
        .write_all(&request)
        .map_err(|e| format!("sending the request: {e}"))?;

    let mut raw = Vec::new();
    (&mut stream)
        .take(RESPONSE_BYTES_MAX)
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading the response (got {} bytes before): {e}", raw.len()))?;
    parse_response(&raw, method, what)
}

fn parse_response(raw: &[u8], method: &str, what: String) -> Result<Response, String> {
    let shown = || String::from_utf8_lossy(&raw[..raw.len().min(512)]).into_owned();
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            format!(
                "no complete response head in {} bytes: {:?}",
                raw.len(),
                shown()
            )
        })?;
    let head = std::str::from_utf8(&raw[..head_end])
        .map_err(|_| format!("non-UTF-8 head: {:?}", shown()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    let ("HTTP/1.1" | "HTTP/1.0", Some(status)) = (version, status) else {
        return Err(format!("bad status line {status_line:?}"));
    };
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let rest = &raw[head_end + 4..];
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let no_body =
        method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    let body = if no_body {
        if !rest.is_empty() {
            return Err(format!(
                "status {status} must not carry a body, got {} bytes",
                rest.len()
            ));
        }
        Vec::new()
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        decode_chunked(rest)?
    } else if let Some(length) = find("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| format!("bad content-length {length:?}"))?;
        if rest.len() != length {
            return Err(format!(
                "content-length says {length} bytes, the body has {}",
                rest.len()
            ));
        }
        rest.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
        what,
    })
}

fn decode_chunked(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunked body: missing chunk size line")?;
        let size_text =
            std::str::from_utf8(&rest[..line_end]).map_err(|_| "chunked body: bad size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("chunked body: bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 || &rest[size..size + 2] != b"\r\n" {
            return Err("chunked body: truncated chunk".to_string());
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

// ---------------------------------------------------------------------------------------
// Real package-manager clients
// ---------------------------------------------------------------------------------------

/// A package manager the suite drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tool {
    Npm,
    Pnpm,
    Yarn,
    Bun,
}

impl Tool {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Tool::Npm => "npm",
            Tool::Pnpm => "pnpm",
            Tool::Yarn => "yarn",
            Tool::Bun => "bun",
        }
    }

    /// `<repo>/.tools/bin/<tool>`, or for npm also the one on PATH.
    fn locate(self) -> Option<PathBuf> {
        let in_tools = repo_root().join(".tools/bin").join(self.name());
        if in_tools.is_file() {
            return Some(in_tools);
        }
        if self != Tool::Npm {
            return None;
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join("npm"))
            .find(|p| p.is_file())
    }
}

/// One package manager with its own HOME, config and empty cache (see module doc).
pub(crate) struct Client<'r> {
    tool: Tool,
    program: PathBuf,
    registry: &'r Registry,
    root: Scratch,
    token: Option<String>,
}

impl<'r> Client<'r> {
    /// A fresh client of `tool` for `registry`. When the tool is not installed this panics
    /// (telling how to install it), or with `AGENTREGISTRY_E2E_SKIP_MISSING_TOOLS=1` returns
    /// `None` after printing a note.
    pub(crate) fn new(tool: Tool, registry: &'r Registry) -> Option<Client<'r>> {
        let Some(program) = tool.locate() else {
            let wanted = repo_root().join(".tools/bin").join(tool.name());
            let message = format!(
                "{} is not installed (looked for {}{}): run scripts/install-tools.sh from the \
                 repo root to install the pinned pnpm, yarn and bun into .tools/",
                tool.name(),
                wanted.display(),
                if tool == Tool::Npm {
                    " and on PATH"
                } else {
                    ""
                },
            );
            assert!(
                env_flag(ENV_SKIP_MISSING_TOOLS),
                "{message} (or set {ENV_SKIP_MISSING_TOOLS}=1 to skip)"
            );
            eprintln!("note: SKIPPED because {message}");
            return None;
        };
        let root = Scratch::new(&format!("e2e-{}-", tool.name()));
        for dir in [
            "home",
            "cache",
            "work",
            "tmp",
            "home/.config",
            "home/.local/share",
            "home/.local/state",
        ] {
            std::fs::create_dir_all(root.path().join(dir)).expect("creating client directories");
        }
        let client = Client {
            tool,
            program,
            registry,
            root,
            token: None,
        };
        client.write_config();
        Some(client)
    }

    pub(crate) fn tool(&self) -> Tool {
        self.tool
    }

    pub(crate) fn home(&self) -> PathBuf {
        self.root.path().join("home")
    }

    pub(crate) fn cache_dir(&self) -> PathBuf {
        self.root.path().join("cache")
    }

    /// The bearer token this client logged in with, if any.
    pub(crate) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `//127.0.0.1:PORT/:_authToken` (the npmrc key npm writes after login).
    fn auth_key(&self) -> String {
        format!("//{}/:_authToken", self.registry.authority())
    }

    /// (Re)writes this client's config files from the registry URL and token.
    fn write_config(&self) {
        let home = self.home();
        let cache = self.cache_dir();
        let url = self.registry.url();
        let mut npmrc = format!("registry={url}/\n");
        match self.tool {
            Tool::Npm => {
                let _ = writeln!(
                    npmrc,
                    "cache={}\nupdate-notifier=false\nfund=false\naudit=false",
                    cache.display()
                );
            }
            Tool::Pnpm => {
                let _ = writeln!(
                    npmrc,
                    "store-dir={}\ncache-dir={}\nstate-dir={}\nupdate-notifier=false",
                    cache.join("store").display(),
                    cache.join("metadata").display(),
                    home.join(".local/state/pnpm").display(),
                );
            }
            Tool::Bun | Tool::Yarn => {}
        }
        if let Some(token) = &self.token {
            let _ = writeln!(npmrc, "{}={token}", self.auth_key());
        }
        std::fs::write(home.join(".npmrc"), npmrc).expect("writing the client's .npmrc");

        if self.tool == Tool::Yarn {
            // JSON strings are valid YAML double-quoted scalars.
            let quote = |s: &str| Value::from(s).to_string();
            let mut yarnrc = format!(
                "npmRegistryServer: {}\nunsafeHttpWhitelist:\n  - 127.0.0.1\n  - localhost\n\
                 enableGlobalCache: false\nenableMirror: false\nnodeLinker: node-modules\n\
                 enableTelemetry: false\nenableImmutableInstalls: false\nnpmMinimalAgeGate: 0\n",
                quote(url),
            );
            if let Some(token) = &self.token {
                let _ = writeln!(yarnrc, "npmAuthToken: {}", quote(token));
            }
            std::fs::write(home.join(".yarnrc.yml"), yarnrc)
                .expect("writing the client's .yarnrc.yml");
        }
    }

    /// Logs in through the raw couchdb PUT (not through the tool) and stores the token in
    /// this client's config.
    pub(crate) fn login_http(&mut self, user: &str, password: &str) {
        let token = self.registry.login_http(user, password);
        self.token = Some(token);
        self.write_config();
    }

    /// Real `npm login` (npm only), typed into a pseudo-terminal: npm's prompts need one
    /// (`fixtures/pty_answer.py` says why). Plain `npm login` first POSTs `/-/v1/login`; a
    /// 4xx makes it fall back to the couchdb PUT. Reads the token npm saved in `.npmrc`.
    pub(crate) fn npm_login(&mut self, user: &str, password: &str) -> CmdOutput {
        assert_eq!(self.tool, Tool::Npm, "npm_login drives npm only");
        let deadline_s = COMMAND_TIMEOUT.as_secs().to_string();
        let mut cmd = Command::new("python3");
        cmd.arg(fixture("pty_answer.py"))
            .args([
                deadline_s.as_str(),
                "Username:",
                user,
                "Password:",
                password,
                "--",
            ])
            .arg(&self.program)
            .arg("login");
        self.apply_env(&mut cmd);
        cmd.current_dir(self.home());
        let out = run_with_deadline(cmd, COMMAND_TIMEOUT + Duration::from_secs(5));
        let out = expect_success(
            out,
            &format!(
                "`npm login` as {user:?} (POST /-/v1/login must answer 4xx so npm falls back to \
                 PUT /-/user/org.couchdb.user:{user}, which must answer 201 with a token)"
            ),
        );
        let npmrc = std::fs::read_to_string(self.home().join(".npmrc")).expect("reading .npmrc");
        let key = format!("{}=", self.auth_key());
        let Some(line) = npmrc.lines().find(|l| l.starts_with(&key)) else {
            panic!(
                "after `npm login` expected a `{key}...` line in .npmrc, found:\n{npmrc}\n{}",
                out.describe()
            )
        };
        // npm quotes values that contain `=` (ini encoding).
        let token = line[key.len()..].trim().trim_matches('"').to_string();
        assert!(
            !token.is_empty(),
            "after `npm login` the token in .npmrc is empty:\n{npmrc}"
        );
        self.token = Some(token);
        self.write_config();
        out
    }

    fn apply_env(&self, cmd: &mut Command) {
        let home = self.home();
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", self.cache_dir().join("xdg"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_STATE_HOME", home.join(".local/state"))
            .env("TMPDIR", self.root.path().join("tmp"))
            .env("LANG", "C.UTF-8")
            .env("NO_COLOR", "1")
            .env("FORCE_COLOR", "0");
        match self.tool {
            Tool::Npm | Tool::Pnpm => {}
            Tool::Yarn => {
                cmd.env("YARN_CACHE_FOLDER", self.cache_dir())
                    .env("YARN_ENABLE_TELEMETRY", "0")
                    .env("YARN_ENABLE_PROGRESS_BARS", "0")
                    .env("YARN_ENABLE_COLORS", "0");
            }
            Tool::Bun => {
                cmd.env("BUN_INSTALL_CACHE_DIR", self.cache_dir())
                    .env("BUN_INSTALL", home.join(".bun"))
                    .env("DO_NOT_TRACK", "1");
            }
        }
    }

    /// Runs the tool with `args` in `cwd` under `COMMAND_TIMEOUT`; does not judge the result.
    pub(crate) fn run(&self, args: &[&str], cwd: &Path) -> CmdOutput {
        let mut cmd = Command::new(&self.program);
        cmd.args(args).current_dir(cwd);
        self.apply_env(&mut cmd);
        run_with_deadline(cmd, COMMAND_TIMEOUT)
    }

    /// Runs the tool and panics (with its output) unless it exits 0.
    pub(crate) fn run_ok(&self, args: &[&str], cwd: &Path, expectation: &str) -> CmdOutput {
        expect_success(self.run(args, cwd), expectation)
    }

    /// Runs the tool and panics (with its output) unless it exits non-zero.
    pub(crate) fn run_fails(&self, args: &[&str], cwd: &Path, expectation: &str) -> CmdOutput {
        let out = self.run(args, cwd);
        assert!(
            out.status.is_some_and(|s| !s.success()),
            "{expectation}: expected a non-zero exit status\n{}",
            out.describe()
        );
        out
    }

    /// A new empty directory under this client's scratch space.
    pub(crate) fn new_dir(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join("work").join(name);
        std::fs::create_dir_all(&dir).expect("creating a work directory");
        dir
    }

    /// The tool's plain install of the project in `dir`.
    pub(crate) fn install(&self, dir: &Path) -> CmdOutput {
        let args: &[&str] = match self.tool {
            Tool::Npm => &["install", "--no-audit", "--no-fund"],
            Tool::Pnpm => &["install", "--reporter=append-only"],
            Tool::Yarn | Tool::Bun => &["install"],
        };
        self.run_ok(
            args,
            dir,
            &format!(
                "{} install in a fresh project with an empty cache",
                self.tool.name()
            ),
        )
    }
}

// ---------------------------------------------------------------------------------------
// Tiny packages on disk
// ---------------------------------------------------------------------------------------

/// Writes `package.json` and `index.js` of a tiny package into `dir` (created if missing).
/// `deps` are `(name, range)` pairs; `index_js` is the module source.
pub(crate) fn write_package(
    dir: &Path,
    name: &str,
    version: &str,
    deps: &[(&str, &str)],
    index_js: &str,
) {
    std::fs::create_dir_all(dir).expect("creating a package directory");
    let dependencies: BTreeMap<&str, &str> = deps.iter().copied().collect();
    let manifest = serde_json::json!({
        "name": name,
        "version": version,
        "description": format!("AgentRegistry e2e fixture {name}@{version}"),
        "main": "index.js",
        "license": "MIT",
        "dependencies": dependencies,
    });
    let text = serde_json::to_string_pretty(&manifest).expect("a JSON value always serializes");
    std::fs::write(dir.join("package.json"), text + "\n").expect("writing package.json");
    std::fs::write(dir.join("index.js"), index_js).expect("writing index.js");
}

/// Writes a private project (`package.json` only) that depends on `deps`.
pub(crate) fn write_project(dir: &Path, deps: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("creating a project directory");
    let dependencies: BTreeMap<&str, &str> = deps.iter().copied().collect();
    let manifest = serde_json::json!({
        "name": "e2e-consumer",
        "version": "0.0.0",
        "private": true,
        "dependencies": dependencies,
    });
    let text = serde_json::to_string_pretty(&manifest).expect("a JSON value always serializes");
    std::fs::write(dir.join("package.json"), text + "\n").expect("writing package.json");
}

/// Where Node would find package `dep` required from the package in `from_dir`: the first
/// `<ancestor>/node_modules/<dep>` walking up from the real path of `from_dir` (this covers
/// npm/yarn/bun hoisting and pnpm's symlinked `.pnpm` layout alike).
pub(crate) fn resolve_from(from_dir: &Path, dep: &str) -> Option<PathBuf> {
    let real = std::fs::canonicalize(from_dir).ok()?;
    real.ancestors()
        .filter(|a| a.file_name().is_none_or(|n| n != "node_modules"))
        .map(|a| a.join("node_modules").join(dep))
        .find(|candidate| candidate.join("package.json").is_file())
}

/// The `version` field of `<dir>/package.json`; panics with the file when unreadable.
pub(crate) fn read_version(dir: &Path) -> String {
    let path = dir.join("package.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("expected {} to exist: {e}", path.display()));
    let json: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("expected {} to be JSON ({e}):\n{text}", path.display()));
    json.get("version")
        .and_then(Value::as_str)
        .unwrap_or_else(|| {
            panic!(
                "expected a string \"version\" in {}:\n{text}",
                path.display()
            )
        })
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(
                base64_encode(plain.as_bytes()),
                encoded,
                "base64 of {plain:?}"
            );
        }
    }

    #[test]
    fn listening_line_parses_only_the_contract_format() {
        let ok = parse_listening_line("agentregistry listening on http://127.0.0.1:4873\n");
        assert_eq!(ok, Ok("http://127.0.0.1:4873".to_string()));
        for bad in [
            "agentregistry listening on http://127.0.0.1:0\n",
            "agentregistry listening on http://127.0.0.1:4873",
            "listening on http://127.0.0.1:4873\n",
            "agentregistry listening on http://0.0.0.0:4873\n",
        ] {
            assert!(
                parse_listening_line(bad).is_err(),
                "{bad:?} must be rejected"
            );
        }
    }

    #[test]
    fn chunked_and_length_bodies_parse() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let r = parse_response(raw, "GET", "GET /".into()).expect("valid chunked response");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abcde"[..]));
        let raw = b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n";
        let r = parse_response(raw, "GET", "GET /".into()).expect("valid 304");
        assert_eq!((r.status, r.header("etag")), (304, Some("\"x\"")));
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc";
        assert!(
            parse_response(raw, "GET", "GET /".into()).is_err(),
            "short body must be an error"
        );
    }

    /// Goal: a hung command is killed at its deadline, and a background child that keeps
    /// the output pipe open cannot hang the harness. Method: commands that never end.
    #[test]
    fn deadline_kills_the_command_and_its_children() {
        let mut hung = Command::new("sh");
        hung.args(["-c", "echo started; exec tail -f /dev/null"]);
        let out = run_with_deadline(hung, Duration::from_secs(1));
        assert!(
            out.status.is_none(),
            "expected a kill at the deadline\n{}",
            out.describe()
        );
        assert_eq!(out.stdout, "started\n", "output before the kill is kept");

        let mut leaky = Command::new("sh");
        leaky.args(["-c", "tail -f /dev/null & echo parent done"]);
        let out = run_with_deadline(leaky, Duration::from_secs(60));
        assert!(out.success(), "the parent exited 0\n{}", out.describe());
        assert!(
            out.stderr.contains("left behind"),
            "expected a note\n{}",
            out.describe()
        );
    }

    #[test]
    fn loopback_only() {
        assert_eq!(
            loopback_authority("http://127.0.0.1:4873"),
            Some("127.0.0.1:4873".into())
        );
        assert_eq!(
            loopback_authority("http://localhost:1"),
            Some("localhost:1".into())
        );
        assert_eq!(loopback_authority("http://example.com:80"), None);
        assert_eq!(loopback_authority("https://127.0.0.1:4873"), None);
    }
}
