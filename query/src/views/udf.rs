//! The vectorized collection functions compiled ViewDefinition paths use: FHIRPath
//! navigation over list<struct> columns (`name.family`), `where(...)` with a simple
//! predicate, the single-value check of non-collection columns, and the row-by-row fallback.
//!
//! FHIRPath collections are lists with nulls removed; an empty collection is a null list,
//! so `forEachOrNull` is DataFusion's null-preserving unnest and `exists()` is
//! `array_length(x) > 0`.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, ListArray, StructArray, UInt32Array};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::lit;

use crate::search::matcher::string_at;

/// A literal a predicate compares with.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Str(String),
    Bool(bool),
    Int(i64),
}

/// A `where(...)` condition on the fields of one struct element (three-valued).
#[derive(Debug, Clone, PartialEq)]
pub enum Pred {
    Eq(String, Lit),
    NotNull(String),
    And(Box<Pred>, Box<Pred>),
    Or(Box<Pred>, Box<Pred>),
    Not(Box<Pred>),
    Const(bool),
}

impl Pred {
    fn eval(&self, s: &StructArray, j: usize) -> Option<bool> {
        match self {
            Pred::Eq(f, l) => {
                let c = s.column_by_name(f)?;
                if c.is_null(j) {
                    return None;
                }
                match l {
                    Lit::Str(v) => string_at(c.as_ref(), j).map(|x| x == v),
                    Lit::Bool(v) => c.as_boolean_opt().map(|a| a.value(j) == *v),
                    Lit::Int(v) => {
                        c.as_primitive_opt::<arrow::datatypes::Int32Type>().map(|a| i64::from(a.value(j)) == *v)
                    }
                }
            }
            Pred::NotNull(f) => Some(s.column_by_name(f).is_some_and(|c| c.is_valid(j))),
            Pred::And(a, b) => match (a.eval(s, j), b.eval(s, j)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Pred::Or(a, b) => match (a.eval(s, j), b.eval(s, j)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Pred::Not(a) => a.eval(s, j).map(|b| !b),
            Pred::Const(b) => Some(*b),
        }
    }
}

/// What one collection UDF does.
#[derive(Debug, Clone)]
pub enum Op {
    /// `list.field` / `struct.field` -> list of the field's values (lists flattened).
    Field(String),
    /// At most one value: the value (null when none), an error when several.
    Single(String),
    /// Keep the struct elements the predicate holds for.
    Where(Pred),
    /// list<T> -> list<struct<i: position in the list, v: T>> (for `%rowIndex`).
    Enumerate,
    /// Whether any struct element satisfies the predicate (`where(...).exists()`).
    Any(Pred),
}

#[derive(Debug)]
pub struct CollectionUdf {
    name: &'static str,
    label: String,
    op: Op,
    out: DataType,
    signature: Signature,
}

impl PartialEq for CollectionUdf {
    fn eq(&self, other: &Self) -> bool {
        self.label == other.label && self.out == other.out
    }
}

impl Eq for CollectionUdf {}

impl Hash for CollectionUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.label.hash(state);
    }
}

impl ScalarUDFImpl for CollectionUdf {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(self.out.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let input = args.args[0].to_array(args.number_rows)?;
        let out = match &self.op {
            Op::Field(name) => field(&input, name, &self.out)?,
            Op::Single(what) => single(&input, what)?,
            Op::Where(p) => filter(&input, p, &self.out)?,
            Op::Enumerate => enumerate(&input, &self.out)?,
            Op::Any(p) => any(&input, p)?,
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// `op` applied to `input`, returning `out`; `label` shows in plans.
pub fn call(op: Op, input: Expr, out: DataType) -> Expr {
    let (name, label) = match &op {
        Op::Field(f) => ("fhir_field", f.clone()),
        Op::Single(w) => ("fhir_single", w.clone()),
        Op::Where(p) => ("fhir_where", format!("{p:?}")),
        Op::Enumerate => ("fhir_enumerate", String::new()),
        Op::Any(p) => ("fhir_any", format!("{p:?}")),
    };
    let udf = ScalarUDF::new_from_impl(CollectionUdf {
        name,
        label: label.clone(),
        op,
        out,
        signature: Signature::any(2, Volatility::Immutable),
    });
    udf.call(vec![input, lit(label)])
}

/// The list type holding `item`.
pub fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, true)))
}

/// Per input row, the ranges of struct elements it holds: a list<struct> or a struct
/// (one element per row).
fn elements(input: &ArrayRef) -> DfResult<(Vec<(usize, usize)>, StructArray)> {
    match input.data_type() {
        DataType::List(_) => {
            let l = input.as_list::<i32>();
            let s = l.values().as_struct_opt().ok_or_else(|| internal("fhir_field: list of non-structs"))?.clone();
            let ranges = (0..l.len())
                .map(|i| {
                    if l.is_null(i) {
                        (0, 0)
                    } else {
                        let o = l.value_offsets();
                        (o[i] as usize, o[i + 1] as usize)
                    }
                })
                .collect();
            Ok((ranges, s))
        }
        DataType::Struct(_) => {
            let s = input.as_struct().clone();
            Ok(((0..s.len()).map(|i| (i, i + usize::from(s.is_valid(i)))).collect(), s))
        }
        other => Err(internal(&format!("fhir_field: cannot navigate into {other}"))),
    }
}

