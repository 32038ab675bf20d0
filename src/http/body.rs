//! Streaming a body from one connection to another without buffering it:
//! at most one read buffer of data is held at a time, whatever the body size.

use super::chunked::{ChunkError, ChunkedDecoder};
use super::conn::Conn;
use super::head::Framing;
use super::io::{write_all_to, IoFail};
use crate::tls::Stream;
use std::time::Duration;

/// Pending chunked output is written once it reaches this size.
const CHUNK_FLUSH: usize = 32 * 1024;
/// Read buffer used while streaming a body larger than the head buffer, so
/// a large body moves in fewer, larger reads and writes; given back after.
const STREAM_BUF: usize = 256 * 1024;

/// Why copying a body stopped early.
#[derive(Debug)]
pub enum CopyError {
    /// The source sent nothing within the read timeout.
    ReadTimeout,
    /// The source closed or failed before the body ended.
    SourceClosed,
    /// The source's chunked framing is malformed.
    BadChunk(ChunkError),
    /// The body grew past the allowed size.
    TooLarge,
    /// The destination failed or stalled.
    Write(IoFail),
    /// The destination answered before the body was all sent.
    Interrupted,
}

/// Timeouts and size limit for one copy.
#[derive(Debug, Clone, Copy)]
pub struct CopyLimits {
    /// Allowed wait for each read from the source.
    pub read_timeout: Duration,
    /// Allowed wait for each write to the destination.
    pub write_timeout: Duration,
    /// Most body bytes allowed (`u64::MAX` for none).
    pub max_bytes: u64,
    /// Pass a chunked body's trailer fields on (filtered by
    /// [`super::head::trailer_section`]) when the output is chunked too;
    /// otherwise they are dropped.
    pub trailers: bool,
}

/// How the body is framed on the destination side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFraming {
    /// Bytes as they are (Content-Length declared, or close-delimited).
    Raw,
    /// Re-encoded as chunked.
    Chunked,
}

async fn fill(src: &mut Conn, timeout: Duration) -> Result<(), CopyError> {
    match src.fill(timeout).await {
        Ok(0) => Err(CopyError::SourceClosed),
        Ok(_) => Ok(()),
        Err(IoFail::Timeout) => Err(CopyError::ReadTimeout),
        Err(IoFail::Io(_)) => Err(CopyError::SourceClosed),
    }
}

/// Chunked output assembled in a buffer so many small chunks cost one write.
struct ChunkOut {
    buf: Vec<u8>,
}

impl ChunkOut {
    fn push(&mut self, data: &[u8]) {
        use std::io::Write;
        let _ = write!(self.buf, "{:x}\r\n", data.len());
        self.buf.extend_from_slice(data);
        self.buf.extend_from_slice(b"\r\n");
    }

    async fn flush(&mut self, dst: &mut Stream, dur: Duration) -> Result<(), CopyError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let (res, mut buf) = write_all_to(dst, buf, dur).await;
        buf.clear();
        self.buf = buf;
        res.map_err(CopyError::Write)
    }
}

/// Sees the body bytes of a copy as they pass (the response cache keeps them).
pub trait BodyTap {
    /// The next body bytes (payload only, no chunk framing).
    fn feed(&mut self, data: &[u8]);
}

impl BodyTap for () {
    #[inline(always)]
    fn feed(&mut self, _: &[u8]) {}
}

/// Copies a body framed as `framing` from `src` to `dst`, returning its length.
///
/// On success the body's bytes (and, for chunked input, its terminator) are
/// consumed from `src`, so the connection is positioned at the next message.
pub async fn copy_body(
    src: &mut Conn,
    framing: Framing,
    dst: &mut Stream,
    out: OutFraming,
    lim: CopyLimits,
) -> Result<u64, CopyError> {
    copy_body_tapped(src, framing, dst, out, lim, &mut ()).await
}

/// [`copy_body`], showing the body's bytes to `tap` as they pass.
pub async fn copy_body_tapped(
    src: &mut Conn,
    framing: Framing,
    dst: &mut Stream,
    out: OutFraming,
    lim: CopyLimits,
    tap: &mut dyn BodyTap,
) -> Result<u64, CopyError> {
    let large = match framing {
        Framing::Length(n) => n > src.buffered().len() as u64 + 16 * 1024,
        Framing::Chunked | Framing::UntilClose => true,
        Framing::None => false,
    };
    let result = copy_framed(src, framing, dst, out, lim, large, tap).await;
    if large {
        src.shrink_to(STREAM_BUF / 4);
    }
    result
}

