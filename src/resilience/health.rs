//! Host-wide target health: one prober and one keeper per process, on the
//! control side, never on a shard.
//!
//! - The prober thread sends `GET path` to every target of every upstream
//!   with a `health_check` (blocking `std::net` with timeouts; the probes of
//!   one round run side by side) and reports each result to the keeper.
//! - The keeper thread owns the truth: each target's probe streaks and
//!   ejection record. Shards report outlier streaks to it; it decides
//!   (thresholds, `max_ejection_percent`, ejection lengths), re-admits when an
//!   ejection ends, and after every change sends every shard the whole
//!   picture ([`HealthView`]) as a control message. Shards read their copy
//!   on the request path without any lock.
//! - A reload hands both threads the new config: probing follows the new
//!   targets, and the records of targets that stayed (same upstream name and
//!   address) are kept.
//!
//! Targets start healthy: a gateway that starts (or reloads) before its first
//! probes does not refuse traffic.

use super::outlier::{self, Ejection};
use crate::compiled::Compiled;
use crate::config::HealthCheck;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The state of one target as the balancer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetHealth {
    /// In the pool.
    #[default]
    Healthy,
    /// Failed its active health checks.
    Unhealthy,
    /// Ejected by outlier detection, for a while.
    Ejected,
}

impl TargetHealth {
    /// The word shown in `/upstreams`.
    pub fn label(self) -> &'static str {
        match self {
            TargetHealth::Healthy => "healthy",
            TargetHealth::Unhealthy => "unhealthy",
            TargetHealth::Ejected => "ejected",
        }
    }
}

/// One target in a [`HealthView`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetView {
    /// Upstream name.
    pub upstream: String,
    /// Target address.
    pub target: SocketAddr,
    /// Its state.
    pub health: TargetHealth,
    /// Times it was ejected since the process started.
    pub ejections: u64,
}

/// The keeper's picture of every target, sent whole to every shard after
/// each change (targets it does not list are healthy).
#[derive(Debug, Clone, Default)]
pub struct HealthView {
    /// Every target of every upstream with health checks or outlier detection.
    pub targets: Vec<TargetView>,
}

/// What the keeper is told.
pub enum Report {
    /// The running config changed (also given to the prober).
    Config(Arc<Compiled>),
    /// A shard saw a target of `upstream` fail enough times in a row.
    Outlier {
        /// Upstream name.
        upstream: String,
        /// The target.
        target: SocketAddr,
    },
    /// A probe's result.
    Probe {
        /// Upstream name.
        upstream: String,
        /// The target.
        target: SocketAddr,
        /// It answered with the expected status in time.
        passed: bool,
    },
}

/// Probe streaks of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probes {
    /// Currently considered healthy by the active checks.
    pub healthy: bool,
    /// Passing probes in a row.
    pub passed: u32,
    /// Failing probes in a row.
    pub failed: u32,
}

impl Default for Probes {
    fn default() -> Probes {
        Probes {
            healthy: true,
            passed: 0,
            failed: 0,
        }
    }
}

