//! Per-shard metrics: counters and `hdrhistogram` latency histograms that a
//! shard alone writes (plain fields behind the shard's `RefCell`, no atomics),
//! and the snapshots it sends to the admin side when asked.
//!
//! Series are kept in slots keyed by name (route, upstream target,
//! authenticator, limit, aggregation part), so counters carry on across a
//! reload that keeps the name, and the request path indexes a vector: a
//! route's slot is found by its id in the running config.

pub mod prometheus;

use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Largest latency a histogram records, in microseconds (longer ones count
/// as this much): 100 s.
const HIGH_US: u64 = 100_000_000;
/// Smallest latency told apart, in microseconds: below 10 µs, no request
/// through a gateway is; coarser low end makes every histogram smaller
/// (18 KiB instead of 26 KiB), so snapshots and merges copy less.
const LOW_US: u64 = 10;
/// Significant decimal digits kept by the histograms (1% resolution).
const SIGFIG: u8 = 2;

/// A latency histogram in microseconds.
pub type Latency = Histogram<u64>;

/// An empty latency histogram.
#[allow(clippy::expect_used)]
pub fn latency() -> Latency {
    // Constant bounds that hdrhistogram accepts (`histogram_bounds_are_accepted`).
    Histogram::new_with_bounds(LOW_US, HIGH_US, SIGFIG).expect("constant histogram bounds")
}

/// Records a duration (at least 1 µs, at most [`HIGH_US`]).
pub fn record(h: &mut Latency, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, HIGH_US);
    h.saturating_record(us);
}

/// Response status codes by class for the status page: 1xx..5xx.
pub type StatusMix = [u64; 5];

/// How an upstream call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamOutcome {
    /// A response below 500.
    Ok,
    /// The connection could not be made.
    ConnectError,
    /// No (complete) response within the upstream's timeout.
    Timeout,
    /// The connection closed or broke before a response.
    Reset,
    /// A 5xx response.
    ServerError,
}

impl UpstreamOutcome {
    /// Every outcome, in label order.
    pub const ALL: [UpstreamOutcome; 5] = [
        UpstreamOutcome::Ok,
        UpstreamOutcome::ConnectError,
        UpstreamOutcome::Timeout,
        UpstreamOutcome::Reset,
        UpstreamOutcome::ServerError,
    ];

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            UpstreamOutcome::Ok => "ok",
            UpstreamOutcome::ConnectError => "connect_error",
            UpstreamOutcome::Timeout => "timeout",
            UpstreamOutcome::Reset => "reset",
            UpstreamOutcome::ServerError => "5xx",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// An authentication decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// The caller was established (and authorized).
    Ok,
    /// No credentials.
    Missing,
    /// Credentials that did not verify.
    Invalid,
    /// Established but not allowed (scopes, roles).
    Forbidden,
    /// The identity provider could not be reached.
    Unavailable,
}

impl AuthResult {
    /// Every result, in label order.
    pub const ALL: [AuthResult; 5] = [
        AuthResult::Ok,
        AuthResult::Missing,
        AuthResult::Invalid,
        AuthResult::Forbidden,
        AuthResult::Unavailable,
    ];

    /// The `result` label.
    pub fn label(self) -> &'static str {
        match self {
            AuthResult::Ok => "ok",
            AuthResult::Missing => "missing",
            AuthResult::Invalid => "invalid",
            AuthResult::Forbidden => "forbidden",
            AuthResult::Unavailable => "unavailable",
        }
    }
}

/// A rate-limit decision on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitDecision {
    /// Within the limit at once.
    Admitted,
    /// Refused (429).
    Refused,
    /// Admitted after waiting for quota from other shards.
    Waited,
}

impl LimitDecision {
    /// Every decision, in label order.
    pub const ALL: [LimitDecision; 3] = [
        LimitDecision::Admitted,
        LimitDecision::Refused,
        LimitDecision::Waited,
    ];

