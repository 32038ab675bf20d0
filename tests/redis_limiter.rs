//! The Redis side of cluster-wide rate limiting, against a real redis-server:
//! each algorithm's grants and leases, several clients sharing one limit,
//! key expiry, authentication, and behaviour during and after an outage.

mod common;

use common::redis::RedisServer;
use shardgate::ratelimit::algorithm::Algorithm;
use shardgate::ratelimit::redis::{parse_url, redis_key, Grant, RedisClient, RedisError};
use shardgate::ratelimit::resp::Reply;
use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::rc::Rc;
use std::thread;
use std::time::{Duration, Instant};

const MS: u64 = 1_000_000;
const HOUR: u64 = 3600 * 1000 * MS;

fn run<F: Future>(f: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("build runtime")
        .block_on(f)
}

fn client_with(url: &str, timeout_ms: u64, retry_ms: u64, max: usize) -> RedisClient {
    RedisClient::new(
        parse_url(url).expect("url"),
        Duration::from_millis(timeout_ms),
        Duration::from_millis(retry_ms),
        max,
    )
}

fn client(url: &str) -> RedisClient {
    client_with(url, 2000, 500, 4)
}

async fn take(c: &RedisClient, key: &str, alg: &Algorithm, want: u64, cost: u64) -> Grant {
    match c.acquire(key, alg, want, cost).await {
        Ok(g) => g,
        Err(e) => panic!("acquire {key} want {want} cost {cost}: {e}"),
    }
}

async fn sleep_ms(ms: u64) {
    monoio::time::sleep(Duration::from_millis(ms)).await;
}

fn bulk_str(r: &Reply) -> String {
    match r {
        Reply::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("expected a bulk string, got {other:?}"),
    }
}

async fn raw(c: &RedisClient, args: &[&str]) -> Reply {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    match c.command(&args).await {
        Ok(r) => r,
        Err(e) => panic!("command {args:?}: {e}"),
    }
}

/// Microseconds into the current second, by the Redis clock.
async fn redis_us_in_second(c: &RedisClient) -> u64 {
    match raw(c, &["TIME"]).await {
        Reply::Array(v) if v.len() == 2 => bulk_str(&v[1]).parse().expect("micros"),
        other => panic!("TIME answered {other:?}"),
    }
}

async fn keys(c: &RedisClient, pattern: &str) -> Vec<String> {
    match raw(c, &["KEYS", pattern]).await {
        Reply::Array(v) => v.iter().map(bulk_str).collect(),
        other => panic!("KEYS answered {other:?}"),
    }
}

#[test]
fn fixed_window_grants_the_limit_then_refuses() {
    let server = RedisServer::start();
    run(async {
        let c = client(&server.url());
        let fw = Algorithm::FixedWindow {
            limit: 5,
            window_ns: HOUR,
        };
        for left in (0..5).rev() {
            let g = take(&c, "fw", &fw, 1, 1).await;
            assert_eq!((g.granted, g.limit, g.remaining), (1, 5, left));
            assert_eq!(g.retry_after_ns, 0);
            assert!(g.reset_ns > 0 && g.reset_ns <= HOUR);
        }
        let g = take(&c, "fw", &fw, 1, 1).await;
        assert_eq!((g.granted, g.remaining), (0, 0));
        assert!(g.retry_after_ns > 0 && g.retry_after_ns <= HOUR);
        assert_eq!(g.retry_after_ns, g.reset_ns);
        // Another key has its own window.
        assert_eq!(take(&c, "fw-other", &fw, 1, 1).await.granted, 1);
    });
}

#[test]
fn leases_take_as_many_units_as_fit() {
    let server = RedisServer::start();
    run(async {
        let c = client(&server.url());
        let fw = Algorithm::FixedWindow {
            limit: 10,
            window_ns: HOUR,
        };
        let g = take(&c, "lease", &fw, 4, 1).await;
        assert_eq!((g.granted, g.remaining), (4, 6));
        let g = take(&c, "lease", &fw, 4, 1).await;
        assert_eq!((g.granted, g.remaining), (4, 2));
        // Only 2 fit, fewer than the cost of 3: nothing is taken.
        let g = take(&c, "lease", &fw, 5, 3).await;
        assert_eq!((g.granted, g.remaining), (0, 2));
        assert!(g.retry_after_ns > 0);
        let g = take(&c, "lease", &fw, 5, 2).await;
        assert_eq!((g.granted, g.remaining), (2, 0));
        assert_eq!(take(&c, "lease", &fw, 1, 1).await.granted, 0);
        // want below cost is raised to cost.
        let g = take(&c, "lease2", &fw, 1, 3).await;
        assert_eq!((g.granted, g.remaining), (3, 7));
    });
}

