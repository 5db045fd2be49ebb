//! Operations: what a request asks for, as a typed value every front end builds.
//!
//! Owns: [`Interaction`] (the FHIR interaction or operation, named as FHIR names it),
//! [`route`] — the one table from a method and a path under the FHIR base to an
//! interaction with its type, id and version (used by the HTTP front end, by Bundle
//! entries, and by the metrics) — and [`Operation`]: interaction, type, id, version,
//! parameters, the request's preferences and preconditions, its body and its caller.
//! Must not: execute anything (the service modules do) or know about sockets.

use axum::http::Method;
use bytes::Bytes;
use fhirlake_ingest::Precondition;

use crate::error::{ApiError, ApiResult};

/// The interactions and operations fhirlake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    /// `GET [base]/metadata`.
    Capabilities,
    /// `GET [base]/{type}/{id}`.
    Read,
    /// `GET [base]/{type}/{id}/_history/{vid}`.
    Vread,
    /// `PUT [base]/{type}/{id}` (update, or update-as-create).
    Update,
    /// `PUT [base]/{type}?criteria`.
    ConditionalUpdate,
    /// `PATCH [base]/{type}/{id}`.
    Patch,
    /// `PATCH [base]/{type}?criteria`.
    ConditionalPatch,
    /// `DELETE [base]/{type}/{id}`.
    Delete,
    /// `DELETE [base]/{type}?criteria`.
    ConditionalDelete,
    /// `POST [base]/{type}` (conditional with `If-None-Exist`).
    Create,
    /// `GET [base]/{type}?...` and `POST [base]/{type}/_search`.
    SearchType,
    /// `GET [base]?_type=...`.
    SearchSystem,
    /// `GET [base]/{type}/{id}/_history`.
    HistoryInstance,
    /// `GET [base]/{type}/_history`.
    HistoryType,
    /// `GET [base]/_history`.
    HistorySystem,
    /// `POST [base]` with a transaction or batch Bundle.
    Bundle,
    /// `GET [base]/Patient/{id}/$everything`.
    Everything,
    /// `POST [base]/{type}/$validate`.
    Validate,
    /// `POST [base]/$sql` (and Flight SQL statements).
    Sql,
    /// `POST [base]/ViewDefinition/$run`, `GET|POST [base]/ViewDefinition/{id}/$run`.
    ViewRun,
    /// `POST [base]/ViewDefinition/{id}/$materialize`.
    Materialize,
}

impl Interaction {
    /// The name metrics and (later) the audit table use: FHIR's restful-interaction code
    /// where there is one, else the operation's name.
    pub fn name(self) -> &'static str {
        match self {
            Interaction::Capabilities => "capabilities",
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Update | Interaction::ConditionalUpdate => "update",
            Interaction::Patch | Interaction::ConditionalPatch => "patch",
            Interaction::Delete | Interaction::ConditionalDelete => "delete",
            Interaction::Create => "create",
            Interaction::SearchType => "search-type",
            Interaction::SearchSystem => "search-system",
            Interaction::HistoryInstance => "history-instance",
            Interaction::HistoryType => "history-type",
            Interaction::HistorySystem => "history-system",
            Interaction::Bundle => "batch-transaction",
            Interaction::Everything => "everything",
            Interaction::Validate => "validate",
            Interaction::Sql => "sql",
            Interaction::ViewRun => "view-run",
            Interaction::Materialize => "materialize",
        }
    }
}

/// What a method and path under the FHIR base name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The interaction.
    pub interaction: Interaction,
    /// The resource type in the path, if any.
    pub resource_type: Option<String>,
    /// The id in the path, if any.
    pub id: Option<String>,
    /// The version in the path (`vread`), as written.
    pub version: Option<String>,
}

