//! Edge policies a route switches on in config, each a stage of the
//! pipeline ([`crate::pipeline`] lists their order): CORS ([`cors`]), IP
//! filtering ([`ip_filter`]), static responses ([`static_response`]),
//! traffic splitting ([`split`]) and mirroring ([`mirror`]). JSON Schema
//! validation is [`crate::validate`].
//!
//! Each policy compiles its part of the config into a plan here
//! ([`EdgePlan`], one per route); the per-shard state (random numbers,
//! mirror slots, counters) is [`ShardEdge`].

pub mod cors;
pub mod ip_filter;
pub mod mirror;
pub mod split;
pub mod static_response;

use crate::config::{self, Gateway};
use crate::error::GatewayError;
use crate::http::{Conn, RequestHead};
use crate::proxy::{Disposition, Exchange};
use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

/// A route's edge policies, compiled; all `None` for a plain route.
#[derive(Debug, Clone, Default)]
pub struct EdgePlan {
    /// CORS (the route's own, or the top-level default).
    pub cors: Option<Arc<cors::CorsPlan>>,
    /// Client address lists.
    pub ip_filter: Option<ip_filter::IpFilterPlan>,
    /// A fixed answer instead of an upstream.
    pub static_response: Option<static_response::StaticPlan>,
    /// Weighted upstream choice.
    pub split: Option<split::SplitPlan>,
    /// Shadow copies.
    pub mirror: Option<mirror::MirrorPlan>,
    /// JSON Schema validation.
    pub validate: Option<Arc<crate::validate::ValidatePlan>>,
}

/// Compiles the edge policies of route `r`; `default_cors` is the
/// top-level `cors`, compiled once.
pub fn compile_route(
    r: &config::Route,
    default_cors: Option<&Arc<cors::CorsPlan>>,
    upstream_index: &dyn Fn(&str) -> Option<usize>,
) -> Result<EdgePlan, String> {
    let cors = match &r.cors {
        // No origin at all: CORS is off on this route (the default too).
        Some(c) if c.allow_origins.is_empty() => None,
        Some(c) => Some(Arc::new(cors::CorsPlan::compile(c)?)),
        None => default_cors.cloned(),
    };
    Ok(EdgePlan {
        cors,
        ip_filter: r
            .ip_filter
            .as_ref()
            .map(ip_filter::IpFilterPlan::compile)
            .transpose()
            .map_err(|e| format!("ip_filter: {e}"))?,
        static_response: r
            .static_response
            .as_ref()
            .map(static_response::StaticPlan::compile)
            .transpose()
            .map_err(|e| format!("static_response: {e}"))?,
        split: r
            .split
            .as_ref()
            .map(|s| split::SplitPlan::compile(s, upstream_index))
            .transpose()
            .map_err(|e| format!("split: {e}"))?,
        mirror: r
            .mirror
            .as_ref()
            .map(|m| mirror::MirrorPlan::compile(m, upstream_index))
            .transpose()
            .map_err(|e| format!("mirror: {e}"))?,
        validate: r
            .validate
            .as_ref()
            .map(crate::validate::ValidatePlan::compile)
            .transpose()?
            .map(Arc::new),
    })
}

