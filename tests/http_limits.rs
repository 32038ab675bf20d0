//! Malformed and oversized requests, and client-side timeouts.

mod common;

use common::*;
use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

fn gateway(backend: &Backend) -> Gateway {
    Gateway::start(&config(
        2,
        &upstream("app", &[&backend.addr()], ""),
        &catch_all("app"),
    ))
}

/// Sends `raw` in one write and expects a JSON error with `status` followed
/// by the connection being closed; the backend must see nothing.
#[track_caller]
fn expect_rejected_and_closed(gw: &Gateway, backend: &Backend, raw: &[u8], status: u16) {
    let mut c = Client::connect(gw.port);
    c.send(raw);
    let r = c.try_read_response(false).unwrap_or_else(|e| {
        panic!(
            "no {status} response for {:?}: {e}",
            String::from_utf8_lossy(raw)
        )
    });
    assert_json_error(&r, status);
    assert!(
        c.wait_closed(Duration::from_secs(5)).is_some(),
        "connection left open after {status} for {:?}",
        String::from_utf8_lossy(raw)
    );
    // Give a (wrongly) forwarded request time to show up.
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        backend.count(),
        0,
        "rejected request reached the backend: {:?}",
        backend.requests()
    );
}

#[test]
fn garbage_request_line_gives_400_and_close() {
    let backend = Backend::echo("b");
    let gw = gateway(&backend);
    expect_rejected_and_closed(
        &gw,
        &backend,
        b"@@@ garbage @@@\r\nHost: localhost\r\n\r\n",
        400,
    );
    expect_rejected_and_closed(&gw, &backend, b"\x00\x01\x02 binary junk\r\n\r\n", 400);
    // The gateway still serves well-formed requests.
    assert_eq!(get(gw.port, "/fine").status, 200);
}

#[test]
fn content_length_with_transfer_encoding_gives_400() {
    let backend = Backend::echo("b");
    let gw = gateway(&backend);
    let raw = b"POST /smuggle HTTP/1.1\r\nHost: localhost\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    expect_rejected_and_closed(&gw, &backend, raw, 400);
    let raw = b"POST /smuggle HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n";
    expect_rejected_and_closed(&gw, &backend, raw, 400);
}

#[test]
fn conflicting_content_lengths_give_400() {
    let backend = Backend::echo("b");
    let gw = gateway(&backend);
    let raw = b"POST /cl HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
    expect_rejected_and_closed(&gw, &backend, raw, 400);
}

#[test]
fn invalid_chunk_size_gives_400() {
    let backend = Backend::echo("b");
    let gw = gateway(&backend);
    let raw = b"POST /chunk HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    expect_rejected_and_closed(&gw, &backend, raw, 400);
}

#[test]
fn oversized_head_gives_431() {
    let backend = Backend::echo("b");
    let gw = gateway(&backend);
    let big = "v".repeat(5000);
    let raw = build_request("GET", "/big-head", &[("X-Big", &big)], b"");
    let mut c = Client::connect(gw.port);
    c.send(&raw);
    assert_json_error(&c.read_response(), 431);

    // Long request line alone.
    let path = format!("/{}", "p".repeat(5000));
    let raw = build_request("GET", &path, &[], b"");
    let mut c = Client::connect(gw.port);
    c.send(&raw);
    assert_json_error(&c.read_response(), 431);
    assert_eq!(backend.count(), 0);

    // A head just under the limit is fine.
    let ok = "v".repeat(3000);
    let r = get_with(gw.port, "/big-ok", &[("X-Big", &ok)]);
    assert_eq!(r.status, 200);
    assert_eq!(backend.last().header("x-big"), Some(ok.as_str()));
}

