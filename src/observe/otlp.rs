//! Span export with OTLP over HTTP (protobuf), from one thread.
//!
//! Shards hand finished spans of sampled traces to the exporter through
//! their own bounded queues (`try_send`: a full queue drops the span,
//! counted in `shardgate_trace_spans_dropped_total`). The exporter collects
//! up to `batch_spans` of them and posts them as one
//! `ExportTraceServiceRequest` to `<otlp_endpoint>/v1/traces` when the batch
//! is full or its oldest span has waited `export_interval_ms`. A post that
//! fails (collector down, refused, slow past the timeouts) drops its batch,
//! and the exporter pauses before the next try, with the pause doubling up
//! to [`MAX_PAUSE`]; meanwhile the shards' queues fill and further spans are
//! dropped and counted there. Requests never wait for any of it.
//!
//! The wire types are `opentelemetry-proto`'s, encoded with prost.

use super::trace::{Attr, SpanRecord};
use crate::config::Tracing;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message as _;
use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Longest wait for the collector's connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for one read or write on the collector's connection.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause after failed posts.
pub const MAX_PAUSE: Duration = Duration::from_secs(30);
/// How often the exporter looks at the queues when there is nothing to send.
const TICK: Duration = Duration::from_millis(20);
/// Largest collector answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportConfig {
    /// `host:port` of the collector.
    pub addr: String,
    /// `Host` field.
    pub host: String,
    /// Request path (`.../v1/traces`).
    pub path: String,
    /// `service.name` resource attribute.
    pub service_name: String,
    /// Spans per post, at most.
    pub batch: usize,
    /// Longest a span waits for its batch.
    pub interval: Duration,
}

impl ExportConfig {
    /// The export settings of `t`; `None` without an endpoint.
    pub fn of(t: &Tracing) -> Option<ExportConfig> {
        let endpoint = t.otlp_endpoint.as_deref()?;
        let (addr, host, path) = crate::auth::jwks::split_http_url(endpoint).ok()?;
        let base = path.trim_end_matches('/');
        Some(ExportConfig {
            addr,
            host,
            path: format!("{base}/v1/traces"),
            service_name: t.service_name.clone(),
            batch: t.batch_spans.max(1),
            interval: Duration::from_millis(t.export_interval_ms.max(1)),
        })
    }
}

/// Spans posted to the collector and accepted, since the start.
static EXPORTED: AtomicU64 = AtomicU64::new(0);
/// Spans dropped by the exporter because their post failed, since the start.
static FAILED: AtomicU64 = AtomicU64::new(0);

/// (spans exported, spans dropped by failed posts) since the start. Only the
/// exporter thread writes these.
pub fn exporter_counts() -> (u64, u64) {
    (
        EXPORTED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed),
    )
}

/// What the exporter thread is told.
enum Control {
    /// A shard's queue of spans.
    Attach(Receiver<SpanRecord>),
    /// Export settings (`None`: export is off; queued spans are dropped).
    Config(Option<ExportConfig>),
    /// Send everything queued (one try), then answer.
    Finish(Sender<()>),
}

static CONTROL: OnceLock<Sender<Control>> = OnceLock::new();

fn control() -> &'static Sender<Control> {
    CONTROL.get_or_init(|| {
        super::start_worker("shardgate-otlp", "the span exporter", |rx| {
            Exporter::default().run(&rx)
        })
    })
}

/// Sets the export settings (starting the exporter when export is on).
pub fn configure(t: Option<&Tracing>) {
    match t.and_then(ExportConfig::of) {
        Some(c) => {
            let _ = control().send(Control::Config(Some(c)));
        }
        None => {
            if let Some(c) = CONTROL.get() {
                let _ = c.send(Control::Config(None));
            }
        }
    }
}

/// Waits (at most `wait`) until the exporter has tried to send what is
/// queued, and logs what it exported and dropped over the process's life.
pub fn finish(wait: Duration) {
    if let Some(c) = CONTROL.get() {
        let (tx, rx) = bounded(1);
        if c.send(Control::Finish(tx)).is_ok() {
            let _ = rx.recv_timeout(wait);
        }
        let (exported, failed) = exporter_counts();
        eprintln!(
            "shardgate: span export: {exported} span(s) exported, {failed} dropped by failed posts"
        );
    }
}

thread_local! {
    /// This shard thread's queue to the exporter, made on its first span.
    static QUEUE: RefCell<Option<Sender<SpanRecord>>> = const { RefCell::new(None) };
}