impl Probes {
    /// Counts one probe; true when the target's state changed.
    pub fn record(&mut self, passed: bool, hc: &HealthCheck) -> bool {
        if passed {
            self.passed = self.passed.saturating_add(1);
            self.failed = 0;
            if !self.healthy && self.passed >= hc.healthy_threshold.max(1) {
                self.healthy = true;
                return true;
            }
        } else {
            self.failed = self.failed.saturating_add(1);
            self.passed = 0;
            if self.healthy && self.failed >= hc.unhealthy_threshold.max(1) {
                self.healthy = false;
                return true;
            }
        }
        false
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Record {
    probes: Probes,
    ejection: Ejection,
}

/// The keeper's state: records per upstream name, in target order.
#[derive(Default)]
struct Keeper {
    compiled: Option<Arc<Compiled>>,
    records: HashMap<String, Vec<(SocketAddr, Record)>>,
}

impl Keeper {
    fn configure(&mut self, c: Arc<Compiled>) {
        let mut old = std::mem::take(&mut self.records);
        for u in &c.upstreams {
            if u.health_check.is_none() && u.outlier.is_none() {
                continue;
            }
            let before = old.remove(&u.name).unwrap_or_default();
            let recs = u
                .targets
                .iter()
                .map(|&t| {
                    let kept = before.iter().find(|(a, _)| *a == t).map(|(_, r)| *r);
                    let mut r = kept.unwrap_or_default();
                    if u.health_check.is_none() {
                        r.probes = Probes::default();
                    }
                    if u.outlier.is_none() {
                        r.ejection.until = None;
                    }
                    (t, r)
                })
                .collect();
            self.records.insert(u.name.clone(), recs);
        }
        self.compiled = Some(c);
    }

    /// Applies one report at `now`; true when a target's state changed.
    fn apply(&mut self, report: Report, now: Instant) -> bool {
        let Some(c) = self.compiled.clone() else {
            return false;
        };
        match report {
            Report::Config(new) => {
                self.configure(new);
                true
            }
            Report::Outlier { upstream, target } => {
                let od = c
                    .upstreams
                    .iter()
                    .find(|u| u.name == upstream)
                    .and_then(|u| u.outlier.as_ref());
                let (Some(od), Some(recs)) = (od, self.records.get_mut(&upstream)) else {
                    return false;
                };
                let Some(i) = recs.iter().position(|(a, _)| *a == target) else {
                    return false;
                };
                let mut pool: Vec<Ejection> = recs.iter().map(|(_, r)| r.ejection).collect();
                let ejected = outlier::eject(&mut pool, i, od, now);
                for ((_, r), e) in recs.iter_mut().zip(pool) {
                    r.ejection = e;
                }
                if ejected {
                    eprintln!("shardgate: upstream {upstream}: target {target} ejected (outlier)");
                }
                ejected
            }
            Report::Probe {
                upstream,
                target,
                passed,
            } => {
                let hc = c
                    .upstreams
                    .iter()
                    .find(|u| u.name == upstream)
                    .and_then(|u| u.health_check.as_ref());
                let rec = self
                    .records
                    .get_mut(&upstream)
                    .and_then(|recs| recs.iter_mut().find(|(a, _)| *a == target));
                let (Some(hc), Some((_, rec))) = (hc, rec) else {
                    return false;
                };
                let changed = rec.probes.record(passed, hc);
                if changed {
                    let state = if rec.probes.healthy {
                        "healthy"
                    } else {
                        "unhealthy"
                    };
                    eprintln!("shardgate: upstream {upstream}: target {target} is {state}");
                }
                changed
            }
        }
    }

    /// Ends the ejections that are over; true when any was.
    fn readmit(&mut self, now: Instant) -> bool {
        let mut any = false;
        for (name, recs) in &mut self.records {
            for (addr, r) in recs.iter_mut() {
                if outlier::readmit(std::slice::from_mut(&mut r.ejection), now) {
                    any = true;
                    eprintln!("shardgate: upstream {name}: target {addr} re-admitted");
                }
            }
        }
        any
    }

    /// The earliest end of a running ejection.
    fn next_readmission(&self) -> Option<Instant> {
        self.records
            .values()
            .flatten()
            .filter_map(|(_, r)| r.ejection.until)
            .min()
    }

    fn view(&self) -> HealthView {
        let mut targets = Vec::new();
        for (name, recs) in &self.records {
            for (addr, r) in recs {
                let health = if r.ejection.until.is_some() {
                    TargetHealth::Ejected
                } else if !r.probes.healthy {
                    TargetHealth::Unhealthy
                } else {
                    TargetHealth::Healthy
                };
                targets.push(TargetView {
                    upstream: name.clone(),
                    target: *addr,
                    health,
                    ejections: r.ejection.times,
                });
            }
        }
        HealthView { targets }
    }
}

/// Starts the keeper and the prober for `compiled`; every view goes to
/// `publish`. Returns where shards and reloads report. Both threads end
/// once every sender of the returned channel is gone.
pub fn start(
    compiled: Arc<Compiled>,
    publish: impl Fn(Arc<HealthView>) + Send + 'static,
) -> Result<Sender<Report>, String> {
    let (tx, rx) = crossbeam_channel::unbounded::<Report>();
    let (probe_cfg_tx, probe_cfg_rx) = crossbeam_channel::unbounded::<Arc<Compiled>>();
    let results = tx.clone();
    let first = compiled.clone();
    std::thread::Builder::new()
        .name("shardgate-health".into())
        .spawn(move || prober(first, probe_cfg_rx, results))
        .map_err(|e| format!("cannot start the health prober: {e}"))?;
    std::thread::Builder::new()
        .name("shardgate-targets".into())
        .spawn(move || keeper(compiled, rx, probe_cfg_tx, publish))
        .map_err(|e| format!("cannot start the target keeper: {e}"))?;
    Ok(tx)
}

fn keeper(
    compiled: Arc<Compiled>,
    rx: Receiver<Report>,
    prober: Sender<Arc<Compiled>>,
    publish: impl Fn(Arc<HealthView>),
) {
    let mut k = Keeper::default();
    k.configure(compiled);
    loop {
        let wait = k
            .next_readmission()
            .map_or(Duration::from_secs(1), |t| {
                t.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_secs(1));
        let mut changed = match rx.recv_timeout(wait) {
            Ok(Report::Config(c)) => {
                let _ = prober.send(c.clone());
                k.configure(c);
                true
            }
            Ok(r) => k.apply(r, Instant::now()),
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Take in whatever else is queued before publishing once.
        while let Ok(r) = rx.try_recv() {
            changed |= match r {
                Report::Config(c) => {
                    let _ = prober.send(c.clone());
                    k.configure(c);
                    true
                }
                r => k.apply(r, Instant::now()),
            };
        }
        changed |= k.readmit(Instant::now());
        if changed {
            publish(Arc::new(k.view()));
        }
    }
}

/// One target to probe, and when.
struct Due {
    upstream: String,
    target: SocketAddr,
    check: HealthCheck,
    next: Instant,
    /// Probe over HTTP/2 (`protocol: Http2`), with TLS when the upstream has it.
    h2: Option<Option<crate::h2::EndpointTls>>,
}

fn schedule(c: &Compiled, before: &[Due], now: Instant) -> Vec<Due> {
    let mut out = Vec::new();
    for u in &c.upstreams {
        let Some(hc) = &u.health_check else { continue };
        for &t in &u.targets {
            // A target already scheduled keeps its turn; a new one is probed at once.
            let next = before
                .iter()
                .find(|d| d.upstream == u.name && d.target == t && d.check == *hc)
                .map_or(now, |d| d.next);
            let h2 = (u.protocol == crate::config::UpstreamProtocol::Http2).then(|| {
                let tls = u.tls.as_ref()?;
                let i = u.targets.iter().position(|a| *a == t).unwrap_or(0);
                let name = tls.names.get(i).or(tls.names.first())?.clone();
                Some(crate::h2::EndpointTls {
                    config: tls.config.clone(),
                    name,
                })
            });
            out.push(Due {
                upstream: u.name.clone(),
                target: t,
                check: hc.clone(),
                next,
                h2,
            });
        }
    }
    out
}

fn prober(compiled: Arc<Compiled>, configs: Receiver<Arc<Compiled>>, results: Sender<Report>) {
    let mut due = schedule(&compiled, &[], Instant::now());
    drop(compiled);
    loop {
        let now = Instant::now();
        let wait = due
            .iter()
            .map(|d| d.next.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        match configs.recv_timeout(wait) {
            Ok(c) => {
                due = schedule(&c, &due, Instant::now());
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let ready: Vec<&mut Due> = due.iter_mut().filter(|d| d.next <= now).collect();
        if ready.is_empty() {
            continue;
        }
        let outcomes: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = ready
                .iter()
                .map(|d| {
                    let (t, hc, h2) = (d.target, &d.check, &d.h2);
                    s.spawn(move || match h2 {
                        None => probe(t, hc),
                        Some(tls) => probe_h2(t, hc, tls.clone()),
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(false))
                .collect()
        });
        for (d, passed) in ready.into_iter().zip(outcomes) {
            d.next = now + Duration::from_millis(d.check.interval_ms.max(1));
            let r = Report::Probe {
                upstream: d.upstream.clone(),
                target: d.target,
                passed,
            };
            if results.send(r).is_err() {
                return;
            }
        }
    }
}

/// One probe: `GET path` over a fresh connection, answered within the
/// check's timeout with the expected status (any 2xx when not set).
pub fn probe(target: SocketAddr, hc: &HealthCheck) -> bool {
    let timeout = Duration::from_millis(hc.timeout_ms.max(1));
    let deadline = Instant::now() + timeout;
    let Ok(mut s) = TcpStream::connect_timeout(&target, timeout) else {
        return false;
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nhost: {target}\r\nuser-agent: shardgate-health\r\nconnection: close\r\n\r\n",
        hc.path
    );
    let left = || deadline.saturating_duration_since(Instant::now());
    if s.set_write_timeout(Some(left().max(Duration::from_millis(1))))
        .and_then(|()| s.write_all(request.as_bytes()))
        .is_err()
    {
        return false;
    }
    // The status line is all that is needed.
    let mut buf = [0u8; 256];
    let mut got = 0;
    while got < 12 || !buf.get(..got).is_some_and(|b| b.contains(&b'\n')) {
        let rest = left();
        if rest.is_zero() || s.set_read_timeout(Some(rest)).is_err() {
            return false;
        }
        let Some(space) = buf.get_mut(got..).filter(|b| !b.is_empty()) else {
            break;
        };
        match s.read(space) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    status_of(buf.get(..got).unwrap_or_default()).is_some_and(|st| {
        hc.expect_status
            .map_or((200..300).contains(&st), |e| e == st)
    })
}

/// One probe of an HTTP/2 target: an h2 `GET path` (h2c with prior
/// knowledge, or h2 over TLS by ALPN) on a fresh connection, answered within
/// the check's timeout with the expected status (any 2xx when not set).
pub fn probe_h2(target: SocketAddr, hc: &HealthCheck, tls: Option<crate::h2::EndpointTls>) -> bool {
    let timeout = Duration::from_millis(hc.timeout_ms.max(1));
    // Each probe is a new runtime on the prober's thread; the last one may
    // have ended with waits pending.
    crate::http::timer::reset_thread();
    let Ok(mut rt) = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    else {
        return false;
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let request = http::Request::get(format!("{scheme}://{target}{}", hc.path))
        .header("user-agent", "shardgate-health")
        .body(());
    let Ok(request) = request else {
        return false;
    };
    let status = rt.block_on(async move {
        let pool = crate::h2::H2Pool::new(crate::h2::PoolLimits::default());
        let endpoint = crate::h2::Endpoint {
            addr: target,
            key: 0,
            tls,
            max_streams_per_connection: 1,
            max_connections: 1,
            connect_timeout: timeout,
            stall_timeout: timeout,
            queue_timeout: Duration::ZERO,
            idle_timeout: Duration::MAX,
        };
        let exchange = async {
            let call = pool.start_at(&endpoint, request, true).await.ok()?;
            let (head, _body) = call.response().await.ok()?;
            Some(head.status.as_u16())
        };
        monoio::time::timeout(timeout, exchange)
            .await
            .ok()
            .flatten()
    });
    status.is_some_and(|st| {
        hc.expect_status
            .map_or((200..300).contains(&st), |e| e == st)
    })
}

/// The status code of an HTTP/1.x status line.
fn status_of(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc() -> HealthCheck {
        HealthCheck {
            path: "/health".into(),
            interval_ms: 100,
            timeout_ms: 100,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            expect_status: None,
        }
    }

    #[test]
    fn thresholds_flip_the_state() {
        let (h, mut p) = (hc(), Probes::default());
        assert!(!p.record(false, &h));
        assert!(!p.record(false, &h));
        assert!(!p.record(true, &h), "a pass breaks the streak");
        assert!(!p.record(false, &h));
        assert!(!p.record(false, &h));
        assert!(p.record(false, &h));
        assert!(!p.healthy);
        assert!(!p.record(false, &h));
        assert!(!p.record(true, &h));
        assert!(p.record(true, &h));
        assert!(p.healthy);
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_of(b"HTTP/1.0 503 x"), Some(503));
        assert_eq!(status_of(b"HTTP/2 200"), None);
        assert_eq!(status_of(b"HTTP/1.1 2"), None);
    }

    #[test]
    fn probes_a_real_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for answer in ["HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 500 No\r\n\r\n"] {
                let (mut c, _) = l.accept().unwrap();
                let mut b = [0u8; 512];
                let _ = c.read(&mut b);
                c.write_all(answer.as_bytes()).unwrap();
            }
        });
        assert!(probe(addr, &hc()));
        assert!(!probe(addr, &hc()));
        server.join().unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = closed.local_addr().unwrap();
        drop(closed);
        assert!(!probe(gone, &hc()));
    }
}
