//! JSON resource -> Arrow rows of its current table.
//!
//! Owns: applying a [`TableShape`] to validated resources. Each resource is rewritten into
//! a "shaped" JSON line whose field names and nesting are exactly the table's Arrow schema
//! (extensions as url + JSON text, subtrees past the recursion depth as JSON text,
//! decimals normalised to the column's scale, timestamp companions as epoch microseconds,
//! reference target type/id, reserved columns), and arrow-json's decoder turns a batch
//! of lines into one `RecordBatch`. Rows of a batch are shaped in parallel (rayon).
//! Must not: validate (callers pass validated resources) or do I/O.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use fhirlake_schemas::Json;
use fhirlake_schemas::Model;
use fhirlake_schemas::datetime::{self, Temporal};
use fhirlake_schemas::json::write_str;
use fhirlake_schemas::model::Primitive;
use fhirlake_schemas::shape::{FieldShape, Shape, StructShape, TableShape, reserved};
use rayon::prelude::*;

use crate::{Error, Result};

/// The server-side facts of one stored version, written into the reserved columns.
#[derive(Debug, Clone)]
pub struct RowMeta {
    /// Version id.
    pub version: i64,
    /// Last-updated time, microseconds since the epoch (UTC).
    pub last_updated_us: i64,
    /// The JSON served for this version.
    pub raw: Arc<str>,
    /// Owning patient (Patient compartment).
    pub patient: Option<String>,
    /// All compartment patients.
    pub compartment: Vec<String>,
}

/// Builds `RecordBatch`es of one resource type's current table.
pub struct Flattener {
    model: &'static Model,
    shape: Arc<TableShape>,
    schema: SchemaRef,
    /// The schema arrow-json decodes: everything but `_raw`, which is added as a column
    /// directly (escaping whole resources into the shaped line and back would dominate).
    decoded: SchemaRef,
}

impl Flattener {
    /// A flattener for `shape`.
    pub fn new(shape: Arc<TableShape>) -> Self {
        let schema = Arc::new(shape.arrow_schema());
        let decoded = Arc::new(arrow::datatypes::Schema::new(
            schema.fields().iter().filter(|f| f.name() != reserved::RAW).cloned().collect::<Vec<_>>(),
        ));
        let model = Model::r4().expect("a TableShape exists, so the R4 model loaded");
        Self { model, shape, schema, decoded }
    }

    /// The table's shape.
    pub fn shape(&self) -> &TableShape {
        &self.shape
    }

