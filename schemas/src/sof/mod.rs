//! SQL-on-FHIR v2 ViewDefinitions: the parsed, checked view and a row-by-row reference
//! runner over resources held as [`Json`].
//!
//! Owns: reading a ViewDefinition ([`View::parse`]) with every structural check the spec
//! makes (resource type, column names, unionAll column agreement, constants, FHIRPath
//! syntax, unknown `%variables`), the output column list in the spec's order
//! ([`View::columns`]), and [`View::rows`], which evaluates the view for one resource with
//! the FHIRPath engine. The query crate compiles views to columnar plans and uses this
//! runner only where an expression cannot be compiled (and for inline resources).
//!
//! Must not: do I/O or know about Arrow or DataFusion.

use std::collections::HashSet;

use crate::fhirpath::{self, Ast, Context, Expression, Node, Value};
use crate::json::Json;
use crate::model::{Model, Primitive, TypeRef};

/// Why a ViewDefinition cannot be run: where in the view, and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("ViewDefinition {location}: {message}")]
pub struct ViewError {
    /// A path into the ViewDefinition, e.g. `select[1].column[0].path`.
    pub location: String,
    /// What is wrong, for a person.
    pub message: String,
}

fn err(location: impl Into<String>, message: impl Into<String>) -> ViewError {
    ViewError { location: location.into(), message: message.into() }
}

/// How a select iterates its parent's focus.
#[derive(Debug, Clone)]
pub enum Iteration {
    /// Once, on the parent's focus.
    None,
    /// Once per item; no rows when there are none.
    ForEach(Expression),
    /// Once per item; one row of nulls when there are none.
    ForEachOrNull(Expression),
    /// Once per item reached by applying the paths recursively (all levels).
    Repeat(Vec<Expression>),
}

/// One output column.
#[derive(Debug, Clone)]
pub struct Column {
    /// Output name (a database identifier).
    pub name: String,
    /// The FHIRPath producing its value.
    pub path: Expression,
    /// True when the column holds a list.
    pub collection: bool,
    /// The declared FHIR type (`string`, `integer`, ...), when given.
    pub fhir_type: Option<String>,
    /// Where the column is in the ViewDefinition (for error messages).
    pub location: String,
}

/// A `select` node.
#[derive(Debug, Clone)]
pub struct Select {
    pub iteration: Iteration,
    pub columns: Vec<Column>,
    pub selects: Vec<Select>,
    pub union_all: Vec<Select>,
    pub location: String,
}

/// A checked ViewDefinition.
#[derive(Debug, Clone)]
pub struct View {
    /// The FHIR resource type the view reads.
    pub resource: String,
    /// The view's `name`, when given.
    pub name: Option<String>,
    /// `constant[]`: name and value (its JSON and FHIR primitive type).
    pub constants: Vec<(String, Json, Primitive)>,
    /// `where[]` paths; a resource is in the view only if each is true.
    pub filters: Vec<Expression>,
    /// The top level, as a select without columns or iteration.
    pub root: Select,
}

/// Output column description: name, declared type, collection flag.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnInfo {
    pub name: String,
    pub fhir_type: Option<String>,
    pub collection: bool,
}

