//! Authentication and authorization through the real gateway: tokens minted
//! here (HS, RS, PS, ES, EdDSA with the checked-in test keys), real requests,
//! and what the backend received checked at the backend.

mod common;

use common::*;
use jsonwebtoken::{encode, jwk::Jwk, Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "integration-test-hmac-secret";

fn keys_dir() -> String {
    format!("{}/tests/keys", env!("CARGO_MANIFEST_DIR"))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({"sub": sub, "iss": "https://auth.test", "aud": "api", "exp": now() + 300});
    if let (Some(m), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            m.insert(k.clone(), v.clone());
        }
    }
    c
}

fn hs(c: &serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        c,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn signed(alg: Algorithm, key_file: &str, kid: Option<&str>, c: &serde_json::Value) -> String {
    let pem = std::fs::read(format!("{}/{key_file}", keys_dir())).unwrap();
    let key = match alg {
        Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_ed_pem(&pem),
    }
    .unwrap();
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    encode(&h, c, &key).unwrap()
}

/// A gateway with HS, RS, ES and EdDSA authenticators, an API key, and routes
/// that are public, authenticated, scope- and role-protected.
fn gateway(backend: &Backend) -> Gateway {
    let d = keys_dir();
    let api_hash = shardgate::auth::hash_api_key("secret-key-1");
    let text = format!(
        r#"Gateway(
    shards: Count(2),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    limits_http: {LIMITS},
    upstreams: {{ "app": Upstream(targets: ["{addr}"]) }},
    authenticators: {{
        "hs": Jwt(algorithms: [HS256], key: Secret("{SECRET}"), issuer: "https://auth.test", audience: "api",
                  forward_claims: {{ "sub": "X-User-Id", "role": "X-Role" }}, roles_claim: "role"),
        "rs": Jwt(algorithms: [RS256, PS256], key: PemFile("{d}/rsa.pub.pem"), forward_claims: {{ "sub": "X-User-Id" }}),
        "es": Jwt(algorithms: [ES256], key: PemFile("{d}/ec.pub.pem"), forward_claims: {{ "sub": "X-User-Id" }}),
        "ed": Jwt(algorithms: [EdDSA], key: PemFile("{d}/ed.pub.pem"), forward_claims: {{ "sub": "X-User-Id" }}),
        "keys": ApiKey(header: "X-Api-Key", query: "api_key", consumers: {{ "mobile-app": "{api_hash}" }}),
    }},
    routes: [
        Route(name: "public", match: Match(path_prefix: "/public"), upstream: "app"),
        Route(name: "any", match: Match(path_prefix: "/any"), upstream: "app",
              auth: Required(["hs", "rs", "es", "ed", "keys"])),
        Route(name: "scoped", match: Match(path_prefix: "/scoped"), upstream: "app",
              auth: Required(["hs"]), scopes: ["users:read"]),
        Route(name: "admin", match: Match(path_prefix: "/admin"), upstream: "app",
              auth: Required(["hs"]), roles: ["admin"], keep_authorization: false),
    ],
)"#,
        addr = backend.addr()
    );
    Gateway::start(&text)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn hs256_token_is_accepted_and_claims_are_forwarded() {
    let backend = Backend::echo("b");
    let gw = gateway(&backend);
    let t = hs(&claims("user-7", json!({"role": "editor"})));
    let r = get_with(gw.port, "/any/x", &[("Authorization", &bearer(&t))]);
    assert_eq!(r.status, 200);
    let seen = backend.last();
    assert_eq!(seen.header("x-user-id"), Some("user-7"));
    assert_eq!(seen.header("x-role"), Some("editor"));
    assert_eq!(
        seen.header("authorization"),
        Some(bearer(&t).as_str()),
        "kept by default"
    );
}

#[test]
fn every_public_key_algorithm_is_accepted() {
    let backend = Backend::echo("b");
    let gw = gateway(&backend);
    for (alg, file) in [
        (Algorithm::RS256, "rsa.key"),
        (Algorithm::PS256, "rsa.key"),
        (Algorithm::ES256, "ec.pk8.key"),
        (Algorithm::EdDSA, "ed.key"),
    ] {
        let t = signed(
            alg,
            file,
            None,
            &claims(&format!("{alg:?}-user"), json!({})),
        );
        let r = get_with(gw.port, "/any", &[("Authorization", &bearer(&t))]);
        assert_eq!(r.status, 200, "{alg:?}: {}", r.text());
        assert_eq!(
            backend.last().header("x-user-id"),
            Some(format!("{alg:?}-user").as_str())
        );
    }
}

#[test]
fn rejected_tokens_get_401_with_challenge_and_never_reach_the_backend() {
    let backend = Backend::echo("b");
    let gw = gateway(&backend);
    let rsa_pub = std::fs::read(format!("{}/rsa.pub.pem", keys_dir())).unwrap();
    let good = claims("u", json!({}));
    let cases: Vec<(&str, String)> = vec![
        ("expired", hs(&claims("u", json!({"exp": now() - 3600})))),
        (
            "not yet valid",
            hs(&claims("u", json!({"nbf": now() + 3600}))),
        ),
        (
            "wrong issuer",
            hs(&claims("u", json!({"iss": "https://evil.test"}))),
        ),
        ("wrong audience", hs(&claims("u", json!({"aud": "other"})))),
        (
            "bad signature",
            encode(
                &Header::new(Algorithm::HS256),
                &good,
                &EncodingKey::from_secret(b"not-the-secret-at-all"),
            )
            .unwrap(),
        ),
        (
            // Algorithm confusion: HS256 signed with the RSA public key as the secret.
            "alg confusion",
            encode(
                &Header::new(Algorithm::HS256),
                &good,
                &EncodingKey::from_secret(&rsa_pub),
            )
            .unwrap(),
        ),
        (
            "alg none",
            format!(
                "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
                shardgate::auth::introspect::base64url(good.to_string().as_bytes())
            ),
        ),
        ("garbage", "not.a.token".into()),
    ];
    for (what, t) in cases {
        let r = get_with(gw.port, "/any", &[("Authorization", &bearer(&t))]);
        assert_json_error(&r, 401);
        let challenge = r.header("www-authenticate").unwrap_or_default().to_string();
        assert!(
            challenge.starts_with("Bearer") && challenge.contains("invalid_token"),
            "{what}: {challenge}"
        );
        assert!(
            !r.text().contains(&t),
            "{what}: the error body must not echo the token"
        );
    }
    let r = get(gw.port, "/any");
    assert_json_error(&r, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"shardgate\"")
    );
    assert_eq!(
        backend.count(),
        0,
        "no rejected request reached the backend"
    );
}

