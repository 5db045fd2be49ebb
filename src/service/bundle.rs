//! `POST [base]`: transaction and batch Bundles.
//!
//! Owns: the HTTP side of the shared Bundle engine (`fhirlake_ingest::bundle`). It enforces
//! the entry limit (413), resolves the searches and reads the Bundle needs (holding the
//! conditional gate when there are searches, see `conditional.rs`), and submits the writes
//! in FHIR's processing order (DELETE, POST, PUT/PATCH; GET entries are read after the
//! writes). A transaction is all-or-nothing: any failed entry fails it with that entry's
//! status (400/404/412/422) and an OperationOutcome naming the entry, and nothing is
//! stored. A batch answers each entry on its own. Must not: re-implement Bundle planning.

use axum::http::{Method, StatusCode};
use fhirlake_ingest::bundle::{BundleKind, EntryAction, EntryError, EntryPlan, entry_count, needs, plan_bundle};
use fhirlake_ingest::import::new_id;
use fhirlake_ingest::writer::format_instant;
use fhirlake_ingest::{OpOutcome, WriteOp};
use fhirlake_schemas::Json;
use fhirlake_schemas::json::write_str;
use fhirlake_schemas::validate::ValidationOptions;
use http_body_util::BodyExt;

use super::write::touched;
use super::{AppState, Caller, Interaction, Operation, Outcome, fhir_response, parse_json, route};
use crate::error::{ApiError, ApiResult};

/// The handler of `POST [base]`.
pub async fn transaction_or_batch(state: &AppState, op: &Operation) -> ApiResult<Outcome> {
    let json = parse_json(state, &op.body)?;
    if json.get("resourceType").and_then(Json::as_str) != Some("Bundle") {
        return Err(ApiError::BadRequest("POST to the base URL needs a Bundle of type transaction or batch".into()));
    }
    let n = entry_count(&json);
    if n > state.config.limits.max_bundle_entries {
        return Err(ApiError::PayloadTooLarge(format!(
            "the Bundle has {n} entries; the limit is {} (serve --max-bundle-entries); split it into several Bundles",
            state.config.limits.max_bundle_entries
        )));
    }
    let needs = needs(state.model, &json);
    // Conditional entries decide on a search: hold the gate until the writes are acknowledged.
    let _gate = if needs.searches.is_empty() { None } else { Some(state.conditional.lock().await) };
    let resolved = super::conditional::resolve(state, &op.access, &needs).await?;
    let plan = plan_bundle(state.model, &json, &ValidationOptions::default(), &mut new_id, &resolved)
        .map_err(ApiError::Invalid)?;
    match plan.kind {
        BundleKind::Collection => {
            Err(ApiError::BadRequest("only transaction and batch Bundles can be posted to the base URL".into()))
        }
        BundleKind::Transaction => transaction(state, op, plan.entries).await,
        BundleKind::Batch => batch(state, op, plan.entries).await,
    }
}

/// What one entry answers.
enum Answer {
    /// Outcomes of its writes (in op order).
    Written(Vec<(WriteOp, OpOutcome)>),
    /// A conditional create's existing match.
    Existing(String, fhirlake_ingest::bundle::Found),
    /// A GET entry's response: status and body.
    Read(StatusCode, String),
    /// An error: status and OperationOutcome.
    Failed(StatusCode, Json),
}

/// Which of the submitted ops each entry owns: (entry position, range of ops).
type Slots = Vec<(usize, std::ops::Range<usize>)>;

/// The entries' writes in FHIR's processing order (DELETE, POST, PUT/PATCH), and the ops
/// each entry owns.
fn ordered_writes(entries: &[EntryPlan]) -> (Vec<WriteOp>, Slots) {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| entries[i].processing_rank());
    let mut ops = Vec::new();
    let mut slots = Vec::new();
    for i in order {
        if let Ok(EntryAction::Write(entry_ops)) = &entries[i].action {
            let start = ops.len();
            ops.extend(entry_ops.iter().cloned());
            slots.push((i, start..ops.len()));
        }
    }
    (ops, slots)
}

