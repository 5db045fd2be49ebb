//! SQL-on-FHIR v2 ViewDefinitions as DataFusion plans.
//!
//! Owns: compiling a checked [`View`] to a plan over its resource type's current table
//! ([`compile`]), the row-by-row fallback (the reference runner over `_raw`, one UDF that
//! returns each resource's rows) for views the compiler does not cover, the output Arrow
//! schema of a view, and turning result batches into JSON rows.
//! Must not: write tables (materialization lives in the root crate, which owns writing).

mod compile;
pub mod output;
pub mod refresh;
pub mod udf;

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Int32Array, Int64Array, ListArray, RecordBatch,
    StringArray, StructArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields, Int32Type, Int64Type};
use datafusion::common::NullHandling;
use datafusion::common::UnnestOptions;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::functions::core::expr_fn::get_field;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::prelude::{DataFrame, ident};
use fhirlake_schemas::json::{Json, ParseLimits};
use fhirlake_schemas::model::Model;
use fhirlake_schemas::shape::{DECIMAL_PRECISION, DECIMAL_SCALE, TableShape, reserved};
pub use fhirlake_schemas::sof::{ColumnInfo, View, ViewError};

use crate::search::matcher::string_at;
use crate::{Error, Result};

/// A view ready to run: the frame of its rows and how it was planned.
pub struct ViewPlan {
    /// Output rows, columns in the view's order.
    pub df: DataFrame,
    /// Why the whole view runs row by row over `_raw`; `None` when it is compiled.
    pub fallback: Option<String>,
    /// In a compiled view, the top-level columns evaluated row by row over `_raw` (name and
    /// why); empty when every column compiled.
    pub row_by_row: Vec<String>,
    /// The output columns.
    pub columns: Vec<ColumnInfo>,
}

/// The view error behind a failed run (a column with several values, a non-boolean
/// `where`), as opposed to an internal failure.
pub fn view_error(e: &DataFusionError) -> Option<ViewError> {
    match e.find_root() {
        DataFusionError::External(b) => b.downcast_ref::<ViewError>().cloned(),
        _ => None,
    }
}

/// Plans `view` over `table` (the current table of `view.resource`, shaped by `shape`).
/// With `source_id`, each row also carries the key of its resource as `_source_id` (last
/// column), which materialized views use to refresh incrementally. An invalid view is
/// [`Error::BadView`].
pub fn plan(
    model: &'static Model,
    view: Arc<View>,
    shape: &TableShape,
    table: DataFrame,
    source_id: bool,
) -> Result<ViewPlan> {
    let columns = view.columns();
    match compile::compile(model, &view, shape, table.clone(), source_id) {
        Ok((df, row_by_row)) => Ok(ViewPlan { df, fallback: None, row_by_row, columns }),
        Err(compile::Failure::Invalid(e)) => Err(Error::BadView(e)),
        Err(compile::Failure::Fallback(why)) => {
            let df = fallback(model, view, table, source_id)?;
            Ok(ViewPlan { df, fallback: Some(why.0), row_by_row: vec![], columns })
        }
    }
}

/// The Arrow type of an output column: from its declared FHIR type, else the type the
/// compiler inferred, else text. Collections are lists of it.
pub fn output_type(info: &ColumnInfo, inferred: Option<DataType>) -> DataType {
    let item = match info.fhir_type.as_deref() {
        Some("boolean") => DataType::Boolean,
        Some("integer" | "positiveInt" | "unsignedInt") => DataType::Int32,
        Some("integer64") => DataType::Int64,
        Some("decimal") => DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE),
        Some(_) => DataType::Utf8,
        None => inferred.unwrap_or(DataType::Utf8),
    };
    if info.collection { udf::list_of(item) } else { item }
}

