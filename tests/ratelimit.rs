//! Rate limiting through the real gateway against real loopback backends:
//! algorithms, keys, headers, the host-wide accuracy of `Local` limits
//! across shards, and memory bounds.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// A gateway with `shards` shards, the given `rate_limiting` settings,
/// `rate_limits` map body and routes (RON text) to `app`.
fn limited(
    backend: &Backend,
    shards: usize,
    settings: &str,
    limits: &str,
    routes: &str,
) -> Gateway {
    limited_with(backend, shards, "", settings, limits, routes)
}

/// The same with extra top-level fields (e.g. authenticators).
fn limited_with(
    backend: &Backend,
    shards: usize,
    extra: &str,
    settings: &str,
    limits: &str,
    routes: &str,
) -> Gateway {
    let addr = backend.addr();
    Gateway::start(&rate_limited_config(
        &addr, shards, extra, settings, limits, routes,
    ))
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

/// A route `name` matching `prefix` with the given extra fields.
fn route(name: &str, prefix: &str, extra: &str) -> String {
    format!("Route(name: {name:?}, match: Match(path_prefix: {prefix:?}), upstream: \"app\", {extra}),\n")
}

/// A header parsed as a whole number; panics (with the response) when missing.
#[track_caller]
fn num(r: &Resp, name: &str) -> u64 {
    let v = r
        .header(name)
        .unwrap_or_else(|| panic!("no {name} header in {} response: {:?}", r.status, r.headers));
    v.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{name}: {v:?} is not a whole number"))
}

/// Asserts a rate-limit refusal: 429 JSON error with `Retry-After` (whole
/// seconds, at least 1); returns `Retry-After`.
#[track_caller]
fn assert_refused(r: &Resp) -> u64 {
    assert_json_error(r, 429);
    let retry = num(r, "retry-after");
    assert!(retry >= 1, "Retry-After {retry} must be at least 1");
    retry
}

/// Statuses of `n` sequential GETs on one connection.
fn statuses(c: &mut Client, path: &str, headers: &[(&str, &str)], n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| c.request("GET", path, headers, b"").status)
        .collect()
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

/// A window long enough (a day, aligned to Unix time) never to roll over
/// during a test except by a very unlucky start.
const DAY: &str = "window_s: 86400";

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

#[test]
fn refusals_are_429_json_with_retry_after_and_headers_and_never_reach_the_backend() {
    let backend = Backend::echo("b");
    let gw = limited(
        &backend,
        1,
        "",
        &format!(
            "\"shown\": RateLimit(key: ClientIp, algorithm: FixedWindow(limit: 3, {DAY})),\n\
             \"hidden\": RateLimit(key: ClientIp, algorithm: FixedWindow(limit: 2, {DAY})),"
        ),
        &format!(
            "{}{}",
            route("shown", "/shown", "rate_limits: [\"shown\"]"),
            route(
                "hidden",
                "/hidden",
                "rate_limits: [\"hidden\"], rate_limit_headers: false"
            )
        ),
    );
    let mut c = Client::connect(gw.port);
    for want_remaining in [2, 1, 0] {
        let r = c.get("/shown/x");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(num(&r, "ratelimit-limit"), 3);
        assert_eq!(num(&r, "ratelimit-remaining"), want_remaining);
        let reset = num(&r, "ratelimit-reset");
        assert!((1..=86400).contains(&reset), "RateLimit-Reset {reset}");
    }
    assert_eq!(backend.count(), 3);
    for _ in 0..3 {
        let r = c.get("/shown/x");
        let retry = assert_refused(&r);
        assert!(retry <= 86400, "Retry-After {retry} beyond the window");
        assert_eq!(num(&r, "ratelimit-limit"), 3);
        assert_eq!(num(&r, "ratelimit-remaining"), 0);
        let reset = num(&r, "ratelimit-reset");
        assert!((1..=86400).contains(&reset), "RateLimit-Reset {reset}");
    }
    // The connection stays usable after refusals; refused requests never
    // reached the backend.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(backend.count(), 3, "a refused request reached the backend");

    // Hidden headers: neither on admitted nor on refused responses, but
    // Retry-After still is.
    for i in 0..3 {
        let r = c.get("/hidden/y");
        for h in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
            assert!(
                !r.has(h),
                "{h} sent on a route that hides it: {:?}",
                r.headers
            );
        }
        if i < 2 {
            assert_eq!(r.status, 200, "{}", r.text());
        } else {
            assert_refused(&r);
        }
    }
    assert_eq!(backend.count(), 5);
}

