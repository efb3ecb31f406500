//! The three servers `compare` and `clients` start themselves, each on a loopback port with
//! its own temporary directory, and stop (by PID) when dropped:
//!
//! - **AgentRegistry**: `agentregistry serve --listen 127.0.0.1:0 --home DIR`, loaded with
//!   the real corpus through its publish path.
//! - **nginx** (Debian `nginx-light`): 2 workers, `sendfile on`, `access_log off`, serving
//!   the identical documents as static files. For every package, the full and abbreviated
//!   packuments are fetched from AgentRegistry after loading (with `Host` set to nginx's
//!   address, so tarball URLs point at nginx) and written with a `.gz` twin at the gzip
//!   level AgentRegistry uses for a document of that size (`gzip_static on`). The same URL paths work: `GET /NAME` (or
//!   `/@scope%2fname`) is rewritten to `/__abbr/NAME.json` when `Accept` names
//!   `application/vnd.npm.install-v1+json` (a `map` on `$http_accept`) and to
//!   `/__full/NAME.json` otherwise; tarballs are served from the registry URL layout.
//! - **Verdaccio 6**: installed with npm into a tools folder (`npm install verdaccio@6`),
//!   storage and htpasswd in a temporary directory, publish allowed for `$authenticated`,
//!   no uplinks; loaded with the same corpus through its publish API.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::corpus::{self, Entry};
use crate::http::{Conn, Target};

/// Which server a target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) enum Kind {
    AgentRegistry,
    Nginx,
    Verdaccio,
}

impl Kind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::AgentRegistry => "agentregistry",
            Kind::Nginx => "nginx",
            Kind::Verdaccio => "verdaccio",
        }
    }
}

/// A running server we started; stopped by PID on drop.
pub(crate) struct Server {
    pub(crate) kind: Kind,
    pub(crate) target: Target,
    pub(crate) pid: u32,
    child: Child,
    dir: Option<tempfile::TempDir>,
}

impl Server {
    /// The server's temporary directory (AgentRegistry's home is beneath it).
    pub(crate) fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(tempfile::TempDir::path)
    }

    /// Stops the server: SIGTERM to its PID (nginx's master then stops its workers), then
    /// SIGKILL after 5 s. Returns how it exited (`None` when it had already been reaped).
    pub(crate) fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// `program`, started through `taskset -c CPUS` when `cpus` is given (taskset execs the
/// program, so the PID is the server's).
fn command_on(cpus: Option<&str>, program: &std::ffi::OsStr) -> Command {
    match cpus {
        Some(cpus) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(cpus).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
    Ok(listener.local_addr()?.port())
}

/// The workspace root (this crate's parent).
#[must_use]
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// `target/release/agentregistry`, built with `cargo build --release -p server` if missing.
pub(crate) fn agentregistry_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        anyhow::ensure!(path.is_file(), "{} does not exist", path.display());
        return Ok(path.to_path_buf());
    }
    let root = workspace_root();
    let bin = root.join("target/release/agentregistry");
    if !bin.is_file() {
        eprintln!("building the server: cargo build --release -p server");
        let status = Command::new("cargo")
            .args(["build", "--release", "-p", "server"])
            .current_dir(&root)
            .status()
            .context("running cargo build")?;
        anyhow::ensure!(status.success(), "cargo build --release -p server failed");
    }
    Ok(bin)
}

