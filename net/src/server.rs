//! The node side of the client protocol: one task per client connection (a
//! handshake authenticated an allowed *client* key) that decodes requests,
//! submits each to the local node serving its (group, replica) through
//! [`NodeApi`], and writes the reply when the node's response slot fills.
//!
//! Nothing here blocks a tokio worker, and nothing polls: every request's slot
//! is made with [`Slot::with_notify`] (through `NodeApi`'s `*_into` calls),
//! whose notify (run on the node thread) fires a oneshot the request's task
//! awaits; never `Slot::wait`.
//!
//! Checks before a request reaches the node, each answered at once:
//! - a membership change, a leadership transfer or a state digest marker
//!   from a key without the [`ClientRole::Admin`](crate::ClientRole::Admin)
//!   role: `Forbidden`;
//! - a command above the node's `command_bytes_max`: `CommandTooLarge`;
//! - beyond `client_in_flight_max` requests on this connection, beyond
//!   `client_in_flight_total_max` in the whole process, or beyond either byte
//!   budget (`client_bytes_in_flight_max` per connection,
//!   `client_bytes_in_flight_total_max` per process, counting request frames):
//!   `Overloaded`. A request holds its permits until its reply is written, so
//!   client traffic never holds more than those bounds of the node's mailbox
//!   and of this process's memory.
//!
//! Immediate replies that cannot even be queued (a client sending without
//! reading) close the connection. Every request task ends with the
//! connection, and after `client_request_timeout` at the latest (answered
//! `TimedOut`). Client connections have their own pool
//! (`client_connections_max`, [`ClientBudget::admit`]), so they never take the
//! slots peers need.
//!
//! A follower answers `NotLeader { leader }` (it does not forward): the client
//! knows every node's address from its own directory and follows the hint.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use vaultfleet::codec::DecodeError;
use vaultfleet::replica::{Reply, RequestError};
use vaultfleet::runtime::{NodeApi, ResponseSlot, Slot};

use crate::config::NetConfig;

use crate::connection::{self, RecordReader};
use crate::error::ConnectionError;
use crate::handshake::Session;
use crate::keys::PublicKey;
use crate::stats::Counters;
use crate::transport::Shared;
use crate::wire::client::{encode_reply, ClientFrame, ClientOp, ClientOutcome, ClientReply};
use crate::wire::frame::{encode_keepalive, AssembleError, FrameAssembler, FRAME_LENGTH_BYTES};
use crate::wire::record::{seal_records, NOISE_MESSAGE_BYTES_MAX};

/// The Noise transport state, shared by a connection's reader and writer.
pub(crate) type Noise = Arc<Mutex<snow::TransportState>>;

/// Immediate replies (refusals) that may wait to be written beyond the
/// in-flight ones before the connection is closed as not reading.
const REFUSALS_QUEUED_MAX: usize = 64;

/// Most requests one client connection may have in flight, whatever the
/// configuration says (bounds the semaphore and the reply queue, which tokio
/// would refuse above its own maximum).
pub(crate) const CLIENT_IN_FLIGHT_LIMIT: usize = 1 << 20;

/// A reply ready to write, with the in-flight permits it releases once written.
type Outgoing = (Vec<u8>, Option<InFlight>);

/// The client-serving bounds shared by every client connection of one process
/// (one per transport).
pub(crate) struct ClientBudget {
    /// Authenticated client connections (`client_connections_max`).
    connections: Arc<Semaphore>,
    /// Client requests in flight (`client_in_flight_total_max`).
    requests: Arc<Semaphore>,
    /// Bytes of client request frames in flight
    /// (`client_bytes_in_flight_total_max`).
    bytes: Arc<Semaphore>,
}

