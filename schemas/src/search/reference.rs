//! Reference values: `id`, `Type/id`, `Type/id/_history/v` (version ignored), or an
//! absolute URL; a `:Type` modifier names the type.

use super::{Predicate, unescape};
use crate::Model;
use crate::shape::reference_target;
use crate::validate::is_valid_id;

pub(super) fn parse(model: &Model, v: &str, type_modifier: Option<&str>) -> Result<Predicate, String> {
    let v = unescape(v);
    if v.contains("://") || v.starts_with("urn:") {
        let target = reference_target(&v);
        return Ok(Predicate::Reference {
            target_type: type_modifier.map(str::to_string).or(target.map(|t| t.0.to_string())),
            id: target.map(|t| t.1.to_string()),
            url: Some(v.clone()),
        });
    }
    if let Some((t, id)) = reference_target(&v) {
        if !model.is_resource_type(t) {
            return Err(format!("'{t}' in '{v}' is not a resource type"));
        }
        if let Some(m) = type_modifier
            && m != t
        {
            return Err(format!("':{m}' contradicts '{v}'"));
        }
        return Ok(Predicate::Reference { target_type: Some(t.to_string()), id: Some(id.to_string()), url: None });
    }
    if !is_valid_id(&v) {
        return Err(format!("'{v}' is not an id, Type/id or absolute URL"));
    }
    Ok(Predicate::Reference { target_type: type_modifier.map(str::to_string), id: Some(v), url: None })
}
