//! Edge-policy stages together on one route, through the real binary: the
//! order the pipeline runs them in, and what each hands the next.
//! - a cached route with response transformation and compression stores the
//!   transformed, uncompressed answer and compresses hits per client;
//! - a validated route with a request body transformation validates the
//!   client's body and forwards the transformed one;
//! - a CORS preflight is answered before the IP filter, auth and the cache;
//! - validation runs before the cache lookup;
//! - a composite answer goes out through the route's compression.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Read;

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("gzip body");
    out
}

fn gateway(backend: &Backend, dir: &std::path::Path, routes: &str) -> Gateway {
    let schema = dir.join("order.json").display().to_string();
    let query = dir.join("query.json").display().to_string();
    let routes = routes
        .replace("$SCHEMA", &format!("{schema:?}"))
        .replace("$QUERY", &format!("{query:?}"));
    Gateway::start(&format!(
        r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    limits_http: {LIMITS},
    upstreams: {{ "app": Upstream(targets: ["{addr}"]) }},
    authenticators: {{ "jwt": Jwt(algorithms: [HS256], key: Secret("edge-stages-test-secret")) }},
    routes: [
{routes}
    ],
)"#,
        addr = backend.addr()
    ))
}

fn schema_dir() -> std::path::PathBuf {
    let dir = temp_dir();
    std::fs::write(
        dir.join("order.json"),
        r#"{"type": "object", "required": ["userId", "qty"],
            "properties": {"userId": {"type": "integer"}, "qty": {"type": "integer", "minimum": 1}}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("query.json"),
        r#"{"type": "object", "properties": {"limit": {"type": "string", "pattern": "^[0-9]+$"}}}"#,
    )
    .unwrap();
    dir
}

#[test]
fn a_cached_route_stores_the_transformed_answer_and_compresses_each_hit_for_its_client() {
    // A JSON answer large enough to compress, with a field the route removes.
    let backend = Backend::start(|r| {
        let items: Vec<Value> = (0..200).map(|i| json!({"id": i, "name": "item"})).collect();
        let body = json!({"path": r.target, "internal": "secret", "items": items});
        Response::ok(serde_json::to_vec(&body).unwrap()).header("Content-Type", "application/json")
    });
    let dir = schema_dir();
    let gw = gateway(
        &backend,
        &dir,
        r#"        Route(name: "c", match: Match(path_prefix: "/c"), upstream: "app",
              cache: Some(Cache(ttl_s: {200: 300})),
              transform: Some(Transform(response: Some(TransformOps(body: Some(JsonOps(remove: ["internal"])))))),
              compression: Some(Compression(algorithms: [Gzip], min_bytes: 100))),"#,
    );
    let mut c = Client::connect(gw.port);
    let check = |body: &[u8]| {
        let v: Value = serde_json::from_slice(body).expect("JSON answer");
        assert_eq!(v["path"], "/c/a");
        assert!(v.get("internal").is_none(), "transformed: {v}");
        assert_eq!(v["items"].as_array().map(Vec::len), Some(200));
    };
    // A miss, for a client that takes gzip: transformed, then compressed.
    let miss = c.request("GET", "/c/a", &[("Accept-Encoding", "gzip")], b"");
    assert_eq!(miss.status, 200);
    assert_eq!(miss.header("x-cache-status"), Some("MISS"));
    assert_eq!(miss.header("content-encoding"), Some("gzip"));
    check(&gunzip(&miss.body));
    // A hit for a client that takes no coding: the stored answer as is.
    let plain = c.request("GET", "/c/a", &[], b"");
    assert_eq!(plain.header("x-cache-status"), Some("HIT"));
    assert_eq!(plain.header("content-encoding"), None);
    assert!(plain.header("age").is_some());
    check(&plain.body);
    // A hit for a gzip client: compressed for it, with Vary.
    let packed = c.request("GET", "/c/a", &[("Accept-Encoding", "gzip")], b"");
    assert_eq!(packed.header("x-cache-status"), Some("HIT"));
    assert_eq!(packed.header("content-encoding"), Some("gzip"));
    let vary = packed
        .header("vary")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(vary.contains("accept-encoding"), "vary: {vary}");
    assert!(packed.body.len() < plain.body.len());
    check(&gunzip(&packed.body));
    assert_eq!(backend.count(), 1, "one upstream call for three answers");
}

