//! Resilience: what the gateway does when an upstream fails — circuit
//! breakers ([`breaker`]), retries under a budget ([`retry`]), per-route
//! timeouts and deadlines, and fallbacks ([`fallback`]) — and how it keeps
//! traffic off failing and slow targets: target health (active checks
//! ([`health`]) and outlier ejection ([`outlier`]), decided host-wide on the
//! control side) and balancing ([`balance`], [`targets`]: weights, peak
//! EWMA, consistent hashing).
//!
//! The stage is [`forward`], for routes and upstreams with these settings
//! (the others, told by [`is_plain`], take one plain try). It wraps the
//! proxy's single try ([`proxy::forward_try`]) in the loop: ask the
//! breaker, try, record the outcome, and retry (another target, after a
//! backoff, within the budget and the deadline) or fall back, as long as
//! nothing of the answer has reached the client.

pub mod balance;
pub mod breaker;
pub mod fallback;
pub mod health;
pub mod outlier;
pub mod retry;
pub mod targets;

use crate::compiled::{RoutePlan, UpstreamPlan};
use crate::config::{self, Fallback};
use crate::error::GatewayError;
use crate::http::{Conn, Framing, RequestHead};
use crate::proxy::{self, Disposition, Early, Exchange, Tried, TryOptions};
use crate::ratelimit::limiter::now_ns;
use crate::shard::{Shard, ShardConfig};
use breaker::{Admit, BreakerSpec, Outcome, StatusSet};
use fallback::{FallbackPlan, Reason};
use retry::RetryPlan;
use std::cell::Cell;
use std::time::{Duration, Instant};

