//! FHIR search requests: query parameters parsed into a typed intermediate form
//! ([`SearchRequest`]) that the planner (`fhirlake-query`) turns into a DataFusion plan
//! over the `_sp_*` index columns.
//!
//! Owns: splitting and unescaping values (`,` = OR, repeated parameters = AND, `\,` `\$`
//! `\|` `\\`), modifiers, prefixes, the value syntax of every parameter type (one module
//! each), chains and `_has`, and the result parameters. Everything a user can get wrong
//! here is a [`SearchError`] that says what to fix (a 400).
//!
//! Must not: know about Arrow, DataFusion or storage.

mod composite;
mod date;
mod number;
mod reference;
mod string;
mod token;
mod uri;

use std::sync::Arc;

use crate::Model;
use crate::search_index::{ParamKind, SearchIndex};

pub use date::DateRange;

/// Why a search request cannot be run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("search parameter '{param}': {message}")]
pub struct SearchError {
    /// The parameter as written (`birthdate`, `code:text`).
    pub param: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

fn err(param: &str, message: impl Into<String>) -> SearchError {
    SearchError { param: param.to_string(), message: message.into() }
}

/// Comparison prefixes of number, date and quantity values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    /// starts after
    Sa,
    /// ends before
    Eb,
    /// approximately
    Ap,
}

impl Prefix {
    /// Splits a prefix off `value` (default `eq`).
    pub fn split(value: &str) -> (Prefix, &str) {
        let p = match value.get(..2) {
            Some("eq") => Prefix::Eq,
            Some("ne") => Prefix::Ne,
            Some("gt") => Prefix::Gt,
            Some("lt") => Prefix::Lt,
            Some("ge") => Prefix::Ge,
            Some("le") => Prefix::Le,
            Some("sa") => Prefix::Sa,
            Some("eb") => Prefix::Eb,
            Some("ap") => Prefix::Ap,
            _ => return (Prefix::Eq, value),
        };
        (p, &value[2..])
    }
}

/// How a string parameter matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMatch {
    /// Default: the normalized value starts with the normalized search text.
    Prefix,
    /// `:exact`: equal, case and accents included.
    Exact,
    /// `:contains`: the normalized value contains the normalized search text.
    Contains,
}

/// How a uri parameter matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriMatch {
    Exact,
    /// `:above`: the stored uri is a prefix of the search uri.
    Above,
    /// `:below`: the search uri is a prefix of the stored uri.
    Below,
}

/// One value of a parameter: a condition on one index value.
#[derive(Debug, Clone, PartialEq)]
pub enum Predicate {
    /// `system|code`: `system` `None` = any system; `Some(None)` = no system (`|code`);
    /// `code` `None` = any code (`system|`).
    Token { system: Option<Option<String>>, code: Option<String> },
    /// `:text`: the normalized text or display starts with this (normalized) text.
    TokenText(String),
    /// `:of-type` on identifiers: type system, type code, identifier value.
    OfType { system: String, code: String, value: String },
    /// A string; `value` is normalized unless the match is exact.
    String { value: String, mode: StringMatch },
    /// A date range (the value's precision) with a prefix.
    Date { prefix: Prefix, range: DateRange },
    /// A number with its implicit precision range `[low, high)`.
    Number { prefix: Prefix, value: String, low: String, high: String },
    /// A quantity: number part as for numbers, optional system and code. `canonical`
    /// is `(low, high, unit)`: the precision range in canonical UCUM units, when the unit
    /// is known (`5.4|http://unitsofmeasure.org|mg/dL` -> 53.5..54.5 `g.m-3`).
    Quantity {
        prefix: Prefix,
        value: String,
        low: String,
        high: String,
        system: Option<String>,
        code: Option<String>,
        canonical: Option<(String, String, String)>,
    },
    /// A reference: `type` (from `Type/id`, or a `:Type` modifier), `id`, or an absolute
    /// `url`.
    Reference { target_type: Option<String>, id: Option<String>, url: Option<String> },
    /// `:identifier` on a reference.
    ReferenceIdentifier { system: Option<Option<String>>, value: Option<String> },
    /// A uri.
    Uri { value: String, mode: UriMatch },
    /// A composite value: one predicate per component.
    Composite(Vec<Predicate>),
}

