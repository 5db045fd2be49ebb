//! Quantities and a UCUM subset: enough units to compare and convert the quantities that
//! occur in clinical data (mass, length, volume, time, amount of substance, pressure,
//! concentrations built from them, percent, international units).

use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::str::FromStr;

/// A FHIRPath quantity: a decimal value and a UCUM code or calendar-duration keyword.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    pub value: Decimal,
    /// UCUM code, or `year`/`month`/`week`/`day`/`hour`/`minute`/`second`/`millisecond`.
    pub unit: String,
}

const CALENDAR: [(&str, &str, &str); 8] = [
    ("year", "years", "a"),
    ("month", "months", "mo"),
    ("week", "weeks", "wk"),
    ("day", "days", "d"),
    ("hour", "hours", "h"),
    ("minute", "minutes", "min"),
    ("second", "seconds", "s"),
    ("millisecond", "milliseconds", "ms"),
];

/// Dimension exponents over the base units, in a fixed order.
type Dims = BTreeMap<&'static str, i32>;

impl Quantity {
    /// A quantity; plural calendar keywords are folded to the singular.
    pub fn new(value: Decimal, unit: String) -> Self {
        let unit = CALENDAR.iter().find(|c| c.1 == unit).map(|c| c.0.to_string()).unwrap_or(unit);
        Quantity { value, unit }
    }

    /// True for the calendar-duration keywords (singular or plural).
    pub fn is_calendar_unit(u: &str) -> bool {
        CALENDAR.iter().any(|c| c.0 == u || c.1 == u)
    }

    /// The calendar keyword of this quantity's unit: its own keyword, or the keyword of an
    /// exactly equivalent UCUM code (`wk`, `d`, `h`, `min`, `s`, `ms`; not `a` or `mo`).
    pub fn calendar_unit(&self) -> Option<&'static str> {
        CALENDAR
            .iter()
            .find(|c| c.0 == self.unit)
            .map(|c| c.0)
            .or_else(|| CALENDAR.iter().skip(2).find(|c| c.2 == self.unit).map(|c| c.0))
    }

    /// The UCUM code used to compare this quantity.
    pub fn ucum_code(&self) -> &str {
        CALENDAR.iter().find(|c| c.0 == self.unit).map(|c| c.2).unwrap_or(&self.unit)
    }

    /// The value in canonical base units and the canonical unit (`g.m-3`, `s`, `1`), or
    /// `None` when the unit is outside the supported UCUM subset.
    pub fn canonical(&self) -> Option<(Decimal, String)> {
        let (factor, dims) = parse_unit(self.ucum_code())?;
        Some((round(self.value.checked_mul(factor)?), dims_to_string(&dims)))
    }

    /// Multiplies or divides two quantities (unit algebra in canonical units).
    pub fn combine(&self, other: &Quantity, divide: bool) -> Option<Quantity> {
        let (fa, mut da) = parse_unit(self.ucum_code())?;
        let (fb, db) = parse_unit(other.ucum_code())?;
        let va = self.value.checked_mul(fa)?;
        let vb = other.value.checked_mul(fb)?;
        for (k, e) in db {
            *da.entry(k).or_insert(0) += if divide { -e } else { e };
        }
        da.retain(|_, e| *e != 0);
        let value = if divide { va.checked_div(vb)? } else { va.checked_mul(vb)? };
        Some(Quantity { value: round(value), unit: dims_to_string(&da) })
    }

    /// Converts to another unit of the same dimension.
    pub fn convert_to(&self, unit: &str) -> Option<Quantity> {
        let (value, dims) = self.canonical()?;
        let (factor, target) = parse_unit(unit)?;
        (dims_to_string(&target) == dims).then_some(())?;
        Some(Quantity { value: value.checked_div(factor)?, unit: unit.to_string() })
    }
}

/// Rounds away the noise of repeated conversions (20 significant digits).
fn round(d: Decimal) -> Decimal {
    d.round_sf(20).unwrap_or(d).normalize()
}

fn dims_to_string(d: &Dims) -> String {
    let parts: Vec<String> = d
        .iter()
        .filter(|(_, e)| **e != 0)
        .map(|(k, e)| if *e == 1 { (*k).to_string() } else { format!("{k}{e}") })
        .collect();
    if parts.is_empty() { "1".to_string() } else { parts.join(".") }
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).or_else(|_| Decimal::from_scientific(s)).unwrap_or(Decimal::ONE)
}

