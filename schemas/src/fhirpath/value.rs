//! FHIRPath values: nodes of a FHIR resource (with their FHIR type) and System values.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::str::FromStr;

use rust_decimal::Decimal;

use super::quantity::Quantity;
use super::temporal::{Temporal, TemporalKind};
use crate::json::Json;
use crate::model::{Model, Primitive, Structure, TypeRef};

/// The FHIR type of a node.
#[derive(Debug, Clone, Copy)]
pub enum NodeType {
    /// A primitive element.
    Primitive(Primitive),
    /// A complex datatype, backbone element or resource; `name` is the FHIR type name
    /// (`HumanName`, `Age`, `BackboneElement`, `Patient`).
    Complex { structure: &'static Structure, name: &'static str },
    /// JSON whose type is not known from the model.
    Unknown,
}

/// An element of a resource: its JSON value and, for primitives, the `_name` companion
/// holding `id` and `extension`.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    pub value: Option<&'a Json>,
    pub companion: Option<&'a Json>,
    pub ty: NodeType,
    /// True when the node's static type is not known to the expression: reached through a
    /// choice element (`Observation.value`) or `children()`/`descendants()`. Naming an
    /// element it lacks then gives empty, even in strict mode.
    pub loose: bool,
}

/// One item of a FHIRPath collection.
#[derive(Debug, Clone)]
pub enum Value<'a> {
    Node(Node<'a>),
    Boolean(bool),
    Integer(i64),
    Decimal(Decimal),
    String(Cow<'a, str>),
    Temporal(Temporal),
    Quantity(Quantity),
    /// The result of `type()`: namespace and name.
    TypeInfo(&'static str, String),
}

impl<'a> Node<'a> {
    /// A resource (or any JSON object with `resourceType`), typed from the model.
    pub fn resource(model: &'static Model, json: &'a Json) -> Node<'a> {
        let ty = json
            .get("resourceType")
            .and_then(Json::as_str)
            .and_then(|t| model.structure(t).map(|s| (s, t)))
            .and_then(|(s, t)| Some(NodeType::Complex { structure: s.as_ref(), name: model.type_name(t)? }))
            .unwrap_or(NodeType::Unknown);
        Node { value: Some(json), companion: None, ty, loose: false }
    }

    /// A node of a given type reference (from the model).
    pub fn typed(model: &'static Model, value: Option<&'a Json>, companion: Option<&'a Json>, t: &TypeRef) -> Node<'a> {
        let ty = match t {
            TypeRef::Primitive(p) => NodeType::Primitive(*p),
            TypeRef::Resource => return value.map_or(Node::unknown(None), |v| Node::resource(model, v)),
            TypeRef::Extension => complex(model, "Extension"),
            TypeRef::Struct(key) => complex(model, key),
        };
        Node { value, companion, ty, loose: false }
    }

    pub fn unknown(value: Option<&'a Json>) -> Node<'a> {
        Node { value, companion: None, ty: NodeType::Unknown, loose: false }
    }

    /// The FHIR type name (`string`, `HumanName`, `Patient`); `None` when unknown.
    pub fn type_name(&self) -> Option<&'static str> {
        match self.ty {
            NodeType::Primitive(p) => Some(primitive_name(p)),
            NodeType::Complex { name, .. } => Some(name),
            NodeType::Unknown => None,
        }
    }

    /// The System value of a primitive node (`None` for complex nodes and primitives that
    /// carry only extensions).
    pub fn system_value(&self) -> Option<Value<'a>> {
        let v = self.value?;
        match self.ty {
            NodeType::Primitive(p) => primitive_value(p, v),
            NodeType::Unknown => match v {
                Json::Bool(b) => Some(Value::Boolean(*b)),
                Json::String(s) => Some(Value::String(Cow::Borrowed(s))),
                Json::Number(n) => number_value(n, n.contains(['.', 'e', 'E'])),
                _ => None,
            },
            NodeType::Complex { name, .. } if is_quantity_type(name) => quantity_of(v).map(Value::Quantity),
            NodeType::Complex { .. } => None,
        }
    }
}

fn complex(model: &'static Model, key: &str) -> NodeType {
    let name = if key.contains('.') { Some("BackboneElement") } else { model.type_name(key) };
    match (model.structure_of_type(key), name) {
        (Some(structure), Some(name)) => NodeType::Complex { structure, name },
        _ => NodeType::Unknown,
    }
}

/// Quantity and the types that constrain it.
pub fn is_quantity_type(name: &str) -> bool {
    matches!(name, "Quantity" | "Age" | "Duration" | "Distance" | "Count" | "SimpleQuantity" | "MoneyQuantity")
}

/// A FHIR Quantity object as a FHIRPath quantity (UCUM `code` when the system is UCUM or
/// absent, else `unit`).
pub fn quantity_of(v: &Json) -> Option<Quantity> {
    let Json::Number(n) = v.get("value")? else { return None };
    let value = parse_decimal(n)?;
    let unit = v.get("code").and_then(Json::as_str).or_else(|| v.get("unit").and_then(Json::as_str)).unwrap_or("1");
    Some(Quantity { value, unit: unit.to_string() })
}

pub fn parse_decimal(n: &str) -> Option<Decimal> {
    Decimal::from_str(n).ok().or_else(|| Decimal::from_scientific(n).ok())
}

fn number_value<'a>(n: &str, decimal: bool) -> Option<Value<'a>> {
    if decimal {
        parse_decimal(n).map(Value::Decimal)
    } else {
        n.parse::<i64>().ok().map(Value::Integer).or_else(|| parse_decimal(n).map(Value::Decimal))
    }
}

fn primitive_value<'a>(p: Primitive, v: &'a Json) -> Option<Value<'a>> {
    use Primitive::*;
    match (p, v) {
        (Boolean, Json::Bool(b)) => Some(Value::Boolean(*b)),
        (Integer | PositiveInt | UnsignedInt, Json::Number(n)) => number_value(n, false),
        (Decimal, Json::Number(n)) => number_value(n, true),
        (Date, Json::String(s)) => Temporal::parse_date(s).map(Value::Temporal),
        (DateTime | Instant, Json::String(s)) => Temporal::parse_datetime(s).map(Value::Temporal),
        (Time, Json::String(s)) => Temporal::parse_time(s).map(Value::Temporal),
        (_, Json::String(s)) => Some(Value::String(Cow::Borrowed(s))),
        (_, Json::Number(n)) => number_value(n, n.contains('.')),
        (_, Json::Bool(b)) => Some(Value::Boolean(*b)),
        _ => None,
    }
}

