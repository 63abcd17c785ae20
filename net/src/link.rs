//! [`PeerLink`]: the outbound side of one peer process. A bounded queue (frames
//! and bytes) that the node thread fills without ever blocking, and one task that
//! dials the peer, runs the connection, and on failure drops what was queued and
//! redials after a jittered exponential backoff. While it backs off, sends to the
//! peer are refused at once (raft hears "unreachable" and probes later).
//!
//! One link per peer *process* (per pinned key), whatever the number of groups
//! and replica ids it hosts.
//!
//! Snapshots do not go through the frame queue: each is encoded once and held
//! whole in the link's snapshot list (at most [`SNAPSHOTS_QUEUED_MAX`]), and the
//! connection's writer cuts it into chunk frames as it writes, interleaved with
//! queued frames. Its `done` is called with `Written` once the last chunk was
//! written to the socket, with `Failed` when the connection fails or the link
//! closes first.
//!
//! Streamed snapshots (`crate::stream`) wait in a list of their own (at most
//! [`SNAPSHOTS_QUEUED_MAX`]); the connection's writer takes them one at a
//! time and sends their frames between queued frames.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::time::{timeout, Instant};
use tokio_util::codec::FramedRead;
use vaultfleet::transport::{SnapshotDone, SnapshotSent};
use vaultfleet::ReplicaId;

use crate::backoff::Backoff;
use crate::config::NetConfig;
use crate::connection::{self, RecordReader};
use crate::directory::PeerDirectory;
use crate::error::{ConnectionError, HandshakeError, SendError};
use crate::handshake::{initiate, Session};
use crate::keys::PublicKey;
use crate::stats::Counters;
use crate::stream::OutStream;
use crate::transport::{record_close, Shared};
use crate::wire::frame::{encode_chunk, ChunkHeader, CHUNK_HEADER_BYTES};
use crate::wire::record::record_codec;

/// Snapshots waiting or being written to one peer process at once (raft sends
/// one per follower at a time; a process may host several followers).
pub(crate) const SNAPSHOTS_QUEUED_MAX: usize = 16;

/// A snapshot on its way out: its encoding, how far it was written, and who
/// hears how it ended.
pub(crate) struct OutSnapshot {
    /// The chunk header; `offset` is where the next chunk starts.
    pub header: ChunkHeader,
    /// The encoded `MsgSnapshot`.
    pub bytes: Bytes,
    /// Data bytes per chunk (before the frame limit is applied).
    pub chunk_bytes: usize,
    /// Called once with the outcome.
    pub done: Option<SnapshotDone>,
}

impl OutSnapshot {
    /// Reports the outcome (once).
    pub fn finish(&mut self, sent: SnapshotSent) {
        if let Some(done) = self.done.take() {
            done(sent);
        }
    }
}

impl Drop for OutSnapshot {
    fn drop(&mut self) {
        // Dropped without a report (a task cancelled mid-write): raft must
        // still hear, or it holds the follower back.
        self.finish(SnapshotSent::Failed);
    }
}

const CONNECTING: u8 = 0;
const CONNECTED: u8 = 1;
const BACKOFF: u8 = 2;
const CLOSED: u8 = 3;

/// The sending end of one peer process's queue, and its connection state.
#[derive(Debug)]
pub(crate) struct PeerLink {
    pub key: PublicKey,
    tx: mpsc::Sender<Bytes>,
    queued_bytes: AtomicUsize,
    state: AtomicU8,
    /// The frame limit the peer announced in its last handshake (0: unknown).
    peer_frame_bytes_max: AtomicUsize,
    snapshots: Mutex<VecDeque<OutSnapshot>>,
    snapshot_ready: Notify,
    streams: Mutex<VecDeque<OutStream>>,
    stream_ready: Notify,
}

