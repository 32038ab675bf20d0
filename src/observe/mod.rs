//! What a finished request leaves behind besides metrics: its access-log
//! line and, when the trace is sampled, its spans.
//!
//! - [`access_log`]: the JSON line (pure) and the one writer thread.
//! - [`trace`]: W3C trace context (parse, sample, propagate) and the spans a
//!   request records while it runs (pure apart from the shard's generator).
//! - [`otlp`]: the one exporter thread, posting spans to an OTLP/HTTP collector.
//!
//! The shard side never blocks and never shares a lock: each shard thread
//! has its own bounded queue to each background thread (made the first time
//! it needs one) and drops, counting, what does not fit. The background
//! threads are steered by messages from the control side: [`configure`] at
//! start and after each reload, [`reopen_logs`] on SIGUSR1 and [`finish`]
//! before the process exits.

pub mod access_log;
pub mod otlp;
pub mod trace;

use crate::compiled::Compiled;
use crate::http::RequestHead;
use crate::proxy::Exchange;
use crate::shard::{Shard, ShardConfig};
use std::cell::Cell;
use std::time::{Duration, SystemTime};

/// Hands the access log's and the exporter's settings of `c` to their
/// threads (starting them when first needed). Called before the shards start
/// and after every reload that took effect.
pub fn configure(c: &Compiled) {
    access_log::configure(c.access_log.as_ref());
    otlp::configure(c.tracing.as_ref());
}

/// Reopens the access-log file (SIGUSR1, after logrotate moved it).
pub fn reopen_logs() {
    access_log::reopen();
}

/// Writes out what is queued (log lines, spans), waiting at most `wait` for
/// each background thread; called once the shards have stopped.
pub fn finish(wait: Duration) {
    access_log::finish(wait);
    otlp::finish(wait);
}

/// Accounts for a finished request: its access-log line and its spans.
/// Costs one branch per feature that is off.
pub fn finished(
    shard: &Shard,
    cfg: &ShardConfig,
    listener: usize,
    head: &RequestHead,
    ex: &Exchange<'_>,
    took: Duration,
) {
    let compiled = &cfg.compiled;
    if compiled.access_log.is_none() && ex.trace.is_none() {
        return;
    }
    let now = SystemTime::now();
    if let Some(log) = &compiled.access_log {
        let line = access_log::line(compiled, listener, head, ex, now, took);
        if !access_log::submit(log, line) {
            shard.metrics.borrow_mut().log_dropped += 1;
        }
    }
    if let (Some(t), Some(tracing)) = (&ex.trace, &compiled.tracing) {
        if t.recording() {
            let spans = t.spans(compiled, head, ex, now, took);
            let dropped = otlp::submit(tracing, spans);
            if dropped > 0 {
                shard.metrics.borrow_mut().spans_dropped += dropped;
            }
        }
    }
}

thread_local! {
    /// This shard thread's generator for trace ids, span ids and sampling.
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// The next number of this thread's generator (splitmix64), seeded from the
/// process's random hasher keys the first time.
pub(crate) fn random_u64() -> u64 {
    RNG.with(|state| {
        let mut s = state.get();
        if s == 0 {
            s = seed();
        }
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(s);
        mix(s)
    })
}

/// The splitmix64 finalizer: a bijection that scatters its input's bits.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    std::thread::current().id().hash(&mut h);
    h.finish() | 1
}

use std::hash::Hash as _;

/// Nanoseconds since the Unix epoch.
pub(crate) fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Starts a background thread `name` that takes commands from the returned
/// queue; if it cannot start, says so (`what` names it) and the commands go
/// nowhere: what shards hand it is then dropped and counted, never waited for.
pub(crate) fn start_worker<C: Send + 'static>(
    name: &str,
    what: &str,
    run: impl FnOnce(crossbeam_channel::Receiver<C>) + Send + 'static,
) -> crossbeam_channel::Sender<C> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let started = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || run(rx));
    if let Err(e) = started {
        eprintln!("shardgate: cannot start {what}: {e}; what it would take is dropped");
    }
    tx
}

/// Appends `s` as a JSON string (quotes included).
pub(crate) fn json_bytes(out: &mut Vec<u8>, s: &str) {
    crate::error::json_quoted(s, |piece| out.extend_from_slice(piece.as_bytes()));
}

/// Appends `n` in decimal (without `core::fmt`, which costs several times
/// more on the per-request log line).
pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(at..).unwrap_or_default());
}

/// Appends a duration in milliseconds with three decimals (`12.345`).
pub(crate) fn push_millis(out: &mut Vec<u8>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    push_u64(out, us / 1000);
    out.push(b'.');
    let frac = us % 1000;
    if frac < 100 {
        out.push(b'0');
    }
    if frac < 10 {
        out.push(b'0');
    }
    push_u64(out, frac);
}

