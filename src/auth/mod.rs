//! Authentication and authorization at the edge: JWT bearer tokens and API
//! keys establish an [`Identity`]; a route's policy (authenticators, scopes,
//! roles) decides whether it may pass; configured claims are forwarded as
//! headers, after the same headers from the client were stripped.
//!
//! Compiled once per config ([`AuthPlan::compile`]); checking a request is a
//! pure function of the request and the plan, run on the shard.
pub mod introspect;
pub mod jwks;

use crate::config::{ApiKeyAuth, Authenticator, IntrospectionAuth, JwtAuth, KeySource};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Who the caller is, as far as the upstream is told.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Headers to add to the upstream request (name, value).
    pub headers: Vec<(String, String)>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Roles.
    pub roles: Vec<String>,
    /// The caller's top-level scalar claims as text (name, value), for
    /// `{claims.NAME}` templates of composite routes. Bounded: at most
    /// [`MAX_CLAIMS`] claims of at most [`MAX_CLAIM_BYTES`] each.
    pub claims: Vec<(String, String)>,
    /// Index of the authenticator that established it.
    pub authenticator: usize,
}

/// Most claims kept in an [`Identity`].
pub const MAX_CLAIMS: usize = 32;
/// Longest claim value kept in an [`Identity`].
pub const MAX_CLAIM_BYTES: usize = 1024;

/// The scalar top-level claims of a token or introspection answer.
fn scalar_claims(claims: &Value) -> Vec<(String, String)> {
    let Some(map) = claims.as_object() else {
        return Vec::new();
    };
    map.iter()
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            (text.len() <= MAX_CLAIM_BYTES).then(|| (k.clone(), text))
        })
        .take(MAX_CLAIMS)
        .collect()
}

/// Why a request was not let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No credentials of an accepted kind (401).
    Missing,
    /// Credentials present but not valid (401, `invalid_token`).
    Invalid(String),
    /// Authenticated but lacking a scope or role (403).
    Forbidden(String),
    /// The identity provider could not be asked (503).
    Unavailable,
}

/// One verification key, with the `kid` it is published under.
pub struct JwtKey {
    kid: Option<String>,
    key: DecodingKey,
}

struct JwtVerifier {
    keys: Vec<JwtKey>,
    /// Where the keys are refreshed from, if anywhere (`authenticator` is set by [`AuthPlan::jwks_sources`]).
    source: Option<jwks::Source>,
    validation: Validation,
    forward: Vec<(String, String)>,
    roles_claim: String,
}

struct ApiKeyVerifier {
    header: Option<String>,
    query: Option<String>,
    /// (consumer, sha256 of the key)
    consumers: Vec<(String, [u8; 32])>,
    scopes: BTreeMap<String, Vec<String>>,
    forward_as: String,
}

enum Verifier {
    Jwt(Box<JwtVerifier>),
    ApiKey(ApiKeyVerifier),
    Introspection(Box<introspect::Introspector>),
    ClientCert(Box<crate::tls::client_auth::ClientCertVerifier>),
}

/// All authenticators of a config, compiled.
pub struct AuthPlan {
    verifiers: Vec<(String, Verifier)>,
    /// Lower-case header names that carry identity: always stripped from clients.
    pub identity_headers: Vec<String>,
}

impl AuthPlan {
    /// The authenticators' names, by index.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.verifiers.iter().map(|(n, _)| n.as_str())
    }
}

impl std::fmt::Debug for AuthPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.verifiers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("AuthPlan")
            .field("authenticators", &names)
            .finish()
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let h = s.strip_prefix("sha256:")?;
    if h.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `sha256:<hex>` of a key, the form API keys are stored in.
