//! HTTP/2 toward clients through the real binary: h2c with prior knowledge
//! and h2 by ALPN next to HTTP/1.1 on the same listener, many streams on
//! one connection, large bodies both ways under flow control, the request
//! pipeline (routing, auth, rate limits, request ids, CORS) per stream,
//! gateway errors seen by a gRPC client as gRPC statuses, and GOAWAY on
//! reload and shutdown. Clients: curl, nghttp, h2load, grpcio (Python) and
//! raw frames (tests/h2wire).

mod common;
mod h2wire;
mod pki;

use common::*;
use h2wire::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// HTTP limits with room for large bodies.
const BIG_LIMITS: &str = "HttpLimits(max_header_bytes: 8192, max_headers: 40, max_body_bytes: 67108864, \
     header_read_timeout_ms: 2000, idle_timeout_ms: 5000, body_read_timeout_ms: 10000, send_timeout_ms: 20000)";

/// The SHA-256 form of an API key the config takes.
fn key_hash(key: &str) -> String {
    shardgate::auth::hash_api_key(key)
}

/// A gateway with an h2c listener, `upstreams` and `routes`, an API key
/// authenticator `keys` (key `secret-1`) and a rate limit `one` (1 request
/// per client address per hour).
fn gateway(upstreams: &str, routes: &str) -> Gateway {
    let top = format!(
        r#"authenticators: {{ "keys": ApiKey(header: "X-Api-Key", consumers: {{ "app": "{}" }}) }},
    rate_limits: {{ "one": RateLimit(key: ClientIp, algorithm: SlidingLog(limit: 1, window_s: 3600)) }},"#,
        key_hash("secret-1")
    );
    Gateway::start(&h2_config("", BIG_LIMITS, &top, upstreams, routes))
}

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

