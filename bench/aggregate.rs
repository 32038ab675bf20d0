//! Request aggregation's pure work per composite: template expansion, JSON
//! parsing of part bodies, shaping (target/allow/deny/rename) and combining
//! three parts (under keys, deep merge) into the serialized answer, for
//! typical part payloads of 1 KiB and 64 KiB; per-item enrichment's pure
//! work: expanding a wildcard template over an order's items and joining
//! 100 batch answers back to their items by key.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use serde_json::{json, Value};
use shardgate::aggregate::fetch::parse_json;
use shardgate::aggregate::items::join_batch;
use shardgate::aggregate::shape::Shape;
use shardgate::aggregate::template::{Context, Escape, Template};
use shardgate::aggregate::{compose, AggregatePlan};
use std::collections::BTreeMap;

/// A JSON object `{"data": [order, ...], "meta": {...}}` of about `bytes` bytes.
fn payload(bytes: usize) -> Value {
    let mut orders = Vec::new();
    let mut size = 40;
    let mut i = 0;
    while size < bytes {
        let o = json!({
            "id": format!("o-{i:05}"), "customer_id": format!("c-{}", i % 17), "total": 12.5 + i as f64,
            "status": if i % 3 == 0 { "open" } else { "shipped" }, "internal_note": "packed by robot 7",
            "lines": [{"sku": "p-1", "qty": 2}],
        });
        size += o.to_string().len() + 1;
        orders.push(o);
        i += 1;
    }
    json!({"data": orders, "meta": {"page": 1, "count": i}})
}

fn plan(merge: &str) -> AggregatePlan {
    let text = format!(
        r#"Gateway(listeners: [Listener(name: "l", bind: "127.0.0.1:1")],
        upstreams: {{ "u": Upstream(targets: ["127.0.0.1:2"]) }},
        routes: [Route(name: "d", match: Match(path: "/d/{{id}}"), aggregate: Aggregate(merge: {merge}, max_body_bytes: 100000000, parts: [
            Part(name: "profile", upstream: "u", path: "/users/{{id}}", deny: ["meta"]),
            Part(name: "orders", upstream: "u", path: "/orders", target: "data", allow: ["id", "total", "status"], group: "orders"),
            Part(name: "recent", upstream: "u", path: "/recent/{{orders.data.0.customer_id}}", target: "data",
                 deny: ["internal_note", "lines"], rename: {{ "total": "amount" }}, group: "recent"),
        ]))])"#
    );
    let g = shardgate::config::parse("bench.ron", &text).expect("bench config");
    let a = g.routes[0].aggregate.clone().expect("aggregate");
    AggregatePlan::compile(&a, &["id".into()], &|_| Some(0), false).expect("plan")
}

fn templates(c: &mut Criterion) {
    let t = Template::parse(
        "/users/{id}/orders?user={claims.sub}&page={query.page}&c={orders.0.customer_id}",
        &["id".into()],
        &["orders"],
    )
    .expect("template");
    let orders = json!([{"customer_id": "c-17/x"}]);
    let part = |i: usize| (i == 0).then_some(&orders);
    let claims = vec![("sub".to_string(), "user 42".to_string())];
    let params: Vec<_> = std::iter::once(3..8).collect();
    let ctx = Context {
        path: "/d/12345",
        params: &params,
        query: Some("page=2&sort=desc"),
        claims: &claims,
        part: &part,
        item: None,
        body: None,
    };
    let mut out = String::with_capacity(128);
    c.bench_function(
        "template/expand path with param, claim, query, part field",
        |b| {
            b.iter(|| {
                out.clear();
                black_box(&t)
                    .expand(black_box(&ctx), Escape::Url, &mut out)
                    .expect("expand");
                black_box(out.len())
            })
        },
    );
}

fn shaping(c: &mut Criterion) {
    let allow = vec!["id".to_string(), "total".to_string(), "status".to_string()];
    let shape = Shape::new(Some("data"), &allow, &[], &BTreeMap::new());
    for (label, bytes) in [("1KiB", 1024), ("64KiB", 64 * 1024)] {
        let v = payload(bytes);
        let text = v.to_string();
        c.bench_function(&format!("parse/part body {label}"), |b| {
            b.iter(|| parse_json(black_box(text.as_bytes())).expect("json"))
        });
        c.bench_function(&format!("shape/target+allow {label}"), |b| {
            b.iter_batched(
                || v.clone(),
                |v| shape.apply(v).expect("shape"),
                BatchSize::SmallInput,
            )
        });
        for merge in ["UnderKeys", "Merge"] {
            let p = plan(merge);
            c.bench_function(
                &format!("compose/3 parts {merge} {label} (shape+combine+serialize)"),
                |b| {
                    b.iter_batched(
                        || {
                            vec![
                                Ok(v.clone().into()),
                                Ok(v.clone().into()),
                                Ok(v.clone().into()),
                            ]
                        },
                        |parts| compose(&p, parts).expect("compose").body.len(),
                        BatchSize::SmallInput,
                    )
                },
            );
        }
    }
}

/// An order of `n` items, each with a product id.
fn order(n: usize) -> Value {
    let items: Vec<Value> = (0..n)
        .map(|i| json!({"line": i + 1, "product_id": format!("p-{i:04}"), "qty": 1}))
        .collect();
    json!({"id": "o-1", "items": items})
}

fn enrichment(c: &mut Criterion) {
    let t = Template::parse(
        "/products?ids={order.items.*.product_id|join(\",\")}",
        &[],
        &["order"],
    )
    .expect("template");
    for n in [10, 100] {
        let o = order(n);
        let part = |i: usize| (i == 0).then_some(&o);
        let ctx = Context {
            path: "/d/1",
            params: &[],
            query: None,
            claims: &[],
            part: &part,
            item: None,
            body: None,
        };
        let mut out = String::with_capacity(2048);
        c.bench_function(
            &format!("template/expand wildcard + join over {n} items"),
            |b| {
                b.iter(|| {
                    out.clear();
                    black_box(&t)
                        .expand(black_box(&ctx), Escape::Url, &mut out)
                        .expect("expand");
                    black_box(out.len())
                })
            },
        );
    }
    // 100 answers in reverse order of the items, as a batch endpoint may send them.
    let answers: Vec<Value> = (0..100)
        .rev()
        .map(|i| json!({"id": format!("p-{i:04}"), "name": format!("widget {i}"), "price": 10 + i}))
        .collect();
    let keys: Vec<Option<String>> = (0..100).map(|i| Some(format!("p-{i:04}"))).collect();
    let key = vec!["id".to_string()];
    c.bench_function("batch/join 100 answers back by key", |b| {
        b.iter_batched(
            || answers.clone(),
            |list| join_batch(list, black_box(&key), black_box(&keys)).len(),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, templates, shaping, enrichment);
criterion_main!(benches);
