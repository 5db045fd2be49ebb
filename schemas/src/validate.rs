//! Validation of a resource against the R4 StructureDefinitions.
//!
//! Owns: the checks a resource must pass before it is stored — known resource type, no
//! unknown elements, JSON kinds and lexical formats of primitives, cardinality (arrays
//! exactly where the element repeats, required elements present), one variant per choice
//! element, codes inside *required* bindings to enumerable core value sets, string sizes.
//! Every problem is reported with the FHIRPath location of the offending element.
//! Must not: change the resource or do I/O.

use std::fmt::Write as _;

use crate::datetime::{self, Temporal};
use crate::json::Json;
use crate::model::{Element, Model, Primitive, Structure, TypeRef};

/// Kind of problem, mapped to OperationOutcome `issue.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueCode {
    /// The resource is structurally wrong (unknown element, wrong JSON kind, cardinality).
    Structure,
    /// A primitive value has the wrong format.
    Value,
    /// A required element is missing.
    Required,
    /// A code is outside its required value set.
    CodeInvalid,
    /// A value exceeds a size limit.
    TooLong,
    /// Anything else that makes the resource invalid.
    Invalid,
}

impl IssueCode {
    /// The FHIR `IssueType` code.
    pub fn as_fhir_code(self) -> &'static str {
        match self {
            IssueCode::Structure => "structure",
            IssueCode::Value => "value",
            IssueCode::Required => "required",
            IssueCode::CodeInvalid => "code-invalid",
            IssueCode::TooLong => "too-long",
            IssueCode::Invalid => "invalid",
        }
    }
}

/// One validation problem.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    /// Kind of problem.
    pub code: IssueCode,
    /// FHIRPath of the element, e.g. `Patient.name[0].given[1]`.
    pub location: String,
    /// Human-readable description.
    pub message: String,
}

/// Limits applied by the validator.
#[derive(Debug, Clone, Copy)]
pub struct ValidationOptions {
    /// Maximum size of a `string`/`markdown`/`uri`... value in bytes (FHIR: 1 MB);
    /// `base64Binary` is exempt (bounded by the request size).
    pub max_string_bytes: usize,
    /// Stop after this many issues.
    pub max_issues: usize,
}

impl Default for ValidationOptions {
    fn default() -> Self {
        Self { max_string_bytes: 1024 * 1024, max_issues: 50 }
    }
}

/// Validates `resource`; returns its resource type, or every issue found.
pub fn validate_resource(model: &Model, resource: &Json, options: &ValidationOptions) -> Result<String, Vec<Issue>> {
    let mut v = Validator { model, options, issues: Vec::new() };
    let rt = v.resource(resource, None);
    // A ViewDefinition must also be a view that can run (FHIRPath, columns, constants).
    if rt.as_deref() == Some("ViewDefinition")
        && v.issues.is_empty()
        && let Err(e) = crate::sof::View::parse(model, resource)
    {
        let location =
            if e.location.is_empty() { "ViewDefinition".to_string() } else { format!("ViewDefinition.{}", e.location) };
        v.issue(IssueCode::Invalid, &location, e.message);
    }
    match (rt, v.issues.is_empty()) {
        (Some(rt), true) => Ok(rt),
        _ => Err(v.issues),
    }
}

struct Validator<'a> {
    model: &'a Model,
    options: &'a ValidationOptions,
    issues: Vec<Issue>,
}

