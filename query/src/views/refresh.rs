//! What an incremental refresh of a materialized view reads: which resources changed
//! since the history version a view table reflects, the versions its tables record, and
//! the stored ViewDefinitions.
//!
//! Owns: the history diff (history is append-only, so the files added after a version
//! hold exactly the versions written since; a compaction's rewritten files only add ids,
//! which is harmless) and the reads of the `txn` versions and of stored views. Must not:
//! write (the view table's commits are `fhirlake_ingest::views`'), or decide full versus
//! incremental (the root's `materialize` does).

use std::collections::BTreeSet;

use arrow::array::{Array, RecordBatch};
use datafusion::prelude::{SessionContext, ident, lit};
use deltalake::DeltaTable;
use fhirlake_schemas::Json;
use fhirlake_schemas::shape::reserved;

use crate::search::matcher::string_at;
use crate::{Error, Result};

/// The version a table's Delta log records for application `app` (`txn`), if any.
pub async fn txn_version(table: &DeltaTable, app: &str) -> Result<Option<i64>> {
    Ok(table.snapshot()?.transaction_version(table.log_store().as_ref(), app).await?)
}

/// Ids in the history files added after version `since` (creates, updates and deletes).
pub async fn changed_ids(history: &DeltaTable, since: i64) -> Result<Vec<String>> {
    let mut old = history.clone();
    old.load_version(since.max(0) as u64).await?;
    let before: BTreeSet<String> = old.get_file_uris()?.collect();
    let added: Vec<String> = history.get_file_uris()?.filter(|u| !before.contains(u)).collect();
    if added.is_empty() {
        return Ok(vec![]);
    }
    let ctx = SessionContext::new();
    let df = ctx
        .read_parquet(added, datafusion::prelude::ParquetReadOptions::default())
        .await?
        .select(vec![ident("id")])?
        .distinct()?;
    let mut ids = Vec::new();
    for b in df.collect().await? {
        let c = b.column(0);
        ids.extend((0..c.len()).filter_map(|i| string_at(c.as_ref(), i).map(str::to_string)));
    }
    Ok(ids)
}

/// How many distinct resources (`_source_id`) the rows of a view came from.
pub fn distinct_sources(batches: &[RecordBatch]) -> usize {
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for b in batches {
        if let Some(c) = b.column_by_name(reserved::SOURCE_ID) {
            seen.extend((0..c.len()).filter_map(|i| string_at(c.as_ref(), i)));
        }
    }
    seen.len()
}

/// The ViewDefinitions in the current ViewDefinition table, those named `name` when given.
pub async fn stored_views(table: &DeltaTable, name: Option<&str>) -> Result<Vec<Json>> {
    let ctx = SessionContext::new_with_config(crate::catalog::scan_session_config());
    table.update_datafusion_session(&ctx.state())?;
    let mut df = ctx.read_table(table.table_provider().await?)?;
    if let Some(n) = name {
        df = df.filter(ident("name").eq(lit(n.to_string())))?;
    }
    let mut out = Vec::new();
    for b in df.select(vec![ident(reserved::RAW)])?.collect().await? {
        let c = b.column(0);
        for i in 0..c.len() {
            if let Some(raw) = string_at(c.as_ref(), i) {
                let limits = fhirlake_schemas::json::ParseLimits::STORED;
                out.push(Json::parse(raw.as_bytes(), limits).map_err(|e| Error::Storage(e.to_string()))?);
            }
        }
    }
    Ok(out)
}
