//! Timed reads and writes on monoio's owned-buffer streams.
//!
//! Dropping an io_uring read future does not cancel the kernel operation, so
//! a timed-out operation is ended by shutting the socket down in that
//! direction (`shutdown(2)` wakes a pending recv with end-of-file and a
//! pending send with EPIPE, under io_uring and epoll alike) and then awaited
//! until the kernel hands the buffer back. This costs nothing while no
//! timeout fires, unlike registering every operation with a canceller. A
//! connection whose read or write timed out is always closed afterwards.

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use nix::sys::socket::{shutdown, Shutdown};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use super::timer::{timed, Ended};

/// Why a timed I/O call failed.
#[derive(Debug)]
pub enum IoFail {
    /// The deadline passed first (or the caller's stop signal fired).
    Timeout,
    /// The socket failed.
    Io(io::Error),
}

/// Reads once into `buf`, giving up after `dur`.
pub async fn read_within<T: IoBufMut + 'static, R: AsyncReadRent + AsRawFd>(
    stream: &mut R,
    buf: T,
    dur: Duration,
) -> (Result<usize, IoFail>, T) {
    let fd = stream.as_raw_fd();
    read_within_or(stream, fd, buf, dur, std::future::pending::<()>()).await
}

/// Reads once into `buf`, giving up after `dur` or when `stop` completes
/// (both reported as [`IoFail::Timeout`]); the read side of `fd`, the
/// stream's socket, is shut down in that case.
pub async fn read_within_or<T: IoBufMut + 'static, S: Future<Output = ()>, R: AsyncReadRent>(
    stream: &mut R,
    fd: RawFd,
    buf: T,
    dur: Duration,
    stop: S,
) -> (Result<usize, IoFail>, T) {
    let fut = stream.read(buf);
    let mut fut = std::pin::pin!(fut);
    if let Ended::Done(r) = timed(&mut fut, dur, std::pin::pin!(stop)).await {
        return (r.0.map_err(IoFail::Io), r.1);
    }
    let _ = shutdown(fd, Shutdown::Read);
    let (_, buf) = fut.await;
    (Err(IoFail::Timeout), buf)
}

/// Waits until the socket is readable (bytes or end-of-file), giving up
/// when `deadline` or `stop` completes ([`IoFail::Timeout`]; the socket's
/// read side is then shut down, which also ends the kernel's wait).
pub async fn wait_readable_until<D: Future<Output = ()>, S: Future<Output = ()>>(
    stream: &TcpStream,
    deadline: D,
    stop: S,
) -> Result<(), IoFail> {
    let fd = stream.as_raw_fd();
    let fut = stream.readable(false);
    let mut fut = std::pin::pin!(fut);
    monoio::select! {
        r = &mut fut => return r.map_err(IoFail::Io),
        _ = deadline => {},
        _ = stop => {},
    }
    let _ = shutdown(fd, Shutdown::Read);
    let _ = fut.await;
    Err(IoFail::Timeout)
}

/// Writes all of `buf`, giving up when it has not completed within `dur`
/// (the write side of `fd`, the stream's socket, is then shut down).
pub async fn write_all_within<T: IoBuf + 'static, W: AsyncWriteRent>(
    stream: &mut W,
    fd: RawFd,
    buf: T,
    dur: Duration,
) -> (Result<(), IoFail>, T) {
    let fut = stream.write_all(buf);
    let mut fut = std::pin::pin!(fut);
    if let Ended::Done(r) = timed(&mut fut, dur, std::future::pending()).await {
        return (r.0.map(|_| ()).map_err(IoFail::Io), r.1);
    }
    let _ = shutdown(fd, Shutdown::Write);
    let (res, buf) = fut.await;
    match res {
        // It finished after all; the write side is closed, so the exchange still ends here.
        Ok(_) => (Err(IoFail::Timeout), buf),
        Err(_) => (Err(IoFail::Timeout), buf),
    }
}

/// Sends what of `bytes` the socket takes now, without waiting
/// (`send(2)` with `MSG_DONTWAIT`): 0 when it would block or failed, and
/// the ring's write that follows then waits, or meets the error and
/// reports it.
///
/// A whole small answer or request usually fits the socket's send buffer,
/// so it leaves in this call: no ring operation, no completion to reap,
/// and the connection's task goes on to post its next read in the same
/// poll instead of one event-loop turn later (bench/RESULTS.md §31).
pub fn send_now(fd: RawFd, bytes: &[u8]) -> usize {
    use nix::sys::socket::{send, MsgFlags};
    if bytes.is_empty() {
        return 0;
    }
    send(fd, bytes, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL).unwrap_or(0)
}

