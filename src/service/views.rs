//! SQL-on-FHIR `$run`: `POST [base]/ViewDefinition/$run` (also `$viewdefinition-run`) and
//! `GET|POST [base]/ViewDefinition/{id}/$run`.
//!
//! Owns: reading the Parameters (`viewResource` inline or `viewReference` to a stored
//! ViewDefinition, inline `resource`s, `patient`, `group`, `_limit`, `_format`), choosing the
//! output format (`_format`, else `Accept`), and streaming the rows. Over the store, the view
//! is planned by `fhirlake_query::views` on the resource type's current table; over inline
//! resources it is run by the reference runner. The `X-Fhirlake-View-Plan` header says
//! `compiled`, `compiled; row by row: <columns>` or `fallback; <why>`. Must not: plan or evaluate views itself.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use datafusion::functions_nested::expr_fn::{array_has_any, make_array};
use datafusion::prelude::{DataFrame, SessionContext, ident, lit};
use fhirlake_ingest::TableKind;
use fhirlake_ingest::compartment::PatientCompartment;
use fhirlake_query::views::output::{Encoder, Format};
use fhirlake_query::views::{self, View};
use fhirlake_schemas::Json;
use fhirlake_schemas::shape::reserved;
use fhirlake_schemas::validate::{Issue, IssueCode};
use fhirlake_schemas::{ShapeOptions, TableShape};

use super::{AppState, Operation, parse_json};
use crate::error::{ApiError, ApiResult};

/// What `$run` was asked to do.
struct RunRequest {
    view: Json,
    resources: Option<Vec<Json>>,
    patient: Option<String>,
    group: Option<String>,
    limit: Option<usize>,
    format: Format,
}

/// `POST [base]/ViewDefinition/$run` and `GET|POST [base]/ViewDefinition/{id}/$run`.
pub async fn run(state: &AppState, op: &Operation) -> ApiResult<Response> {
    let req = request(state, op).await?;
    run_request(state, &op.access, req).await
}

fn invalid(location: &str, message: impl Into<String>) -> ApiError {
    ApiError::Invalid(vec![Issue { code: IssueCode::Invalid, location: location.into(), message: message.into() }])
}

async fn request(state: &AppState, op: &Operation) -> ApiResult<RunRequest> {
    let bytes = &op.body;
    let mut view = match op.id.as_deref() {
        Some(id) => Some(stored(state, id).await?),
        None => None,
    };
    let mut resources: Option<Vec<Json>> = None;
    let (mut patient, mut group, mut limit, mut format) = (None, None, None, None);
    if !bytes.is_empty() {
        let params = parse_json(state, bytes)?;
        if params.get("resourceType").and_then(Json::as_str) != Some("Parameters") {
            return Err(ApiError::BadRequest("$run takes a Parameters resource".into()));
        }
        for p in params.get("parameter").and_then(Json::as_array).unwrap_or(&[]) {
            let name = p.get("name").and_then(Json::as_str).unwrap_or("");
            let value = || p.as_object().and_then(|m| m.iter().find(|(k, _)| k.starts_with("value")).map(|(_, v)| v));
            match name {
                "viewResource" => {
                    view = Some(p.get("resource").cloned().ok_or_else(|| {
                        ApiError::BadRequest("viewResource needs a resource (the ViewDefinition)".into())
                    })?)
                }
                "viewReference" => {
                    let r = value()
                        .and_then(|v| v.get("reference").or(Some(v)))
                        .and_then(Json::as_str)
                        .ok_or_else(|| ApiError::BadRequest("viewReference needs a valueReference".into()))?;
                    let id = r.rsplit('/').next().unwrap_or(r);
                    view = Some(stored(state, id).await?);
                }
                "resource" => {
                    let r = p
                        .get("resource")
                        .cloned()
                        .ok_or_else(|| ApiError::BadRequest("the resource parameter needs a resource".into()))?;
                    let list = resources.get_or_insert_with(Vec::new);
                    // A Bundle stands for its entries.
                    if r.get("resourceType").and_then(Json::as_str) == Some("Bundle") {
                        for e in r.get("entry").and_then(Json::as_array).unwrap_or(&[]) {
                            list.extend(e.get("resource").cloned());
                        }
                    } else {
                        list.push(r);
                    }
                }
                "patient" => patient = value().map(reference_id),
                "group" => group = value().map(reference_id),
                "_limit" => {
                    limit = Some(match value() {
                        Some(Json::Number(n)) => {
                            n.parse().map_err(|_| ApiError::BadRequest(format!("_limit {n} is not a row count")))?
                        }
                        _ => return Err(ApiError::BadRequest("_limit needs a valueInteger".into())),
                    })
                }
                "_format" => format = value().and_then(Json::as_str).map(String::from),
                other => return Err(ApiError::BadRequest(format!("$run has no parameter '{other}'"))),
            }
        }
    }
    for (k, v) in op.params() {
        match k.as_str() {
            "_format" => format = Some(v),
            "_limit" => {
                limit = Some(v.parse().map_err(|_| ApiError::BadRequest(format!("_limit='{v}' is not a number")))?)
            }
            "patient" => patient = Some(reference_id(&Json::String(v))),
            "group" => group = Some(reference_id(&Json::String(v))),
            other => return Err(ApiError::BadRequest(format!("$run has no parameter '{other}'"))),
        }
    }
    let format = super::sql::choose_format(format.as_deref(), op.prefs.accept.as_deref())?;
    let view = view.ok_or_else(|| ApiError::BadRequest("$run needs viewResource or viewReference".into()))?;
    Ok(RunRequest { view, resources, patient, group, limit, format })
}

