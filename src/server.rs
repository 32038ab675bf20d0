//! The client side of a shard: the accept loop and the per-connection loop
//! (read a head, run the pipeline, answer errors, keep-alive or close).

use crate::error::GatewayError;
use crate::http::io::{wait_readable_until, IoFail};
use crate::http::timer::{self, coarse_now};
use crate::http::{Conn, Framing, HeadError, Parsed, RequestHead};
use crate::out_of_line;
use crate::pipeline;
use crate::proxy::{Disposition, Exchange};
use crate::shard::{ConnectionSlot, Shard};
use monoio::io::Canceller;
use monoio::net::{TcpListener, TcpStream};
use std::cell::RefCell;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// How long a closing connection keeps draining what the client still sends.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes drained while lingering.
const LINGER_BYTES: usize = 1 << 20;
/// How long a connection waiting for its next request keeps its read
/// buffer; then it waits without one (see `serve_connection`).
const IDLE_BUFFER_GRACE: Duration = Duration::from_millis(250);
/// An unread request body up to this size is drained to keep the connection.
const DRAIN_BODY_MAX: u64 = 64 * 1024;

/// Accepts connections on one listener until the shard shuts down; a panic
/// in the loop is logged and the loop started again on the same socket.
pub async fn accept_loop(shard: Rc<Shard>, listener_idx: usize, listener: TcpListener) {
    let id = shard.id;
    while let Err(why) = contain(accept_on(shard.clone(), listener_idx, &listener)).await {
        eprintln!("shardgate: shard {id}: accept loop panicked: {why}; restarted");
    }
}

/// Polls `fut`, turning a panic inside it into `Err` with the panic's
/// message. The future is dropped at the panic (its sockets close), and
/// nothing else on the shard is disturbed.
pub async fn contain<T>(fut: impl Future<Output = T>) -> Result<T, String> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()).to_string())),
        }
    })
    .await
}

/// The message of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown cause")
}

/// Pause after a failed `accept` (EMFILE, ENFILE, ENOBUFS, ...). The pending
/// connection stays in the kernel's queue and is tried again after it, so the
/// loop neither spins nor drops it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts on one listener: admits each connection into the shard's share of
/// the listener's `max_connections` (or closes it at once, counted), and
/// backs off after a failed accept. Each kind of trouble is logged once when
/// it starts and once when it ends, never per connection.
async fn accept_on(shard: Rc<Shard>, listener_idx: usize, listener: &TcpListener) {
    let id = shard.id;
    let name = shard
        .config()
        .compiled
        .listeners
        .get(listener_idx)
        .map_or_else(String::new, |l| l.name.clone());
    // Refusals and failed accepts in the current run of them.
    let (mut refusing, mut failing) = (0u64, 0u64);
    loop {
        let canceller = Canceller::new();
        let accept = listener.cancelable_accept(canceller.handle());
        let mut accept = std::pin::pin!(accept);
        let accepted = monoio::select! {
            r = &mut accept => r,
            _ = shard.shutdown.wait() => {
                canceller.cancel();
                // A connection that raced the shutdown is still served.
                if let Ok((s, peer)) = accept.await {
                    if let Ok(slot) = shard.admit(listener_idx) {
                        monoio::spawn(serve_admitted(slot, shard.clone(), listener_idx, s, peer));
                    }
                }
                return;
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                if failing > 0 {
                    eprintln!("shardgate: shard {id}: listener {name}: accepting again after {failing} failed accept(s)");
                    failing = 0;
                }
                match shard.admit(listener_idx) {
                    Ok(slot) => {
                        if refusing > 0 {
                            eprintln!("shardgate: shard {id}: listener {name}: admitting again after refusing {refusing} connection(s)");
                            refusing = 0;
                        }
                        monoio::spawn(serve_admitted(
                            slot,
                            shard.clone(),
                            listener_idx,
                            stream,
                            peer,
                        ));
                    }
                    Err(share) => {
                        if refusing == 0 {
                            eprintln!("shardgate: shard {id}: listener {name}: all {share} connection(s) of this shard's max_connections share open; closing new ones at once until one ends");
                        }
                        refusing += 1;
                        drop(stream);
                    }
                }
            }
            // A connection reset before it was taken: nothing is short.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                shard.count_accept_error(listener_idx);
                if failing == 0 {
                    eprintln!("shardgate: shard {id}: listener {name}: accept failed: {e}; retrying every {} ms until it works", ACCEPT_BACKOFF.as_millis());
                }
                failing += 1;
                monoio::select! {
                    _ = monoio::time::sleep(ACCEPT_BACKOFF) => {}
                    _ = shard.shutdown.wait() => return,
                }
            }
        }
    }
}

