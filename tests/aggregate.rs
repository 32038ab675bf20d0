//! Request aggregation through the real gateway against loopback backends:
//! composition (keys, merge, shaping), concurrency and chains observed at the
//! backends, templates, partial and required failures, limits, config errors
//! and BFF listeners.

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "aggregate-test-hmac-secret";

/// Asserts a JSON error with `status` and returns its message.
#[track_caller]
fn error_of(resp: &Resp, status: u16) -> String {
    assert_json_error(resp, status);
    resp.json_str("error").unwrap_or_default()
}

fn body(resp: &Resp) -> Value {
    serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", resp.text()))
}

/// A backend answering every request with this JSON after `delay`.
fn json_backend(v: Value, delay: Duration) -> Backend {
    Backend::start(move |_| {
        Response::ok(v.to_string())
            .header("Content-Type", "application/json")
            .delay(delay)
    })
}

/// A gateway with one composite route `/d/{id}` (extra route fields in `route_extra`).
fn composite(upstreams: &[(&str, &Backend)], aggregate: &str, route_extra: &str) -> Gateway {
    let ups: String = upstreams
        .iter()
        .map(|(n, b)| upstream(n, &[&b.addr()], ""))
        .collect();
    let route = format!(
        "        Route(name: \"d\", match: Match(path: \"/d/{{id}}\", methods: [\"GET\", \"POST\"]), {route_extra}\n            aggregate: Aggregate({aggregate})),\n"
    );
    Gateway::start(&config(2, &ups, &route))
}

/// GETs `/d/1`, asserts a 200 and returns its JSON and how long it took.
fn timed_get(gw: &Gateway) -> (Value, Duration) {
    let t = Instant::now();
    let resp = get(gw.port, "/d/1");
    let took = t.elapsed();
    assert_eq!(resp.status, 200, "{}", resp.text());
    (body(&resp), took)
}

/// Starts [`composite`], asks `/d/1` and returns the 200 answer's JSON.
fn composite_answer(upstreams: &[(&str, &Backend)], aggregate: &str) -> Value {
    let gw = composite(upstreams, aggregate, "");
    let resp = get(gw.port, "/d/1");
    assert_eq!(resp.status, 200, "{}", resp.text());
    body(&resp)
}

#[test]
fn results_under_keys_with_params_and_query() {
    let users =
        Backend::start(|r| Response::ok(format!("{{\"path\":{:?},\"name\":\"ada\"}}", r.target)));
    let orders = json_backend(json!([{"id": "o-1"}, {"id": "o-2"}]), Duration::ZERO);
    let gw = composite(
        &[("users", &users), ("orders", &orders)],
        r#"parts: [
            Part(name: "profile", upstream: "users", path: "/users/{id}"),
            Part(name: "orders", upstream: "orders", path: "/orders?user={id}",
                 query: { "page": "{query.page}", "q": "{query.q}" }),
        ]"#,
        "",
    );
    let resp = get_with(
        gw.port,
        "/d/42?page=3&q=a%2Fb+c",
        &[
            ("X-Request-Id", "agg-req-1"),
            ("X-Forwarded-For", "10.0.0.9"),
        ],
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(
        resp.header("content-length"),
        Some(resp.body.len().to_string().as_str())
    );
    assert_eq!(resp.header("x-aggregate-partial"), None);
    assert_eq!(
        body(&resp),
        json!({"profile": {"path": "/users/42", "name": "ada"}, "orders": [{"id": "o-1"}, {"id": "o-2"}]})
    );
    let o = orders.last();
    assert_eq!(o.target, "/orders?user=42&page=3&q=a%2Fb%20c");
    for r in [users.last(), o] {
        assert_eq!(r.header("x-request-id"), Some("agg-req-1"));
        assert_eq!(r.header("x-forwarded-for"), Some("10.0.0.9, 127.0.0.1"));
        assert_eq!(r.header("accept"), Some("application/json"));
    }
}

