//! `PATCH [base]/{type}/{id}`: JSON Patch (`application/json-patch+json`) and FHIRPath
//! Patch (a `Parameters` body, `application/fhir+json`).
//!
//! Owns: the HTTP side of patching. The patch is applied to the current version, the
//! result validated like any write (422 when invalid, nothing stored) and written with
//! `If-Match` on the version it was applied to, so a concurrent write is never lost: with
//! the client's own `If-Match` a mismatch is 412; without one fhirlake re-reads and
//! re-applies the patch (up to 5 times, then 409). Patches of one resource queue on a
//! striped lock, so only plain writes can make them retry. Must not: implement patch semantics
//! (`fhirlake_schemas::patch`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use fhirlake_ingest::{Action, OpOutcome, Precondition, WriteOp};
use fhirlake_schemas::Json;
use fhirlake_schemas::json::ParseLimits;
use fhirlake_schemas::patch::{fhirpath_patch, is_fhirpath_patch, json_patch};
use fhirlake_schemas::validate::{ValidationOptions, validate_resource};

use super::{AppState, crud, if_match, parse_json, read_body};
use crate::error::{ApiError, ApiResult};

/// A parsed patch document.
pub enum PatchDoc {
    /// RFC 6902 operations.
    Json(Json),
    /// A FHIRPath Patch `Parameters`.
    FhirPath(Json),
}

/// Reads a PATCH body by its media type.
pub async fn read_patch(state: &AppState, headers: &HeaderMap, body: Body) -> ApiResult<PatchDoc> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    // read_body checks JSON media types; a JSON Patch is JSON too.
    let mut plain = headers.clone();
    if ct.starts_with("application/json-patch+json") {
        plain.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
        let bytes = read_body(&plain, body, state.config.limits.max_resource_bytes).await?;
        return Ok(PatchDoc::Json(parse_json(state, &bytes)?));
    }
    if !(ct.starts_with("application/fhir+json") || ct.starts_with("application/json")) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "PATCH takes application/json-patch+json (JSON Patch) or application/fhir+json (FHIRPath Patch \
             Parameters), not '{ct}'"
        )));
    }
    let bytes = read_body(headers, body, state.config.limits.max_resource_bytes).await?;
    let json = parse_json(state, &bytes)?;
    if !is_fhirpath_patch(&json) {
        return Err(ApiError::BadRequest(
            "a FHIR JSON PATCH body must be a Parameters resource (FHIRPath Patch); send JSON Patch as \
             application/json-patch+json"
                .into(),
        ));
    }
    Ok(PatchDoc::FhirPath(json))
}

/// `PATCH [base]/{type}/{id}`.
pub async fn patch(
    State(state): State<Arc<AppState>>,
    Path((rt, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    state.check_type(&rt)?;
    crud::check_id(&id)?;
    let doc = read_patch(&state, &headers, body).await?;
    apply(&state, &rt, &id, &doc, &headers).await
}

/// Applies `doc` to the current version of `rt/id` and writes the result.
pub async fn apply(state: &AppState, rt: &str, id: &str, doc: &PatchDoc, headers: &HeaderMap) -> ApiResult<Response> {
    let explicit = match if_match(headers)? {
        Precondition::IfMatch(v) => Some(v),
        _ => None,
    };
    let _serial = state.resource_lock(rt, id).lock().await;
    for _ in 0..5 {
        let (version, raw) = crud::current(state, rt, id).await?;
        if let Some(v) = explicit.filter(|v| *v != version) {
            return Err(ApiError::PreconditionFailed(format!(
                "If-Match does not hold: {rt}/{id} is at version {version}, not {v}"
            )));
        }
        let current = Json::parse(raw.as_bytes(), ParseLimits::STORED)
            .map_err(|e| ApiError::Internal(format!("stored JSON of {rt}/{id} unreadable: {e}")))?;
        let patched = match doc {
            PatchDoc::Json(ops) => json_patch(&current, ops),
            PatchDoc::FhirPath(params) => fhirpath_patch(state.model, &current, params),
        }
        .map_err(|e| invalid("", &e.0))?;
        if patched.get("id").and_then(Json::as_str) != Some(id) {
            return Err(invalid(&format!("{rt}.id"), "a patch may not change or remove the id"));
        }
        if patched.get("resourceType").and_then(Json::as_str) != Some(rt) {
            return Err(invalid(&format!("{rt}.resourceType"), "a patch may not change the resource type"));
        }
        validate_resource(state.model, &patched, &ValidationOptions::default()).map_err(ApiError::Invalid)?;
        let op = WriteOp {
            resource_type: rt.to_string(),
            id: id.to_string(),
            action: Action::Put(Arc::new(patched)),
            precondition: Precondition::IfMatch(version),
        };
        match crud::submit_one(state, op).await? {
            OpOutcome::PreconditionFailed { current } if explicit.is_none() => {
                tracing::debug!(rt, id, ?current, "patch raced a concurrent write; re-applying");
                continue;
            }
            outcome => return crud::written_response(state, rt, id, outcome, headers),
        }
    }
    Err(ApiError::Conflict(format!("{rt}/{id} kept changing while the patch was applied; retry")))
}

fn invalid(location: &str, message: &str) -> ApiError {
    ApiError::Invalid(vec![fhirlake_schemas::validate::Issue {
        code: fhirlake_schemas::validate::IssueCode::Invalid,
        location: location.to_string(),
        message: message.to_string(),
    }])
}
