//! fhirlake-query: everything that reads.
//!
//! Owns the DataFusion session over an instance's Delta tables ([`catalog`]: SQL names,
//! read-only SQL) and the history reads behind `read`, `vread` and `_history`
//! ([`history`]). Must not: write, or depend on `fhirlake-ingest`; it is handed Delta
//! tables or a storage-root URL and object store by the root crate.

pub mod catalog;
pub mod functions;
pub mod history;
pub mod search;
pub mod views;

pub use catalog::SqlSession;
pub use history::{HistoryQuery, HistoryRow};

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
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
