//! The write path: group commits acknowledged by the serving store, flushed to Delta behind.
//!
//! A write goes, in order, through these modules:
//! - [`ops`]: what callers submit ([`WriteOp`]) and get back ([`OpOutcome`]);
//! - [`stage`]: the writer task batches queued requests into one group commit, decides
//!   each operation against the [`index`] ([`decide`]: versions, `If-Match`, no-op
//!   updates, served JSON), stores the group commit in the [`serving`] store with one fsync,
//!   updates the index and answers the callers;
//! - [`flush`]: the flusher task buffers acknowledged group commits and commits them to
//!   the Delta tables in rounds ([`delta`]), behind the request path;
//! - [`recover`]: at start-up, the index is loaded from the store, group commits the
//!   tables lack are flushed from the store's log, and a root written before the serving
//!   store is upgraded.
//!
//! Reads by id and history are answered by the store ([`Writer::version`],
//! [`Writer::history`]); readers of the Delta tables call [`Writer::sync`] first to see
//! every acknowledged write. Must not: validate resources or speak HTTP.

mod decide;
mod delta;
mod flush;
mod index;
mod ops;
mod recover;
mod rows;
mod serving;
mod stage;
mod stats;
mod view;

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fhirlake_schemas::ShapeOptions;
use tokio::sync::{mpsc, oneshot};

pub use decide::{content_hash, format_instant, set_server_meta, with_server_meta};
pub use delta::JOURNAL_APP_ID;
pub use flush::FlushPolicy;
pub use index::{IndexEntry, OWNER_ABSENT, OWNER_NONE, OWNER_UNKNOWN, ResourceIndex};
pub use ops::{Action, AppendRow, AppendTable, OpOutcome, Precondition, VersionRecord, WriteOp};
pub use serving::{HistoryQuery, HistoryRow, LAYOUT_VERSION, SERVING_PATH, ServingStore, merge_newest_first};
pub use stats::{SizeHistogram, WriterStats};
pub use view::{CurrentRows, ReadView, TableSet};

use crate::compact::{self, CompactOptions, TableReport};
use crate::store::{Lease, StorageRoot, TableKind};
use crate::{Clock, Error, Result, SystemClock};
use flush::{FlushMessage, Maintenance};
use ops::Request;

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Most operations in one group commit.
    pub max_batch_ops: usize,
    /// How long the writer waits for more requests after the first one of a batch.
    pub linger: Duration,
    /// Recursion depth of newly created tables.
    pub shape: ShapeOptions,
    /// Who holds the lease (for messages).
    pub holder: String,
    /// When acknowledged writes are flushed to Delta.
    pub flush: FlushPolicy,
    /// Over this much buffered (unflushed) data, writes are refused with 503 until the
    /// flusher catches up (bytes, estimated).
    pub hard_buffer_bytes: u64,
    /// Page cache of the serving store (bytes).
    pub store_cache_bytes: usize,
    /// fhirlake's own append-only tables that group commits may append rows to.
    pub append_tables: Vec<AppendTable>,
    /// Test hook: while this file exists, every flush to Delta fails.
    pub fail_flush_marker: Option<PathBuf>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            max_batch_ops: 20_000,
            linger: Duration::from_millis(2),
            shape: ShapeOptions::default(),
            holder: "fhirlake".into(),
            flush: FlushPolicy { interval: Duration::from_secs(5), soft_bytes: 64 << 20 },
            hard_buffer_bytes: 1 << 30,
            store_cache_bytes: 256 << 20,
            append_tables: Vec::new(),
            fail_flush_marker: None,
        }
    }
}

/// Owns the writer's tasks; [`WriterTask::shutdown`] drains them and releases the lease.
pub struct WriterTask {
    stage: tokio::task::JoinHandle<()>,
    flusher: Option<std::thread::JoinHandle<()>>,
    lease: Lease,
}

