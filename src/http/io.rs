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
    read_within_or(stream, buf, dur, std::future::pending::<()>()).await
}

/// Reads once into `buf`, giving up after `dur` or when `stop` completes
/// (both reported as [`IoFail::Timeout`]); the socket's read side is shut
/// down in that case.
pub async fn read_within_or<T: IoBufMut + 'static, S: Future<Output = ()>, R>(
    stream: &mut R,
    buf: T,
    dur: Duration,
    stop: S,
) -> (Result<usize, IoFail>, T)
where
    R: AsyncReadRent + AsRawFd,
{
    let fd = stream.as_raw_fd();
    let mut fut = std::pin::pin!(stream.read(buf));
    if let Ended::Done(r) = timed(&mut fut, dur, std::pin::pin!(stop)).await {
        return (r.0.map_err(IoFail::Io), r.1);
    }
    give_up_read(fd, fut).await
}

/// Ends a pending read on `fd` that was given up on ([`IoFail::Timeout`]):
/// shutting the socket's read side down completes it, and it is awaited
/// for its buffer.
pub async fn give_up_read<T, F: Future<Output = (io::Result<usize>, T)>>(
    fd: RawFd,
    read: F,
) -> (Result<usize, IoFail>, T) {
    let _ = shutdown(fd, Shutdown::Read);
    let (_, buf) = read.await;
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
    let mut fut = std::pin::pin!(stream.readable(false));
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
/// (the socket's write side is then shut down).
pub async fn write_all_within<T: IoBuf + 'static, W: AsyncWriteRent + AsRawFd>(
    stream: &mut W,
    buf: T,
    dur: Duration,
) -> (Result<(), IoFail>, T) {
    let fd = stream.as_raw_fd();
    let mut fut = std::pin::pin!(stream.write_all(buf));
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
///
/// The call is the bare system call, not libc's `send`: that one is a
/// thread-cancellation point and brackets the call with two locked
/// cancellation-state switches, sampled at about half as much user-space
/// time as the call's own (bench/RESULTS.md §33); the gateway never
/// cancels threads.
#[allow(unsafe_code)]
pub fn send_now(fd: RawFd, bytes: &[u8]) -> usize {
    use nix::libc::{c_long, syscall, SYS_sendto, MSG_DONTWAIT, MSG_NOSIGNAL};
    if bytes.is_empty() {
        return 0;
    }
    // SAFETY: sendto(2) reads at most `bytes.len()` bytes from `bytes`,
    // which stays borrowed for the call, and is given no address (null, 0).
    let sent = unsafe {
        syscall(
            SYS_sendto,
            c_long::from(fd),
            bytes.as_ptr() as c_long,
            bytes.len() as c_long,
            c_long::from(MSG_DONTWAIT | MSG_NOSIGNAL),
            0 as c_long,
            0 as c_long,
        )
    };
    // -1 (errno set) when it would block or failed.
    usize::try_from(sent).unwrap_or(0)
}

/// [`write_all_within`] on a plain socket, sending at once what the
/// socket takes ([`send_now`]) and waiting only for the rest.
pub async fn write_all_plain<T: IoBuf + 'static>(
    stream: &mut TcpStream,
    buf: T,
    dur: Duration,
) -> (Result<(), IoFail>, T) {
    let len = buf.bytes_init();
    let sent = send_now(stream.as_raw_fd(), crate::tls::stream::as_bytes(&buf));
    if sent >= len {
        return (Ok(()), buf);
    }
    let (res, rest) = write_all_within(stream, buf.slice(sent..), dur).await;
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
        crate::tls::Stream::Tls(t) => write_all_within(&mut **t, buf, dur).await,
        crate::tls::Stream::H2(s) => {
            let res = s
                .write_within(crate::tls::stream::as_bytes(&buf), dur)
                .await;
            (res, buf)
        }
    }
}
