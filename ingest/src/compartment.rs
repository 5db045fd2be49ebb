//! Patient-compartment membership of a resource.
//!
//! Owns: finding every patient whose compartment holds a resource, per the R4 Patient
//! CompartmentDefinition: for each of the type's compartment parameters, the parameter's
//! FHIRPath expression is reduced to its simple element paths for that type (e.g.
//! `Observation.subject.where(resolve() is Patient)` -> `subject`), which are followed in
//! the resource; references to `Patient/<id>` found there are the members. A Patient is
//! in its own compartment. The first member found, in parameter order, is the owner.
//! Must not: evaluate general FHIRPath (the FHIRPath engine does that for search).

use std::collections::HashMap;

use fhirlake_schemas::{Json, Model};

use crate::flatten::reference_target;

/// Compartment paths of every resource type, precomputed from the model.
#[derive(Debug, Default)]
pub struct PatientCompartment {
    paths: HashMap<String, Vec<Vec<String>>>,
}

impl PatientCompartment {
    /// Builds the element paths of every type from the R4 definitions.
    pub fn new(model: &Model) -> Self {
        let paths = model.resource_types().iter().map(|rt| (rt.clone(), model.patient_compartment_paths(rt))).collect();
        Self { paths }
    }

    /// (owner, all members) of `resource`, a resource of type `rt` with id `id`.
    pub fn members(&self, rt: &str, id: &str, resource: &Json) -> (Option<String>, Vec<String>) {
        let mut members: Vec<String> = Vec::new();
        if rt == "Patient" {
            members.push(id.to_string());
        }
        for path in self.paths.get(rt).map(Vec::as_slice).unwrap_or(&[]) {
            let mut nodes = vec![resource];
            for seg in path {
                nodes = nodes
                    .into_iter()
                    .filter_map(|n| n.get(seg))
                    .flat_map(|v| match v {
                        Json::Array(items) => items.iter().collect::<Vec<_>>(),
                        other => vec![other],
                    })
                    .collect();
            }
            for n in nodes {
                if let Some(("Patient", pid)) =
                    n.get("reference").and_then(Json::as_str).filter(|r| !r.contains("://")).and_then(reference_target)
                    && !members.iter().any(|m| m == pid)
                {
                    members.push(pid.to_string());
                }
            }
        }
        (members.first().cloned(), members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirlake_schemas::json::ParseLimits;

    #[test]
    fn observation_members_include_performers() {
        let c = PatientCompartment::new(Model::r4().unwrap());
        let obs = r#"{"resourceType":"Observation","subject":{"reference":"Patient/a"},
            "performer":[{"reference":"Practitioner/x"},{"reference":"Patient/b"}]}"#;
        let json = Json::parse(obs.as_bytes(), ParseLimits::default()).unwrap();
        assert_eq!(c.members("Observation", "o", &json), (Some("a".into()), vec!["a".into(), "b".into()]));
        let foreign = r#"{"resourceType":"Observation","subject":{"reference":"http://other.example/fhir/Patient/a"}}"#;
        let json = Json::parse(foreign.as_bytes(), ParseLimits::default()).unwrap();
        assert_eq!(c.members("Observation", "o", &json), (None, vec![]), "another server's patient is nobody here");
        let org = Json::parse(br#"{"resourceType":"Organization"}"#, ParseLimits::default()).unwrap();
        assert_eq!(c.members("Organization", "o", &org), (None, vec![]));
    }
}
