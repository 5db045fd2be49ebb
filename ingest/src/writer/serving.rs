//! The serving store: the FHIR side's system of record, in redb.
//!
//! Owns: `_fhirlake/serving.redb` — every version of every resource (the JSON as served,
//! deletion flag, time, content hash, owning patient), the latest version of each resource
//! (what the in-memory index is loaded from at start-up), a by-time index for type and
//! system history, the commit log (which versions each group commit wrote: what recovery
//! flattens into tables whose Delta `txn` is behind), rows of fhirlake's own append-only
//! tables, and the layout record. One write transaction per group commit, made durable by
//! one fsync (redb `Durability::Immediate`); readers use MVCC snapshots and never block the
//! writer. Must not: decide versions or touch Delta.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::index::{IndexEntry, OWNER_ABSENT, ResourceIndex};
use super::ops::{AppendRow, VersionRecord};
use crate::store::StorageRoot;
use crate::{Error, Result};

/// (type, id, version) → [`encode_version`].
const VERSIONS: TableDefinition<(&str, &str, i64), &[u8]> = TableDefinition::new("versions");
/// (type, id) → [`encode_latest`].
const LATEST: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("latest");
/// (type, last-updated µs, id, version) → ().
const BY_TIME: TableDefinition<(&str, i64, &str, i64), ()> = TableDefinition::new("by_time");
/// Group-commit sequence → the versions it wrote ([`encode_log`]).
const LOG: TableDefinition<i64, &[u8]> = TableDefinition::new("log");
/// (append-only table, sequence, row number) → one JSON object.
const APPENDS: TableDefinition<(&str, i64, u32), &[u8]> = TableDefinition::new("appends");
/// Named records (the layout version).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The serving store's layout version, recorded in it.
pub const LAYOUT_VERSION: u32 = 1;

/// The file of the serving store, relative to the root.
pub const SERVING_PATH: &str = "_fhirlake/serving.redb";

/// One stored version.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    /// Resource type.
    pub resource_type: String,
    /// Resource id.
    pub id: String,
    /// Version id.
    pub version: i64,
    /// Last-updated (µs since the epoch, UTC).
    pub last_updated_us: i64,
    /// True for a delete.
    pub deleted: bool,
    /// The JSON served for this version (`None` for a delete).
    pub raw: Option<String>,
}

/// Which versions to read.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Only this resource.
    pub id: Option<String>,
    /// Only this version.
    pub version: Option<i64>,
    /// Only versions updated at or after this time (µs).
    pub since_us: Option<i64>,
    /// Only the version of each resource that was current at this time (µs).
    pub at_us: Option<i64>,
    /// Only versions updated at or before this time (µs): a stable upper bound for paging.
    pub until_us: Option<i64>,
    /// At most this many rows (after sorting newest first).
    pub limit: Option<usize>,
}

/// Merges per-type history (each newest first) into one list, newest first.
pub fn merge_newest_first(parts: Vec<Vec<HistoryRow>>, limit: Option<usize>) -> Vec<HistoryRow> {
    let mut all: Vec<HistoryRow> = parts.into_iter().flatten().collect();
    all.sort_by(|a, b| b.last_updated_us.cmp(&a.last_updated_us).then(b.version.cmp(&a.version)));
    if let Some(l) = limit {
        all.truncate(l);
    }
    all
}

/// A group commit read back from the log (recovery).
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Its sequence.
    pub seq: i64,
    /// The versions it wrote, in order.
    pub records: Vec<VersionRecord>,
}

/// Maps any redb error into [`Error::Store`].
trait StoreResult<T> {
    fn st(self) -> Result<T>;
}

impl<T, E: Into<redb::Error>> StoreResult<T> for std::result::Result<T, E> {
    fn st(self) -> Result<T> {
        self.map_err(|e| Error::Store(e.into().to_string()))
    }
}

/// The serving store of a storage root.
#[derive(Clone)]
pub struct ServingStore {
    db: Arc<Database>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for ServingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingStore").field("path", &self.path).finish()
    }
}

