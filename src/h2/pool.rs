//! The upstream side: HTTP/2 connections (h2c, or h2 over TLS negotiated
//! by ALPN) per target on this shard, each carrying up to a cap of streams;
//! a new connection opens when every live one is at its cap, and dead ones
//! (closed, GOAWAY) are dropped.
//!
//! Connections are kept per [`Endpoint`]: a target address and a key that
//! tells apart upstreams reaching the same address with different settings
//! (TLS or not, server name, limits), so each upstream's limits apply to its
//! own connections.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use http::{response, HeaderMap, Request};

use super::body::{CollectError, SendError};
use super::{Prefixed, RecvBody, SendBody, Signal};

/// The largest flow-control window HTTP/2 allows (2^31 - 1).
const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Limits of an [`H2Pool`].
#[derive(Debug, Clone)]
pub struct PoolLimits {
    /// Streams open at once on one connection (at most; the server's
    /// SETTINGS_MAX_CONCURRENT_STREAMS can lower it).
    pub max_streams_per_connection: usize,
    /// Connections per target.
    pub max_connections_per_target: usize,
    /// Connect and handshake timeout.
    pub connect_timeout: Duration,
    /// A request body send whose window stays at zero this long is reset.
    pub stall_timeout: Duration,
    /// SETTINGS_MAX_HEADER_LIST_SIZE for responses.
    pub max_header_list_size: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE for each stream.
    pub initial_stream_window: u32,
    /// The connection-level receive window (at least; raised to cover
    /// every stream's window of a connection).
    pub initial_connection_window: u32,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            max_streams_per_connection: 100,
            max_connections_per_target: 4,
            connect_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(60),
            max_header_list_size: 64 * 1024,
            initial_stream_window: 256 * 1024,
            initial_connection_window: 1024 * 1024,
        }
    }
}

/// Why an upstream exchange failed.
#[derive(Debug)]
pub enum PoolError {
    /// Connect failed or timed out.
    Connect(std::io::Error),
    /// Every connection to the target is at its stream cap and the target
    /// has its full number of connections.
    Saturated,
    /// The connection or stream failed.
    H2(h2::Error),
    /// Sending the request body failed.
    Send(SendError),
    /// A collected response body was over its cap.
    TooLarge,
    /// The TLS handshake failed, or did not select `h2` by ALPN.
    Tls(String),
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Connect(e) => write!(f, "connect failed: {e}"),
            PoolError::Saturated => f.write_str("every HTTP/2 connection is at its stream limit"),
            PoolError::H2(e) => write!(f, "HTTP/2 error: {e}"),
            PoolError::Send(SendError::H2(e)) => write!(f, "sending the request body: {e}"),
            PoolError::Send(SendError::Stalled) => {
                f.write_str("the upstream gave no flow-control window for the request body")
            }
            PoolError::TooLarge => f.write_str("response body too large"),
            PoolError::Tls(why) => f.write_str(why),
        }
    }
}

/// TLS towards an endpoint: the client config (its ALPN list offers `h2`)
/// and the server name.
#[derive(Clone)]
pub struct EndpointTls {
    /// The client config.
    pub config: Arc<rustls::ClientConfig>,
    /// SNI and the name verified.
    pub name: rustls_pki_types::ServerName<'static>,
}

/// One target of an upstream, as the pool reaches it.
#[derive(Clone)]
pub struct Endpoint {
    /// The target's address.
    pub addr: SocketAddr,
    /// Tells apart upstreams that reach `addr` with different settings.
    pub key: u64,
    /// TLS (`None`: h2c with prior knowledge).
    pub tls: Option<EndpointTls>,
    /// Streams open at once on one connection.
    pub max_streams_per_connection: usize,
    /// Connections to the target on this shard.
    pub max_connections: usize,
    /// Connect and handshake timeout.
    pub connect_timeout: Duration,
    /// A request body send whose window stays at zero this long is reset.
    pub stall_timeout: Duration,
    /// How long a request waits for a stream when every connection is at
    /// its stream cap and no other may open (zero: refused at once).
    pub queue_timeout: Duration,
    /// A connection without streams this long is closed when the target is
    /// next used.
    pub idle_timeout: Duration,
}

impl Endpoint {
    /// A plain endpoint with the pool's limits.
    fn plain(addr: SocketAddr, limits: &PoolLimits) -> Self {
        Endpoint {
            addr,
            key: 0,
            tls: None,
            max_streams_per_connection: limits.max_streams_per_connection,
            max_connections: limits.max_connections_per_target,
            connect_timeout: limits.connect_timeout,
            stall_timeout: limits.stall_timeout,
            queue_timeout: Duration::ZERO,
            idle_timeout: Duration::MAX,
        }
    }
}

