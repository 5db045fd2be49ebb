//! FHIRPath grammar: tokens to an [`Ast`] by precedence climbing.

use super::FhirPathError;
use super::lexer::{Tok, Token, tokenize};
use super::quantity::Quantity;
use super::temporal::Temporal;
use rust_decimal::Decimal;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Ast {
    /// `{}`
    Empty,
    Boolean(bool),
    String(String),
    Integer(i64),
    Decimal(Decimal),
    Temporal(Temporal),
    Quantity(Quantity),
    /// An identifier at the start of a path (member of `$this`, or a type name).
    Identifier(String),
    /// `target.name`
    Member(Box<Ast>, String),
    /// `target.name(args)`, or `name(args)` on `$this` when `target` is `None`.
    Function {
        target: Option<Box<Ast>>,
        name: String,
        args: Vec<Ast>,
    },
    /// `target[index]`
    Index(Box<Ast>, Box<Ast>),
    /// `%name`
    External(String),
    This,
    IndexVar,
    Total,
    /// Unary minus (`negate` true) or plus.
    Polarity {
        negate: bool,
        operand: Box<Ast>,
    },
    Binary {
        op: BinOp,
        left: Box<Ast>,
        right: Box<Ast>,
    },
    /// `x is T` / `x as T`
    TypeOp {
        is: bool,
        operand: Box<Ast>,
        type_name: TypeName,
    },
}

/// A type specifier: optional namespace (`FHIR`, `System`) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeName {
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum BinOp {
    Mul,
    Div,
    IntDiv,
    Mod,
    Add,
    Sub,
    Concat,
    Union,
    Lt,
    Gt,
    Le,
    Ge,
    Eq,
    Equiv,
    Ne,
    NotEquiv,
    In,
    Contains,
    And,
    Or,
    Xor,
    Implies,
}

const MAX_DEPTH: usize = 200;

/// Parses a whole expression.
pub fn parse(src: &str) -> Result<Ast, FhirPathError> {
    let tokens = tokenize(src)?;
    let mut p = Parser { tokens, pos: 0, depth: 0 };
    let ast = p.expression(0)?;
    match &p.peek().kind {
        Tok::End => Ok(ast),
        other => Err(p.error(format!("unexpected {} after a complete expression", describe(other)))),
    }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) | Tok::Delimited(s) => format!("identifier '{s}'"),
        Tok::Str(s) => format!("string '{s}'"),
        Tok::Number(n) => format!("number {n}"),
        Tok::Temporal(t) => format!("literal @{t}"),
        Tok::External(e) => format!("%{e}"),
        Tok::Special(s) => format!("${s}"),
        Tok::Punct(p) => format!("'{p}'"),
        Tok::End => "end of expression".into(),
    }
}

fn binary_op(t: &Tok) -> Option<(BinOp, u8)> {
    use BinOp::*;
    Some(match t {
        Tok::Punct("*") => (Mul, 10),
        Tok::Punct("/") => (Div, 10),
        Tok::Ident(s) if s == "div" => (IntDiv, 10),
        Tok::Ident(s) if s == "mod" => (Mod, 10),
        Tok::Punct("+") => (Add, 9),
        Tok::Punct("-") => (Sub, 9),
        Tok::Punct("&") => (Concat, 9),
        Tok::Punct("|") => (Union, 7),
        Tok::Punct("<") => (Lt, 6),
        Tok::Punct(">") => (Gt, 6),
        Tok::Punct("<=") => (Le, 6),
        Tok::Punct(">=") => (Ge, 6),
        Tok::Punct("=") => (Eq, 5),
        Tok::Punct("~") => (Equiv, 5),
        Tok::Punct("!=") => (Ne, 5),
        Tok::Punct("!~") => (NotEquiv, 5),
        Tok::Ident(s) if s == "in" => (In, 4),
        Tok::Ident(s) if s == "contains" => (Contains, 4),
        Tok::Ident(s) if s == "and" => (And, 3),
        Tok::Ident(s) if s == "or" => (Or, 2),
        Tok::Ident(s) if s == "xor" => (Xor, 2),
        Tok::Ident(s) if s == "implies" => (Implies, 1),
        _ => return None,
    })
}

