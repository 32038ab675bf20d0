//! `protocol: Http2` upstreams through the real binary: HTTP/1.1 clients
//! on one side, a real HTTP/2 server (h2c, or h2 over TLS by ALPN) on the
//! other, built on the gateway library's own h2 server.

mod common;
mod pki;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, HeaderValue, Request, Response};
use pki::*;
use shardgate::h2::{serve_h2c, H2Limits, RecvBody, Responder, Shutdown};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

struct H2Server {
    addr: SocketAddr,
    /// Connections accepted.
    accepted: Arc<AtomicUsize>,
    /// Paths requested, in order.
    paths: Arc<Mutex<Vec<String>>>,
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// The handler: `/big` answers 2 MiB (+ trailer), `/echo` streams the body
/// back with what it saw as headers and the request's trailers (or
/// `x-bytes`), `/slow` answers after 3 s, `/len` answers with a length.
async fn handle(
    req: Request<RecvBody>,
    res: Responder,
    paths: Arc<Mutex<Vec<String>>>,
    shutdown: Rc<Shutdown>,
) {
    let (head, mut body) = req.into_parts();
    if head.uri.path() == "/goaway" {
        // GOAWAY: the connection ends after this answer.
        shutdown.fire();
    }
    paths.lock().unwrap().push(head.uri.path().to_string());
    let seen = |name: &str| {
        head.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("?").to_string())
            .unwrap_or_else(|| "-".into())
    };
    let reply = Response::builder()
        .status(200)
        .header(
            "x-seen-authority",
            head.uri.authority().map_or("-", |a| a.as_str()),
        )
        .header("x-seen-xff", seen("x-forwarded-for"))
        .header("x-seen-te", seen("te"))
        .header("x-seen-method", head.method.as_str());
    match head.uri.path() {
        "/big" => {
            let mut send = res
                .send_head(reply.body(()).unwrap(), false)
                .unwrap()
                .unwrap();
            for piece in pattern(2 * 1024 * 1024).chunks(60_000) {
                if send.send(Bytes::copy_from_slice(piece)).await.is_err() {
                    return;
                }
            }
            let mut t = HeaderMap::new();
            t.insert("x-done", HeaderValue::from_static("yes"));
            let _ = send.trailers(t);
        }
        "/len" => {
            let head = reply.header("content-length", "5").body(()).unwrap();
            let _ = res
                .send_full(head, Bytes::from_static(b"hello"), None)
                .await;
        }
        "/slow" => {
            monoio::time::sleep(Duration::from_secs(3)).await;
            let _ = res
                .send_full(reply.body(()).unwrap(), Bytes::from_static(b"late"), None)
                .await;
        }
        "/grpc-reset" => {
            // A gRPC answer whose stream fails after one message.
            let head = reply
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            let mut send = res.send_head(head, false).unwrap().unwrap();
            let _ = send.send(Bytes::from_static(b"\0\0\0\0\x02hi")).await;
            monoio::time::sleep(Duration::from_millis(100)).await;
            send.reset(h2::Reason::INTERNAL_ERROR);
        }
        "/healthz" => {
            let _ = res.send_head(reply.body(()).unwrap(), true);
        }
        "/stream-echo" => {
            // Answers as it reads.
            let mut send = res
                .send_head(reply.body(()).unwrap(), false)
                .unwrap()
                .unwrap();
            while let Some(Ok(chunk)) = body.chunk().await {
                if send.send(chunk).await.is_err() {
                    return;
                }
            }
            let _ = send.finish();
        }
        _ => {
            // Reads the whole body, then sends it back.
            let mut got = Vec::new();
            while let Some(Ok(chunk)) = body.chunk().await {
                got.extend_from_slice(&chunk);
            }
            let n = got.len();
            let mut send = res
                .send_head(reply.body(()).unwrap(), false)
                .unwrap()
                .unwrap();
            for piece in got.chunks(100_000) {
                if send.send(Bytes::copy_from_slice(piece)).await.is_err() {
                    return;
                }
            }
            let trailers = match body.trailers().await {
                Ok(Some(t)) => t,
                _ => {
                    let mut t = HeaderMap::new();
                    t.insert("x-bytes", HeaderValue::from(n));
                    t
                }
            };
            let _ = send.trailers(trailers);
        }
    }
}

