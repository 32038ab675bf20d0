//! The rate-limit stage of the pipeline: after authentication (keys can use
//! the caller's identity), before forwarding. Builds each limit's key,
//! decides on the shard's limiter, waits (bounded) for quota lent by other
//! shards or for a Redis lease, and renders the `RateLimit-*` headers.

use super::algorithm::Decision;
use super::key::{build_key, client_ip, KeyFacts};
use super::limiter::{now_ns, Check, Outcome};
use super::plan::{PolicyPlan, RateLimitPlan};
use super::table::key_hash;
use crate::compiled::RoutePlan;
use crate::error::GatewayError;
use crate::http::RequestHead;
use crate::metrics::LimitDecision;
use crate::proxy::Exchange;
use crate::shard::Shard;
use std::fmt::Write;
use std::time::{Duration, Instant};

const NS: u64 = 1_000_000_000;

/// Applies the route's limits to one request. On admission returns the
/// header lines for the response (empty when the route hides them); a
/// refusal is a 429 carrying `Retry-After` and the same headers.
pub async fn apply(
    shard: &Shard,
    plan: &RateLimitPlan,
    route: &RoutePlan,
    req: &RequestHead,
    ex: &Exchange<'_>,
    claims: &[(String, String)],
) -> Result<String, GatewayError> {
    let checks = checks(plan, route, req, ex, claims);
    // Set when a request first has to wait for quota (most never do).
    let mut deadline: Option<Instant> = None;
    let mut decisions = Vec::with_capacity(checks.len());
    let mut skip = 0u64;
    let mut leases = 0;
    loop {
        let now = now_ns();
        let outcome = shard
            .limiter
            .borrow_mut()
            .admit(plan, &checks, skip, now, 1, &mut decisions);
        match outcome {
            Outcome::Admitted { delay_ns } => {
                let decision = if deadline.is_some() {
                    LimitDecision::Waited
                } else {
                    LimitDecision::Admitted
                };
                count(shard, &checks, |_| Some(decision));
                if delay_ns > 0 {
                    monoio::time::sleep(Duration::from_nanos(delay_ns)).await;
                }
                return Ok(headers(route, &decisions));
            }
            Outcome::NeedLease(i) if leases < 2 * checks.len() => {
                leases += 1;
                let Some(check) = checks.get(i) else {
                    return Err(GatewayError::Unavailable(
                        "the rate-limit store gave no answer",
                    ));
                };
                if let Err(e) = lease(shard, plan, check, now).await {
                    let Some(lp) = plan.limits.get(check.limit) else {
                        continue;
                    };
                    let PolicyPlan::Redis {
                        fault_tolerant,
                        retry,
                        ..
                    } = &lp.policy
                    else {
                        continue;
                    };
                    if shard
                        .limiter
                        .borrow_mut()
                        .should_log(check.limit, now, *retry)
                    {
                        eprintln!(
                            "shardgate: shard {}: rate limit {:?}: Redis unavailable ({e}); {}",
                            shard.id,
                            lp.name,
                            if *fault_tolerant {
                                "admitting requests (fault_tolerant)"
                            } else {
                                "refusing requests with 503"
                            }
                        );
                    }
                    if !fault_tolerant {
                        return Err(GatewayError::Unavailable(
                            "the rate-limit store could not be reached",
                        ));
                    }
                    skip |= 1 << i.min(63);
                }
            }
            Outcome::NeedLease(_) => {
                return Err(GatewayError::Unavailable(
                    "the rate-limit store gave no answer",
                ))
            }
            Outcome::Refused { wait } => {
                let until = *deadline.get_or_insert_with(|| Instant::now() + plan.max_quota_wait);
                let left = until.saturating_duration_since(Instant::now());
                match wait {
                    Some(tick) if !left.is_zero() => {
                        let _ = monoio::time::timeout(left, tick.wait()).await;
                    }
                    _ => {
                        count(shard, &checks, |i| {
                            decisions
                                .get(i)
                                .filter(|d| !d.allowed)
                                .map(|_| LimitDecision::Refused)
                        });
                        return Err(too_many(route, &decisions));
                    }
                }
            }
        }
    }
}

