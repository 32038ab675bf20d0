//! Request and response transformation through the real binary: header
//! operations with templates (route params, claims, the request id), JSON
//! body operations on dotted paths, query operations, the body cap (413,
//! 502), media-type refusals (415) and `check` errors with positions.

mod common;

use common::*;
use serde_json::{json, Value};

const SECRET: &str = "transform-test-hmac-secret";

fn gateway(backend: &Backend, route_extra: &str) -> Gateway {
    let text = format!(
        r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    limits_http: {LIMITS},
    upstreams: {{ "app": Upstream(targets: ["{b}"]) }},
    authenticators: {{
        "jwt": Jwt(algorithms: [HS256], key: Secret("{SECRET}")),
    }},
    routes: [
        Route(name: "t", match: Match(path: "/users/{{id}}"), upstream: "app",
              auth: Required(["jwt"]), keep_authorization: false,
              {route_extra}),
    ],
)"#,
        b = backend.addr()
    );
    Gateway::start(&text)
}

fn bearer(claims: Value) -> String {
    format!("Bearer {}", hs256_token(&claims, SECRET))
}

fn alice() -> String {
    bearer(json!({"sub": "alice", "tenant": "acme", "exp": unix_now() + 300}))
}

fn echo_body() -> Backend {
    Backend::start(|r| Response::ok(r.body.clone()).header("Content-Type", "application/json"))
}

#[test]
fn header_operations_take_values_from_params_claims_and_the_request_id() {
    let backend = Backend::start(|_| Response::ok("ok"));
    let gw = gateway(
        &backend,
        r#"transform: Some(Transform(request: Some(TransformOps(headers: Some(HeaderOps(
              set: { "X-Tenant": "{claims.tenant}", "X-Who": "{claims.sub}" },
              add: { "X-User": "user-{id}", "X-Trace": "rid={request_id}", "X-Kept": "extra" },
              remove: ["X-Debug"],
              rename: { "X-Old": "X-New" },
          ))))))"#,
    );
    let auth = alice();
    let resp = request(
        gw.port,
        "GET",
        "/users/42",
        &[
            ("Authorization", &auth),
            ("X-Request-Id", "req-abc"),
            ("X-Debug", "1"),
            ("X-Old", "moved value"),
            ("X-Tenant", "spoofed"),
            ("X-Kept", "client"),
        ],
        b"",
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let r = backend.last();
    assert_eq!(r.headers_named("x-tenant"), vec!["acme"], "set replaces");
    assert_eq!(r.header("x-who"), Some("alice"));
    assert_eq!(r.header("x-user"), Some("user-42"));
    assert_eq!(r.header("x-trace"), Some("rid=req-abc"));
    assert_eq!(
        r.headers_named("x-kept"),
        vec!["client", "extra"],
        "add appends"
    );
    assert!(!r.has("x-debug"), "removed");
    assert!(!r.has("x-old"), "renamed away");
    assert_eq!(r.header("x-new"), Some("moved value"));

    // A claim the caller lacks: the field is not set, and the client's
    // own value does not get through in its place.
    let no_tenant = bearer(json!({"sub": "bob", "exp": unix_now() + 300}));
    let resp = request(
        gw.port,
        "GET",
        "/users/7",
        &[("Authorization", &no_tenant), ("X-Tenant", "spoofed")],
        b"",
    );
    assert_eq!(resp.status, 200);
    let r = backend.last();
    assert!(!r.has("x-tenant"), "{:?}", r.headers);
    assert_eq!(r.header("x-who"), Some("bob"));
    assert_eq!(r.header("x-user"), Some("user-7"));
    // A generated request id is the one the client gets back.
    let rid = resp.header("x-request-id").unwrap().to_string();
    assert_eq!(r.header("x-trace"), Some(format!("rid={rid}").as_str()));
}

#[test]
fn query_parameters_are_added_set_and_removed() {
    let backend = Backend::start(|_| Response::ok("ok"));
    let gw = gateway(
        &backend,
        r#"transform: Some(Transform(request: Some(TransformOps(query: Some(QueryOps(
              remove: ["debug"], set: { "page": "1" }, add: { "owner": "{id}", "tenant": "{claims.tenant}" },
          ))))))"#,
    );
    let auth = alice();
    let resp = get_with(
        gw.port,
        "/users/a%20b?q=x&debug=1&page=9",
        &[("Authorization", &auth)],
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        backend.last().target,
        "/users/a%20b?q=x&page=1&owner=a%20b&tenant=acme"
    );
    // No query at all: only what the route adds.
    let resp = get_with(gw.port, "/users/5", &[("Authorization", &auth)]);
    assert_eq!(resp.status, 200);
    assert_eq!(backend.last().target, "/users/5?page=1&owner=5&tenant=acme");
}

