//! The in-memory index of every resource's latest version.
//!
//! Owns: version numbers, deletion flags, content hashes and owning patients of the latest
//! version of each resource, what decisions are made against; loaded from the serving
//! store at start-up. Also the owner of each resource's row in Delta (which may lag
//! behind), which narrows the flush's `replaceWhere`. Must not: do I/O.

use std::collections::HashMap;

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
    /// The owning patient of the latest version (`_patient`), interned: [`OWNER_NONE`]
    /// or a [`ResourceIndex::owner`] key.
    pub owner: u32,
    /// The owner of the resource's row in the Delta current table, which lags behind
    /// until the next flush: [`OWNER_ABSENT`] when Delta has no live row for it,
    /// [`OWNER_UNKNOWN`] when not known. The flush's `replaceWhere` narrows by this owner
    /// (the row being replaced), never by `owner`.
    pub flushed_owner: u32,
}

/// No owning patient (`_patient` is null).
pub const OWNER_NONE: u32 = 0;
/// Not known.
pub const OWNER_UNKNOWN: u32 = u32::MAX;
/// No live row (never flushed, or deleted in Delta).
pub const OWNER_ABSENT: u32 = u32::MAX - 1;

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
            OWNER_NONE | OWNER_UNKNOWN | OWNER_ABSENT => None,
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
        match self.types.get_mut(rt) {
            Some(m) => match m.get_mut(id) {
                Some(slot) => *slot = e,
                None => {
                    m.insert(id.to_string(), e);
                }
            },
            None => {
                self.types.entry(rt.to_string()).or_default().insert(id.to_string(), e);
            }
        }
    }

    /// Records the owner of `rt/id`'s row in Delta after a flush.
    pub(crate) fn set_flushed_owner(&mut self, rt: &str, id: &str, owner: u32) {
        if let Some(e) = self.types.get_mut(rt).and_then(|m| m.get_mut(id)) {
            e.flushed_owner = owner;
        }
    }

    /// Types that have at least one version.
    pub fn types(&self) -> Vec<String> {
        let mut v: Vec<String> = self.types.keys().cloned().collect();
        v.sort();
        v
    }

    /// The newest last-updated time of any resource (µs; 0 when empty).
    pub fn newest_update_us(&self) -> i64 {
        self.types.values().flat_map(|m| m.values().map(|e| e.last_updated_us)).max().unwrap_or(0)
    }

    /// Number of resources (live or deleted) known.
    pub fn len(&self) -> usize {
        self.types.values().map(HashMap::len).sum()
    }

    /// True when no resource is known.
    pub fn is_empty(&self) -> bool {
        self.types.values().all(HashMap::is_empty)
    }

    /// Number of live resources per type.
    pub fn live_counts(&self) -> Vec<(String, usize)> {
        let mut v: Vec<_> =
            self.types.iter().map(|(t, m)| (t.clone(), m.values().filter(|e| !e.deleted).count())).collect();
        v.sort();
        v
    }
}
