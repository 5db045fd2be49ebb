//! Operations basics: correlation ids, request metrics, `/metrics` and `/health`.
//!
//! Owns: the middleware every request passes ([`track`]): it takes the client's
//! `X-Request-Id` (or makes one), runs the request inside a `request` tracing span that
//! carries it (so every log line of the request names it), echoes it in the response, and
//! counts FHIR API requests by interaction and status with a latency histogram (to the
//! response head; `/health` and `/metrics` are not counted). [`Metrics`] is the Prometheus
//! registry; the writer's counters and the caches' sizes are read at scrape time
//! ([`StoreCollector`]). Must not: decide behaviour.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::Instrument;

use super::AppState;

/// The correlation id header.
pub const REQUEST_ID: &str = "x-request-id";

/// Labels of a counted request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    interaction: &'static str,
    status: u16,
}

/// Labels of a request latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InteractionLabels {
    interaction: &'static str,
}

/// Labels of a SQL query.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SqlLabels {
    protocol: &'static str,
    outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

/// The server's Prometheus metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<InteractionLabels, Histogram, fn() -> Histogram>,
    sql: Family<SqlLabels, Counter>,
}

impl Metrics {
    /// The registry of a server over `writer`, whose counters (and the postings cache's
    /// size) are read at each scrape.
    pub fn new(
        writer: fhirlake_ingest::Writer,
        postings: Arc<fhirlake_query::search::postings::PostingsCache>,
    ) -> Self {
        let mut registry = Registry::with_prefix("fhirlake");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "FHIR API requests answered, by interaction and status", requests.clone());
        let latency = Family::<InteractionLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a FHIR API request to its response head, by interaction",
            latency.clone(),
        );
        let sql = Family::<SqlLabels, Counter>::default();
        registry.register("sql_queries", "SQL queries planned, by protocol (http, flight) and outcome", sql.clone());
        registry.register_collector(Box::new(StoreCollector { writer, postings }));
        Self { registry, requests, latency, sql }
    }

    /// Counts a SQL query of `protocol` (`http`, `flight`) that planned (`ok`) or not.
    pub fn sql_query(&self, protocol: &'static str, ok: bool) {
        self.sql.get_or_create(&SqlLabels { protocol, outcome: if ok { "ok" } else { "error" } }).inc();
    }

    /// The metrics in the OpenMetrics text format, or (`openmetrics` false) in
    /// Prometheus' text format 0.0.4.
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut out = String::new();
        let written = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        written.expect("writing to a String");
        out
    }
}

/// Reads the writer's counters and the caches' sizes at scrape time.
struct StoreCollector {
    writer: fhirlake_ingest::Writer,
    postings: Arc<fhirlake_query::search::postings::PostingsCache>,
}

impl std::fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreCollector").finish_non_exhaustive()
    }
}

/// A histogram of the writer's, encoded as it stands.
struct SizeHistogramMetric<'a>(&'a fhirlake_ingest::writer::SizeHistogram);

impl EncodeMetric for SizeHistogramMetric<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (buckets, sum, count) = self.0.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum as f64, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn put(encoder: &mut DescriptorEncoder, name: &str, help: &str, metric: &impl EncodeMetric) -> std::fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for StoreCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = self.writer.stats();
        let counter = |a: &std::sync::atomic::AtomicU64| ConstCounter::new(a.load(Relaxed));
        put(&mut e, "group_commits", "Group commits made (one fsync each)", &counter(&stats.batches))?;
        put(
            &mut e,
            "group_commit_operations",
            "Write operations per group commit",
            &SizeHistogramMetric(&stats.batch_ops),
        )?;
        put(&mut e, "delta_commits", "Delta commits made by flushes and maintenance", &counter(&stats.commits))?;
        put(&mut e, "flush_rounds", "Flush rounds committed to Delta", &counter(&stats.flush_rounds))?;
        put(&mut e, "flush_failures", "Flush rounds that failed (and were retried)", &counter(&stats.flush_failures))?;
        let gauge =
            |a: &std::sync::atomic::AtomicU64| ConstGauge::new(i64::try_from(a.load(Relaxed)).unwrap_or(i64::MAX));
        put(
            &mut e,
            "buffered_versions",
            "Acknowledged versions not yet flushed to Delta",
            &gauge(&stats.buffered_rows),
        )?;
        put(
            &mut e,
            "buffered_bytes",
            "Estimated memory of acknowledged writes not yet flushed to Delta",
            &gauge(&stats.buffered_bytes),
        )?;
        put(&mut e, "compaction_rounds", "Compaction rounds committed", &counter(&stats.compaction_rounds))?;
        put(
            &mut e,
            "compaction_rounds_dropped",
            "Compaction rounds dropped because a write changed their files",
            &counter(&stats.compaction_rounds_dropped),
        )?;
        put(
            &mut e,
            "flush_failing",
            "1 while flushes to Delta fail (writes are acknowledged until the buffer's hard cap)",
            &ConstGauge::new(i64::from(stats.flush_error().is_some())),
        )?;
        let bytes = |n: usize| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
        put(&mut e, "search_postings_bytes", "Bytes of token postings held", &bytes(self.postings.bytes()))?;
        put(
            &mut e,
            "search_postings_capacity_bytes",
            "Budget of the token postings cache",
            &bytes(self.postings.capacity()),
        )?;
        Ok(())
    }
}

