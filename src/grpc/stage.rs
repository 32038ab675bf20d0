//! The transcoding stage: a route with `grpc: Some(Transcode(..))` answers
//! REST/JSON calls by calling its gRPC service over HTTP/2 (stage 12 of
//! [`crate::pipeline`], in place of forwarding).
//!
//! Per request:
//! - the path as the route forwards it (after `strip_prefix`/`rewrite`)
//!   and the method pick a binding (no binding: 404 JSON; the path bound
//!   under other methods: 405 JSON with `Allow`);
//! - the JSON body is read whole (bounded by eight times
//!   `max_message_bytes` and the listener's `max_body_bytes`) and the
//!   request message built from the path, query and body (a bad request,
//!   an unknown field: 400 JSON);
//! - the upstream's breaker is asked, a target picked as for every call
//!   (health, outlier ejection, balancing), and the message sent as a
//!   gRPC call on the shard's HTTP/2 pool with `content-type:
//!   application/grpc`, `te: trailers`, a `grpc-timeout` (the route's
//!   `deadline_ms`, else its `timeout_ms`, else the upstream's), the
//!   client's headers as metadata (hop-by-hop and `Connection`-named
//!   fields, framing, `grpc-*` and client identity headers dropped, `authorization` dropped unless the
//!   route keeps it, the identity headers of the established caller,
//!   `x-request-id`, `x-forwarded-for` and, when tracing, `traceparent`
//!   added);
//! - the upstream's response metadata (but the gRPC protocol's own
//!   fields) is passed on as header fields;
//! - a unary answer becomes one JSON document; a server-streaming one a
//!   JSON array or NDJSON written chunk by chunk as messages arrive; a
//!   non-OK `grpc-status` becomes the google.rpc JSON error with the
//!   mapped HTTP status (after the first streamed message, the error is
//!   the stream's last element);
//! - the call is counted like a proxied one (metrics, peak EWMA, outlier
//!   detection, the breaker).
//!
//! Every answer carries `x-request-id` and the listener's and stages'
//! lines (CORS, rate-limit state, HSTS) as any other answer.

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request};

use super::frame::{FrameDecoder, StreamWriter};
use super::status::{error_body, Code};
use super::transcode::{Binding, JsonOptions, MethodMapping, TranscodeError, Transcoder};
use super::{timeout, StreamMode};
use crate::compiled::{RoutePlan, UpstreamPlan};
use crate::config::{self, Gateway, Grpc, GrpcStream, UpstreamProtocol};
use crate::error::{reason_phrase, GatewayError};
use crate::h2::pool::PoolError;
use crate::http::head::is_hop_by_hop;
use crate::http::{Conn, Framing, RequestHead};
use crate::metrics::UpstreamOutcome;
use crate::proxy::{Disposition, Exchange, InFlight, UpstreamCall};
use crate::shard::Shard;

/// Makes relative descriptor set paths relative to the config file's
/// directory (called once the file is parsed).
pub fn resolve_paths(g: &mut Gateway, config_file: &Path) {
    let dir = config_file.parent().unwrap_or(Path::new(""));
    for r in &mut g.routes {
        if let Some(Grpc::Transcode(t)) = &mut r.grpc {
            let p = Path::new(t.descriptor_set.as_str());
            if p.is_relative() && !dir.as_os_str().is_empty() {
                t.descriptor_set = dir.join(p).display().to_string();
            }
        }
    }
}

/// The transcoder's options from the config.
fn json_options(t: &config::Transcode) -> JsonOptions {
    JsonOptions {
        emit_defaults: t.emit_defaults,
        proto_names: t.proto_field_names,
        stream: match t.stream {
            GrpcStream::Array => StreamMode::JsonArray,
            GrpcStream::Ndjson => StreamMode::Ndjson,
        },
        max_message: t.max_message_bytes,
    }
}

fn mappings(t: &config::Transcode) -> Vec<MethodMapping> {
    t.methods
        .iter()
        .map(|m| MethodMapping {
            method: m.method.clone(),
            http_method: m.http_method.to_ascii_uppercase(),
            path: m.path.clone(),
            body: m.body.clone(),
            response_body: m.response_body.clone(),
        })
        .collect()
}