/// A route's timeouts, retry policy and fallback.
#[derive(Debug, Clone, Default)]
pub struct RoutePolicy {
    /// Response-head and body-read timeout instead of the upstream's.
    pub timeout: Option<Duration>,
    /// Bound on every try and backoff of a request, together.
    pub deadline: Option<Duration>,
    /// Retry policy instead of the upstream's.
    pub retry: Option<RetryPlan>,
    /// Retry methods that are not idempotent too.
    pub retry_non_idempotent: bool,
    /// What to answer when the upstream fails.
    pub fallback: Option<FallbackPlan>,
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Compiles an upstream's breaker settings.
pub fn compile_breaker(b: &config::CircuitBreaker, u: &config::Upstream) -> BreakerSpec {
    let open_ns = b.open_s.saturating_mul(1_000_000_000);
    let try_ns = (u.connect_timeout_ms.saturating_add(u.timeout_ms)).saturating_mul(1_000_000);
    BreakerSpec {
        min_requests: b.min_requests.max(1),
        failure_ratio: b.failure_ratio,
        window_ns: b.window_s.saturating_mul(1_000_000_000).max(1),
        open_ns,
        half_open_requests: b.half_open_requests.max(1),
        consecutive_failures: b.consecutive_failures,
        failure_statuses: b
            .failure_statuses
            .as_ref()
            .map_or_else(StatusSet::server_errors, |s| {
                StatusSet::of(s.iter().copied())
            }),
        turn_ns: try_ns.clamp(1_000_000_000, open_ns.max(1_000_000_000)),
    }
}

/// Compiles a retry policy.
pub fn compile_retry(r: &config::Retry) -> RetryPlan {
    RetryPlan {
        max_attempts: r.max_attempts.max(1),
        budget_ratio: r.budget_ratio,
        budget_floor_per_s: r.budget_floor_per_s,
        per_try_timeout: r.per_try_timeout_ms.map(ms),
        statuses: StatusSet::of(r.retry_on_statuses.iter().copied()),
        backoff_base: ms(r.backoff_base_ms),
        backoff_max: ms(r.backoff_max_ms.max(r.backoff_base_ms)),
        buffer_body_bytes: r.buffer_body_bytes,
    }
}

/// Compiles a route's resilience settings; `upstream_index` resolves an
/// alternate upstream's name.
pub fn compile_route(
    r: &config::Route,
    upstream_index: &dyn Fn(&str) -> Option<usize>,
) -> Result<RoutePolicy, String> {
    let fallback = match &r.fallback {
        None => None,
        Some(Fallback::Alternate { upstream }) => Some(FallbackPlan::Alternate(
            upstream_index(upstream)
                .ok_or_else(|| format!("fallback: unknown upstream {upstream:?}"))?,
        )),
        Some(Fallback::Static {
            status,
            headers,
            body,
        }) => Some(FallbackPlan::compile_static(*status, headers, body)?),
    };
    Ok(RoutePolicy {
        timeout: r.timeout_ms.map(ms),
        deadline: r.deadline_ms.map(ms),
        retry: r.retry.as_ref().map(compile_retry),
        retry_non_idempotent: r.retry_non_idempotent,
        fallback,
    })
}

/// Where a config problem is: the upstream or route, and its top-level
/// field (for the position in the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchor {
    /// `upstreams.<name>.<field>`.
    Upstream(String, &'static str),
    /// `routes[i].<field>`.
    Route(usize, &'static str),
}

/// A problem in the resilience settings: where, the dotted field, and what is wrong.
pub type Problem = (Anchor, String, String);

/// Problems in the resilience settings of a config.
pub fn check(g: &config::Gateway) -> Vec<Problem> {
    let mut out: Vec<Problem> = Vec::new();
    for (name, u) in &g.upstreams {
        if let Some(b) = &u.circuit_breaker {
            let at = || Anchor::Upstream(name.clone(), "circuit_breaker");
            let f = |x: &str| format!("upstreams.{name}.circuit_breaker.{x}");
            if !(b.failure_ratio > 0.0 && b.failure_ratio <= 1.0) {
                out.push((
                    at(),
                    f("failure_ratio"),
                    "must be above 0 and at most 1".into(),
                ));
            }
            for (field, v) in [
                ("min_requests", u64::from(b.min_requests)),
                ("window_s", b.window_s),
                ("open_s", b.open_s),
                ("half_open_requests", u64::from(b.half_open_requests)),
            ] {
                if v == 0 {
                    out.push((at(), f(field), "must be at least 1".into()));
                }
            }
            if b.consecutive_failures == Some(0) {
                out.push((at(), f("consecutive_failures"), "must be at least 1".into()));
            }
            if let Some(m) = bad_status(b.failure_statuses.iter().flatten()) {
                out.push((at(), f("failure_statuses"), m));
            }
        }
        if let Some(r) = &u.retry {
            let at = Anchor::Upstream(name.clone(), "retry");
            check_retry(&mut out, at, &format!("upstreams.{name}.retry"), r);
        }
    }
    for (i, r) in g.routes.iter().enumerate() {
        let f = |x: &str| format!("routes[{i}].{x}");
        if let Some(rt) = &r.retry {
            check_retry(&mut out, Anchor::Route(i, "retry"), &f("retry"), rt);
        }
        for (field, v) in [("timeout_ms", r.timeout_ms), ("deadline_ms", r.deadline_ms)] {
            if v == Some(0) {
                out.push((
                    Anchor::Route(i, field),
                    f(field),
                    "must be at least 1".into(),
                ));
            }
        }
        let at = Anchor::Route(i, "fallback");
        match &r.fallback {
            Some(Fallback::Alternate { upstream }) if !g.upstreams.contains_key(upstream) => {
                out.push((
                    at,
                    f("fallback"),
                    format!("unknown upstream {upstream:?} for the alternate"),
                ));
            }
            Some(Fallback::Static {
                status,
                headers,
                body,
            }) => {
                if let Err(e) = FallbackPlan::compile_static(*status, headers, body) {
                    out.push((at, f("fallback"), e));
                }
            }
            _ => {}
        }
    }
    out
}

fn check_retry(out: &mut Vec<Problem>, anchor: Anchor, at: &str, r: &config::Retry) {
    if r.max_attempts == 0 {
        out.push((
            anchor.clone(),
            format!("{at}.max_attempts"),
            "must be at least 1".into(),
        ));
    }
    if !(0.0..=10.0).contains(&r.budget_ratio) {
        out.push((
            anchor.clone(),
            format!("{at}.budget_ratio"),
            "must be between 0 and 10".into(),
        ));
    }
    if r.per_try_timeout_ms == Some(0) {
        out.push((
            anchor.clone(),
            format!("{at}.per_try_timeout_ms"),
            "must be at least 1".into(),
        ));
    }
    if let Some(m) = bad_status(&r.retry_on_statuses) {
        out.push((anchor, format!("{at}.retry_on_statuses"), m));
    }
}

fn bad_status<'a>(statuses: impl IntoIterator<Item = &'a u16>) -> Option<String> {
    statuses
        .into_iter()
        .find(|s| !(100..600).contains(*s))
        .map(|s| format!("{s} is not an HTTP status"))
}

/// True when the route and its upstream use none of this module's settings:
/// the request then takes a plain try ([`proxy::forward_try`] with
/// [`proxy::TryOptions::NONE`]) instead of [`forward`].
pub fn is_plain(policy: &RoutePolicy, up: &UpstreamPlan) -> bool {
    up.breaker.is_none()
        && up.retry.is_none()
        && policy.retry.is_none()
        && policy.fallback.is_none()
        && policy.timeout.is_none()
        && policy.deadline.is_none()
}

/// Forwards `req` to `up` under the route's breaker, retry, timeout and
/// fallback settings (see the module docs), for a route or upstream that
/// has them (see [`is_plain`]).
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    shard: &Shard,
    cfg: &ShardConfig,
    route: &RoutePlan,
    up: &UpstreamPlan,
    cursor: &Cell<usize>,
    req: &RequestHead,
    target: &str,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
) -> Result<Disposition, GatewayError> {
    let policy = &route.resilience;
    let started = Instant::now();
    let deadline = policy.deadline.map(|d| started + d);
    let retry = policy.retry.as_ref().or(up.retry.as_ref());
    let may_retry = retry::idempotent(req.method()) || policy.retry_non_idempotent;
    // A body is read ahead (so it can be sent again) when it is small enough.
    let read_ahead = match (req.framing, retry, &policy.fallback) {
        (Framing::Length(n), Some(r), _) if may_retry && r.max_attempts > 1 => {
            (n <= r.buffer_body_bytes).then_some(n)
        }
        (Framing::Length(n), _, Some(FallbackPlan::Alternate(_))) => {
            (n <= retry::DEFAULT_BUFFER_BODY_BYTES).then_some(n)
        }
        _ => None,
    };
    let body = match (ex.body.clone(), read_ahead) {
        // Already read whole (validation).
        (Some(b), _) => Some(b),
        (None, Some(n)) => Some(fallback::read_body(client, req, n, ex).await?),
        (None, None) => None,
    };
    let max_attempts = match retry {
        Some(r) if may_retry && (req.framing == Framing::None || body.is_some()) => r.max_attempts,
        _ => 1,
    };
    let timeout = policy.timeout.unwrap_or(up.timeout);
    let mut avoid = None;
    let mut failure: Option<(GatewayError, Reason)> = None;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let left = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => {
                    failure = failure.or(Some((timeout_error(up), Reason::Timeout)));
                    break;
                }
            },
            None => None,
        };
        let more = attempt < max_attempts;
        let mut hold = StatusSet::EMPTY;
        if let Some(r) = retry.filter(|_| more) {
            hold = r.statuses;
        }
        if policy.fallback.is_some() {
            hold = hold.union(StatusSet::server_errors());
        }
        let per_try = retry.and_then(|r| r.per_try_timeout).unwrap_or(timeout);
        let opts = TryOptions {
            timeout: Some(left.map_or(per_try, |l| l.min(per_try))),
            connect_timeout: left,
            hold,
            body: body.clone(),
            avoid,
        };
        if attempt == 1 && retry.is_some() {
            if let Some(b) = shard.retry_budgets.borrow_mut().of(up.id) {
                b.first_try(now_ns());
            }
        }
        let (tried, refused) = try_once(shard, up, cursor, req, target, client, ex, &opts).await;
        if let Some(e) = refused {
            // Open: a retry stops here and reports what made it retry.
            failure = failure.or(Some((e, Reason::CircuitOpen)));
            break;
        }
        let e = match tried.result {
            Ok(d) => return Ok(d),
            Err(e) if ex.response_started => return Err(e),
            Err(e) => e,
        };
        let reason = match tried.early {
            Early::Connect => Reason::ConnectError,
            Early::Reset => Reason::Reset,
            Early::Timeout => Reason::Timeout,
            Early::Held(_) => Reason::ServerError,
            Early::No if matches!(e, GatewayError::BadGateway { .. }) => Reason::UpstreamError,
            // Refused before a call (busy, no targets): no fallback either.
            Early::No => return Err(e),
        };
        let retryable = match tried.early {
            Early::Connect | Early::Reset => true,
            Early::Held(s) => retry.is_some_and(|r| r.statuses.contains(s)),
            Early::Timeout => retry.is_some_and(|r| r.per_try_timeout.is_some()),
            Early::No => false,
        };
        failure = Some((e, reason));
        let Some(r) = retry.filter(|_| retryable && more) else {
            break;
        };
        let now = now_ns();
        let granted = {
            let mut budgets = shard.retry_budgets.borrow_mut();
            let granted = budgets
                .of(up.id)
                .is_some_and(|b| b.take_retry(now, r.budget_ratio, r.budget_floor_per_s));
            if let Some(s) = budgets.stats_of(up.id) {
                if granted {
                    s.retries += 1;
                } else {
                    s.retries_refused += 1;
                }
            }
            granted
        };
        if !granted {
            break;
        }
        let unit = shard.retry_budgets.borrow_mut().unit(now);
        let mut wait = r.backoff(attempt, unit);
        if let Some(d) = deadline {
            wait = wait.min(d.saturating_duration_since(Instant::now()));
        }
        if !wait.is_zero() {
            monoio::time::sleep(wait).await;
        }
        avoid = tried.target;
    }
    let Some((error, reason)) = failure else {
        return Err(timeout_error(up));
    };
    if policy.fallback.is_some() {
        if let Some(s) = shard.retry_budgets.borrow_mut().stats_of(up.id) {
            if let Some(n) = s.fallbacks.get_mut(reason.index()) {
                *n += 1;
            }
        }
    }
    match &policy.fallback {
        None => Err(error),
        Some(FallbackPlan::Static(s)) => fallback::answer(s, reason, req, client, ex).await,
        Some(FallbackPlan::Alternate(alt)) => {
            let body_intact = req.framing == Framing::None
                || body.is_some()
                || matches!(reason, Reason::CircuitOpen | Reason::ConnectError);
            let (Some(alt_up), Some(alt_cursor)) =
                (cfg.compiled.upstreams.get(*alt), cfg.cursors.get(*alt))
            else {
                return Err(error);
            };
            if !body_intact {
                return Err(error);
            }
            ex.response_headers.push_str("x-fallback: ");
            ex.response_headers.push_str(reason.label());
            ex.response_headers.push_str("\r\n");
            let opts = TryOptions {
                timeout: Some(timeout),
                body,
                ..TryOptions::default()
            };
            let (tried, refused) =
                try_once(shard, alt_up, alt_cursor, req, target, client, ex, &opts).await;
            match refused {
                Some(e) => Err(e),
                None => tried.result,
            }
        }
    }
}

