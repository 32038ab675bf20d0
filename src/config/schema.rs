//! The serde schema of a gateway config file. Field names are the words users
//! type in RON; every struct refuses unknown fields so a misspelt setting is an
//! error, never silently ignored. Defaults are documented in `config/README.md`.

use serde::Deserialize;

pub use crate::http::path::EncodedSlash;
use std::collections::BTreeMap;

/// A list read element by element with a [`crate::pace::point`] after each,
/// so that reading thousands of routes can pause (same errors as `Vec`'s).
/// Elements are gathered in chunks and moved into one vector of the final
/// size, so that no single step copies the whole list (as doubling would).
fn paced_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct List<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for List<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            const CHUNK: usize = 256;
            let mut chunks: Vec<Vec<T>> = Vec::new();
            let mut chunk = Vec::with_capacity(CHUNK);
            while let Some(item) = seq.next_element()? {
                chunk.push(item);
                if chunk.len() == CHUNK {
                    chunks.push(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)));
                }
                crate::pace::point();
            }
            if chunks.is_empty() {
                return Ok(chunk);
            }
            chunks.push(chunk);
            let mut out = Vec::with_capacity(chunks.iter().map(Vec::len).sum());
            for c in chunks {
                out.extend(c);
                crate::pace::point();
            }
            Ok(out)
        }
    }
    d.deserialize_seq(List(std::marker::PhantomData))
}

/// The whole file: `Gateway( ... )`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    /// How many shards (pinned threads) to run and where.
    #[serde(default)]
    pub shards: Shards,
    /// Which I/O driver each shard runs. `SHARDGATE_DRIVER=epoll|io_uring` overrides it.
    #[serde(default)]
    pub driver: DriverChoice,
    /// Whether the shards share the process's descriptor table or each has
    /// its own, so that the open-file limit applies per shard. Read at start.
    #[serde(default)]
    pub descriptor_tables: DescriptorTables,
    /// Client-facing listeners; every shard accepts on every one (see
    /// `Listener::balance_connections`).
    pub listeners: Vec<Listener>,
    /// HTTP limits and client-side timeouts.
    #[serde(default)]
    pub limits_http: HttpLimits,
    /// How long in-flight requests may run after SIGTERM before the process exits.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Named upstream services.
    #[serde(default)]
    pub upstreams: BTreeMap<String, Upstream>,
    /// Successful JWT verifications cached per shard (0 disables the cache).
    #[serde(default = "default_token_cache_entries")]
    pub token_cache_entries: usize,
    /// Named authenticators that routes refer to in `auth: Required([...])`.
    #[serde(default)]
    pub authenticators: BTreeMap<String, Authenticator>,
    /// Host-wide settings of the rate limiter.
    #[serde(default)]
    pub rate_limiting: RateLimiting,
    /// Named rate limits that routes refer to in `rate_limits: [...]`.
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RateLimit>,
    /// Routes, in declaration order (the order breaks specificity ties).
    #[serde(default, deserialize_with = "paced_list")]
    pub routes: Vec<Route>,
    /// The admin listener (metrics, health, config, status page); none by default.
    #[serde(default)]
    pub admin: Option<Admin>,
    /// JSON access log lines, one per request; none by default.
    #[serde(default)]
    pub access_log: Option<AccessLog>,
    /// W3C trace context and OTLP span export; none by default.
    #[serde(default)]
    pub tracing: Option<Tracing>,
    /// CORS for every route that has no `cors` of its own.
    #[serde(default)]
    pub cors: Option<super::Cors>,
}

/// The admin listener: `/metrics`, `/health`, `/ready`, `/config`,
/// `/upstreams`, `/shards`, `/ratelimits` and the status page at `/`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address to listen on, e.g. `127.0.0.1:9900` (keep it private).
    pub bind: String,
    /// Shards count requests into metrics (`false`: `/metrics` reports
    /// only process and shard gauges).
    #[serde(default = "default_true")]
    pub metrics: bool,
    /// Upper bounds of the exported latency histogram buckets, milliseconds.
    #[serde(default = "default_buckets_ms")]
    pub histogram_buckets_ms: Vec<f64>,
}

/// Prometheus bucket bounds of the latency histograms: 0.5 ms to 10 s.
pub fn default_buckets_ms() -> Vec<f64> {
    vec![
        0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    ]
}

/// The access log: one JSON line per request.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// `stdout`, `stderr` or a file path (appended to; SIGUSR1 reopens it).
    pub path: String,
    /// Lines waiting for the writer thread, at most; more are dropped and counted.
    #[serde(default = "default_log_queue")]
    pub queue_lines: usize,
}

fn default_log_queue() -> usize {
    65_536
}

/// Tracing: W3C trace context, and spans exported with OTLP over HTTP.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// OTLP/HTTP collector, e.g. `http://127.0.0.1:4318` (spans go to
    /// `/v1/traces`); none: trace context is propagated, nothing exported.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces sampled (0.0 to 1.0); an incoming `traceparent`'s
    /// sampled flag is followed.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Spans waiting for export, at most; more are dropped and counted.
    #[serde(default = "default_span_queue")]
    pub queue_spans: usize,
    /// Spans sent per export request, at most.
    #[serde(default = "default_span_batch")]
    pub batch_spans: usize,
    /// Longest a span waits before its batch is sent.
    #[serde(default = "default_export_interval_ms")]
    pub export_interval_ms: u64,
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_service_name() -> String {
    "shardgate".into()
}

