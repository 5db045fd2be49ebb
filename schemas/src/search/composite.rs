//! Composite values: one value per component, separated by an unescaped `$`
//! (`http://loinc.org|8480-6$gt100`).

use super::{Predicate, date, number, reference, split_escaped, string, token};
use crate::Model;
use crate::search_index::{Component, ParamKind};

pub(super) fn parse(model: &Model, components: &[Component], v: &str) -> Result<Predicate, String> {
    let parts = split_escaped(v, '$');
    if parts.len() != components.len() {
        return Err(format!(
            "'{v}' has {} parts; this composite has {} ({}), separated by '$'",
            parts.len(),
            components.len(),
            components.iter().map(|c| c.code.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    let mut out = Vec::new();
    for (c, p) in components.iter().zip(&parts) {
        out.push(match c.kind {
            ParamKind::Token => token::parse(p)?,
            ParamKind::String => string::parse(p, super::StringMatch::Prefix),
            ParamKind::Date => date::parse(p)?,
            ParamKind::Number => number::parse(p)?,
            ParamKind::Quantity => number::parse_quantity(p)?,
            ParamKind::Reference => reference::parse(model, p, None)?,
            ParamKind::Uri => Predicate::Uri { value: super::unescape(p), mode: super::UriMatch::Exact },
            ParamKind::Composite(_) => return Err("nested composite".into()),
        });
    }
    Ok(Predicate::Composite(out))
}
