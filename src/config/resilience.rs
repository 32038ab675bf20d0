//! Schema of the resilience settings: an upstream's circuit breaker and
//! retry policy, a route's fallback.

use serde::Deserialize;
use std::collections::BTreeMap;

/// An upstream's circuit breaker: stops sending requests to an upstream that
/// keeps failing, for `open_s`, then lets a few trial requests through.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Calls a shard must have seen in its window before the ratio can trip it.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// Share of failed calls in the window (0 < ratio ≤ 1) that trips it.
    #[serde(default = "default_failure_ratio")]
    pub failure_ratio: f64,
    /// Length of the rolling window, in seconds.
    #[serde(default = "default_window_s")]
    pub window_s: u64,
    /// How long the breaker stays open before trial requests, in seconds.
    #[serde(default = "default_open_s")]
    pub open_s: u64,
    /// Trial requests let through while half-open; all must succeed to close.
    #[serde(default = "default_half_open_requests")]
    pub half_open_requests: u32,
    /// Also trip after this many failures in a row on one shard.
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    /// Response statuses counted as failures (default: every 5xx).
    #[serde(default)]
    pub failure_statuses: Option<Vec<u16>>,
}

/// A retry policy (on an upstream, or on a route, which then wins).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Tries in all, the first one included (1: no retry).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Retries may add at most this share of the shard's recent requests.
    #[serde(default = "default_budget_ratio")]
    pub budget_ratio: f64,
    /// Retries always allowed per second and shard, whatever the ratio.
    #[serde(default = "default_budget_floor")]
    pub budget_floor_per_s: u32,
    /// Time allowed for each try's response head (the upstream's `timeout_ms`
    /// when not given).
    #[serde(default)]
    pub per_try_timeout_ms: Option<u64>,
    /// Response statuses that are retried (before any byte reaches the client).
    #[serde(default = "default_retry_statuses")]
    pub retry_on_statuses: Vec<u16>,
    /// First backoff; doubled for each further retry, with full jitter.
    #[serde(default = "default_backoff_base_ms")]
    pub backoff_base_ms: u64,
    /// Longest backoff.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Request bodies up to this size (declared `Content-Length`) are read
    /// before the first try so they can be sent again; larger or chunked
    /// bodies are never retried.
    #[serde(default = "default_buffer_body_bytes")]
    pub buffer_body_bytes: u64,
}

/// What a route answers when its upstream cannot.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub enum Fallback {
    /// A fixed response.
    Static {
        /// Response status.
        #[serde(default = "default_fallback_status")]
        status: u16,
        /// Response header fields.
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// Response body (JSON by default: give `Content-Type` otherwise).
        #[serde(default)]
        body: String,
    },
    /// The same request, sent to another upstream.
    Alternate {
        /// The upstream's name.
        upstream: String,
    },
}

fn default_min_requests() -> u32 {
    20
}
fn default_failure_ratio() -> f64 {
    0.5
}
fn default_window_s() -> u64 {
    10
}
fn default_open_s() -> u64 {
    5
}
fn default_half_open_requests() -> u32 {
    1
}
fn default_max_attempts() -> u32 {
    3
}
fn default_budget_ratio() -> f64 {
    0.2
}
fn default_budget_floor() -> u32 {
    3
}
fn default_retry_statuses() -> Vec<u16> {
    vec![502, 503, 504]
}
fn default_backoff_base_ms() -> u64 {
    25
}
fn default_backoff_max_ms() -> u64 {
    250
}
fn default_buffer_body_bytes() -> u64 {
    64 * 1024
}
fn default_fallback_status() -> u16 {
    200
}
