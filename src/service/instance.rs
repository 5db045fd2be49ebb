//! create, read, vread, update, delete and `$validate`.
//!
//! Owns: the semantics of the instance interactions — status codes, `Location`, `ETag`,
//! `Last-Modified`, `Prefer`, `If-Match`, `If-None-Match: *`, 404 vs 410. Must not: touch
//! storage except through the writer and the history reads, or know another interaction's
//! module (conditional creates are dispatched by `execute`).

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use fhirlake_ingest::bundle::move_id_first;
use fhirlake_ingest::import::new_id;
use fhirlake_ingest::{Action, OpOutcome, Precondition, WriteOp};
use fhirlake_schemas::Json;
use fhirlake_schemas::validate::{ValidationOptions, validate_resource};

use super::write::{precondition_failed, submit_one, touched, written};
use super::{
    AppState, Operation, Outcome, PreferReturn, check_id, fhir_response, info_outcome, parse_json, parse_resource,
};
use crate::auth::{Access, Letter};
use crate::error::{ApiError, ApiResult};

/// `POST [base]/{type}` without `If-None-Exist`.
pub async fn create(state: &AppState, op: &Operation) -> ApiResult<Outcome> {
    let json = resource_of_type(state, op)?;
    create_new(state, op, json).await
}

/// Stores `json` as a new resource of `op`'s type with a server-assigned id.
pub(crate) async fn create_new(state: &AppState, op: &Operation, mut json: Json) -> ApiResult<Outcome> {
    let rt = op.rt();
    let id = new_id();
    json.set("id", Json::String(id.clone()));
    move_id_first(&mut json);
    let write = WriteOp {
        resource_type: rt.to_string(),
        id: id.clone(),
        action: Action::Put(Arc::new(json)),
        precondition: Precondition::Absent,
    };
    let outcome = submit_one(state, &op.access, Letter::C, write).await?;
    written(state, rt, &id, outcome, &op.prefs)
}

/// `PUT [base]/{type}/{id}`: update, or update-as-create.
pub async fn update(state: &AppState, op: &Operation) -> ApiResult<Outcome> {
    let (rt, id) = (op.rt(), op.id());
    let json = resource_of_type(state, op)?;
    match json.get("id").and_then(Json::as_str) {
        Some(body_id) if body_id == id => {}
        Some(body_id) => {
            return Err(ApiError::BadRequest(format!("the body's id '{body_id}' does not match the URL's id '{id}'")));
        }
        None => return Err(ApiError::BadRequest(format!("the body has no id; PUT needs \"id\": \"{id}\""))),
    }
    let precondition = match (op.prefs.if_match, op.prefs.if_none_match.as_deref()) {
        (pc, None) => pc,
        (Precondition::None, Some("*")) => Precondition::Absent,
        (Precondition::None, Some(v)) => {
            return Err(ApiError::BadRequest(format!(
                "If-None-Match '{v}' is not supported on PUT (only '*': create only if absent)"
            )));
        }
        (_, Some(_)) => return Err(ApiError::BadRequest("If-Match and If-None-Match cannot be combined".into())),
    };
    let write = WriteOp {
        resource_type: rt.to_string(),
        id: id.to_string(),
        action: Action::Put(Arc::new(json)),
        precondition,
    };
    let outcome = submit_one(state, &op.access, Letter::U, write).await?;
    if precondition == Precondition::Absent
        && let OpOutcome::PreconditionFailed { current } = outcome
    {
        return Err(ApiError::PreconditionFailed(format!(
            "If-None-Match: * does not hold: {rt}/{id} exists (version {})",
            current.map_or_else(|| "?".into(), |v| v.to_string())
        )));
    }
    written(state, rt, id, outcome, &op.prefs)
}

/// `DELETE [base]/{type}/{id}`.
pub async fn delete(state: &AppState, op: &Operation) -> ApiResult<Outcome> {
    let (rt, id) = (op.rt(), op.id());
    let write = WriteOp {
        resource_type: rt.to_string(),
        id: id.to_string(),
        action: Action::Delete,
        precondition: op.prefs.if_match,
    };
    match submit_one(state, &op.access, Letter::D, write).await? {
        OpOutcome::Deleted { version } => {
            let mut r = if op.prefs.return_ == PreferReturn::OperationOutcome {
                fhir_response(StatusCode::OK, info_outcome(&format!("deleted {rt}/{id}")), None, None)
            } else {
                fhir_response(StatusCode::NO_CONTENT, String::new(), None, None)
            };
            if let Some(v) = version.and_then(|v| HeaderValue::from_str(&format!("W/\"{v}\"")).ok()) {
                r.headers_mut().insert(header::ETAG, v);
            }
            Ok(Outcome { response: r, touched: vec![touched(rt, id, version)] })
        }
        OpOutcome::PreconditionFailed { current } => Err(precondition_failed(rt, id, current)),
        other => Err(ApiError::Internal(format!("unexpected delete outcome {other:?}"))),
    }
}

/// `GET [base]/{type}/{id}`.
pub async fn read(state: &AppState, op: &Operation) -> ApiResult<Outcome> {
    let (rt, id) = (op.rt(), op.id());
    let Some(entry) = state.writer.current(rt, id) else {
        return Err(ApiError::NotFound(format!("{rt}/{id} does not exist")));
    };
    if entry.deleted {
        return Err(ApiError::Gone(format!("{rt}/{id} was deleted (version {})", entry.version)));
    }
    serve_version(state, op, entry.version).await
}