pub fn hash_api_key(key: &str) -> String {
    let d = Sha256::digest(key.as_bytes());
    let mut s = String::from("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn compile_jwt(name: &str, j: &JwtAuth) -> Result<JwtVerifier, String> {
    let err = |e: String| format!("authenticators.{name}.key: {e}");
    let keys = match &j.key {
        KeySource::Secret(s) => vec![JwtKey {
            kid: None,
            key: DecodingKey::from_secret(s.as_bytes()),
        }],
        KeySource::FromEnv(var) => {
            let s = std::env::var(var)
                .map_err(|_| err(format!("environment variable {var} is not set")))?;
            vec![JwtKey {
                kid: None,
                key: DecodingKey::from_secret(s.as_bytes()),
            }]
        }
        KeySource::PemFile(path) => {
            let pem = std::fs::read(path).map_err(|e| err(format!("cannot read {path:?}: {e}")))?;
            let family = j.algorithms.first().map(|a| a.family());
            use jsonwebtoken::AlgorithmFamily as F;
            let key = match family {
                Some(F::Rsa) => DecodingKey::from_rsa_pem(&pem),
                Some(F::Ec) => DecodingKey::from_ec_pem(&pem),
                Some(F::Ed) => DecodingKey::from_ed_pem(&pem),
                _ => return Err(err("a PEM key needs RS*/PS*/ES*/EdDSA algorithms".into())),
            }
            .map_err(|e| err(format!("{path:?} is not a usable public key: {e}")))?;
            vec![JwtKey { kid: None, key }]
        }
        KeySource::JwksFile(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| err(format!("cannot read {path:?}: {e}")))?;
            jwks::keys_from_document(&text).map_err(|e| err(format!("{path:?}: {e}")))?
        }
        KeySource::Jwks { url, ca_file, .. } => match jwks::fetch(url, ca_file.as_deref()) {
            Ok(keys) => keys,
            Err(e) => {
                // Serve anyway: tokens are refused (401) until a refresh succeeds.
                eprintln!("shardgate: authenticators.{name}: JWKS fetch failed, no keys yet: {e}");
                Vec::new()
            }
        },
    };
    let mut validation = Validation::new(j.algorithms.first().copied().unwrap_or(Algorithm::HS256));
    validation.algorithms = j.algorithms.clone();
    validation.leeway = j.leeway_s;
    validation.validate_nbf = true;
    let mut required: Vec<&str> = vec!["exp"];
    required.extend(j.required_claims.iter().map(String::as_str));
    if let Some(iss) = &j.issuer {
        validation.set_issuer(&[iss]);
        required.push("iss");
    }
    match &j.audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    let source = match &j.key {
        KeySource::Jwks {
            url,
            refresh_s,
            ca_file,
        } => Some(jwks::Source {
            authenticator: 0,
            url: url.clone(),
            refresh: std::time::Duration::from_secs(*refresh_s),
            ca_file: ca_file.clone(),
        }),
        _ => None,
    };
    Ok(JwtVerifier {
        keys,
        source,
        validation,
        forward: j
            .forward_claims
            .iter()
            .map(|(c, h)| (c.clone(), h.clone()))
            .collect(),
        roles_claim: j.roles_claim.clone(),
    })
}

fn compile_introspection(
    name: &str,
    x: &IntrospectionAuth,
) -> Result<introspect::Introspector, String> {
    let err = |e: String| format!("authenticators.{name}.url: {e}");
    let (tls, addr, host, path) = jwks::split_url(&x.url).map_err(err)?;
    let addr = crate::config::resolve(&addr).map_err(err)?;
    let tls = if tls {
        let settings = crate::config::UpstreamTls {
            ca_file: x.ca_file.clone(),
            ..Default::default()
        };
        let config = crate::tls::client_config(Some(&settings)).map_err(err)?;
        let name = crate::config::target_host(&host).to_string();
        let name = rustls_pki_types::ServerName::try_from(name)
            .map_err(|_| err(format!("{host:?} is not a usable TLS server name")))?;
        Some(crate::tls::UpstreamTlsPlan {
            config: std::sync::Arc::new(config),
            names: vec![name],
        })
    } else {
        None
    };
    Ok(introspect::Introspector {
        addr,
        tls,
        host,
        path,
        basic: format!(
            "Basic {}",
            introspect::base64(format!("{}:{}", x.client_id, x.client_secret).as_bytes())
        ),
        timeout: std::time::Duration::from_millis(x.timeout_ms.max(1)),
        ttl: std::time::Duration::from_secs(x.cache_ttl_s),
        forward: x
            .forward_claims
            .iter()
            .map(|(c, h)| (c.clone(), h.clone()))
            .collect(),
        roles_claim: x.roles_claim.clone(),
    })
}

