//! The HTTP/2 connection layer (src/h2/) over real loopback sockets: an h2c
//! echo server on monoio answered by the `h2` client pool, curl, nghttp and
//! h2load; limits and attacks written as raw frames on a `TcpStream`.
//!
//! The layer is not yet wired into the gateway's request pipeline, so these
//! tests call the library directly.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use monoio::io::AsyncReadRent;
use shardgate::h2::{serve_h2c, sniff, H2Limits, H2Pool, PoolLimits, Responder, Shutdown, Sniff};

/// Runs `f` on a fresh monoio runtime (io_uring, else epoll) with timers.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
        .block_on(f)
}

struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

/// The echo handler: answers 200 with the request body streamed back, then
/// the request's trailers (or `x-echo: done`). `/shutdown` fires the
/// connection's shutdown signal first.
async fn echo(
    req: Request<shardgate::h2::RecvBody>,
    res: Responder,
    calls: Arc<AtomicUsize>,
    shutdown: Rc<Shutdown>,
) {
    calls.fetch_add(1, Ordering::SeqCst);
    if req.uri().path() == "/panic" {
        panic!("echo handler asked to panic");
    }
    if req.uri().path() == "/shutdown" {
        shutdown.fire();
    }
    let (head, mut body) = req.into_parts();
    let mut reply = Response::builder().status(200);
    if let Some(ct) = head.headers.get("content-type") {
        reply = reply.header("content-type", ct);
    }
    let Ok(Some(mut send)) = res.send_head(reply.body(()).unwrap(), false) else {
        return;
    };
    while let Some(chunk) = body.chunk().await {
        let Ok(chunk) = chunk else { return };
        if send.send(chunk).await.is_err() {
            return;
        }
    }
    let trailers = match body.trailers().await {
        Ok(Some(t)) => t,
        _ => {
            let mut t = HeaderMap::new();
            t.insert("x-echo", HeaderValue::from_static("done"));
            t
        }
    };
    let _ = send.trailers(trailers);
}

/// Starts the h2c echo server on its own monoio thread: it reads the first
/// bytes, sniffs the preface, and serves h2 (anything else is closed).
fn start_server(limits: H2Limits) -> Server {
    let (tx, rx) = mpsc::channel();
    let accepted = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let (acc, cls) = (accepted.clone(), calls.clone());
    std::thread::spawn(move || {
        block_on(async move {
            let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let limits = Rc::new(limits);
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                let limits = limits.clone();
                let calls = cls.clone();
                monoio::spawn(async move {
                    let mut seen = Vec::new();
                    loop {
                        match sniff(&seen) {
                            Sniff::H2 => break,
                            Sniff::Http1 => return,
                            Sniff::NeedMore => {}
                        }
                        let buf = Vec::with_capacity(4096);
                        let (n, buf) = stream.read(buf).await;
                        match n {
                            Ok(0) | Err(_) => return,
                            Ok(_) => seen.extend_from_slice(&buf),
                        }
                    }
                    let shutdown = Shutdown::new();
                    let sd = shutdown.clone();
                    let handler =
                        Rc::new(move |req, res| echo(req, res, calls.clone(), sd.clone()));
                    let _ = serve_h2c(stream, Bytes::from(seen), &limits, shutdown, handler).await;
                });
            }
        })
    });
    let addr = rx.recv().unwrap();
    Server {
        addr,
        accepted,
        calls,
    }
}

fn post(addr: SocketAddr, path: &str) -> http::request::Builder {
    Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
}

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[test]
fn h2_client_echo_with_flow_control_and_trailers() {
    let server = start_server(H2Limits::default());
    let addr = server.addr;
    block_on(async move {
        let pool = H2Pool::new(PoolLimits::default());
        // Larger than the default 64 KiB window both ways.
        let body = pattern(300 * 1024);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let req = post(addr, "/echo").body(body.clone()).unwrap();
        let (head, got, got_trailers) =
            pool.send(addr, req, Some(trailers), 1 << 20).await.unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(got.len(), body.len());
        assert!(got == body, "echoed body differs");
        assert_eq!(got_trailers.unwrap().get("grpc-status").unwrap(), "0");

        // No request trailers: the server's own.
        let req = post(addr, "/echo").body(Bytes::from_static(b"hi")).unwrap();
        let (_, got, got_trailers) = pool.send(addr, req, None, 1024).await.unwrap();
        assert_eq!(&got[..], b"hi");
        assert_eq!(got_trailers.unwrap().get("x-echo").unwrap(), "done");
        assert_eq!(pool.opened(), 1);
    });
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(server.calls.load(Ordering::SeqCst), 2);
}