impl ServingStore {
    /// Opens (or creates) the store of `root`: a file under a local root, memory otherwise.
    /// Returns whether it was created now (an older root, or a new one, has none).
    pub fn open(root: &StorageRoot, cache_bytes: usize) -> Result<(Self, bool)> {
        let mut builder = Database::builder();
        builder.set_cache_size(cache_bytes);
        let (db, path, created) = match root.local_path() {
            Some(local) => {
                let path = local.join(SERVING_PATH);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?;
                }
                let created = !path.exists();
                let db = builder.create(&path).map_err(|e| {
                    Error::Store(format!(
                        "{}: {e}; if the disk is full free space, otherwise restore the file from a backup",
                        path.display()
                    ))
                })?;
                (db, Some(path), created)
            }
            None => (builder.create_with_backend(redb::backends::InMemoryBackend::new()).st()?, None, true),
        };
        let store = Self { db: Arc::new(db), path };
        // Every table exists from the first commit on, so readers can open them.
        let txn = store.db.begin_write().st()?;
        {
            txn.open_table(VERSIONS).st()?;
            txn.open_table(LATEST).st()?;
            txn.open_table(BY_TIME).st()?;
            txn.open_table(LOG).st()?;
            txn.open_table(APPENDS).st()?;
            txn.open_table(META).st()?;
        }
        txn.commit().st()?;
        Ok((store, created))
    }

    /// Stores one group commit: its versions (with their owners), its log entry and its
    /// append-only rows, durably (one fsync) before returning.
    pub fn commit(
        &self,
        seq: i64,
        records: &[VersionRecord],
        owners: &[Option<String>],
        appends: &[AppendRow],
    ) -> Result<()> {
        let txn = self.db.begin_write().st()?;
        {
            let mut versions = txn.open_table(VERSIONS).st()?;
            let mut latest = txn.open_table(LATEST).st()?;
            let mut by_time = txn.open_table(BY_TIME).st()?;
            let mut log = txn.open_table(LOG).st()?;
            let mut buf = Vec::new();
            for (r, owner) in records.iter().zip(owners) {
                encode_version(r, owner.as_deref(), &mut buf);
                versions.insert((r.resource_type.as_str(), r.id.as_str(), r.version), buf.as_slice()).st()?;
                encode_latest(r, owner.as_deref(), &mut buf);
                latest.insert((r.resource_type.as_str(), r.id.as_str()), buf.as_slice()).st()?;
                by_time.insert((r.resource_type.as_str(), r.last_updated_us, r.id.as_str(), r.version), ()).st()?;
            }
            if !records.is_empty() {
                encode_log(records, &mut buf);
                log.insert(seq, buf.as_slice()).st()?;
            }
            if !appends.is_empty() {
                let mut rows = txn.open_table(APPENDS).st()?;
                for (n, a) in appends.iter().enumerate() {
                    rows.insert((a.table.as_str(), seq, n as u32), a.json.as_slice()).st()?;
                }
            }
        }
        txn.commit().st()
    }

    /// Stores versions read from the history tables of a root written before the serving
    /// store existed (upgrade): no log entry (the tables hold them already), one commit.
    pub fn load_versions(&self, rows: &[(VersionRecord, Option<String>)]) -> Result<()> {
        let mut txn = self.db.begin_write().st()?;
        // Durable with the layout record that ends the upgrade.
        txn.set_durability(Durability::None).st()?;
        {
            let mut versions = txn.open_table(VERSIONS).st()?;
            let mut latest = txn.open_table(LATEST).st()?;
            let mut by_time = txn.open_table(BY_TIME).st()?;
            let mut buf = Vec::new();
            for (r, owner) in rows {
                encode_version(r, owner.as_deref(), &mut buf);
                versions.insert((r.resource_type.as_str(), r.id.as_str(), r.version), buf.as_slice()).st()?;
                let newer = match latest.get((r.resource_type.as_str(), r.id.as_str())).st()? {
                    Some(v) => decode_latest(v.value())?.0.version < r.version,
                    None => true,
                };
                if newer {
                    encode_latest(r, owner.as_deref(), &mut buf);
                    latest.insert((r.resource_type.as_str(), r.id.as_str()), buf.as_slice()).st()?;
                }
                by_time.insert((r.resource_type.as_str(), r.last_updated_us, r.id.as_str(), r.version), ()).st()?;
            }
        }
        txn.commit().st()
    }

    /// The layout version recorded in the store (`None`: an upgrade has not finished).
    pub fn layout_version(&self) -> Result<Option<u32>> {
        let txn = self.db.begin_read().st()?;
        let meta = txn.open_table(META).st()?;
        Ok(meta.get("layout").st()?.and_then(|v| v.value().try_into().ok().map(u32::from_le_bytes)))
    }

    /// Records the layout version, durably.
    pub fn set_layout_version(&self, version: u32) -> Result<()> {
        let txn = self.db.begin_write().st()?;
        txn.open_table(META).st()?.insert("layout", version.to_le_bytes().as_slice()).st()?;
        txn.commit().st()
    }

    /// One version of `rt/id`.
    pub fn version(&self, rt: &str, id: &str, version: i64) -> Result<Option<HistoryRow>> {
        let txn = self.db.begin_read().st()?;
        let t = txn.open_table(VERSIONS).st()?;
        match t.get((rt, id, version)).st()? {
            Some(v) => Ok(Some(decode_version(rt, id, version, v.value())?.0)),
            None => Ok(None),
        }
    }

    /// Versions of `rt` that `q` selects, newest first.
    pub fn history(&self, rt: &str, q: &HistoryQuery) -> Result<Vec<HistoryRow>> {
        let txn = self.db.begin_read().st()?;
        let versions = txn.open_table(VERSIONS).st()?;
        let upper = q.until_us.unwrap_or(i64::MAX).min(q.at_us.unwrap_or(i64::MAX));
        let lower = q.since_us.unwrap_or(i64::MIN);
        let limit = if q.at_us.is_none() { q.limit.unwrap_or(usize::MAX) } else { usize::MAX };
        let mut rows = Vec::new();
        if let Some(id) = &q.id {
            if let Some(v) = q.version {
                rows.extend(
                    self.version(rt, id, v)?.filter(|r| r.last_updated_us >= lower && r.last_updated_us <= upper),
                );
            } else {
                for entry in versions.range((rt, id.as_str(), i64::MIN)..=(rt, id.as_str(), i64::MAX)).st()?.rev() {
                    let (k, v) = entry.st()?;
                    let row = decode_version(rt, id, k.value().2, v.value())?.0;
                    if row.last_updated_us > upper {
                        continue;
                    }
                    if row.last_updated_us < lower || rows.len() >= limit {
                        break;
                    }
                    rows.push(row);
                }
            }
        } else {
            let by_time = txn.open_table(BY_TIME).st()?;
            for entry in by_time.range((rt, lower, "", i64::MIN)..=(rt, upper, "\u{10FFFF}", i64::MAX)).st()?.rev() {
                if rows.len() >= limit {
                    break;
                }
                let (k, _) = entry.st()?;
                let (_, _, id, version) = k.value();
                if q.version.is_some_and(|v| v != version) {
                    continue;
                }
                if let Some(v) = versions.get((rt, id, version)).st()? {
                    rows.push(decode_version(rt, id, version, v.value())?.0);
                }
            }
        }
        if q.at_us.is_some() {
            // Keep the newest version (at or before `at`) of each resource.
            let mut seen = HashSet::new();
            rows.retain(|r| seen.insert(r.id.clone()));
            rows.retain(|r| !r.deleted);
            if let Some(limit) = q.limit {
                rows.truncate(limit);
            }
        }
        Ok(rows)
    }

    /// Loads the latest version of every resource into `index`: every entry is taken as
    /// flushed (recovery flushes the log before the index is used).
    pub fn load_index(&self, index: &mut ResourceIndex) -> Result<()> {
        let txn = self.db.begin_read().st()?;
        let latest = txn.open_table(LATEST).st()?;
        for entry in latest.iter().st()? {
            let (k, v) = entry.st()?;
            let (rt, id) = k.value();
            let (mut e, owner) = decode_latest(v.value())?;
            e.owner = index.intern_owner(owner);
            e.flushed_owner = if e.deleted { OWNER_ABSENT } else { e.owner };
            index.set(rt, id, e);
        }
        Ok(())
    }

    /// The newest group-commit sequence in the log (0 when empty).
    pub fn last_seq(&self) -> Result<i64> {
        let txn = self.db.begin_read().st()?;
        let log = txn.open_table(LOG).st()?;
        let last = log.last().st()?.map_or(0, |(k, _)| k.value());
        let appends = txn.open_table(APPENDS).st()?;
        let mut newest = last;
        for entry in appends.iter().st()? {
            newest = newest.max(entry.st()?.0.value().1);
        }
        Ok(newest)
    }

    /// Group commits after `after`, oldest first, with their versions read back.
    pub fn log_after(&self, after: i64) -> Result<Vec<LogEntry>> {
        let txn = self.db.begin_read().st()?;
        let log = txn.open_table(LOG).st()?;
        let versions = txn.open_table(VERSIONS).st()?;
        let mut out = Vec::new();
        for entry in log.range(after.saturating_add(1)..).st()? {
            let (k, v) = entry.st()?;
            let mut records = Vec::new();
            for (rt, id, version) in decode_log(v.value())? {
                let Some(stored) = versions.get((rt.as_str(), id.as_str(), version)).st()? else {
                    return Err(Error::Store(format!("the log names {rt}/{id} version {version}, which is missing")));
                };
                let (row, _, hash) = decode_version(&rt, &id, version, stored.value())?;
                records.push(VersionRecord {
                    resource_type: rt,
                    id,
                    version,
                    last_updated_us: row.last_updated_us,
                    deleted: row.deleted,
                    hash,
                    raw: row.raw.map(Arc::from),
                });
            }
            out.push(LogEntry { seq: k.value(), records });
        }
        Ok(out)
    }

    /// Rows of the append-only table `table` stored after sequence `after`, oldest first.
    pub fn appends_after(&self, table: &str, after: i64) -> Result<Vec<(i64, Vec<u8>)>> {
        let txn = self.db.begin_read().st()?;
        let t = txn.open_table(APPENDS).st()?;
        let mut out = Vec::new();
        for entry in t.range((table, after.saturating_add(1), 0)..=(table, i64::MAX, u32::MAX)).st()? {
            let (k, v) = entry.st()?;
            out.push((k.value().1, v.value().to_vec()));
        }
        Ok(out)
    }

    /// Drops the log entries and append-only rows up to `upto`: every table they touched
    /// holds them in Delta.
    pub fn trim(&self, upto: i64) -> Result<()> {
        let mut txn = self.db.begin_write().st()?;
        // Made durable by the next group commit; a trim lost to a crash is redone.
        txn.set_durability(Durability::None).st()?;
        {
            let mut log = txn.open_table(LOG).st()?;
            log.retain_in(..=upto, |_, _| false).st()?;
            let mut appends = txn.open_table(APPENDS).st()?;
            appends.retain(|k, _| k.1 > upto).st()?;
        }
        txn.commit().st()
    }

    /// Bytes the store's file takes on disk (0 in memory).
    pub fn disk_bytes(&self) -> u64 {
        self.path.as_ref().and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len())
    }

    /// Compacts the file (needs no other handle to be open); returns the bytes before and
    /// after.
    pub fn compact(self) -> Result<(u64, u64)> {
        let before = self.disk_bytes();
        let path = self.path.clone();
        let mut db = Arc::try_unwrap(self.db)
            .map_err(|_| Error::Store("the serving store is in use; compact it while nothing else holds it".into()))?;
        while db.compact(redb::CompactionMode::default()).map_err(|e| Error::Store(e.to_string()))? {}
        drop(db);
        let after = path.and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len());
        Ok((before, after))
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(Error::Store("a stored record is truncated".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn str(&mut self) -> Result<&'a str> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| Error::Store("a stored string is not UTF-8".into()))
    }
}

