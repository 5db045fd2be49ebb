//! `fhirlake sql`: a read-only query over the current and history tables. It takes no
//! lease, so it runs beside a server.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use arrow::array::RecordBatch;
use clap::{Args, ValueEnum};
use fhirlake_ingest::StorageRoot;
use fhirlake_query::SqlSession;
use fhirlake_query::views::output::{Encoder, Format as OutFormat};

use super::{CliResult, DataArgs};

/// Output format (the encodings of `POST $sql`, plus an aligned table).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header row.
    Csv,
    /// A JSON array of row objects (nulls explicit, decimals as numbers).
    Json,
    /// One JSON object per line.
    Ndjson,
    /// Arrow IPC stream bytes (redirect to a file).
    Arrow,
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

/// Writes `batches` in `format`: the same encodings as `POST $sql`.
pub fn write_batches(out: &mut dyn Write, batches: &[RecordBatch], format: Format) -> CliResult<()> {
    let encoded = match format {
        Format::Table => {
            writeln!(out, "{}", arrow::util::pretty::pretty_format_batches(batches)?)?;
            return Ok(());
        }
        Format::Csv => OutFormat::Csv,
        Format::Json => OutFormat::Json,
        Format::Ndjson => OutFormat::Ndjson,
        Format::Arrow => OutFormat::Arrow,
        Format::Parquet => OutFormat::Parquet,
    };
    let schema = batches.first().map(|b| b.schema()).unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()));
    let mut enc = Encoder::for_schema(encoded, schema)?;
    out.write_all(&enc.begin())?;
    for b in batches {
        out.write_all(&enc.batch(b)?)?;
    }
    out.write_all(&enc.finish()?)?;
    if matches!(format, Format::Json) {
        writeln!(out)?;
    }
    Ok(())
}
