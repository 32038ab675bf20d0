//! The live status page: one self-contained HTML document (CSS and JS
//! inside, nothing loaded from elsewhere), fed by `/api/status`.
//!
//! A sampler thread asks the shards for one full report a second and keeps
//! five minutes of per-second history: requests/s, p50 and p99 of the
//! requests of that second (the difference of two cumulative histograms),
//! the status-code mix, rate-limit refusals and each shard's requests/s.
//! The page's tables (routes, upstream targets, limits) are rates over the
//! last [`WINDOW`] seconds. `/api/status` only reads what the sampler kept,
//! so however many pages are open, the shards answer one report a second.

use super::Hub;
use crate::metrics::{Latency, Snapshot, StatusMix, UpstreamOutcome, NO_ROUTE};
use crate::shard::{Detail, ShardReport};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The page.
pub const PAGE: &str = include_str!("status.html");

/// Seconds of per-second history kept for the charts.
pub const HISTORY: usize = 300;
/// Seconds the tables' rates and percentiles cover.
pub const WINDOW: usize = 10;
/// Rows of the route table (busiest first).
const MAX_ROUTES: usize = 100;
/// Time between two samples.
const TICK: Duration = Duration::from_secs(1);

/// A latency histogram's recorded buckets: (highest value of the bucket in
/// µs, count), ascending. Far smaller than the histogram itself, and two
/// of them (of histograms with the same bounds) subtract bucket by bucket.
type Sparse = Vec<(u64, u64)>;

fn sparse(h: &Latency) -> Sparse {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_since_last_iteration()))
        .collect()
}

/// `a + b`, bucket by bucket.
fn merge(a: &Sparse, b: &Sparse) -> Sparse {
    if b.is_empty() {
        return a.clone();
    }
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (a.iter().peekable(), b.iter().peekable());
    loop {
        let next = match (i.peek(), j.peek()) {
            (Some(&&(va, na)), Some(&&(vb, nb))) => {
                if va == vb {
                    i.next();
                    j.next();
                    (va, na + nb)
                } else if va < vb {
                    i.next();
                    (va, na)
                } else {
                    j.next();
                    (vb, nb)
                }
            }
            (Some(&&x), None) => {
                i.next();
                x
            }
            (None, Some(&&y)) => {
                j.next();
                y
            }
            (None, None) => return out,
        };
        out.push(next);
    }
}

/// `cur − prev`, bucket by bucket (a bucket that shrank counts as empty).
fn diff(cur: &Sparse, prev: &Sparse) -> Sparse {
    let mut out = Vec::new();
    let mut p = prev.iter().peekable();
    for &(v, n) in cur {
        while p.next_if(|&&(pv, _)| pv < v).is_some() {}
        let before = p.next_if(|&&(pv, _)| pv == v).map_or(0, |&(_, m)| m);
        let d = n.saturating_sub(before);
        if d > 0 {
            out.push((v, d));
        }
    }
    out
}

/// The value below which `q` of the counts fall (`None`: no counts).
fn quantile<'a>(
    buckets: impl IntoIterator<Item = (&'a u64, &'a u64)> + Clone,
    q: f64,
) -> Option<u64> {
    let total: u64 = buckets.clone().into_iter().map(|(_, n)| *n).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (v, n) in buckets {
        seen += n;
        if seen >= rank {
            return Some(*v);
        }
    }
    None
}

fn sparse_quantile(s: &Sparse, q: f64) -> Option<u64> {
    quantile(s.iter().map(|(v, n)| (v, n)), q)
}

fn add_arr<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

fn sub_arr<const N: usize>(a: &[u64; N], b: &[u64; N]) -> [u64; N] {
    let mut out = [0; N];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x.saturating_sub(*y);
    }
    out
}

