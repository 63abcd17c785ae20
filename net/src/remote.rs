//! The client side of the client protocol: [`RemoteNode`], one node of the
//! fleet reached over TCP and Noise, implementing the engine's
//! [`NodeApi`], so that
//! [`Client::connect_to`](vaultfleet::runtime::Client::connect_to) gives a
//! remote session with the same leader finding, `NotLeader` hints, retries with
//! the same sequence and at-most-once semantics as an in-process one.
//!
//! ```no_run
//! use vaultfleet::runtime::ClientConfig;
//! use vaultfleet_net::remote::{RemoteClient, RemoteConfig};
//! use vaultfleet_net::{PeerDirectory, PeerEntry, StaticSecret};
//!
//! // This client's key; every node's directory lists it with `allow_client`.
//! let secret = StaticSecret::generate()?;
//! let mut directory = PeerDirectory::client("fleet-1", secret)?;
//! # let (address, key) = ("127.0.0.1:7000".parse()?, StaticSecret::generate()?.public_key());
//! directory.insert(1, PeerEntry { address, datacenter: "dc-a".into(), public_key: key })?;
//! // ... every replica of the fleet ...
//! let remote = RemoteClient::start(directory, RemoteConfig::default())?;
//! let client = remote.session(7, ClientConfig::default())?; // group 7
//! client.propose(b"command".to_vec())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Each `RemoteNode` owns one connection, dialled and re-dialled (jittered
//! exponential backoff) by a task on the remote client's tokio runtime. Its
//! calls never block: a request is encoded, its slot registered under a fresh
//! correlation id and the frame queued (bounded: beyond `in_flight_max`
//! unanswered requests a call fails with `Overloaded`). While the connection is
//! down calls fail at once with `Stopped` (retryable: the client tries another
//! node). When a connection is lost, every unanswered slot is filled with
//! `TimedOut` (the command may or may not have been applied; the client retries
//! it elsewhere with the same sequence, which applies it at most once).
//!
//! A node refuses a membership change or a leadership transfer from a client
//! key without the admin role (`PeerDirectory::allow_client_as(key,
//! ClientRole::Admin)`) with `Forbidden`; a reply too large for the frame
//! limit arrives as `ReplyTooLarge` (the request WAS carried out). Both are
//! typed [`RequestError`]s the engine client does not retry.
//!
//! The node's [`Status`] is cached: every reply carries the node's status, and
//! the connection asks for it every `status_interval`; while the connection is
//! down the cache says "follower, no known leader".

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use raft::StateRole;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use vaultfleet::codec::DecodeError;
use vaultfleet::replica::{MembershipChange, RequestError, Status};
use vaultfleet::runtime::{Client, ClientConfig, ClientError, NodeApi, ResponseSlot};
use vaultfleet::wire::Request;
use vaultfleet::ReplicaId;

use crate::backoff::Backoff;
use crate::config::NetConfig;
use crate::connection::{self, RecordReader};
use crate::directory::PeerDirectory;
use crate::error::{ConfigError, ConnectionError};
use crate::handshake::Session;
use crate::link::dial;
use crate::server::{read_frames, write_sealed, Noise};
use crate::transport::io_runtime;
use crate::wire::client::{
    encode_request, ClientFrame, ClientOp, ClientOutcome, ClientReply, ClientRequest,
};
use crate::wire::frame::{encode_keepalive, FRAME_LENGTH_BYTES};

/// Settings of a [`RemoteClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteConfig {
    /// Connection settings: `frame_bytes_max` (keep it equal to the nodes'),
    /// `batch_bytes_max`, the connect, handshake, write and idle timeouts, the
    /// keepalive interval, the reconnect backoff and `worker_threads` (of the
    /// runtime [`RemoteClient::start`] makes). `listen_address` and the queue
    /// and inbound limits are not used: a client does not listen.
    pub net: NetConfig,
    /// How often each connection asks its node for its status.
    pub status_interval: Duration,
    /// Unanswered requests one node's connection holds before calls fail with
    /// `Overloaded` (keep it at or below the nodes' `client_in_flight_max`;
    /// at most 2^20 are used).
    pub in_flight_max: usize,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            net: NetConfig::default(),
            status_interval: Duration::from_millis(200),
            in_flight_max: 256,
        }
    }
}

impl RemoteConfig {
    /// Checks that the settings fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.net.validate()?;
        if self.status_interval.is_zero() {
            return Err(ConfigError::Zero {
                what: "status_interval",
            });
        }
        if self.in_flight_max == 0 {
            return Err(ConfigError::Zero {
                what: "in_flight_max",
            });
        }
        Ok(())
    }
}

