//! JWKS documents fetched over HTTP: the initial fetch at config load, then
//! a refresher thread per config that refetches every `refresh_s` and, at
//! most once per [`MIN_REFETCH`], when a shard sees a token whose `kid` it
//! does not know. New key sets reach shards as control messages, so the
//! request path never waits on the network for keys.
//!
//! `https://` URLs are fetched with rustls, trusting the bundled Mozilla
//! roots (webpki-roots) or the CA certificates of `ca_file`.

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
    match split_url(url)? {
        (false, addr, host, path) => Ok((addr, host, path)),
        (true, ..) => Err(format!("{url:?}: only http:// URLs are supported here")),
    }
}

/// Splits an `http://` or `https://` URL into (TLS?, host:port, host header, path).
pub fn split_url(url: &str) -> Result<(bool, String, String, String), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{url:?}: expected an http:// or https:// URL"));
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    if authority.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    Ok((tls, addr, authority.to_string(), path))
}

fn tls_config(ca_file: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = crate::tls::root_store(ca_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Sends `request` and reads the whole answer (bounded), over TLS when a
/// config and server name are given.
fn exchange(
    tls: Option<(Arc<rustls::ClientConfig>, &str)>,
    tcp: TcpStream,
    request: &[u8],
) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let limit = MAX_DOCUMENT as u64 + 64 * 1024;
    let result = match tls {
        None => {
            let mut s = tcp;
            s.write_all(request)?;
            s.take(limit).read_to_end(&mut raw)
        }
        Some((config, host)) => {
            let name = rustls_pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let conn =
                rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
            let mut s = rustls::StreamOwned::new(conn, tcp);
            s.write_all(request)?;
            s.take(limit).read_to_end(&mut raw)
        }
    };
    match result {
        Ok(_) => Ok(raw),
        // A peer that closes without close_notify: the framing checks below
        // still catch a truncated answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(raw),
        Err(e) => Err(e),
    }
}

/// Fetches a JWKS document with a blocking HTTP/1.1 GET (control threads only).
pub fn fetch(url: &str, ca_file: Option<&str>) -> Result<Vec<JwtKey>, String> {
    let (tls, addr, host, path) = split_url(url)?;
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| format!("{url}: cannot resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: resolves to nothing"))?;
    let s = TcpStream::connect_timeout(&sock, FETCH_TIMEOUT).map_err(|e| format!("{url}: {e}"))?;
    let _ = s.set_read_timeout(Some(FETCH_TIMEOUT));
    let _ = s.set_write_timeout(Some(FETCH_TIMEOUT));
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    let tls = if tls {
        let server = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
        Some((
            tls_config(ca_file).map_err(|e| format!("{url}: {e}"))?,
            server,
        ))
    } else {
        None
    };
    let raw = exchange(tls, s, req.as_bytes()).map_err(|e| format!("{url}: {e}"))?;
    let (head, n) = match ResponseHead::parse(&raw, 64 * 1024, false) {
        Ok(Parsed::Complete(h, n)) => (h, n),
        _ => return Err(format!("{url}: malformed response")),
    };
    if head.status != 200 {
        return Err(format!("{url}: status {}", head.status));
    }
    let body = raw.get(n..).unwrap_or_default();
    let text = match head.framing {
        Framing::Chunked => {
            let mut d = ChunkedDecoder::default();
            let mut out = Vec::new();
            let mut pos = 0;
            while !d.is_done() {
                let rest = body.get(pos..).unwrap_or_default();
                let step = d
                    .step(rest)
                    .map_err(|_| format!("{url}: bad chunked body"))?;
                if let Some(r) = step.data {
                    let data = rest
                        .get(r)
                        .ok_or_else(|| format!("{url}: bad chunked body"))?;
                    out.extend_from_slice(data);
                }
                if step.consumed == 0 {
                    return Err(format!("{url}: truncated body"));
                }
                pos += step.consumed;
            }
            out
        }
        Framing::Length(len) => usize::try_from(len)
            .ok()
            .and_then(|len| body.get(..len))
            .ok_or_else(|| format!("{url}: truncated body"))?
            .to_vec(),
        _ => body.to_vec(),
    };
    let text = String::from_utf8(text).map_err(|_| format!("{url}: body is not UTF-8"))?;
    keys_from_document(&text)
}

/// When a source refreshed at `now` is due again. A period too long for the
/// clock (`refresh_s` comes from config) means never.
fn next_due(now: Instant, refresh: Duration) -> Instant {
    now.checked_add(refresh)
        .or_else(|| now.checked_add(NEVER))
        .unwrap_or(now)
}

/// A period treated as never: a hundred years.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// One JWKS URL to keep fresh: the authenticator's index, URL and period.
#[derive(Debug, Clone)]
pub struct Source {
    /// Index of the authenticator in its [`super::AuthPlan`].
    pub authenticator: usize,
    /// The document's URL.
    pub url: String,
    /// Refresh period.
    pub refresh: Duration,
    /// CA certificates for an `https://` URL (default: bundled roots).
    pub ca_file: Option<String>,
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
        .map(|s| (s.authenticator, next_due(now, s.refresh)))
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
            due.insert(s.authenticator, next_due(now, s.refresh));
            last.insert(s.authenticator, now);
            match fetch(&s.url, s.ca_file.as_deref()) {
                Ok(keys) => publish(s.authenticator, Arc::new(keys)),
                Err(e) => {
                    eprintln!("shardgate: JWKS refresh failed, keeping the previous keys: {e}")
                }
            }
        }
    }
}
