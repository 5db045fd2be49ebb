//! Start-up: open the serving store, upgrade an older root, flush what Delta lacks.
//!
//! Owns: what happens between taking the lease and accepting writes. (1) A root written
//! before the serving store existed (no layout record in the store) is upgraded: its
//! journal entries are replayed into the tables whose `txn` is behind, then every version
//! is copied from the history tables into the store, with progress in the log, and the
//! layout version is recorded. (2) The index is loaded from the store's latest-version
//! table (no history scan). (3) Every table whose Delta `txn` is behind the store's log
//! gets the missing group commits flattened and committed, so the tables hold every
//! acknowledged write before the first new one. Must not: accept writes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use fhirlake_schemas::Model;

use super::WriterOptions;
use super::delta::{Applier, read_versions};
use super::index::ResourceIndex;
use super::ops::VersionRecord;
use super::serving::{LAYOUT_VERSION, ServingStore};
use crate::Result;
use crate::journal::Journal;
use crate::store::{StorageRoot, TableKind};

pub(crate) struct Recovered {
    pub(crate) store: ServingStore,
    pub(crate) applier: Arc<Applier>,
    pub(crate) index: ResourceIndex,
    /// The newest group-commit sequence (store log or tables' `txn`).
    pub(crate) last_seq: i64,
}

pub(crate) async fn recover(root: &StorageRoot, options: &WriterOptions) -> Result<Recovered> {
    let started = std::time::Instant::now();
    let applier = Arc::new(Applier::new(root.clone(), options.shape, Model::r4()?));
    let (store, _) = ServingStore::open(root, options.store_cache_bytes)?;
    let mut last_seq = 0;
    for kind in [TableKind::History, TableKind::Current, TableKind::System] {
        for rt in root.existing_tables(kind).await? {
            if kind != TableKind::System && !Model::r4()?.is_resource_type(&rt) {
                continue;
            }
            if let Some(t) = root.open_table(kind, &rt).await? {
                applier.tables.put(kind, &rt, t);
            }
        }
    }
    if store.layout_version()?.is_none() {
        last_seq = upgrade(root, &applier, &store).await?;
    }
    let mut index = ResourceIndex::default();
    store.load_index(&mut index)?;
    last_seq = last_seq.max(store.last_seq()?);
    last_seq = last_seq.max(flush_behind(&applier, &store, options).await?);
    applier.write_watermark(last_seq).await;
    store.trim(last_seq)?;
    tracing::info!(
        resources = index.len(),
        elapsed = ?started.elapsed(),
        store_bytes = store.disk_bytes(),
        "serving store open"
    );
    Ok(Recovered { store, applier, index, last_seq })
}

/// The `txn` of a table (0 when it has none or does not exist).
async fn txn_of(applier: &Applier, kind: TableKind, name: &str) -> Result<i64> {
    match applier.tables.get(kind, name) {
        Some(t) => Ok(Applier::flushed_seq(&t).await?.unwrap_or(0)),
        None => Ok(0),
    }
}

/// Commits to every table the group commits of the store's log it lacks. Returns the
/// newest sequence any table holds.
async fn flush_behind(applier: &Applier, store: &ServingStore, options: &WriterOptions) -> Result<i64> {
    let mut txns: HashMap<(TableKind, String), i64> = HashMap::new();
    let mut newest = 0;
    for (kind, name, _) in applier.tables.snapshot() {
        if matches!(kind, TableKind::View) {
            continue;
        }
        let t = txn_of(applier, kind, &name).await?;
        newest = newest.max(t);
        txns.insert((kind, name), t);
    }
    // The log holds only group commits after the last complete flush round.
    let entries = store.log_after(0)?;
    // Per type and kind, the versions its table lacks, in log order.
    let mut behind: HashMap<(TableKind, String), (i64, Vec<VersionRecord>)> = HashMap::new();
    for e in &entries {
        for r in &e.records {
            for kind in [TableKind::History, TableKind::Current] {
                let key = (kind, r.resource_type.clone());
                if e.seq > txns.get(&key).copied().unwrap_or(0) {
                    let slot = behind.entry(key).or_insert((0, Vec::new()));
                    slot.0 = slot.0.max(e.seq);
                    slot.1.push(r.clone());
                }
            }
        }
    }
    let mut committed = Vec::new();
    for ((kind, rt), (seq, records)) in behind {
        tracing::info!(
            table = kind.table_path(&rt),
            versions = records.len(),
            seq,
            "flushing group commits the table lacks"
        );
        let prepared = applier.prepare(records).await?;
        let other = match kind {
            TableKind::History => TableKind::Current,
            _ => TableKind::History,
        };
        let skip: HashSet<(TableKind, String)> = HashSet::from([(other, rt.clone())]);
        for (k, name, r) in applier.commit_tables(seq, prepared, &skip, false).await {
            committed.extend(r?.map(|t| (k, name, t)));
        }
        newest = newest.max(seq);
    }
    for t in &options.append_tables {
        let after = txns.get(&(TableKind::System, t.name.clone())).copied().unwrap_or(0);
        let rows = store.appends_after(&t.name, after)?;
        if let Some(seq) = rows.iter().map(|(s, _)| *s).max() {
            tracing::info!(table = t.name, rows = rows.len(), "flushing rows the table lacks");
            let rows: Vec<Vec<u8>> = rows.into_iter().map(|(_, r)| r).collect();
            committed.push((TableKind::System, t.name.clone(), applier.append_rows(seq, t, &rows).await?));
            newest = newest.max(seq);
        }
    }
    applier.tables.put_all(committed);
    Ok(newest)
}

/// Upgrades a root written before the serving store: replays its journal, copies every
/// version from the history tables into the store, records the layout version. Returns
/// the newest journal sequence replayed.
async fn upgrade(root: &StorageRoot, applier: &Applier, store: &ServingStore) -> Result<i64> {
    let journal = Journal::new(root.clone());
    let mut last_seq = 0;
    for (seq, records) in journal.pending().await? {
        if !records.is_empty() {
            tracing::info!(seq, versions = records.len(), "replaying a journal entry left by an earlier run");
            let prepared = applier.prepare(records).await?;
            let mut committed = Vec::new();
            for (k, name, r) in applier.commit_tables(seq, prepared, &HashSet::new(), true).await {
                committed.extend(r?.map(|t| (k, name, t)));
            }
            applier.tables.put_all(committed);
        }
        journal.remove(seq).await?;
        last_seq = last_seq.max(seq);
    }
    let types: Vec<String> = applier.tables.snapshot_of(TableKind::History).into_keys().collect();
    if !types.is_empty() {
        tracing::info!(
            types = types.len(),
            "upgrading the storage root: building the serving store from the history tables"
        );
    }
    let mut total = 0usize;
    for rt in types {
        let Some(t) = applier.tables.get(TableKind::History, &rt) else { continue };
        let mut rows = 0usize;
        let mut sink = |chunk: Vec<(VersionRecord, Option<String>)>| -> Result<()> {
            rows += chunk.len();
            store.load_versions(&chunk)?;
            if rows % 100_000 < chunk.len() {
                tracing::info!(resource_type = rt, versions = rows, "upgrade in progress");
            }
            Ok(())
        };
        read_versions(&t, &rt, &mut sink).await?;
        tracing::info!(resource_type = rt, versions = rows, "copied into the serving store");
        total += rows;
        last_seq = last_seq.max(Applier::flushed_seq(&t).await?.unwrap_or(0));
    }
    store.set_layout_version(LAYOUT_VERSION)?;
    if total > 0 {
        tracing::info!(versions = total, "storage root upgraded to the serving store");
    }
    Ok(last_seq)
}
