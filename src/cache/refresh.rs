//! The refresh half of `stale-while-revalidate`: once the stale copy has
//! been sent, the request that found it fetches the route's upstream again
//! into the store, without a client (its own answer is already complete).
//! One try (and one more on a fresh connection when a pooled one turns out
//! closed), under the upstream's breaker, bounded by its timeouts; the body
//! is kept up to `max_object_bytes`, never more.

use super::Tap;
use crate::compiled::{upstream_target, RoutePlan};
use crate::http::body::BodyTap;
use crate::http::chunked::ChunkedDecoder;
use crate::http::{Conn, Framing, RequestHead};
use crate::proxy::{connect_within, read_response_head, upstream_head, Exchange, InFlight, Lease};
use crate::shard::{Shard, ShardConfig};
use std::ops::Range;
use std::time::Instant;

/// Fetches `req` from `route`'s upstream into `tap`; true when the tap holds
/// a complete answer afterwards.
pub(crate) async fn fetch(
    shard: &Shard,
    cfg: &ShardConfig,
    route: &RoutePlan,
    params: &[Range<usize>],
    req: &RequestHead,
    ex: &Exchange<'_>,
    tap: &mut Tap,
) -> bool {
    let Some(id) = route.upstream else {
        return false;
    };
    let (Some(up), Some(cursor)) = (cfg.compiled.upstreams.get(id), cfg.cursors.get(id)) else {
        return false;
    };
    let stripped;
    let query = match req.query() {
        Some(q) if !route.strip_query.is_empty() => {
            stripped = crate::auth::strip_query_params(q, &route.strip_query);
            stripped.as_deref()
        }
        q => q,
    };
    let target = upstream_target(&route.path_edit, req.path(), query, params);
    let Ok(admitted) = crate::resilience::admit_call(shard, up) else {
        return false;
    };
    let Ok(in_flight) = InFlight::pick(shard, up, cursor) else {
        return false;
    };
    let addr = in_flight.addr();
    let head = upstream_head(req, &target, ex, addr);
    let mut lease = Lease::new(shard, addr);
    let mut pooled = match lease.checkout(up) {
        Ok(p) => p,
        Err(_) => match lease.wait(up, up.queue_timeout).await {
            Ok(p) => p,
            Err(_) => return false,
        },
    };
    let mut status = 0;
    let mut done = false;
    for attempt in 0..2 {
        let reused = pooled.is_some();
        let mut upc = match pooled.take() {
            Some(c) => c,
            None => match connect_within(up, addr, up.connect_timeout).await {
                Ok(c) => c,
                Err(_) => break,
            },
        };
        let deadline = Instant::now() + up.timeout;
        let (sent, _) = upc.write(head.clone(), up.timeout).await;
        let resp = match sent {
            Ok(()) => loop {
                match read_response_head(&mut upc, deadline, false).await {
                    Ok(r) if (100..200).contains(&r.status) => continue,
                    other => break other,
                }
            },
            Err(_) => Err(crate::proxy::ReadHeadError::ClosedEarly),
        };
        let resp = match resp {
            Ok(r) => r,
            Err(crate::proxy::ReadHeadError::ClosedEarly) if reused && attempt == 0 => {
                shard.pools.borrow_mut().drop_idle(addr);
                continue;
            }
            Err(_) => break,
        };
        status = resp.status;
        tap.on_head(&resp, req);
        if !tap.capturing() {
            // Not storable: the connection is closed with the body unread.
            break;
        }
        if read_body(&mut upc, resp.framing, tap, up.timeout).await {
            tap.complete();
            done = true;
            if resp.keep_alive && upc.buffered().is_empty() {
                lease.pool(upc, up.max_idle);
            }
        }
        break;
    }
    crate::resilience::record_call(shard, up, admitted, status, status == 0 || status >= 500);
    done && tap.capturing()
}

/// Reads a response body into `tap`, stopping (false) once the tap stops
/// keeping it, or on a failure.
async fn read_body(
    upc: &mut Conn,
    framing: Framing,
    tap: &mut Tap,
    timeout: std::time::Duration,
) -> bool {
    match framing {
        Framing::None => true,
        Framing::Length(n) => {
            let mut left = n;
            while left > 0 {
                if upc.buffered().is_empty() && !matches!(upc.fill(timeout).await, Ok(k) if k > 0) {
                    return false;
                }
                let take = (upc.buffered().len() as u64).min(left) as usize;
                tap.feed(upc.buffered().get(..take).unwrap_or_default());
                upc.consume(take);
                left -= take as u64;
                if !tap.capturing() {
                    return false;
                }
            }
            true
        }
        Framing::Chunked => {
            let mut dec = ChunkedDecoder::default();
            loop {
                let Ok(step) = dec.step(upc.buffered()) else {
                    return false;
                };
                if let Some(r) = step.data {
                    tap.feed(upc.buffered().get(r).unwrap_or_default());
                }
                upc.consume(step.consumed);
                if dec.is_done() {
                    return true;
                }
                if !tap.capturing() {
                    return false;
                }
                if upc.buffered().is_empty() && !matches!(upc.fill(timeout).await, Ok(k) if k > 0) {
                    return false;
                }
            }
        }
        Framing::UntilClose => loop {
            let n = upc.buffered().len();
            tap.feed(upc.buffered());
            upc.consume(n);
            if !tap.capturing() {
                return false;
            }
            match upc.fill(timeout).await {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        },
    }
}
