//! The socket adapter: monoio stream → tokio IO traits, with bytes already
//! read by the protocol sniffer replayed first.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio_compat::StreamWrapper;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A monoio stream as tokio IO, replaying `prefix` before reading the socket.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: StreamWrapper<S>,
}

impl<S> Prefixed<S> {
    /// Wraps `stream`; `prefix` are bytes already read from it.
    pub fn new(stream: S, prefix: Bytes) -> Self {
        Prefixed {
            prefix,
            inner: StreamWrapper::new(stream),
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
        Pin::new(&mut this.inner).poll_read(cx, buf)
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
