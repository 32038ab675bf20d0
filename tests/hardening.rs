//! Hardening of the HTTP core, black-box on raw sockets: malformed `Host`
//! values, one reading of every header (repeated singletons refused,
//! list-valued fields combined), `Host` and absolute-form targets, the
//! HTTP/2 preface on a plain listener, full-duplex exchanges with an upstream
//! that answers early, response trailers, and crash isolation.

mod common;

use common::*;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const JWT_SECRET: &str = "hardening-test-hmac-secret";
const API_KEY: &str = "hardening-key-1";

fn one_backend(shards: usize, backend: &Backend) -> Gateway {
    Gateway::start(&config(
        shards,
        &upstream("app", &[&backend.addr()], ""),
        &catch_all("app"),
    ))
}

/// Sends `raw` in one write on a new connection and reads one response.
fn send_raw(port: u16, raw: &[u8]) -> (Client, io::Result<Resp>) {
    let mut c = Client::connect(port);
    c.set_read_timeout(Duration::from_secs(5));
    let sent = c.try_send(raw);
    let resp = match sent {
        Ok(()) => c.try_read_response(false),
        Err(e) => Err(e),
    };
    (c, resp)
}

fn show(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// Sends `raw` and expects a JSON error with `status`, the connection
/// closed after it, and nothing at any of `backends`.
#[track_caller]
fn expect_rejected_and_closed(port: u16, backends: &[&Backend], raw: &[u8], status: u16) {
    let before: Vec<usize> = backends.iter().map(|b| b.heads_seen()).collect();
    let (mut c, r) = send_raw(port, raw);
    let r = r.unwrap_or_else(|e| panic!("no {status} response for {:?}: {e}", show(raw)));
    assert_eq!(
        r.status,
        status,
        "{:?} got {} {:?}",
        show(raw),
        r.status,
        r.text()
    );
    assert_json_error(&r, status);
    assert!(
        c.wait_closed(Duration::from_secs(5)).is_some(),
        "connection left open after {status} for {:?}",
        show(raw)
    );
    // Give a (wrongly) forwarded request time to show up.
    thread::sleep(Duration::from_millis(100));
    let after: Vec<usize> = backends.iter().map(|b| b.heads_seen()).collect();
    assert_eq!(
        before,
        after,
        "a refused request reached a backend: {:?}",
        show(raw)
    );
}

/// A raw `GET` with these header lines (no Host added).
fn raw_get(path: &str, lines: &[(&str, &str)]) -> Vec<u8> {
    let mut s = format!("GET {path} HTTP/1.1\r\n");
    for (k, v) in lines {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

// ---------------------------------------------------------------------------
// Malformed Host values
// ---------------------------------------------------------------------------

fn host_request(host: &[u8]) -> Vec<u8> {
    let mut raw = b"GET / HTTP/1.1\r\nHost: ".to_vec();
    raw.extend_from_slice(host);
    raw.extend_from_slice(b"\r\n\r\n");
    raw
}

/// Regression: `Host: [a` made the router slice past the end of the string
/// and took every shard down. Each of these gets an answer and both shards
/// keep serving new connections.
#[test]
fn unclosed_bracket_hosts_do_not_crash_the_gateway() {
    let backend = Backend::echo("b");
    let gw = one_backend(2, &backend);
    for host in [&b"[a"[..], b"[", b":", b"[::1", b"[a:", b"[:", b"]", b"[]:"] {
        for _ in 0..4 {
            let (_c, r) = send_raw(gw.port, &host_request(host));
            let r = r.unwrap_or_else(|e| {
                panic!(
                    "no response for Host {:?}: {e}; stderr:\n{}",
                    show(host),
                    gw.stderr()
                )
            });
            assert!(
                r.status == 400 || r.status == 200,
                "Host {:?} got {} {:?}",
                show(host),
                r.status,
                r.text()
            );
        }
    }
    // Several new connections, so that both shards are asked.
    for i in 0..8 {
        let r = get(gw.port, &format!("/after/{i}"));
        assert_eq!(r.status, 200, "stderr:\n{}", gw.stderr());
    }
    assert!(
        !gw.stderr().contains("panicked"),
        "a shard panicked:\n{}",
        gw.stderr()
    );
}

/// `Host: [a` made the router slice past the end of the string and took the
/// whole process down; every invalid authority is a 400 now (RFC 9112 §3.2),
/// and the gateway serves the next request on a new connection.
#[test]
fn malformed_host_values_give_400_and_the_gateway_keeps_serving() {
    let backend = Backend::echo("b");
    let gw = one_backend(2, &backend);
    let long_bracket = format!("[{}", "a".repeat(3000));
    let long_v6 = format!("[::1{}", ":1".repeat(1500));
    let hosts: Vec<&[u8]> = vec![
        b"[a",
        b"[",
        b"[::1",
        b"[::1]x",
        b"[]",
        b"::::",
        b"a:8x",
        b"a:-1",
        b"a:+80",
        b"a b",
        b"a\x01b",
        b"a\x7fb",
        long_bracket.as_bytes(),
        long_v6.as_bytes(),
    ];
    for host in hosts {
        expect_rejected_and_closed(gw.port, &[&backend], &host_request(host), 400);
        let r = get(gw.port, "/after");
        assert_eq!(
            r.status,
            200,
            "after Host {:?}: stderr:\n{}",
            show(host),
            gw.stderr()
        );
        assert_eq!(r.text(), "b GET /after");
    }
    // Well-formed authorities, including an IPv6 literal, are served.
    for host in ["[::1]", "[::1]:8080", "example.com:80", "127.0.0.1"] {
        let r = get_with(gw.port, "/ok", &[("Host", host)]);
        assert_eq!(r.status, 200, "Host {host:?}: {}", r.text());
        assert_eq!(backend.last().header("host"), Some(host));
    }
}

/// Host values with odd bytes (non-ASCII, slices that would cut a UTF-8
/// character, a port that overflows, a very long name) never take the
/// gateway down: each gets an answer (400, or 200 when the gateway accepts
/// the name) and the next connection is served.
#[test]
fn odd_host_bytes_never_crash_the_gateway() {
    let backend = Backend::echo("b");
    let gw = one_backend(2, &backend);
    let long = "a".repeat(3000);
    let long_labels = format!("{}.example", "x.".repeat(1200));
    let hosts: Vec<&[u8]> = vec![
        // An empty host with an empty port: like an empty `Host`, which
        // RFC 9112 §3.3 lets a server reject or serve.
        b":",
        b"\xc3\xa9",
        b"[\xc3\xa9",
        b"\xc3\xa9]",
        b"\xc3\xa9:80",
        b"a:\xc3\xa9",
        b"[\xc3\xa9]:80",
        b"\xff\xfe\xfd",
        b"a:99999999999999999999999",
        b"a:65536",
        long.as_bytes(),
        long_labels.as_bytes(),
    ];
    for host in hosts {
        let (_c, r) = send_raw(gw.port, &host_request(host));
        let r = r.unwrap_or_else(|e| {
            panic!(
                "no response for Host {:?}: {e}; stderr:\n{}",
                show(host),
                gw.stderr()
            )
        });
        assert!(
            r.status == 400 || r.status == 200,
            "Host {:?} got {} {:?}",
            show(host),
            r.status,
            r.text()
        );
        if r.status == 400 {
            assert_json_error(&r, 400);
        }
        let r = get(gw.port, "/after");
        assert_eq!(r.status, 200, "after Host {:?}", show(host));
    }
}

// ---------------------------------------------------------------------------
// One reading of every header
// ---------------------------------------------------------------------------

/// A gateway acting on many headers: an API key (`X-Api-Key`), a JWT
/// authenticator forwarding `sub` as `X-User-Id`, a rate limit keyed on
/// `X-Tenant`, and a route conditioned on `X-API-Version`.
fn acting_gateway(backend: &Backend) -> Gateway {
    let api_hash = shardgate::auth::hash_api_key(API_KEY);
    let extra = format!(
        "authenticators: {{\n        \"keys\": ApiKey(header: \"X-Api-Key\", consumers: {{ \"mobile\": \"{api_hash}\" }}),\n        \"jwt\": Jwt(algorithms: [HS256], key: Secret(\"{JWT_SECRET}\"), forward_claims: {{ \"sub\": \"X-User-Id\" }}),\n    }},"
    );
    let limits = "\"per-tenant\": RateLimit(key: Header(\"x-tenant\"), algorithm: FixedWindow(limit: 1000, window_s: 86400)),";
    let routes = "Route(name: \"public\", match: Match(path_prefix: \"/\"), upstream: \"app\"),\n\
         Route(name: \"keyed\", match: Match(path_prefix: \"/keyed\"), upstream: \"app\", auth: Required([\"keys\"])),\n\
         Route(name: \"jwt\", match: Match(path_prefix: \"/jwt\"), upstream: \"app\", auth: Required([\"jwt\"])),\n\
         Route(name: \"tenant\", match: Match(path_prefix: \"/tenant\"), upstream: \"app\", rate_limits: [\"per-tenant\"]),\n\
         Route(name: \"v2\", match: Match(path_prefix: \"/v\", headers: { \"X-API-Version\": \"2\" }), upstream: \"app\"),\n";
    Gateway::start(&rate_limited_config(
        &backend.addr(),
        2,
        &extra,
        "",
        limits,
        routes,
    ))
}

fn token(sub: &str) -> String {
    hs256_token(
        &serde_json::json!({ "sub": sub, "exp": unix_now() + 600 }),
        JWT_SECRET,
    )
}

/// Each singleton the gateway acts on, sent on two lines, is a 400 JSON
/// error with nothing forwarded; sent once, the same request is served.
#[test]
fn repeated_singleton_headers_are_refused() {
    let backend = Backend::echo("b");
    let gw = acting_gateway(&backend);
    let bearer = format!("Bearer {}", token("u1"));
    let tp1 = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let tp2 = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01";
    // (path, header, first value, second value)
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        ("/", "Host", "localhost", "localhost"),
        ("/", "Host", "localhost", "evil.example"),
        ("/", "host", "localhost", "HOST.example"),
        ("/jwt/x", "Authorization", &bearer, &bearer),
        ("/", "Authorization", "Bearer a", "Bearer b"),
        ("/", "X-Request-Id", "id-1", "id-1"),
        ("/", "X-Request-Id", "id-1", "id-2"),
        ("/", "traceparent", tp1, tp1),
        ("/", "traceparent", tp1, tp2),
        ("/keyed/x", "X-Api-Key", API_KEY, API_KEY),
        ("/keyed/x", "X-Api-Key", API_KEY, "wrong"),
        ("/", "X-Api-Key", API_KEY, "other"),
        ("/tenant/x", "X-Tenant", "t1", "t1"),
        ("/tenant/x", "X-Tenant", "t1", "t2"),
        ("/", "X-Tenant", "t1", "t2"),
        ("/v/x", "X-API-Version", "2", "2"),
        ("/v/x", "X-API-Version", "1", "2"),
        ("/", "X-API-Version", "2", "3"),
    ];
    for (path, name, v1, v2) in cases {
        // Sent once (with a Host unless Host is the header under test): served.
        let mut once: Vec<(&str, &str)> = vec![(name, v1)];
        if !name.eq_ignore_ascii_case("host") {
            once.push(("Host", "localhost"));
        }
        let (_c, r) = send_raw(gw.port, &raw_get(path, &once));
        let r = r.unwrap_or_else(|e| panic!("{path} with one {name} line: {e}"));
        assert_eq!(
            r.status,
            200,
            "{path} with one {name}: {v1:?}: {}",
            r.text()
        );
        let mut twice: Vec<(&str, &str)> = vec![(name, v1), ("X-Between", "1"), (name, v2)];
        if !name.eq_ignore_ascii_case("host") {
            twice.insert(0, ("Host", "localhost"));
        }
        expect_rejected_and_closed(gw.port, &[&backend], &raw_get(path, &twice), 400);
    }
}

#[test]
fn repeated_content_length_is_refused_even_with_equal_values() {
    let backend = Backend::echo("b");
    let gw = one_backend(2, &backend);
    for raw in [
        &b"POST /cl HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"[..],
        &b"POST /cl HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"[..],
        &b"POST /cl HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nX-A: 1\r\ncontent-length: 5\r\n\r\nhello"[..],
    ] {
        expect_rejected_and_closed(gw.port, &[&backend], raw, 400);
    }
    // One line is fine.
    let r = request(gw.port, "POST", "/cl", &[], b"hello");
    assert_eq!(r.status, 200);
    assert_eq!(backend.last().body, b"hello");
}

/// Two `X-Forwarded-For` lines reach the upstream as one line: both values
/// in order, then the client's address.
#[test]
fn repeated_forwarded_for_lines_are_combined_in_order() {
    let backend = Backend::echo("b");
    let gw = one_backend(2, &backend);
    let raw = raw_get(
        "/xff",
        &[
            ("Host", "localhost"),
            ("X-Forwarded-For", "198.51.100.1"),
            ("X-Other", "x"),
            ("X-Forwarded-For", "203.0.113.7"),
        ],
    );
    let (_c, r) = send_raw(gw.port, &raw);
    assert_eq!(r.expect("response").status, 200);
    let seen = backend.last();
    assert_eq!(
        seen.headers_named("x-forwarded-for"),
        vec!["198.51.100.1, 203.0.113.7, 127.0.0.1"],
        "all headers: {:?}",
        seen.headers
    );
}

/// Other list-valued fields keep every value, in order.
#[test]
fn repeated_accept_lines_reach_the_upstream_with_both_values() {
    let backend = Backend::echo("b");
    let gw = one_backend(2, &backend);
    let raw = raw_get(
        "/accept",
        &[
            ("Host", "localhost"),
            ("Accept", "text/html"),
            ("Accept", "application/json;q=0.9"),
        ],
    );
    let (_c, r) = send_raw(gw.port, &raw);
    assert_eq!(r.expect("response").status, 200);
    let seen = backend.last();
    let joined = seen.headers_named("accept").join(", ");
    assert_eq!(
        joined, "text/html, application/json;q=0.9",
        "all headers: {:?}",
        seen.headers
    );
}

/// The `ClientIp` key behind a trusted proxy reads the combined
/// `X-Forwarded-For` from the right: a client that adds its own first line
/// cannot change its key.
#[test]
fn client_ip_limit_reads_all_forwarded_for_lines() {
    let backend = Backend::echo("b");
    let gw = Gateway::start(&rate_limited_config(
        &backend.addr(),
        1,
        "",
        "trusted_proxies: [\"127.0.0.1/32\"]",
        "\"per-ip\": RateLimit(key: ClientIp, algorithm: SlidingLog(limit: 2, window_s: 86400)),",
        "Route(name: \"r\", match: Match(path_prefix: \"/\"), upstream: \"app\", rate_limits: [\"per-ip\"]),",
    ));
    let mut statuses = Vec::new();
    for i in 0..5 {
        let first = format!("198.51.100.{i}");
        let raw = raw_get(
            "/limited",
            &[
                ("Host", "localhost"),
                ("X-Forwarded-For", &first),
                ("X-Forwarded-For", "203.0.113.7"),
            ],
        );
        let (_c, r) = send_raw(gw.port, &raw);
        statuses.push(r.expect("response").status);
    }
    assert_eq!(
        statuses,
        [200, 200, 429, 429, 429],
        "varying first lines with a fixed last line 203.0.113.7 must share one bucket"
    );
    // The same address on one line is the same bucket; another address has its own.
    assert_eq!(
        get_with(gw.port, "/limited", &[("X-Forwarded-For", "203.0.113.7")]).status,
        429
    );
    assert_eq!(
        get_with(gw.port, "/limited", &[("X-Forwarded-For", "203.0.113.8")]).status,
        200
    );
}

/// Identity headers set by the gateway are stripped in every line the
/// client sent, on public and authenticated routes.
#[test]
fn identity_headers_are_stripped_in_every_line() {
    let backend = Backend::echo("b");
    let gw = acting_gateway(&backend);
    let spoof = raw_get(
        "/public/x",
        &[
            ("Host", "localhost"),
            ("X-User-Id", "admin"),
            ("X-Other", "1"),
            ("x-user-id", "root"),
        ],
    );
    let (_c, r) = send_raw(gw.port, &spoof);
    assert_eq!(r.expect("response").status, 200);
    let seen = backend.last();
    assert_eq!(
        seen.headers_named("x-user-id"),
        Vec::<&str>::new(),
        "spoofed identity reached the upstream: {:?}",
        seen.headers
    );

    let bearer = format!("Bearer {}", token("real-user"));
    let raw = raw_get(
        "/jwt/x",
        &[
            ("Host", "localhost"),
            ("X-User-Id", "admin"),
            ("Authorization", &bearer),
            ("X-User-Id", "root"),
        ],
    );
    let (_c, r) = send_raw(gw.port, &raw);
    assert_eq!(r.expect("response").status, 200);
    assert_eq!(backend.last().headers_named("x-user-id"), vec!["real-user"]);
}

// ---------------------------------------------------------------------------
// Host and absolute-form targets
// ---------------------------------------------------------------------------

#[test]
fn http11_without_host_is_400_and_http10_without_host_is_served() {
    let backend = Backend::echo("b");
    let gw = one_backend(2, &backend);
    expect_rejected_and_closed(
        gw.port,
        &[&backend],
        b"GET /nohost HTTP/1.1\r\nAccept: */*\r\n\r\n",
        400,
    );
    let (_c, r) = send_raw(gw.port, b"GET /old HTTP/1.0\r\nAccept: */*\r\n\r\n");
    let r = r.expect("HTTP/1.0 response");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "b GET /old");
}

/// Two backends: `ex` behind a route for host `example.com`, `other` behind
/// the catch-all.
fn host_routed() -> (Backend, Backend, Gateway) {
    let ex = Backend::echo("ex");
    let other = Backend::echo("other");
    let ups = [
        upstream("ex", &[&ex.addr()], ""),
        upstream("other", &[&other.addr()], ""),
    ]
    .concat();
    let routes = "        Route(name: \"ex\", match: Match(path_prefix: \"/\", host: \"example.com\"), upstream: \"ex\"),\n        Route(name: \"other\", match: Match(path_prefix: \"/\"), upstream: \"other\"),\n";
    let gw = Gateway::start(&config(2, &ups, routes));
    (ex, other, gw)
}

#[test]
fn absolute_form_target_replaces_host() {
    let (ex, other, gw) = host_routed();
    let (_c, r) = send_raw(
        gw.port,
        b"GET http://example.com/p?q=1 HTTP/1.1\r\nHost: other\r\n\r\n",
    );
    let r = r.expect("response");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "ex GET /p?q=1");
    let seen = ex.last();
    assert_eq!(seen.target, "/p?q=1");
    assert_eq!(seen.headers_named("host"), vec!["example.com"]);

    // With a port; the upstream gets the authority as Host.
    let (_c, r) = send_raw(
        gw.port,
        b"GET http://example.com:8080/path?q=1 HTTP/1.1\r\nHost: other\r\n\r\n",
    );
    assert_eq!(r.expect("response").text(), "ex GET /path?q=1");
    assert_eq!(ex.last().headers_named("host"), vec!["example.com:8080"]);

    // No path: `/`. The scheme is case-insensitive; https is accepted too.
    let (_c, r) = send_raw(
        gw.port,
        b"GET http://example.com HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(r.expect("response").text(), "ex GET /");
    let (_c, r) = send_raw(
        gw.port,
        b"GET https://example.com/s HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(r.expect("response").text(), "ex GET /s");

    // HTTP/1.1 still needs a Host line (RFC 9112 §3.2); HTTP/1.0 does not.
    expect_rejected_and_closed(
        gw.port,
        &[&ex, &other],
        b"GET http://example.com/nh HTTP/1.1\r\n\r\n",
        400,
    );
    let (_c, r) = send_raw(gw.port, b"GET http://example.com/nh HTTP/1.0\r\n\r\n");
    assert_eq!(r.expect("response").text(), "ex GET /nh");

    // An origin-form request with Host: other goes to the catch-all.
    assert_eq!(
        get_with(gw.port, "/p", &[("Host", "other")]).text(),
        "other GET /p"
    );
    assert_eq!(other.count(), 1);
}

#[test]
fn absolute_form_with_other_schemes_or_repeated_host_is_400() {
    let (ex, other, gw) = host_routed();
    for raw in [
        &b"GET ftp://example.com/p HTTP/1.1\r\nHost: example.com\r\n\r\n"[..],
        &b"GET file:///etc/passwd HTTP/1.1\r\nHost: example.com\r\n\r\n"[..],
        &b"GET http://example.com/p HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"[..],
        &b"GET http://[a/p HTTP/1.1\r\nHost: example.com\r\n\r\n"[..],
    ] {
        expect_rejected_and_closed(gw.port, &[&ex, &other], raw, 400);
    }
    assert_eq!(get(gw.port, "/fine").status, 200);
}

// ---------------------------------------------------------------------------
// HTTP/2 preface on a plain listener
// ---------------------------------------------------------------------------

#[test]
fn http2_preface_gets_505_json_and_close() {
    let backend = Backend::echo("b");
    let gw = one_backend(2, &backend);
    let (mut c, r) = send_raw(gw.port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let r = r.expect("a response to the HTTP/2 preface");
    assert_eq!(r.version, "HTTP/1.1");
    assert_json_error(&r, 505);
    assert!(
        r.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close")),
        "no `connection: close`: {:?}",
        r.headers
    );
    assert!(
        c.wait_closed(Duration::from_secs(5)).is_some(),
        "connection left open after the 505"
    );
    assert_eq!(backend.heads_seen(), 0);

    // The preface followed by an HTTP/2 SETTINGS frame gets the same.
    let mut raw = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    raw.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let (mut c, r) = send_raw(gw.port, &raw);
    assert_json_error(&r.expect("a response"), 505);
    assert!(c.wait_closed(Duration::from_secs(5)).is_some());
    assert_eq!(get(gw.port, "/after").status, 200);
}

#[test]
fn error_answers_to_head_carry_no_content() {
    let backend = Backend::echo("b");
    let gw = acting_gateway(&backend);
    // A 401 to HEAD on a kept-alive connection, then a pipelined GET: the
    // second answer must be read as the second answer.
    let mut c = Client::connect(gw.port);
    c.send(b"HEAD /jwt/x HTTP/1.1\r\nHost: a\r\n\r\nGET /public HTTP/1.1\r\nHost: a\r\n\r\n");
    let first = c.try_read_response(true).expect("the HEAD answer");
    assert_eq!(first.status, 401);
    assert!(first.header("content-length").is_some_and(|v| v != "0"));
    let second = c.read_response();
    assert_eq!(second.status, 200, "body: {}", second.text());
    assert!(
        second.text().starts_with("b GET /public"),
        "{}",
        second.text()
    );
}

// ---------------------------------------------------------------------------
// Full-duplex exchange
// ---------------------------------------------------------------------------

/// A backend written on raw sockets: each connection is handed to `handler`
/// with its id and the request head; it returns whether to keep reading
/// requests on that connection.
struct RawBackend {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    /// (connection id, request line) of every head read.
    log: Arc<Mutex<Vec<(usize, String)>>>,
}

impl RawBackend {
    fn start(handler: impl Fn(usize, &str, &mut Conn) -> bool + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind raw backend");
        let addr = listener.local_addr().expect("raw backend addr");
        let conns = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(handler);
        {
            let (conns, log) = (conns.clone(), log.clone());
            thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let id = conns.fetch_add(1, Ordering::SeqCst);
                    let (log, handler) = (log.clone(), handler.clone());
                    thread::spawn(move || {
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
                        let _ = stream.set_write_timeout(Some(Duration::from_secs(20)));
                        let _ = stream.set_nodelay(true);
                        let mut conn = Conn::new(stream);
                        while let Ok(Some(head)) = conn.read_head(64 * 1024) {
                            let head = String::from_utf8_lossy(&head).into_owned();
                            let line = head.lines().next().unwrap_or("").to_string();
                            log.lock().unwrap().push((id, line));
                            if !handler(id, &head, &mut conn) {
                                return;
                            }
                        }
                    });
                }
            });
        }
        RawBackend { addr, conns, log }
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The connection id the first request line starting with `prefix` came on.
    fn conn_of(&self, prefix: &str) -> Option<usize> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|(_, l)| l.starts_with(prefix))
            .map(|(id, _)| *id)
    }
}

