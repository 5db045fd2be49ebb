//! Search-index extraction: the values of every R4 SearchParameter of a resource, computed
//! with FHIRPath when the resource is written and stored in typed `_sp_<code>` columns of
//! its current table.
//!
//! Owns: compiling the official SearchParameters of one resource type once
//! ([`SearchIndex::for_type`]), the Arrow type of each index column, turning FHIRPath
//! results into index values ([`IndexValue`]) by parameter type, and writing them into a
//! row. The rule for dates: a date, dateTime or instant stands for the range from its first
//! to its last microsecond at its precision; a value without a zone is read as UTC
//! (`2021-03` is `[2021-03-01T00:00:00Z, 2021-03-31T23:59:59.999999Z]`). Search uses the same
//! rule ([`Temporal::range_micros`]).
//!
//! Must not: do I/O, or know how a search is planned.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use arrow_schema::{DataType, Field, Fields};
use rust_decimal::Decimal;
use unicode_normalization::UnicodeNormalization;

use crate::definitions::SearchParameter;
use crate::fhirpath::value::{is_quantity_type, quantity_of};
use crate::fhirpath::{Ast, BinOp, Context, Expression, Node, NodeType, Temporal, Value};
use crate::json::{Json, write_str};
use crate::model::{Model, Primitive};
use crate::shape::{DECIMAL_PRECISION, DECIMAL_SCALE, normalize_decimal, reference_target, timestamp_type};

/// Prefix of every search-index column.
pub const COLUMN_PREFIX: &str = "_sp_";

/// The column of a parameter code: `_sp_` + code with `-` as `_` (`value-quantity` ->
/// `_sp_value_quantity`; `_lastUpdated` -> `_sp__lastUpdated`, distinct from a `source`
/// parameter's `_sp_source` for `_source`'s `_sp__source`).
pub fn column_name(code: &str) -> String {
    format!("{COLUMN_PREFIX}{}", code.replace('-', "_"))
}

/// The parameter types that extract values.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamKind {
    Token,
    String,
    Date,
    Number,
    Quantity,
    Reference,
    Uri,
    /// Components: (code, kind, expression relative to each item of the main expression).
    Composite(Vec<Component>),
}

/// One component of a composite parameter.
#[derive(Debug, Clone)]
pub struct Component {
    /// The component parameter's code (e.g. `code`, `value-quantity`).
    pub code: String,
    /// Its type (never composite).
    pub kind: ParamKind,
    /// Expression evaluated on each item of the composite's expression.
    pub expression: Expression,
}

impl PartialEq for Component {
    fn eq(&self, other: &Self) -> bool {
        self.code == other.code && self.kind == other.kind && self.expression.source() == other.expression.source()
    }
}

/// One parameter compiled for one resource type.
#[derive(Debug, Clone)]
pub struct IndexedParam {
    /// The code used in search URLs.
    pub code: String,
    /// Canonical URL of the SearchParameter.
    pub url: String,
    /// The index column.
    pub column: String,
    pub kind: ParamKind,
    pub expression: Expression,
    /// Indexes (into the type's `Structure::elements`) of the top-level elements the
    /// expression starts from; `None` when it may reach anything (it is then always
    /// evaluated).
    roots: Option<Vec<usize>>,
}

/// A SearchParameter that does not extract, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Unsupported {
    pub id: String,
    pub code: String,
    pub param_type: String,
    pub reason: String,
}

/// One extracted value.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// `system|code`, with display or text for `:text`.
    Token {
        system: Option<String>,
        code: Option<String>,
        text: Option<String>,
    },
    /// As written, and normalized (lower case, accents removed) for the default and
    /// `:contains` matches.
    String {
        value: String,
        norm: String,
    },
    /// Inclusive range in microseconds since the epoch; `None` is open.
    Date {
        start: Option<i64>,
        end: Option<i64>,
    },
    /// Decimal text normalized for `Decimal128(38, 18)`.
    Number(String),
    /// A quantity, with its value in canonical UCUM units when the unit is known. A Range
    /// has `low`/`high` instead of `value`.
    Quantity {
        value: Option<String>,
        low: Option<String>,
        high: Option<String>,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
        canonical_value: Option<String>,
        canonical_code: Option<String>,
    },
    /// A reference: as written, target type and id when literal, absolute URL when the
    /// reference is one (or a canonical), and the logical identifier.
    Reference {
        reference: Option<String>,
        target_type: Option<String>,
        target_id: Option<String>,
        url: Option<String>,
        identifier_system: Option<String>,
        identifier_value: Option<String>,
    },
    Uri(String),
    /// One value per component, in component order.
    Composite(Vec<IndexValue>),
}

