//! The known HTTP/2 attacks against the real gateway, written as raw frames
//! (tests/h2wire): after each, the gateway still answers an HTTP/1.1 and an
//! h2c request from other connections at once, and the offending
//! connection is closed, or its excess refused, or its cost bounded.

mod common;
mod h2wire;

use common::*;
use h2wire::*;
use std::time::{Duration, Instant};

/// The backend: `/slow` answers after 3 s, `/big` with 1 MiB, anything
/// else at once.
fn backend() -> Backend {
    Backend::start(|r| match r.target.as_str() {
        "/slow" => Response::ok("slow").delay(Duration::from_secs(3)),
        "/big" => Response::generated(1024 * 1024, false),
        t => Response::ok(format!("ok {t}")),
    })
}

/// A gateway in front of `backend` with these `Http2Limits` fields.
fn gateway(backend: &Backend, h2_limits: &str) -> Gateway {
    gateway_with(backend, h2_limits, LIMITS)
}

/// [`gateway`] with these HTTP limits.
fn gateway_with(backend: &Backend, h2_limits: &str, limits: &str) -> Gateway {
    Gateway::start(&h2_config(
        h2_limits,
        limits,
        "",
        &upstream("b", &[&backend.addr()], ""),
        &catch_all("b"),
    ))
}

/// A POST whose body is still to come: the stream stays open.
fn open_post(path: &str) -> Vec<(&str, &str)> {
    vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "localhost"),
        (":path", path),
    ]
}

#[test]
fn rapid_reset_gets_goaway_enhance_your_calm() {
    let b = backend();
    let gw = gateway(&b, "max_resets: 20, reset_interval_s: 10");
    let mut c = H2::connect(gw.port);
    // 1000 streams opened and reset at once, in one write.
    let request = block(&get_headers("/rr"));
    let mut flood = Vec::new();
    for i in 0..1000u32 {
        let id = 1 + 2 * i;
        flood.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &request));
        flood.extend(rst_stream(id, CANCEL));
    }
    let _ = c.try_send(&flood);
    assert!(
        c.wait_closed(Duration::from_secs(5)),
        "the connection stays open"
    );
    assert_eq!(c.goaway_code(), Some(ENHANCE_YOUR_CALM), "{:?}", c.goaways);
    assert!(b.count() < 1000, "every reset stream reached the upstream");
    assert_responsive(gw.port, "/after");
}

#[test]
fn slow_rapid_reset_of_accepted_streams_gets_goaway() {
    // Each stream reset only after the gateway took it up (its body is
    // awaited), so the gateway's own count applies, not the `h2` crate's
    // cap on streams reset before they were accepted.
    let b = backend();
    let gw = gateway(&b, "max_resets: 20, reset_interval_s: 10");
    let mut c = H2::connect(gw.port);
    let started = Instant::now();
    let mut sent = 0;
    for i in 0..200u32 {
        let id = 1 + 2 * i;
        let mut out = frame(HEADERS, END_HEADERS, id, &block(&open_post("/srr")));
        out.extend(frame(DATA, 0, id, b"x"));
        if !c.try_send(&out) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
        if !c.try_send(&rst_stream(id, CANCEL)) {
            break;
        }
        sent += 1;
        if !c.goaways.is_empty() || c.closed {
            break;
        }
        // Read what came so far (GOAWAY, SETTINGS ACK...) without waiting.
        while let Event::Frame(_) = c.next(Duration::from_millis(1)) {}
    }
    assert!(
        c.wait_closed(Duration::from_secs(5)),
        "the connection stays open"
    );
    assert_eq!(c.goaway_code(), Some(ENHANCE_YOUR_CALM), "{:?}", c.goaways);
    assert!(
        sent < 200,
        "all 200 resets were taken ({:?})",
        started.elapsed()
    );
    assert_responsive(gw.port, "/after");
}

