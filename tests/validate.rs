//! JSON Schema request validation through the real gateway: valid bodies
//! forwarded intact (Content-Length and chunked), every violation listed
//! with its path, the cap of 20, 415 for other media types, query
//! schemas, the stage's place (after auth and rate limit), and `check`
//! errors for broken or missing schema files.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const ORDER_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["sku", "qty"],
  "properties": {
    "sku": {"type": "string", "minLength": 1},
    "qty": {"type": "integer", "minimum": 1},
    "notes": {"type": "array", "items": {"type": "string"}}
  },
  "additionalProperties": false
}"#;

const QUERY_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "limit": {"type": "string", "pattern": "^[0-9]{1,3}$"},
    "sort": {"enum": ["asc", "desc"]}
  },
  "required": ["limit"]
}"#;

fn write_schemas() -> PathBuf {
    let dir = temp_dir();
    std::fs::write(dir.join("order.json"), ORDER_SCHEMA).unwrap();
    std::fs::write(dir.join("query.json"), QUERY_SCHEMA).unwrap();
    dir
}

fn gateway(backend: &Backend, dir: &Path) -> Gateway {
    let order = dir.join("order.json").display().to_string();
    let query = dir.join("query.json").display().to_string();
    Gateway::start(&format!(
        r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    limits_http: {LIMITS},
    admin: Some(Admin(bind: "127.0.0.1:$PORT2")),
    upstreams: {{ "app": Upstream(targets: ["{addr}"]) }},
    authenticators: {{ "jwt": Jwt(algorithms: [HS256], key: Secret("validate-test-secret-long")) }},
    rate_limits: {{ "one": RateLimit(key: ClientIp, algorithm: FixedWindow(limit: 1, window_s: 3600)) }},
    routes: [
        Route(name: "orders", match: Match(path: "/orders", methods: ["POST", "PUT"]), upstream: "app",
              validate: Some(Validate(schema: {order:?}))),
        Route(name: "search", match: Match(path: "/search", methods: ["GET"]), upstream: "app",
              validate: Some(Validate(query_schema: {query:?}))),
        Route(name: "limited", match: Match(path: "/limited"), upstream: "app", rate_limits: ["one"],
              validate: Some(Validate(schema: {order:?}))),
        Route(name: "private", match: Match(path: "/private"), upstream: "app", auth: Required(["jwt"]),
              validate: Some(Validate(schema: {order:?}))),
    ],
)"#,
        addr = backend.addr()
    ))
}

fn post_json(port: u16, path: &str, body: &[u8]) -> Resp {
    request(
        port,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body,
    )
}

fn violations(r: &Resp) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()));
    v["violations"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_valid_body_is_forwarded_intact() {
    let backend = Backend::start(|r| Response::ok(format!("got {}", r.body_len)).status(201));
    let gw = gateway(&backend, &write_schemas());
    let body = br#"{"sku":"a-1","qty":2,"notes":["gift"]}"#;
    let r = post_json(gw.port, "/orders", body);
    assert_eq!(r.status, 201, "{}", r.text());
    let seen = backend.last();
    assert_eq!(seen.body, body.to_vec());
    assert_eq!(
        seen.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(seen.header("content-type"), Some("application/json"));
    // Chunked: validated whole, forwarded as one chunk.
    let mut c = Client::connect(gw.port);
    c.send(b"POST /orders HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{\"sku\":\"b\r\n10\r\n\",\"qty\":3}      \r\n0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 201, "{}", r.text());
    let seen = backend.last();
    assert_eq!(seen.body, b"{\"sku\":\"b\",\"qty\":3}      ".to_vec());
    // The connection stays usable, with Expect: 100-continue too.
    let r = c.request(
        "PUT",
        "/orders",
        &[
            ("Content-Type", "application/json; charset=utf-8"),
            ("Expect", "100-continue"),
        ],
        br#"{"sku":"c","qty":1}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(backend.count(), 3);
}

#[test]
fn every_violation_is_listed_with_its_path() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend, &write_schemas());
    let r = post_json(
        gw.port,
        "/orders",
        br#"{"sku":"","qty":0,"notes":["ok",7],"extra":true}"#,
    );
    assert_json_error(&r, 400);
    let list = violations(&r);
    let found: Vec<(String, String, String)> = list
        .iter()
        .map(|v| {
            (
                v["in"].as_str().unwrap_or("").to_string(),
                v["instance_path"].as_str().unwrap_or("?").to_string(),
                v["keyword"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    for want in [
        ("body", "/sku", "minLength"),
        ("body", "/qty", "minimum"),
        ("body", "/notes/1", "type"),
        ("body", "", "additionalProperties"),
    ] {
        assert!(
            found
                .iter()
                .any(|f| (f.0.as_str(), f.1.as_str(), f.2.as_str()) == want),
            "{want:?} missing in {found:?}"
        );
    }
    assert!(list
        .iter()
        .all(|v| v["message"].as_str().is_some_and(|m| !m.is_empty())));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["violations_truncated"], json!(false));
    // Not JSON at all; no body on a POST.
    let r = post_json(gw.port, "/orders", b"{\"sku\": ");
    assert_json_error(&r, 400);
    assert_eq!(violations(&r)[0]["keyword"], json!("json"));
    let r = post_json(gw.port, "/orders", b"");
    assert_json_error(&r, 400);
    assert_eq!(violations(&r)[0]["keyword"], json!("required"));
    assert_eq!(backend.count(), 0);
    let m = get(gw.port2, "/metrics").text();
    assert!(
        m.contains("shardgate_edge_refused_total{shard=\"0\",policy=\"validation\"} 3"),
        "{m}"
    );
}

#[test]
fn the_list_is_capped_at_twenty() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend, &write_schemas());
    let notes: Vec<Value> = (0..50).map(|i| json!(i)).collect();
    let body = json!({"sku": "a", "qty": 1, "notes": notes}).to_string();
    let r = post_json(gw.port, "/orders", body.as_bytes());
    assert_json_error(&r, 400);
    assert_eq!(violations(&r).len(), 20);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["violations_truncated"], json!(true));
    assert_eq!(backend.count(), 0);
}

#[test]
fn other_media_types_get_415() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend, &write_schemas());
    let body = br#"{"sku":"a","qty":1}"#;
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonp",
    ] {
        let r = request(gw.port, "POST", "/orders", &[("Content-Type", ct)], body);
        assert_json_error(&r, 415);
    }
    let r = request(gw.port, "POST", "/orders", &[], body);
    assert_json_error(&r, 415);
    // A `+json` type is JSON.
    let r = request(
        gw.port,
        "POST",
        "/orders",
        &[("Content-Type", "application/vnd.order+json")],
        body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(backend.count(), 1);
}

