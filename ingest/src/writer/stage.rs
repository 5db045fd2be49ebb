//! The writer task: one group commit at a time, acknowledged at one fsync.
//!
//! Owns: taking everything queued (up to a batch limit, after an optional short linger),
//! refusing it when the unflushed buffer is over its hard cap (backpressure), hashing and
//! deciding each operation against the index ([`super::decide`]), building the served
//! JSON and each version's owning patient (rayon), storing the group commit in the
//! serving store (durable when it returns), updating the index, answering the callers,
//! and handing the group commit to the flusher. Nothing here touches Delta. Must not:
//! validate resources.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

use super::WriterOptions;
use super::decide::{Build, build_served, decide, hash_ops};
use super::flush::{Committed, FlushMessage};
use super::index::{IndexEntry, OWNER_ABSENT, ResourceIndex};
use super::ops::{AppendRow, OpOutcome, Request, VersionRecord};
use super::serving::ServingStore;
use super::stats::WriterStats;
use super::view::{Buffered, TableSet};
use crate::compartment::PatientCompartment;
use crate::{Clock, Error};

pub(crate) struct Core {
    pub(crate) store: ServingStore,
    pub(crate) tables: Arc<TableSet>,
    pub(crate) compartment: Arc<PatientCompartment>,
    pub(crate) flush: mpsc::UnboundedSender<FlushMessage>,
    pub(crate) stats: Arc<WriterStats>,
    pub(crate) options: WriterOptions,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) last_seq: i64,
    pub(crate) last_ts: i64,
}