fn class_of(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// One route's counts since the start (cumulative) or within a second (a delta).
#[derive(Debug, Clone, Default, PartialEq)]
struct RouteCounts {
    /// Responses by status class.
    classes: StatusMix,
    /// Durations.
    hist: Sparse,
}

impl RouteCounts {
    fn total(&self) -> u64 {
        self.classes.iter().sum()
    }
}

/// What the next sample is measured against: the previous one's totals.
#[derive(Debug, Clone, Default)]
struct Totals {
    all: Sparse,
    status_mix: StatusMix,
    requests: u64,
    routes: HashMap<String, RouteCounts>,
    targets: HashMap<(String, SocketAddr), [u64; 5]>,
    limits: HashMap<String, [u64; 3]>,
}

impl Totals {
    /// One shard's totals. `before` is the same shard's previous totals: a
    /// histogram whose count did not move is not read again (with many
    /// routes, most are idle in any one second).
    fn of(s: &Snapshot, before: Option<&Totals>) -> Totals {
        let all = match before {
            Some(b) if b.requests == s.requests => b.all.clone(),
            _ => sparse(&s.all),
        };
        Totals {
            all,
            status_mix: s.status_mix,
            requests: s.requests,
            routes: s
                .routes
                .iter()
                .map(|(name, r)| {
                    let mut classes = [0; 5];
                    for ((_, _, status), n) in &r.requests {
                        if let Some(c) = classes.get_mut(class_of(*status)) {
                            *c += n;
                        }
                    }
                    let same = before
                        .and_then(|b| b.routes.get(name))
                        .filter(|p| p.classes == classes);
                    let hist = match same {
                        Some(p) => p.hist.clone(),
                        None => r.duration.as_deref().map(sparse).unwrap_or_default(),
                    };
                    (name.clone(), RouteCounts { classes, hist })
                })
                .collect(),
            targets: s
                .targets
                .iter()
                .map(|(k, t)| (k.clone(), t.outcomes))
                .collect(),
            limits: s.limits.iter().cloned().collect(),
        }
    }

    /// Adds another shard's totals.
    fn add(&mut self, o: &Totals) {
        self.all = merge(&self.all, &o.all);
        add_arr(&mut self.status_mix, &o.status_mix);
        self.requests += o.requests;
        for (name, r) in &o.routes {
            let e = self.routes.entry(name.clone()).or_default();
            add_arr(&mut e.classes, &r.classes);
            e.hist = merge(&e.hist, &r.hist);
        }
        for (k, t) in &o.targets {
            add_arr(self.targets.entry(k.clone()).or_default(), t);
        }
        for (k, l) in &o.limits {
            add_arr(self.limits.entry(k.clone()).or_default(), l);
        }
    }
}

/// What happened within one sample's interval (metrics on).
#[derive(Debug, Clone, Default)]
struct Delta {
    /// Seconds the interval covers.
    secs: f64,
    /// Requests answered.
    requests: u64,
    /// Durations of every request.
    all: Sparse,
    routes: HashMap<String, RouteCounts>,
    targets: HashMap<(String, SocketAddr), [u64; 5]>,
    limits: HashMap<String, [u64; 3]>,
}

/// `cur − prev`, keeping only series that moved.
fn delta(cur: &Totals, prev: &Totals, secs: f64) -> Delta {
    let routes = cur
        .routes
        .iter()
        .filter_map(|(name, c)| {
            let d = match prev.routes.get(name) {
                Some(p) => RouteCounts {
                    classes: sub_arr(&c.classes, &p.classes),
                    hist: diff(&c.hist, &p.hist),
                },
                None => c.clone(),
            };
            (d.total() > 0).then(|| (name.clone(), d))
        })
        .collect();
    let targets = cur
        .targets
        .iter()
        .filter_map(|(k, c)| {
            let d = sub_arr(c, prev.targets.get(k).unwrap_or(&[0; 5]));
            (d.iter().any(|&n| n > 0)).then(|| (k.clone(), d))
        })
        .collect();
    let limits = cur
        .limits
        .iter()
        .filter_map(|(k, c)| {
            let d = sub_arr(c, prev.limits.get(k).unwrap_or(&[0; 3]));
            (d.iter().any(|&n| n > 0)).then(|| (k.clone(), d))
        })
        .collect();
    Delta {
        secs,
        requests: cur.requests.saturating_sub(prev.requests),
        all: diff(&cur.all, &prev.all),
        routes,
        targets,
        limits,
    }
}

/// One second of history.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    /// Unix time of the sample, seconds.
    t: f64,
    /// Requests/s (`None` with metrics off or on the first sample).
    rps: Option<f64>,
    /// Median and 99th percentile of the requests of this second, µs.
    p50_us: Option<u64>,
    p99_us: Option<u64>,
    /// Seconds since the previous sample.
    secs: f64,
    /// Responses by status class.
    mix: StatusMix,
    /// Rate-limit refusals/s (every limit).
    refused: f64,
    /// Requests/s of each shard, by shard id.
    shards: Vec<(usize, Option<f64>)>,
    /// Connections open on every shard together.
    connections: usize,
}

