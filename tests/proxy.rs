//! Reverse proxying: what the backend receives, what the client receives,
//! body streaming, keep-alive, pipelining, upstream errors and balancing.

mod common;

use common::*;
use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

fn one_backend_gateway(shards: usize, backend: &Backend) -> Gateway {
    Gateway::start(&config(
        shards,
        &upstream("app", &[&backend.addr()], ""),
        &catch_all("app"),
    ))
}

#[test]
fn forwards_method_target_headers_and_body() {
    let backend = Backend::start(|r| {
        Response::ok(format!("got {} bytes", r.body_len))
            .status(201)
            .header("X-Backend", "yes")
    });
    let gw = one_backend_gateway(2, &backend);
    let body = b"{\"name\":\"widget\",\"qty\":3}";
    let resp = request(
        gw.port,
        "POST",
        "/api/things?x=1&y=two",
        &[
            ("Host", "shop.example.test:8443"),
            ("X-Custom", "some value"),
            ("Content-Type", "application/json"),
        ],
        body,
    );
    assert_eq!(resp.status, 201, "body: {}", resp.text());
    assert_eq!(resp.header("x-backend"), Some("yes"));
    assert_eq!(resp.text(), format!("got {} bytes", body.len()));

    let r = backend.last();
    assert_eq!(backend.count(), 1);
    assert_eq!(r.method, "POST");
    assert_eq!(r.target, "/api/things?x=1&y=two");
    assert_eq!(r.version, "HTTP/1.1");
    assert_eq!(r.header("host"), Some("shop.example.test:8443"));
    assert_eq!(r.header("x-custom"), Some("some value"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body_len, body.len() as u64);
    assert_eq!(r.checksum, checksum(body));
}

#[test]
fn http10_request_is_forwarded_as_http11() {
    let backend = Backend::echo("b");
    let gw = one_backend_gateway(1, &backend);
    let mut c = Client::connect(gw.port);
    c.send(b"GET /old?q=1 HTTP/1.0\r\nHost: legacy.test\r\n\r\n");
    let resp = c.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "b GET /old?q=1");
    let r = backend.last();
    assert_eq!(r.version, "HTTP/1.1");
    assert_eq!(r.header("host"), Some("legacy.test"));
}

#[test]
fn removes_hop_by_hop_request_headers() {
    let backend = Backend::echo("b");
    let gw = one_backend_gateway(2, &backend);
    let resp = get_with(
        gw.port,
        "/hop",
        &[
            ("Connection", "keep-alive, X-Conn-Named"),
            ("X-Conn-Named", "drop me"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "deflate, trailers"),
            ("Trailer", "X-Checksum"),
            ("Upgrade", "example/1"),
            ("Proxy-Connection", "keep-alive"),
            ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
            ("X-Keep", "kept"),
            ("Authorization", "Bearer end-to-end"),
        ],
    );
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    let r = backend.last();
    for gone in [
        "x-conn-named",
        "keep-alive",
        "trailer",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
    ] {
        assert!(
            !r.has(gone),
            "backend received hop-by-hop header {gone}: {:?}",
            r.headers
        );
    }
    for v in r.headers_named("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-conn-named"),
            "client's Connection header was forwarded: {v:?}"
        );
    }
    // The client's TE is not forwarded; the gateway asks for trailers itself
    // because it can pass them on to this client.
    assert_eq!(r.headers_named("te"), vec!["trailers".to_string()]);
    assert_eq!(r.header("x-keep"), Some("kept"));
    assert_eq!(r.header("authorization"), Some("Bearer end-to-end"));
}

