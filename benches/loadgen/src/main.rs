//! `loadgen`: the HTTP load client of the fhirlake benchmarks.
//!
//! Fixed concurrency (C requests in flight on keep-alive connections), bounded by a
//! duration and optionally a request count; request `i` uses path `i mod P` and body
//! `i mod B`, so both servers of a comparison get the same request sequence. Latency is
//! measured from send to the last body byte into an HDR histogram (1 µs to 10 min, 3
//! significant digits). Targets must be loopback addresses: this is a benchmark tool, not
//! a load-testing tool for other people's servers.
//!
//! Prints a JSON summary on stdout and one human line on stderr.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, Parser)]
#[command(name = "loadgen", about = "HTTP load client of the fhirlake benchmarks (loopback targets only)")]
struct Args {
    /// Base URL, e.g. http://127.0.0.1:8080/fhir (loopback only).
    #[arg(long)]
    target: String,
    /// HTTP method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Path after the base (repeatable; cycled in order).
    #[arg(long = "path")]
    paths: Vec<String>,
    /// File of paths, one per line (cycled in order).
    #[arg(long)]
    paths_file: Option<PathBuf>,
    /// File of request bodies, one per line (cycled in order).
    #[arg(long)]
    bodies_file: Option<PathBuf>,
    /// Extra header `Name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many requests (default: no limit but the duration).
    #[arg(long)]
    requests: Option<u64>,
}

type Body = Full<Bytes>;

struct Shared {
    base: String,
    method: Method,
    paths: Vec<String>,
    bodies: Vec<Bytes>,
    headers: Vec<(String, String)>,
    next: AtomicU64,
    limit: u64,
    deadline: Instant,
    bytes: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

fn lines(path: &PathBuf) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect())
}

fn check_loopback(target: &str) -> Result<Uri, String> {
    let uri: Uri = target.parse().map_err(|e| format!("--target '{target}': {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("--target '{target}': only http:// is supported"));
    }
    let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false);
    if !loopback {
        return Err(format!("--target '{target}': loopback hosts only (127.0.0.0/8, ::1, localhost)"));
    }
    Ok(uri)
}

async fn worker(client: Client<HttpConnector, Body>, shared: Arc<Shared>) -> Histogram<u64> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds");
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= shared.limit || Instant::now() >= shared.deadline {
            return hist;
        }
        let path = if shared.paths.is_empty() { "" } else { &shared.paths[(i % shared.paths.len() as u64) as usize] };
        let body = if shared.bodies.is_empty() {
            Bytes::new()
        } else {
            shared.bodies[(i % shared.bodies.len() as u64) as usize].clone()
        };
        let mut req = Request::builder().method(shared.method.clone()).uri(format!("{}{}", shared.base, path));
        if !body.is_empty() {
            req = req.header("content-type", "application/fhir+json");
        }
        for (k, v) in &shared.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = match req.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => {
                record_error(&shared, format!("bad request {path}: {e}"));
                continue;
            }
        };
        let started = Instant::now();
        let outcome = match client.request(req).await {
            Ok(resp) => {
                let status = resp.status();
                match resp.into_body().collect().await {
                    Ok(b) => {
                        let b = b.to_bytes();
                        shared.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                        if status.is_success() {
                            Ok(())
                        } else {
                            Err(format!("{status} for {path}: {}", String::from_utf8_lossy(&b[..b.len().min(500)])))
                        }
                    }
                    Err(e) => Err(format!("reading the body of {path}: {e}")),
                }
            }
            Err(e) => Err(format!("{path}: {e}")),
        };
        let micros = started.elapsed().as_micros().clamp(1, 600_000_000) as u64;
        match outcome {
            Ok(()) => {
                let _ = hist.record(micros);
            }
            Err(e) => record_error(&shared, e),
        }
    }
}

fn record_error(shared: &Shared, e: String) {
    shared.errors.fetch_add(1, Ordering::Relaxed);
    let mut first = shared.first_error.lock().unwrap_or_else(|p| p.into_inner());
    if first.is_none() {
        *first = Some(e);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(a: Args) -> Result<(), String> {
    check_loopback(&a.target)?;
    let mut paths = a.paths.clone();
    if let Some(f) = &a.paths_file {
        paths.extend(lines(f)?);
    }
    let bodies: Vec<Bytes> = match &a.bodies_file {
        Some(f) => lines(f)?.into_iter().map(Bytes::from).collect(),
        None => Vec::new(),
    };
    let headers = a
        .headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| format!("--header '{h}': expected 'Name: value'"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let method: Method = a.method.to_uppercase().parse().map_err(|e| format!("--method: {e}"))?;
    let concurrency = a.concurrency.max(1);
    let started = Instant::now();
    let shared = Arc::new(Shared {
        base: a.target.trim_end_matches('/').to_string(),
        method,
        paths,
        bodies,
        headers,
        next: AtomicU64::new(0),
        limit: a.requests.unwrap_or(u64::MAX),
        deadline: started + Duration::from_secs_f64(a.duration.max(0.001)),
        bytes: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
    });
    let client: Client<HttpConnector, Body> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(concurrency).build_http();
    let tasks: Vec<_> = (0..concurrency).map(|_| tokio::spawn(worker(client.clone(), shared.clone()))).collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds");
    for t in tasks {
        let h = t.await.map_err(|e| format!("worker: {e}"))?;
        hist.add(&h).map_err(|e| format!("histogram: {e}"))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let ok = hist.len();
    let errors = shared.errors.load(Ordering::Relaxed);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let summary = serde_json::json!({
        "requests": ok + errors,
        "ok": ok,
        "errors": errors,
        "first_error": *shared.first_error.lock().unwrap_or_else(|p| p.into_inner()),
        "concurrency": concurrency,
        "seconds": seconds,
        "rps": ok as f64 / seconds,
        "bytes_received": shared.bytes.load(Ordering::Relaxed),
        "latency_ms": {
            "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99),
            "max": hist.max() as f64 / 1000.0, "mean": hist.mean() / 1000.0,
        },
    });
    eprintln!(
        "loadgen: {ok} ok, {errors} errors in {seconds:.2} s ({:.0} req/s); latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
        ok as f64 / seconds,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        hist.max() as f64 / 1000.0
    );
    println!("{summary}");
    Ok(())
}
