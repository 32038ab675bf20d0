//! Forwarding to `protocol: Http2` upstreams: one HTTP/1.1 exchange with
//! the client becomes one HTTP/2 stream on the shard's [`crate::h2::H2Pool`].
//!
//! - The upstream head is the one the HTTP/1.1 path builds
//!   ([`super::upstream_head`]: hop-by-hop fields removed, `X-Forwarded-*`,
//!   identity headers, path edit), turned into an HTTP/2 request: the fields
//!   HTTP/2 forbids are dropped, `:authority` comes from `Host`, and
//!   `te: trailers` is kept.
//! - The request body streams from the client as it arrives (Content-Length
//!   or chunked; a chunked body's trailers become HTTP/2 trailers), with the
//!   upstream's flow control.
//! - The response goes to the client as HTTP/1.1 through the same head writer
//!   as proxied HTTP/1.1 answers; its DATA is written as it arrives (chunked,
//!   or with the upstream's Content-Length for a non-gRPC answer), and its
//!   trailers (`grpc-status`, `grpc-message`) end the chunked body.
//! - A `grpc-timeout` request header bounds the whole call and is passed on,
//!   reduced by the time already spent.
//! - gRPC-Web (`application/grpc-web[-text][+proto]`) is translated both
//!   ways: see [`Web`].

use super::{
    bad_gateway, client_head, note_connection, upstream_head, Disposition, Early, Exchange,
    TryOptions,
};
use crate::compiled::UpstreamPlan;
use crate::error::{reason_phrase, GatewayError};
use crate::h2::{Endpoint, EndpointTls, PoolError, RecvBody, SendBody};
use crate::http::body::OutFraming;
use crate::http::chunked::ChunkedDecoder;
use crate::http::head::trailer_section;
use crate::http::io::{write_all_to, IoFail};
use crate::http::{Conn, Framing, Parsed, RequestHead, ResponseHead};
use crate::shard::Shard;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request};
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Connections per target and shard when `max_connections_per_target` is
/// not set.
const DEFAULT_CONNECTIONS: usize = 4;
/// Response bytes taken in while the request body is still being sent
/// (an upstream that answers as it reads); beyond them the upstream waits
/// for the gateway to finish sending.
const EARLY_RESPONSE_BYTES: usize = 1024 * 1024;

/// The gRPC-Web form of a request (Envoy's `grpc_web` filter): the request
/// goes upstream as `application/grpc`, and the answer comes back as
/// `application/grpc-web+proto` (or `-text`), its trailers appended to the
/// body as a trailer frame (flag byte `0x80`, a 4-byte big-endian length,
/// then `name: value\r\n` lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Web {
    /// `application/grpc-web` and `application/grpc-web+proto`.
    Binary,
    /// `application/grpc-web-text` and `application/grpc-web-text+proto`:
    /// the bodies are base64.
    Text,
}

impl Web {
    /// The gRPC-Web form of a request with content type `ct`, if it is one.
    pub fn of(ct: Option<&[u8]>) -> Option<Web> {
        let ct = ct?;
        let ct = ct
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let lower = ct.to_ascii_lowercase();
        match lower.as_slice() {
            b"application/grpc-web" | b"application/grpc-web+proto" => Some(Web::Binary),
            b"application/grpc-web-text" | b"application/grpc-web-text+proto" => Some(Web::Text),
            _ => None,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Web::Binary => "application/grpc-web+proto",
            Web::Text => "application/grpc-web-text+proto",
        }
    }
}

/// Decodes a base64 (`grpc-web-text`) body as it streams, in whole 4-char
/// groups; each group may end a padded segment (a client may send every
/// message as its own padded base64).
#[derive(Default)]
pub struct TextDecoder {
    carry: Vec<u8>,
}

impl TextDecoder {
    /// Decodes what `input` completes; the rest waits for the next call.
    pub fn push(&mut self, input: &[u8]) -> Result<Vec<u8>, base64::DecodeError> {
        self.carry
            .extend(input.iter().copied().filter(|b| !b.is_ascii_whitespace()));
        let whole = self.carry.len() / 4 * 4;
        let mut out = Vec::with_capacity(whole / 4 * 3);
        let mut start = 0;
        let groups = self.carry.get(..whole).unwrap_or_default();
        for (i, group) in groups.chunks(4).enumerate() {
            let end = (i + 1) * 4;
            if group.contains(&b'=') || end == whole {
                let segment = groups.get(start..end).unwrap_or_default();
                base64::engine::general_purpose::STANDARD.decode_vec(segment, &mut out)?;
                start = end;
            }
        }
        self.carry.drain(..whole);
        Ok(out)
    }

    /// Whether a partial group is left over (a malformed body at its end).
    pub fn has_rest(&self) -> bool {
        !self.carry.is_empty()
    }
}

