//! Flushing acknowledged group commits to the Delta tables, behind the request path.
//!
//! Owns: the flusher task. Group commits arrive here after they are durable in the
//! serving store (and answered); they wait in the active buffer until a flush round
//! starts: when the oldest is older than the flush interval, the buffer is over its soft
//! cap, a reader asks for everything up to a sequence ([`FlushMessage::Sync`]), or the
//! writer shuts down. A round freezes the buffer, flattens it per type, and commits every
//! dirty table up to the round's last sequence `S` (history appended, current rows
//! replaced by id, each commit carrying `S` as its Delta `txn`), then publishes the new
//! tables together, writes the watermark and drops the log entries up to `S` from the
//! store. A failed round is retried with backoff (tables it already committed are not
//! committed twice); acknowledged writes are never failed by it. Table maintenance
//! (compaction rounds, vacuum) commits here, between rounds. Must not: decide versions.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use deltalake::DeltaTable;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::protocol::DeltaOperation;
use tokio::sync::{mpsc, oneshot};

use super::delta::{Applier, NewRow, PreparedType, TableResult};
use super::index::{OWNER_ABSENT, OWNER_UNKNOWN, ResourceIndex};
use super::ops::{AppendRow, AppendTable, VersionRecord};
use super::serving::ServingStore;
use crate::compact::{self, Round};
use crate::store::TableKind;
use crate::{Error, Result};

/// A group commit that is durable in the serving store and not yet in Delta.
pub(crate) struct Committed {
    pub(crate) seq: i64,
    pub(crate) records: Vec<VersionRecord>,
    pub(crate) appends: Vec<AppendRow>,
    /// Estimated memory held (counted in [`super::WriterStats::buffered_bytes`]).
    pub(crate) bytes: u64,
    pub(crate) at: Instant,
}

impl Committed {
    /// Estimated memory of a group commit's buffered versions: the served JSON and the
    /// record around it (a round parses and flattens it a chunk at a time).
    pub(crate) fn estimate(records: &[VersionRecord], appends: &[AppendRow]) -> u64 {
        let json: usize = records.iter().map(|r| r.raw.as_ref().map_or(0, |s| s.len()) + 128).sum();
        (json + appends.iter().map(|a| a.json.len() + 64).sum::<usize>()) as u64
    }
}

/// What the flusher is asked to do.
pub(crate) enum FlushMessage {
    /// Buffer a durable group commit.
    Committed(Committed),
    /// Answer once everything up to this sequence is in Delta (or a round failed).
    Sync(i64, oneshot::Sender<Result<()>>),
    /// Commit table maintenance between rounds.
    Maintenance(Maintenance),
    /// Stop at once without flushing, as a killed process would (tests).
    #[cfg(test)]
    Halt,
}

/// Starts the flusher on a thread of its own: a large stack (delta-rs turns a
/// `replaceWhere` id list into an expression nested as deep as the list is long) and a
/// lower scheduling priority (flushes yield the CPU to requests), with a current-thread
/// runtime (its blocking pool inherits both).
pub(crate) fn spawn(
    flusher: Flusher,
    rx: mpsc::UnboundedReceiver<FlushMessage>,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("fhirlake-flush".into())
        .stack_size(FLUSH_STACK_BYTES)
        .spawn(move || {
            // On Linux a thread id names one thread to setpriority; failing leaves the default
            // priority, which is harmless.
            let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), FLUSH_NICE);
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_stack_size(FLUSH_STACK_BYTES)
                .build()
            {
                Ok(rt) => rt.block_on(flusher.run(rx)),
                Err(e) => tracing::error!(error = %e, "cannot start the flusher; writes stay in the serving store"),
            }
        })
        .map_err(|e| Error::Config(format!("cannot start the flusher thread: {e}")))
}

/// Stack of the flusher's threads (virtual memory; only what is used is resident).
const FLUSH_STACK_BYTES: usize = 512 << 20;

/// Nice value of the flusher's threads.
const FLUSH_NICE: i32 = 5;

