//! Materialized SQL-on-FHIR views: `views/<name>`, a Delta table of the view's rows plus
//! `_source_id` (the key of the resource each row came from).
//!
//! Owns: choosing and composing a refresh. The view table records, as Delta application
//! transactions, the version of the source type's history table it reflects and a hash of
//! the ViewDefinition. A refresh finds the resources created, updated or deleted since
//! that version (`fhirlake_query::views::refresh::changed_ids`), recomputes only their
//! rows from the current table with the view's plan (`fhirlake_query::views`) and replaces
//! their old rows in one commit (`fhirlake_ingest::views::write_view`). It falls back to a
//! full rebuild when the table is new, the ViewDefinition changed, or the old history
//! version is no longer readable. The current table is read at a snapshot whose flushed
//! sequence is at least the history snapshot's, so no change the diff found is missing
//! from it. Must not: plan views, read history files or write Delta itself.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use datafusion::prelude::{SessionContext, ident, lit};
use deltalake::DeltaTable;
use fhirlake_ingest::views::{Replace, ViewVersion, write_view};
use fhirlake_ingest::{StorageRoot, TableKind};
use fhirlake_query::views::refresh::{changed_ids, distinct_sources, stored_views as stored_in, txn_version};
use fhirlake_query::views::{self, View};
use fhirlake_schemas::layout::{JOURNAL_APP_ID, VIEW_DEFINITION_APP_ID, VIEW_SOURCE_APP_ID};
use fhirlake_schemas::{Json, Model, ShapeOptions, TableShape};

/// Why a materialization failed.
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    /// The ViewDefinition is invalid or has no usable name.
    #[error("{0}")]
    BadView(String),
    /// Storage or query failure.
    #[error("{0}")]
    Failed(String),
}

impl From<deltalake::DeltaTableError> for MaterializeError {
    fn from(e: deltalake::DeltaTableError) -> Self {
        MaterializeError::Failed(format!("delta: {e}"))
    }
}

impl From<datafusion::error::DataFusionError> for MaterializeError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        match views::view_error(&e) {
            Some(v) => MaterializeError::BadView(v.to_string()),
            None => MaterializeError::Failed(format!("query: {e}")),
        }
    }
}

impl From<fhirlake_query::Error> for MaterializeError {
    fn from(e: fhirlake_query::Error) -> Self {
        match e {
            fhirlake_query::Error::BadView(v) => MaterializeError::BadView(v.to_string()),
            other => MaterializeError::Failed(other.to_string()),
        }
    }
}

impl From<fhirlake_ingest::Error> for MaterializeError {
    fn from(e: fhirlake_ingest::Error) -> Self {
        MaterializeError::Failed(e.to_string())
    }
}

type Result<T> = std::result::Result<T, MaterializeError>;

/// What a refresh did.
#[derive(Debug, Clone)]
pub struct Materialized {
    /// The view (and table) name.
    pub name: String,
    /// `full`, `incremental` or `unchanged`.
    pub mode: &'static str,
    /// Resources whose rows were recomputed (all of them for a full refresh).
    pub resources: usize,
    /// Rows written.
    pub rows: usize,
    /// The source history version now reflected.
    pub source_version: i64,
    /// Why the view ran row by row, when it did.
    pub fallback: Option<String>,
}

/// FNV-1a of the ViewDefinition's JSON without server metadata (`meta`, `text`), as a
/// non-negative i64 (a Delta txn version).
fn definition_hash(view: &Json) -> i64 {
    let mut content = view.clone();
    content.remove("meta");
    content.remove("text");
    let mut h: u64 = 0xcbf29ce484222325;
    for b in content.to_json_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h >> 1) as i64
}