/// The compiled search parameters of one resource type.
#[derive(Debug)]
pub struct SearchIndex {
    pub resource_type: String,
    structure: Option<&'static crate::model::Structure>,
    pub params: Vec<IndexedParam>,
    pub unsupported: Vec<Unsupported>,
}

fn applies(p: &SearchParameter, rt: &str) -> bool {
    p.base.iter().any(|b| {
        b == rt || b == "Resource" || (b == "DomainResource" && !matches!(rt, "Bundle" | "Binary" | "Parameters"))
    })
}

fn kind_of(model: &Model, p: &SearchParameter) -> Result<ParamKind, String> {
    Ok(match p.param_type.as_str() {
        "token" => ParamKind::Token,
        "string" => ParamKind::String,
        "date" => ParamKind::Date,
        "number" => ParamKind::Number,
        "quantity" => ParamKind::Quantity,
        "reference" => ParamKind::Reference,
        "uri" => ParamKind::Uri,
        "composite" => {
            let mut comps = Vec::new();
            for c in &p.component {
                let def = model
                    .search_parameters()
                    .iter()
                    .find(|d| d.url == c.definition)
                    .ok_or_else(|| format!("component {} is not in the registry", c.definition))?;
                let kind = kind_of(model, def)?;
                if matches!(kind, ParamKind::Composite(_)) {
                    return Err("nested composite".into());
                }
                let expression = Expression::parse(&c.expression).map_err(|e| format!("component: {e}"))?;
                comps.push(Component { code: def.code.clone(), kind, expression });
            }
            if comps.is_empty() {
                return Err("composite without components".into());
            }
            ParamKind::Composite(comps)
        }
        "special" => return Err(format!("special parameter '{}' (geographic/text search) has no index", p.code)),
        other => return Err(format!("unknown parameter type {other}")),
    })
}

static CACHE: OnceLock<Mutex<HashMap<String, Arc<SearchIndex>>>> = OnceLock::new();

impl SearchIndex {
    /// The compiled parameters of `resource_type` (built once per process and type).
    pub fn for_type(model: &'static Model, resource_type: &str) -> Arc<SearchIndex> {
        let cache = CACHE.get_or_init(Default::default);
        if let Some(ix) = cache.lock().expect("search index cache").get(resource_type) {
            return ix.clone();
        }
        let ix = Arc::new(Self::build(model, resource_type));
        cache.lock().expect("search index cache").entry(resource_type.to_string()).or_insert(ix).clone()
    }

    fn build(model: &'static Model, rt: &str) -> SearchIndex {
        let mut params: Vec<IndexedParam> = Vec::new();
        let mut unsupported = Vec::new();
        for p in model.search_parameters().iter().filter(|p| applies(p, rt)) {
            let skip = |reason: String| Unsupported {
                id: p.id.clone(),
                code: p.code.clone(),
                param_type: p.param_type.clone(),
                reason,
            };
            let Some(text) = p.expression.as_deref() else {
                unsupported.push(skip("no FHIRPath expression in the definition".into()));
                continue;
            };
            let kind = match kind_of(model, p) {
                Ok(k) => k,
                Err(reason) => {
                    unsupported.push(skip(reason));
                    continue;
                }
            };
            let expression = match Expression::parse(text) {
                Ok(e) => e,
                Err(e) => {
                    unsupported.push(skip(e.to_string()));
                    continue;
                }
            };
            let column = column_name(&p.code);
            if params.iter().any(|q| q.code == p.code || q.column.eq_ignore_ascii_case(&column)) {
                unsupported.push(skip(format!("its column {column} is taken by another parameter of {rt}")));
                continue;
            }
            // Branches for other types (`Patient.name | Practitioner.name` on Patient) go.
            let expression = match prune(expression.ast(), rt, model) {
                Some(ast) => Expression::from_ast(ast, text),
                None => expression,
            };
            let structure = model.structure(rt);
            let roots = roots(expression.ast(), rt, model).and_then(|names| {
                let s = structure?;
                // A name the type lacks can never be present: it simply matches nothing.
                Some(names.iter().filter_map(|n| s.elements.iter().position(|e| &e.name == n)).collect())
            });
            params.push(IndexedParam { code: p.code.clone(), url: p.url.clone(), column, kind, expression, roots });
        }
        params.sort_by(|a, b| a.code.cmp(&b.code));
        let structure = model.structure(rt).map(|s| s.as_ref());
        SearchIndex { resource_type: rt.to_string(), structure, params, unsupported }
    }

