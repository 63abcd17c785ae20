//! The property tests, one module per file in one binary: one link and one copy of
//! the shared helpers instead of one per file, which is most of what
//! `scripts/test.sh` spends building from a clean target directory.

#[path = "../../../tests/core_harness/mod.rs"]
mod core_harness;

mod audit;
mod fuzz_corpus;
mod hostile_messages;
mod log_store_conformance;
mod streamed_snapshots;