    /// The `decision` label.
    pub fn label(self) -> &'static str {
        match self {
            LimitDecision::Admitted => "admitted",
            LimitDecision::Refused => "refused",
            LimitDecision::Waited => "waited",
        }
    }
}

/// How an aggregation part ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartOutcome {
    /// Its answer was used.
    Ok,
    /// It failed (error status, bad JSON, connect error).
    Failed,
    /// It ran out of time.
    Timeout,
    /// It did not run (a part it depends on failed).
    Skipped,
}

impl PartOutcome {
    /// Every outcome, in label order.
    pub const ALL: [PartOutcome; 4] = [
        PartOutcome::Ok,
        PartOutcome::Failed,
        PartOutcome::Timeout,
        PartOutcome::Skipped,
    ];

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            PartOutcome::Ok => "ok",
            PartOutcome::Failed => "failed",
            PartOutcome::Timeout => "timeout",
            PartOutcome::Skipped => "skipped",
        }
    }
}

/// Requests of one route by listener, method and status.
#[derive(Debug, Clone, Default)]
pub struct RouteStats {
    /// `(listener, method, status) → count`; a route sees few combinations,
    /// so a short list scanned in order beats a hash map.
    pub requests: Vec<((u16, Method, u16), u64)>,
    /// Request durations, from the head read to the last byte sent.
    pub duration: Option<Box<Latency>>,
    /// The shard's report epoch when a request last counted here.
    pub touched: u64,
}

/// A request method, as a label (the standard ones, or `other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// PATCH
    Patch,
    /// OPTIONS
    Options,
    /// Anything else (a label per method would let clients grow the series).
    Other,
}

impl Method {
    /// The method of a request line.
    pub fn of(m: &str) -> Method {
        match m {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }

    /// The `method` label.
    pub fn label(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Other => "other",
        }
    }
}

/// Calls to one upstream target.
#[derive(Debug, Clone, Default)]
pub struct TargetStats {
    /// Calls by outcome ([`UpstreamOutcome`] order).
    pub outcomes: [u64; 5],
    /// Connections opened for a call.
    pub new_connections: u64,
    /// Calls that reused a pooled connection.
    pub reused: u64,
    /// Call durations, from sending the head to the response's last byte.
    pub duration: Option<Box<Latency>>,
    /// The shard's report epoch when a call last counted here.
    pub touched: u64,
}

/// Slots by name: the index a name had stays its index.
#[derive(Debug, Clone)]
struct Slots<K> {
    by_key: HashMap<K, usize>,
    keys: Vec<K>,
}

