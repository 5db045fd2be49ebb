//! fhirlake-ingest: everything that writes.
//!
//! Owns JSON -> Arrow flattening ([`flatten`]), patient-compartment membership
//! ([`compartment`]), the storage root and its Delta tables ([`store`]), durable local
//! storage ([`durable`]), the group-committing writer with its serving store and Delta
//! flusher ([`writer`]), compaction and vacuum ([`compact`]), the journal of older roots
//! ([`journal`]), Bundle processing
//! ([`bundle`]), bulk import ([`import`]) and the commits of materialized views
//! ([`views`]).
//!
//! Must not: speak HTTP, or depend on `fhirlake-query` (the root composes the two).

pub mod bundle;
pub mod compact;
pub mod compartment;
pub mod durable;
pub mod flatten;
pub mod import;
pub mod journal;
pub mod store;
pub mod views;
pub mod writer;

pub use store::{StorageRoot, TableKind};
pub use writer::{Action, CurrentRows, OpOutcome, Precondition, ReadView, WriteOp, Writer, WriterOptions, WriterTask};

/// Errors of the write path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration (storage root, options): the message says what to change.
    #[error("{0}")]
    Config(String),
    /// Another process holds the single-writer lease of the storage root.
    #[error(
        "the storage root {root} is held by {holder}; stop that process or send the data through it (its HTTP API)"
    )]
    LeaseHeld {
        /// The root.
        root: String,
        /// Who holds it.
        holder: String,
    },
    /// The R4 definitions could not be loaded.
    #[error(transparent)]
    Schemas(#[from] fhirlake_schemas::Error),
    /// A resource could not be turned into Arrow rows.
    #[error("flattening: {0}")]
    Flatten(String),
    /// Arrow error.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Delta Lake error.
    #[error("delta: {0}")]
    Delta(#[from] deltalake::DeltaTableError),
    /// DataFusion error.
    #[error("datafusion: {0}")]
    DataFusion(#[from] deltalake::datafusion::error::DataFusionError),
    /// Object store error.
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// Stored JSON could not be parsed.
    #[error("stored JSON: {0}")]
    Json(#[from] fhirlake_schemas::json::JsonError),
    /// The journal could not be written or read.
    #[error("journal: {0}")]
    Journal(String),
    /// A group commit failed; nothing of it was stored.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// The writer is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The serving store failed.
    #[error("serving store: {0}")]
    Store(String),
    /// Flushing to Delta failed (acknowledged writes are safe in the serving store).
    #[error("flushing to Delta failed (acknowledged writes are safe and the flush is retried): {0}")]
    FlushFailed(String),
    /// Too much is waiting to be flushed to Delta: writes are refused for a moment.
    #[error("{0}")]
    Backpressure(String),
    /// I/O error reading import files.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

impl Error {
    /// How a client is told about it (the root crate derives HTTP and gRPC statuses).
    pub fn kind(&self) -> fhirlake_schemas::ErrorKind {
        use fhirlake_schemas::ErrorKind;
        match self {
            Error::Schemas(e) => e.kind(),
            // Another process holds the root; the request may succeed once it is released.
            Error::LeaseHeld { .. } | Error::ShuttingDown | Error::FlushFailed(_) | Error::Backpressure(_) => {
                ErrorKind::Unavailable
            }
            Error::Config(_)
            | Error::Flatten(_)
            | Error::Arrow(_)
            | Error::Delta(_)
            | Error::DataFusion(_)
            | Error::ObjectStore(_)
            | Error::Json(_)
            | Error::Journal(_)
            | Error::CommitFailed(_)
            | Error::Store(_)
            | Error::Io { .. } => ErrorKind::Internal,
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Time source of the write path, so tests control `meta.lastUpdated`.
pub trait Clock: Send + Sync {
    /// Microseconds since the Unix epoch, UTC.
    fn now_us(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> i64 {
        chrono::Utc::now().timestamp_micros()
    }
}