/// Each writing entry's answer: its ops with their outcomes.
fn written_answers(answers: &mut [Option<Answer>], ops: &[WriteOp], outcomes: &[OpOutcome], slots: Slots) {
    for (i, range) in slots {
        answers[i] =
            Some(Answer::Written(ops[range.clone()].iter().cloned().zip(outcomes[range].iter().cloned()).collect()));
    }
}

/// Why the caller may not perform `e` (a write entry, or a conditional create that found
/// its match), if it may not: each entry is authorised as the interaction it is.
fn denied(state: &AppState, op: &Operation, e: &EntryPlan) -> Option<ApiError> {
    use crate::auth::Letter;
    let (interaction, letter) = match e.method.as_str() {
        "POST" => (Interaction::Create, Letter::C),
        "PUT" => (Interaction::Update, Letter::U),
        "PATCH" => (Interaction::Patch, Letter::U),
        "DELETE" => (Interaction::Delete, Letter::D),
        _ => return None,
    };
    let (rt, writes): (&str, &[WriteOp]) = match &e.action {
        Ok(EntryAction::Write(ops)) => (ops.first().map_or("", |w| w.resource_type.as_str()), ops.as_slice()),
        Ok(EntryAction::Existing { resource_type, .. }) => (resource_type.as_str(), &[]),
        _ => return None,
    };
    if rt.is_empty() {
        return None; // a conditional delete that matched nothing
    }
    let shared = &state.auth.settings.patient_shared_types;
    let result = crate::auth::authorize(&op.caller.identity, interaction, Some(rt), shared)
        .and_then(|access| super::write::check_writes(state, &access, writes.iter().map(|w| (letter, w))));
    result.err().map(|err| ApiError::Forbidden(format!("Bundle.entry[{}] ({} {rt}): {err}", e.index, e.method)))
}

async fn transaction(state: &AppState, op: &Operation, entries: Vec<EntryPlan>) -> ApiResult<Outcome> {
    // Every entry is authorised before anything is written: one denied entry fails it all.
    if let Some(err) = entries.iter().find_map(|e| denied(state, op, e)) {
        return Err(match err {
            ApiError::Forbidden(m) => ApiError::Forbidden(format!("transaction not applied: {m}")),
            other => other,
        });
    }
    // Any failed entry fails the transaction: the first one's status, every entry's issues.
    if let Some(first) = entries.iter().find_map(|e| e.action.as_ref().err()) {
        let issues: Vec<_> =
            entries.iter().filter_map(|e| e.action.as_ref().err()).flat_map(EntryError::issues).collect();
        return Err(match first {
            EntryError::Invalid(_) => ApiError::Invalid(issues),
            EntryError::PreconditionFailed(_) => {
                ApiError::PreconditionFailed(format!("transaction not applied: {}", messages(&issues)))
            }
            EntryError::NotFound(_) => ApiError::NotFound(format!("transaction not applied: {}", messages(&issues))),
        });
    }
    let (ops, slots) = ordered_writes(&entries);
    // FHIR: a transaction whose entries name the same resource twice fails.
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = ops.iter().find(|op| !seen.insert((op.resource_type.as_str(), op.id.as_str()))) {
        return Err(ApiError::BadRequest(format!(
            "transaction not applied: {}/{} appears in more than one entry",
            dup.resource_type, dup.id
        )));
    }
    let outcomes = if ops.is_empty() { Vec::new() } else { state.writer.submit_atomic(ops.clone()).await? };
    for (i, range) in &slots {
        if let Some(OpOutcome::PreconditionFailed { current }) =
            outcomes[range.clone()].iter().find(|o| matches!(o, OpOutcome::PreconditionFailed { .. }))
        {
            let e = &entries[*i];
            let msg = format!(
                "transaction not applied: Bundle.entry[{}] precondition does not hold (current version {})",
                e.index,
                current.map_or_else(|| "none".into(), |v| v.to_string())
            );
            return Err(if e.implicit_if_match { ApiError::Conflict(msg) } else { ApiError::PreconditionFailed(msg) });
        }
    }
    let mut answers: Vec<Option<Answer>> = (0..entries.len()).map(|_| None).collect();
    written_answers(&mut answers, &ops, &outcomes, slots);
    finish(state, op, "transaction-response", entries, answers).await
}

