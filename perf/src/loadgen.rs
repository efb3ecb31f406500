//! The load generator: a few threads, each running one monoio event loop (epoll by default,
//! io_uring on request) with many keep-alive HTTP/1.1 connections as tasks, like `wrk -tN`.
//! Every connection sends one request at a time (no pipelining), picks a random request from
//! the workload's set, reads the whole response (Content-Length, chunked or until close) and
//! records the latency, write start to last body byte, in its thread's hdrhistogram.
//!
//! Bounds: a run stops issuing requests at its deadline or after `max_requests`, whichever
//! comes first; every exchange has a timeout, so a stuck server cannot hold a run open.
//! Errors are socket errors (connect, reset, timeout, malformed response) and statuses
//! outside 2xx/3xx.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::corpus;
use crate::http::ChunkDecoder;

const READ_BUFFER_BYTES: usize = 64 * 1024;
const HEAD_BYTES_MAX: usize = 64 * 1024;

/// Which monoio driver the load generator's event loops use.
#[derive(Clone, Copy, Debug, clap::ValueEnum, serde::Serialize)]
pub(crate) enum Driver {
    /// epoll
    Legacy,
    /// io_uring
    Uring,
}

/// A fresh latency histogram in nanoseconds (100 ns .. 200 s, 3 significant digits).
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(100, 200_000_000_000, 3).expect("constant, valid bounds")
}

/// What each request of a run is.
#[derive(Clone)]
pub(crate) enum Source {
    /// Complete requests (head and body), picked uniformly at random.
    Fixed(Arc<FixedRequests>),
    /// A publish storm: every request publishes a new, unique version.
    Publish(Arc<PublishSource>),
}

/// A set of complete requests in one buffer, each a range of it. Taking one reads its 8-byte
/// bounds and its own bytes, and bumps the buffer's one (hot) reference count: with a
/// `Vec<Bytes>`, each request was its own allocation behind its own reference count, so a
/// set of 100,000 packages cost the load generator three cache misses per request (the
/// slot, the count, the bytes) against none for 1,000, and `perf scale`'s 100k/1k ratio
/// measured the load generator's caches as well as the server's.
pub(crate) struct FixedRequests {
    buf: Bytes,
    bounds: Vec<(u32, u32)>,
}

impl FixedRequests {
    /// `requests`, packed into one buffer.
    pub(crate) fn new(requests: &[Bytes]) -> Result<FixedRequests> {
        let total: usize = requests.iter().map(Bytes::len).sum();
        let mut buf = Vec::with_capacity(total);
        let mut bounds = Vec::with_capacity(requests.len());
        for request in requests {
            let start = u32::try_from(buf.len()).context("requests over 4 GiB")?;
            buf.extend_from_slice(request);
            let end = u32::try_from(buf.len()).context("requests over 4 GiB")?;
            bounds.push((start, end));
        }
        Ok(FixedRequests {
            buf: Bytes::from(buf),
            bounds,
        })
    }

    fn get(&self, i: usize) -> Option<Bytes> {
        let &(start, end) = self.bounds.get(i)?;
        Some(self.buf.slice(start as usize..end as usize))
    }

    fn len(&self) -> usize {
        self.bounds.len()
    }
}

impl Source {
    fn next(&self, rng: &mut u64) -> Result<Bytes> {
        match self {
            Source::Fixed(requests) => {
                *rng = corpus::mix(*rng);
                let i = (*rng % requests.len().max(1) as u64) as usize;
                requests.get(i).context("empty request set")
            }
            Source::Publish(p) => p.next(),
        }
    }
}

/// Generates publish requests: version `1.STAMP.N` of package
/// `perf-pub-NAMESPACE-(N mod packages)`, each with its own manifest and tarball (so blobs do
/// not deduplicate). NAMESPACE is the run's STAMP in hex unless one is given.
///
/// The first `prepared` requests are built before the clock starts, on every core, so the
/// storm measures the server and not the load generator gzipping tarballs (that was 0.3-0.4
/// of the 2 cores the server shares). Past them, requests are built as they are sent.
pub(crate) struct PublishSource {
    pub(crate) authority: String,
    pub(crate) base_url: String,
    pub(crate) auth: String,
    pub(crate) packages: usize,
    pub(crate) namespace: String,
    pub(crate) stamp: u64,
    pub(crate) counter: AtomicU64,
    prepared: Vec<Bytes>,
}

