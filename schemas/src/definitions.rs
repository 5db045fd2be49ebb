//! The official FHIR R4 (4.0.1) definition bundles shipped inside the crate.
//!
//! Owns: the embedded, gzip-compressed copies of `profiles-resources.json`,
//! `profiles-types.json`, `search-parameters.json` and `valuesets.json` (see
//! `schemas/definitions/SOURCE.md`), and decoding just the parts of them fhirlake uses
//! into plain structs. Must not: interpret them (that is [`crate::model`]).

use std::io::Read;

use serde::Deserialize;

use crate::{Error, Result};

static PROFILES_RESOURCES: &[u8] = include_bytes!("../definitions/profiles-resources.json.gz");
static PROFILES_TYPES: &[u8] = include_bytes!("../definitions/profiles-types.json.gz");
static SEARCH_PARAMETERS: &[u8] = include_bytes!("../definitions/search-parameters.json.gz");
static VALUESETS: &[u8] = include_bytes!("../definitions/valuesets.json.gz");
/// ViewDefinition (SQL-on-FHIR v2) as an additional resource type; see `SOURCE.md`.
static SQL_ON_FHIR: &[u8] = include_bytes!("../definitions/sql-on-fhir.json");

/// A definitions Bundle, reduced to its resources.
#[derive(Debug, Deserialize)]
pub struct DefinitionBundle {
    /// The entries.
    #[serde(default)]
    pub entry: Vec<DefinitionEntry>,
}

/// One Bundle entry.
#[derive(Debug, Deserialize)]
pub struct DefinitionEntry {
    /// The resource, one of the kinds fhirlake reads.
    pub resource: DefinitionResource,
}

/// The definitional resources fhirlake reads; every other kind is skipped.
#[derive(Debug, Deserialize)]
#[serde(tag = "resourceType")]
pub enum DefinitionResource {
    /// A StructureDefinition.
    StructureDefinition(StructureDefinition),
    /// A SearchParameter.
    SearchParameter(SearchParameter),
    /// A CompartmentDefinition.
    CompartmentDefinition(CompartmentDefinition),
    /// A ValueSet.
    ValueSet(ValueSet),
    /// A CodeSystem.
    CodeSystem(CodeSystem),
    /// Anything else (OperationDefinition, CapabilityStatement, ...).
    #[serde(other)]
    Other,
}

/// StructureDefinition: the parts used to build the type model.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StructureDefinition {
    /// Logical id, e.g. `Patient`.
    pub id: String,
    /// `primitive-type`, `complex-type`, `resource` or `logical`.
    pub kind: String,
    /// Abstract types (Resource, DomainResource, Element, ...) have no instances.
    #[serde(rename = "abstract")]
    pub is_abstract: bool,
    /// `specialization` or `constraint`.
    pub derivation: Option<String>,
    /// The type defined.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Canonical URL of the type this one specializes or constrains.
    pub base_definition: Option<String>,
    /// The snapshot element list.
    pub snapshot: Option<Snapshot>,
}

/// A snapshot.
#[derive(Debug, Deserialize)]
pub struct Snapshot {
    /// Elements in tree (pre-)order.
    pub element: Vec<ElementDefinition>,
}

/// ElementDefinition: the parts used to build the type model.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ElementDefinition {
    /// Dotted path, e.g. `Observation.value[x]`.
    pub path: String,
    /// Minimum cardinality.
    #[serde(default)]
    pub min: u32,
    /// Maximum cardinality: a number or `*`.
    #[serde(default)]
    pub max: Option<String>,
    /// Allowed types.
    #[serde(default, rename = "type")]
    pub types: Vec<TypeRefDefinition>,
    /// `#Path` of an element whose definition is reused (recursion).
    pub content_reference: Option<String>,
    /// Terminology binding.
    pub binding: Option<BindingDefinition>,
    /// Part of the `_summary=true` view.
    #[serde(default)]
    pub is_summary: bool,
}

/// One allowed type of an element.
#[derive(Debug, Deserialize)]
pub struct TypeRefDefinition {
    /// The type code, e.g. `string`, `CodeableConcept` or a FHIRPath system type URL.
    pub code: String,
    /// Extensions (carry the FHIR type of system-typed elements).
    #[serde(default)]
    pub extension: Vec<ExtensionDefinition>,
    /// Allowed reference targets (profiles of the targets).
    #[serde(default, rename = "targetProfile")]
    pub target_profile: Vec<String>,
}

/// An extension on a definition element; only URL-valued ones are read.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionDefinition {
    /// Extension URL.
    pub url: String,
    /// `valueUrl`, when present.
    pub value_url: Option<String>,
}

/// A terminology binding.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BindingDefinition {
    /// `required`, `extensible`, `preferred` or `example`.
    pub strength: String,
    /// Canonical URL of the value set (may carry `|version`).
    pub value_set: Option<String>,
}

