//! The Prometheus text exposition format (0.0.4) of merged shard metrics.

use super::{AuthResult, Latency, LimitDecision, PartOutcome, Snapshot, UpstreamOutcome, NO_ROUTE};
use crate::shard::ShardReport;
use std::fmt::Write;

/// Control-side figures that no shard holds.
#[derive(Debug, Clone, Default)]
pub struct Process {
    /// The gateway's version.
    pub version: &'static str,
    /// Unix time the process started, seconds.
    pub start_time_s: f64,
    /// Successful reloads.
    pub reloads_ok: u64,
    /// Failed reloads.
    pub reloads_failed: u64,
    /// Unix time of the last successful load or reload, seconds.
    pub last_reload_ok_s: f64,
    /// Resident memory, bytes (0: unknown).
    pub resident_bytes: u64,
    /// Open file descriptors (0: unknown).
    pub open_fds: u64,
    /// Listener names by index (for the `listener` label).
    pub listeners: Vec<String>,
    /// Spans the OTLP exporter sent.
    pub spans_exported: u64,
    /// Spans dropped because the collector could not take them.
    pub spans_failed: u64,
}

/// Escapes a label value (`\`, `"` and newlines).
pub fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A metric family read off each item: name, help, and the value of one item.
type Family<T, V> = (&'static str, &'static str, fn(&T) -> V);

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one histogram's series: cumulative `_bucket`s at `bounds_s`
/// (and `+Inf`), `_sum` and `_count`. The sum is the histogram's own
/// (values at 1% resolution).
fn histogram(out: &mut String, name: &str, labels: &str, h: &Latency, bounds_s: &[f64]) {
    let mut counts = vec![0u64; bounds_s.len()];
    let mut sum_us = 0f64;
    for v in h.iter_recorded() {
        let value_us = v.value_iterated_to();
        let n = v.count_at_value();
        sum_us += h.median_equivalent(value_us) as f64 * n as f64;
        // The first bound at or above the value; values past the last bound only count in +Inf.
        let at = bounds_s.partition_point(|&b| b * 1e6 < h.lowest_equivalent(value_us) as f64);
        if let Some(c) = counts.get_mut(at) {
            *c += n;
        }
    }
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (b, c) in bounds_s.iter().zip(&counts) {
        cumulative += c;
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.len());
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", sum_us / 1e6);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.len());
}

/// Renders everything: `merged` is the shards' merged snapshot (absent when
/// metrics are off), `reports` the shards' reports.
pub fn render(
    merged: Option<&Snapshot>,
    reports: &[ShardReport],
    p: &Process,
    bounds_s: &[f64],
) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let o = &mut out;
    header(
        o,
        "shardgate_build_info",
        "gauge",
        "The running build (value 1).",
    );
    let driver = reports
        .first()
        .map_or("unknown".to_string(), |r| r.driver.to_string());
    let _ = writeln!(
        o,
        "shardgate_build_info{{version=\"{}\",driver=\"{driver}\"}} 1",
        p.version
    );
    header(
        o,
        "shardgate_start_time_seconds",
        "gauge",
        "Unix time the process started.",
    );
    let _ = writeln!(o, "shardgate_start_time_seconds {}", p.start_time_s);
    header(
        o,
        "shardgate_config_reloads_total",
        "counter",
        "Config reloads by result.",
    );
    let _ = writeln!(
        o,
        "shardgate_config_reloads_total{{result=\"success\"}} {}",
        p.reloads_ok
    );
    let _ = writeln!(
        o,
        "shardgate_config_reloads_total{{result=\"failure\"}} {}",
        p.reloads_failed
    );
    header(
        o,
        "shardgate_config_last_reload_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful config load or reload.",
    );
    let _ = writeln!(
        o,
        "shardgate_config_last_reload_success_timestamp_seconds {}",
        p.last_reload_ok_s
    );
    if p.resident_bytes > 0 {
        header(
            o,
            "shardgate_process_resident_memory_bytes",
            "gauge",
            "Resident memory of the process.",
        );
        let _ = writeln!(
            o,
            "shardgate_process_resident_memory_bytes {}",
            p.resident_bytes
        );
    }
    header(
        o,
        "shardgate_trace_spans_exported_total",
        "counter",
        "Spans sent to the OTLP collector.",
    );
    let _ = writeln!(
        o,
        "shardgate_trace_spans_exported_total {}",
        p.spans_exported
    );
    header(
        o,
        "shardgate_trace_spans_export_failed_total",
        "counter",
        "Spans dropped because their post to the collector failed.",
    );
    let _ = writeln!(
        o,
        "shardgate_trace_spans_export_failed_total {}",
        p.spans_failed
    );
    if p.open_fds > 0 {
        header(
            o,
            "shardgate_process_open_fds",
            "gauge",
            "Open file descriptors of the process.",
        );
        let _ = writeln!(o, "shardgate_process_open_fds {}", p.open_fds);
    }
    shards(o, reports);
    cache(o, reports);
    if let Some(m) = merged {
        requests(o, m, p, bounds_s);
        upstreams(o, m, reports, bounds_s);
        decisions(o, m);
    } else {
        pools(o, reports);
    }
    breakers(o, reports);
    retries_and_fallbacks(o, reports);
    target_health(o, reports);
    out
}