/// Counts something for as long as it lives.
struct Counted<'a>(&'a std::cell::Cell<usize>);

impl<'a> Counted<'a> {
    fn new(c: &'a std::cell::Cell<usize>) -> Self {
        c.set(c.get() + 1);
        Counted(c)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

enum HeadRead {
    Head(RequestHead),
    /// No byte came within the grace ([`IDLE_BUFFER_GRACE`]).
    Quiet,
    Closed,
    Refused(GatewayError),
    /// The HTTP/2 connection preface (on a listener that speaks h2c).
    H2,
}

/// Serves an admitted connection with its panics contained: a bug met
/// while serving it ends this connection only (logged with the request id),
/// never the shard's other connections. Its slot is given back when it
/// ends. (One async function, not one around another: each level is a
/// place in the connection's task that every poll of it reads.)
async fn serve_admitted(
    slot: ConnectionSlot,
    shard: Rc<Shard>,
    listener: usize,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _slot = slot;
    let current = RefCell::new(String::new());
    let id = shard.id;
    // Boxed: `contain` would otherwise hold the connection's future twice.
    let serve = Box::pin(serve_connection(shard, listener, stream, peer, &current));
    if let Err(why) = contain(serve).await {
        let request = current.take();
        eprintln!(
            "shardgate: shard {id}: panic while serving request {request:?}: {why}; connection closed"
        );
    }
}

/// Serves one client connection until it closes; `current` holds the id of
/// the request being served, for the panic log.
///
/// A connection alternates between two phases. Busy, it reads and serves
/// requests, with a read buffer and the exchange's state, both on the heap
/// for that phase only. Once no request has come for [`IDLE_BUFFER_GRACE`],
/// it gives them back and waits, idle, for the socket to become readable,
/// holding only its socket and this small task — unless it is one of the
/// shard's [`crate::http::conn::HELD_READS`], which wait with a plain read
/// and keep them (see [`Conn::fill_unless_quiet`]).
pub async fn serve_connection(
    shard: Rc<Shard>,
    listener: usize,
    stream: TcpStream,
    peer: SocketAddr,
    current: &RefCell<String>,
) {
    let _ = stream.set_nodelay(true);
    let _conn_count = Counted::new(&shard.connections);
    let capacity =
        (shard.config().compiled.limits_of(listener).max_header_bytes + 1024).max(16 * 1024);
    let tls = shard
        .config()
        .compiled
        .listeners
        .get(listener)
        .and_then(|l| l.tls.clone());
    let h2 = shard
        .config()
        .compiled
        .listeners
        .get(listener)
        .is_some_and(|l| l.http2.is_some());
    let mut conn = match tls {
        None => Conn::new(stream, capacity),
        // Boxed: the handshake's state (a whole rustls session) would
        // otherwise be part of every connection's future, plain ones too.
        Some(tls) => {
            match Box::pin(crate::tls::accept(&tls, stream, shard.shutdown.wait())).await {
                Ok(s) => Conn::with_stream(crate::tls::Stream::Tls(Box::new(s)), capacity),
                Err(_) => return,
            }
        }
    };
    let alpn_h2 = |c: &Conn| {
        let tls = c.stream.tls();
        tls.is_some_and(|t| t.session().alpn_protocol() == Some(b"h2"))
    };
    if h2 && alpn_h2(&conn) {
        return serve_h2(&shard, listener, peer, conn).await;
    }
    loop {
        let busy = Box::pin(serve_busy(&shard, listener, peer, &mut conn, current));
        match busy.await {
            Busy::Quiet => {}
            Busy::Closed => return,
            Busy::H2 => return serve_h2(&shard, listener, peer, conn).await,
        }
        let idle = shard.config().compiled.limits_of(listener).idle_timeout;
        let Some(tcp) = conn.stream.tcp() else {
            return;
        };
        let _idle = Counted::new(&shard.idle_connections);
        // One wheel entry (about 40 bytes) rather than a runtime `Sleep`
        // (640) in every idle connection's task.
        // The grace was the first part of the idle timeout.
        let left = idle.saturating_sub(IDLE_BUFFER_GRACE);
        let woken = wait_readable_until(tcp, timer::sleep(left), shard.shutdown.wait()).await;
        if woken.is_err() {
            return;
        }
    }
}

/// Serves an HTTP/2 connection (h2c after its preface was seen, with
/// `buffered` the bytes read so far, or h2 chosen by ALPN): each stream runs
/// the pipeline as one HTTP/1.1 exchange ([`crate::h2::bridge`]) on its own
/// task on this shard, with the listener's HTTP/2 limits. The connection
/// drains (GOAWAY) on reload and shutdown.
/// Boxed: its state stays out of every connection's future.
fn serve_h2<'a>(
    shard: &'a Rc<Shard>,
    listener: usize,
    peer: SocketAddr,
    conn: Conn,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + 'a>> {
    let (stream, buffered) = conn.into_parts();
    Box::pin(serve_h2_connection(shard, listener, peer, stream, buffered))
}

async fn serve_h2_connection(
    shard: &Rc<Shard>,
    listener: usize,
    peer: SocketAddr,
    stream: crate::tls::Stream,
    buffered: Vec<u8>,
) {
    let Some(limits) = shard
        .config()
        .compiled
        .listeners
        .get(listener)
        .and_then(|l| l.http2.clone())
    else {
        return;
    };
    let _open = Counted::new(&shard.h2_connections);
    let certs: Option<crate::h2::bridge::PeerCerts> =
        stream.peer_certificates().map(|c| c.to_vec().into());
    let drain = shard.h2_drain();
    let for_streams = shard.clone();
    let handler = Rc::new(move |request, responder| {
        let shard = for_streams.clone();
        let certs = certs.clone();
        // Boxed once here: the stream's task is then moved as a pointer.
        Box::pin(serve_h2_stream(
            shard, listener, peer, request, responder, certs,
        ))
    });
    let buffered = bytes::Bytes::from(buffered);
    let _ = crate::h2::serve_h2c(stream, buffered, &limits, drain, handler).await;
}

/// Serves one HTTP/2 stream through the pipeline, as an HTTP/1.1 exchange.
async fn serve_h2_stream(
    shard: Rc<Shard>,
    listener: usize,
    peer: SocketAddr,
    request: http::Request<crate::h2::RecvBody>,
    responder: crate::h2::Responder,
    certs: Option<crate::h2::bridge::PeerCerts>,
) {
    shard.h2_streams.set(shard.h2_streams.get() + 1);
    let Some(stream) = crate::h2::bridge::H2Stream::new(request, responder, certs) else {
        return;
    };
    let capacity =
        (shard.config().compiled.limits_of(listener).max_header_bytes + 1024).max(16 * 1024);
    let mut conn = Conn::with_stream(crate::tls::Stream::H2(Box::new(stream)), capacity);
    let current = RefCell::new(String::new());
    // Boxed: the stream's task future stays small, so spawning it moves a
    // few hundred bytes, not the whole pipeline's state.
    let busy = Box::pin(serve_busy(&shard, listener, peer, &mut conn, &current));
    let _ = busy.await;
    if let Some(s) = conn.stream.h2() {
        s.close();
    }
}

/// How a connection's busy phase ended.
enum Busy {
    /// No request came within the grace: the read buffer was given back.
    Quiet,
    /// The connection is done.
    Closed,
    /// The client sent the HTTP/2 preface, on a listener with `http2`.
    H2,
}

/// The client's address, and its text as every forwarded head carries it
/// (made once per busy phase, not per request).
struct Client {
    ip: IpAddr,
    ip_text: Vec<u8>,
}

impl Client {
    fn of(peer: SocketAddr) -> Client {
        let mut ip_text = Vec::new();
        crate::observe::push_ip(&mut ip_text, peer.ip());
        Client {
            ip: peer.ip(),
            ip_text,
        }
    }
}

/// Reads and serves requests on `conn` until it closes, goes quiet, or
/// turns out to be HTTP/2.
async fn serve_busy(
    shard: &Rc<Shard>,
    listener: usize,
    peer: SocketAddr,
    conn: &mut Conn,
    current: &RefCell<String>,
) -> Busy {
    let client = Client::of(peer);
    loop {
        // Copied, so that a connection waiting for its next request holds
        // no config: the one current when the head arrives serves it.
        let limits = shard.config().compiled.limits_of(listener).clone();
        let mut head = match read_head(shard, conn, &limits, listener).await {
            HeadRead::Head(h) => h,
            HeadRead::Quiet => return Busy::Quiet,
            HeadRead::Closed => return Busy::Closed,
            HeadRead::H2 => return Busy::H2,
            HeadRead::Refused(e) => {
                out_of_line(refuse_head(shard, conn, &e, &limits)).await;
                return Busy::Closed;
            }
        };
        let cfg = shard.config();
        let disposition =
            serve_request(shard, listener, &cfg, &client, &mut head, conn, current).await;
        if disposition == Disposition::Close || shard.shutdown.is_fired() {
            out_of_line(conn.linger(LINGER, LINGER_BYTES)).await;
            return Busy::Closed;
        }
    }
}

/// Answers a head that did not parse, then lets the connection linger.
async fn refuse_head(
    shard: &Shard,
    conn: &mut Conn,
    e: &GatewayError,
    limits: &crate::compiled::Limits,
) {
    let id = shard.next_request_id();
    // The head did not parse, but a HEAD request still gets no content.
    let head_request = conn.buffered().starts_with(b"HEAD ");
    let answer = error_answer(e, &id, None, false, head_request);
    let _ = conn.write(answer, limits.send_timeout).await;
    conn.linger(LINGER, LINGER_BYTES).await;
}

/// Serves one request whose head was read: runs the pipeline and answers
/// its error, if any; says whether the connection can be kept.
///
/// The request id stays borrowed from `current` across the request's
/// awaits: `current` is this connection's alone, written only here before
/// the borrow, and read by the panic log only once this future is gone.
#[allow(clippy::await_holding_refcell_ref)]
async fn serve_request(
    shard: &Rc<Shard>,
    listener: usize,
    cfg: &crate::shard::ShardConfig,
    client: &Client,
    head: &mut RequestHead,
    conn: &mut Conn,
    current: &RefCell<String>,
) -> Disposition {
    let limits = cfg.compiled.limits_of(listener);
    let started = Instant::now();
    let _in_flight = Counted::new(&shard.in_flight);
    // The id is written where the panic log finds it, and borrowed from
    // there for the request (nothing else writes it until the next one).
    {
        let mut id = current.borrow_mut();
        id.clear();
        match head.header("x-request-id").filter(|v| valid_request_id(v)) {
            Some(v) => id.push_str(&String::from_utf8_lossy(v)),
            None => shard.push_request_id(&mut id),
        }
    }
    let request_id = current.borrow();
    if shard.test_panic && head.header("x-shardgate-test-panic").is_some() {
        test_panic(shard, head);
    }
    let mut ex = Exchange {
        balance_key: None,
        body: None,
        cors_owned: false,
        cache: None,
        request_id: &request_id,
        client_ip: client.ip,
        client_ip_text: &client.ip_text,
        body_consumed: head.framing == Framing::None,
        response_started: false,
        limits,
        keep_alive: head.keep_alive,
        identity_headers: &cfg.compiled.auth.identity_headers,
        drop_authorization: false,
        upgrade: None,
        add_headers: Vec::new(),
        response_headers: cfg
            .compiled
            .listeners
            .get(listener)
            .map(|l| l.response_headers.clone())
            .unwrap_or_default(),
        seen: Default::default(),
        trace: crate::observe::trace::start(cfg.compiled.tracing.as_ref(), head).map(Box::new),
        body_edit: None,
    };
    let redirect = cfg
        .compiled
        .listeners
        .get(listener)
        .and_then(|l| l.redirect_https);
    let result = match redirect {
        Some(port) => out_of_line(redirect_https(conn, head, &mut ex, port)).await,
        None => pipeline::handle(shard, cfg, listener, head, conn, &mut ex).await,
    };
    // A request that ended with its upstream call ends at that call's end.
    let (disposition, ended) = match result {
        Ok(d) => (d, ex.seen.answered_at),
        Err(_) if ex.response_started => (Disposition::Close, None),
        Err(e) => {
            let answered = out_of_line(respond_error(shard, conn, head, &mut ex, &e));
            (answered.await, None)
        }
    };
    let took = ended
        .unwrap_or_else(Instant::now)
        .saturating_duration_since(started);
    finished(shard, cfg, listener, head, &ex, took);
    disposition
}

/// Answers `308 Permanent Redirect` to the same host and target over
/// https on `port` (the port is left out when it is 443). A request with a
/// body closes the connection after the answer, the body unread.
async fn redirect_https(
    conn: &mut Conn,
    head: &RequestHead,
    ex: &mut Exchange<'_>,
    port: u16,
) -> Result<Disposition, GatewayError> {
    let host = head
        .host_str()
        .map(host_without_port)
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or(GatewayError::BadRequest("a redirect to https needs a Host"))?;
    let keep = ex.keep_alive && head.framing == Framing::None;
    let mut out = Vec::with_capacity(160 + host.len() + head.target().len());
    out.extend_from_slice(b"HTTP/1.1 308 Permanent Redirect\r\nlocation: https://");
    out.extend_from_slice(host.as_bytes());
    if port != 443 {
        out.extend_from_slice(format!(":{port}").as_bytes());
    }
    out.extend_from_slice(head.target().as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: 0\r\nx-request-id: ");
    out.extend_from_slice(ex.request_id.as_bytes());
    out.extend_from_slice(if keep {
        b"\r\n\r\n".as_slice()
    } else {
        b"\r\nconnection: close\r\n\r\n".as_slice()
    });
    ex.seen.status = 308;
    ex.seen.bytes_out = out.len() as u64;
    ex.response_started = true;
    let (r, _) = conn.write(out, ex.limits.send_timeout).await;
    Ok(if keep && r.is_ok() {
        Disposition::KeepAlive
    } else {
        Disposition::Close
    })
}

/// `host` without its `:port` (an IPv6 literal keeps its brackets).
fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .find(']')
            .and_then(|end| host.get(..=end))
            .unwrap_or(host);
    }
    host.split_once(':').map_or(host, |(h, _)| h)
}

