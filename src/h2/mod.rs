//! HTTP/2 on monoio: the connection layer, server (h2c with prior knowledge)
//! and client pool, on the `h2` crate.
//!
//! `h2` is written against tokio's `AsyncRead`/`AsyncWrite`; monoio's
//! sockets are adapted by `monoio_compat::StreamWrapper` (safe, one owned
//! read and one owned write buffer per connection). `h2` never spawns: a
//! connection is a future driven by the task that owns it, and every stream
//! of it runs as a `monoio::spawn`ed task on the same shard, so nothing of a
//! connection leaves its thread.
//!
//! - [`server::serve_h2c`]: one downstream connection, with [`H2Limits`].
//! - [`pool::H2Pool`]: multiplexed upstream connections per target.
//! - [`body`]: the stream halves shared by both sides ([`RecvBody`],
//!   [`SendBody`]), with flow control.
//! - [`bridge`]: a downstream stream as one HTTP/1.1 exchange, so it runs
//!   the request pipeline (`Stream::H2` under the connection's `Conn`).
//! - [`relay`]: a downstream stream and an upstream stream relayed both
//!   ways at once (gRPC streaming), used by `proxy::h2native`.
//!
//! See the README's "HTTP/2 and gRPC" sections (use and design).

pub mod body;
pub mod bridge;
pub mod io;
pub mod pool;
pub mod relay;
pub mod server;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

pub use body::{RecvBody, SendBody};
pub use io::Prefixed;
pub use pool::{Endpoint, EndpointTls, H2Pool, PoolError, PoolLimits};
pub use server::{serve_h2, serve_h2c, Responder, Shutdown};

