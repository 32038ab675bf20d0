//! Schema of the edge policies a route (or listener) can switch on: CORS,
//! IP filtering, static responses, traffic splitting, mirroring and JSON
//! Schema request validation. What each does is in `crate::policy` and
//! `crate::validate`; field defaults are in `config/README.md`.

use serde::Deserialize;
use std::collections::BTreeMap;

/// Cross-origin resource sharing (the Fetch standard's CORS protocol):
/// which origins may call the route from a browser, and what they may send
/// and read. Preflight `OPTIONS` requests are answered by the gateway.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Allowed origins: exact (`https://app.example.com`), wildcard
    /// subdomains (`https://*.example.com`, one or more labels), or `*`
    /// (any origin; not with `allow_credentials`). Empty: no origin.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for (`*`: any, not with credentials).
    #[serde(default = "default_cors_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for (`*`: any except
    /// `Authorization`, not with credentials).
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers the browser lets the calling page read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Allow cookies and `Authorization` (`Access-Control-Allow-Credentials: true`).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer, seconds.
    #[serde(default)]
    pub max_age_s: Option<u64>,
}

fn default_cors_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into(), "POST".into()]
}

/// Allow and deny lists of client address blocks (`10.0.0.0/8`,
/// `2001:db8::/32`, or single addresses). The client address is the one the
/// rate limiter reads: `X-Forwarded-For` only through `trusted_proxies`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IpFilter {
    /// When not empty, only these blocks may call.
    #[serde(default)]
    pub allow: Vec<String>,
    /// These blocks are refused (checked first: deny wins over allow).
    #[serde(default)]
    pub deny: Vec<String>,
}

/// A fixed answer given without an upstream (mock, maintenance, gone).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticResponse {
    /// Status code (200..599).
    pub status: u16,
    /// Response headers (`Content-Type` defaults to `application/json`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body.
    #[serde(default)]
    pub body: String,
}

/// Weighted choice of the upstream per request (canary releases).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// Upstream name → weight (1..=1000000); a request goes to an upstream
    /// with probability weight / sum of weights.
    pub weights: BTreeMap<String, u32>,
    /// Keep a caller on one upstream: the same value of this key always
    /// gets the same upstream (requests without it are split by weight).
    #[serde(default)]
    pub sticky: Option<super::HashOn>,
}

/// Shadow traffic: a copy of (a sample of) the route's requests sent to
/// another upstream, its answer discarded, never delaying the real request.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// The upstream receiving the copies (plain HTTP).
    pub upstream: String,
    /// Share of requests mirrored (0.0 to 1.0).
    #[serde(default = "default_mirror_ratio")]
    pub sample_ratio: f64,
    /// Most copies in flight per shard; past it a copy is skipped and counted.
    #[serde(default = "default_mirror_concurrency")]
    pub max_concurrency: usize,
    /// A copy is abandoned after this long (connect, send and answer).
    #[serde(default = "default_mirror_timeout_ms")]
    pub timeout_ms: u64,
    /// Largest request body copied; a request whose body is larger, or not
    /// yet in memory when the request is forwarded, is not mirrored.
    #[serde(default = "default_mirror_body_bytes")]
    pub max_body_bytes: u64,
}

fn default_mirror_ratio() -> f64 {
    1.0
}
fn default_mirror_concurrency() -> usize {
    16
}
fn default_mirror_timeout_ms() -> u64 {
    1_000
}
fn default_mirror_body_bytes() -> u64 {
    64 * 1024
}

/// JSON Schema validation of the request before it goes upstream.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Validate {
    /// JSON Schema file for the request body (relative to the config file).
    #[serde(default)]
    pub schema: Option<String>,
    /// JSON Schema file for the query parameters, seen as a JSON object of
    /// strings (relative to the config file).
    #[serde(default)]
    pub query_schema: Option<String>,
}
