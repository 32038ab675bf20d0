//! What one shard owns: its current compiled config, its upstream pools and
//! balancing cursors, and its lifecycle flags. Shared only within the shard's
//! thread (`Rc`, `Cell`, `RefCell`); nothing here is `Sync`.

use super::notify::Notify;
use crate::auth::{jwks::KeySet, TokenCache};
use crate::compiled::Compiled;
use crate::proxy::pool::Pools;
use crate::ratelimit::limiter::Limiter;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// The config a shard serves, with the shard-local state tied to it.
pub struct ShardConfig {
    /// The compiled config (shared read-only by all shards).
    pub compiled: Arc<Compiled>,
    /// Round-robin cursor per upstream, this shard only.
    pub cursors: Vec<Cell<usize>>,
}

/// Accept-side counters of one listener on one shard, kept for the life of
/// the shard's runtime (what `/shards` and `/metrics` report once they exist;
/// the shard logs them when it stops).
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Client connections of this listener open on this shard right now.
    pub open: Cell<usize>,
    /// Connections accepted and served (within the share).
    pub admitted: Cell<u64>,
    /// Connections accepted and closed at once: the shard's share of the
    /// listener's `max_connections` was in use.
    pub refused: Cell<u64>,
    /// `accept` calls that failed (EMFILE, ENFILE, ENOBUFS, ...).
    pub accept_errors: Cell<u64>,
}

/// One admitted connection's place in its listener's `open` count, given
/// back when the connection's task ends.
pub struct ConnectionSlot {
    shard: Rc<Shard>,
    listener: usize,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(s) = self.shard.listener_stats.get(self.listener) {
            s.open.set(s.open.get().saturating_sub(1));
        }
    }
}

/// A shard's state.
pub struct Shard {
    /// Shard number (0-based).
    pub id: usize,
    /// How many shards the process runs (fixed at start).
    pub shards: usize,
    /// Accept-side counters, per listener (config order).
    pub listener_stats: Vec<ListenerStats>,
    config: RefCell<Rc<ShardConfig>>,
    /// Upstream connection pools, per target address.
    pub pools: RefCell<Pools>,
    /// HTTP/2 upstream connections (`protocol: Http2`), per target address:
    /// streams multiplexed over a few connections each.
    pub h2: crate::h2::H2Pool,
    /// Fired (and replaced) on reload and on shutdown: every downstream
    /// HTTP/2 connection open then sends a graceful GOAWAY, finishes its
    /// open streams and closes.
    h2_drain: RefCell<Rc<crate::h2::Signal>>,
    /// JWKS key sets fetched since the config was compiled, per authenticator.
    pub jwks: RefCell<std::collections::HashMap<usize, KeySet>>,
    /// Successful JWT verifications of this shard.
    pub token_cache: RefCell<TokenCache>,
    /// Rate-limit keys, quotas and leases of this shard.
    pub limiter: RefCell<Limiter>,
    /// Circuit breakers of this shard, one per upstream that has one.
    pub breakers: RefCell<crate::resilience::breaker::Breakers>,
    /// Retry budgets of this shard, per upstream.
    pub retry_budgets: RefCell<crate::resilience::retry::Budgets>,
    /// Request counters and latency histograms of this shard.
    pub metrics: RefCell<crate::metrics::ShardMetrics>,
    /// Target health (the control side's view), latency estimates and
    /// failure streaks: what target picking reads.
    pub targets: RefCell<crate::resilience::targets::TargetTable>,
    /// Response caches of this shard, per route.
    pub cache: RefCell<crate::cache::Stores>,
    /// Fired when the shard starts draining for shutdown.
    pub shutdown: Notify,
    /// Keep-alive connections waiting for their next request past the grace
    /// (without a read buffer, or holding one of the shard's
    /// [`crate::http::conn::HELD_READS`]).
    pub idle_connections: Cell<usize>,
    /// Requests being handled right now.
    pub in_flight: Cell<usize>,
    /// Client connections open right now.
    pub connections: Cell<usize>,
    /// Of those, HTTP/2 connections.
    pub h2_connections: Cell<usize>,
    /// HTTP/2 streams served since the shard started.
    pub h2_streams: Cell<u64>,
    /// Upgraded connections (WebSocket tunnels) open per route, and opened in all.
    pub tunnels: RefCell<crate::proxy::upgrade::Tunnels>,
    /// `SHARDGATE_TEST_PANIC=1` at start: the `x-shardgate-test-panic`
    /// request header makes the request panic (crash-isolation tests).
    pub test_panic: bool,
    /// Test hook: the gossip loop panics at its next tick.
    pub panic_next_tick: Cell<bool>,
    /// Edge-policy state: random draws, mirror copies in flight, counters.
    pub edge: crate::policy::ShardEdge,
    /// The first 16 hex digits of every request id this shard makes.
    id_prefix: String,
    id_seq: Cell<u64>,
}