fn default_span_queue() -> usize {
    8192
}

fn default_span_batch() -> usize {
    512
}

fn default_export_interval_ms() -> u64 {
    1000
}

/// Host-wide rate-limiter settings.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimiting {
    /// How often shards exchange quota for `Local` limits.
    pub gossip_interval_ms: u64,
    /// Longest a request waits for quota lent by another shard before 429.
    pub max_quota_wait_ms: u64,
    /// Most keys one shard tracks (all limits together); least recently seen go first.
    pub max_keys_per_shard: usize,
    /// A key not seen for this long is forgotten.
    pub idle_key_s: u64,
    /// Peers (addresses or CIDR blocks) whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
}

impl Default for RateLimiting {
    fn default() -> Self {
        RateLimiting {
            gossip_interval_ms: 5,
            max_quota_wait_ms: 30,
            max_keys_per_shard: 100_000,
            idle_key_s: 600,
            trusted_proxies: Vec::new(),
        }
    }
}

/// A named limit: what it counts by, how, and where the counts live.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// What the limit counts by.
    pub key: LimitKey,
    /// How requests are counted.
    pub algorithm: LimitAlgorithm,
    /// Where the counts live.
    #[serde(default)]
    pub policy: LimitPolicy,
}

/// What a limit counts by. A missing value falls back to the client address.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub enum LimitKey {
    /// The client's address (`X-Forwarded-For` only from trusted proxies).
    ClientIp,
    /// A claim of the caller's token, as forwarded by the route's authenticators.
    Claim(String),
    /// The API-key consumer established by the route's authenticators.
    Consumer,
    /// A request header's value.
    Header(String),
    /// The route's name.
    Route,
    /// Several of the above together.
    Combined(Vec<LimitKey>),
}

/// A rate-limit algorithm and its parameters.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub enum LimitAlgorithm {
    /// Bursts up to `capacity`, refilled at `refill_per_s`.
    TokenBucket {
        /// Largest burst.
        capacity: u64,
        /// Tokens added per second.
        refill_per_s: f64,
    },
    /// Drains at `drain_per_s`, holding at most `capacity`; with `max_wait_ms`
    /// excess requests are delayed up to that long instead of refused.
    LeakyBucket {
        /// Most requests held in the bucket.
        capacity: u64,
        /// Requests drained per second.
        drain_per_s: f64,
        /// Queue excess requests for at most this long (Local policy only).
        #[serde(default)]
        max_wait_ms: Option<u64>,
    },
    /// At most `limit` per window aligned to Unix time.
    FixedWindow {
        /// Requests per window.
        limit: u64,
        /// Window length in seconds.
        window_s: u64,
    },
    /// At most `limit` per sliding window (counter approximation).
    SlidingWindow {
        /// Requests per window.
        limit: u64,
        /// Window length in seconds.
        window_s: u64,
    },
    /// At most `limit` per sliding window, exactly (a log of admissions).
    SlidingLog {
        /// Requests per window.
        limit: u64,
        /// Window length in seconds.
        window_s: u64,
    },
}

/// Where a limit's counts live.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
pub enum LimitPolicy {
    /// In the shards of this process, which lend each other quota.
    #[default]
    Local,
    /// In a Redis server shared by several gateway instances.
    Redis {
        /// `redis://[user:password@]host:port[/db]`.
        #[serde(serialize_with = "super::redact::url_password")]
        url: String,
        /// Admit when Redis cannot be reached (true) or answer 503 (false).
        #[serde(default)]
        fault_tolerant: bool,
        /// Units taken from Redis at a time and spent locally (1 = every request asks Redis).
        #[serde(default = "default_lease")]
        lease: u64,
        /// Time allowed for one Redis call, connect included.
        #[serde(default = "default_redis_timeout_ms")]
        timeout_ms: u64,
        /// After a failure, Redis is not asked again for this long.
        #[serde(default = "default_redis_retry_ms")]
        retry_ms: u64,
        /// For `rediss://`: PEM file of the CAs the server's certificate must
        /// chain to (the bundled Mozilla roots when not given).
        #[serde(default)]
        ca_file: Option<String>,
    },
}

/// A way to establish who is calling.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub enum Authenticator {
    /// JWT bearer tokens in `Authorization: Bearer ...`.
    Jwt(JwtAuth),
    /// API keys in a header or query parameter, mapped to named consumers.
    ApiKey(ApiKeyAuth),
    /// Opaque bearer tokens checked with OAuth 2.0 token introspection (RFC 7662).
    Introspection(IntrospectionAuth),
    /// Client certificates on TLS listeners (mTLS at the edge).
    ClientCert(ClientCertAuth),
}

/// Client-certificate authentication: TLS listeners ask clients for a
/// certificate, and a request is authenticated by one signed by `ca`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientCertAuth {
    /// PEM file of the CA(s) client certificates must chain to.
    pub ca: String,
    /// Claims forwarded as headers: `subject` (the subject DN, RFC 4514),
    /// `cn` (its common name), `san` (the DNS names, comma-separated).
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
}

