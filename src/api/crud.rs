//! create, read, vread, update, delete and `$validate`.
//!
//! Owns: the HTTP semantics of the instance interactions — status codes, `Location`,
//! `ETag`, `Last-Modified`, `Prefer`, `If-Match`, 404 vs 410. Must not: touch storage
//! except through the writer and the history reads.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use fhirlake_ingest::bundle::move_id_first;
use fhirlake_ingest::import::new_id;
use fhirlake_ingest::{Action, OpOutcome, Precondition, TableKind, WriteOp};
use fhirlake_query::HistoryQuery;
use fhirlake_query::history::read_history;
use fhirlake_schemas::Json;
use fhirlake_schemas::validate::{ValidationOptions, validate_resource};

use super::{
    AppState, PreferReturn, fhir_response, if_match, info_outcome, parse_json, parse_resource, prefer_return, read_body,
};
use crate::error::{ApiError, ApiResult};

/// `POST [base]/{type}`.
pub async fn create(
    State(state): State<Arc<AppState>>,
    Path(rt): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    state.check_type(&rt)?;
    let json = read_resource_of_type(&state, &rt, &headers, body).await?;
    match headers.get("if-none-exist") {
        Some(v) => {
            let criteria = v.to_str().map_err(|_| ApiError::BadRequest("If-None-Exist is not text".into()))?;
            super::conditional::create_if_none_exist(&state, &rt, criteria, json, &headers).await
        }
        None => create_new(&state, &rt, json, &headers).await,
    }
}

/// Stores `json` as a new `rt` with a server-assigned id.
pub(crate) async fn create_new(state: &AppState, rt: &str, mut json: Json, headers: &HeaderMap) -> ApiResult<Response> {
    let id = new_id();
    json.set("id", Json::String(id.clone()));
    move_id_first(&mut json);
    let op = WriteOp {
        resource_type: rt.to_string(),
        id: id.clone(),
        action: Action::Put(Arc::new(json)),
        precondition: Precondition::Absent,
    };
    let outcome = submit_one(state, op).await?;
    written_response(state, rt, &id, outcome, headers)
}

