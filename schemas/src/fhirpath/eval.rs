//! The evaluator: collections in, collections out.

use std::borrow::Cow;
use std::cmp::Ordering;

use base64::Engine as _;
use rust_decimal::Decimal;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};

use super::parser::{Ast, BinOp, TypeName};
use super::quantity::Quantity;
use super::temporal::{Temporal, TemporalKind};
use super::value::{self, Node, NodeType, Value, compare, equals, equivalent, parse_decimal, to_string};
use super::{Context, FhirPathError};
use crate::json::Json;
use crate::model::{Primitive, TypeRef};

type Col<'a> = Vec<Value<'a>>;
type R<T> = Result<T, FhirPathError>;

const MAX_DEPTH: usize = 400;

fn exec(msg: impl Into<String>) -> FhirPathError {
    FhirPathError::Execution(msg.into())
}

fn semantic(msg: impl Into<String>) -> FhirPathError {
    FhirPathError::Semantic(msg.into())
}

pub(super) fn evaluate<'a>(ctx: &Context<'a>, ast: &Ast, input: Col<'a>) -> R<Col<'a>> {
    let ev = Eval { ctx };
    let scope = Scope { this: None, index: None, total: None, depth: 0 };
    ev.eval(ast, &input, &scope)
}

struct Eval<'c, 'a> {
    ctx: &'c Context<'a>,
}

#[derive(Clone, Copy)]
struct Scope<'s, 'a> {
    this: Option<&'s Value<'a>>,
    index: Option<i64>,
    total: Option<&'s [Value<'a>]>,
    depth: usize,
}

const SYSTEM_TYPES: [&str; 8] = ["Boolean", "String", "Integer", "Decimal", "Date", "DateTime", "Time", "Quantity"];

/// Empty, one boolean, or (one non-boolean item) true; more than one item is an error.
fn to_bool(col: &[Value<'_>], what: &str) -> R<Option<bool>> {
    match col {
        [] => Ok(None),
        [v] => Ok(Some(match v.normalized().as_ref() {
            Value::Boolean(b) => *b,
            _ => true,
        })),
        _ => Err(exec(format!("{what} needs a single value, got {} items", col.len()))),
    }
}

fn single<'s, 'a>(col: &'s [Value<'a>], what: &str) -> R<Option<&'s Value<'a>>> {
    match col {
        [] => Ok(None),
        [v] => Ok(Some(v)),
        _ => Err(exec(format!("{what} needs a single item, got {}", col.len()))),
    }
}

fn string_of<'s>(v: &'s Value<'_>, what: &str) -> R<&'s str> {
    v.as_str().ok_or_else(|| exec(format!("{what} needs a string, got {}", value::describe(v))))
}

fn integer_of(v: &Value<'_>, what: &str) -> R<i64> {
    match v.normalized().as_ref() {
        Value::Integer(i) => Ok(*i),
        other => Err(exec(format!("{what} needs an integer, got {}", value::describe(other)))),
    }
}

fn push_unique<'a>(out: &mut Col<'a>, v: Value<'a>) {
    if !out.iter().any(|o| equals(o, &v) == Some(true)) {
        out.push(v);
    }
}

fn dec_value<'a>(d: Decimal) -> Value<'a> {
    Value::Decimal(d)
}

fn to_f64(v: &Value<'_>) -> Option<f64> {
    match v.normalized().as_ref() {
        Value::Integer(i) => Some(*i as f64),
        Value::Decimal(d) => d.to_f64(),
        _ => None,
    }
}

fn from_f64<'a>(f: f64) -> Col<'a> {
    if !f.is_finite() {
        return vec![];
    }
    Decimal::from_f64(f).map(|d| vec![Value::Decimal(d.round_dp(15).normalize())]).unwrap_or_default()
}

