//! Black-box wire fuzzer: mutated HTTP/1.1 traffic on raw sockets against the
//! real `shardgate` binary.
//!
//! A gateway is started on a config with JWT and API-key routes, a rate limit
//! that never refuses, a composite route, a rewrite, host and header matches
//! and a catch-all, in front of loopback backends. Several worker threads then
//! open connections and send generated requests: duplicated and oversized
//! header fields, odd framing (Content-Length with Transfer-Encoding, broken
//! and huge chunks, obs-fold, bare LF, NUL bytes), random methods, targets and
//! tokens, pipelining, slow writes, abrupt closes and the HTTP/2 preface.
//!
//! The run fails when the gateway process exits, when a health request on a
//! fresh connection (every 200 ms, from its own thread) is not answered with
//! 200 within 2 s, when a connection is neither answered nor closed within the
//! configured timeouts plus a margin, when the gateway stops reading a
//! connection it keeps open, when it sends bytes that are not an HTTP/1.x
//! response, or when it holds on to client connections after the run.
//!
//! Environment:
//! - `FUZZ_WIRE_SECONDS` (default 3): how long to send.
//! - `FUZZ_WIRE_SEED`: the generator seed (printed). Default: a fixed seed
//!   when `FUZZ_WIRE_SECONDS` is unset (a plain `cargo test`), else one from
//!   the clock.
//! - `FUZZ_WIRE_WORKERS` (default 64): concurrent connections.
//! - `FUZZ_WIRE_REPLAY=SEED[,SEED...]`: run only these connection seeds (as
//!   printed with a failing input), one after the other, and print each
//!   exchange (`FUZZ_WIRE_DUMP=DIR` also writes each one's bytes to
//!   `DIR/SEED.bin`).
//! - `SHARDGATE_BIN`: the gateway binary (default: the one Cargo built with
//!   this test, in the same profile).

#[path = "common/mod.rs"]
mod common;

use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{Backend, Response};

// ---------------------------------------------------------------------------
// Limits of the fuzzed config, and the deadlines derived from them
// ---------------------------------------------------------------------------

const HEADER_READ_MS: u64 = 1000;
const IDLE_MS: u64 = 1500;
const BODY_READ_MS: u64 = 1500;
const SEND_MS: u64 = 2000;
const UPSTREAM_MS: u64 = 2000;
const MAX_BODY: usize = 65536;
const MAX_HEADER_BYTES: usize = 8192;
const MAX_HEADERS: usize = 40;
/// Idle pooled connections per upstream target and shard.
const POOL_PER_TARGET: usize = 4;
const SHARDS: usize = 2;
/// Upstream targets in the config (app, parts, odd).
const TARGETS: usize = 3;

/// After the client's last byte, the gateway must have answered or closed
/// within this: the slowest upstream exchange, a drain of an unread body
/// after an early answer (2 s), then the longest of the client timeouts,
/// plus a margin for a loaded 2-core machine.
fn hang_limit() -> Duration {
    let client = HEADER_READ_MS.max(IDLE_MS).max(BODY_READ_MS).max(SEND_MS);
    Duration::from_millis(UPSTREAM_MS + 2000 + client + 3000)
}

/// A health request must be answered within this.
const HEALTH_LIMIT: Duration = Duration::from_secs(2);
const HEALTH_EVERY: Duration = Duration::from_millis(200);

const JWT_SECRET: &str = "wire-fuzz-hmac-secret-0123456789";
const API_KEY: &str = "wire-fuzz-key-1";

fn config_text(app: &str, parts: &str, odd: &str) -> String {
    let key_hash = shardgate::auth::hash_api_key(API_KEY);
    format!(
        r#"Gateway(
    shards: Count({SHARDS}),
    listeners: [
        Listener(name: "main", bind: "127.0.0.1:$PORT"),
        Listener(name: "raw", bind: "127.0.0.1:$PORT2", merge_slashes: false, encoded_slash: Decode),
        Listener(name: "keep", bind: "127.0.0.1:$PORT3", encoded_slash: Keep),
    ],
    limits_http: HttpLimits(max_header_bytes: {MAX_HEADER_BYTES}, max_headers: {MAX_HEADERS},
        max_body_bytes: {MAX_BODY}, header_read_timeout_ms: {HEADER_READ_MS}, idle_timeout_ms: {IDLE_MS},
        body_read_timeout_ms: {BODY_READ_MS}, send_timeout_ms: {SEND_MS}),
    shutdown_grace_ms: 1000,
    upstreams: {{
        "app": Upstream(targets: ["{app}"], timeout_ms: {UPSTREAM_MS}, connect_timeout_ms: 500,
            max_idle_per_target: {POOL_PER_TARGET}, idle_timeout_ms: 1000),
        "parts": Upstream(targets: ["{parts}"], timeout_ms: {UPSTREAM_MS}, connect_timeout_ms: 500,
            max_idle_per_target: {POOL_PER_TARGET}, idle_timeout_ms: 1000),
        "odd": Upstream(targets: ["{odd}"], timeout_ms: {UPSTREAM_MS}, connect_timeout_ms: 500,
            max_idle_per_target: {POOL_PER_TARGET}, idle_timeout_ms: 1000),
    }},
    authenticators: {{
        "jwt": Jwt(algorithms: [HS256], key: Secret("{JWT_SECRET}"), leeway_s: 5,
            forward_claims: {{ "sub": "X-User-Id", "tenant": "X-Tenant-Id" }}),
        "keys": ApiKey(header: "X-Api-Key", query: "api_key", consumers: {{ "fuzzer": "{key_hash}" }},
            scopes: {{ "fuzzer": ["admin"] }}),
    }},
    rate_limiting: RateLimiting(trusted_proxies: ["127.0.0.1"]),
    rate_limits: {{
        "never": RateLimit(key: ClientIp, algorithm: TokenBucket(capacity: 1000000000, refill_per_s: 1000000000)),
        "tenant": RateLimit(key: Header("x-tenant"), algorithm: SlidingWindow(limit: 1000000000, window_s: 1)),
        "per-user": RateLimit(key: Combined([Claim("sub"), Header("x-tenant")]),
            algorithm: FixedWindow(limit: 1000000000, window_s: 1)),
    }},
    routes: [
        Route(name: "jwt", match: Match(path_prefix: "/jwt"), upstream: "app", auth: Required(["jwt"]),
            rate_limits: ["per-user"]),
        Route(name: "key", match: Match(path_prefix: "/key"), upstream: "app", auth: Required(["keys"])),
        Route(name: "admin", match: Match(path_prefix: "/admin"), upstream: "app",
            auth: Required(["jwt", "keys"]), scopes: ["admin"], keep_authorization: false),
        Route(name: "limited", match: Match(path_prefix: "/limited"), upstream: "app",
            rate_limits: ["never", "tenant"]),
        Route(name: "combo", match: Match(path: "/combo/{{id}}", methods: ["GET", "POST"]),
            rate_limits: ["never"], non_idempotent: true,
            aggregate: Aggregate(timeout_ms: {UPSTREAM_MS}, parts: [
                Part(name: "a", upstream: "parts", path: "/a/{{id}}", query: {{ "q": "{{query.q}}" }}),
                Part(name: "b", upstream: "parts", path: "/b/{{a.id}}", headers: {{ "X-Id": "{{id}}" }},
                     required: false),
                Part(name: "c", upstream: "parts", method: "POST", path: "/c",
                     body: "{{{{\"id\": \"{{id}}\"}}}}", required: false),
            ])),
        Route(name: "me", match: Match(path: "/me"), auth: Required(["jwt"]),
            aggregate: Aggregate(timeout_ms: {UPSTREAM_MS}, parts: [
                Part(name: "user", upstream: "parts", path: "/users/{{claims.sub}}"),
            ])),
        Route(name: "odd", match: Match(path_prefix: "/odd"), upstream: "odd"),
        Route(name: "oddcombo", match: Match(path: "/oddcombo/{{n}}"),
            aggregate: Aggregate(timeout_ms: {UPSTREAM_MS}, parts: [
                Part(name: "a", upstream: "odd", path: "/odd/{{n}}"),
                Part(name: "b", upstream: "parts", path: "/b", required: false),
            ])),
        Route(name: "rw", match: Match(path: "/rw/{{id}}/x/{{y}}"), upstream: "app", rewrite: "/users/{{id}}/{{y}}"),
        Route(name: "strip", match: Match(path_prefix: "/api/v1"), upstream: "app", strip_prefix: "/api/v1"),
        Route(name: "post", match: Match(path: "/post", methods: ["POST", "PUT"]), upstream: "app"),
        Route(name: "hosted", match: Match(path_prefix: "/", host: "*.example.com"), upstream: "app"),
        Route(name: "versioned", match: Match(path_prefix: "/v", headers: {{ "X-API-Version": "2" }}),
            upstream: "app"),
        Route(name: "all", match: Match(path_prefix: "/"), upstream: "app"),
    ],
)
"#
    )
}

// ---------------------------------------------------------------------------
// PRNG
// ---------------------------------------------------------------------------

/// SplitMix64: small, seedable, good enough for input generation.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn pick_b(&mut self, items: &[&'static [u8]]) -> &'static [u8] {
        items[self.below(items.len())]
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    /// `n` characters from `alphabet`.
    fn text(&mut self, alphabet: &[u8], n: usize) -> Vec<u8> {
        (0..n).map(|_| *self.pick(alphabet)).collect()
    }
}

fn mix(a: u64, b: u64) -> u64 {
    Rng::new(a ^ b.rotate_left(32) ^ 0x5851_f42d_4c95_7f2d).next()
}

const TOKEN_CHARS: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~";
const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const B64URL: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";

// ---------------------------------------------------------------------------
// Request generation
// ---------------------------------------------------------------------------

