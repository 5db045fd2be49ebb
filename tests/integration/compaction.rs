//! Compaction under load: 20,000 single-resource writes and 5,000 updates with compaction
//! rounds running concurrently; every row kept exactly once, the active file count within
//! the stated bound, reads by id as fast as after a full compaction.

use std::time::{Duration, Instant};

use axum::http::Method;
use fhirlake_ingest::TableKind;
use fhirlake_ingest::compact::{CompactOptions, active_files};
use futures::StreamExt;
use serde_json::json;

use crate::common::TestServer;

/// Active files, bytes and the largest file of every current and history table.
async fn files(s: &TestServer) -> Vec<(String, usize, i64, i64)> {
    let mut out = Vec::new();
    for (kind, rt, t) in s.flushed().await.snapshot() {
        if matches!(kind, TableKind::Current | TableKind::History) {
            let f = active_files(&t).await.expect("files");
            out.push((
                format!("{}/{rt}", kind.folder()),
                f.len(),
                f.iter().map(|x| x.1).sum(),
                f.iter().map(|x| x.1).max().unwrap_or(0),
            ));
        }
    }
    out.sort();
    out
}

/// Median and p90 of reading `ids` by id through the API.
async fn read_latency(s: &TestServer, ids: &[(String, String)]) -> (Duration, Duration) {
    let mut t = Vec::new();
    for (rt, id) in ids {
        let start = Instant::now();
        let r = s.get(&format!("/fhir/{rt}/{id}")).await;
        t.push(start.elapsed());
        assert_eq!(r.status, 200, "{rt}/{id}: {}", r.body);
    }
    t.sort();
    (t[t.len() / 2], t[t.len() * 9 / 10])
}