#[test]
fn removes_hop_by_hop_response_headers() {
    let backend = Backend::start(|_| {
        Response::ok("fine")
            .header("Connection", "X-Internal")
            .header("X-Internal", "secret")
            .header("Keep-Alive", "timeout=5, max=100")
            .header("Proxy-Connection", "keep-alive")
            .header("Upgrade", "example/1")
            .header("X-Public", "visible")
    });
    let gw = one_backend_gateway(2, &backend);
    let resp = get(gw.port, "/resp-hop");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "fine");
    for gone in ["x-internal", "keep-alive", "proxy-connection", "upgrade"] {
        assert!(
            !resp.has(gone),
            "client received hop-by-hop header {gone}: {:?}",
            resp.headers
        );
    }
    for v in resp.headers_named("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-internal"),
            "backend's Connection header was forwarded: {v:?}"
        );
    }
    assert_eq!(resp.header("x-public"), Some("visible"));
}

#[test]
fn sets_x_forwarded_headers() {
    let backend = Backend::echo("b");
    let gw = one_backend_gateway(2, &backend);

    let resp = get_with(gw.port, "/xff", &[("Host", "front.example.test")]);
    assert_eq!(resp.status, 200);
    let r = backend.last();
    assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("x-forwarded-proto"), Some("http"));
    assert_eq!(r.header("x-forwarded-host"), Some("front.example.test"));

    let resp = get_with(
        gw.port,
        "/xff2",
        &[
            ("Host", "front.example.test:8080"),
            ("X-Forwarded-For", "203.0.113.7"),
        ],
    );
    assert_eq!(resp.status, 200);
    let r = backend.last();
    let xff: Vec<&str> = r.headers_named("x-forwarded-for");
    assert_eq!(xff.len(), 1, "one X-Forwarded-For header expected: {xff:?}");
    assert_eq!(xff[0], "203.0.113.7, 127.0.0.1");
    assert_eq!(
        r.header("x-forwarded-host"),
        Some("front.example.test:8080")
    );
    assert_eq!(r.header("host"), Some("front.example.test:8080"));
}

#[test]
fn generates_and_propagates_request_ids() {
    let backend = Backend::echo("b");
    let gw = one_backend_gateway(2, &backend);

    let r1 = get(gw.port, "/id1");
    assert_eq!(r1.status, 200);
    let sent1 = backend.last();
    let id1 = sent1
        .header("x-request-id")
        .expect("backend got no X-Request-Id")
        .to_string();
    assert!(!id1.trim().is_empty());
    assert_eq!(
        r1.header("x-request-id"),
        Some(id1.as_str()),
        "response id differs"
    );

    let r2 = get(gw.port, "/id2");
    let id2 = backend.last().header("x-request-id").unwrap().to_string();
    assert_ne!(id1, id2, "two requests got the same generated id");
    assert_eq!(r2.header("x-request-id"), Some(id2.as_str()));

    let r3 = get_with(gw.port, "/id3", &[("X-Request-Id", "client-chosen-42")]);
    assert_eq!(r3.status, 200);
    assert_eq!(
        backend.last().headers_named("x-request-id"),
        vec!["client-chosen-42"]
    );
    assert_eq!(r3.header("x-request-id"), Some("client-chosen-42"));
}

#[test]
fn chunked_request_body_reaches_backend_decoded() {
    let backend = Backend::start(|r| Response::ok(format!("{}", r.body_len)));
    let gw = one_backend_gateway(2, &backend);
    let pieces: [&[u8]; 4] = [
        b"hello ",
        b"chunked",
        b" world, with a longer third piece ",
        b"!",
    ];
    let mut raw = b"POST /upload?kind=chunked HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut whole = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        if i == 1 {
            raw.extend_from_slice(format!("{:X};ext=1\r\n", p.len()).as_bytes());
        } else {
            raw.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        }
        raw.extend_from_slice(p);
        raw.extend_from_slice(b"\r\n");
        whole.extend_from_slice(p);
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let mut c = Client::connect(gw.port);
    // Send in two writes split inside a chunk.
    let split = raw.len() - 20;
    c.send(&raw[..split]);
    thread::sleep(Duration::from_millis(50));
    c.send(&raw[split..]);
    let resp = c.read_response();
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    assert_eq!(resp.text(), whole.len().to_string());
    let r = backend.last();
    assert_eq!(r.target, "/upload?kind=chunked");
    assert_eq!(r.body, whole);
    assert_eq!(r.checksum, checksum(&whole));

    // The connection stays usable after a chunked request.
    let again = c.get("/after-chunked");
    assert_eq!(again.status, 200);
}

