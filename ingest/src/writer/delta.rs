//! Writing versions to the Delta tables of the types they touch.
//!
//! Owns: the Delta side of the storage root — opening or creating tables (with the shape
//! recorded per type), the [`TableSet`] readers plan against, turning versions into Arrow
//! batches ([`Applier::prepare`]: CPU only, on the blocking pool), committing them
//! ([`Applier::commit_tables`]: per type the history append and the current-table
//! replacement run concurrently; every commit carries the flushed sequence as a Delta
//! `txn` action, so recovery can tell which tables are behind), appending rows to the
//! append-only tables, the watermark, and reading every version back from the history
//! tables (upgrading a root written before the serving store). Must not: decide versions
//! or answer callers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use deltalake::DeltaTable;
use deltalake::datafusion::prelude::{SessionContext, col, lit};
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use fhirlake_schemas::json::ParseLimits;
use fhirlake_schemas::layout::{self, Watermark};
use fhirlake_schemas::shape::history_schema;
use fhirlake_schemas::{Json, Model, ShapeOptions};

use super::ops::{AppendTable, VersionRecord};
use super::rows::{Shapes, history_batch};
use super::stats::WriterStats;
use super::view::TableSet;
use crate::compartment::PatientCompartment;
use crate::flatten::{Flattener, RowMeta};
use crate::store::{StorageRoot, TableKind};
use crate::{Error, Result};

/// The Delta `txn` application id under which flushed sequences are recorded.
pub use fhirlake_schemas::layout::JOURNAL_APP_ID;

/// One table's outcome of a commit: its new state, or `None` when it already held it.
pub(crate) type TableResult = (TableKind, String, Result<Option<DeltaTable>>);

/// What a flush leaves in the current table for one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NewRow {
    /// No row (the last version is a delete).
    Deleted,
    /// A row owned by this patient (or none).
    Live(Option<String>),
}

/// The batches of one type, ready to commit.
pub(crate) struct PreparedType {
    rt: String,
    history: RecordBatch,
    current: Vec<RecordBatch>,
    /// Every id of the type in this entry (the `replaceWhere` set).
    ids: Vec<String>,
    /// True when none of the ids has a row in Delta: the current table is appended to.
    pub(crate) all_new: bool,
    /// Each id's new current row.
    pub(crate) new_rows: Vec<(String, NewRow)>,
    /// The owning patients of the rows being replaced in Delta, when all are known (set by
    /// the flusher from the index): they narrow the replace predicate to the files of
    /// those patients, the clustering key of compacted current tables.
    pub(crate) old_owners: Option<HashMap<String, Option<String>>>,
}

impl PreparedType {
    /// Resource type.
    pub(crate) fn resource_type(&self) -> &str {
        &self.rt
    }

    /// Ids whose current row is replaced or deleted.
    pub(crate) fn ids(&self) -> &[String] {
        &self.ids
    }
}

/// Prepares and commits versions to the Delta tables.
pub(crate) struct Applier {
    pub(crate) root: StorageRoot,
    pub(crate) tables: Arc<TableSet>,
    pub(crate) stats: Arc<WriterStats>,
    /// Table shapes, flatteners and compartments (shared with read views).
    pub(crate) shapes: Arc<Shapes>,
}

impl Applier {
    pub(crate) fn new(root: StorageRoot, shape: ShapeOptions, model: &Model) -> Self {
        Self {
            root: root.clone(),
            tables: Arc::new(TableSet::default()),
            stats: Arc::new(WriterStats::default()),
            shapes: Arc::new(Shapes::new(root.clone(), shape, model)),
        }
    }

    pub(crate) async fn flattener(&self, rt: &str) -> Result<Arc<Flattener>> {
        self.shapes.flattener(rt).await
    }

    /// The latest state of a table, creating it on first use.
    pub(crate) async fn table(&self, kind: TableKind, rt: &str) -> Result<DeltaTable> {
        if let Some(t) = self.tables.get(kind, rt) {
            return Ok(t);
        }
        let t = match self.root.open_table(kind, rt).await? {
            Some(t) => t,
            None => {
                let schema = match kind {
                    TableKind::History => history_schema(),
                    TableKind::Current => {
                        let f = self.flattener(rt).await?;
                        self.shapes.record_shape_options(rt, f.shape().options).await?;
                        f.schema().as_ref().clone()
                    }
                    TableKind::View | TableKind::System => {
                        return Err(Error::Flatten(format!("no resource table of kind {kind:?} ({rt})")));
                    }
                };
                self.root.create_table(kind, rt, &schema).await?
            }
        };
        self.tables.put(kind, rt, t.clone());
        Ok(t)
    }

