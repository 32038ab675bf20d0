//! A request's path through the gateway, top to bottom. Each stage is a
//! function with explicit inputs that returns `Result<_, GatewayError>`; the
//! first failure short-circuits and the connection loop turns it into the
//! JSON error response (the one rescue point, in `server.rs`).
//!
//! Stages, in order (each skipped when its route or listener does not use it):
//!
//! 1. check repeated singleton fields and the declared body size;
//! 2. normalise the path;
//! 3. listener IP filter (before routing: 403);
//! 4. route (a CORS preflight is routed by the method it asks for);
//! 5. **CORS** — a preflight is answered here (204, or 403), with no auth,
//!    no rate limit and no upstream call; other requests get their CORS
//!    header lines added to every answer;
//! 6. **IP filter** of the route (403);
//! 7. strip client identity headers → **authenticate** → **authorize**;
//! 8. **rate limit** (after authorization, so keys can use the caller's
//!    identity; once per request, however many parts a composite has);
//! 9. **validation** (JSON Schema of the query and body: 400 or 415; the
//!    body is then forwarded from memory);
//! 10. **cache lookup**;
//! 11. **request transformation**;
//! 12. **upstream or aggregation**: a static response answers here; a
//!     composite runs its parts and answers with the composed JSON;
//!     otherwise the upstream is chosen (the split's weighted or sticky
//!     choice), the mirror copy is fired, and the request is forwarded —
//!     under retries, breakers and fallbacks ([`crate::resilience`]) — with
//!     the response streamed back (or an accepted upgrade tunnelled after
//!     its `101`); a transcoded route (`grpc: Some(Transcode(..))`) instead
//!     builds a gRPC request message from the path, query and JSON body,
//!     calls its HTTP/2 upstream and answers JSON (or a JSON array / NDJSON
//!     stream), see [`crate::grpc::stage`];
//! 13. **response transformation**;
//! 14. **compression**.
//!
//! Stages 13 and 14 (and the cache store) run on the response side in
//! [`crate::proxy`], as the response head and body pass through.

use crate::aggregate;
use crate::auth::{self, Credentials, Denied, Identity, KeyView};
use crate::compiled::{upstream_target, Compiled, ListenerPlan};
use crate::error::GatewayError;
use crate::http::path::{self, PathOptions};
use crate::http::{Conn, Framing, RequestHead};
use crate::out_of_line;
use crate::policy;
use crate::proxy::{self, upgrade, Disposition, Exchange};
use crate::router::{Lookup, RequestFacts};
use crate::shard::{Shard, ShardConfig};
use std::borrow::Cow;
use std::ops::Range;

