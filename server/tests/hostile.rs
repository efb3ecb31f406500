//! Hostile clients against a real `agentregistry serve` (SPEC section 6): invalid UTF-8,
//! truncated JSON, oversized bodies (and the server's memory afterwards), header floods,
//! request smuggling, slowloris, 10,000 idle connections, path traversal on every route,
//! publish retries and races, a full disk, and secrets in logs.
//!
//! Goal: every hostile request gets a clear JSON error `{"error","message"}` with the right
//! status where an answer is possible, never a 5xx for client mistakes, and leaves the store
//! byte-for-byte unchanged; the server stays responsive to well-behaved clients throughout.
//!
//! Method: the binary of this build on `127.0.0.1:0` with its own home, spoken to in raw
//! HTTP/1.1 (`support`). "Unchanged" is `StoreSnapshot`: every file under the home byte for
//! byte plus what HTTP serves for the known packages. Timing claims ("promptly") are measured
//! with `Instant` against generous bounds for a debug build on 2 shared cores; waits are socket
//! reads or channel receives with deadlines, never sleeps. Numbers (RSS, latencies) are printed
//! with `eprintln!` (run with `--nocapture` to see them).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{
    base64, connections_open, fixture, fixtures, hex_encode, package_path, quantile, raw_fixtures,
    send_raw, try_send, try_send_within, Conn, Fixture, Launch, Req, Response, Rng, Server,
    StoreSnapshot, ABBREVIATED,
};

/// What "promptly" means for an answer that needs no body and no storage (debug build, 2
/// shared cores).
const PROMPT: Duration = Duration::from_secs(2);

/// Replaces the first occurrence of `mark` in `body` with `with`.
fn splice(body: &[u8], mark: &[u8], with: &[u8]) -> Vec<u8> {
    let at = body
        .windows(mark.len())
        .position(|w| w == mark)
        .unwrap_or_else(|| panic!("marker {:?} not in the body", support::lossy(mark)));
    let mut out = body[..at].to_vec();
    out.extend_from_slice(with);
    out.extend_from_slice(&body[at + mark.len()..]);
    out
}

/// A raw request: `head` (without the final CRLF), `Content-Length` of `body`, then `body`.
fn raw_request(head: &[u8], body: &[u8]) -> Vec<u8> {
    let mut raw = head.to_vec();
    raw.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    raw.extend_from_slice(body);
    raw
}

// ---------------------------------------------------------------------------------------
// Invalid UTF-8 and truncated JSON
// ---------------------------------------------------------------------------------------