/// One parameter of the request: all its values are ORed; parameters are ANDed.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    /// The parameter code (`birthdate`).
    pub code: String,
    /// Its index column (`_sp_birthdate`).
    pub column: String,
    pub kind: ParamKind,
    /// `:not` (tokens): no value matches.
    pub negated: bool,
    /// `:missing=true|false`: instead of values.
    pub missing: Option<bool>,
    /// ORed values.
    pub values: Vec<Predicate>,
    /// A chain: the clause applies to the resources this reference points to.
    pub chain: Option<Box<Chain>>,
}

/// `subject:Patient.name=x`: resources whose `subject` references a Patient matching
/// `name=x`.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    /// The target type.
    pub target_type: String,
    /// The condition on the target.
    pub clause: Clause,
}

/// `_has:Observation:patient:code=x`: resources referenced by an Observation's `patient`
/// that matches `code=x`.
#[derive(Debug, Clone, PartialEq)]
pub struct Has {
    pub source_type: String,
    /// The reference parameter of the source type pointing here.
    pub reference: String,
    pub reference_column: String,
    /// The condition on the source (itself possibly a `_has`).
    pub condition: HasCondition,
}

/// What a `_has` source must satisfy.
#[derive(Debug, Clone, PartialEq)]
pub enum HasCondition {
    Clause(Clause),
    Has(Box<Has>),
}

/// `_summary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    True,
    Count,
    Data,
    Text,
    False,
}

/// `_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    None,
    Estimate,
    Accurate,
}

/// `_include` / `_revinclude`: `Source:param[:Target]`, or `*`.
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    pub source_type: String,
    /// `None` for `*` (every reference parameter).
    pub param: Option<String>,
    pub target_type: Option<String>,
    pub iterate: bool,
}

/// One `_sort` key.
#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    pub code: String,
    pub column: String,
    pub kind: ParamKind,
    pub descending: bool,
}

/// A parsed search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    pub resource_type: String,
    /// ANDed conditions.
    pub clauses: Vec<Clause>,
    /// ANDed reverse chains.
    pub has: Vec<Has>,
    pub count: Option<usize>,
    pub sort: Vec<SortKey>,
    pub summary: Option<Summary>,
    pub total: Option<Total>,
    pub elements: Vec<String>,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    /// Parameters that were not understood, with why: reported in an `outcome` entry,
    /// or a 400 under `Prefer: handling=strict`.
    pub ignored: Vec<SearchError>,
}

/// Splits a parameter value on unescaped `sep`, unescaping `\,` `\$` `\|` `\\`. Escapes of
/// other separators are kept for the next split.
pub fn split_escaped(value: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n) if n == sep => out.last_mut().expect("non-empty").push(n),
                Some(n) => {
                    let last = out.last_mut().expect("non-empty");
                    last.push('\\');
                    last.push(n);
                }
                None => out.last_mut().expect("non-empty").push('\\'),
            }
        } else if c == sep {
            out.push(String::new());
        } else {
            out.last_mut().expect("non-empty").push(c);
        }
    }
    out
}

/// Removes the remaining escapes (`\x` -> `x`).
pub fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

const RESULT_PARAMS: [&str; 13] = [
    "_count",
    "_sort",
    "_summary",
    "_total",
    "_elements",
    "_include",
    "_revinclude",
    "_format",
    "_pretty",
    "_contained",
    "_containedType",
    "_explain",
    "_page",
];

/// Parses a search of `resource_type` from decoded `(name, value)` query pairs.
pub fn parse(
    model: &'static Model,
    resource_type: &str,
    pairs: &[(String, String)],
) -> Result<SearchRequest, SearchError> {
    if !model.is_resource_type(resource_type) {
        return Err(err("(type)", format!("'{resource_type}' is not an R4 resource type")));
    }
    let mut req = SearchRequest {
        resource_type: resource_type.to_string(),
        clauses: Vec::new(),
        has: Vec::new(),
        count: None,
        sort: Vec::new(),
        summary: None,
        total: None,
        elements: Vec::new(),
        includes: Vec::new(),
        revincludes: Vec::new(),
        ignored: Vec::new(),
    };
    let index = SearchIndex::for_type(model, resource_type);
    for (name, value) in pairs {
        let base = name.split(':').next().unwrap_or(name);
        if RESULT_PARAMS.contains(&base) {
            result_param(model, &mut req, name, value)?;
            continue;
        }
        if let Some(rest) = name.strip_prefix("_has:") {
            req.has.push(parse_has(model, resource_type, name, rest, value)?);
            continue;
        }
        match parse_clause(model, &index, name, value) {
            Ok(c) => req.clauses.push(c),
            Err(ClauseError::Unknown(e)) => req.ignored.push(e),
            Err(ClauseError::Invalid(e)) => return Err(e),
        }
    }
    Ok(req)
}

