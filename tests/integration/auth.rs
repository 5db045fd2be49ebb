//! Authentication and authorisation over HTTP with real signed tokens: which tokens are
//! refused, what roles and scopes allow, and that a `patient/` token cannot reach another
//! patient's data by any search shape, by SQL or by writing.

use std::path::Path;
use std::time::Duration;

use axum::http::Method;
use base64::Engine as _;
use fhirlake::auth::keys::{self, KeyPair, TokenRequest};
use fhirlake::auth::{Auth, AuthMode, AuthSettings};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use crate::common::{Resp, TestServer};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "http://fhirlake.test/fhir";

struct Keys {
    key: KeyPair,
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Self {
        let key = keys::generate(Algorithm::RS256).expect("key");
        let dir = tempfile::tempdir().expect("dir");
        keys::write(&key, dir.path()).expect("write keys");
        Keys { key, dir }
    }

    fn jwks(&self) -> std::path::PathBuf {
        self.dir.path().join("jwks.json")
    }

    fn token(&self, scope: &str, roles: &[&str], patient: Option<&str>) -> String {
        sign(&self.key, &request(scope, roles, patient))
    }
}

fn request(scope: &str, roles: &[&str], patient: Option<&str>) -> TokenRequest {
    TokenRequest {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        scope: scope.into(),
        patient: patient.map(str::to_string),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        expires_in: 600,
        ..Default::default()
    }
}

fn sign(key: &KeyPair, r: &TokenRequest) -> String {
    keys::mint(&key.private_pem, key.alg, &key.kid, r).expect("mint")
}

async fn server(jwks: &Path, refresh: Duration) -> TestServer {
    let settings = AuthSettings {
        auth: Some(AuthMode::Smart),
        issuer: vec![ISSUER.into()],
        jwks: vec![jwks.display().to_string()],
        jwks_refresh_interval: refresh,
        metrics_token: Some("metrics-secret".into()),
        ..AuthSettings::default()
    };
    let auth = Auth::start(settings, AUDIENCE.into()).await.expect("auth");
    TestServer::start_with_auth(auth).await
}

async fn call(s: &TestServer, method: Method, uri: &str, token: &str, body: Option<&str>) -> Resp {
    let bearer = format!("Bearer {token}");
    let mut headers = vec![("authorization", bearer.as_str())];
    if uri.contains("$sql") {
        headers.push(("content-type", "application/sql"));
    }
    s.request(method, uri, body, &headers).await
}

