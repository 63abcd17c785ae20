//! The threaded runtime: drives replicas for real, with OS threads, wall-clock
//! ticks, a durable log store and a transport.
//!
//! * [`Node`] runs one [`Replica`](crate::Replica) on its own thread.
//! * [`Pool`] runs any number of replicas (of any groups) on a fixed set of
//!   worker threads; a [`PooledNode`] has the surface of a `Node`.
//! * [`NodeHandle`] submits requests to a node and is the node's transport
//!   [`Inbox`](crate::transport::Inbox).
//! * [`NodeApi`] is how a client reaches one node: a `NodeHandle` in process,
//!   or a network crate's remote node.
//! * [`Client`] is a session on a fleet of nodes: blocking and non-blocking
//!   proposals, linearizable reads, membership changes, with retries that keep
//!   every command at most once.
//!
//! The shared structures between client threads and node threads ([`Mailbox`],
//! [`Slot`], the pool's [`ReadyQueue`] and its scheduling hand-off,
//! [`end_of_turn`]) live in the `vaultfleet-sync` crate, re-exported here, and
//! are checked with loom there (`sync/tests/loom.rs`).
// The runtime is the threaded, wall-clock driver: clocks, threads and sleeps are its job.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod api;
mod client;
mod node;
mod pool;
mod standalone;
pub mod telemetry;
mod timer;

pub use api::NodeApi;
pub use client::{Client, ClientConfig, ClientError, PendingCommand};
pub use node::{Node, NodeConfig, NodeHandle, ResponseSlot};
pub use pool::{Pool, PoolConfig, PoolError, PooledNode};
pub use standalone::{RuntimeKind, Standalone, StandaloneError};
pub use vaultfleet_sync::{end_of_turn, Mailbox, Notify, Pop, PushError, ReadyQueue, Slot};