/// Target health and ejections: one host-wide view that every shard holds,
/// so the first shard's report tells.
fn target_health(o: &mut String, reports: &[ShardReport]) {
    let Some(first) = reports.first() else { return };
    header(
        o,
        "shardgate_upstream_target_healthy",
        "gauge",
        "1 when the target takes traffic, 0 when unhealthy (health checks) or ejected (outlier detection).",
    );
    for p in &first.pools {
        let up = u8::from(p.health == "healthy");
        let _ = writeln!(
            o,
            "shardgate_upstream_target_healthy{{upstream=\"{}\",target=\"{}\"}} {up}",
            label(&p.upstream),
            p.target
        );
    }
    header(
        o,
        "shardgate_upstream_ejections_total",
        "counter",
        "Times outlier detection ejected the target.",
    );
    for p in &first.pools {
        let _ = writeln!(
            o,
            "shardgate_upstream_ejections_total{{upstream=\"{}\",target=\"{}\"}} {}",
            label(&p.upstream),
            p.target,
            p.ejections
        );
    }
}

/// Retries (sent, refused by the budget) and fallback answers per upstream.
fn retries_and_fallbacks(o: &mut String, reports: &[ShardReport]) {
    use crate::resilience::retry::UpstreamStats;
    let mut merged: Vec<(&str, UpstreamStats)> = Vec::new();
    for (name, s) in reports.iter().flat_map(|r| &r.resilience) {
        let i = match merged.iter().position(|(n, _)| *n == name.as_str()) {
            Some(i) => i,
            None => {
                merged.push((name.as_str(), UpstreamStats::default()));
                merged.len() - 1
            }
        };
        if let Some((_, m)) = merged.get_mut(i) {
            m.retries += s.retries;
            m.retries_refused += s.retries_refused;
            for (a, b) in m.fallbacks.iter_mut().zip(s.fallbacks) {
                *a += b;
            }
        }
    }
    if merged.is_empty() {
        return;
    }
    header(
        o,
        "shardgate_upstream_retries_total",
        "counter",
        "Retries per upstream: sent, or refused by the retry budget.",
    );
    for (name, s) in &merged {
        let name = label(name);
        let _ = writeln!(
            o,
            "shardgate_upstream_retries_total{{upstream=\"{name}\",result=\"sent\"}} {}",
            s.retries
        );
        let _ = writeln!(
            o,
            "shardgate_upstream_retries_total{{upstream=\"{name}\",result=\"budget_exhausted\"}} {}",
            s.retries_refused
        );
    }
    header(
        o,
        "shardgate_fallbacks_total",
        "counter",
        "Fallback answers per upstream and reason (the X-Fallback value).",
    );
    for (name, s) in &merged {
        let name = label(name);
        for (r, n) in crate::resilience::fallback::Reason::ALL
            .iter()
            .zip(s.fallbacks)
        {
            let _ = writeln!(
                o,
                "shardgate_fallbacks_total{{upstream=\"{name}\",reason=\"{}\"}} {n}",
                r.label()
            );
        }
    }
}