/// Accounts for a finished request: metrics, and (when configured) the
/// access log and the request's spans.
fn finished(
    shard: &Shard,
    cfg: &crate::shard::ShardConfig,
    listener: usize,
    head: &RequestHead,
    ex: &Exchange<'_>,
    took: Duration,
) {
    {
        let mut m = shard.metrics.borrow_mut();
        if m.enabled {
            let method = crate::metrics::Method::of(head.method());
            m.request(listener, ex.seen.route, method, ex.seen.status, took);
        }
    }
    crate::observe::finished(shard, cfg, listener, head, ex, took);
}

/// Sends the JSON error, first draining a small unread body so the connection can stay open.
async fn respond_error(
    shard: &Shard,
    conn: &mut Conn,
    head: &RequestHead,
    ex: &mut Exchange<'_>,
    e: &GatewayError,
) -> Disposition {
    let limits = ex.limits;
    let client_fault = matches!(
        e,
        GatewayError::BadRequest(_) | GatewayError::RequestTimeout | GatewayError::PayloadTooLarge
    );
    // `ex.keep_alive` starts as the client's wish and is cleared when the
    // exchange left the connection unusable (an early upstream answer).
    let mut keep = ex.keep_alive && !client_fault && !shard.shutdown.is_fired();
    if keep && !ex.body_consumed {
        keep = match head.framing {
            Framing::Length(n) if n <= DRAIN_BODY_MAX => {
                let lim = crate::http::body::CopyLimits {
                    read_timeout: limits.body_read_timeout,
                    write_timeout: limits.send_timeout,
                    max_bytes: DRAIN_BODY_MAX,
                    trailers: false,
                };
                crate::http::body::discard_body(conn, head.framing, lim)
                    .await
                    .is_ok()
            }
            _ => false,
        };
    }
    let trace_id = ex.trace.as_ref().map(|t| t.trace_id_hex());
    let mut answer = error_answer(
        e,
        ex.request_id,
        trace_id.as_deref(),
        keep,
        head.method() == "HEAD",
    );
    // The listener's and the stages' lines (HSTS, CORS) go on errors too.
    if !ex.response_headers.is_empty() {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let at = end + 2;
            answer.splice(at..at, ex.response_headers.bytes());
        }
    }
    ex.seen.status = e.status();
    ex.seen.bytes_out = answer.len() as u64;
    let (r, _) = conn.write(answer, limits.send_timeout).await;
    if keep && r.is_ok() {
        Disposition::KeepAlive
    } else {
        Disposition::Close
    }
}

