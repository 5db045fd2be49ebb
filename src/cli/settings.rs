//! Where each setting comes from: flags, `FHIRLAKE_*` environment variables, a `--config`
//! TOML file, or the default — in that order of precedence — and `fhirlake config print`.
//!
//! Owns: reading the TOML file of a command that has `--config` (every command that reads a
//! storage root, and `config print`) and layering it under the flags and the environment:
//! every key is a flag name without `--` (`search-default-count = 50`, `sql-timeout =
//! "5m"`); one file serves every command, so a key another command takes is left to it,
//! and a key that is no flag of any command is an error naming it; a value is checked by
//! the same parser as the flag. The
//! file is turned into flags that clap parses with the command line, so a setting has one
//! definition and one parser whatever its source. Sections (`[name]`, `[[name]]`) are kept
//! for the repeated settings later releases add (instances, issuers, connectors): none is
//! known yet, so each is refused by name. Must not: define settings (`crate::config` and
//! the commands' argument groups do).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};

use super::Cli;

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// The environment variable named.
    Env(String),
    /// The config file named.
    File(PathBuf),
    /// The built-in default.
    Default,
}

/// One setting of the command that runs, with its effective value.
#[derive(Debug, Clone)]
pub struct Setting {
    /// The flag name without `--` (the config file key).
    pub key: String,
    /// The value as given (several for a repeated flag); none when unset.
    pub values: Vec<String>,
    /// Where it came from.
    pub source: Source,
    /// A secret: printed redacted.
    pub secret: bool,
}

/// A command line that cannot run.
#[derive(Debug)]
pub enum ArgsError {
    /// Usage error found by clap (it prints itself, with help).
    Clap(clap::Error),
    /// The config file is unreadable or names something that is no setting.
    File(String),
}

/// Parses the command line, with the `--config` file of the command layered under it.
pub fn parse(args: Vec<OsString>) -> Result<(Cli, Vec<Setting>), ArgsError> {
    let first = Cli::command().try_get_matches_from(&args).map_err(ArgsError::Clap)?;
    let file = leaf(&first).1.try_get_one::<PathBuf>("config").ok().flatten().cloned();
    let (matches, from_file) = match file {
        None => (first, Vec::new()),
        Some(path) => {
            let extra = file_flags(&path, &first)?;
            let keys: Vec<String> = extra.iter().map(|(k, _)| k.clone()).collect();
            let mut all = args;
            all.extend(extra.into_iter().map(|(_, flag)| OsString::from(flag)));
            let m = Cli::command()
                .try_get_matches_from(all)
                .map_err(|e| ArgsError::File(format!("{}: {}", path.display(), message_of(&e))))?;
            (m, keys.into_iter().map(|k| (k, path.clone())).collect())
        }
    };
    let settings = settings_of(&matches, &from_file);
    let cli = Cli::from_arg_matches(&matches).map_err(ArgsError::Clap)?;
    Ok((cli, settings))
}

/// A clap error's text without its usage footer.
fn message_of(e: &clap::Error) -> String {
    let text = e.to_string();
    let text = text.trim_start_matches("error: ");
    let text = text.split("\n\nUsage:").next().unwrap_or(text);
    text.split("\n\nFor more information").next().unwrap_or(text).trim().to_string()
}

/// The subcommand that runs: its clap command, matches and path (`config print`).
fn leaf(matches: &ArgMatches) -> (clap::Command, &ArgMatches, String) {
    let mut cmd = Cli::command();
    let mut path = Vec::new();
    let mut m = matches;
    while let Some((name, sub)) = m.subcommand() {
        cmd = cmd.find_subcommand(name).expect("a parsed subcommand exists").clone();
        path.push(name.to_string());
        m = sub;
    }
    (cmd, m, path.join(" "))
}

