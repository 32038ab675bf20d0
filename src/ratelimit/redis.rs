//! Cluster-wide rate limits kept in Redis.
//!
//! Every shard of every gateway instance owns one [`RedisClient`] per Redis
//! target. A limit's shared state lives in Redis and is changed only by Lua
//! scripts, one per [`Algorithm`], that read the time from Redis (`TIME`), so
//! all instances agree on window boundaries and refill rates regardless of
//! their own clocks, and every decision is atomic.
//!
//! # Leases and accuracy
//!
//! [`RedisClient::acquire`] takes a *lease*: between `cost` and `want` units,
//! as many as fit, in one round trip. The caller can then admit requests
//! against the lease locally and only go back to Redis when it is used up.
//! Because every grant is an atomic step in Redis, the total admitted across
//! all instances never exceeds the limit. The price is unused capacity: a
//! holder that stops seeing traffic keeps what is left of its lease until it
//! lapses, so up to `holders × (want - 1)` units can go unused at a window's
//! end. `want = cost` gives exact limits at one round trip per request.
//!
//! # Failure handling
//!
//! Each call is bounded by the client's `timeout` (connecting, the handshake
//! and the script round trip together). Any I/O error, timeout or malformed
//! reply closes that connection, drops the idle ones and starts a back-off of
//! `retry_after` during which calls fail at once with [`RedisError::Down`]
//! without touching the network, so an outage costs the request path at most
//! one timeout per back-off period. Error replies from the server (a wrong
//! password, a script error) are reported as [`RedisError::Server`]; during
//! the handshake they also start the back-off. Scripts are loaded with
//! `SCRIPT LOAD` and run with `EVALSHA`; a `NOSCRIPT` reply (after a Redis
//! restart or `SCRIPT FLUSH`) loads the script again and retries once.
//!
//! # Keys
//!
//! The state of `key` lives under `key:tb`, `key:lb`, `key:sl` (token bucket,
//! leaky bucket, sliding log) or `key:fw:<window>`, `key:sw:<window>` (fixed
//! and sliding window, one counter per window aligned to Unix time), so a
//! limit reconfigured with another algorithm never meets a value of the wrong
//! type. Every key gets a `PEXPIRE` covering the time its state matters, so
//! Redis memory stays bounded. A sliding log holds one sorted-set member per
//! admitted unit, so its memory and script time grow with the limit and
//! the lease size. The window counters are derived inside the
//! scripts, which standalone Redis allows; Redis Cluster would need the key
//! to carry a hash tag.
//!
//! # Precision
//!
//! The scripts compute in integers: microseconds, and millionths of a token
//! for the buckets. Lua numbers are doubles, so values stay exact up to
//! 2^53: capacities up to about 9·10^9 units, and for the sliding window
//! `limit × window` (in µs) up to about 9·10^15 (a limit of 2.5 million per
//! hour). Each bucket update rounds at most one millionth of a unit in the
//! limit's favour.

use super::algorithm::Algorithm;
use super::resp::{self, Reply};
use crate::http::conn::Conn;
use crate::http::io::IoFail;
use monoio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::poll_fn;
use std::net::{SocketAddr, ToSocketAddrs};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Read buffer per Redis connection (replies are a few dozen bytes).
const READ_BUF: usize = 1024;
/// Most bytes buffered while waiting for one complete reply.
const MAX_REPLY: usize = 2 * resp::MAX_BULK;
/// Largest `want` or `cost` passed to a script (Lua integers are exact below 2^53).
const MAX_UNITS: u64 = 1 << 53;

