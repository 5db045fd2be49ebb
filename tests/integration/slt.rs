//! `tests/sql/*.slt` through the `sqllogictest` crate (as DataFusion's own suite runs):
//! SQL over the Synthea fixtures as `fhirlake import` writes them, each result compared
//! with the one `tests/sql/generate.py` computed from the raw JSON (joins through reference
//! ids, nested fields, unnest of repeating elements, aggregates by code, time travel,
//! history, search-index columns), and `statement error` / `query error` records holding
//! the read-only sandbox's refusals (`sandbox.slt`).
//!
//! Values are rendered by their Arrow type: integers as written, floats and decimals with
//! four decimals, everything else as text, `NULL` for nulls.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use sqllogictest::{DBOutput, DefaultColumnType};

use crate::common::TestServer;

/// A sqllogictest database over one read-only SQL session.
struct Fhirlake {
    session: fhirlake_query::SqlSession,
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Fhirlake {
    type Error = fhirlake_query::Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Self::Error> {
        let batches = self.session.sql(sql).await?;
        Ok(render(&batches)?)
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "fhirlake"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

fn column_type(t: &DataType) -> (DefaultColumnType, DataType) {
    match t {
        t if t.is_integer() => (DefaultColumnType::Integer, DataType::Int64),
        t if t.is_floating() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) => {
            (DefaultColumnType::FloatingPoint, DataType::Float64)
        }
        _ => (DefaultColumnType::Text, DataType::Utf8),
    }
}

fn render(batches: &[RecordBatch]) -> Result<DBOutput<DefaultColumnType>, arrow::error::ArrowError> {
    let Some(first) = batches.first() else {
        return Ok(DBOutput::Rows { types: vec![], rows: vec![] });
    };
    let kinds: Vec<_> = first.schema().fields().iter().map(|f| column_type(f.data_type())).collect();
    let mut rows = Vec::new();
    for b in batches {
        let cols: Vec<_> = b
            .columns()
            .iter()
            .zip(&kinds)
            .map(|(c, (_, target))| arrow::compute::cast(c, target))
            .collect::<Result<_, _>>()?;
        for i in 0..b.num_rows() {
            rows.push(
                cols.iter()
                    .zip(&kinds)
                    .map(|(c, (kind, _))| match kind {
                        _ if c.is_null(i) => "NULL".to_string(),
                        DefaultColumnType::Integer => c.as_primitive::<Int64Type>().value(i).to_string(),
                        DefaultColumnType::FloatingPoint => format!("{:.4}", c.as_primitive::<Float64Type>().value(i)),
                        _ => c.as_string::<i32>().value(i).to_string(),
                    })
                    .collect(),
            );
        }
    }
    Ok(DBOutput::Rows { types: kinds.into_iter().map(|(k, _)| k).collect(), rows })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_files_pass() {
    let server = TestServer::start().await;
    server.load_synthea().await;
    // The files are read as an external reader opens them, once the writes are flushed.
    server.flushed().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sql");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/sql")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    let mut failures = Vec::new();
    let mut records = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read slt");
        records += text.lines().filter(|l| l.starts_with("query ") || l.starts_with("statement ")).count();
        let root = server.root.clone();
        let mut runner = sqllogictest::Runner::new(move || {
            let root = root.clone();
            async move {
                let limits = fhirlake::config::QueryLimits::default().limits();
                let session =
                    fhirlake_query::SqlSession::open_root(root.url(), root.object_store().clone(), limits).await?;
                Ok::<_, fhirlake_query::Error>(Fhirlake { session })
            }
        });
        if let Err(e) = runner.run_file_async(path).await {
            failures.push(format!("{}: {e}", path.display()));
        }
    }
    assert!(records >= 90, "only {records} records");
    assert!(failures.is_empty(), "{} files failed:\n{}", failures.len(), failures.join("\n"));
}