#[test]
fn merge_mode_deep_merges_with_the_later_part_winning() {
    let a = json_backend(
        json!({"user": {"id": 1, "name": "a"}, "plan": "free"}),
        Duration::ZERO,
    );
    let b = json_backend(
        json!({"user": {"name": "b", "vip": true}, "plan": "pro"}),
        Duration::ZERO,
    );
    let got = composite_answer(
        &[("a", &a), ("b", &b)],
        r#"merge: Merge, parts: [
            Part(name: "first", upstream: "a", path: "/a"),
            Part(name: "second", upstream: "b", path: "/b"),
        ]"#,
    );
    assert_eq!(
        got,
        json!({"user": {"id": 1, "name": "b", "vip": true}, "plan": "pro"})
    );
}

#[test]
fn independent_parts_run_concurrently() {
    let slow = Duration::from_millis(300);
    let a = json_backend(json!({"a": 1}), slow);
    let b = json_backend(json!({"b": 2}), slow);
    let gw = composite(
        &[("a", &a), ("b", &b)],
        r#"parts: [
            Part(name: "a", upstream: "a", path: "/a"),
            Part(name: "b", upstream: "b", path: "/b"),
        ]"#,
        "",
    );
    let _ = get(gw.port, "/d/warm");
    let (v, took) = timed_get(&gw);
    assert_eq!(v, json!({"a": {"a": 1}, "b": {"b": 2}}));
    assert!(took >= slow, "took {took:?}");
    assert!(
        took < Duration::from_millis(520),
        "took {took:?}: parts ran one after the other"
    );
}

#[test]
fn a_chain_runs_in_order_beside_an_independent_part() {
    let seen: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let log = |name: &'static str, seen: &Arc<Mutex<Vec<(String, Instant)>>>| {
        let seen = seen.clone();
        move |r: &Request| {
            seen.lock()
                .unwrap()
                .push((format!("{name} {}", r.target), Instant::now()));
        }
    };
    let note_orders = log("orders", &seen);
    let orders = Backend::start(move |r| {
        note_orders(r);
        Response::ok(json!({"orders": [{"id": "o-1", "customer_id": "c 7"}]}).to_string())
            .delay(Duration::from_millis(250))
    });
    let note_users = log("users", &seen);
    let users = Backend::start(move |r| {
        note_users(r);
        Response::ok(json!({"name": "grace"}).to_string())
    });
    let note_products = log("products", &seen);
    let products = Backend::start(move |r| {
        note_products(r);
        Response::ok("[]").delay(Duration::from_millis(250))
    });
    let gw = composite(
        &[
            ("orders", &orders),
            ("users", &users),
            ("products", &products),
        ],
        r#"parts: [
            Part(name: "orders", upstream: "orders", path: "/orders", target: "orders"),
            Part(name: "customer", upstream: "users", path: "/users/{orders.orders.0.customer_id}", after: "orders"),
            Part(name: "products", upstream: "products", path: "/products"),
        ]"#,
        "",
    );
    let (v, took) = timed_get(&gw);
    assert_eq!(
        v,
        json!({"orders": [{"id": "o-1", "customer_id": "c 7"}], "customer": {"name": "grace"}, "products": []})
    );
    let seen = seen.lock().unwrap().clone();
    let at = |prefix: &str| {
        seen.iter()
            .find(|(n, _)| n.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} request in {seen:?}"))
            .clone()
    };
    let (_, orders_at) = at("orders");
    let (users_req, users_at) = at("users");
    let (_, products_at) = at("products");
    assert_eq!(users_req, "users /users/c%207");
    assert!(
        users_at.duration_since(orders_at) >= Duration::from_millis(250),
        "the chained part started before its dependency answered"
    );
    let gap = if products_at > orders_at {
        products_at - orders_at
    } else {
        orders_at - products_at
    };
    assert!(
        gap < Duration::from_millis(150),
        "products waited for the chain: {gap:?}"
    );
    assert!(took < Duration::from_millis(480), "took {took:?}");
}