/// Where the shared limits live: parsed from `redis://[:password@]host:port[/db]`
/// (also `redis://user:password@host:port/db`).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// `host:port` (an IPv6 host in brackets).
    pub addr: String,
    /// The ACL user to authenticate as, if any.
    pub username: Option<String>,
    /// The password to authenticate with, if any.
    pub password: Option<String>,
    /// The database to `SELECT` (0 is the default and needs no command).
    pub db: u32,
    /// `rediss://`: the connection runs over TLS.
    pub tls: bool,
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTarget")
            .field("addr", &self.addr)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Parses `redis://[[user]:password@]host[:port][/db]` (`rediss://` for
/// TLS). The port defaults to 6379 and the database to 0; user and password
/// may be percent-encoded.
pub fn parse_url(url: &str) -> Result<RedisTarget, String> {
    let (rest, tls) = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("redis") => (rest, false),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("rediss") => (rest, true),
        _ => return Err(format!("{url:?}: expected redis://host:port")),
    };
    if rest.contains(['?', '#']) {
        return Err(format!("{url:?}: query strings are not supported"));
    }
    let (userinfo, hostpath) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => {
            let Some((user, pass)) = u.split_once(':') else {
                return Err(format!(
                    "{url:?}: credentials must be user:password or :password"
                ));
            };
            let user = percent_decode(user).ok_or_else(|| format!("{url:?}: bad user"))?;
            let pass = percent_decode(pass).ok_or_else(|| format!("{url:?}: bad password"))?;
            if pass.is_empty() {
                return Err(format!("{url:?}: empty password"));
            }
            ((!user.is_empty()).then_some(user), Some(pass))
        }
    };
    let (hostport, db) = match hostpath.split_once('/') {
        None => (hostpath, 0),
        Some((h, "")) => (h, 0),
        Some((h, d)) => {
            let db = d
                .parse::<u32>()
                .ok()
                .filter(|_| d.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("{url:?}: bad database number {d:?}"))?;
            (h, db)
        }
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unterminated IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{url:?}: bad port"))?,
            ),
        };
        (format!("[{host}]"), port)
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("{url:?}: missing host"));
    }
    let port = match port {
        None => 6379,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&n| n != 0 && p.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("{url:?}: bad port {p:?}"))?,
    };
    Ok(RedisTarget {
        addr: format!("{host}:{port}"),
        username,
        password,
        db,
        tls,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let pair = [bytes.next()?, bytes.next()?];
            let hex = std::str::from_utf8(&pair).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// What a lease acquired from the shared state says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Units taken: between `cost` and `want`, or 0 when fewer than `cost` fit.
    pub granted: u64,
    /// The limit's size (`RateLimit-Limit`).
    pub limit: u64,
    /// Units left in the shared state after this grant (`RateLimit-Remaining`).
    pub remaining: u64,
    /// Nanoseconds until the limit is fully available again (`RateLimit-Reset`).
    pub reset_ns: u64,
    /// Nanoseconds until `cost` units could fit (`Retry-After`); 0 when granted.
    pub retry_after_ns: u64,
}

/// Why a call to Redis failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisError {
    /// A recent failure put the client in its back-off; the network was not touched.
    Down,
    /// Connecting or the round trip (or waiting for a free connection) took too long.
    Timeout,
    /// The connection failed or was closed.
    Io(String),
    /// The server sent something that is not a valid reply, or not the expected one.
    Protocol(String),
    /// The server answered with an error (a wrong password, a script error, ...).
    Server(String),
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisError::Down => f.write_str("redis is down (backing off after a failure)"),
            RedisError::Timeout => f.write_str("redis timed out"),
            RedisError::Io(e) => write!(f, "redis connection failed: {e}"),
            RedisError::Protocol(e) => write!(f, "redis protocol error: {e}"),
            RedisError::Server(e) => write!(f, "redis error: {e}"),
        }
    }
}

impl std::error::Error for RedisError {}

/// Shared prelude of every script: effects replication (so writes may follow
/// `TIME`; the default since Redis 5, a no-op in 7), Redis time in µs, the
/// lease arguments and helpers. `s` formats an integer-valued number exactly (`tostring` would
/// switch to exponent notation above 10^14).
const PRELUDE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local want = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local function s(n) return string.format('%d', n) end
local function lease(fit)
  if fit >= cost then return math.min(want, fit) end
  return 0
end
"#;

/// Fixed window: ARGV[3] = limit, ARGV[4] = window (µs). One counter per
/// window aligned to Unix time, kept for one window.
const FIXED_WINDOW: &str = r#"
local limit = tonumber(ARGV[3])
local w = tonumber(ARGV[4])
local idx = math.floor(now / w)
local k = KEYS[1] .. ':' .. s(idx)
local count = tonumber(redis.call('GET', k) or '0') or 0
local g = lease(limit - count)
if g > 0 then
  redis.call('INCRBY', k, s(g))
  redis.call('PEXPIRE', k, s(math.ceil(w / 1000)))
end
local reset = (idx + 1) * w - now
local retry = 0
if g == 0 then retry = reset end
return {g, math.max(0, limit - count - g), reset, retry}
"#;

