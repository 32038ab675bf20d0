//! Per-shard upstream connection pools and balancing state.
//!
//! Pools are keyed by target address, so a reload that keeps a target keeps
//! its warm connections. Idle connections are reused most-recent first, and
//! expired ones are closed on take and by the shard's periodic reap.

use crate::compiled::UpstreamPlan;
use crate::config::Balance;
use crate::http::Conn;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// FxHash (as in rustc): a multiply-rotate hash, far cheaper than SipHash for
/// a socket address looked up several times per request. The keys are
/// configured target addresses, not client input, so flooding is not a concern.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxBuild = std::hash::BuildHasherDefault<FxHasher>;

#[derive(Default)]
struct TargetPool {
    idle: Vec<(Conn, Instant)>,
    outstanding: usize,
}

/// All pools of one shard.
#[derive(Default)]
pub struct Pools {
    targets: HashMap<SocketAddr, TargetPool, FxBuild>,
}

impl Pools {
    /// Takes an idle connection to `addr` that is younger than `max_age`.
    pub fn take(&mut self, addr: SocketAddr, max_age: Duration, now: Instant) -> Option<Conn> {
        let pool = self.targets.get_mut(&addr)?;
        while let Some((conn, since)) = pool.idle.pop() {
            if now.duration_since(since) < max_age {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a reusable connection; beyond `max_idle` the oldest is closed.
    pub fn put(&mut self, addr: SocketAddr, mut conn: Conn, max_idle: usize, now: Instant) {
        if max_idle == 0 {
            return;
        }
        // An idle connection holds no read buffer; it takes one when used.
        conn.release_buffer();
        let pool = self.targets.entry(addr).or_default();
        if pool.idle.len() >= max_idle {
            pool.idle.remove(0);
        }
        pool.idle.push((conn, now));
    }

    /// Closes every idle connection to `addr`: one of them turned out dead,
    /// and the others, all older, most likely died with it (the target
    /// restarted).
    pub fn drop_idle(&mut self, addr: SocketAddr) {
        if let Some(pool) = self.targets.get_mut(&addr) {
            pool.idle.clear();
        }
    }

    /// Closes idle connections older than `max_age`.
    pub fn reap(&mut self, max_age: impl Fn(SocketAddr) -> Duration, now: Instant) {
        self.targets.retain(|addr, pool| {
            let age = max_age(*addr);
            pool.idle
                .retain(|(_, since)| now.duration_since(*since) < age);
            !pool.idle.is_empty() || pool.outstanding > 0
        });
    }

    /// Number of idle connections kept for `addr`.
    pub fn idle_count(&self, addr: SocketAddr) -> usize {
        self.targets.get(&addr).map_or(0, |p| p.idle.len())
    }

    fn outstanding(&self, addr: SocketAddr) -> usize {
        self.targets.get(&addr).map_or(0, |p| p.outstanding)
    }

    /// Counts a request in flight to `addr`.
    pub fn begin(&mut self, addr: SocketAddr) {
        self.targets.entry(addr).or_default().outstanding += 1;
    }

    /// Ends a request counted by [`Pools::begin`].
    pub fn end(&mut self, addr: SocketAddr) {
        if let Some(p) = self.targets.get_mut(&addr) {
            p.outstanding = p.outstanding.saturating_sub(1);
        }
    }

    /// Picks a target of `up`; `cursor` is this shard's round-robin position for it.
    pub fn pick(&self, up: &UpstreamPlan, cursor: &mut usize) -> Option<SocketAddr> {
        let n = up.targets.len();
        if n == 0 {
            return None;
        }
        let start = *cursor % n;
        *cursor = cursor.wrapping_add(1);
        match up.balance {
            Balance::RoundRobin => up.targets.get(start).copied(),
            Balance::LeastOutstanding => (0..n)
                .filter_map(|k| up.targets.get((start + k) % n).copied())
                .min_by_key(|a| self.outstanding(*a)),
        }
    }
}