/// One try under `up`'s breaker: `Some(error)` when the breaker refused it
/// (nothing was sent), otherwise the try, its outcome recorded.
#[allow(clippy::too_many_arguments)]
async fn try_once(
    shard: &Shard,
    up: &UpstreamPlan,
    cursor: &Cell<usize>,
    req: &RequestHead,
    target: &str,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
    opts: &TryOptions,
) -> (Tried, Option<GatewayError>) {
    let admitted = if up.breaker.is_some() {
        shard.breakers.borrow_mut().admit(up.id, now_ns())
    } else {
        None
    };
    if let Some(Admit::Refuse { retry_after_ns }) = admitted {
        let tried = Tried {
            result: Ok(Disposition::Close),
            early: Early::No,
            target: None,
        };
        let e = GatewayError::CircuitOpen {
            upstream: up.name.clone(),
            retry_after_s: retry_after_ns.div_ceil(1_000_000_000).max(1),
        };
        return (tried, Some(e));
    }
    let tried = proxy::forward_try(shard, up, cursor, req, target, client, ex, opts).await;
    if let Some(a) = admitted {
        let outcome = match (&tried.early, &tried.result) {
            (Early::Connect | Early::Reset | Early::Timeout, _) => Some(Outcome::Failed),
            (Early::Held(s), _) => Some(Outcome::Status(*s)),
            (Early::No, _) if ex.seen.status != 0 => Some(Outcome::Status(ex.seen.status)),
            (
                Early::No,
                Err(GatewayError::BadGateway { .. } | GatewayError::GatewayTimeout { .. }),
            ) => Some(Outcome::Failed),
            _ => None,
        };
        if let Some(o) = outcome {
            shard.breakers.borrow_mut().record(up.id, a, o, now_ns());
        }
    }
    (tried, None)
}

