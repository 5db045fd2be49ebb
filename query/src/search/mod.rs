//! FHIR search as DataFusion plans over the current tables' `_sp_*` index columns.
//!
//! Owns: turning a parsed [`SearchRequest`] (from `fhirlake_schemas::search`) into a
//! `LogicalPlan` — one `fhir_match(<index column>, '<clause>')` filter per ANDed clause,
//! evaluated by [`matcher::ClauseMatcher`] over the Arrow lists — resolving chains and
//! `_has` by running the inner search first, sorting, counting and paging. The searched
//! table is the `DeltaTable` snapshot the caller passes, so a page sequence reads one
//! version. Must not: write, or know HTTP.

pub mod matcher;
pub mod postings;
pub mod rows;

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::prelude::{DataFrame, Expr, SessionContext, col, ident, lit};
pub use deltalake::DeltaTable;
use fhirlake_schemas::search::{Clause, HasCondition, SearchRequest};

use crate::buffered::TableView;
use crate::catalog;

/// The search session: fhirlake's SQL settings plus Parquet filter pushdown, so the
/// `fhir_match` filters run while scanning and `_raw` is decoded only for matching rows.
fn session_config() -> datafusion::prelude::SessionConfig {
    catalog::scan_session_config()
}
use crate::{Error, Result};
use matcher::{ClauseMatcher, string_at};

/// The tables a search may read: the current table of a type, at the snapshot to search.
pub trait SearchTables: Send + Sync {
    /// The current table of `resource_type` (its Delta table and the acknowledged rows it
    /// does not hold yet), or `None` when nothing of that type exists.
    fn current<'a>(&'a self, resource_type: &'a str) -> futures::future::BoxFuture<'a, Result<Option<TableView>>>;

    /// The token postings cache, when counts and pages may use one ([`postings`]).
    fn postings(&self) -> Option<&postings::PostingsCache> {
        None
    }
}

/// The `fhir_match` UDF of one clause. Its second argument is the clause as written, so
/// plans read like the request; the parsed clause travels in the UDF itself.
#[derive(Debug)]
struct MatchUdf {
    label: String,
    matcher: Arc<ClauseMatcher>,
    signature: Signature,
}

impl PartialEq for MatchUdf {
    fn eq(&self, other: &Self) -> bool {
        self.label == other.label && Arc::ptr_eq(&self.matcher, &other.matcher)
    }
}

impl Eq for MatchUdf {}

impl Hash for MatchUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.label.hash(state);
    }
}