/// Loads the descriptor set and compiles the route's transcoder.
pub fn compile(t: &config::Transcode) -> Result<Arc<Transcoder>, String> {
    Transcoder::load(
        Path::new(&t.descriptor_set),
        &t.service,
        &mappings(t),
        json_options(t),
    )
    .map(Arc::new)
}

/// A problem in a route's `grpc` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The route's index.
    pub route: usize,
    /// The field to point at in the route (`descriptor_set`, `service`,
    /// `method`, `upstream`, ...).
    pub key: &'static str,
    /// The quoted value of `key` to point at, when one is known.
    pub value: Option<String>,
    /// The dotted field under the route (`grpc.service`).
    pub field: String,
    pub message: String,
}

/// Problems in the routes' `grpc` settings: the descriptor set, service,
/// methods and fields, the upstream's protocol, and route settings that
/// cannot go with transcoding.
pub fn check(g: &Gateway) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, r) in g.routes.iter().enumerate() {
        let Some(Grpc::Transcode(t)) = &r.grpc else {
            continue;
        };
        let mut push = |key: &'static str, value: Option<&str>, field: &str, message: String| {
            out.push(Problem {
                route: i,
                key,
                value: value.map(str::to_string),
                field: field.to_string(),
                message,
            });
        };
        let conflicts: [(bool, &'static str, &str); 9] = [
            (r.aggregate.is_some(), "aggregate", "a composite route"),
            (
                r.static_response.is_some(),
                "static_response",
                "a static response",
            ),
            (r.cache.is_some(), "cache", "the response cache"),
            (r.websocket.is_some(), "websocket", "WebSocket tunnels"),
            (
                r.split.is_some(),
                "split",
                "a split (one upstream serves the service)",
            ),
            (r.mirror.is_some(), "mirror", "mirroring"),
            (r.transform.is_some(), "transform", "transformation"),
            (r.compression.is_some(), "compression", "compression"),
            (
                r.retry.is_some() || r.fallback.is_some(),
                if r.retry.is_some() {
                    "retry"
                } else {
                    "fallback"
                },
                "retries and fallbacks",
            ),
        ];
        for (bad, key, what) in conflicts {
            if bad {
                push(
                    key,
                    None,
                    key,
                    format!("a transcoded route (`grpc: Some(Transcode(..))`) cannot use {what}"),
                );
            }
        }
        match r.upstream.as_ref().map(|u| (u, g.upstreams.get(u))) {
            None => push(
                "grpc",
                None,
                "upstream",
                "a transcoded route needs `upstream` (an HTTP/2 upstream serving the service)"
                    .into(),
            ),
            Some((name, Some(u))) => {
                if u.protocol != UpstreamProtocol::Http2 {
                    push(
                        "upstream",
                        Some(name),
                        "upstream",
                        format!(
                            "upstream {name:?} of a transcoded route must be `protocol: Http2` (gRPC runs over HTTP/2)"
                        ),
                    );
                }
            }
            // An unknown upstream is reported by the route checks.
            Some((_, None)) => {}
        }
        if t.max_message_bytes == 0 {
            push(
                "max_message_bytes",
                None,
                "grpc.max_message_bytes",
                "must be at least 1".into(),
            );
        }
        for (j, m) in t.methods.iter().enumerate() {
            let verb = m.http_method.to_ascii_uppercase();
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&verb.as_str()) {
                push(
                    "http_method",
                    Some(&m.http_method),
                    &format!("grpc.methods[{j}].http_method"),
                    "must be GET, POST, PUT, PATCH or DELETE".into(),
                );
            }
        }
        let bytes = match std::fs::read(&t.descriptor_set) {
            Ok(b) => b,
            Err(e) => {
                push(
                    "descriptor_set",
                    None,
                    "grpc.descriptor_set",
                    format!("cannot read descriptor set {:?}: {e}", t.descriptor_set),
                );
                continue;
            }
        };
        let pool = match prost_reflect::DescriptorPool::decode(bytes.as_slice()) {
            Ok(p) => p,
            Err(e) => {
                push(
                    "descriptor_set",
                    None,
                    "grpc.descriptor_set",
                    format!(
                        "{:?} is not a FileDescriptorSet (protoc --include_imports --descriptor_set_out): {e}",
                        t.descriptor_set
                    ),
                );
                continue;
            }
        };
        let Some(svc) = pool.get_service_by_name(&t.service) else {
            let known: Vec<String> = pool.services().map(|s| s.full_name().to_string()).collect();
            push(
                "service",
                Some(&t.service),
                "grpc.service",
                format!(
                    "no service {:?} in {:?} (it has: {})",
                    t.service,
                    t.descriptor_set,
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            );
            continue;
        };
        let mut methods_ok = true;
        for (j, m) in t.methods.iter().enumerate() {
            let one = config::Transcode {
                methods: vec![m.clone()],
                ..t.clone()
            };
            let known = svc.methods().any(|x| x.name() == m.method);
            let err = if known {
                Transcoder::from_bytes(&bytes, &t.service, &mappings(&one), json_options(t)).err()
            } else {
                let names: Vec<String> = svc.methods().map(|x| x.name().to_string()).collect();
                Some(format!(
                    "service {:?} has no method {:?} (it has: {})",
                    t.service,
                    m.method,
                    names.join(", ")
                ))
            };
            if let Some(e) = err {
                methods_ok = false;
                let (key, value) = if known {
                    ("path", m.path.as_str())
                } else {
                    ("method", m.method.as_str())
                };
                push(key, Some(value), &format!("grpc.methods[{j}]"), e);
            }
        }
        if methods_ok {
            if let Err(e) =
                Transcoder::from_bytes(&bytes, &t.service, &mappings(t), json_options(t))
            {
                push("grpc", None, "grpc", e);
            }
        }
    }
    out
}

