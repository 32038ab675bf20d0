//! The admit decision of each rate-limit algorithm (advance + decide +
//! consume on one key's state), the per-request cost of a local limit check.

use criterion::BatchSize;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shardgate::ratelimit::algorithm::{admit_all, Algorithm};
use shardgate::ratelimit::table::KeyTable;

fn bench(c: &mut Criterion) {
    let s = 1_000_000_000u64;
    let algs = [
        (
            "token_bucket",
            Algorithm::TokenBucket {
                capacity: 1_000_000,
                refill_per_s: 1e9,
            },
        ),
        (
            "leaky_bucket",
            Algorithm::LeakyBucket {
                capacity: 1_000_000,
                drain_per_s: 1e9,
                max_wait_ns: None,
            },
        ),
        (
            "fixed_window",
            Algorithm::FixedWindow {
                limit: u64::MAX / 2,
                window_ns: s,
            },
        ),
        (
            "sliding_window",
            Algorithm::SlidingWindow {
                limit: u64::MAX / 2,
                window_ns: s,
            },
        ),
        (
            "sliding_log_100",
            Algorithm::SlidingLog {
                limit: 100,
                window_ns: s,
            },
        ),
    ];
    let mut g = c.benchmark_group("admit");
    for (name, alg) in &algs {
        let mut st = alg.new_state(0);
        // Time moves 1 µs per request; the log's window keeps ~100 entries.
        let mut now = 0u64;
        let step = if name.starts_with("sliding_log") {
            s / 100
        } else {
            1_000
        };
        g.bench_function(*name, |b| {
            b.iter(|| {
                now += step;
                black_box(alg.admit(&mut st, black_box(now), 1))
            })
        });
    }
    g.finish();
    let minute = Algorithm::SlidingWindow {
        limit: u64::MAX / 2,
        window_ns: 60 * s,
    };
    let hour = Algorithm::FixedWindow {
        limit: u64::MAX / 2,
        window_ns: 3600 * s,
    };
    let (mut a, mut b) = (minute.new_state(0), hour.new_state(0));
    let mut now = 0u64;
    c.bench_function("admit_all/two_limits", |bch| {
        bch.iter(|| {
            now += 1_000;
            black_box(admit_all(&mut [(&minute, &mut a), (&hour, &mut b)], now, 1))
        })
    });
}

fn table(c: &mut Criterion) {
    let s = 1_000_000_000u64;
    let lim = Algorithm::TokenBucket {
        capacity: 100,
        refill_per_s: 10.0,
    };
    let mut t = KeyTable::new(1_000_000, 60 * s);
    let keys: Vec<String> = (0..100_000)
        .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
        .collect();
    for k in &keys {
        t.admit(k, &[&lim], 0, 1);
    }
    let mut i = 0usize;
    let mut out = Vec::new();
    c.bench_function("table/admit_100k_keys", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(t.admit_into(&keys[i], &[&lim], 1_000, 1, &mut out))
        })
    });
    c.bench_function("table/admit_hot_key", |b| {
        b.iter(|| black_box(t.admit_into(black_box("10.0.0.1"), &[&lim], 1_000, 1, &mut out)))
    });
    // Sweep of 100k keys of which half are idle.
    c.bench_function("table/sweep_100k_half_idle", |b| {
        b.iter_batched(
            || {
                let mut t = KeyTable::new(1_000_000, 60 * s);
                for (n, k) in keys.iter().enumerate() {
                    let seen = if n % 2 == 0 { 0 } else { 100 * s };
                    t.admit(k, &[&lim], seen, 1);
                }
                t
            },
            |mut t| black_box(t.sweep(120 * s)),
            BatchSize::LargeInput,
        )
    });
}

criterion_group!(benches, bench, table);
criterion_main!(benches);
