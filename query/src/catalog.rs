//! The SQL catalog: one DataFusion session over an instance's Delta tables, read-only and
//! sandboxed.
//!
//! Owns: naming — the current table of a type is `Patient`, `patient` or `PATIENT` (table
//! names resolve case-insensitively), its history table `history.patient` (also
//! `patient_history`), a materialized view `views.<name>`; identifier handling (FHIR names
//! are case-sensitive, so unquoted identifiers are not lower-cased: `SELECT id, birthDate
//! FROM patient` works as written); and the sandbox: only `SELECT`/`WITH`/`VALUES`/
//! `EXPLAIN`/`SHOW`/`DESCRIBE` statements, no DDL/DML/`COPY`/`SET`, only registered tables
//! (no file paths or URLs as tables), bounded SQL length, planning on a thread with a
//! known stack, a memory pool per query and a wall-time limit ([`SqlLimits`]).
//! Must not: write.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use deltalake::{DeltaTable, DeltaTableBuilder};
use object_store::ObjectStore;
use url::Url;

use fhirlake_schemas::layout::{self, TableKind};

use crate::buffered::{TableView, Unflushed};
use crate::search::rows::{RowPolicies, RowPolicy};
use crate::{Error, Result};

/// The session configuration used for all fhirlake SQL.
pub fn session_config() -> SessionConfig {
    let mut config = SessionConfig::new().with_information_schema(true);
    config.options_mut().sql_parser.enable_ident_normalization = false;
    config
}

/// [`session_config`] plus Parquet filter pushdown (filters run while scanning, other
/// columns are decoded only for matching rows): searches and view plans.
pub fn scan_session_config() -> SessionConfig {
    let mut config = session_config();
    config.options_mut().execution.parquet.pushdown_filters = true;
    config.options_mut().execution.parquet.reorder_filters = true;
    config
}

/// Bounds on one SQL query.
#[derive(Debug, Clone, Copy)]
pub struct SqlLimits {
    /// Longest SQL text accepted, in bytes.
    pub max_sql_bytes: usize,
    /// Memory the query's operators may reserve (sorts, joins, aggregates); beyond it the
    /// query fails with a resources-exhausted error.
    pub memory_bytes: usize,
    /// Wall-time limit for planning and running.
    pub timeout: Duration,
    /// Stack size of the planning thread (deeply nested SQL recurses in the planner).
    pub planner_stack_bytes: usize,
}

impl SqlLimits {
    /// Stack of the planning thread: room for SQL nested as deep as the sandbox allows.
    pub const PLANNER_STACK_BYTES: usize = 64 * 1024 * 1024;
}

/// A schema whose table names resolve case-insensitively; providers are created on first
/// use, so a session over hundreds of tables costs nothing until a table is read.
#[derive(Default)]
struct TableSchema {
    /// lower-case name -> (display name, table)
    tables: BTreeMap<String, (String, Source)>,
}

/// Where a table's rows come from: its Delta table and, for the current and history
/// tables of a live instance, the acknowledged writes it does not hold yet.
#[derive(Clone)]
struct Source {
    delta: Option<DeltaTable>,
    unflushed: Option<(Arc<dyn Unflushed>, Layer)>,
    /// The rows the session may read, when not all.
    policy: Option<Arc<RowPolicy>>,
}

#[derive(Clone)]
enum Layer {
    Current(String),
    History(String),
}

impl Source {
    fn delta(t: DeltaTable) -> Self {
        Source { delta: Some(t), unflushed: None, policy: None }
    }

    async fn provider(&self) -> Result<Arc<dyn TableProvider>> {
        let policy = self.policy.clone();
        match &self.unflushed {
            None => match &self.delta {
                Some(t) if policy.is_none() => Ok(t.table_provider().await?),
                Some(t) => TableView::of(t.clone()).restricted(policy).provider().await,
                None => Err(Error::BadSql("a table with no rows source".into())),
            },
            Some((u, Layer::Current(rt))) => {
                TableView { delta: self.delta.clone(), buffered: u.current(rt).await?, policy }.provider().await
            }
            Some((u, Layer::History(rt))) => {
                TableView::history(self.delta.clone(), u.history(rt)?).restricted(policy).provider().await
            }
        }
    }
}

