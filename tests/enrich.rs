//! Aggregation beyond plain fan-out, through the real gateway against
//! loopback backends: array paths and filters, per-item enrichment
//! (`for_each`) with its caps and batching, item failures, the concurrency
//! cap seen at a backend, merge collisions, key order, write parts,
//! conditional parts, status and headers from parts, and config errors.

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// A backend answering every request with this JSON.
fn json_backend(v: Value) -> Backend {
    Backend::start(move |_| Response::ok(v.to_string()).header("Content-Type", "application/json"))
}

/// An order with these product ids.
fn order_backend(ids: &[&str]) -> Backend {
    let items: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"line": i + 1, "product_id": id}))
        .collect();
    json_backend(json!({"id": "o-1", "items": items}))
}

/// A products backend: `/products/ID` answers that product, `/products?ids=A,B`
/// the listed ones (in reverse order, to show the join is by key); an id
/// starting with `bad` answers 500 on `/products/ID`.
fn products_backend() -> Backend {
    Backend::start(|r| {
        let target = r.target.clone();
        if let Some(id) = target.strip_prefix("/products/") {
            if id.starts_with("bad") {
                return Response::ok("{}").status(500);
            }
            return Response::ok(json!({"id": id, "name": format!("name of {id}")}).to_string());
        }
        if let Some(ids) = target.strip_prefix("/products?ids=") {
            let mut list: Vec<Value> = ids
                .split(',')
                .filter(|i| !i.starts_with("bad"))
                .map(|id| json!({"id": id, "name": format!("name of {id}")}))
                .collect();
            list.reverse();
            return Response::ok(json!({"products": list}).to_string());
        }
        Response::ok("{}").status(404)
    })
}

/// A gateway with one composite route `/d/{id}` (GET and POST).
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

#[track_caller]
fn ok_json(gw: &Gateway, path: &str) -> (Value, Resp) {
    let resp = get(gw.port, path);
    assert_eq!(resp.status, 200, "{}", resp.text());
    (body(&resp), resp)
}

const FOR_EACH: &str = r#"Part(name: "products", upstream: "products", path: "/products/{item.product_id}",
                 for_each: "order.items", into: "product""#;

#[test]
fn wildcards_filters_and_negative_indexes() {
    let order = order_backend(&["p-1", "p 2", "p-3"]);
    let echo = Backend::start(|r| Response::ok(json!({"target": r.target}).to_string()));
    let gw = composite(
        &[("orders", &order), ("echo", &echo)],
        r#"parts: [
            Part(name: "order", upstream: "orders", path: "/orders/{id}", deny: ["items.*.line"]),
            Part(name: "all", upstream: "echo",
                 path: "/x?all={order.items.*.product_id}&semi={order.items.*.product_id|join(\";\")}&first={order.items.*.product_id|first}&last={order.items.-1.product_id}"),
        ]"#,
        "",
    );
    let (v, _) = ok_json(&gw, "/d/1");
    assert_eq!(
        v["all"]["target"],
        "/x?all=p-1,p%202,p-3&semi=p-1;p%202;p-3&first=p-1&last=p-3"
    );
    // `items.*.line` removed from every element.
    assert_eq!(
        v["order"]["items"],
        json!([{"product_id": "p-1"}, {"product_id": "p 2"}, {"product_id": "p-3"}])
    );
}