/// Tokens minted once per run.
struct Tokens {
    valid: String,
    admin: String,
    expired: String,
    wrong_key: String,
    not_yet: String,
}

impl Tokens {
    fn mint() -> Tokens {
        let now = common::unix_now();
        let sign = |claims: serde_json::Value, secret: &str| common::hs256_token(&claims, secret);
        Tokens {
            valid: sign(
                serde_json::json!({"sub": "u1", "tenant": "t1", "exp": now + 3600}),
                JWT_SECRET,
            ),
            admin: sign(
                serde_json::json!({"sub": "root/../x", "scope": "admin read", "exp": now + 3600}),
                JWT_SECRET,
            ),
            expired: sign(
                serde_json::json!({"sub": "u2", "exp": now.saturating_sub(3600)}),
                JWT_SECRET,
            ),
            wrong_key: sign(
                serde_json::json!({"sub": "u3", "exp": now + 3600}),
                "some-other-secret-0123456789",
            ),
            not_yet: sign(
                serde_json::json!({"sub": "u4", "exp": now + 7200, "nbf": now + 3600}),
                JWT_SECRET,
            ),
        }
    }
}

fn method(rng: &mut Rng) -> Vec<u8> {
    const COMMON: &[&str] = &[
        "GET", "GET", "GET", "GET", "POST", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH",
        "TRACE", "CONNECT", "PRI", "get", "Get", "M-SEARCH", "PROPFIND", "QUERY", "X",
    ];
    match rng.below(20) {
        0 => {
            let n = rng.range(1, 24);
            rng.text(TOKEN_CHARS, n)
        }
        1 => {
            let n = rng.range(1, 12);
            rng.bytes(n)
        }
        2 => {
            let n = rng.range(200, 3000);
            rng.text(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", n)
        }
        3 => Vec::new(),
        _ => rng.pick(COMMON).as_bytes().to_vec(),
    }
}

fn path_piece(rng: &mut Rng) -> Vec<u8> {
    const PIECES: &[&str] = &[
        "a",
        "b",
        "users",
        "1",
        "42",
        "x",
        "admin",
        "%61",
        "%61dmin",
        "%2e",
        "%2E",
        "%2e%2e",
        ".",
        "..",
        "%2f",
        "%2F",
        "%5c",
        "%5C",
        "\\",
        "%00",
        "%",
        "%4",
        "%zz",
        "%C3%A9",
        "%c3%a9",
        "%25",
        "%7E",
        "~",
        ";x",
        ";",
        ";jsessionid=1",
        "/",
        "//",
        "///",
        "@",
        ":",
        "+",
        "!",
        "$",
        "&",
        "'",
        "(",
        ")",
        "*",
        ",",
        "=",
        "%20",
        "%3F",
        "%3f",
        "%23",
        "é",
        "\u{202e}",
        "%ff",
        "%FF",
        "-",
        "_",
        "..%2f",
        "%2e%2e%2f",
        ".%2e",
        "%u002e",
        "combo",
        "jwt",
        "key",
        "v",
        "api",
    ];
    match rng.below(12) {
        0 => {
            let n = rng.range(1, 8);
            rng.bytes(n)
        }
        1 => {
            let n = rng.range(1, 40);
            rng.text(ALNUM, n)
        }
        _ => rng.pick(PIECES).as_bytes().to_vec(),
    }
}

fn query(rng: &mut Rng) -> Vec<u8> {
    const QUERIES: &[&str] = &[
        "?",
        "?q=1",
        "?q=%zz",
        "?q=a&q=b",
        "?x=../../etc",
        "?api_key=wire-fuzz-key-1",
        "?api_key=wrong",
        "?api_key=wire-fuzz-key-1&api_key=x",
        "?a=%00",
        "?q=%7B%7D",
        "?q={claims.sub}",
        "??",
        "?#",
        "?q=é",
    ];
    let mut q = rng.pick(QUERIES).as_bytes().to_vec();
    if rng.chance(20) {
        let n = rng.range(1, 30);
        q.extend(rng.text(b"abc=&%0123456789ABCDEF;+/?", n));
    }
    q
}

fn origin_path(rng: &mut Rng) -> Vec<u8> {
    const BASES: &[&str] = &[
        "/",
        "/jwt",
        "/jwt/x",
        "/key",
        "/key/a",
        "/admin",
        "/admin/",
        "/limited",
        "/limited/x",
        "/combo/1",
        "/combo/abc",
        "/combo/",
        "/me",
        "/rw/7/x/8",
        "/rw/a%2Fb/x/c",
        "/api/v1",
        "/api/v1/products/1",
        "/post",
        "/v",
        "/v/2",
        "/public",
        "/health",
        "/odd/1",
        "/odd/11",
        "/oddcombo/5",
    ];
    let mut p = rng.pick(BASES).as_bytes().to_vec();
    if rng.chance(45) {
        for _ in 0..rng.range(1, 4) {
            if !p.ends_with(b"/") && rng.chance(70) {
                p.push(b'/');
            }
            p.extend(path_piece(rng));
        }
    }
    if rng.chance(2) {
        let n = rng.range(2000, 12000);
        p.push(b'/');
        p.extend(rng.text(ALNUM, n));
    }
    if rng.chance(25) {
        p.extend(query(rng));
    }
    if rng.chance(3) {
        p.extend_from_slice(b"#frag");
    }
    p
}

fn authority(rng: &mut Rng) -> Vec<u8> {
    const HOSTS: &[&str] = &[
        "localhost",
        "example.com",
        "api.example.com",
        "API.EXAMPLE.COM",
        "example.com:8080",
        "a.example.com:",
        "127.0.0.1",
        "127.0.0.1:80",
        "[::1]",
        "[::1]:8080",
        "[a",
        "[",
        "]",
        "[::1",
        "::1",
        "a:b:c",
        ":80",
        "host:99999",
        "host:-1",
        "host:port",
        "user@host",
        "user:pw@example.com",
        "ex%61mple.com",
        "xn--nxasmq6b.example.com",
        "*.example.com",
        ".example.com",
        "example.com.",
        "h\tost",
        "",
        "é.example.com",
    ];
    match rng.below(12) {
        0 => {
            let n = rng.range(1, 300);
            rng.text(TOKEN_CHARS, n)
        }
        1 => {
            let n = rng.range(1, 6);
            rng.bytes(n)
        }
        _ => rng.pick(HOSTS).as_bytes().to_vec(),
    }
}

fn target(rng: &mut Rng) -> Vec<u8> {
    match rng.below(30) {
        0 | 1 => {
            const SCHEMES: &[&str] = &[
                "http://", "https://", "HTTP://", "ftp://", "http:/", "ws://", "//",
            ];
            let mut t = rng.pick(SCHEMES).as_bytes().to_vec();
            t.extend(authority(rng));
            if rng.chance(80) {
                t.extend(origin_path(rng));
            } else if rng.chance(50) {
                t.extend(query(rng));
            }
            t
        }
        2 => b"*".to_vec(),
        3 => authority(rng),
        4 => Vec::new(),
        5 => {
            let mut p = path_piece(rng);
            p.extend(origin_path(rng));
            p
        }
        _ => origin_path(rng),
    }
}

fn version(rng: &mut Rng) -> Vec<u8> {
    const ODD: &[&str] = &[
        "HTTP/2.0",
        "HTTP/1.2",
        "HTTP/0.9",
        "HTTP/1.1 ",
        "http/1.1",
        "HTTP/1",
        "",
        "HTTP/11",
        "HTTP/1.1\0",
        "HTTP/3",
        "HTTP/1.01",
    ];
    match rng.below(20) {
        0..=13 => b"HTTP/1.1".to_vec(),
        14..=16 => b"HTTP/1.0".to_vec(),
        _ => rng.pick(ODD).as_bytes().to_vec(),
    }
}

fn bearer(rng: &mut Rng, tokens: &Tokens) -> Vec<u8> {
    let t: Vec<u8> = match rng.below(14) {
        0..=3 => tokens.valid.clone().into_bytes(),
        4 => tokens.admin.clone().into_bytes(),
        5 => tokens.expired.clone().into_bytes(),
        6 => tokens.wrong_key.clone().into_bytes(),
        7 => tokens.not_yet.clone().into_bytes(),
        8 => {
            b"eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1MSIsImV4cCI6OTk5OTk5OTk5OX0.".to_vec()
        }
        9 => {
            let mut v = tokens.valid.clone().into_bytes();
            let cut = rng.below(v.len());
            v.truncate(cut);
            v
        }
        10 => {
            let mut v = tokens.valid.clone().into_bytes();
            let i = rng.below(v.len());
            v[i] = *rng.pick(B64URL);
            v
        }
        11 => {
            let parts = rng.range(1, 5);
            let mut v = Vec::new();
            for i in 0..parts {
                if i > 0 {
                    v.push(b'.');
                }
                let n = rng.range(0, 60);
                v.extend(rng.text(B64URL, n));
            }
            v
        }
        12 => {
            let n = rng.range(4000, 9000);
            rng.text(B64URL, n)
        }
        _ => {
            let n = rng.range(0, 20);
            rng.bytes(n)
        }
    };
    let scheme: &[u8] = rng.pick_b(&[
        b"Bearer ",
        b"Bearer ",
        b"bearer ",
        b"Bearer  ",
        b"Basic ",
        b"Bearer",
        b"",
    ]);
    let mut v = scheme.to_vec();
    v.extend(t);
    v
}

fn header_line(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut l = name.to_vec();
    l.extend_from_slice(b": ");
    l.extend_from_slice(value);
    l
}

/// How the body of one request is framed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum BodyKind {
    None,
    Length,
    Chunked,
}

