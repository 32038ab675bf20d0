//! The runtime form of a config: what shards run. Built once per load or
//! reload from a validated [`config::Gateway`](crate::config::Gateway) and
//! shared read-only by every shard; the hot path never looks at raw config.
use crate::aggregate::AggregatePlan;
use crate::auth::AuthPlan;
use crate::config::{self, AuthPolicy, Authenticator, Balance, Gateway, Shards};
use crate::http::path::PathOptions;
use crate::router::{Conditions, PathPattern, RouteSpec, Router};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

/// Client-side limits in runtime units.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Most header fields.
    pub max_headers: usize,
    /// Largest request body.
    pub max_body_bytes: u64,
    /// Deadline for a whole head once its first byte arrived.
    pub header_read_timeout: Duration,
    /// Wait allowed for the next request on a keep-alive connection.
    pub idle_timeout: Duration,
    /// Wait allowed between body reads.
    pub body_read_timeout: Duration,
    /// Wait allowed for a write to the client.
    pub send_timeout: Duration,
}

/// One upstream service.
#[derive(Debug, Clone)]
pub struct UpstreamPlan {
    /// Its index in [`Compiled::upstreams`].
    pub id: usize,
    /// Name from the config.
    pub name: String,
    /// Resolved targets.
    pub targets: Vec<SocketAddr>,
    /// Balancing policy.
    pub balance: Balance,
    /// Connect deadline.
    pub connect_timeout: Duration,
    /// Response head deadline and per-read body timeout.
    pub timeout: Duration,
    /// Idle connections kept per target and shard.
    pub max_idle: usize,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// Host-wide bound on connections per target (split into shard shares).
    pub max_connections: Option<usize>,
    /// Host-wide bound on requests waiting for a connection per target.
    pub max_queued: usize,
    /// Longest wait for a connection when a shard's share is in use.
    pub queue_timeout: Duration,
    /// Circuit breaker settings.
    pub breaker: Option<crate::resilience::breaker::BreakerSpec>,
    /// Retry policy of routes that have none of their own.
    pub retry: Option<crate::resilience::retry::RetryPlan>,
    /// Weights, the weighted round-robin schedule and the hash ring.
    pub plan: crate::resilience::balance::BalancePlan,
    /// Active health checks (run by the control side's prober).
    pub health_check: Option<config::HealthCheck>,
    /// Passive outlier ejection.
    pub outlier: Option<config::OutlierDetection>,
    /// Try every target when none is healthy instead of answering 503.
    pub panic_routing: bool,
    /// TLS towards the targets (`None`: plain).
    pub tls: Option<crate::tls::UpstreamTlsPlan>,
    /// HTTP/1.1 or HTTP/2 to the targets.
    pub protocol: config::UpstreamProtocol,
    /// HTTP/2 connection settings (used with `protocol: Http2`).
    pub http2: Http2Plan,
}

/// An upstream's HTTP/2 connection settings, compiled.
#[derive(Debug, Clone, Default)]
pub struct Http2Plan {
    /// Streams open at once on one connection.
    pub max_streams_per_connection: usize,
    /// Tells this upstream's connections apart from another upstream's to
    /// the same address (a digest of the settings that shape a connection:
    /// name, TLS, limits), so a reload that keeps them keeps the connections.
    pub key: u64,
}

impl Http2Plan {
    fn compile(name: &str, u: &config::Upstream) -> Http2Plan {
        use std::hash::{Hash, Hasher};
        let h2 = u.http2.clone().unwrap_or_default();
        let mut digest = std::collections::hash_map::DefaultHasher::new();
        let tls = format!("{:?}", u.tls);
        (name, tls, &u.targets, h2.max_streams_per_connection).hash(&mut digest);
        u.max_connections_per_target.hash(&mut digest);
        Http2Plan {
            max_streams_per_connection: h2.max_streams_per_connection,
            // 0 is the pool's own key for endpoints without an upstream.
            key: digest.finish().max(1),
        }
    }
}

/// A piece of a rewrite template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text.
    Lit(String),
    /// The value of the route's n-th path param.
    Param(usize),
}

/// How a route builds the upstream path.
#[derive(Debug, Clone)]
pub enum PathEdit {
    /// Forward the path unchanged.
    Keep,
    /// Remove this leading prefix.
    Strip(String),
    /// Build the path from a template.
    Rewrite(Vec<Piece>),
}

