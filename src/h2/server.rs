//! The downstream side: one HTTP/2 connection with prior knowledge (h2c),
//! every stream handed to a handler on its own task on the shard.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::Reason;
use http::{HeaderMap, Request, Response};
use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::body::{Resets, SendError};
use super::{H2Limits, Prefixed, RecvBody, SendBody, Signal};

/// A shard-local shutdown signal: once fired, every connection serving with
/// it sends GOAWAY, finishes its open streams and closes.
pub type Shutdown = Signal;

/// How a handler answers its stream.
pub struct Responder {
    inner: SendResponse<Bytes>,
    stall: Duration,
    resets: Rc<Resets>,
}

impl Responder {
    /// Sends the response head. With `end_of_stream` the response has no
    /// body (`None`); otherwise the body follows through the [`SendBody`].
    pub fn send_head(
        mut self,
        head: Response<()>,
        end_of_stream: bool,
    ) -> Result<Option<SendBody>, SendError> {
        match self.inner.send_response(head, end_of_stream) {
            Ok(stream) if end_of_stream => {
                drop(stream);
                Ok(None)
            }
            Ok(stream) => Ok(Some(SendBody::new(
                stream,
                self.stall,
                Some(self.resets.clone()),
            ))),
            Err(err) => {
                self.resets.note_if_remote(&err);
                Err(SendError::H2(err))
            }
        }
    }

    /// Sends the response head and returns the stream's sending half even
    /// when `end_of_stream` ended it (to reset an unwanted request body).
    pub fn send_head_keep(
        mut self,
        head: Response<()>,
        end_of_stream: bool,
    ) -> Result<SendBody, SendError> {
        match self.inner.send_response(head, end_of_stream) {
            Ok(stream) => Ok(SendBody::new(stream, self.stall, Some(self.resets.clone()))),
            Err(err) => {
                self.resets.note_if_remote(&err);
                Err(SendError::H2(err))
            }
        }
    }

    /// Sends a whole response: head, body, then trailers if any.
    pub async fn send_full(
        self,
        head: Response<()>,
        body: Bytes,
        trailers: Option<HeaderMap>,
    ) -> Result<(), SendError> {
        if body.is_empty() && trailers.is_none() {
            self.send_head(head, true)?;
            return Ok(());
        }
        let Some(mut send) = self.send_head(head, false)? else {
            return Ok(());
        };
        send.send(body).await?;
        match trailers {
            Some(trailers) => send.trailers(trailers),
            None => send.finish(),
        }
    }

    /// Resets the stream instead of answering.
    pub fn reset(mut self, reason: Reason) {
        self.inner.send_reset(reason);
    }
}

/// A connection's stream tasks: how many are open, and since when none is.
struct Activity {
    open: Cell<usize>,
    quiet_since: Cell<Instant>,
}

impl Activity {
    fn new() -> Rc<Self> {
        Rc::new(Activity {
            open: Cell::new(0),
            quiet_since: Cell::new(Instant::now()),
        })
    }

    /// How long the connection has had no open stream (zero while one is).
    fn quiet_for(&self) -> Duration {
        match self.open.get() {
            0 => self.quiet_since.get().elapsed(),
            _ => Duration::ZERO,
        }
    }
}

/// Counts a stream task as open while alive.
struct Open(Rc<Activity>);