/// Where the answer's status and body come from on a failure.
struct Failure {
    status: u16,
    body: Vec<u8>,
    /// `allow: ..` for a 405.
    extra: String,
}

impl Failure {
    fn code(code: Code, message: &str) -> Failure {
        Failure {
            status: code.http_status(),
            body: error_body(code, message, None, None),
            extra: String::new(),
        }
    }

    fn with_status(status: u16, code: Code, message: &str) -> Failure {
        Failure {
            status,
            body: error_body(code, message, None, None),
            extra: String::new(),
        }
    }

    fn transcode(e: &TranscodeError) -> Failure {
        match e {
            TranscodeError::BadRequest(m) => Failure::code(Code::InvalidArgument, m),
            TranscodeError::BadUpstream(m) => Failure::with_status(502, Code::Internal, m),
        }
    }

    fn gateway(e: &GatewayError) -> Failure {
        let status = e.status();
        Failure::with_status(status, Code::from_gateway_status(status), &e.message())
    }
}

/// The inputs of one transcoded call.
pub struct Call<'a> {
    pub route: &'a RoutePlan,
    pub transcoder: &'a Transcoder,
    pub up: &'a UpstreamPlan,
    pub cursor: &'a Cell<usize>,
    /// The path and query as the route forwards them.
    pub target: &'a str,
}