impl Core {
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Request>, index: Arc<RwLock<ResourceIndex>>) {
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
            self.group_commit(reqs, &index).await;
        }
        // Dropping `self.flush` lets the flusher drain and stop.
    }

    fn next_ts(&mut self) -> i64 {
        let now = self.clock.now_us().max(self.last_ts + 1);
        self.last_ts = now;
        now
    }

    /// One group commit: decide, serialise, store (one fsync), index, answer, hand over.
    async fn group_commit(&mut self, reqs: Vec<Request>, index: &Arc<RwLock<ResourceIndex>>) {
        let started = std::time::Instant::now();
        let buffered = self.stats.buffered_bytes.load(Relaxed);
        if buffered >= self.options.hard_buffer_bytes {
            let message = format!(
                "{} MiB of acknowledged writes are waiting to be flushed to Delta (cap {} MiB){}; retry shortly",
                buffered >> 20,
                self.options.hard_buffer_bytes >> 20,
                self.stats.flush_error().map(|e| format!(": flushes are failing: {e}")).unwrap_or_default()
            );
            for req in reqs {
                let _ = req.reply.send(Err(Error::Backpressure(message.clone())));
            }
            return;
        }
        let (mut reqs, hashes) = match tokio::task::spawn_blocking(move || {
            let h = hash_ops(&reqs);
            (reqs, h)
        })
        .await
        {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "hashing failed");
                return;
            }
        };
        // Decide every op against the index and the versions decided earlier in this batch.
        let mut pending: HashMap<(String, String), IndexEntry> = HashMap::new();
        let mut records: Vec<VersionRecord> = Vec::new();
        let mut appends: Vec<AppendRow> = Vec::new();
        let mut answers: Vec<Vec<OpOutcome>> = Vec::with_capacity(reqs.len());
        let mut builds: Vec<(usize, Build)> = Vec::new();
        let ts = self.next_ts();
        {
            let idx = index.read().expect("index lock");
            for (r, req) in reqs.iter_mut().enumerate() {
                let d = decide(&req.ops, &hashes[r], &idx, &pending, ts);
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
                pending.extend(d.pending);
                appends.append(&mut req.appends);
                answers.push(d.out);
            }
        }
        // The ops are decided: let go of their resources so the builds own them.
        for req in reqs.iter_mut() {
            req.ops.clear();
        }
        let replies: Vec<_> = reqs.into_iter().map(|r| r.reply).collect();
        let compartment = self.compartment.clone();
        let kinds: Vec<(String, String)> = records.iter().map(|r| (r.resource_type.clone(), r.id.clone())).collect();
        let built = tokio::task::spawn_blocking(move || {
            let built = build_served(builds);
            // Owning patients of the new versions (deletes have none).
            let owners: Vec<(Option<usize>, Option<String>)> = built
                .iter()
                .map(|b| {
                    let owner = b.record.and_then(|i| compartment.members(&kinds[i].0, &kinds[i].1, &b.served).0);
                    (b.record, owner)
                })
                .collect();
            (built, owners)
        })
        .await;
        let (built, built_owners) = match built {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "serialising failed");
                return;
            }
        };
        let mut owners: Vec<Option<String>> = vec![None; records.len()];
        for (record, owner) in built_owners {
            if let Some(i) = record {
                owners[i] = owner;
            }
        }
        for b in built {
            match &mut answers[b.request][b.out] {
                OpOutcome::Written { raw: slot, .. } | OpOutcome::Unchanged { raw: slot, .. } => *slot = b.raw.clone(),
                _ => {}
            }
            if let Some(i) = b.record {
                records[i].raw = Some(b.raw);
            }
        }
        if records.is_empty() && appends.is_empty() {
            for (reply, out) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(out));
            }
            return;
        }
        let seq = self.clock.now_us().max(self.last_seq + 1);
        self.last_seq = seq;
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let r = store.commit(seq, &records, &owners, &appends);
            (r, records, owners, appends)
        })
        .await;
        let (records, owners, appends) = match stored {
            Ok((Ok(()), records, owners, appends)) => (records, owners, appends),
            Ok((Err(e), ..)) => {
                tracing::error!(error = %e, "group commit failed; nothing of it was stored");
                for reply in replies {
                    let _ = reply.send(Err(Error::CommitFailed(e.to_string())));
                }
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit task failed; nothing of it was acknowledged");
                for reply in replies {
                    let _ = reply.send(Err(Error::CommitFailed(e.to_string())));
                }
                return;
            }
        };
        // Durable: index, answer, then hand the group commit to the flusher.
        {
            let mut idx = index.write().expect("index lock");
            // Last version of an id first: its entry is the one decided.
            for (r, owner) in records.iter().zip(&owners).rev() {
                let key = (r.resource_type.clone(), r.id.clone());
                let Some(mut e) = pending.remove(&key) else { continue };
                e.owner = idx.intern_owner(owner.as_deref());
                e.flushed_owner = idx.get(&r.resource_type, &r.id).map_or(OWNER_ABSENT, |old| old.flushed_owner);
                idx.set(&r.resource_type, &r.id, e);
            }
        }
        // Readers see it from now on (before anyone is told it is written).
        let buffered: Vec<Buffered> =
            records.iter().zip(&owners).map(|(r, o)| Buffered { seq, record: r.clone(), owner: o.clone() }).collect();
        self.tables.buffer(buffered);
        let bytes = Committed::estimate(&records, &appends);
        self.stats.acked_seq.store(seq, Relaxed);
        self.stats.batches.fetch_add(1, Relaxed);
        self.stats.batch_ops.observe(answers.iter().map(|a| a.len() as u64).sum());
        self.stats.buffered_rows.fetch_add(records.len() as u64, Relaxed);
        self.stats.buffered_bytes.fetch_add(bytes, Relaxed);
        for (reply, out) in replies.into_iter().zip(answers) {
            let _ = reply.send(Ok(out));
        }
        let committed = Committed { seq, records, appends, bytes, at: std::time::Instant::now() };
        if self.flush.send(FlushMessage::Committed(committed)).is_err() {
            tracing::error!(seq, "the flusher stopped; the group commit is flushed from the store at the next start");
        }
        tracing::debug!(seq, elapsed = ?started.elapsed(), "group commit acknowledged");
    }
}
