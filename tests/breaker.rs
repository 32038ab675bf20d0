//! Circuit breakers and fallbacks through the real binary, against backends
//! that refuse, hang and answer 500.

mod common;

use common::*;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

fn gateway(shards: usize, upstreams: &str, routes: &str) -> Gateway {
    let cfg = config(shards, upstreams, routes).replace(
        "    upstreams:",
        "    admin: Some(Admin(bind: \"127.0.0.1:$PORT2\")),\n    upstreams:",
    );
    Gateway::start(&cfg)
}

/// A backend answering with the status in `status` (switchable).
fn switchable(status: &Arc<AtomicU16>) -> Backend {
    let s = status.clone();
    Backend::start(move |_| Response::ok("{\"ok\":true}").status(s.load(Ordering::SeqCst)))
}

fn breaker(extra: &str) -> String {
    format!("circuit_breaker: Some(CircuitBreaker({extra}))")
}

#[test]
fn opens_after_the_threshold_and_stops_calling_the_upstream() {
    let status = Arc::new(AtomicU16::new(500));
    let b = switchable(&status);
    let ups = upstream(
        "svc",
        &[&b.addr()],
        &breaker("min_requests: 4, failure_ratio: 0.5, window_s: 30, open_s: 30"),
    );
    let gw = gateway(1, &ups, &catch_all("svc"));
    let mut c = Client::connect(gw.port);
    for i in 0..4 {
        let r = c.get("/x");
        assert_eq!(r.status, 500, "call {i} goes through while closed");
    }
    assert_eq!(b.count(), 4);
    for _ in 0..10 {
        let r = c.get("/x");
        assert_json_error(&r, 503);
        assert_eq!(r.json_str("upstream").as_deref(), Some("svc"));
        assert!(r.text().contains("circuit breaker"), "{}", r.text());
        let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=30).contains(&after), "Retry-After {after}");
    }
    assert_eq!(b.count(), 4, "no call reaches the upstream while open");
    let m = get(gw.port2, "/metrics").text();
    assert!(
        m.contains("shardgate_circuit_breaker_state{upstream=\"svc\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("shardgate_circuit_breaker_transitions_total{upstream=\"svc\",to=\"open\"} 1"),
        "{m}"
    );
    let u = get(gw.port2, "/upstreams").text();
    assert!(u.contains("\"state\": \"open\""), "{u}");
}

#[test]
fn successes_below_the_ratio_keep_it_closed() {
    let status = Arc::new(AtomicU16::new(200));
    let b = switchable(&status);
    let ups = upstream(
        "svc",
        &[&b.addr()],
        &breaker("min_requests: 4, failure_ratio: 0.5, window_s: 30, open_s: 30"),
    );
    let gw = gateway(1, &ups, &catch_all("svc"));
    let mut c = Client::connect(gw.port);
    for i in 0..20u32 {
        // One failure in four stays below half.
        status.store(
            if i.is_multiple_of(4) { 500 } else { 200 },
            Ordering::SeqCst,
        );
        let r = c.get("/x");
        assert_ne!(r.status, 503, "request {i}");
    }
    assert_eq!(b.count(), 20);
}