#[test]
fn for_each_enriches_every_item_and_handles_none() {
    let order = order_backend(&["p-1", "p-2", "p-3"]);
    let products = products_backend();
    let gw = composite(
        &[("orders", &order), ("products", &products)],
        &format!(
            r#"parts: [
            Part(name: "order", upstream: "orders", path: "/orders/{{id}}"),
            {FOR_EACH}, allow: ["name"]),
        ]"#
        ),
        "",
    );
    let (v, resp) = ok_json(&gw, "/d/1");
    assert_eq!(resp.header("x-aggregate-partial"), None);
    assert_eq!(
        v,
        json!({"order": {"id": "o-1", "items": [
            {"line": 1, "product_id": "p-1", "product": {"name": "name of p-1"}},
            {"line": 2, "product_id": "p-2", "product": {"name": "name of p-2"}},
            {"line": 3, "product_id": "p-3", "product": {"name": "name of p-3"}},
        ]}})
    );
    let mut seen: Vec<String> = products.requests().into_iter().map(|r| r.target).collect();
    seen.sort();
    assert_eq!(seen, ["/products/p-1", "/products/p-2", "/products/p-3"]);

    let empty = order_backend(&[]);
    let products = products_backend();
    let gw = composite(
        &[("orders", &empty), ("products", &products)],
        &format!(
            r#"parts: [
            Part(name: "order", upstream: "orders", path: "/orders/{{id}}"),
            {FOR_EACH}),
        ]"#
        ),
        "",
    );
    let (v, _) = ok_json(&gw, "/d/1");
    assert_eq!(v, json!({"order": {"id": "o-1", "items": []}}));
    assert_eq!(products.count(), 0);
}

#[test]
fn over_the_item_cap_the_part_fails_as_configured() {
    let order = order_backend(&["p-1", "p-2", "p-3"]);
    let products = products_backend();
    let aggregate = |required: bool| {
        format!(
            r#"parts: [
            Part(name: "order", upstream: "orders", path: "/orders/{{id}}"),
            {FOR_EACH}, max_items: 2, required: {required}),
        ]"#
        )
    };
    let gw = composite(
        &[("orders", &order), ("products", &products)],
        &aggregate(true),
        "",
    );
    let resp = get(gw.port, "/d/1");
    let msg = error_of(&resp, 502);
    assert!(
        msg.contains("products") && msg.contains("at most 2"),
        "{msg}"
    );
    drop(gw);
    let gw = composite(
        &[("orders", &order), ("products", &products)],
        &aggregate(false),
        "",
    );
    let (v, resp) = ok_json(&gw, "/d/1");
    assert_eq!(resp.header("x-aggregate-partial"), Some("products"));
    assert!(v["_errors"]["products"]
        .as_str()
        .unwrap()
        .contains("3 items; at most 2"));
    assert!(v["order"]["items"][0].get("product").is_none());
    assert_eq!(products.count(), 0, "no item call over the cap");
}

#[test]
fn a_batch_makes_one_call_joined_back_by_key() {
    let order = order_backend(&["p-1", "p-2", "bad-3", "p-1"]);
    let products = products_backend();
    let gw = composite(
        &[("orders", &order), ("products", &products)],
        r#"parts: [
            Part(name: "order", upstream: "orders", path: "/orders/{id}"),
            Part(name: "products", upstream: "products", path: "/products/{item.product_id}",
                 for_each: "order.items", into: "product",
                 batch: Some(Batch(path: "/products?ids={order.items.*.product_id|join(\",\")}",
                                   key: "id", target: "products"))),
        ]"#,
        "",
    );
    let (v, resp) = ok_json(&gw, "/d/1");
    assert_eq!(products.count(), 1, "one call for all items");
    assert_eq!(products.last().target, "/products?ids=p-1,p-2,bad-3,p-1");
    let items = &v["order"]["items"];
    assert_eq!(
        items[0]["product"],
        json!({"id": "p-1", "name": "name of p-1"})
    );
    assert_eq!(
        items[1]["product"],
        json!({"id": "p-2", "name": "name of p-2"})
    );
    assert!(items[2].get("product").is_none());
    assert_eq!(
        items[3]["product"],
        json!({"id": "p-1", "name": "name of p-1"})
    );
    assert!(v["_errors"]["products[2]"]
        .as_str()
        .unwrap()
        .contains("bad-3"));
    assert_eq!(resp.header("x-aggregate-partial"), Some("products[2]"));
}

