//! Rate-limit algorithms as pure functions of their state and the time.
//!
//! Each admission is three steps, so that several limits can apply to one
//! request and a request refused by any of them consumes from none:
//! [`Algorithm::advance`] moves a state to `now` (refill, drain, roll a
//! window, drop old log entries — true whatever the decision), then
//! [`Algorithm::decide`] says whether `cost` fits without changing anything,
//! and only when every limit admitted does [`Algorithm::consume`] record it.
//! Time is a parameter in nanoseconds on a monotonic clock; nothing here
//! reads a clock.

use std::collections::VecDeque;

const NS: u64 = 1_000_000_000;

/// A limit's algorithm and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Algorithm {
    /// Bursts up to `capacity`, refilled continuously at `refill_per_s`.
    TokenBucket { capacity: u64, refill_per_s: f64 },
    /// A bucket drained at `drain_per_s` holding at most `capacity`; with
    /// `max_wait_ns` requests that would overflow the rate are delayed (up to
    /// that wait) instead of refused, smoothing bursts.
    LeakyBucket {
        capacity: u64,
        drain_per_s: f64,
        max_wait_ns: Option<u64>,
    },
    /// At most `limit` per aligned window.
    FixedWindow { limit: u64, window_ns: u64 },
    /// At most `limit` per sliding window, estimated from the current and
    /// previous fixed windows (the previous weighted by its overlap).
    SlidingWindow { limit: u64, window_ns: u64 },
    /// At most `limit` per sliding window, exactly, from a log of admissions
    /// (memory: up to `limit` timestamps per key).
    SlidingLog { limit: u64, window_ns: u64 },
}

/// Per-key state of one limit.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Tokens left, as of `at`.
    Tokens { tokens: f64, at: u64 },
    /// Water in the bucket, as of `at`.
    Level { level: f64, at: u64 },
    /// Count in the window starting at `start`.
    Window { start: u64, count: u64 },
    /// Counts of the current window (from `start`) and the previous one.
    Sliding {
        start: u64,
        current: u64,
        previous: u64,
    },
    /// Admission times within the window.
    Log(VecDeque<u64>),
}

/// The outcome of [`Algorithm::decide`], with what the headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The request fits.
    pub allowed: bool,
    /// The limit's size (`RateLimit-Limit`).
    pub limit: u64,
    /// What is left after this request if it is admitted (`RateLimit-Remaining`).
    pub remaining: u64,
    /// Nanoseconds until the limit is fully available again (`RateLimit-Reset`).
    pub reset_ns: u64,
    /// Nanoseconds until a refused request could fit (`Retry-After`); 0 when allowed.
    pub retry_after_ns: u64,
    /// Nanoseconds an admitted request should be held back (leaky bucket in queue mode).
    pub delay_ns: u64,
}

fn secs_to_ns(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 {
        (s * NS as f64).ceil() as u64
    } else {
        0
    }
}

impl Algorithm {
    /// The state of a key seen for the first time at `now`.
    pub fn new_state(&self, now: u64) -> State {
        match self {
            Algorithm::TokenBucket { capacity, .. } => State::Tokens {
                tokens: *capacity as f64,
                at: now,
            },
            Algorithm::LeakyBucket { .. } => State::Level {
                level: 0.0,
                at: now,
            },
            Algorithm::FixedWindow { window_ns, .. } => State::Window {
                start: now - now % window_ns.max(&1),
                count: 0,
            },
            Algorithm::SlidingWindow { window_ns, .. } => State::Sliding {
                start: now - now % window_ns.max(&1),
                current: 0,
                previous: 0,
            },
            Algorithm::SlidingLog { .. } => State::Log(VecDeque::new()),
        }
    }