/// Starting a remote client or reaching one of its nodes failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// A remote client proves a client key: its directory is made with
    /// [`PeerDirectory::client`].
    #[error("a remote client needs a client process's directory (PeerDirectory::client)")]
    NotAClientDirectory,
    /// The settings are invalid.
    #[error("invalid remote client settings")]
    Config(#[from] ConfigError),
    /// The async runtime could not start.
    #[error("could not start the remote client's runtime")]
    Runtime(#[source] std::io::Error),
    /// The replica is not pinned in the directory.
    #[error("replica {0} is not pinned in the directory")]
    UnknownReplica(ReplicaId),
    /// The remote client was shut down.
    #[error("the remote client is shut down")]
    Closed,
    /// A directory update changed the fleet id, the protocol version or this
    /// client's key.
    #[error("invalid directory update")]
    Directory(#[from] crate::error::DirectoryError),
}

/// State shared by the remote client's handle, its nodes and their tasks.
struct Shared {
    directory: RwLock<Arc<PeerDirectory>>,
    config: RemoteConfig,
    runtime: Handle,
    cancel: CancellationToken,
}

impl Shared {
    fn directory(&self) -> Arc<PeerDirectory> {
        Arc::clone(&self.directory.read())
    }
}

struct Inner {
    shared: Arc<Shared>,
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

/// A client process's connections to the nodes of a fleet: makes one
/// [`RemoteNode`] per (group, replica) and sessions over them.
///
/// Cheap to clone; stops when [`shutdown`](Self::shutdown) is called or the
/// last clone and the last of its nodes drop.
#[derive(Clone)]
pub struct RemoteClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RemoteClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteClient")
            .field("key", &self.inner.shared.directory().local_public_key())
            .finish_non_exhaustive()
    }
}

impl RemoteClient {
    /// Starts a remote client on a runtime of its own
    /// (`config.net.worker_threads` threads).
    pub fn start(directory: PeerDirectory, config: RemoteConfig) -> Result<Self, RemoteError> {
        config.validate()?;
        let runtime = io_runtime(config.net.worker_threads, "vaultfleet-client")
            .map_err(RemoteError::Runtime)?;
        let handle = runtime.handle().clone();
        Self::launch(handle, Some(runtime), directory, config)
    }

    /// Starts a remote client on an existing tokio runtime (I/O and time enabled).
    pub fn start_on(
        handle: Handle,
        directory: PeerDirectory,
        config: RemoteConfig,
    ) -> Result<Self, RemoteError> {
        config.validate()?;
        Self::launch(handle, None, directory, config)
    }

    fn launch(
        handle: Handle,
        runtime: Option<Runtime>,
        directory: PeerDirectory,
        config: RemoteConfig,
    ) -> Result<Self, RemoteError> {
        if !directory.is_client() {
            return Err(RemoteError::NotAClientDirectory);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    directory: RwLock::new(Arc::new(directory)),
                    config,
                    runtime: handle,
                    cancel: CancellationToken::new(),
                }),
                runtime: Mutex::new(runtime),
            }),
        })
    }

    /// The directory in force.
    pub fn directory(&self) -> Arc<PeerDirectory> {
        self.inner.shared.directory()
    }

    /// Replaces the directory (a new fleet epoch: replicas added, moved or
    /// dropped). A node whose replica is no longer pinned to the key its
    /// connection proved drops that connection at its next status tick and
    /// re-dials with the new pin; one no longer pinned at all stops for good
    /// ([`NodeApi::is_stopped`]).
    pub fn update_directory(&self, next: PeerDirectory) -> Result<(), RemoteError> {
        if !next.is_client() {
            return Err(RemoteError::NotAClientDirectory);
        }
        let mut current = self.inner.shared.directory.write();
        current.check_update(&next)?;
        *current = Arc::new(next);
        Ok(())
    }

    /// Connects to replica `replica` of `group` (it must be pinned in the
    /// directory): the node's connection is dialled in the background.
    pub fn node(&self, group: u64, replica: ReplicaId) -> Result<Arc<RemoteNode>, RemoteError> {
        let shared = &self.inner.shared;
        if shared.cancel.is_cancelled() {
            return Err(RemoteError::Closed);
        }
        if shared.directory().key_of(replica).is_none() {
            return Err(RemoteError::UnknownReplica(replica));
        }
        let (tx, rx) = mpsc::channel(
            shared
                .config
                .in_flight_max
                .min(crate::server::CLIENT_IN_FLIGHT_LIMIT),
        );
        let state = Arc::new(NodeState {
            id: replica,
            group,
            tx,
            pending: Mutex::new(Pending {
                connected: false,
                slots: BTreeMap::new(),
            }),
            status: Mutex::new(Status::unknown(replica)),
            next_correlation: AtomicU64::new(1),
            connections: AtomicU64::new(0),
            statuses: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            admin_refused: AtomicBool::new(false),
            cancel: shared.cancel.child_token(),
        });
        shared
            .runtime
            .spawn(node_loop(Arc::clone(shared), Arc::clone(&state), rx));
        Ok(Arc::new(RemoteNode {
            _client: Arc::clone(&self.inner),
            state,
        }))
    }

    /// One [`RemoteNode`] for every replica the directory pins, as the engine
    /// client takes them (ascending replica id).
    pub fn nodes(&self, group: u64) -> Result<Vec<Arc<dyn NodeApi>>, RemoteError> {
        let ids: Vec<ReplicaId> = self.directory().peers().map(|(id, _)| id).collect();
        ids.into_iter()
            .map(|id| self.node(group, id).map(|n| n as Arc<dyn NodeApi>))
            .collect()
    }

    /// Registers a session with group `group` over every pinned replica:
    /// [`Client::connect_to`] on [`nodes`](Self::nodes).
    pub fn session(&self, group: u64, cfg: ClientConfig) -> Result<Client, ClientError> {
        let nodes = self.nodes(group).map_err(|_| ClientError::NoNodes)?;
        Client::connect_to(nodes, cfg)
    }

    /// Closes every connection; calls on its nodes then fail with `Stopped`
    /// and [`NodeApi::is_stopped`] is true.
    pub fn shutdown(&self) {
        self.inner.shared.cancel.cancel();
    }
}