/// Handles one request whose head has been read from `client`. The stages a
/// route may not have run out of line ([`crate::out_of_line`]): a plain
/// proxied request's code here stays small.
pub async fn handle<'c>(
    shard: &Shard,
    cfg: &'c ShardConfig,
    listener: usize,
    req: &mut RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'c>,
) -> Result<Disposition, GatewayError> {
    check_singletons(req, &cfg.compiled.singleton_headers)?;
    check_declared_length(req, ex.limits.max_body_bytes)?;
    // `let … else`: an `ok_or` would build (and drop) the error every time.
    let Some(listener) = cfg.compiled.listeners.get(listener) else {
        return Err(GatewayError::Unavailable("listener is not configured"));
    };
    normalize_path(req, listener.path)?;
    if let Some(filter) = &listener.ip_filter {
        policy::filter_ip(&shard.edge, filter, &cfg.compiled, req, ex)?;
    }
    let (route_id, params) = route_request(&cfg.compiled, listener, req)?;
    ex.seen.route = Some(route_id);
    let Some(route) = cfg.compiled.routes.get(route_id) else {
        return Err(GatewayError::Unavailable("route is not configured"));
    };
    let edge = &route.edge;
    if let Some(cors) = &edge.cors {
        if let Some(answered) =
            out_of_line(policy::cors(&shard.edge, cors, req, client, ex)).await?
        {
            return Ok(answered);
        }
    }
    if let Some(filter) = &edge.ip_filter {
        policy::filter_ip(&shard.edge, filter, &cfg.compiled, req, ex)?;
    }
    // Identity headers from the client are dropped on every route (see
    // Exchange::identity_headers); those of the established caller are added.
    let mut claims = Vec::new();
    if let Some(allowed) = &route.auth {
        let peer_chain = client.stream.peer_certificates();
        let identity = match authenticate(&cfg.compiled, allowed, req, peer_chain, Some(shard)) {
            Ok(id) => Ok(id),
            Err(e) => out_of_line(introspect(&cfg.compiled, allowed, req, shard))
                .await
                .unwrap_or(Err(e)),
        };
        let identity = identity.and_then(|id| {
            auth::authorize(&id, &route.scopes, &route.roles)
                .map_err(denied)
                .map(|()| id)
        });
        count_auth(shard, allowed, &identity);
        let identity = identity?;
        // Read only by the access log and spans: no copy per request otherwise.
        if cfg.compiled.access_log.is_some() || cfg.compiled.tracing.is_some() {
            ex.seen.subject = subject(&identity.claims);
        }
        ex.add_headers = identity.headers;
        claims = identity.claims;
    }
    if !route.rate_limits.is_empty() {
        let plan = &cfg.compiled.rate_limiting;
        let applied = out_of_line(crate::ratelimit::stage::apply(
            shard, plan, route, req, ex, &claims,
        ))
        .await;
        ex.seen.rate_limit = Some(match &applied {
            Ok(_) => crate::metrics::LimitDecision::Admitted,
            Err(_) => crate::metrics::LimitDecision::Refused,
        });
        let limit_headers = applied?;
        // The listener's own lines (HSTS) stay in front.
        if ex.response_headers.is_empty() {
            ex.response_headers = limit_headers;
        } else {
            ex.response_headers.push_str(&limit_headers);
        }
    }
    if let Some(plan) = &edge.validate {
        let checked = out_of_line(crate::validate::validate(plan, req, client, ex)).await;
        if checked.is_err() {
            policy::EdgeCounters::bump(&shard.edge.counters.validation_refused);
        }
        checked?;
    }
    // Cache lookup: a stored answer ends the request here.
    if let Some(plan) = &route.cache {
        let found =
            crate::cache::lookup(shard, cfg, route, plan, &params, &claims, req, client, ex);
        if let crate::cache::Lookup::Served(d) = out_of_line(found).await? {
            return Ok(d);
        }
    }
    ex.drop_authorization = !route.keep_authorization;
    if let Some(answer) = &edge.static_response {
        return out_of_line(answer.answer(req, client, ex)).await;
    }
    // Request transformation; the edited head replaces the request's.
    if let Some(plan) = &route.body {
        let stage = crate::transform::request(plan, req, &params, &claims, client, ex);
        if let Some(edited) = out_of_line(stage).await? {
            *req = edited;
        }
    }
    let req = &*req;
    // Everything above runs once per request; a composite fans out from here.
    if let Some(plan) = &route.aggregate {
        let inputs = aggregate::Inputs {
            req,
            params: &params,
            claims: &claims,
        };
        return out_of_line(aggregate::serve(shard, cfg, plan, inputs, client, ex)).await;
    }
    let upstream = match &edge.split {
        Some(split) => {
            let key = split.sticky.as_ref().and_then(|on| {
                let ip = policy::client_address(&cfg.compiled, req, ex);
                crate::resilience::balance::request_key(on, req, ip, &claims)
            });
            split.pick(key, shard.edge.random())
        }
        None => match route.upstream {
            Some(up) => up,
            None => return Err(GatewayError::Unavailable("route has no upstream")),
        },
    };
    let stripped;
    let query = match req.query() {
        Some(q) if !route.strip_query.is_empty() => {
            stripped = auth::strip_query_params(q, &route.strip_query);
            stripped.as_deref()
        }
        q => q,
    };
    // The target as sent when nothing changes it (no copy); else built.
    let target: std::borrow::Cow<'_, str> = match req.origin_target() {
        Some(t)
            if matches!(route.path_edit, crate::compiled::PathEdit::Keep)
                && route.strip_query.is_empty() =>
        {
            t.into()
        }
        _ => upstream_target(&route.path_edit, req.path(), query, &params).into(),
    };
    let target = &*target;
    let (Some(up), Some(cursor)) = (
        cfg.compiled.upstreams.get(upstream),
        cfg.cursors.get(upstream),
    ) else {
        return Err(GatewayError::Unavailable("upstream is not configured"));
    };
    // An upgrade the route accepts holds one of its tunnel slots from here
    // until the tunnel closes (or the upstream refuses the upgrade).
    let _tunnel = match &route.websocket {
        Some(plan) if plan.accepts(req) => {
            let slot = upgrade::TunnelSlot::take(shard, &route.name, plan).ok_or(
                GatewayError::Unavailable("the route's limit of open WebSocket tunnels is reached"),
            )?;
            ex.upgrade = Some(plan.idle_timeout);
            Some(slot)
        }
        _ => None,
    };
    if let crate::config::Balance::ConsistentHash(on) = &up.balance {
        ex.balance_key = crate::resilience::balance::request_key(on, req, ex.client_ip, &claims);
    }
    if let Some(transcoder) = &route.grpc {
        let call = crate::grpc::stage::Call {
            route,
            transcoder,
            up,
            cursor,
            target,
        };
        return out_of_line(crate::grpc::stage::serve(shard, call, req, client, ex)).await;
    }
    if let Some(mirror) = &edge.mirror {
        if let Some(shadow) = cfg.compiled.upstreams.get(mirror.upstream) {
            let st = &shard.edge;
            policy::mirror::fire(st, mirror, route_id, shadow, req, target, client, ex);
        }
    }
    // The plain try is awaited here, not through a function that only
    // chooses it: each level of async function is one more place in the
    // connection's state that a request touches.
    let result = if crate::resilience::is_plain(&route.resilience, up) {
        proxy::forward_try(
            shard,
            up,
            cursor,
            req,
            target,
            client,
            ex,
            &proxy::TryOptions::NONE,
        )
        .await
        .result
    } else {
        out_of_line(crate::resilience::forward(
            shard, cfg, route, up, cursor, req, target, client, ex,
        ))
        .await
    };
    match &route.cache {
        Some(plan) => {
            ex.seen.answered_at = None;
            out_of_line(crate::cache::finish(
                shard, route, plan, req, result, client, ex,
            ))
            .await
        }
        None => result,
    }
}

