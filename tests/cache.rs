//! The response cache through the real binary and real loopback backends:
//! statuses, keys, Vary, Cache-Control, Age, coalescing, stale answers,
//! cookies and credentials, identity, purge, large bodies, the memory bound.

mod common;

use common::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// `sha256:` of the API keys "key-a" and "key-b".
fn key_hash(key: &str) -> String {
    shardgate::auth::hash_api_key(key)
}

/// A gateway with `shards` shards, an admin listener on `$PORT2`, upstream
/// `app`, API-key consumers "a" and "b", a rate limit `one` (1 a minute) and
/// `routes` (RON text).
fn config(backend: &Backend, shards: usize, routes: &str) -> String {
    format!(
        r#"Gateway(
    shards: Count({shards}),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    admin: Some(Admin(bind: "127.0.0.1:$PORT2")),
    limits_http: {LIMITS},
    shutdown_grace_ms: 5000,
    upstreams: {{ "app": Upstream(targets: ["{app}"], timeout_ms: 5000) }},
    authenticators: {{
        "keys": ApiKey(header: "X-Api-Key", consumers: {{ "a": "{a}", "b": "{b}" }}),
    }},
    rate_limits: {{
        "one": RateLimit(key: ClientIp, algorithm: SlidingLog(limit: 1, window_s: 60)),
    }},
    routes: [
{routes}
    ],
)
"#,
        app = backend.addr(),
        a = key_hash("key-a"),
        b = key_hash("key-b"),
    )
}

/// One cached route `c` under `/c` with these `Cache(...)` fields and extra route fields.
fn route(cache: &str, extra: &str) -> String {
    format!(
        r#"        Route(name: "c", match: Match(path_prefix: "/c"), upstream: "app", cache: Some(Cache({cache})){extra}),"#
    )
}

/// A backend answering `/c/...` with a body naming the path and a counter
/// of calls per path.
fn counting_backend(
    extra: impl Fn(&Request, Response) -> Response + Send + Sync + 'static,
) -> Backend {
    let calls: Arc<std::sync::Mutex<HashMap<String, usize>>> = Arc::default();
    Backend::start(move |r| {
        let n = {
            let mut m = calls.lock().unwrap();
            let n = m.entry(r.target.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let body = format!("{{\"path\":\"{}\",\"call\":{n}}}", r.target);
        extra(
            r,
            Response::ok(body).header("Content-Type", "application/json"),
        )
    })
}

fn status(r: &Resp) -> &str {
    r.header("x-cache-status").unwrap_or("-")
}

fn calls_to(b: &Backend, target: &str) -> usize {
    b.requests().iter().filter(|r| r.target == target).count()
}

fn scrape(gw: &Gateway) -> HashMap<String, f64> {
    let r = get(gw.port2, "/metrics");
    assert_eq!(r.status, 200);
    r.text()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse::<f64>().ok()?))
        })
        .collect()
}

fn sum_of(m: &HashMap<String, f64>, prefix: &str, contains: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix) && k.contains(contains))
        .map(|(_, v)| v)
        .sum()
}

fn admin_post(gw: &Gateway, target: &str) -> Resp {
    request(gw.port2, "POST", target, &[], b"")
}

#[test]
fn a_second_get_is_a_hit_with_age_and_the_same_body() {
    let b = counting_backend(|_, r| r);
    let gw = Gateway::start(&config(&b, 1, &route("ttl_s: {200: 300}", "")));
    let mut c = Client::connect(gw.port);
    let first = c.get("/c/a");
    assert_eq!(first.status, 200);
    assert_eq!(status(&first), "MISS");
    let second = c.get("/c/a");
    assert_eq!(status(&second), "HIT");
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("content-type"), Some("application/json"));
    assert_eq!(second.header("age"), Some("0"));
    assert_eq!(calls_to(&b, "/c/a"), 1);
    thread::sleep(Duration::from_millis(1100));
    let third = c.get("/c/a");
    assert_eq!(status(&third), "HIT");
    let age: u64 = third.header("age").unwrap().parse().unwrap();
    assert!(age >= 1, "age {age}");
    // HEAD is answered from the GET entry, with its length and no body.
    let head = c.request("HEAD", "/c/a", &[], b"");
    assert_eq!(status(&head), "HIT");
    assert_eq!(
        head.header("content-length"),
        Some(first.body.len().to_string().as_str())
    );
    assert!(head.body.is_empty());
    assert_eq!(calls_to(&b, "/c/a"), 1);
    // The request id is the request's own, not the stored one.
    let r = c.request("GET", "/c/a", &[("X-Request-Id", "abc-123")], b"");
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    // Hits and misses are counted.
    let m = scrape(&gw);
    assert_eq!(
        sum_of(&m, "shardgate_cache_requests_total", "status=\"hit\""),
        4.0
    );
    assert_eq!(
        sum_of(&m, "shardgate_cache_requests_total", "status=\"miss\""),
        1.0
    );
    assert!(sum_of(&m, "shardgate_cache_bytes", "route=\"c\"") > 0.0);
}

