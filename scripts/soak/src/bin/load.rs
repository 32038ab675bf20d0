//! The soak test's load client: keep-alive HTTP/1.1 connections to the
//! gateway, one thread each, cycling through the soak config's routes
//! (composite, JWT, plain). Every request expects 200.
//!
//! - `--rate 0`: closed loop (each connection sends its next request when the
//!   last one is answered); prints `capacity_rps=N`, the measured capacity.
//! - `--rate R`: open loop at R requests/s in total, each connection on its
//!   own fixed schedule; a late answer delays that connection's next request,
//!   and the delay is counted in the latency (measured from the schedule).
//!
//! Every outcome (each status, each kind of connection error) is counted per
//! second into `--out DIR/per-second.csv`, the slowest answer of each second
//! into `DIR/slowest.csv`, and `DIR/summary.env` holds the totals for the
//! script.
//!
//! With `--events FILE` (lines `EPOCH_MS kill|up NAME`, written by the script
//! as it restarts backends, the kill logged before it happens), each backend
//! restart has a window from its kill to `--grace-ms` after it is up again.
//! A failure is tagged with a restart when it is a 502/503 or a connection
//! error, its time span meets the window, and its route calls that backend;
//! such failures are tolerated, counted per restart in `DIR/restarts.csv`.
//! Any other failure is listed in `DIR/failures.csv` and makes the exit
//! status 1. Failures are placed as they happen against the restarts logged
//! so far (the file is polled); those not placed are checked again at the end.

use shardgate_soak::{hs256_token, now_ms, watchdog, Args};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long past the end of the run a lagging connection may keep sending.
const LATE_STOP: Duration = Duration::from_secs(30);

const USAGE: &str = "usage: soak-load --addr HOST:PORT --secs S [--rate R (0 = closed loop)] \
                     [--conns N] [--secret S] [--issuer I] [--out DIR] [--events FILE] \
                     [--grace-ms MS] [--timeout-ms MS] [--parent PID]";

const ROUTES: [&str; 3] = ["composite", "user", "plain"];
/// The backends each route calls (scripts/soak/soak.ron).
const ROUTE_BACKENDS: [&[&str]; 3] = [&["users", "orders", "products"], &["users"], &["products"]];
/// Distinct `sub` claims (one token each), so the per-user limit sees many keys.
const USERS: usize = 16;
/// At most this many failures not placed in a restart window are kept one
/// by one; any beyond are counted as failures outside the windows.
const MAX_PENDING: usize = 1_000_000;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
enum Outcome {
    Status(u16),
    /// Connecting to the gateway failed.
    Connect,
    /// Writing the request failed.
    Write,
    /// The gateway closed the connection before a complete response.
    Eof,
    /// Reading failed (reset, ...).
    Read,
    /// No complete response within `--timeout-ms`.
    Timeout,
    /// A response this client cannot parse.
    Malformed,
}

impl Outcome {
    fn name(self) -> String {
        match self {
            Outcome::Status(s) => s.to_string(),
            Outcome::Connect => "connect_error".into(),
            Outcome::Write => "write_error".into(),
            Outcome::Eof => "closed_early".into(),
            Outcome::Read => "read_error".into(),
            Outcome::Timeout => "timeout".into(),
            Outcome::Malformed => "malformed".into(),
        }
    }

    fn ok(self) -> bool {
        self == Outcome::Status(200)
    }

    /// What a backend restart may cause: the gateway's 502/503, or a
    /// connection the gateway gave up on.
    fn restart_tolerated(self) -> bool {
        matches!(
            self,
            Outcome::Status(502 | 503)
                | Outcome::Connect
                | Outcome::Write
                | Outcome::Eof
                | Outcome::Read
        )
    }
}

struct Failure {
    start_ms: u64,
    end_ms: u64,
    route: usize,
    outcome: Outcome,
}

