//! `perf load`: fills a registry through its HTTP publish path (npm's `PUT /NAME` body),
//! logging in first (open registration on loopback). Works against AgentRegistry and
//! Verdaccio alike. Versions of one package are published in order by one thread (Verdaccio
//! refuses concurrent writes to one package); packages are spread over a few threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use crate::corpus::{self, Entry};
use crate::http::{Conn, Target};

/// `PUT /-/user/org.couchdb.user:NAME`; returns the token.
pub(crate) fn login(target: &Target, user: &str, password: &str) -> Result<String> {
    let body = json!({
        "_id": format!("org.couchdb.user:{user}"),
        "name": user,
        "password": password,
        "type": "user",
        "roles": [],
        "date": "2026-01-01T00:00:00.000Z",
    });
    let body = serde_json::to_vec(&body)?;
    let mut conn = Conn::new(target);
    let response = conn.request(
        "PUT",
        &format!("/-/user/org.couchdb.user:{user}"),
        &[("Content-Type", "application/json")],
        Some(&body),
    )?;
    anyhow::ensure!(
        response.status == 201 || response.status == 200,
        "login as {user} at {}: {} {}",
        target.base,
        response.status,
        response.text()
    );
    let value: serde_json::Value =
        serde_json::from_slice(&response.decoded_body()?).context("login response")?;
    value["token"]
        .as_str()
        .map(str::to_owned)
        .context("login response has no token")
}

/// What a load did.
#[derive(Debug)]
pub(crate) struct LoadReport {
    pub(crate) publishes: usize,
    pub(crate) bytes: u64,
    pub(crate) elapsed: Duration,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "{} publishes ({:.1} MiB of bodies) in {secs:.2} s = {:.0} publishes/s",
            self.publishes,
            self.bytes as f64 / 1048576.0,
            self.publishes as f64 / secs.max(1e-9)
        )
    }
}

fn put_package(conn: &mut Conn, auth: &str, name: &str, body: &[u8]) -> Result<()> {
    let response = conn.request(
        "PUT",
        &corpus::packument_path(name),
        &[
            ("Authorization", auth),
            ("Content-Type", "application/json"),
        ],
        Some(body),
    )?;
    anyhow::ensure!(
        response.status == 201 || response.status == 200,
        "publishing {name}: {} {}",
        response.status,
        response.text()
    );
    Ok(())
}

/// Runs `work(conn, item)` over `items` on `threads` threads with one connection each;
/// returns the sum of what `work` returned. The first error stops every thread.
pub(crate) fn fan_out<T: Sync>(
    target: &Target,
    items: &[T],
    threads: usize,
    work: impl Fn(&mut Conn, &T) -> Result<u64> + Sync,
) -> Result<u64> {
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let bytes = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                let mut conn = Conn::new(target);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                        break;
                    }
                    match work(&mut conn, item) {
                        Ok(n) => {
                            bytes.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(e);
                            }
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    Ok(bytes.into_inner())
}

/// Publishes every tarball of the real corpus.
pub(crate) fn load_real(
    target: &Target,
    token: &str,
    entries: &[Entry],
    threads: usize,
) -> Result<LoadReport> {
    let groups = corpus::by_package(entries);
    let auth = format!("Bearer {token}");
    let start = Instant::now();
    let bytes = fan_out(target, &groups, threads, |conn, group| {
        let mut sent = 0u64;
        for entry in group {
            let body = corpus::real_publish_body(&target.base, entry)?;
            put_package(conn, &auth, &entry.name, &body)
                .with_context(|| format!("{}@{}", entry.name, entry.version))?;
            sent += body.len() as u64;
        }
        Ok(sent)
    })?;
    Ok(LoadReport {
        publishes: entries.len(),
        bytes,
        elapsed: start.elapsed(),
    })
}

/// Publishes N synthetic packages x M versions.
pub(crate) fn load_synthetic(
    target: &Target,
    token: &str,
    packages: usize,
    versions: usize,
    threads: usize,
) -> Result<LoadReport> {
    load_synthetic_range(
        target,
        token,
        0..packages,
        versions,
        packages,
        threads,
        None,
    )
}

/// Publishes synthetic packages `range` with versions `0..versions` each (dependencies drawn
/// from the first `domain` packages), the versions of one package in order on one
/// connection, packages spread over `threads` connections. With `progress`, prints the
/// running rate to stderr every `progress` packages.
pub(crate) fn load_synthetic_range(
    target: &Target,
    token: &str,
    range: std::ops::Range<usize>,
    versions: usize,
    domain: usize,
    threads: usize,
    progress: Option<usize>,
) -> Result<LoadReport> {
    let auth = format!("Bearer {token}");
    let items: Vec<usize> = range.collect();
    let total = items.len();
    let done = AtomicUsize::new(0);
    let start = Instant::now();
    let mark = Mutex::new((0usize, start));
    let bytes = fan_out(target, &items, threads, |conn, &i| {
        let mut sent = 0u64;
        let name = corpus::synthetic_name(i);
        for j in 0..versions {
            let body = corpus::synthetic_publish_body(&target.base, i, j, domain)?;
            put_package(conn, &auth, &name, &body)
                .with_context(|| format!("{name}@{}", corpus::synthetic_version(j)))?;
            sent += body.len() as u64;
        }
        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
        if progress.is_some_and(|every| every > 0 && n.is_multiple_of(every)) {
            let now = Instant::now();
            let secs = now.duration_since(start).as_secs_f64();
            let recent = mark.lock().ok().map(|mut m| {
                let rate = (n - m.0) as f64 * versions as f64
                    / now.duration_since(m.1).as_secs_f64().max(1e-9);
                *m = (n, now);
                rate
            });
            eprintln!(
                "  loaded {n}/{total} packages in {secs:.1} s: {:.0} publishes/s overall, {:.0}/s since the last line",
                (n * versions) as f64 / secs.max(1e-9),
                recent.unwrap_or(0.0)
            );
        }
        Ok(sent)
    })?;
    Ok(LoadReport {
        publishes: total * versions,
        bytes,
        elapsed: start.elapsed(),
    })
}