/// `Patient/1`, `{"reference":"Patient/1"}` or `1` -> `1`.
fn reference_id(v: &Json) -> String {
    let s = v.get("reference").and_then(Json::as_str).or(v.as_str()).unwrap_or("");
    s.rsplit('/').next().unwrap_or(s).to_string()
}

/// The stored resource `rt/id`, current version.
async fn read_current(state: &AppState, rt: &str, id: &str) -> ApiResult<Json> {
    let (_, raw) = super::instance::current(state, rt, id).await?;
    parse_json(state, raw.as_bytes())
}

async fn stored(state: &AppState, id: &str) -> ApiResult<Json> {
    read_current(state, "ViewDefinition", id).await
}

async fn run_request(state: &AppState, access: &crate::auth::Access, req: RunRequest) -> ApiResult<Response> {
    let model = state.model;
    let view = Arc::new(View::parse(model, &req.view).map_err(|e| {
        let location =
            if e.location.is_empty() { "ViewDefinition".into() } else { format!("ViewDefinition.{}", e.location) };
        invalid(&location, e.message)
    })?);
    let columns = view.columns();
    let patients = match (&req.patient, &req.group) {
        (Some(p), _) => Some(vec![p.clone()]),
        (None, Some(g)) => Some(group_members(state, g).await?),
        _ => None,
    };
    if let Some(resources) = req.resources {
        // Inline resources: the reference runner, no store.
        let mut rows = Vec::new();
        let compartment = PatientCompartment::new(model);
        for r in &resources {
            if let Some(p) = &patients
                && !in_compartment(&compartment, r, p)
            {
                continue;
            }
            rows.extend(
                view.rows(model, r).map_err(|e| invalid(&format!("ViewDefinition.{}", e.location), e.message))?,
            );
            if req.limit.is_some_and(|l| rows.len() >= l) {
                break;
            }
        }
        rows.truncate(req.limit.unwrap_or(usize::MAX));
        let batch = views::rows_batch(&columns, rows)?;
        let mut enc = Encoder::new(req.format, columns, batch.schema())?;
        let mut out = enc.begin();
        out.extend(enc.batch(&batch)?);
        out.extend(enc.finish()?);
        return Ok(respond(req.format, Body::from(out), "reference runner (inline resources)"));
    }
    // The live instance: the Delta table and the acknowledged rows it does not hold yet.
    let live = super::live::Live::new(state.writer.view());
    let delta = live.view().table(TableKind::Current, &view.resource);
    let policy = access.rows(model, &view.resource, crate::auth::Letter::S)?;
    let Some(table) = live.current(&view.resource, delta).await?.map(|t| t.restricted(policy)) else {
        // Nothing of this type stored: no rows, in the requested format.
        let schema = views::row_schema(&columns);
        let mut enc = Encoder::new(req.format, columns, schema)?;
        let mut out = enc.begin();
        out.extend(enc.finish()?);
        return Ok(respond(req.format, Body::from(out), "compiled"));
    };
    let ctx = SessionContext::new_with_config(fhirlake_query::catalog::scan_session_config());
    if let Some(delta) = &table.delta {
        delta.update_datafusion_session(&ctx.state()).map_err(fhirlake_query::Error::from)?;
    }
    let provider = table.provider().await?;
    let mut df: DataFrame = ctx.read_table(provider).map_err(fhirlake_query::Error::from)?;
    if let Some(ps) = &patients {
        // Every resource in one of the compartments (not only those they own).
        let list = make_array(ps.iter().map(|p| lit(p.clone())).collect());
        df = df
            .filter(array_has_any(ident(reserved::COMPARTMENT_PATIENTS), list))
            .map_err(fhirlake_query::Error::from)?;
    }
    let shape = TableShape::try_new(model, &view.resource, ShapeOptions::default())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let plan = views::plan(model, view.clone(), &shape, df, false).map_err(view_plan_error)?;
    let mut out = plan.df;
    if let Some(l) = req.limit {
        out = out.limit(0, Some(l)).map_err(fhirlake_query::Error::from)?;
    }
    let how = match (&plan.fallback, plan.row_by_row.as_slice()) {
        (None, []) => "compiled".to_string(),
        (None, cols) => format!("compiled; row by row: {}", cols.join(", ")),
        (Some(why), _) => format!("fallback; {why}"),
    };
    let schema = Arc::new(out.schema().as_arrow().clone());
    let stream = out.execute_stream().await.map_err(fhirlake_query::Error::from)?;
    let enc = Encoder::new(req.format, plan.columns, schema)?;
    let options = super::stream::StreamOptions {
        format: req.format,
        deadline: None,
        header: Some(("x-fhirlake-view-plan", how)),
    };
    super::stream::respond(stream, enc, options, run_error).await
}