enum ClauseError {
    /// Not a parameter of this type: ignorable (reported in an `outcome` entry).
    Unknown(SearchError),
    /// A known parameter with a bad value or a modifier fhirlake does not support: always
    /// a 400 (ignoring `code:in=...` would answer with a superset, silently).
    Invalid(SearchError),
}

fn parse_clause(
    model: &'static Model,
    index: &Arc<SearchIndex>,
    name: &str,
    value: &str,
) -> Result<Clause, ClauseError> {
    // `subject:Patient.name` / `subject.name`: a chain.
    let (head, chain_rest) = match name.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (name, None),
    };
    let (code, modifier) = match head.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (head, None),
    };
    let Some(param) = index.param(code) else {
        return Err(ClauseError::Unknown(err(name, format!("not a search parameter of {}", index.resource_type))));
    };
    let mut clause = Clause {
        code: code.to_string(),
        column: param.column.clone(),
        kind: param.kind.clone(),
        negated: false,
        missing: None,
        values: Vec::new(),
        chain: None,
    };
    if let Some(rest) = chain_rest {
        if param.kind != ParamKind::Reference {
            return Err(ClauseError::Invalid(err(name, "only reference parameters can be chained")));
        }
        let target = match modifier {
            Some(t) if model.is_resource_type(t) => t.to_string(),
            Some(t) => return Err(ClauseError::Invalid(err(name, format!("'{t}' is not a resource type")))),
            None => {
                let targets =
                    model.search_parameter(&index.resource_type, code).map(|p| p.target.clone()).unwrap_or_default();
                // Only the targets that have the chained parameter can match.
                let inner_code = rest.split(['.', ':']).next().unwrap_or(rest);
                let having: Vec<String> = targets
                    .iter()
                    .filter(|t| SearchIndex::for_type(model, t).param(inner_code).is_some())
                    .cloned()
                    .collect();
                match having.as_slice() {
                    [one] => one.clone(),
                    _ => {
                        return Err(ClauseError::Invalid(err(
                            name,
                            format!(
                                "'{code}' can point to several types ({}): name one, as {code}:Type.{rest}",
                                targets.join(", ")
                            ),
                        )));
                    }
                }
            }
        };
        let target_index = SearchIndex::for_type(model, &target);
        let inner = parse_clause(model, &target_index, rest, value).map_err(|e| match e {
            ClauseError::Unknown(e) | ClauseError::Invalid(e) => ClauseError::Invalid(err(name, e.to_string())),
        })?;
        clause.chain = Some(Box::new(Chain { target_type: target, clause: inner }));
        return Ok(clause);
    }
    let invalid = |m: String| ClauseError::Invalid(err(name, m));
    if modifier == Some("missing") {
        clause.missing = Some(match value {
            "true" => true,
            "false" => false,
            _ => return Err(invalid(format!("':missing' takes true or false, not '{value}'"))),
        });
        return Ok(clause);
    }
    for v in split_escaped(value, ',') {
        if v.is_empty() {
            return Err(invalid("an empty value: remove the parameter or give a value".into()));
        }
        let p = match &param.kind {
            ParamKind::Token => match modifier {
                None => token::parse(&v),
                Some("not") => {
                    clause.negated = true;
                    token::parse(&v)
                }
                Some("text") => Ok(Predicate::TokenText(crate::search_index::normalize_string(&unescape(&v)))),
                Some("of-type") => token::parse_of_type(&v),
                Some(m) => {
                    return Err(ClauseError::Invalid(err(name, format!("modifier ':{m}' is not supported on tokens"))));
                }
            },
            ParamKind::String => match modifier {
                None => Ok(string::parse(&v, StringMatch::Prefix)),
                Some("exact") => Ok(string::parse(&v, StringMatch::Exact)),
                Some("contains") => Ok(string::parse(&v, StringMatch::Contains)),
                Some(m) => {
                    return Err(ClauseError::Invalid(err(
                        name,
                        format!("modifier ':{m}' is not supported on strings"),
                    )));
                }
            },
            ParamKind::Date => match modifier {
                None => date::parse(&v),
                Some(m) => {
                    return Err(ClauseError::Invalid(err(name, format!("modifier ':{m}' is not supported on dates"))));
                }
            },
            ParamKind::Number => match modifier {
                None => number::parse(&v),
                Some(m) => {
                    return Err(ClauseError::Invalid(err(
                        name,
                        format!("modifier ':{m}' is not supported on numbers"),
                    )));
                }
            },
            ParamKind::Quantity => match modifier {
                None => number::parse_quantity(&v),
                Some(m) => {
                    return Err(ClauseError::Invalid(err(
                        name,
                        format!("modifier ':{m}' is not supported on quantities"),
                    )));
                }
            },
            ParamKind::Reference => match modifier {
                None => reference::parse(model, &v, None),
                Some("identifier") => token::parse(&v).map(|t| match t {
                    Predicate::Token { system, code } => Predicate::ReferenceIdentifier { system, value: code },
                    other => other,
                }),
                Some(t) if model.is_resource_type(t) => reference::parse(model, &v, Some(t)),
                Some(m) => {
                    return Err(ClauseError::Invalid(err(
                        name,
                        format!("modifier ':{m}' is not supported on references"),
                    )));
                }
            },
            ParamKind::Uri => match modifier {
                None => Ok(Predicate::Uri { value: unescape(&v), mode: UriMatch::Exact }),
                Some("above") => Ok(Predicate::Uri { value: unescape(&v), mode: UriMatch::Above }),
                Some("below") => Ok(Predicate::Uri { value: unescape(&v), mode: UriMatch::Below }),
                Some(m) => {
                    return Err(ClauseError::Invalid(err(name, format!("modifier ':{m}' is not supported on uris"))));
                }
            },
            ParamKind::Composite(components) => match modifier {
                None => composite::parse(model, components, &v),
                Some(m) => {
                    return Err(ClauseError::Invalid(err(
                        name,
                        format!("modifier ':{m}' is not supported on composites"),
                    )));
                }
            },
        };
        clause.values.push(p.map_err(invalid)?);
    }
    Ok(clause)
}

