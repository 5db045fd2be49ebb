//! The write path: group commit of resource versions into the Delta tables.
//!
//! Owns: the single writer task of a storage root. Requests from many callers queue on a
//! channel; the task takes everything queued (up to a batch limit, after an optional short
//! linger), decides each operation against the in-memory [`ResourceIndex`] (version
//! numbers, `If-Match`, no-op updates; hashing and serialising on rayon), writes the batch
//! to the [`Journal`] (durable) while [`crate::apply`] flattens it, then has every touched
//! type committed — `history/<Type>` and `resources/<Type>`, each commit carrying the
//! journal sequence as a `txn` action — and only then answers the callers. On start-up,
//! journal entries left by a crash are replayed into the tables that lack them and the
//! index is rebuilt from the history tables. Must not: validate resources or speak HTTP.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use deltalake::DeltaTable;
use fhirlake_schemas::{Json, Model, ShapeOptions};
use tokio::sync::{mpsc, oneshot};

use crate::apply::{Applier, load_index};
use crate::compact::{self, CompactOptions, TableReport};
use crate::decide::{Build, Known, build_served, decide, hash_ops};
pub use crate::decide::{content_hash, format_instant, set_server_meta, with_server_meta};
use crate::journal::{Journal, VersionRecord};
use crate::pipeline::{Committer, Maintenance, Overlay, Staged};
use crate::store::{Lease, StorageRoot, TableKind};
use crate::{Clock, Error, Result, SystemClock};

/// What an operation does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Create or replace the resource (validated, `id` set to the op's id).
    Put(Arc<Json>),
    /// Delete the resource.
    Delete,
}

/// A condition an operation must meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precondition {
    /// None.
    #[default]
    None,
    /// The current version must be this one (`If-Match`).
    IfMatch(i64),
    /// The resource must not exist, or be deleted (`If-None-Match: *`, and creates whose
    /// id was chosen before the write, e.g. a conditional update that matched nothing).
    Absent,
}

/// One write.
#[derive(Debug, Clone)]
pub struct WriteOp {
    /// Resource type.
    pub resource_type: String,
    /// Resource id.
    pub id: String,
    /// What to do.
    pub action: Action,
    /// Condition.
    pub precondition: Precondition,
}

/// The result of one operation.
#[derive(Debug, Clone, PartialEq)]
pub enum OpOutcome {
    /// A new version was stored.
    Written {
        /// Its version.
        version: i64,
        /// Its last-updated time (µs).
        last_updated_us: i64,
        /// The JSON served for it.
        raw: Arc<str>,
        /// True when the resource did not exist (or was deleted) before.
        created: bool,
    },
    /// The content equals the current version; nothing was stored.
    Unchanged {
        /// Current version.
        version: i64,
        /// Its last-updated time (µs).
        last_updated_us: i64,
        /// The JSON of the current version.
        raw: Arc<str>,
    },
    /// A delete was stored (or the resource was already gone: `version` is `None`).
    Deleted {
        /// The version recording the delete.
        version: Option<i64>,
    },
    /// Not applied: another operation of the same atomic request failed.
    RolledBack,
    /// `If-Match` did not hold.
    PreconditionFailed {
        /// The current version (`None` if the resource does not exist).
        current: Option<i64>,
    },
}

impl OpOutcome {
    /// The version written, kept or recording the delete, if any.
    pub fn version(&self) -> Option<i64> {
        match self {
            OpOutcome::Written { version, .. } | OpOutcome::Unchanged { version, .. } => Some(*version),
            OpOutcome::Deleted { version } => *version,
            OpOutcome::RolledBack | OpOutcome::PreconditionFailed { .. } => None,
        }
    }
}

/// What the writer knows of a resource's latest version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Latest version id.
    pub version: i64,
    /// True when the latest version is a delete.
    pub deleted: bool,
    /// Content hash of the latest version.
    pub hash: u64,
    /// Its last-updated time (µs).
    pub last_updated_us: i64,
    /// The owning patient of its current row (`_patient`), interned: [`OWNER_NONE`],
    /// [`OWNER_UNKNOWN`] (decided, not committed yet) or a [`ResourceIndex::owner`] key.
    pub owner: u32,
}