async fn batch(state: &AppState, op: &Operation, mut entries: Vec<EntryPlan>) -> ApiResult<Outcome> {
    let mut answers: Vec<Option<Answer>> = entries
        .iter()
        .map(|e| {
            e.action.as_ref().err().map(|e| {
                let err = entry_api_error(e);
                Answer::Failed(err.status(), err.outcome())
            })
        })
        .collect();
    // A denied entry is answered 403 and takes no part in the writes.
    for (i, e) in entries.iter_mut().enumerate() {
        if let Some(err) = denied(state, op, e) {
            answers[i] = Some(Answer::Failed(err.status(), err.outcome()));
            e.action = Err(EntryError::Invalid(Vec::new()));
        }
    }
    let (ops, slots) = ordered_writes(&entries);
    let outcomes = if ops.is_empty() { Vec::new() } else { state.writer.submit(ops.clone()).await? };
    written_answers(&mut answers, &ops, &outcomes, slots);
    finish(state, op, "batch-response", entries, answers).await
}

fn entry_api_error(e: &EntryError) -> ApiError {
    match e {
        EntryError::Invalid(i) => ApiError::Invalid(i.clone()),
        EntryError::PreconditionFailed(m) => ApiError::PreconditionFailed(m.clone()),
        EntryError::NotFound(m) => ApiError::NotFound(m.clone()),
    }
}

fn messages(issues: &[fhirlake_schemas::validate::Issue]) -> String {
    issues.iter().map(|i| i.message.as_str()).collect::<Vec<_>>().join("; ")
}

