//! The R4 type model: every resource and datatype as a tree of elements.
//!
//! Owns: turning StructureDefinition snapshots into [`Structure`]s — one per complex
//! datatype (keyed by type name, e.g. `HumanName`), per resource (`Patient`) and per
//! backbone element (keyed by its path, e.g. `Questionnaire.item`) — and resolving
//! `contentReference` recursion to the referenced backbone. Also the patient compartment
//! and required-binding code sets. Must not: know about Arrow or storage.

use std::collections::{BTreeMap, HashMap, HashSet};

use rustc_hash::FxHashMap;
use std::sync::{Arc, OnceLock};

use crate::definitions::{CodeOnly, Definitions, ElementDefinition, SearchParameter};
use crate::{Error, Result};

/// The FHIR primitive types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Primitive {
    Base64Binary,
    Boolean,
    Canonical,
    Code,
    Date,
    DateTime,
    Decimal,
    Id,
    Instant,
    Integer,
    Markdown,
    Oid,
    PositiveInt,
    String,
    Time,
    UnsignedInt,
    Uri,
    Url,
    Uuid,
    Xhtml,
}

impl Primitive {
    /// The primitive for a FHIR type code, e.g. `dateTime`.
    pub fn from_code(code: &str) -> Option<Self> {
        use Primitive::*;
        Some(match code {
            "base64Binary" => Base64Binary,
            "boolean" => Boolean,
            "canonical" => Canonical,
            "code" => Code,
            "date" => Date,
            "dateTime" => DateTime,
            "decimal" => Decimal,
            "id" => Id,
            "instant" => Instant,
            "integer" => Integer,
            "markdown" => Markdown,
            "oid" => Oid,
            "positiveInt" => PositiveInt,
            "string" => String,
            "time" => Time,
            "unsignedInt" => UnsignedInt,
            "uri" => Uri,
            "url" => Url,
            "uuid" => Uuid,
            "xhtml" => Xhtml,
            _ => return None,
        })
    }

    /// True for date, dateTime and instant (which get a timestamp companion).
    pub fn is_temporal(self) -> bool {
        matches!(self, Primitive::Date | Primitive::DateTime | Primitive::Instant)
    }
}

/// What an element (or one variant of a choice element) holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeRef {
    /// A primitive value.
    Primitive(Primitive),
    /// A complex datatype or backbone element: the [`Structure`] key.
    Struct(String),
    /// `Extension` (kept as url + JSON value).
    Extension,
    /// A whole resource (`contained`, `Bundle.entry.resource`, ...).
    Resource,
}

/// One element of a structure.
#[derive(Debug, Clone)]
pub struct Element {
    /// JSON name without `[x]`, e.g. `value` for `value[x]`, `birthDate`.
    pub name: String,
    /// Full definition path, e.g. `Observation.value[x]`.
    pub path: String,
    /// Minimum cardinality.
    pub min: u32,
    /// True when the element repeats (max `*` or > 1).
    pub many: bool,
    /// For a choice element: (JSON name, type) of each variant, e.g. (`valueQuantity`,
    /// Quantity). Otherwise one entry with the element's own name.
    pub variants: Vec<(String, TypeRef)>,
    /// Canonical URL (no version) of a required value-set binding, if any.
    pub required_binding: Option<String>,
    /// Part of the `_summary=true` view (`ElementDefinition.isSummary`).
    pub summary: bool,
}

impl Element {
    /// True for `value[x]` style elements.
    pub fn is_choice(&self) -> bool {
        self.path.ends_with("[x]")
    }
}

/// A complex datatype, resource or backbone element: an ordered list of elements.
#[derive(Debug, Clone)]
pub struct Structure {
    /// Type name or backbone path.
    pub key: String,
    /// Child elements in definition order.
    pub elements: Vec<Element>,
    /// JSON name -> (index into `elements`, index into its `variants`).
    pub by_json_name: FxHashMap<String, (usize, usize)>,
}