/// No owning patient (`_patient` is null).
pub const OWNER_NONE: u32 = 0;
/// Not known yet.
pub const OWNER_UNKNOWN: u32 = u32::MAX;

/// Latest version of every resource, per type.
#[derive(Debug, Default)]
pub struct ResourceIndex {
    types: HashMap<String, HashMap<String, IndexEntry>>,
    /// Interned patient ids (`owners[k - 1]` is owner `k`).
    owners: Vec<String>,
    owner_keys: HashMap<String, u32>,
}

impl ResourceIndex {
    /// The patient id of an owner key.
    pub fn owner(&self, key: u32) -> Option<&str> {
        match key {
            OWNER_NONE | OWNER_UNKNOWN => None,
            k => self.owners.get(k as usize - 1).map(String::as_str),
        }
    }

    /// The owner key of a patient id (`None`: no owner).
    pub(crate) fn intern_owner(&mut self, patient: Option<&str>) -> u32 {
        let Some(p) = patient else { return OWNER_NONE };
        if let Some(&k) = self.owner_keys.get(p) {
            return k;
        }
        self.owners.push(p.to_string());
        let k = self.owners.len() as u32;
        self.owner_keys.insert(p.to_string(), k);
        k
    }

    /// The entry of `rt/id`.
    pub fn get(&self, rt: &str, id: &str) -> Option<IndexEntry> {
        self.types.get(rt)?.get(id).copied()
    }

    pub(crate) fn set(&mut self, rt: &str, id: &str, e: IndexEntry) {
        self.types.entry(rt.to_string()).or_default().insert(id.to_string(), e);
    }

    /// Number of live resources per type.
    pub fn live_counts(&self) -> Vec<(String, usize)> {
        let mut v: Vec<_> =
            self.types.iter().map(|(t, m)| (t.clone(), m.values().filter(|e| !e.deleted).count())).collect();
        v.sort();
        v
    }
}

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
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            max_batch_ops: 20_000,
            linger: Duration::from_millis(2),
            shape: ShapeOptions::default(),
            holder: "fhirlake".into(),
        }
    }
}

pub(crate) struct Request {
    pub(crate) ops: Vec<WriteOp>,
    pub(crate) atomic: bool,
    pub(crate) reply: oneshot::Sender<Result<Vec<OpOutcome>>>,
}

/// Latest snapshot of every table, shared with readers.
#[derive(Default)]
pub struct TableSet {
    tables: RwLock<HashMap<(TableKind, String), DeltaTable>>,
}

impl TableSet {
    /// The latest known state of a table (a cheap clone), if it exists.
    pub fn get(&self, kind: TableKind, rt: &str) -> Option<DeltaTable> {
        self.tables.read().expect("table set lock").get(&(kind, rt.to_string())).cloned()
    }

    pub(crate) fn put(&self, kind: TableKind, rt: &str, t: DeltaTable) {
        self.tables.write().expect("table set lock").insert((kind, rt.to_string()), t);
    }

    /// Publishes several new table versions at once (one group commit).
    pub(crate) fn put_all(&self, tables: Vec<(TableKind, String, DeltaTable)>) {
        let mut set = self.tables.write().expect("table set lock");
        for (kind, rt, t) in tables {
            set.insert((kind, rt), t);
        }
    }

    /// Every table's latest version, read at one instant (never half of a group commit).
    pub fn snapshot(&self) -> Vec<(TableKind, String, DeltaTable)> {
        self.tables.read().expect("table set lock").iter().map(|((k, rt), t)| (*k, rt.clone(), t.clone())).collect()
    }

