//! gRPC through the gateway, HTTP/2 on both sides: a real gRPC client and
//! server (Python grpcio, installed by scripts/test.sh) in all four call
//! shapes, with trailers, statuses, metadata and deadlines intact.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn script(name: &str) -> String {
    format!("{}/tests/grpc/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn python() -> String {
    python_with("grpc")
}

/// The echo server (test.Echo), killed on drop.
struct EchoServer {
    child: Child,
    port: u16,
}

impl EchoServer {
    fn start() -> EchoServer {
        let mut child = Command::new(python())
            .arg(script("proxy_echo_server.py"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the gRPC echo server");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let port = line.trim().parse().expect("the echo server's port");
        EchoServer { child, port }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gateway(upstream_port: u16) -> Gateway {
    Gateway::start(&format!(
        r#"Gateway(
    shards: Count(2),
    listeners: [Listener(name: "public", bind: "127.0.0.1:$PORT", http2: true)],
    upstreams: {{
        "echo": Upstream(targets: ["127.0.0.1:{upstream_port}"], protocol: Http2, timeout_ms: 10000),
    }},
    routes: [
        Route(name: "echo", match: Match(path_prefix: "/test.Echo/"), upstream: "echo"),
    ],
)"#
    ))
}

/// Runs one client case against the gateway and returns what it printed.
fn call(gw: &Gateway, case: &str) -> serde_json::Value {
    let out = Command::new(python())
        .arg(script("proxy_echo_client.py"))
        .arg(format!("127.0.0.1:{}", gw.port))
        .arg(case)
        .output()
        .expect("run the gRPC client");
    assert!(
        out.status.success(),
        "client case {case} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the client's JSON line")
}

#[test]
fn unary_calls_keep_metadata_trailers_and_statuses() {
    let server = EchoServer::start();
    let gw = gateway(server.port);
    let v = call(&gw, "unary");
    assert_eq!(v["code"], "OK", "{v}");
    assert_eq!(v["reply"], "echo:hello|deadline=none|tag=t1", "{v}");
    assert_eq!(v["trailers"]["x-shape"], "unary", "{v}");
    let v = call(&gw, "unary-fail");
    assert_eq!(v["code"], "NOT_FOUND", "{v}");
    assert_eq!(v["details"], "no such thing", "{v}");
}

#[test]
fn server_streaming_flows_message_by_message() {
    let server = EchoServer::start();
    let gw = gateway(server.port);
    let v = call(&gw, "server");
    assert_eq!(v["code"], "OK", "{v}");
    let msgs: Vec<&str> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(msgs, (0..10).map(|i| format!("msg{i}")).collect::<Vec<_>>());
    assert_eq!(v["trailers"]["x-shape"], "server", "{v}");
    // The server spaces its 10 messages 50 ms apart: the first must arrive
    // long before the last is sent.
    let first = v["first_at"].as_f64().unwrap();
    let total = v["total"].as_f64().unwrap();
    assert!(
        first < total / 2.0,
        "first message at {first} s of {total} s"
    );
}

#[test]
fn client_streaming_carries_a_large_stream() {
    let server = EchoServer::start();
    let gw = gateway(server.port);
    let v = call(&gw, "client");
    assert_eq!(v["code"], "OK", "{v}");
    assert_eq!(v["reply_len"], 100_004, "{v}");
    assert_eq!(v["reply_head"], "a+b+cc", "{v}");
    assert_eq!(v["trailers"]["x-shape"], "client", "{v}");
}

#[test]
fn bidirectional_streaming_is_full_duplex() {
    let server = EchoServer::start();
    let gw = gateway(server.port);
    // Each message goes out only after the previous answer came back.
    let v = call(&gw, "bidi");
    assert_eq!(v["code"], "OK", "{v}");
    assert_eq!(
        v["messages"],
        serde_json::json!(["re:m0", "re:m1", "re:m2", "re:m3", "re:m4"]),
        "{v}"
    );
    assert_eq!(v["trailers"]["x-shape"], "bidi", "{v}");
}

#[test]
fn deadlines_reach_the_upstream_and_end_the_call() {
    let server = EchoServer::start();
    let gw = gateway(server.port);
    // The client's 30 s deadline arrives as a grpc-timeout no longer than it.
    let v = call(&gw, "unary-deadline");
    assert_eq!(v["code"], "OK", "{v}");
    let reply = v["reply"].as_str().unwrap();
    let seen: f64 = reply
        .split("deadline=")
        .nth(1)
        .and_then(|r| r.split('|').next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no deadline in {reply}"));
    assert!(
        seen > 20.0 && seen <= 30.5,
        "upstream saw a deadline of {seen} s"
    );
    // A 1 s deadline on a 3 s call ends it at about 1 s.
    let started = Instant::now();
    let v = call(&gw, "unary-slow");
    assert_eq!(v["code"], "DEADLINE_EXCEEDED", "{v}");
    assert!(v["took"].as_f64().unwrap() < 2.5, "{v}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn an_unreachable_upstream_is_unavailable() {
    let port = closed_port();
    let gw = gateway(port);
    let v = call(&gw, "unary-fail");
    assert_eq!(v["code"], "UNAVAILABLE", "{v}");
}