impl ScalarUDFImpl for MatchUdf {
    fn name(&self) -> &str {
        "fhir_match"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        let column = args.args[0].to_array(args.number_rows)?;
        let out =
            self.matcher.evaluate(&column).map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

fn match_expr(column: &str, label: String, matcher: ClauseMatcher) -> Expr {
    let udf = ScalarUDF::new_from_impl(MatchUdf {
        label: label.clone(),
        matcher: Arc::new(matcher),
        signature: Signature::any(2, Volatility::Immutable),
    });
    udf.call(vec![ident(column), lit(label)])
}

/// `identifier:of-type=system|code|value`: the residual check of a clause whose values
/// the index can only narrow. Evaluates the parameter's expression on the stored resource
/// and keeps rows with an Identifier whose `type` has the coding and whose `value` is
/// the value (any of the ORed triples).
#[derive(Debug)]
struct OfTypeUdf {
    label: String,
    expression: Arc<fhirlake_schemas::fhirpath::Expression>,
    wanted: Vec<(String, String, String)>,
    /// The same clause as plain tokens on the values (any system): the index filter.
    prefilter: Clause,
    signature: Signature,
}

impl OfTypeUdf {
    fn for_clause(resource_type: &str, c: &Clause) -> Result<Option<Self>> {
        use fhirlake_schemas::search::Predicate;
        let wanted: Vec<(String, String, String)> = c
            .values
            .iter()
            .filter_map(|v| match v {
                Predicate::OfType { system, code, value } => Some((system.clone(), code.clone(), value.clone())),
                _ => None,
            })
            .collect();
        if wanted.is_empty() {
            return Ok(None);
        }
        let model = fhirlake_schemas::Model::r4().map_err(|e| Error::BadSearch(e.to_string()))?;
        let source = model
            .search_parameter(resource_type, &c.code)
            .and_then(|p| p.expression.clone())
            .ok_or_else(|| Error::BadSearch(format!("'{}:of-type': the parameter has no expression", c.code)))?;
        let expression = fhirlake_schemas::fhirpath::Expression::parse(&source)
            .map_err(|e| Error::BadSearch(format!("'{}:of-type': {e}", c.code)))?;
        let mut prefilter = c.clone();
        prefilter.values =
            wanted.iter().map(|(_, _, value)| Predicate::Token { system: None, code: Some(value.clone()) }).collect();
        Ok(Some(OfTypeUdf {
            label: label(c),
            expression: Arc::new(expression),
            wanted,
            prefilter,
            signature: Signature::any(1, Volatility::Immutable),
        }))
    }

    fn matches(&self, raw: &str) -> bool {
        use fhirlake_schemas::fhirpath::Value;
        use fhirlake_schemas::json::{Json, ParseLimits};
        let (Ok(model), Ok(resource)) =
            (fhirlake_schemas::Model::r4(), Json::parse(raw.as_bytes(), ParseLimits::STORED))
        else {
            return false;
        };
        let Ok(found) = self.expression.evaluate(model, &resource) else { return false };
        let text = |j: Option<&Json>| j.and_then(Json::as_str).map(str::to_string);
        found.iter().any(|v| {
            let Value::Node(n) = v else { return false };
            let Some(identifier) = n.value else { return false };
            let value = text(identifier.get("value"));
            let codings = identifier.get("type").and_then(|t| t.get("coding")).and_then(Json::as_array).unwrap_or(&[]);
            self.wanted.iter().any(|(system, code, wanted_value)| {
                value.as_deref() == Some(wanted_value.as_str())
                    && codings.iter().any(|k| {
                        text(k.get("system")).as_deref() == Some(system.as_str())
                            && text(k.get("code")).as_deref() == Some(code.as_str())
                    })
            })
        })
    }
}

impl PartialEq for OfTypeUdf {
    fn eq(&self, other: &Self) -> bool {
        self.label == other.label && self.wanted == other.wanted
    }
}

impl Eq for OfTypeUdf {}

impl Hash for OfTypeUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.label.hash(state);
    }
}

impl ScalarUDFImpl for OfTypeUdf {
    fn name(&self) -> &str {
        "fhir_identifier_of_type"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        let raw = args.args[0].to_array(args.number_rows)?;
        let out: arrow::array::BooleanArray =
            (0..raw.len()).map(|i| Some(string_at(raw.as_ref(), i).is_some_and(|r| self.matches(r)))).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// One page of results.
#[derive(Debug)]
pub struct SearchPage {
    /// `(id, served JSON)` of the matches on this page, in result order.
    pub rows: Vec<(String, String)>,
    /// Whether more matches follow this page.
    pub more: bool,
    /// The number of matches, when asked for.
    pub total: Option<u64>,
    /// The Delta version of the searched table (for page links).
    pub version: Option<u64>,
    /// The logical plan, indented (for `_explain`).
    pub plan: String,
    /// For the reference columns `_include` reads on this type: the `(type, id)` targets
    /// found on this page, per column (read with the page, saving a second scan).
    pub references: References,
}

/// Renders a clause for plan display: `code:modifier=values` as parsed.
fn label(c: &Clause) -> String {
    format!(
        "{}{}{} {:?}",
        c.code,
        if c.negated { ":not" } else { "" },
        c.missing.map(|m| format!(":missing={m}")).unwrap_or_default(),
        c.values
    )
}

/// Filters of the ANDed clauses of `clauses` on a table of `resource_type`, chains
/// resolved.
fn clause_filters<'a>(
    tables: &'a dyn SearchTables,
    resource_type: &'a str,
    clauses: &'a [Clause],
) -> futures::future::BoxFuture<'a, Result<Vec<Expr>>> {
    Box::pin(async move {
        let mut filters = Vec::new();
        for c in clauses {
            if let Some(chain) = &c.chain {
                // Resources of the target type that match, then references to them.
                let ids = matching_ids(tables, &chain.target_type, std::slice::from_ref(&chain.clause), &[]).await?;
                let set: HashSet<(String, String)> =
                    ids.into_iter().map(|id| (chain.target_type.clone(), id)).collect();
                filters.push(match_expr(
                    &c.column,
                    format!("{}:{}.{}", c.code, chain.target_type, label(&chain.clause)),
                    ClauseMatcher::references(set),
                ));
            } else if let Some(of_type) = OfTypeUdf::for_clause(resource_type, c)? {
                // The index holds identifier values, not their types: values narrow the
                // rows, then the identifiers of the stored resource are checked.
                filters.push(match_expr(&c.column, label(c), ClauseMatcher::new(&of_type.prefilter)?));
                filters.push(ScalarUDF::new_from_impl(of_type).call(vec![col("_raw")]));
            } else {
                if let Some(owners) = owner_filter(resource_type, c) {
                    filters.push(owners);
                }
                filters.push(match_expr(&c.column, label(c), ClauseMatcher::new(c)?));
            }
        }
        Ok(filters)
    })
}

