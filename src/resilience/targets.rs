//! One shard's view of its upstreams' targets: the host-wide health and
//! ejection state (a copy, replaced whole by control messages), and the
//! shard's own peak-EWMA estimates and failure streaks. Nothing here is
//! shared with another thread; a streak that calls for an ejection is a
//! message to the control side.

use super::balance::{self, PeakEwma, Rng};
use super::health::{HealthView, Report, TargetHealth};
use super::outlier::Streak;
use crate::compiled::{Compiled, UpstreamPlan};
use crate::config::Balance;
use crate::metrics::UpstreamOutcome;
use crate::proxy::pool::Pools;
use crossbeam_channel::Sender;
use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// One target as this shard knows it.
#[derive(Debug, Clone, Copy)]
struct Slot {
    addr: SocketAddr,
    health: TargetHealth,
    ejections: u64,
    ewma: PeakEwma,
    streak: Streak,
}

/// The targets of one upstream (config order).
#[derive(Debug, Clone, Default)]
struct UpTargets {
    name: String,
    slots: Vec<Slot>,
    /// Every slot is healthy (the common case: picking skips the checks).
    all_healthy: bool,
}

/// Why no target could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoTarget {
    /// The upstream has no targets.
    Empty,
    /// Every target is unhealthy or ejected (and `panic_routing` is off).
    NoneHealthy,
}

/// A shard's target table.
pub struct TargetTable {
    /// By upstream id of the shard's current config.
    ups: Vec<UpTargets>,
    view: Arc<HealthView>,
    rng: Rng,
    /// Where streaks that call for an ejection are reported.
    keeper: Option<Sender<Report>>,
}

impl TargetTable {
    /// A table for `compiled`; `keeper` takes outlier reports.
    pub fn new(compiled: &Compiled, keeper: Option<Sender<Report>>, seed: u64) -> TargetTable {
        let mut t = TargetTable {
            ups: Vec::new(),
            view: Arc::default(),
            rng: Rng::new(seed),
            keeper,
        };
        t.configure(compiled);
        t
    }

    /// Sets where streaks that call for an ejection are reported.
    pub fn set_keeper(&mut self, keeper: Sender<Report>) {
        self.keeper = Some(keeper);
    }

    /// Follows a new config: targets that stayed keep their estimates.
    pub fn configure(&mut self, compiled: &Compiled) {
        let now = crate::ratelimit::limiter::now_ns();
        let old: HashMap<(&str, SocketAddr), &Slot> = self
            .ups
            .iter()
            .flat_map(|u| u.slots.iter().map(move |s| ((u.name.as_str(), s.addr), s)))
            .collect();
        let ups = compiled
            .upstreams
            .iter()
            .map(|u| UpTargets {
                all_healthy: true,
                name: u.name.clone(),
                slots: u
                    .targets
                    .iter()
                    .map(|&addr| {
                        old.get(&(u.name.as_str(), addr))
                            .map_or_else(|| fresh(addr, now), |s| **s)
                    })
                    .collect(),
            })
            .collect();
        self.ups = ups;
        self.apply_view();
    }

    /// Takes in the control side's latest view.
    pub fn update(&mut self, view: Arc<HealthView>) {
        self.view = view;
        self.apply_view();
    }

    fn apply_view(&mut self) {
        let by: HashMap<(&str, SocketAddr), (TargetHealth, u64)> = self
            .view
            .targets
            .iter()
            .map(|t| ((t.upstream.as_str(), t.target), (t.health, t.ejections)))
            .collect();
        for u in &mut self.ups {
            for s in &mut u.slots {
                let (h, n) = by
                    .get(&(u.name.as_str(), s.addr))
                    .copied()
                    .unwrap_or_default();
                s.health = h;
                s.ejections = n;
            }
            u.all_healthy = u.slots.iter().all(|s| s.health == TargetHealth::Healthy);
        }
    }

    fn slots(&self, up: &UpstreamPlan) -> Option<&[Slot]> {
        slots_of(&self.ups, up)
    }

