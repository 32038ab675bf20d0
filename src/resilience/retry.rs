//! Retries: which requests may be tried again, how long to wait between
//! tries, and the budget that keeps retries from multiplying the load on an
//! upstream that is down.
//!
//! # Budget
//! Each shard keeps, per upstream, the first tries and the retries of the
//! last ten seconds (ten one-second buckets). A retry is allowed while the
//! window's retries stay below `budget_ratio × first tries + budget_floor_per_s
//! × 10`. Each shard counts only its own requests: the host-wide bound is the
//! sum of the shards' bounds, i.e. the same ratio of the host's requests plus
//! `shards ×` the floor. So in any ten seconds an upstream sees at most
//! `N × (1 + budget_ratio) + shards × 10 × budget_floor_per_s` tries for `N`
//! requests.

use super::breaker::StatusSet;
use std::time::Duration;

/// One-second buckets in the budget window.
const BUCKETS: usize = 10;
const SECOND_NS: u64 = 1_000_000_000;

/// Bodies up to this size are read ahead when a request may go to an
/// alternate upstream and no retry policy says otherwise.
pub const DEFAULT_BUFFER_BODY_BYTES: u64 = 64 * 1024;

/// A compiled retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPlan {
    /// Tries in all (at least 1).
    pub max_attempts: u32,
    /// Retries allowed per first try, over the window.
    pub budget_ratio: f64,
    /// Retries always allowed per second.
    pub budget_floor_per_s: u32,
    /// Time for each try's response head (`None`: the upstream's timeout).
    pub per_try_timeout: Option<Duration>,
    /// Statuses that are retried.
    pub statuses: StatusSet,
    /// First backoff.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// Largest request body read ahead so it can be sent again.
    pub buffer_body_bytes: u64,
}

impl RetryPlan {
    /// The wait before retry number `retry` (1 for the first retry): a random
    /// share (`unit` in 0..1) of `base × 2^(retry − 1)`, capped ("full jitter").
    pub fn backoff(&self, retry: u32, unit: f64) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.backoff_max);
        exp.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// True when a request with this method may be retried without an opt-in
/// (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE).
pub fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// First tries and retries of one upstream on one shard, over ten seconds.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    tries: [u32; BUCKETS],
    retries: [u32; BUCKETS],
    head: u64,
    total_tries: u32,
    total_retries: u32,
}

impl Budget {
    fn roll(&mut self, now: u64) {
        let second = now / SECOND_NS;
        if second <= self.head {
            return;
        }
        if second - self.head >= BUCKETS as u64 {
            *self = Budget {
                head: second,
                ..Budget::default()
            };
            return;
        }
        for s in self.head + 1..=second {
            let i = (s % BUCKETS as u64) as usize;
            if let (Some(t), Some(r)) = (self.tries.get_mut(i), self.retries.get_mut(i)) {
                self.total_tries = self.total_tries.saturating_sub(*t);
                self.total_retries = self.total_retries.saturating_sub(*r);
                *t = 0;
                *r = 0;
            }
        }
        self.head = second;
    }

    /// Counts a request's first try.
    pub fn first_try(&mut self, now: u64) {
        self.roll(now);
        let i = (self.head % BUCKETS as u64) as usize;
        if let Some(t) = self.tries.get_mut(i) {
            *t = t.saturating_add(1);
            self.total_tries = self.total_tries.saturating_add(1);
        }
    }

    /// Takes one retry from the budget, if there is one left.
    pub fn take_retry(&mut self, now: u64, ratio: f64, floor_per_s: u32) -> bool {
        self.roll(now);
        let allowed = ratio * f64::from(self.total_tries) + f64::from(floor_per_s) * BUCKETS as f64;
        if f64::from(self.total_retries) + 1.0 > allowed {
            return false;
        }
        let i = (self.head % BUCKETS as u64) as usize;
        if let Some(r) = self.retries.get_mut(i) {
            *r = r.saturating_add(1);
            self.total_retries = self.total_retries.saturating_add(1);
        }
        true
    }
}

/// A shard's retry budgets, per upstream index, and the random source for
/// backoff jitter.
#[derive(Debug, Default)]
pub struct Budgets {
    list: Vec<Budget>,
    rng: u64,
    /// Per upstream index: what retries and fallbacks happened (for reports).
    pub stats: Vec<UpstreamStats>,
}

/// Retries and fallbacks of one upstream on one shard, since the config was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamStats {
    /// Retries sent.
    pub retries: u64,
    /// Retries the budget refused.
    pub retries_refused: u64,
    /// Fallback answers, by [`super::fallback::Reason::index`].
    pub fallbacks: [u64; 6],
}

impl Budgets {
    /// The budget of upstream `up` (grown on first use; upstream indexes
    /// are bounded by the config).
    pub fn of(&mut self, up: usize) -> Option<&mut Budget> {
        if self.list.len() <= up {
            self.list.resize_with(up + 1, Budget::default);
        }
        self.list.get_mut(up)
    }

    /// Forgets every budget (a reload may renumber upstreams).
    pub fn clear(&mut self) {
        self.list.clear();
        self.stats.clear();
    }

    /// The counters of upstream `up` (grown on first use, like the budgets).
    pub fn stats_of(&mut self, up: usize) -> Option<&mut UpstreamStats> {
        if self.stats.len() <= up {
            self.stats.resize_with(up + 1, UpstreamStats::default);
        }
        self.stats.get_mut(up)
    }

    /// A number in 0..1 (xorshift; jitter needs no more).
    pub fn unit(&mut self, seed: u64) -> f64 {
        if self.rng == 0 {
            self.rng = seed | 1;
        }
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods() {
        for m in ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"] {
            assert!(idempotent(m), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "get"] {
            assert!(!idempotent(m), "{m}");
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPlan {
            max_attempts: 5,
            budget_ratio: 0.2,
            budget_floor_per_s: 0,
            per_try_timeout: None,
            statuses: StatusSet::of([503]),
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(35),
            buffer_body_bytes: 0,
        };
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(10));
        assert_eq!(p.backoff(2, 1.0), Duration::from_millis(20));
        assert_eq!(p.backoff(3, 1.0), Duration::from_millis(35));
        assert_eq!(p.backoff(40, 0.5), Duration::from_micros(17_500));
        assert_eq!(p.backoff(1, 0.0), Duration::ZERO);
    }

    #[test]
    fn budget_bounds_retries_by_ratio() {
        let mut b = Budget::default();
        let mut retries = 0;
        for i in 0..100u64 {
            b.first_try(i * 1_000_000);
            if b.take_retry(i * 1_000_000, 0.2, 0) {
                retries += 1;
            }
        }
        assert_eq!(retries, 20);
        // Ten seconds later the window is empty again: nothing left.
        assert!(!b.take_retry(20 * SECOND_NS, 0.2, 0));
    }

    #[test]
    fn floor_allows_a_few_without_traffic() {
        let mut b = Budget::default();
        let got = (0..100).filter(|_| b.take_retry(5, 0.2, 2)).count();
        assert_eq!(got, 20);
    }

    #[test]
    fn unit_is_in_range() {
        let mut b = Budgets::default();
        for _ in 0..1000 {
            let u = b.unit(42);
            assert!((0.0..1.0).contains(&u));
        }
    }
}
