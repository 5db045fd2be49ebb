//! live: the instance as readers see it, every acknowledged write included.
//!
//! Owns: [`Live`], the writer's [`ReadView`] as the read side's [`Unflushed`] (the rows a
//! current or history table does not hold yet, per type, flattened on first use and kept
//! for the request). Search, `$sql`, Flight SQL and `$everything` read through it, so an
//! acknowledged write is visible at once without waiting for a flush. Must not: plan
//! queries (that is `fhirlake-query`).

use std::sync::Arc;

use arrow::array::RecordBatch;
use fhirlake_ingest::{ReadView, TableKind};
use fhirlake_query::buffered::{Buffered, TableView, Unflushed};
use fhirlake_query::search::DeltaTable;

/// One instant of the instance: the published Delta tables and the writes they lack.
pub(crate) struct Live {
    view: ReadView,
}

impl Live {
    pub(crate) fn new(view: ReadView) -> Self {
        Live { view }
    }

    /// The current table of `rt` at this instant, `None` when `rt` has neither a table nor
    /// buffered rows.
    pub(crate) async fn current(
        &self,
        rt: &str,
        delta: Option<DeltaTable>,
    ) -> fhirlake_query::Result<Option<TableView>> {
        let buffered = Unflushed::current(self, rt).await?;
        if delta.is_none() && buffered.is_none() {
            return Ok(None);
        }
        Ok(Some(TableView { delta, buffered, policy: None }))
    }

    /// The published Delta current tables, by type.
    pub(crate) fn delta_tables(&self) -> std::collections::HashMap<String, DeltaTable> {
        self.view.tables_of(TableKind::Current)
    }

    /// Types with a current table or buffered rows.
    pub(crate) fn current_types(&self) -> Vec<String> {
        self.view.current_types()
    }

    /// The view read.
    pub(crate) fn view(&self) -> &ReadView {
        &self.view
    }
}

impl Unflushed for Live {
    fn types(&self) -> Vec<String> {
        self.view.buffered_types()
    }

    fn current<'a>(
        &'a self,
        rt: &'a str,
    ) -> futures::future::BoxFuture<'a, fhirlake_query::Result<Option<Arc<Buffered>>>> {
        Box::pin(async move {
            let rows = self.view.current_rows(rt).await.map_err(|e| fhirlake_query::Error::Storage(e.to_string()))?;
            Ok(rows.map(|r| {
                Arc::new(Buffered { batches: r.batches.clone(), shadow: r.shadow.clone(), schema: r.schema.clone() })
            }))
        })
    }

    fn history(&self, rt: &str) -> fhirlake_query::Result<Option<RecordBatch>> {
        self.view.history_rows(rt).map_err(|e| fhirlake_query::Error::Storage(e.to_string()))
    }
}