    /// The parameter with this code.
    pub fn param(&self, code: &str) -> Option<&IndexedParam> {
        self.params.iter().find(|p| p.code == code)
    }

    /// The index columns, in parameter-code order.
    pub fn arrow_fields(&self) -> Vec<Field> {
        self.params.iter().map(|p| Field::new(&p.column, list_of(value_type(&p.kind)), true)).collect()
    }

    /// Extracted values of every parameter that has any, in parameter order.
    pub fn extract(&self, model: &'static Model, resource: &Json) -> Vec<(usize, Vec<IndexValue>)> {
        let ctx = Context::new(model, Some(resource));
        let root = Node::resource(model, resource);
        // Which top-level elements the resource has, by element index.
        let mut present = vec![false; self.structure.map_or(0, |s| s.elements.len())];
        if let (Some(s), Some(obj)) = (self.structure, resource.as_object()) {
            for (k, _) in obj {
                if let Some(&(ei, _)) = s.by_json_name.get(k.strip_prefix('_').unwrap_or(k)) {
                    present[ei] = true;
                }
            }
        }
        let mut out = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            if let Some(roots) = &p.roots
                && !roots.iter().any(|&r| present.get(r).copied().unwrap_or(true))
            {
                continue;
            }
            let values = extract_param(&ctx, p, root);
            if !values.is_empty() {
                out.push((i, values));
            }
        }
        out
    }

    /// The parameters whose expression fails on `resource` (their values are then left
    /// empty), with the error: for tests and diagnostics.
    pub fn errors(&self, model: &'static Model, resource: &Json) -> Vec<(String, String)> {
        let ctx = Context::new(model, Some(resource));
        let root = Value::Node(Node::resource(model, resource));
        let mut out = Vec::new();
        for p in &self.params {
            if let Err(e) = p.expression.evaluate_in(&ctx, vec![root.clone()]) {
                out.push((p.code.clone(), e.to_string()));
            }
        }
        out
    }

    /// Writes `,"<column>":[...]` for every parameter with values (JSON matching
    /// [`SearchIndex::arrow_fields`], timestamps as epoch microseconds).
    pub fn write_row(&self, model: &'static Model, resource: &Json, out: &mut String) {
        for (i, values) in self.extract(model, resource) {
            out.push(',');
            write_str(out, &self.params[i].column);
            out.push_str(":[");
            for (j, v) in values.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                write_value(&self.params[i].kind, v, out);
            }
            out.push(']');
        }
    }
}

/// `ast` without the union branches that start from a type `rt` is not (`None` when no
/// branch is left).
fn prune(ast: &Ast, rt: &str, model: &Model) -> Option<Ast> {
    if let Ast::Binary { op: BinOp::Union, left, right } = ast {
        return match (prune(left, rt, model), prune(right, rt, model)) {
            (Some(l), Some(r)) => Some(Ast::Binary { op: BinOp::Union, left: Box::new(l), right: Box::new(r) }),
            (one, None) | (None, one) => one,
        };
    }
    let mut cur = ast;
    loop {
        cur = match cur {
            Ast::Member(t, _) | Ast::Index(t, _) => t,
            Ast::Function { target: Some(t), .. } => t,
            Ast::TypeOp { operand, .. } => operand,
            _ => break,
        };
    }
    match cur {
        Ast::Identifier(t)
            if t.starts_with(|c: char| c.is_ascii_uppercase())
                && model.type_name(t).is_some()
                && !model.is_subtype(rt, t) =>
        {
            None
        }
        _ => Some(ast.clone()),
    }
}