/// Hands spans to the exporter; returns how many were dropped (queue full).
pub fn submit(t: &Tracing, spans: Vec<SpanRecord>) -> u64 {
    QUEUE.with(|q| {
        let mut q = q.borrow_mut();
        if q.is_none() {
            let (tx, rx) = bounded(t.queue_spans.max(1));
            if control().send(Control::Attach(rx)).is_ok() {
                *q = Some(tx);
            }
        }
        let mut dropped = 0;
        for s in spans {
            if q.as_ref().is_none_or(|tx| tx.try_send(s).is_err()) {
                dropped += 1;
            }
        }
        dropped
    })
}

/// The exporter thread's state.
#[derive(Default)]
struct Exporter {
    queues: Vec<Receiver<SpanRecord>>,
    cfg: Option<ExportConfig>,
    pending: Vec<SpanRecord>,
    /// When the oldest pending span was taken.
    oldest: Option<Instant>,
    /// No post before this (after a failure).
    paused_until: Option<Instant>,
    /// The next pause after a failure.
    pause: Duration,
    /// Spans dropped since posts started failing (0: they work).
    failing: u64,
}

impl Exporter {
    fn run(mut self, control: &Receiver<Control>) {
        loop {
            loop {
                match control.try_recv() {
                    Ok(c) => self.handle(c),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            let paused = self.paused_until.is_some_and(|t| Instant::now() < t);
            if !paused {
                self.take();
                if let Some(cfg) = &self.cfg {
                    let full = self.pending.len() >= cfg.batch;
                    let due = self.oldest.is_some_and(|t| t.elapsed() >= cfg.interval);
                    if full || (due && !self.pending.is_empty()) {
                        self.send();
                        continue;
                    }
                }
            }
            match control.recv_timeout(TICK) {
                Ok(c) => self.handle(c),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn handle(&mut self, c: Control) {
        match c {
            Control::Attach(rx) => self.queues.push(rx),
            Control::Config(cfg) => {
                if cfg.is_none() {
                    self.pending.clear();
                    self.oldest = None;
                }
                if cfg != self.cfg {
                    self.paused_until = None;
                }
                self.cfg = cfg;
            }
            Control::Finish(done) => {
                // One try for what is queued, whatever the pause.
                if self.cfg.is_some() {
                    loop {
                        self.take();
                        if self.pending.is_empty() {
                            break;
                        }
                        self.send();
                        if self.failing > 0 {
                            break;
                        }
                    }
                }
                let _ = done.send(());
            }
        }
    }

    /// Moves spans from the shards' queues into the pending batch until it
    /// is full (without export settings, they are dropped).
    fn take(&mut self) {
        let room = self.cfg.as_ref().map_or(usize::MAX, |c| c.batch);
        let mut i = 0;
        while let Some(q) = self.queues.get(i) {
            let mut gone = false;
            while self.pending.len() < room {
                match q.try_recv() {
                    Ok(s) => {
                        if self.cfg.is_some() {
                            if self.pending.is_empty() {
                                self.oldest = Some(Instant::now());
                            }
                            self.pending.push(s);
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        gone = true;
                        break;
                    }
                }
            }
            if gone {
                self.queues.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Posts the pending batch; on failure it is dropped and posts pause.
    fn send(&mut self) {
        let spans = std::mem::take(&mut self.pending);
        self.oldest = None;
        let Some(cfg) = &self.cfg else {
            return;
        };
        let n = spans.len() as u64;
        let body = encode(&cfg.service_name, spans);
        match post(cfg, &body) {
            Ok(()) => {
                EXPORTED.fetch_add(n, Ordering::Relaxed);
                if self.failing > 0 {
                    eprintln!(
                        "shardgate: span export to http://{}{} works again; {} span(s) of failed posts were dropped meanwhile",
                        cfg.addr, cfg.path, self.failing
                    );
                }
                self.failing = 0;
                self.paused_until = None;
                self.pause = Duration::ZERO;
            }
            Err(why) => {
                FAILED.fetch_add(n, Ordering::Relaxed);
                self.pause = if self.pause.is_zero() {
                    cfg.interval.clamp(Duration::from_millis(100), MAX_PAUSE)
                } else {
                    (self.pause * 2).min(MAX_PAUSE)
                };
                if self.failing == 0 {
                    eprintln!(
                        "shardgate: span export to http://{}{} failed: {why}; spans are dropped (and counted) until it works, retrying after pauses of up to {} s",
                        cfg.addr,
                        cfg.path,
                        MAX_PAUSE.as_secs()
                    );
                }
                self.failing += n;
                self.paused_until = Some(Instant::now() + self.pause);
            }
        }
    }
}

/// The OTLP request body for `spans` (protobuf).
pub fn encode(service_name: &str, spans: Vec<SpanRecord>) -> Vec<u8> {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![key_value("service.name", Attr::from(service_name))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "shardgate".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: spans.into_iter().map(to_proto).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    request.encode_to_vec()
}

fn key_value(key: &str, v: Attr) -> KeyValue {
    let value = match v {
        Attr::Str(s) => any_value::Value::StringValue(s),
        Attr::Int(i) => any_value::Value::IntValue(i),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// Trace flags "sampled", and "the parent's remoteness is known".
const FLAGS: u32 = 0x01 | 0x100;
/// "The parent is remote".
const REMOTE_PARENT: u32 = 0x200;

fn to_proto(s: SpanRecord) -> Span {
    let kind = if s.server {
        span::SpanKind::Server
    } else {
        span::SpanKind::Client
    };
    Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        trace_state: s.trace_state,
        parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
        flags: FLAGS | if s.remote_parent { REMOTE_PARENT } else { 0 },
        name: s.name,
        kind: kind as i32,
        start_time_unix_nano: s.start_ns,
        end_time_unix_nano: s.end_ns,
        attributes: s
            .attributes
            .into_iter()
            .map(|(k, v)| key_value(k, v))
            .collect(),
        status: s.error.map(|message| Status {
            message,
            code: status::StatusCode::Error as i32,
        }),
        ..Default::default()
    }
}

/// POSTs `body` to the collector with a plain HTTP/1.1 exchange; Ok on a 2xx.
fn post(cfg: &ExportConfig, body: &[u8]) -> Result<(), String> {
    let addrs: Vec<SocketAddr> = cfg
        .addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", cfg.addr))?
        .collect();
    let mut last = format!("{} resolves to no address", cfg.addr);
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("connect to {a}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last)?;
    let io = |e: std::io::Error| e.to_string();
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    let _ = stream.set_nodelay(true);
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        cfg.path,
        cfg.host,
        body.len()
    );
    stream.write_all(head.as_bytes()).map_err(io)?;
    stream.write_all(body).map_err(io)?;
    let answer = read_answer(&mut stream).map_err(io)?;
    let status = status_of(&answer).ok_or("no HTTP response from the collector")?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("the collector answered {status}"))
    }
}

/// Reads the collector's answer: its head and (with `content-length`) its
/// body, or up to the end of the stream; at most [`MAX_ANSWER`] bytes.
fn read_answer(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut answer = Vec::with_capacity(512);
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let len = content_length(answer.get(..end).unwrap_or_default());
            if len.is_some_and(|n| answer.len() >= end + 4 + n) {
                return Ok(answer);
            }
        }
        if answer.len() >= MAX_ANSWER {
            return Ok(answer);
        }
        match stream.read(&mut buf)? {
            0 => return Ok(answer),
            n => answer.extend_from_slice(buf.get(..n).unwrap_or_default()),
        }
    }
}

fn content_length(head: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").skip(1).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

/// The status code of an HTTP/1.x response.
fn status_of(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|&b| b == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.split_whitespace();
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

    #[test]
    fn endpoint_paths() {
        let t = |e: &str| Tracing {
            otlp_endpoint: Some(e.into()),
            sample_ratio: 1.0,
            service_name: "s".into(),
            queue_spans: 1,
            batch_spans: 1,
            export_interval_ms: 1,
        };
        let c = ExportConfig::of(&t("http://127.0.0.1:4318")).unwrap();
        assert_eq!(
            (c.addr.as_str(), c.path.as_str()),
            ("127.0.0.1:4318", "/v1/traces")
        );
        let c = ExportConfig::of(&t("http://collector:4318/otlp/")).unwrap();
        assert_eq!(
            (c.addr.as_str(), c.path.as_str()),
            ("collector:4318", "/otlp/v1/traces")
        );
        assert_eq!(c.host, "collector:4318");
    }

    #[test]
    fn encodes_spans_that_decode_back() {
        let span = SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: Some([3; 8]),
            remote_parent: true,
            trace_state: "k=v".into(),
            name: "GET r".into(),
            server: true,
            start_ns: 10,
            end_ns: 20,
            attributes: vec![("http.response.status_code", Attr::Int(200))],
            error: None,
        };
        let bytes = encode("svc", vec![span]);
        let back = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let rs = &back.resource_spans[0];
        let svc = &rs.resource.as_ref().unwrap().attributes[0];
        assert_eq!(svc.key, "service.name");
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(s.trace_id, vec![1; 16]);
        assert_eq!(s.parent_span_id, vec![3; 8]);
        assert_eq!(s.kind, SpanKind::Server as i32);
        assert_eq!(s.flags, 0x301);
        assert_eq!(s.trace_state, "k=v");
        assert!(s.status.is_none());
    }

    #[test]
    fn reads_status_and_length() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_of(b"HTTP/1.0 503 x\r\n"), Some(503));
        assert_eq!(status_of(b"garbage"), None);
        assert_eq!(
            content_length(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nx: y"),
            Some(12)
        );
    }
}
