//! The one place that maps every error to an HTTP status and an OperationOutcome.
//!
//! Owns: [`ApiError`], the errors the HTTP layer can return, and its exhaustive mapping to
//! status codes and OperationOutcome `issue.code`s. Internal details (Delta, object store,
//! DataFusion messages) go to `tracing`, never to clients. Must not: decide behaviour.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fhirlake_schemas::Json;
use fhirlake_schemas::validate::{Issue, IssueCode, operation_outcome};

/// The FHIR JSON media type served.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// Every error the FHIR API can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request: bad JSON, type or id mismatch, bad parameter (400).
    #[error("{0}")]
    BadRequest(String),
    /// The body is not valid JSON or breaks a parse limit (400), with located issues.
    #[error("invalid JSON")]
    BadJson(Vec<Issue>),
    /// The resource is invalid against the R4 definitions (422).
    #[error("invalid resource")]
    Invalid(Vec<Issue>),
    /// Unknown resource type, resource or route (404).
    #[error("{0}")]
    NotFound(String),
    /// The method is not allowed here (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// Not allowed here, e.g. a SQL statement the read-only sandbox refuses (403).
    #[error("{0}")]
    Forbidden(String),
    /// The request took longer than its limit and was cancelled (408).
    #[error("{0}")]
    Timeout(String),
    /// Version conflict (409).
    #[error("{0}")]
    Conflict(String),
    /// The resource was deleted (410).
    #[error("{0}")]
    Gone(String),
    /// `If-Match` did not hold (412).
    #[error("{0}")]
    PreconditionFailed(String),
    /// The body is over the size limit (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Content type not supported (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The server is shutting down (503).
    #[error("the server is shutting down")]
    Unavailable,
    /// Anything internal (500); the details are logged, not returned.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::BadJson(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The issues reported to the client.
    pub fn issues(&self) -> Vec<Issue> {
        let one = |code: IssueCode, message: String| vec![Issue { code, location: String::new(), message }];
        match self {
            ApiError::BadJson(i) | ApiError::Invalid(i) => i.clone(),
            ApiError::BadRequest(m) => one(IssueCode::Invalid, m.clone()),
            ApiError::NotFound(m) => one(IssueCode::Invalid, m.clone()),
            ApiError::MethodNotAllowed(m) => one(IssueCode::Invalid, m.clone()),
            ApiError::Forbidden(m) => one(IssueCode::Invalid, m.clone()),
            ApiError::Timeout(m) => one(IssueCode::Invalid, m.clone()),
            ApiError::Conflict(m) => one(IssueCode::Invalid, m.clone()),
            ApiError::Gone(m) => one(IssueCode::Invalid, m.clone()),
            ApiError::PreconditionFailed(m) => one(IssueCode::Invalid, m.clone()),
            ApiError::PayloadTooLarge(m) => one(IssueCode::TooLong, m.clone()),
            ApiError::UnsupportedMediaType(m) => one(IssueCode::Invalid, m.clone()),
            ApiError::Unavailable => one(IssueCode::Invalid, "the server is shutting down; retry shortly".into()),
            ApiError::Internal(_) => one(IssueCode::Invalid, "internal error; the server log has the details".into()),
        }
    }

    /// The OperationOutcome body.
    pub fn outcome(&self) -> Json {
        let mut oo = operation_outcome(&self.issues());
        // Refine issue codes that the validator's vocabulary does not carry.
        let code = match self {
            ApiError::NotFound(_) | ApiError::Gone(_) => Some("not-found"),
            ApiError::MethodNotAllowed(_) | ApiError::UnsupportedMediaType(_) => Some("not-supported"),
            ApiError::Conflict(_) | ApiError::PreconditionFailed(_) => Some("conflict"),
            ApiError::Forbidden(_) => Some("forbidden"),
            ApiError::Timeout(_) => Some("timeout"),
            ApiError::Internal(_) => Some("exception"),
            ApiError::Unavailable => Some("transient"),
            _ => None,
        };
        if let (Some(code), Some(Json::Array(items))) = (code, oo.get_mut("issue")) {
            for i in items {
                i.set("code", Json::String(code.into()));
            }
        }
        oo
    }
}

impl From<fhirlake_ingest::Error> for ApiError {
    fn from(e: fhirlake_ingest::Error) -> Self {
        match e {
            fhirlake_ingest::Error::ShuttingDown => ApiError::Unavailable,
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<fhirlake_query::Error> for ApiError {
    fn from(e: fhirlake_query::Error) -> Self {
        match e {
            fhirlake_query::Error::BadSql(m) => ApiError::BadRequest(m),
            fhirlake_query::Error::Forbidden(m) => ApiError::Forbidden(m),
            fhirlake_query::Error::TooLarge(m) => ApiError::PayloadTooLarge(m),
            fhirlake_query::Error::Timeout(m) => ApiError::Timeout(m),
            fhirlake_query::Error::DataFusion(e) => match e.find_root() {
                datafusion::error::DataFusionError::ResourcesExhausted(m) => {
                    ApiError::PayloadTooLarge(format!("the query needs more memory than its limit: {m}"))
                }
                // Found while planning the execution (e.g. a correlated subquery form the
                // engine does not run): the query's fault, not the server's.
                datafusion::error::DataFusionError::NotImplemented(m) => {
                    ApiError::BadRequest(format!("not supported: {m}"))
                }
                datafusion::error::DataFusionError::Plan(m) => ApiError::BadRequest(m.clone()),
                _ => ApiError::Internal(e.to_string()),
            },
            fhirlake_query::Error::BadView(v) => ApiError::Invalid(vec![Issue {
                code: IssueCode::Invalid,
                location: format!("ViewDefinition.{}", v.location),
                message: v.message,
            }]),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let body = self.outcome().to_json_string();
        let mut r = (self.status(), body).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        r
    }
}

/// Result of an API handler.
pub type ApiResult<T> = Result<T, ApiError>;
