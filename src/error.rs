//! The one place that maps every error to an HTTP status, an OperationOutcome and a gRPC
//! status.
//!
//! Owns: [`ApiError`], the errors the front ends answer with, its [`ErrorKind`] (an
//! exhaustive match), and [`mapping`], the one table from a kind to the HTTP status, the
//! OperationOutcome `issue.code` and the gRPC code. The workspace crates' errors classify
//! themselves (`fhirlake_ingest::Error::kind`, `fhirlake_query::Error::kind`); converting
//! them here keeps their kind. Internal details (Delta, object store, DataFusion messages)
//! go to `tracing`, never to clients. Must not: decide behaviour.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fhirlake_schemas::validate::{Issue, IssueCode, operation_outcome};
use fhirlake_schemas::{ErrorKind, Json};

/// The FHIR JSON media type served.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// How a kind of error is answered on each protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// HTTP status.
    pub status: StatusCode,
    /// OperationOutcome `issue.code` (FHIR IssueType) of message-only errors; located
    /// validation issues keep their own codes.
    pub issue_code: &'static str,
    /// gRPC status code (Flight SQL).
    pub grpc: tonic::Code,
}

/// The one table: HTTP status, issue code and gRPC code of each kind.
pub const fn mapping(kind: ErrorKind) -> Mapping {
    use tonic::Code;
    let (status, issue_code, grpc) = match kind {
        ErrorKind::Invalid => (StatusCode::BAD_REQUEST, "invalid", Code::InvalidArgument),
        ErrorKind::Unauthenticated => (StatusCode::UNAUTHORIZED, "login", Code::Unauthenticated),
        ErrorKind::Forbidden => (StatusCode::FORBIDDEN, "forbidden", Code::PermissionDenied),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not-found", Code::NotFound),
        ErrorKind::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "not-supported", Code::Unimplemented),
        ErrorKind::Timeout => (StatusCode::REQUEST_TIMEOUT, "timeout", Code::DeadlineExceeded),
        ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict", Code::Aborted),
        ErrorKind::Gone => (StatusCode::GONE, "deleted", Code::NotFound),
        ErrorKind::PreconditionFailed => (StatusCode::PRECONDITION_FAILED, "conflict", Code::FailedPrecondition),
        ErrorKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too-long", Code::ResourceExhausted),
        ErrorKind::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "not-supported", Code::InvalidArgument),
        ErrorKind::Unprocessable => (StatusCode::UNPROCESSABLE_ENTITY, "invalid", Code::InvalidArgument),
        ErrorKind::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "throttled", Code::ResourceExhausted),
        ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "transient", Code::Unavailable),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "exception", Code::Internal),
    };
    Mapping { status, issue_code, grpc }
}

