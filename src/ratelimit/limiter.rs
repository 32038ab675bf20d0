//! A shard's rate limiter: its key table, its share of every `Local` limit,
//! its Redis leases, and the gossip through which shards lend each other
//! quota.
//!
//! # How a `Local` limit holds host-wide without shared memory
//! Every key's limit (`units`: requests per window, or bucket capacity) is
//! split into per-shard quotas that always add up to the limit: a shard that
//! first sees a key takes an even share (`units / shards`, the remainder
//! spread by key hash), and each shard runs the limit's algorithm scaled to
//! its quota (a token bucket of `quota` tokens refilled at `quota / units` of
//! the rate, a window of `quota` requests...). A shard that runs out while
//! its quota is less than the whole asks the others (`Need`, sent at once);
//! each answers at its next gossip tick with a `Give` of its spare (all of it
//! if it has not seen the key in two ticks, half otherwise), and the asking
//! request waits for that, at most `max_quota_wait`, before a 429. Quota only
//! changes hands by message (the giver subtracts before sending), so the sum
//! of quotas never exceeds the limit and the host-wide count never exceeds
//! it either: **the worst-case overshoot is zero** for any shard count,
//! gossip interval and rate, as long as keys are not evicted. The costs are
//! elsewhere:
//! - latency: a request that needs lent quota waits for it, typically one to
//!   two gossip intervals (`2 × gossip_interval_ms` + scheduling);
//! - undershoot: quota stranded on a shard that answers too late is not
//!   used in that window (quota carries over to the next window);
//! - eviction: a key forgotten by one shard (idle for `idle_key_s`, or the
//!   table full) comes back there with an even share while other shards may
//!   still hold quota it lent: overshoot for that key of at most what it had
//!   lent, i.e. below `units × (shards − 1) / shards`, once.
//!
//! # Redis
//! A `Redis` limit takes `lease` units at a time from Redis (atomically, in
//! a Lua script; see [`super::redis`]) and spends them locally until they run
//! out or the lease expires (at the Redis window's end, at most one second).
//! Instances never overshoot the limit together; up to
//! `instances × shards × (lease − 1)` units can go unused at a window's end.

use super::algorithm::{Algorithm, Decision, State};
use super::plan::{LimitPlan, PolicyPlan, RateLimitPlan};
use super::redis::{Grant, RedisClient};
use super::table::{Entry, KeyTable};
use crate::shard::Notify;
use crossbeam_channel::{Receiver, Sender};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A message between shards about one key of one `Local` limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gossip {
    /// `from` ran out of quota for `key`.
    Need {
        /// Asking shard.
        from: usize,
        /// Config generation the limit index belongs to.
        generation: u64,
        /// Limit index.
        limit: usize,
        /// Key hash.
        key: u64,
    },
    /// `units` of quota for `key`, taken off the sender's share (0: nothing to spare).
    Give {
        /// Giving shard.
        from: usize,
        /// Config generation the limit index belongs to.
        generation: u64,
        /// Limit index.
        limit: usize,
        /// Key hash.
        key: u64,
        /// Units handed over.
        units: u64,
    },
}

/// One limit to check for a request.
#[derive(Debug, Clone)]
pub struct Check {
    /// Limit index in the plan.
    pub limit: usize,
    /// Key hash (see [`super::table::key_hash`]).
    pub key: u64,
    /// The key's text (Redis keys are named by it).
    pub text: String,
}

/// What [`Limiter::admit`] decided.
#[derive(Clone)]
pub enum Outcome {
    /// Every limit admitted; hold the request back `delay_ns` (leaky-bucket queueing).
    Admitted {
        /// Delay before forwarding.
        delay_ns: u64,
    },
    /// Some limit refused. With `wait`, quota was asked of other shards:
    /// waiting for it and checking again may admit.
    Refused {
        /// Fired at the next gossip tick.
        wait: Option<Rc<Notify>>,
    },
    /// The check at this index needs a Redis lease first.
    NeedLease(usize),
}

/// Nanoseconds on a monotonic clock aligned to Unix time (windows line up
/// with wall-clock minutes and hours, and all shards agree).
pub fn now_ns() -> u64 {
    ns_at(Instant::now())
}

/// `at` on the clock of [`now_ns`] (for an instant already read).
pub fn ns_at(at: Instant) -> u64 {
    static BASE: OnceLock<(Instant, u64)> = OnceLock::new();
    let (base, unix) = BASE.get_or_init(|| {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, nanos);
        (Instant::now(), unix)
    });
    unix.saturating_add(nanos(at.saturating_duration_since(*base)))
}

