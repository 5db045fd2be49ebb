//! Applying one journal entry to the Delta tables of the types it touches.
//!
//! Owns: turning a group commit's versions into Arrow batches ([`Applier::prepare`]: CPU
//! only, on the blocking pool, while the journal entry is being fsynced) and committing
//! them ([`Applier::commit`]: per type, the history append and the current-table commit run
//! concurrently; every commit carries the journal sequence as a Delta `txn` action, and a
//! table that already has it is skipped, which makes replay idempotent). Also opening or
//! creating tables and rebuilding the resource index from the history tables.
//! Must not: decide versions or answer callers (that is [`crate::writer`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::DeltaTable;
use deltalake::datafusion::prelude::{SessionContext, col, lit};
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use fhirlake_schemas::json::ParseLimits;
use fhirlake_schemas::layout::{self, ShapeRecord, Watermark};
use fhirlake_schemas::shape::history_schema;
use fhirlake_schemas::{Json, Model, ShapeOptions, TableShape};
use object_store::ObjectStoreExt;
use tokio::sync::Mutex;

use crate::compartment::PatientCompartment;
use crate::flatten::{Flattener, RowMeta};
use crate::journal::{JOURNAL_APP_ID, VersionRecord};
use crate::store::{StorageRoot, TableKind};
use crate::writer::{IndexEntry, ResourceIndex, TableSet, WriterStats};
use crate::{Error, Result};

/// The batches of one type, ready to commit.
pub(crate) struct PreparedType {
    rt: String,
    history: RecordBatch,
    current: RecordBatch,
    /// Every id of the type in this entry (the `replaceWhere` set).
    ids: Vec<String>,
    /// True when none of the ids existed before: the current table is appended to.
    all_new: bool,
    /// The owning patient of each id's new current row (`None`: deleted or no owner).
    pub(crate) new_owners: Vec<(String, Option<String>)>,
    /// The owning patients of the rows being replaced, when all are known (set by the
    /// commit stage from the index): they narrow the replace predicate to the files of
    /// those patients, the clustering key of compacted current tables.
    pub(crate) old_owners: Option<Vec<Option<String>>>,
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

/// Prepares and commits journal entries.
pub(crate) struct Applier {
    pub(crate) root: StorageRoot,
    pub(crate) tables: Arc<TableSet>,
    pub(crate) stats: Arc<WriterStats>,
    flatteners: Mutex<HashMap<String, Arc<Flattener>>>,
    compartment: Arc<PatientCompartment>,
    shape: ShapeOptions,
}

impl Applier {
    pub(crate) fn new(root: StorageRoot, shape: ShapeOptions, model: &Model) -> Self {
        Self {
            root,
            tables: Arc::new(TableSet::default()),
            stats: Arc::new(WriterStats::default()),
            flatteners: Mutex::new(HashMap::new()),
            compartment: Arc::new(PatientCompartment::new(model)),
            shape,
        }
    }

    /// Where the shape options of a type's current table are recorded when it is created:
    /// the recursion depth is fixed per table, whatever later defaults say.
    fn shape_path(&self, rt: &str) -> object_store::path::Path {
        self.root.path(&layout::shape_path(rt))
    }

    /// The shape options of `rt`'s current table: as recorded, or the configured ones for a
    /// table that does not exist yet.
    async fn shape_options(&self, rt: &str) -> Result<ShapeOptions> {
        match self.root.object_store().get(&self.shape_path(rt)).await {
            Ok(r) => {
                let path = layout::shape_path(rt);
                let record: ShapeRecord = layout::decode(&path, &r.bytes().await?).map_err(Error::Config)?;
                if record.max_depth < 1 {
                    return Err(Error::Config(format!("{path} has no valid maxDepth")));
                }
                Ok(ShapeOptions { max_depth: record.max_depth, search_index: record.search_index })
            }
            Err(object_store::Error::NotFound { .. }) => Ok(self.shape),
            Err(e) => Err(e.into()),
        }
    }

