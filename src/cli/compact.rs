//! `fhirlake compact`: compaction, checkpoint and vacuum on demand.
//!
//! Owns: the command line of table maintenance. It takes the storage root's write lease
//! (a running `serve` compacts in the background itself, see `serve --compact-every-secs`),
//! merges small files (or every file with `--full`) sorted by the clustering key, and
//! vacuums files older than the retention. Progress is printed per table.

use std::process::ExitCode;

use clap::Args;
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
pub struct CompactTuning {
    /// Size of the files compaction writes, in MiB.
    #[arg(long, env = "FHIRLAKE_TARGET_FILE_MIB", default_value_t = 8)]
    pub target_file_mib: u64,
    /// Compact a table once it has this many files under half the target size.
    #[arg(long, env = "FHIRLAKE_COMPACT_MIN_SMALL_FILES", default_value_t = 16)]
    pub min_small_files: usize,
    /// Vacuum files no table version of the last HOURS references: the lifetime of search
    /// page links and the time-travel window. Never below 1.
    #[arg(long, env = "FHIRLAKE_RETENTION_HOURS", default_value_t = 168)]
    pub retention_hours: i64,
}

impl CompactTuning {
    /// The compaction options (`full` or small files only).
    pub fn options(&self, full: bool) -> CompactOptions {
        CompactOptions {
            target_file_bytes: self.target_file_mib.max(1) << 20,
            min_small_files: self.min_small_files.max(2),
            full,
            ..Default::default()
        }
    }

    /// The vacuum retention.
    pub fn retention(&self) -> chrono::Duration {
        chrono::Duration::hours(self.retention_hours.max(1))
    }
}

/// Runs `fhirlake compact`.
pub async fn run(a: CompactArgs) -> CliResult<ExitCode> {
    let root = StorageRoot::open(&a.data.data)?;
    let options = WriterOptions { holder: "fhirlake compact".into(), ..Default::default() };
    let (writer, task) = Writer::start(root, options).await?;
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