/// Answers `req` by transcoding it to a call of the route's service.
pub async fn serve(
    shard: &Shard,
    call: Call<'_>,
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
) -> Result<Disposition, GatewayError> {
    let tc = call.transcoder;
    let (path, query) = match call.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (call.target, None),
    };
    let Some(m) = tc.find(req.method(), path) else {
        let allow: Vec<&str> = tc
            .bindings()
            .iter()
            .filter(|b| b.template.matches(path).is_some())
            .map(|b| b.http_method.as_str())
            .collect();
        let f = if allow.is_empty() {
            Failure::code(
                Code::NotFound,
                &format!(
                    "no method of {} is bound to {} {path}",
                    tc.service().full_name(),
                    req.method()
                ),
            )
        } else {
            let mut f = Failure::with_status(
                405,
                Code::Unimplemented,
                &format!("{path} takes {}", allow.join(", ")),
            );
            f.extra = format!("allow: {}\r\n", allow.join(", "));
            f
        };
        return Ok(answer_failure(f, req, client, ex).await);
    };
    let binding = m.binding;
    let opts = tc.json_options();
    let cap = (opts.max_message.saturating_mul(8) as u64).min(ex.limits.max_body_bytes);
    let body = match ex.body.take() {
        Some(b) => b.to_vec(),
        None if req.framing == Framing::None => Vec::new(),
        None => {
            let b = crate::http::body::read_request_body(
                client,
                req.framing,
                req.expect_continue,
                cap,
                ex.limits,
            )
            .await?;
            ex.body_consumed = true;
            ex.seen.bytes_in = b.len() as u64;
            b
        }
    };
    let frame = match tc.request_frame(&m, query, &body) {
        Ok(f) => f,
        Err(e) => return Ok(answer_failure(Failure::transcode(&e), req, client, ex).await),
    };
    let admitted = match crate::resilience::admit_call(shard, call.up) {
        Ok(a) => a,
        Err(why) => {
            let f = Failure::with_status(503, Code::Unavailable, &why);
            return Ok(answer_failure(f, req, client, ex).await);
        }
    };
    let in_flight = match InFlight::pick_avoiding(shard, call.up, call.cursor, ex.balance_key, None)
    {
        Ok(f) => f,
        Err(e) => return Ok(answer_failure(Failure::gateway(&e), req, client, ex).await),
    };
    let addr = in_flight.addr();
    let policy = &call.route.resilience;
    let limit = policy
        .deadline
        .or(policy.timeout)
        .unwrap_or(call.up.timeout);
    let started = Instant::now();
    let endpoint =
        match crate::proxy::h2up::endpoint(shard, call.up, addr, call.up.connect_timeout, limit) {
            Ok(e) => e,
            Err(e) => return Ok(answer_failure(Failure::gateway(&e), req, client, ex).await),
        };
    let head = grpc_head(binding, addr, call.up.tls.is_some(), limit, req, ex);
    let (result, outcome, status) = exchange(
        shard, call.up, binding, tc, &endpoint, head, frame, limit, req, client, ex,
    )
    .await;
    let ended = Instant::now();
    let upstream_call = UpstreamCall {
        upstream: call.up.id,
        target: addr,
        took: ended.saturating_duration_since(started),
        outcome,
    };
    crate::proxy::note_call(shard, call.up, upstream_call, ended);
    ex.seen.upstream = Some(upstream_call);
    if let Some(t) = &ex.trace {
        t.upstream_call(&upstream_call, status, None);
    }
    let failed = matches!(
        outcome,
        UpstreamOutcome::ConnectError | UpstreamOutcome::Timeout | UpstreamOutcome::Reset
    );
    crate::resilience::record_call(shard, call.up, admitted, status, failed);
    drop(in_flight);
    Ok(result)
}

