//! The storage layout of a root, defined once for every crate that reads or writes it.
//!
//! Owns: the folder names under a storage root ([`TableKind::folder`], [`JOURNAL_DIR`],
//! [`STATE_DIR`]), the paths of fhirlake's own files, and those files' contents as serde
//! types that carry a format version ([`LeaseRecord`], [`Watermark`], [`ShapeRecord`]).
//! `fhirlake-ingest` writes them, `fhirlake-query` and the root crate read them; neither
//! spells a folder name or parses one of these files by hand. A file written by a newer
//! fhirlake (a higher `format`) is refused with a message saying so; files written before
//! formats were recorded read as format 1. Must not: do I/O (callers move the bytes).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// fhirlake's own state under the root: lease, watermark, table shapes.
pub const STATE_DIR: &str = "_fhirlake";
/// Write-ahead journal entries of roots written before the serving store (replayed and
/// removed by the upgrade).
pub const JOURNAL_DIR: &str = "journal";
/// The single-writer lease, relative to the root.
pub const LEASE_PATH: &str = "_fhirlake/lease.json";
/// The watermark, relative to the root.
pub const WATERMARK_PATH: &str = "_fhirlake/watermark.json";
/// The format version this release writes (and the newest it reads).
pub const FORMAT: u32 = 1;

/// Delta application id (`txn`) whose version is the group-commit sequence a table holds
/// everything up to (the name is from when it was the journal's).
pub const JOURNAL_APP_ID: &str = "fhirlake-journal";
/// Delta application id whose version is the source history version a view table
/// reflects.
pub const VIEW_SOURCE_APP_ID: &str = "fhirlake-view-source";
/// Delta application id whose version is the hash of the ViewDefinition a view table was
/// built from.
pub const VIEW_DEFINITION_APP_ID: &str = "fhirlake-view-definition";

/// Which table: a resource type's two, or a materialized view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TableKind {
    /// `resources/<Type>`: one row per live resource, full typed schema.
    Current,
    /// `history/<Type>`: every version, narrow.
    History,
    /// `views/<name>`: a materialized SQL-on-FHIR view (the name is the view's).
    View,
    /// `system/<name>`: one of fhirlake's own append-only tables (audit rows, device
    /// measurements, job state), flushed from the serving store like resources.
    System,
}

impl TableKind {
    /// Every kind, in folder order.
    pub const ALL: [TableKind; 4] = [TableKind::Current, TableKind::History, TableKind::View, TableKind::System];

    /// The folder under the root.
    pub fn folder(self) -> &'static str {
        match self {
            TableKind::Current => "resources",
            TableKind::History => "history",
            TableKind::View => "views",
            TableKind::System => "system",
        }
    }

    /// The kind whose folder is `folder`.
    pub fn of_folder(folder: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.folder() == folder)
    }

    /// The table's path relative to the root (`resources/Patient`): also its key in the
    /// [`Watermark`].
    pub fn table_path(self, name: &str) -> String {
        format!("{}/{name}", self.folder())
    }
}

/// Where the shape of `resource_type`'s current table is recorded, relative to the root.
pub fn shape_path(resource_type: &str) -> String {
    format!("{STATE_DIR}/shape/{resource_type}.json")
}

/// Where journal entry `seq` is, relative to the root.
pub fn journal_entry_path(seq: i64) -> String {
    format!("{JOURNAL_DIR}/{seq:020}.ndjson")
}

/// The sequence of a journal entry's file name (`00000000000000000042.ndjson`).
pub fn journal_entry_seq(file_name: &str) -> Option<i64> {
    file_name.strip_suffix(".ndjson")?.parse().ok()
}

fn format_1() -> u32 {
    1
}

/// Who holds the write lease of a root (`_fhirlake/lease.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Format version.
    #[serde(default = "format_1")]
    pub format: u32,
    /// Process id of the holder.
    pub pid: u64,
    /// Host name of the holder.
    pub host: String,
    /// What holds it (`fhirlake serve`, `fhirlake import`).
    pub holder: String,
    /// When it was taken (RFC 3339).
    pub since: String,
}

