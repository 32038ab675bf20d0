//! The response cache: a pipeline stage between validation and request
//! transformation. `GET`/`HEAD` answers of a route with `cache` are kept
//! per shard in an S3-FIFO store bounded in bytes ([`store`]), keyed as the
//! route says ([`key`]), fresh as the upstream's `Cache-Control` or the
//! route's `ttl_s` say ([`control`]).
//!
//! The stage, in order: [`lookup`] decides (`BYPASS`, or a stored answer
//! `HIT`/`STALE` written by [`write_answer`], or a fetch); a fetch runs the
//! usual forwarding with a [`Tap`] in the exchange, which reads the
//! response head ([`Tap::on_head`]) and is fed the body as it streams to
//! the client, keeping at most `max_object_bytes`; then [`finish`] stores a
//! complete answer, serves a stale one instead of an upstream failure
//! (`stale-if-error`), and wakes the requests that waited for this fetch.
//!
//! Request coalescing: the first miss of a key on a shard fetches; other
//! misses of that key wait (at most `coalesce_wait_ms`) and are then served
//! from the store, or go upstream themselves when the answer was not
//! stored.
//!
//! `stale-while-revalidate`: the first request that finds an entry stale
//! within the window is answered `STALE` at once and then, on its own task
//! and without a client, fetches the entry again ([`refresh`]); while that
//! fetch runs, other requests for the key are answered `STALE` too.
//!
//! Memory: `max_bytes` is a route's budget for the whole gateway; each shard
//! keeps its own store of `max_bytes / shards` for the route (no sharing,
//! no lock), so the bound holds however many keys arrive.
//!
//! Composition with other response stages: the store keeps the answer as
//! a client that accepts no compression receives it. On a route with
//! response transformation or compression the [`Tap`] is fed by
//! [`crate::transform::respond`] with the transformed head and the body
//! before compression; a hit leaves through one function, [`write_answer`],
//! which compresses it for the client when the route has `compression`.
//! A stale entry on a route that transforms or splits its requests is
//! fetched again in line (`EXPIRED`), not behind the stale answer, so what
//! is stored is always what the route's clients get.

pub mod control;
pub mod key;
mod refresh;
pub mod store;

use crate::compiled::RoutePlan;
use crate::compress::CompressPlan;
use crate::config::{Cache, CacheQuery};
use crate::error::{reason_phrase, GatewayError};
use crate::http::head::is_hop_by_hop;
use crate::http::{Conn, Framing, Parsed, RequestHead, ResponseHead};
use crate::proxy::{Disposition, Exchange};
use crate::shard::{Shard, ShardConfig};
use control::Directives;
use key::KeyPlan;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write as _;
use std::ops::Range;
use std::rc::Rc;
use std::task::Waker;
use std::time::{Duration, Instant};
use store::Store;

/// A route's compiled cache settings.
#[derive(Debug, Clone)]
pub struct CachePlan {
    /// Cached statuses and their default lifetime, seconds.
    pub ttl_s: Vec<(u16, u64)>,
    /// Bytes for the route, all shards together.
    pub max_bytes: u64,
    /// Largest body stored.
    pub max_object_bytes: u64,
    /// The key's parts.
    pub key: KeyPlan,
    /// A client's `no-cache` bypasses the cache.
    pub client_bypass: bool,
    /// Default `stale-while-revalidate`, seconds.
    pub stale_while_revalidate_s: u64,
    /// Default `stale-if-error`, seconds.
    pub stale_if_error_s: u64,
    /// Store answers with `Set-Cookie`.
    pub cache_set_cookie: bool,
    /// Cache for requests with `Authorization`.
    pub cache_authorized: bool,
    /// One answer for every caller of an authenticated route.
    pub shared: bool,
    /// Longest wait for another request's fetch of the same key.
    pub coalesce_wait: Duration,
}

