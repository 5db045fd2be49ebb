//! Bundle processing: turning a transaction, batch or collection Bundle into writes.
//!
//! Owns: the one Bundle engine shared by `POST [base]` and `fhirlake import`. For a
//! transaction or batch it reads each entry's `request`: POST (new server id, or with
//! `ifNoneExist` the existing match), PUT `Type/id` or conditional `Type?criteria`, PATCH
//! (JSON Patch in a `Binary`, or FHIRPath Patch `Parameters`), DELETE `Type/id` or
//! `Type?criteria`, and GET (performed by the caller after the writes). It maps every
//! entry's `fullUrl` to `Type/id`, rewrites references to those fullUrls (`urn:uuid:...`)
//! and conditional references (`Patient?identifier=x|y`) inside every entry, refuses `urn:`
//! references that name no entry, then validates each entry's resource on its own so
//! errors name the entry. Other Bundle types (collection, searchset, ...) are taken like
//! NDJSON: each resource keeps its id.
//!
//! Searches and current versions are the caller's: [`needs`] lists them, the caller
//! resolves them into a [`Resolved`], and [`plan_bundle`] decides with it. Must not: write
//! anything (the caller submits the ops) or do I/O.

use std::collections::{BTreeSet, HashMap};
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

/// A resource found by a search or read the caller resolved.
#[derive(Debug, Clone)]
pub struct Found {
    /// Its id.
    pub id: String,
    /// Its current version.
    pub version: i64,
    /// Its served JSON.
    pub raw: Arc<str>,
}

/// What the caller looked up for [`plan_bundle`].
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// False when nothing can be looked up (`fhirlake import`): conditional entries and
    /// patches are then refused.
    pub available: bool,
    /// Matches of each search named by [`needs`] (`Type?query`).
    pub searches: HashMap<String, Vec<Found>>,
    /// The current version of each resource named by [`needs`] (`None`: absent or deleted).
    pub reads: HashMap<(String, String), Option<Found>>,
    /// Most matches a conditional DELETE may delete (more: 412). 0 counts as 1.
    pub delete_max: usize,
}

/// The searches and reads a Bundle needs before it can be planned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// `Type?query` criteria: `ifNoneExist`, conditional PUT/PATCH/DELETE, conditional references.
    pub searches: BTreeSet<String>,
    /// Resources whose current version is needed (PATCH `Type/id`).
    pub reads: BTreeSet<(String, String)>,
}

/// Why an entry cannot be carried out.
#[derive(Debug, Clone)]
pub enum EntryError {
    /// The entry or its resource is invalid (422).
    Invalid(Vec<Issue>),
    /// A condition does not hold: a search matched several resources, a conditional
    /// reference matched none or several, `ifMatch` failed (412).
    PreconditionFailed(String),
    /// The entry names a resource that does not exist (404; PATCH of an absent resource).
    NotFound(String),
}

impl EntryError {
    /// The HTTP status of the error.
    pub fn status(&self) -> u16 {
        match self {
            EntryError::Invalid(_) => 422,
            EntryError::PreconditionFailed(_) => 412,
            EntryError::NotFound(_) => 404,
        }
    }

    /// The error as issues (located when possible).
    pub fn issues(&self) -> Vec<Issue> {
        match self {
            EntryError::Invalid(i) => i.clone(),
            EntryError::PreconditionFailed(m) | EntryError::NotFound(m) => {
                vec![Issue { code: IssueCode::Invalid, location: String::new(), message: m.clone() }]
            }
        }
    }
}

/// What one entry does.
#[derive(Debug, Clone)]
pub enum EntryAction {
    /// Writes: usually one; none for a conditional delete that matched nothing; several for
    /// a conditional delete of several matches.
    Write(Vec<WriteOp>),
    /// A conditional create (`ifNoneExist`) found this resource: answered 200 with it.
    Existing {
        /// Resource type.
        resource_type: String,
        /// The match.
        found: Found,
    },
    /// A GET entry: the relative URL, read by the caller after the writes.
    Read(String),
}

