//! A shard's table of rate-limit entries, bounded in memory.
//!
//! Entries are found by a 64-bit key hash ([`key_hash`]: SipHash with keys
//! drawn once per process, so clients cannot aim collisions and every shard
//! hashes a key alike — gossip names keys by hash). The table never holds
//! more than `capacity` entries: idle ones are swept out, and when it is full
//! of active ones the least recently seen half is dropped (those keys start
//! over with fresh state, which errs towards admitting).

use super::algorithm::State;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::OnceLock;

/// One key of one limit on one shard.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The algorithm's state, counted against this shard's quota.
    pub state: State,
    /// This shard's share of the limit, in the limit's units (requests or
    /// tokens); the shares of all shards add up to the limit. For a `Redis`
    /// limit: units leased from Redis and not spent yet.
    pub quota: u64,
    /// Last time (ns) a request or a gossip message touched the key.
    pub last_seen: u64,
    /// Last time (ns) a request on this shard used the key.
    pub last_request: u64,
    /// Gossip round in which this shard last asked the others for quota.
    pub asked_round: u64,
    /// Replies still expected to the last request for quota.
    pub pending_replies: u32,
    /// Units received in answer to the last request for quota.
    pub received: u64,
    /// Until this time (ns) asking is pointless: every other shard answered
    /// that it had nothing to spare.
    pub dry_until: u64,
    /// For a `Redis` limit: when the lease runs out (ns).
    pub lease_until: u64,
    /// For a `Redis` limit: what Redis said remained at the last grant.
    pub remote_remaining: u64,
    /// For a `Redis` limit: time (ns) the Redis limit resets, as of the last grant.
    pub remote_reset_at: u64,
}

impl Entry {
    /// A fresh entry with `quota` units.
    pub fn new(state: State, quota: u64, now: u64) -> Entry {
        Entry {
            state,
            quota,
            last_seen: now,
            last_request: 0,
            asked_round: u64::MAX,
            pending_replies: 0,
            received: 0,
            dry_until: 0,
            lease_until: 0,
            remote_remaining: 0,
            remote_reset_at: 0,
        }
    }
}

/// Memory per key of the cap: a 120-byte slot (key hash and entry) plus a
/// control byte, in a table sized once for the cap (power-of-two buckets at
/// 7/8 load: about 160 bytes per key of cap); the process's resident memory
/// grew by 292–316 bytes per key of cap when filled (scripts/ratelimit-keys.sh,
/// bench/RESULTS.md). A sliding log adds 8 bytes per logged request.
pub const BYTES_PER_KEY_ESTIMATE: usize = 320;

/// The hash of `key` under limit `limit` (by name, so it survives reloads).
pub fn key_hash(limit: &str, key: &str) -> u64 {
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    let mut h = KEYS.get_or_init(Default::default).build_hasher();
    h.write(limit.as_bytes());
    h.write_u8(0xff);
    h.write(key.as_bytes());
    h.finish()
}

/// Passes an already-random 64-bit hash through.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Rate-limit entries of the keys one shard sees.
pub struct KeyTable {
    map: HashMap<u64, Entry, BuildHasherDefault<IdHasher>>,
    capacity: usize,
    idle_ns: u64,
}

impl KeyTable {
    /// A table of at most `capacity` keys; keys unseen for `idle_ns` are swept.
    pub fn new(capacity: usize, idle_ns: u64) -> KeyTable {
        KeyTable {
            map: HashMap::default(),
            capacity: capacity.max(1),
            idle_ns,
        }
    }

    /// Changes the bounds (on reload); the next insertion or sweep applies them.
    pub fn set_bounds(&mut self, capacity: usize, idle_ns: u64) {
        self.capacity = capacity.max(1);
        self.idle_ns = idle_ns;
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The entry of `key`, if held.
    pub fn get_mut(&mut self, key: u64) -> Option<&mut Entry> {
        self.map.get_mut(&key)
    }

    /// The entry of `key`, created with `make` (after making room) if absent.
    pub fn entry(&mut self, key: u64, now: u64, make: impl FnOnce() -> Entry) -> &mut Entry {
        if !self.map.contains_key(&key) {
            if self.map.len() >= self.capacity {
                self.make_room(now);
            }
            if self.map.capacity() == 0 {
                // Size the table once for the cap: no growth (and no old and
                // new table side by side) as keys arrive, and untouched slots
                // cost address space, not memory. Later, slots freed by
                // eviction are reclaimed by rehashing in place (the table is
                // at most half full after an eviction), never by growing.
                self.map.reserve(self.capacity);
            }
        }
        self.map.entry(key).or_insert_with(make)
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

    fn fresh(now: u64) -> Entry {
        Entry::new(State::Window { start: 0, count: 0 }, 10, now)
    }

    #[test]
    fn hashes_separate_limits_and_keys() {
        assert_eq!(key_hash("a", "k"), key_hash("a", "k"));
        assert_ne!(key_hash("a", "k"), key_hash("b", "k"));
        assert_ne!(key_hash("ak", ""), key_hash("a", "k"));
    }

    #[test]
    fn memory_stays_bounded_with_many_distinct_keys() {
        let mut t = KeyTable::new(10_000, 60 * S);
        for i in 0..200_000u64 {
            let now = i * 1_000;
            let e = t.entry(key_hash("l", &format!("client-{i}")), now, || fresh(now));
            e.last_seen = now;
            assert!(t.len() <= 10_000);
        }
        // The most recent keys are still there.
        assert!(t.get_mut(key_hash("l", "client-199999")).is_some());
        assert!(t.get_mut(key_hash("l", "client-0")).is_none());
    }

    #[test]
    fn idle_keys_are_swept() {
        let mut t = KeyTable::new(100, 10 * S);
        t.entry(1, 0, || fresh(0));
        t.entry(2, 9 * S, || fresh(9 * S));
        assert_eq!(t.sweep(12 * S), 1);
        assert_eq!(t.len(), 1);
    }
}
