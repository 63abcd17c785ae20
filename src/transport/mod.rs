//! The transport seam: how raft messages travel between replicas.
//!
//! A [`Transport`] sends an [`Envelope`] to the replica named by its message's
//! `to` field without blocking; whatever arrives for a replica is handed to that
//! replica's [`Inbox`] (the runtime's mailbox). Every envelope carries a group id,
//! so several raft groups can share one transport.
//!
//! Security: raft-rs decodes messages with protobuf 2, which has a published
//! advisory on untrusted input (RUSTSEC-2024-0437). A network transport must
//! authenticate peers and only hand bytes from authenticated fleet members to
//! [`decode_message`](crate::replica::decode_message).
//!
//! Implementations: [`ChannelNetwork`], in-process crossbeam channels with optional
//! per-link delay and cuts, for tests, examples and benchmarks; and the
//! `vaultfleet-net` crate's TCP + Noise transport, which pins the fleet's keys
//! (`docs/network.md`).

mod channel;

pub use channel::{ChannelNetwork, ChannelTransport};

use std::sync::Arc;

use raft::prelude::Message;

use crate::snapshot::{SnapshotDescriptor, SnapshotFiles, SnapshotReader};
use crate::ReplicaId;

/// A raft message addressed to one replica of one group.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The raft group.
    pub group: u64,
    /// The message; `message.to` is the destination replica.
    pub message: Message,
}

/// Where a transport delivers what arrives for one replica.
pub trait Inbox: Send + Sync {
    /// Hands over an envelope. Must not block; may drop when overloaded (raft
    /// retransmits).
    fn deliver(&self, envelope: Envelope);

    /// Hands over the `MsgSnapshot` of a streamed snapshot whose file was
    /// received whole. Unlike [`Inbox::deliver`] it must not drop the
    /// message silently: the transport tells the sender the snapshot
    /// arrived only on `Ok`, and the sender's raft then sends its next
    /// append past the snapshot. On [`Dropped`] the transport refuses the
    /// stream instead, and raft sends the snapshot again. Must not block.
    /// The default delivers with [`Inbox::deliver`] and says `Ok` (right
    /// for an inbox that never drops).
    fn deliver_snapshot(&self, envelope: Envelope) -> Result<(), Dropped> {
        self.deliver(envelope);
        Ok(())
    }

    /// Where a streamed snapshot for this replica is received before its
    /// message is delivered: the replica's own snapshot files. `None` (the
    /// default) refuses streamed snapshots.
    fn snapshot_files(&self) -> Option<Arc<dyn SnapshotFiles>> {
        None
    }

    /// Admits a streamed snapshot that replica `from` is about to send, before
    /// a byte of it is written: the files to receive it into, or why not. A
    /// transport calls this with the peer it authenticated as `from`. The
    /// default admits whatever [`Inbox::snapshot_files`] can hold; a replica's
    /// inbox checks more (see `NodeHandle`).
    fn admit_snapshot(
        &self,
        from: ReplicaId,
        descriptor: &SnapshotDescriptor,
    ) -> Result<Arc<dyn SnapshotFiles>, StreamRefused> {
        let _ = from;
        descriptor
            .check()
            .map_err(|_| StreamRefused::BadDescriptor)?;
        self.snapshot_files().ok_or(StreamRefused::NoFiles)
    }
}

/// An inbox could not take a streamed snapshot's message (its replica's
/// mailbox is full, or the replica stopped): see [`Inbox::deliver_snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the replica's inbox could not take the snapshot message (full or stopped)")]
pub struct Dropped;

/// Why a replica refused a streamed snapshot before receiving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamRefused {
    /// The replica keeps no snapshot files (its store streams no snapshots).
    #[error("the replica keeps no snapshot files")]
    NoFiles,
    /// The descriptor breaks its own rules.
    #[error("the snapshot descriptor is malformed")]
    BadDescriptor,
    /// The descriptor is for another group.
    #[error("the snapshot is for group {found}, the replica is in group {group}")]
    WrongGroup {
        /// The descriptor's group.
        found: u64,
        /// The replica's.
        group: u64,
    },
    /// The sender is not the leader the replica follows.
    #[error("replica {from} is not the leader this replica follows ({leader:?})")]
    NotLeader {
        /// The sender.
        from: ReplicaId,
        /// The leader known, if any.
        leader: Option<ReplicaId>,
    },
    /// The snapshot is of a term past the replica's.
    #[error("the snapshot's term {term} is past the replica's term {current}")]
    FutureTerm {
        /// The snapshot's term.
        term: u64,
        /// The replica's.
        current: u64,
    },
    /// The snapshot would not move the replica forward: raft installs only
    /// snapshots past its commit index.
    #[error("the snapshot at index {index} is not past the replica's commit index {commit}")]
    Stale {
        /// The snapshot's index.
        index: u64,
        /// The replica's commit index.
        commit: u64,
    },
    /// The snapshot's index is implausibly far past the replica's log.
    #[error("the snapshot at index {index} is more than {jump_max} past the replica's last index {last}")]
    TooFar {
        /// The snapshot's index.
        index: u64,
        /// The replica's last index.
        last: u64,
        /// The largest jump allowed.
        jump_max: u64,
    },
}