impl WriterTask {
    /// Waits until every handle is dropped, queued writes are acknowledged and flushed to
    /// Delta, then releases the lease.
    pub async fn shutdown(mut self) -> Result<()> {
        let _ = (&mut self.stage).await;
        if let Some(f) = self.flusher.take() {
            let _ = tokio::task::spawn_blocking(move || f.join()).await;
        }
        self.lease.release().await
    }
}

/// Compacts the serving store of `root` (no writer may run: the lease is taken for it).
/// Returns its size before and after (bytes); `None` when the root has no store yet.
pub async fn compact_store(root: &StorageRoot, holder: &str) -> Result<Option<(u64, u64)>> {
    if root.local_path().is_none_or(|p| !p.join(SERVING_PATH).exists()) {
        return Ok(None);
    }
    let lease = Lease::acquire(root, holder).await?;
    let r = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || ServingStore::open(&root, 1 << 20).and_then(|(s, _)| s.compact()))
            .await
            .map_err(|e| Error::Store(e.to_string()))
    };
    lease.release().await?;
    Ok(Some(r??))
}

/// A handle to the writer of a storage root; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Request>,
    index: Arc<RwLock<ResourceIndex>>,
    tables: Arc<TableSet>,
    store: ServingStore,
    root: StorageRoot,
    stats: Arc<WriterStats>,
    flush: mpsc::UnboundedSender<FlushMessage>,
    append_tables: Arc<Vec<AppendTable>>,
    applier: Arc<delta::Applier>,
}

impl Writer {
    /// Takes the lease of `root`, recovers (see [`recover`]) and starts the writer tasks.
    pub async fn start(root: StorageRoot, options: WriterOptions) -> Result<(Writer, WriterTask)> {
        Self::start_with_clock(root, options, Arc::new(SystemClock)).await
    }

