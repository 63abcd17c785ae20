//! The node side of the client protocol: one task per client connection (a
//! handshake authenticated an allowed *client* key) that decodes requests,
//! submits each to the local node serving its (group, replica) through
//! [`NodeApi`], and writes the reply when the node's response slot fills.
//!
//! Nothing here blocks a tokio worker: a proposal's slot is made with
//! [`Slot::with_notify`], whose notify (run on the node thread) fires a oneshot
//! the request's task awaits. `NodeApi`'s other calls return slots without a
//! notify, so their tasks poll the slot with a growing pause (1 to 16 ms):
//! never `Slot::wait`.
//!
//! Bounds: at most `client_in_flight_max` requests per connection are
//! submitted and unanswered (each holds a permit until its reply is written);
//! beyond it a request is answered `Overloaded` at once. Immediate replies that
//! cannot even be queued (a client sending without reading) close the
//! connection. Every request task ends with the connection, and after
//! `client_request_timeout` at the latest (answered `TimedOut`).
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
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use vaultfleet::codec::DecodeError;
use vaultfleet::replica::{Reply, RequestError};
use vaultfleet::runtime::{NodeApi, ResponseSlot, Slot};

use crate::connection::RecordReader;
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

/// The pauses between polls of a slot that has no notify.
const POLL_PAUSE_MIN: Duration = Duration::from_millis(1);
const POLL_PAUSE_MAX: Duration = Duration::from_millis(16);

