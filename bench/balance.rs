//! Target picking: a peak-EWMA pick among 2 of 10 targets (the pure choice,
//! and the whole shard-side pick with health and in-flight counts), a
//! consistent-hash ring lookup, and taking in one call's outcome.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shardgate::metrics::UpstreamOutcome;
use shardgate::proxy::pool::Pools;
use shardgate::resilience::balance::{ewma_load, p2c, ring_lookup, PeakEwma, Rng};
use shardgate::resilience::targets::TargetTable;
use std::cell::Cell;
use std::time::Duration;

fn config(balance: &str) -> shardgate::compiled::Compiled {
    let targets: Vec<String> = (0..10)
        .map(|i| format!("\"127.0.0.1:{}\"", 9000 + i))
        .collect();
    let text = format!(
        "Gateway(listeners: [Listener(name: \"main\", bind: \"127.0.0.1:0\")],
          upstreams: {{ \"app\": Upstream(targets: [{}], balance: {balance},
            outlier_detection: Some(OutlierDetection(consecutive_5xx: 5))) }},
          routes: [Route(name: \"all\", match: Match(path_prefix: \"/\"), upstream: \"app\")])",
        targets.join(", ")
    );
    let g = shardgate::config::parse("bench.ron", &text).expect("bench config parses");
    shardgate::compiled::compile(&g).expect("bench config compiles")
}

fn bench(c: &mut Criterion) {
    let now = 1_000_000_000_000u64;
    let ewmas: Vec<PeakEwma> = (0..10)
        .map(|i| {
            let mut e = PeakEwma::new(0);
            e.observe(1_000_000 + i * 100_000, now - 1_000_000);
            e
        })
        .collect();
    let outstanding = [3usize, 0, 1, 7, 2, 0, 4, 1, 1, 5];
    let mut rng = Rng::new(42);
    c.bench_function("balance/p2c_peak_ewma_10", |b| {
        b.iter(|| {
            p2c(
                10,
                &mut rng,
                |_| true,
                |i| {
                    let e = ewmas.get(i).copied().unwrap_or(PeakEwma::new(now));
                    ewma_load(
                        &e,
                        outstanding.get(i).copied().unwrap_or(0),
                        1,
                        black_box(now),
                    )
                },
            )
        })
    });

    let compiled = config("PeakEwma");
    let up = &compiled.upstreams[0];
    let mut table = TargetTable::new(&compiled, None, 7);
    let pools = Pools::default();
    let cursor = Cell::new(0);
    for (i, &t) in up.targets.iter().enumerate() {
        table.observe(
            up,
            t,
            Duration::from_micros(500 + 50 * i as u64),
            UpstreamOutcome::Ok,
            shardgate::ratelimit::limiter::now_ns(),
        );
    }
    c.bench_function("balance/table_pick_peak_ewma_10", |b| {
        b.iter(|| table.pick(black_box(up), &pools, &cursor, None, None))
    });
    let t3 = up.targets[3];
    c.bench_function("balance/observe", |b| {
        b.iter(|| {
            table.observe(
                black_box(up),
                t3,
                Duration::from_micros(700),
                UpstreamOutcome::Ok,
                shardgate::ratelimit::limiter::now_ns(),
            )
        })
    });

    let hashed = config("ConsistentHash(Header(\"x-user\"))");
    let ring = &hashed.upstreams[0].plan.ring;
    let mut k = 0u64;
    c.bench_function("balance/ring_lookup_10x128", |b| {
        b.iter(|| {
            k = k.wrapping_add(0x9e37_79b9_7f4a_7c15);
            ring_lookup(ring, black_box(k), |_| true)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
