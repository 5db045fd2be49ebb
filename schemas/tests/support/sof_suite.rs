//! The official SQL-on-FHIR v2 test suite (`sql-on-fhir-v2-tests/tests/*.json`): loading the
//! cases and judging a runner's output. Shared by the reference-runner test here, the
//! compiled-plan conformance runner in the query crate and the `$run` integration test.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fhirlake_schemas::Json;
use fhirlake_schemas::json::ParseLimits;

/// What a case expects.
#[derive(Debug, Clone)]
pub enum Expect {
    Rows(Vec<Json>),
    Count(usize),
    Columns(Vec<String>),
    Error,
}

/// One test case.
#[derive(Debug, Clone)]
pub struct Case {
    /// `file::title` (the trial name).
    pub name: String,
    /// File stem, e.g. `foreach`.
    pub file: String,
    /// The case title.
    pub title: String,
    pub view: Json,
    pub resources: Vec<Json>,
    pub expect: Expect,
}

/// The suite folder under a fixtures root.
pub fn suite_dir_in(fixtures: &Path) -> PathBuf {
    fixtures.join("sql-on-fhir-v2-tests/tests")
}

pub fn parse(bytes: &[u8]) -> Json {
    Json::parse(bytes, ParseLimits { max_depth: 256, max_string_bytes: 1 << 26 }).expect("suite JSON parses")
}

/// Every case of every file, in file order.
pub fn load(dir: &Path) -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let doc = parse(&std::fs::read(&f).expect("read suite file"));
        let file = f.file_stem().and_then(|s| s.to_str()).expect("file stem").to_string();
        let resources = doc.get("resources").and_then(Json::as_array).map(<[Json]>::to_vec).unwrap_or_default();
        for t in doc.get("tests").and_then(Json::as_array).expect("tests array") {
            let title = t.get("title").and_then(Json::as_str).expect("title").to_string();
            let expect = if let Some(rows) = t.get("expect").and_then(Json::as_array) {
                Expect::Rows(rows.to_vec())
            } else if let Some(Json::Number(n)) = t.get("expectCount") {
                Expect::Count(n.parse().expect("count"))
            } else if let Some(cols) = t.get("expectColumns").and_then(Json::as_array) {
                Expect::Columns(cols.iter().filter_map(Json::as_str).map(String::from).collect())
            } else if t.get("expectError").is_some() {
                Expect::Error
            } else {
                panic!("{file}: '{title}' has no expectation");
            };
            out.push(Case {
                name: format!("{file}::{title}"),
                file: file.clone(),
                title,
                view: t.get("view").cloned().expect("view"),
                resources: resources.clone(),
                expect,
            });
        }
    }
    out
}

/// A runner's answer: output column names and rows (one JSON value per column).
pub type Output = Result<(Vec<String>, Vec<Vec<Json>>), String>;

/// Ok when `got` is what the case expects (rows compared as a multiset, numbers by value).
pub fn judge(case: &Case, got: Output) -> Result<(), String> {
    match (&case.expect, got) {
        (Expect::Error, Err(_)) => Ok(()),
        (Expect::Error, Ok((_, rows))) => Err(format!("expected an error, got {} rows", rows.len())),
        (_, Err(e)) => Err(format!("unexpected error: {e}")),
        (Expect::Count(n), Ok((_, rows))) => {
            if rows.len() == *n {
                Ok(())
            } else {
                Err(format!("expected {n} rows, got {}", rows.len()))
            }
        }
        (Expect::Columns(want), Ok((cols, _))) => {
            if *want == cols {
                Ok(())
            } else {
                Err(format!("expected columns {want:?}, got {cols:?}"))
            }
        }
        (Expect::Rows(want), Ok((cols, rows))) => {
            let mut want: Vec<String> = want.iter().map(canonical).collect();
            let mut got: Vec<String> = rows
                .iter()
                .map(|r| {
                    let obj = Json::Object(cols.iter().cloned().zip(r.iter().cloned()).collect());
                    canonical(&obj)
                })
                .collect();
            want.sort();
            got.sort();
            if want == got { Ok(()) } else { Err(format!("rows differ\n  expected: {want:?}\n  got:      {got:?}")) }
        }
    }
}

/// JSON text with object keys sorted and numbers in one form (`1.0` == `1`).
pub fn canonical(j: &Json) -> String {
    let mut out = String::new();
    write(j, &mut out);
    out
}

fn write(j: &Json, out: &mut String) {
    match j {
        Json::Object(members) => {
            let sorted: BTreeMap<&str, &Json> = members.iter().map(|(k, v)| (k.as_str(), v)).collect();
            out.push('{');
            for (i, (k, v)) in sorted.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&format!("{k:?}:"));
                write(v, out);
            }
            out.push('}');
        }
        Json::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(v, out);
            }
            out.push(']');
        }
        Json::Number(n) => {
            let v: f64 = n.parse().unwrap_or(f64::NAN);
            out.push_str(&format!("{v:?}"));
        }
        other => out.push_str(&other.to_json_string()),
    }
}

/// The standard `test_report.json`: `{file: {tests: [{name, result: {passed, reason}}]}}`.
pub fn report(results: &[(Case, Result<(), String>)]) -> String {
    let mut by_file: BTreeMap<&str, Vec<Json>> = BTreeMap::new();
    for (c, r) in results {
        let mut result = vec![("passed".to_string(), Json::Bool(r.is_ok()))];
        if let Err(reason) = r {
            result.push(("reason".to_string(), Json::String(reason.clone())));
        }
        by_file.entry(&c.file).or_default().push(Json::Object(vec![
            ("name".to_string(), Json::String(c.title.clone())),
            ("result".to_string(), Json::Object(result)),
        ]));
    }
    let doc = Json::Object(
        by_file
            .into_iter()
            .map(|(f, tests)| (format!("{f}.json"), Json::Object(vec![("tests".to_string(), Json::Array(tests))])))
            .collect(),
    );
    doc.to_json_string()
}