/// Starts the h2 server on its own monoio thread; with `tls`, h2 over TLS
/// (ALPN list `alpn`).
fn start_server(tls: Option<(Leaf, Vec<Vec<u8>>)>) -> H2Server {
    start_server_at("127.0.0.1:0", tls)
}

/// As `start_server`, on `bind`.
fn start_server_at(bind: &str, tls: Option<(Leaf, Vec<Vec<u8>>)>) -> H2Server {
    let bind = bind.to_string();
    let (tx, rx) = mpsc::channel();
    let accepted = Arc::new(AtomicUsize::new(0));
    let paths = Arc::new(Mutex::new(Vec::new()));
    let (acc, seen) = (accepted.clone(), paths.clone());
    let config = tls.map(|(leaf, alpn)| {
        use rustls::pki_types::pem::PemObject;
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der.clone()], key)
            .unwrap();
        c.alpn_protocols = alpn;
        Arc::new(c)
    });
    std::thread::spawn(move || {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(async move {
                let listener = monoio::net::TcpListener::bind(bind.as_str()).unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let limits = Rc::new(H2Limits::default());
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    acc.fetch_add(1, Ordering::SeqCst);
                    let (limits, seen, config) = (limits.clone(), seen.clone(), config.clone());
                    monoio::spawn(async move {
                        let shutdown = Shutdown::new();
                        let sd = shutdown.clone();
                        let handler =
                            Rc::new(move |req, res| handle(req, res, seen.clone(), sd.clone()));
                        match config {
                            None => {
                                let _ = serve_h2c(stream, Bytes::new(), &limits, shutdown, handler)
                                    .await;
                            }
                            Some(config) => {
                                let session = rustls::ServerConnection::new(config).unwrap();
                                let mut s = shardgate::tls::TlsStream::new(stream, session);
                                if s.handshake().await.is_err() {
                                    return;
                                }
                                let s = shardgate::tls::Stream::Tls(Box::new(s));
                                let _ =
                                    serve_h2c(s, Bytes::new(), &limits, shutdown, handler).await;
                            }
                        }
                    });
                }
            })
    });
    let addr = rx.recv().unwrap();
    H2Server {
        addr,
        accepted,
        paths,
    }
}

fn h2_gateway(target: &str, extra: &str) -> Gateway {
    let extra = if extra.is_empty() {
        "protocol: Http2".to_string()
    } else {
        format!("protocol: Http2, {extra}")
    };
    // Request bodies up to 16 MiB (the shared test limits say 1 MiB).
    let text = config(1, &upstream("h2", &[target], &extra), &catch_all("h2"))
        .replace("max_body_bytes: 1048576", "max_body_bytes: 16777216")
        .replace(
            "    upstreams:",
            "    admin: Some(Admin(bind: \"127.0.0.1:$PORT2\")),\n    upstreams:",
        );
    Gateway::start(&text)
}

/// `shardgate_upstream_connections_total` of upstream `h2` for `kind`.
fn connections(metrics: &str, target: SocketAddr, kind: &str) -> u64 {
    let name = format!(
        "shardgate_upstream_connections_total{{upstream=\"h2\",target=\"{target}\",kind=\"{kind}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {metrics}"))
}