/// Sliding window (counter approximation): ARGV[3] = limit, ARGV[4] = window
/// (µs). The previous window's count is weighted by its remaining overlap;
/// counters are kept for two windows.
const SLIDING_WINDOW: &str = r#"
local limit = tonumber(ARGV[3])
local w = tonumber(ARGV[4])
local idx = math.floor(now / w)
local kc = KEYS[1] .. ':' .. s(idx)
local kp = KEYS[1] .. ':' .. s(idx - 1)
local cur = tonumber(redis.call('GET', kc) or '0') or 0
local prev = tonumber(redis.call('GET', kp) or '0') or 0
local left = (idx + 1) * w - now
local fit = math.floor((limit * w - prev * left - cur * w) / w)
local g = lease(fit)
if g > 0 then
  redis.call('INCRBY', kc, s(g))
  redis.call('PEXPIRE', kc, s(math.ceil(2 * w / 1000)))
end
local retry = 0
if g == 0 then
  if cur + cost <= limit and prev > 0 then
    retry = math.max(0, left - math.floor((limit - cur - cost) * w / prev))
  else
    retry = left
  end
end
return {g, math.max(0, fit - g), left, retry}
"#;

/// Token bucket: ARGV[3] = capacity, ARGV[4] = refill per second (which is
/// millionths of a token per µs). Hash {tokens (millionths), at (µs)}; the
/// part of the elapsed time not yet turned into a whole millionth stays in `at`.
const TOKEN_BUCKET: &str = r#"
local cap = tonumber(ARGV[3]) * 1000000
local rate = tonumber(ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(h[1])
local at = tonumber(h[2])
if tokens == nil or at == nil then
  tokens = cap
  at = now
end
tokens = math.min(tokens, cap)
if now > at then
  if rate > 0 then
    local exact = (now - at) * rate
    local gained = math.floor(exact)
    tokens = tokens + gained
    if tokens >= cap then
      tokens = cap
      at = now
    else
      at = now - math.floor((exact - gained) / rate)
    end
  else
    at = now
  end
end
local g = lease(math.floor(tokens / 1000000))
tokens = tokens - g * 1000000
redis.call('HSET', KEYS[1], 'tokens', s(tokens), 'at', s(at))
local reset, retry, ttl = 0, 0, 86400000
if rate > 0 then
  reset = math.ceil((cap - tokens) / rate)
  if g == 0 then retry = math.ceil((cost * 1000000 - tokens) / rate) end
  ttl = math.min(math.ceil(reset / 1000) + 1000, 2592000000)
end
redis.call('PEXPIRE', KEYS[1], s(ttl))
return {g, math.floor(tokens / 1000000), reset, retry}
"#;

/// Leaky bucket (reject mode): ARGV[3] = capacity, ARGV[4] = drain per second.
/// Hash {level (millionths), at (µs)}.
const LEAKY_BUCKET: &str = r#"
local cap = tonumber(ARGV[3]) * 1000000
local rate = tonumber(ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'level', 'at')
local level = tonumber(h[1])
local at = tonumber(h[2])
if level == nil or at == nil then
  level = 0
  at = now
end
if now > at then
  if rate > 0 then
    local exact = (now - at) * rate
    local drained = math.floor(exact)
    level = level - drained
    if level <= 0 then
      level = 0
      at = now
    else
      at = now - math.floor((exact - drained) / rate)
    end
  else
    at = now
  end
end
local g = lease(math.floor((cap - level) / 1000000))
level = level + g * 1000000
redis.call('HSET', KEYS[1], 'level', s(level), 'at', s(at))
local reset, retry, ttl = 0, 0, 86400000
if rate > 0 then
  reset = math.ceil(level / rate)
  if g == 0 then retry = math.ceil(math.max(level + cost * 1000000 - cap, 1000000) / rate) end
  ttl = math.min(math.ceil(reset / 1000) + 1000, 2592000000)
end
redis.call('PEXPIRE', KEYS[1], s(ttl))
return {g, math.max(0, math.floor((cap - level) / 1000000)), reset, retry}
"#;

/// Sliding log (exact): ARGV[3] = limit, ARGV[4] = window (µs). A sorted set
/// of admission times (one unique member per unit), kept for one window.
const SLIDING_LOG: &str = r#"
local limit = tonumber(ARGV[3])
local w = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', s(now - w))
local count = redis.call('ZCARD', KEYS[1])
local g = lease(limit - count)
for i = 1, g do
  local m = s(now) .. '-' .. s(count + i)
  while redis.call('ZADD', KEYS[1], 'NX', s(now), m) == 0 do m = m .. '+' end
end
local reset, retry = 0, 0
if g > 0 then
  redis.call('PEXPIRE', KEYS[1], s(math.ceil(w / 1000)))
  reset = w
else
  local last = redis.call('ZRANGE', KEYS[1], '-1', '-1', 'WITHSCORES')
  if last[2] then reset = math.max(0, tonumber(last[2]) + w - now) end
  local i = s(count + cost - limit - 1)
  local e = redis.call('ZRANGE', KEYS[1], i, i, 'WITHSCORES')
  if e[2] then retry = math.max(0, tonumber(e[2]) + w - now) else retry = w end
end
return {g, math.max(0, limit - count - g), reset, retry}
"#;

/// The scripts, indexed by [`script_of`].
const SCRIPTS: [(&str, &str); 5] = [
    ("fw", FIXED_WINDOW),
    ("sw", SLIDING_WINDOW),
    ("tb", TOKEN_BUCKET),
    ("lb", LEAKY_BUCKET),
    ("sl", SLIDING_LOG),
];

/// Which script runs `alg`, and its two parameters as script arguments.
fn script_of(alg: &Algorithm) -> (usize, u64, String, String) {
    fn window_us(ns: u64) -> String {
        ns.div_ceil(1000).max(1).to_string()
    }
    fn rate(r: f64) -> String {
        if r.is_finite() && r > 0.0 {
            r.to_string()
        } else {
            "0".to_string()
        }
    }
    match alg {
        Algorithm::FixedWindow { limit, window_ns } => {
            (0, *limit, limit.to_string(), window_us(*window_ns))
        }
        Algorithm::SlidingWindow { limit, window_ns } => {
            (1, *limit, limit.to_string(), window_us(*window_ns))
        }
        Algorithm::TokenBucket {
            capacity,
            refill_per_s,
        } => (2, *capacity, capacity.to_string(), rate(*refill_per_s)),
        Algorithm::LeakyBucket {
            capacity,
            drain_per_s,
            ..
        } => (3, *capacity, capacity.to_string(), rate(*drain_per_s)),
        Algorithm::SlidingLog { limit, window_ns } => {
            (4, *limit, limit.to_string(), window_us(*window_ns))
        }
    }
}

/// The full script text for index `i`.
fn script_text(i: usize) -> String {
    let body = SCRIPTS.get(i).map_or("", |s| s.1);
    format!("{PRELUDE}{body}")
}

/// The Redis key holding `key`'s state for `alg` (the window scripts append
/// `:<window index>` to it).
pub fn redis_key(key: &str, alg: &Algorithm) -> String {
    let (i, ..) = script_of(alg);
    let tag = SCRIPTS.get(i).map_or("", |s| s.0);
    format!("{key}:{tag}")
}

/// One open connection and its read buffer.
struct RedisConn {
    conn: Conn,
}

fn remaining(deadline: Instant) -> Result<Duration, RedisError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(RedisError::Timeout)
    } else {
        Ok(left)
    }
}

