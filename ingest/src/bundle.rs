//! Bundle processing: turning a transaction, batch or collection Bundle into writes.
//!
//! Owns: the one Bundle engine shared by `POST [base]` and `fhirlake import`. For a
//! transaction or batch it reads each entry's `request` (POST assigns a new server id,
//! PUT `Type/id` keeps the id, DELETE `Type/id`), maps every entry's `fullUrl` to
//! `Type/id`, rewrites references to those fullUrls (`urn:uuid:...`) inside every entry,
//! then validates each entry's resource on its own so errors name the entry. Other
//! Bundle types (collection, searchset, ...) are taken like NDJSON: each resource keeps
//! its id. Must not: write anything (the caller submits the ops) or do I/O.

use std::collections::HashMap;
use std::sync::Arc;

use fhirlake_schemas::validate::{Issue, IssueCode, ValidationOptions, is_valid_id, validate_resource};
use fhirlake_schemas::{Json, Model};

use crate::writer::{Action, Precondition, WriteOp};

/// How the Bundle is processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    /// All entries or none.
    Transaction,
    /// Each entry on its own.
    Batch,
    /// Any other type: the resources are stored as they are (ids kept).
    Collection,
}

/// What was planned for one entry.
#[derive(Debug, Clone)]
pub struct EntryPlan {
    /// Index of the entry in the Bundle.
    pub index: usize,
    /// HTTP method of the entry (`POST` for collection entries without an id).
    pub method: String,
    /// The write, or why the entry is invalid.
    pub op: Result<WriteOp, Vec<Issue>>,
}

/// The planned Bundle.
#[derive(Debug, Clone)]
pub struct BundlePlan {
    /// How to process it.
    pub kind: BundleKind,
    /// One plan per entry, in Bundle order.
    pub entries: Vec<EntryPlan>,
}

/// (method, target type and id, problem) of one entry after the first pass.
type Planned = (String, Option<(String, String)>, Option<Vec<Issue>>);

/// Plans `bundle` (a JSON object with `resourceType` `Bundle`). `new_id` makes server ids.
pub fn plan_bundle(
    model: &Model,
    bundle: &Json,
    options: &ValidationOptions,
    new_id: &mut dyn FnMut() -> String,
) -> Result<BundlePlan, Vec<Issue>> {
    let err =
        |loc: &str, msg: &str| vec![Issue { code: IssueCode::Structure, location: loc.into(), message: msg.into() }];
    if bundle.get("resourceType").and_then(Json::as_str) != Some("Bundle") {
        return Err(err("", "expected a Bundle"));
    }
    let kind = match bundle.get("type").and_then(Json::as_str) {
        Some("transaction") => BundleKind::Transaction,
        Some("batch") => BundleKind::Batch,
        Some(_) => BundleKind::Collection,
        None => return Err(err("Bundle.type", "Bundle.type is required")),
    };
    let entries: &[Json] = match bundle.get("entry") {
        None => &[],
        Some(Json::Array(a)) => a,
        Some(_) => return Err(err("Bundle.entry", "Bundle.entry must be an array")),
    };
    // Pass 1: methods, ids, and the fullUrl -> Type/id map.
    let mut planned: Vec<Planned> = Vec::with_capacity(entries.len());
    let mut refs: HashMap<String, String> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        let loc = format!("Bundle.entry[{i}]");
        let resource = e.get("resource");
        let rt = resource.and_then(|r| r.get("resourceType")).and_then(Json::as_str);
        let (method, target) = if kind == BundleKind::Collection {
            let id = resource.and_then(|r| r.get("id")).and_then(Json::as_str).map(str::to_string);
            let method = if id.is_some() { "PUT" } else { "POST" };
            (method.to_string(), rt.map(|rt| (rt.to_string(), id.unwrap_or_else(&mut *new_id))))
        } else {
            let method =
                e.get("request").and_then(|r| r.get("method")).and_then(Json::as_str).unwrap_or("").to_string();
            let url = e.get("request").and_then(|r| r.get("url")).and_then(Json::as_str).unwrap_or("");
            let path = url.split('?').next().unwrap_or("");
            let target = match method.as_str() {
                "POST" => rt.map(|rt| (rt.to_string(), new_id())),
                "PUT" | "DELETE" => path
                    .split_once('/')
                    .filter(|(t, id)| model.is_resource_type(t) && is_valid_id(id))
                    .map(|(t, id)| (t.to_string(), id.to_string())),
                _ => None,
            };
            (method, target)
        };
        let problem = match (&method[..], &target) {
            ("POST" | "PUT", _) if resource.is_none() => {
                Some(err(&format!("{loc}.resource"), "the entry has no resource"))
            }
            ("POST" | "PUT" | "DELETE", None) => Some(err(
                &format!("{loc}.request.url"),
                "request.url must be 'Type' (POST) or 'Type/id' (PUT, DELETE) with an R4 type and a valid id",
            )),
            ("POST" | "PUT" | "DELETE", Some(_)) => None,
            (m, _) => Some(err(
                &format!("{loc}.request.method"),
                &format!("request method '{m}' is not supported in a Bundle here (POST, PUT, DELETE)"),
            )),
        };
        if let (Some(full_url), Some((t, id))) = (e.get("fullUrl").and_then(Json::as_str), &target) {
            refs.insert(full_url.to_string(), format!("{t}/{id}"));
        }
        planned.push((method, target, problem));
    }
    // Pass 2: rewrite references, validate, build ops.
    let mut out = Vec::with_capacity(entries.len());
    for (i, (e, (method, target, problem))) in entries.iter().zip(planned).enumerate() {
        let if_match = e.get("request").and_then(|r| r.get("ifMatch")).and_then(Json::as_str);
        let precondition = match if_match.map(etag_version) {
            None => Ok(Precondition::None),
            Some(Some(v)) => Ok(Precondition::IfMatch(v)),
            Some(None) => Err(err(&format!("Bundle.entry[{i}].request.ifMatch"), "ifMatch must be W/\"n\"")),
        };
        let (problem, precondition) = match (problem, precondition) {
            (Some(p), _) | (None, Err(p)) => (Some(p), Precondition::None),
            (None, Ok(pc)) => (None, pc),
        };
        let op = match (problem, target) {
            (Some(p), _) => Err(p),
            (None, None) => Err(err(&format!("Bundle.entry[{i}]"), "the entry has no target")),
            (None, Some((rt, id))) if method == "DELETE" => {
                Ok(WriteOp { resource_type: rt, id, action: Action::Delete, precondition })
            }
            (None, Some((rt, id))) => {
                let mut r = e.get("resource").cloned().unwrap_or(Json::Null);
                rewrite_references(&mut r, &refs);
                r.set("id", Json::String(id.clone()));
                match validate_resource(model, &r, options) {
                    Ok(actual) if actual != rt => Err(err(
                        &format!("Bundle.entry[{i}].resource"),
                        &format!("resource type {actual} does not match request.url type {rt}"),
                    )),
                    Ok(_) => Ok(WriteOp { resource_type: rt, id, action: Action::Put(Arc::new(r)), precondition }),
                    Err(issues) => Err(issues
                        .into_iter()
                        .map(|mut is| {
                            is.location = format!("Bundle.entry[{i}].resource.{}", is.location);
                            is
                        })
                        .collect()),
                }
            }
        };
        out.push(EntryPlan { index: i, method, op });
    }
    Ok(BundlePlan { kind, entries: out })
}

