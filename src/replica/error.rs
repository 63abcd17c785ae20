//! Errors of the consensus core: why one request failed ([`RequestError`], the
//! caller may retry), and why the replica itself stopped ([`ReplicaError`]).

use crate::storage::StorageError;
use crate::ReplicaId;

/// Why one proposal, read or membership change failed. Each variant says whether
/// a retry is safe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// This replica is not the leader.
    #[error("not the leader{}; retry there", match .leader { Some(id) => format!(" (leader is replica {id})"), None => " (no leader known yet)".to_string() })]
    NotLeader {
        /// The leader this replica knows of, if any.
        leader: Option<ReplicaId>,
    },
    /// The request was not applied (raft dropped the proposal, or the entry carrying
    /// it was replaced by another leader's). Retrying with the same sequence is safe.
    #[error(
        "the request was dropped before it was committed; retrying with the same sequence is safe"
    )]
    Dropped,
    /// No outcome in time. The command may still be applied; retrying with the same
    /// sequence is safe (it is applied at most once).
    #[error("timed out waiting for the fleet; the command may still apply, retrying with the same sequence is safe")]
    TimedOut,
    /// This replica lost leadership before the request's outcome was known. The
    /// command may still apply (a new leader may commit it); retrying with the same
    /// sequence is safe.
    #[error("leadership changed before the outcome was known; the command may still apply, retrying with the same sequence is safe")]
    LeaderChanged,
    /// The client's session is unknown (never registered, or evicted): the command
    /// was not applied. Register a new session.
    #[error("client session {client_id} is unknown or expired; the command was not applied, register a new session")]
    SessionExpired {
        /// The session id.
        client_id: u64,
    },
    /// A sequence the client had already acknowledged: a replay, not applied.
    #[error("sequence {sequence} of session {client_id} was already acknowledged (acked below {acked_below}); replay rejected")]
    Stale {
        /// The session id.
        client_id: u64,
        /// The replayed sequence.
        sequence: u64,
        /// The session's acknowledgement watermark.
        acked_below: u64,
    },
    /// The session already holds the maximum number of unacknowledged responses.
    #[error("session {client_id} has {limit} unacknowledged responses; acknowledge some before sending more")]
    TooManyOutstanding {
        /// The session id.
        client_id: u64,
        /// The limit.
        limit: usize,
    },
    /// A command larger than the configured limit.
    #[error("command of {bytes} bytes exceeds the limit of {limit} bytes")]
    CommandTooLarge {
        /// The command's size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A membership change raft refused.
    #[error("membership change rejected: {0}")]
    ConfChangeRejected(String),
    /// A learner that is not yet caught up cannot be promoted.
    #[error(
        "replica {id} is not caught up ({matched} of {last_index} entries); wait and promote again"
    )]
    NotCaughtUp {
        /// The learner.
        id: ReplicaId,
        /// Entries it holds.
        matched: u64,
        /// The leader's last index.
        last_index: u64,
    },
    /// The node's input queue is full; back off and retry.
    #[error("replica is overloaded (input queue full); back off and retry")]
    Overloaded,
    /// The replica stopped (shut down, or failed on its storage).
    #[error("replica stopped; use another replica")]
    Stopped,
}

/// A failure that stops the replica. The replica must not be used afterwards.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The log store failed or is corrupt.
    #[error("replica {id}: log store failed: {source}")]
    Storage {
        /// The replica.
        id: ReplicaId,
        /// The store's error.
        #[source]
        source: StorageError,
    },
    /// raft-rs reported an error it cannot continue from.
    #[error("replica {id}: raft failed: {source}")]
    Raft {
        /// The replica.
        id: ReplicaId,
        /// raft-rs's error.
        #[source]
        source: raft::Error,
    },
    /// A snapshot's payload could not be decoded or restored.
    #[error("replica {id}: snapshot at index {index} cannot be restored: {detail}")]
    Snapshot {
        /// The replica.
        id: ReplicaId,
        /// The snapshot's index.
        index: u64,
        /// What was wrong.
        detail: String,
    },
    /// Settings that cannot work.
    #[error("replica {id}: invalid configuration: {detail}")]
    Config {
        /// The replica.
        id: ReplicaId,
        /// What was wrong.
        detail: String,
    },
    /// The replica already failed earlier and was used again.
    #[error("replica {id} already failed and must be rebuilt")]
    Failed {
        /// The replica.
        id: ReplicaId,
    },
}

/// A message the replica refused to step (it is logged and dropped; the replica
/// carries on).
#[derive(Debug, thiserror::Error)]
#[error("replica {id} dropped a message from {from}: {reason}")]
pub struct StepError {
    /// The replica.
    pub id: ReplicaId,
    /// The sender.
    pub from: ReplicaId,
    /// Why it was dropped.
    pub reason: String,
}
