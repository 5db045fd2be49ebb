//! fhirlake: a FHIR R4 lakehouse — FHIR REST API and SQL over one copy of the data in
//! Delta Lake tables.
//!
//! This crate is the binary's library: the CLI ([`cli`]), the HTTP API ([`api`]), API
//! settings ([`config`]), the one error-to-HTTP mapping ([`error`]) and materialized views
//! ([`materialize`]). Behaviour lives in
//! `fhirlake-schemas`, `fhirlake-ingest` and `fhirlake-query`.

pub mod api;
pub mod cli;
pub mod config;
pub mod error;
pub mod flight;
pub mod generate;
pub mod materialize;