#[test]
fn claims_fill_templates_and_identity_goes_to_every_part() {
    let users = Backend::start(|r| Response::ok(format!("{{\"seen\":{:?}}}", r.target)));
    let orders = Backend::start(|r| Response::ok(format!("{{\"seen\":{:?}}}", r.target)));
    let text = format!(
        r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    upstreams: {{ "users": Upstream(targets: ["{u}"]), "orders": Upstream(targets: ["{o}"]) }},
    authenticators: {{
        "jwt": Jwt(algorithms: [HS256], key: Secret("{SECRET}"),
                   forward_claims: {{ "sub": "X-User-Id" }}),
    }},
    routes: [
        Route(name: "me", match: Match(path: "/me"), auth: Required(["jwt"]), keep_authorization: false,
            non_idempotent: true,
            aggregate: Aggregate(parts: [
                Part(name: "profile", upstream: "users", path: "/users/{{claims.sub}}",
                     headers: {{ "X-Tenant": "{{claims.tenant}}" }}),
                Part(name: "orders", upstream: "orders", method: "POST", path: "/orders/search",
                     body: "{{{{\"user\": \"{{claims.sub}}\", \"level\": {{claims.level}}}}}}"),
            ])),
    ],
)"#,
        u = users.addr(),
        o = orders.addr()
    );
    let gw = Gateway::start(&text);
    let anon = get(gw.port, "/me");
    assert_eq!(anon.status, 401);
    assert_eq!(users.count() + orders.count(), 0, "fan-out before auth");
    let claims = json!({"sub": "u/1", "tenant": "acme", "level": 3, "exp": unix_now() + 300});
    let tok = hs256_token(&claims, SECRET);
    let bearer = format!("Bearer {tok}");
    let resp = get_with(
        gw.port,
        "/me",
        &[("Authorization", &bearer), ("X-User-Id", "spoofed")],
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        body(&resp),
        json!({"profile": {"seen": "/users/u%2F1"}, "orders": {"seen": "/orders/search"}})
    );
    let u = users.last();
    assert_eq!(u.header("x-tenant"), Some("acme"));
    let o = orders.last();
    assert_eq!(o.method, "POST");
    assert_eq!(o.header("content-type"), Some("application/json"));
    assert_eq!(
        serde_json::from_slice::<Value>(&o.body).unwrap(),
        json!({"user": "u/1", "level": 3})
    );
    for r in [u, o] {
        assert_eq!(r.headers_named("x-user-id"), vec!["u/1"]);
        assert_eq!(r.header("authorization"), None);
    }
}

#[test]
fn allow_deny_rename_target_and_group() {
    let users = json_backend(
        json!({"data": {"id": 1, "name": "ada", "email": "a@x", "password": "p", "address": {"city": "c", "zip": "z"}}}),
        Duration::ZERO,
    );
    let orders = json_backend(
        json!([{"id": "o-1", "total": 5, "internal": 1}, {"id": "o-2", "total": 7, "internal": 2}]),
        Duration::ZERO,
    );
    let got = composite_answer(
        &[("users", &users), ("orders", &orders)],
        r#"parts: [
            Part(name: "profile", upstream: "users", path: "/u", target: "data",
                 deny: ["password", "address.zip"], rename: { "name": "display_name" }),
            Part(name: "orders", upstream: "orders", path: "/o", allow: ["id", "total"], group: "account"),
            Part(name: "contact", upstream: "users", path: "/u", target: "data", allow: ["email"], group: "account"),
        ]"#,
    );
    assert_eq!(
        got,
        json!({
            "profile": {"id": 1, "display_name": "ada", "email": "a@x", "address": {"city": "c"}},
            "account": {"email": "a@x"},
        }),
        "a group key holding a list and an object: the later part wins"
    );
}

#[test]
fn optional_parts_failing_and_timing_out_are_left_out() {
    let good = json_backend(json!({"ok": true}), Duration::ZERO);
    let broken = Backend::start(|_| Response::ok("{\"error\":\"boom\"}").status(500));
    let slow = json_backend(json!({"late": true}), Duration::from_millis(1500));
    let not_json = Backend::start(|_| Response::ok("<html>oops</html>"));
    let dead = closed_port();
    let text = config(
        1,
        &format!(
            "{}{}{}{}{}",
            upstream("good", &[&good.addr()], ""),
            upstream("broken", &[&broken.addr()], ""),
            upstream("slow", &[&slow.addr()], ""),
            upstream("html", &[&not_json.addr()], ""),
            upstream("dead", &[&format!("127.0.0.1:{dead}")], ""),
        ),
        r#"        Route(name: "d", match: Match(path: "/d"), aggregate: Aggregate(errors_field: "missing", parts: [
            Part(name: "good", upstream: "good", path: "/"),
            Part(name: "broken", upstream: "broken", path: "/", required: false),
            Part(name: "slow", upstream: "slow", path: "/", required: false, timeout_ms: 200),
            Part(name: "html", upstream: "html", path: "/", required: false),
            Part(name: "dead", upstream: "dead", path: "/", required: false),
            Part(name: "after_broken", upstream: "good", path: "/", required: false, after: "broken"),
        ])),