fn compile_api_key(k: &ApiKeyAuth) -> ApiKeyVerifier {
    ApiKeyVerifier {
        header: k.header.as_ref().map(|h| h.to_ascii_lowercase()),
        query: k.query.clone(),
        consumers: k
            .consumers
            .iter()
            .filter_map(|(name, h)| hex32(h).map(|d| (name.clone(), d)))
            .collect(),
        forward_as: k.forward_as.clone(),
        scopes: k.scopes.clone(),
    }
}

/// What the authentication stage needs from a request.
pub struct Credentials<'a> {
    /// The `Authorization` header value.
    pub authorization: Option<&'a [u8]>,
    /// Looks up a header by lower-case name.
    pub header: &'a dyn Fn(&str) -> Option<&'a [u8]>,
    /// The query string.
    pub query: Option<&'a str>,
    /// The certificate chain the client presented on a TLS listener.
    pub client_cert: Option<&'a [rustls_pki_types::CertificateDer<'static>]>,
}

impl AuthPlan {
    /// Compiles every authenticator (reads key files).
    pub fn compile(auths: &BTreeMap<String, Authenticator>) -> Result<AuthPlan, String> {
        let mut verifiers = Vec::new();
        let mut identity_headers = Vec::new();
        for (name, a) in auths {
            let v = match a {
                Authenticator::Jwt(j) => {
                    identity_headers
                        .extend(j.forward_claims.values().map(|h| h.to_ascii_lowercase()));
                    Verifier::Jwt(Box::new(compile_jwt(name, j)?))
                }
                Authenticator::ApiKey(k) => {
                    identity_headers.push(k.forward_as.to_ascii_lowercase());
                    Verifier::ApiKey(compile_api_key(k))
                }
                Authenticator::Introspection(x) => {
                    identity_headers
                        .extend(x.forward_claims.values().map(|h| h.to_ascii_lowercase()));
                    Verifier::Introspection(Box::new(compile_introspection(name, x)?))
                }
                Authenticator::ClientCert(c) => {
                    identity_headers
                        .extend(c.forward_claims.values().map(|h| h.to_ascii_lowercase()));
                    Verifier::ClientCert(Box::new(
                        crate::tls::client_auth::ClientCertVerifier::compile(c)
                            .map_err(|e| format!("authenticator {name:?}: {e}"))?,
                    ))
                }
            };
            verifiers.push((name.clone(), v));
        }
        identity_headers.sort();
        identity_headers.dedup();
        Ok(AuthPlan {
            verifiers,
            identity_headers,
        })
    }

    /// The JWKS URLs to keep fresh.
    pub fn jwks_sources(&self) -> Vec<jwks::Source> {
        self.verifiers
            .iter()
            .enumerate()
            .filter_map(|(i, (_, v))| match v {
                Verifier::Jwt(j) => j.source.as_ref().map(|s| jwks::Source {
                    authenticator: i,
                    ..s.clone()
                }),
                _ => None,
            })
            .collect()
    }

    /// Index of a named authenticator.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.verifiers.iter().position(|(n, _)| n == name)
    }

    /// Query parameters that carry API keys (removed before forwarding).
    pub fn key_query_params(&self) -> Vec<String> {
        self.verifiers
            .iter()
            .filter_map(|(_, v)| match v {
                Verifier::ApiKey(k) => k.query.clone(),
                _ => None,
            })
            .collect()
    }

    /// Establishes the caller with the first of `allowed` that accepts the request.
    pub fn authenticate(
        &self,
        allowed: &[usize],
        creds: &Credentials<'_>,
    ) -> Result<Identity, Denied> {
        self.authenticate_cached(allowed, creds, None, &KeyView::default(), 0)
    }

    /// Like [`AuthPlan::authenticate`], consulting and filling a token cache;
    /// `now_ms` is the current Unix time in milliseconds.
    pub fn authenticate_cached(
        &self,
        allowed: &[usize],
        creds: &Credentials<'_>,
        mut cache: Option<&mut TokenCache>,
        keys: &KeyView<'_>,
        now_ms: u64,
    ) -> Result<Identity, Denied> {
        let token = bearer(creds);
        if let (Some(c), Some(t)) = (cache.as_deref(), token) {
            if let Some(id) = c.get(t, allowed, now_ms) {
                return Ok(id.clone());
            }
        }
        let mut invalid: Option<String> = None;
        for &i in allowed {
            let Some((_, v)) = self.verifiers.get(i) else {
                continue;
            };
            let outcome = match v {
                Verifier::Jwt(j) => verify_jwt(j, i, keys, creds).map(|(mut id, exp)| {
                    id.authenticator = i;
                    if let (Some(c), Some(t), Some(exp)) = (cache.as_deref_mut(), token, exp) {
                        c.insert(t, i, exp.saturating_mul(1000), id.clone(), now_ms);
                    }
                    id
                }),
                Verifier::ApiKey(k) => verify_api_key(k, creds).map(|mut id| {
                    id.authenticator = i;
                    id
                }),
                // Needs the network: done by `introspect_bearer` after this fails.
                Verifier::Introspection(_) => Err(Denied::Missing),
                Verifier::ClientCert(c) => match creds.client_cert {
                    None => Err(Denied::Missing),
                    Some(chain) => c.verify(chain).map(|mut id| {
                        id.authenticator = i;
                        id
                    }),
                },
            };
            match outcome {
                Ok(id) => return Ok(id),
                Err(Denied::Invalid(why)) => invalid = invalid.or(Some(why)),
                Err(_) => {}
            }
        }
        Err(invalid.map_or(Denied::Missing, Denied::Invalid))
    }
}

