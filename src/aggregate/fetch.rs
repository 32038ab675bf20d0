//! One part's upstream call: send a request built from the part's templates
//! on a pooled (or new) connection of this shard, read the answer with a
//! bounded body, parse it as JSON. Every wait is bounded by the part's
//! deadline, so a part always ends on its own and its socket is shut down
//! rather than left with a pending read.

use crate::compiled::UpstreamPlan;
use crate::http::body::append_buffered;
use crate::http::chunked::ChunkedDecoder;
use crate::http::io::IoFail;
use crate::http::{Conn, Framing};
use crate::proxy::{
    busy_error, connect_within, read_response_head, InFlight, Lease, ReadHeadError,
};
use crate::shard::Shard;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Why a part produced no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartError {
    /// What happened, for the client (`timeout after 300 ms`, `status 503`, ...).
    pub reason: String,
    /// The part ran out of time (a required part failing this way → 504).
    pub timeout: bool,
    /// The upstream's status when it answered outside 2xx (0 otherwise).
    pub status: u16,
}

impl PartError {
    /// A failure that is not a timeout.
    pub fn new(reason: impl Into<String>) -> PartError {
        PartError {
            reason: reason.into(),
            timeout: false,
            status: 0,
        }
    }

    /// A failure because the deadline passed.
    pub fn timed_out(reason: impl Into<String>) -> PartError {
        PartError {
            reason: reason.into(),
            timeout: true,
            status: 0,
        }
    }

    /// The part did not run: a part it depends on failed.
    pub fn skipped(&self) -> bool {
        self.reason.starts_with("depends on ") || self.reason == "did not run"
    }
}

/// A request ready to send to one part's upstream.
pub struct PartRequest<'a> {
    /// The upstream.
    pub up: &'a UpstreamPlan,
    /// This shard's balancing cursor for it.
    pub cursor: &'a std::cell::Cell<usize>,
    /// The complete head without `host` (added per target), ending in CRLF CRLF,
    /// followed by the body.
    pub head_and_body: Vec<u8>,
    /// Where the `host` field is inserted (just after the request line).
    pub host_at: usize,
    /// The request may be sent again on a fresh connection (idempotent, no body).
    pub retryable: bool,
    /// The method is HEAD (the answer has no body).
    pub head_method: bool,
    /// Largest response body accepted.
    pub max_bytes: u64,
    /// When the part gives up.
    pub deadline: Instant,
    /// The reason given when the deadline passes.
    pub timeout_reason: &'a str,
    /// The status of the answer, once its head is read (0 before).
    pub status: std::cell::Cell<u16>,
    /// Lower-case names of response headers whose values are kept.
    pub keep_headers: &'a [String],
}

/// A part's 2xx answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The parsed JSON body (`null` when empty).
    pub value: Value,
    /// Its status.
    pub status: u16,
    /// Values of the kept headers: (index in `keep_headers`, value).
    pub headers: Vec<(usize, String)>,
    /// Length of the body as received.
    pub bytes: usize,
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

impl PartRequest<'_> {
    fn timed_out(&self) -> PartError {
        PartError::timed_out(self.timeout_reason)
    }

    fn io(&self, e: IoFail, what: &str) -> PartError {
        match e {
            IoFail::Timeout => self.timed_out(),
            IoFail::Io(e) => PartError::new(format!("{what}: {e}")),
        }
    }
}

enum Attempt {
    Done(Result<Answer, PartError>),
    Stale,
}

/// Sends the request and returns the JSON answer of a 2xx response.
pub async fn fetch(shard: &Shard, mut req: PartRequest<'_>) -> Result<Answer, PartError> {
    let admitted = crate::resilience::admit_call(shard, req.up).map_err(PartError::new)?;
    let in_flight =
        InFlight::pick(shard, req.up, req.cursor).map_err(|e| PartError::new(e.message()))?;
    let result = fetch_from(shard, &mut req, in_flight.addr()).await;
    crate::resilience::record_call(shard, req.up, admitted, req.status.get(), result.is_err());
    result
}