async fn copy_framed(
    src: &mut Conn,
    framing: Framing,
    dst: &mut Stream,
    out: OutFraming,
    lim: CopyLimits,
    large: bool,
    tap: &mut dyn BodyTap,
) -> Result<u64, CopyError> {
    if large {
        src.reserve_total(STREAM_BUF);
    }
    match framing {
        Framing::None => {
            if out == OutFraming::Chunked {
                let mut o = ChunkOut {
                    buf: b"0\r\n\r\n".to_vec(),
                };
                o.flush(dst, lim.write_timeout).await?;
            }
            Ok(0)
        }
        Framing::Length(n) => {
            if n > lim.max_bytes {
                return Err(CopyError::TooLarge);
            }
            let mut left = n;
            while left > 0 {
                if src.buffered().is_empty() {
                    fill(src, lim.read_timeout).await?;
                }
                let take = (src.buffered().len() as u64).min(left) as usize;
                tap.feed(src.buffered().get(..take).unwrap_or_default());
                src.forward_buffered(take, dst, lim.write_timeout)
                    .await
                    .map_err(CopyError::Write)?;
                left -= take as u64;
            }
            Ok(n)
        }
        Framing::Chunked => copy_chunked(src, dst, out, lim, tap).await,
        Framing::UntilClose => {
            let mut total = 0u64;
            let mut o = ChunkOut { buf: Vec::new() };
            loop {
                if src.buffered().is_empty() {
                    match fill(src, lim.read_timeout).await {
                        Ok(()) => {}
                        Err(CopyError::SourceClosed) => break,
                        Err(e) => return Err(e),
                    }
                }
                let n = src.buffered().len();
                total += n as u64;
                if total > lim.max_bytes {
                    return Err(CopyError::TooLarge);
                }
                tap.feed(src.buffered());
                match out {
                    OutFraming::Raw => src
                        .forward_buffered(n, dst, lim.write_timeout)
                        .await
                        .map_err(CopyError::Write)?,
                    OutFraming::Chunked => {
                        o.push(src.buffered());
                        src.consume(n);
                        o.flush(dst, lim.write_timeout).await?;
                    }
                }
            }
            if out == OutFraming::Chunked {
                o.buf.extend_from_slice(b"0\r\n\r\n");
                o.flush(dst, lim.write_timeout).await?;
            }
            Ok(total)
        }
    }
}

async fn copy_chunked(
    src: &mut Conn,
    dst: &mut Stream,
    out: OutFraming,
    lim: CopyLimits,
    tap: &mut dyn BodyTap,
) -> Result<u64, CopyError> {
    let mut dec = if lim.trailers && out == OutFraming::Chunked {
        ChunkedDecoder::keeping_trailers()
    } else {
        ChunkedDecoder::default()
    };
    let mut o = ChunkOut { buf: Vec::new() };
    let mut total = 0u64;
    loop {
        let step = dec.step(src.buffered()).map_err(CopyError::BadChunk)?;
        if let Some(range) = step.data {
            total += range.len() as u64;
            if total > lim.max_bytes {
                return Err(CopyError::TooLarge);
            }
            tap.feed(src.buffered().get(range.clone()).unwrap_or_default());
            match out {
                OutFraming::Chunked => {
                    o.push(src.buffered().get(range).unwrap_or_default());
                    src.consume(step.consumed);
                    if o.buf.len() >= CHUNK_FLUSH {
                        o.flush(dst, lim.write_timeout).await?;
                    }
                }
                OutFraming::Raw => {
                    // Skip the framing bytes in front of the data, then forward the data.
                    src.consume(range.start);
                    src.forward_buffered(range.len(), dst, lim.write_timeout)
                        .await
                        .map_err(CopyError::Write)?;
                    src.consume(step.consumed - range.end);
                }
            }
        } else {
            src.consume(step.consumed);
        }
        if dec.is_done() {
            if out == OutFraming::Chunked {
                o.buf.extend_from_slice(b"0\r\n");
                super::head::trailer_section(&dec.take_trailers(), &mut o.buf);
                o.buf.extend_from_slice(b"\r\n");
                o.flush(dst, lim.write_timeout).await?;
            }
            return Ok(total);
        }
        if src.buffered().is_empty() {
            o.flush(dst, lim.write_timeout).await?;
            fill(src, lim.read_timeout).await?;
        }
    }
}

