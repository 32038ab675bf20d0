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
    /// Reads in a row that were ready at once.
    ready_reads: u32,
}

impl<S> Prefixed<S> {
    /// Wraps `stream`; `prefix` are bytes already read from it.
    pub fn new(stream: S, prefix: Bytes) -> Self {
        Prefixed {
            prefix,
            inner: StreamWrapper::new(stream),
            ready_reads: 0,
        }
    }
}

impl<S: AsyncReadRent + Unpin + 'static> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        if this.ready_reads >= READ_BUDGET {
            // Yield. A task that wakes itself while it runs is put back at
            // the front of monoio's queue, so the wake comes from a small
            // task of its own, queued behind the shard's ready tasks.
            this.ready_reads = 0;
            let waker = cx.waker().clone();
            monoio::spawn(async move { waker.wake() });
            return Poll::Pending;
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(done) => {
                this.ready_reads = this.ready_reads.saturating_add(1);
                Poll::Ready(done)
            }
            Poll::Pending => {
                this.ready_reads = 0;
                Poll::Pending
            }
        }
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
