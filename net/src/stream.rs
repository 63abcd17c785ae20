//! Streamed snapshots over a connection (`wire::frame` kinds 6 to 9).
//!
//! **Sender.** [`NetTransport::try_send_snapshot_stream`](crate::NetTransport)
//! makes an [`OutStream`]: the open frame (the file's descriptor and the small
//! `MsgSnapshot` naming it), and a channel fed by a thread of its own that
//! reads the file's chunks ([`SnapshotReader`]) off the async reactor. The
//! channel holds one chunk, the thread at most one more, and the connection's
//! writer one it is cutting into data frames: at most three chunks of a
//! transfer are in memory. The writer sends one data frame (at most
//! `snapshot_chunk_bytes`) per turn of its loop and serves queued raft frames
//! first, so a heartbeat waits behind at most one data frame. `done` hears
//! `Written` once the end frame was written, `Failed` if the file cannot be
//! read, the connection fails, the link closes or the receiver refuses.
//!
//! **Receiver.** [`InStreams`] keeps the streams being received on one
//! connection. An open frame passes the raft header checks (the sender is
//! pinned to the authenticated key, `to` and the group are hosted here), its
//! descriptor must decode and pass its own checks, name the frame's group and
//! stay within `snapshot_file_bytes_max`, its message must be a `MsgSnapshot`
//! from and to the header's replicas at the descriptor's index and term, the
//! process must receive fewer than `snapshot_streams_max` streams, and the
//! inbox must admit it (`Inbox::admit_snapshot`: it has snapshot files, and
//! the replica's own checks on the sender and the snapshot). Data frames must continue chunk `seq` in
//! order, never beyond its length; a chunk goes to the files' receiver once
//! whole (so one chunk at a time is in memory). The end frame must follow the
//! last chunk; the files then check the digest and make the file durable, and
//! only then is the message delivered. Any failure refuses the stream: its
//! receiver is dropped (the partial file deleted), nothing is delivered, and a
//! refused frame goes back to the sender. File work runs on tokio's blocking
//! pool, never on the reactor.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use raft::prelude::{Message, MessageType};
use tokio::sync::mpsc;
use tokio::time::Instant;
use vaultfleet::codec::Codec as _;
use vaultfleet::replica::decode_message;
use vaultfleet::snapshot::{ChunkReceiver, SnapshotDescriptor, SnapshotReader};
use vaultfleet::transport::{Envelope, Inbox, SnapshotDone, SnapshotSent, StreamRefused};

use crate::keys::PublicKey;
use crate::stats::Counters;
use crate::transport::Shared;
use crate::wire::frame::{
    encode_stream_data, encode_stream_end, StreamHeader, STREAM_DATA_HEADER_BYTES,
};

/// Streams remembered per connection as refused, so their later frames are
/// ignored rather than refused again.
const REFUSED_REMEMBERED_MAX: usize = 64;

/// What the reader thread of an outgoing stream hands the writer.
pub(crate) enum Piece {
    /// Chunk `seq` of the file.
    Chunk(u32, Bytes),
    /// Every chunk was read and the digest matched.
    End,
    /// The file could not be read (or did not match its digest).
    Failed,
}

/// A streamed snapshot on its way out.
pub(crate) struct OutStream {
    /// Group, from, to and the stream id.
    pub header: StreamHeader,
    /// The open frame, length prefix included.
    pub open: Bytes,
    /// The chunks, read by the stream's thread.
    pub pieces: mpsc::Receiver<Piece>,
    /// Called once with the outcome.
    pub done: Option<SnapshotDone>,
}

impl OutStream {
    /// Reports the outcome (once).
    pub fn finish(&mut self, sent: SnapshotSent) {
        if let Some(done) = self.done.take() {
            done(sent);
        }
    }
}

impl Drop for OutStream {
    fn drop(&mut self) {
        // Dropped without a report (a task cancelled mid-write): raft must
        // still hear, or it holds the follower back.
        self.finish(SnapshotSent::Failed);
    }
}