impl PublishSource {
    pub(crate) fn new(
        base_url: &str,
        authority: &str,
        token: &str,
        packages: usize,
        namespace: Option<&str>,
        prepared: usize,
    ) -> Result<Self> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        // Checked by the argument parser (`bench::publish_namespace`).
        let namespace = namespace.map_or_else(|| format!("{stamp:x}"), str::to_owned);
        let mut source = PublishSource {
            authority: authority.to_owned(),
            base_url: base_url.to_owned(),
            auth: format!("Bearer {token}"),
            packages: packages.max(1),
            namespace,
            stamp,
            counter: AtomicU64::new(0),
            prepared: Vec::new(),
        };
        source.prepared = source.build_range(prepared as u64)?;
        Ok(source)
    }

    /// Requests `0..count`, built on every available core.
    fn build_range(&self, count: u64) -> Result<Vec<Bytes>> {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let per = count.div_ceil(workers.max(1));
        std::thread::scope(|scope| {
            let parts: Vec<_> = (0..workers)
                .map(|w| {
                    let range = (w * per).min(count)..((w + 1) * per).min(count);
                    scope.spawn(move || range.map(|n| self.build(n)).collect::<Result<Vec<_>>>())
                })
                .collect();
            let mut all = Vec::with_capacity(count as usize);
            for part in parts {
                all.extend(part.join().expect("a request builder panicked")?);
            }
            Ok(all)
        })
    }

    fn next(&self) -> Result<Bytes> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        match self.prepared.get(n as usize) {
            Some(request) => Ok(request.clone()),
            None => self.build(n),
        }
    }

    fn build(&self, n: u64) -> Result<Bytes> {
        let name = format!(
            "perf-pub-{}-{:05}",
            self.namespace,
            n % self.packages as u64
        );
        let version = format!("1.{}.{n}", self.stamp);
        let manifest = corpus::synthetic_manifest(&name, &version, corpus::mix(n), 1000);
        let tgz = corpus::synthetic_tarball(&manifest, 1)?;
        let body = corpus::publish_body(&self.base_url, manifest, &tgz);
        let head = format!(
            "PUT {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: agentregistry-perf\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            corpus::packument_path(&name),
            self.authority,
            self.auth,
            body.len()
        );
        let mut request = Vec::with_capacity(head.len() + body.len());
        request.extend_from_slice(head.as_bytes());
        request.extend_from_slice(&body);
        Ok(Bytes::from(request))
    }
}

/// A GET request with the given extra header lines (each ending in `\r\n`).
#[must_use]
pub(crate) fn get_request(authority: &str, path: &str, extra: &str) -> Bytes {
    Bytes::from(format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: agentregistry-perf\r\n{extra}\r\n"
    ))
}

/// One bounded run.
pub(crate) struct Plan {
    pub(crate) addr: SocketAddr,
    pub(crate) connections: usize,
    pub(crate) threads: usize,
    pub(crate) duration: Duration,
    pub(crate) max_requests: Option<u64>,
    /// Open loop: requests per second over all connections, scheduled evenly from the start;
    /// None is a closed loop (each connection sends its next request when the last is answered).
    pub(crate) rate: Option<f64>,
    pub(crate) source: Source,
    pub(crate) driver: Driver,
    pub(crate) request_timeout: Duration,
}

/// What a run measured.
pub(crate) struct Outcome {
    pub(crate) requests: u64,
    pub(crate) status_errors: u64,
    pub(crate) socket_errors: u64,
    /// All bytes received (heads and bodies).
    pub(crate) bytes: u64,
    pub(crate) latency: Histogram<u64>,
    pub(crate) elapsed: Duration,
    pub(crate) statuses: BTreeMap<u16, u64>,
    pub(crate) first_error: Option<String>,
}

impl Outcome {
    pub(crate) fn errors(&self) -> u64 {
        self.status_errors + self.socket_errors
    }
}

