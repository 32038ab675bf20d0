//! Large configs: 20,000 generated template routes and a catch-all load,
//! route correctly (first, middle and last route, the catch-all), and a
//! reload swaps them while a keep-alive connection keeps sending requests.

mod common;

use common::*;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const N: usize = 20_000;

/// `N` template routes to upstream "a" (route i rewrites to
/// `/{tag}/svc-i/items/{id}`, so the backend sees which route and which
/// config served a request), then a catch-all to `catch_all`.
fn generated(a: &Backend, b: &Backend, tag: &str, catch_all: &str) -> String {
    let mut routes = String::new();
    for i in 0..N {
        let _ = writeln!(
            routes,
            "        Route(name: \"svc-{i}\", match: Match(path: \"/api/v1/svc-{i}/items/{{id}}\", \
             methods: [\"GET\", \"HEAD\"]), upstream: \"a\", rewrite: \"/{tag}/svc-{i}/items/{{id}}\"),"
        );
    }
    let _ = writeln!(
        routes,
        "        Route(name: \"catch-all\", match: Match(path_prefix: \"/\"), upstream: {catch_all:?}),"
    );
    let ups = upstream("a", &[&a.addr()], "") + &upstream("b", &[&b.addr()], "");
    config(2, &ups, &routes)
}

fn expect(port: u16, path: &str, want: &str) {
    let r = get(port, path);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    assert_eq!(r.text(), want, "GET {path}");
}

/// The paths checked on every config: first, middle and last route, and
/// three that only the catch-all takes.
fn paths() -> Vec<String> {
    vec![
        "/api/v1/svc-0/items/7".into(),
        format!("/api/v1/svc-{}/items/abc", N / 2),
        format!("/api/v1/svc-{}/items/42", N - 1),
        format!("/api/v1/svc-{N}/items/1"),
        "/api/v1/svc-5/items".into(),
        "/elsewhere".into(),
    ]
}

/// What the backend answers for `path` under the config tagged `tag`.
fn answer(tag: &str, catch_all: &str, path: &str) -> String {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["", "api", "v1", svc, "items", id] => {
            let i: Option<usize> = svc.strip_prefix("svc-").and_then(|n| n.parse().ok());
            match i {
                Some(i) if i < N => format!("A GET /{tag}/svc-{i}/items/{id}"),
                _ => format!("{catch_all} GET {path}"),
            }
        }
        _ => format!("{catch_all} GET {path}"),
    }
}

#[test]
fn twenty_thousand_routes_load_route_and_reload_while_serving() {
    let a = Backend::echo("A");
    let b = Backend::echo("B");
    let gw = Gateway::start(&generated(&a, &b, "g1", "a"));
    for p in paths() {
        expect(gw.port, &p, &answer("g1", "A", &p));
    }

    // A keep-alive connection sends requests across the reload; every
    // answer must come from one config or the other, never an error.
    let stop = Arc::new(AtomicBool::new(false));
    let port = gw.port;
    let client = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut c = Client::connect(port);
            let mut seen: Vec<(String, String)> = Vec::new();
            let paths = paths();
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let p = &paths[n % paths.len()];
                let r = c.get(p);
                assert_eq!(r.status, 200, "GET {p} during the reload: {}", r.text());
                seen.push((p.clone(), r.text()));
                n += 1;
                thread::sleep(Duration::from_millis(2));
            }
            seen
        })
    };
    thread::sleep(Duration::from_millis(200));
    gw.rewrite_config(&generated(&a, &b, "g2", "b"));
    let from = gw.stderr().len();
    gw.send_signal("HUP");

    // The reload is asynchronous (load and compile, then each shard swaps).
    let last = format!("/api/v1/svc-{}/items/42", N - 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = get(gw.port, &last);
        assert_eq!(r.status, 200, "GET {last}: {}", r.text());
        if r.text() == answer("g2", "B", &last) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reload did not apply; stderr since the signal:\n{}",
            gw.stderr().get(from..).unwrap_or("")
        );
        thread::sleep(Duration::from_millis(50));
    }
    // Both shards: new connections land on either.
    for _ in 0..8 {
        for p in paths() {
            expect(gw.port, &p, &answer("g2", "B", &p));
        }
    }
    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    let seen = client.join().expect("the keep-alive client failed");

    let old = seen
        .iter()
        .take_while(|(p, t)| *t == answer("g1", "A", p))
        .count();
    assert!(
        old > 0,
        "no answer from the first config: {:?}",
        seen.first()
    );
    let rest = &seen[old..];
    assert!(
        !rest.is_empty(),
        "the keep-alive connection saw no answer from the reloaded config"
    );
    for (p, t) in rest {
        assert_eq!(
            *t,
            answer("g2", "B", p),
            "after the swap, GET {p} on the same connection"
        );
    }
    assert!(
        gw.stderr()
            .get(from..)
            .unwrap_or("")
            .contains(&format!("reloaded {}", gw.config_path().display())),
        "stderr: {}",
        gw.stderr()
    );
}

