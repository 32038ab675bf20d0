//! A rustls connection driven over monoio's owned-buffer `TcpStream`, and
//! [`Stream`]: the transport of a [`crate::http::Conn`], plain or TLS.
//!
//! The adapter keeps one ciphertext buffer each way and hands rustls whole
//! records: a socket read fills `rbuf` (moved into the kernel operation and
//! back, as monoio's rent-style I/O wants), rustls decrypts from it in
//! place into its plaintext queue, and plaintext is copied once into the
//! caller's buffer. Writes encrypt into `wbuf`, which is then written with
//! one `write_all`. No boxing, no `poll`-style shims, no extra task.

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut, IoVecWrapper, IoVecWrapperMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent,
};
use monoio::net::TcpStream;
use monoio::BufResult;
use std::io::{self, BufRead, Write};
use std::os::fd::{AsRawFd, RawFd};

/// Room for one full TLS record (16 KiB of payload plus its framing).
const RECORD_READ: usize = 16 * 1024 + 512;
/// Most plaintext encrypted per `write` call (four full records).
const WRITE_CHUNK: usize = 64 * 1024;

/// A TLS session (server or client side) over a TCP stream.
pub struct TlsStream {
    tcp: TcpStream,
    session: rustls::Connection,
    /// Ciphertext read from the socket; `rbuf[rpos..]` not yet given to rustls.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Ciphertext waiting to be written (kept for reuse between writes).
    wbuf: Vec<u8>,
    /// The first bytes from the peer looked like an HTTP request line.
    plain_http: bool,
}

impl TlsStream {
    /// Wraps `tcp` with a fresh `session` (its handshake not yet run).
    pub fn new(tcp: TcpStream, session: impl Into<rustls::Connection>) -> TlsStream {
        TlsStream {
            tcp,
            session: session.into(),
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
            plain_http: false,
        }
    }

    /// The socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The rustls session (negotiated version, ALPN, peer certificates).
    pub fn session(&self) -> &rustls::Connection {
        &self.session
    }

    /// Whether the peer's first bytes looked like plain HTTP rather than a
    /// TLS record (a handshake starts with the record type 0x16).
    pub fn starts_like_http(&self) -> bool {
        self.plain_http
    }

    /// The socket back (after a failed handshake).
    pub fn into_parts(self) -> (TcpStream, rustls::Connection) {
        (self.tcp, self.session)
    }

