//! CORS through the real gateway: preflights answered at the edge (no
//! auth, no rate limit, no upstream call), the Fetch standard's rules on
//! origins, credentials and `Vary`, and the CORS fields on proxied,
//! composite, static and error answers.

mod common;

use common::*;

const SECRET: &str = "cors-test-secret";

/// A gateway with an `app` upstream on `backend`, a `jwt` authenticator,
/// a tiny rate limit, the given top-level extra fields and routes.
fn gateway(backend: &Backend, top: &str, routes: &str) -> Gateway {
    Gateway::start(&format!(
        r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    limits_http: {LIMITS},
    upstreams: {{ "app": Upstream(targets: ["{addr}"]) }},
    authenticators: {{ "jwt": Jwt(algorithms: [HS256], key: Secret("{SECRET}")) }},
    rate_limits: {{ "one": RateLimit(key: ClientIp, algorithm: SlidingLog(limit: 1, window_s: 3600)) }},
    {top}
    routes: [
{routes}
    ],
)"#,
        addr = backend.addr()
    ))
}

const APP_CORS: &str = r#"cors: Some(Cors(allow_origins: ["https://app.example.com", "https://*.example.org"],
                allow_methods: ["GET", "PUT", "DELETE"], allow_headers: ["Authorization", "Content-Type"],
                expose_headers: ["X-Request-Id", "X-Total"], allow_credentials: true, max_age_s: 600))"#;

fn preflight(port: u16, path: &str, origin: &str, method: &str, headers: Option<&str>) -> Resp {
    let mut h = vec![
        ("Origin", origin),
        ("Access-Control-Request-Method", method),
    ];
    if let Some(v) = headers {
        h.push(("Access-Control-Request-Headers", v));
    }
    request(port, "OPTIONS", path, &h, b"")
}

fn vary_has_origin(r: &Resp) -> bool {
    r.headers_named("vary").iter().any(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("origin"))
    })
}

#[test]
fn preflight_is_answered_at_the_edge_without_auth_rate_limit_or_upstream() {
    let backend = Backend::echo("app");
    let routes = format!(
        r#"        Route(name: "api", match: Match(path_prefix: "/api", methods: ["GET", "PUT", "DELETE"]), upstream: "app",
              auth: Required(["jwt"]), rate_limits: ["one"], {APP_CORS}),"#
    );
    let gw = gateway(&backend, "", &routes);
    for _ in 0..3 {
        let r = preflight(
            gw.port,
            "/api/items/1",
            "https://app.example.com",
            "PUT",
            Some("authorization, content-type"),
        );
        assert_eq!(r.status, 204, "{}", r.text());
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("authorization, content-type")
        );
        let methods = r.header("access-control-allow-methods").unwrap_or("");
        assert!(methods.contains("PUT"), "{methods}");
        assert_eq!(r.header("access-control-max-age"), Some("600"));
        assert!(vary_has_origin(&r));
        assert_eq!(r.body_len, 0);
    }
    // Three preflights: no upstream contact, no 401, no 429 (limit is 1).
    assert_eq!(backend.count(), 0);

    // The actual request is authenticated as usual; its 401 carries the
    // CORS fields so the page can read the error.
    let r = request(
        gw.port,
        "PUT",
        "/api/items/1",
        &[("Origin", "https://app.example.com")],
        b"",
    );
    assert_json_error(&r, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(vary_has_origin(&r));
    assert_eq!(backend.count(), 0);
}

