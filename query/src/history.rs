//! Reads of the history tables: `read`, `vread` and the three `_history` levels.
//!
//! Owns: turning a [`HistoryQuery`] into a DataFusion plan over `history/<Type>` (filters on
//! `id`, version and `_last_updated` are pushed down to Delta file statistics) and the rows
//! back into [`HistoryRow`]s, newest first. Must not: decide HTTP semantics (410 vs 404 is
//! the caller's business).

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, TimestampMicrosecondType};
use datafusion::prelude::{SessionContext, col, lit};
use datafusion::scalar::ScalarValue;
use deltalake::DeltaTable;

use crate::Result;
use crate::catalog::session_config;

/// One stored version.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    /// Resource type.
    pub resource_type: String,
    /// Resource id.
    pub id: String,
    /// Version id.
    pub version: i64,
    /// Last-updated (µs since the epoch, UTC).
    pub last_updated_us: i64,
    /// True for a delete.
    pub deleted: bool,
    /// The JSON served for this version (`None` for a delete).
    pub raw: Option<String>,
}

/// Which versions to read.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Only this resource.
    pub id: Option<String>,
    /// Only this version.
    pub version: Option<i64>,
    /// Only versions updated at or after this time (µs).
    pub since_us: Option<i64>,
    /// Only the version of each resource that was current at this time (µs).
    pub at_us: Option<i64>,
    /// Only versions updated at or before this time (µs): a stable upper bound for paging.
    pub until_us: Option<i64>,
    /// At most this many rows (after sorting newest first).
    pub limit: Option<usize>,
}

fn ts(us: i64) -> ScalarValue {
    ScalarValue::TimestampMicrosecond(Some(us), Some("UTC".into()))
}

/// Reads versions of `resource_type` from its history `table`, newest first.
pub async fn read_history(resource_type: &str, table: &DeltaTable, q: &HistoryQuery) -> Result<Vec<HistoryRow>> {
    let ctx = SessionContext::new_with_config(session_config());
    table.update_datafusion_session(&ctx.state())?;
    let mut df = ctx.read_table(table.table_provider().await?)?;
    if let Some(id) = &q.id {
        df = df.filter(col("id").eq(lit(id.clone())))?;
    }
    if let Some(v) = q.version {
        df = df.filter(col("_version_id").eq(lit(v)))?;
    }
    if let Some(s) = q.since_us {
        df = df.filter(col("_last_updated").gt_eq(lit(ts(s))))?;
    }
    if let Some(u) = q.until_us {
        df = df.filter(col("_last_updated").lt_eq(lit(ts(u))))?;
    }
    if let Some(at) = q.at_us {
        df = df.filter(col("_last_updated").lt_eq(lit(ts(at))))?;
    }
    df = df.sort(vec![col("_last_updated").sort(false, false), col("_version_id").sort(false, false)])?;
    if let (Some(limit), None) = (q.limit, q.at_us) {
        df = df.limit(0, Some(limit))?;
    }
    let df = df.select(vec![col("id"), col("_version_id"), col("_last_updated"), col("_deleted"), col("_raw")])?;
    let mut rows = Vec::new();
    for b in df.collect().await? {
        rows.extend(to_rows(resource_type, &b)?);
    }
    if q.at_us.is_some() {
        // Keep the newest version (at or before `at`) of each resource.
        let mut seen = std::collections::HashSet::new();
        rows.retain(|r| seen.insert(r.id.clone()));
        rows.retain(|r| !r.deleted);
        if let Some(limit) = q.limit {
            rows.truncate(limit);
        }
    }
    Ok(rows)
}

fn utf8(a: &ArrayRef) -> Result<ArrayRef> {
    Ok(arrow::compute::cast(a, &DataType::Utf8)?)
}

fn to_rows(resource_type: &str, b: &RecordBatch) -> Result<Vec<HistoryRow>> {
    let ids = utf8(b.column(0))?;
    let ids = ids.as_string::<i32>();
    let versions = b.column(1).as_primitive::<Int64Type>();
    let times = arrow::compute::cast(b.column(2), &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None))?;
    let times = times.as_primitive::<TimestampMicrosecondType>();
    let deleted = b.column(3).as_boolean();
    let raws = utf8(b.column(4))?;
    let raws = raws.as_string::<i32>();
    Ok((0..b.num_rows())
        .map(|i| HistoryRow {
            resource_type: resource_type.to_string(),
            id: ids.value(i).to_string(),
            version: versions.value(i),
            last_updated_us: times.value(i),
            deleted: deleted.value(i),
            raw: raws.is_valid(i).then(|| raws.value(i).to_string()),
        })
        .collect())
}

/// Merges per-type history (each newest first) into one list, newest first.
pub fn merge_newest_first(mut parts: Vec<Vec<HistoryRow>>, limit: Option<usize>) -> Vec<HistoryRow> {
    let mut all: Vec<HistoryRow> = parts.drain(..).flatten().collect();
    all.sort_by(|a, b| b.last_updated_us.cmp(&a.last_updated_us).then(b.version.cmp(&a.version)));
    if let Some(l) = limit {
        all.truncate(l);
    }
    all
}