/// What was planned for one entry.
#[derive(Debug, Clone)]
pub struct EntryPlan {
    /// Index of the entry in the Bundle.
    pub index: usize,
    /// HTTP method of the entry (`POST` for collection entries without an id).
    pub method: String,
    /// What to do, or why the entry cannot be done.
    pub action: Result<EntryAction, EntryError>,
    /// True when the entry's `If-Match` was added by fhirlake (a PATCH applied to the
    /// version read): its failure means a concurrent write (409), not a client's stale tag.
    pub implicit_if_match: bool,
}

impl EntryPlan {
    /// FHIR's processing order within a transaction: DELETE, POST, PUT/PATCH, GET.
    pub fn processing_rank(&self) -> u8 {
        match self.method.as_str() {
            "DELETE" => 0,
            "POST" => 1,
            "PUT" | "PATCH" => 2,
            _ => 3,
        }
    }
}

/// The planned Bundle.
#[derive(Debug, Clone)]
pub struct BundlePlan {
    /// How to process it.
    pub kind: BundleKind,
    /// One plan per entry, in Bundle order.
    pub entries: Vec<EntryPlan>,
}

/// Where an entry's request points.
#[derive(Debug, Clone)]
enum Target {
    /// `Type/id` (or a new id for POST).
    Id(String, String),
    /// `Type?query`.
    Search(String, String),
}

/// The kind and entries of a Bundle, or why it is not one.
fn kind_and_entries(bundle: &Json) -> Result<(BundleKind, &[Json]), Vec<Issue>> {
    if bundle.get("resourceType").and_then(Json::as_str) != Some("Bundle") {
        return Err(structure("", "expected a Bundle"));
    }
    let kind = match bundle.get("type").and_then(Json::as_str) {
        Some("transaction") => BundleKind::Transaction,
        Some("batch") => BundleKind::Batch,
        Some(_) => BundleKind::Collection,
        None => return Err(structure("Bundle.type", "Bundle.type is required")),
    };
    let entries: &[Json] = match bundle.get("entry") {
        None => &[],
        Some(Json::Array(a)) => a,
        Some(_) => return Err(structure("Bundle.entry", "Bundle.entry must be an array")),
    };
    Ok((kind, entries))
}

fn structure(loc: &str, msg: &str) -> Vec<Issue> {
    vec![Issue { code: IssueCode::Structure, location: loc.into(), message: msg.into() }]
}

/// The number of entries (for the entry limit, before anything else is done).
pub fn entry_count(bundle: &Json) -> usize {
    bundle.get("entry").and_then(Json::as_array).map_or(0, <[Json]>::len)
}

/// The entry's request method and URL (transaction and batch).
fn request(e: &Json) -> (&str, &str) {
    let r = e.get("request");
    let method = r.and_then(|r| r.get("method")).and_then(Json::as_str).unwrap_or("");
    let url = r.and_then(|r| r.get("url")).and_then(Json::as_str).unwrap_or("");
    (method, url)
}

/// Parses `Type/id`, `Type?query` (and a full URL's tail is not accepted: entries use
/// relative URLs).
fn parse_target(model: &Model, url: &str) -> Option<Target> {
    if let Some((t, q)) = url.split_once('?') {
        return (model.is_resource_type(t) && !q.is_empty()).then(|| Target::Search(t.to_string(), q.to_string()));
    }
    let (t, id) = url.split_once('/')?;
    (model.is_resource_type(t) && is_valid_id(id)).then(|| Target::Id(t.to_string(), id.to_string()))
}

/// A conditional reference: `Type?query` with an R4 type.
fn conditional_reference(model: &Model, r: &str) -> Option<String> {
    let (t, q) = r.split_once('?')?;
    (model.is_resource_type(t) && !q.is_empty() && !t.contains('/')).then(|| r.to_string())
}