/// Key sets fetched after the config was compiled (per shard), and where to
/// ask for a refetch when a token's `kid` is unknown.
#[derive(Default)]
pub struct KeyView<'a> {
    /// Authenticator index → its newest key set.
    pub sets: Option<&'a std::collections::HashMap<usize, jwks::KeySet>>,
    /// Refetch requests (authenticator index); sent without blocking.
    pub refetch: Option<&'a crossbeam_channel::Sender<usize>>,
}

/// Unix time in milliseconds: the clock [`TokenCache`] entries expire on.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Per-shard cache of successful token verifications, so a repeated token
/// costs a map lookup instead of a signature check (tens of microseconds for
/// RS/ES). Keyed by the whole token (compared in full, hashed with a random
/// key), bounded to `capacity` entries, and an entry is never used at or
/// after the token's `exp`. Cleared on reload, since keys may have changed.
pub struct TokenCache {
    map: std::collections::HashMap<Box<str>, CachedToken>,
    capacity: usize,
}

struct CachedToken {
    verifier: usize,
    /// Unix time in milliseconds from which the entry is not used.
    until_ms: u64,
    identity: Identity,
}

impl TokenCache {
    /// An empty cache holding at most `capacity` tokens (0 disables it).
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            map: std::collections::HashMap::new(),
            capacity,
        }
    }

    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.map.clear();
    }

    fn get(&self, token: &str, allowed: &[usize], now_ms: u64) -> Option<&Identity> {
        let e = self.map.get(token)?;
        (now_ms < e.until_ms && allowed.contains(&e.verifier)).then_some(&e.identity)
    }

    /// Caches `identity` for `token` until `until_ms` (Unix milliseconds).
    fn insert(
        &mut self,
        token: &str,
        verifier: usize,
        until_ms: u64,
        identity: Identity,
        now_ms: u64,
    ) {
        if self.capacity == 0 || until_ms <= now_ms {
            return;
        }
        if self.map.len() >= self.capacity {
            self.map.retain(|_, e| e.until_ms > now_ms);
        }
        if self.map.len() >= self.capacity {
            // Still full of live tokens: drop an arbitrary half rather than grow.
            let drop: Vec<Box<str>> = self
                .map
                .keys()
                .take(self.capacity / 2 + 1)
                .cloned()
                .collect();
            for k in drop {
                self.map.remove(&k);
            }
        }
        self.map.insert(
            token.into(),
            CachedToken {
                verifier,
                until_ms,
                identity,
            },
        );
    }
}

