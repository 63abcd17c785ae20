//! [`NetTransport`]: the engine's [`Transport`] over TCP and Noise.
//!
//! The node thread calls [`Transport::send`], which encodes the raft message,
//! checks it against the frame limit and hands it to the destination process's
//! bounded queue without blocking. Everything else runs on a tokio runtime the
//! transport owns (or one it was given): one listener per process, one task per
//! inbound connection, one task per peer process for outbound messages.
//!
//! Inbound connections pass two pools: a small one while they handshake
//! (`handshakes_max`, at most `handshakes_per_ip_max` per source IP), then,
//! once the initiator's first transport record decrypted within
//! `handshake_timeout` of the accept, the established pool
//! (`inbound_connections_max` for peers, `client_connections_max` for
//! clients), with at most `connections_per_peer_key_max`
//! (or `_client_key_max`) per key: a newer connection closes the oldest.
//! A replayed first handshake message therefore never leaves the first pool,
//! and cannot evict the genuine connection of its key.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use protobuf2::Message as _;
use raft::prelude::MessageType;

use parking_lot::{Mutex, RwLock};
use tokio::net::TcpStream;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Instant};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use vaultfleet::codec::Codec as _;
use vaultfleet::replica::encode_message;
use vaultfleet::runtime::NodeApi;
use vaultfleet::snapshot::{SnapshotFiles, SnapshotReader};
use vaultfleet::transport::{
    Envelope, Inbox, SnapshotDone, SnapshotSent, Transport, TransportError,
};
use vaultfleet::ReplicaId;

use crate::config::NetConfig;
use crate::connection;
use crate::directory::PeerDirectory;
use crate::error::{ConnectionError, DirectoryError, HandshakeError, NetError, SendError};
use crate::handshake::{respond, Role};
use crate::keys::PublicKey;
use crate::link::{self, OutSnapshot, PeerLink};
use crate::stats::{Counters, NetStats};
use crate::stream::OutStream;
use crate::wire::frame::{
    encode_raft, encode_stream_open, ChunkHeader, RaftHeader, StreamHeader, RAFT_HEADER_BYTES,
    STREAM_HEADER_BYTES,
};
use crate::wire::record::{record_codec, NOISE_MESSAGE_BYTES_MAX};

/// How long [`NetTransport::shutdown`] waits for the listener to close.
const LISTENER_CLOSE_WAIT: Duration = Duration::from_secs(2);

type Routes = BTreeMap<u64, BTreeMap<ReplicaId, Arc<dyn Inbox>>>;

/// The nodes served to clients, by (group, replica).
type Served = BTreeMap<(u64, ReplicaId), Arc<dyn NodeApi>>;

/// Why no inbox was found for a frame.
pub(crate) enum RouteMiss {
    /// No replica of the group is hosted here.
    Group,
    /// The group is hosted, but not this replica of it.
    Replica,
}

/// State shared by the transport's handle and its tasks.
pub(crate) struct Shared {
    pub config: NetConfig,
    directory: RwLock<Arc<PeerDirectory>>,
    pub directory_changed: watch::Sender<u64>,
    routes: RwLock<Routes>,
    served: RwLock<Served>,
    links: Mutex<BTreeMap<PublicKey, Arc<PeerLink>>>,
    /// Handshaking inbound connections per source IP.
    handshakes_by_ip: Mutex<BTreeMap<IpAddr, usize>>,
    /// Established inbound connections per key, oldest first.
    /// Inbound connections by key and role (`true`: as a client): a peer key
    /// also allowed as a service client's counts its two roles apart.
    inbound_by_key: Mutex<BTreeMap<(PublicKey, bool), InboundOfKey>>,
    next_connection: AtomicU64,
    /// The id of the next streamed snapshot this process sends.
    next_stream: AtomicU64,
    /// Streamed snapshots being received (bounded by `snapshot_streams_max`).
    pub streams_receiving: AtomicUsize,
    /// The same, by the peer sending them (each at most half the slots, at
    /// least one): one peer, honest on a slow link or not, cannot hold them
    /// all.
    pub streams_by_peer: Mutex<BTreeMap<PublicKey, usize>>,
    /// Streamed snapshots' file workers running (a stream let go while its
    /// worker waits in the disk gives its slot back before the worker ends;
    /// bounded by twice `snapshot_streams_max`, `crate::stream`).
    pub stream_workers: AtomicUsize,
    /// The same, by the peer whose stream each serves (each at most twice
    /// its share of the slots): one peer cannot take them all.
    pub stream_workers_by_peer: Mutex<BTreeMap<PublicKey, usize>>,
    /// The client connections' own pool and the process-wide bounds on their
    /// requests in flight (`crate::server`).
    pub clients: crate::server::ClientBudget,
    pub counters: Counters,
    pub cancel: CancellationToken,
    pub runtime: Handle,
}

