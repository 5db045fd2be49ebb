//! The storage shape of a resource type: the element tree cut to a table's recursion
//! depth, and its Arrow schema.
//!
//! Owns: the flattening rules (documented in ARCHITECTURE.md, "Flattening"): which FHIR
//! element becomes which Arrow field, where recursion turns into JSON text, where
//! extensions, timestamp companions, reference keys and fhirlake's reserved columns go.
//! The same [`TableShape`] drives schema generation here and row building in
//! `fhirlake-ingest`, so the two cannot disagree. Must not: read or write data.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, Schema, TimeUnit};

use crate::model::{Model, Primitive, TypeRef};
use crate::search_index::SearchIndex;
use crate::{Error, Result};

/// Precision of every FHIR `decimal` column.
pub const DECIMAL_PRECISION: u8 = 38;
/// Scale of every FHIR `decimal` column: 18 fractional digits, 20 integer digits.
pub const DECIMAL_SCALE: i8 = 18;
/// Default recursion depth: how often one datatype (or backbone) may occur on a path
/// before the subtree is stored as JSON text.
pub const DEFAULT_MAX_DEPTH: usize = 1;
/// A choice element with more variants than this is "open" (`Parameters.parameter.value[x]`,
/// `ElementDefinition.fixed[x]`, ...): its primitive variants keep typed columns, its
/// complex variants are stored as JSON text.
pub const OPEN_CHOICE_VARIANTS: usize = 12;
/// The leaf-column budget every table must stay under.
pub const LEAF_BUDGET: usize = 2000;

/// Reserved column names: every one starts with `_`, which no FHIR element name does.
pub mod reserved {
    /// The resource JSON exactly as served (with the server's `meta`).
    pub const RAW: &str = "_raw";
    /// The version id (1, 2, 3, ... per resource).
    pub const VERSION_ID: &str = "_version_id";
    /// When this version was written (`meta.lastUpdated`), UTC.
    pub const LAST_UPDATED: &str = "_last_updated";
    /// The owning patient id for Patient-compartment resources (the first compartment
    /// patient; the patient itself for Patient).
    pub const PATIENT: &str = "_patient";
    /// Every patient whose compartment holds this resource.
    pub const COMPARTMENT_PATIENTS: &str = "_compartment_patients";
    /// Primitive extensions (`_birthDate` ...) as one JSON object keyed by location.
    pub const PRIMITIVE_EXTENSIONS: &str = "_primitive_extensions";
    /// History tables: FNV-1a 64 hash of the content without server meta (no-op updates).
    pub const CONTENT_HASH: &str = "_content_hash";
    /// History tables: true for a delete.
    pub const DELETED: &str = "_deleted";
    /// Materialized views: the key of the resource a row came from.
    pub const SOURCE_ID: &str = "_source_id";
    /// Reference structs: target resource type parsed from `reference`.
    pub const TARGET_TYPE: &str = "_target_type";
    /// Reference structs: target id parsed from `reference`.
    pub const TARGET_ID: &str = "_target_id";
    /// Suffix of a temporal element's timestamp companion: `_<name>_ts`.
    pub fn timestamp_companion(name: &str) -> String {
        format!("_{name}_ts")
    }
}

/// Options fixed per table when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapeOptions {
    /// See [`DEFAULT_MAX_DEPTH`].
    pub max_depth: usize,
    /// Whether the table carries the search-index columns (`_sp_*`, see
    /// [`crate::search_index`]). On by default; tables created without them keep that.
    pub search_index: bool,
}

impl Default for ShapeOptions {
    fn default() -> Self {
        Self { max_depth: DEFAULT_MAX_DEPTH, search_index: true }
    }
}

/// How one field is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// A primitive in its typed column.
    Scalar(Primitive),
    /// A nested struct.
    Struct(StructShape),
    /// JSON text (a resource, or a subtree past the recursion depth).
    Json,
    /// `extension` / `modifierExtension`: list of (url, value JSON).
    Extensions,
}

/// A struct's fields.
#[derive(Debug, Clone, PartialEq)]
pub struct StructShape {
    /// Fields in column order.
    pub fields: Vec<FieldShape>,
    /// True for `Reference`: adds `_target_type` / `_target_id`.
    pub is_reference: bool,
    /// Field name -> index into `fields`.
    pub by_name: std::collections::HashMap<String, usize>,
}

impl StructShape {
    /// The field named `name`.
    pub fn field(&self, name: &str) -> Option<&FieldShape> {
        self.by_name.get(name).map(|&i| &self.fields[i])
    }
}

/// One field of a struct.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldShape {
    /// Column (= JSON) name, e.g. `valueQuantity`.
    pub name: String,
    /// A list column when the element repeats.
    pub many: bool,
    /// How the value is stored.
    pub shape: Shape,
}