#[test]
fn json_request_body_operations_on_dotted_paths() {
    let backend = echo_body();
    let gw = gateway(
        &backend,
        r#"transform: Some(Transform(max_body_bytes: 4096, request: Some(TransformOps(body: Some(JsonOps(
              remove: ["user.password", "debug"],
              rename: { "user.userId": "user_id" },
              move: { "user.address.city": "shipping.city" },
              add: { "meta.request": "{request_id}", "meta.owner": "{id}", "meta.version": 2, "meta.tags": ["a", "b"] },
          ))))))"#,
    );
    let auth = alice();
    let sent = json!({
        "user": {"userId": 7, "password": "hunter2", "address": {"city": "Oslo", "zip": "0150"}},
        "debug": true,
        "items": [1, 2]
    });
    let expected = json!({
        "user": {"user_id": 7, "address": {"zip": "0150"}},
        "shipping": {"city": "Oslo"},
        "items": [1, 2],
        "meta": {"request": "rid-1", "owner": "9", "version": 2, "tags": ["a", "b"]}
    });
    let body = serde_json::to_vec(&sent).unwrap();
    let resp = request(
        gw.port,
        "POST",
        "/users/9",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("X-Request-Id", "rid-1"),
        ],
        &body,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let r = backend.last();
    let got: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(got, expected);
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );

    // The same body sent chunked, on a kept-alive
    // connection followed by a second request: framed anew for the upstream.
    let mut c = Client::connect(gw.port);
    let half = body.len() / 2;
    let raw = format!(
        "POST /users/9 HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nX-Request-Id: rid-1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        half,
        String::from_utf8_lossy(&body[..half]),
        body.len() - half,
        String::from_utf8_lossy(&body[half..]),
    );
    let mut both = raw.into_bytes();
    both.extend_from_slice(
        format!("GET /users/10 HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\n\r\n").as_bytes(),
    );
    c.send(&both);
    let first = c.read_response();
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(
        serde_json::from_slice::<Value>(&first.body).unwrap(),
        expected
    );
    let second = c.read_response();
    assert_eq!(second.status, 200);
    assert_eq!(backend.last().target, "/users/10");
    assert!(!backend.last().has("transfer-encoding"));
}