#[test]
fn only_get_and_head_are_cached_other_methods_bypass() {
    let b = counting_backend(|_, r| r);
    let gw = Gateway::start(&config(&b, 1, &route("", "")));
    for _ in 0..2 {
        let r = request(gw.port, "POST", "/c/p", &[], b"{}");
        assert_eq!(r.status, 200);
        assert_eq!(status(&r), "BYPASS");
    }
    assert_eq!(calls_to(&b, "/c/p"), 2);
    // A HEAD miss is not stored (it has no body); GET then fills the entry.
    let r = request(gw.port, "HEAD", "/c/h", &[], b"");
    assert_eq!(status(&r), "MISS");
    assert_eq!(status(&get(gw.port, "/c/h")), "MISS");
    assert_eq!(status(&get(gw.port, "/c/h")), "HIT");
}

#[test]
fn the_query_is_keyed_sorted_and_by_the_listed_subset() {
    let b = counting_backend(|_, r| r);
    let routes = format!(
        "{}\n{}",
        route("", ""),
        r#"        Route(name: "s", match: Match(path_prefix: "/s"), upstream: "app", cache: Some(Cache(key: CacheKey(query: Only(["page"]), headers: ["X-Tenant"])))),"#
    );
    let gw = Gateway::start(&config(&b, 1, &routes));
    assert_eq!(status(&get(gw.port, "/c/q?b=2&a=1")), "MISS");
    assert_eq!(status(&get(gw.port, "/c/q?a=1&b=2")), "HIT");
    assert_eq!(status(&get(gw.port, "/c/q?a=1&b=3")), "MISS");
    assert_eq!(status(&get(gw.port, "/s/q?page=1&utm=x")), "MISS");
    assert_eq!(status(&get(gw.port, "/s/q?utm=y&page=1")), "HIT");
    assert_eq!(status(&get(gw.port, "/s/q?page=2")), "MISS");
    // A listed header is part of the key.
    let t1 = get_with(gw.port, "/s/t", &[("X-Tenant", "one")]);
    assert_eq!(status(&t1), "MISS");
    assert_eq!(
        status(&get_with(gw.port, "/s/t", &[("X-Tenant", "one")])),
        "HIT"
    );
    assert_eq!(
        status(&get_with(gw.port, "/s/t", &[("X-Tenant", "two")])),
        "MISS"
    );
}

#[test]
fn vary_keeps_one_answer_per_value_of_the_named_fields() {
    let b = Backend::start(|r| {
        let lang = r.header("accept-language").unwrap_or("none").to_string();
        Response::ok(format!("lang={lang}")).header("Vary", "Accept-Language")
    });
    let gw = Gateway::start(&config(&b, 1, &route("", "")));
    let en = [("Accept-Language", "en")];
    let fr = [("Accept-Language", "fr")];
    let r = get_with(gw.port, "/c/v", &en);
    assert_eq!((status(&r), r.text().as_str()), ("MISS", "lang=en"));
    let r = get_with(gw.port, "/c/v", &fr);
    assert_eq!((status(&r), r.text().as_str()), ("MISS", "lang=fr"));
    let r = get_with(gw.port, "/c/v", &en);
    assert_eq!((status(&r), r.text().as_str()), ("HIT", "lang=en"));
    let r = get_with(gw.port, "/c/v", &fr);
    assert_eq!((status(&r), r.text().as_str()), ("HIT", "lang=fr"));
    assert_eq!(b.count(), 2);
    // `Vary: *` is never stored.
    let star = Backend::start(|_| Response::ok("x").header("Vary", "*"));
    let gw2 = Gateway::start(&config(&star, 1, &route("", "")));
    assert_eq!(status(&get(gw2.port, "/c/x")), "MISS");
    assert_eq!(status(&get(gw2.port, "/c/x")), "MISS");
}