/// OAuth 2.0 token introspection settings.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionAuth {
    /// The identity provider's introspection endpoint (`http://` or `https://`).
    pub url: String,
    /// Client id for HTTP Basic authentication to the endpoint.
    pub client_id: String,
    /// Client secret for HTTP Basic authentication to the endpoint.
    #[serde(serialize_with = "super::redact::secret")]
    pub client_secret: String,
    /// Time allowed for one introspection call.
    #[serde(default = "default_introspection_timeout_ms")]
    pub timeout_ms: u64,
    /// How long an active answer is reused (never past the token's `exp`):
    /// a revoked token stops working within this time.
    #[serde(default = "default_introspection_ttl_s")]
    pub cache_ttl_s: u64,
    /// Active answers cached per shard.
    #[serde(default = "default_introspection_entries")]
    pub cache_entries: usize,
    /// Field of the answer → header forwarded to the upstream.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// The field holding the caller's roles.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// For an `https://` endpoint: PEM file of the CAs its certificate must
    /// chain to (the bundled Mozilla roots when not given).
    #[serde(default)]
    pub ca_file: Option<String>,
}

/// JWT validation settings.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtAuth {
    /// Accepted algorithms, all of the key's family (e.g. `[HS256]`, `[RS256, PS256]`).
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Where the verification key comes from.
    pub key: KeySource,
    /// Required `iss`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's audiences).
    #[serde(default)]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    #[serde(default = "default_leeway_s")]
    pub leeway_s: u64,
    /// Claims that must be present (`exp` is always required).
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Claim → header forwarded to the upstream, e.g. `{ "sub": "X-User-Id" }`.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// The claim holding the caller's roles (a string or an array).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
}

/// Where a JWT verification key comes from.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub enum KeySource {
    /// An HMAC secret written in the config.
    Secret(#[serde(serialize_with = "super::redact::secret")] String),
    /// An HMAC secret read from this environment variable at load time.
    FromEnv(String),
    /// A PEM public key file (RSA, EC or Ed25519).
    PemFile(String),
    /// A JWKS document on disk; tokens select a key by `kid`.
    JwksFile(String),
    /// A JWKS document fetched from an `http://` or `https://` URL at load,
    /// every `refresh_s`, and (rate-limited) when a token's `kid` is unknown.
    Jwks {
        /// The document's URL.
        url: String,
        /// Refresh period in seconds.
        #[serde(default = "default_jwks_refresh_s")]
        refresh_s: u64,
        /// PEM file of CA certificates trusted for an `https://` URL instead
        /// of the bundled Mozilla roots (for a private CA).
        #[serde(default)]
        ca_file: Option<String>,
    },
}

/// API-key settings.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyAuth {
    /// Header carrying the key.
    #[serde(default)]
    pub header: Option<String>,
    /// Query parameter carrying the key (removed before forwarding).
    #[serde(default)]
    pub query: Option<String>,
    /// Consumer name → `sha256:<hex of the key>`.
    #[serde(serialize_with = "super::redact::values")]
    pub consumers: BTreeMap<String, String>,
    /// Header the consumer name is forwarded in.
    #[serde(default = "default_consumer_header")]
    pub forward_as: String,
    /// Scopes granted to each consumer (for routes with `scopes`).
    #[serde(default)]
    pub scopes: BTreeMap<String, Vec<String>>,
}

/// Who may use a route.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
pub enum AuthPolicy {
    /// Anyone.
    #[default]
    Public,
    /// A caller established by any one of these authenticators.
    Required(Vec<String>),
}

/// Shard placement.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
pub enum Shards {
    /// One shard per core this process may run on.
    #[default]
    Auto,
    /// This many shards, pinned to the first available cores.
    Count(usize),
    /// One shard per listed core id.
    Cores(Vec<usize>),
    /// One shard per core of NUMA node K (read from /sys/devices/system/node).
    NumaNode(usize),
}

/// I/O driver choice.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub enum DriverChoice {
    /// io_uring when the kernel allows it, else epoll.
    #[default]
    Auto,
    /// io_uring only (start fails if unavailable).
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

/// Descriptor tables of the shard threads.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub enum DescriptorTables {
    /// One table for the whole process: the open-file limit (`RLIMIT_NOFILE`)
    /// bounds every shard's connections together.
    #[default]
    Shared,
    /// A table of its own for each shard (`unshare(CLONE_FILES)` when the
    /// shard starts): the open-file limit bounds each shard's descriptors
    /// separately, so a process of N shards holds up to N times the limit.
    /// For hosts whose hard limit cannot be raised (a container without
    /// `CAP_SYS_RESOURCE`). Tools that read `/proc/PID/fd` (`lsof`, `ls`)
    /// then see the main thread's table only; `/proc/PID/task/TID/fd` shows
    /// a shard's.
    PerShard,
}

