//! The network layer's integration tests, one module per file in one binary: one link and one copy of
//! the shared helpers instead of one per file, which is most of what
//! `scripts/test.sh` spends building from a clean target directory.

mod common;
mod process_fleet;
mod wait;

mod chaos;
mod client_review;
mod fleet;
mod node_inbox;
mod processes;
mod remote_client;
mod remote_vault;
mod session_owner;
mod streamed;
