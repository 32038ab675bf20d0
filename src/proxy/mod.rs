//! Forwarding one request to an upstream and streaming the answer back.
//!
//! The phases, in order: pick a target, build the upstream head (hop-by-hop
//! fields removed, `X-Forwarded-*` and `X-Request-Id` set), take a pooled
//! connection or connect, send head and body, read the response head, send
//! the client its head and stream the body, and return the connection to
//! the pool when the exchange left it reusable. A stale pooled connection is
//! retried once on a fresh one when nothing of the request has been consumed.
//! An upgrade request the route accepts keeps its `Upgrade` fields, and the
//! upstream's `101` opens a tunnel ([`upgrade`]); that connection is never pooled.

pub mod h2native;
pub mod h2up;
pub mod pool;
pub mod upgrade;

use crate::compiled::UpstreamPlan;
use crate::error::{reason_phrase, GatewayError};
use crate::http::body::{
    append_buffered, copy_body, copy_body_tapped, BodyTap, CopyError, CopyLimits, OutFraming,
};
use crate::http::head::{accepts_trailers, is_hop_by_hop};
use crate::http::io::IoFail;
use crate::http::timer::coarse_now;
use crate::http::{Conn, Framing, HeadError, Parsed, RequestHead, ResponseHead};
use crate::metrics::UpstreamOutcome;
use crate::out_of_line;
// Integers and addresses are appended by hand: `core::fmt` cost about 2,300
// instructions per proxied request here (bench/RESULTS.md §27).
use crate::observe::{push_addr, push_u64};
use crate::resilience::targets::NoTarget;
use crate::shard::Shard;
use monoio::io::{CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;
use nix::sys::socket::{shutdown, Shutdown};
use pool::{Full, Grant, Waiter};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Largest upstream response head accepted.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Read buffer per upstream connection.
const UPSTREAM_BUF: usize = 16 * 1024;

/// Per-request facts the proxy needs from the connection.
pub struct Exchange<'a> {
    /// The request's id (received or generated).
    pub request_id: &'a str,
    /// The client's address.
    pub client_ip: IpAddr,
    /// The client's address as text (as `Display` writes it).
    pub client_ip_text: &'a [u8],
    /// The client's request body has been fully read (set by the proxy).
    pub body_consumed: bool,
    /// The response head has been written to the client (set by the proxy).
    pub response_started: bool,
    /// Client-side timeouts and limits.
    pub limits: &'a crate::compiled::Limits,
    /// The connection may stay open after this exchange.
    pub keep_alive: bool,
    /// Lower-case names of identity headers, never forwarded from the client.
    pub identity_headers: &'a [String],
    /// Remove the client's `Authorization` header.
    pub drop_authorization: bool,
    /// The request is an upgrade its route tunnels (set by the pipeline):
    /// the tunnel's idle timeout. The upgrade fields are then forwarded, and
    /// a `101` answer opens the tunnel.
    pub upgrade: Option<Duration>,
    /// Headers added for the upstream (the established identity).
    pub add_headers: Vec<(String, String)>,
    /// Header lines (`name: value\r\n`) added to the response (rate-limit state).
    pub response_headers: String,
    /// What is observed of the exchange as it goes, for metrics and logs.
    pub seen: Seen,
    /// The request's trace context (only when `tracing` is configured).
    /// Boxed, like `cache`: only traced requests have one, and the others
    /// keep their state smaller.
    pub trace: Option<Box<crate::observe::trace::Trace>>,
    /// The request's consistent-hash key (set by the pipeline when the
    /// upstream balances by `ConsistentHash` and the request carries the key).
    pub balance_key: Option<u64>,
    /// The request body, read whole by a stage (validation) in the form it
    /// is forwarded in: sent with the head instead of from the client.
    pub body: Option<Rc<[u8]>>,
    /// The route answers CORS itself (set by the pipeline): the upstream's
    /// own `Access-Control-*` fields are dropped, so a browser never sees two.
    pub cors_owned: bool,
    /// The response cache's part in this request (set by the cache stage
    /// when the answer may be stored): reads the response head and keeps
    /// the body as it streams.
    /// Boxed: a request without it keeps its state a few cache lines smaller.
    pub cache: Option<Box<crate::cache::Tap>>,
    /// The route's response transformation and compression for this
    /// request (set by the request transformation stage).
    pub body_edit: Option<Box<crate::transform::ResponseEdit<'a>>>,
}

/// What the stages learn of one request, for metrics, the access log and
/// spans: filled in as the request goes, read when it ends.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// The route id in the running config (`None`: no route matched).
    pub route: Option<usize>,
    /// The status sent to the client (0: none yet).
    pub status: u16,
    /// Response bytes sent to the client (head and body).
    pub bytes_out: u64,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// The last upstream call made for the request.
    pub upstream: Option<UpstreamCall>,
    /// The caller established by authentication (`sub` or the consumer).
    pub subject: Option<String>,
    /// The rate-limit decision, when the route has limits.
    pub rate_limit: Option<crate::metrics::LimitDecision>,
    /// When the last upstream call ended with its answer relayed in full
    /// (`None` when it failed, and once a stage runs after it): then the
    /// request's own end, with no second clock read.
    pub answered_at: Option<Instant>,
}

/// One call to an upstream target.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamCall {
    /// Upstream index in the running config.
    pub upstream: usize,
    /// The target's address.
    pub target: SocketAddr,
    /// Time from picking the target to the response's last byte (or the failure).
    pub took: Duration,
    /// How it ended.
    pub outcome: crate::metrics::UpstreamOutcome,
}

