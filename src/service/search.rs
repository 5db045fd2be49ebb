//! search: `GET [base]/{type}?...` and `POST [base]/{type}/_search` (form-encoded) as
//! `searchset` Bundles.
//!
//! Owns: decoding the query, `Prefer: handling=strict|lenient`, `_count` (default and
//! maximum from `ApiConfig`: `serve --search-default-count 20 --search-max-count 1000`),
//! `_summary=count`, `_total`, `_explain` (the plan as an `outcome` entry) and page
//! links. A first page reads the live instance (the Delta tables unioned with the
//! acknowledged writes they lack, `super::live`). A page sequence reads one snapshot: a
//! request reads every table as of one instant (a first page that read unflushed rows and
//! has more pages after it runs again on the flushed tables), and links carry
//! `_snapshot` (the Delta version of every table the search read: the searched one, chain
//! and `_has` targets, included types) and `_offset`, so the next page searches those versions and concurrent writes neither repeat nor skip a
//! resource. A cursor lives as long as vacuum keeps the files of its versions
//! (`--retention`, default 168h). Must not: plan or match (that is `fhirlake-query`).

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use fhirlake_ingest::TableKind;
use fhirlake_query::buffered::TableView;
use fhirlake_query::search::{DeltaTable, SearchTables, search};
use fhirlake_schemas::json::write_str;
use fhirlake_schemas::search::{SearchRequest, Summary, Total};

use super::live::Live;
use super::operation::decode;
use super::write::touched;
use super::{AppState, Operation, Outcome, Touched, fhir_response, param};
use crate::auth::{Access, Letter};
use crate::error::{ApiError, ApiResult};

/// The current tables one search request reads: all as of one instant, some pinned at
/// the versions of a page cursor.
pub(crate) struct Tables {
    /// The Delta current tables as of one instant (the request's start), with the ones a
    /// page cursor names loaded at the cursor's versions.
    tables: std::collections::HashMap<String, DeltaTable>,
    /// The acknowledged writes those tables do not hold yet, when the search reads the
    /// live instance (a first page); `None` for a page cursor, which reads flushed state.
    live: Option<Live>,
    /// Every type the search read, with the Delta version read: the next page's cursor.
    read: std::sync::Mutex<std::collections::BTreeMap<String, Option<u64>>>,
    /// Whether any table read had rows not in Delta (a cursor cannot pin those).
    buffered: std::sync::atomic::AtomicBool,
    /// Token postings for counts and pages.
    postings: Arc<fhirlake_query::search::postings::PostingsCache>,
    /// What the caller may see: each table is read through its row policy for `letter`
    /// (`s` for searches; `r` for `$everything`, a read of the patient's record).
    access: Access,
    letter: Letter,
    model: &'static fhirlake_schemas::Model,
}

impl Tables {
    /// The instance as of now: the published Delta tables plus every acknowledged write
    /// they do not hold yet (no flush is waited for).
    pub(crate) fn live(state: &AppState, access: &Access) -> Self {
        let live = Live::new(state.writer.view());
        Tables {
            tables: live.delta_tables(),
            live: Some(live),
            read: Default::default(),
            buffered: Default::default(),
            postings: state.postings.clone(),
            access: access.clone(),
            letter: Letter::S,
            model: state.model,
        }
    }

    /// The tables with every acknowledged write flushed, all read at one instant: what a
    /// page cursor can pin.
    pub(crate) async fn flushed(state: &AppState, access: &Access) -> ApiResult<Self> {
        state.writer.sync().await?;
        Ok(Tables {
            tables: state.writer.tables().snapshot_of(TableKind::Current),
            live: None,
            read: Default::default(),
            buffered: Default::default(),
            postings: state.postings.clone(),
            access: access.clone(),
            letter: Letter::S,
            model: state.model,
        })
    }

