//! Streamed snapshots over a connection (`wire::frame` kinds 6 to 11).
//!
//! **Sender.** [`NetTransport::try_send_snapshot_stream`](crate::NetTransport)
//! makes an [`OutStream`]: the open frame (the file's descriptor and the small
//! `MsgSnapshot` naming it) and the file's reader. A queued stream holds only
//! that (the reader the engine opened): its thread, which reads the chunks
//! ([`SnapshotReader`]: disk and HSM work) off the async reactor, starts only
//! when the stream becomes the connection's active one ([`ActiveStream::new`]),
//! so streams waiting behind it read nothing ahead. The channel holds one
//! chunk, the thread at most one more, and the connection's writer one it is
//! cutting into data frames: at most three chunks of the active transfer are
//! in memory. The writer sends one data frame (at most `snapshot_chunk_bytes`)
//! per turn of its loop and serves queued raft frames first, so a heartbeat
//! waits behind at most one data frame. It starts a chunk `seq` only while
//! `seq < granted`, the receiver's credit ([`StreamCredits`]); without credit
//! the stream waits (raft frames go on) for at most `snapshot_chunk_timeout`,
//! the bound the receiver applies to the sender, then it fails. Once its end
//! frame is written the stream is no longer the active one (the next queued
//! stream starts at once) but it is not done: it waits in the connection's
//! [`AwaitingDelivery`] (at most [`STREAMS_AWAITING_DELIVERY_MAX`]) for the
//! receiver's delivered frame (kind 11), sent only once the receiver's
//! replica's inbox took the message (`Inbox::deliver_snapshot`; one that
//! cannot take it refuses the stream). `done` hears `Written` then, and only
//! then: the node tells raft the snapshot finished, and raft's next append
//! to the peer (at the snapshot's index + 1, on the same connection) must
//! reach the replica after the snapshot, or the follower rejects it and the
//! leader sends the whole snapshot again. `done` hears `Failed` if the file cannot
//! be read, the connection fails, the link closes, the receiver refuses
//! (before or after the end frame), grants no credit in time, or does not
//! say it delivered within `snapshot_chunk_timeout` of the end frame or of
//! the last credit it granted the stream since ([`AwaitingDelivery`]: the
//! window's last chunks may still be in flight at the end frame). A
//! stream given up after its open frame (unreadable, no credit or no
//! delivered frame in time) is cancelled at the receiver (a kind 9 frame in
//! the sender's direction), which then drops it at once.
//!
//! **Receiver.** [`InStreams`] keeps the streams being received on one
//! connection. An open frame passes the raft header checks (the sender is
//! pinned to the authenticated key, `to` and the group are hosted here), its
//! descriptor must decode and pass its own checks, name the frame's group and
//! stay within `snapshot_file_bytes_max`, its message must be a `MsgSnapshot`
//! from and to the header's replicas at the descriptor's index and term, the
//! process must receive fewer than `snapshot_streams_max` streams, and the
//! inbox must admit it (`Inbox::admit_snapshot`: it has snapshot files, and
//! the replica's own checks on the sender and the snapshot). The stream then
//! gets a **file worker** of its own (a task on tokio's blocking pool) that
//! owns the files' [`ChunkReceiver`](vaultfleet::snapshot::ChunkReceiver):
//! it opens it, grants the sender an
//! initial window of [`STREAM_WINDOW_CHUNKS`] chunks, and one more chunk each
//! time it wrote one. The connection's read loop never awaits file work: it
//! checks each data frame (the next chunk `seq` in order, within the credit,
//! never beyond its length), assembles a chunk and hands it to the worker
//! through a bounded queue without blocking. With the credit honoured, at most
//! `STREAM_WINDOW_CHUNKS` chunks of a stream are in memory (assembling,
//! queued or being written); a sender beyond its credit is refused. The end
//! frame must follow the last chunk; the worker then has the files check the
//! digest and make the file durable, and only then delivers the message and
//! tells the sender (a delivered frame). Any failure refuses the stream: its
//! receiver is dropped on the worker (the partial file deleted), nothing is
//! delivered, and a refused frame with its [`RefusalReason`] goes back to the
//! sender. The read loop and the worker decide a stream's end through one
//! flag: whichever sets it first counts the stream (refused, abandoned,
//! cancelled, received) and answers; the other only stops. The worker
//! delivers only if it decides first and the sender's key is still pinned
//! for its replica (the read loop checked it at the end frame too), so a
//! stream let go (connection ended, cancelled, replaced) is never delivered.
//! Deliveries and the worker's refusals reach the connection's writer
//! through its control channel; the worker waits for room there only for
//! that last word, once it decided the stream's end. Credits never wait:
//! they are coalesced per stream in the connection's [`CreditsToGrant`], so
//! a worker whose stream was let go is never held by a peer that drains
//! its connection slowly. File workers are counted per process (twice
//! `snapshot_streams_max`) and per peer (twice its share of the slots), so
//! one peer's let-go workers cannot take them all.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use raft::prelude::{Message, MessageType};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use vaultfleet::codec::Codec as _;
use vaultfleet::replica::decode_message;
use vaultfleet::snapshot::{SnapshotDescriptor, SnapshotFileError, SnapshotFiles, SnapshotReader};
use vaultfleet::transport::{Envelope, Inbox, SnapshotDone, SnapshotSent, StreamRefused};

use crate::keys::PublicKey;
use crate::stats::Counters;
use crate::transport::Shared;
use crate::wire::frame::{
    encode_stream_data, encode_stream_end, RefusalReason, StreamHeader, STREAM_DATA_HEADER_BYTES,
};

/// Chunks a receiver lets a sender have sent beyond those its file worker
/// wrote: the credit window, and so the most chunks of one received stream in
/// memory.
pub(crate) const STREAM_WINDOW_CHUNKS: u32 = 4;