impl From<h2::Error> for PoolError {
    fn from(err: h2::Error) -> Self {
        PoolError::H2(err)
    }
}

/// A connection's driving future, plain or over TLS.
enum Driver {
    Plain(h2::client::Connection<Prefixed<monoio::net::TcpStream>, Bytes>),
    Tls(h2::client::Connection<Prefixed<crate::tls::Stream>, Bytes>),
}

struct Pooled {
    send: SendRequest<Bytes>,
    streams: Cell<usize>,
    dead: Rc<Cell<bool>>,
    /// The target's "room was freed" signal.
    freed: Freed,
    /// When its last stream ended (or it opened).
    idle_since: Cell<std::time::Instant>,
}

impl Pooled {
    /// Whether it carries no stream and has not for `idle` (it is then
    /// let go: the connection ends with GOAWAY once no handle is left).
    fn idle_for(&self, idle: Duration, now: std::time::Instant) -> bool {
        self.streams.get() == 0 && now.saturating_duration_since(self.idle_since.get()) > idle
    }
}

/// Wakes the requests waiting for a stream of a saturated target: fired
/// (and replaced) when a stream ends or a connection dies.
#[derive(Clone, Default)]
struct Freed(Rc<RefCell<Rc<Signal>>>);

impl Freed {
    fn current(&self) -> Rc<Signal> {
        self.0.borrow().clone()
    }

    fn fire(&self) {
        // Nobody waits (the common case): nothing to wake, nothing to renew.
        if self.0.borrow().waiters.borrow().is_empty() {
            return;
        }
        let fired = std::mem::replace(&mut *self.0.borrow_mut(), Signal::new());
        fired.fire();
    }
}

/// One open stream's claim on its connection; released on drop.
struct Slot(Rc<Pooled>);

impl Slot {
    fn take(conn: &Rc<Pooled>) -> Self {
        conn.streams.set(conn.streams.get().saturating_add(1));
        Slot(conn.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let left = self.0.streams.get().saturating_sub(1);
        self.0.streams.set(left);
        if left == 0 {
            self.0.idle_since.set(std::time::Instant::now());
        }
        self.0.freed.fire();
    }
}

/// The connections to one target, and the connect under way, if any (one
/// at a time: requests arriving meanwhile wait for it instead of each
/// opening their own).
#[derive(Default)]
struct Target {
    conns: Vec<Rc<Pooled>>,
    connecting: Option<Rc<Signal>>,
    freed: Freed,
}

/// A connect under way; on drop the target's mark is cleared and the
/// requests waiting for it look again.
struct Connecting<'a> {
    pool: &'a H2Pool,
    target: (SocketAddr, u64),
    signal: Rc<Signal>,
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        if let Some(entry) = self.pool.targets.borrow_mut().get_mut(&self.target) {
            entry.connecting = None;
        }
        self.signal.fire();
    }
}

/// What a request does when no connection has room for its stream.
enum Next {
    /// Wait for the connect under way.
    Wait(Rc<Signal>),
    /// Every connection is open and full: wait for room.
    Queue(Rc<Signal>),
    /// Open a connection (this request's connect).
    Connect(Rc<Signal>, Freed),
}

/// HTTP/2 upstream connections of one shard.
pub struct H2Pool {
    limits: PoolLimits,
    targets: RefCell<HashMap<(SocketAddr, u64), Target>>,
    opened: Cell<u64>,
}

/// A request under way: its body (if it has one) and its response.
pub struct Call {
    /// The request body's sender; `None` when the head ended the stream.
    pub body: Option<SendBody>,
    response: ResponseFuture,
    slot: Slot,
    /// The stream went out on a connection opened for it.
    pub opened: bool,
}

impl Call {
    /// Waits for the response head; the body and trailers follow in the
    /// [`RecvBody`], which holds the stream's place on its connection.
    pub async fn response(self) -> Result<(response::Parts, RecvBody), PoolError> {
        let response = self.response.await?;
        let (head, body) = response.into_parts();
        Ok((head, RecvBody::new(body, None, Some(Box::new(self.slot)))))
    }
}

impl H2Pool {
    /// An empty pool.
    pub fn new(limits: PoolLimits) -> Self {
        H2Pool {
            limits,
            targets: RefCell::new(HashMap::new()),
            opened: Cell::new(0),
        }
    }