#[test]
fn many_concurrent_streams_share_one_connection() {
    let server = start_server(H2Limits::default());
    let addr = server.addr;
    block_on(async move {
        let pool = Rc::new(H2Pool::new(PoolLimits::default()));
        let mut tasks = Vec::new();
        for i in 0..64usize {
            let pool = pool.clone();
            tasks.push(monoio::spawn(async move {
                let body = pattern(1000 + i * 37);
                let req = post(addr, "/echo").body(body.clone()).unwrap();
                let (head, got, _) = pool.send(addr, req, None, 1 << 20).await.unwrap();
                assert_eq!(head.status, 200);
                assert!(got == body);
            }));
        }
        for t in tasks {
            t.await;
        }
        assert_eq!(pool.opened(), 1);
    });
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(server.calls.load(Ordering::SeqCst), 64);
}

#[test]
fn pool_opens_another_connection_at_the_stream_cap() {
    let server = start_server(H2Limits::default());
    let addr = server.addr;
    block_on(async move {
        let pool = H2Pool::new(PoolLimits {
            max_streams_per_connection: 2,
            max_connections_per_target: 2,
            ..PoolLimits::default()
        });
        // Streams held open (bodies not finished): 2 on the first connection,
        // the third opens a second.
        let head = || post(addr, "/echo").body(()).unwrap();
        let mut a = pool.start(addr, head(), false).await.unwrap();
        let mut b = pool.start(addr, head(), false).await.unwrap();
        assert_eq!(pool.connections(addr), 1);
        let mut c = pool.start(addr, head(), false).await.unwrap();
        assert_eq!(pool.connections(addr), 2);
        let mut d = pool.start(addr, head(), false).await.unwrap();
        assert_eq!(pool.connections(addr), 2);
        // Both connections full, no third connection allowed.
        assert!(matches!(
            pool.start(addr, head(), false).await,
            Err(shardgate::h2::pool::PoolError::Saturated)
        ));
        for call in [&mut a, &mut b, &mut c, &mut d] {
            let mut send = call.body.take().unwrap();
            send.send(Bytes::from_static(b"x")).await.unwrap();
            send.finish().unwrap();
        }
        for call in [a, b, c, d] {
            let (head, mut body) = call.response().await.unwrap();
            assert_eq!(head.status, 200);
            assert_eq!(&body.collect(16).await.unwrap()[..], b"x");
        }
        // All streams done: the next request reuses a connection.
        let req = post(addr, "/echo").body(Bytes::from_static(b"y")).unwrap();
        pool.send(addr, req, None, 16).await.unwrap();
        assert_eq!(pool.opened(), 2);
    });
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn graceful_goaway_on_shutdown_and_pool_drops_the_dead_connection() {
    let server = start_server(H2Limits::default());
    let addr = server.addr;
    block_on(async move {
        let pool = H2Pool::new(PoolLimits::default());
        // The stream that fires the shutdown still completes.
        let req = post(addr, "/shutdown")
            .body(Bytes::from_static(b"bye"))
            .unwrap();
        let (head, got, _) = pool.send(addr, req, None, 16).await.unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(&got[..], b"bye");
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.connections(addr) != 0 {
            assert!(
                Instant::now() < deadline,
                "connection not closed after GOAWAY"
            );
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        // A new request opens a new connection.
        let req = post(addr, "/echo")
            .body(Bytes::from_static(b"again"))
            .unwrap();
        let (_, got, _) = pool.send(addr, req, None, 16).await.unwrap();
        assert_eq!(&got[..], b"again");
        assert_eq!(pool.opened(), 2);
    });
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn a_panicking_handler_resets_only_its_stream() {
    let server = start_server(H2Limits::default());
    let addr = server.addr;
    block_on(async move {
        let pool = H2Pool::new(PoolLimits::default());
        let req = post(addr, "/panic").body(Bytes::new()).unwrap();
        assert!(pool.send(addr, req, None, 16).await.is_err());
        let req = post(addr, "/echo")
            .body(Bytes::from_static(b"still"))
            .unwrap();
        let (_, got, _) = pool.send(addr, req, None, 16).await.unwrap();
        assert_eq!(&got[..], b"still");
        assert_eq!(pool.opened(), 1);
    });
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn curl_with_prior_knowledge() {
    let server = start_server(H2Limits::default());
    let out = Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "--data-binary",
            "hello over h2c",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .arg(format!("http://{}/echo", server.addr))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "curl failed: {text} {:?}", out.stderr);
    assert_eq!(text, "hello over h2c\n2 200");
}

#[test]
fn nghttp_and_h2load() {
    let server = start_server(H2Limits::default());
    let out = Command::new("nghttp")
        .args(["-v", "-d", "/dev/stdin"])
        .arg(format!("http://{}/echo", server.addr))
        .stdin(std::fs::File::open("Cargo.toml").unwrap())
        .output()
        .expect("nghttp runs (Debian nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "nghttp failed: {text}");
    assert!(text.contains(":status: 200"), "{text}");
    assert!(text.contains("x-echo: done"), "no trailer: {text}");
    assert!(text.contains("[package]"), "no echoed body: {text}");

    let out = Command::new("h2load")
        .args(["-n", "2000", "-c", "2", "-m", "50"])
        .arg(format!("http://{}/echo", server.addr))
        .output()
        .expect("h2load runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2000 succeeded, 0 failed, 0 errored"),
        "h2load: {text}"
    );
    assert!(text.contains("status codes: 2000 2xx"), "h2load: {text}");
}

// ---------------------------------------------------------------------------
// Raw frames
// ---------------------------------------------------------------------------

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Reads one frame; `None` at EOF or when nothing comes for the timeout.
fn read_frame(s: &mut TcpStream) -> Option<Frame> {
    let mut head = [0u8; 9];
    match s.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return None,
        Err(_) => return None,
    }
    let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// A POST / for authority "a", HPACK without the dynamic table.
const REQUEST_BLOCK: &[u8] = &[0x83, 0x86, 0x84, 0x01, 0x01, b'a'];

/// Connects, sends the preface and SETTINGS, and acknowledges the server's.
fn raw_connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(shardgate::h2::PREFACE).unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
    loop {
        let f = read_frame(&mut s).expect("server SETTINGS");
        if f.kind == SETTINGS && f.flags & 1 == 0 {
            s.write_all(&frame(SETTINGS, 1, 0, &[])).unwrap();
            return s;
        }
    }
}

/// Frames until EOF or a quiet `wait`.
fn frames_until_quiet(s: &mut TcpStream, wait: Duration) -> Vec<Frame> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut out = Vec::new();
    while let Some(f) = read_frame(s) {
        out.push(f);
    }
    out
}

#[test]
fn streams_over_the_concurrency_limit_are_refused() {
    let server = start_server(H2Limits {
        max_concurrent_streams: 2,
        ..H2Limits::default()
    });
    let mut s = raw_connect(server.addr);
    // Three requests whose bodies never come: they stay open.
    for id in [1u32, 3, 5] {
        s.write_all(&frame(HEADERS, END_HEADERS, id, REQUEST_BLOCK))
            .unwrap();
    }
    let frames = frames_until_quiet(&mut s, Duration::from_millis(800));
    let refused: Vec<u32> = frames
        .iter()
        .filter(|f| f.kind == RST_STREAM && f.payload == [0, 0, 0, 7])
        .map(|f| f.stream)
        .collect();
    assert_eq!(refused, vec![5], "REFUSED_STREAM only for the third");
    assert_eq!(server.calls.load(Ordering::SeqCst), 2);
    // Ending stream 1 frees a place: a new stream is served.
    s.write_all(&frame(DATA, END_STREAM, 1, b"z")).unwrap();
    s.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 7, REQUEST_BLOCK))
        .unwrap();
    let frames = frames_until_quiet(&mut s, Duration::from_millis(800));
    assert!(frames.iter().any(|f| f.kind == HEADERS && f.stream == 7));
    assert_eq!(server.calls.load(Ordering::SeqCst), 3);
}