/// The request head of the call: the method's path, the gRPC fields and
/// the client's headers as metadata.
fn grpc_head(
    binding: &Binding,
    addr: SocketAddr,
    tls: bool,
    limit: Duration,
    req: &RequestHead,
    ex: &Exchange<'_>,
) -> Request<()> {
    let scheme = if tls { "https" } else { "http" };
    let uri = format!("{scheme}://{addr}{}", binding.grpc_path);
    let mut builder = Request::builder().method("POST").uri(uri);
    let mut headers = HeaderMap::new();
    let connection = req.connection_names();
    for (name, value) in req.headers() {
        if connection.contains(name) || !forwarded_metadata(name, ex) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    for (name, value) in &ex.add_headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    let fixed = [
        ("content-type", "application/grpc".to_string()),
        ("te", "trailers".to_string()),
        ("grpc-timeout", timeout::format(limit)),
        ("x-request-id", ex.request_id.to_string()),
        ("x-forwarded-for", ex.client_ip.to_string()),
    ];
    for (name, value) in fixed {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    if let Some(t) = &ex.trace {
        // The call is the request's call 0, as a proxied one.
        if let Ok(v) = HeaderValue::from_str(&t.traceparent(0)) {
            headers.insert(HeaderName::from_static("traceparent"), v);
        }
    }
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    builder.body(()).unwrap_or_default()
}

/// Whether a client header goes to the gRPC upstream as metadata.
fn forwarded_metadata(name: &[u8], ex: &Exchange<'_>) -> bool {
    const DROPPED: [&[u8]; 9] = [
        b"host",
        b"content-type",
        b"content-length",
        b"expect",
        b"x-request-id",
        b"x-forwarded-for",
        b"accept-encoding",
        b"cookie",
        b"traceparent",
    ];
    if is_hop_by_hop(name) || DROPPED.iter().any(|d| name.eq_ignore_ascii_case(d)) {
        return false;
    }
    if name.len() >= 5
        && name
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"grpc-"))
    {
        return false;
    }
    if name.eq_ignore_ascii_case(b"authorization") && ex.drop_authorization {
        return false;
    }
    !ex.identity_headers
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// The call's grpc-status and its message and details.
struct Status {
    code: Code,
    message: String,
    details: Option<String>,
}

fn status_of(fields: &HeaderMap) -> Option<Status> {
    let code = fields.get("grpc-status")?.to_str().ok()?;
    let text = |n: &str| {
        fields
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Some(Status {
        code: Code::from_header(code),
        message: text("grpc-message")
            .map(|m| super::status::decode_grpc_message(&m))
            .unwrap_or_default(),
        details: text("grpc-status-details-bin"),
    })
}

fn status_failure(s: &Status, tc: &Transcoder) -> Failure {
    Failure {
        status: s.code.http_status(),
        body: error_body(s.code, &s.message, s.details.as_deref(), Some(tc.pool())),
        extra: String::new(),
    }
}

/// Makes the call and answers the client: the disposition, the outcome
/// for the metrics and the status for the breaker (0: no answer).
#[allow(clippy::too_many_arguments)]
async fn exchange(
    shard: &Shard,
    up: &UpstreamPlan,
    binding: &Binding,
    tc: &Transcoder,
    endpoint: &crate::h2::pool::Endpoint,
    head: Request<()>,
    frame: Vec<u8>,
    limit: Duration,
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
) -> (Disposition, UpstreamOutcome, u16) {
    let deadline = Instant::now() + limit;
    let addr = endpoint.addr;
    let opened = async {
        let mut call = shard.h2.start_at(endpoint, head, false).await?;
        if let Some(mut send) = call.body.take() {
            send.send(Bytes::from(frame))
                .await
                .map_err(PoolError::Send)?;
            send.finish().map_err(PoolError::Send)?;
        }
        call.response().await
    };
    let (parts, mut body) = match monoio::time::timeout(limit, opened).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            let (f, outcome) = match &e {
                PoolError::Connect(err) => (
                    Failure::with_status(
                        503,
                        Code::Unavailable,
                        &format!(
                            "upstream {:?} could not be reached at {addr}: {err}",
                            up.name
                        ),
                    ),
                    UpstreamOutcome::ConnectError,
                ),
                PoolError::Saturated => (
                    Failure::with_status(
                        503,
                        Code::Unavailable,
                        &format!("every HTTP/2 connection to {addr} is at its stream cap"),
                    ),
                    UpstreamOutcome::ConnectError,
                ),
                other => (
                    Failure::with_status(
                        502,
                        Code::Unavailable,
                        &format!("upstream {:?} broke the call: {}", up.name, other),
                    ),
                    UpstreamOutcome::Reset,
                ),
            };
            return (answer_failure(f, req, client, ex).await, outcome, 0);
        }
        Err(_) => {
            let f = Failure::with_status(
                504,
                Code::DeadlineExceeded,
                &format!("upstream {:?} did not answer in time", up.name),
            );
            return (
                answer_failure(f, req, client, ex).await,
                UpstreamOutcome::Timeout,
                0,
            );
        }
    };
    if parts.status != http::StatusCode::OK {
        let s = parts.status.as_u16();
        let f = Failure::with_status(
            502,
            Code::Unavailable,
            &format!(
                "upstream {:?} answered HTTP {s}, not a gRPC answer",
                up.name
            ),
        );
        let outcome = if s >= 500 {
            UpstreamOutcome::ServerError
        } else {
            UpstreamOutcome::Ok
        };
        return (answer_failure(f, req, client, ex).await, outcome, s);
    }
    // The upstream's initial metadata goes on the answer as header fields.
    pass_metadata(&parts.headers, ex);
    // Trailers-only: the status is in the head and there is no message.
    if let Some(s) = status_of(&parts.headers).filter(|_| body.is_end_stream()) {
        return finish_without_messages(s, binding, tc, req, client, ex).await;
    }
    let opts = tc.json_options();
    let mut decoder = FrameDecoder::new(opts.max_message);
    let mut writer = StreamWriter::new(opts.stream);
    let streaming = binding.server_streaming();
    let mut unary: Option<Vec<u8>> = None;
    let mut out = Vec::new();
    let mut bytes_read = 0usize;
    // Read until the end: a unary answer whole, a stream message by message.
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let read_limit = if streaming { limit } else { left };
        let next = match monoio::time::timeout(read_limit, body.chunk()).await {
            Ok(n) => n,
            Err(_) => {
                return mid_failure(
                    Failure::with_status(
                        504,
                        Code::DeadlineExceeded,
                        &format!("upstream {:?} did not answer in time", up.name),
                    ),
                    UpstreamOutcome::Timeout,
                    &mut writer,
                    req,
                    client,
                    ex,
                )
                .await;
            }
        };
        match next {
            None => break,
            Some(Err(e)) => {
                let f = Failure::with_status(
                    502,
                    Code::Unavailable,
                    &format!("upstream {:?} broke the call: {e}", up.name),
                );
                return mid_failure(f, UpstreamOutcome::Reset, &mut writer, req, client, ex).await;
            }
            Some(Ok(chunk)) => {
                bytes_read = bytes_read.saturating_add(chunk.len());
                decoder.push(&chunk);
            }
        }
        loop {
            let message = match decoder.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    let f = Failure::with_status(502, Code::Internal, &e.to_string());
                    return mid_failure(f, UpstreamOutcome::Ok, &mut writer, req, client, ex).await;
                }
            };
            if !streaming {
                if unary.is_some() {
                    let f = Failure::with_status(
                        502,
                        Code::Internal,
                        "a unary answer must hold one message, it holds more",
                    );
                    return mid_failure(f, UpstreamOutcome::Ok, &mut writer, req, client, ex).await;
                }
                unary = Some(message);
                continue;
            }
            match tc.response_json(binding, &message) {
                Ok(json) => writer.item(&json, &mut out),
                Err(e) => {
                    let f = Failure::transcode(&e);
                    return mid_failure(f, UpstreamOutcome::Ok, &mut writer, req, client, ex).await;
                }
            }
        }
        if streaming && !out.is_empty() {
            if !ex.response_started {
                if let Err(d) = start_stream(opts.stream, req, client, ex).await {
                    return (d, UpstreamOutcome::Ok, 200);
                }
            }
            if send_chunk(std::mem::take(&mut out), req, client, ex)
                .await
                .is_err()
            {
                return (Disposition::Close, UpstreamOutcome::Ok, 200);
            }
        }
    }
    let trailers = match monoio::time::timeout(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)),
        body.trailers(),
    )
    .await
    {
        Ok(Ok(t)) => t,
        _ => None,
    };
    let status = trailers
        .as_ref()
        .and_then(status_of)
        .or_else(|| status_of(&parts.headers));
    let status = match (status, decoder.finish()) {
        (_, Err(e)) => Status {
            code: Code::Internal,
            message: e.to_string(),
            details: None,
        },
        (Some(s), Ok(())) => s,
        (None, Ok(())) => Status {
            code: Code::Internal,
            message: format!(
                "upstream {:?} ended the call without a grpc-status",
                up.name
            ),
            details: None,
        },
    };
    if streaming {
        if !ex.response_started {
            if status.code != Code::Ok {
                return answer_status(&status, tc, req, client, ex).await;
            }
            if let Err(d) = start_stream(opts.stream, req, client, ex).await {
                return (d, UpstreamOutcome::Ok, 200);
            }
        }
        if status.code != Code::Ok {
            let f = status_failure(&status, tc);
            writer.error(&f.body, &mut out);
        }
        writer.finish(&mut out);
        let d = end_stream(out, req, client, ex).await;
        return (d, outcome_of(&status), status.code.http_status());
    }
    if status.code != Code::Ok {
        return answer_status(&status, tc, req, client, ex).await;
    }
    let json = match unary {
        Some(m) => tc.response_json(binding, &m),
        None => Err(TranscodeError::BadUpstream(
            "a unary answer must hold one message, it holds none".into(),
        )),
    };
    match json {
        Ok(json) => {
            let d = answer(200, "application/json", "", &json, req, client, ex).await;
            (d, UpstreamOutcome::Ok, 200)
        }
        Err(e) => (
            answer_failure(Failure::transcode(&e), req, client, ex).await,
            UpstreamOutcome::Ok,
            502,
        ),
    }
}