#[test]
fn refused_preflights_get_403_json_and_no_cors_fields() {
    let backend = Backend::echo("app");
    let routes = format!(
        r#"        Route(name: "api", match: Match(path_prefix: "/api"), upstream: "app", {APP_CORS}),"#
    );
    let gw = gateway(&backend, "", &routes);
    for (origin, method, headers) in [
        ("https://evil.test", "GET", None),
        ("https://example.org.evil.com", "GET", None),
        ("https://app.example.com", "PATCH", None),
        ("https://app.example.com", "GET", Some("x-secret")),
    ] {
        let r = preflight(gw.port, "/api/x", origin, method, headers);
        assert_json_error(&r, 403);
        assert!(
            !r.has("access-control-allow-origin"),
            "{origin} {method}: {:?}",
            r.headers
        );
    }
    assert_eq!(backend.count(), 0);
    // An OPTIONS that is not a preflight is proxied.
    let r = request(gw.port, "OPTIONS", "/api/x", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(backend.count(), 1);
}

#[test]
fn origins_follow_the_fetch_rules() {
    let backend = Backend::start(|_| Response::ok("{}").header("X-Total", "3"));
    let routes = format!(
        r#"        Route(name: "api", match: Match(path_prefix: "/api"), upstream: "app", {APP_CORS}),"#
    );
    let gw = gateway(&backend, "", &routes);
    for origin in [
        "https://app.example.com",
        "https://a.example.org",
        "https://deep.sub.example.org",
    ] {
        let r = get_with(gw.port, "/api/x", &[("Origin", origin)]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(
            r.header("access-control-expose-headers"),
            Some("X-Request-Id, X-Total")
        );
        assert!(vary_has_origin(&r), "{:?}", r.headers);
    }
    // Look-alikes, another scheme, another port, the bare domain: served
    // (CORS is enforced by the browser) but with no CORS field.
    for origin in [
        "https://example.org.evil.com",
        "https://evilexample.org",
        "http://a.example.org",
        "https://a.example.org:8443",
        "https://example.org",
        "null",
    ] {
        let r = get_with(gw.port, "/api/x", &[("Origin", origin)]);
        assert_eq!(r.status, 200);
        for h in [
            "access-control-allow-origin",
            "access-control-allow-credentials",
            "access-control-expose-headers",
        ] {
            assert!(!r.has(h), "{origin}: {h} in {:?}", r.headers);
        }
        assert!(vary_has_origin(&r), "{origin}");
    }
    // No Origin: no CORS field, still Vary: Origin (the answer depends on it).
    let r = get(gw.port, "/api/x");
    assert!(!r.has("access-control-allow-origin"));
    assert!(vary_has_origin(&r));
}

#[test]
fn a_wildcard_with_credentials_is_refused_by_check() {
    let dir = temp_dir();
    let file = dir.join("gw.ron");
    let text = r#"Gateway(
    listeners: [Listener(name: "main", bind: "127.0.0.1:0")],
    upstreams: { "app": Upstream(targets: ["127.0.0.1:9"]) },
    routes: [
        Route(name: "api", match: Match(path_prefix: "/api"), upstream: "app",
              cors: Some(Cors(allow_origins: ["*"], allow_credentials: true))),
    ],
)"#;
    std::fs::write(&file, text).unwrap();
    let (status, _, err) = run_cli(&["check", file.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("routes[0].cors.allow_origins"), "{err}");
    assert!(err.contains("allow_credentials"), "{err}");
    assert!(err.contains("gw.ron:6:"), "line of the route's cors: {err}");
    std::fs::write(
        &file,
        text.replace("allow_credentials: true", "allow_credentials: false"),
    )
    .unwrap();
    let (status, out, err) = run_cli(&["check", file.to_str().unwrap()]);
    assert!(status.success(), "{out}{err}");
}

#[test]
fn any_origin_without_credentials_is_a_star() {
    let backend = Backend::echo("app");
    let routes = r#"        Route(name: "api", match: Match(path_prefix: "/api"), upstream: "app",
              cors: Some(Cors(allow_origins: ["*"], allow_headers: ["*"]))),"#;
    let gw = gateway(&backend, "", routes);
    let r = get_with(gw.port, "/api/x", &[("Origin", "https://anyone.test")]);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(!r.has("access-control-allow-credentials"));
    let r = preflight(
        gw.port,
        "/api/x",
        "https://anyone.test",
        "POST",
        Some("x-anything"),
    );
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    // `*` in allow_headers never covers Authorization (Fetch).
    let r = preflight(
        gw.port,
        "/api/x",
        "https://anyone.test",
        "GET",
        Some("authorization"),
    );
    assert_json_error(&r, 403);
}

#[test]
fn routes_inherit_the_top_level_default_and_composites_and_static_answers_carry_it() {
    let backend = Backend::start(|r| Response::ok(format!("{{\"path\":\"{}\"}}", r.target)));
    let routes = r#"        Route(name: "plain", match: Match(path_prefix: "/plain"), upstream: "app"),
        Route(name: "own", match: Match(path_prefix: "/own"), upstream: "app",
              cors: Some(Cors(allow_origins: ["https://other.test"]))),
        Route(name: "both", match: Match(path: "/both", methods: ["GET"]),
              aggregate: Aggregate(parts: [Part(name: "a", upstream: "app", path: "/a"),
                                           Part(name: "b", upstream: "app", path: "/b")])),
        Route(name: "off", match: Match(path_prefix: "/off"), upstream: "app", cors: Some(Cors(allow_origins: []))),
        Route(name: "down", match: Match(path_prefix: "/down"),
              static_response: Some(StaticResponse(status: 503, body: "{\"error\":\"maintenance\"}"))),"#;
    let gw = gateway(
        &backend,
        r#"cors: Some(Cors(allow_origins: ["https://app.example.com"])),"#,
        routes,
    );
    let origin = [("Origin", "https://app.example.com")];
    for path in ["/plain/x", "/both", "/down"] {
        let r = get_with(gw.port, path, &origin);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://app.example.com"),
            "{path}: {} {:?}",
            r.status,
            r.headers
        );
        assert!(vary_has_origin(&r));
    }
    assert_eq!(get_with(gw.port, "/down", &origin).status, 503);
    // The route's own policy replaces the default.
    let r = get_with(gw.port, "/own/x", &origin);
    assert!(!r.has("access-control-allow-origin"));
    let r = get_with(gw.port, "/own/x", &[("Origin", "https://other.test")]);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://other.test")
    );
    // An empty origin list switches CORS off, default included.
    let r = get_with(gw.port, "/off/x", &origin);
    assert!(!r.has("access-control-allow-origin"));
    assert!(!vary_has_origin(&r));
    // A preflight for the composite's GET is answered at the edge.
    let before = backend.count();
    let r = preflight(gw.port, "/both", "https://app.example.com", "GET", None);
    assert_eq!(r.status, 204);
    assert_eq!(backend.count(), before);
}

