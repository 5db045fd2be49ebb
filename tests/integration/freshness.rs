//! Read-your-writes with the serving store: writes are acknowledged before they reach Delta
//! (the flush interval is long here), yet every read issued after an acknowledgement —
//! read by id, search, `_summary=count`, `$sql`, `$everything` — reflects it, while other
//! clients keep writing. The expected answers come from a model of what was acknowledged.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::Method;
use fhirlake_schemas::Json;
use serde_json::json;

use crate::common::TestServer;

/// A small deterministic generator (the test must be reproducible).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

const GENDERS: [&str; 3] = ["male", "female", "other"];

fn ids_of(bundle: &Json, rt: &str) -> Vec<String> {
    bundle
        .get("entry")
        .and_then(Json::as_array)
        .map(|es| {
            es.iter()
                .filter_map(|e| e.get("resource"))
                .filter(|r| r.get("resourceType").and_then(Json::as_str) == Some(rt))
                .filter_map(|r| r.get("id").and_then(Json::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn sql_rows(s: &TestServer, query: &str) -> serde_json::Value {
    let r = s.request(Method::POST, "/fhir/$sql", Some(query), &[("content-type", "application/sql")]).await;
    assert_eq!(r.status, 200, "{query}: {}", r.body);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

/// Answers that must not depend on whether the writes were flushed: search ids and totals,
/// SQL over current and history tables.
async fn answers(s: &TestServer) -> Vec<String> {
    let mut out = Vec::new();
    for q in ["/fhir/Patient?_count=1000", "/fhir/Observation?_count=1000&_total=accurate", "/fhir/Patient?gender=male"]
    {
        let b = s.get(q).await.json();
        let mut ids = ids_of(&b, "Patient");
        ids.extend(ids_of(&b, "Observation"));
        ids.sort();
        out.push(format!("{q}: total {:?} ids {ids:?}", b.get("total")));
    }
    for q in [
        "SELECT id, gender, _version_id FROM patient ORDER BY id",
        "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM history.patient",
        "SELECT count(*) AS n, max(_version_id) AS v FROM history.observation",
        "SELECT p.gender, count(*) AS n FROM observation o JOIN patient p ON o._patient = p.id GROUP BY p.gender ORDER BY 1",
    ] {
        out.push(format!("{q}: {}", sql_rows(s, q).await));
    }
    // A ViewDefinition run over the store (compiled plan), rows in id order.
    let view = r#"{"resourceType":"Parameters","parameter":[{"name":"viewResource","resource":{"resourceType":"ViewDefinition","status":"active","resource":"Observation","select":[{"column":[{"name":"id","path":"id"},{"name":"subject","path":"subject.reference"},{"name":"code","path":"code.text"}]}]}}]}"#;
    let r = s.post("/fhir/ViewDefinition/$run?_format=ndjson", view).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut lines: Vec<&str> = r.body.lines().collect();
    lines.sort();
    assert!(lines.iter().any(|l| l.contains("Patient/")), "$run found no Observation: {}", r.body);
    out.push(format!("$run: {lines:?}"));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_after_an_acknowledgement_reflects_it() {
    // Flushes only when a reader needs them: nothing reaches Delta on its own.
    let flush = fhirlake_ingest::writer::FlushPolicy { interval: Duration::from_secs(3600), soft_bytes: 64 << 20 };
    let s = std::sync::Arc::new(
        TestServer::start_writing(fhirlake_ingest::WriterOptions { flush, ..Default::default() }).await,
    );
    // Other clients write Practitioners all along.
    let noise = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut n = 0;
            for i in 0..400 {
                let r = s
                    .post(
                        "/fhir/Practitioner",
                        &json!({"resourceType": "Practitioner", "name": [{"family": format!("N{i}")}]}).to_string(),
                    )
                    .await;
                assert_eq!(r.status, 201, "{}", r.body);
                n += 1;
            }
            n
        })
    };
    let mut rng = Lcg(7);
    // id -> gender of every live Patient; Patient id -> its Observation ids.
    let mut live: BTreeMap<String, &str> = BTreeMap::new();
    let mut observations: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for step in 0..60 {
        match rng.next(4) {
            0 | 1 if live.len() < 40 || step % 2 == 0 => {
                let gender = GENDERS[rng.next(3) as usize];
                let r =
                    s.post("/fhir/Patient", &json!({"resourceType": "Patient", "gender": gender}).to_string()).await;
                assert_eq!(r.status, 201, "{}", r.body);
                let id = r.json().get("id").and_then(Json::as_str).unwrap().to_string();
                let o = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                               "subject": {"reference": format!("Patient/{id}")}});
                let r = s.post("/fhir/Observation", &o.to_string()).await;
                assert_eq!(r.status, 201, "{}", r.body);
                let oid = r.json().get("id").and_then(Json::as_str).unwrap().to_string();
                live.insert(id.clone(), gender);
                observations.insert(id, vec![oid]);
            }
            0..=2 if !live.is_empty() => {
                let id = live.keys().nth(rng.next(live.len() as u64) as usize).unwrap().clone();
                let gender = GENDERS[rng.next(3) as usize];
                let r = s
                    .put(
                        &format!("/fhir/Patient/{id}"),
                        &json!({"resourceType": "Patient", "id": id, "gender": gender}).to_string(),
                    )
                    .await;
                assert_eq!(r.status, 200, "{}", r.body);
                live.insert(id, gender);
            }
            _ if !live.is_empty() => {
                let id = live.keys().nth(rng.next(live.len() as u64) as usize).unwrap().clone();
                let r = s.request(Method::DELETE, &format!("/fhir/Patient/{id}"), None, &[]).await;
                assert!(r.status == 200 || r.status == 204, "{}", r.body);
                live.remove(&id);
            }
            _ => continue,
        }
        // Every reader sees the acknowledged state.
        let gender = GENDERS[step % 3];
        let expected = live.values().filter(|g| **g == gender).count();
        let count = s.get(&format!("/fhir/Patient?gender={gender}&_summary=count")).await;
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&count.body).unwrap()["total"],
            json!(expected),
            "step {step}: {}",
            count.body
        );
        let page = s.get(&format!("/fhir/Patient?gender={gender}&_count=100")).await;
        let mut found = ids_of(&page.json(), "Patient");
        found.sort();
        let want: Vec<String> = live.iter().filter(|(_, g)| **g == gender).map(|(id, _)| id.clone()).collect();
        assert_eq!(found, want, "step {step}: search ids");
        let sql = s
            .request(
                Method::POST,
                "/fhir/$sql",
                Some(&format!("SELECT count(*) AS n FROM patient WHERE gender = '{gender}'")),
                &[("content-type", "application/sql")],
            )
            .await;
        let rows: serde_json::Value = serde_json::from_str(&sql.body).unwrap_or_else(|e| panic!("{e}: {}", sql.body));
        assert_eq!(rows[0]["n"], json!(expected), "step {step}: $sql");
        // `count(*)` with no filter: never answered from Delta's statistics while buffered
        // rows hide some of its rows.
        assert_eq!(sql_rows(&s, "SELECT count(*) AS n FROM patient").await[0]["n"], json!(live.len()), "step {step}");
        if step % 10 == 9 {
            // The live answers equal those of the same store fully flushed.
            let live_answers = answers(&s).await;
            // ... and were answered from the buffered rows, not by flushing first.
            assert!(s.state.writer.tables().buffered_rows() > 0, "step {step}: a read flushed the buffer");
            s.state.writer.sync().await.unwrap();
            assert_eq!(live_answers, answers(&s).await, "step {step}: live and flushed answers differ");
        }
        if let Some((id, obs)) = live.keys().next().map(|id| (id.clone(), observations[id].clone())) {
            let everything = s.get(&format!("/fhir/Patient/{id}/$everything")).await;
            assert_eq!(everything.status, 200, "{}", everything.body);
            assert_eq!(ids_of(&everything.json(), "Observation"), obs, "step {step}: $everything of {id}");
        }
    }
    assert_eq!(noise.await.unwrap(), 400);
    assert_eq!(sql_rows(&s, "SELECT count(*) AS n FROM practitioner").await[0]["n"], json!(400));
    // The same answers from the tables once everything is flushed and the server restarted
    // is what the crash tests check; here: the counts in Delta equal the model.
    let n = s.sql("SELECT count(*) AS n FROM patient").await;
    assert_eq!(n[0]["n"], json!(live.len()));
}