    /// This algorithm with its size cut to `quota` of `units` (a shard's
    /// share of a limit): capacity or limit becomes `quota`, and refill or
    /// drain rates shrink in proportion, so the shares add up to the whole.
    pub fn scaled(&self, quota: u64, units: u64) -> Algorithm {
        if quota == units {
            return self.clone();
        }
        let f = quota as f64 / units.max(1) as f64;
        match *self {
            Algorithm::TokenBucket { refill_per_s, .. } => Algorithm::TokenBucket {
                capacity: quota,
                refill_per_s: refill_per_s * f,
            },
            Algorithm::LeakyBucket {
                drain_per_s,
                max_wait_ns,
                ..
            } => Algorithm::LeakyBucket {
                capacity: quota,
                drain_per_s: drain_per_s * f,
                max_wait_ns,
            },
            Algorithm::FixedWindow { window_ns, .. } => Algorithm::FixedWindow {
                limit: quota,
                window_ns,
            },
            Algorithm::SlidingWindow { window_ns, .. } => Algorithm::SlidingWindow {
                limit: quota,
                window_ns,
            },
            Algorithm::SlidingLog { window_ns, .. } => Algorithm::SlidingLog {
                limit: quota,
                window_ns,
            },
        }
    }

    /// Moves `units` of spare capacity out of (`give`) or into a state when
    /// quota changes hands: only a token bucket holds them as tokens.
    pub fn transfer(&self, st: &mut State, units: u64, give: bool) {
        if let State::Tokens { tokens, .. } = st {
            let u = units as f64;
            *tokens = if give { *tokens - u } else { *tokens + u };
        }
    }

    /// Brings `st` forward to `now`; independent of any decision.
    pub fn advance(&self, st: &mut State, now: u64) {
        match (self, st) {
            (
                Algorithm::TokenBucket {
                    capacity,
                    refill_per_s,
                },
                State::Tokens { tokens, at },
            ) => {
                if now > *at {
                    let gained = (now - *at) as f64 / NS as f64 * refill_per_s;
                    *tokens = (*tokens + gained).min(*capacity as f64);
                    *at = now;
                }
            }
            (Algorithm::LeakyBucket { drain_per_s, .. }, State::Level { level, at }) => {
                if now > *at {
                    let drained = (now - *at) as f64 / NS as f64 * drain_per_s;
                    *level = (*level - drained).max(0.0);
                    *at = now;
                }
            }
            (Algorithm::FixedWindow { window_ns, .. }, State::Window { start, count }) => {
                let w = (*window_ns).max(1);
                let aligned = now - now % w;
                if aligned > *start {
                    *start = aligned;
                    *count = 0;
                }
            }
            (
                Algorithm::SlidingWindow { window_ns, .. },
                State::Sliding {
                    start,
                    current,
                    previous,
                },
            ) => {
                let w = (*window_ns).max(1);
                let aligned = now - now % w;
                if aligned > *start {
                    *previous = if aligned - *start == w { *current } else { 0 };
                    *current = 0;
                    *start = aligned;
                }
            }
            (Algorithm::SlidingLog { window_ns, .. }, State::Log(log)) => {
                while log
                    .front()
                    .is_some_and(|&t| t.saturating_add(*window_ns) <= now)
                {
                    log.pop_front();
                }
            }
            // A state of another algorithm (the limit was reconfigured): start over.
            (alg, st) => *st = alg.new_state(now),
        }
    }