fn respond(format: Format, body: Body, how: &str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(format.media_type()));
    if let Ok(v) = HeaderValue::from_str(&how.replace(['\r', '\n'], " ")) {
        r.headers_mut().insert("x-fhirlake-view-plan", v);
    }
    r
}

fn view_plan_error(e: fhirlake_query::Error) -> ApiError {
    match e {
        fhirlake_query::Error::BadView(v) => invalid(&format!("ViewDefinition.{}", v.location), v.message),
        other => other.into(),
    }
}

fn run_error(e: datafusion::error::DataFusionError) -> ApiError {
    match views::view_error(&e) {
        Some(v) => invalid(&format!("ViewDefinition.{}", v.location), v.message),
        None => ApiError::Internal(e.to_string()),
    }
}

/// Patient ids of a Group's `member.entity` references.
async fn group_members(state: &AppState, id: &str) -> ApiResult<Vec<String>> {
    let g = read_current(state, "Group", id).await?;
    Ok(g.get("member")
        .and_then(Json::as_array)
        .unwrap_or(&[])
        .iter()
        .filter_map(|m| m.get("entity")?.get("reference")?.as_str())
        .filter_map(|r| fhirlake_schemas::shape::reference_target(r))
        .filter(|(t, _)| *t == "Patient")
        .map(|(_, id)| id.to_string())
        .collect())
}

/// Whether an inline resource is in the compartment of one of `patients`.
fn in_compartment(compartment: &PatientCompartment, r: &Json, patients: &[String]) -> bool {
    let rt = r.get("resourceType").and_then(Json::as_str).unwrap_or("");
    let id = r.get("id").and_then(Json::as_str).unwrap_or("");
    compartment.members(rt, id, r).1.iter().any(|p| patients.contains(p))
}

/// `POST [base]/ViewDefinition/{id}/$materialize` (`?full=true` to rebuild): builds or
/// refreshes `views/<name>` and answers with a Parameters of what it did.
pub async fn materialize(state: &AppState, op: &Operation) -> ApiResult<Response> {
    let mut full = false;
    for (k, v) in op.params() {
        match (k.as_str(), v.as_str()) {
            ("full", "true") => full = true,
            ("full", "false") => full = false,
            (k, v) => return Err(ApiError::BadRequest(format!("$materialize takes full=true|false, not {k}={v}"))),
        }
    }
    let view = stored(state, op.id()).await?;
    // The view reads the tables as the directory holds them: flush every acknowledged write.
    state.writer.sync().await?;
    let m = crate::materialize::materialize(
        state.writer.root(),
        &view,
        full,
        &|line: &str| tracing::info!(target: "fhirlake::views", "{line}"),
    )
    .await
    .map_err(|e| match e {
        crate::materialize::MaterializeError::BadView(m) => invalid("ViewDefinition", m),
        crate::materialize::MaterializeError::Failed(m) => ApiError::Internal(m),
    })?;
    let mut body = String::from(r#"{"resourceType":"Parameters","parameter":["#);
    let mut first = true;
    let mut param = |name: &str, kind: &str, value: String| {
        if !first {
            body.push(',');
        }
        first = false;
        body.push_str(&format!(r#"{{"name":"{name}","{kind}":{value}}}"#));
    };
    let s = |v: &str| Json::String(v.to_string()).to_json_string();
    param("table", "valueString", s(&format!("views.{}", m.name)));
    param("mode", "valueCode", s(m.mode));
    param("resources", "valueInteger", m.resources.to_string());
    param("rows", "valueInteger", m.rows.to_string());
    param("sourceVersion", "valueInteger", m.source_version.to_string());
    if let Some(f) = &m.fallback {
        param("fallback", "valueString", s(f));
    }
    body.push_str("]}");
    Ok(super::fhir_response(StatusCode::OK, body, None, None))
}