/// The gRPC-Web trailer frame for `trailers`: flag `0x80`, length, lines.
pub fn trailer_frame(trailers: &HeaderMap) -> Vec<u8> {
    let mut lines = Vec::new();
    field_lines(trailers, &mut lines);
    let mut out = Vec::with_capacity(5 + lines.len());
    out.push(0x80);
    out.extend_from_slice(&u32::try_from(lines.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&lines);
    out
}

/// Appends `name: value\r\n` for each field (names are lower case).
fn field_lines(fields: &HeaderMap, out: &mut Vec<u8>) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Fields HTTP/2 forbids in a request (connection-specific), beyond those
/// [`upstream_head`] already removed.
fn forbidden_in_h2(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"host")
        || name.eq_ignore_ascii_case(b"http2-settings")
        || crate::h2::connection_specific(name)
}

/// Turns the HTTP/1.1 upstream head into an HTTP/2 request head.
fn h2_request(
    raw: &[u8],
    tls: bool,
    addr: SocketAddr,
    web: Option<Web>,
    grpc_timeout: Option<Duration>,
) -> Result<Request<()>, &'static str> {
    let lines = raw.split(|&b| b == b'\n').count();
    let mut storage = vec![httparse::EMPTY_HEADER; lines];
    let mut parsed = httparse::Request::new(&mut storage);
    match parsed.parse(raw) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err("request head could not be carried over HTTP/2"),
    }
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return Err("request head could not be carried over HTTP/2");
    };
    let host = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value);
    let authority = host
        .and_then(|h| http::uri::Authority::try_from(h).ok())
        .or_else(|| http::uri::Authority::try_from(addr.to_string()).ok())
        .ok_or("request host is not a valid :authority")?;
    let uri = http::Uri::builder()
        .scheme(if tls { "https" } else { "http" })
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| "request target is not a valid :path")?;
    let mut builder = Request::builder().method(method).uri(uri);
    let grpc = web.is_some()
        || parsed.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("content-type")
                && h.value.len() >= 16
                && h.value
                    .get(..16)
                    .is_some_and(|v| v.eq_ignore_ascii_case(b"application/grpc"))
        });
    let mut te = false;
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        if forbidden_in_h2(name) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"te") {
            te |= h.value.eq_ignore_ascii_case(b"trailers");
            continue;
        }
        if name.eq_ignore_ascii_case(b"grpc-timeout") {
            continue;
        }
        if web.is_some()
            && (name.eq_ignore_ascii_case(b"content-type")
                || name.eq_ignore_ascii_case(b"content-length"))
        {
            continue;
        }
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(h.value),
        ) else {
            continue;
        };
        builder = builder.header(n, v);
    }
    if te || grpc {
        builder = builder.header("te", "trailers");
    }
    if web.is_some() {
        builder = builder.header("content-type", "application/grpc");
    }
    if let Some(left) = grpc_timeout {
        builder = builder.header("grpc-timeout", crate::grpc::timeout::format(left));
    }
    builder
        .body(())
        .map_err(|_| "request head could not be carried over HTTP/2")
}

/// How the shard's [`crate::h2::H2Pool`] reaches `addr` of the HTTP/2
/// upstream `up`: TLS (ALPN h2) when the upstream has it, the upstream's
/// stream and connection limits, and its own connections (not shared with
/// another upstream at the same address). For any caller that opens
/// streams to an upstream's targets with [`crate::h2::H2Pool::start_at`].
pub fn endpoint(
    shard: &Shard,
    up: &UpstreamPlan,
    addr: SocketAddr,
    connect_timeout: Duration,
    stall: Duration,
) -> Result<Endpoint, GatewayError> {
    let tls = match &up.tls {
        None => None,
        Some(plan) => {
            let i = up.targets.iter().position(|a| *a == addr).unwrap_or(0);
            let Some(name) = plan.names.get(i).or(plan.names.first()).cloned() else {
                return Err(bad_gateway(up, format!("no TLS server name for {addr}")));
            };
            Some(EndpointTls {
                config: plan.config.clone(),
                name,
            })
        }
    };
    let max_connections = up
        .max_connections
        .map_or(DEFAULT_CONNECTIONS, |m| {
            super::pool::share(m, shard.shards, shard.id)
        })
        .max(1);
    Ok(Endpoint {
        addr,
        key: up.http2.key,
        tls,
        max_streams_per_connection: up.http2.max_streams_per_connection.max(1),
        max_connections,
        connect_timeout,
        stall_timeout: stall,
        queue_timeout: up.queue_timeout,
        idle_timeout: up.idle_timeout,
    })
}

/// Time left before `deadline` (the call's gRPC deadline), capped at `t`.
fn within(deadline: Option<Instant>, t: Duration) -> Duration {
    deadline.map_or(t, |d| t.min(d.saturating_duration_since(Instant::now())))
}