/// Every error the front ends answer with.
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
    /// No valid credentials (401, `WWW-Authenticate: Bearer error="invalid_token"`).
    #[error("{0}")]
    Unauthenticated(String),
    /// Not allowed here, e.g. a SQL statement the read-only sandbox refuses (403).
    #[error("{0}")]
    Forbidden(String),
    /// Unknown resource type, resource or route (404).
    #[error("{0}")]
    NotFound(String),
    /// The method is not allowed here (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request took longer than its limit and was cancelled (408).
    #[error("{0}")]
    Timeout(String),
    /// Version conflict (409).
    #[error("{0}")]
    Conflict(String),
    /// The resource was deleted (410).
    #[error("{0}")]
    Gone(String),
    /// `If-Match` or a condition did not hold (412).
    #[error("{0}")]
    PreconditionFailed(String),
    /// The body, or what it asks for, is over a limit (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Content type not supported (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Too many requests; retry after the given seconds (429).
    #[error("{message}")]
    TooManyRequests {
        /// What to do.
        message: String,
        /// `Retry-After`, in seconds.
        retry_after_secs: u64,
    },
    /// The server cannot take the request now (503); retry after the given seconds.
    #[error("{message}")]
    Unavailable {
        /// Why, and what to do.
        message: String,
        /// `Retry-After`, in seconds.
        retry_after_secs: u64,
    },
    /// Anything internal (500); the details are logged, not returned.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The kind of the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ApiError::BadRequest(_) | ApiError::BadJson(_) => ErrorKind::Invalid,
            ApiError::Invalid(_) => ErrorKind::Unprocessable,
            ApiError::Unauthenticated(_) => ErrorKind::Unauthenticated,
            ApiError::Forbidden(_) => ErrorKind::Forbidden,
            ApiError::NotFound(_) => ErrorKind::NotFound,
            ApiError::MethodNotAllowed(_) => ErrorKind::MethodNotAllowed,
            ApiError::Timeout(_) => ErrorKind::Timeout,
            ApiError::Conflict(_) => ErrorKind::Conflict,
            ApiError::Gone(_) => ErrorKind::Gone,
            ApiError::PreconditionFailed(_) => ErrorKind::PreconditionFailed,
            ApiError::PayloadTooLarge(_) => ErrorKind::TooLarge,
            ApiError::UnsupportedMediaType(_) => ErrorKind::UnsupportedMediaType,
            ApiError::TooManyRequests { .. } => ErrorKind::TooManyRequests,
            ApiError::Unavailable { .. } => ErrorKind::Unavailable,
            ApiError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// An error of `kind` saying `message` (for an internal error: logged, not shown).
    pub fn of_kind(kind: ErrorKind, message: String) -> Self {
        match kind {
            ErrorKind::Invalid => ApiError::BadRequest(message),
            ErrorKind::Unprocessable => {
                ApiError::Invalid(vec![Issue { code: IssueCode::Invalid, location: String::new(), message }])
            }
            ErrorKind::Unauthenticated => ApiError::Unauthenticated(message),
            ErrorKind::Forbidden => ApiError::Forbidden(message),
            ErrorKind::NotFound => ApiError::NotFound(message),
            ErrorKind::MethodNotAllowed => ApiError::MethodNotAllowed(message),
            ErrorKind::Timeout => ApiError::Timeout(message),
            ErrorKind::Conflict => ApiError::Conflict(message),
            ErrorKind::Gone => ApiError::Gone(message),
            ErrorKind::PreconditionFailed => ApiError::PreconditionFailed(message),
            ErrorKind::TooLarge => ApiError::PayloadTooLarge(message),
            ErrorKind::UnsupportedMediaType => ApiError::UnsupportedMediaType(message),
            ErrorKind::TooManyRequests => ApiError::TooManyRequests { message, retry_after_secs: 1 },
            ErrorKind::Unavailable => ApiError::Unavailable { message, retry_after_secs: 1 },
            ErrorKind::Internal => ApiError::Internal(message),
        }
    }

    /// HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        mapping(self.kind()).status
    }

    /// gRPC status of the error (Flight SQL), with the client's message.
    pub fn grpc_status(&self) -> tonic::Status {
        let message = self.issues().into_iter().map(|i| i.message).collect::<Vec<_>>().join("; ");
        tonic::Status::new(mapping(self.kind()).grpc, message)
    }

    /// Headers the error's kind carries: the bearer challenge of a 401, `Retry-After` of
    /// a 429 or 503.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        match self {
            ApiError::Unauthenticated(_) => {
                vec![(header::WWW_AUTHENTICATE, HeaderValue::from_static(r#"Bearer error="invalid_token""#))]
            }
            ApiError::TooManyRequests { retry_after_secs, .. } | ApiError::Unavailable { retry_after_secs, .. } => {
                vec![(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs))]
            }
            _ => Vec::new(),
        }
    }

    /// The issues reported to the client: located validation issues as they are, else
    /// one issue with the message (an internal error's details stay in the log).
    pub fn issues(&self) -> Vec<Issue> {
        let message = match self {
            ApiError::BadJson(i) | ApiError::Invalid(i) => return i.clone(),
            ApiError::Internal(_) => "internal error; the server log has the details".to_string(),
            other => other.to_string(),
        };
        vec![Issue { code: IssueCode::Invalid, location: String::new(), message }]
    }

    /// The OperationOutcome body: each issue's code is the kind's, except located
    /// validation issues, which keep the validator's (`structure`, `required`, ...).
    pub fn outcome(&self) -> Json {
        let mut oo = operation_outcome(&self.issues());
        if !matches!(self, ApiError::BadJson(_) | ApiError::Invalid(_))
            && let Some(Json::Array(items)) = oo.get_mut("issue")
        {
            for i in items {
                i.set("code", Json::String(mapping(self.kind()).issue_code.into()));
            }
        }
        oo
    }
}

impl From<fhirlake_ingest::Error> for ApiError {
    fn from(e: fhirlake_ingest::Error) -> Self {
        ApiError::of_kind(e.kind(), e.to_string())
    }
}

impl From<fhirlake_query::Error> for ApiError {
    fn from(e: fhirlake_query::Error) -> Self {
        if let fhirlake_query::Error::BadView(v) = e {
            // A view error is located in the ViewDefinition.
            return ApiError::Invalid(vec![Issue {
                code: IssueCode::Invalid,
                location: format!("ViewDefinition.{}", v.location),
                message: v.message,
            }]);
        }
        ApiError::of_kind(e.kind(), e.client_message())
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
        for (name, value) in self.headers() {
            r.headers_mut().insert(name, value);
        }
        r
    }
}