#[test]
fn upstream_cache_control_directives_are_respected() {
    let b = counting_backend(|r, resp| {
        let cc = match r.target.as_str() {
            "/c/no-store" => "no-store",
            "/c/private" => "private, max-age=60",
            "/c/max-age" => "max-age=1",
            "/c/s-maxage" => "max-age=600, s-maxage=1",
            "/c/no-cache" => "no-cache",
            "/c/long" => "max-age=600",
            _ => return resp,
        };
        resp.header("Cache-Control", cc)
    });
    let gw = Gateway::start(&config(&b, 1, &route("ttl_s: {200: 300}", "")));
    for path in ["/c/no-store", "/c/private"] {
        assert_eq!(status(&get(gw.port, path)), "MISS");
        assert_eq!(status(&get(gw.port, path)), "MISS", "{path}");
        assert_eq!(calls_to(&b, path), 2, "{path}");
    }
    for path in ["/c/max-age", "/c/s-maxage", "/c/long"] {
        assert_eq!(status(&get(gw.port, path)), "MISS");
        assert_eq!(status(&get(gw.port, path)), "HIT", "{path}");
    }
    // Upstream no-cache: stored, but every use goes upstream again.
    assert_eq!(status(&get(gw.port, "/c/no-cache")), "MISS");
    let again = get(gw.port, "/c/no-cache");
    assert_eq!(status(&again), "EXPIRED");
    assert_eq!(again.text(), "{\"path\":\"/c/no-cache\",\"call\":2}");
    thread::sleep(Duration::from_millis(1200));
    // max-age=1 and s-maxage=1 (which wins over max-age=600) are past.
    for path in ["/c/max-age", "/c/s-maxage"] {
        let r = get(gw.port, path);
        assert_eq!(status(&r), "EXPIRED", "{path}");
        assert!(r.text().contains("\"call\":2"), "{}", r.text());
        assert_eq!(status(&get(gw.port, path)), "HIT", "{path}");
    }
    assert_eq!(status(&get(gw.port, "/c/long")), "HIT");
}

#[test]
fn statuses_are_cached_for_their_own_ttl_and_others_not_at_all() {
    let b = counting_backend(|r, resp| match r.target.as_str() {
        "/c/missing" => resp.status(404),
        "/c/broken" => resp.status(500),
        _ => resp,
    });
    let gw = Gateway::start(&config(&b, 1, &route("ttl_s: {200: 300, 404: 1}", "")));
    assert_eq!(status(&get(gw.port, "/c/missing")), "MISS");
    let r = get(gw.port, "/c/missing");
    assert_eq!((r.status, status(&r)), (404, "HIT"));
    assert_eq!(status(&get(gw.port, "/c/broken")), "MISS");
    let r = get(gw.port, "/c/broken");
    assert_eq!((r.status, status(&r)), (500, "MISS"));
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(status(&get(gw.port, "/c/missing")), "EXPIRED");
}

#[test]
fn a_client_no_cache_bypasses_unless_the_route_turns_it_off() {
    let b = counting_backend(|_, r| r);
    let routes = format!(
        "{}\n{}",
        route("", ""),
        r#"        Route(name: "k", match: Match(path_prefix: "/k"), upstream: "app", cache: Some(Cache(client_no_cache_bypass: false))),"#
    );
    let gw = Gateway::start(&config(&b, 1, &routes));
    assert_eq!(status(&get(gw.port, "/c/n")), "MISS");
    for h in [("Cache-Control", "no-cache"), ("Pragma", "no-cache")] {
        let r = get_with(gw.port, "/c/n", &[h]);
        assert_eq!(status(&r), "BYPASS");
    }
    assert_eq!(calls_to(&b, "/c/n"), 3);
    assert_eq!(status(&get(gw.port, "/c/n")), "HIT");
    assert_eq!(status(&get(gw.port, "/k/n")), "MISS");
    let r = get_with(gw.port, "/k/n", &[("Cache-Control", "no-cache")]);
    assert_eq!(status(&r), "HIT");
}

