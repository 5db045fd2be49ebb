//! The command line: `serve`, `import`, `sql`, `view`, `compact`, `generate`, `config`,
//! `auth`.
//!
//! Every flag can also be set from a `FHIRLAKE_*` environment variable. Exit codes:
//! 0 success; 1 failure (message on stderr); 2 usage error (clap); 3 `import` finished
//! but rejected some resources (see the error file); 4 the storage root is held by
//! another process (the single-writer lease).

mod auth;
mod compact;
mod generate;
mod import;
mod serve;
pub mod settings;
mod sql;
mod view;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// fhirlake: a FHIR R4 server whose data is a set of Delta Lake tables.
#[derive(Debug, Parser)]
#[command(name = "fhirlake", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the FHIR server.
    Serve(Box<serve::ServeArgs>),
    /// Import Bundle and NDJSON files (or folders of them).
    Import(import::ImportArgs),
    /// Run a read-only SQL query over the tables.
    Sql(sql::SqlArgs),
    /// Materialize or explain SQL-on-FHIR ViewDefinitions.
    View(view::ViewArgs),
    /// Compact the tables (merge small files, cluster by patient), checkpoint and vacuum.
    Compact(compact::CompactArgs),
    /// Write deterministic synthetic FHIR data (NDJSON per type or transaction Bundles).
    Generate(generate::GenerateArgs),
    /// Show the effective configuration.
    Config(ConfigArgs),
    /// Development keys and tokens for `serve --auth smart`.
    Auth(auth::AuthArgs),
}

/// `fhirlake config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: ConfigAction,
}

/// What `fhirlake config` does.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the settings `fhirlake serve` would run with (same flags, variables and
    /// `--config` file), each with where it came from; secrets redacted.
    Print(Box<serve::ServeArgs>),
}

/// Where the data and the settings live; shared by every command that reads a root.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// A TOML file of settings: keys are flag names without `--` (`data = "/srv/fhir"`,
    /// `sql-timeout = "5m"`); flags and FHIRLAKE_* variables override it. One file serves
    /// every command: a key another command takes is left to it.
    #[arg(long, env = "FHIRLAKE_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Storage root: a local path or a file:// URL.
    #[arg(long, env = "FHIRLAKE_DATA", default_value = "./fhirlake-data")]
    pub data: String,
}

/// Exit code: the import rejected some resources.
pub const EXIT_REJECTED: u8 = 3;
/// Exit code: the storage root's write lease is held by another process.
pub const EXIT_LEASE_HELD: u8 = 4;

/// Sets up logging (`RUST_LOG`, default `info`) to stderr.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,fhirlake=info,fhirlake_ingest=info,fhirlake_query=info,deltalake_core::datafile::writer=error",
        )
    });
    // Colours only for a terminal: a file or a log collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
}

/// Parses the process's command line with its config file (usage errors exit here).
pub fn parse() -> (Cli, Vec<settings::Setting>) {
    match settings::parse(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(settings::ArgsError::Clap(e)) => e.exit(),
        Err(settings::ArgsError::File(m)) => {
            eprintln!("error: {m}");
            std::process::exit(2)
        }
    }
}

/// Runs a parsed command line; `settings` are the effective settings of the command.
pub async fn run(cli: Cli, settings: Vec<settings::Setting>) -> ExitCode {
    let result = match cli.command {
        Command::Serve(a) => serve::run(*a).await,
        Command::Import(a) => import::run(a).await,
        Command::Sql(a) => sql::run(a).await,
        Command::View(a) => view::run(a).await,
        Command::Compact(a) => compact::run(a).await,
        Command::Generate(a) => generate::run(a).await,
        Command::Auth(a) => auth::run(a),
        Command::Config(ConfigArgs { action: ConfigAction::Print(_) }) => {
            crate::outln!("{}", settings::render(&settings).trim_end());
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(fhirlake_ingest::Error::LeaseHeld { .. }) = e.downcast_ref::<fhirlake_ingest::Error>() {
                return ExitCode::from(EXIT_LEASE_HELD);
            }
            ExitCode::from(1)
        }
    }
}

/// Prints a line to stdout; a closed stdout (`| head`) is not an error worth a panic.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

/// Error type of the commands.
pub type CliResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Downcast helper used by [`run`].
trait Downcast {
    fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T>;
}

impl Downcast for Box<dyn std::error::Error + Send + Sync> {
    fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        (**self).downcast_ref::<T>()
    }
}