/// Moves the part of a Content-Length body that is already buffered in `src`
/// onto the end of `head`, so head and body leave in one write (one segment
/// instead of two for a small message), and returns the framing of what is
/// left to copy. Other framings are left alone.
pub fn append_buffered(src: &mut Conn, framing: Framing, head: &mut Vec<u8>) -> Framing {
    match framing {
        Framing::Length(n) => {
            let k = (src.buffered().len() as u64).min(n) as usize;
            head.extend_from_slice(src.buffered().get(..k).unwrap_or_default());
            src.consume(k);
            match n - k as u64 {
                0 => Framing::None,
                left => Framing::Length(left),
            }
        }
        other => other,
    }
}

/// Reads and discards a body, e.g. one the gateway refused before forwarding.
pub async fn discard_body(
    src: &mut Conn,
    framing: Framing,
    lim: CopyLimits,
) -> Result<(), CopyError> {
    match framing {
        Framing::None => Ok(()),
        Framing::Length(n) => {
            if n > lim.max_bytes {
                return Err(CopyError::TooLarge);
            }
            let mut left = n;
            while left > 0 {
                if src.buffered().is_empty() {
                    fill(src, lim.read_timeout).await?;
                }
                let take = (src.buffered().len() as u64).min(left);
                src.consume(take as usize);
                left -= take;
            }
            Ok(())
        }
        Framing::Chunked => {
            let mut dec = ChunkedDecoder::default();
            let mut total = 0u64;
            loop {
                let step = dec.step(src.buffered()).map_err(CopyError::BadChunk)?;
                total += step.data.map_or(0, |r| r.len() as u64);
                if total > lim.max_bytes {
                    return Err(CopyError::TooLarge);
                }
                src.consume(step.consumed);
                if dec.is_done() {
                    return Ok(());
                }
                if src.buffered().is_empty() {
                    fill(src, lim.read_timeout).await?;
                }
            }
        }
        Framing::UntilClose => Err(CopyError::SourceClosed),
    }
}

/// Reads a request body whole, its framing removed, at most `max` bytes:
/// 413 beyond (a declared length before a byte is read), 408 when the
/// client stalls, 400 for a malformed chunked body or one that ends early.
/// Sends `100 Continue` first when `send_continue` (the client waits for
/// it). The stages that need the body as a whole (validation,
/// transformation, composites that read it) read it here.
pub async fn read_request_body(
    client: &mut Conn,
    framing: Framing,
    send_continue: bool,
    max: u64,
    limits: &crate::compiled::Limits,
) -> Result<Vec<u8>, crate::error::GatewayError> {
    use crate::error::GatewayError;
    if let Framing::Length(n) = framing {
        if n > max {
            return Err(GatewayError::PayloadTooLarge);
        }
    }
    if send_continue
        && send_100_continue(client, limits.send_timeout)
            .await
            .is_err()
    {
        return Err(GatewayError::BadRequest("client went away"));
    }
    match crate::compress::read_all(client, framing, max, limits.body_read_timeout).await {
        Ok(b) => Ok(b),
        Err(CopyError::TooLarge) => Err(GatewayError::PayloadTooLarge),
        Err(CopyError::ReadTimeout) => Err(GatewayError::RequestTimeout),
        Err(CopyError::BadChunk(_)) => Err(GatewayError::BadRequest("malformed chunked body")),
        Err(_) => Err(GatewayError::BadRequest("request body ended early")),
    }
}

/// Tells a client that waits for it (`Expect: 100-continue`) to send its body.
pub async fn send_100_continue(client: &mut Conn, timeout: Duration) -> Result<(), IoFail> {
    let (r, _) = client
        .write(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(), timeout)
        .await;
    r
}