const PREFIXES: [(&str, &str); 20] = [
    ("da", "10"),
    ("Y", "1e24"),
    ("Z", "1e21"),
    ("E", "1e18"),
    ("P", "1e15"),
    ("T", "1e12"),
    ("G", "1e9"),
    ("M", "1e6"),
    ("k", "1e3"),
    ("h", "1e2"),
    ("d", "1e-1"),
    ("c", "1e-2"),
    ("m", "1e-3"),
    ("u", "1e-6"),
    ("μ", "1e-6"),
    ("µ", "1e-6"),
    ("n", "1e-9"),
    ("p", "1e-12"),
    ("f", "1e-15"),
    ("a", "1e-18"),
];

/// (symbol, metric (takes prefixes), factor, dimensions as `base:exp` pairs).
/// (symbol, metric, factor, dimensions).
type Atom = (&'static str, bool, &'static str, &'static [(&'static str, i32)]);

const ATOMS: &[Atom] = &[
    ("m", true, "1", &[("m", 1)]),
    ("s", true, "1", &[("s", 1)]),
    ("g", true, "1", &[("g", 1)]),
    ("rad", true, "1", &[("rad", 1)]),
    ("K", true, "1", &[("K", 1)]),
    ("C", true, "1", &[("C", 1)]),
    ("cd", true, "1", &[("cd", 1)]),
    ("mol", true, "1", &[("mol", 1)]),
    ("eq", true, "1", &[("mol", 1)]),
    ("osm", true, "1", &[("mol", 1)]),
    ("kat", true, "1", &[("mol", 1), ("s", -1)]),
    ("U", true, "0.0000000166666666666666666667", &[("mol", 1), ("s", -1)]),
    ("[iU]", true, "1", &[("[iU]", 1)]),
    ("[IU]", true, "1", &[("[iU]", 1)]),
    ("L", true, "0.001", &[("m", 3)]),
    ("l", true, "0.001", &[("m", 3)]),
    ("Hz", true, "1", &[("s", -1)]),
    ("N", true, "1000", &[("g", 1), ("m", 1), ("s", -2)]),
    ("Pa", true, "1000", &[("g", 1), ("m", -1), ("s", -2)]),
    ("bar", true, "100000000", &[("g", 1), ("m", -1), ("s", -2)]),
    ("m[Hg]", true, "133322000", &[("g", 1), ("m", -1), ("s", -2)]),
    ("m[H2O]", true, "9806650", &[("g", 1), ("m", -1), ("s", -2)]),
    ("J", true, "1000", &[("g", 1), ("m", 2), ("s", -2)]),
    ("cal", true, "4184", &[("g", 1), ("m", 2), ("s", -2)]),
    ("W", true, "1000", &[("g", 1), ("m", 2), ("s", -3)]),
    ("min", false, "60", &[("s", 1)]),
    ("h", false, "3600", &[("s", 1)]),
    ("d", false, "86400", &[("s", 1)]),
    ("wk", false, "604800", &[("s", 1)]),
    ("mo", false, "2629800", &[("s", 1)]),
    ("a", false, "31557600", &[("s", 1)]),
    ("[in_i]", false, "0.0254", &[("m", 1)]),
    ("[ft_i]", false, "0.3048", &[("m", 1)]),
    ("[yd_i]", false, "0.9144", &[("m", 1)]),
    ("[mi_i]", false, "1609.344", &[("m", 1)]),
    ("[lb_av]", false, "453.59237", &[("g", 1)]),
    ("[oz_av]", false, "28.349523125", &[("g", 1)]),
    ("[gal_us]", false, "0.003785411784", &[("m", 3)]),
    ("[foz_us]", false, "0.0000295735295625", &[("m", 3)]),
    ("[pint_us]", false, "0.000473176473", &[("m", 3)]),
    ("%", false, "0.01", &[]),
    ("[ppm]", false, "0.000001", &[]),
    ("[ppb]", false, "0.000000001", &[]),
    ("1", false, "1", &[]),
    ("[pi]", false, "3.1415926535897932384626433833", &[]),
    ("deg", false, "0.0174532925199432957692369077", &[("rad", 1)]),
    ("[beth'U]", false, "1", &[("[beth'U]", 1)]),
    ("[arb'U]", false, "1", &[("[arb'U]", 1)]),
];