#[test]
fn item_failures_are_reported_or_fail_the_part() {
    let order = order_backend(&["p-1", "bad-2", "p-3"]);
    let products = products_backend();
    let gw = composite(
        &[("orders", &order), ("products", &products)],
        &format!(
            r#"parts: [
            Part(name: "order", upstream: "orders", path: "/orders/{{id}}"),
            {FOR_EACH}, on_item_error: Report),
        ]"#
        ),
        "",
    );
    let (v, resp) = ok_json(&gw, "/d/1");
    assert_eq!(resp.header("x-aggregate-partial"), Some("products[1]"));
    assert_eq!(v["_errors"], json!({"products[1]": "status 500"}));
    assert_eq!(v["order"]["items"][0]["product"]["id"], "p-1");
    assert!(v["order"]["items"][1].get("product").is_none());
    assert_eq!(v["order"]["items"][2]["product"]["id"], "p-3");
    drop(gw);
    for required in [true, false] {
        let gw = composite(
            &[("orders", &order), ("products", &products)],
            &format!(
                r#"parts: [
                Part(name: "order", upstream: "orders", path: "/orders/{{id}}"),
                {FOR_EACH}, on_item_error: FailPart, required: {required}),
            ]"#
            ),
            "",
        );
        let resp = get(gw.port, "/d/1");
        if required {
            let msg = error_of(&resp, 502);
            assert!(msg.contains("products") && msg.contains("item 1"), "{msg}");
        } else {
            assert_eq!(resp.status, 200, "{}", resp.text());
            let v = body(&resp);
            assert_eq!(v["_errors"], json!({"products": "item 1: status 500"}));
            assert!(v["order"]["items"][0].get("product").is_none());
        }
    }
}

#[test]
fn the_concurrency_cap_holds_at_the_backend() {
    let ids: Vec<String> = (0..12).map(|i| format!("p-{i}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let order = order_backend(&id_refs);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (f, m) = (in_flight.clone(), most.clone());
    let products = Backend::start(move |_| {
        let now = f.fetch_add(1, Ordering::SeqCst) + 1;
        m.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(60));
        f.fetch_sub(1, Ordering::SeqCst);
        Response::ok("{\"ok\":true}")
    });
    let gw = composite(
        &[("orders", &order), ("products", &products)],
        &format!(
            r#"parts: [
            Part(name: "order", upstream: "orders", path: "/orders/{{id}}"),
            {FOR_EACH}, max_concurrency: 3),
        ]"#
        ),
        "",
    );
    let (v, _) = ok_json(&gw, "/d/1");
    assert_eq!(products.count(), 12);
    assert_eq!(v["order"]["items"][11]["product"], json!({"ok": true}));
    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= 3,
        "{most} item calls in flight at once; the cap is 3"
    );
    assert!(most >= 2, "item calls did not overlap at all ({most})");
}

#[test]
fn collisions_in_each_mode() {
    let a = json_backend(json!({"tags": ["a"], "user": {"id": 1}, "n": 1}));
    let b = json_backend(json!({"tags": ["b"], "user": {"vip": true}, "n": 2}));
    let parts = r#"parts: [
            Part(name: "a", upstream: "a", path: "/a"),
            Part(name: "b", upstream: "b", path: "/b"),
        ]"#;
    let run = |mode: &str| {
        let gw = composite(
            &[("a", &a), ("b", &b)],
            &format!("merge: Merge, collisions: {mode}, {parts}"),
            "",
        );
        get(gw.port, "/d/1")
    };
    let resp = run("Overwrite");
    assert_eq!(resp.status, 200);
    assert_eq!(
        body(&resp),
        json!({"tags": ["b"], "user": {"id": 1, "vip": true}, "n": 2})
    );
    let resp = run("Concat");
    assert_eq!(resp.status, 200);
    assert_eq!(
        body(&resp),
        json!({"tags": ["a", "b"], "user": {"id": 1, "vip": true}, "n": 2})
    );
    let resp = run("Error");
    let msg = error_of(&resp, 502);
    assert!(msg.contains("two parts set the field tags"), "{msg}");
}

