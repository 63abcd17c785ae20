//! [`NetTransport`]: the engine's [`Transport`] over TCP and Noise.
//!
//! The node thread calls [`Transport::send`], which encodes the raft message,
//! checks it against the frame limit and hands it to the destination process's
//! bounded queue without blocking. Everything else runs on a tokio runtime the
//! transport owns (or one it was given): one listener per process, one task per
//! inbound connection, one task per peer process for outbound messages.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::net::TcpStream;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use vaultfleet::replica::encode_message;
use vaultfleet::runtime::NodeApi;
use vaultfleet::transport::{Envelope, Inbox, Transport, TransportError};
use vaultfleet::ReplicaId;

use crate::config::NetConfig;
use crate::connection;
use crate::directory::PeerDirectory;
use crate::error::{ConnectionError, DirectoryError, HandshakeError, NetError, SendError};
use crate::handshake::{respond, Role};
use crate::keys::PublicKey;
use crate::link::{self, PeerLink};
use crate::stats::{Counters, NetStats};
use crate::wire::frame::{encode_raft, RaftHeader, RAFT_HEADER_BYTES};
use crate::wire::record::record_codec;

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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads)
            .thread_name("vaultfleet-net")
            .enable_io()
            .enable_time()
            .build()
            .map_err(NetError::Runtime)?;
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
        let shared = Arc::new(Shared {
            config,
            directory: RwLock::new(Arc::new(directory)),
            directory_changed,
            routes: RwLock::new(BTreeMap::new()),
            served: RwLock::new(BTreeMap::new()),
            links: Mutex::new(BTreeMap::new()),
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
        if !self.inner.shared.directory().is_local(replica) {
            return Err(NetError::NotLocal(replica));
        }
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
        if !self.inner.shared.directory().is_local(replica) {
            return Err(NetError::NotLocal(replica));
        }
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
    pub fn try_send(&self, envelope: Envelope) -> Result<(), SendError> {
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
            return Ok(());
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
        let payload = encode_message(&envelope.message).map_err(SendError::Encode)?;
        let bytes = RAFT_HEADER_BYTES + payload.len();
        let bytes_max = shared.config.frame_bytes_max;
        if bytes > bytes_max {
            Counters::bump(&c.sends_refused_too_large);
            return Err(SendError::TooLarge {
                to,
                bytes,
                bytes_max,
            });
        }
        let frame = encode_raft(RaftHeader { group, from, to }, &payload);
        link.enqueue(frame, to, shared.config.queue_bytes_max)
            .inspect_err(|_| Counters::bump(&c.sends_refused_queue_full))
    }

    fn link_to(&self, key: PublicKey) -> Arc<PeerLink> {
        let shared = &self.inner.shared;
        let mut links = shared.links.lock();
        Arc::clone(links.entry(key).or_insert_with(|| link::spawn(shared, key)))
    }
}

impl Transport for NetTransport {
    fn send(&self, envelope: Envelope) -> Result<(), TransportError> {
        self.try_send(envelope).map_err(TransportError::from)
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    _closed: std::sync::mpsc::Sender<()>,
) {
    let slots = Arc::new(Semaphore::new(shared.config.inbound_connections_max));
    loop {
        let accepted = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, address)) => match Arc::clone(&slots).try_acquire_owned() {
                Ok(permit) => {
                    shared.runtime.spawn(serve_inbound(
                        Arc::clone(&shared),
                        stream,
                        address,
                        permit,
                    ));
                }
                Err(_) => {
                    Counters::bump(&shared.counters.inbound_refused_limit);
                    tracing::warn!(%address, "refused a connection: inbound_connections_max reached");
                }
            },
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(shared.config.backoff_min).await;
            }
        }
    }
    drop(listener);
}

async fn serve_inbound(
    shared: Arc<Shared>,
    stream: TcpStream,
    address: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = FramedRead::new(read, record_codec());
    let directory = shared.directory();
    let c = &shared.counters;
    let handshake = tokio::select! {
        _ = shared.cancel.cancelled() => return,
        h = timeout(shared.config.handshake_timeout, respond(&mut reader, &mut write, &directory)) => h,
    };
    let session = match handshake {
        Err(_) => {
            Counters::bump(&c.handshakes_timed_out);
            tracing::debug!(%address, "inbound handshake timed out");
            return;
        }
        Ok(Err(e)) => {
            if matches!(e, HandshakeError::UnpinnedKey(_)) {
                Counters::bump(&c.handshakes_refused_unpinned);
                tracing::warn!(%address, error = %e, "refused a peer");
            } else if matches!(e, HandshakeError::RoleMismatch { .. }) {
                Counters::bump(&c.handshakes_refused_role);
                tracing::warn!(%address, error = %e, "refused a key speaking in another role");
            } else {
                Counters::bump(&c.handshakes_failed);
                tracing::info!(%address, error = %e, "inbound handshake failed");
            }
            return;
        }
        Ok(Ok(session)) => session,
    };
    let key = session.remote_key;
    if session.role == Role::Client {
        Counters::bump(&c.client_connections_accepted);
        tracing::debug!(%address, client = %key, "accepted a client");
        let reason = crate::server::run(Arc::clone(&shared), reader, write, session).await;
        record_close(&shared, key, &reason);
        return;
    }
    Counters::bump(&c.connections_accepted);
    tracing::debug!(%address, peer = %key, ids = ?session.remote_ids, "accepted");
    let reason = connection::run(Arc::clone(&shared), reader, write, session, None).await;
    record_close(&shared, key, &reason);
}