impl Shard {
    /// A shard serving `compiled`.
    pub fn new(
        id: usize,
        shards: usize,
        compiled: Arc<Compiled>,
        limiter: Limiter,
        breakers: crate::resilience::breaker::Breakers,
    ) -> Shard {
        let mut breakers = breakers;
        configure_breakers(&mut breakers, &compiled);
        let mut limiter = limiter;
        limiter.configure(&compiled.rate_limiting, compiled.generation);
        let mut metrics = crate::metrics::ShardMetrics::default();
        metrics.configure(compiled.metrics, &compiled.metric_names());
        let seed = random_seed() ^ id as u64;
        Shard {
            targets: RefCell::new(crate::resilience::targets::TargetTable::new(
                &compiled, None, seed,
            )),
            shards,
            listener_stats: compiled
                .listeners
                .iter()
                .map(|_| ListenerStats::default())
                .collect(),
            limiter: RefCell::new(limiter),
            breakers: RefCell::new(breakers),
            retry_budgets: RefCell::default(),
            metrics: RefCell::new(metrics),
            id,
            token_cache: RefCell::new(TokenCache::new(compiled.token_cache_entries)),
            jwks: RefCell::default(),
            config: RefCell::new(Rc::new(Self::shard_config(id, compiled))),
            pools: RefCell::default(),
            h2: crate::h2::H2Pool::new(crate::h2::PoolLimits::default()),
            h2_drain: RefCell::new(crate::h2::Signal::new()),
            cache: RefCell::default(),
            shutdown: Notify::default(),
            idle_connections: Cell::new(0),
            in_flight: Cell::new(0),
            connections: Cell::new(0),
            h2_connections: Cell::new(0),
            h2_streams: Cell::new(0),
            tunnels: RefCell::default(),
            test_panic: std::env::var_os("SHARDGATE_TEST_PANIC").is_some_and(|v| v == "1"),
            panic_next_tick: Cell::new(false),
            edge: crate::policy::ShardEdge::new(id),
            id_prefix: id_prefix(random_seed() ^ ((id as u64) << 56)),
            id_seq: Cell::new(0),
        }
    }

    fn shard_config(id: usize, compiled: Arc<Compiled>) -> ShardConfig {
        // Start each shard's cursors at a different target so shards spread out.
        let cursors = compiled.upstreams.iter().map(|_| Cell::new(id)).collect();
        ShardConfig { compiled, cursors }
    }

    /// The signal a new downstream HTTP/2 connection drains on.
    pub fn h2_drain(&self) -> Rc<crate::h2::Signal> {
        self.h2_drain.borrow().clone()
    }

    /// Sends GOAWAY to the downstream HTTP/2 connections open now: they
    /// finish their streams and close (clients reconnect to the new config).
    pub fn drain_h2(&self) {
        let old = std::mem::replace(&mut *self.h2_drain.borrow_mut(), crate::h2::Signal::new());
        old.fire();
    }

    /// The config to use for one request (a cheap shard-local clone).
    pub fn config(&self) -> Rc<ShardConfig> {
        self.config.borrow().clone()
    }

    /// Swaps in a new config; requests already running keep their snapshot.
    pub fn swap_config(&self, compiled: Arc<Compiled>) {
        // Keys may have changed: nothing verified under the old config is reused.
        *self.token_cache.borrow_mut() = TokenCache::new(compiled.token_cache_entries);
        self.jwks.borrow_mut().clear();
        self.limiter
            .borrow_mut()
            .configure(&compiled.rate_limiting, compiled.generation);
        self.metrics
            .borrow_mut()
            .configure(compiled.metrics, &compiled.metric_names());
        configure_breakers(&mut self.breakers.borrow_mut(), &compiled);
        self.retry_budgets.borrow_mut().clear();
        self.targets.borrow_mut().configure(&compiled);
        *self.config.borrow_mut() = Rc::new(Self::shard_config(self.id, compiled));
        self.drain_h2();
    }

    /// Installs a refreshed JWKS key set, if it belongs to the running config.
    pub fn update_keys(&self, generation: u64, authenticator: usize, keys: KeySet) {
        if self.config().compiled.generation == generation {
            self.jwks.borrow_mut().insert(authenticator, keys);
            // Tokens verified with the old keys must be checked again.
            self.token_cache.borrow_mut().clear();
        }
    }