/// SearchParameter: the parts fhirlake uses.
#[derive(Debug, Deserialize, Clone)]
pub struct SearchParameter {
    /// Logical id.
    pub id: String,
    /// Canonical URL.
    #[serde(default)]
    pub url: String,
    /// The code used in URLs.
    pub code: String,
    /// Resource types the parameter applies to.
    #[serde(default)]
    pub base: Vec<String>,
    /// string, token, reference, date, number, quantity, uri, composite, special.
    #[serde(rename = "type")]
    pub param_type: String,
    /// FHIRPath expression.
    pub expression: Option<String>,
    /// Reference target types.
    #[serde(default)]
    pub target: Vec<String>,
    /// Components of a composite parameter.
    #[serde(default)]
    pub component: Vec<SearchParameterComponent>,
}

/// One component of a composite SearchParameter.
#[derive(Debug, Deserialize, Clone)]
pub struct SearchParameterComponent {
    /// Canonical URL of the component's own SearchParameter.
    pub definition: String,
    /// FHIRPath relative to each item of the composite's expression.
    pub expression: String,
}

/// CompartmentDefinition.
#[derive(Debug, Deserialize)]
pub struct CompartmentDefinition {
    /// Compartment type, e.g. `Patient`.
    pub code: String,
    /// Per-resource membership rules.
    #[serde(default)]
    pub resource: Vec<CompartmentResource>,
}

/// Which search parameters link a resource type to the compartment.
#[derive(Debug, Deserialize)]
pub struct CompartmentResource {
    /// Resource type.
    pub code: String,
    /// Search parameter codes; `{def}` means the compartment resource itself.
    #[serde(default)]
    pub param: Vec<String>,
}

/// ValueSet: enough to expand simple enumerations.
#[derive(Debug, Deserialize)]
pub struct ValueSet {
    /// Canonical URL.
    pub url: String,
    /// Composition rules.
    pub compose: Option<ValueSetCompose>,
}

/// ValueSet.compose.
#[derive(Debug, Deserialize)]
pub struct ValueSetCompose {
    /// Included systems / concepts / value sets.
    #[serde(default)]
    pub include: Vec<ValueSetInclude>,
    /// Excluded concepts.
    #[serde(default)]
    pub exclude: Vec<ValueSetInclude>,
}

/// ValueSet.compose.include.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValueSetInclude {
    /// Code system URL.
    pub system: Option<String>,
    /// Explicit concepts.
    #[serde(default)]
    pub concept: Vec<CodeOnly>,
    /// Filters (make the set not enumerable here).
    #[serde(default)]
    pub filter: Vec<serde::de::IgnoredAny>,
    /// Other value sets included.
    #[serde(default)]
    pub value_set: Vec<String>,
}

/// A concept reduced to its code, with nested concepts.
#[derive(Debug, Deserialize)]
pub struct CodeOnly {
    /// The code.
    pub code: String,
    /// Child concepts (CodeSystem hierarchies).
    #[serde(default)]
    pub concept: Vec<CodeOnly>,
}

/// CodeSystem: its URL and concepts.
#[derive(Debug, Deserialize)]
pub struct CodeSystem {
    /// Canonical URL.
    pub url: String,
    /// `complete`, `fragment`, `not-present`, ...
    pub content: Option<String>,
    /// Concepts.
    #[serde(default)]
    pub concept: Vec<CodeOnly>,
}

fn decode(name: &str, gz: &[u8]) -> Result<DefinitionBundle> {
    let mut text = Vec::new();
    if gz.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut text)
            .map_err(|e| Error::Definitions(format!("{name}: {e}")))?;
    } else {
        text.extend_from_slice(gz);
    }
    serde_json::from_slice(&text).map_err(|e| Error::Definitions(format!("{name}: {e}")))
}

/// All embedded bundles, decoded.
pub struct Definitions {
    /// Every StructureDefinition (types and resources).
    pub structures: Vec<StructureDefinition>,
    /// Every SearchParameter.
    pub search_parameters: Vec<SearchParameter>,
    /// Every CompartmentDefinition.
    pub compartments: Vec<CompartmentDefinition>,
    /// Every ValueSet.
    pub value_sets: Vec<ValueSet>,
    /// Every CodeSystem.
    pub code_systems: Vec<CodeSystem>,
}

impl Definitions {
    /// Decodes the embedded definition bundles.
    pub fn load() -> Result<Self> {
        let mut d = Definitions {
            structures: Vec::new(),
            search_parameters: Vec::new(),
            compartments: Vec::new(),
            value_sets: Vec::new(),
            code_systems: Vec::new(),
        };
        for (name, gz) in [
            ("profiles-types", PROFILES_TYPES),
            ("profiles-resources", PROFILES_RESOURCES),
            ("search-parameters", SEARCH_PARAMETERS),
            ("valuesets", VALUESETS),
            ("sql-on-fhir", SQL_ON_FHIR),
        ] {
            for entry in decode(name, gz)?.entry {
                match entry.resource {
                    DefinitionResource::StructureDefinition(s) => d.structures.push(s),
                    DefinitionResource::SearchParameter(s) => d.search_parameters.push(s),
                    DefinitionResource::CompartmentDefinition(c) => d.compartments.push(c),
                    DefinitionResource::ValueSet(v) => d.value_sets.push(v),
                    DefinitionResource::CodeSystem(c) => d.code_systems.push(c),
                    DefinitionResource::Other => {}
                }
            }
        }
        Ok(d)
    }
}
