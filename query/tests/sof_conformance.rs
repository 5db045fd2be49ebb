//! The official SQL-on-FHIR v2 suite through the columnar path: each case's resources are
//! flattened into their resource type's table shape (the same rows `fhirlake` writes to
//! Delta), the view is planned by `fhirlake_query::views::plan` and run by DataFusion.
//! One trial per case, named `file::title`. Writes the suite's `test_report.json` to
//! `$CARGO_TARGET_TMPDIR/sof/test_report.json` (or `FHIRLAKE_SOF_REPORT`) and prints how
//! many views compiled and which fell back to the row-by-row runner, and why.
//!
//! Run: `cargo test -p fhirlake-query --test sof_conformance`.

#[path = "../../schemas/tests/support/sof_suite.rs"]
mod sof_suite;
#[path = "../../schemas/tests/support/fixtures.rs"]
mod test_fixtures;

use std::sync::{Arc, Mutex};

use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use fhirlake_ingest::flatten::{Flattener, RowMeta};
use fhirlake_query::views::{self, View};
use fhirlake_schemas::json::Json;
use fhirlake_schemas::model::Model;
use fhirlake_schemas::{ShapeOptions, TableShape};
use libtest_mimic::{Arguments, Failed, Trial};
use sof_suite::{Case, Output};

/// A case, its verdict, and why it fell back (if it did).
type Outcome = (Case, Result<(), String>, Option<String>);

/// Runs a case; also returns the fallback reason when the view was not compiled.
fn run(case: &Case) -> (Output, Option<String>) {
    let model = Model::r4().expect("model");
    let view = match View::parse(model, &case.view) {
        Ok(v) => Arc::new(v),
        Err(e) => return (Err(e.to_string()), None),
    };
    let shape = Arc::new(TableShape::try_new(model, &view.resource, ShapeOptions::default()).expect("shape"));
    let flattener = Flattener::new(shape.clone());
    let of_type: Vec<&Json> = case
        .resources
        .iter()
        .filter(|r| r.get("resourceType").and_then(Json::as_str) == Some(view.resource.as_str()))
        .collect();
    let metas: Vec<RowMeta> = of_type
        .iter()
        .map(|r| RowMeta {
            version: 1,
            last_updated_us: 0,
            raw: Arc::from(r.to_json_string()),
            patient: None,
            compartment: vec![],
        })
        .collect();
    let rows: Vec<(&Json, &RowMeta)> = of_type.iter().copied().zip(metas.iter()).collect();
    let batch = flattener.to_batch(&rows).expect("flatten");
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(async {
        let ctx = SessionContext::new();
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]]).expect("table");
        ctx.register_table("t", Arc::new(table)).expect("register");
        let df = ctx.table("t").await.expect("table");
        let plan = match views::plan(model, view.clone(), &shape, df, false) {
            Ok(p) => p,
            Err(e) => return (Err(e.to_string()), None),
        };
        let fallback = plan.fallback.clone().or_else(|| {
            (!plan.row_by_row.is_empty()).then(|| format!("compiled except columns {}", plan.row_by_row.join(", ")))
        });
        let batches = match plan.df.collect().await {
            Ok(b) => b,
            Err(e) => return (Err(e.to_string()), fallback),
        };
        let names = plan.columns.iter().map(|c| c.name.clone()).collect();
        (views::json_rows(&batches, &plan.columns).map(|r| (names, r)).map_err(|e| e.to_string()), fallback)
    })
}

fn main() {
    let args = Arguments::from_args();
    let cases = sof_suite::load(&sof_suite::suite_dir_in(&test_fixtures::root()));
    assert!(cases.len() >= 134, "the suite has {} cases, expected at least 134", cases.len());
    let results: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let trials = cases
        .into_iter()
        .map(|c| {
            let results = results.clone();
            Trial::test(c.name.clone(), move || {
                let (out, fallback) = run(&c);
                let verdict = sof_suite::judge(&c, out);
                results.lock().expect("lock").push((c.clone(), verdict.clone(), fallback));
                verdict.map_err(Failed::from)
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    let results = results.lock().expect("lock");
    if results.len() >= 134 {
        let report: Vec<(Case, Result<(), String>)> = results.iter().map(|(c, r, _)| (c.clone(), r.clone())).collect();
        let path = std::env::var_os("FHIRLAKE_SOF_REPORT")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sof/test_report.json"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("report dir");
        }
        std::fs::write(&path, sof_suite::report(&report)).expect("write report");
        let fallbacks: Vec<_> = results.iter().filter_map(|(c, _, f)| f.as_ref().map(|f| (c, f))).collect();
        let errors = results.iter().filter(|(c, _, _)| matches!(c.expect, sof_suite::Expect::Error)).count();
        let partial = fallbacks.iter().filter(|(_, f)| f.starts_with("compiled except")).count();
        println!(
            "of {} views that ran ({} cases expect an error): {} compiled, {} compiled with some columns row by row, \
             {} row by row; report: {}",
            results.len() - errors,
            errors,
            results.len() - errors - fallbacks.len(),
            partial,
            fallbacks.len() - partial,
            path.display()
        );
        for (c, why) in fallbacks {
            println!("  fallback {}: {why}", c.name);
        }
    }
    conclusion.exit();
}
