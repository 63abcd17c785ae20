//! `NodeApi`: how a [`Client`](super::Client) reaches one node. A [`NodeHandle`]
//! reaches a node in this process; a network crate implements it for a node in
//! another process (over its authenticated client protocol), so the client's
//! leader finding, retries and at-most-once sessions are the same code for both.

use raft::StateRole;

use super::node::{NodeHandle, ResponseSlot};
use crate::replica::{MembershipChange, RequestError, Status};
use crate::wire::Request;
use crate::ReplicaId;

/// One node, as a [`Client`](super::Client) uses it. Every call returns at once:
/// the outcome arrives in the slot (filled exactly once, with the reply or a
/// [`RequestError`] such as `NotLeader { leader }`, which the client follows).
pub trait NodeApi: Send + Sync + 'static {
    /// The replica's id.
    fn id(&self) -> ReplicaId;
    /// The replica's status as last known (a remote node's may be stale: the
    /// client uses it only to guess the leader, and follows `NotLeader` hints).
    fn status(&self) -> Status;
    /// The replica's role as last known.
    fn role(&self) -> StateRole {
        self.status().role
    }
    /// True once the node is known to be stopped (or unreachable for good).
    fn is_stopped(&self) -> bool;
    /// Submits a command whose outcome goes to `slot`.
    fn propose_into(&self, request: Request, slot: ResponseSlot) -> Result<(), RequestError>;
    /// Submits a session registration.
    fn register_session(&self) -> Result<ResponseSlot, RequestError>;
    /// Submits a linearizable read.
    fn read(&self, query: Vec<u8>) -> Result<ResponseSlot, RequestError>;
    /// Submits a membership change.
    fn change_membership(&self, change: MembershipChange) -> Result<ResponseSlot, RequestError>;
    /// Asks this node, if leader, to hand leadership to `to`.
    fn transfer_leader(&self, to: ReplicaId) -> Result<(), RequestError>;
}

impl NodeApi for NodeHandle {
    fn id(&self) -> ReplicaId {
        NodeHandle::id(self)
    }

    fn status(&self) -> Status {
        NodeHandle::status(self)
    }

    fn role(&self) -> StateRole {
        NodeHandle::role(self)
    }

    fn is_stopped(&self) -> bool {
        NodeHandle::is_stopped(self)
    }

    fn propose_into(&self, request: Request, slot: ResponseSlot) -> Result<(), RequestError> {
        NodeHandle::propose_into(self, request, slot)
    }

    fn register_session(&self) -> Result<ResponseSlot, RequestError> {
        NodeHandle::register_session(self)
    }

    fn read(&self, query: Vec<u8>) -> Result<ResponseSlot, RequestError> {
        NodeHandle::read(self, query)
    }

    fn change_membership(&self, change: MembershipChange) -> Result<ResponseSlot, RequestError> {
        NodeHandle::change_membership(self, change)
    }

    fn transfer_leader(&self, to: ReplicaId) -> Result<(), RequestError> {
        NodeHandle::transfer_leader(self, to)
    }
}