fn collect_references<'a>(v: &'a Json, out: &mut Vec<&'a str>) {
    match v {
        Json::Object(members) => {
            for (k, val) in members {
                match (k.as_str(), val) {
                    ("reference", Json::String(s)) => out.push(s),
                    _ => collect_references(val, out),
                }
            }
        }
        Json::Array(items) => items.iter().for_each(|i| collect_references(i, out)),
        _ => {}
    }
}

/// The searches and reads `bundle` needs (empty for collections).
pub fn needs(model: &Model, bundle: &Json) -> Needs {
    let mut n = Needs::default();
    let Ok((kind, entries)) = kind_and_entries(bundle) else { return n };
    if kind == BundleKind::Collection {
        return n;
    }
    for e in entries {
        let (method, url) = request(e);
        match (method, parse_target(model, url)) {
            ("POST", _) => {
                let rt = e.get("resource").and_then(|r| r.get("resourceType")).and_then(Json::as_str);
                let ine = e.get("request").and_then(|r| r.get("ifNoneExist")).and_then(Json::as_str);
                if let (Some(rt), Some(q)) = (rt, ine) {
                    n.searches.insert(format!("{rt}?{}", q.trim_start_matches('?')));
                }
            }
            ("PUT" | "PATCH" | "DELETE", Some(Target::Search(t, q))) => {
                n.searches.insert(format!("{t}?{q}"));
            }
            ("PATCH", Some(Target::Id(t, id))) => {
                n.reads.insert((t, id));
            }
            _ => {}
        }
        if matches!(method, "POST" | "PUT")
            && let Some(r) = e.get("resource")
        {
            let mut refs = Vec::new();
            collect_references(r, &mut refs);
            n.searches.extend(refs.into_iter().filter_map(|r| conditional_reference(model, r)));
        }
    }
    n
}

/// (method, target type and id, what the entry resolved to) after the first pass.
struct Pass1 {
    method: String,
    target: Option<(String, String)>,
    outcome: Result<Resolution, EntryError>,
}

/// How an entry resolved before its resource is looked at.
enum Resolution {
    /// Write the entry's resource (POST, PUT) under this id, with this precondition.
    Put(Precondition),
    /// Apply the entry's patch to this version.
    Patch(Found),
    /// Delete these ids.
    Delete(Vec<String>),
    /// `ifNoneExist` matched.
    Existing(Found),
    /// GET.
    Read(String),
}

