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

use fhirlake_ingest::{Action, OpOutcome, Precondition, WriteOp};
use fhirlake_schemas::Json;
use fhirlake_schemas::json::ParseLimits;
use fhirlake_schemas::patch::{fhirpath_patch, is_fhirpath_patch, json_patch};
use fhirlake_schemas::validate::{ValidationOptions, validate_resource};

use super::write::{submit_one, written};
use super::{AppState, Operation, Outcome, Preferences, instance, parse_json};
use crate::auth::{Access, Letter};
use crate::error::{ApiError, ApiResult};

/// The media type of a JSON Patch body.
pub const JSON_PATCH: &str = "application/json-patch+json";

/// A parsed patch document.
pub enum PatchDoc {
    /// RFC 6902 operations.
    Json(Json),
    /// A FHIRPath Patch `Parameters`.
    FhirPath(Json),
}

/// Reads a PATCH body by its media type (the front end admits JSON Patch and FHIR JSON).
pub fn read_patch(state: &AppState, op: &Operation) -> ApiResult<PatchDoc> {
    let json = parse_json(state, &op.body)?;
    if op.prefs.content_type.as_deref() == Some(JSON_PATCH) {
        return Ok(PatchDoc::Json(json));
    }
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
pub async fn patch(state: &AppState, op: &Operation) -> ApiResult<Outcome> {
    let doc = read_patch(state, op)?;
    apply(state, &op.access, op.rt(), op.id(), &doc, &op.prefs).await
}

/// Applies `doc` to the current version of `rt/id` and writes the result.
pub async fn apply(
    state: &AppState,
    access: &Access,
    rt: &str,
    id: &str,
    doc: &PatchDoc,
    prefs: &Preferences,
) -> ApiResult<Outcome> {
    let explicit = match prefs.if_match {
        Precondition::IfMatch(v) => Some(v),
        _ => None,
    };
    let _serial = state.resource_lock(rt, id).lock().await;
    for _ in 0..5 {
        let (version, raw) = instance::current(state, rt, id).await?;
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
        match submit_one(state, access, Letter::U, op).await? {
            OpOutcome::PreconditionFailed { current } if explicit.is_none() => {
                tracing::debug!(rt, id, ?current, "patch raced a concurrent write; re-applying");
                continue;
            }
            outcome => return written(state, rt, id, outcome, prefs),
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