#[test]
fn half_open_trial_closes_and_reopens() {
    let status = Arc::new(AtomicU16::new(500));
    let b = switchable(&status);
    let ups = upstream(
        "svc",
        &[&b.addr()],
        &breaker("min_requests: 100, window_s: 30, open_s: 1, half_open_requests: 1, consecutive_failures: Some(2)"),
    );
    let gw = gateway(1, &ups, &catch_all("svc"));
    let mut c = Client::connect(gw.port);
    c.get("/x");
    c.get("/x");
    assert_eq!(c.get("/x").status, 503);
    assert_eq!(b.count(), 2);
    // Recovered: after open_s one trial goes through and closes it.
    status.store(200, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(c.get("/x").status, 200, "the trial");
    for _ in 0..5 {
        assert_eq!(c.get("/x").status, 200, "closed again");
    }
    assert_eq!(b.count(), 8);
    // Failing again: trips, and a failed trial re-opens it at once.
    status.store(500, Ordering::SeqCst);
    c.get("/x");
    c.get("/x");
    assert_eq!(c.get("/x").status, 503);
    let before = b.count();
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(c.get("/x").status, 500, "the failing trial");
    for _ in 0..5 {
        assert_eq!(c.get("/x").status, 503, "re-opened");
    }
    assert_eq!(
        b.count(),
        before + 1,
        "exactly one trial reached the upstream"
    );
    let m = get(gw.port2, "/metrics").text();
    for (to, n) in [("open", 3), ("half_open", 2), ("closed", 1)] {
        let line = format!(
            "shardgate_circuit_breaker_transitions_total{{upstream=\"svc\",to=\"{to}\"}} {n}"
        );
        assert!(m.contains(&line), "{line} in\n{m}");
    }
}

#[test]
fn opens_on_every_shard() {
    let status = Arc::new(AtomicU16::new(500));
    let b = switchable(&status);
    let ups = upstream(
        "svc",
        &[&b.addr()],
        &breaker("min_requests: 100, window_s: 30, open_s: 30, consecutive_failures: Some(3)"),
    );
    let gw = gateway(4, &ups, &catch_all("svc"));
    // One connection lives on one shard: it trips the breaker there.
    let mut c = Client::connect(gw.port);
    for _ in 0..3 {
        assert_eq!(c.get("/x").status, 500);
    }
    // Every shard hears of it within a control tick.
    thread::sleep(Duration::from_millis(100));
    let mut refused = 0;
    for _ in 0..32 {
        let r = get(gw.port, "/x");
        if r.status == 503 && r.json_str("upstream").as_deref() == Some("svc") {
            refused += 1;
        }
    }
    assert_eq!(refused, 32, "new connections on every shard are refused");
    assert_eq!(b.count(), 3, "no other shard called the upstream");
}

#[test]
fn a_refusing_upstream_trips_it_and_the_static_fallback_answers() {
    let port = closed_port();
    let ups = upstream(
        "svc",
        &[&format!("127.0.0.1:{port}")],
        &breaker("min_requests: 3, failure_ratio: 0.5, window_s: 30, open_s: 30"),
    );
    let route = "        Route(name: \"all\", match: Match(path_prefix: \"/\"), upstream: \"svc\",\n            fallback: Some(Static(status: 200, headers: { \"Cache-Control\": \"no-store\" }, body: \"{\\\"items\\\":[]}\"))),\n";
    let gw = gateway(1, &ups, route);
    let mut c = Client::connect(gw.port);
    for _ in 0..3 {
        let r = c.get("/items");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-fallback"), Some("connect-error"));
        assert_eq!(r.text(), "{\"items\":[]}");
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let r = c.get("/items");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-fallback"), Some("circuit-open"));
    let r = c.get("/items");
    assert_eq!(r.header("x-fallback"), Some("circuit-open"));
    let m = get(gw.port2, "/metrics").text();
    for (reason, n) in [("connect-error", 3), ("circuit-open", 2), ("timeout", 0)] {
        let line = format!("shardgate_fallbacks_total{{upstream=\"svc\",reason=\"{reason}\"}} {n}");
        assert!(m.contains(&line), "{line} in\n{m}");
    }
}

#[test]
fn alternate_upstream_answers_for_a_failing_one() {
    let failing = Backend::start(|_| Response::ok("{\"error\":\"boom\"}").status(500));
    let alt = Backend::echo("alt");
    let ups = format!(
        "{}{}",
        upstream("main", &[&failing.addr()], ""),
        upstream("alt", &[&alt.addr()], "")
    );
    let route = "        Route(name: \"all\", match: Match(path_prefix: \"/\"), upstream: \"main\",\n            fallback: Some(Alternate(upstream: \"alt\"))),\n";
    let gw = gateway(1, &ups, route);
    let r = request(
        gw.port,
        "POST",
        "/orders",
        &[("content-type", "application/json")],
        b"{\"n\":1}",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-fallback"), Some("upstream-5xx"));
    assert_eq!(failing.count(), 1);
    assert_eq!(alt.count(), 1);
    assert_eq!(
        alt.last().body,
        b"{\"n\":1}",
        "the body went to the alternate too"
    );
    assert_eq!(alt.last().target, "/orders");
}

#[test]
fn a_hanging_upstream_times_out_per_route_and_falls_back() {
    let hanging = Backend::start(|_| Response::ok("late").delay(Duration::from_secs(5)));
    let ups = upstream("slow", &[&hanging.addr()], "timeout_ms: 10000");
    let route = "        Route(name: \"all\", match: Match(path_prefix: \"/\"), upstream: \"slow\", timeout_ms: Some(300),\n            fallback: Some(Static(status: 503, body: \"{\\\"error\\\":\\\"try later\\\"}\"))),\n";
    let gw = gateway(1, &ups, route);
    let started = Instant::now();
    let r = get(gw.port, "/x");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-fallback"), Some("timeout"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the route's timeout applies, not the upstream's"
    );
}

#[test]
fn deadline_covers_all_tries() {
    let hanging = Backend::start(|_| Response::ok("late").delay(Duration::from_secs(5)));
    let ups = upstream("slow", &[&hanging.addr()], "timeout_ms: 10000");
    let route = "        Route(name: \"all\", match: Match(path_prefix: \"/\"), upstream: \"slow\", deadline_ms: Some(500),\n            retry: Some(Retry(max_attempts: 5, per_try_timeout_ms: Some(200), backoff_base_ms: 1))),\n";
    let gw = gateway(1, &ups, route);
    let started = Instant::now();
    let r = get(gw.port, "/x");
    assert_json_error(&r, 504);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(
        hanging.count() <= 3,
        "{} tries within the deadline",
        hanging.count()
    );
}

#[test]
fn check_reports_bad_resilience_settings_with_their_lines() {
    let text = r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "main", bind: "127.0.0.1:8080")],
    upstreams: {
        "svc": Upstream(targets: ["127.0.0.1:9001"],
            circuit_breaker: Some(CircuitBreaker(failure_ratio: 1.5, open_s: 0)),
            retry: Some(Retry(max_attempts: 0, retry_on_statuses: [999]))),
    },
    routes: [
        Route(name: "a", match: Match(path_prefix: "/a"), upstream: "svc",
              fallback: Some(Alternate(upstream: "nope"))),
        Route(name: "b", match: Match(path_prefix: "/b"), upstream: "svc", deadline_ms: Some(0),
              fallback: Some(Static(status: 200, headers: { "Content-Length": "3" }, body: "{}"))),
    ],
)
"#;
    let dir = temp_dir();
    let file = dir.join("bad.ron");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(bin())
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    for (field, line) in [
        (
            "upstreams.svc.circuit_breaker.failure_ratio",
            line_of("circuit_breaker"),
        ),
        (
            "upstreams.svc.circuit_breaker.open_s",
            line_of("circuit_breaker"),
        ),
        ("upstreams.svc.retry.max_attempts", line_of("retry:")),
        ("upstreams.svc.retry.retry_on_statuses", line_of("retry:")),
        ("routes[0].fallback", line_of("\"nope\"")),
        ("routes[1].deadline_ms", line_of("deadline_ms")),
        ("routes[1].fallback", line_of("Content-Length")),
    ] {
        let want = format!(":{line}:");
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&format!(" {field}: ")) && l.contains(&want)),
            "{field} at line {line} in:\n{stderr}"
        );
    }
}

