//! Helpers shared by the target-health and balancing tests: backends whose
//! answers (status, health status, delay) can be switched while they run,
//! and readers of the admin listener's `/upstreams` and `/metrics`.
#![allow(dead_code)]

use crate::common::*;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// What a switchable backend answers.
pub struct Switch {
    /// Status of ordinary requests.
    pub status: AtomicU16,
    /// Status of `GET /health`.
    pub health: AtomicU16,
    /// Delay before answering ordinary requests, milliseconds.
    pub delay_ms: AtomicU64,
}

impl Switch {
    pub fn set_status(&self, s: u16) {
        self.status.store(s, Ordering::SeqCst);
    }
    pub fn set_health(&self, s: u16) {
        self.health.store(s, Ordering::SeqCst);
    }
    pub fn set_delay_ms(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }
}

/// A backend answering ordinary requests with its `name` as the body.
pub struct Named {
    pub name: String,
    pub backend: Backend,
    pub switch: Arc<Switch>,
}

impl Named {
    pub fn start(name: &str) -> Named {
        let switch = Arc::new(Switch {
            status: AtomicU16::new(200),
            health: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
        });
        let (n, sw) = (name.to_string(), switch.clone());
        let backend = Backend::start(move |r| {
            if r.target.starts_with("/health") {
                return Response::ok("ok").status(sw.health.load(Ordering::SeqCst));
            }
            Response::ok(n.clone())
                .status(sw.status.load(Ordering::SeqCst))
                .delay(Duration::from_millis(sw.delay_ms.load(Ordering::SeqCst)))
        });
        Named {
            name: name.to_string(),
            backend,
            switch,
        }
    }

    pub fn addr(&self) -> String {
        self.backend.addr()
    }

    /// Ordinary (non-probe) requests received so far.
    pub fn served(&self) -> usize {
        self.backend
            .requests()
            .iter()
            .filter(|r| !r.target.starts_with("/health"))
            .count()
    }

    /// Probe requests received so far.
    pub fn probes(&self) -> usize {
        self.backend
            .requests()
            .iter()
            .filter(|r| r.target.starts_with("/health"))
            .count()
    }
}

/// A gateway config with two shards, an admin listener on `$PORT2`, the
/// given upstreams and one catch-all route per upstream (`/NAME/...`).
pub fn gateway(upstreams: &str, names: &[&str]) -> String {
    gateway_with_shards(2, upstreams, names)
}

/// [`gateway`] with `shards` shards.
pub fn gateway_with_shards(shards: usize, upstreams: &str, names: &[&str]) -> String {
    let routes: String = names
        .iter()
        .map(|n| {
            format!("        Route(name: {n:?}, match: Match(path_prefix: \"/{n}\"), upstream: {n:?}),\n")
        })
        .collect();
    format!(
        "Gateway(\n    shards: Count({shards}),\n    listeners: [Listener(name: \"main\", bind: \"127.0.0.1:$PORT\")],\n    admin: Some(Admin(bind: \"127.0.0.1:$PORT2\")),\n    limits_http: {LIMITS},\n    shutdown_grace_ms: 2000,\n    upstreams: {{\n{upstreams}    }},\n    routes: [\n{routes}    ],\n)\n"
    )
}

/// `/upstreams` as JSON.
pub fn upstreams(gw: &Gateway) -> serde_json::Value {
    let r = get(gw.port2, "/upstreams");
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_str(&r.text()).expect("/upstreams is JSON")
}

/// The `health` of `target` of `upstream` in `/upstreams`.
pub fn health(gw: &Gateway, upstream: &str, target: &str) -> String {
    let v = upstreams(gw);
    v["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| u["name"] == upstream)
        .flat_map(|u| u["targets"].as_array().cloned().unwrap_or_default())
        .find(|t| t["target"] == target)
        .and_then(|t| t["health"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Waits until `health` says `want`; false when it did not within `wait`.
pub fn wait_health(gw: &Gateway, upstream: &str, target: &str, want: &str, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if health(gw, upstream, target) == want {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// One sample of `/metrics`, by its full name with labels.
pub fn metric(gw: &Gateway, sample: &str) -> Option<f64> {
    let r = get(gw.port2, "/metrics");
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

/// Sends `n` GETs to `path`, each on a new connection (so the kernel spreads
/// them over the shards); returns the bodies of the 200 answers and the
/// statuses of the others.
pub fn spread(port: u16, path: &str, n: usize) -> (Vec<String>, Vec<u16>) {
    let (mut ok, mut other) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let r = get(port, path);
        if r.status == 200 {
            ok.push(r.text());
        } else {
            other.push(r.status);
        }
    }
    (ok, other)
}
