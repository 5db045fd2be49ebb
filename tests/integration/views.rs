//! SQL-on-FHIR ViewDefinitions through the API: the official suite through `$run` with
//! inline resources; realistic views over the Synthea store (compiled plans) compared with
//! the row-by-row reference runner over the raw NDJSON; output formats; ViewDefinition as
//! a stored, searchable resource; patient filters.

#[path = "../../schemas/tests/support/sof_suite.rs"]
mod sof_suite;

use std::collections::BTreeMap;

use fhirlake_ingest::import::{ImportOptions, import_paths};
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
