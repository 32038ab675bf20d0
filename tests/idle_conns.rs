//! Idle keep-alive connections cost little: a connection waiting for its
//! next request holds no read buffer and a small task.

mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

/// The gateway's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One shard, keep-alive connections kept a minute, heads up to 16 KiB.
fn long_idle_config(backend: &Backend) -> String {
    config(
        1,
        &upstream("app", &[&backend.addr()], ""),
        &catch_all("app"),
    )
    .replace(
        LIMITS,
        "HttpLimits(max_header_bytes: 16384, idle_timeout_ms: 60000)",
    )
}

/// Opens `n` connections, each sending one keep-alive request and reading
/// its answer, and keeps them open.
fn open_idle(port: u16, n: usize) -> Vec<Client> {
    let mut conns: Vec<Client> = (0..n).map(|_| Client::connect(port)).collect();
    // A hundred at a time: the test's backend takes a thread per connection.
    for batch in conns.chunks_mut(100) {
        for c in batch.iter_mut() {
            c.send(b"GET /hello HTTP/1.1\r\nHost: idle.test\r\n\r\n");
        }
        for c in batch.iter_mut() {
            let r = c.read_response();
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    conns
}

#[test]
fn idle_connections_hold_no_read_buffer() {
    const N: usize = 2_000;
    let backend = Backend::start(|_| Response::ok("hi"));
    let gw = Gateway::start(&long_idle_config(&backend));
    // Warm the allocator and the shard's buffer list with some traffic.
    drop(open_idle(gw.port, 200));
    // The lowest of a few readings across the shard's once-a-second
    // hand-back, so memory the warm-up freed does not count as headroom.
    thread::sleep(Duration::from_millis(800));
    let mut before = rss_kib(gw.pid());
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(500));
        before = before.min(rss_kib(gw.pid()));
    }
    assert!(before > 0, "could not read the gateway's RSS");

    let mut idle = open_idle(gw.port, N);
    // Past the grace during which a quiet connection keeps its buffer, and
    // past the shard's next hand-back of freed memory.
    thread::sleep(Duration::from_millis(3_500));
    let mut after = rss_kib(gw.pid());
    // On a loaded machine the shard may hand freed memory back a little
    // later: look again for a few seconds before judging.
    for _ in 0..3 {
        if after.saturating_sub(before) * 1024 / (N as u64) < 4 * 1024 {
            break;
        }
        thread::sleep(Duration::from_secs(2));
        after = after.min(rss_kib(gw.pid()));
    }
    let per_conn = after.saturating_sub(before) * 1024 / N as u64;
    eprintln!("RSS {before} kB -> {after} kB with {N} idle connections: {per_conn} B each");
    assert!(
        per_conn < 4 * 1024,
        "each idle connection costs {per_conn} B (RSS {before} -> {after} kB)"
    );

    // A new client is still answered promptly, and so are the idle ones.
    let started = Instant::now();
    let r = request(gw.port, "GET", "/fresh", &[("Host", "idle.test")], b"");
    assert_eq!(r.status, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    for c in idle.iter_mut().step_by(97) {
        c.send(b"GET /again HTTP/1.1\r\nHost: idle.test\r\n\r\n");
        assert_eq!(c.read_response().status, 200);
    }
}

#[test]
fn requests_after_an_idle_wait_keep_their_bytes() {
    // A connection that went quiet past the grace (buffer given back) gets
    // its next request, a pipelined pair and a large head right.
    let backend = Backend::echo("b");
    let gw = Gateway::start(&long_idle_config(&backend));
    let mut c = Client::connect(gw.port);
    c.send(b"GET /one HTTP/1.1\r\nHost: idle.test\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    thread::sleep(Duration::from_millis(600));
    c.send(
        b"GET /two HTTP/1.1\r\nHost: idle.test\r\n\r\nGET /three HTTP/1.1\r\nHost: idle.test\r\n\r\n",
    );
    assert_eq!(c.read_response().status, 200);
    assert_eq!(c.read_response().status, 200);
    thread::sleep(Duration::from_millis(600));
    let big = "x".repeat(12_000);
    c.send(format!("GET /four HTTP/1.1\r\nHost: idle.test\r\nX-Big: {big}\r\n\r\n").as_bytes());
    assert_eq!(c.read_response().status, 200);
    let seen: Vec<String> = backend.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(seen, ["/one", "/two", "/three", "/four"]);
    assert_eq!(
        backend.last().header("x-big").map(str::len),
        Some(big.len())
    );

    // Bytes trickling in after an idle wait: the head is read whole.
    let mut c = Client::connect(gw.port);
    for part in [
        &b"GET /fi"[..],
        b"ve HTTP/1.1\r\nHo",
        b"st: idle.test\r\n\r\n",
    ] {
        // Each part after longer than the grace for a quiet connection.
        thread::sleep(Duration::from_millis(400));
        c.send(part);
    }
    assert_eq!(c.read_response().status, 200);
    assert_eq!(backend.last().target, "/five");
}
