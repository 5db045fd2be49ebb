//! Settings: each defined once, as a clap argument group that is also the struct the
//! code reads.
//!
//! Owns: the setting groups of the FHIR API ([`RequestLimits`], [`SearchSettings`],
//! [`SqlSettings`]) and [`ApiConfig`], which holds them; typed sizes (`512MiB`) and
//! durations (`60s`) with their parsers. Each default is written once, in the group's
//! `#[arg]` attribute; `Default` of a group is what clap gives for no flags
//! ([`clap_defaults`]). Flags, `FHIRLAKE_*` environment variables and a `--config` TOML
//! file set them (`cli::settings`). Must not: read files or the environment itself.

use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{Args, FromArgMatches};

/// A size: a number of bytes with an optional unit (`512MiB`, `8MiB`, `1GiB`, `64KiB`,
/// `10MB`, `4096`).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("'{text}' is not a size (e.g. 512MiB, 8MiB, 1GiB, 4096)"))?;
    let unit_bytes: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "ki" => 1 << 10,
        "mib" | "mi" => 1 << 20,
        "gib" | "gi" => 1 << 30,
        "tib" | "ti" => 1 << 40,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "tb" | "t" => 1_000_000_000_000,
        other => return Err(format!("'{other}' is not a size unit (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")),
    };
    n.checked_mul(unit_bytes)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("'{text}' is too large a size"))
}

/// A duration with a unit (`60s`, `5m`, `2h`, `250ms`, `7days`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("'{text}' is not a duration ({e}; e.g. 60s, 5m, 2h, 250ms)"))
}

/// What clap gives a group for no flags: each field's default, written once in its
/// `#[arg]` (environment variables are not read).
pub fn clap_defaults<T: Args + FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults").no_binary_name(true)).mut_args(|a| a.env(None));
    let matches = cmd.try_get_matches_from(std::iter::empty::<String>()).expect("the defaults parse");
    T::from_arg_matches(&matches).expect("the defaults are valid")
}

/// Limits on what one request to the FHIR API may send.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Request limits")]
pub struct RequestLimits {
    /// Largest single-resource request body (a size: 16MiB, or bytes).
    #[arg(long, env = "FHIRLAKE_MAX_RESOURCE_BYTES", default_value = "16MiB", value_parser = parse_size)]
    pub max_resource_bytes: usize,
    /// Largest Bundle request body (POST to the base), also of `$run` Parameters.
    #[arg(long, env = "FHIRLAKE_MAX_BUNDLE_BYTES", default_value = "128MiB", value_parser = parse_size)]
    pub max_bundle_bytes: usize,
    /// Most entries in one transaction or batch Bundle (413 beyond).
    #[arg(long, env = "FHIRLAKE_MAX_BUNDLE_ENTRIES", default_value_t = 50_000)]
    pub max_bundle_entries: usize,
    /// Most resources one conditional DELETE (`DELETE /Type?criteria`) may delete; 1 refuses
    /// a search that matches several (412).
    #[arg(long, env = "FHIRLAKE_CONDITIONAL_DELETE_MAX", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..).map(|v| v as usize))]
    pub conditional_delete_max: usize,
    /// Deepest JSON nesting accepted in a request body.
    #[arg(long, env = "FHIRLAKE_MAX_JSON_DEPTH", default_value_t = 100)]
    pub max_json_depth: usize,
}

/// FHIR search settings.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Search")]
pub struct SearchSettings {
    /// Matches per search page when a search has no `_count`.
    #[arg(long, env = "FHIRLAKE_SEARCH_DEFAULT_COUNT", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..).map(|v| v as usize))]
    pub search_default_count: usize,
    /// The largest `_count` a search may ask for (larger values are lowered to it).
    #[arg(long, env = "FHIRLAKE_SEARCH_MAX_COUNT", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..).map(|v| v as usize))]
    pub search_max_count: usize,
    /// Memory for token postings: counts and pages of token searches read each data
    /// file's postings instead of its rows once built (0: off).
    #[arg(long, env = "FHIRLAKE_SEARCH_POSTINGS_MEMORY", default_value = "512MiB", value_parser = parse_size)]
    pub search_postings_memory: usize,
    /// The same in MiB (earlier releases' flag; overrides `--search-postings-memory`).
    #[arg(long, env = "FHIRLAKE_SEARCH_POSTINGS_MIB", hide = true)]
    pub search_postings_mib: Option<usize>,
}

impl SearchSettings {
    /// Matches per page without `_count` (never above the maximum).
    pub fn default_count(&self) -> usize {
        self.search_default_count.min(self.search_max_count)
    }

    /// The postings budget in bytes.
    pub fn postings_bytes(&self) -> usize {
        self.search_postings_mib.map_or(self.search_postings_memory, |mib| mib << 20)
    }
}

/// The write path: when acknowledged writes reach Delta, and how much may wait.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Writes")]
pub struct WriteSettings {
    /// Acknowledged writes are flushed to the Delta tables once the oldest waiting one is
    /// this old, e.g. 5s: external Delta readers (and `fhirlake sql --data`) lag the server
    /// by at most this plus a flush.
    #[arg(long, env = "FHIRLAKE_FLUSH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub flush_interval: Duration,
    /// Flush at once when this much JSON is waiting, e.g. 64MiB (a flush round holds a few
    /// times this in memory while it flattens and writes).
    #[arg(long, env = "FHIRLAKE_FLUSH_BUFFER", default_value = "64MiB", value_parser = parse_size)]
    pub flush_buffer: usize,
    /// Refuse writes (503, Retry-After) while this much JSON is waiting to be flushed, e.g.
    /// when flushes fail: memory stays bounded.
    #[arg(long, env = "FHIRLAKE_FLUSH_BUFFER_LIMIT", default_value = "1GiB", value_parser = parse_size)]
    pub flush_buffer_limit: usize,
    /// Page cache of the serving store (reads by id and history), e.g. 256MiB.
    #[arg(long, env = "FHIRLAKE_STORE_CACHE", default_value = "256MiB", value_parser = parse_size)]
    pub store_cache: usize,
}