/// The version in an ETag-style value: `W/"3"`, `"3"` or `3`.
pub fn etag_version(v: &str) -> Option<i64> {
    v.strip_prefix("W/").unwrap_or(v).trim_matches('"').parse().ok()
}

/// Replaces every `reference` whose value is a key of `refs`.
pub fn rewrite_references(v: &mut Json, refs: &HashMap<String, String>) {
    match v {
        Json::Object(members) => {
            for (k, val) in members.iter_mut() {
                if k == "reference"
                    && let Json::String(s) = val
                    && let Some(target) = refs.get(s.as_str())
                {
                    *s = target.clone();
                    continue;
                }
                rewrite_references(val, refs);
            }
        }
        Json::Array(items) => items.iter_mut().for_each(|i| rewrite_references(i, refs)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirlake_schemas::json::ParseLimits;

    #[test]
    fn transaction_posts_get_ids_and_references_are_rewritten() {
        let b = r#"{"resourceType":"Bundle","type":"transaction","entry":[
          {"fullUrl":"urn:uuid:11111111-1111-1111-1111-111111111111","resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient"}},
          {"fullUrl":"urn:uuid:22222222-2222-2222-2222-222222222222","resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},
            "subject":{"reference":"urn:uuid:11111111-1111-1111-1111-111111111111"}},"request":{"method":"POST","url":"Observation"}},
          {"request":{"method":"DELETE","url":"Patient/old"}}]}"#;
        let json = Json::parse(b.as_bytes(), ParseLimits::default()).unwrap();
        let mut n = 0;
        let plan = plan_bundle(Model::r4().unwrap(), &json, &ValidationOptions::default(), &mut || {
            n += 1;
            format!("id{n}")
        })
        .unwrap();
        assert_eq!(plan.kind, BundleKind::Transaction);
        let ops: Vec<_> = plan.entries.iter().map(|e| e.op.clone().unwrap()).collect();
        assert_eq!((ops[0].resource_type.as_str(), ops[0].id.as_str()), ("Patient", "id1"));
        let Action::Put(obs) = &ops[1].action else { panic!() };
        assert_eq!(obs.get("subject").unwrap().get("reference").unwrap().as_str(), Some("Patient/id1"));
        assert!(matches!(ops[2].action, Action::Delete));
    }

    #[test]
    fn unknown_types_and_bad_ids_in_request_urls_are_rejected() {
        let b = r#"{"resourceType":"Bundle","type":"batch","entry":[
          {"request":{"method":"DELETE","url":"Foo/1"}},
          {"request":{"method":"DELETE","url":"Patient/a/b"}},
          {"request":{"method":"DELETE","url":"Patient/ok"}}]}"#;
        let json = Json::parse(b.as_bytes(), ParseLimits::default()).unwrap();
        let plan = plan_bundle(Model::r4().unwrap(), &json, &ValidationOptions::default(), &mut || "a".into()).unwrap();
        for e in &plan.entries[..2] {
            let issues = e.op.clone().unwrap_err();
            assert!(issues[0].location.ends_with("request.url"), "{issues:?}");
        }
        assert!(plan.entries[2].op.is_ok());
    }

    #[test]
    fn invalid_entries_are_located() {
        let b = r#"{"resourceType":"Bundle","type":"batch","entry":[
          {"resource":{"resourceType":"Patient","gender":"x"},"request":{"method":"POST","url":"Patient"}}]}"#;
        let json = Json::parse(b.as_bytes(), ParseLimits::default()).unwrap();
        let plan = plan_bundle(Model::r4().unwrap(), &json, &ValidationOptions::default(), &mut || "a".into()).unwrap();
        let issues = plan.entries[0].op.clone().unwrap_err();
        assert_eq!(issues[0].location, "Bundle.entry[0].resource.Patient.gender");
    }
}