/// Latency histogram: 8 sub-buckets per power of two of microseconds
/// (values within 12.5%).
struct Histogram {
    counts: Vec<u64>,
    max_us: u64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: vec![0; 64 * 8],
            max_us: 0,
        }
    }

    fn bucket(us: u64) -> usize {
        if us < 8 {
            return us as usize;
        }
        let log = 63 - us.leading_zeros() as usize;
        let sub = ((us >> (log - 3)) & 7) as usize;
        (log - 2) * 8 + sub
    }

    fn bucket_low(b: usize) -> u64 {
        if b < 8 {
            return b as u64;
        }
        let log = b / 8 + 2;
        (8 + (b % 8) as u64) << (log - 3)
    }

    fn record(&mut self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        self.max_us = self.max_us.max(us);
        if let Some(c) = self.counts.get_mut(Self::bucket(us)) {
            *c += 1;
        }
    }

    fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.max_us = self.max_us.max(o.max_us);
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::bucket_low(b) as f64 / 1000.0;
            }
        }
        self.max_us as f64 / 1000.0
    }
}

struct Stats {
    /// (second of the run in which the request was sent, outcome) → count.
    per_second: BTreeMap<(u64, Outcome), u64>,
    /// (index of the restart window, outcome) → tolerated failures.
    in_window: BTreeMap<(usize, Outcome), u64>,
    /// Failures not (yet) placed in a restart window.
    pending: Vec<Failure>,
    /// Failures beyond `MAX_PENDING` (per worker share).
    unplaced: u64,
    latency: Histogram,
    service: Histogram,
    max_lag: Duration,
    partial: u64,
    /// Second of the run → the slowest answer (from schedule) among the
    /// requests scheduled in it, in µs.
    slowest: BTreeMap<u64, u64>,
}

impl Stats {
    fn new() -> Self {
        Stats {
            per_second: BTreeMap::new(),
            in_window: BTreeMap::new(),
            pending: Vec::new(),
            unplaced: 0,
            latency: Histogram::new(),
            service: Histogram::new(),
            max_lag: Duration::ZERO,
            partial: 0,
            slowest: BTreeMap::new(),
        }
    }
}

struct Config {
    addr: SocketAddr,
    conns: usize,
    secs: f64,
    rate: f64,
    timeout: Duration,
    tokens: Vec<String>,
    restarts: Restarts,
}