/// How sending the request body ended badly.
enum BodyFail {
    /// The client stalled.
    ClientTimeout,
    /// The client closed or broke the connection.
    ClientGone,
    /// Malformed chunked framing or gRPC-Web text.
    Bad(&'static str),
    /// Over the body limit.
    TooLarge,
    /// The upstream refused the rest (reset, window stall).
    Upstream(String),
}

/// Streams the client's request body to the upstream stream.
async fn pump_body(
    client: &mut Conn,
    framing: Framing,
    mut send: SendBody,
    web: Option<Web>,
    read_timeout: Duration,
    max_bytes: u64,
) -> Result<u64, BodyFail> {
    let mut text = (web == Some(Web::Text)).then(TextDecoder::default);
    let mut total = 0u64;
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut chunked = (framing == Framing::Chunked).then(ChunkedDecoder::keeping_trailers);
    loop {
        // What is buffered: body data (a range of it) and how much of it was framing.
        let (consumed, data, done) = match chunked.as_mut() {
            Some(dec) => {
                let step = dec
                    .step(client.buffered())
                    .map_err(|_| BodyFail::Bad("malformed chunked body"))?;
                (step.consumed, step.data, dec.is_done())
            }
            None => {
                let k = (client.buffered().len() as u64).min(left) as usize;
                left -= k as u64;
                (k, Some(0..k), left == 0)
            }
        };
        if let Some(range) = data.filter(|r| !r.is_empty()) {
            let raw = client.buffered().get(range).unwrap_or_default();
            total += raw.len() as u64;
            if total > max_bytes {
                return Err(BodyFail::TooLarge);
            }
            let bytes = match text.as_mut() {
                Some(dec) => Bytes::from(
                    dec.push(raw)
                        .map_err(|_| BodyFail::Bad("malformed grpc-web-text body"))?,
                ),
                None => Bytes::copy_from_slice(raw),
            };
            client.consume(consumed);
            if !bytes.is_empty() {
                send.send(bytes)
                    .await
                    .map_err(|e| BodyFail::Upstream(PoolError::Send(e).to_string()))?;
            }
        } else {
            client.consume(consumed);
        }
        if done {
            break;
        }
        if client.buffered().is_empty() || consumed == 0 {
            match client.fill(read_timeout).await {
                Ok(0) => return Err(BodyFail::ClientGone),
                Ok(_) => {}
                Err(IoFail::Timeout) => return Err(BodyFail::ClientTimeout),
                Err(IoFail::Io(_)) => return Err(BodyFail::ClientGone),
            }
        }
    }
    if text.as_ref().is_some_and(TextDecoder::has_rest) {
        return Err(BodyFail::Bad("malformed grpc-web-text body"));
    }
    let trailers = chunked
        .as_mut()
        .map(|d| header_map(&d.take_trailers()))
        .filter(|t| !t.is_empty());
    match trailers {
        Some(t) => send.trailers(t),
        None => send.finish(),
    }
    .map_err(|e| BodyFail::Upstream(PoolError::Send(e).to_string()))?;
    Ok(total)
}

/// The fields of a raw trailer section that may be passed on.
fn header_map(raw: &[u8]) -> HeaderMap {
    let mut clean = Vec::new();
    trailer_section(raw, &mut clean);
    crate::h2::bridge::parse_trailers(&clean)
}

/// Maps a pool failure before any response byte to the gateway's error and
/// how the try failed.
pub(super) fn pool_error(
    up: &UpstreamPlan,
    addr: SocketAddr,
    err: PoolError,
) -> (GatewayError, Early) {
    match err {
        PoolError::Saturated => (
            GatewayError::UpstreamBusy {
                upstream: up.name.clone(),
                reason: "every HTTP/2 connection to the target is at its stream limit".into(),
            },
            Early::No,
        ),
        PoolError::Connect(e) if e.kind() == std::io::ErrorKind::TimedOut => (
            bad_gateway(up, format!("connect to {addr} timed out")),
            Early::Connect,
        ),
        PoolError::Connect(e) => (
            bad_gateway(up, format!("connect to {addr} failed: {e}")),
            Early::Connect,
        ),
        PoolError::Tls(why) => (bad_gateway(up, why), Early::Connect),
        other => (bad_gateway(up, other.to_string()), Early::Reset),
    }
}

/// The response head as an HTTP/1.1 head, parsed, for [`client_head`].
fn response_head(
    parts: &http::response::Parts,
    web: Option<Web>,
    length: Option<u64>,
    head_request: bool,
) -> Result<ResponseHead, &'static str> {
    let status = parts.status.as_u16();
    let mut raw = Vec::with_capacity(256);
    let _ = write!(raw, "HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for (name, value) in &parts.headers {
        if name == http::header::CONTENT_LENGTH
            || name == http::header::TRANSFER_ENCODING
            || name == http::header::CONNECTION
        {
            continue;
        }
        if web.is_some() && name == http::header::CONTENT_TYPE {
            continue;
        }
        raw.extend_from_slice(name.as_str().as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value.as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    if let Some(web) = web {
        let _ = write!(raw, "content-type: {}\r\n", web.content_type());
    }
    match length {
        Some(n) => {
            let _ = write!(raw, "content-length: {n}\r\n");
        }
        None => raw.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    raw.extend_from_slice(b"\r\n");
    match ResponseHead::parse(&raw, super::MAX_RESPONSE_HEAD, head_request) {
        Ok(Parsed::Complete(h, _)) => Ok(h),
        _ => Err("response head could not be passed on as HTTP/1.1"),
    }
}

/// Whether a response is gRPC (its body ends with trailers, never a length).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Forwards `req` to `addr` of the HTTP/2 upstream `up`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn forward_to(
    shard: &Shard,
    up: &UpstreamPlan,
    addr: SocketAddr,
    req: &RequestHead,
    target: &str,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
    early: &mut Early,
    opts: &TryOptions,
) -> Result<Disposition, GatewayError> {
    let started = Instant::now();
    let web = Web::of(req.header("content-type"));
    let grpc_timeout = req
        .header("grpc-timeout")
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(crate::grpc::timeout::parse)
        .transpose()
        .map_err(|_| GatewayError::BadRequest("malformed grpc-timeout header"))?;
    let deadline = grpc_timeout.map(|d| started + d);
    let timeout = opts.timeout.unwrap_or(up.timeout);
    let connect_timeout = opts
        .connect_timeout
        .map_or(up.connect_timeout, |t| t.min(up.connect_timeout));
    let raw = upstream_head(req, target, ex, addr);
    let mut head = h2_request(&raw, up.tls.is_some(), addr, web, grpc_timeout)
        .map_err(GatewayError::BadRequest)?;
    let endpoint = endpoint(shard, up, addr, within(deadline, connect_timeout), timeout)?;
    // A body read ahead (for retries, or by validation) goes as it is, or
    // decoded for gRPC-Web text, with its own length.
    let buffered = match opts.body.as_ref().or(ex.body.as_ref()) {
        None => None,
        Some(b) if web == Some(Web::Text) => {
            let mut dec = TextDecoder::default();
            let decoded = dec
                .push(b)
                .ok()
                .filter(|_| !dec.has_rest())
                .ok_or(GatewayError::BadRequest("malformed grpc-web-text body"))?;
            Some(Bytes::from(decoded))
        }
        Some(b) => Some(Bytes::copy_from_slice(b)),
    };
    if let Some(b) = &buffered {
        ex.seen.bytes_in = b.len() as u64;
        head.headers_mut()
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(b.len()));
    }
    let framing = if buffered.is_some() {
        Framing::None
    } else {
        req.framing
    };
    let has_body = buffered.as_ref().is_some_and(|b| !b.is_empty())
        || matches!(framing, Framing::Length(n) if n > 0)
        || framing == Framing::Chunked;
    let start = shard.h2.start_at(&endpoint, head, !has_body);
    let mut call = match monoio::time::timeout(
        within(deadline, connect_timeout + up.queue_timeout + timeout),
        start,
    )
    .await
    {
        Ok(Ok(call)) => call,
        Ok(Err(err)) => {
            let (e, how) = pool_error(up, addr, err);
            *early = how;
            if how == Early::Connect {
                note_connection(shard, up, addr, false);
            }
            return Err(e);
        }
        Err(_) => {
            *early = Early::Timeout;
            return Err(GatewayError::GatewayTimeout {
                upstream: up.name.clone(),
            });
        }
    };
    note_connection(shard, up, addr, !call.opened);
    // An HTTP/2 client whose stream nothing has read yet is relayed end to
    // end: both directions at once, trailers untouched (gRPC streaming).
    if buffered.is_none() && web.is_none() {
        if let Some(native) = client.stream.h2().and_then(|s| s.take_native()) {
            let relay =
                super::h2native::relay(up, addr, call, native, deadline, timeout, client, ex);
            return Box::pin(relay).await.map_err(|(e, how)| {
                *early = how;
                e
            });
        }
    }
    let send = call.body.take();
    let response = call.response();
    let mut response = std::pin::pin!(response);
    let deadline_sleep = async {
        match deadline {
            Some(d) => monoio::time::sleep(d.saturating_duration_since(Instant::now())).await,
            None => std::future::pending::<()>().await,
        }
    };
    let mut deadline_sleep = std::pin::pin!(deadline_sleep);
    let timed_out = || GatewayError::GatewayTimeout {
        upstream: up.name.clone(),
    };
    // The request body and the response head, side by side: the upstream
    // may answer before it has read the whole body.
    let mut head = None;
    let mut early_data = EarlyData::default();
    if let Some(send) = send {
        let upload = Upload {
            up,
            req,
            framing,
            buffered: buffered.as_ref(),
            web,
            deadline,
            timeout,
            read_timeout: ex.limits.body_read_timeout,
            send_timeout: ex.limits.send_timeout,
            max_bytes: ex.limits.max_body_bytes,
            hold: &opts.hold,
        };
        let response = response.as_mut();
        let sleep = deadline_sleep.as_mut();
        // A plain client's body is read through a second handle on its
        // socket, so the answer can be written while the body still comes
        // (full duplex); a TLS client's through its connection.
        let watcher = match buffered {
            None => client.watcher().ok(),
            Some(_) => None,
        };
        let phase = match watcher {
            Some(w) => {
                let mut src = Conn::new(w, 16 * 1024);
                src.push_buffered(client.buffered());
                let n = client.buffered().len();
                client.consume(n);
                let phase = upload
                    .run(
                        &mut src,
                        Some((shard, &mut *client)),
                        ex,
                        send,
                        response,
                        sleep,
                    )
                    .await;
                // Bytes after the body (a pipelined request) go back.
                client.push_buffered(src.buffered());
                phase
            }
            None => upload.run(client, None, ex, send, response, sleep).await,
        };
        match phase {
            Phase::Finished(r, how) => {
                if let Some(how) = how {
                    *early = how;
                }
                return r;
            }
            Phase::Head(h, data) => {
                head = h;
                early_data = data;
            }
        }
    } else {
        ex.body_consumed = true;
    }
    let head = match head {
        Some(h) => h,
        None => {
            let wait = within(deadline, timeout);
            match monoio::time::timeout(wait, &mut response).await {
                Ok(h) => h,
                Err(_) => {
                    *early = Early::Timeout;
                    return Err(timed_out());
                }
            }
        }
    };
    let (parts, body) = match head {
        Ok(pair) => pair,
        Err(err) => {
            *early = Early::Reset;
            return Err(bad_gateway(
                up,
                format!("stream failed before a response: {err}"),
            ));
        }
    };
    let status = parts.status.as_u16();
    if opts.hold.contains(status) {
        *early = Early::Held(status);
        return Err(GatewayError::UpstreamStatus {
            upstream: up.name.clone(),
            status,
        });
    }
    let body = Received {
        early: early_data,
        body,
    };
    respond(
        shard, up, req, client, ex, parts, body, web, deadline, timeout,
    )
    .await
}

/// How the request body goes up while the response head is awaited.
struct Upload<'u> {
    up: &'u UpstreamPlan,
    req: &'u RequestHead,
    framing: Framing,
    buffered: Option<&'u Bytes>,
    web: Option<Web>,
    deadline: Option<Instant>,
    timeout: Duration,
    read_timeout: Duration,
    send_timeout: Duration,
    max_bytes: u64,
    /// Statuses held back for the retry loop (never streamed early).
    hold: &'u crate::resilience::breaker::StatusSet,
}

