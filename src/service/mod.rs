//! The service layer: where a request, whichever front end it came through, becomes an
//! operation that is checked, executed and answered.
//!
//! Owns: [`execute`], the one entry every front end calls — the HTTP API (`crate::api`),
//! Bundle entries (GET entries included, without an HTTP round trip), and Flight SQL
//! (through [`sql::plan`], after authorising its call itself) — and the modules that carry
//! out each interaction. `execute` is the one place where an operation is authorised
//! (`crate::auth::authorize`: its `Access` then travels in the operation) and its type and
//! id are checked, where audit will be added, and where its [`Outcome`] says what it
//! touched. The modules depend
//! downwards only: `instance`, `conditional` and `patch` write through `write`; nothing
//! here imports the HTTP front end. Must not: parse HTTP requests (the front end turns them
//! into [`Operation`]s) or plan/write storage itself (`fhirlake-query`, `fhirlake-ingest`).

pub mod bundle;
pub mod capabilities;
pub mod conditional;
pub mod history;
pub mod instance;
pub(crate) mod live;
pub mod operation;
pub mod patch;
pub mod search;
pub mod sql;
pub(crate) mod stream;
pub mod views;
pub mod write;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fhirlake_schemas::Json;
use fhirlake_schemas::json::ParseLimits;
use fhirlake_schemas::validate::{ValidationOptions, json_issue, validate_resource};

pub use operation::{Caller, Interaction, Operation, PreferReturn, Preferences, Route, route};

use crate::api::AppState;
use crate::error::{ApiError, ApiResult, FHIR_JSON};

/// What an operation touched, for the audit table: a resource read, returned or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touched {
    /// Its type.
    pub resource_type: String,
    /// Its id.
    pub id: String,
    /// The version read or written, when one is known.
    pub version: Option<i64>,
    /// Its owning patient (Patient compartment), when it has one.
    pub owner: Option<String>,
}

/// The answer to an operation: the FHIR response (status, headers, body; FHIR's REST
/// interactions are defined by them) and what the operation touched.
#[derive(Debug)]
pub struct Outcome {
    /// The response.
    pub response: Response,
    /// The resources read, returned or written.
    pub touched: Vec<Touched>,
}

impl Outcome {
    /// An outcome that touched nothing (capabilities, SQL, errors of the client).
    pub fn of(response: Response) -> Self {
        Outcome { response, touched: Vec::new() }
    }
}

/// Executes `op`: checks what it addresses, runs it, and says what it touched.
pub async fn execute(state: &AppState, mut op: Operation) -> ApiResult<Outcome> {
    op.access = crate::auth::authorize(
        &op.caller.identity,
        op.interaction,
        op.resource_type.as_deref(),
        &state.auth.settings.patient_shared_types,
    )?;
    if let Some(rt) = &op.resource_type {
        state.check_type(rt)?;
    }
    if let Some(id) = &op.id {
        check_id(id)?;
    }
    let mut outcome = match op.interaction {
        Interaction::Capabilities => Outcome::of(capabilities::metadata(state)),
        Interaction::Read => instance::read(state, &op).await?,
        Interaction::Vread => instance::vread(state, &op).await?,
        Interaction::Create => match op.prefs.if_none_exist.clone() {
            Some(criteria) => conditional::create_if_none_exist(state, &op, &criteria).await?,
            None => instance::create(state, &op).await?,
        },
        Interaction::Update => instance::update(state, &op).await?,
        Interaction::Delete => instance::delete(state, &op).await?,
        Interaction::Patch => patch::patch(state, &op).await?,
        Interaction::ConditionalUpdate => conditional::update(state, &op).await?,
        Interaction::ConditionalDelete => conditional::delete(state, &op).await?,
        Interaction::ConditionalPatch => conditional::patch(state, &op).await?,
        Interaction::Validate => Outcome::of(instance::validate(state, &op)?),
        Interaction::SearchType => search::search_type(state, &op).await?,
        Interaction::SearchSystem => search::search_system(state, &op).await?,
        Interaction::Everything => search::everything(state, &op).await?,
        Interaction::HistoryInstance | Interaction::HistoryType | Interaction::HistorySystem => {
            history::history(state, &op).await?
        }
        Interaction::Bundle => bundle::transaction_or_batch(state, &op).await?,
        Interaction::Sql => Outcome::of(sql::sql(state, &op).await?),
        Interaction::ViewRun => Outcome::of(views::run(state, &op).await?),
        Interaction::Materialize => Outcome::of(views::materialize(state, &op).await?),
    };
    for t in &mut outcome.touched {
        if t.owner.is_none() {
            t.owner = state.writer.owner_of(&t.resource_type, &t.id);
        }
    }
    Ok(outcome)
}

/// 400 unless `id` is a FHIR id.
pub(crate) fn check_id(id: &str) -> ApiResult<()> {
    if fhirlake_schemas::validate::is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!("'{id}' is not a valid FHIR id (1-64 of A-Z a-z 0-9 - .)")))
    }
}

/// The value of query parameter `name`, if present.
pub(crate) fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Parses a JSON body within the API's limits; syntax and limit errors are 400s.
pub fn parse_json(state: &AppState, bytes: &[u8]) -> ApiResult<Json> {
    let limits = ParseLimits {
        max_depth: state.config.limits.max_json_depth,
        max_string_bytes: state.config.limits.max_resource_bytes,
    };
    Json::parse(bytes, limits).map_err(|e| ApiError::BadJson(vec![json_issue(&e)]))
}

/// Parses and validates a resource body.
pub fn parse_resource(state: &AppState, bytes: &[u8]) -> ApiResult<(Json, String)> {
    let json = parse_json(state, bytes)?;
    let options = ValidationOptions::default();
    let rt = validate_resource(state.model, &json, &options).map_err(ApiError::Invalid)?;
    Ok((json, rt))
}

/// HTTP-date of epoch microseconds.
pub fn http_date(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).unwrap_or_default().format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// A FHIR JSON response with version headers.
pub fn fhir_response(status: StatusCode, body: String, version: Option<i64>, last_updated_us: Option<i64>) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    if let Some(v) = version
        && let Ok(v) = HeaderValue::from_str(&format!("W/\"{v}\""))
    {
        h.insert(header::ETAG, v);
    }
    if let Some(t) = last_updated_us
        && let Ok(v) = HeaderValue::from_str(&http_date(t))
    {
        h.insert(header::LAST_MODIFIED, v);
    }
    r
}

/// An informational OperationOutcome.
pub fn info_outcome(message: &str) -> String {
    let mut s = String::from(
        r#"{"resourceType":"OperationOutcome","issue":[{"severity":"information","code":"informational","diagnostics":"#,
    );
    fhirlake_schemas::json::write_str(&mut s, message);
    s.push_str("}]}");
    s
}

/// Parses a FHIR instant/dateTime query value to epoch microseconds.
pub fn parse_time_param(name: &str, v: &str) -> ApiResult<i64> {
    use fhirlake_schemas::datetime::{Temporal, parse};
    parse(Temporal::DateTime, v).ok_or_else(|| {
        ApiError::BadRequest(format!("{name}='{v}' is not a valid FHIR dateTime (e.g. 2024-01-31T12:00:00Z)"))
    })
}
