//! Uri values are compared as written (the API layer has already percent-decoded them);
//! nothing to parse beyond unescaping, which `mod.rs` does.