#[test]
fn concurrent_misses_make_one_upstream_call() {
    let b = counting_backend(|_, r| r.delay(Duration::from_millis(400)));
    let gw = Gateway::start(&config(&b, 1, &route("", "")));
    let port = gw.port;
    let threads: Vec<_> = (0..50)
        .map(|_| thread::spawn(move || get(port, "/c/hot")))
        .collect();
    let answers: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(calls_to(&b, "/c/hot"), 1);
    let misses = answers.iter().filter(|r| status(r) == "MISS").count();
    let hits = answers.iter().filter(|r| status(r) == "HIT").count();
    assert_eq!((misses, hits), (1, 49));
    assert!(answers
        .iter()
        .all(|r| r.status == 200 && r.text() == "{\"path\":\"/c/hot\",\"call\":1}"));
}

#[test]
fn concurrent_misses_on_two_shards_make_at_most_one_call_per_shard() {
    let b = counting_backend(|_, r| r.delay(Duration::from_millis(400)));
    let gw = Gateway::start(&config(&b, 2, &route("", "")));
    let port = gw.port;
    let threads: Vec<_> = (0..50)
        .map(|_| thread::spawn(move || get(port, "/c/hot")))
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().status, 200);
    }
    let calls = calls_to(&b, "/c/hot");
    assert!((1..=2).contains(&calls), "{calls} upstream calls");
}

#[test]
fn waiters_go_upstream_themselves_when_the_answer_is_not_stored() {
    let b = counting_backend(|_, r| {
        r.delay(Duration::from_millis(300))
            .header("Cache-Control", "no-store")
    });
    let gw = Gateway::start(&config(&b, 1, &route("", "")));
    let port = gw.port;
    let threads: Vec<_> = (0..20)
        .map(|_| thread::spawn(move || get(port, "/c/cold")))
        .collect();
    for t in threads {
        let r = t.join().unwrap();
        assert_eq!((r.status, status(&r)), (200, "MISS"));
    }
    assert_eq!(calls_to(&b, "/c/cold"), 20);
}

#[test]
fn stale_while_revalidate_answers_stale_and_refreshes_behind_the_answer() {
    let slow = Arc::new(AtomicBool::new(false));
    let s = slow.clone();
    let b = counting_backend(move |_, r| {
        let r = r.header("Cache-Control", "max-age=1, stale-while-revalidate=30");
        if s.load(Ordering::SeqCst) {
            r.delay(Duration::from_millis(800))
        } else {
            r
        }
    });
    let gw = Gateway::start(&config(&b, 1, &route("", "")));
    assert_eq!(status(&get(gw.port, "/c/swr")), "MISS");
    thread::sleep(Duration::from_millis(1200));
    slow.store(true, Ordering::SeqCst);
    // The first request past freshness gets the stale copy at once...
    let started = Instant::now();
    let first = get(gw.port, "/c/swr");
    assert_eq!(status(&first), "STALE");
    assert!(first.text().contains("\"call\":1"));
    assert!(started.elapsed() < Duration::from_millis(600));
    // ...and the refresh goes upstream behind it; meanwhile others get it too.
    assert!(b.wait_for(2, Duration::from_secs(5)));
    let started = Instant::now();
    let second = get(gw.port, "/c/swr");
    assert_eq!(status(&second), "STALE");
    assert!(second.text().contains("\"call\":1"));
    assert!(started.elapsed() < Duration::from_millis(600));
    // Once the refresh is stored, hits carry the new answer.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(gw.port, "/c/swr");
        if status(&r) == "HIT" {
            assert!(r.text().contains("\"call\":2"), "{}", r.text());
            break;
        }
        assert!(Instant::now() < deadline, "never refreshed: {}", status(&r));
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(calls_to(&b, "/c/swr"), 2);
}

