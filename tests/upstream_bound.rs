//! The host-wide bound on upstream connections per target
//! (`max_connections_per_target`), observed at a loopback backend that counts
//! the connections it holds at once: the bound holds under load for proxied
//! and composite routes, requests beyond it queue and succeed, the overflow
//! gets a JSON 503, and slots come back when connections die.

mod common;

use common::*;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Answer normally and keep the connection.
const NORMAL: u8 = 0;
/// Answer, then close the connection without announcing it.
const CLOSE_AFTER: u8 = 1;
/// Answer with bytes that are not HTTP, then close.
const GARBAGE: u8 = 2;

#[derive(Default)]
struct Counts {
    /// Connections open right now.
    open: AtomicUsize,
    /// Most connections open at once.
    peak: AtomicUsize,
    /// Connections accepted.
    accepted: AtomicUsize,
    /// Responses sent.
    answered: AtomicUsize,
    /// Milliseconds to wait before each answer.
    delay_ms: AtomicU64,
}

/// A loopback HTTP/1.1 backend (one thread per connection) that answers
/// every request with a small JSON object after `delay` and counts the
/// connections it holds at once.
struct CountingBackend {
    addr: SocketAddr,
    counts: Arc<Counts>,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl CountingBackend {
    fn start(delay: Duration) -> CountingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let counts = Arc::new(Counts::default());
        counts
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
        CountingBackend::serve(listener, counts)
    }

