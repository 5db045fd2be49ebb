//! The commits of materialized view tables (`views/<name>`).
//!
//! Owns: writing a view's rows as one Delta commit that records, as application
//! transactions, the source history version it reflects and the hash of its
//! ViewDefinition (`fhirlake_schemas::layout::VIEW_*_APP_ID`): a full rebuild overwrites
//! the table (schema included), an incremental refresh replaces the rows of the changed
//! resources (`replaceWhere _source_id IN (...)`, or a delete when none remain). Must not:
//! compute the rows or decide which refresh runs (the root's `materialize` does, with
//! `fhirlake_query::views`).

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use deltalake::DeltaTable;
use deltalake::datafusion::prelude::{ident, lit};
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use fhirlake_schemas::layout::{VIEW_DEFINITION_APP_ID, VIEW_SOURCE_APP_ID};
use fhirlake_schemas::shape::reserved;

use crate::Result;
use crate::store::{StorageRoot, TableKind};

/// What a view table's commit records.
#[derive(Debug, Clone, Copy)]
pub struct ViewVersion {
    /// The source type's history version the rows reflect.
    pub source_version: i64,
    /// The hash of the ViewDefinition they were computed with.
    pub definition_hash: i64,
}

/// Which rows a commit replaces.
#[derive(Debug, Clone, Copy)]
pub enum Replace<'a> {
    /// All of them (a full rebuild; the schema is the batches').
    All,
    /// Those of these source resources (an incremental refresh).
    Sources(&'a [String]),
}

/// Commits `batches` (of `schema`) to `views/<name>`: to `existing`, the table as the
/// caller opened it, or to a new table when there is none.
pub async fn write_view(
    root: &StorageRoot,
    name: &str,
    existing: Option<DeltaTable>,
    schema: &Schema,
    batches: Vec<RecordBatch>,
    replace: Replace<'_>,
    version: ViewVersion,
) -> Result<()> {
    let props = CommitProperties::default()
        .with_application_transaction(Transaction::new(VIEW_SOURCE_APP_ID, version.source_version))
        .with_application_transaction(Transaction::new(VIEW_DEFINITION_APP_ID, version.definition_hash));
    let table = match existing {
        Some(t) => t,
        None => root.create_table(TableKind::View, name, schema).await?,
    };
    match replace {
        Replace::All => {
            table
                .write(batches)
                .with_save_mode(SaveMode::Overwrite)
                .with_schema_mode(SchemaMode::Overwrite)
                .with_commit_properties(props)
                .await?;
        }
        Replace::Sources(ids) => {
            let predicate = ident(reserved::SOURCE_ID).in_list(ids.iter().map(|i| lit(i.clone())).collect(), false);
            if batches.iter().all(|b| b.num_rows() == 0) {
                table.delete().with_predicate(predicate).with_commit_properties(props).await?;
            } else {
                table
                    .write(batches)
                    .with_save_mode(SaveMode::Overwrite)
                    .with_replace_where(predicate)
                    .with_commit_properties(props)
                    .await?;
            }
        }
    }
    Ok(())
}