/// Circuit-breaker state (host-wide: the most open shard's view) and the
/// transitions every shard made.
fn breakers(o: &mut String, reports: &[ShardReport]) {
    let merged = crate::resilience::breaker::merge_reports(reports.iter().map(|r| &r.breakers));
    if merged.is_empty() {
        return;
    }
    header(
        o,
        "shardgate_circuit_breaker_state",
        "gauge",
        "Circuit breaker state per upstream: 0 closed, 1 open, 2 half-open.",
    );
    for b in &merged {
        let _ = writeln!(
            o,
            "shardgate_circuit_breaker_state{{upstream=\"{}\"}} {}",
            label(&b.upstream),
            b.phase.gauge()
        );
    }
    header(
        o,
        "shardgate_circuit_breaker_transitions_total",
        "counter",
        "Circuit breaker transitions per upstream and new state.",
    );
    for b in &merged {
        for (to, n) in ["open", "half_open", "closed"].iter().zip(b.transitions) {
            let _ = writeln!(
                o,
                "shardgate_circuit_breaker_transitions_total{{upstream=\"{}\",to=\"{to}\"}} {n}",
                label(&b.upstream)
            );
        }
    }
}

/// Response-cache gauges and counters, per route and shard (routes that
/// were requested on the shard).
fn cache(o: &mut String, reports: &[ShardReport]) {
    if reports.iter().all(|r| r.cache.is_empty()) {
        return;
    }
    let gauges: [Family<crate::cache::CacheReport, u64>; 3] = [
        (
            "shardgate_cache_bytes",
            "Bytes held by the response cache, per route and shard.",
            |c| c.bytes,
        ),
        (
            "shardgate_cache_entries",
            "Entries held by the response cache, per route and shard.",
            |c| c.entries,
        ),
        (
            "shardgate_cache_capacity_bytes",
            "The response cache's byte budget, per route and shard.",
            |c| c.capacity,
        ),
    ];
    for (name, help, f) in gauges {
        header(o, name, "gauge", help);
        for r in reports {
            for c in &r.cache {
                let route = label(&c.route);
                let _ = writeln!(o, "{name}{{route=\"{route}\",shard=\"{}\"}} {}", r.id, f(c));
            }
        }
    }
    header(
        o,
        "shardgate_cache_requests_total",
        "counter",
        "Requests on cached routes by X-Cache-Status (hit, miss, bypass, expired, stale), per route and shard.",
    );
    for r in reports {
        for c in &r.cache {
            let route = label(&c.route);
            for (s, n) in crate::cache::Status::ALL.iter().zip(c.counts) {
                let status = s.label().to_ascii_lowercase();
                let _ = writeln!(
                    o,
                    "shardgate_cache_requests_total{{route=\"{route}\",shard=\"{}\",status=\"{status}\"}} {n}",
                    r.id
                );
            }
        }
    }
}

