#![doc = include_str!("../README.md")]
//!
//! ## The design in one page
//!
//! * [`replica`] — the sans-IO consensus core. A [`Replica`] never does I/O of
//!   its own; drivers feed it messages, ticks and requests and carry out what
//!   [`Replica::handle_ready`] returns.
//! * [`storage`], [`hsm`], [`transport`], [`state_machine`] — the seams, each a
//!   trait with real implementations; [`Sealed`] keeps the log on an untrusted disk.
//! * [`runtime`] — the threaded driver: [`Node`], [`NodeHandle`], [`Client`].
//! * [`wire`] — the engine's own protobuf messages; [`codec`] — the one strict
//!   reader/writer every hand-written encoding goes through, and [`codec::labeled`]
//!   for every MAC, AEAD associated data and signature input.
//!
//! This crate is the engine: it replicates any [`StateMachine`] and pulls in no
//! PAKE, no Argon2 and no audit code. The Backup Key Vault lives in
//! `vaultfleet-vault`, the fleet keys and the witness's log in `vaultfleet-audit`;
//! they build on this crate, never the reverse.
//! * Durability: nothing is acknowledged before the [`LogStore::sync`] that makes
//!   it durable (checked by `tests/engine/durability_contract.rs`).
//!
//! `docs/architecture.md` holds the full picture.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
pub mod config;
pub mod hsm;
pub mod replica;
pub mod runtime;
pub mod snapshot;
pub mod state_machine;
pub mod storage;
pub mod transport;
pub mod wire;

/// The `bytes` crate: a command ([`wire::Request::command`]) and an applied
/// command's response ([`replica::Reply::Applied`]) are [`bytes::Bytes`],
/// shared from the client to the state machine and back rather than copied.
pub use bytes;
pub use config::{ConfigError, ConfigWarning, FleetConfig, MemberSpec, ReplicatedSettings, Role};
pub use hsm::{Hsm, HsmError, SoftHsm};
pub use replica::{Replica, ReplicaConfig, ReplicaError, RequestError};
pub use runtime::{Client, ClientConfig, ClientError, Node, NodeConfig, NodeHandle};
pub use state_machine::{KvStore, StateMachine};
pub use storage::{LogStore, MemLog, Sealed, SealedConfig, SledLog, StorageError};
pub use transport::{ChannelNetwork, Transport};

/// A replica's id in its raft group (non-zero).
pub type ReplicaId = u64;
