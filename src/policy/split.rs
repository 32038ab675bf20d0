//! Traffic splitting: a weighted choice of the upstream per request (a
//! canary taking 5 % of the traffic), optionally sticky: the same value of
//! a key (header, cookie, claim or client address) always gets the same
//! upstream, because the choice is made from the key's hash instead of a
//! random draw. Picking is a walk over a handful of cumulative weights:
//! no allocation, no shared state (the random numbers are the shard's).

use crate::config::{HashOn, Split};

/// A compiled split.
#[derive(Debug, Clone)]
pub struct SplitPlan {
    /// Upstream index and the cumulative weight up to and including it.
    choices: Vec<(usize, u64)>,
    total: u64,
    /// The key that makes the choice sticky.
    pub sticky: Option<HashOn>,
}

/// Largest weight of one upstream.
pub const MAX_WEIGHT: u32 = 1_000_000;

impl SplitPlan {
    /// Compiles a split; `upstream_index` resolves names.
    pub fn compile(
        s: &Split,
        upstream_index: &dyn Fn(&str) -> Option<usize>,
    ) -> Result<SplitPlan, String> {
        let mut choices = Vec::with_capacity(s.weights.len());
        let mut total = 0u64;
        for (name, &w) in &s.weights {
            let id = upstream_index(name).ok_or_else(|| format!("unknown upstream {name:?}"))?;
            if !(1..=MAX_WEIGHT).contains(&w) {
                return Err(format!("weight of {name:?} must be 1 to {MAX_WEIGHT}"));
            }
            total += u64::from(w);
            choices.push((id, total));
        }
        if choices.is_empty() {
            return Err("weights must name at least one upstream".into());
        }
        Ok(SplitPlan {
            choices,
            total,
            sticky: s.sticky.clone(),
        })
    }

    /// The upstream for a draw: `key` (the sticky key's hash) when the
    /// request has one, else `random`.
    pub fn pick(&self, key: Option<u64>, random: u64) -> usize {
        let x = match key {
            // Spread the key's hash over the whole range first.
            Some(k) => mix(k),
            None => random,
        } % self.total.max(1);
        self.choices
            .iter()
            .find(|(_, upto)| x < *upto)
            .or(self.choices.last())
            .map_or(0, |(id, _)| *id)
    }
}

/// SplitMix64's finalizer: a well-spread function of a 64-bit value.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn plan(weights: &[(&str, u32)]) -> SplitPlan {
        let s = Split {
            weights: weights
                .iter()
                .map(|(n, w)| (n.to_string(), *w))
                .collect::<BTreeMap<_, _>>(),
            sticky: None,
        };
        let names = ["a", "b", "c"];
        match SplitPlan::compile(&s, &|n| names.iter().position(|x| *x == n)) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn draws_follow_the_weights() {
        let p = plan(&[("a", 95), ("b", 5)]);
        let mut counts = [0u32; 2];
        for i in 0..100u64 {
            counts[p.pick(None, i)] += 1;
        }
        assert_eq!(counts, [95, 5]);
    }

    #[test]
    fn a_key_always_gets_the_same_upstream() {
        let p = plan(&[("a", 50), ("b", 50)]);
        for k in 0..1000u64 {
            let first = p.pick(Some(k), 0);
            for r in 1..5 {
                assert_eq!(p.pick(Some(k), r), first);
            }
        }
        let b = (0..1000u64).filter(|k| p.pick(Some(*k), 0) == 1).count();
        assert!((400..600).contains(&b), "{b}");
    }

    #[test]
    fn bad_splits_are_refused() {
        let names = |n: &str| (n == "a").then_some(0);
        let s = |w: &[(&str, u32)]| Split {
            weights: w.iter().map(|(n, w)| (n.to_string(), *w)).collect(),
            sticky: None,
        };
        assert!(SplitPlan::compile(&s(&[]), &names).is_err());
        assert!(SplitPlan::compile(&s(&[("zz", 1)]), &names).is_err());
        assert!(SplitPlan::compile(&s(&[("a", 0)]), &names).is_err());
    }
}
