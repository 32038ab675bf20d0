//! One HTTP/2 stream seen as an HTTP/1.1 connection, so that it runs the
//! same request pipeline as a request read from a socket.
//!
//! The read side hands out an HTTP/1.1 request: a head written from the
//! stream's pseudo-header and header fields, then its DATA as the body
//! (raw when the client declared a `content-length`, chunked otherwise,
//! with the stream's trailers as the chunked trailer section). The write
//! side takes the HTTP/1.1 response the pipeline writes and sends it as
//! HTTP/2: the head as HEADERS (connection-specific fields dropped), the
//! body as DATA with flow control, a chunked trailer section as trailers.
//! Nothing is buffered beyond one DATA chunk on the way in and one write on
//! the way out, so the stream's flow-control windows pace both directions.
//!
//! A gRPC client (`content-type: application/grpc…`) that gets an answer
//! that is not gRPC (a gateway error, or a non-gRPC upstream) gets it as a
//! gRPC status instead: HTTP 200, `grpc-status` and `grpc-message` in a
//! trailers-only response, the code mapped from the HTTP status by
//! [`crate::grpc::status::Code::from_gateway_status`].

use std::collections::VecDeque;
use std::io;

use bytes::Bytes;
use h2::Reason;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};

use super::{connection_specific, RecvBody, Responder, SendBody};
use crate::grpc::status::{encode_grpc_message, Code};

/// Longest response head the write side parses.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Most bytes of a non-gRPC error body read for its message.
const MAX_ERROR_BODY: u64 = 16 * 1024;

/// Whether a content type is gRPC over HTTP/2 (not gRPC-Web).
pub fn is_grpc(content_type: Option<&HeaderValue>) -> bool {
    content_type.is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v.get(..16)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc"))
            && !v
                .get(16..20)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"-web"))
    })
}

/// The response side's progress.
enum Out {
    /// Reading the response head.
    Head,
    /// Body of a known length: bytes left.
    Length(u64),
    /// Chunked body.
    Chunked(Chunk),
    /// Body up to the end of the exchange.
    UntilClose,
    /// A non-gRPC answer to a gRPC client: its body is read (up to
    /// [`MAX_ERROR_BODY`]) for the message, then sent as a gRPC status.
    GrpcError {
        code: Code,
        left: u64,
        body: Vec<u8>,
    },
    /// The response went out whole (or was abandoned).
    Done,
}

/// Chunked decoding of the response body.
enum Chunk {
    /// Reading a chunk-size line.
    Size(Vec<u8>),
    /// Inside a chunk: bytes left.
    Data(u64),
    /// The CRLF after a chunk's data: bytes of it still to skip.
    DataEnd(u8),
    /// Reading the trailer section (up to its empty line).
    Trailers(Vec<u8>),
}

/// An HTTP/2 stream as the transport of one HTTP/1.1 exchange.
pub struct H2Stream {
    /// Request bytes ready to be read: the head, then framed body pieces.
    pending: VecDeque<Bytes>,
    /// The request body still to come (`None` once it ended).
    body: Option<RecvBody>,
    /// The body is sent chunked (no `content-length` was declared).
    chunked: bool,
    /// Bytes of the request handed out so far (beyond the head).
    read_any: bool,
    /// The answer.
    responder: Option<Responder>,
    send: Option<SendBody>,
    out: Out,
    head_buf: Vec<u8>,
    head_request: bool,
    grpc: bool,
    /// The client certificate chain of the connection (over TLS).
    certs: Option<PeerCerts>,
}

