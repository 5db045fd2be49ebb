//! Version semantics: create, update, no-op update, If-Match, delete, vread, history.

use axum::http::Method;
use fhirlake_schemas::Json;

use crate::common::TestServer;

fn patient(id: &str, family: &str) -> String {
    format!(r#"{{"resourceType":"Patient","id":"{id}","name":[{{"family":"{family}"}}],"gender":"male"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_update_delete_gives_versions_and_history() {
    let s = TestServer::start().await;
    // create (POST assigns a time-ordered id)
    let r = s.post("/fhir/Patient", r#"{"resourceType":"Patient","name":[{"family":"One"}],"gender":"male"}"#).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    assert!(r.header("last-modified").is_some());
    let id = r.json().get("id").and_then(Json::as_str).unwrap().to_string();
    assert_eq!(id.len(), 36, "UUID id: {id}");
    assert_eq!(r.header("location"), Some(format!("http://fhirlake.test/fhir/Patient/{id}/_history/1").as_str()));

    // update twice
    let r = s.put(&format!("/fhir/Patient/{id}"), &patient(&id, "Two")).await;
    assert_eq!((r.status.as_u16(), r.header("etag")), (200, Some("W/\"2\"")), "{}", r.body);
    let r = s.put(&format!("/fhir/Patient/{id}"), &patient(&id, "Three")).await;
    assert_eq!(r.header("etag"), Some("W/\"3\""));

    // a no-change update makes no version
    let r = s.put(&format!("/fhir/Patient/{id}"), &patient(&id, "Three")).await;
    assert_eq!((r.status.as_u16(), r.header("etag")), (200, Some("W/\"3\"")));

    // stale If-Match: 412 and nothing changes
    let r = s
        .request(Method::PUT, &format!("/fhir/Patient/{id}"), Some(&patient(&id, "Stale")), &[("if-match", "W/\"2\"")])
        .await;
    assert_eq!(r.status, 412, "{}", r.body);
    assert_eq!(r.json().get("resourceType").and_then(Json::as_str), Some("OperationOutcome"));
    let r = s.get(&format!("/fhir/Patient/{id}")).await;
    assert!(r.body.contains("Three") && !r.body.contains("Stale"));
    // matching If-Match succeeds
    let r = s
        .request(Method::PUT, &format!("/fhir/Patient/{id}"), Some(&patient(&id, "Four")), &[("if-match", "W/\"3\"")])
        .await;
    assert_eq!(r.header("etag"), Some("W/\"4\""), "{}", r.body);

    // delete, then read -> 410
    let r = s.request(Method::DELETE, &format!("/fhir/Patient/{id}"), None, &[]).await;
    assert_eq!(r.status, 204);
    let r = s.get(&format!("/fhir/Patient/{id}")).await;
    assert_eq!(r.status, 410, "{}", r.body);

    // vread every version
    for (v, family) in [(1, "One"), (2, "Two"), (3, "Three"), (4, "Four")] {
        let r = s.get(&format!("/fhir/Patient/{id}/_history/{v}")).await;
        assert_eq!(r.status, 200, "v{v}: {}", r.body);
        assert!(r.body.contains(family), "v{v}: {}", r.body);
        let meta = r.json().get("meta").cloned().unwrap();
        assert_eq!(meta.get("versionId").and_then(Json::as_str), Some(v.to_string().as_str()));
    }
    assert_eq!(s.get(&format!("/fhir/Patient/{id}/_history/5")).await.status, 410);
    assert_eq!(s.get(&format!("/fhir/Patient/{id}/_history/9")).await.status, 404);

    // history: all versions, newest first
    let h = s.get(&format!("/fhir/Patient/{id}/_history")).await;
    assert_eq!(h.status, 200);
    let h = h.json();
    assert_eq!(h.get("type").and_then(Json::as_str), Some("history"));
    let Some(Json::Array(entries)) = h.get("entry") else { panic!("no entries") };
    let methods: Vec<&str> = entries
        .iter()
        .map(|e| e.get("request").and_then(|r| r.get("method")).and_then(Json::as_str).unwrap())
        .collect();
    assert_eq!(methods, ["DELETE", "PUT", "PUT", "PUT", "POST"]);

    // paging: _count=2 gives a next link that continues without repeats
    let page1 = s.get(&format!("/fhir/Patient/{id}/_history?_count=2")).await.json();
    let next = link(&page1, "next").expect("next link");
    let rel = next.strip_prefix("http://fhirlake.test").unwrap();
    let page2 = s.get(rel).await.json();
    let Some(Json::Array(p2)) = page2.get("entry") else { panic!() };
    assert_eq!(p2.len(), 2);
    assert!(p2[0].get("response").unwrap().get("etag").unwrap().as_str() == Some("W/\"3\""));

    // type and system history see the versions too
    let t = s.get("/fhir/Patient/_history").await.json();
    let Some(Json::Array(te)) = t.get("entry") else { panic!() };
    assert_eq!(te.len(), 5);
    let sys = s.get("/fhir/_history?_count=3").await.json();
    let Some(Json::Array(se)) = sys.get("entry") else { panic!() };
    assert_eq!(se.len(), 3);

    // _since excludes older versions
    let r = s.get("/fhir/Patient/_history?_since=2999-01-01T00:00:00Z").await.json();
    assert!(matches!(r.get("entry"), Some(Json::Array(a)) if a.is_empty()));
    s.stop().await;
}

fn link(bundle: &Json, rel: &str) -> Option<String> {
    let Some(Json::Array(links)) = bundle.get("link") else { return None };
    links
        .iter()
        .find(|l| l.get("relation").and_then(Json::as_str) == Some(rel))
        .and_then(|l| l.get("url"))
        .and_then(Json::as_str)
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_and_trailing_slash_and_gzip_and_metadata() {
    let s = TestServer::start().await;
    let body = r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1.50}}"#;
    let r = s.request(Method::POST, "/fhir/Observation/", Some(body), &[("prefer", "return=minimal")]).await;
    assert_eq!(r.status, 201);
    assert!(r.body.is_empty());
    let loc = r.header("location").unwrap().to_string();
    let id = loc.split('/').nth_back(2).unwrap().to_string();
    let r = s.request(Method::POST, "/fhir/Observation", Some(body), &[("prefer", "return=OperationOutcome")]).await;
    assert!(r.body.contains("OperationOutcome"));
    let r = s.get(&format!("/fhir/Observation/{id}")).await;
    assert!(r.body.contains(r#""value":1.50"#), "decimal kept as written: {}", r.body);
    let r = s.request(Method::GET, "/fhir/metadata", None, &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let r = s.get("/fhir/metadata").await.json();
    assert_eq!(r.get("fhirVersion").and_then(Json::as_str), Some("4.0.1"));
    let health = s.get("/health").await;
    assert_eq!(health.status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_bundles_are_atomic_and_rewrite_references() {
    let s = TestServer::start().await;
    let tx = r#"{"resourceType":"Bundle","type":"transaction","entry":[
      {"fullUrl":"urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a","resource":{"resourceType":"Patient","name":[{"family":"Tx"}]},
       "request":{"method":"POST","url":"Patient"}},
      {"resource":{"resourceType":"Observation","status":"final","code":{"text":"hr"},
        "subject":{"reference":"urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}},"request":{"method":"POST","url":"Observation"}}]}"#;
    let r = s.post("/fhir", tx).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let b = r.json();
    let Some(Json::Array(entries)) = b.get("entry") else { panic!() };
    let pid = entries[0].get("resource").unwrap().get("id").and_then(Json::as_str).unwrap().to_string();
    let subject =
        entries[1].get("resource").unwrap().get("subject").unwrap().get("reference").unwrap().as_str().unwrap();
    assert_eq!(subject, format!("Patient/{pid}"));
    let rows = s.sql("SELECT _patient, subject._target_id AS t FROM observation").await;
    assert_eq!(rows[0]["_patient"], serde_json::json!(pid));

    // an invalid entry fails the whole transaction; nothing is stored
    let bad = r#"{"resourceType":"Bundle","type":"transaction","entry":[
      {"resource":{"resourceType":"Patient","name":[{"family":"Kept?"}]},"request":{"method":"POST","url":"Patient"}},
      {"resource":{"resourceType":"Patient","gender":"nope"},"request":{"method":"POST","url":"Patient"}}]}"#;
    let r = s.post("/fhir/", bad).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("Bundle.entry[1]"), "{}", r.body);
    let n = s.sql("SELECT count(*) AS n FROM patient").await;
    assert_eq!(n[0]["n"], serde_json::json!(1));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_operation_reports_without_storing() {
    let s = TestServer::start().await;
    let ok = s.post("/fhir/Patient/$validate", r#"{"resourceType":"Patient","gender":"male"}"#).await;
    assert_eq!(ok.status, 200);
    assert!(ok.body.contains(r#""severity":"information""#), "{}", ok.body);
    let bad = s.post("/fhir/Patient/$validate", r#"{"resourceType":"Patient","gender":"m"}"#).await;
    assert_eq!(bad.status, 200);
    assert!(bad.body.contains(r#""severity":"error""#) && bad.body.contains("Patient.gender"), "{}", bad.body);
    let wrapped = r#"{"resourceType":"Parameters","parameter":[{"name":"resource","resource":{"resourceType":"Patient","birthDate":"x"}}]}"#;
    let r = s.post("/fhir/Patient/$validate", wrapped).await;
    assert!(r.body.contains("Patient.birthDate"), "{}", r.body);
    assert!(
        s.flushed().await.get(fhirlake_ingest::TableKind::Current, "Patient").is_none(),
        "$validate stored something"
    );
    s.stop().await;
}