impl Shared {
    /// The directory in force.
    pub fn directory(&self) -> Arc<PeerDirectory> {
        Arc::clone(&self.directory.read())
    }

    /// The inbox of replica `to` of `group`.
    pub fn route(&self, group: u64, to: ReplicaId) -> Result<Arc<dyn Inbox>, RouteMiss> {
        let routes = self.routes.read();
        let replicas = routes.get(&group).ok_or(RouteMiss::Group)?;
        replicas.get(&to).cloned().ok_or(RouteMiss::Replica)
    }

    /// The node serving clients as replica `replica` of `group`.
    pub fn served(&self, group: u64, replica: ReplicaId) -> Option<Arc<dyn NodeApi>> {
        self.served.read().get(&(group, replica)).cloned()
    }

    /// Removes `link` from the map if it is still the one there.
    pub fn forget_link(&self, link: &Arc<PeerLink>) {
        let mut links = self.links.lock();
        if links.get(&link.key).is_some_and(|l| Arc::ptr_eq(l, link)) {
            links.remove(&link.key);
        }
    }
}

/// Counts and logs why a connection ended.
pub(crate) fn record_close(shared: &Shared, peer: PublicKey, reason: &ConnectionError) {
    Counters::bump(&shared.counters.connections_closed);
    match reason {
        ConnectionError::Shutdown | ConnectionError::PeerClosed => {
            tracing::debug!(%peer, reason = %reason, "connection closed");
        }
        _ => tracing::info!(%peer, reason = %reason, "connection closed"),
    }
}

struct Inner {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    listener_closed: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    runtime: Mutex<Option<Runtime>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        if let Some(runtime) = self.runtime.lock().take() {
            runtime.shutdown_background();
        }
    }
}

/// The TCP + Noise transport of one process: one listener, one queue and
/// connection per peer process, every peer key pinned in a [`PeerDirectory`].
///
/// Cheap to clone; the transport stops when [`shutdown`](Self::shutdown) is
/// called or the last clone drops.
#[derive(Clone)]
pub struct NetTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NetTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetTransport")
            .field("local_addr", &self.inner.local_addr)
            .field("key", &self.inner.shared.directory().local_public_key())
            .finish_non_exhaustive()
    }
}

impl NetTransport {
    /// Starts a transport on a runtime of its own (`config.worker_threads`
    /// threads) and binds its listener.
    pub fn start(directory: PeerDirectory, config: NetConfig) -> Result<Self, NetError> {
        config.validate()?;
        let runtime =
            io_runtime(config.worker_threads, "vaultfleet-net").map_err(NetError::Runtime)?;
        let handle = runtime.handle().clone();
        Self::launch(handle, Some(runtime), directory, config)
    }

    /// Starts a transport on an existing tokio runtime (it needs I/O and time
    /// enabled) and binds its listener.
    pub fn start_on(
        handle: Handle,
        directory: PeerDirectory,
        config: NetConfig,
    ) -> Result<Self, NetError> {
        config.validate()?;
        Self::launch(handle, None, directory, config)
    }