thread_local! {
    /// Whether this thread's reads wait for readability before reading
    /// ([`set_poll_first`]).
    static POLL_FIRST: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes this thread's plain-socket reads that usually find nothing
/// (an upstream's answer right after its request, a client's next request)
/// wait for readability first and then read with `recv(2)`, instead of
/// posting a read that the kernel first tries, finds empty and then turns
/// into a readiness wait. That is what `IORING_RECVSEND_POLL_FIRST` does
/// inside one operation; monoio does not let an operation's flags be set,
/// so the wait is monoio's `readable` (an io_uring `POLL_ADD`) and the read
/// a plain system call. No read buffer is held while waiting.
///
/// On for io_uring shards; the epoll driver's reads already wait for
/// readiness only after a failed attempt. `SHARDGATE_POLL_FIRST=0` turns it
/// off (for comparison).
pub fn set_poll_first(on: bool) {
    let on = on && std::env::var("SHARDGATE_POLL_FIRST").map_or(true, |v| v != "0");
    POLL_FIRST.with(|p| p.set(on));
}

/// See [`set_poll_first`].
pub fn poll_first() -> bool {
    POLL_FIRST.with(|p| p.get())
}

/// Reads what the socket holds now into `buf`'s spare capacity, without
/// waiting (`recv(2)` with `MSG_DONTWAIT`); `buf` grows by the bytes read.
#[allow(unsafe_code)]
pub fn recv_now(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    let len = buf.len();
    let spare = buf.spare_capacity_mut();
    // SAFETY: recv writes at most `spare.len()` bytes into the vector's
    // unused capacity (which `spare` borrows exclusively) and reports how
    // many; only those, initialised by the kernel, are added to the length.
    unsafe {
        let n = nix::libc::recv(
            fd,
            spare.as_mut_ptr().cast(),
            spare.len(),
            nix::libc::MSG_DONTWAIT,
        );
        let Ok(n) = usize::try_from(n) else {
            return Err(io::Error::last_os_error());
        };
        buf.set_len(len + n);
        Ok(n)
    }
}

/// Waits until `stream` is readable (bytes, end of file or an error),
/// giving up after `dur` or when `stop` completes. A readiness wait holds
/// no buffer; dropped unfinished, monoio cancels it.
pub async fn readable_within<S: Future<Output = ()>>(
    stream: &TcpStream,
    dur: Duration,
    stop: S,
) -> Ended<io::Result<()>> {
    let ready = stream.readable(false);
    timed(std::pin::pin!(ready), dur, std::pin::pin!(stop)).await
}

/// [`write_all_within`] on a plain socket, sending at once what the
/// socket takes ([`send_now`]) and waiting only for the rest.
pub async fn write_all_plain<T: IoBuf + 'static>(
    stream: &mut TcpStream,
    buf: T,
    dur: Duration,
) -> (Result<(), IoFail>, T) {
    let fd = stream.as_raw_fd();
    let len = buf.bytes_init();
    let sent = send_now(fd, crate::tls::stream::as_bytes(&buf));
    if sent >= len {
        return (Ok(()), buf);
    }
    let (res, rest) = write_all_within(stream, fd, buf.slice(sent..), dur).await;
    (res, rest.into_inner())
}

/// [`write_all_within`] on a connection's stream, plain or TLS (each
/// variant runs its own monomorphic write; the plain one is
/// [`write_all_plain`]).
pub async fn write_all_to<T: IoBuf + 'static>(
    stream: &mut crate::tls::Stream,
    buf: T,
    dur: Duration,
) -> (Result<(), IoFail>, T) {
    match stream {
        crate::tls::Stream::Plain(s) => write_all_plain(s, buf, dur).await,
        crate::tls::Stream::Tls(t) => {
            let fd = t.as_raw_fd();
            write_all_within(&mut **t, fd, buf, dur).await
        }
        crate::tls::Stream::H2(s) => {
            let res = s
                .write_within(crate::tls::stream::as_bytes(&buf), dur)
                .await;
            (res, buf)
        }
    }
}