/// The FHIR type code of a primitive.
pub fn primitive_name(p: Primitive) -> &'static str {
    use Primitive::*;
    match p {
        Base64Binary => "base64Binary",
        Boolean => "boolean",
        Canonical => "canonical",
        Code => "code",
        Date => "date",
        DateTime => "dateTime",
        Decimal => "decimal",
        Id => "id",
        Instant => "instant",
        Integer => "integer",
        Markdown => "markdown",
        Oid => "oid",
        PositiveInt => "positiveInt",
        String => "string",
        Time => "time",
        UnsignedInt => "unsignedInt",
        Uri => "uri",
        Url => "url",
        Uuid => "uuid",
        Xhtml => "xhtml",
    }
}

impl<'a> Value<'a> {
    /// The item as a System value: primitives of nodes are converted, complex nodes stay.
    pub fn normalized(&self) -> Cow<'_, Value<'a>> {
        match self {
            Value::Node(n) => match n.system_value() {
                Some(v) => Cow::Owned(v),
                None => Cow::Borrowed(self),
            },
            other => Cow::Borrowed(other),
        }
    }

    /// The System type name (`Integer`, `String`, ...) of a System value.
    pub fn system_type(&self) -> Option<&'static str> {
        Some(match self {
            Value::Boolean(_) => "Boolean",
            Value::Integer(_) => "Integer",
            Value::Decimal(_) => "Decimal",
            Value::String(_) => "String",
            Value::Temporal(t) => match t.kind {
                TemporalKind::Date => "Date",
                TemporalKind::DateTime => "DateTime",
                TemporalKind::Time => "Time",
            },
            Value::Quantity(_) => "Quantity",
            _ => return None,
        })
    }

    /// The string of a string-like item (System String or a string-typed primitive node).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            Value::Node(Node { value: Some(Json::String(s)), ty, .. }) => match ty {
                NodeType::Primitive(p)
                    if !matches!(p, Primitive::Date | Primitive::DateTime | Primitive::Instant | Primitive::Time) =>
                {
                    Some(s)
                }
                NodeType::Unknown => Some(s),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Text of a value as `toString()` gives it.
pub fn to_string(v: &Value<'_>) -> Option<String> {
    Some(match v.normalized().as_ref() {
        Value::Boolean(b) => b.to_string(),
        Value::Integer(i) => i.to_string(),
        Value::Decimal(d) => d.to_string(),
        Value::String(s) => s.to_string(),
        Value::Temporal(t) => t.to_string(),
        Value::Quantity(q) => {
            let unit = if Quantity::is_calendar_unit(&q.unit) { q.unit.clone() } else { format!("'{}'", q.unit) };
            format!("{} {unit}", q.value)
        }
        _ => return None,
    })
}

fn json_equal(a: Option<&Json>, b: Option<&Json>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(Json::Number(x)), Some(Json::Number(y))) => match (parse_decimal(x), parse_decimal(y)) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        (Some(Json::Object(x)), Some(Json::Object(y))) => {
            let xs: Vec<_> = x.iter().filter(|(k, _)| k != "id").collect();
            let ys: Vec<_> = y.iter().filter(|(k, _)| k != "id").collect();
            xs.len() == ys.len()
                && xs.iter().all(|(k, v)| json_equal(Some(v), y.iter().find(|(k2, _)| k2 == k).map(|p| &p.1)))
        }
        (Some(Json::Array(x)), Some(Json::Array(y))) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(Some(a), Some(b)))
        }
        (a, b) => a == b,
    }
}

