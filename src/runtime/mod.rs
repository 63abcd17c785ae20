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
//! [`Slot`], the pool's [`ReadyQueue`] and its scheduling hand-off) are checked
//! with loom (`tests/loom.rs`).
// The runtime is the threaded, wall-clock driver: clocks, threads and sleeps are its job.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod api;
mod client;
mod mailbox;
mod node;
mod pool;
mod slot;
mod standalone;
mod sync;
pub mod telemetry;
mod timer;

pub use api::NodeApi;
pub use client::{Client, ClientConfig, ClientError, PendingCommand};
pub use mailbox::{Mailbox, PushError};
pub use node::{Node, NodeConfig, NodeHandle, ResponseSlot};
pub use pool::{end_of_turn, Pool, PoolConfig, PoolError, PooledNode, Pop, ReadyQueue};
pub use slot::{Notify, Slot};
pub use standalone::{RuntimeKind, Standalone, StandaloneError};
