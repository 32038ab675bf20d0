//! JWT verification per algorithm, cold (signature checked) and through the
//! per-shard verified-token cache, and the API-key check.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use shardgate::auth::{hash_api_key, AuthPlan, Credentials, KeyView, TokenCache};
use shardgate::config::Authenticator;
use std::collections::BTreeMap;

const SECRET: &str = "bench-secret-0123456789";

fn keys() -> String {
    format!("{}/tests/keys", env!("CARGO_MANIFEST_DIR"))
}

fn plan() -> AuthPlan {
    let d = keys();
    let text = format!(
        r#"{{
        "HS256": Jwt(algorithms: [HS256], key: Secret("{SECRET}"), forward_claims: {{ "sub": "X-User-Id" }}),
        "RS256": Jwt(algorithms: [RS256], key: PemFile("{d}/rsa.pub.pem"), forward_claims: {{ "sub": "X-User-Id" }}),
        "PS256": Jwt(algorithms: [PS256], key: PemFile("{d}/rsa.pub.pem"), forward_claims: {{ "sub": "X-User-Id" }}),
        "ES256": Jwt(algorithms: [ES256], key: PemFile("{d}/ec.pub.pem"), forward_claims: {{ "sub": "X-User-Id" }}),
        "EdDSA": Jwt(algorithms: [EdDSA], key: PemFile("{d}/ed.pub.pem"), forward_claims: {{ "sub": "X-User-Id" }}),
        "keys": ApiKey(header: "x-api-key", consumers: {{ "c": "{}" }}),
    }}"#,
        hash_api_key("bench-key")
    );
    let auths: BTreeMap<String, Authenticator> = ron::Options::default()
        .with_default_extension(
            ron::extensions::Extensions::IMPLICIT_SOME
                | ron::extensions::Extensions::UNWRAP_VARIANT_NEWTYPES,
        )
        .from_str(&text)
        .expect("bench config");
    AuthPlan::compile(&auths).expect("compile")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn token(alg: Algorithm) -> String {
    let claims = serde_json::json!({"sub": "user-42", "exp": now() + 3600, "scope": "a b"});
    let d = keys();
    let read = |f: &str| std::fs::read(format!("{d}/{f}")).expect("key file");
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 | Algorithm::PS256 => {
            EncodingKey::from_rsa_pem(&read("rsa.key")).expect("rsa")
        }
        Algorithm::ES256 => EncodingKey::from_ec_pem(&read("ec.pk8.key")).expect("ec"),
        _ => EncodingKey::from_ed_pem(&read("ed.key")).expect("ed"),
    };
    encode(&Header::new(alg), &claims, &key).expect("encode")
}

fn bench(c: &mut Criterion) {
    let p = plan();
    let mut g = c.benchmark_group("jwt_verify");
    for alg in [
        Algorithm::HS256,
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ] {
        let name = format!("{alg:?}");
        let idx = p.index_of(&name).expect("authenticator");
        let auth = format!("Bearer {}", token(alg));
        let no_header = |_: &str| None;
        let creds = Credentials {
            authorization: Some(auth.as_bytes()),
            header: &no_header,
            query: None,
            client_cert: None,
        };
        assert!(
            p.authenticate(&[idx], &creds).is_ok(),
            "{name} token must verify"
        );
        g.bench_function(format!("{name}/cold"), |b| {
            b.iter(|| p.authenticate(black_box(&[idx]), black_box(&creds)))
        });
        let mut cache = TokenCache::new(1024);
        let t = now() * 1000;
        g.bench_function(format!("{name}/cached"), |b| {
            b.iter(|| {
                p.authenticate_cached(
                    black_box(&[idx]),
                    black_box(&creds),
                    Some(&mut cache),
                    &KeyView::default(),
                    t,
                )
            })
        });
    }
    g.finish();
    let idx = p.index_of("keys").expect("keys");
    let key_header = |n: &str| (n == "x-api-key").then_some(&b"bench-key"[..]);
    let creds = Credentials {
        authorization: None,
        header: &key_header,
        query: None,
        client_cert: None,
    };
    assert!(p.authenticate(&[idx], &creds).is_ok());
    c.bench_function("api_key/header", |b| {
        b.iter(|| p.authenticate(black_box(&[idx]), black_box(&creds)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