    /// The state of `addr` in `up` as this shard sees it, and how often it
    /// was ejected.
    pub fn health(&self, up: &UpstreamPlan, addr: SocketAddr) -> (TargetHealth, u64) {
        self.slots(up)
            .and_then(|s| s.iter().find(|s| s.addr == addr))
            .map_or((TargetHealth::Healthy, 0), |s| (s.health, s.ejections))
    }

    /// Picks a target of `up`: among the healthy ones (all of them when none
    /// is and `panic_routing` is on), by the upstream's balancing policy,
    /// never `avoid` when another is eligible. `key` is the request's
    /// consistent-hash key; `cursor` this shard's round-robin position.
    pub fn pick(
        &mut self,
        up: &UpstreamPlan,
        pools: &Pools,
        cursor: &Cell<usize>,
        key: Option<u64>,
        avoid: Option<SocketAddr>,
    ) -> Result<SocketAddr, NoTarget> {
        let n = up.targets.len();
        if n == 0 {
            return Err(NoTarget::Empty);
        }
        let entry = self
            .ups
            .get(up.id)
            .filter(|u| u.name == up.name && u.slots.len() == n);
        let slots = entry.map(|u| u.slots.as_slice());
        let all_healthy = entry.is_none_or(|u| u.all_healthy);
        let healthy = |i: usize| {
            slots.is_none_or(|s| s.get(i).is_some_and(|s| s.health == TargetHealth::Healthy))
        };
        let any_healthy = all_healthy || (0..n).any(healthy);
        if !any_healthy && !up.panic_routing {
            return Err(NoTarget::NoneHealthy);
        }
        // One target: whatever the policy, it is the pick.
        if let [only] = up.targets.as_slice() {
            return Ok(*only);
        }
        // Every target may be picked: no check per candidate.
        let free = all_healthy && avoid.is_none();
        let not_avoided = |i: usize| avoid.is_none_or(|a| up.targets.get(i) != Some(&a));
        let alternatives = !free && (0..n).any(|i| (healthy(i) || !any_healthy) && not_avoided(i));
        let eligible =
            |i: usize| free || ((healthy(i) || !any_healthy) && (!alternatives || not_avoided(i)));
        let plan = &up.plan;
        let picked = match (&up.balance, key) {
            (Balance::ConsistentHash(_), Some(k)) => balance::ring_lookup(&plan.ring, k, eligible),
            (Balance::PeakEwma, _) => {
                let now = crate::ratelimit::limiter::now_ns();
                let default_ewma = PeakEwma::new(now);
                balance::p2c(n, &mut self.rng, eligible, |i| {
                    let e = slots
                        .and_then(|s| s.get(i))
                        .map_or(&default_ewma, |s| &s.ewma);
                    let out = up.targets.get(i).map_or(0, |&a| pools.outstanding_count(a));
                    balance::ewma_load(e, out, plan.weight(i), now)
                })
            }
            (Balance::LeastOutstanding, _) => {
                let start = cursor.get();
                cursor.set(start.wrapping_add(1));
                (0..n)
                    .map(|k| (start.wrapping_add(k)) % n)
                    .filter(|&i| eligible(i))
                    .min_by(|&a, &b| {
                        let load = |i: usize| {
                            let out = up.targets.get(i).map_or(0, |&t| pools.outstanding_count(t));
                            (out as f64 + 1.0) / f64::from(plan.weight(i))
                        };
                        load(a).total_cmp(&load(b))
                    })
            }
            // Round-robin, and consistent hashing for requests without the key.
            _ => {
                let len = plan.schedule.len().max(1);
                let start = cursor.get();
                cursor.set(start.wrapping_add(1));
                (0..len)
                    .map(|k| {
                        let at = (start.wrapping_add(k)) % len;
                        plan.schedule.get(at).map_or(at % n, |&i| i as usize)
                    })
                    .find(|&i| eligible(i))
                    .or_else(|| (0..n).find(|&i| eligible(i)))
            }
        };
        picked
            .and_then(|i| up.targets.get(i).copied())
            .ok_or(NoTarget::NoneHealthy)
    }

