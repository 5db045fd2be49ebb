//! The SQL catalog: one DataFusion session over an instance's Delta tables.
//!
//! Owns: naming (`Patient` and `patient` both name the current table of Patient,
//! `Patient_history` / `patient_history` its history table), identifier handling (FHIR
//! names are case-sensitive, so unquoted identifiers are not lower-cased:
//! `SELECT id, birthDate FROM patient` works as written), and the read-only guard (no DDL,
//! DML or other statements; no `CREATE EXTERNAL TABLE`; only registered tables).
//! Must not: write.

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::{DeltaTable, DeltaTableBuilder};
use object_store::ObjectStore;
use url::Url;

use crate::{Error, Result};

/// A read-only SQL session.
pub struct SqlSession {
    ctx: SessionContext,
    tables: Vec<String>,
}

/// The session configuration used for all fhirlake SQL.
pub fn session_config() -> SessionConfig {
    let mut config = SessionConfig::new().with_information_schema(true);
    config.options_mut().sql_parser.enable_ident_normalization = false;
    config
}

/// [`session_config`] plus Parquet filter pushdown (filters run while scanning, other
/// columns are decoded only for matching rows): searches and view plans.
pub fn scan_session_config() -> SessionConfig {
    let mut config = session_config();
    config.options_mut().execution.parquet.pushdown_filters = true;
    config.options_mut().execution.parquet.reorder_filters = true;
    config
}

impl SqlSession {
    /// A session with no tables.
    pub fn new() -> Self {
        Self { ctx: SessionContext::new_with_config(session_config()), tables: Vec::new() }
    }

    /// Opens every table under a storage root (`<root>/resources/*`, `<root>/history/*`,
    /// and materialized views `<root>/views/*` as `views.<name>`).
    pub async fn open_root(root: &Url, store: Arc<dyn ObjectStore>) -> Result<Self> {
        let mut s = Self::new();
        for (folder, suffix) in [("resources", ""), ("history", "_history")] {
            let prefix = object_store::path::Path::from(format!("{}/{folder}", root.path().trim_matches('/')));
            let listing = store.list_with_delimiter(Some(&prefix)).await?;
            for p in listing.common_prefixes {
                let Some(rt) = p.filename().map(str::to_string) else { continue };
                let url = root.join(&format!("{folder}/{rt}/")).map_err(|e| Error::BadSql(e.to_string()))?;
                let mut table =
                    DeltaTableBuilder::from_url(url.clone())?.with_storage_backend(store.clone(), url).build()?;
                if table.load().await.is_err() {
                    continue;
                }
                s.register(&format!("{rt}{suffix}"), &table).await?;
            }
        }
        // Materialized views: `views.<name>`.
        let prefix = object_store::path::Path::from(format!("{}/views", root.path().trim_matches('/')));
        let listing = store.list_with_delimiter(Some(&prefix)).await?;
        for p in listing.common_prefixes {
            let Some(name) = p.filename().map(str::to_string) else { continue };
            let url = root.join(&format!("views/{name}/")).map_err(|e| Error::BadSql(e.to_string()))?;
            let mut table =
                DeltaTableBuilder::from_url(url.clone())?.with_storage_backend(store.clone(), url).build()?;
            if table.load().await.is_err() {
                continue;
            }
            s.register_view(&name, &table).await?;
        }
        Ok(s)
    }

    /// Registers a materialized view's table as `views.<name>`.
    pub async fn register_view(&mut self, name: &str, table: &DeltaTable) -> Result<()> {
        let catalog = self.ctx.catalog("datafusion").ok_or_else(|| Error::BadSql("no default catalog".into()))?;
        if catalog.schema("views").is_none() {
            catalog.register_schema("views", Arc::new(datafusion::catalog::MemorySchemaProvider::new()))?;
        }
        table.update_datafusion_session(&self.ctx.state())?;
        let provider = table.table_provider().await?;
        self.ctx.register_table(datafusion::common::TableReference::partial("views", name), provider)?;
        self.tables.push(format!("views.{name}"));
        Ok(())
    }

    /// Registers `table` as `name` and as lower-case `name`.
    pub async fn register(&mut self, name: &str, table: &DeltaTable) -> Result<()> {
        table.update_datafusion_session(&self.ctx.state())?;
        let provider = table.table_provider().await?;
        for n in [name.to_string(), name.to_lowercase()] {
            if !self.tables.contains(&n) {
                self.ctx.register_table(datafusion::common::TableReference::bare(n.as_str()), provider.clone())?;
                self.tables.push(n);
            }
        }
        Ok(())
    }

    /// Runs a read-only query and collects the result.
    pub async fn sql(&self, query: &str) -> Result<Vec<RecordBatch>> {
        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let df = self.ctx.sql_with_options(query, options).await.map_err(|e| match e {
            datafusion::error::DataFusionError::Plan(m) => Error::BadSql(m),
            datafusion::error::DataFusionError::SQL(e, _) => Error::BadSql(e.to_string()),
            other => Error::DataFusion(other),
        })?;
        Ok(df.collect().await?)
    }
}

impl Default for SqlSession {
    fn default() -> Self {
        Self::new()
    }
}
