//! A current table as readers see it: the Delta table plus the rows of acknowledged writes
//! it does not hold yet.
//!
//! Owns: [`TableView`] (a Delta snapshot, the buffered rows of the same instant and the ids
//! whose Delta row those rows hide) and its DataFusion provider: the Delta scan without the
//! hidden ids, `UNION ALL` the buffered rows cast to the Delta scan's schema. The provider
//! is a view, so filters and projections still push down into the Delta scan, and it has
//! no statistics: `count(*)` is counted, never answered from Delta's file statistics while
//! rows are buffered. Must not: write, or decide which rows are buffered (the writer's
//! read view does).

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::catalog::memory::MemTable;
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{
    ColumnarValue, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::col;
use deltalake::DeltaTable;

use crate::search::matcher::string_at;
use crate::search::rows::RowPolicy;
use crate::{Error, Result};

/// Rows of a current table not yet in its Delta table.
#[derive(Debug, Clone)]
pub struct Buffered {
    /// The latest live row of each buffered id.
    pub batches: Vec<RecordBatch>,
    /// Ids whose row in Delta is out of date (updated or deleted since the last flush).
    pub shadow: Arc<HashSet<String>>,
    /// The schema the rows were built with.
    pub schema: SchemaRef,
}

/// The acknowledged writes a set of Delta tables does not hold yet, read lazily per table
/// (the root crate implements it over the writer's read view).
pub trait Unflushed: Send + Sync {
    /// Types with versions not in Delta yet.
    fn types(&self) -> Vec<String>;
    /// The current-table rows of `rt` not in Delta yet and the ids whose Delta row they
    /// hide; `None` when nothing of `rt` is buffered.
    fn current<'a>(&'a self, rt: &'a str) -> futures::future::BoxFuture<'a, Result<Option<Arc<Buffered>>>>;
    /// The history-table rows of `rt` not in Delta yet.
    fn history(&self, rt: &str) -> Result<Option<RecordBatch>>;
}

/// One type's current table at one instant.
#[derive(Debug, Clone, Default)]
pub struct TableView {
    /// The Delta table, when one exists.
    pub delta: Option<DeltaTable>,
    /// What it does not hold yet, when anything.
    pub buffered: Option<Arc<Buffered>>,
    /// The rows the reader may see, when not all ([`RowPolicy`]): applied to the union.
    pub policy: Option<Arc<RowPolicy>>,
}

impl TableView {
    /// A view of a Delta table with nothing buffered.
    pub fn of(delta: DeltaTable) -> Self {
        TableView { delta: Some(delta), buffered: None, policy: None }
    }

    /// The same view limited to the rows `policy` admits.
    pub fn restricted(mut self, policy: Option<Arc<RowPolicy>>) -> Self {
        self.policy = policy;
        self
    }

    /// A history table (append-only: nothing is shadowed) with the rows not in Delta yet.
    pub fn history(delta: Option<DeltaTable>, rows: Option<RecordBatch>) -> Self {
        let buffered =
            rows.map(|r| Arc::new(Buffered { schema: r.schema(), batches: vec![r], shadow: Arc::new(HashSet::new()) }));
        TableView { delta, buffered, policy: None }
    }

    /// True when the Delta table alone is the answer.
    pub fn is_flushed(&self) -> bool {
        self.buffered.as_ref().is_none_or(|b| b.batches.is_empty() && b.shadow.is_empty())
    }

    /// The Delta version read (page cursors).
    pub fn version(&self) -> Option<u64> {
        self.delta.as_ref().and_then(DeltaTable::version)
    }

    /// The DataFusion provider of this view (see the module docs), filtered by its row
    /// policy when it has one.
    pub async fn provider(&self) -> Result<Arc<dyn TableProvider>> {
        let all = self.union().await?;
        let Some(policy) = &self.policy else { return Ok(all) };
        let filter = policy.expr(all.schema().as_ref())?;
        let plan = LogicalPlanBuilder::scan("permitted", provider_as_source(all), None)?.filter(filter)?.build()?;
        Ok(Arc::new(datafusion::catalog::view::ViewTable::new(plan, None)))
    }

    /// Delta and the buffered rows, every row.
    async fn union(&self) -> Result<Arc<dyn TableProvider>> {
        let delta = match &self.delta {
            Some(t) => Some(t.table_provider().await?),
            None => None,
        };
        let (b, delta) = match (&self.buffered, delta) {
            (None, Some(d)) => return Ok(d),
            (Some(b), Some(d)) if b.batches.is_empty() && b.shadow.is_empty() => return Ok(d),
            (None, None) => return Err(Error::BadSql("a table view with neither Delta nor buffered rows".into())),
            (Some(b), d) => (b, d),
        };
        let schema = delta.as_ref().map_or_else(|| b.schema.clone(), |d| d.schema());
        let rows = b.batches.iter().map(|x| cast_to(x, &schema)).collect::<Result<Vec<_>>>()?;
        let memory: Arc<dyn TableProvider> = Arc::new(MemTable::try_new(schema.clone(), vec![rows])?);
        let Some(delta) = delta else { return Ok(memory) };
        let mut scan = LogicalPlanBuilder::scan("delta", provider_as_source(delta), None)?;
        if !b.shadow.is_empty() {
            let udf = ScalarUDF::new_from_impl(NotShadowed {
                ids: b.shadow.clone(),
                signature: Signature::any(1, Volatility::Immutable),
            });
            scan = scan.filter(udf.call(vec![col("id")]))?;
        }
        let plan =
            scan.union(LogicalPlanBuilder::scan("buffered", provider_as_source(memory), None)?.build()?)?.build()?;
        Ok(Arc::new(datafusion::catalog::view::ViewTable::new(plan, None)))
    }
}

/// `batch` with every column of `schema`, cast to its type (the Delta scan reads strings as
/// `Utf8View`; the flattener builds `Utf8`).
fn cast_to(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let c = match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => c.clone(),
            Some(c) => arrow::compute::cast(c, f.data_type())?,
            None => arrow::array::new_null_array(f.data_type(), batch.num_rows()),
        };
        columns.push(c);
    }
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

/// `fhir_not_shadowed(id)`: false for the ids whose Delta row a buffered write replaced.
#[derive(Debug)]
struct NotShadowed {
    ids: Arc<HashSet<String>>,
    signature: Signature,
}

impl PartialEq for NotShadowed {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.ids, &other.ids)
    }
}

impl Eq for NotShadowed {}

impl Hash for NotShadowed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.ids) as usize).hash(state);
    }
}

impl ScalarUDFImpl for NotShadowed {
    fn name(&self) -> &str {
        "fhir_not_shadowed"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        let ids = args.args[0].to_array(args.number_rows)?;
        let out: BooleanArray =
            (0..ids.len()).map(|i| Some(string_at(ids.as_ref(), i).is_none_or(|id| !self.ids.contains(id)))).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
