//! Errors of the consensus core: why one request failed ([`RequestError`], the
//! caller may retry), why the replica itself stopped ([`ReplicaError`]), and why
//! one peer message was dropped ([`StepError`]). Causes nest as typed values.

use std::sync::Arc;

use raft::prelude::MessageType;

use super::config::ReplicaConfigError;
use crate::config::ConfigError;
use crate::state_machine::{CaptureError, RestoreError};
use crate::storage::StorageError;
use crate::wire::{DecodeError, EncodeError};
use crate::ReplicaId;

/// Why one proposal, read or membership change failed. Each variant says whether
/// a retry is safe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The command names a session that belongs to another client (its
    /// `owner` differs from the one the session was registered with): refused,
    /// never applied. A client uses the sessions it registered itself.
    #[error("session {client_id} belongs to another client: register a session of your own")]
    NotSessionOwner {
        /// The session named.
        client_id: u64,
    },
    /// A session owner longer than [`OWNER_BYTES_MAX`](crate::replica::OWNER_BYTES_MAX).
    #[error("a session owner of {bytes} bytes is above the limit of {limit}")]
    OwnerTooLong {
        /// The owner's length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
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
    /// A membership change refused, by this replica or by raft.
    #[error("membership change rejected: {0}")]
    ConfChangeRejected(ConfChangeRejection),
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
    /// The replica stopped (shut down, or failed on its storage). A write
    /// answered so has an unknown outcome: the replica may have sent it to
    /// its followers first, and the rest of the fleet may commit it. Retry
    /// it on another replica under the same session and sequence number,
    /// which applies it at most once.
    #[error("replica stopped; use another replica")]
    Stopped,
    /// The caller's credential does not allow this request: a remote client
    /// key without the admin role asked for a membership change or a
    /// leadership transfer (`vaultfleet-net`'s client roles). Not carried out;
    /// a retry gets the same answer.
    #[error("this client is not allowed to change membership, transfer leadership or mark a state digest (an admin client key is required)")]
    Forbidden,
    /// A state digest marker applied at `index`, but this replica could not
    /// capture its state there (the state machine's snapshot failed; logged):
    /// no digest. Every replica with the same state fails alike; marking again
    /// gets the same answer until the state machine can capture its state.
    #[error("the state digest marker at index {index} applied, but the state could not be captured for its digest")]
    StateCaptureFailed {
        /// The marker's index.
        index: u64,
    },
    /// The request WAS carried out (a proposal applied, at most once; a read
    /// answered) but its reply of `bytes` is larger than the connection that
    /// would carry it allows (`limit`, a remote client's frame limit). Do not
    /// treat the command as not applied; a retry with the same sequence gets
    /// the same (too large) cached response.
    #[error("the request was carried out (a proposal applied), but its reply of {bytes} bytes exceeds the connection's limit of {limit} bytes")]
    ReplyTooLarge {
        /// The reply's encoded size.
        bytes: usize,
        /// The largest reply the connection carries.
        limit: usize,
    },
}

/// Why a membership change was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConfChangeRejection {
    /// The leader was asked to remove itself.
    #[error("the leader cannot remove itself; transfer leadership first")]
    RemovesLeader,
    /// The new member's datacenter label is longer than
    /// [`DATACENTER_BYTES_MAX`](crate::config::DATACENTER_BYTES_MAX).
    #[error(
        "the datacenter label is {bytes} bytes; the limit is {}",
        crate::config::DATACENTER_BYTES_MAX
    )]
    DatacenterTooLong {
        /// The label's length.
        bytes: usize,
    },
    /// The fleet already has [`MEMBERS_MAX`](crate::config::MEMBERS_MAX) members.
    #[error(
        "the fleet has {members} members, the most it may have is {}",
        crate::config::MEMBERS_MAX
    )]
    TooManyMembers {
        /// The members (voters and learners) now.
        members: usize,
    },
    /// The fleet's accepted (witnessed) artifact does not allow the change:
    /// a learner it does not list, in another datacenter, or a promotion of a
    /// replica it does not list as a voter. Refused by the node's front end
    /// before anything is proposed.
    #[error(
        "the fleet's accepted epoch {epoch} does not allow it: {reason}; publish an epoch \
         that lists the replica and reload the nodes (SIGHUP) first"
    )]
    NotInAcceptedFleet {
        /// The accepted artifact's epoch.
        epoch: u64,
        /// What the artifact says against it.
        reason: String,
    },
    /// Removing the voter would leave voters of whom fewer than a majority
    /// were heard from within an election timeout: the fleet would stall
    /// until a lost replica came back. Bring the silent voters back (or
    /// remove a silent one first).
    #[error(
        "only {active} of the {voters} voters left would be ones the leader hears from: \
         no majority; bring the silent voters back or remove a silent one first"
    )]
    QuorumAtRisk {
        /// Voters left that the leader heard from lately (itself included).
        active: usize,
        /// Voters left after the removal.
        voters: usize,
    },
    /// raft-rs refused the change (for example a second change while one is
    /// pending, or one that leaves no voter).
    #[error("raft refused it: {0}")]
    Raft(#[source] Arc<raft::Error>),
}