/// The top-level elements an expression can start from on type `rt`: `Some(vec![])` when it
/// cannot apply (`Practitioner.name` on Patient), `None` when unknown.
fn roots(ast: &Ast, rt: &str, model: &Model) -> Option<Vec<String>> {
    match ast {
        Ast::Member(target, name) => match target.as_ref() {
            Ast::Identifier(t) if t.starts_with(|c: char| c.is_ascii_uppercase()) => {
                if model.is_subtype(rt, t) {
                    Some(vec![name.clone()])
                } else {
                    Some(vec![])
                }
            }
            other => roots(other, rt, model),
        },
        Ast::Function { target: Some(t), .. } | Ast::Index(t, _) => roots(t, rt, model),
        Ast::TypeOp { operand, .. } => roots(operand, rt, model),
        Ast::Binary { op: BinOp::Union, left, right } => {
            let mut l = roots(left, rt, model)?;
            l.extend(roots(right, rt, model)?);
            Some(l)
        }
        _ => None,
    }
}

fn extract_param<'a>(ctx: &Context<'a>, p: &IndexedParam, root: Node<'a>) -> Vec<IndexValue> {
    let Ok(items) = p.expression.evaluate_in(ctx, vec![Value::Node(root)]) else { return vec![] };
    let mut out = Vec::new();
    match &p.kind {
        ParamKind::Composite(components) => {
            for item in &items {
                let mut per_component: Vec<Vec<IndexValue>> = Vec::new();
                for c in components {
                    let vals = c
                        .expression
                        .evaluate_in(ctx, vec![item.clone()])
                        .map(|r| r.iter().flat_map(|v| values_of(&c.kind, v)).collect())
                        .unwrap_or_default();
                    per_component.push(vals);
                }
                // Every combination of the components' values.
                let mut combos: Vec<Vec<IndexValue>> = vec![vec![]];
                for vals in per_component {
                    let mut next = Vec::new();
                    for combo in &combos {
                        for v in &vals {
                            let mut c = combo.clone();
                            c.push(v.clone());
                            next.push(c);
                        }
                    }
                    combos = next;
                }
                out.extend(combos.into_iter().filter(|c| c.len() == components.len()).map(IndexValue::Composite));
            }
        }
        kind => {
            for item in &items {
                for v in values_of(kind, item) {
                    if !out.contains(&v) {
                        out.push(v);
                    }
                }
            }
        }
    }
    out
}

fn str_of<'a>(v: Option<&'a Json>, key: &str) -> Option<&'a str> {
    v?.get(key)?.as_str()
}

fn own(s: Option<&str>) -> Option<String> {
    s.map(str::to_string)
}

/// Lower case with accents removed (NFD, combining marks dropped).
pub fn normalize_string(s: &str) -> String {
    s.nfd().filter(|c| !unicode_normalization::char::is_combining_mark(*c)).flat_map(char::to_lowercase).collect()
}

fn string_value(s: &str) -> IndexValue {
    IndexValue::String { value: s.to_string(), norm: normalize_string(s) }
}

fn decimal_text(d: &Decimal) -> Option<String> {
    normalize_decimal(&d.to_string())
}