    /// Starts again on `addr` (the port of a stopped backend), keeping `counts`.
    fn restart(addr: SocketAddr, counts: Arc<Counts>) -> CountingBackend {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(addr) {
                Ok(l) => return CountingBackend::serve(l, counts),
                Err(e) if Instant::now() > deadline => panic!("rebind {addr}: {e}"),
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn serve(listener: TcpListener, counts: Arc<Counts>) -> CountingBackend {
        let addr = listener.local_addr().expect("backend addr");
        let mode = Arc::new(AtomicU8::new(NORMAL));
        let stop = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let acceptor = {
            let (counts, mode, stop, streams) =
                (counts.clone(), mode.clone(), stop.clone(), streams.clone());
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    if let Ok(s) = stream.try_clone() {
                        streams.lock().unwrap().push(s);
                    }
                    counts.accepted.fetch_add(1, Ordering::SeqCst);
                    let now = counts.open.fetch_add(1, Ordering::SeqCst) + 1;
                    counts.peak.fetch_max(now, Ordering::SeqCst);
                    let (counts, mode) = (counts.clone(), mode.clone());
                    thread::spawn(move || {
                        serve_conn(stream, &counts, &mode);
                        counts.open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            })
        };
        CountingBackend {
            addr,
            counts,
            mode,
            stop,
            streams,
            acceptor: Some(acceptor),
        }
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }

    fn peak(&self) -> usize {
        self.counts.peak.load(Ordering::SeqCst)
    }

    fn accepted(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    fn answered(&self) -> usize {
        self.counts.answered.load(Ordering::SeqCst)
    }

    fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn set_delay(&self, d: Duration) {
        self.counts
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Closes the listener and every connection, and waits until the port is free.
    fn stop(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
        let _ = acceptor.join();
    }
}

impl Drop for CountingBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_conn(stream: TcpStream, counts: &Counts, mode: &AtomicU8) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = stream.set_nodelay(true);
    let mut conn = Conn::new(stream);
    while let Ok(Some(_head)) = conn.read_head(64 * 1024) {
        thread::sleep(Duration::from_millis(
            counts.delay_ms.load(Ordering::SeqCst),
        ));
        let m = mode.load(Ordering::SeqCst);
        let body = "{\"ok\":true}";
        let out = match m {
            GARBAGE => "THIS IS NOT HTTP\r\n\r\n".to_string(),
            _ => format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            ),
        };
        if conn.stream.write_all(out.as_bytes()).is_err() {
            return;
        }
        counts.answered.fetch_add(1, Ordering::SeqCst);
        if m != NORMAL {
            let _ = conn.stream.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// A gateway on `Count(shards)` with upstream `app` at `backend` (extra
/// `Upstream` fields in `bound`) and the catch-all route to it.
fn gateway(shards: usize, backend: &CountingBackend, bound: &str) -> Gateway {
    let ups = upstream("app", &[&backend.addr()], bound);
    Gateway::start(&config(shards, &ups, &catch_all("app")))
}

/// Runs `clients` threads at once, each sending `per_client` GETs to `path`
/// on its own keep-alive connection; returns every response.
fn concurrent_gets(port: u16, path: &str, clients: usize, per_client: usize) -> Vec<Resp> {
    let start = Arc::new(std::sync::Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (start, path) = (start.clone(), path.to_string());
            thread::spawn(move || {
                let mut c = Client::connect(port);
                c.set_read_timeout(Duration::from_secs(60));
                start.wait();
                (0..per_client).map(|_| c.get(&path)).collect::<Vec<_>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect()
}

#[track_caller]
fn assert_all_ok(resps: &[Resp]) {
    for r in resps {
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[test]
fn bound_holds_under_load_and_queued_requests_succeed() {
    let backend = CountingBackend::start(Duration::from_millis(40));
    let gw = gateway(
        2,
        &backend,
        "max_connections_per_target: 4, queue_timeout_ms: 30000",
    );
    let resps = concurrent_gets(gw.port, "/slow", 32, 4);
    assert_eq!(resps.len(), 128);
    assert_all_ok(&resps);
    assert_eq!(backend.answered(), 128);
    assert!(
        backend.peak() <= 4,
        "the backend saw {} connections at once (bound 4)",
        backend.peak()
    );
    assert!(
        backend.accepted() <= 4,
        "the gateway opened {} connections in all (bound 4, none died)",
        backend.accepted()
    );
}

#[test]
fn without_a_bound_the_same_load_opens_more() {
    // The control for the test above: the backend does see the pools multiply.
    let backend = CountingBackend::start(Duration::from_millis(200));
    let gw = gateway(2, &backend, "");
    let resps = concurrent_gets(gw.port, "/slow", 32, 2);
    assert_all_ok(&resps);
    assert!(
        backend.peak() > 4,
        "unbounded, 32 clients should need more than 4 connections (saw {})",
        backend.peak()
    );
}

#[test]
fn overflow_beyond_the_queue_gets_a_json_503() {
    let backend = CountingBackend::start(Duration::from_millis(3000));
    // One connection and one waiting request per shard.
    let gw = gateway(
        2,
        &backend,
        "max_connections_per_target: 2, max_queued_per_target: 2, queue_timeout_ms: 300",
    );
    let resps = concurrent_gets(gw.port, "/slow", 12, 1);
    let ok = resps.iter().filter(|r| r.status == 200).count();
    let mut waited = 0;
    let mut refused = 0;
    for r in resps.iter().filter(|r| r.status != 200) {
        assert_json_error(r, 503);
        let msg = r.json_str("error").unwrap_or_default();
        assert!(
            msg.contains("\"app\"") && msg.contains("connection limit"),
            "message: {msg}"
        );
        assert_eq!(r.header("retry-after"), Some("1"), "{:?}", r.headers);
        if msg.contains("within 300 ms") {
            waited += 1;
        } else if msg.contains("already waiting") {
            refused += 1;
        } else {
            panic!("unexpected message: {msg}");
        }
    }
    assert!(
        (1..=2).contains(&ok),
        "{ok} answered (one per shard at most)"
    );
    assert_eq!(ok + waited + refused, 12);
    // One shard has at least 6 of the 12: one served, one waited, the rest refused.
    assert!(waited >= 1, "no request waited for a connection");
    assert!(refused >= 4, "only {refused} refused for a full queue");
    assert!(backend.peak() <= 2, "peak {} (bound 2)", backend.peak());
    assert!(backend.accepted() <= 2, "{} accepted", backend.accepted());
}

#[test]
fn composite_routes_share_the_bound_with_proxied_requests() {
    let backend = CountingBackend::start(Duration::from_millis(30));
    let ups = upstream(
        "app",
        &[&backend.addr()],
        "max_connections_per_target: 4, queue_timeout_ms: 30000",
    );
    let routes = format!(
        "        Route(name: \"d\", match: Match(path: \"/d\"), aggregate: Aggregate(timeout_ms: 60000, parts: [\n            Part(name: \"a\", upstream: \"app\", path: \"/a\"),\n            Part(name: \"b\", upstream: \"app\", path: \"/b\"),\n            Part(name: \"c\", upstream: \"app\", path: \"/c\"),\n        ])),\n{}",
        catch_all("app")
    );
    let gw = Gateway::start(&config(2, &ups, &routes));
    let port = gw.port;
    let proxied = thread::spawn(move || concurrent_gets(port, "/p", 12, 3));
    let composite = concurrent_gets(gw.port, "/d", 12, 3);
    let proxied = proxied.join().expect("proxied clients");
    assert_all_ok(&composite);
    assert_all_ok(&proxied);
    for r in &composite {
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("composite JSON");
        assert_eq!(v["a"]["ok"], true, "{}", r.text());
        assert_eq!(v["c"]["ok"], true, "{}", r.text());
    }
    assert_eq!(backend.answered(), 36 * 3 + 36);
    assert!(backend.peak() <= 4, "peak {} (bound 4)", backend.peak());
}

#[test]
fn a_composite_part_at_the_bound_fails_without_opening_more() {
    let backend = CountingBackend::start(Duration::from_millis(2000));
    let ups = upstream(
        "app",
        &[&backend.addr()],
        "max_connections_per_target: 1, max_queued_per_target: 0",
    );
    let routes = "        Route(name: \"d\", match: Match(path: \"/d\"), aggregate: Aggregate(parts: [\n            Part(name: \"a\", upstream: \"app\", path: \"/a\"),\n            Part(name: \"b\", upstream: \"app\", path: \"/b\"),\n        ])),\n";
    let gw = Gateway::start(&config(1, &ups, routes));
    let resp = get(gw.port, "/d");
    assert_json_error(&resp, 502);
    let msg = resp.json_str("error").unwrap_or_default();
    assert!(msg.contains("connection limit"), "message: {msg}");
    // The first part's connection reached the backend; no second one follows.
    let deadline = Instant::now() + Duration::from_secs(2);
    while backend.accepted() == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(100));
    assert_eq!(backend.accepted(), 1);
}

/// `n` GETs, each on a new connection (spread over the shards); their statuses.
fn statuses(port: u16, n: usize) -> Vec<u16> {
    (0..n).map(|_| get(port, "/x").status).collect()
}

#[test]
fn slots_come_back_when_connections_die_or_fail() {
    let mut backend = CountingBackend::start(Duration::ZERO);
    let addr = backend.addr;
    // One slot per shard: a single leaked slot would turn a shard's later
    // requests into 503s.
    let gw = gateway(
        2,
        &backend,
        "max_connections_per_target: 2, queue_timeout_ms: 1000",
    );
    assert_eq!(statuses(gw.port, 6), vec![200; 6]);

    // Pooled connections the backend closes behind the gateway's back.
    backend.set_mode(CLOSE_AFTER);
    for _ in 0..10 {
        let r = get(gw.port, "/x");
        assert_eq!(r.status, 200, "{}", r.text());
        // Let the close arrive, so the next request finds a dead pooled connection.
        thread::sleep(Duration::from_millis(20));
    }

    // Exchanges that fail: an answer that is not HTTP.
    backend.set_mode(GARBAGE);
    for _ in 0..6 {
        let r = get(gw.port, "/x");
        assert_json_error(&r, 502);
    }
    backend.set_mode(NORMAL);
    assert_eq!(statuses(gw.port, 6), vec![200; 6]);

    // The backend goes away (its connections with it), connects are refused,
    // then it comes back on the same port.
    let counts = backend.counts.clone();
    backend.stop();
    for _ in 0..6 {
        let r = get(gw.port, "/x");
        assert_json_error(&r, 502);
    }
    let backend = CountingBackend::restart(addr, counts);
    assert_eq!(statuses(gw.port, 10), vec![200; 10]);
    // And under concurrency both shards still have their slot.
    let resps = concurrent_gets(gw.port, "/x", 8, 3);
    assert_all_ok(&resps);
    drop(backend);
}

#[test]
fn a_zero_bound_is_rejected() {
    let dir = temp_dir();
    let path = dir.join("gateway.ron");
    let text = config(
        1,
        &upstream("app", &["127.0.0.1:9"], "max_connections_per_target: 0"),
        &catch_all("app"),
    )
    .replace("$PORT", "8080");
    std::fs::write(&path, text).expect("write config");
    let (status, _, stderr) = run_cli(&["check", path.to_str().expect("utf-8 path")]);
    assert!(!status.success(), "check accepted a zero bound");
    assert!(
        stderr.contains("max_connections_per_target"),
        "stderr: {stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn slots_of_idle_connections_dropped_with_a_dead_one_come_back() {
    // One shard, two slots; queue waits shorter than a slow answer, so a
    // single lost slot shows as a 503.
    let backend = CountingBackend::start(Duration::from_millis(300));
    let gw = gateway(
        1,
        &backend,
        "max_connections_per_target: 2, queue_timeout_ms: 1000",
    );
    // Two connections, both pooled, then both closed by the backend.
    backend.set_mode(CLOSE_AFTER);
    assert_all_ok(&concurrent_gets(gw.port, "/x", 2, 1));
    assert_eq!(backend.accepted(), 2);
    thread::sleep(Duration::from_millis(100));
    // The newest is found dead: the other idle one is closed with it, and
    // the request goes out on a fresh connection.
    backend.set_mode(NORMAL);
    backend.set_delay(Duration::ZERO);
    assert_eq!(statuses(gw.port, 1), vec![200]);
    assert_eq!(backend.accepted(), 3);
    // Both slots are free again: two slow requests at once both get through.
    backend.set_delay(Duration::from_millis(1500));
    let resps = concurrent_gets(gw.port, "/x", 2, 1);
    assert_all_ok(&resps);
    assert_eq!(backend.accepted(), 4);
}