    /// Takes in the outcome of one call to `addr` of `up`: its latency for
    /// peak EWMA (a failed connection or a timeout counts as the upstream's
    /// whole timeout, so a dead target does not look fast) and its place in
    /// the target's failure streak. A streak that calls for an ejection is
    /// reported to the control side. `now` is when the call ended, on the
    /// clock of [`crate::ratelimit::limiter::now_ns`].
    pub fn observe(
        &mut self,
        up: &UpstreamPlan,
        addr: SocketAddr,
        took: Duration,
        outcome: UpstreamOutcome,
        now: u64,
    ) {
        let Some(u) = self
            .ups
            .get_mut(up.id)
            .filter(|u| u.name == up.name && u.slots.len() == up.targets.len())
        else {
            return;
        };
        let Some(slot) = u.slots.iter_mut().find(|s| s.addr == addr) else {
            return;
        };
        let rtt = match outcome {
            UpstreamOutcome::ConnectError | UpstreamOutcome::Timeout | UpstreamOutcome::Reset => {
                took.max(up.timeout)
            }
            _ => took,
        };
        let rtt_ns = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX);
        slot.ewma.observe(rtt_ns, now);
        let Some(od) = &up.outlier else { return };
        if slot.streak.record(outcome, od) && slot.health != TargetHealth::Ejected {
            if let Some(k) = &self.keeper {
                let _ = k.send(Report::Outlier {
                    upstream: up.name.clone(),
                    target: addr,
                });
            }
        }
    }
}

/// The slots of `up`, when the table follows the config `up` belongs to (a
/// request still running on the config before a reload may not).
fn slots_of<'a>(ups: &'a [UpTargets], up: &UpstreamPlan) -> Option<&'a [Slot]> {
    ups.get(up.id)
        .filter(|u| u.name == up.name && u.slots.len() == up.targets.len())
        .map(|u| u.slots.as_slice())
}

