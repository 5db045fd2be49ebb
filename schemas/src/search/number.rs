//! Number and quantity values: a prefix, a decimal with its implicit precision range
//! (`100` is `[99.5, 100.5)`, `1.50` is `[1.495, 1.505)`), and for quantities
//! `|system|code` (with the value range in canonical UCUM units when the unit is known).

use rust_decimal::Decimal;

use super::{Predicate, Prefix, split_escaped, unescape};
use crate::fhirpath::Quantity;
use crate::shape::normalize_decimal;

fn number_text(s: &str) -> Result<Decimal, String> {
    let ok = {
        let t = s.strip_prefix('-').unwrap_or(s);
        let (m, e) = match t.split_once(['e', 'E']) {
            Some((m, e)) => (m, Some(e)),
            None => (t, None),
        };
        let mut parts = m.splitn(2, '.');
        let int = parts.next().unwrap_or("");
        let frac = parts.next();
        !int.is_empty()
            && int.bytes().all(|b| b.is_ascii_digit())
            && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
            && e.is_none_or(|e| e.strip_prefix(['+', '-']).unwrap_or(e).parse::<u32>().is_ok())
    };
    if !ok {
        return Err(format!("'{s}' is not a number"));
    }
    Decimal::from_str_exact(s).or_else(|_| Decimal::from_scientific(s)).map_err(|_| format!("'{s}' is out of range"))
}

/// The value and its precision range `[low, high)` as normalized decimal text.
fn with_range(d: Decimal) -> Option<(String, String, String)> {
    let half = Decimal::new(5, d.scale() + 1);
    let low = d.checked_sub(half)?;
    let high = d.checked_add(half)?;
    Some((
        normalize_decimal(&d.to_string())?,
        normalize_decimal(&low.to_string())?,
        normalize_decimal(&high.to_string())?,
    ))
}

pub(super) fn parse(v: &str) -> Result<Predicate, String> {
    let (prefix, rest) = Prefix::split(v);
    let d = number_text(&unescape(rest))?;
    let (value, low, high) = with_range(d).ok_or_else(|| format!("'{rest}' is out of range"))?;
    Ok(Predicate::Number { prefix, value, low, high })
}

pub(super) fn parse_quantity(v: &str) -> Result<Predicate, String> {
    let parts = split_escaped(v, '|');
    let (num, system, code) = match parts.as_slice() {
        [n] => (n.as_str(), None, None),
        [n, s, c] => (n.as_str(), (!s.is_empty()).then(|| unescape(s)), (!c.is_empty()).then(|| unescape(c))),
        _ => return Err(format!("'{v}' is not number, or number|system|code")),
    };
    let (prefix, rest) = Prefix::split(num);
    let d = number_text(&unescape(rest))?;
    let (value, low, high) = with_range(d).ok_or_else(|| format!("'{rest}' is out of range"))?;
    let ucum = system.as_deref().is_none_or(|s| s == "http://unitsofmeasure.org");
    // The precision range in canonical UCUM units, when the unit is known.
    let canonical = code.as_ref().filter(|_| ucum).and_then(|c| {
        let half = Decimal::new(5, d.scale() + 1);
        let (lo, unit) = Quantity::new(d.checked_sub(half)?, c.clone()).canonical()?;
        let (hi, _) = Quantity::new(d.checked_add(half)?, c.clone()).canonical()?;
        Some((normalize_decimal(&lo.to_string())?, normalize_decimal(&hi.to_string())?, unit))
    });
    Ok(Predicate::Quantity { prefix, value, low, high, system, code, canonical })
}