impl AuthPlan {
    /// Checks a bearer token with the route's introspection authenticators
    /// (`None` when the route has none or there is no bearer token). Active
    /// answers go into `cache` until `min(now + ttl, exp)`.
    pub async fn introspect_bearer(
        &self,
        allowed: &[usize],
        creds: &Credentials<'_>,
        cache: &std::cell::RefCell<TokenCache>,
        now_ms: u64,
    ) -> Option<Result<Identity, Denied>> {
        let token = bearer(creds)?;
        let mut outcome = None;
        for &i in allowed {
            let Some((_, Verifier::Introspection(x))) = self.verifiers.get(i) else {
                continue;
            };
            match introspect::introspect(x, token).await {
                Ok(answer) if answer.get("active").and_then(Value::as_bool) == Some(true) => {
                    let exp_ms = answer
                        .get("exp")
                        .and_then(Value::as_u64)
                        .map(|e| e.saturating_mul(1000));
                    if exp_ms.is_some_and(|e| e <= now_ms) {
                        outcome = Some(Err(Denied::Invalid("token expired".into())));
                        continue;
                    }
                    let mut id = identity_from(&x.forward, &x.roles_claim, &answer);
                    id.authenticator = i;
                    // Milliseconds, so a TTL of one second is one second
                    // whenever in a second the answer came.
                    let ttl_ms = u64::try_from(x.ttl.as_millis()).unwrap_or(u64::MAX);
                    let until_ms = now_ms
                        .saturating_add(ttl_ms)
                        .min(exp_ms.unwrap_or(u64::MAX));
                    cache
                        .borrow_mut()
                        .insert(token, i, until_ms, id.clone(), now_ms);
                    return Some(Ok(id));
                }
                Ok(_) => outcome = Some(Err(Denied::Invalid("token is not active".into()))),
                Err(introspect::IntrospectError::Unreachable(why)) => {
                    eprintln!("shardgate: token introspection failed: {why}");
                    outcome = outcome.or(Some(Err(Denied::Unavailable)));
                }
            }
        }
        outcome
    }
}

/// Checks a route's scope and role requirements.
pub fn authorize(id: &Identity, scopes: &[String], roles: &[String]) -> Result<(), Denied> {
    if let Some(missing) = scopes.iter().find(|s| !id.scopes.contains(s)) {
        return Err(Denied::Forbidden(format!("missing scope {missing:?}")));
    }
    if !roles.is_empty() && !roles.iter().any(|r| id.roles.contains(r)) {
        return Err(Denied::Forbidden(format!(
            "requires one of the roles {}",
            roles.join(", ")
        )));
    }
    Ok(())
}

fn bearer<'a>(creds: &Credentials<'a>) -> Option<&'a str> {
    let v = std::str::from_utf8(creds.authorization?).ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn claim_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(a) => Some(
            a.iter()
                .filter_map(claim_text)
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => None,
    }
}

fn string_list(v: Option<&Value>, split_spaces: bool) -> Vec<String> {
    match v {
        Some(Value::String(s)) if split_spaces => {
            s.split_whitespace().map(str::to_string).collect()
        }
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// Verifies a bearer JWT; returns the identity and the token's `exp`.
fn verify_jwt(
    j: &JwtVerifier,
    index: usize,
    view: &KeyView<'_>,
    creds: &Credentials<'_>,
) -> Result<(Identity, Option<u64>), Denied> {
    let token = bearer(creds).ok_or(Denied::Missing)?;
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| Denied::Invalid("malformed token".into()))?;
    if !j.validation.algorithms.contains(&header.alg) {
        return Err(Denied::Invalid("token algorithm not accepted".into()));
    }
    let keys: &[JwtKey] = match view.sets.and_then(|m| m.get(&index)) {
        Some(set) => set,
        None => &j.keys,
    };
    let kid_known =
        header.kid.is_none() || keys.iter().any(|k| k.kid.is_none() || k.kid == header.kid);
    if !kid_known && j.source.is_some() {
        // Maybe the keys were rotated: ask for a refetch (rate-limited by the
        // refresher; a full queue means one is already pending).
        if let Some(tx) = view.refetch {
            let _ = tx.try_send(index);
        }
    }
    let candidates = keys
        .iter()
        .filter(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid);
    let mut last = "no key matches the token's kid".to_string();
    for k in candidates {
        match jsonwebtoken::decode::<Value>(token, &k.key, &j.validation) {
            Ok(data) => {
                let exp = data.claims.get("exp").and_then(Value::as_u64);
                return Ok((identity_from_claims(j, &data.claims), exp));
            }
            Err(e) => last = describe(&e),
        }
    }
    Err(Denied::Invalid(last))
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "token expired".into(),
        K::ImmatureSignature => "token not yet valid".into(),
        K::InvalidIssuer => "wrong issuer".into(),
        K::InvalidAudience => "wrong audience".into(),
        K::InvalidSignature => "bad signature".into(),
        K::InvalidAlgorithm => "token algorithm not accepted".into(),
        K::MissingRequiredClaim(c) => format!("missing claim {c:?}"),
        _ => "invalid token".into(),
    }
}

