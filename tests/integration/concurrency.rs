//! Group commit under concurrency: 64 clients, every acknowledged write readable, far fewer
//! Delta commits than requests.

use std::sync::atomic::Ordering;

use fhirlake_schemas::Json;
use futures::StreamExt;

use crate::common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_clients_share_commits() {
    let s = TestServer::start().await;
    const CLIENTS: usize = 64;
    const PER_CLIENT: usize = 4;
    let ids: Vec<String> = futures::stream::iter(0..CLIENTS * PER_CLIENT)
        .map(|i| {
            let s = &s;
            async move {
                let body = format!(r#"{{"resourceType":"Patient","name":[{{"family":"C{i}"}}],"gender":"other"}}"#);
                let r = s.post("/fhir/Patient", &body).await;
                assert_eq!(r.status, 201, "{}", r.body);
                r.json().get("id").and_then(Json::as_str).unwrap().to_string()
            }
        })
        .buffer_unordered(CLIENTS)
        .collect()
        .await;
    let requests = ids.len() as u64;
    let commits = s.state.writer.stats().commits.load(Ordering::Relaxed);
    let batches = s.state.writer.stats().batches.load(Ordering::Relaxed);
    println!("{requests} create requests -> {batches} group commits, {commits} Delta commits");
    assert!(commits * 4 <= requests, "{commits} Delta commits for {requests} requests: group commit is not batching");
    for id in &ids {
        let r = s.get(&format!("/fhir/Patient/{id}")).await;
        assert_eq!(r.status, 200, "acknowledged {id} is not readable");
    }
    let n = s.sql("SELECT count(*) AS n FROM patient").await;
    assert_eq!(n[0]["n"], serde_json::json!(requests));
    s.stop().await;
}
