//! Fallbacks: the answer a route gives when its upstream cannot — a fixed
//! response, or the same request sent to another upstream — and reading a
//! small request body ahead so it can be sent more than once.

use crate::error::reason_phrase;
use crate::error::GatewayError;
use crate::http::{Conn, Framing, RequestHead};
use crate::proxy::{Disposition, Exchange};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::rc::Rc;

/// A compiled fallback.
#[derive(Debug, Clone)]
pub enum FallbackPlan {
    /// Answer with this response.
    Static(StaticAnswer),
    /// Send the request to this upstream (index in the running config).
    Alternate(usize),
}

/// A fixed response, its header lines rendered once.
#[derive(Debug, Clone)]
pub struct StaticAnswer {
    /// Status code.
    pub status: u16,
    /// `name: value\r\n` lines (with a JSON content type unless one was given).
    pub header_lines: String,
    /// The body.
    pub body: Vec<u8>,
}

impl FallbackPlan {
    /// Compiles a static fallback; header names and values must be plain tokens and text.
    pub fn compile_static(
        status: u16,
        headers: &BTreeMap<String, String>,
        body: &str,
    ) -> Result<FallbackPlan, String> {
        if !(200..600).contains(&status) {
            return Err(format!("fallback status {status} must be within 200..599"));
        }
        let header_lines =
            fixed_header_lines(headers, "x-fallback").map_err(|e| format!("fallback {e}"))?;
        Ok(FallbackPlan::Static(StaticAnswer {
            status,
            header_lines,
            body: body.as_bytes().to_vec(),
        }))
    }
}

/// The `name: value\r\n` lines of a fixed answer configured by hand (a
/// static fallback or a static response), with a JSON content type unless
/// one is given. Names must be tokens and values single lines; the framing
/// fields and `also_owned` are the gateway's.
pub(crate) fn fixed_header_lines(
    headers: &BTreeMap<String, String>,
    also_owned: &str,
) -> Result<String, String> {
    let mut lines = String::new();
    let mut typed = false;
    for (name, value) in headers {
        if name.is_empty() || !name.bytes().all(crate::config::is_token_byte) {
            return Err(format!("header name {name:?} is not a token"));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(format!("header {name:?} has a line break"));
        }
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) || lower == also_owned
        {
            return Err(format!("header {name:?} is set by the gateway"));
        }
        typed |= lower == "content-type";
        let _ = write!(lines, "{name}: {value}\r\n");
    }
    if !typed {
        lines.push_str("content-type: application/json\r\n");
    }
    Ok(lines)
}

/// Why the fallback answered (the `X-Fallback` value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The breaker was open.
    CircuitOpen,
    /// No connection could be opened.
    ConnectError,
    /// No answer in time.
    Timeout,
    /// The connection broke before an answer.
    Reset,
    /// A 5xx answer.
    ServerError,
    /// A malformed answer.
    UpstreamError,
}

impl Reason {
    /// Every reason, in [`Reason::index`] order.
    pub const ALL: [Reason; 6] = [
        Reason::CircuitOpen,
        Reason::ConnectError,
        Reason::Timeout,
        Reason::Reset,
        Reason::ServerError,
        Reason::UpstreamError,
    ];

    /// Its place in [`Reason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `X-Fallback` value.
    pub fn label(self) -> &'static str {
        match self {
            Reason::CircuitOpen => "circuit-open",
            Reason::ConnectError => "connect-error",
            Reason::Timeout => "timeout",
            Reason::Reset => "upstream-reset",
            Reason::ServerError => "upstream-5xx",
            Reason::UpstreamError => "upstream-error",
        }
    }
}