/// Appends an IP address as `Display` writes it (IPv4 by hand, the rest
/// through `Display`).
pub(crate) fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(*o));
            }
        }
        std::net::IpAddr::V6(_) => out.extend_from_slice(ip.to_string().as_bytes()),
    }
}

/// Appends a socket address as `Display` writes it (`1.2.3.4:80`, `[::1]:80`).
pub(crate) fn push_addr(out: &mut Vec<u8>, addr: std::net::SocketAddr) {
    match addr {
        std::net::SocketAddr::V4(a) => {
            push_ip(out, std::net::IpAddr::V4(*a.ip()));
            out.push(b':');
            push_u64(out, u64::from(a.port()));
        }
        std::net::SocketAddr::V6(_) => out.extend_from_slice(addr.to_string().as_bytes()),
    }
}

/// Appends `t` as RFC 3339 in UTC with milliseconds; the part up to the
/// second is made once per second per thread.
pub(crate) fn push_rfc3339_millis(out: &mut Vec<u8>, t: SystemTime) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    SECOND.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let mut full = rfc3339_millis(t);
            full.truncate(full.len().saturating_sub(5));
            *text = full;
            *at = secs;
        }
        out.extend_from_slice(text.as_bytes());
    });
    out.push(b'.');
    let ms = d.subsec_millis();
    if ms < 100 {
        out.push(b'0');
    }
    if ms < 10 {
        out.push(b'0');
    }
    push_u64(out, u64::from(ms));
    out.push(b'Z');
}

/// Lower-case hex of `bytes`, appended to `out`.
pub(crate) fn push_hex_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    for b in bytes {
        for nibble in [b >> 4, b & 0xf] {
            out.push(if nibble < 10 {
                b'0' + nibble
            } else {
                b'a' + nibble - 10
            });
        }
    }
}

/// `t` as RFC 3339 in UTC with milliseconds: `2026-12-02T03:43:06.123Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// (year, month, day) of the day `days` after 1970-01-01 (proleptic
/// Gregorian; H. Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Lower-case hex of `bytes`, appended to `out` (up to 16 bytes at a time
/// made on the stack and appended at once, not a `char` per digit).
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for chunk in bytes.chunks(16) {
        let mut text = [b'0'; 32];
        for (pair, b) in text.chunks_exact_mut(2).zip(chunk) {
            for (d, nibble) in pair.iter_mut().zip([b >> 4, b & 0xf]) {
                *d = DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0');
            }
        }
        let text = text.get(..chunk.len() * 2).unwrap_or_default();
        out.push_str(std::str::from_utf8(text).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_with_millis() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_986_123);
        assert_eq!(rfc3339_millis(t), "2026-11-18T11:23:06.123Z");
        assert_eq!(
            rfc3339_millis(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
        // A leap day.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_millis(t), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn hand_written_numbers_match_display() {
        let text = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = Vec::new();
            f(&mut v);
            String::from_utf8(v).unwrap()
        };
        for n in [0u64, 7, 10, 99, 100, 12_345, u64::MAX] {
            assert_eq!(text(&|v| push_u64(v, n)), n.to_string());
        }
        for us in [0u64, 5, 999, 1_000, 12_345, 7_000_042] {
            let d = Duration::from_micros(us);
            assert_eq!(
                text(&|v| push_millis(v, d)),
                format!("{:.3}", us as f64 / 1e3)
            );
        }
        for a in [
            "1.2.3.4:80",
            "255.0.10.1:65535",
            "[::1]:8080",
            "[2001:db8::7]:1",
        ] {
            let addr: std::net::SocketAddr = a.parse().unwrap();
            assert_eq!(text(&|v| push_addr(v, addr)), a);
            assert_eq!(text(&|v| push_ip(v, addr.ip())), addr.ip().to_string());
        }
        for ms in [
            0u64,
            1_795_000_986_001,
            1_795_000_986_123,
            1_795_000_987_050,
        ] {
            let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(text(&|v| push_rfc3339_millis(v, t)), rfc3339_millis(t));
        }
        let id = [0x4bu8, 0xf9, 0x0a];
        assert_eq!(text(&|v| push_hex_bytes(v, &id)), "4bf90a");
        let mut hex = String::new();
        push_hex(&mut hex, &id);
        assert_eq!(hex, "4bf90a");
        assert_eq!(text(&|v| json_bytes(v, "a\"é\n")), "\"a\\\"é\\n\"");
    }

    #[test]
    fn generator_differs_between_calls() {
        let a = random_u64();
        let b = random_u64();
        assert_ne!(a, b);
    }
}
