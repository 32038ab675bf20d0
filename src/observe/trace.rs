//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>) for one request.
//!
//! With `tracing` configured, every request gets a [`Trace`]: an incoming
//! valid `traceparent` is continued (its trace id kept, its sampled flag
//! followed, its `tracestate` passed on); an absent or invalid one starts a
//! new trace, sampled at the configured ratio. The gateway's span for the
//! request (kind SERVER) gets its own id, and every call the request makes
//! upstream — the proxied call, or each part of a composite — is a child span
//! (kind CLIENT) whose id is the parent sent in that call's `traceparent`.
//!
//! Child span ids are derived from the request span's id and the call's
//! number (0: the proxied call, 1 + i: part i), so the request line and the
//! span records agree on them without storing them.

use crate::compiled::Compiled;
use crate::config::Tracing;
use crate::http::RequestHead;
use crate::proxy::{Exchange, UpstreamCall};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

/// A valid incoming `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id (never all zero).
    pub trace_id: [u8; 16],
    /// The caller's span id (never all zero).
    pub parent_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

/// Parses a `traceparent` value: `VERSION-TRACEID-PARENTID-FLAGS`, all in
/// lower-case hex. Version `ff` is invalid; version `00` is exactly 55
/// characters; a later version may carry more after a `-`.
pub fn parse_traceparent(v: &[u8]) -> Option<TraceParent> {
    if v.len() < 55 {
        return None;
    }
    let version = hex_to::<1>(v.get(0..2)?)?;
    if version == [0xff] || (version == [0] && v.len() != 55) {
        return None;
    }
    if v.len() > 55 && v.get(55) != Some(&b'-') {
        return None;
    }
    if [2, 35, 52].iter().any(|&i| v.get(i) != Some(&b'-')) {
        return None;
    }
    let trace_id = hex_to::<16>(v.get(3..35)?)?;
    let parent_id = hex_to::<8>(v.get(36..52)?)?;
    let [flags] = hex_to::<1>(v.get(53..55)?)?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags,
    })
}

/// `N` bytes from `2 * N` lower-case hex digits.
fn hex_to<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let [hi, lo] = pair else { return None };
        *o = (digit(*hi)? << 4) | digit(*lo)?;
    }
    Some(out)
}

/// The trace id of the request's `traceparent`, if it sent one valid one.
pub fn incoming_trace_id(head: &RequestHead) -> Option<[u8; 16]> {
    if head.is_repeated("traceparent") {
        return None;
    }
    head.header("traceparent")
        .and_then(parse_traceparent)
        .map(|p| p.trace_id)
}

/// One request's trace context, and the calls it recorded for export.
#[derive(Debug)]
pub struct Trace {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// The caller's span (an incoming valid `traceparent`).
    parent: Option<[u8; 8]>,
    sampled: bool,
    /// Spans are kept for export: sampled, and a collector is configured.
    recording: bool,
    calls: RefCell<Vec<Call>>,
}

/// A call made upstream for the request, as recorded.
#[derive(Debug)]
struct Call {
    /// 0: the proxied call; 1 + i: part i of the composite.
    n: u64,
    upstream: usize,
    target: Option<SocketAddr>,
    status: u16,
    end: SystemTime,
    took: Duration,
    outcome: &'static str,
    error: Option<String>,
}

/// The trace context of a request, when `tracing` is configured.
pub fn start(tracing: Option<&Tracing>, head: &RequestHead) -> Option<Trace> {
    let t = tracing?;
    let incoming = if head.is_repeated("traceparent") {
        None
    } else {
        head.header("traceparent").and_then(parse_traceparent)
    };
    let (trace_id, parent, sampled) = match incoming {
        Some(p) => (p.trace_id, Some(p.parent_id), p.flags & 1 == 1),
        None => (new_trace_id(), None, sample(t.sample_ratio)),
    };
    Some(Trace {
        trace_id,
        span_id: new_span_id(),
        parent,
        sampled,
        recording: sampled && t.otlp_endpoint.is_some(),
        calls: RefCell::new(Vec::new()),
    })
}