/// The interaction `method` on `path` (the part after the FHIR base) names: 404 when no
/// interaction lives at the path, 405 when one does but not for this method. `HEAD` is
/// routed as `GET`.
pub fn route(method: &Method, path: &str) -> ApiResult<Route> {
    use Interaction as I;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let m = if method == Method::HEAD { "GET" } else { method.as_str() };
    let at = |interaction, rt: Option<&str>, id: Option<&str>, version: Option<&str>| {
        Ok(Route {
            interaction,
            resource_type: rt.map(str::to_string),
            id: id.map(str::to_string),
            version: version.map(str::to_string),
        })
    };
    let shown = format!("[base]/{}", segments.join("/"));
    let not_allowed = || Err(ApiError::MethodNotAllowed(format!("{method} is not supported on {shown}")));
    // A path that serves one method.
    let only = |wanted: &str, interaction, rt: Option<&str>, id: Option<&str>, version: Option<&str>| {
        if m == wanted { at(interaction, rt, id, version) } else { not_allowed() }
    };
    match segments.as_slice() {
        [] => match m {
            "GET" => at(I::SearchSystem, None, None, None),
            "POST" => at(I::Bundle, None, None, None),
            _ => not_allowed(),
        },
        ["metadata"] => only("GET", I::Capabilities, None, None, None),
        ["_history"] => only("GET", I::HistorySystem, None, None, None),
        ["$sql"] => only("POST", I::Sql, None, None, None),
        [rt @ "ViewDefinition", "$run" | "$viewdefinition-run"] => only("POST", I::ViewRun, Some(rt), None, None),
        [rt, "_search"] => only("POST", I::SearchType, Some(rt), None, None),
        [rt, "_history"] => only("GET", I::HistoryType, Some(rt), None, None),
        [rt, "$validate"] => only("POST", I::Validate, Some(rt), None, None),
        [rt] => match m {
            "POST" => at(I::Create, Some(rt), None, None),
            "GET" => at(I::SearchType, Some(rt), None, None),
            "PUT" => at(I::ConditionalUpdate, Some(rt), None, None),
            "PATCH" => at(I::ConditionalPatch, Some(rt), None, None),
            "DELETE" => at(I::ConditionalDelete, Some(rt), None, None),
            _ => not_allowed(),
        },
        [rt @ "Patient", id, "$everything"] => only("GET", I::Everything, Some(rt), Some(id), None),
        [rt @ "ViewDefinition", id, "$run"] if m == "POST" => at(I::ViewRun, Some(rt), Some(id), None),
        [rt @ "ViewDefinition", id, "$run"] => only("GET", I::ViewRun, Some(rt), Some(id), None),
        [rt @ "ViewDefinition", id, "$materialize"] => only("POST", I::Materialize, Some(rt), Some(id), None),
        [rt, id] => match m {
            "GET" => at(I::Read, Some(rt), Some(id), None),
            "PUT" => at(I::Update, Some(rt), Some(id), None),
            "PATCH" => at(I::Patch, Some(rt), Some(id), None),
            "DELETE" => at(I::Delete, Some(rt), Some(id), None),
            _ => not_allowed(),
        },
        [rt, id, "_history"] => only("GET", I::HistoryInstance, Some(rt), Some(id), None),
        [rt, id, "_history", vid] => only("GET", I::Vread, Some(rt), Some(id), Some(vid)),
        _ => Err(ApiError::NotFound(format!("no FHIR interaction at {method} {shown}"))),
    }
}

/// What the client prefers and requires (`Prefer`, `If-Match`, `If-None-Match`,
/// `If-None-Exist`, media types), parsed from the request once.
#[derive(Debug, Clone, Default)]
pub struct Preferences {
    /// `Prefer: return=...`.
    pub return_: PreferReturn,
    /// `Prefer: handling=strict`.
    pub strict: bool,
    /// `If-Match`.
    pub if_match: Precondition,
    /// `If-None-Match` as sent (only `*` is supported, on PUT).
    pub if_none_match: Option<String>,
    /// `If-None-Exist` criteria.
    pub if_none_exist: Option<String>,
    /// The body's media type, lower case, without parameters.
    pub content_type: Option<String>,
    /// `Accept`, as sent.
    pub accept: Option<String>,
}

/// What the client asked for with `Prefer: return=...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreferReturn {
    /// The resource (default).
    #[default]
    Representation,
    /// No body.
    Minimal,
    /// An OperationOutcome.
    OperationOutcome,
}

/// Who is asking: the identity the front end authenticated, and where from.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The peer address, when the front end knows it.
    pub address: Option<std::net::SocketAddr>,
    /// `User-Agent`.
    pub user_agent: Option<String>,
    /// The correlation id (`X-Request-Id`).
    pub request_id: Option<String>,
    /// The front end: `http`, `bundle`, `flight`.
    pub channel: &'static str,
    /// Who it is (anonymous until a front end authenticates it: fails closed).
    pub identity: crate::auth::Identity,
}