fn io_fail(e: IoFail) -> RedisError {
    match e {
        IoFail::Timeout => RedisError::Timeout,
        IoFail::Io(e) => RedisError::Io(e.to_string()),
    }
}

impl RedisConn {
    /// Sends one command and reads its reply (an error reply is returned as
    /// `Ok(Reply::Error)`), all before `deadline`.
    async fn round_trip(&mut self, args: &[&[u8]], deadline: Instant) -> Result<Reply, RedisError> {
        if !self.conn.buffered().is_empty() {
            return Err(RedisError::Protocol("unsolicited data from redis".into()));
        }
        let mut out = Vec::new();
        resp::encode(args, &mut out);
        let (res, _) = self.conn.write(out, remaining(deadline)?).await;
        res.map_err(io_fail)?;
        loop {
            match resp::parse(self.conn.buffered()).map_err(RedisError::Protocol)? {
                Some((reply, used)) => {
                    self.conn.consume(used);
                    self.conn.shrink_to(READ_BUF);
                    return Ok(reply);
                }
                None if self.conn.buffered().len() > MAX_REPLY => {
                    return Err(RedisError::Protocol(format!(
                        "reply exceeds {MAX_REPLY} bytes"
                    )));
                }
                None => match self.conn.fill(remaining(deadline)?).await {
                    Ok(0) => return Err(RedisError::Io("connection closed by redis".into())),
                    Ok(_) => {}
                    Err(e) => return Err(io_fail(e)),
                },
            }
        }
    }

