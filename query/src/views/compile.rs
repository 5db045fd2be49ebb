//! ViewDefinition -> DataFusion plan over a resource type's current table.
//!
//! Paths become struct field access (`get_field`) on single elements and the vectorized
//! `fhir_field` / `fhir_where` functions on repeating ones; `forEach` is an unnest,
//! `forEachOrNull` a null-preserving unnest, sibling selects multiply rows by being
//! applied one after the other to the same frame, `unionAll` is `UNION ALL` of the branches
//! applied to the same input, `%rowIndex` the position carried through an enumerated
//! unnest. Anything outside that subset (arithmetic, dates compared as dates, `repeat`,
//! extensions, element ids) makes the compiler return
//! [`NotCompiled`] with the reason, and the caller falls back to the row-by-row runner.

use std::collections::HashMap;

use arrow::datatypes::{DataType, Field};
use datafusion::common::NullHandling;
use datafusion::common::{DFSchema, ScalarValue, UnnestOptions};
use datafusion::functions::core::expr_fn::get_field;
use datafusion::functions_nested::expr_fn::{array_element, array_length, array_to_string};
use datafusion::logical_expr::ExprSchemable;
use datafusion::prelude::{DataFrame, Expr, cast, coalesce, ident, lit, when};
use fhirlake_schemas::fhirpath::{Ast, BinOp};
use fhirlake_schemas::json::Json;
use fhirlake_schemas::model::Model;
use fhirlake_schemas::model::Primitive;
use fhirlake_schemas::shape::{DECIMAL_PRECISION, DECIMAL_SCALE, Shape, StructShape, TableShape, reserved};
use fhirlake_schemas::sof::{Column, Iteration, Select, View};
use std::sync::Arc;

use super::udf::{self, Lit, Op, Pred};
use super::{ViewError, output_type};

/// Why a view is run by the row-by-row fallback.
#[derive(Debug, Clone)]
pub struct NotCompiled(pub String);

/// Either the view is invalid (an error for the user) or it cannot be compiled.
pub enum Failure {
    Invalid(ViewError),
    Fallback(NotCompiled),
}

impl From<NotCompiled> for Failure {
    fn from(n: NotCompiled) -> Self {
        Failure::Fallback(n)
    }
}

impl From<datafusion::error::DataFusionError> for Failure {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Failure::Fallback(NotCompiled(format!("planning: {e}")))
    }
}

fn nc<T>(why: impl Into<String>) -> Result<T, NotCompiled> {
    Err(NotCompiled(why.into()))
}

/// The static FHIR type of a compiled value.
#[derive(Debug, Clone, Copy)]
enum Ty<'s> {
    Struct(&'s StructShape),
    Str,
    Temporal,
    Bool,
    Int,
    Dec,
}

fn scalar_ty<'s>(p: Primitive) -> Ty<'s> {
    match p {
        Primitive::Boolean => Ty::Bool,
        Primitive::Integer | Primitive::PositiveInt | Primitive::UnsignedInt => Ty::Int,
        Primitive::Decimal => Ty::Dec,
        Primitive::Date | Primitive::DateTime | Primitive::Instant | Primitive::Time => Ty::Temporal,
        _ => Ty::Str,
    }
}

/// A compiled value: an expression, its FHIR type, and whether it is a list (collection).
#[derive(Clone)]
struct C<'s> {
    expr: Expr,
    ty: Ty<'s>,
    many: bool,
}

/// What a path is evaluated on.
#[derive(Clone)]
enum Focus<'s> {
    /// The resource: its fields are the table's top-level columns.
    Root,
    Item(C<'s>),
}

struct Compiler<'s> {
    model: &'static Model,
    view: Arc<View>,
    /// Top-level columns run row by row (name and why).
    row_by_row: Vec<String>,
    shape: &'s TableShape,
    constants: HashMap<String, (Json, Primitive)>,
    next: usize,
    /// Whether any path uses `%rowIndex` (then `forEach` unnests enumerated lists).
    needs_index: bool,
    /// `%rowIndex` of the select being compiled.
    row_index: Expr,
}

