//! Bulk import of Bundle and NDJSON files through the normal write path.
//!
//! Owns: walking files and folders (`.json`, `.ndjson`, `.json.gz`, `.ndjson.gz`), parsing
//! and validating resources in parallel (rayon), submitting them to the [`Writer`] in large
//! chunks while the next chunk is prepared, writing every rejected resource with its
//! OperationOutcome to an error file, and reporting progress and a summary. NDJSON and
//! collection Bundles keep their ids (lines without an id get one); transaction and batch
//! Bundles go through [`crate::bundle`]. Must not: bypass the writer.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fhirlake_schemas::json::ParseLimits;
use fhirlake_schemas::validate::{Issue, IssueCode, ValidationOptions, operation_outcome, parse_and_validate};
use fhirlake_schemas::{Json, Model};
use rayon::prelude::*;

use crate::bundle::{BundleKind, EntryAction, Resolved, plan_bundle};
use crate::writer::{Action, OpOutcome, Precondition, WriteOp, Writer};
use crate::{Error, Result};

/// Progress of an import, reported after every chunk.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportProgress {
    /// Bytes of input read so far.
    pub bytes_done: u64,
    /// Total bytes of input.
    pub bytes_total: u64,
    /// Resources stored or unchanged so far.
    pub resources: u64,
    /// Resources rejected so far.
    pub rejected: u64,
}

/// Options of an import.
pub struct ImportOptions {
    /// Resources per write request.
    pub chunk: usize,
    /// Where rejected resources are written (NDJSON of `{source, outcome}`).
    pub errors_path: Option<PathBuf>,
    /// Validation limits.
    pub validation: ValidationOptions,
    /// JSON parse limits.
    pub limits: ParseLimits,
    /// Called with progress after each chunk.
    pub progress: Arc<dyn Fn(ImportProgress) + Send + Sync>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            chunk: 2000,
            errors_path: None,
            validation: ValidationOptions::default(),
            limits: ParseLimits { max_depth: 100, max_string_bytes: 64 * 1024 * 1024 },
            progress: Arc::new(|_| {}),
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, Default)]
pub struct ImportSummary {
    /// Files read.
    pub files: usize,
    /// New versions written.
    pub written: u64,
    /// Resources identical to what was stored (not re-versioned).
    pub unchanged: u64,
    /// Resources rejected (see the error file).
    pub rejected: u64,
    /// Written or unchanged resources per type.
    pub per_type: BTreeMap<String, u64>,
    /// Wall time.
    pub elapsed: Duration,
}

impl ImportSummary {
    /// Resources accepted (written + unchanged) per second.
    pub fn resources_per_second(&self) -> f64 {
        (self.written + self.unchanged) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A rejected input, for the error file.
struct Rejection {
    source: String,
    issues: Vec<Issue>,
}

/// Every importable file under `paths` (folders are walked, sorted by name).
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| Error::Io { path: p.display().to_string(), source: e })?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| Error::Io { path: p.display().to_string(), source: e })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            for e in entries {
                if e.is_dir() || is_importable(&e) {
                    out.extend(collect_files(&[e])?);
                }
            }
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn is_importable(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    [".json", ".ndjson", ".json.gz", ".ndjson.gz"].iter().any(|s| name.ends_with(s))
}

fn open(path: &Path) -> Result<Box<dyn Read + Send>> {
    let f = std::fs::File::open(path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
    if path.extension().is_some_and(|e| e == "gz") {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(f))))
    } else {
        Ok(Box::new(BufReader::new(f)))
    }
}

/// Imports `paths` through `writer`.
pub async fn import_paths(writer: &Writer, paths: &[PathBuf], options: ImportOptions) -> Result<ImportSummary> {
    let started = Instant::now();
    let files = collect_files(paths)?;
    let bytes_total: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    let mut state = State {
        writer: writer.clone(),
        options,
        summary: ImportSummary { files: files.len(), ..Default::default() },
        progress: ImportProgress { bytes_total, ..Default::default() },
        errors: None,
        inflight: Vec::new(),
    };
    for file in &files {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let is_ndjson = name.ends_with(".ndjson") || name.ends_with(".ndjson.gz");
        if is_ndjson {
            state.ndjson(file).await?;
        } else {
            state.json_file(file).await?;
        }
        state.progress.bytes_done += std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        (state.options.progress)(state.progress);
    }
    state.drain(0).await?;
    if let Some(mut w) = state.errors.take() {
        w.flush().map_err(|e| Error::Io { path: "error file".into(), source: e })?;
    }
    state.summary.elapsed = started.elapsed();
    Ok(state.summary)
}

