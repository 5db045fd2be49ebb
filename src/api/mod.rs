//! The FHIR REST API (axum), one module per interaction group.
//!
//! Owns: routing under the configurable base path, request plumbing shared by the
//! handlers (body limits, content types, `Prefer`, `If-Match`, FHIR response headers).
//! Reaches behaviour only through `fhirlake-ingest` (writes) and `fhirlake-query`
//! (reads). Must not: contain storage logic.

mod bundle;
mod capabilities;
mod conditional;
mod crud;
mod history;
pub mod observe;
mod patch;
mod search;
mod sql;
mod stream;
mod views;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fhirlake_ingest::bundle::etag_version;
use fhirlake_ingest::{Precondition, Writer};
use fhirlake_schemas::Json;
use fhirlake_schemas::Model;
use fhirlake_schemas::json::ParseLimits;
use fhirlake_schemas::validate::{ValidationOptions, json_issue, validate_resource};
use tower::Layer;
use tower_http::compression::CompressionLayer;
use tower_http::normalize_path::{NormalizePath, NormalizePathLayer};

use crate::config::ApiConfig;
use crate::error::{ApiError, ApiResult, FHIR_JSON};

pub use sql::session as sql_session;

/// Shared state of the API.
pub struct AppState {
    /// The writer of the storage root.
    pub writer: Writer,
    /// API settings.
    pub config: ApiConfig,
    /// The R4 model.
    pub model: &'static Model,
    /// Held by conditional interactions from their search to their acknowledged write, so
    /// two of them never decide on the same state (see `conditional.rs`).
    pub(crate) conditional: tokio::sync::Mutex<()>,
    /// Striped locks that serialise read-modify-write interactions (PATCH) on one resource,
    /// so concurrent patches queue instead of retrying against each other.
    pub(crate) resource_locks: Vec<tokio::sync::Mutex<()>>,
    /// Token postings of the data files searches have read (`search::postings`).
    pub(crate) postings: Arc<fhirlake_query::search::postings::PostingsCache>,
    /// Prometheus metrics (`/metrics`).
    pub metrics: observe::Metrics,
}

impl AppState {
    /// The state of one API over `writer`.
    pub fn new(writer: Writer, config: ApiConfig, model: &'static Model) -> Self {
        let resource_locks = (0..64).map(|_| tokio::sync::Mutex::new(())).collect();
        let postings = Arc::new(fhirlake_query::search::postings::PostingsCache::new(config.search.postings_bytes()));
        let metrics = observe::Metrics::new(writer.clone(), postings.clone());
        Self { writer, config, model, conditional: tokio::sync::Mutex::new(()), resource_locks, postings, metrics }
    }

    /// The lock stripe of `rt/id`.
    pub(crate) fn resource_lock(&self, rt: &str, id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (rt, id).hash(&mut h);
        &self.resource_locks[(h.finish() % self.resource_locks.len() as u64) as usize]
    }

    /// Absolute URL of `relative` (e.g. `Patient/1`) under the public base.
    pub fn url(&self, relative: &str) -> String {
        format!("{}/{relative}", self.config.public_base())
    }

    /// 404 unless `rt` is an R4 resource type.
    pub fn check_type(&self, rt: &str) -> ApiResult<()> {
        if self.model.is_resource_type(rt) {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!("'{rt}' is not a FHIR R4 resource type")))
        }
    }
}

/// The service to serve: [`router`] behind trailing-slash normalisation, so `/fhir/` and
/// `/fhir/Patient/1/` work like `/fhir` and `/fhir/Patient/1`.
pub fn app(state: Arc<AppState>) -> NormalizePath<Router> {
    NormalizePathLayer::trim_trailing_slash().layer(router(state))
}