    /// Builds the history and current batches of every type in `records` (in order; the
    /// last version of an id decides its current row), parsing the stored JSON a chunk at
    /// a time. Every current row is replaced by id unless the caller sets
    /// [`PreparedType::all_new`].
    pub(crate) async fn prepare(&self, records: Vec<VersionRecord>) -> Result<Vec<PreparedType>> {
        // Grouped by type, in order, moving the records (no copy of their JSON).
        let mut by_type: Vec<(String, Vec<VersionRecord>)> = Vec::new();
        for r in records {
            match by_type.iter_mut().find(|(t, _)| *t == r.resource_type) {
                Some((_, v)) => v.push(r),
                None => by_type.push((r.resource_type.clone(), vec![r])),
            }
        }
        let mut work = Vec::with_capacity(by_type.len());
        for (rt, recs) in by_type {
            work.push((rt.clone(), self.flattener(&rt).await?, recs));
        }
        let compartment = self.shapes.compartment.clone();
        tokio::task::spawn_blocking(move || {
            work.into_iter().map(|(rt, f, recs)| prepare_type(&compartment, rt, &f, recs)).collect::<Result<Vec<_>>>()
        })
        .await
        .map_err(|e| Error::Flatten(e.to_string()))?
    }

    /// Commits prepared batches up to sequence `seq`, every table concurrently, skipping
    /// the tables in `done` (committed by an earlier attempt) and, with `check_applied`
    /// (recovery), those whose `txn` already is `seq` or later. Returns each table's
    /// result; the caller publishes them together once all succeeded, so in-process
    /// readers never see half of a round (a transaction spanning types included).
    pub(crate) async fn commit_tables(
        &self,
        seq: i64,
        prepared: Vec<PreparedType>,
        done: &HashSet<(TableKind, String)>,
        check_applied: bool,
    ) -> Vec<TableResult> {
        let mut jobs: Vec<futures::future::BoxFuture<'_, TableResult>> = Vec::new();
        for p in prepared {
            let rt = p.rt.clone();
            if !done.contains(&(TableKind::History, rt.clone())) {
                let rt = rt.clone();
                let batch = p.history;
                jobs.push(Box::pin(async move {
                    let r = self.commit_history(seq, &rt, batch, check_applied).await;
                    (TableKind::History, rt, r)
                }));
            }
            if !done.contains(&(TableKind::Current, rt.clone())) {
                let part = CurrentPart {
                    ids: p.ids,
                    batches: p.current,
                    all_new: p.all_new,
                    new_rows: p.new_rows,
                    old_owners: p.old_owners,
                };
                jobs.push(Box::pin(async move {
                    let r = self.commit_current(seq, &rt, part, check_applied).await;
                    (TableKind::Current, rt, r)
                }));
            }
        }
        // A few tables at a time: each write holds its Parquet row groups (and a replace its
        // scan) in memory, and two cores gain nothing from more.
        use futures::StreamExt;
        futures::stream::iter(jobs).buffer_unordered(TABLE_COMMITS_AT_ONCE).collect().await
    }

    /// Appends rows (JSON objects) to the append-only table `t`.
    pub(crate) async fn append_rows(&self, seq: i64, t: &AppendTable, rows: &[Vec<u8>]) -> Result<DeltaTable> {
        let table = match self.tables.get(TableKind::System, &t.name) {
            Some(x) => x,
            None => match self.root.open_table(TableKind::System, &t.name).await? {
                Some(x) => x,
                None => self.root.create_table(TableKind::System, &t.name, &t.schema).await?,
            },
        };
        let mut decoder = arrow::json::ReaderBuilder::new(t.schema.clone())
            .build_decoder()
            .map_err(|e| Error::Flatten(format!("{}: {e}", t.name)))?;
        let mut text = Vec::with_capacity(rows.iter().map(|r| r.len() + 1).sum());
        for r in rows {
            text.extend_from_slice(r);
            text.push(b'\n');
        }
        decoder.decode(&text).map_err(|e| Error::Flatten(format!("{}: {e}", t.name)))?;
        let batch = decoder
            .flush()
            .map_err(|e| Error::Flatten(format!("{}: {e}", t.name)))?
            .unwrap_or_else(|| RecordBatch::new_empty(t.schema.clone()));
        let out = table.write(vec![batch]).with_save_mode(SaveMode::Append).with_commit_properties(txn(seq)).await?;
        self.stats.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(out)
    }

    /// The sequence a table holds everything up to (its `txn`; `None` before any flush).
    pub(crate) async fn flushed_seq(table: &DeltaTable) -> Result<Option<i64>> {
        Ok(table.snapshot()?.transaction_version(table.log_store().as_ref(), JOURNAL_APP_ID).await?)
    }