/// Performs the GET entries (after the writes) and writes the response Bundle.
async fn finish(
    state: &AppState,
    op: &Operation,
    bundle_type: &str,
    entries: Vec<EntryPlan>,
    mut answers: Vec<Option<Answer>>,
) -> ApiResult<Outcome> {
    let mut seen = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        match &e.action {
            Ok(EntryAction::Read(url)) => answers[i] = Some(read(state, op, url, &mut seen).await?),
            Ok(EntryAction::Existing { resource_type, found }) => {
                answers[i] = Some(Answer::Existing(resource_type.clone(), found.clone()));
            }
            _ => {}
        }
    }
    let mut out = format!(r#"{{"resourceType":"Bundle","type":"{bundle_type}","entry":["#);
    for (i, answer) in answers.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match answer {
            Some(Answer::Written(writes)) => {
                seen.extend(writes.iter().map(|(w, o)| touched(&w.resource_type, &w.id, o.version())));
                written_entry(state, &mut out, &writes)
            }
            Some(Answer::Existing(rt, found)) => {
                seen.push(touched(&rt, &found.id, Some(found.version)));
                let rel = format!("{rt}/{}", found.id);
                out.push_str(r#"{"fullUrl":"#);
                write_str(&mut out, &state.url(&rel));
                out.push_str(r#","resource":"#);
                out.push_str(&found.raw);
                out.push_str(r#","response":{"status":"200 OK","location":"#);
                write_str(&mut out, &format!("{rel}/_history/{}", found.version));
                out.push_str(&format!(r#","etag":"W/\"{}\""}}}}"#, found.version));
            }
            Some(Answer::Read(status, body)) => {
                let ok = status.is_success() && body.starts_with('{');
                out.push('{');
                if ok {
                    out.push_str(r#""resource":"#);
                    out.push_str(&body);
                    out.push(',');
                }
                out.push_str(r#""response":{"status":"#);
                write_str(&mut out, &status_line(status));
                if !ok && body.starts_with('{') {
                    out.push_str(r#","outcome":"#);
                    out.push_str(&body);
                }
                out.push_str("}}");
            }
            Some(Answer::Failed(status, oo)) => {
                out.push_str(r#"{"response":{"status":"#);
                write_str(&mut out, &status_line(status));
                out.push_str(r#","outcome":"#);
                out.push_str(&oo.to_json_string());
                out.push_str("}}");
            }
            None => out.push_str(r#"{"response":{"status":"200 OK"}}"#),
        }
    }
    out.push_str("]}");
    Ok(Outcome { response: fhir_response(StatusCode::OK, out, None, None), touched: seen })
}

fn status_line(s: StatusCode) -> String {
    format!("{} {}", s.as_u16(), s.canonical_reason().unwrap_or(""))
}

/// One written entry: its single write (or, for a conditional delete, several).
fn written_entry(state: &AppState, out: &mut String, writes: &[(WriteOp, OpOutcome)]) {
    let Some((op, outcome)) = writes.first() else {
        // A conditional delete that matched nothing.
        out.push_str(r#"{"response":{"status":"204 No Content"}}"#);
        return;
    };
    let rel = format!("{}/{}", op.resource_type, op.id);
    let (status, version, ts) = match outcome {
        OpOutcome::Written { version, last_updated_us, created: true, .. } => {
            ("201 Created", Some(*version), Some(*last_updated_us))
        }
        OpOutcome::Written { version, last_updated_us, .. } | OpOutcome::Unchanged { version, last_updated_us, .. } => {
            ("200 OK", Some(*version), Some(*last_updated_us))
        }
        OpOutcome::Deleted { version } => ("204 No Content", *version, None),
        OpOutcome::PreconditionFailed { .. } => ("412 Precondition Failed", None, None),
        OpOutcome::RolledBack => ("409 Conflict", None, None),
    };
    out.push_str(r#"{"fullUrl":"#);
    write_str(out, &state.url(&rel));
    if let OpOutcome::Written { raw, .. } | OpOutcome::Unchanged { raw, .. } = outcome {
        out.push_str(r#","resource":"#);
        out.push_str(raw);
    }
    out.push_str(&format!(r#","response":{{"status":"{status}""#));
    if let Some(v) = version {
        out.push_str(r#","location":"#);
        write_str(out, &format!("{rel}/_history/{v}"));
        out.push_str(&format!(r#","etag":"W/\"{v}\"""#));
    }
    if let Some(t) = ts {
        out.push_str(r#","lastModified":"#);
        write_str(out, &format_instant(t));
    }
    out.push_str("}}");
}

/// A GET entry, executed as the operation its URL names (read, vread, search, history,
/// ...) by the same service, without an HTTP round trip.
async fn read(state: &AppState, bundle: &Operation, url: &str, seen: &mut Vec<super::Touched>) -> ApiResult<Answer> {
    let url = url.trim_start_matches('/');
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let op = route(&Method::GET, path).map(|r| {
        let mut op = Operation::new(r, query);
        op.prefs.accept = bundle.prefs.accept.clone();
        op.caller = Caller { channel: "bundle", ..bundle.caller.clone() };
        op
    });
    let response = match op {
        // The service calls itself here (a GET entry is never a Bundle): boxed recursion.
        Ok(op) => match Box::pin(super::execute(state, op)).await {
            Ok(outcome) => {
                seen.extend(outcome.touched);
                outcome.response
            }
            Err(e) => axum::response::IntoResponse::into_response(e),
        },
        Err(e) => axum::response::IntoResponse::into_response(e),
    };
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| ApiError::Internal(e.to_string()))?.to_bytes();
    Ok(Answer::Read(status, String::from_utf8_lossy(&body).into_owned()))
}
