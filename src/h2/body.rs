//! The two halves of an HTTP/2 stream's body, with flow control: what is
//! received is handed out one DATA frame at a time and its window released
//! as it is taken; what is sent waits for window, never buffering more than
//! the stream's send buffer.

use std::cell::Cell;
use std::future::poll_fn;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::HeaderMap;

/// Resets caused by the peer on one connection (rapid-reset accounting).
#[derive(Debug, Default)]
pub struct Resets {
    count: Cell<usize>,
    since: Cell<Option<Instant>>,
}

impl Resets {
    /// Counts one reset by the peer.
    pub fn note(&self) {
        self.count.set(self.count.get().saturating_add(1));
    }

    /// Counts the errors that are a reset by the peer.
    pub fn note_if_remote(&self, err: &h2::Error) {
        if err.is_reset() && err.is_remote() {
            self.note();
        }
    }

    /// Whether more than `max` resets came within the current `interval`;
    /// starts a new interval when the current one is over.
    pub fn over(&self, max: usize, interval: Duration) -> bool {
        // No reset yet (the usual case): nothing to look at, no clock read.
        if self.count.get() == 0 {
            return false;
        }
        let now = Instant::now();
        let start = *self.since.get().get_or_insert(now);
        if now.duration_since(start) > interval {
            self.since.set(Some(now));
            self.count.set(0);
        } else if self.since.get().is_none() {
            self.since.set(Some(start));
        }
        self.count.get() > max
    }
}

/// The receiving half of a stream: request body (server) or response body
/// (client), then trailers.
pub struct RecvBody {
    stream: RecvStream,
    resets: Option<Rc<Resets>>,
    /// Held while the body is alive (the pool's stream count).
    _slot: Option<Box<dyn std::any::Any>>,
}

impl RecvBody {
    pub(crate) fn new(
        stream: RecvStream,
        resets: Option<Rc<Resets>>,
        slot: Option<Box<dyn std::any::Any>>,
    ) -> Self {
        RecvBody {
            stream,
            resets,
            _slot: slot,
        }
    }

    /// Whether the peer already ended the stream (no body or body done).
    pub fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }

    /// The next chunk of the body, `None` at its end. The chunk's bytes are
    /// given back to the peer's window as they are handed out.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, h2::Error>> {
        let next = self.stream.data().await;
        match &next {
            Some(Ok(data)) => {
                // Never more than what was received, so this cannot fail
                // but for a closed stream, which the next read reports.
                let _ = self.stream.flow_control().release_capacity(data.len());
            }
            Some(Err(err)) => self.note(err),
            None => {}
        }
        next
    }

    /// The trailers, after the body's end (`None`: the stream had none).
    pub async fn trailers(&mut self) -> Result<Option<HeaderMap>, h2::Error> {
        let trailers = self.stream.trailers().await;
        if let Err(err) = &trailers {
            self.note(err);
        }
        trailers
    }

    /// Reads the whole body, refusing more than `cap` bytes.
    pub async fn collect(&mut self, cap: usize) -> Result<Bytes, CollectError> {
        let mut out = bytes::BytesMut::new();
        while let Some(chunk) = self.chunk().await {
            let chunk = chunk.map_err(CollectError::H2)?;
            if out.len().saturating_add(chunk.len()) > cap {
                return Err(CollectError::TooLarge);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }

    fn note(&self, err: &h2::Error) {
        if let Some(resets) = &self.resets {
            resets.note_if_remote(err);
        }
    }
}

/// Why [`RecvBody::collect`] failed.
#[derive(Debug)]
pub enum CollectError {
    /// The stream failed.
    H2(h2::Error),
    /// The body was larger than the cap.
    TooLarge,
}

/// Why sending failed.
#[derive(Debug)]
pub enum SendError {
    /// The stream or connection failed (or the peer reset the stream).
    H2(h2::Error),
    /// The peer kept the window at zero past the stall timeout; the stream
    /// was reset.
    Stalled,
}

impl From<h2::Error> for SendError {
    fn from(err: h2::Error) -> Self {
        SendError::H2(err)
    }
}

/// The sending half of a stream: request body (client) or response body
/// (server), then trailers or the end.
pub struct SendBody {
    stream: SendStream<Bytes>,
    stall: Duration,
    resets: Option<Rc<Resets>>,
}

impl SendBody {
    pub(crate) fn new(
        stream: SendStream<Bytes>,
        stall: Duration,
        resets: Option<Rc<Resets>>,
    ) -> Self {
        SendBody {
            stream,
            stall,
            resets,
        }
    }

    /// Sends `data`, waiting for window as the peer grants it. A window
    /// that stays at zero for the stall timeout resets the stream.
    pub async fn send(&mut self, mut data: Bytes) -> Result<(), SendError> {
        while !data.is_empty() {
            self.stream.reserve_capacity(data.len());
            // Window already assigned (the usual case): no wait, no timer.
            let ready = self.stream.capacity();
            let granted = if ready > 0 {
                ready
            } else {
                match monoio::time::timeout(self.stall, poll_fn(|cx| self.stream.poll_capacity(cx)))
                    .await
                {
                    Err(_elapsed) => {
                        self.stream.send_reset(Reason::CANCEL);
                        return Err(SendError::Stalled);
                    }
                    Ok(None) => {
                        let err = self.reset_error().await;
                        return Err(err);
                    }
                    Ok(Some(Err(err))) => {
                        self.note(&err);
                        return Err(err.into());
                    }
                    Ok(Some(Ok(n))) => n,
                }
            };
            if granted == 0 {
                continue;
            }
            let part = data.split_to(granted.min(data.len()));
            if let Err(err) = self.stream.send_data(part, false) {
                self.note(&err);
                return Err(err.into());
            }
        }
        Ok(())
    }

    /// Ends the stream with trailers.
    pub fn trailers(mut self, trailers: HeaderMap) -> Result<(), SendError> {
        self.stream.send_trailers(trailers).map_err(|err| {
            self.note(&err);
            SendError::H2(err)
        })
    }

    /// Ends the stream without trailers.
    pub fn finish(mut self) -> Result<(), SendError> {
        self.stream.send_data(Bytes::new(), true).map_err(|err| {
            self.note(&err);
            SendError::H2(err)
        })
    }

    /// Ends the stream, with trailers when given, keeping the handle (a
    /// server can still reset a request body it no longer wants with
    /// NO_ERROR, RFC 9113 §8.1).
    pub fn end(&mut self, trailers: Option<HeaderMap>) -> Result<(), SendError> {
        match trailers {
            Some(t) => self.stream.send_trailers(t),
            None => self.stream.send_data(Bytes::new(), true),
        }
        .map_err(|err| {
            self.note(&err);
            SendError::H2(err)
        })
    }

    /// Resets the stream, keeping the handle.
    pub fn reset_in_place(&mut self, reason: Reason) {
        self.stream.send_reset(reason);
    }

    /// Resets the stream (e.g. the source of the body failed).
    pub fn reset(mut self, reason: Reason) {
        self.stream.send_reset(reason);
    }

    async fn reset_error(&mut self) -> SendError {
        match poll_fn(|cx| self.stream.poll_reset(cx)).await {
            Ok(reason) => {
                if let Some(resets) = &self.resets {
                    resets.note();
                }
                SendError::H2(h2::Error::from(reason))
            }
            Err(err) => SendError::H2(err),
        }
    }

    fn note(&self, err: &h2::Error) {
        if let Some(resets) = &self.resets {
            resets.note_if_remote(err);
        }
    }
}