impl ClientBudget {
    /// The budget `config` sets (validated: every bound within tokio's).
    pub(crate) fn new(config: &NetConfig) -> Self {
        let permits = |n: usize| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)));
        Self {
            connections: permits(config.client_connections_max),
            requests: permits(config.client_in_flight_total_max),
            bytes: permits(config.client_bytes_in_flight_total_max),
        }
    }

    /// A slot for one authenticated client connection, held for its life;
    /// `None` once `client_connections_max` are open (peers' slots are
    /// another pool: `inbound_connections_max`).
    pub(crate) fn admit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.connections).try_acquire_owned().ok()
    }
}

/// What one request in flight holds, released when its reply is written (or
/// dropped with the connection).
pub(crate) struct InFlight {
    _connection: OwnedSemaphorePermit,
    _process: OwnedSemaphorePermit,
    _connection_bytes: OwnedSemaphorePermit,
    _process_bytes: OwnedSemaphorePermit,
}

/// Why a request got no in-flight permits.
enum Refused {
    /// `client_in_flight_max` on this connection.
    Connection,
    /// `client_in_flight_total_max` in the process.
    Process,
    /// A byte budget.
    Bytes,
}

/// Seals `plaintext` (whole frames) into records and writes them with one
/// write, within `write_timeout`. Returns the bytes written.
pub(crate) async fn write_sealed(
    writer: &mut OwnedWriteHalf,
    noise: &Noise,
    plaintext: &[u8],
    write_timeout: Duration,
) -> Result<usize, ConnectionError> {
    let mut out = BytesMut::with_capacity(plaintext.len() + plaintext.len() / 1000 + 64);
    seal_records(&mut noise.lock(), plaintext, &mut out).map_err(ConnectionError::Encrypt)?;
    match timeout(write_timeout, writer.write_all(&out)).await {
        Err(_) => Err(ConnectionError::WriteTimeout),
        Ok(Err(e)) => Err(ConnectionError::Io(e)),
        Ok(Ok(())) => Ok(out.len()),
    }
}

/// Reads records until the connection fails, decrypting them and handing
/// every whole frame body to `on_frame`; returns why it ended. A record that
/// does not decrypt, a frame above `frame_bytes_max` or an empty frame ends it.
pub(crate) async fn read_frames(
    reader: RecordReader,
    noise: Noise,
    frame_bytes_max: usize,
    idle_timeout: Duration,
    on_frame: impl FnMut(Bytes) -> Result<(), ConnectionError>,
) -> ConnectionError {
    read_frames_after(
        Vec::new(),
        reader,
        noise,
        frame_bytes_max,
        idle_timeout,
        on_frame,
    )
    .await
}

/// Reads the next record (waiting at most `idle_timeout`) and decrypts it into
/// `plaintext`; returns its length, or why the connection ends: what a peer's
/// and a client's reader share.
pub(crate) async fn read_plaintext(
    reader: &mut RecordReader,
    noise: &Noise,
    idle_timeout: Duration,
    plaintext: &mut [u8],
) -> Result<usize, ConnectionError> {
    let record = match timeout(idle_timeout, reader.next()).await {
        Err(_) => return Err(ConnectionError::Idle),
        Ok(None) => return Err(ConnectionError::PeerClosed),
        Ok(Some(Err(e))) => return Err(ConnectionError::Io(e)),
        Ok(Some(Ok(record))) => record,
    };
    let decrypted = noise.lock().read_message(&record, plaintext);
    decrypted.map_err(ConnectionError::Decrypt)
}

/// [`read_frames`], starting with `first`: plaintext already decrypted.
pub(crate) async fn read_frames_after(
    first: Vec<u8>,
    mut reader: RecordReader,
    noise: Noise,
    frame_bytes_max: usize,
    idle_timeout: Duration,
    mut on_frame: impl FnMut(Bytes) -> Result<(), ConnectionError>,
) -> ConnectionError {
    let mut assembler = FrameAssembler::new(frame_bytes_max);
    let mut plaintext = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
    let mut pending = Some(first);
    loop {
        if let Some(first) = pending.take() {
            assembler.push(&first);
            if let Some(e) = take_frames(&mut assembler, frame_bytes_max, &mut on_frame) {
                return e;
            }
            continue;
        }
        let n = match read_plaintext(&mut reader, &noise, idle_timeout, &mut plaintext).await {
            Ok(n) => n,
            Err(e) => return e,
        };
        assembler.push(&plaintext[..n]);
        if let Some(e) = take_frames(&mut assembler, frame_bytes_max, &mut on_frame) {
            return e;
        }
    }
}

