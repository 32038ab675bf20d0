//! A soak-test backend: a loopback HTTP/1.1 server with keep-alive that
//! answers every request with a small JSON document naming its service and
//! the path it was asked for. One process per backend, so that the script can
//! kill one and start it again.
//!
//! Once listening it writes its pid to `--pidfile` (the script's readiness
//! signal). It ends with the script (`--parent`) or after `--max-secs`.

use shardgate_soak::{watchdog, Args};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

const USAGE: &str = "usage: soak-backend --port PORT --name users|orders|products \
                     [--pidfile FILE] [--parent PID] [--max-secs N]";

fn main() {
    let args = Args::parse(USAGE);
    let port: u16 = args.get("port", None, USAGE);
    let name: String = args.get("name", None, USAGE);
    watchdog(
        args.get("parent", Some(0), USAGE),
        args.get("max-secs", Some(7200), USAGE),
    );
    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("soak-backend {name}: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    if let Some(file) = args.text("pidfile") {
        let tmp = format!("{file}.tmp");
        let written = std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, file));
        if let Err(e) = written {
            eprintln!("soak-backend {name}: cannot write {file}: {e}");
            std::process::exit(1);
        }
    }
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let name = name.clone();
        std::thread::spawn(move || serve(stream, &name));
    }
}

/// Serves one connection until the peer closes it, asks to, or sends
/// something this server does not handle (request bodies other than
/// `Content-Length` ones, oversized heads).
fn serve(mut s: TcpStream, name: &str) {
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 * 1024 {
                return;
            }
            match s.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let path = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("/")
            .to_string();
        let mut body_len = 0usize;
        let mut close = false;
        for line in lines {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => match v.parse() {
                    Ok(n) => body_len = n,
                    Err(_) => return,
                },
                "transfer-encoding" => return,
                "connection" if v.contains("close") => close = true,
                _ => {}
            }
        }
        while buf.len() < head_end + body_len {
            match s.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
        buf.drain(..head_end + body_len);
        let body = answer(name, &path);
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" },
        );
        if s.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

fn answer(name: &str, path: &str) -> String {
    let mut p = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '"' | '\\' => {
                p.push('\\');
                p.push(c);
            }
            c if u32::from(c) < 0x20 => p.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => p.push(c),
        }
    }
    let id = p
        .split('?')
        .next()
        .and_then(|s| s.rsplit('/').next())
        .unwrap_or("");
    match name {
        "users" => format!(
            r#"{{"service":"users","path":"{p}","id":"{id}","name":"user-{id}","email":"user-{id}@example.com"}}"#
        ),
        "orders" => format!(
            r#"{{"service":"orders","path":"{p}","orders":[{{"id":"o-1001","product_id":"p-2","total":42.5,"status":"shipped"}},{{"id":"o-1002","product_id":"p-1","total":7.0,"status":"open"}}]}}"#
        ),
        _ => format!(
            r#"{{"service":"{name}","path":"{p}","products":[{{"id":"p-1","name":"keyboard","price":49}},{{"id":"p-2","name":"mouse","price":19}}]}}"#
        ),
    }
}
