//! The compiled form of the rate-limit config: each named limit's algorithm
//! and policy, and for each route the limits it applies with their key parts
//! resolved.

use super::algorithm::Algorithm;
use super::key::{Cidr, KeyPart};
use super::redis::{parse_url, RedisTarget};
use crate::config::{
    Authenticator, Gateway, LimitAlgorithm, LimitKey, LimitPolicy, RateLimit, Route,
};
use std::time::Duration;

const NS_PER_S: u64 = 1_000_000_000;

/// Where a limit's counts live.
#[derive(Debug, Clone)]
pub enum PolicyPlan {
    /// In this process's shards.
    Local,
    /// In Redis, taken `lease` units at a time.
    Redis {
        /// The server.
        target: RedisTarget,
        /// Admit when Redis cannot be reached.
        fault_tolerant: bool,
        /// Units per Redis call.
        lease: u64,
        /// Time allowed per call.
        timeout: Duration,
        /// Back-off after a failure.
        retry: Duration,
        /// TLS to a `rediss://` server.
        tls: Option<crate::tls::UpstreamTlsPlan>,
    },
}

/// One named limit.
#[derive(Debug, Clone)]
pub struct LimitPlan {
    /// The limit's name (part of every key's hash).
    pub name: String,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// The limit's size in its units (requests, or tokens for buckets).
    pub units: u64,
    /// Where the counts live.
    pub policy: PolicyPlan,
}

/// A limit as applied on one route.
#[derive(Debug, Clone)]
pub struct RouteLimit {
    /// Index into [`RateLimitPlan::limits`].
    pub limit: usize,
    /// What the key is built from on this route.
    pub parts: Vec<KeyPart>,
}

/// Host-wide rate-limit settings and the named limits.
#[derive(Debug, Clone)]
pub struct RateLimitPlan {
    /// The named limits, in name order.
    pub limits: Vec<LimitPlan>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted: Vec<Cidr>,
    /// Gossip period.
    pub gossip_interval: Duration,
    /// Longest wait for quota from other shards.
    pub max_quota_wait: Duration,
    /// Keys per shard.
    pub max_keys: usize,
    /// Idle time after which a key is forgotten, ns.
    pub idle_ns: u64,
}

impl RateLimitPlan {
    /// One `Local` limit named `name` with the default settings (for
    /// driving a limiter directly, as tests and benchmarks do).
    pub fn single_local(name: &str, algorithm: Algorithm, units: u64) -> RateLimitPlan {
        let defaults = crate::config::RateLimiting::default();
        RateLimitPlan {
            limits: vec![LimitPlan {
                name: name.into(),
                algorithm,
                units,
                policy: PolicyPlan::Local,
            }],
            trusted: Vec::new(),
            gossip_interval: Duration::from_millis(defaults.gossip_interval_ms),
            max_quota_wait: Duration::from_millis(defaults.max_quota_wait_ms),
            max_keys: defaults.max_keys_per_shard,
            idle_ns: defaults.idle_key_s * NS_PER_S,
        }
    }
}

/// The algorithm of a config entry.
pub fn algorithm(a: &LimitAlgorithm) -> Algorithm {
    match *a {
        LimitAlgorithm::TokenBucket {
            capacity,
            refill_per_s,
        } => Algorithm::TokenBucket {
            capacity,
            refill_per_s,
        },
        LimitAlgorithm::LeakyBucket {
            capacity,
            drain_per_s,
            max_wait_ms,
        } => Algorithm::LeakyBucket {
            capacity,
            drain_per_s,
            max_wait_ns: max_wait_ms.map(|ms| ms.saturating_mul(1_000_000)),
        },
        LimitAlgorithm::FixedWindow { limit, window_s } => Algorithm::FixedWindow {
            limit,
            window_ns: window_s.saturating_mul(NS_PER_S),
        },
        LimitAlgorithm::SlidingWindow { limit, window_s } => Algorithm::SlidingWindow {
            limit,
            window_ns: window_s.saturating_mul(NS_PER_S),
        },
        LimitAlgorithm::SlidingLog { limit, window_s } => Algorithm::SlidingLog {
            limit,
            window_ns: window_s.saturating_mul(NS_PER_S),
        },
    }
}

/// Compiles the named limits and the host-wide settings.
pub fn compile(g: &Gateway) -> Result<RateLimitPlan, String> {
    let mut limits = Vec::new();
    for (name, l) in &g.rate_limits {
        limits.push(limit_plan(name, l)?);
    }
    let s = &g.rate_limiting;
    let mut trusted = Vec::new();
    for t in &s.trusted_proxies {
        trusted.push(Cidr::parse(t).ok_or_else(|| format!("bad trusted proxy {t:?}"))?);
    }
    Ok(RateLimitPlan {
        limits,
        trusted,
        gossip_interval: Duration::from_millis(s.gossip_interval_ms.max(1)),
        max_quota_wait: Duration::from_millis(s.max_quota_wait_ms),
        max_keys: s.max_keys_per_shard.max(1),
        idle_ns: s.idle_key_s.saturating_mul(NS_PER_S).max(NS_PER_S),
    })
}

