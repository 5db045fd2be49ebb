//! SMART on FHIR clinical scopes, v1 and v2, parsed into grants.
//!
//! Owns: the scope grammar — v1 `(patient|user)/(Type|*).(read|write|*)` and v2
//! `(patient|user|system)/(Type|*).[c][r][u][d][s][?param=value(&param=value)*]` — and
//! [`Grant`], one parsed clinical scope. v1 maps to v2 letters (`read` = `rs`, `write` =
//! `cud`, `*` = `cruds`). Scopes that grant no data (`openid`, `fhirUser`, `launch`,
//! `launch/patient`, `offline_access`, ...) are recognised and carry nothing. What we do
//! not support is refused, never ignored (fail closed): letters out of order or repeated,
//! and granular parameters with modifiers (`code:in=`), chains (`subject.name=`), `_has`,
//! `_filter`, `_include`/`_revinclude` or result parameters. Must not: decide what a
//! grant allows for a request (`policy` does).

use std::fmt;

/// The context a clinical scope applies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Context {
    /// `patient/`: the launch patient's compartment.
    Patient,
    /// `user/`: what the user may see (their roles).
    User,
    /// `system/`: a backend client's pre-authorised access.
    System,
}

impl Context {
    /// The prefix as written.
    pub fn name(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }
}

/// The v2 permission letters, in their `cruds` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Letter {
    /// Create.
    C,
    /// Read, vread, instance history.
    R,
    /// Update (including update-as-create) and patch.
    U,
    /// Delete.
    D,
    /// Type and system search and history.
    S,
}

impl Letter {
    const ALL: [Letter; 5] = [Letter::C, Letter::R, Letter::U, Letter::D, Letter::S];

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The letter as written.
    pub fn as_char(self) -> char {
        ['c', 'r', 'u', 'd', 's'][self as usize]
    }
}

/// One clinical scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `patient`, `user` or `system`.
    pub context: Context,
    /// The resource type, `None` for `*`.
    pub resource_type: Option<String>,
    letters: u8,
    /// Granular restriction: search parameters every row it grants must match (ANDed),
    /// as `(name, value)`; empty when none.
    pub filter: Vec<(String, String)>,
    /// The scope as written.
    pub text: String,
}

impl Grant {
    /// Whether the grant has `letter`.
    pub fn allows(&self, letter: Letter) -> bool {
        self.letters & letter.bit() != 0
    }

    /// Whether the grant names `resource_type` (or `*`).
    pub fn covers(&self, resource_type: &str) -> bool {
        self.resource_type.as_deref().is_none_or(|t| t == resource_type)
    }
}

/// A scope we cannot honour: the token is refused rather than the scope ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeError {
    /// The scope as written.
    pub scope: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scope '{}' is not supported: {}", self.scope, self.reason)
    }
}

/// Scopes that grant no data: identity, launch context, refresh.
fn is_context_scope(s: &str) -> bool {
    matches!(s, "openid" | "fhirUser" | "profile" | "launch" | "offline_access" | "online_access")
        || s.starts_with("launch/")
}

/// The clinical grants of a space-separated scope string. Unknown non-clinical scopes
/// (anything without a `/` that is not a known context scope, e.g. an identity provider's
/// own) carry nothing; a malformed or unsupported clinical scope is an error.
pub fn parse(scopes: &str, is_resource_type: impl Fn(&str) -> bool) -> Result<Vec<Grant>, ScopeError> {
    let mut grants = Vec::new();
    for s in scopes.split_ascii_whitespace() {
        if is_context_scope(s) {
            continue;
        }
        let Some((context, rest)) = s.split_once('/') else { continue };
        let context = match context {
            "patient" => Context::Patient,
            "user" => Context::User,
            "system" => Context::System,
            // Not a SMART clinical scope (e.g. `api://x/.default`): grants nothing.
            _ => continue,
        };
        grants.push(parse_clinical(s, context, rest, &is_resource_type)?);
    }
    Ok(grants)
}

