//! HTTP/JSON → gRPC transcoding through the real binary, against a real
//! gRPC server (Python grpcio, tests/grpc/transcode_server.py, message
//! classes built from protos/inventory.pb) and the demo's own inventory
//! server.

mod common;
mod pki;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DESCRIPTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/protos/inventory.pb");
const SERVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/grpc/transcode_server.py"
);
const SECRET: &str = "transcode-test-secret";

/// The Python gRPC server; killed when dropped.
struct GrpcServer {
    child: Child,
    port: u16,
}

impl GrpcServer {
    fn start() -> GrpcServer {
        GrpcServer::start_with(&[])
    }

    /// With `[cert, key]`: the server speaks gRPC over TLS.
    fn start_with(tls: &[&std::path::Path]) -> GrpcServer {
        let mut child = Command::new("/usr/bin/python3")
            .arg(SERVER)
            .arg(DESCRIPTORS)
            .args(tls)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Python gRPC server (python3-grpcio, python3-protobuf)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("gRPC server did not start: {line:?}"));
        GrpcServer { child, port }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway with transcoded routes to `target`: `/api/...` (JSON
/// arrays), `/nd/...` (NDJSON, proto field names, defaults written),
/// `/auth/...` (a token required) and a mapping for ReserveItem.
fn gateway_config(target: &str) -> String {
    let transcode = |extra: &str| {
        format!(
            r#"grpc: Some(Transcode(descriptor_set: "{DESCRIPTORS}", service: "inventory.v1.Inventory",
                methods: [GrpcMethod(method: "ReserveItem", http_method: "POST", path: "/v1/inventory/{{sku}}:reserve", body: Some("*")),
                          GrpcMethod(method: "GetItem", http_method: "GET", path: "/v1/inventory/{{sku}}/name", response_body: Some("name"))]{extra}))"#
        )
    };
    let schema = temp_dir().join("create.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "required": ["item"], "properties": {"item": {"type": "object", "required": ["sku"]}}}"#,
    )
    .unwrap();
    format!(
        r#"Gateway(
    shards: Count(2),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    admin: Some(Admin(bind: "127.0.0.1:$PORT2")),
    limits_http: {LIMITS},
    rate_limits: {{ "two": RateLimit(key: Route, algorithm: FixedWindow(limit: 2, window_s: 3600)) }},
    upstreams: {{ "inventory": Upstream(targets: ["{target}"], protocol: Http2, timeout_ms: 3000) }},
    authenticators: {{ "hs": Jwt(algorithms: [HS256], key: Secret("{SECRET}"), forward_claims: {{ "sub": "X-User-Id" }}) }},
    cors: Some(Cors(allow_origins: ["https://app.example.com"])),
    routes: [
        Route(name: "rest", match: Match(path_prefix: "/api/v1/inventory"), upstream: "inventory",
              strip_prefix: "/api", {a}),
        Route(name: "nd", match: Match(path_prefix: "/nd/v1/inventory"), upstream: "inventory",
              strip_prefix: "/nd", {b}),
        Route(name: "secure", match: Match(path_prefix: "/auth/v1/inventory"), upstream: "inventory",
              strip_prefix: "/auth", auth: Required(["hs"]), keep_authorization: false, {a}),
        Route(name: "limited", match: Match(path_prefix: "/limited/v1/inventory"), upstream: "inventory",
              strip_prefix: "/limited", rate_limits: ["two"], {a}),
        Route(name: "quick", match: Match(path_prefix: "/quick/v1/inventory"), upstream: "inventory",
              strip_prefix: "/quick", timeout_ms: 300, {a}),
        Route(name: "checked", match: Match(path_prefix: "/checked/v1/inventory", methods: ["POST"]),
              upstream: "inventory", strip_prefix: "/checked",
              validate: Some(Validate(schema: "{schema}")), {a}),
    ],
)"#,
        a = transcode(""),
        b = transcode(", stream: Ndjson, proto_field_names: true, emit_defaults: true"),
        schema = schema.display(),
    )
}

/// The Python gRPC server and a gateway in front of it.
fn start() -> (GrpcServer, Gateway) {
    let srv = GrpcServer::start();
    let gw = Gateway::start(&gateway_config(&format!("127.0.0.1:{}", srv.port)));
    (srv, gw)
}

