//! Shared harness: an in-process server over a temporary storage root.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use fhirlake::api::{AppState, app};
use fhirlake::config::ApiConfig;
use fhirlake_ingest::{StorageRoot, Writer, WriterOptions, WriterTask};
use fhirlake_schemas::Json;
use fhirlake_schemas::json::ParseLimits;
use http_body_util::BodyExt;
use tower::ServiceExt;

#[path = "../../schemas/tests/support/fixtures.rs"]
mod test_fixtures;

/// Where the test fixtures are (`FHIRLAKE_FIXTURES`, else `tests/fixtures`, unpacked).
pub fn fixtures() -> PathBuf {
    test_fixtures::root()
}

/// A response.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Json {
        Json::parse(self.body.as_bytes(), ParseLimits { max_depth: 200, max_string_bytes: usize::MAX })
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An in-process server.
pub struct TestServer {
    pub state: Arc<AppState>,
    pub root: StorageRoot,
    task: Option<WriterTask>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = StorageRoot::open(dir.path().to_str().expect("utf-8 path")).expect("root");
        let mut s = Self::start_at(root).await;
        s._dir = Some(dir);
        s
    }

    pub async fn start_at(root: StorageRoot) -> Self {
        Self::start_configured(root, ApiConfig::default()).await
    }

    /// A server over a fresh temporary root with `config` (its public URL is replaced).
    pub async fn start_with(config: ApiConfig) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = StorageRoot::open(dir.path().to_str().expect("utf-8 path")).expect("root");
        let mut s = Self::start_configured(root, config).await;
        s._dir = Some(dir);
        s
    }

    /// A server over a fresh temporary root with these writer options.
    pub async fn start_writing(options: WriterOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = StorageRoot::open(dir.path().to_str().expect("utf-8 path")).expect("root");
        let mut s = Self::start_full(root, ApiConfig::default(), options).await;
        s._dir = Some(dir);
        s
    }

    /// A server over a fresh temporary root that authenticates with `auth` (public URL
    /// `http://fhirlake.test/fhir`, the default audience).
    pub async fn start_with_auth(auth: fhirlake::auth::Auth) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = StorageRoot::open(dir.path().to_str().expect("utf-8 path")).expect("root");
        let (writer, task) = Writer::start(root.clone(), WriterOptions::default()).await.expect("writer");
        let config = ApiConfig { public_url: "http://fhirlake.test/fhir".into(), ..ApiConfig::default() };
        let state = AppState::new(writer, config, fhirlake_schemas::Model::r4().expect("model")).with_auth(auth);
        Self { state: Arc::new(state), root, task: Some(task), _dir: Some(dir) }
    }

    async fn start_configured(root: StorageRoot, config: ApiConfig) -> Self {
        Self::start_full(root, config, WriterOptions::default()).await
    }

    async fn start_full(root: StorageRoot, config: ApiConfig, options: WriterOptions) -> Self {
        let (writer, task) = Writer::start(root.clone(), options).await.expect("writer");
        let config = ApiConfig { public_url: "http://fhirlake.test/fhir".into(), ..config };
        let state = Arc::new(AppState::new(writer, config, fhirlake_schemas::Model::r4().expect("model")));
        Self { state, root, task: Some(task), _dir: None }
    }

    pub async fn request(&self, method: Method, uri: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Resp {
        let mut b = Request::builder().method(method).uri(uri);
        if body.is_some() && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            b = b.header("content-type", "application/fhir+json");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(body.map(|s| Body::from(s.to_string())).unwrap_or_else(Body::empty)).expect("request");
        let resp = app(self.state.clone()).oneshot(req).await.expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        Resp { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
    }

    pub async fn get(&self, uri: &str) -> Resp {
        self.request(Method::GET, uri, None, &[]).await
    }

    pub async fn put(&self, uri: &str, body: &str) -> Resp {
        self.request(Method::PUT, uri, Some(body), &[]).await
    }

    pub async fn post(&self, uri: &str, body: &str) -> Resp {
        self.request(Method::POST, uri, Some(body), &[]).await
    }

    /// Loads the 40 Synthea patients' NDJSON (`tests/fixtures/synthea/ndjson`) through
    /// the import path; every resource must be accepted.
    pub async fn load_synthea(&self) {
        let summary = fhirlake_ingest::import::import_paths(
            &self.state.writer,
            &[fixtures().join("synthea/ndjson")],
            fhirlake_ingest::import::ImportOptions::default(),
        )
        .await
        .expect("import");
        assert_eq!(summary.rejected, 0, "Synthea NDJSON rejected");
    }

    /// Stops the writer (drains and releases the lease).
    pub async fn stop(mut self) {
        let task = self.task.take().expect("running");
        let state = self.state;
        drop(state);
        task.shutdown().await.expect("shutdown");
    }

    /// The writer's Delta tables once every acknowledged write is flushed to them.
    pub async fn flushed(&self) -> &Arc<fhirlake_ingest::writer::TableSet> {
        self.state.writer.sync().await.expect("flush");
        self.state.writer.tables()
    }

    /// Rows of a query, via a fresh SQL session over the root.
    pub async fn sql(&self, query: &str) -> Vec<serde_json::Value> {
        sql_rows(&self.session().await, query).await
    }

    /// A SQL session over every table of the root, as an external reader opens it once
    /// every acknowledged write is flushed.
    pub async fn session(&self) -> fhirlake_query::SqlSession {
        self.state.writer.sync().await.expect("flush");
        fhirlake_query::SqlSession::open_root(
            self.root.url(),
            self.root.object_store().clone(),
            fhirlake::config::QueryLimits::default().limits(),
        )
        .await
        .expect("session")
    }
}

/// Rows of `query` in `session`, as JSON objects.
pub async fn sql_rows(session: &fhirlake_query::SqlSession, query: &str) -> Vec<serde_json::Value> {
    let batches = session.sql(query).await.unwrap_or_else(|e| panic!("{query}: {e}"));
    batches_to_json(&batches)
}

impl TestServer {}

pub fn batches_to_json(batches: &[arrow::array::RecordBatch]) -> Vec<serde_json::Value> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
        for b in batches {
            w.write(b).expect("json");
        }
        w.finish().expect("json");
    }
    String::from_utf8(buf).expect("utf-8").lines().map(|l| serde_json::from_str(l).expect("row")).collect()
}