/// `_patient IN (ids)` for a clause like `patient=X` / `subject=Patient/X` whose matches
/// all have owner `X` ([`fhirlake_schemas::Model::is_owner_param`]). Implied by the
/// clause, so it changes no result; as a plain column predicate it lets Delta file
/// statistics and Parquet row-group statistics skip data (compaction clusters the current
/// tables by `_patient`), which `fhir_match` over the list column cannot.
fn owner_filter(resource_type: &str, c: &Clause) -> Option<Expr> {
    use fhirlake_schemas::search::Predicate;
    use fhirlake_schemas::search_index::ParamKind;
    if c.kind != ParamKind::Reference || c.negated || c.missing.is_some() || c.chain.is_some() {
        return None;
    }
    let model = fhirlake_schemas::Model::r4().ok()?;
    if !model.is_owner_param(resource_type, &c.code) {
        return None;
    }
    // A bare id names a Patient when the parameter can only point at one on this type
    // (its targets, or its expression for the type ends in `where(resolve() is Patient)`).
    let only_patients = model.search_parameter(resource_type, &c.code).is_some_and(|p| {
        p.target == ["Patient"]
            || p.expression.as_deref().is_some_and(|e| {
                e.split('|').map(str::trim).any(|part| {
                    part.starts_with(&format!("{resource_type}.")) && part.ends_with("where(resolve() is Patient)")
                })
            })
    });
    let mut ids = Vec::new();
    for v in &c.values {
        match v {
            Predicate::Reference { target_type, id: Some(id), url: None }
                if target_type.as_deref() == Some("Patient") || (target_type.is_none() && only_patients) =>
            {
                ids.push(lit(id.clone()));
            }
            _ => return None,
        }
    }
    (!ids.is_empty()).then(|| col("_patient").in_list(ids, false))
}

/// A DataFrame over `table` (Delta and buffered rows) in a fresh search session.
fn scan(table: &TableView) -> futures::future::BoxFuture<'static, Result<DataFrame>> {
    let table = table.clone();
    Box::pin(async move {
        let ctx = SessionContext::new_with_config_rt(session_config(), search_runtime());
        if let Some(delta) = &table.delta {
            delta.update_datafusion_session(&ctx.state())?;
        }
        let provider = table.provider().await?;
        Ok(ctx.read_table(provider)?)
    })
}

/// The runtime every search session shares. Its Parquet metadata cache keeps the decoded
/// footers of the data files searched (a current table's files are immutable and wide: a
/// footer of Observation describes ~700 columns), so a search does not read and decode
/// them again; the cache is bounded and drops the least recently used footers.
fn search_runtime() -> Arc<datafusion::execution::runtime_env::RuntimeEnv> {
    static RUNTIME: std::sync::OnceLock<Arc<datafusion::execution::runtime_env::RuntimeEnv>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let built = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
                .with_metadata_cache_limit(SEARCH_METADATA_CACHE_BYTES)
                .build();
            Arc::new(built.unwrap_or_default())
        })
        .clone()
}

/// The bound of the searches' Parquet footer cache.
const SEARCH_METADATA_CACHE_BYTES: usize = 256 << 20;

/// Ids of `resource_type` matching all `clauses` and `has` conditions.
fn matching_ids<'a>(
    tables: &'a dyn SearchTables,
    resource_type: &'a str,
    clauses: &'a [Clause],
    has: &'a [fhirlake_schemas::search::Has],
) -> futures::future::BoxFuture<'a, Result<Vec<String>>> {
    Box::pin(async move {
        let Some(table) = tables.current(resource_type).await? else { return Ok(vec![]) };
        let mut df = scan(&table).await?;
        for f in clause_filters(tables, resource_type, clauses).await? {
            df = df.filter(f)?;
        }
        for h in has {
            df = df.filter(has_filter(tables, resource_type, h).await?)?;
        }
        let batches = df.select(vec![col("id")])?.collect().await?;
        Ok(ids_of(&batches, "id"))
    })
}

