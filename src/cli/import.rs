//! `fhirlake import`: Bundle and NDJSON files through the normal write path.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use fhirlake_ingest::import::{ImportOptions, import_paths};
use fhirlake_ingest::{StorageRoot, Writer};
use indicatif::{ProgressBar, ProgressStyle};

use super::{CliResult, DataArgs, EXIT_REJECTED};

/// Options of `import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Where rejected resources are written, one JSON line each with its OperationOutcome.
    #[arg(long, env = "FHIRLAKE_IMPORT_ERRORS", default_value = "fhirlake-import-errors.ndjson")]
    errors: PathBuf,
    /// Resources per write request.
    #[arg(long, env = "FHIRLAKE_IMPORT_CHUNK", default_value_t = 2000)]
    chunk: usize,
    /// Create new tables without the search-index columns (`_sp_*`): faster loads for
    /// SQL-only use; FHIR search on those types then has no index. Existing tables keep
    /// what they were created with.
    #[arg(long, env = "FHIRLAKE_NO_SEARCH_INDEX")]
    no_search_index: bool,
    #[command(flatten)]
    writes: crate::config::WriteSettings,
    /// Do not draw a progress bar.
    #[arg(long, env = "FHIRLAKE_NO_PROGRESS")]
    no_progress: bool,
    /// Files or folders: *.json (a Bundle or one resource), *.ndjson, *.ndjson.gz.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

/// Runs the import.
pub async fn run(a: ImportArgs) -> CliResult<ExitCode> {
    let root = StorageRoot::open(&a.data.data)?;
    let mut options = a.writes.writer_options("fhirlake import");
    options.shape.search_index = !a.no_search_index;
    let (writer, task) = Writer::start(root, options).await?;
    let bar = if a.no_progress { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let progress_bar = bar.clone();
    let _ = std::fs::remove_file(&a.errors);
    let options = ImportOptions {
        chunk: a.chunk.max(1),
        errors_path: Some(a.errors.clone()),
        progress: Arc::new(move |p| {
            progress_bar.set_length(p.bytes_total);
            progress_bar.set_position(p.bytes_done);
            progress_bar.set_message(format!("{} resources, {} rejected", p.resources, p.rejected));
        }),
        ..Default::default()
    };
    let result = import_paths(&writer, &a.paths, options).await;
    bar.finish_and_clear();
    drop(writer);
    task.shutdown().await?;
    let s = result?;
    crate::outln!(
        "imported {} resources ({} new versions, {} unchanged) from {} files in {:.1}s: {:.0} resources/s; {} rejected",
        s.written + s.unchanged,
        s.written,
        s.unchanged,
        s.files,
        s.elapsed.as_secs_f64(),
        s.resources_per_second(),
        s.rejected
    );
    for (rt, n) in &s.per_type {
        crate::outln!("  {rt:32} {n}");
    }
    if s.rejected > 0 {
        eprintln!("{} resources were rejected; see {}", s.rejected, a.errors.display());
        return Ok(ExitCode::from(EXIT_REJECTED));
    }
    Ok(ExitCode::SUCCESS)
}