impl WriteSettings {
    /// The writer's options with these settings.
    pub fn writer_options(&self, holder: &str) -> fhirlake_ingest::WriterOptions {
        fhirlake_ingest::WriterOptions {
            holder: holder.to_string(),
            flush: fhirlake_ingest::writer::FlushPolicy {
                interval: self.flush_interval,
                soft_bytes: self.flush_buffer as u64,
            },
            hard_buffer_bytes: self.flush_buffer_limit.max(self.flush_buffer) as u64,
            store_cache_bytes: self.store_cache,
            fail_flush_marker: std::env::var_os("FHIRLAKE_TEST_FAIL_FLUSH").map(std::path::PathBuf::from),
            ..Default::default()
        }
    }
}

/// Bounds of one SQL query, wherever it runs (`$sql`, Flight SQL, `fhirlake sql`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "SQL")]
pub struct QueryLimits {
    /// Wall-time limit of one query (it is cancelled beyond), e.g. 120s or 5m.
    #[arg(long, env = "FHIRLAKE_SQL_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub sql_timeout: Duration,
    /// The same in seconds (earlier releases' flag; overrides `--sql-timeout`).
    #[arg(long, env = "FHIRLAKE_SQL_TIMEOUT_SECS", hide = true)]
    pub sql_timeout_secs: Option<u64>,
    /// Memory one query's operators may use (sorts, joins, aggregates), e.g. 1GiB.
    #[arg(long, env = "FHIRLAKE_SQL_MEMORY", default_value = "1GiB", value_parser = parse_size)]
    pub sql_memory: usize,
    /// The same in MiB (earlier releases' flag; overrides `--sql-memory`).
    #[arg(long, env = "FHIRLAKE_SQL_MEMORY_MIB", hide = true)]
    pub sql_memory_mib: Option<usize>,
    /// Longest SQL text accepted.
    #[arg(long, env = "FHIRLAKE_SQL_MAX_TEXT", default_value = "256KiB", value_parser = parse_size)]
    pub sql_max_text: usize,
}

impl QueryLimits {
    /// The bounds every query runs under.
    pub fn limits(&self) -> fhirlake_query::catalog::SqlLimits {
        fhirlake_query::catalog::SqlLimits {
            max_sql_bytes: self.sql_max_text,
            memory_bytes: self.sql_memory_mib.map_or(self.sql_memory, |mib| mib << 20),
            timeout: self.sql_timeout_secs.map_or(self.sql_timeout, Duration::from_secs),
            planner_stack_bytes: fhirlake_query::catalog::SqlLimits::PLANNER_STACK_BYTES,
        }
    }
}

/// `$sql` and Flight SQL settings.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "SQL")]
pub struct SqlSettings {
    #[command(flatten)]
    pub query: QueryLimits,
    /// Rows returned when a request names no limit.
    #[arg(long, env = "FHIRLAKE_SQL_DEFAULT_ROWS", default_value_t = 10_000)]
    pub sql_default_rows: usize,
    /// The largest row limit a request may ask for.
    #[arg(long, env = "FHIRLAKE_SQL_MAX_ROWS", default_value_t = 10_000_000)]
    pub sql_max_rows: usize,
}

impl SqlSettings {
    /// The bounds every query runs under.
    pub fn limits(&self) -> fhirlake_query::catalog::SqlLimits {
        self.query.limits()
    }
}

macro_rules! default_from_clap {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                clap_defaults()
            }
        }
    )*};
}
default_from_clap!(RequestLimits, SearchSettings, QueryLimits, SqlSettings);

/// Settings of the HTTP API, shared by `serve` and the in-process test router.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Path prefix of the FHIR API (default `/fhir`).
    pub base_path: String,
    /// Public base URL used in `Location`, `fullUrl` and links (`serve`: from the listen
    /// address and base path unless `--public-url`).
    pub public_url: String,
    /// What one request may send.
    pub limits: RequestLimits,
    /// Search paging and postings.
    pub search: SearchSettings,
    /// `$sql` and Flight SQL.
    pub sql: SqlSettings,
}

impl ApiConfig {
    /// The public base without a trailing slash.
    pub fn public_base(&self) -> &str {
        self.public_url.trim_end_matches('/')
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            base_path: "/fhir".into(),
            public_url: "http://127.0.0.1:8080/fhir".into(),
            limits: RequestLimits::default(),
            search: SearchSettings::default(),
            sql: SqlSettings::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_with_units() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("8 MiB"), Ok(8 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs").unwrap_err().contains("not a size unit"));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn defaults_come_from_the_flags() {
        let c = ApiConfig::default();
        assert_eq!(c.limits.max_resource_bytes, 16 << 20);
        assert_eq!(c.limits.max_bundle_entries, 50_000);
        assert_eq!((c.search.default_count(), c.search.search_max_count), (20, 1000));
        assert_eq!(c.search.postings_bytes(), 512 << 20);
        let sql = c.sql.limits();
        assert_eq!((sql.max_sql_bytes, sql.memory_bytes, sql.timeout), (256 << 10, 1 << 30, Duration::from_secs(120)));
        let old = QueryLimits { sql_memory_mib: Some(64), sql_timeout_secs: Some(3), ..QueryLimits::default() };
        assert_eq!((old.limits().memory_bytes, old.limits().timeout), (64 << 20, Duration::from_secs(3)));
    }
}