    /// Runs the handshake to its end (the caller bounds it in time).
    pub async fn handshake(&mut self) -> io::Result<()> {
        while self.session.is_handshaking() {
            self.flush_tls().await?;
            if !self.session.is_handshaking() {
                break;
            }
            if self.session.wants_read() && self.read_tls(None).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        // The last flight and, for TLS 1.3 servers, the session tickets.
        self.flush_tls().await
    }

    /// Reads ciphertext from the socket (unless some is still buffered) and
    /// lets rustls process it; `Ok(0)` when the socket reached end-of-file.
    /// A protocol error is answered with the alert rustls queued, then
    /// returned as `InvalidData`.
    ///
    /// With `cancel`, the socket read can be cancelled: it then fails with
    /// `ECANCELED`, nothing read and the session untouched (a read that
    /// raced the cancel brings its bytes, processed as usual).
    async fn read_tls(&mut self, cancel: Option<&CancelHandle>) -> io::Result<usize> {
        if self.rpos >= self.rbuf.len() {
            let mut buf = std::mem::take(&mut self.rbuf);
            buf.clear();
            self.rpos = 0;
            if buf.capacity() < RECORD_READ {
                buf.reserve(RECORD_READ);
            }
            let (res, buf) = match cancel {
                Some(c) => self.tcp.cancelable_read(buf, c.clone()).await,
                None => self.tcp.read(buf).await,
            };
            self.rbuf = buf;
            let n = res?;
            if self.session.is_handshaking() && self.session.peer_certificates().is_none() {
                self.plain_http = looks_like_http(&self.rbuf);
            }
            if n == 0 {
                // Tells rustls the transport ended, so a missing
                // close_notify reads as an unclean close.
                let _ = self.session.read_tls(&mut io::empty());
                return Ok(0);
            }
        }
        let mut unread = self.rbuf.get(self.rpos..).unwrap_or_default();
        let n = self.session.read_tls(&mut unread)?;
        self.rpos += n;
        if let Err(e) = self.session.process_new_packets() {
            // A plain-HTTP client is answered in plain HTTP instead.
            if !self.plain_http {
                let _ = self.flush_tls().await;
            }
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(n.max(1))
    }

    /// Writes out everything rustls has queued.
    async fn flush_tls(&mut self) -> io::Result<()> {
        while self.session.wants_write() {
            let mut buf = std::mem::take(&mut self.wbuf);
            buf.clear();
            self.session.write_tls(&mut buf)?;
            let (res, buf) = self.tcp.write_all(buf).await;
            self.wbuf = buf;
            res?;
        }
        Ok(())
    }

    /// Reads decrypted bytes into `buf`; `Ok(0)` when the peer closed.
    pub async fn read_plain<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        self.read_decrypted(buf, None).await
    }

    /// [`TlsStream::read_plain`], with a cancellable socket read.
    async fn read_decrypted<T: IoBufMut>(
        &mut self,
        mut buf: T,
        cancel: Option<&CancelHandle>,
    ) -> BufResult<usize, T> {
        if buf.bytes_total() == 0 {
            return (Ok(0), buf);
        }
        loop {
            let mut reader = self.session.reader();
            let n = match reader.fill_buf() {
                Ok(chunk) => copy_into(&mut buf, chunk),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => usize::MAX,
                // The peer closed without close_notify: HTTP framing tells
                // whether anything was cut short.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return (Err(e), buf),
            };
            if n != usize::MAX {
                reader.consume(n);
                return (Ok(n), buf);
            }
            if let Err(e) = self.flush_tls().await {
                return (Err(e), buf);
            }
            match self.read_tls(cancel).await {
                Ok(0) => return (Ok(0), buf),
                Ok(_) => {}
                Err(e) => return (Err(e), buf),
            }
        }
    }

    /// Encrypts up to [`WRITE_CHUNK`] bytes of `buf` and writes them out.
    pub async fn write_plain<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let data = as_bytes(&buf);
        let data = data.get(..WRITE_CHUNK).unwrap_or(data);
        let n = match self.session.writer().write(data) {
            Ok(n) => n,
            Err(e) => return (Err(e), buf),
        };
        match self.flush_tls().await {
            Ok(()) => (Ok(n), buf),
            Err(e) => (Err(e), buf),
        }
    }

    /// Sends close_notify, then shuts the socket's write side.
    pub async fn close(&mut self) -> io::Result<()> {
        self.session.send_close_notify();
        let _ = self.flush_tls().await;
        self.tcp.shutdown().await
    }
}

/// Copies as much of `src` as fits into `buf`'s free space and marks it
/// initialised; returns how much.
#[allow(unsafe_code)]
fn copy_into<T: IoBufMut>(buf: &mut T, src: &[u8]) -> usize {
    let n = src.len().min(buf.bytes_total());
    // SAFETY: `write_ptr` points at `bytes_total()` writable bytes owned by
    // `buf` (monoio's contract for a read's destination), `n` is no more
    // than that, and `src` is rustls's own buffer, so the ranges are
    // disjoint. `set_init(n)` then marks exactly the bytes written, as a
    // kernel read of `n` bytes would.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), buf.write_ptr(), n);
        buf.set_init(n);
    }
    n
}

/// The initialised bytes of a rent-style buffer.
#[allow(unsafe_code)]
pub(crate) fn as_bytes<T: IoBuf>(buf: &T) -> &[u8] {
    // SAFETY: monoio's `IoBuf` contract: `read_ptr` points at `bytes_init()`
    // initialised bytes that live as long as `buf` and are not mutated
    // while it is borrowed.
    unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) }
}

/// A connection's transport: a plain socket, TLS over one, or one stream
/// of an HTTP/2 connection seen as an HTTP/1.1 exchange
/// ([`crate::h2::bridge`]). The plain variant is the socket itself (no box,
/// no indirection); the others are boxed, as they are large.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream>),
    /// An HTTP/2 stream.
    H2(Box<crate::h2::bridge::H2Stream>),
}

