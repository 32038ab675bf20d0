//! The admin listener's HTTP/1.1: one thread per connection (a few at a
//! time), `GET`/`HEAD` (and `POST /cache/purge`), one request per connection.

use super::{route, Answer, Hub};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Admin connections served at once; more are answered 503 at once.
const MAX_CONNECTIONS: usize = 16;
/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Time allowed to read the head and to write the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts admin connections until the process exits.
pub fn serve(listener: TcpListener, hub: Arc<Hub>) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
            let busy = Answer::text(
                503,
                "application/json",
                &b"{\"error\":\"too many admin connections\"}"[..],
            );
            let _ = write_answer(&mut stream, &busy, false);
            continue;
        }
        let hub = hub.clone();
        let active = active.clone();
        let spawned = std::thread::Builder::new()
            .name("shardgate-admin-conn".into())
            .spawn(move || {
                handle(stream, &hub);
                active.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            eprintln!("shardgate: admin: cannot start a connection thread");
        }
    }
}

fn handle(mut stream: TcpStream, hub: &Hub) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let Some(head) = read_head(&mut stream) else {
        return;
    };
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let answer = match method {
        "GET" | "HEAD" => route(hub, target),
        "POST" if target.split('?').next() == Some("/cache/purge") => super::purge(hub, target),
        _ => Answer::text(
            405,
            "application/json",
            &b"{\"error\":\"the admin API answers GET and HEAD\"}"[..],
        ),
    };
    let _ = write_answer(&mut stream, &answer, method == "HEAD");
}

fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(chunk.get(..n)?);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return String::from_utf8(buf).ok();
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
    }
}

fn write_answer(stream: &mut TcpStream, a: &Answer, head_only: bool) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        a.status,
        crate::error::reason_phrase(a.status),
        a.content_type,
        a.body.len()
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(&a.body)?;
    }
    stream.flush()
}