fn numeric(v: &Value<'_>) -> Option<Decimal> {
    match v {
        Value::Integer(i) => Some(Decimal::from(*i)),
        Value::Decimal(d) => Some(*d),
        _ => None,
    }
}

/// `=` on two items: `None` when the result is unknown (temporal precision, quantities of
/// incompatible units).
pub fn equals(a: &Value<'_>, b: &Value<'_>) -> Option<bool> {
    let (na, nb) = (a.normalized(), b.normalized());
    match (na.as_ref(), nb.as_ref()) {
        (Value::Node(x), Value::Node(y)) => Some(json_equal(x.value, y.value)),
        (Value::Node(_), _) | (_, Value::Node(_)) => Some(false),
        (Value::Boolean(x), Value::Boolean(y)) => Some(x == y),
        (Value::String(x), Value::String(y)) => Some(x == y),
        (Value::Temporal(x), Value::Temporal(y)) => {
            if x.kind == TemporalKind::Time && y.kind != TemporalKind::Time
                || y.kind == TemporalKind::Time && x.kind != TemporalKind::Time
            {
                return Some(false);
            }
            x.compare(y).map(|o| o == Ordering::Equal)
        }
        (Value::Quantity(x), Value::Quantity(y)) => quantity_cmp(x, y).map(|o| o == Ordering::Equal),
        (Value::TypeInfo(n1, t1), Value::TypeInfo(n2, t2)) => Some(n1 == n2 && t1 == t2),
        (x, y) => match (numeric(x), numeric(y)) {
            (Some(p), Some(q)) => Some(p == q),
            _ => Some(false),
        },
    }
}

fn normalize_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

fn round_to_common(a: Decimal, b: Decimal) -> (Decimal, Decimal) {
    let scale = a.scale().min(b.scale());
    (a.round_dp(scale), b.round_dp(scale))
}

/// `~` on two items.
pub fn equivalent(a: &Value<'_>, b: &Value<'_>) -> bool {
    let (na, nb) = (a.normalized(), b.normalized());
    match (na.as_ref(), nb.as_ref()) {
        (Value::String(x), Value::String(y)) => normalize_ws(x) == normalize_ws(y),
        (Value::Temporal(x), Value::Temporal(y)) => x.compare(y) == Some(Ordering::Equal),
        (Value::Quantity(x), Value::Quantity(y)) => match (x.canonical(), y.canonical()) {
            (Some((vx, ux)), Some((vy, uy))) if ux == uy => {
                let scale = x.value.scale().min(y.value.scale());
                vx.round_dp(scale) == vy.round_dp(scale)
            }
            _ => false,
        },
        (Value::Node(x), Value::Node(y)) => json_equal(x.value, y.value),
        (x, y) => match (numeric(x), numeric(y)) {
            (Some(p), Some(q)) => {
                let (p, q) = round_to_common(p, q);
                p == q
            }
            _ => equals(x, y).unwrap_or(false),
        },
    }
}

fn quantity_cmp(x: &Quantity, y: &Quantity) -> Option<Ordering> {
    if x.unit == y.unit {
        return Some(x.value.cmp(&y.value));
    }
    // Calendar years and months are not the definite UCUM `a` and `mo`.
    let months = |q: &Quantity| match q.unit.as_str() {
        "year" => Some(q.value * Decimal::from(12)),
        "month" => Some(q.value),
        _ => None,
    };
    let calendar = |q: &Quantity| matches!(q.unit.as_str(), "year" | "month");
    if calendar(x) || calendar(y) {
        return match (months(x), months(y)) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ => None,
        };
    }
    let (vx, ux) = x.canonical()?;
    let (vy, uy) = y.canonical()?;
    (ux == uy).then(|| vx.cmp(&vy))
}

/// Ordering for `<` `>` `<=` `>=`: `Ok(None)` when unknown (precision), `Err` when the
/// two items cannot be compared at all.
pub fn compare(a: &Value<'_>, b: &Value<'_>) -> Result<Option<Ordering>, String> {
    let (na, nb) = (a.normalized(), b.normalized());
    match (na.as_ref(), nb.as_ref()) {
        (Value::String(x), Value::String(y)) => Ok(Some(x.cmp(y))),
        (Value::Temporal(x), Value::Temporal(y)) => Ok(x.compare(y)),
        (Value::Quantity(x), Value::Quantity(y)) => Ok(quantity_cmp(x, y)),
        (x, y) => match (numeric(x), numeric(y)) {
            (Some(p), Some(q)) => Ok(Some(p.cmp(&q))),
            _ => Err(format!("cannot compare {} with {}", describe(x), describe(y))),
        },
    }
}

/// A short description of an item for error messages.
pub fn describe(v: &Value<'_>) -> String {
    match v {
        Value::Node(n) => n.type_name().unwrap_or("element").to_string(),
        other => other.system_type().unwrap_or("type").to_string(),
    }
}