impl fmt::Debug for TableSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableSchema").field("tables", &self.tables.keys().collect::<Vec<_>>()).finish()
    }
}

#[async_trait::async_trait]
impl SchemaProvider for TableSchema {
    fn table_names(&self) -> Vec<String> {
        self.tables.values().map(|(n, _)| n.clone()).collect()
    }

    async fn table(&self, name: &str) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        match self.tables.get(&name.to_lowercase()) {
            Some((_, t)) => Ok(Some(t.provider().await.map_err(|e| DataFusionError::External(Box::new(e)))?)),
            None => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains_key(&name.to_lowercase())
    }
}

/// The tables of a session, by kind.
#[derive(Default)]
pub struct Tables {
    /// Current tables by resource type.
    pub current: Vec<(String, DeltaTable)>,
    /// History tables by resource type.
    pub history: Vec<(String, DeltaTable)>,
    /// Materialized views by name.
    pub views: Vec<(String, DeltaTable)>,
    /// Acknowledged writes the current and history tables do not hold yet (a live
    /// instance); their types get tables even before a first flush.
    pub unflushed: Option<Arc<dyn Unflushed>>,
    /// The rows the session may read of each type, when not all: applied inside every
    /// current, history and `as_of` table, whatever the SQL; a type with no readable row
    /// has no table at all, and materialized views (which do not carry row owners yet) are
    /// left out.
    pub policies: Option<Arc<dyn RowPolicies>>,
}

/// A read-only SQL session.
pub struct SqlSession {
    ctx: SessionContext,
    limits: SqlLimits,
}

impl SqlSession {
    /// A session with no tables.
    pub fn new(limits: SqlLimits) -> Self {
        Self::with_tables(Tables::default(), limits).expect("an empty session builds")
    }

    /// A session over `tables` (names as given; lookups ignore case).
    pub fn with_tables(tables: Tables, limits: SqlLimits) -> Result<Self> {
        let runtime =
            RuntimeEnvBuilder::new().with_memory_pool(Arc::new(FairSpillPool::new(limits.memory_bytes))).build_arc()?;
        let ctx = SessionContext::new_with_config_rt(session_config(), runtime);
        cap_sized_functions(&ctx);
        crate::functions::register(&ctx);
        let mut public = TableSchema::default();
        let mut history = TableSchema::default();
        let mut views = TableSchema::default();
        for (rt, t) in tables.current {
            t.update_datafusion_session(&ctx.state())?;
            public.tables.insert(rt.to_lowercase(), (rt, Source::delta(t)));
        }
        for (rt, t) in tables.history {
            t.update_datafusion_session(&ctx.state())?;
            history.tables.insert(rt.to_lowercase(), (rt, Source::delta(t)));
        }
        if let Some(u) = &tables.unflushed {
            for rt in u.types() {
                for (schema, layer) in
                    [(&mut public, Layer::Current(rt.clone())), (&mut history, Layer::History(rt.clone()))]
                {
                    let entry = schema
                        .tables
                        .entry(rt.to_lowercase())
                        .or_insert_with(|| (rt.clone(), Source { delta: None, unflushed: None, policy: None }));
                    entry.1.unflushed = Some((u.clone(), layer));
                }
            }
        }
        if let Some(p) = &tables.policies {
            for schema in [&mut public, &mut history] {
                let mut hidden = Vec::new();
                for (k, (rt, source)) in schema.tables.iter_mut() {
                    source.policy = p.rows(rt)?;
                    if source.policy.as_ref().is_some_and(|p| p.rules.is_empty()) {
                        hidden.push(k.clone());
                    }
                }
                for k in hidden {
                    schema.tables.remove(&k);
                }
            }
        }
        // `patient_history` in the default schema too (the name earlier releases used).
        for (k, (rt, source)) in history.tables.clone() {
            public.tables.insert(format!("{k}_history"), (format!("{rt}_history"), source));
        }
        for (name, t) in tables.views.into_iter().filter(|_| tables.policies.is_none()) {
            t.update_datafusion_session(&ctx.state())?;
            views.tables.insert(name.to_lowercase(), (name, Source::delta(t)));
        }
        // Time travel reads Delta versions: the state flushed by then (under the same
        // row policies).
        let mut all: BTreeMap<String, (DeltaTable, Option<Arc<RowPolicy>>)> = BTreeMap::new();
        for (k, (_, t)) in &public.tables {
            if let Some(d) = &t.delta {
                all.insert(k.clone(), (d.clone(), t.policy.clone()));
            }
        }
        for (k, (_, t)) in &history.tables {
            if let Some(d) = &t.delta {
                all.insert(format!("history.{k}"), (d.clone(), t.policy.clone()));
            }
        }
        for (k, (_, t)) in &views.tables {
            if let Some(d) = &t.delta {
                all.insert(format!("views.{k}"), (d.clone(), t.policy.clone()));
            }
        }
        ctx.register_udtf("as_of", Arc::new(AsOf { tables: all }));
        let catalog = ctx.catalog("datafusion").ok_or_else(|| Error::BadSql("no default catalog".into()))?;
        catalog.register_schema("public", Arc::new(public))?;
        catalog.register_schema("history", Arc::new(history))?;
        catalog.register_schema("views", Arc::new(views))?;
        Ok(Self { ctx, limits })
    }

