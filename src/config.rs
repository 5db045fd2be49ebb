//! Settings of the HTTP API, shared by `serve` and the in-process test router.

/// API settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Path prefix of the FHIR API (default `/fhir`).
    pub base_path: String,
    /// Public base URL used in `Location`, `fullUrl` and links (default: from the listen
    /// address and base path).
    pub public_url: String,
    /// Largest single-resource body, in bytes.
    pub max_resource_bytes: usize,
    /// Largest Bundle body (`POST [base]`), in bytes.
    pub max_bundle_bytes: usize,
    /// Most entries in one transaction or batch Bundle (413 beyond).
    pub max_bundle_entries: usize,
    /// Most resources one conditional DELETE may delete (1: a search matching several is
    /// refused with 412).
    pub conditional_delete_max: usize,
    /// Deepest JSON nesting accepted.
    pub max_depth: usize,
    /// Bounds of `$sql` queries (text size, memory, time).
    pub sql: fhirlake_query::catalog::SqlLimits,
    /// Rows `$sql` returns when the request names no limit.
    pub sql_default_rows: usize,
    /// The largest row limit a `$sql` request may ask for.
    pub sql_max_rows: usize,
    /// Matches per search page when the request has no `_count`.
    pub search_default_count: usize,
    /// The largest `_count` a search may ask for (larger values are lowered to it).
    pub search_max_count: usize,
    /// Memory for token postings (counts of token searches without reading rows), in bytes.
    pub search_postings_bytes: usize,
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
            max_resource_bytes: 16 * 1024 * 1024,
            max_bundle_bytes: 128 * 1024 * 1024,
            max_bundle_entries: 50_000,
            conditional_delete_max: 1,
            max_depth: 100,
            sql: fhirlake_query::catalog::SqlLimits::default(),
            sql_default_rows: 10_000,
            sql_max_rows: 10_000_000,
            search_default_count: 20,
            search_max_count: 1000,
            search_postings_bytes: 512 * 1024 * 1024,
        }
    }
}