#[test]
fn query_parameters_are_validated_by_their_schema() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend, &write_schemas());
    assert_eq!(get(gw.port, "/search?limit=10&sort=asc").status, 200);
    assert_eq!(get(gw.port, "/search?limit=%31%32").status, 200);
    let r = get(gw.port, "/search?limit=ten&sort=up");
    assert_json_error(&r, 400);
    let list = violations(&r);
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().all(|v| v["in"] == json!("query")));
    assert!(list.iter().any(|v| v["instance_path"] == json!("/limit")));
    assert!(list.iter().any(|v| v["instance_path"] == json!("/sort")));
    let r = get(gw.port, "/search");
    assert_json_error(&r, 400);
    assert_eq!(violations(&r)[0]["keyword"], json!("required"));
    assert_eq!(backend.count(), 2);
}

#[test]
fn validation_runs_after_auth_and_rate_limit() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend, &write_schemas());
    let bad = br#"{"qty":"x"}"#;
    // Unauthenticated: 401, not 400.
    assert_json_error(&post_json(gw.port, "/private", bad), 401);
    // The limit counts the invalid request, then refuses the next one.
    assert_json_error(&post_json(gw.port, "/limited", bad), 400);
    assert_json_error(&post_json(gw.port, "/limited", bad), 429);
    assert_eq!(backend.count(), 0);
}

#[test]
fn bodies_over_the_limit_are_refused() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend, &write_schemas());
    // LIMITS allows 1 MiB; a chunked body over it is cut off with 413.
    let mut c = Client::connect(gw.port);
    c.send(b"POST /orders HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
    let chunk = vec![b' '; 256 * 1024];
    for _ in 0..5 {
        let mut out = format!("{:x}\r\n", chunk.len()).into_bytes();
        out.extend_from_slice(&chunk);
        out.extend_from_slice(b"\r\n");
        if c.try_send(&out).is_err() {
            break;
        }
    }
    let r = c.read_response();
    assert_json_error(&r, 413);
    assert_eq!(backend.count(), 0);
}

fn check_file(dir: &Path, schema_ref: &str) -> (bool, String) {
    let file = dir.join("gw.ron");
    std::fs::write(
        &file,
        format!(
            r#"Gateway(
    listeners: [Listener(name: "main", bind: "127.0.0.1:0")],
    upstreams: {{ "app": Upstream(targets: ["127.0.0.1:9"]) }},
    routes: [
        Route(name: "orders", match: Match(path: "/orders"), upstream: "app",
              validate: Some(Validate(schema: {schema_ref:?}))),
    ],
)"#
        ),
    )
    .unwrap();
    let (status, out, err) = run_cli(&["check", file.to_str().unwrap()]);
    (status.success(), format!("{out}{err}"))
}

#[test]
fn schema_files_are_checked_relative_to_the_config_file() {
    let dir = temp_dir();
    std::fs::create_dir_all(dir.join("schemas")).unwrap();
    std::fs::write(dir.join("schemas/order.json"), ORDER_SCHEMA).unwrap();
    std::fs::write(
        dir.join("schemas/broken.json"),
        r#"{"type": "object", "properties": {"a": {"type": 12}}}"#,
    )
    .unwrap();
    std::fs::write(dir.join("schemas/truncated.json"), r#"{"type": "#).unwrap();
    std::fs::write(
        dir.join("schemas/backtracking.json"),
        r#"{"type": "string", "pattern": "^(a+)\\1$"}"#,
    )
    .unwrap();
    // Relative to the config file, whatever the working directory.
    let (ok, out) = check_file(&dir, "schemas/order.json");
    assert!(ok, "{out}");
    for (name, says) in [
        ("schemas/broken.json", "not a valid JSON Schema"),
        ("schemas/truncated.json", "not JSON"),
        ("schemas/missing.json", "cannot read schema"),
        ("schemas/backtracking.json", "not a valid JSON Schema"),
    ] {
        let (ok, out) = check_file(&dir, name);
        assert!(!ok, "{name}: {out}");
        assert!(out.contains(name), "{name}: {out}");
        assert!(out.contains(says), "{name}: {out}");
        assert!(out.contains("routes[0].validate.schema"), "{name}: {out}");
        assert!(out.contains("gw.ron:6:"), "{name}: {out}");
    }
}