/// A client-facing listener.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Name used in logs.
    pub name: String,
    /// `ip:port` to bind.
    pub bind: String,
    /// Route names served on this listener; `None` serves every route.
    #[serde(default)]
    pub routes: Option<Vec<String>>,
    /// Client limits for this listener instead of the gateway's `limits_http`
    /// (one listener per client profile, each with its own limits).
    #[serde(default)]
    pub limits_http: Option<HttpLimits>,
    /// Merge repeated `/` in request paths before routing (and forwarding).
    #[serde(default = "default_true")]
    pub merge_slashes: bool,
    /// What `%2F`, `%5C`, `%00` and a raw `\` in a path do: `Reject` (400),
    /// `Keep` or `Decode`.
    #[serde(default)]
    pub encoded_slash: EncodedSlash,
    /// Most client connections open at once on this listener, all shards
    /// together. Each shard gets an equal share (the first `max % shards`
    /// shards one more), so the shares add up to exactly this; a connection
    /// past its shard's share is accepted and closed at once, and counted.
    /// `None`: bounded only by the open-file limit.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// How new connections are spread over the shards (fixed at start; a
    /// reload that changes it is refused).
    #[serde(default)]
    pub balance_connections: BalanceConnections,
    /// TLS termination on this listener (`None`: plain HTTP).
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// The name of a TLS listener: every request on this (plain) listener
    /// is answered `308 Permanent Redirect` to the same host and target
    /// over https on that listener's port.
    #[serde(default)]
    pub redirect_https: Option<String>,
    /// Client address allow/deny lists, applied before routing.
    #[serde(default)]
    pub ip_filter: Option<super::IpFilter>,
    /// Speak HTTP/2 as well as HTTP/1.1: h2c with prior knowledge on a plain
    /// listener (the connection preface tells), h2 by ALPN on a TLS one.
    #[serde(default)]
    pub http2: bool,
    /// Limits of each HTTP/2 connection (with `http2: true`).
    #[serde(default)]
    pub http2_limits: Http2Limits,
}

/// Limits of one downstream HTTP/2 connection.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Limits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: more streams are refused
    /// (RST_STREAM REFUSED_STREAM).
    pub max_concurrent_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: the decoded header list cap, which
    /// also bounds HPACK bombs and CONTINUATION floods (431 over it).
    pub max_header_list_bytes: u32,
    /// SETTINGS_MAX_FRAME_SIZE (16384 to 16777215).
    pub max_frame_bytes: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE of each stream.
    pub stream_window_bytes: u32,
    /// The connection's receive window.
    pub connection_window_bytes: u32,
    /// Resets caused by the client per `reset_interval_s` before the
    /// connection gets GOAWAY ENHANCE_YOUR_CALM (rapid reset).
    pub max_resets: usize,
    /// The interval `max_resets` and `max_control_frames` count over.
    pub reset_interval_s: u64,
    /// SETTINGS and PING frames (not acknowledgements) from a client per
    /// `reset_interval_s` before its connection is closed (settings and
    /// ping floods).
    pub max_control_frames: usize,
    /// A connection with no open stream this long gets GOAWAY, and a
    /// stream whose send window stays at zero this long is reset.
    pub idle_timeout_ms: u64,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Http2Limits {
            max_concurrent_streams: 128,
            max_header_list_bytes: 16 * 1024,
            max_frame_bytes: 16 * 1024,
            stream_window_bytes: 256 * 1024,
            connection_window_bytes: 1024 * 1024,
            max_resets: 100,
            reset_interval_s: 10,
            max_control_frames: 1000,
            idle_timeout_ms: 60_000,
        }
    }
}

/// TLS settings of a listener: `Tls(cert: ..., key: ...)` for one
/// certificate, or `Tls(certs: [Cert(cert: ..., key: ...), ...])` for
/// several chosen by SNI (the first is the default).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename = "Tls")]
pub struct ListenerTls {
    /// PEM certificate chain (leaf first) of the single certificate.
    #[serde(default)]
    pub cert: Option<String>,
    /// PEM private key (PKCS#8, RSA or EC) of the single certificate.
    #[serde(default)]
    pub key: Option<String>,
    /// Several certificates, chosen by the server name the client asks for.
    #[serde(default)]
    pub certs: Vec<CertKey>,
    /// How long a client has to complete its handshake.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Most handshakes in progress at once on one shard; a connection past
    /// it is closed at once.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// `Strict-Transport-Security` on this listener's responses.
    #[serde(default)]
    pub hsts: Option<Hsts>,
}

/// The `Strict-Transport-Security` header of a TLS listener.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hsts {
    /// How long browsers remember to use https only.
    #[serde(default = "default_hsts_max_age_s")]
    pub max_age_s: u64,
    /// Adds `includeSubDomains`.
    #[serde(default)]
    pub include_subdomains: bool,
    /// Adds `preload`.
    #[serde(default)]
    pub preload: bool,
}

impl Hsts {
    /// The header line, CRLF included.
    pub fn header_line(&self) -> String {
        let mut v = format!("strict-transport-security: max-age={}", self.max_age_s);
        if self.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.preload {
            v.push_str("; preload");
        }
        v.push_str("\r\n");
        v
    }
}

fn default_hsts_max_age_s() -> u64 {
    31_536_000
}

impl ListenerTls {
    /// Every (cert, key) pair, the single one first.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        let single = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((c.as_str(), k.as_str())),
            _ => None,
        };
        single
            .into_iter()
            .chain(self.certs.iter().map(|c| (c.cert.as_str(), c.key.as_str())))
    }
}

