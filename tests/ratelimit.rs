//! Rate limiting through the real gateway against real loopback backends:
//! algorithms, keys, headers, the host-wide accuracy of `Local` limits
//! across shards, and memory bounds.

mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A gateway with `shards` shards, the given `rate_limits` map body and
/// `rate_limiting` settings, and routes (RON text) to `app`.
fn limited(backend: &Backend, shards: usize, settings: &str, limits: &str, routes: &str) -> Gateway {
    let text = format!(
        "Gateway(\n    shards: Count({shards}),\n    listeners: [Listener(name: \"main\", bind: \"127.0.0.1:$PORT\")],\n    limits_http: {LIMITS},\n    upstreams: {{ \"app\": Upstream(targets: [\"{}\"]) }},\n    rate_limiting: RateLimiting({settings}),\n    rate_limits: {{ {limits} }},\n    routes: [ {routes} ],\n)\n",
        backend.addr()
    );
    Gateway::start(&text)
}

/// Hammers `path` from `conns` keep-alive connections for `dur`; returns
/// (admitted, refused).
fn hammer(port: u16, path: &str, conns: usize, dur: Duration) -> (usize, usize) {
    let ok = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + dur;
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let (ok, refused, path) = (ok.clone(), refused.clone(), path.to_string());
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                while Instant::now() < deadline {
                    let r = c.get(&path);
                    match r.status {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        429 => refused.fetch_add(1, Ordering::Relaxed),
                        s => panic!("unexpected status {s}: {}", r.text()),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    (ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed))
}

#[test]
fn four_shards_hold_a_host_wide_limit_from_sixteen_connections() {
    let backend = Backend::echo("b");
    for (name, alg) in [
        ("window", "FixedWindow(limit: 200, window_s: 3600)"),
        ("bucket", "TokenBucket(capacity: 200, refill_per_s: 0.001)"),
    ] {
        let gw = limited(
            &backend,
            4,
            "",
            &format!("\"one\": RateLimit(key: Route, algorithm: {alg})"),
            "Route(name: \"r\", match: Match(path_prefix: \"/\"), upstream: \"app\", rate_limits: [\"one\"])",
        );
        let (ok, refused) = hammer(gw.port, "/x", 16, Duration::from_millis(1500));
        eprintln!("{name}: admitted {ok}, refused {refused}");
        assert!(
            (200..=210).contains(&ok),
            "{name}: admitted {ok} for a limit of 200"
        );
        assert!(refused > 0);
    }
}