/// [`fetch`], also telling the target called (if one was picked) and the
/// status of its answer (0: none came), for the part's span.
pub async fn fetch_seen(
    shard: &Shard,
    mut req: PartRequest<'_>,
) -> (Result<Answer, PartError>, Option<SocketAddr>, u16) {
    let admitted = match crate::resilience::admit_call(shard, req.up) {
        Ok(a) => a,
        Err(why) => return (Err(PartError::new(why)), None, 0),
    };
    let in_flight = match InFlight::pick(shard, req.up, req.cursor) {
        Ok(f) => f,
        Err(e) => return (Err(PartError::new(e.message())), None, 0),
    };
    let addr = in_flight.addr();
    let result = fetch_from(shard, &mut req, addr).await;
    crate::resilience::record_call(shard, req.up, admitted, req.status.get(), result.is_err());
    (result, Some(addr), req.status.get())
}

async fn fetch_from(
    shard: &Shard,
    req: &mut PartRequest<'_>,
    addr: SocketAddr,
) -> Result<Answer, PartError> {
    let mut bytes = std::mem::take(&mut req.head_and_body);
    let host = format!("host: {addr}\r\n");
    bytes.splice(req.host_at..req.host_at, host.bytes());
    let mut lease = Lease::new(shard, addr);
    let mut pooled = match lease.checkout(req.up) {
        Ok(pooled) => pooled,
        Err(_) => {
            // The wait for a connection at the bound counts against the part's deadline.
            let wait = req.up.queue_timeout.min(left(req.deadline));
            match lease.wait(req.up, wait).await {
                Ok(pooled) => pooled,
                Err(_) if left(req.deadline).is_zero() => return Err(req.timed_out()),
                Err(why) => return Err(PartError::new(busy_error(req.up, why).message())),
            }
        }
    };
    for attempt in 0..2 {
        let reused = pooled.is_some();
        let conn = match pooled.take() {
            Some(c) => c,
            None => {
                let wait = req.up.connect_timeout.min(left(req.deadline));
                match connect_within(req.up, addr, wait).await {
                    Ok(c) => c,
                    Err(_) if left(req.deadline).is_zero() => return Err(req.timed_out()),
                    Err(e) => return Err(PartError::new(connect_reason(e, addr))),
                }
            }
        };
        let may_retry = reused && attempt == 0 && req.retryable;
        let (outcome, back) = exchange(req, &mut lease, conn, bytes, may_retry).await;
        bytes = back;
        match outcome {
            Attempt::Done(r) => return r,
            // The retry goes out on a fresh connection, under the same slot.
            Attempt::Stale => shard.pools.borrow_mut().drop_idle(addr),
        }
    }
    Err(PartError::new("connection closed before a response"))
}

fn connect_reason(e: crate::error::GatewayError, addr: SocketAddr) -> String {
    match e {
        crate::error::GatewayError::BadGateway { reason, .. } => reason,
        _ => format!("connect to {addr} failed"),
    }
}