/// Hands every whole frame in `assembler` to `on_frame`; the error that ends
/// the connection, if any.
fn take_frames(
    assembler: &mut FrameAssembler,
    frame_bytes_max: usize,
    on_frame: &mut impl FnMut(Bytes) -> Result<(), ConnectionError>,
) -> Option<ConnectionError> {
    loop {
        match assembler.next_frame() {
            Ok(None) => return None,
            Ok(Some(body)) => {
                if let Err(e) = on_frame(body) {
                    return Some(e);
                }
            }
            Err(AssembleError::TooLarge { len }) => {
                return Some(ConnectionError::FrameTooLarge {
                    len,
                    max: frame_bytes_max,
                })
            }
            Err(AssembleError::Empty) => {
                return Some(ConnectionError::Frame(DecodeError::Invalid {
                    what: "empty frame",
                }))
            }
        }
    }
}

/// Counts a connection-ending protocol violation.
fn count_violation(shared: &Shared, reason: &ConnectionError) {
    let c = &shared.counters;
    match reason {
        ConnectionError::Decrypt(_) => {
            Counters::bump(&c.records_undecryptable);
            Counters::bump(&c.connections_closed_protocol);
        }
        ConnectionError::FrameTooLarge { .. } => {
            Counters::bump(&c.frames_oversize);
            Counters::bump(&c.connections_closed_protocol);
        }
        ConnectionError::Frame(_) => {
            Counters::bump(&c.frames_malformed);
            Counters::bump(&c.connections_closed_protocol);
        }
        ConnectionError::Idle => Counters::bump(&c.connections_closed_idle),
        ConnectionError::WriteTimeout => Counters::bump(&c.connections_closed_write_timeout),
        _ => {}
    }
}

