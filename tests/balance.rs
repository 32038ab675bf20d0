//! Outlier ejection and balancing through the real binary, with two shards
//! and real backends: a failing target is ejected on every shard and
//! re-admitted after its ejection time; `max_ejection_percent` keeps part of
//! the pool in; peak EWMA keeps traffic off a target made slow; weights
//! share traffic in proportion; consistent hashing keeps each key on its
//! target and moves only the removed target's keys.

mod common;
mod targets_support;

use common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use targets_support::*;

const OUTLIER: &str = "outlier_detection: Some(OutlierDetection(consecutive_5xx: 3, consecutive_connect_failures: 2, base_ejection_s: 2, max_ejection_percent: 50))";

/// Sends requests (new connections) until `target` is ejected or `wait` passes.
fn drive_until_ejected(gw: &Gateway, path: &str, up: &str, target: &str, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let _ = spread(gw.port, path, 10);
        if health(gw, up, target) == "ejected" {
            return true;
        }
    }
    false
}

#[test]
fn a_failing_target_is_ejected_everywhere_and_re_admitted() {
    let (a, b) = (Named::start("a"), Named::start("b"));
    b.switch.set_status(500);
    let ups = format!(
        "        \"app\": Upstream(targets: [{:?}, {:?}], {OUTLIER}),\n",
        a.addr(),
        b.addr()
    );
    let gw = Gateway::start(&gateway(&ups, &["app"]));
    assert!(
        drive_until_ejected(&gw, "/app/x", "app", &b.addr(), Duration::from_secs(5)),
        "{}",
        gw.stderr()
    );
    let ejected_at = Instant::now();
    std::thread::sleep(Duration::from_millis(100));
    // No shard sends it anything while it is out.
    let before = b.served();
    let (ok, other) = spread(gw.port, "/app/x", 30);
    let in_window = ejected_at.elapsed() < Duration::from_millis(1800);
    assert!(other.is_empty(), "{other:?}");
    assert!(ok.iter().all(|t| t == "a"), "{ok:?}");
    if in_window {
        assert_eq!(b.served(), before, "an ejected target got traffic");
    }
    let label = format!(
        "shardgate_upstream_ejections_total{{upstream=\"app\",target=\"{}\"}}",
        b.addr()
    );
    assert_eq!(metric(&gw, &label), Some(1.0));
    assert!(gw.stderr().contains("ejected (outlier)"));

    // Healed, it is re-admitted once the 2 s are over and gets traffic again.
    b.switch.set_status(200);
    assert!(wait_health(
        &gw,
        "app",
        &b.addr(),
        "healthy",
        Duration::from_secs(4)
    ));
    assert!(ejected_at.elapsed() >= Duration::from_millis(1900));
    std::thread::sleep(Duration::from_millis(100));
    let (ok, _) = spread(gw.port, "/app/x", 30);
    assert!(ok.iter().filter(|t| *t == "b").count() >= 5, "{ok:?}");
    assert!(gw.stderr().contains("re-admitted"));
}

#[test]
fn refused_connections_eject_too_and_the_cap_keeps_half_the_pool() {
    let (a, b) = (Named::start("a"), Named::start("b"));
    let dead = format!("127.0.0.1:{}", closed_port());
    a.switch.set_status(500);
    b.switch.set_status(500);
    // Ejections outlast the test: no re-admission gets in the way of the cap.
    let long = OUTLIER.replace("base_ejection_s: 2", "base_ejection_s: 60");
    let ups = format!(
        "        \"refusing\": Upstream(targets: [{:?}, {dead:?}], connect_timeout_ms: 300, {long}),\n        \"failing\": Upstream(targets: [{:?}, {:?}], {long}),\n",
        a.addr(),
        a.addr(),
        b.addr()
    );
    let gw = Gateway::start(&gateway(&ups, &["refusing", "failing"]));
    // A target refusing connections is ejected after two failed connects.
    a.switch.set_status(200);
    assert!(drive_until_ejected(
        &gw,
        "/refusing/x",
        "refusing",
        &dead,
        Duration::from_secs(5)
    ));
    std::thread::sleep(Duration::from_millis(100));
    let (_, other) = spread(gw.port, "/refusing/x", 20);
    assert!(
        other.is_empty(),
        "no request goes to the refusing target: {other:?}"
    );

    // Both targets of "failing" fail, but at most half of it is ejected.
    a.switch.set_status(500);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut ejected = 0;
    while Instant::now() < deadline && ejected == 0 {
        let _ = spread(gw.port, "/failing/x", 10);
        ejected = [a.addr(), b.addr()]
            .iter()
            .filter(|t| health(&gw, "failing", t) == "ejected")
            .count();
    }
    assert_eq!(ejected, 1);
    // Failing on, the other one stays in.
    let _ = spread(gw.port, "/failing/x", 30);
    let states: Vec<String> = [a.addr(), b.addr()]
        .iter()
        .map(|t| health(&gw, "failing", t))
        .collect();
    assert_eq!(
        states.iter().filter(|s| *s == "ejected").count(),
        1,
        "{states:?}"
    );
    assert_eq!(
        states.iter().filter(|s| *s == "healthy").count(),
        1,
        "{states:?}"
    );
}

