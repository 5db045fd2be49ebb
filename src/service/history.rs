//! history: instance, type and system `_history` as Bundles of type `history`.
//!
//! Owns: `_count`, `_since`, `_at` and stable paging. Each page link carries `_till`, the
//! newest `_last_updated` of the first page's query time, and `_offset`; history is
//! append-only with increasing times, so the versions at or before `_till` never change
//! and offsets stay stable while new versions arrive. Versions are read from the serving
//! store (no Delta scan). Must not: read the Delta tables.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::Response;
use fhirlake_ingest::writer::{HistoryQuery, HistoryRow, format_instant, merge_newest_first};
use fhirlake_schemas::json::write_str;

use super::write::touched;
use super::{AppState, Interaction, Operation, Outcome, fhir_response, parse_time_param};
use crate::auth::{Access, Letter};
use crate::error::{ApiError, ApiResult};

const DEFAULT_COUNT: usize = 50;
const MAX_COUNT: usize = 1000;

struct Paging {
    count: usize,
    offset: usize,
    since: Option<i64>,
    at: Option<i64>,
    till: i64,
}

fn paging(params: &HashMap<String, String>) -> ApiResult<Paging> {
    let count = match params.get("_count") {
        Some(c) => c
            .parse::<usize>()
            .map_err(|_| ApiError::BadRequest(format!("_count='{c}' is not a non-negative integer")))?
            .min(MAX_COUNT),
        None => DEFAULT_COUNT,
    };
    let offset = match params.get("_offset") {
        Some(o) => o
            .parse::<usize>()
            .map_err(|_| ApiError::BadRequest(format!("_offset='{o}' is not a non-negative integer")))?,
        None => 0,
    };
    let since = params.get("_since").map(|v| parse_time_param("_since", v)).transpose()?;
    let at = params.get("_at").map(|v| parse_time_param("_at", v)).transpose()?;
    let till = match params.get("_till") {
        Some(t) => t.parse::<i64>().map_err(|_| ApiError::BadRequest(format!("_till='{t}' is not a paging cursor")))?,
        None => chrono::Utc::now().timestamp_micros(),
    };
    Ok(Paging { count, offset, since, at, till })
}

impl Paging {
    /// The store query of this page; `all` reads every version up to the page's end (a
    /// limited caller's versions are filtered before paging).
    fn query(&self, id: Option<String>, all: bool) -> HistoryQuery {
        HistoryQuery {
            id,
            since_us: self.since,
            at_us: self.at,
            until_us: Some(self.till),
            limit: (!all).then_some(self.offset + self.count + 1),
            ..Default::default()
        }
    }
}

/// `GET [base]/{type}/{id}/_history`, `[base]/{type}/_history` and `[base]/_history`.
pub async fn history(state: &AppState, op: &Operation) -> ApiResult<Outcome> {
    let params: HashMap<String, String> = op.params().into_iter().collect();
    let p = paging(&params)?;
    let limited = op.access.is_limited();
    let (path, rows) = match op.interaction {
        Interaction::HistoryInstance => {
            let (rt, id) = (op.rt(), op.id());
            if state.writer.current(rt, id).is_none() {
                return Err(ApiError::NotFound(format!("{rt}/{id} does not exist")));
            }
            (format!("{rt}/{id}/_history"), rows_of(state, rt, &p.query(Some(id.to_string()), limited))?)
        }
        Interaction::HistoryType => {
            (format!("{}/_history", op.rt()), rows_of(state, op.rt(), &p.query(None, limited))?)
        }
        _ => {
            let q = p.query(None, limited);
            let mut parts = Vec::new();
            for rt in state.writer.types() {
                parts.push(rows_of(state, &rt, &q)?);
            }
            ("_history".to_string(), merge_newest_first(parts, q.limit))
        }
    };
    let rows = if limited {
        let letter = if op.interaction == Interaction::HistoryInstance { Letter::R } else { Letter::S };
        let rows = visible_rows(state, &op.access, rows, letter)?;
        if op.interaction == Interaction::HistoryInstance && rows.is_empty() {
            return Err(ApiError::NotFound(format!("{}/{} does not exist", op.rt(), op.id())));
        }
        rows
    } else {
        rows
    };
    let seen =
        rows.iter().skip(p.offset).take(p.count).map(|r| touched(&r.resource_type, &r.id, Some(r.version))).collect();
    Ok(Outcome { response: bundle(state, &path, &p, rows), touched: seen })
}

