//! fhirlake: a FHIR R4 lakehouse — FHIR REST API and SQL over one copy of the data in
//! Delta Lake tables.
//!
//! This crate is the binary's library. Front ends: the CLI ([`cli`]: `serve`, `import`,
//! `sql`, `view`, `compact`, `generate`, `config`), the HTTP API ([`api`]: translation of
//! requests into operations, `/health`, `/metrics`) and Arrow Flight SQL ([`flight`]).
//! Every front end calls the service layer ([`service`]), where an operation is checked,
//! executed and answered: CRUD, conditional interactions, PATCH, search, history,
//! Bundles, `$sql`, `$run`, `$materialize` ([`materialize`] composes view refreshes).
//! Settings are defined once ([`config`]), errors classified once ([`error`]), and
//! [`generate`] writes synthetic data for benchmarks. Behaviour below the service lives in
//! `fhirlake-schemas` (model, validation, FHIRPath, search parsing, storage layout),
//! `fhirlake-ingest` (writes) and `fhirlake-query` (reads).

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod flight;
pub mod generate;
pub mod materialize;
pub mod service;