    async fn record_shape_options(&self, rt: &str, options: ShapeOptions) -> Result<()> {
        let record = ShapeRecord {
            format: layout::FORMAT,
            resource_type: rt.to_string(),
            max_depth: options.max_depth,
            search_index: options.search_index,
        };
        let body = layout::encode(&record);
        let opts = object_store::PutOptions { mode: object_store::PutMode::Create, ..Default::default() };
        match self.root.object_store().put_opts(&self.shape_path(rt), body.into(), opts).await {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn flattener(&self, rt: &str) -> Result<Arc<Flattener>> {
        let mut f = self.flatteners.lock().await;
        if let Some(x) = f.get(rt) {
            return Ok(x.clone());
        }
        let options = self.shape_options(rt).await?;
        let shape = TableShape::try_new(Model::r4()?, rt, options)?;
        let x = Arc::new(Flattener::new(Arc::new(shape)));
        f.insert(rt.to_string(), x.clone());
        Ok(x)
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
                        self.record_shape_options(rt, f.shape().options).await?;
                        f.schema().as_ref().clone()
                    }
                    TableKind::View => {
                        return Err(Error::Flatten(format!("the writer does not write view tables ({rt})")));
                    }
                };
                self.root.create_table(kind, rt, &schema).await?
            }
        };
        self.tables.put(kind, rt, t.clone());
        Ok(t)
    }

    /// Builds the history and current batches of every type in `records`. `parsed` holds
    /// the served JSON where the caller has it (recovery parses `raw`); `existed` the ids
    /// that existed before the batch (`None`: unknown, so the current table is always
    /// rewritten by id).
    pub(crate) async fn prepare(
        &self,
        records: &[VersionRecord],
        parsed: Vec<Option<Arc<Json>>>,
        existed: Option<&HashSet<(String, String)>>,
    ) -> Result<Vec<PreparedType>> {
        let mut by_type: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, r) in records.iter().enumerate() {
            match by_type.iter_mut().find(|(t, _)| *t == r.resource_type) {
                Some((_, v)) => v.push(i),
                None => by_type.push((r.resource_type.clone(), vec![i])),
            }
        }
        let mut work = Vec::with_capacity(by_type.len());
        for (rt, rows) in by_type {
            let all_new =
                existed.is_some_and(|ex| rows.iter().all(|&i| !ex.contains(&(rt.clone(), records[i].id.clone()))));
            let recs: Vec<VersionRecord> = rows.iter().map(|&i| records[i].clone()).collect();
            let docs: Vec<Option<Arc<Json>>> = rows.iter().map(|&i| parsed.get(i).cloned().flatten()).collect();
            work.push((rt.clone(), self.flattener(&rt).await?, recs, docs, all_new));
        }
        let compartment = self.compartment.clone();
        tokio::task::spawn_blocking(move || {
            work.into_iter()
                .map(|(rt, f, recs, docs, all_new)| prepare_type(&compartment, rt, &f, recs, docs, all_new))
                .collect::<Result<Vec<_>>>()
        })
        .await
        .map_err(|e| Error::Flatten(e.to_string()))?
    }

    /// Commits prepared batches; tables that already carry `seq` are skipped. The new table
    /// versions are published to readers together, after every table of the group is
    /// committed, so in-process readers (SQL, search, views) never see half of a group
    /// (a transaction spanning types included). If a commit fails, none is published and
    /// the writer stops until a restart replays the journal entry.
    pub(crate) async fn commit(&self, seq: i64, prepared: Vec<PreparedType>) -> Result<()> {
        let futures = prepared.into_iter().map(|p| self.commit_type(seq, p));
        let mut committed = Vec::new();
        for r in futures::future::join_all(futures).await {
            committed.extend(r?);
        }
        self.tables.put_all(committed);
        self.write_watermark(seq).await;
        Ok(())
    }

    /// Persists the watermark: the version of every table after the last fully applied
    /// group commit (`_fhirlake/watermark.json`). Readers of the directory (`fhirlake sql
    /// --data`, or anyone reading the file) open each table at that version and so never
    /// see half of a transaction. Best effort and not fsynced: a stale watermark is only
    /// older, still consistent; start-up rewrites it after the journal replay.
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

    async fn commit_type(&self, seq: i64, p: PreparedType) -> Result<Vec<(TableKind, String, DeltaTable)>> {
        let started = std::time::Instant::now();
        let rows = p.history.num_rows();
        let predicate = replace_predicate(&p);
        let (h, c) = tokio::join!(self.commit_history(seq, &p.rt, p.history), async {
            self.commit_current(seq, &p.rt, p.current, predicate, p.all_new).await
        });
        let mut out = Vec::new();
        out.extend(h?.map(|t| (TableKind::History, p.rt.clone(), t)));
        out.extend(c?.map(|t| (TableKind::Current, p.rt.clone(), t)));
        tracing::debug!(rt = p.rt, rows, elapsed = ?started.elapsed(), "committed");
        Ok(out)
    }

    /// The new history table, or `None` when it already carried `seq`.
    async fn commit_history(&self, seq: i64, rt: &str, batch: RecordBatch) -> Result<Option<DeltaTable>> {
        let history = self.table(TableKind::History, rt).await?;
        if applied(&history, seq).await? {
            return Ok(None);
        }
        let t = history.write(vec![batch]).with_save_mode(SaveMode::Append).with_commit_properties(txn(seq)).await?;
        self.stats.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(t))
    }

    async fn commit_current(
        &self,
        seq: i64,
        rt: &str,
        batch: RecordBatch,
        predicate: deltalake::datafusion::prelude::Expr,
        all_new: bool,
    ) -> Result<Option<DeltaTable>> {
        let current = self.table(TableKind::Current, rt).await?;
        if applied(&current, seq).await? {
            return Ok(None);
        }
        let t = if all_new {
            current.write(vec![batch]).with_save_mode(SaveMode::Append).with_commit_properties(txn(seq)).await?
        } else {
            if batch.num_rows() == 0 {
                current.delete().with_predicate(predicate).with_commit_properties(txn(seq)).await?.0
            } else {
                // Rewritten files keep the compacted size (delta-rs' default is ~100 MiB,
                // which would make the next update of any of those rows rewrite it all).
                current
                    .write(vec![batch])
                    .with_save_mode(SaveMode::Overwrite)
                    .with_replace_where(predicate)
                    .with_target_file_size(std::num::NonZeroU64::new(crate::compact::DEFAULT_TARGET_FILE_BYTES))
                    .with_commit_properties(txn(seq))
                    .await?
            }
        };
        self.stats.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(t))
    }
}

