//! `POST [base]`: transaction and batch Bundles.
//!
//! Owns: the HTTP side of the shared Bundle engine (`fhirlake_ingest::bundle`): a
//! transaction is all-or-nothing (any invalid entry -> 400/422 naming the entry; any
//! failed `ifMatch` -> 412 and nothing stored), a batch answers each entry on its own.
//! Must not: re-implement Bundle planning.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use fhirlake_ingest::bundle::{BundleKind, plan_bundle};
use fhirlake_ingest::import::new_id;
use fhirlake_ingest::writer::format_instant;
use fhirlake_ingest::{OpOutcome, WriteOp};
use fhirlake_schemas::Json;
use fhirlake_schemas::json::write_str;
use fhirlake_schemas::validate::ValidationOptions;

use super::{AppState, fhir_response, parse_json, read_body};
use crate::error::{ApiError, ApiResult};

/// The handler of `POST [base]`.
pub async fn transaction_or_batch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let bytes = read_body(&headers, body, state.config.max_bundle_bytes).await?;
    let json = parse_json(&state, &bytes)?;
    if json.get("resourceType").and_then(Json::as_str) != Some("Bundle") {
        return Err(ApiError::BadRequest("POST to the base URL needs a Bundle of type transaction or batch".into()));
    }
    let plan =
        plan_bundle(state.model, &json, &ValidationOptions::default(), &mut new_id).map_err(ApiError::Invalid)?;
    match plan.kind {
        BundleKind::Collection => {
            Err(ApiError::BadRequest("only transaction and batch Bundles can be posted to the base URL".into()))
        }
        BundleKind::Transaction => {
            let mut ops = Vec::with_capacity(plan.entries.len());
            let mut issues = Vec::new();
            for e in plan.entries {
                match e.op {
                    Ok(op) => ops.push(op),
                    Err(i) => issues.extend(i),
                }
            }
            if !issues.is_empty() {
                return Err(ApiError::Invalid(issues));
            }
            // FHIR: a transaction whose entries name the same resource twice fails.
            let mut seen = std::collections::HashSet::new();
            if let Some(dup) = ops.iter().find(|op| !seen.insert((op.resource_type.as_str(), op.id.as_str()))) {
                return Err(ApiError::Conflict(format!(
                    "transaction not applied: {}/{} appears in more than one entry",
                    dup.resource_type, dup.id
                )));
            }
            let outcomes = state.writer.submit_atomic(ops.clone()).await?;
            if let Some((i, OpOutcome::PreconditionFailed { current })) =
                outcomes.iter().enumerate().find(|(_, o)| matches!(o, OpOutcome::PreconditionFailed { .. }))
            {
                return Err(ApiError::PreconditionFailed(format!(
                    "transaction not applied: entry {i} ifMatch does not hold (current version {current:?})"
                )));
            }
            Ok(response(&state, "transaction-response", &ops.iter().map(Some).collect::<Vec<_>>(), outcomes, &[]))
        }
        BundleKind::Batch => {
            let mut ops = Vec::new();
            let mut slots: Vec<Result<usize, Json>> = Vec::new();
            for e in plan.entries {
                match e.op {
                    Ok(op) => {
                        slots.push(Ok(ops.len()));
                        ops.push(op);
                    }
                    Err(i) => slots.push(Err(ApiError::Invalid(i).outcome())),
                }
            }
            let outcomes = if ops.is_empty() { Vec::new() } else { state.writer.submit(ops.clone()).await? };
            let mut ordered_ops = Vec::new();
            let mut ordered_outcomes = Vec::new();
            let mut errors = Vec::new();
            for s in slots {
                match s {
                    Ok(k) => {
                        ordered_ops.push(Some(&ops[k]));
                        ordered_outcomes.push(outcomes[k].clone());
                        errors.push(None);
                    }
                    Err(oo) => {
                        ordered_ops.push(None);
                        ordered_outcomes.push(OpOutcome::RolledBack);
                        errors.push(Some(oo));
                    }
                }
            }
            Ok(response(&state, "batch-response", &ordered_ops, ordered_outcomes, &errors))
        }
    }
}

fn response(
    state: &AppState,
    bundle_type: &str,
    ops: &[Option<&WriteOp>],
    outcomes: Vec<OpOutcome>,
    errors: &[Option<Json>],
) -> Response {
    let mut out = format!(r#"{{"resourceType":"Bundle","type":"{bundle_type}","entry":["#);
    for (i, (op, outcome)) in ops.iter().zip(outcomes).enumerate() {
        if i > 0 {
            out.push(',');
        }
        if let Some(Some(oo)) = errors.get(i) {
            out.push_str(r#"{"response":{"status":"422 Unprocessable Entity","outcome":"#);
            out.push_str(&oo.to_json_string());
            out.push_str("}}");
            continue;
        }
        let Some(op) = op else { continue };
        let rel = format!("{}/{}", op.resource_type, op.id);
        let (status, version, ts) = match &outcome {
            OpOutcome::Written { version, last_updated_us, created: true, .. } => {
                ("201 Created", Some(*version), Some(*last_updated_us))
            }
            OpOutcome::Written { version, last_updated_us, .. }
            | OpOutcome::Unchanged { version, last_updated_us, .. } => {
                ("200 OK", Some(*version), Some(*last_updated_us))
            }
            OpOutcome::Deleted { version } => ("204 No Content", *version, None),
            OpOutcome::PreconditionFailed { .. } => ("412 Precondition Failed", None, None),
            OpOutcome::RolledBack => ("409 Conflict", None, None),
        };
        out.push_str(r#"{"fullUrl":"#);
        write_str(&mut out, &state.url(&rel));
        if let OpOutcome::Written { raw, .. } | OpOutcome::Unchanged { raw, .. } = &outcome {
            out.push_str(r#","resource":"#);
            out.push_str(raw);
        }
        out.push_str(&format!(r#","response":{{"status":"{status}""#));
        if let Some(v) = version {
            out.push_str(r#","location":"#);
            write_str(&mut out, &format!("{rel}/_history/{v}"));
            out.push_str(&format!(r#","etag":"W/\"{v}\"""#));
        }
        if let Some(t) = ts {
            out.push_str(r#","lastModified":"#);
            write_str(&mut out, &format_instant(t));
        }
        out.push_str("}}");
    }
    out.push_str("]}");
    fhir_response(StatusCode::OK, out, None, None)
}
