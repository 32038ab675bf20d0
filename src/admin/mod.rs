//! The admin listener: a small HTTP/1.1 server on threads of its own, apart
//! from every public listener and from the shards. It answers from the
//! control side; what only shards know it asks them for by message
//! ([`crate::shard::Control::Report`]), and a shard answers between
//! requests, so a slow scrape never holds a shard up.
//!
//! Routes: `/metrics`, `/health`, `/ready`, `/config`, `/upstreams`,
//! `/shards`, `/ratelimits`, and the status page (`/`, `/api/status`);
//! `POST /cache/purge?key=..|prefix=..[&route=..]` removes response-cache entries.

mod http;
pub mod status;

use crate::compiled::Compiled;
use crate::metrics::prometheus::{self, Process};
use crate::metrics::Snapshot;
use crate::shard::{Asker, Detail, ShardReport};
use serde_json::{json, Value};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long an admin request waits for the shards' reports.
const ASK_WAIT: Duration = Duration::from_millis(500);

/// What the admin side knows that no shard holds.
pub struct Hub {
    /// Set once the shards run.
    asker: std::sync::OnceLock<Asker>,
    state: Mutex<HubState>,
    start_time_s: f64,
    /// The status page's history (sampled once a second).
    pub history: status::History,
    /// Each shard's metrics as last reported, brought up to date by
    /// reports of what changed (held while shards are asked, so one
    /// full-report request runs at a time).
    metrics: Mutex<Vec<Option<Arc<Snapshot>>>>,
}

#[derive(Clone)]
struct HubState {
    compiled: Arc<Compiled>,
    draining: bool,
    reloads_ok: u64,
    reloads_failed: u64,
    last_reload_ok_s: f64,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Hub {
    /// A hub for `compiled`, before the shards start.
    pub fn new(compiled: Arc<Compiled>) -> Arc<Hub> {
        let now = unix_now();
        Arc::new(Hub {
            asker: std::sync::OnceLock::new(),
            state: Mutex::new(HubState {
                compiled,
                draining: false,
                reloads_ok: 0,
                reloads_failed: 0,
                last_reload_ok_s: now,
            }),
            start_time_s: now,
            history: status::History::default(),
            metrics: Mutex::new(Vec::new()),
        })
    }

    fn state(&self) -> HubState {
        match self.state.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut HubState)) {
        match self.state.lock() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// The shards run: from now on they are asked for reports.
    pub fn shards_started(&self, asker: Asker) {
        let _ = self.asker.set(asker);
    }

    /// A reload succeeded: `compiled` is now sent to the shards.
    pub fn reloaded(&self, compiled: Arc<Compiled>) {
        self.update(|s| {
            s.compiled = compiled;
            s.reloads_ok += 1;
            s.last_reload_ok_s = unix_now();
        });
    }

    /// A reload failed; the running config stays.
    pub fn reload_failed(&self) {
        self.update(|s| s.reloads_failed += 1);
    }

    /// The process is draining (SIGTERM): `/ready` answers 503 from now on.
    pub fn draining(&self) {
        self.update(|s| s.draining = true);
    }

    /// Every shard's report (those that answer within [`ASK_WAIT`]). A
    /// full report's metrics are complete, but shards are asked only for
    /// what changed since their previous report (see [`Detail::Since`]).
    pub fn reports(&self, detail: Detail) -> Vec<ShardReport> {
        let Some(asker) = self.asker.get() else {
            return Vec::new();
        };
        if detail != Detail::Full {
            return asker.ask(detail, ASK_WAIT);
        }
        let mut cache = match self.metrics.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        cache.resize(asker.shards(), None);
        let mut reports = asker.ask_each(
            |id| match cache.get(id).and_then(Option::as_ref) {
                Some(s) => Detail::Since {
                    instance: s.instance,
                    since: s.next_since,
                },
                // A run of the shard never numbered 0: a complete report.
                None => Detail::Since {
                    instance: 0,
                    since: 0,
                },
            },
            ASK_WAIT,
        );
        for r in &mut reports {
            let (Some(newer), Some(slot)) = (r.metrics.take(), cache.get_mut(r.id)) else {
                continue;
            };
            let newer = Arc::unwrap_or_clone(newer);
            match slot {
                // Not copied unless an earlier answer is still being read.
                Some(cached) => Arc::make_mut(cached).absorb(newer),
                None => *slot = Some(Arc::new(newer)),
            }
            r.metrics = slot.clone();
        }
        reports
    }

    /// How many shards run (0 before they start).
    pub fn shards(&self) -> usize {
        self.asker.get().map_or(0, Asker::shards)
    }

    /// The running config.
    pub fn compiled(&self) -> Arc<Compiled> {
        self.state().compiled
    }

    fn process(&self, s: &HubState) -> Process {
        Process {
            version: env!("CARGO_PKG_VERSION"),
            start_time_s: self.start_time_s,
            reloads_ok: s.reloads_ok,
            reloads_failed: s.reloads_failed,
            last_reload_ok_s: s.last_reload_ok_s,
            resident_bytes: resident_bytes(),
            open_fds: open_fds(),
            listeners: s
                .compiled
                .listeners
                .iter()
                .map(|l| l.name.clone())
                .collect(),
            spans_exported: crate::observe::otlp::exporter_counts().0,
            spans_failed: crate::observe::otlp::exporter_counts().1,
        }
    }
}

/// Resident memory of this process, bytes (0 when unknown).
pub fn resident_bytes() -> u64 {
    let page = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

fn open_fds() -> u64 {
    crate::shard::open_descriptors()
}

/// Binds the admin listener (before the shards start, so a taken port
/// fails the start).
pub fn bind(compiled: &Compiled) -> Result<Option<TcpListener>, String> {
    let Some(a) = &compiled.admin else {
        return Ok(None);
    };
    TcpListener::bind(a.addr)
        .map(Some)
        .map_err(|e| format!("cannot bind the admin listener {}: {e}", a.addr))
}

/// Serves the admin listener on its own threads until the process exits.
pub fn start(listener: TcpListener, hub: Arc<Hub>) -> Result<(), String> {
    status::start_sampler(hub.clone())?;
    std::thread::Builder::new()
        .name("shardgate-admin".into())
        .spawn(move || http::serve(listener, hub))
        .map(|_| ())
        .map_err(|e| format!("cannot start the admin thread: {e}"))
}

/// An admin response.
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
}

impl Answer {
    fn json(status: u16, v: &Value) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: serde_json::to_vec_pretty(v).unwrap_or_default(),
        }
    }

    fn text(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            status,
            content_type,
            body: body.into(),
        }
    }
}