    /// Opens every table under a storage root (`<root>/resources/*`, `<root>/history/*`,
    /// `<root>/views/*`).
    pub async fn open_root(root: &Url, store: Arc<dyn ObjectStore>, limits: SqlLimits) -> Result<Self> {
        let mut tables = Tables::default();
        // The writer's watermark: each table's version after the last fully applied group
        // commit. Tables are opened at it, so a transaction being applied is invisible.
        let under_root =
            |relative: &str| object_store::path::Path::from(format!("{}/{relative}", root.path().trim_matches('/')));
        let watermark =
            match object_store::ObjectStoreExt::get(store.as_ref(), &under_root(layout::WATERMARK_PATH)).await {
                Ok(r) => Some(
                    layout::decode::<layout::Watermark>(layout::WATERMARK_PATH, &r.bytes().await?)
                        .map_err(Error::Storage)?,
                ),
                Err(_) => None,
            };
        for kind in TableKind::ALL {
            let folder = kind.folder();
            let prefix = under_root(folder);
            let listing = store.list_with_delimiter(Some(&prefix)).await?;
            for p in listing.common_prefixes {
                let Some(name) = p.filename().map(str::to_string) else { continue };
                let url = root.join(&format!("{folder}/{name}/")).map_err(|e| Error::BadSql(e.to_string()))?;
                let mut table =
                    DeltaTableBuilder::from_url(url.clone())?.with_storage_backend(store.clone(), url).build()?;
                if table.load().await.is_err() {
                    continue;
                }
                if let Some(w) = watermark.as_ref().filter(|_| kind != TableKind::View) {
                    match w.version_of(kind, &name) {
                        // Created by a group commit that is not fully applied yet.
                        None => continue,
                        Some(v) if table.version().is_some_and(|cur| cur > v) => table.load_version(v).await?,
                        Some(_) => {}
                    }
                }
                match kind {
                    TableKind::Current => tables.current.push((name, table)),
                    TableKind::History => tables.history.push((name, table)),
                    TableKind::View => tables.views.push((name, table)),
                    // fhirlake's own tables (audit, device data) get their access rules with
                    // the features that write them; not in the SQL catalog until then.
                    TableKind::System => {}
                }
            }
        }
        Self::with_tables(tables, limits)
    }

    /// The limits this session applies.
    pub fn limits(&self) -> SqlLimits {
        self.limits
    }