impl CachePlan {
    /// Compiles a route's `cache` field.
    pub fn compile(c: &Cache) -> CachePlan {
        CachePlan {
            ttl_s: c.ttl_s.iter().map(|(&s, &t)| (s, t)).collect(),
            max_bytes: c.max_bytes,
            max_object_bytes: c.max_object_bytes,
            key: KeyPlan {
                method: c.key.method,
                host: c.key.host,
                query: c.key.query.clone(),
                headers: c
                    .key
                    .headers
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
            },
            client_bypass: c.client_no_cache_bypass,
            stale_while_revalidate_s: c.stale_while_revalidate_s,
            stale_if_error_s: c.stale_if_error_s,
            cache_set_cookie: c.cache_set_cookie,
            cache_authorized: c.cache_authorized,
            shared: c.shared,
            coalesce_wait: Duration::from_millis(c.coalesce_wait_ms),
        }
    }
}

/// Problems of a route's `cache` field: (field searched for the position,
/// field path under the route, why).
pub fn check(c: &Cache, composite: bool) -> Vec<(&'static str, &'static str, &'static str)> {
    let mut out = Vec::new();
    if composite {
        out.push((
            "cache",
            "cache",
            "a composite route cannot be cached (give it an `upstream`)",
        ));
    }
    if c.ttl_s.is_empty() || c.ttl_s.keys().any(|s| !(200..=599).contains(s)) {
        out.push((
            "ttl_s",
            "cache.ttl_s",
            "list at least one status between 200 and 599",
        ));
    }
    if c.max_bytes == 0 || c.max_object_bytes == 0 || c.max_object_bytes > c.max_bytes {
        out.push((
            "max_object_bytes",
            "cache.max_object_bytes",
            "max_bytes and max_object_bytes must be at least 1, and max_object_bytes at most max_bytes",
        ));
    }
    let token = |h: &String| !h.is_empty() && h.bytes().all(crate::config::is_token_byte);
    if !c.key.headers.iter().all(token) {
        out.push((
            "headers",
            "cache.key.headers",
            "header names must be tokens",
        ));
    }
    if matches!(&c.key.query, CacheQuery::Only(names) if names.is_empty()) {
        out.push((
            "query",
            "cache.key.query",
            "Only needs at least one parameter name (or use Ignore)",
        ));
    }
    if c.coalesce_wait_ms == 0 {
        out.push((
            "coalesce_wait_ms",
            "cache.coalesce_wait_ms",
            "must be at least 1",
        ));
    }
    out
}

/// What `X-Cache-Status` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Served fresh from the store.
    Hit,
    /// Not in the store: fetched.
    Miss,
    /// Not looked up (method, `Authorization`, client `no-cache`, ...).
    Bypass,
    /// In the store but stale: fetched again.
    Expired,
    /// Served stale from the store (`stale-while-revalidate`, `stale-if-error`).
    Stale,
}

impl Status {
    /// The header value.
    pub fn label(self) -> &'static str {
        match self {
            Status::Hit => "HIT",
            Status::Miss => "MISS",
            Status::Bypass => "BYPASS",
            Status::Expired => "EXPIRED",
            Status::Stale => "STALE",
        }
    }

    /// Every status, in metric order.
    pub const ALL: [Status; 5] = [
        Status::Hit,
        Status::Miss,
        Status::Bypass,
        Status::Expired,
        Status::Stale,
    ];
}

/// A stored answer.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Header lines (`name: value\r\n`) as they go to clients, without
    /// framing, `Age` and per-request fields.
    pub head: Vec<u8>,
    /// The body.
    pub body: Vec<u8>,
    /// When it was stored.
    pub stored_at: Instant,
    /// The upstream's `Age` when it was stored.
    pub age_at_store: u64,
    /// Freshness lifetime, seconds.
    pub fresh_s: u64,
    /// `stale-while-revalidate` window after that, seconds.
    pub swr_s: u64,
    /// `stale-if-error` window after that, seconds.
    pub sie_s: u64,
}

impl Answer {
    /// Its age at `now`, seconds.
    pub fn age(&self, now: Instant) -> u64 {
        self.age_at_store + now.saturating_duration_since(self.stored_at).as_secs()
    }

