//! Token postings: counting and paging token searches without reading their rows.
//!
//! For one data file and one token index column (`_sp_code`), the postings are the
//! distinct `(system, code)` values of the file and, for each, the rows of the file that
//! hold it (a Roaring bitmap of row positions), plus the rows with any value at all. Data
//! files are immutable, so a file's postings never change: they are built once, by the
//! first count that needs them (one column of the file is read), and kept in a bounded
//! in-memory cache keyed by table, file and column. A count (`_summary=count`, `_total`)
//! whose clauses are all plain token clauses is then, per active file of the snapshot
//! searched, the size of the intersection (over clauses) of unions (over the clause's
//! values) of bitmaps — no row is read. A page of such a search in the default order (by
//! id) reads the `id`s of the matching rows only, cuts the page, and reads `_raw` for the
//! page's rows only ([`page`]). Files met for the first time (a group commit's,
//! compaction output) are read then; a restart starts with an empty cache.
//!
//! Exactness: an entry matches a search token by the same [`token_matches`] the row
//! matcher uses, `:not` is the complement within the file (rows without values included,
//! as in the scan), `:missing` uses the same "no list or an empty list" rule. A column with
//! about as many distinct values as rows (identifiers) gets no postings (a marker is
//! cached) and is counted by scanning.
//!
//! Owns: building, caching and evaluating postings, and the decoded footers of the files
//! it reads. Must not: change what a search matches or its order; a count or page it
//! cannot answer exactly is `None`, and the caller scans.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray, RecordBatch};
use deltalake::DeltaTable;
use fhirlake_schemas::search::{Clause, Predicate};
use fhirlake_schemas::search_index::ParamKind;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use parquet::arrow::ProjectionMask;
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use roaring::RoaringBitmap;

use super::matcher::{StrColumn, token_matches};
use crate::{Error, Result};

/// Files whose postings are built at once by one count.
const BUILD_CONCURRENCY: usize = 4;

/// Distinct values of a file's column: per code, `(system, rows holding it)`.
type Codes = rustc_hash::FxHashMap<Box<str>, Vec<(Option<Box<str>>, RoaringBitmap)>>;

/// The postings of one token column of one data file.
#[derive(Debug)]
pub struct FilePostings {
    /// Rows in the file.
    rows: u32,
    /// Rows whose list is present and non-empty (`:missing=false`).
    present: RoaringBitmap,
    /// Distinct values.
    by_code: Codes,
    /// Approximate heap size, for the cache's budget.
    bytes: usize,
}

/// What the cache holds for a (table, file, column).
#[derive(Debug)]
enum Cached {
    Postings(Arc<FilePostings>),
    /// The column is not a token list in this file, or too diverse to be worth postings.
    Unsuitable,
}

type Key = (String, String, String);

/// The cache of file postings, bounded in bytes (oldest entries leave first), and of the
/// decoded footers of the files the postings paths read (a footer of a wide table is
/// hundreds of kilobytes to decode; the files never change).
#[derive(Debug)]
pub struct PostingsCache {
    capacity: usize,
    inner: Mutex<Bounded<Key, Arc<Cached>>>,
    footers: Arc<Mutex<Bounded<String, Arc<ParquetMetaData>>>>,
}

/// A map bounded in bytes; the oldest entries leave first.
#[derive(Debug)]
struct Bounded<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<(K, usize)>,
    bytes: usize,
    capacity: usize,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Bounded<K, V> {
    fn new(capacity: usize) -> Self {
        Self { map: HashMap::new(), order: VecDeque::new(), bytes: 0, capacity }
    }

    fn get(&self, key: &K) -> Option<V> {
        self.map.get(key).cloned()
    }

    fn put(&mut self, key: K, value: V, size: usize) {
        if size > self.capacity || self.map.contains_key(&key) {
            return;
        }
        while self.bytes + size > self.capacity {
            let Some((old, old_size)) = self.order.pop_front() else { break };
            self.map.remove(&old);
            self.bytes -= old_size;
        }
        self.bytes += size;
        self.order.push_back((key.clone(), size));
        self.map.insert(key, value);
    }
}

