//! What readers see: the Delta tables plus every acknowledged group commit not yet
//! flushed to them, at one instant.
//!
//! Owns: the unflushed buffer (per type, the versions of each group commit, appended by the
//! writer task before it answers and dropped when a flush round that holds them is
//! published, under the same lock as the tables) and the [`ReadView`] taken of it: the
//! Delta tables as last published, the buffered versions up to the last acknowledged
//! sequence, and, per type on demand, the flattened current-table rows those versions
//! leave ([`ReadView::current_rows`]) with the ids whose Delta row they hide, and their
//! history rows ([`ReadView::history_rows`]). Flattening is incremental: each type keeps
//! the rows flattened so far (one batch per range of sequences, merged as they grow), so a
//! version is parsed and flattened once however many readers ask. Must not: decide
//! versions or commit to Delta.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use deltalake::DeltaTable;
use fhirlake_schemas::Json;
use fhirlake_schemas::json::ParseLimits;
use std::sync::RwLock;

use super::ops::VersionRecord;
use super::rows::{Shapes, history_batch};
use crate::flatten::RowMeta;
use crate::store::TableKind;
use crate::{Error, Result};

/// An acknowledged version not yet in Delta.
#[derive(Debug, Clone)]
pub(crate) struct Buffered {
    /// The group commit that wrote it.
    pub(crate) seq: i64,
    pub(crate) record: VersionRecord,
    /// Its owning patient (computed when it was committed).
    pub(crate) owner: Option<String>,
}

/// Rows flattened so far for one type: batches in sequence order, each covering every
/// live version of the type in a range of sequences.
#[derive(Default)]
struct Flat {
    /// Versions with a sequence in `(from, done]` are in `batches`.
    from: i64,
    done: i64,
    /// `(lowest sequence, highest sequence, rows)`.
    batches: Vec<(i64, i64, RecordBatch)>,
}

/// The unflushed versions of one type.
#[derive(Default, Clone)]
struct TypeBuffer {
    /// One slice per group commit, in sequence order.
    segments: Vec<Arc<[Buffered]>>,
    flat: Arc<tokio::sync::Mutex<Flat>>,
}

/// Every acknowledged version not yet published in Delta, by type.
#[derive(Default)]
pub(crate) struct Buffer {
    types: HashMap<String, TypeBuffer>,
    /// The sequence the published tables hold everything up to.
    flushed: i64,
}

impl Buffer {
    /// Adds one group commit (called before it is answered).
    pub(crate) fn push(&mut self, versions: Vec<Buffered>) {
        let mut by_type: HashMap<String, Vec<Buffered>> = HashMap::new();
        for v in versions {
            by_type.entry(v.record.resource_type.clone()).or_default().push(v);
        }
        for (rt, vs) in by_type {
            self.types.entry(rt).or_default().segments.push(vs.into());
        }
    }

    /// Drops what the tables now hold (everything up to `flushed`).
    pub(crate) fn published(&mut self, flushed: i64) {
        self.flushed = self.flushed.max(flushed);
        self.types.retain(|_, t| {
            t.segments.retain(|s| s.first().is_some_and(|v| v.seq > flushed));
            // A reader flattening now keeps its rows until the next publish.
            if let Ok(mut flat) = t.flat.try_lock() {
                let before = flat.batches.len();
                let dropped_upto = flat.batches.iter().filter(|(_, hi, _)| *hi <= flushed).map(|(_, hi, _)| *hi).max();
                flat.batches.retain(|(_, hi, _)| *hi > flushed);
                if flat.batches.len() != before
                    && let Some(upto) = dropped_upto
                {
                    flat.from = flat.from.max(upto);
                }
            }
            !t.segments.is_empty()
        });
    }

    /// Sets the sequence the tables hold at start-up.
    pub(crate) fn start_at(&mut self, seq: i64) {
        self.flushed = seq;
    }

    pub(crate) fn rows(&self) -> usize {
        self.types.values().flat_map(|t| t.segments.iter()).map(|s| s.len()).sum()
    }
}

/// Latest snapshot of every table, shared with readers, and the acknowledged versions
/// they do not hold yet (both under one lock: a publish swaps tables and drops what they
/// now hold at once, so a [`ReadView`] never sees a version twice or not at all).
#[derive(Default)]
pub struct TableSet {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    tables: HashMap<(TableKind, String), DeltaTable>,
    buffer: Buffer,
}