/// Environment variables FHIRPath defines itself (besides `%vs-*` and `%ext-*`).
const BUILTIN_VARIABLES: &[&str] = &["resource", "context", "rootResource", "ucum", "sct", "loinc", "rowIndex"];

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl View {
    /// Reads and checks a ViewDefinition.
    pub fn parse(model: &Model, json: &Json) -> Result<View, ViewError> {
        let Json::Object(_) = json else { return Err(err("", "a ViewDefinition must be a JSON object")) };
        if let Some(rt) = json.get("resourceType").and_then(Json::as_str)
            && rt != "ViewDefinition"
        {
            return Err(err("resourceType", format!("expected ViewDefinition, got {rt}")));
        }
        let resource = match json.get("resource") {
            Some(Json::String(s)) => s.clone(),
            Some(_) => return Err(err("resource", "must be a string naming a FHIR resource type")),
            None => return Err(err("resource", "is required: the FHIR resource type the view reads")),
        };
        if !model.is_resource_type(&resource) {
            return Err(err("resource", format!("'{resource}' is not an R4 resource type")));
        }
        let name = match json.get("name") {
            Some(Json::String(s)) if is_identifier(s) => Some(s.clone()),
            Some(Json::String(s)) => {
                return Err(err(
                    "name",
                    format!("'{s}' is not a valid name (letters, digits and _, starting with a letter)"),
                ));
            }
            Some(_) => return Err(err("name", "must be a string")),
            None => None,
        };
        let mut constants = Vec::new();
        for (i, c) in array(json, "constant", "")?.iter().enumerate() {
            let loc = format!("constant[{i}]");
            let cname = match c.get("name") {
                Some(Json::String(s)) if is_identifier(s) => s.clone(),
                _ => return Err(err(format!("{loc}.name"), "a constant needs a name (letters, digits and _)")),
            };
            let Json::Object(members) = c else { return Err(err(loc, "must be an object")) };
            let mut value = None;
            for (k, v) in members {
                if let Some(t) = k.strip_prefix("value") {
                    let code = lower_first(t);
                    let p = Primitive::from_code(&code)
                        .ok_or_else(|| err(format!("{loc}.{k}"), format!("'{code}' is not a primitive type")))?;
                    if value.replace((v.clone(), p)).is_some() {
                        return Err(err(&loc, "a constant has exactly one value[x]"));
                    }
                }
            }
            let (v, p) = value.ok_or_else(|| err(&loc, format!("constant '{cname}' has no value[x]")))?;
            if constants.iter().any(|(n, _, _): &(String, Json, Primitive)| *n == cname) {
                return Err(err(&loc, format!("constant '{cname}' is defined twice")));
            }
            constants.push((cname, v, p));
        }
        let known: HashSet<String> = constants.iter().map(|(n, _, _)| n.clone()).collect();
        let parse_path = |location: &str, v: Option<&Json>| -> Result<Expression, ViewError> {
            let text = match v {
                Some(Json::String(s)) => s,
                Some(_) => return Err(err(location, "must be a FHIRPath string")),
                None => return Err(err(location, "is required")),
            };
            let e = Expression::parse(text).map_err(|e| err(location, format!("'{text}': {e}")))?;
            check_variables(e.ast(), &known).map_err(|m| err(location, m))?;
            Ok(e)
        };
        let mut filters = Vec::new();
        for (i, w) in array(json, "where", "")?.iter().enumerate() {
            filters.push(parse_path(&format!("where[{i}].path"), w.get("path"))?);
        }
        let selects = parse_selects(json, "", &parse_path)?;
        if selects.is_empty() {
            return Err(err("select", "a view needs at least one select"));
        }
        let root =
            Select { iteration: Iteration::None, columns: vec![], selects, union_all: vec![], location: String::new() };
        let mut seen = HashSet::new();
        for c in root.column_infos() {
            if !seen.insert(c.name.clone()) {
                return Err(err("select", format!("column name '{}' is used twice", c.name)));
            }
        }
        Ok(View { resource, name, constants, filters, root })
    }

    /// The output columns, in the spec's order.
    pub fn columns(&self) -> Vec<ColumnInfo> {
        self.root.column_infos()
    }

    /// A context with the view's constants (and `%rowIndex` 0) for `resource`.
    pub fn context<'a>(&'a self, model: &'static Model, resource: &'a Json) -> Context<'a> {
        let mut ctx = Context::new(model, Some(resource)).with_variable("rowIndex", vec![Value::Integer(0)]);
        for (name, value, p) in &self.constants {
            ctx = ctx
                .with_variable(name, vec![Value::Node(Node::typed(model, Some(value), None, &TypeRef::Primitive(*p)))]);
        }
        ctx
    }

    /// True when the resource (`root`, in `ctx`) passes every `where`; a `where` that yields
    /// a non-boolean is an error.
    fn includes<'a>(&self, ctx: &Context<'a>, root: &Value<'a>) -> Result<bool, ViewError> {
        for (i, f) in self.filters.iter().enumerate() {
            let out =
                f.evaluate_in(ctx, vec![root.clone()]).map_err(|e| err(format!("where[{i}].path"), e.to_string()))?;
            match out.as_slice() {
                [] => return Ok(false),
                [v] => match v.normalized().as_ref() {
                    Value::Boolean(true) => {}
                    Value::Boolean(false) => return Ok(false),
                    other => {
                        return Err(err(
                            format!("where[{i}].path"),
                            format!("'{}' must be boolean, got {}", f.source(), fhirpath::value::describe(other)),
                        ));
                    }
                },
                _ => return Err(err(format!("where[{i}].path"), format!("'{}' yields several values", f.source()))),
            }
        }
        Ok(true)
    }

    /// One top-level column (of a select without iteration) evaluated on `resource`.
    pub fn column_on_resource(
        &self,
        model: &'static Model,
        resource: &Json,
        column: &Column,
    ) -> Result<Json, ViewError> {
        let ctx = self.context(model, resource);
        let out = column
            .path
            .evaluate_in(&ctx, vec![Value::Node(Node::resource(model, resource))])
            .map_err(|e| err(&column.location, e.to_string()))?;
        column_value(column, out)
    }

    /// The view's rows for one resource (none when it is of another type or filtered out).
    pub fn rows(&self, model: &'static Model, resource: &Json) -> Result<Vec<Vec<Json>>, ViewError> {
        if resource.get("resourceType").and_then(Json::as_str) != Some(self.resource.as_str()) {
            return Ok(vec![]);
        }
        let ctx = self.context(model, resource);
        let root = Value::Node(Node::resource(model, resource));
        if !self.includes(&ctx, &root)? {
            return Ok(vec![]);
        }
        let runner = Runner { ctx };
        runner.select_rows(&self.root, &root, 0)
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_ascii_lowercase().to_string() + c.as_str()).unwrap_or_default()
}