#[test]
fn key_order_follows_the_backends_then_the_parts() {
    let z = Backend::start(|_| Response::ok(r#"{"zulu":1,"alpha":{"y":1,"b":2},"mike":3}"#));
    let y = Backend::start(|_| Response::ok(r#"{"yankee":1,"bravo":2}"#));
    let gw = composite(
        &[("z", &z), ("y", &y)],
        r#"merge: Merge, parts: [
            Part(name: "zz", upstream: "z", path: "/z"),
            Part(name: "yy", upstream: "y", path: "/y"),
        ]"#,
        "",
    );
    let resp = get(gw.port, "/d/1");
    assert_eq!(
        resp.text(),
        r#"{"zulu":1,"alpha":{"y":1,"b":2},"mike":3,"yankee":1,"bravo":2}"#
    );
    drop(gw);
    let gw = composite(
        &[("z", &z), ("y", &y)],
        r#"parts: [
            Part(name: "zz", upstream: "z", path: "/z", deny: ["zulu"]),
            Part(name: "yy", upstream: "y", path: "/y", group: "at.some.depth"),
        ]"#,
        "",
    );
    let resp = get(gw.port, "/d/1");
    assert_eq!(
        resp.text(),
        r#"{"zz":{"alpha":{"y":1,"b":2},"mike":3},"at":{"some":{"depth":{"yankee":1,"bravo":2}}}}"#
    );
}

#[test]
fn write_parts_run_after_their_reads_with_bodies_from_the_client() {
    let log: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let l = log.clone();
    let orders = Backend::start(move |r| {
        l.lock()
            .unwrap()
            .push((format!("read {}", r.target), Instant::now()));
        std::thread::sleep(Duration::from_millis(100));
        if r.target.ends_with("/missing") {
            return Response::ok("{}").status(404);
        }
        Response::ok(json!({"id": "o-7", "total": 12.5}).to_string())
    });
    let l = log.clone();
    let payments = Backend::start(move |r| {
        l.lock()
            .unwrap()
            .push((format!("{} {}", r.method, r.target), Instant::now()));
        Response::ok(json!({"payment": "pay-1"}).to_string()).status(201)
    });
    let gw = composite(
        &[("orders", &orders), ("payments", &payments)],
        r#"status_from: Some("pay"), parts: [
            Part(name: "order", upstream: "orders", path: "/orders/{id}"),
            Part(name: "pay", upstream: "payments", method: "POST", path: "/payments",
                 body: "{{\"customer\": \"{body.customer.id}\", \"order\": \"{order.id}\", \"amount\": {order.total}}}"),
        ]"#,
        "non_idempotent: true,",
    );
    let client_body = br#"{"customer": {"id": "c \"9\""}, "note": "x"}"#;
    let resp = request(
        gw.port,
        "POST",
        "/d/1",
        &[("Content-Type", "application/json")],
        client_body,
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    assert_eq!(
        body(&resp),
        json!({"order": {"id": "o-7", "total": 12.5}, "pay": {"payment": "pay-1"}})
    );
    let p = payments.last();
    assert_eq!(p.method, "POST");
    let sent: Value = serde_json::from_slice(&p.body).unwrap();
    assert_eq!(
        sent,
        json!({"customer": "c \"9\"", "order": "o-7", "amount": 12.5})
    );
    assert_eq!(p.header("content-type"), Some("application/json"));
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].0.starts_with("read") && seen[1].0 == "POST /payments");
    assert!(seen[1].1 >= seen[0].1 + Duration::from_millis(90));
    // A failed read: the write is never sent, and status_from's 404 is not used
    // (the failing part is `order`).
    let before = payments.count();
    let resp = request(
        gw.port,
        "POST",
        "/d/missing",
        &[],
        br#"{"customer": {"id": "c"}}"#,
    );
    assert_json_error(&resp, 502);
    assert_eq!(payments.count(), before);
    // Not JSON: 400 before any call.
    let reads = orders.count();
    let resp = request(gw.port, "POST", "/d/1", &[], b"customer=1");
    assert_json_error(&resp, 400);
    assert_eq!(orders.count(), reads);
}

