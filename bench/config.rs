//! Config load cost against config size: parse + validate, compile, and
//! both (what `shardgate check` and a reload do), for N template routes and
//! a catch-all (the configs `scripts/gen-routes.py` writes). Linear in N is
//! the target: 20,000 routes should cost about 20 times 1,000.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shardgate::compiled::compile;
use shardgate::config;
use std::fmt::Write;
use std::time::Duration;

/// The text `scripts/gen-routes.py N` writes (one shard, four upstreams).
fn generated(n: usize) -> String {
    let mut t = String::from("Gateway(\n    shards: Count(1),\n");
    t.push_str("    listeners: [ Listener(name: \"main\", bind: \"127.0.0.1:8080\") ],\n");
    t.push_str("    upstreams: {\n");
    for k in 0..4 {
        let _ = writeln!(
            t,
            "        \"up-{k}\": Upstream(targets: [\"127.0.0.1:9001\"], max_idle_per_target: 256),"
        );
    }
    t.push_str("    },\n    routes: [\n");
    for i in 0..n {
        let _ = writeln!(
            t,
            "        Route(name: \"svc-{i}\", match: Match(path: \"/api/v1/svc-{i}/items/{{id}}\", \
             methods: [\"GET\", \"HEAD\"]), upstream: \"up-{}\", rewrite: \"/svc-{i}/items/{{id}}\"),",
            i % 4
        );
    }
    t.push_str(
        "        Route(name: \"catch-all\", match: Match(path_prefix: \"/\"), upstream: \"up-0\"),\n",
    );
    t.push_str("    ],\n)\n");
    t
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("config");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for n in [1_000usize, 10_000, 20_000] {
        let text = generated(n);
        let parsed = config::parse("bench.ron", &text).expect("generated config is valid");
        assert_eq!(parsed.routes.len(), n + 1);
        assert!(compile(&parsed).is_ok());
        g.throughput(Throughput::Elements(n as u64 + 1));
        g.bench_with_input(BenchmarkId::new("parse_validate", n), &text, |b, t| {
            b.iter(|| config::parse("bench.ron", black_box(t)))
        });
        g.bench_with_input(BenchmarkId::new("compile", n), &parsed, |b, p| {
            b.iter(|| compile(black_box(p)))
        });
        g.bench_with_input(
            BenchmarkId::new("parse_validate_compile", n),
            &text,
            |b, t| {
                b.iter(|| {
                    let g = config::parse("bench.ron", black_box(t)).map_err(|e| e.to_string())?;
                    compile(&g)
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
