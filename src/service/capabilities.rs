//! `GET [base]/metadata`: the CapabilityStatement.
//!
//! Owns: stating exactly what this server supports. Every interaction listed here has a
//! route and a test; keep it that way when adding interactions.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::{AppState, fhir_response};

/// Instance and type interactions supported for every resource type.
pub const TYPE_INTERACTIONS: &[&str] =
    &["read", "vread", "update", "delete", "history-instance", "history-type", "create", "search-type"];
/// System interactions supported.
pub const SYSTEM_INTERACTIONS: &[&str] = &["transaction", "batch", "history-system", "search-system"];

/// The CapabilityStatement handler.
pub fn metadata(state: &AppState) -> Response {
    let resources: Vec<serde_json::Value> = state
        .model
        .resource_types()
        .iter()
        .map(|rt| {
            let index = fhirlake_schemas::search_index::SearchIndex::for_type(state.model, rt);
            let params: Vec<serde_json::Value> = index
                .params
                .iter()
                .map(|p| json!({"name": p.code, "definition": p.url, "type": param_type(&p.kind)}))
                .collect();
            let refs: Vec<String> = index
                .params
                .iter()
                .filter(|p| p.kind == fhirlake_schemas::search_index::ParamKind::Reference)
                .map(|p| format!("{rt}:{}", p.code))
                .collect();
            json!({
                "type": rt,
                "interaction": TYPE_INTERACTIONS.iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": false,
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
                "operation": operations(rt),
                "searchParam": params,
                "searchInclude": refs,
                "searchRevInclude": refs,
            })
        })
        .collect();
    let cs = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-26",
        "publisher": "fhirlake",
        "kind": "instance",
        "software": {"name": "fhirlake", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "fhirlake FHIR R4 lakehouse", "url": state.config.public_base()},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": SYSTEM_INTERACTIONS.iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
        }],
    });
    fhir_response(StatusCode::OK, cs.to_string(), None, None)
}

/// `$validate` everywhere; `$run` (SQL-on-FHIR) and `$materialize` on ViewDefinition.
fn operations(rt: &str) -> serde_json::Value {
    let mut ops =
        vec![json!({"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"})];
    if rt == "ViewDefinition" {
        ops.push(json!({"name": "run", "definition": "http://hl7.org/fhir/uv/sql-on-fhir/OperationDefinition/ViewDefinitionRun"}));
        ops.push(json!({"name": "viewdefinition-run", "definition": "http://hl7.org/fhir/uv/sql-on-fhir/OperationDefinition/ViewDefinitionRun"}));
        ops.push(json!({"name": "materialize", "definition": "https://fhirlake.dev/OperationDefinition/ViewDefinition-materialize"}));
    }
    json!(ops)
}

fn param_type(kind: &fhirlake_schemas::search_index::ParamKind) -> &'static str {
    use fhirlake_schemas::search_index::ParamKind::*;
    match kind {
        Token => "token",
        String => "string",
        Date => "date",
        Number => "number",
        Quantity => "quantity",
        Reference => "reference",
        Uri => "uri",
        Composite(_) => "composite",
    }
}
