//! The access log through the real gateway: JSON lines with the right fields
//! and values for proxied, refused, unrouted and authenticated requests,
//! reopening on SIGUSR1 (logrotate), following a reload's new path, stdout,
//! and lines dropped and counted when the writer's queue is full.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SECRET: &str = "access-log-test-hmac-secret";

/// A gateway on one upstream `app` with a public route, a rate-limited
/// route (four requests per hour), an authenticated route, and `access_log`.
fn config_with(backend: &Backend, access_log: &str, extra: &str) -> String {
    format!(
        r#"Gateway(
    shards: Count(2),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    limits_http: {LIMITS},
    upstreams: {{ "app": Upstream(targets: ["{addr}"]) }},
    authenticators: {{ "hs": Jwt(algorithms: [HS256], key: Secret("{SECRET}")) }},
    rate_limits: {{ "one": RateLimit(key: Route, algorithm: SlidingLog(limit: 4, window_s: 3600)) }},
    routes: [
        Route(name: "public", match: Match(path_prefix: "/pub"), upstream: "app"),
        Route(name: "limited", match: Match(path_prefix: "/limited"), upstream: "app", rate_limits: ["one"]),
        Route(name: "secure", match: Match(path_prefix: "/secure"), upstream: "app", auth: Required(["hs"])),
    ],
    access_log: Some(AccessLog({access_log})),
    {extra}
)"#,
        addr = backend.addr()
    )
}

/// The JSON lines of `path` (a partial last line is left out).
fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect()
}