#[test]
fn the_upstreams_own_cors_fields_are_replaced() {
    let backend = Backend::start(|_| {
        Response::ok("{}")
            .header("Access-Control-Allow-Origin", "*")
            .header("Access-Control-Allow-Credentials", "false")
            .header("X-Other", "kept")
    });
    let routes = format!(
        r#"        Route(name: "api", match: Match(path_prefix: "/api"), upstream: "app", {APP_CORS}),
        Route(name: "raw", match: Match(path_prefix: "/raw"), upstream: "app"),"#
    );
    let gw = gateway(&backend, "", &routes);
    let origin = [("Origin", "https://app.example.com")];
    let r = get_with(gw.port, "/api/x", &origin);
    assert_eq!(
        r.headers_named("access-control-allow-origin"),
        vec!["https://app.example.com"]
    );
    assert_eq!(
        r.headers_named("access-control-allow-credentials"),
        vec!["true"]
    );
    assert_eq!(r.header("x-other"), Some("kept"));
    let r = get_with(gw.port, "/api/x", &[("Origin", "https://evil.test")]);
    assert!(!r.has("access-control-allow-origin"), "{:?}", r.headers);
    // Without a CORS policy the upstream's fields pass untouched.
    let r = get_with(gw.port, "/raw/x", &origin);
    assert_eq!(r.headers_named("access-control-allow-origin"), vec!["*"]);
}

#[test]
fn curl_sees_the_preflight_answer() {
    let Ok(out) = std::process::Command::new("curl").arg("--version").output() else {
        eprintln!("curl is not installed; skipped");
        return;
    };
    assert!(out.status.success());
    let backend = Backend::echo("app");
    let routes = format!(
        r#"        Route(name: "api", match: Match(path_prefix: "/api"), upstream: "app", {APP_CORS}),"#
    );
    let gw = gateway(&backend, "", &routes);
    let out = std::process::Command::new("curl")
        .args(["-s", "-i", "-X", "OPTIONS", "--max-time", "10"])
        .args(["-H", "Origin: https://shop.example.org"])
        .args(["-H", "Access-Control-Request-Method: DELETE"])
        .args(["-H", "Access-Control-Request-Headers: Content-Type"])
        .arg(format!("http://127.0.0.1:{}/api/items/7", gw.port))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 204"), "{text}");
    assert!(
        text.contains("access-control-allow-origin: https://shop.example.org\r\n"),
        "{text}"
    );
    assert!(
        text.contains("access-control-allow-headers: content-type\r\n"),
        "{text}"
    );
    assert_eq!(backend.count(), 0);
}
