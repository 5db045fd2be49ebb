//! fhirlake-schemas: the FHIR R4 model and everything derived from it without I/O.
//!
//! Owns the official R4 definitions (shipped in `definitions/`), the type model built from
//! them ([`model`]), the storage shape and Arrow schema of every resource type
//! ([`shape`]), a strict JSON reader that keeps decimals exact ([`json`]), FHIR date
//! parsing ([`datetime`]) and resource validation ([`validate`]).
//!
//! Must not: depend on tokio, object_store, axum or anything that does I/O beyond reading
//! its own embedded files. Its tests build in seconds.

pub mod datetime;
pub mod definitions;
pub mod error_kind;
pub mod fhirpath;
pub mod json;
pub mod layout;
pub mod model;
pub mod patch;
pub mod search;
pub mod search_index;
pub mod shape;
pub mod sof;
pub mod validate;

pub use error_kind::ErrorKind;
pub use json::Json;
pub use model::Model;
pub use shape::{ShapeOptions, TableShape};

/// Errors of this crate.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The embedded definitions could not be decoded (a build problem, not a user one).
    #[error("FHIR definitions: {0}")]
    Definitions(String),
    /// A resource type that R4 does not define.
    #[error("unknown resource type '{0}'")]
    UnknownResourceType(String),
}

impl Error {
    /// How a client is told about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Definitions(_) => ErrorKind::Internal,
            Error::UnknownResourceType(_) => ErrorKind::NotFound,
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