#[test]
fn an_oversized_header_list_is_refused() {
    let server = start_server(H2Limits {
        max_header_list_size: 1024,
        ..H2Limits::default()
    });
    let mut s = raw_connect(server.addr);
    let mut block = REQUEST_BLOCK.to_vec();
    // Literal without indexing, new name "x", a 2000-byte value.
    block.extend_from_slice(&[0x00, 0x01, b'x', 0x7f, 0xd1, 0x0e]);
    block.extend(std::iter::repeat_n(b'v', 2000));
    s.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
        .unwrap();
    let frames = frames_until_quiet(&mut s, Duration::from_millis(800));
    assert!(
        frames
            .iter()
            .any(|f| f.stream == 1 && (f.kind == HEADERS || f.kind == RST_STREAM)),
        "stream 1 not refused"
    );
    assert_eq!(server.calls.load(Ordering::SeqCst), 0, "handler ran");
    // The connection stays usable for a well-formed request.
    s.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 3, REQUEST_BLOCK))
        .unwrap();
    let frames = frames_until_quiet(&mut s, Duration::from_millis(800));
    assert!(frames.iter().any(|f| f.kind == HEADERS && f.stream == 3));
    assert_eq!(server.calls.load(Ordering::SeqCst), 1);
}

#[test]
fn a_rapid_reset_flood_gets_goaway() {
    let server = start_server(H2Limits {
        max_resets: 10,
        ..H2Limits::default()
    });
    let mut s = raw_connect(server.addr);
    let mut flood = Vec::new();
    for i in 0..500u32 {
        let id = 1 + 2 * i;
        flood.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, REQUEST_BLOCK));
        flood.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    // The server may close while we still write: ignore write errors.
    let _ = s.write_all(&flood);
    let frames = frames_until_quiet(&mut s, Duration::from_secs(2));
    let goaway = frames
        .iter()
        .find(|f| f.kind == GOAWAY)
        .expect("GOAWAY after the flood");
    assert_eq!(&goaway.payload[4..8], &[0, 0, 0, 0xb], "ENHANCE_YOUR_CALM");
    assert!(
        server.calls.load(Ordering::SeqCst) < 500,
        "every flooded stream reached the handler"
    );
    // The server still serves others.
    let out = Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "-d", "ok"])
        .arg(format!("http://{}/echo", server.addr))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");
}

