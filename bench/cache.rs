//! The response cache: hit ratio of the S3-FIFO store against plain LRU on
//! Zipf workloads (printed, deterministic), and the cost of one lookup
//! (key built from a parsed request head, then the store read).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shardgate::cache::key::{self, KeyPlan};
use shardgate::cache::store::{Lru, Store};
use shardgate::config::CacheQuery;
use shardgate::http::{Parsed, RequestHead};

/// xorshift64*: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Draws ranks 0..n with probability ∝ 1/(rank+1)^alpha.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, alpha: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for i in 0..n {
            sum += 1.0 / ((i + 1) as f64).powf(alpha);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }
    fn draw(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// Object sizes between 200 B and 8 KiB, fixed per key.
fn size_of(key: usize) -> usize {
    200 + (key.wrapping_mul(2_654_435_761) % (8 * 1024 - 200))
}

/// Hit ratios (S3-FIFO, LRU) for `requests` draws over `keys` keys, with a
/// cache of `share` of the total object bytes. Misses insert.
fn hit_ratios(keys: usize, alpha: f64, share: f64, requests: usize) -> (f64, f64) {
    let total: usize = (0..keys).map(|k| size_of(k) + 160 + 12).sum();
    let cap = (total as f64 * share) as usize;
    let zipf = Zipf::new(keys, alpha);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut s3: Store<()> = Store::new(cap);
    let mut lru: Lru<()> = Lru::new(cap);
    let (mut s3_hits, mut lru_hits) = (0usize, 0usize);
    for _ in 0..requests {
        let rank = zipf.draw(&mut rng);
        let name = format!("/items/{rank}");
        let size = size_of(rank);
        if s3.get(&name).is_some() {
            s3_hits += 1;
        } else {
            s3.insert(&name, (), size);
        }
        if lru.get(&name).is_some() {
            lru_hits += 1;
        } else {
            lru.insert(&name, (), size);
        }
    }
    (
        s3_hits as f64 / requests as f64,
        lru_hits as f64 / requests as f64,
    )
}

/// The hit-ratio table: 9 simulations of 2 million requests under `cargo
/// bench` (which passes `--bench`). `cargo test` runs each bench once in
/// test mode, in a debug build, where that table took over a minute of the
/// test suite; there it is 2,000 keys and 20,000 requests, enough to run
/// the simulation's code.
fn print_hit_ratios() {
    let full = std::env::args().any(|a| a == "--bench");
    let (keys, requests) = match full {
        true => (100_000, 2_000_000),
        false => (2_000, 20_000),
    };
    println!("\nhit ratio, {keys} keys, {requests} requests, objects 200 B..8 KiB, misses insert");
    println!("| Zipf alpha | cache size (of all bytes) | S3-FIFO | LRU | S3-FIFO − LRU |");
    println!("|---|---|---|---|---|");
    for alpha in [0.7, 0.9, 1.1] {
        for share in [0.01, 0.05, 0.10] {
            let (s3, lru) = hit_ratios(keys, alpha, share, requests);
            println!(
                "| {alpha} | {:.0} % | {:.2} % | {:.2} % | {:+.2} points |",
                share * 100.0,
                s3 * 100.0,
                lru * 100.0,
                (s3 - lru) * 100.0
            );
        }
    }
    println!();
}

const REQ: &[u8] = b"GET /api/v1/products/4711?page=2&size=20 HTTP/1.1\r\nHost: shop.example.com\r\nAccept: application/json\r\nAccept-Language: en\r\n\r\n";

fn lookup(c: &mut Criterion) {
    print_hit_ratios();
    let plan = KeyPlan {
        method: false,
        host: true,
        query: CacheQuery::All,
        headers: Vec::new(),
    };
    let Ok(Parsed::Complete(req, _)) = RequestHead::parse(REQ, 16 * 1024, 100) else {
        panic!("the bench request parses");
    };
    let mut store: Store<Vec<u8>> = Store::new(256 * 1024 * 1024);
    for i in 0..100_000 {
        let k = format!("shop.example.com/api/v1/products/{i}?page=2&size=20");
        store.insert(&k, vec![0u8; 512], 512);
    }
    let mut g = c.benchmark_group("cache");
    g.bench_function("key of a request", |b| {
        b.iter(|| key::primary(black_box(&plan), black_box(&req), None))
    });
    g.bench_function("lookup (key + store read), 100k entries, hit", |b| {
        b.iter(|| {
            let (k, _) = key::primary(&plan, black_box(&req), None);
            store.get(&k).map(|v| v.len())
        })
    });
    g.bench_function("store read, 100k entries, miss", |b| {
        b.iter(|| {
            store
                .get(black_box("shop.example.com/api/v1/none"))
                .is_some()
        })
    });
    g.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