/// One shard's load, as last reported.
#[derive(Debug, Clone)]
struct ShardLoad {
    id: usize,
    core: Option<usize>,
    driver: String,
    connections: usize,
    in_flight: usize,
    requests: u64,
    rps: Option<f64>,
}

/// What the sampler keeps.
#[derive(Default)]
struct Kept {
    /// Each shard's totals at its last answer.
    shard_totals: HashMap<usize, Totals>,
    /// Totals and time of the previous sample (metrics on).
    prev: Option<(Instant, Totals)>,
    /// Each shard's request counter at the previous sample.
    prev_shard_requests: HashMap<usize, (Instant, u64)>,
    samples: VecDeque<Sample>,
    window: VecDeque<Delta>,
    /// The last full picture (totals), for the tables.
    last: Option<Totals>,
    last_reports: Vec<ShardReport>,
    metrics_on: bool,
    shards_expected: usize,
    sampled: u64,
}

/// The status page's history: five minutes of per-second samples and the
/// last [`WINDOW`] seconds of per-series deltas. Only the sampler thread
/// writes it, once a second; `/api/status` reads it.
#[derive(Default)]
pub struct History {
    kept: Mutex<Kept>,
}

impl History {
    fn with<R>(&self, f: impl FnOnce(&mut Kept) -> R) -> R {
        match self.kept.lock() {
            Ok(mut k) => f(&mut k),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Takes one sample of `reports` (gathered at `at`, unix time `t`).
    /// `expected` is how many shards run; `metrics_on` whether they count.
    fn sample(
        &self,
        reports: Vec<ShardReport>,
        expected: usize,
        metrics_on: bool,
        at: Instant,
        t: f64,
    ) {
        let complete = reports.len() >= expected;
        let mut reports = reports;
        let per_shard: Vec<(usize, std::sync::Arc<Snapshot>)> = reports
            .iter_mut()
            .filter_map(|r| Some((r.id, r.metrics.take()?)))
            .collect();
        // Per-shard totals (the histograms read outside the lock), then their sum.
        let before: HashMap<usize, Totals> = self.with(|k| std::mem::take(&mut k.shard_totals));
        let shard_totals: HashMap<usize, Totals> = per_shard
            .iter()
            .map(|(id, s)| (*id, Totals::of(s, before.get(id))))
            .collect();
        let totals = (metrics_on && complete).then(|| {
            let mut sum = Totals::default();
            for t in shard_totals.values() {
                sum.add(t);
            }
            sum
        });
        self.with(|k| {
            k.shard_totals = before;
            k.shard_totals.extend(shard_totals);
            k.sampled += 1;
            k.metrics_on = metrics_on;
            k.shards_expected = expected;
            let mut shards = Vec::with_capacity(reports.len());
            for r in &reports {
                let rps = if metrics_on {
                    k.prev_shard_requests.get(&r.id).and_then(|&(then, n)| {
                        let secs = at.duration_since(then).as_secs_f64();
                        (secs > 0.0).then(|| r.requests.saturating_sub(n) as f64 / secs)
                    })
                } else {
                    None
                };
                k.prev_shard_requests.insert(r.id, (at, r.requests));
                shards.push((r.id, rps));
            }
            let mut sample = Sample {
                t,
                rps: None,
                p50_us: None,
                p99_us: None,
                secs: 0.0,
                mix: [0; 5],
                refused: 0.0,
                shards,
                connections: reports.iter().map(|r| r.connections).sum(),
            };
            if !metrics_on {
                k.shard_totals.clear();
                k.prev = None;
                k.window.clear();
                k.last = None;
            }
            if let Some(cur) = totals {
                if let Some((then, prev)) = &k.prev {
                    let secs = at.duration_since(*then).as_secs_f64();
                    if secs > 0.0 {
                        let d = delta(&cur, prev, secs);
                        sample.secs = secs;
                        sample.rps = Some(d.requests as f64 / secs);
                        sample.p50_us = sparse_quantile(&d.all, 0.5);
                        sample.p99_us = sparse_quantile(&d.all, 0.99);
                        sample.mix = sub_arr(&cur.status_mix, &prev.status_mix);
                        sample.refused = d.limits.values().map(|l| l[1]).sum::<u64>() as f64 / secs;
                        k.window.push_back(d);
                        while k.window.len() > WINDOW {
                            k.window.pop_front();
                        }
                    }
                }
                k.prev = Some((at, cur.clone()));
                k.last = Some(cur);
            }
            k.samples.push_back(sample);
            while k.samples.len() > HISTORY {
                k.samples.pop_front();
            }
            k.last_reports = reports;
        });
    }

    /// What `/api/status` answers.
    fn to_json(&self, hub_shards: usize) -> Value {
        self.with(|k| {
            let samples = &k.samples;
            let series = json!({
                "t": samples.iter().map(|s| r3(s.t)).collect::<Vec<_>>(),
                "rps": samples.iter().map(|s| s.rps.map(r3)).collect::<Vec<_>>(),
                "p50_ms": samples.iter().map(|s| s.p50_us.map(ms)).collect::<Vec<_>>(),
                "p99_ms": samples.iter().map(|s| s.p99_us.map(ms)).collect::<Vec<_>>(),
                "mix": samples.iter().map(|s| s.mix.to_vec()).collect::<Vec<_>>(),
                "refused_ps": samples.iter().map(|s| r3(s.refused)).collect::<Vec<_>>(),
                "connections": samples.iter().map(|s| s.connections).collect::<Vec<_>>(),
                "shard_rps": shard_series(samples),
            });
            let secs: f64 = k.window.iter().map(|d| d.secs).sum();
            json!({
                "version": env!("CARGO_PKG_VERSION"),
                "metrics": k.metrics_on,
                "sampled": k.sampled,
                "interval_s": TICK.as_secs_f64(),
                "history_s": HISTORY,
                "window_s": secs,
                "shards_running": hub_shards,
                "shards_answered": k.last_reports.len(),
                "history": series,
                "totals": totals_json(k, secs),
                "routes": routes_json(k, secs),
                "status_mix": mix_json(k),
                "upstreams": upstreams_json(k, secs),
                "limits": limits_json(k, secs),
                "shards": shards_json(k),
            })
        })
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// `x` to 3 decimals: rates and times need no more, and the history's
/// JSON stays short.
fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Per shard id, its requests/s in each sample (`null` where it did not
/// answer or did not count).
fn shard_series(samples: &VecDeque<Sample>) -> Value {
    let mut ids: Vec<usize> = samples
        .iter()
        .flat_map(|s| s.shards.iter().map(|(id, _)| *id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let per: serde_json::Map<String, Value> = ids
        .iter()
        .map(|id| {
            let v: Vec<Option<f64>> = samples
                .iter()
                .map(|s| {
                    s.shards
                        .iter()
                        .find(|(i, _)| i == id)
                        .and_then(|(_, r)| r.map(r3))
                })
                .collect();
            (id.to_string(), json!(v))
        })
        .collect();
    Value::Object(per)
}

/// Totals, with rate and percentiles over the window.
fn totals_json(k: &Kept, secs: f64) -> Value {
    let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
    for d in &k.window {
        for &(v, n) in &d.all {
            *buckets.entry(v).or_default() += n;
        }
    }
    let requests: u64 = k.window.iter().map(|d| d.requests).sum();
    let on = k.last.is_some() && secs > 0.0;
    json!({
        "requests": k.last.as_ref().map(|t| t.requests),
        "rps": on.then(|| requests as f64 / secs),
        "p50_ms": quantile(buckets.iter(), 0.5).map(ms),
        "p99_ms": quantile(buckets.iter(), 0.99).map(ms),
        "connections": k.last_reports.iter().map(|r| r.connections).sum::<usize>(),
        "in_flight": k.last_reports.iter().map(|r| r.in_flight).sum::<usize>(),
    })
}

fn routes_json(k: &Kept, secs: f64) -> Value {
    let Some(last) = &k.last else {
        return json!([]);
    };
    let mut rows: Vec<(f64, Value)> = last
        .routes
        .iter()
        .map(|(name, total)| {
            let mut classes = [0u64; 5];
            let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
            for d in &k.window {
                if let Some(r) = d.routes.get(name) {
                    add_arr(&mut classes, &r.classes);
                    for &(v, n) in &r.hist {
                        *buckets.entry(v).or_default() += n;
                    }
                }
            }
            let n: u64 = classes.iter().sum();
            let rate = if secs > 0.0 { n as f64 / secs } else { 0.0 };
            let ratio = |c: u64| if n > 0 { c as f64 / n as f64 } else { 0.0 };
            let all_ratio = |c: u64| {
                let t = total.total();
                if t > 0 {
                    c as f64 / t as f64
                } else {
                    0.0
                }
            };
            let row = json!({
                "route": name,
                "matched": name != NO_ROUTE,
                "rps": rate,
                "requests": total.total(),
                "window_requests": n,
                "ratio_4xx": ratio(classes[3]),
                "ratio_5xx": ratio(classes[4]),
                "total_4xx": total.classes[3],
                "total_5xx": total.classes[4],
                "total_ratio_5xx": all_ratio(total.classes[4]),
                "p50_ms": quantile(buckets.iter(), 0.5).map(ms),
                "p99_ms": quantile(buckets.iter(), 0.99).map(ms),
            });
            (rate, row)
        })
        .collect();
    rows.sort_by(|a, b| {
        b.0.total_cmp(&a.0).then_with(|| {
            let name = |v: &Value| v["route"].as_str().unwrap_or_default().to_string();
            name(&a.1).cmp(&name(&b.1))
        })
    });
    let shown: Vec<Value> = rows.into_iter().take(MAX_ROUTES).map(|(_, v)| v).collect();
    json!(shown)
}

fn mix_json(k: &Kept) -> Value {
    let recent = k.samples.iter().fold([0; 5], |mut acc, s| {
        add_arr(&mut acc, &s.mix);
        acc
    });
    let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    let total = k.last.as_ref().map(|t| t.status_mix).unwrap_or_default();
    let last = k.samples.back();
    let rows: Vec<Value> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "class": c,
                "total": total.get(i).copied().unwrap_or(0),
                "recent": recent.get(i).copied().unwrap_or(0),
                "per_s": last.filter(|s| s.secs > 0.0).map_or(0.0, |s| {
                    s.mix.get(i).copied().unwrap_or(0) as f64 / s.secs
                }),
            })
        })
        .collect();
    json!(rows)
}

fn upstreams_json(k: &Kept, secs: f64) -> Value {
    // Upstreams and targets in config order, as the shards report their pools.
    let mut order: Vec<(String, SocketAddr)> = Vec::new();
    let mut pools: HashMap<(String, SocketAddr), [usize; 4]> = HashMap::new();
    for r in &k.last_reports {
        for p in &r.pools {
            let key = (p.upstream.clone(), p.target);
            let e = pools.entry(key.clone()).or_insert_with(|| {
                order.push(key);
                [0; 4]
            });
            e[0] += p.idle;
            e[1] += p.open;
            e[2] += p.outstanding;
            e[3] += p.waiting;
        }
    }
    let rows: Vec<Value> = order
        .iter()
        .map(|key| {
            let [idle, open, outstanding, waiting] = pools.get(key).copied().unwrap_or_default();
            let total = k
                .last
                .as_ref()
                .and_then(|t| t.targets.get(key))
                .copied()
                .unwrap_or_default();
            let mut recent = [0u64; 5];
            for d in &k.window {
                if let Some(t) = d.targets.get(key) {
                    add_arr(&mut recent, t);
                }
            }
            let calls: serde_json::Map<String, Value> = UpstreamOutcome::ALL
                .iter()
                .zip(total)
                .map(|(o, n)| (o.label().to_string(), json!(n)))
                .collect();
            let n: u64 = recent.iter().sum();
            let errors: u64 = recent.iter().skip(1).sum();
            json!({
                "upstream": key.0,
                "target": key.1.to_string(),
                "health": "unknown",
                "pooled_idle": idle,
                "open": open,
                "outstanding": outstanding,
                "queued": waiting,
                "calls": calls,
                "errors": total.iter().skip(1).sum::<u64>(),
                "rps": if secs > 0.0 { n as f64 / secs } else { 0.0 },
                "error_ratio": if n > 0 { errors as f64 / n as f64 } else { 0.0 },
            })
        })
        .collect();
    json!(rows)
}

fn limits_json(k: &Kept, secs: f64) -> Value {
    let Some(last) = &k.last else {
        return json!([]);
    };
    let mut names: Vec<&String> = last.limits.keys().collect();
    names.sort();
    let rows: Vec<Value> = names
        .into_iter()
        .map(|name| {
            let total = last.limits.get(name).copied().unwrap_or_default();
            let mut recent = [0u64; 3];
            for d in &k.window {
                if let Some(l) = d.limits.get(name) {
                    add_arr(&mut recent, l);
                }
            }
            json!({
                "limit": name,
                "admitted": total[0],
                "refused": total[1],
                "waited": total[2],
                "refused_ps": if secs > 0.0 { recent[1] as f64 / secs } else { 0.0 },
            })
        })
        .collect();
    json!(rows)
}

fn shards_json(k: &Kept) -> Value {
    let last = k.samples.back();
    let mut loads: Vec<ShardLoad> = k
        .last_reports
        .iter()
        .map(|r| ShardLoad {
            id: r.id,
            core: r.core,
            driver: r.driver.to_string(),
            connections: r.connections,
            in_flight: r.in_flight,
            requests: r.requests,
            rps: last
                .and_then(|s| s.shards.iter().find(|(i, _)| *i == r.id))
                .and_then(|(_, rps)| *rps),
        })
        .collect();
    loads.sort_by_key(|l| l.id);
    let rows: Vec<Value> = loads
        .into_iter()
        .map(|l| {
            json!({
                "shard": l.id,
                "core": l.core,
                "driver": l.driver,
                "connections": l.connections,
                "in_flight": l.in_flight,
                "requests": if k.metrics_on { Some(l.requests) } else { None },
                "rps": l.rps,
            })
        })
        .collect();
    json!(rows)
}

/// Starts the once-a-second sampler.
pub fn start_sampler(hub: Arc<Hub>) -> Result<(), String> {
    std::thread::Builder::new()
        .name("shardgate-status".into())
        .spawn(move || {
            let mut next = Instant::now();
            loop {
                next += TICK;
                let shards = hub.shards();
                if shards > 0 {
                    let metrics_on = hub.compiled().metrics;
                    let detail = if metrics_on {
                        Detail::Full
                    } else {
                        Detail::Light
                    };
                    let reports = hub.reports(detail);
                    let now = Instant::now();
                    hub.history
                        .sample(reports, shards, metrics_on, now, super::unix_now());
                }
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    // Fell behind (a slow report): start counting again from now.
                    next = now;
                }
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the status sampler: {e}"))
}

/// The page's data.
pub fn json(hub: &Hub) -> Value {
    hub.history.to_json(hub.shards())
}

/// The page's data as compact JSON text (the page asks every second).
pub fn body(hub: &Hub) -> Vec<u8> {
    serde_json::to_vec(&json(hub)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{latency, record};

    fn hist(values_ms: &[u64]) -> Latency {
        let mut h = latency();
        for v in values_ms {
            record(&mut h, Duration::from_millis(*v));
        }
        h
    }

    #[test]
    fn diff_of_cumulative_histograms_is_the_interval() {
        let before = hist(&[1, 1, 5]);
        let after = hist(&[1, 1, 5, 5, 5, 100]);
        let d = diff(&sparse(&after), &sparse(&before));
        assert_eq!(d.iter().map(|(_, n)| n).sum::<u64>(), 3);
        let p50 = sparse_quantile(&d, 0.5).unwrap();
        let p99 = sparse_quantile(&d, 0.99).unwrap();
        assert!((4900..=5100).contains(&p50), "p50 {p50}");
        assert!((99_000..=101_000).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn quantiles_of_nothing_are_none() {
        assert_eq!(sparse_quantile(&Vec::new(), 0.5), None);
        let h = hist(&[3]);
        assert_eq!(diff(&sparse(&h), &sparse(&h)), Vec::new());
    }

    #[test]
    fn quantile_walks_ranks() {
        // 90 fast, 10 slow: p50 fast, p99 slow, p90 still fast.
        let buckets: Vec<(u64, u64)> = vec![(100, 90), (9000, 10)];
        assert_eq!(sparse_quantile(&buckets, 0.5), Some(100));
        assert_eq!(sparse_quantile(&buckets, 0.9), Some(100));
        assert_eq!(sparse_quantile(&buckets, 0.99), Some(9000));
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        // No absolute or protocol-relative URL, no external script, style or font.
        let outside = [
            "http:",
            "https:",
            "\"//",
            "'//",
            "(//",
            "<script src",
            "stylesheet",
            "@import",
            "url(",
        ];
        for o in outside {
            assert!(!PAGE.contains(o), "the page refers to {o}");
        }
        assert!(PAGE.contains("fetch(\"/api/status\""));
    }

    #[test]
    fn merge_adds_buckets() {
        let a = sparse(&hist(&[1, 5]));
        let b = sparse(&hist(&[5, 9, 9]));
        let m = merge(&a, &b);
        assert_eq!(m, sparse(&hist(&[1, 5, 5, 9, 9])));
        assert_eq!(merge(&Vec::new(), &b), b);
        assert_eq!(merge(&a, &Vec::new()), a);
    }

    #[test]
    fn delta_keeps_only_what_moved() {
        let mut prev = Totals::default();
        prev.routes.insert(
            "a".into(),
            RouteCounts {
                classes: [0, 5, 0, 0, 0],
                hist: sparse(&hist(&[1; 5])),
            },
        );
        prev.limits.insert("l".into(), [4, 1, 0]);
        let mut cur = prev.clone();
        cur.routes.insert(
            "b".into(),
            RouteCounts {
                classes: [0, 0, 0, 2, 0],
                hist: sparse(&hist(&[2, 2])),
            },
        );
        cur.limits.insert("l".into(), [4, 3, 0]);
        let d = delta(&cur, &prev, 1.0);
        assert_eq!(d.routes.len(), 1);
        assert_eq!(d.routes["b"].classes, [0, 0, 0, 2, 0]);
        assert_eq!(d.limits["l"], [0, 2, 0]);
    }

    fn report(id: usize, m: &crate::metrics::ShardMetrics) -> ShardReport {
        ShardReport {
            id,
            core: Some(id),
            driver: crate::shard::Driver::Epoll,
            generation: 1,
            connections: 1,
            in_flight: 0,
            requests: m.requests(),
            listeners: Vec::new(),
            pools: Vec::new(),
            ratelimit_keys: 0,
            quota_sent: 0,
            quota_received: 0,
            free_buffers: 0,
            held_reads: 0,
            metrics: Some(std::sync::Arc::new(m.snapshot())),
            breakers: Vec::new(),
            resilience: Vec::new(),
            cache: Vec::new(),
            websocket_tunnels: 0,
            http2_connections: 0,
            idle_connections: 0,
            http2_streams_total: 0,
            websocket_tunnels_total: 0,
            edge: Default::default(),
        }
    }

    fn shard() -> crate::metrics::ShardMetrics {
        let mut m = crate::metrics::ShardMetrics::default();
        m.configure(
            true,
            &crate::metrics::Names {
                routes: vec!["api"],
                upstreams: Vec::new(),
                authenticators: Vec::new(),
                limits: vec!["tiny"],
                parts: vec![Vec::new()],
            },
        );
        m
    }

    fn get(m: &mut crate::metrics::ShardMetrics, n: usize, status: u16, ms: u64) {
        for _ in 0..n {
            m.request(
                0,
                Some(0),
                crate::metrics::Method::Get,
                status,
                Duration::from_millis(ms),
            );
        }
    }

    #[test]
    fn samples_turn_cumulative_reports_into_rates() {
        let h = History::default();
        let (mut a, mut b) = (shard(), shard());
        get(&mut a, 100, 200, 1);
        let t0 = Instant::now();
        h.sample(vec![report(0, &a), report(1, &b)], 2, true, t0, 1000.0);
        // One second: 20 fast 200s on shard 0, 10 slow 404s on shard 1, and a refusal.
        get(&mut a, 20, 200, 2);
        get(&mut b, 10, 404, 50);
        b.limit(0, crate::metrics::LimitDecision::Refused);
        let t1 = t0 + Duration::from_secs(1);
        h.sample(vec![report(0, &a), report(1, &b)], 2, true, t1, 1001.0);
        let j = h.to_json(2);
        assert_eq!(j["history"]["rps"], json!([null, 30.0]));
        assert_eq!(j["history"]["refused_ps"], json!([0.0, 1.0]));
        assert_eq!(j["history"]["mix"][1], json!([0, 20, 0, 10, 0]));
        assert_eq!(j["history"]["shard_rps"]["0"], json!([null, 20.0]));
        assert_eq!(j["history"]["shard_rps"]["1"], json!([null, 10.0]));
        let p50 = j["history"]["p50_ms"][1].as_f64().unwrap();
        let p99 = j["history"]["p99_ms"][1].as_f64().unwrap();
        assert!((1.9..2.1).contains(&p50), "p50 {p50}");
        assert!((49.0..51.0).contains(&p99), "p99 {p99}");
        let api = &j["routes"][0];
        assert_eq!(api["route"], json!("api"));
        assert_eq!(api["requests"], json!(130));
        assert_eq!(api["window_requests"], json!(30));
        assert_eq!(api["total_4xx"], json!(10));
        assert!((api["ratio_4xx"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(j["limits"][0]["refused"], json!(1));
        assert_eq!(j["status_mix"][3]["recent"], json!(10));
        assert_eq!(j["status_mix"][1]["total"], json!(120));
        assert_eq!(j["shards"].as_array().map(Vec::len), Some(2));

        // A shard that does not answer leaves a gap; the next full sample
        // spreads what happened over both seconds.
        get(&mut a, 40, 200, 1);
        h.sample(vec![report(0, &a)], 2, true, t1 + TICK, 1002.0);
        h.sample(
            vec![report(0, &a), report(1, &b)],
            2,
            true,
            t1 + 2 * TICK,
            1003.0,
        );
        let j = h.to_json(2);
        assert_eq!(j["history"]["rps"], json!([null, 30.0, null, 20.0]));
        assert_eq!(j["status_mix"][1]["recent"], json!(60));
    }

    #[test]
    fn history_is_bounded() {
        let h = History::default();
        let m = shard();
        let t0 = Instant::now();
        for i in 0..(HISTORY + 50) {
            let at = t0 + Duration::from_secs(i as u64);
            h.sample(vec![report(0, &m)], 1, true, at, i as f64);
        }
        let j = h.to_json(1);
        assert_eq!(j["history"]["t"].as_array().map(Vec::len), Some(HISTORY));
        assert_eq!(j["history"]["t"][0], json!(50.0));
        assert!(h.with(|k| k.window.len()) <= WINDOW);
    }

    #[test]
    fn metrics_off_keeps_shard_load_only() {
        let h = History::default();
        let mut r = report(3, &shard());
        r.metrics = None;
        h.sample(vec![r], 1, false, Instant::now(), 5.0);
        let j = h.to_json(1);
        assert_eq!(j["metrics"], json!(false));
        assert_eq!(j["history"]["rps"], json!([null]));
        assert_eq!(j["routes"], json!([]));
        assert_eq!(j["shards"][0]["shard"], json!(3));
        assert_eq!(j["shards"][0]["connections"], json!(1));
    }
}