#[test]
fn continuation_flood_is_cut_off_with_bounded_memory() {
    let b = backend();
    let gw = gateway(&b, "max_header_list_bytes: 4096");
    let rss_before = rss_kib(gw.pid()).unwrap();
    let mut c = H2::connect(gw.port);
    c.send(&frame(HEADERS, 0, 1, &block(&get_headers("/cf"))));
    // Never END_HEADERS: 16 KiB CONTINUATIONs of literal fields, up to
    // 256 MiB of one header block.
    let mut payload = Vec::new();
    let mut n = 0;
    while payload.len() < 16 * 1024 - 200 {
        payload.extend(block(&[(&format!("x-{n}"), &"v".repeat(100))]));
        n += 1;
    }
    let continuation = frame(CONTINUATION, 0, 1, &payload);
    let mut sent = 0usize;
    while sent < 256 * 1024 * 1024 {
        if !c.try_send(&continuation) {
            break;
        }
        sent += continuation.len();
    }
    let closed = c.wait_closed(Duration::from_secs(5));
    assert!(
        closed,
        "the connection took {sent} bytes of one header block and stays open"
    );
    assert!(
        sent < 64 * 1024 * 1024,
        "{sent} bytes taken before the close"
    );
    assert_eq!(b.count(), 0, "the request reached the upstream");
    let grown = rss_kib(gw.pid()).unwrap().saturating_sub(rss_before);
    assert!(grown < 32 * 1024, "RSS grew by {grown} KiB");
    assert_responsive(gw.port, "/after");
    eprintln!(
        "CONTINUATION flood: {sent} bytes taken, GOAWAY {:?}, RSS +{grown} KiB",
        c.goaway_code()
    );
}

#[test]
fn empty_continuation_flood_is_cut_off() {
    let b = backend();
    let gw = gateway(&b, "max_header_list_bytes: 4096");
    let mut c = H2::connect(gw.port);
    c.send(&frame(HEADERS, 0, 1, &block(&get_headers("/ecf"))));
    // Empty CONTINUATION frames cost the sender 9 bytes each.
    let empty = frame(CONTINUATION, 0, 1, &[]).repeat(10_000);
    let mut sent = 0usize;
    while sent < 10_000_000 {
        if !c.try_send(&empty) {
            break;
        }
        sent += 10_000;
    }
    assert!(
        c.wait_closed(Duration::from_secs(5)),
        "open after {sent} empty CONTINUATIONs"
    );
    assert!(sent < 10_000_000, "all {sent} empty CONTINUATIONs taken");
    assert_eq!(b.count(), 0);
    assert_responsive(gw.port, "/after");
    eprintln!(
        "empty CONTINUATION flood: {sent} frames taken, GOAWAY {:?}",
        c.goaway_code()
    );
}

/// A header block that puts a `size`-byte entry into the dynamic table
/// and references it `refs` times.
fn bomb_block(path: &str, size: usize, refs: usize) -> Vec<u8> {
    let mut bomb = block(&get_headers(path));
    bomb.extend(indexed_literal("x-bomb", &"b".repeat(size)));
    for _ in 0..refs {
        bomb.extend(indexed(62));
    }
    bomb
}

#[test]
fn hpack_bomb_is_refused_without_reaching_the_upstream() {
    let b = backend();
    let gw = gateway(&b, "max_header_list_bytes: 16384");
    let rss_before = rss_kib(gw.pid()).unwrap();
    let mut c = H2::connect(gw.port);
    // One 4000-byte entry in the dynamic table (4 KiB, the default size),
    // referenced 12000 times: one 16 KB HEADERS frame that decodes to 48 MB.
    let bomb = bomb_block("/bomb", 4000, 12_000);
    assert!(bomb.len() <= 16 * 1024);
    c.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &bomb));
    let a = c.answer(1, Duration::from_secs(5));
    eprintln!(
        "HPACK bomb: status {:?}, reset {:?}, GOAWAY {:?}, closed {}",
        a.status(),
        a.reset,
        c.goaway_code(),
        c.closed
    );
    let refused = a.status() == Some(431) || a.reset.is_some() || c.goaway_code().is_some();
    assert!(refused, "the bomb was not refused: {a:?}");
    assert_eq!(b.count(), 0, "the bomb reached the upstream");
    // If the connection is still up, it serves a normal request.
    if !c.closed && c.goaways.is_empty() {
        c.get(3, "/same");
        assert_eq!(c.answer(3, Duration::from_secs(5)).status(), Some(200));
    }
    let grown = rss_kib(gw.pid()).unwrap().saturating_sub(rss_before);
    assert!(grown < 32 * 1024, "RSS grew by {grown} KiB");
    assert_responsive(gw.port, "/after");
}

