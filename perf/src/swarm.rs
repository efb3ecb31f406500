//! The swarm workload: K concurrent simulated cold clients, each resolving the corpus'
//! dependency tree the way a package manager does. A client starts from the root
//! dependencies of `e2e-package.json`, fetches abbreviated packuments (gzip), picks the
//! highest version satisfying each range (node-semver-ish, `semverish.rs`), follows
//! `dependencies`, `optionalDependencies` and non-optional `peerDependencies`, and fetches
//! every resolved tarball as soon as it is known, over its own C connections (fresh
//! connections per tree, as a cold client opens them). The figure is the time per tree.
//!
//! Bounds: clients start trees until the deadline; a tree in progress then may finish until
//! `deadline + grace`, after which it is abandoned and counted as incomplete.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use monoio::net::TcpStream;
use semver::Version;
use serde_json::Value;

use crate::corpus;
use crate::http::gunzip;
use crate::loadgen::{self, Driver};
use crate::semverish::{dependency_target, Range};

/// One swarm run.
pub(crate) struct SwarmPlan {
    pub(crate) addr: SocketAddr,
    pub(crate) authority: String,
    pub(crate) clients: usize,
    pub(crate) connections_per_client: usize,
    pub(crate) threads: usize,
    pub(crate) duration: Duration,
    pub(crate) grace: Duration,
    pub(crate) roots: Vec<(String, String)>,
    pub(crate) driver: Driver,
}

/// What a swarm run measured.
pub(crate) struct SwarmOutcome {
    pub(crate) trees: u64,
    pub(crate) incomplete: u64,
    /// Milliseconds per complete tree.
    pub(crate) tree_ms: Histogram<u64>,
    pub(crate) requests: u64,
    pub(crate) bytes: u64,
    pub(crate) errors: u64,
    /// 404s for names the registry does not have (optional platform packages).
    pub(crate) missing: u64,
    /// Ranges no version satisfied (the highest version was taken).
    pub(crate) fallbacks: u64,
    pub(crate) packuments_per_tree: u64,
    pub(crate) tarballs_per_tree: u64,
    pub(crate) elapsed: Duration,
    pub(crate) first_error: Option<String>,
}

/// Root dependencies of a `package.json`.
pub(crate) fn roots_of(package_json: &std::path::Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(package_json)
        .with_context(|| format!("reading {}", package_json.display()))?;
    let value: Value = serde_json::from_str(&text)?;
    let deps = value["dependencies"]
        .as_object()
        .context("package.json has no dependencies")?;
    Ok(deps
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("*").to_owned()))
        .collect())
}

struct Shared {
    addr: SocketAddr,
    authority: String,
    roots: Vec<(String, String)>,
    deadline: Instant,
    hard_deadline: Instant,
    connections: usize,
}

#[derive(Default)]
struct Totals {
    trees: u64,
    incomplete: u64,
    tree_ms: Vec<u64>,
    requests: u64,
    bytes: u64,
    errors: u64,
    missing: u64,
    fallbacks: u64,
    packuments: u64,
    tarballs: u64,
    first_error: Option<String>,
}

