//! A socket with its read buffer: bytes read but not yet consumed stay in the
//! buffer, which is how pipelined requests and body bytes that arrived with a
//! head are kept for the next reader.

use super::io::{give_up_read, read_within_or, write_all_to, IoFail};
use super::timer::{timed, Ended};
use crate::tls::Stream;
use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::time::Duration;

/// The errno of a cancelled io_uring operation.
const ECANCELED: i32 = 125;

/// Smallest free space worth a read syscall; less and the buffer is compacted.
const MIN_READ: usize = 4096;

/// Most free read buffers a shard keeps for reuse.
const POOLED_BUFFERS: usize = 32;

/// Most connections of a shard that wait for their next request with a
/// plain read, buffer held, rather than a cancelable one (see
/// [`Conn::fill_unless_quiet`]): at most this many read buffers (16 KiB
/// each by default) are held by quiet connections per shard.
pub const HELD_READS: usize = 64;

thread_local! {
    /// The shard's free read buffers (each shard runs on its own thread).
    static FREE_BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// Reads of this shard waiting for a next request with their buffer held.
    static HELD: Cell<usize> = const { Cell::new(0) };
}

/// One of the shard's [`HELD_READS`] slots, given back when dropped.
struct HeldSlot;

impl HeldSlot {
    fn take() -> Option<HeldSlot> {
        HELD.with(|held| {
            let n = held.get();
            (n < HELD_READS).then(|| {
                held.set(n + 1);
                HeldSlot
            })
        })
    }
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        HELD.with(|held| held.set(held.get().saturating_sub(1)));
    }
}

/// Reads of this thread waiting with their buffer held (at most [`HELD_READS`]).
pub fn held_reads() -> usize {
    HELD.with(Cell::get)
}

/// A read buffer of at least `capacity` bytes, from the shard's free list
/// when one of the right size is there.
/// Read buffers this thread keeps for reuse.
pub fn free_buffers() -> usize {
    FREE_BUFFERS.with_borrow(Vec::len)
}

fn take_buffer(capacity: usize) -> Vec<u8> {
    FREE_BUFFERS
        .with_borrow_mut(|free| match free.last() {
            Some(b) if b.capacity() >= capacity && b.capacity() <= capacity * 2 => free.pop(),
            _ => None,
        })
        .unwrap_or_else(|| Vec::with_capacity(capacity))
}

/// Gives a read buffer back to the shard's free list (a buffer grown for a
/// large head or body is freed instead).
fn give_buffer(mut buf: Vec<u8>, capacity: usize) {
    if buf.capacity() < capacity || buf.capacity() > capacity * 2 {
        return;
    }
    buf.clear();
    FREE_BUFFERS.with_borrow_mut(|free| {
        if free.len() < POOLED_BUFFERS {
            free.push(buf);
        }
    });
}

/// A stream (plain TCP or TLS) plus its read buffer (`buf[pos..]` is unread data).
///
/// The buffer is taken when bytes are about to be read and can be given back
/// while the connection waits with nothing unread (see
/// [`Conn::fill_unless_quiet`]),
/// so an idle connection holds no buffer.
pub struct Conn {
    /// The transport.
    pub stream: Stream,
    buf: Vec<u8>,
    pos: usize,
    /// The buffer's usual size.
    capacity: usize,
    /// Cancels a read that waited too long with a buffer (made on first use).
    canceller: Option<Canceller>,
}

impl Conn {
    /// Wraps a stream whose read buffer, once taken, holds `capacity` bytes.
    pub fn new(stream: TcpStream, capacity: usize) -> Conn {
        Conn::with_stream(Stream::Plain(stream), capacity)
    }