// ---------------------------------------------------------------------------
// Several limits
// ---------------------------------------------------------------------------

#[test]
fn several_limits_admit_only_if_all_admit_and_a_refusal_consumes_from_none() {
    let backend = Backend::echo("b");
    // "user": 3 per caller (x-user header); "route": 5 for everyone together.
    let gw = limited(
        &backend,
        1,
        "",
        &format!(
            "\"user\": RateLimit(key: Header(\"x-user\"), algorithm: FixedWindow(limit: 3, {DAY})),\n\
             \"route\": RateLimit(key: Route, algorithm: FixedWindow(limit: 5, {DAY})),"
        ),
        &route("r", "/", "rate_limits: [\"user\", \"route\"]"),
    );
    let mut c = Client::connect(gw.port);
    // u1: three admitted, then refused by "user" (three times).
    let s = statuses(&mut c, "/a", &[("x-user", "u1")], 6);
    assert_eq!(s, [200, 200, 200, 429, 429, 429], "u1");
    // If u1's refused requests had counted against "route", it would be
    // exhausted (3 + 3 >= 5). It has exactly 2 left.
    let r = c.request("GET", "/a", &[("x-user", "u2")], b"");
    assert_eq!(r.status, 200, "u2's first request: {}", r.text());
    // Headers report the most restrictive limit: "route" with 1 left (not
    // "user" with 2 left).
    assert_eq!(num(&r, "ratelimit-limit"), 5, "{:?}", r.headers);
    assert_eq!(num(&r, "ratelimit-remaining"), 1, "{:?}", r.headers);
    let s = statuses(&mut c, "/a", &[("x-user", "u2")], 3);
    assert_eq!(s, [200, 429, 429], "u2 after its first request");
    // u3 still has room in "user" but "route" is used up: refused.
    let r = c.request("GET", "/a", &[("x-user", "u3")], b"");
    assert_refused(&r);
    assert_eq!(num(&r, "ratelimit-limit"), 5);
    assert_eq!(num(&r, "ratelimit-remaining"), 0);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        backend.count(),
        5,
        "only admitted requests reach the backend"
    );
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

#[test]
fn header_and_route_keys_are_isolated_and_a_missing_header_falls_back_to_the_client_ip() {
    let backend = Backend::echo("b");
    let gw = limited(
        &backend,
        1,
        "",
        &format!(
            "\"combo\": RateLimit(key: Combined([Header(\"x-tenant\"), Route]), algorithm: FixedWindow(limit: 2, {DAY})),"
        ),
        &format!(
            "{}{}",
            route("one", "/one", "rate_limits: [\"combo\"]"),
            route("two", "/two", "rate_limits: [\"combo\"]")
        ),
    );
    let mut c = Client::connect(gw.port);
    let acme = [("x-tenant", "acme")];
    assert_eq!(
        statuses(&mut c, "/one", &acme, 3),
        [200, 200, 429],
        "acme on one"
    );
    // Another tenant on the same route: its own counter.
    let globex = [("x-tenant", "globex")];
    assert_eq!(
        statuses(&mut c, "/one", &globex, 3),
        [200, 200, 429],
        "globex on one"
    );
    // The same tenant on another route: its own counter.
    assert_eq!(
        statuses(&mut c, "/two", &acme, 3),
        [200, 200, 429],
        "acme on two"
    );
    // No header: counted by client address, separately from the tenants...
    assert_eq!(
        statuses(&mut c, "/one", &[], 3),
        [200, 200, 429],
        "no header"
    );
    // ...on every connection from that address (the fallback is not per connection).
    let mut c2 = Client::connect(gw.port);
    assert_refused(&c2.get("/one"));
    // A header whose value is the client address is not the fallback key.
    let spoof = [("x-tenant", "127.0.0.1")];
    assert_eq!(
        statuses(&mut c2, "/one", &spoof, 3),
        [200, 200, 429],
        "x-tenant: 127.0.0.1"
    );
    assert_eq!(backend.count(), 10);
}

const SECRET: &str = "ratelimit-test-hmac-secret";

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    let claims = serde_json::json!({"sub": sub, "exp": exp});
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    format!("Bearer {t}")
}