/// A duration in nanoseconds, saturating (durations come from config and
/// may exceed the 584 years that fit in a `u64`).
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A shard's rate-limit state.
pub struct Limiter {
    shard: usize,
    shards: usize,
    peers: Vec<Sender<Gossip>>,
    inbox: Receiver<Gossip>,
    table: KeyTable,
    round: u64,
    generation: u64,
    tick: Rc<Notify>,
    redis: Vec<Option<Rc<RedisClient>>>,
    redis_logged: Vec<u64>,
    last_sweep: u64,
    sent: std::cell::Cell<u64>,
    received: u64,
}

impl Limiter {
    /// The limiter of shard `shard` of `peers.len()`; `peers[i]` reaches shard i.
    pub fn new(shard: usize, peers: Vec<Sender<Gossip>>, inbox: Receiver<Gossip>) -> Limiter {
        Limiter {
            shard,
            shards: peers.len().max(1),
            peers,
            inbox,
            table: KeyTable::new(100_000, 600 * 1_000_000_000),
            round: 0,
            generation: u64::MAX,
            tick: Rc::new(Notify::default()),
            redis: Vec::new(),
            redis_logged: Vec::new(),
            last_sweep: 0,
            sent: std::cell::Cell::new(0),
            received: 0,
        }
    }

    /// Sends a gossip message to shard `to` (tests and benchmarks drive
    /// shards by hand with it).
    pub fn send_to(&self, to: usize, msg: Gossip) {
        if let Some(p) = self.peers.get(to) {
            if p.send(msg).is_ok() {
                self.sent.set(self.sent.get() + 1);
            }
        }
    }

    /// Quota messages sent to and received from other shards.
    pub fn messages(&self) -> (u64, u64) {
        (self.sent.get(), self.received)
    }

    /// Number of keys held.
    pub fn keys(&self) -> usize {
        self.table.len()
    }

    /// Adopts a (new) config: bounds, and Redis clients for its limits.
    pub fn configure(&mut self, plan: &RateLimitPlan, generation: u64) {
        if self.generation == generation {
            return;
        }
        self.generation = generation;
        self.table.set_bounds(plan.max_keys, plan.idle_ns);
        self.redis = plan
            .limits
            .iter()
            .map(|l| match &l.policy {
                PolicyPlan::Local => None,
                PolicyPlan::Redis {
                    target,
                    timeout,
                    retry,
                    tls,
                    ..
                } => Some(Rc::new(
                    RedisClient::new(target.clone(), *timeout, *retry, 16).with_tls(tls.clone()),
                )),
            })
            .collect();
        self.redis_logged = vec![0; plan.limits.len()];
    }

    /// The Redis client of limit `limit`, if it has the Redis policy.
    pub fn redis_client(&self, limit: usize) -> Option<Rc<RedisClient>> {
        self.redis.get(limit).cloned().flatten()
    }

    /// True (at most once per `every`) when a Redis failure of `limit` should be logged.
    pub fn should_log(&mut self, limit: usize, now: u64, every: Duration) -> bool {
        match self.redis_logged.get_mut(limit) {
            Some(at) if *at == 0 || now.saturating_sub(*at) >= nanos(every) => {
                *at = now;
                true
            }
            _ => false,
        }
    }

    fn even_share(&self, units: u64, key: u64) -> u64 {
        let n = self.shards as u64;
        let base = units / n;
        let rest = units % n;
        // The remainder goes to `rest` shards starting at one picked by the key.
        let slot = (self.shard as u64 + n - key % n) % n;
        base + u64::from(slot < rest)
    }

    fn local_entry(&mut self, lp: &LimitPlan, key: u64, now: u64) -> &mut Entry {
        let quota = self.even_share(lp.units, key);
        let alg = &lp.algorithm;
        self.table.entry(key, now, || {
            Entry::new(alg.scaled(quota, lp.units).new_state(now), quota, now)
        })
    }

