//! Per-shard upstream connection pools (target picking is in
//! [`crate::resilience::targets`]).
//!
//! Pools are keyed by target address, so a reload that keeps a target keeps
//! its warm connections. Idle connections are reused most-recent first, and
//! expired ones are closed on take and by the shard's periodic reap.

use crate::http::Conn;
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How long an idle connection beyond its target's `max_idle_per_target`
/// stays unused before a sweep closes it. Connections a load takes in turn
/// are used far more often than this, so a load that needs more than
/// `max_idle_per_target` at once keeps them rather than reopening them
/// after every sweep (one sweep a second).
pub const SURPLUS_UNUSED: Duration = Duration::from_secs(1);

/// Sweeps (one a second) over which a target's peak of connections in use
/// is remembered: idle connections up to that peak stay through the lulls
/// of a load that keeps coming back to it, instead of being closed after a
/// second and reopened at its next peak, where a new connection's first
/// request waits for the upstream to accept it.
const PEAK_SWEEPS: usize = 5;

/// After a peak leaves the [`PEAK_SWEEPS`] window, the connections it needed
/// are not all closed at the next sweep: the estimate of what the load
/// needs moves down by this fraction (1/8) of its distance to the recent
/// peak per sweep, half of it in about five. A load whose lulls last longer
/// than the window keeps most of its connections, and one that stopped
/// gives its surplus back within seconds (as HAProxy halves its surplus
/// idle connections every `pool-purge-delay`).
const NEED_DECAY: usize = 8;

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

/// Splits a host-wide bound into shard `id`'s share of `shards`: the quotient
/// on every shard, the remainder one each on the first shards, and at least
/// one on every shard (a bound smaller than the shard count is rounded up to
/// it). A bound of 0 stays 0.
pub fn share(total: usize, shards: usize, id: usize) -> usize {
    if total == 0 {
        return 0;
    }
    crate::compiled::connection_share(total, id, shards).max(1)
}

/// What a request waiting at the bound is given.
pub enum Grant {
    /// A connection coming back from a finished exchange (its slot with it).
    Conn(Box<Conn>),
    /// The slot of a connection that closed: the waiter opens a new one.
    Slot,
}

/// A request waiting for a connection to a target whose shard share is in use.
#[derive(Default)]
pub struct Waiter {
    grant: Cell<Option<Grant>>,
    waker: Cell<Option<Waker>>,
    queued: Cell<bool>,
}