/// `(id, served JSON)` of batches whose first two columns are `id` and `_raw`.
fn rows_of(batches: &[RecordBatch]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            if let (Some(id), Some(raw)) = (string_at(b.column(0).as_ref(), i), string_at(b.column(1).as_ref(), i)) {
                out.push((id.to_string(), raw.to_string()));
            }
        }
    }
    out
}

fn ids_of(batches: &[RecordBatch], name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        if let Some(a) = b.column_by_name(name) {
            out.extend((0..a.len()).filter_map(|i| string_at(a.as_ref(), i)).map(str::to_string));
        }
    }
    out
}

/// `id IN (ids referenced from the _has source)`.
fn has_filter<'a>(
    tables: &'a dyn SearchTables,
    here: &'a str,
    h: &'a fhirlake_schemas::search::Has,
) -> futures::future::BoxFuture<'a, Result<Expr>> {
    Box::pin(async move {
        let Some(table) = tables.current(&h.source_type).await? else { return Ok(lit(false)) };
        let mut df = scan(&table).await?;
        match &h.condition {
            HasCondition::Clause(c) => {
                for f in clause_filters(tables, &h.source_type, std::slice::from_ref(c)).await? {
                    df = df.filter(f)?;
                }
            }
            HasCondition::Has(inner) => {
                df = df.filter(has_filter(tables, &h.source_type, inner).await?)?;
            }
        }
        let batches = df.select(vec![ident(&h.reference_column)])?.collect().await?;
        let mut ids: HashSet<String> = HashSet::new();
        for b in &batches {
            let c = b.column(0);
            for (t, id) in (0..c.len()).flat_map(|i| reference_targets(c.as_ref(), i)) {
                if t == here {
                    ids.insert(id);
                }
            }
        }
        if ids.is_empty() {
            return Ok(lit(false));
        }
        let mut ids: Vec<String> = ids.into_iter().collect();
        ids.sort();
        Ok(col("id").in_list(ids.into_iter().map(lit).collect(), false))
    })
}

/// Runs `req` and returns the page `[offset, offset + count)`; `count` 0 only counts.
pub async fn search(
    tables: &dyn SearchTables,
    req: &SearchRequest,
    offset: usize,
    count: usize,
    want_total: bool,
) -> Result<SearchPage> {
    let Some(table) = tables.current(&req.resource_type).await? else {
        return Ok(SearchPage {
            rows: vec![],
            more: false,
            total: want_total.then_some(0),
            version: None,
            plan: String::new(),
            references: Default::default(),
        });
    };
    // Postings first: when they answer both the total and the page, no scan is planned.
    let wants_total = want_total || count == 0;
    let pageable = postings::pageable(req, count);
    // Postings index the Delta files. They answer a page only while nothing of the type is
    // buffered, and a total also while every buffered row is a new id (nothing in Delta is
    // shadowed): the Delta postings plus the buffered rows that match, counted by
    // filtering those rows alone. Otherwise the union is scanned.
    // Postings read the Delta files directly: they cannot apply a row policy.
    let flushed = table.delta.as_ref().filter(|_| table.is_flushed() && table.policy.is_none());
    let only_new = table.buffered.as_ref().is_none_or(|b| b.shadow.is_empty());
    let countable = table.delta.as_ref().filter(|_| only_new && table.policy.is_none());
    let matched = match (tables.postings(), countable) {
        (Some(cache), Some(delta)) if req.has.is_empty() && (wants_total || (pageable && flushed.is_some())) => {
            postings::matches(cache, delta, &req.clauses).await?
        }
        _ => None,
    };
    let mut counted = if wants_total { matched.as_ref().map(postings::Matches::counted) } else { None };
    if let (Some(c), Some(b)) = (counted.as_mut(), table.buffered.as_ref().filter(|b| !b.batches.is_empty())) {
        let alone = TableView { delta: None, buffered: Some(b.clone()), policy: None };
        c.buffered = filtered(tables, scan(&alone).await?, req).await?.count().await? as u64;
        c.total += c.buffered;
    }
    let columns = include_columns(req);
    if let (Some(cache), Some(m), Some(delta), true) = (tables.postings(), matched, flushed, pageable) {
        let p = postings::page(cache, delta, m, offset, count, &columns).await?;
        let mut references: References = Default::default();
        for (c, values) in &p.extra {
            for a in values {
                add_references(&mut references, c, a.as_ref(), 0);
            }
        }
        let mut plan = format!(
            "Page: from token postings of {} files: `id` read for the {} matches, `_raw`{} for the {} rows of the page; no other rows read",
            p.files,
            p.matches,
            if columns.is_empty() { String::new() } else { format!(" and {}", columns.join(", ")) },
            p.rows.len()
        );
        if let Some(c) = counted {
            plan.push_str(&total_note(c));
        }
        let total = counted.map(|c| c.total);
        return Ok(SearchPage { rows: p.rows, more: p.more, total, version: table.version(), plan, references });
    }
    let df = filtered(tables, scan(&table).await?, req).await?;
    let total = if wants_total {
        match counted {
            Some(c) => Some(c.total),
            None => Some(df.clone().count().await? as u64),
        }
    } else {
        None
    };
    let df = page_of(df, req, offset, count, &columns)?;
    let mut plan = df.logical_plan().display_indent().to_string();
    if let Some(c) = counted {
        plan.push_str(&total_note(c));
    }
    let mut references: References = Default::default();
    if count == 0 {
        return Ok(SearchPage { rows: vec![], more: false, total, version: table.version(), plan, references });
    }
    let batches = df.collect().await?;
    let mut rows = Vec::new();
    for b in &batches {
        for i in 0..b.num_rows() {
            if rows.len() == count {
                break; // the extra row only says that more follow
            }
            if let (Some(id), Some(raw)) = (string_at(b.column(0).as_ref(), i), string_at(b.column(1).as_ref(), i)) {
                rows.push((id.to_string(), raw.to_string()));
                for c in &columns {
                    if let Some(a) = b.column_by_name(c) {
                        add_references(&mut references, c, a.as_ref(), i);
                    }
                }
            }
        }
    }
    let more = batches.iter().map(RecordBatch::num_rows).sum::<usize>() > count;
    Ok(SearchPage { rows, more, total, version: table.version(), plan, references })
}