fn shards(o: &mut String, reports: &[ShardReport]) {
    let gauges: [Family<ShardReport, u64>; 8] = [
        (
            "shardgate_shard_connections",
            "Client connections open, per shard.",
            |r| r.connections as u64,
        ),
        (
            "shardgate_shard_requests_in_flight",
            "Requests being handled, per shard.",
            |r| r.in_flight as u64,
        ),
        (
            "shardgate_shard_ratelimit_keys",
            "Rate-limit keys held, per shard.",
            |r| r.ratelimit_keys as u64,
        ),
        (
            "shardgate_shard_free_buffers",
            "Read buffers kept for reuse, per shard.",
            |r| r.free_buffers as u64,
        ),
        (
            "shardgate_shard_held_reads",
            "Connections waiting for their next request with a read buffer held, per shard.",
            |r| r.held_reads as u64,
        ),
        (
            "shardgate_websocket_tunnels",
            "Upgraded connections (WebSocket tunnels) open, per shard.",
            |r| r.websocket_tunnels as u64,
        ),
        (
            "shardgate_http2_connections",
            "HTTP/2 client connections open, per shard.",
            |r| r.http2_connections as u64,
        ),
        (
            "shardgate_idle_connections",
            "HTTP/1.1 client connections waiting for their next request without a read buffer, per shard.",
            |r| r.idle_connections as u64,
        ),
    ];
    for (name, help, f) in gauges {
        header(o, name, "gauge", help);
        for r in reports {
            let _ = writeln!(o, "{name}{{shard=\"{}\"}} {}", r.id, f(r));
        }
    }
    let counters: [Family<ShardReport, u64>; 5] = [
        (
            "shardgate_shard_requests_total",
            "Requests answered, per shard.",
            |r| r.requests,
        ),
        (
            "shardgate_http2_streams_total",
            "HTTP/2 streams served, per shard.",
            |r| r.http2_streams_total,
        ),
        (
            "shardgate_websocket_tunnels_total",
            "Upgraded connections (WebSocket tunnels) opened, per shard.",
            |r| r.websocket_tunnels_total,
        ),
        (
            "shardgate_ratelimit_quota_messages_sent_total",
            "Quota messages sent to other shards.",
            |r| r.quota_sent,
        ),
        (
            "shardgate_ratelimit_quota_messages_received_total",
            "Quota messages received from other shards.",
            |r| r.quota_received,
        ),
    ];
    for (name, help, f) in counters {
        header(o, name, "counter", help);
        for r in reports {
            let _ = writeln!(o, "{name}{{shard=\"{}\"}} {}", r.id, f(r));
        }
    }
    header(o, "shardgate_mirror_requests_total", "counter", "Mirrored request copies by outcome (sent, answered, timeout, failed) and requests not mirrored (skipped_busy: max_concurrency reached; skipped_body: body too large or not in memory), per shard.");
    for r in reports {
        for (outcome, n) in r.edge.mirror {
            let _ = writeln!(
                o,
                "shardgate_mirror_requests_total{{shard=\"{}\",outcome=\"{outcome}\"}} {n}",
                r.id
            );
        }
    }
    header(
        o,
        "shardgate_edge_refused_total",
        "counter",
        "Requests refused by an edge policy (ip_filter, cors_preflight, validation), per shard.",
    );
    for r in reports {
        for (policy, n) in r.edge.refused {
            let _ = writeln!(
                o,
                "shardgate_edge_refused_total{{shard=\"{}\",policy=\"{policy}\"}} {n}",
                r.id
            );
        }
    }
    header(
        o,
        "shardgate_cors_preflights_total",
        "counter",
        "CORS preflights answered 204 at the edge, per shard.",
    );
    for r in reports {
        let _ = writeln!(
            o,
            "shardgate_cors_preflights_total{{shard=\"{}\"}} {}",
            r.id, r.edge.preflights
        );
    }
    header(o, "shardgate_listener_connections_total", "counter", "Client connections by listener, shard and result (admitted, refused over max_connections, accept_error).");
    for r in reports {
        for l in &r.listeners {
            let name = label(&l.name);
            for (result, n) in [
                ("admitted", l.admitted),
                ("refused", l.refused),
                ("accept_error", l.accept_errors),
            ] {
                let _ = writeln!(o, "shardgate_listener_connections_total{{listener=\"{name}\",shard=\"{}\",result=\"{result}\"}} {n}", r.id);
            }
        }
    }
    header(
        o,
        "shardgate_listener_connections_open",
        "gauge",
        "Client connections open by listener and shard.",
    );
    for r in reports {
        for l in &r.listeners {
            let _ = writeln!(
                o,
                "shardgate_listener_connections_open{{listener=\"{}\",shard=\"{}\"}} {}",
                label(&l.name),
                r.id,
                l.open
            );
        }
    }
}

