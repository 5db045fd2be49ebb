//! Matching one search clause against a `_sp_*` index column, row by row: every value of
//! the clause (ORed) against every element of the row's list. Used by the `fhir_match`
//! UDF of the plan. One matcher per parameter type; the semantics of prefixes on ranges
//! follow the FHIR search specification (a target value is a range too).

use std::collections::HashSet;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, StructArray};
use arrow::datatypes::{Decimal128Type, TimestampMicrosecondType};
use fhirlake_schemas::search::{Clause, DateRange, Predicate, Prefix, StringMatch, UriMatch};
use fhirlake_schemas::search_index::normalize_string;
use fhirlake_schemas::shape::DECIMAL_SCALE;
use rust_decimal::Decimal;

use crate::{Error, Result};

/// A clause ready to run against Arrow arrays.
#[derive(Debug)]
pub struct ClauseMatcher {
    values: Vec<ValueMatcher>,
    negated: bool,
    missing: Option<bool>,
}

#[derive(Debug)]
enum ValueMatcher {
    Token {
        system: Option<Option<String>>,
        code: Option<String>,
    },
    TokenText(String),
    String {
        value: String,
        mode: StringMatch,
    },
    Date {
        prefix: Prefix,
        range: DateRange,
    },
    Number {
        prefix: Prefix,
        value: i128,
        low: i128,
        high: i128,
    },
    Quantity {
        prefix: Prefix,
        value: i128,
        low: i128,
        high: i128,
        system: Option<String>,
        code: Option<String>,
        canonical: Option<(i128, i128, String)>,
    },
    Reference {
        target_type: Option<String>,
        id: Option<String>,
        url: Option<String>,
    },
    /// Resolved chain: references to any of these `Type/id`s.
    ReferenceIn(HashSet<(String, String)>),
    ReferenceIdentifier {
        system: Option<Option<String>>,
        value: Option<String>,
    },
    Uri {
        value: String,
        mode: UriMatch,
    },
    Composite(Vec<(String, ValueMatcher)>),
}

/// Decimal text as an `i128` at the index columns' scale.
fn scaled(text: &str) -> Result<i128> {
    let mut d: Decimal = text.parse().map_err(|_| Error::BadSearch(format!("'{text}' is not a number")))?;
    d.rescale(DECIMAL_SCALE as u32);
    if d.scale() != DECIMAL_SCALE as u32 {
        return Err(Error::BadSearch(format!("'{text}' is out of range")));
    }
    Ok(d.mantissa())
}

fn value_matcher(p: &Predicate) -> Result<ValueMatcher> {
    Ok(match p {
        Predicate::Token { system, code } => ValueMatcher::Token { system: system.clone(), code: code.clone() },
        Predicate::TokenText(t) => ValueMatcher::TokenText(t.clone()),
        Predicate::OfType { .. } => {
            // The search plan pairs an index prefilter with `fhir_identifier_of_type`.
            return Err(Error::BadSearch("':of-type' inside a composite is not supported".into()));
        }
        Predicate::String { value, mode } => ValueMatcher::String { value: value.clone(), mode: *mode },
        Predicate::Date { prefix, range } => ValueMatcher::Date { prefix: *prefix, range: *range },
        Predicate::Number { prefix, value, low, high } => {
            ValueMatcher::Number { prefix: *prefix, value: scaled(value)?, low: scaled(low)?, high: scaled(high)? }
        }
        Predicate::Quantity { prefix, value, low, high, system, code, canonical } => ValueMatcher::Quantity {
            prefix: *prefix,
            value: scaled(value)?,
            low: scaled(low)?,
            high: scaled(high)?,
            system: system.clone(),
            code: code.clone(),
            canonical: match canonical {
                Some((lo, hi, unit)) => Some((scaled(lo)?, scaled(hi)?, unit.clone())),
                None => None,
            },
        },
        Predicate::Reference { target_type, id, url } => {
            ValueMatcher::Reference { target_type: target_type.clone(), id: id.clone(), url: url.clone() }
        }
        Predicate::ReferenceIdentifier { system, value } => {
            ValueMatcher::ReferenceIdentifier { system: system.clone(), value: value.clone() }
        }
        Predicate::Uri { value, mode } => ValueMatcher::Uri { value: value.clone(), mode: *mode },
        Predicate::Composite(_) => return Err(Error::BadSearch("a composite inside a composite".into())),
    })
}