#[test]
fn token_bucket_bursts_then_refills() {
    let server = RedisServer::start();
    run(async {
        let c = client(&server.url());
        let tb = Algorithm::TokenBucket {
            capacity: 3,
            refill_per_s: 10.0,
        };
        let g = take(&c, "tb", &tb, 3, 1).await;
        assert_eq!((g.granted, g.limit, g.remaining), (3, 3, 0));
        assert!(g.reset_ns > 250 * MS && g.reset_ns <= 300 * MS, "{g:?}");
        let g = take(&c, "tb", &tb, 1, 1).await;
        assert_eq!(g.granted, 0);
        assert!(
            g.retry_after_ns > 0 && g.retry_after_ns <= 100 * MS,
            "{g:?}"
        );
        // 150 ms refill 1.5 tokens (more if the machine stalls).
        let empty = Instant::now();
        sleep_ms(150).await;
        let g = take(&c, "tb", &tb, 3, 1).await;
        let most = (empty.elapsed().as_millis() as u64 / 100 + 1).min(3);
        assert!(g.granted >= 1 && g.granted <= most, "{g:?}, at most {most}");
        // Long enough to fill up again, but never beyond the capacity.
        sleep_ms(500).await;
        let g = take(&c, "tb", &tb, 10, 1).await;
        assert_eq!((g.granted, g.remaining), (3, 0));
        // A cost larger than the capacity never fits.
        let g = take(&c, "tb2", &tb, 4, 4).await;
        assert_eq!((g.granted, g.remaining), (0, 3));
    });
}

#[test]
fn leaky_bucket_rejects_overflow_then_drains() {
    let server = RedisServer::start();
    run(async {
        let c = client(&server.url());
        let lb = Algorithm::LeakyBucket {
            capacity: 2,
            drain_per_s: 10.0,
            max_wait_ns: None,
        };
        assert_eq!(take(&c, "lb", &lb, 1, 1).await.granted, 1);
        let g = take(&c, "lb", &lb, 1, 1).await;
        assert_eq!((g.granted, g.remaining), (1, 0));
        let g = take(&c, "lb", &lb, 1, 1).await;
        assert_eq!(g.granted, 0);
        assert!(
            g.retry_after_ns > 0 && g.retry_after_ns <= 100 * MS,
            "{g:?}"
        );
        assert!(g.reset_ns > 100 * MS && g.reset_ns <= 200 * MS, "{g:?}");
        sleep_ms(350).await;
        let g = take(&c, "lb", &lb, 5, 1).await;
        assert_eq!((g.granted, g.remaining), (2, 0));
    });
}

#[test]
fn sliding_log_is_exact() {
    let server = RedisServer::start();
    run(async {
        let c = client(&server.url());
        let sl = Algorithm::SlidingLog {
            limit: 3,
            window_ns: 2000 * MS,
        };
        assert_eq!(take(&c, "sl", &sl, 1, 1).await.granted, 1);
        let first_done = Instant::now();
        sleep_ms(1000).await;
        let g = take(&c, "sl", &sl, 5, 1).await;
        assert_eq!((g.granted, g.remaining), (2, 0));
        assert_eq!(
            g.reset_ns,
            2000 * MS,
            "the newest entry leaves a window later"
        );
        // The oldest entry leaves 2 s after it was admitted.
        let before = Instant::now();
        let g = take(&c, "sl", &sl, 1, 1).await;
        assert_eq!(g.granted, 0);
        let since_first = before.duration_since(first_done).as_nanos() as u64;
        assert!(
            g.retry_after_ns > 0 && g.retry_after_ns <= (2000 * MS - since_first) + 5 * MS,
            "{g:?}"
        );
        // Cost 2 needs the second entry gone too: a window after it.
        let g = take(&c, "sl", &sl, 2, 2).await;
        assert_eq!(g.granted, 0);
        assert!(g.retry_after_ns > 1400 * MS, "{g:?}");
        // After 2.4 s only the first entry has left the window.
        sleep_ms(1400).await;
        let g = take(&c, "sl", &sl, 5, 1).await;
        assert_eq!((g.granted, g.remaining), (1, 0));
        // Leases never exceed the limit itself.
        let g = take(&c, "sl-big", &sl, 100, 1).await;
        assert_eq!(g.granted, 3);
    });
}