#[test]
fn a_zero_window_stall_resets_the_stream() {
    let server = start_server(H2Limits {
        idle_timeout: Duration::from_millis(300),
        ..H2Limits::default()
    });
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(shardgate::h2::PREFACE).unwrap();
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: the server may not send DATA.
    s.write_all(&frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]))
        .unwrap();
    s.write_all(&frame(HEADERS, END_HEADERS, 1, REQUEST_BLOCK))
        .unwrap();
    s.write_all(&frame(DATA, END_STREAM, 1, b"abc")).unwrap();
    let started = Instant::now();
    let mut reset = None;
    while let Some(f) = read_frame(&mut s) {
        if f.kind == SETTINGS && f.flags & 1 == 0 {
            s.write_all(&frame(SETTINGS, 1, 0, &[])).unwrap();
        }
        if f.kind == DATA && f.stream == 1 && !f.payload.is_empty() {
            panic!("DATA sent into a zero window");
        }
        if f.kind == RST_STREAM && f.stream == 1 {
            reset = Some(f.payload);
            break;
        }
    }
    assert_eq!(
        reset.as_deref(),
        Some(&[0u8, 0, 0, 8][..]),
        "RST_STREAM CANCEL"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[test]
fn a_continuation_flood_is_cut_off() {
    const CONTINUATION: u8 = 9;
    let server = start_server(H2Limits {
        max_header_list_size: 4096,
        ..H2Limits::default()
    });
    let mut s = raw_connect(server.addr);
    s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(&frame(HEADERS, 0, 1, REQUEST_BLOCK)).unwrap();
    // Literal fields without indexing ("x: vvv…"), never END_HEADERS:
    // up to 16 MiB of header block.
    let mut field = vec![0x00, 0x01, b'x', 0x7f, 0xd1, 0x0e];
    field.extend(std::iter::repeat_n(b'v', 2000));
    let mut payload = Vec::new();
    while payload.len() + field.len() <= 16 * 1024 {
        payload.extend_from_slice(&field);
    }
    let continuation = frame(CONTINUATION, 0, 1, &payload);
    let mut sent = 0usize;
    for _ in 0..1024 {
        if s.write_all(&continuation).is_err() {
            break;
        }
        sent += continuation.len();
    }
    let frames = frames_until_quiet(&mut s, Duration::from_secs(2));
    let goaway = frames.iter().any(|f| f.kind == GOAWAY);
    assert!(
        goaway || sent < 1024 * continuation.len(),
        "the server took {sent} bytes of one header block"
    );
    assert_eq!(server.calls.load(Ordering::SeqCst), 0, "handler ran");
}