impl PartialEq for ConfChangeRejection {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::RemovesLeader, Self::RemovesLeader) => true,
            (Self::DatacenterTooLong { bytes: a }, Self::DatacenterTooLong { bytes: b }) => a == b,
            (Self::TooManyMembers { members: a }, Self::TooManyMembers { members: b }) => a == b,
            (
                Self::QuorumAtRisk {
                    active: a,
                    voters: v,
                },
                Self::QuorumAtRisk {
                    active: b,
                    voters: w,
                },
            ) => a == b && v == w,
            (Self::Raft(a), Self::Raft(b)) => a == b,
            (
                Self::NotInAcceptedFleet {
                    epoch: a,
                    reason: r,
                },
                Self::NotInAcceptedFleet {
                    epoch: b,
                    reason: s,
                },
            ) => a == b && r == s,
            _ => false,
        }
    }
}

// raft::Error's equality compares its variants and their fields: reflexive.
impl Eq for ConfChangeRejection {}

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
    /// A snapshot could not be taken, decoded or restored.
    #[error("replica {id}: snapshot at index {index}: {source}")]
    Snapshot {
        /// The replica.
        id: ReplicaId,
        /// The snapshot's index.
        index: u64,
        /// What was wrong.
        #[source]
        source: SnapshotError,
    },
    /// A committed log entry this replica cannot apply. Every replica applies the
    /// same committed log, so applying past it could diverge: the replica stops
    /// instead. Restore it from a healthy replica's snapshot.
    #[error("replica {id}: committed entry {index} is corrupt, applying stopped: {source}")]
    CorruptEntry {
        /// The replica.
        id: ReplicaId,
        /// The entry's index.
        index: u64,
        /// What was wrong.
        #[source]
        source: CorruptEntry,
    },
    /// Replica settings that cannot work.
    #[error("replica {id}: invalid configuration: {source}")]
    Config {
        /// The replica.
        id: ReplicaId,
        /// The setting at fault.
        #[source]
        source: ReplicaConfigError,
    },
    /// A fleet configuration that cannot work (given to [`Replica::bootstrap`](super::Replica::bootstrap)).
    #[error("invalid fleet configuration: {source}")]
    Fleet {
        /// What was wrong.
        #[source]
        source: ConfigError,
    },
    /// The driver could not start its thread.
    #[error("replica {id}: cannot spawn the node thread: {source}")]
    Spawn {
        /// The replica.
        id: ReplicaId,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The replica already failed earlier and was used again.
    #[error("replica {id} already failed and must be rebuilt")]
    Failed {
        /// The replica.
        id: ReplicaId,
    },
}