impl Validator<'_> {
    fn issue(&mut self, code: IssueCode, location: &str, message: String) {
        if self.issues.len() < self.options.max_issues {
            self.issues.push(Issue { code, location: location.to_string(), message });
        }
    }

    /// Validates a resource object; `at` is the location of a nested resource.
    fn resource(&mut self, value: &Json, at: Option<&str>) -> Option<String> {
        let loc = at.unwrap_or("");
        let Json::Object(_) = value else {
            self.issue(IssueCode::Structure, loc, format!("a resource must be a JSON object, found {}", value.kind()));
            return None;
        };
        let rt = match value.get("resourceType") {
            Some(Json::String(rt)) if self.model.is_resource_type(rt) => rt.clone(),
            Some(Json::String(rt)) => {
                self.issue(IssueCode::Invalid, loc, format!("unknown resourceType '{rt}'"));
                return None;
            }
            _ => {
                self.issue(IssueCode::Required, loc, "resourceType is missing or not a string".into());
                return None;
            }
        };
        let structure = self.model.structure(&rt)?.clone();
        let path = match at {
            Some(a) => format!("{a}.ofType({rt})"),
            None => rt.clone(),
        };
        self.object(&structure, value, &path, true);
        Some(rt)
    }

    fn object(&mut self, s: &Structure, value: &Json, path: &str, is_resource: bool) {
        let Some(members) = value.as_object() else {
            self.issue(IssueCode::Structure, path, format!("expected a JSON object, found {}", value.kind()));
            return;
        };
        let mut chosen: Vec<(usize, usize)> = Vec::new();
        let mut buf = String::with_capacity(path.len() + 32);
        buf.push_str(path);
        let base = buf.len();
        for (key, v) in members {
            if is_resource && key == "resourceType" {
                continue;
            }
            if let Some(base) = key.strip_prefix('_') {
                self.primitive_extension(s, base, v, path);
                continue;
            }
            let Some(&(idx, var)) = s.by_json_name.get(key) else {
                self.issue(
                    IssueCode::Structure,
                    &format!("{path}.{key}"),
                    format!("unknown element '{key}' in {}", s.key),
                );
                continue;
            };
            let el = &s.elements[idx];
            if let Some((_, other)) = chosen.iter().find(|(i, vv)| *i == idx && *vv != var) {
                let other_name = &el.variants[*other].0;
                self.issue(
                    IssueCode::Structure,
                    &format!("{path}.{key}"),
                    format!("only one of '{other_name}' and '{key}' may be given ({}[x] is a choice)", el.name),
                );
            }
            chosen.push((idx, var));
            buf.truncate(base);
            buf.push('.');
            buf.push_str(key);
            self.element(el, var, v, &buf);
        }
        for (idx, el) in s.elements.iter().enumerate() {
            if el.min == 0 || chosen.iter().any(|(i, _)| *i == idx) {
                continue;
            }
            let present = el.variants.iter().any(|(n, _)| members.iter().any(|(k, _)| k.strip_prefix('_') == Some(n)));
            if !present {
                self.issue(
                    IssueCode::Required,
                    &format!("{path}.{}", el.name),
                    format!("required element '{}' is missing", el.name),
                );
            }
        }
    }

    fn element(&mut self, el: &Element, var: usize, v: &Json, path: &str) {
        let ty = &el.variants[var].1;
        match (el.many, v) {
            (true, Json::Array(items)) => {
                if items.is_empty() {
                    self.issue(IssueCode::Structure, path, "arrays must not be empty; omit the element instead".into());
                }
                let mut buf = String::with_capacity(path.len() + 8);
                for (i, item) in items.iter().enumerate() {
                    // null holds the place of a value that only has a primitive extension.
                    if matches!(item, Json::Null) && matches!(ty, TypeRef::Primitive(_)) {
                        continue;
                    }
                    buf.clear();
                    buf.push_str(path);
                    let _ = write!(buf, "[{i}]");
                    self.value(el, ty, item, &buf);
                }
            }
            (true, _) => self.issue(
                IssueCode::Structure,
                path,
                format!("'{}' repeats (max *) and must be a JSON array", el.name),
            ),
            (false, Json::Array(_)) => self.issue(
                IssueCode::Structure,
                path,
                format!("'{}' has max cardinality 1 and must not be an array", el.name),
            ),
            (false, _) => self.value(el, ty, v, path),
        }
    }

    fn value(&mut self, el: &Element, ty: &TypeRef, v: &Json, path: &str) {
        match ty {
            TypeRef::Primitive(p) => self.primitive(el, *p, v, path),
            TypeRef::Struct(key) => {
                if let Some(s) = self.model.structure(key).cloned() {
                    self.object(&s, v, path, false);
                }
            }
            TypeRef::Extension => {
                if let Some(s) = self.model.structure("Extension").cloned() {
                    if v.as_object().is_some() && !matches!(v.get("url"), Some(Json::String(_))) {
                        self.issue(IssueCode::Required, path, "an extension must have a 'url'".into());
                    }
                    self.object(&s, v, path, false);
                }
            }
            TypeRef::Resource => {
                self.resource(v, Some(path));
            }
        }
    }

    fn primitive(&mut self, el: &Element, p: Primitive, v: &Json, path: &str) {
        let problem: Option<String> = match (p, v) {
            (Primitive::Boolean, Json::Bool(_)) => None,
            (Primitive::Boolean, _) => Some(format!("expected a JSON boolean, found {}", v.kind())),
            (Primitive::Integer | Primitive::PositiveInt | Primitive::UnsignedInt, Json::Number(n)) => {
                check_integer(p, n)
            }
            (Primitive::Decimal, Json::Number(_)) => None,
            (Primitive::Integer | Primitive::PositiveInt | Primitive::UnsignedInt | Primitive::Decimal, _) => {
                Some(format!("expected a JSON number, found {}", v.kind()))
            }
            (_, Json::String(s)) => {
                if s.len() > self.options.max_string_bytes && p != Primitive::Base64Binary {
                    self.issue(
                        IssueCode::TooLong,
                        path,
                        format!(
                            "value is {} bytes, over the limit of {} bytes",
                            s.len(),
                            self.options.max_string_bytes
                        ),
                    );
                    return;
                }
                check_string(p, s)
            }
            (_, _) => Some(format!("expected a JSON string, found {}", v.kind())),
        };
        if let Some(message) = problem {
            self.issue(IssueCode::Value, path, format!("invalid {}: {message}", primitive_name(p)));
            return;
        }
        if let (Some(vs), Json::String(code)) = (&el.required_binding, v)
            && let Some(codes) = self.model.value_set_codes(vs)
            && !codes.contains(code)
        {
            self.issue(IssueCode::CodeInvalid, path, format!("'{code}' is not in the required value set {vs}"));
        }
    }

    fn primitive_extension(&mut self, s: &Structure, base: &str, v: &Json, path: &str) {
        let loc = format!("{path}._{base}");
        let is_primitive = s
            .by_json_name
            .get(base)
            .is_some_and(|&(i, var)| matches!(s.elements[i].variants[var].1, TypeRef::Primitive(_)));
        if !is_primitive {
            self.issue(
                IssueCode::Structure,
                &loc,
                format!("'_{base}' does not extend a primitive element of {}", s.key),
            );
            return;
        }
        // A primitive's `_x` holds Element's `id` and `extension`; Element is abstract and not
        // modelled, so Extension (which has the same `extension` element) supplies its rule.
        let Some(ext) = self.model.structure("Extension").cloned() else {
            return;
        };
        let check = |this: &mut Self, item: &Json, at: &str| match item {
            Json::Object(m) => {
                for (k, val) in m {
                    match k.as_str() {
                        "id" if matches!(val, Json::String(_)) => {}
                        "extension" => {
                            if let Some((idx, _)) = ext.by_json_name.get("extension").copied() {
                                this.element(&ext.elements[idx], 0, val, &format!("{at}.extension"));
                            }
                        }
                        other => this.issue(
                            IssueCode::Structure,
                            &format!("{at}.{other}"),
                            format!("unknown element '{other}' in a primitive extension"),
                        ),
                    }
                }
            }
            Json::Null => {}
            other => this.issue(
                IssueCode::Structure,
                at,
                format!("a primitive extension must be an object, found {}", other.kind()),
            ),
        };
        match v {
            Json::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    check(self, item, &format!("{loc}[{i}]"));
                }
            }
            other => check(self, other, &loc),
        }
    }
}