/// The whole R4 model.
pub struct Model {
    structures: FxHashMap<String, Arc<Structure>>,
    resource_types: Vec<String>,
    value_sets: HashMap<String, Option<Arc<HashSet<String>>>>,
    compartment_params: BTreeMap<String, Vec<String>>,
    search_parameters: Vec<SearchParameter>,
    /// Every type name (resources, datatypes, primitives, datatype constraints such as
    /// `Age`) -> the name of its base type (`None` for `Base`).
    bases: FxHashMap<String, Option<String>>,
}

static MODEL: OnceLock<Result<Model>> = OnceLock::new();

impl Model {
    /// The model built from the embedded R4 definitions (built once per process).
    pub fn r4() -> Result<&'static Model> {
        MODEL.get_or_init(|| Definitions::load().and_then(Model::build)).as_ref().map_err(Clone::clone)
    }

    /// Every concrete (non-abstract) resource type, sorted.
    pub fn resource_types(&self) -> &[String] {
        &self.resource_types
    }

    /// True if `name` is a concrete resource type.
    pub fn is_resource_type(&self, name: &str) -> bool {
        self.resource_types.binary_search_by(|t| t.as_str().cmp(name)).is_ok()
    }

    /// The structure of a datatype, resource or backbone path.
    pub fn structure(&self, key: &str) -> Option<&Arc<Structure>> {
        self.structures.get(key)
    }

    /// The codes of a value set when it can be enumerated from the shipped definitions
    /// (`None` when it is unknown or uses filters / external code systems).
    pub fn value_set_codes(&self, url: &str) -> Option<&HashSet<String>> {
        self.value_sets.get(url).and_then(|v| v.as_deref())
    }

    /// The search-parameter codes that place a resource of `resource_type` in the Patient
    /// compartment (empty when the type is not in the compartment).
    pub fn patient_compartment_params(&self, resource_type: &str) -> &[String] {
        self.compartment_params.get(resource_type).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The element paths that place a resource of `resource_type` in the Patient
    /// compartment, in the CompartmentDefinition's parameter order (the first member found
    /// along them is the resource's owner, `_patient`).
    pub fn patient_compartment_paths(&self, resource_type: &str) -> Vec<Vec<String>> {
        let mut paths: Vec<Vec<String>> = Vec::new();
        for code in self.patient_compartment_params(resource_type) {
            let Some(expr) = self.search_parameter(resource_type, code).and_then(|p| p.expression.as_deref()) else {
                continue;
            };
            for part in expr.split('|') {
                if let Some(p) = simple_path(resource_type, part)
                    && !paths.contains(&p)
                {
                    paths.push(p);
                }
            }
        }
        paths
    }

    /// Whether every resource of `resource_type` matching `code=Patient/X` has owner `X`:
    /// the parameter selects exactly the type's first compartment path, and that is one
    /// top-level, non-repeating element (`Observation.subject`, `Condition.subject`), so
    /// its Patient reference is the first compartment member found. Search then adds
    /// `_patient = X`, which file and row-group statistics can prune.
    pub fn is_owner_param(&self, resource_type: &str, code: &str) -> bool {
        let Some(first) = self.patient_compartment_paths(resource_type).into_iter().next() else { return false };
        let Some(expr) = self.search_parameter(resource_type, code).and_then(|p| p.expression.as_deref()) else {
            return false;
        };
        let mine: Vec<Vec<String>> = expr
            .split('|')
            .filter(|part| part.trim().trim_start_matches('(').starts_with(&format!("{resource_type}.")))
            .map(|part| simple_path(resource_type, part))
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
        let [path] = mine.as_slice() else { return false };
        let [element] = path.as_slice() else { return false };
        *path == first
            && self
                .structure(resource_type)
                .and_then(|s| s.elements.iter().find(|e| e.name == *element))
                .is_some_and(|e| !e.many)
    }

    /// All SearchParameters in the official R4 registry.
    pub fn search_parameters(&self) -> &[SearchParameter] {
        &self.search_parameters
    }

    /// The SearchParameter `code` that applies to `resource_type`.
    pub fn search_parameter(&self, resource_type: &str, code: &str) -> Option<&SearchParameter> {
        self.search_parameters.iter().find(|p| {
            p.code == code && p.base.iter().any(|b| b == resource_type || b == "Resource" || b == "DomainResource")
        })
    }

    /// The model's own copy of a type name (so it can be held for the process lifetime).
    pub fn type_name(&self, name: &str) -> Option<&str> {
        self.bases.get_key_value(name).map(|(k, _)| k.as_str())
    }

    /// The base type of a type (`Patient` -> `DomainResource`, `code` -> `string`,
    /// `Age` -> `Quantity`).
    pub fn base_type(&self, name: &str) -> Option<&str> {
        self.bases.get(name).and_then(|b| b.as_deref())
    }

    /// True when `name` is `ancestor` or derives from it.
    pub fn is_subtype(&self, name: &str, ancestor: &str) -> bool {
        let mut cur = Some(name);
        while let Some(t) = cur {
            if t == ancestor {
                return true;
            }
            cur = self.base_type(t);
        }
        false
    }

    /// The structure holding the elements of a type: its own, or for a datatype
    /// constraint (`Age`, `SimpleQuantity`) its base's.
    pub fn structure_of_type(&self, name: &str) -> Option<&Structure> {
        let mut cur = Some(name);
        while let Some(t) = cur {
            if let Some(s) = self.structures.get(t) {
                return Some(s.as_ref());
            }
            if t.contains('.') {
                return None;
            }
            cur = self.base_type(t);
        }
        None
    }

    fn build(defs: Definitions) -> Result<Model> {
        let mut structures = FxHashMap::default();
        let mut resource_types = Vec::new();
        let mut bases = FxHashMap::default();
        for sd in &defs.structures {
            let core_type = sd.derivation.as_deref() != Some("constraint")
                || matches!(sd.kind.as_str(), "complex-type" | "primitive-type");
            if core_type && sd.kind != "logical" && !sd.id.contains('-') {
                let base = sd.base_definition.as_deref().and_then(|b| b.rsplit('/').next()).map(str::to_string);
                bases.insert(sd.id.clone(), base);
            }
        }
        for sd in &defs.structures {
            let concrete_complex = sd.kind == "complex-type" && sd.derivation.as_deref() == Some("specialization");
            let resource = sd.kind == "resource";
            if !(concrete_complex || resource) || sd.type_name != sd.id {
                continue;
            }
            if resource && !sd.is_abstract {
                resource_types.push(sd.id.clone());
            }
            let elements =
                &sd.snapshot.as_ref().ok_or_else(|| Error::Definitions(format!("{} has no snapshot", sd.id)))?.element;
            build_structures(&sd.id, resource, elements, &mut structures)?;
        }
        resource_types.sort();
        let value_sets = expand_value_sets(&defs);
        let compartment_params = defs
            .compartments
            .iter()
            .filter(|c| c.code == "Patient")
            .flat_map(|c| c.resource.iter())
            .filter(|r| !r.param.is_empty())
            .map(|r| (r.code.clone(), r.param.clone()))
            .collect();
        Ok(Model {
            structures,
            resource_types,
            value_sets,
            compartment_params,
            search_parameters: defs.search_parameters,
            bases,
        })
    }
}