    /// The table's Arrow schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// One shaped JSON line (without newline) for `resource`.
    pub fn shape_row(&self, resource: &Json, meta: &RowMeta) -> String {
        let mut out = String::with_capacity(meta.raw.len() * 2 + 256);
        let mut prim_ext: Vec<(String, String)> = Vec::new();
        let rt = &self.shape.resource_type;
        out.push('{');
        let mut first = true;
        let mut path = rt.to_string();
        write_struct_fields(&self.shape.root, resource, &mut path, &mut out, &mut first, &mut prim_ext);
        let mut key = |out: &mut String, k: &str| {
            if !first {
                out.push(',');
            }
            first = false;
            write_str(out, k);
            out.push(':');
        };
        key(&mut out, reserved::VERSION_ID);
        out.push_str(&meta.version.to_string());
        key(&mut out, reserved::LAST_UPDATED);
        out.push_str(&meta.last_updated_us.to_string());
        if let Some(p) = &meta.patient {
            key(&mut out, reserved::PATIENT);
            write_str(&mut out, p);
        }
        if !meta.compartment.is_empty() {
            key(&mut out, reserved::COMPARTMENT_PATIENTS);
            out.push('[');
            for (i, p) in meta.compartment.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(&mut out, p);
            }
            out.push(']');
        }
        if let Some(ix) = &self.shape.search_index {
            ix.write_row(self.model, resource, &mut out);
        }
        if !prim_ext.is_empty() {
            key(&mut out, reserved::PRIMITIVE_EXTENSIONS);
            let mut obj = String::from("{");
            for (i, (k, v)) in prim_ext.iter().enumerate() {
                if i > 0 {
                    obj.push(',');
                }
                write_str(&mut obj, k);
                obj.push(':');
                obj.push_str(v);
            }
            obj.push('}');
            write_str(&mut out, &obj);
        }
        out.push('}');
        out
    }

    /// A `RecordBatch` of `rows` (resource, meta), shaped in parallel.
    pub fn to_batch(&self, rows: &[(&Json, &RowMeta)]) -> Result<RecordBatch> {
        let lines: Vec<String> = rows.par_iter().map(|(r, m)| self.shape_row(r, m)).collect();
        let mut decoder = arrow::json::ReaderBuilder::new(self.decoded.clone())
            .with_batch_size(rows.len().max(1))
            .build_decoder()
            .map_err(|e| Error::Flatten(e.to_string()))?;
        for line in &lines {
            let mut buf = line.as_bytes();
            while !buf.is_empty() {
                let n = decoder.decode(buf).map_err(|e| Error::Flatten(e.to_string()))?;
                if n == 0 {
                    break;
                }
                buf = &buf[n..];
            }
            decoder.decode(b"\n").map_err(|e| Error::Flatten(e.to_string()))?;
        }
        let decoded = decoder
            .flush()
            .map_err(|e| Error::Flatten(e.to_string()))?
            .unwrap_or_else(|| RecordBatch::new_empty(self.decoded.clone()));
        let raw: arrow::array::ArrayRef =
            Arc::new(arrow::array::StringArray::from_iter_values(rows.iter().map(|(_, m)| &*m.raw)));
        let columns = self
            .schema
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                reserved::RAW => Ok(raw.clone()),
                name => {
                    decoded.column_by_name(name).cloned().ok_or_else(|| Error::Flatten(format!("no column {name}")))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

fn write_key(out: &mut String, first: &mut bool, k: &str) {
    if !*first {
        out.push(',');
    }
    *first = false;
    write_str(out, k);
    out.push(':');
}

fn write_struct_fields(
    s: &StructShape,
    obj: &Json,
    path: &mut String,
    out: &mut String,
    first: &mut bool,
    prim_ext: &mut Vec<(String, String)>,
) {
    let Some(members) = obj.as_object() else { return };
    for (k, v) in members {
        if let Some(base) = k.strip_prefix('_') {
            prim_ext.push((format!("{path}.{base}"), v.to_json_string()));
            continue;
        }
        let Some(f) = s.field(k) else { continue };
        write_key(out, first, &f.name);
        let len = path.len();
        path.push('.');
        path.push_str(&f.name);
        write_field(f, v, path, out, prim_ext);
        path.truncate(len);
        if let Shape::Scalar(p) = f.shape
            && p.is_temporal()
        {
            write_key(out, first, &reserved::timestamp_companion(&f.name));
            write_many(f.many, v, out, |item, out| match item.as_str().and_then(|t| datetime::parse(temporal(p), t)) {
                Some(us) => out.push_str(&us.to_string()),
                None => out.push_str("null"),
            });
        }
    }
    if s.is_reference
        && let Some((t, id)) = obj.get("reference").and_then(Json::as_str).and_then(reference_target)
    {
        write_key(out, first, reserved::TARGET_TYPE);
        write_str(out, t);
        write_key(out, first, reserved::TARGET_ID);
        write_str(out, id);
    }
}

fn write_many(many: bool, v: &Json, out: &mut String, mut f: impl FnMut(&Json, &mut String)) {
    match (many, v) {
        (true, Json::Array(items)) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                f(item, out);
            }
            out.push(']');
        }
        (true, _) => out.push_str("null"),
        (false, v) => f(v, out),
    }
}

fn write_field(f: &FieldShape, v: &Json, path: &mut String, out: &mut String, prim_ext: &mut Vec<(String, String)>) {
    match &f.shape {
        Shape::Scalar(p) => write_many(f.many, v, out, |item, out| write_scalar(*p, item, out)),
        Shape::Json => write_many(f.many, v, out, |item, out| write_str(out, &item.to_json_string())),
        Shape::Extensions => write_many(f.many, v, out, write_extension),
        Shape::Struct(s) => {
            let mut i = 0usize;
            write_many(f.many, v, out, |item, out| {
                let len = path.len();
                if f.many {
                    path.push_str(&format!("[{i}]"));
                }
                i += 1;
                if item.as_object().is_none() {
                    out.push_str("null");
                } else {
                    out.push('{');
                    let mut first = true;
                    write_struct_fields(s, item, path, out, &mut first, prim_ext);
                    out.push('}');
                }
                path.truncate(len);
            });
        }
    }
}

fn write_extension(ext: &Json, out: &mut String) {
    let Some(members) = ext.as_object() else {
        out.push_str("null");
        return;
    };
    out.push_str("{\"url\":");
    match ext.get("url").and_then(Json::as_str) {
        Some(u) => write_str(out, u),
        None => out.push_str("null"),
    }
    let rest = Json::Object(members.iter().filter(|(k, _)| k != "url").cloned().collect());
    out.push_str(",\"value\":");
    write_str(out, &rest.to_json_string());
    out.push('}');
}