fn values_of(kind: &ParamKind, item: &Value<'_>) -> Vec<IndexValue> {
    let (node, type_name) = match item {
        Value::Node(n) => (Some(n), n.type_name().unwrap_or("")),
        _ => (None, ""),
    };
    let json = node.and_then(|n| n.value);
    let mut out = Vec::new();
    match kind {
        ParamKind::Token => match type_name {
            "Coding" => out.push(IndexValue::Token {
                system: own(str_of(json, "system")),
                code: own(str_of(json, "code")),
                text: own(str_of(json, "display")),
            }),
            "CodeableConcept" => {
                for c in json.and_then(|j| j.get("coding")).and_then(Json::as_array).unwrap_or(&[]) {
                    out.push(IndexValue::Token {
                        system: own(str_of(Some(c), "system")),
                        code: own(str_of(Some(c), "code")),
                        text: own(str_of(Some(c), "display")),
                    });
                }
                if let Some(t) = str_of(json, "text") {
                    out.push(IndexValue::Token { system: None, code: None, text: Some(t.to_string()) });
                }
            }
            "Identifier" => out.push(IndexValue::Token {
                system: own(str_of(json, "system")),
                code: own(str_of(json, "value")),
                text: own(json.and_then(|j| j.get("type")).and_then(|t| t.get("text")).and_then(Json::as_str)),
            }),
            "ContactPoint" => out.push(IndexValue::Token {
                system: own(str_of(json, "system")),
                code: own(str_of(json, "value")),
                text: own(str_of(json, "use")),
            }),
            _ => match item.normalized().as_ref() {
                Value::Boolean(b) => {
                    out.push(IndexValue::Token { system: None, code: Some(b.to_string()), text: None })
                }
                Value::String(s) => out.push(IndexValue::Token { system: None, code: Some(s.to_string()), text: None }),
                Value::Integer(i) => {
                    out.push(IndexValue::Token { system: None, code: Some(i.to_string()), text: None })
                }
                _ => {}
            },
        },
        ParamKind::String => match type_name {
            "HumanName" => {
                for k in ["text", "family", "given", "prefix", "suffix"] {
                    push_strings(json, k, &mut out);
                }
            }
            "Address" => {
                for k in ["text", "line", "city", "district", "state", "postalCode", "country"] {
                    push_strings(json, k, &mut out);
                }
            }
            _ => {
                if let Some(s) = item.as_str() {
                    out.push(string_value(s));
                }
            }
        },
        ParamKind::Date => match type_name {
            "Period" => out.extend(period_value(json)),
            "Timing" => {
                for e in json.and_then(|j| j.get("event")).and_then(Json::as_array).unwrap_or(&[]) {
                    if let Some(t) = e.as_str().and_then(Temporal::parse_datetime) {
                        out.push(date_value(&t));
                    }
                }
                out.extend(period_value(json.and_then(|j| j.get("repeat")).and_then(|r| r.get("boundsPeriod"))));
            }
            _ => {
                if let Value::Temporal(t) = item.normalized().as_ref()
                    && t.kind != crate::fhirpath::TemporalKind::Time
                {
                    out.push(date_value(t));
                }
            }
        },
        ParamKind::Number => match item.normalized().as_ref() {
            Value::Integer(i) => out.extend(normalize_decimal(&i.to_string()).map(IndexValue::Number)),
            Value::Decimal(d) => out.extend(decimal_text(d).map(IndexValue::Number)),
            _ => {}
        },
        ParamKind::Quantity => {
            if is_quantity_type(type_name) {
                if let Some(j) = json {
                    out.push(quantity_value(j));
                }
            } else if type_name == "Money" {
                let value = json.and_then(|j| j.get("value")).and_then(number_text);
                out.push(IndexValue::Quantity {
                    value,
                    low: None,
                    high: None,
                    system: Some("urn:iso:std:iso:4217".into()),
                    code: own(str_of(json, "currency")),
                    unit: None,
                    canonical_value: None,
                    canonical_code: None,
                });
            } else if type_name == "Range" {
                let low = json.and_then(|j| j.get("low"));
                let high = json.and_then(|j| j.get("high"));
                let unit_of = |k: &str| str_of(low, k).or_else(|| str_of(high, k));
                out.push(IndexValue::Quantity {
                    value: None,
                    low: low.and_then(|l| l.get("value")).and_then(number_text),
                    high: high.and_then(|h| h.get("value")).and_then(number_text),
                    system: own(unit_of("system")),
                    code: own(unit_of("code")),
                    unit: own(unit_of("unit")),
                    canonical_value: None,
                    canonical_code: None,
                });
            } else if let Value::Quantity(q) = item.normalized().as_ref() {
                let canonical = q.canonical();
                out.push(IndexValue::Quantity {
                    value: decimal_text(&q.value),
                    low: None,
                    high: None,
                    system: Some("http://unitsofmeasure.org".into()),
                    code: Some(q.unit.clone()),
                    unit: None,
                    canonical_value: canonical.as_ref().and_then(|(v, _)| decimal_text(v)),
                    canonical_code: canonical.map(|(_, c)| c),
                });
            }
        }
        ParamKind::Reference => match (type_name, node.map(|n| n.ty)) {
            ("Reference", _) => {
                let reference = str_of(json, "reference");
                let identifier = json.and_then(|j| j.get("identifier"));
                if reference.is_none() && identifier.is_none() {
                    return out;
                }
                let target = reference.and_then(reference_target);
                let absolute = reference.filter(|r| r.contains("://") || r.starts_with("urn:"));
                out.push(IndexValue::Reference {
                    reference: own(reference),
                    target_type: target.map(|t| t.0.to_string()),
                    target_id: target.map(|t| t.1.to_string()),
                    url: own(absolute),
                    identifier_system: own(str_of(identifier, "system")),
                    identifier_value: own(str_of(identifier, "value")),
                });
            }
            (_, Some(NodeType::Primitive(Primitive::Canonical | Primitive::Uri | Primitive::Url))) => {
                if let Some(s) = item.as_str() {
                    let target = reference_target(s.split('|').next().unwrap_or(s));
                    out.push(IndexValue::Reference {
                        reference: Some(s.to_string()),
                        target_type: target.map(|t| t.0.to_string()),
                        target_id: target.map(|t| t.1.to_string()),
                        url: Some(s.to_string()),
                        identifier_system: None,
                        identifier_value: None,
                    });
                }
            }
            _ => {}
        },
        ParamKind::Uri => {
            if let Some(s) = item.as_str() {
                out.push(IndexValue::Uri(s.to_string()));
            }
        }
        ParamKind::Composite(_) => {}
    }
    out
}