struct Shared {
    issued: AtomicU64,
    max: Option<u64>,
    start: Instant,
    deadline: Instant,
    /// Open loop: nanoseconds between scheduled requests.
    interval_ns: Option<f64>,
}

/// The next request a connection may send.
#[derive(Clone, Copy)]
enum Ticket {
    /// Closed loop: now.
    Now,
    /// Open loop: at this instant.
    At(Instant),
}

impl Shared {
    /// The next ticket, or None when the run is over (deadline or request budget).
    fn take(&self) -> Option<Ticket> {
        let within_budget = |i: u64| self.max.is_none_or(|m| i < m);
        match self.interval_ns {
            None => (Instant::now() < self.deadline
                && within_budget(self.issued.fetch_add(1, Ordering::Relaxed)))
            .then_some(Ticket::Now),
            Some(ns) => {
                let i = self.issued.fetch_add(1, Ordering::Relaxed);
                let at = self.start + Duration::from_nanos((i as f64 * ns) as u64);
                (within_budget(i) && at < self.deadline).then_some(Ticket::At(at))
            }
        }
    }
}

struct Stats {
    requests: u64,
    status_errors: u64,
    socket_errors: u64,
    bytes: u64,
    latency: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    first_error: Option<String>,
    last_done: Instant,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            requests: 0,
            status_errors: 0,
            socket_errors: 0,
            bytes: 0,
            latency: histogram(),
            statuses: BTreeMap::new(),
            first_error: None,
            last_done: Instant::now(),
        }
    }

    fn socket_error(&mut self, what: &str) {
        self.socket_errors += 1;
        self.first_error.get_or_insert_with(|| what.to_owned());
    }
}

struct Ctx {
    shared: Arc<Shared>,
    addr: SocketAddr,
    source: Source,
    timeout: Duration,
    stats: RefCell<Stats>,
}

/// Runs `plan` to completion (deadline or request budget) and merges the threads' results.
pub(crate) fn run(plan: &Plan) -> Result<Outcome> {
    let threads = plan.threads.clamp(1, plan.connections.max(1));
    let start = Instant::now();
    let shared = Arc::new(Shared {
        issued: AtomicU64::new(0),
        max: plan.max_requests,
        start,
        deadline: start + plan.duration,
        interval_ns: plan.rate.filter(|r| *r > 0.0).map(|r| 1e9 / r),
    });
    let mut handles = Vec::new();
    for t in 0..threads {
        let connections = plan.connections / threads + usize::from(t < plan.connections % threads);
        let shared = Arc::clone(&shared);
        let source = plan.source.clone();
        let (addr, driver, timeout) = (plan.addr, plan.driver, plan.request_timeout);
        let handle = std::thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || -> Result<Stats> {
                let ctx = Rc::new(Ctx {
                    shared,
                    addr,
                    source,
                    timeout,
                    stats: RefCell::new(Stats::new()),
                });
                let seed = corpus::mix(t as u64 + 1);
                match driver {
                    Driver::Legacy => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                        .enable_timer()
                        .build()
                        .context("building the epoll runtime")?
                        .block_on(thread_main(Rc::clone(&ctx), connections, seed)),
                    Driver::Uring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                        .with_entries(4096)
                        .enable_timer()
                        .build()
                        .context("building the io_uring runtime")?
                        .block_on(thread_main(Rc::clone(&ctx), connections, seed)),
                }
                let stats = ctx.stats.replace(Stats::new());
                Ok(stats)
            })
            .context("spawning a load generator thread")?;
        handles.push(handle);
    }
    let mut outcome = Outcome {
        requests: 0,
        status_errors: 0,
        socket_errors: 0,
        bytes: 0,
        latency: histogram(),
        elapsed: Duration::ZERO,
        statuses: BTreeMap::new(),
        first_error: None,
    };
    let mut last_done = start;
    for handle in handles {
        let stats = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a load generator thread panicked"))??;
        outcome.requests += stats.requests;
        outcome.status_errors += stats.status_errors;
        outcome.socket_errors += stats.socket_errors;
        outcome.bytes += stats.bytes;
        outcome
            .latency
            .add(&stats.latency)
            .context("merging histograms")?;
        for (status, n) in stats.statuses {
            *outcome.statuses.entry(status).or_default() += n;
        }
        if outcome.first_error.is_none() {
            outcome.first_error = stats.first_error;
        }
        last_done = last_done.max(stats.last_done);
    }
    outcome.elapsed = last_done
        .duration_since(start)
        .max(Duration::from_millis(1));
    Ok(outcome)
}

