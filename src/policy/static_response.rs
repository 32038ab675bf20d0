//! Static responses: a route that answers with a fixed status, headers and
//! body (a mock, a maintenance notice, a "gone"), without an upstream.

use crate::config::StaticResponse;
use crate::error::{reason_phrase, GatewayError};
use crate::http::{Conn, Framing, RequestHead};
use crate::proxy::{Disposition, Exchange};
use std::fmt::Write as _;

/// A compiled static response: its head lines rendered once.
#[derive(Debug, Clone)]
pub struct StaticPlan {
    status: u16,
    /// Status line and configured header lines, with `content-length`.
    head: String,
    body: Vec<u8>,
}

impl StaticPlan {
    /// Compiles a static response; header names must be tokens, values
    /// single-line, and the framing fields are the gateway's.
    pub fn compile(s: &StaticResponse) -> Result<StaticPlan, String> {
        if !(200..600).contains(&s.status) || s.status == 204 || s.status == 304 {
            return Err(format!(
                "status {} must be within 200..599 and carry a body (not 204 or 304)",
                s.status
            ));
        }
        let mut head = String::with_capacity(128);
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\n",
            s.status,
            reason_phrase(s.status)
        );
        head.push_str(&crate::resilience::fallback::fixed_header_lines(
            &s.headers,
            "x-request-id",
        )?);
        let _ = write!(head, "content-length: {}\r\n", s.body.len());
        Ok(StaticPlan {
            status: s.status,
            head,
            body: s.body.as_bytes().to_vec(),
        })
    }

    /// Answers `req` with the static response (and `ex.response_headers`).
    /// An unread request body up to [`DRAIN_MAX`] bytes is read and
    /// dropped first; after a larger one the connection closes.
    pub async fn answer(
        &self,
        req: &RequestHead,
        client: &mut Conn,
        ex: &mut Exchange<'_>,
    ) -> Result<Disposition, GatewayError> {
        drain_small_body(req, client, ex).await;
        let keep_alive = ex.keep_alive && (ex.body_consumed || req.framing == Framing::None);
        let mut out = String::with_capacity(self.head.len() + ex.response_headers.len() + 96);
        out.push_str(&self.head);
        out.push_str("x-request-id: ");
        out.push_str(ex.request_id);
        out.push_str("\r\n");
        let d = crate::resilience::fallback::send_fixed(
            out,
            self.status,
            &self.body,
            req,
            client,
            ex,
            keep_alive,
        )
        .await;
        Ok(d)
    }
}

/// Largest unread request body read past so the connection stays open.
pub const DRAIN_MAX: u64 = 64 * 1024;

/// Reads and drops a small unread `Content-Length` body.
async fn drain_small_body(req: &RequestHead, client: &mut Conn, ex: &mut Exchange<'_>) {
    if ex.body_consumed {
        return;
    }
    if let Framing::Length(n) = req.framing {
        if n <= DRAIN_MAX {
            let lim = crate::http::body::CopyLimits {
                read_timeout: ex.limits.body_read_timeout,
                write_timeout: ex.limits.send_timeout,
                max_bytes: DRAIN_MAX,
                trailers: false,
            };
            if crate::http::body::discard_body(client, req.framing, lim)
                .await
                .is_ok()
            {
                ex.body_consumed = true;
                ex.seen.bytes_in = n;
            }
        }
    }
}

/// Writes a complete response with no body (`204` for a preflight) and
/// the given header lines.
pub async fn answer_empty(
    status: u16,
    lines: &str,
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
) -> Disposition {
    drain_small_body(req, client, ex).await;
    let keep_alive = ex.keep_alive && (ex.body_consumed || req.framing == Framing::None);
    let mut out = String::with_capacity(160 + lines.len() + ex.response_headers.len());
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    out.push_str(lines);
    out.push_str("x-request-id: ");
    out.push_str(ex.request_id);
    out.push_str("\r\n");
    out.push_str(&ex.response_headers);
    if status != 204 {
        out.push_str("content-length: 0\r\n");
    }
    out.push_str(if keep_alive {
        "connection: keep-alive\r\n\r\n"
    } else {
        "connection: close\r\n\r\n"
    });
    let bytes = out.into_bytes();
    ex.seen.status = status;
    ex.seen.bytes_out = bytes.len() as u64;
    ex.response_started = true;
    let (r, _) = client.write(bytes, ex.limits.send_timeout).await;
    if r.is_ok() && keep_alive {
        Disposition::KeepAlive
    } else {
        Disposition::Close
    }
}