fn parse_has(model: &'static Model, here: &str, name: &str, rest: &str, value: &str) -> Result<Has, SearchError> {
    // rest = Source:reference:param  (param may itself start with `_has:`)
    let mut parts = rest.splitn(3, ':');
    let (Some(source), Some(reference), Some(param)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(err(name, "write _has:SourceType:referenceParam:param=value"));
    };
    if !model.is_resource_type(source) {
        return Err(err(name, format!("'{source}' is not a resource type")));
    }
    let source_index = SearchIndex::for_type(model, source);
    let Some(r) = source_index.param(reference).filter(|p| p.kind == ParamKind::Reference) else {
        return Err(err(name, format!("'{reference}' is not a reference parameter of {source}")));
    };
    let targets = model.search_parameter(source, reference).map(|p| p.target.clone()).unwrap_or_default();
    if !targets.is_empty() && !targets.iter().any(|t| t == here) {
        return Err(err(name, format!("{source}.{reference} never points to {here}")));
    }
    let condition = if let Some(inner) = param.strip_prefix("_has:") {
        HasCondition::Has(Box::new(parse_has(model, source, name, inner, value)?))
    } else {
        match parse_clause(model, &source_index, param, value) {
            Ok(c) => HasCondition::Clause(c),
            Err(ClauseError::Unknown(e) | ClauseError::Invalid(e)) => return Err(err(name, e.to_string())),
        }
    };
    Ok(Has {
        source_type: source.to_string(),
        reference: reference.to_string(),
        reference_column: r.column.clone(),
        condition,
    })
}

