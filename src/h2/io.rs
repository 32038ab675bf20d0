//! The socket adapter: monoio stream → tokio IO traits, with bytes already
//! read by the protocol sniffer replayed first.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio_compat::StreamWrapper;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Reads in a row that find data at once before the connection's task
/// yields to the shard's other tasks. `h2` reads, answers and reads again
/// for as long as the socket has data; on the epoll driver every such read
/// completes at once, so a peer that keeps sending (a PING flood whose
/// answers it reads) held the shard: new connections were not even
/// accepted until it stopped. With io_uring a read usually waits for its
/// completion, which yields anyway.
const READ_BUDGET: u32 = 8;

/// A monoio stream as tokio IO, replaying `prefix` before reading the socket.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: StreamWrapper<S>,
    guard: Option<ControlGuard>,
    /// Reads in a row that were ready at once.
    ready_reads: u32,
}

impl<S> Prefixed<S> {
    /// Wraps `stream`; `prefix` are bytes already read from it.
    pub fn new(stream: S, prefix: Bytes) -> Self {
        Prefixed {
            prefix,
            inner: StreamWrapper::new(stream),
            guard: None,
            ready_reads: 0,
        }
    }

    /// Like [`Prefixed::new`], for a server: the client's SETTINGS and PING
    /// frames are counted as they are read, and reading fails (the
    /// connection ends) past `guard`'s limit.
    pub fn guarded(stream: S, prefix: Bytes, guard: ControlGuard) -> Self {
        Prefixed {
            guard: Some(guard),
            ..Prefixed::new(stream, prefix)
        }
    }
}

/// Counts a client's SETTINGS and PING frames (ACKs aside) from the raw
/// bytes of its connection: `h2` answers each of them and has no limit of
/// its own, so a flood would cost the gateway a write per frame for as long
/// as it lasts. Past `max` such frames within `interval` the connection is
/// ended (as Envoy's limit on queued control frames does).
#[derive(Debug, Clone)]
pub struct ControlGuard {
    max: usize,
    interval: std::time::Duration,
    count: usize,
    since: std::time::Instant,
    /// Bytes of the client preface still to pass.
    preface: usize,
    header: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
}

impl ControlGuard {
    /// At most `max` SETTINGS and PING frames per `interval`.
    pub fn new(max: usize, interval: std::time::Duration) -> Self {
        ControlGuard {
            max,
            interval,
            count: 0,
            since: std::time::Instant::now(),
            preface: super::PREFACE.len(),
            header: [0; 9],
            have: 0,
            skip: 0,
        }
    }

    /// Follows the frames in `bytes`; false once the limit is passed.
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            let n = if self.preface > 0 {
                let n = self.preface.min(bytes.len());
                self.preface -= n;
                n
            } else if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                n
            } else {
                let n = (9 - self.have).min(bytes.len());
                if let (Some(dst), Some(src)) = (
                    self.header.get_mut(self.have..self.have + n),
                    bytes.get(..n),
                ) {
                    dst.copy_from_slice(src);
                }
                self.have += n;
                if self.have == 9 {
                    self.have = 0;
                    let [l0, l1, l2, kind, flags, ..] = self.header;
                    self.skip = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
                    // SETTINGS (4) and PING (6) without the ACK flag.
                    if (kind == 4 || kind == 6) && flags & 1 == 0 && !self.note() {
                        return false;
                    }
                }
                n
            };
            bytes = bytes.get(n..).unwrap_or_default();
        }
        true
    }

    fn note(&mut self) -> bool {
        if self.since.elapsed() > self.interval {
            self.since = std::time::Instant::now();
            self.count = 0;
        }
        self.count += 1;
        self.count <= self.max
    }
}

impl<S: AsyncReadRent + Unpin + 'static> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
        } else {
            if this.ready_reads >= READ_BUDGET {
                // Yield. A task that wakes itself while it runs is put back
                // at the front of monoio's queue, so the wake comes from a
                // small task of its own, queued behind the shard's ready tasks.
                this.ready_reads = 0;
                let waker = cx.waker().clone();
                monoio::spawn(async move { waker.wake() });
                return Poll::Pending;
            }
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => this.ready_reads = this.ready_reads.saturating_add(1),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    this.ready_reads = 0;
                    return Poll::Pending;
                }
            }
        }
        if let Some(guard) = &mut this.guard {
            if !guard.feed(buf.filled().get(before..).unwrap_or_default()) {
                return Poll::Ready(Err(io::Error::other(
                    "too many SETTINGS and PING frames from the client",
                )));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWriteRent + Unpin + 'static> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(kind: u8, flags: u8, payload: usize) -> Vec<u8> {
        let mut f = vec![
            0,
            (payload >> 8) as u8,
            payload as u8,
            kind,
            flags,
            0,
            0,
            0,
            0,
        ];
        f.resize(9 + payload, 7);
        f
    }

    #[test]
    fn control_frames_are_counted_across_reads() {
        let mut g = ControlGuard::new(3, Duration::from_secs(60));
        let mut wire = crate::h2::PREFACE.to_vec();
        wire.extend(frame(4, 0, 6)); // SETTINGS
        wire.extend(frame(4, 1, 0)); // SETTINGS ACK: not counted
        wire.extend(frame(0, 0, 300)); // DATA
        wire.extend(frame(6, 0, 8)); // PING
        wire.extend(frame(6, 1, 8)); // PING ACK: not counted
        wire.extend(frame(6, 0, 8)); // PING: the third
        for piece in wire.chunks(5) {
            assert!(g.feed(piece));
        }
        assert!(!g.feed(&frame(4, 0, 0)), "the fourth is over the limit");
    }
}
