//! The upstream side: HTTP/2 (h2c) connections per target on this shard,
//! each carrying up to a cap of streams; a new connection opens when every
//! live one is at its cap, and dead ones (closed, GOAWAY) are dropped.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use http::{response, HeaderMap, Request};

use super::body::{CollectError, SendError};
use super::{Prefixed, RecvBody, SendBody, Signal};

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
    /// The connection-level receive window.
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
}

impl From<h2::Error> for PoolError {
    fn from(err: h2::Error) -> Self {
        PoolError::H2(err)
    }
}

struct Pooled {
    send: SendRequest<Bytes>,
    streams: Cell<usize>,
    dead: Rc<Cell<bool>>,
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
        self.0.streams.set(self.0.streams.get().saturating_sub(1));
    }
}

/// The connections to one target, and the connect under way, if any (one
/// at a time: requests arriving meanwhile wait for it instead of each
/// opening their own).
#[derive(Default)]
struct Target {
    conns: Vec<Rc<Pooled>>,
    connecting: Option<Rc<Signal>>,
}

/// A connect under way; on drop the target's mark is cleared and the
/// requests waiting for it look again.
struct Connecting<'a> {
    pool: &'a H2Pool,
    target: SocketAddr,
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

/// HTTP/2 upstream connections of one shard.
pub struct H2Pool {
    limits: PoolLimits,
    targets: RefCell<HashMap<SocketAddr, Target>>,
    opened: Cell<u64>,
}

/// A request under way: its body (if it has one) and its response.
pub struct Call {
    /// The request body's sender; `None` when the head ended the stream.
    pub body: Option<SendBody>,
    response: ResponseFuture,
    slot: Slot,
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

    /// Live connections to `target`.
    pub fn connections(&self, target: SocketAddr) -> usize {
        self.targets
            .borrow()
            .get(&target)
            .map_or(0, |t| t.conns.iter().filter(|c| !c.dead.get()).count())
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
        let conn = self.pick(target).await?;
        let slot = Slot::take(&conn);
        let send = match conn.send.clone().ready().await {
            Ok(send) => send,
            Err(err) => {
                conn.dead.set(true);
                return Err(err.into());
            }
        };
        let mut send = send;
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
            Some(SendBody::new(stream, self.limits.stall_timeout, None))
        };
        Ok(Call {
            body,
            response,
            slot,
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

    async fn pick(&self, target: SocketAddr) -> Result<Rc<Pooled>, PoolError> {
        loop {
            // Decided under the borrow, acted on after it.
            let (signal, mine) = {
                let mut targets = self.targets.borrow_mut();
                let entry = targets.entry(target).or_default();
                entry.conns.retain(|c| !c.dead.get());
                let best = entry
                    .conns
                    .iter()
                    .filter(|c| c.streams.get() < self.limits.max_streams_per_connection)
                    .min_by_key(|c| c.streams.get());
                if let Some(best) = best {
                    return Ok(best.clone());
                }
                if let Some(connecting) = &entry.connecting {
                    (connecting.clone(), false)
                } else if entry.conns.len() >= self.limits.max_connections_per_target {
                    return Err(PoolError::Saturated);
                } else {
                    let signal = Signal::new();
                    entry.connecting = Some(signal.clone());
                    (signal, true)
                }
            };
            if !mine {
                signal.wait().await;
                continue;
            }
            // Clears the mark and wakes the waiters even if this request is
            // dropped while connecting.
            let _connecting = Connecting {
                pool: self,
                target,
                signal,
            };
            let result = self.connect(target).await;
            if let Ok(conn) = &result {
                let mut targets = self.targets.borrow_mut();
                targets.entry(target).or_default().conns.push(conn.clone());
            }
            return result;
        }
    }

    async fn connect(&self, target: SocketAddr) -> Result<Rc<Pooled>, PoolError> {
        let limits = &self.limits;
        let handshake = async {
            let stream = monoio::net::TcpStream::connect(target)
                .await
                .map_err(PoolError::Connect)?;
            let _ = stream.set_nodelay(true);
            let io = Prefixed::new(stream, Bytes::new());
            h2::client::Builder::new()
                .max_header_list_size(limits.max_header_list_size)
                .initial_window_size(limits.initial_stream_window)
                .initial_connection_window_size(limits.initial_connection_window)
                .enable_push(false)
                .handshake::<_, Bytes>(io)
                .await
                .map_err(PoolError::H2)
        };
        let (send, connection) =
            match monoio::time::timeout(limits.connect_timeout, handshake).await {
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
        // The connection is driven on this shard by its own task; when it
        // ends (closed, GOAWAY done, error) the pool drops it.
        monoio::spawn(async move {
            let _ = connection.await;
            flag.set(true);
        });
        self.opened.set(self.opened.get().saturating_add(1));
        Ok(Rc::new(Pooled {
            send,
            streams: Cell::new(0),
            dead,
        }))
    }
}
