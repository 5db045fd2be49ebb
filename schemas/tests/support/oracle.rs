//! A test oracle for search parameters with plain-path expressions (`Type.a.b | Type.c`):
//! the values found by walking the JSON, as comparable text per parameter type. Shared by
//! `schemas/tests/search_index.rs` and the root crate's search tests; it uses the model
//! only to know which JSON names an element may have.

#![allow(dead_code)]

use fhirlake_schemas::model::TypeRef;
use fhirlake_schemas::{Json, Model};

/// The branches of `expression` as element paths on `rt` (type prefix removed), or `None`
/// when a branch is not a plain path. Branches for other types are dropped.
pub fn plain_path(model: &Model, rt: &str, expression: &str) -> Option<Vec<Vec<String>>> {
    let mut out = Vec::new();
    for b in expression.split('|').map(str::trim) {
        if !b.split('.').all(|seg| !seg.is_empty() && seg.chars().all(|c| c.is_ascii_alphanumeric())) {
            return None;
        }
        let mut path: Vec<String> = b.split('.').map(str::to_string).collect();
        if path[0].starts_with(|c: char| c.is_ascii_uppercase()) {
            if !model.is_subtype(rt, &path[0]) {
                continue;
            }
            path.remove(0);
        }
        out.push(path);
    }
    Some(out)
}

/// Values of a plain dotted path, found by walking the JSON. The model says only which
/// JSON names an element may have (`value` -> `valueQuantity`, ...).
pub fn walk<'a>(node: &'a Json, path: &[&str], structure: Option<&str>, out: &mut Vec<&'a Json>) {
    let Some((head, rest)) = path.split_first() else {
        match node {
            Json::Array(items) => out.extend(items.iter()),
            other => out.push(other),
        }
        return;
    };
    let model = Model::r4().unwrap();
    let element =
        structure.and_then(|s| model.structure_of_type(s)).and_then(|s| s.elements.iter().find(|e| e.name == *head));
    match node {
        Json::Array(items) => items.iter().for_each(|i| walk(i, path, structure, out)),
        Json::Object(members) => {
            for (k, v) in members {
                let variant = match element {
                    Some(e) => match e.variants.iter().find(|(name, _)| name == k) {
                        Some((_, t)) => Some(t),
                        None => continue,
                    },
                    None if k == head => None,
                    None => continue,
                };
                let next = match variant {
                    Some(TypeRef::Struct(key)) => Some(key.as_str()),
                    Some(TypeRef::Extension) => Some("Extension"),
                    _ => None,
                };
                walk(v, rest, next, out);
            }
        }
        _ => {}
    }
}

/// What the oracle can say about a value of each parameter type, as comparable text.
pub fn oracle_keys(param_type: &str, v: &Json) -> Vec<String> {
    let s = |j: Option<&Json>| j.and_then(Json::as_str).map(str::to_string);
    match (param_type, v) {
        ("token", Json::String(x)) => vec![x.clone()],
        ("token", Json::Bool(b)) => vec![b.to_string()],
        ("token", Json::Object(_)) => {
            let mut out = Vec::new();
            if let Some(Json::Array(codings)) = v.get("coding") {
                out.extend(codings.iter().filter_map(|c| s(c.get("code"))));
            }
            out.extend(s(v.get("code")).into_iter().chain(s(v.get("value"))));
            out
        }
        ("string" | "uri", Json::String(x)) => vec![x.clone()],
        ("string", Json::Object(m)) => m
            .iter()
            .filter(|(k, _)| {
                [
                    "text",
                    "family",
                    "given",
                    "prefix",
                    "suffix",
                    "line",
                    "city",
                    "district",
                    "state",
                    "postalCode",
                    "country",
                ]
                .contains(&k.as_str())
            })
            .flat_map(|(_, v)| match v {
                Json::Array(a) => a.iter().filter_map(Json::as_str).map(str::to_string).collect(),
                Json::String(x) => vec![x.clone()],
                _ => vec![],
            })
            .collect(),
        ("reference", Json::Object(_)) => s(v.get("reference")).into_iter().collect(),
        ("reference", Json::String(x)) => vec![x.clone()],
        _ => vec![],
    }
}
