//! Partial dates, date-times and times with FHIRPath precision semantics.

use std::cmp::Ordering;
use std::fmt;

/// Which of the three temporal types a value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemporalKind {
    Date,
    DateTime,
    Time,
}

/// The finest component a value states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Precision {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

/// A date, dateTime or time as written, to its precision.
#[derive(Debug, Clone, PartialEq)]
pub struct Temporal {
    pub kind: TemporalKind,
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
    pub precision: Precision,
    /// Zone offset in minutes, when stated; `Z` is 0.
    pub offset: Option<i32>,
}

fn digits(s: &str, n: usize) -> Option<(u32, &str)> {
    if s.len() < n || !s.as_bytes()[..n].iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some((s[..n].parse().ok()?, &s[n..]))
}

pub fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    ((yoe + era * 400 + i64::from(m <= 2)) as i32, m, d)
}

impl Temporal {
    fn empty(kind: TemporalKind) -> Self {
        Temporal {
            kind,
            year: 0,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            millis: 0,
            precision: Precision::Year,
            offset: None,
        }
    }

    /// Parses a FHIRPath literal (without the `@`): `2015`, `2015-02-04T14:34`, `T14:34:28.123`.
    pub fn parse_literal(s: &str) -> Option<Temporal> {
        if let Some(t) = s.strip_prefix('T') {
            return Self::parse_time(t);
        }
        let (mut v, rest) = Self::parse_date_part(s)?;
        if rest.is_empty() {
            return Some(v);
        }
        let rest = rest.strip_prefix('T')?;
        v.kind = TemporalKind::DateTime;
        if rest.is_empty() {
            return Some(v);
        }
        v.time_and_zone(rest, true)?;
        Some(v)
    }

    /// Parses FHIR `date` text.
    pub fn parse_date(s: &str) -> Option<Temporal> {
        let (v, rest) = Self::parse_date_part(s)?;
        rest.is_empty().then_some(v)
    }

    /// Parses FHIR `dateTime` / `instant` text (a date alone is a dateTime of that precision).
    pub fn parse_datetime(s: &str) -> Option<Temporal> {
        let (mut v, rest) = Self::parse_date_part(s)?;
        v.kind = TemporalKind::DateTime;
        if rest.is_empty() {
            return Some(v);
        }
        v.time_and_zone(rest.strip_prefix('T')?, true)?;
        Some(v)
    }

    /// Parses FHIR `time` text (`14:34`, `14:34:28.123`), which has no zone.
    pub fn parse_time(s: &str) -> Option<Temporal> {
        let mut v = Self::empty(TemporalKind::Time);
        v.time_and_zone(s, false)?;
        Some(v)
    }

    fn parse_date_part(s: &str) -> Option<(Temporal, &str)> {
        let mut v = Self::empty(TemporalKind::Date);
        let (y, mut rest) = digits(s, 4)?;
        v.year = y as i32;
        if let Some(r) = rest.strip_prefix('-') {
            let (m, r) = digits(r, 2)?;
            (1..=12).contains(&m).then_some(())?;
            v.month = m;
            v.precision = Precision::Month;
            rest = r;
            if let Some(r) = rest.strip_prefix('-') {
                let (d, r) = digits(r, 2)?;
                (1..=days_in_month(v.year, m)).contains(&d).then_some(())?;
                v.day = d;
                v.precision = Precision::Day;
                rest = r;
            }
        }
        Some((v, rest))
    }