/// Concurrent clients (in process): enough for group commits of a few hundred writes, so
/// the debug build in CI gets through 25,000 writes in well under a minute.
const CLIENTS: usize = 512;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_writes_and_five_thousand_updates_stay_compact() {
    // Flushes every few milliseconds: many small files for compaction to merge while the
    // flusher keeps replacing rows in them.
    let flush = fhirlake_ingest::writer::FlushPolicy { interval: Duration::from_millis(20), soft_bytes: 64 << 20 };
    let s = TestServer::start_writing(fhirlake_ingest::WriterOptions { flush, ..Default::default() }).await;
    let opts = CompactOptions { target_file_bytes: 256 << 10, min_small_files: 8, ..Default::default() };
    // 20,000 creates (Patients and Observations) from concurrent clients, with a
    // compaction round after every 2,500 writes running while the next writes arrive.
    let mut ids: Vec<(String, String)> = Vec::new();
    let mut compactions = Vec::new();
    let t0 = Instant::now();
    for chunk in 0..8 {
        let bodies: Vec<(String, String)> = (0..2500)
            .map(|i| {
                let n = chunk * 2500 + i;
                if n % 2 == 0 {
                    (
                        "Patient".to_string(),
                        json!({"resourceType": "Patient", "name": [{"family": format!("F{n}")}]}).to_string(),
                    )
                } else {
                    let p = format!("Patient/p{}", n % 97);
                    (
                        "Observation".to_string(),
                        json!({"resourceType": "Observation", "status": "final",
                        "code": {"text": format!("c{}", n % 13)}, "subject": {"reference": p}, "valueInteger": n})
                        .to_string(),
                    )
                }
            })
            .collect();
        let compacting = {
            let writer = s.state.writer.clone();
            tokio::spawn(async move { writer.compact(opts, &mut |_| {}).await })
        };
        let server = &s;
        // A flush after every 250 writes: many small files, as a slow trickle of writes
        // leaves them.
        for part in bodies.chunks(250) {
            let created: Vec<(String, String)> = futures::stream::iter(part.iter())
                .map(|(rt, b)| async move {
                    let r = server.request(Method::POST, &format!("/fhir/{rt}"), Some(b), &[]).await;
                    assert_eq!(r.status, 201, "{}", r.body);
                    (rt.clone(), r.json().get("id").and_then(fhirlake_schemas::Json::as_str).unwrap().to_string())
                })
                .buffer_unordered(CLIENTS)
                .collect()
                .await;
            ids.extend(created);
            s.flushed().await;
        }
        compactions.push(compacting.await.expect("join").expect("compaction"));
        eprintln!("chunk {chunk}: {:?}", t0.elapsed());
    }
    // 5,000 updates of existing resources, again with a compaction round alongside.
    let compacting = {
        let writer = s.state.writer.clone();
        tokio::spawn(async move { writer.compact(opts, &mut |_| {}).await })
    };
    let mut updated: Vec<(String, String)> = ids.iter().filter(|(rt, _)| rt == "Patient").step_by(4).cloned().collect();
    updated.extend(ids.iter().filter(|(rt, _)| rt == "Observation").step_by(4).cloned());
    assert!(updated.iter().any(|(rt, _)| rt == "Patient") && updated.iter().any(|(rt, _)| rt == "Observation"));
    let server = &s;
    futures::stream::iter(updated.iter())
        .map(|(rt, id)| async move {
            let body = if rt == "Patient" {
                json!({"resourceType": "Patient", "id": id, "name": [{"family": "Updated"}]})
            } else {
                json!({"resourceType": "Observation", "id": id, "status": "amended", "code": {"text": "u"}})
            };
            let r = server.put(&format!("/fhir/{rt}/{id}"), &body.to_string()).await;
            assert_eq!(r.status, 200, "{}", r.body);
        })
        .buffer_unordered(CLIENTS)
        .collect::<Vec<_>>()
        .await;
    compactions.push(compacting.await.expect("join").expect("compaction"));
    eprintln!("updates: {:?}", t0.elapsed());
    let rewritten: usize = compactions.iter().flatten().map(|r| r.rows).sum();
    assert!(rewritten > 0, "no compaction round committed: {compactions:?}");

    // Every row exactly once, with the right version and content.
    let n = s.sql("SELECT count(*) AS n, count(DISTINCT id) AS d FROM patient").await;
    assert_eq!(n[0]["n"], json!(10_000));
    assert_eq!(n[0]["d"], json!(10_000));
    let n = s.sql("SELECT count(*) AS n, count(DISTINCT id) AS d FROM observation").await;
    assert_eq!((n[0]["n"].clone(), n[0]["d"].clone()), (json!(10_000), json!(10_000)));
    let patients_updated = updated.iter().filter(|(rt, _)| rt == "Patient").count();
    let v = s.sql("SELECT _version_id AS v, count(*) AS n FROM patient GROUP BY _version_id ORDER BY v").await;
    assert_eq!(v, vec![json!({"v": 1, "n": 10_000 - patients_updated}), json!({"v": 2, "n": patients_updated})]);
    let u = s.sql("SELECT count(*) AS n FROM observation WHERE status = 'amended' AND _version_id = 2").await;
    assert_eq!(u[0]["n"], json!(5000 - patients_updated));
    let h = s.sql("SELECT count(*) AS n, count(DISTINCT concat(id, '/', CAST(_version_id AS VARCHAR))) AS d FROM history.patient").await;
    let hp = 10_000 + patients_updated;
    assert_eq!((h[0]["n"].clone(), h[0]["d"].clone()), (json!(hp), json!(hp)));

    // A compaction round, as the background compactor runs it: the stated bound holds.
    s.state.writer.compact(opts, &mut |_| {}).await.expect("compact");
    for (table, count, bytes, _) in files(&s).await {
        let bound = (bytes as u64).div_ceil(opts.target_file_bytes) as usize + opts.min_small_files - 1;
        assert!(count <= bound, "{table}: {count} active files, bound {bound} ({bytes} bytes)");
    }
    // Reads by id now vs right after a full compaction.
    let sample: Vec<(String, String)> = ids.iter().step_by(97).take(150).cloned().collect();
    read_latency(&s, &sample[..20]).await; // warm-up
    let before = read_latency(&s, &sample).await;
    s.state.writer.compact(CompactOptions { full: true, ..opts }, &mut |_| {}).await.expect("full compaction");
    read_latency(&s, &sample[..20]).await;
    let after = read_latency(&s, &sample).await;
    assert!(
        before.0 <= after.0 * 2 + Duration::from_millis(5),
        "median read by id {:?} now vs {:?} after a full compaction",
        before.0,
        after.0
    );
    eprintln!(
        "read by id median/p90: {before:?} before, {after:?} after a full compaction; files {:?}",
        files(&s).await
    );
    // Files are written at about the target size, never one file per round.
    for (table, count, _, largest) in files(&s).await {
        assert!(largest as u64 <= 2 * opts.target_file_bytes, "{table}: a {largest}-byte file ({count} files)");
    }
    let n = s.sql("SELECT count(*) AS n, count(DISTINCT id) AS d FROM observation").await;
    assert_eq!((n[0]["n"].clone(), n[0]["d"].clone()), (json!(10_000), json!(10_000)));
    s.stop().await;
}