impl Stream {
    /// The socket underneath (`None` for an HTTP/2 stream).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(t) => Some(t.tcp()),
            Stream::H2(_) => None,
        }
    }

    /// The TLS session, when there is one.
    pub fn tls(&self) -> Option<&TlsStream> {
        match self {
            Stream::Plain(_) | Stream::H2(_) => None,
            Stream::Tls(t) => Some(t),
        }
    }

    /// The client's certificate chain, when it presented one over TLS
    /// (directly, or for the HTTP/2 connection a stream belongs to).
    pub fn peer_certificates(&self) -> Option<&[rustls_pki_types::CertificateDer<'static>]> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(t) => t.session().peer_certificates(),
            Stream::H2(s) => s.peer_certificates(),
        }
    }

    /// The HTTP/2 stream, when this is one.
    pub fn h2(&mut self) -> Option<&mut crate::h2::bridge::H2Stream> {
        match self {
            Stream::H2(s) => Some(s),
            _ => None,
        }
    }

    /// Whether this is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl AsRawFd for Stream {
    /// The socket's descriptor; -1 (no descriptor) for an HTTP/2 stream.
    fn as_raw_fd(&self) -> RawFd {
        self.tcp().map_or(-1, AsRawFd::as_raw_fd)
    }
}

impl AsRawFd for TlsStream {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp.as_raw_fd()
    }
}

impl AsyncReadRent for TlsStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        self.read_plain(buf).await
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match IoVecWrapperMut::new(buf) {
            Ok(first) => {
                let (res, first) = self.read_plain(first).await;
                (res, first.into_inner())
            }
            Err(buf) => (Ok(0), buf),
        }
    }
}

impl CancelableAsyncReadRent for TlsStream {
    async fn cancelable_read<T: IoBufMut>(
        &mut self,
        buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        self.read_decrypted(buf, Some(&c)).await
    }

    async fn cancelable_readv<T: IoVecBufMut>(
        &mut self,
        buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        match IoVecWrapperMut::new(buf) {
            Ok(first) => {
                let (res, first) = self.read_decrypted(first, Some(&c)).await;
                (res, first.into_inner())
            }
            Err(buf) => (Ok(0), buf),
        }
    }
}

impl CancelableAsyncReadRent for Stream {
    async fn cancelable_read<T: IoBufMut>(
        &mut self,
        buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.cancelable_read(buf, c).await,
            Stream::Tls(t) => t.cancelable_read(buf, c).await,
            Stream::H2(_) => self.read(buf).await,
        }
    }

    async fn cancelable_readv<T: IoVecBufMut>(
        &mut self,
        buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.cancelable_readv(buf, c).await,
            Stream::Tls(t) => t.cancelable_readv(buf, c).await,
            Stream::H2(_) => self.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for TlsStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        self.write_plain(buf).await
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match IoVecWrapper::new(buf) {
            Ok(first) => {
                let (res, first) = self.write_plain(first).await;
                (res, first.into_inner())
            }
            Err(buf) => (Ok(0), buf),
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.flush_tls().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.close().await
    }
}

impl AsyncReadRent for Stream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(t) => t.read_plain(buf).await,
            Stream::H2(s) => {
                let mut buf = buf;
                let res = s.read_with(|src| copy_into(&mut buf, src)).await;
                (res, buf)
            }
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.readv(buf).await,
            Stream::Tls(t) => t.readv(buf).await,
            Stream::H2(_) => match IoVecWrapperMut::new(buf) {
                Ok(first) => {
                    let (res, first) = self.read(first).await;
                    (res, first.into_inner())
                }
                Err(buf) => (Ok(0), buf),
            },
        }
    }
}

impl AsyncWriteRent for Stream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.write(buf).await,
            Stream::Tls(t) => t.write_plain(buf).await,
            Stream::H2(s) => {
                let n = buf.bytes_init();
                match s.write_bytes(as_bytes(&buf)).await {
                    Ok(()) => (Ok(n), buf),
                    Err(e) => (Err(e), buf),
                }
            }
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.writev(buf).await,
            Stream::Tls(t) => t.writev(buf).await,
            Stream::H2(_) => match IoVecWrapper::new(buf) {
                Ok(first) => {
                    let (res, first) = self.write(first).await;
                    (res, first.into_inner())
                }
                Err(buf) => (Ok(0), buf),
            },
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush().await,
            Stream::Tls(t) => t.flush_tls().await,
            Stream::H2(_) => Ok(()),
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(t) => t.close().await,
            Stream::H2(s) => {
                s.close();
                Ok(())
            }
        }
    }
}

/// Whether `first` looks like the start of an HTTP request line.
fn looks_like_http(first: &[u8]) -> bool {
    first.len() >= 4
        && first
            .iter()
            .take(4)
            .all(|b| b.is_ascii_uppercase() || *b == b' ')
}
