//! The `grpc-timeout` request header: `TimeoutValue TimeoutUnit`, at most
//! eight ASCII digits and one unit of `H` (hours), `M` (minutes), `S`
//! (seconds), `m` (milliseconds), `u` (microseconds) or `n` (nanoseconds).

use std::time::Duration;

/// The largest value the header may carry (eight digits).
const MAX_VALUE: u64 = 99_999_999;

/// Units from the coarsest to the finest, with their length in nanoseconds.
const UNITS: [(char, u128); 6] = [
    ('H', 3_600_000_000_000),
    ('M', 60_000_000_000),
    ('S', 1_000_000_000),
    ('m', 1_000_000),
    ('u', 1_000),
    ('n', 1),
];

/// Parses a `grpc-timeout` value (`100m`, `5S`, `1H`).
pub fn parse(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let mut chars = value.chars();
    let unit = chars
        .next_back()
        .ok_or_else(|| "empty grpc-timeout".to_string())?;
    let digits = chars.as_str();
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "grpc-timeout `{value}`: expected 1 to 8 digits and a unit"
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("grpc-timeout `{value}`: bad number"))?;
    Ok(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        other => {
            return Err(format!(
                "grpc-timeout `{value}`: unknown unit `{other}` (H, M, S, m, u or n)"
            ))
        }
    })
}

/// Formats a duration as a `grpc-timeout` value: the coarsest unit that
/// carries it exactly in eight digits, else the finest unit it fits in,
/// rounded up (a deadline is never shortened by the encoding). Durations
/// beyond 99,999,999 hours are capped there.
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    for (unit, len) in UNITS {
        if nanos.is_multiple_of(len) && nanos / len <= u128::from(MAX_VALUE) {
            return format!("{}{unit}", nanos / len);
        }
    }
    for (unit, len) in UNITS.iter().rev() {
        let n = nanos.div_ceil(*len);
        if n <= u128::from(MAX_VALUE) {
            return format!("{n}{unit}");
        }
    }
    format!("{MAX_VALUE}H")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("100m").unwrap(), Duration::from_millis(100));
        assert_eq!(parse("5S").unwrap(), Duration::from_secs(5));
        assert_eq!(parse("2M").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1H").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("250u").unwrap(), Duration::from_micros(250));
        assert_eq!(parse("7n").unwrap(), Duration::from_nanos(7));
        assert_eq!(parse("99999999S").unwrap(), Duration::from_secs(99_999_999));
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in ["", "S", "100", "100x", "-1S", "123456789S", "1.5S", "10 S"] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn formats_in_the_coarsest_exact_unit() {
        assert_eq!(format(Duration::from_millis(100)), "100m");
        assert_eq!(format(Duration::from_secs(5)), "5S");
        assert_eq!(format(Duration::from_secs(120)), "2M");
        assert_eq!(format(Duration::from_secs(7200)), "2H");
        assert_eq!(format(Duration::from_micros(1500)), "1500u");
        assert_eq!(format(Duration::ZERO), "0H");
    }

    #[test]
    fn rounds_up_when_no_unit_is_exact() {
        // 100,000,000.5 ms is not exact in 8 digits of any unit.
        let d = Duration::from_secs(100_000) + Duration::from_nanos(1);
        let s = format(d);
        assert_eq!(s, "100001S");
        assert!(parse(&s).unwrap() >= d);
    }

    #[test]
    fn round_trips() {
        for d in [
            Duration::from_millis(1),
            Duration::from_millis(1234),
            Duration::from_secs(86_400),
            Duration::from_nanos(123_456),
        ] {
            assert_eq!(parse(&format(d)).unwrap(), d);
        }
    }
}