#[test]
fn stale_if_error_answers_stale_when_the_upstream_fails() {
    let failing = Arc::new(AtomicBool::new(false));
    let f = failing.clone();
    let b = counting_backend(move |r, resp| {
        if f.load(Ordering::SeqCst) {
            return Response::ok("down").status(503);
        }
        match r.target.as_str() {
            "/c/sie" => resp.header("Cache-Control", "max-age=1, stale-if-error=60"),
            _ => resp.header("Cache-Control", "max-age=1"),
        }
    });
    let gw = Gateway::start(&config(&b, 1, &route("", "")));
    assert_eq!(status(&get(gw.port, "/c/sie")), "MISS");
    assert_eq!(status(&get(gw.port, "/c/plain")), "MISS");
    thread::sleep(Duration::from_millis(1200));
    failing.store(true, Ordering::SeqCst);
    let r = get(gw.port, "/c/sie");
    assert_eq!((r.status, status(&r)), (200, "STALE"));
    assert!(r.text().contains("\"call\":1"));
    // Without stale-if-error the failure goes through.
    let r = get(gw.port, "/c/plain");
    assert_eq!((r.status, status(&r)), (503, "EXPIRED"));
    // A route default covers upstreams that say nothing.
    let dead = format!("127.0.0.1:{}", closed_port());
    drop(gw);
    let ok = Backend::start(|_| Response::ok("kept").header("Cache-Control", "max-age=1"));
    let text = config(&ok, 1, &route("stale_if_error_s: 60", ""));
    let gw = Gateway::start(&text);
    assert_eq!(status(&get(gw.port, "/c/d")), "MISS");
    thread::sleep(Duration::from_millis(1200));
    // The same route, now pointing at a closed port (a reload).
    gw.rewrite_config(&text.replace(&ok.addr(), &dead));
    gw.send_signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(gw.port, "/c/d");
        if r.status == 200 && status(&r) == "STALE" {
            assert_eq!(r.text(), "kept");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no STALE answer: {} {}",
            r.status,
            status(&r)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn set_cookie_answers_pass_uncached_unless_the_route_allows_them() {
    let b = counting_backend(|_, r| r.header("Set-Cookie", "session=1"));
    let routes = format!(
        "{}\n{}",
        route("", ""),
        r#"        Route(name: "k", match: Match(path_prefix: "/k"), upstream: "app", cache: Some(Cache(cache_set_cookie: true))),"#
    );
    let gw = Gateway::start(&config(&b, 1, &routes));
    assert_eq!(status(&get(gw.port, "/c/s")), "MISS");
    assert_eq!(status(&get(gw.port, "/c/s")), "MISS");
    assert_eq!(status(&get(gw.port, "/k/s")), "MISS");
    let r = get(gw.port, "/k/s");
    assert_eq!(status(&r), "HIT");
    assert_eq!(r.header("set-cookie"), Some("session=1"));
}

#[test]
fn requests_with_authorization_bypass_unless_the_route_allows_them() {
    let b = counting_backend(|_, r| r);
    let routes = format!(
        "{}\n{}",
        route("", ""),
        r#"        Route(name: "k", match: Match(path_prefix: "/k"), upstream: "app", cache: Some(Cache(cache_authorized: true))),"#
    );
    let gw = Gateway::start(&config(&b, 1, &routes));
    let auth = [("Authorization", "Bearer x")];
    assert_eq!(status(&get_with(gw.port, "/c/a", &auth)), "BYPASS");
    assert_eq!(status(&get_with(gw.port, "/c/a", &auth)), "BYPASS");
    assert_eq!(calls_to(&b, "/c/a"), 2);
    assert_eq!(status(&get_with(gw.port, "/k/a", &auth)), "MISS");
    assert_eq!(status(&get_with(gw.port, "/k/a", &auth)), "HIT");
}

#[test]
fn the_callers_identity_is_in_the_key_unless_the_route_is_shared() {
    let b = counting_backend(|r, resp| {
        let who = r.header("x-consumer").unwrap_or("?").to_string();
        resp.header("X-Who", &who)
    });
    let routes = r#"
        Route(name: "mine", match: Match(path_prefix: "/mine"), upstream: "app", auth: Required(["keys"]), cache: Some(Cache())),
        Route(name: "shared", match: Match(path_prefix: "/shared"), upstream: "app", auth: Required(["keys"]), cache: Some(Cache(shared: true))),"#;
    let gw = Gateway::start(&config(&b, 1, routes));
    let a = [("X-Api-Key", "key-a")];
    let bb = [("X-Api-Key", "key-b")];
    let r = get_with(gw.port, "/mine/x", &a);
    assert_eq!((status(&r), r.header("x-who")), ("MISS", Some("a")));
    let r = get_with(gw.port, "/mine/x", &bb);
    assert_eq!((status(&r), r.header("x-who")), ("MISS", Some("b")));
    let r = get_with(gw.port, "/mine/x", &a);
    assert_eq!((status(&r), r.header("x-who")), ("HIT", Some("a")));
    let r = get_with(gw.port, "/mine/x", &bb);
    assert_eq!((status(&r), r.header("x-who")), ("HIT", Some("b")));
    assert_eq!(status(&get_with(gw.port, "/shared/x", &a)), "MISS");
    let r = get_with(gw.port, "/shared/x", &bb);
    assert_eq!((status(&r), r.header("x-who")), ("HIT", Some("a")));
    // Authentication runs before the lookup: no key, no answer from the cache.
    assert_eq!(get(gw.port, "/shared/x").status, 401);
}

#[test]
fn rate_limiting_runs_before_the_lookup() {
    let b = counting_backend(|_, r| r);
    let gw = Gateway::start(&config(&b, 1, &route("", ", rate_limits: [\"one\"]")));
    assert_eq!(status(&get(gw.port, "/c/r")), "MISS");
    assert_eq!(get(gw.port, "/c/r").status, 429);
}

#[test]
fn purge_by_key_and_by_prefix_through_the_admin_api() {
    let b = counting_backend(|_, r| r);
    let gw = Gateway::start(&config(&b, 2, &route("", "")));
    let mut c = Client::connect(gw.port);
    for path in ["/c/p/1?x=1", "/c/p/2", "/c/other"] {
        assert_eq!(status(&c.get(path)), "MISS");
        assert_eq!(status(&c.get(path)), "HIT");
    }
    let r = admin_post(&gw, "/cache/purge?key=%2Fc%2Fp%2F1%3Fx%3D1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"purged\": 1"), "{}", r.text());
    assert_eq!(status(&c.get("/c/p/1?x=1")), "MISS");
    assert_eq!(status(&c.get("/c/p/2")), "HIT");
    let r = admin_post(&gw, "/cache/purge?prefix=/c/p/&route=c");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"purged\": 2"), "{}", r.text());
    assert_eq!(status(&c.get("/c/p/1?x=1")), "MISS");
    assert_eq!(status(&c.get("/c/p/2")), "MISS");
    assert_eq!(status(&c.get("/c/other")), "HIT");
    assert_eq!(admin_post(&gw, "/cache/purge?key=nope").status, 400);
    assert_eq!(admin_post(&gw, "/metrics").status, 405);
}