/// One keep-alive connection and its read buffer.
struct Connection {
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

struct Response {
    status: u16,
    close: bool,
    partial: bool,
}

fn main() {
    let args = Args::parse(USAGE);
    let addr: SocketAddr = args.get("addr", None, USAGE);
    let secs: f64 = args.get("secs", None, USAGE);
    let rate: f64 = args.get("rate", Some(0.0), USAGE);
    let conns: usize = args.get("conns", Some(32), USAGE);
    let secret: String = args.get("secret", None, USAGE);
    let issuer: String = args.get("issuer", None, USAGE);
    let grace_ms: u64 = args.get("grace-ms", Some(0), USAGE);
    let timeout_ms: u64 = args.get("timeout-ms", Some(10_000), USAGE);
    let out: Option<PathBuf> = args.text("out").map(PathBuf::from);
    let events: Option<PathBuf> = args.text("events").map(PathBuf::from);
    watchdog(
        args.get("parent", Some(0), USAGE),
        secs as u64 + timeout_ms / 1000 + 60,
    );
    if conns == 0 || secs.is_nan() || secs <= 0.0 || rate.is_nan() || rate < 0.0 {
        eprintln!("soak-load: --conns, --secs must be positive, --rate not negative\n{USAGE}");
        std::process::exit(2);
    }
    let tokens = (1..=USERS)
        .map(|u| hs256_token(&secret, &issuer, &u.to_string()))
        .collect();
    let cfg = Arc::new(Config {
        addr,
        conns,
        secs,
        rate,
        timeout: Duration::from_millis(timeout_ms),
        tokens,
        restarts: Restarts {
            file: events,
            grace_ms,
            windows: Mutex::new(Arc::new(Vec::new())),
        },
    });
    {
        let cfg = cfg.clone();
        std::thread::spawn(move || loop {
            cfg.restarts.reload();
            std::thread::sleep(Duration::from_millis(20));
        });
    }

    let start = Instant::now() + Duration::from_millis(100);
    let start_ms = now_ms() + 100;
    let workers: Vec<_> = (0..conns)
        .map(|i| {
            let cfg = cfg.clone();
            std::thread::spawn(move || worker(&cfg, i, start))
        })
        .collect();
    let mut stats = Stats::new();
    for w in workers {
        match w.join() {
            Ok(s) => {
                for (k, v) in s.per_second {
                    *stats.per_second.entry(k).or_default() += v;
                }
                for (k, v) in s.in_window {
                    *stats.in_window.entry(k).or_default() += v;
                }
                stats.pending.extend(s.pending);
                stats.unplaced += s.unplaced;
                stats.latency.merge(&s.latency);
                stats.service.merge(&s.service);
                stats.max_lag = stats.max_lag.max(s.max_lag);
                stats.partial += s.partial;
                for (k, v) in s.slowest {
                    let e = stats.slowest.entry(k).or_default();
                    *e = (*e).max(v);
                }
            }
            Err(_) => {
                eprintln!("soak-load: a worker thread panicked");
                std::process::exit(1);
            }
        }
    }
    let elapsed = if rate > 0.0 {
        secs
    } else {
        start.elapsed().as_secs_f64().min(secs)
    };
    // The final restart log places what was logged after the last poll.
    let windows = cfg.restarts.reload();
    let mut outside = Vec::new();
    for f in std::mem::take(&mut stats.pending) {
        match place(&windows, &f) {
            Some(w) => *stats.in_window.entry((w, f.outcome)).or_default() += 1,
            None => outside.push(f),
        }
    }
    let ok = report(
        &cfg,
        &stats,
        &windows,
        &outside,
        elapsed,
        start_ms,
        out.as_deref(),
    );
    std::process::exit(if ok { 0 } else { 1 });
}

fn worker(cfg: &Config, i: usize, start: Instant) -> Stats {
    let mut stats = Stats::new();
    let mut conn = Connection {
        stream: None,
        buf: Vec::with_capacity(16 * 1024),
    };
    let end = start + Duration::from_secs_f64(cfg.secs);
    let open = cfg.rate > 0.0;
    // Each connection's share of the rate, its first slot staggered.
    let interval = if open {
        Duration::from_secs_f64(cfg.conns as f64 / cfg.rate)
    } else {
        Duration::ZERO
    };
    let mut next = start + interval.mul_f64(i as f64 / cfg.conns as f64);
    let token = &cfg.tokens[i % cfg.tokens.len()];
    let mut seq = i;
    if let Some(d) = start.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
    loop {
        let now = Instant::now();
        let scheduled = if open {
            // A connection that fell far behind its schedule (a machine that
            // slowed down under the load) stops at the end all the same; the
            // lag is reported, and the run ends before the watchdog fires.
            if next >= end || now >= end + LATE_STOP {
                break;
            }
            if next > now {
                std::thread::sleep(next - now);
            }
            stats.max_lag = stats.max_lag.max(now.saturating_duration_since(next));
            next
        } else {
            if now >= end {
                break;
            }
            now
        };
        let sent = Instant::now();
        let sent_ms = now_ms();
        let route = seq % ROUTES.len();
        let path = match route {
            0 => "/composite".to_string(),
            1 => format!("/user/{}", seq % 5),
            _ => format!("/plain/products/{}", seq % 100),
        };
        let outcome = match exchange(&mut conn, cfg, &path, token) {
            Ok(r) => {
                if r.partial {
                    stats.partial += 1;
                }
                Outcome::Status(r.status)
            }
            Err(o) => {
                conn.stream = None;
                o
            }
        };
        let done = Instant::now();
        stats.latency.record(done - scheduled);
        stats.service.record(done - sent);
        let second = scheduled.saturating_duration_since(start).as_secs();
        let slowest = stats.slowest.entry(second).or_default();
        *slowest = (*slowest).max((done - scheduled).as_micros() as u64);
        *stats.per_second.entry((second, outcome)).or_default() += 1;
        if !outcome.ok() {
            let f = Failure {
                start_ms: sent_ms,
                end_ms: now_ms(),
                route,
                outcome,
            };
            if let Some(w) = place(&cfg.restarts.current(), &f) {
                *stats.in_window.entry((w, outcome)).or_default() += 1;
            } else if stats.pending.len() < MAX_PENDING / cfg.conns {
                stats.pending.push(f);
            } else {
                stats.unplaced += 1;
            }
        }
        next += interval;
        seq += cfg.conns;
    }
    stats
}

/// Sends one GET and reads its response; on `Err` the connection is unusable.
fn exchange(
    conn: &mut Connection,
    cfg: &Config,
    path: &str,
    token: &str,
) -> Result<Response, Outcome> {
    let stream = match &mut conn.stream {
        Some(s) => s,
        None => {
            let s = TcpStream::connect_timeout(&cfg.addr, Duration::from_secs(2))
                .map_err(|_| Outcome::Connect)?;
            let _ = s.set_nodelay(true);
            s.set_read_timeout(Some(cfg.timeout))
                .map_err(|_| Outcome::Connect)?;
            conn.buf.clear();
            conn.stream.insert(s)
        }
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: soak.test\r\nAuthorization: Bearer {token}\r\nUser-Agent: soak-load\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .map_err(|_| Outcome::Write)?;
    let deadline = Instant::now() + cfg.timeout;
    let resp = read_response(stream, &mut conn.buf, deadline)?;
    if resp.close {
        conn.stream = None;
    }
    Ok(resp)
}

fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Result<(), Outcome> {
    if Instant::now() >= deadline {
        return Err(Outcome::Timeout);
    }
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Err(Outcome::Eof),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(());
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(Outcome::Timeout)
            }
            Err(_) => return Err(Outcome::Read),
        }
    }
}

