//! Operations basics in process: `/health` while starting and when ready, the correlation
//! id on every answer (errors included). `/metrics` against the real binary is in
//! `tests/python/test_operations.py`.

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