fn wait_until_ready(target: &Target, path: &str, child: &mut Child, what: &str) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{what} exited during start-up: {status}");
        }
        let mut conn = Conn::new(target);
        if let Ok(r) = conn.request("GET", path, &[], None) {
            if r.status < 500 {
                return Ok(());
            }
        }
        if Instant::now() > until {
            bail!("{what} did not answer GET {path} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts AgentRegistry with a fresh home in a temporary directory, on a free port.
pub(crate) fn start_agentregistry(
    bin: &Path,
    cores: Option<usize>,
    cpus: Option<&str>,
) -> Result<Server> {
    let dir = tempfile::Builder::new()
        .prefix("perf-agentregistry-")
        .tempdir()?;
    let (mut server, _) = start_agentregistry_on(
        bin,
        &dir.path().join("home"),
        "127.0.0.1:0",
        cores,
        cpus,
        &dir.path().join("server.log"),
    )?;
    server.dir = Some(dir);
    Ok(server)
}

/// How long one AgentRegistry start took, measured from the spawn.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StartTiming {
    /// Wall-clock time of the spawn (to compare with the server's own log timestamps).
    pub(crate) spawned_at: std::time::SystemTime,
    /// Spawn to the `agentregistry listening on` line on stdout.
    pub(crate) listening: Duration,
    /// Spawn to the first `200` answer to `GET /-/ping`.
    pub(crate) ping: Duration,
}

/// Starts AgentRegistry on `home` (created if missing) listening on `listen`, its stderr
/// (the log) appended to `log`. An explicit port keeps the base URL, and so the pre-rendered
/// documents, the same across restarts (another URL makes the server re-render every
/// record when it opens its shards). `GET /-/ping` is polled every millisecond from the spawn:
/// the server binds before it opens its data directory, so a request that connects early
/// simply waits until the cores serve.
pub(crate) fn start_agentregistry_on(
    bin: &Path,
    home: &Path,
    listen: &str,
    cores: Option<usize>,
    cpus: Option<&str>,
    log: &Path,
) -> Result<(Server, StartTiming)> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = command_on(cpus, bin.as_os_str());
    cmd.args(["serve", "--listen", listen, "--home"])
        .arg(home)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file));
    if let Some(cores) = cores {
        cmd.args(["--cores", &cores.to_string()]);
    }
    let spawned_at = std::time::SystemTime::now();
    let spawned = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("server stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let mut sent = false;
        // Keep draining so the server never blocks on a full pipe.
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if !sent {
                if let Some(url) = line.trim().strip_prefix("agentregistry listening on ") {
                    let _ = tx.send((url.to_owned(), Instant::now()));
                    sent = true;
                }
            }
            line.clear();
        }
    });
    let pid = child.id();
    let fail = |child: &mut Child, why: String| -> anyhow::Error {
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(log).unwrap_or_default();
        anyhow::anyhow!("{why}\n{text}")
    };
    // With an explicit port, poll the ping from the spawn; with port 0, learn the port first.
    let ping_target = match Target::parse(&format!("http://{listen}")) {
        Ok(t) if t.addr.port() != 0 => Some(t),
        _ => None,
    };
    let ping = match ping_target {
        Some(t) => Some(
            poll_ping(&t, &mut child, spawned).map_err(|e| fail(&mut child, format!("{e:#}")))?,
        ),
        None => None,
    };
    let (url, listening_at) = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(found) => found,
        Err(_) => {
            return Err(fail(
                &mut child,
                "agentregistry did not print its listening line within 60 s".to_owned(),
            ))
        }
    };
    let target = Target::parse(&url)?;
    let ping = match ping {
        Some(at) => at,
        None => poll_ping(&target, &mut child, spawned)
            .map_err(|e| fail(&mut child, format!("{e:#}")))?,
    };
    let server = Server {
        kind: Kind::AgentRegistry,
        target,
        pid,
        child,
        dir: None,
    };
    Ok((
        server,
        StartTiming {
            spawned_at,
            listening: listening_at.saturating_duration_since(spawned),
            ping: ping.saturating_duration_since(spawned),
        },
    ))
}