/// Plans `bundle` (a JSON object with `resourceType` `Bundle`) with what the caller
/// `resolved` for [`needs`]. `new_id` makes server ids.
pub fn plan_bundle(
    model: &'static Model,
    bundle: &Json,
    options: &ValidationOptions,
    new_id: &mut dyn FnMut() -> String,
    resolved: &Resolved,
) -> Result<BundlePlan, Vec<Issue>> {
    let (kind, entries) = kind_and_entries(bundle)?;
    // Pass 1: methods, ids (resolving conditions), and the fullUrl -> Type/id map.
    let mut planned: Vec<Pass1> = Vec::with_capacity(entries.len());
    let mut refs: HashMap<String, String> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        let p = if kind == BundleKind::Collection {
            collection_entry(e, new_id)
        } else {
            request_entry(model, i, e, new_id, resolved)
        };
        if let (Some(full_url), Some((t, id))) = (e.get("fullUrl").and_then(Json::as_str), &p.target) {
            refs.insert(full_url.to_string(), format!("{t}/{id}"));
        }
        planned.push(p);
    }
    // Conditional references resolve to their single match.
    let mut conditional_refs: HashMap<String, Result<String, String>> = HashMap::new();
    if kind != BundleKind::Collection {
        for (q, found) in &resolved.searches {
            let t = q.split_once('?').map_or("", |(t, _)| t);
            let r = match found.as_slice() {
                [one] => Ok(format!("{t}/{}", one.id)),
                [] => Err(format!("the conditional reference '{q}' matches no resource")),
                many => Err(format!("the conditional reference '{q}' matches {} resources", many.len())),
            };
            conditional_refs.insert(q.clone(), r);
        }
    }
    // Pass 2: rewrite references, validate, build ops.
    let mut out = Vec::with_capacity(entries.len());
    for (i, (e, p)) in entries.iter().zip(planned).enumerate() {
        let loc = format!("Bundle.entry[{i}]");
        let if_match = e.get("request").and_then(|r| r.get("ifMatch")).and_then(Json::as_str);
        let explicit = match if_match.map(etag_version) {
            None => Ok(None),
            Some(Some(v)) => Ok(Some(v)),
            Some(None) => {
                Err(EntryError::Invalid(structure(&format!("{loc}.request.ifMatch"), "ifMatch must be W/\"n\"")))
            }
        };
        let mut implicit_if_match = false;
        let action = explicit.and_then(|explicit| {
            let resolution = p.outcome?;
            let precondition = |pc: Precondition| explicit.map_or(pc, Precondition::IfMatch);
            match (resolution, p.target) {
                (Resolution::Read(url), _) => Ok(EntryAction::Read(url)),
                (Resolution::Existing(found), Some((rt, _))) => Ok(EntryAction::Existing { resource_type: rt, found }),
                (Resolution::Delete(ids), Some((rt, _))) => Ok(EntryAction::Write(
                    ids.into_iter()
                        .map(|id| WriteOp {
                            resource_type: rt.clone(),
                            id,
                            action: Action::Delete,
                            precondition: precondition(Precondition::None),
                        })
                        .collect(),
                )),
                (Resolution::Put(pc), Some((rt, id))) => {
                    let mut r = e.get("resource").cloned().unwrap_or(Json::Null);
                    rewrite_references(&mut r, &refs);
                    resolve_references(&mut r, &conditional_refs, &loc)?;
                    r.set("id", Json::String(id.clone()));
                    let op = checked_put(model, options, &loc, &rt, &id, r, precondition(pc))?;
                    Ok(EntryAction::Write(vec![op]))
                }
                (Resolution::Patch(found), Some((rt, id))) => {
                    implicit_if_match = explicit.is_none();
                    let current = Json::parse(found.raw.as_bytes(), fhirlake_schemas::json::ParseLimits::STORED)
                        .map_err(|e| EntryError::Invalid(structure(&loc, &format!("stored JSON unreadable: {e}"))))?;
                    let patch = e.get("resource").ok_or_else(|| {
                        EntryError::Invalid(structure(
                            &format!("{loc}.resource"),
                            "a PATCH entry needs the patch as its resource",
                        ))
                    })?;
                    let mut patched =
                        fhirlake_schemas::patch::apply_patch_resource(model, &current, patch).map_err(|e| {
                            EntryError::Invalid(vec![Issue {
                                code: IssueCode::Invalid,
                                location: format!("{loc}.resource"),
                                message: e.0,
                            }])
                        })?;
                    if patched.get("id").and_then(Json::as_str) != Some(id.as_str()) {
                        return Err(EntryError::Invalid(structure(
                            &format!("{loc}.resource"),
                            "a patch may not change the id",
                        )));
                    }
                    rewrite_references(&mut patched, &refs);
                    let op = checked_put(
                        model,
                        options,
                        &loc,
                        &rt,
                        &id,
                        patched,
                        Precondition::IfMatch(explicit.unwrap_or(found.version)),
                    )?;
                    Ok(EntryAction::Write(vec![op]))
                }
                (_, None) => Err(EntryError::Invalid(structure(&loc, "the entry has no target"))),
            }
        });
        out.push(EntryPlan { index: i, method: p.method, action, implicit_if_match });
    }
    Ok(BundlePlan { kind, entries: out })
}

fn collection_entry(e: &Json, new_id: &mut dyn FnMut() -> String) -> Pass1 {
    let resource = e.get("resource");
    let rt = resource.and_then(|r| r.get("resourceType")).and_then(Json::as_str);
    let id = resource.and_then(|r| r.get("id")).and_then(Json::as_str).map(str::to_string);
    let method = if id.is_some() { "PUT" } else { "POST" };
    let target = rt.map(|rt| (rt.to_string(), id.unwrap_or_else(&mut *new_id)));
    let outcome = match (resource, &target) {
        (None, _) | (_, None) => Err(EntryError::Invalid(structure("", "the entry has no resource"))),
        _ => Ok(Resolution::Put(Precondition::None)),
    };
    Pass1 { method: method.to_string(), target, outcome }
}

