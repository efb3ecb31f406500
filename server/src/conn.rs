//! The connection loop: read (owned buffer) -> parse -> route -> handle -> write.
//! HTTP/1.1 keep-alive; pipelined requests are answered in order (responses to requests that
//! are already buffered are batched into one write). Heads are bounded (431/414), bodies are
//! bounded (413) and framed unambiguously, and every wait has a timeout: a slow client holds
//! one connection, never a core.
//!
//! Buffer ownership: `buf` and `out` are moved into each I/O op and come back in its result;
//! after a timeout the op keeps the buffer and the connection closes.

use std::rc::Rc;
use std::time::{Duration, Instant};

use engine::served::DocKind;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::cores::Core;
use crate::http::body::{self, BodyError};
use crate::http::parse::{self, Framing, Method, RequestHead};
use crate::http::respond::{self, Reply};
use crate::limits::{
    BODY_BYTES_MAX, BODY_READ_TIMEOUT_MS, COPY_BODY_BYTES_MAX, HEADER_TIMEOUT_MS, IDLE_TIMEOUT_MS,
    READ_BUFFER_BYTES, SMALL_BODY_BYTES_MAX,
};
use crate::metrics;
use crate::route::{self, Route};

/// Serves one connection until the client closes it, an error, or a timeout.
pub async fn serve(mut stream: TcpStream, core: Rc<Core>) {
    let _open = OpenConnection::new(&core);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BUFFER_BYTES);
    let mut out: Vec<u8> = Vec::with_capacity(READ_BUFFER_BYTES);
    let mut start = 0usize;
    // The whole head must arrive within HEADER_TIMEOUT_MS of its first byte (not per read:
    // a client dripping one byte at a time must not hold the connection open forever).
    let mut head_deadline: Option<Instant> = None;
    loop {
        let step = match parse::head(&buf[start..]) {
            Ok(None) => Step::NeedMore,
            Ok(Some((head, head_len))) => {
                let body_start = start + head_len;
                let outcome =
                    exchange(&mut stream, &head, head_len, &buf[body_start..], &core, out).await;
                match outcome {
                    Ok(Exchange {
                        out: o,
                        used,
                        leftover,
                        keep_alive,
                    }) => {
                        out = o;
                        Step::Done {
                            next: body_start + used,
                            leftover,
                            keep_alive,
                        }
                    }
                    Err(()) => return,
                }
            }
            Err(e) => {
                let (status, kind) = e.status();
                let mut reply = Reply::error(status, kind, &e.to_string());
                reply.close = true;
                respond::write_head(&mut out, &reply, false, |o| core.write_date(o));
                out.extend_from_slice(&reply.body);
                let _ = stream.write_all(out).await;
                return;
            }
        };
        match step {
            Step::NeedMore => {
                if start > 0 {
                    buf.drain(..start);
                    start = 0;
                }
                if !out.is_empty() {
                    match flush(&mut stream, out).await {
                        Ok(o) => out = o,
                        Err(()) => return,
                    }
                }
                let timeout = if buf.is_empty() {
                    head_deadline = None;
                    Duration::from_millis(IDLE_TIMEOUT_MS)
                } else {
                    let deadline = *head_deadline.get_or_insert_with(|| {
                        Instant::now() + Duration::from_millis(HEADER_TIMEOUT_MS)
                    });
                    deadline.saturating_duration_since(Instant::now())
                };
                if timeout.is_zero() {
                    request_timeout(&mut stream, out, &core).await;
                    return;
                }
                match read_more(&mut stream, buf, timeout).await {
                    Ok(b) => buf = b,
                    Err(ReadEnd::TimedOut) if head_deadline.is_some() => {
                        request_timeout(&mut stream, Vec::new(), &core).await;
                        return;
                    }
                    Err(_) => return,
                }
            }
            Step::Done {
                next,
                leftover,
                keep_alive,
            } => {
                start = next;
                head_deadline = None;
                if !leftover.is_empty() {
                    buf.drain(..start);
                    start = 0;
                    buf.splice(0..0, leftover);
                }
                if !keep_alive {
                    let _ = flush(&mut stream, out).await;
                    return;
                }
            }
        }
    }
}

enum Step {
    NeedMore,
    Done {
        next: usize,
        leftover: Vec<u8>,
        keep_alive: bool,
    },
}

struct Exchange {
    out: Vec<u8>,
    /// Bytes of the already-buffered input that belonged to this request's body.
    used: usize,
    /// Bytes read past this request's body (pipelined data after a chunked body).
    leftover: Vec<u8>,
    keep_alive: bool,
}

