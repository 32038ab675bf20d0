//! Route matching: paths, templates, prefixes, hosts, headers, methods,
//! specificity, 404/405, prefix stripping, rewrites and listener route sets.

mod common;

use common::*;

/// A gateway whose upstreams are echo backends named like the upstreams.
struct Site {
    gw: Gateway,
    backends: Vec<(String, Backend)>,
}

impl Site {
    fn new(shards: usize, names: &[&str], routes: &str) -> Site {
        let backends: Vec<(String, Backend)> = names
            .iter()
            .map(|n| (n.to_string(), Backend::echo(n)))
            .collect();
        let ups: String = backends
            .iter()
            .map(|(n, b)| upstream(n, &[&b.addr()], ""))
            .collect();
        let gw = Gateway::start(&config(shards, &ups, routes));
        Site { gw, backends }
    }

    fn total(&self) -> usize {
        self.backends.iter().map(|(_, b)| b.count()).sum()
    }

    /// Sends a request; returns (status, upstream name, target it received)
    /// for a proxied 200, or (status, "", "") otherwise.
    fn hit(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
        let r = request(self.gw.port, method, path, headers, b"");
        if r.status != 200 {
            return (r.status, String::new(), String::new());
        }
        let text = r.text();
        let mut parts = text.splitn(3, ' ');
        let name = parts.next().unwrap_or("").to_string();
        let m = parts.next().unwrap_or("");
        assert_eq!(m, method, "backend saw another method: {text}");
        let target = parts.next().unwrap_or("").to_string();
        (200, name, target)
    }

    #[track_caller]
    fn expect(&self, method: &str, path: &str, headers: &[(&str, &str)], name: &str, target: &str) {
        let got = self.hit(method, path, headers);
        assert_eq!(
            got,
            (200, name.to_string(), target.to_string()),
            "{method} {path} {headers:?}"
        );
    }

    #[track_caller]
    fn expect_to(&self, path: &str, headers: &[(&str, &str)], name: &str) {
        self.expect("GET", path, headers, name, path);
    }

    #[track_caller]
    fn expect_404(&self, path: &str, headers: &[(&str, &str)]) {
        let before = self.total();
        let r = request(self.gw.port, "GET", path, headers, b"");
        assert_json_error(&r, 404);
        assert_eq!(self.total(), before, "a 404 request reached a backend");
    }
}

fn route(name: &str, matcher: &str, upstream: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(
        "        Route(name: {name:?}, match: Match({matcher}), upstream: {upstream:?}{extra}),\n"
    )
}