/// Asks `up`'s breaker (if it has one) whether a call may go out, for
/// callers other than the proxy (aggregate parts): `Err` with the reason
/// when it is open.
pub fn admit_call(shard: &Shard, up: &UpstreamPlan) -> Result<Option<Admit>, String> {
    if up.breaker.is_none() {
        return Ok(None);
    }
    match shard.breakers.borrow_mut().admit(up.id, now_ns()) {
        Some(Admit::Refuse { retry_after_ns }) => Err(format!(
            "circuit breaker of upstream {:?} is open; retry in {} s",
            up.name,
            retry_after_ns.div_ceil(1_000_000_000).max(1)
        )),
        a => Ok(a),
    }
}

/// Records how a call admitted by [`admit_call`] ended: the answer's
/// `status`, or (0) a failure without an answer when `failed`.
pub fn record_call(
    shard: &Shard,
    up: &UpstreamPlan,
    admitted: Option<Admit>,
    status: u16,
    failed: bool,
) {
    let Some(a) = admitted else {
        return;
    };
    let outcome = match (status, failed) {
        (0, true) => Outcome::Failed,
        (0, false) => return,
        (s, _) => Outcome::Status(s),
    };
    shard
        .breakers
        .borrow_mut()
        .record(up.id, a, outcome, now_ns());
}