impl ClauseMatcher {
    /// A matcher for `clause` (which must not be a chain: resolve chains first with
    /// [`ClauseMatcher::references`]).
    pub fn new(clause: &Clause) -> Result<Self> {
        let mut values = Vec::new();
        for v in &clause.values {
            values.push(match (v, &clause.kind) {
                (Predicate::Composite(parts), fhirlake_schemas::search_index::ParamKind::Composite(components)) => {
                    let mut ms = Vec::new();
                    for (p, c) in parts.iter().zip(components) {
                        ms.push((c.code.replace('-', "_"), value_matcher(p)?));
                    }
                    ValueMatcher::Composite(ms)
                }
                (p, _) => value_matcher(p)?,
            });
        }
        Ok(ClauseMatcher { values, negated: clause.negated, missing: clause.missing })
    }

    /// A matcher for references to any of `targets` (`(type, id)`): a resolved chain.
    pub fn references(targets: HashSet<(String, String)>) -> Self {
        ClauseMatcher { values: vec![ValueMatcher::ReferenceIn(targets)], negated: false, missing: None }
    }

    /// One boolean per row of `column` (a list of index values).
    pub fn evaluate(&self, column: &ArrayRef) -> Result<BooleanArray> {
        let list = column.as_list_opt::<i32>().ok_or_else(|| Error::BadSearch("not an index column".into()))?;
        let n = list.len();
        if let Some(want) = self.missing {
            return Ok((0..n).map(|i| Some((list.is_null(i) || list.value_length(i) == 0) == want)).collect());
        }
        let values = list.values();
        let elem: Vec<bool> = match self.token_elements(values.as_ref()) {
            Some(elem) => elem,
            None => (0..values.len()).map(|j| self.values.iter().any(|m| m.matches(values.as_ref(), j))).collect(),
        };
        let offsets = list.value_offsets();
        Ok((0..n)
            .map(|i| {
                let any = !list.is_null(i) && (offsets[i] as usize..offsets[i + 1] as usize).any(|j| elem[j]);
                Some(any != self.negated)
            })
            .collect())
    }
}

impl ClauseMatcher {
    /// The common case, every value a token: the `system` and `code` child arrays are
    /// resolved once and compared element by element (no per-element field lookup).
    fn token_elements(&self, values: &dyn Array) -> Option<Vec<bool>> {
        let tokens: Vec<(&Option<Option<String>>, &Option<String>)> = self
            .values
            .iter()
            .map(|m| match m {
                ValueMatcher::Token { system, code } => Some((system, code)),
                _ => None,
            })
            .collect::<Option<_>>()?;
        let s = values.as_struct_opt()?;
        let system = StrColumn::of(field(s, "system")?.as_ref())?;
        let code = StrColumn::of(field(s, "code")?.as_ref())?;
        Some(
            (0..values.len())
                .map(|j| {
                    !s.is_null(j)
                        && tokens.iter().any(|(want_system, want_code)| {
                            token_matches(want_system, want_code, system.get(j), code.get(j))
                        })
                })
                .collect(),
        )
    }
}

/// One token value (`system`, `code` of an index element) against a search token:
/// `system` `None` is any system, `Some(None)` no system (`|code`); `code` `None` is any
/// code (`system|`).
pub(crate) fn token_matches(
    want_system: &Option<Option<String>>,
    want_code: &Option<String>,
    system: Option<&str>,
    code: Option<&str>,
) -> bool {
    let code_ok = match want_code {
        None => code.is_some(),
        Some(w) => code == Some(w.as_str()),
    };
    code_ok
        && match want_system {
            None => true,
            Some(None) => system.is_none(),
            Some(Some(w)) => system == Some(w.as_str()),
        }
}

