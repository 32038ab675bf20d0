//! What a circuit breaker costs on the request path: the admit check before
//! a call and the outcome record after it (target < 30 ns each), on a
//! shard's breaker set as the proxy uses it.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shardgate::resilience::breaker::{Admit, BreakerSpec, Breakers, Outcome, StatusSet};

fn breakers(open: bool) -> Breakers {
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut b = Breakers::new(0, vec![tx], rx);
    let spec = BreakerSpec {
        min_requests: 20,
        failure_ratio: if open { 0.01 } else { 0.99 },
        window_ns: 10_000_000_000,
        open_ns: 3_600_000_000_000,
        half_open_requests: 1,
        consecutive_failures: None,
        failure_statuses: StatusSet::server_errors(),
        turn_ns: 1_000_000_000,
    };
    let names = ["a", "b", "c", "d"];
    b.configure(1, names.iter().map(|n| (*n, Some(&spec))));
    if open {
        for i in 0..50 {
            if let Some(a) = b.admit(2, i) {
                b.record(2, a, Outcome::Failed, i);
            }
        }
    }
    b
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker");
    let mut closed = breakers(false);
    g.bench_function("admit_closed", |bn| {
        bn.iter(|| black_box(closed.admit(black_box(2), black_box(1_000))))
    });
    let mut open = breakers(true);
    g.bench_function("admit_open", |bn| {
        bn.iter(|| black_box(open.admit(black_box(2), black_box(1_000))))
    });
    let mut rec = breakers(false);
    let mut now = 0u64;
    let mut n = 0u32;
    g.bench_function("record_outcome", |bn| {
        bn.iter(|| {
            // 1 µs apart: the window's buckets roll as they would under load.
            now += 1_000;
            n = n.wrapping_add(1);
            let status = if n.is_multiple_of(4) { 503 } else { 200 };
            rec.record(
                black_box(2),
                Admit::Pass { epoch: 0 },
                Outcome::Status(status),
                now,
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