fn request_entry(model: &Model, i: usize, e: &Json, new_id: &mut dyn FnMut() -> String, resolved: &Resolved) -> Pass1 {
    let loc = format!("Bundle.entry[{i}]");
    let (method, url) = request(e);
    let resource = e.get("resource");
    let rt = resource.and_then(|r| r.get("resourceType")).and_then(Json::as_str);
    let bad_url = |what: &str| {
        EntryError::Invalid(structure(&format!("{loc}.request.url"), &format!("request.url must be {what}")))
    };
    let unresolved = || {
        EntryError::Invalid(structure(
            &format!("{loc}.request"),
            "conditional requests and PATCH are resolved by the server: POST this Bundle to [base]",
        ))
    };
    let search = |q: &str| -> Result<&Vec<Found>, EntryError> {
        if !resolved.available {
            return Err(unresolved());
        }
        resolved.searches.get(q).ok_or_else(|| EntryError::Invalid(structure(&loc, &format!("'{q}' was not searched"))))
    };
    let several = |what: &str, criteria: &str, n: usize| {
        (None, Err(EntryError::PreconditionFailed(format!("{loc}: {what} '{criteria}' matches {n} resources"))))
    };
    let (target, outcome) = match method {
        "POST" | "PUT" if resource.is_none() => {
            (None, Err(EntryError::Invalid(structure(&format!("{loc}.resource"), "the entry has no resource"))))
        }
        "POST" => {
            let ine = e.get("request").and_then(|r| r.get("ifNoneExist")).and_then(Json::as_str);
            match (rt, ine) {
                (None, _) => (None, Err(EntryError::Invalid(structure(&format!("{loc}.resource"), "no resourceType")))),
                (Some(rt), None) => (Some((rt.to_string(), new_id())), Ok(Resolution::Put(Precondition::Absent))),
                (Some(rt), Some(q)) => {
                    let key = format!("{rt}?{}", q.trim_start_matches('?'));
                    match search(&key).map(Vec::as_slice) {
                        Err(e) => (None, Err(e)),
                        Ok([]) => (Some((rt.to_string(), new_id())), Ok(Resolution::Put(Precondition::Absent))),
                        Ok([one]) => (Some((rt.to_string(), one.id.clone())), Ok(Resolution::Existing(one.clone()))),
                        Ok(many) => several("ifNoneExist", q, many.len()),
                    }
                }
            }
        }
        "PUT" => match parse_target(model, url) {
            Some(Target::Id(t, id)) => (Some((t, id)), Ok(Resolution::Put(Precondition::None))),
            Some(Target::Search(t, q)) => {
                let body_id = resource.and_then(|r| r.get("id")).and_then(Json::as_str);
                match search(&format!("{t}?{q}")).map(Vec::as_slice) {
                    Err(e) => (None, Err(e)),
                    Ok([]) => {
                        let id = body_id.filter(|id| is_valid_id(id)).map_or_else(&mut *new_id, str::to_string);
                        (Some((t, id)), Ok(Resolution::Put(Precondition::Absent)))
                    }
                    Ok([one]) if body_id.is_some_and(|b| b != one.id) => (
                        None,
                        Err(EntryError::Invalid(structure(
                            &format!("{loc}.resource.id"),
                            &format!("the resource's id differs from the one match ({t}/{})", one.id),
                        ))),
                    ),
                    Ok([one]) => (Some((t, one.id.clone())), Ok(Resolution::Put(Precondition::None))),
                    Ok(many) => several("conditional update", url, many.len()),
                }
            }
            None => (None, Err(bad_url("'Type/id' or 'Type?criteria' with an R4 type and a valid id"))),
        },
        "PATCH" => match parse_target(model, url) {
            Some(Target::Id(t, id)) if !resolved.available => (Some((t, id)), Err(unresolved())),
            Some(Target::Id(t, id)) => match resolved.reads.get(&(t.clone(), id.clone())) {
                Some(Some(found)) => (Some((t, id)), Ok(Resolution::Patch(found.clone()))),
                _ => (None, Err(EntryError::NotFound(format!("{loc}: {t}/{id} does not exist")))),
            },
            Some(Target::Search(t, q)) => match search(&format!("{t}?{q}")).map(Vec::as_slice) {
                Err(e) => (None, Err(e)),
                Ok([one]) => (Some((t, one.id.clone())), Ok(Resolution::Patch(one.clone()))),
                Ok([]) => {
                    (None, Err(EntryError::NotFound(format!("{loc}: conditional patch '{url}' matches nothing"))))
                }
                Ok(many) => several("conditional patch", url, many.len()),
            },
            None => (None, Err(bad_url("'Type/id' or 'Type?criteria'"))),
        },
        "DELETE" => match parse_target(model, url) {
            Some(Target::Id(t, id)) => (Some((t, id.clone())), Ok(Resolution::Delete(vec![id]))),
            Some(Target::Search(t, q)) => match search(&format!("{t}?{q}")) {
                Err(e) => (None, Err(e)),
                Ok(found) if found.len() > resolved.delete_max.max(1) => (
                    None,
                    Err(EntryError::PreconditionFailed(format!(
                        "{loc}: conditional delete '{url}' matches more than {} resource(s)",
                        resolved.delete_max.max(1)
                    ))),
                ),
                Ok(found) => {
                    let first = found.first().map_or_else(String::new, |f| f.id.clone());
                    (Some((t, first)), Ok(Resolution::Delete(found.iter().map(|f| f.id.clone()).collect())))
                }
            },
            None => (None, Err(bad_url("'Type/id' or 'Type?criteria' with an R4 type and a valid id"))),
        },
        "GET" | "HEAD" if url.is_empty() => (None, Err(bad_url("a relative URL to read"))),
        "GET" | "HEAD" => (None, Ok(Resolution::Read(url.to_string()))),
        m => (
            None,
            Err(EntryError::Invalid(structure(
                &format!("{loc}.request.method"),
                &format!("request method '{m}' is not supported in a Bundle (GET, POST, PUT, PATCH, DELETE)"),
            ))),
        ),
    };
    Pass1 { method: method.to_string(), target, outcome }
}