    /// Decides one request against `checks`; a request refused by any limit
    /// consumes from none. `skip` marks checks to treat as admitted (a Redis
    /// limit that fails open). Decisions are written to `out`, one per check.
    pub fn admit(
        &mut self,
        plan: &RateLimitPlan,
        checks: &[Check],
        skip: u64,
        now: u64,
        cost: u64,
        out: &mut Vec<Decision>,
    ) -> Outcome {
        out.clear();
        let mut can_wait = false;
        for (i, c) in checks.iter().enumerate() {
            let Some(lp) = plan.limits.get(c.limit) else {
                continue;
            };
            if skip & (1 << i.min(63)) != 0 {
                out.push(open_decision(lp.units));
                continue;
            }
            match lp.policy {
                PolicyPlan::Local => {
                    let (d, wait) = self.decide_local(lp, c, now, cost);
                    can_wait |= wait;
                    out.push(d);
                }
                PolicyPlan::Redis { .. } => {
                    let e = self.table.entry(c.key, now, || {
                        Entry::new(State::Window { start: 0, count: 0 }, 0, now)
                    });
                    e.last_seen = now;
                    let leased = e.quota >= cost && now < e.lease_until;
                    if !leased && now >= e.dry_until {
                        return Outcome::NeedLease(i);
                    }
                    let left = if leased { e.quota - cost } else { e.quota };
                    out.push(Decision {
                        allowed: leased,
                        limit: lp.units,
                        remaining: e.remote_remaining.saturating_add(left),
                        reset_ns: e.remote_reset_at.saturating_sub(now),
                        retry_after_ns: if leased {
                            0
                        } else {
                            e.dry_until.saturating_sub(now)
                        },
                        delay_ns: 0,
                    });
                }
            }
        }
        if !out.iter().all(|d| d.allowed) {
            let wait = can_wait.then(|| self.tick.clone());
            return Outcome::Refused { wait };
        }
        let mut delay_ns = 0;
        for (i, c) in checks.iter().enumerate() {
            let Some(lp) = plan.limits.get(c.limit) else {
                continue;
            };
            if skip & (1 << i.min(63)) != 0 {
                continue;
            }
            let Some(e) = self.table.get_mut(c.key) else {
                continue;
            };
            match lp.policy {
                PolicyPlan::Local => {
                    let alg = lp.algorithm.scaled(e.quota, lp.units);
                    alg.consume(&mut e.state, now, cost);
                }
                PolicyPlan::Redis { .. } => e.quota -= cost.min(e.quota),
            }
            delay_ns = delay_ns.max(out.get(i).map_or(0, |d| d.delay_ns));
        }
        Outcome::Admitted { delay_ns }
    }

    /// Decides one `Local` limit on this shard's quota; asks the other shards
    /// for quota when it does not fit. Returns the decision and whether
    /// waiting for quota may help.
    fn decide_local(&mut self, lp: &LimitPlan, c: &Check, now: u64, cost: u64) -> (Decision, bool) {
        let shards = self.shards;
        let round = self.round;
        let e = self.local_entry(lp, c.key, now);
        e.last_seen = now;
        e.last_request = now;
        let alg = lp.algorithm.scaled(e.quota, lp.units);
        alg.advance(&mut e.state, now);
        let mut d = alg.decide(&e.state, now, cost);
        d.limit = lp.units;
        if d.allowed || shards == 1 || e.quota >= lp.units || cost > lp.units {
            return (d, false);
        }
        if now < e.dry_until {
            return (d, false);
        }
        if e.asked_round != round
            && (e.pending_replies == 0 || round.saturating_sub(e.asked_round) > 8)
        {
            e.asked_round = round;
            e.pending_replies = (shards - 1) as u32;
            e.received = 0;
            let need = Gossip::Need {
                from: self.shard,
                generation: self.generation,
                limit: c.limit,
                key: c.key,
            };
            for (i, p) in self.peers.iter().enumerate() {
                if i != self.shard && p.send(need).is_ok() {
                    self.sent.set(self.sent.get() + 1);
                }
            }
        }
        (d, true)
    }

    /// Records a Redis answer for check `c` of limit `lp`.
    pub fn deposit(&mut self, lp: &LimitPlan, c: &Check, grant: &Grant, now: u64) {
        let e = self.table.entry(c.key, now, || {
            Entry::new(State::Window { start: 0, count: 0 }, 0, now)
        });
        let expired = now >= e.lease_until;
        e.quota = if expired { 0 } else { e.quota }.saturating_add(grant.granted);
        e.remote_remaining = grant.remaining;
        e.remote_reset_at = now.saturating_add(grant.reset_ns);
        if grant.granted > 0 {
            e.lease_until = now + lease_ttl(&lp.algorithm, grant);
            e.dry_until = 0;
        } else {
            // Nothing left in Redis: refuse locally until it could fit again.
            let wait = grant.retry_after_ns.clamp(1_000_000, 1_000_000_000);
            e.dry_until = now + wait;
        }
    }