/// One route.
#[derive(Debug, Clone)]
pub struct RoutePlan {
    /// Name from the config.
    pub name: String,
    /// Index into [`Compiled::upstreams`]; `None` for a composite route.
    pub upstream: Option<usize>,
    /// Path edit applied before forwarding.
    pub path_edit: PathEdit,
    /// Authenticators that may establish the caller (indexes into the
    /// [`AuthPlan`]); `None` for a public route.
    pub auth: Option<Vec<usize>>,
    /// Scopes the caller must all have.
    pub scopes: Vec<String>,
    /// Roles of which the caller needs one.
    pub roles: Vec<String>,
    /// Forward the client's `Authorization` header.
    pub keep_authorization: bool,
    /// Query parameters removed before forwarding (API keys).
    pub strip_query: Vec<String>,
    /// Rate limits applied to the route, with their keys resolved.
    pub rate_limits: Vec<crate::ratelimit::plan::RouteLimit>,
    /// Send `RateLimit-*` headers on this route's responses.
    pub rate_limit_headers: bool,
    /// The parts of a composite route (instead of `upstream`).
    pub aggregate: Option<AggregatePlan>,
    /// Timeouts, retries and fallback of the route.
    pub resilience: crate::resilience::RoutePolicy,
    /// Upgrades (WebSocket) this route tunnels; `None`: upgrade fields are
    /// removed and the request proxied as a plain one.
    pub websocket: Option<crate::proxy::upgrade::UpgradePlan>,
    /// Edge policies: CORS, IP filter, static response, split, mirror, validation.
    pub edge: crate::policy::EdgePlan,
    /// The response cache of the route.
    pub cache: Option<crate::cache::CachePlan>,
    /// Transformation and compression (`None`: the route has neither).
    pub body: Option<Box<crate::transform::Plan>>,
    /// HTTP/JSON → gRPC transcoding instead of forwarding.
    pub grpc: Option<std::sync::Arc<crate::grpc::Transcoder>>,
}

/// One listener with its own route table.
#[derive(Debug)]
pub struct ListenerPlan {
    /// Name from the config.
    pub name: String,
    /// Bound address.
    pub addr: SocketAddr,
    /// Matcher over this listener's routes.
    pub router: Router,
    /// Router index → index into [`Compiled::routes`].
    pub route_ids: Vec<usize>,
    /// Client-side limits of this listener (its own or the gateway's).
    pub limits: Limits,
    /// How request paths are normalised on this listener.
    pub path: PathOptions,
    /// Most open connections, all shards together (`None`: no limit).
    pub max_connections: Option<usize>,
    /// How new connections are spread over the shards.
    pub balance: config::BalanceConnections,
    /// TLS termination (`None`: plain HTTP).
    pub tls: Option<std::sync::Arc<crate::tls::ServerTls>>,
    /// Answer every request with a 308 to https on this port.
    pub redirect_https: Option<u16>,
    /// Response header lines added on this listener (HSTS), CRLF-ended.
    pub response_headers: String,
    /// Client address lists applied before routing.
    pub ip_filter: Option<crate::policy::ip_filter::IpFilterPlan>,
    /// HTTP/2 on this listener (h2c by preface, h2 by ALPN) and its limits.
    pub http2: Option<crate::h2::H2Limits>,
}

impl ListenerPlan {
    /// Shard `shard`'s share of `max_connections` among `shards` shards: an
    /// equal split, the first `max % shards` shards taking one more, so the
    /// shares add up to the listener's limit.
    pub fn shard_share(&self, shard: usize, shards: usize) -> Option<usize> {
        self.max_connections
            .map(|max| connection_share(max, shard, shards))
    }
}

/// Shard `shard`'s share of a limit of `max` connections over `shards` shards.
pub fn connection_share(max: usize, shard: usize, shards: usize) -> usize {
    let shards = shards.max(1);
    max / shards + usize::from(shard < max % shards)
}