/// The shape of one resource type's current table.
#[derive(Debug, Clone)]
pub struct TableShape {
    /// Resource type.
    pub resource_type: String,
    /// Options used.
    pub options: ShapeOptions,
    /// Top-level FHIR fields (without reserved columns).
    pub root: StructShape,
    /// The search parameters indexed in `_sp_*` columns (when `options.search_index`).
    pub search_index: Option<Arc<SearchIndex>>,
}

impl TableShape {
    /// Builds the shape of `resource_type`.
    pub fn try_new(model: &'static Model, resource_type: &str, options: ShapeOptions) -> Result<Self> {
        if !model.is_resource_type(resource_type) {
            return Err(Error::UnknownResourceType(resource_type.to_string()));
        }
        let mut stack = Vec::new();
        let root = struct_shape(model, resource_type, &options, &mut stack, true)?;
        let search_index = options.search_index.then(|| SearchIndex::for_type(model, resource_type));
        Ok(Self { resource_type: resource_type.to_string(), options, root, search_index })
    }

    /// The Arrow schema of the current table: FHIR fields, then reserved columns.
    pub fn arrow_schema(&self) -> Schema {
        let mut fhir = struct_fields(&self.root).into_iter();
        // `id`, then the hot reserved columns, so they are within the first 32 leaf columns
        // that readers without `delta.dataSkippingStatsColumns` collect statistics for.
        let mut fields: Vec<Field> = fhir.next().into_iter().collect();
        let (head, tail) = reserved_fields();
        fields.extend(head);
        fields.extend(fhir);
        if let Some(ix) = &self.search_index {
            fields.extend(ix.arrow_fields());
        }
        fields.extend(tail);
        Schema::new(fields)
    }

    /// Number of leaf (Parquet) columns of the current table.
    pub fn leaf_count(&self) -> usize {
        count_leaves_fields(self.arrow_schema().fields())
    }
}

/// The reserved columns of the current table: (those placed right after `id`, those placed
/// after the FHIR fields).
pub fn reserved_fields() -> (Vec<Field>, Vec<Field>) {
    let head = vec![
        Field::new(reserved::VERSION_ID, DataType::Int64, false),
        Field::new(reserved::LAST_UPDATED, timestamp_type(), false),
        Field::new(reserved::PATIENT, DataType::Utf8, true),
        Field::new(
            reserved::COMPARTMENT_PATIENTS,
            DataType::List(Arc::new(Field::new("element", DataType::Utf8, true))),
            true,
        ),
    ];
    let tail = vec![
        Field::new(reserved::PRIMITIVE_EXTENSIONS, DataType::Utf8, true),
        Field::new(reserved::RAW, DataType::Utf8, false),
    ];
    (head, tail)
}

/// The schema of a history table: keys, version, time, deleted flag, raw JSON.
pub fn history_schema() -> Schema {
    Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new(reserved::VERSION_ID, DataType::Int64, false),
        Field::new(reserved::LAST_UPDATED, timestamp_type(), false),
        Field::new(reserved::DELETED, DataType::Boolean, false),
        Field::new(reserved::PATIENT, DataType::Utf8, true),
        Field::new(reserved::RAW, DataType::Utf8, true),
        Field::new(reserved::CONTENT_HASH, DataType::Int64, false),
    ])
}

/// `Timestamp(µs, "UTC")`, the type of every timestamp column.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn struct_shape(
    model: &Model,
    key: &str,
    options: &ShapeOptions,
    stack: &mut Vec<String>,
    is_root: bool,
) -> Result<StructShape> {
    let structure = model.structure(key).ok_or_else(|| Error::Definitions(format!("no structure for {key}")))?;
    stack.push(key.to_string());
    let mut fields = Vec::new();
    for el in &structure.elements {
        // Element.id of datatypes and backbones stays in the raw JSON only.
        if el.name == "id" && !is_root {
            continue;
        }
        let open_choice = el.variants.len() > OPEN_CHOICE_VARIANTS;
        for (json_name, ty) in &el.variants {
            let shape = match ty {
                TypeRef::Struct(_) if open_choice => Shape::Json,
                // A logical reference (Reference.identifier) is rare and would triple the
                // width of every Reference column: JSON text.
                TypeRef::Struct(_) if key == "Reference" && el.name == "identifier" => Shape::Json,
                TypeRef::Primitive(p) => Shape::Scalar(*p),
                TypeRef::Extension => Shape::Extensions,
                TypeRef::Resource => Shape::Json,
                TypeRef::Struct(k) => {
                    if stack.iter().filter(|s| *s == k).count() >= options.max_depth {
                        Shape::Json
                    } else {
                        Shape::Struct(struct_shape(model, k, options, stack, false)?)
                    }
                }
            };
            fields.push(FieldShape { name: json_name.clone(), many: el.many, shape });
        }
    }
    stack.pop();
    let by_name = fields.iter().enumerate().map(|(i, f)| (f.name.clone(), i)).collect();
    Ok(StructShape { fields, is_reference: key == "Reference", by_name })
}