impl std::fmt::Debug for OutStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutStream")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// Starts the thread that reads `body`'s chunks into `tx`, one ahead of the
/// writer; it stops when the stream is dropped (the channel closes).
pub(crate) fn spawn_reader(
    mut body: Box<dyn SnapshotReader>,
    tx: mpsc::Sender<Piece>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("vf-net-snap-read".into())
        .spawn(move || loop {
            let piece = match body.next_chunk() {
                Ok(Some((seq, chunk))) => Piece::Chunk(seq, chunk),
                Ok(None) => Piece::End,
                Err(e) => {
                    tracing::warn!(error = %e, "a streamed snapshot could not be read");
                    Piece::Failed
                }
            };
            let last = !matches!(piece, Piece::Chunk(..));
            if tx.blocking_send(piece).is_err() || last {
                return;
            }
        })
        .map(|_| ())
}

/// The stream a connection's writer is sending: what it wrote so far.
pub(crate) struct ActiveStream {
    /// The stream.
    pub out: OutStream,
    opened: bool,
    /// The chunk being cut into data frames and how much of it was sent.
    part: Option<(u32, Bytes, usize)>,
}

/// What the writer's stream branch found.
pub(crate) enum StreamEvent {
    /// A frame can be written ([`ActiveStream::next_frame`]).
    Ready,
    /// The reader reached the end: write the end frame.
    End,
    /// The reader failed.
    Failed,
}

impl ActiveStream {
    /// A stream nothing of which was written yet.
    pub fn new(out: OutStream) -> Self {
        Self {
            out,
            opened: false,
            part: None,
        }
    }

    /// Waits until the stream has a frame to write, its end, or its failure.
    /// Cancel-safe (a chunk received is kept in `self`).
    pub async fn ready(&mut self) -> StreamEvent {
        if !self.opened || self.part.is_some() {
            return StreamEvent::Ready;
        }
        match self.out.pieces.recv().await {
            Some(Piece::Chunk(seq, bytes)) if !bytes.is_empty() => {
                self.part = Some((seq, bytes, 0));
                StreamEvent::Ready
            }
            Some(Piece::End) => StreamEvent::End,
            Some(Piece::Chunk(..) | Piece::Failed) | None => StreamEvent::Failed,
        }
    }

    /// The next frame once [`ActiveStream::ready`] said `Ready`: the open
    /// frame, then the data frames of each chunk, each at most `part_bytes`
    /// of data. Returns the frame and the file bytes it carries.
    pub fn next_frame(&mut self, part_bytes: usize) -> Option<(Bytes, usize)> {
        if !self.opened {
            self.opened = true;
            return Some((self.out.open.clone(), 0));
        }
        let (seq, chunk, sent) = self.part.as_mut()?;
        let end = chunk.len().min(*sent + part_bytes.max(1));
        let frame = encode_stream_data(self.out.header, *seq, &chunk[*sent..end]);
        let n = end - *sent;
        *sent = end;
        if *sent >= chunk.len() {
            self.part = None;
        }
        Some((frame, n))
    }

    /// The end frame.
    pub fn end_frame(&self) -> Bytes {
        encode_stream_end(self.out.header)
    }
}

/// The data bytes one stream data frame may carry under `send_limit`.
pub(crate) fn part_bytes(snapshot_chunk_bytes: usize, send_limit: usize) -> usize {
    snapshot_chunk_bytes
        .min(send_limit.saturating_sub(STREAM_DATA_HEADER_BYTES))
        .max(1)
}

/// One slot of `snapshot_streams_max`, given back when dropped. A peer holds
/// at most half the slots (at least one), across its connections.
struct Slot {
    shared: Arc<Shared>,
    peer: PublicKey,
}