    /// Persists the watermark: the version of every table after the last complete flush
    /// round (`_fhirlake/watermark.json`). Readers of the directory (`fhirlake sql
    /// --data`, or anyone reading the file) open each table at that version and so never
    /// see half of a transaction. Best effort and not fsynced: a stale watermark is only
    /// older, still consistent; start-up rewrites it once the tables hold the store's log.
    pub(crate) async fn write_watermark(&self, seq: i64) {
        let mut watermark = Watermark { format: layout::FORMAT, seq, tables: Default::default() };
        for (kind, rt, version) in self.tables.versions() {
            if matches!(kind, TableKind::Current | TableKind::History)
                && let Some(v) = version
            {
                watermark.tables.insert(kind.table_path(&rt), v);
            }
        }
        if let Err(e) = self.root.put_unsynced(layout::WATERMARK_PATH, layout::encode(&watermark)).await {
            tracing::warn!(error = %e, "could not write the watermark; readers of the directory see an older one");
        }
    }

    /// The new history table, or `None` when it already carried `seq`.
    async fn commit_history(
        &self,
        seq: i64,
        rt: &str,
        batch: RecordBatch,
        check_applied: bool,
    ) -> Result<Option<DeltaTable>> {
        let history = self.table(TableKind::History, rt).await?;
        if check_applied && applied(&history, seq).await? {
            return Ok(None);
        }
        let t = history.write(vec![batch]).with_save_mode(SaveMode::Append).with_commit_properties(txn(seq)).await?;
        self.stats.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(t))
    }

    /// Replaces the current rows of a round's ids, in chunks of [`REPLACE_CHUNK`] ids (delta-rs
    /// turns the list into an expression nested as deep as it is long: the flusher's thread
    /// has the stack for it); only the last chunk carries the round's `txn`, so a crash
    /// between chunks leaves the table behind and recovery replaces those ids again.
    async fn commit_current(
        &self,
        seq: i64,
        rt: &str,
        part: CurrentPart,
        check_applied: bool,
    ) -> Result<Option<DeltaTable>> {
        let mut current = self.table(TableKind::Current, rt).await?;
        if check_applied && applied(&current, seq).await? {
            return Ok(None);
        }
        if part.all_new {
            let t =
                current.write(part.batches).with_save_mode(SaveMode::Append).with_commit_properties(txn(seq)).await?;
            self.stats.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(Some(t));
        }
        let new_rows: HashMap<&str, &NewRow> = part.new_rows.iter().map(|(id, r)| (id.as_str(), r)).collect();
        let chunks: Vec<&[String]> = part.ids.chunks(REPLACE_CHUNK).collect();
        let last = chunks.len().saturating_sub(1);
        for (n, ids) in chunks.into_iter().enumerate() {
            let props = if n == last { txn(seq) } else { no_txn() };
            let predicate = replace_predicate(ids, part.old_owners.as_ref(), &new_rows);
            let batches = if last == 0 { part.batches.clone() } else { rows_of(&part.batches, ids)? };
            current = if batches.iter().all(|b| b.num_rows() == 0) {
                current.delete().with_predicate(predicate).with_commit_properties(props).await?.0
            } else {
                // Rewritten files keep the compacted size (delta-rs' default is ~100 MiB,
                // which would make the next update of any of those rows rewrite it all).
                current
                    .write(batches)
                    .with_save_mode(SaveMode::Overwrite)
                    .with_replace_where(predicate)
                    .with_target_file_size(std::num::NonZeroU64::new(crate::compact::DEFAULT_TARGET_FILE_BYTES))
                    .with_commit_properties(props)
                    .await?
            };
            self.stats.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(Some(current))
    }
}

/// Tables a flush round commits concurrently.
const TABLE_COMMITS_AT_ONCE: usize = 4;

/// Most ids one `replaceWhere` names: each chunk rewrites every file holding one of its
/// rows, so fewer, larger chunks rewrite less (random updates touch most files of a table).
const REPLACE_CHUNK: usize = 50_000;

/// What a round changes in one current table.
struct CurrentPart {
    ids: Vec<String>,
    batches: Vec<RecordBatch>,
    all_new: bool,
    new_rows: Vec<(String, NewRow)>,
    old_owners: Option<HashMap<String, Option<String>>>,
}

