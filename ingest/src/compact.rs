//! Compaction and log maintenance of the current and history tables.
//!
//! Owns: choosing which files of a table to merge, rewriting them sorted by the table's
//! clustering key (current tables: `_patient, id`, so one patient's resources sit in few
//! files and patient searches, `$everything` and updates with the owner in their predicate
//! touch few files; history tables: `id, _version_id`, so a read by id touches one file),
//! and the checkpoint and vacuum that follow.
//!
//! Concurrency: the expensive part (reading, sorting, writing the new Parquet files) runs
//! outside the writer, on a snapshot. Only the commit goes through the writer's commit
//! stage, between two group commits ([`crate::pipeline`]): there the inputs are checked to
//! be still active in the latest version (a group commit may have rewritten one of them
//! by updating a row in it; the round is then dropped and its new files deleted) and the
//! remove+add actions (`dataChange: false`) are committed on top of that latest version.
//! This ordering matters: delta-rs' conflict checker ignores removes with
//! `dataChange: false`, so a group commit built on a snapshot older than a compaction
//! could otherwise re-add rows the compaction also kept. Writes wait at most for one such
//! commit (milliseconds), never for a rewrite.
//!
//! Must not: change data. Every row of the inputs is in the outputs, byte for byte.

use arrow::array::RecordBatch;
use arrow::compute::{SortColumn, SortOptions, concat_batches, lexsort_to_indices, take_record_batch};
use deltalake::DeltaTable;
use deltalake::kernel::{Action, Add, Remove};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::store::TableKind;
use crate::{Error, Result};

/// What compaction does.
#[derive(Debug, Clone, Copy)]
pub struct CompactOptions {
    /// Size of the files written, in bytes (a moderate size keeps an update's rewrite small).
    pub target_file_bytes: u64,
    /// A table is compacted once it has at least this many files smaller than half the
    /// target; active files are then at most `ceil(table bytes / target) + this - 1` plus
    /// the files of the group commits since the last round.
    pub min_small_files: usize,
    /// Rewrite every file of every table (re-clustering), not only small files.
    pub full: bool,
    /// Input read per round, in bytes of Parquet (bounds memory: a round is sorted whole).
    pub round_bytes: u64,
}

/// The default target size of data files (compaction, and the files an update rewrites).
pub const DEFAULT_TARGET_FILE_BYTES: u64 = 8 << 20;

impl Default for CompactOptions {
    fn default() -> Self {
        Self { target_file_bytes: DEFAULT_TARGET_FILE_BYTES, min_small_files: 16, full: false, round_bytes: 256 << 20 }
    }
}

/// What compaction did to one table.
#[derive(Debug, Clone, Default)]
pub struct TableReport {
    /// Table kind.
    pub kind: Option<TableKind>,
    /// Resource type.
    pub resource_type: String,
    /// Active files before.
    pub files_before: usize,
    /// Active files after.
    pub files_after: usize,
    /// Rows rewritten.
    pub rows: usize,
    /// Rounds dropped because a group commit rewrote one of their inputs meanwhile.
    pub rounds_dropped: usize,
}

/// The remove+add actions of one round, to be committed by the commit stage.
pub(crate) struct Round {
    pub(crate) kind: TableKind,
    pub(crate) rt: String,
    pub(crate) removes: Vec<Remove>,
    pub(crate) adds: Vec<Add>,
    pub(crate) target_size: u64,
}

/// An active file: its object-store path (relative to the table), size and remove action.
pub type ActiveFile = (object_store::path::Path, i64, Remove);

/// The active files of a table.
pub async fn active_files(table: &DeltaTable) -> Result<Vec<ActiveFile>> {
    let views: Vec<_> = table.get_active_add_actions_by_predicate(None).try_collect().await?;
    Ok(views.into_iter().map(|v| (v.object_store_path(), v.size(), v.remove_action(false))).collect())
}

/// The rounds to run on `table`: groups of input files, each at most `round_bytes`.
pub(crate) fn plan(files: &[ActiveFile], options: &CompactOptions) -> Vec<Vec<usize>> {
    let small = (options.target_file_bytes / 2) as i64;
    let mut chosen: Vec<usize> = if options.full {
        if files.len() < 2 && files.iter().all(|f| f.1 <= options.target_file_bytes as i64 * 2) {
            return Vec::new();
        }
        (0..files.len()).collect()
    } else {
        let s: Vec<usize> = (0..files.len()).filter(|&i| files[i].1 < small).collect();
        if s.len() < options.min_small_files.max(2) {
            return Vec::new();
        }
        s
    };
    chosen.sort_by_key(|&i| files[i].0.to_string());
    let mut rounds = vec![Vec::new()];
    let mut bytes = 0i64;
    for i in chosen {
        if bytes + files[i].1 > options.round_bytes as i64 && !rounds.last().expect("one").is_empty() {
            rounds.push(Vec::new());
            bytes = 0;
        }
        bytes += files[i].1;
        rounds.last_mut().expect("one").push(i);
    }
    rounds.retain(|r| r.len() > 1 || options.full);
    rounds
}