#[test]
fn bodies_over_max_object_bytes_stream_through_uncached() {
    let b = Backend::start(|r| match r.target.as_str() {
        "/c/big" => Response::generated(300 * 1024, false),
        "/c/big-chunked" => Response::generated(300 * 1024, true),
        "/c/small-chunked" => Response::chunked(vec![b"ab".to_vec(), b"cd".to_vec()]),
        _ => Response::ok("small"),
    });
    let gw = Gateway::start(&config(
        &b,
        1,
        &route("max_object_bytes: 65536, max_bytes: 1048576", ""),
    ));
    let expect = Pattern::new().checksum(300 * 1024);
    for path in ["/c/big", "/c/big-chunked"] {
        for _ in 0..2 {
            let r = get(gw.port, path);
            assert_eq!(status(&r), "MISS", "{path}");
            assert_eq!((r.body_len, r.checksum), (300 * 1024, expect), "{path}");
        }
    }
    assert_eq!(b.count(), 4);
    // A small chunked answer is kept, and served with a length.
    assert_eq!(get(gw.port, "/c/small-chunked").text(), "abcd");
    let r = get(gw.port, "/c/small-chunked");
    assert_eq!((status(&r), r.text().as_str()), ("HIT", "abcd"));
    assert_eq!(r.header("content-length"), Some("4"));
}

