//! FHIRPath (normative 2.0 with the FHIR R4 additions) over FHIR resources held as
//! [`Json`].
//!
//! Owns: parsing an expression once ([`Expression::parse`]) and evaluating it many times
//! against resources ([`Expression::evaluate`]), with the element types taken from the R4
//! [`Model`]: choice elements (`Observation.value` reaches `valueQuantity`), primitive
//! extensions (`birthDate.extension(...)`), `is`/`as`/`ofType` with type inheritance,
//! partial dates and times with precision, quantities with a UCUM subset, and `resolve()`
//! within a Bundle, the resource's contained resources, a caller-supplied resolver, or —
//! for search indexing — as a typed stand-in for the referenced resource.
//!
//! Must not: do I/O, or know about search indexes or storage. `memberOf()` (terminology)
//! is reported as unsupported.

mod eval;
mod lexer;
mod parser;
pub mod quantity;
pub mod temporal;
pub mod value;

use std::collections::HashMap;

pub use parser::{Ast, BinOp, TypeName};
pub use quantity::Quantity;
pub use temporal::{Precision, Temporal, TemporalKind};
pub use value::{Node, NodeType, Value};

use crate::json::Json;
use crate::model::Model;

/// Why an expression could not be parsed or evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FhirPathError {
    /// The text is not a FHIRPath expression.
    #[error("FHIRPath syntax error at offset {offset}: {message}")]
    Syntax {
        /// Byte offset in the expression.
        offset: usize,
        /// What was wrong.
        message: String,
    },
    /// The expression names something that cannot exist here (an unknown element or type).
    #[error("FHIRPath: {0}")]
    Semantic(String),
    /// Evaluation failed on this input (e.g. a single value was required, or types clash).
    #[error("FHIRPath evaluation: {0}")]
    Execution(String),
    /// A function fhirlake does not implement.
    #[error("FHIRPath: {0} is not supported")]
    Unsupported(String),
}

/// Looks up a referenced resource by its reference text (`Patient/1`, an absolute URL).
pub type Resolver<'a> = dyn Fn(&str) -> Option<&'a Json> + Sync + 'a;

/// What an evaluation may use besides its input.
#[derive(Clone)]
pub struct Context<'a> {
    model: &'static Model,
    resource: Option<&'a Json>,
    variables: HashMap<String, Vec<Value<'a>>>,
    resolver: Option<&'a Resolver<'a>>,
    /// Evaluation time, ms since the epoch (`now()`, `today()`, `timeOfDay()`).
    now_ms: i64,
    strict: bool,
}

impl<'a> Context<'a> {
    /// A context whose `%resource`, `%context` and `%rootResource` is `resource`.
    pub fn new(model: &'static Model, resource: Option<&'a Json>) -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Context { model, resource, variables: HashMap::new(), resolver: None, now_ms: ms, strict: false }
    }

    /// The evaluation time as a UTC dateTime with milliseconds.
    fn now(&self) -> Temporal {
        let epoch = Temporal::parse_datetime("1970-01-01T00:00:00.000Z").expect("static literal");
        epoch.add(self.now_ms, "millisecond").unwrap_or(epoch)
    }

    /// Defines `%name`.
    pub fn with_variable(mut self, name: &str, value: Vec<Value<'a>>) -> Self {
        self.variables.insert(name.to_string(), value);
        self
    }

    /// Resolves references that are not in the Bundle or contained resources.
    pub fn with_resolver(mut self, resolver: &'a Resolver<'a>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Strict mode: naming an element the type does not have, or a resource type other than
    /// the input's at the start of a path, is a [`FhirPathError::Semantic`] error instead of
    /// an empty result.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }
}

/// A parsed FHIRPath expression: parse once, evaluate many times.
#[derive(Debug, Clone)]
pub struct Expression {
    ast: Ast,
    source: String,
}

impl Expression {
    /// Parses an expression.
    pub fn parse(source: &str) -> Result<Self, FhirPathError> {
        Ok(Expression { ast: parser::parse(source)?, source: source.to_string() })
    }

    /// An expression from a syntax tree (e.g. one rewritten for a resource type).
    pub fn from_ast(ast: Ast, source: &str) -> Self {
        Expression { ast, source: source.to_string() }
    }

    /// The expression text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The syntax tree.
    pub fn ast(&self) -> &Ast {
        &self.ast
    }

    /// Evaluates against a resource (which is also `%resource`), non-strict.
    pub fn evaluate<'a>(&self, model: &'static Model, resource: &'a Json) -> Result<Vec<Value<'a>>, FhirPathError> {
        let ctx = Context::new(model, Some(resource));
        self.evaluate_in(&ctx, vec![Value::Node(Node::resource(model, resource))])
    }

    /// Evaluates with an explicit context and input collection.
    pub fn evaluate_in<'a>(&self, ctx: &Context<'a>, input: Vec<Value<'a>>) -> Result<Vec<Value<'a>>, FhirPathError> {
        eval::evaluate(ctx, &self.ast, input)
    }
}

#[cfg(test)]
mod tests;