/// Where the upload phase left the exchange.
enum Phase {
    /// The exchange is over (with how the try failed early, if it did).
    Finished(Result<Disposition, GatewayError>, Option<Early>),
    /// The body is sent (or given up on); the response head, if it came,
    /// and response DATA taken in meanwhile.
    Head(Option<HeadResult>, EarlyData),
}

/// The response head and body, or why the stream failed.
type HeadResult = Result<(http::response::Parts, RecvBody), PoolError>;

impl Upload<'_> {
    /// Sends the body from `src` while awaiting the head. With `duplex`
    /// (the client connection, when `src` is a second handle on it), an
    /// answer that comes first is written to the client while the body
    /// still goes up.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        src: &mut Conn,
        duplex: Option<(&Shard, &mut Conn)>,
        ex: &mut Exchange<'_>,
        mut send: SendBody,
        mut response: std::pin::Pin<&mut impl std::future::Future<Output = HeadResult>>,
        mut deadline_sleep: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Phase {
        let up = self.up;
        let timed_out = || {
            Phase::Finished(
                Err(GatewayError::GatewayTimeout {
                    upstream: up.name.clone(),
                }),
                Some(Early::Timeout),
            )
        };
        let body = async {
            if let Some(b) = self.buffered {
                send.send(b.clone())
                    .await
                    .map_err(|e| BodyFail::Upstream(PoolError::Send(e).to_string()))?;
                send.finish()
                    .map_err(|e| BodyFail::Upstream(PoolError::Send(e).to_string()))?;
                return Ok(b.len() as u64);
            }
            if self.req.expect_continue
                && crate::http::body::send_100_continue(src, self.send_timeout)
                    .await
                    .is_err()
            {
                return Err(BodyFail::ClientGone);
            }
            pump_body(
                src,
                self.framing,
                send,
                self.web,
                self.read_timeout,
                self.max_bytes,
            )
            .await
        };
        let mut body = std::pin::pin!(body);
        let mut head = None;
        let mut early_data = EarlyData::default();
        let sent = monoio::select! {
            r = &mut body => Some(r),
            h = &mut response => { head = Some(h); None }
            _ = &mut deadline_sleep => return timed_out(),
        };
        let sent = match sent {
            Some(r) => Some(r),
            None => {
                // The upstream answered first: an answer that ends the
                // stream or refuses the request does not need the rest of
                // the body; any other gets it all.
                let refused = matches!(&head, Some(Ok((parts, recv)))
                    if recv.is_end_stream()
                        || parts.status.as_u16() >= 400
                        || self.hold.contains(parts.status.as_u16()));
                match (head.take(), duplex) {
                    (h, _) if refused => {
                        head = h;
                        None
                    }
                    // Full duplex: the answer streams to the client while
                    // the body still comes.
                    (Some(Ok((parts, recv))), Some((shard, client))) => {
                        let received = Received {
                            early: EarlyData::default(),
                            body: recv,
                        };
                        return self
                            .duplex(shard, client, ex, parts, received, body.as_mut())
                            .await;
                    }
                    // Otherwise the response body is taken in meanwhile
                    // (up to a bound), so an upstream that answers as it
                    // reads is not stopped by its own flow control.
                    (Some(Ok((parts, mut recv))), None) => {
                        let bound = EARLY_RESPONSE_BYTES;
                        let r = loop {
                            monoio::select! {
                                r = &mut body => break r,
                                c = recv.chunk(), if early_data.open() && early_data.len < bound => {
                                    early_data.push(c);
                                }
                                _ = &mut deadline_sleep => return timed_out(),
                            }
                        };
                        head = Some(Ok((parts, recv)));
                        Some(r)
                    }
                    (h, _) => {
                        head = h;
                        Some(body.as_mut().await)
                    }
                }
            }
        };
        match sent {
            None => {
                ex.body_consumed = false;
                ex.keep_alive = false;
            }
            Some(Ok(n)) => {
                ex.body_consumed = true;
                ex.seen.bytes_in = n;
            }
            Some(Err(e @ BodyFail::Upstream(_))) => {
                // The upstream may still have answered (and said why).
                ex.keep_alive = false;
                if head.is_none() {
                    let wait = within(self.deadline, self.timeout);
                    head = monoio::time::timeout(wait, &mut response).await.ok();
                }
                if !matches!(head, Some(Ok(_))) {
                    let why = match e {
                        BodyFail::Upstream(why) => why,
                        _ => String::new(),
                    };
                    return Phase::Finished(Err(bad_gateway(up, why)), Some(Early::Reset));
                }
            }
            Some(Err(e)) => return Phase::Finished(e.client_error(up), None),
        }
        Phase::Head(head, early_data)
    }

    /// Writes the answer to the client while the body still goes up; the
    /// exchange ends when both are done.
    async fn duplex(
        &self,
        shard: &Shard,
        client: &mut Conn,
        ex: &mut Exchange<'_>,
        parts: http::response::Parts,
        received: Received,
        mut body: std::pin::Pin<&mut impl std::future::Future<Output = Result<u64, BodyFail>>>,
    ) -> Phase {
        let mut sent = None;
        let answered = {
            let answer = respond(
                shard,
                self.up,
                self.req,
                client,
                ex,
                parts,
                received,
                self.web,
                self.deadline,
                self.timeout,
            );
            let mut answer = std::pin::pin!(answer);
            loop {
                monoio::select! {
                    r = &mut answer => break r,
                    r = &mut body, if sent.is_none() => sent = Some(r),
                }
            }
        };
        let sent = match sent {
            Some(r) => r,
            // The answer is complete; the rest of the body still goes up.
            None => body.await,
        };
        if let Ok(n) = sent {
            ex.seen.bytes_in = n;
        }
        ex.body_consumed = sent.is_ok();
        match (answered, sent) {
            (Ok(d), Ok(_)) => Phase::Finished(Ok(d), None),
            // The answer is out: closing is the only signal left.
            (Ok(_), Err(_)) => Phase::Finished(Ok(Disposition::Close), None),
            (Err(e), _) => Phase::Finished(Err(e), None),
        }
    }
}