/// Every table's version after the last fully applied group commit
/// (`_fhirlake/watermark.json`): readers of the directory open each table at it and so
/// never see half of a transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// Format version.
    #[serde(default = "format_1")]
    pub format: u32,
    /// The sequence of the last group commit every listed table holds (a time in µs).
    pub seq: i64,
    /// Table path (`resources/Patient`, see [`TableKind::table_path`]) → Delta version.
    pub tables: BTreeMap<String, u64>,
}

impl Watermark {
    /// The version of a table, if the watermark lists it.
    pub fn version_of(&self, kind: TableKind, name: &str) -> Option<u64> {
        self.tables.get(&kind.table_path(name)).copied()
    }
}

/// How a type's current table was shaped when it was created
/// (`_fhirlake/shape/<Type>.json`): fixed for the table's life, whatever later defaults say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShapeRecord {
    /// Format version.
    #[serde(default = "format_1")]
    pub format: u32,
    /// The resource type.
    #[serde(default)]
    pub resource_type: String,
    /// The recursion depth (at least 1).
    pub max_depth: usize,
    /// Whether the table carries the `_sp_*` search columns (tables recorded before search
    /// indexing existed do not).
    #[serde(default)]
    pub search_index: bool,
}

/// A persisted file of the layout.
pub trait Persisted: Serialize + DeserializeOwned {
    /// Its format version.
    fn format(&self) -> u32;
}

macro_rules! persisted {
    ($($t:ty),*) => {$(
        impl Persisted for $t {
            fn format(&self) -> u32 {
                self.format
            }
        }
    )*};
}
persisted!(LeaseRecord, Watermark, ShapeRecord);

/// Reads a persisted file (`what` names it in errors).
pub fn decode<T: Persisted>(what: &str, bytes: &[u8]) -> Result<T, String> {
    let value: T = serde_json::from_slice(bytes).map_err(|e| format!("{what} is not readable: {e}"))?;
    if value.format() > FORMAT {
        return Err(format!(
            "{what} has format {}, written by a newer fhirlake (this one reads up to {FORMAT}); upgrade fhirlake",
            value.format()
        ));
    }
    Ok(value)
}

/// Writes a persisted file at this release's format.
pub fn encode<T: Persisted>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("layout types serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_of_earlier_releases_read_as_format_1() {
        let w: Watermark = decode("w", br#"{"seq":7,"tables":{"resources/Patient":3}}"#).unwrap();
        assert_eq!((w.format, w.seq, w.version_of(TableKind::Current, "Patient")), (1, 7, Some(3)));
        let s: ShapeRecord = decode("s", br#"{"resourceType":"Patient","maxDepth":2,"searchIndex":true}"#).unwrap();
        assert_eq!((s.max_depth, s.search_index), (2, true));
        let old: ShapeRecord = decode("s", br#"{"maxDepth":1}"#).unwrap();
        assert!(!old.search_index, "tables recorded before the index have no search columns");
        let l: LeaseRecord = decode("l", br#"{"pid":1,"host":"h","holder":"x","since":"t"}"#).unwrap();
        assert_eq!(l.format, 1);
    }

    #[test]
    fn newer_formats_are_refused_and_round_trips_hold() {
        let e = decode::<Watermark>("_fhirlake/watermark.json", br#"{"format":9,"seq":1,"tables":{}}"#).unwrap_err();
        assert!(e.contains("newer fhirlake") && e.contains("watermark"), "{e}");
        let w = Watermark { format: FORMAT, seq: 3, tables: [("history/Patient".into(), 5)].into() };
        assert_eq!(decode::<Watermark>("w", &encode(&w)).unwrap(), w);
        assert_eq!(TableKind::of_folder("history"), Some(TableKind::History));
        assert_eq!(journal_entry_seq(journal_entry_path(42).rsplit('/').next().unwrap()), Some(42));
    }
}