impl std::fmt::Debug for OutSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutSnapshot")
            .field("header", &self.header)
            .field("bytes", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl PeerLink {
    /// True while the link backs off after a failure, or after it closed.
    pub fn is_down(&self) -> bool {
        matches!(self.state.load(Ordering::Acquire), BACKOFF | CLOSED)
    }

    fn set_state(&self, state: u8) {
        self.state.store(state, Ordering::Release);
    }

    /// The largest frame body to send: `own`, or the peer's announced limit
    /// if that is smaller.
    pub fn frame_limit(&self, own: usize) -> usize {
        match self.peer_frame_bytes_max.load(Ordering::Acquire) {
            0 => own,
            peer => own.min(peer),
        }
    }

    /// Queues a snapshot without blocking. On `Err` its `done` is dropped
    /// uncalled (the caller reports the failure itself).
    pub fn enqueue_snapshot(
        &self,
        mut snapshot: OutSnapshot,
        to: ReplicaId,
    ) -> Result<(), SendError> {
        let mut snapshots = self.snapshots.lock();
        if snapshots.len() >= SNAPSHOTS_QUEUED_MAX {
            snapshot.done = None;
            return Err(SendError::QueueFull(to));
        }
        snapshots.push_back(snapshot);
        drop(snapshots);
        self.snapshot_ready.notify_one();
        Ok(())
    }

    /// True if a snapshot waits to be written.
    fn has_snapshot(&self) -> bool {
        !self.snapshots.lock().is_empty()
    }

    /// Waits until a snapshot waits to be written.
    pub async fn snapshot_pending(&self) {
        loop {
            if self.has_snapshot() {
                return;
            }
            self.snapshot_ready.notified().await;
        }
    }

    /// The next chunk frame of the first snapshot waiting, with at most
    /// `frame_limit` bytes of body; with it the snapshot itself when this is
    /// its last chunk (report it once the chunk is written).
    pub fn next_chunk(&self, frame_limit: usize) -> Option<(Bytes, Option<OutSnapshot>)> {
        let mut snapshots = self.snapshots.lock();
        let snapshot = snapshots.front_mut()?;
        let total = snapshot.bytes.len();
        let start = usize::try_from(snapshot.header.offset).unwrap_or(total);
        let room = frame_limit.saturating_sub(CHUNK_HEADER_BYTES).max(1);
        let end = total.min(start + snapshot.chunk_bytes.min(room));
        let frame = encode_chunk(snapshot.header, &snapshot.bytes[start..end]);
        snapshot.header.offset = end as u64;
        if end < total {
            return Some((frame, None));
        }
        Some((frame, snapshots.pop_front()))
    }

    /// Queues a streamed snapshot without blocking. On `Err` its `done` is
    /// dropped uncalled (the caller reports the failure itself).
    pub fn enqueue_stream(&self, mut stream: OutStream, to: ReplicaId) -> Result<(), SendError> {
        let mut streams = self.streams.lock();
        if streams.len() >= SNAPSHOTS_QUEUED_MAX {
            stream.done = None;
            return Err(SendError::QueueFull(to));
        }
        streams.push_back(stream);
        drop(streams);
        self.stream_ready.notify_one();
        Ok(())
    }

    /// Waits for a streamed snapshot to send and takes it.
    pub async fn next_stream(&self) -> OutStream {
        loop {
            if let Some(stream) = self.streams.lock().pop_front() {
                return stream;
            }
            self.stream_ready.notified().await;
        }
    }

    /// Reports every waiting streamed snapshot failed; returns how many.
    pub fn fail_streams(&self) -> u64 {
        let failed: Vec<OutStream> = self.streams.lock().drain(..).collect();
        let n = failed.len() as u64;
        for mut stream in failed {
            stream.finish(SnapshotSent::Failed);
        }
        n
    }

    /// Reports every waiting snapshot failed; returns how many.
    pub fn fail_snapshots(&self) -> u64 {
        let failed: Vec<OutSnapshot> = self.snapshots.lock().drain(..).collect();
        let n = failed.len() as u64;
        for mut snapshot in failed {
            snapshot.finish(SnapshotSent::Failed);
        }
        n
    }

    /// Queues `frame` for replica `to` without blocking.
    pub fn enqueue(
        &self,
        frame: Bytes,
        to: ReplicaId,
        queue_bytes_max: usize,
    ) -> Result<(), SendError> {
        let len = frame.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before.saturating_add(len) > queue_bytes_max {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(SendError::QueueFull(to));
        }
        match self.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                Err(match e {
                    mpsc::error::TrySendError::Full(_) => SendError::QueueFull(to),
                    mpsc::error::TrySendError::Closed(_) => SendError::PeerDown(to),
                })
            }
        }
    }
}

/// The receiving end of a link's queue, owned by the link's task.
#[derive(Debug)]
pub(crate) struct Queue {
    rx: mpsc::Receiver<Bytes>,
    link: Arc<PeerLink>,
}

impl Queue {
    /// The link this queue belongs to.
    pub fn link(&self) -> &Arc<PeerLink> {
        &self.link
    }

    fn took(&self, frame: &Bytes) {
        self.link
            .queued_bytes
            .fetch_sub(frame.len(), Ordering::AcqRel);
    }