impl PostingsCache {
    /// A cache holding at most about `capacity` bytes of postings, and as many of footers.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Bounded::new(capacity)),
            footers: Arc::new(Mutex::new(Bounded::new(capacity))),
        }
    }

    /// The budget, in bytes (0: postings are off).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of postings held now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().expect("postings cache").bytes
    }

    fn get(&self, key: &Key) -> Option<Arc<Cached>> {
        self.inner.lock().expect("postings cache").get(key)
    }

    fn put(&self, key: Key, value: Arc<Cached>) {
        let size = match value.as_ref() {
            Cached::Postings(p) => p.bytes,
            Cached::Unsuitable => 64,
        };
        self.inner.lock().expect("postings cache").put(key, value, size);
    }
}

/// One clause as postings evaluate it.
struct TokenClause<'a> {
    column: &'a str,
    /// `(system, code)` of each ORed value (see [`token_matches`]).
    values: Vec<(&'a Option<Option<String>>, &'a Option<String>)>,
    negated: bool,
    missing: Option<bool>,
}

impl<'a> TokenClause<'a> {
    /// The clause, when postings answer it exactly: a token parameter (or `:missing` on
    /// one), no chain, every value a plain token.
    fn of(c: &'a Clause) -> Option<Self> {
        if c.chain.is_some() || c.kind != ParamKind::Token {
            return None;
        }
        let values = if c.missing.is_some() {
            Vec::new()
        } else {
            c.values
                .iter()
                .map(|v| match v {
                    Predicate::Token { system, code } => Some((system, code)),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?
        };
        Some(TokenClause { column: &c.column, values, negated: c.negated, missing: c.missing })
    }

    /// The rows of the file the clause matches.
    fn rows(&self, p: &FilePostings) -> RoaringBitmap {
        let all = || {
            let mut b = RoaringBitmap::new();
            b.insert_range(0..p.rows);
            b
        };
        match self.missing {
            Some(true) => return all() - &p.present,
            Some(false) => return p.present.clone(),
            None => {}
        }
        let mut found = RoaringBitmap::new();
        for (want_system, want_code) in &self.values {
            let mut take = |code: &str, entries: &Vec<(Option<Box<str>>, RoaringBitmap)>| {
                for (system, rows) in entries {
                    if token_matches(want_system, want_code, system.as_deref(), Some(code)) {
                        found |= rows;
                    }
                }
            };
            match want_code {
                Some(code) => {
                    if let Some((code, entries)) = p.by_code.get_key_value(code.as_str()) {
                        take(code, entries);
                    }
                }
                None => p.by_code.iter().for_each(|(code, entries)| take(code, entries)),
            }
        }
        if self.negated { all() - found } else { found }
    }
}

/// Whether [`page`] can answer a page of `req` of `count` rows (when postings answer its
/// clauses): at least one clause, the default order, no `_has`.
pub fn pageable(req: &fhirlake_schemas::search::SearchRequest, count: usize) -> bool {
    !req.clauses.is_empty() && req.sort.is_empty() && req.has.is_empty() && count > 0
}

/// An active data file of a snapshot.
struct ActiveFile {
    path: object_store::path::Path,
    size: u64,
    rows: Option<usize>,
}

/// The active files of `table`; `None` when one has a deletion vector (its rows are not
/// all live, and postings describe the file as written).
fn active_files(table: &DeltaTable) -> Result<Option<Vec<ActiveFile>>> {
    let mut files = Vec::new();
    for f in table.snapshot()?.log_data().iter() {
        if f.deletion_vector_descriptor().is_some() {
            return Ok(None);
        }
        files.push(ActiveFile { path: f.object_store_path(), size: f.size() as u64, rows: f.num_records() });
    }
    Ok(Some(files))
}

/// The rows each active file of a snapshot has matching every clause.
pub struct Matches {
    /// Every active file with its matching rows (possibly none).
    files: Vec<(ActiveFile, RoaringBitmap)>,
    /// Postings built (files read) to answer.
    built: usize,
}

impl Matches {
    /// The count.
    pub fn counted(&self) -> Counted {
        Counted {
            total: self.files.iter().map(|(_, rows)| rows.len()).sum(),
            files: self.files.len(),
            built: self.built,
            buffered: 0,
        }
    }
}

/// The matching rows of every active file of `table`, from postings (built where the cache
/// lacks them; no clauses: every row, from the files' row counts); `None` when postings
/// cannot answer `clauses` exactly.
pub async fn matches(cache: &PostingsCache, table: &DeltaTable, clauses: &[Clause]) -> Result<Option<Matches>> {
    let Some(wanted) = clauses.iter().map(TokenClause::of).collect::<Option<Vec<_>>>() else {
        return Ok(None);
    };
    let Some(files) = active_files(table)? else { return Ok(None) };
    if wanted.is_empty() {
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            let Some(n) = f.rows else { return Ok(None) };
            let mut rows = RoaringBitmap::new();
            rows.insert_range(0..n as u32);
            out.push((f, rows));
        }
        return Ok(Some(Matches { files: out, built: 0 }));
    }
    let mut columns: Vec<&str> = wanted.iter().map(|w| w.column).collect();
    columns.sort_unstable();
    columns.dedup();
    let table_key = table.table_url().to_string();
    let key = |path: &object_store::path::Path, column: &str| (table_key.clone(), path.to_string(), column.to_string());
    // Build what the cache lacks, a few files at a time.
    let missing: Vec<(object_store::path::Path, u64, String)> = files
        .iter()
        .flat_map(|f| columns.iter().map(move |c| (f.path.clone(), f.size, c.to_string())))
        .filter(|(path, _, c)| cache.get(&key(path, c)).is_none())
        .collect();
    let source = FileSource::of(cache, table);
    let built: Vec<(object_store::path::Path, String, Option<FilePostings>)> = futures::stream::iter(missing)
        .map(|(path, size, column)| {
            let reader = source.open(&path, size);
            // A task each, so the builds decode on every worker thread, not one.
            spawned(async move {
                let p = build(reader, &column).await?;
                Ok((path, column, p))
            })
        })
        .buffer_unordered(BUILD_CONCURRENCY)
        .try_collect()
        .await?;
    let built_files = built.len();
    let mut fresh: HashMap<Key, Arc<Cached>> = HashMap::new();
    for (path, column, p) in built {
        let value = Arc::new(match p {
            Some(p) => Cached::Postings(Arc::new(p)),
            None => Cached::Unsuitable,
        });
        cache.put(key(&path, &column), value.clone());
        fresh.insert(key(&path, &column), value);
    }
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let mut rows: Option<RoaringBitmap> = None;
        for w in &wanted {
            let k = key(&f.path, w.column);
            let Some(cached) = fresh.get(&k).cloned().or_else(|| cache.get(&k)) else {
                return Ok(None); // evicted between building and using: let the scan answer
            };
            let Cached::Postings(p) = cached.as_ref() else { return Ok(None) };
            let matched = w.rows(p);
            rows = Some(match rows {
                None => matched,
                Some(r) => r & matched,
            });
            if rows.as_ref().is_some_and(RoaringBitmap::is_empty) {
                break;
            }
        }
        out.push((f, rows.unwrap_or_default()));
    }
    Ok(Some(Matches { files: out, built: built_files }))
}

