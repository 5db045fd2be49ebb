//! What callers hand the writer and what they get back.
//!
//! Owns: the operation, precondition and outcome types of the write path, the version
//! record a group commit stores, and the request that carries operations to the writer
//! task. Must not: do anything (plain data).

use std::sync::Arc;

use fhirlake_schemas::Json;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::Result;

/// What an operation does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Create or replace the resource (validated, `id` set to the op's id).
    Put(Arc<Json>),
    /// Delete the resource.
    Delete,
}

/// A condition an operation must meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precondition {
    /// None.
    #[default]
    None,
    /// The current version must be this one (`If-Match`).
    IfMatch(i64),
    /// The resource must not exist, or be deleted (`If-None-Match: *`, and creates whose
    /// id was chosen before the write, e.g. a conditional update that matched nothing).
    Absent,
}

/// One write.
#[derive(Debug, Clone)]
pub struct WriteOp {
    /// Resource type.
    pub resource_type: String,
    /// Resource id.
    pub id: String,
    /// What to do.
    pub action: Action,
    /// Condition.
    pub precondition: Precondition,
}

/// The result of one operation.
#[derive(Debug, Clone, PartialEq)]
pub enum OpOutcome {
    /// A new version was stored.
    Written {
        /// Its version.
        version: i64,
        /// Its last-updated time (µs).
        last_updated_us: i64,
        /// The JSON served for it.
        raw: Arc<str>,
        /// True when the resource did not exist (or was deleted) before.
        created: bool,
    },
    /// The content equals the current version; nothing was stored.
    Unchanged {
        /// Current version.
        version: i64,
        /// Its last-updated time (µs).
        last_updated_us: i64,
        /// The JSON of the current version.
        raw: Arc<str>,
    },
    /// A delete was stored (or the resource was already gone: `version` is `None`).
    Deleted {
        /// The version recording the delete.
        version: Option<i64>,
    },
    /// Not applied: another operation of the same atomic request failed.
    RolledBack,
    /// `If-Match` did not hold.
    PreconditionFailed {
        /// The current version (`None` if the resource does not exist).
        current: Option<i64>,
    },
}

impl OpOutcome {
    /// The version written, kept or recording the delete, if any.
    pub fn version(&self) -> Option<i64> {
        match self {
            OpOutcome::Written { version, .. } | OpOutcome::Unchanged { version, .. } => Some(*version),
            OpOutcome::Deleted { version } => *version,
            OpOutcome::RolledBack | OpOutcome::PreconditionFailed { .. } => None,
        }
    }
}

/// One stored version of one resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Resource type.
    #[serde(rename = "t")]
    pub resource_type: String,
    /// Resource id.
    pub id: String,
    /// Version id.
    #[serde(rename = "v")]
    pub version: i64,
    /// Last-updated, epoch microseconds UTC.
    #[serde(rename = "ts")]
    pub last_updated_us: i64,
    /// True for a delete.
    #[serde(rename = "d")]
    pub deleted: bool,
    /// Content hash (FNV-1a 64 of the resource without server meta).
    #[serde(rename = "h")]
    pub hash: u64,
    /// The JSON served for this version (`None` for deletes).
    pub raw: Option<Arc<str>>,
}

/// A row for one of fhirlake's own append-only tables (see [`AppendTable`]): stored
/// in the same group commit as the writes beside it, flushed to Delta with them.
#[derive(Debug, Clone)]
pub struct AppendRow {
    /// The table's name.
    pub table: String,
    /// One JSON object whose members are the table's columns.
    pub json: Vec<u8>,
}

pub(crate) struct Request {
    pub(crate) ops: Vec<WriteOp>,
    pub(crate) appends: Vec<AppendRow>,
    pub(crate) atomic: bool,
    pub(crate) reply: oneshot::Sender<Result<Vec<OpOutcome>>>,
}

/// An append-only table of fhirlake's own (audit rows, device measurements, job state):
/// rows are stored with the group commit that produced them and flushed to
/// `system/<name>` like resources.
#[derive(Debug, Clone)]
pub struct AppendTable {
    /// Table name (also its folder under `system/`).
    pub name: String,
    /// Its Arrow schema; rows are JSON objects of these columns.
    pub schema: arrow::datatypes::SchemaRef,
}
