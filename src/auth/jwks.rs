//! JWKS documents fetched over HTTP: the initial fetch at config load, then
//! a refresher thread per config that refetches every `refresh_s` and, at
//! most once per [`MIN_REFETCH`], when a shard sees a token whose `kid` it
//! does not know. New key sets reach shards as control messages, so the
//! request path never waits on the network for keys.
//!
//! Plain `http://` URLs only for now (an identity provider on the same
//! network or a sidecar); `https://` needs TLS, which the gateway does not
//! have yet, and is refused at config load.

use super::JwtKey;
use crate::http::chunked::ChunkedDecoder;
use crate::http::{Framing, Parsed, ResponseHead};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use jsonwebtoken::{jwk::JwkSet, DecodingKey};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest JWKS document accepted.
const MAX_DOCUMENT: usize = 1 << 20;
/// Time allowed for one fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Unknown-`kid` refetches of one document are at least this far apart.
pub const MIN_REFETCH: Duration = Duration::from_secs(5);

/// A key set shared by the shards of one config.
pub type KeySet = Arc<Vec<JwtKey>>;

/// Parses a JWKS document into verification keys.
pub fn keys_from_document(text: &str) -> Result<Vec<JwtKey>, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?;
        keys.push(JwtKey {
            kid: jwk.common.key_id.clone(),
            key,
        });
    }
    if keys.is_empty() {
        return Err("the document holds no keys".into());
    }
    Ok(keys)
}

/// Splits `http://host:port/path` into (host:port, host header, path).
pub fn split_http_url(url: &str) -> Result<(String, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    if authority.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((addr, authority.to_string(), path))
}

/// Fetches a JWKS document with a blocking HTTP/1.1 GET (control threads only).
pub fn fetch(url: &str) -> Result<Vec<JwtKey>, String> {
    let (addr, host, path) = split_http_url(url)?;
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| format!("{url}: cannot resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: resolves to nothing"))?;
    let mut s =
        TcpStream::connect_timeout(&sock, FETCH_TIMEOUT).map_err(|e| format!("{url}: {e}"))?;
    let _ = s.set_read_timeout(Some(FETCH_TIMEOUT));
    let _ = s.set_write_timeout(Some(FETCH_TIMEOUT));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("{url}: {e}"))?;
    let mut raw = Vec::new();
    s.take(MAX_DOCUMENT as u64 + 64 * 1024)
        .read_to_end(&mut raw)
        .map_err(|e| format!("{url}: {e}"))?;
    let (head, n) = match ResponseHead::parse(&raw, 64 * 1024, false) {
        Ok(Parsed::Complete(h, n)) => (h, n),
        _ => return Err(format!("{url}: malformed response")),
    };
    if head.status != 200 {
        return Err(format!("{url}: status {}", head.status));
    }
    let body = &raw[n..];
    let text = match head.framing {
        Framing::Chunked => {
            let mut d = ChunkedDecoder::default();
            let mut out = Vec::new();
            let mut pos = 0;
            while !d.is_done() {
                let step = d
                    .step(&body[pos..])
                    .map_err(|_| format!("{url}: bad chunked body"))?;
                if let Some(r) = step.data {
                    out.extend_from_slice(&body[pos + r.start..pos + r.end]);
                }
                if step.consumed == 0 {
                    return Err(format!("{url}: truncated body"));
                }
                pos += step.consumed;
            }
            out
        }
        Framing::Length(len) => body
            .get(..len as usize)
            .ok_or_else(|| format!("{url}: truncated body"))?
            .to_vec(),
        _ => body.to_vec(),
    };
    let text = String::from_utf8(text).map_err(|_| format!("{url}: body is not UTF-8"))?;
    keys_from_document(&text)
}

/// One JWKS URL to keep fresh: the authenticator's index, URL and period.
#[derive(Debug, Clone)]
pub struct Source {
    /// Index of the authenticator in its [`super::AuthPlan`].
    pub authenticator: usize,
    /// The document's URL.
    pub url: String,
    /// Refresh period.
    pub refresh: Duration,
}

/// Runs until every sender of `refetch` is gone (the config was replaced),
/// refreshing each source on its period or on request, and handing new key
/// sets to `publish`.
pub fn refresher(sources: Vec<Source>, refetch: Receiver<usize>, publish: impl Fn(usize, KeySet)) {
    if sources.is_empty() {
        return;
    }
    let now = Instant::now();
    let mut due: HashMap<usize, Instant> = sources
        .iter()
        .map(|s| (s.authenticator, now + s.refresh))
        .collect();
    let mut last: HashMap<usize, Instant> =
        sources.iter().map(|s| (s.authenticator, now)).collect();
    loop {
        let next = due.values().min().copied().unwrap_or(now);
        let wait = next.saturating_duration_since(Instant::now());
        let wanted: Option<usize> = match refetch.recv_timeout(wait) {
            Ok(i) => last
                .get(&i)
                .is_none_or(|t| t.elapsed() >= MIN_REFETCH)
                .then_some(i),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let now = Instant::now();
        for s in &sources {
            let is_due = due.get(&s.authenticator).is_some_and(|d| *d <= now);
            if !is_due && wanted != Some(s.authenticator) {
                continue;
            }
            due.insert(s.authenticator, now + s.refresh);
            last.insert(s.authenticator, now);
            match fetch(&s.url) {
                Ok(keys) => publish(s.authenticator, Arc::new(keys)),
                Err(e) => {
                    eprintln!("shardgate: JWKS refresh failed, keeping the previous keys: {e}")
                }
            }
        }
    }
}