#[test]
fn response_bodies_arrive_intact_in_every_framing() {
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let big2 = big.clone();
    let backend = Backend::start(move |r| match r.target.as_str() {
        "/fixed" => Response::ok(big2.clone()),
        "/chunked" => Response::chunked(vec![
            b"first,".to_vec(),
            big2[..70_000].to_vec(),
            b",last".to_vec(),
        ]),
        "/close" => Response::close_delimited(big2[..100_000].to_vec()),
        "/empty" => Response::ok(""),
        _ => Response::ok("?").status(404),
    });
    let gw = one_backend_gateway(2, &backend);
    let mut c = Client::connect(gw.port);

    let r = c.get("/fixed");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_len, big.len() as u64);
    assert_eq!(r.checksum, checksum(&big));

    let r = c.get("/chunked");
    assert_eq!(r.status, 200);
    let mut want = b"first,".to_vec();
    want.extend_from_slice(&big[..70_000]);
    want.extend_from_slice(b",last");
    assert_eq!(r.body_len, want.len() as u64);
    assert_eq!(r.checksum, checksum(&want));

    let r = c.get("/empty");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_len, 0);

    // A close-delimited upstream body: the client gets exactly those bytes
    // (framed however the gateway likes).
    let mut c2 = Client::connect(gw.port);
    let r = c2.get("/close");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_len, 100_000);
    assert_eq!(r.checksum, checksum(&big[..100_000]));
}

#[test]
fn large_upload_streams_with_bounded_memory() {
    // Twenty times the memory bound below.
    const SIZE: u64 = 256 * 1024 * 1024;
    let backend = Backend::start(|r| Response::ok(format!("{} {:x}", r.body_len, r.checksum)));
    let cfg = config(
        2,
        &upstream("app", &[&backend.addr()], ""),
        &catch_all("app"),
    )
    .replace("max_body_bytes: 1048576", "max_body_bytes: 2147483648");
    let gw = Gateway::start(&cfg);
    // Growth over the started gateway's peak: the binary's own pages are
    // not the body's.
    let start = gw.vm_hwm_kib().expect("VmHWM");
    let mut c = Client::connect(gw.port);
    c.set_read_timeout(Duration::from_secs(60));
    let mut writer = c.stream().try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let upload = thread::spawn(move || {
        writer.write_all(
            format!("PUT /big HTTP/1.1\r\nHost: localhost\r\nContent-Length: {SIZE}\r\n\r\n")
                .as_bytes(),
        )?;
        let mut sum = Checksum::new();
        Pattern::new().generate(SIZE, |piece| {
            sum.update(piece);
            writer.write_all(piece)
        })?;
        Ok::<u64, std::io::Error>(sum.finish())
    });
    let resp = c.read_response();
    let sent_sum = upload.join().unwrap().expect("upload write failed");
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    let r = backend.last();
    assert_eq!(r.method, "PUT");
    assert_eq!(r.body_len, SIZE);
    assert_eq!(r.checksum, sent_sum);
    assert_eq!(resp.text(), format!("{SIZE} {sent_sum:x}"));
    let grew = gw.vm_hwm_kib().expect("VmHWM").saturating_sub(start);
    assert!(
        grew < 12 * 1024,
        "gateway peak RSS grew {grew} KiB while streaming a 256 MiB upload (limit 12 MiB)"
    );
}