#[test]
fn scopes_and_roles_give_403_when_missing() {
    let backend = Backend::echo("b");
    let gw = gateway(&backend);
    let with_scope = hs(&claims("u", json!({"scope": "users:read orders:read"})));
    let without = hs(&claims("u", json!({"scope": "orders:read"})));
    assert_eq!(
        get_with(
            gw.port,
            "/scoped",
            &[("Authorization", &bearer(&with_scope))]
        )
        .status,
        200
    );
    let r = get_with(gw.port, "/scoped", &[("Authorization", &bearer(&without))]);
    assert_json_error(&r, 403);
    assert!(r
        .header("www-authenticate")
        .unwrap_or_default()
        .contains("insufficient_scope"));

    let admin = hs(&claims("root", json!({"role": "admin"})));
    let user = hs(&claims("joe", json!({"role": "user"})));
    assert_json_error(
        &get_with(gw.port, "/admin", &[("Authorization", &bearer(&user))]),
        403,
    );
    let r = get_with(gw.port, "/admin", &[("Authorization", &bearer(&admin))]);
    assert_eq!(r.status, 200);
    let seen = backend.last();
    assert_eq!(
        seen.header("authorization"),
        None,
        "keep_authorization: false removes it"
    );
    assert_eq!(seen.header("x-user-id"), Some("root"));
}

