//! Date values: a prefix and a FHIR date/dateTime/instant, standing for the range of its
//! precision — the rule of [`crate::search_index`]: no zone means UTC.

use super::{Predicate, Prefix, unescape};
use crate::fhirpath::Temporal;

/// An inclusive range in microseconds since the epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub start: i64,
    pub end: i64,
}

impl DateRange {
    /// The range of a FHIR date, dateTime or instant.
    pub fn of(text: &str) -> Option<DateRange> {
        let (start, end) = Temporal::parse_datetime(text)?.range_micros();
        Some(DateRange { start, end })
    }
}

pub(super) fn parse(v: &str) -> Result<Predicate, String> {
    let (prefix, rest) = Prefix::split(v);
    let text = unescape(rest);
    let range = DateRange::of(&text).ok_or_else(|| {
        format!("'{text}' is not a FHIR date or dateTime: write YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss][Z|+hh:mm]")
    })?;
    Ok(Predicate::Date { prefix, range })
}
