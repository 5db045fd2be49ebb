//! FHIRPath throughput (criterion): evaluations per second of typical search expressions
//! (`benches/fhirpath_expressions.json`) over the Synthea fixture resources of their type,
//! and resources per second of full search-index extraction over the whole Synthea mix.
//! `benches/fhirpath_bench.py` runs this next to the HL7 JavaScript engine (`fhirpath` on
//! npm) and prints the ratios.
//!
//! `cargo bench -p fhirlake-schemas --bench fhirpath`

use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use fhirlake_schemas::fhirpath::Expression;
use fhirlake_schemas::json::ParseLimits;
use fhirlake_schemas::search_index::SearchIndex;
use fhirlake_schemas::{Json, Model};

#[path = "../tests/support/fixtures.rs"]
mod test_fixtures;

fn fixtures() -> PathBuf {
    test_fixtures::root()
}

fn load_resources() -> Vec<Json> {
    let dir = fixtures().join("synthea/ndjson");
    let limit: usize = std::env::var("FHIRLAKE_BENCH_LIMIT").ok().and_then(|v| v.parse().ok()).unwrap_or(usize::MAX);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()).take(limit) {
            out.push(Json::parse(line.as_bytes(), ParseLimits { max_depth: 200, ..Default::default() }).unwrap());
        }
    }
    out
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let model = Model::r4().unwrap();
    let resources = load_resources();
    let of_type = |t: &str| -> Vec<&Json> {
        resources.iter().filter(|r| r.get("resourceType").and_then(Json::as_str) == Some(t)).collect()
    };
    let list_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../benches/fhirpath_expressions.json");
    let list: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(list_path).unwrap()).unwrap();

    let mut g = c.benchmark_group("expressions");
    for item in &list {
        let t = item["type"].as_str().unwrap();
        let text = item["expression"].as_str().unwrap();
        let expr = Expression::parse(text).unwrap();
        let rs = of_type(t);
        if rs.is_empty() {
            continue;
        }
        g.throughput(Throughput::Elements(rs.len() as u64));
        g.bench_function(text, |b| {
            b.iter(|| {
                let mut n = 0usize;
                for r in &rs {
                    n += expr.evaluate(model, r).map(|v| v.len()).unwrap_or(0);
                }
                n
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("extraction");
    g.throughput(Throughput::Elements(resources.len() as u64));
    let indexes: Vec<_> = resources
        .iter()
        .map(|r| SearchIndex::for_type(model, r.get("resourceType").and_then(Json::as_str).unwrap()))
        .collect();
    g.bench_function("synthea-mix", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for (r, ix) in resources.iter().zip(&indexes) {
                n += ix.extract(model, r).len();
            }
            n
        })
    });
    g.finish();
    c.final_summary();
}
