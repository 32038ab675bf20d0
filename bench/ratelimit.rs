//! The admit decision of each rate-limit algorithm (advance + decide +
//! consume on one key's state), the per-request cost of a local limit check.

use criterion::BatchSize;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shardgate::ratelimit::algorithm::{admit_all, Algorithm};
use shardgate::ratelimit::limiter::{Check, Gossip, Limiter, Outcome};
use shardgate::ratelimit::plan::RateLimitPlan;
use shardgate::ratelimit::table::{key_hash, Entry, KeyTable};

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

fn plan(alg: Algorithm, units: u64) -> RateLimitPlan {
    RateLimitPlan::single_local("per-ip", alg, units)
}

fn limiters(n: usize) -> Vec<Limiter> {
    let (tx, rx): (Vec<_>, Vec<_>) = (0..n).map(|_| crossbeam_channel::unbounded()).unzip();
    rx.into_iter()
        .enumerate()
        .map(|(i, inbox)| {
            let mut l = Limiter::new(i, tx.clone(), inbox);
            l.configure(&plan(bucket(), 1 << 40), 1);
            l
        })
        .collect()
}

fn bucket() -> Algorithm {
    Algorithm::TokenBucket {
        capacity: 1 << 40,
        refill_per_s: 1e12,
    }
}

/// The whole local check of one request: key text, hash, table lookup,
/// scaled algorithm, decide and consume.
fn limiter(c: &mut Criterion) {
    let s = 1_000_000_000u64;
    let p = plan(bucket(), 1 << 40);
    let mut l = limiters(1).remove(0);
    let keys: Vec<String> = (0..100_000)
        .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
        .collect();
    let check = |k: &str| Check {
        limit: 0,
        key: key_hash("per-ip", k),
        text: String::new(),
    };
    let mut out = Vec::new();
    for k in &keys {
        l.admit(&p, &[check(k)], 0, 1_000, 1, &mut out);
    }
    let mut now = 1_000u64;
    c.bench_function("limiter/check_hot_key", |b| {
        b.iter(|| {
            now += 1_000;
            let c = check(black_box("10.0.0.1"));
            black_box(matches!(
                l.admit(&p, std::slice::from_ref(&c), 0, now, 1, &mut out),
                Outcome::Admitted { .. }
            ))
        })
    });
    let mut i = 0usize;
    c.bench_function("limiter/check_100k_keys", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            now += 1_000;
            let c = check(&keys[i]);
            black_box(matches!(
                l.admit(&p, std::slice::from_ref(&c), 0, now, 1, &mut out),
                Outcome::Admitted { .. }
            ))
        })
    });
    // Gossip: shard 1 answers a request for quota (give), shard 0 takes it in;
    // one Need and one Give per iteration, processed by two ticks.
    let mut pair = limiters(2);
    let small = plan(
        Algorithm::FixedWindow {
            limit: 1 << 40,
            window_ns: 3600 * s,
        },
        1 << 40,
    );
    let mut n = 0u64;
    c.bench_function("gossip/need_give_take", |b| {
        b.iter(|| {
            n += 1;
            let key = key_hash("per-ip", &keys[(n % 1000) as usize]);
            let need = Gossip::Need {
                from: 0,
                generation: 1,
                limit: 0,
                key,
            };
            pair[0].send_to(1, need);
            pair[1].tick(&small, n * 1_000);
            pair[0].tick(&small, n * 1_000);
        })
    });
    // Sweep of a full table at the default cap (100k keys), half idle.
    c.bench_function("table/sweep_100k_half_idle", |b| {
        b.iter_batched(
            || {
                let mut t = KeyTable::new(100_000, 60 * s);
                for (n, k) in keys.iter().enumerate() {
                    let seen = if n % 2 == 0 { 0 } else { 100 * s };
                    t.entry(key_hash("l", k), seen, || {
                        Entry::new(bucket().new_state(seen), 10, seen)
                    });
                }
                t
            },
            |mut t| black_box(t.sweep(120 * s)),
            BatchSize::LargeInput,
        )
    });
}

criterion_group!(benches, bench, limiter);
criterion_main!(benches);