#[test]
fn a_header_list_just_over_the_cap_gets_431() {
    let b = backend();
    // HTTP limits that take a 16 KiB head, so only the HTTP/2 cap applies.
    let limits = LIMITS.replace("max_header_bytes: 4096", "max_header_bytes: 32768");
    let gw = gateway_with(&b, "max_header_list_bytes: 16384", &limits);
    let mut c = H2::connect(gw.port);
    // 5 references to a 4000-byte entry: 20 KB decoded.
    c.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &bomb_block("/over", 4000, 5),
    ));
    let a = c.answer(1, Duration::from_secs(5));
    assert_eq!(a.status(), Some(431), "{a:?}");
    assert_eq!(b.count(), 0);
    // The connection (and its HPACK state) goes on.
    c.get(3, "/same");
    let a = c.answer(3, Duration::from_secs(5));
    assert_eq!(a.status(), Some(200), "{a:?}");
    // The big entry is still indexed: 3 references (12 KB) fit the cap.
    c.send(&frame(HEADERS, END_HEADERS | END_STREAM, 5, &{
        let mut b = block(&get_headers("/fits"));
        b.extend(indexed(62).repeat(3));
        b
    }));
    let a = c.answer(5, Duration::from_secs(5));
    assert_eq!(a.status(), Some(200), "{a:?}");
    assert_eq!(b.last().headers_named("x-bomb").len(), 3);
}

#[test]
fn hpack_bomb_across_continuations_is_refused() {
    let b = backend();
    let gw = gateway(&b, "max_header_list_bytes: 16384");
    let mut c = H2::connect(gw.port);
    // 40000 references in 16 KiB frames: 160 MB decoded.
    let bomb = bomb_block("/cbomb", 4000, 40_000);
    let mut pieces = bomb.chunks(16 * 1024).peekable();
    let first = pieces.next().unwrap();
    let mut out = frame(HEADERS, END_STREAM, 1, first);
    while let Some(p) = pieces.next() {
        let flags = if pieces.peek().is_none() {
            END_HEADERS
        } else {
            0
        };
        out.extend(frame(CONTINUATION, flags, 1, p));
    }
    let _ = c.try_send(&out);
    let a = c.answer(1, Duration::from_secs(5));
    eprintln!(
        "HPACK bomb in CONTINUATIONs: status {:?}, reset {:?}, GOAWAY {:?}",
        a.status(),
        a.reset,
        c.goaway_code()
    );
    let refused = a.status() == Some(431) || a.reset.is_some() || c.goaway_code().is_some();
    assert!(refused, "the bomb was not refused: {a:?}");
    assert_eq!(b.count(), 0, "the bomb reached the upstream");
    assert_responsive(gw.port, "/after");
}

/// Floods a new connection with `frames` copies of `one` without reading
/// anything and checks the gateway answers others meanwhile; then reads
/// what the connection gives back. The connection must be closed, or the
/// flood throttled (the gateway stops reading while its replies are not
/// read: the writes block before all are written), and RSS stay bounded.
fn flood_unread(one: &[u8], frames: usize, kind: u8, what: &str) {
    let b = backend();
    let gw = gateway(&b, "");
    let rss_before = rss_kib(gw.pid()).unwrap();
    let mut c = H2::connect(gw.port);
    c.sock
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let batch = one.repeat(1000);
    let mut written = 0;
    while written < frames {
        if !c.try_send(&batch) {
            break;
        }
        written += 1000;
    }
    // The offender still holds its connection, unread.
    assert_responsive(gw.port, "/during");
    let grown = rss_kib(gw.pid()).unwrap().saturating_sub(rss_before);
    c.auto_ack = false;
    let mut replies = 0;
    let closed = loop {
        match c.next(Duration::from_secs(2)) {
            Event::Frame(f) if f.kind == kind => replies += 1,
            Event::Frame(_) => {}
            Event::Closed => break true,
            Event::Quiet => break false,
        }
    };
    eprintln!(
        "{what} flood: {written} written, closed {closed}, {replies} ACKs read, RSS +{grown} KiB"
    );
    assert!(
        closed && written < frames,
        "the flooding connection was not closed ({written} {what} frames written)"
    );
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    assert_responsive(gw.port, "/after");
}

#[test]
fn settings_flood_is_closed_with_bounded_memory() {
    let one = settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 65535)]);
    flood_unread(&one, 4_000_000, SETTINGS, "SETTINGS");
}

#[test]
fn ping_flood_is_closed_with_bounded_memory() {
    flood_unread(&ping(0, *b"floodpng"), 4_000_000, PING, "PING");
}

