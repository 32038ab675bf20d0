//! Request mirroring (shadow traffic): a copy of a sample of a route's
//! requests goes to another upstream in a task of its own (`monoio::spawn`
//! on the shard), its answer read up to the head and discarded.
//!
//! It never delays or fails the real request: the copy is prepared from
//! what is already in memory (the upstream head the real request gets, and
//! its body only when it is whole in memory — read by validation, or a
//! `Content-Length` body of at most `max_body_bytes` that arrived with the
//! head; a request whose body is still on the wire is not mirrored and
//! counted as `skipped_body`), then spawned. Copies in flight are bounded
//! per shard and route (`max_concurrency`; past it the copy is skipped and
//! counted as `skipped_busy`); each copy is abandoned after `timeout_ms`.
//! Copies use a fresh connection each (`connection: close`), never the
//! real traffic's pool.

use super::{EdgeCounters, ShardEdge};
use crate::compiled::UpstreamPlan;
use crate::config::Mirror;
use crate::http::{Conn, Framing, RequestHead};
use crate::proxy::Exchange;
use monoio::net::TcpStream;
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A compiled mirror.
#[derive(Debug, Clone)]
pub struct MirrorPlan {
    /// The shadow upstream (index in the running config).
    pub upstream: usize,
    /// Mirrored when a draw below 2^32 falls under this.
    threshold: u64,
    max_concurrency: usize,
    timeout: Duration,
    max_body_bytes: u64,
}

impl MirrorPlan {
    /// Compiles a mirror; `upstream_index` resolves the name.
    pub fn compile(
        m: &Mirror,
        upstream_index: &dyn Fn(&str) -> Option<usize>,
    ) -> Result<MirrorPlan, String> {
        let upstream = upstream_index(&m.upstream)
            .ok_or_else(|| format!("unknown upstream {:?}", m.upstream))?;
        if !(0.0..=1.0).contains(&m.sample_ratio) {
            return Err("sample_ratio must be between 0.0 and 1.0".into());
        }
        if m.max_concurrency == 0 || m.timeout_ms == 0 {
            return Err("max_concurrency and timeout_ms must be at least 1".into());
        }
        Ok(MirrorPlan {
            upstream,
            threshold: (m.sample_ratio * (1u64 << 32) as f64) as u64,
            max_concurrency: m.max_concurrency,
            timeout: Duration::from_millis(m.timeout_ms),
            max_body_bytes: m.max_body_bytes,
        })
    }
}

/// Copies in flight for one route on one shard; given back when a copy ends.
struct Slot(Rc<Cell<usize>>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// Fires a copy of `req` (whose upstream target is `target`) at the
/// mirror's upstream when it is sampled, has room, and its body is in
/// memory. Returns at once.
#[allow(clippy::too_many_arguments)]
pub fn fire(
    state: &ShardEdge,
    plan: &MirrorPlan,
    route: usize,
    up: &UpstreamPlan,
    req: &RequestHead,
    target: &str,
    client: &Conn,
    ex: &Exchange<'_>,
) {
    let draw = state.random();
    if draw & 0xffff_ffff >= plan.threshold {
        return;
    }
    let counters = &state.counters;
    let body: Option<&[u8]> = match (req.framing, &ex.body) {
        (Framing::None, _) => Some(&[]),
        (_, Some(b)) if b.len() as u64 <= plan.max_body_bytes => Some(b),
        (Framing::Length(n), None) if n <= plan.max_body_bytes && !ex.body_consumed => {
            client.buffered().get(..n as usize)
        }
        _ => None,
    };
    let Some(body) = body else {
        EdgeCounters::bump(&counters.mirror_skipped_body);
        return;
    };
    let in_flight = state.mirror_slots(route);
    if in_flight.get() >= plan.max_concurrency {
        EdgeCounters::bump(&counters.mirror_skipped_busy);
        return;
    }
    let Some(&addr) = up
        .targets
        .get((draw >> 32) as usize % up.targets.len().max(1))
    else {
        EdgeCounters::bump(&counters.mirror_failed);
        return;
    };
    let mut bytes = crate::proxy::upstream_head(req, target, ex, addr);
    // The head ends in an empty line: say the connection closes, then end it.
    bytes.truncate(bytes.len().saturating_sub(2));
    bytes.extend_from_slice(b"connection: close\r\n\r\n");
    bytes.extend_from_slice(body);
    in_flight.set(in_flight.get() + 1);
    let slot = Slot(in_flight);
    EdgeCounters::bump(&counters.mirror_sent);
    let counters = counters.clone();
    let timeout = plan.timeout;
    let head_request = req.method() == "HEAD";
    monoio::spawn(async move {
        let _slot = slot;
        let outcome = send(addr, bytes, timeout, head_request).await;
        EdgeCounters::bump(match outcome {
            Outcome::Answered => &counters.mirror_answered,
            Outcome::Timeout => &counters.mirror_timeout,
            Outcome::Failed => &counters.mirror_failed,
        });
    });
}

enum Outcome {
    Answered,
    Timeout,
    Failed,
}

/// Sends one copy and reads the answer's head, within `timeout` in all.
async fn send(
    addr: std::net::SocketAddr,
    bytes: Vec<u8>,
    timeout: Duration,
    head_request: bool,
) -> Outcome {
    let deadline = Instant::now() + timeout;
    let stream = match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return Outcome::Failed,
        Err(_) => return Outcome::Timeout,
    };
    let _ = stream.set_nodelay(true);
    let mut conn = Conn::new(stream, 4096);
    let left = deadline.saturating_duration_since(Instant::now());
    let (r, _) = conn.write(bytes, left).await;
    if r.is_err() {
        return Outcome::Failed;
    }
    match crate::proxy::read_response_head(&mut conn, deadline, head_request).await {
        Ok(_) => Outcome::Answered,
        Err(crate::proxy::ReadHeadError::Timeout) => Outcome::Timeout,
        Err(_) => Outcome::Failed,
    }
}