/// A generated chunked body, sometimes broken.
fn chunked_body(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    let chunks = rng.range(0, 4);
    for _ in 0..chunks {
        let n = if rng.chance(5) {
            rng.range(1000, 30000)
        } else {
            rng.range(1, 100)
        };
        let size = format!("{n:x}");
        match rng.below(30) {
            0 => out.extend_from_slice(b"ffffffffffffffffffff"),
            1 => out.extend_from_slice(b"fffffffffffffff"),
            2 => out.extend_from_slice(b"zz"),
            3 => out.extend_from_slice(format!("0x{size}").as_bytes()),
            4 => out.extend_from_slice(format!("-{size}").as_bytes()),
            5 => out.extend_from_slice(format!(" {size}").as_bytes()),
            6 => out.extend_from_slice(format!("{size} ").as_bytes()),
            7 => out.extend_from_slice(format!("{size};ext=1;b=\"q\"").as_bytes()),
            8 => out.extend_from_slice(format!("{}", n).as_bytes()),
            9 => out.extend_from_slice(size.to_uppercase().as_bytes()),
            10 => out.extend_from_slice(
                format!("{size};{}", "e".repeat(rng.range(100, 5000))).as_bytes(),
            ),
            11 => out.extend_from_slice(format!("0000000000000000000{size}").as_bytes()),
            _ => out.extend_from_slice(size.as_bytes()),
        }
        out.extend_from_slice(if rng.chance(5) { b"\n" } else { b"\r\n" });
        let data_len = match rng.below(20) {
            0 => n + rng.range(1, 10),
            1 => n.saturating_sub(rng.range(1, 10)),
            _ => n,
        };
        out.extend(rng.text(ALNUM, data_len));
        match rng.below(20) {
            0 => {}
            1 => out.extend_from_slice(b"\n"),
            2 => out.extend_from_slice(b"XX"),
            _ => out.extend_from_slice(b"\r\n"),
        }
    }
    match rng.below(20) {
        0 => {} // never terminated
        1 => out.extend_from_slice(b"0\r\n"),
        2 => out.extend_from_slice(b"0\r\nX-Trailer: 1\r\nContent-Length: 5\r\n\r\n"),
        3 => out.extend_from_slice(b"0\r\nX-Trailer: 1\r\n\r\n"),
        4 => out.extend_from_slice(b"0;ext\r\n\r\n"),
        5 => out.extend_from_slice(b"00000\r\n\r\n"),
        6 => out.extend_from_slice(b"0\n\n"),
        7 => out.extend_from_slice(b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
        _ => out.extend_from_slice(b"0\r\n\r\n"),
    }
    out
}

/// One generated request: its bytes and whether it reads as a HEAD request.
struct GenRequest {
    bytes: Vec<u8>,
    head: bool,
    /// Goes to the upstream that answers oddly (its answers may be cut off).
    odd: bool,
}

/// Methods a clean request uses.
const CLEAN_METHODS: &[&[u8]] = &[
    b"GET", b"GET", b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH",
];

/// Paths a clean request uses (all already in normal form).
const CLEAN_PATHS: &[&[u8]] = &[
    b"/",
    b"/jwt",
    b"/jwt/x",
    b"/key/a",
    b"/admin",
    b"/admin/x",
    b"/limited/x",
    b"/combo/1",
    b"/combo/abc?q=1",
    b"/me",
    b"/rw/7/x/8",
    b"/api/v1/products/1?x=1",
    b"/post",
    b"/v/2",
    b"/public/chunk",
    b"/a/b/c?x=%7B",
    b"/key?api_key=wire-fuzz-key-1",
];

/// A request: "clean" ones (about 40%) are well-formed with benign fields, so
/// that they reach the routes and upstreams; the others draw from everything.
fn request(rng: &mut Rng, tokens: &Tokens) -> GenRequest {
    let wild = rng.chance(60);
    let (m, t, v) = if wild {
        (method(rng), target(rng), version(rng))
    } else {
        let v: &[u8] = if rng.chance(90) {
            b"HTTP/1.1"
        } else {
            b"HTTP/1.0"
        };
        (
            rng.pick_b(CLEAN_METHODS).to_vec(),
            if rng.chance(15) {
                let n = rng.below(ODD_VARIANTS);
                let prefix = if rng.chance(30) { "/oddcombo" } else { "/odd" };
                format!("{prefix}/{n}").into_bytes()
            } else {
                rng.pick_b(CLEAN_PATHS).to_vec()
            },
            v.to_vec(),
        )
    };
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut start = m.clone();
    // Request-line delimiters: usually one space.
    let delim = |rng: &mut Rng| -> Vec<u8> {
        if !wild {
            return b" ".to_vec();
        }
        match rng.below(40) {
            0 => b"  ".to_vec(),
            1 => b"\t".to_vec(),
            2 => Vec::new(),
            _ => b" ".to_vec(),
        }
    };
    start.extend(delim(rng));
    start.extend(&t);
    if !(v.is_empty() && rng.chance(50)) {
        start.extend(delim(rng));
        start.extend(&v);
    }
    lines.push(start);

    // Host: usually one, sometimes none, two or odd.
    match if wild { rng.below(20) } else { 20 } {
        0 => {}
        1 | 2 => {
            lines.push(header_line(b"Host", &authority(rng)));
            lines.push(header_line(b"Host", &authority(rng)));
        }
        3 => lines.push(header_line(b"host", &authority(rng))),
        4 | 5 => lines.push(header_line(b"Host", &authority(rng))),
        _ => lines.push(header_line(
            b"Host",
            rng.pick_b(&[
                b"localhost",
                b"localhost",
                b"api.example.com",
                b"example.com:8080",
            ]),
        )),
    }

    // Body framing.
    let kind = match rng.below(10) {
        0..=5 => BodyKind::None,
        6..=7 => BodyKind::Length,
        _ => BodyKind::Chunked,
    };
    let body: Vec<u8> = match kind {
        BodyKind::Chunked if !wild => {
            let mut b = Vec::new();
            for _ in 0..rng.range(0, 3) {
                let n = rng.range(1, 300);
                b.extend(format!("{n:x}\r\n").into_bytes());
                b.extend(rng.text(ALNUM, n));
                b.extend_from_slice(b"\r\n");
            }
            b.extend_from_slice(b"0\r\n\r\n");
            b
        }
        BodyKind::None => {
            if rng.chance(5) {
                let n = rng.range(1, 50);
                rng.text(ALNUM, n)
            } else {
                Vec::new()
            }
        }
        BodyKind::Length => {
            let n = match rng.below(20) {
                0 => rng.range(MAX_BODY - 10, MAX_BODY + 10),
                1 => rng.range(70_000, 200_000),
                _ => rng.range(0, 2000),
            };
            rng.text(ALNUM, n)
        }
        BodyKind::Chunked => chunked_body(rng),
    };
    if kind == BodyKind::Length {
        let n = body.len();
        let cl: Vec<Vec<u8>> = match if wild { rng.below(30) } else { 30 } {
            0 => vec![format!("{}", n + rng.range(1, 100)).into_bytes()],
            1 => vec![format!("{}", n.saturating_sub(rng.range(1, 100))).into_bytes()],
            2 => vec![n.to_string().into_bytes(), n.to_string().into_bytes()],
            3 => vec![n.to_string().into_bytes(), (n + 1).to_string().into_bytes()],
            4 => vec![format!("{n}, {n}").into_bytes()],
            5 => vec![format!("+{n}").into_bytes()],
            6 => vec![format!("-{n}").into_bytes()],
            7 => vec![format!("0x{n:x}").into_bytes()],
            8 => vec![format!(" {n} ").into_bytes()],
            9 => vec![b"99999999999999999999999999".to_vec()],
            10 => vec![b"18446744073709551615".to_vec()],
            11 => vec![Vec::new()],
            12 => vec![format!("{n}\0").into_bytes()],
            13 => vec![format!("0{n}").into_bytes()],
            _ => vec![n.to_string().into_bytes()],
        };
        for v in cl {
            let name: &[u8] = rng.pick_b(&[
                b"Content-Length",
                b"content-length",
                b"CONTENT-LENGTH",
                b"Content-Length",
            ]);
            lines.push(header_line(name, &v));
        }
    }
    if kind == BodyKind::Chunked && !wild {
        lines.push(header_line(b"Transfer-Encoding", b"chunked"));
    } else if kind == BodyKind::Chunked || rng.chance(3) {
        const TE: &[&str] = &[
            "chunked",
            "chunked",
            "chunked",
            "Chunked",
            "CHUNKED",
            " chunked",
            "chunked ",
            "gzip, chunked",
            "chunked, gzip",
            "identity",
            "chunked, chunked",
            "chunked;q=1",
            "\tchunked",
            "x-chunked",
            "chunk",
            "gzip",
            "",
            ",chunked",
            "chunked,",
            "deflate,chunked",
        ];
        lines.push(header_line(b"Transfer-Encoding", rng.pick(TE).as_bytes()));
        if rng.chance(10) {
            lines.push(header_line(b"Transfer-Encoding", rng.pick(TE).as_bytes()));
        }
        if rng.chance(10) {
            lines.push(header_line(
                b"Content-Length",
                body.len().to_string().as_bytes(),
            ));
        }
    }

    // Assorted fields.
    if !wild {
        // Clean requests mostly carry working credentials.
        if rng.chance(50) {
            let t = if rng.chance(70) {
                &tokens.valid
            } else {
                &tokens.admin
            };
            lines.push(header_line(
                b"Authorization",
                format!("Bearer {t}").as_bytes(),
            ));
        }
        if rng.chance(30) {
            lines.push(header_line(b"X-Api-Key", API_KEY.as_bytes()));
        }
    }
    let extra = rng.range(0, 6);
    for _ in 0..extra {
        let mut pick = rng.below(34);
        if !wild && !BENIGN.contains(&pick) {
            pick = 33;
        }
        match pick {
            0 | 1 => lines.push(header_line(b"Authorization", &bearer(rng, tokens))),
            2 => {
                lines.push(header_line(b"Authorization", &bearer(rng, tokens)));
                lines.push(header_line(b"Authorization", &bearer(rng, tokens)));
            }
            3 | 4 => {
                let key: &[u8] = rng.pick_b(&[
                    b"wire-fuzz-key-1",
                    b"wire-fuzz-key-1",
                    b"wrong",
                    b"",
                    b"wire-fuzz-key-1 ",
                ]);
                lines.push(header_line(b"X-Api-Key", key));
            }
            5 => {
                lines.push(header_line(b"X-Api-Key", API_KEY.as_bytes()));
                lines.push(header_line(b"x-api-key", b"other"));
            }
            6 => {
                let n = rng.range(0, 20);
                lines.push(header_line(b"X-Tenant", &rng.text(TOKEN_CHARS, n)));
            }
            7 => {
                const XFF: &[&str] = &[
                    "1.2.3.4",
                    "1.2.3.4, 5.6.7.8",
                    "garbage",
                    "::1",
                    "",
                    "999.1.1.1",
                    "[::1]:80",
                    "127.0.0.1",
                    "10.0.0.1,,,",
                    "unknown",
                ];
                lines.push(header_line(b"X-Forwarded-For", rng.pick(XFF).as_bytes()));
                if rng.chance(40) {
                    lines.push(header_line(b"X-Forwarded-For", rng.pick(XFF).as_bytes()));
                }
            }
            8 => {
                let n = rng.range(0, 300);
                let id = if rng.chance(70) {
                    rng.text(TOKEN_CHARS, n)
                } else {
                    rng.bytes(n.min(20))
                };
                lines.push(header_line(b"X-Request-Id", &id));
                if rng.chance(20) {
                    lines.push(header_line(b"X-Request-Id", b"second"));
                }
            }
            9 => {
                const TP: &[&str] = &[
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    "00-0-0-0",
                    "ff-zz",
                    "",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                ];
                lines.push(header_line(b"traceparent", rng.pick(TP).as_bytes()));
            }
            10 => {
                const CONN: &[&str] = &[
                    "close",
                    "keep-alive",
                    "Upgrade",
                    "close, x-api-key",
                    "x-api-key",
                    "host",
                    "content-length",
                    "transfer-encoding",
                    "authorization",
                    "te, close",
                    "keep-alive, x-tenant",
                    "x-request-id",
                    ",,,",
                ];
                lines.push(header_line(b"Connection", rng.pick(CONN).as_bytes()));
            }
            11 => lines.push(header_line(
                b"Expect",
                rng.pick_b(&[b"100-continue", b"100-Continue", b"nonsense"]),
            )),
            12 => {
                lines.push(header_line(
                    b"Upgrade",
                    rng.pick_b(&[b"h2c", b"websocket", b"HTTP/2.0"]),
                ));
                if rng.chance(50) {
                    lines.push(header_line(b"HTTP2-Settings", b"AAMAAABkAARAAAAAAAIAAAAA"));
                }
            }
            13 => lines.push(header_line(
                b"TE",
                rng.pick_b(&[b"trailers", b"trailers, deflate", b"chunked"]),
            )),
            14 => {
                let n = rng.range(1000, 20000);
                lines.push(header_line(b"X-Big", &rng.text(ALNUM, n)));
            }
            15 => {
                let count = rng.range(20, 120);
                for i in 0..count {
                    lines.push(header_line(format!("X-Many-{i}").as_bytes(), b"v"));
                }
            }
            16 => {
                lines.push(header_line(b"X-Fold", b"a"));
                lines.push(rng.pick_b(&[b" b", b"\tb", b" ", b"  Host: evil"]).to_vec());
            }
            17 => lines.push(
                rng.pick_b(&[
                    b"No colon here",
                    b"X-Space : v",
                    b"X-Tab\t: v",
                    b": novalue",
                    b"\tX-Lead: v",
                    b" Host: x",
                    b"Host : x",
                    b"X-Empty:",
                    b"X-NoSpace:v",
                ])
                .to_vec(),
            ),
            18 => {
                let mut v = b"a".to_vec();
                v.push(0);
                v.extend_from_slice(b"b");
                lines.push(header_line(
                    rng.pick_b(&[b"X-Nul", b"Host", b"Authorization", b"X-Api-Key"]),
                    &v,
                ));
            }
            19 => {
                let n = rng.range(1, 30);
                let name = rng.text(TOKEN_CHARS, n);
                let vn = rng.range(0, 60);
                let value = rng.bytes(vn);
                lines.push(header_line(&name, &value));
            }
            20 => {
                let n = rng.range(1, 10);
                let name = rng.bytes(n);
                lines.push(header_line(&name, b"v"));
            }
            21 => lines.push(header_line(
                rng.pick_b(&[b"X-User-Id", b"X-Tenant-Id", b"X-Consumer", b"x-user-id"]),
                b"spoofed",
            )),
            22 => lines.push(header_line(
                b"X-API-Version",
                rng.pick_b(&[b"2", b"2 ", b"1", b"2, 2"]),
            )),
            23 => lines.push(header_line(b"X-Shardgate-Test-Panic", b"1")),
            24 => {
                let values: &[&[u8]] = &[b"a", b"b, c", b"", b"\xff\xfe"];
                for _ in 0..rng.range(2, 5) {
                    lines.push(header_line(
                        rng.pick_b(&[b"Accept", b"Via", b"Forwarded", b"Cache-Control", b"Cookie"]),
                        rng.pick_b(values),
                    ));
                }
            }
            25 => lines.push(header_line(
                b"Forwarded",
                rng.pick_b(&[
                    b"for=1.2.3.4;host=evil;proto=https",
                    b"for=\"[::1]:80\"",
                    b"for",
                ]),
            )),
            26 => lines.push(header_line(b"X-Forwarded-Host", b"evil.example.com")),
            27 => lines.push(header_line(
                b"Content-Type",
                rng.pick_b(&[
                    b"application/json",
                    b"multipart/form-data; boundary=x",
                    b"text/plain; charset=\xff",
                ]),
            )),
            28 => lines.push(header_line(b"Cookie", b"a=b; c=d")),
            29 => {
                let n = rng.range(0, 80);
                let mut v = rng.text(ALNUM, n);
                let at = rng.below(v.len() + 1);
                v.insert(at, *rng.pick(&[b'\r', b'\n', 0u8, 0x7f, 0x0b, 0x0c]));
                lines.push(header_line(b"X-Ctl", &v));
            }
            30 => lines.push(header_line(b"Proxy-Connection", b"keep-alive")),
            31 => lines.push(header_line(b"Keep-Alive", b"timeout=1000")),
            32 => lines.push(header_line(b"Range", b"bytes=0-0,1-1,2-2")),
            _ => lines.push(header_line(b"Accept", b"*/*")),
        }
    }
    if wild && rng.chance(10) {
        let i = rng.below(lines.len());
        let dup = lines[i].clone();
        lines.push(dup);
    }
    if wild && lines.len() > 2 && rng.chance(10) {
        // Shuffle the fields (not the request line).
        for i in (2..lines.len()).rev() {
            let j = 1 + rng.below(i);
            lines.swap(i, j);
        }
    }

    // Line endings: CRLF, sometimes bare LF on some lines.
    let bare_lf = wild && rng.chance(8);
    let stray_cr = wild && rng.chance(3);
    let mut bytes = Vec::new();
    for l in &lines {
        bytes.extend_from_slice(l);
        if bare_lf && rng.chance(50) {
            bytes.push(b'\n');
        } else if stray_cr && rng.chance(20) {
            bytes.extend_from_slice(b"\r");
        } else {
            bytes.extend_from_slice(b"\r\n");
        }
    }
    bytes.extend_from_slice(if bare_lf && rng.chance(50) {
        b"\n"
    } else {
        b"\r\n"
    });
    bytes.extend_from_slice(&body);

    // Byte-level mutations, now and then.
    let mutated = wild && rng.chance(15);
    if mutated {
        for _ in 0..rng.range(1, 4) {
            mutate_bytes(rng, &mut bytes);
        }
    }
    // Whether the gateway will read it as HEAD (after any mutation).
    let start = bytes
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(0);
    let head = bytes.get(start..).is_some_and(|b| b.starts_with(b"HEAD "));
    let odd = t.windows(4).any(|w| w == b"/odd");
    GenRequest { bytes, head, odd }
}

/// The field kinds a clean request may carry (see `request`).
const BENIGN: &[usize] = &[0, 1, 3, 4, 6, 9, 10, 11, 13, 21, 22, 24, 25, 27, 28, 33];

fn mutate_bytes(rng: &mut Rng, b: &mut Vec<u8>) {
    if b.is_empty() {
        b.push(rng.byte());
        return;
    }
    let i = rng.below(b.len());
    match rng.below(9) {
        0 => b[i] = rng.byte(),
        1 => b[i] ^= 1 << rng.below(8),
        2 => {
            let n = rng.range(1, 16);
            let ins = rng.bytes(n);
            b.splice(i..i, ins);
        }
        3 => {
            let end = (i + rng.range(1, 32)).min(b.len());
            b.drain(i..end);
        }
        4 => {
            let end = (i + rng.range(1, 64)).min(b.len());
            let piece = b[i..end].to_vec();
            b.splice(end..end, piece);
        }
        5 => b.insert(i, 0),
        6 => b.insert(i, *rng.pick(b"\r\n \t:%")),
        7 => b.truncate(i),
        _ => {
            // Swap a CRLF for a bare LF or CR.
            if let Some(p) = b[i..].windows(2).position(|w| w == b"\r\n") {
                let at = i + p;
                if rng.chance(50) {
                    b.remove(at);
                } else {
                    b.remove(at + 1);
                }
            }
        }
    }
}

/// How a connection's bytes are written.
#[derive(Clone, Copy, Debug)]
enum SendMode {
    /// Everything in one write (pipelined when there are several requests).
    AllAtOnce,
    /// One request, then its response, then the next.
    OneByOne,
    /// In small pieces with pauses.
    Slow { piece: usize, pause_ms: u64 },
    /// In two writes split at a random point, with a pause between.
    Split { pause_ms: u64 },
}

/// How a connection ends from the client's side.
#[derive(Clone, Copy, Debug)]
enum EndMode {
    /// Read until the gateway closes.
    WaitClose,
    /// Read until every request is answered (or the gateway closes), then close.
    CloseAfterAnswers,
    /// Shut down the write side, then read until the gateway closes.
    HalfClose,
    /// Close right after writing (a reset when `reset`), possibly after only
    /// part of the bytes.
    Abrupt { reset: bool, cut: bool },
}

/// Everything one connection does.
struct Script {
    seed: u64,
    what: &'static str,
    requests: Vec<GenRequest>,
    send: SendMode,
    end: EndMode,
    /// Which listener: 0 `main` (defaults), 1 `raw` (no slash merging,
    /// encoded slashes decoded), 2 `keep` (encoded slashes kept).
    listener: usize,
}

impl Script {
    fn bytes(&self) -> Vec<u8> {
        self.requests
            .iter()
            .flat_map(|r| r.bytes.iter().copied())
            .collect()
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn script(seed: u64, tokens: &Tokens) -> Script {
    let mut rng = Rng::new(seed);
    let (what, requests) = match rng.below(100) {
        0..=2 => {
            let mut b = H2_PREFACE.to_vec();
            if rng.chance(50) {
                // A SETTINGS frame and a HEADERS frame's worth of noise.
                b.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
                let n = rng.range(0, 40);
                b.extend(rng.bytes(n));
            }
            (
                "h2-preface",
                vec![GenRequest {
                    bytes: b,
                    head: false,
                    odd: false,
                }],
            )
        }
        3 => {
            let n = rng.range(1, 3000);
            (
                "random-bytes",
                vec![GenRequest {
                    bytes: rng.bytes(n),
                    head: false,
                    odd: false,
                }],
            )
        }
        4 => ("silent", Vec::new()),
        5 => {
            // A request followed by garbage.
            let r = request(&mut rng, tokens);
            let n = rng.range(1, 200);
            let g = GenRequest {
                bytes: rng.bytes(n),
                head: false,
                odd: false,
            };
            ("request+garbage", vec![r, g])
        }
        _ => {
            let n = match rng.below(10) {
                0..=5 => 1,
                6 | 7 => 2,
                8 => 3,
                _ => rng.range(4, 12),
            };
            (
                "requests",
                (0..n).map(|_| request(&mut rng, tokens)).collect(),
            )
        }
    };
    let send = match rng.below(20) {
        0 | 1 => SendMode::Slow {
            piece: rng.range(1, 64),
            pause_ms: rng.range(1, 60) as u64,
        },
        2..=4 => SendMode::Split {
            pause_ms: rng.range(1, 300) as u64,
        },
        5..=10 => SendMode::OneByOne,
        _ => SendMode::AllAtOnce,
    };
    let end = match rng.below(40) {
        0..=3 => EndMode::WaitClose,
        4 | 5 => EndMode::HalfClose,
        6..=10 => EndMode::Abrupt {
            reset: rng.chance(50),
            cut: rng.chance(50),
        },
        _ => EndMode::CloseAfterAnswers,
    };
    let listener = match rng.below(10) {
        0..=5 => 0,
        6 | 7 => 1,
        _ => 2,
    };
    Script {
        seed,
        what,
        requests,
        send,
        end,
        listener,
    }
}

// ---------------------------------------------------------------------------
// Reading responses
// ---------------------------------------------------------------------------

/// Reads the gateway's responses off a connection, following their framing.
struct Responses {
    buf: Vec<u8>,
    pos: usize,
    /// For each request sent, whether it was a HEAD (no response body).
    heads: VecDeque<bool>,
    /// Final statuses seen, in order.
    statuses: Vec<u16>,
    /// The stream could not be followed (not HTTP, or after a 101).
    lost: Option<String>,
    eof: bool,
}

enum Step {
    Need,
    Final,
    Interim,
    Bad(String),
}

impl Responses {
    fn new() -> Responses {
        Responses {
            buf: Vec::new(),
            pos: 0,
            heads: VecDeque::new(),
            statuses: Vec::new(),
            lost: None,
            eof: false,
        }
    }

    fn step(&mut self) -> Step {
        let rest = &self.buf[self.pos..];
        if rest.is_empty() {
            return Step::Need;
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if self.eof {
                    return Step::Bad("connection closed in the middle of a response head".into());
                }
                if rest.len() > 64 * 1024 {
                    return Step::Bad("response head larger than 64 KiB".into());
                }
                return Step::Need;
            }
            Err(e) => return Step::Bad(format!("unparseable response head: {e}")),
        };
        let status = resp.code.unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            self.pos += n;
            return Step::Interim;
        }
        let mut cl: Option<usize> = None;
        let mut chunked = false;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                match std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    Some(v) if cl.is_none_or(|c| c == v) => cl = Some(v),
                    _ => {
                        return Step::Bad("bad or conflicting Content-Length in a response".into())
                    }
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = true;
            }
        }
        if chunked && cl.is_some() {
            return Step::Bad("response with both Content-Length and Transfer-Encoding".into());
        }
        let head_req = self.heads.front().copied().unwrap_or(false);
        let body_start = self.pos + n;
        let body = &self.buf[body_start..];
        let body_len = if head_req || status == 204 || status == 304 || status == 101 {
            Some(0)
        } else if chunked {
            match chunked_length(body) {
                Ok(Some(len)) => Some(len),
                Ok(None) if self.eof => {
                    return Step::Bad(
                        "connection closed in the middle of a chunked response".into(),
                    )
                }
                Ok(None) => None,
                Err(e) => return Step::Bad(e),
            }
        } else if let Some(len) = cl {
            if body.len() >= len {
                Some(len)
            } else if self.eof {
                return Step::Bad("connection closed in the middle of a response body".into());
            } else {
                None
            }
        } else if self.eof {
            Some(body.len())
        } else {
            None
        };
        match body_len {
            None => Step::Need,
            Some(len) => {
                self.pos = body_start + len;
                self.heads.pop_front();
                self.statuses.push(status);
                if status == 101 {
                    self.lost = Some("101 Switching Protocols".into());
                }
                Step::Final
            }
        }
    }

    /// Parses everything buffered; a malformed response is returned as an error.
    fn drain(&mut self) -> Result<(), String> {
        while self.lost.is_none() {
            match self.step() {
                Step::Need => return Ok(()),
                Step::Final | Step::Interim => {}
                Step::Bad(e) => {
                    self.lost = Some(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// Length of a complete chunked body at the start of `b` (with trailers).
fn chunked_length(b: &[u8]) -> Result<Option<usize>, String> {
    let mut i = 0;
    loop {
        let Some(eol) = b[i..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &b[i..i + eol];
        let size_text = line.split(|&c| c == b';').next().unwrap_or(b"");
        let size = std::str::from_utf8(size_text)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .ok_or_else(|| {
                format!(
                    "bad chunk size line in a response: {:?}",
                    String::from_utf8_lossy(line)
                )
            })?;
        i += eol + 2;
        if size == 0 {
            // Trailers up to an empty line.
            loop {
                let Some(eol) = b[i..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                i += eol + 2;
                if eol == 0 {
                    return Ok(Some(i));
                }
            }
        }
        if b.len() < i + size + 2 {
            return Ok(None);
        }
        if &b[i + size..i + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF in a response".into());
        }
        i += size + 2;
    }
}

// ---------------------------------------------------------------------------
// Running one connection
// ---------------------------------------------------------------------------

/// What happened on one connection.
#[derive(Default)]
struct Outcome {
    requests: usize,
    statuses: Vec<u16>,
    /// The gateway closed without any response.
    closed_silent: bool,
    /// A reason the run fails.
    failure: Option<String>,
    /// Something odd but not a failure.
    note: Option<String>,
    /// A response from the odd upstream reached the client cut off.
    odd_cut: bool,
    /// The gateway closed the connection (EOF or reset seen).
    gateway_closed: bool,
    log: String,
}

enum ReadEnd {
    Closed,
    Answered,
    Deadline,
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Reads until `want` final responses arrived (if given), the gateway
/// closes, or the deadline passes.
fn read_until(
    s: &mut TcpStream,
    r: &mut Responses,
    want: Option<usize>,
    deadline: Instant,
) -> ReadEnd {
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        if r.eof {
            return ReadEnd::Closed;
        }
        if let Some(w) = want {
            if r.statuses.len() >= w || r.lost.is_some() {
                return ReadEnd::Answered;
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return ReadEnd::Deadline;
        }
        let wait = (deadline - now).min(Duration::from_millis(100));
        let _ = s.set_read_timeout(Some(wait.max(Duration::from_millis(1))));
        match s.read(&mut tmp) {
            Ok(0) => {
                r.eof = true;
                let _ = r.drain();
            }
            Ok(n) => {
                r.buf.extend_from_slice(&tmp[..n]);
                let _ = r.drain();
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                // Reset by the gateway: closed.
                r.eof = true;
                let _ = r.drain();
            }
        }
    }
}

enum WriteEnd {
    Ok,
    /// The gateway closed or reset the connection.
    PeerClosed,
    /// A write could not complete within the hang limit.
    Stuck,
}

fn write_all(s: &mut TcpStream, bytes: &[u8]) -> WriteEnd {
    let _ = s.set_write_timeout(Some(hang_limit()));
    match s.write_all(bytes) {
        Ok(()) => WriteEnd::Ok,
        Err(e) if is_timeout(&e) => WriteEnd::Stuck,
        Err(_) => WriteEnd::PeerClosed,
    }
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

fn run_script(port: u16, sc: &Script) -> Outcome {
    let mut out = Outcome {
        requests: sc.requests.len(),
        ..Outcome::default()
    };
    let mut s = match connect(port) {
        Ok(s) => s,
        Err(e) => {
            out.failure = Some(format!("cannot connect to the gateway: {e}"));
            return out;
        }
    };
    let mut r = Responses::new();
    let limit = hang_limit();
    let mut closed = false;
    let mut sent = 0usize;

    let stuck =
        |what: &str| format!("the gateway stopped reading a connection it kept open ({what})");

    let all = sc.bytes();
    let cut_at = match sc.end {
        EndMode::Abrupt { cut: true, .. } if !all.is_empty() => {
            Some(mix(sc.seed, 7) as usize % all.len())
        }
        _ => None,
    };

    match sc.send {
        SendMode::OneByOne if cut_at.is_none() => {
            for (i, req) in sc.requests.iter().enumerate() {
                r.heads.push_back(req.head);
                match write_all(&mut s, &req.bytes) {
                    WriteEnd::Ok => sent = i + 1,
                    WriteEnd::PeerClosed => {
                        closed = true;
                        break;
                    }
                    WriteEnd::Stuck => {
                        out.failure = Some(stuck("write of a request blocked"));
                        break;
                    }
                }
                if i + 1 == sc.requests.len() {
                    break;
                }
                let want = r.statuses.len() + 1;
                match read_until(&mut s, &mut r, Some(want), Instant::now() + limit) {
                    ReadEnd::Answered => {}
                    ReadEnd::Closed => {
                        closed = true;
                        break;
                    }
                    ReadEnd::Deadline => {
                        out.failure = Some(format!(
                            "request {} of the connection was neither answered nor the connection closed within {limit:?}",
                            i + 1
                        ));
                        break;
                    }
                }
            }
        }
        _ => {
            for req in &sc.requests {
                r.heads.push_back(req.head);
            }
            let bytes = match cut_at {
                Some(c) => &all[..c],
                None => &all[..],
            };
            let result = match sc.send {
                SendMode::Slow { piece, pause_ms } => {
                    // Slow writes stop after a few seconds' worth of pieces.
                    let started = Instant::now();
                    let mut res = WriteEnd::Ok;
                    for p in bytes.chunks(piece.max(1)) {
                        res = write_all(&mut s, p);
                        if !matches!(res, WriteEnd::Ok)
                            || started.elapsed() > Duration::from_secs(4)
                        {
                            break;
                        }
                        thread::sleep(Duration::from_millis(pause_ms));
                    }
                    res
                }
                SendMode::Split { pause_ms } if bytes.len() > 1 => {
                    let at = (mix(sc.seed, 11) as usize % (bytes.len() - 1)) + 1;
                    match write_all(&mut s, &bytes[..at]) {
                        WriteEnd::Ok => {
                            thread::sleep(Duration::from_millis(pause_ms));
                            write_all(&mut s, &bytes[at..])
                        }
                        other => other,
                    }
                }
                _ => write_all(&mut s, bytes),
            };
            match result {
                WriteEnd::Ok => {
                    // Requests written whole (a cut one does not count).
                    let mut end = 0;
                    sent = sc
                        .requests
                        .iter()
                        .take_while(|q| {
                            end += q.bytes.len();
                            end <= bytes.len()
                        })
                        .count();
                }
                WriteEnd::PeerClosed => closed = true,
                WriteEnd::Stuck => out.failure = Some(stuck("write blocked")),
            }
        }
    }

    if out.failure.is_none() {
        match sc.end {
            EndMode::Abrupt { reset, .. } => {
                if reset {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                }
                drop(s);
                out.log = format!(
                    "closed by the client after {} bytes",
                    cut_at.unwrap_or(all.len())
                );
                out.requests = sent;
                return out;
            }
            EndMode::HalfClose => {
                let _ = s.shutdown(Shutdown::Write);
            }
            _ => {}
        }
        let want = match sc.end {
            EndMode::CloseAfterAnswers if !closed && sent > 0 => Some(sent),
            _ => None,
        };
        match read_until(&mut s, &mut r, want, Instant::now() + limit) {
            ReadEnd::Closed | ReadEnd::Answered => {}
            ReadEnd::Deadline => {
                out.failure = Some(format!(
                    "connection neither answered ({} of {sent} responses) nor closed within {limit:?} after the last byte sent",
                    r.statuses.len()
                ))
            }
        }
    }
    if let Some(bad) = &r.lost {
        if bad != "101 Switching Protocols" {
            // The generator tracks HEAD requests, so a broken stream is the gateway's.
            let ctx =
                String::from_utf8_lossy(&r.buf[r.pos..r.buf.len().min(r.pos + 300)]).into_owned();
            let msg = format!("{bad}; bytes from there: {ctx:?}");
            if sc.requests.iter().any(|q| q.odd) {
                // An upstream answer broken after its head was relayed can
                // only be cut off.
                out.odd_cut = true;
            } else if sc
                .requests
                .iter()
                .any(|q| q.bytes.windows(4).any(|w| w == b"HEAD"))
            {
                out.note = Some(msg);
            } else if out.failure.is_none() {
                out.failure = Some(msg);
            }
        }
    }
    out.closed_silent = r.buf.is_empty() && (closed || r.eof);
    out.gateway_closed = closed || r.eof;
    out.statuses = r.statuses.clone();
    out.requests = sent;
    out.log = format!(
        "sent {sent} of {} requests; statuses {:?}; {}",
        sc.requests.len(),
        r.statuses,
        if r.eof {
            "closed by the gateway"
        } else {
            "closed by the client"
        }
    );
    out
}

// ---------------------------------------------------------------------------
// The gateway process
// ---------------------------------------------------------------------------

struct GatewayProc {
    child: Mutex<Child>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The listeners' ports: main, raw, keep.
    ports: [u16; 3],
    pid: u32,
    dir: std::path::PathBuf,
}

impl GatewayProc {
    fn start(bin: &str, config: &str) -> GatewayProc {
        for _ in 0..4 {
            let mut ports = [0u16; 3];
            for i in 0..3 {
                let mut p = common::free_port();
                while ports[..i].contains(&p) {
                    p = common::free_port();
                }
                ports[i] = p;
            }
            let dir = common::temp_dir();
            let path = dir.join("wire-fuzz.ron");
            let text = config
                .replace("$PORT3", &ports[2].to_string())
                .replace("$PORT2", &ports[1].to_string())
                .replace("$PORT", &ports[0].to_string());
            std::fs::write(&path, text).expect("write config");
            let mut child = Command::new(bin)
                .arg("--config")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
            let stderr = Arc::new(Mutex::new(Vec::new()));
            {
                let mut from = child.stderr.take().expect("stderr pipe");
                let into = stderr.clone();
                thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let mut v = into.lock().unwrap();
                        v.extend_from_slice(&buf[..n]);
                        // Keep the last 1 MiB.
                        if v.len() > 2 << 20 {
                            let cut = v.len() - (1 << 20);
                            v.drain(..cut);
                        }
                    }
                });
            }
            let pid = child.id();
            let g = GatewayProc {
                child: Mutex::new(child),
                stderr,
                ports,
                pid,
                dir,
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if g.stderr_text().contains("shardgate: ready") {
                    return g;
                }
                if let Some(status) = g.exited() {
                    let err = g.stderr_text();
                    if err.contains("in use") {
                        break;
                    }
                    panic!("shardgate exited ({status}) before it was ready:\n{err}");
                }
                if Instant::now() > deadline {
                    panic!("shardgate was not ready within 20 s:\n{}", g.stderr_text());
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start shardgate on a free port");
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().unwrap().try_wait().ok().flatten()
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// The last `lines` lines of stderr, without backtrace frames.
    fn stderr_tail(&self, lines: usize) -> String {
        let text = self.stderr_text();
        let all: Vec<&str> = text.lines().filter(|l| !is_frame(l)).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Panic messages the gateway logged (each with the line after it).
    fn panics(&self) -> Vec<String> {
        let text = self.stderr_text();
        let lines: Vec<&str> = text.lines().collect();
        let mut out = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            if !(l.contains("panicked")
                || l.contains("panic while serving")
                || l.contains(" died: "))
            {
                continue;
            }
            let mut entry = l.to_string();
            if let Some(next) = lines.get(i + 1).filter(|n| !is_frame(n)) {
                entry.push_str(&format!("\n    {next}"));
            }
            // The gateway's own frames of the backtrace, if one was printed.
            let frames = lines
                .iter()
                .skip(i + 1)
                .take_while(|f| !f.starts_with("shardgate:") && !f.contains("panicked"))
                .take(200)
                .filter(|f| f.contains("shardgate::") || f.contains("./src/"))
                .take(12);
            for f in frames {
                entry.push_str(&format!("\n    {}", f.trim()));
            }
            out.push(entry);
        }
        out
    }

    /// Open file descriptors of the process (sockets included).
    fn fd_count(&self) -> Option<usize> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .ok()
            .map(|d| d.count())
    }
}

/// A backtrace line (`  12: symbol` or `      at file:line`).
fn is_frame(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("at ")
        || t.split_once(": ").is_some_and(|(n, _)| {
            !n.is_empty() && n.len() < line.len() && n.bytes().all(|b| b.is_ascii_digit())
        })
}

impl GatewayProc {
    /// Ends the process and removes its files (also done when dropped;
    /// `std::process::exit` skips destructors, so failures call this first).
    fn stop(&self) {
        let mut c = self.child.lock().unwrap();
        let _ = c.kill();
        let _ = c.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One health request on a fresh connection; `Err` says what went wrong.
fn health_probe(port: u16) -> Result<(), String> {
    let started = Instant::now();
    let mut s = connect(port).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_write_timeout(Some(HEALTH_LIMIT));
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut r = Responses::new();
    r.heads.push_back(false);
    let deadline = started + HEALTH_LIMIT;
    match read_until(&mut s, &mut r, Some(1), deadline) {
        ReadEnd::Answered | ReadEnd::Closed => {}
        ReadEnd::Deadline => return Err(format!("no answer within {HEALTH_LIMIT:?}")),
    }
    match r.statuses.first() {
        Some(200) => Ok(()),
        Some(s) => Err(format!("status {s}")),
        None => Err(format!(
            "closed without a response ({})",
            r.lost.unwrap_or_else(|| "no bytes".into())
        )),
    }
}

// ---------------------------------------------------------------------------
// Run bookkeeping
// ---------------------------------------------------------------------------

/// Printable form of input bytes (long runs shortened).
fn show(b: &[u8]) -> String {
    let mut s = String::new();
    let shown: Vec<u8> = if b.len() > 3000 {
        let mut v = b[..2000].to_vec();
        v.extend_from_slice(format!("<... {} bytes ...>", b.len() - 2500).as_bytes());
        v.extend_from_slice(&b[b.len() - 500..]);
        v
    } else {
        b.to_vec()
    };
    for &c in &shown {
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n\n    "),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s
}

fn describe(sc: &Script) -> String {
    format!(
        "connection seed {:#018x} ({}, {} request(s), listener {}, send {:?}, end {:?}):\n    {}",
        sc.seed,
        sc.what,
        sc.requests.len(),
        ["main", "raw", "keep"].get(sc.listener).unwrap_or(&"?"),
        sc.send,
        sc.end,
        show(&sc.bytes())
    )
}

#[derive(Default)]
struct Stats {
    requests: u64,
    connections: u64,
    statuses: BTreeMap<String, u64>,
    notes: Vec<String>,
    note_count: u64,
    /// Inputs of connections the gateway closed without any response.
    silent: Vec<String>,
}

/// A connection of the run, for finding the input behind a crash.
struct Recent {
    id: u64,
    seed: u64,
    started: Instant,
    ended: Option<Instant>,
    /// The gateway closed it before answering every request sent.
    cut_short: bool,
}

/// Connections remembered for the failure report.
const RECENT: usize = 8192;

struct Shared {
    stop: AtomicBool,
    failures: Mutex<Vec<String>>,
    /// When the first failure was seen.
    failed_at: Mutex<Option<Instant>>,
    recent: Mutex<VecDeque<Recent>>,
    next_id: AtomicU64,
    stats: Mutex<Stats>,
    probes: AtomicU64,
}

impl Shared {
    fn fail(&self, msg: String) {
        self.mark_failed();
        self.failures.lock().unwrap().push(msg);
    }

    /// Stops the run and notes when the first failure was seen.
    fn mark_failed(&self) {
        self.failed_at
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Notes a connection's start; returns its id for [`Shared::finished`].
    fn started(&self, seed: u64) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut r = self.recent.lock().unwrap();
        r.push_back(Recent {
            id,
            seed,
            started: Instant::now(),
            ended: None,
            cut_short: false,
        });
        while r.len() > RECENT {
            r.pop_front();
        }
        id
    }

    fn finished(&self, id: u64, o: &Outcome) {
        let mut r = self.recent.lock().unwrap();
        if let Some(e) = r.iter_mut().rev().find(|e| e.id == id) {
            e.ended = Some(Instant::now());
            e.cut_short = o.gateway_closed && o.statuses.len() < o.requests.max(1);
        }
    }

    /// Connections open around the first failure (a crash or a panic is
    /// seen up to one health interval late): those still open when it was
    /// seen or ended within a second before; the ones the gateway cut short
    /// first.
    fn suspects(&self) -> Vec<u64> {
        let Some(at) = *self.failed_at.lock().unwrap() else {
            return Vec::new();
        };
        let from = at.checked_sub(Duration::from_secs(1)).unwrap_or(at);
        let r = self.recent.lock().unwrap();
        let mut list: Vec<&Recent> = r
            .iter()
            .filter(|e| e.started <= at && e.ended.is_none_or(|t| t >= from))
            .collect();
        list.sort_by_key(|e| !e.cut_short);
        list.iter().map(|e| e.seed).collect()
    }

    fn record(&self, o: &Outcome, sc: &Script, input: &str) {
        let mut st = self.stats.lock().unwrap();
        if sc.requests.is_empty() {
            // Connected and sent nothing: closed at the idle timeout.
            st.connections += 1;
            *st.statuses.entry("idle-closed".into()).or_default() += 1;
            return;
        }
        if o.odd_cut {
            *st.statuses
                .entry("cut-off-odd-upstream".into())
                .or_default() += 1;
        }
        if o.closed_silent && st.silent.len() < 3 && !sc.requests.iter().any(|q| q.odd) {
            st.silent.push(input.chars().take(600).collect());
        }
        st.requests += o.requests as u64;
        st.connections += 1;
        for s in &o.statuses {
            *st.statuses.entry(s.to_string()).or_default() += 1;
        }
        if o.closed_silent {
            *st.statuses
                .entry("closed-without-response".into())
                .or_default() += 1;
        }
        if let Some(n) = &o.note {
            st.note_count += 1;
            if st.notes.len() < 3 {
                st.notes.push(n.clone());
            }
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    if let Some(hex) = v.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).ok()
    } else {
        v.parse().ok()
    }
}

/// How many ways the odd upstream answers.
const ODD_VARIANTS: usize = 26;

/// The odd upstream's answer for variant `n`: the bytes, whether to close
/// after them, and a delay before sending.
fn odd_response(n: usize) -> (Vec<u8>, bool, Duration) {
    let ok = |b: &str| (b.as_bytes().to_vec(), false, Duration::ZERO);
    let close = |b: &str| (b.as_bytes().to_vec(), true, Duration::ZERO);
    match n {
        0 => ok("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        1 => ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\nContent-Length: 9\r\nSet-Cookie: a=b\r\n\r\n"),
        2 => close("HTTP/1.1 200 OK\r\n\r\nuntil close"),
        3 => close("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"),
        4 => ok("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        5 => close("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"),
        6 => {
            let big = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n", "b".repeat(70_000));
            (big.into_bytes(), true, Duration::ZERO)
        }
        7 => close("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        8 => close("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        9 => close(""),
        10 => close("NOT HTTP AT ALL\r\n\r\n"),
        11 => (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow".to_vec(), false, Duration::from_millis(UPSTREAM_MS + 500)),
        12 => close("HTTP/1.0 200 OK\r\n\r\nold style"),
        13 => ok("HTTP/1.1 999 Weird\r\nContent-Length: 0\r\n\r\n"),
        14 => close("HTTP/1.1 200 OK\nContent-Length: 2\n\nok"),
        15 => close("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
        16 => close("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n"),
        17 => close("HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\nContent-Length: 2\r\n\r\nok"),
        18 => close("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nframes"),
        19 => close("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"),
        20 => {
            let mut r = String::from("HTTP/1.1 200 OK\r\n");
            for i in 0..150 {
                r.push_str(&format!("X-H{i}: {i}\r\n"));
            }
            r.push_str("Content-Length: 0\r\n\r\n");
            (r.into_bytes(), true, Duration::ZERO)
        }
        21 => close("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
        22 => close("HTTP/1.1 200 OK\r\nContent-Le"),
        23 => ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        24 => ok("HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n"),
        _ => ok("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"id\": \"x\"}"),
    }
}

/// An upstream that answers each request with the variant named by the last
/// number in its path (`/odd/7`), otherwise variant 0.
fn start_odd_upstream() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind odd upstream");
    let addr = listener
        .local_addr()
        .expect("odd upstream addr")
        .to_string();
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            thread::spawn(move || odd_serve(s));
        }
    });
    addr
}

fn odd_serve(mut s: TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16384];
    loop {
        // A head, then its body (by Content-Length or chunked).
        let (head_len, target, length, chunked) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut r = httparse::Request::new(&mut headers);
            match r.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let field = |name: &str| {
                        r.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| String::from_utf8_lossy(h.value).into_owned())
                    };
                    let length: usize = field("content-length")
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let chunked = field("transfer-encoding").is_some();
                    break (n, r.path.unwrap_or("").to_string(), length, chunked);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return,
            }
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        buf.drain(..head_len);
        loop {
            let done = if chunked {
                chunked_length(&buf).ok().flatten()
            } else if buf.len() >= length {
                Some(length)
            } else {
                None
            };
            if let Some(n) = done {
                buf.drain(..n);
                break;
            }
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        let n = target
            .rsplit(|c: char| !c.is_ascii_digit())
            .find(|p| !p.is_empty())
            .and_then(|d| d.parse::<usize>().ok())
            .unwrap_or(0);
        let (bytes, close, delay) = odd_response(n % ODD_VARIANTS);
        thread::sleep(delay);
        // Numbers 3 more than a multiple of 7 are sent in small pieces.
        let result = if n % 7 == 3 {
            bytes.chunks(7).try_for_each(|p| {
                thread::sleep(Duration::from_millis(2));
                s.write_all(p)
            })
        } else {
            s.write_all(&bytes)
        };
        if result.is_err() || close {
            let _ = s.shutdown(Shutdown::Both);
            return;
        }
    }
}

fn start_backends() -> (Backend, Backend) {
    let app = Backend::start(|r| {
        let body = format!("app {} {}", r.method, r.target);
        if r.target.contains("chunk") {
            Response::chunked(vec![body.into_bytes(), b"-tail".to_vec()])
        } else {
            Response::ok(body)
        }
    });
    let parts = Backend::start(|r| {
        Response::ok(format!("{{\"id\": \"x1\", \"path\": {:?}}}", r.target))
            .header("Content-Type", "application/json")
    });
    (app, parts)
}

fn main() {
    let bin = std::env::var("SHARDGATE_BIN").unwrap_or_else(|_| common::bin().to_string());
    let tokens = Tokens::mint();
    let (app, parts) = start_backends();
    let odd = start_odd_upstream();
    let config = config_text(&app.addr(), &parts.addr(), &odd);

    if let Ok(list) = std::env::var("FUZZ_WIRE_REPLAY") {
        replay(&bin, &config, &list, &tokens);
        return;
    }

    // Without a duration (a plain `cargo test`) the run is short and its
    // inputs fixed; with one, each run draws a new seed unless given.
    let given = env_u64("FUZZ_WIRE_SECONDS");
    let seconds = given.unwrap_or(3);
    let workers = env_u64("FUZZ_WIRE_WORKERS").unwrap_or(64).max(1) as usize;
    let seed = env_u64("FUZZ_WIRE_SEED").unwrap_or_else(|| {
        if given.is_none() {
            return 0x5eed_5a4d_6a7e_0f0f;
        }
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!(
        "fuzz_wire: seed {seed:#018x} (FUZZ_WIRE_SEED={seed:#x} repeats the inputs), {seconds} s, {workers} workers, binary {bin}"
    );

    let gw = Arc::new(GatewayProc::start(&bin, &config));
    let ports = gw.ports;
    let port = ports[0];
    // Warm up (pools, caches) before the baseline fd count.
    for _ in 0..3 {
        if let Err(e) = health_probe(port) {
            println!("fuzz_wire: FAILED: the gateway does not answer before fuzzing: {e}");
            println!("gateway stderr:\n{}", gw.stderr_tail(40));
            gw.stop();
            std::process::exit(1);
        }
    }
    let fd_base = gw.fd_count();

    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        failures: Mutex::new(Vec::new()),
        recent: Mutex::new(VecDeque::new()),
        failed_at: Mutex::new(None),
        next_id: AtomicU64::new(0),
        stats: Mutex::new(Stats::default()),
        probes: AtomicU64::new(0),
    });
    let tokens = Arc::new(tokens);
    let deadline = Instant::now() + Duration::from_secs(seconds);

    let health = {
        let (gw, shared) = (gw.clone(), shared.clone());
        thread::spawn(move || {
            let mut probes_sent = 0usize;
            while Instant::now() < deadline && !shared.stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                if let Some(status) = gw.exited() {
                    shared.fail(format!("the gateway process exited: {status}"));
                    break;
                }
                if !gw.panics().is_empty() {
                    // Note the time now; give the backtrace (slow to
                    // symbolise) time to arrive, up to the gateway's own
                    // line about the panic.
                    shared.mark_failed();
                    let until = Instant::now() + Duration::from_secs(5);
                    while Instant::now() < until
                        && !gw.stderr_text().contains("panic while serving")
                        && !gw.stderr_text().contains(" died: ")
                    {
                        thread::sleep(Duration::from_millis(50));
                    }
                    let panics = gw.panics();
                    shared.fail(format!("the gateway panicked:\n  {}", panics.join("\n  ")));
                    break;
                }
                // Each probe on the next listener in turn.
                let probe_port = gw.ports[probes_sent % gw.ports.len()];
                probes_sent += 1;
                if let Err(e) = health_probe(probe_port) {
                    if let Some(status) = gw.exited() {
                        shared.fail(format!("the gateway process exited: {status}"));
                    } else {
                        shared.fail(format!(
                            "health request on a fresh connection failed: {e} (after {:?})",
                            t.elapsed()
                        ));
                    }
                    break;
                }
                shared.probes.fetch_add(1, Ordering::Relaxed);
                thread::sleep(HEALTH_EVERY.saturating_sub(t.elapsed()));
            }
        })
    };

    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (shared, tokens) = (shared.clone(), tokens.clone());
            thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < deadline && !shared.stop.load(Ordering::SeqCst) {
                    let cseed = mix(seed, ((w as u64) << 40) | n);
                    n += 1;
                    let sc = script(cseed, &tokens);
                    let input = describe(&sc);
                    let id = shared.started(cseed);
                    let o = run_script(ports[sc.listener], &sc);
                    shared.finished(id, &o);
                    if let Some(f) = &o.failure {
                        shared.fail(format!("{f}\n  input: {input}\n  outcome: {}", o.log));
                    }
                    shared.record(&o, &sc, &input);
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let _ = health.join();

    // After the run: alive, answering, and no client connection left open.
    if !shared.stop.load(Ordering::SeqCst) {
        let panics = gw.panics();
        if let Some(status) = gw.exited() {
            shared.fail(format!("the gateway process exited: {status}"));
        } else if !panics.is_empty() {
            shared.fail(format!("the gateway panicked:\n  {}", panics.join("\n  ")));
        } else if let Err(e) = health_probe(port) {
            shared.fail(format!("health request after the run failed: {e}"));
        } else if let (Some(base), Some(_)) = (fd_base, gw.fd_count()) {
            // Client connections end within the idle timeout; pooled upstream
            // connections may stay (bounded per target and shard).
            let slack = SHARDS * TARGETS * POOL_PER_TARGET + 8;
            let settle = Instant::now() + Duration::from_millis(IDLE_MS + HEADER_READ_MS + 3000);
            let mut now_fds = gw.fd_count().unwrap_or(0);
            while now_fds > base + slack && Instant::now() < settle {
                thread::sleep(Duration::from_millis(200));
                now_fds = gw.fd_count().unwrap_or(0);
            }
            if now_fds > base + slack {
                shared.fail(format!(
                    "the gateway holds {now_fds} file descriptors after the run, {base} before (allowed: {slack} more for pooled upstream connections)"
                ));
            }
        }
    }

    let st = shared.stats.lock().unwrap();
    let failures = shared.failures.lock().unwrap();
    let statuses: Vec<String> = st
        .statuses
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    println!(
        "fuzz_wire: {} requests, {} connections, {} health probes, {} failures",
        st.requests,
        st.connections,
        shared.probes.load(Ordering::Relaxed),
        failures.len()
    );
    println!("fuzz_wire: statuses: {}", statuses.join(", "));
    if !st.silent.is_empty() {
        println!("fuzz_wire: connections closed without any response, first ones:");
        for n in &st.silent {
            println!("  {n}");
        }
    }
    if st.note_count > 0 {
        println!(
            "fuzz_wire: {} connection(s) with a response stream that could not be followed after a \
             HEAD request (a response to HEAD carrying a body, or a head the gateway could not parse); \
             first ones:",
            st.note_count
        );
        for n in &st.notes {
            println!("  {n}");
        }
    }
    if !failures.is_empty() {
        println!("\nfuzz_wire: FAILED (seed {seed:#x})");
        for f in failures.iter() {
            println!("- {f}");
        }
        let suspects = shared.suspects();
        if !suspects.is_empty() {
            println!(
                "\nconnections open around the first failure ({}; those the gateway cut short first):",
                suspects.len()
            );
            for seed in suspects.iter().take(6) {
                println!("- {}", describe(&script(*seed, &tokens)));
            }
            let list: Vec<String> = suspects.iter().map(|s| format!("{s:#x}")).collect();
            println!("\nto replay them all: FUZZ_WIRE_REPLAY={}", list.join(","));
        }
        // Read again now: a release build's backtrace takes a while to print.
        let panics = gw.panics();
        if !panics.is_empty() {
            println!("\ngateway panics (with its own backtrace frames):");
            for p in &panics {
                println!("- {p}");
            }
        }
        println!("\ngateway stderr (tail):\n{}", gw.stderr_tail(60));
        let log = std::env::temp_dir().join(format!("fuzz-wire-{seed:x}-stderr.log"));
        if std::fs::write(&log, gw.stderr_text()).is_ok() {
            println!("gateway stderr (whole, with backtraces): {}", log.display());
        }
        println!("\nreplay one connection with FUZZ_WIRE_REPLAY=<connection seed>");
        gw.stop();
        std::process::exit(1);
    }
}

/// Runs the given connection seeds one after the other, printing each.
fn replay(bin: &str, config: &str, list: &str, tokens: &Tokens) {
    let gw = GatewayProc::start(bin, config);
    let mut failed = false;
    let mut panics_seen = 0;
    for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let seed = if let Some(hex) = s.strip_prefix("0x") {
            u64::from_str_radix(hex, 16)
        } else {
            s.parse()
        }
        .unwrap_or_else(|e| panic!("bad seed {s:?}: {e}"));
        let sc = script(seed, tokens);
        println!("{}", describe(&sc));
        if let Ok(dir) = std::env::var("FUZZ_WIRE_DUMP") {
            let path = std::path::Path::new(&dir).join(format!("{seed:#018x}.bin"));
            match std::fs::write(&path, sc.bytes()) {
                Ok(()) => println!("  bytes written to {}", path.display()),
                Err(e) => println!("  cannot write {}: {e}", path.display()),
            }
        }
        let o = run_script(gw.ports[sc.listener], &sc);
        println!("  outcome: {}", o.log);
        if let Some(f) = &o.failure {
            println!("  FAILURE: {f}");
            failed = true;
        }
        thread::sleep(Duration::from_millis(100));
        if let Some(status) = gw.exited() {
            println!("  the gateway process exited: {status}");
            failed = true;
            break;
        }
        if let Err(e) = health_probe(gw.ports[0]) {
            println!("  health request failed after it: {e}");
            failed = true;
        }
        let panics = gw.panics();
        if panics.len() > panics_seen {
            for p in &panics[panics_seen..] {
                println!("  the gateway panicked: {p}");
            }
            panics_seen = panics.len();
            failed = true;
        }
    }
    println!("gateway stderr (tail):\n{}", gw.stderr_tail(30));
    gw.stop();
    if failed {
        std::process::exit(1);
    }
}
