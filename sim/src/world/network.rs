//! The network between the replicas: per-link latency drawn once from the
//! topology, drops, duplicates, jitter and delay spikes, and partitions (a
//! datacenter cut off, a random split, one-way links) until healed.
//!
//! A streamed snapshot (its sender's [`Replica::snapshot_body`] gives a file)
//! travels as its chunks: read from the sender's files when sent, put into
//! the receiver's files (checked there) when they arrive, and only then is
//! the message delivered, as the engine's transports do. The transfer fails
//! as a message does (dropped, link cut, receiver down) or when the receiver
//! refuses the file; the sender then hears of a snapshot failure.
//!
//! [`Replica::snapshot_body`]: vaultfleet::Replica::snapshot_body

use std::collections::BTreeMap;

use raft::eraftpb::MessageType;
use raft::prelude::Message;
use raft::SnapshotStatus;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use vaultfleet::bytes::Bytes;
use vaultfleet::snapshot::SnapshotDescriptor;

use super::events::Event;
use super::{Phase, Simulation};
use crate::options::SimOptions;
use crate::workload::Workload;

#[derive(Clone, Copy, Debug)]
pub(super) enum Partition {
    None,
    Active,
}

/// The base latency of every link, in µs: one per datacenter pair, plus a little
/// spread per link. Draws from `rng` in a fixed order.
pub(super) fn base_latency(
    opts: &SimOptions,
    rng: &mut ChaCha8Rng,
    n: usize,
    dcs: usize,
) -> Vec<Vec<u64>> {
    let mut pair_latency = BTreeMap::new();
    for a in 0..dcs {
        for b in a..dcs {
            let (lo, hi) = if a == b {
                opts.intra_dc_us
            } else {
                opts.inter_dc_us
            };
            pair_latency.insert((a, b), rng.gen_range(lo..=hi.max(lo)));
        }
    }
    let dc_latency = |a: usize, b: usize| pair_latency[&(a.min(b), a.max(b))];
    (0..n)
        .map(|a| {
            (0..n)
                .map(|b| dc_latency(a % dcs, b % dcs) + rng.gen_range(0..50))
                .collect()
        })
        .collect()
}

/// Simulated rate of a streamed snapshot's transfer, in bytes per µs (100 MB/s).
const STREAM_BYTES_PER_US: u64 = 100;

/// A snapshot file's chunks, in order, with their sequence numbers.
type Chunks = Vec<(u32, Bytes)>;

/// A streamed snapshot on its way: the message and its file's chunks.
#[derive(Clone)]
pub(super) struct Stream {
    pub(super) message: Message,
    pub(super) descriptor: SnapshotDescriptor,
    pub(super) chunks: Chunks,
}

impl<W: Workload> Simulation<W> {
    pub(super) fn link_delay(&mut self, from: usize, to: usize) -> Option<u64> {
        let base = self.base_latency[from][to];
        let f = &self.opts.faults;
        let (jitter, spike, drop) = (f.jitter, f.delay_spike, f.drop);
        let healed = self.phase != Phase::Safety && self.opts.heal_for_liveness;
        if !healed && drop > 0.0 && self.rng.gen_bool(drop) {
            return None;
        }
        let mut d = base;
        if jitter > 0.0 {
            d += self
                .rng
                .gen_range(0..=((base as f64 * jitter) as u64).max(1));
        }
        if !healed && spike > 0.0 && self.rng.gen_bool(spike) {
            d += self.rng.gen_range(100_000..1_000_000);
        }
        Some(d)
    }

    pub(super) fn send(&mut self, from: usize, message: Message) {
        self.stats.messages += 1;
        // Counted as sent, whether it arrives or not: raft-rs counts a
        // transfer as asked once it sent its `MsgTimeoutNow` (the placement
        // checker).
        self.prefer.count_transfer_message(&message);
        let Some(to) = (message.to as usize)
            .checked_sub(1)
            .filter(|t| *t < self.hosts.len())
        else {
            return;
        };
        let is_snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
        let snap_index = message.get_snapshot().get_metadata().index;
        let vote_granted =
            message.get_msg_type() == MessageType::MsgRequestVoteResponse && !message.reject;
        let p = self.opts.faults.crash_after_vote;
        if vote_granted && self.phase == Phase::Safety && p > 0.0 && self.rng.gen_bool(p) {
            // The vote leaves; the voter dies right behind it.
            self.crash_next.push(from);
        }
        if self.blocked.contains(&(from, to)) {
            if let Some(r) = self.hosts[from].replica.as_mut() {
                r.report_unreachable(message.to);
                if is_snapshot {
                    r.report_snapshot(message.to, snap_index, SnapshotStatus::Failure);
                }
            }
            return;
        }
        let Some(delay) = self.link_delay(from, to) else {
            if is_snapshot {
                if let Some(r) = self.hosts[from].replica.as_mut() {
                    r.report_snapshot(message.to, snap_index, SnapshotStatus::Failure);
                }
            }
            return;
        };
        if is_snapshot {
            match self.read_stream(from, &message) {
                Ok(None) => {}
                Ok(Some((descriptor, chunks))) => {
                    let transfer = descriptor.total_bytes / STREAM_BYTES_PER_US;
                    let stream = Stream {
                        message,
                        descriptor,
                        chunks,
                    };
                    return self.schedule(
                        delay + transfer,
                        Event::DeliverStream {
                            to,
                            stream: Box::new(stream),
                        },
                    );
                }
                Err(why) => {
                    self.stats.streamed_failures += 1;
                    let id = self.hosts[from].id;
                    self.note(|| format!("replica {id} cannot send its snapshot: {why}"));
                    if let Some(r) = self.hosts[from].replica.as_mut() {
                        r.report_unreachable(message.to);
                        r.report_snapshot(message.to, snap_index, SnapshotStatus::Failure);
                    }
                    return;
                }
            }
        }
        let dup = self.opts.faults.duplicate;
        if self.phase == Phase::Safety && dup > 0.0 && self.rng.gen_bool(dup) {
            let again = delay + self.rng.gen_range(0..20_000);
            // A second copy of a `MsgTimeoutNow` can draw a second decline
            // (the checker counts its number once).
            self.prefer.count_transfer_message(&message);
            self.schedule(
                again,
                Event::Deliver {
                    to,
                    message: Box::new(message.clone()),
                },
            );
        }
        self.schedule(
            delay,
            Event::Deliver {
                to,
                message: Box::new(message),
            },
        );
    }

