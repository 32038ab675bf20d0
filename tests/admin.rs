//! The admin listener through the real binary: Prometheus metrics that grow
//! with traffic, histograms, status labels, readiness during drain, the
//! redacted effective config, and nothing admin on a public listener.

mod common;

use common::*;
use std::collections::HashMap;
use std::thread;
use std::time::{Duration, Instant};

const SECRET: &str = "hmac-secret-that-must-not-leak";

/// A gateway with an admin listener on `$PORT2`, a plain route `/api`, a
/// rate-limited route `/limited` (one request per minute), an authenticated
/// route `/private`, and a route to a closed port `/dead`.
fn gateway_config(backend: &Backend, extra_top: &str) -> String {
    let dead = format!("127.0.0.1:{}", closed_port());
    format!(
        r#"Gateway(
    shards: Count(2),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    admin: Some(Admin(bind: "127.0.0.1:$PORT2")),
    limits_http: {LIMITS},
    shutdown_grace_ms: 5000,
    upstreams: {{
        "app": Upstream(targets: ["{app}"]),
        "dead": Upstream(targets: ["{dead}"], connect_timeout_ms: 300),
    }},
    authenticators: {{
        "jwt": Jwt(algorithms: [HS256], key: Secret("{SECRET}")),
        "keys": ApiKey(header: "X-Api-Key", consumers: {{ "mobile": "sha256:4bd2a1c1a1e07e8ab8bd0ad5d2a5c7b9a7a6d7f4e5c3b2a1f0e9d8c7b6a59483" }}),
    }},
    rate_limits: {{
        "tiny": RateLimit(key: ClientIp, algorithm: SlidingLog(limit: 1, window_s: 60)),
    }},
    {extra_top}
    routes: [
        Route(name: "api", match: Match(path_prefix: "/api"), upstream: "app"),
        Route(name: "limited", match: Match(path_prefix: "/limited"), upstream: "app", rate_limits: ["tiny"]),
        Route(name: "private", match: Match(path_prefix: "/private"), upstream: "app", auth: Required(["jwt"])),
        Route(name: "dead", match: Match(path_prefix: "/dead"), upstream: "dead"),
    ],
)
"#,
        app = backend.addr()
    )
}

/// One admin GET: (status, body).
fn admin(gw: &Gateway, path: &str) -> (u16, String) {
    let r = get(gw.port2, path);
    (r.status, r.text())
}