fn number_text(v: &Json) -> Option<String> {
    match v {
        Json::Number(n) => normalize_decimal(n),
        _ => None,
    }
}

fn quantity_value(j: &Json) -> IndexValue {
    let q = quantity_of(j);
    let system = str_of(Some(j), "system");
    let ucum = system.is_none_or(|s| s == "http://unitsofmeasure.org");
    let canonical = q.filter(|_| ucum && j.get("code").is_some()).and_then(|q| q.canonical());
    IndexValue::Quantity {
        value: j.get("value").and_then(number_text),
        low: None,
        high: None,
        system: own(system),
        code: own(str_of(Some(j), "code")),
        unit: own(str_of(Some(j), "unit")),
        canonical_value: canonical.as_ref().and_then(|(v, _)| decimal_text(v)),
        canonical_code: canonical.map(|(_, c)| c),
    }
}

fn date_value(t: &Temporal) -> IndexValue {
    let (start, end) = t.range_micros();
    IndexValue::Date { start: Some(start), end: Some(end) }
}

/// A Period: from its start's first to its end's last microsecond, open where a bound is
/// missing; `None` when it has neither.
fn period_value(period: Option<&Json>) -> Option<IndexValue> {
    let bound = |k: &str| str_of(period, k).and_then(Temporal::parse_datetime).map(|t| t.range_micros());
    let start = bound("start").map(|r| r.0);
    let end = bound("end").map(|r| r.1);
    (start.is_some() || end.is_some()).then_some(IndexValue::Date { start, end })
}

fn push_strings(json: Option<&Json>, key: &str, out: &mut Vec<IndexValue>) {
    match json.and_then(|j| j.get(key)) {
        Some(Json::String(s)) => out.push(string_value(s)),
        Some(Json::Array(a)) => out.extend(a.iter().filter_map(Json::as_str).map(string_value)),
        _ => {}
    }
}

fn list_of(t: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("element", t, true)))
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn decimal(name: &str) -> Field {
    Field::new(name, DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE), true)
}

/// The Arrow type of one value of a parameter kind.
pub fn value_type(kind: &ParamKind) -> DataType {
    match kind {
        ParamKind::Token => DataType::Struct(Fields::from(vec![utf8("system"), utf8("code"), utf8("text")])),
        ParamKind::String => DataType::Struct(Fields::from(vec![utf8("value"), utf8("norm")])),
        ParamKind::Date => DataType::Struct(Fields::from(vec![
            Field::new("start", timestamp_type(), true),
            Field::new("end", timestamp_type(), true),
        ])),
        ParamKind::Number => DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE),
        ParamKind::Quantity => DataType::Struct(Fields::from(vec![
            decimal("value"),
            decimal("low"),
            decimal("high"),
            utf8("system"),
            utf8("code"),
            utf8("unit"),
            decimal("canonical_value"),
            utf8("canonical_code"),
        ])),
        ParamKind::Reference => DataType::Struct(Fields::from(vec![
            utf8("reference"),
            utf8("type"),
            utf8("id"),
            utf8("url"),
            utf8("identifier_system"),
            utf8("identifier_value"),
        ])),
        ParamKind::Uri => DataType::Utf8,
        ParamKind::Composite(components) => DataType::Struct(Fields::from(
            components
                .iter()
                .map(|c| Field::new(c.code.replace('-', "_"), value_type(&c.kind), true))
                .collect::<Vec<_>>(),
        )),
    }
}