/// Serves one authenticated client connection until it fails or closes;
/// returns why it ended. `connection` closes it alone (a newer connection of
/// the same key replaced it) or, as a child of the transport's token, with
/// every other; `first` is plaintext already decrypted (its first record).
pub(crate) async fn run(
    shared: Arc<Shared>,
    reader: RecordReader,
    mut writer: OwnedWriteHalf,
    session: Session,
    connection: CancellationToken,
    first: Vec<u8>,
) -> ConnectionError {
    let key = session.remote_key;
    // Replies are bounded by the smaller of our frame limit and the client's.
    let reply_limit = shared.config.frame_bytes_max.min(session.frame_bytes_max);
    let noise: Noise = Arc::new(Mutex::new(session.noise));
    let config = shared.config.clone();
    let in_flight_max = config.client_in_flight_max.min(CLIENT_IN_FLIGHT_LIMIT);
    let in_flight = Arc::new(Semaphore::new(in_flight_max));
    let bytes_in_flight = Arc::new(Semaphore::new(
        config
            .client_bytes_in_flight_max
            .min(Semaphore::MAX_PERMITS),
    ));
    let (replies, mut outgoing) = mpsc::channel::<Outgoing>(in_flight_max + REFUSALS_QUEUED_MAX);
    let cancel = connection.child_token();
    let mut reader_task = {
        let shared = Arc::clone(&shared);
        let noise = Arc::clone(&noise);
        let cancel = cancel.clone();
        let config = config.clone();
        shared.runtime.clone().spawn(async move {
            let dispatch = Dispatch {
                shared: Arc::clone(&shared),
                owner: Bytes::copy_from_slice(key.as_bytes()),
                key,
                in_flight,
                bytes_in_flight,
                replies,
                cancel,
                reply_limit,
            };
            read_frames_after(
                first,
                reader,
                noise,
                config.frame_bytes_max,
                config.idle_timeout,
                |body| dispatch.frame(&body),
            )
            .await
        })
    };
    let mut directory = shared.directory_changed.subscribe();
    let mut keepalive = connection::keepalive_timer(config.keepalive_interval);
    let mut last_write = Instant::now();
    let mut batch = Vec::new();
    let mut permits = Vec::new();
    let still_allowed = shared.directory().is_pinned_client(&key);
    let reason = loop {
        if !still_allowed {
            Counters::bump(&shared.counters.connections_closed_key_dropped);
            break ConnectionError::KeyDropped;
        }
        tokio::select! {
            biased;
            _ = connection.cancelled() => {
                break if shared.cancel.is_cancelled() {
                    ConnectionError::Shutdown
                } else {
                    ConnectionError::Replaced
                };
            }
            ended = &mut reader_task => break ended.unwrap_or(ConnectionError::Shutdown),
            changed = directory.changed() => {
                if changed.is_err() {
                    break ConnectionError::Shutdown;
                }
                if !shared.directory().is_pinned_client(&key) {
                    Counters::bump(&shared.counters.connections_closed_key_dropped);
                    break ConnectionError::KeyDropped;
                }
            }
            first = outgoing.recv() => {
                // The reader holds the only sender: it ended, say why.
                let Some((frame, permit)) = first else {
                    break (&mut reader_task).await.unwrap_or(ConnectionError::Shutdown);
                };
                batch.clear();
                permits.clear();
                batch.extend_from_slice(&frame);
                permits.push(permit);
                while batch.len() < config.batch_bytes_max {
                    let Ok((frame, permit)) = outgoing.try_recv() else { break };
                    batch.extend_from_slice(&frame);
                    permits.push(permit);
                }
                match write_sealed(&mut writer, &noise, &batch, config.write_timeout).await {
                    Ok(n) => {
                        let c = &shared.counters;
                        Counters::bump(&c.writes);
                        Counters::add(&c.bytes_written, n as u64);
                        Counters::add(&c.client_replies, permits.len() as u64);
                    }
                    Err(e) => break e,
                }
                // The replies are written: their requests are no longer in flight.
                permits.clear();
                last_write = Instant::now();
            }
            _ = keepalive.tick() => {
                if last_write.elapsed() >= config.keepalive_interval {
                    if let Err(e) = write_sealed(&mut writer, &noise, &encode_keepalive(), config.write_timeout).await {
                        break e;
                    }
                    last_write = Instant::now();
                }
            }
        }
    };
    count_violation(&shared, &reason);
    cancel.cancel();
    reader_task.abort();
    let _ = timeout(Duration::from_millis(100), writer.shutdown()).await;
    reason
}

/// What the reader needs to answer requests.
struct Dispatch {
    shared: Arc<Shared>,
    key: PublicKey,
    /// `key` as a session owner, shared by every command of the connection.
    owner: Bytes,
    in_flight: Arc<Semaphore>,
    /// Bytes of request frames in flight on this connection.
    bytes_in_flight: Arc<Semaphore>,
    replies: mpsc::Sender<Outgoing>,
    cancel: CancellationToken,
    /// Largest reply frame body to write (ours and the client's limit).
    reply_limit: usize,
}

