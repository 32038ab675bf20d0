//! gRPC through `protocol: Http2` upstreams: a real grpcio server
//! (tests/grpc/h2up_server.py) behind the gateway, called over HTTP/1.1
//! (gRPC framing with chunked trailers) and as gRPC-Web with Python's
//! http.client (tests/grpc/h2up_web_client.py), binary and -text.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn script(name: &str) -> String {
    format!("{}/tests/grpc/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn python() -> String {
    python_with("grpc")
}

/// The grpcio server; stopped (stdin closed, killed) when dropped.
struct GrpcServer {
    child: Child,
    port: u16,
}

impl GrpcServer {
    fn start() -> GrpcServer {
        let mut child = Command::new(python())
            .arg(script("h2up_server.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap();
        GrpcServer { child, port }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gateway(server: &GrpcServer, routes: &str) -> Gateway {
    let target = format!("127.0.0.1:{}", server.port);
    let routes = if routes.is_empty() {
        catch_all("grpc")
    } else {
        routes.to_string()
    };
    Gateway::start(&config(
        1,
        &upstream("grpc", &[&target], "protocol: Http2, timeout_ms: 5000"),
        &routes,
    ))
}

/// One gRPC message frame.
fn message(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A gRPC call over HTTP/1.1 on a fresh connection: the raw request sent.
fn grpc_call(port: u16, method: &str, payload: &[u8], extra: &str) -> TcpStream {
    let body = message(payload);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /test.Echo/{method} HTTP/1.1\r\nHost: grpc.test\r\ncontent-type: application/grpc\r\nte: trailers\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    s
}

/// Reads until `done` says the bytes so far are enough (or EOF).
fn read_until(s: &mut TcpStream, got: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
    let mut buf = [0u8; 16384];
    while !done(got) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// Runs the gRPC-Web client; returns its JSON answer.
fn web_call(port: u16, path: &str, payload: &str, mode: &str, release: bool) -> serde_json::Value {
    let mut cmd = Command::new(python());
    cmd.arg(script("h2up_web_client.py"))
        .arg(port.to_string())
        .arg(path)
        .arg(payload)
        .arg(mode);
    if release {
        cmd.arg("release");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn unary_grpc_over_http11_with_chunked_trailers() {
    let server = GrpcServer::start();
    let gw = gateway(&server, "");
    let mut s = grpc_call(gw.port, "Unary", b"ping", "");
    let mut got = Vec::new();
    read_until(&mut s, &mut got, |_| false);
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(text.contains("content-type: application/grpc"), "{text}");
    // The message, then the trailer section with the gRPC status.
    assert!(contains(&got, &message(b"echo:ping")), "{text}");
    let tail = &text[text.find("\r\n0\r\n").expect("last chunk")..];
    assert!(tail.contains("grpc-status: 0\r\n"), "{text}");
    assert!(tail.contains("x-trailer: yes\r\n"), "{text}");
    assert!(tail.ends_with("\r\n\r\n"), "{text}");
}

#[test]
fn server_streaming_messages_arrive_one_by_one() {
    let server = GrpcServer::start();
    let gw = gateway(&server, "");
    let mut s = grpc_call(gw.port, "Stream", b"3", "");
    let mut got = Vec::new();
    // The first message arrives while the server holds the others back.
    read_until(&mut s, &mut got, |g| contains(g, b"message 0"));
    assert!(
        contains(&got, b"message 0"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(!contains(&got, b"message 1"));
    let mut r = grpc_call(gw.port, "Release", b"", "");
    let mut released = Vec::new();
    read_until(&mut r, &mut released, |_| false);
    assert!(contains(&released, b"released"));
    read_until(&mut s, &mut got, |_| false);
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(contains(&got, &message(b"message 1")), "{text}");
    assert!(contains(&got, &message(b"message 2")), "{text}");
    assert!(text.contains("grpc-status: 0\r\n"), "{text}");
}

#[test]
fn grpc_timeout_bounds_the_call_and_reaches_the_upstream() {
    let server = GrpcServer::start();
    let gw = gateway(&server, "");
    let started = Instant::now();
    let mut s = grpc_call(gw.port, "Sleep", b"", "grpc-timeout: 400m\r\n");
    let mut got = Vec::new();
    read_until(&mut s, &mut got, |_| false);
    let text = String::from_utf8_lossy(&got).into_owned();
    // Well before the server's 3 s: the gateway's 504, or the upstream's
    // own DEADLINE_EXCEEDED (4), whichever came first.
    assert!(started.elapsed() < Duration::from_secs(2), "{text}");
    assert!(
        text.starts_with("HTTP/1.1 504") || text.contains("grpc-status: 4"),
        "{text}"
    );
    // The deadline went upstream, reduced by the time spent (ms left).
    let mut s = grpc_call(gw.port, "LastDeadline", b"", "");
    let mut got = Vec::new();
    read_until(&mut s, &mut got, |_| false);
    let text = String::from_utf8_lossy(&got).into_owned();
    // The message after its frame header (flag 0 and a length below 256).
    let at = find(&got, b"\0\0\0\0").unwrap_or_else(|| panic!("{text}")) + 5;
    let ms: String = got[at..]
        .iter()
        .map(|&b| b as char)
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let ms: u64 = ms.parse().unwrap_or_else(|_| panic!("{text}"));
    assert!(ms > 100 && ms <= 400, "{ms} ms left upstream: {text}");
}

#[test]
fn a_deadline_passing_mid_stream_ends_it_with_deadline_exceeded() {
    let server = GrpcServer::start();
    let gw = gateway(&server, "");
    // The server sends one message, then waits (for a release that never
    // comes) past the call's deadline.
    let mut s = grpc_call(gw.port, "Stream", b"3", "grpc-timeout: 500m\r\n");
    let mut got = Vec::new();
    read_until(&mut s, &mut got, |_| false);
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(contains(&got, &message(b"message 0")), "{text}");
    let tail = &text[text.find("\r\n0\r\n").expect("the body ended")..];
    assert!(tail.contains("grpc-status: 4\r\n"), "{text}");
    // Let the server's handler go.
    let mut r = grpc_call(gw.port, "Release", b"", "");
    read_until(&mut r, &mut Vec::new(), |_| false);
}

#[test]
fn grpc_web_unary_binary_and_text() {
    let server = GrpcServer::start();
    let gw = gateway(&server, "");
    for mode in ["binary", "text"] {
        let out = web_call(gw.port, "/test.Echo/Unary", "hello web", mode, false);
        assert_eq!(out["status"], 200, "{out}");
        let ct = if mode == "text" {
            "application/grpc-web-text+proto"
        } else {
            "application/grpc-web+proto"
        };
        assert_eq!(out["content_type"], ct, "{out}");
        assert_eq!(
            out["messages"],
            serde_json::json!(["echo:hello web"]),
            "{out}"
        );
        assert_eq!(out["trailers"]["grpc-status"], "0", "{out}");
        assert_eq!(out["trailers"]["x-trailer"], "yes", "{out}");
        assert_eq!(out["leftover"], 0, "{out}");
    }
}

#[test]
fn grpc_web_server_streaming_and_trailers_only_errors() {
    let server = GrpcServer::start();
    let gw = gateway(&server, "");
    for mode in ["binary", "text"] {
        let out = web_call(gw.port, "/test.Echo/Stream", "4", mode, true);
        assert_eq!(out["status"], 200, "{out}");
        // The first message was read before the server was let go on.
        assert_eq!(out["seen_at_first"], 1, "{out}");
        assert_eq!(
            out["messages"],
            serde_json::json!(["message 0", "message 1", "message 2", "message 3"]),
            "{out}"
        );
        assert_eq!(out["trailers"]["grpc-status"], "0", "{out}");
        // A trailers-only answer: the status is in the headers.
        let out = web_call(gw.port, "/test.Echo/Fail", "", mode, false);
        assert_eq!(out["status"], 200, "{out}");
        let status = out["header_status"]
            .as_str()
            .or(out["trailers"]["grpc-status"].as_str());
        assert_eq!(status, Some("5"), "{out}");
        assert_eq!(out["messages"], serde_json::json!([]), "{out}");
    }
}

#[test]
fn grpc_web_cors_preflight_is_answered_by_the_route() {
    let server = GrpcServer::start();
    let routes = "        Route(name: \"web\", match: Match(path_prefix: \"/\"), upstream: \"grpc\", cors: Some(Cors(allow_origins: [\"https://app.test\"], allow_methods: [\"POST\"], allow_headers: [\"content-type\", \"x-grpc-web\", \"x-user-agent\"], expose_headers: [\"grpc-status\", \"grpc-message\"]))),\n";
    let gw = gateway(&server, routes);
    let r = request(
        gw.port,
        "OPTIONS",
        "/test.Echo/Unary",
        &[
            ("origin", "https://app.test"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type,x-grpc-web"),
        ],
        b"",
    );
    assert!(
        r.status == 204 || r.status == 200,
        "{} {}",
        r.status,
        r.text()
    );
    let allow = r
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("access-control-allow-origin"))
        .map(|(_, v)| v.clone());
    assert_eq!(allow.as_deref(), Some("https://app.test"));
    // And the call itself carries the CORS answer fields.
    let out = web_call(gw.port, "/test.Echo/Unary", "x", "binary", false);
    assert_eq!(out["trailers"]["grpc-status"], "0", "{out}");
}

#[test]
fn grpc_web_text_is_retried_on_another_target_with_its_body() {
    let server = GrpcServer::start();
    // The first target refuses connections; retries go to the second
    // with the body read ahead (decoded from base64 each time).
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = free.local_addr().unwrap().to_string();
    drop(free);
    let live = format!("127.0.0.1:{}", server.port);
    let gw = Gateway::start(&config(
        1,
        &upstream("grpc", &[&down, &live], "protocol: Http2"),
        "        Route(name: \"web\", match: Match(path_prefix: \"/\"), upstream: \"grpc\", retry_non_idempotent: true, retry: Some(Retry(max_attempts: 2, backoff_base_ms: 1, backoff_max_ms: 2))),\n",
    ));
    for i in 0..4 {
        let payload = format!("try {i}");
        let out = web_call(gw.port, "/test.Echo/Unary", &payload, "text", false);
        assert_eq!(out["status"], 200, "{out}");
        assert_eq!(
            out["messages"],
            serde_json::json!([format!("echo:{payload}")]),
            "{out}"
        );
        assert_eq!(out["trailers"]["grpc-status"], "0", "{out}");
    }
}