impl<K> Default for Slots<K> {
    fn default() -> Self {
        Slots {
            by_key: HashMap::new(),
            keys: Vec::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Slots<K> {
    fn slot(&mut self, key: &K) -> usize {
        if let Some(&i) = self.by_key.get(key) {
            return i;
        }
        let i = self.keys.len();
        self.keys.push(key.clone());
        self.by_key.insert(key.clone(), i);
        i
    }
}

/// Names in the running config, for [`ShardMetrics::configure`].
pub struct Names<'a> {
    /// Route names by route id.
    pub routes: Vec<&'a str>,
    /// Upstream names and targets by upstream id.
    pub upstreams: Vec<(&'a str, &'a [SocketAddr])>,
    /// Authenticator names by index.
    pub authenticators: Vec<&'a str>,
    /// Rate-limit names by index.
    pub limits: Vec<&'a str>,
    /// Aggregation part names by route id (empty for a plain route).
    pub parts: Vec<Vec<&'a str>>,
}

/// One shard's metrics.
#[derive(Debug, Clone)]
pub struct ShardMetrics {
    /// Recording is on (the config's `admin.metrics`).
    pub enabled: bool,
    route_slots: Slots<String>,
    /// Slot of each route id of the running config (the last is "no route").
    route_of: Vec<usize>,
    routes: Vec<RouteStats>,
    target_slots: Slots<(String, SocketAddr)>,
    /// Target slots of each upstream id, by target index.
    targets_of: Vec<Vec<usize>>,
    targets: Vec<TargetStats>,
    auth_slots: Slots<String>,
    auth_of: Vec<usize>,
    auth: Vec<[u64; 5]>,
    limit_slots: Slots<String>,
    limit_of: Vec<usize>,
    limits: Vec<[u64; 3]>,
    part_slots: Slots<(String, String)>,
    parts_of: Vec<Vec<usize>>,
    parts: Vec<[u64; 4]>,
    /// Every request's duration, for the status page's latency chart.
    pub all: Box<Latency>,
    /// Responses by status class.
    pub status_mix: StatusMix,
    /// Access-log lines dropped because the writer's queue was full.
    pub log_dropped: u64,
    /// Spans dropped because the exporter's queue was full.
    pub spans_dropped: u64,
    /// Counts up with every report; a series records the epoch it last
    /// changed in, so a report can carry only what changed since the last.
    epoch: u64,
    /// Tells this shard's metrics apart from those of an earlier run of the
    /// shard (a restart starts again from zero).
    instance: u64,
}

/// The route label of requests that matched no route.
pub const NO_ROUTE: &str = "";

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            enabled: true,
            route_slots: Slots::default(),
            route_of: Vec::new(),
            routes: Vec::new(),
            target_slots: Slots::default(),
            targets_of: Vec::new(),
            targets: Vec::new(),
            auth_slots: Slots::default(),
            auth_of: Vec::new(),
            auth: Vec::new(),
            limit_slots: Slots::default(),
            limit_of: Vec::new(),
            limits: Vec::new(),
            part_slots: Slots::default(),
            parts_of: Vec::new(),
            parts: Vec::new(),
            all: Box::new(latency()),
            status_mix: [0; 5],
            log_dropped: 0,
            spans_dropped: 0,
            epoch: 1,
            instance: instance_id(),
        }
    }
}

/// A value unlikely to repeat between two runs of a shard.
fn instance_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(1);
    h.finish() | 1
}

fn grow<T: Default + Clone>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

impl ShardMetrics {
    /// Points the ids of a (new) running config at their slots; series of
    /// names that stay keep counting.
    pub fn configure(&mut self, enabled: bool, names: &Names<'_>) {
        self.enabled = enabled;
        let routes = &mut self.route_slots;
        let mut route_of: Vec<usize> = names
            .routes
            .iter()
            .map(|n| routes.slot(&n.to_string()))
            .collect();
        route_of.push(routes.slot(&NO_ROUTE.to_string()));
        self.route_of = route_of;
        grow(&mut self.routes, self.route_slots.keys.len());
        let targets = &mut self.target_slots;
        self.targets_of = names
            .upstreams
            .iter()
            .map(|(u, ts)| {
                ts.iter()
                    .map(|&t| targets.slot(&(u.to_string(), t)))
                    .collect()
            })
            .collect();
        grow(&mut self.targets, self.target_slots.keys.len());
        let auth = &mut self.auth_slots;
        self.auth_of = names
            .authenticators
            .iter()
            .map(|n| auth.slot(&n.to_string()))
            .collect();
        grow(&mut self.auth, self.auth_slots.keys.len());
        let limits = &mut self.limit_slots;
        self.limit_of = names
            .limits
            .iter()
            .map(|n| limits.slot(&n.to_string()))
            .collect();
        grow(&mut self.limits, self.limit_slots.keys.len());
        let parts = &mut self.part_slots;
        self.parts_of = names
            .routes
            .iter()
            .zip(&names.parts)
            .map(|(r, ps)| {
                ps.iter()
                    .map(|p| parts.slot(&(r.to_string(), p.to_string())))
                    .collect()
            })
            .collect();
        grow(&mut self.parts, self.part_slots.keys.len());
    }

