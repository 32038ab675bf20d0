//! What metrics cost: recording one request into a shard's counters and
//! histograms (on the request path; target < 50 ns), and, on the admin
//! side, a shard's snapshot, the merge of four shards' snapshots and the
//! Prometheus text of the result, with 1,000 routes that all saw traffic.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shardgate::metrics::prometheus::{render, Process};
use shardgate::metrics::{Method, Names, ShardMetrics, Snapshot, UpstreamOutcome};
use std::net::SocketAddr;
use std::time::Duration;

const ROUTES: usize = 1000;

fn shard(targets: &[SocketAddr], route_names: &[String]) -> ShardMetrics {
    let mut m = ShardMetrics::default();
    m.configure(
        true,
        &Names {
            routes: route_names.iter().map(String::as_str).collect(),
            upstreams: vec![("up", targets)],
            authenticators: vec!["jwt"],
            limits: vec!["per-ip"],
            parts: route_names.iter().map(|_| Vec::new()).collect(),
        },
    );
    m
}

/// A shard whose every route saw requests with a spread of latencies.
fn busy_shard(targets: &[SocketAddr], route_names: &[String]) -> ShardMetrics {
    let mut m = shard(targets, route_names);
    for i in 0..ROUTES * 20 {
        let us = 200 + (i * 7919) % 50_000;
        let status = if i % 17 == 0 { 404 } else { 200 };
        m.request(
            0,
            Some(i % ROUTES),
            Method::Get,
            status,
            Duration::from_micros(us as u64),
        );
        m.upstream_call(
            0,
            i % targets.len(),
            UpstreamOutcome::Ok,
            Duration::from_micros(us as u64),
        );
    }
    m
}

fn bench(c: &mut Criterion) {
    let targets: Vec<SocketAddr> = (0..4)
        .map(|i| format!("127.0.0.1:{}", 9000 + i).parse().unwrap())
        .collect();
    let route_names: Vec<String> = (0..ROUTES).map(|i| format!("svc-{i}")).collect();

    let mut m = busy_shard(&targets, &route_names);
    let mut i = 0usize;
    c.bench_function("metrics/record one proxied request (one hot route)", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let took = Duration::from_micros(300 + (i % 4096) as u64);
            m.request(0, Some(black_box(7)), Method::Get, 200, took);
            m.upstream_call(0, 0, UpstreamOutcome::Ok, took);
        })
    });
    c.bench_function(
        "metrics/record one proxied request (1000 routes in turn)",
        |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let route = i % ROUTES;
                let took = Duration::from_micros(300 + (i % 4096) as u64);
                m.request(0, Some(black_box(route)), Method::Get, 200, took);
                m.upstream_call(0, i % 4, UpstreamOutcome::Ok, took);
            })
        },
    );

    let shards: Vec<ShardMetrics> = (0..4).map(|_| busy_shard(&targets, &route_names)).collect();
    c.bench_function("metrics/snapshot of one shard (1000 routes)", |b| {
        b.iter(|| black_box(shards[0].snapshot()))
    });
    let snaps: Vec<Snapshot> = shards.iter().map(ShardMetrics::snapshot).collect();
    c.bench_function("metrics/merge 4 shards (1000 routes)", |b| {
        b.iter(|| black_box(Snapshot::merged(&snaps)))
    });
    let merged = Snapshot::merged(&snaps);
    let bounds: Vec<f64> = shardgate::config::default_buckets_ms()
        .iter()
        .map(|ms| ms / 1000.0)
        .collect();
    let process = Process {
        version: "bench",
        listeners: vec!["main".into()],
        ..Process::default()
    };
    c.bench_function("metrics/prometheus text (1000 routes)", |b| {
        b.iter(|| black_box(render(Some(&merged), &[], &process, &bounds)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