/// Reads a `Content-Length` body of `n` bytes from `client` (after a `100
/// Continue` when the client asked for one).
pub async fn read_body(
    client: &mut Conn,
    req: &RequestHead,
    n: u64,
    ex: &mut Exchange<'_>,
) -> Result<Rc<[u8]>, GatewayError> {
    let n = usize::try_from(n).map_err(|_| GatewayError::PayloadTooLarge)?;
    if req.expect_continue
        && client.buffered().len() < n
        && crate::http::body::send_100_continue(client, ex.limits.send_timeout)
            .await
            .is_err()
    {
        return Err(GatewayError::BadRequest("client went away"));
    }
    client.reserve_total(n);
    while client.buffered().len() < n {
        match client.fill(ex.limits.body_read_timeout).await {
            Ok(0) => return Err(GatewayError::BadRequest("request body ended early")),
            Ok(_) => {}
            Err(_) => return Err(GatewayError::RequestTimeout),
        }
    }
    let body: Rc<[u8]> = client.buffered().get(..n).unwrap_or_default().into();
    client.consume(n);
    ex.body_consumed = true;
    ex.seen.bytes_in = n as u64;
    Ok(body)
}

/// Answers with the static fallback, marked with `X-Fallback: <reason>`.
pub async fn answer(
    s: &StaticAnswer,
    reason: Reason,
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
) -> Result<Disposition, GatewayError> {
    // A body still unread on the connection cannot be skipped reliably: close.
    let keep_alive = ex.keep_alive && (ex.body_consumed || req.framing == Framing::None);
    let mut out = String::with_capacity(160 + s.header_lines.len() + ex.response_headers.len());
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n{}content-length: {}\r\nx-request-id: {}\r\nx-fallback: {}\r\n",
        s.status,
        reason_phrase(s.status),
        s.header_lines,
        s.body.len(),
        ex.request_id,
        reason.label()
    );
    Ok(send_fixed(out, s.status, &s.body, req, client, ex, keep_alive).await)
}

/// Writes a fixed answer held in memory: `head` (status line and fields
/// up to the request id), then the exchange's own lines, the connection
/// field and, unless the request is a `HEAD`, `body`. Static fallbacks and
/// static responses leave through it.
pub(crate) async fn send_fixed(
    head: String,
    status: u16,
    body: &[u8],
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
    keep_alive: bool,
) -> Disposition {
    let mut out = head;
    out.push_str(&ex.response_headers);
    out.push_str(if keep_alive {
        "connection: keep-alive\r\n\r\n"
    } else {
        "connection: close\r\n\r\n"
    });
    let mut bytes = out.into_bytes();
    if req.method() != "HEAD" {
        bytes.extend_from_slice(body);
    }
    ex.seen.status = status;
    ex.seen.bytes_out = bytes.len() as u64;
    ex.response_started = true;
    let (r, _) = client.write(bytes, ex.limits.send_timeout).await;
    if r.is_err() || !keep_alive {
        return Disposition::Close;
    }
    Disposition::KeepAlive
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn static_answer_renders_its_headers_once() {
        let Ok(FallbackPlan::Static(s)) =
            FallbackPlan::compile_static(200, &headers(&[("Cache-Control", "no-store")]), "{}")
        else {
            panic!("compiles");
        };
        assert_eq!(
            s.header_lines,
            "Cache-Control: no-store\r\ncontent-type: application/json\r\n"
        );
        let Ok(FallbackPlan::Static(s)) =
            FallbackPlan::compile_static(503, &headers(&[("Content-Type", "text/plain")]), "x")
        else {
            panic!("compiles");
        };
        assert_eq!(s.header_lines, "Content-Type: text/plain\r\n");
    }

    #[test]
    fn static_answer_refuses_what_would_break_the_response() {
        for (status, h) in [
            (99, headers(&[])),
            (600, headers(&[])),
            (200, headers(&[("Content-Length", "1")])),
            (200, headers(&[("transfer-encoding", "chunked")])),
            (200, headers(&[("X-Fallback", "no")])),
            (200, headers(&[("Bad Name", "v")])),
            (200, headers(&[("X-Ok", "a\r\nInjected: yes")])),
        ] {
            assert!(
                FallbackPlan::compile_static(status, &h, "").is_err(),
                "{status} {h:?}"
            );
        }
    }

    #[test]
    fn reasons_are_in_index_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