fn pools(o: &mut String, reports: &[ShardReport]) {
    let gauges: [Family<crate::shard::PoolReport, usize>; 4] = [
        (
            "shardgate_upstream_connections_idle",
            "Idle pooled upstream connections.",
            |p| p.idle,
        ),
        (
            "shardgate_upstream_connections_open",
            "Upstream connections open (in use, opening or idle).",
            |p| p.open,
        ),
        (
            "shardgate_upstream_requests_outstanding",
            "Requests in flight to the target.",
            |p| p.outstanding,
        ),
        (
            "shardgate_upstream_requests_queued",
            "Requests waiting for an upstream connection slot.",
            |p| p.waiting,
        ),
    ];
    for (name, help, f) in gauges {
        header(o, name, "gauge", help);
        let mut sums: Vec<(&str, std::net::SocketAddr, usize)> = Vec::new();
        for p in reports.iter().flat_map(|r| &r.pools) {
            match sums
                .iter_mut()
                .find(|(u, t, _)| *u == p.upstream && *t == p.target)
            {
                Some(s) => s.2 += f(p),
                None => sums.push((&p.upstream, p.target, f(p))),
            }
        }
        for (u, t, n) in sums {
            let _ = writeln!(o, "{name}{{upstream=\"{}\",target=\"{t}\"}} {n}", label(u));
        }
    }
}

fn requests(o: &mut String, m: &Snapshot, p: &Process, bounds_s: &[f64]) {
    header(
        o,
        "shardgate_requests_total",
        "counter",
        "Requests by listener, route, method and status code (route \"\" matched none).",
    );
    for (route, s) in &m.routes {
        let route = label(route);
        for ((listener, method, code), n) in &s.requests {
            let listener = p
                .listeners
                .get(usize::from(*listener))
                .map_or("", String::as_str);
            let _ = writeln!(
                o,
                "shardgate_requests_total{{listener=\"{}\",route=\"{route}\",method=\"{}\",code=\"{code}\"}} {n}",
                label(listener),
                method.label()
            );
        }
    }
    header(
        o,
        "shardgate_request_duration_seconds",
        "histogram",
        "Request duration per route, from the head read to the last byte sent.",
    );
    for (route, s) in &m.routes {
        if let Some(h) = &s.duration {
            let labels = format!(
                "route=\"{}\"",
                label(if route == NO_ROUTE { "" } else { route })
            );
            histogram(
                o,
                "shardgate_request_duration_seconds",
                &labels,
                h,
                bounds_s,
            );
        }
    }
    header(
        o,
        "shardgate_access_log_dropped_total",
        "counter",
        "Access-log lines dropped because the writer's queue was full.",
    );
    let _ = writeln!(o, "shardgate_access_log_dropped_total {}", m.log_dropped);
    header(
        o,
        "shardgate_trace_spans_dropped_total",
        "counter",
        "Spans dropped because the exporter's queue was full.",
    );
    let _ = writeln!(o, "shardgate_trace_spans_dropped_total {}", m.spans_dropped);
}

