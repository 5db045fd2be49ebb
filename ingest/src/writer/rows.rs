//! The rows of the Delta tables, built from versions: per type the table shape (as recorded
//! when the table was created) and its flattener, each version's Patient compartment, and
//! history-table rows.
//!
//! Owns: [`Shapes`] (the flattener cache, shared by flush rounds and read views, so both
//! build the same rows) and [`history_batch`]. Must not: commit, or decide versions.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use fhirlake_schemas::layout::{self, ShapeRecord};
use fhirlake_schemas::shape::history_schema;
use fhirlake_schemas::{Model, ShapeOptions, TableShape};
use object_store::ObjectStoreExt;
use tokio::sync::Mutex;

use super::ops::VersionRecord;
use crate::compartment::PatientCompartment;
use crate::flatten::Flattener;
use crate::store::StorageRoot;
use crate::{Error, Result};

/// Table shapes and flatteners by type, and the Patient compartment rules.
pub(crate) struct Shapes {
    root: StorageRoot,
    shape: ShapeOptions,
    flatteners: Mutex<HashMap<String, Arc<Flattener>>>,
    pub(crate) compartment: Arc<PatientCompartment>,
}

impl Shapes {
    pub(crate) fn new(root: StorageRoot, shape: ShapeOptions, model: &Model) -> Self {
        Shapes {
            root,
            shape,
            flatteners: Mutex::new(HashMap::new()),
            compartment: Arc::new(PatientCompartment::new(model)),
        }
    }

    /// Where the shape options of a type's current table are recorded when it is created:
    /// the recursion depth is fixed per table, whatever later defaults say.
    fn shape_path(&self, rt: &str) -> object_store::path::Path {
        self.root.path(&layout::shape_path(rt))
    }

    /// The shape options of `rt`'s current table: as recorded, or the configured ones for a
    /// table that does not exist yet.
    async fn shape_options(&self, rt: &str) -> Result<ShapeOptions> {
        match self.root.object_store().get(&self.shape_path(rt)).await {
            Ok(r) => {
                let path = layout::shape_path(rt);
                let record: ShapeRecord = layout::decode(&path, &r.bytes().await?).map_err(Error::Config)?;
                if record.max_depth < 1 {
                    return Err(Error::Config(format!("{path} has no valid maxDepth")));
                }
                Ok(ShapeOptions { max_depth: record.max_depth, search_index: record.search_index })
            }
            Err(object_store::Error::NotFound { .. }) => Ok(self.shape),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn record_shape_options(&self, rt: &str, options: ShapeOptions) -> Result<()> {
        let record = ShapeRecord {
            format: layout::FORMAT,
            resource_type: rt.to_string(),
            max_depth: options.max_depth,
            search_index: options.search_index,
        };
        let body = layout::encode(&record);
        let opts = object_store::PutOptions { mode: object_store::PutMode::Create, ..Default::default() };
        match self.root.object_store().put_opts(&self.shape_path(rt), body.into(), opts).await {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn flattener(&self, rt: &str) -> Result<Arc<Flattener>> {
        let mut f = self.flatteners.lock().await;
        if let Some(x) = f.get(rt) {
            return Ok(x.clone());
        }
        let options = self.shape_options(rt).await?;
        let shape = TableShape::try_new(Model::r4()?, rt, options)?;
        let x = Arc::new(Flattener::new(Arc::new(shape)));
        f.insert(rt.to_string(), x.clone());
        Ok(x)
    }
}

pub(crate) fn history_batch(recs: &[VersionRecord], owners: &[(Option<String>, Vec<String>)]) -> Result<RecordBatch> {
    let schema = Arc::new(history_schema());
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(recs.iter().map(|r| r.id.as_str()))),
        Arc::new(Int64Array::from_iter_values(recs.iter().map(|r| r.version))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(recs.iter().map(|r| r.last_updated_us)).with_timezone("UTC"),
        ),
        Arc::new(BooleanArray::from(recs.iter().map(|r| r.deleted).collect::<Vec<_>>())),
        Arc::new(StringArray::from(owners.iter().map(|o| o.0.as_deref()).collect::<Vec<_>>())),
        Arc::new(StringArray::from(recs.iter().map(|r| r.raw.as_deref()).collect::<Vec<_>>())),
        // The hash's bits, stored as a signed 64-bit integer.
        Arc::new(Int64Array::from_iter_values(recs.iter().map(|r| r.hash as i64))),
    ];
    Ok(RecordBatch::try_new(schema, cols)?)
}
