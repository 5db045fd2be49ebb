//! `fhirlake compact`: compaction, checkpoint and vacuum on demand.
//!
//! Owns: the command line of table maintenance. It takes the storage root's write lease
//! (a running `serve` compacts in the background itself, see `serve --compact-every`),
//! merges small files (or every file with `--full`) sorted by the clustering key, and
//! vacuums files older than the retention. Progress is printed per table.

use std::process::ExitCode;

use clap::Args;
use clap::builder::TypedValueParser as _;
use fhirlake_ingest::compact::{CompactOptions, TableReport};
use fhirlake_ingest::{StorageRoot, Writer, WriterOptions};

use super::{CliResult, DataArgs};

/// `fhirlake compact` arguments.
#[derive(Debug, Args)]
pub struct CompactArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Rewrite every file (re-cluster the tables), not only small files.
    #[arg(long)]
    full: bool,
    #[command(flatten)]
    tuning: CompactTuning,
    /// Skip the vacuum.
    #[arg(long)]
    no_vacuum: bool,
}

/// Compaction settings shared by `compact` and `serve`.
#[derive(Debug, Clone, Copy, Args)]
#[command(next_help_heading = "Compaction")]
pub struct CompactTuning {
    /// Size of the files compaction writes, e.g. 8MiB.
    #[arg(long, env = "FHIRLAKE_TARGET_FILE_SIZE", default_value = "8MiB", value_parser = crate::config::parse_size)]
    pub target_file_size: usize,
    /// The same in MiB (earlier releases' flag; overrides `--target-file-size`).
    #[arg(long, env = "FHIRLAKE_TARGET_FILE_MIB", hide = true)]
    pub target_file_mib: Option<u64>,
    /// Compact a table once it has this many files under half the target size.
    #[arg(long, env = "FHIRLAKE_COMPACT_MIN_SMALL_FILES", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(2..).map(|v| v as usize))]
    pub min_small_files: usize,
    /// Vacuum files no table version of this long references (at least 1h): the lifetime
    /// of search page links and the time-travel window, e.g. 168h or 7days.
    #[arg(long, env = "FHIRLAKE_RETENTION", default_value = "168h", value_parser = crate::config::parse_duration)]
    pub retention: std::time::Duration,
    /// The same in hours (earlier releases' flag; overrides `--retention`).
    #[arg(long, env = "FHIRLAKE_RETENTION_HOURS", hide = true)]
    pub retention_hours: Option<i64>,
}

impl CompactTuning {
    /// The compaction options (`full` or small files only).
    pub fn options(&self, full: bool) -> CompactOptions {
        let target = self.target_file_mib.map_or(self.target_file_size as u64, |mib| mib << 20);
        CompactOptions {
            target_file_bytes: target.max(1 << 20),
            min_small_files: self.min_small_files,
            full,
            ..Default::default()
        }
    }

    /// The vacuum retention (never under an hour).
    pub fn retention(&self) -> chrono::Duration {
        let retention = match self.retention_hours {
            Some(h) => chrono::Duration::hours(h),
            None => chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX),
        };
        retention.max(chrono::Duration::hours(1))
    }
}

/// Runs `fhirlake compact`.
pub async fn run(a: CompactArgs) -> CliResult<ExitCode> {
    let root = StorageRoot::open(&a.data.data)?;
    let options = WriterOptions { holder: "fhirlake compact".into(), ..Default::default() };
    let (writer, task) = Writer::start(root.clone(), options).await?;
    let opts = a.tuning.options(a.full);
    let started = std::time::Instant::now();
    let result = writer.compact(opts, &mut |r: &TableReport| crate::outln!("{}", describe(r))).await;
    let vacuumed = match (&result, a.no_vacuum) {
        (Ok(_), false) => Some(writer.vacuum(a.tuning.retention()).await),
        _ => None,
    };
    drop(writer);
    task.shutdown().await?;
    let reports = result?;
    let rewritten: usize = reports.iter().map(|r| r.rows).sum();
    crate::outln!("compacted {} tables, {rewritten} rows rewritten in {:.1?}", reports.len(), started.elapsed());
    if let Some((before, after)) = fhirlake_ingest::writer::compact_store(&root, "fhirlake compact").await? {
        crate::outln!("serving store: {:.1} MiB -> {:.1} MiB", before as f64 / 1048576.0, after as f64 / 1048576.0);
    }
    if let Some(v) = vacuumed {
        crate::outln!("vacuum: {} unreferenced files older than {} h deleted", v?, a.tuning.retention().num_hours());
    }
    Ok(ExitCode::SUCCESS)
}

/// One progress line.
pub fn describe(r: &TableReport) -> String {
    let kind = r.kind.map(|k| k.folder()).unwrap_or("?");
    let mut s = format!("{kind}/{}: {} -> {} files", r.resource_type, r.files_before, r.files_after);
    if r.rows > 0 {
        s.push_str(&format!(", {} rows rewritten", r.rows));
    }
    if r.rounds_dropped > 0 {
        s.push_str(&format!(", {} rounds dropped (concurrent updates; next time)", r.rounds_dropped));
    }
    s
}