/// Reads the body of `head` (part of it may already be in `buffered`), handles the request and
/// queues the reply in `out` (writing it when large). `Err` means: close the connection now.
async fn exchange(
    stream: &mut TcpStream,
    head: &RequestHead<'_>,
    head_len: usize,
    buffered: &[u8],
    core: &Core,
    mut out: Vec<u8>,
) -> Result<Exchange, ()> {
    let started = Instant::now();
    let routed = route::route(head.method, head.target).map(|r| crate::npm::resolve(r, head, core));
    if let Ok(Route::Packument { package }) = &routed {
        let kind = DocKind::of(head.accept_abbreviated, head.accept_gzip);
        core.packages.borrow().prefetch(package, kind);
    }
    let kind = metrics::kind_of(&routed, head.accept_abbreviated);
    let body_max = match routed {
        Ok(Route::Publish { .. }) => BODY_BYTES_MAX,
        _ => SMALL_BODY_BYTES_MAX,
    };
    let received = receive_body(stream, head, buffered, body_max, &mut out).await;
    let (reply, used, leftover) = match received {
        Ok((body, used, leftover)) => {
            core.metrics.borrow_mut().bytes_in += (head_len + body.len()) as u64;
            let reply = match routed {
                Ok(route) => crate::npm::handle(route, head, body, core).await,
                Err(e) => {
                    let (status, kind) = e.status();
                    Reply::error(status, kind, &e.to_string())
                }
            };
            (reply, used, leftover)
        }
        Err(BodyFailure::Refused(e)) => {
            let (status, kind) = e.status();
            let mut reply = Reply::error(status, kind, &e.to_string());
            reply.close = true;
            (reply, buffered.len(), Vec::new())
        }
        Err(BodyFailure::Gone) => return Err(()),
    };
    let keep_alive = head.keep_alive && !reply.close;
    let out_before = out.len();
    respond::write_head(&mut out, &reply, keep_alive, |o| core.write_date(o));
    let head_bytes = out.len() - out_before;
    if head.method != Method::Head {
        if reply.body.len() <= COPY_BODY_BYTES_MAX {
            out.extend_from_slice(&reply.body);
        } else {
            out = flush(stream, out).await?;
            let (result, _) = stream.write_all(reply.body.to_bytes()).await;
            result.map_err(|_| ())?;
        }
    }
    let body_bytes = if head.method == Method::Head {
        0
    } else {
        reply.body.len()
    };
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    core.metrics
        .borrow_mut()
        .record(kind, reply.status, micros, (head_bytes + body_bytes) as u64);
    Ok(Exchange {
        out,
        used,
        leftover,
        keep_alive,
    })
}

enum BodyFailure {
    Refused(BodyError),
    Gone,
}

