//! Request head parsing (httparse plus framing checks, the reading rules
//! for repeated fields and the owned copy), header reads, path
//! normalisation, and chunked decoding throughput.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use shardgate::http::chunked::ChunkedDecoder;
use shardgate::http::path::{normalize, PathOptions};
use shardgate::http::{Parsed, RequestHead};

const SMALL: &[u8] = b"GET /api/v1/users/42 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n";

fn browser_like() -> Vec<u8> {
    let mut s = String::from(
        "POST /api/v1/orders?expand=items&page=2 HTTP/1.1\r\nHost: api.example.com\r\n",
    );
    for (k, v) in [
        ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"),
        ("Accept", "application/json, text/plain, */*"),
        ("Accept-Language", "en-US,en;q=0.9"),
        ("Accept-Encoding", "gzip, deflate, br"),
        ("Authorization", "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig"),
        ("Content-Type", "application/json"),
        ("Content-Length", "512"),
        ("Origin", "https://app.example.com"),
        ("Referer", "https://app.example.com/orders"),
        ("Cookie", "session=abcdef0123456789; theme=dark; locale=en"),
        ("X-Request-Id", "7f1c2a9e-9a41-4d0e-9c1b-0d2b6d1e8f55"),
        ("X-Forwarded-For", "203.0.113.7"),
    ] {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn parse(buf: &[u8]) -> usize {
    match RequestHead::parse(buf, 16 * 1024, 100) {
        Ok(Parsed::Complete(h, n)) => h.fields.len() + n,
        _ => 0,
    }
}

fn head(buf: &[u8]) -> RequestHead {
    match RequestHead::parse(buf, 16 * 1024, 100) {
        Ok(Parsed::Complete(h, _)) => h,
        _ => RequestHead::default(),
    }
}

fn bench(c: &mut Criterion) {
    let big = browser_like();
    assert!(parse(SMALL) > 0 && parse(&big) > 0);
    let mut g = c.benchmark_group("request_head");
    g.throughput(Throughput::Elements(1));
    g.bench_function("small_4_fields", |b| b.iter(|| parse(black_box(SMALL))));
    g.bench_function("browser_13_fields", |b| b.iter(|| parse(black_box(&big))));
    let repeated = String::from_utf8_lossy(&big).replace(
        "\r\n\r\n",
        "\r\nX-Forwarded-For: 198.51.100.1\r\nAccept: text/html\r\n\r\n",
    );
    g.bench_function("browser_15_fields_2_repeated", |b| {
        b.iter(|| parse(black_box(repeated.as_bytes())))
    });
    g.finish();

    // Reading a field the way every stage does: the first line, or the
    // joined lines of a repeated field.
    let one = head(&big);
    let two = head(repeated.as_bytes());
    assert!(two.is_repeated("x-forwarded-for") && !one.is_repeated("x-forwarded-for"));
    let mut g = c.benchmark_group("header_read");
    g.bench_function("single_line", |b| {
        b.iter(|| {
            black_box(&one)
                .header(black_box("x-forwarded-for"))
                .map(<[u8]>::len)
        })
    });
    g.bench_function("repeated_joined", |b| {
        b.iter(|| {
            black_box(&two)
                .header(black_box("x-forwarded-for"))
                .map(<[u8]>::len)
        })
    });
    g.bench_function("absent", |b| {
        b.iter(|| {
            black_box(&one)
                .header(black_box("x-api-key"))
                .map(<[u8]>::len)
        })
    });
    g.finish();

    let opts = PathOptions::default();
    let mut g = c.benchmark_group("path_normalize");
    for (name, path) in [
        ("already_normal", "/api/v1/orders/42/items"),
        ("percent_and_slashes", "/api//v1/%6Frders/42/it%65ms%3f"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| normalize(black_box(path), opts).map(|p| p.len()))
        });
    }
    g.finish();

    let mut body = Vec::new();
    for _ in 0..64 {
        body.extend_from_slice(b"400\r\n");
        body.extend_from_slice(&[b'x'; 1024]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut g = c.benchmark_group("chunked_decode");
    g.throughput(Throughput::Bytes(64 * 1024));
    g.bench_function("64x1KiB", |b| {
        b.iter(|| {
            let mut d = ChunkedDecoder::default();
            let mut pos = 0;
            let mut data = 0;
            while !d.is_done() {
                let Ok(step) = d.step(black_box(&body[pos..])) else {
                    break;
                };
                data += step.data.map_or(0, |r| r.len());
                pos += step.consumed;
            }
            data
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