    fn time_and_zone(&mut self, s: &str, zone_allowed: bool) -> Option<()> {
        let (h, mut rest) = digits(s, 2)?;
        (h < 24).then_some(())?;
        self.hour = h;
        self.precision = Precision::Hour;
        if let Some(r) = rest.strip_prefix(':') {
            let (m, r) = digits(r, 2)?;
            (m < 60).then_some(())?;
            self.minute = m;
            self.precision = Precision::Minute;
            rest = r;
            if let Some(r) = rest.strip_prefix(':') {
                let (sec, r) = digits(r, 2)?;
                (sec < 60).then_some(())?;
                self.second = sec;
                self.precision = Precision::Second;
                rest = r;
                if let Some(r) = rest.strip_prefix('.') {
                    let n = r.bytes().take_while(u8::is_ascii_digit).count();
                    (n > 0).then_some(())?;
                    let frac = &r[..n];
                    let ms: String = frac.chars().chain("000".chars()).take(3).collect();
                    self.millis = ms.parse().ok()?;
                    self.precision = Precision::Millisecond;
                    rest = &r[n..];
                }
            }
        }
        if rest.is_empty() {
            return Some(());
        }
        if !zone_allowed {
            return None;
        }
        if rest == "Z" {
            self.offset = Some(0);
            return Some(());
        }
        let sign = match rest.as_bytes()[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let (oh, r) = digits(&rest[1..], 2)?;
        let (om, r) = digits(r.strip_prefix(':')?, 2)?;
        (r.is_empty() && oh <= 14 && om < 60).then_some(())?;
        self.offset = Some(sign * (oh * 60 + om) as i32);
        Some(())
    }

    /// The FHIRPath `precision()` digits count.
    pub fn precision_digits(&self) -> i64 {
        let p = self.precision;
        match self.kind {
            TemporalKind::Time => match p {
                Precision::Hour => 2,
                Precision::Minute => 4,
                Precision::Second => 6,
                _ => 9,
            },
            _ => match p {
                Precision::Year => 4,
                Precision::Month => 6,
                Precision::Day => 8,
                Precision::Hour => 10,
                Precision::Minute => 12,
                Precision::Second => 14,
                Precision::Millisecond => 17,
            },
        }
    }

    fn precision_from_digits(kind: TemporalKind, d: i64) -> Option<Precision> {
        Some(match (kind, d) {
            (TemporalKind::Time, 2) => Precision::Hour,
            (TemporalKind::Time, 4) => Precision::Minute,
            (TemporalKind::Time, 6) => Precision::Second,
            (TemporalKind::Time, 9) => Precision::Millisecond,
            (TemporalKind::Time, _) => return None,
            (_, 4) => Precision::Year,
            (_, 6) => Precision::Month,
            (_, 8) => Precision::Day,
            (TemporalKind::DateTime, 10) => Precision::Hour,
            (TemporalKind::DateTime, 12) => Precision::Minute,
            (TemporalKind::DateTime, 14) => Precision::Second,
            (TemporalKind::DateTime, 17) => Precision::Millisecond,
            _ => return None,
        })
    }

    /// The earliest (`high` false) or latest value this one can stand for, at `digits`
    /// precision (default: the finest of its type). Without a zone, the widest zones apply.
    pub fn boundary(&self, digits: Option<i64>, high: bool) -> Option<Temporal> {
        let finest = if self.kind == TemporalKind::Date {
            8
        } else if self.kind == TemporalKind::Time {
            9
        } else {
            17
        };
        let p = Self::precision_from_digits(self.kind, digits.unwrap_or(finest))?;
        let mut v = self.clone();
        if self.precision < Precision::Month {
            v.month = if high { 12 } else { 1 };
        }
        if self.precision < Precision::Day {
            v.day = if high { days_in_month(v.year, v.month) } else { 1 };
        }
        if self.precision < Precision::Hour {
            v.hour = if high { 23 } else { 0 };
        }
        if self.precision < Precision::Minute {
            v.minute = if high { 59 } else { 0 };
        }
        if self.precision < Precision::Second {
            v.second = if high { 59 } else { 0 };
        }
        if self.precision < Precision::Millisecond {
            v.millis = if high { 999 } else { 0 };
        }
        if self.kind == TemporalKind::DateTime && p >= Precision::Hour && v.offset.is_none() {
            v.offset = Some(if high { -12 * 60 } else { 14 * 60 });
        }
        v.precision = p;
        if p < Precision::Hour && self.kind == TemporalKind::DateTime {
            v.kind = TemporalKind::Date;
            v.offset = None;
        }
        Some(v)
    }

    /// Milliseconds since the epoch (UTC when a zone is stated), filling unstated parts with
    /// their minimum. Times count from midnight.
    pub fn epoch_millis(&self) -> i64 {
        let days = if self.kind == TemporalKind::Time { 0 } else { days_from_civil(self.year, self.month, self.day) };
        let ms = ((days * 24 + i64::from(self.hour)) * 60 + i64::from(self.minute)) * 60_000
            + i64::from(self.second) * 1000
            + i64::from(self.millis);
        ms - i64::from(self.offset.unwrap_or(0)) * 60_000
    }

    /// The first and last microsecond (inclusive) of the range this value stands for,
    /// taking an unstated zone as UTC: the one date rule of indexing and search.
    pub fn range_micros(&self) -> (i64, i64) {
        let (lo, hi) = self.range_millis();
        (lo * 1000, hi * 1000 + 999)
    }

    /// The first and last millisecond (inclusive) of the range this value stands for.
    fn range_millis(&self) -> (i64, i64) {
        let lo = self.epoch_millis();
        let next = match self.precision {
            Precision::Year => self.add(1, "year"),
            Precision::Month => self.add(1, "month"),
            Precision::Day => self.add(1, "day"),
            Precision::Hour => self.add(1, "hour"),
            Precision::Minute => self.add(1, "minute"),
            Precision::Second => self.add(1, "second"),
            Precision::Millisecond => self.add(1, "millisecond"),
        };
        (lo, next.map_or(lo, |n| n.epoch_millis() - 1))
    }

    fn at_epoch_millis(&self, ms: i64) -> Temporal {
        let local = ms + i64::from(self.offset.unwrap_or(0)) * 60_000;
        let days = local.div_euclid(86_400_000);
        let rem = local.rem_euclid(86_400_000);
        let (y, m, d) = civil_from_days(days);
        Temporal {
            year: y,
            month: m,
            day: d,
            hour: (rem / 3_600_000) as u32,
            minute: (rem / 60_000 % 60) as u32,
            second: (rem / 1000 % 60) as u32,
            millis: (rem % 1000) as u32,
            ..self.clone()
        }
    }

    /// Compares two values by FHIRPath rules: `None` when the answer depends on components
    /// one of them does not state. Seconds and milliseconds count as one precision.
    pub fn compare(&self, other: &Temporal) -> Option<Ordering> {
        if (self.kind == TemporalKind::Time) != (other.kind == TemporalKind::Time) {
            return None;
        }
        let both_timed = self.precision >= Precision::Hour && other.precision >= Precision::Hour;
        let (a, b) = if both_timed && self.kind != TemporalKind::Time {
            match (self.offset, other.offset) {
                (Some(_), Some(_)) => {
                    let utc = |v: &Temporal| {
                        let mut u = v.clone();
                        u.offset = Some(0);
                        u.at_epoch_millis(v.epoch_millis())
                    };
                    (utc(self), utc(other))
                }
                (None, None) => (self.clone(), other.clone()),
                _ => return None,
            }
        } else {
            (self.clone(), other.clone())
        };
        let norm = |p: Precision| if p == Precision::Millisecond { Precision::Second } else { p };
        let pa = norm(a.precision);
        let pb = norm(b.precision);
        let start = if a.kind == TemporalKind::Time { Precision::Hour } else { Precision::Year };
        let comps = |v: &Temporal| {
            [
                (Precision::Year, i64::from(v.year)),
                (Precision::Month, i64::from(v.month)),
                (Precision::Day, i64::from(v.day)),
                (Precision::Hour, i64::from(v.hour)),
                (Precision::Minute, i64::from(v.minute)),
                (Precision::Second, i64::from(v.second) * 1000 + i64::from(v.millis)),
            ]
        };
        let (ca, cb) = (comps(&a), comps(&b));
        for i in 0..6 {
            let p = ca[i].0;
            if p < start {
                continue;
            }
            if p > pa || p > pb {
                return if pa == pb { Some(Ordering::Equal) } else { None };
            }
            match ca[i].1.cmp(&cb[i].1) {
                Ordering::Equal => {}
                o => return Some(o),
            }
        }
        if pa == pb { Some(Ordering::Equal) } else { None }
    }

    /// Adds a calendar duration; `unit` is one of year, month, week, day, hour, minute,
    /// second, millisecond. Amounts below the value's precision are truncated.
    pub fn add(&self, amount: i64, unit: &str) -> Option<Temporal> {
        let mut v = self.clone();
        match unit {
            "year" => {
                v.year = v.year.checked_add(i32::try_from(amount).ok()?)?;
                v.day = v.day.min(days_in_month(v.year, v.month));
            }
            "month" => {
                let total = i64::from(v.year) * 12 + i64::from(v.month) - 1 + amount;
                v.year = i32::try_from(total.div_euclid(12)).ok()?;
                v.month = (total.rem_euclid(12) + 1) as u32;
                v.day = v.day.min(days_in_month(v.year, v.month));
            }
            "week" | "day" => {
                let days = if unit == "week" { amount * 7 } else { amount };
                if v.kind == TemporalKind::Time {
                    return Some(v);
                }
                let ms = v.epoch_millis() + days * 86_400_000;
                v = v.at_epoch_millis(ms);
            }
            "hour" | "minute" | "second" | "millisecond" => {
                let ms = match unit {
                    "hour" => amount * 3_600_000,
                    "minute" => amount * 60_000,
                    "second" => amount * 1000,
                    _ => amount,
                };
                let shifted = v.at_epoch_millis(v.epoch_millis() + ms);
                if v.kind == TemporalKind::Time {
                    v.hour = shifted.hour;
                    v.minute = shifted.minute;
                    v.second = shifted.second;
                    v.millis = shifted.millis;
                } else {
                    v = shifted;
                }
            }
            _ => return None,
        }
        Some(v)
    }
}

impl fmt::Display for Temporal {
    /// FHIR text (no `@`), to the value's precision.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.precision;
        if self.kind != TemporalKind::Time {
            write!(f, "{:04}", self.year)?;
            if p >= Precision::Month {
                write!(f, "-{:02}", self.month)?;
            }
            if p >= Precision::Day {
                write!(f, "-{:02}", self.day)?;
            }
            if self.kind == TemporalKind::Date || p < Precision::Hour {
                return Ok(());
            }
            f.write_str("T")?;
        }
        write!(f, "{:02}", self.hour)?;
        if p >= Precision::Minute {
            write!(f, ":{:02}", self.minute)?;
        }
        if p >= Precision::Second {
            write!(f, ":{:02}", self.second)?;
        }
        if p >= Precision::Millisecond {
            write!(f, ".{:03}", self.millis)?;
        }
        if let Some(o) = self.offset {
            if o == 0 {
                f.write_str("Z")?;
            } else {
                let sign = if o < 0 { '-' } else { '+' };
                write!(f, "{sign}{:02}:{:02}", o.abs() / 60, o.abs() % 60)?;
            }
        }
        Ok(())
    }
}