fn ids(bundle: &Value) -> Vec<String> {
    let mut v: Vec<String> = bundle["entry"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or(&[])
        .iter()
        .filter_map(|e| {
            let r = &e["resource"];
            let (t, id) = (r["resourceType"].as_str()?, r["id"].as_str()?);
            (t != "OperationOutcome").then(|| format!("{t}/{id}"))
        })
        .collect();
    v.sort();
    v
}

fn json_of(r: &Resp) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

/// A JWT with the given header and claims, signed (or not) as asked.
fn forged(header: &Value, claims: &Value, signature: &[u8]) -> String {
    let e = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    format!("{}.{}.{}", e(header.to_string().as_bytes()), e(claims.to_string().as_bytes()), e(signature))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_fail_a_check_are_401_and_change_nothing() {
    let k = Keys::new();
    let s = server(&k.jwks(), Duration::from_secs(3600)).await;
    let admin = k.token("", &["Contributor"], None);
    let patient = r#"{"resourceType":"Patient","name":[{"family":"Ok"}]}"#;
    assert_eq!(call(&s, Method::POST, "/fhir/Patient", &admin, Some(patient)).await.status, 201);
    let now = jsonwebtoken::get_current_timestamp() as i64;
    let other = keys::generate(Algorithm::RS256).expect("key");
    let mut bad: Vec<(&str, String)> = vec![
        ("expired", sign(&k.key, &TokenRequest { expires_in: -3600, ..request("", &["Contributor"], None) })),
        (
            "wrong audience",
            sign(&k.key, &TokenRequest { audience: "http://other/fhir".into(), ..request("", &["Contributor"], None) }),
        ),
        (
            "wrong issuer",
            sign(&k.key, &TokenRequest { issuer: "https://evil.test".into(), ..request("", &["Contributor"], None) }),
        ),
        ("unknown kid", sign(&other, &request("", &["Contributor"], None))),
        ("no token at all", String::new()),
        ("not a JWT", "abc.def".into()),
    ];
    // Not yet valid: nbf an hour ahead, signed properly.
    let claims =
        json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 7200, "nbf": now + 3600, "roles": ["Contributor"]});
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.kid = Some(k.key.kid.clone());
    let nbf = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(k.key.private_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    bad.push(("not yet valid", nbf));
    // A valid token whose payload is altered (roles widened) after signing.
    let valid = k.token("", &["Reader"], None);
    let parts: Vec<&str> = valid.split('.').collect();
    let mut payload: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["roles"] = json!(["Contributor"]);
    let altered = format!(
        "{}.{}.{}",
        parts[0],
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload.to_string()),
        parts[2]
    );
    bad.push(("altered payload", altered));
    let good_claims = json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, "roles": ["Contributor"]});
    bad.push(("alg none", forged(&json!({"alg": "none", "typ": "JWT"}), &good_claims, b"")));
    // HS256 keyed with the public JWKS text (the classic algorithm confusion).
    let public = std::fs::read(k.jwks()).unwrap();
    let mut hs = jsonwebtoken::Header::new(Algorithm::HS256);
    hs.kid = Some(k.key.kid.clone());
    let hs256 =
        jsonwebtoken::encode(&hs, &good_claims, &jsonwebtoken::EncodingKey::from_secret(&public).unwrap()).unwrap();
    bad.push(("HS256 with the public key as secret", hs256));
    for (what, token) in &bad {
        let headers: Vec<(&str, String)> =
            if token.is_empty() { vec![] } else { vec![("authorization", format!("Bearer {token}"))] };
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let read = s.request(Method::GET, "/fhir/Patient", None, &h).await;
        assert_eq!(read.status, 401, "{what}: {}", read.body);
        assert_eq!(read.header("www-authenticate"), Some(r#"Bearer error="invalid_token""#), "{what}");
        assert!(read.body.contains("OperationOutcome"), "{what}");
        assert!(
            !token.is_empty() && !read.body.contains(token.as_str()) || token.is_empty(),
            "{what}: the token is echoed"
        );
        let write = s.request(Method::POST, "/fhir/Patient", Some(patient), &h).await;
        assert_eq!(write.status, 401, "{what}");
    }
    let all = json_of(&call(&s, Method::GET, "/fhir/Patient?_summary=count", &admin, None).await);
    assert_eq!(all["total"], 1, "a refused token wrote nothing");
    // The public documents need no token.
    assert_eq!(s.get("/fhir/metadata").await.status, 200);
    let smart = s.get("/fhir/.well-known/smart-configuration").await;
    assert_eq!((smart.status.as_u16(), smart.header("content-type")), (200, Some("application/json")));
    let doc = json_of(&smart);
    assert_eq!(doc["token_endpoint"], format!("{ISSUER}/token"));
    assert!(doc["capabilities"].as_array().unwrap().contains(&json!("permission-v2")));
    // The in-process router has no peer address: not loopback, so /metrics needs the token.
    assert_eq!(s.get("/metrics").await.status, 401, "metrics are for the operator");
    for (bearer, want) in [("Bearer wrong", 401), ("Bearer metrics-secret", 200)] {
        assert_eq!(s.request(Method::GET, "/metrics", None, &[("authorization", bearer)]).await.status, want);
    }
    let cs = json_of(&s.get("/fhir/metadata").await);
    assert_eq!(cs["rest"][0]["security"]["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_picked_up_without_restart_at_a_limited_rate() {
    let k = Keys::new();
    let s = server(&k.jwks(), Duration::from_secs(1)).await;
    let rotated = keys::generate(Algorithm::ES256).expect("key");
    let token = sign(&rotated, &request("", &["Reader"], None));
    assert_eq!(call(&s, Method::GET, "/fhir/Patient", &token, None).await.status, 401, "not in the JWKS yet");
    let mut set = k.key.jwks.clone();
    set.keys.extend(rotated.jwks.keys.clone());
    std::fs::write(k.jwks(), serde_json::to_string(&set).unwrap()).unwrap();
    // The failed lookup just reloaded the set: the next reload waits for the interval.
    assert_eq!(call(&s, Method::GET, "/fhir/Patient", &token, None).await.status, 401, "rate-limited");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(call(&s, Method::GET, "/fhir/Patient", &token, None).await.status, 200, "picked up");
    assert_eq!(call(&s, Method::GET, "/fhir/Patient", &k.token("", &["Reader"], None), None).await.status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_and_scopes_narrow_them() {
    let k = Keys::new();
    let s = server(&k.jwks(), Duration::from_secs(3600)).await;
    let patient = r#"{"resourceType":"Patient","id":"a","name":[{"family":"A"}]}"#;
    let writer = k.token("", &["Writer"], None);
    assert_eq!(call(&s, Method::PUT, "/fhir/Patient/a", &writer, Some(patient)).await.status, 201);
    let reader = k.token("", &["Reader"], None);
    assert_eq!(call(&s, Method::GET, "/fhir/Patient/a", &reader, None).await.status, 200);
    let denied = call(&s, Method::PUT, "/fhir/Patient/a", &reader, Some(patient)).await;
    assert_eq!(denied.status, 403);
    assert!(denied.body.contains("Writer"), "the 403 names the roles that would do: {}", denied.body);
    assert_eq!(call(&s, Method::POST, "/fhir/$sql", &reader, Some("SELECT 1")).await.status, 403, "SQL needs Analyst");
    assert_eq!(call(&s, Method::DELETE, "/fhir/Patient/a", &k.token("", &["Exporter"], None), None).await.status, 403);
    let analyst = k.token("", &["Analyst"], None);
    assert_eq!(
        call(&s, Method::POST, "/fhir/$sql", &analyst, Some("SELECT count(*) AS n FROM patient")).await.status,
        200
    );
    assert_eq!(
        call(&s, Method::GET, "/fhir/Patient/a", &analyst, None).await.status,
        403,
        "Analyst alone reads no FHIR"
    );
    assert_eq!(call(&s, Method::GET, "/fhir/Patient/a", &k.token("", &[], None), None).await.status, 403);
    // Scopes without SmartUser change nothing; with it they narrow the roles.
    let smart_read = k.token("user/Patient.rs", &["SmartUser"], None);
    assert_eq!(call(&s, Method::GET, "/fhir/Patient/a", &smart_read, None).await.status, 200);
    let w = call(&s, Method::PUT, "/fhir/Patient/a", &smart_read, Some(patient)).await;
    assert_eq!(w.status, 403);
    assert!(w.body.contains(".u"), "the 403 names the missing scope: {}", w.body);
    assert_eq!(call(&s, Method::GET, "/fhir/Observation", &smart_read, None).await.status, 403, "no Observation scope");
    let v1 = k.token("user/*.read", &["SmartUser"], None);
    assert_eq!(call(&s, Method::GET, "/fhir/Patient?_id=a", &v1, None).await.status, 200);
    assert_eq!(call(&s, Method::DELETE, "/fhir/Patient/a", &v1, None).await.status, 403, "v1 read is rs");
    let reader_with_wide_scope = k.token("user/*.cruds", &["Reader", "SmartUser"], None);
    assert_eq!(call(&s, Method::GET, "/fhir/Patient/a", &reader_with_wide_scope, None).await.status, 200);
    // SmartUser grants writes; a scope can never widen a role that lacks them.
    let narrow_role = k.token("user/*.cruds", &["Reader"], None);
    assert_eq!(call(&s, Method::PUT, "/fhir/Patient/a", &narrow_role, Some(patient)).await.status, 403);
    let patient_analyst = k.token("patient/*.rs", &["SmartUser", "Analyst"], Some("a"));
    let m = call(&s, Method::POST, "/fhir/ViewDefinition/v/$materialize", &patient_analyst, None).await;
    assert_eq!(m.status, 403, "a restricted token cannot materialize every row: {}", m.body);
    for unsupported in
        ["user/Patient.rs?name:contains=A", "user/Patient.sr", "user/Patient.rs?general-practitioner.name=x"]
    {
        let t = k.token(unsupported, &["SmartUser"], None);
        let r = call(&s, Method::GET, "/fhir/Patient/a", &t, None).await;
        assert_eq!(r.status, 403, "{unsupported} is refused, not ignored");
    }
    s.stop().await;
}

/// Data of two patients: A (`a`) and B (`b`, family name Zed), an Observation each with
/// the same code and performer, a Condition of A, a shared Practitioner and a
/// Questionnaire (no compartment, not shared).
async fn two_patients(s: &TestServer, admin: &str) {
    let resources = [
        r#"{"resourceType":"Patient","id":"a","name":[{"family":"Able"}]}"#,
        r#"{"resourceType":"Patient","id":"b","name":[{"family":"Zed"}]}"#,
        r#"{"resourceType":"Practitioner","id":"pr","name":[{"family":"Doc"}]}"#,
        r#"{"resourceType":"Questionnaire","id":"q","status":"active"}"#,
        r#"{"resourceType":"Observation","id":"oa","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},"subject":{"reference":"Patient/a"},"performer":[{"reference":"Practitioner/pr"}]}"#,
        r#"{"resourceType":"Observation","id":"ob","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},"subject":{"reference":"Patient/b"},"performer":[{"reference":"Practitioner/pr"}]}"#,
        r#"{"resourceType":"Condition","id":"ca","subject":{"reference":"Patient/a"}}"#,
    ];
    for r in resources {
        let v: Value = serde_json::from_str(r).unwrap();
        let uri = format!("/fhir/{}/{}", v["resourceType"].as_str().unwrap(), v["id"].as_str().unwrap());
        assert_eq!(call(s, Method::PUT, &uri, admin, Some(r)).await.status, 201, "{uri}");
    }
}

async fn sql(s: &TestServer, token: &str, query: &str) -> Vec<Value> {
    let r = call(s, Method::POST, "/fhir/$sql?_format=json", token, Some(query)).await;
    assert_eq!(r.status, 200, "{query}: {}", r.body);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_token_sees_nothing_of_another_patient() {
    let k = Keys::new();
    let s = server(&k.jwks(), Duration::from_secs(3600)).await;
    let admin = k.token("", &["Contributor", "Analyst"], None);
    two_patients(&s, &admin).await;
    let a = k.token("patient/*.rs", &["SmartUser", "Analyst"], Some("a"));
    let get = |uri: &'static str| {
        let (s, a) = (&s, &a);
        async move { call(s, Method::GET, uri, a, None).await }
    };
    for (round, flushed) in [("buffered", false), ("flushed", true)] {
        if flushed {
            s.state.writer.sync().await.unwrap();
        }
        assert_eq!(get("/fhir/Observation/oa").await.status, 200, "{round}");
        assert_eq!(get("/fhir/Observation/ob").await.status, 404, "{round}: outside is 404, not 403");
        assert_eq!(get("/fhir/Observation/ob/_history/1").await.status, 404, "{round}");
        assert_eq!(get("/fhir/Observation/ob/_history").await.status, 404, "{round}");
        assert_eq!(get("/fhir/Patient/b").await.status, 404, "{round}");
        assert_eq!(get("/fhir/Patient/b/$everything").await.status, 404, "{round}");
        let cases: [(&str, &[&str]); 9] = [
            ("/fhir/Observation?subject=Patient/b", &[]),
            ("/fhir/Observation?code=http://loinc.org|8867-4", &["Observation/oa"]),
            ("/fhir/Observation?code=8867-4&_include=Observation:performer", &["Observation/oa", "Practitioner/pr"]),
            ("/fhir/Patient?_revinclude=Observation:subject", &["Observation/oa", "Patient/a"]),
            ("/fhir/Observation?subject:Patient.name=Zed", &[]),
            ("/fhir/Patient?_has:Observation:patient:code=8867-4", &["Patient/a"]),
            ("/fhir/Patient/a/$everything", &["Condition/ca", "Observation/oa", "Patient/a"]),
            ("/fhir/_history", &["Condition/ca", "Observation/oa", "Patient/a", "Practitioner/pr"]),
            ("/fhir/?_type=Observation,Patient,Questionnaire", &["Observation/oa", "Patient/a"]),
        ];
        for (uri, want) in cases {
            let r = get(uri).await;
            assert_eq!(r.status, 200, "{round} {uri}: {}", r.body);
            assert_eq!(ids(&json_of(&r)), *want, "{round} {uri}");
        }
        let count = json_of(&get("/fhir/Observation?code=8867-4&_summary=count").await);
        assert_eq!(count["total"], 1, "{round}: a count sees A's rows only, postings or not");
        assert_eq!(json_of(&get("/fhir/Questionnaire").await)["entry"].as_array().map_or(0, Vec::len), 0);
        // A page link made for another caller reads with this caller's rights.
        let all = json_of(&call(&s, Method::GET, "/fhir/Observation?_count=1&_sort=_id", &admin, None).await);
        let next = crate::common::next_link(&all).expect("two pages for the admin");
        let path = next.strip_prefix("http://fhirlake.test").unwrap().to_string();
        let page = call(&s, Method::GET, &path, &a, None).await;
        assert_eq!(ids(&json_of(&page)), Vec::<String>::new(), "{round}: {path}");
        // SQL: restricted inside every table, whatever the statement's shape.
        let n = |rows: Vec<Value>| rows[0]["n"].as_i64().unwrap();
        assert_eq!(n(sql(&s, &a, "SELECT count(*) AS n FROM observation").await), 1, "{round}");
        let join = sql(&s, &a, "SELECT o.id FROM observation o JOIN patient p ON o._patient = p.id").await;
        assert_eq!(join, vec![json!({"id": "oa"})], "{round}");
        let cte = sql(&s, &a, "WITH x AS (SELECT id FROM observation) SELECT count(*) AS n FROM x").await;
        assert_eq!(n(cte), 1, "{round}");
        let union =
            sql(&s, &a, "SELECT id FROM observation UNION SELECT id FROM history.observation ORDER BY id").await;
        assert_eq!(union, vec![json!({"id": "oa"})], "{round}");
        let raw = sql(&s, &a, "SELECT count(*) AS n FROM observation WHERE _raw LIKE '%Patient/b%'").await;
        assert_eq!(n(raw), 0, "{round}");
        let window = sql(&s, &a, "SELECT id, CAST(row_number() OVER (ORDER BY id) AS BIGINT) AS r FROM patient").await;
        assert_eq!(window, vec![json!({"id": "a", "r": 1})], "{round}");
        let tables = sql(
            &s,
            &a,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name",
        )
        .await;
        let names: Vec<&str> = tables.iter().filter_map(|t| t["table_name"].as_str()).collect();
        assert!(names.contains(&"Observation") && !names.contains(&"Questionnaire"), "{round}: {names:?}");
        let admin_tables = sql(&s, &admin, "SELECT count(*) AS n FROM questionnaire").await;
        assert_eq!(n(admin_tables), 1);
        if flushed {
            let v = s.state.writer.tables().snapshot_of(fhirlake_ingest::TableKind::Current)["Observation"]
                .version()
                .unwrap();
            let q = format!("SELECT count(*) AS n FROM as_of('observation', {v})");
            let r = call(&s, Method::POST, "/fhir/$sql?_format=json", &a, Some(q.as_str())).await;
            assert_eq!(n(serde_json::from_str(&r.body).unwrap()), 1, "time travel is restricted too: {}", r.body);
        }
        let view = r#"{"resourceType":"Parameters","parameter":[{"name":"viewResource","resource":{"resourceType":"ViewDefinition","resource":"Observation","status":"active","select":[{"column":[{"name":"id","path":"id"}]}]}},{"name":"_format","valueString":"json"}]}"#;
        let run = call(&s, Method::POST, "/fhir/ViewDefinition/$run", &a, Some(view)).await;
        assert_eq!(run.status, 200, "{}", run.body);
        assert_eq!(json_of(&run), json!([{"id": "oa"}]), "{round}: $run");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_token_writes_only_inside_its_compartment() {
    let k = Keys::new();
    let s = server(&k.jwks(), Duration::from_secs(3600)).await;
    let admin = k.token("", &["Contributor"], None);
    two_patients(&s, &admin).await;
    let a = k.token("patient/*.cruds", &["SmartUser"], Some("a"));
    let obs = |p: &str| {
        format!(
            r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"subject":{{"reference":"Patient/{p}"}}}}"#
        )
    };
    assert_eq!(call(&s, Method::POST, "/fhir/Observation", &a, Some(&obs("a"))).await.status, 201);
    let for_b = call(&s, Method::POST, "/fhir/Observation", &a, Some(&obs("b"))).await;
    assert_eq!(for_b.status, 403, "{}", for_b.body);
    // Moving B's resource into A's compartment, or deleting it, is refused too.
    let moved = r#"{"resourceType":"Observation","id":"ob","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/a"}}"#;
    assert_eq!(call(&s, Method::PUT, "/fhir/Observation/ob", &a, Some(moved)).await.status, 403);
    assert_eq!(call(&s, Method::DELETE, "/fhir/Observation/ob", &a, None).await.status, 403);
    let read_only = k.token("patient/*.rs", &["SmartUser"], Some("a"));
    assert_eq!(call(&s, Method::POST, "/fhir/Observation", &read_only, Some(&obs("a"))).await.status, 403);
    // A transaction with one entry outside fails whole and writes nothing.
    let tx = format!(
        r#"{{"resourceType":"Bundle","type":"transaction","entry":[{{"request":{{"method":"POST","url":"Observation"}},"resource":{}}},{{"request":{{"method":"POST","url":"Observation"}},"resource":{}}}]}}"#,
        obs("a"),
        obs("b")
    );
    let before =
        json_of(&call(&s, Method::GET, "/fhir/Observation?_summary=count", &admin, None).await)["total"].clone();
    let r = call(&s, Method::POST, "/fhir", &a, Some(&tx)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("entry[1]"), "the 403 names the entry: {}", r.body);
    let after =
        json_of(&call(&s, Method::GET, "/fhir/Observation?_summary=count", &admin, None).await)["total"].clone();
    assert_eq!(before, after, "nothing written");
    // In a batch, the denied entry alone fails.
    let batch = tx.replace("transaction", "batch");
    let r = json_of(&call(&s, Method::POST, "/fhir", &a, Some(&batch)).await);
    let statuses: Vec<&str> =
        r["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["201 Created", "403 Forbidden"]);
    s.stop().await;
}