/// Runs `work` as its own task (so CPU-bound decoding spreads over the worker threads).
fn spawned<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> impl std::future::Future<Output = Result<T>> {
    let task = tokio::spawn(work);
    async move { task.await.map_err(|e| Error::DataFusion(datafusion::error::DataFusionError::External(Box::new(e))))? }
}

/// One page of a search answered from postings.
#[derive(Debug)]
pub struct PostingsPage {
    /// `(id, served JSON)` of the page, in id order.
    pub rows: Vec<(String, String)>,
    /// Whether more matches follow.
    pub more: bool,
    /// Per requested extra column, the values of the page's rows (reference columns for
    /// `_include`), in page order.
    pub extra: Vec<(String, Vec<arrow::array::ArrayRef>)>,
    /// Matches in the snapshot (the ids read to order them).
    pub matches: u64,
    /// Active files of the snapshot.
    pub files: usize,
}

/// The page `[offset, offset + count)`, in id order, of the matches `m` of a search
/// ([`pageable`]) on `table`: the matching rows' `id`s are read (that column only, those
/// rows only), the page is cut, and `_raw` plus `extra` columns are read for the page's
/// rows only — the scan would decode `_raw` of every match to sort them.
pub async fn page(
    cache: &PostingsCache,
    table: &DeltaTable,
    m: Matches,
    offset: usize,
    count: usize,
    extra: &[String],
) -> Result<PostingsPage> {
    let source = FileSource::of(cache, table);
    let files: Vec<(ActiveFile, RoaringBitmap)> = m.files.into_iter().filter(|(_, r)| !r.is_empty()).collect();
    let file_count = files.len();
    let matches: u64 = files.iter().map(|(_, rows)| rows.len()).sum();
    let keep = offset + count + 1;
    // Phase one: the ids of every match; each file keeps its first `keep`.
    let inputs: Vec<(usize, FileReader, RoaringBitmap)> =
        files.iter().enumerate().map(|(i, (f, rows))| (i, source.open(&f.path, f.size), rows.clone())).collect();
    let reads = futures::stream::iter(inputs).map(move |(i, reader, rows)| {
        spawned(async move {
            let batches = read_rows(reader, &["id".to_string()], &rows).await?;
            let mut ids = Vec::with_capacity(rows.len() as usize);
            let mut positions = rows.iter();
            for b in &batches {
                for j in 0..b.num_rows() {
                    let row = positions.next().expect("one id per selected row");
                    if let Some(id) = super::matcher::string_at(b.column(0).as_ref(), j) {
                        ids.push((id.to_string(), i as u32, row));
                    }
                }
            }
            // Only a file's first `keep` ids (in id order) can be on the page.
            if ids.len() > keep {
                ids.select_nth_unstable(keep);
                ids.truncate(keep);
            }
            Ok(ids)
        })
    });
    let mut all: Vec<(String, u32, u32)> = reads.buffer_unordered(BUILD_CONCURRENCY).try_concat().await?;
    let end = keep.min(all.len());
    if offset >= all.len() {
        return Ok(PostingsPage { rows: vec![], more: false, extra: vec![], matches, files: file_count });
    }
    if end < all.len() {
        all.select_nth_unstable(end);
        all.truncate(end);
    }
    all.sort_unstable();
    let more = all.len() > offset + count;
    let page: Vec<(String, u32, u32)> = all.into_iter().skip(offset).take(count).collect();
    // Phase two: `_raw` and the extra columns of the page's rows, file by file.
    let mut columns = vec!["id".to_string(), "_raw".to_string()];
    columns.extend(extra.iter().cloned());
    let mut by_file: std::collections::BTreeMap<u32, RoaringBitmap> = Default::default();
    for (_, file, row) in &page {
        by_file.entry(*file).or_default().insert(*row);
    }
    let inputs: Vec<(u32, FileReader, RoaringBitmap)> = by_file
        .into_iter()
        .map(|(file, rows)| {
            let (f, _) = &files[file as usize];
            (file, source.open(&f.path, f.size), rows)
        })
        .collect();
    let reads = futures::stream::iter(inputs).map(|(file, reader, rows)| {
        let columns = columns.clone();
        spawned(async move {
            let batches = read_rows(reader, &columns, &rows).await?;
            Ok((file, rows, batches))
        })
    });
    let read: Vec<(u32, RoaringBitmap, Vec<RecordBatch>)> =
        reads.buffer_unordered(BUILD_CONCURRENCY).try_collect().await?;
    // (file, row) -> (batch, index) of the row read.
    let mut at: HashMap<(u32, u32), (usize, usize, usize)> = HashMap::new();
    for (k, (file, rows, batches)) in read.iter().enumerate() {
        let mut positions = rows.iter();
        for (b, batch) in batches.iter().enumerate() {
            for j in 0..batch.num_rows() {
                at.insert((*file, positions.next().expect("one row per selected row")), (k, b, j));
            }
        }
    }
    let mut rows = Vec::with_capacity(page.len());
    let mut extra_out: Vec<(String, Vec<arrow::array::ArrayRef>)> =
        extra.iter().map(|c| (c.clone(), Vec::new())).collect();
    for (id, file, row) in &page {
        let Some(&(k, b, j)) = at.get(&(*file, *row)) else {
            return Err(Error::Parquet(ParquetError::General(format!("row {row} of a data file was not read"))));
        };
        let batch = &read[k].2[b];
        let read_id = super::matcher::string_at(batch.column(0).as_ref(), j);
        let raw = super::matcher::string_at(batch.column(1).as_ref(), j);
        let (Some(read_id), Some(raw)) = (read_id, raw) else { continue };
        if read_id != id {
            return Err(Error::Parquet(ParquetError::General(format!("row {row} of a data file changed ({id})"))));
        }
        rows.push((id.clone(), raw.to_string()));
        for (c, (_, values)) in extra_out.iter_mut().enumerate() {
            values.push(batch.column(2 + c).slice(j, 1));
        }
    }
    Ok(PostingsPage { rows, more, extra: extra_out, matches, files: file_count })
}

