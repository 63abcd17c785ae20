//! The node's integration tests, one module per file in one binary: one link and one copy of
//! the shared helpers instead of one per file, which is most of what
//! `scripts/test.sh` spends building from a clean target directory.
//! `metrics.rs` (the process-wide metrics recorder) and `admin.rs` (the
//! process's log subscriber) stay binaries of their own.

mod common;

mod config;
mod run_fleet;
mod served_log;
mod start_refusals;
