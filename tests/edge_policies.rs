//! Edge policies through the real gateway against real loopback backends:
//! IP filters (route and listener, through trusted proxies), static
//! responses, traffic splitting (weights, stickiness) and mirroring
//! (sampling, bodies, a hanging mirror, the concurrency cap).

mod common;

use common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A one-listener gateway with the given upstreams (map body), routes,
/// and extra top-level fields; the admin listener on `$PORT2`.
fn gateway(shards: usize, upstreams: &str, top: &str, listener: &str, routes: &str) -> Gateway {
    Gateway::start(&format!(
        r#"Gateway(
    shards: Count({shards}),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT"{listener})],
    limits_http: {LIMITS},
    admin: Some(Admin(bind: "127.0.0.1:$PORT2")),
    upstreams: {{
{upstreams}
    }},
    {top}
    routes: [
{routes}
    ],
)"#
    ))
}

fn scrape(gw: &Gateway) -> HashMap<String, f64> {
    let r = get(gw.port2, "/metrics");
    assert_eq!(r.status, 200);
    r.text()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse::<f64>().ok()?))
        })
        .collect()
}

fn check_config(text: &str) -> (bool, String) {
    let dir = temp_dir();
    let file = dir.join("gw.ron");
    std::fs::write(&file, text).unwrap();
    let (status, out, err) = run_cli(&["check", file.to_str().unwrap()]);
    (status.success(), format!("{out}{err}"))
}

// ---------------------------------------------------------------------------
// IP filtering
// ---------------------------------------------------------------------------

#[test]
fn route_ip_filters_allow_and_deny_the_peer() {
    let backend = Backend::echo("app");
    let ups = upstream("app", &[&backend.addr()], "");
    let routes = r#"
        Route(name: "denied", match: Match(path_prefix: "/denied"), upstream: "app",
              ip_filter: Some(IpFilter(deny: ["127.0.0.0/8"]))),
        Route(name: "others", match: Match(path_prefix: "/others"), upstream: "app",
              ip_filter: Some(IpFilter(allow: ["10.0.0.0/8", "192.0.2.0/24"]))),
        Route(name: "mine", match: Match(path_prefix: "/mine"), upstream: "app",
              ip_filter: Some(IpFilter(allow: ["127.0.0.1"], deny: ["203.0.113.0/24"]))),
        Route(name: "open", match: Match(path_prefix: "/open"), upstream: "app"),"#;
    let gw = gateway(1, &ups, "", "", routes);
    let r = get(gw.port, "/denied/x");
    let err = assert_json_error(&r, 403);
    assert!(!err.is_empty());
    assert!(
        r.text().contains("client address is not allowed"),
        "{}",
        r.text()
    );
    assert!(!r.has("www-authenticate"));
    assert_json_error(&get(gw.port, "/others/x"), 403);
    assert_eq!(backend.count(), 0);
    assert_eq!(get(gw.port, "/mine/x").status, 200);
    assert_eq!(get(gw.port, "/open/x").status, 200);
    assert_eq!(backend.count(), 2);
    let m = scrape(&gw);
    assert_eq!(
        m.get("shardgate_edge_refused_total{shard=\"0\",policy=\"ip_filter\"}"),
        Some(&2.0)
    );
}

#[test]
fn forwarded_for_counts_only_through_a_trusted_proxy() {
    let backend = Backend::echo("app");
    let ups = upstream("app", &[&backend.addr()], "");
    let routes = r#"
        Route(name: "deny", match: Match(path_prefix: "/deny"), upstream: "app",
              ip_filter: Some(IpFilter(deny: ["203.0.113.0/24"]))),
        Route(name: "allow", match: Match(path_prefix: "/allow"), upstream: "app",
              ip_filter: Some(IpFilter(allow: ["198.51.100.0/24"]))),"#;
    // The test's connections come from 127.0.0.1: trusted here.
    let trusting = gateway(
        1,
        &ups,
        "rate_limiting: RateLimiting(trusted_proxies: [\"127.0.0.0/8\"]),",
        "",
        routes,
    );
    let xff = |ip: &'static str| [("X-Forwarded-For", ip)];
    assert_json_error(
        &get_with(trusting.port, "/deny/x", &xff("203.0.113.9")),
        403,
    );
    // The client is the first untrusted hop from the right.
    assert_json_error(
        &get_with(trusting.port, "/deny/x", &xff("203.0.113.9, 127.0.0.5")),
        403,
    );
    assert_eq!(
        get_with(trusting.port, "/deny/x", &xff("198.51.100.1")).status,
        200
    );
    assert_eq!(
        get_with(trusting.port, "/allow/x", &xff("198.51.100.1")).status,
        200
    );
    assert_json_error(&get_with(trusting.port, "/allow/x", &xff("192.0.2.1")), 403);
    assert_json_error(&get(trusting.port, "/allow/x"), 403);

    // From an untrusted peer the header is ignored: the peer is judged.
    let wary = gateway(
        1,
        &ups,
        "rate_limiting: RateLimiting(trusted_proxies: [\"10.0.0.0/8\"]),",
        "",
        routes,
    );
    assert_eq!(
        get_with(wary.port, "/deny/x", &xff("203.0.113.9")).status,
        200
    );
    assert_json_error(&get_with(wary.port, "/allow/x", &xff("198.51.100.1")), 403);
}