/// What a node's connection has sent and not yet had answered.
struct Pending {
    connected: bool,
    slots: BTreeMap<u64, ResponseSlot>,
}

struct NodeState {
    id: ReplicaId,
    group: u64,
    tx: mpsc::Sender<Vec<u8>>,
    pending: Mutex<Pending>,
    status: Mutex<Status>,
    next_correlation: AtomicU64,
    connections: AtomicU64,
    /// Statuses of this replica received (every reply carries one).
    statuses: AtomicU64,
    closed: AtomicBool,
    /// The node refused an administrative request `Forbidden` on the current
    /// connection (reset on every connect: the directory may have changed).
    admin_refused: AtomicBool,
    cancel: CancellationToken,
}

impl NodeState {
    /// Marks the connection down: later calls fail at once, the cached status
    /// names no leader, and every unanswered slot learns `TimedOut`.
    fn disconnected(&self) {
        let slots = {
            let mut pending = self.pending.lock();
            pending.connected = false;
            std::mem::take(&mut pending.slots)
        };
        {
            let mut status = self.status.lock();
            status.role = StateRole::Follower;
            status.leader = None;
            status.followers.clear();
        }
        for slot in slots.into_values() {
            let _ = slot.fill(Err(RequestError::TimedOut));
        }
    }

    /// Handles one frame from the node.
    fn frame(&self, body: &[u8]) -> Result<(), ConnectionError> {
        let reply = match ClientFrame::decode(body).map_err(ConnectionError::Frame)? {
            ClientFrame::Keepalive => return Ok(()),
            ClientFrame::Request(_) => {
                return Err(ConnectionError::Frame(DecodeError::Invalid {
                    what: "a node sent a request frame",
                }))
            }
            ClientFrame::Reply(reply) => reply,
        };
        let ClientReply {
            correlation,
            status,
            outcome,
        } = reply;
        match status {
            Some(status) if status.id == self.id => {
                *self.status.lock() = status;
                self.statuses.fetch_add(1, Ordering::Release);
            }
            Some(status) => {
                tracing::warn!(
                    replica = self.id,
                    claimed = status.id,
                    "a node answered with another replica's status; ignored"
                );
            }
            None => {}
        }
        if matches!(outcome, ClientOutcome::Error(RequestError::Forbidden)) {
            self.admin_refused.store(true, Ordering::Release);
            tracing::warn!(
                replica = self.id,
                "the node refused an administrative request: this client key is not an admin key"
            );
        }
        let slot = self.pending.lock().slots.remove(&correlation);
        let Some(slot) = slot else {
            // A status request or a transfer: only the status mattered.
            return Ok(());
        };
        let result = match outcome {
            ClientOutcome::Reply(reply) => Ok(reply),
            ClientOutcome::Error(e) => Err(e),
            ClientOutcome::Done | ClientOutcome::UnknownNode => {
                tracing::warn!(
                    replica = self.id,
                    group = self.group,
                    ?outcome,
                    "the node does not serve this request; trying others"
                );
                Err(RequestError::Stopped)
            }
        };
        let _ = slot.fill(result);
        Ok(())
    }
}