/// Returns (body, bytes of `buffered` used, bytes read past the body).
async fn receive_body(
    stream: &mut TcpStream,
    head: &RequestHead<'_>,
    buffered: &[u8],
    max: usize,
    out: &mut Vec<u8>,
) -> Result<(Vec<u8>, usize, Vec<u8>), BodyFailure> {
    match head.framing {
        Framing::None => Ok((Vec::new(), 0, Vec::new())),
        Framing::Length(length) => {
            let length = usize::try_from(length)
                .ok()
                .filter(|&l| l <= max)
                .ok_or(BodyFailure::Refused(BodyError::TooLarge { max }))?;
            if buffered.len() >= length {
                return Ok((buffered[..length].to_vec(), length, Vec::new()));
            }
            send_continue(stream, head, out).await?;
            let mut body = Vec::with_capacity(length);
            body.extend_from_slice(buffered);
            let deadline = body_deadline(Instant::now(), length);
            while body.len() < length {
                body = read_exact_into(stream, body, length, body_read_timeout(deadline)?)
                    .await
                    .map_err(|_| BodyFailure::Gone)?;
            }
            Ok((body, buffered.len(), Vec::new()))
        }
        Framing::Chunked => {
            let mut raw = buffered.to_vec();
            let mut continued = false;
            let started = Instant::now();
            loop {
                match body::decode_chunked(&raw, max) {
                    Ok(Some((body, used))) => {
                        let leftover = raw.split_off(used);
                        return Ok((body, buffered.len(), leftover));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(BodyFailure::Refused(e)),
                }
                // Chunk framing adds a few bytes per chunk; more than a quarter is abuse.
                if raw.len() > max.saturating_add(max / 4).saturating_add(64 * 1024) {
                    return Err(BodyFailure::Refused(BodyError::TooLarge { max }));
                }
                if !continued {
                    send_continue(stream, head, out).await?;
                    continued = true;
                }
                // The allowance grows with what has arrived, measured from the body's start.
                let deadline = body_deadline(started, raw.len());
                raw = read_more(stream, raw, body_read_timeout(deadline)?)
                    .await
                    .map_err(|_| BodyFailure::Gone)?;
            }
        }
    }
}

async fn send_continue(
    stream: &mut TcpStream,
    head: &RequestHead<'_>,
    out: &mut Vec<u8>,
) -> Result<(), BodyFailure> {
    if !head.expect_continue {
        return Ok(());
    }
    let pending = std::mem::take(out);
    let mut flushed = flush(stream, pending)
        .await
        .map_err(|()| BodyFailure::Gone)?;
    let (result, _) = stream.write_all(respond::CONTINUE).await;
    result.map_err(|_| BodyFailure::Gone)?;
    flushed.clear();
    *out = flushed;
    Ok(())
}

/// Writes and clears `out`; returns it for reuse.
async fn flush(stream: &mut TcpStream, out: Vec<u8>) -> Result<Vec<u8>, ()> {
    let (result, mut out) = stream.write_all(out).await;
    result.map_err(|_| ())?;
    out.clear();
    Ok(out)
}

/// Why a read produced no bytes.
enum ReadEnd {
    /// EOF or a socket error: the peer is gone.
    Closed,
    TimedOut,
}

/// Appends whatever arrives (at least one byte) to `buf`.
async fn read_more(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, ReadEnd> {
    if buf.capacity() - buf.len() < READ_BUFFER_BYTES / 2 {
        buf.reserve(READ_BUFFER_BYTES);
    }
    let len = buf.len();
    let cap = buf.capacity();
    read_into(stream, buf, len, cap, timeout).await
}

/// Reads into `body` up to `length` bytes in total.
async fn read_exact_into(
    stream: &mut TcpStream,
    body: Vec<u8>,
    length: usize,
    timeout: Duration,
) -> Result<Vec<u8>, ReadEnd> {
    let len = body.len();
    read_into(stream, body, len, length, timeout).await
}

async fn read_into(
    stream: &mut TcpStream,
    buf: Vec<u8>,
    from: usize,
    to: usize,
    timeout: Duration,
) -> Result<Vec<u8>, ReadEnd> {
    let slice = buf.slice_mut(from..to);
    match monoio::time::timeout(timeout, stream.read(slice)).await {
        Ok((Ok(n), slice)) if n > 0 => Ok(slice.into_inner()),
        Ok((Ok(_) | Err(_), _)) => Err(ReadEnd::Closed),
        Err(_) => Err(ReadEnd::TimedOut),
    }
}

/// Answers 408 to a client that did not finish its request in time, then the caller closes.
async fn request_timeout(stream: &mut TcpStream, mut out: Vec<u8>, core: &Core) {
    let mut reply = Reply::error(
        408,
        "request_timeout",
        "the request did not arrive in time; the connection is closed",
    );
    reply.close = true;
    respond::write_head(&mut out, &reply, false, |o| core.write_date(o));
    out.extend_from_slice(&reply.body);
    let _ = stream.write_all(out).await;
}

/// The wait for the next body read: the per-read limit, cut short by the whole-body deadline.
fn body_read_timeout(deadline: Instant) -> Result<Duration, BodyFailure> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(BodyFailure::Gone);
    }
    Ok(left.min(Duration::from_millis(BODY_READ_TIMEOUT_MS)))
}

/// How long a body of `length` bytes may take in total: a floor, plus time at a slow but
/// honest upload rate. A body trickling in slower than that is cut off.
fn body_deadline(started: Instant, length: usize) -> Instant {
    const FLOOR_MS: u64 = 30_000;
    const SLOWEST_BYTES_PER_MS: u64 = 64; // 64 KB/s
    let allowance = FLOOR_MS + (length as u64) / SLOWEST_BYTES_PER_MS;
    started + Duration::from_millis(allowance)
}

/// Counts a connection as open for as long as it lives.
struct OpenConnection<'c> {
    core: &'c Core,
}

impl<'c> OpenConnection<'c> {
    fn new(core: &'c Core) -> OpenConnection<'c> {
        let mut m = core.metrics.borrow_mut();
        m.connections_open += 1;
        m.connections_total += 1;
        drop(m);
        OpenConnection { core }
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.core.metrics.borrow_mut().connections_open -= 1;
    }
}