impl Dispatch {
    /// Handles one frame body from the client.
    fn frame(&self, body: &[u8]) -> Result<(), ConnectionError> {
        let c = &self.shared.counters;
        let request = match ClientFrame::decode(body).map_err(ConnectionError::Frame)? {
            ClientFrame::Keepalive => {
                Counters::bump(&c.keepalives_received);
                return Ok(());
            }
            ClientFrame::Reply(_) => {
                return Err(ConnectionError::Frame(DecodeError::Invalid {
                    what: "a client sent a reply frame",
                }))
            }
            ClientFrame::Request(request) => request,
        };
        Counters::bump(&c.client_requests);
        let correlation = request.correlation;
        let Some(node) = self.shared.served(request.group, request.replica) else {
            Counters::bump(&c.client_requests_unknown_node);
            tracing::debug!(client = %self.key, group = request.group, replica = request.replica, "a client request for a node not served here");
            return self.now(correlation, None, ClientOutcome::UnknownNode);
        };
        // Every admin call is logged with the caller's key id and the op,
        // nothing else from the request: a membership change, a leadership
        // transfer or a state digest marker from any key, a status request
        // from an admin key (service keys ask for status all the time; that is
        // not an admin call).
        let administrative = matches!(
            request.op,
            ClientOp::ChangeMembership(_) | ClientOp::TransferLeader(_) | ClientOp::MarkStateDigest
        );
        let role = if administrative || matches!(request.op, ClientOp::Status) {
            self.shared.directory().client_role(&self.key)
        } else {
            None
        };
        let is_admin = role.is_some_and(|r| r.is_admin());
        if let Some(op) = admin_op(&request.op, is_admin) {
            tracing::info!(client = %self.key, op, allowed = is_admin, "admin call");
        }
        // Administrative requests need an admin key (H2 of the client review).
        if administrative && !is_admin {
            Counters::bump(&c.client_requests_forbidden);
            tracing::debug!(client = %self.key, ?role, "an administrative request from a key without the admin role");
            return self.now(
                correlation,
                Some(node.as_ref()),
                ClientOutcome::Error(RequestError::Forbidden),
            );
        }
        // A command the node would refuse never reaches its mailbox.
        if let (ClientOp::Propose(command), Some(limit)) = (&request.op, node.command_bytes_max()) {
            let bytes = command.command.len();
            if bytes > limit {
                Counters::bump(&c.client_requests_too_large);
                return self.now(
                    correlation,
                    Some(node.as_ref()),
                    ClientOutcome::Error(RequestError::CommandTooLarge { bytes, limit }),
                );
            }
        }
        let permit = match self.permits(body.len()) {
            Ok(permit) => permit,
            Err(refused) => {
                Counters::bump(&c.client_requests_overloaded);
                match refused {
                    Refused::Connection => {}
                    Refused::Process => Counters::bump(&c.client_requests_overloaded_process),
                    Refused::Bytes => Counters::bump(&c.client_requests_overloaded_bytes),
                }
                return self.now(
                    correlation,
                    Some(node.as_ref()),
                    ClientOutcome::Error(RequestError::Overloaded),
                );
            }
        };
        let (slot, wake) = notify_slot();
        let submitted = match request.op {
            ClientOp::Status => {
                return self.queue(correlation, node.as_ref(), ClientOutcome::Done, permit)
            }
            ClientOp::TransferLeader(to) => {
                let outcome = match node.transfer_leader(to) {
                    Ok(()) => ClientOutcome::Done,
                    Err(e) => ClientOutcome::Error(e),
                };
                return self.queue(correlation, node.as_ref(), outcome, permit);
            }
            // Sessions belong to the key that registered them: whatever owner
            // a client wrote is replaced by its authenticated key, so one
            // client key can neither use nor read another's session.
            ClientOp::Propose(mut command) => {
                command.owner = self.owner.clone();
                node.propose_into(command, Arc::clone(&slot))
            }
            ClientOp::RegisterSession => {
                node.register_session_of_into(self.key.as_bytes().to_vec(), Arc::clone(&slot))
            }
            ClientOp::Read(query) => node.read_into(query, Arc::clone(&slot)),
            ClientOp::ChangeMembership(change) => {
                node.change_membership_into(change, Arc::clone(&slot))
            }
            ClientOp::MarkStateDigest => node.mark_state_digest_into(Arc::clone(&slot)),
        };
        if let Err(e) = submitted {
            return self.queue(correlation, node.as_ref(), ClientOutcome::Error(e), permit);
        }
        self.shared.runtime.spawn(answer(
            Arc::clone(&self.shared),
            node,
            correlation,
            slot,
            wake,
            permit,
            self.replies.clone(),
            self.cancel.clone(),
            self.reply_limit,
        ));
        Ok(())
    }