#[test]
fn sliding_window_weights_the_previous_window() {
    let server = RedisServer::start();
    run(async {
        let c = client(&server.url());
        let sw = Algorithm::SlidingWindow {
            limit: 10,
            window_ns: 1000 * MS,
        };
        // Windows are aligned to Unix seconds: start 50 ms into one.
        let us = redis_us_in_second(&c).await;
        sleep_ms((1_000_000 - us) / 1000 + 50).await;
        let g = take(&c, "sw", &sw, 10, 1).await;
        assert_eq!((g.granted, g.remaining), (10, 0));
        assert_eq!(take(&c, "sw", &sw, 1, 1).await.granted, 0);
        // 250 ms into the next window, three quarters of the previous one
        // still count: 7.5 of 10 used, 2 fit (a fixed window would allow 10).
        let us = redis_us_in_second(&c).await;
        sleep_ms((1_000_000 - us) / 1000 + 250).await;
        let g = take(&c, "sw", &sw, 10, 1).await;
        assert!(
            (2..=5).contains(&g.granted),
            "the previous window must still weigh: {g:?}"
        );
        assert_eq!(g.remaining, 0);
        let g = take(&c, "sw", &sw, 1, 1).await;
        assert_eq!(g.granted, 0);
        assert!(
            g.retry_after_ns > 0 && g.retry_after_ns < 1000 * MS,
            "{g:?}"
        );
        // The previous window stops weighing 750 ms from now (give or take
        // the time the calls took).
        assert!(g.reset_ns <= 800 * MS, "{g:?}");
    });
}

#[test]
fn two_clients_never_exceed_a_shared_limit() {
    let server = RedisServer::start();
    let url = server.url();
    run(async move {
        let a = Rc::new(client_with(&url, 2000, 500, 2));
        let b = Rc::new(client_with(&url, 2000, 500, 2));
        let limits = [
            (
                "shared-fw",
                Algorithm::FixedWindow {
                    limit: 100,
                    window_ns: HOUR,
                },
                100,
            ),
            (
                "shared-tb",
                Algorithm::TokenBucket {
                    capacity: 50,
                    refill_per_s: 0.001,
                },
                50,
            ),
            (
                "shared-sl",
                Algorithm::SlidingLog {
                    limit: 30,
                    window_ns: HOUR,
                },
                30,
            ),
        ];
        for (key, alg, limit) in limits {
            let mut tasks = Vec::new();
            for i in 0..8 {
                let c = if i % 2 == 0 { a.clone() } else { b.clone() };
                let alg = alg.clone();
                tasks.push(monoio::spawn(async move {
                    let mut total = 0;
                    loop {
                        let g = take(&c, key, &alg, 3, 1).await;
                        if g.granted == 0 {
                            return total;
                        }
                        total += g.granted;
                    }
                }));
            }
            let mut sum = 0;
            for t in tasks {
                sum += t.await;
            }
            assert_eq!(sum, limit, "{key}: all of the limit and no more");
        }
        assert!(a.open_connections() <= 2 && b.open_connections() <= 2);
    });
}

#[test]
fn the_pool_stays_within_its_bound() {
    let server = RedisServer::start();
    let url = server.url();
    run(async move {
        let c = Rc::new(client_with(&url, 3000, 500, 2));
        let fw = Algorithm::FixedWindow {
            limit: 1000,
            window_ns: HOUR,
        };
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (c, fw) = (c.clone(), fw.clone());
                monoio::spawn(async move { take(&c, "pool", &fw, 1, 1).await.granted })
            })
            .collect();
        let mut sum = 0;
        for t in tasks {
            sum += t.await;
        }
        assert_eq!(sum, 20);
        assert!(c.open_connections() <= 2);
        let watcher = client(&url);
        let clients = match raw(&watcher, &["CLIENT", "LIST"]).await {
            Reply::Bulk(b) => String::from_utf8_lossy(&b).lines().count(),
            other => panic!("CLIENT LIST answered {other:?}"),
        };
        assert!(
            clients <= 3,
            "{clients} connections: 2 pooled + the watcher"
        );
    });
}