    /// Whether `cost` fits in an advanced state, without changing it.
    pub fn decide(&self, st: &State, now: u64, cost: u64) -> Decision {
        let c = cost as f64;
        match (self, st) {
            (
                Algorithm::TokenBucket {
                    capacity,
                    refill_per_s,
                },
                State::Tokens { tokens, .. },
            ) => {
                let allowed = c <= *tokens;
                let left = if allowed { tokens - c } else { *tokens };
                Decision {
                    allowed,
                    limit: *capacity,
                    remaining: left.max(0.0).floor() as u64,
                    reset_ns: secs_to_ns((*capacity as f64 - left) / refill_per_s),
                    retry_after_ns: if allowed {
                        0
                    } else {
                        secs_to_ns((c - tokens) / refill_per_s)
                    },
                    delay_ns: 0,
                }
            }
            (
                Algorithm::LeakyBucket {
                    capacity,
                    drain_per_s,
                    max_wait_ns,
                },
                State::Level { level, .. },
            ) => {
                let cap = *capacity as f64;
                let (allowed, delay_ns) = match max_wait_ns {
                    None => (level + c <= cap, 0),
                    Some(max) => {
                        // Queue mode: the request leaves once what is ahead of it has drained.
                        let wait = secs_to_ns((level + c - 1.0).max(0.0) / drain_per_s);
                        (level + c <= cap && wait <= *max, wait)
                    }
                };
                let after = if allowed { level + c } else { *level };
                Decision {
                    allowed,
                    limit: *capacity,
                    remaining: (cap - after).max(0.0).floor() as u64,
                    reset_ns: secs_to_ns(after / drain_per_s),
                    retry_after_ns: if allowed {
                        0
                    } else {
                        secs_to_ns((level + c - cap).max(1.0) / drain_per_s)
                    },
                    delay_ns: if allowed { delay_ns } else { 0 },
                }
            }
            (Algorithm::FixedWindow { limit, window_ns }, State::Window { start, count }) => {
                let allowed = count.saturating_add(cost) <= *limit;
                let after = if allowed { count + cost } else { *count };
                let reset = start.saturating_add(*window_ns).saturating_sub(now);
                Decision {
                    allowed,
                    limit: *limit,
                    remaining: limit.saturating_sub(after),
                    reset_ns: reset,
                    retry_after_ns: if allowed { 0 } else { reset },
                    delay_ns: 0,
                }
            }
            (
                Algorithm::SlidingWindow { limit, window_ns },
                State::Sliding {
                    start,
                    current,
                    previous,
                },
            ) => {
                let w = (*window_ns).max(1) as f64;
                let elapsed = now.saturating_sub(*start) as f64;
                let weight = (1.0 - elapsed / w).max(0.0);
                let estimate = *previous as f64 * weight + *current as f64;
                let allowed = estimate + c <= *limit as f64;
                let after = if allowed { estimate + c } else { estimate };
                let window_end = start.saturating_add(*window_ns).saturating_sub(now);
                // The previous window's weight falls linearly: when does enough of it go?
                let retry = if allowed {
                    0
                } else if current.saturating_add(cost) as f64 <= *limit as f64 && *previous > 0 {
                    let need_weight = (*limit as f64 - *current as f64 - c) / *previous as f64;
                    let t = w * (1.0 - need_weight) - elapsed;
                    t.max(0.0).ceil() as u64
                } else {
                    window_end
                };
                Decision {
                    allowed,
                    limit: *limit,
                    remaining: (*limit as f64 - after).max(0.0).floor() as u64,
                    reset_ns: window_end,
                    retry_after_ns: retry,
                    delay_ns: 0,
                }
            }
            (Algorithm::SlidingLog { limit, window_ns }, State::Log(log)) => {
                let count = log.len() as u64;
                let allowed = count.saturating_add(cost) <= *limit;
                let after = if allowed { count + cost } else { count };
                // The entry whose expiry makes room for `cost`.
                let idx = usize::try_from(count.saturating_add(cost).saturating_sub(*limit))
                    .unwrap_or(usize::MAX);
                let retry = if allowed || idx == 0 {
                    0
                } else {
                    log.get(idx - 1).map_or(*window_ns, |&t| {
                        t.saturating_add(*window_ns).saturating_sub(now)
                    })
                };
                Decision {
                    allowed,
                    limit: *limit,
                    remaining: limit.saturating_sub(after),
                    reset_ns: log
                        .back()
                        .map_or(0, |&t| t.saturating_add(*window_ns).saturating_sub(now)),
                    retry_after_ns: retry,
                    delay_ns: 0,
                }
            }
            // Mismatched state: only possible without advance(); refuse nothing.
            (alg, _) => alg.decide(&alg.new_state(now), now, cost),
        }
    }

