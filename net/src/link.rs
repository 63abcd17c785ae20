//! [`PeerLink`]: the outbound side of one peer process. A bounded queue (frames
//! and bytes) that the node thread fills without ever blocking, and one task that
//! dials the peer, runs the connection, and on failure drops what was queued and
//! redials after a jittered exponential backoff. While it backs off, sends to the
//! peer are refused at once (raft hears "unreachable" and probes later).
//!
//! One link per peer *process* (per pinned key), whatever the number of groups
//! and replica ids it hosts.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_util::codec::FramedRead;
use vaultfleet::ReplicaId;

use crate::backoff::Backoff;
use crate::connection::{self, RecordReader};
use crate::directory::PeerDirectory;
use crate::error::{ConnectionError, HandshakeError, SendError};
use crate::handshake::{initiate, Session};
use crate::keys::PublicKey;
use crate::stats::Counters;
use crate::transport::{record_close, Shared};
use crate::wire::record::record_codec;

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
}

impl PeerLink {
    /// True while the link backs off after a failure, or after it closed.
    pub fn is_down(&self) -> bool {
        matches!(self.state.load(Ordering::Acquire), BACKOFF | CLOSED)
    }

    fn set_state(&self, state: u8) {
        self.state.store(state, Ordering::Release);
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
            attempt = dial(&shared, &directory, address, link.key) => attempt,
        };
        match attempt {
            Ok((reader, writer, session)) => {
                Counters::bump(&shared.counters.connections_dialed);
                link.set_state(CONNECTED);
                tracing::debug!(peer = %link.key, %address, "connected");
                let started = Instant::now();
                let reason = connection::run(
                    Arc::clone(&shared),
                    reader,
                    writer,
                    session,
                    Some(&mut queue),
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
        let delay = backoff.next();
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    link.set_state(CLOSED);
    let dropped = queue.drain();
    Counters::add(&shared.counters.frames_dropped_on_disconnect, dropped);
    shared.forget_link(&link);
}

/// Opens a TCP connection to `address` and runs the initiator's handshake
/// against `key`, each within its time limit.
async fn dial(
    shared: &Shared,
    directory: &PeerDirectory,
    address: std::net::SocketAddr,
    key: PublicKey,
) -> Result<(RecordReader, tokio::net::tcp::OwnedWriteHalf, Session), HandshakeError> {
    let stream = timeout(shared.config.connect_timeout, TcpStream::connect(address))
        .await
        .map_err(|_| HandshakeError::ConnectTimeout)?
        .map_err(HandshakeError::Io)?;
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = FramedRead::new(read, record_codec());
    let session = timeout(
        shared.config.handshake_timeout,
        initiate(&mut reader, &mut write, directory, key, None),
    )
    .await
    .map_err(|_| HandshakeError::Timeout)??;
    Ok((reader, write, session))
}