/// Runs the swarm to its bounds.
pub(crate) fn run(plan: &SwarmPlan) -> Result<SwarmOutcome> {
    let start = Instant::now();
    let shared = Arc::new(Shared {
        addr: plan.addr,
        authority: plan.authority.clone(),
        roots: plan.roots.clone(),
        deadline: start + plan.duration,
        hard_deadline: start + plan.duration + plan.grace,
        connections: plan.connections_per_client.max(1),
    });
    let threads = plan.threads.clamp(1, plan.clients.max(1));
    let mut handles = Vec::new();
    for t in 0..threads {
        let clients = plan.clients / threads + usize::from(t < plan.clients % threads);
        let shared = Arc::clone(&shared);
        let driver = plan.driver;
        handles.push(
            std::thread::Builder::new()
                .name(format!("swarm-{t}"))
                .spawn(move || -> Result<Totals> {
                    let totals = Rc::new(RefCell::new(Totals::default()));
                    let main = thread_main(Rc::clone(&totals), shared, clients);
                    match driver {
                        Driver::Legacy => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                            .enable_timer()
                            .build()
                            .context("building the epoll runtime")?
                            .block_on(main),
                        Driver::Uring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                            .with_entries(4096)
                            .enable_timer()
                            .build()
                            .context("building the io_uring runtime")?
                            .block_on(main),
                    }
                    Ok(totals.take())
                })
                .context("spawning a swarm thread")?,
        );
    }
    let mut out = SwarmOutcome {
        trees: 0,
        incomplete: 0,
        tree_ms: Histogram::new_with_bounds(1, 3_600_000, 3).context("histogram")?,
        requests: 0,
        bytes: 0,
        errors: 0,
        missing: 0,
        fallbacks: 0,
        packuments_per_tree: 0,
        tarballs_per_tree: 0,
        elapsed: Duration::ZERO,
        first_error: None,
    };
    let (mut packuments, mut tarballs) = (0, 0);
    for handle in handles {
        let totals = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a swarm thread panicked"))??;
        out.trees += totals.trees;
        out.incomplete += totals.incomplete;
        for ms in totals.tree_ms {
            out.tree_ms.saturating_record(ms.max(1));
        }
        out.requests += totals.requests;
        out.bytes += totals.bytes;
        out.errors += totals.errors;
        out.missing += totals.missing;
        out.fallbacks += totals.fallbacks;
        packuments += totals.packuments;
        tarballs += totals.tarballs;
        if out.first_error.is_none() {
            out.first_error = totals.first_error;
        }
    }
    let trees = (out.trees + out.incomplete).max(1);
    out.packuments_per_tree = packuments / trees;
    out.tarballs_per_tree = tarballs / trees;
    out.elapsed = start.elapsed();
    Ok(out)
}