#[test]
fn spoofed_identity_headers_are_stripped_on_every_route() {
    let backend = Backend::echo("b");
    let gw = gateway(&backend);
    let spoof = [
        ("X-User-Id", "admin"),
        ("X-Role", "admin"),
        ("X-Consumer", "partner"),
    ];
    assert_eq!(get_with(gw.port, "/public/x", &spoof).status, 200);
    let seen = backend.last();
    for (h, _) in spoof {
        assert_eq!(
            seen.header(h),
            None,
            "{h} from the client reached a public route"
        );
    }
    let t = hs(&claims("real-user", json!({})));
    let mut hdrs = spoof.to_vec();
    let auth = bearer(&t);
    hdrs.push(("Authorization", &auth));
    assert_eq!(get_with(gw.port, "/any", &hdrs).status, 200);
    let seen = backend.last();
    assert_eq!(seen.headers_named("x-user-id"), vec!["real-user"]);
    assert_eq!(seen.header("x-role"), None);
    assert_eq!(seen.header("x-consumer"), None);
}

#[test]
fn api_keys_in_header_or_query_map_to_consumers() {
    let backend = Backend::echo("b");
    let gw = gateway(&backend);
    assert_eq!(
        get_with(gw.port, "/any", &[("X-Api-Key", "secret-key-1")]).status,
        200
    );
    assert_eq!(backend.last().header("x-consumer"), Some("mobile-app"));
    let r = get(gw.port, "/any/q?a=1&api_key=secret-key-1&b=2");
    assert_eq!(r.status, 200);
    let seen = backend.last();
    assert_eq!(
        seen.target, "/any/q?a=1&b=2",
        "the key is removed from the query"
    );
    assert_eq!(seen.header("x-consumer"), Some("mobile-app"));
    let r = get_with(gw.port, "/any", &[("X-Api-Key", "wrong")]);
    assert_json_error(&r, 401);
}

fn jwks_with(kid: &str, key_file: &str, alg: Algorithm) -> String {
    let pem = std::fs::read(format!("{}/{key_file}", keys_dir())).unwrap();
    let enc = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        _ => EncodingKey::from_ec_pem(&pem),
    }
    .unwrap();
    let mut jwk = Jwk::from_encoding_key(&enc, alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    json!({ "keys": [jwk] }).to_string()
}

#[test]
fn jwks_file_selects_keys_by_kid_and_rotates_on_reload() {
    let backend = Backend::echo("b");
    let dir = temp_dir();
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks_with("k1", "rsa.key", Algorithm::RS256)).unwrap();
    let text = format!(
        r#"Gateway(
    shards: Count(2),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    upstreams: {{ "app": Upstream(targets: ["{addr}"]) }},
    authenticators: {{ "jwks": Jwt(algorithms: [RS256], key: JwksFile("{p}"), forward_claims: {{ "sub": "X-User-Id" }}) }},
    routes: [ Route(name: "r", match: Match(path_prefix: "/"), upstream: "app", auth: Required(["jwks"])) ],
)"#,
        addr = backend.addr(),
        p = path.display()
    );
    let gw = Gateway::start(&text);
    let c = claims("kid-user", json!({}));
    let old = signed(Algorithm::RS256, "rsa.key", Some("k1"), &c);
    // Several requests, so every shard has verified (and cached) the old token.
    for _ in 0..6 {
        assert_eq!(
            get_with(gw.port, "/", &[("Authorization", &bearer(&old))]).status,
            200
        );
    }
    assert_eq!(backend.last().header("x-user-id"), Some("kid-user"));
    let unknown = signed(Algorithm::RS256, "rsa.key", Some("k2"), &c);
    assert_json_error(
        &get_with(gw.port, "/", &[("Authorization", &bearer(&unknown))]),
        401,
    );

    // Rotate: the JWKS now holds only an RSA key under k2; reload.
    std::fs::write(&path, jwks_with("k2", "rsa.key", Algorithm::RS256)).unwrap();
    gw.send_signal("HUP");
    assert!(
        gw.wait_stderr("reloaded", std::time::Duration::from_secs(10)),
        "{}",
        gw.stderr()
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    for _ in 0..6 {
        assert_json_error(
            &get_with(gw.port, "/", &[("Authorization", &bearer(&old))]),
            401,
        );
    }
    assert_eq!(
        get_with(gw.port, "/", &[("Authorization", &bearer(&unknown))]).status,
        200
    );
}

