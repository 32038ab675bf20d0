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
use std::time::{Duration, Instant, SystemTime};

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
    started: Instant,
) {
    let compiled = &cfg.compiled;
    if compiled.access_log.is_none() && ex.trace.is_none() {
        return;
    }
    let took = started.elapsed();
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

/// Lower-case hex of `bytes`, appended to `out`.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
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
    fn generator_differs_between_calls() {
        let a = random_u64();
        let b = random_u64();
        assert_ne!(a, b);
    }
}