impl TableSet {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().expect("table set lock")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().expect("table set lock")
    }

    /// The latest known state of a table (a cheap clone), if it exists.
    pub fn get(&self, kind: TableKind, rt: &str) -> Option<DeltaTable> {
        self.read().tables.get(&(kind, rt.to_string())).cloned()
    }

    pub(crate) fn put(&self, kind: TableKind, rt: &str, t: DeltaTable) {
        self.write().tables.insert((kind, rt.to_string()), t);
    }

    /// Publishes several new table versions at once (one group commit).
    pub(crate) fn put_all(&self, tables: Vec<(TableKind, String, DeltaTable)>) {
        let mut set = self.write();
        for (kind, rt, t) in tables {
            set.tables.insert((kind, rt), t);
        }
    }

    /// Publishes a flush round: its tables, which hold everything up to `seq`, replace the
    /// buffered versions up to `seq`.
    pub(crate) fn publish(&self, tables: Vec<(TableKind, String, DeltaTable)>, seq: i64) {
        let mut set = self.write();
        for (kind, rt, t) in tables {
            set.tables.insert((kind, rt), t);
        }
        set.buffer.published(seq);
    }

    /// Buffers an acknowledged group commit (before it is answered).
    pub(crate) fn buffer(&self, versions: Vec<Buffered>) {
        self.write().buffer.push(versions);
    }

    /// The sequence the tables hold at start-up.
    pub(crate) fn start_at(&self, seq: i64) {
        self.write().buffer.start_at(seq);
    }

    /// Versions buffered (acknowledged, not yet published in Delta).
    pub fn buffered_rows(&self) -> usize {
        self.read().buffer.rows()
    }

    pub(crate) fn view(&self, shapes: Arc<Shapes>) -> ReadView {
        let set = self.read();
        ReadView::take(&set.buffer, &set.tables, shapes)
    }

    /// Every table's latest version, read at one instant (never half of a group commit).
    pub fn snapshot(&self) -> Vec<(TableKind, String, DeltaTable)> {
        self.read().tables.iter().map(|((k, rt), t)| (*k, rt.clone(), t.clone())).collect()
    }

    /// The latest version of every table of one kind, by type, read at one instant.
    pub fn snapshot_of(&self, kind: TableKind) -> HashMap<String, DeltaTable> {
        self.read().tables.iter().filter(|((k, _), _)| *k == kind).map(|((_, rt), t)| (rt.clone(), t.clone())).collect()
    }

    /// Every table's latest version, read at one instant (for the watermark; no table is
    /// cloned).
    pub(crate) fn versions(&self) -> Vec<(TableKind, String, Option<u64>)> {
        self.read().tables.iter().map(|((k, rt), t)| (*k, rt.clone(), t.version())).collect()
    }

    /// Types that have a current table.
    pub fn current_types(&self) -> Vec<String> {
        let mut v: Vec<String> =
            self.read().tables.keys().filter(|(k, _)| *k == TableKind::Current).map(|(_, t)| t.clone()).collect();
        v.sort();
        v
    }
}

/// One instant of the instance: the Delta tables as last published plus every
/// acknowledged version they do not hold yet. Reading it gives the answers a fully flushed
/// store would give. Cheap to take; flattening happens per type when a reader asks.
pub struct ReadView {
    flushed: i64,
    tables: HashMap<(TableKind, String), DeltaTable>,
    types: HashMap<String, TypeBuffer>,
    shapes: Arc<Shapes>,
    current: tokio::sync::Mutex<HashMap<String, Arc<CurrentRows>>>,
}

/// The current-table rows of one type that are not in Delta yet.
#[derive(Debug)]
pub struct CurrentRows {
    /// Rows in the table's shape (the flattener's schema), the latest live version of each
    /// buffered id.
    pub batches: Vec<RecordBatch>,
    /// Ids whose row in Delta, if any, is out of date (updated or deleted since the last
    /// flush): readers must not see it. Ids created since the flush are not in it.
    pub shadow: Arc<HashSet<String>>,
    /// The table's schema as flattened.
    pub schema: SchemaRef,
}

impl ReadView {
    pub(crate) fn take(
        buffer: &Buffer,
        tables: &HashMap<(TableKind, String), DeltaTable>,
        shapes: Arc<Shapes>,
    ) -> ReadView {
        ReadView {
            flushed: buffer.flushed,
            tables: tables.clone(),
            types: buffer.types.clone(),
            shapes,
            current: Default::default(),
        }
    }