/// `PUT [base]/{type}/{id}`: update, or update-as-create.
pub async fn update(
    State(state): State<Arc<AppState>>,
    Path((rt, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    state.check_type(&rt)?;
    check_id(&id)?;
    let json = read_resource_of_type(&state, &rt, &headers, body).await?;
    match json.get("id").and_then(Json::as_str) {
        Some(body_id) if body_id == id => {}
        Some(body_id) => {
            return Err(ApiError::BadRequest(format!("the body's id '{body_id}' does not match the URL's id '{id}'")));
        }
        None => return Err(ApiError::BadRequest(format!("the body has no id; PUT needs \"id\": \"{id}\""))),
    }
    let precondition = match (if_match(&headers)?, headers.get(header::IF_NONE_MATCH)) {
        (pc, None) => pc,
        (Precondition::None, Some(v)) if v.as_bytes() == b"*" => Precondition::Absent,
        (Precondition::None, Some(v)) => {
            return Err(ApiError::BadRequest(format!(
                "If-None-Match '{}' is not supported on PUT (only '*': create only if absent)",
                v.to_str().unwrap_or("?")
            )));
        }
        (_, Some(_)) => return Err(ApiError::BadRequest("If-Match and If-None-Match cannot be combined".into())),
    };
    let op = WriteOp { resource_type: rt.clone(), id: id.clone(), action: Action::Put(Arc::new(json)), precondition };
    let outcome = submit_one(&state, op).await?;
    if precondition == Precondition::Absent
        && let OpOutcome::PreconditionFailed { current } = outcome
    {
        return Err(ApiError::PreconditionFailed(format!(
            "If-None-Match: * does not hold: {rt}/{id} exists (version {})",
            current.map_or_else(|| "?".into(), |v| v.to_string())
        )));
    }
    written_response(&state, &rt, &id, outcome, &headers)
}

/// `DELETE [base]/{type}/{id}`.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path((rt, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    state.check_type(&rt)?;
    check_id(&id)?;
    let precondition = if_match(&headers)?;
    let op = WriteOp { resource_type: rt.clone(), id: id.clone(), action: Action::Delete, precondition };
    match submit_one(&state, op).await? {
        OpOutcome::Deleted { version } => {
            let mut r = if prefer_return(&headers) == PreferReturn::OperationOutcome {
                fhir_response(StatusCode::OK, info_outcome(&format!("deleted {rt}/{id}")), None, None)
            } else {
                fhir_response(StatusCode::NO_CONTENT, String::new(), None, None)
            };
            if let Some(v) = version.and_then(|v| HeaderValue::from_str(&format!("W/\"{v}\"")).ok()) {
                r.headers_mut().insert(header::ETAG, v);
            }
            Ok(r)
        }
        OpOutcome::PreconditionFailed { current } => Err(precondition_failed(&rt, &id, current)),
        other => Err(ApiError::Internal(format!("unexpected delete outcome {other:?}"))),
    }
}

/// `GET [base]/{type}/{id}`.
pub async fn read(State(state): State<Arc<AppState>>, Path((rt, id)): Path<(String, String)>) -> ApiResult<Response> {
    state.check_type(&rt)?;
    check_id(&id)?;
    let Some(entry) = state.writer.current(&rt, &id) else {
        return Err(ApiError::NotFound(format!("{rt}/{id} does not exist")));
    };
    if entry.deleted {
        return Err(ApiError::Gone(format!("{rt}/{id} was deleted (version {})", entry.version)));
    }
    serve_version(&state, &rt, &id, entry.version).await
}

/// `GET [base]/{type}/{id}/_history/{vid}`.
pub async fn vread(
    State(state): State<Arc<AppState>>,
    Path((rt, id, vid)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    state.check_type(&rt)?;
    check_id(&id)?;
    let version: i64 = vid.parse().map_err(|_| ApiError::NotFound(format!("'{vid}' is not a version of {rt}/{id}")))?;
    serve_version(&state, &rt, &id, version).await
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
    let table = state
        .writer
        .tables()
        .get(TableKind::History, rt)
        .ok_or_else(|| ApiError::NotFound(format!("{rt}/{id} does not exist")))?;
    let q = HistoryQuery { id: Some(id.to_string()), version: Some(entry.version), ..Default::default() };
    read_history(rt, &table, &q)
        .await?
        .into_iter()
        .find_map(|r| r.raw.filter(|_| !r.deleted))
        .map(|raw| (entry.version, raw))
        .ok_or_else(|| ApiError::NotFound(format!("{rt}/{id} has no version {}", entry.version)))
}

async fn serve_version(state: &AppState, rt: &str, id: &str, version: i64) -> ApiResult<Response> {
    let Some(table) = state.writer.tables().get(TableKind::History, rt) else {
        return Err(ApiError::NotFound(format!("{rt}/{id} does not exist")));
    };
    let q = HistoryQuery { id: Some(id.to_string()), version: Some(version), ..Default::default() };
    let rows = read_history(rt, &table, &q).await?;
    let Some(row) = rows.into_iter().next() else {
        return Err(ApiError::NotFound(format!("{rt}/{id} has no version {version}")));
    };
    match row.raw {
        Some(raw) if !row.deleted => {
            Ok(fhir_response(StatusCode::OK, raw, Some(row.version), Some(row.last_updated_us)))
        }
        _ => Err(ApiError::Gone(format!("version {version} of {rt}/{id} is a delete"))),
    }
}

/// `POST [base]/{type}/$validate`: 200 with an OperationOutcome either way.
pub async fn validate(
    State(state): State<Arc<AppState>>,
    Path(rt): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    state.check_type(&rt)?;
    let bytes = read_body(&headers, body, state.config.limits.max_resource_bytes).await?;
    let json = parse_json(&state, &bytes)?;
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

/// Reads, parses and validates a resource body that must be a `rt`.
pub(crate) async fn read_resource_of_type(
    state: &AppState,
    rt: &str,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Json> {
    let bytes = read_body(headers, body, state.config.limits.max_resource_bytes).await?;
    let (json, actual) = parse_resource(state, &bytes)?;
    if actual != rt {
        return Err(ApiError::BadRequest(format!("the body is a {actual}, but the URL is for {rt}")));
    }
    Ok(json)
}

pub(crate) async fn submit_one(state: &AppState, op: WriteOp) -> ApiResult<OpOutcome> {
    let mut out = state.writer.submit(vec![op]).await?;
    out.pop().ok_or_else(|| ApiError::Internal("writer returned no outcome".into()))
}

fn precondition_failed(rt: &str, id: &str, current: Option<i64>) -> ApiError {
    match current {
        Some(v) => ApiError::PreconditionFailed(format!("If-Match does not hold: {rt}/{id} is at version {v}")),
        None => ApiError::PreconditionFailed(format!("If-Match does not hold: {rt}/{id} does not exist")),
    }
}

pub(crate) fn written_response(
    state: &AppState,
    rt: &str,
    id: &str,
    outcome: OpOutcome,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let (status, version, ts, raw) = match outcome {
        OpOutcome::Written { version, last_updated_us, raw, created } => {
            (if created { StatusCode::CREATED } else { StatusCode::OK }, version, last_updated_us, raw)
        }
        OpOutcome::Unchanged { version, last_updated_us, raw } => (StatusCode::OK, version, last_updated_us, raw),
        OpOutcome::PreconditionFailed { current } => return Err(precondition_failed(rt, id, current)),
        OpOutcome::Deleted { .. } | OpOutcome::RolledBack => {
            return Err(ApiError::Internal("unexpected outcome of a single write".into()));
        }
    };
    let body = match prefer_return(headers) {
        PreferReturn::Representation => raw.to_string(),
        PreferReturn::Minimal => String::new(),
        PreferReturn::OperationOutcome => info_outcome(&format!("{rt}/{id} is at version {version}")),
    };
    let mut r = fhir_response(status, body, Some(version), Some(ts));
    set_location(state, &mut r, rt, id, version);
    Ok(r)
}

/// `Location` and `Content-Location` of a version.
pub(crate) fn set_location(state: &AppState, r: &mut Response, rt: &str, id: &str, version: i64) {
    if let Ok(loc) = HeaderValue::from_str(&state.url(&format!("{rt}/{id}/_history/{version}"))) {
        r.headers_mut().insert(header::LOCATION, loc.clone());
        r.headers_mut().insert(header::CONTENT_LOCATION, loc);
    }
}

pub(crate) fn check_id(id: &str) -> ApiResult<()> {
    if fhirlake_schemas::validate::is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!("'{id}' is not a valid FHIR id (1-64 of A-Z a-z 0-9 - .)")))
    }
}