/// The flags a config file sets, as `(key, --key=value)`, leaving out keys whose flag or
/// environment variable is set (those win).
fn file_flags(path: &Path, matches: &ArgMatches) -> Result<Vec<(String, String)>, ArgsError> {
    let err = |m: String| ArgsError::File(format!("{}: {m}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read the config file: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| err(e.to_string()))?;
    let (cmd, m, command) = leaf(matches);
    let mut flags = Vec::new();
    for (key, value) in table {
        if matches!(&value, toml::Value::Table(_))
            || matches!(&value, toml::Value::Array(a) if a.iter().any(toml::Value::is_table))
        {
            return Err(err(format!("[{key}] is not a section fhirlake knows (no sections are defined yet)")));
        }
        let Some(arg) = cmd.get_arguments().find(|a| a.get_long() == Some(key.as_str()) && a.get_id() != "config")
        else {
            if key != "config" && takes_flag(&Cli::command(), &key) {
                continue; // another command's setting
            }
            return Err(err(format!(
                "unknown key '{key}': the keys are the flags of fhirlake's commands without `--` \
                 (see fhirlake {command} --help)"
            )));
        };
        let id = arg.get_id().as_str();
        if matches!(m.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        let items = match value {
            toml::Value::Array(items) => items,
            one => vec![one],
        };
        for item in items {
            let text = match item {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) if matches!(arg.get_action(), ArgAction::SetTrue) => {
                    if b {
                        flags.push((key.clone(), format!("--{key}")));
                    }
                    continue;
                }
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Datetime(d) => d.to_string(),
                toml::Value::Array(_) | toml::Value::Table(_) => {
                    return Err(err(format!("'{key}' takes a value or a list of values, not nested lists")));
                }
            };
            flags.push((key.clone(), format!("--{key}={text}")));
        }
    }
    Ok(flags)
}

/// Whether `cmd` or any of its subcommands has the flag `--{long}`.
fn takes_flag(cmd: &clap::Command, long: &str) -> bool {
    cmd.get_arguments().any(|a| a.get_long() == Some(long)) || cmd.get_subcommands().any(|c| takes_flag(c, long))
}

/// Every setting of the command that runs, with its value and source.
fn settings_of(matches: &ArgMatches, from_file: &[(String, PathBuf)]) -> Vec<Setting> {
    let (cmd, m, _) = leaf(matches);
    cmd.get_arguments()
        .filter(|a| !matches!(a.get_action(), ArgAction::Help | ArgAction::Version) && a.get_long().is_some())
        // Hidden flags (earlier releases' spellings) only when they are set.
        .filter(|a| {
            !a.is_hide_set()
                || matches!(
                    m.value_source(a.get_id().as_str()),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                )
        })
        .map(|a| {
            let id = a.get_id().as_str();
            let key = a.get_long().unwrap_or(id).to_string();
            let values: Vec<String> = match m.get_raw(id) {
                Some(raw) => raw.map(|v| v.to_string_lossy().into_owned()).collect(),
                None if matches!(m.try_get_one::<bool>(id), Ok(Some(true))) => vec!["true".into()],
                None => Vec::new(),
            };
            let source = match (from_file.iter().find(|(k, _)| *k == key), m.value_source(id)) {
                (Some((_, path)), Some(ValueSource::CommandLine)) => Source::File(path.clone()),
                (_, Some(ValueSource::CommandLine)) => Source::Flag,
                (_, Some(ValueSource::EnvVariable)) => {
                    Source::Env(a.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default())
                }
                _ => Source::Default,
            };
            let secret = ["secret", "password", "token", "private-key"].iter().any(|s| key.contains(s));
            Setting { key, values, source, secret }
        })
        .collect()
}

/// The effective settings as a TOML file would set them, each with its source in a
/// comment; secrets redacted. Unset settings are listed commented out.
pub fn render(settings: &[Setting]) -> String {
    let mut out = String::new();
    for s in settings {
        let source = match &s.source {
            Source::Flag => "flag".to_string(),
            Source::Env(name) => format!("environment {name}"),
            Source::File(path) => format!("file {}", path.display()),
            Source::Default => "default".to_string(),
        };
        let value = |v: &str| {
            if s.secret {
                "\"<redacted>\"".to_string()
            } else if v.parse::<i64>().is_ok() || v == "true" || v == "false" {
                v.to_string()
            } else {
                toml::Value::String(v.to_string()).to_string()
            }
        };
        match s.values.as_slice() {
            [] => out.push_str(&format!("# {} = (unset)\n", s.key)),
            [one] => out.push_str(&format!("{} = {}  # {source}\n", s.key, value(one))),
            many => {
                let list: Vec<String> = many.iter().map(|v| value(v)).collect();
                out.push_str(&format!("{} = [{}]  # {source}\n", s.key, list.join(", ")));
            }
        }
    }
    out
}