"#,
    );
    let gw = Gateway::start(&text);
    let t = Instant::now();
    let resp = get(gw.port, "/d");
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "waited for the slow part"
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.header("x-aggregate-partial"),
        Some("broken,slow,html,dead,after_broken")
    );
    let v = body(&resp);
    assert_eq!(v["good"], json!({"ok": true}));
    let errors = &v["missing"];
    assert_eq!(errors["broken"], "status 500");
    assert_eq!(errors["slow"], "timeout after 200 ms");
    assert!(
        errors["html"].as_str().unwrap().starts_with("invalid JSON"),
        "{errors}"
    );
    assert!(
        errors["dead"].as_str().unwrap().contains("connect"),
        "{errors}"
    );
    assert_eq!(
        errors["after_broken"],
        "depends on \"broken\", which failed"
    );
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
}

#[test]
fn a_required_part_failing_fails_the_request_naming_it() {
    let good = json_backend(json!({"ok": true}), Duration::ZERO);
    let broken = Backend::start(|_| Response::ok("{}").status(503));
    let slow = json_backend(json!({}), Duration::from_millis(1500));
    let gw = composite(
        &[("good", &good), ("broken", &broken), ("slow", &slow)],
        r#"parts: [
            Part(name: "good", upstream: "good", path: "/"),
            Part(name: "profile", upstream: "broken", path: "/"),
        ]"#,
        "",
    );
    let resp = get(gw.port, "/d/1");
    let msg = error_of(&resp, 502);
    assert!(
        msg.contains("\"profile\"") && msg.contains("status 503"),
        "{msg}"
    );
    assert_eq!(resp.json_str("part").as_deref(), Some("profile"));
    drop(gw);

    let gw = composite(
        &[("good", &good), ("slow", &slow)],
        r#"timeout_ms: 300, parts: [
            Part(name: "good", upstream: "good", path: "/"),
            Part(name: "feed", upstream: "slow", path: "/"),
        ]"#,
        "",
    );
    let t = Instant::now();
    let resp = get(gw.port, "/d/1");
    assert!(t.elapsed() < Duration::from_millis(1000));
    let msg = error_of(&resp, 504);
    assert!(msg.contains("\"feed\"") && msg.contains("300 ms"), "{msg}");
}

#[test]
fn oversize_parts_fail_without_being_buffered() {
    let big = "x".repeat(5000);
    let fixed = {
        let big = big.clone();
        Backend::start(move |_| Response::ok(format!("{{\"b\":\"{big}\"}}")))
    };
    let chunked = {
        let big = big.clone();
        Backend::start(move |_| {
            Response::chunked(vec![
                b"{\"b\":\"".to_vec(),
                big.clone().into_bytes(),
                b"\"}".to_vec(),
            ])
        })
    };
    let small = Backend::start(|_| Response::chunked(vec![b"{\"s\":".to_vec(), b"1}".to_vec()]));
    let gw = composite(
        &[("fixed", &fixed), ("chunked", &chunked), ("small", &small)],
        r#"max_part_bytes: 1000, parts: [
            Part(name: "fixed", upstream: "fixed", path: "/", required: false),
            Part(name: "chunked", upstream: "chunked", path: "/", required: false),
            Part(name: "small", upstream: "small", path: "/"),
        ]"#,
        "",
    );
    let resp = get(gw.port, "/d/1");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = body(&resp);
    assert_eq!(v["small"], json!({"s": 1}));
    assert_eq!(v["_errors"]["fixed"], "response larger than 1000 bytes");
    assert_eq!(v["_errors"]["chunked"], "response larger than 1000 bytes");
    assert_eq!(resp.header("x-aggregate-partial"), Some("fixed,chunked"));
}