    /// How long past its freshness it is at `now` (`None`: still fresh).
    fn stale_for(&self, now: Instant) -> Option<u64> {
        let lived = self.age_at_store * 1000
            + now.saturating_duration_since(self.stored_at).as_millis() as u64;
        let fresh_ms = self.fresh_s * 1000;
        (lived >= fresh_ms).then(|| (lived - fresh_ms) / 1000)
    }

    fn bytes(&self) -> usize {
        self.head.len() + self.body.len() + std::mem::size_of::<Answer>()
    }
}

/// One store entry: an answer, or the field names the answers under this
/// key vary on (the answers are then under [`key::variant`] keys).
enum Stored {
    Answer {
        answer: Rc<Answer>,
        resource: Box<str>,
    },
    Vary {
        names: Vec<String>,
        resource: Box<str>,
    },
}

impl Stored {
    fn resource(&self) -> &str {
        match self {
            Stored::Answer { resource, .. } | Stored::Vary { resource, .. } => resource,
        }
    }
}

/// One fetch other requests of the same key wait for.
#[derive(Default)]
struct Flight {
    done: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl Flight {
    fn land(&self) {
        self.done.set(true);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// One route's cache on one shard.
struct RouteCache {
    store: Store<Stored>,
    max_bytes: u64,
    query: CacheQuery,
    flights: HashMap<String, Rc<Flight>>,
    counts: Counts,
}

/// Requests per [`Status`].
#[derive(Default)]
struct Counts([u64; 5]);

impl Counts {
    fn add(&mut self, s: Status) {
        if let Some(c) = self.0.get_mut(s as usize) {
            *c += 1;
        }
    }
}

impl RouteCache {
    fn flight(&mut self, key: &str) -> Option<Rc<Flight>> {
        self.flights.get(key).filter(|f| !f.done.get()).cloned()
    }

    fn take_off(&mut self, key: &str) -> Rc<Flight> {
        if self.flights.len() >= 4096 {
            self.flights.retain(|_, f| !f.done.get());
        }
        let f = Rc::new(Flight::default());
        self.flights.insert(key.to_string(), f.clone());
        f
    }

    /// The answer for `primary` that fits `req` (resolving `Vary`).
    fn find(&mut self, primary: &str, req: &RequestHead) -> Option<Rc<Answer>> {
        let names = match self.store.get(primary)? {
            Stored::Answer { answer, .. } => return Some(answer.clone()),
            Stored::Vary { names, .. } => names.clone(),
        };
        let k = key::variant(primary, &names, req);
        match self.store.get(&k)? {
            Stored::Answer { answer, .. } => Some(answer.clone()),
            Stored::Vary { .. } => None,
        }
    }

    fn put(&mut self, t: &Tap, answer: Answer, vary: Vec<String>, req: &RequestHead) {
        let size = answer.bytes();
        let answer = Rc::new(answer);
        let resource: Box<str> = t.resource.as_str().into();
        if vary.is_empty() {
            self.store
                .insert(&t.key, Stored::Answer { answer, resource }, size);
            return;
        }
        let k = key::variant(&t.key, &vary, req);
        let names_bytes = vary.iter().map(String::len).sum::<usize>() + 64;
        let marker = Stored::Vary {
            names: vary,
            resource: resource.clone(),
        };
        self.store.insert(&t.key, marker, names_bytes);
        self.store
            .insert(&k, Stored::Answer { answer, resource }, size);
    }
}

/// The caches of one shard, per route name.
#[derive(Default)]
pub struct Stores {
    routes: HashMap<String, RouteCache>,
}

impl Stores {
    fn route(&mut self, name: &str, plan: &CachePlan, shards: usize) -> &mut RouteCache {
        let share = (plan.max_bytes / shards.max(1) as u64) as usize;
        let stale = self
            .routes
            .get(name)
            .is_some_and(|r| r.max_bytes != plan.max_bytes || r.query != plan.key.query);
        if stale {
            self.routes.remove(name);
        }
        self.routes
            .entry(name.to_string())
            .or_insert_with(|| RouteCache {
                store: Store::new(share),
                max_bytes: plan.max_bytes,
                query: plan.key.query.clone(),
                flights: HashMap::new(),
                counts: Counts::default(),
            })
    }

    /// Drops the caches of routes that are no longer cached in `compiled`
    /// (after a reload), and their memory with them.
    pub fn keep_routes_of(&mut self, compiled: &crate::compiled::Compiled) {
        self.routes.retain(|name, _| {
            compiled
                .routes
                .iter()
                .any(|r| r.cache.is_some() && r.name == *name)
        });
    }

    /// Removes the entries a purge names; returns how many.
    pub fn purge(&mut self, p: &Purge) -> u64 {
        let mut n = 0;
        for (name, rc) in &mut self.routes {
            if p.route.as_ref().is_some_and(|r| r != name) {
                continue;
            }
            let plan = KeyPlan {
                method: false,
                host: false,
                query: rc.query.clone(),
                headers: Vec::new(),
            };
            let exact = match &p.target {
                PurgeTarget::Key(k) => {
                    let (path, query) = match k.split_once('?') {
                        Some((p, q)) => (p, Some(q)),
                        None => (k.as_str(), None),
                    };
                    Some(key::resource(&plan, path, query))
                }
                PurgeTarget::Prefix(_) => None,
            };
            n += rc.store.retain(|_, v| match (&p.target, &exact) {
                (_, Some(e)) => v.resource() != e,
                (PurgeTarget::Prefix(pre), None) => !v.resource().starts_with(pre.as_str()),
                _ => true,
            }) as u64;
        }
        n
    }

    /// Gauges and counters per route, for `/metrics`.
    pub fn report(&self) -> Vec<CacheReport> {
        let mut out: Vec<CacheReport> = self
            .routes
            .iter()
            .map(|(name, rc)| CacheReport {
                route: name.clone(),
                bytes: rc.store.bytes() as u64,
                entries: rc.store.len() as u64,
                capacity: rc.store.capacity() as u64,
                counts: rc.counts.0,
            })
            .collect();
        out.sort_by(|a, b| a.route.cmp(&b.route));
        out
    }
}

/// One route's cache on one shard, as reported.
#[derive(Debug, Clone)]
pub struct CacheReport {
    /// Route name.
    pub route: String,
    /// Bytes held.
    pub bytes: u64,
    /// Entries held.
    pub entries: u64,
    /// The shard's byte budget for the route.
    pub capacity: u64,
    /// Requests per [`Status`] (in [`Status::ALL`] order).
    pub counts: [u64; 5],
}

/// What a purge removes.
#[derive(Debug, Clone)]
pub struct Purge {
    /// Only this route's cache (`None`: every route's).
    pub route: Option<String>,
    /// Which entries.
    pub target: PurgeTarget,
}

/// Which entries a purge removes.
#[derive(Debug, Clone)]
pub enum PurgeTarget {
    /// Every variant of one path and query (the query is normalised as the
    /// route's key does).
    Key(String),
    /// Every entry whose path (and query) starts with this.
    Prefix(String),
}

/// The cache's part in one proxied request: what to store under which
/// key, fed by the exchange as the answer streams to the client.
pub struct Tap {
    key: String,
    resource: String,
    status: Status,
    stale: Option<Rc<Answer>>,
    flight: Option<Rc<Flight>>,
    max_object: usize,
    plan: TapPlan,
    pending: Option<Pending>,
    body: Vec<u8>,
    over: bool,
    complete: bool,
}

/// The settings a tap reads at the response head.
struct TapPlan {
    ttl_s: Vec<(u16, u64)>,
    swr_s: u64,
    sie_s: u64,
    set_cookie: bool,
}

/// A response head found storable, waiting for its body.
struct Pending {
    status: u16,
    head: Vec<u8>,
    age: u64,
    fresh_s: u64,
    swr_s: u64,
    sie_s: u64,
    vary: Vec<String>,
}

impl Tap {
    /// Reads the upstream's response head; true when the answer must be
    /// held back (a 5xx while a stale answer may stand in for it).
    pub fn on_head(&mut self, resp: &ResponseHead, req: &RequestHead) -> bool {
        self.pending = None;
        self.body.clear();
        self.over = false;
        self.complete = false;
        if resp.status >= 500 && self.stale_usable(Instant::now()).is_some() {
            return true;
        }
        self.pending = self.storable(resp, req);
        if let (Some(_), Framing::Length(n)) = (&self.pending, resp.framing) {
            if n > self.max_object as u64 {
                self.pending = None;
            } else {
                self.body.reserve(n as usize);
            }
        }
        false
    }

    fn storable(&self, resp: &ResponseHead, req: &RequestHead) -> Option<Pending> {
        if req.method() != "GET" {
            return None;
        }
        let default_ttl = self
            .plan
            .ttl_s
            .iter()
            .find(|(s, _)| *s == resp.status)
            .map(|&(_, t)| t)?;
        let d = Directives::parse(
            resp.headers()
                .filter(|(n, _)| n.eq_ignore_ascii_case(b"cache-control"))
                .map(|(_, v)| v),
        );
        if d.no_store || d.private {
            return None;
        }
        if !self.plan.set_cookie && resp.header("set-cookie").is_some() {
            return None;
        }
        let mut vary = Vec::new();
        for (_, v) in resp
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"vary"))
        {
            for name in String::from_utf8_lossy(v).split(',') {
                let name = name.trim().to_ascii_lowercase();
                if name == "*" {
                    return None;
                }
                if !name.is_empty() && !vary.contains(&name) {
                    vary.push(name);
                }
            }
        }
        let fresh_s = if d.no_cache {
            0
        } else {
            d.lifetime().unwrap_or(default_ttl)
        };
        let stale_ok = !d.must_revalidate && !d.no_cache;
        let swr_s = if stale_ok {
            d.stale_while_revalidate.unwrap_or(self.plan.swr_s)
        } else {
            0
        };
        let sie_s = if stale_ok {
            d.stale_if_error.unwrap_or(self.plan.sie_s)
        } else {
            0
        };
        if fresh_s == 0 && !d.no_cache && swr_s == 0 && sie_s == 0 {
            return None;
        }
        let age = resp
            .header("age")
            .and_then(|a| std::str::from_utf8(a).ok()?.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let connection = resp.connection_names();
        let mut head = Vec::with_capacity(256);
        for (name, value) in resp.headers() {
            if is_hop_by_hop(name)
                || connection.contains(name)
                || name.eq_ignore_ascii_case(b"content-length")
                || name.eq_ignore_ascii_case(b"age")
                || name.eq_ignore_ascii_case(b"x-request-id")
                || name.eq_ignore_ascii_case(b"x-cache-status")
            {
                continue;
            }
            head.extend_from_slice(name);
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        }
        Some(Pending {
            status: resp.status,
            head,
            age,
            fresh_s,
            swr_s,
            sie_s,
            vary,
        })
    }

    /// True while the body is being kept.
    pub fn capturing(&self) -> bool {
        self.pending.is_some() && !self.over
    }

    /// The body copy finished: the kept body is complete.
    pub fn complete(&mut self) {
        self.complete = true;
    }

    fn stale_usable(&self, now: Instant) -> Option<&Rc<Answer>> {
        self.stale
            .as_ref()
            .filter(|a| a.stale_for(now).is_some_and(|s| s < a.sie_s))
    }

    fn take_answer(&mut self, now: Instant) -> Option<(Answer, Vec<String>)> {
        if !self.complete || self.over {
            return None;
        }
        let p = self.pending.take()?;
        let mut body = std::mem::take(&mut self.body);
        // What is kept is what is counted.
        body.shrink_to_fit();
        let answer = Answer {
            status: p.status,
            head: p.head,
            body,
            stored_at: now,
            age_at_store: p.age,
            fresh_s: p.fresh_s,
            swr_s: p.swr_s,
            sie_s: p.sie_s,
        };
        Some((answer, p.vary))
    }
}

impl crate::http::body::BodyTap for Tap {
    fn feed(&mut self, data: &[u8]) {
        if !self.capturing() || data.is_empty() {
            return;
        }
        if self.body.len() + data.len() > self.max_object {
            // Too large: stop keeping it, and give the memory back.
            self.over = true;
            self.body = Vec::new();
            return;
        }
        self.body.extend_from_slice(data);
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if let Some(f) = self.flight.take() {
            f.land();
        }
    }
}

/// What the lookup decided.
pub enum Lookup {
    /// The request was answered from the store.
    Served(Disposition),
    /// Forward it (with a [`Tap`] in the exchange when its answer may be stored).
    Forward,
}

/// Looks the request up: answers it from the store, or prepares its fetch.
#[allow(clippy::too_many_arguments)]
pub async fn lookup(
    shard: &Shard,
    cfg: &ShardConfig,
    route_plan: &RoutePlan,
    plan: &CachePlan,
    params: &[Range<usize>],
    claims: &[(String, String)],
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
) -> Result<Lookup, GatewayError> {
    let route = route_plan.name.as_str();
    let compress = compression_of(route_plan);
    let authenticated = route_plan.auth.is_some();
    let identity = if authenticated && !plan.shared {
        claims
            .iter()
            .find(|(k, _)| k == "sub" || k == "consumer")
            .map(|(_, v)| v.as_str())
    } else {
        None
    };
    let bypass = !matches!(req.method(), "GET" | "HEAD")
        || !matches!(req.framing, Framing::None | Framing::Length(0))
        || req.header("upgrade").is_some()
        || (authenticated && !plan.shared && identity.is_none())
        || (!plan.cache_authorized && req.header("authorization").is_some())
        || (plan.client_bypass
            && control::client_refuses(req.header("cache-control"), req.header("pragma")));
    if bypass {
        count(shard, route, plan, Status::Bypass);
        mark(ex, Status::Bypass);
        return Ok(Lookup::Forward);
    }
    let (primary, resource) = key::primary(&plan.key, req, identity);
    // A refresh behind a stale answer fetches the route's one upstream as
    // the request came; a route that transforms or splits its requests
    // fetches in line instead (as EXPIRED), so what is stored is always what
    // its clients get.
    let background_refresh = route_plan.edge.split.is_none()
        && route_plan
            .body
            .as_ref()
            .is_none_or(|b| b.request.is_none() && b.response.is_none());
    let mut waited = false;
    loop {
        let now = Instant::now();
        let step = {
            let mut stores = shard.cache.borrow_mut();
            let rc = stores.route(route, plan, shard.shards);
            let found = rc.find(&primary, req);
            let stale_for = found.as_ref().map(|a| a.stale_for(now));
            // Only a stale or missing entry needs to know of a fetch under way.
            let flight = match stale_for {
                Some(None) => None,
                _ => rc.flight(&primary),
            };
            match (found, flight) {
                (Some(a), _) if stale_for == Some(None) => {
                    rc.counts.add(Status::Hit);
                    Step::Serve(a, Status::Hit)
                }
                (Some(a), flight)
                    if background_refresh && stale_for.flatten().is_some_and(|s| s < a.swr_s) =>
                {
                    rc.counts.add(Status::Stale);
                    match flight {
                        Some(_) => Step::Serve(a, Status::Stale),
                        None => {
                            let f = rc.take_off(&primary);
                            Step::Revalidate(a, f)
                        }
                    }
                }
                (_, Some(f)) if !waited => Step::Wait(f),
                (found, _) => {
                    // This request fetches; when it waited for another fetch
                    // that was not stored, it goes on its own, not as a new
                    // fetch others wait for.
                    let flight = (!waited).then(|| rc.take_off(&primary));
                    let stale = found;
                    let status = match stale {
                        Some(_) => Status::Expired,
                        None => Status::Miss,
                    };
                    rc.counts.add(status);
                    Step::Fetch(status, stale, flight)
                }
            }
        };
        match step {
            Step::Serve(a, status) => {
                let d = write_answer(shard, req, client, ex, &a, status, compress).await;
                return Ok(Lookup::Served(d));
            }
            Step::Revalidate(a, flight) => {
                let d = write_answer(shard, req, client, ex, &a, Status::Stale, compress).await;
                let mut tap = new_tap(plan, primary, resource, Status::Expired, None, Some(flight));
                let ok = refresh::fetch(shard, cfg, route_plan, params, req, ex, &mut tap).await;
                settle(shard, route, plan, &mut tap, ok, false, req);
                return Ok(Lookup::Served(d));
            }
            Step::Wait(f) => {
                // Another request is fetching this key: wait for it, then look again.
                let landed = std::future::poll_fn(|cx| {
                    if f.done.get() {
                        std::task::Poll::Ready(())
                    } else {
                        f.wakers.borrow_mut().push(cx.waker().clone());
                        std::task::Poll::Pending
                    }
                });
                let _ = monoio::time::timeout(plan.coalesce_wait, landed).await;
                waited = true;
            }
            Step::Fetch(status, stale, flight) => {
                mark(ex, status);
                ex.cache = Some(Box::new(new_tap(
                    plan, primary, resource, status, stale, flight,
                )));
                return Ok(Lookup::Forward);
            }
        }
    }
}

fn new_tap(
    plan: &CachePlan,
    key: String,
    resource: String,
    status: Status,
    stale: Option<Rc<Answer>>,
    flight: Option<Rc<Flight>>,
) -> Tap {
    Tap {
        key,
        resource,
        status,
        stale,
        flight,
        max_object: plan.max_object_bytes.min(usize::MAX as u64) as usize,
        plan: TapPlan {
            ttl_s: plan.ttl_s.clone(),
            swr_s: plan.stale_while_revalidate_s,
            sie_s: plan.stale_if_error_s,
            set_cookie: plan.cache_set_cookie,
        },
        pending: None,
        body: Vec::new(),
        over: false,
        complete: false,
    }
}

/// What one look at the store decided.
enum Step {
    Serve(Rc<Answer>, Status),
    /// Serve the stale answer, then refresh it (this request's flight).
    Revalidate(Rc<Answer>, Rc<Flight>),
    Wait(Rc<Flight>),
    Fetch(Status, Option<Rc<Answer>>, Option<Rc<Flight>>),
}

/// After the fetch: stores the answer when it is complete and storable,
/// serves a stale answer instead of a failure when `stale-if-error`
/// allows, and lets waiting requests go on.
pub async fn finish(
    shard: &Shard,
    route_plan: &RoutePlan,
    plan: &CachePlan,
    req: &RequestHead,
    result: Result<Disposition, GatewayError>,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
) -> Result<Disposition, GatewayError> {
    let Some(mut tap) = ex.cache.take() else {
        return result;
    };
    let route = route_plan.name.as_str();
    let now = Instant::now();
    let answered = result.is_ok() && ex.response_started;
    settle(shard, route, plan, &mut tap, result.is_ok(), answered, req);
    if result.is_err() && !ex.response_started {
        if let Some(stale) = tap.stale_usable(now).cloned() {
            drop(tap);
            count(shard, route, plan, Status::Stale);
            let line = format!("x-cache-status: {}\r\n", Status::Expired.label());
            ex.response_headers = ex.response_headers.replacen(&line, "", 1);
            let compress = compression_of(route_plan);
            let d = write_answer(shard, req, client, ex, &stale, Status::Stale, compress).await;
            return Ok(d);
        }
    }
    result
}

/// Stores what the tap holds when `ok`; drops a stale entry the upstream
/// `answered` for with something not storable; ends the tap's flight.
fn settle(
    shard: &Shard,
    route: &str,
    plan: &CachePlan,
    tap: &mut Tap,
    ok: bool,
    answered: bool,
    req: &RequestHead,
) {
    let now = Instant::now();
    let mut stores = shard.cache.borrow_mut();
    let rc = stores.route(route, plan, shard.shards);
    match tap.take_answer(now) {
        Some((answer, vary)) if ok => rc.put(tap, answer, vary, req),
        // A fresh answer that may not be kept replaces the stale one.
        _ if answered && tap.status == Status::Expired => {
            rc.store.remove(&tap.key);
        }
        _ => {}
    }
    if let Some(f) = &tap.flight {
        if rc.flights.get(&tap.key).is_some_and(|g| Rc::ptr_eq(f, g)) {
            rc.flights.remove(&tap.key);
        }
    }
}

fn mark(ex: &mut Exchange<'_>, status: Status) {
    ex.response_headers.push_str("x-cache-status: ");
    ex.response_headers.push_str(status.label());
    ex.response_headers.push_str("\r\n");
}

fn count(shard: &Shard, route: &str, plan: &CachePlan, status: Status) {
    let mut stores = shard.cache.borrow_mut();
    stores.route(route, plan, shard.shards).counts.add(status);
}

/// Writes a stored answer to the client: the one place a cached response
/// is sent from.
pub async fn write_answer(
    shard: &Shard,
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
    a: &Answer,
    status: Status,
    compress: Option<&CompressPlan>,
) -> Disposition {
    let keep_alive = ex.keep_alive && !shard.shutdown.is_fired();
    // A route that compresses: the stored (uncompressed) answer goes out
    // through compression, negotiated with this client.
    if let Some(c) = compress {
        return write_compressed(c, req, client, ex, a, status, keep_alive).await;
    }
    let head_only = req.method() == "HEAD";
    let body_len = if head_only { 0 } else { a.body.len() };
    let mut out = Vec::with_capacity(a.head.len() + body_len + 160 + ex.response_headers.len());
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", a.status, reason_phrase(a.status));
    out.extend_from_slice(&a.head);
    let _ = write!(
        out,
        "age: {}\r\nx-cache-status: {}\r\ncontent-length: {}\r\nx-request-id: {}\r\n",
        a.age(Instant::now()),
        status.label(),
        a.body.len(),
        ex.request_id
    );
    out.extend_from_slice(ex.response_headers.as_bytes());
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if req.version == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&a.body);
    }
    ex.seen.status = a.status;
    ex.seen.bytes_out = out.len() as u64;
    let (r, _) = client.write(out, ex.limits.send_timeout).await;
    ex.response_started = true;
    if r.is_err() || !keep_alive {
        Disposition::Close
    } else {
        Disposition::KeepAlive
    }
}

