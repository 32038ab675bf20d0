//! Route lookup cost against table size: the matcher walks the path's
//! segments, so 10, 1,000 and 10,000 routes should cost about the same.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use shardgate::router::{Conditions, Lookup, PathPattern, RequestFacts, RouteSpec, Router};

/// A realistic mix: templates, exact paths and prefixes over many services.
fn table(n: usize) -> Vec<RouteSpec> {
    (0..n)
        .map(|i| {
            let svc = i / 4;
            let (path, methods) = match i % 4 {
                0 => (
                    PathPattern::Full(format!("/api/v1/svc{svc}/items/{{id}}")),
                    vec!["GET".to_string()],
                ),
                1 => (PathPattern::Full(format!("/api/v1/svc{svc}/items")), vec![]),
                2 => (PathPattern::Prefix(format!("/api/v2/svc{svc}")), vec![]),
                _ => (
                    PathPattern::Full(format!("/api/v1/svc{svc}/items/{{id}}/parts/{{part}}")),
                    vec![],
                ),
            };
            RouteSpec {
                path,
                conditions: Conditions {
                    methods,
                    ..Conditions::default()
                },
            }
        })
        .collect()
}

fn lookup(router: &Router, path: &str) -> Lookup {
    let facts = RequestFacts {
        method: "GET",
        path,
        host: Some("api.example.com"),
        header: |_: &str| None,
    };
    router.lookup(&facts)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_lookup");
    for n in [10usize, 1_000, 10_000] {
        let router = Router::new(&table(n));
        let last = n / 4 - 1;
        let template = format!("/api/v1/svc{last}/items/12345");
        let prefix = format!("/api/v2/svc{last}/deep/path/here");
        let nested = format!("/api/v1/svc{last}/items/9/parts/x");
        assert!(matches!(lookup(&router, &template), Lookup::Found { .. }));
        assert!(matches!(lookup(&router, &prefix), Lookup::Found { .. }));
        g.bench_with_input(BenchmarkId::new("template", n), &template, |b, p| {
            b.iter(|| lookup(&router, black_box(p)))
        });
        g.bench_with_input(BenchmarkId::new("prefix", n), &prefix, |b, p| {
            b.iter(|| lookup(&router, black_box(p)))
        });
        g.bench_with_input(BenchmarkId::new("two_params", n), &nested, |b, p| {
            b.iter(|| lookup(&router, black_box(p)))
        });
        g.bench_with_input(BenchmarkId::new("miss", n), "/nothing/here", |b, p| {
            b.iter(|| lookup(&router, black_box(p)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