fn parse_clinical(
    text: &str,
    context: Context,
    rest: &str,
    is_resource_type: &impl Fn(&str) -> bool,
) -> Result<Grant, ScopeError> {
    let err = |reason: &str| ScopeError { scope: text.to_string(), reason: reason.to_string() };
    let (target, permission) = rest.split_once('.').ok_or_else(|| err("expected Type.permission"))?;
    let resource_type = match target {
        "*" => None,
        t if is_resource_type(t) => Some(t.to_string()),
        _ => return Err(err(&format!("'{target}' is not a FHIR R4 resource type"))),
    };
    let (permission, query) = match permission.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (permission, None),
    };
    let letters = match permission {
        "read" if query.is_none() => Letter::R.bit() | Letter::S.bit(),
        "write" if query.is_none() => Letter::C.bit() | Letter::U.bit() | Letter::D.bit(),
        "*" if query.is_none() => 0b11111,
        "read" | "write" | "*" => return Err(err("granular parameters need v2 permission letters (cruds)")),
        letters => {
            let mut bits = 0u8;
            let mut last: Option<usize> = None;
            for ch in letters.chars() {
                let i = Letter::ALL
                    .iter()
                    .position(|l| l.as_char() == ch)
                    .ok_or_else(|| err(&format!("'{ch}' is not one of the letters c r u d s")))?;
                if last.is_some_and(|l| l >= i) {
                    return Err(err("the letters must be a subset of 'cruds' in that order"));
                }
                last = Some(i);
                bits |= Letter::ALL[i].bit();
            }
            if bits == 0 {
                return Err(err("no permission letters"));
            }
            bits
        }
    };
    let filter = match query {
        None => Vec::new(),
        Some(q) => parse_granular(q).map_err(|reason| err(&reason))?,
    };
    Ok(Grant { context, resource_type, letters, filter, text: text.to_string() })
}

/// The `name=value` pairs of a granular scope, refusing what we do not evaluate there.
fn parse_granular(query: &str) -> Result<Vec<(String, String)>, String> {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    if pairs.is_empty() {
        return Err("an empty granular restriction".into());
    }
    for (k, v) in &pairs {
        if k.is_empty() || v.is_empty() {
            return Err("a granular parameter needs a name and a value".into());
        }
        if k.contains(':') {
            return Err(format!("search modifiers ('{k}') inside scopes are not supported"));
        }
        if k.contains('.') {
            return Err(format!("chained parameters ('{k}') inside scopes are not supported"));
        }
        if k.starts_with('_') && k != "_id" && k != "_tag" && k != "_profile" && k != "_security" {
            return Err(format!("'{k}' is not supported inside scopes"));
        }
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(t: &str) -> bool {
        matches!(t, "Observation" | "Patient" | "Condition")
    }

    fn letters(g: &Grant) -> String {
        Letter::ALL.iter().filter(|l| g.allows(**l)).map(|l| l.as_char()).collect()
    }

    #[test]
    fn v1_scopes_map_to_v2_letters() {
        let g =
            parse("openid fhirUser launch/patient patient/*.read user/Observation.write system/*.*", types).unwrap();
        assert_eq!(g.len(), 3);
        assert_eq!(
            (g[0].context, g[0].resource_type.as_deref(), letters(&g[0]).as_str()),
            (Context::Patient, None, "rs")
        );
        assert_eq!(
            (g[1].context, g[1].resource_type.as_deref(), letters(&g[1]).as_str()),
            (Context::User, Some("Observation"), "cud")
        );
        assert_eq!(letters(&g[2]), "cruds");
    }

    #[test]
    fn v2_letters_and_granular_parameters() {
        let g = parse(
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory \
             user/Condition.cu",
            types,
        )
        .unwrap();
        assert_eq!(letters(&g[0]), "rs");
        assert_eq!(
            g[0].filter,
            vec![(
                "category".to_string(),
                "http://terminology.hl7.org/CodeSystem/observation-category|laboratory".to_string()
            )]
        );
        assert_eq!(letters(&g[1]), "cu");
        assert!(g[1].covers("Condition") && !g[1].covers("Patient"));
    }

    #[test]
    fn what_we_cannot_honour_is_refused() {
        for bad in [
            "patient/Observation.sr",
            "patient/Observation.rr",
            "patient/Observation.x",
            "patient/Observation.",
            "patient/Nope.rs",
            "patient/Observation",
            "patient/Observation.rs?code:in=http://x",
            "patient/Observation.rs?subject.name=x",
            "patient/Observation.rs?_has:Condition:subject:code=1",
            "patient/Observation.rs?_include=Observation:subject",
            "patient/Observation.read?code=1",
            "patient/Observation.rs?code=",
        ] {
            assert!(parse(bad, types).is_err(), "{bad} should be refused");
        }
        // Not clinical at all: grants nothing, refuses nothing.
        assert_eq!(parse("api://fhirlake/.default email", types).unwrap(), vec![]);
    }
}
