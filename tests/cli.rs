//! `shardgate check FILE`: exit codes and positioned error messages.

mod common;

use common::*;
use std::path::PathBuf;

fn write_config(text: &str) -> (PathBuf, String) {
    let dir = temp_dir();
    let path = dir.join("bad.ron");
    std::fs::write(&path, text).unwrap();
    let name = path.display().to_string();
    (path, name)
}

/// 1-based (line, column) of the first occurrence of `needle` in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let at = text.find(needle).expect("needle in text");
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(at, |n| at - n - 1) + 1;
    (line, col)
}

/// Finds the stderr line `FILE:LINE:COL: FIELD: ...` and returns (line, col, rest after the field).
fn find_problem(stderr: &str, file: &str, field: &str) -> (usize, usize, String) {
    for l in stderr.lines() {
        let Some(rest) = l.strip_prefix(&format!("{file}:")) else {
            continue;
        };
        let mut parts = rest.splitn(3, ':');
        let (Some(line), Some(col), Some(tail)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Some(msg) = tail.strip_prefix(&format!(" {field}: ")) else {
            continue;
        };
        let (Ok(line), Ok(col)) = (line.parse(), col.parse()) else {
            continue;
        };
        return (line, col, msg.to_string());
    }
    panic!("no `{file}:LINE:COL: {field}: ...` line in stderr:\n{stderr}");
}

fn rm(path: &std::path::Path) {
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn check_accepts_the_example_config() {
    for file in ["gateway.ron", "demo.ron", "bff.ron"] {
        let example = format!("{}/config/{file}", env!("CARGO_MANIFEST_DIR"));
        let (status, stdout, stderr) = run_cli(&["check", &example]);
        assert!(
            status.success(),
            "check on config/{file} failed ({status}); stdout: {stdout} stderr: {stderr}"
        );
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with("ok")),
            "stdout should say ok: {stdout:?}"
        );
    }
}

#[test]
fn check_reports_an_unknown_field_with_position() {
    let text = "Gateway(\n    listeners: [Listener(name: \"main\", bind: \"127.0.0.1:8080\")],\n    limits_http: HttpLimits(\n        max_headers: 10,\n        timout_ms: 5,\n    ),\n)\n";
    let (path, file) = write_config(text);
    let (status, _stdout, stderr) = run_cli(&["check", &file]);
    assert_eq!(status.code(), Some(2), "exit code; stderr: {stderr}");
    let (line, col, msg) = find_problem(&stderr, &file, "HttpLimits.timout_ms");
    assert_eq!(line, position(text, "timout_ms").0, "line in {stderr}");
    assert!(col >= 1, "column in {stderr}");
    assert!(msg.contains("unknown field"), "message: {msg}");
    assert!(
        msg.contains("max_header_bytes"),
        "message should list the expected fields: {msg}"
    );
    rm(&path);
}

#[test]
fn check_reports_an_unknown_upstream_with_known_names() {
    let text = r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "main", bind: "127.0.0.1:8080")],
    upstreams: {
        "users": Upstream(targets: ["127.0.0.1:9001"]),
        "orders": Upstream(targets: ["127.0.0.1:9002"]),
    },
    routes: [
        Route(name: "a", match: Match(path_prefix: "/a"), upstream: "users"),
        Route(name: "b", match: Match(path_prefix: "/b"), upstream: "orders"),
        Route(name: "c", match: Match(path_prefix: "/c"), upstream: "userz"),
    ],
)
"#;
    let (path, file) = write_config(text);
    let (status, stdout, stderr) = run_cli(&["check", &file]);
    assert_eq!(
        status.code(),
        Some(2),
        "exit code; stdout: {stdout} stderr: {stderr}"
    );
    let (line, col, msg) = find_problem(&stderr, &file, "routes[2].upstream");
    let (want_line, key_col) = position(text, "upstream: \"userz\"");
    assert_eq!(line, want_line, "line in {stderr}");
    let value_end = key_col + "upstream: \"userz\"".len();
    assert!(
        (key_col..=value_end).contains(&col),
        "column {col} should point at the upstream field ({key_col}..={value_end})"
    );
    assert!(
        msg.contains("unknown upstream \"userz\" (known: orders, users)"),
        "message: {msg}"
    );
    rm(&path);
}

#[test]
fn check_reports_a_bad_template_param() {
    let text = r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "main", bind: "127.0.0.1:8080")],
    upstreams: {
        "users": Upstream(targets: ["127.0.0.1:9001"]),
    },
    routes: [
        Route(name: "ok", match: Match(path: "/ok/{id}"), upstream: "users", rewrite: "/x/{id}"),
        Route(name: "bad", match: Match(path: "/users/{id}"), upstream: "users", rewrite: "/u/{uid}"),
    ],
)
"#;
    let (path, file) = write_config(text);
    let (status, _stdout, stderr) = run_cli(&["check", &file]);
    assert_eq!(status.code(), Some(2), "exit code; stderr: {stderr}");
    let (line, _col, msg) = find_problem(&stderr, &file, "routes[1].rewrite");
    assert_eq!(line, position(text, "\"/u/{uid}\"").0, "line in {stderr}");
    assert!(msg.contains("uid"), "message should name the param: {msg}");
    assert!(
        !stderr.contains("routes[0]"),
        "the valid route must not be reported: {stderr}"
    );
    rm(&path);
}

#[test]
fn check_reports_a_param_that_is_not_a_whole_segment() {
    let text = r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "main", bind: "127.0.0.1:8080")],
    upstreams: { "users": Upstream(targets: ["127.0.0.1:9001"]) },
    routes: [
        Route(name: "bad", match: Match(path: "/users/id{id}"), upstream: "users"),
    ],
)
"#;
    let (path, file) = write_config(text);
    let (status, _stdout, stderr) = run_cli(&["check", &file]);
    assert_eq!(status.code(), Some(2), "exit code; stderr: {stderr}");
    let (line, _col, _msg) = find_problem(&stderr, &file, "routes[0].match.path");
    assert_eq!(
        line,
        position(text, "\"/users/id{id}\"").0,
        "line in {stderr}"
    );
    rm(&path);
}

#[test]
fn check_reports_every_problem_not_only_the_first() {
    let text = r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "main", bind: "127.0.0.1:8080")],
    upstreams: { "users": Upstream(targets: ["127.0.0.1:9001"]) },
    routes: [
        Route(name: "one", match: Match(path_prefix: "/a"), upstream: "nope1"),
        Route(name: "two", match: Match(path_prefix: "/b"), upstream: "nope2"),
    ],
)
"#;
    let (path, file) = write_config(text);
    let (status, _stdout, stderr) = run_cli(&["check", &file]);
    assert_eq!(status.code(), Some(2), "exit code; stderr: {stderr}");
    find_problem(&stderr, &file, "routes[0].upstream");
    find_problem(&stderr, &file, "routes[1].upstream");
    rm(&path);
}

#[test]
fn check_fails_on_a_missing_file() {
    let dir = temp_dir();
    let file = dir.join("does-not-exist.ron").display().to_string();
    let (status, stdout, stderr) = run_cli(&["check", &file]);
    assert!(
        !status.success(),
        "check on a missing file succeeded: {stdout}"
    );
    assert!(
        stderr.contains(&file),
        "stderr should name the file: {stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