/// One certificate and its key, in `Tls(certs: [...])`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename = "Cert")]
pub struct CertKey {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

fn default_handshake_timeout_ms() -> u64 {
    10_000
}

fn default_max_handshakes() -> usize {
    1024
}

/// How a listener's new connections are spread over the shards.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub enum BalanceConnections {
    /// One SO_REUSEPORT socket per shard; the kernel picks one by a hash of
    /// the connection's addresses and ports.
    #[default]
    Kernel,
    /// As `Kernel`, but each shard's socket carries SO_INCOMING_CPU set to
    /// its shard's core, so the kernel (Linux 6.1+) prefers the shard on the
    /// CPU that processed the connection's SYN, hashing among the shards of
    /// that core; with no such shard, the plain hash.
    IncomingCpu,
    /// One socket shared by all shards: every shard keeps an accept pending
    /// on it and the kernel hands each new connection to the shard that has
    /// waited longest (io_uring queues accepts as exclusive waiters, woken in
    /// order), so idle shards take turns and a busy shard skips its turn.
    /// Needs the io_uring driver; with epoll it is `Kernel`.
    RoundRobin,
}

/// Limits on client requests and client-side timeouts.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// Largest request head (request line + headers) in bytes; larger → 431.
    pub max_header_bytes: usize,
    /// Most header fields in a request; more → 431.
    pub max_headers: usize,
    /// Largest request body in bytes; larger → 413.
    pub max_body_bytes: u64,
    /// Time allowed to receive a whole request head once its first byte arrived.
    pub header_read_timeout_ms: u64,
    /// Time a keep-alive connection may wait for its next request.
    pub idle_timeout_ms: u64,
    /// Time allowed between two reads of a request body.
    pub body_read_timeout_ms: u64,
    /// Time allowed for one write to the client to make progress.
    pub send_timeout_ms: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 10 * 1024 * 1024,
            header_read_timeout_ms: 5_000,
            idle_timeout_ms: 60_000,
            body_read_timeout_ms: 30_000,
            send_timeout_ms: 60_000,
        }
    }
}

/// A named backend service with one or more targets.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `host:port` targets; names are resolved once, when the config is loaded.
    pub targets: Vec<String>,
    /// How a target is picked for each request.
    #[serde(default)]
    pub balance: Balance,
    /// Time allowed to open a TCP connection to a target (502 after).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time allowed for the response head, and between two reads of the response body (504 after).
    #[serde(default = "default_upstream_timeout_ms")]
    pub timeout_ms: u64,
    /// Idle keep-alive connections kept per target and shard; those beyond
    /// it stay while the load's recent peak needs them, and close gradually
    /// after (see `proxy::pool`).
    #[serde(default = "default_max_idle")]
    pub max_idle_per_target: usize,
    /// An idle pooled connection older than this is closed instead of reused.
    #[serde(default = "default_pool_idle_ms")]
    pub idle_timeout_ms: u64,
    /// Host-wide bound on connections (open, opening or idle) to each target,
    /// split into per-shard shares; unbounded when not given.
    #[serde(default)]
    pub max_connections_per_target: Option<usize>,
    /// Host-wide bound on requests waiting for a connection to each target
    /// once the bound is reached, split into per-shard shares like it.
    #[serde(default = "default_max_queued")]
    pub max_queued_per_target: usize,
    /// Longest wait for a connection at the bound (503 after); the connect
    /// timeout when not given.
    #[serde(default)]
    pub queue_timeout_ms: Option<u64>,
    /// Circuit breaker (none when not given).
    #[serde(default)]
    pub circuit_breaker: Option<super::CircuitBreaker>,
    /// Retry policy for every route to this upstream (none when not given).
    #[serde(default)]
    pub retry: Option<super::Retry>,
    /// Relative weights of targets, by the target as written in `targets`
    /// (1 to 1000; a target not named weighs 1).
    #[serde(default)]
    pub weights: BTreeMap<String, u32>,
    /// Active health checks: one prober per host asks every target for `path`.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Passive outlier ejection from the outcomes of real requests.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// When every target is unhealthy or ejected, try them all anyway
    /// (Envoy's panic mode) instead of answering 503.
    #[serde(default)]
    pub panic_routing: bool,
    /// TLS to the targets (also implied by `https://` targets).
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// The protocol spoken to the targets: `Http1` (default) or `Http2`
    /// (h2c, or h2 over TLS with `tls`).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// HTTP/2 connection settings (with `protocol: Http2`; defaults when
    /// not given).
    #[serde(default)]
    pub http2: Option<Http2Upstream>,
}

/// HTTP/2 settings of an upstream. Connections per target and shard are
/// the shard's share of `max_connections_per_target` (at least one), or 4
/// when that is not set.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Http2Upstream {
    /// Streams open at once on one connection (1 to 10000; the target's
    /// SETTINGS_MAX_CONCURRENT_STREAMS can lower it). A request finding
    /// every connection at this cap opens another, up to the connection
    /// bound; beyond that it is answered 503.
    #[serde(default = "default_h2_max_streams")]
    pub max_streams_per_connection: usize,
}

impl Default for Http2Upstream {
    fn default() -> Self {
        Http2Upstream {
            max_streams_per_connection: default_h2_max_streams(),
        }
    }
}