    fn launch(
        handle: Handle,
        runtime: Option<Runtime>,
        directory: PeerDirectory,
        config: NetConfig,
    ) -> Result<Self, NetError> {
        if directory.is_client() {
            return Err(NetError::Directory(DirectoryError::ClientDirectory));
        }
        let address = config.listen_address;
        let listen = |source| NetError::Listen { address, source };
        let std_listener = std::net::TcpListener::bind(address).map_err(listen)?;
        std_listener.set_nonblocking(true).map_err(listen)?;
        let local_addr = std_listener.local_addr().map_err(listen)?;
        let listener = {
            let _entered = handle.enter();
            tokio::net::TcpListener::from_std(std_listener).map_err(listen)?
        };
        let (directory_changed, _) = watch::channel(0);
        let clients = crate::server::ClientBudget::new(&config);
        let shared = Arc::new(Shared {
            config,
            clients,
            directory: RwLock::new(Arc::new(directory)),
            directory_changed,
            routes: RwLock::new(BTreeMap::new()),
            served: RwLock::new(BTreeMap::new()),
            links: Mutex::new(BTreeMap::new()),
            handshakes_by_ip: Mutex::new(BTreeMap::new()),
            inbound_by_key: Mutex::new(BTreeMap::new()),
            next_connection: AtomicU64::new(0),
            next_stream: AtomicU64::new(0),
            streams_receiving: AtomicUsize::new(0),
            streams_by_peer: Mutex::new(BTreeMap::new()),
            stream_workers: AtomicUsize::new(0),
            stream_workers_by_peer: Mutex::new(BTreeMap::new()),
            counters: Counters::default(),
            cancel: CancellationToken::new(),
            runtime: handle.clone(),
        });
        let (closed_tx, closed_rx) = std::sync::mpsc::channel();
        handle.spawn(accept_loop(Arc::clone(&shared), listener, closed_tx));
        tracing::info!(%local_addr, key = %shared.directory().local_public_key(), "listening");
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                local_addr,
                listener_closed: Mutex::new(Some(closed_rx)),
                runtime: Mutex::new(runtime),
            }),
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The directory in force.
    pub fn directory(&self) -> Arc<PeerDirectory> {
        self.inner.shared.directory()
    }

    /// Replaces the directory (a new fleet epoch, a replica added or moved).
    /// Connections authenticated with a key the new directory no longer pins
    /// are closed, and their queues dropped. The fleet id, protocol version and
    /// this process's key may not change.
    pub fn update_directory(&self, next: PeerDirectory) -> Result<(), NetError> {
        let shared = &self.inner.shared;
        {
            let mut current = shared.directory.write();
            current.check_update(&next)?;
            *current = Arc::new(next);
        }
        shared
            .directory_changed
            .send_modify(|generation| *generation += 1);
        Ok(())
    }

    /// Delivers what arrives for replica `replica` of `group` to `inbox`
    /// (replacing an earlier one). `replica` must be one of the directory's
    /// local ids.
    pub fn register(
        &self,
        group: u64,
        replica: ReplicaId,
        inbox: Arc<dyn Inbox>,
    ) -> Result<(), NetError> {
        self.check_local(replica)?;
        self.inner
            .shared
            .routes
            .write()
            .entry(group)
            .or_default()
            .insert(replica, inbox);
        Ok(())
    }

    /// Stops delivering to replica `replica` of `group`.
    pub fn unregister(&self, group: u64, replica: ReplicaId) {
        let mut routes = self.inner.shared.routes.write();
        if let Some(replicas) = routes.get_mut(&group) {
            replicas.remove(&replica);
            if replicas.is_empty() {
                routes.remove(&group);
            }
        }
    }

    /// Serves client requests for `node` (replica `node.id()` of `group`,
    /// one of the directory's local ids) to client processes whose keys the
    /// directory allows ([`PeerDirectory::allow_client`]); replaces an earlier
    /// one. `docs/network.md`, "Remote clients", describes the protocol.
    pub fn serve_clients(&self, group: u64, node: Arc<dyn NodeApi>) -> Result<(), NetError> {
        let replica = node.id();
        self.check_local(replica)?;
        self.inner
            .shared
            .served
            .write()
            .insert((group, replica), node);
        Ok(())
    }

    /// Stops serving clients for replica `replica` of `group` (its requests
    /// are then answered "unknown node").
    pub fn stop_serving_clients(&self, group: u64, replica: ReplicaId) {
        self.inner.shared.served.write().remove(&(group, replica));
    }

    /// The runtime the transport's tasks run on (tests hold its worker).
    #[cfg(test)]
    pub(crate) fn runtime_handle(&self) -> Handle {
        self.inner.shared.runtime.clone()
    }

    /// The state shared with the transport's tasks (tests drive a
    /// connection's parts with it).
    #[cfg(test)]
    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.inner.shared)
    }

    /// Streamed snapshots being received now (tests check the slots are
    /// given back).
    #[cfg(test)]
    pub(crate) fn streams_receiving(&self) -> usize {
        self.inner.shared.streams_receiving.load(Ordering::Acquire)
    }

    /// The counters.
    pub fn stats(&self) -> NetStats {
        self.inner.shared.counters.snapshot()
    }

    /// Stops the transport: the listener and every connection close, queued
    /// messages are dropped and later sends fail with [`SendError::Closed`].
    /// Blocks (at most two seconds) until the listening socket is closed, so the
    /// port can be bound again. Call it from outside the runtime's threads.
    pub fn shutdown(&self) {
        self.inner.shared.cancel.cancel();
        if let Some(closed) = self.inner.listener_closed.lock().take() {
            let _ = closed.recv_timeout(LISTENER_CLOSE_WAIT);
        }
    }

    /// Queues `envelope` for its destination without blocking, or says why not.
    /// A `MsgSnapshot` goes the way of [`try_send_snapshot`](Self::try_send_snapshot),
    /// its outcome unreported.
    pub fn try_send(&self, envelope: Envelope) -> Result<(), SendError> {
        if envelope.message.get_msg_type() == MessageType::MsgSnapshot {
            return self.try_send_snapshot(envelope, Box::new(|_| {}));
        }
        let Some((link, envelope)) = self.deliver_local_or_link(envelope)? else {
            return Ok(());
        };
        let shared = &self.inner.shared;
        let c = &shared.counters;
        let (group, from, to) = (envelope.group, envelope.message.from, envelope.message.to);
        // Sized before it is encoded: a message above the frame limit (the
        // smaller of ours and the one the peer announced) is never encoded.
        let size = usize::try_from(envelope.message.compute_size()).unwrap_or(usize::MAX);
        let bytes = RAFT_HEADER_BYTES.saturating_add(size);
        let bytes_max = link.frame_limit(shared.config.frame_bytes_max);
        if bytes > bytes_max {
            Counters::bump(&c.sends_refused_too_large);
            tracing::debug!(
                to,
                bytes,
                bytes_max,
                kind = ?envelope.message.get_msg_type(),
                "refused a message above the frame limit"
            );
            return Err(SendError::TooLarge {
                to,
                bytes,
                bytes_max,
            });
        }
        let payload = encode_message(&envelope.message).map_err(SendError::Encode)?;
        let frame = encode_raft(RaftHeader { group, from, to }, &payload);
        link.enqueue(frame, to, shared.config.queue_bytes_max)
            .inspect_err(|_| Counters::bump(&c.sends_refused_queue_full))
    }

    /// Queues a snapshot message for its destination without blocking: it is
    /// encoded once here (on the caller's thread), then written in chunk frames
    /// of at most `snapshot_chunk_bytes` (and the frame limit) by the peer's
    /// connection, interleaved with its other frames. `done` hears `Written`
    /// once the last chunk was written to the socket, `Failed` if the
    /// connection fails or the link drops it first. On `Err` nothing was
    /// queued and `done` is never called.
    pub fn try_send_snapshot(
        &self,
        envelope: Envelope,
        done: SnapshotDone,
    ) -> Result<(), SendError> {
        let Some((link, envelope)) = self.deliver_local_or_link(envelope)? else {
            done(SnapshotSent::Written);
            return Ok(());
        };
        let shared = &self.inner.shared;
        let c = &shared.counters;
        let (group, from, to) = (envelope.group, envelope.message.from, envelope.message.to);
        let bytes_max = shared.config.snapshot_bytes_max;
        let size = u64::from(envelope.message.compute_size());
        if size > bytes_max {
            Counters::bump(&c.sends_refused_too_large);
            return Err(SendError::TooLarge {
                to,
                bytes: usize::try_from(size).unwrap_or(usize::MAX),
                bytes_max: usize::try_from(bytes_max).unwrap_or(usize::MAX),
            });
        }
        let metadata = envelope.message.get_snapshot().get_metadata();
        let (index, term) = (metadata.index, metadata.term);
        let payload = encode_message(&envelope.message).map_err(SendError::Encode)?;
        let snapshot = OutSnapshot {
            header: ChunkHeader {
                raft: RaftHeader { group, from, to },
                index,
                term,
                offset: 0,
                total: payload.len() as u64,
            },
            bytes: payload.into(),
            chunk_bytes: shared.config.snapshot_chunk_bytes,
            done: Some(done),
        };
        link.enqueue_snapshot(snapshot, to)
            .inspect_err(|_| Counters::bump(&c.sends_refused_queue_full))
    }

    /// Queues a streamed snapshot for its destination without blocking: the
    /// message and `body`'s descriptor go in an open frame, then `body`'s
    /// chunks (read on a thread of the stream's own, started once the stream
    /// is the one its connection sends, at most a couple ahead, within the
    /// receiver's credit) in data frames of at most `snapshot_chunk_bytes`,
    /// then an end frame
    /// (`crate::stream` describes the protocol). `done` hears `Written` once
    /// the receiver said it delivered the message to its replica (kind 11,
    /// after the end frame), so what raft sends next reaches the replica after
    /// the snapshot; `Failed` if the file could not be read, the connection
    /// failed, the link dropped it, the receiver refused it, granted it no
    /// credit or did not say it delivered it within `snapshot_chunk_timeout`
    /// (of the end frame); a stream given up after its open frame is
    /// cancelled at the receiver (a kind 9 frame in the sender's direction),
    /// which drops it at once. A
    /// destination in this process gets the chunks copied into its inbox's
    /// files on a thread. On `Err` nothing was queued and `done` is never
    /// called.
    pub fn try_send_snapshot_stream(
        &self,
        envelope: Envelope,
        body: Box<dyn SnapshotReader>,
        done: SnapshotDone,
    ) -> Result<(), SendError> {
        let shared = &self.inner.shared;
        if shared.cancel.is_cancelled() {
            return Err(SendError::Closed);
        }
        let c = &shared.counters;
        let (group, from, to) = (envelope.group, envelope.message.from, envelope.message.to);
        let directory = shared.directory();
        if directory.is_local(to) {
            if !directory.is_local(from) {
                return Err(SendError::NotLocal(from));
            }
            let inbox = shared
                .route(group, to)
                .map_err(|_| SendError::UnknownPeer(to))?;
            let files = inbox
                .admit_snapshot(from, body.descriptor())
                .map_err(|refused| {
                    tracing::debug!(from, to, %refused, "a local replica refused a streamed snapshot");
                    SendError::PeerDown(to)
                })?;
            return std::thread::Builder::new()
                .name("vf-net-snap-local".into())
                .spawn(move || {
                    let sent = copy_chunks(body, &*files).map(|()| inbox.deliver(envelope));
                    done(match sent {
                        Ok(()) => SnapshotSent::Written,
                        Err(()) => SnapshotSent::Failed,
                    });
                })
                .map(|_| ())
                .map_err(|_| SendError::PeerDown(to));
        }
        let Some((link, envelope)) = self.deliver_local_or_link(envelope)? else {
            // Not reached: a local destination was handled above.
            done(SnapshotSent::Failed);
            return Ok(());
        };
        let descriptor = body
            .descriptor()
            .to_bytes()
            .map_err(|source| SendError::Descriptor { to, source })?;
        let payload = encode_message(&envelope.message).map_err(SendError::Encode)?;
        let bytes = STREAM_HEADER_BYTES + descriptor.len() + payload.len();
        let bytes_max = link.frame_limit(shared.config.frame_bytes_max);
        if bytes > bytes_max {
            Counters::bump(&c.sends_refused_too_large);
            return Err(SendError::TooLarge {
                to,
                bytes,
                bytes_max,
            });
        }
        let header = StreamHeader {
            raft: RaftHeader { group, from, to },
            stream: shared.next_stream.fetch_add(1, Ordering::Relaxed),
        };
        // The reader's thread starts only when the stream becomes the
        // connection's active one: a queued stream reads nothing ahead.
        let stream = OutStream::new(
            header,
            encode_stream_open(header, &descriptor, &payload),
            body,
            done,
        );
        link.enqueue_stream(stream, to)
            .inspect_err(|_| Counters::bump(&c.sends_refused_queue_full))
    }

    /// Refuses a replica the directory does not list as local.
    fn check_local(&self, replica: ReplicaId) -> Result<(), NetError> {
        if self.inner.shared.directory().is_local(replica) {
            Ok(())
        } else {
            Err(NetError::NotLocal(replica))
        }
    }

    /// Delivers `envelope` straight to its inbox if its destination is a
    /// replica of this process (`None`), else returns it with the link to the
    /// destination's process, which is up; or says why it cannot be sent
    /// (counting the refusals that have a counter).
    fn deliver_local_or_link(
        &self,
        envelope: Envelope,
    ) -> Result<Option<(Arc<PeerLink>, Envelope)>, SendError> {
        let shared = &self.inner.shared;
        if shared.cancel.is_cancelled() {
            return Err(SendError::Closed);
        }
        let c = &shared.counters;
        let (group, from, to) = (envelope.group, envelope.message.from, envelope.message.to);
        let directory = shared.directory();
        if !directory.is_local(from) {
            return Err(SendError::NotLocal(from));
        }
        if directory.is_local(to) {
            let inbox = shared
                .route(group, to)
                .map_err(|_| SendError::UnknownPeer(to))?;
            inbox.deliver(envelope);
            Counters::bump(&c.frames_delivered_local);
            return Ok(None);
        }
        let Some(key) = directory.key_of(to) else {
            Counters::bump(&c.sends_refused_unknown_peer);
            return Err(SendError::UnknownPeer(to));
        };
        let link = self.link_to(key);
        if link.is_down() {
            Counters::bump(&c.sends_refused_peer_down);
            return Err(SendError::PeerDown(to));
        }
        Ok(Some((link, envelope)))
    }

    fn link_to(&self, key: PublicKey) -> Arc<PeerLink> {
        let shared = &self.inner.shared;
        let mut links = shared.links.lock();
        Arc::clone(links.entry(key).or_insert_with(|| link::spawn(shared, key)))
    }
}