impl Slot {
    fn take(shared: &Arc<Shared>, peer: PublicKey) -> Option<Self> {
        let max = shared.config.snapshot_streams_max;
        let per_peer = (max / 2).max(1);
        let mut by_peer = shared.streams_by_peer.lock();
        let held = by_peer.get(&peer).copied().unwrap_or(0);
        if held >= per_peer {
            return None;
        }
        shared
            .streams_receiving
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        by_peer.insert(peer, held + 1);
        Some(Self {
            shared: Arc::clone(shared),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.streams_receiving.fetch_sub(1, Ordering::AcqRel);
        let mut by_peer = self.shared.streams_by_peer.lock();
        if let Some(held) = by_peer.get_mut(&self.peer) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                by_peer.remove(&self.peer);
            }
        }
    }
}

struct InStream {
    header: StreamHeader,
    inbox: Arc<dyn Inbox>,
    message: Message,
    descriptor: SnapshotDescriptor,
    /// `None` only while a file operation runs on the blocking pool.
    receiver: Option<Box<dyn ChunkReceiver>>,
    next_seq: u32,
    chunk: Vec<u8>,
    last_frame: Instant,
    _slot: Slot,
}

impl Drop for InStream {
    /// A partial file's receiver deletes it when dropped, which can take long
    /// for a large one: never on the reactor's thread.
    fn drop(&mut self) {
        if let Some(receiver) = self.receiver.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn_blocking(move || drop(receiver));
                }
                Err(_) => drop(receiver),
            }
        }
    }
}

/// Why a stream was refused (logged; every refusal is counted in
/// `streams_refused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamRefusal {
    /// The frame header failed the raft header checks.
    Header,
    /// The descriptor does not decode or fails its checks or names another group.
    Descriptor,
    /// The descriptor's size is above `snapshot_file_bytes_max`.
    TooLarge,
    /// The message is not a matching `MsgSnapshot`.
    Message,
    /// `snapshot_streams_max` streams are being received.
    Busy,
    /// The inbox has no snapshot files: this replica does not stream.
    NoFiles,
    /// The replica did not admit it (`Inbox::admit_snapshot`: not its
    /// leader, stale, too far ahead...).
    NotAdmitted,
    /// The stream id is already open on this connection.
    Duplicate,
    /// A frame for a stream not open here.
    Unknown,
    /// A data frame's header differs from its stream's open frame.
    Mismatch,
    /// A data frame not for the next chunk.
    OutOfOrder,
    /// A data frame beyond its chunk's length.
    Oversize,
    /// The end frame came before every chunk.
    EarlyEnd,
    /// The snapshot files refused (a file error, or the digest at the end).
    Files,
}

/// What a receiver asks its connection's writer to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    /// Tell the peer its stream was refused.
    Refuse(u64),
    /// The peer refused our stream.
    PeerRefused(u64),
}

/// The streamed snapshots being received on one connection.
pub(crate) struct InStreams {
    shared: Arc<Shared>,
    key: PublicKey,
    control: mpsc::Sender<Control>,
    streams: BTreeMap<u64, InStream>,
    refused: VecDeque<u64>,
}

impl Drop for InStreams {
    fn drop(&mut self) {
        Counters::add(
            &self.shared.counters.streams_abandoned,
            self.streams.len() as u64,
        );
    }
}

impl InStreams {
    /// No stream yet, on the connection with the peer proving `key`; refusals
    /// go to the writer through `control`.
    pub fn new(shared: Arc<Shared>, key: PublicKey, control: mpsc::Sender<Control>) -> Self {
        Self {
            shared,
            key,
            control,
            streams: BTreeMap::new(),
            refused: VecDeque::new(),
        }
    }

    /// Refuses stream `id`: drops it (deleting its partial file), remembers
    /// the id and tells the peer.
    fn refuse(&mut self, id: u64, why: StreamRefusal) {
        self.streams.remove(&id);
        Counters::bump(&self.shared.counters.streams_refused);
        tracing::debug!(peer = %self.key, stream = id, ?why, "refused a streamed snapshot");
        if self.refused.len() >= REFUSED_REMEMBERED_MAX {
            self.refused.pop_front();
        }
        self.refused.push_back(id);
        // Best effort: a full control channel means the writer is far
        // behind; the sender then times out with its connection.
        let _ = self.control.try_send(Control::Refuse(id));
    }