/// Everything a shard needs to serve.
#[derive(Debug)]
pub struct Compiled {
    /// Listeners, in config order.
    pub listeners: Vec<ListenerPlan>,
    /// Routes, in declaration order.
    pub routes: Vec<RoutePlan>,
    /// Upstreams (sorted by name).
    pub upstreams: Vec<UpstreamPlan>,
    /// Client-side limits.
    pub limits: Limits,
    /// Authenticators.
    pub auth: AuthPlan,
    /// Capacity of each shard's verified-token cache.
    pub token_cache_entries: usize,
    /// Request fields the config acts on (API-key headers, rate-limit key
    /// headers, route header conditions), lower-case: sent twice → 400.
    pub singleton_headers: Vec<String>,
    /// Distinguishes this compilation from others (key updates name it).
    pub generation: u64,
    /// Shards ask here for a JWKS refetch (authenticator index).
    pub jwks_refetch: crossbeam_channel::Sender<usize>,
    /// The refresher's end of `jwks_refetch`; it stops once this config is dropped.
    pub jwks_requests: crossbeam_channel::Receiver<usize>,
    /// Grace period after SIGTERM.
    pub shutdown_grace: Duration,
    /// Shard placement.
    pub shards: Shards,
    /// Requested driver.
    pub driver: config::DriverChoice,
    /// One descriptor table per shard, or the process's for all.
    pub descriptor_tables: config::DescriptorTables,
    /// Rate-limit settings and named limits.
    pub rate_limiting: crate::ratelimit::plan::RateLimitPlan,
    /// The admin listener's address and settings.
    pub admin: Option<AdminPlan>,
    /// Shards count requests into metrics.
    pub metrics: bool,
    /// The access log.
    pub access_log: Option<config::AccessLog>,
    /// Trace context and span export.
    pub tracing: Option<config::Tracing>,
    /// The effective config as JSON, secrets redacted, for the admin API's
    /// `/config` (kept only when there is an admin listener).
    pub effective: Option<std::sync::Arc<str>>,
}

/// The admin listener.
#[derive(Debug, Clone)]
pub struct AdminPlan {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Bucket upper bounds of exported latency histograms, seconds.
    pub buckets_s: Vec<f64>,
}

impl Compiled {
    /// Frees this config a little at a time (see [`crate::pace`]): routes
    /// one by one, route tables node by node.
    pub fn drop_paced(self) {
        let Compiled {
            listeners, routes, ..
        } = self;
        for l in listeners {
            l.router.drop_paced();
        }
        crate::pace::drop_each(routes);
    }

    /// The names metrics are kept under (see [`crate::metrics::ShardMetrics::configure`]).
    pub fn metric_names(&self) -> crate::metrics::Names<'_> {
        crate::metrics::Names {
            routes: self.routes.iter().map(|r| r.name.as_str()).collect(),
            upstreams: self
                .upstreams
                .iter()
                .map(|u| (u.name.as_str(), u.targets.as_slice()))
                .collect(),
            authenticators: self.auth.names().collect(),
            limits: self
                .rate_limiting
                .limits
                .iter()
                .map(|l| l.name.as_str())
                .collect(),
            parts: self
                .routes
                .iter()
                .map(|r| {
                    r.aggregate
                        .as_ref()
                        .map(|a| a.parts.iter().map(|p| p.name.as_str()).collect())
                        .unwrap_or_default()
                })
                .collect(),
        }
    }

    /// The client-side limits of listener `i` (the gateway's for an unknown index).
    pub fn limits_of(&self, i: usize) -> &Limits {
        self.listeners.get(i).map_or(&self.limits, |l| &l.limits)
    }
}