/// Rows `(id, served JSON)` of `resource_type` with the given ids.
async fn fetch(tables: &dyn SearchTables, resource_type: &str, ids: &[String]) -> Result<Vec<(String, String)>> {
    let Some(table) = tables.current(resource_type).await? else { return Ok(vec![]) };
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let df = scan(&table)
        .await?
        .filter(col("id").in_list(ids.iter().map(|i| lit(i.clone())).collect(), false))?
        .select(vec![col("id"), col("_raw")])?;
    Ok(rows_of(&df.collect().await?))
}

/// The reference columns that round one of `_include` reads on the searched type.
fn include_columns(req: &SearchRequest) -> Vec<String> {
    use fhirlake_schemas::search_index::{ParamKind, SearchIndex};
    let Ok(model) = fhirlake_schemas::Model::r4() else { return vec![] };
    let ix = SearchIndex::for_type(model, &req.resource_type);
    let mut out = Vec::new();
    for inc in req.includes.iter().filter(|i| i.source_type == req.resource_type) {
        for p in ix
            .params
            .iter()
            .filter(|p| p.kind == ParamKind::Reference && inc.param.as_ref().is_none_or(|c| *c == p.code))
        {
            if !out.contains(&p.column) {
                out.push(p.column.clone());
            }
        }
    }
    out
}

/// Per reference column, the `(type, id)` targets found on a page (no repeats).
pub type References = std::collections::HashMap<String, Vec<(String, String)>>;

/// Adds the targets of row `i` of the reference column `column` (values `a`).
fn add_references(references: &mut References, column: &str, a: &dyn Array, i: usize) {
    let found = references.entry(column.to_string()).or_default();
    for pair in reference_targets(a, i) {
        if !found.contains(&pair) {
            found.push(pair);
        }
    }
}

/// The `_explain` line of a total counted from postings.
fn total_note(c: postings::Counted) -> String {
    format!(
        "\nTotal: {} counted from token postings and file row counts ({} files, {} read now to build postings){}",
        c.total,
        c.files,
        c.built,
        if c.buffered > 0 {
            format!(", plus {} matching rows not in Delta yet (filtered alone); no Delta rows scanned", c.buffered)
        } else {
            "; no rows scanned".to_string()
        }
    )
}