const DELETED: u8 = 1;
const HAS_OWNER: u8 = 2;

fn flags(deleted: bool, owner: Option<&str>) -> u8 {
    (if deleted { DELETED } else { 0 }) | (if owner.is_some() { HAS_OWNER } else { 0 })
}

/// flags, time, hash, owner, raw (the rest).
fn encode_version(r: &VersionRecord, owner: Option<&str>, buf: &mut Vec<u8>) {
    buf.clear();
    buf.push(flags(r.deleted, owner));
    buf.extend_from_slice(&r.last_updated_us.to_le_bytes());
    buf.extend_from_slice(&r.hash.to_le_bytes());
    put_str(buf, owner.unwrap_or(""));
    if let Some(raw) = &r.raw {
        buf.extend_from_slice(raw.as_bytes());
    }
}

/// The row, its owner and its hash.
fn decode_version<'a>(rt: &str, id: &str, version: i64, v: &'a [u8]) -> Result<(HistoryRow, Option<&'a str>, u64)> {
    let mut c = Cursor(v);
    let f = c.u8()?;
    let ts = c.i64()?;
    let hash = c.u64()?;
    let owner = c.str()?;
    let deleted = f & DELETED != 0;
    let raw = if deleted {
        None
    } else {
        Some(std::str::from_utf8(c.0).map_err(|_| Error::Store("stored JSON is not UTF-8".into()))?.to_string())
    };
    let row =
        HistoryRow { resource_type: rt.to_string(), id: id.to_string(), version, last_updated_us: ts, deleted, raw };
    Ok((row, (f & HAS_OWNER != 0).then_some(owner), hash))
}