/// Compilation counter (config load and reload only, never per request).
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Compiles a validated config. Fails only if a target stopped resolving.
pub fn compile(g: &Gateway) -> Result<Compiled, String> {
    let upstreams: Vec<UpstreamPlan> = g
        .upstreams
        .iter()
        .enumerate()
        .map(|(id, (name, u))| {
            let targets = u
                .targets
                .iter()
                .map(|t| config::resolve(t))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(UpstreamPlan {
                id,
                name: name.clone(),
                targets,
                balance: u.balance.clone(),
                connect_timeout: ms(u.connect_timeout_ms),
                timeout: ms(u.timeout_ms),
                max_idle: u.max_idle_per_target,
                idle_timeout: ms(u.idle_timeout_ms),
                max_connections: u.max_connections_per_target,
                max_queued: u.max_queued_per_target,
                queue_timeout: ms(u.queue_timeout_ms.unwrap_or(u.connect_timeout_ms)),
                breaker: u
                    .circuit_breaker
                    .as_ref()
                    .map(|b| crate::resilience::compile_breaker(b, u)),
                retry: u.retry.as_ref().map(crate::resilience::compile_retry),
                plan: crate::resilience::balance::BalancePlan::compile(u),
                health_check: u.health_check.clone(),
                outlier: u.outlier_detection.clone(),
                panic_routing: u.panic_routing,
                protocol: u.protocol,
                http2: Http2Plan::compile(name, u),
                tls: crate::tls::compile_upstream(u)
                    .map_err(|e| format!("upstream {name:?}: tls: {e}"))?
                    .map(|tls| match u.protocol {
                        config::UpstreamProtocol::Http1 => tls,
                        // HTTP/2 over TLS is negotiated by ALPN: only h2 is offered.
                        config::UpstreamProtocol::Http2 => {
                            let mut config = (*tls.config).clone();
                            config.alpn_protocols = vec![b"h2".to_vec()];
                            crate::tls::UpstreamTlsPlan {
                                config: std::sync::Arc::new(config),
                                ..tls
                            }
                        }
                    }),
            })
        })
        .collect::<Result<_, String>>()?;
    let auth = AuthPlan::compile(&g.authenticators)?;
    // Bounded to one: a pending refetch covers every later request for one.
    let (refetch_tx, refetch_rx) = crossbeam_channel::bounded(1);
    let mut routes = Vec::with_capacity(g.routes.len());
    let mut specs = Vec::with_capacity(g.routes.len());
    // Looked up once per route: a map keeps compile linear in the config's size.
    let upstream_ids: HashMap<&str, usize> = upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| (u.name.as_str(), i))
        .collect();
    let upstream_index = |name: &str| upstream_ids.get(name).copied();
    let default_cors = match &g.cors {
        Some(c) => Some(std::sync::Arc::new(
            crate::policy::cors::CorsPlan::compile(c).map_err(|e| format!("cors: {e}"))?,
        )),
        None => None,
    };
    for r in &g.routes {
        crate::pace::point();
        let upstream = match &r.upstream {
            Some(name) => Some(
                upstream_index(name)
                    .ok_or_else(|| format!("route {:?}: unknown upstream {name:?}", r.name))?,
            ),
            None => None,
        };
        let params = match &r.matcher.path {
            Some(p) => config::path_template_params(p)?,
            None => Vec::new(),
        };
        let aggregate = match &r.aggregate {
            Some(a) => {
                let authenticated = matches!(r.auth, AuthPolicy::Required(_));
                let plan = AggregatePlan::compile(a, &params, &upstream_index, authenticated)
                    .map_err(|p| {
                        let first = p.first().map_or(String::new(), |p| p.message.clone());
                        format!("route {:?}: aggregate: {first}", r.name)
                    })?;
                Some(plan)
            }
            None => None,
        };
        let path_edit = match (&r.rewrite, &r.strip_prefix) {
            (Some(t), _) => PathEdit::Rewrite(compile_template(t, &params)?),
            (None, Some(p)) => PathEdit::Strip(p.trim_end_matches('/').to_string()),
            (None, None) => PathEdit::Keep,
        };
        let (auth_ids, strip_query) = match &r.auth {
            AuthPolicy::Public => (None, Vec::new()),
            AuthPolicy::Required(names) => {
                let ids = names
                    .iter()
                    .map(|n| {
                        auth.index_of(n).ok_or_else(|| {
                            format!("route {:?}: unknown authenticator {n:?}", r.name)
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let strip = names
                    .iter()
                    .filter_map(|n| match g.authenticators.get(n) {
                        Some(Authenticator::ApiKey(k)) => k.query.clone(),
                        _ => None,
                    })
                    .collect();
                (Some(ids), strip)
            }
        };
        routes.push(RoutePlan {
            name: r.name.clone(),
            upstream,
            path_edit,
            auth: auth_ids,
            scopes: r.scopes.clone(),
            roles: r.roles.clone(),
            keep_authorization: r.keep_authorization,
            strip_query,
            rate_limits: crate::ratelimit::plan::route_limits(g, r)
                .map_err(|e| format!("route {:?}: {e}", r.name))?,
            rate_limit_headers: r.rate_limit_headers,
            aggregate,
            resilience: crate::resilience::compile_route(r, &upstream_index)
                .map_err(|e| format!("route {:?}: {e}", r.name))?,
            websocket: r
                .websocket
                .as_ref()
                .map(crate::proxy::upgrade::UpgradePlan::compile),
            edge: crate::policy::compile_route(r, default_cors.as_ref(), &upstream_index)
                .map_err(|e| format!("route {:?}: {e}", r.name))?,
            cache: r.cache.as_ref().map(crate::cache::CachePlan::compile),
            body: crate::transform::compile_route(r, &params)
                .map_err(|e| format!("route {:?}: {e}", r.name))?,
            grpc: match &r.grpc {
                Some(config::Grpc::Transcode(t)) => Some(
                    crate::grpc::stage::compile(t)
                        .map_err(|e| format!("route {:?}: grpc: {e}", r.name))?,
                ),
                None => None,
            },
        });
        let m = &r.matcher;
        specs.push(RouteSpec {
            path: match (&m.path, &m.path_prefix) {
                (Some(p), _) => PathPattern::Full(p.clone()),
                (None, Some(p)) => PathPattern::Prefix(p.clone()),
                (None, None) => return Err(format!("route {:?} has no path", r.name)),
            },
            conditions: Conditions {
                methods: m.methods.clone(),
                host: m.host.as_ref().map(|h| h.to_ascii_lowercase()),
                headers: m
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect(),
            },
        });
    }
    let mut client_cas = Vec::new();
    for a in g.authenticators.values() {
        if let config::Authenticator::ClientCert(c) = a {
            client_cas.extend(crate::tls::client_auth::read_cas(&c.ca)?);
        }
    }
    let mut listeners = Vec::with_capacity(g.listeners.len());
    for l in &g.listeners {
        let addr: SocketAddr = l
            .bind
            .parse()
            .map_err(|_| format!("listener {:?}: bad bind {:?}", l.name, l.bind))?;
        let route_ids: Vec<usize> = match &l.routes {
            None => (0..routes.len()).collect(),
            Some(names) => {
                let names: HashSet<&str> = names.iter().map(String::as_str).collect();
                g.routes
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| names.contains(r.name.as_str()))
                    .map(|(i, _)| i)
                    .collect()
            }
        };
        let router = if l.routes.is_none() {
            Router::new(&specs)
        } else {
            let subset: Vec<RouteSpec> = route_ids
                .iter()
                .filter_map(|&i| specs.get(i).cloned())
                .collect();
            Router::new(&subset)
        };
        listeners.push(ListenerPlan {
            name: l.name.clone(),
            addr,
            router,
            route_ids,
            limits: limits(l.limits_http.as_ref().unwrap_or(&g.limits_http)),
            path: PathOptions {
                merge_slashes: l.merge_slashes,
                encoded_slash: l.encoded_slash,
            },
            max_connections: l.max_connections,
            balance: l.balance_connections,
            tls: match &l.tls {
                None => None,
                Some(t) => Some(std::sync::Arc::new(
                    crate::tls::compile_server(t, &client_cas, l.http2)
                        .map_err(|e| format!("listener {:?}: tls: {e}", l.name))?,
                )),
            },
            redirect_https: match &l.redirect_https {
                None => None,
                Some(name) => Some(
                    g.listeners
                        .iter()
                        .find(|t| &t.name == name && t.tls.is_some())
                        .and_then(|t| t.bind.parse::<SocketAddr>().ok())
                        .map(|a| a.port())
                        .ok_or_else(|| {
                            format!(
                                "listener {:?}: redirect_https: no TLS listener {name:?}",
                                l.name
                            )
                        })?,
                ),
            },
            response_headers: l
                .tls
                .as_ref()
                .and_then(|t| t.hsts.as_ref())
                .map(config::Hsts::header_line)
                .unwrap_or_default(),
            ip_filter: l
                .ip_filter
                .as_ref()
                .map(crate::policy::ip_filter::IpFilterPlan::compile)
                .transpose()
                .map_err(|e| format!("listener {:?}: ip_filter: {e}", l.name))?,
            http2: l
                .http2
                .then(|| crate::h2::H2Limits::from_config(&l.http2_limits)),
        });
    }
    let h = &g.limits_http;
    Ok(Compiled {
        listeners,
        routes,
        upstreams,
        auth,
        token_cache_entries: g.token_cache_entries,
        singleton_headers: singleton_headers(g),
        generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        jwks_refetch: refetch_tx,
        jwks_requests: refetch_rx,
        limits: limits(h),
        shutdown_grace: ms(g.shutdown_grace_ms),
        shards: g.shards.clone(),
        driver: g.driver,
        descriptor_tables: g.descriptor_tables,
        rate_limiting: crate::ratelimit::plan::compile(g)?,
        admin: admin_plan(g)?,
        metrics: g.admin.as_ref().is_some_and(|a| a.metrics),
        access_log: g.access_log.clone(),
        tracing: g.tracing.clone(),
        effective: g
            .admin
            .as_ref()
            .and_then(|_| serde_json::to_string_pretty(g).ok())
            .map(Into::into),
    })
}

fn admin_plan(g: &config::Gateway) -> Result<Option<AdminPlan>, String> {
    let Some(a) = &g.admin else {
        return Ok(None);
    };
    Ok(Some(AdminPlan {
        addr: config::resolve(&a.bind)?,
        buckets_s: a
            .histogram_buckets_ms
            .iter()
            .map(|ms| ms / 1000.0)
            .collect(),
    }))
}

/// The request fields this config makes decisions on, beyond the fixed
/// singletons of [`crate::http::head::SINGLETONS`].
fn singleton_headers(g: &config::Gateway) -> Vec<String> {
    fn key_headers(k: &config::LimitKey, out: &mut Vec<String>) {
        match k {
            config::LimitKey::Header(h) => out.push(h.to_ascii_lowercase()),
            config::LimitKey::Combined(ks) => ks.iter().for_each(|k| key_headers(k, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for a in g.authenticators.values() {
        if let config::Authenticator::ApiKey(k) = a {
            out.extend(k.header.iter().map(|h| h.to_ascii_lowercase()));
        }
    }
    for l in g.rate_limits.values() {
        key_headers(&l.key, &mut out);
    }
    for r in &g.routes {
        out.extend(r.matcher.headers.keys().map(|h| h.to_ascii_lowercase()));
    }
    out.sort();
    out.dedup();
    out
}

fn limits(h: &config::HttpLimits) -> Limits {
    Limits {
        max_header_bytes: h.max_header_bytes,
        max_headers: h.max_headers,
        max_body_bytes: h.max_body_bytes,
        header_read_timeout: ms(h.header_read_timeout_ms),
        idle_timeout: ms(h.idle_timeout_ms),
        body_read_timeout: ms(h.body_read_timeout_ms),
        send_timeout: ms(h.send_timeout_ms),
    }
}

fn compile_template(t: &str, params: &[String]) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = t;
    while let Some((lit, after)) = rest.split_once('{') {
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit.to_string()));
        }
        let (name, tail) = after.split_once('}').ok_or("unclosed '{' in rewrite")?;
        let idx = params
            .iter()
            .position(|p| p == name)
            .ok_or_else(|| format!("rewrite uses unknown param {{{name}}}"))?;
        pieces.push(Piece::Param(idx));
        rest = tail;
    }
    if !rest.is_empty() {
        pieces.push(Piece::Lit(rest.to_string()));
    }
    Ok(pieces)
}

/// Builds the upstream request target (path and query) for a matched route.
pub fn upstream_target(
    edit: &PathEdit,
    path: &str,
    query: Option<&str>,
    params: &[Range<usize>],
) -> String {
    let mut out = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    match edit {
        PathEdit::Keep => out.push_str(path),
        PathEdit::Strip(prefix) => {
            let rest = path.strip_prefix(prefix.as_str()).unwrap_or(path);
            if !rest.starts_with('/') {
                out.push('/');
            }
            out.push_str(rest);
        }
        PathEdit::Rewrite(pieces) => {
            for p in pieces {
                match p {
                    Piece::Lit(s) => out.push_str(s),
                    Piece::Param(i) => {
                        if let Some(r) = params.get(*i) {
                            out.push_str(path.get(r.clone()).unwrap_or(""));
                        }
                    }
                }
            }
        }
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let strip = PathEdit::Strip("/api/v1".into());
        assert_eq!(
            upstream_target(&strip, "/api/v1/products/1", Some("x=1"), &[]),
            "/products/1?x=1"
        );
        assert_eq!(upstream_target(&strip, "/api/v1", None, &[]), "/");
        let rw = PathEdit::Rewrite(compile_template("/users/{id}/x", &["id".into()]).unwrap());
        assert_eq!(
            upstream_target(&rw, "/api/u/42", Some("a=b"), std::slice::from_ref(&(7..9))),
            "/users/42/x?a=b"
        );
        assert_eq!(upstream_target(&PathEdit::Keep, "/a", None, &[]), "/a");
    }

    #[test]
    fn connection_shares_add_up_to_the_limit() {
        for shards in 1..=9 {
            for max in shards..200 {
                let shares: Vec<usize> = (0..shards)
                    .map(|s| connection_share(max, s, shards))
                    .collect();
                assert_eq!(shares.iter().sum::<usize>(), max, "{max} over {shards}");
                let (lo, hi) = (shares.iter().min(), shares.iter().max());
                assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 1), "{shares:?}");
            }
        }
        assert_eq!(connection_share(10, 0, 4), 3);
        assert_eq!(connection_share(10, 1, 4), 3);
        assert_eq!(connection_share(10, 2, 4), 2);
        assert_eq!(connection_share(10, 3, 4), 2);
    }
}