    /// Requests counted by this shard (every request lands in one status class).
    pub fn requests(&self) -> u64 {
        self.status_mix.iter().sum()
    }

    /// Counts one finished request: `route` is its route id (`None`: it
    /// matched none).
    pub fn request(
        &mut self,
        listener: usize,
        route: Option<usize>,
        method: Method,
        status: u16,
        took: Duration,
    ) {
        if !self.enabled {
            return;
        }
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        if let Some(c) = self.status_mix.get_mut(class) {
            *c += 1;
        }
        record(&mut self.all, took);
        let id = route.unwrap_or(self.route_of.len().saturating_sub(1));
        let Some(stats) = self.route_of.get(id).and_then(|&s| self.routes.get_mut(s)) else {
            return;
        };
        stats.touched = self.epoch;
        let key = (listener as u16, method, status);
        match stats.requests.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => stats.requests.push((key, 1)),
        }
        record(
            stats.duration.get_or_insert_with(|| Box::new(latency())),
            took,
        );
    }

    fn target(&mut self, upstream: usize, target: usize) -> Option<&mut TargetStats> {
        let slot = *self.targets_of.get(upstream)?.get(target)?;
        self.targets.get_mut(slot)
    }

    /// Counts one upstream call (`target` is the target's index in its upstream).
    pub fn upstream_call(
        &mut self,
        upstream: usize,
        target: usize,
        outcome: UpstreamOutcome,
        took: Duration,
    ) {
        if !self.enabled {
            return;
        }
        let epoch = self.epoch;
        if let Some(t) = self.target(upstream, target) {
            t.touched = epoch;
            if let Some(n) = t.outcomes.get_mut(outcome.index()) {
                *n += 1;
            }
            record(t.duration.get_or_insert_with(|| Box::new(latency())), took);
        }
    }

    /// Counts a connection taken for an upstream call: new or reused.
    pub fn upstream_connection(&mut self, upstream: usize, target: usize, reused: bool) {
        if !self.enabled {
            return;
        }
        if let Some(t) = self.target(upstream, target) {
            if reused {
                t.reused += 1;
            } else {
                t.new_connections += 1;
            }
        }
    }

    /// Counts an authentication decision by authenticator index.
    pub fn auth(&mut self, authenticator: usize, result: AuthResult) {
        if !self.enabled {
            return;
        }
        let slot = self.auth_of.get(authenticator).copied();
        if let Some(a) = slot.and_then(|s| self.auth.get_mut(s)) {
            if let Some(n) = a.get_mut(result as usize) {
                *n += 1;
            }
        }
    }

    /// Counts a rate-limit decision by limit index.
    pub fn limit(&mut self, limit: usize, decision: LimitDecision) {
        if !self.enabled {
            return;
        }
        let slot = self.limit_of.get(limit).copied();
        if let Some(l) = slot.and_then(|s| self.limits.get_mut(s)) {
            if let Some(n) = l.get_mut(decision as usize) {
                *n += 1;
            }
        }
    }

    /// Counts an aggregation part's outcome by route id and part index.
    pub fn part(&mut self, route: usize, part: usize, outcome: PartOutcome) {
        if !self.enabled {
            return;
        }
        let slot = self.parts_of.get(route).and_then(|p| p.get(part)).copied();
        if let Some(p) = slot.and_then(|s| self.parts.get_mut(s)) {
            if let Some(n) = p.get_mut(outcome as usize) {
                *n += 1;
            }
        }
    }

    /// A copy of everything, with names, for the admin side.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_of(0)
    }

    /// What changed since report epoch `since` (everything for 0; see
    /// [`Snapshot::absorb`]): route and target series that counted since,
    /// and the small series whole. Starts a new epoch.
    pub fn snapshot_since(&mut self, instance: u64, since: u64) -> Snapshot {
        let since = if instance == self.instance { since } else { 0 };
        let mut s = self.snapshot_of(since);
        // Whatever counts from here on counts in the next epoch.
        self.epoch += 1;
        s.next_since = self.epoch;
        s
    }

    fn snapshot_of(&self, since: u64) -> Snapshot {
        let named = |keys: &[String]| keys.to_vec();
        Snapshot {
            routes: self
                .route_slots
                .keys
                .iter()
                .zip(&self.routes)
                .filter(|(_, s)| !s.requests.is_empty() && s.touched >= since)
                .map(|(n, s)| (n.clone(), s.clone()))
                .collect(),
            targets: self
                .target_slots
                .keys
                .iter()
                .zip(&self.targets)
                .filter(|(_, t)| since == 0 || t.touched >= since)
                .map(|(k, t)| (k.clone(), t.clone()))
                .collect(),
            instance: self.instance,
            since,
            // What counts after this copy still counts in this epoch.
            next_since: self.epoch,
            auth: named(&self.auth_slots.keys)
                .into_iter()
                .zip(self.auth.iter().copied())
                .collect(),
            limits: named(&self.limit_slots.keys)
                .into_iter()
                .zip(self.limits.iter().copied())
                .collect(),
            parts: self
                .part_slots
                .keys
                .iter()
                .cloned()
                .zip(self.parts.iter().copied())
                .collect(),
            all: (*self.all).clone(),
            status_mix: self.status_mix,
            requests: self.requests(),
            log_dropped: self.log_dropped,
            spans_dropped: self.spans_dropped,
        }
    }
}