fn write_opt(out: &mut String, key: &str, v: &Option<String>, first: &mut bool) {
    if let Some(v) = v {
        if !*first {
            out.push(',');
        }
        *first = false;
        write_str(out, key);
        out.push(':');
        write_str(out, v);
    }
}

fn write_num(out: &mut String, key: &str, v: &Option<String>, first: &mut bool) {
    if let Some(v) = v {
        if !*first {
            out.push(',');
        }
        *first = false;
        write_str(out, key);
        out.push(':');
        out.push_str(v);
    }
}

fn write_value(kind: &ParamKind, v: &IndexValue, out: &mut String) {
    let mut first = true;
    match v {
        IndexValue::Token { system, code, text } => {
            out.push('{');
            write_opt(out, "system", system, &mut first);
            write_opt(out, "code", code, &mut first);
            write_opt(out, "text", text, &mut first);
            out.push('}');
        }
        IndexValue::String { value, norm } => {
            out.push_str("{\"value\":");
            write_str(out, value);
            out.push_str(",\"norm\":");
            write_str(out, norm);
            out.push('}');
        }
        IndexValue::Date { start, end } => {
            out.push('{');
            write_num(out, "start", &start.map(|s| s.to_string()), &mut first);
            write_num(out, "end", &end.map(|s| s.to_string()), &mut first);
            out.push('}');
        }
        IndexValue::Number(n) => out.push_str(n),
        IndexValue::Quantity { value, low, high, system, code, unit, canonical_value, canonical_code } => {
            out.push('{');
            write_num(out, "value", value, &mut first);
            write_num(out, "low", low, &mut first);
            write_num(out, "high", high, &mut first);
            write_opt(out, "system", system, &mut first);
            write_opt(out, "code", code, &mut first);
            write_opt(out, "unit", unit, &mut first);
            write_num(out, "canonical_value", canonical_value, &mut first);
            write_opt(out, "canonical_code", canonical_code, &mut first);
            out.push('}');
        }
        IndexValue::Reference { reference, target_type, target_id, url, identifier_system, identifier_value } => {
            out.push('{');
            write_opt(out, "reference", reference, &mut first);
            write_opt(out, "type", target_type, &mut first);
            write_opt(out, "id", target_id, &mut first);
            write_opt(out, "url", url, &mut first);
            write_opt(out, "identifier_system", identifier_system, &mut first);
            write_opt(out, "identifier_value", identifier_value, &mut first);
            out.push('}');
        }
        IndexValue::Uri(u) => write_str(out, u),
        IndexValue::Composite(parts) => {
            out.push('{');
            if let ParamKind::Composite(components) = kind {
                for (i, (c, p)) in components.iter().zip(parts).enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(out, &c.code.replace('-', "_"));
                    out.push(':');
                    write_value(&c.kind, p, out);
                }
            }
            out.push('}');
        }
    }
}

/// How every SearchParameter of the official registry is handled: (id, code, type,
/// `None` when it extracts for every base type, or the reason it does not).
pub fn coverage(model: &'static Model) -> Vec<(String, String, String, Option<String>)> {
    let mut out = Vec::new();
    for p in model.search_parameters() {
        let bases: Vec<&str> = if p.base.iter().any(|b| b == "Resource" || b == "DomainResource") {
            model.resource_types().iter().map(String::as_str).filter(|t| applies(p, t)).collect()
        } else {
            p.base.iter().map(String::as_str).filter(|b| model.is_resource_type(b)).collect()
        };
        let mut reason = None;
        for b in bases {
            let ix = SearchIndex::for_type(model, b);
            if let Some(u) = ix.unsupported.iter().find(|u| u.id == p.id) {
                reason = Some(u.reason.clone());
                break;
            }
        }
        out.push((p.id.clone(), p.code.clone(), p.param_type.clone(), reason));
    }
    out
}