async fn thread_main(ctx: Rc<Ctx>, connections: usize, seed: u64) {
    let tasks: Vec<_> = (0..connections)
        .map(|c| monoio::spawn(connection(Rc::clone(&ctx), corpus::mix(seed ^ c as u64))))
        .collect();
    for task in tasks {
        task.await;
    }
}

async fn connection(ctx: Rc<Ctx>, mut rng: u64) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BUFFER_BYTES);
    let mut stream: Option<TcpStream> = None;
    while let Some(ticket) = ctx.shared.take() {
        // Open loop: wait for the ticket's time. Latency then counts from the moment the
        // request was due, so a server that falls behind is charged for the queue it causes
        // (no coordinated omission). When the connection had to sleep, it counts from the
        // wake-up instead: monoio's timer fires on millisecond ticks, and that lateness is
        // the load generator's, not the server's.
        let due = match ticket {
            Ticket::Now => None,
            Ticket::At(at) => {
                let now = Instant::now();
                if at > now {
                    monoio::time::sleep(at - now).await;
                    Some(Instant::now())
                } else {
                    Some(at)
                }
            }
        };
        let request = match ctx.source.next(&mut rng) {
            Ok(r) => r,
            Err(e) => {
                ctx.stats
                    .borrow_mut()
                    .socket_error(&format!("making a request: {e:#}"));
                continue;
            }
        };
        if stream.is_none() {
            match TcpStream::connect_addr(ctx.addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                }
                Err(e) => {
                    ctx.stats
                        .borrow_mut()
                        .socket_error(&format!("connect: {e}"));
                    monoio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        let started = due.unwrap_or_else(Instant::now);
        let result = monoio::time::timeout(
            ctx.timeout,
            exchange(s, request, std::mem::take(&mut buf), None),
        )
        .await;
        let done = Instant::now();
        let mut stats = ctx.stats.borrow_mut();
        stats.last_done = done;
        match result {
            Ok((Ok(info), b)) => {
                buf = b;
                stats.requests += 1;
                stats.bytes += info.total_bytes;
                let nanos =
                    u64::try_from(done.duration_since(started).as_nanos()).unwrap_or(u64::MAX);
                stats.latency.saturating_record(nanos.max(100));
                if !(200..400).contains(&info.status) {
                    stats.status_errors += 1;
                    *stats.statuses.entry(info.status).or_default() += 1;
                }
                if info.close {
                    stream = None;
                }
            }
            Ok((Err(e), b)) => {
                buf = b;
                stats.socket_error(&format!("exchange: {e}"));
                stream = None;
            }
            Err(_) => {
                buf = Vec::with_capacity(READ_BUFFER_BYTES);
                stats.socket_error("timeout");
                stream = None;
            }
        }
    }
}

/// What one response was.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Info {
    pub(crate) status: u16,
    pub(crate) total_bytes: u64,
    pub(crate) close: bool,
    pub(crate) gzip: bool,
}

/// Sends `request` and reads its response; body bytes are appended to `body_out` if given.
pub(crate) async fn exchange(
    stream: &mut TcpStream,
    request: Bytes,
    buf: Vec<u8>,
    body_out: Option<&mut Vec<u8>>,
) -> (io::Result<Info>, Vec<u8>) {
    let (written, _) = stream.write_all(request).await;
    if let Err(e) = written {
        return (Err(e), buf);
    }
    read_response(stream, buf, body_out).await
}

enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
    Empty,
}

