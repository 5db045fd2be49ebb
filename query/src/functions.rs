//! SQL helper functions for FHIR data, registered in every SQL session:
//!
//! - `fhir_code(concept, system)`: the code of the first coding with that system (any system
//!   when `system` is NULL or ''); `concept` is a CodeableConcept, a Coding, or a list of
//!   either (`code`, `category`, `valueCodeableConcept`, `code.coding`).
//! - `fhir_display(concept, system)`: the same coding's display.
//! - `fhir_ref_id(reference [, type])`: the id a Reference points at (only when it points at
//!   `type`); the same as `reference._target_id`, shorter in joins.
//! - `fhir_age(birth_date, at)`: completed years from a FHIR date (`1970`, `1970-06`,
//!   `1970-06-15`; partial dates count from their first day) to `at` (a date or dateTime
//!   text, a timestamp or a date).
//!
//! Must not: know about tables; these are pure functions of their arguments.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array, StringArray};
use arrow::datatypes::{DataType, TimeUnit};
use chrono::{Datelike, NaiveDate};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::prelude::SessionContext;

use crate::search::matcher::string_at;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Code,
    Display,
    RefId,
    Age,
}

#[derive(Debug)]
struct FhirFunction {
    kind: Kind,
    name: &'static str,
    signature: Signature,
}

impl PartialEq for FhirFunction {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
    }
}

impl Eq for FhirFunction {}

impl Hash for FhirFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
    }
}

/// Registers the helpers in `ctx`.
pub fn register(ctx: &SessionContext) {
    let two = || Signature::any(2, Volatility::Immutable);
    for (kind, name, signature) in [
        (Kind::Code, "fhir_code", two()),
        (Kind::Display, "fhir_display", two()),
        (
            Kind::RefId,
            "fhir_ref_id",
            Signature::one_of(vec![TypeSignature::Any(1), TypeSignature::Any(2)], Volatility::Immutable),
        ),
        (Kind::Age, "fhir_age", two()),
    ] {
        ctx.register_udf(ScalarUDF::new_from_impl(FhirFunction { kind, name, signature }));
    }
}

impl ScalarUDFImpl for FhirFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(if self.kind == Kind::Age { DataType::Int32 } else { DataType::Utf8 })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let arrays: Vec<ArrayRef> = args.args.iter().map(|a| a.to_array(n)).collect::<DfResult<_>>()?;
        let out: ArrayRef = match self.kind {
            Kind::Code | Kind::Display => {
                let want = self.kind;
                Arc::new(
                    (0..n)
                        .map(|i| {
                            let system = string_at(arrays[1].as_ref(), i).filter(|s| !s.is_empty());
                            let mut found = Vec::new();
                            codings(arrays[0].as_ref(), i, &mut found);
                            found
                                .into_iter()
                                .find(|c| system.is_none() || c.system.as_deref() == system)
                                .and_then(|c| if want == Kind::Code { c.code } else { c.display })
                        })
                        .collect::<StringArray>(),
                )
            }
            Kind::RefId => {
                let r = arrays[0]
                    .as_struct_opt()
                    .ok_or_else(|| DataFusionError::Plan("fhir_ref_id() takes a Reference (e.g. subject)".into()))?;
                let (Some(t), Some(id)) = (r.column_by_name("_target_type"), r.column_by_name("_target_id")) else {
                    return Err(DataFusionError::Plan("fhir_ref_id() takes a Reference (e.g. subject)".into()));
                };
                Arc::new(
                    (0..n)
                        .map(|i| {
                            if r.is_null(i) {
                                return None;
                            }
                            let ok = match arrays.get(1) {
                                Some(want) => {
                                    string_at(want.as_ref(), i).is_some_and(|w| string_at(t.as_ref(), i) == Some(w))
                                }
                                None => true,
                            };
                            ok.then(|| string_at(id.as_ref(), i).map(str::to_string)).flatten()
                        })
                        .collect::<StringArray>(),
                )
            }
            Kind::Age => Arc::new(
                (0..n)
                    .map(|i| {
                        let born = string_at(arrays[0].as_ref(), i).and_then(fhir_date)?;
                        let at = date_at(arrays[1].as_ref(), i)?;
                        let mut years = at.year() - born.year();
                        if (at.month(), at.day()) < (born.month(), born.day()) {
                            years -= 1;
                        }
                        Some(years)
                    })
                    .collect::<Int32Array>(),
            ),
        };
        Ok(ColumnarValue::Array(out))
    }
}

struct Coding {
    system: Option<String>,
    code: Option<String>,
    display: Option<String>,
}

/// The codings in row `i` of a CodeableConcept, Coding, or list of either.
fn codings(a: &dyn Array, i: usize, out: &mut Vec<Coding>) {
    if a.is_null(i) {
        return;
    }
    match a.data_type() {
        DataType::List(_) => {
            let items = a.as_list::<i32>().value(i);
            for j in 0..items.len() {
                codings(items.as_ref(), j, out);
            }
        }
        DataType::Struct(_) => {
            let s = a.as_struct();
            if let Some(c) = s.column_by_name("coding") {
                codings(c.as_ref(), i, out);
            } else if s.column_by_name("code").is_some() {
                let text = |f: &str| s.column_by_name(f).and_then(|c| string_at(c.as_ref(), i)).map(str::to_string);
                out.push(Coding { system: text("system"), code: text("code"), display: text("display") });
            }
        }
        _ => {}
    }
}

/// A FHIR date (year, year-month or full date; a dateTime's date part).
fn fhir_date(s: &str) -> Option<NaiveDate> {
    let parts: Vec<&str> = s.get(..s.len().min(10))?.split('-').collect();
    let y: i32 = parts.first()?.parse().ok()?;
    let m: u32 = parts.get(1).map_or(Some(1), |p| p.parse().ok())?;
    let d: u32 = parts.get(2).map_or(Some(1), |p| p.parse().ok())?;
    NaiveDate::from_ymd_opt(y, m, d)
}

fn date_at(a: &dyn Array, i: usize) -> Option<NaiveDate> {
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        DataType::Date32 => {
            let days = a.as_primitive::<arrow::datatypes::Date32Type>().value(i);
            NaiveDate::from_num_days_from_ce_opt(days + 719_163)
        }
        DataType::Timestamp(unit, _) => {
            let v = match unit {
                TimeUnit::Second => a.as_primitive::<arrow::datatypes::TimestampSecondType>().value(i) * 1_000_000,
                TimeUnit::Millisecond => a.as_primitive::<arrow::datatypes::TimestampMillisecondType>().value(i) * 1000,
                TimeUnit::Microsecond => a.as_primitive::<arrow::datatypes::TimestampMicrosecondType>().value(i),
                TimeUnit::Nanosecond => a.as_primitive::<arrow::datatypes::TimestampNanosecondType>().value(i) / 1000,
            };
            chrono::DateTime::from_timestamp_micros(v).map(|t| t.date_naive())
        }
        _ => string_at(a, i).and_then(fhir_date),
    }
}