/// Where a config problem is, for its position in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchor {
    /// The top-level field.
    Top(&'static str),
    /// `listeners[i].<field>`.
    Listener(usize, &'static str),
    /// `routes[i].<field>`.
    Route(usize, &'static str),
}

/// A problem: where, the dotted field, and what is wrong.
pub type Problem = (Anchor, String, String);

/// Problems in the edge-policy settings of a config.
pub fn check(g: &Gateway) -> Vec<Problem> {
    let mut out: Vec<Problem> = Vec::new();
    if let Some(c) = &g.cors {
        for (f, m) in cors::check(c) {
            out.push((Anchor::Top("cors"), format!("cors.{f}"), m));
        }
    }
    for (i, l) in g.listeners.iter().enumerate() {
        if let Some(f) = &l.ip_filter {
            ip_filter_problems(f, &mut |field, m| {
                out.push((
                    Anchor::Listener(i, "ip_filter"),
                    format!("listeners[{i}].ip_filter.{field}"),
                    m,
                ))
            });
        }
    }
    for (i, r) in g.routes.iter().enumerate() {
        let field = |f: &str| format!("routes[{i}].{f}");
        if let Some(c) = &r.cors {
            for (f, m) in cors::check(c) {
                out.push((Anchor::Route(i, "cors"), field(&format!("cors.{f}")), m));
            }
        }
        if let Some(f) = &r.ip_filter {
            ip_filter_problems(f, &mut |name, m| {
                out.push((
                    Anchor::Route(i, "ip_filter"),
                    field(&format!("ip_filter.{name}")),
                    m,
                ))
            });
        }
        if let Some(s) = &r.static_response {
            if let Err(e) = static_response::StaticPlan::compile(s) {
                out.push((
                    Anchor::Route(i, "static_response"),
                    field("static_response"),
                    e,
                ));
            }
        }
        let known = |n: &str| g.upstreams.keys().position(|k| k == n);
        if let Some(s) = &r.split {
            if r.upstream.is_none() {
                out.push((
                    Anchor::Route(i, "split"),
                    field("split"),
                    "a split needs the route's `upstream` (the default it replaces); a composite or static route cannot split".into(),
                ));
            }
            if let Err(e) = split::SplitPlan::compile(s, &known) {
                out.push((Anchor::Route(i, "split"), field("split.weights"), e));
            }
        }
        if let Some(m) = &r.mirror {
            if r.upstream.is_none() {
                out.push((
                    Anchor::Route(i, "mirror"),
                    field("mirror"),
                    "only a proxied route (with `upstream`) can be mirrored".into(),
                ));
            }
            if let Err(e) = mirror::MirrorPlan::compile(m, &known) {
                out.push((Anchor::Route(i, "mirror"), field("mirror"), e));
            }
            if g.upstreams
                .get(&m.upstream)
                .is_some_and(|u| u.tls.is_some())
            {
                out.push((
                    Anchor::Route(i, "mirror"),
                    field("mirror.upstream"),
                    "copies are sent over plain HTTP; the mirror upstream cannot use tls".into(),
                ));
            }
        }
        if let Some(v) = &r.validate {
            for (f, m) in crate::validate::check(v) {
                out.push((
                    Anchor::Route(i, "validate"),
                    field(&format!("validate.{f}")),
                    m,
                ));
            }
        }
    }
    out
}

fn ip_filter_problems(f: &config::IpFilter, push: &mut dyn FnMut(&str, String)) {
    for (name, list) in [("allow", &f.allow), ("deny", &f.deny)] {
        for bad in ip_filter::bad_entries(list) {
            push(name, format!("{bad:?} is not an address or CIDR block"));
        }
    }
}

/// What the edge policies count on one shard (reported in `/metrics`).
#[derive(Debug, Default)]
pub struct EdgeCounters {
    /// Mirror copies sent.
    pub mirror_sent: Cell<u64>,
    /// Mirror copies that got an answer head.
    pub mirror_answered: Cell<u64>,
    /// Mirror copies abandoned at their timeout.
    pub mirror_timeout: Cell<u64>,
    /// Mirror copies that could not be sent or got no answer.
    pub mirror_failed: Cell<u64>,
    /// Requests not mirrored: the route's copies in flight were at `max_concurrency`.
    pub mirror_skipped_busy: Cell<u64>,
    /// Requests not mirrored: the body was too large or not in memory.
    pub mirror_skipped_body: Cell<u64>,
    /// Requests refused by an IP filter.
    pub ip_refused: Cell<u64>,
    /// CORS preflights answered 204.
    pub preflight_allowed: Cell<u64>,
    /// CORS preflights refused (403).
    pub preflight_refused: Cell<u64>,
    /// Requests refused by validation (400 or 415).
    pub validation_refused: Cell<u64>,
}

impl EdgeCounters {
    /// Adds one.
    pub fn bump(c: &Cell<u64>) {
        c.set(c.get() + 1);
    }

    /// The counters' values, by label.
    pub fn report(&self) -> EdgeReport {
        EdgeReport {
            mirror: [
                ("sent", self.mirror_sent.get()),
                ("answered", self.mirror_answered.get()),
                ("timeout", self.mirror_timeout.get()),
                ("failed", self.mirror_failed.get()),
                ("skipped_busy", self.mirror_skipped_busy.get()),
                ("skipped_body", self.mirror_skipped_body.get()),
            ],
            refused: [
                ("ip_filter", self.ip_refused.get()),
                ("cors_preflight", self.preflight_refused.get()),
                ("validation", self.validation_refused.get()),
            ],
            preflights: self.preflight_allowed.get(),
        }
    }
}

/// A shard's edge-policy counters, as reported to the admin side.
#[derive(Debug, Clone, Copy, Default)]
pub struct EdgeReport {
    /// Mirror copies by outcome.
    pub mirror: [(&'static str, u64); 6],
    /// Requests refused, by policy.
    pub refused: [(&'static str, u64); 3],
    /// CORS preflights answered 204.
    pub preflights: u64,
}

/// A shard's edge-policy state.
#[derive(Debug)]
pub struct ShardEdge {
    rng: Cell<u64>,
    /// Mirror copies in flight, by route id.
    slots: RefCell<Vec<Rc<Cell<usize>>>>,
    /// Counters, shared with the mirror tasks.
    pub counters: Rc<EdgeCounters>,
}

impl ShardEdge {
    /// State for shard `id`.
    pub fn new(id: usize) -> ShardEdge {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        ShardEdge {
            rng: Cell::new(split::mix(t ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1),
            slots: RefCell::new(Vec::new()),
            counters: Rc::new(EdgeCounters::default()),
        }
    }

    /// A pseudo-random number (xorshift64*): cheap, shard-local, not for secrets.
    pub fn random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The in-flight count of route `route`'s mirror copies.
    fn mirror_slots(&self, route: usize) -> Rc<Cell<usize>> {
        let mut slots = self.slots.borrow_mut();
        while slots.len() <= route {
            slots.push(Rc::new(Cell::new(0)));
        }
        slots.get(route).cloned().unwrap_or_default()
    }
}

/// The client address the filters judge: the one the rate limiter reads.
pub fn client_address(
    compiled: &crate::compiled::Compiled,
    req: &RequestHead,
    ex: &Exchange<'_>,
) -> IpAddr {
    crate::ratelimit::key::client_ip(
        ex.client_ip,
        req.header("x-forwarded-for"),
        &compiled.rate_limiting.trusted,
    )
}

/// The IP-filter stage: 403 when `filter` refuses the client.
pub fn filter_ip(
    state: &ShardEdge,
    filter: &ip_filter::IpFilterPlan,
    compiled: &crate::compiled::Compiled,
    req: &RequestHead,
    ex: &Exchange<'_>,
) -> Result<(), GatewayError> {
    if filter.admits(client_address(compiled, req, ex)) {
        return Ok(());
    }
    EdgeCounters::bump(&state.counters.ip_refused);
    Err(GatewayError::Denied("the client address is not allowed"))
}

/// True for a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`. Its route is the one the requested
/// method would take: that method, when it is a token.
pub fn preflight_method(req: &RequestHead) -> Option<&str> {
    if req.method() != "OPTIONS" || req.header("origin").is_none() {
        return None;
    }
    req.header("access-control-request-method")
        .and_then(|m| std::str::from_utf8(m).ok())
        .filter(|m| !m.is_empty() && m.bytes().all(config::is_token_byte))
}

/// The CORS stage. A preflight is answered here (204 with the CORS
/// headers, or 403 JSON): `Some(disposition)`. Any other request gets its
/// CORS header lines added to `ex.response_headers`: `None`.
pub async fn cors(
    state: &ShardEdge,
    plan: &cors::CorsPlan,
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
) -> Result<Option<Disposition>, GatewayError> {
    let Some(method) = preflight_method(req) else {
        ex.cors_owned = true;
        plan.actual_headers(req.header("origin"), &mut ex.response_headers);
        return Ok(None);
    };
    let origin = req
        .header("origin")
        .and_then(|o| std::str::from_utf8(o).ok())
        .unwrap_or("");
    let asked = req
        .header("access-control-request-headers")
        .and_then(|h| std::str::from_utf8(h).ok());
    match plan.check_preflight(origin, method, asked) {
        Ok(lines) => {
            EdgeCounters::bump(&state.counters.preflight_allowed);
            Ok(Some(
                static_response::answer_empty(204, &lines, req, client, ex).await,
            ))
        }
        Err(why) => {
            EdgeCounters::bump(&state.counters.preflight_refused);
            ex.response_headers.push_str("vary: Origin\r\n");
            Err(GatewayError::Denied(why.reason()))
        }
    }
}
