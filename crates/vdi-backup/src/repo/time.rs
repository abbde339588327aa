//! Backup ids (`20261207T171500Z-3fa9`: the UTC time the backup started and 4 random hex
//! digits, so ids sort as text in time order) and UTC dates as people read them.
//!
//! ```
//! use vdi_backup::repo::time::{format_utc, new_id, parse_id};
//! let id = new_id(1_796_663_700);
//! assert!(id.starts_with("20261207T171500Z-"));
//! assert_eq!(parse_id(&id).map(|t| t.secs), Some(1_796_663_700));
//! assert_eq!(format_utc(1_796_663_700), "2026-12-07 17:15:00");
//! ```

/// What an id says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupIdTime {
    /// The start time, seconds since the Unix epoch.
    pub secs: u64,
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day, hour, minute, second) in UTC.
pub fn utc_parts(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

/// `2026-12-07 17:15:00` (UTC).
pub fn format_utc(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

/// `2026-12-07T17:15:00Z` (RFC 3339, UTC).
pub fn rfc3339(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// A new id for a backup started at `secs`.
pub fn new_id(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(secs);
    format!(
        "{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z-{:04x}",
        fastrand::u16(..)
    )
}

/// A new id for a backup started at `secs` that sorts after every id of `existing` of
/// the same second (a random suffix above theirs, while there is room).
pub fn new_id_after(secs: u64, existing: &[String]) -> String {
    let id = new_id(secs);
    let prefix = &id[..17];
    let top = existing
        .iter()
        .filter(|e| e.starts_with(prefix) && parse_id(e).is_some())
        .filter_map(|e| u16::from_str_radix(&e[17..], 16).ok())
        .max();
    match top {
        Some(t) if t < 0xffff => format!(
            "{prefix}{:04x}",
            fastrand::u16(t + 1..=t.saturating_add(256))
        ),
        _ => id,
    }
}

/// What `id` says, if it is an id (`YYYYMMDDTHHMMSSZ-xxxx`, lower-case hex).
pub fn parse_id(id: &str) -> Option<BackupIdTime> {
    let b = id.as_bytes();
    if b.len() != 21 || b[8] != b'T' || b[15] != b'Z' || b[16] != b'-' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let s = id.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if !id[17..]
        .bytes()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return None;
    }
    let (y, mo, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (h, mi, s) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + s);
    u64::try_from(secs).ok().map(|secs| BackupIdTime { secs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sort() {
        for t in [0u64, 951_782_400, 1_796_663_700, 4_102_444_799] {
            let id = new_id(t);
            assert_eq!(parse_id(&id).map(|x| x.secs), Some(t), "{id}");
        }
        let mut ids = vec!["20261207T171500Z-0000".to_owned()];
        for _ in 0..20 {
            let next = new_id_after(1_796_663_700, &ids);
            assert!(ids.iter().all(|i| *i < next), "{next}");
            ids.push(next);
        }
        let a = new_id(1_796_663_700);
        let b = new_id(1_796_664_901);
        assert!(a < b);
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        for bad in [
            "",
            "manifest.json",
            "20261207T171500Z-3FA9",
            "20261207T171500Z_3fa9",
            "20261307T171500Z-3fa9",
            "2026120717150000-3fa9",
            "locks",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }
}
