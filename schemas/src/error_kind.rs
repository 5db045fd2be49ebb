//! What kind of failure an error is, for whoever answers the client.
//!
//! Owns: [`ErrorKind`], the one classification every workspace crate's errors expose
//! (`fhirlake_ingest::Error::kind`, `fhirlake_query::Error::kind`, ...), each by an
//! exhaustive match. The root crate derives the HTTP status, the OperationOutcome issue
//! code and the gRPC status from a kind in one table (`src/error.rs`). Must not: know
//! about HTTP or gRPC types (this crate has no such dependency).

/// The kinds of failure a client can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed: bad syntax, bad parameter, bad SQL (400).
    Invalid,
    /// No valid credentials (401, with `WWW-Authenticate`).
    Unauthenticated,
    /// Valid credentials without the right, or a statement the sandbox refuses (403).
    Forbidden,
    /// No such resource, type, version or route (404).
    NotFound,
    /// The method is not supported on this URL (405).
    MethodNotAllowed,
    /// The request ran past its time limit and was cancelled (408).
    Timeout,
    /// The state changed under the request, or it conflicts with it (409).
    Conflict,
    /// The resource was deleted (410).
    Gone,
    /// A precondition (`If-Match`, conditional criteria) does not hold (412).
    PreconditionFailed,
    /// The request or its result is over a size or memory limit (413).
    TooLarge,
    /// The body's media type is not one this endpoint reads (415).
    UnsupportedMediaType,
    /// The content is well-formed but invalid (a resource against R4, a view) (422).
    Unprocessable,
    /// The client is asking faster than allowed (429, with `Retry-After`).
    TooManyRequests,
    /// The server cannot take the request now: shutting down, over a memory bound, the
    /// storage root held elsewhere (503, with `Retry-After`).
    Unavailable,
    /// A fault of the server; details go to the log, not to the client (500).
    Internal,
}

impl ErrorKind {
    /// Every kind, for tests that check a mapping is total.
    pub const ALL: [ErrorKind; 15] = [
        ErrorKind::Invalid,
        ErrorKind::Unauthenticated,
        ErrorKind::Forbidden,
        ErrorKind::NotFound,
        ErrorKind::MethodNotAllowed,
        ErrorKind::Timeout,
        ErrorKind::Conflict,
        ErrorKind::Gone,
        ErrorKind::PreconditionFailed,
        ErrorKind::TooLarge,
        ErrorKind::UnsupportedMediaType,
        ErrorKind::Unprocessable,
        ErrorKind::TooManyRequests,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
    ];
}