/// The view run row by row: each resource's `_raw` through the reference runner.
fn fallback(model: &'static Model, view: Arc<View>, table: DataFrame, source_id: bool) -> Result<DataFrame> {
    let fields: Fields = view.columns().iter().map(|c| Field::new(&c.name, output_type(c, None), true)).collect();
    let udf = ScalarUDF::new_from_impl(ViewRowsUdf {
        model,
        label: view.name.clone().unwrap_or_else(|| view.resource.clone()),
        view: view.clone(),
        fields: fields.clone(),
        signature: Signature::any(1, Volatility::Immutable),
    });
    let df = table.select(vec![udf.call(vec![ident(reserved::RAW)]).alias("__rows"), ident("id").alias("__source")])?;
    let df =
        df.unnest_columns_with_options(&["__rows"], UnnestOptions::new().with_null_handling(NullHandling::Drop))?;
    let mut out = fields.iter().map(|f| get_field(ident("__rows"), f.name()).alias(f.name())).collect::<Vec<_>>();
    if source_id {
        out.push(datafusion::prelude::cast(ident("__source"), DataType::Utf8).alias(reserved::SOURCE_ID));
    }
    Ok(df.select(out)?)
}

/// One top-level column evaluated row by row: its path on each resource's `_raw`.
pub(crate) fn column_udf(
    model: &'static Model,
    view: Arc<View>,
    column: fhirlake_schemas::sof::Column,
) -> datafusion::prelude::Expr {
    let info =
        ColumnInfo { name: column.name.clone(), fhir_type: column.fhir_type.clone(), collection: column.collection };
    let out = output_type(&info, None);
    let udf = ScalarUDF::new_from_impl(ColumnUdf {
        model,
        label: column.location.clone(),
        view,
        column,
        out,
        signature: Signature::any(1, Volatility::Immutable),
    });
    udf.call(vec![ident(reserved::RAW)])
}

struct ColumnUdf {
    model: &'static Model,
    label: String,
    view: Arc<View>,
    column: fhirlake_schemas::sof::Column,
    out: DataType,
    signature: Signature,
}

impl std::fmt::Debug for ColumnUdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fhir_column({})", self.label)
    }
}

impl PartialEq for ColumnUdf {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.view, &other.view) && self.label == other.label
    }
}

impl Eq for ColumnUdf {}

impl Hash for ColumnUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.label.hash(state);
    }
}

impl ScalarUDFImpl for ColumnUdf {
    fn name(&self) -> &str {
        "fhir_column"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(self.out.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let raw = args.args[0].to_array(args.number_rows)?;
        let mut values = Vec::with_capacity(raw.len());
        for i in 0..raw.len() {
            values.push(match stored_resource(raw.as_ref(), i)? {
                Some(json) => self
                    .view
                    .column_on_resource(self.model, &json, &self.column)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?,
                None => Json::Null,
            });
        }
        Ok(ColumnarValue::Array(json_column(&values, &self.out, &self.column.name)?))
    }
}

struct ViewRowsUdf {
    model: &'static Model,
    label: String,
    view: Arc<View>,
    fields: Fields,
    signature: Signature,
}

impl std::fmt::Debug for ViewRowsUdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fhir_view_rows({})", self.label)
    }
}

impl PartialEq for ViewRowsUdf {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.view, &other.view)
    }
}

impl Eq for ViewRowsUdf {}

impl Hash for ViewRowsUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.label.hash(state);
    }
}