    /// Checks and plans `query` (with `$1`/`$name` parameters bound), on a thread with the
    /// configured stack. Refusals are [`Error::BadSql`] (syntax, unknown table) or
    /// [`Error::Forbidden`] (a statement the sandbox does not run).
    pub async fn plan(&self, query: &str, params: Option<ParamValues>) -> Result<DataFrame> {
        if query.len() > self.limits.max_sql_bytes {
            return Err(Error::TooLarge(format!(
                "the SQL text is {} bytes; the limit is {} bytes",
                query.len(),
                self.limits.max_sql_bytes
            )));
        }
        let ctx = self.ctx.clone();
        let text = query.to_string();
        let stack = self.limits.planner_stack_bytes;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("fhirlake-sql-plan".into())
            .stack_size(stack)
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
                let out = match rt {
                    Ok(rt) => rt.block_on(plan_checked(&ctx, &text)),
                    Err(e) => Err(Error::BadSql(format!("cannot start the planner: {e}"))),
                };
                let _ = tx.send(out);
            })
            .map_err(|e| Error::BadSql(format!("cannot start the planner: {e}")))?;
        let planned = tokio::time::timeout(self.limits.timeout, rx)
            .await
            .map_err(|_| Error::Timeout(format!("planning took longer than {:?}", self.limits.timeout)))?
            .map_err(|_| Error::BadSql("the planner stopped".into()))??;
        Ok(match params {
            Some(p) => planned.with_param_values(p).map_err(sql_error)?,
            None => planned,
        })
    }

    /// Runs a read-only query and collects the result (within the time limit).
    pub async fn sql(&self, query: &str) -> Result<Vec<RecordBatch>> {
        let df = self.plan(query, None).await?;
        tokio::time::timeout(self.limits.timeout, df.collect())
            .await
            .map_err(|_| Error::Timeout(format!("the query ran longer than {:?}", self.limits.timeout)))?
            .map_err(Error::from)
    }
}

/// Statement kinds the sandbox runs; everything else is refused before planning.
async fn plan_checked(ctx: &SessionContext, text: &str) -> Result<DataFrame> {
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let statements = datafusion::sql::parser::DFParser::parse_sql_with_dialect(
        text,
        datafusion::sql::sqlparser::dialect::dialect_from_str(dialect)
            .as_deref()
            .unwrap_or(&datafusion::sql::sqlparser::dialect::GenericDialect {}),
    )
    .map_err(|e| Error::BadSql(e.to_string()))?;
    if statements.len() != 1 {
        return Err(Error::BadSql(format!("send exactly one statement, not {}", statements.len())));
    }
    use datafusion::sql::parser::Statement as DF;
    use datafusion::sql::sqlparser::ast::Statement as S;
    fn read_only(s: &DF) -> bool {
        match s {
            DF::Statement(s) => match s.as_ref() {
                S::Query(_) | S::ShowTables { .. } | S::ShowColumns { .. } | S::ExplainTable { .. } => true,
                S::Explain { statement, analyze, .. } => !*analyze && matches!(statement.as_ref(), S::Query(_)),
                _ => false,
            },
            // EXPLAIN of a query (not ANALYZE, which runs it outside the limits).
            DF::Explain(e) => !e.options.analyze && read_only(&e.statement),
            _ => false,
        }
    }
    let allowed = read_only(&statements[0]);
    if let DF::Statement(st) = &statements[0] {
        let depth = expression_depth(st);
        if depth > MAX_EXPRESSION_DEPTH {
            return Err(Error::BadSql(format!(
                "expressions nest {depth} deep; the limit is {MAX_EXPRESSION_DEPTH} (split the query or use IN (...))"
            )));
        }
    }
    if !allowed {
        return Err(Error::Forbidden(
            "only read-only queries run here (SELECT, WITH, VALUES, EXPLAIN, SHOW TABLES, DESCRIBE); \
             DDL, DML, COPY and SET are refused"
                .into(),
        ));
    }
    let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    ctx.sql_with_options(text, options).await.map_err(sql_error)
}

/// Deepest expression nesting accepted: the planner and optimizer recurse over expression
/// trees, and `1 + 1 + ... + 1` parses without recursion into a tree as deep as it is long.
pub const MAX_EXPRESSION_DEPTH: usize = 256;

/// How deep expressions nest in `statement`.
fn expression_depth(statement: &datafusion::sql::sqlparser::ast::Statement) -> usize {
    use std::ops::ControlFlow;

    use datafusion::sql::sqlparser::ast::{Expr, Visit, Visitor};
    struct Depth {
        now: usize,
        max: usize,
    }
    impl Visitor for Depth {
        type Break = ();
        fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.now += 1;
            self.max = self.max.max(self.now);
            // Deep enough to refuse: stop walking (the walk itself recurses).
            if self.now > MAX_EXPRESSION_DEPTH { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        }
        fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.now -= 1;
            ControlFlow::Continue(())
        }
    }
    let mut d = Depth { now: 0, max: 0 };
    let _ = statement.visit(&mut d);
    d.max
}