/// What was wrong with a snapshot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The snapshot's envelope did not decode.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// The envelope was written by a build with another format version.
    #[error("format version {found} is not {supported}; upgrade this replica")]
    Version {
        /// The version found.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The state machine refused its part.
    #[error("{0}")]
    Restore(#[from] RestoreError),
    /// The snapshot could not be encoded (it exceeds protobuf's size limit).
    #[error("{0}")]
    Encode(#[from] EncodeError),
    /// The state machine could not capture its state.
    #[error("{0}")]
    Capture(#[from] CaptureError),
    /// A streamed snapshot's descriptor did not decode.
    #[error("its file descriptor: {0}")]
    Descriptor(#[source] crate::codec::DecodeError),
    /// A streamed snapshot's descriptor names another snapshot than the raft
    /// snapshot carrying it.
    #[error(
        "its file descriptor names group {} index {} term {}, the snapshot is group {} index {} term {}",
        descriptor.0, descriptor.1, descriptor.2, snapshot.0, snapshot.1, snapshot.2
    )]
    DescriptorMismatch {
        /// The descriptor's group, index and term.
        descriptor: (u64, u64, u64),
        /// The raft snapshot's (and the replica's group).
        snapshot: (u64, u64, u64),
    },
    /// A streamed snapshot reached a replica whose store keeps no snapshot
    /// files.
    #[error("it is a streamed snapshot and this replica's store keeps no snapshot files; open the store with its snapshot files")]
    NoFiles,
    /// A streamed snapshot's file could not be read, or failed its checks.
    #[error("its file: {0}")]
    Files(#[from] crate::snapshot::SnapshotFileError),
    /// A streamed snapshot's stream is malformed.
    #[error("its stream: {what}")]
    Stream {
        /// What was wrong.
        what: &'static str,
    },
    /// Restoring the snapshot off the replica's thread panicked (in the
    /// state machine's `restore_from`, most likely; see the log).
    #[error("its restore panicked; see the log for the panic")]
    RestorePanicked,
    /// The replicated session limits are out of range.
    #[error(
        "replicated session limits out of range (sessions_max {sessions_max}, \
         session_responses_max {session_responses_max})"
    )]
    Settings {
        /// The sessions limit carried.
        sessions_max: u64,
        /// The responses limit carried.
        session_responses_max: u64,
    },
}

/// Why a committed entry cannot be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptEntry {
    /// A membership change entry whose change does not decode.
    #[error("{0}")]
    ConfChange(DecodeError),
    /// A membership change entry whose context (the new members' datacenter
    /// labels) does not decode.
    #[error("{0}")]
    ConfChangeContext(DecodeError),
    /// A membership change adds a member its context gives no datacenter label.
    #[error("membership change adds replica {member} without a datacenter label")]
    MissingLabel {
        /// The member added.
        member: ReplicaId,
    },
}

/// A message the replica refused to step (it is logged and dropped, counted in
/// [`Replica::messages_refused`](super::Replica::messages_refused); the replica
/// carries on).
#[derive(Debug, thiserror::Error)]
#[error("replica {id} dropped a message from {from}: {reason}")]
pub struct StepError {
    /// The replica.
    pub id: ReplicaId,
    /// The sender.
    pub from: ReplicaId,
    /// Why it was dropped.
    #[source]
    pub reason: StepRefusal,
}