/// A string column of any Arrow string layout, downcast once.
pub(crate) enum StrColumn<'a> {
    View(&'a arrow::array::StringViewArray),
    Utf8(&'a arrow::array::StringArray),
    Large(&'a arrow::array::LargeStringArray),
}

impl<'a> StrColumn<'a> {
    pub(crate) fn of(a: &'a dyn Array) -> Option<Self> {
        if let Some(v) = a.as_string_view_opt() {
            return Some(StrColumn::View(v));
        }
        if let Some(v) = a.as_string_opt::<i32>() {
            return Some(StrColumn::Utf8(v));
        }
        a.as_string_opt::<i64>().map(StrColumn::Large)
    }

    pub(crate) fn get(&self, j: usize) -> Option<&'a str> {
        match self {
            StrColumn::View(a) => (!a.is_null(j)).then(|| a.value(j)),
            StrColumn::Utf8(a) => (!a.is_null(j)).then(|| a.value(j)),
            StrColumn::Large(a) => (!a.is_null(j)).then(|| a.value(j)),
        }
    }
}

fn field<'a>(s: &'a StructArray, name: &str) -> Option<&'a ArrayRef> {
    s.column_by_name(name)
}

/// The string at `j` of a Utf8, LargeUtf8 or Utf8View array (DataFusion reads Delta
/// strings as views).
pub fn string_at(a: &dyn Array, j: usize) -> Option<&str> {
    if a.is_null(j) {
        return None;
    }
    if let Some(a) = a.as_string_view_opt() {
        return Some(a.value(j));
    }
    if let Some(a) = a.as_string_opt::<i32>() {
        return Some(a.value(j));
    }
    a.as_string_opt::<i64>().map(|a| a.value(j))
}

fn str_at<'a>(s: &'a StructArray, name: &str, j: usize) -> Option<&'a str> {
    string_at(field(s, name)?.as_ref(), j)
}

fn ts_at(s: &StructArray, name: &str, j: usize) -> Option<i64> {
    let a = field(s, name)?.as_primitive_opt::<TimestampMicrosecondType>()?;
    (!a.is_null(j)).then(|| a.value(j))
}

fn dec_at(s: &StructArray, name: &str, j: usize) -> Option<i128> {
    let a = field(s, name)?.as_primitive_opt::<Decimal128Type>()?;
    (!a.is_null(j)).then(|| a.value(j))
}

/// Does the target range `[ts, te]` (open where `None`) satisfy `prefix` against the
/// search range `[ss, se]`?
fn range_matches(prefix: Prefix, ts: Option<i128>, te: Option<i128>, ss: i128, se: i128) -> bool {
    let lo = ts.unwrap_or(i128::MIN);
    let hi = te.unwrap_or(i128::MAX);
    match prefix {
        Prefix::Eq => lo >= ss && hi <= se,
        Prefix::Ne => !(lo >= ss && hi <= se),
        Prefix::Gt => hi > se,
        Prefix::Lt => lo < ss,
        Prefix::Ge => hi >= ss,
        Prefix::Le => lo <= se,
        Prefix::Sa => lo > se,
        Prefix::Eb => hi < ss,
        Prefix::Ap => {
            // Within 10% of the search range's width either side (at least the range).
            let pad = ((se - ss) / 10).max(1);
            lo <= se + pad && hi >= ss - pad
        }
    }
}

/// A point value against a number's search value and its precision range `[low, high)`.
fn number_matches(prefix: Prefix, v: i128, value: i128, low: i128, high: i128) -> bool {
    match prefix {
        Prefix::Eq => v >= low && v < high,
        Prefix::Ne => !(v >= low && v < high),
        Prefix::Gt | Prefix::Sa => v > value,
        Prefix::Lt | Prefix::Eb => v < value,
        Prefix::Ge => v >= value,
        Prefix::Le => v <= value,
        Prefix::Ap => {
            let pad = (value / 10).abs();
            v >= value - pad && v <= value + pad
        }
    }
}