/// The rows of `batches` whose `id` is one of `ids`.
fn rows_of(batches: &[RecordBatch], ids: &[String]) -> Result<Vec<RecordBatch>> {
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for batch in batches {
        let column =
            batch.column_by_name("id").ok_or_else(|| Error::Flatten("a current batch has no id column".into()))?;
        let column = arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8)?;
        let column = column.as_string::<i32>();
        let mask: BooleanArray =
            (0..column.len()).map(|i| Some(column.is_valid(i) && wanted.contains(column.value(i)))).collect();
        let rows = arrow::compute::filter_record_batch(batch, &mask)?;
        if rows.num_rows() > 0 {
            out.push(rows);
        }
    }
    Ok(out)
}

/// The rows a flush replaces in a current table: `id IN (ids)`, narrowed by the owning
/// patients of the rows in Delta and of the new rows when the old ones are known. The new
/// rows satisfy it too (delta-rs checks), and a compacted table is sorted by `_patient`,
/// so file statistics skip every file of other patients.
fn replace_predicate(
    ids: &[String],
    old_owners: Option<&HashMap<String, Option<String>>>,
    new_rows: &HashMap<&str, &NewRow>,
) -> deltalake::datafusion::prelude::Expr {
    let by_id = col("id").in_list(ids.iter().map(|id| lit(id.clone())).collect(), false);
    let Some(old) = old_owners else { return by_id };
    let mut owners: Vec<&str> = Vec::new();
    let mut none = false;
    for id in ids {
        let new = match new_rows.get(id.as_str()) {
            Some(NewRow::Live(o)) => Some(o),
            _ => None,
        };
        for o in old.get(id).into_iter().chain(new) {
            match o {
                Some(o) => owners.push(o),
                None => none = true,
            }
        }
    }
    owners.sort_unstable();
    owners.dedup();
    let mut by_owner = (!owners.is_empty())
        .then(|| col("_patient").in_list(owners.into_iter().map(|o| lit(o.to_string())).collect(), false));
    if none {
        let null = col("_patient").is_null();
        by_owner = Some(match by_owner {
            Some(e) => e.or(null),
            None => null,
        });
    }
    match by_owner {
        Some(o) => by_id.and(o),
        None => by_id,
    }
}

/// Properties of a commit that is not the last of its round.
fn no_txn() -> CommitProperties {
    CommitProperties::default().with_cleanup_expired_logs(Some(false))
}

/// A flush commit's properties: the sequence as a `txn`; expired-log cleanup (a listing
/// of `_delta_log`) is left to maintenance.
fn txn(seq: i64) -> CommitProperties {
    CommitProperties::default()
        .with_application_transaction(Transaction::new(JOURNAL_APP_ID, seq))
        .with_cleanup_expired_logs(Some(false))
}

/// CPU part of applying one type: parse what is missing, compartments, both batches.
fn prepare_type(
    compartment: &PatientCompartment,
    rt: String,
    flattener: &Flattener,
    recs: Vec<VersionRecord>,
) -> Result<PreparedType> {
    // The last version of each id decides its current row.
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (k, r) in recs.iter().enumerate() {
        last.insert(r.id.as_str(), k);
    }
    let is_last = |k: usize| last.get(recs[k].id.as_str()) == Some(&k);
    // Parsed a chunk at a time: the trees of a whole round would take several times its
    // JSON in memory.
    let mut owners: Vec<(Option<String>, Vec<String>)> = vec![Default::default(); recs.len()];
    let mut current = Vec::new();
    let order: Vec<usize> = (0..recs.len()).collect();
    for chunk in order.chunks(FLATTEN_CHUNK) {
        let docs: Vec<Option<Json>> = chunk
            .iter()
            .map(|&k| recs[k].raw.as_ref().map(|raw| Json::parse(raw.as_bytes(), ParseLimits::STORED)).transpose())
            .collect::<std::result::Result<_, _>>()?;
        for (&k, d) in chunk.iter().zip(&docs) {
            if let Some(d) = d {
                owners[k] = compartment.members(&rt, &recs[k].id, d);
            }
        }
        let keep: Vec<(usize, &Json)> = chunk
            .iter()
            .zip(&docs)
            .filter(|(k, _)| is_last(**k) && !recs[**k].deleted)
            .filter_map(|(&k, d)| d.as_ref().map(|d| (k, d)))
            .collect();
        if keep.is_empty() {
            continue;
        }
        let metas: Vec<RowMeta> = keep
            .iter()
            .map(|&(k, _)| RowMeta {
                version: recs[k].version,
                last_updated_us: recs[k].last_updated_us,
                raw: recs[k].raw.clone().unwrap_or_else(|| Arc::from("")),
                patient: owners[k].0.clone(),
                compartment: owners[k].1.clone(),
            })
            .collect();
        let input: Vec<(&Json, &RowMeta)> = keep.iter().zip(&metas).map(|(&(_, d), m)| (d, m)).collect();
        current.push(flattener.to_batch(&input)?);
    }
    if current.is_empty() {
        current.push(flattener.to_batch(&[])?);
    }
    let history = history_batch(&recs, &owners)?;
    let ids = last.keys().map(|s| s.to_string()).collect();
    let new_rows = last
        .iter()
        .map(|(id, &k)| {
            (id.to_string(), if recs[k].deleted { NewRow::Deleted } else { NewRow::Live(owners[k].0.clone()) })
        })
        .collect();
    Ok(PreparedType { rt, history, current, ids, all_new: false, new_rows, old_owners: None })
}