    /// The latest version of every table of one kind, by type, read at one instant.
    pub fn snapshot_of(&self, kind: TableKind) -> HashMap<String, DeltaTable> {
        self.tables
            .read()
            .expect("table set lock")
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, rt), t)| (rt.clone(), t.clone()))
            .collect()
    }

    /// Every table's latest version, read at one instant (for the watermark; no table is
    /// cloned).
    pub(crate) fn versions(&self) -> Vec<(TableKind, String, Option<u64>)> {
        self.tables.read().expect("table set lock").iter().map(|((k, rt), t)| (*k, rt.clone(), t.version())).collect()
    }

    /// Types that have a current table.
    pub fn current_types(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .tables
            .read()
            .expect("table set lock")
            .keys()
            .filter(|(k, _)| *k == TableKind::Current)
            .map(|(_, t)| t.clone())
            .collect();
        v.sort();
        v
    }
}

/// A handle to the writer of a storage root; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Request>,
    index: Arc<RwLock<ResourceIndex>>,
    tables: Arc<TableSet>,
    root: StorageRoot,
    stats: Arc<WriterStats>,
    maintenance: mpsc::Sender<Maintenance>,
}

/// Counters of the writer, read by `/metrics` and tests.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Delta commits made.
    pub commits: std::sync::atomic::AtomicU64,
    /// Group commits (journal entries) made.
    pub batches: std::sync::atomic::AtomicU64,
    /// Operations per committed group commit.
    pub batch_ops: SizeHistogram,
    /// Compaction rounds committed.
    pub compaction_rounds: std::sync::atomic::AtomicU64,
    /// Compaction rounds dropped because a group commit changed one of their files.
    pub compaction_rounds_dropped: std::sync::atomic::AtomicU64,
    /// Why writes are stopped (a commit failed part-way), once they are: every later
    /// write is refused until a restart replays the journal.
    pub stopped: std::sync::OnceLock<String>,
}

/// A histogram of counts (sizes) in power-of-two buckets, lock-free.
#[derive(Debug, Default)]
pub struct SizeHistogram {
    /// `buckets[i]`: observations `<= 2^i`; the last also takes everything larger.
    buckets: [std::sync::atomic::AtomicU64; SizeHistogram::BUCKETS],
    sum: std::sync::atomic::AtomicU64,
}

impl SizeHistogram {
    /// Buckets: 1, 2, 4, ... 2^16, then everything larger.
    pub const BUCKETS: usize = 18;

    /// Records one observation of `n`.
    pub fn observe(&self, n: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let i = (n.max(1).next_power_of_two().trailing_zeros() as usize).min(Self::BUCKETS - 1);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(n, Relaxed);
    }

    /// `(each bucket's upper bound, the last +inf, with its own count; sum; count)`.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let buckets: Vec<(f64, u64)> = (0..Self::BUCKETS)
            .map(|i| {
                let bound = if i + 1 == Self::BUCKETS { f64::INFINITY } else { (1u64 << i) as f64 };
                (bound, self.buckets[i].load(Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|b| b.1).sum();
        (buckets, self.sum.load(Relaxed), count)
    }
}

/// Owns the writer task; [`WriterTask::shutdown`] drains it and releases the lease.
pub struct WriterTask {
    join: tokio::task::JoinHandle<()>,
    lease: Lease,
}

impl WriterTask {
    /// Waits until every handle is dropped and queued writes are committed, then releases
    /// the lease.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.join.await;
        self.lease.release().await
    }
}

impl Writer {
    /// Takes the lease of `root`, replays the journal, loads the index and starts the
    /// writer task.
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
        let model = Model::r4()?;
        let mut core = Core {
            journal: Journal::new(root.clone()),
            applier: Arc::new(Applier::new(root.clone(), options.shape, model)),
            overlay: Arc::new(Mutex::new(Overlay::default())),
            options: options.clone(),
            clock,
            last_seq: 0,
            last_ts: 0,
        };
        let index = match core.recover().await {
            Ok(index) => index,
            Err(e) => {
                let _ = lease.release().await;
                return Err(e);
            }
        };
        let index = Arc::new(RwLock::new(index));
        let (tx, rx) = mpsc::channel(1024);
        let (maintenance, maintenance_rx) = mpsc::channel(4);
        let writer = Writer {
            tx,
            index: index.clone(),
            tables: core.applier.tables.clone(),
            root,
            stats: core.applier.stats.clone(),
            maintenance,
        };
        let join = tokio::spawn(core.run(rx, index, maintenance_rx));
        Ok((writer, WriterTask { join, lease }))
    }