#[test]
fn peak_ewma_sends_most_traffic_away_from_a_slow_target() {
    let (a, b) = (Named::start("a"), Named::start("b"));
    b.switch.set_delay_ms(150);
    let ups = format!(
        "        \"ewma\": Upstream(targets: [{:?}, {:?}], balance: PeakEwma),\n        \"rr\": Upstream(targets: [{:?}, {:?}]),\n",
        a.addr(),
        b.addr(),
        a.addr(),
        b.addr()
    );
    let gw = Gateway::start(&gateway(&ups, &["ewma", "rr"]));
    let (ok, other) = spread(gw.port, "/ewma/x", 60);
    assert!(other.is_empty(), "{other:?}");
    let slow = ok.iter().filter(|t| *t == "b").count();
    assert!(slow <= 10, "the slow target got {slow} of 60");
    // Round-robin over the same targets gives it half.
    let (ok, _) = spread(gw.port, "/rr/x", 20);
    let slow_rr = ok.iter().filter(|t| *t == "b").count();
    assert!((6..=14).contains(&slow_rr), "{slow_rr} of 20");

    // Made fast again and the other made slow, traffic follows.
    b.switch.set_delay_ms(0);
    a.switch.set_delay_ms(150);
    let (ok, _) = spread(gw.port, "/ewma/x", 60);
    let to_a = ok.iter().filter(|t| *t == "a").count();
    assert!(to_a <= 15, "the now slow target got {to_a} of 60");
}