/// Sets `id`, checks the reference leftovers and validates: the op, or located issues.
fn checked_put(
    model: &Model,
    options: &ValidationOptions,
    loc: &str,
    rt: &str,
    id: &str,
    mut r: Json,
    precondition: Precondition,
) -> Result<WriteOp, EntryError> {
    r.set("id", Json::String(id.to_string()));
    move_id_first(&mut r);
    let mut leftovers = Vec::new();
    collect_references(&r, &mut leftovers);
    if let Some(u) = leftovers.iter().find(|r| r.starts_with("urn:uuid:") || r.starts_with("urn:oid:")) {
        return Err(EntryError::Invalid(vec![Issue {
            code: IssueCode::Invalid,
            location: format!("{loc}.resource"),
            message: format!("the reference '{u}' names no entry of this Bundle"),
        }]));
    }
    match validate_resource(model, &r, options) {
        Ok(actual) if actual != rt => Err(EntryError::Invalid(structure(
            &format!("{loc}.resource"),
            &format!("resource type {actual} does not match request.url type {rt}"),
        ))),
        Ok(_) => Ok(WriteOp {
            resource_type: rt.to_string(),
            id: id.to_string(),
            action: Action::Put(Arc::new(r)),
            precondition,
        }),
        Err(issues) => Err(EntryError::Invalid(
            issues
                .into_iter()
                .map(|mut is| {
                    is.location = format!("{loc}.resource.{}", is.location);
                    is
                })
                .collect(),
        )),
    }
}

