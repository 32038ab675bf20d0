//! Path normalisation before routing, auth and forwarding: no spelling of a
//! protected path reaches an upstream without auth, and the normalised path
//! is the one forwarded. Checked through the real gateway on raw sockets.

mod common;

use common::*;
use std::thread;
use std::time::Duration;

const API_KEY: &str = "normalize-key-1";

/// The default listener line of `common::config`.
const LISTENER: &str = "Listener(name: \"main\", bind: \"127.0.0.1:$PORT\")";

/// A public catch-all (`pub`) and an `/admin` route behind an API key
/// (`adm`); `listener_extra` is added to the listener (e.g. `merge_slashes: false`).
struct Site {
    gw: Gateway,
    public: Backend,
    admin: Backend,
}

impl Site {
    fn new(listener_extra: &str, more_routes: &[(&str, &Backend)]) -> Site {
        let public = Backend::echo("pub");
        let admin = Backend::echo("adm");
        let api_hash = shardgate::auth::hash_api_key(API_KEY);
        let mut ups = [
            upstream("pub", &[&public.addr()], ""),
            upstream("adm", &[&admin.addr()], ""),
        ]
        .concat();
        let mut routes = String::from(
            "        Route(name: \"public\", match: Match(path_prefix: \"/\"), upstream: \"pub\"),\n        Route(name: \"admin\", match: Match(path_prefix: \"/admin\"), upstream: \"adm\", auth: Required([\"keys\"])),\n",
        );
        for (i, (prefix, b)) in more_routes.iter().enumerate() {
            ups.push_str(&upstream(&format!("extra{i}"), &[&b.addr()], ""));
            routes.push_str(&format!(
                "        Route(name: \"extra{i}\", match: Match(path_prefix: {prefix:?}), upstream: \"extra{i}\"),\n"
            ));
        }
        let mut text = config(2, &ups, &routes).replacen(
            "    upstreams:",
            &format!(
                "    authenticators: {{ \"keys\": ApiKey(header: \"X-Api-Key\", consumers: {{ \"ops\": \"{api_hash}\" }}) }},\n    upstreams:"
            ),
            1,
        );
        if !listener_extra.is_empty() {
            let with =
                format!("Listener(name: \"main\", bind: \"127.0.0.1:$PORT\", {listener_extra})");
            text = text.replace(LISTENER, &with);
        }
        Site {
            gw: Gateway::start(&text),
            public,
            admin,
        }
    }