/// The samples of a scrape: `name{labels}` → value.
fn scrape(gw: &Gateway) -> HashMap<String, f64> {
    let (status, body) = admin(gw, "/metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("sample line");
            (k.to_string(), v.parse::<f64>().expect("sample value"))
        })
        .collect()
}

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[test]
fn request_counters_grow_with_traffic_and_label_status_codes() {
    let backend = Backend::echo("app");
    let gw = Gateway::start(&gateway_config(&backend, ""));
    let before = scrape(&gw);
    let ok = r#"shardgate_requests_total{listener="main",route="api",method="GET",code="200"}"#;
    assert_eq!(value(&before, ok), 0.0);
    for i in 0..5 {
        assert_eq!(get(gw.port, &format!("/api/{i}")).status, 200);
    }
    assert_eq!(get(gw.port, "/nowhere").status, 404);
    assert_eq!(get(gw.port, "/limited").status, 200);
    assert_eq!(get(gw.port, "/limited").status, 429);
    assert_eq!(get(gw.port, "/private").status, 401);
    assert_eq!(get(gw.port, "/dead").status, 502);
    let m = scrape(&gw);
    assert_eq!(value(&m, ok), 5.0);
    assert_eq!(
        value(
            &m,
            r#"shardgate_requests_total{listener="main",route="",method="GET",code="404"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            r#"shardgate_requests_total{listener="main",route="limited",method="GET",code="429"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            r#"shardgate_ratelimit_decisions_total{limit="tiny",decision="refused"}"#
        ),
        1.0
    );
    // Admitted at once, or after borrowing quota from the other shard.
    assert_eq!(
        value(
            &m,
            r#"shardgate_ratelimit_decisions_total{limit="tiny",decision="admitted"}"#
        ) + value(
            &m,
            r#"shardgate_ratelimit_decisions_total{limit="tiny",decision="waited"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            r#"shardgate_auth_decisions_total{authenticator="jwt",result="missing"}"#
        ),
        1.0
    );
    let app = backend.addr();
    assert_eq!(
        value(
            &m,
            &format!(
                r#"shardgate_upstream_requests_total{{upstream="app",target="{app}",outcome="ok"}}"#
            )
        ),
        6.0
    );
    let dead_connect = m
        .iter()
        .find(|(k, _)| {
            k.starts_with(r#"shardgate_upstream_requests_total{upstream="dead""#)
                && k.contains("connect_error")
        })
        .map(|(_, v)| *v);
    assert_eq!(dead_connect, Some(1.0));
    let shard_total: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("shardgate_shard_requests_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(shard_total, 10.0);
    assert_eq!(
        value(
            &m,
            r#"shardgate_build_info{version="0.1.0",driver="io_uring"}"#
        ) + value(
            &m,
            r#"shardgate_build_info{version="0.1.0",driver="epoll"}"#
        ),
        1.0
    );
}

#[test]
fn histograms_are_cumulative_with_inf_and_a_consistent_count() {
    let backend = Backend::start(|req| {
        if req.target.contains("slow") {
            Response::ok("slow").delay(Duration::from_millis(30))
        } else {
            Response::ok("fast")
        }
    });
    let gw = Gateway::start(&gateway_config(&backend, ""));
    for i in 0..6 {
        let path = if i % 2 == 0 { "/api/slow" } else { "/api/fast" };
        assert_eq!(get(gw.port, path).status, 200);
    }
    let (_, body) = admin(&gw, "/metrics");
    let buckets: Vec<(String, f64)> = body
        .lines()
        .filter(|l| l.starts_with(r#"shardgate_request_duration_seconds_bucket{route="api","#))
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    assert!(buckets.len() >= 2, "{body}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "not cumulative: {buckets:?}"
    );
    let (last, inf) = buckets.last().unwrap();
    assert!(last.ends_with(r#"le="+Inf"}"#), "{last}");
    assert_eq!(*inf, 6.0);
    let m = scrape(&gw);
    assert_eq!(
        value(
            &m,
            r#"shardgate_request_duration_seconds_count{route="api"}"#
        ),
        6.0
    );
    let sum = value(&m, r#"shardgate_request_duration_seconds_sum{route="api"}"#);
    assert!(sum >= 0.09, "three requests of at least 30 ms, sum {sum}");
    // The three slow requests sit above 25 ms, the fast ones below.
    let under_25ms = value(
        &m,
        r#"shardgate_request_duration_seconds_bucket{route="api",le="0.025"}"#,
    );
    assert_eq!(under_25ms, 3.0, "{buckets:?}");
    let app = backend.addr();
    assert_eq!(
        value(
            &m,
            &format!(
                r#"shardgate_upstream_request_duration_seconds_count{{upstream="app",target="{app}"}}"#
            )
        ),
        6.0
    );
}

#[test]
fn nothing_admin_answers_on_a_public_listener() {
    let backend = Backend::echo("app");
    let gw = Gateway::start(&gateway_config(&backend, ""));
    for path in [
        "/metrics",
        "/health",
        "/ready",
        "/config",
        "/shards",
        "/upstreams",
        "/ratelimits",
        "/",
        "/api/status",
    ] {
        let r = get(gw.port, path);
        if path.starts_with("/api") {
            // Routed to the backend like any other /api path.
            assert_eq!(r.text(), format!("app GET {path}"));
            continue;
        }
        assert_eq!(r.status, 404, "{path} on the public listener: {}", r.text());
        assert!(!r.text().contains("shardgate_"), "{path}: {}", r.text());
    }
    assert_eq!(backend.count(), 1);
    assert_eq!(admin(&gw, "/health").0, 200);
    assert_eq!(admin(&gw, "/nope").0, 404);
}

#[test]
fn ready_is_503_while_draining_and_health_stays_200() {
    let backend = Backend::start(|_| Response::ok("late").delay(Duration::from_millis(2500)));
    let mut gw = Gateway::start(&gateway_config(&backend, ""));
    let (status, body) = admin(&gw, "/ready");
    assert_eq!(status, 200, "{body}");
    let port = gw.port;
    let slow = thread::spawn(move || get(port, "/api/slow").status);
    assert!(backend.wait_for(1, Duration::from_secs(5)));
    gw.send_signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut seen = (0, String::new());
    while Instant::now() < deadline {
        seen = admin(&gw, "/ready");
        if seen.0 == 503 {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(seen.0, 503, "{}", seen.1);
    assert!(seen.1.contains("draining"), "{}", seen.1);
    assert_eq!(admin(&gw, "/health").0, 200);
    assert_eq!(slow.join().unwrap(), 200, "the request in flight finishes");
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn config_is_effective_and_redacted() {
    let backend = Backend::echo("app");
    let extra = r#"access_log: None,"#;
    let mut text = gateway_config(&backend, extra);
    // A Redis limit with a password and an introspection client secret.
    text = text.replace(
        r#""tiny": RateLimit("#,
        r#""shared": RateLimit(key: ClientIp, algorithm: FixedWindow(limit: 5, window_s: 60), policy: Redis(url: "redis://app:redis-password-xyz@127.0.0.1:1/0")),
        "tiny": RateLimit("#,
    );
    text = text.replace(
        r#""jwt": Jwt("#,
        r#""opaque": Introspection(url: "http://127.0.0.1:1/introspect", client_id: "gw", client_secret: "client-secret-abc"),
        "jwt": Jwt("#,
    );
    let gw = Gateway::start(&text);
    let (status, body) = admin(&gw, "/config");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    for secret in [
        SECRET,
        "redis-password-xyz",
        "client-secret-abc",
        "4bd2a1c1a1e07e8ab8bd0ad5d2a5c7b9a7a6d7f4e5c3b2a1f0e9d8c7b6a59483",
    ] {
        assert!(!body.contains(secret), "{secret} leaked: {body}");
    }
    assert!(body.contains("<redacted>"));
    // Effective: defaults are filled in, names are kept.
    assert_eq!(v["routes"][0]["name"], "api");
    assert_eq!(v["upstreams"]["app"]["targets"][0], backend.addr());
    assert!(
        v["upstreams"]["app"]["timeout_ms"].as_u64().is_some(),
        "{body}"
    );
    assert_eq!(
        v["authenticators"]["keys"]["ApiKey"]["consumers"]["mobile"],
        "<redacted>"
    );
    assert_eq!(
        v["rate_limits"]["shared"]["policy"]["Redis"]["url"],
        "redis://app:<redacted>@127.0.0.1:1/0"
    );
}

#[test]
fn reloads_are_counted_and_shards_listed() {
    let backend = Backend::echo("app");
    let gw = Gateway::start(&gateway_config(&backend, ""));
    let (_, shards) = admin(&gw, "/shards");
    let v: serde_json::Value = serde_json::from_str(&shards).unwrap();
    assert_eq!(v["shards"].as_array().map(Vec::len), Some(2), "{shards}");
    let from = gw.stderr().len();
    gw.rewrite_config(&gateway_config(&backend, "").replace("\"api\"", "\"api2\""));
    gw.send_signal("HUP");
    assert!(gw.wait_stderr("reloaded", Duration::from_secs(5)));
    gw.rewrite_config("Gateway(");
    gw.send_signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw.stderr()[from..].contains("reload of") && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let m = scrape(&gw);
    assert_eq!(
        value(&m, r#"shardgate_config_reloads_total{result="success"}"#),
        1.0
    );
    assert_eq!(
        value(&m, r#"shardgate_config_reloads_total{result="failure"}"#),
        1.0
    );
    // The new config's route name is what requests count under.
    assert_eq!(get(gw.port, "/api/x").status, 200);
    let m = scrape(&gw);
    assert_eq!(
        value(
            &m,
            r#"shardgate_requests_total{listener="main",route="api2",method="GET",code="200"}"#
        ),
        1.0
    );
    let (status, ready) = admin(&gw, "/ready");
    assert_eq!(status, 200, "{ready}");
    let (_, ups) = admin(&gw, "/upstreams");
    let v: serde_json::Value = serde_json::from_str(&ups).unwrap();
    let app = v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "app")
        .unwrap();
    assert_eq!(app["targets"][0]["calls"]["ok"], 1, "{ups}");
}

#[test]
fn an_admin_bind_on_a_public_listener_is_refused() {
    let dir = temp_dir();
    let file = dir.join("bad.ron");
    std::fs::write(
        &file,
        r#"Gateway(
    listeners: [Listener(name: "main", bind: "127.0.0.1:18080")],
    admin: Some(Admin(bind: "127.0.0.1:18080", histogram_buckets_ms: [5.0, 1.0])),
    routes: [],
)
"#,
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin.bind"), "{err}");
    assert!(err.contains("admin.histogram_buckets_ms"), "{err}");
    assert!(err.contains(":3:"), "positions name the line: {err}");
}

#[test]
fn aggregation_parts_are_counted_by_outcome() {
    let backend =
        Backend::start(|_| Response::ok("{\"id\": 1}").header("content-type", "application/json"));
    let text = gateway_config(&backend, "").replace(
        r#"        Route(name: "dead","#,
        r#"        Route(name: "combo", match: Match(path: "/combo"), aggregate: Aggregate(parts: [
            Part(name: "good", upstream: "app", path: "/one"),
            Part(name: "broken", upstream: "dead", path: "/", required: false),
            Part(name: "after_broken", upstream: "app", path: "/two", required: false, after: "broken"),
        ])),
        Route(name: "dead","#,
    );
    let gw = Gateway::start(&text);
    for _ in 0..2 {
        let r = get(gw.port, "/combo");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let m = scrape(&gw);
    let part = |p: &str, o: &str| {
        value(
            &m,
            &format!(
                r#"shardgate_aggregate_parts_total{{route="combo",part="{p}",outcome="{o}"}}"#
            ),
        )
    };
    assert_eq!(part("good", "ok"), 2.0);
    assert_eq!(part("broken", "failed"), 2.0);
    assert_eq!(part("after_broken", "skipped"), 2.0);
    assert_eq!(part("good", "failed"), 0.0);
}

/// The idle client connections of every shard: (sum in `/shards`, sum of
/// the `shardgate_idle_connections` samples).
fn idle_connections(gw: &Gateway) -> (u64, f64) {
    let (_, shards) = admin(gw, "/shards");
    let v: serde_json::Value = serde_json::from_str(&shards).unwrap();
    let listed = v["shards"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["idle_connections"].as_u64())
                .sum()
        })
        .unwrap_or(0);
    let scraped = scrape(gw)
        .iter()
        .filter(|(k, _)| k.starts_with("shardgate_idle_connections{"))
        .map(|(_, v)| v)
        .sum();
    (listed, scraped)
}

/// Waits up to 3 s for both idle counts to equal `want`.
fn await_idle(gw: &Gateway, want: u64) -> (u64, f64) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let got = idle_connections(gw);
        if (got.0 == want && got.1 == want as f64) || Instant::now() > deadline {
            return got;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `n` client connections, each after one answered request.
fn answered_clients(gw: &Gateway, n: usize) -> Vec<Client> {
    let mut clients: Vec<Client> = (0..n).map(|_| Client::connect(gw.port)).collect();
    for c in clients.iter_mut() {
        c.send(b"GET /api/one HTTP/1.1\r\nHost: idle.test\r\n\r\n");
        assert_eq!(c.read_response().status, 200);
    }
    clients
}

#[test]
fn quiet_connections_beyond_the_held_reads_give_their_buffer_back() {
    const HELD_READS: u64 = 64; // shardgate::http::conn::HELD_READS
    let backend = Backend::echo("app");
    let gw = Gateway::start(&gateway_config(&backend, ""));
    let mut clients = answered_clients(&gw, 200);
    // Past the 250 ms grace: every one counts as idle, and on each shard
    // the first 64 wait holding their buffer, the rest without one.
    assert_eq!(await_idle(&gw, 200), (200, 200.0));
    let (_, shards) = admin(&gw, "/shards");
    let v: serde_json::Value = serde_json::from_str(&shards).unwrap();
    let mut held_total = 0;
    for s in v["shards"].as_array().unwrap() {
        let (idle, held) = (s["idle_connections"].as_u64(), s["held_reads"].as_u64());
        assert_eq!(held, idle.map(|i| i.min(HELD_READS)), "{s}");
        held_total += held.unwrap_or(0);
    }
    assert!(held_total >= HELD_READS, "{shards}");
    let scraped: f64 = scrape(&gw)
        .iter()
        .filter(|(k, _)| k.starts_with("shardgate_shard_held_reads{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(scraped, held_total as f64);
    // Held or not, each connection is answered on its next request.
    for c in clients.iter_mut() {
        c.send(b"GET /api/two HTTP/1.1\r\nHost: held.test\r\n\r\n");
        assert_eq!(c.read_response().status, 200);
    }
}

#[test]
fn idle_connections_are_counted_per_shard() {
    let backend = Backend::echo("app");
    let gw = Gateway::start(&gateway_config(&backend, ""));
    let mut clients = answered_clients(&gw, 10);
    // Quiet past the 250 ms grace (and short of the 2 s idle timeout).
    assert_eq!(await_idle(&gw, 10), (10, 10.0), "after going quiet");
    // Four get a request: busy again (then quiet for less than the grace).
    for c in clients.iter_mut().take(4) {
        c.send(b"GET /api/two HTTP/1.1\r\nHost: idle.test\r\n\r\n");
        assert_eq!(c.read_response().status, 200);
    }
    assert_eq!(await_idle(&gw, 10), (10, 10.0), "quiet again");
    // Five close: they leave the count.
    clients.truncate(5);
    assert_eq!(await_idle(&gw, 5), (5, 5.0), "after five closed");
    // The idle timeout ends the rest.
    assert_eq!(await_idle(&gw, 0), (0, 0.0), "after the idle timeout");
}