    /// Whether a table read had rows not in Delta yet: a page sequence cannot start from
    /// this instant (see [`Tables::to_continue`]).
    pub(crate) fn read_buffered(&self) -> bool {
        self.buffered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Types with a current table or rows not in Delta yet.
    pub(crate) fn current_types(&self) -> Vec<String> {
        match &self.live {
            Some(l) => l.current_types(),
            None => {
                let mut v: Vec<String> = self.tables.keys().cloned().collect();
                v.sort();
                v
            }
        }
    }

    /// The tables a page cursor (`_snapshot`, as written by [`Tables::cursor`]) pins;
    /// types it does not name read their latest version. A bare number is the searched
    /// type's version (cursors of earlier releases).
    pub(crate) async fn pinned(state: &AppState, access: &Access, rt: &str, cursor: &str) -> ApiResult<Self> {
        let mut tables = Self::flushed(state, access).await?;
        let bad = || ApiError::BadRequest(format!("_snapshot='{cursor}' is not a page cursor"));
        for part in cursor.split(',') {
            let (ty, version) = match part.split_once(':') {
                Some((t, v)) => (t.to_string(), v),
                None => (rt.to_string(), part),
            };
            if version == "-" {
                tables.tables.remove(&ty);
                continue;
            }
            let v: u64 = version.parse().map_err(|_| bad())?;
            let Some(t) = tables.tables.get_mut(&ty) else {
                return Err(ApiError::BadRequest(format!("the page cursor names {ty}, which has no table")));
            };
            if t.version() != Some(v) {
                t.load_version(v).await.map_err(|e| {
                    ApiError::BadRequest(format!(
                        "the page's snapshot of {ty} (version {v}) is no longer readable ({e}): search again"
                    ))
                })?;
            }
        }
        Ok(tables)
    }

    /// The cursor pinning every table read so far: `Type:version,...` (`-`: no table);
    /// empty when a table read had rows not in Delta (a single page of the live instance,
    /// which no cursor can pin: its links search again).
    pub(crate) fn cursor(&self) -> String {
        if self.read_buffered() {
            return String::new();
        }
        let read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        read.iter()
            .map(|(t, v)| format!("{t}:{}", v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl SearchTables for Tables {
    fn current<'a>(
        &'a self,
        resource_type: &'a str,
    ) -> futures::future::BoxFuture<'a, fhirlake_query::Result<Option<TableView>>> {
        Box::pin(async move {
            let delta = self.tables.get(resource_type).cloned();
            let version = delta.as_ref().and_then(DeltaTable::version);
            self.read.lock().unwrap_or_else(|p| p.into_inner()).insert(resource_type.to_string(), version);
            let view = match &self.live {
                Some(live) => live.current(resource_type, delta).await?,
                None => delta.map(TableView::of),
            };
            // Every table is read through the caller's row policy.
            let policy = self
                .access
                .rows(self.model, resource_type, self.letter)
                .map_err(|e| fhirlake_query::Error::Forbidden(e.to_string()))?;
            let view = view.map(|v| v.restricted(policy));
            if view.as_ref().is_some_and(|v| !v.is_flushed()) {
                self.buffered.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(view)
        })
    }

    fn postings(&self) -> Option<&fhirlake_query::search::postings::PostingsCache> {
        (self.postings.capacity() > 0).then_some(&*self.postings)
    }
}

impl Tables {
    /// The tables a request reads: a page cursor's pinned tables, or the live instance.
    pub(crate) async fn for_page(state: &AppState, access: &Access, cursor: Option<&str>, rt: &str) -> ApiResult<Self> {
        match cursor {
            Some(c) => Self::pinned(state, access, rt, c).await,
            None => Ok(Self::live(state, access)),
        }
    }

    /// A first page that read rows not yet in Delta cannot be continued by a cursor (it
    /// pins Delta versions): when `more` pages follow, the page is run again on the
    /// flushed tables this returns, and later pages read exactly that snapshot.
    pub(crate) async fn to_continue(&self, state: &AppState, more: bool) -> ApiResult<Option<Self>> {
        if self.live.is_none() || !more || !self.read_buffered() {
            return Ok(None);
        }
        let mut flushed = Self::flushed(state, &self.access).await?;
        flushed.letter = self.letter;
        Ok(Some(flushed))
    }
}

/// `GET [base]/{type}?...`, and `POST [base]/{type}/_search` with
/// `application/x-www-form-urlencoded` parameters (and any in the URL).
pub async fn search_type(state: &AppState, op: &Operation) -> ApiResult<Outcome> {
    let mut pairs = op.params();
    if !op.body.is_empty() {
        let ct = op.prefs.content_type.as_deref().unwrap_or("");
        if ct != "application/x-www-form-urlencoded" {
            return Err(ApiError::BadRequest(format!(
                "POST _search takes application/x-www-form-urlencoded parameters, not '{ct}'"
            )));
        }
        let form = std::str::from_utf8(&op.body).map_err(|_| ApiError::BadRequest("the form is not UTF-8".into()))?;
        pairs.extend(decode(form));
    }
    run(state, op, pairs).await
}

/// The `_offset` page cursor (0 when absent).
fn offset_param(pairs: &[(String, String)]) -> ApiResult<usize> {
    match param(pairs, "_offset") {
        Some(o) => o.parse::<usize>().map_err(|_| ApiError::BadRequest(format!("_offset='{o}' is not a page cursor"))),
        None => Ok(0),
    }
}

/// Appends the `outcome` entry (severity, text) when there are notes; `first` says
/// whether no entry precedes it.
fn write_outcome(out: &mut String, first: bool, notes: &[(&str, String)]) {
    if notes.is_empty() {
        return;
    }
    if !first {
        out.push(',');
    }
    out.push_str(r#"{"resource":{"resourceType":"OperationOutcome","issue":["#);
    for (i, (severity, text)) in notes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(r#"{{"severity":"{severity}","code":"informational","diagnostics":"#));
        write_str(out, text);
        out.push('}');
    }
    out.push_str(r#"]},"search":{"mode":"outcome"}}"#);
}

/// Appends one Bundle entry with `search.mode`, after a comma unless it is the `first`.
fn write_entry(out: &mut String, first: &mut bool, full_url: &str, resource: &str, mode: &str) {
    if !*first {
        out.push(',');
    }
    *first = false;
    out.push_str(r#"{"fullUrl":"#);
    write_str(out, full_url);
    out.push_str(r#","resource":"#);
    out.push_str(resource);
    out.push_str(&format!(r#","search":{{"mode":"{mode}"}}}}"#));
}

async fn run(state: &AppState, op: &Operation, pairs: Vec<(String, String)>) -> ApiResult<Outcome> {
    let (rt, strict) = (op.rt(), op.prefs.strict);
    // Paging state is ours, not a search parameter.
    let offset = offset_param(&pairs)?;
    let snapshot = param(&pairs, "_snapshot").map(str::to_string);
    let explain = param(&pairs, "_explain") == Some("true");
    let search_pairs: Vec<(String, String)> =
        pairs.iter().filter(|(k, _)| !matches!(k.as_str(), "_offset" | "_snapshot")).cloned().collect();
    let req = fhirlake_schemas::search::parse(state.model, rt, &search_pairs)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if strict && !req.ignored.is_empty() {
        let list: Vec<String> = req.ignored.iter().map(ToString::to_string).collect();
        return Err(ApiError::BadRequest(format!(
            "unknown or unsupported search parameters (Prefer: handling=strict): {}",
            list.join("; ")
        )));
    }
    let count = req.count.unwrap_or(state.config.search.default_count()).min(state.config.search.search_max_count);
    let count = if req.summary == Some(Summary::Count) { 0 } else { count };
    let want_total = matches!(req.total, Some(Total::Accurate | Total::Estimate)) || count == 0;
    let mut tables = Tables::for_page(state, &op.access, snapshot.as_deref(), rt).await?;
    let (page, included) = loop {
        let page = search(&tables, &req, offset, count, want_total).await?;
        if let Some(flushed) = tables.to_continue(state, page.more).await? {
            tables = flushed;
            continue;
        }
        let included = if req.includes.is_empty() && req.revincludes.is_empty() {
            Vec::new()
        } else {
            fhirlake_query::search::included(&tables, state.model, &req, &page).await?
        };
        break (page, included);
    };
    let cursor = tables.cursor();
    let mut seen: Vec<Touched> = page.rows.iter().map(|(id, _)| touched(rt, id, None)).collect();
    seen.extend(included.iter().map(|(t, id, _)| touched(t, id, None)));
    let response = bundle(state, rt, &search_pairs, &req, offset, count, &page, &included, explain, &cursor);
    Ok(Outcome { response, touched: seen })
}

#[allow(clippy::too_many_arguments)]
fn bundle(
    state: &AppState,
    rt: &str,
    pairs: &[(String, String)],
    req: &SearchRequest,
    offset: usize,
    count: usize,
    page: &fhirlake_query::search::SearchPage,
    included: &[(String, String, String)],
    explain: bool,
    cursor: &str,
) -> Response {
    let link = |off: usize| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs.iter().filter(|(k, _)| k != "_count") {
            q.append_pair(k, v);
        }
        q.append_pair("_count", &count.to_string());
        if !cursor.is_empty() {
            q.append_pair("_snapshot", cursor);
        }
        q.append_pair("_offset", &off.to_string());
        format!("{}?{}", state.url(rt), q.finish())
    };
    let mut out = String::from(r#"{"resourceType":"Bundle","type":"searchset""#);
    if let Some(t) = page.total {
        out.push_str(&format!(r#","total":{t}"#));
    }
    out.push_str(r#","link":[{"relation":"self","url":"#);
    write_str(&mut out, &link(offset));
    out.push('}');
    if page.more {
        out.push_str(r#",{"relation":"next","url":"#);
        write_str(&mut out, &link(offset + count));
        out.push('}');
    }
    if offset > 0 && count > 0 {
        out.push_str(r#",{"relation":"previous","url":"#);
        write_str(&mut out, &link(offset.saturating_sub(count)));
        out.push('}');
    }
    out.push_str(r#"],"entry":["#);
    let mut first = true;
    for (id, raw) in &page.rows {
        let subset = fhirlake_schemas::search::subset(state.model, raw, req.summary, &req.elements);
        write_entry(&mut out, &mut first, &state.url(&format!("{rt}/{id}")), subset.as_deref().unwrap_or(raw), "match");
    }
    for (t, id, raw) in included {
        write_entry(&mut out, &mut first, &state.url(&format!("{t}/{id}")), raw, "include");
    }
    let mut notes: Vec<(&str, String)> = req.ignored.iter().map(|e| ("warning", format!("ignored: {e}"))).collect();
    if explain {
        notes.push(("information", page.plan.clone()));
    }
    write_outcome(&mut out, first, &notes);
    out.push_str("]}");
    fhir_response(StatusCode::OK, out, None, None)
}

/// A `searchset` Bundle paged by offset, up to its open `entry` array: `total`, the `self`
/// link and a `next` link when `rows` holds more than this page, and one `match` entry per
/// `(type, id, raw)` of `rows[offset..offset + count]`. Also returns whether no entry was
/// written (for [`write_outcome`]).
fn offset_page(
    state: &AppState,
    total: u64,
    rows: &[(String, String, String)],
    offset: usize,
    count: usize,
    link: impl Fn(usize) -> String,
) -> (String, bool) {
    let mut out =
        format!(r#"{{"resourceType":"Bundle","type":"searchset","total":{total},"link":[{{"relation":"self","url":"#);
    write_str(&mut out, &link(offset));
    out.push('}');
    if rows.len() > offset + count {
        out.push_str(r#",{"relation":"next","url":"#);
        write_str(&mut out, &link(offset + count));
        out.push('}');
    }
    out.push_str(r#"],"entry":["#);
    let mut first = true;
    for (t, id, raw) in rows.iter().skip(offset).take(count) {
        write_entry(&mut out, &mut first, &state.url(&format!("{t}/{id}")), raw, "match");
    }
    (out, first)
}

/// `GET [base]/Patient/{id}/$everything`: the patient and every resource in its
/// compartment, paged by `_count` (default 100, at most 1000) and `_offset`, ordered by
/// type then id. Pages read the snapshot of the first page (`_snapshot`).
pub async fn everything(state: &AppState, op: &Operation) -> ApiResult<Outcome> {
    let id = op.id();
    if state.writer.current("Patient", id).is_none() {
        return Err(ApiError::NotFound(format!("Patient/{id} does not exist")));
    }
    // A patient the caller may not read does not exist for them.
    if op.access.is_limited() {
        let (_, raw) = super::instance::current(state, "Patient", id).await?;
        if !super::instance::visible(state, &op.access, "Patient", id, &raw, Letter::R)? {
            return Err(ApiError::NotFound(format!("Patient/{id} does not exist")));
        }
    }
    let pairs = op.params();
    let count = match param(&pairs, "_count") {
        Some(c) => c
            .parse::<usize>()
            .map_err(|_| ApiError::BadRequest(format!("_count='{c}' is not a non-negative integer")))?,
        None => 100,
    }
    .clamp(1, state.config.search.search_max_count);
    let offset = offset_param(&pairs)?;
    let mut tables = Tables::for_page(state, &op.access, param(&pairs, "_snapshot"), "Patient").await?;
    tables.letter = Letter::R;
    let all = loop {
        let types = tables.current_types();
        let all = fhirlake_query::search::patient_compartment(&tables, &types, id).await?;
        match tables.to_continue(state, all.len() > offset + count).await? {
            Some(flushed) => tables = flushed,
            None => break all,
        }
    };
    let cursor = tables.cursor();
    let link = |off: usize| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("_count", &count.to_string());
        if !cursor.is_empty() {
            q.append_pair("_snapshot", &cursor);
        }
        q.append_pair("_offset", &off.to_string());
        format!("{}?{}", state.url(&format!("Patient/{id}/$everything")), q.finish())
    };
    let (mut out, _) = offset_page(state, all.len() as u64, &all, offset, count, link);
    out.push_str("]}");
    let seen = all.iter().skip(offset).take(count).map(|(t, id, _)| touched(t, id, None)).collect();
    Ok(Outcome { response: fhir_response(StatusCode::OK, out, None, None), touched: seen })
}

/// `GET [base]?_type=A,B&...`: the same search on each listed type (its parameters must
/// apply to every one of them, e.g. `_id`, `_lastUpdated`, `_tag`), results in `_type`
/// order, paged by `_offset` over the snapshot of the first page (`_snapshot`).
pub async fn search_system(state: &AppState, op: &Operation) -> ApiResult<Outcome> {
    let pairs = op.params();
    let Some(types) = param(&pairs, "_type") else {
        return Err(ApiError::BadRequest("a search of the whole server needs _type=Type1,Type2".into()));
    };
    let types: Vec<String> = types.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect();
    for t in &types {
        state.check_type(t).map_err(|_| ApiError::BadRequest(format!("_type: '{t}' is not a resource type")))?;
    }
    let strict = op.prefs.strict;
    let offset = offset_param(&pairs)?;
    let rest: Vec<(String, String)> =
        pairs.iter().filter(|(k, _)| !matches!(k.as_str(), "_type" | "_offset" | "_snapshot")).cloned().collect();
    // Parsed up front: a bad parameter is refused before anything is read.
    let mut requests = Vec::with_capacity(types.len());
    let mut ignored = Vec::new();
    let mut count = state.config.search.default_count();
    for t in &types {
        let req =
            fhirlake_schemas::search::parse(state.model, t, &rest).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        if strict && !req.ignored.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "not a search parameter of every _type (Prefer: handling=strict): {}",
                req.ignored[0]
            )));
        }
        ignored.extend(req.ignored.iter().map(ToString::to_string));
        count = req.count.unwrap_or(state.config.search.default_count()).min(state.config.search.search_max_count);
        requests.push(req);
    }
    let mut tables = Tables::for_page(state, &op.access, param(&pairs, "_snapshot"), &types[0]).await?;
    let (rows, total) = loop {
        let mut rows: Vec<(String, String, String)> = Vec::new();
        let mut total = 0u64;
        for req in &requests {
            let page = search(&tables, req, 0, offset + count + 1, true).await?;
            total += page.total.unwrap_or(0);
            rows.extend(page.rows.into_iter().map(|(id, raw)| (req.resource_type.clone(), id, raw)));
        }
        match tables.to_continue(state, rows.len() > offset + count).await? {
            Some(flushed) => tables = flushed,
            None => break (rows, total),
        }
    };
    let cursor = tables.cursor();
    let link = |off: usize| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("_type", &types.join(","));
        for (k, v) in rest.iter().filter(|(k, _)| k != "_count") {
            q.append_pair(k, v);
        }
        q.append_pair("_count", &count.to_string());
        if !cursor.is_empty() {
            q.append_pair("_snapshot", &cursor);
        }
        q.append_pair("_offset", &off.to_string());
        format!("{}?{}", state.config.public_base(), q.finish())
    };
    let (mut out, first) = offset_page(state, total, &rows, offset, count, link);
    ignored.sort();
    ignored.dedup();
    let notes: Vec<(&str, String)> = ignored.iter().map(|e| ("warning", format!("ignored: {e}"))).collect();
    write_outcome(&mut out, first, &notes);
    out.push_str("]}");
    let seen = rows.iter().skip(offset).take(count).map(|(t, id, _)| touched(t, id, None)).collect();
    Ok(Outcome { response: fhir_response(StatusCode::OK, out, None, None), touched: seen })
}