#[test]
fn a_listener_filter_applies_before_routing() {
    let backend = Backend::echo("app");
    let ups = upstream("app", &[&backend.addr()], "");
    let routes =
        r#"        Route(name: "open", match: Match(path_prefix: "/open"), upstream: "app"),"#;
    let gw = gateway(
        1,
        &ups,
        "rate_limiting: RateLimiting(trusted_proxies: [\"127.0.0.0/8\"]),",
        r#", ip_filter: Some(IpFilter(deny: ["203.0.113.0/24"]))"#,
        routes,
    );
    let bad = [("X-Forwarded-For", "203.0.113.7")];
    // Refused even where no route matches (403, not 404).
    assert_json_error(&get_with(gw.port, "/nowhere", &bad), 403);
    assert_json_error(&get_with(gw.port, "/open/x", &bad), 403);
    assert_eq!(backend.count(), 0);
    assert_eq!(get(gw.port, "/open/x").status, 200);
    assert_json_error(&get(gw.port, "/nowhere"), 404);
}

#[test]
fn the_route_filter_runs_after_the_preflight_and_before_auth() {
    let backend = Backend::echo("app");
    let ups = upstream("app", &[&backend.addr()], "");
    let routes = r#"
        Route(name: "private", match: Match(path_prefix: "/private"), upstream: "app",
              auth: Required(["jwt"]), ip_filter: Some(IpFilter(deny: ["127.0.0.0/8"])),
              cors: Some(Cors(allow_origins: ["https://app.example.com"], allow_headers: ["Authorization"]))),"#;
    let gw = gateway(
        1,
        &ups,
        r#"authenticators: { "jwt": Jwt(algorithms: [HS256], key: Secret("edge-policies-test-secret")) },"#,
        "",
        routes,
    );
    // A denied address without credentials: 403 from the filter, not 401.
    let r = get(gw.port, "/private/x");
    assert_json_error(&r, 403);
    assert!(!r.has("www-authenticate"), "{:?}", r.headers);
    // The preflight comes first: answered before the filter.
    let r = request(
        gw.port,
        "OPTIONS",
        "/private/x",
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "authorization"),
        ],
        b"",
    );
    assert_eq!(r.status, 204);
    assert_eq!(backend.count(), 0);
}

#[test]
fn bad_ip_filter_entries_are_check_errors() {
    let (ok, out) = check_config(
        r#"Gateway(
    listeners: [Listener(name: "main", bind: "127.0.0.1:0", ip_filter: Some(IpFilter(allow: ["10.0.0.0/33"])))],
    upstreams: { "app": Upstream(targets: ["127.0.0.1:9"]) },
    routes: [
        Route(name: "r", match: Match(path_prefix: "/"), upstream: "app",
              ip_filter: Some(IpFilter(deny: ["not-an-ip"]))),
    ],
)"#,
    );
    assert!(!ok);
    assert!(out.contains("listeners[0].ip_filter.allow"), "{out}");
    assert!(out.contains("routes[0].ip_filter.deny"), "{out}");
    assert!(out.contains("\"not-an-ip\""), "{out}");
}

// ---------------------------------------------------------------------------
// Static responses
// ---------------------------------------------------------------------------

