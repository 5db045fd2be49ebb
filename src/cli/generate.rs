//! `fhirlake generate`: deterministic synthetic FHIR data (see [`crate::generate`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::CliResult;
use crate::generate::{Discard, FileOutput, Format, GenerateOptions, Output, TYPES, generate};

/// Options of `generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of patients (about 280 resources each, 1.2 KB per resource).
    #[arg(long, default_value_t = 100)]
    patients: u64,
    /// Seed: the same seed and patient count give byte-identical output.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output folder (created; files of the same names are replaced).
    #[arg(long, required_unless_present = "discard")]
    out: Option<PathBuf>,
    /// Output layout.
    #[arg(long, value_enum, default_value = "ndjson")]
    format: Format,
    /// Generate and throw the bytes away: measures generation without the disk.
    #[arg(long)]
    discard: bool,
    /// Worker threads (default: one per core). The output does not depend on it.
    #[arg(long)]
    threads: Option<usize>,
    /// Do not draw a progress bar.
    #[arg(long, env = "FHIRLAKE_NO_PROGRESS")]
    no_progress: bool,
}

/// Runs `generate`.
pub async fn run(a: GenerateArgs) -> CliResult<ExitCode> {
    tokio::task::spawn_blocking(move || run_blocking(a)).await?
}

fn run_blocking(a: GenerateArgs) -> CliResult<ExitCode> {
    let options = GenerateOptions { patients: a.patients, seed: a.seed, format: a.format };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(a.threads.unwrap_or(0)).build()?;
    let bar = if a.no_progress { ProgressBar::hidden() } else { ProgressBar::new(a.patients) };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} patients {msg} ({elapsed}, {eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut progress = |done: u64, t: &crate::generate::Totals| {
        bar.set_position(done);
        bar.set_message(format!("{} resources", t.total()));
    };
    let totals = match (&a.out, a.discard) {
        (Some(dir), false) => {
            let mut out = FileOutput::create(dir, options.format)
                .map_err(|e| format!("cannot create the output files in {}: {e}", dir.display()))?;
            let totals = pool.install(|| generate(&options, &mut out as &mut dyn Output, &mut progress))?;
            out.finish()?;
            totals
        }
        _ => pool.install(|| generate(&options, &mut Discard, &mut progress))?,
    };
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    for (t, n) in TYPES.iter().zip(totals.resources) {
        eprintln!("{t:>22} {n:>10}");
    }
    eprintln!(
        "generated {} resources of {} patients ({:.1} MB) in {secs:.2} s: {:.0} resources/s{}",
        totals.total(),
        a.patients,
        totals.bytes as f64 / 1e6,
        totals.total() as f64 / secs.max(1e-9),
        if a.discard { " (discarded)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}
