//! The network layer's integration tests, one module per file in one binary: one link and one copy of
//! the shared helpers instead of one per file, which is most of what
//! `scripts/test.sh` spends building from a clean target directory.
//! `chaos.rs` stays a binary of its own: its scenarios run processes under a
//! fault-injecting proxy, one at a time and alone.

mod common;
mod process_fleet;
mod wait;

mod client_review;
mod fleet;
mod node_inbox;
mod processes;
mod remote_client;
mod remote_vault;
mod session_owner;
mod streamed;