/// Precedence of `is` / `as`: between `|` and `+`.
const TYPE_OP_PREC: u8 = 8;

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        self.pos += 1;
        t
    }

    fn error(&self, message: String) -> FhirPathError {
        FhirPathError::Syntax { offset: self.peek().offset, message }
    }

    fn expect(&mut self, p: &'static str) -> Result<(), FhirPathError> {
        if self.peek().kind == Tok::Punct(p) {
            self.next();
            Ok(())
        } else {
            Err(self.error(format!("expected '{p}', found {}", describe(&self.peek().kind))))
        }
    }

    fn expression(&mut self, min_prec: u8) -> Result<Ast, FhirPathError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(format!("expression nested deeper than {MAX_DEPTH} levels")));
        }
        let mut left = self.unary()?;
        loop {
            let kind = &self.peek().kind;
            if let Tok::Ident(s) = kind
                && (s == "is" || s == "as")
            {
                if TYPE_OP_PREC < min_prec {
                    break;
                }
                let is = s == "is";
                self.next();
                let type_name = self.type_name()?;
                left = Ast::TypeOp { is, operand: Box::new(left), type_name };
                continue;
            }
            let Some((op, prec)) = binary_op(kind) else { break };
            if prec < min_prec {
                break;
            }
            self.next();
            let right = self.expression(prec + 1)?;
            left = Ast::Binary { op, left: Box::new(left), right: Box::new(right) };
        }
        self.depth -= 1;
        Ok(left)
    }

    fn type_name(&mut self) -> Result<TypeName, FhirPathError> {
        let first = self.identifier()?;
        if self.peek().kind == Tok::Punct(".") {
            self.next();
            let name = self.identifier()?;
            return Ok(TypeName { namespace: Some(first), name });
        }
        Ok(TypeName { namespace: None, name: first })
    }

    fn identifier(&mut self) -> Result<String, FhirPathError> {
        match self.next().kind {
            Tok::Ident(s) | Tok::Delimited(s) => Ok(s),
            other => {
                self.pos -= 1;
                Err(self.error(format!("expected an identifier, found {}", describe(&other))))
            }
        }
    }

    fn unary(&mut self) -> Result<Ast, FhirPathError> {
        match self.peek().kind {
            Tok::Punct(p @ ("+" | "-")) => {
                self.next();
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(self.error(format!("expression nested deeper than {MAX_DEPTH} levels")));
                }
                let operand = self.unary()?;
                self.depth -= 1;
                Ok(Ast::Polarity { negate: p == "-", operand: Box::new(operand) })
            }
            _ => {
                let term = self.term()?;
                self.postfix(term)
            }
        }
    }

    fn postfix(&mut self, mut left: Ast) -> Result<Ast, FhirPathError> {
        loop {
            match self.peek().kind {
                Tok::Punct(".") => {
                    self.next();
                    let name = self.identifier()?;
                    if self.peek().kind == Tok::Punct("(") {
                        let args = self.arguments()?;
                        left = Ast::Function { target: Some(Box::new(left)), name, args };
                    } else {
                        left = Ast::Member(Box::new(left), name);
                    }
                }
                Tok::Punct("[") => {
                    self.next();
                    let index = self.expression(0)?;
                    self.expect("]")?;
                    left = Ast::Index(Box::new(left), Box::new(index));
                }
                _ => return Ok(left),
            }
        }
    }

    fn arguments(&mut self) -> Result<Vec<Ast>, FhirPathError> {
        self.expect("(")?;
        let mut args = Vec::new();
        if self.peek().kind == Tok::Punct(")") {
            self.next();
            return Ok(args);
        }
        loop {
            args.push(self.expression(0)?);
            match self.next().kind {
                Tok::Punct(",") => continue,
                Tok::Punct(")") => return Ok(args),
                other => {
                    self.pos -= 1;
                    return Err(self.error(format!("expected ',' or ')' in arguments, found {}", describe(&other))));
                }
            }
        }
    }

    fn term(&mut self) -> Result<Ast, FhirPathError> {
        let token = self.next();
        Ok(match token.kind {
            Tok::Punct("(") => {
                let inner = self.expression(0)?;
                self.expect(")")?;
                inner
            }
            Tok::Punct("{") => {
                self.expect("}")?;
                Ast::Empty
            }
            Tok::Str(s) => Ast::String(s),
            Tok::Number(n) => self.number(&n, token.offset)?,
            Tok::Temporal(t) => Ast::Temporal(
                Temporal::parse_literal(&t)
                    .ok_or(FhirPathError::Syntax { offset: token.offset, message: format!("invalid literal @{t}") })?,
            ),
            Tok::External(name) => Ast::External(name),
            Tok::Special(s) => match s.as_str() {
                "this" => Ast::This,
                "index" => Ast::IndexVar,
                "total" => Ast::Total,
                _ => return Err(FhirPathError::Syntax { offset: token.offset, message: format!("unknown ${s}") }),
            },
            Tok::Ident(s) if s == "true" => Ast::Boolean(true),
            Tok::Ident(s) if s == "false" => Ast::Boolean(false),
            Tok::Ident(name) | Tok::Delimited(name) => {
                if self.peek().kind == Tok::Punct("(") {
                    let args = self.arguments()?;
                    Ast::Function { target: None, name, args }
                } else {
                    Ast::Identifier(name)
                }
            }
            other => {
                self.pos -= 1;
                return Err(self.error(format!("expected an expression, found {}", describe(&other))));
            }
        })
    }

    /// A number, or a quantity when a unit follows.
    fn number(&mut self, text: &str, offset: usize) -> Result<Ast, FhirPathError> {
        let unit = match &self.peek().kind {
            Tok::Str(u) => Some(u.clone()),
            Tok::Ident(u) if Quantity::is_calendar_unit(u) => Some(u.clone()),
            _ => None,
        };
        let bad = || FhirPathError::Syntax { offset, message: format!("invalid number {text}") };
        if let Some(unit) = unit {
            self.next();
            let value: Decimal = text.parse().map_err(|_| bad())?;
            return Ok(Ast::Quantity(Quantity::new(value, unit)));
        }
        if text.contains('.') {
            Ok(Ast::Decimal(text.parse().map_err(|_| bad())?))
        } else {
            Ok(Ast::Integer(text.parse().map_err(|_| bad())?))
        }
    }
}
