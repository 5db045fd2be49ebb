//! Authorisation: what an operation needs, and what an authorised caller may see.
//!
//! Owns: [`authorize`] — the one decision per operation: 401 without a valid identity,
//! 403 naming the missing role or scope, else an [`Access`] — and [`Access`] itself: all
//! rows, or [`Limits`] from SMART grants (roles decide alone unless the token holds
//! SmartUser; scopes then narrow the roles, never widen them). Limits answer, per type and
//! permission letter, the [`RowPolicy`] every reader applies (a `patient/` grant: the
//! patient's compartment, the shared types, Devices of the patient or of nobody; granular
//! parameters ANDed), whether one resource is visible (reads: outside is 404, so ids do
//! not leak) and whether a write may happen (the resource written, and the one it
//! replaces, must be inside). Must not: run searches itself or know HTTP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use fhirlake_ingest::compartment::PatientCompartment;
use fhirlake_ingest::flatten::{Flattener, RowMeta};
use fhirlake_query::search::rows::{RowPolicy, RowRule};
use fhirlake_schemas::{Json, Model};

use super::scope::{Context, Grant, Letter};
use super::{Identity, Permission, Principal};
use crate::error::{ApiError, ApiResult};
use crate::service::Interaction;

/// What an authorised operation may see and write.
#[derive(Debug, Clone)]
pub enum Access {
    /// Everything (authentication off, or a token whose roles alone decide).
    All,
    /// What SMART grants allow.
    Limited(Arc<Limits>),
}

impl Default for Access {
    /// Nothing: an operation that was never authorised sees no row and writes nothing.
    fn default() -> Self {
        Access::Limited(Arc::new(Limits::new(Vec::new(), None, Vec::new())))
    }
}

impl Access {
    /// The rows of `rt` visible for `letter`: `None` for all of them.
    pub fn rows(&self, model: &'static Model, rt: &str, letter: Letter) -> ApiResult<Option<Arc<RowPolicy>>> {
        match self {
            Access::All => Ok(None),
            Access::Limited(l) => l.rows(model, rt, letter),
        }
    }

    /// Whether SMART limits apply.
    pub fn is_limited(&self) -> bool {
        matches!(self, Access::Limited(_))
    }
}

/// A SMART principal's grants, with the row policies derived from them (cached per type
/// and letter for the life of the operation).
#[derive(Debug)]
pub struct Limits {
    grants: Vec<Grant>,
    patient: Option<String>,
    shared: Vec<String>,
    cache: Mutex<HashMap<(String, char), Visible>>,
}

/// The rows of one type visible for one letter: `None` for all of them.
type Visible = Option<Arc<RowPolicy>>;

/// The flattener of `rt`'s rows (default shape: every search-index column), built once.
fn flattener(model: &'static Model, rt: &str) -> ApiResult<Arc<Flattener>> {
    static F: OnceLock<Mutex<HashMap<String, Arc<Flattener>>>> = OnceLock::new();
    let cache = F.get_or_init(Default::default);
    if let Some(f) = cache.lock().expect("flattener cache").get(rt) {
        return Ok(f.clone());
    }
    let shape = fhirlake_schemas::TableShape::try_new(model, rt, fhirlake_schemas::ShapeOptions::default())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let f = Arc::new(Flattener::new(Arc::new(shape)));
    cache.lock().expect("flattener cache").insert(rt.to_string(), f.clone());
    Ok(f)
}

