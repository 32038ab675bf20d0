//! Picking a target: the pure algorithms behind `balance:` and `weights:`.
//!
//! - weighted round-robin: a smooth schedule (nginx's), computed once per
//!   config, that a shard's cursor walks;
//! - least outstanding: fewest requests in flight divided by the weight;
//! - peak EWMA (Finagle, linkerd2-proxy): each shard keeps a latency
//!   estimate per target that jumps up to any slower sample at once and
//!   decays toward faster ones (and toward zero while idle, so a target that
//!   recovered is tried again); two random targets are compared by
//!   estimate × (requests in flight + 1) / weight and the cheaper one wins;
//! - consistent hashing: a ring of virtual nodes, `RING_POINTS` per unit of
//!   weight, placed by hashing the target's address, so adding or removing
//!   one target moves only the keys it owns (about 1/n of them).
//!
//! Time is a parameter (`now_ns`); nothing here reads a clock or a socket.

use crate::config::{Balance, HashOn, Upstream};
use crate::http::RequestHead;
use std::net::{IpAddr, SocketAddr};

/// Virtual nodes per unit of weight on a consistent-hash ring.
pub const RING_POINTS: usize = 128;
/// Most points on one ring (weights are scaled down to fit).
const MAX_RING: usize = 1 << 16;
/// Largest weight accepted in `weights:`.
pub const MAX_WEIGHT: u32 = 1000;
/// Decay time of the peak-EWMA estimate (linkerd2-proxy's default).
pub const EWMA_DECAY_NS: f64 = 10e9;
/// The estimate of a target with no sample yet.
pub const EWMA_DEFAULT_NS: f64 = 1e6;

/// A balancing plan compiled from one upstream's config.
#[derive(Debug, Clone, Default)]
pub struct BalancePlan {
    /// Weight per target (config order), at least 1.
    pub weights: Vec<u32>,
    /// Smooth weighted round-robin order of target indices (one entry per
    /// unit of weight; `0..n` when all weigh 1).
    pub schedule: Vec<u32>,
    /// The consistent-hash ring (`ConsistentHash` only): sorted points.
    pub ring: Vec<(u64, u32)>,
}

impl BalancePlan {
    /// Compiles `u`'s weights and balancing for `targets` (its resolved
    /// `targets`, in order). A weight naming no target is ignored here
    /// (validation reports it).
    pub fn compile(u: &Upstream) -> BalancePlan {
        let weights: Vec<u32> = u
            .targets
            .iter()
            .map(|t| u.weights.get(t).copied().unwrap_or(1).clamp(1, MAX_WEIGHT))
            .collect();
        let schedule = smooth_schedule(&weights);
        let ring = match u.balance {
            Balance::ConsistentHash(_) => build_ring(&u.targets, &weights),
            _ => Vec::new(),
        };
        BalancePlan {
            weights,
            schedule,
            ring,
        }
    }

    /// Weight of target `i` (1 when unknown).
    #[inline]
    pub fn weight(&self, i: usize) -> u32 {
        self.weights.get(i).copied().unwrap_or(1)
    }
}

/// nginx's smooth weighted round-robin: each turn every target gains its
/// weight, the richest is picked and pays the total. Weights 5, 1, 1 give
/// `a a b a c a a` rather than `a a a a a b c`.
pub fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best: Option<usize> = None;
        let mut best_value = i64::MIN;
        for (i, (c, &w)) in current.iter_mut().zip(weights).enumerate() {
            *c += i64::from(w);
            if *c > best_value {
                best_value = *c;
                best = Some(i);
            }
        }
        if let Some(b) = best {
            if let Some(c) = current.get_mut(b) {
                *c -= total;
            }
            out.push(b as u32);
        }
    }
    out
}