/// Adds the upstream's response metadata to the answer's lines: every
/// field but the gRPC protocol's own (`content-type`, `grpc-*`), framing,
/// hop-by-hop fields, `x-request-id` and, when the route answers CORS
/// itself, `access-control-*`.
fn pass_metadata(fields: &HeaderMap, ex: &mut Exchange<'_>) {
    for (name, value) in fields {
        let n = name.as_str();
        let cors = n.starts_with("access-control-") && ex.cors_owned;
        if n.starts_with("grpc-")
            || matches!(n, "content-type" | "content-length" | "x-request-id")
            || is_hop_by_hop(n.as_bytes())
            || cors
        {
            continue;
        }
        let Ok(v) = value.to_str() else {
            continue;
        };
        ex.response_headers.push_str(n);
        ex.response_headers.push_str(": ");
        ex.response_headers.push_str(v);
        ex.response_headers.push_str("\r\n");
    }
}

/// The metrics outcome of a finished call: the upstream giving up at the
/// deadline counts as a timeout, server-side faults as 5xx.
fn outcome_of(s: &Status) -> UpstreamOutcome {
    if s.code == Code::DeadlineExceeded {
        UpstreamOutcome::Timeout
    } else if s.code.http_status() >= 500 {
        UpstreamOutcome::ServerError
    } else {
        UpstreamOutcome::Ok
    }
}

