//! Floors for the plain-proxy benchmark: the least a proxy on monoio can do
//! per request, run by `scripts/bench.sh` as the `monoio-relay` and
//! `monoio-http` targets beside the gateway and HAProxy's TCP relay.
//!
//! - `relay`: bytes copied both ways between each client connection and its
//!   own upstream connection, no HTTP at all (what HAProxy's `mode tcp`
//!   does, on monoio instead of epoll);
//! - `http`: a keep-alive HTTP/1.1 proxy with nothing but what framing
//!   needs: it parses the request head and the response head (httparse),
//!   forwards both heads as they came, the request's `Content-Length` body
//!   and the response's `Content-Length` body (no chunked, no routing, no
//!   header rewriting, no timeouts), over one upstream connection per
//!   client connection.
//! - `duplex`: the same HTTP work, but each read is posted with the write
//!   before it: the upstream's answer is read while the request is still
//!   being written, the client's next request while the answer is (whole
//!   messages only; for comparing the order of operations);
//!   `duplex-up` and `duplex-client` overlap one side only, and
//!   `duplex-cancel` is `duplex` with the client's read registered with a
//!   monoio `Canceller`, as the gateway's idle-aware read is.
//!
//! All run one thread with the runtime the gateway's shards use (io_uring,
//! SINGLE_ISSUER + DEFER_TASKRUN, 1,024 entries). Subtracting the rows of
//! one run tells what the runtime costs (`monoio-relay` against
//! `haproxy-tcp`), what the least HTTP work costs (`monoio-http` against
//! `monoio-relay`) and what the gateway's own work costs (`shardgate`
//! against `monoio-http`).
//!
//! Usage: `floor_proxy relay|http|duplex|duplex-up|duplex-client|duplex-cancel|uring[+fixed][+pollfirst][+multishot][+early] LISTEN_ADDR UPSTREAM_ADDR` (under
//! `cargo bench` without arguments it prints this and exits).

use std::net::SocketAddr;

use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent,
    Canceller, Splitable,
};
use monoio::net::{TcpListener, TcpStream};

#[path = "floor_uring.rs"]
mod uring;

const BUF: usize = 16 * 1024;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let (Some(mode), Some(listen), Some(upstream)) = (args.first(), args.get(1), args.get(2))
    else {
        eprintln!("usage: floor_proxy relay|http|duplex|duplex-up|duplex-client|duplex-cancel|uring[+fixed][+pollfirst][+multishot][+early] LISTEN_ADDR UPSTREAM_ADDR");
        return;
    };
    let (Ok(listen), Ok(upstream)) = (listen.parse::<SocketAddr>(), upstream.parse()) else {
        eprintln!("floor_proxy: addresses are IP:PORT");
        std::process::exit(2);
    };
    if let Some(features) = uring::Features::parse(mode) {
        if let Err(e) = uring::run(features, listen, upstream) {
            eprintln!("floor_proxy: {mode}: {e}");
            std::process::exit(1);
        }
        return;
    }
    let kind = match mode.as_str() {
        "relay" => 0,
        "http" => 1,
        "duplex" => 2,
        "duplex-up" => 3,
        "duplex-client" => 4,
        "duplex-cancel" => 5,
        other => {
            eprintln!("floor_proxy: unknown mode {other:?}");
            std::process::exit(2);
        }
    };
    let mut setup = io_uring::IoUring::builder();
    setup.setup_single_issuer().setup_defer_taskrun();
    let runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .with_entries(1024)
        .uring_builder(setup)
        .build();
    let mut runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("floor_proxy: io_uring runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::bind(listen) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("floor_proxy: bind {listen}: {e}");
                std::process::exit(1);
            }
        };
        eprintln!("floor_proxy {mode} listening on {listen}");
        while let Ok((client, _)) = listener.accept().await {
            let _ = client.set_nodelay(true);
            match kind {
                0 => drop(monoio::spawn(relay(client, upstream))),
                1 => drop(monoio::spawn(proxy_http(client, upstream))),
                _ => {
                    let early = Early {
                        up: kind != 4,
                        client: kind != 3,
                        cancelable: kind == 5,
                    };
                    drop(monoio::spawn(proxy_duplex(client, upstream, early)))
                }
            }
        }
    });
}

async fn relay(client: TcpStream, upstream: SocketAddr) {
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let (mut client_in, mut client_out) = client.into_split();
    let (mut up_in, mut up_out) = up.into_split();
    let requests = monoio::spawn(async move {
        let _ = monoio::io::copy(&mut client_in, &mut up_out).await;
        let _ = up_out.shutdown().await;
    });
    let _ = monoio::io::copy(&mut up_in, &mut client_out).await;
    let _ = client_out.shutdown().await;
    requests.await;
}

/// A connection's bytes read and not yet consumed.
struct Side {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Side {
    fn new(stream: TcpStream) -> Self {
        Side {
            stream,
            buf: Vec::with_capacity(BUF),
        }
    }

    /// Reads more; false at end of stream or on an error.
    async fn fill(&mut self) -> bool {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(BUF);
        }
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let cap = buf.capacity();
        let (res, slice) = self
            .stream
            .read(monoio::buf::IoBufMut::slice_mut(buf, len..cap))
            .await;
        self.buf = slice.into_inner();
        matches!(res, Ok(n) if n > 0)
    }

    /// Writes the first `n` buffered bytes to `dst` and drops them from here.
    async fn pass(&mut self, n: usize, dst: &mut TcpStream) -> bool {
        let buf = std::mem::take(&mut self.buf);
        let (res, slice) = dst.write_all(monoio::buf::IoBuf::slice(buf, 0..n)).await;
        self.buf = slice.into_inner();
        self.buf.drain(..n);
        res.is_ok()
    }

