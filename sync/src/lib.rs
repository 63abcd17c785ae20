//! The structures that hand work between threads in vaultfleet's runtime: the
//! [`Mailbox`] that feeds a replica, the one-shot response [`Slot`], and a
//! pool's [`ReadyQueue`] with its end-of-turn hand-off ([`end_of_turn`]).
//!
//! They are a crate of their own, below the engine, so that their loom models
//! (`tests/loom.rs`) build only them: loom needs `--cfg loom` for the whole
//! build, and inside the engine that meant rebuilding raft-rs, protobuf, sled
//! and the cryptography in release for every run. The engine re-exports all of
//! them from `vaultfleet::runtime`; use them from there.
//!
//! Run the models: `RUSTFLAGS="--cfg loom" cargo test --release -p vaultfleet-sync --test loom`
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// The structures block on condvars with timeouts: that is their job.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod mailbox;
mod primitives;
mod ready;
mod slot;

pub use mailbox::{Mailbox, PushError};
pub use ready::{end_of_turn, Pop, ReadyQueue};
pub use slot::{Notify, Slot};