/// Token counts stay exact with writes buffered: while the buffered rows are all new ids,
/// the Delta postings plus the buffered matches; once a buffered write shadows a Delta row,
/// a scan of the union.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_counts_add_the_buffered_matches_to_the_postings() {
    let flush = fhirlake_ingest::writer::FlushPolicy { interval: Duration::from_secs(3600), soft_bytes: 64 << 20 };
    let s = TestServer::start_writing(fhirlake_ingest::WriterOptions { flush, ..Default::default() }).await;
    let put = |id: String, gender: &'static str| {
        let s = &s;
        async move {
            let body = json!({"resourceType": "Patient", "id": id, "gender": gender}).to_string();
            let r = s.put(&format!("/fhir/Patient/{id}"), &body).await;
            assert!(r.status.is_success(), "{}", r.body);
        }
    };
    for i in 0..5 {
        put(format!("d{i}"), "male").await;
    }
    s.state.writer.sync().await.unwrap();
    for i in 0..3 {
        put(format!("b{i}"), "male").await;
    }
    put("f0".into(), "female").await;
    let count = |q: &'static str| {
        let s = &s;
        async move {
            let r = s.get(&format!("/fhir/Patient?{q}&_summary=count&_explain=true")).await;
            assert_eq!(r.status, 200, "{}", r.body);
            let b: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            (b["total"].as_u64().unwrap(), r.body)
        }
    };
    let (n, body) = count("gender=male").await;
    assert_eq!(n, 8, "{body}");
    assert!(
        body.contains("counted from token postings") && body.contains("plus 3 matching rows not in Delta yet"),
        "{body}"
    );
    // An update of a flushed Patient shadows its Delta row: counted over the union.
    put("d0".into(), "female").await;
    let (n, body) = count("gender=male").await;
    assert_eq!(n, 7, "{body}");
    assert!(!body.contains("token postings"), "{body}");
    let r = s.request(Method::DELETE, "/fhir/Patient/b0", None, &[]).await;
    assert!(r.status.is_success(), "{}", r.body);
    assert_eq!(count("gender=male").await.0, 6);
    assert_eq!(count("gender=female").await.0, 2);
    assert!(s.state.writer.tables().buffered_rows() > 0, "the counts did not flush");
    s.state.writer.sync().await.unwrap();
    assert_eq!(count("gender=male").await.0, 6);
    assert!(count("gender=male").await.1.contains("token postings"), "postings again once flushed");
}
