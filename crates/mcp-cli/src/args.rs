//! Parsers for the command line's values, each refusing nonsense by name.
//!
//! clap reports a parser's `Err(why)` as `invalid value 'X' for '--flag <FLAG>': why`, so
//! every message here says only why the value cannot work; `main` prints that one line and
//! exits with code 2 (a usage error). A value is refused when it cannot work at all (a
//! benchmark of no calls, a ticker that never waits) or when it would take the program down
//! instead of being an answer (a body too large to allocate, a duration past what the
//! clock can count).

use std::time::Duration;

use bytes::Bytes;

/// The longest duration any flag takes. Far beyond any useful run, and far below what
/// `Instant + Duration` can hold without overflowing (which panics).
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The most calls `bench` keeps in flight: each is a task with its own buffers, so a
/// mistyped `--concurrency 100000000` would exhaust memory instead of measuring anything.
pub(crate) const MAX_CONCURRENCY: usize = 100_000;

/// The most connections `bench` opens: the reference server refuses more by default
/// (`ServerConfig::max_connections`), and each costs a file descriptor.
pub(crate) const MAX_CONNECTIONS: usize = 10_000;

/// The largest body `bench` sends: the client's maximum message size (docs/protocol.md
/// section 5). A larger one fails locally on every call, so no call would ever be made.
pub(crate) const MAX_BODY: usize = mcp_codec::DEFAULT_MAX_MESSAGE_LEN;

/// A duration such as `500ms`, `5s` or `1m`, zero allowed.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (try 500ms, 5s, 1m)"))?;
    if d > MAX_DURATION {
        return Err(format!(
            "must be at most {} (365 days)",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(d)
}

/// A duration that must be longer than zero (a timeout, a period, a run's length).
pub(crate) fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.is_zero() {
        return Err("must be longer than zero".to_string());
    }
    Ok(d)
}

/// A whole number in `min..=max`.
fn count<T>(s: &str, min: T, max: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    T::Err: std::fmt::Display,
{
    let n: T = s
        .trim()
        .parse()
        .map_err(|e| format!("{e} (expected a whole number)"))?;
    if n < min || n > max {
        return Err(format!("must be between {min} and {max}"));
    }
    Ok(n)
}

/// The most embedded servers `bench --replicas` starts, on 127.0.0.1 to 127.0.0.64: each
/// is a listener and its tasks in the benchmark's own process.
pub(crate) const MAX_REPLICAS: u8 = 64;

/// `bench --replicas`: 1..=[`MAX_REPLICAS`] embedded servers.
pub(crate) fn replicas(s: &str) -> Result<u8, String> {
    count(s, 1, MAX_REPLICAS)
}

/// `bench --concurrency`: 1..=[`MAX_CONCURRENCY`].
pub(crate) fn concurrency(s: &str) -> Result<usize, String> {
    count(s, 1, MAX_CONCURRENCY)
}

/// `bench --connections`: 1..=[`MAX_CONNECTIONS`].
pub(crate) fn connections(s: &str) -> Result<usize, String> {
    count(s, 1, MAX_CONNECTIONS)
}

/// `bench --size`: 0..=[`MAX_BODY`] bytes.
pub(crate) fn body_size(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|e| format!("{e} (expected a number of bytes)"))?;
    if n > MAX_BODY {
        return Err(format!(
            "must be at most {MAX_BODY} bytes, the maximum message size"
        ));
    }
    Ok(n)
}

/// `serve --max-connections`, `--max-connections-per-ip`, `--max-in-flight-total`: at
/// least 1 (0 would turn every client or request away).
pub(crate) fn limit(s: &str) -> Result<usize, String> {
    count(s, 1, usize::MAX)
}

/// `serve --max-in-flight-bytes-total`: a number of bytes, at least 1, with an optional
/// binary suffix (`64KiB`, `512MiB`, `2GiB`).
pub(crate) fn byte_limit(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => t.split_at(at),
        None => (t, ""),
    };
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown unit {other:?} (B, KiB, MiB or GiB)")),
    };
    let n: usize = digits
        .parse()
        .map_err(|e| format!("{e} (expected a number of bytes, e.g. 512MiB)"))?;
    let bytes = n
        .checked_mul(scale)
        .ok_or_else(|| "too large for this machine".to_string())?;
    if bytes == 0 {
        return Err("must be at least 1 byte".to_string());
    }
    Ok(bytes)
}

/// `ping --count`: at least 1.
pub(crate) fn ping_count(s: &str) -> Result<u32, String> {
    count(s, 1, u32::MAX)
}

/// `bench --rate`: calls per second, a finite number above zero whose interval the clock
/// can count.
pub(crate) fn rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| "expected a number of calls per second, e.g. 1000 or 2.5".to_string())?;
    if !r.is_finite() || r <= 0.0 {
        return Err("must be a finite number of calls per second above zero".to_string());
    }
    match Duration::try_from_secs_f64(1.0 / r) {
        Ok(every) if every <= MAX_DURATION => Ok(r),
        _ => Err("too slow: one call would be due less than once a year".to_string()),
    }
}