impl ScalarUDFImpl for ViewRowsUdf {
    fn name(&self) -> &str {
        "fhir_view_rows"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(udf::list_of(DataType::Struct(self.fields.clone())))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let raw = args.args[0].to_array(args.number_rows)?;
        let mut columns: Vec<Vec<Json>> = vec![Vec::new(); self.fields.len()];
        let mut offsets = vec![0i32];
        for i in 0..raw.len() {
            if let Some(json) = stored_resource(raw.as_ref(), i)? {
                let rows = self.view.rows(self.model, &json).map_err(|e| DataFusionError::External(Box::new(e)))?;
                for row in rows {
                    for (c, v) in columns.iter_mut().zip(row) {
                        c.push(v);
                    }
                }
            }
            offsets.push(columns.first().map_or(0, Vec::len) as i32);
        }
        let arrays = columns
            .iter()
            .zip(self.fields.iter())
            .map(|(vals, f)| json_column(vals, f.data_type(), f.name()))
            .collect::<DfResult<Vec<_>>>()?;
        let n = offsets.last().copied().unwrap_or(0) as usize;
        let structs = if self.fields.is_empty() {
            StructArray::new_empty_fields(n, None)
        } else {
            StructArray::try_new(self.fields.clone(), arrays, None)?
        };
        let item = Arc::new(Field::new("item", DataType::Struct(self.fields.clone()), true));
        let list = ListArray::try_new(item, OffsetBuffer::new(offsets.into()), Arc::new(structs), None)?;
        Ok(ColumnarValue::Array(Arc::new(list)))
    }
}

/// The Arrow schema of a view's output when it is run row by row (inline resources).
pub fn row_schema(columns: &[ColumnInfo]) -> arrow::datatypes::SchemaRef {
    Arc::new(arrow::datatypes::Schema::new(
        columns.iter().map(|c| Field::new(&c.name, output_type(c, None), true)).collect::<Vec<_>>(),
    ))
}

/// Rows from the reference runner as one batch of [`row_schema`].
pub fn rows_batch(columns: &[ColumnInfo], rows: Vec<Vec<Json>>) -> Result<RecordBatch> {
    let schema = row_schema(columns);
    let mut cols: Vec<Vec<Json>> = vec![Vec::with_capacity(rows.len()); columns.len()];
    for row in rows {
        for (c, v) in cols.iter_mut().zip(row) {
            c.push(v);
        }
    }
    let arrays = cols
        .iter()
        .zip(schema.fields().iter())
        .map(|(vals, f)| json_column(vals, f.data_type(), f.name()))
        .collect::<DfResult<Vec<_>>>()?;
    let n = cols.first().map_or(0, Vec::len);
    Ok(RecordBatch::try_new_with_options(
        schema,
        arrays,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
    )?)
}

/// The resource stored as `_raw` at row `i` (`None` when null).
fn stored_resource(raw: &dyn Array, i: usize) -> DfResult<Option<Json>> {
    string_at(raw, i)
        .map(|text| {
            Json::parse(text.as_bytes(), ParseLimits::STORED).map_err(|e| DataFusionError::External(Box::new(e)))
        })
        .transpose()
}

/// One output column from JSON values.
fn json_column(values: &[Json], dt: &DataType, name: &str) -> DfResult<ArrayRef> {
    let bad = |v: &Json| DataFusionError::Execution(format!("column '{name}': {} is not a {dt}", v.to_json_string()));
    Ok(match dt {
        DataType::Boolean => Arc::new(
            values
                .iter()
                .map(|v| match v {
                    Json::Null => Ok(None),
                    Json::Bool(b) => Ok(Some(*b)),
                    other => Err(bad(other)),
                })
                .collect::<DfResult<BooleanArray>>()?,
        ),
        DataType::Int32 => Arc::new(
            values
                .iter()
                .map(|v| match v {
                    Json::Null => Ok(None),
                    Json::Number(n) => n.parse::<i32>().map(Some).map_err(|_| bad(v)),
                    other => Err(bad(other)),
                })
                .collect::<DfResult<Int32Array>>()?,
        ),
        DataType::Int64 => Arc::new(
            values
                .iter()
                .map(|v| match v {
                    Json::Null => Ok(None),
                    Json::Number(n) => n.parse::<i64>().map(Some).map_err(|_| bad(v)),
                    other => Err(bad(other)),
                })
                .collect::<DfResult<Int64Array>>()?,
        ),
        DataType::Decimal128(p, s) => Arc::new(
            values
                .iter()
                .map(|v| match v {
                    Json::Null => Ok(None),
                    Json::Number(n) => decimal_mantissa(n, *s).map(Some).ok_or_else(|| bad(v)),
                    other => Err(bad(other)),
                })
                .collect::<DfResult<Decimal128Array>>()?
                .with_precision_and_scale(*p, *s)?,
        ),
        DataType::List(item) => {
            let mut flat = Vec::new();
            let mut offsets = vec![0i32];
            let mut valid = Vec::with_capacity(values.len());
            for v in values {
                match v {
                    Json::Array(items) => {
                        flat.extend(items.iter().cloned());
                        valid.push(true);
                    }
                    Json::Null => valid.push(false),
                    other => {
                        flat.push(other.clone());
                        valid.push(true);
                    }
                }
                offsets.push(flat.len() as i32);
            }
            let inner = json_column(&flat, item.data_type(), name)?;
            Arc::new(ListArray::try_new(
                item.clone(),
                OffsetBuffer::new(offsets.into()),
                inner,
                Some(NullBuffer::from(valid)),
            )?)
        }
        _ => Arc::new(
            values
                .iter()
                .map(|v| match v {
                    Json::Null => None,
                    Json::String(s) => Some(s.clone()),
                    Json::Number(n) => Some(n.clone()),
                    other => Some(other.to_json_string()),
                })
                .collect::<StringArray>(),
        ),
    })
}