impl Open {
    fn new(activity: &Rc<Activity>) -> Self {
        activity.open.set(activity.open.get().saturating_add(1));
        Open(activity.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let open = self.0.open.get().saturating_sub(1);
        self.0.open.set(open);
        if open == 0 {
            self.0.quiet_since.set(Instant::now());
        }
    }
}

/// Why a connection ended early.
#[derive(Debug)]
pub enum ServeError {
    /// No (complete) preface and SETTINGS within the idle timeout.
    HandshakeTimeout,
    /// The connection failed (I/O or a protocol error, GOAWAY sent).
    H2(h2::Error),
}

/// What the accept loop saw happen.
enum Step<T> {
    Stream(T),
    Closed,
    Failed(h2::Error),
    Shutdown,
    Idle,
    /// The idle clock was looked at; the connection is not idle.
    Tick,
    /// Closing, no stream left, and still not closed after an idle timeout.
    Stuck,
}

/// Serves one h2c (prior knowledge) connection until it closes: `buffered`
/// are bytes already read from `stream` (the preface, as the sniffer saw
/// it). Each stream runs `handler` on its own task on this shard.
pub async fn serve_h2c<S, H, F>(
    stream: S,
    buffered: Bytes,
    limits: &H2Limits,
    shutdown: Rc<Shutdown>,
    handler: Rc<H>,
) -> Result<(), ServeError>
where
    S: AsyncReadRent + AsyncWriteRent + Unpin + 'static,
    H: Fn(Request<RecvBody>, Responder) -> F + 'static,
    F: Future<Output = ()> + 'static,
{
    let guard = super::io::ControlGuard::new(limits.max_control_frames, limits.reset_interval);
    let io = Prefixed::guarded(stream, buffered, guard);
    serve_h2(io, limits, shutdown, handler).await
}

/// Serves one HTTP/2 connection over any tokio-style IO (the socket adapter
/// of [`serve_h2c`], or a TLS stream once ALPN chose h2).
pub async fn serve_h2<T, H, F>(
    io: T,
    limits: &H2Limits,
    shutdown: Rc<Shutdown>,
    handler: Rc<H>,
) -> Result<(), ServeError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
    H: Fn(Request<RecvBody>, Responder) -> F + 'static,
    F: Future<Output = ()> + 'static,
{
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_size)
        .max_frame_size(limits.max_frame_size)
        .initial_window_size(limits.initial_stream_window)
        .initial_connection_window_size(limits.initial_connection_window)
        .max_send_buffer_size(limits.max_send_buffer)
        .max_pending_accept_reset_streams(limits.max_resets)
        .max_local_error_reset_streams(Some(limits.max_resets));
    let mut conn = match monoio::time::timeout(limits.idle_timeout, builder.handshake(io)).await {
        Err(_elapsed) => return Err(ServeError::HandshakeTimeout),
        Ok(Err(err)) => return Err(ServeError::H2(err)),
        Ok(Ok(conn)) => conn,
    };
    let resets = Rc::new(Resets::default());
    let activity = Activity::new();
    let mut draining = false;
    let mut drained_at = Instant::now();
    // One registration with the signal for the connection's life.
    let mut stop = std::pin::pin!(shutdown.wait());
    // The idle clock runs from the end of the last stream; while streams
    // are open it is looked at again every idle timeout (the stream tasks
    // bound their own stalls). A closing connection waits for its streams.
    // One timer for the connection, moved only when it fires.
    let mut tick = std::pin::pin!(monoio::time::sleep(limits.idle_timeout));
    loop {
        // A closing connection waits for its streams, then at most one idle
        // timeout more for its close (a peer that reads nothing never lets
        // the GOAWAY out).
        let quiet = |draining: bool| match draining {
            true => activity.quiet_for().min(drained_at.elapsed()),
            false => activity.quiet_for(),
        };
        let step = monoio::select! {
            next = conn.accept() => match next {
                None => Step::Closed,
                Some(Err(err)) => Step::Failed(err),
                Some(Ok(stream)) => Step::Stream(stream),
            },
            _ = &mut tick => {
                let quiet = quiet(draining);
                if quiet >= limits.idle_timeout {
                    match draining {
                        true => Step::Stuck,
                        false => Step::Idle,
                    }
                } else {
                    let next = limits.idle_timeout.saturating_sub(quiet);
                    tick.as_mut().reset(monoio::time::Instant::now() + next);
                    Step::Tick
                }
            },
            _ = &mut stop, if !draining => Step::Shutdown,
        };
        match step {
            Step::Closed | Step::Stuck => return Ok(()),
            Step::Tick => {}
            Step::Failed(err) => return Err(ServeError::H2(err)),
            Step::Shutdown | Step::Idle => {
                conn.graceful_shutdown();
                draining = true;
                drained_at = Instant::now();
                tick.as_mut()
                    .reset(monoio::time::Instant::now() + limits.idle_timeout);
            }
            Step::Stream((request, respond)) => {
                if resets.over(limits.max_resets, limits.reset_interval) {
                    conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                    draining = true;
                    drained_at = Instant::now();
                    continue;
                }
                let (head, body) = request.into_parts();
                let request =
                    Request::from_parts(head, RecvBody::new(body, Some(resets.clone()), None));
                let responder = Responder {
                    inner: respond,
                    stall: limits.idle_timeout,
                    resets: resets.clone(),
                };
                let guard = Open::new(&activity);
                let task = handler(request, responder);
                monoio::spawn(async move {
                    // A panic ends this stream only (its responder is
                    // dropped: the stream is reset), like a panic in an
                    // HTTP/1.1 connection task.
                    if let Err(why) = crate::server::contain(task).await {
                        eprintln!("shardgate: h2 stream handler panicked: {why}");
                    }
                    drop(guard);
                });
            }
        }
    }
}