impl Waiter {
    /// Ready with the grant once one was handed over.
    pub fn poll_grant(&self, cx: &mut Context<'_>) -> Poll<Grant> {
        match self.grant.take() {
            Some(g) => Poll::Ready(g),
            None => {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}

/// [`Pools::acquire`] found this shard's share of the target's bound in use.
#[derive(Debug)]
pub struct Full;

#[derive(Default)]
struct TargetPool {
    idle: Vec<(Box<Conn>, Instant)>,
    outstanding: usize,
    /// Connections open, being opened or idle: the count the bound applies to.
    open: usize,
    /// Requests waiting for a slot, oldest first.
    waiting: VecDeque<Rc<Waiter>>,
    /// Most connections in use at once since the last sweep, and in each
    /// of the [`PEAK_SWEEPS`] periods before (a ring, `peak_at` next).
    peak: usize,
    peaks: [usize; PEAK_SWEEPS],
    peak_at: usize,
    /// Connections the load is estimated to need: the recent peak, or
    /// above it, decaying toward it ([`NEED_DECAY`]).
    need: usize,
}

impl TargetPool {
    /// Hands the slot of a connection that closed (or was never opened) to
    /// the oldest waiter, or frees it.
    fn free_slot(&mut self) {
        match self.next_waiter() {
            Some(w) => w.give(Grant::Slot),
            None => self.open = self.open.saturating_sub(1),
        }
    }

    #[inline]
    fn acquire(
        &mut self,
        limit: Option<usize>,
        max_age: Duration,
        now: Instant,
    ) -> Result<Option<Box<Conn>>, Full> {
        while let Some((conn, since)) = self.idle.pop() {
            if now.duration_since(since) < max_age {
                self.note_in_use();
                return Ok(Some(conn));
            }
            // Its slot is reused by this request.
            self.open = self.open.saturating_sub(1);
        }
        if limit.is_some_and(|l| self.open >= l) {
            return Err(Full);
        }
        self.open += 1;
        self.note_in_use();
        Ok(None)
    }

    /// Raises this period's peak of connections in use (open, not idle).
    #[inline]
    fn note_in_use(&mut self) {
        self.peak = self.peak.max(self.open.saturating_sub(self.idle.len()));
    }

    /// Ends a sweep period: the highest number of connections in use over
    /// the last [`PEAK_SWEEPS`] periods, `in_use` now included.
    fn recent_peak(&mut self, in_use: usize) -> usize {
        if let Some(slot) = self.peaks.get_mut(self.peak_at) {
            *slot = self.peak.max(in_use);
        }
        self.peak_at = (self.peak_at + 1) % PEAK_SWEEPS;
        self.peak = in_use;
        self.peaks.iter().copied().max().unwrap_or(0)
    }

    /// Ends a sweep period: the connections the load is estimated to need,
    /// the recent peak or, after a higher one left the window, an estimate
    /// decaying toward it.
    fn estimate_need(&mut self, in_use: usize) -> usize {
        self.need = decayed_need(self.need, self.recent_peak(in_use));
        self.need
    }

    #[inline]
    fn put(&mut self, mut conn: Box<Conn>, max_idle: usize, now: Instant) {
        if let Some(w) = self.next_waiter() {
            w.give(Grant::Conn(conn));
            return;
        }
        if max_idle == 0 {
            self.open = self.open.saturating_sub(1);
            return;
        }
        // An idle connection holds no read buffer; it takes one when used.
        conn.release_buffer();
        // Beyond `max_idle`, the least recently used are closed by a later
        // sweep once unused for [`SURPLUS_UNUSED`], not here: under a load
        // that needs more connections than that, closing at once would open
        // and close one per request.
        self.idle.push((conn, now));
    }

    /// Takes the oldest waiter off the queue.
    fn next_waiter(&mut self) -> Option<Rc<Waiter>> {
        let w = self.waiting.pop_front()?;
        w.queued.set(false);
        Some(w)
    }
}

impl Waiter {
    /// Hands `g` over and wakes the waiting request.
    fn give(&self, g: Grant) {
        self.grant.set(Some(g));
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// All pools of one shard.
#[derive(Default)]
pub struct Pools {
    targets: HashMap<SocketAddr, TargetPool, FxBuild>,
}

impl Pools {
    /// Takes an idle connection to `addr` younger than `max_age` (`Some`) or,
    /// when there is none and fewer than `limit` connections to it are
    /// counted, reserves a slot for a new one (`None`). Expired idle
    /// connections are closed.
    #[inline]
    pub fn acquire(
        &mut self,
        addr: SocketAddr,
        limit: Option<usize>,
        max_age: Duration,
        now: Instant,
    ) -> Result<Option<Box<Conn>>, Full> {
        // `get_mut` first: `entry` costs a capacity check on every call.
        if let Some(pool) = self.targets.get_mut(&addr) {
            return pool.acquire(limit, max_age, now);
        }
        self.targets
            .entry(addr)
            .or_default()
            .acquire(limit, max_age, now)
    }

    /// Queues a request for the next slot of `addr`; `None` when `max_waiting`
    /// requests already wait.
    pub fn enqueue(&mut self, addr: SocketAddr, max_waiting: usize) -> Option<Rc<Waiter>> {
        let pool = self.targets.entry(addr).or_default();
        if pool.waiting.len() >= max_waiting {
            return None;
        }
        let w = Rc::new(Waiter::default());
        w.queued.set(true);
        pool.waiting.push_back(w.clone());
        Some(w)
    }

    /// Withdraws a waiter that stopped waiting; what it was granted but did
    /// not take goes to the next waiter or back to the pool.
    pub fn cancel(&mut self, addr: SocketAddr, w: &Rc<Waiter>, max_idle: usize, now: Instant) {
        if w.queued.get() {
            if let Some(pool) = self.targets.get_mut(&addr) {
                pool.waiting.retain(|x| !Rc::ptr_eq(x, w));
            }
            w.queued.set(false);
        }
        match w.grant.take() {
            Some(Grant::Conn(c)) => self.put(addr, c, max_idle, now),
            Some(Grant::Slot) => self.release(addr),
            None => {}
        }
    }

    /// Returns a reusable connection (with its slot): to the oldest waiter,
    /// else to the idle pool (trimmed to `max_idle` by the next [`Pools::reap`]).
    #[inline]
    pub fn put(&mut self, addr: SocketAddr, conn: Box<Conn>, max_idle: usize, now: Instant) {
        match self.targets.get_mut(&addr) {
            Some(pool) => pool.put(conn, max_idle, now),
            None => self
                .targets
                .entry(addr)
                .or_default()
                .put(conn, max_idle, now),
        }
    }

    /// Gives back the slot of a connection that closed or failed to open.
    pub fn release(&mut self, addr: SocketAddr) {
        if let Some(pool) = self.targets.get_mut(&addr) {
            pool.free_slot();
        }
    }

    /// Closes every idle connection to `addr`: one of them turned out dead,
    /// and the others, all older, most likely died with it (the target
    /// restarted).
    pub fn drop_idle(&mut self, addr: SocketAddr) {
        if let Some(pool) = self.targets.get_mut(&addr) {
            let n = pool.idle.len();
            pool.idle.clear();
            for _ in 0..n {
                pool.free_slot();
            }
        }
    }

    /// Closes idle connections older than `max_age`, and those beyond
    /// `max_idle` that have not been used for [`SURPLUS_UNUSED`] and that
    /// the load is not estimated to need: its peak within [`PEAK_SWEEPS`],
    /// and a share of an earlier peak's, smaller each sweep ([`NEED_DECAY`]).
    pub fn reap(&mut self, policy: impl Fn(SocketAddr) -> (Duration, usize), now: Instant) {
        self.targets.retain(|addr, pool| {
            let (age, max_idle) = policy(*addr);
            let before = pool.idle.len();
            let in_use = pool.open.saturating_sub(before);
            let need = pool.estimate_need(in_use);
            pool.idle
                .retain(|(_, since)| now.duration_since(*since) < age);
            // The oldest beyond what the load needs on top of what is in use
            // now, and beyond `max_idle` (the list is in order of use),
            // unless the load used them lately: it then needs them again.
            let keep = max_idle.max(need.saturating_sub(in_use));
            let surplus = pool.idle.len().saturating_sub(keep);
            let unused = pool
                .idle
                .iter()
                .take(surplus)
                .take_while(|(_, since)| now.duration_since(*since) >= SURPLUS_UNUSED)
                .count();
            pool.idle.drain(..unused);
            for _ in pool.idle.len()..before {
                pool.free_slot();
            }
            !pool.idle.is_empty()
                || pool.outstanding > 0
                || pool.open > 0
                || !pool.waiting.is_empty()
        });
    }

    /// Number of idle connections kept for `addr`.
    pub fn idle_count(&self, addr: SocketAddr) -> usize {
        self.targets.get(&addr).map_or(0, |p| p.idle.len())
    }

    /// Connections to `addr` counted toward its bound (open, opening, idle).
    pub fn open_count(&self, addr: SocketAddr) -> usize {
        self.targets.get(&addr).map_or(0, |p| p.open)
    }

    /// Requests waiting for a connection slot to `addr`.
    pub fn waiting_count(&self, addr: SocketAddr) -> usize {
        self.targets.get(&addr).map_or(0, |p| p.waiting.len())
    }

    /// Requests in flight to `addr`.
    pub fn outstanding_count(&self, addr: SocketAddr) -> usize {
        self.outstanding(addr)
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
}

/// One sweep's move of the estimated need toward the recent peak: up to it
/// at once, down by [`NEED_DECAY`]'s share of the distance (at least one).
fn decayed_need(need: usize, recent_peak: usize) -> usize {
    if recent_peak >= need {
        return recent_peak;
    }
    need - (need - recent_peak).div_ceil(NEED_DECAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimated_need_rises_at_once_and_falls_an_eighth_of_the_way_per_sweep() {
        assert_eq!(decayed_need(0, 8), 8);
        assert_eq!(decayed_need(8, 20), 20);
        // 1,000 in use, then nothing: 875 after one sweep past the window,
        // under half after six, and down to the floor in the end.
        let mut need = 1000;
        let mut trail = Vec::new();
        while need > 0 {
            need = decayed_need(need, 0);
            trail.push(need);
        }
        assert_eq!(trail.first(), Some(&875));
        assert!(trail.get(5).is_some_and(|&n| n < 500), "{trail:?}");
        assert!(trail.len() < 60, "{} sweeps to close them all", trail.len());
        // A small surplus goes one connection a sweep.
        assert_eq!(decayed_need(3, 2), 2);
        assert_eq!(decayed_need(8, 2), 7);
    }

    #[test]
    fn shares_add_up_and_never_reach_zero() {
        for shards in 1..=9 {
            for total in 1..=40 {
                let shares: Vec<usize> = (0..shards).map(|id| share(total, shards, id)).collect();
                assert!(
                    shares.iter().all(|&s| s >= 1),
                    "{total}/{shards}: {shares:?}"
                );
                assert_eq!(shares.iter().sum::<usize>(), total.max(shards));
                let (lo, hi) = (shares.iter().min(), shares.iter().max());
                assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 1), "{shares:?}");
            }
        }
        assert_eq!(share(5, 2, 0), 3);
        assert_eq!(share(5, 2, 1), 2);
        assert_eq!(share(0, 4, 0), 0);
    }

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }

    fn poll(w: &Waiter) -> Option<Grant> {
        let mut cx = Context::from_waker(Waker::noop());
        match w.poll_grant(&mut cx) {
            Poll::Ready(g) => Some(g),
            Poll::Pending => None,
        }
    }

    #[test]
    fn slots_are_counted_handed_on_and_given_back() {
        let (mut p, a, now) = (Pools::default(), addr(), Instant::now());
        let age = Duration::from_secs(1);
        assert!(matches!(p.acquire(a, Some(2), age, now), Ok(None)));
        assert!(matches!(p.acquire(a, Some(2), age, now), Ok(None)));
        assert!(matches!(p.acquire(a, Some(2), age, now), Err(Full)));
        assert_eq!(p.open_count(a), 2);
        // Unbounded requests still count.
        assert!(matches!(p.acquire(a, None, age, now), Ok(None)));
        p.release(a);
        // The queue is bounded.
        let first = p.enqueue(a, 2);
        let second = p.enqueue(a, 2);
        assert!(p.enqueue(a, 2).is_none());
        let (Some(first), Some(second)) = (first, second) else {
            panic!("two waiters fit");
        };
        assert!(poll(&first).is_none());
        // A closed connection's slot goes to the oldest waiter, not back.
        p.release(a);
        assert_eq!(p.open_count(a), 2);
        assert!(matches!(poll(&first), Some(Grant::Slot)));
        // A waiter that gives up after its grant passes the slot on.
        p.release(a);
        p.cancel(a, &second, 4, now);
        assert_eq!(p.open_count(a), 1);
        // A waiter that gives up before a grant leaves the queue.
        let third = p.enqueue(a, 1);
        assert!(third.is_some());
        if let Some(w) = third {
            p.cancel(a, &w, 4, now);
        }
        p.release(a);
        assert_eq!(p.open_count(a), 0);
        assert!(matches!(p.acquire(a, Some(1), age, now), Ok(None)));
    }
}