fn struct_fields(s: &StructShape) -> Vec<Field> {
    let mut out = Vec::with_capacity(s.fields.len() + 2);
    for f in &s.fields {
        let dt = data_type(&f.shape);
        let dt = if f.many { DataType::List(Arc::new(Field::new("element", dt, true))) } else { dt };
        out.push(Field::new(&f.name, dt, true));
        if let Shape::Scalar(p) = f.shape
            && p.is_temporal()
        {
            let ts = timestamp_type();
            let ts = if f.many { DataType::List(Arc::new(Field::new("element", ts, true))) } else { ts };
            out.push(Field::new(reserved::timestamp_companion(&f.name), ts, true));
        }
    }
    if s.is_reference {
        out.push(Field::new(reserved::TARGET_TYPE, DataType::Utf8, true));
        out.push(Field::new(reserved::TARGET_ID, DataType::Utf8, true));
    }
    out
}

fn data_type(shape: &Shape) -> DataType {
    match shape {
        Shape::Scalar(p) => primitive_type(*p),
        Shape::Json => DataType::Utf8,
        Shape::Struct(s) => DataType::Struct(Fields::from(struct_fields(s))),
        // Extension elements always repeat: the list comes from `many`.
        Shape::Extensions => extension_type(),
    }
}

/// The Arrow type of one extension: `struct<url: string, value: string>`, where `value`
/// is the JSON of the extension without its `url` (so `{"valueCode":"x"}` or
/// `{"extension":[...]}` for complex extensions).
pub fn extension_type() -> DataType {
    DataType::Struct(Fields::from(vec![
        Field::new("url", DataType::Utf8, true),
        Field::new("value", DataType::Utf8, true),
    ]))
}

/// The Arrow type of a FHIR primitive.
pub fn primitive_type(p: Primitive) -> DataType {
    match p {
        Primitive::Boolean => DataType::Boolean,
        Primitive::Integer | Primitive::PositiveInt | Primitive::UnsignedInt => DataType::Int32,
        Primitive::Decimal => DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE),
        _ => DataType::Utf8,
    }
}

fn count_leaves_fields(fields: &Fields) -> usize {
    fields.iter().map(|f| count_leaves(f.data_type())).sum()
}

fn count_leaves(dt: &DataType) -> usize {
    match dt {
        DataType::Struct(fs) => count_leaves_fields(fs),
        DataType::List(f) | DataType::LargeList(f) => count_leaves(f.data_type()),
        _ => 1,
    }
}

/// Target (type, id) of a literal reference: `Patient/1`, `Patient/1/_history/2` or an
/// absolute URL ending in `Type/id`. Contained (`#x`) and `urn:` references have none.
pub fn reference_target(reference: &str) -> Option<(&str, &str)> {
    if reference.starts_with('#') || reference.starts_with("urn:") {
        return None;
    }
    let path = reference.split(['?', '#']).next()?;
    let parts: Vec<&str> = path.split('/').collect();
    let n = parts.len();
    let (t, id) = if n >= 4 && parts[n - 2] == "_history" {
        (parts[n - 4], parts[n - 3])
    } else if n >= 2 {
        (parts[n - 2], parts[n - 1])
    } else {
        return None;
    };
    let type_ok =
        t.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && t.chars().all(|c| c.is_ascii_alphanumeric());
    (type_ok && crate::validate::is_valid_id(id)).then_some((t, id))
}

