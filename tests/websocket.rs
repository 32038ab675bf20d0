//! WebSocket (and other upgrades) through the real gateway: a real
//! WebSocket echo server and a real client (Python `websockets`, installed
//! by scripts/test.sh), plus raw handshakes checked byte by byte: echo of a
//! 1 MiB message, ping/pong, the idle timeout, an upstream refusal passed
//! through, authentication before the upgrade, the per-route tunnel bound,
//! the rate limit counted once per upgrade, a route without `websocket`,
//! and the access log's line for a tunnel.

mod common;
mod pki;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn script(name: &str) -> String {
    format!("{}/tests/websocket/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A Python interpreter that has the `websockets` package: `python3` on the
/// path, or the system's (where Debian's python3-websockets installs it).
fn python() -> String {
    for py in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(py)
            .args(["-c", "import websockets"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return py.to_string();
        }
    }
    panic!(
        "no python3 with the `websockets` package (scripts/test.sh installs python3-websockets)"
    );
}

/// The echo server, with the handshake lines it printed.
struct EchoServer {
    child: Child,
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl EchoServer {
    fn start() -> EchoServer {
        let mut child = Command::new(python())
            .arg(script("echo_server.py"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the echo server");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let port = line.trim().parse().expect("the echo server's port");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        EchoServer { child, port, seen }
    }

    fn handshakes(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the Python client to its end; its one result line.
fn client(port: u16, path: &str, mode: &str, headers: &[&str]) -> String {
    client_at(&format!("ws://127.0.0.1:{port}{path}"), None, mode, headers)
}

/// Runs the Python client on `url` (trusting the CA file `ca` for `wss://`).
fn client_at(url: &str, ca: Option<&std::path::Path>, mode: &str, headers: &[&str]) -> String {
    let mut cmd = Command::new(python());
    if let Some(ca) = ca {
        cmd.env("WS_CA", ca);
    }
    let path = url;
    let out = cmd
        .arg(script("client.py"))
        .arg(url)
        .arg(mode)
        .args(headers)
        .output()
        .expect("run the client");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "client {path} {mode} failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A client that keeps its tunnel open until [`Holder::release`].
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
}

impl Holder {
    /// Connects; the first line (`OPEN` or `STATUS <code>`).
    fn open(port: u16, path: &str) -> (Holder, String) {
        let mut child = Command::new(python())
            .arg(script("client.py"))
            .arg(format!("ws://127.0.0.1:{port}{path}"))
            .arg("hold")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run the client");
        let stdin = child.stdin.take();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        (Holder { child, stdin, out }, line.trim().to_string())
    }

    /// Lets the client send one more message and close; its last line.
    fn release(mut self) -> String {
        drop(self.stdin.take());
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let _ = self.child.wait();
        line.trim().to_string()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const KEY: &str = "chat-secret-1";

fn gateway(ws: &EchoServer, plain: &Backend, log: &std::path::Path) -> Gateway {
    let hash = shardgate::auth::hash_api_key(KEY);
    Gateway::start(&format!(
        r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    admin: Some(Admin(bind: "127.0.0.1:$PORT2")),
    limits_http: {LIMITS},
    shutdown_grace_ms: 2000,
    upstreams: {{
        "ws": Upstream(targets: ["127.0.0.1:{ws}"]),
        "plain": Upstream(targets: ["{plain}"]),
    }},
    authenticators: {{
        "keys": ApiKey(header: "X-Api-Key", consumers: {{ "chat-app": "{hash}" }}, forward_as: "X-Consumer"),
    }},
    rate_limits: {{
        "three": RateLimit(key: ClientIp, algorithm: SlidingLog(limit: 3, window_s: 3600)),
    }},
    routes: [
        Route(name: "echo", match: Match(path_prefix: "/echo"), upstream: "ws",
              websocket: Some(WebSocket(idle_timeout_ms: 800))),
        Route(name: "refuse", match: Match(path_prefix: "/refuse"), upstream: "ws",
              websocket: Some(WebSocket())),
        Route(name: "private", match: Match(path_prefix: "/private"), upstream: "ws",
              auth: Required(["keys"]), websocket: Some(WebSocket())),
        Route(name: "pair", match: Match(path_prefix: "/pair"), upstream: "ws",
              websocket: Some(WebSocket(max_tunnels: 2))),
        Route(name: "limited", match: Match(path_prefix: "/limited"), upstream: "ws",
              rate_limits: ["three"], websocket: Some(WebSocket())),
        Route(name: "plain", match: Match(path_prefix: "/plain"), upstream: "plain"),
    ],
    access_log: Some(AccessLog(path: "{log}")),
)"#,
        ws = ws.port,
        plain = plain.addr(),
        log = log.display(),
    ))
}

struct Setup {
    plain: Backend,
    ws: EchoServer,
    gw: Gateway,
    log: std::path::PathBuf,
}

fn setup() -> Setup {
    let ws = EchoServer::start();
    let plain = Backend::echo("plain");
    let log = temp_dir().join("access.log");
    let gw = gateway(&ws, &plain, &log);
    Setup { plain, ws, gw, log }
}

/// A raw upgrade request for `path` with `extra` header lines.
fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: chat.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Reads a response head from a raw stream (lower-cased field names).
fn read_head(s: &mut TcpStream) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).unwrap();
        assert_eq!(
            n,
            1,
            "closed inside the head: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let text = String::from_utf8(buf.clone()).unwrap();
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let fields = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, fields, buf)
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A masked client text frame.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[test]
fn raw_handshake_passes_the_upgrade_fields_and_tunnels_frames() {
    let s = setup();
    let mut c = TcpStream::connect(("127.0.0.1", s.gw.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The first frame travels in the same write as the handshake.
    let mut first = upgrade_request("/echo/raw", "").into_bytes();
    first.extend_from_slice(&text_frame(b"early frame"));
    c.write_all(&first).unwrap();
    let (status, fields, raw) = read_head(&mut c);
    assert_eq!(status, 101, "{}", String::from_utf8_lossy(&raw));
    assert_eq!(
        field(&fields, "upgrade")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("websocket")
    );
    assert_eq!(
        field(&fields, "connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("upgrade")
    );
    // RFC 6455's own example key and answer: the upstream computed it from
    // the key the gateway passed on.
    assert_eq!(
        field(&fields, "sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert!(field(&fields, "x-request-id").is_some());
    assert!(field(&fields, "content-length").is_none());
    assert!(field(&fields, "transfer-encoding").is_none());
    let mut echo = [0u8; 13];
    c.read_exact(&mut echo).unwrap();
    assert_eq!(&echo[..2], &[0x81, 11]);
    assert_eq!(&echo[2..], b"early frame");
    c.write_all(&text_frame(b"second")).unwrap();
    let mut echo = [0u8; 8];
    c.read_exact(&mut echo).unwrap();
    assert_eq!(&echo[2..], b"second");
    // A close frame: the server answers it and closes; the gateway passes
    // the close on and ends the client connection.
    c.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]).unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(
        rest.starts_with(&[0x88]),
        "close frame expected, got {rest:?}"
    );
}

#[test]
fn real_client_echoes_a_large_message_and_gets_its_pong() {
    let s = setup();
    assert_eq!(client(s.gw.port, "/echo/big", "echo", &[]), "OK");
    // The tunnel's access-log line: status 101, the route, its bytes.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&s.log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("/echo/big")) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["status"], 101, "{line}");
            assert_eq!(v["route"], "echo", "{line}");
            let out = v["bytes_out"].as_u64().unwrap_or(0);
            assert!(out > 1 << 20, "bytes_out counts the tunnel: {line}");
            break;
        }
        assert!(Instant::now() < deadline, "no access-log line: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_idle_tunnel_is_closed() {
    let s = setup();
    let line = client(s.gw.port, "/echo/idle", "idle", &[]);
    let secs: f64 = line
        .strip_prefix("CLOSED ")
        .unwrap_or_else(|| panic!("expected a close, got {line:?}"))
        .parse()
        .unwrap();
    // idle_timeout_ms is 800: closed by the gateway, not by the client's 20 s.
    assert!((0.5..10.0).contains(&secs), "closed after {secs} s");
}

#[test]
fn an_upstream_refusal_is_passed_through() {
    let s = setup();
    let mut c = Client::connect(s.gw.port);
    c.send(upgrade_request("/refuse/now", "").as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "{\"refused\":\"by the upstream\"}\n");
    // The client connection stays usable after a refusal.
    c.send(upgrade_request("/refuse/again", "").as_bytes());
    assert_eq!(c.read_response().status, 403);
    assert_eq!(
        client(s.gw.port, "/refuse/again", "echo", &[]),
        "STATUS 403"
    );
}

#[test]
fn authentication_comes_before_the_upgrade() {
    let s = setup();
    let mut c = Client::connect(s.gw.port);
    c.send(upgrade_request("/private/a", "").as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 401);
    assert_eq!(client(s.gw.port, "/private/b", "echo", &[]), "STATUS 401");
    assert!(
        !s.ws.handshakes().iter().any(|l| l.contains("/private")),
        "refused upgrades reached the upstream: {:?}",
        s.ws.handshakes()
    );
    let key = format!("X-Api-Key={KEY}");
    assert_eq!(client(s.gw.port, "/private/c", "echo", &[&key]), "OK");
    let seen = s.ws.handshakes();
    assert!(
        seen.iter().any(|l| l == "REQ /private/c chat-app"),
        "the caller's identity is forwarded with the upgrade: {seen:?}"
    );
}

#[test]
fn the_tunnel_bound_refuses_one_more_and_frees_on_close() {
    let s = setup();
    let (a, first) = Holder::open(s.gw.port, "/pair/1");
    let (b, second) = Holder::open(s.gw.port, "/pair/2");
    assert_eq!((first.as_str(), second.as_str()), ("OPEN", "OPEN"));
    let (_c, third) = Holder::open(s.gw.port, "/pair/3");
    assert_eq!(third, "STATUS 503");
    let metrics = get(s.gw.port2, "/metrics").text();
    assert!(
        metrics.contains("shardgate_websocket_tunnels{shard=\"0\"} 2\n"),
        "two tunnels open: {metrics}"
    );
    // Other routes are not affected by this route's bound.
    assert_eq!(client(s.gw.port, "/echo/other", "many", &[]), "OK");
    assert_eq!(a.release(), "OK");
    // The slot is given back when the tunnel closes.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (d, line) = Holder::open(s.gw.port, "/pair/4");
        if line == "OPEN" {
            assert_eq!(d.release(), "OK");
            break;
        }
        assert!(Instant::now() < deadline, "slot not freed: {line}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(b.release(), "OK");
    let metrics = get(s.gw.port2, "/metrics").text();
    assert!(
        metrics.contains("shardgate_websocket_tunnels_total{shard=\"0\"} 4\n"),
        "four tunnels opened (the refused one not counted): {metrics}"
    );
}

#[test]
fn the_rate_limit_counts_each_upgrade_once_and_not_its_messages() {
    let s = setup();
    // Three upgrades per hour; each tunnel carries 50 messages. (A sliding
    // log: a fixed window, aligned to the hour, could reset between the
    // third upgrade and the fourth.)
    for i in 0..3 {
        assert_eq!(
            client(s.gw.port, &format!("/limited/{i}"), "many", &[]),
            "OK"
        );
    }
    assert_eq!(client(s.gw.port, "/limited/4", "many", &[]), "STATUS 429");
}

#[test]
fn a_route_without_websocket_proxies_the_request_without_upgrade_fields() {
    let s = setup();
    let mut c = Client::connect(s.gw.port);
    c.send(upgrade_request("/plain/x", "").as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200);
    let got = s.plain.last();
    assert!(got.header("upgrade").is_none(), "Upgrade was forwarded");
    assert!(
        !got.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
        "Connection: upgrade was forwarded"
    );
    // End-to-end fields still pass.
    assert!(got.header("sec-websocket-key").is_some());
    // The connection stays usable for plain HTTP.
    c.send(b"GET /plain/y HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn check_reports_bad_websocket_settings_with_their_position() {
    let text = r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "main", bind: "127.0.0.1:8080")],
    upstreams: { "ws": Upstream(targets: ["127.0.0.1:9005"]) },
    routes: [
        Route(name: "chat", match: Match(path_prefix: "/chat"), upstream: "ws",
              websocket: Some(WebSocket(max_tunnels: 0, upgrades: ["web socket"]))),
    ],
)
"#;
    let path = temp_dir().join("bad.ron");
    std::fs::write(&path, text).unwrap();
    let file = path.display().to_string();
    let (status, _stdout, stderr) = run_cli(&["check", &file]);
    assert_eq!(status.code(), Some(2), "exit code; stderr: {stderr}");
    let line = text[..text.find("websocket:").unwrap()]
        .matches('\n')
        .count()
        + 1;
    for (field, says) in [
        ("routes[0].websocket", "max_tunnels"),
        ("routes[0].websocket.upgrades", "protocol names"),
    ] {
        let prefix = format!("{file}:{line}:");
        assert!(
            stderr.lines().any(|l| l.starts_with(&prefix)
                && l.contains(&format!("{field}: "))
                && l.contains(says)),
            "no {field} problem at line {line}: {stderr}"
        );
    }
}

/// An upstream that answers every request `101` naming `h2c`.
fn rogue_gateway(rogue: &Backend) -> Gateway {
    Gateway::start(&format!(
        r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    limits_http: {LIMITS},
    shutdown_grace_ms: 1000,
    upstreams: {{ "rogue": Upstream(targets: ["{addr}"]) }},
    routes: [
        Route(name: "plain", match: Match(path_prefix: "/plain"), upstream: "rogue"),
        Route(name: "ws", match: Match(path_prefix: "/ws"), upstream: "rogue",
              websocket: Some(WebSocket())),
    ],
)"#,
        addr = rogue.addr()
    ))
}

#[test]
fn a_101_the_route_or_the_client_did_not_ask_for_is_a_502() {
    let rogue = Backend::start(|_| Response::ok("").status(101).header("Upgrade", "h2c"));
    let gw = rogue_gateway(&rogue);
    // No `websocket` on the route: the upgrade fields were removed, and a
    // 101 all the same is not passed on.
    let mut c = Client::connect(gw.port);
    c.send(upgrade_request("/plain/a", "").as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("not enabled"), "{}", r.text());
    assert!(rogue.last().header("upgrade").is_none());
    // `websocket` on the route, but the upstream switched to another protocol.
    let mut c = Client::connect(gw.port);
    c.send(upgrade_request("/ws/b", "").as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("did not ask for"), "{}", r.text());
    assert_eq!(rogue.last().header("upgrade"), Some("websocket"));
}

#[test]
fn shutdown_closes_open_tunnels_within_the_grace() {
    let s = setup();
    let (_held, line) = Holder::open(s.gw.port, "/echo/held");
    assert_eq!(line, "OPEN");
    let mut gw = s.gw;
    gw.send_signal("TERM");
    // shutdown_grace_ms is 2000: a tunnel is kept until then, not longer.
    assert!(
        gw.wait_exit(Duration::from_secs(8)).is_some(),
        "the gateway did not exit with a tunnel open"
    );
}

#[test]
fn websocket_works_on_a_tls_listener() {
    let ws = EchoServer::start();
    let ca = pki::Ca::new("WebSocket test CA");
    let dir = temp_dir();
    let (cert, key) = ca.leaf("gateway", &["localhost"]).write(&dir, "gw");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let gw = Gateway::start(&format!(
        r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "tls", bind: "127.0.0.1:$PORT",
                         tls: Some(Tls(cert: {cert:?}, key: {key:?})))],
    limits_http: {LIMITS},
    upstreams: {{ "ws": Upstream(targets: ["127.0.0.1:{port}"]) }},
    routes: [
        Route(name: "echo", match: Match(path_prefix: "/echo"), upstream: "ws",
              websocket: Some(WebSocket(idle_timeout_ms: 5000))),
    ],
)"#,
        port = ws.port,
    ));
    let url = format!("wss://localhost:{}/echo/tls", gw.port);
    // A 1 MiB message and a ping, encrypted both ways through the tunnel.
    assert_eq!(client_at(&url, Some(&ca_file), "echo", &[]), "OK");
    assert_eq!(client_at(&url, Some(&ca_file), "many", &[]), "OK");
}