#[test]
fn one_trial_host_wide_while_half_open() {
    let status = Arc::new(AtomicU16::new(500));
    let slow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let b = {
        let (s, slow) = (status.clone(), slow.clone());
        Backend::start(move |_| {
            let r = Response::ok("{}").status(s.load(Ordering::SeqCst));
            if slow.load(Ordering::SeqCst) {
                r.delay(Duration::from_millis(500))
            } else {
                r
            }
        })
    };
    let ups = upstream(
        "svc",
        &[&b.addr()],
        &format!(
            "timeout_ms: 2000, {}",
            breaker("min_requests: 100, open_s: 1, half_open_requests: 1, consecutive_failures: Some(2)")
        ),
    );
    let gw = gateway(4, &ups, &catch_all("svc"));
    let mut c = Client::connect(gw.port);
    c.get("/x");
    c.get("/x");
    assert_eq!(c.get("/x").status, 503);
    // Healthy again, but slow: the trial is still running while the others ask.
    status.store(200, Ordering::SeqCst);
    slow.store(true, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(1150));
    let before = b.count();
    let port = gw.port;
    let others: Vec<_> = (0..15)
        .map(|_| thread::spawn(move || get(port, "/x").status))
        .collect();
    // The tripping shard has the first turn: this connection lives there.
    let mine = c.get("/x").status;
    let mut statuses: Vec<u16> = others.into_iter().map(|t| t.join().unwrap()).collect();
    statuses.push(mine);
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        1,
        "one trial: {statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|&&s| s == 503).count(), 15);
    assert_eq!(b.count(), before + 1, "one request reached the upstream");
    // The trial succeeded: closed on every shard.
    slow.store(false, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(100));
    for _ in 0..12 {
        assert_eq!(get(gw.port, "/x").status, 200);
    }
}

#[test]
fn aggregate_parts_respect_the_breaker() {
    let status = Arc::new(AtomicU16::new(500));
    let b = switchable(&status);
    let ups = upstream(
        "svc",
        &[&b.addr()],
        &breaker("min_requests: 100, open_s: 30, consecutive_failures: Some(3)"),
    );
    let route = "        Route(name: \"agg\", match: Match(path: \"/agg\"),\n            aggregate: Aggregate(timeout_ms: 2000, parts: [Part(name: \"p\", upstream: \"svc\", path: \"/x\", required: false)])),\n";
    let gw = gateway(1, &ups, route);
    let mut c = Client::connect(gw.port);
    for _ in 0..3 {
        c.get("/agg");
    }
    assert_eq!(b.count(), 3);
    for _ in 0..5 {
        let r = c.get("/agg");
        assert!(r.text().contains("circuit breaker"), "{}", r.text());
    }
    assert_eq!(b.count(), 3, "open: the parts do not call the upstream");
}