/// The decimal text as plain digits with at most [`DECIMAL_SCALE`] fractional digits, or
/// `None` when the value cannot be stored exactly in `Decimal128(38, 18)` (the raw JSON
/// still has it).
pub fn normalize_decimal(text: &str) -> Option<String> {
    let (neg, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exp) = match rest.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: String = format!("{int_part}{frac_part}");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // value = digits * 10^(exp - frac_len)
    let point = (int_part.len() as i64).saturating_add(exp);
    // Far outside Decimal128(38, 18) (and never worth materialising digit strings for).
    if !(-(DECIMAL_SCALE as i64) - 64..=64).contains(&point) {
        return None;
    }
    let (int_digits, frac_digits): (String, String) = if point <= 0 {
        (String::new(), "0".repeat((-point) as usize) + &digits)
    } else if point as usize >= digits.len() {
        (digits.clone() + &"0".repeat(point as usize - digits.len()), String::new())
    } else {
        (digits[..point as usize].to_string(), digits[point as usize..].to_string())
    };
    let int_digits = int_digits.trim_start_matches('0');
    let frac_digits = frac_digits.trim_end_matches('0');
    let max_int = (DECIMAL_PRECISION as usize) - (DECIMAL_SCALE as usize);
    if int_digits.len() > max_int || frac_digits.len() > DECIMAL_SCALE as usize {
        return None;
    }
    let sign = if neg && !(int_digits.is_empty() && frac_digits.is_empty()) { "-" } else { "" };
    let int_digits = if int_digits.is_empty() { "0" } else { int_digits };
    Some(if frac_digits.is_empty() {
        format!("{sign}{int_digits}")
    } else {
        format!("{sign}{int_digits}.{frac_digits}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_budget_holds_for_every_resource_type() {
        let m = Model::r4().unwrap();
        let mut counts: Vec<(usize, String)> = m
            .resource_types()
            .iter()
            .map(|t| (TableShape::try_new(m, t, ShapeOptions::default()).unwrap().leaf_count(), t.clone()))
            .collect();
        counts.sort();
        for (n, t) in &counts {
            println!("{t:40} {n:5} leaf columns");
        }
        let over: Vec<_> = counts.iter().filter(|(n, _)| *n > LEAF_BUDGET).collect();
        assert!(over.is_empty(), "tables over the {LEAF_BUDGET}-leaf budget: {over:?}");
    }

    #[test]
    fn reserved_names_never_collide_with_fhir_names() {
        let m = Model::r4().unwrap();
        for t in m.resource_types() {
            let shape = TableShape::try_new(m, t, ShapeOptions::default()).unwrap();
            let schema = shape.arrow_schema();
            assert_eq!(schema.field(0).name(), "id", "{t}: id must be the first column");
            let mut seen = std::collections::HashSet::new();
            for f in schema.fields() {
                assert!(seen.insert(f.name().to_lowercase()), "{t}: column {} collides case-insensitively", f.name());
            }
            for f in &shape.root.fields {
                assert!(!f.name.starts_with('_'), "{t}.{} starts with '_'", f.name);
            }
        }
    }

    #[test]
    fn recursion_turns_into_json_past_the_depth() {
        let m = Model::r4().unwrap();
        let q = TableShape::try_new(m, "Questionnaire", ShapeOptions { max_depth: 2, ..Default::default() }).unwrap();
        let item = q.root.fields.iter().find(|f| f.name == "item").unwrap();
        let Shape::Struct(item) = &item.shape else { panic!("item should be a struct") };
        let nested = item.fields.iter().find(|f| f.name == "item").unwrap();
        let Shape::Struct(nested) = &nested.shape else { panic!("item.item should be a struct at depth 2") };
        let deepest = nested.fields.iter().find(|f| f.name == "item").unwrap();
        assert_eq!(deepest.shape, Shape::Json);
    }
}

/// An indented, one-field-per-line rendering of a schema (for snapshots and docs).
pub fn describe(schema: &Schema) -> String {
    fn field(out: &mut String, f: &Field, depth: usize) {
        let pad = "  ".repeat(depth);
        let (list, dt) = match f.data_type() {
            DataType::List(inner) => ("[]", inner.data_type()),
            other => ("", other),
        };
        match dt {
            DataType::Struct(fs) => {
                out.push_str(&format!("{pad}{}{list}: struct\n", f.name()));
                for c in fs {
                    field(out, c, depth + 1);
                }
            }
            other => out.push_str(&format!("{pad}{}{list}: {other}\n", f.name())),
        }
    }
    let mut out = String::new();
    for f in schema.fields() {
        field(&mut out, f, 0);
    }
    out
}

#[cfg(test)]
mod snapshots {
    use super::*;

    fn snapshot(rt: &str) -> String {
        let m = Model::r4().unwrap();
        let shape = TableShape::try_new(m, rt, ShapeOptions::default()).unwrap();
        format!("# {rt}: {} leaf columns\n{}", shape.leaf_count(), describe(&shape.arrow_schema()))
    }

    #[test]
    fn patient_schema() {
        insta::assert_snapshot!(snapshot("Patient"));
    }

    #[test]
    fn observation_schema() {
        insta::assert_snapshot!(snapshot("Observation"));
    }

    #[test]
    fn questionnaire_schema() {
        insta::assert_snapshot!(snapshot("Questionnaire"));
    }

    #[test]
    fn explanation_of_benefit_schema() {
        insta::assert_snapshot!(snapshot("ExplanationOfBenefit"));
    }
}