    /// A place for a new connection on `listener`, or `Err(share)` when this
    /// shard's share of the listener's `max_connections` is in use (the
    /// refusal is counted). Connections already open are never closed, so a
    /// reload that lowers the limit only holds back new ones.
    pub fn admit(self: &Rc<Self>, listener: usize) -> Result<ConnectionSlot, usize> {
        let share = self
            .config()
            .compiled
            .listeners
            .get(listener)
            .and_then(|l| l.shard_share(self.id, self.shards));
        if let Some(stats) = self.listener_stats.get(listener) {
            if let Some(share) = share.filter(|&s| stats.open.get() >= s) {
                stats.refused.set(stats.refused.get() + 1);
                return Err(share);
            }
            stats.open.set(stats.open.get() + 1);
            stats.admitted.set(stats.admitted.get() + 1);
        }
        Ok(ConnectionSlot {
            shard: self.clone(),
            listener,
        })
    }

    /// Counts a failed `accept` on `listener`.
    pub fn count_accept_error(&self, listener: usize) {
        if let Some(s) = self.listener_stats.get(listener) {
            s.accept_errors.set(s.accept_errors.get() + 1);
        }
    }

    /// One line of accept counters per listener, e.g.
    /// `listener main: 12 admitted, 3 refused, 0 accept errors, 9 open`.
    pub fn accept_summary(&self) -> Vec<String> {
        let cfg = self.config();
        self.listener_stats
            .iter()
            .zip(&cfg.compiled.listeners)
            .map(|(s, l)| {
                format!(
                    "listener {}: {} admitted, {} refused, {} accept errors, {} open",
                    l.name,
                    s.admitted.get(),
                    s.refused.get(),
                    s.accept_errors.get(),
                    s.open.get()
                )
            })
            .collect()
    }

    /// A new request id: unique per process run, 24 hex digits.
    pub fn next_request_id(&self) -> String {
        let mut id = String::with_capacity(24);
        self.push_request_id(&mut id);
        id
    }

    /// Appends a new request id to `out`: the shard's 16 digits, made once,
    /// then the request's sequence number in 8.
    pub fn push_request_id(&self, out: &mut String) {
        let n = self.id_seq.get().wrapping_add(1);
        self.id_seq.set(n);
        push_request_id(out, &self.id_prefix, n as u32);
    }

    /// Closes idle upstream connections past their upstream's idle timeout,
    /// and the least recently used beyond its `max_idle_per_target` (and
    /// beyond what the load is estimated to need: its recent peak, or a
    /// past one's share, smaller each sweep) once unused for
    /// [`crate::proxy::pool::SURPLUS_UNUSED`].
    pub fn reap_pools(&self, now: Instant) {
        let cfg = self.config();
        let ups = &cfg.compiled.upstreams;
        self.pools.borrow_mut().reap(
            |addr| {
                ups.iter()
                    .find(|u| u.targets.contains(&addr))
                    .map_or((std::time::Duration::ZERO, 0), |u| {
                        (u.idle_timeout, u.max_idle)
                    })
            },
            now,
        );
    }
}

fn configure_breakers(b: &mut crate::resilience::breaker::Breakers, compiled: &Compiled) {
    b.configure(
        compiled.generation,
        compiled
            .upstreams
            .iter()
            .map(|u| (u.name.as_str(), u.breaker.as_ref())),
    );
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// The first 16 digits of a shard's request ids: its seed in lowercase hex.
/// Ids are written as `format!("{seed:016x}{n:08x}")` would write them,
/// without `core::fmt` (several hundred instructions less per request).
fn id_prefix(seed: u64) -> String {
    let mut prefix = String::with_capacity(16);
    crate::observe::push_hex(&mut prefix, &seed.to_be_bytes());
    prefix
}

/// Appends the request id numbered `n` after `prefix`: 8 hex digits.
fn push_request_id(out: &mut String, prefix: &str, n: u32) {
    out.push_str(prefix);
    crate::observe::push_hex(out, &n.to_be_bytes());
}

#[cfg(test)]
mod request_id_tests {
    #[test]
    fn request_ids_are_written_as_format_would() {
        for (seed, n) in [
            (0u64, 0u32),
            (1, 1),
            (0x0123_4567_89ab_cdef, 0xdead_beef),
            (u64::MAX, u32::MAX),
            (0xf, 0x10),
        ] {
            let mut id = String::from("kept:");
            super::push_request_id(&mut id, &super::id_prefix(seed), n);
            assert_eq!(id, format!("kept:{seed:016x}{n:08x}"));
        }
    }
}