/// Streams remembered per connection as closed (refused, timed out,
/// cancelled, replaced or finished), so their later frames are ignored
/// rather than refused.
const CLOSED_REMEMBERED_MAX: usize = 64;

/// Credits remembered per connection on the sending side (the newest stream
/// ids; a late credit for a stream already ended is kept until evicted).
const CREDITS_REMEMBERED_MAX: usize = 8;

/// Streams whose end frame a connection wrote and that wait for the
/// receiver's word (delivered or refused), at most. While this many wait the
/// writer starts no new stream (raft frames go on). A receiver gives one
/// peer at most half its `snapshot_streams_max` slots (default 4) anyway.
pub(crate) const STREAMS_AWAITING_DELIVERY_MAX: usize = 4;

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
    /// The file's chunks (its descriptor's count).
    pub chunks: u32,
    /// The file's reader, until the stream becomes active and its thread
    /// takes it.
    body: Option<Box<dyn SnapshotReader>>,
    /// Called once with the outcome.
    pub done: Option<SnapshotDone>,
}

impl OutStream {
    /// A stream to send: `open` is its open frame, `body` its file's reader
    /// (read only once the stream is the connection's active one).
    pub fn new(
        header: StreamHeader,
        open: Bytes,
        body: Box<dyn SnapshotReader>,
        done: SnapshotDone,
    ) -> Self {
        Self {
            header,
            open,
            chunks: body.descriptor().chunks,
            body: Some(body),
            done: Some(done),
        }
    }

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
fn spawn_reader(mut body: Box<dyn SnapshotReader>, tx: mpsc::Sender<Piece>) -> std::io::Result<()> {
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

/// The credits a peer granted the streams this side sends on one connection
/// (filled by the connection's read loop, read by its writer).
#[derive(Debug, Default)]
pub(crate) struct StreamCredits {
    granted: Mutex<BTreeMap<u64, u32>>,
    changed: Notify,
}

impl StreamCredits {
    /// The peer granted `granted` chunks of stream `stream` in all. Credit
    /// never goes down; only the newest streams are remembered.
    pub fn grant(&self, stream: u64, granted: u32) {
        let mut map = self.granted.lock();
        let entry = map.entry(stream).or_insert(0);
        *entry = (*entry).max(granted);
        while map.len() > CREDITS_REMEMBERED_MAX {
            map.pop_first();
        }
        drop(map);
        self.changed.notify_one();
    }

    /// The chunks of `stream` the peer granted so far.
    pub fn granted(&self, stream: u64) -> u32 {
        self.granted.lock().get(&stream).copied().unwrap_or(0)
    }
}

/// The credits this side's file workers grant the peer's streams on one
/// connection, until the writer sends them: the newest total per stream. A
/// worker never waits for the writer to grant credit (the peer controls how
/// fast the writer drains): it records the total here and the writer, woken,
/// sends one credit frame per stream with the newest total. At most one
/// entry per stream with a running worker on the connection.
#[derive(Debug, Default)]
pub(crate) struct CreditsToGrant {
    pending: Mutex<BTreeMap<u64, u32>>,
    changed: Notify,
}

impl CreditsToGrant {
    /// Grant stream `stream` `granted` chunks in all (never lower than a
    /// total recorded and not sent yet). Never waits.
    pub fn grant(&self, stream: u64, granted: u32) {
        let mut pending = self.pending.lock();
        let entry = pending.entry(stream).or_insert(0);
        *entry = (*entry).max(granted);
        drop(pending);
        // Stores a permit if the writer is not waiting now: no grant is
        // missed.
        self.changed.notify_one();
    }

    /// Waits until a grant was recorded since the last wait. Cancel-safe.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Takes the totals recorded since the last take, by stream.
    pub fn take(&self) -> BTreeMap<u64, u32> {
        std::mem::take(&mut *self.pending.lock())
    }
}

/// The stream a connection's writer is sending: what it wrote so far.
pub(crate) struct ActiveStream {
    /// The stream.
    pub out: OutStream,
    /// The reader thread's chunks; `None` if the thread could not start.
    pieces: Option<mpsc::Receiver<Piece>>,
    opened: bool,
    /// The chunk being cut into data frames and how much of it was sent.
    part: Option<(u32, Bytes, usize)>,
    /// The next chunk to take from the reader.
    next_seq: u32,
    credits: Arc<StreamCredits>,
    /// How long the stream waits for credit before it fails.
    credit_timeout: Duration,
    /// Since when it has been waiting for credit.
    waiting_since: Option<Instant>,
}

/// What the writer's stream branch found.
pub(crate) enum StreamEvent {
    /// A frame can be written ([`ActiveStream::next_frame`]).
    Ready,
    /// The reader reached the end: write the end frame.
    End,
    /// The reader failed.
    Failed,
    /// The receiver granted no credit for `snapshot_chunk_timeout`.
    CreditTimedOut,
}

impl ActiveStream {
    /// Makes `out` the connection's active stream: starts its reader thread.
    /// Its chunks wait for the credit the peer grants in `credits`, at most
    /// `credit_timeout` at a time.
    pub fn new(mut out: OutStream, credits: Arc<StreamCredits>, credit_timeout: Duration) -> Self {
        let pieces = out.body.take().and_then(|body| {
            let (tx, rx) = mpsc::channel(1);
            match spawn_reader(body, tx) {
                Ok(()) => Some(rx),
                Err(e) => {
                    tracing::warn!(error = %e, "could not start a streamed snapshot's reader thread");
                    None
                }
            }
        });
        Self {
            out,
            pieces,
            opened: false,
            part: None,
            next_seq: 0,
            credits,
            credit_timeout,
            waiting_since: None,
        }
    }

    /// Waits until the stream has a frame to write (and the credit for it),
    /// its end, or its failure. Cancel-safe (a chunk received is kept in
    /// `self`, and so is when the wait for credit began).
    pub async fn ready(&mut self) -> StreamEvent {
        if self.pieces.is_none() {
            return StreamEvent::Failed;
        }
        if !self.opened || self.part.is_some() {
            return StreamEvent::Ready;
        }
        if self.next_seq < self.out.chunks {
            let id = self.out.header.stream;
            loop {
                let changed = self.credits.changed.notified();
                if self.credits.granted(id) > self.next_seq {
                    self.waiting_since = None;
                    break;
                }
                let since = *self.waiting_since.get_or_insert_with(Instant::now);
                tokio::select! {
                    () = changed => {}
                    () = tokio::time::sleep_until(since + self.credit_timeout) => {
                        return StreamEvent::CreditTimedOut;
                    }
                }
            }
        }
        let Some(pieces) = self.pieces.as_mut() else {
            return StreamEvent::Failed;
        };
        match pieces.recv().await {
            Some(Piece::Chunk(seq, bytes)) if !bytes.is_empty() && seq == self.next_seq => {
                self.next_seq += 1;
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

    /// True once the open frame was handed out: the receiver knows the
    /// stream, and must hear if this side gives it up.
    pub fn opened(&self) -> bool {
        self.opened
    }

    /// The end frame.
    pub fn end_frame(&self) -> Bytes {
        encode_stream_end(self.out.header)
    }
}

/// The streams a connection's writer sent whole (open, data, end) that wait
/// for their receiver to deliver them. Each ends exactly once: `Written`
/// when the peer's delivered frame comes, `Failed` when its refused frame
/// comes, when the receiver shows no progress for the delivery timeout
/// (`snapshot_chunk_timeout`), or when the connection ends. A word for a
/// stream not waiting here is ignored.
///
/// Progress: at its end frame up to [`STREAM_WINDOW_CHUNKS`] chunks of a
/// stream may still be in flight or queued at the receiver, then its file
/// is checked and made durable. Each chunk the receiver writes grants one
/// more chunk of credit, so a stream's deadline, found passed, moves one
/// timeout on if its credit went up since the deadline was set (and stays
/// within what an honest receiver grants: the file's chunks and the
/// window). A receiver as slow as one chunk per timeout is not failed at
/// the end; one that writes nothing for a timeout is.
pub(crate) struct AwaitingDelivery {
    /// By stream id: the stream, when it stops waiting, and the credit the
    /// peer had granted when that deadline was set.
    streams: BTreeMap<u64, (OutStream, Instant, u32)>,
    timeout: Duration,
    /// The credits the peer grants this side's streams on the connection.
    credits: Arc<StreamCredits>,
}

impl AwaitingDelivery {
    /// None waits yet; each waits at most `timeout` for its word after the
    /// last credit the peer granted it (read in `credits`).
    pub fn new(timeout: Duration, credits: Arc<StreamCredits>) -> Self {
        Self {
            streams: BTreeMap::new(),
            timeout,
            credits,
        }
    }

    /// True when [`STREAMS_AWAITING_DELIVERY_MAX`] streams wait: the writer
    /// starts no new one.
    pub fn is_full(&self) -> bool {
        self.streams.len() >= STREAMS_AWAITING_DELIVERY_MAX
    }

    /// `out`'s end frame was written at `now`: it waits for its word.
    pub fn insert(&mut self, out: OutStream, now: Instant) {
        debug_assert!(self.streams.len() < STREAMS_AWAITING_DELIVERY_MAX);
        let id = out.header.stream;
        // Stream ids are unique per sending process: never replaced.
        debug_assert!(!self.streams.contains_key(&id));
        let granted = self.credits.granted(id);
        self.streams.insert(id, (out, now + self.timeout, granted));
    }

    /// The peer delivered stream `id`: it was sent (`Written`). A delivered
    /// frame for a stream not waiting here (unknown, refused or timed out
    /// already) is ignored and counted.
    pub fn delivered(&mut self, counters: &Counters, id: u64) {
        match self.streams.remove(&id) {
            Some((mut out, ..)) => {
                Counters::bump(&counters.streams_sent);
                out.finish(SnapshotSent::Written);
            }
            None => {
                Counters::bump(&counters.streams_delivered_unknown);
                tracing::debug!(
                    stream = id,
                    "ignored a delivered frame for a stream not awaiting delivery"
                );
            }
        }
    }

    /// The peer refused stream `id` (its refusal counted by the caller): if
    /// it waits here, it failed. Returns whether it did.
    pub fn refused(&mut self, counters: &Counters, id: u64) -> bool {
        let Some((mut out, ..)) = self.streams.remove(&id) else {
            return false;
        };
        Counters::bump(&counters.streams_send_failed);
        out.finish(SnapshotSent::Failed);
        true
    }

    /// The earliest delivery timeout of the streams waiting, if any (for
    /// [`sleep_until_some`]).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.streams
            .values()
            .map(|(_, deadline, _)| *deadline)
            .min()
    }

    /// Fails the streams whose deadline passed by `now` with no new credit
    /// from the receiver since it was set; returns their ids (the writer
    /// cancels them at the receiver). A stream whose credit went up since
    /// waits one timeout more, from `now`.
    pub fn expire(&mut self, counters: &Counters, now: Instant) -> Vec<u64> {
        let mut late = Vec::new();
        for (&id, (out, deadline, seen)) in self.streams.iter_mut() {
            if *deadline > now {
                continue;
            }
            let granted = self.credits.granted(id);
            // An honest receiver grants at most the file's chunks and the
            // window: credit beyond that is no progress.
            let honest_max = out.chunks.saturating_add(STREAM_WINDOW_CHUNKS);
            if granted > *seen && granted <= honest_max {
                *seen = granted;
                *deadline = now + self.timeout;
            } else {
                late.push(id);
            }
        }
        for &id in &late {
            if let Some((mut out, ..)) = self.streams.remove(&id) {
                Counters::bump(&counters.streams_delivery_timed_out);
                Counters::bump(&counters.streams_send_failed);
                // The caller cancels it at the receiver.
                Counters::bump(&counters.streams_cancelled);
                tracing::info!(
                    stream = id,
                    "the peer did not deliver a streamed snapshot in time"
                );
                out.finish(SnapshotSent::Failed);
            }
        }
        late
    }

    /// Fails every stream still waiting: the connection ended.
    pub fn fail_all(&mut self, counters: &Counters) {
        while let Some((_, (mut out, ..))) = self.streams.pop_first() {
            Counters::bump(&counters.streams_send_failed);
            out.finish(SnapshotSent::Failed);
        }
    }
}

/// Waits until `deadline`, or for ever without one. Cancel-safe.
pub(crate) async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
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
    /// A slot for `peer`, or `None` when every slot or the peer's share is
    /// taken. `replacing` slots held by `peer`'s streams that this one
    /// replaces are counted as free (the caller gives them back at once).
    fn take(shared: &Arc<Shared>, peer: PublicKey, replacing: usize) -> Option<Self> {
        let max = shared.config.snapshot_streams_max;
        let per_peer = (max / 2).max(1);
        let mut by_peer = shared.streams_by_peer.lock();
        let held = by_peer.get(&peer).copied().unwrap_or(0);
        if held.saturating_sub(replacing) >= per_peer {
            return None;
        }
        shared
            .streams_receiving
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n.saturating_sub(replacing) < max).then_some(n + 1)
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

/// A stream's slot, shared by the read loop and the stream's file worker:
/// given back by whichever is done with the stream first (the worker when
/// it ends; the read loop when the sender cancels the stream or a newer one
/// replaces it, without waiting for a worker held in the disk).
type SlotCell = Arc<Mutex<Option<Slot>>>;

/// Counts a running file worker in `Shared::stream_workers` and in its
/// peer's `Shared::stream_workers_by_peer` while it lives.
struct WorkerCount {
    shared: Arc<Shared>,
    peer: PublicKey,
}

impl WorkerCount {
    /// Counts one more worker for `peer`, unless [`stream_workers_max`] run
    /// in the process already, or [`stream_workers_per_peer_max`] for
    /// `peer`.
    fn take(shared: &Arc<Shared>, peer: PublicKey) -> Option<Self> {
        let streams_max = shared.config.snapshot_streams_max;
        let mut by_peer = shared.stream_workers_by_peer.lock();
        let held = by_peer.get(&peer).copied().unwrap_or(0);
        if held >= stream_workers_per_peer_max(streams_max) {
            return None;
        }
        let max = stream_workers_max(streams_max);
        shared
            .stream_workers
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

impl Drop for WorkerCount {
    fn drop(&mut self) {
        let mut by_peer = self.shared.stream_workers_by_peer.lock();
        self.shared.stream_workers.fetch_sub(1, Ordering::AcqRel);
        if let Some(held) = by_peer.get_mut(&self.peer) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                by_peer.remove(&self.peer);
            }
        }
    }
}

/// File workers a process runs at most: one per slot, and as many again
/// whose stream was let go (cancelled, replaced) while the worker was held
/// in the disk. Their slot went back at once; the bound keeps such workers,
/// each holding at most [`STREAM_WINDOW_CHUNKS`] chunks until its disk call
/// returns, from piling up.
fn stream_workers_max(snapshot_streams_max: usize) -> usize {
    snapshot_streams_max.saturating_mul(2)
}

/// File workers one peer runs at most: twice its share of the slots (half
/// of `snapshot_streams_max`, at least one), so a peer whose streams are
/// let go while their workers wait (in the disk, or for the connection's
/// writer to take their last word) cannot take the process's
/// [`stream_workers_max`] from the others.
fn stream_workers_per_peer_max(snapshot_streams_max: usize) -> usize {
    (snapshot_streams_max / 2).max(1).saturating_mul(2)
}

/// What the read loop hands a stream's file worker.
enum Work {
    /// Chunk `seq`, whole.
    Chunk(u32, Vec<u8>),
    /// The end frame came after the last chunk.
    End,
}

/// A stream being received, as the read loop sees it: the worker has the
/// rest. It stays here after its end frame until its worker is done.
struct InStream {
    header: StreamHeader,
    descriptor: SnapshotDescriptor,
    /// To the stream's file worker; closed once the worker stopped.
    work: mpsc::Sender<Work>,
    /// Chunks the worker granted in all (cumulative).
    granted: Arc<AtomicU32>,
    /// Set, once, by whichever side decides how the stream ends: the read
    /// loop (refused, timed out, replaced, cancelled, connection gone) or
    /// the worker (refused, or about to deliver). Only the side that set it
    /// counts the stream and tells the sender; a worker that finds it set
    /// by the read loop stops at once (nothing more written, nothing
    /// delivered, its partial file deleted).
    decided: Arc<AtomicBool>,
    /// The stream's slot (shared with its worker).
    slot: SlotCell,
    /// The end frame went to the worker.
    ended: bool,
    next_seq: u32,
    chunk: Vec<u8>,
    /// The last whole chunk, or the last time the sender was found without
    /// credit (waiting for this side's disk does not count against it).
    last_progress: Instant,
}

impl InStream {
    /// Decides the stream's end from the read loop: true if it was not
    /// decided yet (the caller then counts it and tells the sender).
    fn decide(&self) -> bool {
        !self.decided.swap(true, Ordering::AcqRel)
    }
}

/// A received stream's file worker: owns the files' receiver, writes the
/// chunks in order, grants credit, and at the end checks the file and
/// delivers the message (or refuses the stream).
struct FileWorker {
    shared: Arc<Shared>,
    key: PublicKey,
    header: StreamHeader,
    inbox: Arc<dyn Inbox>,
    message: Message,
    descriptor: SnapshotDescriptor,
    files: Arc<dyn SnapshotFiles>,
    granted: Arc<AtomicU32>,
    decided: Arc<AtomicBool>,
    /// For the worker's last word (delivered or refused), sent only once
    /// the worker decided the stream's end: a worker whose stream was let
    /// go never waits here.
    control: mpsc::Sender<Control>,
    /// Credits, recorded without waiting for the writer.
    to_grant: Arc<CreditsToGrant>,
    /// Given back once the file is finished or dropped.
    slot: SlotCell,
    /// Counted while the worker runs.
    _count: WorkerCount,
}

impl Drop for FileWorker {
    fn drop(&mut self) {
        self.slot.lock().take();
    }
}

impl FileWorker {
    /// True while the read loop has not let the stream go.
    fn wanted(&self) -> bool {
        !self.decided.load(Ordering::Acquire)
    }

    /// Runs on tokio's blocking pool until the stream ends, is refused, or
    /// the read loop lets it go (the partial file is deleted when the
    /// receiver drops).
    fn run(self, mut work: mpsc::Receiver<Work>) {
        let mut receiver = match self.files.receive(&self.descriptor) {
            Ok(receiver) => receiver,
            Err(e) => {
                tracing::debug!(peer = %self.key, error = %e, "snapshot files refused a stream");
                return self.refuse(receive_reason(&e));
            }
        };
        if !self.wanted() {
            return;
        }
        self.grant(STREAM_WINDOW_CHUNKS);
        let mut written: u32 = 0;
        loop {
            let next = work.blocking_recv();
            if !self.wanted() {
                // Refused by the read loop, replaced, cancelled, timed out,
                // or the connection ended: dropping the receiver deletes
                // the file; the chunks still queued are never written.
                return;
            }
            match next {
                None => return,
                Some(Work::Chunk(seq, chunk)) => {
                    if let Err(e) = receiver.put(seq, &chunk) {
                        tracing::debug!(peer = %self.key, error = %e, "snapshot files refused a chunk");
                        drop(receiver);
                        return self.refuse(chunk_reason(&e));
                    }
                    written = written.saturating_add(1);
                    self.grant(written.saturating_add(STREAM_WINDOW_CHUNKS));
                }
                Some(Work::End) => {
                    if let Err(e) = receiver.finish() {
                        tracing::debug!(peer = %self.key, error = %e, "a streamed snapshot failed its check at the end");
                        return self.refuse(finish_reason(&e));
                    }
                    return self.deliver();
                }
            }
        }
    }

    /// The file is whole, checked and durable: delivers the message unless
    /// the read loop let the stream go meanwhile (cancelled, connection
    /// ended) or the sender's key is no longer pinned for its replica.
    fn deliver(mut self) {
        if self.decided.swap(true, Ordering::AcqRel) {
            tracing::debug!(peer = %self.key, stream = self.header.stream, "a streamed snapshot let go before its delivery: dropped");
            return;
        }
        if self.shared.directory().key_of(self.header.raft.from) != Some(self.key) {
            // Decided just above: this side counts and tells.
            Counters::bump(&self.shared.counters.streams_refused_unpinned);
            return self.refuse_decided(RefusalReason::Other);
        }
        let message = std::mem::take(&mut self.message);
        let taken = self.inbox.deliver_snapshot(Envelope {
            group: self.header.raft.group,
            message,
        });
        if taken.is_err() {
            // The replica does not have it (its mailbox was full): the
            // sender must not hear it was delivered, or its raft sends the
            // next append past a snapshot the follower never saw.
            Counters::bump(&self.shared.counters.streams_refused_dropped);
            tracing::info!(peer = %self.key, stream = self.header.stream, "the replica's inbox could not take a streamed snapshot: refused");
            return self.refuse_decided(RefusalReason::Other);
        }
        self.slot.lock().take();
        Counters::bump(&self.shared.counters.streams_received);
        // Only now may the sender report the snapshot sent: the raft frames
        // it sends after that reach the inbox after this message. Wait for
        // room (this is not the read loop); a closed channel means the
        // connection ended and the sender fails the stream with it.
        let _ = self
            .control
            .blocking_send(Control::Delivered(self.header.stream));
    }

    /// Lets the sender have sent `granted` chunks in all. Never waits: the
    /// writer sends the newest total when it gets to it (nothing is granted
    /// to a stream let go).
    fn grant(&self, granted: u32) {
        self.granted.store(granted, Ordering::Release);
        if self.wanted() {
            self.to_grant.grant(self.header.stream, granted);
        }
    }

    /// Refuses the stream, unless the read loop decided its end already
    /// (then it counted it and told the sender).
    fn refuse(&self, reason: RefusalReason) {
        if self.decided.swap(true, Ordering::AcqRel) {
            return;
        }
        self.refuse_decided(reason);
    }

    /// Counts the refusal this worker decided and tells the sender.
    fn refuse_decided(&self, reason: RefusalReason) {
        Counters::bump(&self.shared.counters.streams_refused);
        tracing::debug!(peer = %self.key, stream = self.header.stream, ?reason, "refused a streamed snapshot");
        let _ = self
            .control
            .blocking_send(Control::Refuse(self.header.stream, reason));
    }
}

/// The reason sent for a file error when a stream's file is opened.
pub(crate) fn receive_reason(e: &SnapshotFileError) -> RefusalReason {
    if e.is_no_space() {
        return RefusalReason::NoSpace;
    }
    match e {
        SnapshotFileError::TooLarge { .. } => RefusalReason::TooLarge,
        SnapshotFileError::BadDescriptor { .. } => RefusalReason::BadDescriptor,
        _ => RefusalReason::Other,
    }
}

/// The reason sent for a file error on a chunk.
pub(crate) fn chunk_reason(e: &SnapshotFileError) -> RefusalReason {
    if e.is_no_space() {
        return RefusalReason::NoSpace;
    }
    match e {
        SnapshotFileError::BadChunk { .. } => RefusalReason::BadChunk,
        _ => RefusalReason::Other,
    }
}

/// The reason sent for a file error when the whole file is checked and
/// made durable.
pub(crate) fn finish_reason(e: &SnapshotFileError) -> RefusalReason {
    if e.is_no_space() {
        return RefusalReason::NoSpace;
    }
    match e {
        SnapshotFileError::DigestMismatch { .. }
        | SnapshotFileError::Tampered { .. }
        | SnapshotFileError::Incomplete { .. } => RefusalReason::Digest,
        _ => RefusalReason::Other,
    }
}

/// Why the read loop refused a stream (logged; every refusal is counted in
/// `streams_refused`, and its [`RefusalReason`] sent back).
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
    /// The stream id is already open on this connection (that stream is
    /// refused with it).
    Duplicate,
    /// An open on a connection this process dialed: streams go only from
    /// the dialer to the acceptor.
    Dialed,
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
    /// A chunk started beyond the credit granted.
    Credit,
    /// The file worker could not be started.
    Worker,
    /// At its end, the sender's key is no longer pinned for its replica.
    Unpinned,
}

impl StreamRefusal {
    /// What the sender is told.
    fn reason(self) -> RefusalReason {
        match self {
            StreamRefusal::Header
            | StreamRefusal::NoFiles
            | StreamRefusal::NotAdmitted
            | StreamRefusal::Dialed => RefusalReason::NotAdmitted,
            StreamRefusal::Descriptor | StreamRefusal::Message => RefusalReason::BadDescriptor,
            StreamRefusal::TooLarge => RefusalReason::TooLarge,
            StreamRefusal::Busy => RefusalReason::Busy,
            StreamRefusal::Mismatch
            | StreamRefusal::OutOfOrder
            | StreamRefusal::Oversize
            | StreamRefusal::EarlyEnd => RefusalReason::BadChunk,
            StreamRefusal::Credit => RefusalReason::Credit,
            StreamRefusal::Duplicate
            | StreamRefusal::Unknown
            | StreamRefusal::Worker
            | StreamRefusal::Unpinned => RefusalReason::Other,
        }
    }
}

/// What a receiver asks its connection's writer to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    /// Tell the peer its stream was refused, and why.
    Refuse(u64, RefusalReason),
    /// Tell the peer its stream's message was delivered here.
    Delivered(u64),
    /// The peer refused our stream, and why.
    PeerRefused(u64, RefusalReason),
    /// The peer delivered our stream's message.
    PeerDelivered(u64),
}

/// The streamed snapshots being received on one connection.
pub(crate) struct InStreams {
    shared: Arc<Shared>,
    key: PublicKey,
    control: mpsc::Sender<Control>,
    /// Credits this side's workers grant the peer's streams (for the writer).
    to_grant: Arc<CreditsToGrant>,
    /// Credits the peer grants our streams (for the writer).
    credits: Arc<StreamCredits>,
    /// Open streams, and ended ones whose worker still runs.
    streams: BTreeMap<u64, InStream>,
    /// Streams that ended here (refused, timed out, cancelled, replaced or
    /// finished), newest last: their later frames are ignored.
    closed: VecDeque<u64>,
    /// This process accepted the connection: the peer dialed it, sends its
    /// streams on it, and a kind 9 from it is a cancel. On a connection this
    /// process dialed, a kind 9 is the peer's refusal of one of ours.
    accepted: bool,
}

impl Drop for InStreams {
    fn drop(&mut self) {
        // The connection ended: every stream not decided yet is let go (an
        // ended one's worker then delivers nothing).
        let mut abandoned = 0;
        for stream in self.streams.values() {
            if stream.decide() {
                abandoned += 1;
            }
        }
        Counters::add(&self.shared.counters.streams_abandoned, abandoned);
    }
}

impl InStreams {
    /// No stream yet, on the connection with the peer proving `key`, which
    /// this process `accepted` (else dialed); refusals and deliveries go to
    /// the writer through `control`, the credits the workers grant through
    /// `to_grant`, and the credits the peer grants into `credits`.
    pub fn new(
        shared: Arc<Shared>,
        key: PublicKey,
        control: mpsc::Sender<Control>,
        to_grant: Arc<CreditsToGrant>,
        credits: Arc<StreamCredits>,
        accepted: bool,
    ) -> Self {
        Self {
            shared,
            key,
            control,
            to_grant,
            credits,
            streams: BTreeMap::new(),
            closed: VecDeque::new(),
            accepted,
        }
    }

    /// A kind 9 frame: on a connection this process accepted, the sender's
    /// cancel of its stream `id`; on one it dialed, the receiver's refusal
    /// of ours. Streams go only from the dialer to the acceptor, so the two
    /// never mix.
    pub fn refused_frame(&mut self, id: u64, reason: RefusalReason) {
        if self.accepted {
            self.cancelled(id, reason);
        } else {
            self.peer_refused(id, reason);
        }
    }

    fn remember_closed(&mut self, id: u64) {
        if self.closed.contains(&id) {
            return;
        }
        if self.closed.len() >= CLOSED_REMEMBERED_MAX {
            self.closed.pop_front();
        }
        self.closed.push_back(id);
    }

    /// Takes stream `id` out and decides its end: true if it was not decided
    /// yet, or there was no such stream (the caller counts and tells).
    fn take_deciding(&mut self, id: u64) -> bool {
        self.remember_closed(id);
        match self.streams.remove(&id) {
            Some(stream) => stream.decide(),
            None => true,
        }
    }

    /// Refuses stream `id`: drops it (its worker deletes the partial file),
    /// remembers the id and tells the peer, unless its worker refused it
    /// first (then the worker counted it and told the peer).
    fn refuse(&mut self, id: u64, why: StreamRefusal) {
        self.refused(id, why);
    }

    /// [`InStreams::refuse`]; true if this call counted the refusal.
    fn refused(&mut self, id: u64, why: StreamRefusal) -> bool {
        if !self.take_deciding(id) {
            return false;
        }
        Counters::bump(&self.shared.counters.streams_refused);
        tracing::debug!(peer = %self.key, stream = id, ?why, "refused a streamed snapshot");
        // Best effort: a full control channel means the writer is far
        // behind; the sender then times out with its connection.
        let _ = self.control.try_send(Control::Refuse(id, why.reason()));
        true
    }

    /// Forgets stream `id`, whose worker stopped: it refused or delivered
    /// it, and reported that already; or it stopped without a word (it
    /// panicked), and the stream is refused here (`Worker`).
    fn forget_finished(&mut self, id: u64) {
        let silent = self.streams.get(&id).is_some_and(InStream::decide);
        if silent {
            // `refuse` finds it decided: count and tell here.
            self.streams.remove(&id);
            self.remember_closed(id);
            Counters::bump(&self.shared.counters.streams_refused);
            tracing::warn!(peer = %self.key, stream = id, "a streamed snapshot's file worker stopped without a word");
            let _ = self
                .control
                .try_send(Control::Refuse(id, StreamRefusal::Worker.reason()));
            return;
        }
        self.streams.remove(&id);
        self.remember_closed(id);
    }

    fn was_closed(&self, id: u64) -> bool {
        self.closed.contains(&id)
    }

    /// Forgets the streams whose worker stopped, and drops those with no
    /// whole chunk since `now - snapshot_chunk_timeout` while their sender
    /// had credit (refused with `Timeout`, counted in `streams_abandoned`).
    pub fn expire(&mut self, now: Instant) {
        let timeout = self.shared.config.snapshot_chunk_timeout;
        let mut gone = Vec::new();
        let mut stale = Vec::new();
        for (&id, s) in self.streams.iter_mut() {
            if s.work.is_closed() {
                gone.push(id);
            } else if s.ended {
                // Its worker checks and delivers it: the sender is done.
            } else if s.chunk.is_empty() && s.next_seq >= s.granted.load(Ordering::Acquire) {
                // The sender waits for this side's disk: not its fault.
                s.last_progress = now;
            } else if now.saturating_duration_since(s.last_progress) >= timeout {
                stale.push(id);
            }
        }
        for id in gone {
            self.forget_finished(id);
        }
        for id in stale {
            if !self.take_deciding(id) {
                continue;
            }
            Counters::bump(&self.shared.counters.streams_abandoned);
            tracing::debug!(peer = %self.key, stream = id, "dropped a streamed snapshot that made no progress");
            let _ = self
                .control
                .try_send(Control::Refuse(id, RefusalReason::Timeout));
        }
    }

    /// The peer refused our stream `id`.
    fn peer_refused(&self, id: u64, reason: RefusalReason) {
        let _ = self.control.try_send(Control::PeerRefused(id, reason));
    }

    /// The peer delivered our stream `id`. Best effort, as a refusal: a full
    /// control channel (a writer far behind) drops the word, and the stream
    /// then fails at its delivery timeout.
    pub fn peer_delivered(&self, id: u64) {
        if self.control.try_send(Control::PeerDelivered(id)).is_err() {
            tracing::debug!(peer = %self.key, stream = id, "no room for a delivered word: the stream will time out");
        }
    }

    /// The peer granted our stream `id` `granted` chunks in all.
    pub fn peer_credit(&self, id: u64, granted: u32) {
        self.credits.grant(id, granted);
    }

    /// The peer gave up its stream `id` (a cancel): dropped at once, its
    /// slot given back now, its worker stopped (before it writes another
    /// chunk or delivers; the partial file deleted). A cancel for a stream
    /// not here (refused, finished, unknown) changes nothing but a counter
    /// (`streams_refusals_ignored`); no word goes back.
    fn cancelled(&mut self, id: u64, reason: RefusalReason) {
        let Some(stream) = self.streams.remove(&id) else {
            Counters::bump(&self.shared.counters.streams_refusals_ignored);
            tracing::debug!(peer = %self.key, stream = id, ?reason, "ignored a cancel for a stream not being received");
            return;
        };
        self.remember_closed(id);
        if stream.decide() {
            stream.slot.lock().take();
            Counters::bump(&self.shared.counters.streams_cancelled_by_peer);
            tracing::debug!(peer = %self.key, stream = id, ?reason, "the sender cancelled a streamed snapshot");
        } else {
            Counters::bump(&self.shared.counters.streams_refusals_ignored);
        }
    }

    /// An open frame. Never waits: the stream's file is opened by its worker.
    ///
    /// Streams go only from the dialer to the acceptor: an open on a
    /// connection this process dialed is refused (`not admitted`), so a kind 9
    /// on it can only be the peer's refusal of one of ours. An open for a
    /// stream id open here already is refused, and so is that running stream
    /// (ids are unique per sending process: the refusal names the id, the
    /// sender fails the stream it sends under it, and a stream kept here
    /// would only hold its slot until its timeout).
    pub fn open(
        &mut self,
        inbox: Option<Arc<dyn Inbox>>,
        header: StreamHeader,
        descriptor: &[u8],
        message: &[u8],
    ) {
        let id = header.stream;
        if !self.accepted {
            return self.refuse(id, StreamRefusal::Dialed);
        }
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
        // sender gave it up), but only once admitted itself: a new open
        // refused leaves the running stream alone. The slots the old ones
        // hold may serve the new one.
        let replaced: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, s)| s.header.raft == header.raft && s.slot.lock().is_some())
            .map(|(&id, _)| id)
            .collect();
        let Some(slot) = Slot::take(&self.shared, self.key, replaced.len()) else {
            return self.refuse(id, StreamRefusal::Busy);
        };
        let Some(count) = WorkerCount::take(&self.shared, self.key) else {
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
        for old in replaced {
            if let Some(stream) = self.streams.remove(&old) {
                self.remember_closed(old);
                if stream.decide() {
                    Counters::bump(&self.shared.counters.streams_abandoned);
                }
                // Its slot goes to the new stream now, whether or not its
                // worker is still held in the disk.
                stream.slot.lock().take();
            }
        }
        // Room for every chunk the credit allows, and the end.
        let (work_tx, work_rx) = mpsc::channel(STREAM_WINDOW_CHUNKS as usize + 1);
        let granted = Arc::new(AtomicU32::new(0));
        let decided = Arc::new(AtomicBool::new(false));
        let slot: SlotCell = Arc::new(Mutex::new(Some(slot)));
        let worker = FileWorker {
            shared: Arc::clone(&self.shared),
            key: self.key,
            header,
            inbox,
            message,
            descriptor: descriptor.clone(),
            files,
            granted: Arc::clone(&granted),
            decided: Arc::clone(&decided),
            control: self.control.clone(),
            to_grant: Arc::clone(&self.to_grant),
            slot: Arc::clone(&slot),
            _count: count,
        };
        if tokio::runtime::Handle::try_current()
            .map(|handle| handle.spawn_blocking(move || worker.run(work_rx)))
            .is_err()
        {
            return self.refuse(id, StreamRefusal::Worker);
        }
        let first = descriptor.chunk_len(0).unwrap_or(0);
        self.streams.insert(
            id,
            InStream {
                header,
                descriptor,
                work: work_tx,
                granted,
                decided,
                slot,
                ended: false,
                next_seq: 0,
                chunk: Vec::with_capacity(first),
                last_progress: Instant::now(),
            },
        );
    }

    /// Looks up stream `header.stream` for a data or end frame; refuses
    /// (once) a frame for a stream never open here, and ignores one for a
    /// stream closed here or already ended.
    fn stream_for(&mut self, header: StreamHeader) -> Option<&mut InStream> {
        let id = header.stream;
        match self.streams.get(&id) {
            None => {
                if !self.was_closed(id) {
                    self.refuse(id, StreamRefusal::Unknown);
                }
                None
            }
            Some(s) if s.work.is_closed() => {
                self.forget_finished(id);
                None
            }
            // A stray frame after the end: the worker has the stream.
            Some(s) if s.ended => None,
            Some(s) if s.header != header => {
                self.refuse(id, StreamRefusal::Mismatch);
                None
            }
            Some(_) => self.streams.get_mut(&id),
        }
    }

    /// A data frame: part of chunk `seq`. A whole chunk goes to the stream's
    /// worker without waiting.
    pub fn data(&mut self, header: StreamHeader, seq: u32, data: &[u8]) {
        let id = header.stream;
        let c = &self.shared.counters;
        Counters::add(&c.stream_bytes_received, data.len() as u64);
        let Some(stream) = self.stream_for(header) else {
            return;
        };
        if seq != stream.next_seq {
            return self.refuse(id, StreamRefusal::OutOfOrder);
        }
        if stream.chunk.is_empty() && seq >= stream.granted.load(Ordering::Acquire) {
            return self.refuse(id, StreamRefusal::Credit);
        }
        let Some(len) = stream.descriptor.chunk_len(seq) else {
            return self.refuse(id, StreamRefusal::Oversize);
        };
        if stream.chunk.len() + data.len() > len {
            return self.refuse(id, StreamRefusal::Oversize);
        }
        stream.chunk.extend_from_slice(data);
        // The timeout counts from the last whole chunk, not the last frame:
        // a stream trickling bytes cannot hold its slot (a floor of one
        // chunk per `snapshot_chunk_timeout`: 64 KiB chunks and 30 s, about
        // 2.2 KB/s).
        if stream.chunk.len() < len {
            return;
        }
        let next_len = stream.descriptor.chunk_len(seq + 1).unwrap_or(0);
        let chunk = std::mem::replace(&mut stream.chunk, Vec::with_capacity(next_len));
        match stream.work.try_send(Work::Chunk(seq, chunk)) {
            Ok(()) => {
                stream.next_seq = seq + 1;
                stream.last_progress = Instant::now();
            }
            // Not with the credit honoured (the queue holds the window).
            Err(TrySendError::Full(_)) => self.refuse(id, StreamRefusal::Credit),
            Err(TrySendError::Closed(_)) => self.forget_finished(id),
        }
    }

    /// An end frame: the worker checks the file and makes it durable, then
    /// delivers the message. Refused if the sender's key is no longer pinned
    /// for its replica (the worker checks again right before it delivers).
    pub fn end(&mut self, header: StreamHeader) {
        let id = header.stream;
        let pinned = self.shared.directory().key_of(header.raft.from) == Some(self.key);
        let Some(stream) = self.stream_for(header) else {
            return;
        };
        if stream.next_seq != stream.descriptor.chunks || !stream.chunk.is_empty() {
            return self.refuse(id, StreamRefusal::EarlyEnd);
        }
        if !pinned {
            if self.refused(id, StreamRefusal::Unpinned) {
                Counters::bump(&self.shared.counters.streams_refused_unpinned);
            }
            return;
        }
        match stream.work.try_send(Work::End) {
            Ok(()) => stream.ended = true,
            Err(TrySendError::Full(_)) => self.refuse(id, StreamRefusal::Credit),
            Err(TrySendError::Closed(_)) => self.forget_finished(id),
        }
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