/// Reads the input files of a round, sorts their rows by the clustering key and writes them
/// as new files of about the target size. Returns the round (not committed) and the rows.
pub(crate) async fn rewrite(
    table: &DeltaTable,
    kind: TableKind,
    rt: &str,
    inputs: Vec<ActiveFile>,
    options: &CompactOptions,
) -> Result<(Round, usize)> {
    let store = table.object_store();
    // Files are cut by the flushes below; the writer's own limit is on in-memory bytes,
    // several times the Parquet size, and would cut far too early.
    let mut writer = RecordBatchWriter::for_table(table)?.with_target_file_size(u64::MAX / 2);
    let schema = writer.arrow_schema();
    let mut batches = Vec::new();
    let input_bytes: i64 = inputs.iter().map(|f| f.1).sum();
    for (path, _, _) in &inputs {
        let bytes = store.get(path).await?.bytes().await?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(|e| Error::Flatten(format!("reading {path}: {e}")))?
            .with_batch_size(8192)
            .build()
            .map_err(|e| Error::Flatten(format!("reading {path}: {e}")))?;
        for b in reader {
            batches.push(conform(&b?, &schema)?);
        }
    }
    let all = concat_batches(&schema, &batches)?;
    drop(batches);
    let rows = all.num_rows();
    let keys: &[&str] = match kind {
        TableKind::Current => &["_patient", "id"],
        TableKind::History => &["id", "_version_id"],
        TableKind::View => &["_source_id"],
        // Append-only tables keep arrival order.
        TableKind::System => &[],
    };
    let sort_columns: Vec<SortColumn> = keys
        .iter()
        .filter_map(|k| all.column_by_name(k))
        .map(|c| SortColumn { values: c.clone(), options: Some(SortOptions { descending: false, nulls_first: true }) })
        .collect();
    let sorted = if sort_columns.is_empty() || rows < 2 {
        all
    } else {
        let indices = lexsort_to_indices(&sort_columns, None)?;
        take_record_batch(&all, &indices)?
    };
    // One file per `per_file` rows: the inputs' bytes per row estimate the output's (the
    // writer itself closes a file only when flushed); each file written corrects the
    // estimate (small inputs carry a footer each, so they overstate a row's size).
    let mut per_file = if input_bytes > 0 && rows > 0 {
        ((options.target_file_bytes as f64 * rows as f64 / input_bytes as f64) as usize).max(1024)
    } else {
        rows.max(1)
    };
    let mut adds = Vec::new();
    let mut at = 0;
    while at < rows {
        let end = (at + per_file).min(rows);
        let mut k = at;
        while k < end {
            let len = (end - k).min(8192);
            writer.write(sorted.slice(k, len)).await?;
            k += len;
        }
        let written = writer.flush().await?;
        let bytes: i64 = written.iter().map(|a| a.size).sum();
        if bytes > 0 {
            let scaled = per_file as f64 * options.target_file_bytes as f64 / bytes as f64;
            per_file = (scaled as usize).clamp(per_file / 4 + 1, per_file.saturating_mul(8)).max(1024);
        }
        adds.extend(written.into_iter().map(|mut a| {
            a.data_change = false;
            a
        }));
        at = end;
    }
    let removes = inputs.into_iter().map(|(_, _, r)| r).collect();
    Ok((Round { kind, rt: rt.to_string(), removes, adds, target_size: options.target_file_bytes }, rows))
}

/// A batch read from a file, as the table schema types it: files written by other writers
/// (or versions of DataFusion) may hold `Utf8View` where the table says `Utf8`, or differ in
/// field metadata; values are cast, never changed.
fn conform(b: &RecordBatch, schema: &arrow::datatypes::SchemaRef) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let c = b
                .column_by_name(f.name())
                .ok_or_else(|| Error::Flatten(format!("a data file has no column {}", f.name())))?;
            if c.data_type() == f.data_type() { Ok(c.clone()) } else { Ok(arrow::compute::cast(c, f.data_type())?) }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Deletes the files a dropped round wrote.
pub(crate) async fn discard(table: &DeltaTable, round: &Round) {
    let store = table.object_store();
    for a in &round.adds {
        if let Err(e) = store.delete(&object_store::path::Path::from(a.path.as_str())).await {
            tracing::warn!(path = a.path, error = %e, "could not delete a dropped compaction file (vacuum will)");
        }
    }
}

/// The actions of a round.
pub(crate) fn actions(round: &Round) -> Vec<Action> {
    round.removes.iter().cloned().map(Action::Remove).chain(round.adds.iter().cloned().map(Action::Add)).collect()
}

/// Whether every input of `round` is still active in `files` (paths of the latest version).
pub(crate) fn inputs_active(round: &Round, files: &std::collections::HashSet<String>) -> bool {
    round.removes.iter().all(|r| files.contains(&r.path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, StringArray, StringViewArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn batches_from_other_writers_are_cast_to_the_table_schema() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, true)]));
        let file = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8View, true)]));
        let b = RecordBatch::try_new(file, vec![Arc::new(StringViewArray::from(vec![Some("a"), None]))]).unwrap();
        let out = conform(&b, &schema).unwrap();
        let ids = out.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((ids.value(0), ids.is_null(1)), ("a", true));
        let missing = Arc::new(Schema::new(vec![Field::new("other", DataType::Utf8, true)]));
        assert!(conform(&b, &missing).is_err());
    }

    #[test]
    fn plans_take_small_files_only_when_there_are_enough() {
        let f = |size: i64| (object_store::path::Path::from(format!("f{size}")), size, Remove::default());
        let opts =
            CompactOptions { target_file_bytes: 100, min_small_files: 3, round_bytes: 120, ..Default::default() };
        assert!(plan(&[f(10), f(20), f(500)], &opts).is_empty());
        let rounds = plan(&[f(10), f(20), f(30), f(40), f(500), f(45)], &opts);
        let sizes: Vec<Vec<i64>> =
            rounds.iter().map(|r| r.iter().map(|&i| [10, 20, 30, 40, 500, 45][i]).collect()).collect();
        assert_eq!(sizes, vec![vec![10, 20, 30, 40], vec![45]].into_iter().filter(|r| r.len() > 1).collect::<Vec<_>>());
        assert_eq!(plan(&[f(10), f(500)], &CompactOptions { full: true, ..opts }).len(), 2);
    }
}
