//! Conditional interactions: create with `If-None-Exist`, update `PUT /{type}?criteria`,
//! patch `PATCH /{type}?criteria`, delete `DELETE /{type}?criteria`, and the lookups a
//! Bundle's conditional entries and references need.
//!
//! Owns: resolving criteria with the search implementation, and the rule that makes them
//! safe under concurrency. Every conditional interaction holds `AppState::conditional`
//! from its search until its write is acknowledged; an acknowledged write is published to
//! the tables searches read before it is answered. So a conditional interaction sees every
//! write acknowledged before it, including every earlier conditional one, and two
//! concurrent `If-None-Exist` creates for the same criteria create one resource. Plain
//! (unconditional) writes do not take the gate: one still in flight when the search runs is
//! ordered after the conditional interaction. Criteria must be fully understood: an unknown
//! parameter is a 400, not ignored (ignoring it would widen the match). Must not: decide
//! versions or preconditions (the writer does).

use std::sync::Arc;

use axum::http::StatusCode;
use fhirlake_ingest::bundle::{Found, Needs, Resolved, move_id_first};
use fhirlake_ingest::{Action, OpOutcome, Precondition, WriteOp};
use fhirlake_schemas::Json;
use fhirlake_schemas::json::ParseLimits;

use super::operation::decode;
use super::search::Tables;
use super::write::{check_writes, set_location, submit_one, touched, written};
use super::{AppState, Operation, Outcome, check_id, fhir_response, info_outcome, instance, patch};
use crate::auth::{Access, Letter};
use crate::error::{ApiError, ApiResult};

/// The resources of `rt` matching `query` (a URL query string), at most `limit + 1` of them
/// (so "more than `limit`" is visible).
pub async fn find(state: &AppState, access: &Access, rt: &str, query: &str, limit: usize) -> ApiResult<Vec<Found>> {
    state.check_type(rt)?;
    let pairs: Vec<(String, String)> = decode(query)
        .into_iter()
        .filter(|(k, _)| !matches!(k.as_str(), "_count" | "_sort" | "_summary" | "_elements" | "_total" | "_format"))
        .collect();
    if pairs.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "conditional criteria '{query}' name no search parameter; a condition must select resources"
        )));
    }
    let req = fhirlake_schemas::search::parse(state.model, rt, &pairs)
        .map_err(|e| ApiError::BadRequest(format!("conditional criteria '{query}': {e}")))?;
    if !req.ignored.is_empty() {
        let list: Vec<String> = req.ignored.iter().map(ToString::to_string).collect();
        return Err(ApiError::BadRequest(format!(
            "conditional criteria '{query}' use parameters fhirlake does not support: {}",
            list.join("; ")
        )));
    }
    let page =
        fhirlake_query::search::search(&Tables::live(state, access), &req, 0, limit + 1, false).await.map_err(|e| {
            match ApiError::from(e) {
                ApiError::BadRequest(m) => ApiError::BadRequest(format!("conditional criteria '{query}': {m}")),
                other => other,
            }
        })?;
    page.rows.into_iter().map(|(id, raw)| Ok(Found { version: served_version(&raw)?, id, raw: raw.into() })).collect()
}

/// `meta.versionId` of served JSON.
fn served_version(raw: &str) -> ApiResult<i64> {
    Json::parse(raw.as_bytes(), ParseLimits::STORED)
        .ok()
        .and_then(|j| {
            j.get("meta").and_then(|m| m.get("versionId")).and_then(Json::as_str).and_then(|v| v.parse().ok())
        })
        .ok_or_else(|| ApiError::Internal("a stored resource has no meta.versionId".into()))
}

/// Looks up what a Bundle [`Needs`]. The caller holds the gate when `needs.searches` is
/// not empty.
pub async fn resolve(state: &AppState, access: &Access, needs: &Needs) -> ApiResult<Resolved> {
    let max = state.config.limits.conditional_delete_max.max(1);
    let mut r = Resolved { available: true, delete_max: max, ..Default::default() };
    for q in &needs.searches {
        let (rt, query) = q.split_once('?').unwrap_or((q, ""));
        // At most max + 1 matches: enough to tell "one", "several" and "too many to delete".
        r.searches.insert(q.clone(), find(state, access, rt, query, max).await?);
    }
    for (rt, id) in &needs.reads {
        let found = match instance::current(state, rt, id).await {
            Ok((version, raw)) if instance::visible(state, access, rt, id, &raw, Letter::R)? => {
                Some(Found { id: id.clone(), version, raw: raw.into() })
            }
            Ok(_) => None,
            Err(ApiError::NotFound(_) | ApiError::Gone(_)) => None,
            Err(e) => return Err(e),
        };
        r.reads.insert((rt.clone(), id.clone()), found);
    }
    Ok(r)
}

/// `POST /{type}` with `If-None-Exist`: 0 matches create, 1 answers 200 with the match,
/// more 412.
pub async fn create_if_none_exist(state: &AppState, op: &Operation, criteria: &str) -> ApiResult<Outcome> {
    let rt = op.rt();
    let json = instance::resource_of_type(state, op)?;
    let _gate = state.conditional.lock().await;
    match find(state, &op.access, rt, criteria, 1).await?.as_slice() {
        [] => instance::create_new(state, op, json).await,
        [one] => {
            let mut r = fhir_response(StatusCode::OK, one.raw.to_string(), Some(one.version), None);
            set_location(state, &mut r, rt, &one.id, one.version);
            Ok(Outcome { response: r, touched: vec![touched(rt, &one.id, Some(one.version))] })
        }
        _ => Err(ApiError::PreconditionFailed(format!(
            "If-None-Exist '{criteria}' matches more than one {rt}; nothing was created"
        ))),
    }
}