#[test]
fn config_refuses_unknown_authenticators_and_key_confusion() {
    let dir = temp_dir();
    let bad = dir.join("bad.ron");
    std::fs::write(
        &bad,
        format!(
            r#"Gateway(
    listeners: [Listener(name: "m", bind: "127.0.0.1:1")],
    upstreams: {{ "app": Upstream(targets: ["127.0.0.1:2"]) }},
    authenticators: {{ "mixed": Jwt(algorithms: [HS256], key: PemFile("{}/rsa.pub.pem")) }},
    routes: [ Route(name: "r", match: Match(path_prefix: "/"), upstream: "app", auth: Required(["nope"])) ],
)"#,
            keys_dir()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authenticators.mixed.algorithms"), "{err}");
    assert!(
        err.contains("routes[0].auth: unknown authenticator \"nope\""),
        "{err}"
    );
}

#[test]
fn jwks_url_is_fetched_refreshed_and_refetched_for_unknown_kid() {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    let backend = Backend::echo("b");
    let doc = Arc::new(Mutex::new(jwks_with("k1", "rsa.key", Algorithm::RS256)));
    let served = doc.clone();
    let idp = Backend::start(move |_| {
        Response::ok(served.lock().unwrap().clone()).header("Content-Type", "application/json")
    });
    let text = format!(
        r#"Gateway(
    shards: Count(2),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    upstreams: {{ "app": Upstream(targets: ["{addr}"]) }},
    authenticators: {{ "idp": Jwt(algorithms: [RS256], key: Jwks(url: "http://{idp}/.well-known/jwks.json", refresh_s: 3600),
                                  forward_claims: {{ "sub": "X-User-Id" }}) }},
    routes: [ Route(name: "r", match: Match(path_prefix: "/"), upstream: "app", auth: Required(["idp"])) ],
)"#,
        addr = backend.addr(),
        idp = idp.addr()
    );
    let gw = Gateway::start(&text);
    let c = claims("jwks-user", json!({}));
    let t1 = signed(Algorithm::RS256, "rsa.key", Some("k1"), &c);
    let t2 = signed(Algorithm::RS256, "rsa.key", Some("k2"), &c);
    assert_eq!(
        get_with(gw.port, "/", &[("Authorization", &bearer(&t1))]).status,
        200
    );
    assert_eq!(backend.last().header("x-user-id"), Some("jwks-user"));
    let fetches_before = idp.count();

    // Rotate at the identity provider: k1 is gone, k2 is new. The refresh
    // period is an hour, so only the unknown-kid refetch can pick it up.
    *doc.lock().unwrap() = jwks_with("k2", "rsa.key", Algorithm::RS256);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = 0;
    while Instant::now() < deadline {
        status = get_with(gw.port, "/", &[("Authorization", &bearer(&t2))]).status;
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        status,
        200,
        "the new kid was never accepted; stderr:\n{}",
        gw.stderr()
    );
    // Every shard got the new set: the removed key is refused everywhere,
    // even where the old token had been cached.
    for _ in 0..6 {
        assert_json_error(
            &get_with(gw.port, "/", &[("Authorization", &bearer(&t1))]),
            401,
        );
    }
    // Unknown kids do not hammer the identity provider: refetches are rate-limited.
    let t3 = signed(Algorithm::RS256, "rsa.key", Some("k3"), &c);
    for _ in 0..30 {
        assert_json_error(
            &get_with(gw.port, "/", &[("Authorization", &bearer(&t3))]),
            401,
        );
    }
    let fetches = idp.count() - fetches_before;
    assert!(
        fetches <= 4,
        "{fetches} JWKS fetches for one rotation and 30 unknown-kid requests"
    );
}