fn default_h2_max_streams() -> usize {
    100
}

/// The HTTP version spoken to an upstream's targets.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2: streams multiplexed over a few connections per shard and target.
    Http2,
}

/// Active health checking of an upstream's targets: `GET path` every
/// `interval_ms`; a target is marked unhealthy after `unhealthy_threshold`
/// failed probes in a row and healthy again after `healthy_threshold`
/// passing ones.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path (and query) of the probe request.
    pub path: String,
    /// Time between two probes of one target.
    #[serde(default = "default_health_interval_ms")]
    pub interval_ms: u64,
    /// Time allowed for connecting and for the whole probe answer.
    #[serde(default = "default_health_timeout_ms")]
    pub timeout_ms: u64,
    /// Passing probes in a row that mark an unhealthy target healthy.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Failing probes in a row that mark a healthy target unhealthy.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// The status a passing probe answers with; any 2xx when not given.
    #[serde(default)]
    pub expect_status: Option<u16>,
}

/// Passive outlier ejection: a target that fails `consecutive_5xx` requests
/// (5xx answers, resets, timeouts) or `consecutive_connect_failures`
/// connection attempts in a row is taken out of balancing for
/// `base_ejection_s` × the number of times it has been ejected.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Failed answers in a row (5xx, reset, timeout) that eject a target; 0: off.
    #[serde(default = "default_consecutive_5xx")]
    pub consecutive_5xx: u32,
    /// Failed connection attempts in a row that eject a target; 0: off.
    #[serde(default = "default_consecutive_5xx")]
    pub consecutive_connect_failures: u32,
    /// First ejection time; the n-th ejection of a target lasts n times as
    /// long, up to `max_ejection_s`.
    #[serde(default = "default_base_ejection_s")]
    pub base_ejection_s: u64,
    /// Longest ejection; also how long a re-admitted target must stay in
    /// for its next ejection to start over at `base_ejection_s`.
    #[serde(default = "default_max_ejection_s")]
    pub max_ejection_s: u64,
    /// Most of the pool (in percent of its targets, at least one target)
    /// ejected at once.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

/// TLS settings towards an upstream's targets.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM file of the CAs the targets' certificates must chain to; the
    /// bundled Mozilla roots when not given.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Client certificate chain (PEM) presented to targets that ask (mTLS).
    #[serde(default)]
    pub cert: Option<String>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub key: Option<String>,
    /// The name sent as SNI and verified in the target's certificate;
    /// each target's own host when not given.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// Load-balancing policy.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub enum Balance {
    /// Each target in turn (weighted: a target of weight 3 gets three turns).
    #[default]
    RoundRobin,
    /// The target with the fewest requests in flight from this shard
    /// (divided by its weight).
    LeastOutstanding,
    /// Power of two choices over peak-EWMA latency × (requests in flight + 1)
    /// (divided by the weight), measured by each shard.
    PeakEwma,
    /// The same key always goes to the same target (a ring with virtual
    /// nodes, so a target leaving moves only its own keys). Requests without
    /// the key are balanced round-robin.
    ConsistentHash(HashOn),
}

/// What a consistent-hash balancer hashes.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub enum HashOn {
    /// The client's IP address.
    ClientIp,
    /// The value of a request header.
    Header(String),
    /// The value of a request cookie.
    Cookie(String),
    /// A claim of the authenticated caller (e.g. `"sub"`).
    Claim(String),
}