impl BodyFail {
    /// The answer for a body the client failed to send well.
    fn client_error(self, up: &UpstreamPlan) -> Result<Disposition, GatewayError> {
        match self {
            BodyFail::ClientGone => Ok(Disposition::Close),
            BodyFail::ClientTimeout => Err(GatewayError::RequestTimeout),
            BodyFail::Bad(why) => Err(GatewayError::BadRequest(why)),
            BodyFail::TooLarge => Err(GatewayError::PayloadTooLarge),
            BodyFail::Upstream(why) => Err(bad_gateway(up, why)),
        }
    }
}

/// Response DATA taken in before the request body was all sent.
#[derive(Default)]
struct EarlyData {
    chunks: std::collections::VecDeque<Bytes>,
    len: usize,
    /// The body ended (`Some(true)`) or failed (`Some(false)`) meanwhile.
    end: Option<bool>,
}

impl EarlyData {
    fn open(&self) -> bool {
        self.end.is_none()
    }

    fn push(&mut self, chunk: Option<Result<Bytes, h2::Error>>) {
        match chunk {
            Some(Ok(c)) => {
                self.len += c.len();
                self.chunks.push_back(c);
            }
            Some(Err(_)) => self.end = Some(false),
            None => self.end = Some(true),
        }
    }
}