/// Metrics of one or more shards, by name (what a scrape merges).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The run of the shard it comes from (see [`ShardMetrics::snapshot_since`]).
    pub instance: u64,
    /// 0: complete; else it holds only the route and target series that
    /// changed since this epoch (the rest are as in the previous one).
    pub since: u64,
    /// The epoch to ask from next time.
    pub next_since: u64,
    /// Per route name.
    pub routes: Vec<(String, RouteStats)>,
    /// Per (upstream, target).
    pub targets: Vec<((String, SocketAddr), TargetStats)>,
    /// Per authenticator: decisions in [`AuthResult`] order.
    pub auth: Vec<(String, [u64; 5])>,
    /// Per limit: decisions in [`LimitDecision`] order.
    pub limits: Vec<(String, [u64; 3])>,
    /// Per (route, part): outcomes in [`PartOutcome`] order.
    pub parts: Vec<((String, String), [u64; 4])>,
    /// Every request's duration.
    pub all: Latency,
    /// Responses by status class.
    pub status_mix: StatusMix,
    /// Requests answered.
    pub requests: u64,
    /// Access-log lines dropped.
    pub log_dropped: u64,
    /// Spans dropped.
    pub spans_dropped: u64,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            instance: 0,
            since: 0,
            next_since: 0,
            routes: Vec::new(),
            targets: Vec::new(),
            auth: Vec::new(),
            limits: Vec::new(),
            parts: Vec::new(),
            all: latency(),
            status_mix: [0; 5],
            requests: 0,
            log_dropped: 0,
            spans_dropped: 0,
        }
    }
}

fn add_hist(into: &mut Option<Box<Latency>>, from: &Option<Box<Latency>>) {
    if let Some(f) = from {
        match into {
            Some(i) => {
                let _ = i.add(&**f);
            }
            None => *into = Some(f.clone()),
        }
    }
}

fn add_arr<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// Adds `from`'s series into `into`, matching by name (`index` maps a name
/// to its position in `into`).
fn merge_named<K: Clone + Eq + std::hash::Hash, V: Clone>(
    into: &mut Vec<(K, V)>,
    from: &[(K, V)],
    add: impl Fn(&mut V, &V),
) {
    let mut index: HashMap<K, usize> = into
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.clone(), i))
        .collect();
    for (k, v) in from {
        match index.get(k).and_then(|&i| into.get_mut(i)) {
            Some((_, existing)) => add(existing, v),
            None => {
                index.insert(k.clone(), into.len());
                into.push((k.clone(), v.clone()));
            }
        }
    }
}