/// Table maintenance that must commit between flush rounds (see `compact.rs`).
pub(crate) enum Maintenance {
    /// Commit a compaction round unless a flush rewrote one of its inputs (`Ok(None)`:
    /// dropped).
    Compact(Round, oneshot::Sender<Result<Option<DeltaTable>>>),
    /// Vacuum a table: delete files no version within `retention` references.
    Vacuum(TableKind, String, chrono::Duration, oneshot::Sender<Result<usize>>),
}

/// When to flush.
#[derive(Debug, Clone, Copy)]
pub struct FlushPolicy {
    /// Flush once the oldest buffered group commit is this old.
    pub interval: Duration,
    /// Flush at once when the buffer holds more than this (bytes, estimated).
    pub soft_bytes: u64,
}

/// The flusher task's state.
pub(crate) struct Flusher {
    pub(crate) applier: Arc<Applier>,
    pub(crate) store: ServingStore,
    pub(crate) index: Arc<RwLock<ResourceIndex>>,
    pub(crate) policy: FlushPolicy,
    pub(crate) append_tables: Vec<AppendTable>,
    /// Test hook: while this file exists, every flush round fails.
    pub(crate) fail_marker: Option<std::path::PathBuf>,
    pub(crate) buffer: Vec<Committed>,
    pub(crate) waiters: Vec<(i64, oneshot::Sender<Result<()>>)>,
    /// Set by [`FlushMessage::Halt`] (tests).
    pub(crate) halted: bool,
}

/// A round being committed (kept across retries).
struct Frozen {
    seq: i64,
    batches: Vec<Committed>,
    /// Tables committed already (a retry skips them).
    done: HashSet<(TableKind, String)>,
    published: Vec<(TableKind, String, DeltaTable)>,
}