    /// A command whose only acceptable answer is `+OK`.
    async fn expect_ok(&mut self, args: &[&[u8]], deadline: Instant) -> Result<(), RedisError> {
        match self.round_trip(args, deadline).await? {
            Reply::Simple(s) if s == "OK" => Ok(()),
            Reply::Error(e) => Err(RedisError::Server(e)),
            other => Err(RedisError::Protocol(format!(
                "expected +OK, got {}",
                other.kind()
            ))),
        }
    }
}

/// A client to one Redis target, owned by one shard: a bounded pool of
/// connections, the loaded scripts' hashes and the failure back-off.
pub struct RedisClient {
    target: RedisTarget,
    timeout: Duration,
    retry_after: Duration,
    max_connections: usize,
    /// Connections ready for a command, most recently used last.
    idle: RefCell<Vec<RedisConn>>,
    /// Connections open or being opened, idle or busy.
    open: Cell<usize>,
    /// Calls waiting for a connection to come back.
    waiters: RefCell<Vec<Waker>>,
    /// End of the back-off after a failure.
    down_until: Cell<Option<Instant>>,
    /// The target's address once resolved.
    resolved: Cell<Option<SocketAddr>>,
    /// SHA1 of each script as returned by `SCRIPT LOAD`.
    shas: RefCell<[Option<String>; SCRIPTS.len()]>,
    /// TLS settings of a `rediss://` target.
    tls: Option<crate::tls::UpstreamTlsPlan>,
}

/// One connection slot taken from the pool (counted in `open`). Dropped
/// without [`Slot::give_back`] (after an error, or when the caller's future
/// is dropped mid-call and a reply may still be in flight) it closes its
/// connection and frees the slot.
struct Slot<'a> {
    client: &'a RedisClient,
    conn: Option<RedisConn>,
    returned: bool,
}