    /// A gossip tick: answers requests for quota, takes in quota given,
    /// sweeps idle keys now and then, and wakes requests waiting for quota.
    pub fn tick(&mut self, plan: &RateLimitPlan, now: u64) {
        self.round += 1;
        let interval = nanos(plan.gossip_interval);
        while let Ok(msg) = self.inbox.try_recv() {
            self.received += 1;
            match msg {
                Gossip::Need {
                    from,
                    generation,
                    limit,
                    key,
                } if generation == self.generation => {
                    let units = match plan.limits.get(limit) {
                        Some(lp) => self.give(lp, key, now, interval),
                        None => 0,
                    };
                    self.send_to(
                        from,
                        Gossip::Give {
                            from: self.shard,
                            generation,
                            limit,
                            key,
                            units,
                        },
                    );
                }
                Gossip::Give {
                    generation,
                    limit,
                    key,
                    units,
                    ..
                } if generation == self.generation => {
                    if let Some(lp) = plan.limits.get(limit) {
                        self.take(lp, key, units, now);
                    }
                }
                _ => {}
            }
        }
        // Sweeping scans the whole table (~2.5 ms at 100k keys), so it runs
        // a tenth of the idle time apart (between 1 s and 60 s).
        let sweep_every = (plan.idle_ns / 10).clamp(1_000_000_000, 60_000_000_000);
        if now.saturating_sub(self.last_sweep) >= sweep_every {
            self.table.sweep(now);
            self.last_sweep = now;
        }
        let fired = std::mem::replace(&mut self.tick, Rc::new(Notify::default()));
        fired.fire();
    }

    /// Takes spare quota of `key` off this shard's share, for another shard.
    fn give(&mut self, lp: &LimitPlan, key: u64, now: u64, interval: u64) -> u64 {
        let e = self.local_entry(lp, key, now);
        e.last_seen = now;
        let alg = lp.algorithm.scaled(e.quota, lp.units);
        alg.advance(&mut e.state, now);
        let spare = alg.decide(&e.state, now, 0).remaining.min(e.quota);
        let active =
            now.saturating_sub(e.last_request) < interval.saturating_mul(2) && e.last_request > 0;
        // A busy shard keeps half (rounded up: its last unit stays where the
        // traffic is, instead of bouncing between busy shards).
        let give = if active { spare / 2 } else { spare };
        if give > 0 {
            lp.algorithm.transfer(&mut e.state, give, true);
            e.quota -= give;
        }
        give
    }

    /// Adds quota of `key` given by another shard.
    fn take(&mut self, lp: &LimitPlan, key: u64, units: u64, now: u64) {
        let e = self.local_entry(lp, key, now);
        e.last_seen = now;
        e.quota += units;
        lp.algorithm.transfer(&mut e.state, units, false);
        e.received += units;
        e.pending_replies = e.pending_replies.saturating_sub(1);
        if e.pending_replies == 0 && e.received == 0 {
            // Nobody had anything to spare: stop asking until this shard's
            // own share could admit again.
            let alg = lp.algorithm.scaled(e.quota, lp.units);
            alg.advance(&mut e.state, now);
            let wait = alg.decide(&e.state, now, 1).retry_after_ns;
            e.dry_until = now + wait.clamp(1_000_000, 1_000_000_000);
        }
    }
}

/// How long leased units may be spent: a fixed window's units belong to its
/// window, so they end with it (`reset_ns`, the time to the window's end);
/// other algorithms' units are spent within one second.
fn lease_ttl(alg: &Algorithm, grant: &Grant) -> u64 {
    const SECOND: u64 = 1_000_000_000;
    match alg {
        Algorithm::FixedWindow { .. } if grant.reset_ns > 0 => grant.reset_ns.min(SECOND),
        _ => SECOND,
    }
}

