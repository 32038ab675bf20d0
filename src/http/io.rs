//! Timed, cancelable reads and writes on monoio's owned-buffer streams.
//!
//! Dropping an io_uring read future does not cancel the kernel operation, so
//! a timed-out read is cancelled explicitly and awaited until the kernel hands
//! the buffer back; the socket is then really idle and can be closed.

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{CancelableAsyncReadRent, CancelableAsyncWriteRentExt, Canceller};
use monoio::net::TcpStream;
use std::io;
use std::time::Duration;

/// Why a timed I/O call failed.
#[derive(Debug)]
pub enum IoFail {
    /// The deadline passed first.
    Timeout,
    /// The socket failed.
    Io(io::Error),
}

/// The ECANCELED errno monoio reports for a cancelled operation.
const ECANCELED: i32 = 125;

/// Reads once into `buf`, giving up after `dur`.
pub async fn read_within<T: IoBufMut + 'static>(
    stream: &mut TcpStream,
    buf: T,
    dur: Duration,
) -> (Result<usize, IoFail>, T) {
    read_within_or(stream, buf, dur, std::future::pending::<()>()).await
}

/// Reads once into `buf`, giving up after `dur` or when `stop` completes
/// (reported as [`IoFail::Timeout`]); the read is cancelled either way.
pub async fn read_within_or<T: IoBufMut + 'static, S: std::future::Future<Output = ()>>(
    stream: &mut TcpStream,
    buf: T,
    dur: Duration,
    stop: S,
) -> (Result<usize, IoFail>, T) {
    let canceller = Canceller::new();
    let fut = stream.cancelable_read(buf, canceller.handle());
    let mut fut = std::pin::pin!(fut);
    let stopped = monoio::select! {
        r = &mut fut => return (r.0.map_err(IoFail::Io), r.1),
        _ = monoio::time::sleep(dur) => true,
        _ = stop => true,
    };
    debug_assert!(stopped);
    canceller.cancel();
    let (res, buf) = fut.await;
    match res {
        Err(e) if e.raw_os_error() == Some(ECANCELED) => (Err(IoFail::Timeout), buf),
        other => (other.map_err(IoFail::Io), buf),
    }
}

/// Writes all of `buf`, giving up when no write completes within `dur`.
pub async fn write_all_within<T: IoBuf + 'static>(
    stream: &mut TcpStream,
    buf: T,
    dur: Duration,
) -> (Result<(), IoFail>, T) {
    let canceller = Canceller::new();
    let fut = stream.write_all(buf, canceller.handle());
    let mut fut = std::pin::pin!(fut);
    monoio::select! {
        r = &mut fut => (r.0.map(|_| ()).map_err(IoFail::Io), r.1),
        _ = monoio::time::sleep(dur) => {
            canceller.cancel();
            let (res, buf) = fut.await;
            match res {
                Ok(_) => (Ok(()), buf),
                Err(e) if e.raw_os_error() == Some(ECANCELED) => (Err(IoFail::Timeout), buf),
                Err(e) => (Err(IoFail::Io(e)), buf),
            }
        }
    }
}