/// 64-bit FNV-1a followed by a splitmix64 finalizer (FNV alone clusters
/// similar strings such as `127.0.0.1:9001#3` and `#4` on the ring).
pub fn hash_bytes(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separates parts: ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finalizer.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The ring for `targets` (as written in the config, so a target keeps its
/// points whatever else changes) with `weights`.
pub fn build_ring(targets: &[String], weights: &[u32]) -> Vec<(u64, u32)> {
    let total: usize = weights.iter().map(|&w| w as usize).sum();
    let per_unit = if total.saturating_mul(RING_POINTS) > MAX_RING {
        (MAX_RING / total.max(1)).max(1)
    } else {
        RING_POINTS
    };
    let mut ring = Vec::with_capacity(total.saturating_mul(per_unit));
    for (i, (t, &w)) in targets.iter().zip(weights).enumerate() {
        for j in 0..(w as usize).saturating_mul(per_unit) {
            let point = hash_bytes(&[t.as_bytes(), &(j as u64).to_le_bytes()]);
            ring.push((point, i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// The first target at or after `key` on `ring` (wrapping around) that
/// `eligible` accepts.
pub fn ring_lookup(
    ring: &[(u64, u32)],
    key: u64,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    let start = ring.partition_point(|&(p, _)| p < key);
    let (after, before) = (ring.get(start..)?, ring.get(..start)?);
    after
        .iter()
        .chain(before)
        .map(|&(_, t)| t as usize)
        .find(|&t| eligible(t))
}

/// The key a consistent-hash balancer hashes for one request, or `None`
/// when the request does not carry it.
pub fn request_key(
    on: &HashOn,
    req: &RequestHead,
    client_ip: IpAddr,
    claims: &[(String, String)],
) -> Option<u64> {
    match on {
        HashOn::ClientIp => Some(match client_ip {
            IpAddr::V4(a) => hash_bytes(&[&a.octets()]),
            IpAddr::V6(a) => hash_bytes(&[&a.octets()]),
        }),
        HashOn::Header(name) => req
            .header(name)
            .filter(|v| !v.is_empty())
            .map(|v| hash_bytes(&[v])),
        HashOn::Cookie(name) => req
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"cookie"))
            .find_map(|(_, v)| cookie(v, name.as_bytes()))
            .filter(|v| !v.is_empty())
            .map(|v| hash_bytes(&[v])),
        HashOn::Claim(name) => claims
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| hash_bytes(&[v.as_bytes()])),
    }
}

/// The value of cookie `name` in one `Cookie` field value.
fn cookie<'a>(field: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    field.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (n, v) = pair.split_at(eq);
        (n.trim_ascii() == name).then(|| v.get(1..).unwrap_or_default().trim_ascii())
    })
}

/// A peak-EWMA latency estimate of one target, on one shard.
#[derive(Debug, Clone, Copy)]
pub struct PeakEwma {
    /// The estimate at `stamp_ns`, nanoseconds.
    cost_ns: f64,
    /// When it was last updated (the clock of `now_ns`).
    stamp_ns: u64,
}

impl PeakEwma {
    /// A target with no sample yet.
    pub fn new(now_ns: u64) -> PeakEwma {
        PeakEwma {
            cost_ns: EWMA_DEFAULT_NS,
            stamp_ns: now_ns,
        }
    }

    fn decay(&self, now_ns: u64) -> f64 {
        let elapsed = now_ns.saturating_sub(self.stamp_ns) as f64;
        (-elapsed / EWMA_DECAY_NS).exp()
    }

    /// The estimate at `now_ns`: decayed toward zero since the last sample.
    #[inline]
    pub fn cost(&self, now_ns: u64) -> f64 {
        self.cost_ns * self.decay(now_ns)
    }

    /// Takes in one call's latency: a slower sample replaces the estimate
    /// (the peak), a faster one pulls it down by how long ago the last one was.
    pub fn observe(&mut self, rtt_ns: u64, now_ns: u64) {
        let rtt = rtt_ns as f64;
        if rtt > self.cost_ns {
            self.cost_ns = rtt;
        } else {
            let w = self.decay(now_ns);
            self.cost_ns = self.cost_ns * w + rtt * (1.0 - w);
        }
        self.stamp_ns = self.stamp_ns.max(now_ns);
    }
}

/// The load peak-EWMA compares: estimate × (in flight + 1) / weight.
#[inline]
pub fn ewma_load(e: &PeakEwma, outstanding: usize, weight: u32, now_ns: u64) -> f64 {
    e.cost(now_ns) * (outstanding as f64 + 1.0) / f64::from(weight.max(1))
}

/// A small, fast PRNG (xorshift64*), one per shard: picks need not be
/// unpredictable, only spread.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; 0 is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(mix(seed) | 1)
    }

    /// The next value.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n` > 0).
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Power of two choices: two distinct random targets among the `eligible`
/// ones (of `n`), the one of lower `load` wins. `None` when none is eligible.
pub fn p2c(
    n: usize,
    rng: &mut Rng,
    eligible: impl Fn(usize) -> bool,
    load: impl Fn(usize) -> f64,
) -> Option<usize> {
    let m = (0..n).filter(|&i| eligible(i)).count();
    let nth = |k: usize| (0..n).filter(|&i| eligible(i)).nth(k);
    match m {
        0 => None,
        1 => nth(0),
        _ => {
            let a = rng.below(m);
            let mut b = rng.below(m - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = if m == n { (a, b) } else { (nth(a)?, nth(b)?) };
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

/// The index of `addr` in `targets`.
pub fn index_of(targets: &[SocketAddr], addr: SocketAddr) -> Option<usize> {
    targets.iter().position(|&a| a == addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_schedule_spreads_the_heavy_target() {
        let s = smooth_schedule(&[5, 1, 1]);
        assert_eq!(s, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[1, 1, 1]), vec![0, 1, 2]);
        let s = smooth_schedule(&[3, 1]);
        assert_eq!(s.iter().filter(|&&t| t == 0).count(), 3);
    }

    fn targets(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    #[test]
    fn ring_moves_only_the_removed_targets_keys() {
        let five = targets(5);
        let ring5 = build_ring(&five, &[1; 5]);
        let four: Vec<String> = five.iter().take(4).cloned().collect();
        let ring4 = build_ring(&four, &[1; 4]);
        let keys = 10_000u64;
        let mut moved = 0;
        let mut owned_by_last = 0;
        for k in 0..keys {
            let key = mix(k);
            let a = ring_lookup(&ring5, key, |_| true);
            let b = ring_lookup(&ring4, key, |_| true);
            if a == Some(4) {
                owned_by_last += 1;
            } else if a != b {
                moved += 1;
            }
        }
        assert_eq!(moved, 0, "keys of the remaining targets stay put");
        // Each target owns roughly a fifth.
        assert!((1_000..3_000).contains(&owned_by_last), "{owned_by_last}");
        // Skipping an ineligible target is the same as removing it.
        for k in 0..1000u64 {
            let key = mix(k);
            assert_eq!(
                ring_lookup(&ring5, key, |t| t != 4),
                ring_lookup(&ring4, key, |_| true)
            );
        }
    }

    #[test]
    fn ring_honours_weights() {
        let t = targets(2);
        let ring = build_ring(&t, &[3, 1]);
        let first = (0..10_000u64)
            .filter(|&k| ring_lookup(&ring, mix(k), |_| true) == Some(0))
            .count();
        assert!((6_500..8_500).contains(&first), "{first}");
        assert_eq!(ring_lookup(&ring, 1, |_| false), None);
        assert_eq!(ring_lookup(&[], 1, |_| true), None);
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let mut e = PeakEwma::new(0);
        e.observe(50_000_000, 1_000);
        assert!((e.cost(1_000) - 50e6).abs() < 1.0);
        // A fast sample right after barely moves it; one much later does.
        e.observe(1_000_000, 2_000);
        assert!(e.cost(2_000) > 49e6);
        e.observe(1_000_000, 20_000_000_000);
        assert!(e.cost(20_000_000_000) < 10e6);
        // Idle, it decays toward zero.
        let idle = PeakEwma {
            cost_ns: 1e9,
            stamp_ns: 0,
        };
        assert!(idle.cost(60_000_000_000) < 1e7);
    }

    #[test]
    fn p2c_prefers_the_lighter_and_respects_eligibility() {
        let mut rng = Rng::new(7);
        let loads = [10.0, 1.0, 10.0, 10.0];
        let mut wins = [0usize; 4];
        for _ in 0..4000 {
            if let Some(i) = p2c(4, &mut rng, |_| true, |i| loads[i]) {
                wins[i] += 1;
            }
        }
        // Target 1 wins whenever it is one of the two drawn: half the time.
        assert!(wins[1] > 1800, "{wins:?}");
        for _ in 0..100 {
            assert_eq!(p2c(4, &mut rng, |i| i == 2, |i| loads[i]), Some(2));
            let p = p2c(4, &mut rng, |i| i != 1, |i| loads[i]);
            assert!(matches!(p, Some(0 | 2 | 3)));
        }
        assert_eq!(p2c(4, &mut rng, |_| false, |i| loads[i]), None);
        assert_eq!(p2c(0, &mut rng, |_| true, |_| 0.0), None);
    }

    #[test]
    fn cookies_are_found_by_name() {
        assert_eq!(cookie(b"a=1; sid=xyz; b=2", b"sid"), Some(&b"xyz"[..]));
        assert_eq!(cookie(b"sid=", b"sid"), Some(&b""[..]));
        assert_eq!(cookie(b"a=1;b", b"sid"), None);
        assert_eq!(cookie(b"", b"sid"), None);
    }

    #[test]
    fn rng_below_stays_in_range() {
        let mut r = Rng::new(0);
        for n in 1..50 {
            for _ in 0..50 {
                assert!(r.below(n) < n);
            }
        }
    }
}
