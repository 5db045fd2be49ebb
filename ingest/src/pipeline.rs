//! The second stage of the writer: committing staged group commits, in order.
//!
//! Owns: the hand-off between deciding a group commit (stage one, in
//! [`crate::writer`]: hash, decide, serialise, journal + flatten) and committing it (this
//! stage: Delta commits, journal removal, index update, answers). The two stages overlap:
//! while batch N is committed, batch N+1 is decided and journaled. Decisions about batch N+1
//! must see batch N's versions before they are in the index, so stage one records them in
//! the [`Overlay`]; this stage moves them into the index when N commits. If a commit
//! fails, every batch decided on top of it is failed too (the overlay's `epoch` changes and
//! staged batches of an older epoch are refused), so no version is ever committed on top
//! of one that was not. The failed batch's journal entry is kept and writes stop (fail
//! closed) until a restart replays it. Must not: decide versions.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{mpsc, oneshot};

use deltalake::DeltaTable;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::protocol::DeltaOperation;

use crate::apply::{Applier, PreparedType};
use crate::compact::{self, Round};
use crate::journal::Journal;
use crate::store::TableKind;
use crate::writer::{IndexEntry, OpOutcome, ResourceIndex};
use crate::{Error, Result};

/// Decisions of staged batches that are not in the index yet.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    /// Changes whenever a staged batch fails; batches decided under an older epoch fail.
    pub(crate) epoch: u64,
    /// (type, id) -> (entry, seq of the batch that decided it).
    pub(crate) entries: HashMap<(String, String), (IndexEntry, i64)>,
    /// Set when a commit failed: writes stop (fail closed) until a restart replays it.
    pub(crate) stopped: Option<String>,
}

/// A decided, journaled and flattened group commit, waiting for its Delta commits.
pub(crate) struct Staged {
    /// Journal sequence (`None` when the batch wrote nothing new).
    pub(crate) seq: Option<i64>,
    /// Overlay epoch the batch was decided under.
    pub(crate) epoch: u64,
    pub(crate) prepared: Vec<PreparedType>,
    pub(crate) pending: HashMap<(String, String), IndexEntry>,
    pub(crate) replies: Vec<oneshot::Sender<Result<Vec<OpOutcome>>>>,
    pub(crate) answers: Vec<Vec<OpOutcome>>,
}

/// Table maintenance that must commit between group commits (see `compact.rs`).
pub(crate) enum Maintenance {
    /// Commit a compaction round unless a group commit rewrote one of its inputs
    /// (`Ok(None)`: dropped).
    Compact(Round, oneshot::Sender<Result<Option<DeltaTable>>>),
    /// Vacuum a table: delete files no version within `retention` references.
    Vacuum(TableKind, String, chrono::Duration, oneshot::Sender<Result<usize>>),
}

/// Shared state of the two stages.
pub(crate) struct Committer {
    pub(crate) applier: Arc<Applier>,
    pub(crate) journal: Journal,
    pub(crate) index: Arc<RwLock<ResourceIndex>>,
    pub(crate) overlay: Arc<Mutex<Overlay>>,
}

impl Committer {
    /// Commits staged batches in arrival order until the channel closes; maintenance
    /// commits run between them.
    pub(crate) async fn run(self, mut rx: mpsc::Receiver<Staged>, mut maintenance: mpsc::Receiver<Maintenance>) {
        let mut maintenance_open = true;
        loop {
            tokio::select! {
                biased;
                st = rx.recv() => match st {
                    Some(st) => self.commit(st).await,
                    None => break,
                },
                m = maintenance.recv(), if maintenance_open => match m {
                    Some(m) => self.maintain(m).await,
                    None => maintenance_open = false,
                },
            }
        }
    }