/// Refuses a request that repeats a field the config makes decisions on
/// (the fixed singletons are refused by the parser already).
pub fn check_singletons(req: &RequestHead, names: &[String]) -> Result<(), GatewayError> {
    match names.iter().find(|n| req.is_repeated(n)) {
        Some(_) => Err(GatewayError::BadRequest(
            "a header the gateway acts on was sent more than once",
        )),
        None => Ok(()),
    }
}

/// Puts the path in its normal form (see [`crate::http::path`]); routing,
/// auth, rate limits and forwarding all see that form.
pub fn normalize_path(req: &mut RequestHead, opts: PathOptions) -> Result<(), GatewayError> {
    match path::normalize(req.path(), opts).map_err(GatewayError::BadRequest)? {
        Cow::Borrowed(_) => Ok(()),
        Cow::Owned(p) => {
            req.set_path(p);
            Ok(())
        }
    }
}

/// Establishes the caller with one of the route's authenticators.
/// Uses the shard's verified-token cache when a shard is given.
pub fn authenticate(
    compiled: &Compiled,
    allowed: &[usize],
    req: &RequestHead,
    client_cert: Option<&[rustls_pki_types::CertificateDer<'static>]>,
    shard: Option<&Shard>,
) -> Result<Identity, GatewayError> {
    let header = |name: &str| req.header(name);
    let creds = Credentials {
        authorization: req.header("authorization"),
        header: &header,
        query: req.query(),
        client_cert,
    };
    let result = match shard {
        Some(s) => {
            let now_ms = crate::auth::unix_now_ms();
            let mut cache = s.token_cache.borrow_mut();
            let sets = s.jwks.borrow();
            let keys = KeyView {
                sets: Some(&sets),
                refetch: Some(&compiled.jwks_refetch),
            };
            compiled
                .auth
                .authenticate_cached(allowed, &creds, Some(&mut cache), &keys, now_ms)
        }
        None => compiled.auth.authenticate(allowed, &creds),
    };
    result.map_err(denied)
}

/// Counts an authentication decision: under the authenticator that
/// established the caller, or (a refusal) under the route's first.
fn count_auth(shard: &Shard, allowed: &[usize], identity: &Result<Identity, GatewayError>) {
    use crate::metrics::AuthResult;
    let mut m = shard.metrics.borrow_mut();
    if !m.enabled {
        return;
    }
    let first = allowed.first().copied().unwrap_or(0);
    let (i, result) = match identity {
        Ok(id) => (id.authenticator, AuthResult::Ok),
        Err(GatewayError::Unauthorized(None)) => (first, AuthResult::Missing),
        Err(GatewayError::Unauthorized(Some(_))) => (first, AuthResult::Invalid),
        Err(GatewayError::Forbidden(_)) => (first, AuthResult::Forbidden),
        Err(_) => (first, AuthResult::Unavailable),
    };
    m.auth(i, result);
}

/// Who the caller is, for the access log and spans: the token's `sub`, or
/// the API-key consumer.
fn subject(claims: &[(String, String)]) -> Option<String> {
    claims
        .iter()
        .find(|(k, _)| k == "sub" || k == "consumer")
        .map(|(_, v)| v.clone())
}

/// Tries the route's introspection authenticators, if any, on the bearer token.
async fn introspect(
    compiled: &Compiled,
    allowed: &[usize],
    req: &RequestHead,
    shard: &Shard,
) -> Option<Result<Identity, GatewayError>> {
    let header = |name: &str| req.header(name);
    let creds = Credentials {
        authorization: req.header("authorization"),
        header: &header,
        query: req.query(),
        client_cert: None,
    };
    let r = compiled
        .auth
        .introspect_bearer(
            allowed,
            &creds,
            &shard.token_cache,
            crate::auth::unix_now_ms(),
        )
        .await?;
    Some(r.map_err(denied))
}

fn denied(d: Denied) -> GatewayError {
    match d {
        Denied::Missing => GatewayError::Unauthorized(None),
        Denied::Invalid(why) => GatewayError::Unauthorized(Some(why)),
        Denied::Forbidden(why) => GatewayError::Forbidden(why),
        Denied::Unavailable => {
            GatewayError::Unavailable("the identity provider could not be reached")
        }
    }
}

/// Refuses a declared body larger than the limit before any upstream is contacted.
pub fn check_declared_length(req: &RequestHead, max_body_bytes: u64) -> Result<(), GatewayError> {
    match req.framing {
        Framing::Length(n) if n > max_body_bytes => Err(GatewayError::PayloadTooLarge),
        _ => Ok(()),
    }
}

/// Finds the route for a request; a CORS preflight goes to the route of
/// the method it asks for when that route has CORS.
fn route_request(
    compiled: &Compiled,
    listener: &ListenerPlan,
    req: &RequestHead,
) -> Result<(usize, Vec<Range<usize>>), GatewayError> {
    if let Some(method) = policy::preflight_method(req) {
        if let Ok((id, params)) = route_as(listener, req, method) {
            if compiled
                .routes
                .get(id)
                .is_some_and(|r| r.edge.cors.is_some())
            {
                return Ok((id, params));
            }
        }
    }
    route(listener, req)
}

/// Finds the route for a request on a listener.
pub fn route(
    listener: &ListenerPlan,
    req: &RequestHead,
) -> Result<(usize, Vec<Range<usize>>), GatewayError> {
    route_as(listener, req, req.method())
}

/// Finds the route a request would take with `method`.
fn route_as(
    listener: &ListenerPlan,
    req: &RequestHead,
    method: &str,
) -> Result<(usize, Vec<Range<usize>>), GatewayError> {
    let host = req.host_str();
    let facts = RequestFacts {
        method,
        path: req.path(),
        host,
        header: |name: &str| req.header(name),
    };
    match listener.router.lookup(&facts) {
        Lookup::Found { route, params } => match listener.route_ids.get(route) {
            Some(&id) => Ok((id, params)),
            None => Err(GatewayError::NotFound),
        },
        Lookup::MethodNotAllowed { allow } => Err(GatewayError::MethodNotAllowed(allow)),
        Lookup::NotFound => Err(GatewayError::NotFound),
    }
}