    /// Takes the permits of one request of `bytes`: one of this connection's
    /// and one of the process's requests, and `bytes` of both byte budgets.
    fn permits(&self, bytes: usize) -> Result<InFlight, Refused> {
        let budget = &self.shared.clients;
        let connection = Arc::clone(&self.in_flight)
            .try_acquire_owned()
            .map_err(|_| Refused::Connection)?;
        let process = Arc::clone(&budget.requests)
            .try_acquire_owned()
            .map_err(|_| Refused::Process)?;
        // A frame body is at most FRAME_BYTES_LIMIT (16 MiB): it fits a u32.
        let n = u32::try_from(bytes.max(1)).map_err(|_| Refused::Bytes)?;
        let connection_bytes = Arc::clone(&self.bytes_in_flight)
            .try_acquire_many_owned(n)
            .map_err(|_| Refused::Bytes)?;
        let process_bytes = Arc::clone(&budget.bytes)
            .try_acquire_many_owned(n)
            .map_err(|_| Refused::Bytes)?;
        Ok(InFlight {
            _connection: connection,
            _process: process,
            _connection_bytes: connection_bytes,
            _process_bytes: process_bytes,
        })
    }

    /// Queues a reply that holds an in-flight permit.
    fn queue(
        &self,
        correlation: u64,
        node: &dyn NodeApi,
        outcome: ClientOutcome,
        permit: InFlight,
    ) -> Result<(), ConnectionError> {
        let frame = reply_frame(
            &self.shared,
            self.reply_limit,
            correlation,
            Some(node),
            outcome,
        );
        self.replies
            .try_send((frame, Some(permit)))
            .map_err(|_| ConnectionError::RepliesNotRead)
    }

    /// Queues a reply that holds no permit (a refusal).
    fn now(
        &self,
        correlation: u64,
        node: Option<&dyn NodeApi>,
        outcome: ClientOutcome,
    ) -> Result<(), ConnectionError> {
        let frame = reply_frame(&self.shared, self.reply_limit, correlation, node, outcome);
        self.replies
            .try_send((frame, None))
            .map_err(|_| ConnectionError::RepliesNotRead)
    }
}

/// The name an admin call is logged under: membership changes, leadership
/// transfers and state digest markers (`compare-state`) always, a status
/// request only from an admin key; `None` for everything else.
fn admin_op(op: &ClientOp, from_admin: bool) -> Option<&'static str> {
    use vaultfleet::replica::MembershipChange;
    match op {
        ClientOp::ChangeMembership(MembershipChange::AddLearner { .. }) => Some("add-learner"),
        ClientOp::ChangeMembership(MembershipChange::Promote { .. }) => Some("promote"),
        ClientOp::ChangeMembership(MembershipChange::Remove { .. }) => Some("remove"),
        ClientOp::TransferLeader(_) => Some("transfer-leader"),
        ClientOp::MarkStateDigest => Some("compare-state"),
        ClientOp::Status if from_admin => Some("status"),
        _ => None,
    }
}

/// A response slot whose notify fires the returned oneshot once it is filled.
fn notify_slot() -> (ResponseSlot, oneshot::Receiver<()>) {
    let (fired, wake) = oneshot::channel::<()>();
    let fired = Mutex::new(Some(fired));
    let slot: ResponseSlot = Arc::new(Slot::with_notify(Arc::new(move || {
        if let Some(fired) = fired.lock().take() {
            let _ = fired.send(());
        }
    })));
    (slot, wake)
}