fn open_decision(limit: u64) -> Decision {
    Decision {
        allowed: true,
        limit,
        remaining: limit,
        reset_ns: 0,
        retry_after_ns: 0,
        delay_ns: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::algorithm::Algorithm;
    use crate::ratelimit::table::key_hash;

    const MS: u64 = 1_000_000;

    fn plan(alg: Algorithm, units: u64) -> RateLimitPlan {
        RateLimitPlan::single_local("l", alg, units)
    }

    fn shards(n: usize, p: &RateLimitPlan) -> Vec<Limiter> {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..n).map(|_| crossbeam_channel::unbounded()).unzip();
        rx.into_iter()
            .enumerate()
            .map(|(i, inbox)| {
                let mut l = Limiter::new(i, tx.clone(), inbox);
                l.configure(p, 7);
                l
            })
            .collect()
    }

    fn check(key: &str) -> Check {
        Check {
            limit: 0,
            key: key_hash("l", key),
            text: String::new(),
        }
    }

    fn admitted(l: &mut Limiter, p: &RateLimitPlan, key: &str, now: u64) -> Outcome {
        let mut out = Vec::new();
        l.admit(p, &[check(key)], 0, now, 1, &mut out)
    }

    fn quota_sum(ls: &mut [Limiter], p: &RateLimitPlan, key: &str, now: u64) -> u64 {
        ls.iter_mut()
            .map(|l| l.local_entry(&p.limits[0], key_hash("l", key), now).quota)
            .sum()
    }

    #[test]
    fn shares_start_even_and_add_up_to_the_limit() {
        let p = plan(
            Algorithm::FixedWindow {
                limit: 203,
                window_ns: 3_600_000 * MS,
            },
            203,
        );
        let mut ls = shards(4, &p);
        for key in ["a", "b", "c", "d", "e"] {
            assert_eq!(quota_sum(&mut ls, &p, key, 0), 203);
        }
    }

    /// Requests land on random shards at random times, shards tick at their
    /// own phases: the host-wide admitted count never passes the limit,
    /// quota is conserved, and the limit is reached.
    #[test]
    fn quota_moves_between_shards_without_overshoot() {
        for alg in [
            Algorithm::FixedWindow {
                limit: 200,
                window_ns: 3_600_000 * MS,
            },
            Algorithm::TokenBucket {
                capacity: 200,
                refill_per_s: 0.0001,
            },
        ] {
            let p = plan(alg, 200);
            let mut ls = shards(4, &p);
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            let mut rnd = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let mut ok = 0;
            // 2 s of traffic in 10 µs steps; shard i ticks every 5 ms at phase i.
            for step in 0..200_000u64 {
                let now = 1_000 * MS + step * 10_000;
                for (i, l) in ls.iter_mut().enumerate() {
                    if (step + i as u64 * 125).is_multiple_of(500) {
                        l.tick(&p, now);
                    }
                }
                // Traffic mostly on shards 0 and 1, some on 2, none on 3.
                let s = match rnd() % 10 {
                    0..=4 => 0,
                    5..=8 => 1,
                    _ => 2,
                };
                if let Outcome::Admitted { .. } = admitted(&mut ls[s], &p, "hot", now) {
                    ok += 1;
                }
                assert!(ok <= 200, "admitted {ok} > 200");
            }
            assert_eq!(ok, 200, "{:?}", p.limits[0].algorithm);
            assert!(quota_sum(&mut ls, &p, "hot", 3_000 * MS) <= 200);
        }
    }

    #[test]
    fn a_key_seen_on_one_shard_gets_the_whole_limit_after_one_exchange() {
        let p = plan(
            Algorithm::TokenBucket {
                capacity: 20,
                refill_per_s: 0.0001,
            },
            20,
        );
        let mut ls = shards(4, &p);
        let mut now = 10 * MS;
        let mut ok = 0;
        while let Outcome::Admitted { .. } = admitted(&mut ls[2], &p, "k", now) {
            ok += 1;
        }
        assert_eq!(ok, 5, "the even share");
        // The refusal asked the others; one tick each to answer, one to take in.
        let Outcome::Refused { wait: Some(_) } = admitted(&mut ls[2], &p, "k", now) else {
            panic!("should ask for quota");
        };
        now += 5 * MS;
        for i in [0, 1, 3, 2] {
            ls[i].tick(&p, now);
        }
        while let Outcome::Admitted { .. } = admitted(&mut ls[2], &p, "k", now) {
            ok += 1;
        }
        assert_eq!(ok, 20, "idle shards give all they have");
        // The shard holds the whole limit: nothing to wait for.
        let Outcome::Refused { wait: None } = admitted(&mut ls[2], &p, "k", now) else {
            panic!("should refuse without waiting");
        };
    }

    #[test]
    fn gossip_from_another_config_is_ignored() {
        let p = plan(
            Algorithm::FixedWindow {
                limit: 4,
                window_ns: 3_600_000 * MS,
            },
            4,
        );
        let mut ls = shards(2, &p);
        let key = key_hash("l", "k");
        ls[0].send_to(
            1,
            Gossip::Give {
                from: 0,
                generation: 99,
                limit: 0,
                key,
                units: 1000,
            },
        );
        ls[1].tick(&p, MS);
        assert_eq!(quota_sum(&mut ls, &p, "k", MS), 4);
    }
}