/// Parses `bytes` as JSON within `limits` and validates it as a resource. JSON errors
/// become issues at location `""`.
pub fn parse_and_validate(
    model: &Model,
    bytes: &[u8],
    limits: crate::json::ParseLimits,
    options: &ValidationOptions,
) -> Result<(Json, String), Vec<Issue>> {
    let json = Json::parse(bytes, limits).map_err(|e| vec![json_issue(&e)])?;
    let rt = validate_resource(model, &json, options)?;
    Ok((json, rt))
}

/// The issue for a JSON syntax or limit error.
pub fn json_issue(e: &crate::json::JsonError) -> Issue {
    let code = match e {
        crate::json::JsonError::StringTooLong { .. } => IssueCode::TooLong,
        crate::json::JsonError::TooDeep { .. } => IssueCode::TooLong,
        _ => IssueCode::Structure,
    };
    Issue { code, location: String::new(), message: e.to_string() }
}

/// An OperationOutcome (as JSON text) listing `issues` with severity `error`.
pub fn operation_outcome(issues: &[Issue]) -> Json {
    let items = issues
        .iter()
        .map(|i| {
            let mut m = vec![
                ("severity".to_string(), Json::String("error".into())),
                ("code".to_string(), Json::String(i.code.as_fhir_code().into())),
                ("diagnostics".to_string(), Json::String(i.message.clone())),
            ];
            if !i.location.is_empty() {
                m.push(("expression".to_string(), Json::Array(vec![Json::String(i.location.clone())])));
            }
            Json::Object(m)
        })
        .collect();
    Json::Object(vec![
        ("resourceType".to_string(), Json::String("OperationOutcome".into())),
        ("issue".to_string(), Json::Array(items)),
    ])
}