impl<'a> Slot<'a> {
    fn new(client: &'a RedisClient, conn: Option<RedisConn>) -> Slot<'a> {
        Slot {
            client,
            conn,
            returned: false,
        }
    }

    /// Puts the connection back into the idle pool.
    fn give_back(mut self) {
        if let Some(c) = self.conn.take() {
            self.client.idle.borrow_mut().push(c);
            self.returned = true;
            self.client.wake_waiters();
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.returned {
            self.conn = None;
            self.client
                .open
                .set(self.client.open.get().saturating_sub(1));
            self.client.wake_waiters();
        }
    }
}

impl RedisClient {
    /// A client for `target` with no connection opened yet. `timeout` bounds
    /// each call (connect and handshake included); after a failure, calls fail
    /// with [`RedisError::Down`] for `retry_after` without touching the
    /// network. At most `max_connections` (at least 1) are open at once.
    pub fn new(
        target: RedisTarget,
        timeout: Duration,
        retry_after: Duration,
        max_connections: usize,
    ) -> RedisClient {
        RedisClient {
            target,
            timeout,
            retry_after,
            max_connections: max_connections.max(1),
            idle: RefCell::new(Vec::new()),
            open: Cell::new(0),
            waiters: RefCell::new(Vec::new()),
            down_until: Cell::new(None),
            resolved: Cell::new(None),
            shas: RefCell::new(Default::default()),
            tls: None,
        }
    }

    /// Talks TLS to the target with these settings (for `rediss://`).
    pub fn with_tls(mut self, tls: Option<crate::tls::UpstreamTlsPlan>) -> RedisClient {
        self.tls = tls;
        self
    }

    /// The target this client talks to.
    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    /// True while in the post-failure back-off.
    pub fn is_down(&self) -> bool {
        self.down_until
            .get()
            .is_some_and(|until| Instant::now() < until)
    }

    /// Connections currently open (idle or in use).
    pub fn open_connections(&self) -> usize {
        self.open.get()
    }

    /// Atomically takes between `cost` and `want` units (`want >= cost`; a
    /// smaller `want` is raised to `cost`, and `cost` is at least 1) of the
    /// limit `alg` for `key` from the shared state, as many as fit (a lease);
    /// grants 0 if fewer than `cost` fit. The time comes from Redis `TIME`
    /// inside the script, so all gateway instances agree. Keys get a
    /// `PEXPIRE`, so Redis memory stays bounded. For a leaky bucket only the
    /// reject mode applies (`max_wait_ns` is ignored).
    pub async fn acquire(
        &self,
        key: &str,
        alg: &Algorithm,
        want: u64,
        cost: u64,
    ) -> Result<Grant, RedisError> {
        let cost = cost.clamp(1, MAX_UNITS);
        let want = want.clamp(cost, MAX_UNITS);
        let (script, limit, p1, p2) = script_of(alg);
        let rkey = redis_key(key, alg);
        let (want_s, cost_s) = (want.to_string(), cost.to_string());
        let args: [&[u8]; 4] = [
            want_s.as_bytes(),
            cost_s.as_bytes(),
            p1.as_bytes(),
            p2.as_bytes(),
        ];
        let deadline = self.start()?;
        let mut slot = self.checkout(deadline).await?;
        let res = match slot.conn.as_mut() {
            Some(conn) => self.run_script(conn, script, &rkey, &args, deadline).await,
            None => Err(RedisError::Protocol("no connection in slot".into())),
        };
        self.finish(slot, res.and_then(|reply| grant_of(reply, want, limit)))
    }

    /// Sends one raw command (e.g. `[b"PTTL", b"key"]`) on a pooled connection
    /// and returns its reply; an error reply is [`RedisError::Server`]. Subject
    /// to the same timeout and back-off as [`RedisClient::acquire`].
    pub async fn command(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let deadline = self.start()?;
        let mut slot = self.checkout(deadline).await?;
        let res = match slot.conn.as_mut() {
            Some(conn) => conn.round_trip(args, deadline).await,
            None => Err(RedisError::Protocol("no connection in slot".into())),
        };
        match self.finish(slot, res)? {
            Reply::Error(e) => Err(RedisError::Server(e)),
            reply => Ok(reply),
        }
    }

    /// The deadline of a call starting now, or `Down` during the back-off.
    fn start(&self) -> Result<Instant, RedisError> {
        if self.is_down() {
            return Err(RedisError::Down);
        }
        Ok(Instant::now() + self.timeout)
    }

    /// Returns the slot's connection to the pool when the exchange left it
    /// usable; otherwise closes it and starts the back-off.
    fn finish<T>(&self, slot: Slot<'_>, res: Result<T, RedisError>) -> Result<T, RedisError> {
        match res {
            Ok(v) => {
                slot.give_back();
                Ok(v)
            }
            Err(e @ RedisError::Server(_)) => {
                slot.give_back();
                Err(e)
            }
            Err(e) => {
                drop(slot);
                self.fail();
                Err(e)
            }
        }
    }

    /// Starts the back-off and closes the idle connections (after a restart
    /// of Redis they are all dead).
    fn fail(&self) {
        self.down_until.set(Some(Instant::now() + self.retry_after));
        self.resolved.set(None);
        let closed = std::mem::take(&mut *self.idle.borrow_mut());
        self.open.set(self.open.get().saturating_sub(closed.len()));
        drop(closed);
        self.wake_waiters();
    }

    fn wake_waiters(&self) {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }

    /// An idle connection, a new one if fewer than `max_connections` are
    /// open, or the first one given back before `deadline`.
    async fn checkout(&self, deadline: Instant) -> Result<Slot<'_>, RedisError> {
        loop {
            let conn = self.idle.borrow_mut().pop();
            if let Some(conn) = conn {
                return Ok(Slot::new(self, Some(conn)));
            }
            if self.open.get() < self.max_connections {
                self.open.set(self.open.get() + 1);
                let mut slot = Slot::new(self, None);
                match self.connect(deadline).await {
                    Ok(conn) => {
                        slot.conn = Some(conn);
                        return Ok(slot);
                    }
                    Err(e) => {
                        drop(slot);
                        self.fail();
                        return Err(e);
                    }
                }
            }
            let left = remaining(deadline)?;
            let mut registered = false;
            let wait = poll_fn(|cx| {
                if registered {
                    Poll::Ready(())
                } else {
                    registered = true;
                    self.waiters.borrow_mut().push(cx.waker().clone());
                    Poll::Pending
                }
            });
            if monoio::time::timeout(left, wait).await.is_err() {
                return Err(RedisError::Timeout);
            }
            if self.is_down() {
                return Err(RedisError::Down);
            }
        }
    }

    /// Opens a connection and authenticates and selects the database.
    async fn connect(&self, deadline: Instant) -> Result<RedisConn, RedisError> {
        let addr = self.resolve()?;
        let stream = match monoio::time::timeout(
            remaining(deadline)?,
            TcpStream::connect_addr(addr),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(RedisError::Io(format!("connect to {addr}: {e}"))),
            Err(_) => return Err(RedisError::Timeout),
        };
        let _ = stream.set_nodelay(true);
        let conn = match &self.tls {
            None => Conn::new(stream, READ_BUF),
            Some(tls) => {
                let Some(name) = tls.names.first().cloned() else {
                    return Err(RedisError::Io("no TLS server name".into()));
                };
                match monoio::time::timeout(
                    remaining(deadline)?,
                    crate::tls::connect(tls, name, stream),
                )
                .await
                {
                    Ok(Ok(s)) => Conn::with_stream(crate::tls::Stream::Tls(Box::new(s)), READ_BUF),
                    Ok(Err(e)) => {
                        return Err(RedisError::Io(format!("TLS handshake with {addr}: {e}")))
                    }
                    Err(_) => return Err(RedisError::Timeout),
                }
            }
        };
        let mut conn = RedisConn { conn };
        if let Some(pass) = &self.target.password {
            match &self.target.username {
                Some(user) => {
                    conn.expect_ok(&[b"AUTH", user.as_bytes(), pass.as_bytes()], deadline)
                        .await?
                }
                None => {
                    conn.expect_ok(&[b"AUTH", pass.as_bytes()], deadline)
                        .await?
                }
            }
        }
        if self.target.db != 0 {
            let db = self.target.db.to_string();
            conn.expect_ok(&[b"SELECT", db.as_bytes()], deadline)
                .await?;
        }
        Ok(conn)
    }

    /// The target's socket address. A host name is resolved once (blocking,
    /// through the system resolver) and again only after a failure.
    fn resolve(&self) -> Result<SocketAddr, RedisError> {
        if let Some(a) = self.resolved.get() {
            return Ok(a);
        }
        let addr = match self.target.addr.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => self
                .target
                .addr
                .to_socket_addrs()
                .map_err(|e| RedisError::Io(format!("resolve {}: {e}", self.target.addr)))?
                .next()
                .ok_or_else(|| {
                    RedisError::Io(format!("resolve {}: no addresses", self.target.addr))
                })?,
        };
        self.resolved.set(Some(addr));
        Ok(addr)
    }

