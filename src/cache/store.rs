//! A store bounded in bytes with S3-FIFO eviction (Yang et al., SOSP 2023):
//! new keys enter a small FIFO queue (a tenth of the bytes); a key read
//! again before it leaves that queue moves to the main queue, the others
//! leave it for a ghost queue of key hashes, and a key that comes back
//! while its hash is there goes straight to the main queue. The main
//! queue gives each key a second chance per read (up to three). One-hit
//! keys, the bulk of a skewed workload's distinct keys, so never push
//! popular ones out, which is where plain LRU loses hits.
//!
//! [`Lru`] is the plain LRU the hit ratio is measured against (bench/cache.rs).
//! Both are pure: no clock, no I/O.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::rc::Rc;

/// Bookkeeping bytes counted per entry on top of its key and value
/// (map slot, queue slot, ghost slot, the entry's fields).
pub const ENTRY_OVERHEAD: usize = 160;
/// The highest read count kept per entry.
const MAX_FREQ: u8 = 3;

struct Slot<V> {
    key: Rc<str>,
    value: V,
    bytes: usize,
    freq: u8,
    main: bool,
    gen: u32,
}

/// The S3-FIFO store (see the module comment).
pub struct Store<V> {
    map: HashMap<Rc<str>, usize>,
    slots: Vec<Option<Slot<V>>>,
    free: Vec<usize>,
    gen: u32,
    small: VecDeque<(usize, u32)>,
    main: VecDeque<(usize, u32)>,
    ghost: VecDeque<u64>,
    ghost_set: HashSet<u64>,
    hasher: RandomState,
    small_bytes: usize,
    main_bytes: usize,
    cap: usize,
}

impl<V> Store<V> {
    /// An empty store holding at most `cap` bytes.
    pub fn new(cap: usize) -> Store<V> {
        Store {
            map: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            gen: 0,
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: VecDeque::new(),
            ghost_set: HashSet::new(),
            hasher: RandomState::new(),
            small_bytes: 0,
            main_bytes: 0,
            cap,
        }
    }

    /// The byte budget.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes held (entries with their overhead).
    pub fn bytes(&self) -> usize {
        self.small_bytes + self.main_bytes
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The bytes an entry of this key and value size is charged.
    pub fn charge(key: &str, value_bytes: usize) -> usize {
        key.len() + value_bytes + ENTRY_OVERHEAD
    }

    /// The value under `key`, counting a read.
    pub fn get(&mut self, key: &str) -> Option<&mut V> {
        let &i = self.map.get(key)?;
        let slot = self.slots.get_mut(i)?.as_mut()?;
        slot.freq = (slot.freq + 1).min(MAX_FREQ);
        Some(&mut slot.value)
    }

    /// The value under `key`, without counting a read.
    pub fn peek(&self, key: &str) -> Option<&V> {
        let &i = self.map.get(key)?;
        self.slots.get(i)?.as_ref().map(|s| &s.value)
    }

    /// Stores `value` under `key`, charged `value_bytes` (plus the key and
    /// [`ENTRY_OVERHEAD`]), evicting as needed. False when one entry of
    /// that size does not fit the budget at all (nothing is stored then).
    pub fn insert(&mut self, key: &str, value: V, value_bytes: usize) -> bool {
        let bytes = Self::charge(key, value_bytes);
        if bytes > self.cap {
            self.remove(key);
            return false;
        }
        if let Some(&i) = self.map.get(key) {
            if let Some(slot) = self.slots.get_mut(i).and_then(Option::as_mut) {
                let old = std::mem::replace(&mut slot.bytes, bytes);
                slot.value = value;
                if slot.main {
                    self.main_bytes = self.main_bytes - old + bytes;
                } else {
                    self.small_bytes = self.small_bytes - old + bytes;
                }
                self.evict();
                return true;
            }
        }
        let h = self.hasher.hash_one(key);
        let main = self.ghost_set.remove(&h);
        let key: Rc<str> = Rc::from(key);
        self.gen = self.gen.wrapping_add(1);
        let slot = Slot {
            key: key.clone(),
            value,
            bytes,
            freq: 0,
            main,
            gen: self.gen,
        };
        let i = match self.free.pop() {
            Some(i) => {
                if let Some(s) = self.slots.get_mut(i) {
                    *s = Some(slot);
                }
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.map.insert(key, i);
        if main {
            self.main.push_back((i, self.gen));
            self.main_bytes += bytes;
        } else {
            self.small.push_back((i, self.gen));
            self.small_bytes += bytes;
        }
        self.evict();
        self.compact_queues();
        true
    }

    /// Removes `key`'s entry.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let i = self.map.remove(key)?;
        self.take_slot(i).map(|s| s.value)
    }

    /// Removes every entry for which `keep` is false; returns how many.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &V) -> bool) -> usize {
        let doomed: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().filter(|s| !keep(&s.key, &s.value)).map(|_| i))
            .collect();
        for &i in &doomed {
            if let Some(s) = self.take_slot(i) {
                self.map.remove(&s.key);
            }
        }
        self.compact_queues();
        doomed.len()
    }