impl ValueMatcher {
    fn matches(&self, array: &dyn Array, j: usize) -> bool {
        if array.is_null(j) {
            return false;
        }
        match self {
            ValueMatcher::Uri { value, mode } => {
                let Some(s) = string_at(array, j) else { return false };
                match mode {
                    UriMatch::Exact => s == value,
                    UriMatch::Above => value.starts_with(s),
                    UriMatch::Below => s.starts_with(value.as_str()),
                }
            }
            ValueMatcher::Number { prefix, value, low, high } => {
                let Some(a) = array.as_primitive_opt::<Decimal128Type>() else { return false };
                number_matches(*prefix, a.value(j), *value, *low, *high)
            }
            _ => {
                let Some(s) = array.as_struct_opt() else { return false };
                self.matches_struct(s, j)
            }
        }
    }

    fn matches_struct(&self, s: &StructArray, j: usize) -> bool {
        match self {
            ValueMatcher::Token { system, code } => {
                token_matches(system, code, str_at(s, "system", j), str_at(s, "code", j))
            }
            ValueMatcher::TokenText(t) => {
                str_at(s, "text", j).is_some_and(|x| normalize_string(x).starts_with(t.as_str()))
            }
            ValueMatcher::String { value, mode } => match mode {
                StringMatch::Exact => str_at(s, "value", j) == Some(value.as_str()),
                StringMatch::Prefix => str_at(s, "norm", j).is_some_and(|n| n.starts_with(value.as_str())),
                StringMatch::Contains => str_at(s, "norm", j).is_some_and(|n| n.contains(value.as_str())),
            },
            ValueMatcher::Date { prefix, range } => {
                let (ts, te) = (ts_at(s, "start", j), ts_at(s, "end", j));
                if ts.is_none() && te.is_none() {
                    return false;
                }
                range_matches(*prefix, ts.map(i128::from), te.map(i128::from), range.start.into(), range.end.into())
            }
            ValueMatcher::Quantity { prefix, value, low, high, system, code, canonical } => {
                if let Some(want) = system
                    && str_at(s, "system", j) != Some(want.as_str())
                    && canonical.is_none()
                {
                    return false;
                }
                // Compare in canonical units when both sides have them.
                if let (Some((clo, chi, unit)), Some(cv)) = (canonical, dec_at(s, "canonical_value", j))
                    && str_at(s, "canonical_code", j) == Some(unit.as_str())
                {
                    let mid = clo + (chi - clo) / 2;
                    return number_matches(*prefix, cv, mid, *clo, *chi);
                }
                if let Some(want) = code
                    && str_at(s, "code", j) != Some(want.as_str())
                    && str_at(s, "unit", j) != Some(want.as_str())
                {
                    return false;
                }
                match dec_at(s, "value", j) {
                    Some(v) => number_matches(*prefix, v, *value, *low, *high),
                    None => {
                        let (lo, hi) = (dec_at(s, "low", j), dec_at(s, "high", j));
                        (lo.is_some() || hi.is_some()) && range_matches(*prefix, lo, hi, *low, *high)
                    }
                }
            }
            ValueMatcher::Reference { target_type, id, url } => {
                if let Some(u) = url
                    && str_at(s, "url", j) == Some(u.as_str())
                {
                    return true;
                }
                let Some(want) = id else { return false };
                str_at(s, "id", j) == Some(want.as_str())
                    && target_type.as_deref().is_none_or(|t| str_at(s, "type", j) == Some(t))
            }
            ValueMatcher::ReferenceIn(set) => match (str_at(s, "type", j), str_at(s, "id", j)) {
                (Some(t), Some(i)) => set.contains(&(t.to_string(), i.to_string())),
                _ => false,
            },
            ValueMatcher::ReferenceIdentifier { system, value } => {
                let sys_ok = match system {
                    None => true,
                    Some(None) => str_at(s, "identifier_system", j).is_none(),
                    Some(Some(w)) => str_at(s, "identifier_system", j) == Some(w.as_str()),
                };
                sys_ok && value.as_deref().is_none_or(|v| str_at(s, "identifier_value", j) == Some(v))
            }
            ValueMatcher::Composite(parts) => parts.iter().all(|(name, m)| match field(s, name) {
                Some(child) => m.matches(child.as_ref(), j),
                None => false,
            }),
            ValueMatcher::Uri { .. } | ValueMatcher::Number { .. } => false,
        }
    }
}