#[test]
fn conditional_parts_are_absent_when_their_condition_fails() {
    let with = json_backend(json!({"id": "o-1", "coupon": "SAVE"}));
    let without = json_backend(json!({"id": "o-2", "coupon": null}));
    let coupons = Backend::start(|r| Response::ok(json!({"checked": r.target}).to_string()));
    let extras = Backend::start(|_| Response::ok("{\"extra\":true}"));
    let parts = r#"parts: [
            Part(name: "order", upstream: "orders", path: "/orders/{id}"),
            Part(name: "coupon", upstream: "coupons", path: "/coupons/{order.coupon}", when: "order.coupon"),
            Part(name: "no_coupon", upstream: "extras", path: "/suggest", when: "!order.coupon"),
            Part(name: "beta", upstream: "extras", path: "/beta", when: "query.beta == \"yes\""),
            Part(name: "after_coupon", upstream: "extras", path: "/after", after: "coupon"),
        ]"#;
    let gw = composite(
        &[
            ("orders", &with),
            ("coupons", &coupons),
            ("extras", &extras),
        ],
        parts,
        "",
    );
    let (v, resp) = ok_json(&gw, "/d/1");
    assert_eq!(resp.header("x-aggregate-partial"), None);
    assert_eq!(
        v,
        json!({"order": {"id": "o-1", "coupon": "SAVE"}, "coupon": {"checked": "/coupons/SAVE"},
               "after_coupon": {"extra": true}})
    );
    let (v, _) = ok_json(&gw, "/d/1?beta=yes");
    assert_eq!(v["beta"], json!({"extra": true}));
    drop(gw);
    let calls = coupons.count();
    let extra_calls = extras.count();
    let gw = composite(
        &[
            ("orders", &without),
            ("coupons", &coupons),
            ("extras", &extras),
        ],
        parts,
        "",
    );
    let (v, resp) = ok_json(&gw, "/d/1");
    assert_eq!(resp.header("x-aggregate-partial"), None);
    assert_eq!(
        v,
        json!({"order": {"id": "o-2", "coupon": null}, "no_coupon": {"extra": true}})
    );
    assert_eq!(coupons.count(), calls, "a skipped part makes no call");
    assert_eq!(extras.count(), extra_calls + 1);
}

#[test]
fn claims_conditions() {
    const SECRET: &str = "enrich-test-hmac-secret";
    let b = json_backend(json!({"n": 1}));
    let audit = json_backend(json!({"audited": true}));
    let text = format!(
        r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    upstreams: {{ "b": Upstream(targets: ["{b}"]), "audit": Upstream(targets: ["{a}"]) }},
    authenticators: {{ "jwt": Jwt(algorithms: [HS256], key: Secret("{SECRET}")) }},
    routes: [
        Route(name: "me", match: Match(path: "/me"), auth: Required(["jwt"]), non_idempotent: true,
            aggregate: Aggregate(parts: [
                Part(name: "b", upstream: "b", path: "/b"),
                Part(name: "audit", upstream: "audit", method: "POST", path: "/audit", after: "b",
                     required: false, when: "claims.role == admin", body: "{{{{\"sub\": \"{{claims.sub}}\"}}}}"),
            ])),
    ],
)"#,
        b = b.addr(),
        a = audit.addr()
    );
    let gw = Gateway::start(&text);
    let token = |role: &str| {
        let claims = json!({"sub": "u1", "role": role, "exp": unix_now() + 300});
        format!("Bearer {}", hs256_token(&claims, SECRET))
    };
    let resp = get_with(gw.port, "/me", &[("Authorization", &token("user"))]);
    assert_eq!(body(&resp), json!({"b": {"n": 1}}));
    assert_eq!(audit.count(), 0);
    let resp = get_with(gw.port, "/me", &[("Authorization", &token("admin"))]);
    assert_eq!(
        body(&resp),
        json!({"b": {"n": 1}, "audit": {"audited": true}})
    );
    assert_eq!(audit.count(), 1);
    assert_eq!(audit.last().body, br#"{"sub": "u1"}"#);
}