/// `(type, id)` of the literal references in row `i` of a reference index column.
fn reference_targets(column: &dyn Array, i: usize) -> Vec<(String, String)> {
    let Some(list) = column.as_list_opt::<i32>() else { return vec![] };
    if list.is_null(i) {
        return vec![];
    }
    let values = list.values().as_struct();
    let (Some(t), Some(d)) = (values.column_by_name("type"), values.column_by_name("id")) else { return vec![] };
    let offsets = list.value_offsets();
    (offsets[i] as usize..offsets[i + 1] as usize)
        .filter_map(|j| Some((string_at(t.as_ref(), j)?.to_string(), string_at(d.as_ref(), j)?.to_string())))
        .collect()
}

/// The `(type, id)` targets of the reference columns `columns` of the given resources.
async fn targets_of(
    tables: &dyn SearchTables,
    resource_type: &str,
    ids: &[String],
    columns: &[String],
) -> Result<Vec<(String, String)>> {
    let Some(table) = tables.current(resource_type).await? else { return Ok(vec![]) };
    if ids.is_empty() || columns.is_empty() {
        return Ok(vec![]);
    }
    let df = scan(&table)
        .await?
        .filter(col("id").in_list(ids.iter().map(|i| lit(i.clone())).collect(), false))?
        .select(columns.iter().map(|c| ident(c.as_str())).collect::<Vec<Expr>>())?;
    let mut out = Vec::new();
    for b in df.collect().await? {
        for c in b.columns() {
            for pair in (0..c.len()).flat_map(|i| reference_targets(c.as_ref(), i)) {
                if !out.contains(&pair) {
                    out.push(pair);
                }
            }
        }
    }
    Ok(out)
}