fn write_scalar(p: Primitive, v: &Json, out: &mut String) {
    match (p, v) {
        (Primitive::Boolean, Json::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
        (Primitive::Integer | Primitive::PositiveInt | Primitive::UnsignedInt, Json::Number(n))
            if n.parse::<i32>().is_ok() =>
        {
            out.push_str(n)
        }
        (Primitive::Decimal, Json::Number(n)) => match normalize_decimal(n) {
            Some(d) => out.push_str(&d),
            None => out.push_str("null"),
        },
        (_, Json::String(s))
            if !matches!(
                p,
                Primitive::Boolean
                    | Primitive::Decimal
                    | Primitive::Integer
                    | Primitive::PositiveInt
                    | Primitive::UnsignedInt
            ) =>
        {
            write_str(out, s)
        }
        _ => out.push_str("null"),
    }
}

fn temporal(p: Primitive) -> Temporal {
    match p {
        Primitive::Date => Temporal::Date,
        Primitive::Instant => Temporal::Instant,
        _ => Temporal::DateTime,
    }
}

pub use fhirlake_schemas::shape::{normalize_decimal, reference_target};

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use fhirlake_schemas::json::ParseLimits;
    use fhirlake_schemas::{Model, ShapeOptions};

    #[test]
    fn decimals_normalise_exactly() {
        assert_eq!(normalize_decimal("1.50").as_deref(), Some("1.5"));
        assert_eq!(normalize_decimal("-0.00").as_deref(), Some("0"));
        assert_eq!(normalize_decimal("1.5e3").as_deref(), Some("1500"));
        assert_eq!(normalize_decimal("25E-2").as_deref(), Some("0.25"));
        assert_eq!(normalize_decimal("0.0000000000000000001"), None);
        assert_eq!(normalize_decimal("123456789012345678901"), None);
        assert_eq!(normalize_decimal("1e999999999999"), None);
        assert_eq!(normalize_decimal("1e-999999999999"), None);
    }

    #[test]
    fn references_expose_target() {
        assert_eq!(reference_target("Patient/123"), Some(("Patient", "123")));
        assert_eq!(reference_target("http://x.org/fhir/Patient/1/_history/2"), Some(("Patient", "1")));
        assert_eq!(reference_target("#p1"), None);
        assert_eq!(reference_target("urn:uuid:0000"), None);
    }

    #[test]
    fn an_observation_flattens_to_typed_columns() {
        let model = Model::r4().unwrap();
        let shape = Arc::new(TableShape::try_new(model, "Observation", ShapeOptions::default()).unwrap());
        let f = Flattener::new(shape);
        let text = r#"{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"bp"},
            "subject":{"reference":"Patient/p1"},"effectiveDateTime":"2020-01-02",
            "_status":{"extension":[{"url":"http://e","valueString":"s"}]},
            "valueQuantity":{"value":1.50,"unit":"mmHg","extension":[{"url":"http://u","valueCode":"c"}]}}"#;
        let json = Json::parse(text.as_bytes(), ParseLimits::default()).unwrap();
        let meta = RowMeta {
            version: 1,
            last_updated_us: 5,
            raw: json.to_json_string().into(),
            patient: Some("p1".into()),
            compartment: vec!["p1".into()],
        };
        let batch = f.to_batch(&[(&json, &meta)]).unwrap();
        assert_eq!(batch.num_rows(), 1);
        let vq = batch.column_by_name("valueQuantity").unwrap().as_struct();
        let value = vq.column_by_name("value").unwrap().as_primitive::<arrow::datatypes::Decimal128Type>();
        assert_eq!(value.value_as_string(0), "1.500000000000000000");
        let ext = vq.column_by_name("extension").unwrap().as_list::<i32>().value(0);
        let ext = ext.as_struct();
        assert_eq!(ext.column_by_name("value").unwrap().as_string::<i32>().value(0), r#"{"valueCode":"c"}"#);
        let ts = batch.column_by_name("_effectiveDateTime_ts").unwrap();
        assert_eq!(ts.as_primitive::<arrow::datatypes::TimestampMicrosecondType>().value(0), 1_577_923_200_000_000);
        let subject = batch.column_by_name("subject").unwrap().as_struct();
        assert_eq!(subject.column_by_name("_target_id").unwrap().as_string::<i32>().value(0), "p1");
        let pe = batch.column_by_name("_primitive_extensions").unwrap().as_string::<i32>().value(0).to_string();
        assert!(pe.contains("Observation.status"), "{pe}");
        assert!(batch.column_by_name("_patient").unwrap().is_valid(0));
    }
}
