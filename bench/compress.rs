//! Response compression throughput: gzip, brotli and zstd at several levels
//! on a typical JSON API payload (a 64 KiB list of objects), streamed the
//! way the proxy streams it (16 KiB pieces, a flush after each), and whole
//! (the in-memory path of transformed responses). Throughput is input
//! bytes per second; the compressed size per level is printed once.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shardgate::compress::{compress_all, Algorithm, Encoder};

/// A JSON document of about `bytes` bytes: objects with ids, names, prices and tags.
fn payload(bytes: usize) -> Vec<u8> {
    let mut s = String::from("{\"items\":[");
    let mut i = 0u64;
    while s.len() < bytes {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":\"p-{i:06}\",\"name\":\"Product {i}\",\"price\":{}.{:02},\"stock\":{},\"tags\":[\"t{}\",\"t{}\"],\"active\":{}}}",
            (i * 37) % 500,
            i % 100,
            (i * 13) % 90,
            i % 7,
            i % 11,
            i.is_multiple_of(3)
        ));
        i += 1;
    }
    s.push_str("]}");
    s.into_bytes()
}

const LEVELS: [(Algorithm, &[u32]); 3] = [
    (Algorithm::Gzip, &[1, 6, 9]),
    (Algorithm::Brotli, &[1, 4, 6, 9]),
    (Algorithm::Zstd, &[1, 3, 9, 19]),
];

fn streamed(alg: Algorithm, level: u32, data: &[u8]) -> usize {
    let mut e = Encoder::new(alg, level).expect("encoder");
    let mut out = Vec::new();
    let mut total = 0;
    for piece in data.chunks(16 * 1024) {
        e.write(piece, &mut out).expect("write");
        e.flush(&mut out).expect("flush");
        total += out.len();
        out.clear();
    }
    e.finish(&mut out).expect("finish");
    total + out.len()
}

fn compression(c: &mut Criterion) {
    let data = payload(64 * 1024);
    for (alg, levels) in LEVELS {
        for &level in levels {
            let size = streamed(alg, level, &data);
            println!(
                "{alg:?} level {level}: {} -> {size} bytes streamed ({:.1}%)",
                data.len(),
                100.0 * size as f64 / data.len() as f64
            );
        }
    }
    let mut g = c.benchmark_group("compress_64k_json_streamed");
    g.throughput(Throughput::Bytes(data.len() as u64));
    for (alg, levels) in LEVELS {
        for &level in levels {
            g.bench_with_input(
                BenchmarkId::new(format!("{alg:?}"), level),
                &level,
                |b, &level| b.iter(|| streamed(alg, level, black_box(&data))),
            );
        }
    }
    g.finish();
    let mut g = c.benchmark_group("compress_64k_json_whole");
    g.throughput(Throughput::Bytes(data.len() as u64));
    for (alg, level) in [
        (Algorithm::Gzip, 6),
        (Algorithm::Brotli, 4),
        (Algorithm::Zstd, 3),
    ] {
        g.bench_with_input(
            BenchmarkId::new(format!("{alg:?}"), level),
            &level,
            |b, &level| b.iter(|| compress_all(alg, level, black_box(&data)).map(|v| v.len())),
        );
    }
    g.finish();
}

criterion_group!(benches, compression);
criterion_main!(benches);
