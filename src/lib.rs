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
//! * [`vault`] — the Backup Key Vault: [`vault::BackupVault`] (the replicated
//!   guess counters and sealed secrets), [`vault::VaultService`] (OPAQUE beside
//!   each node; an attempt is committed before it is answered) and
//!   [`vault::VaultClient`].
//! * Durability: nothing is acknowledged before the [`LogStore::sync`] that makes
//!   it durable (checked by `tests/durability_contract.rs`).
//!
//! `docs/architecture.md` holds the full picture.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod config;
pub mod fleet;
pub mod hsm;
pub mod replica;
pub mod runtime;
pub mod state_machine;
pub mod storage;
pub mod transport;
pub mod vault;
pub mod wire;

pub use config::{ConfigError, ConfigWarning, FleetConfig, MemberSpec, Role};
pub use hsm::{Hsm, HsmError, SoftHsm};
pub use replica::{Replica, ReplicaConfig, ReplicaError, RequestError};
pub use runtime::{Client, ClientConfig, ClientError, Node, NodeConfig, NodeHandle};
pub use state_machine::{KvStore, StateMachine};
pub use storage::{LogStore, MemLog, Sealed, SealedConfig, SledLog, StorageError};
pub use transport::{ChannelNetwork, Transport};

/// A replica's id in its raft group (non-zero).
pub type ReplicaId = u64;