    fn was_refused(&self, id: u64) -> bool {
        self.refused.contains(&id)
    }

    /// Drops the streams with no frame since `now - snapshot_chunk_timeout`.
    pub fn expire(&mut self, now: Instant) {
        let timeout = self.shared.config.snapshot_chunk_timeout;
        let stale: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.last_frame) >= timeout)
            .map(|(&id, _)| id)
            .collect();
        for id in stale {
            self.streams.remove(&id);
            Counters::bump(&self.shared.counters.streams_abandoned);
        }
    }

    /// The peer refused our stream `id`.
    pub fn peer_refused(&self, id: u64) {
        let _ = self.control.try_send(Control::PeerRefused(id));
    }

    /// An open frame.
    pub async fn open(
        &mut self,
        inbox: Option<Arc<dyn Inbox>>,
        header: StreamHeader,
        descriptor: &[u8],
        message: &[u8],
    ) {
        let id = header.stream;
        if self.streams.contains_key(&id) {
            return self.refuse(id, StreamRefusal::Duplicate);
        }
        let Some(inbox) = inbox else {
            return self.refuse(id, StreamRefusal::Header);
        };
        let descriptor = match SnapshotDescriptor::from_bytes(descriptor) {
            Ok(d) if d.check().is_ok() && d.group == header.raft.group => d,
            _ => return self.refuse(id, StreamRefusal::Descriptor),
        };
        if descriptor.total_bytes > self.shared.config.snapshot_file_bytes_max {
            return self.refuse(id, StreamRefusal::TooLarge);
        }
        let message = match decode_message(message) {
            Ok(m) => m,
            Err(_) => return self.refuse(id, StreamRefusal::Message),
        };
        let metadata = message.get_snapshot().get_metadata();
        if message.get_msg_type() != MessageType::MsgSnapshot
            || message.from != header.raft.from
            || message.to != header.raft.to
            || metadata.index != descriptor.index
            || metadata.term != descriptor.term
            || !names_descriptor(&message, &descriptor)
        {
            return self.refuse(id, StreamRefusal::Message);
        }
        // A new stream for the same replica replaces an unfinished one (the
        // sender gave it up).
        let replaced: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, s)| s.header.raft == header.raft)
            .map(|(&id, _)| id)
            .collect();
        for old in replaced {
            self.streams.remove(&old);
            Counters::bump(&self.shared.counters.streams_abandoned);
        }
        let Some(slot) = Slot::take(&self.shared, self.key) else {
            return self.refuse(id, StreamRefusal::Busy);
        };
        let files = match inbox.admit_snapshot(header.raft.from, &descriptor) {
            Ok(files) => files,
            Err(StreamRefused::NoFiles) => return self.refuse(id, StreamRefusal::NoFiles),
            Err(refused) => {
                tracing::debug!(peer = %self.key, %refused, "the replica did not admit a streamed snapshot");
                return self.refuse(id, StreamRefusal::NotAdmitted);
            }
        };
        let d = descriptor.clone();
        let received = tokio::task::spawn_blocking(move || files.receive(&d)).await;
        let receiver = match received {
            Ok(Ok(receiver)) => receiver,
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.key, error = %e, "snapshot files refused a stream");
                return self.refuse(id, StreamRefusal::Files);
            }
            Err(_) => return self.refuse(id, StreamRefusal::Files),
        };
        let first = descriptor.chunk_len(0).unwrap_or(0);
        self.streams.insert(
            id,
            InStream {
                header,
                inbox,
                message,
                descriptor,
                receiver: Some(receiver),
                next_seq: 0,
                chunk: Vec::with_capacity(first),
                last_frame: Instant::now(),
                _slot: slot,
            },
        );
    }

    /// Looks up stream `header.stream` for a data or end frame; refuses
    /// (once) a frame for a stream not open here.
    fn stream_for(&mut self, header: StreamHeader) -> Option<&mut InStream> {
        let id = header.stream;
        match self.streams.get(&id) {
            None => {
                if !self.was_refused(id) {
                    self.refuse(id, StreamRefusal::Unknown);
                }
                None
            }
            Some(s) if s.header != header => {
                self.refuse(id, StreamRefusal::Mismatch);
                None
            }
            Some(_) => self.streams.get_mut(&id),
        }
    }

    /// A data frame: part of chunk `seq`.
    pub async fn data(&mut self, header: StreamHeader, seq: u32, data: &[u8]) {
        let id = header.stream;
        let c = &self.shared.counters;
        Counters::add(&c.stream_bytes_received, data.len() as u64);
        let Some(stream) = self.stream_for(header) else {
            return;
        };
        if seq != stream.next_seq {
            return self.refuse(id, StreamRefusal::OutOfOrder);
        }
        let Some(len) = stream.descriptor.chunk_len(seq) else {
            return self.refuse(id, StreamRefusal::Oversize);
        };
        if stream.chunk.len() + data.len() > len {
            return self.refuse(id, StreamRefusal::Oversize);
        }
        stream.chunk.extend_from_slice(data);
        // The timeout counts from the last whole chunk, not the last frame:
        // a stream trickling bytes cannot hold its slot (at 1 MiB chunks and
        // 30 s, a floor of about 35 KB/s).
        if stream.chunk.len() < len {
            return;
        }
        let Some(mut receiver) = stream.receiver.take() else {
            return self.refuse(id, StreamRefusal::Files);
        };
        let mut chunk = std::mem::take(&mut stream.chunk);
        let next_len = stream.descriptor.chunk_len(seq + 1).unwrap_or(0);
        let put = tokio::task::spawn_blocking(move || {
            let result = receiver.put(seq, &chunk);
            chunk.clear();
            (receiver, chunk, result)
        })
        .await;
        let Ok((receiver, mut chunk, result)) = put else {
            return self.refuse(id, StreamRefusal::Files);
        };
        if let Err(e) = result {
            tracing::debug!(peer = %self.key, error = %e, "snapshot files refused a chunk");
            return self.refuse(id, StreamRefusal::Files);
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if chunk.capacity() < next_len {
            chunk.reserve_exact(next_len);
        }
        stream.receiver = Some(receiver);
        stream.chunk = chunk;
        stream.next_seq = seq + 1;
        stream.last_frame = Instant::now();
    }

    /// An end frame: the file is checked and made durable, then the message
    /// delivered.
    pub async fn end(&mut self, header: StreamHeader) {
        let id = header.stream;
        let Some(stream) = self.stream_for(header) else {
            return;
        };
        if stream.next_seq != stream.descriptor.chunks || !stream.chunk.is_empty() {
            return self.refuse(id, StreamRefusal::EarlyEnd);
        }
        let Some(mut stream) = self.streams.remove(&id) else {
            return;
        };
        // `stream` (and its slot) lives until the file is finished.
        let header = stream.header;
        let inbox = Arc::clone(&stream.inbox);
        let message = std::mem::take(&mut stream.message);
        let Some(receiver) = stream.receiver.take() else {
            return self.refuse(id, StreamRefusal::Files);
        };
        let finished = tokio::task::spawn_blocking(move || receiver.finish()).await;
        match finished {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.key, error = %e, "a streamed snapshot failed its check at the end");
                return self.refuse(id, StreamRefusal::Files);
            }
            Err(_) => return self.refuse(id, StreamRefusal::Files),
        }
        inbox.deliver(Envelope {
            group: header.raft.group,
            message,
        });
        drop(stream);
        Counters::bump(&self.shared.counters.streams_received);
    }
}

/// True when the snapshot message's format-2 payload names exactly the
/// descriptor streamed with it (not another file the receiver holds).
fn names_descriptor(message: &Message, descriptor: &SnapshotDescriptor) -> bool {
    let payload: Result<vaultfleet::wire::SnapshotPayload, _> =
        vaultfleet::wire::decode(&message.get_snapshot().data, "snapshot payload");
    payload.is_ok_and(|p| {
        SnapshotDescriptor::from_bytes(&p.descriptor).is_ok_and(|d| d == *descriptor)
    })
}