    /// Records an admitted request of `cost` in an advanced state.
    pub fn consume(&self, st: &mut State, now: u64, cost: u64) {
        match st {
            State::Tokens { tokens, .. } => *tokens -= cost as f64,
            State::Level { level, .. } => *level += cost as f64,
            State::Window { count, .. } => *count += cost,
            State::Sliding { current, .. } => *current += cost,
            State::Log(log) => {
                for _ in 0..cost {
                    log.push_back(now);
                }
            }
        }
    }

    /// Advance, decide and, if allowed, consume: one limit on its own.
    pub fn admit(&self, st: &mut State, now: u64, cost: u64) -> Decision {
        self.advance(st, now);
        let d = self.decide(st, now, cost);
        if d.allowed {
            self.consume(st, now, cost);
        }
        d
    }
}

/// Admits a request only if every limit admits it; a refused request
/// consumes from none. Returns whether it was admitted and each decision.
pub fn admit_all(
    limits: &mut [(&Algorithm, &mut State)],
    now: u64,
    cost: u64,
) -> (bool, Vec<Decision>) {
    for (alg, st) in limits.iter_mut() {
        alg.advance(st, now);
    }
    let decisions: Vec<Decision> = limits
        .iter()
        .map(|(alg, st)| alg.decide(st, now, cost))
        .collect();
    let admitted = decisions.iter().all(|d| d.allowed);
    if admitted {
        for (alg, st) in limits.iter_mut() {
            alg.consume(st, now, cost);
        }
    }
    (admitted, decisions)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn run(alg: &Algorithm, times_ms: &[u64]) -> Vec<bool> {
        let mut st = alg.new_state(0);
        times_ms
            .iter()
            .map(|&t| alg.admit(&mut st, t * MS, 1).allowed)
            .collect()
    }

    #[test]
    fn a_window_too_long_for_the_clock_still_counts() {
        // `window_s` from config saturates to u64::MAX ns: window ends must
        // saturate too, not wrap (a wrapped sliding log forgot every entry).
        let now = 1_700_000_000 * 1_000 * MS;
        for alg in [
            Algorithm::FixedWindow {
                limit: 2,
                window_ns: u64::MAX,
            },
            Algorithm::SlidingWindow {
                limit: 2,
                window_ns: u64::MAX,
            },
            Algorithm::SlidingLog {
                limit: 2,
                window_ns: u64::MAX,
            },
        ] {
            let mut st = alg.new_state(now);
            let admitted: Vec<bool> = (0..3)
                .map(|i| alg.admit(&mut st, now + i * MS, 1).allowed)
                .collect();
            assert_eq!(admitted, [true, true, false], "{alg:?}");
            let d = alg.decide(&st, now + 3 * MS, 1);
            assert!(d.retry_after_ns > 1_000_000 * 1_000 * MS, "{alg:?}: {d:?}");
        }
    }

    #[test]
    fn token_bucket_bursts_then_refills() {
        let tb = Algorithm::TokenBucket {
            capacity: 3,
            refill_per_s: 10.0,
        };
        // 3 at once, the 4th refused; 100 ms later one token is back.
        assert_eq!(
            run(&tb, &[0, 0, 0, 0, 100, 100]),
            [true, true, true, false, true, false]
        );
        let mut st = tb.new_state(0);
        for _ in 0..3 {
            tb.admit(&mut st, 0, 1);
        }
        let d = tb.admit(&mut st, 0, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ns, 100 * MS);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.reset_ns, 300 * MS);
    }

    #[test]
    fn leaky_bucket_rejects_or_delays() {
        let lb = Algorithm::LeakyBucket {
            capacity: 2,
            drain_per_s: 10.0,
            max_wait_ns: None,
        };
        assert_eq!(
            run(&lb, &[0, 0, 0, 100, 100, 250]),
            [true, true, false, true, false, true]
        );
        let q = Algorithm::LeakyBucket {
            capacity: 5,
            drain_per_s: 10.0,
            max_wait_ns: Some(250 * MS),
        };
        let mut st = q.new_state(0);
        let delays: Vec<(bool, u64)> = (0..5)
            .map(|_| {
                let d = q.admit(&mut st, 0, 1);
                (d.allowed, d.delay_ns / MS)
            })
            .collect();
        // Spaced 100 ms apart; the 4th would wait 300 ms > 250 ms and is refused.
        assert_eq!(
            delays,
            [(true, 0), (true, 100), (true, 200), (false, 0), (false, 0)]
        );
    }

    #[test]
    fn fixed_window_resets_on_boundaries() {
        let fw = Algorithm::FixedWindow {
            limit: 2,
            window_ns: 1000 * MS,
        };
        assert_eq!(
            run(&fw, &[0, 10, 20, 999, 1000, 1001, 1002]),
            [true, true, false, false, true, true, false]
        );
        let mut st = fw.new_state(0);
        fw.admit(&mut st, 0, 1);
        fw.admit(&mut st, 0, 1);
        let d = fw.admit(&mut st, 400 * MS, 1);
        assert_eq!(
            (d.allowed, d.retry_after_ns / MS, d.reset_ns / MS),
            (false, 600, 600)
        );
    }

    #[test]
    fn sliding_window_weights_the_previous_window() {
        let sw = Algorithm::SlidingWindow {
            limit: 10,
            window_ns: 1000 * MS,
        };
        let mut st = sw.new_state(0);
        for _ in 0..10 {
            assert!(sw.admit(&mut st, 900 * MS, 1).allowed);
        }
        // At 1.5 s half of the previous window still counts: 5 of 10 used.
        let admitted = (0..10)
            .filter(|_| sw.admit(&mut st, 1500 * MS, 1).allowed)
            .count();
        assert_eq!(admitted, 5);
        // A fixed window would have allowed 10 right at the boundary.
        let fw = Algorithm::FixedWindow {
            limit: 10,
            window_ns: 1000 * MS,
        };
        let mut fst = fw.new_state(0);
        for _ in 0..10 {
            fw.admit(&mut fst, 900 * MS, 1);
        }
        assert_eq!(
            (0..10)
                .filter(|_| fw.admit(&mut fst, 1000 * MS, 1).allowed)
                .count(),
            10
        );
    }

    #[test]
    fn several_limits_consume_only_together() {
        let per_s = Algorithm::FixedWindow {
            limit: 5,
            window_ns: 1000 * MS,
        };
        let burst = Algorithm::TokenBucket {
            capacity: 2,
            refill_per_s: 1.0,
        };
        let (mut a, mut b) = (per_s.new_state(0), burst.new_state(0));
        let mut admitted = 0;
        for _ in 0..4 {
            let (ok, ds) = admit_all(&mut [(&per_s, &mut a), (&burst, &mut b)], 0, 1);
            assert_eq!(ds.len(), 2);
            admitted += usize::from(ok);
        }
        assert_eq!(admitted, 2, "the token bucket allows a burst of 2");
        // The refused requests took nothing from the window: 3 of 5 left.
        assert_eq!(per_s.decide(&a, 0, 1).remaining, 2);
        assert!(per_s.decide(&a, 0, 3).allowed);
    }

    #[test]
    fn sliding_log_is_exact() {
        let sl = Algorithm::SlidingLog {
            limit: 3,
            window_ns: 1000 * MS,
        };
        assert_eq!(
            run(&sl, &[0, 300, 600, 900, 1000, 1250, 1300, 1301]),
            [true, true, true, false, true, false, true, false]
        );
        let mut st = sl.new_state(0);
        for t in [0, 300, 600] {
            sl.admit(&mut st, t * MS, 1);
        }
        let d = sl.admit(&mut st, 700 * MS, 1);
        assert_eq!(
            d.retry_after_ns / MS,
            300,
            "the oldest entry leaves at 1000 ms"
        );
    }
}
