//! Upgraded connections (WebSocket and other `Upgrade` protocols): which
//! requests a route lets upgrade, the per-shard bound on open tunnels, and
//! the tunnel itself, which moves bytes both ways between the client and the
//! upstream after a `101 Switching Protocols` until either side closes.
//!
//! The tunnel is generic over monoio's rent-style streams, so it runs over
//! plain TCP and over any stream that wraps it (TLS) alike. It runs on the
//! shard, in the client connection's task: no thread, no lock.

use crate::http::head::is_hop_by_hop;
use crate::http::{Framing, RequestHead, ResponseHead};
use crate::shard::Shard;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt, CancelableAsyncReadRent, Canceller};
use std::collections::HashMap;
use std::io;
use std::time::Duration;

/// Read buffer per direction of a tunnel.
const TUNNEL_BUF: usize = 16 * 1024;

/// A route's upgrade settings, compiled from its `websocket` block.
#[derive(Debug, Clone, PartialEq)]
pub struct UpgradePlan {
    /// A tunnel with no byte in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Most tunnels open at once on the route, all shards together.
    pub max_tunnels: usize,
    /// Accepted `Upgrade` protocol names, lower case, without version.
    pub protocols: Vec<String>,
}

impl UpgradePlan {
    /// Compiles a route's `websocket` block.
    pub fn compile(ws: &crate::config::WebSocket) -> UpgradePlan {
        UpgradePlan {
            idle_timeout: Duration::from_millis(ws.idle_timeout_ms.max(1)),
            max_tunnels: ws.max_tunnels,
            protocols: ws.upgrades.iter().map(|u| u.to_ascii_lowercase()).collect(),
        }
    }

    /// True when `req` is an upgrade request this route tunnels: HTTP/1.1,
    /// no request body, `Connection: upgrade`, and every protocol in every
    /// `Upgrade` field one of the route's.
    pub fn accepts(&self, req: &RequestHead) -> bool {
        req.version == 1
            && req.framing == Framing::None
            && requested(req)
            && req
                .headers()
                .filter(|(n, _)| n.eq_ignore_ascii_case(b"upgrade"))
                .all(|(_, v)| self.allows_all(v))
    }

    /// True when `value` (an `Upgrade` field) lists protocols and all are accepted.
    pub fn allows_all(&self, value: &[u8]) -> bool {
        let mut listed = protocols(value).peekable();
        listed.peek().is_some()
            && listed.all(|p| {
                self.protocols
                    .iter()
                    .any(|a| p.eq_ignore_ascii_case(a.as_bytes()))
            })
    }
}

/// The protocol names (without `/version`) listed in an `Upgrade` value.
fn protocols(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|p| {
            p.split(|&b| b == b'/')
                .next()
                .unwrap_or_default()
                .trim_ascii()
        })
        .filter(|p| !p.is_empty())
}

/// True when `req` asks for a protocol upgrade at all (`Upgrade` present and
/// named in `Connection`).
pub fn requested(req: &RequestHead) -> bool {
    req.header("upgrade").is_some() && req.connection_names().contains(b"upgrade")
}

/// True when the upstream's `101` switched to a protocol the client asked
/// for (the request's `Upgrade` fields were all accepted, so that protocol
/// is allowed by the route too).
pub fn switched_as_asked(req: &RequestHead, answer_upgrade: Option<&[u8]>) -> bool {
    let Some(answer) = answer_upgrade else {
        return false;
    };
    let mut chosen = protocols(answer);
    let (Some(p), None) = (chosen.next(), chosen.next()) else {
        return false;
    };
    req.headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"upgrade"))
        .any(|(_, v)| protocols(v).any(|asked| asked.eq_ignore_ascii_case(p)))
}