/// Answers one admin request (`GET` or `HEAD` of `path`).
pub fn route(hub: &Hub, path: &str) -> Answer {
    let path = path.split('?').next().unwrap_or(path);
    match path {
        "/health" => Answer::json(200, &json!({"status": "alive"})),
        "/ready" => ready(hub),
        "/metrics" => metrics(hub),
        "/config" => config(hub),
        "/shards" => shards(hub),
        "/upstreams" => upstreams(hub),
        "/ratelimits" => ratelimits(hub),
        "/" | "/index.html" => Answer::text(200, "text/html; charset=utf-8", status::PAGE),
        "/api/status" => Answer::text(200, "application/json", status::body(hub)),
        _ => Answer::json(
            404,
            &json!({"error": "no such admin endpoint", "endpoints": ["/metrics", "/health", "/ready", "/config", "/upstreams", "/shards", "/ratelimits", "/", "/api/status"]}),
        ),
    }
}

/// `POST /cache/purge?key=/path%3Fq%3D1` or `?prefix=/path/` (percent-encoded),
/// optionally `&route=name`: every shard removes the matching entries at its
/// next control tick; the answer counts them.
pub fn purge(hub: &Hub, target: &str) -> Answer {
    use crate::cache::{Purge, PurgeTarget};
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let (mut route, mut key, mut prefix) = (None, None, None);
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = crate::aggregate::template::percent_decode(value, true);
        match name {
            "route" => route = Some(value),
            "key" => key = Some(value),
            "prefix" => prefix = Some(value),
            _ => {}
        }
    }
    let target = match (key, prefix) {
        (Some(k), None) if k.starts_with('/') => PurgeTarget::Key(k),
        (None, Some(p)) if p.starts_with('/') => PurgeTarget::Prefix(p),
        _ => {
            return Answer::json(
                400,
                &json!({"error": "give one of key or prefix, a path starting with '/' (percent-encoded)"}),
            )
        }
    };
    let Some(asker) = hub.asker.get() else {
        return Answer::json(503, &json!({"error": "the shards are not running"}));
    };
    let purge = Purge { route, target };
    let (answered, removed) = asker.purge_cache(&purge, ASK_WAIT);
    let status = if answered == asker.shards() { 200 } else { 504 };
    Answer::json(
        status,
        &json!({"purged": removed, "shards": answered, "shards_total": asker.shards()}),
    )
}

fn ready(hub: &Hub) -> Answer {
    let s = hub.state();
    if s.draining {
        return Answer::json(503, &json!({"ready": false, "reason": "draining"}));
    }
    if hub.shards() == 0 {
        return Answer::json(503, &json!({"ready": false, "reason": "starting"}));
    }
    let reports = hub.reports(Detail::Light);
    let current = s.compiled.generation;
    let behind: Vec<usize> = reports
        .iter()
        .filter(|r| r.generation != current)
        .map(|r| r.id)
        .collect();
    if reports.len() < hub.shards() {
        return Answer::json(
            503,
            &json!({"ready": false, "reason": "a shard did not answer"}),
        );
    }
    if !behind.is_empty() {
        return Answer::json(
            503,
            &json!({"ready": false, "reason": "shards still run the previous config", "shards": behind}),
        );
    }
    Answer::json(200, &json!({"ready": true, "shards": reports.len()}))
}