async fn finish_without_messages(
    s: Status,
    binding: &Binding,
    tc: &Transcoder,
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
) -> (Disposition, UpstreamOutcome, u16) {
    if s.code != Code::Ok {
        return answer_status(&s, tc, req, client, ex).await;
    }
    if binding.server_streaming() {
        let mut out = Vec::new();
        let mut w = StreamWriter::new(tc.json_options().stream);
        w.finish(&mut out);
        let ct = tc.json_options().stream.content_type();
        let d = answer(200, ct, "", &out, req, client, ex).await;
        return (d, UpstreamOutcome::Ok, 200);
    }
    let f = Failure::with_status(
        502,
        Code::Internal,
        "a unary answer must hold one message, it holds none",
    );
    (
        answer_failure(f, req, client, ex).await,
        UpstreamOutcome::Ok,
        502,
    )
}

/// Answers a call that ended with a non-OK status before anything was sent.
async fn answer_status(
    s: &Status,
    tc: &Transcoder,
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
) -> (Disposition, UpstreamOutcome, u16) {
    let f = status_failure(s, tc);
    (
        answer_failure(f, req, client, ex).await,
        outcome_of(s),
        s.code.http_status(),
    )
}

/// A failure while reading the answer: a JSON error if nothing was sent
/// yet, else the error as the stream's last element.
async fn mid_failure(
    f: Failure,
    outcome: UpstreamOutcome,
    writer: &mut StreamWriter,
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
) -> (Disposition, UpstreamOutcome, u16) {
    let status = f.status;
    if !ex.response_started {
        return (answer_failure(f, req, client, ex).await, outcome, status);
    }
    let mut out = Vec::new();
    writer.error(&f.body, &mut out);
    writer.finish(&mut out);
    (end_stream(out, req, client, ex).await, outcome, status)
}