fn limit_plan(name: &str, l: &RateLimit) -> Result<LimitPlan, String> {
    let algorithm = algorithm(&l.algorithm);
    let units = match l.algorithm {
        LimitAlgorithm::TokenBucket { capacity, .. }
        | LimitAlgorithm::LeakyBucket { capacity, .. } => capacity,
        LimitAlgorithm::FixedWindow { limit, .. }
        | LimitAlgorithm::SlidingWindow { limit, .. }
        | LimitAlgorithm::SlidingLog { limit, .. } => limit,
    };
    let policy = match &l.policy {
        LimitPolicy::Local => PolicyPlan::Local,
        LimitPolicy::Redis {
            url,
            fault_tolerant,
            lease,
            timeout_ms,
            retry_ms,
            ca_file,
        } => PolicyPlan::Redis {
            tls: redis_tls(url, ca_file.as_deref())
                .map_err(|e| format!("rate limit {name:?}: {e}"))?,
            target: parse_url(url).map_err(|e| format!("rate limit {name:?}: {e}"))?,
            fault_tolerant: *fault_tolerant,
            lease: (*lease).max(1),
            timeout: Duration::from_millis((*timeout_ms).max(1)),
            retry: Duration::from_millis(*retry_ms),
        },
    };
    Ok(LimitPlan {
        name: name.to_string(),
        algorithm,
        units,
        policy,
    })
}

/// The limits of one route with their key parts resolved.
pub fn route_limits(g: &Gateway, route: &Route) -> Result<Vec<RouteLimit>, String> {
    let mut out = Vec::new();
    for name in &route.rate_limits {
        let (limit, spec) = g
            .rate_limits
            .iter()
            .enumerate()
            .find_map(|(i, (n, spec))| (n == name).then_some((i, spec)))
            .ok_or_else(|| format!("unknown rate limit {name:?}"))?;
        let mut parts = Vec::new();
        flatten_key(g, route, &spec.key, &mut parts)?;
        out.push(RouteLimit { limit, parts });
    }
    Ok(out)
}

fn flatten_key(
    g: &Gateway,
    route: &Route,
    key: &LimitKey,
    out: &mut Vec<KeyPart>,
) -> Result<(), String> {
    let authenticators = || -> Vec<&Authenticator> {
        match &route.auth {
            crate::config::AuthPolicy::Public => Vec::new(),
            crate::config::AuthPolicy::Required(names) => names
                .iter()
                .filter_map(|n| g.authenticators.get(n))
                .collect(),
        }
    };
    match key {
        LimitKey::ClientIp => out.push(KeyPart::ClientIp),
        LimitKey::Route => out.push(KeyPart::Route),
        LimitKey::Header(h) => out.push(KeyPart::Header(h.to_ascii_lowercase())),
        LimitKey::Claim(c) => {
            if authenticators().is_empty() {
                return Err(format!(
                    "the key uses claim {c:?}, but route {:?} is public (no caller, no claims)",
                    route.name
                ));
            }
            out.push(KeyPart::Claim(c.clone()));
        }
        LimitKey::Consumer => {
            let has_api_keys = authenticators()
                .into_iter()
                .any(|a| matches!(a, Authenticator::ApiKey(_)));
            if !has_api_keys {
                return Err(format!(
                    "the key uses the API-key consumer, but route {:?} has no ApiKey authenticator",
                    route.name
                ));
            }
            out.push(KeyPart::Claim("consumer".into()));
        }
        LimitKey::Combined(keys) => {
            for k in keys {
                if matches!(k, LimitKey::Combined(_)) {
                    return Err("Combined keys cannot be nested".into());
                }
                flatten_key(g, route, k, out)?;
            }
        }
    }
    Ok(())
}

/// The TLS settings of a `rediss://` URL (`None` for `redis://`).
fn redis_tls(
    url: &str,
    ca_file: Option<&str>,
) -> Result<Option<crate::tls::UpstreamTlsPlan>, String> {
    let target = parse_url(url)?;
    if !target.tls {
        return Ok(None);
    }
    let settings = crate::config::UpstreamTls {
        ca_file: ca_file.map(str::to_string),
        ..Default::default()
    };
    let config = crate::tls::client_config(Some(&settings))?;
    let host = crate::config::target_host(&target.addr).to_string();
    let name = rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|_| format!("{host:?} is not a usable TLS server name"))?;
    Ok(Some(crate::tls::UpstreamTlsPlan {
        config: std::sync::Arc::new(config),
        names: vec![name],
    }))
}
