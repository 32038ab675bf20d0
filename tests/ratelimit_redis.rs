//! The `Redis` rate-limit policy through the real gateway, against a real
//! `redis-server` started on a free port: several gateway processes sharing
//! one limit, and what clients see while Redis is down, hung, and after it
//! comes back.

mod common;

use common::redis::RedisServer;
use common::*;
use std::time::{Duration, Instant};

/// A gateway with `shards` shards and one route `r` under `/` limited by
/// `"shared"`: a day-long fixed window of `limit` requests for the whole
/// route, kept in Redis at `url`.
fn gateway(backend: &Backend, shards: usize, url: &str, limit: usize, policy: &str) -> Gateway {
    let algorithm = format!("FixedWindow(limit: {limit}, window_s: 86400)");
    gateway_with(backend, shards, url, &algorithm, policy)
}

/// The same with any algorithm (RON text).
fn gateway_with(
    backend: &Backend,
    shards: usize,
    url: &str,
    algorithm: &str,
    policy: &str,
) -> Gateway {
    let limits = format!(
        "\"shared\": RateLimit(key: Route, algorithm: {algorithm}, policy: Redis(url: \"{url}\", {policy})),"
    );
    let routes = "Route(name: \"r\", match: Match(path_prefix: \"/\"), upstream: \"app\", rate_limits: [\"shared\"])";
    let addr = backend.addr();
    Gateway::start(&rate_limited_config(&addr, shards, "", "", &limits, routes))
}

#[test]
fn every_algorithm_limits_through_redis_with_leases() {
    let redis = RedisServer::start();
    let backend = Backend::echo("b");
    for algorithm in [
        "TokenBucket(capacity: 5, refill_per_s: 0.001)",
        "LeakyBucket(capacity: 5, drain_per_s: 0.001)",
        "FixedWindow(limit: 5, window_s: 86400)",
        "SlidingWindow(limit: 5, window_s: 86400)",
        "SlidingLog(limit: 5, window_s: 86400)",
    ] {
        let gw = gateway_with(
            &backend,
            1,
            &redis.url(),
            algorithm,
            "lease: 2, timeout_ms: 500",
        );
        let mut c = Client::connect(gw.port);
        let statuses: Vec<u16> = (0..6).map(|_| c.get("/").status).collect();
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429], "{algorithm}");
        // (Each algorithm keeps its own Redis keys, so they do not mix.)
    }
    // A bucket that is full again within microseconds (a fresh one: on a new
    // server): a lease is still spendable (it does not end when the bucket
    // would be full).
    let fresh = RedisServer::start();
    let gw = gateway_with(
        &backend,
        1,
        &fresh.url(),
        "TokenBucket(capacity: 1000000, refill_per_s: 1000000)",
        "lease: 1, timeout_ms: 500",
    );
    let mut c = Client::connect(gw.port);
    let statuses: Vec<u16> = (0..20).map(|_| c.get("/").status).collect();
    assert_eq!(statuses, [200; 20]);
}

/// One GET on `c`, with how long it took.
fn timed(c: &mut Client, path: &str) -> (Resp, Duration) {
    let start = Instant::now();
    let r = c.get(path);
    (r, start.elapsed())
}

/// Sends GETs on `c` until one answers `want` (at most `within`); every
/// answer must come within `each` and be one of `allowed`. Returns the
/// statuses seen before `want`.
#[track_caller]
fn until_status(
    c: &mut Client,
    want: u16,
    allowed: &[u16],
    within: Duration,
    each: Duration,
) -> Vec<u16> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let (r, took) = timed(c, "/");
        assert!(
            took < each,
            "an answer ({}) took {took:?} (bound {each:?}); seen before: {seen:?}",
            r.status
        );
        if r.status == want {
            return seen;
        }
        assert!(
            allowed.contains(&r.status),
            "unexpected {} while waiting for {want}: {}",
            r.status,
            r.text()
        );
        seen.push(r.status);
        assert!(
            Instant::now() < deadline,
            "no {want} within {within:?}; seen {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_gateways_share_one_limit_within_the_documented_bound() {
    let redis = RedisServer::start();
    let backend = Backend::echo("b");
    let (instances, shards, lease, limit) = (2, 2, 5, 60);
    let policy = format!("fault_tolerant: false, lease: {lease}, timeout_ms: 500, retry_ms: 200");
    let a = gateway(&backend, shards, &redis.url(), limit, &policy);
    let b = gateway(&backend, shards, &redis.url(), limit, &policy);
    let both: Vec<_> = [a.port, b.port]
        .into_iter()
        .map(|port| std::thread::spawn(move || hammer(port, "/", 4, Duration::from_millis(1500))))
        .collect();
    let results: Vec<(usize, usize)> = both.into_iter().map(|t| t.join().unwrap()).collect();
    let admitted: usize = results.iter().map(|r| r.0).sum();
    let refused: usize = results.iter().map(|r| r.1).sum();
    eprintln!("per gateway (admitted, refused): {results:?}");
    let floor = limit - instances * shards * (lease - 1);
    assert!(
        admitted <= limit,
        "{admitted} admitted by two gateways sharing a limit of {limit}"
    );
    assert!(
        admitted >= floor,
        "only {admitted} admitted of {limit}; the documented bound is at least {floor}"
    );
    assert!(refused > 0, "nothing was refused");
    assert!(
        results.iter().all(|r| r.0 + r.1 > 0),
        "a gateway answered nothing: {results:?}"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        backend.count(),
        admitted,
        "the backend saw exactly the admitted requests"
    );
    // Both gateways now refuse, on new connections too.
    for port in [a.port, b.port] {
        let r = get(port, "/");
        assert_json_error(&r, 429);
        assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    }
}