    async fn maintain(&self, m: Maintenance) {
        match m {
            Maintenance::Compact(round, reply) => {
                let _ = reply.send(self.commit_round(round).await);
            }
            Maintenance::Vacuum(kind, rt, retention, reply) => {
                let _ = reply.send(self.vacuum(kind, &rt, retention).await);
            }
        }
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

    async fn commit(&self, st: Staged) {
        let stale = self.overlay.lock().expect("overlay lock").epoch != st.epoch;
        let mut owners: HashMap<(String, String), Option<String>> = HashMap::new();
        let result = match (stale, st.seq) {
            (true, _) => {
                Err(Error::CommitFailed("an earlier group commit failed; nothing of this one was stored".into()))
            }
            (false, Some(seq)) => {
                let mut prepared = st.prepared;
                // Batches commit in order and the index is updated after each, so it holds
                // the owner of every current row this batch replaces.
                {
                    let idx = self.index.read().expect("index lock");
                    for p in &mut prepared {
                        let rt = p.resource_type().to_string();
                        let old: Option<Vec<Option<String>>> = p
                            .ids()
                            .iter()
                            .filter_map(|id| idx.get(&rt, id))
                            .filter(|e| !e.deleted)
                            .map(|e| match e.owner {
                                crate::writer::OWNER_UNKNOWN => None,
                                k => Some(idx.owner(k).map(str::to_string)),
                            })
                            .collect();
                        p.old_owners = old;
                    }
                }
                owners = prepared
                    .iter()
                    .flat_map(|p| {
                        p.new_owners.iter().map(|(id, o)| ((p.resource_type().to_string(), id.clone()), o.clone()))
                    })
                    .collect();
                self.applier.commit(seq, prepared).await
            }
            (false, None) => Ok(()),
        };
        // A batch that failed part-way keeps its journal entry: the next start-up replays it
        // into the tables that lack it, so the tables never keep half a group commit. Every
        // other entry (committed, or refused before touching a table) goes.
        let keep_entry = result.is_err() && !stale;
        if let Some(seq) = st.seq.filter(|_| !keep_entry)
            && let Err(e) = self.journal.remove(seq).await
        {
            // Committed tables carry the seq as a txn: a leftover entry is skipped on replay.
            tracing::warn!(seq, error = %e, "could not remove a journal entry");
        }
        match result {
            Ok(()) => {
                {
                    let mut idx = self.index.write().expect("index lock");
                    let mut overlay = self.overlay.lock().expect("overlay lock");
                    for ((rt, id), mut e) in st.pending {
                        if let Some(o) = owners.get(&(rt.clone(), id.clone())) {
                            e.owner = idx.intern_owner(o.as_deref());
                        }
                        idx.set(&rt, &id, e);
                        let key = (rt, id);
                        if overlay.entries.get(&key).is_some_and(|(_, s)| Some(*s) == st.seq) {
                            overlay.entries.remove(&key);
                        }
                    }
                }
                if st.seq.is_some() {
                    self.applier.stats.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.applier.stats.batch_ops.observe(st.answers.iter().map(|a| a.len() as u64).sum());
                }
                for (reply, out) in st.replies.into_iter().zip(st.answers) {
                    let _ = reply.send(Ok(out));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed");
                if !stale {
                    let mut overlay = self.overlay.lock().expect("overlay lock");
                    overlay.epoch += 1;
                    overlay.entries.clear();
                    let why = format!("group commit {:?} failed: {e}", st.seq);
                    let _ = self.applier.stats.stopped.set(why.clone());
                    overlay.stopped = Some(why);
                    tracing::error!("writes stopped; restart fhirlake to replay the journal and resume");
                }
                for reply in st.replies {
                    let _ = reply.send(Err(Error::CommitFailed(e.to_string())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::VersionRecord;
    use crate::store::StorageRoot;
    use fhirlake_schemas::{Model, ShapeOptions};

    fn record(id: &str) -> VersionRecord {
        VersionRecord {
            resource_type: "Patient".into(),
            id: id.into(),
            version: 1,
            last_updated_us: 1,
            deleted: false,
            hash: 1,
            raw: Some(format!(r#"{{"resourceType":"Patient","id":"{id}"}}"#).into()),
        }
    }

    fn entry() -> IndexEntry {
        IndexEntry { version: 1, deleted: false, hash: 1, last_updated_us: 1, owner: crate::writer::OWNER_UNKNOWN }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_fails_the_batches_staged_on_top_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        // A file where the tables' folder should be: creating any table fails.
        std::fs::write(dir.path().join("resources"), b"not a folder").unwrap();
        let applier = Arc::new(Applier::new(root.clone(), ShapeOptions::default(), Model::r4().unwrap()));
        let overlay = Arc::new(Mutex::new(Overlay::default()));
        let index = Arc::new(RwLock::new(ResourceIndex::default()));
        let journal = Journal::new(root);
        journal.append(1, &[record("a")]).await.unwrap();
        journal.append(2, &[record("b")]).await.unwrap();
        let committer = Committer {
            applier: applier.clone(),
            journal: journal.clone(),
            index: index.clone(),
            overlay: overlay.clone(),
        };
        let key = ("Patient".to_string(), "a".to_string());
        overlay.lock().unwrap().entries.insert(key.clone(), (entry(), 1));
        overlay.lock().unwrap().entries.insert(("Patient".into(), "b".into()), (entry(), 2));

        let mut staged = Vec::new();
        for (seq, id) in [(1, "a"), (2, "b")] {
            let prepared = applier.prepare(&[record(id)], vec![None], None).await.unwrap();
            let (tx, rx) = oneshot::channel();
            let pending = HashMap::from([(("Patient".to_string(), id.to_string()), entry())]);
            staged.push((
                Staged { seq: Some(seq), epoch: 0, prepared, pending, replies: vec![tx], answers: vec![vec![]] },
                rx,
            ));
        }
        let mut replies = Vec::new();
        for (st, rx) in staged {
            committer.commit(st).await;
            replies.push(rx.await.unwrap());
        }
        assert!(matches!(replies[0], Err(Error::CommitFailed(_))), "the failing commit is reported");
        match &replies[1] {
            Err(Error::CommitFailed(m)) => assert!(m.contains("earlier group commit failed"), "{m}"),
            other => panic!("the batch staged on top must fail too: {other:?}"),
        }
        {
            let o = overlay.lock().unwrap();
            assert!(o.stopped.is_some(), "writes stop after a failed commit");
            assert_eq!(o.epoch, 1, "one failure, one new epoch");
            assert!(o.entries.is_empty(), "decisions built on the failed batch are forgotten");
            assert!(index.read().unwrap().get("Patient", "a").is_none());
        }
        let left: Vec<i64> = journal.pending().await.unwrap().into_iter().map(|(seq, _)| seq).collect();
        assert_eq!(left, vec![1], "the failed batch stays in the journal for replay; the refused one does not");
    }
}