/// Encodes a reply with the node's current status. A reply that cannot be
/// encoded within the frame limit (a response or a read answer larger than
/// the smaller of the node's and the client's `frame_bytes_max`) would be
/// refused by the client and close the connection, so it is replaced by
/// `ReplyTooLarge { bytes, limit }`: the request WAS carried out (a proposal
/// applied, at most once), only its reply does not fit; the client must not
/// take it for "not applied" (`CommandTooLarge` would say that).
fn reply_frame(
    shared: &Shared,
    limit: usize,
    correlation: u64,
    node: Option<&dyn NodeApi>,
    outcome: ClientOutcome,
) -> Vec<u8> {
    let status = node.map(NodeApi::status);
    let reply = ClientReply {
        correlation,
        status,
        outcome,
    };
    match encode_reply(&reply) {
        Ok(frame) if frame.len() - FRAME_LENGTH_BYTES <= limit => frame,
        encoded => {
            let bytes = encoded.map_or(usize::MAX, |f| f.len() - FRAME_LENGTH_BYTES);
            Counters::bump(&shared.counters.client_replies_too_large);
            tracing::debug!(
                bytes,
                limit,
                "a reply is above the frame limit; answering ReplyTooLarge"
            );
            let refusal = ClientReply {
                outcome: ClientOutcome::Error(RequestError::ReplyTooLarge { bytes, limit }),
                ..reply
            };
            // A status and an error are a few hundred bytes: far below any
            // frame limit a configuration may set.
            encode_reply(&refusal).unwrap_or_default()
        }
    }
}

/// Waits for a submitted request's outcome and queues its reply.
#[allow(clippy::too_many_arguments)]
async fn answer(
    shared: Arc<Shared>,
    node: Arc<dyn NodeApi>,
    correlation: u64,
    slot: ResponseSlot,
    wake: oneshot::Receiver<()>,
    permit: InFlight,
    replies: mpsc::Sender<Outgoing>,
    cancel: CancellationToken,
    reply_limit: usize,
) {
    let limit = shared.config.client_request_timeout;
    let outcome = tokio::select! {
        _ = cancel.cancelled() => return,
        outcome = timeout(limit, outcome_of(&slot, wake)) => match outcome {
            Ok(outcome) => outcome,
            Err(_) => {
                Counters::bump(&shared.counters.client_requests_timed_out);
                Err(RequestError::TimedOut)
            }
        },
    };
    let outcome = match outcome {
        Ok(reply) => ClientOutcome::Reply(reply),
        Err(e) => ClientOutcome::Error(e),
    };
    let frame = reply_frame(
        &shared,
        reply_limit,
        correlation,
        Some(node.as_ref()),
        outcome,
    );
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = replies.send((frame, Some(permit))) => {}
    }
}

/// The slot's value, once its notify fired.
async fn outcome_of(
    slot: &ResponseSlot,
    wake: oneshot::Receiver<()>,
) -> Result<Reply, RequestError> {
    // An error means the slot was dropped unfilled: the outcome is unknown.
    let _ = wake.await;
    slot.try_take().unwrap_or(Err(RequestError::TimedOut))
}

#[cfg(test)]
mod tests {
    use vaultfleet::replica::MembershipChange;

    use super::*;

    #[test]
    fn admin_calls_are_named_and_a_service_keys_status_is_not_one() {
        let add = ClientOp::ChangeMembership(MembershipChange::AddLearner {
            id: 4,
            datacenter: "dc-d".into(),
        });
        assert_eq!(admin_op(&add, false), Some("add-learner"));
        let promote = ClientOp::ChangeMembership(MembershipChange::Promote { id: 4 });
        assert_eq!(admin_op(&promote, true), Some("promote"));
        let remove = ClientOp::ChangeMembership(MembershipChange::Remove { id: 4 });
        assert_eq!(admin_op(&remove, true), Some("remove"));
        assert_eq!(
            admin_op(&ClientOp::TransferLeader(2), false),
            Some("transfer-leader")
        );
        assert_eq!(admin_op(&ClientOp::Status, true), Some("status"));
        assert_eq!(
            admin_op(&ClientOp::MarkStateDigest, false),
            Some("compare-state")
        );
        assert_eq!(admin_op(&ClientOp::Status, false), None);
        assert_eq!(admin_op(&ClientOp::RegisterSession, true), None);
        assert_eq!(admin_op(&ClientOp::Read(b"k".to_vec()), true), None);
    }
}