/// `(line, col)` of `FILE:LINE:COL: FIELD: ...` in `stderr`, and the message.
fn problem(stderr: &str, file: &str, field: &str) -> (usize, usize, String) {
    for l in stderr.lines() {
        let Some(rest) = l.strip_prefix(&format!("{file}:")) else {
            continue;
        };
        let mut parts = rest.splitn(3, ':');
        let (Some(line), Some(col), Some(tail)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if let (Ok(line), Ok(col), Some(msg)) = (
            line.parse(),
            col.parse(),
            tail.strip_prefix(&format!(" {field}: ")),
        ) {
            return (line, col, msg.to_string());
        }
    }
    panic!("no `{file}:LINE:COL: {field}: ...` in stderr:\n{stderr}");
}

/// 1-based line and column of the first `needle` in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let at = text.find(needle).expect("needle in text");
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    (line, at - before.rfind('\n').map_or(0, |n| n + 1) + 1)
}

#[test]
fn problems_deep_in_a_large_config_point_at_their_own_route() {
    let a = Backend::echo("A");
    let b = Backend::echo("B");
    let mut text = generated(&a, &b, "g1", "a").replace("$PORT", "8080");
    // Three problems far down the file. Route 15000 names an unknown
    // upstream; route 19000 rewrites with a param its path lacks; the
    // catch-all, renamed "svc-7", repeats an earlier name; and route 18000
    // writes its match before its name, with a path that is no template.
    text = text.replace(
        "upstream: \"a\", rewrite: \"/g1/svc-15000/",
        "upstream: \"nope\", rewrite: \"/g1/svc-15000/",
    );
    text = text.replace(
        "rewrite: \"/g1/svc-19000/items/{id}\"",
        "rewrite: \"/g1/svc-19000/items/{uid}\"",
    );
    text = text.replace("name: \"catch-all\"", "name: \"svc-7\"");
    let i = 18000;
    let line = format!(
        "Route(name: \"svc-{i}\", match: Match(path: \"/api/v1/svc-{i}/items/{{id}}\", \
         methods: [\"GET\", \"HEAD\"]), upstream: \"a\", rewrite: \"/g1/svc-{i}/items/{{id}}\"),"
    );
    assert!(text.contains(&line));
    text = text.replace(
        &line,
        &format!(
            "Route(match: Match(path: \"/api/v1/svc-{i}/items/x{{id}}\"), name: \"svc-{i}\", upstream: \"a\"),"
        ),
    );
    let dir = temp_dir();
    let path = dir.join("large.ron");
    std::fs::write(&path, &text).unwrap();
    let file = path.display().to_string();
    let (status, _out, stderr) = run_cli(&["check", &file]);
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");

    let (line, col, msg) = problem(&stderr, &file, "routes[15000].upstream");
    let (want_line, want_col) = position(&text, "upstream: \"nope\"");
    assert_eq!(line, want_line, "{stderr}");
    assert!(
        col >= want_col,
        "column {col} before the field at {want_col}"
    );
    assert!(
        msg.contains("unknown upstream \"nope\" (known: a, b)"),
        "{msg}"
    );

    let (line, _col, msg) = problem(&stderr, &file, "routes[19000].rewrite");
    assert_eq!(
        line,
        position(&text, "/svc-19000/items/{uid}").0,
        "{stderr}"
    );
    assert!(msg.contains("{uid}"), "{msg}");

    let (line, _col, msg) = problem(&stderr, &file, "routes[18000].match.path");
    assert_eq!(
        line,
        position(&text, "/svc-18000/items/x{id}").0,
        "{stderr}"
    );
    assert!(msg.contains("whole segment"), "{msg}");

    let (line, _col, msg) = problem(&stderr, &file, &format!("routes[{N}].name"));
    assert_eq!(
        line,
        position(&text, "name: \"svc-7\", match: Match(path_prefix").0,
        "{stderr}"
    );
    assert!(msg.contains("duplicate route name \"svc-7\""), "{msg}");

    assert_eq!(
        stderr.lines().filter(|l| l.starts_with(&file)).count(),
        4,
        "exactly the four problems: {stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A CPU-bound process pinned to one core: killed when dropped, and ends
/// on its own after 120 s should the test process die first. (`taskset`
/// execs bash, so the child is the loop itself; no pipe is shared.)
struct Hog(std::process::Child);

impl Hog {
    fn on_core(core: usize) -> Hog {
        Hog(std::process::Command::new("taskset")
            .args([
                "-c",
                &core.to_string(),
                "bash",
                "-c",
                "while (( SECONDS < 120 )); do :; done",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn the CPU hog (taskset, bash)"))
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A reload whose core something else keeps busy waits at `SCHED_IDLE`
/// (where it gets next to nothing of the core) only so long: five seconds
/// after it was asked for, it goes on at normal priority, or says why it
/// cannot.
#[test]
fn a_reload_starved_of_cpu_goes_on_at_normal_priority() {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let a = Backend::echo("A");
    let b = Backend::echo("B");
    // The gateway (both shards and its reload thread) and the hog share
    // core 0: they inherit this thread's affinity while it is set.
    let me = Pid::from_raw(0);
    let saved = sched_getaffinity(me).expect("sched_getaffinity");
    let mut core0 = CpuSet::new();
    core0.set(0).expect("core 0");
    sched_setaffinity(me, &core0).expect("pin the test thread to core 0");
    let gw = Gateway::start(&generated(&a, &b, "g1", "a"));
    let hog = Hog::on_core(0);
    sched_setaffinity(me, &saved).expect("restore the test thread's affinity");
    assert!(
        gw.stderr()
            .contains("reload compiles run on the shards' cores, SCHED_IDLE"),
        "{}",
        gw.stderr()
    );
    thread::sleep(Duration::from_millis(300));
    gw.rewrite_config(&generated(&a, &b, "g2", "b"));
    let from = gw.stderr().len();
    let asked = Instant::now();
    gw.send_signal("HUP");

    let last = format!("/api/v1/svc-{}/items/42", N - 1);
    let deadline = asked + Duration::from_secs(60);
    loop {
        let since = gw.stderr().get(from..).unwrap_or("").to_string();
        if since.contains("cannot go on at normal priority") {
            // Not allowed here (no CAP_SYS_NICE, RLIMIT_NICE below 20): the
            // gateway says so and names the setting; the reload finishes
            // once the core is free.
            assert!(since.contains("SHARDGATE_RELOAD_PRIORITY"), "{since}");
            drop(hog);
            break;
        }
        if get(gw.port, &last).text() == answer("g2", "B", &last) {
            assert!(
                since.contains(
                    "a reload waited 5 s for CPU at SCHED_IDLE; it goes on at normal priority"
                ),
                "the reload applied without the raise (in {:?}):\n{since}",
                asked.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reload did not apply within 60 s beside a busy process; stderr since the signal:\n{since}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(gw.port, &last).text() != answer("g2", "B", &last) {
        assert!(Instant::now() < deadline, "{}", gw.stderr());
        thread::sleep(Duration::from_millis(100));
    }
}