/// Compiles `view` over `df` (the resource type's current table). Returns the frame of
/// output rows with the output columns in order, and the top-level columns that run row by
/// row (name and why).
pub fn compile(
    model: &'static Model,
    view: &Arc<View>,
    shape: &TableShape,
    df: DataFrame,
    source_id: bool,
) -> Result<(DataFrame, Vec<String>), Failure> {
    let mut c = Compiler {
        model,
        view: view.clone(),
        row_by_row: Vec::new(),
        shape,
        constants: view.constants.iter().map(|(n, v, p)| (n.clone(), (v.clone(), *p))).collect(),
        next: 0,
        needs_index: select_mentions_row_index(&view.root),
        row_index: lit(0i64),
    };
    let mut df = df;
    for (i, f) in view.filters.iter().enumerate() {
        let e = c.expr(f.ast(), &Focus::Root, df.schema())?;
        match e.ty {
            Ty::Bool if !e.many => df = df.filter(e.expr)?,
            Ty::Bool => return Err(NotCompiled("where on a boolean collection".into()).into()),
            _ => {
                return Err(Failure::Invalid(ViewError {
                    location: format!("where[{i}].path"),
                    message: format!("'{}' must be boolean", f.source()),
                }));
            }
        }
    }
    let (df, names) = c.select(df, &view.root, &Focus::Root, lit(0i64))?;
    let infos = view.columns();
    let mut out: Vec<Expr> = names.iter().zip(&infos).map(|(n, info)| ident(n).alias(&info.name)).collect();
    if source_id {
        out.push(cast(ident("id"), DataType::Utf8).alias(reserved::SOURCE_ID));
    }
    Ok((df.select(out)?, c.row_by_row))
}

impl<'s> Compiler<'s> {
    fn fresh(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("__{prefix}{}", self.next)
    }

    /// Applies one select to `df`: returns the frame (rows multiplied by its iterations)
    /// and the internal names of the columns it produced, in output order.
    fn select(
        &mut self,
        df: DataFrame,
        s: &Select,
        focus: &Focus<'s>,
        row_index: Expr,
    ) -> Result<(DataFrame, Vec<String>), Failure> {
        // The iteration's own path sees the parent's `%rowIndex`.
        self.row_index = row_index.clone();
        let (mut df, focus, row_index) = match &s.iteration {
            Iteration::None => (df, focus.clone(), row_index),
            Iteration::ForEach(e) | Iteration::ForEachOrNull(e) => {
                let or_null = matches!(s.iteration, Iteration::ForEachOrNull(_));
                let c = self.expr(e.ast(), focus, df.schema())?;
                let name = self.fresh("each");
                let handling = if or_null { NullHandling::PreserveAndExpandEmpty } else { NullHandling::Drop };
                if c.many && self.needs_index {
                    // Unnest (index, item) pairs so `%rowIndex` is the item's position.
                    let item = element_type(&c.expr.get_type(df.schema())?)?;
                    let pair = DataType::Struct(
                        vec![Field::new("i", DataType::Int64, true), Field::new("v", item, true)].into(),
                    );
                    let df = df.with_column(&name, udf::call(Op::Enumerate, c.expr, udf::list_of(pair)))?;
                    let df =
                        df.unnest_columns_with_options(&[&name], UnnestOptions::new().with_null_handling(handling))?;
                    let idx = coalesce(vec![get_field(ident(&name), "i"), lit(0i64)]);
                    (df, Focus::Item(C { expr: get_field(ident(&name), "v"), ty: c.ty, many: false }), idx)
                } else {
                    let df = df.with_column(&name, c.expr.clone())?;
                    let df = if c.many {
                        df.unnest_columns_with_options(&[&name], UnnestOptions::new().with_null_handling(handling))?
                    } else if or_null {
                        df
                    } else {
                        df.filter(ident(&name).is_not_null())?
                    };
                    (df, Focus::Item(C { expr: ident(&name), ty: c.ty, many: false }), lit(0i64))
                }
            }
            Iteration::Repeat(_) => return Err(NotCompiled("repeat".into()).into()),
        };
        self.row_index = row_index.clone();
        let mut names = Vec::new();
        for col in &s.columns {
            let expr = match self.column(col, &focus, df.schema()) {
                Ok(e) => e,
                // A top-level column the compiler does not cover: that one path runs row
                // by row over `_raw`; the rest of the view stays compiled.
                Err(Failure::Fallback(why)) if matches!(focus, Focus::Root) => {
                    self.row_by_row.push(format!("{} ({})", col.name, why.0));
                    super::column_udf(self.model, self.view.clone(), col.clone())
                }
                Err(e) => return Err(e),
            };
            let name = self.fresh("col");
            df = df.with_column(&name, expr)?;
            names.push(name);
        }
        for nested in &s.selects {
            let (next, n) = self.select(df, nested, &focus, row_index.clone())?;
            df = next;
            names.extend(n);
        }
        if !s.union_all.is_empty() {
            let carried: Vec<String> = df.schema().fields().iter().map(|f| f.name().clone()).collect();
            let mut shared: Vec<String> = Vec::new();
            let mut union: Option<DataFrame> = None;
            for branch in &s.union_all {
                let (b, n) = self.select(df.clone(), branch, &focus, row_index.clone())?;
                if shared.is_empty() {
                    shared = n.iter().map(|_| self.fresh("union")).collect();
                }
                let mut proj: Vec<Expr> = carried.iter().map(ident).collect();
                proj.extend(n.iter().zip(&shared).map(|(x, s)| ident(x).alias(s)));
                let b = b.select(proj)?;
                union = Some(match union {
                    None => b,
                    Some(u) => u.union(b)?,
                });
            }
            df = union.expect("unionAll has branches");
            names.extend(shared);
        }
        Ok((df, names))
    }