#[test]
fn fault_tolerant_fails_open_while_redis_is_down_and_limits_again_after_a_restart() {
    let mut redis = RedisServer::start();
    let backend = Backend::echo("b");
    let mut gw = gateway(
        &backend,
        2,
        &redis.url(),
        5,
        "fault_tolerant: true, lease: 1, timeout_ms: 50, retry_ms: 200",
    );
    let mut c = Client::connect(gw.port);
    let before: Vec<u16> = (0..6).map(|_| c.get("/").status).collect();
    assert_eq!(before, [200, 200, 200, 200, 200, 429]);

    redis.kill();
    let t = Instant::now();
    // Refusals already decided locally may last up to a second; then every
    // request is admitted, each answered quickly.
    until_status(
        &mut c,
        200,
        &[429],
        Duration::from_secs(4),
        Duration::from_secs(1),
    );
    let open_at = Instant::now();
    let n = 30;
    for _ in 0..n {
        let (r, took) = timed(&mut c, "/");
        assert_eq!(r.status, 200, "fail-open: {}", r.text());
        assert!(took < Duration::from_secs(1), "an answer took {took:?}");
    }
    let open_for = open_at.elapsed();
    eprintln!(
        "failing open {:?} after the kill; {n} requests in {open_for:?}",
        t.elapsed()
    );
    assert!(
        gw.wait_stderr("Redis unavailable", Duration::from_secs(2)),
        "no log line about Redis; stderr:\n{}",
        gw.stderr()
    );
    // Logged once per retry interval (200 ms) per shard, not per request.
    let logged = gw.stderr().matches("Redis unavailable").count();
    let bound = 2 * (2 + open_for.as_millis() as usize / 200);
    assert!(
        logged <= bound.min(n / 2),
        "logged {logged} times for {} requests in {open_for:?}:\n{}",
        n + 1,
        gw.stderr()
    );

    // A fresh (empty) Redis on the same port: limiting resumes without
    // restarting the gateway, once the new window's 5 are used up.
    redis.restart();
    let seen = until_status(
        &mut c,
        429,
        &[200],
        Duration::from_secs(5),
        Duration::from_secs(1),
    );
    assert!(
        seen.len() >= 5,
        "only {} admitted after the restart",
        seen.len()
    );
    for _ in 0..3 {
        assert_json_error(&c.get("/"), 429);
    }
    assert_eq!(gw.wait_exit(Duration::ZERO), None, "the gateway exited");
}

#[test]
fn fail_closed_answers_503_quickly_while_redis_is_down_and_recovers_after_a_restart() {
    let mut redis = RedisServer::start();
    let backend = Backend::echo("b");
    let limit = 6;
    let gw = gateway(
        &backend,
        2,
        &redis.url(),
        limit,
        "fault_tolerant: false, lease: 2, timeout_ms: 50, retry_ms: 200",
    );
    let mut c = Client::connect(gw.port);
    let before: Vec<u16> = (0..7).map(|_| c.get("/").status).collect();
    assert_eq!(before, [200, 200, 200, 200, 200, 200, 429]);

    redis.kill();
    until_status(
        &mut c,
        503,
        &[429],
        Duration::from_secs(4),
        Duration::from_secs(1),
    );
    let served = backend.count();
    for _ in 0..10 {
        let (r, took) = timed(&mut c, "/");
        assert_json_error(&r, 503);
        assert!(took < Duration::from_secs(1), "a 503 took {took:?}");
    }
    assert_eq!(
        backend.count(),
        served,
        "a request passed while failing closed"
    );
    assert!(
        gw.wait_stderr("Redis unavailable", Duration::from_secs(2)),
        "no log line about Redis; stderr:\n{}",
        gw.stderr()
    );

    // Back with an empty window: exactly the limit again, then 429 (every
    // admission is a unit granted by the new server: nothing was admitted
    // without Redis).
    redis.restart();
    until_status(
        &mut c,
        200,
        &[503],
        Duration::from_secs(5),
        Duration::from_secs(1),
    );
    let rest: Vec<u16> = (1..=limit).map(|_| c.get("/").status).collect();
    assert_eq!(
        rest,
        [200, 200, 200, 200, 200, 429],
        "after the restart (the first 200 not shown)"
    );
    assert_eq!(backend.count(), 2 * limit);
}

#[test]
fn a_hung_redis_costs_at_most_the_timeout() {
    let redis = RedisServer::start();
    let backend = Backend::echo("b");
    let gw = gateway(
        &backend,
        1,
        &redis.url(),
        1000,
        "fault_tolerant: false, lease: 1, timeout_ms: 100, retry_ms: 300",
    );
    let mut c = Client::connect(gw.port);
    assert_eq!(c.get("/").status, 200);

    // The server stops answering (its socket still accepts): each request
    // waits at most about the timeout, then fails closed.
    redis.pause();
    let mut worst = Duration::ZERO;
    let mut failed = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        let (r, took) = timed(&mut c, "/");
        worst = worst.max(took);
        if r.status == 503 {
            assert_json_error(&r, 503);
            failed += 1;
        } else {
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    eprintln!("while hung: {failed} × 503, worst answer {worst:?}");
    assert!(failed >= 3, "only {failed} requests failed closed");
    assert!(
        worst < Duration::from_millis(800),
        "an answer took {worst:?} with a 100 ms Redis timeout"
    );

    // Once it answers again, requests pass again.
    redis.resume();
    until_status(
        &mut c,
        200,
        &[503],
        Duration::from_secs(5),
        Duration::from_secs(1),
    );
}
