//! Deciding a group commit: versions, preconditions, no-op detection, served JSON.
//!
//! Owns: the pure, CPU-side part of a group commit — content hashes (computed in
//! parallel), the decision for each operation against what is known (committed index,
//! staged batches, earlier operations of the batch), and the served JSON with the server's
//! `meta` (built in parallel, in place when possible). Must not: do I/O.

use std::collections::HashMap;
use std::sync::Arc;

use fhirlake_schemas::Json;

use super::index::{IndexEntry, OWNER_NONE, OWNER_UNKNOWN, ResourceIndex};
use super::ops::{Action, OpOutcome, Precondition, Request, VersionRecord, WriteOp};

/// FNV-1a 64 of the resource's JSON without `meta.versionId` / `meta.lastUpdated`.
pub fn content_hash(resource: &Json) -> u64 {
    // Same bytes as the compact serialisation of the resource with those two meta fields
    // removed (and `meta` dropped when nothing else is in it), without cloning the tree.
    let mut text = String::with_capacity(1024);
    match resource.as_object() {
        Some(members) => {
            text.push('{');
            let mut first = true;
            for (k, v) in members {
                let stripped;
                let v = if k == "meta" {
                    let mut m = v.clone();
                    m.remove("versionId");
                    m.remove("lastUpdated");
                    if m.as_object().is_some_and(<[_]>::is_empty) {
                        continue;
                    }
                    stripped = m;
                    &stripped
                } else {
                    v
                };
                if !first {
                    text.push(',');
                }
                first = false;
                fhirlake_schemas::json::write_str(&mut text, k);
                text.push(':');
                v.write_to(&mut text);
            }
            text.push('}');
        }
        None => resource.write_to(&mut text),
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The resource with the server's `meta.versionId` and `meta.lastUpdated`.
pub fn with_server_meta(resource: &Json, version: i64, last_updated_us: i64) -> Json {
    set_server_meta(resource.clone(), version, last_updated_us)
}

/// A FHIR `instant` (RFC 3339, microseconds, `Z`) of epoch microseconds: the form of
/// `meta.lastUpdated` everywhere fhirlake writes or serves it.
pub fn format_instant(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Sets the server's `meta.versionId` and `meta.lastUpdated` (meta right after `id`).
pub fn set_server_meta(mut r: Json, version: i64, last_updated_us: i64) -> Json {
    let ts = format_instant(last_updated_us);
    let mut meta = r.remove("meta").unwrap_or(Json::Object(Vec::new()));
    if meta.as_object().is_none() {
        meta = Json::Object(Vec::new());
    }
    meta.set("versionId", Json::String(version.to_string()));
    meta.set("lastUpdated", Json::String(ts));
    if let Json::Object(m) = &mut r {
        let at = m.iter().position(|(k, _)| k == "id").map_or(m.len().min(1), |i| i + 1);
        m.insert(at, ("meta".to_string(), meta));
    }
    r
}

/// The decisions for one request's ops.
pub(crate) struct Decided {
    pub(crate) out: Vec<OpOutcome>,
    pub(crate) records: Vec<VersionRecord>,
    pub(crate) pending: HashMap<(String, String), IndexEntry>,
    /// Served JSON still to build: (index into `out`, index into `records` for a new
    /// version, the resource, version, last-updated).
    pub(crate) builds: Vec<Build>,
}

pub(crate) struct Build {
    pub(crate) out: usize,
    pub(crate) record: Option<usize>,
    pub(crate) json: Arc<Json>,
    pub(crate) version: i64,
    pub(crate) last_updated_us: i64,
}

/// Decides `ops` against the index plus earlier decisions of the batch (`batch`). `hashes`
/// holds the content hash of each op (0 for deletes). Served JSON is built afterwards, in
/// parallel ([`build_served`]): the `raw` of the outcomes and records is filled in then,
/// and the owners of the pending entries.
pub(crate) fn decide(
    ops: &[WriteOp],
    hashes: &[u64],
    index: &ResourceIndex,
    batch: &HashMap<(String, String), IndexEntry>,
    ts: i64,
) -> Decided {
    let mut d = Decided {
        out: Vec::with_capacity(ops.len()),
        records: Vec::new(),
        pending: HashMap::new(),
        builds: Vec::new(),
    };
    let placeholder: Arc<str> = Arc::from("");
    for (op, &hash) in ops.iter().zip(hashes) {
        let key = (op.resource_type.clone(), op.id.clone());
        let cur =
            d.pending.get(&key).or_else(|| batch.get(&key)).copied().or_else(|| index.get(&op.resource_type, &op.id));
        let live = cur.filter(|c| !c.deleted);
        let holds = match op.precondition {
            Precondition::None => true,
            Precondition::IfMatch(v) => live.map(|c| c.version) == Some(v),
            Precondition::Absent => live.is_none(),
        };
        if !holds {
            d.out.push(OpOutcome::PreconditionFailed { current: live.map(|c| c.version) });
            continue;
        }
        let next_version = cur.map_or(1, |c| c.version + 1);
        match &op.action {
            Action::Put(json) => {
                if let Some(c) = live.filter(|c| c.hash == hash) {
                    d.builds.push(Build {
                        out: d.out.len(),
                        record: None,
                        json: json.clone(),
                        version: c.version,
                        last_updated_us: c.last_updated_us,
                    });
                    d.out.push(OpOutcome::Unchanged {
                        version: c.version,
                        last_updated_us: c.last_updated_us,
                        raw: placeholder.clone(),
                    });
                    continue;
                }
                d.builds.push(Build {
                    out: d.out.len(),
                    record: Some(d.records.len()),
                    json: json.clone(),
                    version: next_version,
                    last_updated_us: ts,
                });
                d.records.push(VersionRecord {
                    resource_type: op.resource_type.clone(),
                    id: op.id.clone(),
                    version: next_version,
                    last_updated_us: ts,
                    deleted: false,
                    hash,
                    raw: None,
                });
                d.pending.insert(
                    key,
                    IndexEntry {
                        version: next_version,
                        deleted: false,
                        hash,
                        last_updated_us: ts,
                        owner: OWNER_UNKNOWN,
                        flushed_owner: OWNER_UNKNOWN,
                    },
                );
                d.out.push(OpOutcome::Written {
                    version: next_version,
                    last_updated_us: ts,
                    raw: placeholder.clone(),
                    created: live.is_none(),
                });
            }
            Action::Delete => {
                if live.is_none() {
                    d.out.push(OpOutcome::Deleted { version: None });
                    continue;
                }
                d.records.push(VersionRecord {
                    resource_type: op.resource_type.clone(),
                    id: op.id.clone(),
                    version: next_version,
                    last_updated_us: ts,
                    deleted: true,
                    hash: 0,
                    raw: None,
                });
                d.pending.insert(
                    key,
                    IndexEntry {
                        version: next_version,
                        deleted: true,
                        hash: 0,
                        last_updated_us: ts,
                        owner: OWNER_NONE,
                        flushed_owner: OWNER_UNKNOWN,
                    },
                );
                d.out.push(OpOutcome::Deleted { version: Some(next_version) });
            }
        }
    }
    d
}

/// Content hashes of every op of every request, computed in parallel.
pub(crate) fn hash_ops(reqs: &[Request]) -> Vec<Vec<u64>> {
    use rayon::prelude::*;
    reqs.iter()
        .map(|r| {
            r.ops
                .par_iter()
                .map(|op| match &op.action {
                    Action::Put(json) => content_hash(json),
                    Action::Delete => 0,
                })
                .collect()
        })
        .collect()
}

/// A built version: (request index, index into its outcomes, record index, served JSON, raw).
pub(crate) struct Built {
    pub(crate) request: usize,
    pub(crate) out: usize,
    pub(crate) record: Option<usize>,
    pub(crate) served: Json,
    pub(crate) raw: Arc<str>,
}

/// Builds the served JSON (with server meta) of every build, in parallel. A resource no one
/// else holds is updated in place instead of cloned.
pub(crate) fn build_served(builds: Vec<(usize, Build)>) -> Vec<Built> {
    use rayon::prelude::*;
    builds
        .into_par_iter()
        .map(|(request, b)| {
            let json = Arc::try_unwrap(b.json).unwrap_or_else(|shared| (*shared).clone());
            let served = set_server_meta(json, b.version, b.last_updated_us);
            let raw: Arc<str> = served.to_json_string().into();
            Built { request, out: b.out, record: b.record, served, raw }
        })
        .collect()
}