#[test]
fn every_key_gets_an_expiry() {
    let server = RedisServer::start();
    run(async {
        let c = client(&server.url());
        let s10 = 10_000 * MS;
        let cases = [
            (
                Algorithm::FixedWindow {
                    limit: 5,
                    window_ns: s10,
                },
                10_000,
            ),
            (
                Algorithm::SlidingWindow {
                    limit: 5,
                    window_ns: s10,
                },
                20_000,
            ),
            (
                Algorithm::TokenBucket {
                    capacity: 10,
                    refill_per_s: 5.0,
                },
                3_000,
            ),
            (
                Algorithm::LeakyBucket {
                    capacity: 10,
                    drain_per_s: 5.0,
                    max_wait_ns: None,
                },
                3_000,
            ),
            (
                Algorithm::SlidingLog {
                    limit: 5,
                    window_ns: s10,
                },
                10_000,
            ),
        ];
        for (i, (alg, max_ms)) in cases.iter().enumerate() {
            let key = format!("ttl{i}");
            assert_eq!(take(&c, &key, alg, 5, 1).await.granted, 5);
            let found = keys(&c, &format!("{key}:*")).await;
            assert!(!found.is_empty(), "{alg:?} stored nothing");
            for k in found {
                assert!(k.starts_with(&redis_key(&key, alg)), "{k}");
                let ttl = match raw(&c, &["PTTL", &k]).await {
                    Reply::Integer(n) => n,
                    other => panic!("PTTL answered {other:?}"),
                };
                assert!(ttl > 0 && ttl <= *max_ms, "{alg:?}: {k} has PTTL {ttl}");
            }
        }
    });
}

#[test]
fn an_outage_fails_fast_and_recovery_follows_a_restart() {
    let mut server = RedisServer::start();
    let url = server.url();
    let timeout = Duration::from_millis(500);
    let retry_after = Duration::from_millis(800);
    let fw = Algorithm::FixedWindow {
        limit: 5,
        window_ns: HOUR,
    };
    let c = RedisClient::new(parse_url(&url).expect("url"), timeout, retry_after, 2);
    let rt = || {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .expect("build runtime")
    };
    let mut rt = rt();
    assert_eq!(
        rt.block_on(take(&c, "outage", &fw, 1, 1)).remaining,
        4,
        "healthy at first"
    );
    assert!(!c.is_down());

    server.kill();
    let t = Instant::now();
    let err = rt
        .block_on(c.acquire("outage", &fw, 1, 1))
        .expect_err("redis is gone");
    let failed_at = Instant::now();
    assert!(
        t.elapsed() < timeout + Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert!(
        err != RedisError::Down,
        "the first failure touches the network: {err}"
    );
    assert!(c.is_down());
    // During the back-off calls fail at once.
    let t = Instant::now();
    for _ in 0..100 {
        assert_eq!(
            rt.block_on(c.acquire("outage", &fw, 1, 1)),
            Err(RedisError::Down)
        );
    }
    assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());

    // Still down after the back-off: one more real attempt, then back off again.
    thread::sleep(retry_after.saturating_sub(failed_at.elapsed()) + Duration::from_millis(50));
    assert!(!c.is_down());
    let t = Instant::now();
    let err = rt
        .block_on(c.acquire("outage", &fw, 1, 1))
        .expect_err("still gone");
    assert!(
        matches!(err, RedisError::Io(_) | RedisError::Timeout),
        "{err}"
    );
    assert!(t.elapsed() < timeout + Duration::from_millis(200));
    let failed_at = Instant::now();

    // A fresh redis on the same port (empty, without our scripts): after the
    // back-off the client reconnects and reloads its script (NOSCRIPT).
    server.restart();
    thread::sleep(retry_after.saturating_sub(failed_at.elapsed()) + Duration::from_millis(50));
    let g = rt.block_on(take(&c, "outage", &fw, 1, 1));
    assert_eq!((g.granted, g.remaining), (1, 4), "state starts over");
    assert!(!c.is_down());
    drop(rt);
}