/// The full router: `/health`, `/metrics` and the FHIR API under the base path, every
/// request through [`observe::track`] (correlation id, span, metrics).
pub fn router(state: Arc<AppState>) -> Router {
    let base = state.config.base_path.trim_end_matches('/').to_string();
    let fhir = Router::new()
        .route("/metadata", get(capabilities::metadata))
        .route("/_history", get(history::system_history))
        .route("/$sql", post(sql::sql))
        .route(
            "/{rt}",
            post(crud::create)
                .get(search::search_get)
                .put(conditional::update)
                .delete(conditional::delete)
                .patch(conditional::patch),
        )
        .route("/{rt}/_search", post(search::search_post))
        .route("/Patient/{id}/$everything", get(search::everything))
        .route("/{rt}/_history", get(history::type_history))
        .route("/{rt}/$validate", post(crud::validate))
        .route("/ViewDefinition/$run", post(views::run_type))
        .route("/ViewDefinition/$viewdefinition-run", post(views::run_type))
        .route("/ViewDefinition/{id}/$run", get(views::run_instance).post(views::run_instance))
        .route("/ViewDefinition/{id}/$materialize", post(views::materialize))
        .route("/{rt}/{id}", get(crud::read).put(crud::update).delete(crud::delete).patch(patch::patch))
        .route("/{rt}/{id}/_history", get(history::instance_history))
        .route("/{rt}/{id}/_history/{vid}", get(crud::vread))
        .route("/", post(bundle::transaction_or_batch).get(search::system_search))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found);
    let fhir = fhir.layer(DefaultBodyLimit::disable());
    let app = Router::new().route("/health", get(observe::health)).route("/metrics", get(observe::metrics));
    let app = if base.is_empty() { app.merge(fhir) } else { app.nest(&base, fhir) };
    app.fallback(not_found)
        .layer(CompressionLayer::new().gzip(true))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe::track))
        .with_state(state)
}

/// The router that answers while the server starts: `/health` says `starting` (503),
/// everything else is a 503 OperationOutcome with `Retry-After`.
pub fn starting_router() -> Router {
    Router::new().route("/health", get(observe::starting)).fallback(|| async {
        ApiError::Unavailable {
            message: "fhirlake is starting (recovering its storage root)".into(),
            retry_after_secs: 1,
        }
    })
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!("no FHIR interaction at {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} is not supported on {}", req.method(), req.uri().path()))
}

/// Reads the request body up to `limit` bytes (413 beyond), after checking its media type.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> ApiResult<bytes::Bytes> {
    check_content_type(headers)?;
    if let Some(len) =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(ApiError::PayloadTooLarge(format!("the body is {len} bytes; the limit here is {limit} bytes")));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(format!("the body is over the limit of {limit} bytes")))
}

fn check_content_type(headers: &HeaderMap) -> ApiResult<()> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let mime = ct.split(';').next().unwrap_or("").trim();
    match mime {
        "application/fhir+json" | "application/json" | "application/json+fhir" => Ok(()),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "content type '{other}' is not supported; send application/fhir+json"
        ))),
    }
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

/// What the client asked for with `Prefer: return=...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreferReturn {
    /// The resource (default).
    Representation,
    /// No body.
    Minimal,
    /// An OperationOutcome.
    OperationOutcome,
}

/// Parses `Prefer`.
pub fn prefer_return(headers: &HeaderMap) -> PreferReturn {
    let v = headers.get("prefer").and_then(|v| v.to_str().ok()).unwrap_or("");
    if v.contains("return=minimal") {
        PreferReturn::Minimal
    } else if v.contains("return=OperationOutcome") {
        PreferReturn::OperationOutcome
    } else {
        PreferReturn::Representation
    }
}

/// The precondition of `If-Match: W/"3"` (or `"3"`, `3`); none without the header.
pub fn if_match(headers: &HeaderMap) -> ApiResult<Precondition> {
    let Some(v) = headers.get(header::IF_MATCH) else { return Ok(Precondition::None) };
    let s = v.to_str().unwrap_or("").trim();
    etag_version(s)
        .map(Precondition::IfMatch)
        .ok_or_else(|| ApiError::BadRequest(format!("If-Match '{s}' is not a version (expected W/\"n\")")))
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