    fn take_slot(&mut self, i: usize) -> Option<Slot<V>> {
        let s = self.slots.get_mut(i)?.take()?;
        if s.main {
            self.main_bytes -= s.bytes;
        } else {
            self.small_bytes -= s.bytes;
        }
        self.free.push(i);
        Some(s)
    }

    fn live(&self, (i, gen): (usize, u32), main: bool) -> bool {
        matches!(self.slots.get(i), Some(Some(s)) if s.gen == gen && s.main == main)
    }

    fn evict(&mut self) {
        while self.bytes() > self.cap {
            let before = self.bytes();
            if self.small_bytes > self.cap / 10 || self.main_bytes == 0 {
                self.evict_small();
            } else {
                self.evict_main();
            }
            if self.bytes() == before && self.small.is_empty() && self.main.is_empty() {
                break;
            }
        }
    }

    fn evict_small(&mut self) {
        while let Some(item) = self.small.pop_front() {
            if !self.live(item, false) {
                continue;
            }
            let (i, _) = item;
            let Some(Some(s)) = self.slots.get_mut(i) else {
                continue;
            };
            if s.freq >= 1 {
                s.main = true;
                s.freq = 0;
                self.gen = self.gen.wrapping_add(1);
                s.gen = self.gen;
                self.small_bytes -= s.bytes;
                self.main_bytes += s.bytes;
                self.main.push_back((i, self.gen));
                // Moving frees no bytes: evict() keeps going.
                return;
            }
            if let Some(s) = self.take_slot(i) {
                self.map.remove(&s.key);
                self.remember(&s.key);
            }
            return;
        }
    }

    fn evict_main(&mut self) {
        while let Some(item) = self.main.pop_front() {
            if !self.live(item, true) {
                continue;
            }
            let (i, gen) = item;
            let Some(Some(s)) = self.slots.get_mut(i) else {
                continue;
            };
            if s.freq > 0 {
                s.freq -= 1;
                self.main.push_back((i, gen));
                continue;
            }
            if let Some(s) = self.take_slot(i) {
                self.map.remove(&s.key);
            }
            return;
        }
    }

    /// Puts a key evicted from the small queue in the ghost queue, which
    /// holds at most as many hashes as there are entries.
    fn remember(&mut self, key: &str) {
        let h = self.hasher.hash_one(key);
        if self.ghost_set.insert(h) {
            self.ghost.push_back(h);
        }
        let room = self.map.len().max(16);
        while self.ghost.len() > room {
            if let Some(old) = self.ghost.pop_front() {
                self.ghost_set.remove(&old);
            }
        }
    }

    /// Drops queue items of removed entries once they outnumber the live ones.
    fn compact_queues(&mut self) {
        if self.small.len() + self.main.len() <= 2 * self.map.len() + 1024 {
            return;
        }
        let slots = &self.slots;
        let live = |&(i, gen): &(usize, u32), main: bool| matches!(slots.get(i), Some(Some(s)) if s.gen == gen && s.main == main);
        self.small.retain(|it| live(it, false));
        self.main.retain(|it| live(it, true));
    }
}

/// A plain least-recently-used store bounded in bytes, for comparison.
pub struct Lru<V> {
    map: HashMap<Rc<str>, usize>,
    nodes: Vec<Option<LruNode<V>>>,
    free: Vec<usize>,
    head: Option<usize>,
    tail: Option<usize>,
    bytes: usize,
    cap: usize,
}