fn write_plain(conn: &mut Conn, status: &str, body: &str, extra: &str) -> io::Result<()> {
    conn.stream.write_all(
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

const UPLOAD: u64 = 50 * 1024 * 1024;
const EARLY_BODY: &str = "backend refuses the upload";

/// How the early-answering backend ends its upload exchange.
#[derive(Clone, Copy, PartialEq)]
enum Early {
    /// 413 after 64 KiB, then holds the connection open without reading.
    RefuseAndStall,
    /// 200 with `Connection: close` after 64 KiB, then closes.
    OkAndClose,
}

/// A backend that answers `/upload` early (after 64 KiB of the body) and
/// `/next` normally; returns it with the instant it answered the upload.
fn early_backend(mode: Early) -> (RawBackend, Arc<Mutex<Option<Instant>>>) {
    let answered = Arc::new(Mutex::new(None));
    let at = answered.clone();
    let backend = RawBackend::start(move |_, head, conn| {
        if head.starts_with("POST /upload") {
            if conn.read_exact_to(64 * 1024, &mut |_| {}).is_err() {
                return false;
            }
            match mode {
                // The instant is taken before the answer is written: taken
                // after, a client that reads the answer first (this thread
                // preempted in between) would find none.
                Early::RefuseAndStall => {
                    *at.lock().unwrap() = Some(Instant::now());
                    let _ = write_plain(conn, "413 Payload Too Large", EARLY_BODY, "");
                    // Stop reading; keep the connection open well past the
                    // gateway's 3 s upstream timeout, so that a reuse of this
                    // connection shows as a 504 instead of a quiet retry.
                    thread::sleep(Duration::from_secs(10));
                }
                Early::OkAndClose => {
                    *at.lock().unwrap() = Some(Instant::now());
                    let _ = write_plain(conn, "200 OK", "ok", "Connection: close\r\n");
                    let _ = conn.stream.shutdown(Shutdown::Write);
                    thread::sleep(Duration::from_millis(300));
                }
            }
            return false;
        }
        write_plain(conn, "200 OK", "next", "").is_ok()
    });
    (backend, answered)
}

fn upload_gateway(backend: &RawBackend) -> Gateway {
    let cfg = config(
        1,
        &upstream("app", &[&backend.addr()], "timeout_ms: 3000"),
        &catch_all("app"),
    )
    .replace("max_body_bytes: 1048576", "max_body_bytes: 104857600")
    .replace("body_read_timeout_ms: 2000", "body_read_timeout_ms: 5000");
    Gateway::start(&cfg)
}

/// Uploads 50 MiB (Content-Length or chunked) from a writer thread while the
/// main thread reads the response. Returns the response, the instant it
/// was read, and the client (for checking the close).
fn upload(port: u16, chunked: bool) -> (Resp, Instant, Client, thread::JoinHandle<u64>) {
    let mut c = Client::connect(port);
    c.set_read_timeout(Duration::from_secs(15));
    let mut w = c.stream().try_clone().expect("clone client stream");
    let writer = thread::spawn(move || {
        let head = if chunked {
            "POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_string()
        } else {
            format!("POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {UPLOAD}\r\n\r\n")
        };
        let mut sent = 0u64;
        if w.write_all(head.as_bytes()).is_err() {
            return sent;
        }
        let _ = Pattern::new().generate(UPLOAD, |piece| {
            if chunked {
                w.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
                w.write_all(piece)?;
                w.write_all(b"\r\n")?;
            } else {
                w.write_all(piece)?;
            }
            sent += piece.len() as u64;
            Ok::<(), io::Error>(())
        });
        if chunked && sent == UPLOAD {
            let _ = w.write_all(b"0\r\n\r\n");
        }
        sent
    });
    let r = c
        .try_read_response(false)
        .unwrap_or_else(|e| panic!("no response during the upload: {e}"));
    (r, Instant::now(), c, writer)
}

#[track_caller]
fn assert_prompt(answered: &Mutex<Option<Instant>>, received: Instant) {
    let at = answered
        .lock()
        .unwrap()
        .expect("the backend never answered the upload");
    let lag = received.saturating_duration_since(at);
    assert!(
        lag < Duration::from_secs(1),
        "the client got the early response {lag:?} after the backend sent it"
    );
}

fn early_refusal(chunked: bool) {
    let (backend, answered) = early_backend(Early::RefuseAndStall);
    let gw = upload_gateway(&backend);
    let (r, received, mut c, writer) = upload(gw.port, chunked);
    assert_eq!(r.status, 413, "body: {}", r.text());
    assert_eq!(r.text(), EARLY_BODY, "not the backend's own 413");
    assert_prompt(&answered, received);
    // Far more than 1 MiB of the body remains: the gateway closes the client
    // connection after the response.
    assert!(
        c.wait_closed(Duration::from_secs(8)).is_some(),
        "client connection left open with ~50 MiB of the body unread"
    );
    let sent = writer.join().expect("writer thread");
    assert!(sent < UPLOAD, "the whole 50 MiB upload was read ({sent})");

    // The upstream connection is not pooled: the next request opens a new one
    // (the stalled one would never answer).
    let upload_conn = backend
        .conn_of("POST /upload")
        .expect("upload reached the backend");
    let r = get(gw.port, "/next");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "next");
    let next_conn = backend
        .conn_of("GET /next")
        .expect("next reached the backend");
    assert_ne!(
        next_conn, upload_conn,
        "the upstream connection of the early answer was reused"
    );
    assert!(backend.conns.load(Ordering::SeqCst) >= 2);
}

#[test]
fn early_413_during_content_length_upload_reaches_the_client_at_once() {
    early_refusal(false);
}

#[test]
fn early_413_during_chunked_upload_reaches_the_client_at_once() {
    early_refusal(true);
}

#[test]
fn early_200_then_close_during_upload_reaches_the_client() {
    let (backend, answered) = early_backend(Early::OkAndClose);
    let gw = upload_gateway(&backend);
    let (r, received, mut c, writer) = upload(gw.port, false);
    assert_eq!(r.status, 200, "body: {}", r.text());
    assert_eq!(r.text(), "ok");
    assert_prompt(&answered, received);
    assert!(c.wait_closed(Duration::from_secs(8)).is_some());
    let _ = writer.join();
    let r = get(gw.port, "/next");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "next");
}