/// A multi-threaded runtime of `worker_threads` threads named `name`, with
/// I/O and time enabled: what a transport or a remote client runs on.
pub(crate) fn io_runtime(worker_threads: usize, name: &str) -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .thread_name(name)
        .enable_io()
        .enable_time()
        .build()
}

impl Transport for NetTransport {
    fn send(&self, envelope: Envelope) -> Result<(), TransportError> {
        self.try_send(envelope).map_err(TransportError::from)
    }

    fn send_snapshot(&self, envelope: Envelope, done: SnapshotDone) -> Result<(), TransportError> {
        self.try_send_snapshot(envelope, done)
            .map_err(TransportError::from)
    }

    fn send_snapshot_stream(
        &self,
        envelope: Envelope,
        body: Box<dyn SnapshotReader>,
        done: SnapshotDone,
    ) -> Result<(), TransportError> {
        self.try_send_snapshot_stream(envelope, body, done)
            .map_err(TransportError::from)
    }
}

/// Copies a streamed snapshot's chunks into a replica of this process's
/// files, chunk by chunk.
fn copy_chunks(body: Box<dyn SnapshotReader>, files: &dyn SnapshotFiles) -> Result<(), ()> {
    match vaultfleet::snapshot::copy_snapshot(body, files, || true) {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, "a streamed snapshot to a local replica failed");
            Err(())
        }
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    _closed: std::sync::mpsc::Sender<()>,
) {
    let handshakes = Arc::new(Semaphore::new(shared.config.handshakes_max));
    let established = Arc::new(Semaphore::new(shared.config.inbound_connections_max));
    loop {
        let accepted = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, address)) => {
                // Refusals are counted, and logged at debug only: a flood
                // must not flood the logs too.
                let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
                    Counters::bump(&shared.counters.handshakes_refused_limit);
                    tracing::debug!(%address, "refused a connection: handshakes_max reached");
                    continue;
                };
                let Some(ip) = IpGuard::take(&shared, address.ip()) else {
                    Counters::bump(&shared.counters.handshakes_refused_ip_limit);
                    tracing::debug!(%address, "refused a connection: handshakes_per_ip_max reached");
                    continue;
                };
                shared.runtime.spawn(serve_inbound(
                    Arc::clone(&shared),
                    stream,
                    address,
                    (permit, ip),
                    Arc::clone(&established),
                ));
            }
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(shared.config.backoff_min).await;
            }
        }
    }
    drop(listener);
}