/// The route's response compression: stored answers are kept uncompressed
/// and compressed for each client that accepts it.
fn compression_of(route: &RoutePlan) -> Option<&CompressPlan> {
    route.body.as_ref().and_then(|b| b.compression.as_ref())
}

/// [`write_answer`] on a route with compression: the stored head and body
/// go out through [`crate::compress::write_response`], which negotiates
/// the coding with this client and sets `Vary`.
async fn write_compressed(
    plan: &CompressPlan,
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
    a: &Answer,
    status: Status,
    keep_alive: bool,
) -> Disposition {
    let mut raw = Vec::with_capacity(a.head.len() + 64);
    let _ = write!(raw, "HTTP/1.1 {} {}\r\n", a.status, reason_phrase(a.status));
    raw.extend_from_slice(&a.head);
    let _ = write!(raw, "content-length: {}\r\n\r\n", a.body.len());
    let Ok(Parsed::Complete(head, _)) =
        ResponseHead::parse(&raw, crate::proxy::MAX_RESPONSE_HEAD, false)
    else {
        return Disposition::Close;
    };
    let age = a.age(Instant::now()).to_string();
    for (name, value) in [
        ("age: ", age.as_str()),
        ("x-cache-status: ", status.label()),
    ] {
        ex.response_headers.push_str(name);
        ex.response_headers.push_str(value);
        ex.response_headers.push_str("\r\n");
    }
    crate::compress::write_response(Some(plan), req, &head, &a.body, client, ex, keep_alive).await
}