impl Flusher {
    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<FlushMessage>) {
        let mut frozen: Option<Frozen> = None;
        let mut backoff = Duration::from_millis(100);
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut open = true;
        loop {
            let deadline = self.deadline(retry_at);
            if open {
                // `None`: the deadline passed without a message.
                let got = match deadline {
                    Some(d) => tokio::time::timeout_at(d, rx.recv()).await.ok(),
                    None => Some(rx.recv().await),
                };
                match got {
                    Some(Some(m)) => self.take(m).await,
                    Some(None) => open = false,
                    None => {}
                }
                while let Ok(m) = rx.try_recv() {
                    self.take(m).await;
                }
                if self.halted {
                    return;
                }
            }
            let due = !open
                || frozen.is_some()
                || self.buffer.first().is_some_and(|c| c.at.elapsed() >= self.policy.interval)
                || self.applier.stats.buffered_bytes.load(Relaxed) >= self.policy.soft_bytes
                || self.waiters.iter().any(|(s, _)| *s > self.applier.stats.flushed_seq.load(Relaxed));
            let waiting = retry_at.is_some_and(|t| tokio::time::Instant::now() < t);
            if due && !waiting && (frozen.is_some() || !self.buffer.is_empty()) {
                let round = frozen.take().unwrap_or_else(|| self.freeze());
                match self.round(round).await {
                    Ok(()) => {
                        backoff = Duration::from_millis(100);
                        retry_at = None;
                        *self.applier.stats.flush_error.lock().expect("stats lock") = None;
                    }
                    Err((round, e)) => {
                        tracing::error!(error = %e, retry_in = ?backoff, "flush to Delta failed; retrying (writes are still acknowledged)");
                        self.applier.stats.flush_failures.fetch_add(1, Relaxed);
                        *self.applier.stats.flush_error.lock().expect("stats lock") = Some(e.to_string());
                        for (_, reply) in self.waiters.drain(..) {
                            let _ = reply.send(Err(Error::FlushFailed(e.to_string())));
                        }
                        frozen = Some(round);
                        retry_at = Some(tokio::time::Instant::now() + backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
            let flushed = self.applier.stats.flushed_seq.load(Relaxed);
            let (ready, waiting): (Vec<_>, Vec<_>) = self.waiters.drain(..).partition(|(s, _)| *s <= flushed);
            self.waiters = waiting;
            for (_, reply) in ready {
                let _ = reply.send(Ok(()));
            }
            if retry_at.is_some() {
                // Flushes are failing: a reader asking for fresh tables is told so at once
                // rather than waiting out the backoff.
                let why = self.applier.stats.flush_error().unwrap_or_default();
                for (_, reply) in self.waiters.drain(..) {
                    let _ = reply.send(Err(Error::FlushFailed(why.clone())));
                }
            }
            if !open && frozen.is_none() && self.buffer.is_empty() {
                break;
            }
            if !open && retry_at.is_some() {
                // Shutting down with a failing flush: the store holds everything; the
                // next start flushes it.
                tracing::warn!("stopping with unflushed group commits; the next start flushes them from the store");
                break;
            }
        }
    }

    /// When the loop must wake up without a message.
    fn deadline(&self, retry_at: Option<tokio::time::Instant>) -> Option<tokio::time::Instant> {
        let flush = self.buffer.first().map(|c| tokio::time::Instant::from_std(c.at + self.policy.interval));
        match (flush, retry_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    async fn take(&mut self, m: FlushMessage) {
        match m {
            FlushMessage::Committed(c) => self.buffer.push(c),
            #[cfg(test)]
            FlushMessage::Halt => self.halted = true,
            FlushMessage::Sync(seq, reply) => self.waiters.push((seq, reply)),
            FlushMessage::Maintenance(Maintenance::Compact(round, reply)) => {
                let _ = reply.send(self.commit_round(round).await);
            }
            FlushMessage::Maintenance(Maintenance::Vacuum(kind, rt, retention, reply)) => {
                let _ = reply.send(self.vacuum(kind, &rt, retention).await);
            }
        }
    }

    fn freeze(&mut self) -> Frozen {
        let batches = std::mem::take(&mut self.buffer);
        let seq = batches.last().map_or(0, |c| c.seq);
        Frozen { seq, batches, done: HashSet::new(), published: Vec::new() }
    }

    /// Commits one frozen round; on failure returns it for a retry.
    async fn round(&self, mut round: Frozen) -> std::result::Result<(), (Frozen, Error)> {
        let started = Instant::now();
        if self.fail_marker.as_ref().is_some_and(|p| p.exists()) {
            return Err((round, Error::FlushFailed("flushes are made to fail (test hook)".into())));
        }
        let seq = round.seq;
        let (prepared, appends) = match self.prepare(&round).await {
            Ok(p) => p,
            Err(e) => return Err((round, e)),
        };
        let new_rows: Vec<(String, Vec<(String, NewRow)>)> =
            prepared.iter().map(|p| (p.resource_type().to_string(), p.new_rows.clone())).collect();
        let mut results = self.applier.commit_tables(seq, prepared, &round.done, false).await;
        results.extend(self.commit_appends(seq, appends, &round.done).await);
        let mut failure = None;
        for (kind, rt, r) in results {
            match r {
                Ok(t) => {
                    round.done.insert((kind, rt.clone()));
                    round.published.extend(t.map(|t| (kind, rt, t)));
                }
                Err(e) => failure = Some(e),
            }
        }
        if let Some(e) = failure {
            return Err((round, e));
        }
        // Every table of the round is committed: publish them together, in place of the
        // buffered versions they now hold.
        self.applier.tables.publish(std::mem::take(&mut round.published), seq);
        {
            let mut index = self.index.write().expect("index lock");
            for (rt, rows) in new_rows {
                for (id, row) in rows {
                    let key = match row {
                        NewRow::Deleted => OWNER_ABSENT,
                        NewRow::Live(owner) => index.intern_owner(owner.as_deref()),
                    };
                    index.set_flushed_owner(&rt, &id, key);
                }
            }
        }
        self.applier.write_watermark(seq).await;
        if let Err(e) = self.store.trim(seq) {
            tracing::warn!(error = %e, "could not trim the serving store's log; it is retried after the next round");
        }
        let stats = &self.applier.stats;
        let rows: u64 = round.batches.iter().map(|c| c.records.len() as u64).sum();
        let bytes: u64 = round.batches.iter().map(|c| c.bytes).sum();
        stats.buffered_rows.fetch_sub(rows.min(stats.buffered_rows.load(Relaxed)), Relaxed);
        stats.buffered_bytes.fetch_sub(bytes.min(stats.buffered_bytes.load(Relaxed)), Relaxed);
        stats.flushed_seq.fetch_max(seq, Relaxed);
        stats.flush_rounds.fetch_add(1, Relaxed);
        tracing::debug!(seq, rows, elapsed = ?started.elapsed(), "flushed to Delta");
        Ok(())
    }

    /// Flattens a round per type (the Delta owners narrow each `replaceWhere`) and groups
    /// its append-only rows per table.
    async fn prepare(&self, round: &Frozen) -> Result<(Vec<PreparedType>, Vec<(AppendTable, Vec<Vec<u8>>)>)> {
        let mut records = Vec::new();
        let mut appends: HashMap<&str, Vec<Vec<u8>>> = HashMap::new();
        for c in &round.batches {
            records.extend(c.records.iter().cloned());
            for a in &c.appends {
                appends.entry(a.table.as_str()).or_default().push(a.json.clone());
            }
        }
        let mut prepared = self.applier.prepare(records).await?;
        {
            // The rows each flush replaces are the ones in Delta: narrow by their owners.
            let index = self.index.read().expect("index lock");
            for p in &mut prepared {
                let rt = p.resource_type().to_string();
                let mut all_new = true;
                let mut old = Some(HashMap::new());
                for id in p.ids() {
                    match index.get(&rt, id).map_or(OWNER_ABSENT, |e| e.flushed_owner) {
                        OWNER_ABSENT => {}
                        OWNER_UNKNOWN => {
                            all_new = false;
                            old = None;
                        }
                        k => {
                            all_new = false;
                            if let Some(o) = old.as_mut() {
                                o.insert(id.clone(), index.owner(k).map(str::to_string));
                            }
                        }
                    }
                }
                p.all_new = all_new;
                p.old_owners = old;
            }
        }
        let mut out = Vec::new();
        for (name, rows) in appends {
            let Some(t) = self.append_tables.iter().find(|t| t.name == name) else {
                tracing::error!(table = name, "rows for an unknown append-only table are dropped");
                continue;
            };
            out.push((t.clone(), rows));
        }
        Ok((prepared, out))
    }

    async fn commit_appends(
        &self,
        seq: i64,
        appends: Vec<(AppendTable, Vec<Vec<u8>>)>,
        done: &HashSet<(TableKind, String)>,
    ) -> Vec<TableResult> {
        let mut out = Vec::new();
        for (t, rows) in appends {
            if done.contains(&(TableKind::System, t.name.clone())) {
                continue;
            }
            let r = self.applier.append_rows(seq, &t, &rows).await.map(Some);
            out.push((TableKind::System, t.name, r));
        }
        out
    }

    async fn commit_round(&self, round: Round) -> Result<Option<DeltaTable>> {
        let tables = &self.applier.tables;
        let Some(latest) = tables.get(round.kind, &round.rt) else {
            return Err(Error::Config(format!("no table {:?}/{}", round.kind, round.rt)));
        };
        let files: HashSet<String> =
            compact::active_files(&latest).await?.into_iter().map(|(_, _, r)| r.path).collect();
        if !compact::inputs_active(&round, &files) {
            compact::discard(&latest, &round).await;
            return Ok(None);
        }
        let op = DeltaOperation::Optimize { target_size: round.target_size as i64, predicate: None };
        let commit = CommitBuilder::default()
            .with_actions(compact::actions(&round))
            .build(Some(latest.snapshot()?), latest.log_store(), op)
            .await?;
        let mut t = latest.clone();
        t.update_incremental(Some(commit.version())).await?;
        tables.put(round.kind, &round.rt, t.clone());
        Ok(Some(t))
    }

    async fn vacuum(&self, kind: TableKind, rt: &str, retention: chrono::Duration) -> Result<usize> {
        let tables = &self.applier.tables;
        let Some(latest) = tables.get(kind, rt) else { return Ok(0) };
        let (t, metrics) =
            latest.vacuum().with_retention_period(retention).with_enforce_retention_duration(false).await?;
        tables.put(kind, rt, t);
        Ok(metrics.files_deleted.len())
    }
}