fn metrics(hub: &Hub) -> Answer {
    let s = hub.state();
    let on = s.compiled.metrics;
    let reports = hub.reports(if on { Detail::Full } else { Detail::Light });
    let merged = on.then(|| Snapshot::merged(reports.iter().filter_map(|r| r.metrics.as_deref())));
    let bounds = s.compiled.admin.as_ref().map_or(&[][..], |a| &a.buckets_s);
    let body = prometheus::render(merged.as_ref(), &reports, &hub.process(&s), bounds);
    Answer::text(200, "text/plain; version=0.0.4; charset=utf-8", body)
}

fn config(hub: &Hub) -> Answer {
    let s = hub.state();
    match &s.compiled.effective {
        Some(text) => Answer::text(200, "application/json", text.as_bytes().to_vec()),
        None => Answer::json(500, &json!({"error": "the effective config was not kept"})),
    }
}

fn shards(hub: &Hub) -> Answer {
    let reports = hub.reports(Detail::Light);
    let shards: Vec<Value> = reports
        .iter()
        .map(|r| {
            json!({
                "shard": r.id,
                "core": r.core,
                "driver": r.driver.to_string(),
                "config_generation": r.generation,
                "connections": r.connections,
                "http2_connections": r.http2_connections,
                "idle_connections": r.idle_connections,
                "http2_streams_total": r.http2_streams_total,
                "in_flight": r.in_flight,
                "requests": r.requests,
                "free_buffers": r.free_buffers,
                "held_reads": r.held_reads,
                "listeners": r.listeners.iter().map(|l| json!({
                    "name": l.name, "open": l.open, "admitted": l.admitted,
                    "refused": l.refused, "accept_errors": l.accept_errors,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Answer::json(
        200,
        &json!({
            "shards": shards,
            "process": {"resident_bytes": resident_bytes(), "open_fds": open_fds()},
        }),
    )
}

fn upstreams(hub: &Hub) -> Answer {
    let compiled = hub.compiled();
    let reports = hub.reports(Detail::Full);
    let merged = Snapshot::merged(reports.iter().filter_map(|r| r.metrics.as_deref()));
    let breakers = crate::resilience::breaker::merge_reports(reports.iter().map(|r| &r.breakers));
    let ups: Vec<Value> = compiled
        .upstreams
        .iter()
        .map(|u| {
            let targets: Vec<Value> = u
                .targets
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    let pools = reports
                        .iter()
                        .flat_map(|r| &r.pools)
                        .filter(|p| p.upstream == u.name && p.target == t);
                    let (mut idle, mut open, mut outstanding, mut waiting) = (0, 0, 0, 0);
                    // Every shard holds the same host-wide view; the first answer tells.
                    let (mut health, mut ejections) = ("unknown", 0);
                    for p in pools {
                        if health == "unknown" {
                            (health, ejections) = (p.health, p.ejections);
                        }
                        idle += p.idle;
                        open += p.open;
                        outstanding += p.outstanding;
                        waiting += p.waiting;
                    }
                    let calls = merged
                        .targets
                        .iter()
                        .find(|((n, a), _)| *n == u.name && *a == t)
                        .map(|(_, s)| s.clone())
                        .unwrap_or_default();
                    let outcomes: serde_json::Map<String, Value> =
                        crate::metrics::UpstreamOutcome::ALL
                            .iter()
                            .zip(calls.outcomes)
                            .map(|(o, n)| (o.label().to_string(), json!(n)))
                            .collect();
                    json!({
                        "target": t.to_string(),
                        "pooled_idle": idle,
                        "open": open,
                        "outstanding": outstanding,
                        "queued": waiting,
                        "calls": outcomes,
                        "errors": calls.outcomes.iter().skip(1).sum::<u64>(),
                        "health": health,
                        "ejections": ejections,
                        "weight": u.plan.weight(i),
                    })
                })
                .collect();
            let breaker = breakers.iter().find(|b| b.upstream == u.name).map(|b| {
                json!({
                    "state": b.phase.label(),
                    "open_left_s": b.open_left_ns.div_ceil(1_000_000_000),
                    "transitions": {"open": b.transitions[0], "half_open": b.transitions[1], "closed": b.transitions[2]},
                })
            });
            json!({"name": u.name, "targets": targets, "circuit_breaker": breaker})
        })
        .collect();
    Answer::json(200, &json!({"upstreams": ups}))
}

fn ratelimits(hub: &Hub) -> Answer {
    let reports = hub.reports(Detail::Full);
    let per_shard: Vec<Value> = reports
        .iter()
        .map(|r| {
            json!({
                "shard": r.id,
                "keys": r.ratelimit_keys,
                "quota_messages_sent": r.quota_sent,
                "quota_messages_received": r.quota_received,
            })
        })
        .collect();
    let merged = Snapshot::merged(reports.iter().filter_map(|r| r.metrics.as_deref()));
    let limits: Vec<Value> = merged
        .limits
        .iter()
        .map(|(name, d)| json!({"limit": name, "admitted": d[0], "refused": d[1], "waited": d[2]}))
        .collect();
    Answer::json(200, &json!({"shards": per_shard, "limits": limits}))
}