/// Goal: invalid UTF-8 anywhere a client can put it (request target raw and %-encoded, the
/// Authorization and Accept headers, strings inside the publish JSON, the login body, a
/// dist-tag body) and a valid publish body cut at every 1/20th of its length are each refused
/// with a 4xx JSON error, never a 5xx, and change nothing. Authorization: 400 or 401 (an
/// unusable credential); Accept: it only steers content negotiation, so 200 with the very
/// same document as without it is fine too (printed).
#[test]
fn invalid_utf8_and_truncated_json_are_refused_and_change_nothing() {
    let server = Server::start();
    let token = server.login("utf8-user");
    let stable = fixture("utf8-stable", "1.0.0", "stable");
    server.publish_ok(&token, &stable);
    let fresh = fixture("utf8-fresh", "1.0.0", "fresh");
    let packages = ["utf8-stable", "utf8-fresh"];
    let auth = format!("Authorization: Bearer {token}\r\n");
    let host = format!("Host: {}\r\n", server.addr);

    // A publish body with markers where invalid bytes go (every other byte stays valid).
    let mut doc = fresh.body();
    let manifest = &mut doc["versions"]["1.0.0"];
    manifest["description"] = json!("DESC_MARK");
    manifest["readme"] = json!("README_MARK");
    manifest["dependencies"] = json!({"DEP_MARK": "^1.0.0"});
    manifest["maintainers"] = json!([{"name": "MAINT_MARK"}]);
    let valid = serde_json::to_vec(&doc).expect("JSON");
    let publish_head =
        format!("PUT /utf8-fresh HTTP/1.1\r\n{host}{auth}Content-Type: application/json\r\n");
    let bad = b"bad\xff\xfe\xc3\x28end";
    let mut cases: Vec<(String, Vec<u8>, &[u16])> = Vec::new();
    for mark in [
        &b"DESC_MARK"[..],
        b"README_MARK",
        b"DEP_MARK",
        b"MAINT_MARK",
        b"\"utf8-fresh\"",
        b"\"1.0.0\"",
        b"\"latest\"",
    ] {
        let with: Vec<u8> = if mark.starts_with(b"\"") {
            [&b"\""[..], bad, b"\""].concat()
        } else {
            bad.to_vec()
        };
        cases.push((
            format!(
                "publish JSON with invalid UTF-8 in place of {}",
                support::lossy(mark)
            ),
            raw_request(publish_head.as_bytes(), &splice(&valid, mark, &with)),
            &[400],
        ));
    }
    let data_start = format!("\"data\":\"{}", &fresh.b64[..8]);
    cases.push((
        "publish JSON with invalid UTF-8 inside the base64 data".to_owned(),
        raw_request(
            publish_head.as_bytes(),
            &splice(
                &valid,
                data_start.as_bytes(),
                &[
                    b"\"data\":\"".as_slice(),
                    b"\xff\xfe",
                    &fresh.b64.as_bytes()[..8],
                ]
                .concat(),
            ),
        ),
        &[400],
    ));
    // The request target: raw bytes (not a valid request line) and %-encoded.
    for target in [
        &b"/utf8-stable\xff"[..],
        b"/utf8-\xc3\x28stable",
        b"/\xed\xa0\x80",
    ] {
        let mut raw = b"GET ".to_vec();
        raw.extend_from_slice(target);
        raw.extend_from_slice(format!(" HTTP/1.1\r\n{host}\r\n").as_bytes());
        cases.push((
            format!("GET with raw target {:?}", support::lossy(target)),
            raw,
            &[400],
        ));
        let mut raw = b"PUT ".to_vec();
        raw.extend_from_slice(target);
        raw.extend_from_slice(format!(" HTTP/1.1\r\n{host}{auth}").as_bytes());
        cases.push((
            format!("PUT with raw target {:?}", support::lossy(target)),
            raw_request(&raw, &valid),
            &[400],
        ));
    }
    for target in [
        "/utf8-stable%ff",
        "/%c3%28",
        "/%ed%a0%80",
        "/utf8-stable/-/utf8-stable-1.0.0.tgz%fe",
        "/utf8-stable/%ff",
        "/-/package/utf8-stable/dist-tags/%ff",
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\n{host}\r\n").into_bytes();
        cases.push((format!("GET {target}"), raw, &[400]));
        let raw = format!("PUT {target} HTTP/1.1\r\n{host}{auth}").into_bytes();
        cases.push((
            format!("PUT {target}"),
            raw_request(&raw, &valid),
            &[400, 404, 405],
        ));
    }
    // Header values.
    for value in [
        &b"Bearer \xff\xfe\xfd"[..],
        b"Basic \xff\xff",
        b"\xc3\x28 token",
    ] {
        let mut raw =
            format!("PUT /utf8-fresh HTTP/1.1\r\n{host}Content-Type: application/json\r\n")
                .into_bytes();
        raw.extend_from_slice(b"Authorization: ");
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\n");
        cases.push((
            format!("publish with Authorization {:?}", support::lossy(value)),
            raw_request(&raw, &valid),
            &[400, 401],
        ));
        let mut raw = format!("GET /-/whoami HTTP/1.1\r\n{host}").into_bytes();
        raw.extend_from_slice(b"Authorization: ");
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\n\r\n");
        cases.push((
            format!("whoami with Authorization {:?}", support::lossy(value)),
            raw,
            &[400, 401],
        ));
    }
    // The login body.
    for (what, body) in [
        (
            "password",
            &br#"{"name":"utf8-login","password":"pw-\xff\xfe-pw"}"#[..],
        ),
        ("name", br#"{"name":"utf8-\xff","password":"pw"}"#),
        (
            "email",
            br#"{"name":"utf8-login","password":"pw","email":"\xc3\x28@x"}"#,
        ),
        ("key", br#"{"name":"utf8-login","password":"pw","\xff":1}"#),
    ] {
        let head = format!(
            "PUT /-/user/org.couchdb.user:utf8-login HTTP/1.1\r\n{host}\
             Content-Type: application/json\r\n"
        );
        cases.push((
            format!("login body with invalid UTF-8 in the {what}"),
            raw_request(head.as_bytes(), body),
            &[400],
        ));
    }
    // A dist-tag body.
    let head = format!("PUT /-/package/utf8-stable/dist-tags/beta HTTP/1.1\r\n{host}{auth}");
    cases.push((
        "dist-tag body with invalid UTF-8".to_owned(),
        raw_request(head.as_bytes(), b"\"1.0.\xff\""),
        &[400],
    ));
    cases.push((
        "bare dist-tag body with invalid UTF-8".to_owned(),
        raw_request(head.as_bytes(), b"1.0.\xff"),
        &[400],
    ));
    // Truncated JSON: a valid publish body cut at every 1/20th of its length.
    for k in 0..20 {
        let cut = valid.len() * k / 20;
        cases.push((
            format!(
                "publish body cut at {k}/20 ({cut} of {} bytes)",
                valid.len()
            ),
            raw_request(publish_head.as_bytes(), &valid[..cut]),
            &[400],
        ));
    }

    let mut before = StoreSnapshot::take(&server, &packages);
    let mut failures = Vec::new();
    for (what, raw, allowed) in &cases {
        let mut conn = Conn::connect(server.addr);
        conn.write(raw);
        let res = match conn.read_any(false, what) {
            Ok(res) => res,
            Err(e) => {
                failures.push(format!("{what}: no answer ({e})"));
                continue;
            }
        };
        eprintln!("{what}: {} {}", res.status, res.error_type());
        if let Some(why) = res.invariant_violation() {
            failures.push(why);
        }
        if !allowed.contains(&res.status) {
            failures.push(format!(
                "{what}: expected one of {allowed:?}: {}",
                res.describe()
            ));
        }
        let after = StoreSnapshot::take(&server, &packages);
        if before != after {
            // Panics with the differences.
            before.assert_same(&after, what);
        }
        before = after;
    }
    // Accept with invalid UTF-8: an answer (200 with the plain document, or a 4xx), not a 5xx.
    let plain = server.get("/utf8-stable");
    for value in [
        &b"application/\xffjson"[..],
        b"\xc3\x28",
        b"application/vnd.npm.install-v1+json\xff",
    ] {
        let mut raw = format!("GET /utf8-stable HTTP/1.1\r\n{host}").into_bytes();
        raw.extend_from_slice(b"Accept: ");
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\n\r\n");
        let what = format!("GET with Accept {:?}", support::lossy(value));
        let res = send_raw(server.addr, &raw, &what);
        eprintln!("{what}: {} {}", res.status, res.error_type());
        let ok_document = res.status == 200
            && (res.body == plain.body
                || res.body
                    == server
                        .send(&Req::new("GET", "/utf8-stable").header("Accept", ABBREVIATED))
                        .body);
        if !(ok_document || (400..500).contains(&res.status)) {
            failures.push(format!(
                "{what}: expected 200 (a document) or a 4xx: {}",
                res.describe()
            ));
        }
    }
    before.assert_same(&StoreSnapshot::take(&server, &packages), "Accept variants");
    assert!(
        failures.is_empty(),
        "{} of {} hostile requests were mishandled:\n{}",
        failures.len(),
        cases.len() + 3,
        failures.join("\n")
    );
    // The honest publish still works after all that.
    server.publish_ok(&token, &fresh);
}

// ---------------------------------------------------------------------------------------
// Oversized bodies and memory
// ---------------------------------------------------------------------------------------

/// Sends a head declaring `Content-Length: length` and no body; returns the answer and how
/// long it took. The server must answer from the head alone.
fn declare_length(server: &Server, target: &str, token: &str, length: u64) -> (Response, Duration) {
    let mut conn = Conn::connect(server.addr);
    let started = Instant::now();
    conn.write(
        format!(
            "PUT {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        )
        .as_bytes(),
    );
    let res = conn.read(false, &format!("PUT {target} declaring {length} bytes"));
    (res, started.elapsed())
}

/// Streams a chunked body of `chunk`-byte chunks (up to `total` bytes) from another thread
/// while waiting for the answer; returns it, the time it took and the bytes written before
/// the server answered or stopped reading.
fn chunked_until_refused(
    server: &Server,
    target: &str,
    token: &str,
    chunk: usize,
    total: usize,
) -> (Response, Duration, usize) {
    let mut conn = Conn::open_with(server.addr, Duration::from_secs(60)).expect("connect");
    let head = Req::new("PUT", target)
        .bearer(token)
        .header("Content-Type", "application/json")
        .header("Transfer-Encoding", "chunked")
        .head_bytes(server.addr);
    let started = Instant::now();
    conn.write(&head);
    let mut writer = conn.stream().try_clone().expect("cloning the socket");
    let stop = Arc::new(AtomicBool::new(false));
    let stop_writer = Arc::clone(&stop);
    let pusher = thread::spawn(move || {
        let mut piece = format!("{chunk:x}\r\n").into_bytes();
        piece.extend(std::iter::repeat_n(b'A', chunk));
        piece.extend_from_slice(b"\r\n");
        let mut written = 0usize;
        while written < total && !stop_writer.load(Ordering::Relaxed) {
            if writer.write_all(&piece).is_err() {
                return written;
            }
            written += chunk;
        }
        let _ = writer.write_all(b"0\r\n\r\n");
        written
    });
    let res = conn.read(
        false,
        &format!("chunked PUT {target} growing to {total} bytes"),
    );
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    // Unblock a writer stuck on a full socket buffer.
    let _ = conn.stream().shutdown(Shutdown::Both);
    let written = pusher.join().expect("the writer thread");
    (res, elapsed, written)
}

/// A publish document of about `body_bytes` bytes whose attachment is valid base64 of zeros
/// but whose integrity does not match: legitimate size, invalid content.
fn big_invalid_publish(name: &str, body_bytes: usize) -> Vec<u8> {
    let data_len = body_bytes / 4 * 4;
    let decoded = data_len / 4 * 3;
    let integrity = format!("sha512-{}", base64(&[7u8; 64]));
    let head = json!({
        "_id": name,
        "name": name,
        "dist-tags": {"latest": "1.0.0"},
        "versions": {"1.0.0": {"name": name, "version": "1.0.0",
            "dist": {"integrity": integrity, "shasum": "0".repeat(40)}}},
    });
    let mut text = serde_json::to_string(&head).expect("JSON");
    text.pop();
    let mut out = text.into_bytes();
    out.extend_from_slice(
        format!(
            ",\"_attachments\":{{\"{name}-1.0.0.tgz\":{{\"content_type\":\
             \"application/octet-stream\",\"length\":{decoded},\"data\":\""
        )
        .as_bytes(),
    );
    out.extend(std::iter::repeat_n(b'A', data_len));
    out.extend_from_slice(b"\"}}}");
    out
}

/// Goal: bodies over the limit are refused with 413 (from the declared length alone, promptly;
/// and as soon as a chunked body grows past it), change nothing, and the memory they made the
/// server take comes back: VmRSS after 20 oversized attempts and three 50 MiB invalid
/// publishes is within 64 MiB of before (polled with a deadline: allocators return memory
/// lazily). Prints every measurement.
#[test]
fn oversized_bodies_get_413_and_memory_comes_back() {
    let server = Server::start();
    let token = server.login("big-user");
    let stable = fixture("big-stable", "1.0.0", "stable");
    server.publish_ok(&token, &stable);
    let packages = ["big-stable", "big-fresh"];
    let max = server::limits::BODY_BYTES_MAX;
    let small_max = server::limits::SMALL_BODY_BYTES_MAX;
    let before = StoreSnapshot::take(&server, &packages);
    // Warm up: a few ordinary requests so the baseline includes the normal working set.
    for _ in 0..20 {
        assert_eq!(server.get("/big-stable").status, 200);
    }
    let rss_start = server.rss_kib();
    eprintln!("RSS at start: {} MiB", rss_start / 1024);

    let mut failures = Vec::new();
    // 16 declared-length attempts over the limit (the publish and a small-body route).
    let mut slowest = Duration::ZERO;
    for i in 0..16u64 {
        let (target, length) = if i % 2 == 0 {
            ("/big-fresh", (max as u64) + 1 + i * 1_000_000)
        } else {
            (
                "/-/package/big-stable/dist-tags/beta",
                (small_max as u64) + 1 + i,
            )
        };
        let (res, elapsed) = declare_length(&server, target, &token, length);
        slowest = slowest.max(elapsed);
        if res.status != 413 || res.error_type() != "payload_too_large" {
            failures.push(format!(
                "Content-Length {length} on {target}: {}",
                res.describe()
            ));
        }
    }
    eprintln!("413 from Content-Length alone: slowest answer {slowest:?} (bound {PROMPT:?})");
    if slowest > PROMPT {
        failures.push(format!("a 413 from the declared length took {slowest:?}"));
    }
    let rss_after_declared = server.rss_kib();
    // 4 chunked bodies growing past the limit: 1 to the small-body route, 3 publishes.
    for (i, (target, limit)) in [
        ("/-/package/big-stable/dist-tags/beta", small_max),
        ("/big-fresh", max),
        ("/big-fresh", max),
        ("/big-fresh", max),
    ]
    .into_iter()
    .enumerate()
    {
        let (res, elapsed, written) =
            chunked_until_refused(&server, target, &token, 1 << 20, limit + (8 << 20));
        eprintln!(
            "chunked body #{i} to {target} (limit {limit} bytes): {} after {elapsed:?}, \
             {written} bytes written, RSS now {} MiB",
            res.status,
            server.rss_kib() / 1024
        );
        if res.status != 413 {
            failures.push(format!(
                "chunked body past {limit} bytes: {}",
                res.describe()
            ));
        }
    }
    let rss_after_chunked = server.rss_kib();
    // Three 50 MiB publishes of legitimate size with invalid content, at once: a wrong
    // integrity (the whole body is decoded and hashed), bad base64 at the very end, and JSON
    // cut short by one byte.
    let wrong_integrity = big_invalid_publish("big-fresh", 50 << 20);
    let mut bad_base64 = big_invalid_publish("big-fresh", 50 << 20);
    let at = bad_base64.len() - 8;
    bad_base64[at] = b'!';
    let mut cut_json = big_invalid_publish("big-fresh", 50 << 20);
    cut_json.pop();
    let started = Instant::now();
    let answers: Vec<_> = [
        ("wrong integrity", wrong_integrity, [422, 422]),
        ("bad base64", bad_base64, [400, 400]),
        ("JSON cut short", cut_json, [400, 400]),
    ]
    .into_iter()
    .map(|(what, body, allowed)| {
        let (addr, token) = (server.addr, token.clone());
        thread::spawn(move || {
            let req = Req::new("PUT", "/big-fresh")
                .bearer(&token)
                .header("Content-Type", "application/json")
                .body(body);
            let res = support::try_send_within(addr, &req, Duration::from_secs(120));
            (what, allowed, res, Instant::now())
        })
    })
    .collect();
    let mut rss_during = server.rss_kib();
    let mut done = Vec::new();
    for handle in answers {
        while !handle.is_finished() {
            rss_during = rss_during.max(server.rss_kib());
            let _ = try_send_within(server.addr, &Req::new("GET", "/-/ping"), PROMPT);
        }
        done.push(handle.join().expect("a publishing thread"));
    }
    for (what, allowed, res, finished) in done {
        match res {
            Ok(res) => {
                eprintln!(
                    "50 MiB publish, {what}: {} {} after {:?}",
                    res.status,
                    res.error_type(),
                    finished - started
                );
                if !allowed.contains(&res.status) {
                    failures.push(format!("50 MiB publish, {what}: {}", res.describe()));
                }
            }
            Err(e) => failures.push(format!("50 MiB publish, {what}: no answer ({e})")),
        }
    }
    let rss_after_big = server.rss_kib();
    // Memory comes back (allocators purge lazily: poll with a deadline).
    let bound_kib = rss_start + 64 * 1024;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut rss_end = server.rss_kib();
    let peak_seen = rss_after_chunked.max(rss_during).max(rss_after_big);
    while rss_end > bound_kib && Instant::now() < deadline {
        // Requests without side effects give the allocator's deferred purge a chance to run.
        let _ = server.get("/-/ping");
        let _ = try_send_within(server.addr, &Req::new("GET", "/-/ping"), PROMPT);
        rss_end = server.rss_kib();
    }
    eprintln!(
        "RSS (MiB): start {}, after 16 declared-length 413s {}, after 4 chunked 413s {}, \
         during the 50 MiB publishes up to {}, right after them {}, highest sampled {}, \
         end {} (bound: start + 64 = {})",
        rss_start / 1024,
        rss_after_declared / 1024,
        rss_after_chunked / 1024,
        rss_during / 1024,
        rss_after_big / 1024,
        peak_seen / 1024,
        rss_end / 1024,
        bound_kib / 1024
    );
    if rss_end > bound_kib {
        failures.push(format!(
            "VmRSS stayed at {} MiB, more than 64 MiB over the {} MiB before",
            rss_end / 1024,
            rss_start / 1024
        ));
    }
    before.assert_same(&StoreSnapshot::take(&server, &packages), "oversized bodies");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Header floods
// ---------------------------------------------------------------------------------------

/// Writes `raw` from another thread (the server may stop reading) and reads the answer:
/// `Ok(response)`, or `Err` when the connection closed without one. Also returns the time.
fn flood(server: &Server, raw: Vec<u8>, what: &str) -> (Result<Response, String>, Duration) {
    let mut conn = Conn::connect(server.addr);
    let mut writer = conn.stream().try_clone().expect("cloning the socket");
    let started = Instant::now();
    let pusher = thread::spawn(move || {
        for piece in raw.chunks(16 * 1024) {
            if writer.write_all(piece).is_err() {
                return;
            }
        }
    });
    let res = conn.read_any(false, what);
    let elapsed = started.elapsed();
    let _ = conn.stream().shutdown(Shutdown::Both);
    pusher.join().expect("the writer thread");
    if let Ok(res) = &res {
        res.check_invariants();
    }
    (res, elapsed)
}

/// Goal: 200 headers, one 100 KiB header, and 1 MiB of header bytes without the blank line
/// that ends a head are each refused promptly with 431 (the last one may also just be closed),
/// and the server keeps serving.
#[test]
fn header_floods_are_refused_promptly() {
    let server = Server::start();
    let before = StoreSnapshot::take(&server, &[]);
    let mut many = b"GET /-/ping HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..200 {
        many.extend_from_slice(format!("X-Header-{i}: value-{i}\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let mut one_big = b"GET /-/ping HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    one_big.extend(std::iter::repeat_n(b'b', 100 * 1024));
    one_big.extend_from_slice(b"\r\n\r\n");
    let mut endless = b"GET /-/ping HTTP/1.1\r\nHost: x\r\n".to_vec();
    let mut i = 0;
    while endless.len() < 1 << 20 {
        endless.extend_from_slice(format!("X-F{i}: {}\r\n", "f".repeat(64)).as_bytes());
        i += 1;
    }
    let mut endless_line = b"GET /-/ping HTTP/1.1\r\nHost: x\r\nX-Line: ".to_vec();
    endless_line.extend(std::iter::repeat_n(b'l', 1 << 20));
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("200 headers", many, false),
        ("one 100 KiB header", one_big, false),
        ("1 MiB of short headers, no blank line", endless, true),
        ("1 MiB header line, no CRLF at all", endless_line, true),
    ];
    let mut failures = Vec::new();
    for (what, raw, close_ok) in cases {
        let (res, elapsed) = flood(&server, raw, what);
        match &res {
            Ok(res) => eprintln!(
                "{what}: {} {} after {elapsed:?}",
                res.status,
                res.error_type()
            ),
            Err(e) => eprintln!("{what}: closed without an answer after {elapsed:?} ({e})"),
        }
        match res {
            Ok(res)
                if res.status == 431 && res.error_type() == "request_header_fields_too_large" => {}
            Err(_) if close_ok => {}
            Ok(res) => failures.push(format!("{what}: expected 431: {}", res.describe())),
            Err(e) => failures.push(format!("{what}: expected 431, the connection ended: {e}")),
        }
        if elapsed > PROMPT {
            failures.push(format!("{what}: took {elapsed:?} (bound {PROMPT:?})"));
        }
        let ping = try_send_within(server.addr, &Req::new("GET", "/-/ping"), PROMPT);
        if !matches!(&ping, Ok(r) if r.status == 200) {
            failures.push(format!("after {what}: ping failed: {ping:?}"));
        }
    }
    before.assert_same(&StoreSnapshot::take(&server, &[]), "header floods");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Request smuggling
// ---------------------------------------------------------------------------------------

/// Writes `raw`, half-closes, and reads every response until the server closes (or
/// `IO_TIMEOUT`). Returns the responses and how the connection ended.
fn all_responses(server: &Server, raw: &[u8], what: &str) -> (Vec<Response>, String) {
    let mut conn = Conn::connect(server.addr);
    if let Err(e) = conn.try_write(raw) {
        return (Vec::new(), format!("write failed: {e}"));
    }
    let _ = conn.stream().shutdown(Shutdown::Write);
    let mut responses = Vec::new();
    loop {
        // Peek for a clean EOF between responses.
        let at_eof = match conn.reader.fill_buf() {
            Ok(buf) => buf.is_empty(),
            Err(e) => return (responses, format!("read error: {e}")),
        };
        if at_eof {
            return (responses, "closed by the server".to_owned());
        }
        match conn.read_any(false, what) {
            Ok(res) => {
                let done = res.header("connection") == Some("close");
                responses.push(res);
                if done {
                    let mut rest = Vec::new();
                    let _ = conn.reader.read_to_end(&mut rest);
                    if !rest.is_empty() {
                        return (
                            responses,
                            format!(
                                "{} bytes after Connection: close: {:?}",
                                rest.len(),
                                support::lossy(&rest)
                            ),
                        );
                    }
                    return (responses, "closed after Connection: close".to_owned());
                }
            }
            Err(e) => return (responses, format!("unparsable data: {e}")),
        }
    }
}

/// Goal: no framing trick makes the server answer a request hidden in a body as a request of
/// its own. Each case hides `GET /smuggled-marker` (a 404 if it were ever served) in what
/// the server must treat as body (or refuse); the test counts the responses on the
/// connection: exactly the expected number, the first with the expected status, never a
/// second answer. The store is unchanged and the server keeps serving.
#[test]
fn request_smuggling_is_never_answered_as_a_separate_request() {
    let server = Server::start();
    let token = server.login("smuggle-user");
    let pkg = fixture("smuggle-pkg", "1.0.0", "s");
    server.publish_ok(&token, &pkg);
    let packages = ["smuggle-pkg"];
    let before = StoreSnapshot::take(&server, &packages);
    let hidden = "GET /smuggled-marker HTTP/1.1\r\nHost: x\r\n\r\n";
    let tag = format!(
        "PUT /-/package/smuggle-pkg/dist-tags/beta HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
    );
    let chunked_body = format!("0\r\n\r\n{hidden}");
    let with = |extra: &str, body: &str| format!("{tag}{extra}\r\n{body}").into_bytes();
    // (what, raw bytes, allowed statuses of the one answer; 0 answers allowed when true)
    let cases: Vec<(&str, Vec<u8>, &[u16], bool)> = vec![
        (
            "Content-Length and Transfer-Encoding: chunked",
            with(&format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", chunked_body.len()), &chunked_body),
            &[400],
            false,
        ),
        (
            "Transfer-Encoding: chunked then Content-Length",
            with(&format!("Transfer-Encoding: chunked\r\nContent-Length: {}\r\n", chunked_body.len()), &chunked_body),
            &[400],
            false,
        ),
        (
            "Transfer-Encoding: chunked twice",
            with("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", &chunked_body),
            &[400, 501],
            false,
        ),
        (
            "Transfer-Encoding: chunked, then identity",
            with("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", &chunked_body),
            &[400, 501],
            false,
        ),
        (
            "Transfer-Encoding: chunked, chunked",
            with("Transfer-Encoding: chunked, chunked\r\n", &chunked_body),
            &[400, 501],
            false,
        ),
        (
            "Transfer-Encoding: xchunked",
            with("Transfer-Encoding: xchunked\r\n", &chunked_body),
            &[400, 501],
            false,
        ),
        (
            "Transfer-Encoding with a space before the colon",
            with("Transfer-Encoding : chunked\r\n", &chunked_body),
            &[400],
            false,
        ),
        (
            "Transfer-Encoding folded onto a continuation line",
            with("Transfer-Encoding:\r\n chunked\r\n", &chunked_body),
            &[400, 501],
            false,
        ),
        (
            "Content-Length with a leading +",
            with(&format!("Content-Length: +{}\r\n", hidden.len() + 7), &format!("\"1.0.0\"{hidden}")),
            &[400],
            false,
        ),
        (
            "Content-Length with a space inside the digits",
            with("Content-Length: 4 6\r\n", &format!("\"1.0.0\"{hidden}")),
            &[400],
            false,
        ),
        (
            "Content-Length in hex",
            with("Content-Length: 0x30\r\n", &format!("\"1.0.0\"{hidden}")),
            &[400],
            false,
        ),
        (
            "Content-Length as a list",
            with(&format!("Content-Length: 7, {}\r\n", hidden.len() + 7), &format!("\"1.0.0\"{hidden}")),
            &[400],
            false,
        ),
        (
            "two different Content-Lengths",
            with(&format!("Content-Length: 7\r\nContent-Length: {}\r\n", hidden.len() + 7), &format!("\"1.0.0\"{hidden}")),
            &[400],
            false,
        ),
        (
            "chunk size with a 0x prefix",
            with("Transfer-Encoding: chunked\r\n", &format!("0x7\r\n\"1.0.0\"\r\n0\r\n\r\n{hidden}")),
            &[400],
            false,
        ),
        (
            "negative chunk size",
            with("Transfer-Encoding: chunked\r\n", &format!("-7\r\n\"1.0.0\"\r\n0\r\n\r\n{hidden}")),
            &[400],
            false,
        ),
        (
            "chunk size overflowing 64 bits",
            with("Transfer-Encoding: chunked\r\n", &format!("10000000000000007\r\n\"1.0.0\"\r\n0\r\n\r\n{hidden}")),
            &[400, 413],
            false,
        ),
        (
            "chunk size with a space inside",
            with("Transfer-Encoding: chunked\r\n", &format!("0 7\r\n\"1.0.0\"\r\n0\r\n\r\n{hidden}")),
            &[400],
            false,
        ),
        (
            "chunk data longer than its size",
            with("Transfer-Encoding: chunked\r\n", &format!("3\r\n\"1.0.0\"\r\n0\r\n\r\n{hidden}")),
            &[400],
            false,
        ),
        (
            "a body whose Content-Length covers a whole second request",
            with(&format!("Content-Length: {}\r\n", hidden.len() + 7), &format!("\"1.0.0\"{hidden}")),
            &[400],
            false,
        ),
        (
            "a GET with a body holding a request",
            format!("GET /-/ping HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{hidden}", hidden.len()).into_bytes(),
            &[200],
            false,
        ),
        (
            "a Content-Length longer than what follows (the hidden request is body)",
            with(&format!("Content-Length: {}\r\n", hidden.len() + 100), &format!("\"1.0.0\"{hidden}")),
            &[400, 408],
            true,
        ),
        (
            "bare LF line endings mixed with CRLF",
            format!(
                "PUT /-/package/smuggle-pkg/dist-tags/beta HTTP/1.1\nHost: x\r\n\
                 Authorization: Bearer {token}\nContent-Length: {}\r\n\n\"1.0.0\"{hidden}",
                hidden.len() + 7
            )
            .into_bytes(),
            &[400],
            false,
        ),
        (
            "bare LF before Content-Length inside a header value",
            format!(
                "GET /-/ping HTTP/1.1\r\nHost: x\r\nX-A: a\nContent-Length: {}\r\n\r\n{hidden}",
                hidden.len()
            )
            .into_bytes(),
            &[200, 400],
            false,
        ),
        (
            "bare CR inside a header value",
            format!(
                "GET /-/ping HTTP/1.1\r\nHost: x\r\nX-A: a\rContent-Length: {}\r\n\r\n{hidden}",
                hidden.len()
            )
            .into_bytes(),
            &[400],
            false,
        ),
        (
            "NUL inside a header value",
            format!(
                "GET /-/ping HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\nContent-Length: {}\r\n\r\n{hidden}",
                hidden.len()
            )
            .into_bytes(),
            &[400],
            false,
        ),
    ];
    let mut failures = Vec::new();
    for (what, raw, allowed, none_ok) in &cases {
        let (responses, end) = all_responses(&server, raw, what);
        let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
        eprintln!("{what}: responses {statuses:?}, then {end}");
        for res in &responses {
            if let Some(why) = res.invariant_violation() {
                failures.push(format!("{what}: {why}"));
            }
        }
        match responses.as_slice() {
            [] if *none_ok => {}
            [one] if allowed.contains(&one.status) => {}
            [] => failures.push(format!("{what}: no answer ({end})")),
            [one] => failures.push(format!(
                "{what}: expected one of {allowed:?}: {}",
                one.describe()
            )),
            many => failures.push(format!(
                "{what}: {} responses on one connection (a hidden request was answered): {}",
                many.len(),
                many.iter()
                    .map(Response::describe)
                    .collect::<Vec<_>>()
                    .join(" | ")
            )),
        }
    }
    // The hidden requests never reached the store, and the server still serves.
    before.assert_same(
        &StoreSnapshot::take(&server, &packages),
        "smuggling attempts",
    );
    let ping = server.get("/-/ping");
    assert_eq!(ping.status, 200, "{}", ping.describe());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Slowloris
// ---------------------------------------------------------------------------------------

/// True when the server closed `stream` (EOF or reset on a non-blocking read). Data the
/// server sent (an error answer before closing) is read and dropped.
fn peer_closed(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    stream.set_nonblocking(false).expect("blocking");
    closed
}

/// Goal: 50 connections that each send one header byte every 200 ms do not slow anyone else
/// down (100 GETs by a normal client, p99 under a second), and the head timeout (10 s)
/// closes every one of them (asserted within 15 s of its first byte). This test takes ~15 s.
#[test]
fn slowloris_does_not_starve_clients_and_is_cut_off() {
    const SLOW: usize = 50;
    const TICK: Duration = Duration::from_millis(200);
    const CLOSE_BY: Duration = Duration::from_secs(15);
    let server = Server::start();
    let header_timeout = Duration::from_millis(server::limits::HEADER_TIMEOUT_MS);
    // Each slow client: the request line and Host at once, then one byte of a header value
    // per tick, forever.
    let mut slow: Vec<(TcpStream, Instant, Option<Duration>)> = (0..SLOW)
        .map(|_| {
            let stream = TcpStream::connect(server.addr).expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            (stream, Instant::now(), None)
        })
        .collect();
    for (stream, started, _) in &mut slow {
        stream
            .write_all(b"GET /-/ping HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .expect("the first bytes");
        *started = Instant::now();
    }
    // A control group: 5 connections that send the same partial head once, then nothing.
    let mut silent: Vec<(TcpStream, Option<Duration>)> = (0..5)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addr).expect("connect");
            stream
                .write_all(b"GET /-/ping HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .expect("the first bytes");
            (stream, None)
        })
        .collect();
    let first_byte = Instant::now();
    // The normal client runs on its own thread while the slow ones drip.
    let addr = server.addr;
    let normal = thread::spawn(move || {
        let mut latencies = Vec::new();
        let mut errors = Vec::new();
        for i in 0..100 {
            let target = if i % 2 == 0 {
                "/-/ping"
            } else {
                "/no-such-pkg"
            };
            let started = Instant::now();
            match try_send(addr, &Req::new("GET", target)) {
                Ok(res) if matches!(res.status, 200 | 404) => latencies.push(started.elapsed()),
                Ok(res) => errors.push(res.describe()),
                Err(e) => errors.push(format!("GET {target}: {e}")),
            }
        }
        (latencies, errors)
    });
    // Drip bytes until every slow connection is closed or the deadline passes. A closed
    // connection shows as EOF/reset on a non-blocking read, or a failed write.
    let mut tick = Instant::now();
    let (tick_tx, tick_rx) = mpsc::channel::<()>();
    let open = |slow: &[(TcpStream, Instant, Option<Duration>)],
                silent: &[(TcpStream, Option<Duration>)]| {
        slow.iter().any(|(_, _, closed)| closed.is_none())
            || silent.iter().any(|(_, closed)| closed.is_none())
    };
    while open(&slow, &silent) && first_byte.elapsed() < CLOSE_BY {
        for (stream, closed) in &mut silent {
            if closed.is_none() && peer_closed(stream) {
                *closed = Some(first_byte.elapsed());
            }
        }
        for (stream, started, closed) in &mut slow {
            if closed.is_some() {
                continue;
            }
            if peer_closed(stream) || stream.write_all(b"a").is_err() {
                *closed = Some(started.elapsed());
            }
        }
        // Wait for the next tick (an event that never comes: the deadline is the point).
        tick += TICK;
        let _ = tick_rx.recv_timeout(tick.saturating_duration_since(Instant::now()));
    }
    drop(tick_tx);
    let (mut latencies, errors) = normal.join().expect("the normal client");
    let p50 = quantile(&mut latencies, 0.5);
    let p99 = quantile(&mut latencies, 0.99);
    let max = latencies.last().copied().unwrap_or_default();
    let silent_closed: Vec<Duration> = silent.iter().filter_map(|(_, c)| *c).collect();
    eprintln!(
        "control group (partial head, then silence): {} of {} closed, after {:?}",
        silent_closed.len(),
        silent.len(),
        silent_closed
    );
    let closed: Vec<Duration> = slow.iter().filter_map(|(_, _, c)| *c).collect();
    let still_open = SLOW - closed.len();
    eprintln!(
        "normal client during slowloris: {} ok, {} errors, p50 {p50:?}, p99 {p99:?}, max {max:?}",
        latencies.len(),
        errors.len()
    );
    eprintln!(
        "slow connections: {} closed by the server (first after {:?}, last after {:?}), {} still \
         open after {:?}; head timeout is {header_timeout:?}",
        closed.len(),
        closed.iter().min(),
        closed.iter().max(),
        still_open,
        first_byte.elapsed()
    );
    let mut failures = Vec::new();
    if !errors.is_empty() {
        failures.push(format!("normal requests failed: {}", errors.join(" | ")));
    }
    if p99 > Duration::from_secs(1) {
        failures.push(format!("normal client p99 {p99:?} is over 1 s"));
    }
    if silent_closed.len() < silent.len() {
        failures.push(format!(
            "{} silent connections with a partial head were still open after {CLOSE_BY:?}",
            silent.len() - silent_closed.len()
        ));
    }
    if still_open > 0 {
        failures.push(format!(
            "{still_open} of {SLOW} slowloris connections (one header byte per {TICK:?}) were \
             still open {CLOSE_BY:?} after their first byte; the head timeout \
             ({header_timeout:?}) must bound the whole head, not each read"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// 10,000 idle connections
// ---------------------------------------------------------------------------------------

/// Opens N idle connections to HOST:PORT (raising its own open-file limit first), prints
/// `ready N` (or `error ...`) and a line of connect latencies, waits for a line on stdin (or EOF), closes them all and prints
/// `released`.
const IDLE_PY: &str = r#"
import resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
except Exception as e:
    print("error setrlimit", e, flush=True); sys.exit(1)
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks, slow, worst = [], 0, 0.0
try:
    for i in range(n):
        t = time.monotonic()
        socks.append(socket.create_connection((host, port), timeout=10))
        took = time.monotonic() - t
        worst = max(worst, took)
        slow += took > 0.5
except Exception as e:
    print("error after", len(socks), "connections:", e, flush=True); sys.exit(1)
print("ready", len(socks), flush=True)
print("connects over 500 ms:", slow, "slowest: %.3f s" % worst, flush=True)
sys.stdin.readline()
for s in socks:
    s.close()
print("released", flush=True)
"#;

/// The python3 holder of idle connections; killed by pid on drop.
struct IdleHolder {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl IdleHolder {
    fn start(addr: std::net::SocketAddr, n: usize) -> IdleHolder {
        let mut child = Command::new("python3")
            .args([
                "-c",
                IDLE_PY,
                &addr.ip().to_string(),
                &addr.port().to_string(),
                &n.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning python3");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        IdleHolder {
            child,
            stdin,
            lines,
        }
    }

    /// The next line from the helper within `timeout`.
    fn line(&self, timeout: Duration) -> String {
        self.lines.recv_timeout(timeout).unwrap_or_else(|e| {
            panic!("the idle-connection helper said nothing within {timeout:?} ({e})")
        })
    }

    fn release(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"release\n");
        }
    }
}

impl Drop for IdleHolder {
    fn drop(&mut self) {
        // SIGKILL to this helper's pid only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Goal: 10,000 idle connections neither stop the server from serving a normal client nor
/// leak: while they are held, reads and a publish are served promptly; once they are
/// released, `agentregistry_connections_open` (summed over cores) returns to ~0. The server
/// is started through `sh -c 'ulimit -n ...; exec agentregistry serve ...'`; the connections
/// are held by a python3 helper so this process needs no extra descriptors.
#[test]
fn ten_thousand_idle_connections() {
    const IDLE: usize = 10_000;
    let server = Server::launch(Launch {
        raise_nofile: true,
        ..Launch::default()
    })
    .unwrap_or_else(|e| panic!("the server did not start:\n{}", e.log));
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", server.pid)).unwrap_or_default();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or("?");
    eprintln!("server pid {}: {nofile}", server.pid);
    let token = server.login("idle-user");
    let rss_before = server.rss_kib();
    let started = Instant::now();
    let mut holder = IdleHolder::start(server.addr, IDLE);
    let ready = holder.line(Duration::from_secs(120));
    assert_eq!(
        ready,
        format!("ready {IDLE}"),
        "the helper could not open {IDLE} connections"
    );
    eprintln!(
        "{IDLE} idle connections opened in {:?}; {} (a connect over 1 s is a SYN retransmit \
         after the listen backlog overflowed)",
        started.elapsed(),
        holder.line(Duration::from_secs(5))
    );

    // The gauge sees them (accepts may trail the client's connects: poll).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut gauge = 0;
    while Instant::now() < deadline {
        let scrape = server.get("/-/metrics");
        assert_eq!(scrape.status, 200, "{}", scrape.describe());
        gauge = connections_open(&scrape.text());
        if gauge >= IDLE as u64 {
            break;
        }
    }
    let rss_held = server.rss_kib();
    eprintln!(
        "connections_open while held: {gauge}; RSS {} MiB before, {} MiB with {IDLE} idle \
         connections",
        rss_before / 1024,
        rss_held / 1024
    );
    assert!(
        gauge >= IDLE as u64,
        "the gauge shows {gauge} open connections, expected >= {IDLE}"
    );

    // A normal client is served meanwhile.
    let mut latencies = Vec::new();
    let pkg = fixture("idle-pkg", "1.0.0", "idle");
    let publish_started = Instant::now();
    let res = server.publish(&token, &pkg);
    let publish_took = publish_started.elapsed();
    assert_eq!(res.status, 201, "{}", res.describe());
    for i in 0..100 {
        let target = if i % 2 == 0 { "/idle-pkg" } else { "/-/ping" };
        let t = Instant::now();
        let res = try_send_within(
            server.addr,
            &Req::new("GET", target),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("GET {target} with {IDLE} idle connections open: {e}"));
        assert_eq!(res.status, 200, "{}", res.describe());
        latencies.push(t.elapsed());
    }
    let p99 = quantile(&mut latencies, 0.99);
    eprintln!(
        "normal client with {IDLE} idle connections: publish {publish_took:?}, 100 GETs p50 {:?} \
         p99 {p99:?}",
        quantile(&mut latencies, 0.5)
    );
    assert!(
        p99 < Duration::from_secs(1),
        "p99 {p99:?} with idle connections open"
    );

    // Release them; the gauge returns to ~0 (the scrape's own connection counts as 1).
    holder.release();
    assert_eq!(holder.line(Duration::from_secs(60)), "released");
    let released = Instant::now();
    let deadline = released + Duration::from_secs(20);
    loop {
        let scrape = server.get("/-/metrics");
        gauge = connections_open(&scrape.text());
        if gauge <= 2 || Instant::now() >= deadline {
            break;
        }
    }
    eprintln!(
        "connections_open {:?} after release: {gauge}; RSS {} MiB",
        released.elapsed(),
        server.rss_kib() / 1024
    );
    assert!(
        gauge <= 2,
        "connections_open stays at {gauge} after the idle connections closed"
    );
    let res = server.get("/idle-pkg");
    assert_eq!(res.status, 200, "{}", res.describe());
}

// ---------------------------------------------------------------------------------------
// Path traversal on every route
// ---------------------------------------------------------------------------------------

/// Goal: every route that takes a path parameter refuses traversal payloads in every one of
/// its parameters with a 4xx JSON error, never leaks file content (`<home>/format.json`,
/// `config.bin`'s magic, `/etc/passwd`), and changes nothing. Payloads: `%2e%2e`, double
/// encoding `%252e`, `..%2f`, backslashes `%5c`, NUL `%00`, overlong UTF-8 `%c0%ae` and
/// `%e0%80%ae`, fullwidth dots `%ef%bc%8e`, and plain `..`.
#[test]
fn path_traversal_is_refused_on_every_route() {
    let server = Server::start();
    let token = server.login("trav-user");
    let pkg = fixture("trav-pkg", "1.0.0", "t");
    server.publish_ok(&token, &pkg);
    let packages = ["trav-pkg"];
    let format_json = std::fs::read_to_string(server.home.join("format.json")).expect("format");
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let passwd_line = passwd.lines().next().unwrap_or("root:x:0:0").to_owned();
    let home = server.home.display().to_string();
    let payloads = [
        "%2e%2e",
        "%2e%2e%2fformat.json",
        "%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "%252e%252e",
        "%252e%252e%252fformat.json",
        "..%2fformat.json",
        "..%2f..%2f..%2f..%2fetc%2fpasswd",
        "..%5cformat.json",
        "%5c..%5c..%5cformat.json",
        "format.json%00",
        "%00",
        "..%00",
        "%c0%ae%c0%ae",
        "%c0%ae%c0%ae%c0%affformat.json",
        "%e0%80%ae%e0%80%ae",
        "%e0%80%ae%e0%80%ae%e0%80%afformat.json",
        "%ef%bc%8e%ef%bc%8e",
        "%ef%bc%8e%ef%bc%8e%ef%bc%8fformat.json",
        "..",
        ".",
    ];
    // (method, template with {P} in each parameter position in turn, body)
    let doc = server.get("/trav-pkg").json();
    let rev = doc["_rev"].as_str().unwrap_or("1-0").to_owned();
    let update_body = serde_json::to_vec(&doc).expect("JSON");
    let publish_body = fixture("trav-other", "1.0.0", "o").body_bytes();
    let templates: Vec<(&str, String, Vec<u8>)> = vec![
        ("GET", "/{P}".into(), vec![]),
        ("HEAD", "/{P}".into(), vec![]),
        ("GET", "/@{P}/x".into(), vec![]),
        ("GET", "/@scope%2f{P}".into(), vec![]),
        ("GET", "/trav-pkg/{P}".into(), vec![]),
        ("GET", "/{P}/1.0.0".into(), vec![]),
        ("GET", "/{P}/-/trav-pkg-1.0.0.tgz".into(), vec![]),
        ("GET", "/trav-pkg/-/{P}".into(), vec![]),
        ("GET", "/trav-pkg/-/trav-pkg-{P}.tgz".into(), vec![]),
        ("GET", "/@scope/{P}/-/x.tgz".into(), vec![]),
        ("GET", "/-/package/{P}/dist-tags".into(), vec![]),
        (
            "PUT",
            "/-/package/{P}/dist-tags/beta".into(),
            b"\"1.0.0\"".to_vec(),
        ),
        (
            "PUT",
            "/-/package/trav-pkg/dist-tags/{P}".into(),
            b"\"1.0.0\"".to_vec(),
        ),
        ("DELETE", "/-/package/trav-pkg/dist-tags/{P}".into(), vec![]),
        ("DELETE", "/-/package/{P}/dist-tags/latest".into(), vec![]),
        ("GET", "/-/user/org.couchdb.user:{P}".into(), vec![]),
        (
            "PUT",
            "/-/user/org.couchdb.user:{P}".into(),
            br#"{"name":"..","password":"pw"}"#.to_vec(),
        ),
        ("DELETE", "/-/user/token/{P}".into(), vec![]),
        ("PUT", "/{P}".into(), publish_body.clone()),
        ("PUT", "/{P}/-rev/1".into(), update_body.clone()),
        ("PUT", "/trav-pkg/-rev/{P}".into(), update_body.clone()),
        ("DELETE", "/{P}/-rev/1".into(), vec![]),
        ("DELETE", "/trav-pkg/-rev/{P}".into(), vec![]),
        (
            "DELETE",
            format!("/{{P}}/-/trav-pkg-1.0.0.tgz/-rev/{rev}"),
            vec![],
        ),
        ("DELETE", format!("/trav-pkg/-/{{P}}/-rev/{rev}"), vec![]),
        (
            "DELETE",
            "/trav-pkg/-/trav-pkg-1.0.0.tgz/-rev/{P}".into(),
            vec![],
        ),
    ];
    let mut before = StoreSnapshot::take(&server, &packages);
    let mut failures = Vec::new();
    let mut statuses: std::collections::BTreeMap<u16, usize> = std::collections::BTreeMap::new();
    let mut count = 0;
    for (method, template, body) in &templates {
        for payload in payloads {
            let target = template.replace("{P}", payload);
            let mut req = Req::new(method, &target).bearer(&token);
            if !body.is_empty() {
                req = req
                    .header("Content-Type", "application/json")
                    .body(body.clone());
            }
            let what = format!("{method} {target}");
            count += 1;
            let res = match try_send(server.addr, &req) {
                Ok(res) => res,
                Err(e) => {
                    failures.push(format!("{what}: {e}"));
                    continue;
                }
            };
            *statuses.entry(res.status).or_default() += 1;
            if !(400..500).contains(&res.status) {
                failures.push(format!(
                    "{what}: expected a 4xx JSON error: {}",
                    res.describe()
                ));
            }
            let text = res.text();
            for secret in [
                format_json.trim(),
                "format_version",
                "AREG",
                passwd_line.as_str(),
                "root:x:",
                home.as_str(),
            ] {
                if !secret.is_empty() && text.contains(secret) {
                    failures.push(format!("{what} leaked {secret:?}: {}", res.describe()));
                }
            }
            let after = StoreSnapshot::take(&server, &packages);
            if before != after {
                before.assert_same(&after, &what);
            }
            before = after;
        }
    }
    eprintln!("{count} traversal requests; statuses {statuses:?}");
    assert!(
        failures.is_empty(),
        "{} of {count} traversal requests were mishandled:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Hostile tarballs
// ---------------------------------------------------------------------------------------

/// A gzip'd tar of `(path, body)` files, the paths written into the header bytes as given
/// (the tar crate refuses to build `..` paths, which is the point here).
fn tarball_with_paths(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (path, body) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        tar.extend_from_slice(header.as_bytes());
        tar.extend_from_slice(body);
        tar.resize(tar.len().next_multiple_of(512), 0);
    }
    tar.resize(tar.len() + 1024, 0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).expect("gzip into memory");
    gz.finish().expect("gzip into memory")
}

/// Goal: a publish whose tarball is not a readable npm tarball, or whose package.json names
/// another package or version than the published manifest ("manifest confusion"), is refused
/// with 400 `bad_tarball` and changes nothing. Method: each tarball gets correct checksums, so
/// it passes every earlier check; then the store is compared byte for byte, and the honest
/// publish of the same name still succeeds.
#[test]
fn hostile_tarballs_are_refused_and_change_nothing() {
    let server = Server::start();
    let token = server.login("tgz-user");
    let stable = fixture("tgz-stable", "1.0.0", "stable");
    server.publish_ok(&token, &stable);
    let packages = ["tgz-stable", "tgz-fresh"];
    let (name, version) = ("tgz-fresh", "1.0.0");
    let honest = support::npm_tarball(name, version, b"honest payload");
    let manifest = format!(r#"{{"name":"{name}","version":"{version}"}}"#);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not gzip", b"this is not a gzip'd tarball".to_vec()),
        ("truncated gzip", honest[..honest.len() / 2].to_vec()),
        (
            "gzip without its trailer",
            honest[..honest.len() - 4].to_vec(),
        ),
        (
            "package.json naming another package",
            support::npm_tarball("tgz-stable", version, b"confused"),
        ),
        (
            "package.json naming another version",
            support::npm_tarball(name, "6.6.6", b"confused"),
        ),
        (
            "a ../ entry",
            tarball_with_paths(&[
                ("package/package.json", manifest.as_bytes()),
                ("package/../../escape.js", b"boom"),
            ]),
        ),
        (
            "an absolute entry",
            tarball_with_paths(&[
                ("package/package.json", manifest.as_bytes()),
                ("/etc/escape", b"boom"),
            ]),
        ),
        (
            "no package.json",
            tarball_with_paths(&[("package/index.js", b"1")]),
        ),
    ];
    let built = support::tarball_fixtures(
        cases
            .iter()
            .map(|(_, tgz)| (name.to_owned(), version.to_owned(), tgz.clone()))
            .collect(),
    );
    let mut before = StoreSnapshot::take(&server, &packages);
    let mut failures = Vec::new();
    for ((what, _), fixture) in cases.iter().zip(&built) {
        let res = server.publish(&token, fixture);
        if res.status != 400 || res.error_type() != "bad_tarball" {
            failures.push(format!(
                "{what}: expected 400 bad_tarball: {}",
                res.describe()
            ));
        } else {
            eprintln!("{what}: {}", res.json()["message"]);
        }
        let after = StoreSnapshot::take(&server, &packages);
        before.assert_same(&after, what);
        before = after;
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile tarballs were mishandled:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // The honest tarball of the same name and version still publishes, with its file count.
    let honest = support::tarball_fixtures(vec![(name.to_owned(), version.to_owned(), honest)]);
    server.publish_ok(&token, &honest[0]);
    let doc = server.get(&format!("/{name}/{version}")).json();
    assert_eq!(doc["dist"]["fileCount"], json!(2), "{doc}");
    assert_eq!(
        doc["dist"]["unpackedSize"],
        json!(manifest_len(name, version) + b"honest payload".len()),
        "{doc}"
    );
}

/// Length of the package.json `support::npm_tarball` writes.
fn manifest_len(name: &str, version: &str) -> usize {
    json!({"name": name, "version": version, "main": "index.js"})
        .to_string()
        .len()
}

// ---------------------------------------------------------------------------------------
// Retries and races
// ---------------------------------------------------------------------------------------

/// Runs each request on its own thread, all released at once; answers in input order.
fn all_at_once(server: &Server, reqs: Vec<Req>) -> Vec<Result<Response, String>> {
    let barrier = Arc::new(Barrier::new(reqs.len()));
    let handles: Vec<_> = reqs
        .into_iter()
        .map(|req| {
            let (addr, barrier) = (server.addr, Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                try_send(addr, &req)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("a request thread"))
        .collect()
}

/// Goal: SPEC section 6, "every write is idempotent and retry-safe". Retrying an
/// acknowledged publish (new connections, the same keep-alive connection, pipelined twice)
/// answers 200 and changes nothing on disk or over HTTP; 8 identical publishes at once give
/// one 201 and seven 200s; 8 publishes of one version with different bytes at once give
/// exactly one 201 and seven 409s, and the served tarball and integrity are the winner's.
#[test]
fn publish_retries_are_idempotent_and_races_have_one_winner() {
    let server = Server::start();
    let token = server.login("retry-user");
    let pkg = fixture("retry-pkg", "1.0.0", "retry");
    server.publish_ok(&token, &pkg);
    let packages = ["retry-pkg", "race-same", "race-diff"];
    let before = StoreSnapshot::take(&server, &packages);
    for attempt in 0..3 {
        let res = server.publish(&token, &pkg);
        assert_eq!(res.status, 200, "retry {attempt}: {}", res.describe());
        assert_eq!(res.json()["ok"], json!(true), "{}", res.describe());
    }
    let mut conn = Conn::connect(server.addr);
    for attempt in 0..2 {
        let res = conn
            .exchange(&pkg.publish_req(&token), server.addr)
            .unwrap_or_else(|e| panic!("keep-alive retry {attempt}: {e}"));
        assert_eq!(
            res.status,
            200,
            "keep-alive retry {attempt}: {}",
            res.describe()
        );
    }
    let mut twice = pkg.publish_req(&token).bytes(server.addr);
    twice.extend_from_slice(&pkg.publish_req(&token).bytes(server.addr));
    conn.write(&twice);
    for i in 0..2 {
        let res = conn.read(false, &format!("pipelined retry {i}"));
        assert_eq!(res.status, 200, "pipelined retry {i}: {}", res.describe());
    }
    before.assert_same(
        &StoreSnapshot::take(&server, &packages),
        "retries of an acknowledged publish",
    );

    // Identical publishes at once: one creates, the others are retries.
    let same = fixture("race-same", "1.0.0", "same");
    let answers = all_at_once(&server, (0..8).map(|_| same.publish_req(&token)).collect());
    let statuses: Vec<u16> = answers
        .iter()
        .map(|r| r.as_ref().map_or(0, |r| r.status))
        .collect();
    eprintln!("8 identical publishes at once: {statuses:?}");
    assert_eq!(
        statuses.iter().filter(|&&s| s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        7,
        "{statuses:?}"
    );
    let served = server.get(&server.tarball_path("race-same", "1.0.0"));
    assert!(
        served.body == same.tarball,
        "race-same: served bytes differ"
    );

    // Different bytes for one version at once: exactly one winner.
    let salts: Vec<String> = (0..8).map(|i| format!("contender {i}")).collect();
    let specs: Vec<(&str, &str, &str)> = salts
        .iter()
        .map(|s| ("race-diff", "1.0.0", s.as_str()))
        .collect();
    let contenders = fixtures(&specs);
    let answers = all_at_once(
        &server,
        contenders.iter().map(|f| f.publish_req(&token)).collect(),
    );
    let statuses: Vec<u16> = answers
        .iter()
        .map(|r| r.as_ref().map_or(0, |r| r.status))
        .collect();
    eprintln!("8 different publishes of one version at once: {statuses:?}");
    let winners: Vec<usize> = (0..8).filter(|&i| statuses[i] == 201).collect();
    assert_eq!(winners.len(), 1, "exactly one 201 expected: {statuses:?}");
    for (i, res) in answers.iter().enumerate() {
        if i != winners[0] {
            let res = res.as_ref().expect("an answer");
            res.expect_error(409, "version_exists");
        }
    }
    let winner = &contenders[winners[0]];
    let served = server.get(&server.tarball_path("race-diff", "1.0.0"));
    assert!(
        served.body == winner.tarball,
        "the served tarball must be the winner's bytes"
    );
    let doc = server.get("/race-diff").json();
    assert_eq!(
        doc["versions"]["1.0.0"]["dist"]["integrity"],
        json!(winner.integrity)
    );
    // The losers' retries still lose, the winner's retry is a 200.
    for (i, f) in contenders.iter().enumerate() {
        let res = server.publish(&token, f);
        let want = if i == winners[0] { 200 } else { 409 };
        assert_eq!(
            res.status,
            want,
            "retry of contender {i}: {}",
            res.describe()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Full disk
// ---------------------------------------------------------------------------------------

/// A tmpfs mounted for one test; unmounted on drop (lazily if still busy).
struct TmpfsMount {
    path: std::path::PathBuf,
}

impl TmpfsMount {
    fn mount(path: &std::path::Path, size: &str) -> Result<TmpfsMount, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                support::lossy(&out.stderr).trim()
            ));
        }
        Ok(TmpfsMount {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Checks every fixture in `acked` is served byte-identical with its integrity; failures
/// are returned as messages.
fn check_acked(server: &Server, acked: &[Fixture], when: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for f in acked {
        let doc = server.get(&package_path(&f.name));
        if doc.status != 200 {
            failures.push(format!("{when}: {} lost: {}", f.name, doc.describe()));
            continue;
        }
        if doc.json()["versions"][&f.version]["dist"]["integrity"] != json!(f.integrity) {
            failures.push(format!(
                "{when}: {}@{} integrity differs",
                f.name, f.version
            ));
        }
        let tarball = server.get(&format!("/{}/-/{}-{}.tgz", f.name, f.name, f.version));
        if tarball.status != 200 || tarball.body != f.tarball {
            failures.push(format!(
                "{when}: {}@{} tarball not served byte-identical: {} ({} bytes)",
                f.name,
                f.version,
                tarball.status,
                tarball.body.len()
            ));
        }
    }
    failures
}

/// Goal: SPEC section 6 "disk full: a clear error and the store exactly as it was". The
/// server's home is on a 24 MiB tmpfs that also holds a 6 MiB filler file; 1 MiB tarballs are
/// published until one fails. That failure must be 507 `insufficient_storage` (or 503 if the
/// shard poisoned itself; printed), every earlier acknowledged publish must still be served
/// byte-identical, the failed version must be invisible, and no temp file may be left. Then
/// the filler is deleted and the failed publish retried: the registry should take it without
/// a restart (if it needs one, the test restarts it, checks everything again, and fails
/// saying so). Skipped with a note when tmpfs cannot be mounted.
#[test]
fn full_disk_is_507_loses_nothing_and_recovers() {
    let dir = tempfile::Builder::new()
        .prefix("hostile-fulldisk-")
        .tempdir()
        .expect("tempdir");
    let mnt = dir.path().join("mnt");
    let guard = match TmpfsMount::mount(&mnt, "24m") {
        Ok(guard) => guard,
        Err(why) => {
            eprintln!("note: SKIPPED full_disk_is_507_loses_nothing_and_recovers: {why}");
            return;
        }
    };
    let filler = mnt.join("filler.bin");
    std::fs::write(&filler, vec![0x5a; 6 << 20]).expect("writing the filler");
    let home = mnt.join("home");
    let launch = || Launch {
        home: Some(home.clone()),
        ..Launch::default()
    };
    let mut server = Server::launch(launch()).unwrap_or_else(|e| panic!("start:\n{}", e.log));
    let token = server.login("full-user");
    let mut rng = Rng::new(0xf011_d15c);
    let items: Vec<(String, String, Vec<u8>)> = (0..40)
        .map(|i| {
            (
                format!("full-pkg-{i}"),
                "1.0.0".to_owned(),
                rng.bytes((1 << 20) + i),
            )
        })
        .collect();
    let built = raw_fixtures(items);
    let mut acked: Vec<Fixture> = Vec::new();
    let mut refused: Option<(Fixture, Response)> = None;
    for f in &built {
        let res = server.publish(&token, f);
        if res.status == 201 {
            acked.push(f.clone());
            continue;
        }
        refused = Some((f.clone(), res));
        break;
    }
    let (failed, res) = refused.expect("24 MiB filled up before 40 MiB of tarballs");
    let shard_of = |name: &str| engine::shard::shard_for(name, 2).0;
    eprintln!(
        "disk full after {} acknowledged 1 MiB publishes: {}@{} (shard {}) -> {} {}: {:?}",
        acked.len(),
        failed.name,
        failed.version,
        shard_of(&failed.name),
        res.status,
        res.error_type(),
        res.json()["message"]
    );
    let mut failures = Vec::new();
    match (res.status, res.error_type().as_str()) {
        (507, "insufficient_storage") => {}
        (503, _) => eprintln!("note: the first full-disk failure was a 503 (shard poisoned)"),
        _ => failures.push(format!(
            "expected 507 insufficient_storage: {}",
            res.describe()
        )),
    }
    let message = res.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if !(message.contains("disk") || message.contains("space") || message.contains("storage")) {
        failures.push(format!(
            "the message does not say the disk is full: {message:?}"
        ));
    }
    let invisible = |server: &Server, f: &Fixture, when: &str, failures: &mut Vec<String>| {
        for target in [
            package_path(&f.name),
            format!("/{}/{}", f.name, f.version),
            format!("/{}/-/{}-{}.tgz", f.name, f.name, f.version),
        ] {
            let res = server.get(&target);
            if res.status != 404 {
                failures.push(format!(
                    "{when}: the refused version is visible: {}",
                    res.describe()
                ));
            }
        }
    };
    failures.extend(check_acked(&server, &acked, "after the disk filled"));
    invisible(&server, &failed, "after the disk filled", &mut failures);
    let leftovers = support::files_under(&home.join("blobs/tmp"));
    if !leftovers.is_empty() {
        failures.push(format!(
            "temp files left after the failed publish: {leftovers:?}"
        ));
    }
    // Still full: the same shard again, and the other shard.
    let again = server.publish(&token, &failed);
    eprintln!(
        "retry while still full: {} {}",
        again.status,
        again.error_type()
    );
    let other = built
        .iter()
        .skip(acked.len() + 1)
        .find(|f| shard_of(&f.name) != shard_of(&failed.name))
        .expect("a package on the other shard")
        .clone();
    let other_res = server.publish(&token, &other);
    eprintln!(
        "publish to the other shard ({}) while full: {} {}",
        shard_of(&other.name),
        other_res.status,
        other_res.error_type()
    );
    if other_res.status == 201 {
        acked.push(other.clone());
    }
    failures.extend(check_acked(&server, &acked, "after the retries while full"));

    // Nearly full: every byte but 256 KiB taken, then publishes of tiny tarballs (one 4 KiB
    // page each) with a 192 KiB incompressible description (stored several times in the shard)
    // until one fails, so the blob fits but the shard's redb file cannot grow: a failed
    // commit.
    let topoff = mnt.join("topoff.bin");
    {
        let mut file = std::fs::File::create(&topoff).expect("creating the top-off file");
        let block = vec![0xa5u8; 4096];
        while file.write_all(&block).is_ok() {}
    }
    let topped = std::fs::metadata(&topoff).map_or(0, |m| m.len());
    let keep = topped.saturating_sub(256 * 1024);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&topoff)
        .and_then(|f| f.set_len(keep))
        .expect("shrinking the top-off file");
    let tiny_items: Vec<(String, String, Vec<u8>)> = (0..300)
        .map(|i| {
            (
                format!("tiny-pkg-{i}"),
                "1.0.0".to_owned(),
                rng.bytes(100 + i),
            )
        })
        .collect();
    let tiny = raw_fixtures(tiny_items);
    let mut tiny_statuses: Vec<u16> = Vec::new();
    let mut tiny_failed: Option<(Fixture, Response)> = None;
    let with_padding = |f: &Fixture, rng: &mut Rng| {
        let mut doc = f.body();
        doc["versions"][&f.version]["description"] = json!(hex_encode(&rng.bytes(96 * 1024)));
        Req::new("PUT", &package_path(&f.name))
            .bearer(&token)
            .json(&doc)
    };
    for f in &tiny {
        let res = server.send(&with_padding(f, &mut rng));
        tiny_statuses.push(res.status);
        if res.status == 201 {
            acked.push(f.clone());
        } else {
            tiny_failed = Some((f.clone(), res));
            break;
        }
    }
    eprintln!(
        "with 256 KiB free: {} tiny publishes acknowledged, then {:?}",
        tiny_statuses.iter().filter(|&&s| s == 201).count(),
        tiny_failed.as_ref().map(|(f, r)| format!(
            "{} (shard {}): {} {} {:?}",
            f.name,
            shard_of(&f.name),
            r.status,
            r.error_type(),
            r.json()["message"]
        ))
    );
    let mut retry_after_space: Vec<Fixture> = vec![failed.clone()];
    if let Some((f, res)) = &tiny_failed {
        if !matches!(
            (res.status, res.error_type().as_str()),
            (507, "insufficient_storage") | (503, _)
        ) {
            failures.push(format!(
                "a tiny publish on a full disk: expected 507: {}",
                res.describe()
            ));
        }
        invisible(&server, f, "after a tiny publish failed", &mut failures);
        for probe in [f, &failed] {
            let res = server.send(&with_padding(probe, &mut rng));
            eprintln!(
                "still nearly full, retry of {} (shard {}): {} {}",
                probe.name,
                shard_of(&probe.name),
                res.status,
                res.error_type()
            );
        }
        retry_after_space.push(f.clone());
    }
    failures.extend(check_acked(&server, &acked, "after the tiny publishes"));
    let leftovers = support::files_under(&home.join("blobs/tmp"));
    if !leftovers.is_empty() {
        failures.push(format!(
            "temp files left after the failed tiny publish: {leftovers:?}"
        ));
    }

    // Space comes back.
    std::fs::remove_file(&filler).expect("removing the filler");
    std::fs::remove_file(&topoff).expect("removing the top-off file");
    let mut needed_restart = Vec::new();
    let mut restarted = false;
    for f in &retry_after_space {
        let mut retried = server.publish(&token, f);
        eprintln!(
            "after freeing space, retry of the refused {} (shard {}): {} {}",
            f.name,
            shard_of(&f.name),
            retried.status,
            retried.error_type()
        );
        if retried.status != 201 && !restarted {
            needed_restart.push(retried.describe());
            server.kill();
            server = Server::launch(launch()).unwrap_or_else(|e| panic!("restart:\n{}", e.log));
            restarted = true;
            retried = server.publish(&token, f);
            eprintln!(
                "after a restart: {} {}",
                retried.status,
                retried.error_type()
            );
        }
        if retried.status == 201 {
            acked.push(f.clone());
        } else {
            failures.push(format!(
                "publishing does not work again: {}",
                retried.describe()
            ));
        }
    }
    if other_res.status != 201 {
        let res = server.publish(&token, &other);
        if res.status == 201 {
            acked.push(other.clone());
        } else {
            failures.push(format!(
                "the other shard does not work again: {}",
                res.describe()
            ));
        }
    }
    failures.extend(check_acked(&server, &acked, "after space came back"));
    // Everything survives a restart too.
    server.kill();
    let server = Server::launch(launch()).unwrap_or_else(|e| panic!("restart:\n{}", e.log));
    failures.extend(check_acked(&server, &acked, "after a restart"));
    if !needed_restart.is_empty() {
        failures.push(format!(
            "after space came back, publishing still failed until a restart: {}",
            needed_restart.join(" | ")
        ));
    }
    drop(server);
    drop(guard);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Secrets and headers
// ---------------------------------------------------------------------------------------

/// Goal: no secret reaches the server's log, `admin.token` is private, and every response
/// carries `X-Content-Type-Options: nosniff`. The server runs with `AGENTREGISTRY_LOG=trace`
/// (the most a debugging operator would turn on) and its whole stderr is kept. It sees a
/// login, a second login (a second token), failed logins, a publish with the token, whoami
/// by Bearer and by Basic, a bad token, and a logout that carries a token in its URL; then
/// neither password, nor any token (with or without its `agr_` prefix, in either case), nor
/// the Basic credentials, nor the admin token may appear in the log.
#[test]
fn secrets_stay_out_of_logs_and_every_response_has_nosniff() {
    const SECRET_PW: &str = "hunter2-SECRET-pw";
    const WRONG_PW: &str = "wrong-SECRET-pw-2";
    let mut server = Server::launch(Launch {
        env: vec![("AGENTREGISTRY_LOG".to_owned(), "trace".to_owned())],
        log_bytes_max: 64 << 20,
        ..Launch::default()
    })
    .unwrap_or_else(|e| panic!("the server did not start:\n{}", e.log));
    let user = "secret-user";
    let token = server.login_with(user, SECRET_PW);
    let second = server.login_with(user, SECRET_PW);
    assert_ne!(token, second, "each login issues a new token");
    for password in [WRONG_PW, "hunter2-SECRET-pw-typo"] {
        let body = json!({"name": user, "password": password});
        let res =
            server.send(&Req::new("PUT", &format!("/-/user/org.couchdb.user:{user}")).json(&body));
        assert_eq!(res.status, 401, "a wrong password: {}", res.describe());
    }
    let pkg = fixture("secret-pkg", "1.0.0", "s");
    server.publish_ok(&token, &pkg);
    let whoami = server.send(&Req::new("GET", "/-/whoami").bearer(&token));
    assert_eq!(whoami.status, 200, "{}", whoami.describe());
    let basic = base64(format!("{user}:{SECRET_PW}").as_bytes());
    let by_basic = server
        .send(&Req::new("GET", "/-/whoami").header("Authorization", &format!("Basic {basic}")));
    assert_eq!(by_basic.status, 200, "{}", by_basic.describe());
    let wrong_basic = base64(format!("{user}:{WRONG_PW}").as_bytes());
    let res = server.send(
        &Req::new("GET", "/-/whoami").header("Authorization", &format!("Basic {wrong_basic}")),
    );
    assert_eq!(res.status, 401, "{}", res.describe());
    let bogus = format!("agr_{}", "5ec7e7".repeat(10));
    let res = server.send(&Req::new("GET", "/-/whoami").bearer(&bogus));
    assert_eq!(res.status, 401, "{}", res.describe());
    let logout =
        server.send(&Req::new("DELETE", &format!("/-/user/token/{second}")).bearer(&token));
    assert_eq!(logout.status, 200, "logout: {}", logout.describe());
    let admin_token = std::fs::read_to_string(server.home.join("admin.token"))
        .expect("reading admin.token")
        .trim()
        .to_owned();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(server.home.join("admin.token"))
        .expect("admin.token metadata")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "admin.token has mode {mode:o}, expected 600");

    // nosniff on every kind of answer: 200, 201, 304, 400, 401, 404, 405, 409, 413, 414,
    // 431, 501, and HEAD.
    let full = server.get("/secret-pkg");
    let etag = full.header("etag").expect("an ETag").to_owned();
    let mut seen = std::collections::BTreeSet::new();
    let mut check = |res: &Response| {
        seen.insert(res.status);
        assert_eq!(
            res.header("x-content-type-options"),
            Some("nosniff"),
            "{}",
            res.describe()
        );
    };
    check(&full);
    check(&server.send(&Req::new("GET", "/secret-pkg").header("If-None-Match", &etag)));
    check(&server.send(&Req::new("HEAD", "/secret-pkg")));
    check(&server.send(&Req::new("HEAD", "/no-such-pkg")));
    check(&server.get("/no-such-pkg"));
    check(&server.send(&Req::new("POST", "/-/ping")));
    check(&server.send(&pkg.publish_req(&token)));
    check(&server.publish(&token, &fixture("secret-pkg", "1.0.0", "other bytes")));
    check(&server.publish(&token, &fixture("secret-pkg-2", "1.0.0", "new")));
    check(&server.send(&Req::new("GET", "/-/whoami")));
    let mut conn = Conn::connect(server.addr);
    conn.write(b"PUT /secret-pkg HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n");
    check(&conn.read(false, "a 413"));
    let mut many = b"GET /-/ping HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..200 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    check(&send_raw(server.addr, &many, "a 431"));
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
    check(&send_raw(server.addr, long.as_bytes(), "a 414"));
    check(&send_raw(
        server.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        "a 501",
    ));
    check(&send_raw(server.addr, b"GARBAGE\r\n\r\n", "a 400"));
    eprintln!("statuses checked for nosniff: {seen:?}");
    for status in [200, 201, 304, 400, 401, 404, 405, 409, 413, 414, 431, 501] {
        assert!(seen.contains(&status), "no {status} was seen: {seen:?}");
    }

    // The log, all of it.
    server.kill();
    server.drain_log();
    let (log, total) = server.log_bytes();
    assert_eq!(
        log.len() as u64,
        total,
        "the log was longer than the kept 64 MiB"
    );
    let text = String::from_utf8_lossy(&log).into_owned();
    eprintln!(
        "server log at trace level: {} bytes, {} lines",
        log.len(),
        text.lines().count()
    );
    let mut secrets: Vec<(&str, String)> = vec![
        ("the password", SECRET_PW.to_owned()),
        ("a wrong password", WRONG_PW.to_owned()),
        ("the Basic credentials", basic.clone()),
        ("wrong Basic credentials", wrong_basic.clone()),
        ("the admin token", admin_token.clone()),
        ("a bogus token", bogus.clone()),
    ];
    for (what, t) in [("the first token", &token), ("the second token", &second)] {
        secrets.push((what, t.clone()));
        let hex = t.strip_prefix("agr_").unwrap_or(t);
        secrets.push((what, hex.to_owned()));
        secrets.push((what, hex.to_uppercase()));
        // A 16-character slice catches a token split or truncated in a log line.
        secrets.push((what, hex[hex.len() / 2..hex.len() / 2 + 16].to_owned()));
    }
    let leaks: Vec<String> = secrets
        .iter()
        .filter(|(_, s)| text.contains(s.as_str()))
        .map(|(what, s)| {
            let at = text.find(s.as_str()).unwrap_or(0);
            let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
            format!("{what} ({s:?}) in: {}", &text[line_start..line_end])
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "secrets in the server log:\n{}",
        leaks.join("\n")
    );
}