/// JSON equality ignoring `meta.versionId` / `meta.lastUpdated` and member order;
/// numbers compare by their text (decimals as written).
pub fn same_resource(a: &Json, b: &Json) -> Result<(), String> {
    fn strip(j: &Json) -> Json {
        let mut j = j.clone();
        if let Some(meta) = j.get_mut("meta") {
            meta.remove("versionId");
            meta.remove("lastUpdated");
            if meta.as_object().is_some_and(|m| m.is_empty()) {
                j.remove("meta");
            }
        }
        j
    }
    fn eq(a: &Json, b: &Json, path: &str) -> Result<(), String> {
        match (a, b) {
            (Json::Object(x), Json::Object(y)) => {
                if x.len() != y.len() {
                    let kx: Vec<_> = x.iter().map(|(k, _)| k.as_str()).collect();
                    let ky: Vec<_> = y.iter().map(|(k, _)| k.as_str()).collect();
                    return Err(format!("{path}: keys {kx:?} vs {ky:?}"));
                }
                for (k, v) in x {
                    let w = b.get(k).ok_or_else(|| format!("{path}.{k} missing"))?;
                    eq(v, w, &format!("{path}.{k}"))?;
                }
                Ok(())
            }
            (Json::Array(x), Json::Array(y)) if x.len() == y.len() => {
                x.iter().zip(y).enumerate().try_for_each(|(i, (v, w))| eq(v, w, &format!("{path}[{i}]")))
            }
            _ if a == b => Ok(()),
            _ => Err(format!("{path}: {} vs {}", a.to_json_string(), b.to_json_string())),
        }
    }
    eq(&strip(a), &strip(b), "")
}

/// The `next` link of a Bundle, if any (panics when the Bundle has no links or a link no
/// url).
pub fn next_link(bundle: &serde_json::Value) -> Option<String> {
    bundle["link"]
        .as_array()
        .expect("a Bundle with links")
        .iter()
        .find(|l| l["relation"] == "next")
        .map(|l| l["url"].as_str().expect("url").to_string())
}

/// Every match id of a search, following `next` links; panics on a repeated id or a
/// non-200 page.
pub async fn search_ids(server: &TestServer, uri: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut next = Some(uri.to_string());
    let mut pages = 0;
    while let Some(u) = next.take() {
        let r = server.get(&u.replace("http://fhirlake.test", "")).await;
        assert_eq!(r.status, 200, "{u}: {}", r.body);
        let b: serde_json::Value = serde_json::from_str(&r.body).expect("bundle");
        assert_eq!(b["type"], "searchset");
        for e in b["entry"].as_array().expect("entries").iter().filter(|e| e["search"]["mode"] == "match") {
            let id = e["resource"]["id"].as_str().expect("id").to_string();
            assert!(out.insert(id.clone()), "{id} seen twice walking {uri}");
        }
        next = next_link(&b);
        pages += 1;
        assert!(pages < 10_000, "{uri}: endless paging");
    }
    out
}