/// A connection's client certificate chain, shared by its streams.
pub type PeerCerts = std::rc::Rc<[rustls_pki_types::CertificateDer<'static>]>;

impl H2Stream {
    /// Wraps an HTTP/2 request. `None` (after answering it) for a request
    /// that has no HTTP/1.1 form: CONNECT, or no path.
    pub fn new(
        request: Request<RecvBody>,
        responder: Responder,
        certs: Option<PeerCerts>,
    ) -> Option<H2Stream> {
        let (parts, body) = request.into_parts();
        let target = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| p.starts_with('/') || *p == "*");
        let (Some(target), false) = (target, parts.method == http::Method::CONNECT) else {
            refuse(
                responder,
                StatusCode::NOT_IMPLEMENTED,
                "CONNECT is not supported",
            );
            return None;
        };
        // A field value may not start or end with whitespace (RFC 9113
        // §8.2.1): the request is malformed.
        let padded = parts.headers.values().any(|v| {
            let v = v.as_bytes();
            matches!(v.first(), Some(b' ' | b'\t')) || matches!(v.last(), Some(b' ' | b'\t'))
        });
        if padded {
            refuse(
                responder,
                StatusCode::BAD_REQUEST,
                "a field value starts or ends with whitespace",
            );
            return None;
        }
        let end = body.is_end_stream();
        let declared = parts.headers.contains_key(http::header::CONTENT_LENGTH);
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(parts.method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        // :authority stands for Host (RFC 9113 §8.3.1).
        let authority = parts.uri.authority().map(|a| a.as_str().as_bytes());
        if let Some(a) = authority {
            head.extend_from_slice(b"host: ");
            head.extend_from_slice(a);
            head.extend_from_slice(b"\r\n");
        }
        for (name, value) in &parts.headers {
            let n = name.as_str().as_bytes();
            let skip = connection_specific(n)
                || (authority.is_some() && name == http::header::HOST)
                || name == http::header::EXPECT
                || (end && name == http::header::CONTENT_LENGTH);
            if skip {
                continue;
            }
            head.extend_from_slice(n);
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        let chunked = !end && !declared;
        if chunked {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        head.extend_from_slice(b"connection: close\r\n\r\n");
        let mut pending = VecDeque::with_capacity(4);
        pending.push_back(Bytes::from(head));
        Some(H2Stream {
            pending,
            body: (!end).then_some(body),
            chunked,
            read_any: false,
            responder: Some(responder),
            send: None,
            out: Out::Head,
            head_buf: Vec::new(),
            head_request: parts.method == http::Method::HEAD,
            grpc: is_grpc(parts.headers.get(http::header::CONTENT_TYPE)),
            certs,
        })
    }

    /// Takes the stream's halves for a relay that speaks HTTP/2 end to end,
    /// while no request body byte was handed out and nothing was answered:
    /// the request body and the responder. The HTTP/1.1 view of the stream
    /// is then closed.
    pub fn take_native(&mut self) -> Option<(Option<RecvBody>, Responder)> {
        if self.read_any || !matches!(self.out, Out::Head) || !self.head_buf.is_empty() {
            return None;
        }
        let responder = self.responder.take()?;
        self.out = Out::Done;
        self.pending.clear();
        Some((self.body.take(), responder))
    }

    /// Gives back a responder taken by [`H2Stream::take_native`] when the
    /// relay ended before answering, so the gateway answers its error the
    /// usual way (a gRPC status for a gRPC client).
    pub fn restore(&mut self, responder: Responder) {
        self.responder = Some(responder);
        self.out = Out::Head;
    }

    /// Whether the request is a gRPC call.
    pub fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// The client certificate chain of the stream's connection.
    pub fn peer_certificates(&self) -> Option<&[rustls_pki_types::CertificateDer<'static>]> {
        self.certs.as_deref()
    }

    /// Whether the answer went out whole.
    pub fn answered(&self) -> bool {
        matches!(self.out, Out::Done) && self.responder.is_none()
    }

    /// The next request bytes, pulling a DATA chunk when none are ready;
    /// `None` at the end of the request.
    async fn next_piece(&mut self) -> io::Result<Option<&mut Bytes>> {
        loop {
            while self.pending.front().is_some_and(Bytes::is_empty) {
                self.pending.pop_front();
            }
            if !self.pending.is_empty() || self.body.is_none() {
                return Ok(self.pending.front_mut());
            }
            // An empty DATA frame (often the one that ends the stream)
            // frames nothing: pull on, up to the body's end.
            self.pull().await?;
        }
    }

    /// Frames the next DATA chunk (or the body's end) into `pending`.
    async fn pull(&mut self) -> io::Result<()> {
        let Some(body) = self.body.as_mut() else {
            return Ok(());
        };
        self.read_any = true;
        match body.chunk().await {
            Some(Ok(data)) if data.is_empty() => Ok(()),
            Some(Ok(data)) => {
                if self.chunked {
                    self.pending
                        .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                    self.pending.push_back(data);
                    self.pending.push_back(Bytes::from_static(b"\r\n"));
                } else {
                    self.pending.push_back(data);
                }
                Ok(())
            }
            Some(Err(e)) => {
                self.body = None;
                Err(io::Error::other(e))
            }
            None => {
                let trailers = body.trailers().await.map_err(io::Error::other)?;
                self.body = None;
                if self.chunked {
                    let mut end = b"0\r\n".to_vec();
                    for (name, value) in trailers.iter().flatten() {
                        end.extend_from_slice(name.as_str().as_bytes());
                        end.extend_from_slice(b": ");
                        end.extend_from_slice(value.as_bytes());
                        end.extend_from_slice(b"\r\n");
                    }
                    end.extend_from_slice(b"\r\n");
                    self.pending.push_back(Bytes::from(end));
                }
                Ok(())
            }
        }
    }

    /// Copies request bytes into `dst` (at most `room`), through `copy`;
    /// `Ok(0)` at the end of the request.
    pub async fn read_with(&mut self, copy: impl FnOnce(&[u8]) -> usize) -> io::Result<usize> {
        let Some(piece) = self.next_piece().await? else {
            return Ok(0);
        };
        let n = copy(piece);
        bytes::Buf::advance(piece, n.min(piece.len()));
        Ok(n)
    }

    /// [`H2Stream::write_bytes`] for the pipeline's timed writes. A write
    /// waits only for the client's flow-control window, which
    /// [`SendBody::send`] already bounds by the stall timeout (the stream is
    /// then reset), so no timer of its own is set here.
    pub async fn write_within(
        &mut self,
        data: &[u8],
        _dur: std::time::Duration,
    ) -> Result<(), crate::http::io::IoFail> {
        self.write_bytes(data)
            .await
            .map_err(crate::http::io::IoFail::Io)
    }

    /// [`H2Stream::read_with`] within `dur`, or until `stop`
    /// ([`crate::http::io::IoFail::Timeout`]); appends to `buf` no more than
    /// its spare capacity.
    pub async fn read_within(
        &mut self,
        buf: &mut Vec<u8>,
        dur: std::time::Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<usize, crate::http::io::IoFail> {
        use crate::http::io::IoFail;
        let room = buf.capacity().saturating_sub(buf.len());
        let copy = |src: &[u8]| {
            let n = src.len().min(room);
            buf.extend_from_slice(src.get(..n).unwrap_or_default());
            n
        };
        // Bytes ready (the head, a framed chunk): no wait, no timer.
        if self.pending.iter().any(|p| !p.is_empty()) || self.body.is_none() {
            return self.read_with(copy).await.map_err(IoFail::Io);
        }
        monoio::select! {
            r = self.read_with(copy) => r.map_err(IoFail::Io),
            _ = monoio::time::sleep(dur) => Err(IoFail::Timeout),
            _ = stop => Err(IoFail::Timeout),
        }
    }

    /// Takes response bytes: all of `data` is consumed (or the stream failed).
    pub async fn write_bytes(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            data = match &mut self.out {
                Out::Done => return Ok(()),
                Out::Head => self.head_bytes(data).await?,
                Out::Length(left) => {
                    let n = (*left).min(data.len() as u64) as usize;
                    let (now, rest) = data.split_at(n);
                    *left -= n as u64;
                    let last = *left == 0;
                    self.send_data(now).await?;
                    if last {
                        self.end(None)?;
                    }
                    rest
                }
                Out::UntilClose => {
                    self.send_data(data).await?;
                    &[]
                }
                Out::GrpcError { left, body, .. } => {
                    let n = (*left).min(data.len() as u64) as usize;
                    let (now, rest) = data.split_at(n);
                    *left -= n as u64;
                    if (body.len() as u64) < MAX_ERROR_BODY {
                        body.extend_from_slice(now);
                    }
                    if *left == 0 {
                        self.grpc_error()?;
                    }
                    rest
                }
                Out::Chunked(_) => self.chunked_bytes(data).await?,
            };
        }
        Ok(())
    }

    /// Accumulates and parses the response head; returns what follows it.
    async fn head_bytes<'d>(&mut self, data: &'d [u8]) -> io::Result<&'d [u8]> {
        // The usual case: the whole head in one write, parsed where it is.
        let whole = self.head_buf.is_empty();
        if !whole {
            self.head_buf.extend_from_slice(data);
        }
        let mut fields = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
        let mut parsed = httparse::Response::new(&mut []);
        let held = std::mem::take(&mut self.head_buf);
        let source = if whole { data } else { held.as_slice() };
        let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            source,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if source.len() > MAX_RESPONSE_HEAD {
                    self.abandon(Reason::INTERNAL_ERROR);
                    return Err(io::Error::other("response head too large"));
                }
                if whole {
                    self.head_buf.extend_from_slice(data);
                } else {
                    self.head_buf = held;
                }
                return Ok(&[]);
            }
            Err(_) => {
                self.abandon(Reason::INTERNAL_ERROR);
                return Err(io::Error::other("unparsable response head"));
            }
        };
        // What follows the head in this write.
        let before = if whole { 0 } else { held.len() - data.len() };
        let rest = data
            .get(head_len.saturating_sub(before)..)
            .unwrap_or_default();
        let status = parsed.code.unwrap_or(502);
        if (100..200).contains(&status) {
            // Interim answers (100 Continue) are not passed on.
            return Ok(rest);
        }
        let mut length = None;
        let mut chunked = false;
        let mut grpc_answer = false;
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        let headers = response.headers_mut();
        headers.reserve(parsed.headers.len());
        for f in parsed.headers.iter() {
            let name = f.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                length = std::str::from_utf8(f.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = true;
            } else if name.eq_ignore_ascii_case(b"content-type") {
                grpc_answer = is_grpc(HeaderValue::from_bytes(f.value).ok().as_ref());
            }
            if connection_specific(name) {
                continue;
            }
            if let (Ok(n), Ok(mut v)) = (
                HeaderName::from_bytes(name),
                HeaderValue::from_bytes(f.value),
            ) {
                // A value new on every answer is sent without indexing, so
                // it does not churn the HPACK tables on both sides.
                if name.eq_ignore_ascii_case(b"x-request-id") {
                    v.set_sensitive(true);
                }
                headers.append(n, v);
            }
        }
        let no_body = self.head_request || status == 204 || status == 304;
        if self.grpc && !grpc_answer {
            let left = match (no_body, chunked, length) {
                (true, _, _) | (false, true, _) => 0,
                (false, false, Some(n)) => n,
                (false, false, None) => 0,
            };
            self.out = Out::GrpcError {
                code: Code::from_gateway_status(status),
                left,
                body: Vec::new(),
            };
            if left == 0 {
                self.grpc_error()?;
            }
            return Ok(rest);
        }
        if chunked {
            response.headers_mut().remove(http::header::CONTENT_LENGTH);
        }
        let body = match (no_body, chunked, length) {
            (true, _, _) | (false, false, Some(0)) => None,
            (false, true, _) => Some(Out::Chunked(Chunk::Size(Vec::new()))),
            (false, false, Some(n)) => Some(Out::Length(n)),
            (false, false, None) => Some(Out::UntilClose),
        };
        let responder = self.responder.take().ok_or_else(broken)?;
        let send = responder.send_head_keep(response, body.is_none());
        self.send = Some(send.map_err(|_| broken())?);
        self.out = body.unwrap_or(Out::Done);
        Ok(rest)
    }

    /// Decodes chunked body bytes; returns what follows the body.
    async fn chunked_bytes<'d>(&mut self, mut data: &'d [u8]) -> io::Result<&'d [u8]> {
        let bad = || io::Error::other("bad chunked response body");
        while !data.is_empty() {
            let Out::Chunked(state) = &mut self.out else {
                return Ok(data);
            };
            match state {
                Chunk::Size(line) => {
                    let (taken, found) = match data.iter().position(|&b| b == b'\n') {
                        Some(i) => (i + 1, true),
                        None => (data.len(), false),
                    };
                    line.extend_from_slice(data.get(..taken).unwrap_or_default());
                    data = data.get(taken..).unwrap_or_default();
                    if line.len() > 1024 {
                        return Err(bad());
                    }
                    if !found {
                        continue;
                    }
                    let text = std::str::from_utf8(line).map_err(|_| bad())?;
                    let size = text.split(';').next().unwrap_or_default().trim();
                    let size = u64::from_str_radix(size, 16).map_err(|_| bad())?;
                    *state = match size {
                        0 => Chunk::Trailers(Vec::new()),
                        n => Chunk::Data(n),
                    };
                }
                Chunk::Data(left) => {
                    let n = (*left).min(data.len() as u64) as usize;
                    let (now, rest) = data.split_at(n);
                    *left -= n as u64;
                    if *left == 0 {
                        *state = Chunk::DataEnd(2);
                    }
                    data = rest;
                    self.send_data(now).await?;
                }
                Chunk::DataEnd(left) => {
                    let n = usize::from(*left).min(data.len());
                    *left -= n as u8;
                    data = data.get(n..).unwrap_or_default();
                    if *left == 0 {
                        *state = Chunk::Size(Vec::new());
                    }
                }
                Chunk::Trailers(section) => {
                    section.extend_from_slice(data);
                    let end = if section.starts_with(b"\r\n") {
                        Some(2)
                    } else {
                        section
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .map(|i| i + 4)
                    };
                    let Some(end) = end else {
                        if section.len() > MAX_RESPONSE_HEAD {
                            return Err(bad());
                        }
                        return Ok(&[]);
                    };
                    let trailers = parse_trailers(section.get(..end).unwrap_or_default());
                    self.end(Some(trailers))?;
                    return Ok(&[]);
                }
            }
        }
        Ok(data)
    }

    async fn send_data(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let send = self.send.as_mut().ok_or_else(broken)?;
        send.send(Bytes::copy_from_slice(data))
            .await
            .map_err(|_| broken())
    }

    /// Ends the response body, with trailers when there are some.
    fn end(&mut self, trailers: Option<HeaderMap>) -> io::Result<()> {
        self.out = Out::Done;
        let Some(send) = self.send.as_mut() else {
            return Ok(());
        };
        send.end(trailers.filter(|t| !t.is_empty()))
            .map_err(|_| broken())
    }

    /// Sends the non-gRPC answer read so far as a trailers-only gRPC status.
    fn grpc_error(&mut self) -> io::Result<()> {
        let Out::GrpcError { code, body, .. } = std::mem::replace(&mut self.out, Out::Done) else {
            return Ok(());
        };
        // The gateway's own errors are `{"error": "..."}`; upstream JSON
        // errors may say `message` or `error.message`.
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .or_else(|| v.get("error").map(|e| e.get("message").unwrap_or(e)))
                    .and_then(|m| m.as_str().map(str::to_string))
            })
            .unwrap_or_else(|| code.name().to_string());
        let mut response = Response::new(());
        let h = response.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(code.as_i32()));
        if let Ok(v) = HeaderValue::from_str(&encode_grpc_message(&message)) {
            h.insert("grpc-message", v);
        }
        let responder = self.responder.take().ok_or_else(broken)?;
        let send = responder.send_head_keep(response, true);
        self.send = Some(send.map_err(|_| broken())?);
        Ok(())
    }

    /// The pipeline is done with the exchange: a body up to the close ends
    /// here; an answer cut short resets the stream. A request body still
    /// coming can be drained by reading on (as a closing HTTP/1.1
    /// connection lingers); what is left when the stream is dropped is
    /// refused by `h2` with a reset once the answer has gone out.
    pub fn close(&mut self) {
        self.pending.clear();
        match self.out {
            Out::UntilClose => {
                let _ = self.end(None);
            }
            Out::GrpcError { .. } => {
                let _ = self.grpc_error();
            }
            Out::Done => {}
            Out::Head | Out::Length(_) | Out::Chunked(_) => self.abandon(Reason::INTERNAL_ERROR),
        }
    }

    fn abandon(&mut self, reason: Reason) {
        self.out = Out::Done;
        if let Some(mut send) = self.send.take() {
            send.reset_in_place(reason);
        }
        if let Some(responder) = self.responder.take() {
            responder.reset(reason);
        }
    }
}