#[test]
fn a_jwks_refresh_period_too_long_for_the_clock_means_never() {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    let backend = Backend::echo("b");
    let doc = Arc::new(Mutex::new(jwks_with("k1", "rsa.key", Algorithm::RS256)));
    let served = doc.clone();
    let idp = Backend::start(move |_| {
        Response::ok(served.lock().unwrap().clone()).header("Content-Type", "application/json")
    });
    let text = format!(
        r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    upstreams: {{ "app": Upstream(targets: ["{addr}"]) }},
    authenticators: {{ "idp": Jwt(algorithms: [RS256],
                                  key: Jwks(url: "http://{idp}/.well-known/jwks.json", refresh_s: 18446744073709551615)) }},
    routes: [ Route(name: "r", match: Match(path_prefix: "/"), upstream: "app", auth: Required(["idp"])) ],
)"#,
        addr = backend.addr(),
        idp = idp.addr()
    );
    let gw = Gateway::start(&text);
    let c = claims("jwks-user", json!({}));
    let t1 = signed(Algorithm::RS256, "rsa.key", Some("k1"), &c);
    assert_eq!(
        get_with(gw.port, "/", &[("Authorization", &bearer(&t1))]).status,
        200,
        "stderr:\n{}",
        gw.stderr()
    );
    // The refresher is alive: an unknown kid still triggers a refetch.
    *doc.lock().unwrap() = jwks_with("k2", "rsa.key", Algorithm::RS256);
    let t2 = signed(Algorithm::RS256, "rsa.key", Some("k2"), &c);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = 0;
    while Instant::now() < deadline {
        status = get_with(gw.port, "/", &[("Authorization", &bearer(&t2))]).status;
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(status, 200, "stderr:\n{}", gw.stderr());
}

fn introspection_gateway(backend: &Backend, idp_addr: &str) -> Gateway {
    let text = format!(
        r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    upstreams: {{ "app": Upstream(targets: ["{addr}"]) }},
    authenticators: {{
        "opaque": Introspection(url: "http://{idp_addr}/oauth/introspect", client_id: "gateway", client_secret: "s3cret",
                                timeout_ms: 1000, cache_ttl_s: 1, forward_claims: {{ "sub": "X-User-Id" }}),
    }},
    routes: [ Route(name: "r", match: Match(path_prefix: "/"), upstream: "app", auth: Required(["opaque"]), scopes: ["orders:read"]) ],
)"#,
        addr = backend.addr()
    );
    Gateway::start(&text)
}

#[test]
fn opaque_tokens_are_introspected_cached_and_revocable() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let backend = Backend::echo("b");
    let revoked = Arc::new(AtomicBool::new(false));
    let flag = revoked.clone();
    let idp = Backend::start(move |r| {
        let body = String::from_utf8_lossy(&r.body).to_string();
        let ok_auth = r.header("authorization") == Some("Basic Z2F0ZXdheTpzM2NyZXQ=");
        let answer = if !ok_auth {
            return Response::ok("{}").status(401);
        } else if body.starts_with("token=opaque-good&") && !flag.load(Ordering::SeqCst) {
            json!({"active": true, "sub": "opaque-user", "scope": "orders:read", "exp": now() + 300})
        } else if body.starts_with("token=opaque-noscope&") {
            json!({"active": true, "sub": "u2", "scope": "other", "exp": now() + 300})
        } else {
            json!({"active": false})
        };
        Response::ok(answer.to_string()).header("Content-Type", "application/json")
    });
    let gw = introspection_gateway(&backend, &idp.addr());
    let good = [("Authorization", "Bearer opaque-good")];
    assert_eq!(get_with(gw.port, "/a", &good).status, 200);
    assert_eq!(backend.last().header("x-user-id"), Some("opaque-user"));
    let calls = idp.count();
    assert_eq!(get_with(gw.port, "/b", &good).status, 200);
    assert_eq!(
        idp.count(),
        calls,
        "the second request is served from the cache"
    );

    assert_json_error(
        &get_with(gw.port, "/", &[("Authorization", "Bearer opaque-unknown")]),
        401,
    );
    assert_json_error(
        &get_with(gw.port, "/", &[("Authorization", "Bearer opaque-noscope")]),
        403,
    );

    // Revoked at the provider: refused once the 1 s cache TTL has passed.
    revoked.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = 200;
    while Instant::now() < deadline && status == 200 {
        std::thread::sleep(Duration::from_millis(200));
        status = get_with(gw.port, "/c", &good).status;
    }
    assert_eq!(
        status, 401,
        "a revoked token kept working past the cache TTL"
    );
}