/// `GET /metrics`: OpenMetrics text when the client accepts it, else Prometheus' text
/// format 0.0.4.
pub async fn metrics(State(state): State<Arc<AppState>>, request: axum::extract::Request) -> Response {
    let peer = request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().cloned();
    let headers = request.headers();
    // With authentication on, the metrics (request counts by route, table sizes) are for
    // the operator: a loopback peer, or a caller with the configured metrics token.
    if state.auth.enabled() {
        let loopback = peer.is_some_and(|p| p.0.ip().is_loopback());
        let token = state.auth.settings.metrics_token.as_deref().filter(|t| !t.is_empty());
        let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let presented = bearer.and_then(|b| b.strip_prefix("Bearer ")).map(str::trim);
        let allowed = loopback
            || matches!((token, presented), (Some(t), Some(p)) if constant_time_eq(t.as_bytes(), p.as_bytes()));
        if !allowed {
            return crate::error::ApiError::Unauthenticated(
                "/metrics answers loopback callers, or a bearer --metrics-token".into(),
            )
            .into_response();
        }
    }
    let open = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let ct = if open {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, ct)], state.metrics.encode(open)).into_response()
}

/// `GET /health`: `ready` (200), or `degraded` with the reason (503) while flushes to
/// Delta fail (writes are still acknowledged until the buffer's hard cap; searches and SQL
/// cannot see them). While the server starts (recovering its storage root) the same path
/// answers [`starting`].
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.writer.stats().flush_error() {
        None => health_response(StatusCode::OK, "ready", None),
        Some(why) => health_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "degraded",
            Some(&format!("flushing to Delta fails (acknowledged writes are safe; retrying): {why}")),
        ),
    }
}

/// `GET /health` while the server starts: 503 `starting`.
pub async fn starting() -> Response {
    health_response(StatusCode::SERVICE_UNAVAILABLE, "starting", Some("recovering the storage root"))
}

fn health_response(status: StatusCode, word: &str, reason: Option<&str>) -> Response {
    let mut body = format!(r#"{{"status":"{word}""#);
    if let Some(r) = reason {
        body.push_str(r#","reason":"#);
        fhirlake_schemas::json::write_str(&mut body, r);
    }
    body.push('}');
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The correlation id of a request: the client's `X-Request-Id` when it is 1-128 visible
/// ASCII characters, else a new UUID.
fn request_id(req: &Request) -> HeaderValue {
    req.headers()
        .get(REQUEST_ID)
        .filter(|v| (1..=128).contains(&v.len()) && v.as_bytes().iter().all(|b| b.is_ascii_graphic()))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("a UUID is a header value"))
}

/// The middleware of every request: correlation id, span, metrics.
pub async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let id = request_id(&req);
    // The interaction as the service routes it (`other` where no interaction lives).
    let interaction = state
        .under_base(req.uri().path())
        .map(|rest| crate::service::route(req.method(), rest).map_or("other", |r| r.interaction.name()));
    let span = tracing::info_span!(
        "request",
        id = %id.to_str().unwrap_or(""),
        method = %req.method(),
        path = %req.uri().path(),
    );
    let start = Instant::now();
    let mut response = next.run(req).instrument(span).await;
    if let Some(interaction) = interaction {
        let m = &state.metrics;
        m.requests.get_or_create(&RequestLabels { interaction, status: response.status().as_u16() }).inc();
        m.latency.get_or_create(&InteractionLabels { interaction }).observe(start.elapsed().as_secs_f64());
    }
    response.headers_mut().insert(REQUEST_ID, id);
    response
}

/// Equality that takes the same time wherever the inputs differ (token comparison).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