/// The crash-isolation test hook (only with `SHARDGATE_TEST_PANIC=1`), by
/// the value of `x-shardgate-test-panic`:
/// - `gossip`: the shard's gossip loop panics at its next tick (contained
///   and restarted like the accept loops);
/// - `runtime`: a task without containment panics, which unwinds the whole
///   shard runtime, so the shard thread restarts the shard;
/// - anything else: this connection's task panics.
#[allow(clippy::panic)]
fn test_panic(shard: &Shard, head: &RequestHead) {
    let id = shard.id;
    match head.header("x-shardgate-test-panic") {
        Some(b"gossip") => shard.panic_next_tick.set(true),
        Some(b"runtime") => {
            monoio::spawn(async move { panic!("test panic in shard {id} outside any task guard") });
        }
        _ => panic!("test panic requested by the client"),
    }
}

/// The error's response; to a HEAD request, the same head without content
/// (RFC 9110 §9.3.2).
fn error_answer(
    e: &GatewayError,
    request_id: &str,
    trace_id: Option<&str>,
    keep: bool,
    head_request: bool,
) -> Vec<u8> {
    let mut answer = e.to_response_traced(request_id, trace_id, keep);
    if head_request {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            answer.truncate(end + 4);
        }
    }
    answer
}

/// A client-supplied request id is passed on if it is short visible ASCII.
fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_graphic())
}

