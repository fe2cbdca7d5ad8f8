//! Fuzz targets of opalcrs. The checks live in `checks.rs` so that the main crate's
//! `tests/fuzz_corpus.rs` can include the same file and replay the corpus without AFL.

#[path = "checks.rs"]
pub mod checks;