fn build_structures(
    root: &str,
    is_resource: bool,
    elements: &[ElementDefinition],
    out: &mut FxHashMap<String, Arc<Structure>>,
) -> Result<()> {
    // Group the elements by parent path; a structure exists for the root and for every
    // element that has children.
    let mut children: BTreeMap<&str, Vec<&ElementDefinition>> = BTreeMap::new();
    for el in elements.iter().skip(1) {
        let parent = el.path.rsplit_once('.').map(|(p, _)| p).unwrap_or(root);
        children.entry(parent).or_default().push(el);
    }
    for (parent, kids) in &children {
        let key = if *parent == root { root.to_string() } else { parent.to_string() };
        let mut s = Structure { key: key.clone(), elements: Vec::new(), by_json_name: FxHashMap::default() };
        for el in kids {
            let element = build_element(root, is_resource, el, children.contains_key(el.path.as_str()))?;
            let idx = s.elements.len();
            for (v, (json_name, _)) in element.variants.iter().enumerate() {
                s.by_json_name.insert(json_name.clone(), (idx, v));
            }
            s.elements.push(element);
        }
        out.insert(key, Arc::new(s));
    }
    Ok(())
}

fn build_element(root: &str, is_resource: bool, el: &ElementDefinition, has_children: bool) -> Result<Element> {
    let last = el.path.rsplit('.').next().unwrap_or(&el.path);
    let name = last.trim_end_matches("[x]").to_string();
    let many = match el.max.as_deref() {
        Some("*") => true,
        Some(n) => n.parse::<u32>().map(|n| n > 1).unwrap_or(false),
        None => false,
    };
    let variants = if let Some(cr) = &el.content_reference {
        vec![(name.clone(), TypeRef::Struct(cr.trim_start_matches('#').to_string()))]
    } else if has_children {
        vec![(name.clone(), TypeRef::Struct(el.path.clone()))]
    } else if last.ends_with("[x]") {
        el.types
            .iter()
            .map(|t| (format!("{name}{}", upper_first(&t.code)), type_ref(root, is_resource, el, &t.code, t)))
            .collect()
    } else {
        let t = el.types.first().ok_or_else(|| Error::Definitions(format!("{} has no type", el.path)))?;
        vec![(name.clone(), type_ref(root, is_resource, el, &t.code, t))]
    };
    let required_binding = el
        .binding
        .as_ref()
        .filter(|b| b.strength == "required")
        .and_then(|b| b.value_set.as_deref())
        .map(|v| v.split('|').next().unwrap_or(v).to_string());
    Ok(Element { name, path: el.path.clone(), min: el.min, many, variants, required_binding, summary: el.is_summary })
}