#[test]
fn too_many_headers_give_431() {
    let backend = Backend::echo("b");
    let gw = gateway(&backend);
    let names: Vec<String> = (0..30).map(|i| format!("X-H{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let r = get_with(gw.port, "/many", &many);
    assert_json_error(&r, 431);
    assert_eq!(backend.count(), 0);

    // 15 fields plus Host is within max_headers = 20.
    let r = get_with(gw.port, "/some", &many[..15]);
    assert_eq!(r.status, 200);
    assert_eq!(backend.last().header("x-h14"), Some("1"));
}

#[test]
fn oversized_content_length_gives_413_without_reaching_the_backend() {
    let backend = Backend::echo("b");
    let gw = gateway(&backend);
    let mut c = Client::connect(gw.port);
    // Only the head is sent; the gateway must answer without waiting for the body.
    c.send(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2000000\r\n\r\n");
    let r = c.read_response();
    assert_json_error(&r, 413);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(backend.heads_seen(), 0, "413 request reached the backend");

    // Exactly max_body_bytes is accepted.
    let body = vec![b'x'; 1_048_576];
    let r = request(gw.port, "POST", "/upload", &[], &body);
    assert_eq!(r.status, 200);
    assert_eq!(backend.last().body_len, 1_048_576);
    assert_eq!(backend.last().checksum, checksum(&body));
}

#[test]
fn slowloris_head_is_cut_off() {
    let backend = Backend::echo("b");
    let gw = gateway(&backend);
    let mut c = Client::connect(gw.port);
    c.set_read_timeout(Duration::from_millis(300));
    let start = Instant::now();
    c.send(b"GET /slow HTTP/1.1\r\nHost: localhost\r\nX-Slow: ");
    let mut received = Vec::new();
    let mut closed_at = None;
    let mut buf = [0u8; 4096];
    while start.elapsed() < Duration::from_secs(8) {
        if c.stream().write_all(b"a").is_err() {
            closed_at = Some(start.elapsed());
            break;
        }
        match std::io::Read::read(c.stream(), &mut buf) {
            Ok(0) => {
                closed_at = Some(start.elapsed());
                break;
            }
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed_at = Some(start.elapsed());
                break;
            }
        }
    }
    let closed_at = closed_at.expect("slowloris connection still open after 8 s");
    assert!(
        closed_at < Duration::from_secs(4),
        "closed only after {closed_at:?} with header_read_timeout_ms = 1000"
    );
    if !received.is_empty() {
        let text = String::from_utf8_lossy(&received);
        assert!(
            text.starts_with("HTTP/1.1 408") || text.starts_with("HTTP/1.0 408"),
            "only a 408 may be sent before closing: {text:?}"
        );
    }
    assert_eq!(backend.heads_seen(), 0);
}

#[test]
fn idle_keep_alive_connection_is_closed() {
    let backend = Backend::echo("b");
    let gw = gateway(&backend);
    let mut c = Client::connect(gw.port);
    assert_eq!(c.get("/one").status, 200);
    thread::sleep(Duration::from_millis(300));
    // Still open a moment later: keep-alive works.
    assert_eq!(c.get("/two").status, 200);
    let start = Instant::now();
    let got = c.wait_closed(Duration::from_secs(8));
    let waited = start.elapsed();
    let got = got.expect("idle connection still open 8 s after idle_timeout_ms = 2000");
    assert!(
        waited < Duration::from_secs(6),
        "idle connection closed only after {waited:?}"
    );
    if !got.is_empty() {
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 408"),
            "unexpected bytes before idle close: {text:?}"
        );
    }
}

/// Random and mutated requests on raw sockets never take the gateway down:
/// after hundreds of them it still answers a good request correctly.
#[test]
fn garbage_and_mutated_requests_never_crash_the_gateway() {
    let backend = Backend::echo("b");
    let gw = Gateway::start(&config(
        2,
        &upstream("app", &[&backend.addr()], ""),
        &catch_all("app"),
    ));
    let valid = b"POST /p?q=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: 1\r\n\r\n".to_vec();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..300 {
        let bytes: Vec<u8> = if round % 3 == 0 {
            (0..(next() % 300)).map(|_| next() as u8).collect()
        } else {
            // Flip, drop or duplicate a few bytes of a valid chunked request.
            let mut v = valid.clone();
            for _ in 0..(1 + next() % 4) {
                let i = (next() as usize) % v.len();
                match next() % 3 {
                    0 => v[i] = next() as u8,
                    1 => {
                        v.remove(i);
                    }
                    _ => v.insert(i, v[i]),
                }
            }
            v
        };
        if let Ok(mut c) = Client::try_connect(gw.port) {
            c.set_read_timeout(std::time::Duration::from_millis(300));
            let _ = c.try_send(&bytes);
            let _ = c.try_read_response(false);
        }
    }
    let r = get(gw.port, "/still-alive");
    assert_eq!(r.status, 200, "stderr:\n{}", gw.stderr());
    assert_eq!(r.text(), "b GET /still-alive");
}