    /// A message arrives at host `to` (lost if its replica is down).
    pub(super) fn deliver(&mut self, to: usize, message: Message) {
        let from = message.from;
        let is_snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
        let snap_index = message.get_snapshot().get_metadata().index;
        if self.hosts[to].replica.is_none() {
            if is_snapshot {
                self.report_snapshot(from, to, snap_index, SnapshotStatus::Failure);
            }
            return;
        }
        let ack = message.get_msg_type() == MessageType::MsgAppendResponse;
        if ack {
            self.note_ack(to, &message);
        }
        let Some(r) = self.hosts[to].replica.as_mut() else {
            return;
        };
        let _ = r.step(message);
        if is_snapshot {
            self.report_snapshot(from, to, snap_index, SnapshotStatus::Finish);
        }
        self.pump(to);
    }

    /// The chunks of the file a snapshot message from host `from` names, if
    /// it is a streamed one (`None`: an inline snapshot, sent whole).
    fn read_stream(
        &self,
        from: usize,
        message: &Message,
    ) -> Result<Option<(SnapshotDescriptor, Chunks)>, String> {
        let Some(r) = self.hosts[from].replica.as_ref() else {
            return Ok(None);
        };
        let Some(mut body) = r
            .snapshot_body(message.get_snapshot())
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let descriptor = body.descriptor().clone();
        let mut chunks = Vec::new();
        while let Some(chunk) = body.next_chunk().map_err(|e| e.to_string())? {
            chunks.push(chunk);
        }
        Ok(Some((descriptor, chunks)))
    }

    /// A streamed snapshot's chunks reach host `to`: into its files, then
    /// the message is delivered; a failure reaches the sender as a snapshot
    /// failure.
    pub(super) fn deliver_stream(&mut self, to: usize, stream: Stream) {
        let Stream {
            message,
            descriptor,
            chunks,
        } = stream;
        let from = message.from;
        let cut = (from as usize)
            .checked_sub(1)
            .is_some_and(|f| self.blocked.contains(&(f, to)));
        let files = self.hosts[to]
            .replica
            .as_ref()
            .and_then(|r| r.snapshot_files());
        let received = match files {
            _ if cut => Err("the link was cut during the transfer".to_string()),
            None => Err("the receiver is down or keeps no snapshot files".to_string()),
            Some(files) => files
                .receive(&descriptor)
                .and_then(|mut receiver| {
                    for (seq, chunk) in &chunks {
                        receiver.put(*seq, chunk)?;
                    }
                    receiver.finish()
                })
                .map_err(|e| e.to_string()),
        };
        if let Err(why) = received {
            self.stats.streamed_failures += 1;
            let id = self.hosts[to].id;
            let index = descriptor.index;
            self.note(|| format!("streamed snapshot at {index} from {from} to {id} failed: {why}"));
            self.report_snapshot(from, to, descriptor.index, SnapshotStatus::Failure);
            return;
        }
        self.stats.streamed_installs += 1;
        self.deliver(to, message);
    }

    pub(super) fn report_snapshot(
        &mut self,
        from: u64,
        to: usize,
        index: u64,
        status: SnapshotStatus,
    ) {
        if let Some(h) = (from as usize).checked_sub(1) {
            if let Some(r) = self.hosts.get_mut(h).and_then(|h| h.replica.as_mut()) {
                r.report_snapshot(to as u64 + 1, index, status);
            }
        }
    }

    pub(super) fn start_partition(&mut self) {
        let n = self.hosts.len();
        self.blocked.clear();
        let kind = self.rng.gen_range(0..3);
        match kind {
            0 => {
                // A whole datacenter cut off.
                let dcs = self.opts.datacenters.clamp(1, n);
                let dc = self.rng.gen_range(0..dcs);
                for a in 0..n {
                    for b in 0..n {
                        if (self.hosts[a].dc == dc) != (self.hosts[b].dc == dc) {
                            self.blocked.insert((a, b));
                        }
                    }
                }
                self.note(|| format!("partition: dc-{dc} cut off"));
            }
            1 => {
                // A random split.
                let side: Vec<bool> = (0..n).map(|_| self.rng.gen_bool(0.5)).collect();
                for a in 0..n {
                    for b in 0..n {
                        if side[a] != side[b] {
                            self.blocked.insert((a, b));
                        }
                    }
                }
                self.note(|| format!("partition: random split {side:?}"));
            }
            _ => {
                // Asymmetric: some links work one way only.
                for _ in 0..self.rng.gen_range(1..=n) {
                    let a = self.rng.gen_range(0..n);
                    let b = self.rng.gen_range(0..n);
                    if a != b {
                        self.blocked.insert((a, b));
                    }
                }
                let links = self.blocked.len();
                self.note(|| format!("partition: {links} one-way links cut"));
            }
        }
        self.partition = Partition::Active;
        self.stats.partitions += 1;
    }

    pub(super) fn heal(&mut self) {
        if !self.blocked.is_empty() {
            self.note(|| "partition healed".to_string());
        }
        self.blocked.clear();
        self.partition = Partition::None;
    }
}
