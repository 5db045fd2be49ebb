//! The HTTP front end of the FHIR API (axum): a thin translation between HTTP and the
//! service layer's operations.
//!
//! Owns: the routes outside the FHIR base (`/health`, `/metrics`), and for every request
//! under the base, turning it into an [`Operation`] — the route (`service::route`, the one
//! routing table), the query, the body read within the interaction's size limit and
//! admitted by its media type, the `Prefer`/`If-*` headers parsed once, the caller — and
//! answering with what [`service::execute`] returns. Must not: contain FHIR behaviour or
//! storage logic (the service layer and the crates below it do).

pub mod observe;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fhirlake_ingest::bundle::etag_version;
use fhirlake_ingest::{Precondition, Writer};
use fhirlake_schemas::Model;
use tower::Layer;
use tower_http::compression::CompressionLayer;
use tower_http::normalize_path::{NormalizePath, NormalizePathLayer};

use crate::config::ApiConfig;
use crate::error::{ApiError, ApiResult};
use crate::service::{self, Caller, Interaction, Operation, PreferReturn, Preferences};

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
    /// Who may do what (off unless [`AppState::with_auth`]).
    pub auth: Arc<crate::auth::Auth>,
}

impl AppState {
    /// The state of one API over `writer`.
    pub fn new(writer: Writer, config: ApiConfig, model: &'static Model) -> Self {
        let resource_locks = (0..64).map(|_| tokio::sync::Mutex::new(())).collect();
        let postings = Arc::new(fhirlake_query::search::postings::PostingsCache::new(config.search.postings_bytes()));
        let metrics = observe::Metrics::new(writer.clone(), postings.clone());
        Self {
            writer,
            config,
            model,
            conditional: tokio::sync::Mutex::new(()),
            resource_locks,
            postings,
            metrics,
            auth: Arc::new(crate::auth::Auth::off()),
        }
    }