#[test]
fn body_limits_and_media_types_are_enforced() {
    let backend = echo_body();
    let gw = gateway(
        &backend,
        r#"transform: Some(Transform(max_body_bytes: 100, request: Some(TransformOps(body: Some(JsonOps(
              remove: ["x"]))))))"#,
    );
    let auth = alice();
    let json_type = ("Content-Type", "application/json");
    let big = format!("{{\"x\":\"{}\"}}", "a".repeat(200));
    // Declared too large: refused before anything is read.
    let resp = request(
        gw.port,
        "POST",
        "/users/1",
        &[("Authorization", &auth), json_type],
        big.as_bytes(),
    );
    assert_eq!(resp.status, 413, "{}", resp.text());
    // Chunked, growing past the cap while read.
    let mut c = Client::connect(gw.port);
    c.send(
        format!(
            "POST /users/1 HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    );
    assert_eq!(c.read_response().status, 413);
    // Not JSON: 415. Not valid JSON: 400.
    let resp = request(
        gw.port,
        "POST",
        "/users/1",
        &[("Authorization", &auth), ("Content-Type", "text/plain")],
        b"x=1",
    );
    assert_eq!(resp.status, 415, "{}", resp.text());
    let resp = request(
        gw.port,
        "POST",
        "/users/1",
        &[("Authorization", &auth), json_type],
        b"{not json",
    );
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(backend.count(), 0, "nothing refused reached the upstream");
    // At the cap it goes through, transformed.
    let resp = request(
        gw.port,
        "POST",
        "/users/1",
        &[("Authorization", &auth), json_type],
        br#"{"x":1,"y":2}"#,
    );
    assert_eq!(resp.status, 200);
    assert_eq!(backend.last().body, br#"{"y":2}"#);
    // A request without a body is not refused for its (absent) type.
    let resp = get_with(gw.port, "/users/1", &[("Authorization", &auth)]);
    assert_eq!(resp.status, 200);
}

#[test]
fn response_headers_and_json_body_are_transformed() {
    let backend = Backend::start(|r| {
        let body = json!({"id": 5, "internal": {"cost": 3}, "name": "w", "path": r.target});
        let bytes = serde_json::to_vec(&body).unwrap();
        let resp = if r.target.contains("chunked") {
            let (a, b) = bytes.split_at(bytes.len() / 2);
            Response::chunked(vec![a.to_vec(), b.to_vec()])
        } else {
            Response::ok(bytes)
        };
        resp.header("Content-Type", "application/json")
            .header("X-Internal-Host", "db-7")
            .header("X-Old", "o")
    });
    let gw = gateway(
        &backend,
        r#"transform: Some(Transform(response: Some(TransformOps(
              headers: Some(HeaderOps(remove: ["X-Internal-Host"], rename: { "X-Old": "X-New" },
                                      set: { "X-Owner": "{claims.sub}", "X-Request": "{request_id}" })),
              body: Some(JsonOps(remove: ["internal"], rename: { "name": "title" },
                                 move: { "id": "meta.id" }, add: { "meta.user": "{id}" })),
          ))))"#,
    );
    let auth = alice();
    for path in ["/users/8", "/users/chunked"] {
        let resp = get_with(
            gw.port,
            path,
            &[
                ("Authorization", &auth),
                ("X-Request-Id", "r-9"),
                ("Accept-Encoding", "gzip"),
            ],
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        let got: Value = serde_json::from_slice(&resp.body).unwrap();
        let user = path.trim_start_matches("/users/");
        assert_eq!(
            got,
            json!({"title": "w", "path": path, "meta": {"id": 5, "user": user}})
        );
        assert_eq!(
            resp.header("content-length"),
            Some(resp.body.len().to_string().as_str())
        );
        assert!(!resp.has("x-internal-host"));
        assert_eq!(resp.header("x-new"), Some("o"));
        assert_eq!(resp.header("x-owner"), Some("alice"));
        assert_eq!(resp.header("x-request"), Some("r-9"));
        // The upstream was asked for an unencoded body it can transform.
        assert!(!backend.last().has("accept-encoding"));
    }
}

#[test]
fn oversized_encoded_or_broken_json_responses_are_not_passed_on_untransformed() {
    let backend = Backend::start(|r| match r.target.as_str() {
        "/users/big" => Response::ok(format!("{{\"internal\":\"{}\"}}", "s".repeat(5000)))
            .header("Content-Type", "application/json"),
        "/users/bigchunked" => Response::chunked(vec![
            b"{\"internal\":\"".to_vec(),
            vec![b's'; 5000],
            b"\"}".to_vec(),
        ])
        .header("Content-Type", "application/json"),
        "/users/broken" => {
            Response::ok("{\"internal\": ").header("Content-Type", "application/json")
        }
        "/users/coded" => Response::ok(b"\x1f\x8bnot really".to_vec())
            .header("Content-Type", "application/json")
            .header("Content-Encoding", "gzip"),
        _ => Response::ok("<p>internal</p>").header("Content-Type", "text/html"),
    });
    let gw = gateway(
        &backend,
        r#"transform: Some(Transform(max_body_bytes: 1000, response: Some(TransformOps(
              body: Some(JsonOps(remove: ["internal"]))))))"#,
    );
    let auth = alice();
    for path in [
        "/users/big",
        "/users/bigchunked",
        "/users/broken",
        "/users/coded",
    ] {
        let resp = get_with(gw.port, path, &[("Authorization", &auth)]);
        assert_eq!(resp.status, 502, "{path}: {}", resp.text());
        assert!(!resp.text().contains("sss"), "{path}");
    }
    // Other media types pass through as they are.
    let resp = get_with(gw.port, "/users/page", &[("Authorization", &auth)]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "<p>internal</p>");
}