fn upstreams(o: &mut String, m: &Snapshot, reports: &[ShardReport], bounds_s: &[f64]) {
    header(
        o,
        "shardgate_upstream_requests_total",
        "counter",
        "Upstream calls by upstream, target and outcome.",
    );
    for ((u, t), s) in &m.targets {
        let u = label(u);
        for (outcome, n) in UpstreamOutcome::ALL.iter().zip(&s.outcomes) {
            let _ = writeln!(o, "shardgate_upstream_requests_total{{upstream=\"{u}\",target=\"{t}\",outcome=\"{}\"}} {n}", outcome.label());
        }
    }
    header(
        o,
        "shardgate_upstream_request_duration_seconds",
        "histogram",
        "Upstream call duration per upstream and target.",
    );
    for ((u, t), s) in &m.targets {
        if let Some(h) = &s.duration {
            let labels = format!("upstream=\"{}\",target=\"{t}\"", label(u));
            histogram(
                o,
                "shardgate_upstream_request_duration_seconds",
                &labels,
                h,
                bounds_s,
            );
        }
    }
    header(
        o,
        "shardgate_upstream_connections_total",
        "counter",
        "Connections used for upstream calls: new (opened) or reused (from the pool).",
    );
    for ((u, t), s) in &m.targets {
        let u = label(u);
        let _ = writeln!(o, "shardgate_upstream_connections_total{{upstream=\"{u}\",target=\"{t}\",kind=\"new\"}} {}", s.new_connections);
        let _ = writeln!(o, "shardgate_upstream_connections_total{{upstream=\"{u}\",target=\"{t}\",kind=\"reused\"}} {}", s.reused);
    }
    pools(o, reports);
}

fn decisions(o: &mut String, m: &Snapshot) {
    header(
        o,
        "shardgate_auth_decisions_total",
        "counter",
        "Authentication decisions by authenticator and result.",
    );
    for (a, counts) in &m.auth {
        for (r, n) in AuthResult::ALL.iter().zip(counts) {
            let _ = writeln!(
                o,
                "shardgate_auth_decisions_total{{authenticator=\"{}\",result=\"{}\"}} {n}",
                label(a),
                r.label()
            );
        }
    }
    header(
        o,
        "shardgate_ratelimit_decisions_total",
        "counter",
        "Rate-limit decisions by limit: admitted, refused, or admitted after waiting for quota.",
    );
    for (l, counts) in &m.limits {
        for (d, n) in LimitDecision::ALL.iter().zip(counts) {
            let _ = writeln!(
                o,
                "shardgate_ratelimit_decisions_total{{limit=\"{}\",decision=\"{}\"}} {n}",
                label(l),
                d.label()
            );
        }
    }
    header(
        o,
        "shardgate_aggregate_parts_total",
        "counter",
        "Aggregation part outcomes by route and part.",
    );
    for ((r, part), counts) in &m.parts {
        for (oc, n) in PartOutcome::ALL.iter().zip(counts) {
            let _ = writeln!(
                o,
                "shardgate_aggregate_parts_total{{route=\"{}\",part=\"{}\",outcome=\"{}\"}} {n}",
                label(r),
                label(part),
                oc.label()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn buckets_are_cumulative_and_end_in_inf() {
        let mut h = super::super::latency();
        for ms in [1, 2, 3, 40, 700, 20_000] {
            super::super::record(&mut h, Duration::from_millis(ms));
        }
        let mut out = String::new();
        histogram(
            &mut out,
            "x",
            "route=\"r\"",
            &h,
            &[0.001, 0.005, 0.05, 1.0, 10.0],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "x_bucket{route=\"r\",le=\"0.001\"} 1");
        assert_eq!(lines[1], "x_bucket{route=\"r\",le=\"0.005\"} 3");
        assert_eq!(lines[2], "x_bucket{route=\"r\",le=\"0.05\"} 4");
        assert_eq!(lines[3], "x_bucket{route=\"r\",le=\"1\"} 5");
        assert_eq!(lines[4], "x_bucket{route=\"r\",le=\"10\"} 5");
        assert_eq!(lines[5], "x_bucket{route=\"r\",le=\"+Inf\"} 6");
        assert!(
            lines[6].starts_with("x_sum{route=\"r\"} 20.7"),
            "{}",
            lines[6]
        );
        assert_eq!(lines[7], "x_count{route=\"r\"} 6");
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