#[test]
fn an_introspection_answer_is_cached_for_its_whole_ttl_whenever_in_a_second_it_came() {
    use std::time::{Duration, Instant};
    // Eleven tokens first sent 100 ms apart, so that several come in the
    // last 400 ms of a second whatever the phase, and each sent again
    // 400 ms after its first request: within the 1 s TTL, so from the
    // cache. An expiry rounded to whole seconds would have lost the late
    // ones at the next second's start.
    const TOKENS: usize = 11;
    const AGAIN_AFTER: usize = 4;
    let backend = Backend::echo("b");
    let idp = Backend::start(|_| {
        let answer =
            json!({"active": true, "sub": "u", "scope": "orders:read", "exp": now() + 300});
        Response::ok(answer.to_string()).header("Content-Type", "application/json")
    });
    let gw = introspection_gateway(&backend, &idp.addr());
    let start = Instant::now();
    for step in 0..TOKENS + AGAIN_AFTER {
        let at = start + Duration::from_millis(100 * step as u64);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let mut sent = Vec::new();
        if step < TOKENS {
            sent.push(step);
        }
        if let Some(again) = step.checked_sub(AGAIN_AFTER) {
            sent.push(again);
        }
        for token in sent {
            let auth = format!("Bearer phase-{token}");
            let r = get_with(gw.port, "/", &[("Authorization", auth.as_str())]);
            assert_eq!(r.status, 200, "token {token} at step {step}");
        }
    }
    assert_eq!(
        idp.count(),
        TOKENS,
        "introspection calls for {TOKENS} tokens each sent twice 400 ms apart"
    );
}

#[test]
fn unreachable_identity_provider_gives_503() {
    let backend = Backend::echo("b");
    let dead = format!("127.0.0.1:{}", closed_port());
    let gw = introspection_gateway(&backend, &dead);
    let r = get_with(gw.port, "/", &[("Authorization", "Bearer whatever")]);
    assert_json_error(&r, 503);
    assert_eq!(backend.count(), 0);
    // Still serving afterwards.
    assert_json_error(&get_with(gw.port, "/", &[]), 401);
}

/// A one-document HTTPS server with the checked-in test certificate.
fn https_jwks_server(document: String) -> u16 {
    use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    use std::io::{Read, Write};
    use std::sync::Arc;
    let d = keys_dir();
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(format!("{d}/tls-server.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(format!("{d}/tls-server.pk8.key")).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = config.clone();
            let document = document.clone();
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut s = rustls::StreamOwned::new(conn, tcp);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{document}",
                    document.len()
                );
                let _ = s.write_all(resp.as_bytes());
                s.conn.send_close_notify();
                let _ = s.flush();
            });
        }
    });
    port
}