/// Polls `GET /-/ping` every millisecond until it answers 200 (up to 120 s); returns when.
fn poll_ping(target: &Target, child: &mut Child, since: Instant) -> Result<Instant> {
    let until = since + Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("agentregistry exited during start-up: {status}");
        }
        let mut conn = Conn::new(target);
        if let Ok(r) = conn.request("GET", "/-/ping", &[], None) {
            if r.status == 200 {
                return Ok(Instant::now());
            }
        }
        if Instant::now() > until {
            bail!("agentregistry did not answer GET /-/ping within 120 s");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Writes nginx's document root from AgentRegistry's bytes; returns (files, bytes).
pub(crate) fn lay_out_nginx_root(
    registry: &Target,
    nginx_authority: &str,
    entries: &[Entry],
    root: &Path,
) -> Result<(usize, u64)> {
    let mut files = 0usize;
    let mut bytes = 0u64;
    let names = corpus::names(entries);
    let mut conn = Conn::new(registry).with_host(nginx_authority);
    let write = |path: PathBuf, data: &[u8]| -> Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))
    };
    for name in &names {
        for (variant, accept) in [
            ("__abbr", "application/vnd.npm.install-v1+json"),
            ("__full", "application/json"),
        ] {
            let r = conn.request(
                "GET",
                &corpus::packument_path(name),
                &[("Accept", accept)],
                None,
            )?;
            anyhow::ensure!(r.status == 200, "GET {name} ({accept}): {}", r.status);
            let identity = r.decoded_body()?;
            let gz = gzip_like_agentregistry(&identity)?;
            let path = root.join(variant).join(format!("{name}.json"));
            write(path.clone(), &identity)?;
            write(PathBuf::from(format!("{}.gz", path.display())), &gz)?;
            files += 2;
            bytes += (identity.len() + gz.len()) as u64;
        }
    }
    // Tarballs: the bytes AgentRegistry serves (checked against the corpus' size).
    let mut conn = Conn::new(registry);
    for entry in entries {
        let path = corpus::tarball_path(&entry.name, &entry.version);
        let r = conn.request("GET", &path, &[], None)?;
        anyhow::ensure!(r.status == 200, "GET {path}: {}", r.status);
        anyhow::ensure!(
            r.body.len() as u64 == entry.size,
            "GET {path}: {} bytes, the corpus has {}",
            r.body.len(),
            entry.size
        );
        write(root.join("__tarballs").join(&entry.relative), &r.body)?;
        files += 1;
        bytes += r.body.len() as u64;
    }
    Ok((files, bytes))
}

/// gzip at the level AgentRegistry renders a document of this size with (engine's
/// `served::gzip_level`: 1 up to 16 KiB, 6 above; served format 4). AgentRegistry answers a
/// request for another host with the identity form only, so the twin is made here.
fn gzip_like_agentregistry(data: &[u8]) -> Result<Vec<u8>> {
    let level = if data.len() <= 16 * 1024 { 1 } else { 6 };
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::new(level),
    );
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

fn make_world_readable(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o755))?;
            make_world_readable(&entry.path())?;
        } else {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644))?;
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn nginx_binary() -> Result<PathBuf> {
    for candidate in ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"] {
        if Path::new(candidate).is_file() {
            return Ok(PathBuf::from(candidate));
        }
    }
    bail!("nginx is not installed: apt-get install nginx-light")
}

/// Lays out and starts nginx on `port` serving AgentRegistry's documents and tarballs.
pub(crate) fn start_nginx(
    registry: &Target,
    entries: &[Entry],
    port: u16,
    workers: usize,
    cpus: Option<&str>,
) -> Result<Server> {
    let bin = nginx_binary()?;
    let dir = tempfile::Builder::new().prefix("perf-nginx-").tempdir()?;
    let www = dir.path().join("www");
    let authority = format!("127.0.0.1:{port}");
    let (files, bytes) = lay_out_nginx_root(registry, &authority, entries, &www)?;
    eprintln!(
        "nginx document root: {files} files, {:.1} MiB",
        bytes as f64 / 1048576.0
    );
    std::fs::create_dir_all(dir.path().join("tmp"))?;
    make_world_readable(dir.path())?;
    let conf = format!(
        r#"worker_processes {workers};
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    open_file_cache max=20000 inactive=120s;
    open_file_cache_valid 120s;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    types {{ application/octet-stream tgz; }}
    default_type application/octet-stream;
    map $http_accept $npm_doc {{
        "~application/vnd\.npm\.install-v1\+json" __abbr;
        default __full;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
        location ~ "/-/[^/]+\.tgz$" {{
            root {www}/__tarballs;
        }}
        location /__abbr/ {{
            internal;
            gzip_static on;
            default_type application/vnd.npm.install-v1+json;
        }}
        location /__full/ {{
            internal;
            gzip_static on;
            default_type application/json;
        }}
        location / {{
            rewrite ^ /$npm_doc$uri.json last;
        }}
    }}
}}
"#,
        dir = dir.path().display(),
        www = www.display(),
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let log = std::fs::File::create(dir.path().join("stderr.log"))?;
    let mut child = command_on(cpus, bin.as_os_str())
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting nginx")?;
    let target = Target::parse(&format!("http://{authority}"))?;
    let probe = corpus::packument_path(&entries.first().context("empty corpus")?.name);
    if let Err(e) = wait_until_ready(&target, &probe, &mut child, "nginx") {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
        bail!("{e:#}\n{log}");
    }
    let pid = child.id();
    Ok(Server {
        kind: Kind::Nginx,
        target,
        pid,
        child,
        dir: Some(dir),
    })
}