/// `call --hex`: hex digits, optionally separated by whitespace, commas or colons and
/// prefixed `0x` (as copied from a dump or from docs/protocol.md). Anything else is refused
/// rather than sent as the text itself.
pub(crate) fn hex(s: &str) -> Result<Bytes, String> {
    let mut digits = Vec::with_capacity(s.len());
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        match c {
            // `0x` starts a byte (or a run of them), never ends one: in `10x`, the `0` is a
            // digit and the `x` is refused.
            '0' if matches!(chars.get(i + 1), Some((_, 'x' | 'X')))
                && (i == 0 || !chars[i - 1].1.is_ascii_hexdigit()) =>
            {
                i += 2
            }
            c if c.is_ascii_hexdigit() => {
                digits.push(c as u8);
                i += 1;
            }
            c if c.is_whitespace() || c == ',' || c == ':' => i += 1,
            c => {
                return Err(format!(
                    "{:?} at byte {at} is not a hex digit (give bytes as e.g. \"4d 43 01\")",
                    c
                ));
            }
        }
    }
    if digits.len() % 2 != 0 {
        return Err(format!(
            "an odd number of hex digits ({}): every byte takes two",
            digits.len()
        ));
    }
    let value = |d: u8| (d as char).to_digit(16).unwrap_or(0) as u8;
    Ok(digits
        .chunks_exact(2)
        .map(|pair| value(pair[0]) << 4 | value(pair[1]))
        .collect::<Vec<u8>>()
        .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_accepts_dumps_and_refuses_the_rest() {
        assert_eq!(
            &hex("4d 43,0x01:ff").unwrap()[..],
            &[0x4d, 0x43, 0x01, 0xff]
        );
        assert_eq!(&hex("").unwrap()[..], &[] as &[u8]);
        assert!(hex("zz").unwrap_err().contains("'z' at byte 0"));
        assert!(hex("4d 4").unwrap_err().contains("odd number"));
        assert!(hex("0x").is_ok());
        assert_eq!(&hex("0x4d0x43").unwrap_err()[..5], "'x' a");
        assert_eq!(&hex("0x4d 0x43 0X01").unwrap()[..], &[0x4d, 0x43, 0x01]);
        assert!(hex("10x").is_err());
    }

    #[test]
    fn byte_limits_take_binary_units_and_refuse_zero() {
        assert_eq!(byte_limit("1GiB").unwrap(), 1 << 30);
        assert_eq!(byte_limit("512MiB").unwrap(), 512 << 20);
        assert_eq!(byte_limit("64KiB").unwrap(), 64 << 10);
        assert_eq!(byte_limit("1000").unwrap(), 1000);
        assert_eq!(byte_limit("7 B").unwrap(), 7);
        assert!(byte_limit("0").unwrap_err().contains("at least 1"));
        assert!(byte_limit("0GiB").unwrap_err().contains("at least 1"));
        assert!(byte_limit("5XB").unwrap_err().contains("unknown unit"));
        assert!(byte_limit("MiB").is_err());
        assert!(byte_limit("99999999999999999999GiB").is_err());
        assert!(
            byte_limit("18014398509481984GiB")
                .unwrap_err()
                .contains("too large")
        );
        assert!(limit("0").unwrap_err().contains("between 1"));
        assert_eq!(limit("20").unwrap(), 20);
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!(duration("0s").unwrap(), Duration::ZERO);
        assert!(positive_duration("0s").is_err());
        assert!(duration("366days").is_err());
        assert!(duration("500000000000y").is_err());
        assert_eq!(positive_duration("5s").unwrap(), Duration::from_secs(5));
    }

    #[test]
    fn rates_are_finite_and_positive() {
        for bad in ["0", "-1", "nan", "NaN", "inf", "-inf", "1e-300", "x"] {
            assert!(rate(bad).is_err(), "{bad}");
        }
        assert_eq!(rate("2.5").unwrap(), 2.5);
        assert_eq!(rate("1e9").unwrap(), 1e9);
    }

    #[test]
    fn counts_and_sizes() {
        assert!(concurrency("0").is_err());
        assert!(concurrency("100001").is_err());
        assert_eq!(concurrency("8").unwrap(), 8);
        assert!(connections("0").is_err());
        assert!(replicas("0").is_err());
        assert!(replicas("65").is_err());
        assert!(replicas("-1").is_err());
        assert_eq!(replicas("64").unwrap(), 64);
        assert!(ping_count("0").is_err());
        assert_eq!(body_size("0").unwrap(), 0);
        assert_eq!(body_size(&MAX_BODY.to_string()).unwrap(), MAX_BODY);
        assert!(body_size(&(MAX_BODY + 1).to_string()).is_err());
        assert!(body_size("100000000000").is_err());
    }
}