fn broken() -> io::Error {
    io::ErrorKind::BrokenPipe.into()
}

/// The fields of a chunked trailer section (`name: value` lines, ending in
/// its empty line); lines that are not valid fields, and connection-specific
/// ones, are skipped.
pub(crate) fn parse_trailers(section: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in section.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let value = value.get(1..).unwrap_or_default().trim_ascii();
        if connection_specific(name) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    map
}

/// Answers a stream that cannot be served with a small JSON error.
fn refuse(responder: Responder, status: StatusCode, message: &str) {
    let mut body = String::from("{\"error\":\"");
    body.push_str(
        &status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
            .replace(' ', "_"),
    );
    body.push_str("\",\"message\":");
    crate::error::json_string(&mut body, message);
    body.push_str("}\n");
    let mut head = Response::new(());
    *head.status_mut() = status;
    head.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    monoio::spawn(async move {
        let _ = responder.send_full(head, Bytes::from(body), None).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(is_grpc(Some(&v("application/grpc"))));
        assert!(is_grpc(Some(&v("application/grpc+proto"))));
        assert!(!is_grpc(Some(&v("application/grpc-web"))));
        assert!(!is_grpc(Some(&v("application/grpc-web-text+proto"))));
        assert!(!is_grpc(Some(&v("application/json"))));
        assert!(!is_grpc(None));
    }

    #[test]
    fn trailer_sections() {
        let t = parse_trailers(b"grpc-status: 0\r\ngrpc-message: ok%20then\r\nbad line\r\n\r\n");
        assert_eq!(t.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
        assert_eq!(
            t.get("grpc-message").map(|v| v.as_bytes()),
            Some(&b"ok%20then"[..])
        );
        assert_eq!(t.len(), 2);
    }
}
