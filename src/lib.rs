//! # vaultfleet
//!
//! Majority-consensus replication of vault state machines across a fleet of HSM
//! hosts in several datacenters.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod replica;
pub mod runtime;
pub mod state_machine;
pub mod storage;
pub mod transport;
pub mod wire;

pub use config::{ConfigError, ConfigWarning, FleetConfig, MemberSpec, Role};
pub use replica::{Replica, ReplicaConfig, ReplicaError, RequestError};
pub use state_machine::{KvStore, StateMachine};
pub use storage::{LogStore, MemLog, SledLog, StorageError};
pub use runtime::{Client, ClientConfig, ClientError, Node, NodeConfig, NodeHandle};
pub use transport::{ChannelNetwork, Transport};

/// A replica's id in its raft group (non-zero).
pub type ReplicaId = u64;