#[test]
fn status_and_headers_from_parts() {
    let order = Backend::start(|r| {
        if r.target.ends_with("/gone") {
            return Response::ok("{}").status(404);
        }
        Response::ok("{\"id\":1}")
            .status(203)
            .header("Cache-Control", "public, max-age=60")
            .header("ETag", "\"o-1\"")
    });
    let user = Backend::start(|_| {
        Response::ok("{\"name\":\"a\"}").header("Cache-Control", "max-age=30, private")
    });
    let gw = composite(
        &[("orders", &order), ("users", &user)],
        r#"status_from: Some("order"), forward_headers: ["Cache-Control", "ETag"], parts: [
            Part(name: "order", upstream: "orders", path: "/orders/{id}"),
            Part(name: "user", upstream: "users", path: "/users/1"),
        ]"#,
        "",
    );
    let resp = get(gw.port, "/d/1");
    assert_eq!(resp.status, 203, "{}", resp.text());
    assert_eq!(resp.header("cache-control"), Some("private, max-age=30"));
    assert_eq!(resp.header("etag"), Some("\"o-1\""));
    let resp = get(gw.port, "/d/gone");
    assert_json_error(&resp, 404);
}

fn check_problems(text: &str) -> String {
    let dir = temp_dir();
    let path = dir.join("enrich.ron");
    std::fs::write(&path, text).unwrap();
    let (status, _, stderr) = run_cli(&["check", path.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
    stderr
}

#[test]
fn bad_conditions_templates_and_writes_are_config_errors() {
    let text = r#"Gateway(
    listeners: [Listener(name: "l", bind: "127.0.0.1:8080")],
    upstreams: { "a": Upstream(targets: ["127.0.0.1:9"]) },
    routes: [
        Route(name: "d", match: Match(path: "/d/{id}"), aggregate: Aggregate(parts: [
            Part(name: "order", upstream: "a", path: "/o/{id}"),
            Part(name: "x", upstream: "a", path: "/x", when: "order.status = open"),
            Part(name: "y", upstream: "a", path: "/y/{order.items.*.id|last}"),
            Part(name: "w", upstream: "a", path: "/w",
                 method: "POST"),
            Part(name: "e", upstream: "a", path: "/e/{item.id}", for_each: "ghost.items"),
            Part(name: "b", upstream: "a", path: "/b/{item.id}", for_each: "order.items",
                 batch: Some(Batch(path: "/b?ids={order.id}", key: "id"))),
            Part(name: "i", upstream: "a", path: "/i/{item.id}"),
        ])),
    ],
)
"#;
    let stderr = check_problems(text);
    let line_of = |needle: &str| text[..text.find(needle).unwrap()].matches('\n').count() + 1;
    let expect = [
        (
            line_of("order.status = open"),
            "routes[0].aggregate.parts[1].when: at character 14: expected `==`, `!=` or the end",
        ),
        (
            line_of("|last"),
            "routes[0].aggregate.parts[2].path: {order.items.*.id|last}: unknown filter",
        ),
        (
            line_of("method: \"POST\""),
            "routes[0].aggregate.parts[3].method: part \"w\" writes (POST): mark the route `non_idempotent: true`",
        ),
        (
            line_of("\"ghost.items\""),
            "routes[0].aggregate.parts[4].for_each: must name another part",
        ),
        (
            line_of("/b?ids="),
            "routes[0].aggregate.parts[5].batch.path: must read each item's key as {order.items.*.FIELD}",
        ),
        (
            line_of("/i/{item.id}"),
            "routes[0].aggregate.parts[6].path: {item...} needs `for_each` on the part",
        ),
    ];
    for (line, msg) in expect {
        let found = stderr
            .lines()
            .any(|l| l.contains(&format!(".ron:{line}:")) && l.contains(msg));
        assert!(found, "no line {line} with {msg:?} in:\n{stderr}");
    }
}
