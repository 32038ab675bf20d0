//! What a shard tells the admin side about itself when asked (by a
//! [`super::Control::Report`] message, answered between requests): gauges,
//! counters and, for a full report, its metrics snapshot.

use super::run::Driver;
use super::state::Shard;
use crate::metrics::Snapshot;
use std::net::SocketAddr;

/// How much a report carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Gauges and counters only (cheap: `/ready`, `/shards`, `/upstreams`).
    Light,
    /// Also the complete metrics snapshot.
    Full,
    /// Also the metrics that changed since a report epoch of a run of the
    /// shard (see [`crate::metrics::ShardMetrics::snapshot_since`]); the
    /// admin side keeps each shard's last snapshot and brings it up to
    /// date, so that routes without traffic cost a shard nothing.
    Since {
        /// The run of the shard the epoch belongs to.
        instance: u64,
        /// The epoch.
        since: u64,
    },
}

/// One shard's answer.
#[derive(Debug, Clone)]
pub struct ShardReport {
    /// Shard number.
    pub id: usize,
    /// The core it is pinned to.
    pub core: Option<usize>,
    /// Its I/O driver.
    pub driver: Driver,
    /// Generation of the config it runs.
    pub generation: u64,
    /// Client connections open.
    pub connections: usize,
    /// HTTP/2 client connections open (counted in `connections` too).
    pub http2_connections: usize,
    /// HTTP/1.1 client connections waiting for their next request without a
    /// read buffer (quiet past the grace; counted in `connections` too).
    pub idle_connections: usize,
    /// HTTP/2 streams served since the shard started.
    pub http2_streams_total: u64,
    /// Requests being handled.
    pub in_flight: usize,
    /// Requests answered since the shard started (with metrics on).
    pub requests: u64,
    /// Accept-side counters per listener.
    pub listeners: Vec<ListenerReport>,
    /// Upstream connections per target.
    pub pools: Vec<PoolReport>,
    /// Rate-limit keys held.
    pub ratelimit_keys: usize,
    /// Quota messages sent to other shards.
    pub quota_sent: u64,
    /// Quota messages received from other shards.
    pub quota_received: u64,
    /// Read buffers kept for reuse by this shard's thread.
    pub free_buffers: usize,
    /// Connections waiting for their next request with their read buffer
    /// held (at most [`crate::http::conn::HELD_READS`]).
    pub held_reads: usize,
    /// Upgraded connections (WebSocket tunnels) open.
    pub websocket_tunnels: usize,
    /// Upgraded connections opened since the shard started.
    pub websocket_tunnels_total: u64,
    /// The metrics snapshot (full reports only).
    pub metrics: Option<std::sync::Arc<Snapshot>>,
    /// Circuit breakers as this shard sees them.
    pub breakers: Vec<crate::resilience::breaker::BreakerReport>,
    /// Response caches per route (routes that were requested on this shard).
    pub cache: Vec<crate::cache::CacheReport>,
    /// Retries and fallbacks per upstream name (upstreams that had any).
    pub resilience: Vec<(String, crate::resilience::retry::UpstreamStats)>,
    /// Edge-policy counters (mirror copies, refusals, preflights).
    pub edge: crate::policy::EdgeReport,
}

/// Accept-side counters of one listener on one shard.
#[derive(Debug, Clone)]
pub struct ListenerReport {
    /// Listener name.
    pub name: String,
    /// Connections open now.
    pub open: usize,
    /// Connections admitted.
    pub admitted: u64,
    /// Connections refused (max_connections share in use).
    pub refused: u64,
    /// Failed accepts.
    pub accept_errors: u64,
}

/// One upstream target's connections on one shard.
#[derive(Debug, Clone)]
pub struct PoolReport {
    /// Upstream name.
    pub upstream: String,
    /// Target address.
    pub target: SocketAddr,
    /// Idle pooled connections.
    pub idle: usize,
    /// Connections open (in use, being opened or idle).
    pub open: usize,
    /// Requests in flight to the target.
    pub outstanding: usize,
    /// Requests waiting for a connection slot.
    pub waiting: usize,
    /// `healthy`, `unhealthy` (active checks) or `ejected` (outlier
    /// detection), as the control side last told the shard.
    pub health: &'static str,
    /// Times the target was ejected (host-wide).
    pub ejections: u64,
}

/// Builds this shard's report.
pub fn report(shard: &Shard, core: Option<usize>, driver: Driver, detail: Detail) -> ShardReport {
    let cfg = shard.config();
    let listeners = shard
        .listener_stats
        .iter()
        .zip(&cfg.compiled.listeners)
        .map(|(s, l)| ListenerReport {
            name: l.name.clone(),
            open: s.open.get(),
            admitted: s.admitted.get(),
            refused: s.refused.get(),
            accept_errors: s.accept_errors.get(),
        })
        .collect();
    let pools = {
        let p = shard.pools.borrow();
        let health = shard.targets.borrow();
        cfg.compiled
            .upstreams
            .iter()
            .flat_map(|u| u.targets.iter().map(move |&t| (u, t)))
            .map(|(u, t)| {
                let (h, ejections) = health.health(u, t);
                PoolReport {
                    upstream: u.name.clone(),
                    target: t,
                    idle: p.idle_count(t),
                    open: p.open_count(t),
                    outstanding: p.outstanding_count(t),
                    waiting: p.waiting_count(t),
                    health: h.label(),
                    ejections,
                }
            })
            .collect()
    };
    let (quota_sent, quota_received, ratelimit_keys) = {
        let l = shard.limiter.borrow();
        let (s, r) = l.messages();
        (s, r, l.keys())
    };
    let metrics = shard.metrics.borrow();
    let tunnels = shard.tunnels.borrow();
    ShardReport {
        id: shard.id,
        core,
        driver,
        generation: cfg.compiled.generation,
        connections: shard.connections.get(),
        http2_connections: shard.h2_connections.get(),
        idle_connections: shard.idle_connections.get(),
        http2_streams_total: shard.h2_streams.get(),
        in_flight: shard.in_flight.get(),
        requests: metrics.requests(),
        listeners,
        pools,
        ratelimit_keys,
        quota_sent,
        quota_received,
        free_buffers: crate::http::conn::free_buffers(),
        held_reads: crate::http::conn::held_reads(),
        metrics: match detail {
            Detail::Light => None,
            Detail::Full => Some(std::sync::Arc::new(metrics.snapshot())),
            Detail::Since { instance, since } => {
                drop(metrics);
                let changed = shard.metrics.borrow_mut().snapshot_since(instance, since);
                Some(std::sync::Arc::new(changed))
            }
        },
        breakers: shard
            .breakers
            .borrow()
            .report(crate::ratelimit::limiter::now_ns()),
        cache: shard.cache.borrow().report(),
        resilience: shard
            .retry_budgets
            .borrow()
            .stats
            .iter()
            .zip(&cfg.compiled.upstreams)
            .filter(|(s, _)| **s != Default::default())
            .map(|(s, u)| (u.name.clone(), *s))
            .collect(),
        websocket_tunnels: tunnels.open(),
        websocket_tunnels_total: tunnels.opened_total,
        edge: shard.edge.counters.report(),
    }
}