/// The start of the HTTP/2 connection preface (`PRI * HTTP/2.0`), or a
/// prefix of it long enough to tell (prior knowledge h2c on this listener).
fn is_h2_preface(buf: &[u8]) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
    buf.len() >= 4
        && PREFACE.starts_with(buf.get(..PREFACE.len().min(buf.len())).unwrap_or_default())
}

async fn read_head(
    shard: &Shard,
    conn: &mut Conn,
    limits: &crate::compiled::Limits,
    listener: usize,
) -> HeadRead {
    let mut deadline: Option<Instant> = None;
    loop {
        if !conn.buffered().is_empty() {
            if is_h2_preface(conn.buffered()) {
                // Looked up only when the preface came: h2c on this listener?
                let cfg = shard.config();
                let listener = cfg.compiled.listeners.get(listener);
                let h2c = listener.is_some_and(|l| l.http2.is_some() && l.tls.is_none());
                return match h2c {
                    true => HeadRead::H2,
                    false => HeadRead::Refused(GatewayError::VersionNotSupported),
                };
            }
            match RequestHead::parse(conn.buffered(), limits.max_header_bytes, limits.max_headers) {
                Ok(Parsed::Complete(h, n)) => {
                    conn.consume(n);
                    return HeadRead::Head(h);
                }
                Ok(Parsed::Partial) => {}
                Err(HeadError::TooLarge | HeadError::TooManyHeaders) => {
                    return HeadRead::Refused(GatewayError::HeadersTooLarge)
                }
                Err(HeadError::Malformed(why)) => {
                    return HeadRead::Refused(GatewayError::BadRequest(why))
                }
                Err(HeadError::UnsupportedEncoding) => {
                    return HeadRead::Refused(GatewayError::NotImplemented(
                        "transfer coding other than chunked",
                    ))
                }
            }
            if deadline.is_none() {
                deadline = Some(coarse_now() + limits.header_read_timeout);
            }
        }
        let started = !conn.buffered().is_empty();
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(coarse_now()),
            None => limits.idle_timeout,
        };
        if wait.is_zero() {
            return HeadRead::Refused(GatewayError::RequestTimeout);
        }
        let res = if started {
            conn.fill(wait).await
        } else {
            match conn
                .fill_unless_quiet(wait, IDLE_BUFFER_GRACE, shard.shutdown.wait(), || {
                    Counted::new(&shard.idle_connections)
                })
                .await
            {
                Ok(Some(n)) => Ok(n),
                Ok(None) => return HeadRead::Quiet,
                Err(e) => Err(e),
            }
        };
        match res {
            Ok(0) | Err(IoFail::Io(_)) => return HeadRead::Closed,
            Ok(_) => {}
            Err(IoFail::Timeout) if started => {
                return HeadRead::Refused(GatewayError::RequestTimeout)
            }
            Err(IoFail::Timeout) => return HeadRead::Closed,
        }
    }
}

