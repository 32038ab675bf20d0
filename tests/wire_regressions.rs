//! Regression tests for what the wire fuzzer (`scripts/fuzz-wire.sh`) found,
//! each reduced to a deterministic exchange on raw sockets.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// An upstream that reads a request head, answers `answer` at once without
/// reading the body, and keeps the connection open for `hold`.
fn early_answering_upstream(answer: &'static [u8], hold: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut s = s;
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                while find(&buf, b"\r\n\r\n").is_none() {
                    match s.read(&mut tmp) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                let _ = s.write_all(answer);
                thread::sleep(hold);
            });
        }
    });
    addr
}

/// Reads until the peer closes or `limit` passes; returns the bytes and how
/// long it took.
fn read_for(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut tmp = [0u8; 4096];
    while start.elapsed() < limit {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        match s.read(&mut tmp) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&tmp[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if find(&out, b"\r\n\r\n{").is_some() && out.ends_with(b"}") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    (out, start.elapsed())
}

/// An upstream that answers garbage before reading the body of an
/// `Expect: 100-continue` request whose body arrives in two writes: the
/// gateway must answer 502 promptly. It waited `body_read_timeout_ms`
/// instead, draining body bytes it had already read (the body copy is
/// dropped when the early answer wins, with the bytes it held); under load
/// the same path panicked in `Conn::compact` (found by the wire fuzzer).
#[test]
fn early_garbage_answer_with_a_body_in_flight_is_answered_at_once() {
    let up = early_answering_upstream(b"NOT HTTP AT ALL\r\n\r\n", Duration::from_secs(10));
    let cfg = format!(
        "Gateway(\n    shards: Count(1),\n    listeners: [Listener(name: \"main\", bind: \"127.0.0.1:$PORT\")],\n    \
         limits_http: HttpLimits(body_read_timeout_ms: 8000, header_read_timeout_ms: 8000),\n    \
         upstreams: {{ \"app\": Upstream(targets: [\"{up}\"], timeout_ms: 8000) }},\n    \
         routes: [{}],\n)\n",
        catch_all("app").trim().trim_end_matches(',')
    );
    let gw = Gateway::start(&cfg);
    for round in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
        s.set_nodelay(true).unwrap();
        let body = vec![b'x'; 989];
        let mut first = b"POST /b HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 989\r\n\r\n".to_vec();
        first.extend_from_slice(&body[..100]);
        s.write_all(&first).unwrap();
        thread::sleep(Duration::from_millis(50));
        let _ = s.write_all(&body[100..]);
        let (got, took) = read_for(&mut s, Duration::from_secs(12));
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.contains("HTTP/1.1 502"),
            "round {round}: no 502 within {took:?}; got {text:?}"
        );
        // Well before the 8 s body timeout, which only a wait for bytes
        // that never come would reach.
        assert!(
            took < Duration::from_secs(6),
            "round {round}: the 502 took {took:?} (the gateway waited out its body timeout)"
        );
    }
    assert!(
        !gw.stderr().contains("panic"),
        "the gateway panicked:\n{}",
        gw.stderr()
    );
}
