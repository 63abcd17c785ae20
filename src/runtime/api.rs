//! `NodeApi`: how a [`Client`](super::Client) reaches one node. A [`NodeHandle`]
//! reaches a node in this process; a network crate implements it for a node in
//! another process (over its authenticated client protocol), so the client's
//! leader finding, retries and at-most-once sessions are the same code for both.

use std::sync::Arc;

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
    /// Submits a session registration whose outcome goes to `slot` (one made
    /// with [`Slot::with_notify`](super::Slot::with_notify), say, so that an
    /// async caller is woken instead of polling).
    fn register_session_into(&self, slot: ResponseSlot) -> Result<(), RequestError>;
    /// Submits the registration of a session belonging to `owner` (what a
    /// network front end's authenticated client key is); commands must then
    /// carry the same `owner`. The default refuses a non-empty owner: a node
    /// reached over a network registers sessions as its own front end says.
    fn register_session_of_into(
        &self,
        owner: Vec<u8>,
        slot: ResponseSlot,
    ) -> Result<(), RequestError> {
        if owner.is_empty() {
            self.register_session_into(slot)
        } else {
            Err(RequestError::Forbidden)
        }
    }
    /// Submits a linearizable read whose outcome goes to `slot`.
    fn read_into(&self, query: Vec<u8>, slot: ResponseSlot) -> Result<(), RequestError>;
    /// Submits a membership change whose outcome goes to `slot`.
    fn change_membership_into(
        &self,
        change: MembershipChange,
        slot: ResponseSlot,
    ) -> Result<(), RequestError>;
    /// Submits a state digest marker (leader only) whose outcome goes to
    /// `slot`: [`Reply::StateDigest`](crate::replica::Reply::StateDigest),
    /// the marker's index and the leader's digest. A node reached over a
    /// network allows it only to an admin client key (`Forbidden` otherwise).
    fn mark_state_digest_into(&self, slot: ResponseSlot) -> Result<(), RequestError>;
    /// Submits a state digest marker
    /// ([`mark_state_digest_into`](Self::mark_state_digest_into) with a
    /// fresh slot).
    fn mark_state_digest(&self) -> Result<ResponseSlot, RequestError> {
        let slot = ResponseSlot::default();
        self.mark_state_digest_into(Arc::clone(&slot))?;
        Ok(slot)
    }
    /// Submits a session registration; its outcome arrives in the returned
    /// slot (no notify: [`register_session_into`](Self::register_session_into)).
    fn register_session(&self) -> Result<ResponseSlot, RequestError> {
        let slot = ResponseSlot::default();
        self.register_session_into(Arc::clone(&slot))?;
        Ok(slot)
    }
    /// Submits a linearizable read ([`read_into`](Self::read_into) with a
    /// fresh slot).
    fn read(&self, query: Vec<u8>) -> Result<ResponseSlot, RequestError> {
        let slot = ResponseSlot::default();
        self.read_into(query, Arc::clone(&slot))?;
        Ok(slot)
    }
    /// Submits a membership change
    /// ([`change_membership_into`](Self::change_membership_into) with a fresh
    /// slot).
    fn change_membership(&self, change: MembershipChange) -> Result<ResponseSlot, RequestError> {
        let slot = ResponseSlot::default();
        self.change_membership_into(change, Arc::clone(&slot))?;
        Ok(slot)
    }
    /// The largest command this node accepts
    /// (`ReplicaConfig::command_bytes_max`), if known here: a server in front
    /// of the node refuses a larger one with `CommandTooLarge` without
    /// submitting it. `None` (the default) when only the node itself knows.
    fn command_bytes_max(&self) -> Option<usize> {
        None
    }
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

    fn register_session_into(&self, slot: ResponseSlot) -> Result<(), RequestError> {
        NodeHandle::register_session_into(self, slot)
    }

    fn register_session_of_into(
        &self,
        owner: Vec<u8>,
        slot: ResponseSlot,
    ) -> Result<(), RequestError> {
        NodeHandle::register_session_of_into(self, owner, slot)
    }

    fn read_into(&self, query: Vec<u8>, slot: ResponseSlot) -> Result<(), RequestError> {
        NodeHandle::read_into(self, query, slot)
    }

    fn change_membership_into(
        &self,
        change: MembershipChange,
        slot: ResponseSlot,
    ) -> Result<(), RequestError> {
        NodeHandle::change_membership_into(self, change, slot)
    }

    fn mark_state_digest_into(&self, slot: ResponseSlot) -> Result<(), RequestError> {
        NodeHandle::mark_state_digest_into(self, slot)
    }

    fn command_bytes_max(&self) -> Option<usize> {
        Some(NodeHandle::command_bytes_max(self))
    }

    fn transfer_leader(&self, to: ReplicaId) -> Result<(), RequestError> {
        NodeHandle::transfer_leader(self, to)
    }
}
