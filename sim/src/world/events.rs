//! The events of the one queue, ordered by virtual time then by scheduling
//! order; the hash of each into the run's trace; and their dispatch.

use std::cmp::Ordering as CmpOrdering;

use raft::prelude::Message;
use sha2::Digest;
use vaultfleet::replica::{Reply, SnapshotBuildError};
use vaultfleet::snapshot::SnapshotDescriptor;
use vaultfleet::RequestError;

use super::clients::ClientRequest;
use super::hosts::fnv;
use super::network::Stream;
use super::Simulation;
use crate::workload::Workload;

/// One thing that happens at a point of virtual time.
pub(super) enum Event {
    Tick {
        host: usize,
        generation: u64,
    },
    Deliver {
        to: usize,
        message: Box<Message>,
    },
    ClientArrive {
        host: usize,
        client: usize,
        op: u64,
        request: ClientRequest,
    },
    ClientReply {
        client: usize,
        op: u64,
        result: Result<Reply, RequestError>,
    },
    /// A client's timer: start the next operation, or (for the current one)
    /// resend to the chosen replica after a back-off (`resend`), or give up on
    /// that replica after an attempt timed out (pick another).
    ClientWake {
        client: usize,
        op: u64,
        attempt: u64,
        resend: bool,
    },
    Chaos,
    Restart {
        host: usize,
    },
    HsmBack {
        host: usize,
    },
    Heal,
    StartLiveness,
    Poll,
    /// The next step of the operator's rolling restart (a new preference).
    Rollout,
    /// A streamed snapshot's build is done (for this generation of the
    /// host's replica).
    SnapshotBuilt {
        host: usize,
        generation: u64,
        index: u64,
        result: Box<Result<SnapshotDescriptor, SnapshotBuildError>>,
    },
    /// A streamed snapshot's restore is done (for this generation of the
    /// host's replica).
    SnapshotRestored {
        host: usize,
        generation: u64,
        restored: Box<vaultfleet::replica::RestoredSnapshot>,
    },
    /// The replica's next turn: it takes the restores that finished, then
    /// runs its Ready cycles (after a restore finished, or after a turn that
    /// stopped with a restore's backlog left).
    Turn {
        host: usize,
        generation: u64,
    },
    /// A streamed snapshot's chunks reach host `to`: they go into its files,
    /// then the message is delivered.
    DeliverStream {
        to: usize,
        stream: Box<Stream>,
    },
}

/// An event with its time and its place in the scheduling order.
pub(super) struct Scheduled {
    pub(super) at: u64,
    pub(super) seq: u64,
    pub(super) event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed: BinaryHeap is a max-heap, the earliest event must come out first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl<W: Workload> Simulation<W> {
    pub(super) fn hash_event(&mut self, event: &Event) {
        let mut b = [0u8; 41];
        b[..8].copy_from_slice(&self.now.to_be_bytes());
        let (tag, x, y, z, w) = match event {
            Event::Tick { host, generation } => (1, *host as u64, *generation, 0, 0),
            Event::Deliver { to, message } => (
                2,
                *to as u64,
                message.from << 8 | message.get_msg_type() as u64,
                message.term,
                message.entries.iter().fold(
                    message.index ^ message.commit << 32 ^ message.entries.len() as u64,
                    |h, e| h.rotate_left(5) ^ fnv(&e.data) ^ e.index,
                ),
            ),
            Event::ClientArrive {
                host, client, op, ..
            } => (3, *host as u64, *client as u64, *op, 0),
            Event::ClientReply { client, op, result } => {
                let digest = match result {
                    Ok(Reply::Applied(o)) => fnv(o),
                    Ok(Reply::Read(o)) => fnv(o),
                    Ok(Reply::SessionRegistered(s)) => *s,
                    Ok(Reply::MembershipChanged(_)) => 1,
                    Ok(Reply::StateDigest(d)) => d.index,
                    Err(_) => 0,
                };
                (4, *client as u64, *op, result.is_ok() as u64, digest)
            }
            Event::ClientWake {
                client,
                op,
                attempt,
                resend,
            } => (5, *client as u64, *op, *attempt, *resend as u64),
            Event::Chaos => (6, 0, 0, 0, 0),
            Event::Restart { host } => (7, *host as u64, 0, 0, 0),
            Event::HsmBack { host } => (8, *host as u64, 0, 0, 0),
            Event::Heal => (9, 0, 0, 0, 0),
            Event::StartLiveness => (10, 0, 0, 0, 0),
            Event::Poll => (11, 0, 0, 0, 0),
            Event::Rollout => (12, 0, 0, 0, 0),
            Event::SnapshotBuilt {
                host,
                generation,
                index,
                result,
            } => (
                13,
                *host as u64,
                *generation,
                *index,
                result.as_ref().as_ref().map_or(0, |d| d.total_bytes),
            ),
            Event::SnapshotRestored {
                host,
                generation,
                restored,
            } => (
                15,
                *host as u64,
                *generation,
                restored.index(),
                restored.is_ok() as u64,
            ),
            Event::Turn { host, generation } => (16, *host as u64, *generation, 0, 0),
            Event::DeliverStream { to, stream } => (
                14,
                *to as u64,
                stream.message.from << 8 | stream.message.get_msg_type() as u64,
                stream.message.term,
                stream.descriptor.index ^ stream.descriptor.total_bytes << 24,
            ),
        };
        b[8] = tag;
        b[9..17].copy_from_slice(&x.to_be_bytes());
        b[17..25].copy_from_slice(&y.to_be_bytes());
        b[25..33].copy_from_slice(&z.to_be_bytes());
        b[33..41].copy_from_slice(&w.to_be_bytes());
        self.trace.update(b);
    }

    pub(super) fn handle(&mut self, event: Event) {
        match event {
            Event::Tick { host, generation } => self.on_tick(host, generation),
            Event::Deliver { to, message } => self.deliver(to, *message),
            Event::ClientArrive {
                host,
                client,
                op,
                request,
            } => self.arrive(host, client, op, request),
            Event::ClientReply { client, op, result } => self.reply(client, op, result),
            Event::ClientWake {
                client,
                op,
                attempt,
                resend,
            } => self.wake(client, op, attempt, resend),
            Event::Chaos => self.chaos(),
            Event::Restart { host } => self.on_restart(host),
            Event::HsmBack { host } => self.on_hsm_back(host),
            Event::Heal => self.heal(),
            Event::StartLiveness => self.start_liveness(),
            Event::Poll => self.poll_done(),
            Event::Rollout => self.on_rollout(),
            Event::SnapshotBuilt {
                host,
                generation,
                index,
                result,
            } => self.on_snapshot_built(host, generation, index, *result),
            Event::SnapshotRestored {
                host,
                generation,
                restored,
            } => self.on_snapshot_restored(host, generation, *restored),
            Event::Turn { host, generation } => self.on_turn(host, generation),
            Event::DeliverStream { to, stream } => self.deliver_stream(to, *stream),
        }
    }
}
