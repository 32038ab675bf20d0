//! OAuth 2.0 token introspection (RFC 7662) for opaque bearer tokens: a POST
//! to the identity provider from the shard that holds the request, over the
//! shard's own runtime. Active answers are cached in the shard's token cache
//! for at most `cache_ttl_s` and never past the token's `exp`, so a revoked
//! token stops working within that TTL.

use crate::http::chunked::ChunkedDecoder;
use crate::http::io::IoFail;
use crate::http::{Conn, Framing, Parsed, ResponseHead};
use monoio::net::TcpStream;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Largest introspection answer accepted.
const MAX_ANSWER: usize = 64 * 1024;

/// One introspection endpoint, compiled.
pub struct Introspector {
    /// Resolved endpoint address.
    pub addr: SocketAddr,
    /// TLS to an `https://` endpoint.
    pub tls: Option<crate::tls::UpstreamTlsPlan>,
    /// Host header value.
    pub host: String,
    /// Request path.
    pub path: String,
    /// `Authorization` header value (HTTP Basic with the client credentials).
    pub basic: String,
    /// Time allowed for the whole call.
    pub timeout: Duration,
    /// Longest reuse of an active answer.
    pub ttl: Duration,
    /// Answer field → forwarded header.
    pub forward: Vec<(String, String)>,
    /// Field with the caller's roles.
    pub roles_claim: String,
}

/// Why introspection gave no answer.
#[derive(Debug)]
pub enum IntrospectError {
    /// The identity provider could not be reached or answered badly.
    Unreachable(String),
}

/// Base64 (standard alphabet, padded), for HTTP Basic credentials.
pub fn base64(data: &[u8]) -> String {
    encode64(
        data,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        true,
    )
}

/// Base64url without padding, the encoding of JWT segments.
pub fn base64url(data: &[u8]) -> String {
    encode64(
        data,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
        false,
    )
}

fn encode64(data: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = (0..3).fold(0u32, |n, i| {
            (n << 8) | u32::from(chunk.get(i).copied().unwrap_or(0))
        });
        for i in 0..4 {
            if i <= chunk.len() {
                let sextet = ((n >> (18 - 6 * i)) & 63) as usize;
                out.extend(alphabet.get(sextet).map(|&c| char::from(c)));
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

/// `application/x-www-form-urlencoded` escaping of a value.
pub fn form_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unreachable(why: impl Into<String>) -> IntrospectError {
    IntrospectError::Unreachable(why.into())
}

async fn fill_by(conn: &mut Conn, deadline: Instant) -> Result<usize, IntrospectError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(unreachable("timed out"));
    }
    match conn.fill(left).await {
        Ok(n) => Ok(n),
        Err(IoFail::Timeout) => Err(unreachable("timed out")),
        Err(IoFail::Io(e)) => Err(unreachable(e.to_string())),
    }
}

/// Asks the identity provider about `token`; returns its JSON answer.
pub async fn introspect(x: &Introspector, token: &str) -> Result<Value, IntrospectError> {
    let deadline = Instant::now() + x.timeout;
    let stream = match monoio::time::timeout(x.timeout, TcpStream::connect_addr(x.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(unreachable(format!("connect: {e}"))),
        Err(_) => return Err(unreachable("connect timed out")),
    };
    let mut conn = match &x.tls {
        None => Conn::new(stream, 16 * 1024),
        Some(tls) => {
            let Some(name) = tls.names.first().cloned() else {
                return Err(unreachable("no TLS server name"));
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match monoio::time::timeout(left, crate::tls::connect(tls, name, stream)).await {
                Ok(Ok(s)) => Conn::with_stream(crate::tls::Stream::Tls(Box::new(s)), 16 * 1024),
                Ok(Err(e)) => return Err(unreachable(format!("TLS handshake: {e}"))),
                Err(_) => return Err(unreachable("TLS handshake timed out")),
            }
        }
    };
    let body = format!("token={}&token_type_hint=access_token", form_escape(token));
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        x.path,
        x.host,
        x.basic,
        body.len()
    );
    let (r, _) = conn.write(req.into_bytes(), x.timeout).await;
    r.map_err(|_| unreachable("write failed"))?;
    let head = loop {
        match ResponseHead::parse(conn.buffered(), 16 * 1024, false) {
            Ok(Parsed::Complete(h, n)) => {
                conn.consume(n);
                break h;
            }
            Ok(Parsed::Partial) => {
                if fill_by(&mut conn, deadline).await? == 0 {
                    return Err(unreachable("closed before answering"));
                }
            }
            Err(_) => return Err(unreachable("malformed answer")),
        }
    };
    if head.status != 200 {
        return Err(unreachable(format!("status {}", head.status)));
    }
    let mut body = Vec::new();
    match head.framing {
        Framing::Length(n) if n <= MAX_ANSWER as u64 => {
            let n = usize::try_from(n).unwrap_or(MAX_ANSWER);
            while conn.buffered().len() < n {
                if fill_by(&mut conn, deadline).await? == 0 {
                    return Err(unreachable("truncated answer"));
                }
            }
            let answer = conn.buffered().get(..n);
            body.extend_from_slice(answer.ok_or_else(|| unreachable("truncated answer"))?);
        }
        Framing::Chunked => {
            let mut d = ChunkedDecoder::default();
            while !d.is_done() {
                let step = d
                    .step(conn.buffered())
                    .map_err(|_| unreachable("malformed chunked answer"))?;
                if let Some(r) = step.data {
                    let data = conn.buffered().get(r);
                    body.extend_from_slice(
                        data.ok_or_else(|| unreachable("malformed chunked answer"))?,
                    );
                }
                conn.consume(step.consumed);
                if body.len() > MAX_ANSWER {
                    return Err(unreachable("answer too large"));
                }
                if !d.is_done()
                    && conn.buffered().is_empty()
                    && fill_by(&mut conn, deadline).await? == 0
                {
                    return Err(unreachable("truncated answer"));
                }
            }
        }
        Framing::UntilClose => loop {
            body.extend_from_slice(conn.buffered());
            let n = conn.buffered().len();
            conn.consume(n);
            if body.len() > MAX_ANSWER {
                return Err(unreachable("answer too large"));
            }
            if fill_by(&mut conn, deadline).await? == 0 {
                break;
            }
        },
        _ => return Err(unreachable("answer too large or empty")),
    }
    serde_json::from_slice(&body).map_err(|_| unreachable("answer is not JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(base64(b"gateway:s3cret"), "Z2F0ZXdheTpzM2NyZXQ=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(form_escape("a b+c/d=é"), "a%20b%2Bc%2Fd%3D%C3%A9");
    }
}