/// The client's `101 Switching Protocols` head from the upstream's: its end-
/// to-end fields (`Sec-WebSocket-Accept`, `-Protocol`, `-Extensions`, ...)
/// and its `Upgrade` field are passed, with `Connection: upgrade`; other
/// hop-by-hop fields and those named in its `Connection` are not. The
/// request id and `response_headers` (rate-limit state) are added.
pub fn switching_head(resp: &ResponseHead, request_id: &str, response_headers: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 101 ");
    if resp.reason().is_empty() {
        out.extend_from_slice(b"Switching Protocols");
    } else {
        out.extend_from_slice(resp.reason());
    }
    out.extend_from_slice(b"\r\n");
    let connection = resp.connection_names();
    let mut has_request_id = false;
    for (name, value) in resp.headers() {
        let upgrade = name.eq_ignore_ascii_case(b"upgrade");
        if !upgrade && (is_hop_by_hop(name) || connection.contains(name)) {
            continue;
        }
        has_request_id |= name.eq_ignore_ascii_case(b"x-request-id");
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: upgrade\r\n");
    if !has_request_id {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(request_id.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(response_headers.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// Tunnels open on one shard, per route name (names survive a reload, so a
/// tunnel opened under the old config still counts under the new one).
#[derive(Debug, Default)]
pub struct Tunnels {
    open: HashMap<String, usize>,
    /// Tunnels opened on this shard since start.
    pub opened_total: u64,
}

impl Tunnels {
    /// Tunnels open right now on this shard, all routes together.
    pub fn open(&self) -> usize {
        self.open.values().sum()
    }
}

/// A claim on one of a route's tunnel slots on this shard; given back when
/// dropped (the tunnel ended, or the upstream refused the upgrade).
pub struct TunnelSlot<'a> {
    shard: &'a Shard,
    route: String,
}

impl<'a> TunnelSlot<'a> {
    /// Takes a slot of `route`'s share of `max_tunnels` on this shard, or
    /// `None` when the share is in use.
    pub fn take(shard: &'a Shard, route: &str, plan: &UpgradePlan) -> Option<TunnelSlot<'a>> {
        let share = super::pool::share(plan.max_tunnels, shard.shards, shard.id);
        let mut tunnels = shard.tunnels.borrow_mut();
        let n = tunnels.open.entry(route.to_string()).or_default();
        if *n >= share {
            return None;
        }
        *n += 1;
        Some(TunnelSlot {
            shard,
            route: route.to_string(),
        })
    }
}

impl Drop for TunnelSlot<'_> {
    fn drop(&mut self) {
        let mut tunnels = self.shard.tunnels.borrow_mut();
        if let Some(n) = tunnels.open.get_mut(&self.route) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                tunnels.open.remove(&self.route);
            }
        }
    }
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A side closed (end of stream), and the other side's remaining bytes
    /// were passed on until it closed too.
    Closed,
    /// No byte moved in either direction for the idle timeout.
    Idle,
    /// A read or write failed (a reset, or a peer that stopped reading).
    Failed,
}

/// What passed through a tunnel.
#[derive(Debug, Clone, Copy)]
pub struct TunnelEnd {
    /// Bytes from the client to the upstream.
    pub to_upstream: u64,
    /// Bytes from the upstream to the client.
    pub to_client: u64,
    /// Why it ended.
    pub ended: Ended,
}

/// What one read brought.
enum Got {
    Bytes,
    Eof,
    Nothing,
    Failed,
}

fn got(res: &io::Result<usize>, cancelled: bool) -> Got {
    match res {
        Ok(0) => Got::Eof,
        Ok(_) => Got::Bytes,
        // A cancelled read that brought nothing (ECANCELED, or an error
        // the next read will report again).
        Err(_) if cancelled => Got::Nothing,
        Err(_) => Got::Failed,
    }
}

/// Moves bytes both ways between `client` and `upstream` until either side
/// closes or nothing moves for `idle`. `from_client` and `from_upstream`
/// are bytes already read past the heads on each side; they are sent first.
///
/// Both reads wait at once; when one brings bytes, the other is cancelled
/// (keeping anything it read meanwhile), the bytes are written, and both
/// reads wait again, so each stream has one operation at a time and no
/// stream needs splitting. A write that the peer does not take within
/// `idle` ends the tunnel. When a side closes, the other's write side is
/// shut down and its remaining bytes are still passed on (half-close).
pub async fn tunnel<C, U>(
    client: &mut C,
    from_client: Vec<u8>,
    upstream: &mut U,
    from_upstream: Vec<u8>,
    idle: Duration,
) -> TunnelEnd
where
    C: CancelableAsyncReadRent + AsyncWriteRent,
    U: CancelableAsyncReadRent + AsyncWriteRent,
{
    let mut end = TunnelEnd {
        to_upstream: 0,
        to_client: 0,
        ended: Ended::Closed,
    };
    let mut cbuf = from_client;
    let mut ubuf = from_upstream;
    if !cbuf.is_empty() {
        match send(upstream, cbuf, idle).await {
            Ok((n, b)) => (end.to_upstream, cbuf) = (n, b),
            Err(e) => return TunnelEnd { ended: e, ..end },
        }
    }
    if !ubuf.is_empty() {
        match send(client, ubuf, idle).await {
            Ok((n, b)) => (end.to_client, ubuf) = (n, b),
            Err(e) => return TunnelEnd { ended: e, ..end },
        }
    }
    cbuf.reserve(TUNNEL_BUF);
    ubuf.reserve(TUNNEL_BUF);
    loop {
        cbuf.clear();
        ubuf.clear();
        let (c, u, timed_out) = {
            let cc = Canceller::new();
            let cu = Canceller::new();
            let rc = client.cancelable_read(cbuf, cc.handle());
            let ru = upstream.cancelable_read(ubuf, cu.handle());
            let mut rc = std::pin::pin!(rc);
            let mut ru = std::pin::pin!(ru);
            monoio::select! {
                r = &mut rc => {
                    cu.cancel();
                    let o = ru.await;
                    ((got(&r.0, false), r.1), (got(&o.0, true), o.1), false)
                }
                r = &mut ru => {
                    cc.cancel();
                    let o = rc.await;
                    ((got(&o.0, true), o.1), (got(&r.0, false), r.1), false)
                }
                _ = monoio::time::sleep(idle) => {
                    cc.cancel();
                    cu.cancel();
                    let a = rc.await;
                    let b = ru.await;
                    ((got(&a.0, true), a.1), (got(&b.0, true), b.1), true)
                }
            }
        };
        let ((c_got, c_buf), (u_got, u_buf)) = (c, u);
        cbuf = c_buf;
        ubuf = u_buf;
        if matches!(c_got, Got::Bytes) {
            match send(upstream, cbuf, idle).await {
                Ok((n, b)) => (end.to_upstream, cbuf) = (end.to_upstream + n, b),
                Err(e) => return TunnelEnd { ended: e, ..end },
            }
        }
        if matches!(u_got, Got::Bytes) {
            match send(client, ubuf, idle).await {
                Ok((n, b)) => (end.to_client, ubuf) = (end.to_client + n, b),
                Err(e) => return TunnelEnd { ended: e, ..end },
            }
        }
        match (c_got, u_got) {
            (Got::Failed, _) | (_, Got::Failed) => {
                end.ended = Ended::Failed;
                return end;
            }
            (Got::Eof, _) => {
                let _ = upstream.shutdown().await;
                let (n, ended) = drain(upstream, client, ubuf, idle).await;
                end.to_client += n;
                end.ended = ended;
                return end;
            }
            (_, Got::Eof) => {
                let _ = client.shutdown().await;
                let (n, ended) = drain(client, upstream, cbuf, idle).await;
                end.to_upstream += n;
                end.ended = ended;
                return end;
            }
            (Got::Nothing, Got::Nothing) if timed_out => {
                end.ended = Ended::Idle;
                return end;
            }
            _ => {}
        }
    }
}

/// Writes all of `buf` to `dst` within `idle`: the bytes written and the buffer back.
async fn send<D: AsyncWriteRent>(
    dst: &mut D,
    buf: Vec<u8>,
    idle: Duration,
) -> Result<(u64, Vec<u8>), Ended> {
    let len = buf.len() as u64;
    match monoio::time::timeout(idle, dst.write_all(buf)).await {
        Ok((Ok(_), buf)) => Ok((len, buf)),
        Ok((Err(_), _)) => Err(Ended::Failed),
        Err(_) => Err(Ended::Idle),
    }
}

/// Passes what `src` still sends to `dst` (whose peer has closed its side)
/// until `src` closes or is quiet for `idle`; returns the bytes passed.
async fn drain<S, D>(src: &mut S, dst: &mut D, buf: Vec<u8>, idle: Duration) -> (u64, Ended)
where
    S: CancelableAsyncReadRent,
    D: AsyncWriteRent,
{
    let mut buf = buf;
    let mut passed = 0;
    loop {
        buf.clear();
        let (res, b, timed_out) = {
            let canceller = Canceller::new();
            let read = src.cancelable_read(buf, canceller.handle());
            let mut read = std::pin::pin!(read);
            monoio::select! {
                r = &mut read => (r.0, r.1, false),
                _ = monoio::time::sleep(idle) => {
                    canceller.cancel();
                    let r = read.await;
                    (r.0, r.1, true)
                }
            }
        };
        buf = b;
        match got(&res, timed_out) {
            Got::Bytes => match send(dst, buf, idle).await {
                Ok((n, b)) => (passed, buf) = (passed + n, b),
                Err(e) => return (passed, e),
            },
            Got::Eof => {
                let _ = dst.shutdown().await;
                return (passed, Ended::Closed);
            }
            Got::Nothing => return (passed, Ended::Idle),
            Got::Failed => return (passed, Ended::Failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Parsed;

    fn plan(protocols: &[&str]) -> UpgradePlan {
        UpgradePlan {
            idle_timeout: Duration::from_secs(1),
            max_tunnels: 1,
            protocols: protocols.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn req(s: &str) -> RequestHead {
        match RequestHead::parse(s.as_bytes(), 8192, 100) {
            Ok(Parsed::Complete(h, _)) => h,
            _ => panic!("test request did not parse"),
        }
    }

    #[test]
    fn accepts_only_listed_protocols_with_connection_upgrade() {
        let p = plan(&["websocket"]);
        let ws = "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\n";
        assert!(p.accepts(&req(ws)));
        let no_conn = "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n";
        assert!(!p.accepts(&req(no_conn)));
        let other = "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n";
        assert!(!p.accepts(&req(other)));
        let mixed =
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket, h2c\r\n\r\n";
        assert!(!p.accepts(&req(mixed)));
        let http10 =
            "GET / HTTP/1.0\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert!(!p.accepts(&req(http10)));
        let body = "POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 1\r\n\r\nx";
        assert!(!p.accepts(&req(body)));
        let versioned = plan(&["websocket", "tls"]);
        let tls = "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: TLS/1.3, websocket\r\n\r\n";
        assert!(versioned.accepts(&req(tls)));
    }

    #[test]
    fn the_101_must_name_a_protocol_the_client_asked_for() {
        let r =
            req("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(switched_as_asked(&r, Some(b"WebSocket")));
        assert!(!switched_as_asked(&r, Some(b"h2c")));
        assert!(!switched_as_asked(&r, Some(b"websocket, h2c")));
        assert!(!switched_as_asked(&r, None));
    }
}