/// Replaces conditional references with their one match (or fails the entry).
fn resolve_references(
    v: &mut Json,
    resolved: &HashMap<String, Result<String, String>>,
    loc: &str,
) -> Result<(), EntryError> {
    map_references(v, &mut |s| match resolved.get(s) {
        Some(Ok(r)) => Ok(Some(r.clone())),
        Some(Err(m)) => Err(EntryError::PreconditionFailed(format!("{loc}: {m}"))),
        None => Ok(None),
    })
}

/// Calls `f` on every `reference` string; `Some` replaces it, an error stops the walk.
fn map_references<E>(v: &mut Json, f: &mut dyn FnMut(&str) -> Result<Option<String>, E>) -> Result<(), E> {
    match v {
        Json::Object(members) => {
            for (k, val) in members.iter_mut() {
                if k == "reference"
                    && let Json::String(s) = val
                {
                    if let Some(r) = f(s)? {
                        *s = r;
                    }
                    continue;
                }
                map_references(val, f)?;
            }
        }
        Json::Array(items) => {
            for i in items {
                map_references(i, f)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Puts `id` right after `resourceType`, as FHIR JSON usually has it (`set` appends a new
/// member at the end).
pub fn move_id_first(json: &mut Json) {
    if let Json::Object(m) = json
        && let Some(pos) = m.iter().position(|(k, _)| k == "id")
    {
        let item = m.remove(pos);
        let at = m.iter().position(|(k, _)| k == "resourceType").map_or(0, |i| i + 1);
        m.insert(at, item);
    }
}

/// The version in an ETag-style value: `W/"3"`, `"3"` or `3`.
pub fn etag_version(v: &str) -> Option<i64> {
    v.strip_prefix("W/").unwrap_or(v).trim_matches('"').parse().ok()
}

/// Replaces every `reference` whose value is a key of `refs`.
pub fn rewrite_references(v: &mut Json, refs: &HashMap<String, String>) {
    let _ = map_references::<std::convert::Infallible>(v, &mut |s| Ok(refs.get(s).cloned()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirlake_schemas::json::ParseLimits;

    fn write(e: &EntryPlan) -> WriteOp {
        match e.action.clone().unwrap() {
            EntryAction::Write(mut ops) => ops.remove(0),
            other => panic!("{other:?}"),
        }
    }

    /// Plans a Bundle's JSON text; server ids are `id1`, `id2`, ...
    fn planned(bundle: &str, resolved: &Resolved) -> BundlePlan {
        let json = Json::parse(bundle.as_bytes(), ParseLimits::default()).unwrap();
        let mut n = 0;
        let mut new_id = || {
            n += 1;
            format!("id{n}")
        };
        plan_bundle(Model::r4().unwrap(), &json, &ValidationOptions::default(), &mut new_id, resolved).unwrap()
    }

    fn issues(e: &EntryPlan) -> Vec<Issue> {
        e.action.clone().unwrap_err().issues()
    }

    #[test]
    fn transaction_posts_get_ids_and_references_are_rewritten() {
        let b = r#"{"resourceType":"Bundle","type":"transaction","entry":[
          {"fullUrl":"urn:uuid:11111111-1111-1111-1111-111111111111","resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient"}},
          {"fullUrl":"urn:uuid:22222222-2222-2222-2222-222222222222","resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},
            "subject":{"reference":"urn:uuid:11111111-1111-1111-1111-111111111111"}},"request":{"method":"POST","url":"Observation"}},
          {"request":{"method":"DELETE","url":"Patient/old"}}]}"#;
        let plan = planned(b, &Resolved::default());
        assert_eq!(plan.kind, BundleKind::Transaction);
        let ops: Vec<_> = plan.entries.iter().map(write).collect();
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
        let plan = planned(b, &Resolved::default());
        for e in &plan.entries[..2] {
            let issues = issues(e);
            assert!(issues[0].location.ends_with("request.url"), "{issues:?}");
        }
        assert!(plan.entries[2].action.is_ok());
    }

    #[test]
    fn invalid_entries_are_located() {
        let b = r#"{"resourceType":"Bundle","type":"batch","entry":[
          {"resource":{"resourceType":"Patient","gender":"x"},"request":{"method":"POST","url":"Patient"}}]}"#;
        let plan = planned(b, &Resolved::default());
        let issues = issues(&plan.entries[0]);
        assert_eq!(issues[0].location, "Bundle.entry[0].resource.Patient.gender");
    }

    #[test]
    fn conditions_resolve_through_what_the_caller_found() {
        let b = r#"{"resourceType":"Bundle","type":"transaction","entry":[
          {"fullUrl":"urn:uuid:org","resource":{"resourceType":"Organization","name":"A"},
           "request":{"method":"POST","url":"Organization","ifNoneExist":"identifier=x|1"}},
          {"resource":{"resourceType":"Patient","managingOrganization":{"reference":"urn:uuid:org"},
             "generalPractitioner":[{"reference":"Practitioner?identifier=npi|9"}]},"request":{"method":"POST","url":"Patient"}},
          {"request":{"method":"DELETE","url":"Observation?code=c"}},
          {"resource":{"resourceType":"Patient","link":[{"other":{"reference":"urn:uuid:nowhere"},"type":"seealso"}]},
           "request":{"method":"POST","url":"Patient"}},
          {"request":{"method":"GET","url":"Patient?name=x"}}]}"#;
        let json = Json::parse(b.as_bytes(), ParseLimits::default()).unwrap();
        let model = Model::r4().unwrap();
        let n = needs(model, &json);
        let want: BTreeSet<String> =
            ["Organization?identifier=x|1", "Practitioner?identifier=npi|9", "Observation?code=c"]
                .map(String::from)
                .into();
        assert_eq!(n.searches, want);
        let found = |id: &str| Found { id: id.into(), version: 3, raw: Arc::from("{}") };
        let mut resolved = Resolved { available: true, ..Default::default() };
        resolved.searches.insert("Organization?identifier=x|1".into(), vec![found("org1")]);
        resolved.searches.insert("Practitioner?identifier=npi|9".into(), vec![found("pr1")]);
        resolved.searches.insert("Observation?code=c".into(), vec![found("o1"), found("o2")]);
        let plan = planned(b, &resolved);
        let e = &plan.entries;
        assert!(matches!(&e[0].action, Ok(EntryAction::Existing { found, .. }) if found.id == "org1"));
        let Action::Put(p) = &write(&e[1]).action else { panic!() };
        assert_eq!(
            p.get("managingOrganization").unwrap().get("reference").unwrap().as_str(),
            Some("Organization/org1")
        );
        let gp = &p.get("generalPractitioner").unwrap().as_array().unwrap()[0];
        assert_eq!(gp.get("reference").unwrap().as_str(), Some("Practitioner/pr1"));
        assert!(matches!(&e[2].action, Err(EntryError::PreconditionFailed(m)) if m.contains("more than 1")));
        assert!(issues(&e[3])[0].message.contains("urn:uuid:nowhere"));
        assert!(matches!(&e[4].action, Ok(EntryAction::Read(u)) if u == "Patient?name=x"));
        // Allowed multiple deletes, and an unmatched conditional reference.
        resolved.delete_max = 2;
        resolved.searches.insert("Practitioner?identifier=npi|9".into(), vec![]);
        let plan = planned(b, &resolved);
        assert!(matches!(&plan.entries[2].action, Ok(EntryAction::Write(ops)) if ops.len() == 2));
        assert!(matches!(&plan.entries[1].action, Err(EntryError::PreconditionFailed(m)) if m.contains("matches no")));
        // More matches than the maximum: refused, nothing deleted.
        resolved.searches.insert("Observation?code=c".into(), vec![found("o1"), found("o2"), found("o3")]);
        let plan = planned(b, &resolved);
        assert!(matches!(&plan.entries[2].action, Err(EntryError::PreconditionFailed(m)) if m.contains("more than 2")));
        // Without a server, conditional entries are refused.
        let plan = planned(b, &Resolved::default());
        assert!(issues(&plan.entries[0])[0].message.contains("POST this Bundle"));
    }
}
