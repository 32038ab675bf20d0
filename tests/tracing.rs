//! W3C trace context and OTLP export through the real gateway: the
//! `traceparent` sent to upstreams and to each aggregation part, traces
//! started when none came in, sampling, the trace id in JSON errors, spans
//! received and decoded by a fake OTLP/HTTP collector on loopback, and a
//! collector that is down.

mod common;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use prost::Message as _;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const SECRET: &str = "tracing-test-hmac-secret";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

// ---------------------------------------------------------------------------
// A fake OTLP/HTTP collector
// ---------------------------------------------------------------------------

/// One export request as the collector received it.
#[derive(Clone, Debug)]
struct Export {
    path: String,
    content_type: String,
    request: ExportTraceServiceRequest,
}

/// Accepts OTLP/HTTP posts on loopback and decodes them.
struct Collector {
    port: u16,
    exports: Arc<Mutex<Vec<Export>>>,
    stop: Arc<AtomicBool>,
}

impl Collector {
    fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let exports = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (exports.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    if let Some(export) = receive(stream) {
                        e.lock().unwrap().push(export);
                    }
                }
            }
        });
        Collector {
            port,
            exports,
            stop,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn exports(&self) -> Vec<Export> {
        self.exports.lock().unwrap().clone()
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Span> {
        self.exports()
            .into_iter()
            .flat_map(|e| e.request.resource_spans)
            .flat_map(|rs| rs.scope_spans)
            .flat_map(|ss| ss.spans)
            .collect()
    }

    /// Waits until `n` spans of `trace` (hex) arrived, and returns them.
    #[track_caller]
    fn wait_trace(&self, trace: &str, n: usize) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans: Vec<Span> = self
                .spans()
                .into_iter()
                .filter(|s| hex(&s.trace_id) == trace)
                .collect();
            if spans.len() >= n {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} spans of trace {trace} arrived; all: {:?}",
                spans.len(),
                self.spans()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads one POST, answers 200 and decodes its protobuf body.
fn receive(mut stream: TcpStream) -> Option<Export> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let fields: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let len: usize = field("content-length").parse().ok()?;
    while buf.len() < head_end + 4 + len {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = &buf[head_end + 4..head_end + 4 + len];
    let request = ExportTraceServiceRequest::decode(body).expect("a protobuf export request");
    let _ = stream.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    );
    let mut words = request_line.split(' ');
    assert_eq!(words.next(), Some("POST"));
    Some(Export {
        path: words.next().unwrap_or_default().to_string(),
        content_type: field("content-type"),
        request,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A span's attribute, as text (strings as they are, integers in decimal).
fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|kv: &&KeyValue| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            any_value::Value::StringValue(s) => s.clone(),
            any_value::Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

// ---------------------------------------------------------------------------
// Gateways
// ---------------------------------------------------------------------------

/// A gateway with a public route to `app`, an authenticated route, a
/// composite route with three parts over two upstreams, and `tracing`.
fn gateway(app: &Backend, other: &Backend, tracing: &str, extra: &str) -> Gateway {
    Gateway::start(&format!(
        r#"Gateway(
    shards: Count(2),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    limits_http: {LIMITS},
    upstreams: {{ "app": Upstream(targets: ["{app}"]), "other": Upstream(targets: ["{other}"]) }},
    authenticators: {{ "hs": Jwt(algorithms: [HS256], key: Secret("{SECRET}")) }},
    routes: [
        Route(name: "public", match: Match(path_prefix: "/pub"), upstream: "app"),
        Route(name: "secure", match: Match(path_prefix: "/secure"), upstream: "app", auth: Required(["hs"])),
        Route(name: "combo", match: Match(path: "/combo/{{id}}"), aggregate: Aggregate(parts: [
            Part(name: "a", upstream: "app", path: "/a/{{id}}"),
            Part(name: "b", upstream: "other", path: "/b/{{id}}"),
            Part(name: "c", upstream: "app", path: "/c/{{id}}"),
        ])),
    ],
    {tracing}
    {extra}
)"#,
        app = app.addr(),
        other = other.addr(),
    ))
}

fn tracing_to(c: &Collector, more: &str) -> String {
    format!(
        "tracing: Some(Tracing(otlp_endpoint: Some({:?}), service_name: \"gw-test\", export_interval_ms: 50{more})),",
        c.endpoint()
    )
}

/// A backend answering JSON, recording what it received.
fn json_backend() -> Backend {
    Backend::start(|_| Response::ok("{\"ok\":true}").header("Content-Type", "application/json"))
}

/// (version, trace id, parent id, flags) of a valid `traceparent`.
#[track_caller]
fn split_traceparent(v: &str) -> (String, String, String, String) {
    let p: Vec<&str> = v.split('-').collect();
    assert_eq!(p.len(), 4, "{v}");
    assert!(
        p[1].len() == 32 && p[2].len() == 16 && p[3].len() == 2,
        "{v}"
    );
    assert!(
        v.bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{v}"
    );
    (p[0].into(), p[1].into(), p[2].into(), p[3].into())
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn traceparent_to_the_upstream_names_the_gateways_span_and_spans_are_exported() {
    let app = json_backend();
    let other = json_backend();
    let collector = Collector::start();
    let gw = gateway(&app, &other, &tracing_to(&collector, ""), "");
    let token = hs256_token(&json!({"sub": "user-9", "exp": unix_now() + 600}), SECRET);
    let r = get_with(
        gw.port,
        "/secure/x",
        &[
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            ("tracestate", "vendor=abc,other=1"),
            ("Authorization", &format!("Bearer {token}")),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let seen = app.last();
    let sent = seen.header("traceparent").expect("traceparent upstream");
    assert_eq!(seen.headers_named("traceparent").len(), 1);
    let (version, trace, parent, flags) = split_traceparent(sent);
    assert_eq!((version.as_str(), flags.as_str()), ("00", "01"));
    assert_eq!(trace, TRACE, "the trace id is kept");
    assert_ne!(
        parent, PARENT,
        "the parent is the gateway's span, not the caller's"
    );
    assert_eq!(seen.header("tracestate"), Some("vendor=abc,other=1"));

    let spans = collector.wait_trace(TRACE, 2);
    assert_eq!(spans.len(), 2, "{spans:?}");
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("a SERVER span");
    let client = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .expect("a CLIENT span");
    // The links: caller → the gateway's request span → its upstream call,
    // whose id is the parent the upstream received.
    assert_eq!(hex(&server.parent_span_id), PARENT);
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(hex(&client.span_id), parent);
    assert_eq!(server.trace_state, "vendor=abc,other=1");
    // Attributes.
    assert_eq!(attr(server, "shardgate.route").as_deref(), Some("secure"));
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(server, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr(server, "enduser.id").as_deref(), Some("user-9"));
    assert_eq!(attr(client, "shardgate.upstream").as_deref(), Some("app"));
    assert_eq!(attr(client, "server.address").as_deref(), Some("127.0.0.1"));
    let port = app.addr().rsplit(':').next().unwrap().to_string();
    assert_eq!(attr(client, "server.port"), Some(port));
    assert_eq!(
        attr(client, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(client, "enduser.id").as_deref(), Some("user-9"));
    assert!(server.start_time_unix_nano <= client.start_time_unix_nano);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);
    assert!(server.status.is_none() && client.status.is_none());
    // The resource and the request.
    let export = collector
        .exports()
        .into_iter()
        .find(|e| {
            e.request.resource_spans.iter().any(|rs| {
                rs.scope_spans
                    .iter()
                    .any(|ss| ss.spans.iter().any(|s| hex(&s.trace_id) == TRACE))
            })
        })
        .unwrap();
    assert_eq!(export.path, "/v1/traces");
    assert_eq!(export.content_type, "application/x-protobuf");
    let resource = export.request.resource_spans[0].resource.as_ref().unwrap();
    let service = resource
        .attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| kv.value.as_ref()?.value.clone());
    assert_eq!(
        service,
        Some(any_value::Value::StringValue("gw-test".into()))
    );
}

#[test]
fn every_aggregation_part_gets_its_own_span_as_parent() {
    let app = json_backend();
    let other = json_backend();
    let collector = Collector::start();
    let gw = gateway(&app, &other, &tracing_to(&collector, ""), "");
    let r = get_with(
        gw.port,
        "/combo/7",
        &[
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            ("tracestate", "vendor=abc"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mut sent: Vec<(String, String)> = app
        .requests()
        .into_iter()
        .chain(other.requests())
        .map(|req| {
            assert_eq!(req.header("tracestate"), Some("vendor=abc"));
            let (_, trace, parent, flags) = split_traceparent(req.header("traceparent").unwrap());
            assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
            (req.target.clone(), parent)
        })
        .collect();
    sent.sort();
    assert_eq!(sent.len(), 3, "{sent:?}");
    let parents: Vec<&String> = sent.iter().map(|(_, p)| p).collect();
    assert!(
        parents[0] != parents[1] && parents[1] != parents[2] && parents[0] != parents[2],
        "each part has its own parent id: {sent:?}"
    );
    assert!(parents.iter().all(|p| *p != PARENT));

    let spans = collector.wait_trace(TRACE, 4);
    assert_eq!(spans.len(), 4, "{spans:?}");
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(hex(&server.parent_span_id), PARENT);
    assert_eq!(attr(server, "shardgate.route").as_deref(), Some("combo"));
    for (target, parent) in &sent {
        let part = spans
            .iter()
            .find(|s| hex(&s.span_id) == *parent)
            .unwrap_or_else(|| panic!("no span {parent} for the call to {target}: {spans:?}"));
        assert_eq!(part.kind, SpanKind::Client as i32);
        assert_eq!(part.parent_span_id, server.span_id);
        let name = attr(part, "shardgate.part").unwrap();
        // Part a calls /a/7 on app, b /b/7 on other, c /c/7 on app.
        assert_eq!(*target, format!("/{name}/7"));
        let upstream = if name == "b" { "other" } else { "app" };
        assert_eq!(attr(part, "shardgate.upstream").as_deref(), Some(upstream));
        assert_eq!(
            attr(part, "http.response.status_code").as_deref(),
            Some("200")
        );
    }
}

#[test]
fn a_trace_is_started_when_none_or_an_invalid_one_comes_in() {
    let app = json_backend();
    let other = json_backend();
    let collector = Collector::start();
    let gw = gateway(&app, &other, &tracing_to(&collector, ""), "");
    assert_eq!(get(gw.port, "/pub/1").status, 200);
    let first = app.last();
    let (_, t1, p1, flags) = split_traceparent(first.header("traceparent").unwrap());
    assert_eq!(flags, "01", "sample_ratio 1.0 samples every new trace");
    assert_ne!(t1, "0".repeat(32));
    assert_ne!(p1, "0".repeat(16));
    assert_eq!(get(gw.port, "/pub/2").status, 200);
    let (_, t2, _, _) = split_traceparent(app.last().header("traceparent").unwrap());
    assert_ne!(t1, t2, "each request starts its own trace");
    // An invalid traceparent (upper-case hex) is replaced, and its
    // tracestate dropped with it.
    let bad = format!("00-{}-{PARENT}-01", TRACE.to_uppercase());
    let r = get_with(
        gw.port,
        "/pub/3",
        &[("traceparent", &bad), ("tracestate", "vendor=abc")],
    );
    assert_eq!(r.status, 200);
    let third = app.last();
    let (_, t3, _, _) = split_traceparent(third.header("traceparent").unwrap());
    assert_ne!(t3, TRACE.to_string());
    assert_ne!(t3, t1);
    assert!(!third.has("tracestate"));
    // The new trace is the one exported: a root SERVER span and its call.
    let spans = collector.wait_trace(&t1, 2);
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    assert!(
        server.parent_span_id.is_empty(),
        "a new trace starts at the gateway"
    );
    let client = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .unwrap();
    assert_eq!(hex(&client.span_id), p1);
}

#[test]
fn the_incoming_sampled_flag_is_followed() {
    let app = json_backend();
    let other = json_backend();
    let collector = Collector::start();
    let gw = gateway(
        &app,
        &other,
        &tracing_to(&collector, ", sample_ratio: 0.0"),
        "",
    );
    // New traces are never sampled at ratio 0.0, and an incoming unsampled
    // one stays unsampled: propagated with flags 00, not exported.
    for i in 0..5 {
        assert_eq!(get(gw.port, &format!("/pub/{i}")).status, 200);
        let (_, _, _, flags) = split_traceparent(app.last().header("traceparent").unwrap());
        assert_eq!(flags, "00");
    }
    let unsampled = "11111111111111111111111111111111";
    let r = get_with(
        gw.port,
        "/pub/u",
        &[("traceparent", &format!("00-{unsampled}-{PARENT}-00"))],
    );
    assert_eq!(r.status, 200);
    let (_, t, _, flags) = split_traceparent(app.last().header("traceparent").unwrap());
    assert_eq!((t.as_str(), flags.as_str()), (unsampled, "00"));
    // An incoming sampled trace is sampled and exported.
    let r = get_with(
        gw.port,
        "/pub/s",
        &[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))],
    );
    assert_eq!(r.status, 200);
    let (_, _, _, flags) = split_traceparent(app.last().header("traceparent").unwrap());
    assert_eq!(flags, "01");
    collector.wait_trace(TRACE, 2);
    // Give a straggler a chance: nothing but the sampled trace is exported.
    thread::sleep(Duration::from_millis(200));
    let others: Vec<String> = collector
        .spans()
        .iter()
        .map(|s| hex(&s.trace_id))
        .filter(|t| t != TRACE)
        .collect();
    assert!(
        others.is_empty(),
        "unsampled traces were exported: {others:?}"
    );
}

#[test]
fn the_trace_id_is_in_json_error_bodies() {
    let app = json_backend();
    let other = json_backend();
    let collector = Collector::start();
    let gw = gateway(&app, &other, &tracing_to(&collector, ""), "");
    let r = get_with(
        gw.port,
        "/nowhere",
        &[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))],
    );
    assert_eq!(r.status, 404);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["trace_id"], TRACE, "{body}");
    assert!(body["request_id"].is_string());
    // A trace started by the gateway is named too, and it is the exported one.
    let r = get(gw.port, "/nowhere");
    assert_eq!(r.status, 404);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    let started = body["trace_id"].as_str().unwrap().to_string();
    assert_eq!(started.len(), 32);
    let spans = collector.wait_trace(&started, 1);
    assert_eq!(
        attr(&spans[0], "http.response.status_code").as_deref(),
        Some("404")
    );
    assert!(attr(&spans[0], "shardgate.route").is_none());
    // 401 on the authenticated route, too.
    let r = get_with(
        gw.port,
        "/secure/x",
        &[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))],
    );
    assert_eq!(r.status, 401);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["trace_id"], TRACE);
}

