//! Schema of a route's response cache (see [`crate::cache`]).

use serde::Deserialize;
use std::collections::BTreeMap;

/// A route's response cache: `GET`/`HEAD` answers kept in memory on each
/// shard and served without an upstream call while fresh.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    /// The statuses that are cached, each with its freshness lifetime in
    /// seconds when the upstream's `Cache-Control` gives none
    /// (`s-maxage`, then `max-age`, win over it).
    #[serde(default = "default_ttl_s")]
    pub ttl_s: BTreeMap<u16, u64>,
    /// Memory for this route's stored answers, all shards together (each
    /// shard keeps an equal share); keys, heads, bodies and bookkeeping count.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Largest body stored; a larger one streams through to the client
    /// without being kept.
    #[serde(default = "default_max_object_bytes")]
    pub max_object_bytes: u64,
    /// What the cache key is made of (the path always is).
    #[serde(default)]
    pub key: CacheKey,
    /// A client's `Cache-Control: no-cache` (or `Pragma: no-cache`) skips
    /// the cache for its request (answered with `X-Cache-Status: BYPASS`).
    #[serde(default = "default_true")]
    pub client_no_cache_bypass: bool,
    /// Seconds a stale answer may still be served while one request
    /// refreshes it, when the upstream's `stale-while-revalidate` gives none.
    #[serde(default)]
    pub stale_while_revalidate_s: u64,
    /// Seconds a stale answer may still be served when the upstream fails
    /// (no answer, or a 5xx), when the upstream's `stale-if-error` gives none.
    #[serde(default)]
    pub stale_if_error_s: u64,
    /// Store answers that carry `Set-Cookie` (off: they pass uncached).
    #[serde(default)]
    pub cache_set_cookie: bool,
    /// Cache answers to requests that carry `Authorization` (off: such
    /// requests bypass the cache).
    #[serde(default)]
    pub cache_authorized: bool,
    /// On an authenticated route, one stored answer serves every caller;
    /// off, the caller's identity (`sub` or the API-key consumer) is part of
    /// the key.
    #[serde(default)]
    pub shared: bool,
    /// Longest wait of a request for another request's upstream fetch of
    /// the same key (request coalescing) before it goes upstream itself.
    #[serde(default = "default_coalesce_wait_ms")]
    pub coalesce_wait_ms: u64,
}

/// The parts of a cache key besides the path.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheKey {
    /// The method (`GET` and `HEAD` then have separate entries; off, a
    /// `HEAD` is answered from the `GET` entry).
    #[serde(default)]
    pub method: bool,
    /// The `Host` of the request.
    #[serde(default = "default_true")]
    pub host: bool,
    /// Which query parameters, sorted by name.
    #[serde(default)]
    pub query: CacheQuery,
    /// Request headers whose values are part of the key.
    #[serde(default)]
    pub headers: Vec<String>,
}

impl Default for CacheKey {
    fn default() -> Self {
        CacheKey {
            method: false,
            host: true,
            query: CacheQuery::All,
            headers: Vec::new(),
        }
    }
}

/// Which query parameters a cache key holds (always sorted by name, so
/// `?b=1&a=2` and `?a=2&b=1` share an entry).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
pub enum CacheQuery {
    /// Every parameter.
    #[default]
    All,
    /// None: the query is ignored.
    Ignore,
    /// Only these parameters.
    Only(Vec<String>),
}

fn default_true() -> bool {
    true
}
fn default_ttl_s() -> BTreeMap<u16, u64> {
    BTreeMap::from([(200, 60)])
}
fn default_max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_max_object_bytes() -> u64 {
    1024 * 1024
}
fn default_coalesce_wait_ms() -> u64 {
    5_000
}