fn type_ref(
    root: &str,
    is_resource: bool,
    el: &ElementDefinition,
    code: &str,
    t: &crate::definitions::TypeRefDefinition,
) -> TypeRef {
    if is_resource && el.path == format!("{root}.id") {
        return TypeRef::Primitive(Primitive::Id);
    }
    if let Some(system) = code.strip_prefix("http://hl7.org/fhirpath/System.") {
        let fhir_type = t.extension.iter().find_map(|e| e.value_url.as_deref());
        let p = fhir_type.and_then(Primitive::from_code).unwrap_or(match system {
            "Boolean" => Primitive::Boolean,
            "Integer" => Primitive::Integer,
            "Decimal" => Primitive::Decimal,
            "Date" => Primitive::Date,
            "DateTime" => Primitive::DateTime,
            "Time" => Primitive::Time,
            _ => Primitive::String,
        });
        return TypeRef::Primitive(p);
    }
    if let Some(p) = Primitive::from_code(code) {
        return TypeRef::Primitive(p);
    }
    match code {
        "Extension" => TypeRef::Extension,
        "Resource" => TypeRef::Resource,
        "SimpleQuantity" | "MoneyQuantity" => TypeRef::Struct("Quantity".into()),
        other => TypeRef::Struct(other.to_string()),
    }
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn collect_codes(concepts: &[CodeOnly], out: &mut HashSet<String>) {
    for c in concepts {
        out.insert(c.code.clone());
        collect_codes(&c.concept, out);
    }
}

/// Expands every value set whose content is fully enumerable from the shipped code
/// systems; the others map to `None` (their codes are not checked).
fn expand_value_sets(defs: &Definitions) -> HashMap<String, Option<Arc<HashSet<String>>>> {
    let systems: HashMap<&str, &crate::definitions::CodeSystem> = defs
        .code_systems
        .iter()
        .filter(|c| c.content.as_deref() == Some("complete"))
        .map(|c| (c.url.as_str(), c))
        .collect();
    let mut out = HashMap::new();
    for vs in &defs.value_sets {
        let expanded = vs.compose.as_ref().and_then(|compose| {
            if !compose.exclude.is_empty() {
                return None;
            }
            let mut codes = HashSet::new();
            for inc in &compose.include {
                if !inc.filter.is_empty() || !inc.value_set.is_empty() {
                    return None;
                }
                if !inc.concept.is_empty() {
                    collect_codes(&inc.concept, &mut codes);
                } else {
                    let cs = systems.get(inc.system.as_deref()?)?;
                    collect_codes(&cs.concept, &mut codes);
                }
            }
            Some(Arc::new(codes))
        });
        out.insert(vs.url.clone(), expanded);
    }
    out
}

/// `Type.a.b.where(...)` -> `[a, b]` when the expression part is a plain element path on
/// `rt` (a trailing `where(...)`/`resolve()` is dropped); `None` otherwise.
pub fn simple_path(rt: &str, part: &str) -> Option<Vec<String>> {
    let part = part.trim().trim_start_matches('(').trim_end_matches(')').trim();
    let rest = part.strip_prefix(rt)?.strip_prefix('.')?;
    let mut segs = Vec::new();
    for seg in rest.split('.') {
        if seg.starts_with("where(") || seg.starts_with("resolve(") || seg.contains(' ') || seg.contains('(') {
            break;
        }
        if !seg.chars().all(|c| c.is_ascii_alphanumeric()) {
            return None;
        }
        segs.push(seg.to_string());
    }
    (!segs.is_empty()).then_some(segs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_r4_resource_type_is_modelled() {
        let m = Model::r4().unwrap();
        assert!(m.resource_types().len() >= 145, "{}", m.resource_types().len());
        for t in m.resource_types() {
            assert!(m.structure(t).is_some(), "{t} has no structure");
        }
        assert!(m.is_resource_type("Patient") && !m.is_resource_type("DomainResource"));
    }

    #[test]
    fn choice_and_recursion_and_bindings() {
        let m = Model::r4().unwrap();
        let obs = m.structure("Observation").unwrap();
        let (i, _) = obs.by_json_name["valueQuantity"];
        assert!(obs.elements[i].is_choice());
        assert_eq!(obs.elements[i].variants.len(), 11);
        let status = &obs.elements[obs.by_json_name["status"].0];
        assert_eq!(status.required_binding.as_deref(), Some("http://hl7.org/fhir/ValueSet/observation-status"));
        let codes = m.value_set_codes("http://hl7.org/fhir/ValueSet/observation-status").unwrap();
        assert!(codes.contains("final") && !codes.contains("done"));
        let item = m.structure("Questionnaire.item").unwrap();
        let nested = &item.elements[item.by_json_name["item"].0];
        assert_eq!(nested.variants[0].1, TypeRef::Struct("Questionnaire.item".into()));
        let p = m.structure("Patient").unwrap();
        assert_eq!(p.elements[p.by_json_name["id"].0].variants[0].1, TypeRef::Primitive(Primitive::Id));
        assert_eq!(m.patient_compartment_params("Observation"), ["subject", "performer"]);
        assert!(m.is_owner_param("Observation", "patient") && m.is_owner_param("Observation", "subject"));
        assert!(m.is_owner_param("Condition", "patient") && m.is_owner_param("Encounter", "subject"));
        assert!(!m.is_owner_param("Observation", "performer"), "performer repeats and is not first");
        assert!(!m.is_owner_param("Observation", "code") && !m.is_owner_param("Patient", "general-practitioner"));
        assert!(m.is_subtype("Patient", "DomainResource") && m.is_subtype("Patient", "Resource"));
        assert!(m.is_subtype("code", "string") && !m.is_subtype("id", "code"));
        assert!(m.is_subtype("Age", "Quantity") && m.structure_of_type("Age").is_some());
        assert!(!m.is_subtype("Bundle", "DomainResource"));
    }
}
