//! Write semantics: transactions (Synthea Bundles, atomicity, processing order, conditional
//! references, GET entries, limits, referential-integrity policy), batches, conditional
//! create/update/delete, `If-None-Match`, PATCH (JSON Patch and FHIRPath Patch) and racing
//! writers.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use axum::http::Method;
use fhirlake::config::{ApiConfig, RequestLimits};
use fhirlake_schemas::Json;
use serde_json::json;

use crate::common::{Resp, TestServer, fixtures};

fn entries(b: &Json) -> Vec<Json> {
    b.get("entry").and_then(Json::as_array).map(<[Json]>::to_vec).unwrap_or_default()
}

fn status_of(e: &Json) -> String {
    e.get("response").and_then(|r| r.get("status")).and_then(Json::as_str).unwrap_or("").to_string()
}

fn id_of(r: &Resp) -> String {
    r.json().get("id").and_then(Json::as_str).expect("id").to_string()
}

/// Every `reference` value in a JSON tree.
fn references(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("reference", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => references(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| references(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthea_transaction_bundles_load_with_every_reference_resolving() {
    let s = TestServer::start().await;
    let dir = fixtures().join("synthea/bundles");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("bundles").map(|e| e.expect("entry").path()).collect();
    files.sort();
    assert_eq!(files.len(), 40);
    for chunk in files.chunks(4) {
        let bodies: Vec<String> = chunk.iter().map(|f| std::fs::read_to_string(f).expect("read")).collect();
        let resps = futures::future::join_all(bodies.iter().map(|b| s.post("/fhir", b))).await;
        for (f, r) in chunk.iter().zip(resps) {
            assert_eq!(r.status, 200, "{}: {}", f.display(), &r.body[..r.body.len().min(2000)]);
            let b = r.json();
            assert_eq!(b.get("type").and_then(Json::as_str), Some("transaction-response"));
            assert!(entries(&b).iter().all(|e| status_of(e) == "201 Created"), "{}", f.display());
        }
    }
    // Counts per type, by SQL over the Delta tables.
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("synthea/COUNTS.json")).unwrap()).unwrap();
    let expected = counts["resourceCountsTotal"].as_object().expect("counts");
    let mut ids: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for (rt, n) in expected {
        let rows = s.sql(&format!("SELECT id FROM {rt}")).await;
        assert_eq!(rows.len() as u64, n.as_u64().unwrap(), "{rt}");
        ids.insert(rt.clone(), rows.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect());
    }
    // Every reference in every stored resource names a stored resource.
    let mut checked = 0;
    for rt in expected.keys() {
        for row in s.sql(&format!("SELECT _raw FROM {rt}")).await {
            let raw: serde_json::Value = serde_json::from_str(row["_raw"].as_str().unwrap()).unwrap();
            let mut refs = Vec::new();
            references(&raw, &mut refs);
            for r in refs.into_iter().filter(|r| !r.starts_with('#')) {
                let (t, id) = r.split_once('/').unwrap_or_else(|| panic!("{rt}/{}: reference '{r}'", raw["id"]));
                assert!(ids.get(t).is_some_and(|s| s.contains(id)), "{rt}/{} references missing {r}", raw["id"]);
                checked += 1;
            }
        }
    }
    assert!(checked > 20_000, "only {checked} references checked");

    // A generated transaction of 1,500 entries (500 patients with two observations each).
    let mut e = Vec::new();
    for i in 0..500 {
        let u = format!("urn:uuid:00000000-0000-4000-8000-{i:012}");
        e.push(json!({"fullUrl": u, "resource": {"resourceType": "Patient", "name": [{"family": format!("Gen{i}")}]},
                      "request": {"method": "POST", "url": "Patient"}}));
        for k in 0..2 {
            e.push(
                json!({"resource": {"resourceType": "Observation", "status": "final", "code": {"text": format!("c{k}")},
                          "subject": {"reference": u}}, "request": {"method": "POST", "url": "Observation"}}),
            );
        }
    }
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": e}).to_string();
    let r = s.post("/fhir", &tx).await;
    assert_eq!(r.status, 200, "{}", &r.body[..r.body.len().min(1000)]);
    assert_eq!(entries(&r.json()).len(), 1500);
    let n = s.sql("SELECT count(*) AS n FROM observation o JOIN patient p ON o._patient = p.id WHERE get_field(p.name[1], 'family') LIKE 'Gen%'").await;
    assert_eq!(n[0]["n"], json!(1000));
    s.stop().await;
}

/// The Delta version of every table, and the files under the root.
async fn table_state(s: &TestServer) -> (BTreeMap<String, Option<u64>>, BTreeSet<String>) {
    let versions =
        s.flushed().await.snapshot().into_iter().map(|(k, rt, t)| (format!("{k:?}/{rt}"), t.version())).collect();
    let mut files = BTreeSet::new();
    let root = s.root.url().to_file_path().expect("a local root");
    for dir in ["resources", "history"] {
        for entry in walk(&root.join(dir)) {
            files.insert(entry);
        }
    }
    (versions, files)
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_with_an_invalid_200th_entry_changes_nothing() {
    let s = TestServer::start().await;
    let seed = r#"{"resourceType":"Bundle","type":"transaction","entry":[
      {"resource":{"resourceType":"Patient","id":"keep","name":[{"family":"Before"}]},"request":{"method":"PUT","url":"Patient/keep"}},
      {"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/keep"}},
       "request":{"method":"POST","url":"Observation"}}]}"#;
    assert_eq!(s.post("/fhir", seed).await.status, 200);
    let before = table_state(&s).await;
    let patients_before = s.sql("SELECT id, _version_id, _raw FROM patient ORDER BY id").await;
    let mut e = Vec::new();
    for i in 0..250 {
        let resource = if i == 199 {
            json!({"resourceType": "Observation", "status": "not-a-status", "code": {"text": "bad"}})
        } else if i == 0 {
            json!({"resourceType": "Patient", "id": "keep", "name": [{"family": "After"}]})
        } else {
            json!({"resourceType": "Observation", "status": "final", "code": {"text": format!("o{i}")}})
        };
        let request = if i == 0 {
            json!({"method": "PUT", "url": "Patient/keep"})
        } else {
            json!({"method": "POST", "url": "Observation"})
        };
        e.push(json!({"resource": resource, "request": request}));
    }
    e.push(json!({"request": {"method": "DELETE", "url": "Observation?code=x"}}));
    let r = s.post("/fhir", &json!({"resourceType": "Bundle", "type": "transaction", "entry": e}).to_string()).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let oo = r.json();
    assert_eq!(oo.get("resourceType").and_then(Json::as_str), Some("OperationOutcome"));
    assert!(r.body.contains("Bundle.entry[199]"), "{}", r.body);
    assert_eq!(table_state(&s).await, before, "the Delta tables changed");
    assert_eq!(s.sql("SELECT id, _version_id, _raw FROM patient ORDER BY id").await, patients_before);
    let read = s.get("/fhir/Patient/keep").await;
    assert!(read.body.contains("Before"), "{}", read.body);
    assert_eq!(read.header("etag"), Some("W/\"1\""));
    let obs = s.get("/fhir/Observation?_summary=count").await.json();
    assert_eq!(obs.get("total"), Some(&Json::Number("1".into())));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_resolve_conditions_order_entries_and_read_after_writing() {
    let s = TestServer::start_with(ApiConfig {
        limits: RequestLimits { max_bundle_entries: 10, ..Default::default() },
        ..Default::default()
    })
    .await;
    let org = r#"{"resourceType":"Organization","identifier":[{"system":"urn:org","value":"1"}],"name":"Clinic"}"#;
    let r = s.post("/fhir/Organization", org).await;
    assert_eq!(r.status, 201);
    let org_id = id_of(&r);
    let old = s
        .post("/fhir/Patient", r#"{"resourceType":"Patient","identifier":[{"system":"urn:mrn","value":"old"}]}"#)
        .await;
    let old_id = id_of(&old);
    let tx = r#"{"resourceType":"Bundle","type":"transaction","entry":[
      {"request":{"method":"GET","url":"Patient?identifier=urn:mrn|new"}},
      {"fullUrl":"urn:uuid:aaaaaaaa-0000-4000-8000-000000000001",
       "resource":{"resourceType":"Organization","identifier":[{"system":"urn:org","value":"1"}],"name":"Clinic again"},
       "request":{"method":"POST","url":"Organization","ifNoneExist":"identifier=urn:org|1"}},
      {"fullUrl":"urn:uuid:aaaaaaaa-0000-4000-8000-000000000002",
       "resource":{"resourceType":"Patient","identifier":[{"system":"urn:mrn","value":"new"}],
         "managingOrganization":{"reference":"urn:uuid:aaaaaaaa-0000-4000-8000-000000000001"},
         "link":[{"other":{"reference":"Patient?identifier=urn:mrn|old"},"type":"replaces"}]},
       "request":{"method":"PUT","url":"Patient?identifier=urn:mrn|new"}},
      {"request":{"method":"DELETE","url":"Patient?identifier=urn:mrn|old"}}]}"#;
    let r = s.post("/fhir", tx).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let e = entries(&r.json());
    // The GET entry runs after the writes: it sees the new patient.
    assert_eq!(status_of(&e[0]), "200 OK");
    let found = entries(e[0].get("resource").unwrap());
    assert_eq!(found.len(), 1, "{}", r.body);
    assert_eq!(
        found[0].get("resource").unwrap().get("identifier").unwrap().to_json_string(),
        r#"[{"system":"urn:mrn","value":"new"}]"#
    );
    // ifNoneExist matched: the existing Organization, and references point to it.
    assert_eq!(status_of(&e[1]), "200 OK");
    assert_eq!(e[1].get("resource").unwrap().get("name").and_then(Json::as_str), Some("Clinic"));
    assert_eq!(status_of(&e[2]), "201 Created");
    let p = e[2].get("resource").unwrap();
    let org_ref = p.get("managingOrganization").unwrap().get("reference").and_then(Json::as_str);
    assert_eq!(org_ref, Some(format!("Organization/{org_id}").as_str()));
    let link = p.get("link").unwrap().as_array().unwrap()[0].get("other").unwrap().get("reference");
    assert_eq!(link.and_then(Json::as_str), Some(format!("Patient/{old_id}").as_str()));
    assert_eq!(status_of(&e[3]), "204 No Content");
    assert_eq!(s.get(&format!("/fhir/Patient/{old_id}")).await.status, 410);
    assert_eq!(s.sql("SELECT count(*) AS n FROM organization").await[0]["n"], json!(1));

    // A conditional reference that matches nothing fails the transaction with 412.
    let tx = r#"{"resourceType":"Bundle","type":"transaction","entry":[
      {"resource":{"resourceType":"Patient","generalPractitioner":[{"reference":"Practitioner?identifier=urn:npi|none"}]},
       "request":{"method":"POST","url":"Patient"}}]}"#;
    let r = s.post("/fhir", tx).await;
    assert_eq!(r.status, 412, "{}", r.body);
    assert!(r.body.contains("matches no resource"), "{}", r.body);

    // Referential-integrity policy: a urn: reference naming no entry is refused (422); a
    // reference to a resource fhirlake does not hold is accepted.
    let tx = r#"{"resourceType":"Bundle","type":"transaction","entry":[
      {"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},
        "subject":{"reference":"urn:uuid:99999999-0000-4000-8000-000000000009"}},"request":{"method":"POST","url":"Observation"}}]}"#;
    let r = s.post("/fhir", tx).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("names no entry") && r.body.contains("Bundle.entry[0]"), "{}", r.body);
    let tx = r#"{"resourceType":"Bundle","type":"transaction","entry":[
      {"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},
        "subject":{"reference":"Patient/not-stored-here"}},"request":{"method":"POST","url":"Observation"}}]}"#;
    assert_eq!(s.post("/fhir", tx).await.status, 200);

    // The entry limit: 413 and nothing stored.
    let many: Vec<_> = (0..11)
        .map(|_| json!({"resource": {"resourceType": "Basic", "code": {"text": "b"}}, "request": {"method": "POST", "url": "Basic"}}))
        .collect();
    let r = s.post("/fhir", &json!({"resourceType": "Bundle", "type": "batch", "entry": many}).to_string()).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("max-bundle-entries"), "{}", r.body);
    assert_eq!(s.get("/fhir/Basic?_summary=count").await.json().get("total"), Some(&Json::Number("0".into())));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_entries_succeed_or_fail_on_their_own() {
    let s = TestServer::start().await;
    assert_eq!(s.put("/fhir/Patient/b1", r#"{"resourceType":"Patient","id":"b1"}"#).await.status, 201);
    let batch = r#"{"resourceType":"Bundle","type":"batch","entry":[
      {"resource":{"resourceType":"Patient","gender":"nope"},"request":{"method":"POST","url":"Patient"}},
      {"resource":{"resourceType":"Patient","name":[{"family":"Ok"}]},"request":{"method":"POST","url":"Patient"}},
      {"resource":{"resourceType":"Patient","id":"b1","active":true},"request":{"method":"PUT","url":"Patient/b1","ifMatch":"W/\"7\""}},
      {"request":{"method":"GET","url":"Patient/b1"}},
      {"request":{"method":"GET","url":"Patient/missing"}},
      {"resource":{"resourceType":"Binary","contentType":"application/json-patch+json",
        "data":"W3sib3AiOiJhZGQiLCJwYXRoIjoiL2FjdGl2ZSIsInZhbHVlIjpmYWxzZX1d"},"request":{"method":"PATCH","url":"Patient/b1"}}]}"#;
    let r = s.post("/fhir", batch).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let e = entries(&r.json());
    assert_eq!(e.len(), 6);
    assert_eq!(status_of(&e[0]), "422 Unprocessable Entity");
    assert!(e[0].get("response").unwrap().get("outcome").is_some());
    assert_eq!(status_of(&e[1]), "201 Created");
    assert_eq!(status_of(&e[2]), "412 Precondition Failed");
    assert_eq!(status_of(&e[3]), "200 OK");
    assert_eq!(status_of(&e[4]), "404 Not Found");
    assert_eq!(status_of(&e[5]), "200 OK", "{}", r.body);
    let b1 = s.get("/fhir/Patient/b1").await;
    assert!(b1.body.contains(r#""active":false"#), "{}", b1.body);
    assert_eq!(b1.header("etag"), Some("W/\"2\""));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_conditional_creates_create_one_resource() {
    let s = TestServer::start().await;
    let body = r#"{"resourceType":"Patient","identifier":[{"system":"urn:race","value":"42"}]}"#;
    let resps =
        futures::future::join_all((0..16).map(|_| {
            s.request(Method::POST, "/fhir/Patient", Some(body), &[("if-none-exist", "identifier=urn:race|42")])
        }))
        .await;
    let created = resps.iter().filter(|r| r.status == 201).count();
    let existing = resps.iter().filter(|r| r.status == 200).count();
    assert_eq!((created, existing), (1, 15), "{:?}", resps.iter().map(|r| r.status).collect::<Vec<_>>());
    let ids: HashSet<String> = resps.iter().map(id_of).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(s.sql("SELECT count(*) AS n FROM patient").await[0]["n"], json!(1));
    // More than one match: 412, nothing created.
    assert_eq!(s.post("/fhir/Patient", body).await.status, 201);
    let r = s.request(Method::POST, "/fhir/Patient", Some(body), &[("if-none-exist", "identifier=urn:race|42")]).await;
    assert_eq!(r.status, 412, "{}", r.body);
    // Criteria fhirlake does not understand are refused, not ignored.
    let r = s.request(Method::POST, "/fhir/Patient", Some(body), &[("if-none-exist", "frobnicate=1")]).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(s.sql("SELECT count(*) AS n FROM patient").await[0]["n"], json!(2));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_puts_with_the_same_if_match_have_one_winner() {
    let s = TestServer::start().await;
    assert_eq!(s.put("/fhir/Patient/r", r#"{"resourceType":"Patient","id":"r"}"#).await.status, 201);
    let bodies: Vec<String> =
        (0..16).map(|i| format!(r#"{{"resourceType":"Patient","id":"r","name":[{{"family":"W{i}"}}]}}"#)).collect();
    let resps = futures::future::join_all(
        bodies.iter().map(|b| s.request(Method::PUT, "/fhir/Patient/r", Some(b), &[("if-match", "W/\"1\"")])),
    )
    .await;
    let winners: Vec<usize> = resps.iter().enumerate().filter(|(_, r)| r.status == 200).map(|(i, _)| i).collect();
    assert_eq!(winners.len(), 1, "{:?}", resps.iter().map(|r| r.status).collect::<Vec<_>>());
    assert!(resps.iter().all(|r| r.status == 200 || r.status == 412));
    let now = s.get("/fhir/Patient/r").await;
    assert_eq!(now.header("etag"), Some("W/\"2\""));
    assert!(now.body.contains(&format!("W{}", winners[0])), "{}", now.body);
    assert_eq!(s.sql("SELECT count(*) AS n FROM history.patient WHERE id = 'r'").await[0]["n"], json!(2));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_update_delete_and_if_none_match() {
    let s = TestServer::start_with(ApiConfig {
        limits: RequestLimits { conditional_delete_max: 5, ..Default::default() },
        ..Default::default()
    })
    .await;
    let body = r#"{"resourceType":"Patient","identifier":[{"system":"urn:c","value":"1"}],"active":true}"#;
    let r = s.put("/fhir/Patient?identifier=urn:c|1", body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = id_of(&r);
    let body2 = r#"{"resourceType":"Patient","identifier":[{"system":"urn:c","value":"1"}],"active":false}"#;
    let r = s.put("/fhir/Patient?identifier=urn:c|1", body2).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(id_of(&r), id);
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    // A body id that differs from the match: 400.
    let r = s.put("/fhir/Patient?identifier=urn:c|1", r#"{"resourceType":"Patient","id":"other"}"#).await;
    assert_eq!(r.status, 400, "{}", r.body);
    // Two matches: 412 for update.
    assert_eq!(s.post("/fhir/Patient", body).await.status, 201);
    assert_eq!(s.put("/fhir/Patient?identifier=urn:c|1", body).await.status, 412);
    // If-None-Match: * creates only when absent.
    let r = s
        .request(
            Method::PUT,
            "/fhir/Patient/inm",
            Some(r#"{"resourceType":"Patient","id":"inm"}"#),
            &[("if-none-match", "*")],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = s
        .request(
            Method::PUT,
            "/fhir/Patient/inm",
            Some(r#"{"resourceType":"Patient","id":"inm","active":true}"#),
            &[("if-none-match", "*")],
        )
        .await;
    assert_eq!(r.status, 412, "{}", r.body);
    // Conditional delete: several matches within the configured maximum are all deleted.
    let r = s.request(Method::DELETE, "/fhir/Patient?identifier=urn:c|1", None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(s.get(&format!("/fhir/Patient/{id}")).await.status, 410);
    assert_eq!(
        s.get("/fhir/Patient?identifier=urn:c|1&_summary=count").await.json().get("total"),
        Some(&Json::Number("0".into()))
    );
    // No match: a successful no-op.
    assert_eq!(s.request(Method::DELETE, "/fhir/Patient?identifier=urn:c|1", None, &[]).await.status, 200);
    // No criteria at all is not a conditional delete.
    assert_eq!(s.request(Method::DELETE, "/fhir/Patient", None, &[]).await.status, 405);
    s.stop().await;

    // With the default (single) policy, two matches refuse the delete.
    let s = TestServer::start().await;
    for _ in 0..2 {
        assert_eq!(s.post("/fhir/Patient", body).await.status, 201);
    }
    let r = s.request(Method::DELETE, "/fhir/Patient?identifier=urn:c|1", None, &[]).await;
    assert_eq!(r.status, 412, "{}", r.body);
    assert_eq!(s.sql("SELECT count(*) AS n FROM patient").await[0]["n"], json!(2));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_patch_and_fhirpath_patch() {
    let s = TestServer::start().await;
    let p = r#"{"resourceType":"Patient","id":"pp","name":[{"family":"Doe","given":["Jo"]}],"gender":"female"}"#;
    assert_eq!(s.put("/fhir/Patient/pp", p).await.status, 201);
    let jp = r#"[{"op":"replace","path":"/name/0/family","value":"Roe"},{"op":"add","path":"/birthDate","value":"1980-02-03"}]"#;
    let r = s
        .request(Method::PATCH, "/fhir/Patient/pp", Some(jp), &[("content-type", "application/json-patch+json")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    let now = s.get("/fhir/Patient/pp").await.json();
    assert_eq!(now.get("birthDate").and_then(Json::as_str), Some("1980-02-03"));
    // FHIRPath Patch with a matching If-Match.
    let fp = r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[
        {"name":"type","valueCode":"replace"},{"name":"path","valueString":"Patient.gender"},{"name":"value","valueCode":"male"}]},
      {"name":"operation","part":[{"name":"type","valueCode":"delete"},{"name":"path","valueString":"Patient.name.given"}]}]}"#;
    let r = s.request(Method::PATCH, "/fhir/Patient/pp", Some(fp), &[("if-match", "W/\"2\"")]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let now = s.get("/fhir/Patient/pp").await.json();
    assert_eq!(now.get("gender").and_then(Json::as_str), Some("male"));
    assert_eq!(now.get("name").unwrap().to_json_string(), r#"[{"family":"Roe"}]"#);
    // A stale If-Match: 412.
    let r = s.request(Method::PATCH, "/fhir/Patient/pp", Some(fp), &[("if-match", "W/\"2\"")]).await;
    assert_eq!(r.status, 412, "{}", r.body);
    // A patch whose result is invalid: 422, nothing stored.
    let bad = r#"[{"op":"replace","path":"/gender","value":"robot"}]"#;
    let r = s
        .request(Method::PATCH, "/fhir/Patient/pp", Some(bad), &[("content-type", "application/json-patch+json")])
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("Patient.gender"), "{}", r.body);
    let unknown = r#"[{"op":"add","path":"/favouriteColour","value":"blue"}]"#;
    let r = s
        .request(Method::PATCH, "/fhir/Patient/pp", Some(unknown), &[("content-type", "application/json-patch+json")])
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    // A patch that cannot apply, or changes the id: 422.
    let r = s
        .request(
            Method::PATCH,
            "/fhir/Patient/pp",
            Some(r#"[{"op":"remove","path":"/telecom"}]"#),
            &[("content-type", "application/json-patch+json")],
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let r = s
        .request(
            Method::PATCH,
            "/fhir/Patient/pp",
            Some(r#"[{"op":"replace","path":"/id","value":"x"}]"#),
            &[("content-type", "application/json-patch+json")],
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(s.get("/fhir/Patient/pp").await.header("etag"), Some("W/\"3\""));
    // Media types, absent resources, conditional patch.
    let r = s.request(Method::PATCH, "/fhir/Patient/pp", Some("x"), &[("content-type", "text/plain")]).await;
    assert_eq!(r.status, 415);
    let r = s
        .request(Method::PATCH, "/fhir/Patient/nobody", Some(jp), &[("content-type", "application/json-patch+json")])
        .await;
    assert_eq!(r.status, 404);
    let r = s
        .request(
            Method::PATCH,
            "/fhir/Patient?family=Roe",
            Some(r#"[{"op":"add","path":"/active","value":true}]"#),
            &[("content-type", "application/json-patch+json")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("etag"), Some("W/\"4\""));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_without_if_match_lose_no_update() {
    let s = TestServer::start().await;
    assert_eq!(s.put("/fhir/Patient/cp", r#"{"resourceType":"Patient","id":"cp"}"#).await.status, 201);
    let patches: Vec<String> =
        (0..8).map(|i| format!(r#"[{{"op":"add","path":"/identifier/-","value":{{"value":"v{i}"}}}}]"#)).collect();
    // The first patch needs the list to exist; create it.
    let init = r#"[{"op":"add","path":"/identifier","value":[{"value":"init"}]}]"#;
    let r = s
        .request(Method::PATCH, "/fhir/Patient/cp", Some(init), &[("content-type", "application/json-patch+json")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let resps = futures::future::join_all(patches.iter().map(|p| {
        s.request(Method::PATCH, "/fhir/Patient/cp", Some(p), &[("content-type", "application/json-patch+json")])
    }))
    .await;
    assert!(
        resps.iter().all(|r| r.status == 200),
        "{:?}",
        resps.iter().map(|r| (r.status, &r.body)).collect::<Vec<_>>()
    );
    let now = s.get("/fhir/Patient/cp").await.json();
    let values: HashSet<String> = now
        .get("identifier")
        .and_then(Json::as_array)
        .unwrap()
        .iter()
        .map(|i| i.get("value").and_then(Json::as_str).unwrap().to_string())
        .collect();
    assert_eq!(values.len(), 9, "{values:?}");
    assert_eq!(s.get("/fhir/Patient/cp").await.header("etag"), Some("W/\"10\""));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_of_the_directory_open_tables_at_the_watermark() {
    let s = TestServer::start().await;
    assert_eq!(s.post("/fhir/Patient", r#"{"resourceType":"Patient"}"#).await.status, 201);
    s.flushed().await;
    let root = s.root.url().to_file_path().expect("local root");
    let path = root.join("_fhirlake/watermark.json");
    let first: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let v1 = first["tables"]["resources/Patient"].as_u64().expect("Patient version in the watermark");
    assert_eq!(first["tables"]["history/Patient"].as_u64(), Some(v1));
    let tx = r#"{"resourceType":"Bundle","type":"transaction","entry":[
      {"resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient"}},
      {"resource":{"resourceType":"Observation","status":"final","code":{"text":"w"}},"request":{"method":"POST","url":"Observation"}}]}"#;
    assert_eq!(s.post("/fhir", tx).await.status, 200);
    s.flushed().await;
    let now: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(now["tables"]["resources/Patient"].as_u64().unwrap() > v1);
    assert_eq!(s.sql("SELECT count(*) AS n FROM patient").await[0]["n"], json!(2));
    // A reader finding the watermark of before the transaction (as it would while the
    // transaction's tables are being committed) sees none of it.
    std::fs::write(&path, first.to_string()).unwrap();
    assert_eq!(s.sql("SELECT count(*) AS n FROM patient").await[0]["n"], json!(1));
    let session = s.session().await;
    let tables = crate::common::sql_rows(
        &session,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .await;
    assert!(
        !tables.iter().any(|t| t["table_name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case("observation"))),
        "{tables:?}"
    );
    s.stop().await;
}