    /// Forwards a `len`-byte body that follows, part of it maybe buffered.
    async fn pass_body(&mut self, mut len: usize, dst: &mut TcpStream) -> bool {
        while len > 0 {
            if self.buf.is_empty() && !self.fill().await {
                return false;
            }
            let n = len.min(self.buf.len());
            if !self.pass(n, dst).await {
                return false;
            }
            len -= n;
        }
        true
    }
}

/// A head's length and its `Content-Length` (0 without one); `None` while
/// it is incomplete; `Err` when malformed or framed otherwise.
fn head(buf: &[u8], request: bool) -> Result<Option<(usize, usize)>, ()> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let status = if request {
        httparse::Request::new(&mut fields).parse(buf)
    } else {
        httparse::Response::new(&mut fields).parse(buf)
    };
    let n = match status {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let mut length = 0;
    for f in fields.iter().take_while(|f| !f.name.is_empty()) {
        if f.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(());
        }
        if f.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(f.value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or(())?;
        }
    }
    Ok(Some((n, length)))
}

/// One message (head and body) from `src` to `dst`.
async fn pass_message(src: &mut Side, dst: &mut TcpStream, request: bool) -> bool {
    loop {
        match head(&src.buf, request) {
            Ok(Some((n, body))) => return src.pass(n, dst).await && src.pass_body(body, dst).await,
            Ok(None) if src.fill().await => {}
            _ => return false,
        }
    }
}

async fn proxy_http(client: TcpStream, upstream: SocketAddr) {
    let mut client = Side::new(client);
    let mut up: Option<Side> = None;
    loop {
        if client.buf.is_empty() && !client.fill().await {
            return;
        }
        if up.is_none() {
            let Ok(s) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = s.set_nodelay(true);
            up = Some(Side::new(s));
        }
        let Some(u) = up.as_mut() else {
            return;
        };
        if !pass_message(&mut client, &mut u.stream, true).await
            || !pass_message(u, &mut client.stream, false).await
        {
            return;
        }
    }
}

/// Reads more into `buf` (from its end), registered with `cancel` when
/// given; false at end of stream or on an error.
async fn read_into<R: CancelableAsyncReadRent>(
    src: &mut R,
    mut buf: Vec<u8>,
    cancel: Option<CancelHandle>,
) -> (bool, Vec<u8>) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(BUF);
    }
    let len = buf.len();
    let cap = buf.capacity();
    let space = monoio::buf::IoBufMut::slice_mut(buf, len..cap);
    let (res, slice) = match cancel {
        Some(c) => src.cancelable_read(space, c).await,
        None => src.read(space).await,
    };
    (matches!(res, Ok(n) if n > 0), slice.into_inner())
}

/// The length of the whole message (head and `Content-Length` body) at the
/// start of `buf`, reading until it is all there.
async fn whole_message<R: CancelableAsyncReadRent>(
    src: &mut R,
    buf: &mut Vec<u8>,
    request: bool,
) -> Option<usize> {
    loop {
        match head(buf, request) {
            Ok(Some((n, body))) if buf.len() >= n + body => return Some(n + body),
            Ok(_) => {
                let (ok, b) = read_into(src, std::mem::take(buf), None).await;
                *buf = b;
                if !ok {
                    return None;
                }
            }
            Err(()) => return None,
        }
    }
}

/// Which reads `proxy_duplex` posts with the write before them.
#[derive(Clone, Copy)]
struct Early {
    up: bool,
    client: bool,
    /// The client's read is registered with a canceller (never cancelled).
    cancelable: bool,
}

async fn proxy_duplex(client: TcpStream, upstream: SocketAddr, early: Early) {
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let canceller = Canceller::new();
    let _ = up.set_nodelay(true);
    let (mut client_in, mut client_out) = client.into_split();
    let (mut up_in, mut up_out) = up.into_split();
    let mut from_client = Vec::with_capacity(BUF);
    let mut from_up: Vec<u8> = Vec::with_capacity(BUF);
    loop {
        let Some(n) = whole_message(&mut client_in, &mut from_client, true).await else {
            return;
        };
        let request = monoio::buf::IoBuf::slice(from_client, 0..n);
        let sent = if early.up {
            let ((sent, out), (_, back)) = monoio::join!(
                up_out.write_all(request),
                read_into(&mut up_in, std::mem::take(&mut from_up), None)
            );
            from_client = out.into_inner();
            from_up = back;
            sent
        } else {
            let (sent, out) = up_out.write_all(request).await;
            from_client = out.into_inner();
            sent
        };
        from_client.drain(..n);
        if sent.is_err() {
            return;
        }
        let Some(m) = whole_message(&mut up_in, &mut from_up, false).await else {
            return;
        };
        let answer = monoio::buf::IoBuf::slice(std::mem::take(&mut from_up), 0..m);
        if early.client && from_client.is_empty() {
            let cancel = early.cancelable.then(|| canceller.handle());
            let ((sent, out), (more, next)) = monoio::join!(
                client_out.write_all(answer),
                read_into(&mut client_in, std::mem::take(&mut from_client), cancel)
            );
            from_up = out.into_inner();
            from_client = next;
            if sent.is_err() || !more {
                return;
            }
        } else {
            let (sent, out) = client_out.write_all(answer).await;
            from_up = out.into_inner();
            if sent.is_err() {
                return;
            }
        }
        from_up.drain(..m);
    }
}
