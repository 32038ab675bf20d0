//! Passive outlier ejection: the pure rules.
//!
//! Each shard counts, per target, the failures in a row it saw itself
//! ([`Streak`]); when a streak reaches its threshold the shard tells the
//! control side, which alone decides ([`Ejections`]): it applies the pool's
//! `max_ejection_percent` across the whole host, lengthens the ejection with
//! each repeat, and broadcasts the result to every shard. A shard's view may
//! thus lag by one control tick (20 ms); no shard ever waits for another.

use crate::config::OutlierDetection;
use crate::metrics::UpstreamOutcome;
use std::time::{Duration, Instant};

/// Failures in a row of one target, seen by one shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streak {
    /// 5xx answers, resets and timeouts in a row.
    pub failed: u32,
    /// Failed connection attempts in a row.
    pub connect_failed: u32,
}

impl Streak {
    /// Counts one call's outcome; true when it completes a streak that
    /// `od` ejects for (the streak then starts over).
    pub fn record(&mut self, outcome: UpstreamOutcome, od: &OutlierDetection) -> bool {
        match outcome {
            UpstreamOutcome::Ok => {
                *self = Streak::default();
                false
            }
            UpstreamOutcome::ConnectError => {
                self.connect_failed += 1;
                self.failed = 0;
                if od.consecutive_connect_failures > 0
                    && self.connect_failed >= od.consecutive_connect_failures
                {
                    *self = Streak::default();
                    return true;
                }
                false
            }
            _ => {
                self.failed += 1;
                self.connect_failed = 0;
                if od.consecutive_5xx > 0 && self.failed >= od.consecutive_5xx {
                    *self = Streak::default();
                    return true;
                }
                false
            }
        }
    }
}

/// The ejection record of one target, kept by the control side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ejection {
    /// Ejected until then (`None`: in the pool).
    pub until: Option<Instant>,
    /// Times ejected since the process started.
    pub times: u64,
    /// What the next ejection's length is multiplied by, less one: it grows
    /// with each ejection and starts over once the target has stayed in the
    /// pool for `max_ejection_s` (as Envoy lets its multiplier fall back
    /// while a host stays healthy).
    pub streak: u64,
    /// When the target was last re-admitted.
    pub back_since: Option<Instant>,
}

/// Most targets of a pool of `n` that may be ejected at once under
/// `percent`: the share rounded down, but at least one.
pub fn max_ejected(n: usize, percent: u32) -> usize {
    (n.saturating_mul(percent.min(100) as usize) / 100).max(1)
}

/// The length of the `times`-th ejection in a row (1-based) under `od`.
pub fn ejection_time(od: &OutlierDetection, times: u64) -> Duration {
    let s = od
        .base_ejection_s
        .saturating_mul(times.max(1))
        .min(od.max_ejection_s.max(od.base_ejection_s));
    Duration::from_secs(s)
}

/// Ejects `target` of a pool whose records are `pool` if the cap allows;
/// true when it was ejected (false: already out, or the cap is reached).
pub fn eject(pool: &mut [Ejection], target: usize, od: &OutlierDetection, now: Instant) -> bool {
    let out = pool.iter().filter(|e| e.until.is_some()).count();
    let cap = max_ejected(pool.len(), od.max_ejection_percent);
    let Some(e) = pool.get_mut(target) else {
        return false;
    };
    if e.until.is_some() || out >= cap {
        return false;
    }
    let calm = Duration::from_secs(od.max_ejection_s.max(od.base_ejection_s));
    if e.back_since
        .is_some_and(|b| now.saturating_duration_since(b) >= calm)
    {
        e.streak = 0;
    }
    e.times += 1;
    e.streak += 1;
    e.until = Some(now + ejection_time(od, e.streak));
    true
}

/// Re-admits every target of `pool` whose ejection is over at `now`; true
/// when any was.
pub fn readmit(pool: &mut [Ejection], now: Instant) -> bool {
    let mut any = false;
    for e in pool {
        if e.until.is_some_and(|u| u <= now) {
            e.until = None;
            e.back_since = Some(now);
            any = true;
        }
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn od(n: u32, percent: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: n,
            consecutive_connect_failures: n,
            base_ejection_s: 10,
            max_ejection_s: 25,
            max_ejection_percent: percent,
        }
    }

    #[test]
    fn a_streak_ejects_only_when_unbroken() {
        let o = od(3, 50);
        let mut s = Streak::default();
        assert!(!s.record(UpstreamOutcome::ServerError, &o));
        assert!(!s.record(UpstreamOutcome::Timeout, &o));
        assert!(!s.record(UpstreamOutcome::Ok, &o));
        assert!(!s.record(UpstreamOutcome::ServerError, &o));
        assert!(!s.record(UpstreamOutcome::Reset, &o));
        assert!(s.record(UpstreamOutcome::ServerError, &o));
        assert_eq!(s, Streak::default());
        assert!(!s.record(UpstreamOutcome::ConnectError, &o));
        assert!(!s.record(UpstreamOutcome::ConnectError, &o));
        assert!(s.record(UpstreamOutcome::ConnectError, &o));
        // 0 turns a kind off.
        let mut off = od(0, 50);
        off.consecutive_connect_failures = 1;
        assert!(!s.record(UpstreamOutcome::ServerError, &off));
        assert!(s.record(UpstreamOutcome::ConnectError, &off));
    }

    #[test]
    fn the_cap_and_growing_ejections() {
        assert_eq!(max_ejected(2, 50), 1);
        assert_eq!(max_ejected(3, 10), 1);
        assert_eq!(max_ejected(10, 30), 3);
        assert_eq!(max_ejected(4, 100), 4);
        let o = od(3, 50);
        let now = Instant::now();
        let mut pool = [Ejection::default(); 4];
        assert!(eject(&mut pool, 0, &o, now));
        assert!(!eject(&mut pool, 0, &o, now), "already out");
        assert!(eject(&mut pool, 1, &o, now));
        assert!(!eject(&mut pool, 2, &o, now), "half the pool is out");
        assert!(!eject(&mut pool, 9, &o, now));
        assert!(!readmit(&mut pool, now + Duration::from_secs(9)));
        assert!(readmit(&mut pool, now + Duration::from_secs(10)));
        assert_eq!(pool[0].until, None);
        let later = now + Duration::from_secs(10);
        assert!(eject(&mut pool, 0, &o, later));
        assert_eq!(pool[0].until, Some(later + Duration::from_secs(20)));
        pool[0].until = None;
        assert!(eject(&mut pool, 0, &o, later));
        assert_eq!(
            pool[0].until,
            Some(later + Duration::from_secs(25)),
            "capped"
        );
        // In the pool for max_ejection_s, a target starts over at the base time.
        let back = later + Duration::from_secs(25);
        assert!(readmit(&mut pool, back));
        let calm = back + Duration::from_secs(25);
        assert!(eject(&mut pool, 0, &o, calm));
        assert_eq!(pool[0].until, Some(calm + Duration::from_secs(10)));
        assert_eq!(pool[0].times, 4);
    }
}