fn array<'j>(json: &'j Json, key: &str, at: &str) -> Result<&'j [Json], ViewError> {
    match json.get(key) {
        None => Ok(&[]),
        Some(Json::Array(a)) => Ok(a),
        Some(_) => Err(err(format!("{at}{key}"), "must be an array")),
    }
}

/// Every `%name` must be a constant or a FHIRPath/SQL-on-FHIR variable.
fn check_variables(ast: &Ast, known: &HashSet<String>) -> Result<(), String> {
    let mut bad = None;
    visit(ast, &mut |a| {
        if let Ast::External(n) = a {
            let ok = known.contains(n)
                || BUILTIN_VARIABLES.contains(&n.as_str())
                || n.starts_with("vs-")
                || n.starts_with("ext-");
            if !ok && bad.is_none() {
                bad = Some(format!("%{n} is not a constant of this view"));
            }
        }
    });
    bad.map_or(Ok(()), Err)
}

/// Calls `f` on every node of a syntax tree.
pub fn visit(ast: &Ast, f: &mut dyn FnMut(&Ast)) {
    f(ast);
    match ast {
        Ast::Member(t, _) => visit(t, f),
        Ast::Function { target, args, .. } => {
            if let Some(t) = target {
                visit(t, f);
            }
            for a in args {
                visit(a, f);
            }
        }
        Ast::Index(a, b) | Ast::Binary { left: a, right: b, .. } => {
            visit(a, f);
            visit(b, f);
        }
        Ast::Polarity { operand, .. } | Ast::TypeOp { operand, .. } => visit(operand, f),
        _ => {}
    }
}

type PathParser<'p> = dyn Fn(&str, Option<&Json>) -> Result<Expression, ViewError> + 'p;

fn parse_selects(json: &Json, at: &str, path: &PathParser<'_>) -> Result<Vec<Select>, ViewError> {
    let mut out = Vec::new();
    for (i, s) in array(json, "select", at)?.iter().enumerate() {
        out.push(parse_select(s, &format!("{at}select[{i}]"), path)?);
    }
    Ok(out)
}