    /// Runs script `i` with `EVALSHA`, loading it first if this client has
    /// not yet, and again once on `NOSCRIPT`.
    async fn run_script(
        &self,
        conn: &mut RedisConn,
        i: usize,
        key: &str,
        args: &[&[u8]; 4],
        deadline: Instant,
    ) -> Result<Reply, RedisError> {
        let known = self.shas.borrow().get(i).cloned().flatten();
        let mut sha = match known {
            Some(sha) => sha,
            None => self.load_script(conn, i, deadline).await?,
        };
        let mut reloaded = false;
        loop {
            let mut cmd: Vec<&[u8]> = vec![b"EVALSHA", sha.as_bytes(), b"1", key.as_bytes()];
            cmd.extend_from_slice(args);
            match conn.round_trip(&cmd, deadline).await? {
                Reply::Error(e) if e.starts_with("NOSCRIPT") && !reloaded => {
                    reloaded = true;
                    sha = self.load_script(conn, i, deadline).await?;
                }
                Reply::Error(e) => return Err(RedisError::Server(e)),
                reply => return Ok(reply),
            }
        }
    }

    /// `SCRIPT LOAD`s script `i` and remembers its hash.
    async fn load_script(
        &self,
        conn: &mut RedisConn,
        i: usize,
        deadline: Instant,
    ) -> Result<String, RedisError> {
        let text = script_text(i);
        let sha = match conn
            .round_trip(&[b"SCRIPT", b"LOAD", text.as_bytes()], deadline)
            .await?
        {
            Reply::Bulk(b) if b.len() == 40 && b.iter().all(|c| c.is_ascii_hexdigit()) => {
                String::from_utf8_lossy(&b).into_owned()
            }
            Reply::Error(e) => return Err(RedisError::Server(e)),
            other => {
                return Err(RedisError::Protocol(format!(
                    "SCRIPT LOAD answered with {}",
                    other.kind()
                )))
            }
        };
        if let Some(slot) = self.shas.borrow_mut().get_mut(i) {
            *slot = Some(sha.clone());
        }
        Ok(sha)
    }
}