/// The resources `_include` and `_revinclude` add to a page of matches (`(type, id)` of
/// each), as `(type, id, served JSON)`, without repeating a match or each other.
/// `:iterate` repeats on the included resources (at most 4 rounds).
pub async fn included(
    tables: &dyn SearchTables,
    model: &'static fhirlake_schemas::Model,
    req: &SearchRequest,
    page: &SearchPage,
) -> Result<Vec<(String, String, String)>> {
    let matches: Vec<(String, String)> =
        page.rows.iter().map(|(id, _)| (req.resource_type.clone(), id.clone())).collect();
    use fhirlake_schemas::search_index::{ParamKind, SearchIndex};
    let mut seen: HashSet<(String, String)> = matches.iter().cloned().collect();
    let mut out = Vec::new();
    let mut frontier: Vec<(String, String)> = matches.clone();
    for round in 0..4 {
        let mut found: Vec<(String, String)> = Vec::new();
        for inc in req.includes.iter().filter(|i| round == 0 || i.iterate) {
            let ids: Vec<String> =
                frontier.iter().filter(|(t, _)| *t == inc.source_type).map(|(_, i)| i.clone()).collect();
            let ix = SearchIndex::for_type(model, &inc.source_type);
            let columns: Vec<String> = ix
                .params
                .iter()
                .filter(|p| p.kind == ParamKind::Reference && inc.param.as_ref().is_none_or(|c| *c == p.code))
                .map(|p| p.column.clone())
                .collect();
            // Round one on the searched type: the page already read these columns.
            let targets = if round == 0 && inc.source_type == req.resource_type {
                columns.iter().flat_map(|c| page.references.get(c).cloned().unwrap_or_default()).collect()
            } else {
                targets_of(tables, &inc.source_type, &ids, &columns).await?
            };
            for (t, i) in targets {
                if inc.target_type.as_ref().is_none_or(|w| *w == t) && model.is_resource_type(&t) {
                    found.push((t, i));
                }
            }
        }
        for inc in req.revincludes.iter().filter(|i| round == 0 || i.iterate) {
            let ix = SearchIndex::for_type(model, &inc.source_type);
            let targets: HashSet<(String, String)> = frontier.iter().cloned().collect();
            let Some(table) = tables.current(&inc.source_type).await? else { continue };
            let mut filter: Option<Expr> = None;
            for p in ix
                .params
                .iter()
                .filter(|p| p.kind == ParamKind::Reference && inc.param.as_ref().is_none_or(|c| *c == p.code))
            {
                let e = match_expr(
                    &p.column,
                    format!("{}:{} -> page", inc.source_type, p.code),
                    ClauseMatcher::references(targets.clone()),
                );
                filter = Some(match filter {
                    Some(f) => f.or(e),
                    None => e,
                });
            }
            let Some(filter) = filter else { continue };
            let batches = scan(&table).await?.filter(filter)?.select(vec![col("id")])?.collect().await?;
            found.extend(ids_of(&batches, "id").into_iter().map(|i| (inc.source_type.clone(), i)));
        }
        let mut next = Vec::new();
        let mut by_type: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for pair in found {
            if seen.insert(pair.clone()) {
                by_type.entry(pair.0.clone()).or_default().push(pair.1.clone());
                next.push(pair);
            }
        }
        for (t, ids) in by_type {
            for (id, raw) in fetch(tables, &t, &ids).await? {
                out.push((t.clone(), id, raw));
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    Ok(out)
}

/// Every resource in the Patient compartment of `patient_id` (the patient itself, and
/// every resource of `types` whose `_compartment_patients` holds it), as
/// `(type, id, served JSON)`, ordered by type then id.
pub async fn patient_compartment(
    tables: &dyn SearchTables,
    types: &[String],
    patient_id: &str,
) -> Result<Vec<(String, String, String)>> {
    use datafusion::functions_nested::expr_fn::array_has;
    let mut out = Vec::new();
    let mut types: Vec<&String> = types.iter().collect();
    types.sort();
    for rt in types {
        let Some(table) = tables.current(rt).await? else { continue };
        let df = scan(&table).await?;
        let filter = if rt == "Patient" {
            col("id").eq(lit(patient_id))
        } else if df.schema().has_column_with_unqualified_name("_compartment_patients") {
            array_has(col("_compartment_patients"), lit(patient_id))
        } else {
            continue;
        };
        let batches = df
            .filter(filter)?
            .sort(vec![col("id").sort(true, false)])?
            .select(vec![col("id"), col("_raw")])?
            .collect()
            .await?;
        out.extend(rows_of(&batches).into_iter().map(|(id, raw)| (rt.clone(), id, raw)));
    }
    Ok(out)
}

/// `df` (a current table) restricted to the matches of `req`'s clauses and `_has`.
pub async fn filtered(tables: &dyn SearchTables, mut df: DataFrame, req: &SearchRequest) -> Result<DataFrame> {
    for f in clause_filters(tables, &req.resource_type, &req.clauses).await? {
        df = df.filter(f)?;
    }
    for h in &req.has {
        df = df.filter(has_filter(tables, &req.resource_type, h).await?)?;
    }
    Ok(df)
}

/// Sorted (`_sort`, then `id`), one page (plus one row, to know whether more follow):
/// `id`, `_raw` and the `extra` columns.
pub fn page_of(df: DataFrame, req: &SearchRequest, offset: usize, count: usize, extra: &[String]) -> Result<DataFrame> {
    let mut sort = Vec::new();
    for k in &req.sort {
        let key = match k.code.as_str() {
            "_lastUpdated" => col("_last_updated"),
            "_id" => col("id"),
            _ => sort_key_expr(k)?,
        };
        sort.push(key.sort(!k.descending, k.descending));
    }
    sort.push(col("id").sort(true, false));
    let mut columns = vec![col("id"), col("_raw")];
    columns.extend(extra.iter().map(|c| ident(c.as_str())));
    Ok(df.sort(sort)?.limit(offset, Some(count + 1))?.select(columns)?)
}

/// A sortable scalar of an index column: the first value's start (dates), value
/// (numbers, quantities), or text (strings: normalized; tokens: code; references:
/// reference; uris).
fn sort_key_expr(k: &fhirlake_schemas::search::SortKey) -> Result<Expr> {
    use datafusion::functions::core::expr_fn::get_field;
    use datafusion::functions_nested::expr_fn::array_element;
    use fhirlake_schemas::search_index::ParamKind;
    let first = array_element(ident(&k.column), lit(1i64));
    Ok(match &k.kind {
        ParamKind::Date => get_field(first, if k.descending { "end" } else { "start" }),
        ParamKind::String => get_field(first, "norm"),
        ParamKind::Token => get_field(first, "code"),
        ParamKind::Reference => get_field(first, "reference"),
        ParamKind::Quantity => get_field(first, "value"),
        ParamKind::Number | ParamKind::Uri => first,
        ParamKind::Composite(_) => return Err(Error::BadSearch(format!("cannot sort on the composite '{}'", k.code))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirlake_schemas::{Model, ShapeOptions, TableShape};

    struct NoTables;

    impl SearchTables for NoTables {
        fn current<'a>(&'a self, _: &'a str) -> futures::future::BoxFuture<'a, Result<Option<TableView>>> {
            Box::pin(async { Ok(None) })
        }
    }

    /// The logical plan of a search over an empty table of the type's real schema.
    async fn plan(rt: &str, query: &str) -> String {
        let model = Model::r4().unwrap();
        let pairs: Vec<(String, String)> = query
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        let req = fhirlake_schemas::search::parse(model, rt, &pairs).unwrap();
        let schema = Arc::new(TableShape::try_new(model, rt, ShapeOptions::default()).unwrap().arrow_schema());
        let ctx = SessionContext::new_with_config(session_config());
        let df = ctx.read_batch(RecordBatch::new_empty(schema)).unwrap();
        let df = filtered(&NoTables, df, &req).await.unwrap();
        let df = page_of(df, &req, 0, req.count.unwrap_or(20), &[]).unwrap();
        df.logical_plan().display_indent().to_string()
    }

    #[tokio::test]
    async fn plans_of_representative_searches() {
        let cases = [
            ("Observation", "code=http://loinc.org|8302-2&patient=Patient/123"),
            // The owner filter: a bare id names a Patient for `patient`, not for `subject`
            // (which may point at a Group); never for `performer` (repeats, not first).
            ("Observation", "patient=123,456"),
            ("Observation", "subject=123"),
            ("Observation", "performer=Patient/123"),
            ("Patient", "family=chal&birthdate=ge1970-01&_sort=-birthdate&_count=10"),
            ("Observation", "value-quantity=gt5.4|http://unitsofmeasure.org|mg/dL"),
            ("Observation", "component-code-value-quantity=http://loinc.org|8480-6$lt60"),
            ("Patient", "gender:missing=true&_sort=_lastUpdated"),
            ("Condition", "code:not=http://snomed.info/sct|44054006,http://snomed.info/sct|38341003"),
        ];
        let mut out = String::new();
        for (rt, q) in cases {
            out.push_str(&format!("## {rt}?{q}\n{}\n\n", plan(rt, q).await));
        }
        insta::assert_snapshot!(out);
    }

    /// A valid value for a parameter of `kind`.
    fn sample(kind: &fhirlake_schemas::search_index::ParamKind) -> String {
        use fhirlake_schemas::search_index::ParamKind::*;
        match kind {
            Token => "http://x|y".into(),
            String => "abc".into(),
            Date => "ge2020-01".into(),
            Number => "gt1.5".into(),
            Quantity => "lt5|http://unitsofmeasure.org|mg".into(),
            Reference => "Patient/1".into(),
            Uri => "http://x".into(),
            Composite(cs) => cs.iter().map(|c| sample(&c.kind)).collect::<Vec<_>>().join("$"),
        }
    }

    #[tokio::test]
    async fn every_parameter_of_every_type_plans_and_runs() {
        let model = Model::r4().unwrap();
        let mut n = 0;
        for rt in model.resource_types() {
            let ix = fhirlake_schemas::search_index::SearchIndex::for_type(model, rt);
            let schema = Arc::new(TableShape::try_new(model, rt, ShapeOptions::default()).unwrap().arrow_schema());
            let ctx = SessionContext::new_with_config(session_config());
            let mut pairs: Vec<(String, String)> =
                ix.params.iter().map(|p| (p.code.clone(), sample(&p.kind))).collect();
            pairs.push((
                "_sort".into(),
                ix.params
                    .iter()
                    .filter(|p| !matches!(p.kind, fhirlake_schemas::search_index::ParamKind::Composite(_)))
                    .map(|p| p.code.clone())
                    .collect::<Vec<_>>()
                    .join(","),
            ));
            let req = fhirlake_schemas::search::parse(model, rt, &pairs).unwrap_or_else(|e| panic!("{rt}: {e}"));
            let df = ctx.read_batch(RecordBatch::new_empty(schema)).unwrap();
            let df = filtered(&NoTables, df, &req).await.unwrap_or_else(|e| panic!("{rt}: {e}"));
            let df = page_of(df, &req, 0, 10, &[]).unwrap_or_else(|e| panic!("{rt}: {e}"));
            let rows: usize =
                df.collect().await.unwrap_or_else(|e| panic!("{rt}: {e}")).iter().map(RecordBatch::num_rows).sum();
            assert_eq!(rows, 0);
            n += req.clauses.len();
        }
        assert!(n > 1300, "{n} clauses planned");
    }

    #[tokio::test]
    async fn a_chain_with_no_target_table_matches_nothing() {
        let p = plan("Observation", "subject:Patient.name=peter").await;
        assert!(p.contains("fhir_match(?table?._sp_subject") && p.contains("subject:Patient.name"), "{p}");
    }
}