#[test]
fn prefixes_match_whole_segments_and_longer_and_exact_win() {
    let routes = [
        route("api", r#"path_prefix: "/api""#, "api", ""),
        route("v1", r#"path_prefix: "/api/v1""#, "v1", ""),
        route("exact", r#"path: "/api/users""#, "exact", ""),
    ]
    .concat();
    let s = Site::new(2, &["api", "v1", "exact"], &routes);
    s.expect_to("/api", &[], "api");
    s.expect_to("/api/", &[], "api");
    s.expect_to("/api/x", &[], "api");
    s.expect_to("/api/x/y?z=1", &[], "api");
    s.expect_404("/apix", &[]);
    s.expect_404("/ap", &[]);
    s.expect_404("/", &[]);
    s.expect_404("/other/api", &[]);
    s.expect_to("/api/v1", &[], "v1");
    s.expect_to("/api/v1/", &[], "v1");
    s.expect_to("/api/v1/orders/7", &[], "v1");
    s.expect_to("/api/v1x", &[], "api");
    s.expect_to("/api/users", &[], "exact");
    s.expect_to("/api/users?page=2", &[], "exact");
    s.expect_to("/api/users/1", &[], "api");
}

#[test]
fn root_prefix_matches_everything_and_loses_to_any_longer_prefix() {
    let routes = [
        route("root", r#"path_prefix: "/""#, "root", ""),
        route("x", r#"path_prefix: "/x""#, "x", ""),
    ]
    .concat();
    let s = Site::new(2, &["root", "x"], &routes);
    s.expect_to("/", &[], "root");
    s.expect_to("/anything/deep/down?q=1", &[], "root");
    s.expect_to("/xy", &[], "root");
    s.expect_to("/x", &[], "x");
    s.expect_to("/x/y", &[], "x");
}

#[test]
fn templates_match_whole_segments_and_static_segments_win() {
    let routes = [
        route("user-any", r#"path: "/users/{id}""#, "tmpl", ""),
        route("users", r#"path_prefix: "/users""#, "pre", ""),
        route("user-me", r#"path: "/users/me""#, "me", ""),
        route("t1", r#"path: "/a/{x}/c""#, "t1", ""),
        route("t2", r#"path: "/a/b/{y}""#, "t2", ""),
    ]
    .concat();
    let s = Site::new(2, &["tmpl", "pre", "me", "t1", "t2"], &routes);
    s.expect_to("/users/42", &[], "tmpl");
    s.expect_to("/users/42?full=1", &[], "tmpl");
    s.expect_to("/users/me", &[], "me");
    s.expect_to("/users/42/orders", &[], "pre");
    s.expect_to("/users", &[], "pre");
    // At the second segment the static `b` beats the param `{x}`.
    s.expect_to("/a/b/c", &[], "t2");
    s.expect_to("/a/z/c", &[], "t1");
    s.expect_to("/a/b/zz", &[], "t2");
    s.expect_404("/a/z/d", &[]);
    s.expect_404("/a/b", &[]);
}

#[test]
fn host_conditions() {
    let routes = [
        route("plain", r#"path_prefix: "/h""#, "plain", ""),
        route(
            "exact-host",
            r#"path_prefix: "/h", host: "api.example.com""#,
            "hostx",
            "",
        ),
        route(
            "wild",
            r#"path_prefix: "/h", host: "*.example.org""#,
            "wild",
            "",
        ),
        route(
            "internal",
            r#"path_prefix: "/", host: "internal.example.com""#,
            "internal",
            "",
        ),
    ]
    .concat();
    let s = Site::new(2, &["plain", "hostx", "wild", "internal"], &routes);
    s.expect_to("/h/1", &[("Host", "api.example.com")], "hostx");
    s.expect_to("/h/1", &[("Host", "API.Example.COM:8080")], "hostx");
    s.expect_to("/h/1", &[("Host", "other.test")], "plain");
    s.expect_to("/h/1", &[("Host", "example.com")], "plain");
    s.expect_to("/h/1", &[("Host", "foo.example.org")], "wild");
    s.expect_to("/h/1", &[("Host", "Foo.Example.Org:9000")], "wild");
    s.expect_to("/h/1", &[("Host", "fooexample.org")], "plain");
    // A longer prefix beats a host condition on a shorter one.
    s.expect_to("/h/1", &[("Host", "internal.example.com")], "plain");
    s.expect_to("/z", &[("Host", "internal.example.com")], "internal");
    s.expect_404("/z", &[("Host", "public.example.com")]);
}

#[test]
fn header_conditions_match_exact_values() {
    let routes = [
        route("plain", r#"path_prefix: "/p""#, "plain", ""),
        route(
            "v2",
            r#"path_prefix: "/p", headers: { "X-API-Version": "2.0" }"#,
            "v2",
            "",
        ),
        route(
            "beta",
            r#"path_prefix: "/p", headers: { "X-API-Version": "2.0", "X-Beta": "yes" }"#,
            "beta",
            "",
        ),
    ]
    .concat();
    let s = Site::new(2, &["plain", "v2", "beta"], &routes);
    s.expect_to("/p/1", &[], "plain");
    s.expect_to("/p/1", &[("X-API-Version", "2.0")], "v2");
    s.expect_to("/p/1", &[("x-api-version", "2.0")], "v2");
    s.expect_to("/p/1", &[("X-API-Version", "2.01")], "plain");
    s.expect_to("/p/1", &[("X-API-Version", "1.0")], "plain");
    s.expect_to(
        "/p/1",
        &[("X-API-Version", "2.0"), ("X-Beta", "yes")],
        "beta",
    );
    s.expect_to("/p/1", &[("X-Beta", "yes")], "plain");
}

#[test]
fn more_conditions_win_among_equal_paths_in_the_documented_order() {
    // Declared from least to most specific, so declaration order alone would pick wrong.
    let routes = [
        route("none", r#"path: "/q""#, "none", ""),
        route("meth", r#"path: "/q", methods: ["GET"]"#, "meth", ""),
        route("hdr", r#"path: "/q", headers: { "X-A": "1" }"#, "hdr", ""),
        route(
            "hdr2",
            r#"path: "/q", headers: { "X-A": "1", "X-B": "1" }"#,
            "hdr2",
            "",
        ),
        route("host", r#"path: "/q", host: "h.test""#, "host", ""),
    ]
    .concat();
    let s = Site::new(2, &["none", "meth", "hdr", "hdr2", "host"], &routes);
    s.expect_to("/q", &[], "meth");
    s.expect("POST", "/q", &[], "none", "/q");
    s.expect_to("/q", &[("X-A", "1")], "hdr");
    s.expect("POST", "/q", &[("X-A", "1")], "hdr", "/q");
    s.expect_to("/q", &[("X-A", "1"), ("X-B", "1")], "hdr2");
    s.expect_to(
        "/q",
        &[("Host", "h.test"), ("X-A", "1"), ("X-B", "1")],
        "host",
    );
    s.expect_to("/q", &[("Host", "h.test")], "host");
}

#[test]
fn ties_go_to_the_earlier_route() {
    let routes = [
        route("first", r#"path_prefix: "/t""#, "first", ""),
        route("second", r#"path_prefix: "/t""#, "second", ""),
        route("third", r#"path: "/e/{id}", methods: ["GET"]"#, "third", ""),
        route(
            "fourth",
            r#"path: "/e/{id}", methods: ["GET", "POST"]"#,
            "fourth",
            "",
        ),
    ]
    .concat();
    let s = Site::new(1, &["first", "second", "third", "fourth"], &routes);
    for _ in 0..3 {
        s.expect_to("/t/x", &[], "first");
        s.expect_to("/e/1", &[], "third");
    }
    s.expect("POST", "/e/1", &[], "fourth", "/e/1");
}

#[test]
fn wrong_method_gives_405_with_allow() {
    let routes = [
        route(
            "only-get",
            r#"path: "/only", methods: ["GET", "HEAD"]"#,
            "a",
            "",
        ),
        route(
            "put-item",
            r#"path: "/items/{id}", methods: ["PUT"]"#,
            "a",
            "",
        ),
        route("get-thing", r#"path: "/thing", methods: ["GET"]"#, "a", ""),
        route(
            "post-thing",
            r#"path: "/thing", methods: ["POST"]"#,
            "b",
            "",
        ),
    ]
    .concat();
    let s = Site::new(2, &["a", "b"], &routes);
    let allow_of = |r: &Resp| -> Vec<String> {
        let allow = r
            .header("allow")
            .unwrap_or_else(|| panic!("405 without Allow: {:?}", r.headers));
        let mut v: Vec<String> = allow.split(',').map(|m| m.trim().to_string()).collect();
        v.sort();
        v
    };

    let r = request(s.gw.port, "POST", "/only", &[], b"data");
    assert_json_error(&r, 405);
    assert_eq!(allow_of(&r), vec!["GET", "HEAD"]);

    let r = request(s.gw.port, "DELETE", "/items/3", &[], b"");
    assert_json_error(&r, 405);
    assert_eq!(allow_of(&r), vec!["PUT"]);

    let r = request(s.gw.port, "PUT", "/thing", &[], b"");
    assert_json_error(&r, 405);
    assert_eq!(allow_of(&r), vec!["GET", "POST"]);

    assert_eq!(s.total(), 0, "a 405 request reached a backend");
    s.expect_to("/only", &[], "a");
    s.expect("PUT", "/items/3", &[], "a", "/items/3");
    s.expect_to("/thing", &[], "a");
    s.expect("POST", "/thing", &[], "b", "/thing");
}

#[test]
fn another_matching_route_is_used_instead_of_405() {
    let routes = [
        route("m", r#"path: "/m", methods: ["GET"]"#, "m", ""),
        route("root", r#"path_prefix: "/""#, "root", ""),
    ]
    .concat();
    let s = Site::new(2, &["m", "root"], &routes);
    s.expect_to("/m", &[], "m");
    s.expect("POST", "/m", &[], "root", "/m");
    s.expect("DELETE", "/m?x=1", &[], "root", "/m?x=1");
}

#[test]
fn no_route_gives_404_json() {
    let routes = route("only", r#"path: "/only""#, "a", "");
    let s = Site::new(2, &["a"], &routes);
    let r = get_with(s.gw.port, "/nothing/here", &[("X-Request-Id", "id-404")]);
    let id = assert_json_error(&r, 404);
    assert_eq!(id, "id-404");
    assert_eq!(r.header("x-request-id"), Some("id-404"));
    let r = get(s.gw.port, "/only/deeper");
    assert_json_error(&r, 404);
    assert_eq!(s.total(), 0);
}

#[test]
fn strip_prefix_and_rewrite_build_the_upstream_target() {
    let routes = [
        route(
            "products",
            r#"path_prefix: "/api/v1/products""#,
            "products",
            r#"strip_prefix: "/api/v1""#,
        ),
        route(
            "all",
            r#"path_prefix: "/strip/all""#,
            "all",
            r#"strip_prefix: "/strip/all""#,
        ),
        route(
            "users",
            r#"path: "/api/v1/users/{id}""#,
            "users",
            r#"rewrite: "/users/{id}""#,
        ),
        route(
            "orders",
            r#"path: "/o/{a}/items/{b}""#,
            "orders",
            r#"rewrite: "/items/{b}/of/{a}""#,
        ),
        route("plain", r#"path_prefix: "/plain""#, "plain", ""),
    ]
    .concat();
    let s = Site::new(2, &["products", "all", "users", "orders", "plain"], &routes);
    s.expect(
        "GET",
        "/api/v1/products/1?x=1",
        &[],
        "products",
        "/products/1?x=1",
    );
    s.expect("GET", "/api/v1/products", &[], "products", "/products");
    s.expect(
        "POST",
        "/api/v1/products/9/reviews",
        &[],
        "products",
        "/products/9/reviews",
    );
    s.expect("GET", "/strip/all", &[], "all", "/");
    s.expect("GET", "/strip/all?q=1", &[], "all", "/?q=1");
    s.expect("GET", "/strip/all/z", &[], "all", "/z");
    s.expect("GET", "/api/v1/users/42?v=1", &[], "users", "/users/42?v=1");
    s.expect("GET", "/api/v1/users/abc", &[], "users", "/users/abc");
    s.expect(
        "GET",
        "/o/7/items/9?full=true&x=",
        &[],
        "orders",
        "/items/9/of/7?full=true&x=",
    );
    s.expect("GET", "/plain/a/b?c=d&e", &[], "plain", "/plain/a/b?c=d&e");
}

#[test]
fn listeners_serve_their_route_sets() {
    let a = Backend::echo("a");
    let b = Backend::echo("b");
    let cfg = format!(
        r#"Gateway(
    shards: Count(2),
    listeners: [
        Listener(name: "restricted", bind: "127.0.0.1:$PORT", routes: Some(["ra"])),
        Listener(name: "everything", bind: "127.0.0.1:$PORT2"),
    ],
    limits_http: {LIMITS},
    upstreams: {{
        "a": Upstream(targets: ["{}"]),
        "b": Upstream(targets: ["{}"]),
    }},
    routes: [
        Route(name: "ra", match: Match(path_prefix: "/a"), upstream: "a"),
        Route(name: "rb", match: Match(path_prefix: "/b"), upstream: "b"),
    ],
)
"#,
        a.addr(),
        b.addr()
    );
    let gw = Gateway::start(&cfg);
    let r = get(gw.port, "/a/1");
    assert_eq!((r.status, r.text()), (200, "a GET /a/1".to_string()));
    assert_json_error(&get(gw.port, "/b/1"), 404);
    assert_eq!(b.count(), 0);
    let r = get(gw.port2, "/a/2");
    assert_eq!((r.status, r.text()), (200, "a GET /a/2".to_string()));
    let r = get(gw.port2, "/b/2");
    assert_eq!((r.status, r.text()), (200, "b GET /b/2".to_string()));
}