/// The versions among `rows` the caller may see, each judged as a read of that version.
fn visible_rows(
    state: &AppState,
    access: &Access,
    rows: Vec<HistoryRow>,
    letter: Letter,
) -> ApiResult<Vec<HistoryRow>> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let raw = super::instance::shown_raw(state, &r.resource_type, &r.id, r.version, r.raw.as_deref(), r.deleted)?;
        if super::instance::visible(state, access, &r.resource_type, &r.id, raw.as_deref().unwrap_or(""), letter)? {
            out.push(r);
        }
    }
    Ok(out)
}

/// The versions of `rt` that `q` selects, from the serving store.
fn rows_of(state: &AppState, rt: &str, q: &HistoryQuery) -> ApiResult<Vec<HistoryRow>> {
    Ok(state.writer.history(rt, q)?)
}

fn link(state: &AppState, path: &str, p: &Paging, offset: usize) -> String {
    let mut url = format!("{}?_count={}&_till={}&_offset={offset}", state.url(path), p.count, p.till);
    if let Some(s) = p.since {
        url.push_str(&format!("&_since={}", time_param(s)));
    }
    if let Some(a) = p.at {
        url.push_str(&format!("&_at={}", time_param(a)));
    }
    url
}

fn time_param(us: i64) -> String {
    format_instant(us).replace('+', "%2B")
}

fn bundle(state: &AppState, path: &str, p: &Paging, rows: Vec<HistoryRow>) -> Response {
    let has_next = rows.len() > p.offset + p.count;
    let page: Vec<&HistoryRow> = rows.iter().skip(p.offset).take(p.count).collect();
    let mut out = String::from(r#"{"resourceType":"Bundle","type":"history","link":["#);
    out.push_str(r#"{"relation":"self","url":"#);
    write_str(&mut out, &link(state, path, p, p.offset));
    out.push('}');
    if has_next {
        out.push_str(r#",{"relation":"next","url":"#);
        write_str(&mut out, &link(state, path, p, p.offset + p.count));
        out.push('}');
    }
    if p.offset > 0 {
        out.push_str(r#",{"relation":"previous","url":"#);
        write_str(&mut out, &link(state, path, p, p.offset.saturating_sub(p.count)));
        out.push('}');
    }
    out.push_str(r#"],"entry":["#);
    for (i, r) in page.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        entry(state, r, &mut out);
    }
    out.push_str("]}");
    fhir_response(StatusCode::OK, out, None, None)
}

fn entry(state: &AppState, r: &HistoryRow, out: &mut String) {
    let rel = format!("{}/{}", r.resource_type, r.id);
    out.push_str(r#"{"fullUrl":"#);
    write_str(out, &state.url(&rel));
    if let (Some(raw), false) = (&r.raw, r.deleted) {
        out.push_str(r#","resource":"#);
        out.push_str(raw);
    }
    let (method, url, status) = match (r.deleted, r.version) {
        (true, _) => ("DELETE", rel.clone(), "204 No Content"),
        (false, 1) => ("POST", r.resource_type.clone(), "201 Created"),
        (false, _) => ("PUT", rel.clone(), "200 OK"),
    };
    out.push_str(&format!(r#","request":{{"method":"{method}","url":"#));
    write_str(out, &url);
    out.push_str(&format!(r#"}},"response":{{"status":"{status}","etag":"W/\"{}\"","lastModified":"#, r.version));
    write_str(out, &format_instant(r.last_updated_us));
    out.push_str("}}");
}