    /// The same state authenticating with `auth`.
    pub fn with_auth(mut self, auth: crate::auth::Auth) -> Self {
        self.auth = Arc::new(auth);
        self
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

    /// The part of `path` after the FHIR base (`""` for the base itself), or `None` when
    /// the path is not under it.
    pub fn under_base<'a>(&self, path: &'a str) -> Option<&'a str> {
        let rest = path.strip_prefix(self.config.base_path.trim_end_matches('/'))?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
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
    Router::new()
        .route("/health", get(observe::health))
        .route("/metrics", get(observe::metrics))
        .fallback(fhir)
        .layer(DefaultBodyLimit::disable())
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

/// Every request but `/health` and `/metrics`: under the FHIR base, translated into an
/// operation and executed; elsewhere a 404.
async fn fhir(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let Some(rest) = state.under_base(req.uri().path()).map(str::to_string) else {
        return ApiError::NotFound(format!("no FHIR interaction at {} {}", req.method(), req.uri().path()))
            .into_response();
    };
    if rest == "/.well-known/smart-configuration" {
        return service::capabilities::smart_configuration(&state, req.method());
    }
    match operation(&state, &rest, req).await {
        Ok(op) => match service::execute(&state, op).await {
            Ok(outcome) => outcome.response,
            Err(e) => e.into_response(),
        },
        Err(e) => e.into_response(),
    }
}

/// Most body bytes read (and dropped) from a request whose token is refused.
const UNAUTHENTICATED_DRAIN_BYTES: usize = 1 << 20;

/// The operation an HTTP request asks for; `path` is its path after the base.
async fn operation(state: &AppState, path: &str, req: Request) -> ApiResult<Operation> {
    let route = service::route(req.method(), path)?;
    let query = req.uri().query().unwrap_or("").to_string();
    let address = req.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0);
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    // Capabilities are public; everything else is authenticated before its body is read.
    let identity = if route.interaction == Interaction::Capabilities {
        crate::auth::Identity::Anonymous
    } else {
        let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        match state.auth.identify(authorization, state.model).await {
            Ok(identity) => identity,
            Err(e) => {
                // A small unread body is drained so the client's keep-alive connection
                // stays usable; a large one is not read for an unauthenticated caller (the
                // connection closes instead).
                let _ = axum::body::to_bytes(body, UNAUTHENTICATED_DRAIN_BYTES).await;
                return Err(e);
            }
        }
    };
    let prefs = preferences(route.interaction, &headers)?;
    let mime = prefs.content_type.clone().unwrap_or_default();
    let body = read_body(state, route.interaction, &headers, &mime, body).await?;
    let caller = Caller {
        address,
        user_agent: header_text(&headers, header::USER_AGENT.as_str()),
        request_id: header_text(&headers, observe::REQUEST_ID),
        channel: "http",
        identity,
    };
    let mut op = Operation::new(route, &query);
    op.prefs = prefs;
    op.body = body;
    op.caller = caller;
    Ok(op)
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// `Prefer`, `If-Match` (of the writes that take it), `If-None-Match`, `If-None-Exist`,
/// `Content-Type` and `Accept`.
fn preferences(interaction: Interaction, headers: &HeaderMap) -> ApiResult<Preferences> {
    let prefer: Vec<&str> = headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()).collect();
    let return_ = if prefer.iter().any(|v| v.contains("return=minimal")) {
        PreferReturn::Minimal
    } else if prefer.iter().any(|v| v.contains("return=OperationOutcome")) {
        PreferReturn::OperationOutcome
    } else {
        PreferReturn::Representation
    };
    let strict = prefer.iter().any(|v| v.split([',', ';']).any(|p| p.trim() == "handling=strict"));
    use Interaction as I;
    let takes_if_match =
        matches!(interaction, I::Update | I::ConditionalUpdate | I::Patch | I::ConditionalPatch | I::Delete);
    let if_match = match headers.get(header::IF_MATCH).filter(|_| takes_if_match) {
        None => Precondition::None,
        Some(v) => {
            let s = v.to_str().unwrap_or("").trim();
            etag_version(s)
                .map(Precondition::IfMatch)
                .ok_or_else(|| ApiError::BadRequest(format!("If-Match '{s}' is not a version (expected W/\"n\")")))?
        }
    };
    let if_none_exist = match headers.get("if-none-exist") {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| ApiError::BadRequest("If-None-Exist is not text".into()))?.to_string()),
    };
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| {
        let ct = v.to_str().unwrap_or("").to_ascii_lowercase();
        ct.split(';').next().unwrap_or("").trim().to_string()
    });
    Ok(Preferences {
        return_,
        strict,
        if_match,
        if_none_match: header_text(headers, header::IF_NONE_MATCH.as_str()),
        if_none_exist,
        content_type,
        accept: header_text(headers, header::ACCEPT.as_str()),
    })
}

/// The body, admitted by the interaction's media types and read within its size limit
/// (413 beyond).
async fn read_body(
    state: &AppState,
    interaction: Interaction,
    headers: &HeaderMap,
    mime: &str,
    body: Body,
) -> ApiResult<bytes::Bytes> {
    let limits = &state.config.limits;
    let fhir_json = || match mime {
        "" | "application/fhir+json" | "application/json" | "application/json+fhir" => Ok(()),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "content type '{other}' is not supported; send application/fhir+json"
        ))),
    };
    let limit = match interaction {
        Interaction::Create | Interaction::Update | Interaction::ConditionalUpdate | Interaction::Validate => {
            fhir_json()?;
            limits.max_resource_bytes
        }
        Interaction::Patch | Interaction::ConditionalPatch => {
            if !(mime.starts_with(service::patch::JSON_PATCH)
                || mime.starts_with("application/fhir+json")
                || mime.starts_with("application/json"))
            {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "PATCH takes application/json-patch+json (JSON Patch) or application/fhir+json (FHIRPath \
                     Patch Parameters), not '{mime}'"
                )));
            }
            limits.max_resource_bytes
        }
        Interaction::Bundle | Interaction::ViewRun => {
            fhir_json()?;
            limits.max_bundle_bytes
        }
        Interaction::Sql => state.config.sql.limits().max_sql_bytes + 64 * 1024,
        // `_search` forms, and the bodies of interactions that read none.
        _ => limits.max_resource_bytes,
    };
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