    /// Wraps a plain or TLS stream.
    pub fn with_stream(stream: Stream, capacity: usize) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
            pos: 0,
            capacity,
            canceller: None,
        }
    }

    /// The stream and the bytes read from it but not consumed.
    pub fn into_parts(mut self) -> (Stream, Vec<u8>) {
        let unread = self.buffered().to_vec();
        give_buffer(std::mem::take(&mut self.buf), self.capacity);
        (self.stream, unread)
    }

    /// Bytes of buffer memory this connection holds.
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Gives the read buffer back to the shard when nothing in it is unread.
    pub fn release_buffer(&mut self) {
        if self.pos >= self.buf.len() && self.buf.capacity() > 0 {
            give_buffer(std::mem::take(&mut self.buf), self.capacity);
            self.pos = 0;
        }
    }

    /// Bytes read and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    /// Marks `n` buffered bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
        if self.pos == self.buf.len() {
            self.pos = 0;
            self.buf.clear();
        }
    }

    /// Grows the buffer so it can hold at least `total` unread bytes.
    pub fn reserve_total(&mut self, total: usize) {
        if self.buf.capacity() == 0 {
            self.buf = take_buffer(self.capacity.max(total));
        }
        if self.buf.capacity().saturating_sub(self.pos) < total {
            self.compact();
            let need = total.saturating_sub(self.buf.len());
            self.buf.reserve(need);
        }
    }

    /// Gives back buffer memory beyond `capacity` once a large body has passed.
    pub fn shrink_to(&mut self, capacity: usize) {
        if self.buf.capacity() > capacity && self.buffered().len() <= capacity {
            self.compact();
            self.buf.shrink_to(capacity);
        }
    }

    fn compact(&mut self) {
        if self.pos >= self.buf.len() {
            // Everything was consumed — or the buffer went with an abandoned
            // read (an exchange cut short by an early answer).
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 {
            let unread = self.buf.len() - self.pos;
            self.buf.copy_within(self.pos.., 0);
            self.buf.truncate(unread);
            self.pos = 0;
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` means the peer closed.
    ///
    /// Not an `async fn`: it hands back [`Conn::fill_or`]'s future itself,
    /// one level less in every read's state.
    pub fn fill(
        &mut self,
        dur: Duration,
    ) -> impl std::future::Future<Output = Result<usize, IoFail>> + '_ {
        self.fill_or(dur, std::future::pending::<()>())
    }

    /// Like [`Conn::fill`], but also gives up (as a timeout) when `stop` completes.
    pub async fn fill_or(
        &mut self,
        dur: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<usize, IoFail> {
        let mut buf = self.read_space();
        let len = buf.len();
        let cap = buf.capacity();
        let (res, slice) = match &mut self.stream {
            Stream::Plain(s) => read_within_or(s, buf.slice_mut(len..cap), dur, stop).await,
            Stream::Tls(t) => read_within_or(&mut **t, buf.slice_mut(len..cap), dur, stop).await,
            Stream::H2(s) => {
                let res = s.read_within(&mut buf, dur, stop).await;
                self.buf = buf;
                return res;
            }
        };
        self.buf = slice.into_inner();
        res
    }

    /// The buffer, taken out for a read, with room for at least [`MIN_READ`] bytes.
    fn read_space(&mut self) -> Vec<u8> {
        if self.buf.capacity() == 0 {
            self.buf = take_buffer(self.capacity);
        }
        if self.buf.capacity() - self.buf.len() < MIN_READ {
            self.compact();
        }
        if self.buf.capacity() == self.buf.len() {
            self.buf.reserve(MIN_READ);
        }
        std::mem::take(&mut self.buf)
    }

    /// Waits up to `dur` (or until `stop`) for the first bytes of a new
    /// exchange, with nothing unread, holding a read buffer for `grace`
    /// only: a connection still quiet then gives its buffer back and gets
    /// `Ok(None)`, to wait for readability without one
    /// ([`super::io::wait_readable_until`]). A busy keep-alive connection,
    /// whose next request comes within the grace, reads as
    /// [`Conn::fill_or`] does.
    ///
    /// Giving the buffer back means cancelling the read, and a cancelable
    /// read costs monoio two hash-set operations (SipHash) on every read,
    /// cancelled or not. So while fewer than [`HELD_READS`] of the shard's
    /// connections do so, a connection waits with a plain read and keeps
    /// its buffer for all of `dur` ([`Conn::fill_held`]); `quiet` is then
    /// called once the grace has passed and its value held until the read
    /// ends (the caller counts the connection as idle with it).
    pub async fn fill_unless_quiet<Q>(
        &mut self,
        dur: Duration,
        grace: Duration,
        stop: impl std::future::Future<Output = ()>,
        quiet: impl FnOnce() -> Q,
    ) -> Result<Option<usize>, IoFail> {
        // A TLS session may hold decrypted bytes the socket no longer
        // shows as readable: it keeps its buffer and reads on.
        if dur <= grace || self.stream.is_tls() || self.pos < self.buf.len() {
            return self.fill_or(dur, stop).await.map(Some);
        }
        if let Some(_slot) = HeldSlot::take() {
            return self.fill_held(dur, grace, stop, quiet).await.map(Some);
        }
        let canceller = self.canceller.take().unwrap_or_default();
        let buf = self.read_space();
        let len = buf.len();
        let cap = buf.capacity();
        let (res, slice, stopped, canceller) = {
            let Stream::Plain(stream) = &mut self.stream else {
                self.buf = buf;
                return self.fill_or(dur, stop).await.map(Some);
            };
            let mut read =
                std::pin::pin!(stream.cancelable_read(buf.slice_mut(len..cap), canceller.handle()));
            let stopped = match timed(&mut read, grace, std::pin::pin!(stop)).await {
                Ended::Done((res, slice)) => {
                    self.buf = slice.into_inner();
                    self.canceller = Some(canceller);
                    return res.map(Some).map_err(IoFail::Io);
                }
                Ended::TimedOut => false,
                Ended::Stopped => true,
            };
            // Cancelled, the read completes at once: with ECANCELED, or
            // with bytes that arrived meanwhile.
            let canceller = canceller.cancel();
            let (res, slice) = read.await;
            (res, slice, stopped, canceller)
        };
        self.buf = slice.into_inner();
        self.canceller = Some(canceller);
        match res {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.raw_os_error() != Some(ECANCELED) => Err(IoFail::Io(e)),
            Err(_) if stopped => Err(IoFail::Timeout),
            Err(_) => {
                self.release_buffer();
                // Nothing to cancel while idle; made again on the next read.
                self.canceller = None;
                Ok(None)
            }
        }
    }

    /// [`Conn::fill_or`] on a plain socket, calling `quiet` once `grace`
    /// has passed without a byte (its value is held until the read ends).
    async fn fill_held<Q>(
        &mut self,
        dur: Duration,
        grace: Duration,
        stop: impl std::future::Future<Output = ()>,
        quiet: impl FnOnce() -> Q,
    ) -> Result<usize, IoFail> {
        use monoio::io::AsyncReadRent;
        use std::os::fd::AsRawFd;
        let buf = self.read_space();
        let (len, cap) = (buf.len(), buf.capacity());
        let Stream::Plain(stream) = &mut self.stream else {
            self.buf = buf;
            return self.fill_or(dur, stop).await;
        };
        let fd = stream.as_raw_fd();
        let mut read = std::pin::pin!(stream.read(buf.slice_mut(len..cap)));
        let mut stop = std::pin::pin!(stop);
        let ended = match timed(&mut read, grace, stop.as_mut()).await {
            Ended::TimedOut => {
                let _quiet = quiet();
                timed(&mut read, dur.saturating_sub(grace), stop.as_mut()).await
            }
            other => other,
        };
        let (res, slice) = match ended {
            Ended::Done((res, slice)) => (res.map_err(IoFail::Io), slice),
            Ended::TimedOut | Ended::Stopped => give_up_read(fd, read).await,
        };
        self.buf = slice.into_inner();
        res
    }

    /// Closes gracefully: sends FIN, then reads and drops whatever the peer
    /// still sends (up to `max_bytes` or `dur`), so an unread request body
    /// does not turn the close into a reset that destroys the response.
    pub async fn linger(&mut self, dur: Duration, max_bytes: usize) {
        use monoio::io::AsyncWriteRent;
        let _ = self.stream.shutdown().await;
        // An HTTP/2 stream needs no draining: what the client still sends
        // is refused by a reset once the answer is out, without harm to it.
        if matches!(self.stream, Stream::H2(_)) {
            return;
        }
        let deadline = std::time::Instant::now() + dur;
        let mut seen = 0;
        while seen < max_bytes {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            self.buf.clear();
            self.pos = 0;
            match self.fill(left).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen += n,
            }
        }
    }

    /// Writes the first `n` buffered bytes to `dst` and consumes them.
    pub async fn forward_buffered(
        &mut self,
        n: usize,
        dst: &mut Stream,
        dur: Duration,
    ) -> Result<(), IoFail> {
        let buf = std::mem::take(&mut self.buf);
        let (start, end) = (self.pos, (self.pos + n).min(buf.len()));
        let (res, slice) = write_all_to(dst, buf.slice(start..end), dur).await;
        self.buf = slice.into_inner();
        if res.is_ok() {
            self.consume(end - start);
        }
        res
    }

    /// Appends bytes that were read from this socket by other means (a
    /// [`Conn::watcher`]) to the unread data.
    pub fn push_buffered(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// A second handle on this connection's socket (a duplicated
    /// descriptor), for reading from it while a write through `stream` is
    /// pending: the proxy watches for an early response that way while it
    /// sends a request body.
    #[allow(unsafe_code)]
    pub fn watcher(&self) -> std::io::Result<TcpStream> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // Raw bytes of a TLS session are records, not a response.
        let Stream::Plain(stream) = &self.stream else {
            return Err(std::io::ErrorKind::Unsupported.into());
        };
        let fd = stream.as_raw_fd();
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor this connection owns
        // either fails (checked) or returns a new descriptor that nothing else
        // owns; `from_raw_fd` takes sole ownership of it.
        let std = unsafe {
            let dup = nix::libc::fcntl(fd, nix::libc::F_DUPFD_CLOEXEC, 0);
            if dup < 0 {
                return Err(std::io::Error::last_os_error());
            }
            std::net::TcpStream::from_raw_fd(dup)
        };
        TcpStream::from_std(std)
    }

    /// Writes `bytes` to this connection's socket (not an `async fn`, as
    /// [`Conn::fill`] is not).
    pub fn write(
        &mut self,
        bytes: Vec<u8>,
        dur: Duration,
    ) -> impl std::future::Future<Output = (Result<(), IoFail>, Vec<u8>)> + '_ {
        write_all_to(&mut self.stream, bytes, dur)
    }
}