fn header<'a>(r: &'a Resp, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Sends `raw` and reads the whole response up to the end of a chunked
/// body (its `0\r\n...\r\n\r\n`), returning the raw bytes.
fn raw_exchange(port: u16, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n0\r\n") {
            if text[end + 5..].contains("\r\n\r\n") || text[end + 5..].starts_with("\r\n") {
                break;
            }
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn get_and_post_large_bodies_over_h2c() {
    let server = start_server(None);
    let gw = h2_gateway(&server.addr.to_string(), "");
    let mut c = Client::connect(gw.port);
    // A 2 MiB answer: more than the stream and connection windows.
    let r = c.request("GET", "/big", &[("host", "api.test")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_len, 2 * 1024 * 1024);
    assert_eq!(r.checksum, checksum(&pattern(2 * 1024 * 1024)));
    assert_eq!(header(&r, "transfer-encoding"), Some("chunked"));
    assert_eq!(header(&r, "x-seen-authority"), Some("api.test"));
    assert_eq!(header(&r, "x-seen-xff"), Some("127.0.0.1"));
    assert!(header(&r, "x-request-id").is_some());
    // A 3 MiB request body streamed up (Content-Length) and echoed back.
    let body = pattern(3 * 1024 * 1024 + 7);
    let r = c.request("POST", "/echo", &[], &body);
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "x-seen-method"), Some("POST"));
    assert_eq!(r.body_len, body.len() as u64);
    assert_eq!(r.checksum, checksum(&body));
    // A chunked request body.
    let mut raw = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in body.chunks(100_000).take(12) {
        raw.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        raw.extend_from_slice(piece);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    c.send(&raw);
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_len, 1_200_000);
    // An upstream that answers as it reads (its answer taken in while the
    // request body still goes up).
    let body = pattern(700 * 1024);
    let r = c.request("POST", "/stream-echo", &[], &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.checksum, checksum(&body));
    // An answer with a length keeps it.
    let r = c.get("/len");
    assert_eq!(r.body, b"hello");
    assert_eq!(header(&r, "content-length"), Some("5"));
    // All of it on one upstream connection.
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn an_upstream_answering_as_it_reads_streams_both_ways_at_once() {
    let server = start_server(None);
    let gw = h2_gateway(&server.addr.to_string(), "");
    // 6 MiB echoed as it is read: far beyond the windows and the socket
    // buffers, so the answer must flow while the body still goes up.
    let body = pattern(6 * 1024 * 1024);
    let s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let up = body.clone();
    let writer = std::thread::spawn(move || {
        let head = format!(
            "POST /stream-echo HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            up.len()
        );
        w.write_all(head.as_bytes()).unwrap();
        for piece in up.chunks(64 * 1024) {
            w.write_all(piece).unwrap();
        }
    });
    let mut c = Conn::new(s);
    let raw = c.read_head(64 * 1024).unwrap().unwrap();
    let head = String::from_utf8_lossy(&raw).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut sum = Checksum::new();
    c.read_chunked_to(&mut |b| sum.update(b)).unwrap();
    writer.join().unwrap();
    assert_eq!(sum.len(), body.len() as u64);
    assert_eq!(sum.finish(), checksum(&body));
    // The connection goes on with the next request.
    c.stream
        .write_all(b"GET /len HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let raw = c.read_head(64 * 1024).unwrap().unwrap();
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"));
}

#[test]
fn a_connection_closed_by_the_upstream_is_replaced() {
    let server = start_server(None);
    let gw = h2_gateway(&server.addr.to_string(), "");
    let mut c = Client::connect(gw.port);
    assert_eq!(c.get("/len").status, 200);
    assert_eq!(c.get("/goaway").status, 200);
    for _ in 0..5 {
        let r = c.get("/len");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.body, b"hello");
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn an_idle_connection_is_let_go_after_the_idle_timeout() {
    let server = start_server(None);
    let gw = h2_gateway(&server.addr.to_string(), "idle_timeout_ms: 300");
    assert_eq!(get(gw.port, "/len").status, 200);
    assert_eq!(get(gw.port, "/len").status, 200);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(get(gw.port, "/len").status, 200);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn trailers_reach_an_http11_client_as_chunked_trailers() {
    let server = start_server(None);
    let gw = h2_gateway(&server.addr.to_string(), "");
    // Request trailers go up as HTTP/2 trailers and come back.
    let raw = "POST /echo HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\ngrpc-status: 7\r\nx-note: kept\r\n\r\n";
    let text = raw_exchange(gw.port, raw.as_bytes());
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\r\n5\r\nhello\r\n0\r\n"), "{text}");
    let tail = &text[text.find("\r\n0\r\n").unwrap()..];
    assert!(tail.contains("grpc-status: 7\r\n"), "{text}");
    assert!(tail.contains("x-note: kept\r\n"), "{text}");
    assert!(text.contains("x-seen-te: trailers"), "{text}");
    // A gRPC answer whose upstream stream fails still ends with a status.
    let text = raw_exchange(
        gw.port,
        b"POST /grpc-reset HTTP/1.1\r\nHost: a\r\ncontent-type: application/grpc\r\ncontent-length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(text.contains("\0\0\0\0\x02hi"), "{text}");
    let tail = &text[text.find("\r\n0\r\n").unwrap()..];
    assert!(tail.contains("grpc-status: 14\r\n"), "{text}");
    // Without request trailers, the upstream's own.
    let text = raw_exchange(
        gw.port,
        b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(text.contains("\r\n0\r\nx-bytes: 0\r\n\r\n"), "{text}");
}

#[test]
fn concurrent_requests_share_few_upstream_connections() {
    let server = start_server(None);
    let gw = h2_gateway(
        &server.addr.to_string(),
        "http2: Some(Http2Upstream(max_streams_per_connection: 100))",
    );
    let port = gw.port;
    let handles: Vec<_> = (0..32)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                for j in 0..4 {
                    let body = format!("request {i}/{j}").into_bytes();
                    let r = c.request("POST", "/echo", &[], &body);
                    assert_eq!(r.status, 200);
                    assert_eq!(r.body, body);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(server.paths.lock().unwrap().len(), 128);
    // 32 clients at once, multiplexed: at most the connection bound (4).
    let n = server.accepted.load(Ordering::SeqCst);
    assert!((1..=4).contains(&n), "{n} upstream connections");
    // The gateway's metrics say the same: n new, the rest reused.
    let m = get(gw.port2, "/metrics").text();
    assert_eq!(connections(&m, server.addr, "new"), n as u64, "{m}");
    assert_eq!(
        connections(&m, server.addr, "reused"),
        128 - n as u64,
        "{m}"
    );
}

#[test]
fn stream_limit_and_connection_bound_queue_then_answer_503() {
    let server = start_server(None);
    // One connection with one stream: a second request at once waits up
    // to the queue timeout for the stream, then is refused.
    let limits = "max_connections_per_target: Some(1), http2: Some(Http2Upstream(max_streams_per_connection: 1))";
    let gw = h2_gateway(
        &server.addr.to_string(),
        &format!("{limits}, queue_timeout_ms: Some(300)"),
    );
    let port = gw.port;
    let slow = std::thread::spawn(move || get(port, "/slow"));
    std::thread::sleep(Duration::from_millis(500));
    let r = get(gw.port, "/echo");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(slow.join().unwrap().status, 200);
    assert_eq!(get(gw.port, "/echo").status, 200);
    // With a longer queue timeout it gets the stream once the first ends.
    let gw = h2_gateway(
        &server.addr.to_string(),
        &format!("{limits}, queue_timeout_ms: Some(10000)"),
    );
    let port = gw.port;
    let slow = std::thread::spawn(move || get(port, "/slow"));
    std::thread::sleep(Duration::from_millis(500));
    let r = get(gw.port, "/len");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"hello");
    assert_eq!(slow.join().unwrap().status, 200);
}

#[test]
fn upstream_timeout_is_504_and_a_down_target_is_502() {
    let server = start_server(None);
    let gw = h2_gateway(&server.addr.to_string(), "timeout_ms: 500");
    let r = get(gw.port, "/slow");
    assert_eq!(r.status, 504, "{}", r.text());
    // Nothing listens there.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let down = h2_gateway(&addr, "");
    let r = get(down.port, "/x");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("connect"), "{}", r.text());
}

#[test]
fn h2_over_tls_upstream_with_alpn() {
    let ca = Ca::new("Upstream CA");
    let dir = temp_dir();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let ca_file = dir.join("ca.pem");
    let leaf = ca.leaf("up", &["localhost"]);
    let server = start_server(Some((leaf, vec![b"h2".to_vec()])));
    let tls = format!(
        "tls: Some(UpstreamTls(ca_file: Some({ca_file:?}), server_name: Some(\"localhost\")))"
    );
    // Health probes go over h2 with TLS too.
    let check = "health_check: Some(HealthCheck(path: \"/healthz\", interval_ms: 50, timeout_ms: 1000, healthy_threshold: 1, unhealthy_threshold: 1))";
    let gw = h2_gateway(&server.addr.to_string(), &format!("{tls}, {check}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server.paths.lock().unwrap().iter().any(|p| p == "/healthz") {
        assert!(
            std::time::Instant::now() < deadline,
            "no probe over h2 and TLS"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = Client::connect(gw.port);
    for _ in 0..3 {
        let r = c.request("POST", "/echo", &[], b"over tls");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.body, b"over tls");
    }
    let r = c.get("/big");
    assert_eq!(r.body_len, 2 * 1024 * 1024);
    // The requests shared one connection (probes open their own).
    let m = get(gw.port2, "/metrics").text();
    assert_eq!(connections(&m, server.addr, "new"), 1, "{m}");
    assert_eq!(connections(&m, server.addr, "reused"), 3, "{m}");
    // Servers that do not select h2 by ALPN (one refuses the offer, one
    // takes no ALPN at all): a clear 502.
    for alpn in [vec![b"http/1.1".to_vec()], vec![]] {
        let http1_only = start_server(Some((ca.leaf("up", &["localhost"]), alpn)));
        let gw = h2_gateway(&http1_only.addr.to_string(), &tls);
        let r = get(gw.port, "/echo");
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(r.text().contains("ALPN h2"), "{}", r.text());
    }
}

#[test]
fn health_checks_probe_over_h2() {
    // The target is down at first: marked unhealthy.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let gw = h2_gateway(
        &addr,
        "health_check: Some(HealthCheck(path: \"/healthz\", interval_ms: 50, timeout_ms: 500, healthy_threshold: 2, unhealthy_threshold: 1))",
    );
    let wait_for = |status: u16| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = get(gw.port, "/len");
            if r.status == status {
                return r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still {} {}",
                r.status,
                r.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let r = wait_for(503);
    assert!(r.text().contains("healthy"), "{}", r.text());
    // An HTTP/2-only server comes up there: the h2 probes pass and the
    // target is healthy again.
    let server = start_server_at(&addr, None);
    let r = wait_for(200);
    assert_eq!(r.body, b"hello");
    let probes = server
        .paths
        .lock()
        .unwrap()
        .iter()
        .filter(|p| *p == "/healthz")
        .count();
    assert!(probes >= 2, "{probes} probes over h2");
    let upstreams = get(gw.port2, "/upstreams").text();
    let v: serde_json::Value = serde_json::from_str(&upstreams).unwrap();
    assert_eq!(
        v["upstreams"][0]["targets"][0]["health"], "healthy",
        "{upstreams}"
    );
}

#[test]
fn http2_settings_are_checked() {
    let dir = temp_dir();
    let path = dir.join("bad.ron");
    let upstreams = upstream(
        "h2",
        &["127.0.0.1:1"],
        "protocol: Http2, http2: Some(Http2Upstream(max_streams_per_connection: 0))",
    ) + &upstream("h1", &["127.0.0.1:2"], "");
    let text = config(
        1,
        &upstreams,
        "        Route(name: \"r\", match: Match(path_prefix: \"/\"), upstream: \"h2\", compression: Some(Compression())),\n        Route(name: \"m\", match: Match(path_prefix: \"/m\"), upstream: \"h1\", mirror: Some(Mirror(upstream: \"h2\"))),\n",
    );
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("max_streams_per_connection must be 1 to 10000"),
        "{err}"
    );
    assert!(err.contains("compression"), "{err}");
    assert!(err.contains("routes[1].mirror"), "{err}");
    assert!(err.contains("speaks HTTP/1.1"), "{err}");
    assert!(err.contains("Http2"), "{err}");
}