/// Reads `columns` of the rows `rows` (positions) of one data file, in row order.
async fn read_rows(reader: FileReader, columns: &[String], rows: &RoaringBitmap) -> Result<Vec<RecordBatch>> {
    use parquet::arrow::arrow_reader::RowSelection;
    let path = reader.path.clone();
    let bad = |e: ParquetError| Error::Parquet(ParquetError::General(format!("reading {path}: {e}")));
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await.map_err(bad)?;
    let total = builder.metadata().file_metadata().num_rows() as usize;
    let indices: Vec<usize> = columns
        .iter()
        .map(|c| {
            builder
                .schema()
                .fields()
                .iter()
                .position(|f| f.name() == c)
                .ok_or_else(|| Error::Parquet(ParquetError::General(format!("{path} has no column {c}"))))
        })
        .collect::<Result<_>>()?;
    // Columns come back in file order: read them all, then pick in the order asked.
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices.iter().copied());
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    for r in rows.iter() {
        let r = r as usize;
        match ranges.last_mut() {
            Some(last) if last.end == r => last.end = r + 1,
            _ => ranges.push(r..r + 1),
        }
    }
    let selection = RowSelection::from_consecutive_ranges(ranges.into_iter(), total);
    let stream =
        builder.with_projection(mask).with_row_selection(selection).with_batch_size(8192).build().map_err(bad)?;
    let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(bad)?;
    let mut sorted: Vec<usize> = indices.clone();
    sorted.sort_unstable();
    let order: Vec<usize> = indices.iter().map(|i| sorted.iter().position(|s| s == i).expect("asked")).collect();
    Ok(batches.into_iter().map(|b| b.project(&order)).collect::<std::result::Result<_, _>>()?)
}

