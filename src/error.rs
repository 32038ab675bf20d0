//! The one error type at the edge: every stage's failure becomes a
//! [`GatewayError`], and this file alone decides its status and JSON body.
use std::fmt::Write;

/// A request the gateway answers itself, with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// Malformed request (400).
    BadRequest(&'static str),
    /// No valid credentials (401 with `WWW-Authenticate`); the reason when a credential was rejected.
    Unauthorized(Option<String>),
    /// Authenticated but not allowed (403).
    Forbidden(String),
    /// No route matches (404).
    NotFound,
    /// The path matched but the method is not allowed (405 with `Allow`).
    MethodNotAllowed(Vec<String>),
    /// The client was too slow sending its request head or body (408).
    RequestTimeout,
    /// The request body is larger than allowed (413).
    PayloadTooLarge,
    /// The request body's media type or coding is not one the route takes (415).
    UnsupportedMediaType(&'static str),
    /// The request head is too large or has too many fields (431).
    HeadersTooLarge,
    /// A transfer coding the gateway does not implement (501).
    NotImplemented(&'static str),
    /// An HTTP version this listener does not speak (505): the HTTP/2 preface.
    VersionNotSupported,
    /// The upstream could not be reached or broke the exchange (502).
    BadGateway { upstream: String, reason: String },
    /// The upstream did not answer in time (504).
    GatewayTimeout { upstream: String },
    /// The gateway is shutting down or has no usable target (503).
    Unavailable(&'static str),
    /// Every connection to the upstream's target that this shard may open
    /// is in use and none came back in time, or too many requests wait (503).
    UpstreamBusy { upstream: String, reason: String },
    /// The upstream's circuit breaker is open (503, `Retry-After`).
    CircuitOpen {
        /// Upstream name.
        upstream: String,
        /// Whole seconds until it may be tried again (at least 1).
        retry_after_s: u64,
    },
    /// The upstream answered with this status and the answer was held back
    /// for a retry that the budget or the deadline then did not allow (the
    /// same status, with a JSON body).
    UpstreamStatus {
        /// Upstream name.
        upstream: String,
        /// The status it answered with.
        status: u16,
    },
    /// Every target of the upstream is unhealthy or ejected (503).
    NoHealthyTarget { upstream: String },
    /// A rate limit refused the request (429): seconds until it could fit,
    /// and the `RateLimit-*` header lines to send (empty when hidden).
    TooManyRequests {
        /// `Retry-After`, whole seconds (at least 1).
        retry_after_s: u64,
        /// Pre-rendered header lines.
        headers: String,
    },
    /// A composite route failed: a required part (named) or the composite
    /// itself (empty `part`). 504 when it ran out of time, else 502.
    PartFailed {
        part: String,
        reason: String,
        timeout: bool,
    },
}

impl GatewayError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::BadRequest(_) => 400,
            GatewayError::Unauthorized(_) => 401,
            GatewayError::Forbidden(_) => 403,
            GatewayError::NotFound => 404,
            GatewayError::MethodNotAllowed(_) => 405,
            GatewayError::RequestTimeout => 408,
            GatewayError::PayloadTooLarge => 413,
            GatewayError::UnsupportedMediaType(_) => 415,
            GatewayError::HeadersTooLarge => 431,
            GatewayError::TooManyRequests { .. } => 429,
            GatewayError::NotImplemented(_) => 501,
            GatewayError::VersionNotSupported => 505,
            GatewayError::BadGateway { .. } => 502,
            GatewayError::Unavailable(_)
            | GatewayError::UpstreamBusy { .. }
            | GatewayError::NoHealthyTarget { .. }
            | GatewayError::CircuitOpen { .. } => 503,
            GatewayError::UpstreamStatus { status, .. } => *status,
            GatewayError::GatewayTimeout { .. } => 504,
            GatewayError::PartFailed { timeout: true, .. } => 504,
            GatewayError::PartFailed { .. } => 502,
        }
    }

    /// The message shown to the client; never echoes request data.
    pub fn message(&self) -> String {
        match self {
            GatewayError::BadRequest(why) => format!("bad request: {why}"),
            GatewayError::Unauthorized(None) => "authentication required".into(),
            GatewayError::Unauthorized(Some(why)) => format!("invalid credentials: {why}"),
            GatewayError::Forbidden(why) => format!("forbidden: {why}"),
            GatewayError::NotFound => "no route matches the request".into(),
            GatewayError::MethodNotAllowed(_) => "method not allowed on this route".into(),
            GatewayError::RequestTimeout => "request not received in time".into(),
            GatewayError::PayloadTooLarge => "request body too large".into(),
            GatewayError::UnsupportedMediaType(why) => format!("unsupported media type: {why}"),
            GatewayError::HeadersTooLarge => "request header fields too large".into(),
            GatewayError::NotImplemented(what) => format!("not implemented: {what}"),
            GatewayError::VersionNotSupported => {
                "HTTP/2 is not supported on this listener; use HTTP/1.1".into()
            }
            GatewayError::BadGateway { upstream, reason } => {
                format!("upstream {upstream:?} failed: {reason}")
            }
            GatewayError::GatewayTimeout { upstream } => {
                format!("upstream {upstream:?} did not answer in time")
            }
            GatewayError::Unavailable(why) => format!("service unavailable: {why}"),
            GatewayError::UpstreamBusy { upstream, reason } => {
                format!("upstream {upstream:?} is at its connection limit: {reason}")
            }
            GatewayError::NoHealthyTarget { upstream } => {
                format!("upstream {upstream:?} has no healthy target")
            }
            GatewayError::TooManyRequests { retry_after_s, .. } => {
                format!("rate limit exceeded; retry in {retry_after_s} s")
            }
            GatewayError::CircuitOpen {
                upstream,
                retry_after_s,
            } => format!(
                "upstream {upstream:?} is unavailable: its circuit breaker is open; retry in {retry_after_s} s"
            ),
            GatewayError::UpstreamStatus { upstream, status } => {
                format!("upstream {upstream:?} answered {status}")
            }
            GatewayError::PartFailed { part, reason, .. } if part.is_empty() => {
                format!("aggregate failed: {reason}")
            }
            GatewayError::PartFailed { part, reason, .. } => {
                format!("required part {part:?} failed: {reason}")
            }
        }
    }

    /// The complete HTTP/1.1 response for this error.
    pub fn to_response(&self, request_id: &str, keep_alive: bool) -> Vec<u8> {
        self.to_response_traced(request_id, None, keep_alive)
    }

    /// The complete HTTP/1.1 response for this error, with the request's
    /// trace id (when tracing is on) in the body next to its request id.
    pub fn to_response_traced(
        &self,
        request_id: &str,
        trace_id: Option<&str>,
        keep_alive: bool,
    ) -> Vec<u8> {
        let status = self.status();
        let mut body = String::with_capacity(96);
        body.push_str("{\"error\":");
        json_string(&mut body, &self.message());
        if let GatewayError::PartFailed { part, .. } = self {
            if !part.is_empty() {
                body.push_str(",\"part\":");
                json_string(&mut body, part);
            }
        }
        if let GatewayError::CircuitOpen { upstream, .. } = self {
            body.push_str(",\"upstream\":");
            json_string(&mut body, upstream);
        }
        body.push_str(",\"request_id\":");
        json_string(&mut body, request_id);
        if let Some(t) = trace_id {
            body.push_str(",\"trace_id\":");
            json_string(&mut body, t);
        }
        body.push('}');
        let mut out = String::with_capacity(body.len() + 192);
        let _ = write!(
            out,
            "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\n",
            reason_phrase(status),
            body.len()
        );
        match self {
            GatewayError::MethodNotAllowed(allow) => {
                let _ = write!(out, "allow: {}\r\n", allow.join(", "));
            }
            // RFC 6750 §3: the challenge, with an error code once a token was seen.
            GatewayError::Unauthorized(None) => {
                out.push_str("www-authenticate: Bearer realm=\"shardgate\"\r\n")
            }
            GatewayError::Unauthorized(Some(_)) => out.push_str(
                "www-authenticate: Bearer realm=\"shardgate\", error=\"invalid_token\"\r\n",
            ),
            GatewayError::Forbidden(_) => out.push_str(
                "www-authenticate: Bearer realm=\"shardgate\", error=\"insufficient_scope\"\r\n",
            ),
            GatewayError::TooManyRequests {
                retry_after_s,
                headers,
            } => {
                let _ = write!(out, "retry-after: {retry_after_s}\r\n");
                out.push_str(headers);
            }
            GatewayError::UpstreamBusy { .. } => out.push_str("retry-after: 1\r\n"),
            GatewayError::CircuitOpen { retry_after_s, .. } => {
                let _ = write!(out, "retry-after: {retry_after_s}\r\n");
            }
            _ => {}
        }
        out.push_str(if keep_alive {
            "connection: keep-alive\r\n\r\n"
        } else {
            "connection: close\r\n\r\n"
        });
        out.push_str(&body);
        out.into_bytes()
    }
}