// ---------------------------------------------------------------------------
// Trailers
// ---------------------------------------------------------------------------

/// A response as read here: status, headers, decoded body, trailer fields.
struct Traced {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

fn split_field(line: &str) -> Option<(String, String)> {
    let (k, v) = line.split_once(':')?;
    Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
}

/// Reads one response, keeping the trailer section of a chunked body.
fn read_with_trailers(c: &mut Client) -> io::Result<Traced> {
    let head = c
        .conn
        .read_head(64 * 1024)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed before a response"))?;
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line in {text:?}")))?;
    let headers: Vec<(String, String)> = lines.filter_map(split_field).collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let mut body = Vec::new();
    let mut trailers = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let line = String::from_utf8_lossy(&c.conn.read_line()?).into_owned();
            let size = u64::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                loop {
                    let l = c.conn.read_line()?;
                    if l.is_empty() {
                        break;
                    }
                    let l = String::from_utf8_lossy(&l).into_owned();
                    trailers.push(
                        split_field(&l)
                            .ok_or_else(|| io::Error::other(format!("bad trailer {l:?}")))?,
                    );
                }
                break;
            }
            c.conn
                .read_exact_to(size, &mut |b| body.extend_from_slice(b))?;
            if !c.conn.read_line()?.is_empty() {
                return Err(io::Error::other("chunk not followed by CRLF"));
            }
        }
    } else if let Some(n) = get("content-length").and_then(|v| v.parse::<u64>().ok()) {
        c.conn
            .read_exact_to(n, &mut |b| body.extend_from_slice(b))?;
    } else {
        c.conn.read_to_eof_to(&mut |b| body.extend_from_slice(b))?;
    }
    Ok(Traced {
        status,
        headers,
        body,
        trailers,
    })
}

