//! `fhirlake sql`: a read-only query over the current and history tables. It takes no
//! lease, so it runs beside a server.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use arrow::array::RecordBatch;
use clap::{Args, ValueEnum};
use fhirlake_ingest::StorageRoot;
use fhirlake_query::SqlSession;

use super::{CliResult, DataArgs};

/// Output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header row.
    Csv,
    /// A JSON array of row objects.
    Json,
    /// Parquet bytes (redirect to a file).
    Parquet,
}

/// Options of `sql`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Output format.
    #[arg(long, env = "FHIRLAKE_SQL_FORMAT", value_enum, default_value = "table")]
    format: Format,
    /// The query, e.g. "SELECT gender, count(*) FROM patient GROUP BY gender".
    query: String,
}

/// Runs the query and prints the result.
pub async fn run(a: SqlArgs) -> CliResult<ExitCode> {
    let root = StorageRoot::open(&a.data.data)?;
    let session = SqlSession::open_root(root.url(), root.object_store().clone()).await?;
    let batches = session.sql(&a.query).await?;
    // The batches are in memory already; render, then write once.
    let mut rendered = Vec::new();
    write_batches(&mut rendered, &batches, a.format)?;
    let mut out = std::io::stdout().lock();
    match out.write_all(&rendered).and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // The reader went away (`| head`): nothing more to say.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e.into()),
    }
}

/// Writes `batches` in `format`.
pub fn write_batches(out: &mut dyn Write, batches: &[RecordBatch], format: Format) -> CliResult<()> {
    match format {
        Format::Table => writeln!(out, "{}", arrow::util::pretty::pretty_format_batches(batches)?)?,
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(out);
            for b in batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::ArrayWriter::new(&mut *out);
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            w.write_batches(&refs)?;
            w.finish()?;
            if batches.iter().all(|b| b.num_rows() == 0) {
                // The array writer writes nothing for no rows.
                write!(out, "[]")?;
            }
            writeln!(out)?;
        }
        Format::Parquet => {
            let schema =
                batches.first().map(|b| b.schema()).unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()));
            let mut buf = Vec::new();
            let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None)?;
            for b in batches {
                w.write(b)?;
            }
            w.close()?;
            out.write_all(&buf)?;
        }
    }
    Ok(())
}
