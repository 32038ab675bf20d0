//! Reload on SIGHUP and graceful shutdown on SIGTERM.

mod common;

use common::*;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

fn two_upstreams(a: &Backend, b: &Backend, target: &str) -> String {
    let ups = upstream("a", &[&a.addr()], "") + &upstream("b", &[&b.addr()], "");
    config(2, &ups, &catch_all(target))
}

/// GETs `path` on `c` until the body starts with `want` (reload is
/// asynchronous); panics if that does not happen within a few seconds.
fn get_until(c: &mut Client, path: &str, want: &str) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let r = c.get(path);
        assert_eq!(r.status, 200, "body: {}", r.text());
        if r.text().starts_with(want) || Instant::now() > deadline {
            assert!(
                r.text().starts_with(want),
                "after reload {path} still answered {:?}",
                r.text()
            );
            return r;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until stderr written after `from` contains `needle`.
fn wait_new_stderr(gw: &Gateway, from: usize, needle: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let err = gw.stderr();
        let new = err.get(from..).unwrap_or("").to_string();
        if new.contains(needle) {
            return Some(new);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn reload_applies_to_an_open_keep_alive_connection() {
    let a = Backend::echo("A");
    let b = Backend::echo("B");
    let mut gw = Gateway::start(&two_upstreams(&a, &b, "a"));
    let mut c = Client::connect(gw.port);
    assert_eq!(c.get("/r/1").text(), "A GET /r/1");

    gw.rewrite_config(&two_upstreams(&a, &b, "b"));
    gw.send_signal("HUP");
    thread::sleep(Duration::from_secs(1));
    get_until(&mut c, "/r/2", "B ");
    assert_eq!(get(gw.port, "/r/3").text(), "B GET /r/3");
    assert!(b.count() >= 2);
    assert!(
        gw.wait_exit(Duration::ZERO).is_none(),
        "gateway exited on SIGHUP"
    );
}

#[test]
fn broken_reload_is_logged_and_the_old_config_keeps_serving() {
    let a = Backend::echo("A");
    let b = Backend::echo("B");
    let gw = Gateway::start(&two_upstreams(&a, &b, "a"));
    let mut c = Client::connect(gw.port);
    assert_eq!(c.get("/k/1").text(), "A GET /k/1");

    let broken = two_upstreams(&a, &b, "b").replace("upstream: \"b\"", "upstream: \"nope\"");
    assert!(broken.contains("\"nope\""));
    let before = gw.stderr().len();
    gw.rewrite_config(&broken);
    gw.send_signal("HUP");
    let file = gw.config_path().display().to_string();
    let logged = wait_new_stderr(&gw, before, &file, Duration::from_secs(5));
    let logged = logged.unwrap_or_else(|| {
        panic!(
            "nothing naming {file} logged after a broken reload; stderr:\n{}",
            gw.stderr()
        )
    });
    let lower = logged.to_ascii_lowercase();
    assert!(
        logged.contains("nope")
            || ["error", "fail", "invalid"]
                .iter()
                .any(|w| lower.contains(w)),
        "the reload log does not report an error: {logged}"
    );
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        c.get("/k/2").text(),
        "A GET /k/2",
        "same connection after broken reload"
    );
    assert_eq!(
        get(gw.port, "/k/3").text(),
        "A GET /k/3",
        "new connection after broken reload"
    );
    assert_eq!(b.count(), 0);

    // A later good reload still works.
    gw.rewrite_config(&two_upstreams(&a, &b, "b"));
    gw.send_signal("HUP");
    thread::sleep(Duration::from_secs(1));
    get_until(&mut c, "/k/4", "B ");
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let backend = Backend::start(|r| {
        let delay = if r.target == "/slow" { 1500 } else { 0 };
        Response::ok(format!("done {}", r.target)).delay(Duration::from_millis(delay))
    });
    let mut gw = Gateway::start(&config(
        2,
        &upstream("app", &[&backend.addr()], ""),
        &catch_all("app"),
    ));
    // An idle keep-alive connection must not hold up the shutdown.
    let mut idle = Client::connect(gw.port);
    assert_eq!(idle.get("/warm").status, 200);

    let mut c = Client::connect(gw.port);
    c.send(&build_request("GET", "/slow", &[], b""));
    assert!(
        backend.wait_for(2, Duration::from_secs(5)),
        "slow request never reached the backend"
    );
    let in_flight = thread::spawn(move || c.try_read_response(false));

    gw.send_signal("TERM");
    let addr: SocketAddr = ([127, 0, 0, 1], gw.port).into();
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut refused = false;
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Err(_) => {
                refused = true;
                break;
            }
            Ok(s) => drop(s),
        }
        thread::sleep(Duration::from_millis(100));
    }

    let resp = in_flight
        .join()
        .unwrap()
        .expect("the in-flight request got no response after SIGTERM");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "done /slow");
    assert!(
        refused,
        "new connections were still accepted 4 s after SIGTERM"
    );

    let status = gw.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| {
        panic!(
            "gateway still running 10 s after SIGTERM; stderr:\n{}",
            gw.stderr()
        )
    });
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        gw.stderr()
    );
    drop(idle);
}

#[test]
fn sigterm_on_an_idle_gateway_exits_zero() {
    let backend = Backend::echo("b");
    let mut gw = Gateway::start(&config(
        1,
        &upstream("app", &[&backend.addr()], ""),
        &catch_all("app"),
    ));
    assert_eq!(get(gw.port, "/x").status, 200);
    gw.send_signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| {
        panic!(
            "gateway still running 10 s after SIGTERM; stderr:\n{}",
            gw.stderr()
        )
    });
    // (The port is not probed after exit: tests run in parallel, and another
    // test's backend may already have been given the same free port.)
    assert!(status.success(), "exit status {status}");
}