#[test]
fn claim_and_consumer_keys_count_each_caller_separately() {
    let backend = Backend::echo("b");
    let key_a = shardgate::auth::hash_api_key("key-of-a");
    let key_b = shardgate::auth::hash_api_key("key-of-b");
    let extra = format!(
        "authenticators: {{\n\
           \"jwt\": Jwt(algorithms: [HS256], key: Secret(\"{SECRET}\"), forward_claims: {{ \"email\": \"X-Email\" }}),\n\
           \"keys\": ApiKey(header: \"X-Api-Key\", consumers: {{ \"app-a\": \"{key_a}\", \"app-b\": \"{key_b}\" }}),\n\
         }},"
    );
    let gw = limited_with(
        &backend,
        1,
        &extra,
        "",
        &format!(
            "\"per-user\": RateLimit(key: Claim(\"sub\"), algorithm: FixedWindow(limit: 2, {DAY})),\n\
             \"per-consumer\": RateLimit(key: Consumer, algorithm: FixedWindow(limit: 3, {DAY})),"
        ),
        &format!(
            "{}{}",
            route(
                "users",
                "/users",
                "auth: Required([\"jwt\"]), rate_limits: [\"per-user\"]"
            ),
            route(
                "partners",
                "/partners",
                "auth: Required([\"keys\"]), rate_limits: [\"per-consumer\"]"
            )
        ),
    );
    let mut c = Client::connect(gw.port);
    let (alice, bob) = (token("alice"), token("bob"));
    let as_alice = [("Authorization", alice.as_str())];
    assert_eq!(
        statuses(&mut c, "/users/1", &as_alice, 3),
        [200, 200, 429],
        "alice"
    );
    // A client-supplied identity header does not move alice to another counter.
    let spoofed = [("Authorization", alice.as_str()), ("X-User-Id", "mallory")];
    assert_refused(&c.request("GET", "/users/1", &spoofed, b""));
    // bob has his own counter, on the same connection and address.
    let as_bob = [("Authorization", bob.as_str())];
    assert_eq!(
        statuses(&mut c, "/users/1", &as_bob, 3),
        [200, 200, 429],
        "bob"
    );
    // The claim keys the limit without being forwarded: the spoofed header
    // was stripped (identity headers are the authenticators' own) or not
    // forwarded at all.
    assert_eq!(backend.requests().last().unwrap().header("x-user-id"), None);

    let as_a = [("X-Api-Key", "key-of-a")];
    let as_b = [("X-Api-Key", "key-of-b")];
    assert_eq!(
        statuses(&mut c, "/partners", &as_a, 4),
        [200, 200, 200, 429],
        "app-a"
    );
    assert_eq!(
        statuses(&mut c, "/partners", &as_b, 4),
        [200, 200, 200, 429],
        "app-b"
    );
    // Unauthenticated requests are answered by authentication, not counted.
    assert_eq!(c.get("/partners").status, 401);
    assert_eq!(backend.count(), 2 + 2 + 3 + 3);
}

#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let backend = Backend::echo("b");
    let limits =
        format!("\"per-ip\": RateLimit(key: ClientIp, algorithm: FixedWindow(limit: 2, {DAY})),");
    let routes = route("r", "/", "rate_limits: [\"per-ip\"]");
    // The test's connections come from 127.0.0.1.
    let trusting = limited(
        &backend,
        1,
        "trusted_proxies: [\"127.0.0.0/8\"]",
        &limits,
        &routes,
    );
    let mut c = Client::connect(trusting.port);
    let from1 = [("X-Forwarded-For", "203.0.113.1")];
    let from2 = [("X-Forwarded-For", "203.0.113.2")];
    assert_eq!(
        statuses(&mut c, "/", &from1, 3),
        [200, 200, 429],
        "203.0.113.1"
    );
    assert_eq!(
        statuses(&mut c, "/", &from2, 3),
        [200, 200, 429],
        "203.0.113.2"
    );
    // A forged leftmost entry does not help: the rightmost untrusted address counts.
    let forged = [("X-Forwarded-For", "198.51.100.99, 203.0.113.1")];
    assert_refused(&c.request("GET", "/", &forged, b""));
    // Without the header the peer itself is the client, with its own counter.
    assert_eq!(statuses(&mut c, "/", &[], 3), [200, 200, 429], "no header");

    // A gateway that trusts only 10.0.0.0/8 ignores the header from
    // 127.0.0.1: all of these count against 127.0.0.1.
    let wary = limited(
        &backend,
        1,
        "trusted_proxies: [\"10.0.0.0/8\"]",
        &limits,
        &routes,
    );
    let mut c = Client::connect(wary.port);
    let mut seen = Vec::new();
    for xff in ["203.0.113.1", "203.0.113.2", "203.0.113.3", "10.1.2.3"] {
        seen.push(
            c.request("GET", "/", &[("X-Forwarded-For", xff)], b"")
                .status,
        );
    }
    assert_eq!(
        seen,
        [200, 200, 429, 429],
        "X-Forwarded-For from an untrusted peer"
    );
    assert_refused(&c.get("/"));
}