/// Counts each check's decision (by index; `None`: not counted) in the
/// shard's metrics.
fn count(shard: &Shard, checks: &[Check], decision: impl Fn(usize) -> Option<LimitDecision>) {
    let mut m = shard.metrics.borrow_mut();
    if !m.enabled {
        return;
    }
    for (i, c) in checks.iter().enumerate() {
        if let Some(d) = decision(i) {
            m.limit(c.limit, d);
        }
    }
}

/// The 429 for a refused request: `Retry-After` of the limit that frees up
/// last, and the rate-limit headers.
fn too_many(route: &RoutePlan, decisions: &[Decision]) -> GatewayError {
    let retry_ns = decisions
        .iter()
        .filter(|d| !d.allowed)
        .map(|d| d.retry_after_ns)
        .max()
        .unwrap_or(NS);
    GatewayError::TooManyRequests {
        retry_after_s: retry_ns.div_ceil(NS).max(1),
        headers: headers(route, decisions),
    }
}

/// Asks Redis for a lease for one check and records the answer.
async fn lease(
    shard: &Shard,
    plan: &RateLimitPlan,
    check: &Check,
    now: u64,
) -> Result<(), super::redis::RedisError> {
    let Some(lp) = plan.limits.get(check.limit) else {
        return Ok(());
    };
    let PolicyPlan::Redis { lease, .. } = &lp.policy else {
        return Ok(());
    };
    let Some(client) = shard.limiter.borrow().redis_client(check.limit) else {
        return Ok(());
    };
    let grant = client
        .acquire(&check.text, &lp.algorithm, *lease, 1)
        .await?;
    shard.limiter.borrow_mut().deposit(lp, check, &grant, now);
    Ok(())
}

/// The limits to check for this request, with their keys.
fn checks(
    plan: &RateLimitPlan,
    route: &RoutePlan,
    req: &RequestHead,
    ex: &Exchange<'_>,
    claims: &[(String, String)],
) -> Vec<Check> {
    let client = client_ip(ex.client_ip, req.header("x-forwarded-for"), &plan.trusted);
    let identity = |name: &str| {
        ex.add_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let claim = |name: &str| {
        claims
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let header = |name: &str| req.header(name);
    let facts = KeyFacts {
        client,
        route: &route.name,
        identity: &identity,
        claim: &claim,
        header: &header,
    };
    let mut key = String::with_capacity(64);
    route
        .rate_limits
        .iter()
        .filter_map(|rl| {
            let lp = plan.limits.get(rl.limit)?;
            build_key(&rl.parts, &facts, &mut key);
            let text = match lp.policy {
                PolicyPlan::Local => String::new(),
                PolicyPlan::Redis { .. } => format!("shardgate:{}:{key}", lp.name),
            };
            Some(Check {
                limit: rl.limit,
                key: key_hash(&lp.name, &key),
                text,
            })
        })
        .collect()
}

/// `RateLimit-Limit`, `-Remaining` and `-Reset` (seconds) of the most
/// restrictive limit, or nothing when the route hides them.
fn headers(route: &RoutePlan, decisions: &[Decision]) -> String {
    let mut out = String::new();
    if !route.rate_limit_headers {
        return out;
    }
    let Some(d) = decisions
        .iter()
        .min_by_key(|d| (d.allowed, d.remaining, u64::MAX - d.reset_ns))
    else {
        return out;
    };
    let _ = write!(
        out,
        "ratelimit-limit: {}\r\nratelimit-remaining: {}\r\nratelimit-reset: {}\r\n",
        d.limit,
        d.remaining,
        d.reset_ns.div_ceil(NS)
    );
    out
}