/// A route: what it matches and where it goes.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Unique name (logs, listener route sets).
    pub name: String,
    /// What requests this route takes.
    #[serde(rename = "match")]
    pub matcher: Match,
    /// The upstream that serves it (exactly one of `upstream`, `aggregate`
    /// and `static_response`).
    #[serde(default)]
    pub upstream: Option<String>,
    /// A leading path prefix removed before forwarding.
    #[serde(default)]
    pub strip_prefix: Option<String>,
    /// A path template for the upstream request, using the match's `{params}`.
    #[serde(default)]
    pub rewrite: Option<String>,
    /// Who may call this route.
    #[serde(default)]
    pub auth: AuthPolicy,
    /// Scopes the caller must all have (from `scope`/`scp`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Roles of which the caller must have at least one.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Forward the client's `Authorization` header to the upstream.
    #[serde(default = "default_true")]
    pub keep_authorization: bool,
    /// Named rate limits applied to this route; a request must fit all of them.
    #[serde(default)]
    pub rate_limits: Vec<String>,
    /// Send `RateLimit-Limit`, `-Remaining` and `-Reset` on this route's responses.
    #[serde(default = "default_true")]
    pub rate_limit_headers: bool,
    /// Answer with one JSON document composed from several upstream calls
    /// instead of proxying to `upstream` (see [`Aggregate`]).
    #[serde(default)]
    pub aggregate: Option<Aggregate>,
    /// The route's composite writes (a part with POST, PUT, PATCH or
    /// DELETE): required for such a composite, which is then never retried.
    #[serde(default)]
    pub non_idempotent: bool,
    /// Time allowed for the response head and between body reads, instead
    /// of the upstream's `timeout_ms`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Time allowed for the whole upstream part of a request, every try and
    /// backoff included (504 after).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Retry policy, instead of the upstream's.
    #[serde(default)]
    pub retry: Option<super::Retry>,
    /// Retry methods that are not idempotent (POST, PATCH) too.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// What to answer when the upstream is open, unreachable, or fails after retries.
    #[serde(default)]
    pub fallback: Option<super::Fallback>,
    /// Accept protocol upgrades (WebSocket) on this route and tunnel the
    /// upgraded connection (see [`WebSocket`]); without it an upgrade
    /// request is proxied as a plain request, its upgrade fields removed.
    #[serde(default)]
    pub websocket: Option<WebSocket>,
    /// CORS for this route, instead of the top-level `cors`.
    #[serde(default)]
    pub cors: Option<super::Cors>,
    /// Client address allow/deny lists for this route.
    #[serde(default)]
    pub ip_filter: Option<super::IpFilter>,
    /// Answer with this fixed response, without an upstream (exactly one
    /// of `upstream`, `aggregate` and `static_response`).
    #[serde(default)]
    pub static_response: Option<super::StaticResponse>,
    /// Weighted choice among several upstreams instead of `upstream` alone.
    #[serde(default)]
    pub split: Option<super::Split>,
    /// Copies of the route's requests sent to a shadow upstream.
    #[serde(default)]
    pub mirror: Option<super::Mirror>,
    /// JSON Schema validation of the request body and query.
    #[serde(default)]
    pub validate: Option<super::Validate>,
    /// Keep `GET`/`HEAD` answers in memory and serve them without an
    /// upstream call while fresh (see [`super::Cache`]).
    #[serde(default)]
    pub cache: Option<super::Cache>,
    /// Request and response transformation: header, query and JSON body
    /// operations (see [`crate::transform::Transform`]).
    #[serde(default)]
    pub transform: Option<crate::transform::Transform>,
    /// Response compression and request decompression (see
    /// [`crate::compress::Compression`]).
    #[serde(default)]
    pub compression: Option<crate::compress::Compression>,
    /// gRPC on this route: `Transcode(..)` answers REST/JSON calls by
    /// calling a gRPC service on the route's HTTP/2 upstream (see
    /// [`super::Transcode`]).
    #[serde(default)]
    pub grpc: Option<super::Grpc>,
}

/// Upgraded connections on a route: after the upstream's `101 Switching
/// Protocols`, bytes are tunnelled both ways until either side closes.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebSocket {
    /// A tunnel with no byte in either direction for this long is closed.
    #[serde(default = "default_tunnel_idle_ms")]
    pub idle_timeout_ms: u64,
    /// Most tunnels open at once on this route, host-wide, split into
    /// per-shard shares like the connection bounds (503 beyond it).
    #[serde(default = "default_max_tunnels")]
    pub max_tunnels: usize,
    /// The `Upgrade` protocols accepted (compared without case and without
    /// a `/version`); other upgrade requests are proxied as plain requests.
    #[serde(default = "default_upgrades")]
    pub upgrades: Vec<String>,
}

fn default_tunnel_idle_ms() -> u64 {
    60_000
}
fn default_max_tunnels() -> usize {
    10_000
}
fn default_upgrades() -> Vec<String> {
    vec!["websocket".into()]
}

/// Request matching conditions; all given conditions must hold.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Exact path or template with `{name}` segments (exclusive with `path_prefix`).
    #[serde(default)]
    pub path: Option<String>,
    /// Path prefix, matched on whole segments (exclusive with `path`).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Allowed methods; empty allows every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Host (port ignored, case-insensitive); `*.example.com` matches subdomains.
    #[serde(default)]
    pub host: Option<String>,
    /// Header values that must be present exactly (names case-insensitive).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_shutdown_grace_ms() -> u64 {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    1_000
}
fn default_upstream_timeout_ms() -> u64 {
    30_000
}
fn default_max_idle() -> usize {
    64
}
fn default_pool_idle_ms() -> u64 {
    30_000
}
fn default_max_queued() -> usize {
    1024
}
fn default_health_interval_ms() -> u64 {
    2_000
}
fn default_health_timeout_ms() -> u64 {
    1_000
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_consecutive_5xx() -> u32 {
    5
}
fn default_base_ejection_s() -> u64 {
    30
}
fn default_max_ejection_s() -> u64 {
    300
}
fn default_max_ejection_percent() -> u32 {
    10
}
fn default_leeway_s() -> u64 {
    30
}
fn default_roles_claim() -> String {
    "roles".into()
}
fn default_consumer_header() -> String {
    "X-Consumer".into()
}
fn default_true() -> bool {
    true
}
fn default_token_cache_entries() -> usize {
    10_000
}
fn default_jwks_refresh_s() -> u64 {
    300
}
fn default_introspection_timeout_ms() -> u64 {
    1_000
}
fn default_introspection_ttl_s() -> u64 {
    60
}
fn default_introspection_entries() -> usize {
    10_000
}
fn default_lease() -> u64 {
    1
}
fn default_redis_timeout_ms() -> u64 {
    50
}
fn default_redis_retry_ms() -> u64 {
    1_000
}

/// A composite route: several upstream calls, one JSON answer.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    /// The calls; independent ones run concurrently.
    pub parts: Vec<Part>,
    /// How the parts' results are combined.
    #[serde(default)]
    pub merge: MergeMode,
    /// Bound on the whole composite, from the start of the first call.
    #[serde(default = "default_aggregate_timeout_ms")]
    pub timeout_ms: u64,
    /// Largest response body accepted from one part; larger fails that part.
    #[serde(default = "default_max_part_bytes")]
    pub max_part_bytes: u64,
    /// Largest composite body sent to the client; larger → 502.
    #[serde(default = "default_max_aggregate_bytes")]
    pub max_body_bytes: u64,
    /// Field listing the optional parts that failed and why.
    #[serde(default = "default_errors_field")]
    pub errors_field: String,
    /// What `Merge` (and parts sharing a `group`) do when two results set
    /// the same field.
    #[serde(default)]
    pub collisions: Collisions,
    /// The part whose upstream status becomes the composite's (200 when not
    /// given, or when that part is skipped or left out).
    #[serde(default)]
    pub status_from: Option<String>,
    /// Response header names copied from the parts' answers to the
    /// composite's: `Cache-Control` gets the smallest `max-age` of the
    /// parts (and `no-store`/`private` if any part has them), any other
    /// header the first part's value in declaration order.
    #[serde(default)]
    pub forward_headers: Vec<String>,
}

