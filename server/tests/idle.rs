//! The idle release (`server/src/idle.rs`) through the real binary: after the configured quiet
//! time the caches are emptied and every answer afterwards is the same as before it.

#![allow(dead_code)]

mod support;

use std::time::{Duration, Instant};

use support::{fixtures, package_path, Launch, Req, Response, Server, ABBREVIATED};

/// Quiet seconds before the server releases (`--idle-release-secs`, through its env var).
const RELEASE_SECS: u64 = 2;

/// The value of the sample line `name` in a scrape (a metric without labels).
fn sample(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

/// Status, ETag and body of each package's documents (abbreviated, full) and tarball.
fn read_all(server: &Server, names: &[String], versions: &[String]) -> Vec<(u16, String, Vec<u8>)> {
    let mut answers = Vec::new();
    for (name, version) in names.iter().zip(versions) {
        let path = package_path(name);
        let abbreviated = server.send(&Req::new("GET", &path).header("Accept", ABBREVIATED));
        let full = server.send(&Req::new("GET", &path).header("Accept", "application/json"));
        let tarball = server.get(&server.tarball_path(name, version));
        for answer in [abbreviated, full, tarball] {
            let Response {
                status,
                ref headers,
                ref body,
                ..
            } = answer;
            assert_eq!(status, 200, "{}", answer.describe());
            let etag = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            answers.push((status, etag, body.clone()));
        }
    }
    answers
}

/// Goal: a server left without requests for `--idle-release-secs` empties its packument cache
/// (and the per-core caches), says so in `/metrics`, and serves exactly the same documents and
/// tarballs afterwards, loading them again. Method: publish 12 packages, read every document
/// and tarball, scrape (cache bytes > 0), stay quiet past the delay (no request at all, since a
/// scrape counts as activity), scrape again (a release counted, cache bytes 0), read
/// everything again and compare, and check the documents were loaded from storage again.
#[test]
fn an_idle_server_empties_its_caches_and_answers_the_same() {
    let server = Server::launch(Launch {
        env: vec![(
            "AGENTREGISTRY_IDLE_RELEASE_SECS".to_owned(),
            RELEASE_SECS.to_string(),
        )],
        ..Launch::default()
    })
    .unwrap_or_else(|e| panic!("the server did not start:\n{}", e.log));
    let token = server.login("idle-user");
    let specs: Vec<(String, String, String)> = (0..12)
        .map(|i| {
            (
                format!("idle-pkg-{i}"),
                "1.0.0".to_owned(),
                format!("salt {i}"),
            )
        })
        .collect();
    let spec_refs: Vec<(&str, &str, &str)> = specs
        .iter()
        .map(|(n, v, s)| (n.as_str(), v.as_str(), s.as_str()))
        .collect();
    for fixture in fixtures(&spec_refs) {
        server.publish_ok(&token, &fixture);
    }
    let names: Vec<String> = specs.iter().map(|(n, _, _)| n.clone()).collect();
    let versions: Vec<String> = specs.iter().map(|(_, v, _)| v.clone()).collect();

    let warm = read_all(&server, &names, &versions);
    let started = Instant::now();
    let scrape = server.get("/-/metrics").text();
    let releases_before = sample(&scrape, "agentregistry_idle_releases_total");
    // A busy machine may have left a gap as long as the delay somewhere above; only a scrape
    // taken promptly after the reads can insist that the cache still holds them.
    if started.elapsed() < Duration::from_secs(1) {
        assert!(
            sample(&scrape, "agentregistry_packument_cache_bytes") > 0,
            "the reads filled the cache:\n{scrape}"
        );
    }
    let loads_before = sample(&scrape, "agentregistry_packument_cache_loads_total");

    // Quiet: nothing is sent until well past the delay (the release runs on a 250 ms tick).
    let mut scrape = String::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(RELEASE_SECS * 2 + 1));
        scrape = server.get("/-/metrics").text();
        if sample(&scrape, "agentregistry_idle_releases_total") > releases_before {
            break;
        }
    }
    assert!(
        sample(&scrape, "agentregistry_idle_releases_total") > releases_before,
        "no idle release within the deadline:\n{scrape}\n{}",
        server.log()
    );
    assert_eq!(
        sample(&scrape, "agentregistry_packument_cache_bytes"),
        0,
        "the release emptied the packument cache:\n{scrape}"
    );

    let again = read_all(&server, &names, &versions);
    assert_eq!(warm.len(), again.len());
    for (i, (before, after)) in warm.iter().zip(&again).enumerate() {
        assert_eq!(before, after, "answer {i} changed across the idle release");
    }
    let scrape = server.get("/-/metrics").text();
    assert!(
        sample(&scrape, "agentregistry_packument_cache_loads_total")
            >= loads_before + 2 * names.len() as u64,
        "both documents of every package were loaded again:\n{scrape}"
    );
    assert!(sample(&scrape, "agentregistry_packument_cache_bytes") > 0);
}