// ---------------------------------------------------------------------------
// Algorithms
// ---------------------------------------------------------------------------

#[test]
fn token_bucket_bursts_to_capacity_then_refills_in_real_time() {
    let backend = Backend::echo("b");
    let gw = limited(
        &backend,
        1,
        "",
        "\"tb\": RateLimit(key: ClientIp, algorithm: TokenBucket(capacity: 3, refill_per_s: 2)),",
        &route("r", "/", "rate_limits: [\"tb\"]"),
    );
    let mut c = Client::connect(gw.port);
    let start = Instant::now();
    let burst = statuses(&mut c, "/", &[], 3);
    let r = c.get("/");
    let burst_took = start.elapsed();
    assert_eq!(
        burst,
        [200, 200, 200],
        "the full capacity is available at once"
    );
    if burst_took < Duration::from_millis(400) {
        // Less than one token can have come back (2/s).
        let retry = assert_refused(&r);
        assert_eq!(retry, 1, "half a second to the next token rounds up to 1 s");
        assert_eq!(num(&r, "ratelimit-remaining"), 0);
    }
    // 1.2 s later at least two tokens are back, and never more than the capacity.
    std::thread::sleep(Duration::from_millis(1200));
    let after = statuses(&mut c, "/", &[], 6);
    let ok = count(&after, 200);
    assert!(
        (2..=3).contains(&ok),
        "{ok} admitted after refilling 1.2 s: {after:?}"
    );
    assert_eq!(&after[..2], [200, 200], "{after:?}");
    assert_eq!(*after.last().unwrap(), 429, "{after:?}");
}

#[test]
fn sliding_log_counts_exactly_the_last_window() {
    let backend = Backend::echo("b");
    let gw = limited(
        &backend,
        1,
        "",
        "\"exact\": RateLimit(key: ClientIp, algorithm: SlidingLog(limit: 3, window_s: 2)),",
        &route("r", "/", "rate_limits: [\"exact\"]"),
    );
    let mut c = Client::connect(gw.port);
    let t0 = Instant::now();
    assert_eq!(c.get("/").status, 200); // at ~0 s
    std::thread::sleep(Duration::from_millis(1000));
    let t1 = Instant::now();
    assert_eq!(statuses(&mut c, "/", &[], 2), [200, 200]); // at ~1 s
    let r = c.get("/");
    let retry = assert_refused(&r);
    if t1.duration_since(t0) < Duration::from_millis(1900) {
        // The oldest admission leaves the window at ~2 s: under a second away.
        assert_eq!(retry, 1, "Retry-After");
    }
    // At ~2.4 s exactly one admission (the one at ~0 s) has left the
    // window: one request fits, the next does not (a fixed or approximate
    // window would differ here).
    let wait = Duration::from_millis(2400).saturating_sub(t0.elapsed());
    std::thread::sleep(wait);
    let s = statuses(&mut c, "/", &[], 2);
    assert_eq!(
        s,
        [200, 429],
        "at {:?} after the start, {:?} after the second and third admissions",
        t0.elapsed(),
        t1.elapsed()
    );
    // At ~3.4 s the two admissions of ~1 s have left too.
    let wait = Duration::from_millis(3400).saturating_sub(t0.elapsed());
    std::thread::sleep(wait);
    assert_eq!(statuses(&mut c, "/", &[], 3), [200, 200, 429]);
}