/// What is kept of a submitted op for the summary: (resource type, is a put).
type OpInfo = (String, bool);

type Pending = tokio::task::JoinHandle<(Vec<String>, Vec<OpInfo>, Result<Vec<OpOutcome>>)>;

struct State {
    writer: Writer,
    options: ImportOptions,
    summary: ImportSummary,
    progress: ImportProgress,
    errors: Option<std::io::BufWriter<std::fs::File>>,
    inflight: Vec<Pending>,
}

impl State {
    fn reject(&mut self, r: Rejection) -> Result<()> {
        self.summary.rejected += 1;
        self.progress.rejected += 1;
        let Some(path) = &self.options.errors_path else { return Ok(()) };
        if self.errors.is_none() {
            let f =
                std::fs::File::create(path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
            self.errors = Some(std::io::BufWriter::new(f));
        }
        let line = format!(
            "{{\"source\":{},\"outcome\":{}}}\n",
            Json::String(r.source).to_json_string(),
            operation_outcome(&r.issues).to_json_string()
        );
        let w = self.errors.as_mut().expect("error file open");
        w.write_all(line.as_bytes()).map_err(|e| Error::Io { path: path.display().to_string(), source: e })
    }

    /// Submits `ops` as one request; keeps at most three requests in flight.
    async fn submit(&mut self, sources: Vec<String>, ops: Vec<WriteOp>, atomic: bool) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        self.drain(2).await?;
        let writer = self.writer.clone();
        let info: Vec<OpInfo> =
            ops.iter().map(|op| (op.resource_type.clone(), matches!(op.action, Action::Put(_)))).collect();
        self.inflight.push(tokio::spawn(async move {
            let r = if atomic { writer.submit_atomic(ops).await } else { writer.submit(ops).await };
            (sources, info, r)
        }));
        Ok(())
    }

    async fn drain(&mut self, keep: usize) -> Result<()> {
        while self.inflight.len() > keep {
            let h = self.inflight.remove(0);
            let (sources, ops, result) = h.await.map_err(|e| Error::CommitFailed(e.to_string()))?;
            let outcomes = result?;
            for ((source, op), outcome) in sources.into_iter().zip(&ops).zip(outcomes) {
                match outcome {
                    OpOutcome::Written { .. } | OpOutcome::Deleted { .. } => self.summary.written += 1,
                    OpOutcome::Unchanged { .. } => self.summary.unchanged += 1,
                    OpOutcome::PreconditionFailed { .. } | OpOutcome::RolledBack => {
                        let why = if matches!(outcome, OpOutcome::RolledBack) {
                            "not stored: another entry of the transaction failed"
                        } else {
                            "precondition (ifMatch) failed"
                        };
                        self.reject(Rejection { source, issues: vec![issue(IssueCode::Invalid, why)] })?;
                        continue;
                    }
                }
                if op.1 {
                    *self.summary.per_type.entry(op.0.clone()).or_default() += 1;
                    self.progress.resources += 1;
                }
            }
            (self.options.progress)(self.progress);
        }
        Ok(())
    }

    async fn ndjson(&mut self, file: &Path) -> Result<()> {
        let reader = BufReader::with_capacity(1 << 20, open(file)?);
        let mut lines = reader.lines();
        let mut line_no = 0usize;
        let name = file.display().to_string();
        loop {
            let mut chunk: Vec<(usize, String)> = Vec::with_capacity(self.options.chunk);
            for line in lines.by_ref() {
                line_no += 1;
                let line = line.map_err(|e| Error::Io { path: name.clone(), source: e })?;
                if line.trim().is_empty() {
                    continue;
                }
                chunk.push((line_no, line));
                if chunk.len() >= self.options.chunk {
                    break;
                }
            }
            if chunk.is_empty() {
                return Ok(());
            }
            let limits = self.options.limits;
            let validation = self.options.validation;
            let parsed = tokio::task::spawn_blocking(move || parse_lines(chunk, limits, validation))
                .await
                .map_err(|e| Error::CommitFailed(e.to_string()))??;
            let mut sources = Vec::new();
            let mut ops = Vec::new();
            for (n, r) in parsed {
                match r {
                    Ok(op) => {
                        sources.push(format!("{name}:{n}"));
                        ops.push(op);
                    }
                    Err(issues) => self.reject(Rejection { source: format!("{name}:{n}"), issues })?,
                }
            }
            self.submit(sources, ops, false).await?;
        }
    }