#[test]
fn static_responses_answer_without_an_upstream() {
    let backend = Backend::echo("app");
    let ups = upstream("app", &[&backend.addr()], "");
    let routes = r#"
        Route(name: "gone", match: Match(path_prefix: "/api/v0"),
              static_response: Some(StaticResponse(status: 410, body: "{\"error\":\"gone\"}"))),
        Route(name: "mock", match: Match(path: "/mock/users"),
              static_response: Some(StaticResponse(status: 200,
                  headers: { "Content-Type": "text/plain", "Cache-Control": "no-store" },
                  body: "alice\nbob\n"))),
        Route(name: "live", match: Match(path_prefix: "/live"), upstream: "app"),"#;
    let gw = gateway(1, &ups, "", "", routes);
    let mut c = Client::connect(gw.port);
    let r = c.request("GET", "/api/v0/orders", &[], b"");
    assert_eq!(r.status, 410);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), "{\"error\":\"gone\"}");
    assert!(r.has("x-request-id"));
    // Keep-alive holds; a POST body is read past and the connection stays usable.
    let r = c.request(
        "POST",
        "/mock/users",
        &[("Content-Type", "text/plain")],
        b"ignored",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let r = c.request("GET", "/mock/users", &[], b"");
    assert_eq!(r.text(), "alice\nbob\n");
    let r = c.request("HEAD", "/mock/users", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("10"));
    assert_eq!(backend.count(), 0);
    assert_eq!(c.request("GET", "/live/x", &[], b"").status, 200);
    assert_eq!(backend.count(), 1);
}

#[test]
fn a_route_needs_exactly_one_of_upstream_aggregate_and_static_response() {
    let (ok, out) = check_config(
        r#"Gateway(
    listeners: [Listener(name: "main", bind: "127.0.0.1:0")],
    upstreams: { "app": Upstream(targets: ["127.0.0.1:9"]) },
    routes: [
        Route(name: "both", match: Match(path_prefix: "/a"), upstream: "app",
              static_response: Some(StaticResponse(status: 200))),
        Route(name: "bad", match: Match(path_prefix: "/b"),
              static_response: Some(StaticResponse(status: 200, headers: { "Content-Length": "3" }))),
    ],
)"#,
    );
    assert!(!ok);
    assert!(out.contains("routes[0].upstream"), "{out}");
    assert!(
        out.contains("exactly one of `upstream` or `aggregate` (or `static_response`)"),
        "{out}"
    );
    assert!(out.contains("routes[1].static_response"), "{out}");
}

// ---------------------------------------------------------------------------
// Traffic splitting
// ---------------------------------------------------------------------------

fn split_gateway(stable: &Backend, canary: &Backend, split: &str) -> Gateway {
    let ups = format!(
        "{}{}",
        upstream("products", &[&stable.addr()], ""),
        upstream("products-v2", &[&canary.addr()], "")
    );
    let routes = format!(
        r#"        Route(name: "p", match: Match(path_prefix: "/p"), upstream: "products", split: Some({split})),"#
    );
    gateway(2, &ups, "", "", &routes)
}

#[test]
fn a_canary_split_holds_within_two_percent_over_ten_thousand_requests() {
    let stable = Backend::start(|_| Response::ok("s"));
    let canary = Backend::start(|_| Response::ok("c"));
    let gw = split_gateway(
        &stable,
        &canary,
        r#"Split(weights: { "products": 95, "products-v2": 5 })"#,
    );
    let started = Instant::now();
    let mut counts = [0usize; 2];
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(gw.port)).collect();
    let total = 10_000;
    for i in 0..total {
        let n = clients.len();
        let r = clients[i % n].request("GET", "/p", &[], b"");
        match r.text().as_str() {
            "s" => counts[0] += 1,
            "c" => counts[1] += 1,
            other => panic!("unexpected answer {other:?} ({})", r.status),
        }
        assert!(started.elapsed() < Duration::from_secs(120), "too slow");
    }
    let share = counts[1] as f64 / total as f64;
    assert!(
        (0.03..=0.07).contains(&share),
        "canary share {share} ({counts:?})"
    );
    assert_eq!(stable.count() + canary.count(), total);
}

#[test]
fn a_sticky_split_keeps_each_key_on_one_upstream() {
    let a = Backend::start(|_| Response::ok("a"));
    let b = Backend::start(|_| Response::ok("b"));
    let gw = split_gateway(
        &a,
        &b,
        r#"Split(weights: { "products": 50, "products-v2": 50 }, sticky: Some(Header("X-User")))"#,
    );
    let mut c = Client::connect(gw.port);
    let mut per_side = [0usize; 2];
    for user in 0..60 {
        let id = format!("user-{user}");
        let mut seen = None;
        for _ in 0..5 {
            let r = c.request("GET", "/p", &[("X-User", &id)], b"");
            let got = r.text();
            assert!(
                seen.is_none() || seen.as_deref() == Some(got.as_str()),
                "{id} moved"
            );
            seen = Some(got);
        }
        per_side[usize::from(seen.as_deref() == Some("b"))] += 1;
    }
    // Both upstreams get a fair share of the keys.
    assert!(per_side[0] >= 15 && per_side[1] >= 15, "{per_side:?}");
    // Cookie stickiness works the same way.
    let gw = split_gateway(
        &a,
        &b,
        r#"Split(weights: { "products": 50, "products-v2": 50 }, sticky: Some(Cookie("sid")))"#,
    );
    let mut c = Client::connect(gw.port);
    for user in 0..20 {
        let cookie = format!("theme=dark; sid=s{user}");
        let first = c.request("GET", "/p", &[("Cookie", &cookie)], b"").text();
        for _ in 0..3 {
            assert_eq!(
                c.request("GET", "/p", &[("Cookie", &cookie)], b"").text(),
                first
            );
        }
    }
}