impl Snapshot {
    /// Brings this complete snapshot of one shard up to date with a newer
    /// one of the same shard, which may hold only what changed.
    pub fn absorb(&mut self, newer: Snapshot) {
        if newer.since == 0 || newer.instance != self.instance {
            *self = newer;
            return;
        }
        fn upsert<K: Eq + Clone + std::hash::Hash, V>(into: &mut Vec<(K, V)>, from: Vec<(K, V)>) {
            let index: HashMap<K, usize> = into
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect();
            for (k, v) in from {
                match index.get(&k).and_then(|&i| into.get_mut(i)) {
                    Some((_, old)) => *old = v,
                    None => into.push((k, v)),
                }
            }
        }
        upsert(&mut self.routes, newer.routes);
        upsert(&mut self.targets, newer.targets);
        self.auth = newer.auth;
        self.limits = newer.limits;
        self.parts = newer.parts;
        self.all = newer.all;
        self.status_mix = newer.status_mix;
        self.requests = newer.requests;
        self.log_dropped = newer.log_dropped;
        self.spans_dropped = newer.spans_dropped;
        self.next_since = newer.next_since;
    }

    /// Adds another shard's snapshot to this one.
    pub fn merge(&mut self, other: &Snapshot) {
        merge_named(&mut self.routes, &other.routes, |a, b| {
            for &(k, n) in &b.requests {
                match a.requests.iter_mut().find(|(x, _)| *x == k) {
                    Some((_, m)) => *m += n,
                    None => a.requests.push((k, n)),
                }
            }
            add_hist(&mut a.duration, &b.duration);
        });
        merge_named(&mut self.targets, &other.targets, |a, b| {
            add_arr(&mut a.outcomes, &b.outcomes);
            a.new_connections += b.new_connections;
            a.reused += b.reused;
            add_hist(&mut a.duration, &b.duration);
        });
        merge_named(&mut self.auth, &other.auth, add_arr);
        merge_named(&mut self.limits, &other.limits, add_arr);
        merge_named(&mut self.parts, &other.parts, add_arr);
        let _ = self.all.add(&other.all);
        add_arr(&mut self.status_mix, &other.status_mix);
        self.requests += other.requests;
        self.log_dropped += other.log_dropped;
        self.spans_dropped += other.spans_dropped;
    }