fn sql_error(e: DataFusionError) -> Error {
    match e {
        DataFusionError::Plan(m) => Error::BadSql(m),
        DataFusionError::SQL(e, _) => Error::BadSql(e.to_string()),
        DataFusionError::SchemaError(e, _) => Error::BadSql(e.to_string()),
        DataFusionError::NotImplemented(m) => Error::BadSql(format!("not supported: {m}")),
        DataFusionError::Diagnostic(d, inner) => match sql_error(*inner) {
            Error::BadSql(_) => Error::BadSql(d.message.clone()),
            other => other,
        },
        DataFusionError::Context(c, inner) => match sql_error(*inner) {
            Error::BadSql(m) => Error::BadSql(format!("{c}: {m}")),
            other => other,
        },
        other => Error::DataFusion(other),
    }
}

/// Time travel: `as_of('patient', 3)` is the table at Delta version 3,
/// `as_of('history.patient', '2026-11-26T10:00:00Z')` the table as of that instant (the last
/// version committed at or before it). Any table of the session can be named.
struct AsOf {
    tables: BTreeMap<String, (DeltaTable, Option<Arc<RowPolicy>>)>,
}

impl fmt::Debug for AsOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsOf").field("tables", &self.tables.len()).finish()
    }
}

impl datafusion::catalog::TableFunctionImpl for AsOf {
    fn call_with_args(
        &self,
        args: datafusion::catalog::TableFunctionArgs,
    ) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        use datafusion::common::ScalarValue;
        use datafusion::logical_expr::Expr;
        let usage = || {
            DataFusionError::Plan(
                "as_of(table, version) or as_of(table, 'RFC 3339 instant'), e.g. as_of('patient', 3)".into(),
            )
        };
        let text = |e: &Expr| match e {
            Expr::Literal(
                ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)),
                _,
            ) => Some(s.clone()),
            _ => None,
        };
        let [name, at] = args.exprs() else { return Err(usage()) };
        let name = text(name).ok_or_else(usage)?;
        let key = name.to_lowercase();
        let key = key.strip_prefix("public.").unwrap_or(&key).to_string();
        let (mut table, policy) =
            self.tables.get(&key).cloned().ok_or_else(|| DataFusionError::Plan(format!("as_of: no table '{name}'")))?;
        enum At {
            Version(u64),
            Instant(chrono::DateTime<chrono::Utc>),
        }
        let at = match at {
            Expr::Literal(ScalarValue::Int64(Some(v)), _) if *v >= 0 => At::Version(*v as u64),
            other => {
                let t = text(other).ok_or_else(usage)?;
                let when = chrono::DateTime::parse_from_rfc3339(&t)
                    .map_err(|e| DataFusionError::Plan(format!("as_of: '{t}' is not an RFC 3339 instant: {e}")))?;
                At::Instant(when.with_timezone(&chrono::Utc))
            }
        };
        // Table functions are synchronous; the Delta log is read on a helper thread.
        let loaded = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    rt.block_on(async {
                        match at {
                            At::Version(v) => table.load_version(v).await,
                            At::Instant(t) => table.load_with_datetime(t).await,
                        }
                        .map_err(|e| format!("as_of('{name}'): {e}"))?;
                        TableView::of(table).restricted(policy).provider().await.map_err(|e| e.to_string())
                    })
                })
                .join()
                .map_err(|_| "as_of: the loader stopped".to_string())?
        });
        loaded.map_err(DataFusionError::Plan)
    }
}

/// Scalar functions whose output size a query chooses (`repeat('x', 1e9)`): the memory pool
/// tracks operators, not function results, so these are wrapped to refuse sizes over a cap.
/// (name, index of the size argument, whether the size multiplies the first argument's
/// length)
const SIZED_FUNCTIONS: &[(&str, usize, bool)] =
    &[("repeat", 1, true), ("lpad", 1, false), ("rpad", 1, false), ("array_repeat", 1, false)];

/// Largest value (characters or list elements) one call of a sized function may produce.
pub const MAX_FUNCTION_OUTPUT: i64 = 1_000_000;

#[derive(Debug)]
struct CappedUdf {
    inner: Arc<datafusion::logical_expr::ScalarUDF>,
    size_arg: usize,
    times_length: bool,
}

