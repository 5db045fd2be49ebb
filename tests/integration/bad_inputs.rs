//! A table of bad inputs: each gets the right 4xx OperationOutcome and changes nothing.

use axum::http::Method;
use fhirlake_ingest::TableKind;
use fhirlake_schemas::Json;

use crate::common::TestServer;

struct Case {
    name: &'static str,
    method: Method,
    path: &'static str,
    content_type: Option<&'static str>,
    headers: &'static [(&'static str, &'static str)],
    body: String,
    status: u16,
    /// A location (FHIRPath) the OperationOutcome must name, if any.
    location: Option<&'static str>,
}

fn case(
    name: &'static str,
    method: Method,
    path: &'static str,
    body: &str,
    status: u16,
    location: Option<&'static str>,
) -> Case {
    Case {
        name,
        method,
        path,
        content_type: Some("application/fhir+json"),
        headers: &[],
        body: body.to_string(),
        status,
        location,
    }
}

fn post_patient(name: &'static str, body: &str, status: u16, location: Option<&'static str>) -> Case {
    case(name, Method::POST, "/fhir/Patient", body, status, location)
}

fn obs(extra: &str) -> String {
    format!(r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}}{extra}}}"#)
}

fn cases() -> Vec<Case> {
    let p = Method::POST;
    let deep = format!(r#"{{"resourceType":"Patient","extension":{}1{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
    let ten_mb = format!(r#"{{"resourceType":"Patient","name":[{{"family":"{}"}}]}}"#, "x".repeat(10 * 1024 * 1024));
    let twenty_mb = format!(
        r#"{{"resourceType":"Patient","text":{{"status":"generated","div":"{}"}}}}"#,
        "y".repeat(20 * 1024 * 1024)
    );
    vec![
        post_patient("malformed JSON", "{", 400, None),
        post_patient("trailing comma", r#"{"resourceType":"Patient",}"#, 400, None),
        post_patient("duplicate keys", r#"{"resourceType":"Patient","gender":"male","gender":"female"}"#, 400, None),
        post_patient("empty body", "", 400, None),
        post_patient("invalid escape", r#"{"resourceType":"Patient","gender":"\x"}"#, 400, None),
        post_patient("trailing garbage", r#"{"resourceType":"Patient"} x"#, 400, None),
        post_patient("array instead of resource", "[]", 422, None),
        post_patient("string instead of resource", r#""Patient""#, 422, None),
        post_patient("missing resourceType", r#"{"gender":"male"}"#, 422, None),
        post_patient("unknown resourceType", r#"{"resourceType":"Patientx"}"#, 422, None),
        post_patient("wrong resourceType vs URL", &obs(""), 400, None),
        post_patient("number for code", r#"{"resourceType":"Patient","gender":1}"#, 422, Some("Patient.gender")),
        post_patient(
            "string for boolean",
            r#"{"resourceType":"Patient","active":"true"}"#,
            422,
            Some("Patient.active"),
        ),
        post_patient("unknown element", r#"{"resourceType":"Patient","foo":"bar"}"#, 422, Some("Patient.foo")),
        post_patient(
            "unknown nested element",
            r#"{"resourceType":"Patient","name":[{"familyName":"x"}]}"#,
            422,
            Some("Patient.name[0].familyName"),
        ),
        post_patient(
            "bad date month",
            r#"{"resourceType":"Patient","birthDate":"1970-13-01"}"#,
            422,
            Some("Patient.birthDate"),
        ),
        post_patient(
            "bad date format",
            r#"{"resourceType":"Patient","birthDate":"01/02/1970"}"#,
            422,
            Some("Patient.birthDate"),
        ),
        post_patient(
            "bad day of month",
            r#"{"resourceType":"Patient","birthDate":"2023-02-29"}"#,
            422,
            Some("Patient.birthDate"),
        ),
        case(
            "dateTime without zone",
            p.clone(),
            "/fhir/Observation",
            &obs(r#","effectiveDateTime":"2020-01-01T10:00:00""#),
            422,
            Some("Observation.effectiveDateTime"),
        ),
        case(
            "instant without time",
            p.clone(),
            "/fhir/Observation",
            &obs(r#","issued":"2020-01-01""#),
            422,
            Some("Observation.issued"),
        ),
        post_patient(
            "invalid required code",
            r#"{"resourceType":"Patient","gender":"f"}"#,
            422,
            Some("Patient.gender"),
        ),
        case(
            "invalid status code",
            p.clone(),
            "/fhir/Observation",
            r#"{"resourceType":"Observation","status":"done","code":{"text":"x"}}"#,
            422,
            Some("Observation.status"),
        ),
        post_patient(
            "object for repeating element",
            r#"{"resourceType":"Patient","name":{"family":"x"}}"#,
            422,
            Some("Patient.name"),
        ),
        post_patient(
            "array for single element",
            r#"{"resourceType":"Patient","gender":["male"]}"#,
            422,
            Some("Patient.gender"),
        ),
        post_patient(
            "two choice variants",
            r#"{"resourceType":"Patient","deceasedBoolean":true,"deceasedDateTime":"2020"}"#,
            422,
            Some("Patient.deceasedDateTime"),
        ),
        case(
            "missing required status",
            p.clone(),
            "/fhir/Observation",
            r#"{"resourceType":"Observation","code":{"text":"x"}}"#,
            422,
            Some("Observation.status"),
        ),
        case(
            "missing required code",
            p.clone(),
            "/fhir/Observation",
            r#"{"resourceType":"Observation","status":"final"}"#,
            422,
            Some("Observation.code"),
        ),
        case(
            "decimal as string",
            p.clone(),
            "/fhir/Observation",
            &obs(r#","valueQuantity":{"value":"1.5"}"#),
            422,
            Some("Observation.valueQuantity.value"),
        ),
        post_patient(
            "integer with fraction",
            r#"{"resourceType":"Patient","multipleBirthInteger":1.5}"#,
            422,
            Some("Patient.multipleBirthInteger"),
        ),
        post_patient(
            "integer out of range",
            r#"{"resourceType":"Patient","multipleBirthInteger":3000000000}"#,
            422,
            Some("Patient.multipleBirthInteger"),
        ),
        case(
            "positiveInt zero",
            p.clone(),
            "/fhir/Observation",
            &obs(r#","valueSampledData":{"origin":{"value":1},"period":1,"dimensions":0}"#),
            422,
            Some("Observation.valueSampledData.dimensions"),
        ),
        post_patient("empty string", r#"{"resourceType":"Patient","gender":""}"#, 422, Some("Patient.gender")),
        post_patient("empty array", r#"{"resourceType":"Patient","name":[]}"#, 422, Some("Patient.name")),
        post_patient("null value", r#"{"resourceType":"Patient","gender":null}"#, 422, Some("Patient.gender")),
        post_patient(
            "uri with whitespace",
            r#"{"resourceType":"Patient","implicitRules":"http://a b"}"#,
            422,
            Some("Patient.implicitRules"),
        ),
        post_patient(
            "extension without url",
            r#"{"resourceType":"Patient","extension":[{"valueString":"x"}]}"#,
            422,
            Some("Patient.extension[0]"),
        ),
        post_patient(
            "primitive extension on a complex element",
            r#"{"resourceType":"Patient","_name":{"id":"x"}}"#,
            422,
            Some("Patient._name"),
        ),
        post_patient(
            "invalid contained resource",
            r#"{"resourceType":"Patient","contained":[{"resourceType":"Patient","id":"c","gender":"x"}]}"#,
            422,
            None,
        ),
        post_patient("invalid id format", r#"{"resourceType":"Patient","id":"a_b"}"#, 422, Some("Patient.id")),
        post_patient("10 MB string", &ten_mb, 422, Some("Patient.name[0].family")),
        post_patient("20 MB body", &twenty_mb, 413, None),
        post_patient("10,000-deep nesting", &deep, 400, None),
        Case {
            content_type: Some("text/plain"),
            ..post_patient("unsupported content type", r#"{"resourceType":"Patient"}"#, 415, None)
        },
        Case {
            content_type: Some("application/fhir+xml"),
            ..post_patient("XML content type", "<Patient/>", 415, None)
        },
        case("PUT id mismatch", Method::PUT, "/fhir/Patient/p1", r#"{"resourceType":"Patient","id":"p2"}"#, 400, None),
        case("PUT without id", Method::PUT, "/fhir/Patient/p1", r#"{"resourceType":"Patient"}"#, 400, None),
        case(
            "PUT invalid URL id",
            Method::PUT,
            "/fhir/Patient/a%20b",
            r#"{"resourceType":"Patient","id":"a b"}"#,
            400,
            None,
        ),
        case("PUT wrong type", Method::PUT, "/fhir/Patient/p1", &obs(r#","id":"p1""#), 400, None),
        Case {
            headers: &[("if-match", "abc")],
            ..case(
                "malformed If-Match",
                Method::PUT,
                "/fhir/Patient/p0",
                r#"{"resourceType":"Patient","id":"p0"}"#,
                400,
                None,
            )
        },
        Case {
            headers: &[("if-match", "W/\"7\"")],
            ..case(
                "stale If-Match",
                Method::PUT,
                "/fhir/Patient/p0",
                r#"{"resourceType":"Patient","id":"p0","active":false}"#,
                412,
                None,
            )
        },
        case("unknown resource type in URL", p.clone(), "/fhir/Foo", r#"{"resourceType":"Foo"}"#, 404, None),
        case("PATCH with a FHIR body that is not Parameters", Method::PATCH, "/fhir/Patient/p0", "[]", 400, None),
        Case {
            content_type: Some("application/json-patch+json"),
            ..case(
                "JSON Patch making the resource invalid",
                Method::PATCH,
                "/fhir/Patient/p0",
                r#"[{"op":"add","path":"/gender","value":"robot"}]"#,
                422,
                Some("Patient.gender"),
            )
        },
        Case {
            content_type: Some("application/json-patch+json"),
            ..case("malformed JSON Patch", Method::PATCH, "/fhir/Patient/p0", r#"[{"op":"add"}]"#, 422, None)
        },
        case(
            "conditional update with unknown criteria",
            Method::PUT,
            "/fhir/Patient?frobnicate=1",
            r#"{"resourceType":"Patient"}"#,
            400,
            None,
        ),
        case("DELETE on a type", Method::DELETE, "/fhir/Patient", "", 405, None),
        case("bad _count", Method::GET, "/fhir/Patient/_history?_count=abc", "", 400, None),
        case("bad _since", Method::GET, "/fhir/Patient/_history?_since=yesterday", "", 400, None),
        case(
            "collection Bundle to base",
            p.clone(),
            "/fhir",
            r#"{"resourceType":"Bundle","type":"collection"}"#,
            400,
            None,
        ),
        case("non-Bundle to base", p.clone(), "/fhir", r#"{"resourceType":"Patient"}"#, 400, None),
        case(
            "transaction naming one resource twice",
            p.clone(),
            "/fhir",
            r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Patient","id":"p0"},"request":{"method":"PUT","url":"Patient/p0"}},{"request":{"method":"DELETE","url":"Patient/p0"}}]}"#,
            400,
            None,
        ),
        case(
            "transaction PATCH entry whose resource is not a patch",
            p.clone(),
            "/fhir",
            r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Patient"},"request":{"method":"PATCH","url":"Patient/p0"}}]}"#,
            422,
            Some("Bundle.entry[0].resource"),
        ),
        case(
            "transaction entry with bad method",
            p.clone(),
            "/fhir",
            r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Patient"},"request":{"method":"TRACE","url":"Patient/p0"}}]}"#,
            422,
            Some("Bundle.entry[0].request.method"),
        ),
    ]
}

async fn state_of(s: &TestServer) -> Vec<(String, Option<u64>)> {
    let mut v = Vec::new();
    for rt in ["Patient", "Observation"] {
        for kind in [TableKind::Current, TableKind::History] {
            v.push((format!("{rt}/{kind:?}"), s.flushed().await.get(kind, rt).and_then(|t| t.version())));
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_a_4xx_operation_outcome_and_change_nothing() {
    let s = TestServer::start().await;
    let r = s.put("/fhir/Patient/p0", r#"{"resourceType":"Patient","id":"p0","active":true}"#).await;
    assert_eq!(r.status, 201);
    let r = s.post("/fhir/Observation", &obs("")).await;
    assert_eq!(r.status, 201);
    let before = state_of(&s).await;
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for c in &cases {
        let mut headers: Vec<(&str, &str)> = c.headers.to_vec();
        if let Some(ct) = c.content_type.filter(|_| !c.body.is_empty() || c.method == Method::POST) {
            headers.push(("content-type", ct));
        }
        let body = (!c.body.is_empty() || c.method == Method::POST).then_some(c.body.as_str());
        let r = request_raw(&s, c.method.clone(), c.path, body, &headers).await;
        assert_eq!(r.status.as_u16(), c.status, "{}: {}", c.name, truncate(&r.body));
        let oo = r.json();
        assert_eq!(oo.get("resourceType").and_then(Json::as_str), Some("OperationOutcome"), "{}", c.name);
        assert!(matches!(oo.get("issue"), Some(Json::Array(a)) if !a.is_empty()), "{}", c.name);
        assert_eq!(r.header("content-type"), Some("application/fhir+json; charset=utf-8"), "{}", c.name);
        if let Some(loc) = c.location {
            assert!(
                r.body.contains(&format!("\"{loc}\"")),
                "{}: expected location {loc} in {}",
                c.name,
                truncate(&r.body)
            );
        }
    }
    assert_eq!(state_of(&s).await, before, "a bad input changed a table");
    let n = s.sql("SELECT count(*) AS n FROM patient").await;
    assert_eq!(n[0]["n"], serde_json::json!(1));
    assert_eq!(s.get("/fhir/Patient/p0").await.header("etag"), Some("W/\"1\""));
    s.stop().await;
}

async fn request_raw(
    s: &TestServer,
    m: Method,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> crate::common::Resp {
    // `TestServer::request` adds a FHIR content type to bodies; these cases set their own.
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut b = axum::http::Request::builder().method(m).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(body.map(|x| Body::from(x.to_string())).unwrap_or_else(Body::empty)).unwrap();
    let resp = fhirlake::api::app(s.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let hs = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    crate::common::Resp { status, headers: hs, body: String::from_utf8_lossy(&bytes).into_owned() }
}

fn truncate(s: &str) -> &str {
    &s[..s.len().min(600)]
}

/// A search the engine refuses while planning (here: sorting on a composite parameter) is
/// the client's error, a 400 OperationOutcome, at every endpoint that searches: type search
/// by GET and POST, the `_type` search of the whole server, and a Bundle's GET entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_error_is_a_400_at_every_endpoint() {
    let s = TestServer::start().await;
    assert_eq!(s.post("/fhir/Observation", &obs("")).await.status, 201);
    let bad = "_sort=code-value-quantity";
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let responses = [
        ("GET type search", request_raw(&s, Method::GET, &format!("/fhir/Observation?{bad}"), None, &[]).await),
        ("POST _search", request_raw(&s, Method::POST, "/fhir/Observation/_search", Some(bad), &form).await),
        ("_type search", request_raw(&s, Method::GET, &format!("/fhir?_type=Observation&{bad}"), None, &[]).await),
    ];
    for (name, r) in &responses {
        assert_eq!(r.status.as_u16(), 400, "{name}: {}", truncate(&r.body));
        assert!(r.body.contains("composite"), "{name}: the outcome says why: {}", truncate(&r.body));
        assert_eq!(r.json().get("resourceType").and_then(Json::as_str), Some("OperationOutcome"), "{name}");
    }
    let batch = format!(
        r#"{{"resourceType":"Bundle","type":"batch","entry":[{{"request":{{"method":"GET","url":"Observation?{bad}"}}}}]}}"#
    );
    let r = s.post("/fhir", &batch).await;
    assert_eq!(r.status, 200, "{}", truncate(&r.body));
    let bundle = r.json();
    let entry = &bundle.get("entry").and_then(Json::as_array).expect("entries")[0];
    let status = entry.get("response").and_then(|x| x.get("status")).and_then(Json::as_str);
    assert_eq!(status, Some("400 Bad Request"), "{}", truncate(&r.body));
    s.stop().await;
}