#[test]
fn trailers_reach_clients_that_accept_them_without_forbidden_fields() {
    let backend = RawBackend::start(|_, _, conn| {
        conn.stream
            .write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n\
                  5\r\nhello\r\n6\r\n world\r\n0\r\n\
                  X-Checksum: abc\r\nContent-Length: 5\r\nSet-Cookie: a=b\r\n\r\n",
            )
            .is_ok()
    });
    let gw = Gateway::start(&config(
        1,
        &upstream("app", &[&backend.addr()], ""),
        &catch_all("app"),
    ));

    let mut c = Client::connect(gw.port);
    c.send(b"GET /t HTTP/1.1\r\nHost: localhost\r\nTE: trailers\r\n\r\n");
    let r = read_with_trailers(&mut c).expect("response with trailers");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello world");
    assert!(
        r.trailers
            .iter()
            .any(|(k, v)| k == "x-checksum" && v == "abc"),
        "no `X-Checksum: abc` trailer; trailers {:?}, headers {:?}",
        r.trailers,
        r.headers
    );
    for (k, _) in &r.trailers {
        assert!(
            k != "content-length" && k != "set-cookie",
            "forbidden trailer field {k} forwarded: {:?}",
            r.trailers
        );
    }
    // The forbidden fields did not turn into header fields either.
    assert!(
        !r.headers.iter().any(|(k, _)| k == "set-cookie"),
        "{:?}",
        r.headers
    );

    // A client that did not send TE: trailers gets the same body, no trailers,
    // on the same connection.
    c.send(b"GET /t2 HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let r = read_with_trailers(&mut c).expect("response without trailers");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello world");
    assert!(
        r.trailers.is_empty(),
        "trailers sent to a client without TE: trailers: {:?}",
        r.trailers
    );
    assert!(
        !r.headers
            .iter()
            .any(|(k, _)| k == "x-checksum" || k == "set-cookie"),
        "{:?}",
        r.headers
    );
    // And the connection is still in step.
    c.send(b"GET /t3 HTTP/1.1\r\nHost: localhost\r\nTE: trailers\r\n\r\n");
    let r = read_with_trailers(&mut c).expect("third response");
    assert_eq!(r.body, b"hello world");
}