/// One handshaking connection counted against its source IP.
struct IpGuard {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl IpGuard {
    fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<Self> {
        let mut by_ip = shared.handshakes_by_ip.lock();
        let count = by_ip.entry(ip).or_insert(0);
        if *count >= shared.config.handshakes_per_ip_max {
            return None;
        }
        *count += 1;
        Some(Self {
            shared: Arc::clone(shared),
            ip,
        })
    }
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        let mut by_ip = self.shared.handshakes_by_ip.lock();
        if let Some(count) = by_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// One established connection registered under its key.
/// One key's inbound connections in one role, oldest first: id and cancel.
type InboundOfKey = VecDeque<(u64, CancellationToken)>;

struct KeyGuard {
    shared: Arc<Shared>,
    key: (PublicKey, bool),
    id: u64,
}

impl KeyGuard {
    /// Registers a connection of `key`, closing the oldest ones beyond `max`.
    fn register(
        shared: &Arc<Shared>,
        key: (PublicKey, bool),
        max: usize,
    ) -> (Self, CancellationToken) {
        let cancel = shared.cancel.child_token();
        let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
        let mut by_key = shared.inbound_by_key.lock();
        let connections = by_key.entry(key).or_default();
        connections.push_back((id, cancel.clone()));
        while connections.len() > max {
            if let Some((_, oldest)) = connections.pop_front() {
                Counters::bump(&shared.counters.connections_replaced);
                oldest.cancel();
            }
        }
        let guard = Self {
            shared: Arc::clone(shared),
            key,
            id,
        };
        (guard, cancel)
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        let mut by_key = self.shared.inbound_by_key.lock();
        if let Some(connections) = by_key.get_mut(&self.key) {
            connections.retain(|(id, _)| *id != self.id);
            if connections.is_empty() {
                by_key.remove(&self.key);
            }
        }
    }
}

async fn serve_inbound(
    shared: Arc<Shared>,
    stream: TcpStream,
    address: SocketAddr,
    handshaking: (OwnedSemaphorePermit, IpGuard),
    established: Arc<Semaphore>,
) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = FramedRead::new(read, record_codec());
    let directory = shared.directory();
    let c = &shared.counters;
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let own_limit = shared.config.frame_bytes_max;
    let handshake = tokio::select! {
        _ = shared.cancel.cancelled() => return,
        h = timeout_at(deadline, respond(&mut reader, &mut write, &directory, own_limit)) => h,
    };
    let mut session = match handshake {
        Err(_) => {
            Counters::bump(&c.handshakes_timed_out);
            tracing::debug!(%address, "inbound handshake timed out");
            return;
        }
        Ok(Err(e)) => {
            if matches!(e, HandshakeError::UnpinnedKey(_)) {
                Counters::bump(&c.handshakes_refused_unpinned);
                tracing::debug!(%address, error = %e, "refused a peer");
            } else if matches!(e, HandshakeError::RoleMismatch { .. }) {
                Counters::bump(&c.handshakes_refused_role);
                tracing::debug!(%address, error = %e, "refused a key speaking in another role");
            } else {
                Counters::bump(&c.handshakes_failed);
                tracing::debug!(%address, error = %e, "inbound handshake failed");
            }
            return;
        }
        Ok(Ok(session)) => session,
    };
    // Established only once the initiator's first transport record decrypts,
    // still within the handshake's deadline: a replayed first handshake
    // message (which IK cannot detect) never gets this far.
    let first = tokio::select! {
        _ = shared.cancel.cancelled() => return,
        r = timeout_at(deadline, reader.next()) => r,
    };
    let record = match first {
        Ok(Some(Ok(record))) => record,
        Err(_) | Ok(None) | Ok(Some(Err(_))) => {
            Counters::bump(&c.handshakes_unconfirmed);
            tracing::debug!(%address, "no transport record followed the handshake in time");
            return;
        }
    };
    let mut plaintext = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
    let n = match session.noise.read_message(&record, &mut plaintext) {
        Ok(n) => n,
        Err(e) => {
            Counters::bump(&c.records_undecryptable);
            Counters::bump(&c.handshakes_unconfirmed);
            tracing::debug!(%address, error = %e, "the first transport record did not decrypt");
            return;
        }
    };
    plaintext.truncate(n);
    drop(handshaking);
    // Clients have a pool of their own: they never take the slots peers need.
    let _permit = if session.role == Role::Client {
        let Some(permit) = shared.clients.admit() else {
            Counters::bump(&c.client_connections_refused_limit);
            tracing::debug!(%address, "refused a client: client_connections_max reached");
            return;
        };
        permit
    } else {
        let Ok(permit) = established.try_acquire_owned() else {
            Counters::bump(&c.inbound_refused_limit);
            tracing::debug!(%address, "refused a connection: inbound_connections_max reached");
            return;
        };
        permit
    };
    let key = session.remote_key;
    Counters::add(&c.hello_claims_ignored, session.claims_ignored as u64);
    if session.role == Role::Client {
        let (_guard, cancel) = KeyGuard::register(
            &shared,
            (key, true),
            shared.config.connections_per_client_key_max,
        );
        Counters::bump(&c.client_connections_accepted);
        tracing::debug!(%address, client = %key, "accepted a client");
        let reason = crate::server::run(
            Arc::clone(&shared),
            reader,
            write,
            session,
            cancel,
            plaintext,
        )
        .await;
        record_close(&shared, key, &reason);
        return;
    }
    let (_guard, cancel) = KeyGuard::register(
        &shared,
        (key, false),
        shared.config.connections_per_peer_key_max,
    );
    Counters::bump(&c.connections_accepted);
    tracing::debug!(%address, peer = %key, ids = ?session.remote_ids, "accepted");
    let reason = connection::run(
        Arc::clone(&shared),
        reader,
        write,
        session,
        None,
        cancel,
        plaintext,
    )
    .await;
    record_close(&shared, key, &reason);
}