fn read_response(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<Response, Outcome> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(Outcome::Malformed);
        }
        fill(s, buf, deadline)?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or(Outcome::Malformed)?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut close = false;
    let mut partial = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "content-length" => length = Some(v.parse().map_err(|_| Outcome::Malformed)?),
            "transfer-encoding" => chunked = v.contains("chunked"),
            "connection" => close = v.contains("close"),
            "x-aggregate-partial" => partial = true,
            _ => {}
        }
    }
    buf.drain(..head_end);
    if chunked {
        read_chunked(s, buf, deadline)?;
    } else if let Some(n) = length {
        while buf.len() < n {
            fill(s, buf, deadline)?;
        }
        buf.drain(..n);
    } else {
        // Delimited by the close.
        loop {
            match fill(s, buf, deadline) {
                Ok(()) => buf.clear(),
                Err(Outcome::Eof) => break,
                Err(o) => return Err(o),
            }
        }
        close = true;
    }
    Ok(Response {
        status,
        close,
        partial,
    })
}

/// Consumes a chunked body (and its trailer section) from `buf`.
fn read_chunked(s: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Result<(), Outcome> {
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            if buf.len() > 4096 {
                return Err(Outcome::Malformed);
            }
            fill(s, buf, deadline)?;
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| Outcome::Malformed)?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailer fields, then the empty line.
            loop {
                let end = loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    fill(s, buf, deadline)?;
                };
                buf.drain(..end + 2);
                if end == 0 {
                    return Ok(());
                }
            }
        }
        while buf.len() < size + 2 {
            fill(s, buf, deadline)?;
        }
        buf.drain(..size + 2);
    }
}