/// Resources parsed and flattened at a time when a round is prepared.
const FLATTEN_CHUNK: usize = 2000;

async fn applied(table: &DeltaTable, seq: i64) -> Result<bool> {
    let v = table.snapshot()?.transaction_version(table.log_store().as_ref(), JOURNAL_APP_ID).await?;
    Ok(v.is_some_and(|v| v >= seq))
}

/// Every version in the history `table` of `rt`, handed to `sink` in batches with each
/// version's owning patient (upgrade of a root written before the serving store). Streams:
/// memory stays bounded by a batch whatever the table's size.
pub(crate) async fn read_versions(
    table: &DeltaTable,
    rt: &str,
    sink: &mut (dyn FnMut(Vec<(VersionRecord, Option<String>)>) -> Result<()> + Send),
) -> Result<()> {
    use futures::StreamExt;
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state())?;
    let provider = table.table_provider().await?;
    let df = ctx.read_table(provider)?.select(vec![
        col("id"),
        col("_version_id"),
        col("_deleted"),
        col("_content_hash"),
        col("_last_updated"),
        col("_patient"),
        col("_raw"),
    ])?;
    let mut stream = df.execute_stream().await?;
    while let Some(b) = stream.next().await {
        let b: ArrayRef = Arc::new(arrow::array::StructArray::from(b?));
        let b = arrow::compute::cast(&b, &arrow::datatypes::DataType::Struct(history_fields()))?;
        let s = b.as_struct();
        let ids = s.column(0).as_string::<i32>();
        let versions = s.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        let deleted = s.column(2).as_boolean();
        let hashes = s.column(3).as_primitive::<arrow::datatypes::Int64Type>();
        let ts = s.column(4).as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        let patients = s.column(5).as_string::<i32>();
        let raws = s.column(6).as_string::<i32>();
        let rows = (0..s.len())
            .map(|i| {
                let record = VersionRecord {
                    resource_type: rt.to_string(),
                    id: ids.value(i).to_string(),
                    version: versions.value(i),
                    last_updated_us: ts.value(i),
                    deleted: deleted.value(i),
                    hash: hashes.value(i) as u64,
                    raw: (!deleted.value(i) && raws.is_valid(i)).then(|| Arc::from(raws.value(i))),
                };
                let owner = (!deleted.value(i) && patients.is_valid(i)).then(|| patients.value(i).to_string());
                (record, owner)
            })
            .collect();
        sink(rows)?;
    }
    Ok(())
}

fn history_fields() -> arrow::datatypes::Fields {
    use arrow::datatypes::{DataType, Field};
    arrow::datatypes::Fields::from(vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("_version_id", DataType::Int64, true),
        Field::new("_deleted", DataType::Boolean, true),
        Field::new("_content_hash", DataType::Int64, true),
        Field::new("_last_updated", fhirlake_schemas::shape::timestamp_type(), true),
        Field::new("_patient", DataType::Utf8, true),
        Field::new("_raw", DataType::Utf8, true),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recursion_depth_is_fixed_per_table() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        // A table created earlier with depth 2 keeps it under a default of 1.
        std::fs::create_dir_all(dir.path().join("_fhirlake/shape")).unwrap();
        std::fs::write(dir.path().join("_fhirlake/shape/Questionnaire.json"), r#"{"maxDepth":2}"#).unwrap();
        let applier = Applier::new(root, ShapeOptions { max_depth: 1, ..Default::default() }, Model::r4().unwrap());
        assert_eq!(applier.flattener("Questionnaire").await.unwrap().shape().options.max_depth, 2);
        // A new table records the configured depth when it is created.
        applier.table(TableKind::Current, "Patient").await.unwrap();
        let recorded = std::fs::read_to_string(dir.path().join("_fhirlake/shape/Patient.json")).unwrap();
        assert!(recorded.contains(r#""maxDepth":1"#), "{recorded}");
    }
}