    /// Sends `GET <target>` exactly as given (no client-side normalisation).
    fn raw(&self, target: &str, headers: &[(&str, &str)]) -> Resp {
        let mut c = Client::connect(self.gw.port);
        let mut s = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n");
        for (k, v) in headers {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s.push_str("\r\n");
        c.send(s.as_bytes());
        c.try_read_response(false)
            .unwrap_or_else(|e| panic!("GET {target}: no response: {e}"))
    }

    /// Asserts `target` is forwarded to `backend` as `want`.
    #[track_caller]
    fn forwards(&self, target: &str, headers: &[(&str, &str)], backend: &Backend, want: &str) {
        let before = backend.count();
        let r = self.raw(target, headers);
        assert_eq!(r.status, 200, "GET {target}: {}", r.text());
        assert_eq!(backend.count(), before + 1, "GET {target} went elsewhere");
        assert_eq!(backend.last().target, want, "GET {target}");
    }

    /// Asserts `target` is refused with a JSON 400 and reaches no backend.
    #[track_caller]
    fn refuses(&self, target: &str, backends: &[&Backend]) {
        let before: Vec<usize> = backends.iter().map(|b| b.heads_seen()).collect();
        let r = self.raw(target, &[("X-Api-Key", API_KEY)]);
        assert_eq!(r.status, 400, "GET {target}: {}", r.text());
        assert_json_error(&r, 400);
        let after: Vec<usize> = backends.iter().map(|b| b.heads_seen()).collect();
        assert_eq!(before, after, "GET {target} reached a backend");
    }
}

/// What an upstream that decodes, merges slashes, turns `\` into `/`, strips
/// `;params` and resolves dot segments would make of a path.
fn as_a_lenient_upstream_reads_it(target: &str) -> String {
    // An absolute-form target: drop the scheme and authority.
    let lower = target.to_ascii_lowercase();
    let target = match lower.find("://") {
        Some(i) if lower.starts_with("http") => {
            let rest = target.get(i + 3..).unwrap_or("");
            rest.find(['/', '?'])
                .map_or("/", |j| rest.get(j..).unwrap_or("/"))
        }
        _ => target,
    };
    // A URI parser drops the fragment; the query ends the path.
    let path = target.split(['?', '#']).next().unwrap_or("");
    let bytes = path.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                decoded.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let text = String::from_utf8_lossy(&decoded)
        .replace('\\', "/")
        .replace('\0', "");
    let mut out: Vec<&str> = Vec::new();
    for seg in text.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

fn is_admin(target: &str) -> bool {
    let p = as_a_lenient_upstream_reads_it(target);
    p == "/admin" || p.starts_with("/admin/")
}

const ADMIN_SPELLINGS: &[&str] = &[
    "/admin",
    "/%61dmin",
    "/%61%64%6d%69%6e",
    "/%61%64%6D%69%6E",
    "//admin",
    "///admin/x",
    "/admin%2F",
    "/admin%2f",
    "/admin/",
    "/./admin",
    "/admin;x",
    "/admin;jsessionid=1/x",
    "/%2e%2e/admin",
    "/%2E/admin",
    "/%2e/admin",
    "/public/../admin",
    "/public/%2e%2e/admin",
    "/public%2F..%2Fadmin",
    "/admin%5C",
    "/admin%5c",
    "/\\admin",
    "/public/..\\admin",
    "/admin%00",
    "/%00/admin",
    "/admin/.",
    "/admin/x/..",
    "/admin#x",
    "/admin#/x",
    "http://localhost/admin",
    "http://localhost/%61dmin",
    "http://localhost//admin",
    "HTTP://localhost/./admin",
    "http://localhost/admin%2F",
];

/// No spelling of `/admin` reaches any upstream without the API key: each
/// is either routed to the admin route (401) or refused (400).
#[test]
fn no_spelling_of_admin_reaches_an_upstream_without_auth() {
    let s = Site::new("", &[]);
    let mut leaks = Vec::new();
    for target in ADMIN_SPELLINGS {
        assert!(
            is_admin(target),
            "test table: {target} is not an admin spelling"
        );
        let before = (s.public.heads_seen(), s.admin.heads_seen());
        let r = s.raw(target, &[]);
        thread::sleep(Duration::from_millis(20));
        let after = (s.public.heads_seen(), s.admin.heads_seen());
        if !(r.status == 401 || r.status == 400) || after != before {
            leaks.push(format!(
                "GET {target} without a key: {} {:?}; upstream heads (public, admin) {before:?} -> {after:?}",
                r.status,
                r.text()
            ));
        } else {
            assert_json_error(&r, r.status);
        }
    }
    assert!(
        leaks.is_empty(),
        "spellings of /admin that got past auth:\n{}",
        leaks.join("\n")
    );
    // Whatever the public upstream ever saw is not an admin path to a
    // lenient reader.
    for r in s.public.requests() {
        assert!(!is_admin(&r.target), "public upstream saw {}", r.target);
    }
    assert_eq!(
        s.raw("/public/x", &[]).status,
        200,
        "the public route works"
    );
}

/// The exact outcome of each spelling per the normalisation rules.
#[test]
fn admin_spellings_are_normalised_or_refused_as_specified() {
    let s = Site::new("", &[]);
    let key = [("X-Api-Key", API_KEY)];
    // Decoded unreserved characters and merged slashes route to admin, and
    // the normalised path is what the admin upstream receives.
    for (target, want) in [
        ("/%61dmin", "/admin"),
        ("/%61%64%6d%69%6e", "/admin"),
        ("//admin", "/admin"),
        ("///admin/x", "/admin/x"),
        ("/admin/", "/admin/"),
        ("/admin//x//y", "/admin/x/y"),
        ("/%61dmin?x=%61&y=a//b", "/admin?x=%61&y=a//b"),
    ] {
        let r = s.raw(target, &[]);
        assert_json_error(&r, 401);
        s.forwards(target, &key, &s.admin, want);
    }
    // Dot segments, `;`, encoded slash/backslash/NUL and raw backslashes
    // are refused by default, with or without a key.
    for target in [
        "/admin%2F",
        "/admin%2f",
        "/./admin",
        "/admin;x",
        "/%2e%2e/admin",
        "/%2E/admin",
        "/public/../admin",
        "/admin%5C",
        "/\\admin",
        "/admin%00",
        "/admin/.",
        "/admin/x/..",
        "/a/%2e%2E/admin",
    ] {
        s.refuses(target, &[&s.public, &s.admin]);
    }
}

#[test]
fn percent_encodings_are_normalised_and_the_query_is_untouched() {
    let s = Site::new("", &[]);
    s.forwards("/%7Euser", &[], &s.public, "/~user");
    s.forwards("/%7euser", &[], &s.public, "/~user");
    s.forwards("/a%3fb", &[], &s.public, "/a%3Fb");
    s.forwards("/a%3Fb", &[], &s.public, "/a%3Fb");
    s.forwards("/%41%2d%5F%30", &[], &s.public, "/A-_0");
    s.forwards("/caf%c3%a9", &[], &s.public, "/caf%C3%A9");
    s.forwards("/a%20b", &[], &s.public, "/a%20b");
    // Case is kept: /Admin is not /admin.
    s.forwards("/Admin", &[], &s.public, "/Admin");
    s.forwards("/ADMIN/x", &[], &s.public, "/ADMIN/x");
    // The query is forwarded exactly as sent.
    s.forwards(
        "/q%61?x=%61%2f&y=a//b&z=%7e&w=..;/%00",
        &[],
        &s.public,
        "/qa?x=%61%2f&y=a//b&z=%7e&w=..;/%00",
    );
    // A `%` without two hex digits is refused.
    for target in ["/a%zz", "/a%2", "/a%", "/%g1/x", "/a%%41"] {
        s.refuses(target, &[&s.public, &s.admin]);
    }
}

#[test]
fn merge_slashes_false_keeps_repeated_slashes() {
    let s = Site::new("merge_slashes: false", &[]);
    s.forwards("//x", &[], &s.public, "//x");
    s.forwards("/a//b///c", &[], &s.public, "/a//b///c");
    // The other rules still apply.
    s.forwards("/%7Ex", &[], &s.public, "/~x");
    s.refuses("/admin%2F", &[&s.public, &s.admin]);
    s.refuses("/./x", &[&s.public, &s.admin]);
}

#[test]
fn encoded_slash_keep_forwards_it_upper_cased() {
    let s = Site::new("encoded_slash: Keep", &[]);
    s.forwards("/a%2fb", &[], &s.public, "/a%2Fb");
    s.forwards("/a%2Fb", &[], &s.public, "/a%2Fb");
    s.forwards("/a%5cb", &[], &s.public, "/a%5Cb");
    // The other rules still apply.
    s.refuses("/./a%2Fb", &[&s.public, &s.admin]);
    s.refuses("/a%zz", &[&s.public, &s.admin]);
}

#[test]
fn encoded_slash_decode_forwards_and_routes_the_decoded_path() {
    let ab = Backend::echo("ab");
    let s = Site::new("encoded_slash: Decode", &[("/a/b", &ab)]);
    s.forwards("/a%2Fb", &[], &ab, "/a/b");
    s.forwards("/a%2fb/c", &[], &ab, "/a/b/c");
    // The decoded path is routed: an encoded slash cannot dodge /admin.
    let r = s.raw("/admin%2Fx", &[]);
    assert_json_error(&r, 401);
    s.forwards(
        "/admin%2Fx",
        &[("X-Api-Key", API_KEY)],
        &s.admin,
        "/admin/x",
    );
    // Dot segments made by decoding are still refused; a NUL is never forwarded.
    for target in ["/public%2F..%2Fadmin", "/x%2F.%2Fadmin", "/a%00", "/a%00b"] {
        s.refuses(target, &[&s.public, &s.admin, &ab]);
    }
    // An encoded slash that doubles a slash cannot dodge /admin either.
    let before = s.public.heads_seen();
    let r = s.raw("/%2Fadmin", &[]);
    assert!(
        r.status == 401 || r.status == 400,
        "GET /%2Fadmin: {} {:?}",
        r.status,
        r.text()
    );
    assert_eq!(s.public.heads_seen(), before);
}