fn timeout_error(up: &UpstreamPlan) -> GatewayError {
    GatewayError::GatewayTimeout {
        upstream: up.name.clone(),
    }
}

#[cfg(test)]
mod target_config_tests {
    fn problems(upstream: &str) -> String {
        let text = format!(
            "Gateway(listeners: [Listener(name: \"main\", bind: \"127.0.0.1:0\")],
              upstreams: {{ \"app\": {upstream} }},
              routes: [Route(name: \"all\", match: Match(path_prefix: \"/\"), upstream: \"app\")])"
        );
        match crate::config::parse("t.ron", &text) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_settings_are_reported_with_their_field() {
        let t = "targets: [\"127.0.0.1:9001\"]";
        assert_eq!(
            problems(&format!(
                "Upstream({t}, weights: {{\"127.0.0.1:9001\": 5}})"
            )),
            ""
        );
        let e = problems(&format!(
            "Upstream({t}, weights: {{\"127.0.0.1:9009\": 5}})"
        ));
        assert!(
            e.contains("upstreams.app.weights") && e.contains("not one of the targets"),
            "{e}"
        );
        let e = problems(&format!(
            "Upstream({t}, weights: {{\"127.0.0.1:9001\": 0}})"
        ));
        assert!(e.contains("must be 1 to 1000"), "{e}");
        let e = problems(&format!(
            "Upstream({t}, health_check: Some(HealthCheck(path: \"health\", interval_ms: 1, healthy_threshold: 0)))"
        ));
        assert!(e.contains("upstreams.app.health_check"), "{e}");
        assert!(
            e.contains("start with /") && e.contains("interval_ms") && e.contains("threshold"),
            "{e}"
        );
        let e = problems(&format!(
            "Upstream({t}, outlier_detection: Some(OutlierDetection(consecutive_5xx: 0, consecutive_connect_failures: 0, max_ejection_percent: 101)))"
        ));
        assert!(e.contains("upstreams.app.outlier_detection"), "{e}");
        assert!(
            e.contains("consecutive_5xx") && e.contains("max_ejection_percent"),
            "{e}"
        );
        let e = problems(&format!(
            "Upstream({t}, balance: ConsistentHash(Header(\"bad name\")))"
        ));
        assert!(e.contains("upstreams.app.balance"), "{e}");
        assert_eq!(
            problems(&format!(
                "Upstream({t}, balance: ConsistentHash(Cookie(\"sid\")))"
            )),
            ""
        );
        assert_eq!(
            problems(&format!(
                "Upstream({t}, balance: PeakEwma, panic_routing: true)"
            )),
            ""
        );
    }
}