/// A count answered from postings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// Matching rows.
    pub total: u64,
    /// Active files of the snapshot.
    pub files: usize,
    /// Postings built by this count (files read), the others came from the cache.
    pub built: usize,
    /// Matching rows among the acknowledged writes not in Delta yet (all new ids), counted
    /// by filtering those rows alone; included in `total`.
    pub buffered: u64,
}

/// Reads `column` of one data file and builds its postings; `None` when the file has no
/// such token list column, or too many distinct values for postings to pay.
async fn build(reader: FileReader, column: &str) -> Result<Option<FilePostings>> {
    let path = reader.path.clone();
    let bad = |e: ParquetError| Error::Parquet(ParquetError::General(format!("reading {path}: {e}")));
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await.map_err(bad)?;
    let Some(index) = builder.schema().fields().iter().position(|f| f.name() == column) else {
        return Ok(None);
    };
    let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
    let mut stream = builder.with_projection(mask).with_batch_size(64 * 1024).build().map_err(bad)?;
    let mut acc = Builder::default();
    while let Some(batch) = stream.next().await {
        if !acc.add(&batch.map_err(bad)?) {
            return Ok(None);
        }
    }
    Ok(Some(acc.finish()))
}

/// Opens the data files of one table, sharing the footer cache.
#[derive(Clone)]
struct FileSource {
    store: deltalake::logstore::ObjectStoreRef,
    table_key: String,
    footers: Arc<Mutex<Bounded<String, Arc<ParquetMetaData>>>>,
}

impl FileSource {
    fn of(cache: &PostingsCache, table: &DeltaTable) -> Self {
        FileSource {
            store: table.object_store(),
            table_key: table.table_url().to_string(),
            footers: cache.footers.clone(),
        }
    }

    fn open(&self, path: &object_store::path::Path, size: u64) -> FileReader {
        FileReader {
            store: self.store.clone(),
            path: path.clone(),
            size,
            footers: self.footers.clone(),
            footer_key: format!("{}/{path}", self.table_key),
        }
    }
}