    /// Submits operations as one request; they are committed together (a request is never
    /// split across group commits) and answered once durable.
    pub async fn submit(&self, ops: Vec<WriteOp>) -> Result<Vec<OpOutcome>> {
        self.send(ops, false).await
    }

    /// Submits operations that succeed or fail together (a FHIR transaction): when one
    /// fails its precondition, none is applied and the others answer
    /// [`OpOutcome::RolledBack`].
    pub async fn submit_atomic(&self, ops: Vec<WriteOp>) -> Result<Vec<OpOutcome>> {
        self.send(ops, true).await
    }

    async fn send(&self, ops: Vec<WriteOp>, atomic: bool) -> Result<Vec<OpOutcome>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request { ops, atomic, reply }).await.map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// What the index knows of `rt/id`.
    pub fn current(&self, rt: &str, id: &str) -> Option<IndexEntry> {
        self.index.read().expect("index lock").get(rt, id)
    }

    /// The owning patient of `rt/id`'s current row (its Patient compartment owner), if
    /// it has one and it is committed.
    pub fn owner_of(&self, rt: &str, id: &str) -> Option<String> {
        let index = self.index.read().expect("index lock");
        let entry = index.get(rt, id)?;
        index.owner(entry.owner).map(str::to_string)
    }

    /// Live resources per type.
    pub fn live_counts(&self) -> Vec<(String, usize)> {
        self.index.read().expect("index lock").live_counts()
    }

    /// The tables, for readers.
    pub fn tables(&self) -> &Arc<TableSet> {
        &self.tables
    }

    /// The storage root.
    pub fn root(&self) -> &StorageRoot {
        &self.root
    }

    /// Counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
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
                self.maintenance.send(Maintenance::Compact(round, reply)).await.map_err(|_| Error::ShuttingDown)?;
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
            self.maintenance
                .send(Maintenance::Vacuum(kind, rt, retention, reply))
                .await
                .map_err(|_| Error::ShuttingDown)?;
            deleted += rx.await.map_err(|_| Error::ShuttingDown)??;
        }
        Ok(deleted)
    }
}

struct Core {
    journal: Journal,
    applier: Arc<Applier>,
    overlay: Arc<Mutex<Overlay>>,
    options: WriterOptions,
    clock: Arc<dyn Clock>,
    last_seq: i64,
    last_ts: i64,
}