/// A send that could not be attempted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No route to this replica is known.
    #[error("no route to replica {0}; register it with the transport")]
    UnknownPeer(ReplicaId),
    /// The peer is known but cannot be reached now.
    #[error("replica {0} is unreachable")]
    Unreachable(ReplicaId),
    /// The transport was shut down.
    #[error("transport is shut down")]
    Closed,
    /// The transport cannot carry streamed snapshots (see
    /// [`Transport::send_snapshot_stream`]).
    #[error("this transport cannot send a streamed snapshot to replica {0}; use one that streams snapshot files, or keep snapshots inline")]
    StreamUnsupported(ReplicaId),
    /// The message is larger than one transport frame may be (a network transport
    /// bounds its frames; a snapshot must then travel in chunks). The caller
    /// treats it like an unreachable peer; raft retries later.
    #[error(
        "a message of {bytes} bytes for replica {to} is above the frame limit of {bytes_max} bytes"
    )]
    TooLarge {
        /// The destination replica.
        to: ReplicaId,
        /// The encoded message's size.
        bytes: usize,
        /// The transport's frame limit.
        bytes_max: usize,
    },
}

/// How the send of a snapshot message ended, as its transport reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotSent {
    /// Every byte was handed to the peer's connection (written out); for a
    /// streamed snapshot, the receiver also checked the file and delivered
    /// the message to its replica, so raft's next append (sent on hearing
    /// this) cannot overtake it.
    Written,
    /// The send failed (connection lost, peer gone, refused): raft sends again.
    Failed,
}

/// Called once, from any thread, when a snapshot's send has ended. It must not
/// block (the node's implementation hands the outcome to its own thread).
pub type SnapshotDone = Box<dyn FnOnce(SnapshotSent) + Send>;

/// Sends raft messages to peers, without blocking.
pub trait Transport: Send + Sync + 'static {
    /// Queues `envelope` for `envelope.message.to`. Delivery is not guaranteed
    /// (raft tolerates loss); an error means the send was not even attempted, and
    /// the caller reports the peer unreachable to raft.
    fn send(&self, envelope: Envelope) -> Result<(), TransportError>;

    /// Queues a snapshot message and reports through `done` when it has been
    /// written out or has failed: raft holds back a peer it sent a snapshot to
    /// until it hears which, so a transport that sends in the background (in
    /// chunks, say) reports at the end, not when it queued. An `Err` means
    /// nothing was queued and `done` is never called (the caller reports the
    /// failure). The default sends with [`Transport::send`] and reports
    /// `Written` at once, which is right for a transport that delivers whole
    /// messages in the call.
    fn send_snapshot(&self, envelope: Envelope, done: SnapshotDone) -> Result<(), TransportError> {
        self.send(envelope)?;
        done(SnapshotSent::Written);
        Ok(())
    }

    /// Sends a streamed snapshot: the chunks of `body` into the receiver's
    /// snapshot files (checked there against the descriptor's digest and made
    /// durable), then the snapshot message, which names the file by its
    /// descriptor. Reports `Written` through `done` only once the receiver
    /// delivered the message (not when the last byte left): the next append
    /// raft sends on hearing it must not reach the receiver first. The
    /// default refuses ([`TransportError::StreamUnsupported`]):
    /// a transport must carry the chunks to take a fleet with streamed
    /// snapshots.
    fn send_snapshot_stream(
        &self,
        envelope: Envelope,
        body: Box<dyn SnapshotReader>,
        done: SnapshotDone,
    ) -> Result<(), TransportError> {
        let _ = (body, done);
        Err(TransportError::StreamUnsupported(envelope.message.to))
    }
}
