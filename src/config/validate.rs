//! Semantic checks run after parsing: cross-references, templates, addresses
//! and limits. Every problem is reported, not only the first.

use super::position::{Positions, Scope};
use super::{Balance, Gateway, HashOn, Match, Problem, Shards};
use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};

/// Returns every problem in `g`; `text` is the source, used to find positions.
pub(super) fn validate(g: &Gateway, text: &str) -> Vec<Problem> {
    let pos = Positions::new(text);
    let n = g.routes.len();
    let routes = g
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            crate::pace::point();
            pos.list_item("routes", i, n, &r.name)
        })
        .collect();
    let mut v = Validator {
        pos,
        routes,
        problems: Vec::new(),
    };
    v.shards(&g.shards);
    v.listeners(g);
    v.limits(g);
    v.upstreams(g);
    v.resilience(g);
    v.edge(g);
    v.routes(g);
    v.grpc(g);
    v.authenticators(g);
    v.rate_limits(g);
    v.observability(g);
    v.problems
}

struct Validator<'a> {
    pos: Positions<'a>,
    /// Where each route is in the text, by index.
    routes: Vec<Scope>,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn route_scope(&self, i: usize) -> Scope {
        self.routes.get(i).copied().unwrap_or(self.pos.whole())
    }

    fn push(&mut self, at: (usize, usize), field: String, message: String) {
        self.problems.push(Problem {
            line: at.0,
            col: at.1,
            field,
            message,
        });
    }

    /// `admin`, `access_log` and `tracing`.
    fn observability(&mut self, g: &Gateway) {
        let whole = self.pos.whole();
        if let Some(a) = &g.admin {
            match a.bind.parse::<SocketAddr>() {
                Err(_) => self.push(
                    self.pos.field_value(whole, "bind", &a.bind),
                    "admin.bind".into(),
                    format!("{:?} is not an ip:port address", a.bind),
                ),
                Ok(addr) => {
                    let clash = g.listeners.iter().find(|l| {
                        l.bind.parse::<SocketAddr>().is_ok_and(|b| {
                            b.port() == addr.port()
                                && (b.ip() == addr.ip()
                                    || b.ip().is_unspecified()
                                    || addr.ip().is_unspecified())
                        })
                    });
                    if let Some(l) = clash {
                        self.push(
                            self.pos.field_value(whole, "bind", &a.bind),
                            "admin.bind".into(),
                            format!(
                                "the admin listener must be apart from the public ones; listener {:?} binds {}",
                                l.name, l.bind
                            ),
                        );
                    }
                }
            }
            let b = &a.histogram_buckets_ms;
            let increasing = b.windows(2).all(|w| matches!(w, [x, y] if x < y));
            if b.is_empty() || !increasing || b.iter().any(|&x| !(x > 0.0 && x.is_finite())) {
                self.push(
                    self.pos.field(whole, "histogram_buckets_ms"),
                    "admin.histogram_buckets_ms".into(),
                    "needs at least one bound; bounds are positive milliseconds in increasing order".into(),
                );
            }
        }
        if let Some(l) = &g.access_log {
            if l.path.trim().is_empty() {
                self.push(
                    self.pos.field(whole, "access_log"),
                    "access_log.path".into(),
                    "must be \"stdout\", \"stderr\" or a file path".into(),
                );
            }
            if l.queue_lines == 0 {
                self.push(
                    self.pos.field(whole, "queue_lines"),
                    "access_log.queue_lines".into(),
                    "must be at least 1".into(),
                );
            }
        }
        if let Some(t) = &g.tracing {
            if !(0.0..=1.0).contains(&t.sample_ratio) {
                self.push(
                    self.pos.field(whole, "sample_ratio"),
                    "tracing.sample_ratio".into(),
                    "must be between 0.0 and 1.0".into(),
                );
            }
            if let Some(e) = &t.otlp_endpoint {
                if let Err(why) = crate::auth::jwks::split_http_url(e) {
                    self.push(
                        self.pos.field_value(whole, "otlp_endpoint", e),
                        "tracing.otlp_endpoint".into(),
                        format!("{why} (an OTLP/HTTP collector such as http://127.0.0.1:4318)"),
                    );
                }
            }
            let counts = [
                ("queue_spans", t.queue_spans as u64),
                ("batch_spans", t.batch_spans as u64),
                ("export_interval_ms", t.export_interval_ms),
            ];
            for (name, v) in counts {
                if v == 0 {
                    self.push(
                        self.pos.field(whole, name),
                        format!("tracing.{name}"),
                        "must be at least 1".into(),
                    );
                }
            }
        }
    }

    fn shards(&mut self, s: &Shards) {
        let bad = match s {
            Shards::Count(0) => Some("Count must be at least 1"),
            Shards::Cores(c) if c.is_empty() => Some("Cores needs at least one core id"),
            _ => None,
        };
        if let Some(msg) = bad {
            let at = self.pos.field(self.pos.whole(), "shards");
            self.push(at, "shards".into(), msg.into());
        }
    }

    fn listeners(&mut self, g: &Gateway) {
        if g.listeners.is_empty() {
            let at = self.pos.field(self.pos.whole(), "listeners");
            self.push(
                at,
                "listeners".into(),
                "at least one listener is needed".into(),
            );
        }
        let route_names: HashSet<&str> = g.routes.iter().map(|r| r.name.as_str()).collect();
        let mut seen = HashSet::new();
        let count = g.listeners.len();
        for (i, l) in g.listeners.iter().enumerate() {
            let scope = self.pos.list_item("listeners", i, count, &l.name);
            if !seen.insert(l.name.as_str()) {
                self.push(
                    self.pos.at(scope),
                    format!("listeners[{i}].name"),
                    format!("duplicate listener name {:?}", l.name),
                );
            }
            if l.bind.parse::<SocketAddr>().is_err() {
                self.push(
                    self.pos.field_value(scope, "bind", &l.bind),
                    format!("listeners[{i}].bind"),
                    format!("{:?} is not an ip:port address", l.bind),
                );
            }
            self.max_connections(g, i, l, scope);
            self.http2_limits(i, &l.http2_limits, scope);
            if let Some(t) = &l.tls {
                self.listener_tls(i, t, scope);
            }
            if let Some(name) = &l.redirect_https {
                let target = g.listeners.iter().find(|t| &t.name == name);
                let why = match target {
                    None => Some(format!("unknown listener {name:?}")),
                    Some(t) if t.tls.is_none() => Some(format!("listener {name:?} has no tls")),
                    Some(_) if l.tls.is_some() => {
                        Some("a TLS listener needs no redirect to https".to_string())
                    }
                    Some(_) => None,
                };
                if let Some(why) = why {
                    let at = self.pos.field_value(scope, "redirect_https", name);
                    self.push(at, format!("listeners[{i}].redirect_https"), why);
                }
            }
            for name in l.routes.iter().flatten() {
                if !route_names.contains(name.as_str()) {
                    self.push(
                        self.pos.after(scope, &format!("{name:?}")),
                        format!("listeners[{i}].routes"),
                        format!("unknown route {name:?}"),
                    );
                }
            }
        }
    }

    /// Certificates and keys: present, readable, parseable, matching.
    fn listener_tls(&mut self, i: usize, t: &super::ListenerTls, scope: Scope) {
        let field = format!("listeners[{i}].tls");
        if t.cert.is_some() != t.key.is_some() {
            let at = self
                .pos
                .field(scope, if t.cert.is_some() { "cert" } else { "key" });
            self.push(at, field.clone(), "cert and key go together".into());
        }
        if t.pairs().next().is_none() {
            let at = self.pos.field(scope, "tls");
            self.push(
                at,
                field.clone(),
                "needs a certificate: cert and key, or certs: [Cert(cert, key), ...]".into(),
            );
        }
        if t.handshake_timeout_ms == 0 {
            let at = self.pos.field(scope, "handshake_timeout_ms");
            self.push(
                at,
                format!("{field}.handshake_timeout_ms"),
                "must be at least 1".into(),
            );
        }
        if t.max_handshakes == 0 {
            let at = self.pos.field(scope, "max_handshakes");
            self.push(
                at,
                format!("{field}.max_handshakes"),
                "must be at least 1".into(),
            );
        }
        for (cert, key) in t.pairs() {
            if let Err(e) = crate::tls::load_cert_key(cert, key) {
                let at = if e.starts_with("key ") {
                    self.pos.field_value(scope, "key", key)
                } else {
                    self.pos.field_value(scope, "cert", cert)
                };
                self.push(at, field.clone(), e);
            }
        }
    }

    /// `max_connections` is split into per-shard shares: at least 1, and at
    /// least one per shard when the shard count is known from the file, so
    /// that no shard refuses every connection.
    fn max_connections(&mut self, g: &Gateway, i: usize, l: &super::Listener, scope: Scope) {
        let Some(max) = l.max_connections else {
            return;
        };
        let shards = match &g.shards {
            Shards::Count(n) => Some(*n),
            Shards::Cores(c) => Some(c.len()),
            Shards::Auto | Shards::NumaNode(_) => None,
        };
        let rule = match shards {
            _ if max == 0 => Some("must be at least 1".to_string()),
            Some(n) if max < n => Some(format!(
                "{max} is fewer than the {n} shards: every shard needs a share of at least 1"
            )),
            _ => None,
        };
        if let Some(rule) = rule {
            let at = self.pos.field(scope, "max_connections");
            self.push(at, format!("listeners[{i}].max_connections"), rule);
        }
    }

    /// HTTP/2 settings within the ranges RFC 9113 allows.
    fn http2_limits(&mut self, i: usize, h: &super::Http2Limits, scope: Scope) {
        const MAX_WINDOW: u32 = (1 << 31) - 1;
        let rules: [(&str, Option<&str>); 7] = [
            (
                "max_control_frames",
                (h.max_control_frames < 10).then_some(
                    "must be at least 10 (clients send SETTINGS and PING in normal use)",
                ),
            ),
            (
                "max_concurrent_streams",
                (h.max_concurrent_streams == 0).then_some("must be at least 1"),
            ),
            (
                "max_frame_bytes",
                (!(16_384..=16_777_215).contains(&h.max_frame_bytes))
                    .then_some("must be from 16384 to 16777215 (RFC 9113 §6.5.2)"),
            ),
            (
                "stream_window_bytes",
                (h.stream_window_bytes > MAX_WINDOW).then_some("must be at most 2^31 - 1"),
            ),
            (
                "connection_window_bytes",
                (h.connection_window_bytes > MAX_WINDOW || h.connection_window_bytes < 65_535)
                    .then_some("must be from 65535 to 2^31 - 1"),
            ),
            (
                "max_header_list_bytes",
                (h.max_header_list_bytes < 1024).then_some("must be at least 1024"),
            ),
            (
                "idle_timeout_ms",
                (h.idle_timeout_ms == 0 || h.reset_interval_s == 0)
                    .then_some("idle_timeout_ms and reset_interval_s must be above 0"),
            ),
        ];
        for (field, why) in rules {
            if let Some(why) = why {
                let at = self.pos.field(scope, "http2_limits");
                self.push(
                    at,
                    format!("listeners[{i}].http2_limits.{field}"),
                    why.into(),
                );
            }
        }
    }

    fn limits(&mut self, g: &Gateway) {
        self.http_limits(&g.limits_http, self.pos.whole(), "limits_http");
        let count = g.listeners.len();
        for (i, l) in g.listeners.iter().enumerate() {
            if let Some(limits) = &l.limits_http {
                let scope = self.pos.list_item("listeners", i, count, &l.name);
                self.http_limits(limits, scope, &format!("listeners[{i}].limits_http"));
            }
        }
    }

    fn http_limits(&mut self, l: &super::HttpLimits, scope: Scope, prefix: &str) {
        let checks: [(&str, bool); 7] = [
            ("max_header_bytes", l.max_header_bytes >= 64),
            ("max_headers", (1..=256).contains(&l.max_headers)),
            ("max_body_bytes", true),
            ("header_read_timeout_ms", l.header_read_timeout_ms >= 1),
            ("idle_timeout_ms", l.idle_timeout_ms >= 1),
            ("body_read_timeout_ms", l.body_read_timeout_ms >= 1),
            ("send_timeout_ms", l.send_timeout_ms >= 1),
        ];
        for (name, ok) in checks {
            if !ok {
                let at = self.pos.field(scope, name);
                let rule = match name {
                    "max_header_bytes" => "must be at least 64",
                    "max_headers" => "must be between 1 and 256",
                    _ => "must be at least 1",
                };
                self.push(at, format!("{prefix}.{name}"), rule.into());
            }
        }
    }

    /// Weights, health checks and outlier detection of upstream `name`.
    fn target_health(&mut self, name: &str, u: &super::Upstream, scope: Scope) {
        let max = crate::resilience::balance::MAX_WEIGHT;
        for (t, &w) in &u.weights {
            let problem = if !u.targets.contains(t) {
                Some(format!(
                    "{t:?} is not one of the targets (write it as in `targets`)"
                ))
            } else if !(1..=max).contains(&w) {
                Some(format!("weight of {t:?} must be 1 to {max}"))
            } else {
                None
            };
            if let Some(p) = problem {
                self.push(
                    self.pos.field(scope, "weights"),
                    format!("upstreams.{name}.weights"),
                    p,
                );
            }
        }
        if let Some(hc) = &u.health_check {
            let mut bad = Vec::new();
            if !hc.path.starts_with('/') || hc.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                bad.push("path must start with / and hold no spaces or control characters");
            }
            if hc.interval_ms < 10 {
                bad.push("interval_ms must be at least 10");
            }
            if hc.timeout_ms == 0 {
                bad.push("timeout_ms must be at least 1");
            }
            if hc.healthy_threshold == 0 || hc.unhealthy_threshold == 0 {
                bad.push("healthy_threshold and unhealthy_threshold must be at least 1");
            }
            if hc.expect_status.is_some_and(|s| !(100..=599).contains(&s)) {
                bad.push("expect_status must be 100 to 599");
            }
            for b in bad {
                self.push(
                    self.pos.field(scope, "health_check"),
                    format!("upstreams.{name}.health_check"),
                    b.into(),
                );
            }
        }
        if let Some(h2) = &u.http2 {
            let at = self.pos.field(scope, "http2");
            if u.protocol != crate::config::UpstreamProtocol::Http2 {
                let why = "applies to `protocol: Http2` upstreams only";
                self.push(at, format!("upstreams.{name}.http2"), why.into());
            } else if !(1..=10_000).contains(&h2.max_streams_per_connection) {
                let why = "max_streams_per_connection must be 1 to 10000";
                self.push(
                    at,
                    format!("upstreams.{name}.http2.max_streams_per_connection"),
                    why.into(),
                );
            }
        }
        if let Some(od) = &u.outlier_detection {
            let mut bad = Vec::new();
            if od.consecutive_5xx == 0 && od.consecutive_connect_failures == 0 {
                bad.push(
                    "one of consecutive_5xx and consecutive_connect_failures must be at least 1",
                );
            }
            if od.base_ejection_s == 0 {
                bad.push("base_ejection_s must be at least 1");
            }
            if od.max_ejection_percent == 0 || od.max_ejection_percent > 100 {
                bad.push("max_ejection_percent must be 1 to 100");
            }
            for b in bad {
                self.push(
                    self.pos.field(scope, "outlier_detection"),
                    format!("upstreams.{name}.outlier_detection"),
                    b.into(),
                );
            }
        }
        if let Balance::ConsistentHash(HashOn::Header(h) | HashOn::Cookie(h) | HashOn::Claim(h)) =
            &u.balance
        {
            if h.is_empty() || !h.bytes().all(is_token_byte) {
                self.push(
                    self.pos.field(scope, "balance"),
                    format!("upstreams.{name}.balance"),
                    format!("{h:?} is not a valid name"),
                );
            }
        }
    }

    fn upstreams(&mut self, g: &Gateway) {
        for (name, u) in &g.upstreams {
            let scope = self.pos.map_entry("upstreams", name);
            if u.targets.is_empty() {
                self.push(
                    self.pos.field(scope, "targets"),
                    format!("upstreams.{name}.targets"),
                    "at least one target is needed".into(),
                );
            }
            let https = u.targets.iter().filter(|t| split_scheme(t).0).count();
            if https > 0 && https < u.targets.len() {
                self.push(
                    self.pos.field(scope, "targets"),
                    format!("upstreams.{name}.targets"),
                    "targets are all https:// or none".into(),
                );
            }
            if let Some(t) = &u.tls {
                if t.cert.is_some() != t.key.is_some() {
                    self.push(
                        self.pos.field(scope, "tls"),
                        format!("upstreams.{name}.tls"),
                        "cert and key go together".into(),
                    );
                }
            }
            if u.tls.is_some() || https > 0 {
                if let Err(e) = crate::tls::client_config(u.tls.as_ref()) {
                    self.push(
                        self.pos.field(scope, "tls"),
                        format!("upstreams.{name}.tls"),
                        e,
                    );
                }
            }
            for t in &u.targets {
                if let Err(e) = resolve(t) {
                    self.push(
                        self.pos.after(scope, &format!("{t:?}")),
                        format!("upstreams.{name}.targets"),
                        e,
                    );
                }
            }
            for (field, value) in [
                ("connect_timeout_ms", u.connect_timeout_ms),
                ("timeout_ms", u.timeout_ms),
            ] {
                if value == 0 {
                    self.push(
                        self.pos.field(scope, field),
                        format!("upstreams.{name}.{field}"),
                        "must be at least 1".into(),
                    );
                }
            }
            if u.max_connections_per_target == Some(0) {
                self.push(
                    self.pos.field(scope, "max_connections_per_target"),
                    format!("upstreams.{name}.max_connections_per_target"),
                    "must be at least 1 (leave it out for no bound)".into(),
                );
            }
            self.target_health(name, u, scope);
        }
    }

    /// Breakers, retries, timeouts and fallbacks (see [`crate::resilience::check`]).
    fn resilience(&mut self, g: &Gateway) {
        use crate::resilience::Anchor;
        for (anchor, field, message) in crate::resilience::check(g) {
            let at = match &anchor {
                Anchor::Upstream(name, key) => {
                    let scope = self.pos.map_entry("upstreams", name);
                    self.pos.field(scope, key)
                }
                Anchor::Route(i, key) => self.pos.field(self.route_scope(*i), key),
            };
            self.push(at, field, message);
        }
    }

    /// CORS, IP filters, static responses, splits, mirrors and schemas
    /// (see [`crate::policy::check`]).
    fn edge(&mut self, g: &Gateway) {
        use crate::policy::Anchor;
        for (anchor, field, message) in crate::policy::check(g) {
            let at = match &anchor {
                Anchor::Top(key) => self.pos.field(self.pos.whole(), key),
                Anchor::Listener(i, key) => {
                    let name = g.listeners.get(*i).map_or("", |l| l.name.as_str());
                    let scope = self.pos.list_item("listeners", *i, g.listeners.len(), name);
                    self.pos.field(scope, key)
                }
                Anchor::Route(i, key) => self.pos.field(self.route_scope(*i), key),
            };
            self.push(at, field, message);
        }
    }

    /// Transcoded routes: descriptor sets, services, methods and fields
    /// (see [`crate::grpc::stage::check`]).
    fn grpc(&mut self, g: &Gateway) {
        for p in crate::grpc::stage::check(g) {
            let scope = self.route_scope(p.route);
            let at = match &p.value {
                Some(v) => self.pos.field_value(scope, p.key, v),
                None => self.pos.field(scope, p.key),
            };
            self.push(at, format!("routes[{}].{}", p.route, p.field), p.message);
        }
    }

    fn routes(&mut self, g: &Gateway) {
        let mut seen = HashSet::new();
        for (i, r) in g.routes.iter().enumerate() {
            let scope = self.route_scope(i);
            crate::pace::point();
            let field = |f: &str| format!("routes[{i}].{f}");
            if !seen.insert(r.name.as_str()) {
                self.push(
                    self.pos.at(scope),
                    field("name"),
                    format!("duplicate route name {:?}", r.name),
                );
            }
            let upstream = match (&r.upstream, &r.aggregate, &r.static_response) {
                (Some(u), None, None) => Some(u),
                (None, Some(_), None) | (None, None, Some(_)) => None,
                _ => {
                    self.push(
                        self.pos.at(scope),
                        field("upstream"),
                        "give exactly one of `upstream` or `aggregate` (or `static_response`)"
                            .into(),
                    );
                    None
                }
            };
            if let Some(up) = upstream.filter(|u| !g.upstreams.contains_key(*u)) {
                let known: Vec<&str> = g.upstreams.keys().map(String::as_str).collect();
                self.push(
                    self.pos.field_value(scope, "upstream", up),
                    field("upstream"),
                    format!(
                        "unknown upstream {:?} (known: {})",
                        up,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
            let params = self.route_match(&r.matcher, scope, &field);
            for (f, message, near) in crate::transform::check_route(r, &params) {
                self.push(self.pos.after(scope, &near), field(&f), message);
            }
            if let Some(a) = &r.aggregate {
                self.aggregate(g, i, r, a, scope, &params);
            } else if r.non_idempotent {
                self.push(
                    self.pos.field(scope, "non_idempotent"),
                    field("non_idempotent"),
                    "applies to composite routes (`aggregate`) only".into(),
                );
            }
            if let Some(ws) = &r.websocket {
                let at = self.pos.field(scope, "websocket");
                if r.aggregate.is_some() {
                    let why = "a composite route cannot tunnel upgraded connections";
                    self.push(at, field("websocket"), why.into());
                }
                if ws.max_tunnels == 0 || ws.idle_timeout_ms == 0 {
                    let why = "max_tunnels and idle_timeout_ms must be at least 1";
                    self.push(at, field("websocket"), why.into());
                }
                if ws.upgrades.is_empty()
                    || ws
                        .upgrades
                        .iter()
                        .any(|u| u.is_empty() || !u.bytes().all(is_token_byte))
                {
                    let why = "upgrades must list protocol names (tokens such as \"websocket\")";
                    self.push(at, field("websocket.upgrades"), why.into());
                }
            }
            let http2 = upstream
                .and_then(|u| g.upstreams.get(u.as_str()))
                .is_some_and(|u| u.protocol == crate::config::UpstreamProtocol::Http2);
            if http2 {
                // The HTTP/2 response path streams DATA frames as they come;
                // the stages that read or rewrite the HTTP/1.1 response body
                // are not on it.
                let response_stages = [
                    ("cache", r.cache.is_some()),
                    (
                        "transform",
                        r.transform.as_ref().is_some_and(|t| t.response.is_some()),
                    ),
                    ("compression", r.compression.is_some()),
                    ("websocket", r.websocket.is_some()),
                ];
                for (stage, _) in response_stages.iter().filter(|(_, on)| *on) {
                    self.push(
                        self.pos.field(scope, stage),
                        field(stage),
                        "not available on a route to a `protocol: Http2` upstream \
                         (its response streams as HTTP/2 DATA)"
                            .into(),
                    );
                }
            }
            // Mirrors and composite parts speak HTTP/1.1 to their upstreams.
            let is_h2 = |name: &str| {
                g.upstreams
                    .get(name)
                    .is_some_and(|u| u.protocol == crate::config::UpstreamProtocol::Http2)
            };
            let http1_only = r
                .mirror
                .iter()
                .filter(|m| is_h2(&m.upstream))
                .map(|_| "mirror")
                .chain(
                    r.aggregate
                        .iter()
                        .flat_map(|a| a.parts.iter())
                        .filter(|p| is_h2(&p.upstream))
                        .map(|_| "aggregate"),
                );
            for stage in http1_only.collect::<Vec<_>>() {
                self.push(
                    self.pos.field(scope, stage),
                    field(stage),
                    "cannot send to a `protocol: Http2` upstream (it speaks HTTP/1.1)".into(),
                );
            }
            if let Some(c) = &r.cache {
                for (at, f, why) in crate::cache::check(c, r.aggregate.is_some()) {
                    let at = self.pos.field(scope, at);
                    self.push(at, field(f), why.into());
                }
            }
            if let Some(prefix) = &r.strip_prefix {
                let pattern = r.matcher.path_prefix.as_ref().or(r.matcher.path.as_ref());
                let ok = prefix.starts_with('/')
                    && pattern.is_some_and(|p| literal_prefix(p).starts_with(prefix.as_str()));
                if !ok {
                    self.push(
                        self.pos.field_value(scope, "strip_prefix", prefix),
                        field("strip_prefix"),
                        "must start with '/' and be a literal prefix of the route's path".into(),
                    );
                }
            }
            if let Some(rewrite) = &r.rewrite {
                let at = self.pos.field_value(scope, "rewrite", rewrite);
                match template_params(rewrite) {
                    Err(e) => self.push(at, field("rewrite"), e),
                    Ok(used) => {
                        if !rewrite.starts_with('/') {
                            self.push(at, field("rewrite"), "must start with '/'".into());
                        }
                        for p in used {
                            if !params.contains(&p) {
                                self.push(
                                    at,
                                    field("rewrite"),
                                    format!("uses {{{p}}}, which the route's path does not define"),
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    fn rate_limits(&mut self, g: &Gateway) {
        use super::{LimitAlgorithm as A, LimitPolicy};
        let s = &g.rate_limiting;
        for (name, ok) in [
            ("gossip_interval_ms", s.gossip_interval_ms >= 1),
            ("max_keys_per_shard", s.max_keys_per_shard >= 1),
            ("idle_key_s", s.idle_key_s >= 1),
        ] {
            if !ok {
                let at = self.pos.field(self.pos.whole(), name);
                self.push(
                    at,
                    format!("rate_limiting.{name}"),
                    "must be at least 1".into(),
                );
            }
        }
        for t in &s.trusted_proxies {
            if crate::ratelimit::key::Cidr::parse(t).is_none() {
                self.push(
                    self.pos.after(self.pos.whole(), &format!("{t:?}")),
                    "rate_limiting.trusted_proxies".into(),
                    format!("{t:?} is not an address or CIDR block"),
                );
            }
        }
        for (name, l) in &g.rate_limits {
            let scope = self.pos.map_entry("rate_limits", name);
            let field = |f: &str| format!("rate_limits.{name}.{f}");
            let rate_ok = |r: f64| r.is_finite() && r > 0.0;
            let bad: Option<(&str, &str)> = match l.algorithm {
                A::TokenBucket { capacity: 0, .. } | A::LeakyBucket { capacity: 0, .. } => {
                    Some(("capacity", "must be at least 1"))
                }
                A::TokenBucket { refill_per_s, .. } if !rate_ok(refill_per_s) => {
                    Some(("refill_per_s", "must be a positive number"))
                }
                A::LeakyBucket { drain_per_s, .. } if !rate_ok(drain_per_s) => {
                    Some(("drain_per_s", "must be a positive number"))
                }
                A::FixedWindow { limit: 0, .. }
                | A::SlidingWindow { limit: 0, .. }
                | A::SlidingLog { limit: 0, .. } => Some(("limit", "must be at least 1")),
                A::FixedWindow { window_s: 0, .. }
                | A::SlidingWindow { window_s: 0, .. }
                | A::SlidingLog { window_s: 0, .. } => Some(("window_s", "must be at least 1")),
                _ => None,
            };
            if let Some((f, msg)) = bad {
                let at = self.pos.field(scope, f);
                self.push(at, field(&format!("algorithm.{f}")), msg.into());
            }
            if let LimitPolicy::Redis {
                url,
                lease,
                timeout_ms,
                ca_file,
                ..
            } = &l.policy
            {
                if let Err(e) = crate::ratelimit::redis::parse_url(url) {
                    let at = self.pos.field_value(scope, "url", url);
                    self.push(at, field("policy.url"), e);
                }
                if let Some(f) = ca_file {
                    let settings = super::UpstreamTls {
                        ca_file: Some(f.clone()),
                        ..Default::default()
                    };
                    if let Err(e) = crate::tls::client_config(Some(&settings)) {
                        let at = self.pos.field_value(scope, "ca_file", f);
                        self.push(at, field("policy.ca_file"), e);
                    }
                }
                if *lease == 0 || *timeout_ms == 0 {
                    let f = if *lease == 0 { "lease" } else { "timeout_ms" };
                    let at = self.pos.field(scope, f);
                    self.push(
                        at,
                        field(&format!("policy.{f}")),
                        "must be at least 1".into(),
                    );
                }
                if let A::LeakyBucket {
                    max_wait_ms: Some(_),
                    ..
                } = l.algorithm
                {
                    let at = self.pos.field(scope, "max_wait_ms");
                    self.push(
                        at,
                        field("algorithm.max_wait_ms"),
                        "queueing (max_wait_ms) needs the Local policy".into(),
                    );
                }
            }
        }
        for (i, r) in g.routes.iter().enumerate() {
            let scope = self.route_scope(i);
            crate::pace::point();
            let mut seen = HashSet::new();
            for name in &r.rate_limits {
                let at = self.pos.after(scope, &format!("{name:?}"));
                let field = format!("routes[{i}].rate_limits");
                if !seen.insert(name) {
                    self.push(at, field, format!("rate limit {name:?} listed twice"));
                    continue;
                }
                let one = super::Route {
                    rate_limits: vec![name.clone()],
                    ..r.clone()
                };
                if let Err(e) = crate::ratelimit::plan::route_limits(g, &one) {
                    let known: Vec<&str> = g.rate_limits.keys().map(String::as_str).collect();
                    let e = if g.rate_limits.contains_key(name) {
                        e
                    } else {
                        format!(
                            "{e} (known: {})",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        )
                    };
                    self.push(at, field, e);
                }
            }
        }
    }

    /// Checks a composite route (parts, references, cycles, limits).
    fn aggregate(
        &mut self,
        g: &Gateway,
        i: usize,
        r: &super::Route,
        a: &super::Aggregate,
        scope: Scope,
        params: &[String],
    ) {
        let names: Vec<&String> = g.upstreams.keys().collect();
        let index = |n: &str| names.iter().position(|k| *k == n);
        let authenticated = matches!(r.auth, super::AuthPolicy::Required(_));
        let plan = crate::aggregate::AggregatePlan::compile(a, params, &index, authenticated);
        for p in plan.err().unwrap_or_default() {
            let part = p
                .part
                .and_then(|j| a.parts.get(j))
                .and_then(|part| self.pos.find_field_value(scope, "name", &part.name))
                .map_or(scope, |at| self.pos.part_from(scope, at));
            let at = match &p.near {
                Some(v) => self.pos.after(part, &format!("{v:?}")),
                None => {
                    let last = p.field.rsplit('.').next().unwrap_or(&p.field);
                    self.pos.field(part, last)
                }
            };
            self.push(at, format!("routes[{i}].aggregate.{}", p.field), p.message);
        }
        // A composite that writes is not a transaction and must not be repeated.
        for (j, part) in a.parts.iter().enumerate() {
            if r.non_idempotent || matches!(part.method.as_str(), "GET" | "HEAD" | "OPTIONS") {
                continue;
            }
            let at = self
                .pos
                .find_field_value(scope, "name", &part.name)
                .map_or(scope, |at| self.pos.part_from(scope, at));
            self.push(
                self.pos.field(at, "method"),
                format!("routes[{i}].aggregate.parts[{j}].method"),
                format!(
                    "part {:?} writes ({}): mark the route `non_idempotent: true`",
                    part.name, part.method
                ),
            );
        }
    }

    fn authenticators(&mut self, g: &Gateway) {
        use super::{Authenticator, KeySource};
        use jsonwebtoken::AlgorithmFamily;
        for (name, a) in &g.authenticators {
            let scope = self.pos.map_entry("authenticators", name);
            let field = |f: &str| format!("authenticators.{name}.{f}");
            match a {
                Authenticator::Jwt(j) => {
                    let at = self.pos.field(scope, "algorithms");
                    let families: Vec<AlgorithmFamily> =
                        j.algorithms.iter().map(|a| a.family()).collect();
                    let hmac_key = matches!(j.key, KeySource::Secret(_) | KeySource::FromEnv(_));
                    if j.algorithms.is_empty() {
                        self.push(
                            at,
                            field("algorithms"),
                            "list at least one algorithm".into(),
                        );
                    } else if families.iter().any(|f| Some(f) != families.first()) {
                        self.push(
                            at,
                            field("algorithms"),
                            "all algorithms must be of one family (HS*, RS*/PS*, ES*, or EdDSA)"
                                .into(),
                        );
                    } else if hmac_key != (families.first() == Some(&AlgorithmFamily::Hmac)) {
                        // Mixing them is the algorithm-confusion attack: an HS token
                        // signed with a public key used as the HMAC secret.
                        self.push(
                            at,
                            field("algorithms"),
                            "HS* algorithms need Secret/FromEnv keys and public-key algorithms need PemFile/JwksFile keys".into(),
                        );
                    }
                    let key_at = self.pos.field(scope, "key");
                    match &j.key {
                        KeySource::Secret(s) if s.len() < 16 => self.push(
                            key_at,
                            field("key"),
                            "an HMAC secret needs at least 16 bytes".into(),
                        ),
                        KeySource::FromEnv(var) if std::env::var_os(var).is_none() => self.push(
                            key_at,
                            field("key"),
                            format!("environment variable {var} is not set"),
                        ),
                        KeySource::Jwks {
                            url,
                            refresh_s,
                            ca_file,
                        } => {
                            if let Some(ca) =
                                ca_file.as_ref().filter(|f| std::fs::metadata(f).is_err())
                            {
                                self.push(
                                    key_at,
                                    field("key"),
                                    format!("cannot read ca_file {ca:?}"),
                                );
                            }
                            if let Err(e) = crate::auth::jwks::split_url(url) {
                                self.push(key_at, field("key"), e);
                            }
                            if *refresh_s == 0 {
                                self.push(
                                    key_at,
                                    field("key"),
                                    "refresh_s must be at least 1".into(),
                                );
                            }
                        }
                        KeySource::PemFile(p) | KeySource::JwksFile(p)
                            if std::fs::metadata(p).is_err() =>
                        {
                            self.push(key_at, field("key"), format!("cannot read {p:?}"))
                        }
                        _ => {}
                    }
                    self.forward_headers(&j.forward_claims, scope, &field("forward_claims"));
                }
                Authenticator::Introspection(x) => {
                    if let Err(e) = crate::auth::jwks::split_url(&x.url) {
                        self.push(self.pos.field(scope, "url"), field("url"), e);
                    }
                    if let Some(f) = &x.ca_file {
                        let settings = super::UpstreamTls {
                            ca_file: Some(f.clone()),
                            ..Default::default()
                        };
                        if let Err(e) = crate::tls::client_config(Some(&settings)) {
                            self.push(
                                self.pos.field_value(scope, "ca_file", f),
                                field("ca_file"),
                                e,
                            );
                        }
                    }
                    self.forward_headers(&x.forward_claims, scope, &field("forward_claims"));
                }
                Authenticator::ClientCert(c) => {
                    if let Err(e) = crate::tls::client_auth::read_cas(&c.ca) {
                        self.push(self.pos.field_value(scope, "ca", &c.ca), field("ca"), e);
                    }
                    for claim in c.forward_claims.keys() {
                        if !["subject", "cn", "san"].contains(&claim.as_str()) {
                            self.push(
                                self.pos.after(scope, &format!("{claim:?}")),
                                field("forward_claims"),
                                format!("unknown claim {claim:?} (subject, cn or san)"),
                            );
                        }
                    }
                    self.forward_headers(&c.forward_claims, scope, &field("forward_claims"));
                }
                Authenticator::ApiKey(k) => {
                    if k.header.is_none() && k.query.is_none() {
                        self.push(
                            self.pos.after(scope, "ApiKey"),
                            field("header"),
                            "give `header`, `query` or both".into(),
                        );
                    }
                    for (consumer, hash) in &k.consumers {
                        let ok = hash.strip_prefix("sha256:").is_some_and(|h| {
                            h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())
                        });
                        if !ok {
                            self.push(
                                self.pos.after(scope, &format!("{consumer:?}")),
                                field("consumers"),
                                format!(
                                    "consumer {consumer:?}: expected \"sha256:\" and 64 hex digits"
                                ),
                            );
                        }
                    }
                    for consumer in k.scopes.keys().filter(|c| !k.consumers.contains_key(*c)) {
                        self.push(
                            self.pos.after(scope, "scopes"),
                            field("scopes"),
                            format!("scopes given for unknown consumer {consumer:?}"),
                        );
                    }
                    if !k.forward_as.bytes().all(is_token_byte) || k.forward_as.is_empty() {
                        self.push(
                            self.pos.field(scope, "forward_as"),
                            field("forward_as"),
                            "not a valid header name".into(),
                        );
                    }
                }
            }
        }
        for (i, r) in g.routes.iter().enumerate() {
            let scope = self.route_scope(i);
            crate::pace::point();
            match &r.auth {
                super::AuthPolicy::Required(names) => {
                    if names.is_empty() {
                        self.push(
                            self.pos.field(scope, "auth"),
                            format!("routes[{i}].auth"),
                            "Required needs at least one authenticator".into(),
                        );
                    }
                    for n in names {
                        if !g.authenticators.contains_key(n) {
                            let known: Vec<&str> =
                                g.authenticators.keys().map(String::as_str).collect();
                            self.push(
                                self.pos.after(scope, &format!("{n:?}")),
                                format!("routes[{i}].auth"),
                                format!(
                                    "unknown authenticator {n:?} (known: {})",
                                    if known.is_empty() {
                                        "none".into()
                                    } else {
                                        known.join(", ")
                                    }
                                ),
                            );
                        }
                    }
                }
                super::AuthPolicy::Public => {
                    if !r.scopes.is_empty() || !r.roles.is_empty() {
                        self.push(
                            self.pos.field(
                                scope,
                                if r.scopes.is_empty() {
                                    "roles"
                                } else {
                                    "scopes"
                                },
                            ),
                            format!("routes[{i}].auth"),
                            "scopes and roles need `auth: Required([...])`".into(),
                        );
                    }
                }
            }
        }
    }

    /// Every forwarded header name must be a valid field name.
    fn forward_headers(
        &mut self,
        map: &std::collections::BTreeMap<String, String>,
        scope: Scope,
        field: &str,
    ) {
        for header in map.values() {
            if header.is_empty() || !header.bytes().all(is_token_byte) {
                self.push(
                    self.pos.after(scope, &format!("{header:?}")),
                    field.to_string(),
                    format!("{header:?} is not a valid header name"),
                );
            }
        }
    }

    /// Checks a route's match and returns the names of its path params.
    fn route_match(
        &mut self,
        m: &Match,
        scope: Scope,
        field: &dyn Fn(&str) -> String,
    ) -> Vec<String> {
        let mut params = Vec::new();
        match (&m.path, &m.path_prefix) {
            (Some(_), Some(_)) | (None, None) => {
                self.push(
                    self.pos.field(scope, "match"),
                    field("match"),
                    "give exactly one of `path` or `path_prefix`".into(),
                );
            }
            (Some(p), None) => {
                let at = self.pos.field_value(scope, "path", p);
                if !p.starts_with('/') {
                    self.push(at, field("match.path"), "must start with '/'".into());
                }
                match path_template_params(p) {
                    Ok(ps) => params = ps,
                    Err(e) => self.push(at, field("match.path"), e),
                }
            }
            (None, Some(p)) => {
                let at = self.pos.field_value(scope, "path_prefix", p);
                if !p.starts_with('/') || p.contains(['{', '}']) {
                    self.push(
                        at,
                        field("match.path_prefix"),
                        "must start with '/' and contain no {params}".into(),
                    );
                }
            }
        }
        for method in &m.methods {
            let ok =
                !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-');
            if !ok {
                self.push(
                    self.pos.after(scope, &format!("{method:?}")),
                    field("match.methods"),
                    format!("{method:?} is not an upper-case method name"),
                );
            }
        }
        for name in m.headers.keys() {
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                self.push(
                    self.pos.after(scope, &format!("{name:?}")),
                    field("match.headers"),
                    format!("{name:?} is not a valid header name"),
                );
            }
        }
        params
    }
}

/// Resolves `host:port` to its first socket address.
pub fn resolve(target: &str) -> Result<SocketAddr, String> {
    let schemed = target.contains("://");
    let (https, target) = split_scheme(target);
    let with_port;
    let has_port = match target.strip_prefix('[') {
        Some(v6) => v6.contains("]:"),
        None => target.contains(':'),
    };
    let target = if schemed && !has_port {
        with_port = format!("{target}:{}", if https { 443 } else { 80 });
        with_port.as_str()
    } else {
        target
    };
    if let Ok(a) = target.parse::<SocketAddr>() {
        return Ok(a);
    }
    match target.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| format!("{target:?} resolves to no address")),
        Err(e) => Err(format!("{target:?} is not a resolvable host:port ({e})")),
    }
}

/// A target without its `http://` or `https://` scheme, and whether it
/// was `https://`.
pub fn split_scheme(target: &str) -> (bool, &str) {
    if let Some(rest) = target.strip_prefix("https://") {
        (true, rest.trim_end_matches('/'))
    } else {
        let rest = target.strip_prefix("http://").unwrap_or(target);
        (false, rest.trim_end_matches('/'))
    }
}

/// The host of a `host:port` (or `[v6]:port`, or bare host) target.
pub fn target_host(target: &str) -> &str {
    let (_, t) = split_scheme(target);
    if let Some(rest) = t.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    t.rsplit_once(':').map_or(t, |(h, _)| h)
}

/// The part of a path pattern before its first `{param}`.
fn literal_prefix(p: &str) -> &str {
    p.split('{').next().unwrap_or(p)
}

/// Names of the `{params}` of a path template, each a whole segment.
pub fn path_template_params(p: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for seg in p.split('/').skip(1) {
        if seg.contains(['{', '}']) {
            let name = seg
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .filter(|n| is_param_name(n))
                .ok_or_else(|| {
                    format!("segment {seg:?}: a param must be a whole segment like {{id}}")
                })?;
            if names.iter().any(|n| n == name) {
                return Err(format!("param {{{name}}} appears twice"));
            }
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// Names of the `{params}` used anywhere in a rewrite template.
pub fn template_params(t: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut rest = t;
    while let Some((_, after)) = rest.split_once('{') {
        let (name, tail) = after
            .split_once('}')
            .ok_or_else(|| "unclosed '{' in template".to_string())?;
        if !is_param_name(name) {
            return Err(format!("{{{name}}} is not a valid param name"));
        }
        names.push(name.to_string());
        rest = tail;
    }
    if rest.contains('}') {
        return Err("unmatched '}' in template".into());
    }
    Ok(names)
}

fn is_param_name(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// RFC 9110 token characters.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