/// Result of an API handler.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind has its own HTTP status, an issue code from FHIR's IssueType and a
    /// gRPC code, and an error of each kind answers with them (and its headers).
    #[test]
    fn every_kind_maps_to_http_outcome_and_grpc() {
        let want: [(ErrorKind, u16, &str, tonic::Code); 15] = [
            (ErrorKind::Invalid, 400, "invalid", tonic::Code::InvalidArgument),
            (ErrorKind::Unauthenticated, 401, "login", tonic::Code::Unauthenticated),
            (ErrorKind::Forbidden, 403, "forbidden", tonic::Code::PermissionDenied),
            (ErrorKind::NotFound, 404, "not-found", tonic::Code::NotFound),
            (ErrorKind::MethodNotAllowed, 405, "not-supported", tonic::Code::Unimplemented),
            (ErrorKind::Timeout, 408, "timeout", tonic::Code::DeadlineExceeded),
            (ErrorKind::Conflict, 409, "conflict", tonic::Code::Aborted),
            (ErrorKind::Gone, 410, "deleted", tonic::Code::NotFound),
            (ErrorKind::PreconditionFailed, 412, "conflict", tonic::Code::FailedPrecondition),
            (ErrorKind::TooLarge, 413, "too-long", tonic::Code::ResourceExhausted),
            (ErrorKind::UnsupportedMediaType, 415, "not-supported", tonic::Code::InvalidArgument),
            (ErrorKind::Unprocessable, 422, "invalid", tonic::Code::InvalidArgument),
            (ErrorKind::TooManyRequests, 429, "throttled", tonic::Code::ResourceExhausted),
            (ErrorKind::Unavailable, 503, "transient", tonic::Code::Unavailable),
            (ErrorKind::Internal, 500, "exception", tonic::Code::Internal),
        ];
        assert_eq!(want.map(|w| w.0), ErrorKind::ALL, "the table lists every kind once, in order");
        let mut statuses: Vec<u16> = want.iter().map(|w| w.1).collect();
        statuses.sort_unstable();
        statuses.dedup();
        assert_eq!(statuses.len(), want.len(), "each kind has its own HTTP status");
        for (kind, status, code, grpc) in want {
            let m = mapping(kind);
            assert_eq!((m.status.as_u16(), m.issue_code, m.grpc), (status, code, grpc), "{kind:?}");
            let e = ApiError::of_kind(kind, "why".into());
            assert_eq!(e.kind(), kind, "of_kind and kind agree");
            assert_eq!(e.status().as_u16(), status);
            assert_eq!(e.grpc_status().code(), grpc);
            let oo = e.outcome().to_json_string();
            let issue_code = if kind == ErrorKind::Unprocessable { "invalid" } else { code };
            assert!(oo.contains(&format!(r#""code":"{issue_code}""#)), "{kind:?}: {oo}");
            let r = e.into_response();
            assert_eq!(r.status().as_u16(), status);
            let has = |h: HeaderName| r.headers().contains_key(h);
            assert_eq!(has(header::WWW_AUTHENTICATE), kind == ErrorKind::Unauthenticated, "{kind:?}");
            assert_eq!(
                has(header::RETRY_AFTER),
                matches!(kind, ErrorKind::TooManyRequests | ErrorKind::Unavailable),
                "{kind:?}"
            );
        }
    }

    /// The workspace crates' errors keep their kind through the conversion: a search
    /// error is a 400 wherever it comes from, a shutdown a 503, a view error a located 422.
    #[test]
    fn crate_errors_keep_their_kind() {
        let search = ApiError::from(fhirlake_query::Error::BadSearch("cannot sort on the composite 'x'".into()));
        assert_eq!(search.status(), StatusCode::BAD_REQUEST);
        assert!(search.outcome().to_json_string().contains("cannot sort on the composite"));
        let shutdown = ApiError::from(fhirlake_ingest::Error::ShuttingDown);
        assert_eq!(shutdown.status(), StatusCode::SERVICE_UNAVAILABLE);
        let internal = ApiError::from(fhirlake_ingest::Error::Journal("disk on fire".into()));
        assert_eq!(internal.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!internal.outcome().to_json_string().contains("disk on fire"), "internal details stay in the log");
        let plan = fhirlake_query::Error::DataFusion(datafusion::error::DataFusionError::Plan("no column x".into()));
        let plan = ApiError::from(plan);
        assert_eq!((plan.status(), plan.issues()[0].message.as_str()), (StatusCode::BAD_REQUEST, "no column x"));
        let memory =
            fhirlake_query::Error::DataFusion(datafusion::error::DataFusionError::ResourcesExhausted("pool".into()));
        assert_eq!(ApiError::from(memory).status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