fn parse_select(json: &Json, at: &str, path: &PathParser<'_>) -> Result<Select, ViewError> {
    let Json::Object(_) = json else { return Err(err(at, "a select must be an object")) };
    let mut iterations = Vec::new();
    if let Some(v) = json.get("forEach") {
        iterations.push(Iteration::ForEach(path(&format!("{at}.forEach"), Some(v))?));
    }
    if let Some(v) = json.get("forEachOrNull") {
        iterations.push(Iteration::ForEachOrNull(path(&format!("{at}.forEachOrNull"), Some(v))?));
    }
    if json.get("repeat").is_some() {
        let paths = array(json, "repeat", &format!("{at}."))?;
        if paths.is_empty() {
            return Err(err(format!("{at}.repeat"), "needs at least one path"));
        }
        let exprs = paths
            .iter()
            .enumerate()
            .map(|(i, p)| path(&format!("{at}.repeat[{i}]"), Some(p)))
            .collect::<Result<Vec<_>, _>>()?;
        iterations.push(Iteration::Repeat(exprs));
    }
    if iterations.len() > 1 {
        return Err(err(at, "a select has at most one of forEach, forEachOrNull and repeat"));
    }
    let mut columns = Vec::new();
    for (i, c) in array(json, "column", &format!("{at}."))?.iter().enumerate() {
        let loc = format!("{at}.column[{i}]");
        let name = match c.get("name") {
            Some(Json::String(s)) if is_identifier(s) => s.clone(),
            Some(Json::String(s)) => {
                return Err(err(
                    format!("{loc}.name"),
                    format!("'{s}' is not a valid column name (letters, digits and _, starting with a letter)"),
                ));
            }
            _ => return Err(err(format!("{loc}.name"), "a column needs a name")),
        };
        let collection = match c.get("collection") {
            None => false,
            Some(Json::Bool(b)) => *b,
            Some(_) => return Err(err(format!("{loc}.collection"), "must be true or false")),
        };
        let fhir_type = match c.get("type") {
            None => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(_) => return Err(err(format!("{loc}.type"), "must be a type name")),
        };
        columns.push(Column {
            name,
            path: path(&format!("{loc}.path"), c.get("path"))?,
            collection,
            fhir_type,
            location: loc,
        });
    }
    let selects = parse_selects(json, &format!("{at}."), path)?;
    let mut union_all = Vec::new();
    for (i, u) in array(json, "unionAll", &format!("{at}."))?.iter().enumerate() {
        union_all.push(parse_select(u, &format!("{at}.unionAll[{i}]"), path)?);
    }
    if let Some((first, rest)) = union_all.split_first() {
        let want: Vec<String> = first.column_infos().into_iter().map(|c| c.name).collect();
        for (i, u) in rest.iter().enumerate() {
            let got: Vec<String> = u.column_infos().into_iter().map(|c| c.name).collect();
            if got != want {
                return Err(err(
                    format!("{at}.unionAll[{}]", i + 1),
                    format!("unionAll branches must have the same columns in the same order: {want:?} vs {got:?}"),
                ));
            }
        }
    }
    if columns.is_empty() && selects.is_empty() && union_all.is_empty() {
        return Err(err(at, "a select needs columns, a nested select or unionAll"));
    }
    Ok(Select {
        iteration: iterations.pop().unwrap_or(Iteration::None),
        columns,
        selects,
        union_all,
        location: at.into(),
    })
}

impl Select {
    /// Own columns, then nested selects', then the first unionAll branch's.
    pub fn column_infos(&self) -> Vec<ColumnInfo> {
        let mut out: Vec<ColumnInfo> = self
            .columns
            .iter()
            .map(|c| ColumnInfo { name: c.name.clone(), fhir_type: c.fhir_type.clone(), collection: c.collection })
            .collect();
        for s in &self.selects {
            out.extend(s.column_infos());
        }
        if let Some(u) = self.union_all.first() {
            out.extend(u.column_infos());
        }
        out
    }

    /// Number of output columns.
    pub fn width(&self) -> usize {
        self.column_infos().len()
    }
}

struct Runner<'a> {
    ctx: Context<'a>,
}