fn result_param(model: &'static Model, req: &mut SearchRequest, name: &str, value: &str) -> Result<(), SearchError> {
    let base = name.split(':').next().unwrap_or(name);
    match base {
        "_count" => {
            let n: usize = value.parse().map_err(|_| err(name, format!("'{value}' is not a non-negative integer")))?;
            req.count = Some(n);
        }
        "_summary" => {
            req.summary = Some(match value {
                "true" => Summary::True,
                "count" => Summary::Count,
                "data" => Summary::Data,
                "text" => Summary::Text,
                "false" => Summary::False,
                _ => return Err(err(name, "use true, false, count, data or text")),
            })
        }
        "_total" => {
            req.total = Some(match value {
                "none" => Total::None,
                "estimate" => Total::Estimate,
                "accurate" => Total::Accurate,
                _ => return Err(err(name, "use none, estimate or accurate")),
            })
        }
        "_elements" => {
            req.elements.extend(value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string))
        }
        "_sort" => {
            let index = SearchIndex::for_type(model, &req.resource_type);
            for key in value.split(',').filter(|k| !k.is_empty()) {
                let (desc, code) = match key.strip_prefix('-') {
                    Some(c) => (true, c),
                    None => (false, key),
                };
                let p = index.param(code).ok_or_else(|| {
                    err(name, format!("cannot sort on '{code}': not a parameter of {}", req.resource_type))
                })?;
                if matches!(p.kind, ParamKind::Composite(_)) {
                    return Err(err(name, format!("cannot sort on the composite '{code}'")));
                }
                req.sort.push(SortKey {
                    code: code.to_string(),
                    column: p.column.clone(),
                    kind: p.kind.clone(),
                    descending: desc,
                });
            }
        }
        "_include" | "_revinclude" => {
            let iterate = name.ends_with(":iterate") || name.ends_with(":recurse");
            let inc = if value == "*" {
                Include { source_type: req.resource_type.clone(), param: None, target_type: None, iterate }
            } else {
                let parts: Vec<&str> = value.split(':').collect();
                let (source, param, target) = match parts.as_slice() {
                    [s, p] => (*s, *p, None),
                    [s, p, t] => (*s, *p, Some(t.to_string())),
                    _ => return Err(err(name, "write Source:param or Source:param:Target")),
                };
                if !model.is_resource_type(source) {
                    return Err(err(name, format!("'{source}' is not a resource type")));
                }
                let param = if param == "*" {
                    None
                } else {
                    let ix = SearchIndex::for_type(model, source);
                    if ix.param(param).map(|p| &p.kind) != Some(&ParamKind::Reference) {
                        return Err(err(name, format!("'{param}' is not a reference parameter of {source}")));
                    }
                    Some(param.to_string())
                };
                if let Some(t) = &target
                    && !model.is_resource_type(t)
                {
                    return Err(err(name, format!("'{t}' is not a resource type")));
                }
                Include { source_type: source.to_string(), param, target_type: target, iterate }
            };
            if base == "_include" { req.includes.push(inc) } else { req.revincludes.push(inc) }
        }
        _ => {} // _format, _pretty, _explain, _page...: handled by the API layer
    }
    Ok(())
}

/// The served JSON of a match reduced by `_summary` (`true`, `text`, `data`) or
/// `_elements`, with the `SUBSETTED` tag FHIR requires; `None` when nothing is removed.
pub fn subset(model: &Model, raw: &str, summary: Option<Summary>, elements: &[String]) -> Option<String> {
    use crate::json::{Json, ParseLimits};
    if elements.is_empty() && !matches!(summary, Some(Summary::True | Summary::Text | Summary::Data)) {
        return None;
    }
    let Ok(Json::Object(members)) = Json::parse(raw.as_bytes(), ParseLimits::STORED) else {
        return None;
    };
    let rt = members.iter().find(|(k, _)| k == "resourceType").and_then(|(_, v)| v.as_str()).unwrap_or("").to_string();
    let structure = model.structure(&rt);
    let element_of = |k: &str| {
        let k = k.strip_prefix('_').unwrap_or(k);
        structure.and_then(|s| s.by_json_name.get(k).map(|&(i, _)| &s.elements[i]))
    };
    let keep = |k: &str| -> bool {
        let base = k.strip_prefix('_').unwrap_or(k);
        if matches!(base, "resourceType" | "id" | "meta") {
            return true;
        }
        let mandatory = element_of(k).is_some_and(|e| e.min > 0);
        match summary {
            Some(Summary::True) => mandatory || element_of(k).is_some_and(|e| e.summary),
            Some(Summary::Text) => mandatory || base == "text",
            Some(Summary::Data) => base != "text",
            _ => mandatory || elements.iter().any(|e| e == base || element_of(k).is_some_and(|el| el.name == *e)),
        }
    };
    let mut kept: Vec<(String, Json)> = members.iter().filter(|(k, _)| keep(k)).cloned().collect();
    if kept.len() == members.len() {
        return None;
    }
    // meta.tag += SUBSETTED
    let tag = Json::Object(vec![
        ("system".into(), Json::String("http://terminology.hl7.org/CodeSystem/v3-ObservationValue".into())),
        ("code".into(), Json::String("SUBSETTED".into())),
    ]);
    match kept.iter_mut().find(|(k, _)| k == "meta") {
        Some((_, meta)) => match meta.get_mut("tag") {
            Some(Json::Array(tags)) => tags.push(tag),
            _ => meta.set("tag", Json::Array(vec![tag])),
        },
        None => kept.push(("meta".into(), Json::Object(vec![("tag".into(), Json::Array(vec![tag]))]))),
    }
    Some(Json::Object(kept).to_json_string())
}

#[cfg(test)]
mod tests;
