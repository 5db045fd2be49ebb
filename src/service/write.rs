//! Submitting one write and answering it: the layer `instance`, `conditional` and `patch`
//! share.
//!
//! Owns: submitting a single [`WriteOp`] to the writer, the answer to a written resource
//! (201/200, `ETag`, `Last-Modified`, `Location`, `Prefer: return=...`), and the 412 of a
//! failed precondition. Must not: decide what to write (the modules above do) or check
//! preconditions (the writer does).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use fhirlake_ingest::{Action, OpOutcome, WriteOp};
use fhirlake_schemas::Json;

use crate::auth::{Access, Letter};

use super::{AppState, Outcome, PreferReturn, Preferences, Touched, fhir_response, info_outcome};
use crate::error::{ApiError, ApiResult};

/// Submits one write (`letter`: the SMART permission it is) once `access` allows it, and
/// returns its outcome.
pub(crate) async fn submit_one(state: &AppState, access: &Access, letter: Letter, op: WriteOp) -> ApiResult<OpOutcome> {
    check_writes(state, access, [(letter, &op)])?;
    let mut out = state.writer.submit(vec![op]).await?;
    out.pop().ok_or_else(|| ApiError::Internal("writer returned no outcome".into()))
}

/// 403 unless `access` allows each write (`letter`, op): a `patient/` grant needs the
/// resource written and the version it replaces inside the patient's compartment.
pub(crate) fn check_writes<'a>(
    state: &AppState,
    access: &Access,
    writes: impl IntoIterator<Item = (Letter, &'a WriteOp)>,
) -> ApiResult<()> {
    let Access::Limited(limits) = access else { return Ok(()) };
    for (letter, w) in writes {
        let (rt, id) = (w.resource_type.as_str(), w.id.as_str());
        let before = match state.writer.current(rt, id) {
            Some(e) if !e.deleted => state
                .writer
                .version(rt, id, e.version)?
                .and_then(|r| r.raw)
                .and_then(|raw| Json::parse(raw.as_bytes(), fhirlake_schemas::json::ParseLimits::STORED).ok()),
            _ => None,
        };
        let after = match &w.action {
            Action::Put(j) => Some(j.as_ref()),
            Action::Delete => None,
        };
        limits.check_write(state.model, rt, id, letter, after, before.as_ref())?;
    }
    Ok(())
}

/// The 412 of an `If-Match` that did not hold.
pub(crate) fn precondition_failed(rt: &str, id: &str, current: Option<i64>) -> ApiError {
    match current {
        Some(v) => ApiError::PreconditionFailed(format!("If-Match does not hold: {rt}/{id} is at version {v}")),
        None => ApiError::PreconditionFailed(format!("If-Match does not hold: {rt}/{id} does not exist")),
    }
}

/// The answer to a written (or unchanged) resource, as `Prefer` asks.
pub(crate) fn written(
    state: &AppState,
    rt: &str,
    id: &str,
    outcome: OpOutcome,
    prefs: &Preferences,
) -> ApiResult<Outcome> {
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
    let body = match prefs.return_ {
        PreferReturn::Representation => raw.to_string(),
        PreferReturn::Minimal => String::new(),
        PreferReturn::OperationOutcome => info_outcome(&format!("{rt}/{id} is at version {version}")),
    };
    let mut r = fhir_response(status, body, Some(version), Some(ts));
    set_location(state, &mut r, rt, id, version);
    Ok(Outcome { response: r, touched: vec![touched(rt, id, Some(version))] })
}

/// What an operation on `rt/id` touched (its owner is filled in by `execute`).
pub(crate) fn touched(rt: &str, id: &str, version: Option<i64>) -> Touched {
    Touched { resource_type: rt.to_string(), id: id.to_string(), version, owner: None }
}

/// `Location` and `Content-Location` of a version.
pub(crate) fn set_location(state: &AppState, r: &mut Response, rt: &str, id: &str, version: i64) {
    if let Ok(loc) = HeaderValue::from_str(&state.url(&format!("{rt}/{id}/_history/{version}"))) {
        r.headers_mut().insert(header::LOCATION, loc.clone());
        r.headers_mut().insert(header::CONTENT_LOCATION, loc);
    }
}