    /// Connections opened since the start.
    pub fn opened(&self) -> u64 {
        self.opened.get()
    }

    /// Live connections to `target` (every endpoint at that address).
    pub fn connections(&self, target: SocketAddr) -> usize {
        self.targets
            .borrow()
            .iter()
            .filter(|((addr, _), _)| *addr == target)
            .map(|(_, t)| t.conns.iter().filter(|c| !c.dead.get()).count())
            .sum()
    }

    /// Starts a request: sends its head (ending the stream if
    /// `end_of_stream`), on the least loaded connection under its cap, or a
    /// new one.
    pub async fn start(
        &self,
        target: SocketAddr,
        head: Request<()>,
        end_of_stream: bool,
    ) -> Result<Call, PoolError> {
        let endpoint = Endpoint::plain(target, &self.limits);
        self.start_at(&endpoint, head, end_of_stream).await
    }

    /// As [`H2Pool::start`], towards `endpoint` with its own limits and TLS.
    pub async fn start_at(
        &self,
        endpoint: &Endpoint,
        head: Request<()>,
        end_of_stream: bool,
    ) -> Result<Call, PoolError> {
        let mut tries = 0;
        let (conn, opened, slot, mut send) = loop {
            tries += 1;
            let (conn, opened) = self.pick(endpoint).await?;
            let slot = Slot::take(&conn);
            match conn.send.clone().ready().await {
                Ok(send) => break (conn, opened, slot, send),
                Err(err) => {
                    conn.dead.set(true);
                    // A pooled connection that went away (closed, GOAWAY)
                    // before this request was sent: once more, on another.
                    if opened || tries > 1 {
                        return Err(err.into());
                    }
                }
            }
        };
        let (response, stream) = match send.send_request(head, end_of_stream) {
            Ok(pair) => pair,
            Err(err) => {
                if !err.is_reset() {
                    conn.dead.set(true);
                }
                return Err(err.into());
            }
        };
        let body = if end_of_stream {
            None
        } else {
            Some(SendBody::new(stream, endpoint.stall_timeout, None))
        };
        Ok(Call {
            body,
            response,
            slot,
            opened,
        })
    }

    /// A whole exchange: head and body (and trailers), then the response
    /// head, its body (up to `cap` bytes) and its trailers.
    pub async fn send(
        &self,
        target: SocketAddr,
        request: Request<Bytes>,
        trailers: Option<HeaderMap>,
        cap: usize,
    ) -> Result<(response::Parts, Bytes, Option<HeaderMap>), PoolError> {
        let (head, body) = request.into_parts();
        let end = body.is_empty() && trailers.is_none();
        let mut call = self
            .start(target, Request::from_parts(head, ()), end)
            .await?;
        if let Some(mut send) = call.body.take() {
            send.send(body).await.map_err(PoolError::Send)?;
            match trailers {
                Some(trailers) => send.trailers(trailers),
                None => send.finish(),
            }
            .map_err(PoolError::Send)?;
        }
        let (head, mut body) = call.response().await?;
        let bytes = body.collect(cap).await.map_err(|err| match err {
            CollectError::H2(err) => PoolError::H2(err),
            CollectError::TooLarge => PoolError::TooLarge,
        })?;
        let trailers = body.trailers().await?;
        Ok((head, bytes, trailers))
    }

    /// A connection with room for a stream, and whether it was opened for it.
    async fn pick(&self, endpoint: &Endpoint) -> Result<(Rc<Pooled>, bool), PoolError> {
        let target = (endpoint.addr, endpoint.key);
        let give_up = std::time::Instant::now() + endpoint.queue_timeout;
        loop {
            // Decided under the borrow, acted on after it.
            let next = {
                let mut targets = self.targets.borrow_mut();
                let entry = targets.entry(target).or_default();
                let now = std::time::Instant::now();
                let idle = endpoint.idle_timeout;
                entry
                    .conns
                    .retain(|c| !c.dead.get() && !c.idle_for(idle, now));
                let best = entry
                    .conns
                    .iter()
                    .filter(|c| c.streams.get() < endpoint.max_streams_per_connection)
                    .min_by_key(|c| c.streams.get());
                if let Some(best) = best {
                    return Ok((best.clone(), false));
                }
                if let Some(connecting) = &entry.connecting {
                    Next::Wait(connecting.clone())
                } else if entry.conns.len() >= endpoint.max_connections {
                    Next::Queue(entry.freed.current())
                } else {
                    let signal = Signal::new();
                    entry.connecting = Some(signal.clone());
                    Next::Connect(signal, entry.freed.clone())
                }
            };
            let (signal, freed) = match next {
                Next::Wait(signal) => {
                    signal.wait().await;
                    continue;
                }
                Next::Queue(freed) => {
                    // A stream ending or a connection dying makes room.
                    let left = give_up.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() || monoio::time::timeout(left, freed.wait()).await.is_err() {
                        return Err(PoolError::Saturated);
                    }
                    continue;
                }
                Next::Connect(signal, freed) => (signal, freed),
            };
            // Clears the mark and wakes the waiters even if this request is
            // dropped while connecting.
            let _connecting = Connecting {
                pool: self,
                target,
                signal,
            };
            let conn = self.connect(endpoint, freed).await?;
            let mut targets = self.targets.borrow_mut();
            targets.entry(target).or_default().conns.push(conn.clone());
            return Ok((conn, true));
        }
    }