/// Fields that belong to one HTTP/1.1 connection and are never sent on an
/// HTTP/2 stream (RFC 9113 §8.2.2).
pub const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` is one of [`CONNECTION_SPECIFIC`] (any case).
pub fn connection_specific(name: &[u8]) -> bool {
    CONNECTION_SPECIFIC
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a plain connection say about its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// The bytes so far are a prefix of the h2 preface: read more.
    NeedMore,
    /// The whole preface is there: an h2c prior-knowledge connection.
    H2,
    /// Anything else (HTTP/1.1).
    Http1,
}

/// Classifies already-buffered bytes of a new plain connection, so one
/// listener can take both HTTP/1.1 and h2c with prior knowledge.
pub fn sniff(buffered: &[u8]) -> Sniff {
    let n = buffered.len().min(PREFACE.len());
    if buffered.get(..n) != PREFACE.get(..n) {
        Sniff::Http1
    } else if n == PREFACE.len() {
        Sniff::H2
    } else {
        Sniff::NeedMore
    }
}

/// A shard-local one-shot signal: fired once, awaited by any number of tasks.
///
/// Each [`Wait`] owns one slot, registered on its first poll and updated in
/// place after that; slots of dropped waits are pruned. (Deduplicating by
/// `Waker::will_wake` is not enough: it is best-effort, and in an optimised
/// build it did not match a clone of the same task's waker, so the list
/// grew by one per poll.) A long-lived
/// waiter (a connection's accept loop) should keep one `Wait` pinned rather
/// than make one per iteration.
#[derive(Default)]
pub struct Signal {
    fired: Cell<bool>,
    waiters: RefCell<Vec<Rc<RefCell<Option<Waker>>>>>,
}

impl Signal {
    /// A signal not yet fired.
    pub fn new() -> Rc<Self> {
        Rc::new(Signal::default())
    }

    /// Fires the signal, waking every waiter.
    pub fn fire(&self) {
        self.fired.set(true);
        for slot in self.waiters.borrow_mut().drain(..) {
            if let Some(waker) = slot.borrow_mut().take() {
                waker.wake();
            }
        }
    }

    /// Whether it was fired.
    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    /// A future that resolves once the signal is fired.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            signal: self,
            slot: None,
        }
    }
}

/// Waiting for a [`Signal`].
pub struct Wait<'a> {
    signal: &'a Signal,
    slot: Option<Rc<RefCell<Option<Waker>>>>,
}

impl std::future::Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.signal.fired.get() {
            return Poll::Ready(());
        }
        match &self.slot {
            Some(slot) => *slot.borrow_mut() = Some(cx.waker().clone()),
            None => {
                let slot = Rc::new(RefCell::new(Some(cx.waker().clone())));
                let mut waiters = self.signal.waiters.borrow_mut();
                // Slots whose `Wait` is gone hold the only reference.
                waiters.retain(|w| Rc::strong_count(w) > 1);
                waiters.push(slot.clone());
                drop(waiters);
                self.slot = Some(slot);
            }
        }
        Poll::Pending
    }
}

/// Limits of one downstream HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct H2Limits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams over it are refused
    /// (RST_STREAM REFUSED_STREAM).
    pub max_concurrent_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: the decoded header list cap (also
    /// what bounds CONTINUATION floods and HPACK bombs); over it the stream
    /// is answered 431 and reset.
    pub max_header_list_size: u32,
    /// SETTINGS_MAX_FRAME_SIZE (16 KiB ..= 16 MiB - 1).
    pub max_frame_size: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE for each stream.
    pub initial_stream_window: u32,
    /// The connection-level receive window.
    pub initial_connection_window: u32,
    /// Bytes buffered for sending per stream before the writer waits.
    pub max_send_buffer: usize,
    /// Resets caused by the peer counted per connection: past it, GOAWAY
    /// ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487). Also the cap on
    /// streams reset before they were accepted.
    pub max_resets: usize,
    /// The interval over which `max_resets` and `max_control_frames` count.
    pub reset_interval: Duration,
    /// SETTINGS and PING frames from the client per interval before the
    /// connection is ended (settings and ping floods).
    pub max_control_frames: usize,
    /// A stream whose send window stays at zero this long is reset, and a
    /// connection with no stream this long is closed with GOAWAY.
    pub idle_timeout: Duration,
}

impl H2Limits {
    /// The limits a listener's `http2_limits` set.
    pub fn from_config(c: &crate::config::Http2Limits) -> Self {
        H2Limits {
            max_concurrent_streams: c.max_concurrent_streams,
            max_header_list_size: c.max_header_list_bytes,
            max_frame_size: c.max_frame_bytes,
            initial_stream_window: c.stream_window_bytes,
            initial_connection_window: c.connection_window_bytes,
            max_send_buffer: H2Limits::default().max_send_buffer,
            max_resets: c.max_resets,
            reset_interval: Duration::from_secs(c.reset_interval_s),
            max_control_frames: c.max_control_frames,
            idle_timeout: Duration::from_millis(c.idle_timeout_ms),
        }
    }
}

impl Default for H2Limits {
    fn default() -> Self {
        H2Limits {
            max_concurrent_streams: 128,
            max_header_list_size: 16 * 1024,
            max_frame_size: 16 * 1024,
            initial_stream_window: 256 * 1024,
            initial_connection_window: 1024 * 1024,
            max_send_buffer: 64 * 1024,
            max_resets: 100,
            reset_interval: Duration::from_secs(10),
            max_control_frames: 1000,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_keeps_one_slot_per_wait() {
        use std::future::Future;
        use std::task::{Context, Waker};
        let signal = Signal::new();
        let mut wait = std::pin::pin!(signal.wait());
        for _ in 0..1000 {
            // A new waker on every poll (`will_wake` may not match a clone).
            let waker = Waker::noop().clone();
            let mut cx = Context::from_waker(&waker);
            assert!(wait.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(signal.waiters.borrow().len(), 1);
        for _ in 0..10 {
            let mut other = std::pin::pin!(signal.wait());
            let mut cx = Context::from_waker(Waker::noop());
            assert!(other.as_mut().poll(&mut cx).is_pending());
        }
        // Dropped waits are pruned at the next registration.
        assert!(signal.waiters.borrow().len() <= 2);
        signal.fire();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(wait.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn sniff_preface() {
        assert_eq!(sniff(b""), Sniff::NeedMore);
        assert_eq!(sniff(b"PRI * HT"), Sniff::NeedMore);
        assert_eq!(sniff(PREFACE), Sniff::H2);
        let mut more = PREFACE.to_vec();
        more.extend_from_slice(b"\0\0\0\x04");
        assert_eq!(sniff(&more), Sniff::H2);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::Http1);
        assert_eq!(sniff(b"PRI * HTTP/1.1"), Sniff::Http1);
    }
}