#[test]
fn zero_window_stall_is_reset_after_the_idle_timeout() {
    let b = backend();
    let gw = gateway(&b, "idle_timeout_ms: 1000");
    // SETTINGS_INITIAL_WINDOW_SIZE 0: the gateway may send no DATA.
    let mut c = H2::connect_with(gw.port, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]);
    c.auto_window = false;
    c.get(1, "/big");
    let started = Instant::now();
    let a = c.answer(1, Duration::from_secs(8));
    let waited = started.elapsed();
    assert_eq!(a.status(), Some(200), "{a:?}");
    assert!(a.body.is_empty(), "DATA sent into a zero window");
    assert_eq!(a.reset, Some(CANCEL), "{a:?}");
    assert!(
        waited >= Duration::from_millis(900),
        "reset after {waited:?}"
    );
    assert!(waited < Duration::from_secs(6), "reset after {waited:?}");
    // With no stream left the connection idles out too.
    assert!(
        c.wait_closed(Duration::from_secs(5)),
        "the connection stays open"
    );
    assert_responsive(gw.port, "/after");
}

#[test]
fn zero_connection_window_stall_is_reset_after_the_idle_timeout() {
    // The stream window is large but the connection window (65535 bytes)
    // is never opened again.
    let b = backend();
    let gw = gateway(&b, "idle_timeout_ms: 1000");
    let mut c = H2::connect_with(gw.port, &[(SETTINGS_INITIAL_WINDOW_SIZE, 1 << 30)]);
    c.auto_window = false;
    c.get(1, "/big");
    let started = Instant::now();
    let a = c.answer(1, Duration::from_secs(8));
    assert_eq!(a.status(), Some(200), "{a:?}");
    assert_eq!(a.body.len(), 65535, "the connection window's worth");
    assert_eq!(a.reset, Some(CANCEL), "{a:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_responsive(gw.port, "/after");
}

#[test]
fn streams_over_max_concurrent_streams_are_refused() {
    let b = backend();
    let gw = gateway(&b, "max_concurrent_streams: 4");
    let mut c = H2::connect(gw.port);
    assert!(
        c.server_settings
            .contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, 4)),
        "{:?}",
        c.server_settings
    );
    // Six requests whose bodies never come: four are served (waiting for
    // their bodies), the last two refused.
    for id in [1u32, 3, 5, 7, 9, 11] {
        c.request(id, &open_post("/held"), false);
    }
    let frames = c.drain(Duration::from_millis(1000));
    let refused: Vec<u32> = frames
        .iter()
        .filter(|f| f.kind == RST_STREAM && f.error_code() == Some(REFUSED_STREAM))
        .map(|f| f.stream)
        .collect();
    assert_eq!(refused, vec![9, 11], "REFUSED_STREAM for the excess");
    assert!(!c.closed, "the connection itself stays");
    // Ending one frees a place.
    c.send(&frame(DATA, END_STREAM, 1, b"body"));
    assert_eq!(c.answer(1, Duration::from_secs(5)).status(), Some(200));
    c.get(13, "/next");
    let a = c.answer(13, Duration::from_secs(5));
    assert_eq!(a.status(), Some(200), "{a:?}");
    assert_eq!(a.body, b"ok /next");
    assert_responsive(gw.port, "/after");
}

#[test]
fn empty_data_frame_flood_gets_goaway() {
    // CVE-2019-9518: empty frames cost the peer nothing to send.
    let b = backend();
    let gw = gateway(&b, "");
    let rss_before = rss_kib(gw.pid()).unwrap();
    let mut c = H2::connect(gw.port);
    c.request(1, &open_post("/empty"), false);
    let empty = frame(DATA, 0, 1, &[]).repeat(10_000);
    let started = Instant::now();
    let mut sent = 0usize;
    let mut write_failed = false;
    while sent < 1_000_000 && started.elapsed() < Duration::from_secs(10) {
        if !c.try_send(&empty) {
            write_failed = true;
            break;
        }
        sent += 10_000;
    }
    assert_responsive(gw.port, "/during");
    let grown = rss_kib(gw.pid()).unwrap().saturating_sub(rss_before);
    let frames = c.drain(Duration::from_millis(1500));
    eprintln!(
        "empty DATA flood: {sent} frames in {:?}, write failed {write_failed}, GOAWAY {:?}, closed {}, RSS +{grown} KiB, frames back: {:?}",
        started.elapsed(),
        c.goaway_code(),
        c.closed,
        frames.iter().map(|f| (f.kind, f.stream, f.error_code())).collect::<Vec<_>>()
    );
    assert!(c.closed, "the connection stays open");
    assert_eq!(c.goaway_code(), Some(ENHANCE_YOUR_CALM));
    assert!(sent < 1_000_000, "all {sent} empty DATA frames taken");
    assert!(grown < 32 * 1024, "RSS grew by {grown} KiB");
    assert_responsive(gw.port, "/after");
}