struct Head {
    len: usize,
    status: u16,
    framing: Framing,
    close: bool,
    gzip: bool,
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn parse_head(data: &[u8]) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(data) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(bad(format!("bad response head: {e}"))),
    };
    let status = response.code.unwrap_or(0);
    let mut length = None;
    let mut chunked = false;
    let mut close = response.version == Some(0);
    let mut gzip = false;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value).map_err(|_| bad("Content-Length"))?;
            length = Some(
                text.trim()
                    .parse::<u64>()
                    .map_err(|_| bad("Content-Length"))?,
            );
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .to_ascii_lowercase()
                .windows(7)
                .any(|w| w == b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = h.value.to_ascii_lowercase();
            if v.windows(5).any(|w| w == b"close") {
                close = true;
            } else if v.windows(10).any(|w| w == b"keep-alive") {
                close = false;
            }
        } else if h.name.eq_ignore_ascii_case("content-encoding") {
            gzip = h.value.eq_ignore_ascii_case(b"gzip");
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        close = true;
        Framing::UntilClose
    };
    Ok(Some(Head {
        len,
        status,
        framing,
        close,
        gzip,
    }))
}

enum Body {
    Length(u64),
    Chunked(ChunkDecoder),
    UntilClose,
    Done,
}

impl Body {
    fn feed(&mut self, data: &[u8], out: Option<&mut Vec<u8>>) -> io::Result<()> {
        match self {
            Body::Length(remaining) => {
                let take = usize::try_from(*remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                if let Some(out) = out {
                    out.extend_from_slice(&data[..take]);
                }
                *remaining -= take as u64;
                if *remaining == 0 {
                    *self = Body::Done;
                }
            }
            Body::Chunked(decoder) => {
                if decoder.feed(data, out).map_err(|e| bad(format!("{e:#}")))? {
                    *self = Body::Done;
                }
            }
            Body::UntilClose => {
                if let Some(out) = out {
                    out.extend_from_slice(data);
                }
            }
            Body::Done => {}
        }
        Ok(())
    }
}

async fn read_response(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    mut body_out: Option<&mut Vec<u8>>,
) -> (io::Result<Info>, Vec<u8>) {
    if buf.capacity() < READ_BUFFER_BYTES {
        buf.reserve(READ_BUFFER_BYTES);
    }
    let mut total: u64 = 0;
    let mut pending: Vec<u8> = Vec::new();
    // Read until the head is complete.
    let (head, mut body) = loop {
        buf.clear();
        let (res, b) = stream.read(buf).await;
        buf = b;
        let n = match res {
            Ok(0) => return (Err(io::ErrorKind::UnexpectedEof.into()), buf),
            Ok(n) => n,
            Err(e) => return (Err(e), buf),
        };
        total += n as u64;
        let data: &[u8] = if pending.is_empty() {
            &buf[..n]
        } else {
            pending.extend_from_slice(&buf[..n]);
            &pending
        };
        let head = match parse_head(data) {
            Ok(Some(head)) => head,
            Ok(None) => {
                if pending.is_empty() {
                    pending.extend_from_slice(&buf[..n]);
                }
                if pending.len() > HEAD_BYTES_MAX {
                    return (Err(bad("response head too large")), buf);
                }
                continue;
            }
            Err(e) => return (Err(e), buf),
        };
        if (100..200).contains(&head.status) {
            // Interim responses answer `Expect: 100-continue`, which we never send.
            return (Err(bad("unexpected interim (1xx) response")), buf);
        }
        let mut body = match head.framing {
            Framing::Length(0) | Framing::Empty => Body::Done,
            Framing::Length(n) => Body::Length(n),
            Framing::Chunked => Body::Chunked(ChunkDecoder::default()),
            Framing::UntilClose => Body::UntilClose,
        };
        if let Err(e) = body.feed(&data[head.len..], body_out.as_deref_mut()) {
            return (Err(e), buf);
        }
        break (head, body);
    };
    while !matches!(body, Body::Done) {
        buf.clear();
        let (res, b) = stream.read(buf).await;
        buf = b;
        match res {
            Ok(0) if matches!(body, Body::UntilClose) => break,
            Ok(0) => return (Err(io::ErrorKind::UnexpectedEof.into()), buf),
            Ok(n) => {
                total += n as u64;
                if let Err(e) = body.feed(&buf[..n], body_out.as_deref_mut()) {
                    return (Err(e), buf);
                }
            }
            Err(e) => return (Err(e), buf),
        }
    }
    (
        Ok(Info {
            status: head.status,
            total_bytes: total,
            close: head.close,
            gzip: head.gzip,
        }),
        buf,
    )
}