/// Materializes (or refreshes) `view_json` into `views/<name>` under `root`.
/// `full` forces a rebuild. `progress` receives short status lines.
pub async fn materialize(
    root: &StorageRoot,
    view_json: &Json,
    full: bool,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Materialized> {
    let model = Model::r4().map_err(|e| MaterializeError::Failed(e.to_string()))?;
    let view = Arc::new(View::parse(model, view_json).map_err(|e| MaterializeError::BadView(e.to_string()))?);
    let name = view
        .name
        .clone()
        .ok_or_else(|| MaterializeError::BadView("a materialized view needs a \"name\" (its table name)".into()))?;
    let hash = definition_hash(view_json);
    let existing = root.open_table(TableKind::View, &name).await?;

    // The history snapshot first, then a current snapshot at least as new.
    let Some(history) = root.open_table(TableKind::History, &view.resource).await? else {
        return Err(MaterializeError::Failed(format!(
            "no {} resources are stored yet; load some before materializing '{name}'",
            view.resource
        )));
    };
    let source_version = history.version().map_or(0, |v| v as i64);
    let history_seq = txn_version(&history, JOURNAL_APP_ID).await?.unwrap_or(0);
    let current = consistent_current(root, &view.resource, history_seq).await?;

    let mut mode = "full";
    let mut changed: Option<Vec<String>> = None;
    if let (Some(t), false) = (&existing, full)
        && txn_version(t, VIEW_DEFINITION_APP_ID).await? == Some(hash)
        && let Some(prev) = txn_version(t, VIEW_SOURCE_APP_ID).await?
    {
        if prev == source_version {
            return Ok(Materialized { name, mode: "unchanged", resources: 0, rows: 0, source_version, fallback: None });
        }
        match changed_ids(&history, prev).await {
            Ok(ids) => {
                mode = "incremental";
                changed = Some(ids);
            }
            Err(e) => progress(&format!("history version {prev} is not readable ({e}); rebuilding")),
        }
    }

    let ctx = SessionContext::new_with_config(fhirlake_query::catalog::scan_session_config());
    current.update_datafusion_session(&ctx.state())?;
    let mut df = ctx.read_table(current.table_provider().await?)?;
    if let Some(ids) = &changed {
        progress(&format!("{name}: {} changed {} resources since history version", ids.len(), view.resource));
        df = df.filter(ident("id").in_list(ids.iter().map(|i| lit(i.clone())).collect(), false))?;
    }
    let shape = TableShape::try_new(model, &view.resource, ShapeOptions::default())
        .map_err(|e| MaterializeError::Failed(e.to_string()))?;
    let plan = views::plan(model, view.clone(), &shape, df, true)?;
    let fallback = plan.fallback.clone().or_else(|| {
        (!plan.row_by_row.is_empty()).then(|| format!("columns run row by row: {}", plan.row_by_row.join(", ")))
    });
    let schema = plan.df.schema().as_arrow().clone();
    progress(&format!(
        "{name}: running the view ({})",
        fallback.as_deref().map_or("compiled".to_string(), |f| format!("row by row: {f}"))
    ));
    let started = std::time::Instant::now();
    let batches: Vec<RecordBatch> = plan.df.collect().await?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let ran = started.elapsed();
    let resources = match &changed {
        Some(ids) => ids.len(),
        None => distinct_sources(&batches),
    };
    progress(&format!("{name}: {rows} rows in {:.2} s; writing", ran.as_secs_f64()));
    let started = std::time::Instant::now();

    let replace = match &changed {
        Some(ids) => Replace::Sources(ids),
        None => Replace::All,
    };
    let version = ViewVersion { source_version, definition_hash: hash };
    write_view(root, &name, existing, &schema, batches, replace, version).await?;
    progress(&format!("{name}: committed in {:.2} s", started.elapsed().as_secs_f64()));
    Ok(Materialized { name, mode, resources, rows, source_version, fallback })
}

/// The current table at a snapshot that includes everything up to flushed sequence `seq`
/// (the writer commits a group's history and current tables side by side).
async fn consistent_current(root: &StorageRoot, rt: &str, seq: i64) -> Result<DeltaTable> {
    for _ in 0..200 {
        let t = root
            .open_table(TableKind::Current, rt)
            .await?
            .ok_or_else(|| MaterializeError::Failed(format!("the current table of {rt} is missing")))?;
        if txn_version(&t, JOURNAL_APP_ID).await?.unwrap_or(0) >= seq {
            return Ok(t);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(MaterializeError::Failed(format!("the current table of {rt} did not catch up with its history; retry")))
}

/// Every stored (current) ViewDefinition.
pub async fn stored_views(root: &StorageRoot) -> Result<Vec<Json>> {
    stored_where(root, None).await
}

/// The stored ViewDefinition whose `name` is `name`.
pub async fn stored_view(root: &StorageRoot, name: &str) -> Result<Json> {
    let mut found = stored_where(root, Some(name)).await?;
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(MaterializeError::BadView(format!(
            "no stored ViewDefinition is named '{name}'; create one with POST /ViewDefinition or pass --file"
        ))),
        n => Err(MaterializeError::BadView(format!(
            "{n} stored ViewDefinitions are named '{name}'; names must be unique"
        ))),
    }
}

async fn stored_where(root: &StorageRoot, name: Option<&str>) -> Result<Vec<Json>> {
    match root.open_table(TableKind::Current, "ViewDefinition").await? {
        Some(table) => Ok(stored_in(&table, name).await?),
        None => Ok(vec![]),
    }
}
