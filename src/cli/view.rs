//! `fhirlake view`: materialize stored (or file) ViewDefinitions into `views/<name>`, and
//! explain how a view is planned (compiled, or run row by row and why).
//! It takes no lease: it reads the resource tables and writes only view tables.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use fhirlake_ingest::{StorageRoot, TableKind};
use fhirlake_query::views::{self, View};
use fhirlake_schemas::json::ParseLimits;
use fhirlake_schemas::{Json, Model, ShapeOptions, TableShape};

use super::{CliResult, DataArgs};
use crate::materialize::{materialize, stored_view, stored_views};
use crate::outln;

/// Options of `view`.
#[derive(Debug, Args)]
pub struct ViewArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(subcommand)]
    action: ViewAction,
}

/// What to do with views.
#[derive(Debug, Subcommand)]
pub enum ViewAction {
    /// Build or refresh `views/<name>` (incremental when the view and the table allow it).
    Materialize {
        /// The `name` of a stored ViewDefinition (omit with --all or --file).
        name: Option<String>,
        /// A ViewDefinition JSON file instead of a stored one.
        #[arg(long)]
        file: Option<String>,
        /// Every stored ViewDefinition.
        #[arg(long)]
        all: bool,
        /// Rebuild from scratch instead of refreshing incrementally.
        #[arg(long)]
        full: bool,
    },
    /// Show the optimized DataFusion plans of a view (logical, then physical), and whether it
    /// is compiled or runs row by row.
    Explain {
        /// The `name` of a stored ViewDefinition (or use --file).
        name: Option<String>,
        /// A ViewDefinition JSON file.
        #[arg(long)]
        file: Option<String>,
    },
}

fn read_file(path: &str) -> CliResult<Json> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read '{path}': {e}"))?;
    Ok(Json::parse(&bytes, ParseLimits::default()).map_err(|e| format!("'{path}' is not JSON: {e}"))?)
}

async fn chosen(root: &StorageRoot, name: Option<&str>, file: Option<&str>, all: bool) -> CliResult<Vec<Json>> {
    Ok(match (name, file, all) {
        (_, Some(f), _) => vec![read_file(f)?],
        (Some(n), None, _) => vec![stored_view(root, n).await?],
        (None, None, true) => stored_views(root).await?,
        (None, None, false) => return Err("name a stored view, or use --file FILE or --all".into()),
    })
}

/// Runs `view`.
pub async fn run(a: ViewArgs) -> CliResult<ExitCode> {
    let root = StorageRoot::open(&a.data.data)?;
    match a.action {
        ViewAction::Materialize { name, file, all, full } => {
            let list = chosen(&root, name.as_deref(), file.as_deref(), all).await?;
            if list.is_empty() {
                outln!("no stored ViewDefinitions");
            }
            for v in list {
                let started = std::time::Instant::now();
                let progress = |line: &str| eprintln!("{line}");
                let m = materialize(&root, &v, full, &progress).await?;
                let secs = started.elapsed().as_secs_f64();
                outln!(
                    "views.{}: {} refresh, {} resources, {} rows in {:.2} s ({:.0} rows/s){}",
                    m.name,
                    m.mode,
                    m.resources,
                    m.rows,
                    secs,
                    m.rows as f64 / secs.max(1e-9),
                    m.fallback.map(|f| format!("; ran row by row: {f}")).unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ViewAction::Explain { name, file } => {
            let v = chosen(&root, name.as_deref(), file.as_deref(), false).await?.remove(0);
            let model = Model::r4()?;
            let view = Arc::new(View::parse(model, &v)?);
            let Some(table) = root.open_table(TableKind::Current, &view.resource).await? else {
                return Err(format!("no {} resources are stored yet", view.resource).into());
            };
            let ctx =
                datafusion::prelude::SessionContext::new_with_config(fhirlake_query::catalog::scan_session_config());
            table.update_datafusion_session(&ctx.state())?;
            let df = ctx.read_table(table.table_provider().await?)?;
            let shape = TableShape::try_new(model, &view.resource, ShapeOptions::default())?;
            let plan = views::plan(model, view, &shape, df, false)?;
            match (&plan.fallback, plan.row_by_row.as_slice()) {
                (None, []) => outln!("compiled: the whole view runs as columnar DataFusion operators"),
                (None, cols) => outln!("compiled, except columns run row by row over _raw: {}", cols.join(", ")),
                (Some(why), _) => outln!("row by row (FHIRPath over _raw): {why}"),
            }
            let optimized = plan.df.clone().into_optimized_plan()?;
            outln!("{}", optimized.display_indent());
            let physical = plan.df.create_physical_plan().await?;
            outln!("\n{}", datafusion::physical_plan::displayable(physical.as_ref()).indent(true));
            Ok(ExitCode::SUCCESS)
        }
    }
}
