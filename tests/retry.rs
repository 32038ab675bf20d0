//! Retries through the real binary: to another target, only when safe, and
//! never beyond the budget.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

fn retry(extra: &str) -> String {
    format!("retry: Some(Retry(backoff_base_ms: 1, {extra}))")
}

#[test]
fn retries_go_to_another_target() {
    let bad = Backend::start(|_| Response::ok("{}").status(503));
    let good = Backend::echo("good");
    let ups = upstream(
        "svc",
        &[&bad.addr(), &good.addr()],
        &retry("max_attempts: 2"),
    );
    let gw = Gateway::start(&config(1, &ups, &catch_all("svc")));
    let mut c = Client::connect(gw.port);
    for i in 0..10 {
        assert_eq!(c.get("/x").status, 200, "request {i}");
    }
    assert_eq!(good.count(), 10);
    // Each 503 was retried on the other target (never on the same one).
    assert!(bad.count() >= 1 && bad.count() <= 10, "{}", bad.count());
}

#[test]
fn connect_failures_are_retried_on_another_target() {
    let good = Backend::echo("good");
    let dead = format!("127.0.0.1:{}", closed_port());
    let ups = upstream("svc", &[&dead, &good.addr()], &retry("max_attempts: 2"));
    let gw = Gateway::start(&config(1, &ups, &catch_all("svc")));
    for i in 0..6 {
        assert_eq!(get(gw.port, "/x").status, 200, "request {i}");
    }
    assert_eq!(good.count(), 6);
}

#[test]
fn post_is_not_retried_unless_the_route_says_so() {
    let bad = Backend::start(|_| Response::ok("{}").status(503));
    let good = Backend::echo("good");
    let ups = upstream(
        "svc",
        &[&bad.addr(), &good.addr()],
        &retry("max_attempts: 2"),
    );
    let routes = "        Route(name: \"plain\", match: Match(path_prefix: \"/plain\"), upstream: \"svc\"),\n        Route(name: \"opted\", match: Match(path_prefix: \"/opted\"), upstream: \"svc\", retry_non_idempotent: true),\n";
    let gw = Gateway::start(&config(1, &ups, routes));
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(request(gw.port, "POST", "/plain", &[], b"{\"a\":1}").status);
    }
    assert!(statuses.contains(&503), "{statuses:?}");
    assert_eq!(bad.count() + good.count(), 6, "one try per POST");
    let (b0, g0) = (bad.count(), good.count());
    for _ in 0..6 {
        assert_eq!(
            request(gw.port, "POST", "/opted", &[], b"{\"a\":1}").status,
            200
        );
    }
    assert_eq!(good.count() - g0, 6);
    assert!(bad.count() > b0, "some went to the failing target first");
    assert!(
        good.requests().iter().all(|r| r.body == b"{\"a\":1}"),
        "the body was sent again"
    );
}

#[test]
fn no_retry_after_the_response_started() {
    // Answers a head and part of the body, then closes.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    {
        let accepted = accepted.clone();
        thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                accepted.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial");
                drop(s);
            }
        });
    }
    let ups = upstream("svc", &[&addr], &retry("max_attempts: 3"));
    let gw = Gateway::start(&config(1, &ups, &catch_all("svc")));
    let mut c = Client::connect(gw.port);
    c.send(&build_request("GET", "/x", &[], b""));
    let got = c
        .wait_closed(std::time::Duration::from_secs(5))
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("partial"), "{text}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "not tried again");
}

#[test]
fn the_budget_bounds_retries_when_the_upstream_is_down() {
    let down = Backend::start(|_| Response::ok("{}").status(503));
    let ups = upstream(
        "svc",
        &[&down.addr()],
        &retry("max_attempts: 5, budget_ratio: 0.2, budget_floor_per_s: 0"),
    );
    let cfg = config(1, &ups, &catch_all("svc")).replace(
        "    upstreams:",
        "    admin: Some(Admin(bind: \"127.0.0.1:$PORT2\")),\n    upstreams:",
    );
    let gw = Gateway::start(&cfg);
    let mut c = Client::connect(gw.port);
    let n = 50;
    for _ in 0..n {
        assert_eq!(c.get("/x").status, 503);
    }
    let seen = down.count();
    assert!(seen <= n + n / 5, "{seen} tries for {n} requests");
    assert!(seen > n, "some retries were made: {seen}");
    let m = get(gw.port2, "/metrics").text();
    let sent = format!(
        "shardgate_upstream_retries_total{{upstream=\"svc\",result=\"sent\"}} {}",
        seen - n
    );
    assert!(m.contains(&sent), "{sent} in\n{m}");
    assert!(
        !m.contains(
            "shardgate_upstream_retries_total{upstream=\"svc\",result=\"budget_exhausted\"} 0\n"
        ),
        "the budget refused some: {m}"
    );
}

#[test]
fn a_slow_target_is_left_after_the_per_try_timeout() {
    let slow = Backend::start(|_| Response::ok("slow").delay(std::time::Duration::from_secs(3)));
    let fast = Backend::echo("fast");
    let ups = upstream(
        "svc",
        &[&slow.addr(), &fast.addr()],
        &retry("max_attempts: 2, per_try_timeout_ms: Some(200)"),
    );
    let gw = Gateway::start(&config(1, &ups, &catch_all("svc")));
    let started = std::time::Instant::now();
    for i in 0..4 {
        assert_eq!(get(gw.port, "/x").status, 200, "request {i}");
    }
    assert_eq!(fast.count(), 4);
    assert!(
        slow.count() >= 1,
        "some first tries went to the slow target"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "no request waited for the slow target's answer"
    );
}

#[test]
fn without_per_try_timeout_a_timeout_is_not_retried() {
    let slow = Backend::start(|_| Response::ok("slow").delay(std::time::Duration::from_secs(2)));
    let ups = upstream(
        "svc",
        &[&slow.addr()],
        &format!("timeout_ms: 200, {}", retry("max_attempts: 3")),
    );
    let gw = Gateway::start(&config(1, &ups, &catch_all("svc")));
    assert_json_error(&get(gw.port, "/x"), 504);
    assert_eq!(slow.count(), 1);
}