impl PartialEq for CappedUdf {
    fn eq(&self, other: &Self) -> bool {
        self.inner.name() == other.inner.name()
    }
}

impl Eq for CappedUdf {}

impl std::hash::Hash for CappedUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.name().hash(state);
    }
}

impl CappedUdf {
    fn check(&self, args: &datafusion::logical_expr::ScalarFunctionArgs) -> datafusion::error::Result<()> {
        use arrow::array::{Array, AsArray};
        use datafusion::logical_expr::ColumnarValue;
        let Some(size) = args.args.get(self.size_arg) else { return Ok(()) };
        let size = size.to_array(args.number_rows)?;
        let size = arrow::compute::cast(&size, &arrow::datatypes::DataType::Int64)?;
        let size = size.as_primitive::<arrow::datatypes::Int64Type>();
        let lengths: Option<arrow::array::ArrayRef> = match (&args.args[0], self.times_length) {
            (ColumnarValue::Array(a), true) => Some(arrow::compute::kernels::length::length(a)?),
            (ColumnarValue::Scalar(s), true) => Some(arrow::compute::kernels::length::length(&s.to_array()?)?),
            _ => None,
        };
        for i in 0..size.len() {
            if size.is_null(i) {
                continue;
            }
            let len = match &lengths {
                Some(l) => {
                    let l = arrow::compute::cast(l, &arrow::datatypes::DataType::Int64)?;
                    let l = l.as_primitive::<arrow::datatypes::Int64Type>();
                    if l.is_empty() { 1 } else { l.value(if l.len() == 1 { 0 } else { i }).max(1) }
                }
                None => 1,
            };
            if size.value(i).saturating_mul(len) > MAX_FUNCTION_OUTPUT {
                return Err(DataFusionError::ResourcesExhausted(format!(
                    "{}() would produce {} values in one row; the limit is {MAX_FUNCTION_OUTPUT}",
                    self.inner.name(),
                    size.value(i).saturating_mul(len)
                )));
            }
        }
        Ok(())
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for CappedUdf {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        self.inner.signature()
    }

    fn return_type(
        &self,
        args: &[arrow::datatypes::DataType],
    ) -> datafusion::error::Result<arrow::datatypes::DataType> {
        self.inner.return_type(args)
    }

    fn return_field_from_args(
        &self,
        args: datafusion::logical_expr::ReturnFieldArgs,
    ) -> datafusion::error::Result<arrow::datatypes::FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(
        &self,
        args: &[arrow::datatypes::DataType],
    ) -> datafusion::error::Result<Vec<arrow::datatypes::DataType>> {
        self.inner.coerce_types(args)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
        self.check(&args)?;
        self.inner.invoke_with_args(args)
    }
}

/// Replaces the sized functions of `ctx` by capped ones.
fn cap_sized_functions(ctx: &SessionContext) {
    let state = ctx.state();
    for (name, size_arg, times_length) in SIZED_FUNCTIONS {
        if let Some(inner) = state.scalar_functions().get(*name) {
            let capped = CappedUdf { inner: inner.clone(), size_arg: *size_arg, times_length: *times_length };
            ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(capped));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(q: &str) -> Result<Vec<RecordBatch>> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let limits = SqlLimits {
            max_sql_bytes: 256 * 1024,
            memory_bytes: 64 * 1024 * 1024,
            timeout: Duration::from_secs(30),
            planner_stack_bytes: SqlLimits::PLANNER_STACK_BYTES,
        };
        rt.block_on(SqlSession::new(limits).sql(q))
    }

    #[test]
    fn sandbox_refusals_are_client_errors() {
        for q in ["SELECT * FROM '/etc/passwd'", "SELECT * FROM read_csv('/etc/passwd')", "SELEC 1"] {
            match run(q) {
                Err(Error::BadSql(_)) => {}
                other => panic!("{q}: {other:?}"),
            }
        }
        for q in
            ["CREATE TABLE t AS SELECT 1", "COPY (SELECT 1) TO '/tmp/x.csv'", "SET a = 1", "EXPLAIN ANALYZE SELECT 1"]
        {
            match run(q) {
                Err(Error::Forbidden(_)) => {}
                other => panic!("{q}: {other:?}"),
            }
        }
        assert_eq!(run("SELECT 1 AS one").unwrap()[0].num_rows(), 1);
    }
}