/// Appends `s` as a JSON string literal.
pub fn json_string(out: &mut String, s: &str) {
    json_quoted(s, |piece| out.push_str(piece));
}

/// `s` as a JSON string, quotes included, handed to `push` in pieces: runs
/// of characters that need no escape whole, escapes one by one.
pub fn json_quoted(s: &str, mut push: impl FnMut(&str)) {
    push("\"");
    let mut rest = s;
    while let Some(i) = rest
        .bytes()
        .position(|b| b < 0x20 || b == b'"' || b == b'\\')
    {
        let (plain, tail) = rest.split_at(i);
        push(plain);
        let mut chars = tail.chars();
        match chars.next() {
            Some('"') => push("\\\""),
            Some('\\') => push("\\\\"),
            Some('\n') => push("\\n"),
            Some('\r') => push("\\r"),
            Some('\t') => push("\\t"),
            Some(c) => push(&format!("\\u{:04x}", c as u32)),
            None => {}
        }
        rest = chars.as_str();
    }
    push(rest);
    push("\"");
}

/// Standard reason phrase for the statuses the gateway produces itself.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_what_json_needs() {
        let mut out = String::new();
        json_string(&mut out, "a\"b\\c\nd\u{1}é/ü\te");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u0001é/ü\\te\"");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v, "a\"b\\c\nd\u{1}é/ü\te");
    }

    #[test]
    fn json_error_body() {
        let r = GatewayError::MethodNotAllowed(vec!["GET".into(), "PUT".into()])
            .to_response("ab\"c", false);
        let s = String::from_utf8(r).unwrap();
        assert!(s.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(s.contains("allow: GET, PUT\r\n"));
        assert!(s.contains("connection: close"));
        assert!(s.ends_with(
            "{\"error\":\"method not allowed on this route\",\"request_id\":\"ab\\\"c\"}"
        ));
        let body = s.split("\r\n\r\n").nth(1).unwrap();
        assert!(s.contains(&format!("content-length: {}\r\n", body.len())));
    }
}