    /// A table as published when the view was taken.
    pub fn table(&self, kind: TableKind, rt: &str) -> Option<DeltaTable> {
        self.tables.get(&(kind, rt.to_string())).cloned()
    }

    /// Every table of `kind` as published when the view was taken, by name.
    pub fn tables_of(&self, kind: TableKind) -> HashMap<String, DeltaTable> {
        self.tables.iter().filter(|((k, _), _)| *k == kind).map(|((_, rt), t)| (rt.clone(), t.clone())).collect()
    }

    /// Types with versions not in Delta yet.
    pub fn buffered_types(&self) -> Vec<String> {
        let mut v: Vec<String> = self.types.keys().cloned().collect();
        v.sort();
        v
    }

    /// Types with a current table or buffered versions.
    pub fn current_types(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .tables
            .keys()
            .filter(|(k, _)| *k == TableKind::Current)
            .map(|(_, rt)| rt.clone())
            .chain(self.types.keys().cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The current-table rows of `rt` not in Delta yet, and the ids whose Delta row they
    /// hide; `None` when nothing of `rt` is buffered.
    pub async fn current_rows(&self, rt: &str) -> Result<Option<Arc<CurrentRows>>> {
        let Some(t) = self.types.get(rt) else { return Ok(None) };
        let mut memo = self.current.lock().await;
        if let Some(r) = memo.get(rt) {
            return Ok(Some(r.clone()));
        }
        // The latest version of each buffered id in this view, and the ids that may have a
        // row in Delta (a first buffered version above 1).
        let mut latest: HashMap<&str, (i64, bool)> = HashMap::new();
        let mut shadow: HashSet<String> = HashSet::new();
        for v in t.segments.iter().flat_map(|s| s.iter()) {
            let r = &v.record;
            if latest.insert(r.id.as_str(), (r.version, r.deleted)).is_none() && r.version != 1 {
                shadow.insert(r.id.clone());
            }
        }
        let flattener = self.shapes.flattener(rt).await?;
        let batches = self.flattened(rt, t).await?;
        let mut visible = Vec::with_capacity(batches.len());
        for b in batches {
            let ids = b.column_by_name("id").ok_or_else(|| Error::Flatten("a current batch has no id".into()))?;
            let ids = ids.as_string::<i32>();
            let versions = b
                .column_by_name(fhirlake_schemas::shape::reserved::VERSION_ID)
                .ok_or_else(|| Error::Flatten("a current batch has no _version_id".into()))?
                .as_primitive::<arrow::datatypes::Int64Type>();
            let mask: BooleanArray = (0..b.num_rows())
                .map(|i| Some(ids.is_valid(i) && latest.get(ids.value(i)) == Some(&(versions.value(i), false))))
                .collect();
            let rows = arrow::compute::filter_record_batch(&b, &mask)?;
            if rows.num_rows() > 0 {
                visible.push(rows);
            }
        }
        let rows =
            Arc::new(CurrentRows { batches: visible, shadow: Arc::new(shadow), schema: flattener.schema().clone() });
        memo.insert(rt.to_string(), rows.clone());
        Ok(Some(rows))
    }

    /// Every live version of `rt` in this view's buffer, flattened: the type's shared rows,
    /// extended by what was committed since they were last extended.
    async fn flattened(&self, rt: &str, t: &TypeBuffer) -> Result<Vec<RecordBatch>> {
        let last = t.segments.last().and_then(|s| s.first()).map_or(self.flushed, |v| v.seq);
        let mut flat = t.flat.lock().await;
        let mut own = Vec::new();
        if flat.batches.is_empty() && flat.done <= self.flushed {
            // Nothing shared yet: start after what the tables hold.
            flat.from = self.flushed;
            flat.done = self.flushed;
        }
        if flat.from > self.flushed {
            // Pruned by a publish newer than this view: flatten this view's part of the gap
            // for itself.
            let gap: Vec<Buffered> = self.range(t, self.flushed, flat.from);
            if !gap.is_empty() {
                own.push(self.flatten(rt, gap).await?);
            }
        }
        if flat.done < last {
            let fresh = self.range(t, flat.done.max(self.flushed), last);
            let lo = fresh.first().map(|v| v.seq);
            if let Some(lo) = lo {
                let batch = self.flatten(rt, fresh).await?;
                flat.batches.push((lo, last, batch));
                merge_tail(&mut flat.batches)?;
            }
            flat.done = last;
        }
        own.extend(flat.batches.iter().map(|(_, _, b)| b.clone()));
        Ok(own)
    }

    /// This view's buffered versions of a type with a sequence in `(after, upto]`.
    fn range(&self, t: &TypeBuffer, after: i64, upto: i64) -> Vec<Buffered> {
        t.segments
            .iter()
            .filter(|s| s.first().is_some_and(|v| v.seq > after && v.seq <= upto))
            .flat_map(|s| s.iter().cloned())
            .collect()
    }

    /// Current-table rows of every live version in `versions` (CPU, on the blocking pool).
    async fn flatten(&self, rt: &str, versions: Vec<Buffered>) -> Result<RecordBatch> {
        let flattener = self.shapes.flattener(rt).await?;
        let compartment = self.shapes.compartment.clone();
        let rt = rt.to_string();
        tokio::task::spawn_blocking(move || {
            let live: Vec<&Buffered> = versions.iter().filter(|v| !v.record.deleted).collect();
            let mut docs = Vec::with_capacity(live.len());
            let mut metas = Vec::with_capacity(live.len());
            for v in &live {
                let r = &v.record;
                let raw = r.raw.clone().unwrap_or_else(|| Arc::from(""));
                let doc = Json::parse(raw.as_bytes(), ParseLimits::STORED)?;
                let (_, members) = compartment.members(&rt, &r.id, &doc);
                metas.push(RowMeta {
                    version: r.version,
                    last_updated_us: r.last_updated_us,
                    raw,
                    patient: v.owner.clone(),
                    compartment: members,
                });
                docs.push(doc);
            }
            let input: Vec<(&Json, &RowMeta)> = docs.iter().zip(&metas).collect();
            flattener.to_batch(&input)
        })
        .await
        .map_err(|e| Error::Flatten(e.to_string()))?
    }

    /// History-table rows of every version of `rt` in this view's buffer; `None` when
    /// nothing of `rt` is buffered.
    pub fn history_rows(&self, rt: &str) -> Result<Option<RecordBatch>> {
        let Some(t) = self.types.get(rt) else { return Ok(None) };
        let versions: Vec<&Buffered> = t.segments.iter().flat_map(|s| s.iter()).collect();
        let records: Vec<VersionRecord> = versions.iter().map(|v| v.record.clone()).collect();
        let owners: Vec<(Option<String>, Vec<String>)> =
            versions.iter().map(|v| (v.owner.clone().filter(|_| !v.record.deleted), Vec::new())).collect();
        Ok(Some(history_batch(&records, &owners)?))
    }
}

/// Keeps the batches few: the last two are merged while the newer one is at least half the
/// size of the older (so each row is copied O(log n) times).
fn merge_tail(batches: &mut Vec<(i64, i64, RecordBatch)>) -> Result<()> {
    while batches.len() >= 2 {
        let n = batches.len();
        let (older, newer) = (&batches[n - 2], &batches[n - 1]);
        if newer.2.num_rows() * 2 < older.2.num_rows() && n <= MAX_FLAT_BATCHES {
            break;
        }
        let merged = arrow::compute::concat_batches(&older.2.schema(), [&older.2, &newer.2])?;
        let range = (older.0, newer.1);
        batches.truncate(n - 2);
        batches.push((range.0, range.1, merged));
    }
    Ok(())
}

/// Most flattened batches one type keeps before merging regardless of size.
const MAX_FLAT_BATCHES: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(rows: usize) -> RecordBatch {
        let a: arrow::array::ArrayRef = Arc::new(arrow::array::Int64Array::from_iter_values(0..rows as i64));
        RecordBatch::try_from_iter([("x", a)]).unwrap()
    }

    #[test]
    fn flattened_batches_merge_geometrically() {
        let mut batches = Vec::new();
        for i in 0..1000 {
            batches.push((i, i, batch(1)));
            merge_tail(&mut batches).unwrap();
            assert!(batches.len() <= 12, "{} batches after {i}", batches.len());
        }
        let rows: usize = batches.iter().map(|b| b.2.num_rows()).sum();
        assert_eq!(rows, 1000);
        assert!(batches.windows(2).all(|w| w[0].1 < w[1].0), "ranges stay in order");
    }
}