/// True with probability `ratio`.
fn sample(ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    // 53 random bits as a number in [0, 1).
    let x = (super::random_u64() >> 11) as f64 / (1u64 << 53) as f64;
    x < ratio
}

fn new_trace_id() -> [u8; 16] {
    loop {
        let hi = super::random_u64();
        let lo = super::random_u64();
        if hi | lo != 0 {
            return ((u128::from(hi) << 64) | u128::from(lo)).to_be_bytes();
        }
    }
}

fn new_span_id() -> [u8; 8] {
    loop {
        let v = super::random_u64();
        if v != 0 {
            return v.to_be_bytes();
        }
    }
}

impl Trace {
    /// The trace id, 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        super::push_hex(&mut s, &self.trace_id);
        s
    }

    /// The trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The gateway's span id for the request.
    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    /// The caller's span id, when the trace came in.
    pub fn parent_id(&self) -> Option<[u8; 8]> {
        self.parent
    }

    /// The trace is sampled.
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// Spans of this request are kept for export.
    pub fn recording(&self) -> bool {
        self.recording
    }

    /// The id of call `n`'s span (0: the proxied call, 1 + i: part i).
    pub fn child_id(&self, n: u64) -> [u8; 8] {
        let base = u64::from_be_bytes(self.span_id);
        let id = super::mix(base ^ n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        (if id == 0 { 1 } else { id }).to_be_bytes()
    }

    /// The `traceparent` value sent with call `n`.
    pub fn traceparent(&self, n: u64) -> String {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        super::push_hex(&mut s, &self.trace_id);
        s.push('-');
        super::push_hex(&mut s, &self.child_id(n));
        s.push_str(if self.sampled { "-01" } else { "-00" });
        s
    }

    /// The client's field `name` is not forwarded as it came: `traceparent`
    /// is replaced, and `tracestate` is dropped when the trace was restarted
    /// (it belonged to a `traceparent` that was not valid).
    pub fn replaces(&self, name: &[u8]) -> bool {
        name.eq_ignore_ascii_case(b"traceparent")
            || (self.parent.is_none() && name.eq_ignore_ascii_case(b"tracestate"))
    }

    /// Appends the trace fields of a composite part's request (call `n`):
    /// its `traceparent`, and the client's `tracestate` when the trace came in.
    pub fn push_part_fields(&self, n: u64, req: &RequestHead, out: &mut String) {
        out.push_str("traceparent: ");
        out.push_str(&self.traceparent(n));
        out.push_str("\r\n");
        if let Some(state) = self.incoming_state(req) {
            out.push_str("tracestate: ");
            out.push_str(state);
            out.push_str("\r\n");
        }
    }

    /// The client's `tracestate` (first field), when the trace came in.
    fn incoming_state<'r>(&self, req: &'r RequestHead) -> Option<&'r str> {
        self.parent?;
        req.header("tracestate")
            .and_then(|v| std::str::from_utf8(v).ok())
            .filter(|v| !v.is_empty())
    }

    /// Records the proxied call (when spans are kept).
    pub fn upstream_call(&self, call: &UpstreamCall, status: u16, error: Option<String>) {
        if !self.recording {
            return;
        }
        self.calls.borrow_mut().push(Call {
            n: 0,
            upstream: call.upstream,
            target: Some(call.target),
            status,
            end: SystemTime::now(),
            took: call.took,
            outcome: call.outcome.label(),
            error,
        });
    }

    /// Records part `part`'s call (when spans are kept); `error` is the
    /// failure's reason and whether it was a timeout.
    pub fn part_call(
        &self,
        part: usize,
        upstream: usize,
        target: Option<SocketAddr>,
        status: u16,
        took: Duration,
        error: Option<(&str, bool)>,
    ) {
        if !self.recording {
            return;
        }
        let outcome = match error {
            None => "ok",
            Some((_, true)) => "timeout",
            Some(_) => "failed",
        };
        self.calls.borrow_mut().push(Call {
            n: part as u64 + 1,
            upstream,
            target,
            status,
            end: SystemTime::now(),
            took,
            outcome,
            error: error.map(|(why, _)| why.to_string()),
        });
    }

    /// The request's span and its calls' spans, ready to export; `end` is
    /// when the request finished and `took` how long it ran.
    pub fn spans(
        &self,
        compiled: &Compiled,
        head: &RequestHead,
        ex: &Exchange<'_>,
        end: SystemTime,
        took: Duration,
    ) -> Vec<SpanRecord> {
        let trace_state = self
            .incoming_state(head)
            .map(str::to_string)
            .unwrap_or_default();
        let plan = ex.seen.route.and_then(|r| compiled.routes.get(r));
        let route = plan.map(|r| r.name.as_str());
        let method = head.method();
        let end_ns = super::unix_nanos(end);
        let mut attributes = vec![
            ("http.request.method", Attr::from(method)),
            ("url.path", Attr::from(head.path())),
            ("client.address", Attr::Str(ex.client_ip.to_string())),
            ("shardgate.request_id", Attr::from(ex.request_id)),
        ];
        if ex.seen.status != 0 {
            attributes.push((
                "http.response.status_code",
                Attr::Int(i64::from(ex.seen.status)),
            ));
        }
        let common = |attributes: &mut Vec<(&'static str, Attr)>| {
            if let Some(r) = route {
                attributes.push(("shardgate.route", Attr::from(r)));
            }
            if let Some(s) = &ex.seen.subject {
                attributes.push(("enduser.id", Attr::from(s.as_str())));
            }
        };
        common(&mut attributes);
        if let Some(d) = ex.seen.rate_limit {
            attributes.push(("shardgate.rate_limit", Attr::from(d.label())));
        }
        let server_error = ex.seen.status >= 500 || ex.seen.status == 0;
        let mut out = Vec::with_capacity(1 + self.calls.borrow().len());
        out.push(SpanRecord {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent: self.parent,
            remote_parent: self.parent.is_some(),
            trace_state: trace_state.clone(),
            name: match route {
                Some(r) => format!("{method} {r}"),
                None => method.to_string(),
            },
            server: true,
            start_ns: end_ns.saturating_sub(nanos(took)),
            end_ns,
            attributes,
            error: server_error.then(|| format!("status {}", ex.seen.status)),
        });
        let parts = plan.and_then(|r| r.aggregate.as_ref());
        for call in self.calls.borrow().iter() {
            let upstream = compiled
                .upstreams
                .get(call.upstream)
                .map_or("", |u| u.name.as_str());
            let part = call
                .n
                .checked_sub(1)
                .and_then(|i| parts.and_then(|p| p.parts.get(i as usize)));
            let call_method = part.map_or(method, |p| p.method.as_str());
            let mut attributes = vec![
                ("http.request.method", Attr::from(call_method)),
                ("shardgate.upstream", Attr::from(upstream)),
                ("shardgate.outcome", Attr::from(call.outcome)),
            ];
            if let Some(p) = part {
                attributes.push(("shardgate.part", Attr::from(p.name.as_str())));
            }
            if let Some(t) = call.target {
                attributes.push(("server.address", Attr::Str(t.ip().to_string())));
                attributes.push(("server.port", Attr::Int(i64::from(t.port()))));
            }
            if call.status != 0 {
                attributes.push((
                    "http.response.status_code",
                    Attr::Int(i64::from(call.status)),
                ));
            }
            common(&mut attributes);
            let end_ns = super::unix_nanos(call.end);
            out.push(SpanRecord {
                trace_id: self.trace_id,
                span_id: self.child_id(call.n),
                parent: Some(self.span_id),
                remote_parent: false,
                trace_state: trace_state.clone(),
                name: match part {
                    Some(p) => format!("{} {}", p.method, p.name),
                    None => format!("{method} {upstream}"),
                },
                server: false,
                start_ns: end_ns.saturating_sub(nanos(call.took)),
                end_ns,
                attributes,
                error: call.error.clone().or_else(|| {
                    (call.status >= 500 || call.outcome != "ok")
                        .then(|| format!("{} (status {})", call.outcome, call.status))
                }),
            });
        }
        out
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One finished span, handed from a shard to the exporter thread.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// Its trace.
    pub trace_id: [u8; 16],
    /// Its id.
    pub span_id: [u8; 8],
    /// The parent span's id (none: a root span).
    pub parent: Option<[u8; 8]>,
    /// The parent is the caller's span, in another process.
    pub remote_parent: bool,
    /// The W3C `tracestate` that came with the trace (may be empty).
    pub trace_state: String,
    /// Span name.
    pub name: String,
    /// Kind SERVER (the request) rather than CLIENT (a call upstream).
    pub server: bool,
    /// Start, nanoseconds since the Unix epoch.
    pub start_ns: u64,
    /// End, nanoseconds since the Unix epoch.
    pub end_ns: u64,
    /// Attributes, by OpenTelemetry semantic-convention names where one fits.
    pub attributes: Vec<(&'static str, Attr)>,
    /// Status ERROR with this description (none: status unset).
    pub error: Option<String>,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
}

impl From<&str> for Attr {
    fn from(s: &str) -> Attr {
        Attr::Str(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_a_valid_traceparent() {
        let p = parse_traceparent(VALID).unwrap();
        assert_eq!(p.trace_id[0], 0x4b);
        assert_eq!(p.trace_id[15], 0x36);
        assert_eq!(
            p.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(p.flags, 1);
    }

    #[test]
    fn refuses_invalid_traceparents() {
        let bad: &[&[u8]] = &[
            b"",
            // Upper-case hex.
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // All-zero trace id and parent id.
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Version ff, and version 00 with extra data.
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xx",
            // Wrong separators and lengths.
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        ];
        for v in bad {
            assert_eq!(parse_traceparent(v), None, "{}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn later_versions_may_carry_more() {
        let v = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(parse_traceparent(v).is_some());
        let v = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x";
        assert!(parse_traceparent(v).is_none());
    }

    fn trace(parent: Option<[u8; 8]>) -> Trace {
        Trace {
            trace_id: [7; 16],
            span_id: [9; 8],
            parent,
            sampled: true,
            recording: true,
            calls: RefCell::new(Vec::new()),
        }
    }

    #[test]
    fn child_ids_are_distinct_and_in_the_traceparent() {
        let t = trace(None);
        let ids: Vec<[u8; 8]> = (0..17).map(|n| t.child_id(n)).collect();
        for (i, a) in ids.iter().enumerate() {
            assert_ne!(*a, t.span_id());
            assert!(ids.iter().skip(i + 1).all(|b| b != a));
        }
        let tp = t.traceparent(3);
        let parsed = parse_traceparent(tp.as_bytes()).unwrap();
        assert_eq!(parsed.trace_id, [7; 16]);
        assert_eq!(parsed.parent_id, t.child_id(3));
        assert_eq!(parsed.flags, 1);
    }

    #[test]
    fn tracestate_is_dropped_only_when_the_trace_restarted() {
        assert!(trace(None).replaces(b"TraceState"));
        assert!(!trace(Some([1; 8])).replaces(b"tracestate"));
        assert!(trace(Some([1; 8])).replaces(b"traceparent"));
        assert!(!trace(None).replaces(b"x-other"));
    }

    #[test]
    fn sampling_follows_the_ratio() {
        assert!((0..100).all(|_| sample(1.0)));
        assert!((0..100).all(|_| !sample(0.0)));
        let hits = (0..10_000).filter(|_| sample(0.25)).count();
        assert!((2_000..3_000).contains(&hits), "{hits}");
    }
}