/// `PUT /{type}?criteria`: 0 matches create (with the body's id when it has one), 1 updates
/// the match, more 412.
pub async fn update(state: &AppState, op: &Operation) -> ApiResult<Outcome> {
    let rt = op.rt();
    let criteria = criteria(op, "PUT")?;
    let json = instance::resource_of_type(state, op)?;
    let body_id = json.get("id").and_then(Json::as_str).map(str::to_string);
    let _gate = state.conditional.lock().await;
    let (id, precondition) = match find(state, &op.access, rt, criteria, 1).await?.as_slice() {
        [] => match body_id {
            Some(id) => (id, Precondition::Absent),
            None => (fhirlake_ingest::import::new_id(), Precondition::Absent),
        },
        [one] => {
            if let Some(b) = body_id.as_deref().filter(|b| *b != one.id) {
                return Err(ApiError::BadRequest(format!(
                    "the body's id '{b}' differs from the resource the criteria match ({rt}/{})",
                    one.id
                )));
            }
            (one.id.clone(), op.prefs.if_match)
        }
        _ => {
            return Err(ApiError::PreconditionFailed(format!(
                "the criteria '{criteria}' match more than one {rt}; nothing was updated"
            )));
        }
    };
    check_id(&id)?;
    let mut json = json;
    json.set("id", Json::String(id.clone()));
    move_id_first(&mut json);
    let write =
        WriteOp { resource_type: rt.to_string(), id: id.clone(), action: Action::Put(Arc::new(json)), precondition };
    match submit_one(state, &op.access, Letter::U, write).await? {
        OpOutcome::PreconditionFailed { current } if precondition == Precondition::Absent => {
            Err(ApiError::Conflict(format!(
                "no {rt} matches '{criteria}', but {rt}/{id} exists (version {current:?}) and does not match; not updated"
            )))
        }
        outcome => written(state, rt, &id, outcome, &op.prefs),
    }
}

/// `DELETE /{type}?criteria`: deletes the matches (at most `conditional_delete_max`; more
/// is a 412 and deletes nothing); no match is a successful no-op.
pub async fn delete(state: &AppState, op: &Operation) -> ApiResult<Outcome> {
    let rt = op.rt();
    let criteria = criteria(op, "DELETE")?;
    let max = state.config.limits.conditional_delete_max.max(1);
    let _gate = state.conditional.lock().await;
    let found = find(state, &op.access, rt, criteria, max).await?;
    if found.len() > max {
        return Err(ApiError::PreconditionFailed(format!(
            "the criteria '{criteria}' match more than {max} {rt} resource(s); nothing was deleted \
             (the limit is serve --conditional-delete-max)"
        )));
    }
    if found.is_empty() {
        let r = fhir_response(StatusCode::OK, info_outcome(&format!("no {rt} matches '{criteria}'")), None, None);
        return Ok(Outcome::of(r));
    }
    let ops: Vec<WriteOp> = found
        .iter()
        .map(|f| WriteOp {
            resource_type: rt.to_string(),
            id: f.id.clone(),
            action: Action::Delete,
            precondition: Precondition::None,
        })
        .collect();
    check_writes(state, &op.access, ops.iter().map(|w| (Letter::D, w)))?;
    state.writer.submit_atomic(ops).await?;
    let ids: Vec<String> = found.iter().map(|f| format!("{rt}/{}", f.id)).collect();
    let r = fhir_response(StatusCode::OK, info_outcome(&format!("deleted {}", ids.join(", "))), None, None);
    Ok(Outcome { response: r, touched: found.iter().map(|f| touched(rt, &f.id, Some(f.version))).collect() })
}

/// `PATCH /{type}?criteria`: patches the one match (0 → 404, more → 412).
pub async fn patch(state: &AppState, op: &Operation) -> ApiResult<Outcome> {
    let rt = op.rt();
    let criteria = criteria(op, "PATCH")?;
    let doc = patch::read_patch(state, op)?;
    let _gate = state.conditional.lock().await;
    let id = match find(state, &op.access, rt, criteria, 1).await?.as_slice() {
        [] => return Err(ApiError::NotFound(format!("no {rt} matches '{criteria}'"))),
        [one] => one.id.clone(),
        _ => {
            return Err(ApiError::PreconditionFailed(format!(
                "the criteria '{criteria}' match more than one {rt}; nothing was patched"
            )));
        }
    };
    patch::apply(state, &op.access, rt, &id, &doc, &op.prefs).await
}

/// The criteria of a conditional interaction: its query (405 without one).
fn criteria<'a>(op: &'a Operation, method: &str) -> ApiResult<&'a str> {
    match op.query.as_str() {
        "" => Err(ApiError::MethodNotAllowed(format!(
            "{method} /{rt} needs search criteria (conditional {method}) or an id: {method} /{rt}/{{id}}",
            rt = op.rt()
        ))),
        q => Ok(q),
    }
}