#[test]
fn check_reports_bad_operations_with_their_position() {
    let text = r#"Gateway(
    listeners: [Listener(name: "l", bind: "127.0.0.1:8080")],
    upstreams: { "a": Upstream(targets: ["127.0.0.1:9"]) },
    routes: [
        Route(name: "r", match: Match(path: "/r/{id}"), upstream: "a",
              transform: Some(Transform(request: Some(TransformOps(
                  headers: Some(HeaderOps(set: { "X-A": "{nope}" }, remove: ["Content-Length"])),
                  body: Some(JsonOps(rename: { "a.b": "c.d" }, remove: ["a..b"])),
              ))))),
    ],
)
"#;
    let dir = temp_dir();
    let path = dir.join("t.ron");
    std::fs::write(&path, text).unwrap();
    let (status, _, stderr) = run_cli(&["check", path.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(status.code(), Some(2), "{stderr}");
    let line_of = |needle: &str| text[..text.find(needle).unwrap()].matches('\n').count() + 1;
    for (needle, field, words) in [
        (
            "\"{nope}\"",
            "routes[0].transform.request.headers.set.X-A",
            "not a param",
        ),
        (
            "\"Content-Length\"",
            "routes[0].transform.request.headers.remove",
            "gateway's to write",
        ),
        (
            "\"c.d\"",
            "routes[0].transform.request.body.rename.a.b",
            "use `move`",
        ),
        (
            "\"a..b\"",
            "routes[0].transform.request.body.remove",
            "dotted path",
        ),
    ] {
        let line = line_of(needle);
        assert!(
            stderr.lines().any(|l| l.contains(&format!(":{line}:"))
                && l.contains(field)
                && l.contains(words)),
            "{field} at line {line}: {stderr}"
        );
    }
}

#[test]
fn transformation_composes_with_compression_and_request_decompression() {
    let backend = Backend::start(|r| {
        let mut doc = serde_json::from_slice::<Value>(&r.body).unwrap_or(json!({}));
        doc["internal"] = json!("x".repeat(3000));
        doc["seen_encoding"] = json!(r.header("content-encoding").unwrap_or("none"));
        Response::ok(serde_json::to_vec(&doc).unwrap()).header("Content-Type", "application/json")
    });
    let gw = gateway(
        &backend,
        r#"transform: Some(Transform(
              request: Some(TransformOps(body: Some(JsonOps(rename: { "a": "b" })))),
              response: Some(TransformOps(body: Some(JsonOps(remove: ["internal"], add: { "pad": "{id}" })))))),
          compression: Some(Compression(algorithms: [Gzip], min_bytes: 10, decompress_requests: true))"#,
    );
    let auth = alice();
    let mut packed = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut packed, br#"{"a": 1, "keep": "yes"}"#).unwrap();
    let packed = packed.finish().unwrap();
    let resp = request(
        gw.port,
        "POST",
        "/users/3",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("Accept-Encoding", "gzip"),
        ],
        &packed,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    // Inflated, then transformed, on the way in.
    let seen: Value = serde_json::from_slice(&backend.last().body).unwrap();
    assert_eq!(seen, json!({"b": 1, "keep": "yes"}));
    // Transformed, then compressed whole, on the way out.
    assert_eq!(resp.header("content-encoding"), Some("gzip"));
    assert_eq!(resp.header("vary"), Some("Accept-Encoding"));
    assert_eq!(
        resp.header("content-length"),
        Some(resp.body.len().to_string().as_str())
    );
    let mut plain = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&resp.body[..]),
        &mut plain,
    )
    .unwrap();
    let got: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(
        got,
        json!({"b": 1, "keep": "yes", "seen_encoding": "none", "pad": "3"})
    );
}

#[test]
fn a_fallback_answer_is_transformed_too() {
    let primary = Backend::start(|_| {
        Response::ok(format!("{{\"internal\":\"{}\"}}", "s".repeat(5000)))
            .header("Content-Type", "application/json")
    });
    let alternate = Backend::start(|_| {
        Response::ok(r#"{"internal":"secret","name":"alt"}"#)
            .header("Content-Type", "application/json")
    });
    let text = format!(
        r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    upstreams: {{ "app": Upstream(targets: ["{p}"]), "alt": Upstream(targets: ["{a}"]) }},
    routes: [
        Route(name: "t", match: Match(path_prefix: "/"), upstream: "app",
              fallback: Some(Alternate(upstream: "alt")),
              transform: Some(Transform(max_body_bytes: 1000, response: Some(TransformOps(
                  body: Some(JsonOps(remove: ["internal"]))))))),
    ],
)"#,
        p = primary.addr(),
        a = alternate.addr()
    );
    let gw = Gateway::start(&text);
    let resp = get(gw.port, "/x");
    assert_eq!(primary.count(), 1);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-fallback"), Some("upstream-error"));
    assert_eq!(
        serde_json::from_slice::<Value>(&resp.body).unwrap(),
        json!({"name": "alt"})
    );
}
