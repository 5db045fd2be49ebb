//! Operations basics in process: `/health` while starting and when ready, the correlation
//! id on every answer (errors included). `/metrics` against the real binary is in
//! `tests/python/test_operations.py`.

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::common::TestServer;

#[tokio::test]
async fn health_says_starting_then_ready() {
    let req = Request::get("/health").body(Body::empty()).unwrap();
    let r = fhirlake::api::starting_router().oneshot(req).await.unwrap();
    assert_eq!(r.status(), 503);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains(r#""status":"starting""#));
    let req = Request::get("/fhir/Patient/1").body(Body::empty()).unwrap();
    let r = fhirlake::api::starting_router().oneshot(req).await.unwrap();
    assert_eq!(r.status(), 503, "a FHIR request while starting is refused");
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));

    let s = TestServer::start().await;
    let r = s.get("/health").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, r#"{"status":"ready"}"#));
    s.stop().await;
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let s = TestServer::start().await;
    let r = s.request(axum::http::Method::GET, "/fhir/Patient/nope", None, &[("x-request-id", "abc-1")]).await;
    assert_eq!((r.status.as_u16(), r.header("x-request-id")), (404, Some("abc-1")));
    // An id that is not a short visible token is replaced, not echoed.
    let long = "x".repeat(200);
    let r = s.request(axum::http::Method::GET, "/fhir/metadata", None, &[("x-request-id", &long)]).await;
    let made = r.header("x-request-id").expect("an id is made").to_string();
    assert_ne!(made, long);
    assert_eq!(made.len(), 36);
    s.stop().await;
}

/// Operations run through the service layer say what they touched — type, id, version
/// and Patient-compartment owner — for reads, searches, writes and Bundle entries alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_say_what_they_touched() {
    use axum::http::Method;
    use fhirlake::service::{Operation, Touched, execute, route};
    let s = TestServer::start().await;
    assert_eq!(s.put("/fhir/Patient/p1", r#"{"resourceType":"Patient","id":"p1"}"#).await.status, 201);
    let obs = r#"{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}"#;
    assert_eq!(s.put("/fhir/Observation/o1", obs).await.status, 201);
    let run = |method: Method, path: &str, query: &str, body: &str| {
        let mut op = Operation::new(route(&method, path).unwrap(), query);
        op.body = bytes::Bytes::copy_from_slice(body.as_bytes());
        // The identity a front end gives every caller when authentication is off.
        op.caller.identity = fhirlake::auth::Identity::Open;
        op
    };
    // An operation no front end authenticated is refused: the service fails closed.
    let anonymous = Operation::new(route(&Method::GET, "/Observation/o1").unwrap(), "");
    assert_eq!(execute(&s.state, anonymous).await.unwrap_err().status(), 401);
    let o1 =
        |version| Touched { resource_type: "Observation".into(), id: "o1".into(), version, owner: Some("p1".into()) };
    let read = execute(&s.state, run(Method::GET, "/Observation/o1", "", "")).await.unwrap();
    assert_eq!(read.response.status(), 200);
    assert_eq!(read.touched, vec![o1(Some(1))]);
    let search = execute(&s.state, run(Method::GET, "/Observation", "subject=Patient/p1", "")).await.unwrap();
    assert_eq!(search.touched, vec![o1(None)]);
    let update = obs.replace("final", "amended");
    let written = execute(&s.state, run(Method::PUT, "/Observation/o1", "", &update)).await.unwrap();
    assert_eq!((written.response.status().as_u16(), written.touched.clone()), (200, vec![o1(Some(2))]));
    let batch =
        r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation/o1"}}]}"#;
    let bundle = execute(&s.state, run(Method::POST, "", "", batch)).await.unwrap();
    assert_eq!(bundle.touched, vec![o1(Some(2))], "a Bundle's GET entry runs as an operation of its own");
    let missing = execute(&s.state, run(Method::GET, "/Observation/nope", "", "")).await.unwrap_err();
    assert_eq!(missing.status(), 404);
    s.stop().await;
}

/// When flushes to Delta fail, writes are still acknowledged (they are durable in the
/// serving store, readable by id and found by searches, which read the buffered rows),
/// `/health` says `degraded` with the reason and `/metrics` reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_degraded_while_flushes_fail() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the tables' folder should be: every flush fails.
    std::fs::write(dir.path().join("resources"), b"not a folder").unwrap();
    let root = fhirlake_ingest::StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
    let s = TestServer::start_at(root).await;
    assert_eq!(s.get("/health").await.status, 200);
    let r = s.post("/fhir/Patient", r#"{"resourceType":"Patient","active":true}"#).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let location = r.headers.get("location").and_then(|v| v.to_str().ok()).unwrap().to_string();
    let path = location.split("/fhir/").nth(1).unwrap().split("/_history").next().unwrap().to_string();
    let read = s.get(&format!("/fhir/{path}")).await;
    assert_eq!(read.status, 200, "an acknowledged write is read from the serving store: {}", read.body);
    let search = s.get("/fhir/Patient?active=true").await;
    assert_eq!(search.status, 200, "{}", search.body);
    assert!(search.body.contains(path.split('/').nth(1).unwrap()), "found while unflushed: {}", search.body);
    // The first flush round fails within the flush interval (5 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let r = loop {
        let r = s.get("/health").await;
        if r.status != 200 || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains(r#""status":"degraded""#) && r.body.contains("flushing to Delta"), "{}", r.body);
    let metrics = s.get("/metrics").await.body;
    assert!(metrics.lines().any(|l| l == "fhirlake_flush_failing 1"), "{metrics}");
    assert!(metrics.lines().any(|l| l == "fhirlake_buffered_versions 1"), "{metrics}");
    drop(dir);
}