/// One data file read through the table's object store (column chunks only).
struct FileReader {
    store: deltalake::logstore::ObjectStoreRef,
    path: object_store::path::Path,
    size: u64,
    /// Decoded footers, keyed by `footer_key`.
    footers: Arc<Mutex<Bounded<String, Arc<ParquetMetaData>>>>,
    footer_key: String,
}

impl AsyncFileReader for FileReader {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> BoxFuture<'_, parquet::errors::Result<bytes::Bytes>> {
        async move { self.store.get_range(&self.path, range).await.map_err(|e| ParquetError::External(Box::new(e))) }
            .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<bytes::Bytes>>> {
        async move { self.store.get_ranges(&self.path, &ranges).await.map_err(|e| ParquetError::External(Box::new(e))) }
            .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a parquet::arrow::arrow_reader::ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            if let Some(m) = self.footers.lock().expect("footer cache").get(&self.footer_key) {
                return Ok(m);
            }
            let size = self.size;
            let metadata = Arc::new(
                ParquetMetaDataReader::new()
                    .with_arrow_reader_options(options)
                    .load_and_finish(&mut *self, size)
                    .await?,
            );
            let bytes = metadata.memory_size();
            self.footers.lock().expect("footer cache").put(self.footer_key.clone(), metadata.clone(), bytes);
            Ok(metadata)
        }
        .boxed()
    }
}

/// Postings under construction.
#[derive(Default)]
struct Builder {
    rows: u32,
    present: RoaringBitmap,
    by_code: Codes,
    distinct: usize,
}

impl Builder {
    /// Adds the next rows (a batch of the one column); false when the column is not a token
    /// list or has grown too diverse.
    fn add(&mut self, batch: &RecordBatch) -> bool {
        let Some(list) = batch.column(0).as_list_opt::<i32>() else { return false };
        let Some(s) = list.values().as_struct_opt() else { return false };
        let (Some(system), Some(code)) = (
            s.column_by_name("system").and_then(|a| StrColumn::of(a.as_ref())),
            s.column_by_name("code").and_then(|a| StrColumn::of(a.as_ref())),
        ) else {
            return false;
        };
        let offsets = list.value_offsets();
        for i in 0..list.len() {
            let row = self.rows + i as u32;
            if list.is_null(i) || list.value_length(i) == 0 {
                continue;
            }
            let _ = self.present.try_push(row);
            for j in offsets[i] as usize..offsets[i + 1] as usize {
                if s.is_null(j) {
                    continue;
                }
                let Some(c) = code.get(j) else { continue };
                let sys = system.get(j);
                if !self.by_code.contains_key(c) {
                    self.by_code.insert(c.into(), Vec::new());
                }
                let entries = self.by_code.get_mut(c).expect("inserted");
                match entries.iter_mut().find(|(s, _)| s.as_deref() == sys) {
                    Some((_, rows)) => {
                        let _ = rows.try_push(row); // rows only grow; a repeat in one row is a no-op
                    }
                    None => {
                        entries.push((sys.map(Into::into), RoaringBitmap::from_sorted_iter([row]).expect("one")));
                        self.distinct += 1;
                    }
                }
            }
        }
        self.rows += list.len() as u32;
        // About one value per row (identifiers): postings would be as big as the column.
        self.distinct <= 4096 || self.distinct <= self.rows as usize / 8
    }