    async fn connect(&self, endpoint: &Endpoint, freed: Freed) -> Result<Rc<Pooled>, PoolError> {
        let limits = &self.limits;
        let target = endpoint.addr;
        // The connection window covers every stream's window, so streams
        // whose clients read slowly cannot hold up the others.
        let streams = u32::try_from(endpoint.max_streams_per_connection).unwrap_or(u32::MAX);
        let connection_window = limits
            .initial_stream_window
            .saturating_mul(streams)
            .max(limits.initial_connection_window)
            .min(MAX_WINDOW);
        let builder = || {
            let mut b = h2::client::Builder::new();
            b.max_header_list_size(limits.max_header_list_size)
                .initial_window_size(limits.initial_stream_window)
                .initial_connection_window_size(connection_window)
                .enable_push(false);
            b
        };
        let handshake = async {
            let stream = monoio::net::TcpStream::connect(target)
                .await
                .map_err(PoolError::Connect)?;
            let _ = stream.set_nodelay(true);
            match &endpoint.tls {
                None => {
                    let io = Prefixed::new(stream, Bytes::new());
                    let (send, conn) = builder()
                        .handshake::<_, Bytes>(io)
                        .await
                        .map_err(PoolError::H2)?;
                    Ok((send, Driver::Plain(conn)))
                }
                Some(tls) => {
                    let session =
                        rustls::ClientConnection::new(tls.config.clone(), tls.name.clone())
                            .map_err(|e| PoolError::Tls(format!("TLS setup: {e}")))?;
                    let mut s = crate::tls::TlsStream::new(stream, session);
                    s.handshake().await.map_err(|e| {
                        let alpn = if e.to_string().contains("NoApplicationProtocol") {
                            " (it offers no HTTP/2 by ALPN h2)"
                        } else {
                            ""
                        };
                        PoolError::Tls(format!("TLS handshake with {target} failed: {e}{alpn}"))
                    })?;
                    if s.session().alpn_protocol() != Some(b"h2") {
                        return Err(PoolError::Tls(format!(
                            "{target} did not select HTTP/2 (ALPN h2) in the TLS handshake"
                        )));
                    }
                    let io = Prefixed::new(crate::tls::Stream::Tls(Box::new(s)), Bytes::new());
                    let (send, conn) = builder()
                        .handshake::<_, Bytes>(io)
                        .await
                        .map_err(PoolError::H2)?;
                    Ok((send, Driver::Tls(conn)))
                }
            }
        };
        let (send, connection) =
            match monoio::time::timeout(endpoint.connect_timeout, handshake).await {
                Err(_elapsed) => {
                    return Err(PoolError::Connect(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "h2 connect timed out",
                    )))
                }
                Ok(result) => result?,
            };
        let dead = Rc::new(Cell::new(false));
        let flag = dead.clone();
        let on_death = freed.clone();
        // The connection is driven on this shard by its own task; when it
        // ends (closed, GOAWAY done, error) the pool drops it.
        monoio::spawn(async move {
            match connection {
                Driver::Plain(c) => {
                    let _ = c.await;
                }
                Driver::Tls(c) => {
                    let _ = c.await;
                }
            }
            flag.set(true);
            on_death.fire();
        });
        self.opened.set(self.opened.get().saturating_add(1));
        Ok(Rc::new(Pooled {
            send,
            streams: Cell::new(0),
            dead,
            freed,
            idle_since: Cell::new(std::time::Instant::now()),
        }))
    }
}