/// Why a peer message was dropped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StepRefusal {
    /// The replica stopped earlier.
    #[error("the replica has failed")]
    Failed,
    /// The message is addressed to another replica.
    #[error("it is addressed to replica {to}")]
    Misaddressed {
        /// The addressee.
        to: ReplicaId,
    },
    /// A raft-local message type (such as `MsgHup`) came from the network.
    #[error("local message type {0:?} from the network")]
    LocalMessage(MessageType),
    /// raft-rs refused the message.
    #[error("raft refused it: {0}")]
    Raft(#[source] raft::Error),
    /// The sender id is 0 (raft's "no node") or this replica's own.
    #[error("its sender id {from} is not a peer's")]
    BadSender {
        /// The sender id the message carries.
        from: ReplicaId,
    },
    /// A message type replicas of this fleet never send to each other (they
    /// never forward proposals or reads: both are served by the leader only).
    #[error("message type {0:?} is never sent between replicas of this fleet")]
    NeverSent(MessageType),
    /// A message without a term: raft-rs would treat it as local and skip every
    /// term check.
    #[error("{0:?} without a term")]
    NoTerm(MessageType),
    /// A term or index above [`INDEX_MAX`](super::INDEX_MAX), where raft-rs's
    /// index arithmetic could overflow.
    #[error("{field} = {value} exceeds the limit of {}", super::INDEX_MAX)]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A `MsgTimeoutNow` (campaign now, skipping pre-vote and leases) from a
    /// replica that is not this replica's leader in its current term.
    #[error("MsgTimeoutNow from replica {from}, which is not the current leader ({leader})")]
    TimeoutNowNotFromLeader {
        /// The sender.
        from: u64,
        /// The leader this replica follows (0: none).
        leader: u64,
    },
    /// A leadership transfer announcement
    /// ([`TRANSFER_ANNOUNCED`](super::TRANSFER_ANNOUNCED)) from a replica that
    /// is not this replica's leader in its current term.
    #[error("a leadership transfer announced by replica {from}, which is not the current leader ({leader})")]
    AnnouncementNotFromLeader {
        /// The sender.
        from: u64,
        /// The leader this replica follows (0: none).
        leader: u64,
    },
    /// A leadership transfer announcement whose transferee is not the 8
    /// bytes of a replica id.
    #[error("a leadership transfer announcement names its transferee in {bytes} bytes, not 8")]
    AnnouncementMalformed {
        /// The bytes after the marker.
        bytes: usize,
    },
    /// A `MsgTimeoutNow` while this replica restores a snapshot off its
    /// thread: it could lead but apply nothing until the restore is done, so
    /// it does not take leadership (the transfer aborts).
    #[error("MsgTimeoutNow while restoring the snapshot at {index}; transfer leadership once it is restored")]
    TimeoutNowWhileRestoring {
        /// The index of the snapshot being restored.
        index: u64,
    },
    /// A peer asks for leadership (a `MsgTransferLeader` without a
    /// vaultfleet marker, as raft-rs forwards one). Refused from every peer:
    /// raft-rs starts a transfer for any voter that asks, and the transferee
    /// the leader then announces may depose it with a forced vote
    /// ([`TRANSFER_ANNOUNCED`](super::TRANSFER_ANNOUNCED)), so one hostile
    /// voter would lead at will every term; and every proposal is dropped
    /// while a transfer is in progress (review 5 of the announced transfers).
    /// Only the leader starts transfers: the operator's, rebalancing's and a
    /// hand-over, all on the leader ([`Replica::transfer_leader`](super::Replica::transfer_leader)
    /// is ignored elsewhere).
    #[error("replica {from} asks for leadership; replicas never hand leadership over on a peer's request (an operator transfers it through the leader)")]
    TransferAskRefused {
        /// The replica asking.
        from: u64,
    },
    /// A transfer declined ([`TRANSFER_DECLINED`](super::TRANSFER_DECLINED))
    /// that does not match this replica's transfer in progress: it is not the
    /// leader of `term`, it is not transferring to `from`, or the decline
    /// does not echo the number of that transfer's `MsgTimeoutNow` (it
    /// declines an earlier transfer to the same replica, or comes from a
    /// build that does not echo it).
    #[error("replica {from} declines a leadership transfer (term {term}, number {number}) that is not the one this replica has in progress; ignored")]
    StaleTransferDecline {
        /// The replica that declined.
        from: u64,
        /// The decline's term.
        term: u64,
        /// The transfer number the decline echoes (0: none).
        number: u64,
    },
    /// A follower asks for a snapshot; replicas of this fleet never do.
    #[error("it requests a snapshot at index {index}; replicas of this fleet never do")]
    SnapshotRequested {
        /// The requested index.
        index: u64,
    },
    /// An append, heartbeat or snapshot at the current term from a replica
    /// other than that term's leader.
    #[error("it acts as leader of term {term}, whose leader is replica {leader}")]
    SecondLeader {
        /// The term.
        term: u64,
        /// The leader this replica knows for it.
        leader: ReplicaId,
    },
    /// An append anchored on an entry without a term (index above 0 with log
    /// term 0, which matches any index beyond the log), or on a log term above
    /// the message's term.
    #[error("append anchored at index {index} with log term {log_term} (message term {term})")]
    AnchorTerm {
        /// The anchor index.
        index: u64,
        /// The anchor's log term.
        log_term: u64,
        /// The message's term.
        term: u64,
    },
    /// An append whose entries do not follow its anchor one by one.
    #[error("entry {position} of the append has index {found}, expected {expected}")]
    EntriesNotConsecutive {
        /// Position of the entry in the message.
        position: usize,
        /// The index it must have.
        expected: u64,
        /// The index it has.
        found: u64,
    },
    /// An appended entry whose term is 0, below the term before it, or above
    /// the message's term.
    #[error("entry {index} has term {term}, outside [{min}, {max}]")]
    EntryTerm {
        /// The entry's index.
        index: u64,
        /// Its term.
        term: u64,
        /// The lowest term it may have.
        min: u64,
        /// The highest term it may have.
        max: u64,
    },
    /// An appended membership change that would stop the replica once
    /// committed, because it does not decode.
    #[error("entry {index} is a membership change that does not decode: {source}")]
    EntryMalformed {
        /// The entry's index.
        index: u64,
        /// What does not decode.
        #[source]
        source: CorruptEntry,
    },
    /// A heartbeat commit index beyond this replica's log.
    #[error("commit index {commit} is beyond the last log index {last_index}")]
    CommitBeyondLog {
        /// The commit index sent.
        commit: u64,
        /// This replica's last index.
        last_index: u64,
    },
    /// An append acknowledgement beyond the leader's own log.
    #[error("it acknowledges index {index}, beyond the leader's last index {last_index}")]
    AckBeyondLog {
        /// The acknowledged index.
        index: u64,
        /// The leader's last index.
        last_index: u64,
    },
    /// A snapshot at index 0, of term 0, or of a term above the message's.
    #[error("snapshot at index {index} of term {term} in a message of term {message_term}")]
    SnapshotMetadata {
        /// The snapshot's index.
        index: u64,
        /// Its term.
        term: u64,
        /// The message's term.
        message_term: u64,
    },
    /// A snapshot more than [`INDEX_JUMP_MAX`](super::INDEX_JUMP_MAX) beyond
    /// this replica's last index.
    #[error(
        "snapshot at index {index} is more than {} beyond the last index {last_index}",
        super::INDEX_JUMP_MAX
    )]
    SnapshotIndexJump {
        /// The snapshot's index.
        index: u64,
        /// This replica's last index.
        last_index: u64,
    },
    /// A snapshot at this replica's commit index with another term than the
    /// committed entry's.
    #[error(
        "snapshot at committed index {index} has term {term}, the committed entry {committed_term}"
    )]
    SnapshotConflictsWithCommit {
        /// The snapshot's (and the commit) index.
        index: u64,
        /// The snapshot's term.
        term: u64,
        /// The committed entry's term.
        committed_term: u64,
    },
    /// A snapshot whose membership raft-rs cannot restore.
    #[error("snapshot membership: {defect}")]
    SnapshotConfState {
        /// What is wrong with it.
        #[source]
        defect: ConfStateDefect,
    },
    /// A snapshot whose payload this replica could not install.
    #[error("snapshot payload: {source}")]
    SnapshotPayload {
        /// Why.
        #[source]
        source: SnapshotError,
    },
    /// A streamed snapshot whose file this replica does not hold complete
    /// (the transport did not receive it, or it failed its checks).
    #[error("streamed snapshot at index {index}: its file was not received here")]
    SnapshotNotReceived {
        /// The snapshot's index.
        index: u64,
    },
}

/// What is wrong with a snapshot's membership.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfStateDefect {
    /// It names no voter.
    #[error("no voters")]
    NoVoters,
    /// It names replica 0.
    #[error("it names replica 0")]
    ZeroId,
    /// It names a replica twice.
    #[error("it names replica {id} twice")]
    Duplicate {
        /// The replica.
        id: ReplicaId,
    },
    /// A joint configuration; this fleet changes membership one step at a time.
    #[error("a joint configuration; this fleet never enters one")]
    Joint,
    /// More members than [`MEMBERS_MAX`](crate::config::MEMBERS_MAX).
    #[error("{count} members exceed the limit of {}", crate::config::MEMBERS_MAX)]
    TooMany {
        /// How many it names.
        count: usize,
    },
}