/// One node of the fleet reached over the network: the engine's
/// [`NodeApi`] for a [`Client`].
pub struct RemoteNode {
    _client: Arc<Inner>,
    state: Arc<NodeState>,
}

impl std::fmt::Debug for RemoteNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteNode")
            .field("id", &self.state.id)
            .field("group", &self.state.group)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Drop for RemoteNode {
    fn drop(&mut self) {
        self.state.cancel.cancel();
    }
}

impl RemoteNode {
    /// The raft group.
    pub fn group(&self) -> u64 {
        self.state.group
    }

    /// True while the connection is up.
    pub fn is_connected(&self) -> bool {
        self.state.pending.lock().connected
    }

    /// Connections established so far (a reconnect adds one).
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// Statuses the node has sent so far (with every reply and every status
    /// request's answer): once above a value read earlier, the cached
    /// [`NodeApi::status`] is the node's own word from after that read.
    pub fn statuses_received(&self) -> u64 {
        self.state.statuses.load(Ordering::Acquire)
    }

    fn submit(&self, op: ClientOp, slot: Option<ResponseSlot>) -> Result<(), RequestError> {
        if self.is_stopped() {
            return Err(RequestError::Stopped);
        }
        let state = &self.state;
        let correlation = state.next_correlation.fetch_add(1, Ordering::Relaxed);
        let limit = self._client.shared.config.net.frame_bytes_max;
        let frame = encode_request(&ClientRequest {
            correlation,
            group: state.group,
            replica: state.id,
            op,
        })
        .map_err(|_| RequestError::CommandTooLarge {
            bytes: usize::MAX,
            limit,
        })?;
        let bytes = frame.len() - FRAME_LENGTH_BYTES;
        if bytes > limit {
            return Err(RequestError::CommandTooLarge { bytes, limit });
        }
        let mut pending = state.pending.lock();
        if !pending.connected {
            return Err(RequestError::Stopped);
        }
        if let Some(slot) = slot {
            if pending.slots.len() >= self._client.shared.config.in_flight_max {
                return Err(RequestError::Overloaded);
            }
            pending.slots.insert(correlation, slot);
        }
        if state.tx.try_send(frame).is_err() {
            pending.slots.remove(&correlation);
            return Err(RequestError::Overloaded);
        }
        Ok(())
    }
}

impl NodeApi for RemoteNode {
    fn id(&self) -> ReplicaId {
        self.state.id
    }

    fn status(&self) -> Status {
        self.state.status.lock().clone()
    }

    fn is_stopped(&self) -> bool {
        self.state.closed.load(Ordering::Acquire) || self.state.cancel.is_cancelled()
    }

    fn propose_into(&self, request: Request, slot: ResponseSlot) -> Result<(), RequestError> {
        self.submit(ClientOp::Propose(request), Some(slot))
    }

    fn register_session_into(&self, slot: ResponseSlot) -> Result<(), RequestError> {
        self.submit(ClientOp::RegisterSession, Some(slot))
    }

    fn read_into(&self, query: Vec<u8>, slot: ResponseSlot) -> Result<(), RequestError> {
        self.submit(ClientOp::Read(query), Some(slot))
    }

    fn change_membership_into(
        &self,
        change: MembershipChange,
        slot: ResponseSlot,
    ) -> Result<(), RequestError> {
        self.submit(ClientOp::ChangeMembership(change), Some(slot))
    }

    /// Needs an admin client key: the node answers `Forbidden` otherwise.
    fn mark_state_digest_into(&self, slot: ResponseSlot) -> Result<(), RequestError> {
        self.submit(ClientOp::MarkStateDigest, Some(slot))
    }

    /// Fire and forget, as in process: the node's answer is not awaited. Once
    /// the node refused an administrative request with `Forbidden` (this
    /// client key lacks the admin role), later transfers on this connection
    /// fail at once with `Forbidden`.
    fn transfer_leader(&self, to: ReplicaId) -> Result<(), RequestError> {
        if self.state.admin_refused.load(Ordering::Acquire) {
            return Err(RequestError::Forbidden);
        }
        self.submit(ClientOp::TransferLeader(to), None)
    }
}

