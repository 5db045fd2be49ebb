//! `POST [base]/$sql`: the catalog's names, output formats, parameters, limits, freshness,
//! and the sandbox (hostile statements refused or cancelled, the server healthy after each).

use std::time::Duration;

use axum::http::Method;
use fhirlake::config::{ApiConfig, QueryLimits, SqlSettings};
use serde_json::Value;

use crate::common::{Resp, TestServer, fixtures};

async fn sql(server: &TestServer, query: &str) -> Resp {
    server.request(Method::POST, "/fhir/$sql", Some(query), &[("content-type", "application/sql")]).await
}

async fn sql_json(server: &TestServer, body: &str) -> Resp {
    server.request(Method::POST, "/fhir/$sql", Some(body), &[("content-type", "application/json")]).await
}

fn rows(r: &Resp) -> Vec<Value> {
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str::<Value>(&r.body)
        .unwrap_or_else(|e| panic!("{e}: {}", r.body))
        .as_array()
        .expect("array")
        .clone()
}

async fn loaded(config: ApiConfig) -> TestServer {
    let server = TestServer::start_with(config).await;
    server.load_synthea().await;
    server
}

fn ndjson_count(name: &str) -> usize {
    load(name).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_formats_parameters_limits_and_freshness() {
    let server = loaded(ApiConfig {
        sql: SqlSettings { sql_default_rows: 50, sql_max_rows: 100_000, ..Default::default() },
        ..Default::default()
    })
    .await;
    let patients = ndjson_count("Patient.ndjson") as u64;
    // Table names in any case; history and the old `_history` name.
    for q in [
        "SELECT count(*) AS n FROM patient",
        "SELECT count(*) AS n FROM Patient",
        "SELECT count(*) AS n FROM PATIENT",
        "SELECT count(*) AS n FROM \"Patient\"",
        "SELECT count(*) AS n FROM history.patient",
        "SELECT count(*) AS n FROM history.Patient",
        "SELECT count(*) AS n FROM patient_history",
    ] {
        let r = rows(&sql(&server, q).await);
        assert_eq!(r[0]["n"], patients, "{q}");
    }
    // Columns keep FHIR's camelCase unquoted; nested fields and joins through reference ids.
    let r = rows(&sql(&server, "SELECT id, birthDate FROM patient ORDER BY id LIMIT 3").await);
    assert_eq!(r.len(), 3);
    assert!(r[0]["birthDate"].is_string());
    let r = rows(
        &sql(&server, "SELECT count(*) AS n FROM observation o JOIN patient p ON o.subject._target_id = p.id").await,
    );
    assert_eq!(r[0]["n"], ndjson_count("Observation.ndjson") as u64);
    // information_schema, SHOW TABLES, DESCRIBE.
    let r = rows(&sql(&server, "SHOW TABLES").await);
    assert!(r.iter().any(|t| t["table_name"] == "Patient" && t["table_schema"] == "public"), "{r:?}");
    assert!(r.iter().any(|t| t["table_name"] == "Patient" && t["table_schema"] == "history"));
    let r = rows(&sql(&server, "DESCRIBE patient").await);
    assert!(r.iter().any(|c| c["column_name"] == "birthDate"));
    let r = rows(&sql(&server, "SELECT column_name FROM information_schema.columns WHERE table_name = 'Observation' AND column_name = 'valueQuantity'").await);
    assert_eq!(r.len(), 1, "only the current table has valueQuantity: {r:?}");

    // JSON: nulls explicit, decimals as numbers, timestamps RFC 3339.
    let r = rows(
        &sql(
            &server,
            "SELECT id, valueQuantity.value AS v FROM observation WHERE valueQuantity.value IS NOT NULL LIMIT 1",
        )
        .await,
    );
    assert!(r[0]["v"].is_number(), "decimal as a JSON number: {r:?}");
    let r = rows(&sql(&server, "SELECT id, multipleBirthInteger AS m, _last_updated FROM patient LIMIT 1").await);
    assert!(r[0]["m"].is_null() && r[0].as_object().unwrap().contains_key("m"), "null kept: {r:?}");
    let ts = r[0]["_last_updated"].as_str().expect("timestamp text");
    assert!(ts.len() >= 20 && ts.as_bytes()[10] == b'T' && (ts.ends_with('Z') || ts.contains('+')), "{ts}");

    // Formats by `format`, `_format` and Accept.
    let body = r#"{"query":"SELECT id, gender FROM patient ORDER BY id","format":"ndjson"}"#;
    let nd = sql_json(&server, body).await;
    assert_eq!(nd.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(nd.body.lines().count() as u64, patients);
    let csv = server
        .request(
            Method::POST,
            "/fhir/$sql?_format=csv",
            Some("SELECT id, gender FROM patient"),
            &[("content-type", "text/plain")],
        )
        .await;
    assert_eq!(csv.body.lines().next(), Some("id,gender"));
    assert_eq!(csv.body.lines().count() as u64, patients + 1);
    let arrow = server
        .request(
            Method::POST,
            "/fhir/$sql",
            Some("SELECT id FROM patient"),
            &[("content-type", "application/sql"), ("accept", "application/vnd.apache.arrow.stream")],
        )
        .await;
    assert_eq!(arrow.header("content-type"), Some("application/vnd.apache.arrow.stream"));
    let pq = server
        .request(
            Method::POST,
            "/fhir/$sql?format=parquet",
            Some("SELECT id FROM patient"),
            &[("content-type", "application/sql")],
        )
        .await;
    assert!(pq.body.starts_with("PAR1") && pq.body.ends_with("PAR1"));

    // Parameters, positional and named.
    let r = rows(
        &sql_json(&server, r#"{"query":"SELECT count(*) AS n FROM patient WHERE gender = $1","params":["female"]}"#)
            .await,
    );
    let female = rows(&sql(&server, "SELECT count(*) AS n FROM patient WHERE gender = 'female'").await);
    assert_eq!(r[0]["n"], female[0]["n"]);
    let r = rows(
        &sql_json(
            &server,
            r#"{"query":"SELECT count(*) AS n FROM patient WHERE gender = $g","params":{"g":"female"}}"#,
        )
        .await,
    );
    assert_eq!(r[0]["n"], female[0]["n"]);

    // Row limits: the configured default, an explicit one, and the maximum.
    assert_eq!(rows(&sql(&server, "SELECT id FROM observation").await).len(), 50);
    assert_eq!(rows(&sql_json(&server, r#"{"query":"SELECT id FROM observation","limit":120}"#).await).len(), 120);
    assert_eq!(sql_json(&server, r#"{"query":"SELECT id FROM observation","limit":100001}"#).await.status, 400);

    // A write acknowledged by the API is visible to the next query.
    let put =
        server.put("/fhir/Patient/fresh-one", r#"{"resourceType":"Patient","id":"fresh-one","gender":"other"}"#).await;
    assert!(put.status.is_success());
    let r = rows(&sql(&server, "SELECT count(*) AS n FROM patient WHERE id = 'fresh-one'").await);
    assert_eq!(r[0]["n"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_queries_are_refused_or_cancelled_and_the_server_stays_healthy() {
    let query = QueryLimits { sql_timeout: Duration::from_secs(3), sql_memory: 64 * 1024 * 1024, ..Default::default() };
    let server = loaded(ApiConfig { sql: SqlSettings { query, ..Default::default() }, ..Default::default() }).await;
    let patients = ndjson_count("Patient.ndjson") as u64;
    let deep_parens = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
    let long_sum = format!("SELECT 1{}", " + 1".repeat(20_000));
    let huge = format!("SELECT '{}'", "x".repeat(300 * 1024));
    let hostile: Vec<(&str, String, &[u16])> = vec![
        ("create table", "CREATE TABLE t AS SELECT 1".into(), &[403]),
        ("drop", "DROP TABLE patient".into(), &[403]),
        ("insert", "INSERT INTO patient (id) VALUES ('x')".into(), &[403]),
        ("delete", "DELETE FROM patient".into(), &[403]),
        ("update", "UPDATE patient SET id = 'x'".into(), &[403]),
        ("copy", "COPY patient TO '/tmp/fhirlake-leak.csv'".into(), &[403]),
        ("copy query", "COPY (SELECT * FROM patient) TO '/tmp/fhirlake-leak.parquet'".into(), &[403]),
        ("external table", "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'".into(), &[403]),
        ("view", "CREATE VIEW v AS SELECT 1".into(), &[403]),
        ("set", "SET datafusion.execution.batch_size = 1".into(), &[403]),
        ("prepare", "PREPARE p AS SELECT 1".into(), &[403]),
        ("explain analyze", "EXPLAIN ANALYZE SELECT 1".into(), &[403]),
        ("file path table", "SELECT * FROM '/etc/passwd'".into(), &[400]),
        ("url table", "SELECT * FROM 'file:///etc/passwd'".into(), &[400]),
        ("read_csv", "SELECT * FROM read_csv('/etc/passwd')".into(), &[400]),
        ("read_parquet", "SELECT * FROM read_parquet('/var/tmp/x.parquet')".into(), &[400]),
        ("two statements", "SELECT 1; DROP TABLE patient".into(), &[400, 403]),
        ("traversal", "SELECT * FROM views.\"../resources/Patient\"".into(), &[400]),
        ("deep parens", deep_parens, &[400]),
        ("long expression", long_sum, &[400, 408]),
        ("huge text", huge, &[413]),
        ("repeat", "SELECT length(repeat('x', 2000000000)) AS n".into(), &[413]),
        ("lpad", "SELECT lpad('x', 2000000000) AS s".into(), &[413]),
        ("array_repeat", "SELECT array_repeat(1, 2000000000) AS a".into(), &[413]),
        (
            "cross join",
            "SELECT count(*) FROM observation a, observation b, patient c WHERE a.id || b.id || c.id <> ''".into(),
            &[408],
        ),
        (
            "recursive cte",
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r".into(),
            &[408, 413],
        ),
        ("memory", "SELECT array_agg(a._raw) FROM observation a, observation b".into(), &[408, 413]),
        ("series", "SELECT count(*) FROM generate_series(1, 100000000000)".into(), &[408]),
    ];
    assert!(hostile.len() >= 25);
    for (what, q, allowed) in &hostile {
        let started = std::time::Instant::now();
        let r = sql(&server, q).await;
        assert!(
            allowed.contains(&r.status.as_u16()),
            "{what}: expected one of {allowed:?}, got {} {}",
            r.status,
            &r.body[..r.body.len().min(300)]
        );
        assert!(r.body.contains("OperationOutcome"), "{what}: {}", &r.body[..r.body.len().min(300)]);
        assert!(started.elapsed() < Duration::from_secs(30), "{what} took {:?}", started.elapsed());
        let ok = rows(&sql(&server, "SELECT count(*) AS n FROM patient").await);
        assert_eq!(ok[0]["n"], patients, "after {what}");
    }
    assert!(!std::path::Path::new("/tmp/fhirlake-leak.csv").exists());
    // Bad requests are 4xx too.
    assert_eq!(sql(&server, "SELEC 1").await.status, 400);
    assert_eq!(sql(&server, "SELECT nope FROM patient").await.status, 400);
    assert_eq!(sql(&server, "SELECT * FROM no_such_table").await.status, 400);
    assert_eq!(sql(&server, "   ").await.status, 400);
    assert_eq!(sql_json(&server, r#"{"nope":1}"#).await.status, 400);
    assert_eq!(
        server.request(Method::POST, "/fhir/$sql", Some("SELECT 1"), &[("content-type", "image/png")]).await.status,
        415
    );
}

fn load(name: &str) -> Vec<Value> {
    std::fs::read_to_string(fixtures().join("synthea/ndjson").join(name))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_travel_and_fhir_helper_functions() {
    let server = loaded(ApiConfig::default()).await;
    let patients = load("Patient.ndjson");
    let version = server
        .flushed()
        .await
        .get(fhirlake_ingest::TableKind::Current, "Patient")
        .and_then(|t| t.version())
        .expect("patient table version");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let put =
        server.put("/fhir/Patient/later", r#"{"resourceType":"Patient","id":"later","birthDate":"2001-02-03"}"#).await;
    assert!(put.status.is_success());
    let n = |r: &Resp| rows(r)[0]["n"].as_u64().expect("count");
    assert_eq!(n(&sql(&server, "SELECT count(*) AS n FROM patient").await), patients.len() as u64 + 1);
    assert_eq!(
        n(&sql(&server, &format!("SELECT count(*) AS n FROM as_of('patient', {version})")).await),
        patients.len() as u64,
        "as of the version before the write"
    );
    assert_eq!(
        n(&sql(&server, &format!("SELECT count(*) AS n FROM as_of('Patient', '{before}')")).await),
        patients.len() as u64,
        "as of an instant before the write"
    );
    assert_eq!(
        n(&sql(&server, &format!("SELECT count(*) AS n FROM as_of('history.patient', '{before}')")).await),
        patients.len() as u64
    );
    assert_eq!(n(&sql(&server, "SELECT count(*) AS n FROM history.patient").await), patients.len() as u64 + 1);
    for bad in [
        "SELECT * FROM as_of('patient', 99999)",
        "SELECT * FROM as_of('nothing', 1)",
        "SELECT * FROM as_of('patient', 'yesterday')",
        "SELECT * FROM as_of('patient')",
    ] {
        let r = sql(&server, bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }

    // fhir_code: counts by LOINC code equal the counts from the JSON.
    let mut want: std::collections::BTreeMap<String, u64> = Default::default();
    for o in load("Observation.ndjson") {
        let code = o["code"]["coding"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["system"] == "http://loinc.org"))
            .and_then(|c| c["code"].as_str())
            .unwrap_or("")
            .to_string();
        *want.entry(code).or_default() += 1;
    }
    let got: std::collections::BTreeMap<String, u64> = rows(
        &sql(
            &server,
            "SELECT coalesce(fhir_code(code, 'http://loinc.org'), '') AS c, count(*) AS n FROM observation GROUP BY 1",
        )
        .await,
    )
    .iter()
    .map(|r| (r["c"].as_str().unwrap().to_string(), r["n"].as_u64().unwrap()))
    .collect();
    assert_eq!(got, want);
    // fhir_display on a list of CodeableConcepts; fhir_ref_id with and without a type.
    let r = rows(&sql(&server, "SELECT fhir_display(category, NULL) AS d FROM observation WHERE fhir_display(category, NULL) IS NOT NULL LIMIT 1").await);
    assert!(r[0]["d"].is_string());
    let r = rows(
        &sql(
            &server,
            "SELECT count(*) AS n FROM observation WHERE fhir_ref_id(subject, 'Patient') = subject._target_id",
        )
        .await,
    );
    assert_eq!(r[0]["n"], load("Observation.ndjson").len() as u64);
    let r = rows(
        &sql(&server, "SELECT count(*) AS n FROM observation WHERE fhir_ref_id(subject, 'Group') IS NOT NULL").await,
    );
    assert_eq!(r[0]["n"], 0);
    // fhir_age against ages computed here.
    let ages: std::collections::BTreeMap<String, i64> = rows(
        &sql(&server, "SELECT id, fhir_age(birthDate, '2020-06-15') AS age FROM patient WHERE id <> 'later'").await,
    )
    .iter()
    .map(|r| (r["id"].as_str().unwrap().to_string(), r["age"].as_i64().unwrap()))
    .collect();
    for p in &patients {
        let b = p["birthDate"].as_str().unwrap();
        let (y, m, d): (i64, u32, u32) = (b[..4].parse().unwrap(), b[5..7].parse().unwrap(), b[8..10].parse().unwrap());
        let want = 2020 - y - i64::from((6, 15) < (m, d));
        assert_eq!(ages[p["id"].as_str().unwrap()], want, "{b}");
    }
    let r = rows(&sql(&server, "SELECT fhir_age('1970', _last_updated) AS a FROM patient LIMIT 1").await);
    assert!(r[0]["a"].as_i64().unwrap() >= 55);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_never_sees_half_a_transaction() {
    let server = std::sync::Arc::new(TestServer::start().await);
    let writer = {
        let server = server.clone();
        tokio::spawn(async move {
            for i in 0..25 {
                let bundle = format!(
                    r#"{{"resourceType":"Bundle","type":"transaction","entry":[
                        {{"fullUrl":"urn:uuid:p{i}","resource":{{"resourceType":"Patient","gender":"female"}},"request":{{"method":"POST","url":"Patient"}}}},
                        {{"resource":{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"subject":{{"reference":"urn:uuid:p{i}"}}}},"request":{{"method":"POST","url":"Observation"}}}}]}}"#
                );
                let r = server.post("/fhir", &bundle).await;
                assert_eq!(r.status, 200, "{}", r.body);
            }
        })
    };
    let mut checked = 0;
    let query = "SELECT (SELECT count(*) FROM patient) AS p, (SELECT count(*) FROM observation) AS o";
    while !writer.is_finished() {
        let r = sql(&server, query).await;
        if r.status == 200 {
            let row = &rows(&r)[0];
            assert_eq!(row["p"], row["o"], "a transaction was half visible: {row}");
            checked += 1;
        }
    }
    writer.await.expect("writer");
    let row = &rows(&sql(&server, query).await)[0];
    assert_eq!((row["p"].as_u64(), row["o"].as_u64()), (Some(25), Some(25)));
    assert!(checked > 0, "no query overlapped the writes");
}