/// A reply ready to write, with the in-flight permit it releases once written.
type Outgoing = (Vec<u8>, Option<OwnedSemaphorePermit>);

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
    mut reader: RecordReader,
    noise: Noise,
    frame_bytes_max: usize,
    idle_timeout: Duration,
    mut on_frame: impl FnMut(Bytes) -> Result<(), ConnectionError>,
) -> ConnectionError {
    let mut assembler = FrameAssembler::new(frame_bytes_max);
    let mut plaintext = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
    loop {
        let record = match timeout(idle_timeout, reader.next()).await {
            Err(_) => return ConnectionError::Idle,
            Ok(None) => return ConnectionError::PeerClosed,
            Ok(Some(Err(e))) => return ConnectionError::Io(e),
            Ok(Some(Ok(record))) => record,
        };
        let decrypted = noise.lock().read_message(&record, &mut plaintext);
        let n = match decrypted {
            Ok(n) => n,
            Err(e) => return ConnectionError::Decrypt(e),
        };
        assembler.push(&plaintext[..n]);
        loop {
            match assembler.next_frame() {
                Ok(None) => break,
                Ok(Some(body)) => {
                    if let Err(e) = on_frame(body) {
                        return e;
                    }
                }
                Err(AssembleError::TooLarge { len }) => {
                    return ConnectionError::FrameTooLarge {
                        len,
                        max: frame_bytes_max,
                    }
                }
                Err(AssembleError::Empty) => {
                    return ConnectionError::Frame(DecodeError::Invalid {
                        what: "empty frame",
                    })
                }
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
/// returns why it ended.
pub(crate) async fn run(
    shared: Arc<Shared>,
    reader: RecordReader,
    mut writer: OwnedWriteHalf,
    session: Session,
) -> ConnectionError {
    let key = session.remote_key;
    let noise: Noise = Arc::new(Mutex::new(session.noise));
    let config = shared.config.clone();
    let in_flight_max = config.client_in_flight_max.min(CLIENT_IN_FLIGHT_LIMIT);
    let in_flight = Arc::new(Semaphore::new(in_flight_max));
    let (replies, mut outgoing) = mpsc::channel::<Outgoing>(in_flight_max + REFUSALS_QUEUED_MAX);
    let cancel = shared.cancel.child_token();
    let mut reader_task = {
        let shared = Arc::clone(&shared);
        let noise = Arc::clone(&noise);
        let cancel = cancel.clone();
        let config = config.clone();
        shared.runtime.clone().spawn(async move {
            let dispatch = Dispatch {
                shared: Arc::clone(&shared),
                key,
                in_flight,
                replies,
                cancel,
            };
            read_frames(
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
    let mut keepalive = tokio::time::interval_at(
        Instant::now() + config.keepalive_interval,
        config.keepalive_interval,
    );
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
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
            _ = shared.cancel.cancelled() => break ConnectionError::Shutdown,
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
    in_flight: Arc<Semaphore>,
    replies: mpsc::Sender<Outgoing>,
    cancel: CancellationToken,
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
        let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
            Counters::bump(&c.client_requests_overloaded);
            return self.now(
                correlation,
                Some(node.as_ref()),
                ClientOutcome::Error(RequestError::Overloaded),
            );
        };
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
            ClientOp::Propose(command) => {
                let (fired, wake) = oneshot::channel::<()>();
                let fired = Mutex::new(Some(fired));
                let slot: ResponseSlot = Arc::new(Slot::with_notify(Arc::new(move || {
                    if let Some(fired) = fired.lock().take() {
                        let _ = fired.send(());
                    }
                })));
                node.propose_into(command, Arc::clone(&slot))
                    .map(|()| (slot, Some(wake)))
            }
            ClientOp::RegisterSession => node.register_session().map(|slot| (slot, None)),
            ClientOp::Read(query) => node.read(query).map(|slot| (slot, None)),
            ClientOp::ChangeMembership(change) => {
                node.change_membership(change).map(|slot| (slot, None))
            }
        };
        let (slot, wake) = match submitted {
            Ok(submitted) => submitted,
            Err(e) => {
                return self.queue(correlation, node.as_ref(), ClientOutcome::Error(e), permit)
            }
        };
        self.shared.runtime.spawn(answer(
            Arc::clone(&self.shared),
            node,
            correlation,
            slot,
            wake,
            permit,
            self.replies.clone(),
            self.cancel.clone(),
        ));
        Ok(())
    }

    /// Queues a reply that holds an in-flight permit.
    fn queue(
        &self,
        correlation: u64,
        node: &dyn NodeApi,
        outcome: ClientOutcome,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), ConnectionError> {
        let frame = reply_frame(&self.shared, correlation, Some(node), outcome);
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
        let frame = reply_frame(&self.shared, correlation, node, outcome);
        self.replies
            .try_send((frame, None))
            .map_err(|_| ConnectionError::RepliesNotRead)
    }
}

/// Encodes a reply with the node's current status. A reply that cannot be
/// encoded within the frame limit (a response larger than `frame_bytes_max`)
/// is replaced by `CommandTooLarge` naming its size: the client's frame limit
/// would refuse it and close the connection.
fn reply_frame(
    shared: &Shared,
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
    let limit = shared.config.frame_bytes_max;
    match encode_reply(&reply) {
        Ok(frame) if frame.len() - FRAME_LENGTH_BYTES <= limit => frame,
        encoded => {
            let bytes = encoded.map_or(usize::MAX, |f| f.len() - FRAME_LENGTH_BYTES);
            tracing::warn!(
                bytes,
                limit,
                "a reply is above the frame limit; answering CommandTooLarge"
            );
            let refusal = ClientReply {
                outcome: ClientOutcome::Error(RequestError::CommandTooLarge { bytes, limit }),
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
    wake: Option<oneshot::Receiver<()>>,
    permit: OwnedSemaphorePermit,
    replies: mpsc::Sender<Outgoing>,
    cancel: CancellationToken,
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
    let frame = reply_frame(&shared, correlation, Some(node.as_ref()), outcome);
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = replies.send((frame, Some(permit))) => {}
    }
}

/// The slot's value: after its notify fired, or by polling a slot that has none.
async fn outcome_of(
    slot: &ResponseSlot,
    wake: Option<oneshot::Receiver<()>>,
) -> Result<Reply, RequestError> {
    if let Some(wake) = wake {
        // An error means the slot was dropped unfilled: the outcome is unknown.
        let _ = wake.await;
        return slot.try_take().unwrap_or(Err(RequestError::TimedOut));
    }
    let mut pause = POLL_PAUSE_MIN;
    loop {
        if let Some(outcome) = slot.try_take() {
            return outcome;
        }
        if Arc::strong_count(slot) == 1 {
            // The node let go of the slot: filled just now, or never.
            return slot.try_take().unwrap_or(Err(RequestError::TimedOut));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_PAUSE_MAX);
    }
}
