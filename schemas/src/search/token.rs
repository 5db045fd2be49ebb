//! Token values: `code`, `system|code`, `|code`, `system|`; `:of-type`
//! `typeSystem|typeCode|value`.

use super::{Predicate, split_escaped, unescape};

pub(super) fn parse(v: &str) -> Result<Predicate, String> {
    let parts = split_escaped(v, '|');
    Ok(match parts.as_slice() {
        [code] => Predicate::Token { system: None, code: Some(unescape(code)) },
        [system, code] => Predicate::Token {
            system: Some((!system.is_empty()).then(|| unescape(system))),
            code: (!code.is_empty()).then(|| unescape(code)),
        },
        _ => {
            return Err(format!(
                "'{v}' has more than one unescaped '|': write system|code, and '\\|' for a literal bar"
            ));
        }
    })
}

pub(super) fn parse_of_type(v: &str) -> Result<Predicate, String> {
    let parts = split_escaped(v, '|');
    match parts.as_slice() {
        [system, code, value] if !code.is_empty() && !value.is_empty() => {
            Ok(Predicate::OfType { system: unescape(system), code: unescape(code), value: unescape(value) })
        }
        _ => Err(format!("':of-type' takes typeSystem|typeCode|value, not '{v}'")),
    }
}