/// Whether the connection may serve another request after this answer.
fn keep_alive(req: &RequestHead, ex: &Exchange<'_>) -> bool {
    ex.keep_alive && (ex.body_consumed || req.framing == Framing::None)
}

async fn answer_failure(
    mut f: Failure,
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
) -> Disposition {
    // The request id goes in the body too, as on the gateway's own errors.
    if f.body.last() == Some(&b'}') {
        f.body.pop();
        let mut id = String::from(",\"request_id\":");
        crate::error::json_string(&mut id, ex.request_id);
        f.body.extend_from_slice(id.as_bytes());
        f.body.push(b'}');
    }
    answer(
        f.status,
        "application/json",
        &f.extra,
        &f.body,
        req,
        client,
        ex,
    )
    .await
}

/// A whole answer held in memory.
async fn answer(
    status: u16,
    content_type: &str,
    extra: &str,
    body: &[u8],
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
) -> Disposition {
    let head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\n{extra}content-length: {}\r\nx-request-id: {}\r\n",
        reason_phrase(status),
        body.len(),
        ex.request_id
    );
    let keep = keep_alive(req, ex);
    crate::resilience::fallback::send_fixed(head, status, body, req, client, ex, keep).await
}

/// Writes the head of a streamed answer (chunked; to an HTTP/1.0 client,
/// delimited by the connection's close).
async fn start_stream(
    mode: StreamMode,
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
) -> Result<(), Disposition> {
    let chunked = req.version >= 1;
    if !chunked {
        ex.keep_alive = false;
    }
    let keep = keep_alive(req, ex);
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {}\r\n{}x-request-id: {}\r\n{}{}",
        mode.content_type(),
        if chunked {
            "transfer-encoding: chunked\r\n"
        } else {
            ""
        },
        ex.request_id,
        ex.response_headers,
        if keep {
            "connection: keep-alive\r\n\r\n"
        } else {
            "connection: close\r\n\r\n"
        }
    );
    ex.seen.status = 200;
    ex.response_started = true;
    ex.seen.bytes_out = head.len() as u64;
    let (r, _) = client
        .write(head.into_bytes(), ex.limits.send_timeout)
        .await;
    r.map_err(|_| Disposition::Close)
}

async fn send_chunk(
    data: Vec<u8>,
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
) -> Result<(), ()> {
    if data.is_empty() {
        return Ok(());
    }
    let bytes = if req.version >= 1 {
        let mut b = format!("{:x}\r\n", data.len()).into_bytes();
        b.extend_from_slice(&data);
        b.extend_from_slice(b"\r\n");
        b
    } else {
        data
    };
    ex.seen.bytes_out += bytes.len() as u64;
    let (r, _) = client.write(bytes, ex.limits.send_timeout).await;
    r.map_err(|_| ())
}

/// Writes the last of a streamed answer and its end.
async fn end_stream(
    last: Vec<u8>,
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
) -> Disposition {
    if send_chunk(last, req, client, ex).await.is_err() {
        return Disposition::Close;
    }
    if req.version == 0 {
        return Disposition::Close;
    }
    ex.seen.bytes_out += 5;
    let (r, _) = client
        .write(b"0\r\n\r\n".to_vec(), ex.limits.send_timeout)
        .await;
    if r.is_ok() && keep_alive(req, ex) {
        Disposition::KeepAlive
    } else {
        Disposition::Close
    }
}