/// The rows a group commit replaces in a current table: `id IN (ids)`, narrowed by the
/// owning patients of the old and new rows when the old ones are known. The new rows
/// satisfy it too (delta-rs checks), and a compacted table is sorted by `_patient`, so
/// file statistics skip every file of other patients.
fn replace_predicate(p: &PreparedType) -> deltalake::datafusion::prelude::Expr {
    let by_id = col("id").in_list(p.ids.iter().map(|id| lit(id.clone())).collect(), false);
    let Some(old) = &p.old_owners else { return by_id };
    let mut owners: Vec<&str> = Vec::new();
    let mut none = false;
    for o in old.iter().chain(p.new_owners.iter().map(|(_, o)| o)) {
        match o {
            Some(o) => owners.push(o),
            None => none = true,
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

fn txn(seq: i64) -> CommitProperties {
    CommitProperties::default().with_application_transaction(Transaction::new(JOURNAL_APP_ID, seq))
}

/// CPU part of applying one type: parse what is missing, compartments, both batches.
fn prepare_type(
    compartment: &PatientCompartment,
    rt: String,
    flattener: &Flattener,
    recs: Vec<VersionRecord>,
    docs: Vec<Option<Arc<Json>>>,
    all_new: bool,
) -> Result<PreparedType> {
    let limits = ParseLimits::STORED;
    let docs: Vec<Option<Arc<Json>>> = recs
        .iter()
        .zip(docs)
        .map(|(r, d)| match (d, &r.raw) {
            (Some(d), _) => Ok(Some(d)),
            (None, Some(raw)) => Ok(Some(Arc::new(Json::parse(raw.as_bytes(), limits)?))),
            (None, None) => Ok(None),
        })
        .collect::<Result<_>>()?;
    let owners: Vec<(Option<String>, Vec<String>)> = recs
        .iter()
        .zip(&docs)
        .map(|(r, d)| d.as_ref().map(|d| compartment.members(&rt, &r.id, d)).unwrap_or_default())
        .collect();
    let history = history_batch(&recs, &owners)?;
    // The last version of each id in this entry decides its current row.
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (k, r) in recs.iter().enumerate() {
        last.insert(r.id.as_str(), k);
    }
    let mut keep: Vec<usize> = last.values().copied().filter(|&k| !recs[k].deleted).collect();
    keep.sort_unstable();
    let metas: Vec<RowMeta> = keep
        .iter()
        .map(|&k| RowMeta {
            version: recs[k].version,
            last_updated_us: recs[k].last_updated_us,
            raw: recs[k].raw.clone().unwrap_or_else(|| Arc::from("")),
            patient: owners[k].0.clone(),
            compartment: owners[k].1.clone(),
        })
        .collect();
    let input: Vec<(&Json, &RowMeta)> =
        keep.iter().zip(&metas).filter_map(|(&k, m)| docs[k].as_deref().map(|d| (d, m))).collect();
    let current = flattener.to_batch(&input)?;
    let ids = last.keys().map(|s| s.to_string()).collect();
    let new_owners = last
        .iter()
        .map(|(id, &k)| (id.to_string(), if recs[k].deleted { None } else { owners[k].0.clone() }))
        .collect();
    Ok(PreparedType { rt, history, current, ids, all_new, new_owners, old_owners: None })
}

async fn applied(table: &DeltaTable, seq: i64) -> Result<bool> {
    let v = table.snapshot()?.transaction_version(table.log_store().as_ref(), JOURNAL_APP_ID).await?;
    Ok(v.is_some_and(|v| v >= seq))
}

fn history_batch(recs: &[VersionRecord], owners: &[(Option<String>, Vec<String>)]) -> Result<RecordBatch> {
    let schema = Arc::new(history_schema());
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(recs.iter().map(|r| r.id.as_str()))),
        Arc::new(Int64Array::from_iter_values(recs.iter().map(|r| r.version))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(recs.iter().map(|r| r.last_updated_us)).with_timezone("UTC"),
        ),
        Arc::new(BooleanArray::from(recs.iter().map(|r| r.deleted).collect::<Vec<_>>())),
        Arc::new(StringArray::from(owners.iter().map(|o| o.0.as_deref()).collect::<Vec<_>>())),
        Arc::new(StringArray::from(recs.iter().map(|r| r.raw.as_deref()).collect::<Vec<_>>())),
        // The hash's bits, stored as a signed 64-bit integer.
        Arc::new(Int64Array::from_iter_values(recs.iter().map(|r| r.hash as i64))),
    ];
    Ok(RecordBatch::try_new(schema, cols)?)
}

/// Adds the latest version of every resource in the history `table` of `rt` to `index`.
pub(crate) async fn load_index(table: &DeltaTable, rt: &str, index: &mut ResourceIndex) -> Result<()> {
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
    ])?;
    for b in df.collect().await? {
        let b: ArrayRef = Arc::new(arrow::array::StructArray::from(b));
        let b = arrow::compute::cast(&b, &arrow::datatypes::DataType::Struct(history_index_fields()))?;
        let s = b.as_struct();
        let ids = s.column(0).as_string::<i32>();
        let versions = s.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        let deleted = s.column(2).as_boolean();
        let hashes = s.column(3).as_primitive::<arrow::datatypes::Int64Type>();
        let ts = s.column(4).as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        let patients = s.column(5).as_string::<i32>();
        for i in 0..s.len() {
            let patient = (!deleted.value(i) && patients.is_valid(i)).then(|| patients.value(i));
            let e = IndexEntry {
                version: versions.value(i),
                deleted: deleted.value(i),
                hash: hashes.value(i) as u64,
                last_updated_us: ts.value(i),
                owner: index.intern_owner(patient),
            };
            let id = ids.value(i);
            if index.get(rt, id).is_none_or(|old| old.version < e.version) {
                index.set(rt, id, e);
            }
        }
    }
    Ok(())
}

fn history_index_fields() -> arrow::datatypes::Fields {
    use arrow::datatypes::{DataType, Field};
    arrow::datatypes::Fields::from(vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("_version_id", DataType::Int64, true),
        Field::new("_deleted", DataType::Boolean, true),
        Field::new("_content_hash", DataType::Int64, true),
        Field::new("_last_updated", fhirlake_schemas::shape::timestamp_type(), true),
        Field::new("_patient", DataType::Utf8, true),
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