#[test]
fn h2c_prior_knowledge_get_and_post_with_curl_and_nghttp_and_http1_on_the_same_port() {
    let backend =
        Backend::start(|r| Response::ok(format!("B {} {} {}", r.method, r.target, r.body_len)));
    let gw = gateway(&upstream("b", &[&backend.addr()], ""), &catch_all("b"));
    let u = url(gw.port, "/get/x?q=1");

    let c = curl(&["--http2-prior-knowledge", &u]);
    assert_eq!((c.version.as_str(), c.status), ("2", 200), "{c:?}");
    assert_eq!(c.text(), "B GET /get/x?q=1 0");
    assert!(c
        .header(":line")
        .is_some_and(|l| l.starts_with("HTTP/2 200")));

    let c = curl(&[
        "--http2-prior-knowledge",
        "--data-binary",
        "hello over h2c",
        &url(gw.port, "/post"),
    ]);
    assert_eq!((c.version.as_str(), c.status), ("2", 200), "{c:?}");
    assert_eq!(c.text(), "B POST /post 14");
    assert_eq!(backend.last().body, b"hello over h2c");
    // The backend gets HTTP/1.1 with the authority as Host.
    let host = format!("127.0.0.1:{}", gw.port);
    assert_eq!(backend.last().version, "HTTP/1.1");
    assert_eq!(backend.last().header("host"), Some(host.as_str()));

    // nghttp: a GET and a POST (from stdin) on one connection each.
    let out = Command::new("nghttp")
        .args(["-v"])
        .arg(url(gw.port, "/ng/get"))
        .output()
        .expect("nghttp runs (Debian nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "nghttp: {text}");
    assert!(text.contains(":status: 200"), "{text}");
    assert!(text.contains("B GET /ng/get 0"), "{text}");
    let out = Command::new("nghttp")
        .args(["-d", "/dev/stdin"])
        .arg(url(gw.port, "/ng/post"))
        .stdin(std::fs::File::open("Cargo.toml").unwrap())
        .output()
        .expect("nghttp runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let size = std::fs::metadata("Cargo.toml").unwrap().len();
    assert_eq!(text, format!("B POST /ng/post {size}"));

    // HTTP/1.1 on the same port, keep-alive included.
    let mut c = Client::connect(gw.port);
    let r = c.get("/h1/a");
    assert_eq!((r.version.as_str(), r.status), ("HTTP/1.1", 200));
    assert_eq!(r.text(), "B GET /h1/a 0");
    assert_eq!(c.get("/h1/b").text(), "B GET /h1/b 0");
}

#[test]
fn a_listener_without_http2_answers_the_preface_with_505() {
    let backend = Backend::echo("B");
    let gw = Gateway::start(&config(
        1,
        &upstream("b", &[&backend.addr()], ""),
        &catch_all("b"),
    ));
    let mut c = Client::connect(gw.port);
    c.send(PREFACE);
    let r = c.read_response();
    assert_eq!(r.status, 505, "{}", r.text());
    assert!(r.text().contains("HTTP/2 is not supported"), "{}", r.text());
    // curl with prior knowledge fails; plain HTTP/1.1 still works.
    let (version, _, _) = curl_h2c(gw.port, "/x");
    assert_ne!(version, "2");
    assert_eq!(get(gw.port, "/x").status, 200);
    assert_eq!(backend.count(), 1);
}

#[test]
fn h2_over_tls_by_alpn_and_http1_on_the_same_listener_and_grpc_over_tls() {
    let ca = pki::Ca::new("Test CA");
    let dir = temp_dir();
    let (cert, key) = ca.leaf("gateway", &["localhost"]).write(&dir, "gw");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let backend = Backend::start(|r| Response::ok(format!("B {} {}", r.method, r.target)));
    let private = r#"        Route(name: "private", match: Match(path_prefix: "/private.v1.Svc/"), upstream: "b", auth: Required(["keys"])),"#;
    let text = format!(
        "Gateway(\n    shards: Count(1),\n    listeners: [Listener(name: \"tls\", bind: \"127.0.0.1:$PORT\", http2: true, tls: Some(Tls(cert: {cert:?}, key: {key:?})))],\n    limits_http: {LIMITS},\n    authenticators: {{ \"keys\": ApiKey(header: \"X-Api-Key\", consumers: {{ \"app\": \"{}\" }}) }},\n    upstreams: {{\n{}\n    }},\n    routes: [\n{private}\n{}\n    ],\n)\n",
        key_hash("secret-1"),
        upstream("b", &[&backend.addr()], ""),
        catch_all("b")
    );
    let gw = Gateway::start(&text);
    let resolve = format!("localhost:{}:127.0.0.1", gw.port);
    let u = format!("https://localhost:{}/tls/x", gw.port);
    let ca_arg = ca_file.to_str().unwrap();

    // curl offers h2 and http/1.1 by ALPN: h2 is chosen.
    let c = curl(&["--http2", "--cacert", ca_arg, "--resolve", &resolve, &u]);
    assert_eq!((c.version.as_str(), c.status), ("2", 200), "{c:?}");
    assert!(
        c.header(":line")
            .is_some_and(|l| l.starts_with("HTTP/2 200")),
        "{c:?}"
    );
    assert_eq!(c.text(), "B GET /tls/x");
    // -k with an IP address (no SNI): the default certificate, h2 still.
    let c = curl(&[
        "--http2",
        "-k",
        &format!("https://127.0.0.1:{}/ip", gw.port),
    ]);
    assert_eq!((c.version.as_str(), c.status), ("2", 200), "{c:?}");
    // A POST over h2.
    let c = curl(&[
        "--http2",
        "--cacert",
        ca_arg,
        "--resolve",
        &resolve,
        "-d",
        "abc",
        &u,
    ]);
    assert_eq!(
        (c.version.as_str(), c.text().as_str()),
        ("2", "B POST /tls/x")
    );
    assert_eq!(backend.last().body, b"abc");

    // An HTTP/1.1-only client on the same listener.
    let c = curl(&["--http1.1", "--cacert", ca_arg, "--resolve", &resolve, &u]);
    assert_eq!((c.version.as_str(), c.status), ("1.1", 200), "{c:?}");
    assert_eq!(c.text(), "B GET /tls/x");
    // The rustls client of the TLS tests offers http/1.1 only.
    let cfg = pki::client(&ca, &pki::both());
    let tcp = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    use std::io::Write;
    write!(s, "GET /rustls HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    s.flush().unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(pki::read_response(&mut s), (200, "B GET /rustls".into()));

    // A gRPC client over TLS (h2 by ALPN) gets the gateway's 401 as a status.
    let env = [("H2TESTS_GRPC_CA", ca_arg)];
    let got = grpc_calls_env(gw.port, "/private.v1.Svc/Get", 1, &[], &env);
    assert_eq!(got[0].0, "UNAUTHENTICATED", "{got:?}");
    assert_eq!(got[0].1, "authentication required");
}

/// Runs h2load for `n` requests on one connection, 100 streams at once,
/// with `extra` arguments (a later `-c`/`-m` wins); returns its output.
fn h2load(n: usize, extra: &[&str], url: &str) -> String {
    let n = n.to_string();
    let out = Command::new("h2load")
        .args(["-n", &n, "-c", "1", "-m", "100"])
        .args(extra)
        .arg(url)
        .output()
        .expect("h2load runs (Debian nghttp2-client)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn many_concurrent_streams_on_one_connection_each_authenticated() {
    let backend = Backend::echo("B");
    let routes = r#"
        Route(name: "private", match: Match(path_prefix: "/private"), upstream: "b", auth: Required(["keys"])),
        Route(name: "public", match: Match(path_prefix: "/public"), upstream: "b"),"#;
    let gw = gateway(&upstream("b", &[&backend.addr()], ""), routes);

    let text = h2load(2000, &[], &url(gw.port, "/public/p"));
    assert!(
        text.contains("2000 succeeded, 0 failed, 0 errored"),
        "h2load: {text}"
    );
    assert!(text.contains("status codes: 2000 2xx"), "h2load: {text}");
    assert_eq!(backend.count(), 2000);
    // 16 connections x 6 streams (96 at once: the test backend's listen
    // backlog is 128, and each stream is an upstream connection).
    let text = h2load(2000, &["-c", "16", "-m", "6"], &url(gw.port, "/public/q"));
    assert!(text.contains("status codes: 2000 2xx"), "h2load: {text}");
    assert_eq!(backend.count(), 4000);

    // 100 streams at once, each authenticated on its own.
    let key = ["-H", "x-api-key: secret-1"];
    let text = h2load(500, &key, &url(gw.port, "/private/p"));
    assert!(text.contains("status codes: 500 2xx"), "h2load: {text}");
    let text = h2load(500, &[], &url(gw.port, "/private/p"));
    // h2load counts 4xx answers as failed requests.
    assert!(
        text.contains("status codes: 0 2xx, 0 3xx, 500 4xx"),
        "h2load: {text}"
    );
    assert!(
        text.contains("500 done, 0 succeeded, 500 failed, 0 errored"),
        "h2load: {text}"
    );
    assert_eq!(
        backend.count(),
        4500,
        "unauthenticated streams reached the upstream"
    );

    // nghttp: several URIs on one connection, with and without a key.
    let out = Command::new("nghttp")
        .args(["-v", "-H", "x-api-key: wrong"])
        .arg(url(gw.port, "/private/a"))
        .arg(url(gw.port, "/public/b"))
        .arg(url(gw.port, "/private/c"))
        .output()
        .expect("nghttp runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches(":status: 401").count(), 2, "{text}");
    assert_eq!(text.matches(":status: 200").count(), 1, "{text}");
    assert!(text.contains("invalid credentials"), "{text}");
}

#[test]
fn large_bodies_both_ways_with_flow_control() {
    const UP: u64 = 6 * 1024 * 1024 + 17;
    const DOWN: u64 = 5 * 1024 * 1024 + 123;
    let backend = Backend::start(|r| {
        let chunked = r.target.contains("chunked");
        Response::generated(DOWN, chunked).header("x-got", &r.body_len.to_string())
    });
    // Windows far below the bodies: 64 KiB per stream, 128 KiB in all.
    let gw = Gateway::start(&h2_config(
        "stream_window_bytes: 65536, connection_window_bytes: 131072",
        BIG_LIMITS,
        "",
        &upstream("b", &[&backend.addr()], ""),
        &catch_all("b"),
    ));
    let dir = temp_dir();
    let file = dir.join("up.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        Pattern::new()
            .generate(UP, |piece| f.write_all(piece))
            .unwrap();
    }
    let want_up = Pattern::new().checksum(UP);
    let want_down = Pattern::new().checksum(DOWN);
    let file_arg = format!("@{}", file.display());

    // Declared length up (content-length), length-framed answer down.
    let c = curl(&[
        "--http2-prior-knowledge",
        "--data-binary",
        &file_arg,
        &url(gw.port, "/big"),
    ]);
    assert_eq!((c.version.as_str(), c.status), ("2", 200), "{}", c.stderr);
    assert_eq!(c.header("x-got"), Some(UP.to_string().as_str()));
    assert_eq!(c.body.len() as u64, DOWN);
    assert_eq!(checksum(&c.body), want_down, "downloaded body differs");
    let got = backend.last();
    assert_eq!(
        (got.body_len, got.checksum),
        (UP, want_up),
        "uploaded body differs"
    );

    // Chunked answer down.
    let c = curl(&[
        "--http2-prior-knowledge",
        "--data-binary",
        &file_arg,
        &url(gw.port, "/big/chunked"),
    ]);
    assert_eq!((c.version.as_str(), c.status), ("2", 200), "{}", c.stderr);
    assert_eq!(checksum(&c.body), want_down, "downloaded body differs");

    // Unknown length up (no content-length: chunked to the upstream),
    // chunked answer down.
    let c = curl_with_stdin(
        &[
            "--http2-prior-knowledge",
            "-T",
            "-",
            &url(gw.port, "/big/chunked"),
        ],
        Some(&file),
    );
    assert_eq!((c.version.as_str(), c.status), ("2", 200), "{}", c.stderr);
    assert_eq!(c.body.len() as u64, DOWN);
    assert_eq!(checksum(&c.body), want_down, "downloaded body differs");
    let got = backend.last();
    assert_eq!(got.method, "PUT");
    assert_eq!(
        (got.body_len, got.checksum),
        (UP, want_up),
        "uploaded body differs"
    );
    assert!(got
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked")));

    // Down through a client's small windows (16 KiB per stream, the
    // connection's 65,535 bytes), opened again frame by frame.
    let mut c = H2::connect_with(gw.port, &[(SETTINGS_INITIAL_WINDOW_SIZE, 16384)]);
    c.get(1, "/big/chunked");
    let a = c.answer(1, Duration::from_secs(60));
    assert_eq!(a.status(), Some(200), "{a:?}");
    assert!(a.ended);
    assert_eq!(a.body.len() as u64, DOWN);
    assert_eq!(checksum(&a.body), want_down, "downloaded body differs");
}

#[test]
fn the_request_pipeline_applies_to_each_stream() {
    let a = Backend::start(|r| Response::ok(format!("A {} {}", r.method, r.target)));
    let b = Backend::start(|r| Response::ok(format!("B {} {}", r.method, r.target)));
    let upstreams = format!(
        "{}{}",
        upstream("a", &[&a.addr()], ""),
        upstream("b", &[&b.addr()], "")
    );
    let routes = r#"
        Route(name: "host", match: Match(path_prefix: "/b", host: "api.example.com"), upstream: "a"),
        Route(name: "b", match: Match(path_prefix: "/b"), upstream: "b"),
        Route(name: "limited", match: Match(path_prefix: "/limited"), upstream: "b", rate_limits: ["one"]),
        Route(name: "cors", match: Match(path_prefix: "/cors", methods: ["GET", "PUT"]), upstream: "b",
              cors: Some(Cors(allow_origins: ["https://app.example.com"], allow_methods: ["GET", "PUT"], max_age_s: 600))),"#;
    let gw = gateway(&upstreams, routes);
    let h2 = "--http2-prior-knowledge";

    // Routing by path and by host (:authority).
    let c = curl(&[h2, &url(gw.port, "/b/1")]);
    assert_eq!((c.version.as_str(), c.text().as_str()), ("2", "B GET /b/1"));
    let c = curl(&[h2, "-H", "Host: api.example.com", &url(gw.port, "/b/1")]);
    assert_eq!(c.text(), "A GET /b/1");
    assert_eq!(a.last().header("host"), Some("api.example.com"));
    let c = curl(&[h2, &url(gw.port, "/nowhere")]);
    assert_eq!(c.status, 404, "{c:?}");
    assert!(c.text().contains("\"error\""), "{}", c.text());

    // Request ids: made when absent, kept when given, on both sides.
    let c = curl(&[h2, &url(gw.port, "/b/id")]);
    let made = c.header("x-request-id").expect("x-request-id").to_string();
    assert!(!made.is_empty());
    assert_eq!(b.last().header("x-request-id"), Some(made.as_str()));
    let c = curl(&[h2, "-H", "x-request-id: h2-req-7", &url(gw.port, "/b/id")]);
    assert_eq!(c.header("x-request-id"), Some("h2-req-7"));
    assert_eq!(b.last().header("x-request-id"), Some("h2-req-7"));

    // Rate limit: one per client, then 429 over h2.
    let c = curl(&[h2, &url(gw.port, "/limited")]);
    assert_eq!(c.status, 200);
    let c = curl(&[h2, &url(gw.port, "/limited")]);
    assert_eq!((c.version.as_str(), c.status), ("2", 429), "{c:?}");
    assert!(c.header("retry-after").is_some(), "{c:?}");
    assert!(c.text().contains("rate limit"), "{}", c.text());

    // CORS preflight answered at the edge, over h2.
    let before = b.count();
    let c = curl(&[
        h2,
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://app.example.com",
        "-H",
        "Access-Control-Request-Method: PUT",
        &url(gw.port, "/cors/x"),
    ]);
    assert_eq!(c.version, "2");
    assert!(c.status == 204 || c.status == 200, "{c:?}");
    assert_eq!(
        c.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(c
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("PUT")));
    assert_eq!(b.count(), before, "the preflight reached the upstream");
    // And the CORS fields on the actual request.
    let c = curl(&[
        h2,
        "-H",
        "Origin: https://app.example.com",
        &url(gw.port, "/cors/x"),
    ]);
    assert_eq!(c.status, 200);
    assert_eq!(
        c.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
}

/// Runs the grpcio client: `calls` unary calls of `method`; the status
/// name and details of each.
fn grpc_calls(port: u16, method: &str, calls: usize, metadata: &[&str]) -> Vec<(String, String)> {
    grpc_calls_env(port, method, calls, metadata, &[])
}

/// [`grpc_calls`] with environment variables for the client.
fn grpc_calls_env(
    port: u16,
    method: &str,
    calls: usize,
    metadata: &[&str],
    env: &[(&str, &str)],
) -> Vec<(String, String)> {
    let script = format!("{}/tests/h2tests_grpc.py", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("/usr/bin/python3")
        .envs(env.iter().copied())
        .arg(script)
        .arg(format!("127.0.0.1:{port}"))
        .arg(method)
        .arg(calls.to_string())
        .args(metadata)
        .output()
        .expect("python3 runs (python3-grpcio)");
    assert!(
        out.status.success(),
        "the gRPC client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (code, details) = l.split_once('\t').unwrap_or((l, ""));
            (code.to_string(), details.to_string())
        })
        .collect()
}

#[test]
fn gateway_errors_reach_a_grpc_client_as_grpc_statuses() {
    // A backend answering gRPC-looking successes (HTTP/1.1, so only the
    // gateway's own answers matter here).
    let backend = Backend::echo("B");
    let dead = closed_port();
    let upstreams = format!(
        "{}{}",
        upstream("b", &[&backend.addr()], ""),
        upstream("dead", &[&format!("127.0.0.1:{dead}")], "")
    );
    let routes = r#"
        Route(name: "private", match: Match(path_prefix: "/private.v1.Svc/"), upstream: "b", auth: Required(["keys"])),
        Route(name: "limited", match: Match(path_prefix: "/limited.v1.Svc/"), upstream: "b", rate_limits: ["one"]),
        Route(name: "down", match: Match(path_prefix: "/down.v1.Svc/"), upstream: "dead"),"#;
    let gw = gateway(&upstreams, routes);

    let got = grpc_calls(gw.port, "/private.v1.Svc/Get", 1, &[]);
    assert_eq!(got[0].0, "UNAUTHENTICATED", "{got:?}");
    assert_eq!(
        got[0].1, "authentication required",
        "grpc-message from the JSON error"
    );
    let got = grpc_calls(gw.port, "/private.v1.Svc/Get", 1, &["x-api-key=nope"]);
    assert_eq!(got[0].0, "UNAUTHENTICATED", "{got:?}");

    let got = grpc_calls(gw.port, "/limited.v1.Svc/Get", 3, &[]);
    let codes: Vec<&str> = got.iter().map(|(c, _)| c.as_str()).collect();
    // The first call passes the limit and reaches the (non-gRPC) backend,
    // whose 200 text answer is not a gRPC answer either: a gRPC error
    // all the same (the client sees no message); then 429s.
    assert_eq!(
        codes[1..],
        ["RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"],
        "{got:?}"
    );
    assert!(got[1].1.contains("rate limit"), "{got:?}");

    let got = grpc_calls(gw.port, "/unknown.v1.Svc/Get", 1, &[]);
    assert_eq!(got[0].0, "UNIMPLEMENTED", "{got:?}");

    let got = grpc_calls(gw.port, "/down.v1.Svc/Get", 1, &[]);
    assert_eq!(got[0].0, "UNAVAILABLE", "{got:?}");

    // The trailers-only answer on the wire: HTTP 200, grpc-status in it.
    let c = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "--data-binary",
        "",
        &url(gw.port, "/private.v1.Svc/Get"),
    ]);
    assert_eq!((c.version.as_str(), c.status), ("2", 200), "{c:?}");
    assert_eq!(c.header("grpc-status"), Some("16"));
    assert_eq!(c.header("content-type"), Some("application/grpc"));
    assert!(c.body.is_empty());
    // The same request from a plain HTTP/2 client gets the JSON 401.
    let c = curl(&[
        "--http2-prior-knowledge",
        &url(gw.port, "/private.v1.Svc/Get"),
    ]);
    assert_eq!(c.status, 401);
    assert!(c.text().contains("authentication required"));
}

/// A raw h2 connection with one slow request in flight (stream 1), the
/// backend holding it.
fn slow_request_in_flight(gw: &Gateway, backend: &Backend) -> H2 {
    let mut c = H2::connect(gw.port);
    c.get(1, "/slow");
    assert!(
        backend.wait_for(1, Duration::from_secs(5)),
        "the slow request did not reach the backend"
    );
    c
}

/// A backend answering `/slow` after 1.5 s, and a gateway in front of it.
fn slow_site() -> (Backend, Gateway) {
    let backend = Backend::start(|r| {
        let delay = if r.target == "/slow" { 1500 } else { 0 };
        Response::ok(format!("done {}", r.target)).delay(Duration::from_millis(delay))
    });
    let text = h2_config(
        "",
        LIMITS,
        "",
        &upstream("b", &[&backend.addr()], ""),
        &catch_all("b"),
    );
    let gw = Gateway::start(&text);
    (backend, gw)
}

#[test]
fn reload_sends_goaway_and_the_request_in_flight_completes() {
    let (backend, gw) = slow_site();
    let mut c = slow_request_in_flight(&gw, &backend);
    gw.send_signal("HUP");
    let started = Instant::now();
    let a = c.answer(1, Duration::from_secs(10));
    assert_eq!(a.status(), Some(200), "{a:?}");
    assert_eq!(a.body, b"done /slow");
    assert!(a.ended);
    let goaway = c.goaways.first().expect("GOAWAY on reload");
    assert_eq!(goaway.error_code(), Some(NO_ERROR));
    // The final GOAWAY names stream 1 as processed.
    assert!(c.goaways.last().unwrap().last_stream().unwrap() >= 1);
    // The connection then closes.
    assert!(
        c.wait_closed(Duration::from_secs(5)),
        "still open after GOAWAY"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    // New connections work, over h2 and HTTP/1.1.
    let (version, status, body) = curl_h2c(gw.port, "/after");
    assert_eq!((version.as_str(), status), ("2", 200));
    assert_eq!(body, b"done /after");
    assert_eq!(get(gw.port, "/after1").status, 200);
    assert!(gw.stderr().contains("reload"), "{}", gw.stderr());
}

#[test]
fn shutdown_sends_goaway_and_the_request_in_flight_completes() {
    let (backend, mut gw) = slow_site();
    let mut c = slow_request_in_flight(&gw, &backend);
    gw.send_signal("TERM");
    let a = c.answer(1, Duration::from_secs(10));
    assert_eq!(a.status(), Some(200), "{a:?}");
    assert_eq!(a.body, b"done /slow");
    assert_eq!(c.goaway_code(), Some(NO_ERROR), "GOAWAY on shutdown");
    assert!(
        c.wait_closed(Duration::from_secs(5)),
        "still open after GOAWAY"
    );
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("the gateway exits");
    assert!(status.success(), "{status:?}");
}

#[test]
fn an_idle_h2_connection_gets_goaway_after_the_idle_timeout() {
    let backend = Backend::echo("B");
    let gw = Gateway::start(&h2_config(
        "idle_timeout_ms: 500",
        LIMITS,
        "",
        &upstream("b", &[&backend.addr()], ""),
        &catch_all("b"),
    ));
    let mut c = H2::connect(gw.port);
    c.get(1, "/x");
    assert_eq!(c.answer(1, Duration::from_secs(5)).status(), Some(200));
    let started = Instant::now();
    assert!(
        c.wait_closed(Duration::from_secs(5)),
        "idle connection kept open"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(c.goaway_code(), Some(NO_ERROR));
}

#[test]
fn the_listeners_http2_limits_are_announced() {
    let backend = Backend::echo("B");
    let gw = Gateway::start(&h2_config(
        "max_concurrent_streams: 33, max_header_list_bytes: 20000, max_frame_bytes: 32768, \
         stream_window_bytes: 100000, connection_window_bytes: 2000000",
        LIMITS,
        "",
        &upstream("b", &[&backend.addr()], ""),
        &catch_all("b"),
    ));
    let mut c = H2::connect(gw.port);
    for want in [
        (SETTINGS_MAX_CONCURRENT_STREAMS, 33),
        (SETTINGS_INITIAL_WINDOW_SIZE, 100_000),
        (SETTINGS_MAX_FRAME_SIZE, 32768),
        (SETTINGS_MAX_HEADER_LIST_SIZE, 20000),
    ] {
        assert!(
            c.server_settings.contains(&want),
            "{want:?} not in {:?}",
            c.server_settings
        );
    }
    // The connection window is opened past the protocol's 65,535 bytes.
    let frames = c.drain(Duration::from_millis(300));
    let opened: u32 = frames
        .iter()
        .filter(|f| f.kind == WINDOW_UPDATE && f.stream == 0)
        .map(|f| u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]]))
        .sum();
    assert_eq!(opened, 2_000_000 - 65_535);
    c.get(1, "/x");
    assert_eq!(c.answer(1, Duration::from_secs(5)).status(), Some(200));
}