impl Core {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Request>,
        index: Arc<RwLock<ResourceIndex>>,
        maintenance: mpsc::Receiver<Maintenance>,
    ) {
        // Stage two commits while this task decides the next batch; one batch may wait.
        let (staged_tx, staged_rx) = mpsc::channel::<Staged>(1);
        let committer = Committer {
            applier: self.applier.clone(),
            journal: self.journal.clone(),
            index: index.clone(),
            overlay: self.overlay.clone(),
        };
        let stage_two = tokio::spawn(committer.run(staged_rx, maintenance));
        while let Some(first) = rx.recv().await {
            let mut reqs = vec![first];
            let mut n: usize = reqs[0].ops.len();
            let deadline = tokio::time::Instant::now() + self.options.linger;
            while n < self.options.max_batch_ops {
                match rx.try_recv() {
                    Ok(r) => {
                        n += r.ops.len();
                        reqs.push(r);
                    }
                    Err(_) if self.options.linger.is_zero() => break,
                    Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(r)) => {
                            n += r.ops.len();
                            reqs.push(r);
                        }
                        _ => break,
                    },
                }
            }
            if let Some(staged) = self.stage(reqs, &index).await
                && staged_tx.send(staged).await.is_err()
            {
                tracing::error!("the commit stage stopped");
                break;
            }
        }
        drop(staged_tx);
        let _ = stage_two.await;
    }

    fn next_ts(&mut self) -> i64 {
        let now = self.clock.now_us().max(self.last_ts + 1);
        self.last_ts = now;
        now
    }

    /// Stage one of a group commit: hash, decide, serialise, then journal and flatten.
    /// Returns the batch for stage two, or `None` after answering the callers itself.
    async fn stage(&mut self, reqs: Vec<Request>, index: &Arc<RwLock<ResourceIndex>>) -> Option<Staged> {
        let started = std::time::Instant::now();
        let (mut reqs, hashes) = match tokio::task::spawn_blocking(move || {
            let h = hash_ops(&reqs);
            (reqs, h)
        })
        .await
        {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "hashing failed");
                return None;
            }
        };
        // Decide every op against the index, the staged batches (overlay) and the versions
        // decided earlier in this batch.
        let mut pending: HashMap<(String, String), IndexEntry> = HashMap::new();
        let mut records: Vec<VersionRecord> = Vec::new();
        let mut existed: HashSet<(String, String)> = HashSet::new();
        let mut answers: Vec<Vec<OpOutcome>> = Vec::with_capacity(reqs.len());
        let mut builds: Vec<(usize, Build)> = Vec::new();
        let ts = self.next_ts();
        let epoch;
        {
            let idx = index.read().expect("index lock");
            let overlay = self.overlay.lock().expect("overlay lock");
            if let Some(why) = &overlay.stopped {
                // Fail closed: a commit failed part-way; only a restart (journal replay) can
                // tell what the tables hold.
                let message = format!("writes are stopped until fhirlake restarts: {why}");
                drop(overlay);
                drop(idx);
                for req in reqs {
                    let _ = req.reply.send(Err(Error::CommitFailed(message.clone())));
                }
                return None;
            }
            epoch = overlay.epoch;
            let known = Known { index: &idx, overlay: &overlay.entries };
            for (r, req) in reqs.iter().enumerate() {
                let d = decide(&req.ops, &hashes[r], &known, &pending, ts);
                let failed = d.out.iter().any(|o| matches!(o, OpOutcome::PreconditionFailed { .. }));
                if req.atomic && failed {
                    let out = d
                        .out
                        .into_iter()
                        .map(|o| match o {
                            OpOutcome::PreconditionFailed { .. } => o,
                            _ => OpOutcome::RolledBack,
                        })
                        .collect();
                    answers.push(out);
                    continue;
                }
                let offset = records.len();
                builds.extend(d.builds.into_iter().map(|mut b| {
                    b.record = b.record.map(|i| i + offset);
                    (r, b)
                }));
                records.extend(d.records);
                existed.extend(d.existed);
                pending.extend(d.pending);
                answers.push(d.out);
            }
        }
        // The ops are decided: let go of their resources so the builds own them.
        for req in reqs.iter_mut() {
            req.ops.clear();
        }
        let replies: Vec<_> = reqs.into_iter().map(|r| r.reply).collect();
        let built = match tokio::task::spawn_blocking(move || build_served(builds)).await {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "serialising failed");
                return None;
            }
        };
        let mut parsed: Vec<Option<Arc<Json>>> = vec![None; records.len()];
        for b in built {
            match &mut answers[b.request][b.out] {
                OpOutcome::Written { raw: slot, .. } | OpOutcome::Unchanged { raw: slot, .. } => *slot = b.raw.clone(),
                _ => {}
            }
            if let Some(i) = b.record {
                records[i].raw = Some(b.raw);
                parsed[i] = Some(Arc::new(b.served));
            }
        }
        let mut seq = None;
        let mut prepared = Vec::new();
        if !records.is_empty() {
            let s = self.clock.now_us().max(self.last_seq + 1);
            self.last_seq = s;
            // The journal fsync and the flattening overlap.
            let (journaled, flattened) =
                tokio::join!(self.journal.append(s, &records), self.applier.prepare(&records, parsed, Some(&existed)));
            match (journaled, flattened) {
                (Ok(()), Ok(p)) => {
                    seq = Some(s);
                    prepared = p;
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "group commit failed before any table was touched");
                    let _ = self.journal.remove(s).await;
                    for reply in replies {
                        let _ = reply.send(Err(Error::CommitFailed(e.to_string())));
                    }
                    return None;
                }
            }
            // Later batches decide on top of this one until stage two has committed it.
            let mut overlay = self.overlay.lock().expect("overlay lock");
            if overlay.epoch == epoch {
                for (k, e) in &pending {
                    overlay.entries.insert(k.clone(), (*e, s));
                }
            }
        }
        tracing::debug!(versions = records.len(), elapsed = ?started.elapsed(), "group commit staged");
        Some(Staged { seq, epoch, prepared, pending, replies, answers })
    }

    /// Replays the journal and builds the index from the history tables.
    async fn recover(&mut self) -> Result<ResourceIndex> {
        for (seq, records) in self.journal.pending().await? {
            if !records.is_empty() {
                tracing::info!(seq, versions = records.len(), "replaying journal entry left by an earlier run");
                let prepared = self.applier.prepare(&records, vec![None; records.len()], None).await?;
                self.applier.commit(seq, prepared).await?;
            }
            self.journal.remove(seq).await?;
            self.last_seq = self.last_seq.max(seq);
        }
        let mut index = ResourceIndex::default();
        let root = self.applier.root.clone();
        for rt in root.existing_tables(TableKind::History).await? {
            if !Model::r4()?.is_resource_type(&rt) {
                continue;
            }
            let Some(t) = root.open_table(TableKind::History, &rt).await? else { continue };
            load_index(&t, &rt, &mut index).await?;
            self.last_ts = self
                .last_ts
                .max(index.types.get(&rt).map_or(0, |m| m.values().map(|e| e.last_updated_us).max().unwrap_or(0)));
            self.applier.tables.put(TableKind::History, &rt, t);
            if let Some(c) = root.open_table(TableKind::Current, &rt).await? {
                self.applier.tables.put(TableKind::Current, &rt, c);
            }
        }
        // Every table is now complete (the journal was replayed): readers of the directory
        // may see the latest versions.
        self.applier.write_watermark(self.last_seq).await;
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Journal;
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
    async fn versions_noops_deletes_and_recovery() {
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
        let current = w.tables().get(TableKind::Current, "Patient").unwrap();
        let rows = count_rows(&current).await;
        assert_eq!(rows, 1, "current table holds only the live resource");
        drop(w);
        task.shutdown().await.unwrap();

        // A second writer on the same root sees the same state.
        let (w, task) = Writer::start(root.clone(), WriterOptions::default()).await.unwrap();
        assert_eq!(w.current("Patient", "a").map(|e| e.version), Some(2));
        assert!(w.current("Patient", "b").unwrap().deleted);
        // A journal entry left behind (crash after the journal write) is replayed on start.
        drop(w);
        task.shutdown().await.unwrap();
        let journal = Journal::new(root.clone());
        let rec = VersionRecord {
            resource_type: "Patient".into(),
            id: "c".into(),
            version: 1,
            last_updated_us: 1_700_000_000_000_000,
            deleted: false,
            hash: 7,
            raw: Some(patient("c", "Three").to_json_string().into()),
        };
        journal.append(1_800_000_000_000_000, &[rec]).await.unwrap();
        let (w, task) = Writer::start(root.clone(), WriterOptions::default()).await.unwrap();
        assert_eq!(w.current("Patient", "c").map(|e| e.version), Some(1));
        assert!(journal.pending().await.unwrap().is_empty());
        let current = w.tables().get(TableKind::Current, "Patient").unwrap();
        assert_eq!(count_rows(&current).await, 2);
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