fn check_integer(p: Primitive, n: &str) -> Option<String> {
    if n.contains(['.', 'e', 'E']) {
        return Some(format!("'{n}' is not an integer"));
    }
    let Ok(value) = n.parse::<i32>() else {
        return Some(format!("'{n}' is outside the 32-bit integer range"));
    };
    match p {
        Primitive::PositiveInt if value < 1 => Some(format!("'{n}' must be 1 or more")),
        Primitive::UnsignedInt if value < 0 => Some(format!("'{n}' must be 0 or more")),
        _ => None,
    }
}

/// True when `s` is a FHIR `id`: 1-64 characters of A-Z, a-z, 0-9, `-` and `.`.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn check_string(p: Primitive, s: &str) -> Option<String> {
    let bad = |why: &str| Some(format!("'{}' {why}", truncate(s)));
    if s.is_empty() {
        return Some("empty strings are not allowed; omit the element instead".into());
    }
    match p {
        Primitive::Id => (!is_valid_id(s)).then(|| bad("is not a valid id (1-64 of A-Z a-z 0-9 - .)")).flatten(),
        Primitive::Code => {
            let ok = !s.starts_with(char::is_whitespace)
                && !s.ends_with(char::is_whitespace)
                && !s.contains("  ")
                && !s.contains(['\t', '\n', '\r']);
            (!ok).then(|| bad("is not a valid code (no leading, trailing or double whitespace)")).flatten()
        }
        Primitive::Uri | Primitive::Url | Primitive::Canonical => {
            s.contains(char::is_whitespace).then(|| bad("must not contain whitespace")).flatten()
        }
        Primitive::Oid => {
            let ok = s.strip_prefix("urn:oid:").is_some_and(|rest| {
                let mut parts = rest.split('.');
                parts.next().is_some_and(|f| matches!(f, "0" | "1" | "2"))
                    && rest.contains('.')
                    && parts.all(|x| {
                        !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()) && (x == "0" || !x.starts_with('0'))
                    })
            });
            (!ok).then(|| bad("is not a valid oid (urn:oid:...)")).flatten()
        }
        Primitive::Uuid => {
            let ok = s.strip_prefix("urn:uuid:").is_some_and(|u| {
                u.len() == 36
                    && u.bytes().enumerate().all(|(i, b)| {
                        if matches!(i, 8 | 13 | 18 | 23) {
                            b == b'-'
                        } else {
                            b.is_ascii_hexdigit() && !b.is_ascii_uppercase()
                        }
                    })
            });
            (!ok).then(|| bad("is not a valid uuid (urn:uuid:lowercase-hex)")).flatten()
        }
        Primitive::Base64Binary => (!s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b' ' | b'\r' | b'\n' | b'\t')))
        .then(|| bad("is not valid base64"))
        .flatten(),
        Primitive::Date => datetime::parse(Temporal::Date, s)
            .is_none()
            .then(|| bad("is not a valid date (YYYY, YYYY-MM or YYYY-MM-DD)"))
            .flatten(),
        Primitive::DateTime => datetime::parse(Temporal::DateTime, s)
            .is_none()
            .then(|| bad("is not a valid dateTime (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss[.fff]+zz:zz)"))
            .flatten(),
        Primitive::Instant => datetime::parse(Temporal::Instant, s)
            .is_none()
            .then(|| bad("is not a valid instant (YYYY-MM-DDThh:mm:ss[.fff]+zz:zz)"))
            .flatten(),
        Primitive::Time => (!datetime::is_valid_time(s)).then(|| bad("is not a valid time (hh:mm:ss)")).flatten(),
        _ => None,
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= 64 {
        return s.to_string();
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn primitive_name(p: Primitive) -> String {
    let s = format!("{p:?}");
    let mut c = s.chars();
    c.next().map(|f| f.to_lowercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::ParseLimits;

    fn check(text: &str) -> Result<String, Vec<Issue>> {
        let json = Json::parse(text.as_bytes(), ParseLimits::default()).unwrap();
        validate_resource(Model::r4().unwrap(), &json, &ValidationOptions::default())
    }

    #[test]
    fn a_valid_patient_passes() {
        let p = r#"{"resourceType":"Patient","id":"p1","gender":"female","birthDate":"1970-03",
            "_birthDate":{"extension":[{"url":"http://x","valueString":"y"}]},
            "name":[{"family":"Chalmers","given":["Peter","James"]}],"deceasedBoolean":false,
            "multipleBirthInteger":2}"#;
        assert_eq!(check(p), Ok("Patient".into()));
    }

    #[test]
    fn problems_are_located() {
        let cases = [
            (r#"{"resourceType":"Patient","gender":"f"}"#, "Patient.gender", IssueCode::CodeInvalid),
            (r#"{"resourceType":"Patient","birthDate":"1970-13-01"}"#, "Patient.birthDate", IssueCode::Value),
            (r#"{"resourceType":"Patient","name":{"family":"x"}}"#, "Patient.name", IssueCode::Structure),
            (r#"{"resourceType":"Patient","name":[{"given":"x"}]}"#, "Patient.name[0].given", IssueCode::Structure),
            (r#"{"resourceType":"Patient","active":"true"}"#, "Patient.active", IssueCode::Value),
            (r#"{"resourceType":"Patient","foo":1}"#, "Patient.foo", IssueCode::Structure),
            (
                r#"{"resourceType":"Patient","deceasedBoolean":true,"deceasedDateTime":"2000"}"#,
                "Patient.deceasedDateTime",
                IssueCode::Structure,
            ),
            (r#"{"resourceType":"Observation","code":{"text":"x"}}"#, "Observation.status", IssueCode::Required),
            (r#"{"resourceType":"Patient","id":"a b"}"#, "Patient.id", IssueCode::Value),
            (
                r#"{"resourceType":"Patient","multipleBirthInteger":1.5}"#,
                "Patient.multipleBirthInteger",
                IssueCode::Value,
            ),
        ];
        for (text, location, code) in cases {
            let issues = check(text).expect_err(text);
            assert!(issues.iter().any(|i| i.location == location && i.code == code), "{text}: {issues:?}");
        }
    }

    #[test]
    fn unknown_resource_types_are_rejected() {
        assert!(check(r#"{"resourceType":"Patientx"}"#).is_err());
        assert!(check(r#"{"resourceType":"DomainResource"}"#).is_err());
        assert!(check(r#"[]"#).is_err());
    }
}