#[test]
fn a_window_longer_than_the_clock_can_count_still_limits() {
    // 2^64 - 1 seconds: the window's end in nanoseconds saturates.
    let backend = Backend::echo("b");
    let long = "window_s: 18446744073709551615";
    let gw = limited(
        &backend,
        1,
        "",
        &format!(
            "\"fixed\": RateLimit(key: ClientIp, algorithm: FixedWindow(limit: 2, {long})),
             \"sliding\": RateLimit(key: ClientIp, algorithm: SlidingWindow(limit: 2, {long})),
             \"log\": RateLimit(key: ClientIp, algorithm: SlidingLog(limit: 2, {long})),"
        ),
        &[
            route("f", "/fixed", "rate_limits: [\"fixed\"]"),
            route("s", "/sliding", "rate_limits: [\"sliding\"]"),
            route("l", "/log", "rate_limits: [\"log\"]"),
        ]
        .concat(),
    );
    let mut c = Client::connect(gw.port);
    for path in ["/fixed", "/sliding", "/log"] {
        assert_eq!(statuses(&mut c, path, &[], 2), [200, 200], "{path}");
        let r = c.get(path);
        assert!(assert_refused(&r) > 86_400, "{path}: Retry-After");
    }
    // The gateway is still serving.
    assert_eq!(c.get("/fixed").status, 429);
}

#[test]
fn sliding_window_weights_the_previous_window() {
    let backend = Backend::echo("b");
    let gw = limited(
        &backend,
        1,
        "",
        "\"sliding\": RateLimit(key: ClientIp, algorithm: SlidingWindow(limit: 4, window_s: 2)),",
        &route("r", "/", "rate_limits: [\"sliding\"]"),
    );
    // Windows are aligned to Unix time (2 s): start 100 ms into one.
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    std::thread::sleep(Duration::from_millis(2000 - unix_ms() % 2000 + 100));
    let first = unix_ms() / 2000;
    let mut c = Client::connect(gw.port);
    assert_eq!(statuses(&mut c, "/", &[], 5), [200, 200, 200, 200, 429]);
    assert_eq!(
        unix_ms() / 2000,
        first,
        "the first burst crossed a window boundary"
    );
    // 600 ms into the next window the previous one still weighs 70 %:
    // 4 × 0.7 = 2.8 of 4, room for exactly one more (a fixed window would
    // admit 4). The estimate admits one more only from 1 s on, so this holds
    // from 250 ms to 1 s into the window.
    std::thread::sleep(Duration::from_millis(
        ((first + 1) * 2000 + 600).saturating_sub(unix_ms()),
    ));
    // (A new connection: the first may have idled out.)
    let s = statuses(&mut Client::connect(gw.port), "/", &[], 3);
    let into = unix_ms() - (first + 1) * 2000;
    assert_eq!(s, [200, 429, 429], "{into} ms into the next window");
    assert!(into < 1000, "the test ran too slowly to judge ({into} ms)");
}

#[test]
fn leaky_bucket_without_max_wait_refuses_overflow_and_drains() {
    let backend = Backend::echo("b");
    let gw = limited(
        &backend,
        1,
        "",
        "\"leaky\": RateLimit(key: ClientIp, algorithm: LeakyBucket(capacity: 3, drain_per_s: 1)),",
        &route("r", "/", "rate_limits: [\"leaky\"]"),
    );
    let mut c = Client::connect(gw.port);
    let start = Instant::now();
    assert_eq!(statuses(&mut c, "/", &[], 3), [200, 200, 200]);
    let r = c.get("/");
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the burst was paced ({took:?}), not admitted at once"
    );
    let retry = assert_refused(&r);
    if took < Duration::from_millis(500) {
        assert_eq!(retry, 1, "one request drains in a second");
    }
    // 1.3 s later one request has drained out: one fits, not two.
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(statuses(&mut c, "/", &[], 2), [200, 429]);
}