    /// As [`Writer::start`], with a clock (tests).
    pub async fn start_with_clock(
        root: StorageRoot,
        options: WriterOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<(Writer, WriterTask)> {
        let lease = Lease::acquire(&root, &options.holder).await?;
        let recovered = match recover::recover(&root, &options).await {
            Ok(r) => r,
            Err(e) => {
                let _ = lease.release().await;
                return Err(e);
            }
        };
        let recover::Recovered { store, applier, index, last_seq } = recovered;
        let index = Arc::new(RwLock::new(index));
        let stats = applier.stats.clone();
        stats.acked_seq.store(last_seq, Relaxed);
        stats.flushed_seq.store(last_seq, Relaxed);
        applier.tables.start_at(last_seq);
        let (tx, rx) = mpsc::channel(1024);
        let (flush_tx, flush_rx) = mpsc::unbounded_channel();
        let last_ts = index.read().expect("index lock").newest_update_us();
        let flusher = flush::Flusher {
            applier: applier.clone(),
            store: store.clone(),
            index: index.clone(),
            policy: options.flush,
            append_tables: options.append_tables.clone(),
            fail_marker: options.fail_flush_marker.clone(),
            buffer: Vec::new(),
            waiters: Vec::new(),
            halted: false,
        };
        let core = stage::Core {
            store: store.clone(),
            tables: applier.tables.clone(),
            compartment: applier.shapes.compartment.clone(),
            flush: flush_tx.clone(),
            stats: stats.clone(),
            options: options.clone(),
            clock,
            last_seq,
            last_ts,
        };
        let writer = Writer {
            tx,
            index: index.clone(),
            tables: applier.tables.clone(),
            store,
            root,
            stats,
            flush: flush_tx,
            append_tables: Arc::new(options.append_tables.clone()),
            applier: applier.clone(),
        };
        let flusher = match flush::spawn(flusher, flush_rx) {
            Ok(f) => f,
            Err(e) => {
                let _ = lease.release().await;
                return Err(e);
            }
        };
        let stage = tokio::spawn(core.run(rx, index));
        Ok((writer, WriterTask { stage, flusher: Some(flusher), lease }))
    }

    /// Submits operations as one request; they are committed together (a request is never
    /// split across group commits) and answered once durable.
    pub async fn submit(&self, ops: Vec<WriteOp>) -> Result<Vec<OpOutcome>> {
        self.send(ops, Vec::new(), false).await
    }

    /// Submits operations that succeed or fail together (a FHIR transaction): when one
    /// fails its precondition, none is applied and the others answer
    /// [`OpOutcome::RolledBack`].
    pub async fn submit_atomic(&self, ops: Vec<WriteOp>) -> Result<Vec<OpOutcome>> {
        self.send(ops, Vec::new(), true).await
    }

    /// Submits operations together with rows for append-only tables, all in one group
    /// commit (atomic: the rows are stored only if every operation is).
    pub async fn submit_with_rows(&self, ops: Vec<WriteOp>, rows: Vec<AppendRow>) -> Result<Vec<OpOutcome>> {
        for r in &rows {
            if !self.append_tables.iter().any(|t| t.name == r.table) {
                return Err(Error::Config(format!("no append-only table '{}' is configured", r.table)));
            }
        }
        self.send(ops, rows, true).await
    }

    async fn send(&self, ops: Vec<WriteOp>, appends: Vec<AppendRow>, atomic: bool) -> Result<Vec<OpOutcome>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request { ops, appends, atomic, reply }).await.map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Waits until every write acknowledged so far is in the Delta tables, so that readers
    /// of [`Writer::tables`] see it. Immediate when nothing is buffered.
    pub async fn sync(&self) -> Result<()> {
        let acked = self.stats.acked_seq.load(Relaxed);
        if self.stats.flushed_seq.load(Relaxed) >= acked {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.flush.send(FlushMessage::Sync(acked, reply)).map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// The instance as of now: the Delta tables plus every acknowledged write they do not
    /// hold yet ([`ReadView`]); reading it answers as a fully flushed store would.
    pub fn view(&self) -> ReadView {
        self.tables.view(self.applier.shapes.clone())
    }

    /// What the index knows of `rt/id`.
    pub fn current(&self, rt: &str, id: &str) -> Option<IndexEntry> {
        self.index.read().expect("index lock").get(rt, id)
    }

    /// One stored version of `rt/id`, from the serving store.
    pub fn version(&self, rt: &str, id: &str, version: i64) -> Result<Option<HistoryRow>> {
        self.store.version(rt, id, version)
    }

    /// Versions of `rt` that `q` selects, newest first, from the serving store.
    pub fn history(&self, rt: &str, q: &HistoryQuery) -> Result<Vec<HistoryRow>> {
        self.store.history(rt, q)
    }

    /// Resource types with at least one stored version.
    pub fn types(&self) -> Vec<String> {
        self.index.read().expect("index lock").types()
    }

    /// The owning patient of `rt/id`'s latest version (its Patient compartment owner), if
    /// it has one.
    pub fn owner_of(&self, rt: &str, id: &str) -> Option<String> {
        let index = self.index.read().expect("index lock");
        let entry = index.get(rt, id)?;
        index.owner(entry.owner).map(str::to_string)
    }

    /// Live resources per type.
    pub fn live_counts(&self) -> Vec<(String, usize)> {
        self.index.read().expect("index lock").live_counts()
    }

    /// The Delta tables, for readers (call [`Writer::sync`] first for fresh reads).
    pub fn tables(&self) -> &Arc<TableSet> {
        &self.tables
    }

    /// The serving store.
    pub fn store(&self) -> &ServingStore {
        &self.store
    }

    /// The storage root.
    pub fn root(&self) -> &StorageRoot {
        &self.root
    }

    /// Counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    async fn maintain(&self, m: Maintenance) -> Result<()> {
        self.flush.send(FlushMessage::Maintenance(m)).map_err(|_| Error::ShuttingDown)
    }

    /// Compacts the current and history tables (see [`crate::compact`]); `progress` is
    /// told about each table as it is done. Writes and reads continue meanwhile.
    pub async fn compact(
        &self,
        options: CompactOptions,
        progress: &mut (dyn FnMut(&TableReport) + Send),
    ) -> Result<Vec<TableReport>> {
        let mut reports = Vec::new();
        let mut tables: Vec<(TableKind, String)> = self
            .tables
            .snapshot()
            .into_iter()
            .filter(|(k, _, _)| matches!(k, TableKind::Current | TableKind::History))
            .map(|(k, rt, _)| (k, rt))
            .collect();
        tables.sort_by(|a, b| (a.1.as_str(), a.0 as u8).cmp(&(b.1.as_str(), b.0 as u8)));
        for (kind, rt) in tables {
            let Some(table) = self.tables.get(kind, &rt) else { continue };
            let files = compact::active_files(&table).await?;
            let mut report = TableReport {
                kind: Some(kind),
                resource_type: rt.clone(),
                files_before: files.len(),
                ..Default::default()
            };
            for round in compact::plan(&files, &options) {
                let inputs = round.iter().map(|&i| files[i].clone()).collect();
                let (round, rows) = compact::rewrite(&table, kind, &rt, inputs, &options).await?;
                let (reply, rx) = oneshot::channel();
                self.maintain(Maintenance::Compact(round, reply)).await?;
                match rx.await.map_err(|_| Error::ShuttingDown)?? {
                    Some(_) => {
                        report.rows += rows;
                        self.stats.compaction_rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    None => {
                        report.rounds_dropped += 1;
                        self.stats.compaction_rounds_dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            let latest = self.tables.get(kind, &rt).unwrap_or(table);
            report.files_after = compact::active_files(&latest).await?.len();
            progress(&report);
            reports.push(report);
        }
        Ok(reports)
    }

    /// Vacuums every current and history table: deletes the files that no version newer
    /// than `retention` references. Returns the number of files deleted.
    pub async fn vacuum(&self, retention: chrono::Duration) -> Result<usize> {
        let mut deleted = 0;
        for (kind, rt, _) in self.tables.snapshot() {
            if !matches!(kind, TableKind::Current | TableKind::History) {
                continue;
            }
            let (reply, rx) = oneshot::channel();
            self.maintain(Maintenance::Vacuum(kind, rt, retention, reply)).await?;
            deleted += rx.await.map_err(|_| Error::ShuttingDown)??;
        }
        Ok(deleted)
    }
}

#[cfg(test)]
impl WriterTask {
    /// Stops both tasks where they are, as a killed process would (tests): nothing is
    /// flushed; the lease is released so that a new writer can start.
    async fn crash(mut self, flush: mpsc::UnboundedSender<FlushMessage>) {
        self.stage.abort();
        let _ = (&mut self.stage).await;
        let _ = flush.send(FlushMessage::Halt);
        if let Some(f) = self.flusher.take() {
            let _ = tokio::task::spawn_blocking(move || f.join()).await;
        }
        self.lease.release().await.unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Journal;
    use deltalake::DeltaTable;
    use fhirlake_schemas::Json;
    use fhirlake_schemas::json::ParseLimits;

    fn patient(id: &str, family: &str) -> Arc<Json> {
        let text = format!(
            r#"{{"resourceType":"Patient","id":"{id}","name":[{{"family":"{family}"}}],"birthDate":"1970-01-02"}}"#
        );
        Arc::new(Json::parse(text.as_bytes(), ParseLimits::default()).unwrap())
    }

    fn put(id: &str, family: &str, precondition: Precondition) -> WriteOp {
        WriteOp {
            resource_type: "Patient".into(),
            id: id.into(),
            action: Action::Put(patient(id, family)),
            precondition,
        }
    }

    fn observation(id: &str, subject: &str) -> WriteOp {
        let text = format!(
            r#"{{"resourceType":"Observation","id":"{id}","status":"final","code":{{"text":"x"}},"subject":{{"reference":"Patient/{subject}"}}}}"#
        );
        WriteOp {
            resource_type: "Observation".into(),
            id: id.into(),
            action: Action::Put(Arc::new(Json::parse(text.as_bytes(), ParseLimits::default()).unwrap())),
            precondition: Precondition::None,
        }
    }

    /// Flushes only when asked (or at shutdown).
    fn lazy() -> WriterOptions {
        WriterOptions {
            flush: FlushPolicy { interval: Duration::from_secs(3600), soft_bytes: u64::MAX },
            ..Default::default()
        }
    }

    #[test]
    fn content_hash_ignores_server_meta_only() {
        let a = Json::parse(br#"{"resourceType":"Patient","id":"a","meta":{"versionId":"3","lastUpdated":"2020-01-01T00:00:00Z"},"active":true}"#, ParseLimits::default()).unwrap();
        let b = Json::parse(br#"{"resourceType":"Patient","id":"a","active":true}"#, ParseLimits::default()).unwrap();
        let c = Json::parse(
            br#"{"resourceType":"Patient","id":"a","meta":{"source":"x"},"active":true}"#,
            ParseLimits::default(),
        )
        .unwrap();
        assert_eq!(content_hash(&a), content_hash(&b));
        assert_ne!(content_hash(&a), content_hash(&c));
        assert_ne!(content_hash(&b), content_hash(&with_server_meta(&c, 1, 0)));
        assert_eq!(content_hash(&c), content_hash(&with_server_meta(&c, 7, 123)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn versions_noops_deletes_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let (w, task) = Writer::start(root.clone(), WriterOptions::default()).await.unwrap();
        let r = w.submit(vec![put("a", "One", Precondition::None), put("b", "Two", Precondition::None)]).await.unwrap();
        assert!(matches!(r[0], OpOutcome::Written { version: 1, created: true, .. }));
        let r = w.submit(vec![put("a", "Uno", Precondition::IfMatch(1))]).await.unwrap();
        assert!(matches!(r[0], OpOutcome::Written { version: 2, created: false, .. }), "{r:?}");
        let r = w.submit(vec![put("a", "Uno", Precondition::None)]).await.unwrap();
        assert!(matches!(r[0], OpOutcome::Unchanged { version: 2, .. }), "{r:?}");
        let r = w.submit(vec![put("a", "Stale", Precondition::IfMatch(1))]).await.unwrap();
        assert_eq!(r[0], OpOutcome::PreconditionFailed { current: Some(2) });
        let del = WriteOp {
            resource_type: "Patient".into(),
            id: "b".into(),
            action: Action::Delete,
            precondition: Precondition::None,
        };
        let r = w.submit(vec![del]).await.unwrap();
        assert_eq!(r[0], OpOutcome::Deleted { version: Some(2) });
        assert_eq!(w.live_counts(), vec![("Patient".to_string(), 1)]);
        w.sync().await.unwrap();
        let current = w.tables().get(TableKind::Current, "Patient").unwrap();
        assert_eq!(count_rows(&current).await, 1, "current table holds only the live resource");
        drop(w);
        task.shutdown().await.unwrap();

        // A second writer on the same root sees the same state, from the store.
        let (w, task) = Writer::start(root.clone(), WriterOptions::default()).await.unwrap();
        assert_eq!(w.current("Patient", "a").map(|e| e.version), Some(2));
        assert!(w.current("Patient", "b").unwrap().deleted);
        let v1 = w.version("Patient", "a", 1).unwrap().unwrap();
        assert!(v1.raw.unwrap().contains("One"));
        let history = w.history("Patient", &HistoryQuery::default()).unwrap();
        assert_eq!(history.len(), 4, "two versions of a, a create and a delete of b");
        drop(w);
        task.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_before_delta_and_flushed_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let (w, task) = Writer::start(root.clone(), lazy()).await.unwrap();
        w.submit(vec![put("a", "One", Precondition::None)]).await.unwrap();
        w.submit(vec![put("b", "Two", Precondition::None)]).await.unwrap();
        assert!(w.tables().get(TableKind::Current, "Patient").is_none(), "no Delta commit on the request path");
        assert!(w.version("Patient", "b", 1).unwrap().is_some(), "read from the store at once");
        w.sync().await.unwrap();
        let current = w.tables().get(TableKind::Current, "Patient").unwrap();
        assert_eq!(count_rows(&current).await, 2);
        // Two more writes, then the process dies before any flush.
        w.submit(vec![put("c", "Three", Precondition::None), put("a", "Uno", Precondition::None)]).await.unwrap();
        assert!(w.stats().flushed_seq.load(Relaxed) < w.stats().acked_seq.load(Relaxed), "not flushed yet");
        let flush = w.flush.clone();
        drop(w);
        task.crash(flush).await;

        let (w, task) = Writer::start(root.clone(), lazy()).await.unwrap();
        assert_eq!(w.current("Patient", "a").map(|e| e.version), Some(2));
        let current = w.tables().get(TableKind::Current, "Patient").unwrap();
        assert_eq!(count_rows(&current).await, 3, "start-up flushed what the tables lacked");
        let history = w.tables().get(TableKind::History, "Patient").unwrap();
        assert_eq!(count_rows(&history).await, 4, "each version once in history");
        drop(w);
        task.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_owner_changed_twice_in_one_flush_window_leaves_one_row() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let (w, task) = Writer::start(root.clone(), lazy()).await.unwrap();
        w.submit(vec![observation("o", "p1"), observation("other", "p2")]).await.unwrap();
        w.sync().await.unwrap();
        w.submit(vec![observation("o", "p2")]).await.unwrap();
        w.submit(vec![observation("o", "p3")]).await.unwrap();
        assert_eq!(w.owner_of("Observation", "o").as_deref(), Some("p3"));
        w.sync().await.unwrap();
        let current = w.tables().get(TableKind::Current, "Observation").unwrap();
        assert_eq!(count_rows(&current).await, 2, "one live row per resource");
        drop(w);
        task.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failing_flushes_keep_acknowledging_until_the_hard_cap() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let marker = dir.path().join("fail-flush");
        std::fs::write(&marker, b"").unwrap();
        let options = WriterOptions {
            flush: FlushPolicy { interval: Duration::from_millis(10), soft_bytes: u64::MAX },
            hard_buffer_bytes: 4096,
            fail_flush_marker: Some(marker.clone()),
            ..Default::default()
        };
        let (w, task) = Writer::start(root.clone(), options).await.unwrap();
        let mut acknowledged = 0;
        let refused = loop {
            match w.submit(vec![put(&format!("p{acknowledged}"), "Name", Precondition::None)]).await {
                Ok(_) => acknowledged += 1,
                Err(e) => break e,
            }
            assert!(acknowledged < 1000, "the hard cap never refused a write");
        };
        assert!(matches!(refused, Error::Backpressure(_)), "{refused}");
        assert!(acknowledged > 1);
        assert!(w.sync().await.is_err(), "a reader asking for fresh tables is told the flush fails");
        assert!(w.stats().flush_error().is_some());
        std::fs::remove_file(&marker).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while w.sync().await.is_err() {
            assert!(std::time::Instant::now() < deadline, "flushes never recovered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let current = w.tables().get(TableKind::Current, "Patient").unwrap();
        assert_eq!(count_rows(&current).await, acknowledged, "every acknowledged write landed");
        w.submit(vec![put("after", "Name", Precondition::None)]).await.unwrap();
        drop(w);
        task.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn append_rows_land_in_their_table() {
        use arrow::datatypes::{DataType, Field, Schema};
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let table = AppendTable {
            name: "events".into(),
            schema: Arc::new(Schema::new(vec![
                Field::new("kind", DataType::Utf8, false),
                Field::new("n", DataType::Int64, true),
            ])),
        };
        let options = WriterOptions { append_tables: vec![table], ..lazy() };
        let (w, task) = Writer::start(root.clone(), options.clone()).await.unwrap();
        let row =
            |n: i64| AppendRow { table: "events".into(), json: format!(r#"{{"kind":"k","n":{n}}}"#).into_bytes() };
        w.submit_with_rows(vec![put("a", "One", Precondition::None)], vec![row(1), row(2)]).await.unwrap();
        w.submit_with_rows(vec![], vec![row(3)]).await.unwrap();
        assert!(
            w.submit_with_rows(vec![], vec![AppendRow { table: "nope".into(), json: b"{}".to_vec() }]).await.is_err()
        );
        w.sync().await.unwrap();
        let events = w.tables().get(TableKind::System, "events").unwrap();
        assert_eq!(count_rows(&events).await, 3);
        // Rows not yet flushed survive a crash.
        w.submit_with_rows(vec![], vec![row(4)]).await.unwrap();
        let flush = w.flush.clone();
        drop(w);
        task.crash(flush).await;
        let (w, task) = Writer::start(root.clone(), options).await.unwrap();
        let events = w.tables().get(TableKind::System, "events").unwrap();
        assert_eq!(count_rows(&events).await, 4);
        drop(w);
        task.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_root_without_serving_store_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let (w, task) = Writer::start(root.clone(), WriterOptions::default()).await.unwrap();
        w.submit(vec![put("a", "One", Precondition::None)]).await.unwrap();
        w.submit(vec![put("a", "Uno", Precondition::None), put("b", "Two", Precondition::None)]).await.unwrap();
        drop(w);
        task.shutdown().await.unwrap();
        // What an older release leaves: the tables, maybe a journal entry, no store.
        std::fs::remove_file(dir.path().join(SERVING_PATH)).unwrap();
        let rec = VersionRecord {
            resource_type: "Patient".into(),
            id: "c".into(),
            version: 1,
            last_updated_us: 1_700_000_000_000_000,
            deleted: false,
            hash: 7,
            raw: Some(patient("c", "Three").to_json_string().into()),
        };
        let journal = Journal::new(root.clone());
        journal.append(1_800_000_000_000_000, &[rec]).await.unwrap();

        let (w, task) = Writer::start(root.clone(), WriterOptions::default()).await.unwrap();
        assert!(journal.pending().await.unwrap().is_empty(), "the journal was replayed and removed");
        assert_eq!(w.current("Patient", "a").map(|e| e.version), Some(2));
        assert_eq!(w.current("Patient", "c").map(|e| e.version), Some(1));
        assert!(w.version("Patient", "a", 1).unwrap().unwrap().raw.unwrap().contains("One"));
        assert_eq!(w.store().layout_version().unwrap(), Some(LAYOUT_VERSION));
        let current = w.tables().get(TableKind::Current, "Patient").unwrap();
        assert_eq!(count_rows(&current).await, 3);
        // Writes continue on top of the upgraded store.
        let r = w.submit(vec![put("a", "Eins", Precondition::IfMatch(2))]).await.unwrap();
        assert!(matches!(r[0], OpOutcome::Written { version: 3, .. }), "{r:?}");
        drop(w);
        task.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let (_w, task) = Writer::start(root.clone(), WriterOptions::default()).await.unwrap();
        let second = Writer::start(root.clone(), WriterOptions::default()).await;
        assert!(matches!(second, Err(Error::LeaseHeld { .. })));
        drop(_w);
        task.shutdown().await.unwrap();
    }

    async fn count_rows(t: &DeltaTable) -> usize {
        use deltalake::datafusion::prelude::SessionContext;
        let ctx = SessionContext::new();
        t.update_datafusion_session(&ctx.state()).unwrap();
        let df = ctx.read_table(t.table_provider().await.unwrap()).unwrap();
        df.count().await.unwrap()
    }
}