fn atom(sym: &str) -> Option<(Decimal, Dims)> {
    let build = |factor: &str, dims: &[(&'static str, i32)]| (dec(factor), dims.iter().copied().collect::<Dims>());
    if let Some(a) = ATOMS.iter().find(|a| a.0 == sym) {
        return Some(build(a.2, a.3));
    }
    for (p, pf) in PREFIXES {
        if let Some(rest) = sym.strip_prefix(p)
            && let Some(a) = ATOMS.iter().find(|a| a.0 == rest && a.1)
        {
            let (f, d) = build(a.2, a.3);
            return Some((f.checked_mul(dec(pf))?, d));
        }
    }
    None
}

/// One unit symbol with an optional exponent: `m2`, `s-1`, `10*3`, `mm[Hg]`.
fn component(text: &str) -> Option<(Decimal, Dims)> {
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Some((Decimal::from_str(text).ok()?, Dims::new()));
    }
    if let Some(exp) = text.strip_prefix("10*").or_else(|| text.strip_prefix("10^")) {
        let e: i32 = exp.parse().ok()?;
        return Some((Decimal::from_scientific(&format!("1e{e}")).ok()?, Dims::new()));
    }
    let digits_at = text.rfind(|c: char| !(c.is_ascii_digit() || c == '-' || c == '+')).map_or(0, |i| i + 1);
    let (sym, exp) = if digits_at < text.len() && digits_at > 0 {
        (&text[..digits_at], text[digits_at..].parse::<i32>().ok()?)
    } else {
        (text, 1)
    };
    let (f, d) = atom(sym)?;
    let mut factor = Decimal::ONE;
    for _ in 0..exp.unsigned_abs() {
        factor = factor.checked_mul(f)?;
    }
    if exp < 0 {
        factor = Decimal::ONE.checked_div(factor)?;
    }
    Some((factor, d.into_iter().map(|(k, e)| (k, e * exp)).collect()))
}

/// Parses a UCUM expression into a factor and dimensions.
pub fn parse_unit(unit: &str) -> Option<(Decimal, Dims)> {
    let mut chars = unit.trim();
    let mut factor = Decimal::ONE;
    let mut dims = Dims::new();
    let mut divide = false;
    if let Some(r) = chars.strip_prefix('/') {
        divide = true;
        chars = r;
    }
    let mut any = false;
    while !chars.is_empty() {
        // Read one component up to the next top-level '.' or '/'.
        let mut depth = 0;
        let mut end = chars.len();
        for (i, c) in chars.char_indices() {
            match c {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                '.' | '/' if depth == 0 => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let raw = &chars[..end];
        // Annotations `{...}` count as 1.
        let stripped: String = {
            let mut s = String::new();
            let mut in_ann = false;
            for c in raw.chars() {
                match c {
                    '{' => in_ann = true,
                    '}' => in_ann = false,
                    _ if !in_ann => s.push(c),
                    _ => {}
                }
            }
            s
        };
        let (f, d) = if stripped.is_empty() {
            (Decimal::ONE, Dims::new())
        } else if let Some(inner) = stripped.strip_prefix('(').and_then(|s| s.strip_suffix(')')) {
            parse_unit(inner)?
        } else {
            component(&stripped)?
        };
        factor = if divide { factor.checked_div(f)? } else { factor.checked_mul(f)? };
        for (k, e) in d {
            *dims.entry(k).or_insert(0) += if divide { -e } else { e };
        }
        any = true;
        if end == chars.len() {
            break;
        }
        divide = chars[end..].starts_with('/');
        chars = &chars[end + 1..];
    }
    dims.retain(|_, e| *e != 0);
    any.then_some((factor, dims))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(v: &str, u: &str) -> Quantity {
        Quantity::new(Decimal::from_str(v).unwrap(), u.to_string())
    }

    #[test]
    fn canonical_units() {
        assert_eq!(q("4000", "mg").canonical(), q("4", "g").canonical());
        assert_eq!(q("1", "mg/dL").canonical().unwrap(), (Decimal::from(10), "g.m-3".to_string()));
        assert_eq!(q("120", "mm[Hg]").canonical().unwrap().1, "g.m-1.s-2");
        assert_eq!(q("7", "days").canonical(), q("1", "wk").canonical());
        assert_eq!(q("1", "[in_i]").canonical().unwrap().1, "m");
        assert_eq!(q("37", "Cel").canonical(), None);
        assert_eq!(q("5", "mmol/L").canonical().unwrap(), (Decimal::from(5), "m-3.mol".to_string()));
        assert_eq!(q("1", "kg/m2").canonical().unwrap().1, "g.m-2");
        assert_eq!(q("60", "/min").canonical().unwrap(), (Decimal::ONE, "s-1".to_string()));
        assert_eq!(q("3", "10*3/uL").canonical().unwrap().1, "m-3");
        assert_eq!(q("2", "mL{total}").canonical().unwrap().1, "m3");
    }
}
