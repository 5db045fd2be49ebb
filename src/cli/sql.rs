//! `fhirlake sql`: read-only SQL over the tables — one query, or an interactive shell with
//! history when no query is given on a terminal (statements end with `;`, `\q` quits).
//! Against a data directory it opens the tables itself and takes no lease (so it runs beside
//! a server); with `--url` it sends the query to a running server's `POST $sql`. Output
//! uses the encodings of `$sql` (plus an aligned table).

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use arrow::array::RecordBatch;
use clap::{Args, ValueEnum};
use fhirlake_ingest::StorageRoot;
use fhirlake_query::SqlSession;
use fhirlake_query::views::output::{Encoder, Format as OutFormat};
use http_body_util::BodyExt;

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
    /// Send the query to a running server (its FHIR base, e.g. http://127.0.0.1:8080/fhir)
    /// instead of opening the data directory.
    #[arg(long, env = "FHIRLAKE_URL")]
    url: Option<String>,
    #[command(flatten)]
    limits: crate::config::QueryLimits,
    /// The query, e.g. "SELECT gender, count(*) FROM patient GROUP BY gender". Without it:
    /// an interactive shell on a terminal, else the SQL read from stdin.
    query: Option<String>,
}

/// Where queries go.
enum Target {
    Local(SqlSession),
    Remote(String),
}

impl Target {
    async fn run(&self, query: &str, format: Format) -> CliResult<Vec<u8>> {
        match self {
            Target::Local(session) => {
                let batches = session.sql(query).await?;
                let mut out = Vec::new();
                write_batches(&mut out, &batches, format)?;
                Ok(out)
            }
            Target::Remote(base) => remote(base, query, format).await,
        }
    }
}

/// Runs the query (or the shell) and prints the result.
pub async fn run(a: SqlArgs) -> CliResult<ExitCode> {
    let target = match &a.url {
        Some(url) => Target::Remote(url.trim_end_matches('/').to_string()),
        None => {
            let root = StorageRoot::open(&a.data.data)?;
            warn_if_served(&root).await;
            Target::Local(SqlSession::open_root(root.url(), root.object_store().clone(), a.limits.limits()).await?)
        }
    };
    let query = match a.query {
        Some(q) => q,
        None if std::io::stdin().is_terminal() => return shell(&target, a.format).await,
        None => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
    };
    let rendered = target.run(&query, a.format).await?;
    print(&rendered)
}

/// When a process holds the root (a server), says how old the tables read here are: the
/// files hold what its last flush wrote (the watermark), not every acknowledged write.
async fn warn_if_served(root: &StorageRoot) {
    use datafusion::object_store::ObjectStoreExt;
    use fhirlake_schemas::layout::{self, LeaseRecord, Watermark};
    let read = |relative: &str| {
        let path = root.path(relative);
        async move { root.object_store().get(&path).await.ok()?.bytes().await.ok() }
    };
    let Some(lease) = read(layout::LEASE_PATH).await else { return };
    let holder =
        layout::decode::<LeaseRecord>(layout::LEASE_PATH, &lease).map_or_else(|_| "a writer".into(), |l| l.holder);
    let as_of = match read(layout::WATERMARK_PATH)
        .await
        .and_then(|w| layout::decode::<Watermark>(layout::WATERMARK_PATH, &w).ok())
    {
        Some(w) => fhirlake_ingest::writer::format_instant(w.seq),
        None => "its start".into(),
    };
    eprintln!(
        "note: {holder} holds this root; its tables are read as of its last flush to Delta ({as_of}; flushes run every few seconds). `fhirlake sql --url <server>` reads every acknowledged write."
    );
}

fn print(bytes: &[u8]) -> CliResult<ExitCode> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // The reader went away (`| head`): nothing more to say.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e.into()),
    }
}

/// The interactive shell: statements end with `;`; history in `~/.fhirlake_sql_history`.
async fn shell(target: &Target, format: Format) -> CliResult<ExitCode> {
    let mut editor = rustyline::DefaultEditor::new()?;
    let history = std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".fhirlake_sql_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    eprintln!("fhirlake sql: end statements with ';', \\q to quit");
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() { "fhirlake> " } else { "      ... " };
        let line = match editor.readline(prompt) {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        if buffer.is_empty() && matches!(line.trim(), "\\q" | "quit" | "exit") {
            break;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if !line.trim_end().ends_with(';') {
            continue;
        }
        let statement = std::mem::take(&mut buffer);
        let _ = editor.add_history_entry(statement.trim());
        let started = std::time::Instant::now();
        match target.run(statement.trim().trim_end_matches(';'), format).await {
            Ok(out) => {
                print(&out)?;
                eprintln!("({:.3} s)", started.elapsed().as_secs_f64());
            }
            Err(e) => eprintln!("error: {e}"),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(ExitCode::SUCCESS)
}

/// `POST {base}/$sql` on a running server; a table is rendered from the Arrow stream.
async fn remote(base: &str, query: &str, format: Format) -> CliResult<Vec<u8>> {
    let (name, accept) = match format {
        Format::Table | Format::Arrow => ("arrow", "application/vnd.apache.arrow.stream"),
        Format::Csv => ("csv", "text/csv"),
        Format::Json => ("json", "application/json"),
        Format::Ndjson => ("ndjson", "application/x-ndjson"),
        Format::Parquet => ("parquet", "application/vnd.apache.parquet"),
    };
    let uri: hyper::Uri = format!("{base}/$sql?_format={name}").parse().map_err(|e| format!("--url '{base}': {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("--url '{base}': only http:// is supported (serve has no TLS)").into());
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let request = hyper::Request::post(uri)
        .header("content-type", "application/sql")
        .header("accept", accept)
        .body(http_body_util::Full::new(bytes::Bytes::from(query.to_string())))?;
    let response = client.request(request).await.map_err(|e| format!("cannot reach {base}: {e}"))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["issue"][0]["diagnostics"].as_str().map(String::from))
            .unwrap_or_else(|| text.into_owned());
        return Err(format!("{status}: {message}").into());
    }
    if matches!(format, Format::Table) {
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)?;
        let batches = reader.collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::new();
        write_batches(&mut out, &batches, Format::Table)?;
        return Ok(out);
    }
    let mut out = body.to_vec();
    if matches!(format, Format::Json) {
        out.push(b'\n');
    }
    Ok(out)
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