#[test]
fn leaky_bucket_with_max_wait_delays_excess_requests_up_to_the_bound() {
    let backend = Backend::echo("b");
    // Drains 10/s: each queued request leaves 100 ms after the one before;
    // at most 300 ms of waiting, so a burst of 8 admits 4 (waits 0, 100,
    // 200, 300 ms) and refuses the rest.
    let gw = limited(
        &backend,
        1,
        "",
        "\"smooth\": RateLimit(key: ClientIp, algorithm: LeakyBucket(capacity: 10, drain_per_s: 10, max_wait_ms: Some(300))),",
        &route("r", "/", "rate_limits: [\"smooth\"]"),
    );

    // Sequential requests are paced, never refused: 8 requests take at
    // least 7 × 100 ms.
    let mut c = Client::connect(gw.port);
    let start = Instant::now();
    let s = statuses(&mut c, "/seq", &[], 8);
    let took = start.elapsed();
    assert_eq!(s, [200; 8], "sequential requests are delayed, not refused");
    assert!(
        took >= Duration::from_millis(600),
        "8 requests through a 10/s leaky bucket took only {took:?}"
    );
    drop(c);
    std::thread::sleep(Duration::from_millis(1200)); // drain

    // A simultaneous burst: some wait, the excess beyond the bound is refused.
    let n = 8;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let barrier = barrier.clone();
            let port = gw.port;
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                barrier.wait();
                let start = Instant::now();
                let r = c.get("/burst");
                (r, start.elapsed())
            })
        })
        .collect();
    let results: Vec<(Resp, Duration)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let admitted: Vec<Duration> = results
        .iter()
        .filter(|(r, _)| r.status == 200)
        .map(|(_, d)| *d)
        .collect();
    let refused: Vec<&(Resp, Duration)> = results.iter().filter(|(r, _)| r.status != 200).collect();
    eprintln!(
        "burst: admitted after {admitted:?}; refused after {:?}",
        refused.iter().map(|(_, d)| *d).collect::<Vec<_>>()
    );
    for (r, took) in &refused {
        assert_refused(r);
        assert!(*took < Duration::from_secs(1), "a refusal took {took:?}");
    }
    assert!(
        (3..=6).contains(&admitted.len()),
        "{} of a burst of {n} admitted; expected about 4",
        admitted.len()
    );
    assert!(!refused.is_empty(), "nothing refused beyond the wait bound");
    let slowest = admitted.iter().max().unwrap();
    assert!(
        *slowest >= Duration::from_millis(180),
        "no admitted request of the burst was delayed (slowest {slowest:?})"
    );
    assert!(
        *slowest < Duration::from_millis(300 + 700),
        "an admitted request waited {slowest:?}, beyond the 300 ms bound"
    );
}

// ---------------------------------------------------------------------------
// Shards
// ---------------------------------------------------------------------------

#[test]
fn a_burst_on_one_connection_gets_the_whole_limit_from_four_shards() {
    let backend = Backend::echo("b");
    // A generous wait for lent quota (the default is 30 ms): 4 shards share
    // the test machine's 2 cores with other tests, so gossip ticks can be late.
    let gw = limited(
        &backend,
        4,
        "max_quota_wait_ms: 1000",
        &format!(
            "\"bucket\": RateLimit(key: Route, algorithm: TokenBucket(capacity: 20, refill_per_s: 0.001)),\n\
             \"window\": RateLimit(key: Route, algorithm: FixedWindow(limit: 20, {DAY})),"
        ),
        &format!(
            "{}{}",
            route("bucket", "/bucket", "rate_limits: [\"bucket\"]"),
            route("window", "/window", "rate_limits: [\"window\"]")
        ),
    );
    for path in ["/bucket", "/window"] {
        // One connection is served by one shard, which starts with a quarter
        // of the limit and must borrow the rest from the other three.
        let mut c = Client::connect(gw.port);
        let start = Instant::now();
        let s = statuses(&mut c, path, &[], 20);
        let took = start.elapsed();
        assert_eq!(
            s, [200; 20],
            "{path}: a burst up to the limit on one connection"
        );
        assert!(
            took < Duration::from_secs(5),
            "{path}: the burst took {took:?}"
        );
        assert_refused(&c.get(path));
        // Another connection (possibly another shard) finds nothing left either.
        assert_refused(&Client::connect(gw.port).get(path));
    }
    assert_eq!(backend.count(), 40);
}

// ---------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------