/// A backend's restart window: from its kill to `grace` after it is up.
struct Window {
    name: String,
    kill_ms: u64,
    /// When it listened again; `None` while it is down.
    up_ms: Option<u64>,
    to_ms: u64,
}

/// The restart log as read so far.
struct Restarts {
    file: Option<PathBuf>,
    grace_ms: u64,
    windows: Mutex<Arc<Vec<Window>>>,
}

impl Restarts {
    /// The windows as last read.
    fn current(&self) -> Arc<Vec<Window>> {
        self.windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the log again; windows keep their index (one per kill, in order).
    fn reload(&self) -> Arc<Vec<Window>> {
        let Some(file) = &self.file else {
            return self.current();
        };
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let mut windows: Vec<Window> = Vec::new();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(t), Some(what), Some(name)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let Ok(t) = t.parse::<u64>() else { continue };
            match what {
                "kill" => windows.push(Window {
                    name: name.to_string(),
                    kill_ms: t,
                    up_ms: None,
                    to_ms: u64::MAX,
                }),
                "up" => {
                    if let Some(w) = windows
                        .iter_mut()
                        .rev()
                        .find(|w| w.name == name && w.up_ms.is_none())
                    {
                        w.up_ms = Some(t);
                        w.to_ms = t + self.grace_ms;
                    }
                }
                _ => {}
            }
        }
        let windows = Arc::new(windows);
        *self.windows.lock().unwrap_or_else(PoisonError::into_inner) = windows.clone();
        windows
    }
}

/// The restart window that explains `f`, if any: a tolerated kind of
/// failure, a time span meeting the window, a route calling that backend.
fn place(windows: &[Window], f: &Failure) -> Option<usize> {
    if !f.outcome.restart_tolerated() {
        return None;
    }
    let backends = ROUTE_BACKENDS.get(f.route)?;
    windows.iter().position(|w| {
        f.start_ms <= w.to_ms && f.end_ms >= w.kill_ms && backends.contains(&w.name.as_str())
    })
}

