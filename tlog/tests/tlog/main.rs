//! The public log's integration tests, one module per file in one binary: one link and one copy of
//! the shared helpers instead of one per file, which is most of what
//! `scripts/test.sh` spends building from a clean target directory.

mod common;

mod hostile_servers;
mod public_log;
