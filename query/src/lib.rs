//! Query.