fn report(
    cfg: &Config,
    stats: &Stats,
    windows: &[Window],
    outside: &[Failure],
    elapsed: f64,
    start_ms: u64,
    out: Option<&std::path::Path>,
) -> bool {
    let mut totals: BTreeMap<Outcome, u64> = BTreeMap::new();
    for ((_, o), n) in &stats.per_second {
        *totals.entry(*o).or_default() += n;
    }
    let requests: u64 = totals.values().sum();
    let failures: u64 = totals.iter().filter(|(o, _)| !o.ok()).map(|(_, n)| n).sum();
    let mut in_window: BTreeMap<Outcome, u64> = BTreeMap::new();
    let mut by_backend: BTreeMap<&str, u64> = BTreeMap::new();
    let mut per_window: BTreeMap<usize, BTreeMap<Outcome, u64>> = BTreeMap::new();
    for ((w, o), n) in &stats.in_window {
        *in_window.entry(*o).or_default() += n;
        *per_window.entry(*w).or_default().entry(*o).or_default() += n;
        if let Some(w) = windows.get(*w) {
            *by_backend.entry(w.name.as_str()).or_default() += n;
        }
    }
    let window_failures: u64 = in_window.values().sum();
    let other_failures = outside.len() as u64 + stats.unplaced;
    let rps = requests as f64 / elapsed;
    let fmt = |m: &BTreeMap<Outcome, u64>| {
        if m.is_empty() {
            return "none".to_string();
        }
        m.iter()
            .map(|(o, n)| format!("{}={n}", o.name()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mode = if cfg.rate > 0.0 {
        format!("open loop at {:.0} req/s", cfg.rate)
    } else {
        "closed loop".to_string()
    };
    println!(
        "load: {requests} requests in {elapsed:.1} s = {rps:.0} req/s ({mode}, {} connections)",
        cfg.conns
    );
    println!("  outcomes: {}", fmt(&totals));
    println!(
        "  latency from schedule: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.1} ms; \
         service time p50 {:.2} ms, p99 {:.2} ms; max send lag {:.1} ms",
        stats.latency.quantile_ms(0.5),
        stats.latency.quantile_ms(0.99),
        stats.latency.quantile_ms(0.999),
        stats.latency.max_us as f64 / 1000.0,
        stats.service.quantile_ms(0.5),
        stats.service.quantile_ms(0.99),
        stats.max_lag.as_secs_f64() * 1000.0,
    );
    if stats.partial > 0 {
        println!(
            "  composite answers marked X-Aggregate-Partial: {}",
            stats.partial
        );
    }
    if !windows.is_empty() {
        println!(
            "  failures inside backend restart windows (tolerated): {window_failures} ({}) in {} restarts; by backend: {}",
            fmt(&in_window),
            windows.len(),
            if by_backend.is_empty() {
                "none".to_string()
            } else {
                by_backend
                    .iter()
                    .map(|(b, n)| format!("{b}={n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        );
    }
    println!("  other failures: {other_failures}");
    for f in outside.iter().take(10) {
        let near = windows
            .iter()
            .find(|w| f.start_ms <= w.to_ms && f.end_ms >= w.kill_ms)
            .map_or(String::new(), |w| {
                format!(" (during the {} restart)", w.name)
            });
        println!(
            "    t={:+.3} s route={} outcome={}{near}",
            (f.start_ms as f64 - start_ms as f64) / 1000.0,
            ROUTES.get(f.route).unwrap_or(&"?"),
            f.outcome.name(),
        );
    }
    if cfg.rate <= 0.0 {
        println!("capacity_rps={rps:.1}");
    }
    let Some(dir) = out else {
        return other_failures == 0;
    };
    let mut per_second = String::from("second,outcome,count\n");
    for ((s, o), n) in &stats.per_second {
        let _ = writeln!(per_second, "{s},{},{n}", o.name());
    }
    let mut slowest = String::from("second,slowest_ms\n");
    for (s, us) in &stats.slowest {
        let _ = writeln!(slowest, "{s},{:.1}", *us as f64 / 1000.0);
    }
    let mut restarts = String::from("backend,kill_s,down_ms,tolerated_failures\n");
    for (i, w) in windows.iter().enumerate() {
        let _ = writeln!(
            restarts,
            "{},{:.3},{},{}",
            w.name,
            (w.kill_ms as f64 - start_ms as f64) / 1000.0,
            w.up_ms
                .map_or("never up".to_string(), |u| (u - w.kill_ms).to_string()),
            per_window.get(&i).map_or("none".to_string(), &fmt),
        );
    }
    let mut failures_csv = String::from("start_ms,end_ms,route,outcome\n");
    for f in outside {
        let _ = writeln!(
            failures_csv,
            "{},{},{},{}",
            f.start_ms,
            f.end_ms,
            ROUTES.get(f.route).unwrap_or(&"?"),
            f.outcome.name(),
        );
    }
    let summary = format!(
        "requests={requests}\nseconds={elapsed:.1}\nrps={rps:.1}\nfailures={failures}\n\
         window_failures={window_failures}\nother_failures={other_failures}\n\
         outcomes=\"{}\"\nwindow_outcomes=\"{}\"\np99_ms={:.2}\nmax_lag_ms={:.0}\n",
        fmt(&totals),
        fmt(&in_window),
        stats.latency.quantile_ms(0.99),
        stats.max_lag.as_secs_f64() * 1000.0
    );
    for (name, text) in [
        ("per-second.csv", per_second),
        ("slowest.csv", slowest),
        ("restarts.csv", restarts),
        ("failures.csv", failures_csv),
        ("summary.env", summary),
    ] {
        if let Err(e) = std::fs::write(dir.join(name), text) {
            eprintln!("soak-load: cannot write {}: {e}", dir.join(name).display());
            return false;
        }
    }
    other_failures == 0
}
