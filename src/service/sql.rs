//! `POST [base]/$sql`: read-only SQL over the tables the API serves.
//!
//! Owns: the request contract shared with `fhirlake sql` (README, "SQL"): `application/sql`
//! or `text/plain` with the SQL text, or `application/json` `{"query", "params", "format",
//! "limit"}` (`params` a list for `$1`.. or an object for `$name`); the output format from
//! `format`, `_format` or `Accept` (`json`, `ndjson`, `csv`, `arrow`, `parquet`); the row
//! limit (default and maximum from `ApiConfig`); the session over the writer's latest table
//! snapshots (so a write acknowledged by the API is visible at once) and the
//! materialized views. Must not: plan or sandbox SQL (that is `fhirlake_query::catalog`).

use std::sync::Arc;

use axum::response::Response;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::prelude::DataFrame;
use fhirlake_ingest::TableKind;
use fhirlake_query::catalog::{SqlSession, Tables};
use fhirlake_query::views::output::{Encoder, Format};
use fhirlake_schemas::Json;

use fhirlake_query::search::rows::{RowPolicies, RowPolicy};

use super::live::Live;
use super::{AppState, Operation, parse_json};
use crate::auth::{Access, Letter};
use crate::error::{ApiError, ApiResult};

/// `POST [base]/$sql`.
pub async fn sql(state: &AppState, op: &Operation) -> ApiResult<Response> {
    let mime = op.prefs.content_type.clone().unwrap_or_default();
    let limits = state.config.sql.limits();
    let (mut format, mut limit) = (None::<String>, None::<usize>);
    let (text, params) = match mime.as_str() {
        "application/sql" | "text/plain" | "" => (
            String::from_utf8(op.body.to_vec()).map_err(|_| ApiError::BadRequest("the SQL is not UTF-8".into()))?,
            None,
        ),
        "application/json" | "application/fhir+json" => {
            let j = parse_json(state, &op.body)?;
            let q = j
                .get("query")
                .and_then(Json::as_str)
                .ok_or_else(|| ApiError::BadRequest("the JSON body needs \"query\": \"SELECT ...\"".into()))?
                .to_string();
            format = j.get("format").and_then(Json::as_str).map(String::from);
            limit = match j.get("limit") {
                None | Some(Json::Null) => None,
                Some(Json::Number(n)) => {
                    Some(n.parse().map_err(|_| ApiError::BadRequest(format!("\"limit\": {n} is not a row count")))?)
                }
                Some(other) => {
                    return Err(ApiError::BadRequest(format!("\"limit\" must be a number, not {}", other.kind())));
                }
            };
            let params = match j.get("params") {
                None | Some(Json::Null) => None,
                Some(p) => Some(params_of(p)?),
            };
            (q, params)
        }
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "send the SQL as application/sql or text/plain, or JSON {{\"query\": ...}}; not '{other}'"
            )));
        }
    };
    for (k, v) in op.params() {
        match k.as_str() {
            "_format" | "format" => format = Some(v),
            "limit" | "_limit" => {
                limit = Some(v.parse().map_err(|_| ApiError::BadRequest(format!("limit='{v}' is not a row count")))?)
            }
            other => return Err(ApiError::BadRequest(format!("$sql has no parameter '{other}'"))),
        }
    }
    let format = choose_format(format.as_deref(), op.prefs.accept.as_deref())?;
    let limit = limit.unwrap_or(state.config.sql.sql_default_rows);
    if limit > state.config.sql.sql_max_rows {
        return Err(ApiError::BadRequest(format!(
            "limit {limit} is over the maximum of {} rows",
            state.config.sql.sql_max_rows
        )));
    }
    if text.trim().is_empty() {
        return Err(ApiError::BadRequest("the SQL text is empty".into()));
    }
    let df = plan(state, op, &text, params).await?;
    let df = df.limit(0, Some(limit)).map_err(fhirlake_query::Error::from)?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let stream = tokio::time::timeout_at(deadline, df.execute_stream())
        .await
        .map_err(|_| ApiError::Timeout("the query ran past its time limit and was cancelled".into()))?
        .map_err(|e| ApiError::from(fhirlake_query::Error::from(e)))?;
    let enc = Encoder::for_schema(format, schema)?;
    let options = super::stream::StreamOptions { format, deadline: Some(deadline), header: None };
    super::stream::respond(stream, enc, options, |e| ApiError::from(fhirlake_query::Error::from(e))).await
}