#[test]
fn validation_sees_the_clients_body_and_the_upstream_gets_the_transformed_one() {
    let backend =
        Backend::start(|r| Response::ok(r.body.clone()).header("Content-Type", "application/json"));
    let dir = schema_dir();
    let gw = gateway(
        &backend,
        &dir,
        r#"        Route(name: "orders", match: Match(path: "/orders", methods: ["POST"]), upstream: "app",
              validate: Some(Validate(schema: $SCHEMA)),
              transform: Some(Transform(max_body_bytes: 4096, request: Some(TransformOps(body: Some(JsonOps(
                  rename: { "userId": "user_id" }, add: { "source": "edge" }))))))),"#,
    );
    let post = |body: &[u8], chunked: bool| {
        let mut c = Client::connect(gw.port);
        if chunked {
            let mut raw = format!(
                "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
                body.len()
            )
            .into_bytes();
            raw.extend_from_slice(body);
            raw.extend_from_slice(b"\r\n0\r\n\r\n");
            c.send(&raw);
            c.read_response()
        } else {
            c.request(
                "POST",
                "/orders",
                &[("Content-Type", "application/json")],
                body,
            )
        }
    };
    // Invalid: refused before the upstream, naming the client's field.
    let bad = post(br#"{"userId": 7, "qty": 0}"#, false);
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("/qty"), "{}", bad.text());
    assert_eq!(backend.count(), 0);
    // Valid, by length and chunked: the upstream sees the transformed body.
    for chunked in [false, true] {
        let ok = post(br#"{"userId": 7, "qty": 2}"#, chunked);
        assert_eq!(ok.status, 200, "{}", ok.text());
        let seen: Value = serde_json::from_slice(&backend.last().body).unwrap();
        assert_eq!(seen, json!({"user_id": 7, "qty": 2, "source": "edge"}));
    }
    assert_eq!(backend.count(), 2);
}

#[test]
fn a_preflight_is_answered_before_the_ip_filter_auth_and_the_cache() {
    let backend = Backend::start(|_| Response::ok("{}").header("Content-Type", "application/json"));
    let dir = schema_dir();
    let gw = gateway(
        &backend,
        &dir,
        r#"        Route(name: "api", match: Match(path_prefix: "/api"), upstream: "app",
              auth: Required(["jwt"]),
              cors: Some(Cors(allow_origins: ["https://app.example.com"], allow_methods: ["GET"])),
              ip_filter: Some(IpFilter(deny: ["127.0.0.0/8"])),
              cache: Some(Cache(shared: true))),"#,
    );
    let pre = request(
        gw.port,
        "OPTIONS",
        "/api/x",
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "GET"),
        ],
        b"",
    );
    assert_eq!(pre.status, 204, "{}", pre.text());
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    // The same client's real request meets the IP filter (before auth).
    let real = get_with(gw.port, "/api/x", &[("Origin", "https://app.example.com")]);
    assert_eq!(real.status, 403, "{}", real.text());
    assert_eq!(backend.count(), 0);
}

#[test]
fn validation_runs_before_the_cache_lookup() {
    let backend = Backend::start(|_| Response::ok("{}").header("Content-Type", "application/json"));
    let dir = schema_dir();
    let gw = gateway(
        &backend,
        &dir,
        r#"        Route(name: "list", match: Match(path: "/list"), upstream: "app",
              validate: Some(Validate(query_schema: $QUERY)),
              cache: Some(Cache(key: CacheKey(query: Ignore)))),"#,
    );
    let mut c = Client::connect(gw.port);
    let first = c.get("/list?limit=5");
    assert_eq!(
        first.header("x-cache-status"),
        Some("MISS"),
        "{} {}",
        first.status,
        first.text()
    );
    let second = c.get("/list?limit=7");
    assert_eq!(
        second.header("x-cache-status"),
        Some("HIT"),
        "{} {}",
        second.status,
        second.text()
    );
    // Same cache key (the query is not part of it), but refused first.
    let bad = c.get("/list?limit=abc");
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(bad.header("x-cache-status"), None);
    assert_eq!(backend.count(), 1);
}

#[test]
fn a_composite_answer_is_compressed_for_clients_that_take_it() {
    let backend = Backend::start(|r| {
        let items: Vec<Value> = (0..100)
            .map(|i| json!({"id": i, "part": r.target}))
            .collect();
        Response::ok(serde_json::to_vec(&json!({ "items": items })).unwrap())
            .header("Content-Type", "application/json")
    });
    let dir = schema_dir();
    let gw = gateway(
        &backend,
        &dir,
        r#"        Route(name: "both", match: Match(path: "/both"),
              aggregate: Aggregate(parts: [Part(name: "a", upstream: "app", path: "/a"),
                                           Part(name: "b", upstream: "app", path: "/b")]),
              compression: Some(Compression(algorithms: [Gzip], min_bytes: 100))),"#,
    );
    let plain = get(gw.port, "/both");
    assert_eq!(plain.status, 200, "{}", plain.text());
    assert_eq!(plain.header("content-encoding"), None);
    let doc: Value = serde_json::from_slice(&plain.body).expect("JSON composite");
    assert_eq!(doc["a"]["items"].as_array().map(Vec::len), Some(100));
    assert_eq!(doc["b"]["items"][0]["part"], "/b");
    let packed = get_with(gw.port, "/both", &[("Accept-Encoding", "gzip")]);
    assert_eq!(packed.status, 200);
    assert_eq!(packed.header("content-encoding"), Some("gzip"));
    assert_eq!(packed.header("content-type"), Some("application/json"));
    let vary = packed
        .header("vary")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(vary.contains("accept-encoding"), "vary: {vary}");
    assert!(packed.body.len() < plain.body.len());
    let unpacked: Value = serde_json::from_slice(&gunzip(&packed.body)).unwrap();
    assert_eq!(unpacked, doc);
}