/// Checks that nginx answers with the bytes AgentRegistry answers (modulo the host in
/// tarball URLs) for a sample of packages and both representations.
pub(crate) fn check_nginx(registry: &Target, nginx: &Target, entries: &[Entry]) -> Result<()> {
    let names = corpus::names(entries);
    let mut ar = Conn::new(registry).with_host(&nginx.authority);
    let mut ng = Conn::new(nginx);
    for name in names.iter().step_by(names.len().div_ceil(25).max(1)) {
        for accept in ["application/vnd.npm.install-v1+json", "application/json"] {
            for gzip in [false, true] {
                let mut headers = vec![("Accept", accept)];
                if gzip {
                    headers.push(("Accept-Encoding", "gzip"));
                }
                let a = ar.request("GET", &corpus::packument_path(name), &headers, None)?;
                let b = ng.request("GET", &corpus::packument_path(name), &headers, None)?;
                anyhow::ensure!(
                    b.status == 200 && b.is_gzip() == gzip,
                    "nginx GET {name} ({accept}, gzip {gzip}): {} gzip={}",
                    b.status,
                    b.is_gzip()
                );
                anyhow::ensure!(
                    a.decoded_body()? == b.decoded_body()?,
                    "nginx and agentregistry differ for {name} ({accept})"
                );
            }
        }
    }
    Ok(())
}

/// The tools folder where Verdaccio is installed (kept between runs).
#[must_use]
pub(crate) fn default_tools_dir() -> PathBuf {
    workspace_root().join("target/perf-tools")
}

/// Installs Verdaccio 6 with npm into `tools/verdaccio` unless present; returns its entry
/// script. `node-fetch` is pinned to 2.x by an override: verdaccio-audit asks for the
/// `cjs` dist-tag, which some registry mirrors do not carry.
pub(crate) fn ensure_verdaccio(tools: &Path) -> Result<PathBuf> {
    let dir = tools.join("verdaccio");
    let entry = dir.join("node_modules/verdaccio/bin/verdaccio");
    if entry.is_file() {
        return Ok(entry);
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("package.json"),
        r#"{"name":"perf-verdaccio","private":true,"dependencies":{"verdaccio":"^6"},"overrides":{"node-fetch":"^2.7.0"}}"#,
    )?;
    eprintln!("installing verdaccio@6 into {}", dir.display());
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()
        .context("running npm install verdaccio@6")?;
    anyhow::ensure!(status.success(), "npm install verdaccio@6 failed");
    anyhow::ensure!(entry.is_file(), "{} missing after install", entry.display());
    Ok(entry)
}

/// Starts Verdaccio 6 on `port` with storage in a temporary directory.
pub(crate) fn start_verdaccio(tools: &Path, port: u16, cpus: Option<&str>) -> Result<Server> {
    let entry = ensure_verdaccio(tools)?;
    let dir = tempfile::Builder::new()
        .prefix("perf-verdaccio-")
        .tempdir()?;
    let config = format!(
        r#"storage: {dir}/storage
auth:
  htpasswd:
    file: {dir}/htpasswd
    max_users: 1000
uplinks: {{}}
packages:
  '@*/*':
    access: $all
    publish: $authenticated
    unpublish: $authenticated
  '**':
    access: $all
    publish: $authenticated
    unpublish: $authenticated
server:
  keepAliveTimeout: 120
max_body_size: 200mb
web:
  enable: false
log: {{ type: stdout, format: pretty, level: error }}
"#,
        dir = dir.path().display()
    );
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(dir.path().join("verdaccio.log"))?;
    let log_err = log.try_clone()?;
    let mut child = command_on(cpus, std::ffi::OsStr::new("node"))
        .arg(&entry)
        .arg("--config")
        .arg(&config_path)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("NODE_ENV", "production")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .spawn()
        .context("starting verdaccio")?;
    let target = Target::parse(&format!("http://127.0.0.1:{port}"))?;
    if let Err(e) = wait_until_ready(&target, "/-/ping", &mut child, "verdaccio") {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(dir.path().join("verdaccio.log")).unwrap_or_default();
        bail!("{e:#}\n{log}");
    }
    let pid = child.id();
    Ok(Server {
        kind: Kind::Verdaccio,
        target,
        pid,
        child,
        dir: Some(dir),
    })
}