    /// A column's compiled expression, cast to its output type.
    fn column(&mut self, col: &Column, focus: &Focus<'s>, schema: &DFSchema) -> Result<Expr, Failure> {
        let c = self.expr(col.path.ast(), focus, schema)?;
        let info = fhirlake_schemas::sof::ColumnInfo {
            name: col.name.clone(),
            fhir_type: col.fhir_type.clone(),
            collection: col.collection,
        };
        if matches!(c.ty, Ty::Struct(_)) {
            return Err(NotCompiled(format!("column '{}' holds a complex value", col.name)).into());
        }
        let expr = match (c.many, col.collection) {
            (true, false) => {
                let t = element_type(&c.expr.get_type(schema)?)?;
                udf::call(Op::Single(format!("column '{}' ('{}')", col.name, col.path.source())), c.expr, t)
            }
            (false, true) => return Err(NotCompiled("collection column over a single value".into()).into()),
            _ => c.expr,
        };
        Ok(cast(expr, output_type(&info, Some(arrow_kind(c.ty)))))
    }

    fn field(&self, parent: &Focus<'s>, name: &str, schema: &DFSchema) -> Result<C<'s>, NotCompiled> {
        let (shape, base) = match parent {
            Focus::Root => (&self.shape.root, None),
            Focus::Item(C { ty: Ty::Struct(s), expr, many }) => (*s, Some((expr, *many))),
            Focus::Item(_) => return nc(format!("'{name}' of a primitive")),
        };
        if name == "id" && base.is_some() {
            return nc("element ids are kept in the raw JSON only");
        }
        let Some(f) = shape.field(name) else { return nc(format!("'{name}' is not a stored field here")) };
        let ty = match &f.shape {
            Shape::Scalar(p) => scalar_ty(*p),
            Shape::Struct(s) => Ty::Struct(s),
            Shape::Json => return nc(format!("'{name}' is stored as JSON text")),
            Shape::Extensions => return nc("extensions"),
        };
        Ok(match base {
            None => C { expr: ident(name), ty, many: f.many },
            Some((e, false)) => C { expr: get_field(e.clone(), name), ty, many: f.many },
            Some((e, true)) => {
                let t = e.get_type(schema).map_err(|x| NotCompiled(x.to_string()))?;
                let child = struct_child(
                    &element_type(&t).map_err(|f| match f {
                        Failure::Fallback(n) => n,
                        Failure::Invalid(v) => NotCompiled(v.message),
                    })?,
                    name,
                )?;
                let item = match child {
                    DataType::List(inner) => inner.data_type().clone(),
                    other => other,
                };
                C { expr: udf::call(Op::Field(name.into()), e.clone(), udf::list_of(item)), ty, many: true }
            }
        })
    }

    fn expr(&mut self, ast: &Ast, focus: &Focus<'s>, schema: &DFSchema) -> Result<C<'s>, NotCompiled> {
        match ast {
            Ast::Identifier(n) => {
                if matches!(focus, Focus::Root) && *n == self.shape.resource_type {
                    return nc("type-qualified path");
                }
                self.field(focus, n, schema)
            }
            Ast::Member(t, n) => {
                let parent = self.node(t, focus, schema)?;
                self.field(&parent, n, schema)
            }
            Ast::This => match focus {
                Focus::Item(c) => Ok(c.clone()),
                Focus::Root => nc("$this on the resource"),
            },
            Ast::String(s) => Ok(C { expr: lit(s.clone()), ty: Ty::Str, many: false }),
            Ast::Integer(i) => Ok(C { expr: lit(*i), ty: Ty::Int, many: false }),
            Ast::Boolean(b) => Ok(C { expr: lit(*b), ty: Ty::Bool, many: false }),
            Ast::External(n) if n == "rowIndex" => Ok(C { expr: self.row_index.clone(), ty: Ty::Int, many: false }),
            Ast::External(n) => {
                let Some((v, p)) = self.constants.get(n) else { return nc(format!("%{n}")) };
                constant(v, *p)
            }
            Ast::Index(t, i) => {
                let Ast::Integer(k) = i.as_ref() else { return nc("computed index") };
                let c = self.expr(t, focus, schema)?;
                if c.many {
                    Ok(C { expr: array_element(c.expr, lit(*k + 1)), ty: c.ty, many: false })
                } else if *k == 0 {
                    Ok(c)
                } else {
                    nc("index past a single value")
                }
            }
            Ast::Function { target, name, args } => self.function(target.as_deref(), name, args, focus, schema),
            Ast::Binary { op, left, right } => {
                let l = self.expr(left, focus, schema)?;
                let r = self.expr(right, focus, schema)?;
                if l.many || r.many {
                    return nc("operator on a collection");
                }
                let b = |e| Ok(C { expr: e, ty: Ty::Bool, many: false });
                match op {
                    BinOp::And | BinOp::Or => match (l.ty, r.ty) {
                        (Ty::Bool, Ty::Bool) => {
                            b(if *op == BinOp::And { l.expr.and(r.expr) } else { l.expr.or(r.expr) })
                        }
                        _ => nc("and/or on non-booleans"),
                    },
                    BinOp::Eq | BinOp::Ne => {
                        comparable(l.ty, r.ty, true)?;
                        b(if *op == BinOp::Eq { l.expr.eq(r.expr) } else { l.expr.not_eq(r.expr) })
                    }
                    BinOp::Lt | BinOp::Gt | BinOp::Le | BinOp::Ge => {
                        comparable(l.ty, r.ty, false)?;
                        b(match op {
                            BinOp::Lt => l.expr.lt(r.expr),
                            BinOp::Gt => l.expr.gt(r.expr),
                            BinOp::Le => l.expr.lt_eq(r.expr),
                            _ => l.expr.gt_eq(r.expr),
                        })
                    }
                    _ => nc(format!("operator {op:?}")),
                }
            }
            _ => nc("expression form"),
        }
    }

    /// A path step's value as a focus (struct or scalar).
    fn node(&mut self, ast: &Ast, focus: &Focus<'s>, schema: &DFSchema) -> Result<Focus<'s>, NotCompiled> {
        if let Ast::Identifier(n) = ast
            && matches!(focus, Focus::Root)
            && *n == self.shape.resource_type
        {
            return Ok(Focus::Root);
        }
        Ok(Focus::Item(self.expr(ast, focus, schema)?))
    }

    fn function(
        &mut self,
        target: Option<&Ast>,
        name: &str,
        args: &[Ast],
        focus: &Focus<'s>,
        schema: &DFSchema,
    ) -> Result<C<'s>, NotCompiled> {
        if name == "getResourceKey" {
            return match (target, focus) {
                (None, Focus::Root) => Ok(C { expr: ident("id"), ty: Ty::Str, many: false }),
                _ => nc("getResourceKey() off the resource"),
            };
        }
        if name == "ofType" {
            // A choice element: `value.ofType(Quantity)` is the `valueQuantity` field.
            let [Ast::Identifier(t)] = args else { return nc("ofType argument") };
            let (parent, element) = match target {
                Some(Ast::Identifier(n)) => (focus.clone(), n),
                Some(Ast::Member(p, n)) => (self.node(p, focus, schema)?, n),
                _ => return nc("ofType on a computed value"),
            };
            let mut cap = t.clone();
            if let Some(f) = cap.get_mut(0..1) {
                f.make_ascii_uppercase();
            }
            return self.field(&parent, &format!("{element}{cap}"), schema);
        }
        let Some(target) = target else { return nc(format!("{name}() on $this")) };
        // `x.where(c).exists()` is `x.exists(c)` (one boolean, no filtered list built);
        // `empty()` likewise its negation.
        if let ("exists" | "empty", [], Ast::Function { target: Some(inner), name: w, args: wa }) = (name, args, target)
            && w == "where"
            && wa.len() == 1
        {
            let any = self.function(Some(inner), "exists", wa, focus, schema)?;
            return Ok(if name == "exists" { any } else { C { expr: std::ops::Not::not(any.expr), ..any } });
        }
        let c = self.expr(target, focus, schema)?;
        let b = |e| Ok(C { expr: e, ty: Ty::Bool, many: false });
        match (name, args) {
            ("first", []) if c.many => Ok(C { expr: array_element(c.expr, lit(1i64)), ty: c.ty, many: false }),
            ("first", []) => Ok(c),
            ("join", []) | ("join", [Ast::String(_)]) if matches!(c.ty, Ty::Str) => {
                let sep = match args {
                    [Ast::String(x)] => x.clone(),
                    _ => String::new(),
                };
                // join() of an empty collection is the empty string.
                let joined = if c.many { array_to_string(c.expr, lit(sep)) } else { c.expr };
                Ok(C { expr: coalesce(vec![joined, lit("")]), ty: Ty::Str, many: false })
            }
            ("exists", []) => b(present(&c)),
            ("empty", []) => b(std::ops::Not::not(present(&c))),
            ("not", []) => match (c.ty, c.many) {
                (Ty::Bool, false) => b(std::ops::Not::not(c.expr)),
                _ => nc("not() of a non-boolean"),
            },
            ("where", [cond]) | ("exists", [cond]) => {
                let Ty::Struct(s) = c.ty else { return nc("where() on primitives") };
                let p = predicate(cond, s, &self.constants)?;
                let t = c.expr.get_type(schema).map_err(|x| NotCompiled(x.to_string()))?;
                let list_t = if c.many { t } else { udf::list_of(t) };
                if name == "exists" {
                    return b(udf::call(Op::Any(p), c.expr, DataType::Boolean));
                }
                Ok(C { expr: udf::call(Op::Where(p), c.expr, list_t), ty: c.ty, many: true })
            }
            ("getReferenceKey", _) => {
                let Ty::Struct(s) = c.ty else { return nc("getReferenceKey() of a non-Reference") };
                if !s.is_reference {
                    return nc("getReferenceKey() of a non-Reference");
                }
                let want = match args {
                    [] => None,
                    [Ast::Identifier(t)] => Some(t.clone()),
                    _ => return nc("getReferenceKey argument"),
                };
                if c.many {
                    let t = c.expr.get_type(schema).map_err(|x| NotCompiled(x.to_string()))?;
                    let kept = match want {
                        Some(w) => udf::call(Op::Where(Pred::Eq(reserved::TARGET_TYPE.into(), Lit::Str(w))), c.expr, t),
                        None => c.expr,
                    };
                    let ids = udf::call(Op::Field(reserved::TARGET_ID.into()), kept, udf::list_of(DataType::Utf8View));
                    Ok(C { expr: ids, ty: Ty::Str, many: true })
                } else {
                    let id = get_field(c.expr.clone(), reserved::TARGET_ID);
                    let expr = match want {
                        Some(w) => when(get_field(c.expr, reserved::TARGET_TYPE).eq(lit(w)), id)
                            .otherwise(lit(ScalarValue::Utf8(None)))
                            .map_err(|e| NotCompiled(e.to_string()))?,
                        None => id,
                    };
                    Ok(C { expr, ty: Ty::Str, many: false })
                }
            }
            _ => nc(format!("{name}()")),
        }
    }
}

/// `exists()`: a non-empty list, or a present value.
fn present(c: &C<'_>) -> Expr {
    if c.many {
        coalesce(vec![array_length(c.expr.clone()).gt(lit(0u64)), lit(false)])
    } else {
        c.expr.clone().is_not_null()
    }
}

fn comparable(a: Ty<'_>, b: Ty<'_>, equality: bool) -> Result<(), NotCompiled> {
    match (a, b) {
        (Ty::Str, Ty::Str) | (Ty::Bool, Ty::Bool) if equality => Ok(()),
        (Ty::Int | Ty::Dec, Ty::Int | Ty::Dec) => Ok(()),
        _ => nc("comparison of these types (dates compare by precision)"),
    }
}

fn constant<'s>(v: &Json, p: Primitive) -> Result<C<'s>, NotCompiled> {
    let ty = scalar_ty(p);
    let expr = match (ty, v) {
        (Ty::Str, Json::String(s)) => lit(s.clone()),
        (Ty::Bool, Json::Bool(b)) => lit(*b),
        (Ty::Int, Json::Number(n)) => lit(n.parse::<i64>().map_err(|_| NotCompiled("integer constant".into()))?),
        (Ty::Dec, Json::Number(n)) => {
            let d =
                fhirlake_schemas::fhirpath::value::parse_decimal(n).ok_or(NotCompiled("decimal constant".into()))?;
            let mut d = d;
            d.rescale(DECIMAL_SCALE as u32);
            lit(ScalarValue::Decimal128(Some(d.mantissa()), DECIMAL_PRECISION, DECIMAL_SCALE))
        }
        _ => return nc("constant of this type"),
    };
    Ok(C { expr, ty, many: false })
}

fn predicate(ast: &Ast, s: &StructShape, constants: &HashMap<String, (Json, Primitive)>) -> Result<Pred, NotCompiled> {
    let scalar_field = |n: &str| -> Result<(), NotCompiled> {
        match s.field(n) {
            Some(f) if !f.many && matches!(f.shape, Shape::Scalar(_)) && n != "id" => Ok(()),
            _ => nc(format!("where() on '{n}'")),
        }
    };
    let literal = |a: &Ast| -> Result<Lit, NotCompiled> {
        Ok(match a {
            Ast::String(x) => Lit::Str(x.clone()),
            Ast::Boolean(x) => Lit::Bool(*x),
            Ast::Integer(x) => Lit::Int(*x),
            Ast::External(n) => match constants.get(n) {
                Some((Json::String(x), p)) if matches!(scalar_ty(*p), Ty::Str) => Lit::Str(x.clone()),
                Some((Json::Bool(x), _)) => Lit::Bool(*x),
                _ => return nc(format!("%{n} in where()")),
            },
            _ => return nc("where() comparing with a non-literal"),
        })
    };
    match ast {
        Ast::Binary { op: BinOp::Eq, left, right } => match (left.as_ref(), right.as_ref()) {
            (Ast::Identifier(f), v) | (v, Ast::Identifier(f)) => {
                scalar_field(f)?;
                let lit = literal(v)?;
                let ty = match s.field(f).map(|x| &x.shape) {
                    Some(Shape::Scalar(p)) => scalar_ty(*p),
                    _ => return nc("where() field"),
                };
                match (ty, &lit) {
                    (Ty::Str, Lit::Str(_)) | (Ty::Bool, Lit::Bool(_)) | (Ty::Int, Lit::Int(_)) => {}
                    _ => return nc("where() comparing different types"),
                }
                Ok(Pred::Eq(f.clone(), lit))
            }
            _ => nc("where() condition"),
        },
        Ast::Binary { op: BinOp::And, left, right } => {
            Ok(Pred::And(Box::new(predicate(left, s, constants)?), Box::new(predicate(right, s, constants)?)))
        }
        Ast::Binary { op: BinOp::Or, left, right } => {
            Ok(Pred::Or(Box::new(predicate(left, s, constants)?), Box::new(predicate(right, s, constants)?)))
        }
        Ast::Function { target: Some(t), name, args } if args.is_empty() && name == "not" => {
            Ok(Pred::Not(Box::new(predicate(t, s, constants)?)))
        }
        Ast::Function { target: Some(t), name, args } if args.is_empty() && name == "exists" => match t.as_ref() {
            Ast::Identifier(f) if s.field(f).is_some() && f != "id" => Ok(Pred::NotNull(f.clone())),
            _ => nc("where() exists on a path"),
        },
        Ast::Boolean(b) => Ok(Pred::Const(*b)),
        _ => nc("where() condition"),
    }
}

/// The Arrow type a compiled scalar of this FHIR type takes in the output.
fn arrow_kind(t: Ty<'_>) -> DataType {
    match t {
        Ty::Bool => DataType::Boolean,
        Ty::Int => DataType::Int32,
        Ty::Dec => DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE),
        Ty::Str | Ty::Temporal | Ty::Struct(_) => DataType::Utf8,
    }
}

fn element_type(t: &DataType) -> Result<DataType, Failure> {
    match t {
        DataType::List(f) | DataType::LargeList(f) => Ok(f.data_type().clone()),
        other => Err(NotCompiled(format!("expected a list, got {other}")).into()),
    }
}

fn struct_child(t: &DataType, name: &str) -> Result<DataType, NotCompiled> {
    match t {
        DataType::Struct(fs) => fs
            .iter()
            .find(|f| f.name() == name)
            .map(|f| f.data_type().clone())
            .ok_or(NotCompiled(format!("no field {name}"))),
        other => nc(format!("field {name} of {other}")),
    }
}

fn mentions_row_index(ast: &Ast) -> bool {
    let mut found = false;
    fhirlake_schemas::sof::visit(ast, &mut |a| found |= matches!(a, Ast::External(n) if n == "rowIndex"));
    found
}

/// Whether `%rowIndex` appears anywhere in `s` or below.
fn select_mentions_row_index(s: &Select) -> bool {
    let own = s.columns.iter().any(|c| mentions_row_index(c.path.ast()))
        || match &s.iteration {
            Iteration::ForEach(e) | Iteration::ForEachOrNull(e) => mentions_row_index(e.ast()),
            Iteration::Repeat(ps) => ps.iter().any(|e| mentions_row_index(e.ast())),
            Iteration::None => false,
        };
    own || s.selects.iter().chain(&s.union_all).any(select_mentions_row_index)
}
