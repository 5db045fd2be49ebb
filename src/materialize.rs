//! Materialized SQL-on-FHIR views: `views/<name>`, a Delta table of the view's rows plus
//! `_source_id` (the key of the resource each row came from).
//!
//! Owns: full and incremental refresh. The view table records, as Delta application
//! transactions, the version of the source type's history table it reflects
//! (`fhirlake-view-source`) and a hash of the ViewDefinition (`fhirlake-view-definition`).
//! A refresh diffs the history table's files since that version to find the resources
//! created, updated or deleted since (history is append-only, so its new files hold exactly
//! the new versions), recomputes only their rows from the current table and replaces their
//! old rows in one commit (`replaceWhere _source_id IN (...)`). It falls back to a full
//! rebuild when the table is new, the ViewDefinition changed, or the old history version is
//! no longer readable. The current table is read at a snapshot whose journal sequence is at
//! least the history snapshot's, so no change the diff found is missing from it.
//! Must not: plan views (that is `fhirlake_query::views`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, RecordBatch};
use datafusion::prelude::{SessionContext, ident, lit};
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use fhirlake_ingest::journal::JOURNAL_APP_ID;
use fhirlake_ingest::{StorageRoot, TableKind};
use fhirlake_query::search::matcher::string_at;
use fhirlake_query::views::{self, View};
use fhirlake_schemas::shape::reserved;
use fhirlake_schemas::{Json, Model, ShapeOptions, TableShape};

/// Application id of the source history version a view table reflects.
const SOURCE_APP: &str = "fhirlake-view-source";
/// Application id whose version is the hash of the ViewDefinition the table was built from.
const DEFINITION_APP: &str = "fhirlake-view-definition";

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

async fn txn_version(table: &DeltaTable, app: &str) -> Result<Option<i64>> {
    Ok(table.snapshot()?.transaction_version(table.log_store().as_ref(), app).await?)
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
        && txn_version(t, DEFINITION_APP).await? == Some(hash)
        && let Some(prev) = txn_version(t, SOURCE_APP).await?
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

    let props = || {
        CommitProperties::default()
            .with_application_transaction(Transaction::new(SOURCE_APP, source_version))
            .with_application_transaction(Transaction::new(DEFINITION_APP, hash))
    };
    let table = match existing {
        Some(t) => t,
        None => root.create_table(TableKind::View, &name, &schema).await?,
    };
    match changed {
        None => {
            table
                .write(batches)
                .with_save_mode(SaveMode::Overwrite)
                .with_schema_mode(SchemaMode::Overwrite)
                .with_commit_properties(props())
                .await?;
        }
        Some(ids) => {
            let predicate = ident(reserved::SOURCE_ID).in_list(ids.iter().map(|i| lit(i.clone())).collect(), false);
            if rows == 0 {
                table.delete().with_predicate(predicate).with_commit_properties(props()).await?;
            } else {
                table
                    .write(batches)
                    .with_save_mode(SaveMode::Overwrite)
                    .with_replace_where(predicate)
                    .with_commit_properties(props())
                    .await?;
            }
        }
    }
    progress(&format!("{name}: committed in {:.2} s", started.elapsed().as_secs_f64()));
    Ok(Materialized { name, mode, resources, rows, source_version, fallback })
}

/// The current table at a snapshot that includes everything up to journal sequence `seq`
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

/// Ids in the history files added after version `since` (creates, updates and deletes).
async fn changed_ids(history: &DeltaTable, since: i64) -> std::result::Result<Vec<String>, String> {
    let mut old = history.clone();
    old.load_version(since.max(0) as u64).await.map_err(|e| e.to_string())?;
    let before: BTreeSet<String> = old.get_file_uris().map_err(|e| e.to_string())?.collect();
    let added: Vec<String> =
        history.get_file_uris().map_err(|e| e.to_string())?.filter(|u| !before.contains(u)).collect();
    if added.is_empty() {
        return Ok(vec![]);
    }
    let ctx = SessionContext::new();
    let df = ctx
        .read_parquet(added, datafusion::prelude::ParquetReadOptions::default())
        .await
        .map_err(|e| e.to_string())?
        .select(vec![ident("id")])
        .map_err(|e| e.to_string())?
        .distinct()
        .map_err(|e| e.to_string())?;
    let mut ids = Vec::new();
    for b in df.collect().await.map_err(|e| e.to_string())? {
        let c = b.column(0);
        ids.extend((0..c.len()).filter_map(|i| string_at(c.as_ref(), i).map(str::to_string)));
    }
    Ok(ids)
}

fn distinct_sources(batches: &[RecordBatch]) -> usize {
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for b in batches {
        if let Some(c) = b.column_by_name(reserved::SOURCE_ID) {
            seen.extend((0..c.len()).filter_map(|i| string_at(c.as_ref(), i)));
        }
    }
    seen.len()
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
    let Some(table) = root.open_table(TableKind::Current, "ViewDefinition").await? else { return Ok(vec![]) };
    let ctx = SessionContext::new_with_config(fhirlake_query::catalog::scan_session_config());
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
                out.push(Json::parse(raw.as_bytes(), limits).map_err(|e| MaterializeError::Failed(e.to_string()))?);
            }
        }
    }
    Ok(out)
}