impl<'a> Runner<'a> {
    fn eval(
        &self,
        e: &Expression,
        focus: &Value<'a>,
        row_index: i64,
    ) -> Result<Vec<Value<'a>>, fhirpath::FhirPathError> {
        self.eval_on(e, vec![focus.clone()], row_index)
    }

    fn eval_on(
        &self,
        e: &Expression,
        input: Vec<Value<'a>>,
        row_index: i64,
    ) -> Result<Vec<Value<'a>>, fhirpath::FhirPathError> {
        // %rowIndex is per iteration level: rebind it for this focus.
        if e.source().contains("rowIndex") {
            let ctx = self.ctx.clone().with_variable("rowIndex", vec![Value::Integer(row_index)]);
            return e.evaluate_in(&ctx, input);
        }
        e.evaluate_in(&self.ctx, input)
    }

    fn select_rows(&self, s: &Select, focus: &Value<'a>, row_index: i64) -> Result<Vec<Vec<Json>>, ViewError> {
        let ex = |loc: &str, e: fhirpath::FhirPathError| err(loc, e.to_string());
        match &s.iteration {
            Iteration::None => self.body(s, focus, row_index),
            Iteration::ForEach(e) | Iteration::ForEachOrNull(e) => {
                let items = self.eval(e, focus, row_index).map_err(|x| ex(&s.location, x))?;
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    out.extend(self.body(s, item, i as i64)?);
                }
                if items.is_empty() && matches!(s.iteration, Iteration::ForEachOrNull(_)) {
                    // The null row: own columns over an empty focus (so `%rowIndex` is 0),
                    // nulls for the nested selects.
                    let mut row = Vec::with_capacity(s.width());
                    for c in &s.columns {
                        let out = self.eval_on(&c.path, vec![], 0).map_err(|e| err(&c.location, e.to_string()))?;
                        row.push(column_value(c, out)?);
                    }
                    row.resize(s.width(), Json::Null);
                    out.push(row);
                }
                Ok(out)
            }
            Iteration::Repeat(paths) => {
                let mut items = Vec::new();
                self.repeat(paths, focus, row_index, &mut items, &s.location, 0)?;
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    out.extend(self.body(s, item, i as i64)?);
                }
                Ok(out)
            }
        }
    }

    fn repeat(
        &self,
        paths: &[Expression],
        focus: &Value<'a>,
        row_index: i64,
        out: &mut Vec<Value<'a>>,
        loc: &str,
        depth: usize,
    ) -> Result<(), ViewError> {
        if depth > 256 {
            return Err(err(loc, "repeat nests deeper than 256 levels"));
        }
        for p in paths {
            for item in self.eval(p, focus, row_index).map_err(|e| err(loc, e.to_string()))? {
                out.push(item.clone());
                self.repeat(paths, &item, row_index, out, loc, depth + 1)?;
            }
        }
        Ok(())
    }

    /// Columns on `focus`, times the rows of each nested select, times the unionAll rows.
    fn body(&self, s: &Select, focus: &Value<'a>, row_index: i64) -> Result<Vec<Vec<Json>>, ViewError> {
        let mut row = Vec::with_capacity(s.columns.len());
        for c in &s.columns {
            let out = self.eval(&c.path, focus, row_index).map_err(|e| err(&c.location, e.to_string()))?;
            row.push(column_value(c, out)?);
        }
        let mut rows = vec![row];
        for nested in &s.selects {
            let sub = self.select_rows(nested, focus, row_index)?;
            rows = product(rows, &sub);
            if rows.is_empty() {
                return Ok(rows);
            }
        }
        if !s.union_all.is_empty() {
            let mut sub = Vec::new();
            for u in &s.union_all {
                sub.extend(self.select_rows(u, focus, row_index)?);
            }
            rows = product(rows, &sub);
        }
        Ok(rows)
    }
}

fn product(left: Vec<Vec<Json>>, right: &[Vec<Json>]) -> Vec<Vec<Json>> {
    let mut out = Vec::with_capacity(left.len() * right.len());
    for l in &left {
        for r in right {
            let mut row = l.clone();
            row.extend(r.iter().cloned());
            out.push(row);
        }
    }
    out
}

fn column_value(c: &Column, values: Vec<Value<'_>>) -> Result<Json, ViewError> {
    if c.collection {
        return Ok(Json::Array(values.iter().filter_map(to_json).collect()));
    }
    match values.as_slice() {
        [] => Ok(Json::Null),
        [v] => Ok(to_json(v).unwrap_or(Json::Null)),
        _ => Err(err(
            &c.location,
            format!(
                "column '{}' ('{}') yields {} values; set \"collection\": true to keep them all",
                c.name,
                c.path.source(),
                values.len()
            ),
        )),
    }
}

/// A FHIRPath value as the JSON a view row holds.
pub fn to_json(v: &Value<'_>) -> Option<Json> {
    Some(match v {
        Value::Node(n) => match n.system_value() {
            Some(Value::Node(_)) | None => n.value?.clone(),
            Some(_) if n.value.is_some_and(|j| !matches!(j, Json::Object(_))) => n.value?.clone(),
            Some(s) => return to_json(&s),
        },
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => Json::Number(i.to_string()),
        Value::Decimal(d) => Json::Number(d.to_string()),
        Value::String(s) => Json::String(s.to_string()),
        Value::Temporal(t) => Json::String(t.to_string()),
        Value::Quantity(q) => Json::String(format!("{} '{}'", q.value, q.unit)),
        Value::TypeInfo(ns, n) => Json::String(format!("{ns}.{n}")),
    })
}
