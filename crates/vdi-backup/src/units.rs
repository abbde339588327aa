//! Byte counts as people type and read them: `1M`, `64KiB`, `1.5 GiB`, `850 MiB/s`.
//!
//! ```
//! use vdi_backup::units::{parse_size, human_bytes};
//! assert_eq!(parse_size("1M"), Ok(1 << 20));
//! assert_eq!(parse_size("64KiB"), Ok(64 << 10));
//! assert_eq!(parse_size("4096"), Ok(4096));
//! assert_eq!(human_bytes(1536), "1.5 KiB");
//! ```

use std::time::Duration;

/// Parses a byte count: a number with an optional binary suffix (`K`, `KiB`, `M`, `MiB`,
/// `G`, `GiB`, case-insensitive; `KB`/`MB`/`GB` are binary too).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let num: String = num.chars().filter(|c| *c != '_').collect();
    if num.is_empty() {
        return Err(format!(
            "'{text}' is not a byte count (examples: 4096, 64K, 1M, 4MiB)"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a byte count"))?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "'{text}': unknown unit '{other}' (use K, M, G or none)"
            ));
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// `1.5 GiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// Bytes per second over `elapsed`, as a number (0 when no time passed).
pub fn bytes_per_sec(n: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s <= 0.0 { 0.0 } else { n as f64 / s }
}

/// `850.2 MiB/s`.
pub fn human_rate(n: u64, elapsed: Duration) -> String {
    let r = bytes_per_sec(n, elapsed);
    format!("{}/s", human_bytes(r as u64))
}

/// Parses a duration: a number with a unit (`200ms`, `90s`, `10m`, `2h`, `1d`), or
/// several (`1h30m`); a bare number counts in units of `bare` (seconds for time-outs and
/// soak durations, milliseconds for injected delays: what each option's help says).
///
/// ```
/// use std::time::Duration;
/// use vdi_backup::units::parse_duration;
/// let s = Duration::from_secs(1);
/// assert_eq!(parse_duration("1h30m", s), Ok(Duration::from_secs(5400)));
/// assert_eq!(parse_duration("90", s), Ok(Duration::from_secs(90)));
/// assert_eq!(parse_duration("200", Duration::from_millis(1)), Ok(Duration::from_millis(200)));
/// assert_eq!(parse_duration("2s200ms", s), Ok(Duration::from_millis(2200)));
/// assert!(parse_duration("0.1s", s).is_err());
/// ```
pub fn parse_duration(s: &str, bare: Duration) -> Result<Duration, String> {
    let bad = || format!("'{s}' is not a duration (write 200ms, 90s, 10m, 2h or 1h30m)");
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return u32::try_from(n)
            .ok()
            .and_then(|n| bare.checked_mul(n))
            .ok_or_else(bad);
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else {
            let unit = match rest.chars().next() {
                Some('s') => Duration::from_secs(1),
                Some('m') => Duration::from_secs(60),
                Some('h') => Duration::from_secs(3600),
                Some('d') => Duration::from_secs(86400),
                _ => return Err(bad()),
            };
            (unit, 1)
        };
        rest = &rest[len..];
        let part = u32::try_from(n)
            .ok()
            .and_then(|n| unit.checked_mul(n))
            .ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("1_048_576"), Ok(1 << 20));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("3 parsecs").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1 << 20), "1.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_rate(1 << 20, Duration::from_secs(1)), "1.0 MiB/s");
        assert_eq!(bytes_per_sec(5, Duration::ZERO), 0.0);
    }
}