fn identity_from_claims(j: &JwtVerifier, claims: &Value) -> Identity {
    identity_from(&j.forward, &j.roles_claim, claims)
}

fn identity_from(forward: &[(String, String)], roles_claim: &str, claims: &Value) -> Identity {
    let headers = forward
        .iter()
        .filter_map(|(claim, header)| {
            let v = claims.get(claim).and_then(claim_text)?;
            // A value that could break the header block is not forwarded.
            (!v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)).then(|| (header.clone(), v))
        })
        .collect();
    let mut scopes = string_list(claims.get("scope"), true);
    scopes.extend(string_list(claims.get("scp"), true));
    Identity {
        headers,
        scopes,
        roles: string_list(claims.get(roles_claim), false),
        claims: scalar_claims(claims),
        authenticator: 0,
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn verify_api_key(k: &ApiKeyVerifier, creds: &Credentials<'_>) -> Result<Identity, Denied> {
    let from_header = k
        .header
        .as_deref()
        .and_then(|h| (creds.header)(h))
        .and_then(|v| std::str::from_utf8(v).ok());
    let from_query = k
        .query
        .as_deref()
        .and_then(|q| creds.query.and_then(|qs| query_param(qs, q)));
    let key = from_header.or(from_query).ok_or(Denied::Missing)?;
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    // Compare against every consumer so timing does not reveal which matched.
    let mut found: Option<&str> = None;
    for (name, hash) in &k.consumers {
        if constant_time_eq(&digest, hash) && found.is_none() {
            found = Some(name);
        }
    }
    let name = found.ok_or_else(|| Denied::Invalid("unknown API key".into()))?;
    Ok(Identity {
        headers: vec![(k.forward_as.clone(), name.to_string())],
        scopes: k.scopes.get(name).cloned().unwrap_or_default(),
        roles: Vec::new(),
        claims: vec![("consumer".to_string(), name.to_string())],
        authenticator: 0,
    })
}

/// Removes the named parameters from a query string (`None` when nothing is left).
pub fn strip_query_params(query: &str, names: &[String]) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| {
            let k = kv.split_once('=').map_or(*kv, |(k, _)| k);
            !names.iter().any(|n| n == k)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &str = "0123456789abcdef-secret";

    fn plan() -> AuthPlan {
        let text = format!(
            r#"{{
            "jwt": Jwt(algorithms: [HS256], key: Secret("{SECRET}"), issuer: Some("iss-a"),
                       forward_claims: {{ "sub": "X-User-Id", "role": "X-Role" }}, roles_claim: "role"),
            "keys": ApiKey(header: Some("X-Api-Key"), query: Some("api_key"),
                           consumers: {{ "mobile": "{}" }}, scopes: {{ "mobile": ["users:read"] }}),
        }}"#,
            hash_api_key("k-123")
        );
        let auths: BTreeMap<String, Authenticator> = ron::Options::default()
            .with_default_extension(
                ron::extensions::Extensions::IMPLICIT_SOME
                    | ron::extensions::Extensions::UNWRAP_VARIANT_NEWTYPES,
            )
            .from_str(&text)
            .unwrap();
        AuthPlan::compile(&auths).unwrap()
    }

    fn token(claims: serde_json::Value, alg: Algorithm, secret: &str) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn check(
        p: &AuthPlan,
        auth: Option<&str>,
        headers: &[(&str, &str)],
        query: Option<&str>,
    ) -> Result<Identity, Denied> {
        let owned = auth.map(|a| a.as_bytes().to_vec());
        let hdrs: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        let lookup = |n: &str| hdrs.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_slice());
        let creds = Credentials {
            authorization: owned.as_deref(),
            header: &lookup,
            query,
            client_cert: None,
        };
        p.authenticate(&[0, 1], &creds)
    }

    #[test]
    fn jwt_accepts_and_forwards_claims() {
        let p = plan();
        let t = token(
            serde_json::json!({"sub": "u1", "role": "admin", "iss": "iss-a", "exp": now() + 60, "scope": "a b"}),
            Algorithm::HS256,
            SECRET,
        );
        let id = check(&p, Some(&format!("Bearer {t}")), &[], None).unwrap();
        assert!(id.headers.contains(&("X-User-Id".into(), "u1".into())));
        assert_eq!(id.roles, vec!["admin".to_string()]);
        assert_eq!(id.scopes, vec!["a".to_string(), "b".to_string()]);
        assert!(authorize(&id, &["a".into()], &["admin".into()]).is_ok());
        assert!(matches!(
            authorize(&id, &["c".into()], &[]),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            authorize(&id, &[], &["root".into()]),
            Err(Denied::Forbidden(_))
        ));
    }

    #[test]
    fn jwt_rejections() {
        let p = plan();
        let bearer = |t: String| format!("Bearer {t}");
        let good = serde_json::json!({"sub": "u1", "iss": "iss-a", "exp": now() + 60});
        let cases = [
            token(
                serde_json::json!({"sub": "u1", "iss": "iss-a", "exp": now() - 3600}),
                Algorithm::HS256,
                SECRET,
            ),
            token(
                serde_json::json!({"sub": "u1", "iss": "other", "exp": now() + 60}),
                Algorithm::HS256,
                SECRET,
            ),
            token(
                serde_json::json!({"sub": "u1", "iss": "iss-a"}),
                Algorithm::HS256,
                SECRET,
            ),
            token(good.clone(), Algorithm::HS256, "wrong-secret-wrong-secret"),
            token(good.clone(), Algorithm::HS384, SECRET),
            // alg: none
            format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", {
                introspect::base64url(&serde_json::to_vec(&good).unwrap())
            }),
            "garbage".into(),
        ];
        for t in cases {
            assert!(
                matches!(
                    check(&p, Some(&bearer(t.clone())), &[], None),
                    Err(Denied::Invalid(_))
                ),
                "{t}"
            );
        }
        assert_eq!(check(&p, None, &[], None), Err(Denied::Missing));
        assert_eq!(
            check(&p, Some("Basic abc"), &[], None),
            Err(Denied::Missing)
        );
    }

    #[test]
    fn token_cache_is_bounded_and_respects_exp() {
        let p = plan();
        let mut cache = TokenCache::new(4);
        let t0 = now();
        let t = token(
            serde_json::json!({"sub": "u1", "iss": "iss-a", "exp": t0 + 100}),
            Algorithm::HS256,
            SECRET,
        );
        let ms = |s: u64| s * 1000;
        let auth = format!("Bearer {t}");
        let lookup = |_: &str| None;
        let creds = Credentials {
            authorization: Some(auth.as_bytes()),
            header: &lookup,
            query: None,
            client_cert: None,
        };
        assert!(p
            .authenticate_cached(&[0], &creds, Some(&mut cache), &KeyView::default(), ms(t0))
            .is_ok());
        assert_eq!(cache.len(), 1);
        // Served from the cache while valid, for an allowed authenticator only.
        assert!(cache.get(&t, &[0], ms(t0 + 50)).is_some());
        assert!(cache.get(&t, &[1], ms(t0 + 50)).is_none());
        // Never at or past exp, to the millisecond.
        assert!(cache.get(&t, &[0], ms(t0 + 100) - 1).is_some());
        assert!(cache.get(&t, &[0], ms(t0 + 100)).is_none());
        for i in 0..50u64 {
            cache.insert(
                &format!("tok{i}"),
                0,
                ms(t0 + 100),
                Identity::default(),
                ms(t0),
            );
            assert!(cache.len() <= 4);
        }
    }

    #[test]
    fn api_keys_by_header_and_query() {
        let p = plan();
        let id = check(&p, None, &[("x-api-key", "k-123")], None).unwrap();
        assert_eq!(
            id.headers,
            vec![("X-Consumer".to_string(), "mobile".to_string())]
        );
        assert!(check(&p, None, &[], Some("a=1&api_key=k-123")).is_ok());
        assert!(matches!(
            check(&p, None, &[("x-api-key", "nope")], None),
            Err(Denied::Invalid(_))
        ));
        assert_eq!(
            strip_query_params("a=1&api_key=k&b=2", &["api_key".into()]),
            Some("a=1&b=2".into())
        );
        assert_eq!(strip_query_params("api_key=k", &["api_key".into()]), None);
        assert_eq!(
            p.identity_headers,
            vec!["x-consumer", "x-role", "x-user-id"]
        );
    }
}