#[test]
fn bad_splits_are_check_errors() {
    let (ok, out) = check_config(
        r#"Gateway(
    listeners: [Listener(name: "main", bind: "127.0.0.1:0")],
    upstreams: { "app": Upstream(targets: ["127.0.0.1:9"]) },
    routes: [
        Route(name: "r", match: Match(path_prefix: "/"), upstream: "app",
              split: Some(Split(weights: { "app": 90, "nope": 10 }))),
    ],
)"#,
    );
    assert!(!ok);
    assert!(out.contains("routes[0].split.weights"), "{out}");
    assert!(out.contains("unknown upstream \"nope\""), "{out}");
}

// ---------------------------------------------------------------------------
// Mirroring
// ---------------------------------------------------------------------------

fn mirror_gateway(main: &Backend, shadow: &Backend, mirror: &str) -> Gateway {
    let ups = format!(
        "{}{}",
        upstream("app", &[&main.addr()], ""),
        upstream("shadow", &[&shadow.addr()], "")
    );
    let routes = format!(
        r#"        Route(name: "m", match: Match(path_prefix: "/api"), upstream: "app", strip_prefix: "/api",
              mirror: Some({mirror})),"#
    );
    gateway(1, &ups, "", "", &routes)
}

#[test]
fn mirrored_requests_carry_the_head_and_a_small_body() {
    let main = Backend::start(|_| Response::ok("main"));
    let shadow = Backend::start(|_| Response::ok("shadow answer, discarded"));
    let gw = mirror_gateway(&main, &shadow, r#"Mirror(upstream: "shadow")"#);
    let mut c = Client::connect(gw.port);
    let r = c.request("GET", "/api/items?q=1", &[("X-Trace-Me", "yes")], b"");
    assert_eq!(r.text(), "main");
    let body = br#"{"sku":"a-1","qty":2}"#;
    let r = c.request(
        "POST",
        "/api/orders",
        &[("Content-Type", "application/json")],
        body,
    );
    assert_eq!(r.text(), "main");
    assert!(
        shadow.wait_for(2, Duration::from_secs(5)),
        "{}",
        shadow.count()
    );
    let seen = shadow.requests();
    let get = seen
        .iter()
        .find(|r| r.method == "GET")
        .expect("GET mirrored");
    assert_eq!(get.target, "/items?q=1");
    assert_eq!(get.header("x-trace-me"), Some("yes"));
    let post = seen
        .iter()
        .find(|r| r.method == "POST")
        .expect("POST mirrored");
    assert_eq!(post.target, "/orders");
    assert_eq!(post.body, body.to_vec());
    assert_eq!(main.count(), 2);
    let m = scrape(&gw);
    let v = |o: &str| {
        m.get(&format!(
            "shardgate_mirror_requests_total{{shard=\"0\",outcome=\"{o}\"}}"
        ))
        .copied()
    };
    assert_eq!(v("sent"), Some(2.0));
    assert_eq!(v("answered"), Some(2.0));
}

#[test]
fn the_sample_ratio_picks_a_share_of_requests() {
    let main = Backend::start(|_| Response::ok("main"));
    let shadow = Backend::start(|_| Response::ok("s"));
    let gw = mirror_gateway(
        &main,
        &shadow,
        r#"Mirror(upstream: "shadow", sample_ratio: 0.25)"#,
    );
    let mut c = Client::connect(gw.port);
    for _ in 0..400 {
        assert_eq!(c.request("GET", "/api/x", &[], b"").status, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    let n = shadow.count();
    assert!((40..=160).contains(&n), "mirrored {n} of 400 at 0.25");
    let none = Backend::start(|_| Response::ok("s"));
    let gw = mirror_gateway(
        &main,
        &none,
        r#"Mirror(upstream: "shadow", sample_ratio: 0.0)"#,
    );
    let mut c = Client::connect(gw.port);
    for _ in 0..50 {
        assert_eq!(c.request("GET", "/api/x", &[], b"").status, 200);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(none.count(), 0);
}

#[test]
fn a_hanging_mirror_never_slows_the_main_response_and_its_cap_holds() {
    let main = Backend::start(|_| Response::ok("main"));
    // The shadow never answers within the test.
    let shadow = Backend::start(|_| Response::ok("late").delay(Duration::from_secs(30)));
    let gw = mirror_gateway(
        &main,
        &shadow,
        r#"Mirror(upstream: "shadow", max_concurrency: 4, timeout_ms: 20000)"#,
    );
    let mut c = Client::connect(gw.port);
    let mut slowest = Duration::ZERO;
    for i in 0..40 {
        let t = Instant::now();
        let r = c.request(
            "POST",
            "/api/x",
            &[("Content-Type", "application/json")],
            b"{}",
        );
        slowest = slowest.max(t.elapsed());
        assert_eq!(r.text(), "main", "request {i}");
    }
    // Each main answer took a loopback round trip, not the mirror's 30 s.
    assert!(
        slowest < Duration::from_secs(2),
        "slowest main answer {slowest:?}"
    );
    assert!(shadow.wait_for(4, Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(300));
    // The cap, observed at the mirror: exactly 4 copies arrived.
    assert_eq!(shadow.count(), 4, "copies at the mirror");
    assert_eq!(shadow.connections(), 4);
    let m = scrape(&gw);
    let v = |o: &str| {
        m.get(&format!(
            "shardgate_mirror_requests_total{{shard=\"0\",outcome=\"{o}\"}}"
        ))
        .copied()
        .unwrap_or(-1.0)
    };
    assert_eq!(v("sent"), 4.0);
    assert_eq!(v("skipped_busy"), 36.0);
    assert_eq!(main.count(), 40);
}

#[test]
fn a_mirror_that_times_out_frees_its_slot() {
    let main = Backend::start(|_| Response::ok("main"));
    let shadow = Backend::start(|_| Response::ok("late").delay(Duration::from_secs(30)));
    let gw = mirror_gateway(
        &main,
        &shadow,
        r#"Mirror(upstream: "shadow", max_concurrency: 1, timeout_ms: 200)"#,
    );
    let mut c = Client::connect(gw.port);
    assert_eq!(c.request("GET", "/api/x", &[], b"").text(), "main");
    assert!(shadow.wait_for(1, Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(c.request("GET", "/api/x", &[], b"").text(), "main");
    assert!(shadow.wait_for(2, Duration::from_secs(5)), "slot not freed");
    let m = scrape(&gw);
    let timeouts = m
        .get("shardgate_mirror_requests_total{shard=\"0\",outcome=\"timeout\"}")
        .copied();
    assert!(timeouts >= Some(1.0), "{timeouts:?}");
}

#[test]
fn bodies_still_on_the_wire_are_not_mirrored_unless_validation_read_them() {
    let main = Backend::start(|r| Response::ok(format!("main {}", r.body_len)));
    let shadow = Backend::start(|_| Response::ok("s"));
    let dir = temp_dir();
    let schema = dir.join("any.json");
    std::fs::write(&schema, r#"{"type": "object"}"#).unwrap();
    let ups = format!(
        "{}{}",
        upstream("app", &[&main.addr()], ""),
        upstream("shadow", &[&shadow.addr()], "")
    );
    let routes = format!(
        r#"        Route(name: "plain", match: Match(path_prefix: "/plain"), upstream: "app",
              mirror: Some(Mirror(upstream: "shadow"))),
        Route(name: "checked", match: Match(path_prefix: "/checked"), upstream: "app",
              mirror: Some(Mirror(upstream: "shadow")), validate: Some(Validate(schema: {:?}))),"#,
        schema.display().to_string()
    );
    let gw = gateway(1, &ups, "", "", &routes);
    let chunked = b"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
    let send = |path: &str| {
        let text = String::from_utf8_lossy(chunked).replace("{path}", path);
        let mut c = Client::connect(gw.port);
        c.send(text.as_bytes());
        c.read_response()
    };
    // A chunked body is streamed to the upstream: not copied.
    assert_eq!(send("/plain/x").text(), "main 7");
    // Validation read it whole: the copy carries it.
    assert_eq!(send("/checked/x").text(), "main 7");
    assert!(shadow.wait_for(1, Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(200));
    let seen = shadow.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].target, "/checked/x");
    assert_eq!(seen[0].body, b"{\"a\":1}".to_vec());
    let m = scrape(&gw);
    assert_eq!(
        m.get("shardgate_mirror_requests_total{shard=\"0\",outcome=\"skipped_body\"}"),
        Some(&1.0)
    );
}