/// A list array of `values[picks[i]]` per row (null when empty), typed as `out`.
fn list_from(values: &ArrayRef, picks: Vec<Vec<u32>>, out: &DataType) -> DfResult<ArrayRef> {
    let mut offsets = Vec::with_capacity(picks.len() + 1);
    offsets.push(0i32);
    let mut idx = Vec::new();
    let mut valid = Vec::with_capacity(picks.len());
    for p in &picks {
        valid.push(!p.is_empty());
        idx.extend_from_slice(p);
        offsets.push(idx.len() as i32);
    }
    let taken = take(values.as_ref(), &UInt32Array::from(idx), None)?;
    let field = match out {
        DataType::List(f) if f.data_type() == taken.data_type() => f.clone(),
        _ => Arc::new(Field::new("item", taken.data_type().clone(), true)),
    };
    Ok(Arc::new(ListArray::try_new(field, OffsetBuffer::new(offsets.into()), taken, Some(NullBuffer::from(valid)))?))
}

fn field(input: &ArrayRef, name: &str, out: &DataType) -> DfResult<ArrayRef> {
    let (ranges, s) = elements(input)?;
    let child = s.column_by_name(name).ok_or_else(|| internal(&format!("fhir_field: no field {name}")))?;
    let struct_ok = |j: usize| s.is_valid(j);
    match child.data_type() {
        DataType::List(_) => {
            let l = child.as_list::<i32>();
            let values = l.values();
            let o = l.value_offsets();
            let picks = ranges
                .iter()
                .map(|&(a, b)| {
                    (a..b)
                        .filter(|&j| struct_ok(j) && l.is_valid(j))
                        .flat_map(|j| (o[j] as usize..o[j + 1] as usize).filter(|&k| values.is_valid(k)))
                        .map(|k| k as u32)
                        .collect()
                })
                .collect();
            list_from(values, picks, out)
        }
        _ => {
            let picks = ranges
                .iter()
                .map(|&(a, b)| (a..b).filter(|&j| struct_ok(j) && child.is_valid(j)).map(|j| j as u32).collect())
                .collect();
            list_from(child, picks, out)
        }
    }
}

fn single(input: &ArrayRef, what: &str) -> DfResult<ArrayRef> {
    let l = input.as_list_opt::<i32>().ok_or_else(|| internal("fhir_single: not a list"))?;
    let mut idx: Vec<Option<u32>> = Vec::with_capacity(l.len());
    let o = l.value_offsets();
    for i in 0..l.len() {
        let (a, b) = if l.is_null(i) { (0, 0) } else { (o[i] as usize, o[i + 1] as usize) };
        let present: Vec<usize> = (a..b).filter(|&k| l.values().is_valid(k)).collect();
        match present.as_slice() {
            [] => idx.push(None),
            [k] => idx.push(Some(*k as u32)),
            _ => {
                return Err(DataFusionError::External(Box::new(fhirlake_schemas::sof::ViewError {
                    location: what.to_string(),
                    message: format!("yields {} values; set \"collection\": true to keep them all", present.len()),
                })));
            }
        }
    }
    Ok(take(l.values().as_ref(), &UInt32Array::from(idx), None)?)
}

fn filter(input: &ArrayRef, p: &Pred, out: &DataType) -> DfResult<ArrayRef> {
    let (ranges, s) = elements(input)?;
    let picks = ranges
        .iter()
        .map(|&(a, b)| (a..b).filter(|&j| s.is_valid(j) && p.eval(&s, j) == Some(true)).map(|j| j as u32).collect())
        .collect();
    let values: ArrayRef = Arc::new(s);
    list_from(&values, picks, out)
}

fn any(input: &ArrayRef, p: &Pred) -> DfResult<ArrayRef> {
    let (ranges, s) = elements(input)?;
    let out: arrow::array::BooleanArray =
        ranges.iter().map(|&(a, b)| Some((a..b).any(|j| s.is_valid(j) && p.eval(&s, j) == Some(true)))).collect();
    Ok(Arc::new(out))
}

fn enumerate(input: &ArrayRef, out: &DataType) -> DfResult<ArrayRef> {
    let l = input.as_list_opt::<i32>().ok_or_else(|| internal("fhir_enumerate: not a list"))?;
    let o = l.value_offsets();
    let mut idx = vec![0i64; l.values().len()];
    for i in 0..l.len() {
        for (k, j) in (o[i] as usize..o[i + 1] as usize).enumerate() {
            idx[j] = k as i64;
        }
    }
    let DataType::List(item) = out else { return Err(internal("fhir_enumerate: output is not a list")) };
    let DataType::Struct(fields) = item.data_type() else { return Err(internal("fhir_enumerate: not a struct")) };
    let pairs = StructArray::try_new(
        fields.clone(),
        vec![Arc::new(arrow::array::Int64Array::from(idx)), l.values().clone()],
        None,
    )?;
    Ok(Arc::new(ListArray::try_new(item.clone(), l.offsets().clone(), Arc::new(pairs), l.nulls().cloned())?))
}

fn internal(m: &str) -> DataFusionError {
    DataFusionError::Internal(m.to_string())
}