    /// The next frame, waiting for one.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let frame = self.rx.recv().await?;
        self.took(&frame);
        Some(frame)
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        let frame = self.rx.try_recv().ok()?;
        self.took(&frame);
        Some(frame)
    }

    /// Drops everything queued; returns how many frames.
    fn drain(&mut self) -> u64 {
        let mut dropped = 0;
        while self.try_recv().is_some() {
            dropped += 1;
        }
        dropped
    }
}

/// Makes the link to the process proving `key` and starts its task.
pub(crate) fn spawn(shared: &Arc<Shared>, key: PublicKey) -> Arc<PeerLink> {
    let (tx, rx) = mpsc::channel(shared.config.queue_frames_max);
    let link = Arc::new(PeerLink {
        key,
        tx,
        queued_bytes: AtomicUsize::new(0),
        state: AtomicU8::new(CONNECTING),
        peer_frame_bytes_max: AtomicUsize::new(0),
        snapshots: Mutex::new(VecDeque::new()),
        snapshot_ready: Notify::new(),
        streams: Mutex::new(VecDeque::new()),
        stream_ready: Notify::new(),
    });
    let queue = Queue {
        rx,
        link: Arc::clone(&link),
    };
    shared
        .runtime
        .spawn(link_loop(Arc::clone(shared), Arc::clone(&link), queue));
    link
}

async fn link_loop(shared: Arc<Shared>, link: Arc<PeerLink>, mut queue: Queue) {
    let config = shared.config.clone();
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    loop {
        let directory = shared.directory();
        let address = if directory.is_pinned_peer(&link.key) {
            directory.address_of(&link.key)
        } else {
            None
        };
        let Some(address) = address else { break };
        link.set_state(CONNECTING);
        let attempt = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            attempt = dial(&shared.config, &directory, address, link.key) => attempt,
        };
        match attempt {
            Ok((reader, writer, session)) => {
                Counters::bump(&shared.counters.connections_dialed);
                Counters::add(
                    &shared.counters.hello_claims_ignored,
                    session.claims_ignored as u64,
                );
                link.peer_frame_bytes_max
                    .store(session.frame_bytes_max, Ordering::Release);
                link.set_state(CONNECTED);
                tracing::debug!(peer = %link.key, %address, "connected");
                let started = Instant::now();
                let reason = connection::run(
                    Arc::clone(&shared),
                    reader,
                    writer,
                    session,
                    Some(&mut queue),
                    shared.cancel.child_token(),
                    Vec::new(),
                )
                .await;
                record_close(&shared, link.key, &reason);
                if matches!(reason, ConnectionError::Shutdown) {
                    break;
                }
                if started.elapsed() >= config.idle_timeout {
                    backoff.reset();
                }
            }
            Err(e) => {
                Counters::bump(&shared.counters.dials_failed);
                tracing::debug!(peer = %link.key, %address, error = %e, "could not connect");
            }
        }
        link.set_state(BACKOFF);
        let dropped = queue.drain();
        Counters::add(&shared.counters.frames_dropped_on_disconnect, dropped);
        Counters::add(
            &shared.counters.snapshots_send_failed,
            link.fail_snapshots(),
        );
        Counters::add(&shared.counters.streams_send_failed, link.fail_streams());
        let delay = backoff.next();
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    link.set_state(CLOSED);
    let dropped = queue.drain();
    Counters::add(&shared.counters.frames_dropped_on_disconnect, dropped);
    Counters::add(
        &shared.counters.snapshots_send_failed,
        link.fail_snapshots(),
    );
    Counters::add(&shared.counters.streams_send_failed, link.fail_streams());
    shared.forget_link(&link);
}

/// Opens a TCP connection to `address` and runs the initiator's handshake
/// against `key`, each within its time limit (a peer link's and a remote
/// client's dial alike).
pub(crate) async fn dial(
    config: &NetConfig,
    directory: &PeerDirectory,
    address: std::net::SocketAddr,
    key: PublicKey,
) -> Result<(RecordReader, tokio::net::tcp::OwnedWriteHalf, Session), HandshakeError> {
    let stream = timeout(config.connect_timeout, TcpStream::connect(address))
        .await
        .map_err(|_| HandshakeError::ConnectTimeout)?
        .map_err(HandshakeError::Io)?;
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = FramedRead::new(read, record_codec());
    let session = timeout(
        config.handshake_timeout,
        initiate(
            &mut reader,
            &mut write,
            directory,
            key,
            config.frame_bytes_max,
            None,
        ),
    )
    .await
    .map_err(|_| HandshakeError::Timeout)??;
    Ok((reader, write, session))
}