/// Plans a read-only SQL statement for `op` (`$sql`, or a Flight SQL statement) over the
/// latest snapshots: the one place every SQL front end goes through.
pub async fn plan(state: &AppState, op: &Operation, text: &str, params: Option<ParamValues>) -> ApiResult<DataFrame> {
    let session = session(state, &op.access).await?;
    let df = session.plan(text, params).await;
    state.metrics.sql_query(op.caller.channel, df.is_ok());
    Ok(df?)
}

/// `format`/`_format`, else the first `Accept` type that names one, else JSON.
pub fn choose_format(named: Option<&str>, accept: Option<&str>) -> ApiResult<Format> {
    match named {
        Some(f) => Format::parse(f).ok_or_else(|| {
            ApiError::BadRequest(format!("format '{f}' is not one of json, ndjson, csv, arrow, parquet"))
        }),
        None => Ok(accept
            .and_then(|a| a.split(',').find_map(|m| Format::parse(m.split(';').next().unwrap_or(""))))
            .unwrap_or(Format::Json)),
    }
}

/// JSON parameters: a list binds `$1`, `$2`, ...; an object binds `$name`.
fn params_of(j: &Json) -> ApiResult<ParamValues> {
    let scalar = |v: &Json| -> ApiResult<ScalarValue> {
        Ok(match v {
            Json::Null => ScalarValue::Null,
            Json::Bool(b) => ScalarValue::Boolean(Some(*b)),
            Json::String(s) => ScalarValue::Utf8(Some(s.clone())),
            Json::Number(n) => match n.parse::<i64>() {
                Ok(i) => ScalarValue::Int64(Some(i)),
                Err(_) => ScalarValue::Float64(Some(
                    n.parse().map_err(|_| ApiError::BadRequest(format!("parameter {n} is not a number")))?,
                )),
            },
            other => return Err(ApiError::BadRequest(format!("a parameter must be a scalar, not {}", other.kind()))),
        })
    };
    match j {
        Json::Array(items) => Ok(ParamValues::List(
            items.iter().map(scalar).collect::<ApiResult<Vec<_>>>()?.into_iter().map(Into::into).collect(),
        )),
        Json::Object(members) => Ok(ParamValues::Map(
            members.iter().map(|(k, v)| Ok((k.clone(), scalar(v)?.into()))).collect::<ApiResult<_>>()?,
        )),
        other => Err(ApiError::BadRequest(format!("\"params\" must be a list or an object, not {}", other.kind()))),
    }
}

/// The caller's row policies as the SQL catalog applies them: each table reads the rows
/// its type may be searched for (`s`).
struct Policies {
    access: Access,
    model: &'static fhirlake_schemas::Model,
}

impl RowPolicies for Policies {
    fn rows(&self, rt: &str) -> fhirlake_query::Result<Option<Arc<RowPolicy>>> {
        self.access.rows(self.model, rt, Letter::S).map_err(|e| fhirlake_query::Error::Forbidden(e.to_string()))
    }
}

/// A session over the instance as of now: the published Delta tables, the acknowledged
/// writes they do not hold yet (no flush is waited for), and the materialized views; for
/// a caller limited by SMART grants, only the rows (and tables) those allow.
pub async fn session(state: &AppState, access: &Access) -> ApiResult<SqlSession> {
    // One view of every table: never half of a flush round (or of a transaction).
    let live = Live::new(state.writer.view());
    let mut tables = Tables {
        current: live.view().tables_of(TableKind::Current).into_iter().collect(),
        history: live.view().tables_of(TableKind::History).into_iter().collect(),
        ..Default::default()
    };
    tables.unflushed = Some(Arc::new(live));
    if access.is_limited() {
        tables.policies = Some(Arc::new(Policies { access: access.clone(), model: state.model }));
    }
    let root = state.writer.root();
    for name in root.existing_tables(TableKind::View).await? {
        if let Some(t) = root.open_table(TableKind::View, &name).await? {
            tables.views.push((name, t));
        }
    }
    Ok(SqlSession::with_tables(tables, state.config.sql.limits())?)
}