/// The response body: what was taken in early, then the stream.
struct Received {
    early: EarlyData,
    body: RecvBody,
}

impl Received {
    async fn chunk(&mut self) -> Option<Result<Bytes, ()>> {
        if let Some(c) = self.early.chunks.pop_front() {
            return Some(Ok(c));
        }
        match self.early.end {
            Some(true) => None,
            Some(false) => Some(Err(())),
            None => self.body.chunk().await.map(|r| r.map_err(|_| ())),
        }
    }
}

/// Writes the response to the client as HTTP/1.1 and streams its body and
/// trailers.
#[allow(clippy::too_many_arguments)]
async fn respond(
    shard: &Shard,
    up: &UpstreamPlan,
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
    parts: http::response::Parts,
    mut body: Received,
    web: Option<Web>,
    deadline: Option<Instant>,
    timeout: Duration,
) -> Result<Disposition, GatewayError> {
    let head_request = req.method() == "HEAD";
    let grpc = is_grpc(&parts.headers);
    // An answer that is not gRPC (an error page of a proxy in front of the
    // server) goes back as it is.
    let web = web.filter(|_| grpc);
    let length = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|_| !grpc && web.is_none());
    let resp =
        response_head(&parts, web, length, head_request).map_err(|why| bad_gateway(up, why))?;
    let client_http11 = req.version == 1;
    let out_framing = match resp.framing {
        Framing::None => None,
        Framing::Length(_) => Some(OutFraming::Raw),
        _ if client_http11 => Some(OutFraming::Chunked),
        _ => Some(OutFraming::Raw),
    };
    let close_delimited = out_framing == Some(OutFraming::Raw) && length.is_none();
    let keep_alive = ex.keep_alive && !shard.shutdown.is_fired() && !close_delimited;
    let bytes = client_head(&resp, out_framing, ex, keep_alive, req.version == 0);
    ex.seen.status = resp.status;
    ex.seen.bytes_out = bytes.len() as u64;
    let send_timeout = ex.limits.send_timeout;
    let (r, _) = client.write(bytes, send_timeout).await;
    ex.response_started = true;
    if r.is_err() {
        return Ok(Disposition::Close);
    }
    let Some(out) = out_framing else {
        return Ok(if keep_alive {
            Disposition::KeepAlive
        } else {
            Disposition::Close
        });
    };
    let chunked = out == OutFraming::Chunked;
    // The body, written as each DATA frame arrives.
    let mut sent = 0u64;
    let ended = loop {
        let wait = within(deadline, timeout);
        let next = match monoio::time::timeout(wait, body.chunk()).await {
            Ok(next) => next,
            Err(_) => break Ended::Timeout,
        };
        let data = match next {
            None => break Ended::Done,
            Some(Err(_)) => break Ended::Broken,
            Some(Ok(d)) => d,
        };
        if data.is_empty() {
            continue;
        }
        let data = match web {
            Some(Web::Text) => Bytes::from(base64::engine::general_purpose::STANDARD.encode(&data)),
            _ => data,
        };
        let mut buf = Vec::with_capacity(data.len() + 16);
        if chunked {
            let _ = write!(buf, "{:x}\r\n", data.len());
        }
        buf.extend_from_slice(&data);
        if chunked {
            buf.extend_from_slice(b"\r\n");
        }
        sent += buf.len() as u64;
        let (r, _) = write_all_to(&mut client.stream, buf, send_timeout).await;
        if r.is_err() {
            ex.seen.bytes_out += sent;
            return Ok(Disposition::Close);
        }
    };
    let trailers = match ended {
        Ended::Done => {
            let wait = within(deadline, timeout);
            match monoio::time::timeout(wait, body.body.trailers()).await {
                Ok(Ok(t)) => Ok(t),
                Ok(Err(_)) => Err(Ended::Broken),
                Err(_) => Err(Ended::Timeout),
            }
        }
        other => Err(other),
    };
    // A gRPC answer cut short still ends with a status the client can
    // read (as gRPC-Web clients need): DEADLINE_EXCEEDED once the call's
    // deadline has passed, UNAVAILABLE when the upstream stream failed.
    let deadline_passed = deadline.is_some_and(|d| Instant::now() >= d);
    let cut_short = |status: &'static str, message: &'static str| {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static(status));
        t.insert("grpc-message", HeaderValue::from_static(message));
        Some(t)
    };
    let trailers = match trailers {
        Ok(t) => t,
        Err(_) if grpc && deadline_passed => cut_short("4", "deadline exceeded at the gateway"),
        Err(Ended::Broken) if grpc => cut_short("14", "the upstream stream failed"),
        // The head is out: the only honest signal left is closing the connection.
        Err(_) => {
            ex.seen.bytes_out += sent;
            return Ok(Disposition::Close);
        }
    };
    let mut tail = Vec::new();
    if let (Some(w), Some(t)) = (web, trailers.as_ref()) {
        let frame = trailer_frame(t);
        let frame = match w {
            Web::Text => base64::engine::general_purpose::STANDARD
                .encode(&frame)
                .into_bytes(),
            Web::Binary => frame,
        };
        if chunked {
            let _ = write!(tail, "{:x}\r\n", frame.len());
        }
        tail.extend_from_slice(&frame);
        if chunked {
            tail.extend_from_slice(b"\r\n");
        }
    }
    if chunked {
        tail.extend_from_slice(b"0\r\n");
        if let (None, Some(t)) = (web, trailers.as_ref()) {
            let mut raw = Vec::new();
            field_lines(t, &mut raw);
            trailer_section(&raw, &mut tail);
        }
        tail.extend_from_slice(b"\r\n");
    }
    if !tail.is_empty() {
        sent += tail.len() as u64;
        let (r, _) = write_all_to(&mut client.stream, tail, send_timeout).await;
        if r.is_err() {
            ex.seen.bytes_out += sent;
            return Ok(Disposition::Close);
        }
    }
    ex.seen.bytes_out += sent;
    Ok(if keep_alive {
        Disposition::KeepAlive
    } else {
        Disposition::Close
    })
}

