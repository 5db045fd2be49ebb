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
            "security": security(state),
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

/// The authorization server's endpoints: configured, else under the first issuer.
fn endpoints(state: &AppState) -> Option<(String, String)> {
    let s = &state.auth.settings;
    let issuer = state.auth.validator.as_ref()?.issuers().next()?.to_string();
    let authorize = s.smart_authorize_url.clone().unwrap_or_else(|| format!("{issuer}/authorize"));
    let token = s.smart_token_url.clone().unwrap_or_else(|| format!("{issuer}/token"));
    Some((authorize, token))
}

/// `rest.security`: the SMART-on-FHIR service with the oauth-uris extension when tokens
/// are required; a note that nothing is required otherwise.
fn security(state: &AppState) -> serde_json::Value {
    match endpoints(state) {
        Some((authorize, token)) => json!({
            "cors": true,
            "service": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR"
            }], "text": "OAuth2 bearer tokens (SMART on FHIR v1 and v2 scopes)"}],
            "extension": [{
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [
                    {"url": "authorize", "valueUri": authorize},
                    {"url": "token", "valueUri": token}
                ]
            }],
            "description": "Bearer JWTs from the trusted issuers; roles from the roles claim; SMART scopes enforced for SmartUser tokens"
        }),
        None => {
            json!({"cors": false, "description": "authentication is off (fhirlake serve --auth none): local development only"})
        }
    }
}

/// The scopes this server understands, for `scopes_supported`.
const SCOPES: [&str; 12] = [
    "openid",
    "fhirUser",
    "launch",
    "launch/patient",
    "offline_access",
    "patient/*.read",
    "patient/*.rs",
    "patient/*.cruds",
    "user/*.read",
    "user/*.cruds",
    "system/*.read",
    "system/*.cruds",
];

/// `GET [base]/.well-known/smart-configuration`: unauthenticated, always
/// `application/json`, absolute URLs (404 when authentication is off).
pub fn smart_configuration(state: &AppState, method: &axum::http::Method) -> Response {
    use axum::response::IntoResponse;
    if method != axum::http::Method::GET && method != axum::http::Method::HEAD {
        return crate::error::ApiError::MethodNotAllowed(format!("{method} is not supported here")).into_response();
    }
    let Some((authorize, token)) = endpoints(state) else {
        return crate::error::ApiError::NotFound(
            "authentication is off on this server (fhirlake serve --auth none): there is no SMART configuration".into(),
        )
        .into_response();
    };
    let issuer = state.auth.validator.as_ref().and_then(|v| v.issuers().next()).unwrap_or_default().to_string();
    let doc = json!({
        "issuer": issuer,
        "authorization_endpoint": authorize,
        "token_endpoint": token,
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "code_challenge_methods_supported": ["S256"],
        "response_types_supported": ["code"],
        "scopes_supported": SCOPES,
        "capabilities": [
            "launch-standalone",
            "client-public",
            "client-confidential-symmetric",
            "client-confidential-asymmetric",
            "context-standalone-patient",
            "permission-patient",
            "permission-user",
            "permission-v1",
            "permission-v2"
        ],
    });
    let mut r = (StatusCode::OK, doc.to_string()).into_response();
    r.headers_mut().insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    r
}
