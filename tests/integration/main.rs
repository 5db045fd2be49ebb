//! Integration tests of the fhirlake binary crate: the axum router driven in process, the
//! CLI binary, and the fixtures in `tests/fixtures`.

mod auth;
mod bad_inputs;
mod cli;
mod common;
mod compaction;
mod concurrency;
mod examples;
mod freshness;
mod generate;
mod operations;
mod search;
mod slt;
mod sql;
mod versions;
mod views;
mod writes;
