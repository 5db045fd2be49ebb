//! FHIR date, dateTime, instant and time: format checks and the timestamp companion.
//!
//! Owns: the R4 lexical rules of the temporal primitives and the mapping of a (possibly
//! partial) value to microseconds since the Unix epoch, UTC. A partial value maps to the
//! start of the period it names (`2012` -> 2012-01-01T00:00:00Z); a value without a time
//! zone (only a date can lack one) is read as UTC. Must not: do any I/O.

/// Which temporal primitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporal {
    /// `date`: YYYY, YYYY-MM or YYYY-MM-DD.
    Date,
    /// `dateTime`: a date, or a full date with time and zone.
    DateTime,
    /// `instant`: full date, time with seconds and zone.
    Instant,
}

struct Parts {
    year: i64,
    month: u32,
    day: u32,
    seconds_of_day: i64,
    micros: i64,
    offset_seconds: i64,
}

/// Parses `s` as `kind`; returns microseconds since the epoch (UTC, period start) or
/// `None` when `s` is not a valid value of that kind.
pub fn parse(kind: Temporal, s: &str) -> Option<i64> {
    let p = parse_parts(kind, s)?;
    let days = days_from_civil(p.year, p.month, p.day);
    let secs = days * 86_400 + p.seconds_of_day - p.offset_seconds;
    Some(secs * 1_000_000 + p.micros)
}

/// True when `s` is a valid FHIR `time` (hh:mm:ss with optional fraction).
pub fn is_valid_time(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 8 {
        return false;
    }
    let ok = two(&b[0..2]).is_some_and(|h| h < 24)
        && b[2] == b':'
        && two(&b[3..5]).is_some_and(|m| m < 60)
        && b[5] == b':'
        && two(&b[6..8]).is_some_and(|s| s <= 60);
    ok && fraction(&b[8..]).is_some_and(|(_, rest)| rest.is_empty())
}

fn parse_parts(kind: Temporal, s: &str) -> Option<Parts> {
    let b = s.as_bytes();
    if b.len() < 4 || !b[..4].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let year: i64 = s[..4].parse().ok()?;
    if year == 0 {
        return None;
    }
    let mut p = Parts { year, month: 1, day: 1, seconds_of_day: 0, micros: 0, offset_seconds: 0 };
    if b.len() == 4 {
        return (kind != Temporal::Instant).then_some(p);
    }
    if b[4] != b'-' || b.len() < 7 {
        return None;
    }
    p.month = two(&b[5..7]).filter(|m| (1..=12).contains(m))?;
    if b.len() == 7 {
        return (kind != Temporal::Instant).then_some(p);
    }
    if b[7] != b'-' || b.len() < 10 {
        return None;
    }
    p.day = two(&b[8..10]).filter(|d| *d >= 1 && *d <= days_in_month(year, p.month))?;
    if b.len() == 10 {
        return (kind != Temporal::Instant).then_some(p);
    }
    if kind == Temporal::Date || b[10] != b'T' || b.len() < 19 {
        return None;
    }
    let h = two(&b[11..13]).filter(|h| *h < 24)?;
    let mi = two(&b[14..16]).filter(|m| *m < 60)?;
    let se = two(&b[17..19]).filter(|s| *s <= 60)?;
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    p.seconds_of_day = i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(se);
    let (micros, rest) = fraction(&b[19..])?;
    p.micros = micros;
    p.offset_seconds = match rest {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = two(&[*h1, *h2]).filter(|h| *h <= 14)?;
            let om = two(&[*m1, *m2]).filter(|m| *m < 60)?;
            let off = i64::from(oh) * 3600 + i64::from(om) * 60;
            if *sign == b'-' { -off } else { off }
        }
        _ => return None,
    };
    Some(p)
}

/// Optional `.digits`; returns (microseconds, remaining bytes).
fn fraction(b: &[u8]) -> Option<(i64, &[u8])> {
    if b.first() != Some(&b'.') {
        return Some((0, b));
    }
    let digits = b[1..].iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut micros = 0i64;
    for i in 0..6 {
        micros = micros * 10 + b.get(1 + i).filter(|_| i < digits).map_or(0, |c| i64::from(c - b'0'));
    }
    Some((micros, &b[1 + digits..]))
}

fn two(b: &[u8]) -> Option<u32> {
    if b.len() == 2 && b[0].is_ascii_digit() && b[1].is_ascii_digit() {
        Some(u32::from(b[0] - b'0') * 10 + u32::from(b[1] - b'0'))
    } else {
        None
    }
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_dates_map_to_period_start() {
        assert_eq!(parse(Temporal::Date, "1970"), Some(0));
        assert_eq!(parse(Temporal::Date, "1970-01-02"), Some(86_400_000_000));
        assert_eq!(parse(Temporal::DateTime, "2000-02"), Some(949_363_200_000_000));
    }

    #[test]
    fn zones_and_fractions() {
        let z = parse(Temporal::Instant, "2015-02-07T13:28:17.239+02:00").unwrap();
        assert_eq!(z, parse(Temporal::Instant, "2015-02-07T11:28:17.239Z").unwrap());
        assert_eq!(z % 1_000_000, 239_000);
    }

    #[test]
    fn invalid_values_are_rejected() {
        for (k, s) in [
            (Temporal::Date, "2015-02-30"),
            (Temporal::Date, "2015-13"),
            (Temporal::Date, "2015-02-07T13:28:17Z"),
            (Temporal::DateTime, "2015-02-07T13:28:17"),
            (Temporal::DateTime, "2015-02-07 13:28:17Z"),
            (Temporal::DateTime, "15-02-07"),
            (Temporal::Instant, "2015-02-07"),
            (Temporal::DateTime, "2015-02-07T25:00:00Z"),
            (Temporal::DateTime, "0000"),
        ] {
            assert_eq!(parse(k, s), None, "{s} should be rejected as {k:?}");
        }
        assert!(is_valid_time("13:28:17.5") && !is_valid_time("13:28") && !is_valid_time("24:00:00"));
    }
}