struct LruNode<V> {
    key: Rc<str>,
    value: V,
    bytes: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl<V> Lru<V> {
    /// An empty LRU holding at most `cap` bytes.
    pub fn new(cap: usize) -> Lru<V> {
        Lru {
            map: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: None,
            tail: None,
            bytes: 0,
            cap,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = match self.nodes.get(i) {
            Some(Some(n)) => (n.prev, n.next),
            _ => return,
        };
        match prev {
            Some(p) => {
                if let Some(Some(n)) = self.nodes.get_mut(p) {
                    n.next = next;
                }
            }
            None => self.head = next,
        }
        match next {
            Some(x) => {
                if let Some(Some(n)) = self.nodes.get_mut(x) {
                    n.prev = prev;
                }
            }
            None => self.tail = prev,
        }
    }

    fn push_front(&mut self, i: usize) {
        let old = self.head;
        if let Some(Some(n)) = self.nodes.get_mut(i) {
            n.prev = None;
            n.next = old;
        }
        if let Some(o) = old {
            if let Some(Some(n)) = self.nodes.get_mut(o) {
                n.prev = Some(i);
            }
        }
        self.head = Some(i);
        if self.tail.is_none() {
            self.tail = Some(i);
        }
    }

    /// The value under `key`, marking it most recently used.
    pub fn get(&mut self, key: &str) -> Option<&mut V> {
        let &i = self.map.get(key)?;
        self.unlink(i);
        self.push_front(i);
        self.nodes.get_mut(i)?.as_mut().map(|n| &mut n.value)
    }

    /// Stores `value` under `key`, evicting least recently used entries.
    pub fn insert(&mut self, key: &str, value: V, value_bytes: usize) -> bool {
        let bytes = Store::<V>::charge(key, value_bytes);
        if bytes > self.cap {
            return false;
        }
        if let Some(&i) = self.map.get(key) {
            self.unlink(i);
            if let Some(n) = self.nodes.get_mut(i).and_then(Option::take) {
                self.bytes -= n.bytes;
                self.map.remove(&n.key);
            }
            self.free.push(i);
        }
        let key: Rc<str> = Rc::from(key);
        let node = LruNode {
            key: key.clone(),
            value,
            bytes,
            prev: None,
            next: None,
        };
        let i = match self.free.pop() {
            Some(i) => {
                if let Some(s) = self.nodes.get_mut(i) {
                    *s = Some(node);
                }
                i
            }
            None => {
                self.nodes.push(Some(node));
                self.nodes.len() - 1
            }
        };
        self.map.insert(key, i);
        self.push_front(i);
        self.bytes += bytes;
        while self.bytes > self.cap {
            let Some(t) = self.tail else { break };
            self.unlink(t);
            if let Some(n) = self.nodes.get_mut(t).and_then(Option::take) {
                self.bytes -= n.bytes;
                self.map.remove(&n.key);
            }
            self.free.push(t);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_budget() {
        let mut s: Store<u32> = Store::new(100_000);
        for i in 0..100_000u32 {
            s.insert(&format!("/k/{i}"), i, 100);
            assert!(s.bytes() <= 100_000);
        }
        assert!(s.len() > 300 && s.len() < 400, "{}", s.len());
        // The queues do not grow with the traffic.
        assert!(s.small.len() + s.main.len() <= 2 * s.len() + 1024);
        assert!(s.ghost.len() <= s.len().max(16));
    }

    #[test]
    fn a_key_read_again_survives_a_scan() {
        let mut s: Store<u32> = Store::new(20 * Store::<u32>::charge("/hot/0", 10));
        for round in 0..50u32 {
            assert!(s.insert("/hot", round, 10) || round > 0);
            s.get("/hot");
            for i in 0..30 {
                s.insert(&format!("/scan/{round}/{i}"), i, 10);
            }
            if round > 2 {
                assert!(s.peek("/hot").is_some(), "round {round}");
            }
        }
    }

    #[test]
    fn replace_remove_and_retain_keep_the_byte_count() {
        let mut s: Store<u32> = Store::new(1 << 20);
        s.insert("/a", 1, 10);
        s.insert("/a", 2, 50);
        assert_eq!(s.bytes(), Store::<u32>::charge("/a", 50));
        assert_eq!(s.peek("/a"), Some(&2));
        s.insert("/b/1", 1, 10);
        s.insert("/b/2", 1, 10);
        assert_eq!(s.retain(|k, _| !k.starts_with("/b/")), 2);
        assert_eq!(s.len(), 1);
        assert_eq!(s.remove("/a"), Some(2));
        assert_eq!(s.bytes(), 0);
        assert!(!s.insert("/big", 0, 2 << 20));
    }

    #[test]
    fn lru_evicts_the_least_recent() {
        let one = Store::<u32>::charge("/x", 10);
        let mut l: Lru<u32> = Lru::new(2 * one);
        l.insert("/a", 1, 10);
        l.insert("/b", 2, 10);
        l.get("/a");
        l.insert("/c", 3, 10);
        assert!(l.get("/a").is_some());
        assert!(l.get("/b").is_none());
        assert!(l.bytes() <= 2 * one);
    }
}