// ---------------------------------------------------------------------------
// Crash isolation
// ---------------------------------------------------------------------------

const PANIC_HEADER: &str = "x-shardgate-test-panic";

#[test]
fn a_panic_ends_only_its_own_connection() {
    let backend = Backend::echo("b");
    let gw = Gateway::start_with_env(
        &config(
            1,
            &upstream("app", &[&backend.addr()], ""),
            &catch_all("app"),
        ),
        &[("SHARDGATE_TEST_PANIC", "1")],
    );
    let mut clients: Vec<Client> = (0..3).map(|_| Client::connect(gw.port)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.get(&format!("/before/{i}")).status, 200);
    }
    let victim = &mut clients[1];
    victim.send(&build_request(
        "GET",
        "/boom",
        &[(PANIC_HEADER, "1"), ("X-Request-Id", "panic-req-4242")],
        b"",
    ));
    let got = victim
        .wait_closed(Duration::from_secs(5))
        .expect("the panicking connection was left open");
    assert!(
        got.is_empty(),
        "the panicking request got a response: {:?}",
        show(&got)
    );
    // The other keep-alive connections on the same shard still work.
    for i in [0, 2] {
        let r = clients[i].get(&format!("/after/{i}"));
        assert_eq!(r.status, 200, "connection {i} after the panic");
        assert_eq!(r.text(), format!("b GET /after/{i}"));
    }
    // New connections are served; the process is alive.
    assert_eq!(get(gw.port, "/new").text(), "b GET /new");
    assert!(
        gw.wait_stderr("panic-req-4242", Duration::from_secs(5)),
        "stderr does not name the request id:\n{}",
        gw.stderr()
    );
    let err = gw.stderr();
    assert!(
        err.lines()
            .any(|l| l.to_ascii_lowercase().contains("panic") && l.contains("panic-req-4242")),
        "no line with `panic` and the request id:\n{err}"
    );

    // Repeated panics do not wear the shard down.
    for i in 0..5 {
        let mut c = Client::connect(gw.port);
        c.send(&build_request("GET", "/boom", &[(PANIC_HEADER, "1")], b""));
        assert!(c.wait_closed(Duration::from_secs(5)).is_some(), "panic {i}");
    }
    assert_eq!(clients[0].get("/last").status, 200);
    assert_eq!(get(gw.port, "/last").status, 200);
    let mut gw = gw;
    assert!(
        gw.wait_exit(Duration::ZERO).is_none(),
        "the process exited; stderr:\n{}",
        gw.stderr()
    );
}

#[test]
fn the_panic_header_is_harmless_without_the_test_switch() {
    let backend = Backend::echo("b");
    let gw = one_backend(1, &backend);
    let mut c = Client::connect(gw.port);
    let r = c.request("GET", "/boom", &[(PANIC_HEADER, "1")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "b GET /boom");
    assert_eq!(backend.last().header(PANIC_HEADER), Some("1"));
    assert_eq!(c.get("/again").status, 200);
    assert!(!gw.stderr().to_ascii_lowercase().contains("panicked"));
}