fn decimal_mantissa(text: &str, scale: i8) -> Option<i128> {
    let mut d = fhirlake_schemas::fhirpath::value::parse_decimal(text)?;
    d.rescale(scale as u32);
    Some(d.mantissa())
}

/// A decimal mantissa as FHIR decimal text without trailing zeros (`1.5`, `-0.25`, `3`).
pub fn decimal_text(mantissa: i128, scale: i8) -> String {
    let neg = mantissa < 0;
    let digits = mantissa.unsigned_abs().to_string();
    let scale = scale.max(0) as usize;
    let (int, frac) = if digits.len() > scale {
        (digits[..digits.len() - scale].to_string(), digits[digits.len() - scale..].to_string())
    } else {
        ("0".to_string(), format!("{digits:0>scale$}"))
    };
    let frac = frac.trim_end_matches('0');
    let sign = if neg { "-" } else { "" };
    if frac.is_empty() { format!("{sign}{int}") } else { format!("{sign}{int}.{frac}") }
}

/// The rows of `batches` as JSON values, one per column (collections as arrays, empty ones
/// as `[]`).
pub fn json_rows(batches: &[RecordBatch], columns: &[ColumnInfo]) -> Result<Vec<Vec<Json>>> {
    let mut out = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            let mut row = Vec::with_capacity(b.num_columns());
            for (c, info) in b.columns().iter().zip(columns) {
                let v = json_value(c.as_ref(), i)?;
                row.push(match v {
                    Json::Null if info.collection => Json::Array(vec![]),
                    v => v,
                });
            }
            out.push(row);
        }
    }
    Ok(out)
}

/// One Arrow value as JSON.
pub fn json_value(a: &dyn Array, i: usize) -> Result<Json> {
    if a.is_null(i) {
        return Ok(Json::Null);
    }
    Ok(match a.data_type() {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => {
            Json::String(string_at(a, i).unwrap_or_default().to_string())
        }
        DataType::Boolean => Json::Bool(a.as_boolean().value(i)),
        DataType::Int32 => Json::Number(a.as_primitive::<Int32Type>().value(i).to_string()),
        DataType::Int64 => Json::Number(a.as_primitive::<Int64Type>().value(i).to_string()),
        DataType::Decimal128(_, s) => {
            Json::Number(decimal_text(a.as_primitive::<arrow::datatypes::Decimal128Type>().value(i), *s))
        }
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            let v = l.value(i);
            Json::Array((0..v.len()).map(|j| json_value(v.as_ref(), j)).collect::<Result<_>>()?)
        }
        _ => {
            let s = arrow::compute::cast(&a.slice(i, 1), &DataType::Utf8)?;
            Json::String(s.as_string::<i32>().value(0).to_string())
        }
    })
}
