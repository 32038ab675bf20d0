//! Active health checks through the real binary, with two shards: a target
//! failing its probes leaves the balancing on every shard and comes back
//! when it passes again; with every target unhealthy the gateway answers
//! 503, or tries them all with `panic_routing`; a reload makes probing
//! follow the new config; the view reaches each of four shards.

mod common;
mod targets_support;

use common::*;
use std::time::Duration;
use targets_support::*;

const CHECK: &str = "health_check: Some(HealthCheck(path: \"/health\", interval_ms: 100, timeout_ms: 300, healthy_threshold: 2, unhealthy_threshold: 2))";

#[test]
fn a_failing_health_check_removes_a_target_and_a_passing_one_re_adds_it() {
    let (a, b) = (Named::start("a"), Named::start("b"));
    let ups = format!(
        "        \"app\": Upstream(targets: [{:?}, {:?}], {CHECK}),\n",
        a.addr(),
        b.addr()
    );
    let gw = Gateway::start(&gateway(&ups, &["app"]));
    // Both take traffic at first.
    let (ok, other) = spread(gw.port, "/app/x", 20);
    assert!(other.is_empty(), "{other:?}");
    assert!(ok.iter().any(|t| t == "b") && ok.iter().any(|t| t == "a"));
    assert!(b.backend.wait_for(1, Duration::from_secs(3)));
    assert!(b.probes() > 0, "the prober asks /health");

    b.switch.set_health(503);
    assert!(
        wait_health(&gw, "app", &b.addr(), "unhealthy", Duration::from_secs(5)),
        "{}",
        gw.stderr()
    );
    let label = format!(
        "shardgate_upstream_target_healthy{{upstream=\"app\",target=\"{}\"}}",
        b.addr()
    );
    assert_eq!(metric(&gw, &label), Some(0.0));
    // Shards apply the view within one control tick; then no shard sends b anything.
    std::thread::sleep(Duration::from_millis(100));
    let before = b.served();
    let (ok, other) = spread(gw.port, "/app/x", 40);
    assert!(other.is_empty(), "{other:?}");
    assert!(ok.iter().all(|t| t == "a"), "{ok:?}");
    assert_eq!(b.served(), before, "an unhealthy target got traffic");

    b.switch.set_health(200);
    assert!(wait_health(
        &gw,
        "app",
        &b.addr(),
        "healthy",
        Duration::from_secs(5)
    ));
    assert_eq!(metric(&gw, &label), Some(1.0));
    std::thread::sleep(Duration::from_millis(100));
    let (ok, _) = spread(gw.port, "/app/x", 40);
    let to_b = ok.iter().filter(|t| *t == "b").count();
    assert!(to_b >= 10, "b is back in the pool: {to_b} of 40");
    assert!(gw.stderr().contains("is unhealthy") && gw.stderr().contains("is healthy"));
}

#[test]
fn every_target_unhealthy_is_a_503_unless_panic_routing() {
    let (a, b) = (Named::start("a"), Named::start("b"));
    let (c, d) = (Named::start("c"), Named::start("d"));
    for n in [&a, &b, &c, &d] {
        n.switch.set_health(500);
    }
    let ups = format!(
        "        \"strict\": Upstream(targets: [{:?}, {:?}], {CHECK}),\n        \"panic\": Upstream(targets: [{:?}, {:?}], {CHECK}, panic_routing: true),\n",
        a.addr(),
        b.addr(),
        c.addr(),
        d.addr()
    );
    let gw = Gateway::start(&gateway(&ups, &["strict", "panic"]));
    for (up, n) in [("strict", &a), ("strict", &b), ("panic", &c), ("panic", &d)] {
        assert!(
            wait_health(&gw, up, &n.addr(), "unhealthy", Duration::from_secs(5)),
            "{up} {}",
            n.name
        );
    }
    std::thread::sleep(Duration::from_millis(100));
    let r = get(gw.port, "/strict/x");
    assert_json_error(&r, 503);
    assert!(r.text().contains("strict"), "{}", r.text());
    assert!(r.text().contains("no healthy target"), "{}", r.text());
    assert_eq!(a.served() + b.served(), 0);
    // Panic mode: every target is tried anyway.
    let (ok, other) = spread(gw.port, "/panic/x", 20);
    assert!(other.is_empty(), "{other:?}");
    assert!(
        ok.iter().any(|t| t == "c") && ok.iter().any(|t| t == "d"),
        "{ok:?}"
    );
}

#[test]
fn probing_follows_a_reload() {
    let (a, b) = (Named::start("a"), Named::start("b"));
    b.switch.set_health(503);
    let plain = format!(
        "        \"app\": Upstream(targets: [{:?}, {:?}]),\n",
        a.addr(),
        b.addr()
    );
    let gw = Gateway::start(&gateway(&plain, &["app"]));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b.probes(), 0, "no health_check, no probes");
    let (ok, _) = spread(gw.port, "/app/x", 10);
    assert!(ok.iter().any(|t| t == "b"));

    let checked = format!(
        "        \"app\": Upstream(targets: [{:?}, {:?}], {CHECK}),\n",
        a.addr(),
        b.addr()
    );
    gw.rewrite_config(&gateway(&checked, &["app"]));
    gw.send_signal("HUP");
    assert!(gw.wait_stderr("reloaded", Duration::from_secs(5)));
    assert!(wait_health(
        &gw,
        "app",
        &b.addr(),
        "unhealthy",
        Duration::from_secs(5)
    ));
    std::thread::sleep(Duration::from_millis(100));
    let before = b.served();
    let (ok, _) = spread(gw.port, "/app/x", 20);
    assert!(ok.iter().all(|t| t == "a"), "{ok:?}");
    assert_eq!(b.served(), before);

    // Dropping the check again stops the probes.
    gw.rewrite_config(&gateway(&plain, &["app"]));
    gw.send_signal("HUP");
    assert!(wait_health(
        &gw,
        "app",
        &b.addr(),
        "healthy",
        Duration::from_secs(5)
    ));
    std::thread::sleep(Duration::from_millis(300));
    let probes = b.probes();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(b.probes(), probes, "probing stopped");
}

#[test]
fn the_health_view_reaches_each_of_four_shards() {
    let (a, b) = (Named::start("a"), Named::start("b"));
    let ups = format!(
        "        \"app\": Upstream(targets: [{:?}, {:?}], {CHECK}),\n",
        a.addr(),
        b.addr()
    );
    let gw = Gateway::start(&gateway_with_shards(4, &ups, &["app"]));
    b.switch.set_health(503);
    assert!(wait_health(
        &gw,
        "app",
        &b.addr(),
        "unhealthy",
        Duration::from_secs(5)
    ));
    std::thread::sleep(Duration::from_millis(100));
    let before = b.served();
    // 80 new connections: the kernel's hash gives every one of the four shards some.
    let (ok, other) = spread(gw.port, "/app/x", 80);
    assert!(other.is_empty(), "{other:?}");
    assert!(ok.iter().all(|t| t == "a"), "{ok:?}");
    assert_eq!(b.served(), before);
}
