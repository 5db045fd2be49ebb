//! The write-ahead journal of storage roots written before the serving store.
//!
//! Owns: reading the `journal/<seq>.ndjson` entries such a root may hold after a crash
//! (the upgrade replays them into the tables whose Delta `txn` is behind, then removes
//! them), and writing one (tests of that upgrade). The serving store's log replaced it.
//! Must not: decide versions (that is [`crate::writer`]).

use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};

use crate::store::StorageRoot;
use crate::{Error, Result};

/// The Delta `txn` application id under which journal sequence numbers are recorded.
pub use fhirlake_schemas::layout::JOURNAL_APP_ID;

pub use crate::writer::VersionRecord;

/// The journal of a storage root.
#[derive(Debug, Clone)]
pub struct Journal {
    root: StorageRoot,
}

impl Journal {
    /// The journal under `root`.
    pub fn new(root: StorageRoot) -> Self {
        Self { root }
    }

    fn entry_path(&self, seq: i64) -> object_store::path::Path {
        self.root.path(&fhirlake_schemas::layout::journal_entry_path(seq))
    }

    /// Durably writes entry `seq`.
    pub async fn append(&self, seq: i64, records: &[VersionRecord]) -> Result<()> {
        let mut body = Vec::with_capacity(records.iter().map(|r| r.raw.as_ref().map_or(64, |s| s.len() + 128)).sum());
        for r in records {
            serde_json::to_writer(&mut body, r).map_err(|e| Error::Journal(e.to_string()))?;
            body.push(b'\n');
        }
        self.root.object_store().put(&self.entry_path(seq), PutPayload::from(body)).await?;
        Ok(())
    }

    /// Removes entry `seq` once it is applied everywhere.
    pub async fn remove(&self, seq: i64) -> Result<()> {
        match self.root.object_store().delete(&self.entry_path(seq)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Entries present (left by a crash), oldest first.
    pub async fn pending(&self) -> Result<Vec<(i64, Vec<VersionRecord>)>> {
        let prefix = self.root.path(fhirlake_schemas::layout::JOURNAL_DIR);
        let metas: Vec<_> = self.root.object_store().list(Some(&prefix)).try_collect().await?;
        let mut seqs: Vec<(i64, object_store::path::Path)> = metas
            .into_iter()
            .filter_map(|m| {
                let name = fhirlake_schemas::layout::journal_entry_seq(m.location.filename()?)?;
                Some((name, m.location))
            })
            .collect();
        seqs.sort_by_key(|(s, _)| *s);
        let mut out = Vec::new();
        for (seq, path) in seqs {
            let bytes = self.root.object_store().get(&path).await?.bytes().await?;
            let mut records = Vec::new();
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                match serde_json::from_slice::<VersionRecord>(line) {
                    Ok(r) => records.push(r),
                    // A torn last line means the entry was never acknowledged.
                    Err(e) => {
                        tracing::warn!(seq, error = %e, "journal entry is incomplete; it was never acknowledged, dropping it");
                        records.clear();
                        break;
                    }
                }
            }
            out.push((seq, records));
        }
        Ok(out)
    }
}