/// `GET [base]/{type}/{id}/_history/{vid}`.
pub async fn vread(state: &AppState, op: &Operation) -> ApiResult<Outcome> {
    let (rt, id) = (op.rt(), op.id());
    let vid = op.version.as_deref().unwrap_or("");
    let version: i64 = vid.parse().map_err(|_| ApiError::NotFound(format!("'{vid}' is not a version of {rt}/{id}")))?;
    serve_version(state, op, version).await
}

/// The current version of `rt/id` and its served JSON (404 when absent, 410 when deleted).
pub async fn current(state: &AppState, rt: &str, id: &str) -> ApiResult<(i64, String)> {
    check_id(id)?;
    let Some(entry) = state.writer.current(rt, id) else {
        return Err(ApiError::NotFound(format!("{rt}/{id} does not exist")));
    };
    if entry.deleted {
        return Err(ApiError::Gone(format!("{rt}/{id} was deleted (version {})", entry.version)));
    }
    state
        .writer
        .version(rt, id, entry.version)?
        .and_then(|r| r.raw.filter(|_| !r.deleted))
        .map(|raw| (entry.version, raw))
        .ok_or_else(|| ApiError::NotFound(format!("{rt}/{id} has no version {}", entry.version)))
}

/// One version of `op`'s resource, from the serving store: 404 when the caller may not
/// see it (as if it did not exist: ids do not leak).
async fn serve_version(state: &AppState, op: &Operation, version: i64) -> ApiResult<Outcome> {
    let (rt, id) = (op.rt(), op.id());
    let hidden = || ApiError::NotFound(format!("{rt}/{id} does not exist"));
    let Some(row) = state.writer.version(rt, id, version)? else {
        return Err(ApiError::NotFound(format!("{rt}/{id} has no version {version}")));
    };
    let shown = shown_raw(state, rt, id, version, row.raw.as_deref(), row.deleted)?;
    if op.access.is_limited() && !visible(state, &op.access, rt, id, shown.as_deref().unwrap_or(""), Letter::R)? {
        return Err(hidden());
    }
    match row.raw {
        Some(raw) if !row.deleted => Ok(Outcome {
            response: fhir_response(StatusCode::OK, raw, Some(row.version), Some(row.last_updated_us)),
            touched: vec![touched(rt, id, Some(row.version))],
        }),
        _ => Err(ApiError::Gone(format!("version {version} of {rt}/{id} is a delete"))),
    }
}

/// `POST [base]/{type}/$validate`: 200 with an OperationOutcome either way.
pub fn validate(state: &AppState, op: &Operation) -> ApiResult<axum::response::Response> {
    let rt = op.rt();
    let json = parse_json(state, &op.body)?;
    // Accept the resource itself or Parameters with a `resource` parameter.
    let resource = if json.get("resourceType").and_then(Json::as_str) == Some("Parameters") && rt != "Parameters" {
        match json.get("parameter") {
            Some(Json::Array(ps)) => ps
                .iter()
                .find(|p| p.get("name").and_then(Json::as_str) == Some("resource"))
                .and_then(|p| p.get("resource"))
                .cloned()
                .ok_or_else(|| ApiError::BadRequest("Parameters has no 'resource' parameter".into()))?,
            _ => return Err(ApiError::BadRequest("Parameters has no 'resource' parameter".into())),
        }
    } else {
        json
    };
    let body = match validate_resource(state.model, &resource, &ValidationOptions::default()) {
        Ok(actual) if actual == rt => info_outcome("the resource is valid"),
        Ok(actual) => ApiError::BadRequest(format!("the body is a {actual}, not a {rt}")).outcome().to_json_string(),
        Err(issues) => ApiError::Invalid(issues).outcome().to_json_string(),
    };
    Ok(fhir_response(StatusCode::OK, body, None, None))
}

/// The body of `op`, parsed and validated, which must be a resource of `op`'s type.
pub(crate) fn resource_of_type(state: &AppState, op: &Operation) -> ApiResult<Json> {
    let (json, actual) = parse_resource(state, &op.body)?;
    if actual != op.rt() {
        return Err(ApiError::BadRequest(format!("the body is a {actual}, but the URL is for {}", op.rt())));
    }
    Ok(json)
}

/// The JSON that decides who may see version `version` of `rt/id` (`raw`, `deleted`):
/// its own, or for a delete the version it deletes (a delete is visible when that is).
pub(crate) fn shown_raw(
    state: &AppState,
    rt: &str,
    id: &str,
    version: i64,
    raw: Option<&str>,
    deleted: bool,
) -> ApiResult<Option<String>> {
    Ok(match (raw, deleted) {
        (Some(raw), false) => Some(raw.to_string()),
        _ if version > 1 => state.writer.version(rt, id, version - 1)?.and_then(|r| r.raw),
        _ => None,
    })
}

/// Whether the caller may see `rt/id` in the version whose served JSON is `raw`, for
/// `letter` (unparseable JSON is not visible).
pub(crate) fn visible(
    state: &AppState,
    access: &Access,
    rt: &str,
    id: &str,
    raw: &str,
    letter: Letter,
) -> ApiResult<bool> {
    let Access::Limited(limits) = access else { return Ok(true) };
    if limits.rows(state.model, rt, letter)?.is_none() {
        return Ok(true); // every row of the type: no need to parse this one
    }
    let Ok(json) = Json::parse(raw.as_bytes(), fhirlake_schemas::json::ParseLimits::STORED) else { return Ok(false) };
    limits.sees(state.model, rt, id, &json, letter)
}