/// Marks the node closed and fails its slots however its task ends (returned,
/// or dropped with the runtime).
struct CloseOnExit(Arc<NodeState>);

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.disconnected();
    }
}

async fn node_loop(shared: Arc<Shared>, state: Arc<NodeState>, mut queue: mpsc::Receiver<Vec<u8>>) {
    let _close = CloseOnExit(Arc::clone(&state));
    let net = shared.config.net.clone();
    let mut backoff = Backoff::new(net.backoff_min, net.backoff_max);
    loop {
        let directory = shared.directory();
        let Some(key) = directory.key_of(state.id) else {
            break;
        };
        let Some(address) = directory.address_of(&key) else {
            break;
        };
        let attempt = tokio::select! {
            _ = state.cancel.cancelled() => break,
            attempt = dial(&net, &directory, address, key) => attempt,
        };
        match attempt {
            Ok((reader, writer, session)) => {
                state.connections.fetch_add(1, Ordering::Relaxed);
                state.admin_refused.store(false, Ordering::Release);
                state.pending.lock().connected = true;
                tracing::debug!(replica = state.id, %address, "client connected");
                let started = Instant::now();
                let reason =
                    run_connection(&shared, &state, reader, writer, session, &mut queue).await;
                state.disconnected();
                while queue.try_recv().is_ok() {}
                tracing::debug!(replica = state.id, %address, reason = %reason, "client connection closed");
                if matches!(reason, ConnectionError::Shutdown) {
                    break;
                }
                if started.elapsed() >= net.idle_timeout {
                    backoff.reset();
                }
            }
            Err(e) => {
                tracing::debug!(replica = state.id, %address, error = %e, "client could not connect");
            }
        }
        let delay = backoff.next();
        tokio::select! {
            _ = state.cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Runs one connection: writes queued requests (coalesced), a status request
/// every `status_interval` and keepalives; the reader task fills slots.
async fn run_connection(
    shared: &Shared,
    state: &Arc<NodeState>,
    reader: RecordReader,
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    session: Session,
    queue: &mut mpsc::Receiver<Vec<u8>>,
) -> ConnectionError {
    let net = &shared.config.net;
    let session_key = session.remote_key;
    let noise: Noise = Arc::new(Mutex::new(session.noise));
    let mut reader_task = {
        let state = Arc::clone(state);
        let noise = Arc::clone(&noise);
        let (frame_max, idle) = (net.frame_bytes_max, net.idle_timeout);
        shared.runtime.spawn(async move {
            read_frames(reader, noise, frame_max, idle, |body: Bytes| {
                state.frame(&body)
            })
            .await
        })
    };
    let mut status_tick = tokio::time::interval(shared.config.status_interval);
    status_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut keepalive = connection::keepalive_timer(net.keepalive_interval);
    let mut last_write = Instant::now();
    let mut batch = Vec::new();
    let reason = loop {
        batch.clear();
        tokio::select! {
            _ = state.cancel.cancelled() => break ConnectionError::Shutdown,
            ended = &mut reader_task => break ended.unwrap_or(ConnectionError::Shutdown),
            first = queue.recv() => {
                let Some(first) = first else { break ConnectionError::Shutdown };
                batch.extend_from_slice(&first);
                while batch.len() < net.batch_bytes_max {
                    let Ok(next) = queue.try_recv() else { break };
                    batch.extend_from_slice(&next);
                }
            }
            _ = status_tick.tick() => {
                if shared.directory().key_of(state.id) != Some(session_key) {
                    break ConnectionError::KeyDropped;
                }
                let correlation = state.next_correlation.fetch_add(1, Ordering::Relaxed);
                let request = ClientRequest { correlation, group: state.group, replica: state.id, op: ClientOp::Status };
                match encode_request(&request) {
                    Ok(frame) => batch.extend_from_slice(&frame),
                    Err(e) => tracing::warn!(error = %e, "could not encode a status request"),
                }
            }
            _ = keepalive.tick() => {
                if last_write.elapsed() >= net.keepalive_interval {
                    batch.extend_from_slice(&encode_keepalive());
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        if let Err(e) = write_sealed(&mut writer, &noise, &batch, net.write_timeout).await {
            break e;
        }
        last_write = Instant::now();
    };
    reader_task.abort();
    let _ = timeout(
        Duration::from_millis(100),
        tokio::io::AsyncWriteExt::shutdown(&mut writer),
    )
    .await;
    reason
}