/// Bytes of the future an async function returns, given a closure calling it.
fn size_of_future<A, F: Future>(_: impl Fn(A) -> F) -> usize {
    std::mem::size_of::<F>()
}

/// Bytes of a client connection's task state (its futures), which it holds
/// for its whole life, idle or not; the busy phase's state is boxed apart
/// (see [`serve_connection`]).
pub fn connection_task_size() -> usize {
    let task = size_of_future(
        |(slot, shard, listener, stream, peer): (
            ConnectionSlot,
            Rc<Shard>,
            usize,
            TcpStream,
            SocketAddr,
        )| serve_admitted(slot, shard, listener, stream, peer),
    );
    let connection = size_of_future(
        |(shard, listener, stream, peer, current): (
            Rc<Shard>,
            usize,
            TcpStream,
            SocketAddr,
            &RefCell<String>,
        )| serve_connection(shard, listener, stream, peer, current),
    );
    task + connection
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of a busy connection's boxed state: the request path's
    /// futures, without the stages that run out of line
    /// ([`crate::out_of_line`]).
    fn busy_state_size() -> usize {
        size_of_future(
            |(shard, listener, peer, conn, current): (
                &Rc<Shard>,
                usize,
                SocketAddr,
                &mut Conn,
                &RefCell<String>,
            )| serve_busy(shard, listener, peer, conn, current),
        )
    }

    #[test]
    fn busy_state_leaves_the_stages_out() {
        let size = busy_state_size();
        eprintln!("a busy connection's state: {size} bytes");
        assert!(
            size <= BUSY_BOUND,
            "a busy connection's state holds {size} bytes"
        );
    }

    /// A stage awaited inline in the request path, rather than through
    /// `out_of_line`, brings its state (and its code) back into every
    /// request's; this bound says so. Debug build: 9,984 bytes before the
    /// stages went out of line, 6,144 after.
    const BUSY_BOUND: usize = 6_656;

    #[test]
    fn connection_task_is_small() {
        let size = super::connection_task_size();
        eprintln!("a connection's task: {size} bytes");
        assert!(size <= 1280, "a connection's task holds {size} bytes");
    }
}