/// The script's answer `{granted, remaining, reset_us, retry_us}` as a [`Grant`].
fn grant_of(reply: Reply, want: u64, limit: u64) -> Result<Grant, RedisError> {
    let bad = |why: &str| RedisError::Protocol(format!("unexpected script reply: {why}"));
    let Reply::Array(items) = reply else {
        return Err(bad(reply.kind()));
    };
    let mut n = [0u64; 4];
    if items.len() != n.len() {
        return Err(bad(&format!("{} elements", items.len())));
    }
    for (slot, item) in n.iter_mut().zip(&items) {
        match item {
            Reply::Integer(v) if *v >= 0 => *slot = *v as u64,
            other => return Err(bad(other.kind())),
        }
    }
    let [granted, remaining, reset_us, retry_us] = n;
    if granted > want {
        return Err(bad("granted more than asked for"));
    }
    Ok(Grant {
        granted,
        limit,
        remaining,
        reset_ns: reset_us.saturating_mul(1000),
        retry_after_ns: if granted == 0 {
            retry_us.saturating_mul(1000)
        } else {
            0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(addr: &str, user: Option<&str>, pass: Option<&str>, db: u32) -> RedisTarget {
        RedisTarget {
            addr: addr.into(),
            username: user.map(Into::into),
            password: pass.map(Into::into),
            db,
            tls: false,
        }
    }

    #[test]
    fn parses_urls() {
        let ok = [
            (
                "redis://127.0.0.1:6380",
                target("127.0.0.1:6380", None, None, 0),
            ),
            ("redis://localhost", target("localhost:6379", None, None, 0)),
            ("redis://h:1/", target("h:1", None, None, 0)),
            ("REDIS://h:1/7", target("h:1", None, None, 7)),
            ("redis://:pw@h:1/2", target("h:1", None, Some("pw"), 2)),
            (
                "redis://user:pw@h:1/3",
                target("h:1", Some("user"), Some("pw"), 3),
            ),
            (
                "redis://:p%40ss%3Aw@h:1",
                target("h:1", None, Some("p@ss:w"), 0),
            ),
            ("redis://:a@b@h:1", target("h:1", None, Some("a@b"), 0)),
            ("redis://[::1]:6390/1", target("[::1]:6390", None, None, 1)),
            ("redis://[::1]", target("[::1]:6379", None, None, 0)),
        ];
        for (url, want) in ok {
            assert_eq!(parse_url(url), Ok(want), "{url}");
        }
        let tls = parse_url("rediss://h:1").unwrap();
        assert!(tls.tls && tls.addr == "h:1");
        assert!(!parse_url("redis://h:1").unwrap().tls);
        for bad in [
            "",
            "http://h:1",
            "redis://",
            "redis://:1",
            "redis://h:0",
            "redis://h:99999",
            "redis://h:+1",
            "redis://h:x",
            "redis://h:1/x",
            "redis://h:1/-1",
            "redis://h:1/1?timeout=3",
            "redis://pw@h:1",
            "redis://user:@h:1",
            "redis://:%zz@h:1",
            "redis://[::1",
            "redis://[::1]x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let t = parse_url("redis://:hunter2@h:1").unwrap();
        assert!(!format!("{t:?}").contains("hunter2"));
    }

    #[test]
    fn keys_are_tagged_by_algorithm() {
        let fw = Algorithm::FixedWindow {
            limit: 1,
            window_ns: 1,
        };
        let tb = Algorithm::TokenBucket {
            capacity: 1,
            refill_per_s: 1.0,
        };
        assert_eq!(redis_key("k", &fw), "k:fw");
        assert_eq!(redis_key("k", &tb), "k:tb");
        assert_eq!(script_of(&fw).3, "1", "windows are at least 1 µs");
        let nan = Algorithm::TokenBucket {
            capacity: 1,
            refill_per_s: f64::NAN,
        };
        assert_eq!(script_of(&nan).3, "0");
    }

    #[test]
    fn script_replies_are_checked() {
        let ints = |v: &[i64]| Reply::Array(v.iter().map(|&n| Reply::Integer(n)).collect());
        let g = grant_of(ints(&[0, 0, 5, 7]), 3, 10).unwrap();
        assert_eq!(
            g,
            Grant {
                granted: 0,
                limit: 10,
                remaining: 0,
                reset_ns: 5000,
                retry_after_ns: 7000
            }
        );
        assert_eq!(
            grant_of(ints(&[2, 1, 5, 7]), 3, 10).unwrap().retry_after_ns,
            0
        );
        for bad in [
            ints(&[4, 0, 0, 0]),
            ints(&[1, 0, 0]),
            ints(&[1, -1, 0, 0]),
            Reply::Nil,
            Reply::Array(vec![Reply::Bulk(b"1".to_vec()); 4]),
        ] {
            assert!(matches!(grant_of(bad, 3, 10), Err(RedisError::Protocol(_))));
        }
    }
}