async fn exchange(
    req: &PartRequest<'_>,
    lease: &mut Lease<'_>,
    mut upc: Box<Conn>,
    bytes: Vec<u8>,
    may_retry: bool,
) -> (Attempt, Vec<u8>) {
    let (res, bytes) = upc.write(bytes, left(req.deadline)).await;
    match res {
        Ok(()) => {}
        Err(_) if may_retry => return (Attempt::Stale, bytes),
        Err(e) => {
            return (
                Attempt::Done(Err(req.io(e, "write to upstream failed"))),
                bytes,
            )
        }
    }
    let resp = loop {
        let e = match read_response_head(&mut upc, req.deadline, req.head_method).await {
            // Interim answers (103 Early Hints, a stray 100) are skipped.
            Ok(r) if (100..200).contains(&r.status) && r.status != 101 => continue,
            Ok(r) => {
                req.status.set(r.status);
                break r;
            }
            Err(ReadHeadError::ClosedEarly) if may_retry => return (Attempt::Stale, bytes),
            Err(ReadHeadError::ClosedEarly) => {
                PartError::new("connection closed before a response")
            }
            Err(ReadHeadError::Timeout) => req.timed_out(),
            Err(ReadHeadError::Invalid(why)) => PartError::new(why),
        };
        return (Attempt::Done(Err(e)), bytes);
    };
    if !(200..300).contains(&resp.status) {
        // The body is not read: the connection is dropped, not pooled.
        let mut e = PartError::new(format!("status {}", resp.status));
        e.status = resp.status;
        return (Attempt::Done(Err(e)), bytes);
    }
    let body = match read_body(&mut upc, resp.framing, req).await {
        Ok(b) => b,
        Err(e) => return (Attempt::Done(Err(e)), bytes),
    };
    if resp.keep_alive && upc.buffered().is_empty() {
        lease.pool(upc, req.up.max_idle);
    }
    let headers = req
        .keep_headers
        .iter()
        .enumerate()
        .filter_map(|(i, name)| {
            let v = std::str::from_utf8(resp.header(name)?).ok()?;
            Some((i, v.to_string()))
        })
        .collect();
    let answer = parse_json(&body).map(|value| Answer {
        value,
        status: resp.status,
        headers,
        bytes: body.len(),
    });
    (Attempt::Done(answer), bytes)
}

/// Parses a part's body; an empty body is `null`.
pub fn parse_json(body: &[u8]) -> Result<Value, PartError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| PartError::new(format!("invalid JSON: {e}")))
}

/// The most reserved up front for a part's body of announced length.
const PREALLOCATE: usize = 1024 * 1024;

/// Reads a response body into memory, never holding more than `max_bytes` of it.
async fn read_body(
    upc: &mut Conn,
    framing: Framing,
    req: &PartRequest<'_>,
) -> Result<Vec<u8>, PartError> {
    let too_large = || PartError::new(format!("response larger than {} bytes", req.max_bytes));
    let mut body = Vec::new();
    match framing {
        Framing::None => {}
        Framing::Length(n) => {
            if n > req.max_bytes {
                return Err(too_large());
            }
            // The upstream's announced length is not trusted for an
            // allocation beyond what a part usually is.
            let announced = usize::try_from(n).unwrap_or(usize::MAX);
            body.reserve_exact(announced.min(PREALLOCATE));
            let mut rest = append_buffered(upc, framing, &mut body);
            while let Framing::Length(_) = rest {
                fill(upc, req).await?;
                rest = append_buffered(upc, rest, &mut body);
            }
        }
        Framing::Chunked => {
            let mut dec = ChunkedDecoder::default();
            loop {
                let step = dec
                    .step(upc.buffered())
                    .map_err(|_| PartError::new("malformed chunked response body"))?;
                if let Some(r) = step.data {
                    if (body.len() + r.len()) as u64 > req.max_bytes {
                        return Err(too_large());
                    }
                    let data = upc.buffered().get(r);
                    body.extend_from_slice(
                        data.ok_or_else(|| PartError::new("malformed chunked response body"))?,
                    );
                }
                upc.consume(step.consumed);
                if dec.is_done() {
                    break;
                }
                if upc.buffered().is_empty() {
                    fill(upc, req).await?;
                }
            }
        }
        Framing::UntilClose => loop {
            if (body.len() + upc.buffered().len()) as u64 > req.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(upc.buffered());
            let n = upc.buffered().len();
            upc.consume(n);
            match upc.fill(left(req.deadline)).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(req.io(e, "response body read failed")),
            }
        },
    }
    Ok(body)
}

async fn fill(upc: &mut Conn, req: &PartRequest<'_>) -> Result<(), PartError> {
    match upc.fill(left(req.deadline)).await {
        Ok(0) => Err(PartError::new("connection closed inside the response body")),
        Ok(_) => Ok(()),
        Err(e) => Err(req.io(e, "response body read failed")),
    }
}