/// flags, version, time, hash, owner.
fn encode_latest(r: &VersionRecord, owner: Option<&str>, buf: &mut Vec<u8>) {
    buf.clear();
    buf.push(flags(r.deleted, owner));
    buf.extend_from_slice(&r.version.to_le_bytes());
    buf.extend_from_slice(&r.last_updated_us.to_le_bytes());
    buf.extend_from_slice(&r.hash.to_le_bytes());
    put_str(buf, owner.unwrap_or(""));
}

fn decode_latest(v: &[u8]) -> Result<(IndexEntry, Option<&str>)> {
    let mut c = Cursor(v);
    let f = c.u8()?;
    let version = c.i64()?;
    let last_updated_us = c.i64()?;
    let hash = c.u64()?;
    let owner = c.str()?;
    let e =
        IndexEntry { version, deleted: f & DELETED != 0, hash, last_updated_us, owner: 0, flushed_owner: OWNER_ABSENT };
    Ok((e, (f & HAS_OWNER != 0).then_some(owner)))
}

fn encode_log(records: &[VersionRecord], buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        put_str(buf, &r.resource_type);
        put_str(buf, &r.id);
        buf.extend_from_slice(&r.version.to_le_bytes());
    }
}

fn decode_log(v: &[u8]) -> Result<Vec<(String, String, i64)>> {
    let mut c = Cursor(v);
    let n = u32::from_le_bytes(c.take(4)?.try_into().expect("4 bytes"));
    (0..n).map(|_| Ok((c.str()?.to_string(), c.str()?.to_string(), c.i64()?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(rt: &str, id: &str, version: i64, ts: i64, deleted: bool) -> VersionRecord {
        VersionRecord {
            resource_type: rt.into(),
            id: id.into(),
            version,
            last_updated_us: ts,
            deleted,
            hash: 42,
            raw: (!deleted).then(|| Arc::from(format!(r#"{{"resourceType":"{rt}","id":"{id}","v":{version}}}"#))),
        }
    }

    #[test]
    fn versions_history_log_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let (store, created) = ServingStore::open(&root, 1 << 20).unwrap();
        assert!(created);
        store
            .commit(
                10,
                &[rec("Patient", "a", 1, 100, false), rec("Patient", "b", 1, 100, false)],
                &[Some("a".into()), None],
                &[AppendRow { table: "audit".into(), json: br#"{"x":1}"#.to_vec() }],
            )
            .unwrap();
        store.commit(11, &[rec("Patient", "a", 2, 200, false)], &[Some("a".into())], &[]).unwrap();
        store.commit(12, &[rec("Patient", "b", 2, 300, true)], &[None], &[]).unwrap();

        let v1 = store.version("Patient", "a", 1).unwrap().unwrap();
        assert!(v1.raw.unwrap().contains(r#""v":1"#));
        assert!(store.version("Patient", "a", 3).unwrap().is_none());
        let inst = store.history("Patient", &HistoryQuery { id: Some("a".into()), ..Default::default() }).unwrap();
        assert_eq!(inst.iter().map(|r| r.version).collect::<Vec<_>>(), vec![2, 1]);
        let ty = store.history("Patient", &HistoryQuery::default()).unwrap();
        assert_eq!(
            ty.iter().map(|r| (r.id.as_str(), r.version)).collect::<Vec<_>>(),
            vec![("b", 2), ("a", 2), ("b", 1), ("a", 1)]
        );
        let since = store.history("Patient", &HistoryQuery { since_us: Some(200), ..Default::default() }).unwrap();
        assert_eq!(since.len(), 2);
        let at = store.history("Patient", &HistoryQuery { at_us: Some(250), ..Default::default() }).unwrap();
        assert_eq!(at.iter().map(|r| (r.id.as_str(), r.version)).collect::<Vec<_>>(), vec![("a", 2), ("b", 1)]);
        let limited = store.history("Patient", &HistoryQuery { limit: Some(1), ..Default::default() }).unwrap();
        assert_eq!(limited.len(), 1);

        let log = store.log_after(10).unwrap();
        assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![11, 12]);
        assert!(log[1].records[0].deleted);
        assert_eq!(store.appends_after("audit", 0).unwrap().len(), 1);
        assert_eq!(store.last_seq().unwrap(), 12);
        store.trim(11).unwrap();
        assert_eq!(store.log_after(0).unwrap().len(), 1);
        assert!(store.appends_after("audit", 0).unwrap().is_empty());
        drop(store);

        let (store, created) = ServingStore::open(&root, 1 << 20).unwrap();
        assert!(!created);
        let mut index = ResourceIndex::default();
        store.load_index(&mut index).unwrap();
        let a = index.get("Patient", "a").unwrap();
        assert_eq!((a.version, a.deleted), (2, false));
        assert_eq!(index.owner(a.owner), Some("a"));
        assert!(index.get("Patient", "b").unwrap().deleted);
    }
}