#[test]
fn an_announced_length_is_not_allocated_up_front() {
    // A generous max_part_bytes and an upstream announcing 4 EiB, then
    // closing: the part fails, the gateway stays up.
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut conn = Conn::new(stream);
            if let Ok(Some(_)) = conn.read_head(64 * 1024) {
                let _ = conn.stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 4611686018427387904\r\n\r\n{",
                );
            }
        }
    });
    let route = "        Route(name: \"d\", match: Match(path: \"/d/{id}\"),\n            aggregate: Aggregate(max_part_bytes: 18446744073709551615, parts: [Part(name: \"b\", upstream: \"b\", path: \"/\")])),\n";
    let gw = Gateway::start(&config(1, &upstream("b", &[&addr], ""), route));
    for _ in 0..2 {
        error_of(&get(gw.port, "/d/1"), 502);
    }
}

#[test]
fn the_composite_body_limit_applies() {
    let b = json_backend(json!({"text": "y".repeat(3000)}), Duration::ZERO);
    let gw = composite(
        &[("b", &b)],
        r#"max_body_bytes: 2000, parts: [Part(name: "b", upstream: "b", path: "/")]"#,
        "",
    );
    let msg = error_of(&get(gw.port, "/d/1"), 502);
    assert!(msg.contains("larger than 2000 bytes"), "{msg}");
}

#[test]
fn invalid_json_fails_a_required_part() {
    let b = Backend::start(|_| Response::ok("{\"a\": ").header("Content-Type", "application/json"));
    let gw = composite(
        &[("b", &b)],
        r#"parts: [Part(name: "b", upstream: "b", path: "/")]"#,
        "",
    );
    let msg = error_of(&get(gw.port, "/d/1"), 502);
    assert!(
        msg.contains("\"b\"") && msg.contains("invalid JSON"),
        "{msg}"
    );
}

/// A composite of one part answering `{"n": 1}`.
fn one_part_gateway() -> (Backend, Gateway) {
    let b = json_backend(json!({"n": 1}), Duration::ZERO);
    let gw = composite(
        &[("b", &b)],
        r#"parts: [Part(name: "b", upstream: "b", path: "/")]"#,
        "",
    );
    (b, gw)
}

#[test]
fn keep_alive_and_a_discarded_client_body() {
    let (b, gw) = one_part_gateway();
    let mut c = Client::connect(gw.port);
    for _ in 0..3 {
        c.send(&build_request(
            "POST",
            "/d/1",
            &[("Host", "x")],
            b"{\"ignored\":true}",
        ));
        let resp = c.read_response();
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(body(&resp), json!({"b": {"n": 1}}));
        assert_eq!(resp.header("connection"), None);
    }
    assert_eq!(b.count(), 3);
    assert!(b.connections() <= 2, "upstream connections were not pooled");
}