#[test]
fn jwks_over_https_with_a_private_ca() {
    let backend = Backend::echo("b");
    let port = https_jwks_server(jwks_with("tls-k1", "rsa.key", Algorithm::RS256));
    let d = keys_dir();
    let cfg = |ca: &str| {
        format!(
            r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    upstreams: {{ "app": Upstream(targets: ["{addr}"]) }},
    authenticators: {{ "idp": Jwt(algorithms: [RS256], key: Jwks(url: "https://localhost:{port}/jwks.json"{ca}),
                                  forward_claims: {{ "sub": "X-User-Id" }}) }},
    routes: [ Route(name: "r", match: Match(path_prefix: "/"), upstream: "app", auth: Required(["idp"])) ],
)"#,
            addr = backend.addr()
        )
    };
    let token = signed(
        Algorithm::RS256,
        "rsa.key",
        Some("tls-k1"),
        &claims("tls-user", json!({})),
    );
    let gw = Gateway::start(&cfg(&format!(", ca_file: \"{d}/tls-ca.pem\"")));
    assert_eq!(
        get_with(gw.port, "/", &[("Authorization", &bearer(&token))]).status,
        200
    );
    assert_eq!(backend.last().header("x-user-id"), Some("tls-user"));

    // Trusting only the bundled public roots, the private CA is refused: no
    // keys, so the token is refused, and the failure is logged.
    let untrusted = Gateway::start(&cfg(""));
    assert_json_error(
        &get_with(untrusted.port, "/", &[("Authorization", &bearer(&token))]),
        401,
    );
    assert!(
        untrusted.stderr().contains("JWKS fetch failed"),
        "{}",
        untrusted.stderr()
    );
}

#[test]
fn secret_from_environment_and_leeway() {
    let backend = Backend::echo("b");
    // A variable name no other test uses; the gateway inherits the environment.
    std::env::set_var("SHARDGATE_TEST_JWT_SECRET", "secret-from-the-environment");
    let text = format!(
        r#"Gateway(
    shards: Count(1),
    listeners: [Listener(name: "main", bind: "127.0.0.1:$PORT")],
    upstreams: {{ "app": Upstream(targets: ["{addr}"]) }},
    authenticators: {{ "env": Jwt(algorithms: [HS256, HS512], key: FromEnv("SHARDGATE_TEST_JWT_SECRET"), leeway_s: 120,
                                  required_claims: ["sub"]) }},
    routes: [ Route(name: "r", match: Match(path_prefix: "/"), upstream: "app", auth: Required(["env"])) ],
)"#,
        addr = backend.addr()
    );
    let gw = Gateway::start(&text);
    let key = EncodingKey::from_secret(b"secret-from-the-environment");
    let mint = |alg: Algorithm, c: serde_json::Value| encode(&Header::new(alg), &c, &key).unwrap();
    let ok = |t: &str| get_with(gw.port, "/", &[("Authorization", &bearer(t))]).status;
    assert_eq!(
        ok(&mint(
            Algorithm::HS512,
            json!({"sub": "a", "exp": now() + 60})
        )),
        200
    );
    // Expired 60 s ago: inside the 120 s leeway. Expired 300 s ago: outside.
    assert_eq!(
        ok(&mint(
            Algorithm::HS256,
            json!({"sub": "a", "exp": now() - 60})
        )),
        200
    );
    assert_eq!(
        ok(&mint(
            Algorithm::HS256,
            json!({"sub": "a", "exp": now() - 300})
        )),
        401
    );
    // Not yet valid by 60 s: inside the leeway; by 600 s: refused.
    assert_eq!(
        ok(&mint(
            Algorithm::HS256,
            json!({"sub": "a", "exp": now() + 900, "nbf": now() + 60})
        )),
        200
    );
    assert_eq!(
        ok(&mint(
            Algorithm::HS256,
            json!({"sub": "a", "exp": now() + 900, "nbf": now() + 600})
        )),
        401
    );
    // A required claim missing.
    assert_eq!(ok(&mint(Algorithm::HS256, json!({"exp": now() + 60}))), 401);
    // HS384 is not in the list.
    assert_eq!(
        ok(&mint(
            Algorithm::HS384,
            json!({"sub": "a", "exp": now() + 60})
        )),
        401
    );
}