#[test]
fn many_distinct_keys_keep_memory_bounded_and_the_gateway_responsive() {
    let backend = Backend::echo("b");
    let gw = limited(
        &backend,
        1,
        "max_keys_per_shard: 1000",
        &format!("\"per-key\": RateLimit(key: Header(\"x-key\"), algorithm: FixedWindow(limit: 1, {DAY})),"),
        &route("r", "/", "rate_limits: [\"per-key\"]"),
    );
    let mut c = Client::connect(gw.port);
    assert_eq!(statuses(&mut c, "/", &[("x-key", "first")], 2), [200, 429]);
    let before = gw.vm_hwm_kib().expect("VmHWM");

    let conns = 4;
    let per_conn = 5000;
    let threads: Vec<_> = (0..conns)
        .map(|t| {
            let port = gw.port;
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                for i in 0..per_conn {
                    let key = format!("key-{t}-{i}");
                    let r = c.request("GET", "/", &[("x-key", &key)], b"");
                    assert_eq!(r.status, 200, "a fresh key {key} was refused: {}", r.text());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }

    // Still responsive.
    let start = Instant::now();
    let r = Client::connect(gw.port).request("GET", "/", &[("x-key", "last")], b"");
    let took = start.elapsed();
    assert_eq!(r.status, 200);
    assert!(
        took < Duration::from_secs(1),
        "a request took {took:?} after the flood"
    );
    // The least recently seen keys were evicted: "first" is forgotten, so it
    // is admitted again (an unbounded table would still refuse it).
    // (A new connection: the first one idled out during the flood.)
    let again = Client::connect(gw.port).request("GET", "/", &[("x-key", "first")], b"");
    assert_eq!(again.status, 200, "{}", again.text());

    let after = gw.vm_hwm_kib().expect("VmHWM");
    eprintln!(
        "VmHWM {before} KiB before, {after} KiB after {} keys",
        conns * per_conn
    );
    assert!(after < 64 * 1024, "VmHWM {after} KiB after 20,000 keys");
}

// ---------------------------------------------------------------------------
// Configuration errors
// ---------------------------------------------------------------------------

/// Runs `shardgate check` on `text`; asserts exit code 2 and a line
/// `FILE:LINE:COL: FIELD: MESSAGE` on the line of `at`, whose message
/// contains `says`.
#[track_caller]
fn assert_check_error(text: &str, field: &str, at: &str, says: &str) {
    let dir = temp_dir();
    let path = dir.join("limits.ron");
    std::fs::write(&path, text).unwrap();
    let file = path.display().to_string();
    let (status, stdout, stderr) = run_cli(&["check", &file]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        status.code(),
        Some(2),
        "exit code; stdout: {stdout} stderr: {stderr}"
    );
    let want_line = text[..text.find(at).expect("`at` in text")]
        .matches('\n')
        .count()
        + 1;
    let found = stderr.lines().find_map(|l| {
        let rest = l.strip_prefix(&format!("{file}:"))?;
        let mut parts = rest.splitn(3, ':');
        let line: usize = parts.next()?.parse().ok()?;
        let col: usize = parts.next()?.parse().ok()?;
        let msg = parts.next()?.strip_prefix(&format!(" {field}: "))?;
        Some((line, col, msg.to_string()))
    });
    let Some((line, col, msg)) = found else {
        panic!("no `{file}:LINE:COL: {field}: ...` line in stderr:\n{stderr}");
    };
    assert_eq!(line, want_line, "line of {field} in:\n{stderr}");
    assert!(col >= 1, "column in {stderr}");
    assert!(
        msg.contains(says),
        "message for {field}: {msg:?} lacks {says:?}"
    );
}

fn check_config(extra: &str, settings: &str, limits: &str, routes: &str) -> String {
    format!(
        "Gateway(\n    shards: Count(1),\n    listeners: [Listener(name: \"main\", bind: \"127.0.0.1:8080\")],\n    upstreams: {{ \"app\": Upstream(targets: [\"127.0.0.1:9000\"]) }},\n    {extra}\n    rate_limiting: RateLimiting({settings}),\n    rate_limits: {{\n{limits}\n    }},\n    routes: [\n{routes}\n    ],\n)\n"
    )
}

#[test]
fn check_reports_rate_limit_config_errors_with_positions() {
    let ok_limit = "        \"per-ip\": RateLimit(key: ClientIp, algorithm: FixedWindow(limit: 5, window_s: 60)),";
    let plain = |limits: &str| route("r", "/", &format!("rate_limits: [{limits}]"));
    // Unknown limit on a route.
    let text = check_config("", "", ok_limit, &plain("\"per-ip\", \"per-usr\""));
    assert_check_error(
        &text,
        "routes[0].rate_limits",
        "\"per-usr\"",
        "unknown rate limit \"per-usr\"",
    );
    // A claim key on a public route (no caller, so no claims).
    let text = check_config(
        "",
        "",
        "        \"per-user\": RateLimit(key: Claim(\"sub\"), algorithm: FixedWindow(limit: 5, window_s: 60)),",
        &plain("\"per-user\""),
    );
    assert_check_error(&text, "routes[0].rate_limits", "\"per-user\"]", "is public");
    // A consumer key on a route without an ApiKey authenticator.
    let text = check_config(
        "",
        "",
        "        \"per-app\": RateLimit(key: Consumer, algorithm: FixedWindow(limit: 5, window_s: 60)),",
        &plain("\"per-app\""),
    );
    assert_check_error(&text, "routes[0].rate_limits", "\"per-app\"]", "ApiKey");
    // A zero limit.
    let text = check_config(
        "",
        "",
        "        \"none\": RateLimit(key: ClientIp,\n            algorithm: SlidingWindow(limit: 0, window_s: 60)),",
        &plain("\"none\""),
    );
    assert_check_error(
        &text,
        "rate_limits.none.algorithm.limit",
        "limit: 0",
        "at least 1",
    );
    // A bad Redis URL.
    let text = check_config(
        "",
        "",
        "        \"shared\": RateLimit(key: Route, algorithm: FixedWindow(limit: 5, window_s: 60),\n            policy: Redis(url: \"http://127.0.0.1:6379\")),",
        &plain("\"shared\""),
    );
    assert_check_error(
        &text,
        "rate_limits.shared.policy.url",
        "http://",
        "redis://",
    );
    // Queueing with the Redis policy.
    let text = check_config(
        "",
        "",
        "        \"smooth\": RateLimit(key: ClientIp,\n            algorithm: LeakyBucket(capacity: 5, drain_per_s: 10, max_wait_ms: Some(500)),\n            policy: Redis(url: \"redis://127.0.0.1:6379\")),",
        &plain("\"smooth\""),
    );
    assert_check_error(
        &text,
        "rate_limits.smooth.algorithm.max_wait_ms",
        "max_wait_ms",
        "Local",
    );
    // A trusted proxy that is not an address or block.
    let text = check_config(
        "",
        "trusted_proxies: [\"10.0.0.0/8\", \"10.0.0.0/40\"]",
        ok_limit,
        &plain("\"per-ip\""),
    );
    assert_check_error(
        &text,
        "rate_limiting.trusted_proxies",
        "10.0.0.0/40",
        "10.0.0.0/40",
    );
    // And the valid form of the same config passes.
    let text = check_config(
        "",
        "trusted_proxies: [\"10.0.0.0/8\"]",
        ok_limit,
        &plain("\"per-ip\""),
    );
    let dir = temp_dir();
    let path = dir.join("ok.ron");
    std::fs::write(&path, &text).unwrap();
    let (status, stdout, stderr) = run_cli(&["check", &path.display().to_string()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "valid config rejected: {stdout} {stderr}");
}

#[test]
fn a_composite_route_counts_once_however_many_parts_it_has() {
    let backend = Backend::start(|r| Response::ok(format!("{{\"path\": {:?}}}", r.target)));
    let gw = limited_with(
        &backend,
        1,
        "",
        "",
        "\"per-ip\": RateLimit(key: ClientIp, algorithm: FixedWindow(limit: 2, window_s: 86400)),",
        "Route(name: \"dash\", match: Match(path: \"/dash\"), rate_limits: [\"per-ip\"],
               aggregate: Aggregate(parts: [
                   Part(name: \"a\", upstream: \"app\", path: \"/a\"),
                   Part(name: \"b\", upstream: \"app\", path: \"/b\"),
                   Part(name: \"c\", upstream: \"app\", path: \"/c\"),
               ])),",
    );
    let mut c = Client::connect(gw.port);
    for remaining in [1, 0] {
        let r = c.get("/dash");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(num(&r, "ratelimit-remaining"), remaining);
        assert!(r.text().contains("\"/b\""), "{}", r.text());
    }
    let r = c.get("/dash");
    assert_json_error(&r, 429);
    // Two composites admitted, three parts each; the refused one fanned out to nothing.
    assert_eq!(backend.count(), 6);
}