/// 30,000 distinct keys hold several times the store's 1 MiB: eviction,
/// not the key count, bounds its memory.
#[test]
fn memory_stays_bounded_under_30k_distinct_keys() {
    const KEYS: usize = 30_000;
    let b = Backend::start(|r| Response::ok(format!("{{\"item\":\"{}\"}}", r.target)));
    let max = 1024 * 1024;
    let gw = Gateway::start(&config(&b, 1, &route(&format!("max_bytes: {max}"), "")));
    let port = gw.port;
    let next = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let next = next.clone();
            thread::spawn(move || {
                let mut c = Client::connect(port);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= KEYS {
                        return;
                    }
                    let r = c.get(&format!("/c/item/{i}"));
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let m = scrape(&gw);
    let bytes = sum_of(&m, "shardgate_cache_bytes", "route=\"c\"");
    let entries = sum_of(&m, "shardgate_cache_entries", "route=\"c\"");
    assert!(bytes > 0.0 && bytes <= max as f64, "{bytes} bytes");
    assert!(
        entries > 1000.0 && entries < KEYS as f64 / 3.0,
        "{entries} entries"
    );
    assert_eq!(
        sum_of(&m, "shardgate_cache_requests_total", "status=\"miss\""),
        KEYS as f64
    );
    // The most recent keys are still there.
    let last = format!("/c/item/{}", KEYS - 1);
    assert_eq!(status(&get(gw.port, &last)), "HIT");
}

#[test]
fn a_bad_cache_config_is_refused_with_its_position() {
    let b = counting_backend(|_, r| r);
    let text = config(
        &b,
        1,
        &route(
            "max_bytes: 1000, max_object_bytes: 5000, ttl_s: {99: 5}",
            "",
        ),
    );
    let dir = temp_dir();
    let path = dir.join("bad.ron");
    std::fs::write(&path, text).unwrap();
    let (code, _, err) = run_cli(&["check", path.to_str().unwrap()]);
    assert!(!code.success());
    assert!(err.contains("routes[0].cache.max_object_bytes"), "{err}");
    assert!(err.contains("routes[0].cache.ttl_s"), "{err}");
    assert!(err.contains("bad.ron:"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_reload_that_removes_the_cache_frees_its_store() {
    let b = counting_backend(|_, r| r);
    let text = config(&b, 1, &route("", ""));
    let gw = Gateway::start(&text);
    assert_eq!(status(&get(gw.port, "/c/r")), "MISS");
    assert_eq!(status(&get(gw.port, "/c/r")), "HIT");
    assert!(sum_of(&scrape(&gw), "shardgate_cache_bytes", "route=\"c\"") > 0.0);
    gw.rewrite_config(&text.replace(", cache: Some(Cache())", ""));
    gw.send_signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while scrape(&gw)
        .keys()
        .any(|k| k.starts_with("shardgate_cache_bytes"))
    {
        assert!(
            Instant::now() < deadline,
            "the store outlived its route's cache"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let r = get(gw.port, "/c/r");
    assert_eq!((r.status, r.has("x-cache-status")), (200, false));
}

#[test]
fn curl_sees_a_miss_then_a_hit_on_one_connection() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("curl not installed: skipped");
        return;
    }
    let b = counting_backend(|_, r| r);
    let gw = Gateway::start(&config(&b, 2, &route("", "")));
    let url = format!("http://127.0.0.1:{}/c/curl", gw.port);
    let out = std::process::Command::new("curl")
        .args(["-si", "--max-time", "5", &url, &url])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let statuses: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("x-cache-status: "))
        .map(str::trim)
        .collect();
    assert_eq!(statuses, ["miss", "hit"], "{text}");
    assert!(text.contains("\nage: "), "{text}");
}
