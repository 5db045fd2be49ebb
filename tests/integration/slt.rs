//! `tests/sql/*.slt`: SQL over the Synthea fixtures as `fhirlake import` writes them, each
//! result compared with the one `tests/sql/generate.py` computed from the raw JSON (joins
//! through reference ids, nested fields, unnest of repeating elements, aggregates by code,
//! time travel, history, search-index columns).

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};

use crate::common::TestServer;

struct Query {
    line: usize,
    sql: String,
    types: Vec<char>,
    rowsort: bool,
    expected: Vec<String>,
}

fn parse(text: &str) -> Vec<Query> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(header) = lines[i].strip_prefix("query ") else {
            i += 1;
            continue;
        };
        let mut parts = header.split_whitespace();
        let types: Vec<char> = parts.next().expect("types").chars().collect();
        let rowsort = parts.next() == Some("rowsort");
        let line = i + 1;
        i += 1;
        let mut sql = Vec::new();
        while lines[i] != "----" {
            sql.push(lines[i]);
            i += 1;
        }
        i += 1;
        let mut expected = Vec::new();
        while i < lines.len() && !lines[i].is_empty() {
            expected.push(lines[i].to_string());
            i += 1;
        }
        out.push(Query { line, sql: sql.join("\n"), types, rowsort, expected });
    }
    out
}

fn render(batches: &[RecordBatch], types: &[char]) -> Result<Vec<String>, String> {
    let mut rows = Vec::new();
    for b in batches {
        if b.num_columns() != types.len() {
            return Err(format!("{} columns, expected {}", b.num_columns(), types.len()));
        }
        let cols: Vec<_> = b
            .columns()
            .iter()
            .zip(types)
            .map(|(c, t)| {
                let target = match t {
                    'I' => DataType::Int64,
                    'R' => DataType::Float64,
                    _ => DataType::Utf8,
                };
                arrow::compute::cast(c, &target).map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        for i in 0..b.num_rows() {
            let cells: Vec<String> = cols
                .iter()
                .zip(types)
                .map(|(c, t)| {
                    if c.is_null(i) {
                        return "NULL".to_string();
                    }
                    match t {
                        'I' => c.as_primitive::<Int64Type>().value(i).to_string(),
                        'R' => format!("{:.4}", c.as_primitive::<Float64Type>().value(i)),
                        _ => c.as_string::<i32>().value(i).to_string(),
                    }
                })
                .collect();
            rows.push(cells.join(" "));
        }
    }
    Ok(rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_suite_matches_results_computed_from_the_json() {
    let server = TestServer::start().await;
    server.load_synthea().await;
    let session = server.session().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sql");
    let mut total = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("tests/sql") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "slt") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read slt");
        for q in parse(&text) {
            total += 1;
            let got = match session.sql(&q.sql).await {
                Ok(b) => render(&b, &q.types),
                Err(e) => Err(e.to_string()),
            };
            let mut got = match got {
                Ok(g) => g,
                Err(e) => {
                    failures.push(format!("{}:{}: {}\n  error: {e}", path.display(), q.line, q.sql));
                    continue;
                }
            };
            let mut want = q.expected.clone();
            if q.rowsort {
                got.sort();
                want.sort();
            }
            if got != want {
                failures.push(format!(
                    "{}:{}: {}\n  expected: {want:?}\n  got:      {got:?}",
                    path.display(),
                    q.line,
                    q.sql
                ));
            }
        }
    }
    assert!(total >= 60, "only {total} queries");
    assert!(failures.is_empty(), "{} of {total} queries differ:\n{}", failures.len(), failures.join("\n"));
}
