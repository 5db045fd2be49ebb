//! fhirlake-query: everything that reads.
//!
//! Owns the DataFusion session over an instance's Delta tables ([`catalog`]: SQL names,
//! the read-only sandbox, time travel), the FHIR helper functions of SQL ([`functions`]),
//! the history reads behind `read`, `vread` and `_history` ([`history`]), FHIR search as
//! DataFusion plans with token postings ([`search`]), and SQL-on-FHIR ViewDefinitions
//! compiled to plans, their output encodings and refresh reads ([`views`]). Must not: write, or depend on `fhirlake-ingest`; it is handed Delta
//! tables or a storage-root URL and object store by the root crate.

pub mod buffered;
pub mod catalog;
pub mod functions;
pub mod search;
pub mod views;

pub use catalog::SqlSession;

/// Errors of the read side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SQL is invalid (syntax, unknown table or column): a 400.
    #[error("{0}")]
    BadSql(String),
    /// The statement is not one the read-only sandbox runs (DDL, DML, COPY, SET): a 403.
    #[error("{0}")]
    Forbidden(String),
    /// The SQL text is over the size limit: a 413.
    #[error("{0}")]
    TooLarge(String),
    /// Planning or running took longer than the limit; the query was cancelled: a 408.
    #[error("{0}")]
    Timeout(String),
    /// DataFusion error while planning or running.
    #[error("query failed: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Delta Lake error.
    #[error("delta: {0}")]
    Delta(#[from] deltalake::DeltaTableError),
    /// Arrow error.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A search that cannot run (bad value, unsupported feature): a 400.
    #[error("{0}")]
    BadSearch(String),
    /// A ViewDefinition that cannot run (a 400/422 for the user).
    #[error("{0}")]
    BadView(#[from] fhirlake_schemas::sof::ViewError),
    /// Parquet encoding error.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Object store error.
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// A file of the storage layout this release cannot read (corrupt, or newer).
    #[error("{0}")]
    Storage(String),
}

impl Error {
    /// How a client is told about it (the root crate derives HTTP and gRPC statuses).
    pub fn kind(&self) -> fhirlake_schemas::ErrorKind {
        use fhirlake_schemas::ErrorKind;
        match self {
            Error::BadSql(_) | Error::BadSearch(_) => ErrorKind::Invalid,
            Error::Forbidden(_) => ErrorKind::Forbidden,
            Error::TooLarge(_) => ErrorKind::TooLarge,
            Error::Timeout(_) => ErrorKind::Timeout,
            Error::BadView(_) => ErrorKind::Unprocessable,
            Error::DataFusion(e) => datafusion_kind(e.find_root()),
            Error::Delta(_) | Error::Arrow(_) | Error::Parquet(_) | Error::ObjectStore(_) | Error::Storage(_) => {
                ErrorKind::Internal
            }
        }
    }

    /// What the client is told: the message of the error DataFusion raised at its root
    /// (without the wrapping of the operators it passed through), else the error's text.
    pub fn client_message(&self) -> String {
        use datafusion::error::DataFusionError as D;
        match self {
            Error::DataFusion(e) => match e.find_root() {
                D::ResourcesExhausted(m) => format!("the query needs more memory than its limit: {m}"),
                D::NotImplemented(m) => format!("not supported: {m}"),
                D::Plan(m) => m.clone(),
                root => root.to_string(),
            },
            other => other.to_string(),
        }
    }
}

/// The kind of a DataFusion error found at the root of a chain: over the memory pool is
/// too large; a plan the engine rejects (or, found while planning the execution, a form it
/// does not run, such as some correlated subqueries) is the query's fault; anything else
/// is the server's.
fn datafusion_kind(root: &datafusion::error::DataFusionError) -> fhirlake_schemas::ErrorKind {
    use datafusion::error::DataFusionError as D;
    use fhirlake_schemas::ErrorKind;
    match root {
        D::ResourcesExhausted(_) => ErrorKind::TooLarge,
        D::NotImplemented(_) | D::Plan(_) => ErrorKind::Invalid,
        D::ArrowError(..)
        | D::ParquetError(_)
        | D::ObjectStore(_)
        | D::IoError(_)
        | D::SQL(..)
        | D::Configuration(_)
        | D::SchemaError(..)
        | D::Execution(_)
        | D::ExecutionJoin(_)
        | D::External(_)
        | D::Context(..)
        | D::Substrait(_)
        | D::Diagnostic(..)
        | D::Collection(_)
        | D::Shared(_)
        | D::Internal(_)
        | D::Ffi(_) => ErrorKind::Internal,
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