    async fn json_file(&mut self, file: &Path) -> Result<()> {
        let name = file.display().to_string();
        let mut bytes = Vec::new();
        open(file)?.read_to_end(&mut bytes).map_err(|e| Error::Io { path: name.clone(), source: e })?;
        let model = Model::r4()?;
        let json = match Json::parse(&bytes, self.options.limits) {
            Ok(j) => j,
            Err(e) => {
                return self
                    .reject(Rejection { source: name, issues: vec![fhirlake_schemas::validate::json_issue(&e)] });
            }
        };
        if json.get("resourceType").and_then(Json::as_str) == Some("Bundle") {
            let plan = plan_bundle(model, &json, &self.options.validation, &mut new_id, &Resolved::default());
            let plan = match plan {
                Ok(p) => p,
                Err(issues) => return self.reject(Rejection { source: name, issues }),
            };
            let mut sources = Vec::new();
            let mut ops = Vec::new();
            let any_invalid = plan.entries.iter().any(|e| !matches!(e.action, Ok(EntryAction::Write(_))));
            for e in plan.entries {
                let source = format!("{name}#entry[{}]", e.index);
                match e.action {
                    Ok(EntryAction::Write(entry_ops)) if plan.kind == BundleKind::Transaction && any_invalid => {
                        for op in entry_ops {
                            let msg = format!(
                                "not stored: the transaction has entries import cannot take ({} {})",
                                op.resource_type, op.id
                            );
                            self.reject(Rejection {
                                source: source.clone(),
                                issues: vec![issue(IssueCode::Invalid, &msg)],
                            })?;
                        }
                    }
                    Ok(EntryAction::Write(entry_ops)) => {
                        for op in entry_ops {
                            sources.push(source.clone());
                            ops.push(op);
                        }
                    }
                    Ok(EntryAction::Read(_) | EntryAction::Existing { .. }) => {
                        let msg = "import only writes: GET and conditional entries need POST [base]";
                        self.reject(Rejection { source, issues: vec![issue(IssueCode::Invalid, msg)] })?;
                    }
                    Err(e) => self.reject(Rejection { source, issues: e.issues() })?,
                }
            }
            if plan.kind == BundleKind::Transaction || ops.len() <= self.options.chunk {
                self.submit(sources, ops, plan.kind == BundleKind::Transaction).await?;
            } else {
                let mut sources = sources.into_iter();
                let mut ops = ops.into_iter();
                loop {
                    let s: Vec<_> = sources.by_ref().take(self.options.chunk).collect();
                    let o: Vec<_> = ops.by_ref().take(self.options.chunk).collect();
                    if o.is_empty() {
                        break;
                    }
                    self.submit(s, o, false).await?;
                }
            }
            return Ok(());
        }
        let line = String::from_utf8_lossy(&bytes).into_owned();
        match parse_lines(vec![(1, line)], self.options.limits, self.options.validation)?.pop() {
            Some((_, Ok(op))) => self.submit(vec![name], vec![op], false).await,
            Some((_, Err(issues))) => self.reject(Rejection { source: name, issues }),
            None => Ok(()),
        }
    }
}

fn issue(code: IssueCode, message: &str) -> Issue {
    Issue { code, location: String::new(), message: message.to_string() }
}

/// A new server id (UUIDv7: time-ordered, so recent data clusters).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

type LineResult = (usize, std::result::Result<WriteOp, Vec<Issue>>);

fn parse_lines(
    chunk: Vec<(usize, String)>,
    limits: ParseLimits,
    validation: ValidationOptions,
) -> Result<Vec<LineResult>> {
    let model = Model::r4()?;
    Ok(chunk
        .into_par_iter()
        .map(|(n, line)| {
            let r = parse_and_validate(model, line.as_bytes(), limits, &validation).map(|(mut json, rt)| {
                let id = match json.get("id").and_then(Json::as_str) {
                    Some(id) => id.to_string(),
                    None => {
                        let id = new_id();
                        json.set("id", Json::String(id.clone()));
                        id
                    }
                };
                WriteOp { resource_type: rt, id, action: Action::Put(Arc::new(json)), precondition: Precondition::None }
            });
            (n, r)
        })
        .collect())
}
