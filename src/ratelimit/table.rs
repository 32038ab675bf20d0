//! A shard's table of rate-limit states per key, bounded in memory.
//!
//! Keys come from clients (IPs, tokens' subjects, header values), so the
//! table hashes them with a randomly keyed SipHash (no flooding) and never
//! holds more than `capacity` keys: idle keys are swept out, and when the
//! table is full of active keys the least recently seen half is dropped
//! (those keys start over with fresh state, which errs towards admitting).

use super::algorithm::{Algorithm, Decision, State};
use std::collections::HashMap;

/// Per-key bookkeeping besides the states.
struct Entry {
    states: Vec<State>,
    last_seen: u64,
}

/// Approximate memory per key: the map slot, the boxed key, the entry and
/// its states (a sliding log adds 8 bytes per logged request).
pub const BYTES_PER_KEY_ESTIMATE: usize = 64 + 32 + 48 + 40;

/// Rate-limit states for the keys one shard sees.
pub struct KeyTable {
    map: HashMap<Box<str>, Entry>,
    capacity: usize,
    idle_ns: u64,
}

impl KeyTable {
    /// A table of at most `capacity` keys; keys unseen for `idle_ns` are swept.
    pub fn new(capacity: usize, idle_ns: u64) -> KeyTable {
        KeyTable {
            map: HashMap::new(),
            capacity: capacity.max(1),
            idle_ns,
        }
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Admits a request of `cost` for `key` against `limits` (all or none).
    pub fn admit(
        &mut self,
        key: &str,
        limits: &[&Algorithm],
        now: u64,
        cost: u64,
    ) -> (bool, Vec<Decision>) {
        let mut out = Vec::with_capacity(limits.len());
        let ok = self.admit_into(key, limits, now, cost, &mut out);
        (ok, out)
    }

    /// Like [`KeyTable::admit`], writing the decisions into `out` (cleared
    /// first), so a caller can reuse one buffer: no allocation for a known key.
    pub fn admit_into(
        &mut self,
        key: &str,
        limits: &[&Algorithm],
        now: u64,
        cost: u64,
        out: &mut Vec<Decision>,
    ) -> bool {
        out.clear();
        if !self.map.contains_key(key) {
            if self.map.len() >= self.capacity {
                self.make_room(now);
            }
            let states = limits.iter().map(|a| a.new_state(now)).collect();
            self.map.insert(
                key.into(),
                Entry {
                    states,
                    last_seen: now,
                },
            );
        }
        let Some(entry) = self.map.get_mut(key) else {
            return true;
        };
        entry.last_seen = now;
        if entry.states.len() != limits.len() {
            entry.states = limits.iter().map(|a| a.new_state(now)).collect();
        }
        for (alg, st) in limits.iter().zip(entry.states.iter_mut()) {
            alg.advance(st, now);
            out.push(alg.decide(st, now, cost));
        }
        let admitted = out.iter().all(|d| d.allowed);
        if admitted {
            for (alg, st) in limits.iter().zip(entry.states.iter_mut()) {
                alg.consume(st, now, cost);
            }
        }
        admitted
    }

    /// Drops keys not seen for the idle time; returns how many.
    pub fn sweep(&mut self, now: u64) -> usize {
        let before = self.map.len();
        let idle = self.idle_ns;
        self.map
            .retain(|_, e| now.saturating_sub(e.last_seen) < idle);
        before - self.map.len()
    }

    fn make_room(&mut self, now: u64) {
        if self.sweep(now) > 0 && self.map.len() < self.capacity {
            return;
        }
        // Full of active keys: drop the least recently seen half.
        let mut seen: Vec<u64> = self.map.values().map(|e| e.last_seen).collect();
        let mid = seen.len() / 2;
        let (_, cut, _) = seen.select_nth_unstable(mid);
        let cut = *cut;
        self.map.retain(|_, e| e.last_seen > cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn keys_are_isolated() {
        let lim = Algorithm::FixedWindow {
            limit: 2,
            window_ns: S,
        };
        let mut t = KeyTable::new(100, 60 * S);
        assert!(t.admit("a", &[&lim], 0, 1).0);
        assert!(t.admit("a", &[&lim], 0, 1).0);
        assert!(!t.admit("a", &[&lim], 0, 1).0);
        assert!(t.admit("b", &[&lim], 0, 1).0);
    }

    #[test]
    fn memory_stays_bounded_with_many_distinct_keys() {
        let lim = Algorithm::TokenBucket {
            capacity: 10,
            refill_per_s: 1.0,
        };
        let mut t = KeyTable::new(10_000, 60 * S);
        for i in 0..200_000u64 {
            t.admit(&format!("client-{i}"), &[&lim], i * 1_000, 1);
            assert!(t.len() <= 10_000);
        }
        // The most recent keys kept their state: a hot key is still limited.
        let hot = "client-199999";
        for _ in 0..9 {
            t.admit(hot, &[&lim], 200_000 * 1_000, 1);
        }
        assert!(!t.admit(hot, &[&lim], 200_000 * 1_000, 1).0);
    }

    #[test]
    fn idle_keys_are_swept() {
        let lim = Algorithm::FixedWindow {
            limit: 5,
            window_ns: S,
        };
        let mut t = KeyTable::new(100, 10 * S);
        t.admit("old", &[&lim], 0, 1);
        t.admit("new", &[&lim], 9 * S, 1);
        assert_eq!(t.sweep(12 * S), 1);
        assert_eq!(t.len(), 1);
    }
}