/// One request to the service.
#[derive(Debug, Clone)]
pub struct Operation {
    /// The interaction.
    pub interaction: Interaction,
    /// The resource type it addresses.
    pub resource_type: Option<String>,
    /// The id it addresses.
    pub id: Option<String>,
    /// The version it addresses (vread), as written.
    pub version: Option<String>,
    /// The query string, undecoded (search parameters, `_count`, `_format`, ...).
    pub query: String,
    /// Preferences and preconditions.
    pub prefs: Preferences,
    /// The body (empty when none).
    pub body: Bytes,
    /// Who asks.
    pub caller: Caller,
    /// What the caller may see and write, decided by `service::execute` (nothing until
    /// then).
    pub access: crate::auth::Access,
}

impl Operation {
    /// An operation on `route` with no body, preferences or caller.
    pub fn new(route: Route, query: &str) -> Self {
        Operation {
            interaction: route.interaction,
            resource_type: route.resource_type,
            id: route.id,
            version: route.version,
            query: query.to_string(),
            prefs: Preferences::default(),
            body: Bytes::new(),
            caller: Caller::default(),
            access: crate::auth::Access::default(),
        }
    }

    /// The resource type (every interaction that reaches for it has one in its route).
    pub fn rt(&self) -> &str {
        self.resource_type.as_deref().unwrap_or("")
    }

    /// The id (likewise).
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or("")
    }

    /// The decoded query parameters, in order.
    pub fn params(&self) -> Vec<(String, String)> {
        decode(&self.query)
    }
}

/// Decodes a query string or form body.
pub fn decode(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.trim_start_matches('?').as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_interactions_by_method_and_path() {
        let cases = [
            ("GET", "/Patient/1", Interaction::Read),
            ("HEAD", "/Patient/1", Interaction::Read),
            ("GET", "/Patient/1/_history/2", Interaction::Vread),
            ("GET", "/Patient/1/_history", Interaction::HistoryInstance),
            ("GET", "/Patient/_history", Interaction::HistoryType),
            ("GET", "/_history", Interaction::HistorySystem),
            ("GET", "/Patient", Interaction::SearchType),
            ("POST", "/Patient/_search", Interaction::SearchType),
            ("GET", "", Interaction::SearchSystem),
            ("POST", "/", Interaction::Bundle),
            ("POST", "/Patient", Interaction::Create),
            ("PUT", "/Patient/1", Interaction::Update),
            ("PUT", "/Patient", Interaction::ConditionalUpdate),
            ("PATCH", "/Patient/1", Interaction::Patch),
            ("DELETE", "/Patient", Interaction::ConditionalDelete),
            ("GET", "/metadata", Interaction::Capabilities),
            ("POST", "/$sql", Interaction::Sql),
            ("GET", "/Patient/1/$everything", Interaction::Everything),
            ("POST", "/ViewDefinition/$run", Interaction::ViewRun),
            ("GET", "/ViewDefinition/v/$run", Interaction::ViewRun),
            ("POST", "/ViewDefinition/v/$materialize", Interaction::Materialize),
            ("POST", "/Patient/$validate", Interaction::Validate),
        ];
        for (m, path, want) in cases {
            let r = route(&Method::from_bytes(m.as_bytes()).unwrap(), path).unwrap();
            assert_eq!(r.interaction, want, "{m} {path}");
        }
        let r = route(&Method::GET, "/Patient/1/_history/2").unwrap();
        assert_eq!(
            (r.resource_type.as_deref(), r.id.as_deref(), r.version.as_deref()),
            (Some("Patient"), Some("1"), Some("2"))
        );
        let status = |m: Method, p: &str| route(&m, p).unwrap_err().status().as_u16();
        assert_eq!(status(Method::DELETE, "/metadata"), 405);
        assert_eq!(status(Method::GET, "/Patient/_search"), 405);
        assert_eq!(status(Method::TRACE, "/Patient/1"), 405);
        assert_eq!(status(Method::GET, "/a/b/c/d/e"), 404);
    }
}