/// A PING flood whose ACKs the offender reads, so backpressure never stops
/// it: the gateway answers as fast as it can on the given driver, and must
/// still serve others on the same shard.
fn ping_flood_with_reading(driver: &str) {
    let b = backend();
    let config = h2_config(
        "",
        LIMITS,
        "",
        &upstream("b", &[&b.addr()], ""),
        &catch_all("b"),
    );
    let gw = Gateway::start_with_env(&config, &[("SHARDGATE_DRIVER", driver)]);
    let port = gw.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = H2::connect(port);
            let mut reader = c.sock.try_clone().unwrap();
            let drain = std::thread::spawn(move || {
                let mut sink = vec![0u8; 1 << 16];
                let mut total = 0usize;
                while let Ok(n) = std::io::Read::read(&mut reader, &mut sink) {
                    if n == 0 {
                        break;
                    }
                    total += n;
                }
                total
            });
            let batch = ping(0, *b"pingpong").repeat(1000);
            let mut sent = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && c.try_send(&batch) {
                sent += 1000;
            }
            let _ = c.sock.shutdown(std::net::Shutdown::Both);
            (sent, drain.join().unwrap())
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    // Stop the flood whatever the checks find.
    let checks = std::panic::catch_unwind(|| {
        for _ in 0..3 {
            assert_responsive(port, "/during");
        }
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, read) = flooder.join().unwrap();
    eprintln!(
        "PING flood ({driver}), read: {sent} PINGs sent, {} ACKs read",
        read / 17
    );
    if let Err(panic) = checks {
        std::panic::resume_unwind(panic);
    }
    assert!(read > 0, "no ACK came back");
    assert_responsive(port, "/after");
}

#[test]
fn ping_flood_with_reading_does_not_starve_other_connections() {
    ping_flood_with_reading("io_uring");
}

#[test]
fn ping_flood_with_reading_does_not_starve_other_connections_on_epoll() {
    ping_flood_with_reading("epoll");
}

#[test]
fn a_peer_that_never_reads_is_closed_after_the_idle_timeout() {
    // SETTINGS until the gateway's writes block (its ACKs are never read):
    // the connection has no stream, so it idles out, and its GOAWAY cannot
    // be written either; it must still be closed.
    let b = backend();
    let gw = gateway(&b, "idle_timeout_ms: 1000");
    let mut c = H2::connect(gw.port);
    c.sock
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let batch = settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 65535)]).repeat(1000);
    let mut written = 0;
    while written < 4_000_000 && c.try_send(&batch) {
        written += 1000;
    }
    assert!(written < 4_000_000, "the gateway's writes never blocked");
    std::thread::sleep(Duration::from_secs(4));
    // Everything the gateway wrote, then the close.
    c.auto_ack = false;
    let closed = c.wait_closed(Duration::from_secs(10));
    assert!(closed, "the connection is still open");
    assert_responsive(gw.port, "/after");
}

#[test]
fn a_request_body_that_never_comes_is_timed_out() {
    // Slowloris on a stream: HEADERS announcing a body, then nothing. The
    // pipeline's body read timeout (2 s in LIMITS) answers it.
    let b = backend();
    let gw = gateway(&b, "");
    let mut c = H2::connect(gw.port);
    let mut h = open_post("/slow-body");
    h.push(("content-length", "10"));
    c.request(1, &h, false);
    c.send(&frame(DATA, 0, 1, b"abc"));
    let started = Instant::now();
    let a = c.answer(1, Duration::from_secs(10));
    let waited = started.elapsed();
    eprintln!(
        "body never came: status {:?}, reset {:?} after {waited:?}",
        a.status(),
        a.reset
    );
    assert!(
        a.status() == Some(408) || a.reset.is_some(),
        "not timed out: {a:?}"
    );
    assert!(waited >= Duration::from_millis(1500), "after {waited:?}");
    assert!(waited < Duration::from_secs(8), "after {waited:?}");
    assert_eq!(b.count(), 0, "an incomplete body reached the upstream");
    assert_responsive(gw.port, "/after");
}

#[test]
fn a_header_block_that_never_ends_is_closed() {
    // HEADERS without END_HEADERS, then nothing: no stream is ever
    // accepted, so the connection idles out and is closed.
    let b = backend();
    let gw = gateway(&b, "idle_timeout_ms: 1000");
    let mut c = H2::connect(gw.port);
    c.send(&frame(HEADERS, 0, 1, &block(&get_headers("/never"))));
    let started = Instant::now();
    assert!(c.wait_closed(Duration::from_secs(10)), "still open");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(b.count(), 0);
    assert_responsive(gw.port, "/after");
}
