//! Edge policies on the request path: the CORS decision for an actual
//! request (exact origin, wildcard subdomain, refused) and a preflight,
//! and JSON Schema validation of request bodies per KiB (parse + validate).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use shardgate::config::Cors;
use shardgate::policy::cors::CorsPlan;
use shardgate::validate::{load_schema, Violations};

const ORDER_SCHEMA: &str = r#"{
  "type": "object",
  "required": ["customer", "items"],
  "properties": {
    "customer": {"type": "string", "minLength": 1, "maxLength": 64},
    "coupon": {"type": "string", "pattern": "^[A-Z0-9]{4,12}$"},
    "items": {
      "type": "array", "minItems": 1, "maxItems": 10000,
      "items": {
        "type": "object", "required": ["sku", "qty"], "additionalProperties": false,
        "properties": {
          "sku": {"type": "string", "pattern": "^[a-z]+-[0-9]+$"},
          "qty": {"type": "integer", "minimum": 1, "maximum": 1000},
          "price": {"type": "number", "exclusiveMinimum": 0}
        }
      }
    }
  }
}"#;

/// An order body of about `kib` KiB that matches the schema.
fn order(kib: usize) -> Vec<u8> {
    let mut s = String::from(r#"{"customer":"c-42","coupon":"SPRING24","items":["#);
    let mut i = 0;
    while s.len() < kib * 1024 - 64 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"sku":"widget-{i}","qty":{},"price":9.5}}"#,
            i % 100 + 1
        ));
        i += 1;
    }
    s.push_str("]}");
    s.into_bytes()
}

fn bench(c: &mut Criterion) {
    let plan = CorsPlan::compile(&Cors {
        allow_origins: vec![
            "https://app.example.com".into(),
            "https://admin.example.com".into(),
            "https://*.example.org".into(),
        ],
        allow_methods: vec!["GET".into(), "POST".into(), "PUT".into()],
        allow_headers: vec!["Authorization".into(), "Content-Type".into()],
        expose_headers: vec!["X-Request-Id".into()],
        allow_credentials: true,
        max_age_s: Some(600),
    })
    .expect("compiles");
    let mut g = c.benchmark_group("cors");
    let mut out = String::with_capacity(256);
    for (name, origin) in [
        ("actual_exact", "https://admin.example.com"),
        ("actual_wildcard", "https://eu.shop.example.org"),
        ("actual_refused", "https://example.org.evil.com"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                plan.actual_headers(Some(black_box(origin.as_bytes())), &mut out);
                black_box(out.len())
            })
        });
    }
    g.bench_function("preflight", |b| {
        b.iter(|| {
            black_box(plan.check_preflight(
                black_box("https://eu.shop.example.org"),
                black_box("PUT"),
                black_box(Some("authorization, content-type")),
            ))
        })
    });
    g.finish();

    let dir = std::env::temp_dir().join(format!("shardgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("order.json");
    std::fs::write(&path, ORDER_SCHEMA).expect("write schema");
    let schema = load_schema(&path.display().to_string()).expect("schema compiles");
    let mut g = c.benchmark_group("validate");
    for kib in [1usize, 16, 64] {
        let body = order(kib);
        let mut check = Violations::default();
        check.check_body(&schema, &body);
        assert_eq!(check.listed, 0, "{}", check.json);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(format!("valid_{kib}KiB"), |b| {
            b.iter(|| {
                let mut v = Violations::default();
                v.check_body(&schema, black_box(&body));
                black_box(v.listed)
            })
        });
    }
    // The JSON parse alone, to tell it from the schema walk.
    let body = order(16);
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("parse_only_16KiB", |b| {
        b.iter(|| {
            let v: Result<serde_json::Value, _> = serde_json::from_slice(black_box(&body));
            black_box(v.is_ok())
        })
    });
    // One violation per item: the cost of listing (capped at 20).
    let bad = String::from_utf8(order(16))
        .expect("utf-8")
        .replace("\"qty\":", "\"qty\":-");
    g.throughput(Throughput::Bytes(bad.len() as u64));
    g.bench_function("invalid_16KiB", |b| {
        b.iter(|| {
            let mut v = Violations::default();
            v.check_body(&schema, black_box(bad.as_bytes()));
            black_box(v.listed)
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