/// How reading the response body ended.
enum Ended {
    Done,
    Timeout,
    Broken,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_decoder_takes_groups_and_padded_segments() {
        let mut d = TextDecoder::default();
        let one = base64::engine::general_purpose::STANDARD.encode(b"ab");
        let two = base64::engine::general_purpose::STANDARD.encode(b"hello");
        let all = format!("{one}{two}");
        let mut out = Vec::new();
        for piece in all.as_bytes().chunks(3) {
            out.extend(d.push(piece).unwrap());
        }
        assert!(!d.has_rest());
        assert_eq!(out, b"abhello");
        assert!(TextDecoder::default().push(b"!!!!").is_err());
    }

    #[test]
    fn web_content_types() {
        assert_eq!(Web::of(Some(b"application/grpc-web")), Some(Web::Binary));
        assert_eq!(
            Web::of(Some(b"application/grpc-web+proto")),
            Some(Web::Binary)
        );
        assert_eq!(Web::of(Some(b"application/grpc-web-text")), Some(Web::Text));
        assert_eq!(
            Web::of(Some(b"Application/gRPC-Web-Text+proto; charset=x")),
            Some(Web::Text)
        );
        assert_eq!(Web::of(Some(b"application/grpc")), None);
        assert_eq!(Web::of(None), None);
    }

    #[test]
    fn trailer_frame_layout() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        let f = trailer_frame(&t);
        assert_eq!(f[0], 0x80);
        assert_eq!(&f[1..5], &16u32.to_be_bytes());
        assert_eq!(&f[5..], b"grpc-status: 0\r\n");
    }

    #[test]
    fn request_head_becomes_h2() {
        let raw = b"POST /svc/M?x=1 HTTP/1.1\r\nhost: api.example:8080\r\ncontent-type: application/grpc-web-text\r\ncontent-length: 12\r\nte: trailers\r\nx-forwarded-for: 1.2.3.4\r\n\r\n";
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let r = h2_request(
            raw,
            false,
            addr,
            Some(Web::Text),
            Some(Duration::from_millis(250)),
        )
        .unwrap();
        assert_eq!(r.uri().to_string(), "http://api.example:8080/svc/M?x=1");
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(r.headers()["te"], "trailers");
        assert_eq!(r.headers()["grpc-timeout"], "250m");
        assert!(r.headers().get("content-length").is_none());
        assert!(r.headers().get("host").is_none());
        assert_eq!(r.headers()["x-forwarded-for"], "1.2.3.4");
    }
}