#[test]
fn large_download_streams_with_bounded_memory() {
    const SIZE: u64 = 128 * 1024 * 1024;
    let backend = Backend::start(|r| Response::generated(SIZE, r.target == "/chunked"));
    let gw = one_backend_gateway(2, &backend);
    let start = gw.vm_hwm_kib().expect("VmHWM");
    let want = Pattern::new().checksum(SIZE);
    let mut c = Client::connect(gw.port);
    c.set_read_timeout(Duration::from_secs(60));
    for path in ["/fixed", "/chunked"] {
        let r = c.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body_len, SIZE, "{path}");
        assert_eq!(r.checksum, want, "{path}");
    }
    let grew = gw.vm_hwm_kib().expect("VmHWM").saturating_sub(start);
    assert!(
        grew < 40 * 1024,
        "gateway peak RSS grew {grew} KiB while streaming a 128 MiB download (limit 40 MiB)"
    );
}

#[test]
fn keep_alive_reuses_client_and_upstream_connections() {
    let backend = Backend::echo("b");
    let gw = one_backend_gateway(1, &backend);
    let mut c = Client::connect(gw.port);
    for i in 0..6 {
        let r = c.get(&format!("/ka/{i}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("b GET /ka/{i}"));
    }
    // A second client connection on the same shard reuses pooled upstream connections too.
    let mut c2 = Client::connect(gw.port);
    for i in 0..3 {
        assert_eq!(c2.get(&format!("/ka2/{i}")).status, 200);
    }
    assert_eq!(backend.count(), 9);
    assert!(
        backend.connections() <= 2,
        "9 sequential requests through one shard used {} upstream connections (not pooled)",
        backend.connections()
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let backend = Backend::start(|r| {
        // Make the first one slow so a gateway that answers out of order would show it.
        let delay = if r.target == "/p/1" { 300 } else { 0 };
        Response::ok(format!("{} {} {}", r.method, r.target, r.body_len))
            .delay(Duration::from_millis(delay))
    });
    let gw = one_backend_gateway(2, &backend);
    let mut c = Client::connect(gw.port);
    let mut raw = Vec::new();
    raw.extend_from_slice(&build_request("GET", "/p/1", &[], b""));
    raw.extend_from_slice(&build_request("POST", "/p/2", &[], b"hello"));
    raw.extend_from_slice(&build_request("GET", "/p/3?z=9", &[], b""));
    raw.extend_from_slice(&build_request("DELETE", "/p/4", &[], b""));
    c.send(&raw);
    let want = [
        "GET /p/1 0",
        "POST /p/2 5",
        "GET /p/3?z=9 0",
        "DELETE /p/4 0",
    ];
    for w in want {
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), w);
    }
    assert_eq!(backend.count(), 4);
}

#[test]
fn http10_without_keep_alive_is_closed_after_the_response() {
    let backend = Backend::echo("b");
    let gw = one_backend_gateway(2, &backend);
    let mut c = Client::connect(gw.port);
    c.send(b"GET /ten HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "b GET /ten");
    assert!(
        c.wait_closed(Duration::from_secs(5)).is_some(),
        "HTTP/1.0 connection without keep-alive was left open"
    );
}

#[test]
fn http10_keep_alive_is_honoured_and_announced() {
    let backend = Backend::echo("b");
    let gw = one_backend_gateway(1, &backend);
    let mut c = Client::connect(gw.port);
    for path in ["/one", "/two"] {
        c.send(
            format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n")
                .as_bytes(),
        );
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("b GET {path}"));
        assert_eq!(
            r.header("connection").map(|v| v.to_ascii_lowercase()),
            Some("keep-alive".to_string())
        );
    }
}

#[test]
fn unreachable_upstream_gives_502() {
    let dead = format!("127.0.0.1:{}", closed_port());
    let gw = Gateway::start(&config(
        2,
        &upstream("dead", &[&dead], "connect_timeout_ms: 2000"),
        &catch_all("dead"),
    ));
    let r = get_with(gw.port, "/x", &[("X-Request-Id", "req-502")]);
    let id = assert_json_error(&r, 502);
    assert_eq!(id, "req-502");
    assert_eq!(r.header("x-request-id"), Some("req-502"));
}

#[test]
fn slow_upstream_gives_504() {
    let backend = Backend::start(|_| Response::ok("too late").delay(Duration::from_secs(3)));
    let gw = Gateway::start(&config(
        2,
        &upstream("slow", &[&backend.addr()], "timeout_ms: 500"),
        &catch_all("slow"),
    ));
    let mut c = Client::connect(gw.port);
    let r = c.request("GET", "/slow", &[("X-Request-Id", "req-504")], b"");
    let id = assert_json_error(&r, 504);
    assert_eq!(id, "req-504");
    assert!(
        backend.count() >= 1,
        "the request never reached the backend"
    );
}

#[test]
fn upstream_closing_without_response_gives_502() {
    let backend = Backend::start(|_| Response::no_response());
    let gw = one_backend_gateway(2, &backend);
    let r = get(gw.port, "/vanish");
    let id = assert_json_error(&r, 502);
    assert_eq!(r.header("x-request-id"), Some(id.as_str()));
    assert!(backend.count() >= 1);
}

#[test]
fn stale_pooled_connection_is_retried() {
    // Closes every connection right after its response, without saying so.
    let backend = Backend::start(|r| Response::ok(format!("ok {}", r.target)).close_after());
    let gw = one_backend_gateway(1, &backend);
    let mut c = Client::connect(gw.port);
    for i in 0..5 {
        let r = c.get(&format!("/stale/{i}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.text(), format!("ok /stale/{i}"));
        // Let the backend's close reach the pooled connection.
        thread::sleep(Duration::from_millis(100));
    }
    // Each request reached the backend exactly once.
    let targets: Vec<String> = backend.requests().into_iter().map(|r| r.target).collect();
    let want: Vec<String> = (0..5).map(|i| format!("/stale/{i}")).collect();
    assert_eq!(targets, want);
}

#[test]
fn round_robin_alternates_on_one_shard() {
    let a = Backend::echo("A");
    let b = Backend::echo("B");
    let gw = Gateway::start(&config(
        1,
        &upstream("rr", &[&a.addr(), &b.addr()], "balance: RoundRobin"),
        &catch_all("rr"),
    ));
    let mut c = Client::connect(gw.port);
    let names: Vec<String> = (0..10)
        .map(|i| {
            let r = c.get(&format!("/rr/{i}"));
            assert_eq!(r.status, 200);
            r.text().split(' ').next().unwrap().to_string()
        })
        .collect();
    for w in names.windows(2) {
        assert_ne!(w[0], w[1], "round robin did not alternate: {names:?}");
    }
    assert_eq!(a.count(), 5);
    assert_eq!(b.count(), 5);
}

#[test]
fn round_robin_spreads_across_shards() {
    let a = Backend::echo("A");
    let b = Backend::echo("B");
    let gw = Gateway::start(&config(
        2,
        &upstream("rr", &[&a.addr(), &b.addr()], ""),
        &catch_all("rr"),
    ));
    for i in 0..20 {
        assert_eq!(get(gw.port, &format!("/s/{i}")).status, 200);
    }
    assert!(
        a.count() > 0 && b.count() > 0,
        "A got {}, B got {}",
        a.count(),
        b.count()
    );
    assert_eq!(a.count() + b.count(), 20);
}

#[test]
fn least_outstanding_serves_requests() {
    let a = Backend::echo("A");
    let b = Backend::echo("B");
    let gw = Gateway::start(&config(
        2,
        &upstream("lo", &[&a.addr(), &b.addr()], "balance: LeastOutstanding"),
        &catch_all("lo"),
    ));
    let mut c = Client::connect(gw.port);
    for i in 0..6 {
        let r = c.get(&format!("/lo/{i}"));
        assert_eq!(r.status, 200);
        assert!(r.text().ends_with(&format!("GET /lo/{i}")));
    }
    assert_eq!(a.count() + b.count(), 6);
}

#[test]
fn a_dead_target_among_two_gives_502_or_the_live_answer() {
    for balance in ["RoundRobin", "LeastOutstanding"] {
        let live = Backend::echo("live");
        let dead = format!("127.0.0.1:{}", closed_port());
        let gw = Gateway::start(&config(
            1,
            &upstream(
                "mixed",
                &[&dead, &live.addr()],
                &format!("balance: {balance}"),
            ),
            &catch_all("mixed"),
        ));
        let mut ok = 0;
        for i in 0..6 {
            let r = get(gw.port, &format!("/m/{i}"));
            match r.status {
                200 => {
                    assert_eq!(r.text(), format!("live GET /m/{i}"));
                    ok += 1;
                }
                502 => {
                    assert_json_error(&r, 502);
                }
                s => panic!("{balance}: unexpected status {s}: {}", r.text()),
            }
        }
        assert!(ok > 0, "{balance}: the live target never answered");
        assert_eq!(live.count(), ok);
    }
}

#[test]
fn epoll_driver_can_be_forced_and_proxies() {
    let backend = Backend::echo("b");
    let gw = Gateway::start_with_env(
        &config(
            2,
            &upstream("app", &[&backend.addr()], ""),
            &catch_all("app"),
        ),
        &[("SHARDGATE_DRIVER", "epoll")],
    );
    let err = gw.stderr();
    let epoll_lines = err.lines().filter(|l| l.contains("epoll")).count();
    assert!(
        epoll_lines >= 2,
        "expected each of 2 shards to log epoll; stderr:\n{err}"
    );
    let mut c = Client::connect(gw.port);
    for i in 0..3 {
        let r = c.request("POST", &format!("/e/{i}"), &[], b"payload");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("b POST /e/{i}"));
    }
    assert_eq!(backend.last().body, b"payload");
}

#[test]
fn each_shard_logs_its_driver() {
    let backend = Backend::echo("b");
    let gw = one_backend_gateway(2, &backend);
    let err = gw.stderr();
    let lines = err
        .lines()
        .filter(|l| l.contains("io_uring") || l.contains("epoll"))
        .count();
    assert!(
        lines >= 2,
        "expected a driver line per shard; stderr:\n{err}"
    );
    assert_eq!(get(gw.port, "/d").status, 200);
}

#[test]
fn explicit_cores_and_numa_node_placement() {
    let backend = Backend::echo("b");
    let base = config(
        1,
        &upstream("app", &[&backend.addr()], ""),
        &catch_all("app"),
    );
    let cores = Gateway::start(&base.replace("shards: Count(1)", "shards: Cores([0])"));
    assert_eq!(get(cores.port, "/c").status, 200);
    let err = cores.stderr();
    assert!(err.contains("shard 0 on core 0"), "stderr:\n{err}");
    assert!(
        !err.contains("shard 1 "),
        "one shard per listed core; stderr:\n{err}"
    );

    let Ok(list) = std::fs::read_to_string("/sys/devices/system/node/node0/cpulist") else {
        eprintln!("no NUMA node 0 in /sys on this machine; NumaNode placement not exercised");
        return;
    };
    let expected = shardgate::shard::parse_cpulist(&list).expect("cpulist");
    let numa = Gateway::start(&base.replace("shards: Count(1)", "shards: NumaNode(0)"));
    assert_eq!(get(numa.port, "/n").status, 200);
    let err = numa.stderr();
    for (i, core) in expected.iter().enumerate() {
        assert!(
            err.contains(&format!("shard {i} on core {core}")),
            "NumaNode(0) should run shard {i} on core {core}; stderr:\n{err}"
        );
    }
}

/// A keep-alive backend on a raw listener whose open connections can all be
/// closed at once, as when the upstream process restarts on the same port.
struct RestartableBackend {
    addr: String,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl RestartableBackend {
    fn start() -> RestartableBackend {
        use std::io::{BufRead, BufReader};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = open.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                keep.lock().unwrap().push(stream.try_clone().unwrap());
                thread::spawn(move || {
                    let mut out = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => {
                                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                if out.write_all(ok).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        RestartableBackend { addr, open }
    }

    /// Closes every connection accepted so far (the listener stays).
    fn restart(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[test]
fn requests_after_an_upstream_restart_do_not_meet_its_dead_pooled_connections() {
    let backend = RestartableBackend::start();
    let gw = Gateway::start(&config(
        1,
        &upstream("app", &[&backend.addr], ""),
        &catch_all("app"),
    ));
    // Fill the pool with several idle connections.
    let warm: Vec<_> = (0..6)
        .map(|_| {
            let port = gw.port;
            thread::spawn(move || {
                let mut c = Client::connect(port);
                for _ in 0..20 {
                    assert_eq!(c.get("/warm").status, 200);
                }
            })
        })
        .collect();
    for t in warm {
        t.join().unwrap();
    }
    backend.restart();
    thread::sleep(Duration::from_millis(200));
    let statuses: Vec<u16> = (0..12).map(|_| get(gw.port, "/after").status).collect();
    assert!(
        statuses.iter().all(|&s| s == 200),
        "requests after the restart: {statuses:?}"
    );
}

/// `clients` keep-alive clients at once, each sending `rounds` GETs (each
/// answered 200), `pause` apart.
fn clients_in_rounds(port: u16, clients: usize, rounds: usize, pause: Duration) {
    let clients: Vec<_> = (0..clients)
        .map(|_| {
            thread::spawn(move || {
                let mut c = Client::connect(port);
                for _ in 0..rounds {
                    assert_eq!(c.get("/x").status, 200);
                    thread::sleep(pause);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap_or_else(|_| panic!("a client failed"));
    }
}

/// The gateway's idle upstream connections, summed over its shards, from
/// `/metrics` on its admin listener.
fn idle_upstream_connections(gw: &Gateway) -> usize {
    get(gw.port2, "/metrics")
        .text()
        .lines()
        .filter(|l| l.starts_with("shardgate_upstream_connections_idle{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<usize>().ok())
        .sum()
}

#[test]
fn connections_beyond_max_idle_stay_while_a_load_uses_them_and_close_gradually_once_it_stops() {
    // Eight clients, each pausing between requests, so that most of the time
    // most of the eight upstream connections are idle, over several of the
    // shard's once-a-second sweeps. Only two idle connections are allowed:
    // the sweeps leave the other six, which the load keeps using, and once
    // it stops they close a few at a time, not all at one sweep.
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 16;
    let backend = Backend::start(|_| Response::ok("ok").delay(Duration::from_millis(20)));
    let cfg = config(
        1,
        &upstream("app", &[&backend.addr()], "max_idle_per_target: 2"),
        &catch_all("app"),
    )
    .replace(
        "    limits_http:",
        "    admin: Some(Admin(bind: \"127.0.0.1:$PORT2\")),\n    limits_http:",
    );
    let gw = Gateway::start(&cfg);
    clients_in_rounds(gw.port, CLIENTS, ROUNDS, Duration::from_millis(150));
    assert_eq!(backend.count(), CLIENTS * ROUNDS);
    assert!(
        backend.connections() <= CLIENTS + 2,
        "{} upstream connections opened for {CLIENTS} clients over {ROUNDS} rounds",
        backend.connections()
    );
    assert!(
        idle_upstream_connections(&gw) > 2,
        "the surplus was closed at once"
    );
    // The peak is remembered for five sweeps, then the surplus goes at
    // about one connection a sweep.
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut idle = idle_upstream_connections(&gw);
    let mut seen = vec![idle];
    while idle > 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
        idle = idle_upstream_connections(&gw);
        if seen.last() != Some(&idle) {
            seen.push(idle);
        }
    }
    assert_eq!(
        idle, 2,
        "idle upstream connections once the load stopped: {seen:?}"
    );
    assert!(
        seen.len() > 2,
        "the surplus closed at one sweep, not gradually: {seen:?}"
    );
}

#[test]
fn a_load_whose_lulls_outlast_the_peak_window_keeps_most_of_its_connections() {
    // Bursts of eight requests at a time, two idle connections allowed, and
    // a lull of seven seconds between them, longer than the five sweeps a
    // peak is remembered for. The estimate of what the load needs falls
    // about one connection a sweep after that, so the next burst finds most
    // of its connections still open instead of reopening all six.
    const CLIENTS: usize = 8;
    let backend = Backend::start(|_| Response::ok("ok").delay(Duration::from_millis(100)));
    let gw = Gateway::start(&config(
        1,
        &upstream("app", &[&backend.addr()], "max_idle_per_target: 2"),
        &catch_all("app"),
    ));
    clients_in_rounds(gw.port, CLIENTS, 2, Duration::ZERO);
    let first = backend.connections();
    thread::sleep(Duration::from_secs(7));
    clients_in_rounds(gw.port, CLIENTS, 2, Duration::ZERO);
    let reopened = backend.connections() - first;
    assert!(
        reopened <= 4,
        "{reopened} upstream connections opened again after the lull ({first} before it)"
    );
}

#[test]
fn a_load_that_comes_back_to_its_peak_keeps_the_connections_it_needs_through_its_lulls() {
    // Bursts of eight requests at a time, two idle connections allowed, and
    // between the bursts a lull of 1.5 s with one request at a time: longer
    // than a surplus connection may stay unused. The connections the bursts
    // need stay for the next burst (its recent peak), instead of being
    // closed in each lull and opened again, each new one's first request
    // waiting for the upstream to accept it.
    const CLIENTS: usize = 8;
    const BURSTS: usize = 3;
    let backend = Backend::start(|_| Response::ok("ok").delay(Duration::from_millis(100)));
    let gw = Gateway::start(&config(
        1,
        &upstream("app", &[&backend.addr()], "max_idle_per_target: 2"),
        &catch_all("app"),
    ));
    for burst in 0..BURSTS {
        clients_in_rounds(gw.port, CLIENTS, 2, Duration::ZERO);
        if burst + 1 < BURSTS {
            clients_in_rounds(gw.port, 1, 10, Duration::from_millis(150));
        }
    }
    assert_eq!(backend.count(), BURSTS * CLIENTS * 2 + (BURSTS - 1) * 10);
    assert!(
        backend.connections() <= CLIENTS + 2,
        "{} upstream connections opened for bursts of {CLIENTS} requests",
        backend.connections()
    );
}

#[test]
fn a_load_above_max_idle_reuses_its_connections_instead_of_reopening_them() {
    // Eight requests at a time, two idle connections allowed: the pool keeps
    // the eight it needs while they are in use, instead of closing six after
    // every round and opening six new ones for the next.
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 5;
    let backend = Backend::start(|_| Response::ok("ok").delay(Duration::from_millis(100)));
    let gw = Gateway::start(&config(
        1,
        &upstream("app", &[&backend.addr()], "max_idle_per_target: 2"),
        &catch_all("app"),
    ));
    clients_in_rounds(gw.port, CLIENTS, ROUNDS, Duration::ZERO);
    assert_eq!(backend.count(), CLIENTS * ROUNDS);
    assert!(
        backend.connections() <= CLIENTS + 2,
        "{} upstream connections opened for {CLIENTS} concurrent clients",
        backend.connections()
    );
}