fn fresh(addr: SocketAddr, now: u64) -> Slot {
    Slot {
        addr,
        health: TargetHealth::Healthy,
        ejections: 0,
        ewma: PeakEwma::new(now),
        streak: Streak::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::limiter::now_ns;
    use crate::resilience::health::TargetView;

    fn compiled(extra: &str) -> Compiled {
        let text = format!(
            "Gateway(listeners: [Listener(name: \"main\", bind: \"127.0.0.1:0\")],
              upstreams: {{ \"app\": Upstream(targets: [\"127.0.0.1:9001\", \"127.0.0.1:9002\", \"127.0.0.1:9003\"]{extra}) }},
              routes: [Route(name: \"all\", match: Match(path_prefix: \"/\"), upstream: \"app\")])"
        );
        let g = crate::config::parse("t.ron", &text).unwrap();
        crate::compiled::compile(&g).unwrap()
    }

    fn view(states: &[(u16, TargetHealth)]) -> Arc<HealthView> {
        Arc::new(HealthView {
            targets: states
                .iter()
                .map(|&(port, health)| TargetView {
                    upstream: "app".into(),
                    target: SocketAddr::from(([127, 0, 0, 1], port)),
                    health,
                    ejections: 1,
                })
                .collect(),
        })
    }

    fn picks(t: &mut TargetTable, c: &Compiled, n: usize) -> Vec<u16> {
        let (pools, cursor) = (Pools::default(), Cell::new(0));
        (0..n)
            .filter_map(|_| t.pick(&c.upstreams[0], &pools, &cursor, None, None).ok())
            .map(|a| a.port())
            .collect()
    }

    #[test]
    fn unhealthy_and_ejected_targets_are_skipped() {
        for balance in ["", ", balance: PeakEwma", ", balance: LeastOutstanding"] {
            let c = compiled(balance);
            let mut t = TargetTable::new(&c, None, 1);
            t.update(view(&[
                (9001, TargetHealth::Unhealthy),
                (9003, TargetHealth::Ejected),
            ]));
            let p = picks(&mut t, &c, 30);
            assert!(
                p.len() == 30 && p.iter().all(|&p| p == 9002),
                "{balance}: {p:?}"
            );
            t.update(view(&[]));
            let p = picks(&mut t, &c, 30);
            assert!(p.contains(&9001) && p.contains(&9003), "{balance}: {p:?}");
        }
    }

    #[test]
    fn none_healthy_is_refused_unless_panic_routing() {
        let all_out = view(&[
            (9001, TargetHealth::Unhealthy),
            (9002, TargetHealth::Unhealthy),
            (9003, TargetHealth::Ejected),
        ]);
        let c = compiled("");
        let mut t = TargetTable::new(&c, None, 1);
        t.update(all_out.clone());
        let (pools, cursor) = (Pools::default(), Cell::new(0));
        assert_eq!(
            t.pick(&c.upstreams[0], &pools, &cursor, None, None),
            Err(NoTarget::NoneHealthy)
        );
        let c = compiled(", panic_routing: true");
        let mut t = TargetTable::new(&c, None, 1);
        t.update(all_out);
        let p = picks(&mut t, &c, 9);
        assert_eq!(p.len(), 9);
        assert!(p.contains(&9001) && p.contains(&9002) && p.contains(&9003));
    }

    #[test]
    fn avoid_is_honoured_while_another_target_is_eligible() {
        let c = compiled("");
        let up = &c.upstreams[0];
        let mut t = TargetTable::new(&c, None, 1);
        let (pools, cursor) = (Pools::default(), Cell::new(0));
        let first = up.targets[0];
        for _ in 0..10 {
            assert_ne!(t.pick(up, &pools, &cursor, None, Some(first)), Ok(first));
        }
        t.update(view(&[
            (9002, TargetHealth::Unhealthy),
            (9003, TargetHealth::Unhealthy),
        ]));
        assert_eq!(t.pick(up, &pools, &cursor, None, Some(first)), Ok(first));
    }

    #[test]
    fn a_streak_is_reported_once_and_health_survives_a_reload() {
        let c = compiled(
            ", outlier_detection: Some(OutlierDetection(consecutive_5xx: 2, consecutive_connect_failures: 2))",
        );
        let up = &c.upstreams[0];
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut t = TargetTable::new(&c, Some(tx), 1);
        let a = up.targets[1];
        let ms = Duration::from_millis(1);
        t.observe(up, a, ms, UpstreamOutcome::ServerError, now_ns());
        assert!(rx.try_recv().is_err());
        t.observe(up, a, ms, UpstreamOutcome::ServerError, now_ns());
        assert!(matches!(
            rx.try_recv(),
            Ok(Report::Outlier { upstream, target }) if upstream == "app" && target == a
        ));
        t.update(view(&[(9002, TargetHealth::Ejected)]));
        t.configure(&c);
        assert_eq!(t.health(up, a), (TargetHealth::Ejected, 1));
        // While ejected, a shard does not report it again.
        t.observe(up, a, ms, UpstreamOutcome::ConnectError, now_ns());
        t.observe(up, a, ms, UpstreamOutcome::ConnectError, now_ns());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn consistent_hash_keys_stick_and_skip_unhealthy_targets() {
        let c = compiled(", balance: ConsistentHash(Header(\"x-user\"))");
        let up = &c.upstreams[0];
        let mut t = TargetTable::new(&c, None, 1);
        let (pools, cursor) = (Pools::default(), Cell::new(0));
        let key = Some(12345u64);
        let first = t.pick(up, &pools, &cursor, key, None);
        for _ in 0..10 {
            assert_eq!(t.pick(up, &pools, &cursor, key, None), first);
        }
        let Ok(owner) = first else { panic!("picked") };
        t.update(view(&[(owner.port(), TargetHealth::Unhealthy)]));
        let moved = t.pick(up, &pools, &cursor, key, None);
        assert!(moved.is_ok() && moved != first);
    }
}