#[test]
fn without_tracing_the_traceparent_passes_untouched() {
    let app = json_backend();
    let other = json_backend();
    let gw = gateway(&app, &other, "", "");
    let tp = format!("00-{}-{PARENT}-01", TRACE.to_uppercase());
    let r = get_with(
        gw.port,
        "/pub/x",
        &[("traceparent", &tp), ("tracestate", "vendor=abc")],
    );
    assert_eq!(r.status, 200);
    let seen = app.last();
    assert_eq!(seen.header("traceparent"), Some(tp.as_str()));
    assert_eq!(seen.header("tracestate"), Some("vendor=abc"));
    assert_eq!(get(gw.port, "/pub/y").status, 200);
    assert!(!app.last().has("traceparent"), "no trace is started");
    let r = get_with(gw.port, "/nowhere", &[("traceparent", &tp)]);
    assert_eq!(r.status, 404);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(body.get("trace_id").is_none(), "{body}");
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn a_collector_that_is_down_costs_requests_nothing_and_drops_are_counted() {
    let app = json_backend();
    let other = json_backend();
    let down = closed_port();
    let tracing = format!(
        "tracing: Some(Tracing(otlp_endpoint: Some(\"http://127.0.0.1:{down}\"), queue_spans: 4, batch_spans: 2, export_interval_ms: 20)),"
    );
    let gw = gateway(
        &app,
        &other,
        &tracing,
        "admin: Some(Admin(bind: \"127.0.0.1:$PORT2\")),",
    );
    let mut c = Client::connect(gw.port);
    for i in 0..200 {
        let r = c.get(&format!("/pub/{i}"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(app.count(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = get(gw.port2, "/metrics");
        assert_eq!(m.status, 200);
        let dropped = metric(&m.text(), "shardgate_trace_spans_dropped_total")
            .expect("the drop counter is exported");
        if dropped > 0 {
            // At most the 400 spans made (a SERVER and a CLIENT per request).
            assert!(dropped <= 400, "{dropped}");
            break;
        }
        assert!(Instant::now() < deadline, "no span was counted as dropped");
        // More traffic while the exporter pauses after its failed posts.
        assert_eq!(c.get("/pub/more").status, 200);
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        gw.wait_stderr("span export to", Duration::from_secs(5)),
        "{}",
        gw.stderr()
    );
    assert!(gw.stderr().contains("failed"), "{}", gw.stderr());
}