#[test]
fn script_flush_is_survived() {
    let server = RedisServer::start();
    run(async {
        let c = client_with(&server.url(), 2000, 500, 1);
        let tb = Algorithm::TokenBucket {
            capacity: 5,
            refill_per_s: 0.001,
        };
        assert_eq!(take(&c, "flush", &tb, 1, 1).await.remaining, 4);
        assert_eq!(
            raw(&c, &["SCRIPT", "FLUSH"]).await,
            Reply::Simple("OK".into())
        );
        let g = take(&c, "flush", &tb, 1, 1).await;
        assert_eq!((g.granted, g.remaining), (1, 3));
        assert!(!c.is_down());
    });
}

#[test]
fn an_unresponsive_server_times_out() {
    // Connections complete in the kernel's backlog, but nothing ever answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    run(async {
        let c = client_with(&format!("redis://{addr}"), 300, 1000, 2);
        let fw = Algorithm::FixedWindow {
            limit: 5,
            window_ns: HOUR,
        };
        let t = Instant::now();
        let err = c.acquire("silent", &fw, 1, 1).await;
        let took = t.elapsed();
        assert_eq!(err, Err(RedisError::Timeout));
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_millis(500),
            "{took:?}"
        );
        let t = Instant::now();
        assert_eq!(c.acquire("silent", &fw, 1, 1).await, Err(RedisError::Down));
        assert!(t.elapsed() < Duration::from_millis(20));
    });
    drop(silent);
}

/// A fake server answering every read with `reply`.
fn fake_server(reply: &'static [u8]) -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(reply).is_err() {
                    break;
                }
            }
        }
    });
    format!("redis://{addr}")
}

#[test]
fn malformed_replies_are_protocol_errors() {
    let fw = Algorithm::FixedWindow {
        limit: 5,
        window_ns: HOUR,
    };
    for reply in [
        &b"?garbage\r\n"[..],
        b"+OK\r\n",
        b"$99999999\r\n",
        b":1\r\n",
    ] {
        let url = fake_server(reply);
        run(async {
            let c = client_with(&url, 1000, 1000, 1);
            let err = c.acquire("bad", &fw, 1, 1).await;
            assert!(
                matches!(err, Err(RedisError::Protocol(_))),
                "{:?}: {err:?}",
                String::from_utf8_lossy(reply)
            );
            assert!(c.is_down(), "a protocol error starts the back-off");
        });
    }
}

#[test]
fn passwords_and_databases_from_the_url() {
    let server = RedisServer::start_with_password("s3cr3t");
    let addr = server.addr();
    run(async {
        let fw = Algorithm::FixedWindow {
            limit: 5,
            window_ns: HOUR,
        };
        let c = client(&format!("redis://:s3cr3t@{addr}/2"));
        assert_eq!(take(&c, "auth", &fw, 1, 1).await.granted, 1);
        assert_eq!(keys(&c, "auth:*").await.len(), 1, "stored in db 2");
        let db0 = client(&format!("redis://default:s3cr3t@{addr}"));
        assert!(keys(&db0, "auth:*").await.is_empty(), "nothing in db 0");
        assert_eq!(take(&db0, "auth", &fw, 1, 1).await.remaining, 4);

        let t = Instant::now();
        let wrong = client_with(&format!("redis://:nope@{addr}"), 1000, 1000, 1);
        match wrong.acquire("auth", &fw, 1, 1).await {
            Err(RedisError::Server(e)) => assert!(e.contains("WRONGPASS"), "{e}"),
            other => panic!("wrong password: {other:?}"),
        }
        assert!(t.elapsed() < Duration::from_millis(500));
        assert!(wrong.is_down());
        assert_eq!(
            wrong.acquire("auth", &fw, 1, 1).await,
            Err(RedisError::Down)
        );

        let none = client(&server.url());
        match none.acquire("auth", &fw, 1, 1).await {
            Err(RedisError::Server(e)) => assert!(e.contains("NOAUTH"), "{e}"),
            other => panic!("no password: {other:?}"),
        }
    });
}