async fn thread_main(totals: Rc<RefCell<Totals>>, shared: Arc<Shared>, clients: usize) {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let totals = Rc::clone(&totals);
            let shared = Arc::clone(&shared);
            monoio::spawn(async move {
                while Instant::now() < shared.deadline {
                    run_tree(&shared, &totals).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
}

enum Job {
    Packument(String),
    Tarball(String),
}

struct VersionInfo {
    version: Version,
    tarball_path: String,
    deps: Vec<(String, String)>,
}

enum NameState {
    Pending(Vec<String>),
    Fetched(Rc<Vec<VersionInfo>>),
    Missing,
}

#[derive(Default)]
struct Tree {
    queue: VecDeque<Job>,
    in_flight: usize,
    waiters: Vec<Waker>,
    names: HashMap<String, NameState>,
    resolved: HashSet<(String, Version)>,
    aborted: bool,
    packuments: u64,
    tarballs: u64,
    requests: u64,
    bytes: u64,
    errors: u64,
    missing: u64,
    fallbacks: u64,
    first_error: Option<String>,
}

impl Tree {
    fn want(&mut self, name: &str, range: &str) {
        match self.names.get_mut(name) {
            None => {
                self.names
                    .insert(name.to_owned(), NameState::Pending(vec![range.to_owned()]));
                self.queue.push_back(Job::Packument(name.to_owned()));
            }
            Some(NameState::Pending(ranges)) => ranges.push(range.to_owned()),
            Some(NameState::Fetched(versions)) => {
                let versions = Rc::clone(versions);
                self.resolve(name, &versions, range);
            }
            Some(NameState::Missing) => {}
        }
    }

    fn resolve(&mut self, name: &str, versions: &[VersionInfo], range: &str) {
        let parsed = Range::parse(range);
        // `versions` is sorted from the highest down.
        let pick = parsed
            .as_ref()
            .and_then(|r| versions.iter().find(|v| r.matches(&v.version)));
        let pick = match pick {
            Some(p) => p,
            None => {
                self.fallbacks += 1;
                let Some(p) = versions.first() else { return };
                p
            }
        };
        if !self
            .resolved
            .insert((name.to_owned(), pick.version.clone()))
        {
            return;
        }
        self.queue
            .push_back(Job::Tarball(pick.tarball_path.clone()));
        for (dep, spec) in &pick.deps {
            if let Some((target, range)) = dependency_target(dep, spec) {
                self.want(target, range);
            }
        }
    }

    fn fetched(&mut self, name: &str, versions: Option<Vec<VersionInfo>>) {
        let state = match versions {
            Some(v) => NameState::Fetched(Rc::new(v)),
            None => NameState::Missing,
        };
        let previous = self.names.insert(name.to_owned(), state);
        if let (Some(NameState::Pending(ranges)), Some(NameState::Fetched(versions))) =
            (previous, self.names.get(name))
        {
            let versions = Rc::clone(versions);
            for range in ranges {
                self.resolve(name, &versions, &range);
            }
        }
    }

    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }
}

/// Waits for the next job of a tree; `None` once the tree is done (or abandoned).
struct NextJob {
    tree: Rc<RefCell<Tree>>,
}

impl Future for NextJob {
    type Output = Option<Job>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Job>> {
        let mut tree = self.tree.borrow_mut();
        if tree.aborted {
            return Poll::Ready(None);
        }
        if let Some(job) = tree.queue.pop_front() {
            tree.in_flight += 1;
            return Poll::Ready(Some(job));
        }
        if tree.in_flight == 0 {
            return Poll::Ready(None);
        }
        tree.waiters.push(cx.waker().clone());
        Poll::Pending
    }
}

async fn run_tree(shared: &Arc<Shared>, totals: &Rc<RefCell<Totals>>) {
    let started = Instant::now();
    let tree = Rc::new(RefCell::new(Tree::default()));
    {
        let mut t = tree.borrow_mut();
        for (name, range) in &shared.roots {
            t.want(name, range);
        }
    }
    let workers: Vec<_> = (0..shared.connections)
        .map(|_| monoio::spawn(worker(Rc::clone(&tree), Arc::clone(shared))))
        .collect();
    for w in workers {
        w.await;
    }
    let elapsed = started.elapsed();
    let t = tree.borrow();
    let mut totals = totals.borrow_mut();
    if t.aborted || t.errors > 0 {
        totals.incomplete += 1;
    } else {
        totals.trees += 1;
        totals
            .tree_ms
            .push(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
    }
    totals.requests += t.requests;
    totals.bytes += t.bytes;
    totals.errors += t.errors;
    totals.missing += t.missing;
    totals.fallbacks += t.fallbacks;
    totals.packuments += t.packuments;
    totals.tarballs += t.tarballs;
    if totals.first_error.is_none() {
        totals.first_error.clone_from(&t.first_error);
    }
}

fn tarball_path_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map(|i| rest[i..].to_owned())
}

fn parse_packument(body: &[u8]) -> Result<Vec<VersionInfo>> {
    let doc: Value = serde_json::from_slice(body).context("packument JSON")?;
    let versions = doc["versions"]
        .as_object()
        .context("packument without versions")?;
    let mut out = Vec::with_capacity(versions.len());
    for (text, manifest) in versions {
        let Ok(version) = Version::parse(text) else {
            continue;
        };
        let Some(tarball_path) = manifest["dist"]["tarball"]
            .as_str()
            .and_then(tarball_path_of)
        else {
            continue;
        };
        let mut deps = Vec::new();
        for field in ["dependencies", "optionalDependencies", "peerDependencies"] {
            if let Some(map) = manifest[field].as_object() {
                for (name, spec) in map {
                    let optional_peer = field == "peerDependencies"
                        && manifest["peerDependenciesMeta"][name]["optional"].as_bool()
                            == Some(true);
                    if !optional_peer {
                        deps.push((name.clone(), spec.as_str().unwrap_or("*").to_owned()));
                    }
                }
            }
        }
        out.push(VersionInfo {
            version,
            tarball_path,
            deps,
        });
    }
    out.sort_by(|a, b| b.version.cmp(&a.version));
    Ok(out)
}

async fn worker(tree: Rc<RefCell<Tree>>, shared: Arc<Shared>) {
    let mut stream: Option<TcpStream> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut body: Vec<u8> = Vec::new();
    while let Some(job) = (NextJob {
        tree: Rc::clone(&tree),
    })
    .await
    {
        let now = Instant::now();
        if now >= shared.hard_deadline {
            let mut t = tree.borrow_mut();
            t.aborted = true;
            t.in_flight -= 1;
            for w in t.waiters.drain(..) {
                w.wake();
            }
            break;
        }
        let (path, extra) = match &job {
            Job::Packument(name) => (
                corpus::packument_path(name),
                "Accept: application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*\r\nAccept-Encoding: gzip\r\n",
            ),
            Job::Tarball(path) => (path.clone(), "Accept-Encoding: gzip\r\n"),
        };
        let request: Bytes = loadgen::get_request(&shared.authority, &path, extra);
        body.clear();
        let mut outcome = None;
        for _attempt in 0..2 {
            if stream.is_none() {
                match TcpStream::connect_addr(shared.addr).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        stream = Some(s);
                    }
                    Err(e) => {
                        outcome = Some(Err(format!("connect: {e}")));
                        continue;
                    }
                }
            }
            let Some(s) = stream.as_mut() else { continue };
            let remaining = shared
                .hard_deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            body.clear();
            let result = monoio::time::timeout(
                remaining,
                loadgen::exchange(
                    s,
                    request.clone(),
                    std::mem::take(&mut buf),
                    Some(&mut body),
                ),
            )
            .await;
            match result {
                Ok((Ok(info), b)) => {
                    buf = b;
                    if info.close {
                        stream = None;
                    }
                    outcome = Some(Ok(info));
                    break;
                }
                Ok((Err(e), b)) => {
                    buf = b;
                    stream = None;
                    outcome = Some(Err(format!("{path}: {e}")));
                }
                Err(_) => {
                    buf = Vec::with_capacity(64 * 1024);
                    stream = None;
                    outcome = Some(Err(format!("{path}: timeout")));
                    break;
                }
            }
        }
        let mut t = tree.borrow_mut();
        t.in_flight -= 1;
        match outcome {
            Some(Ok(info)) => {
                t.requests += 1;
                t.bytes += info.total_bytes;
                match &job {
                    Job::Packument(name) => {
                        t.packuments += 1;
                        if info.status == 404 {
                            t.missing += 1;
                            t.fetched(name, None);
                        } else if info.status != 200 {
                            t.error(format!("GET {path}: status {}", info.status));
                            t.fetched(name, None);
                        } else {
                            let decoded = if info.gzip {
                                gunzip(&body)
                            } else {
                                Ok(std::mem::take(&mut body))
                            };
                            match decoded.and_then(|b| parse_packument(&b)) {
                                Ok(versions) => t.fetched(name, Some(versions)),
                                Err(e) => {
                                    t.error(format!("GET {path}: {e:#}"));
                                    t.fetched(name, None);
                                }
                            }
                        }
                    }
                    Job::Tarball(_) => {
                        t.tarballs += 1;
                        if info.status != 200 {
                            t.error(format!("GET {path}: status {}", info.status));
                        }
                    }
                }
            }
            Some(Err(e)) => {
                t.error(e);
                if let Job::Packument(name) = &job {
                    t.fetched(name, None);
                }
            }
            None => t.error(format!("GET {path}: no attempt made")),
        }
        for w in t.waiters.drain(..) {
            w.wake();
        }
    }
}