/// Waits until `path` has a line with `request_id`, and returns it.
#[track_caller]
fn line_of(path: &Path, request_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(l) = lines(path)
            .into_iter()
            .find(|l| l["request_id"] == request_id)
        {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no line for request {request_id} in {}; lines: {:?}",
            path.display(),
            lines(path)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[test]
fn lines_carry_the_request_route_status_upstream_subject_and_limit() {
    let backend = Backend::echo("b");
    let dir = temp_dir();
    let log = log_path(&dir, "access.log");
    let gw = Gateway::start(&config_with(
        &backend,
        &format!("path: {:?}", log.display().to_string()),
        "",
    ));

    // A proxied GET, and a POST whose body counts as bytes in.
    let first = get_with(gw.port, "/pub/a?secret=1", &[("X-Request-Id", "req-get-1")]);
    assert_eq!(first.status, 200);
    let r = request(
        gw.port,
        "POST",
        "/pub/b",
        &[("X-Request-Id", "req-post-1")],
        b"hello world",
    );
    assert_eq!(r.status, 200);
    // A chunked body counts its data.
    let mut c = Client::connect(gw.port);
    c.send(b"POST /pub/c HTTP/1.1\r\nHost: x\r\nX-Request-Id: req-chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    // No route.
    let r = get_with(gw.port, "/nowhere", &[("X-Request-Id", "req-404")]);
    assert_eq!(r.status, 404);
    // The limit admits four requests an hour (two per shard): 200s, then 429.
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for i in 0..40 {
        let id = format!("req-limited-{i}");
        let r = get_with(gw.port, "/limited", &[("X-Request-Id", &id)]);
        match r.status {
            200 => admitted.push(id),
            429 => refused.push(id),
            s => panic!("unexpected status {s}"),
        }
        if !refused.is_empty() {
            break;
        }
    }
    assert!(!admitted.is_empty() && !refused.is_empty());
    // An authenticated caller.
    let token = hs256_token(&json!({"sub": "user-42", "exp": unix_now() + 600}), SECRET);
    let r = get_with(
        gw.port,
        "/secure/me",
        &[
            ("X-Request-Id", "req-auth-1"),
            ("Authorization", &format!("Bearer {token}")),
        ],
    );
    assert_eq!(r.status, 200);
    // A traceparent that came in is logged even with tracing off.
    let tp_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = get_with(
        gw.port,
        "/pub/traced",
        &[
            ("X-Request-Id", "req-traced"),
            ("traceparent", &format!("00-{tp_trace}-00f067aa0ba902b7-01")),
        ],
    );
    assert_eq!(r.status, 200);

    let l = line_of(&log, "req-get-1");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["path"], "/pub/a", "the query is not logged: {l}");
    assert_eq!(l["route"], "public");
    assert_eq!(l["listener"], "main");
    assert_eq!(l["status"], 200);
    assert_eq!(l["client"], "127.0.0.1");
    assert_eq!(l["upstream"], "app");
    assert_eq!(l["target"], backend.addr());
    assert_eq!(l["upstream_outcome"], "ok");
    assert_eq!(l["bytes_in"], 0);
    assert!(l["bytes_out"].as_u64().unwrap() > 0);
    assert!(l["duration_ms"].as_f64().unwrap() >= l["upstream_ms"].as_f64().unwrap());
    assert!(l["subject"].is_null() && l["rate_limit"].is_null() && l["trace_id"].is_null());
    let time = l["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{time}"
    );
    // The response as the client received it: status line, fields, blank line, body.
    let wire = "HTTP/1.1 200 OK\r\n".len()
        + first
            .headers
            .iter()
            .map(|(k, v)| k.len() + 2 + v.len() + 2)
            .sum::<usize>()
        + 2
        + first.body_len as usize;
    assert_eq!(l["bytes_out"].as_u64().unwrap() as usize, wire, "{l}");

    let l = line_of(&log, "req-post-1");
    assert_eq!(l["method"], "POST");
    assert_eq!(l["bytes_in"], 11);

    let l = line_of(&log, "req-chunked");
    assert_eq!(l["bytes_in"], 11);

    let l = line_of(&log, "req-404");
    assert_eq!(l["status"], 404);
    assert!(l["route"].is_null() && l["upstream"].is_null() && l["target"].is_null());

    for id in &admitted {
        let l = line_of(&log, id);
        assert_eq!(l["status"], 200);
        assert_eq!(l["route"], "limited");
        assert_eq!(l["rate_limit"], "admitted");
    }
    let l = line_of(&log, &refused[0]);
    assert_eq!(l["status"], 429);
    assert_eq!(l["route"], "limited");
    assert_eq!(l["rate_limit"], "refused");
    assert!(
        l["upstream"].is_null(),
        "a refused request calls no upstream"
    );

    let l = line_of(&log, "req-auth-1");
    assert_eq!(l["route"], "secure");
    assert_eq!(l["subject"], "user-42");
    assert_eq!(l["status"], 200);

    let l = line_of(&log, "req-traced");
    assert_eq!(l["trace_id"], tp_trace);

    // Every request is there exactly once.
    let all = lines(&log);
    let expected = 6 + admitted.len() + refused.len();
    assert_eq!(all.len(), expected, "{all:?}");
}

#[test]
fn sigusr1_reopens_the_file_after_a_rotation() {
    let backend = Backend::echo("b");
    let dir = temp_dir();
    let log = log_path(&dir, "access.log");
    let rotated = log_path(&dir, "access.log.1");
    let gw = Gateway::start(&config_with(
        &backend,
        &format!("path: {:?}", log.display().to_string()),
        "",
    ));
    assert_eq!(
        get_with(gw.port, "/pub/1", &[("X-Request-Id", "before")]).status,
        200
    );
    line_of(&log, "before");
    // logrotate moves the file; the gateway still writes to the moved one.
    std::fs::rename(&log, &rotated).unwrap();
    assert_eq!(
        get_with(gw.port, "/pub/2", &[("X-Request-Id", "moved")]).status,
        200
    );
    line_of(&rotated, "moved");
    assert!(!log.exists());
    // SIGUSR1: the path is opened again, as a new file.
    gw.send_signal("USR1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.exists() {
        assert!(Instant::now() < deadline, "SIGUSR1 did not reopen the log");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        get_with(gw.port, "/pub/3", &[("X-Request-Id", "after")]).status,
        200
    );
    let l = line_of(&log, "after");
    assert_eq!(l["path"], "/pub/3");
    let old: Vec<Value> = lines(&rotated);
    assert_eq!(old.len(), 2, "{old:?}");
    assert!(old.iter().all(|l| l["request_id"] != "after"));
    assert_eq!(lines(&log).len(), 1);
    assert!(!gw.stderr().contains("panicked"), "{}", gw.stderr());
}

#[test]
fn a_reload_moves_the_log_to_its_new_path() {
    let backend = Backend::echo("b");
    let dir = temp_dir();
    let first = log_path(&dir, "first.log");
    let second = log_path(&dir, "second.log");
    let cfg = |p: &Path| {
        config_with(
            &backend,
            &format!("path: {:?}", p.display().to_string()),
            "",
        )
    };
    let gw = Gateway::start(&cfg(&first));
    assert_eq!(
        get_with(gw.port, "/pub/1", &[("X-Request-Id", "one")]).status,
        200
    );
    line_of(&first, "one");
    gw.rewrite_config(&cfg(&second));
    gw.send_signal("HUP");
    assert!(
        gw.wait_stderr("shardgate: reloaded", Duration::from_secs(10)),
        "{}",
        gw.stderr()
    );
    // The writer switches when it hears of the reload, right after the shards.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !second.exists() {
        assert!(Instant::now() < deadline, "the new path was not opened");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        get_with(gw.port, "/pub/2", &[("X-Request-Id", "two")]).status,
        200
    );
    line_of(&second, "two");
    assert!(lines(&first).iter().all(|l| l["request_id"] != "two"));
}

#[test]
fn stdout_gets_the_lines() {
    let backend = Backend::echo("b");
    let gw = Gateway::start(&config_with(&backend, "path: \"stdout\"", ""));
    assert_eq!(
        get_with(gw.port, "/pub/x", &[("X-Request-Id", "to-stdout")]).status,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = gw.stdout();
        if let Some(line) = out.lines().find(|l| l.contains("to-stdout")) {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["route"], "public");
            assert_eq!(v["status"], 200);
            break;
        }
        assert!(Instant::now() < deadline, "stdout: {out}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn a_full_queue_drops_lines_and_counts_them() {
    let backend = Backend::echo("b");
    let dir = temp_dir();
    let log = log_path(&dir, "access.log");
    let gw = Gateway::start(&config_with(
        &backend,
        &format!("path: {:?}, queue_lines: 1", log.display().to_string()),
        "admin: Some(Admin(bind: \"127.0.0.1:$PORT2\")),",
    ));
    // Pipelined requests on one connection finish back to back on one
    // shard, faster than the writer takes them from a queue of one line.
    const N: usize = 300;
    let mut raw = Vec::new();
    for i in 0..N {
        raw.extend_from_slice(&build_request(
            "GET",
            &format!("/pub/{i}"),
            &[("X-Request-Id", &format!("p-{i}"))],
            b"",
        ));
    }
    let mut c = Client::connect(gw.port);
    c.send(&raw);
    for _ in 0..N {
        assert_eq!(c.read_response().status, 200);
    }
    // Every request is either written or counted as dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = get(gw.port2, "/metrics");
        assert_eq!(m.status, 200);
        let dropped = metric(&m.text(), "shardgate_access_log_dropped_total")
            .expect("the drop counter is exported") as usize;
        let written = lines(&log).len();
        if written + dropped == N {
            eprintln!("{written} line(s) written, {dropped} dropped");
            assert!(dropped > 0, "no line was dropped from a queue of one line");
            assert!(written > 0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{written} written + {dropped} dropped != {N}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn queued_lines_are_written_before_the_process_exits() {
    let backend = Backend::echo("b");
    let dir = temp_dir();
    let log = log_path(&dir, "access.log");
    let mut gw = Gateway::start(&config_with(
        &backend,
        &format!("path: {:?}", log.display().to_string()),
        "",
    ));
    const N: usize = 50;
    let mut c = Client::connect(gw.port);
    for i in 0..N {
        assert_eq!(c.get(&format!("/pub/{i}")).status, 200);
    }
    drop(c);
    gw.send_signal("TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(15)).is_some(),
        "{}",
        gw.stderr()
    );
    assert_eq!(lines(&log).len(), N);
}
