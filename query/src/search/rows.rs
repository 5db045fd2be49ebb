//! Row policies: which rows of a type a caller may see, as a filter every reader of the
//! type applies.
//!
//! Owns: [`RowPolicy`] — an OR of [`RowRule`]s, each "in the Patient compartment of P"
//! (the `_compartment_patients` column: every member, not only the owner; history tables,
//! which keep only the owner `_patient`, by owner) and/or a list of
//! search clauses, ANDed (SMART granular scopes, "Devices of P or of nobody") — and its
//! DataFusion expression. A [`TableView`](crate::buffered::TableView) carrying a policy
//! filters its whole union with it, so search, chains, `_has`, includes, `$everything` and
//! SQL read only permitted rows by construction; token postings, which read Parquet
//! directly, are not used for such a view. Must not: decide who gets which policy (the
//! root crate's `auth::policy` does).

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Schema;
use datafusion::functions_nested::expr_fn::array_has;
use datafusion::prelude::{Expr, col, lit};
use fhirlake_schemas::search::Clause;

use super::matcher::{ClauseMatcher, string_at};
use crate::{Error, Result};

/// One way a row may be visible.
#[derive(Debug, Clone, PartialEq)]
pub struct RowRule {
    /// The row must be in this patient's compartment.
    pub compartment: Option<String>,
    /// The row must match every clause (no chains).
    pub clauses: Vec<Clause>,
}

/// The rows of one type a caller may see: those any rule admits (none: no row).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowPolicy {
    /// The rules, ORed.
    pub rules: Vec<RowRule>,
}

impl RowPolicy {
    /// Which rows of `batch` (rows of a current table: `_compartment_patients` and the
    /// index columns the clauses read) the policy admits; a missing column admits nothing.
    pub fn admits(&self, batch: &RecordBatch) -> Result<Vec<bool>> {
        let n = batch.num_rows();
        let mut any = vec![false; n];
        for rule in &self.rules {
            let mut all = vec![true; n];
            if let Some(p) = &rule.compartment {
                let Some(list) = batch.column_by_name("_compartment_patients").and_then(|c| c.as_list_opt::<i32>())
                else {
                    continue;
                };
                for (i, ok) in all.iter_mut().enumerate() {
                    let members = list.value(i);
                    *ok &= (0..members.len()).any(|j| string_at(members.as_ref(), j) == Some(p.as_str()));
                }
            }
            let mut missing = false;
            for c in &rule.clauses {
                let Some(column) = batch.column_by_name(&c.column) else {
                    missing = true;
                    break;
                };
                let hits = ClauseMatcher::new(c)?.evaluate(column)?;
                for (i, ok) in all.iter_mut().enumerate() {
                    *ok &= hits.value(i);
                }
            }
            if missing {
                continue;
            }
            for (a, ok) in any.iter_mut().zip(all) {
                *a |= ok;
            }
        }
        Ok(any)
    }

    /// No row at all.
    pub fn nothing() -> Self {
        RowPolicy { rules: Vec::new() }
    }

    /// The filter over a current table with `schema`. A rule that needs a column the table
    /// lacks admits nothing (fails closed).
    pub fn expr(&self, schema: &Schema) -> Result<Expr> {
        let mut any: Option<Expr> = None;
        for rule in &self.rules {
            let Some(e) = rule_expr(rule, schema)? else { continue };
            any = Some(match any {
                Some(a) => a.or(e),
                None => e,
            });
        }
        Ok(any.unwrap_or_else(|| lit(false)))
    }
}

fn rule_expr(rule: &RowRule, schema: &Schema) -> Result<Option<Expr>> {
    let mut all = Vec::new();
    if let Some(p) = &rule.compartment {
        if schema.column_with_name("_compartment_patients").is_some() {
            all.push(array_has(col("_compartment_patients"), lit(p.clone())));
        } else if schema.column_with_name("_patient").is_some() {
            // History tables keep the owner only: its compartment is a subset of the
            // resource's, so this hides some rows and never shows another patient's.
            all.push(col("_patient").eq(lit(p.clone())));
        } else {
            return Ok(None);
        }
    }
    for c in &rule.clauses {
        if c.chain.is_some() {
            return Err(Error::BadSearch(format!("a row policy cannot hold a chain ({})", c.code)));
        }
        if schema.column_with_name(&c.column).is_none() {
            return Ok(None);
        }
        all.push(super::match_expr(&c.column, format!("policy:{}", c.code), ClauseMatcher::new(c)?));
    }
    Ok(Some(all.into_iter().reduce(Expr::and).unwrap_or_else(|| lit(true))))
}

/// The row policy of each table a reader may see.
pub trait RowPolicies: Send + Sync {
    /// The rows of `rt` the reader may see: `None` for all; a policy without rules for
    /// none (the table is then not even listed).
    fn rows(&self, rt: &str) -> Result<Option<std::sync::Arc<RowPolicy>>>;
}