    fn finish(self) -> FilePostings {
        let bytes = 128
            + self.present.serialized_size()
            + self
                .by_code
                .iter()
                .map(|(c, e)| {
                    64 + c.len()
                        + e.iter()
                            .map(|(s, r)| 48 + s.as_ref().map_or(0, |s| s.len()) + r.serialized_size())
                            .sum::<usize>()
                })
                .sum::<usize>();
        FilePostings { rows: self.rows, present: self.present, by_code: self.by_code, bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ListBuilder, StringBuilder, StructBuilder};
    use arrow::datatypes::{DataType, Field, Fields, Schema};

    type Row<'a> = Option<Vec<(Option<&'a str>, Option<&'a str>)>>;

    fn token_column(rows: &[Row]) -> RecordBatch {
        let fields =
            Fields::from(vec![Field::new("system", DataType::Utf8, true), Field::new("code", DataType::Utf8, true)]);
        let mut b = ListBuilder::new(StructBuilder::from_fields(fields.clone(), 0));
        for r in rows {
            match r {
                None => b.append(false),
                Some(values) => {
                    for (s, c) in values {
                        let st = b.values();
                        st.field_builder::<StringBuilder>(0).unwrap().append_option(*s);
                        st.field_builder::<StringBuilder>(1).unwrap().append_option(*c);
                        st.append(true);
                    }
                    b.append(true);
                }
            }
        }
        let array = b.finish();
        let schema = Schema::new(vec![Field::new("_sp_code", array.data_type().clone(), true)]);
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(array)]).unwrap()
    }

    fn clause(text: &str) -> Clause {
        let model = fhirlake_schemas::Model::r4().unwrap();
        let (k, v) = text.split_once('=').unwrap();
        let req = fhirlake_schemas::search::parse(model, "Observation", &[(k.into(), v.into())]).unwrap();
        req.clauses.into_iter().next().unwrap()
    }

    /// Postings give the rows the row matcher gives, for every token form.
    #[test]
    fn postings_match_the_row_matcher() {
        let l = Some("http://loinc.org");
        let s = Some("http://snomed.info/sct");
        let rows: Vec<Row> = vec![
            Some(vec![(l, Some("1")), (s, Some("1"))]),
            Some(vec![(l, Some("2"))]),
            None,
            Some(vec![]),
            Some(vec![(None, Some("1"))]),
            Some(vec![(l, None)]),
            Some(vec![(s, Some("2")), (l, Some("2")), (l, Some("2"))]),
        ];
        let batch = token_column(&rows);
        // Two batches: row positions continue across them.
        let mut acc = Builder::default();
        assert!(acc.add(&batch.slice(0, 3)));
        assert!(acc.add(&batch.slice(3, 4)));
        let p = acc.finish();
        assert_eq!(p.rows, 7);
        for q in [
            "code=1",
            "code=http://loinc.org|1",
            "code=|1",
            "code=http://loinc.org|",
            "code=http://snomed.info/sct|2,http://loinc.org|1",
            "code:not=http://loinc.org|2",
            "code:missing=true",
            "code:missing=false",
            "code=3",
        ] {
            let c = clause(q);
            let want = super::super::matcher::ClauseMatcher::new(&c).unwrap().evaluate(batch.column(0)).unwrap();
            let want: Vec<u32> = (0..7).filter(|&i| want.value(i as usize)).collect();
            let got: Vec<u32> = TokenClause::of(&c).unwrap().rows(&p).iter().collect();
            assert_eq!(got, want, "{q}");
        }
    }

    #[test]
    fn only_plain_token_clauses_qualify() {
        assert!(TokenClause::of(&clause("code=1")).is_some());
        assert!(TokenClause::of(&clause("code:text=x")).is_none());
        assert!(TokenClause::of(&clause("date=2020")).is_none());
        assert!(TokenClause::of(&clause("subject:Patient.name=x")).is_none());
    }

    #[test]
    fn diverse_columns_get_no_postings() {
        let codes: Vec<String> = (0..20_000).map(|i| format!("v{i}")).collect();
        let rows: Vec<Row> = codes.iter().map(|c| Some(vec![(None, Some(c.as_str()))])).collect();
        assert!(!Builder::default().add(&token_column(&rows)));
    }

    #[test]
    fn the_cache_keeps_to_its_budget() {
        let cache = PostingsCache::new(200);
        let p = |bytes| {
            Arc::new(Cached::Postings(Arc::new(FilePostings {
                rows: 0,
                present: RoaringBitmap::new(),
                by_code: Codes::default(),
                bytes,
            })))
        };
        let k = |i: u32| ("t".to_string(), format!("f{i}"), "c".to_string());
        cache.put(k(1), p(100));
        cache.put(k(2), p(90));
        assert_eq!(cache.bytes(), 190);
        cache.put(k(3), p(50));
        assert!(cache.get(&k(1)).is_none() && cache.get(&k(2)).is_some() && cache.get(&k(3)).is_some());
        assert_eq!(cache.bytes(), 140);
        cache.put(k(4), p(500)); // larger than the whole budget: not kept
        assert!(cache.get(&k(4)).is_none());
    }
}