/// How many calls the Python server has taken (this one included).
fn server_calls(gw: &Gateway) -> u64 {
    let v = json_of(&get(gw.port, "/api/v1/inventory/__calls"));
    v["quantity"].as_str().unwrap().parse::<u64>().unwrap()
}

fn json_of(resp: &Resp) -> Value {
    serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", resp.text()))
}

fn assert_grpc_error(resp: &Resp, status: u16, code: i64, name: &str) -> Value {
    assert_eq!(resp.status, status, "{}", resp.text());
    assert!(resp
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    let v = json_of(resp);
    assert_eq!(v["code"], json!(code), "{v}");
    assert_eq!(v["status"], json!(name), "{v}");
    assert!(v["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(resp.header("x-request-id").is_some());
    v
}

#[test]
fn get_maps_path_and_query_and_answers_every_field_kind_as_json() {
    let (_srv, gw) = start();
    let resp = get_with(
        gw.port,
        "/api/v1/inventory/w-1?view=full",
        &[("x-tenant", "acme"), ("origin", "https://app.example.com")],
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert!(resp.header("x-request-id").is_some());
    assert_eq!(
        resp.header("x-served-by"),
        Some("python-grpc"),
        "response metadata as header fields"
    );
    assert!(resp.header("grpc-status").is_none());
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let v = json_of(&resp);
    assert_eq!(v["sku"], "w-1");
    assert_eq!(v["kind"], "KIND_TOOL", "enums by name");
    assert_eq!(v["tags"], json!(["metric", "calibrated"]));
    assert_eq!(v["dimensions"]["widthMm"], json!(40.5));
    assert_eq!(v["locations"][1]["warehouse"], "south");
    assert_eq!(v["locations"][0]["bin"], json!(7));
    assert_eq!(v["quantity"], "12", "int64 as a string");
    assert_eq!(v["updatedAt"], "2024-01-02T03:04:05.500Z");
    assert_eq!(v["restockLeadTime"], "3.500s");
    assert_eq!(v["reorderLevel"], json!(4), "wrappers as their value");
    assert_eq!(v["note"], "fragile");
    assert!(v.get("discontinued").is_none(), "defaults left out");
    let attrs = &v["attributes"];
    assert_eq!(attrs["view"], "full", "query parameter mapped");
    assert_eq!(attrs["md.x-tenant"], "acme", "client header as metadata");
    assert_eq!(attrs["deadline"], "set", "grpc-timeout sent");
    assert!(attrs["md.x-request-id"].as_str().is_some());
    assert!(attrs.get("md.host").is_none());
}

#[test]
fn post_patch_and_an_explicit_mapping_fill_the_message_from_the_body() {
    let (_srv, gw) = start();
    let item = json!({
        "item": {
            "sku": "c-9", "name": "clamp", "kind": "KIND_PART",
            "tags": ["a", "b"], "dimensions": {"width_mm": 1.5},
            "locations": [{"warehouse": "east", "bin": 3}],
            "quantity": "41", "updatedAt": "2025-06-01T10:00:00Z",
            "restockLeadTime": "90s", "reorderLevel": 2, "note": "n",
            "attributes": {"color": "red"}
        },
        "requestId": "req-7"
    });
    let body = item.to_string();
    let resp = request(
        gw.port,
        "POST",
        "/api/v1/inventory",
        &[("content-type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = json_of(&resp);
    assert_eq!(v["sku"], "c-9");
    assert_eq!(v["kind"], "KIND_PART");
    assert_eq!(v["dimensions"]["widthMm"], json!(1.5));
    assert_eq!(v["locations"][0]["warehouse"], "east");
    assert_eq!(v["quantity"], "41");
    assert_eq!(v["updatedAt"], "2025-06-01T10:00:00Z");
    assert_eq!(v["restockLeadTime"], "90s");
    assert_eq!(v["reorderLevel"], json!(2));
    assert_eq!(v["attributes"]["color"], "red");
    assert_eq!(v["attributes"]["request_id"], "req-7");

    // PATCH: the body is the `item` field, the sku comes from the path, the
    // query fills the rest.
    let resp = request(
        gw.port,
        "PATCH",
        "/api/v1/inventory/p-5?allow_missing=true",
        &[("content-type", "application/json")],
        br#"{"name": "renamed", "kind": 3}"#,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = json_of(&resp);
    assert_eq!(v["sku"], "p-5");
    assert_eq!(v["name"], "renamed");
    assert_eq!(v["kind"], "KIND_CONSUMABLE", "enum given by number");
    assert_eq!(v["attributes"]["allow_missing"], "true");

    // ReserveItem has no annotation: reached through the route's mapping.
    let resp = request(
        gw.port,
        "POST",
        "/api/v1/inventory/r-2:reserve",
        &[("content-type", "application/json")],
        br#"{"quantity": "3", "holdFor": "3600.25s"}"#,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = json_of(&resp);
    assert_eq!(v["reservationId"], "r-1");
    assert_eq!(v["sku"], "r-2");
    assert_eq!(v["quantity"], "3");
    assert_eq!(v["expiresAt"], "2024-01-01T01:00:00.250Z");

    // A mapping answering with one field of the response.
    let resp = get(gw.port, "/api/v1/inventory/w-3/name");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(json_of(&resp), json!("torque wrench"));
}

#[test]
fn bad_requests_and_grpc_errors_become_json_with_mapped_statuses() {
    let (_srv, gw) = start();
    // Unknown JSON field: 400 before any call.
    let resp = request(
        gw.port,
        "POST",
        "/api/v1/inventory",
        &[("content-type", "application/json")],
        br#"{"item": {"sku": "x", "colour": "red"}}"#,
    );
    let v = assert_grpc_error(&resp, 400, 3, "INVALID_ARGUMENT");
    assert!(v["message"].as_str().unwrap().contains("colour"), "{v}");
    // Unknown query parameter, bad JSON, a wrong type.
    let resp = get(gw.port, "/api/v1/inventory/a?nope=1");
    assert_grpc_error(&resp, 400, 3, "INVALID_ARGUMENT");
    let resp = request(gw.port, "POST", "/api/v1/inventory", &[], b"{not json");
    assert_grpc_error(&resp, 400, 3, "INVALID_ARGUMENT");
    let resp = request(
        gw.port,
        "POST",
        "/api/v1/inventory",
        &[],
        br#"{"item": {"quantity": "many"}}"#,
    );
    assert_grpc_error(&resp, 400, 3, "INVALID_ARGUMENT");

    // NOT_FOUND from the server: 404 with its message and details.
    let resp = get(gw.port, "/api/v1/inventory/missing");
    let v = assert_grpc_error(&resp, 404, 5, "NOT_FOUND");
    assert_eq!(v["message"], "no item with sku missing");
    assert_eq!(
        v["details"],
        json!([{"@type": "type.googleapis.com/inventory.v1.GetItemRequest", "sku": "missing"}])
    );
    // INVALID_ARGUMENT from the server: 400.
    let resp = get(gw.port, "/api/v1/inventory/bad");
    let v = assert_grpc_error(&resp, 400, 3, "INVALID_ARGUMENT");
    assert_eq!(v["message"], "sku bad is not a valid sku");

    // No binding for the path: 404; the path under another method: 405.
    let resp = get(gw.port, "/api/v1/inventory/a/b/c");
    assert_grpc_error(&resp, 404, 5, "NOT_FOUND");
    let resp = request(gw.port, "DELETE", "/api/v1/inventory/a", &[], b"");
    assert_eq!(resp.status, 405, "{}", resp.text());
    assert!(resp.header("allow").is_some_and(|a| a.contains("GET")));
}

#[test]
fn server_streaming_answers_as_a_json_array_and_as_ndjson() {
    let (_srv, gw) = start();
    let resp = get(
        gw.port,
        "/api/v1/inventory?page_size=4&filter.kind=KIND_PART&tags=a&tags=b&kinds=KIND_TOOL&kinds=2&updated_after=2024-05-01T00:00:00Z&in_stock=true",
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    let v = json_of(&resp);
    let items = v.as_array().expect("an array");
    assert_eq!(items.len(), 4);
    assert_eq!(items[3]["sku"], "s-3");
    // The server saw the query as the message (nested, repeated, enums, WKTs).
    let seen: Value = serde_json::from_str(items[0]["note"].as_str().unwrap()).unwrap();
    assert_eq!(seen["page_size"], json!(4));
    assert_eq!(seen["filter"]["kind"], "KIND_PART");
    assert_eq!(seen["tags"], json!(["a", "b"]));
    assert_eq!(seen["kinds"], json!(["KIND_TOOL", "KIND_PART"]));
    assert_eq!(seen["updated_after"], "2024-05-01T00:00:00Z");
    assert_eq!(seen["in_stock"], json!(true));

    // NDJSON, with proto names and defaults.
    let resp = get(gw.port, "/nd/v1/inventory?page_size=3");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = resp
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["quantity"], "0", "defaults written");
    assert_eq!(lines[0]["discontinued"], json!(false));
    assert_eq!(lines[1]["restock_lead_time"], "120s", "proto names");

    // An error before the first message: its own status.
    let resp = get(gw.port, "/api/v1/inventory?filter.warehouse=fail-first");
    assert_grpc_error(&resp, 404, 5, "NOT_FOUND");
    // An error after two messages: the last element.
    let resp = get(gw.port, "/api/v1/inventory?filter.warehouse=fail-mid");
    assert_eq!(resp.status, 200);
    let v = json_of(&resp);
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 3, "{v}");
    assert_eq!(items[2]["error"]["status"], "UNAVAILABLE");
    let resp = get(gw.port, "/nd/v1/inventory?filter.warehouse=fail-mid");
    let last: Value = serde_json::from_str(resp.text().lines().last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], json!(14));
}

#[test]
fn streamed_messages_reach_the_client_as_they_arrive() {
    let (_srv, gw) = start();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /nd/v1/inventory?page_size=4&filter.warehouse=slow HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .unwrap();
    let started = Instant::now();
    let mut reader = BufReader::new(s);
    let mut first_item_at = None;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line.starts_with("{\"sku\":\"s-0\"") || line.contains("\"sku\":\"s-0\"") {
            first_item_at = Some(started.elapsed());
        }
        if line == "0\r\n" {
            break;
        }
    }
    let first = first_item_at.expect("the first item arrived");
    let total = started.elapsed();
    // Items come 0.3 s apart: the first is written long before the last.
    assert!(
        total >= first + Duration::from_millis(600),
        "first item after {first:?}, end after {total:?}"
    );
}

#[test]
fn an_http_1_0_client_gets_a_stream_delimited_by_the_close() {
    let (_srv, gw) = start();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /api/v1/inventory?page_size=2 HTTP/1.0\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(2));
}

#[test]
fn authentication_applies_before_any_grpc_call_and_identity_is_passed_on() {
    let (_srv, gw) = start();
    let before = server_calls(&gw);
    let resp = get(gw.port, "/auth/v1/inventory/w-1");
    assert_eq!(resp.status, 401, "{}", resp.text());
    let resp = get_with(
        gw.port,
        "/auth/v1/inventory/w-1",
        &[("authorization", "Bearer not-a-token")],
    );
    assert_eq!(resp.status, 401);
    // Only the two counting calls reached the server.
    assert_eq!(server_calls(&gw), before + 1);
    let token = hs256_token(&json!({"sub": "u-42", "exp": unix_now() + 600}), SECRET);
    let resp = get_with(
        gw.port,
        "/auth/v1/inventory/w-1",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-user-id", "spoofed"),
        ],
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = json_of(&resp);
    assert_eq!(v["attributes"]["md.x-user-id"], "u-42");
    assert!(
        v["attributes"].get("md.authorization").is_none(),
        "authorization dropped"
    );
}

#[test]
fn rate_limits_apply_before_any_grpc_call() {
    let (_srv, gw) = start();
    let before = server_calls(&gw);
    assert_eq!(get(gw.port, "/limited/v1/inventory/a").status, 200);
    assert_eq!(get(gw.port, "/limited/v1/inventory/b").status, 200);
    let resp = get(gw.port, "/limited/v1/inventory/c");
    assert_eq!(resp.status, 429, "{}", resp.text());
    // Two limited calls and the second count reached the server.
    assert_eq!(server_calls(&gw), before + 3);
}

#[test]
fn a_validated_body_is_transcoded_and_an_invalid_one_is_not_sent() {
    let (_srv, gw) = start();
    let resp = request(
        gw.port,
        "POST",
        "/checked/v1/inventory",
        &[("content-type", "application/json")],
        br#"{"item": {"sku": "v-1", "quantity": 5}}"#,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(json_of(&resp)["quantity"], "5");
    let resp = request(
        gw.port,
        "POST",
        "/checked/v1/inventory",
        &[("content-type", "application/json")],
        br#"{"item": {"name": "no sku"}}"#,
    );
    assert_eq!(resp.status, 400, "{}", resp.text());
}

#[test]
fn a_call_over_the_route_timeout_is_a_json_504_and_calls_are_counted() {
    let (_srv, gw) = start();
    let started = Instant::now();
    let resp = get(gw.port, "/quick/v1/inventory/slow");
    assert_grpc_error(&resp, 504, 4, "DEADLINE_EXCEEDED");
    assert!(started.elapsed() < Duration::from_millis(1800));
    assert_eq!(get(gw.port, "/api/v1/inventory/a").status, 200);
    // The calls show in the upstream metrics like proxied ones.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = get(gw.port2, "/metrics").text();
        let ok = m.lines().any(|l| {
            l.starts_with("shardgate_upstream_requests_total{upstream=\"inventory\"")
                && l.contains("outcome=\"ok\"")
                && !l.ends_with(" 0")
        });
        let timed_out = m.lines().any(|l| {
            l.starts_with("shardgate_upstream_requests_total{upstream=\"inventory\"")
                && l.contains("outcome=\"timeout\"")
                && !l.ends_with(" 0")
        });
        if ok && timed_out {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no inventory calls in metrics:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_body_over_the_message_cap_is_refused_unread() {
    let srv = GrpcServer::start();
    let cfg = gateway_config(&format!("127.0.0.1:{}", srv.port))
        .replace("stream: Ndjson,", "stream: Ndjson, max_message_bytes: 64,");
    let gw = Gateway::start(&cfg);
    let big = format!(r#"{{"item": {{"name": "{}"}}}}"#, "x".repeat(1000));
    let resp = request(
        gw.port,
        "POST",
        "/nd/v1/inventory",
        &[("content-type", "application/json")],
        big.as_bytes(),
    );
    assert_eq!(resp.status, 413, "{}", resp.text());
    // Under the body bound but over the message cap once encoded: 400.
    let resp = request(
        gw.port,
        "POST",
        "/nd/v1/inventory",
        &[("content-type", "application/json")],
        format!(r#"{{"item": {{"name": "{}"}}}}"#, "x".repeat(100)).as_bytes(),
    );
    assert_grpc_error(&resp, 400, 3, "INVALID_ARGUMENT");
}

#[test]
fn an_unreachable_upstream_is_a_json_503() {
    let port = closed_port();
    let gw = Gateway::start(&gateway_config(&format!("127.0.0.1:{port}")));
    let resp = get(gw.port, "/api/v1/inventory/w-1");
    let v = assert_grpc_error(&resp, 503, 14, "UNAVAILABLE");
    assert!(v["message"].as_str().unwrap().contains("inventory"), "{v}");
}

fn check(config: &str) -> (bool, String) {
    let dir = temp_dir();
    let file = dir.join("gateway.ron");
    std::fs::write(&file, config).unwrap();
    let (status, out, err) = run_cli(&["check", file.to_str().unwrap()]);
    (status.success(), format!("{out}{err}"))
}

fn route_config(upstream: &str, grpc: &str) -> String {
    format!(
        r#"Gateway(
    listeners: [Listener(name: "main", bind: "127.0.0.1:18080")],
    upstreams: {{ "inventory": Upstream(targets: ["127.0.0.1:9999"]{upstream}) }},
    routes: [
        Route(name: "rest", match: Match(path_prefix: "/v1"), upstream: "inventory",
              grpc: Some(Transcode({grpc}))),
    ],
)"#
    )
}

#[test]
fn check_reports_transcoding_problems_with_their_position() {
    let ok = format!(r#"descriptor_set: "{DESCRIPTORS}", service: "inventory.v1.Inventory""#);
    let (good, out) = check(&route_config(", protocol: Http2", &ok));
    assert!(good, "{out}");

    // A relative path is read from the config file's directory.
    let dir = temp_dir();
    std::fs::create_dir_all(dir.join("protos")).unwrap();
    std::fs::copy(DESCRIPTORS, dir.join("protos/inventory.pb")).unwrap();
    let file = dir.join("gateway.ron");
    std::fs::write(
        &file,
        route_config(
            ", protocol: Http2",
            r#"descriptor_set: "protos/inventory.pb", service: "inventory.v1.Inventory""#,
        ),
    )
    .unwrap();
    let (status, out, err) = run_cli(&["check", file.to_str().unwrap()]);
    assert!(status.success(), "{out}{err}");

    // A missing file.
    let (good, out) = check(&route_config(
        ", protocol: Http2",
        r#"descriptor_set: "protos/none.pb", service: "inventory.v1.Inventory""#,
    ));
    assert!(!good);
    assert!(
        out.contains("6:") && out.contains("routes[0].grpc.descriptor_set"),
        "{out}"
    );
    assert!(out.contains("none.pb"), "{out}");

    let (good, out) = check(&route_config(
        ", protocol: Http2",
        &format!(r#"descriptor_set: "{DESCRIPTORS}", service: "inventory.v1.Warehouse""#),
    ));
    assert!(!good);
    assert!(out.contains("routes[0].grpc.service"), "{out}");
    assert!(
        out.contains("inventory.v1.Inventory"),
        "names what the set has: {out}"
    );

    let (good, out) = check(&route_config(
        ", protocol: Http2",
        &format!(
            r#"descriptor_set: "{DESCRIPTORS}", service: "inventory.v1.Inventory",
              methods: [GrpcMethod(method: "DeleteItem", http_method: "DELETE", path: "/v1/x/{{sku}}")]"#
        ),
    ));
    assert!(!good);
    assert!(
        out.contains("7:") && out.contains("routes[0].grpc.methods[0]"),
        "{out}"
    );
    assert!(out.contains("DeleteItem"), "{out}");

    // A path field the request message lacks.
    let (good, out) = check(&route_config(
        ", protocol: Http2",
        &format!(
            r#"descriptor_set: "{DESCRIPTORS}", service: "inventory.v1.Inventory",
              methods: [GrpcMethod(method: "ReserveItem", http_method: "POST", path: "/v1/r/{{shelf}}")]"#
        ),
    ));
    assert!(!good);
    assert!(out.contains("shelf"), "{out}");

    // The upstream must speak HTTP/2.
    let (good, out) = check(&route_config("", &ok));
    assert!(!good);
    assert!(
        out.contains("routes[0].upstream") && out.contains("Http2"),
        "{out}"
    );
}

#[test]
fn check_refuses_settings_that_cannot_go_with_transcoding() {
    let cfg = format!(
        r#"Gateway(
    listeners: [Listener(name: "main", bind: "127.0.0.1:18080")],
    upstreams: {{ "inventory": Upstream(targets: ["127.0.0.1:9999"], protocol: Http2) }},
    routes: [
        Route(name: "rest", match: Match(path_prefix: "/v1"), upstream: "inventory",
              websocket: Some(WebSocket()),
              grpc: Some(Transcode(descriptor_set: "{DESCRIPTORS}", service: "inventory.v1.Inventory"))),
    ],
)"#
    );
    let (good, out) = check(&cfg);
    assert!(!good);
    assert!(
        out.contains("6:") && out.contains("routes[0].websocket"),
        "{out}"
    );
}

#[test]
fn the_demo_inventory_server_answers_transcoded_calls() {
    // The demo's own server (built on the gateway's HTTP/2 server), on a
    // free port of this process.
    let addr = shardgate::demo::start_inventory("127.0.0.1:0").expect("demo inventory server");
    let gw = Gateway::start(&gateway_config(&addr.to_string()));
    let resp = get(gw.port, "/api/v1/inventory/sku-1001");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(json_of(&resp)["sku"], "sku-1001");
    let resp = get(gw.port, "/api/v1/inventory/nope");
    assert_grpc_error(&resp, 404, 5, "NOT_FOUND");
    let resp = get(gw.port, "/nd/v1/inventory");
    assert_eq!(resp.status, 200);
    assert!(resp.text().lines().count() >= 2, "{}", resp.text());
}

#[test]
fn transcoded_calls_go_over_tls_with_alpn_h2() {
    let ca = pki::Ca::new("transcode test CA");
    let leaf = ca.leaf("localhost", &["localhost"]);
    let dir = temp_dir();
    let (cert, key) = leaf.write(&dir, "grpc");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let server = GrpcServer::start_with(&[&cert, &key]);
    let gw = Gateway::start(&format!(
        r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    upstreams: {{ "inventory": Upstream(targets: ["127.0.0.1:{port}"], protocol: Http2,
        tls: Some(UpstreamTls(ca_file: Some({ca_file:?}), server_name: Some("localhost")))) }},
    routes: [Route(name: "inv", match: Match(path_prefix: "/v1/inventory"), upstream: "inventory",
        grpc: Some(Transcode(descriptor_set: "{DESCRIPTORS}", service: "inventory.v1.Inventory")))],
)"#,
        port = server.port
    ));
    let r = get(gw.port, "/v1/inventory/sku-1");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["sku"], "sku-1", "{v}");
}
