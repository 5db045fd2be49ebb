//! The SQL-on-FHIR v2 suite through the row-by-row reference runner
//! ([`fhirlake_schemas::sof::View::rows`]), which the compiled plans fall back to. One trial
//! per case, named `file::title`. The compiled path has its own runner in the query crate
//! (`sof_conformance`).

#[path = "support/sof_suite.rs"]
mod sof_suite;
#[path = "support/fixtures.rs"]
mod test_fixtures;

use fhirlake_schemas::model::Model;
use fhirlake_schemas::sof::View;
use libtest_mimic::{Arguments, Failed, Trial};
use sof_suite::{Case, Output};

fn run(case: &Case) -> Output {
    let model = Model::r4().map_err(|e| e.to_string())?;
    let view = View::parse(model, &case.view).map_err(|e| e.to_string())?;
    let cols = view.columns().into_iter().map(|c| c.name).collect();
    let mut rows = Vec::new();
    for r in &case.resources {
        rows.extend(view.rows(model, r).map_err(|e| e.to_string())?);
    }
    Ok((cols, rows))
}

fn main() {
    let args = Arguments::from_args();
    let cases = sof_suite::load(&sof_suite::suite_dir_in(&test_fixtures::root()));
    assert!(cases.len() >= 134, "the suite has {} cases, expected at least 134", cases.len());
    let trials = cases
        .into_iter()
        .map(|c| Trial::test(c.name.clone(), move || sof_suite::judge(&c, run(&c)).map_err(Failed::from)))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
