//! SQL-on-FHIR ViewDefinitions through the API: the official suite through `$run` with
//! inline resources; realistic views over the Synthea store (compiled plans) compared with
//! the row-by-row reference runner over the raw NDJSON; output formats; ViewDefinition as
//! a stored, searchable resource; patient filters.

#[path = "../../schemas/tests/support/sof_suite.rs"]
mod sof_suite;

use fhirlake_schemas::Json;
use fhirlake_schemas::model::Model;
use fhirlake_schemas::sof::View;

use crate::common::{TestServer, fixtures};

fn param_resource(name: &str, r: &Json) -> String {
    format!(r#"{{"name":"{name}","resource":{}}}"#, r.to_json_string())
}

/// `$run` output (JSON array of objects) as (columns, rows) in the suite's terms.
fn rows_of(body: &str, columns: &[String]) -> Vec<Vec<Json>> {
    let arr = sof_suite::parse(body.as_bytes());
    arr.as_array()
        .expect("a JSON array")
        .iter()
        .map(|o| columns.iter().map(|c| o.get(c).cloned().unwrap_or(Json::Null)).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_suite_passes_through_run() {
    let server = TestServer::start().await;
    let model = Model::r4().expect("model");
    let cases = sof_suite::load(&sof_suite::suite_dir_in(&fixtures()));
    assert!(cases.len() >= 134, "suite has {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let mut params = vec![param_resource("viewResource", &case.view)];
        params.extend(case.resources.iter().map(|r| param_resource("resource", r)));
        let body = format!(r#"{{"resourceType":"Parameters","parameter":[{}]}}"#, params.join(","));
        let resp = server.post("/fhir/ViewDefinition/$run", &body).await;
        let out = if resp.status.is_success() {
            // Column names come from the view (an invalid one was a 4xx above).
            let cols: Vec<String> = View::parse(model, &case.view)
                .expect("a view that ran parses")
                .columns()
                .into_iter()
                .map(|c| c.name)
                .collect();
            Ok((cols.clone(), rows_of(&resp.body, &cols)))
        } else {
            assert!(resp.status.is_client_error(), "{}: {} {}", case.name, resp.status, resp.body);
            Err(resp.body.clone())
        };
        if let Err(why) = sof_suite::judge(case, out) {
            failures.push(format!("{}: {why}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases fail through $run:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The realistic views shipped in `benches/views/`.
pub fn realistic_views() -> Vec<(String, Json)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/views");
    let mut out: Vec<(String, Json)> = std::fs::read_dir(&dir)
        .expect("benches/views")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let j = sof_suite::parse(&std::fs::read(&p).expect("read view"));
            (j.get("name").and_then(Json::as_str).expect("name").to_string(), j)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every Synthea NDJSON resource, parsed.
fn synthea_resources() -> Vec<Json> {
    let dir = fixtures().join("synthea/ndjson");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("ndjson dir") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "ndjson") {
            for line in std::fs::read_to_string(&p).expect("read").lines().filter(|l| !l.trim().is_empty()) {
                out.push(sof_suite::parse(line.as_bytes()));
            }
        }
    }
    out
}

/// Rows as sorted canonical JSON lines (order-free comparison).
fn canonical_rows(columns: &[String], rows: &[Vec<Json>]) -> Vec<String> {
    let mut v: Vec<String> = rows
        .iter()
        .map(|r| sof_suite::canonical(&Json::Object(columns.iter().cloned().zip(r.iter().cloned()).collect())))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realistic_views_over_the_store_are_compiled_and_match_the_reference_runner() {
    let server = TestServer::start().await;
    server.load_synthea().await;
    let model = Model::r4().expect("model");
    let resources = synthea_resources();
    let views = realistic_views();
    assert!(views.len() >= 4);
    for (name, json) in &views {
        // Stored as a resource, then run by id.
        let id = json.get("id").and_then(Json::as_str).expect("id");
        let put = server.put(&format!("/fhir/ViewDefinition/{id}"), &json.to_json_string()).await;
        assert!(put.status.is_success(), "{name}: {} {}", put.status, put.body);
        let resp = server.get(&format!("/fhir/ViewDefinition/{id}/$run")).await;
        assert_eq!(resp.status, 200, "{name}: {}", resp.body);
        assert_eq!(resp.header("x-fhirlake-view-plan"), Some("compiled"), "{name} should compile");
        let view = View::parse(model, json).expect("view");
        let cols: Vec<String> = view.columns().into_iter().map(|c| c.name).collect();
        let got = rows_of(&resp.body, &cols);
        let mut want = Vec::new();
        for r in &resources {
            want.extend(view.rows(model, r).expect("reference rows"));
        }
        assert!(want.len() > 20, "{name}: only {} rows in the fixtures", want.len());
        assert_eq!(canonical_rows(&cols, &got), canonical_rows(&cols, &want), "{name}: compiled rows differ");

        // One patient's rows: the reference rows of the resources in that compartment.
        let patient = resources
            .iter()
            .find(|r| r.get("resourceType").and_then(Json::as_str) == Some("Patient"))
            .and_then(|r| r.get("id").and_then(Json::as_str))
            .expect("a patient");
        let resp = server.get(&format!("/fhir/ViewDefinition/{id}/$run?patient=Patient/{patient}")).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        let got = rows_of(&resp.body, &cols);
        let k = cols.iter().position(|c| c == "patient_id").expect("every realistic view has patient_id");
        let want_p: Vec<Vec<Json>> =
            want.iter().filter(|r| r[k] == Json::String(patient.to_string())).cloned().collect();
        assert!(!want_p.is_empty(), "{name}: patient {patient} has rows");
        assert_eq!(canonical_rows(&cols, &got), canonical_rows(&cols, &want_p), "{name}: patient filter");
    }

    // Other formats carry the same rows.
    let bp = "/fhir/ViewDefinition/blood-pressure/$run";
    let json_rows = sof_suite::parse(server.get(bp).await.body.as_bytes());
    let n = json_rows.as_array().expect("array").len();
    let nd = server.get(&format!("{bp}?_format=ndjson")).await;
    assert_eq!(nd.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(nd.body.lines().count(), n);
    let csv = server.request(axum::http::Method::GET, bp, None, &[("accept", "text/csv")]).await;
    assert!(csv.header("content-type").unwrap_or("").starts_with("text/csv"));
    let mut lines = csv.body.lines();
    assert_eq!(lines.next(), Some("id,patient_id,encounter_id,effective,component_code,value,unit"));
    assert_eq!(lines.count(), n);
    let limited = sof_suite::parse(server.get(&format!("{bp}?_limit=7")).await.body.as_bytes());
    assert_eq!(limited.as_array().map(<[Json]>::len), Some(7));
    let pq = server.get(&format!("{bp}?_format=parquet")).await;
    assert_eq!(pq.header("content-type"), Some("application/vnd.apache.parquet"));
    assert!(pq.body.starts_with("PAR1") && pq.body.ends_with("PAR1"), "a Parquet file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_definitions_are_checked_stored_and_searchable() {
    let server = TestServer::start().await;
    let (name, bp) = realistic_views().into_iter().find(|(n, _)| n == "blood_pressure").expect("bp view");
    let created = server.post("/fhir/ViewDefinition", &bp.to_json_string()).await;
    assert_eq!(created.status, 201, "{}", created.body);
    // Searchable by name and url, like any resource.
    let found = server.get(&format!("/fhir/ViewDefinition?name={name}")).await.json();
    let entries = found.get("entry").and_then(Json::as_array).map(<[Json]>::len);
    assert_eq!(entries, Some(1), "search by name: {}", found.to_json_string());
    let by_url = server.get("/fhir/ViewDefinition?url=https://fhirlake.dev/views/blood_pressure").await.json();
    assert_eq!(by_url.get("entry").and_then(Json::as_array).map(<[Json]>::len), Some(1));
    let none = server.get("/fhir/ViewDefinition?name=nothing_like_it").await.json();
    assert_eq!(none.get("entry").and_then(Json::as_array).map(<[Json]>::len).unwrap_or(0), 0);

    // A view that cannot run is refused with the place and the reason, and nothing is stored.
    let bad = [
        (r#""select":[{"column":[{"name":"id","path":"name.family.("}]}]"#, "select[0].column[0].path"),
        (r#""select":[{"column":[{"name":"1bad","path":"id"}]}]"#, "select[0].column[0].name"),
        (r#""select":[{"column":[{"name":"a","path":"%nope"}]}]"#, "%nope"),
        (
            r#""select":[{"unionAll":[{"column":[{"name":"a","path":"id"}]},{"column":[{"name":"b","path":"id"}]}]}]"#,
            "unionAll",
        ),
    ];
    for (select, needle) in bad {
        let body = format!(r#"{{"resourceType":"ViewDefinition","status":"active","resource":"Patient",{select}}}"#);
        let r = server.post("/fhir/ViewDefinition", &body).await;
        assert_eq!(r.status, 422, "{select}: {}", r.body);
        assert!(r.body.contains(needle), "{select}: the outcome names {needle}: {}", r.body);
    }
    // Not an R4 element of ViewDefinition: the structural validator refuses it too.
    let r = server.post("/fhir/ViewDefinition", r#"{"resourceType":"ViewDefinition","status":"active","resource":"Patient","select":[{"column":[{"name":"a","path":"id"}]}],"colour":"red"}"#).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let all = server.get("/fhir/ViewDefinition?_summary=count").await.json();
    assert_eq!(all.get("total"), Some(&Json::Number("1".into())), "only the valid view was stored");

    // $run errors: an unknown view, a bad format, a column yielding several values.
    assert_eq!(server.get("/fhir/ViewDefinition/missing/$run").await.status, 404);
    let created_id = created.json().get("id").and_then(Json::as_str).expect("id").to_string();
    assert_eq!(server.get(&format!("/fhir/ViewDefinition/{created_id}/$run?_format=xml")).await.status, 400);
    let multi = r#"{"resourceType":"Parameters","parameter":[{"name":"viewResource","resource":{"resourceType":"ViewDefinition","status":"active","resource":"Patient","select":[{"column":[{"name":"given","path":"name.given"}]}]}},{"name":"resource","resource":{"resourceType":"Patient","id":"p","name":[{"given":["a","b"]}]}}]}"#;
    let r = server.post("/fhir/ViewDefinition/$run", multi).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("collection"), "{}", r.body);
    // The same over the store (compiled plan): a 422 before any row, not a broken stream.
    let p = server
        .put("/fhir/Patient/two-given", r#"{"resourceType":"Patient","id":"two-given","name":[{"given":["a","b"]}]}"#)
        .await;
    assert!(p.status.is_success());
    let over_store = r#"{"resourceType":"Parameters","parameter":[{"name":"viewResource","resource":{"resourceType":"ViewDefinition","status":"active","resource":"Patient","select":[{"column":[{"name":"given","path":"name.given"}]}]}}]}"#;
    let r = server.post("/fhir/ViewDefinition/$run", over_store).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("collection"), "{}", r.body);
}

/// The rows of `SELECT <columns> FROM views.<name>` as canonical JSON lines.
async fn view_table_rows(server: &TestServer, name: &str, view: &View) -> Vec<String> {
    let infos = view.columns();
    let cols: Vec<String> = infos.iter().map(|c| c.name.clone()).collect();
    let select = cols.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
    let session = server.session().await;
    let batches = session.sql(&format!("SELECT {select} FROM views.{name}")).await.expect("view SQL");
    let rows = fhirlake_query::views::json_rows(&batches, &infos).expect("rows");
    canonical_rows(&cols, &rows)
}

async fn run_rows(server: &TestServer, id: &str, view: &View) -> Vec<String> {
    let cols: Vec<String> = view.columns().into_iter().map(|c| c.name).collect();
    let resp = server.get(&format!("/fhir/ViewDefinition/{id}/$run")).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    canonical_rows(&cols, &rows_of(&resp.body, &cols))
}

fn param<'a>(p: &'a Json, name: &str) -> &'a Json {
    p.get("parameter")
        .and_then(Json::as_array)
        .and_then(|ps| ps.iter().find(|x| x.get("name").and_then(Json::as_str) == Some(name)))
        .and_then(|x| x.as_object())
        .and_then(|m| m.iter().find(|(k, _)| k.starts_with("value")).map(|(_, v)| v))
        .unwrap_or_else(|| panic!("no parameter {name} in {}", p.to_json_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialized_views_equal_run_and_refresh_incrementally() {
    let server = TestServer::start().await;
    server.load_synthea().await;
    let model = Model::r4().expect("model");
    let mut views = realistic_views();
    // One view the compiler does not cover (it compares dateTimes, which FHIRPath does by
    // precision), so the row-by-row fallback materializes too.
    let numbered = sof_suite::parse(
        br#"{"resourceType":"ViewDefinition","id":"encounter-types","name":"encounter_types","status":"active","resource":"Encounter",
            "select":[{"column":[{"name":"id","path":"getResourceKey()","type":"id"},
                                 {"name":"ordered","path":"period.start <= period.end","type":"boolean"}]},
                      {"forEach":"type.coding","column":[{"name":"n","path":"%rowIndex","type":"integer"},{"name":"code","path":"code","type":"code"}]}]}"#,
    );
    views.push(("encounter_types".into(), numbered));
    for (name, json) in &views {
        let id = json.get("id").and_then(Json::as_str).expect("id");
        assert!(server.put(&format!("/fhir/ViewDefinition/{id}"), &json.to_json_string()).await.status.is_success());
        let m = server.post(&format!("/fhir/ViewDefinition/{id}/$materialize"), "").await;
        assert_eq!(m.status, 200, "{name}: {}", m.body);
        let m = m.json();
        assert_eq!(param(&m, "mode"), &Json::String("full".into()), "{name}");
        assert_eq!(param(&m, "table"), &Json::String(format!("views.{name}")));
        let view = View::parse(model, json).expect("view");
        let table = view_table_rows(&server, name, &view).await;
        assert!(!table.is_empty(), "{name}: rows");
        assert_eq!(table, run_rows(&server, id, &view).await, "{name}: materialized == $run");
        if name == "encounter_types" {
            assert!(m.to_json_string().contains("fallback"), "the numbered view runs row by row");
        }
        // Nothing changed: nothing to do.
        let again = server.post(&format!("/fhir/ViewDefinition/{id}/$materialize"), "").await.json();
        assert_eq!(param(&again, "mode"), &Json::String("unchanged".into()), "{name}");
    }

    // Change blood pressure data: update one, delete one, create one.
    let bp_view = View::parse(model, &views.iter().find(|(n, _)| n == "blood_pressure").unwrap().1).unwrap();
    let bp_rows = sof_suite::parse(server.get("/fhir/ViewDefinition/blood-pressure/$run").await.body.as_bytes());
    let bp_ids: Vec<String> = {
        let mut v: Vec<String> = bp_rows
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r.get("id").and_then(Json::as_str).map(String::from))
            .collect();
        v.dedup();
        v
    };
    let (upd, del) = (&bp_ids[0], &bp_ids[1]);
    let mut obs = server.get(&format!("/fhir/Observation/{upd}")).await.json();
    if let Some(Json::Array(cs)) = obs.get_mut("component") {
        cs.truncate(1); // one component left: one row instead of two
    }
    assert!(server.put(&format!("/fhir/Observation/{upd}"), &obs.to_json_string()).await.status.is_success());
    assert_eq!(
        server.request(axum::http::Method::DELETE, &format!("/fhir/Observation/{del}"), None, &[]).await.status,
        204
    );
    obs.set("id", Json::String("bp-new".into()));
    assert!(server.put("/fhir/Observation/bp-new", &obs.to_json_string()).await.status.is_success());
    // An unrelated write to another type does not touch the view.
    assert!(
        server
            .put("/fhir/Patient/unrelated", r#"{"resourceType":"Patient","id":"unrelated"}"#)
            .await
            .status
            .is_success()
    );

    let m = server.post("/fhir/ViewDefinition/blood-pressure/$materialize", "").await.json();
    assert_eq!(param(&m, "mode"), &Json::String("incremental".into()));
    assert_eq!(param(&m, "resources"), &Json::Number("3".into()), "only the three changed Observations");
    let incremental = view_table_rows(&server, "blood_pressure", &bp_view).await;
    assert_eq!(incremental, run_rows(&server, "blood-pressure", &bp_view).await, "incremental == $run");
    assert!(!incremental.iter().any(|r| r.contains(&format!("\"{del}\""))), "the deleted Observation's rows are gone");
    assert!(incremental.iter().any(|r| r.contains("\"bp-new\"")), "the new Observation's rows are in");
    let full = server.post("/fhir/ViewDefinition/blood-pressure/$materialize?full=true", "").await.json();
    assert_eq!(param(&full, "mode"), &Json::String("full".into()));
    assert_eq!(view_table_rows(&server, "blood_pressure", &bp_view).await, incremental, "incremental == full rebuild");

    // The demographics view is unaffected by Observation writes but sees the new Patient.
    let m = server.post("/fhir/ViewDefinition/patient-demographics/$materialize", "").await.json();
    assert_eq!(param(&m, "mode"), &Json::String("incremental".into()));
    assert_eq!(param(&m, "resources"), &Json::Number("1".into()));

    // Changing the ViewDefinition forces a full rebuild.
    let mut changed = views.iter().find(|(n, _)| n == "condition_codes").unwrap().1.clone();
    changed.set("title", Json::String("Condition codings".into()));
    assert!(server.put("/fhir/ViewDefinition/condition-codes", &changed.to_json_string()).await.status.is_success());
    let m = server.post("/fhir/ViewDefinition/condition-codes/$materialize", "").await.json();
    assert_eq!(param(&m, "mode"), &Json::String("full".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_filter_and_capability_statement() {
    let server = TestServer::start().await;
    server.load_synthea().await;
    let resources = synthea_resources();
    let patients: Vec<&str> = resources
        .iter()
        .filter(|r| r.get("resourceType").and_then(Json::as_str) == Some("Patient"))
        .filter_map(|r| r.get("id").and_then(Json::as_str))
        .take(3)
        .collect();
    let members: Vec<String> =
        patients[..2].iter().map(|p| format!(r#"{{"entity":{{"reference":"Patient/{p}"}}}}"#)).collect();
    let group = format!(
        r#"{{"resourceType":"Group","id":"cohort","type":"person","actual":true,"member":[{}]}}"#,
        members.join(",")
    );
    assert!(server.put("/fhir/Group/cohort", &group).await.status.is_success());
    let (_, enc) = realistic_views().into_iter().find(|(n, _)| n == "encounter_periods").expect("view");
    let body = format!(
        r#"{{"resourceType":"Parameters","parameter":[{},{{"name":"group","valueReference":{{"reference":"Group/cohort"}}}}]}}"#,
        param_resource("viewResource", &enc)
    );
    let resp = server.post("/fhir/ViewDefinition/$run", &body).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let rows = sof_suite::parse(resp.body.as_bytes());
    let got: std::collections::BTreeSet<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.get("patient_id").and_then(Json::as_str).map(String::from))
        .collect();
    let want: std::collections::BTreeSet<String> = patients[..2].iter().map(|p| p.to_string()).collect();
    assert_eq!(got, want, "only the group's patients' encounters");
    let n = resources
        .iter()
        .filter(|r| r.get("resourceType").and_then(Json::as_str) == Some("Encounter"))
        .filter(|r| {
            let s = r.get("subject").and_then(|s| s.get("reference")).and_then(Json::as_str).unwrap_or("");
            patients[..2].iter().any(|p| s.ends_with(p))
        })
        .count();
    assert_eq!(rows.as_array().unwrap().len(), n);
    // The CapabilityStatement states the operations.
    let cs = server.get("/fhir/metadata").await.body;
    assert!(cs.contains("ViewDefinitionRun") && cs.contains("\"name\":\"materialize\""), "operations listed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_the_compiler_does_not_cover_runs_row_by_row_alone() {
    let server = TestServer::start().await;
    server.load_synthea().await;
    let model = Model::r4().expect("model");
    // Extensions are stored as JSON, so the birth-sex path is evaluated per resource; the
    // other columns stay compiled.
    let view = sof_suite::parse(
        br#"{"resourceType":"ViewDefinition","status":"active","resource":"Patient","select":[{"column":[
            {"name":"id","path":"getResourceKey()","type":"id"},
            {"name":"gender","path":"gender","type":"code"},
            {"name":"birth_sex","path":"extension('http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex').value.ofType(code).first()","type":"code"}]}]}"#,
    );
    let body = format!(r#"{{"resourceType":"Parameters","parameter":[{}]}}"#, param_resource("viewResource", &view));
    let resp = server.post("/fhir/ViewDefinition/$run", &body).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let how = resp.header("x-fhirlake-view-plan").unwrap_or("");
    assert!(how.starts_with("compiled; row by row: birth_sex"), "{how}");
    let parsed = View::parse(model, &view).expect("view");
    let cols: Vec<String> = parsed.columns().into_iter().map(|c| c.name).collect();
    let mut want = Vec::new();
    for r in synthea_resources() {
        want.extend(parsed.rows(model, &r).expect("rows"));
    }
    let got = rows_of(&resp.body, &cols);
    assert!(got.iter().any(|r| r[2] != Json::Null), "birth sex found");
    assert_eq!(canonical_rows(&cols, &got), canonical_rows(&cols, &want));
}