fn check_problems(text: &str) -> String {
    let dir = temp_dir();
    let path = dir.join("agg.ron");
    std::fs::write(&path, text).unwrap();
    let (status, _, stderr) = run_cli(&["check", path.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
    stderr
}

#[test]
fn cycles_and_unknown_references_are_config_errors() {
    let text = r#"Gateway(
    listeners: [Listener(name: "l", bind: "127.0.0.1:8080")],
    upstreams: { "a": Upstream(targets: ["127.0.0.1:9"]) },
    routes: [
        Route(name: "d", match: Match(path: "/d"), aggregate: Aggregate(parts: [
            Part(name: "x", upstream: "a", path: "/x/{y.id}"),
            Part(name: "y", upstream: "a", path: "/y",
                 after: "x"),
            Part(name: "z", upstream: "a", path: "/z/{ghost.id}"),
            Part(name: "w", upstream: "a", path: "/w", after: "nobody"),
        ])),
        Route(name: "both", match: Match(path: "/b"), upstream: "a",
              aggregate: Aggregate(parts: [Part(name: "p", upstream: "a", path: "/")])),
    ],
)
"#;
    let stderr = check_problems(text);
    let line_of = |needle: &str| text[..text.find(needle).unwrap()].matches('\n').count() + 1;
    let expect = [
        (
            line_of("\"/x/{y.id}\""),
            "routes[0].aggregate.parts[0].path: dependency cycle: x → y → x",
        ),
        (
            line_of("\"/z/{ghost.id}\""),
            "routes[0].aggregate.parts[2].path: {ghost.id} refers to unknown part \"ghost\"",
        ),
        (
            line_of("\"nobody\""),
            "routes[0].aggregate.parts[3].after: unknown part \"nobody\"",
        ),
        (
            line_of("name: \"both\""),
            "routes[1].upstream: give exactly one of `upstream` or `aggregate`",
        ),
    ];
    for (line, msg) in expect {
        let found = stderr
            .lines()
            .any(|l| l.contains(&format!(".ron:{line}:")) && l.contains(msg));
        assert!(found, "no line {line} with {msg:?} in:\n{stderr}");
    }
}

#[test]
fn bff_listeners_serve_different_routes_with_different_limits() {
    let b = json_backend(json!({"n": 1}), Duration::ZERO);
    let text = format!(
        r#"Gateway(
    shards: Count(1),
    listeners: [
        Listener(name: "mobile", bind: "127.0.0.1:$PORT", routes: ["mobile-home"],
                 limits_http: HttpLimits(max_header_bytes: 512)),
        Listener(name: "web", bind: "127.0.0.1:$PORT2", routes: ["web-home", "raw"]),
    ],
    upstreams: {{ "b": Upstream(targets: ["{addr}"]) }},
    routes: [
        Route(name: "mobile-home", match: Match(path: "/home"),
              aggregate: Aggregate(parts: [Part(name: "small", upstream: "b", path: "/s", allow: ["n"])])),
        Route(name: "web-home", match: Match(path: "/home"),
              aggregate: Aggregate(parts: [Part(name: "a", upstream: "b", path: "/a"),
                                           Part(name: "b", upstream: "b", path: "/b")])),
        Route(name: "raw", match: Match(path_prefix: "/raw"), upstream: "b"),
    ],
)"#,
        addr = b.addr()
    );
    let gw = Gateway::start(&text);
    let m = get(gw.port, "/home");
    assert_eq!(body(&m), json!({"small": {"n": 1}}));
    let w = get(gw.port2, "/home");
    assert_eq!(body(&w), json!({"a": {"n": 1}, "b": {"n": 1}}));
    assert_eq!(get(gw.port, "/raw/x").status, 404);
    assert_eq!(get(gw.port2, "/raw/x").status, 200);
    let long = "v".repeat(1000);
    assert_eq!(get_with(gw.port, "/home", &[("X-Big", &long)]).status, 431);
    assert_eq!(get_with(gw.port2, "/home", &[("X-Big", &long)]).status, 200);
}

#[test]
fn the_composite_timeout_bounds_optional_parts_and_chains() {
    let fast = json_backend(json!({"id": "7"}), Duration::from_millis(150));
    let slow = json_backend(json!({"late": true}), Duration::from_millis(2000));
    let gw = composite(
        &[("fast", &fast), ("slow", &slow)],
        r#"timeout_ms: 400, parts: [
            Part(name: "first", upstream: "fast", path: "/"),
            Part(name: "second", upstream: "slow", path: "/s/{first.id}", required: false),
            Part(name: "side", upstream: "slow", path: "/side", required: false, timeout_ms: 5000),
        ]"#,
        "",
    );
    let (v, took) = timed_get(&gw);
    assert!(took < Duration::from_millis(800), "took {took:?}");
    assert_eq!(v["first"], json!({"id": "7"}));
    let limit = "timeout: the composite's limit of 400 ms passed";
    assert_eq!(v["_errors"]["second"], limit);
    assert_eq!(v["_errors"]["side"], limit);
    let mut targets: Vec<String> = slow.requests().into_iter().map(|r| r.target).collect();
    targets.sort();
    assert_eq!(targets, vec!["/s/7", "/side"]);
}

#[test]
fn expect_continue_is_answered_without_reading_the_body() {
    let (_b, gw) = one_part_gateway();
    let mut c = Client::connect(gw.port);
    c.send(b"POST /d/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let resp = c.read_response();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("connection"), Some("close"));
    assert_eq!(body(&resp), json!({"b": {"n": 1}}));
}