fn compartment(model: &'static Model) -> &'static PatientCompartment {
    static C: OnceLock<PatientCompartment> = OnceLock::new();
    C.get_or_init(|| PatientCompartment::new(model))
}

impl Limits {
    /// Limits of `grants`; `patient` is the compartment of `patient/` grants; `shared`
    /// the types those may read whole.
    pub fn new(grants: Vec<Grant>, patient: Option<String>, shared: Vec<String>) -> Self {
        Limits { grants, patient, shared, cache: Mutex::new(HashMap::new()) }
    }

    /// The grants that apply to `rt` and `letter` (a `patient/` grant only with a patient).
    fn applicable(&self, rt: &str, letter: Letter) -> impl Iterator<Item = &Grant> {
        self.grants.iter().filter(move |g| {
            g.covers(rt) && g.allows(letter) && (g.context != Context::Patient || self.patient.is_some())
        })
    }

    /// The rows of `rt` visible for `letter` (`None`: all).
    pub fn rows(&self, model: &'static Model, rt: &str, letter: Letter) -> ApiResult<Option<Arc<RowPolicy>>> {
        let key = (rt.to_string(), letter.as_char());
        if let Some(p) = self.cache.lock().expect("policy cache").get(&key) {
            return Ok(p.clone());
        }
        let policy = self.build(model, rt, letter)?;
        self.cache.lock().expect("policy cache").insert(key, policy.clone());
        Ok(policy)
    }

    fn build(&self, model: &'static Model, rt: &str, letter: Letter) -> ApiResult<Option<Arc<RowPolicy>>> {
        let mut rules = Vec::new();
        for g in self.applicable(rt, letter) {
            let Some(base) = granular(model, rt, g)? else { continue };
            let member = |compartment: Option<String>, extra: &[(&str, String)]| -> ApiResult<Option<RowRule>> {
                let mut clauses = base.clone();
                if !extra.is_empty() {
                    let pairs: Vec<(String, String)> = extra.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
                    match clauses_of(model, rt, &pairs)? {
                        Some(c) => clauses.extend(c),
                        None => return Ok(None),
                    }
                }
                Ok(Some(RowRule { compartment, clauses }))
            };
            let new_rules: Vec<RowRule> = match (g.context, &self.patient) {
                (Context::User | Context::System, _) => member(None, &[])?.into_iter().collect(),
                (Context::Patient, None) => Vec::new(),
                (Context::Patient, Some(p)) => {
                    if self.shared.iter().any(|t| t == rt) {
                        member(None, &[])?.into_iter().collect()
                    } else if rt == "Device" {
                        // Devices assigned to the patient, or to nobody.
                        [
                            member(None, &[("patient", format!("Patient/{p}"))])?,
                            member(None, &[("patient:missing", "true".into())])?,
                        ]
                        .into_iter()
                        .flatten()
                        .collect()
                    } else if rt == "Patient" || !model.patient_compartment_paths(rt).is_empty() {
                        member(Some(p.clone()), &[])?.into_iter().collect()
                    } else {
                        Vec::new()
                    }
                }
            };
            for r in new_rules {
                if r.compartment.is_none() && r.clauses.is_empty() {
                    return Ok(None);
                }
                rules.push(r);
            }
        }
        Ok(Some(Arc::new(RowPolicy { rules })))
    }

    /// Whether `resource` (`rt/id`, any stored version) is visible for `letter`: decided
    /// on its compartment members, and for granular clauses on the row it flattens to.
    pub fn sees(&self, model: &'static Model, rt: &str, id: &str, resource: &Json, letter: Letter) -> ApiResult<bool> {
        let Some(policy) = self.rows(model, rt, letter)? else { return Ok(true) };
        let members = compartment(model).members(rt, id, resource);
        if policy.rules.iter().all(|r| r.clauses.is_empty()) {
            return Ok(policy.rules.iter().any(|r| r.compartment.as_ref().is_none_or(|p| members.1.contains(p))));
        }
        let flattener = flattener(model, rt)?;
        let meta = RowMeta {
            version: 1,
            last_updated_us: 0,
            raw: Arc::from(""),
            patient: members.0.clone(),
            compartment: members.1.clone(),
        };
        let batch = flattener
            .to_batch(&[(resource, &meta)])
            .map_err(|e| ApiError::Internal(format!("flattening {rt}/{id} for a scope check: {e}")))?;
        let admitted = policy.admits(&batch).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(admitted.first().copied().unwrap_or(false))
    }

    /// Checks a write of `letter` to `rt/id`: `after` is the resource written (none for a
    /// delete), `before` the version it replaces (none when new). A `patient/` grant needs
    /// both inside the patient's compartment; a granular grant cannot be checked on one
    /// resource yet and does not allow writes.
    pub fn check_write(
        &self,
        model: &'static Model,
        rt: &str,
        id: &str,
        letter: Letter,
        after: Option<&Json>,
        before: Option<&Json>,
    ) -> ApiResult<()> {
        let inside = |p: &str, j: Option<&Json>| {
            j.is_none_or(|j| compartment(model).members(rt, id, j).1.iter().any(|m| m == p))
        };
        let mut tried = Vec::new();
        for g in self.applicable(rt, letter) {
            tried.push(g.text.as_str());
            if !g.filter.is_empty() {
                continue;
            }
            match (g.context, &self.patient) {
                (Context::User | Context::System, _) => return Ok(()),
                (Context::Patient, Some(p)) if inside(p, after) && inside(p, before) => return Ok(()),
                _ => {}
            }
        }
        Err(ApiError::Forbidden(match (tried.is_empty(), &self.patient) {
            (true, _) => format!(
                "the token's scopes do not allow '{}' on {rt} (needs e.g. user/{rt}.{})",
                letter.as_char(),
                letter.as_char()
            ),
            (false, Some(p)) => format!(
                "{rt}/{id} would be outside the compartment of Patient/{p}: the token's scopes ({}) allow writes there only",
                tried.join(" ")
            ),
            (false, None) => format!("the token's scopes ({}) do not allow this write", tried.join(" ")),
        }))
    }
}

/// The clauses of a grant's granular filter on `rt`; `None` when a parameter does not
/// apply to `rt` (the grant then admits no row of it: fail closed).
fn granular(model: &'static Model, rt: &str, g: &Grant) -> ApiResult<Option<Vec<fhirlake_schemas::search::Clause>>> {
    if g.filter.is_empty() {
        return Ok(Some(Vec::new()));
    }
    clauses_of(model, rt, &g.filter)
}

fn clauses_of(
    model: &'static Model,
    rt: &str,
    pairs: &[(String, String)],
) -> ApiResult<Option<Vec<fhirlake_schemas::search::Clause>>> {
    let req = fhirlake_schemas::search::parse(model, rt, pairs)
        .map_err(|e| ApiError::Forbidden(format!("a scope's granular parameters cannot be applied to {rt}: {e}")))?;
    if !req.ignored.is_empty() || !req.has.is_empty() || req.clauses.iter().any(|c| c.chain.is_some()) {
        return Ok(None);
    }
    Ok(Some(req.clauses))
}

/// The right and the scope letter an interaction needs; `None` when it needs none
/// (capabilities) or is authorised entry by entry (Bundles).
fn needs(interaction: Interaction) -> Option<(Permission, Option<Letter>)> {
    use Interaction as I;
    Some(match interaction {
        I::Capabilities | I::Bundle => return None,
        I::Read | I::Vread | I::HistoryInstance => (Permission::Read, Some(Letter::R)),
        I::SearchType | I::SearchSystem | I::HistoryType | I::HistorySystem => (Permission::Read, Some(Letter::S)),
        I::Everything => (Permission::Read, Some(Letter::R)),
        I::Validate => (Permission::Read, None),
        I::Create => (Permission::Write, Some(Letter::C)),
        I::Update | I::Patch | I::ConditionalUpdate | I::ConditionalPatch => (Permission::Write, Some(Letter::U)),
        I::Delete | I::ConditionalDelete => (Permission::Delete, Some(Letter::D)),
        I::Sql | I::ViewRun | I::Materialize => (Permission::Sql, None),
    })
}

/// Decides whether `identity` may run `interaction` on `rt` (`None`: not type-level), and
/// what it may see when it may. `shared` are the types any `patient/` grant reads whole.
pub fn authorize(
    identity: &Identity,
    interaction: Interaction,
    rt: Option<&str>,
    shared: &[String],
) -> ApiResult<Access> {
    if interaction == Interaction::Capabilities {
        return Ok(Access::All);
    }
    let p = match identity {
        Identity::Open => return Ok(Access::All),
        Identity::Anonymous => {
            return Err(ApiError::Unauthenticated(
                "this server needs a bearer token (Authorization: Bearer ...)".into(),
            ));
        }
        Identity::Token(p) => p,
    };
    let need = needs(interaction);
    if let Some((perm, _)) = need
        && !p.has(perm)
    {
        return Err(missing_role(p, perm));
    }
    if interaction == Interaction::Bundle && p.roles.is_empty() {
        return Err(ApiError::Forbidden("the token holds none of fhirlake's roles (Reader, Writer, ...)".into()));
    }
    if !p.smart() {
        return Ok(Access::All);
    }
    if interaction == Interaction::Materialize {
        // A materialization reads every row of its type into a shared table.
        return Err(ApiError::Forbidden(
            "$materialize reads every row: a token limited by SMART scopes (SmartUser) cannot run it".into(),
        ));
    }
    let grants = p.grants.clone().map_err(|e| ApiError::Forbidden(format!("the token's scope is refused: {e}")))?;
    let limits = Limits::new(grants, p.patient.clone(), shared.to_vec());
    if let Some((_, Some(letter))) = need {
        let ok = match (interaction, rt) {
            (Interaction::SearchSystem | Interaction::HistorySystem, _) => limits
                .grants
                .iter()
                .any(|g| g.allows(letter) && (g.context != Context::Patient || limits.patient.is_some())),
            (_, Some(rt)) => limits.applicable(rt, letter).next().is_some(),
            (_, None) => false,
        };
        if !ok {
            return Err(missing_scope(p, &limits, interaction, rt, letter));
        }
    }
    Ok(Access::Limited(Arc::new(limits)))
}

fn missing_role(p: &Principal, perm: Permission) -> ApiError {
    let has: Vec<&str> = p.roles.iter().map(|r| r.name()).collect();
    ApiError::Forbidden(format!(
        "this needs one of the roles {} (the token's roles: {})",
        perm.granted_by().join(", "),
        if has.is_empty() { "none fhirlake knows".to_string() } else { has.join(", ") }
    ))
}

fn missing_scope(
    p: &Principal,
    limits: &Limits,
    interaction: Interaction,
    rt: Option<&str>,
    letter: Letter,
) -> ApiError {
    let target = rt.unwrap_or("*");
    let patient_only =
        limits.grants.iter().any(|g| g.context == Context::Patient && g.covers(target) && g.allows(letter));
    if patient_only && limits.patient.is_none() {
        return ApiError::Forbidden(
            "the token's patient/ scopes need a patient: it carries neither a patient claim nor a Patient fhirUser"
                .into(),
        );
    }
    ApiError::Forbidden(format!(
        "{} needs the scope {}/{target}.{} (or user/, system/; v1: .{}); the token's scope is '{}'",
        interaction.name(),
        "patient",
        letter.as_char(),
        if matches!(letter, Letter::R | Letter::S) { "read" } else { "write" },
        p.claims.scope
    ))
}