/// How the client connection should continue after a proxied exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Serve the next request on this connection.
    KeepAlive,
    /// Close the connection.
    Close,
}

/// Builds the upstream request head.
pub fn upstream_head(
    req: &RequestHead,
    target: &str,
    ex: &Exchange<'_>,
    upstream_addr: SocketAddr,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(req.raw().len() + 160);
    out.extend_from_slice(req.method().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let connection = req.connection_names();
    let trace = ex.trace.as_ref();
    let upgrade = ex.upgrade.is_some();
    for (name, value) in req.headers() {
        // An accepted upgrade keeps its `Upgrade` fields (hop-by-hop, and
        // named in `Connection`); `Connection: upgrade` is written below.
        if upgrade && name.eq_ignore_ascii_case(b"upgrade") {
            out.extend_from_slice(b"upgrade: ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
            continue;
        }
        // Fields the gateway writes itself, once, from the request's one reading.
        if is_hop_by_hop(name)
            || name.eq_ignore_ascii_case(b"host")
            || name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"x-request-id")
            || name.eq_ignore_ascii_case(b"x-forwarded-for")
            || name.eq_ignore_ascii_case(b"x-forwarded-proto")
            || name.eq_ignore_ascii_case(b"x-forwarded-host")
        {
            continue;
        }
        if connection.contains(name)
            || (ex.drop_authorization && name.eq_ignore_ascii_case(b"authorization"))
            || trace.is_some_and(|t| t.replaces(name))
            || ex
                .identity_headers
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    let host = req.host().filter(|h| !h.is_empty());
    out.extend_from_slice(b"host: ");
    match host {
        Some(h) => out.extend_from_slice(h),
        None => push_addr(&mut out, upstream_addr),
    }
    out.extend_from_slice(b"\r\nx-forwarded-for: ");
    if let Some(prev) = req.header("x-forwarded-for").filter(|v| !v.is_empty()) {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(ex.client_ip_text);
    out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
    if let Some(h) = host {
        out.extend_from_slice(b"x-forwarded-host: ");
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(ex.request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(t) = trace {
        // The proxied call is the request's call 0.
        out.extend_from_slice(b"traceparent: ");
        out.extend_from_slice(t.traceparent(0).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // TE is hop-by-hop: ask for trailers only when they can be passed on.
    if accepts_trailers(req.header("te")) {
        out.extend_from_slice(b"te: trailers\r\n");
    }
    if upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    for (name, value) in &ex.add_headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match req.framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_u64(&mut out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::UntilClose => {}
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Appends the status line of `resp` (its reason phrase, or the standard one).
pub(crate) fn status_line(resp: &ResponseHead, out: &mut Vec<u8>) {
    // A status code has three digits (httparse reads no other).
    let s = resp.status;
    let digit = |d: u16| b'0' + (d % 10) as u8;
    let mut start = *b"HTTP/1.1 200 ";
    let [.., a, b, c, _] = &mut start;
    (*a, *b, *c) = (digit(s / 100), digit(s / 10), digit(s));
    out.extend_from_slice(&start);
    if resp.reason().is_empty() {
        out.extend_from_slice(reason_phrase(resp.status).as_bytes());
    } else {
        out.extend_from_slice(resp.reason());
    }
    out.extend_from_slice(b"\r\n");
}

/// Builds the client response head from the upstream's.
pub(crate) fn client_head(
    resp: &ResponseHead,
    out_framing: Option<OutFraming>,
    ex: &Exchange<'_>,
    keep_alive: bool,
    http10_client: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    status_line(resp, &mut out);
    let connection = resp.connection_names();
    let mut has_request_id = false;
    let bodyless = resp.framing == Framing::None;
    for (name, value) in resp.headers() {
        if is_hop_by_hop(name) || connection.contains(name) {
            continue;
        }
        // Framing is re-declared below, except for bodyless answers (HEAD, 304)
        // whose Content-Length describes the representation.
        if name.eq_ignore_ascii_case(b"content-length") && !bodyless {
            continue;
        }
        if ex.cors_owned && is_cors_field(name) {
            continue;
        }
        has_request_id |= name.eq_ignore_ascii_case(b"x-request-id");
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    match (resp.framing, out_framing) {
        (Framing::Length(n), _) => {
            out.extend_from_slice(b"content-length: ");
            push_u64(&mut out, n);
            out.extend_from_slice(b"\r\n");
        }
        (Framing::Chunked | Framing::UntilClose, Some(OutFraming::Chunked)) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n")
        }
        _ => {}
    }
    if !has_request_id {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(ex.request_id.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(ex.response_headers.as_bytes());
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10_client {
        // HTTP/1.0 closes by default: say that this connection stays open.
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// True for an `Access-Control-*` response field.
fn is_cors_field(name: &[u8]) -> bool {
    name.get(..15)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"access-control-"))
}

/// Marks a request in flight to a target for least-outstanding balancing.
pub(crate) struct InFlight<'a> {
    shard: &'a Shard,
    addr: SocketAddr,
}

impl<'a> InFlight<'a> {
    /// Picks a target of `up` with this shard's cursor and counts a request to it.
    pub(crate) fn pick(
        shard: &'a Shard,
        up: &UpstreamPlan,
        cursor: &std::cell::Cell<usize>,
    ) -> Result<InFlight<'a>, GatewayError> {
        Self::pick_keyed(shard, up, cursor, None)
    }

    /// Picks a target of `up` (see [`crate::resilience::targets::TargetTable::pick`];
    /// `key` is the request's consistent-hash key) and counts a request to it.
    pub(crate) fn pick_keyed(
        shard: &'a Shard,
        up: &UpstreamPlan,
        cursor: &std::cell::Cell<usize>,
        key: Option<u64>,
    ) -> Result<InFlight<'a>, GatewayError> {
        Self::pick_avoiding(shard, up, cursor, key, None)
    }

    /// As [`InFlight::pick_keyed`], passing over `avoid` (the target a
    /// retry's previous try failed on) when another target can take it.
    pub(crate) fn pick_avoiding(
        shard: &'a Shard,
        up: &UpstreamPlan,
        cursor: &std::cell::Cell<usize>,
        key: Option<u64>,
        avoid: Option<SocketAddr>,
    ) -> Result<InFlight<'a>, GatewayError> {
        let picked = shard
            .targets
            .borrow_mut()
            .pick(up, &shard.pools.borrow(), cursor, key, avoid);
        let addr = picked.map_err(|why| match why {
            NoTarget::Empty => GatewayError::Unavailable("upstream has no targets"),
            NoTarget::NoneHealthy => GatewayError::NoHealthyTarget {
                upstream: up.name.clone(),
            },
        })?;
        shard.pools.borrow_mut().begin(addr);
        Ok(InFlight { shard, addr })
    }

    /// The target picked.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.shard.pools.borrow_mut().end(self.addr);
    }
}

/// A request's claim on a slot counted toward a target's connection bound on
/// this shard. Once [`Lease::checkout`] or [`Lease::wait`] got a slot,
/// dropping the lease gives it back (to a waiting request first): the
/// connection under it closed, failed or was never opened. [`Lease::pool`]
/// hands the slot on with a reusable connection instead.
pub(crate) struct Lease<'a> {
    shard: &'a Shard,
    addr: SocketAddr,
    held: bool,
}

impl<'a> Lease<'a> {
    /// A lease on `addr` holding no slot yet.
    pub(crate) fn new(shard: &'a Shard, addr: SocketAddr) -> Lease<'a> {
        Lease {
            shard,
            addr,
            held: false,
        }
    }

    /// Takes an idle connection (`Some`) or a slot to open one (`None`);
    /// `Err` when this shard's share of `up`'s `max_connections` is in use
    /// (then [`Lease::wait`]). Not async: the common case costs no future.
    #[inline(always)]
    pub(crate) fn checkout(&mut self, up: &UpstreamPlan) -> Result<Option<Box<Conn>>, Full> {
        let limit = up
            .max_connections
            .map(|m| pool::share(m, self.shard.shards, self.shard.id));
        let got =
            self.shard
                .pools
                .borrow_mut()
                .acquire(self.addr, limit, up.idle_timeout, coarse_now());
        self.held = got.is_ok();
        got
    }

    /// Waits in the target's bounded queue, at most `wait`, for a connection
    /// to come back from another request (`Some`) or for a slot to be freed
    /// (`None`).
    pub(crate) async fn wait(
        &mut self,
        up: &UpstreamPlan,
        wait: Duration,
    ) -> Result<Option<Box<Conn>>, Busy> {
        if wait.is_zero() {
            return Err(Busy::Timeout);
        }
        let room = pool::share(up.max_queued, self.shard.shards, self.shard.id);
        let waiter = self
            .shard
            .pools
            .borrow_mut()
            .enqueue(self.addr, room)
            .ok_or(Busy::QueueFull)?;
        let queued = Queued {
            shard: self.shard,
            addr: self.addr,
            waiter,
            max_idle: up.max_idle,
        };
        let granted = std::future::poll_fn(|cx| queued.waiter.poll_grant(cx));
        let conn = match monoio::time::timeout(wait, granted).await {
            Ok(Grant::Conn(c)) => Some(c),
            Ok(Grant::Slot) => None,
            Err(_) => return Err(Busy::Timeout),
        };
        self.held = true;
        Ok(conn)
    }

    /// Returns the reusable `conn` with this slot, to a waiting request or
    /// to the idle pool.
    #[inline(always)]
    pub(crate) fn pool(&mut self, conn: Box<Conn>, max_idle: usize) {
        if std::mem::take(&mut self.held) {
            self.shard
                .pools
                .borrow_mut()
                .put(self.addr, conn, max_idle, coarse_now());
        }
    }
}

impl Drop for Lease<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        if self.held {
            self.shard.pools.borrow_mut().release(self.addr);
        }
    }
}

/// Why no connection slot was obtained.
pub(crate) enum Busy {
    /// The shard's share of waiting requests is taken.
    QueueFull,
    /// No connection came back within the wait.
    Timeout,
}

/// A request in a target's wait queue; leaving it withdraws the request and
/// passes on whatever it was granted but did not take.
struct Queued<'a> {
    shard: &'a Shard,
    addr: SocketAddr,
    waiter: Rc<Waiter>,
    max_idle: usize,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.shard.pools.borrow_mut().cancel(
            self.addr,
            &self.waiter,
            self.max_idle,
            Instant::now(),
        );
    }
}

/// The 503 for a request that found no free connection to `up`.
pub(crate) fn busy_error(up: &UpstreamPlan, why: Busy) -> GatewayError {
    let reason = match why {
        Busy::QueueFull => "too many requests are already waiting for a connection".to_string(),
        Busy::Timeout => format!(
            "no connection became free within {} ms",
            up.queue_timeout.as_millis()
        ),
    };
    GatewayError::UpstreamBusy {
        upstream: up.name.clone(),
        reason,
    }
}

enum Attempt {
    /// The exchange finished (successfully or not) with this result.
    Done(Result<Disposition, GatewayError>),
    /// A reused connection turned out stale before anything was consumed.
    Stale,
    /// Failed before any response byte (write failed, closed early).
    Early(GatewayError),
    /// The response head had a status in [`TryOptions::hold`]; nothing was
    /// sent to the client.
    Held(u16),
}

/// Settings of one try, set by the retry loop ([`crate::resilience`]).
#[derive(Debug, Clone)]
pub struct TryOptions {
    /// Time for the response head and between body reads, instead of the upstream's.
    pub timeout: Option<Duration>,
    /// Time to connect, when shorter than the upstream's.
    pub connect_timeout: Option<Duration>,
    /// Statuses whose response is not sent to the client (the caller
    /// retries or falls back instead).
    pub hold: crate::resilience::breaker::StatusSet,
    /// The request body, already read from the client, sent with the head.
    pub body: Option<Rc<[u8]>>,
    /// A target not to pick when another one exists (the one that just failed).
    pub avoid: Option<SocketAddr>,
}

impl TryOptions {
    /// No settings: a plain try's (no retry loop around it). A constant that
    /// every plain request borrows, rather than 160 bytes of defaults
    /// written into its state, which a busy connection's next request finds
    /// out of cache.
    pub const NONE: TryOptions = TryOptions {
        timeout: None,
        connect_timeout: None,
        hold: crate::resilience::breaker::StatusSet::EMPTY,
        body: None,
        avoid: None,
    };
}

impl Default for TryOptions {
    fn default() -> Self {
        TryOptions::NONE
    }
}

/// How a try ended before any response byte reached the client, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Early {
    /// It did not (or it failed in a way that is not retried).
    No,
    /// The connection could not be opened.
    Connect,
    /// The connection broke before any response byte.
    Reset,
    /// No response head in time.
    Timeout,
    /// A response with this status was held back.
    Held(u16),
}

/// The result of one try.
pub struct Tried {
    /// The request's result so far.
    pub result: Result<Disposition, GatewayError>,
    /// How it failed early, when it did.
    pub early: Early,
    /// The target tried.
    pub target: Option<SocketAddr>,
}

fn bad_gateway(up: &UpstreamPlan, reason: impl Into<String>) -> GatewayError {
    GatewayError::BadGateway {
        upstream: up.name.clone(),
        reason: reason.into(),
    }
}

/// Opens a connection to `addr` of `up`, giving up after `wait`.
///
/// The connection is boxed for its whole life: it moves from the pool to
/// a request and back on every request, and a box moves as a pointer.
pub(crate) async fn connect_within(
    up: &UpstreamPlan,
    addr: SocketAddr,
    wait: Duration,
) -> Result<Box<Conn>, GatewayError> {
    match monoio::time::timeout(wait, TcpStream::connect_addr(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            match &up.tls {
                None => Ok(Box::new(Conn::new(stream, UPSTREAM_BUF))),
                Some(tls) => connect_tls(up, tls, addr, stream, wait).await.map(Box::new),
            }
        }
        Ok(Err(e)) => Err(bad_gateway(up, format!("connect to {addr} failed: {e}"))),
        Err(_) => Err(bad_gateway(up, format!("connect to {addr} timed out"))),
    }
}

/// Runs the TLS handshake towards `addr` on a fresh connection, within `wait`.
async fn connect_tls(
    up: &UpstreamPlan,
    tls: &crate::tls::UpstreamTlsPlan,
    addr: SocketAddr,
    stream: TcpStream,
    wait: Duration,
) -> Result<Conn, GatewayError> {
    let i = up.targets.iter().position(|a| *a == addr).unwrap_or(0);
    let Some(name) = tls.names.get(i).or(tls.names.first()).cloned() else {
        return Err(bad_gateway(up, format!("no TLS server name for {addr}")));
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let hs = crate::tls::connect(tls, name, stream);
    let mut hs = std::pin::pin!(hs);
    let done = monoio::select! {
        r = &mut hs => Some(r),
        _ = monoio::time::sleep(wait) => None,
    };
    let done = match done {
        Some(r) => r,
        None => {
            // Ends the pending socket operation so the handshake returns.
            let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
            let _ = hs.await;
            return Err(bad_gateway(
                up,
                format!("TLS handshake with {addr} timed out"),
            ));
        }
    };
    match done {
        Ok(s) => Ok(Conn::with_stream(
            crate::tls::Stream::Tls(Box::new(s)),
            UPSTREAM_BUF,
        )),
        Err(e) => Err(bad_gateway(
            up,
            format!("TLS handshake with {addr} failed: {e}"),
        )),
    }
}

/// Forwards `req` (whose body is still in `client`) to a target of `up` and
/// streams the response back: one try, with the retry loop's settings
/// ([`crate::resilience::forward`]) or none ([`TryOptions::NONE`]).
#[allow(clippy::too_many_arguments)]
pub async fn forward_try(
    shard: &Shard,
    up: &UpstreamPlan,
    cursor: &std::cell::Cell<usize>,
    req: &RequestHead,
    target: &str,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
    opts: &TryOptions,
) -> Tried {
    // A retry goes to another target when there is one.
    let in_flight = match InFlight::pick_avoiding(shard, up, cursor, ex.balance_key, opts.avoid) {
        Ok(f) => f,
        Err(e) => {
            return Tried {
                result: Err(e),
                early: Early::No,
                target: None,
            }
        }
    };
    let addr = in_flight.addr();
    let started = Instant::now();
    let mut early = Early::No;
    let result = forward_to(shard, up, addr, req, target, client, ex, &mut early, opts).await;
    let outcome = match &result {
        _ if early == Early::Connect => UpstreamOutcome::ConnectError,
        Err(GatewayError::GatewayTimeout { .. }) => UpstreamOutcome::Timeout,
        _ if matches!(early, Early::Held(_)) => UpstreamOutcome::ServerError,
        Err(GatewayError::BadGateway { .. }) => UpstreamOutcome::Reset,
        // Busy or refused before a call was made: no call to count.
        Err(_) if ex.seen.status == 0 && !ex.response_started => {
            return Tried {
                result,
                early,
                target: Some(addr),
            }
        }
        _ if ex.seen.status >= 500 => UpstreamOutcome::ServerError,
        _ => UpstreamOutcome::Ok,
    };
    let ended = Instant::now();
    let call = UpstreamCall {
        upstream: up.id,
        target: addr,
        took: ended.saturating_duration_since(started),
        outcome,
    };
    note_call(shard, up, call, ended);
    ex.seen.upstream = Some(call);
    ex.seen.answered_at = result.is_ok().then_some(ended);
    if let Some(t) = &ex.trace {
        t.upstream_call(
            &call,
            ex.seen.status,
            result.as_ref().err().map(|e| e.message()),
        );
    }
    Tried {
        result,
        early,
        target: Some(addr),
    }
}

/// Counts an upstream call in the shard's metrics.
pub(crate) fn note_call(shard: &Shard, up: &UpstreamPlan, call: UpstreamCall, ended: Instant) {
    let now = crate::ratelimit::limiter::ns_at(ended);
    shard
        .targets
        .borrow_mut()
        .observe(up, call.target, call.took, call.outcome, now);
    let mut m = shard.metrics.borrow_mut();
    if m.enabled {
        if let Some(t) = up.targets.iter().position(|&a| a == call.target) {
            m.upstream_call(up.id, t, call.outcome, call.took);
        }
    }
}

/// Counts a connection taken for a call to `addr`: opened or reused.
pub(crate) fn note_connection(shard: &Shard, up: &UpstreamPlan, addr: SocketAddr, reused: bool) {
    let mut m = shard.metrics.borrow_mut();
    if m.enabled {
        if let Some(t) = up.targets.iter().position(|&a| a == addr) {
            m.upstream_connection(up.id, t, reused);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward_to(
    shard: &Shard,
    up: &UpstreamPlan,
    addr: SocketAddr,
    req: &RequestHead,
    target: &str,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
    early: &mut Early,
    opts: &TryOptions,
) -> Result<Disposition, GatewayError> {
    if up.protocol == crate::config::UpstreamProtocol::Http2 {
        return out_of_line(h2up::forward_to(
            shard, up, addr, req, target, client, ex, early, opts,
        ))
        .await;
    }
    let head = upstream_head(req, target, ex, addr);
    let mut head = Some(head);
    let mut lease = Lease::new(shard, addr);
    let mut pooled = match lease.checkout(up) {
        Ok(pooled) => pooled,
        Err(Full) => out_of_line(lease.wait(up, up.queue_timeout))
            .await
            .map_err(|why| busy_error(up, why))?,
    };
    for attempt in 0..2 {
        let reused = pooled.is_some();
        note_connection(shard, up, addr, reused);
        let conn = match pooled.take() {
            Some(c) => c,
            None => {
                let wait = opts
                    .connect_timeout
                    .map_or(up.connect_timeout, |t| t.min(up.connect_timeout));
                match out_of_line(connect_within(up, addr, wait)).await {
                    Ok(c) => c,
                    Err(e) => {
                        *early = Early::Connect;
                        return Err(e);
                    }
                }
            }
        };
        let bytes = head.take().unwrap_or_default();
        match exchange(
            shard,
            up,
            &mut lease,
            conn,
            bytes,
            req,
            client,
            ex,
            reused && attempt == 0,
            opts,
        )
        .await
        {
            (Attempt::Done(r), _) => {
                if matches!(r, Err(GatewayError::GatewayTimeout { .. })) && !ex.response_started {
                    *early = Early::Timeout;
                }
                return r;
            }
            (Attempt::Early(e), _) => {
                *early = Early::Reset;
                return Err(e);
            }
            (Attempt::Held(status), _) => {
                *early = Early::Held(status);
                return Err(GatewayError::UpstreamStatus {
                    upstream: up.name.clone(),
                    status,
                });
            }
            (Attempt::Stale, bytes) => {
                // The retry goes out on a fresh connection, under the same slot.
                shard.pools.borrow_mut().drop_idle(addr);
                head = Some(bytes);
            }
        }
    }
    Err(bad_gateway(up, "connection closed before a response"))
}

#[allow(clippy::too_many_arguments)]
async fn exchange(
    shard: &Shard,
    up: &UpstreamPlan,
    lease: &mut Lease<'_>,
    mut upc: Box<Conn>,
    head: Vec<u8>,
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
    may_retry: bool,
    opts: &TryOptions,
) -> (Attempt, Vec<u8>) {
    let timeout = opts.timeout.unwrap_or(up.timeout);
    let retry_ok =
        may_retry && (req.framing == Framing::None || opts.body.is_some()) && req.is_idempotent();
    // A small body that arrived with the head goes out in the same write. Not
    // when the client waits for 100 Continue, and not when a retry may need
    // the head again (retries only happen for requests without a body).
    let mut head = head;
    let head_len = head.len();
    let body_framing = if let Some(body) = opts.body.as_ref().or(ex.body.as_ref()) {
        // Read ahead by the retry loop or by validation: it goes with the
        // head, every try.
        head.extend_from_slice(body);
        Framing::None
    } else if req.expect_continue {
        req.framing
    } else {
        append_buffered(client, req.framing, &mut head)
    };
    ex.seen.bytes_in = head.len().saturating_sub(head_len) as u64;
    let (res, mut head) = upc.write(head, timeout).await;
    head.truncate(head_len);
    if res.is_err() {
        if retry_ok {
            return (Attempt::Stale, head);
        }
        let e = bad_gateway(up, "write to upstream failed");
        if body_framing == Framing::None {
            return (Attempt::Early(e), head);
        }
        return (Attempt::Done(Err(e)), head);
    }
    // Request body, sent while the response head is already awaited.
    let mut early_answer = false;
    if body_framing != Framing::None {
        if req.expect_continue
            && out_of_line(crate::http::body::send_100_continue(
                client,
                ex.limits.send_timeout,
            ))
            .await
            .is_err()
        {
            return (Attempt::Done(Ok(Disposition::Close)), head);
        }
        let out = if req.framing == Framing::Chunked {
            OutFraming::Chunked
        } else {
            OutFraming::Raw
        };
        let lim = CopyLimits {
            read_timeout: ex.limits.body_read_timeout,
            write_timeout: timeout,
            max_bytes: ex.limits.max_body_bytes,
            trailers: false,
        };
        let (copied, answer) =
            out_of_line(send_body(client, body_framing, &mut upc, out, lim)).await;
        upc.push_buffered(&answer);
        let err = match copied {
            Ok(n) => {
                ex.seen.bytes_in += n;
                None
            }
            // The upstream answered before the body was sent: forward its
            // answer now, then close the client connection (draining what it
            // still sends, so it reads the answer instead of a reset).
            Err(CopyError::Interrupted) => {
                early_answer = true;
                None
            }
            Err(CopyError::ReadTimeout) => Some(GatewayError::RequestTimeout),
            Err(CopyError::SourceClosed) => return (Attempt::Done(Ok(Disposition::Close)), head),
            Err(CopyError::BadChunk(_)) => Some(GatewayError::BadRequest("malformed chunked body")),
            Err(CopyError::TooLarge) => Some(GatewayError::PayloadTooLarge),
            Err(CopyError::Write(_)) => {
                Some(bad_gateway(up, "upstream stopped reading the request body"))
            }
        };
        if let Some(e) = err {
            return (Attempt::Done(Err(e)), head);
        }
    }
    ex.body_consumed = !early_answer;
    if early_answer {
        ex.keep_alive = false;
    }
    // Response head, skipping interim 1xx answers.
    let deadline = coarse_now() + timeout;
    let resp = loop {
        match read_response_head(&mut upc, deadline, req.method() == "HEAD").await {
            Ok(r) if (100..200).contains(&r.status) && r.status != 101 => continue,
            Ok(r) if r.status == 101 => {
                let why = match ex.upgrade {
                    None => "protocol upgrade is not enabled on this route",
                    Some(_) if !upgrade::switched_as_asked(req, r.header("upgrade")) => {
                        "upstream switched to a protocol the client did not ask for"
                    }
                    Some(idle) => {
                        let d = out_of_line(open_tunnel(shard, &r, *upc, client, ex, idle)).await;
                        return (Attempt::Done(Ok(d)), head);
                    }
                };
                return (Attempt::Done(Err(bad_gateway(up, why))), head);
            }
            Ok(r) => break r,
            Err(ReadHeadError::ClosedEarly) if retry_ok => return (Attempt::Stale, head),
            Err(ReadHeadError::ClosedEarly) => {
                let e = bad_gateway(up, "connection closed before a response");
                // Nothing of the answer came: retried when the request can be sent again.
                if ex.body_consumed && (req.framing == Framing::None || opts.body.is_some()) {
                    return (Attempt::Early(e), head);
                }
                return (Attempt::Done(Err(e)), head);
            }
            Err(ReadHeadError::Timeout) => {
                return (
                    Attempt::Done(Err(GatewayError::GatewayTimeout {
                        upstream: up.name.clone(),
                    })),
                    head,
                )
            }
            Err(ReadHeadError::Invalid(why)) => {
                return (Attempt::Done(Err(bad_gateway(up, why))), head)
            }
        }
    };
    let cache_holds = ex.cache.as_mut().is_some_and(|t| t.on_head(&resp, req));
    if opts.hold.contains(resp.status) || cache_holds {
        // The connection closes with this answer unread; its slot is given back.
        return (Attempt::Held(resp.status), head);
    }
    // Response transformation and compression, when the route has them.
    if let Some(edit) = ex.body_edit.take() {
        let keep = ex.keep_alive && !shard.shutdown.is_fired();
        let done = out_of_line(crate::transform::respond(
            &edit, &resp, &mut upc, client, ex, req, timeout, keep, &up.name,
        ))
        .await;
        // Kept for a fallback's exchange, should this one fail.
        ex.body_edit = Some(edit);
        return match done {
            Ok(f) => {
                if f.upstream_done && resp.keep_alive && !early_answer && upc.buffered().is_empty()
                {
                    lease.pool(upc, up.max_idle);
                }
                (Attempt::Done(Ok(f.disposition)), head)
            }
            Err(e) => (Attempt::Done(Err(e)), head),
        };
    }
    // Response to the client.
    let client_http11 = req.version == 1;
    let out_framing = match resp.framing {
        Framing::None => None,
        Framing::Length(_) => Some(OutFraming::Raw),
        Framing::Chunked | Framing::UntilClose if client_http11 => Some(OutFraming::Chunked),
        Framing::Chunked | Framing::UntilClose => Some(OutFraming::Raw),
    };
    // A close-delimited answer to the client ends the connection.
    let close_delimited =
        out_framing == Some(OutFraming::Raw) && !matches!(resp.framing, Framing::Length(_));
    let client_keep_alive = ex.keep_alive && !shard.shutdown.is_fired() && !close_delimited;
    let mut bytes = client_head(&resp, out_framing, ex, client_keep_alive, req.version == 0);
    let body_at = bytes.len();
    let rest = append_buffered(&mut upc, resp.framing, &mut bytes);
    if let Some(tap) = ex.cache.as_mut() {
        tap.feed(bytes.get(body_at..).unwrap_or_default());
    }
    // The head and the body bytes moved into its write; `copy_body` counts the rest.
    ex.seen.status = resp.status;
    ex.seen.bytes_out = bytes.len() as u64;
    let (r, _) = client.write(bytes, ex.limits.send_timeout).await;
    ex.response_started = true;
    if r.is_err() {
        return (Attempt::Done(Ok(Disposition::Close)), head);
    }
    let lim = CopyLimits {
        read_timeout: timeout,
        write_timeout: ex.limits.send_timeout,
        max_bytes: u64::MAX,
        trailers: accepts_trailers(req.header("te")),
    };
    let result = match (out_framing, ex.cache.as_mut().filter(|t| t.capturing())) {
        (None, _) => Ok(0),
        (Some(out), None) => copy_body(&mut upc, rest, &mut client.stream, out, lim).await,
        (Some(out), Some(tap)) => {
            out_of_line(copy_body_tapped(
                &mut upc,
                rest,
                &mut client.stream,
                out,
                lim,
                &mut **tap,
            ))
            .await
        }
    };
    if let (Ok(_), Some(tap)) = (&result, ex.cache.as_mut()) {
        tap.complete();
    }
    if let Ok(n) = result {
        ex.seen.bytes_out += n;
    }
    match result {
        Ok(_) => {
            if resp.keep_alive && !early_answer && upc.buffered().is_empty() {
                lease.pool(upc, up.max_idle);
            }
            let d = if client_keep_alive {
                Disposition::KeepAlive
            } else {
                Disposition::Close
            };
            (Attempt::Done(Ok(d)), head)
        }
        // The head is out: the only honest signal left is closing the connection.
        Err(_) => (Attempt::Done(Ok(Disposition::Close)), head),
    }
}

/// Answers the client with the upstream's `101` head, then tunnels bytes
/// both ways until either side closes or the tunnel is idle for `idle`.
/// The upstream connection is closed afterwards, never pooled.
async fn open_tunnel(
    shard: &Shard,
    resp: &ResponseHead,
    mut upc: Conn,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
    idle: Duration,
) -> Disposition {
    let bytes = upgrade::switching_head(resp, ex.request_id, &ex.response_headers);
    ex.seen.status = resp.status;
    ex.seen.bytes_out = bytes.len() as u64;
    let (r, _) = client.write(bytes, ex.limits.send_timeout).await;
    ex.response_started = true;
    if r.is_err() {
        return Disposition::Close;
    }
    shard.tunnels.borrow_mut().opened_total += 1;
    // Bytes that came in behind either head belong to the tunnel.
    let from_client = client.buffered().to_vec();
    client.consume(from_client.len());
    let from_upstream = upc.buffered().to_vec();
    upc.consume(from_upstream.len());
    // The tunnel reads with buffers of its own: the connections' go back.
    client.release_buffer();
    upc.release_buffer();
    let end = upgrade::tunnel(
        &mut client.stream,
        from_client,
        &mut upc.stream,
        from_upstream,
        idle,
    )
    .await;
    ex.seen.bytes_in += end.to_upstream;
    ex.seen.bytes_out += end.to_client;
    Disposition::Close
}

/// Sends the request body from `client` to `upc` while watching `upc` for
/// an early answer. Returns how the copy ended — [`CopyError::Interrupted`]
/// when the upstream sent a final response (or closed) before the body was
/// all sent — and the response bytes read meanwhile, which belong at the
/// front of `upc`'s buffer. Interim 1xx answers are passed over (and
/// dropped) while the body keeps flowing.
async fn send_body(
    client: &mut Conn,
    framing: Framing,
    upc: &mut Conn,
    out: OutFraming,
    lim: CopyLimits,
) -> (Result<u64, CopyError>, Vec<u8>) {
    let Ok(mut watcher) = upc.watcher() else {
        let r = copy_body(client, framing, &mut upc.stream, out, lim).await;
        return (r, Vec::new());
    };
    let up_fd = upc.stream.as_raw_fd();
    let copy = copy_body(client, framing, &mut upc.stream, out, lim);
    let mut copy = std::pin::pin!(copy);
    let mut answer: Vec<u8> = Vec::new();
    loop {
        let canceller = Canceller::new();
        let read = watcher.cancelable_read(Vec::with_capacity(4096), canceller.handle());
        let mut read = std::pin::pin!(read);
        monoio::select! {
            r = &mut copy => {
                // Bytes that raced in before the read was cancelled are kept.
                canceller.cancel();
                let (res, buf) = read.await;
                if matches!(res, Ok(n) if n > 0) {
                    answer.extend_from_slice(&buf);
                }
                return (r, answer);
            }
            (res, buf) = &mut read => {
                let got = matches!(res, Ok(n) if n > 0);
                answer.extend_from_slice(&buf);
                if got && !is_final_answer(&mut answer) {
                    continue;
                }
                // A final answer, end of stream or a failure: stop sending.
                // Shutting the write side down ends a write the upstream no
                // longer reads, so dropping the copy leaves nothing pending.
                let _ = shutdown(up_fd, Shutdown::Write);
                return (Err(CopyError::Interrupted), answer);
            }
        }
    }
}

/// True once `answer` holds the start of a final response (or is not a
/// response at all); complete interim 1xx heads are removed from its front.
fn is_final_answer(answer: &mut Vec<u8>) -> bool {
    loop {
        match ResponseHead::parse(answer, MAX_RESPONSE_HEAD, false) {
            Ok(Parsed::Complete(h, n)) if (100..200).contains(&h.status) && h.status != 101 => {
                answer.drain(..n.min(answer.len()));
            }
            Ok(Parsed::Partial) => return false,
            _ => return true,
        }
        if answer.is_empty() {
            return false;
        }
    }
}

/// Why an upstream response head could not be read.
pub(crate) enum ReadHeadError {
    /// The connection closed before any byte of a response.
    ClosedEarly,
    /// The deadline passed.
    Timeout,
    /// The head is malformed or too large.
    Invalid(&'static str),
}

/// Reads a response head from `upc` before `deadline`.
pub(crate) async fn read_response_head(
    upc: &mut Conn,
    deadline: Instant,
    head_request: bool,
) -> Result<ResponseHead, ReadHeadError> {
    loop {
        if !upc.buffered().is_empty() {
            match ResponseHead::parse(upc.buffered(), MAX_RESPONSE_HEAD, head_request) {
                Ok(Parsed::Complete(h, n)) => {
                    upc.consume(n);
                    return Ok(h);
                }
                Ok(Parsed::Partial) => {}
                Err(HeadError::TooLarge) => {
                    return Err(ReadHeadError::Invalid("response head too large"))
                }
                Err(HeadError::TooManyHeaders) => {
                    return Err(ReadHeadError::Invalid("too many response header fields"))
                }
                Err(_) => return Err(ReadHeadError::Invalid("malformed response head")),
            }
        }
        let left = deadline.saturating_duration_since(coarse_now());
        if left == Duration::ZERO {
            return Err(ReadHeadError::Timeout);
        }
        let had = upc.buffered().len();
        match upc.fill(left).await {
            Ok(0) if had == 0 => return Err(ReadHeadError::ClosedEarly),
            Ok(0) => {
                return Err(ReadHeadError::Invalid(
                    "connection closed inside the response head",
                ))
            }
            Ok(_) => {}
            Err(IoFail::Timeout) => return Err(ReadHeadError::Timeout),
            Err(IoFail::Io(_)) if had == 0 => return Err(ReadHeadError::ClosedEarly),
            Err(IoFail::Io(_)) => {
                return Err(ReadHeadError::Invalid(
                    "connection reset inside the response head",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Exchange` is written at the start of every request, so with many
    /// busy connections each cache line of it costs a miss (RESULTS §37):
    /// 640 bytes before the cache tap and the trace were boxed, 344 after.
    #[test]
    fn exchange_is_small() {
        let size = std::mem::size_of::<Exchange<'static>>();
        let parts = [
            ("cache tap", std::mem::size_of::<crate::cache::Tap>()),
            ("trace", std::mem::size_of::<crate::observe::trace::Trace>()),
            ("try options", std::mem::size_of::<TryOptions>()),
        ];
        eprintln!("Exchange: {size} bytes; unboxed {parts:?}");
        assert!(size <= 384, "Exchange holds {size} bytes");
    }

    fn status_line_of(raw: &str) -> String {
        let Ok(Parsed::Complete(resp, _)) = ResponseHead::parse(raw.as_bytes(), 8192, false) else {
            panic!("a response head: {raw:?}");
        };
        let mut out = Vec::new();
        status_line(&resp, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn status_lines_keep_the_code_and_reason() {
        for (raw, line) in [
            ("HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 200 OK\r\n"),
            (
                "HTTP/1.0 404 Gone Fishing\r\n\r\n",
                "HTTP/1.1 404 Gone Fishing\r\n",
            ),
            ("HTTP/1.1 100 \r\n\r\n", "HTTP/1.1 100 Continue\r\n"),
            ("HTTP/1.1 599 \r\n\r\n", "HTTP/1.1 599 Unknown\r\n"),
            ("HTTP/1.1 302 Found\r\n\r\n", "HTTP/1.1 302 Found\r\n"),
        ] {
            assert_eq!(status_line_of(raw), line);
        }
    }
}