/// What happens when two parts' results set the same field.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub enum Collisions {
    /// Objects deep-merge; anything else: the later part wins.
    #[default]
    Overwrite,
    /// Objects deep-merge, arrays concatenate; other values: the later part wins.
    Concat,
    /// Objects deep-merge; any other field set twice fails the composite (502).
    Error,
}

/// How failures of single items of a `for_each` part are handled.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub enum OnItemError {
    /// The item gets no answer and the failure is listed in the errors
    /// field as `part[index]`; the other items keep theirs.
    #[default]
    Report,
    /// The whole part fails (required → the composite fails).
    FailPart,
}

/// One call for all items of a `for_each` part, instead of one per item.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Path template of the batch call; it reads the items through a
    /// wildcard, e.g. `/products?ids={order.items.*.product_id|join(",")}`.
    pub path: String,
    /// Field of each answer element matched against the item's field read
    /// by `path` (`product_id` above).
    pub key: String,
    /// Dotted path of the answer's array (the root when not given).
    #[serde(default)]
    pub target: Option<String>,
}

/// How part results are combined into the answer.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub enum MergeMode {
    /// One key per part: `{"profile": {...}, "orders": [...]}`.
    #[default]
    UnderKeys,
    /// Objects deep-merged into one; on a conflict the later part wins.
    Merge,
}

/// One upstream call of a composite route.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// Unique within the route; the key of its result and of references to it.
    pub name: String,
    /// The upstream called.
    pub upstream: String,
    /// Request method.
    #[serde(default = "default_part_method")]
    pub method: String,
    /// Path (and optional query) template, e.g. `/users/{claims.sub}`.
    pub path: String,
    /// Query parameters added to the path: name → value template.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Request headers: name → value template.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request body template (sent as `application/json`).
    #[serde(default)]
    pub body: Option<String>,
    /// Bound on this call; the composite's `timeout_ms` when not given.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// A required part that fails fails the whole request.
    #[serde(default = "default_true")]
    pub required: bool,
    /// Another part that must complete before this one starts.
    #[serde(default)]
    pub after: Option<String>,
    /// Dotted paths kept from the result (empty keeps everything).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Dotted paths removed from the result.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Dotted path → new dotted path, applied after allow/deny.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Dotted path of the sub-value of the response that is used.
    #[serde(default)]
    pub target: Option<String>,
    /// Key the result is placed under instead of the part's name; a dotted
    /// path (`customer.profile`) places it below nested objects.
    #[serde(default)]
    pub group: Option<String>,
    /// Run once per element of an earlier part's array (`order.items`);
    /// templates read the element as `{item...}` and each answer is placed
    /// into its element under `into`.
    #[serde(default)]
    pub for_each: Option<String>,
    /// Key of each element the item's answer is placed under (the part's
    /// name when not given).
    #[serde(default)]
    pub into: Option<String>,
    /// Most items of `for_each`; more fails the part.
    #[serde(default = "default_max_items")]
    pub max_items: usize,
    /// Most item calls of this part in flight at once, per request.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// What a failed item does.
    #[serde(default)]
    pub on_item_error: OnItemError,
    /// One call for all items (see [`Batch`]).
    #[serde(default)]
    pub batch: Option<Batch>,
    /// Run the part only when this holds: `claims.role == admin`,
    /// `order.coupon` (present and not null), `!order.coupon`,
    /// `query.v != 2`. A skipped part is absent, not an error.
    #[serde(default)]
    pub when: Option<String>,
}

fn default_max_items() -> usize {
    100
}
fn default_max_concurrency() -> usize {
    8
}

fn default_aggregate_timeout_ms() -> u64 {
    10_000
}
fn default_max_part_bytes() -> u64 {
    1024 * 1024
}
fn default_max_aggregate_bytes() -> u64 {
    4 * 1024 * 1024
}
fn default_errors_field() -> String {
    "_errors".into()
}
fn default_part_method() -> String {
    "GET".into()
}
