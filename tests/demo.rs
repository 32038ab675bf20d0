//! The README's first command: `cargo run --release` with no arguments runs
//! the demo (the gateway on config/demo.ron plus its built-in backends) and
//! prints what to try. The binary is started the same way, and a few of the
//! printed examples are tried as printed.
//!
//! The demo binds fixed ports (8080, 8443, 9001–9006, 9012 and 9900), so it
//! fails to start, and this test with it, while another demo runs here.

mod common;

use common::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Waits until the demo's instructions, printed once it is ready, are out.
fn instructions(g: &Gateway) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = g.stdout();
        if out.contains("Operate it") {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "no instructions within 10 s; stdout:\n{out}\nstderr:\n{}",
            g.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value printed as `NAME=value` at the start of a line.
fn printed(out: &str, name: &str) -> String {
    let prefix = format!("{name}=");
    out.lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name}= in the instructions:\n{out}"))
        .to_string()
}

#[test]
fn the_demo_answers_what_it_prints_and_removes_its_files_when_stopped() {
    let mut g = Gateway::start_demo();
    let out = instructions(&g);
    let bearer = |name: &str| format!("Bearer {}", printed(&out, name));
    let (user, admin) = (bearer("USER"), bearer("ADMIN"));

    // "public prefix route" and "401: the route needs a token".
    let products = get(8080, "/api/v1/products");
    assert_eq!(products.status, 200, "{}", products.text());
    assert_json_error(&get(8080, "/api/v1/users/1"), 401);
    // "200, X-User-Id forwarded", then "403: needs role admin" and "200".
    let me = get_with(8080, "/api/v1/users/1", &[("authorization", &user)]);
    assert_eq!(me.status, 200, "{}", me.text());
    assert_json_error(
        &get_with(8080, "/api/v1/admin", &[("authorization", &user)]),
        403,
    );
    let admin_answer = get_with(8080, "/api/v1/admin", &[("authorization", &admin)]);
    assert_eq!(admin_answer.status, 200, "{}", admin_answer.text());
    // "4 backend calls, 1 JSON answer".
    let dashboard = get_with(8080, "/api/v1/dashboard", &[("authorization", &user)]);
    assert_eq!(dashboard.status, 200, "{}", dashboard.text());
    assert!(dashboard.text().starts_with('{'), "{}", dashboard.text());
    // "GetItem as JSON" from the gRPC backend.
    let item = get(8080, "/api/v1/inventory/sku-1001");
    assert_eq!(item.status, 200, "{}", item.text());
    assert!(item.text().contains("sku-1001"), "{}", item.text());
    // "404 as JSON", and the admin listener's readiness.
    assert_json_error(&get(8080, "/nope"), 404);
    assert_eq!(get(9900, "/ready").status, 200);

    // The certificate the TLS examples name exists while the demo runs.
    let cert = out
        .lines()
        .find_map(|l| l.split("--cacert ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no --cacert path in the instructions:\n{out}"));
    assert!(cert.is_file(), "{} is not there", cert.display());

    g.send_signal("INT");
    let status = g
        .wait_exit(Duration::from_secs(15))
        .expect("the demo stops");
    assert!(status.success(), "{status}; stderr:\n{}", g.stderr());
    let files = cert.parent().expect("the certificate's directory");
    assert!(
        !files.exists(),
        "{} is left behind after the demo stopped",
        files.display()
    );
}