    /// Merges several shards' snapshots.
    pub fn merged<'a>(all: impl IntoIterator<Item = &'a Snapshot>) -> Snapshot {
        let mut out = Snapshot::default();
        for s in all {
            out.merge(s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<'a>(routes: &[&'a str], targets: &'a [SocketAddr]) -> Names<'a> {
        Names {
            routes: routes.to_vec(),
            upstreams: vec![("up", targets)],
            authenticators: vec!["jwt"],
            limits: vec!["per-ip"],
            parts: routes.iter().map(|_| Vec::new()).collect(),
        }
    }

    #[test]
    fn histogram_bounds_are_accepted() {
        let h = latency();
        assert_eq!(h.high(), HIGH_US);
        assert!(
            h.distinct_values() * 8 <= 20 * 1024,
            "{}",
            h.distinct_values()
        );
    }

    #[test]
    fn counters_follow_names_across_a_reload() {
        let t = ["127.0.0.1:1".parse().unwrap()];
        let mut m = ShardMetrics::default();
        m.configure(true, &names(&["a", "b"], &t));
        m.request(0, Some(1), Method::Get, 200, Duration::from_millis(2));
        // Reload: "b" moves to id 0, "c" is new.
        m.configure(true, &names(&["b", "c"], &t));
        m.request(0, Some(0), Method::Get, 200, Duration::from_millis(2));
        m.request(0, None, Method::Get, 404, Duration::from_micros(10));
        let s = m.snapshot();
        let b = s.routes.iter().find(|(n, _)| n == "b").unwrap();
        assert_eq!(b.1.requests, vec![((0, Method::Get, 200), 2)]);
        assert_eq!(b.1.duration.as_ref().unwrap().len(), 2);
        let none = s.routes.iter().find(|(n, _)| n == NO_ROUTE).unwrap();
        assert_eq!(none.1.requests, vec![((0, Method::Get, 404), 1)]);
        assert_eq!(s.requests, 3);
        assert_eq!(s.status_mix, [0, 2, 0, 1, 0]);
    }

    #[test]
    fn merge_adds_by_name() {
        let t = ["127.0.0.1:1".parse().unwrap()];
        let mut a = ShardMetrics::default();
        a.configure(true, &names(&["x", "y"], &t));
        let mut b = ShardMetrics::default();
        b.configure(true, &names(&["y"], &t));
        a.request(0, Some(1), Method::Post, 201, Duration::from_millis(1));
        b.request(0, Some(0), Method::Post, 201, Duration::from_millis(3));
        a.upstream_call(0, 0, UpstreamOutcome::Ok, Duration::from_millis(1));
        b.upstream_call(0, 0, UpstreamOutcome::Timeout, Duration::from_millis(1));
        a.limit(0, LimitDecision::Refused);
        b.limit(0, LimitDecision::Refused);
        let m = Snapshot::merged(&[a.snapshot(), b.snapshot()]);
        let y = m.routes.iter().find(|(n, _)| n == "y").unwrap();
        assert_eq!(y.1.requests, vec![((0, Method::Post, 201), 2)]);
        assert_eq!(m.targets[0].1.outcomes, [1, 0, 1, 0, 0]);
        assert_eq!(m.limits[0].1, [0, 2, 0]);
        assert_eq!(m.all.len(), 2);
    }

    #[test]
    fn reports_since_an_epoch_carry_only_what_changed() {
        let t = ["127.0.0.1:1".parse().unwrap()];
        let mut m = ShardMetrics::default();
        m.configure(true, &names(&["a", "b"], &t));
        m.request(0, Some(0), Method::Get, 200, Duration::from_millis(1));
        m.request(0, Some(1), Method::Get, 200, Duration::from_millis(1));
        let mut cache = m.snapshot_since(0, 0);
        assert_eq!(cache.since, 0);
        assert_eq!(cache.routes.len(), 2);
        // Only "b" moves; the delta carries it alone, and absorbing it
        // gives what a complete snapshot says.
        m.request(0, Some(1), Method::Get, 503, Duration::from_millis(1));
        m.upstream_call(0, 0, UpstreamOutcome::Ok, Duration::from_millis(1));
        let delta = m.snapshot_since(cache.instance, cache.next_since);
        assert_ne!(delta.since, 0);
        let names: Vec<&str> = delta.routes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["b"]);
        assert_eq!(delta.targets.len(), 1);
        cache.absorb(delta);
        let full = m.snapshot();
        assert_eq!(cache.routes.len(), 2);
        for (name, stats) in &full.routes {
            let cached = cache.routes.iter().find(|(n, _)| n == name).unwrap();
            assert_eq!(cached.1.requests, stats.requests, "{name}");
        }
        assert_eq!(cache.requests, 3);
        // Nothing new: an empty delta.
        let quiet = m.snapshot_since(cache.instance, cache.next_since);
        assert!(quiet.routes.is_empty() && quiet.targets.is_empty());
        // Another run of the shard (another instance): a complete one.
        let other = m.snapshot_since(cache.instance ^ 2, 5);
        assert_eq!(other.since, 0);
        assert_eq!(other.routes.len(), 2);
    }

    #[test]
    fn disabled_records_nothing() {
        let mut m = ShardMetrics::default();
        m.configure(false, &names(&["a"], &[]));
        m.request(0, Some(0), Method::Get, 200, Duration::from_millis(1));
        assert_eq!(m.snapshot().requests, 0);
    }
}