impl<'c, 'a> Eval<'c, 'a> {
    fn eval(&self, ast: &Ast, focus: &[Value<'a>], scope: &Scope<'_, 'a>) -> R<Col<'a>> {
        if scope.depth > MAX_DEPTH {
            return Err(exec("expression evaluation nested too deeply"));
        }
        let inner = Scope { depth: scope.depth + 1, ..*scope };
        let scope = &inner;
        Ok(match ast {
            Ast::Empty => vec![],
            Ast::Boolean(b) => vec![Value::Boolean(*b)],
            Ast::String(s) => vec![Value::String(Cow::Owned(s.clone()))],
            Ast::Integer(i) => vec![Value::Integer(*i)],
            Ast::Decimal(d) => vec![Value::Decimal(*d)],
            Ast::Temporal(t) => {
                if t.kind == TemporalKind::Time && t.offset.is_some() {
                    return Err(exec("a time literal cannot have a zone"));
                }
                vec![Value::Temporal(t.clone())]
            }
            Ast::Quantity(q) => vec![Value::Quantity(q.clone())],
            Ast::This => match scope.this {
                Some(v) => vec![v.clone()],
                None => focus.to_vec(),
            },
            Ast::IndexVar => scope.index.map(|i| vec![Value::Integer(i)]).unwrap_or_default(),
            Ast::Total => scope.total.map(<[_]>::to_vec).unwrap_or_default(),
            Ast::External(name) => self.external(name)?,
            Ast::Identifier(name) => {
                let mut out = Vec::new();
                for item in focus {
                    self.navigate(item, name, true, &mut out)?;
                }
                out
            }
            Ast::Member(target, name) => {
                let t = self.eval(target, focus, scope)?;
                let mut out = Vec::new();
                for item in &t {
                    self.navigate(item, name, false, &mut out)?;
                }
                out
            }
            Ast::Index(target, index) => {
                let t = self.eval(target, focus, scope)?;
                let i = self.eval(index, focus, scope)?;
                match single(&i, "an index")? {
                    None => vec![],
                    Some(i) => {
                        let i = integer_of(i, "an index")?;
                        usize::try_from(i).ok().and_then(|i| t.into_iter().nth(i)).into_iter().collect()
                    }
                }
            }
            Ast::Polarity { negate, operand } => {
                let v = self.eval(operand, focus, scope)?;
                let Some(v) = single(&v, "unary minus")? else { return Ok(vec![]) };
                if !negate {
                    return Ok(vec![v.clone()]);
                }
                vec![match v.normalized().as_ref() {
                    Value::Integer(i) => Value::Integer(i.checked_neg().ok_or_else(|| exec("integer overflow"))?),
                    Value::Decimal(d) if d.is_zero() => Value::Decimal(*d),
                    Value::Decimal(d) => Value::Decimal(-*d),
                    Value::Quantity(q) => Value::Quantity(Quantity { value: -q.value, unit: q.unit.clone() }),
                    other => return Err(exec(format!("cannot negate {}", value::describe(other)))),
                }]
            }
            Ast::TypeOp { is, operand, type_name } => {
                let v = self.eval(operand, focus, scope)?;
                self.is_or_as(v, type_name, *is, if *is { "'is'" } else { "'as'" })?
            }
            Ast::Binary { op, left, right } => self.binary(*op, left, right, focus, scope)?,
            Ast::Function { target, name, args } => {
                let input = match target {
                    Some(t) => self.eval(t, focus, scope)?,
                    None => match scope.this {
                        Some(v) => vec![v.clone()],
                        None => focus.to_vec(),
                    },
                };
                self.function(name, input, args, focus, scope)?
            }
        })
    }

    fn external(&self, name: &str) -> R<Col<'a>> {
        let model = self.ctx.model;
        Ok(match name {
            "resource" | "context" | "rootResource" => {
                self.ctx.resource.map(|r| vec![Value::Node(Node::resource(model, r))]).unwrap_or_default()
            }
            "ucum" => vec![Value::String(Cow::Borrowed("http://unitsofmeasure.org"))],
            "sct" => vec![Value::String(Cow::Borrowed("http://snomed.info/sct"))],
            "loinc" => vec![Value::String(Cow::Borrowed("http://loinc.org"))],
            _ => {
                if let Some(v) = self.ctx.variables.get(name) {
                    return Ok(v.clone());
                }
                if let Some(ext) = name.strip_prefix("ext-") {
                    return Ok(vec![Value::String(Cow::Owned(format!(
                        "http://hl7.org/fhir/StructureDefinition/{ext}"
                    )))]);
                }
                if let Some(vs) = name.strip_prefix("vs-") {
                    return Ok(vec![Value::String(Cow::Owned(format!("http://hl7.org/fhir/ValueSet/{vs}")))]);
                }
                return Err(semantic(format!("unknown variable %{name}")));
            }
        })
    }

    /// Children of `item` named `name` (or `item` itself when `name` is its type and this is
    /// the first step of a path).
    fn navigate(&self, item: &Value<'a>, name: &str, first_step: bool, out: &mut Col<'a>) -> R<()> {
        let model = self.ctx.model;
        let node = match item {
            Value::Node(n) => *n,
            Value::TypeInfo(ns, n) => {
                match name {
                    "namespace" => out.push(Value::String(Cow::Borrowed(ns))),
                    "name" => out.push(Value::String(Cow::Owned(n.clone()))),
                    _ => {}
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        if first_step && name.starts_with(|c: char| c.is_ascii_uppercase()) {
            if let Some(t) = node.type_name()
                && model.is_subtype(t, name)
            {
                out.push(item.clone());
                return Ok(());
            }
            if model.type_name(name).is_some() && !self.has_member(&node, name) {
                if self.ctx.strict {
                    return Err(semantic(format!(
                        "the expression starts with {name}, but the input is {}",
                        node.type_name().unwrap_or("untyped")
                    )));
                }
                return Ok(());
            }
        }
        match node.ty {
            NodeType::Complex { structure, name: type_name } => {
                let Some(obj) = node.value.and_then(Json::as_object) else { return Ok(()) };
                if let Some(&(ei, _)) = structure.by_json_name.get(name) {
                    let el = &structure.elements[ei];
                    if el.is_choice() {
                        if self.ctx.strict {
                            return Err(semantic(format!("'{name}' is not an element name: use '{}'", el.name)));
                        }
                    } else {
                        push_children(model, obj, name, &el.variants[0].1, false, out);
                        return Ok(());
                    }
                }
                if let Some(el) = structure.elements.iter().find(|e| e.name == name && e.is_choice()) {
                    for (json_name, t) in &el.variants {
                        push_children(model, obj, json_name, t, true, out);
                    }
                    return Ok(());
                }
                if self.ctx.strict && !node.loose && !structure.by_json_name.contains_key(name) {
                    return Err(semantic(format!("{type_name} has no element '{name}'")));
                }
            }
            NodeType::Primitive(_) => {
                let Some(comp) = node.companion else {
                    if self.ctx.strict && !matches!(name, "extension" | "id" | "value") && !node.loose {
                        return Err(semantic(format!("a primitive has no element '{name}'")));
                    }
                    return Ok(());
                };
                match name {
                    "extension" => {
                        push_children(model, comp.as_object().unwrap_or(&[]), name, &TypeRef::Extension, false, out)
                    }
                    "id" => push_children(
                        model,
                        comp.as_object().unwrap_or(&[]),
                        name,
                        &TypeRef::Primitive(Primitive::String),
                        false,
                        out,
                    ),
                    _ if self.ctx.strict && !node.loose => {
                        return Err(semantic(format!("a primitive has no element '{name}'")));
                    }
                    _ => {}
                }
            }
            NodeType::Unknown => {
                let Some(obj) = node.value.and_then(Json::as_object) else { return Ok(()) };
                if let Some((_, v)) = obj.iter().find(|(k, _)| k == name) {
                    push_unknown(v, out);
                } else {
                    for (k, v) in obj {
                        if let Some(rest) = k.strip_prefix(name)
                            && rest.starts_with(|c: char| c.is_ascii_uppercase())
                        {
                            push_unknown(v, out);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn has_member(&self, node: &Node<'a>, name: &str) -> bool {
        match node.ty {
            NodeType::Complex { structure, .. } => {
                structure.by_json_name.contains_key(name) || structure.elements.iter().any(|e| e.name == name)
            }
            _ => false,
        }
    }

    /// `is` (inheritance allowed) or `as`/`ofType` (exact for primitives).
    fn type_matches(&self, v: &Value<'a>, t: &TypeName, is: bool) -> R<bool> {
        let model = self.ctx.model;
        let ns = t.namespace.as_deref();
        let name = t.name.as_str();
        let system_known = SYSTEM_TYPES.contains(&name);
        let fhir_known = model.type_name(name).is_some() || model.structure(name).is_some();
        match ns {
            Some("System") if !system_known => return Ok(false),
            Some("FHIR") if !fhir_known => return Err(exec(format!("unknown FHIR type {name}"))),
            Some("System" | "FHIR") | None => {}
            Some(other) => return Err(exec(format!("unknown type namespace {other}"))),
        }
        if ns.is_none() && !system_known && !fhir_known {
            return Err(exec(format!("unknown type {name}")));
        }
        Ok(match v {
            Value::Node(n) => {
                if ns == Some("System") {
                    return Ok(false);
                }
                match n.type_name() {
                    Some(own) if own == name => true,
                    Some(own) => {
                        let primitive = matches!(n.ty, NodeType::Primitive(_));
                        (is || !primitive) && model.is_subtype(own, name)
                    }
                    None => {
                        matches!((n.value, name), (Some(Json::String(_)), "string") | (Some(Json::Bool(_)), "boolean"))
                    }
                }
            }
            other => ns != Some("FHIR") && other.system_type() == Some(name),
        })
    }

    /// `ofType(T)`: the items of type `T` (exact for primitives).
    fn of_type(&self, input: Col<'a>, t: &TypeName) -> R<Col<'a>> {
        let mut out = Vec::new();
        for item in input {
            if self.type_matches(&item, t, false)? {
                out.push(item);
            }
        }
        Ok(out)
    }

    /// `is T` / `as T`, as operator or function: on a single item (more is an error).
    /// Outside strict mode `as` on a collection filters like `ofType()`, because FHIR's own
    /// search expressions use it so (`Medication.ingredient.item as Reference`).
    fn is_or_as(&self, input: Col<'a>, t: &TypeName, is: bool, what: &str) -> R<Col<'a>> {
        if !is && input.len() > 1 && !self.ctx.strict {
            return self.of_type(input, t);
        }
        let Some(v) = single(&input, what)? else { return Ok(vec![]) };
        let matched = self.type_matches(v, t, is)?;
        Ok(match (is, matched) {
            (true, m) => vec![Value::Boolean(m)],
            (false, true) => vec![v.clone()],
            (false, false) => vec![],
        })
    }

    fn binary(&self, op: BinOp, left: &Ast, right: &Ast, focus: &[Value<'a>], scope: &Scope<'_, 'a>) -> R<Col<'a>> {
        use BinOp::*;
        // Boolean operators short-circuit nothing observable, but evaluate both sides lazily
        // where the spec allows it.
        if matches!(op, And | Or | Xor | Implies) {
            let l = to_bool(&self.eval(left, focus, scope)?, "a boolean operator")?;
            if op == And && l == Some(false) {
                return Ok(vec![Value::Boolean(false)]);
            }
            if op == Or && l == Some(true) {
                return Ok(vec![Value::Boolean(true)]);
            }
            if op == Implies && l == Some(false) {
                return Ok(vec![Value::Boolean(true)]);
            }
            let r = to_bool(&self.eval(right, focus, scope)?, "a boolean operator")?;
            let res = match op {
                And => match (l, r) {
                    (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                },
                Or => match (l, r) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                },
                Xor => match (l, r) {
                    (Some(a), Some(b)) => Some(a != b),
                    _ => None,
                },
                _ => match (l, r) {
                    (Some(true), r) => r,
                    (None, Some(true)) => Some(true),
                    _ => None,
                },
            };
            return Ok(res.map(Value::Boolean).into_iter().collect());
        }
        let l = self.eval(left, focus, scope)?;
        let r = self.eval(right, focus, scope)?;
        Ok(match op {
            Union => {
                let mut out = Vec::new();
                for v in l.into_iter().chain(r) {
                    push_unique(&mut out, v);
                }
                out
            }
            Eq | Ne => {
                if l.is_empty() || r.is_empty() {
                    return Ok(vec![]);
                }
                let res = if l.len() != r.len() {
                    Some(false)
                } else {
                    let mut all = Some(true);
                    for (a, b) in l.iter().zip(&r) {
                        match equals(a, b) {
                            Some(true) => {}
                            Some(false) => {
                                all = Some(false);
                                break;
                            }
                            None => all = None,
                        }
                    }
                    all
                };
                res.map(|b| Value::Boolean(if op == Eq { b } else { !b })).into_iter().collect()
            }
            Equiv | NotEquiv => {
                let res = l.len() == r.len() && l.iter().all(|a| r.iter().any(|b| equivalent(a, b)));
                vec![Value::Boolean(if op == Equiv { res } else { !res })]
            }
            Lt | Gt | Le | Ge => {
                let (Some(a), Some(b)) = (single(&l, "a comparison")?, single(&r, "a comparison")?) else {
                    return Ok(vec![]);
                };
                match compare(a, b).map_err(exec)? {
                    None => vec![],
                    Some(o) => vec![Value::Boolean(match op {
                        Lt => o == Ordering::Less,
                        Gt => o == Ordering::Greater,
                        Le => o != Ordering::Greater,
                        _ => o != Ordering::Less,
                    })],
                }
            }
            In | Contains => {
                let (item, col) = if op == In { (&l, &r) } else { (&r, &l) };
                let Some(item) = single(item, "'in'")? else { return Ok(vec![]) };
                vec![Value::Boolean(col.iter().any(|c| equals(item, c) == Some(true)))]
            }
            Concat => {
                let a = single(&l, "'&'")?.map(|v| string_of(v, "'&'").map(str::to_string)).transpose()?;
                let b = single(&r, "'&'")?.map(|v| string_of(v, "'&'").map(str::to_string)).transpose()?;
                vec![Value::String(Cow::Owned(a.unwrap_or_default() + &b.unwrap_or_default()))]
            }
            _ => {
                let (Some(a), Some(b)) = (single(&l, "arithmetic")?, single(&r, "arithmetic")?) else {
                    return Ok(vec![]);
                };
                arithmetic(op, &a.normalized(), &b.normalized())?.into_iter().collect()
            }
        })
    }

    fn lambda(&self, arg: &Ast, item: &Value<'a>, index: usize, scope: &Scope<'_, 'a>) -> R<Col<'a>> {
        let s = Scope { this: Some(item), index: Some(index as i64), total: scope.total, depth: scope.depth };
        self.eval(arg, std::slice::from_ref(item), &s)
    }

    fn arg(&self, args: &[Ast], i: usize, focus: &[Value<'a>], scope: &Scope<'_, 'a>) -> R<Col<'a>> {
        match args.get(i) {
            Some(a) => self.eval(a, focus, scope),
            None => Ok(vec![]),
        }
    }

    fn type_arg(&self, args: &[Ast], fname: &str) -> R<TypeName> {
        match args {
            [Ast::Identifier(n)] => Ok(TypeName { namespace: None, name: n.clone() }),
            [Ast::Member(ns, n)] => match ns.as_ref() {
                Ast::Identifier(ns) => Ok(TypeName { namespace: Some(ns.clone()), name: n.clone() }),
                _ => Err(semantic(format!("{fname}() needs a type name"))),
            },
            _ => Err(semantic(format!("{fname}() needs a type name"))),
        }
    }

    fn function(
        &self,
        name: &str,
        input: Col<'a>,
        args: &[Ast],
        focus: &[Value<'a>],
        scope: &Scope<'_, 'a>,
    ) -> R<Col<'a>> {
        let arity = |range: std::ops::RangeInclusive<usize>| -> R<()> {
            if range.contains(&args.len()) {
                Ok(())
            } else {
                Err(semantic(format!("{name}() takes {range:?} arguments, got {}", args.len())))
            }
        };
        let b = |v: bool| Ok(vec![Value::Boolean(v)]);
        match name {
            // Existence
            "empty" => {
                arity(0..=0)?;
                b(input.is_empty())
            }
            "exists" => {
                arity(0..=1)?;
                if args.is_empty() {
                    return b(!input.is_empty());
                }
                for (i, item) in input.iter().enumerate() {
                    if to_bool(&self.lambda(&args[0], item, i, scope)?, "exists()")? == Some(true) {
                        return b(true);
                    }
                }
                b(false)
            }
            "all" => {
                arity(1..=1)?;
                for (i, item) in input.iter().enumerate() {
                    if to_bool(&self.lambda(&args[0], item, i, scope)?, "all()")? != Some(true) {
                        return b(false);
                    }
                }
                b(true)
            }
            "allTrue" | "anyTrue" | "allFalse" | "anyFalse" => {
                arity(0..=0)?;
                let mut bools = Vec::new();
                for v in &input {
                    match v.normalized().as_ref() {
                        Value::Boolean(x) => bools.push(*x),
                        other => return Err(exec(format!("{name}() needs booleans, got {}", value::describe(other)))),
                    }
                }
                b(match name {
                    "allTrue" => bools.iter().all(|x| *x),
                    "anyTrue" => bools.iter().any(|x| *x),
                    "allFalse" => bools.iter().all(|x| !*x),
                    _ => bools.iter().any(|x| !*x),
                })
            }
            "subsetOf" | "supersetOf" => {
                arity(1..=1)?;
                let other = self.arg(args, 0, focus, scope)?;
                let (sub, sup) = if name == "subsetOf" { (&input, &other) } else { (&other, &input) };
                b(sub.iter().all(|a| sup.iter().any(|c| equals(a, c) == Some(true))))
            }
            "count" => {
                arity(0..=0)?;
                Ok(vec![Value::Integer(input.len() as i64)])
            }
            "distinct" => {
                arity(0..=0)?;
                let mut out = Vec::new();
                for v in input {
                    push_unique(&mut out, v);
                }
                Ok(out)
            }
            "isDistinct" => {
                arity(0..=0)?;
                let n = input.len();
                let mut out = Vec::new();
                for v in input {
                    push_unique(&mut out, v);
                }
                b(out.len() == n)
            }
            // Filtering and projection
            "where" => {
                arity(1..=1)?;
                let mut out = Vec::new();
                for (i, item) in input.into_iter().enumerate() {
                    if to_bool(&self.lambda(&args[0], &item, i, scope)?, "where()")? == Some(true) {
                        out.push(item);
                    }
                }
                Ok(out)
            }
            "select" => {
                arity(1..=1)?;
                let mut out = Vec::new();
                for (i, item) in input.iter().enumerate() {
                    out.extend(self.lambda(&args[0], item, i, scope)?);
                }
                Ok(out)
            }
            "repeat" => {
                arity(1..=1)?;
                let mut out: Col<'a> = Vec::new();
                let mut frontier = input;
                let mut rounds = 0;
                while !frontier.is_empty() {
                    rounds += 1;
                    if rounds > 1000 {
                        return Err(exec("repeat() did not converge"));
                    }
                    let mut next = Vec::new();
                    for (i, item) in frontier.iter().enumerate() {
                        for v in self.lambda(&args[0], item, i, scope)? {
                            if !out.iter().any(|o| equals(o, &v) == Some(true) && same_node(o, &v)) {
                                out.push(v.clone());
                                next.push(v);
                            }
                        }
                    }
                    frontier = next;
                }
                Ok(out)
            }
            "ofType" => {
                arity(1..=1)?;
                let t = self.type_arg(args, name)?;
                self.of_type(input, &t)
            }
            "is" | "as" => {
                arity(1..=1)?;
                let t = self.type_arg(args, name)?;
                self.is_or_as(input, &t, name == "is", &format!("{name}()"))
            }
            "type" => {
                arity(0..=0)?;
                Ok(input
                    .iter()
                    .map(|v| match v {
                        Value::Node(n) => Value::TypeInfo("FHIR", n.type_name().unwrap_or("Element").to_string()),
                        other => Value::TypeInfo("System", other.system_type().unwrap_or("Any").to_string()),
                    })
                    .collect())
            }
            "conformsTo" => {
                arity(1..=1)?;
                let url = self.arg(args, 0, focus, scope)?;
                let Some(url) = single(&url, "conformsTo()")? else { return Ok(vec![]) };
                let url = string_of(url, "conformsTo()")?;
                let Some(t) = url.strip_prefix("http://hl7.org/fhir/StructureDefinition/") else {
                    return Err(exec(format!("conformsTo(): unknown profile {url}")));
                };
                if self.ctx.model.type_name(t).is_none() {
                    return Err(exec(format!("conformsTo(): unknown profile {url}")));
                }
                let Some(v) = single(&input, "conformsTo()")? else { return Ok(vec![]) };
                b(self.type_matches(v, &TypeName { namespace: Some("FHIR".into()), name: t.into() }, true)?)
            }
            // Subsetting
            "single" => {
                arity(0..=0)?;
                Ok(single(&input, "single()")?.cloned().into_iter().collect())
            }
            "first" => Ok(input.into_iter().take(1).collect()),
            "last" => Ok(input.into_iter().last().into_iter().collect()),
            "tail" => Ok(input.into_iter().skip(1).collect()),
            "skip" | "take" => {
                arity(1..=1)?;
                let n = self.arg(args, 0, focus, scope)?;
                let Some(n) = single(&n, name)? else { return Ok(vec![]) };
                let n = integer_of(n, name)?.max(0) as usize;
                Ok(if name == "skip" {
                    input.into_iter().skip(n).collect()
                } else {
                    input.into_iter().take(n).collect()
                })
            }
            "intersect" => {
                arity(1..=1)?;
                let other = self.arg(args, 0, focus, scope)?;
                let mut out = Vec::new();
                for v in input {
                    if other.iter().any(|o| equals(o, &v) == Some(true)) {
                        push_unique(&mut out, v);
                    }
                }
                Ok(out)
            }
            "exclude" => {
                arity(1..=1)?;
                let other = self.arg(args, 0, focus, scope)?;
                Ok(input.into_iter().filter(|v| !other.iter().any(|o| equals(o, v) == Some(true))).collect())
            }
            "union" => {
                arity(1..=1)?;
                let other = self.arg(args, 0, focus, scope)?;
                let mut out = Vec::new();
                for v in input.into_iter().chain(other) {
                    push_unique(&mut out, v);
                }
                Ok(out)
            }
            "combine" => {
                arity(1..=1)?;
                let mut out = input;
                out.extend(self.arg(args, 0, focus, scope)?);
                Ok(out)
            }
            "iif" => {
                arity(2..=3)?;
                let ctx_item = single(&input, "iif()")?.cloned();
                let (f, s): (Vec<Value<'a>>, Scope<'_, 'a>) = match &ctx_item {
                    Some(v) => (vec![v.clone()], Scope { this: Some(v), ..*scope }),
                    None => (focus.to_vec(), *scope),
                };
                let cond = self.eval(&args[0], &f, &s)?;
                let cond = match cond.as_slice() {
                    [] => None,
                    [v] => match v.normalized().as_ref() {
                        Value::Boolean(x) => Some(*x),
                        other => {
                            return Err(exec(format!(
                                "iif() criterion must be boolean, got {}",
                                value::describe(other)
                            )));
                        }
                    },
                    _ => return Err(semantic("iif() criterion must be a single boolean")),
                };
                if cond == Some(true) {
                    self.eval(&args[1], &f, &s)
                } else if args.len() == 3 {
                    self.eval(&args[2], &f, &s)
                } else {
                    Ok(vec![])
                }
            }
            // Conversion
            "toBoolean" | "convertsToBoolean" => convert(name, &input, to_boolean),
            "toInteger" | "convertsToInteger" => convert(name, &input, to_integer),
            "toDecimal" | "convertsToDecimal" => convert(name, &input, to_decimal),
            "toString" | "convertsToString" => {
                convert(name, &input, |v| to_string(v).map(|s| Value::String(Cow::Owned(s))))
            }
            "toDate" | "convertsToDate" => convert(name, &input, |v| to_temporal(v, TemporalKind::Date)),
            "toDateTime" | "convertsToDateTime" => convert(name, &input, |v| to_temporal(v, TemporalKind::DateTime)),
            "toTime" | "convertsToTime" => convert(name, &input, |v| to_temporal(v, TemporalKind::Time)),
            "toQuantity" | "convertsToQuantity" => {
                let unit = self.arg(args, 0, focus, scope)?;
                let unit = single(&unit, name)?.map(|u| string_of(u, name).map(str::to_string)).transpose()?;
                convert(name, &input, |v| {
                    let q = to_quantity(v)?;
                    match &unit {
                        None => Some(Value::Quantity(q)),
                        Some(u) if *u == q.unit => Some(Value::Quantity(q)),
                        Some(u) => q.convert_to(u).map(Value::Quantity),
                    }
                })
            }
            // Strings
            "indexOf" | "substring" | "startsWith" | "endsWith" | "contains" | "upper" | "lower" | "replace"
            | "matches" | "matchesFull" | "replaceMatches" | "length" | "toChars" | "trim" | "split" | "encode"
            | "decode" | "escape" | "unescape" => self.string_function(name, &input, args, focus, scope),
            "join" => {
                let sep = self.arg(args, 0, focus, scope)?;
                let sep = single(&sep, "join()")?.map(|s| string_of(s, "join()").map(str::to_string)).transpose()?;
                let parts: R<Vec<&str>> = input.iter().map(|v| string_of(v, "join()")).collect();
                Ok(vec![Value::String(Cow::Owned(parts?.join(sep.as_deref().unwrap_or(""))))])
            }
            // Math
            "abs" | "ceiling" | "exp" | "floor" | "ln" | "log" | "power" | "round" | "sqrt" | "truncate" => {
                self.math(name, &input, args, focus, scope)
            }
            // Tree navigation
            "children" => {
                let mut out = Vec::new();
                for v in &input {
                    self.children(v, &mut out);
                }
                Ok(out)
            }
            "descendants" => {
                let mut out = Vec::new();
                let mut frontier = input;
                while !frontier.is_empty() {
                    let mut next = Vec::new();
                    for v in &frontier {
                        self.children(v, &mut next);
                    }
                    out.extend(next.iter().cloned());
                    frontier = next;
                }
                Ok(out)
            }
            // Utility
            "trace" => Ok(input),
            "now" => Ok(vec![Value::Temporal(self.ctx.now())]),
            "today" => {
                let mut t = self.ctx.now();
                t.kind = TemporalKind::Date;
                t.precision = super::temporal::Precision::Day;
                t.offset = None;
                Ok(vec![Value::Temporal(t)])
            }
            "timeOfDay" => {
                let mut t = self.ctx.now();
                t.kind = TemporalKind::Time;
                t.offset = None;
                Ok(vec![Value::Temporal(t)])
            }
            "not" => {
                arity(0..=0)?;
                Ok(to_bool(&input, "not()")?.map(|x| Value::Boolean(!x)).into_iter().collect())
            }
            "hasValue" => b(match input.as_slice() {
                [Value::Node(n)] => matches!(n.ty, NodeType::Primitive(_)) && n.value.is_some(),
                [v] => v.system_type().is_some(),
                _ => false,
            }),
            "getValue" => Ok(input
                .iter()
                .filter_map(|v| v.normalized().as_ref().system_type().map(|_| v.normalized().into_owned()))
                .collect()),
            "htmlChecks" | "htmlchecks" => b(true),
            "extension" => {
                arity(1..=1)?;
                let url = self.arg(args, 0, focus, scope)?;
                let Some(url) = single(&url, "extension()")? else { return Ok(vec![]) };
                let url = string_of(url, "extension()")?.to_string();
                let mut exts = Vec::new();
                for v in &input {
                    self.navigate(v, "extension", false, &mut exts)?;
                }
                Ok(exts
                    .into_iter()
                    .filter(|e| match e {
                        Value::Node(n) => {
                            n.value.and_then(|v| v.get("url")).and_then(Json::as_str) == Some(url.as_str())
                        }
                        _ => false,
                    })
                    .collect())
            }
            "resolve" => Ok(input.iter().filter_map(|v| self.resolve(v)).collect()),
            // SQL-on-FHIR v2: a resource's key and the key a reference points at are the
            // resource id, so the two compare equal and join on the tables' `id` columns.
            "getResourceKey" => {
                arity(0..=0)?;
                Ok(input
                    .iter()
                    .filter_map(|v| match v {
                        Value::Node(n) if n.value.is_some_and(|j| j.get("resourceType").is_some()) => {
                            n.value?.get("id")?.as_str().map(|id| Value::String(Cow::Borrowed(id)))
                        }
                        _ => None,
                    })
                    .collect())
            }
            "getReferenceKey" => {
                arity(0..=1)?;
                let want = if args.is_empty() { None } else { Some(self.type_arg(args, name)?.name) };
                Ok(input
                    .iter()
                    .filter_map(|v| {
                        let Value::Node(n) = v else { return None };
                        let reference = n.value?.get("reference")?.as_str()?;
                        let (t, id) = crate::shape::reference_target(reference)?;
                        want.as_deref().is_none_or(|w| w == t).then_some(Value::String(Cow::Borrowed(id)))
                    })
                    .collect())
            }
            "memberOf" | "subsumes" | "subsumedBy" => {
                Err(FhirPathError::Unsupported(format!("{name}() (terminology)")))
            }
            "aggregate" => {
                arity(1..=2)?;
                let mut total = self.arg(args, 1, focus, scope)?;
                for (i, item) in input.iter().enumerate() {
                    let s = Scope { this: Some(item), index: Some(i as i64), total: Some(&total), depth: scope.depth };
                    let next = self.eval(&args[0], std::slice::from_ref(item), &s)?;
                    total = next;
                }
                Ok(total)
            }
            "sort" => self.sort(input, args, scope),
            "lowBoundary" | "highBoundary" => {
                let p = self.arg(args, 0, focus, scope)?;
                let p = single(&p, name)?.map(|p| integer_of(p, name)).transpose()?;
                let Some(v) = single(&input, name)? else { return Ok(vec![]) };
                Ok(boundary(&v.normalized(), p, name == "highBoundary").into_iter().collect())
            }
            "precision" => {
                let Some(v) = single(&input, name)? else { return Ok(vec![]) };
                Ok(match v.normalized().as_ref() {
                    Value::Decimal(d) => vec![Value::Integer(i64::from(d.scale()))],
                    Value::Integer(_) => vec![Value::Integer(0)],
                    Value::Temporal(t) => vec![Value::Integer(t.precision_digits())],
                    _ => vec![],
                })
            }
            "comparable" => {
                let other = self.arg(args, 0, focus, scope)?;
                let (Some(a), Some(o)) = (single(&input, name)?, single(&other, name)?) else { return Ok(vec![]) };
                match (a.normalized().as_ref(), o.normalized().as_ref()) {
                    (Value::Quantity(x), Value::Quantity(y)) => {
                        b(matches!((x.canonical(), y.canonical()), (Some((_, u)), Some((_, w))) if u == w))
                    }
                    _ => Err(exec("comparable() needs two quantities")),
                }
            }
            _ => Err(semantic(format!("unknown function {name}()"))),
        }
    }

    fn sort(&self, input: Col<'a>, args: &[Ast], scope: &Scope<'_, 'a>) -> R<Col<'a>> {
        let mut keyed: Vec<(Vec<(Col<'a>, bool)>, Value<'a>)> = Vec::new();
        for (i, item) in input.into_iter().enumerate() {
            let mut keys = Vec::new();
            if args.is_empty() {
                keys.push((vec![item.clone()], false));
            }
            for a in args {
                let (expr, desc) = match a {
                    Ast::Polarity { negate: true, operand } => (operand.as_ref(), true),
                    other => (other, false),
                };
                keys.push((self.lambda(expr, &item, i, scope)?, desc));
            }
            keyed.push((keys, item));
        }
        keyed.sort_by(|(ka, _), (kb, _)| {
            for ((a, desc), (b, _)) in ka.iter().zip(kb) {
                let o = match (a.first(), b.first()) {
                    // Items without a key come first in either direction.
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => return Ordering::Less,
                    (Some(_), None) => return Ordering::Greater,
                    (Some(x), Some(y)) => compare(x, y).ok().flatten().unwrap_or(Ordering::Equal),
                };
                let o = if *desc { o.reverse() } else { o };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
        Ok(keyed.into_iter().map(|(_, v)| v).collect())
    }

    fn children(&self, v: &Value<'a>, out: &mut Col<'a>) {
        let Value::Node(n) = v else { return };
        let model = self.ctx.model;
        match n.ty {
            NodeType::Complex { structure, .. } => {
                let Some(obj) = n.value.and_then(Json::as_object) else { return };
                let mut seen: Vec<&str> = Vec::new();
                for (k, _) in obj {
                    let key = k.strip_prefix('_').unwrap_or(k);
                    if key == "resourceType" || seen.contains(&key) {
                        continue;
                    }
                    seen.push(key);
                    if let Some(&(ei, vi)) = structure.by_json_name.get(key) {
                        let el = &structure.elements[ei];
                        push_children(model, obj, key, &el.variants[vi].1, true, out);
                    }
                }
            }
            NodeType::Primitive(_) => {}
            NodeType::Unknown => {
                if let Some(obj) = n.value.and_then(Json::as_object) {
                    for (_, v) in obj {
                        push_unknown(v, out);
                    }
                }
            }
        }
    }

    fn resolve(&self, v: &Value<'a>) -> Option<Value<'a>> {
        let model = self.ctx.model;
        let reference: &str = match v {
            Value::Node(n) => match n.value? {
                Json::String(s) => s,
                obj => obj.get("reference")?.as_str()?,
            },
            Value::String(s) => {
                // A System string borrows nothing from the resource; only look it up.
                return self.lookup(s).map(|j| Value::Node(Node::resource(model, j)));
            }
            _ => return None,
        };
        if let Some(found) = self.lookup(reference) {
            return Some(Value::Node(Node::resource(model, found)));
        }
        // A typed stand-in: enough for `resolve() is Patient` and `resolve().ofType(...)`.
        let (t, _) = crate::shape::reference_target(reference)?;
        let structure = model.structure(t)?;
        model.is_resource_type(t).then_some(())?;
        Some(Value::Node(Node {
            value: None,
            companion: None,
            ty: NodeType::Complex { structure: structure.as_ref(), name: model.type_name(t)? },
            loose: false,
        }))
    }

    fn lookup(&self, reference: &str) -> Option<&'a Json> {
        let root = self.ctx.resource;
        if let Some(local) = reference.strip_prefix('#') {
            return root?
                .get("contained")?
                .as_array()?
                .iter()
                .find(|c| c.get("id").and_then(Json::as_str) == Some(local));
        }
        if let Some(root) = root
            && root.get("resourceType").and_then(Json::as_str) == Some("Bundle")
            && let Some(entries) = root.get("entry").and_then(Json::as_array)
        {
            for e in entries {
                let full = e.get("fullUrl").and_then(Json::as_str);
                let res = e.get("resource");
                let matches_full = full == Some(reference);
                let matches_rel = res.is_some_and(|r| {
                    let t = r.get("resourceType").and_then(Json::as_str).unwrap_or("");
                    let id = r.get("id").and_then(Json::as_str).unwrap_or("");
                    !id.is_empty() && (reference == format!("{t}/{id}") || reference.ends_with(&format!("/{t}/{id}")))
                });
                if matches_full || matches_rel {
                    return res;
                }
            }
        }
        self.ctx.resolver.and_then(|r| r(reference))
    }

    fn string_function(
        &self,
        name: &str,
        input: &[Value<'a>],
        args: &[Ast],
        focus: &[Value<'a>],
        scope: &Scope<'_, 'a>,
    ) -> R<Col<'a>> {
        let Some(item) = single(input, name)? else { return Ok(vec![]) };
        let s = string_of(item, &format!("{name}()"))?;
        let mut sargs: Vec<Option<String>> = Vec::new();
        let mut iargs: Vec<Option<i64>> = Vec::new();
        for i in 0..args.len() {
            let v = self.arg(args, i, focus, scope)?;
            let v = single(&v, name)?;
            sargs.push(v.and_then(|v| v.as_str().map(str::to_string)));
            iargs.push(v.and_then(|v| integer_of(v, name).ok()));
        }
        let str_arg = |i: usize| -> R<Option<&str>> {
            if i >= args.len() {
                return Err(semantic(format!("{name}() needs argument {}", i + 1)));
            }
            Ok(sargs[i].as_deref())
        };
        let out = |v: String| Ok(vec![Value::String(Cow::Owned(v))]);
        let bool_out = |v: bool| Ok(vec![Value::Boolean(v)]);
        let chars: Vec<char> = s.chars().collect();
        match name {
            "indexOf" => match str_arg(0)? {
                None => Ok(vec![]),
                Some(sub) => {
                    Ok(vec![Value::Integer(s.find(sub).map(|byte| s[..byte].chars().count() as i64).unwrap_or(-1))])
                }
            },
            "substring" => {
                let Some(start) = iargs.first().copied().flatten() else { return Ok(vec![]) };
                if start < 0 || start as usize >= chars.len() {
                    return Ok(vec![]);
                }
                let len = match iargs.get(1) {
                    Some(Some(l)) => (*l).max(0) as usize,
                    Some(None) => chars.len(),
                    None => chars.len(),
                };
                out(chars.iter().skip(start as usize).take(len).collect())
            }
            "startsWith" => Ok(str_arg(0)?.map(|p| Value::Boolean(s.starts_with(p))).into_iter().collect()),
            "endsWith" => Ok(str_arg(0)?.map(|p| Value::Boolean(s.ends_with(p))).into_iter().collect()),
            "contains" => Ok(str_arg(0)?.map(|p| Value::Boolean(s.contains(p))).into_iter().collect()),
            "upper" => out(s.to_uppercase()),
            "lower" => out(s.to_lowercase()),
            "replace" => match (str_arg(0)?, str_arg(1)?) {
                (Some(p), Some(r)) => {
                    if p.is_empty() {
                        let mut o = String::from(r);
                        for c in s.chars() {
                            o.push(c);
                            o.push_str(r);
                        }
                        out(o)
                    } else {
                        out(s.replace(p, r))
                    }
                }
                _ => Ok(vec![]),
            },
            "matches" | "matchesFull" => match str_arg(0)? {
                None => Ok(vec![]),
                Some(p) => {
                    let p = if name == "matchesFull" { format!("^(?:{p})$") } else { format!("(?s){p}") };
                    let re = regex::Regex::new(&p).map_err(|e| exec(format!("invalid regular expression: {e}")))?;
                    bool_out(re.is_match(s))
                }
            },
            "replaceMatches" => match (str_arg(0)?, str_arg(1)?) {
                (Some(""), Some(_)) => out(s.to_string()),
                (Some(p), Some(r)) => {
                    let re = regex::Regex::new(p).map_err(|e| exec(format!("invalid regular expression: {e}")))?;
                    out(re.replace_all(s, r).into_owned())
                }
                _ => Ok(vec![]),
            },
            "length" => Ok(vec![Value::Integer(chars.len() as i64)]),
            "toChars" => Ok(chars.iter().map(|c| Value::String(Cow::Owned(c.to_string()))).collect()),
            "trim" => out(s.trim().to_string()),
            "split" => match str_arg(0)? {
                None => Ok(vec![]),
                Some(sep) => Ok(s.split(sep).map(|p| Value::String(Cow::Owned(p.to_string()))).collect()),
            },
            "encode" | "decode" => {
                let Some(fmt) = str_arg(0)? else { return Ok(vec![]) };
                let b64 = base64::engine::general_purpose::STANDARD;
                let url = base64::engine::general_purpose::URL_SAFE;
                let r = if name == "encode" {
                    match fmt {
                        "base64" => b64.encode(s),
                        "urlbase64" => url.encode(s),
                        "hex" => s.bytes().map(|b| format!("{b:02x}")).collect(),
                        _ => return Err(exec(format!("unknown encoding {fmt}"))),
                    }
                } else {
                    let bytes = match fmt {
                        "base64" => b64.decode(s).ok(),
                        "urlbase64" => url.decode(s).ok(),
                        "hex" => (0..s.len())
                            .step_by(2)
                            .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                            .collect(),
                        _ => return Err(exec(format!("unknown encoding {fmt}"))),
                    };
                    match bytes.and_then(|b| String::from_utf8(b).ok()) {
                        Some(s) => s,
                        None => return Ok(vec![]),
                    }
                };
                out(r)
            }
            "escape" | "unescape" => {
                let Some(fmt) = str_arg(0)? else { return Ok(vec![]) };
                let r = match (name, fmt) {
                    ("escape", "html") => s
                        .replace('&', "&amp;")
                        .replace('<', "&lt;")
                        .replace('>', "&gt;")
                        .replace('"', "&quot;")
                        .replace('\'', "&#39;"),
                    ("unescape", "html") => s
                        .replace("&lt;", "<")
                        .replace("&gt;", ">")
                        .replace("&quot;", "\"")
                        .replace("&#39;", "'")
                        .replace("&amp;", "&"),
                    ("escape", "json") => {
                        let mut o = String::new();
                        crate::json::write_str(&mut o, s);
                        o[1..o.len() - 1].to_string()
                    }
                    ("unescape", "json") => match unescape_json(s) {
                        Some(u) => u,
                        None => return Ok(vec![]),
                    },
                    _ => return Err(exec(format!("unknown escape format {fmt}"))),
                };
                out(r)
            }
            _ => Err(semantic(format!("unknown function {name}()"))),
        }
    }

    fn math(
        &self,
        name: &str,
        input: &[Value<'a>],
        args: &[Ast],
        focus: &[Value<'a>],
        scope: &Scope<'_, 'a>,
    ) -> R<Col<'a>> {
        let Some(item) = single(input, name)? else { return Ok(vec![]) };
        let v = item.normalized().into_owned();
        let arg = self.arg(args, 0, focus, scope)?;
        let arg = single(&arg, name)?.map(|a| a.normalized().into_owned());
        if let Value::Quantity(q) = &v
            && name == "abs"
        {
            return Ok(vec![Value::Quantity(Quantity { value: q.value.abs(), unit: q.unit.clone() })]);
        }
        let num = match &v {
            Value::Integer(i) => Decimal::from(*i),
            Value::Decimal(d) => *d,
            other => return Err(exec(format!("{name}() needs a number, got {}", value::describe(other)))),
        };
        let is_int = matches!(v, Value::Integer(_));
        Ok(match name {
            "abs" => vec![if is_int { Value::Integer(num.abs().to_i64().unwrap_or(0)) } else { dec_value(num.abs()) }],
            "ceiling" => vec![Value::Integer(num.ceil().to_i64().ok_or_else(|| exec("overflow"))?)],
            "floor" => vec![Value::Integer(num.floor().to_i64().ok_or_else(|| exec("overflow"))?)],
            "truncate" => vec![Value::Integer(num.trunc().to_i64().ok_or_else(|| exec("overflow"))?)],
            "round" => {
                let dp = match &arg {
                    Some(Value::Integer(i)) if *i >= 0 => *i as u32,
                    Some(_) => return Err(exec("round() precision must be a non-negative integer")),
                    None => 0,
                };
                vec![dec_value(num.round_dp_with_strategy(dp, rust_decimal::RoundingStrategy::MidpointAwayFromZero))]
            }
            "exp" => from_f64(num.to_f64().unwrap_or(f64::NAN).exp()),
            "ln" => from_f64(num.to_f64().unwrap_or(f64::NAN).ln()),
            "sqrt" => from_f64(num.to_f64().unwrap_or(f64::NAN).sqrt()),
            "log" => {
                let Some(base) = arg.as_ref().and_then(to_f64) else { return Ok(vec![]) };
                from_f64(num.to_f64().unwrap_or(f64::NAN).log(base))
            }
            "power" => {
                let Some(a) = &arg else { return Ok(vec![]) };
                if let (true, Value::Integer(e)) = (is_int, a)
                    && *e >= 0
                {
                    let base = num.to_i64().unwrap_or(0);
                    return Ok(base.checked_pow(*e as u32).map(Value::Integer).into_iter().collect());
                }
                let e = to_f64(a).ok_or_else(|| exec("power() needs a number"))?;
                from_f64(num.to_f64().unwrap_or(f64::NAN).powf(e))
            }
            _ => return Err(semantic(format!("unknown function {name}()"))),
        })
    }
}

/// Undoes JSON string escapes (`\"`, `\\`, `\n`, `\u0041`, ...); other text is kept.
fn unescape_json(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
            }
            other => out.push(other),
        }
    }
    Some(out)
}

fn same_node(a: &Value<'_>, b: &Value<'_>) -> bool {
    match (a, b) {
        (Value::Node(x), Value::Node(y)) => match (x.value, y.value) {
            (Some(p), Some(q)) => std::ptr::eq(p, q),
            _ => false,
        },
        _ => true,
    }
}

/// Pushes the children of `obj` stored under `json_name` (and its `_json_name` companion),
/// one node per array entry.
fn push_children<'a>(
    model: &'static crate::Model,
    obj: &'a [(String, Json)],
    json_name: &str,
    t: &TypeRef,
    loose: bool,
    out: &mut Col<'a>,
) {
    let mut value = None;
    let mut companion = None;
    for (k, v) in obj {
        if k == json_name {
            value = Some(v);
        } else if k.strip_prefix('_') == Some(json_name) {
            companion = Some(v);
        }
    }
    if value.is_none() && companion.is_none() {
        return;
    }
    let mut push = |v: Option<&'a Json>, c: Option<&'a Json>| {
        let v = v.filter(|v| !matches!(v, Json::Null));
        let c = c.filter(|c| !matches!(c, Json::Null));
        if v.is_none() && c.is_none() {
            return;
        }
        let mut n = Node::typed(model, v, c, t);
        n.loose = loose;
        out.push(Value::Node(n));
    };
    match (value, companion) {
        (Some(Json::Array(vs)), c) => {
            let cs = c.and_then(Json::as_array);
            for (i, v) in vs.iter().enumerate() {
                push(Some(v), cs.and_then(|cs| cs.get(i)));
            }
        }
        (None, Some(Json::Array(cs))) => {
            for c in cs {
                push(None, Some(c));
            }
        }
        (v, c) => push(v, c),
    }
}

fn push_unknown<'a>(v: &'a Json, out: &mut Col<'a>) {
    match v {
        Json::Array(items) => out.extend(items.iter().map(|i| Value::Node(Node::unknown(Some(i))))),
        Json::Null => {}
        other => out.push(Value::Node(Node::unknown(Some(other)))),
    }
}

fn convert<'a>(name: &str, input: &[Value<'a>], f: impl Fn(&Value<'a>) -> Option<Value<'a>>) -> R<Col<'a>> {
    let Some(v) = single(input, name)? else { return Ok(vec![]) };
    let r = f(v);
    if name.starts_with("convertsTo") { Ok(vec![Value::Boolean(r.is_some())]) } else { Ok(r.into_iter().collect()) }
}

fn to_boolean<'a>(v: &Value<'a>) -> Option<Value<'a>> {
    Some(Value::Boolean(match v.normalized().as_ref() {
        Value::Boolean(b) => *b,
        Value::Integer(1) => true,
        Value::Integer(0) => false,
        Value::Decimal(d) if *d == Decimal::ONE => true,
        Value::Decimal(d) if d.is_zero() => false,
        Value::String(s) => match s.to_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" | "1.0" => true,
            "false" | "f" | "no" | "n" | "0" | "0.0" => false,
            _ => return None,
        },
        _ => return None,
    }))
}

fn to_integer<'a>(v: &Value<'a>) -> Option<Value<'a>> {
    match v.normalized().as_ref() {
        Value::Integer(i) => Some(Value::Integer(*i)),
        Value::Boolean(b) => Some(Value::Integer(i64::from(*b))),
        Value::String(s) => {
            let t = s.strip_prefix(['+', '-']).unwrap_or(s);
            (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok().map(Value::Integer))?
        }
        _ => None,
    }
}

fn to_decimal<'a>(v: &Value<'a>) -> Option<Value<'a>> {
    match v.normalized().as_ref() {
        Value::Integer(i) => Some(Value::Decimal(Decimal::from(*i))),
        Value::Decimal(d) => Some(Value::Decimal(*d)),
        Value::Boolean(b) => Some(Value::Decimal(if *b { Decimal::ONE } else { Decimal::ZERO })),
        Value::String(s) => {
            let t = s.strip_prefix(['+', '-']).unwrap_or(s);
            let mut parts = t.splitn(2, '.');
            let int = parts.next()?;
            let frac = parts.next();
            let ok = !int.is_empty()
                && int.bytes().all(|b| b.is_ascii_digit())
                && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
            ok.then(|| parse_decimal(s).map(Value::Decimal))?
        }
        _ => None,
    }
}

fn to_temporal<'a>(v: &Value<'a>, kind: TemporalKind) -> Option<Value<'a>> {
    match v.normalized().as_ref() {
        Value::Temporal(t) => match (t.kind, kind) {
            (a, b) if a == b => Some(Value::Temporal(t.clone())),
            (TemporalKind::Date, TemporalKind::DateTime) => {
                let mut t = t.clone();
                t.kind = TemporalKind::DateTime;
                Some(Value::Temporal(t))
            }
            (TemporalKind::DateTime, TemporalKind::Date) => {
                let mut t = t.clone();
                t.kind = TemporalKind::Date;
                t.precision = t.precision.min(super::temporal::Precision::Day);
                t.offset = None;
                Some(Value::Temporal(t))
            }
            _ => None,
        },
        Value::String(s) => match kind {
            TemporalKind::Date => Temporal::parse_date(s),
            TemporalKind::DateTime => Temporal::parse_datetime(s).or_else(|| {
                Temporal::parse_literal(s).filter(|t| t.kind != TemporalKind::Time).map(|mut t| {
                    t.kind = TemporalKind::DateTime;
                    t
                })
            }),
            TemporalKind::Time => Temporal::parse_time(s),
        }
        .map(Value::Temporal),
        _ => None,
    }
}

fn to_quantity(v: &Value<'_>) -> Option<Quantity> {
    match v.normalized().as_ref() {
        Value::Quantity(q) => Some(q.clone()),
        Value::Integer(i) => Some(Quantity { value: Decimal::from(*i), unit: "1".into() }),
        Value::Decimal(d) => Some(Quantity { value: *d, unit: "1".into() }),
        Value::Boolean(b) => Some(Quantity { value: if *b { Decimal::ONE } else { Decimal::ZERO }, unit: "1".into() }),
        Value::String(s) => {
            let s = s.trim();
            let (num, unit) = match s.find(char::is_whitespace) {
                Some(i) => (&s[..i], s[i..].trim()),
                None => (s, ""),
            };
            let value = match to_decimal(&Value::String(Cow::Borrowed(num)))? {
                Value::Decimal(d) => d,
                _ => return None,
            };
            let unit = if unit.is_empty() {
                "1".to_string()
            } else if let Some(u) = unit.strip_prefix('\'').and_then(|u| u.strip_suffix('\'')) {
                u.to_string()
            } else if Quantity::is_calendar_unit(unit) {
                unit.to_string()
            } else {
                return None;
            };
            Some(Quantity::new(value, unit))
        }
        _ => None,
    }
}

fn boundary<'a>(v: &Value<'a>, digits: Option<i64>, high: bool) -> Option<Value<'a>> {
    let dec_bound = |d: Decimal, scale: u32| -> Option<Decimal> {
        let p = digits.unwrap_or(8);
        if !(0..=28).contains(&p) {
            return None;
        }
        let half = Decimal::new(5, scale + 1);
        let edge = if high { d + half } else { d - half };
        let unit = Decimal::new(1, p as u32);
        let mut r = if edge.abs() < unit {
            Decimal::ZERO
        } else if high {
            edge.round_dp_with_strategy(p as u32, rust_decimal::RoundingStrategy::ToPositiveInfinity)
        } else {
            edge.round_dp_with_strategy(p as u32, rust_decimal::RoundingStrategy::ToNegativeInfinity)
        };
        if edge.is_sign_negative() && r.is_zero() {
            r.set_sign_negative(true);
        }
        r.rescale(p as u32);
        Some(r)
    };
    match v {
        Value::Integer(i) => dec_bound(Decimal::from(*i), 0).map(Value::Decimal),
        Value::Decimal(d) => dec_bound(*d, d.scale()).map(Value::Decimal),
        Value::Quantity(q) => {
            dec_bound(q.value, q.value.scale()).map(|d| Value::Quantity(Quantity { value: d, unit: q.unit.clone() }))
        }
        Value::Temporal(t) => t.boundary(digits, high).map(Value::Temporal),
        _ => None,
    }
}

fn arithmetic<'a>(op: BinOp, a: &Value<'a>, b: &Value<'a>) -> R<Option<Value<'a>>> {
    use BinOp::*;
    let clash = || exec(format!("cannot apply {op:?} to {} and {}", value::describe(a), value::describe(b)));
    Ok(match (a, b) {
        (Value::Integer(x), Value::Integer(y)) => match op {
            Add => x.checked_add(*y).map(Value::Integer),
            Sub => x.checked_sub(*y).map(Value::Integer),
            Mul => x.checked_mul(*y).map(Value::Integer),
            Div => (*y != 0).then(|| Decimal::from(*x).checked_div(Decimal::from(*y)).map(Value::Decimal)).flatten(),
            IntDiv => (*y != 0).then(|| Value::Integer(x / y)),
            Mod => (*y != 0).then(|| Value::Integer(x % y)),
            _ => return Err(clash()),
        },
        (Value::String(x), Value::String(y)) if op == Add => Some(Value::String(Cow::Owned(format!("{x}{y}")))),
        (Value::Temporal(t), Value::Quantity(q)) if matches!(op, Add | Sub) => {
            let Some(unit) = q.calendar_unit() else {
                return Err(exec(format!("cannot add '{}' to a date: use a calendar duration", q.unit)));
            };
            let amount = q.value.trunc().to_i64().ok_or_else(|| exec("duration too large"))?;
            let amount = if op == Sub { -amount } else { amount };
            t.add(amount, unit).map(Value::Temporal)
        }
        (Value::Quantity(x), Value::Quantity(y)) => match op {
            Add | Sub => {
                let y = if x.unit == y.unit { Some(y.clone()) } else { y.convert_to(x.ucum_code()) };
                match y {
                    Some(y) => Some(Value::Quantity(Quantity {
                        value: if op == Add { x.value + y.value } else { x.value - y.value },
                        unit: x.unit.clone(),
                    })),
                    None => None,
                }
            }
            Mul => x.combine(y, false).map(Value::Quantity),
            Div => (!y.value.is_zero()).then(|| x.combine(y, true).map(Value::Quantity)).flatten(),
            _ => return Err(clash()),
        },
        (Value::Quantity(x), n) if matches!(op, Mul | Div) && matches!(n, Value::Integer(_) | Value::Decimal(_)) => {
            let n = match n {
                Value::Integer(i) => Decimal::from(*i),
                Value::Decimal(d) => *d,
                _ => unreachable!(),
            };
            let v = if op == Mul { x.value.checked_mul(n) } else { x.value.checked_div(n) };
            v.map(|value| Value::Quantity(Quantity { value, unit: x.unit.clone() }))
        }
        (x, y) => {
            let num = |v: &Value<'_>| match v {
                Value::Integer(i) => Some(Decimal::from(*i)),
                Value::Decimal(d) => Some(*d),
                _ => None,
            };
            let (Some(p), Some(q)) = (num(x), num(y)) else { return Err(clash()) };
            match op {
                Add => p.checked_add(q).map(Value::Decimal),
                Sub => p.checked_sub(q).map(Value::Decimal),
                Mul => p.checked_mul(q).map(Value::Decimal),
                Div => p.checked_div(q).map(Value::Decimal),
                IntDiv => p.checked_div(q).and_then(|d| d.trunc().to_i64()).map(Value::Integer),
                Mod => p.checked_rem(q).map(Value::Decimal),
                _ => return Err(clash()),
            }
        }
    })
}