#[test]
fn weights_share_traffic_in_proportion() {
    let (a, b) = (Named::start("a"), Named::start("b"));
    let ups = format!(
        "        \"app\": Upstream(targets: [{:?}, {:?}], weights: {{ {:?}: 3 }}),\n",
        a.addr(),
        b.addr(),
        a.addr()
    );
    let gw = Gateway::start(&gateway(&ups, &["app"]));
    let (ok, other) = spread(gw.port, "/app/x", 80);
    assert!(other.is_empty(), "{other:?}");
    let to_a = ok.iter().filter(|t| *t == "a").count();
    // Each shard walks a a b a: exactly 3:1 over every four of its requests.
    assert!((54..=66).contains(&to_a), "a got {to_a} of 80");
    let v = upstreams(&gw);
    let weights: Vec<u64> = v["upstreams"][0]["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["weight"].as_u64())
        .collect();
    assert_eq!(weights, vec![3, 1], "{v}");
    // A weight naming no target is refused.
    let bad = gateway(
        &format!(
            "        \"app\": Upstream(targets: [{:?}], weights: {{ \"127.0.0.1:1\": 2 }}),\n",
            a.addr()
        ),
        &["app"],
    );
    let dir = temp_dir();
    let file = dir.join("bad.ron");
    std::fs::write(&file, bad.replace("$PORT2", "1").replace("$PORT", "2")).unwrap();
    let (status, _, err) = run_cli(&["check", file.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("weights"), "{err}");
}

#[test]
fn consistent_hashing_moves_only_the_removed_targets_keys() {
    let ts: Vec<Named> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| Named::start(n))
        .collect();
    let list = |n: usize| -> String {
        ts.iter()
            .take(n)
            .map(|t| format!("{:?}", t.addr()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let cfg = |n: usize| {
        gateway(
            &format!(
                "        \"app\": Upstream(targets: [{}], balance: ConsistentHash(Header(\"x-user\"))),\n",
                list(n)
            ),
            &["app"],
        )
    };
    let gw = Gateway::start(&cfg(4));
    let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let map = |gw: &Gateway| -> HashMap<String, String> {
        keys.iter()
            .map(|k| {
                let r = get_with(gw.port, "/app/x", &[("x-user", k)]);
                assert_eq!(r.status, 200, "{}", r.text());
                (k.clone(), r.text())
            })
            .collect()
    };
    let first = map(&gw);
    // Stable from request to request, whichever shard takes the connection.
    assert_eq!(map(&gw), first);
    let on_d = first.values().filter(|t| *t == "d").count();
    assert!((20..=90).contains(&on_d), "d owns {on_d} of 200");
    for name in ["a", "b", "c"] {
        assert!(first.values().any(|t| t == name), "{name} owns no key");
    }

    gw.rewrite_config(&cfg(3));
    gw.send_signal("HUP");
    assert!(gw.wait_stderr("reloaded", Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(100));
    let after = map(&gw);
    for k in &keys {
        let (was, now) = (&first[k], &after[k]);
        if was == "d" {
            assert_ne!(now, "d");
        } else {
            assert_eq!(was, now, "{k} moved from {was} to {now}");
        }
    }
    // Requests without the key are still served (round-robin).
    let (ok, other) = spread(gw.port, "/app/x", 6);
    assert!(other.is_empty() && ok.len() == 6);
}

#[test]
fn consistent_hashing_on_a_claim_and_on_a_cookie() {
    let ts: Vec<Named> = ["a", "b", "c"].iter().map(|n| Named::start(n)).collect();
    let list: Vec<String> = ts.iter().map(|t| format!("{:?}", t.addr())).collect();
    let list = list.join(", ");
    let secret = "claim-hash-secret-of-enough-length";
    let config = format!(
        r#"Gateway(
    shards: Count(2),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    limits_http: {LIMITS},
    upstreams: {{
        "by_sub": Upstream(targets: [{list}], balance: ConsistentHash(Claim("sub"))),
        "by_cookie": Upstream(targets: [{list}], balance: ConsistentHash(Cookie("sid"))),
    }},
    authenticators: {{ "jwt": Jwt(algorithms: [HS256], key: Secret("{secret}")) }},
    routes: [
        Route(name: "sub", match: Match(path_prefix: "/sub"), upstream: "by_sub", auth: Required(["jwt"])),
        Route(name: "cookie", match: Match(path_prefix: "/cookie"), upstream: "by_cookie"),
    ],
)
"#
    );
    let gw = Gateway::start(&config);
    let exp = unix_now() + 600;
    let mut owners = std::collections::HashSet::new();
    for i in 0..30 {
        let token = hs256_token(
            &serde_json::json!({"sub": format!("user-{i}"), "exp": exp}),
            secret,
        );
        let auth = format!("Bearer {token}");
        let first = get_with(gw.port, "/sub/x", &[("authorization", &auth)]);
        assert_eq!(first.status, 200, "{}", first.text());
        for _ in 0..3 {
            let again = get_with(gw.port, "/sub/x", &[("authorization", &auth)]);
            assert_eq!(again.text(), first.text(), "user-{i} moved");
        }
        owners.insert(first.text());
        let cookie = format!("theme=dark; sid=session-{i}");
        let c1 = get_with(gw.port, "/cookie/x", &[("cookie", &cookie)]);
        let c2 = get_with(
            gw.port,
            "/cookie/x",
            &[("cookie", &format!("sid=session-{i}"))],
        );
        assert_eq!(c1.status, 200);
        assert_eq!(c1.text(), c2.text(), "session-{i} moved");
    }
    assert_eq!(owners.len(), 3, "30 callers spread over the three targets");
}
