//! One established, authenticated connection: a reader task that decrypts
//! records, reassembles frames and checks each one before anything reaches an
//! inbox, and a writer loop that coalesces queued frames into one write, sends
//! keepalives when idle and closes on a dropped key, a timeout or shutdown.
//!
//! The checks on every inbound raft frame, in order (each counted):
//! 1. `from` must be pinned to the key the peer proved in the handshake, else the
//!    frame is dropped and its payload never decoded;
//! 2. `to` must be a replica this process hosts, else refused (never routed on);
//! 3. `group` must be a group hosted here with an inbox for `to`, else refused;
//! 4. the payload must decode as a raft message (it is authenticated bytes now);
//! 5. the message's own `from` and `to` must equal the header's, else dropped.
//!
//! A record that does not decrypt, a frame above the limit or a frame that does
//! not decode closes the connection (the stream cannot be trusted after it).
//!
//! Snapshot chunks pass checks 1 to 3 on their header, then go to the
//! connection's [`Reassembler`]; a whole snapshot passes 4 and 5 (and must be
//! a `MsgSnapshot` with the chunks' index and term) before it is delivered.
//!
//! Streamed snapshots (kinds 6 to 11) go to the connection's
//! [`InStreams`], which runs checks 1 to 3 on the
//! open frame's header, then its own (`crate::stream`), and hands whole
//! chunks to each stream's file worker without waiting for it: the read loop
//! never awaits the disk, so raft frames behind a chunk are delivered while
//! it is written. The writer sends the link's streamed snapshots one at a
//! time, one data frame per turn after any queued frames and only within the
//! peer's credit, and writes the refused, credit and delivered frames the
//! reader and the file workers ask for. A stream whose end frame it wrote
//! waits in its [`AwaitingDelivery`] for the peer's delivered frame before
//! it is reported `Written` (the next stream starts meanwhile): raft's next
//! append to that peer must not overtake the snapshot at the receiver.
//!
//! The writer checks cancellation and directory updates before anything else
//! (`biased`), and re-checks the directory's generation right before sealing
//! each batch: nothing queued is written to a key the directory dropped.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use raft::prelude::MessageType;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use vaultfleet::codec::DecodeError;
use vaultfleet::replica::decode_message;
use vaultfleet::transport::{Envelope, SnapshotSent};

use crate::error::ConnectionError;
use crate::handshake::Session;
use crate::keys::PublicKey;
use crate::link::{OutSnapshot, Queue};
use crate::server::{read_plaintext, Noise};
use crate::snapshot::{Chunk, Reassembler};
use crate::stats::Counters;
use crate::stream::{
    part_bytes, sleep_until_some, ActiveStream, AwaitingDelivery, Control, CreditsToGrant,
    InStreams, OutStream, StreamCredits, StreamEvent,
};
use crate::transport::{RouteMiss, Shared};
use crate::wire::frame::{
    encode_keepalive, encode_stream_credit, encode_stream_delivered, encode_stream_refused,
    AssembleError, ChunkHeader, Frame, FrameAssembler, RaftHeader, RefusalReason,
    FRAME_LENGTH_BYTES,
};
use crate::wire::record::{seal_records, NOISE_MESSAGE_BYTES_MAX};

/// The read half as a stream of records.
pub(crate) type RecordReader = FramedRead<OwnedReadHalf, LengthDelimitedCodec>;

/// Runs the connection until it fails or is closed; returns why it ended.
/// `queue` is the peer's outbound queue (outbound connections); an inbound
/// connection writes keepalives and the refused, credit and delivered
/// frames of the streams it receives only. `cancel` closes this connection alone
/// (a newer one with the same key replaced it) or, as a child of the
/// transport's token, every connection. `first` is plaintext already read and
/// decrypted (an inbound connection's first record).
pub(crate) async fn run(
    shared: Arc<Shared>,
    reader: RecordReader,
    mut writer: OwnedWriteHalf,
    session: Session,
    mut queue: Option<&mut Queue>,
    cancel: CancellationToken,
    first: Vec<u8>,
) -> ConnectionError {
    let key = session.remote_key;
    let own_limit = shared.config.frame_bytes_max;
    let send_limit = own_limit.min(session.frame_bytes_max);
    let noise: Noise = Arc::new(Mutex::new(session.noise));
    let (control_tx, mut control_rx) = mpsc::channel(CONTROL_QUEUED_MAX);
    let credits = Arc::new(StreamCredits::default());
    let to_grant = Arc::new(CreditsToGrant::default());
    let mut reader_task = shared.runtime.spawn(read_loop(
        Arc::clone(&shared),
        reader,
        Arc::clone(&noise),
        key,
        first,
        control_tx,
        Arc::clone(&to_grant),
        Arc::clone(&credits),
        queue.is_none(),
    ));
    let part = part_bytes(shared.config.snapshot_chunk_bytes, send_limit);
    let mut active: Option<ActiveStream> = None;
    let mut ended: Option<OutStream> = None;
    let config = &shared.config;
    let mut awaiting = AwaitingDelivery::new(config.snapshot_chunk_timeout, Arc::clone(&credits));
    let mut directory = shared.directory_changed.subscribe();
    let mut keepalive = keepalive_timer(config.keepalive_interval);
    let mut last_write = Instant::now();
    let mut batch = BytesMut::new();
    let mut finished: Vec<OutSnapshot> = Vec::new();
    // The handshake checked a snapshot of the directory; an update may have
    // landed since, before `directory` subscribed. Check once more now: later
    // updates wake the `changed` branch below.
    let mut still_pinned = shared.directory().is_pinned_peer(&key);
    // The initiator speaks first: the responder counts the connection as
    // established only once a transport record from it decrypts.
    if still_pinned && queue.is_some() {
        if let Err(e) = write_batch(&shared, &mut writer, &noise, &encode_keepalive(), 0).await {
            reader_task.abort();
            return e;
        }
    }
    let reason = loop {
        if !still_pinned {
            Counters::bump(&shared.counters.connections_closed_key_dropped);
            break ConnectionError::KeyDropped;
        }
        let link = queue.as_deref().map(|q| Arc::clone(q.link()));
        // The raft frames gathered into `batch`, to be written below.
        let frames = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                break if shared.cancel.is_cancelled() {
                    ConnectionError::Shutdown
                } else {
                    ConnectionError::Replaced
                };
            }
            changed = directory.changed() => {
                if changed.is_err() {
                    break ConnectionError::Shutdown;
                }
                still_pinned = shared.directory().is_pinned_peer(&key);
                continue;
            }
            ended = &mut reader_task => {
                break ended.unwrap_or(ConnectionError::Shutdown);
            }
            first = next_queued(&mut queue) => {
                let Some(first) = first else { break ConnectionError::Shutdown };
                batch.clear();
                let mut frames = push_frame(&shared, &mut batch, &first, send_limit);
                if let Some(q) = queue.as_deref_mut() {
                    while batch.len() < config.batch_bytes_max {
                        let Some(next) = q.try_recv() else { break };
                        frames += push_frame(&shared, &mut batch, &next, send_limit);
                    }
                }
                if let Some(link) = &link {
                    push_chunks(&shared, link, &mut batch, &mut finished, send_limit);
                }
                frames
            }
            () = snapshot_pending(&link) => {
                batch.clear();
                let Some(link) = &link else { continue };
                push_chunks(&shared, link, &mut batch, &mut finished, send_limit);
                0
            }
            control = control_rx.recv() => {
                // The reader ended (its branch above ends the connection).
                let Some(first) = control else { continue };
                // Every word waiting goes out in one write.
                batch.clear();
                let mut next = Some(first);
                while let Some(control) = next {
                    match control {
                        Control::Refuse(stream, reason) => {
                            batch.extend_from_slice(&encode_stream_refused(stream, reason));
                        }
                        Control::Delivered(stream) => {
                            batch.extend_from_slice(&encode_stream_delivered(stream));
                        }
                        Control::PeerDelivered(stream) => {
                            awaiting.delivered(&shared.counters, stream);
                        }
                        Control::PeerRefused(stream, reason) => {
                            peer_refused(&shared.counters, key, &mut active, &mut awaiting, stream, reason);
                        }
                    }
                    if batch.len() >= config.batch_bytes_max {
                        break;
                    }
                    next = control_rx.try_recv().ok();
                }
                0
            }
            () = to_grant.changed() => {
                // The newest credit of each stream the workers granted
                // since the last time, one frame each.
                batch.clear();
                for (stream, granted) in to_grant.take() {
                    batch.extend_from_slice(&encode_stream_credit(stream, granted));
                }
                0
            }
            () = sleep_until_some(awaiting.next_deadline()) => {
                // Streams the receiver did not say it delivered in time:
                // failed, and cancelled there.
                batch.clear();
                for stream in awaiting.expire(&shared.counters, Instant::now()) {
                    cancel_stream(&mut batch, stream, RefusalReason::Timeout);
                }
                0
            }
            event = stream_ready(
                &link,
                &mut active,
                !awaiting.is_full(),
                &credits,
                config.snapshot_chunk_timeout,
            ) => {
                batch.clear();
                match event {
                    StreamEvent::Ready => {
                        if let Some((frame, n)) = active.as_mut().and_then(|a| a.next_frame(part)) {
                            batch.extend_from_slice(&frame);
                            Counters::add(&shared.counters.stream_bytes_sent, n as u64);
                        }
                    }
                    StreamEvent::End => {
                        if let Some(a) = active.take() {
                            batch.extend_from_slice(&a.end_frame());
                            ended = Some(a.out);
                        }
                    }
                    StreamEvent::Failed => {
                        if let Some(mut a) = active.take() {
                            Counters::bump(&shared.counters.streams_send_failed);
                            if a.opened() {
                                Counters::bump(&shared.counters.streams_cancelled);
                                cancel_stream(&mut batch, a.out.header.stream, RefusalReason::Other);
                            }
                            a.out.finish(SnapshotSent::Failed);
                        }
                    }
                    StreamEvent::CreditTimedOut => {
                        if let Some(mut a) = active.take() {
                            Counters::bump(&shared.counters.streams_credit_timed_out);
                            Counters::bump(&shared.counters.streams_send_failed);
                            tracing::info!(peer = %key, stream = a.out.header.stream, "the peer granted a streamed snapshot no credit in time");
                            if a.opened() {
                                Counters::bump(&shared.counters.streams_cancelled);
                                cancel_stream(&mut batch, a.out.header.stream, RefusalReason::Timeout);
                            }
                            a.out.finish(SnapshotSent::Failed);
                        }
                    }
                }
                0
            }
            _ = keepalive.tick() => {
                if last_write.elapsed() >= config.keepalive_interval {
                    if let Err(e) = write_batch(&shared, &mut writer, &noise, &encode_keepalive(), 0).await {
                        break e;
                    }
                    last_write = Instant::now();
                }
                continue;
            }
        };
        // The queue and snapshot branches gathered a batch: write it.
        if batch.is_empty() {
            continue;
        }
        // A directory update that landed while this batch was gathered
        // (or while the last write was blocked) is seen before sealing.
        if directory.has_changed().unwrap_or(true) {
            still_pinned = shared.directory().is_pinned_peer(&key);
            if !still_pinned {
                continue;
            }
        }
        if let Err(e) = write_batch(&shared, &mut writer, &noise, &batch, frames).await {
            break e;
        }
        report_written(&shared, &mut finished);
        last_write = Instant::now();
        // Its end frame is out: the stream is done only once the receiver
        // delivered it (or refused it, or said nothing in time).
        if let Some(out) = ended.take() {
            awaiting.insert(out, last_write);
        }
    };
    // A stream being sent, whose end frame was not written, or that waited
    // for the receiver to deliver it: failed (the queued ones are failed by
    // the link when it sees the connection end).
    for mut out in active.take().map(|a| a.out).into_iter().chain(ended.take()) {
        Counters::bump(&shared.counters.streams_send_failed);
        out.finish(SnapshotSent::Failed);
    }
    awaiting.fail_all(&shared.counters);
    // Snapshots whose last chunk was gathered but not written: failed (the
    // others are failed by the link when it sees the connection end).
    for mut snapshot in finished.drain(..) {
        Counters::bump(&shared.counters.snapshots_send_failed);
        snapshot.finish(SnapshotSent::Failed);
    }
    reader_task.abort();
    let _ = timeout(Duration::from_millis(100), writer.shutdown()).await;
    reason
}

/// The peer refused our stream `stream`: if it is the one being sent or one
/// awaiting delivery, it failed, and the refusal is counted (once per
/// stream, under its reason). A refusal of any other stream (unknown, or
/// given up, refused or delivered already) is ignored and counted apart.
pub(crate) fn peer_refused(
    c: &Counters,
    key: PublicKey,
    active: &mut Option<ActiveStream>,
    awaiting: &mut AwaitingDelivery,
    stream: u64,
    reason: RefusalReason,
) {
    let live = if active
        .as_ref()
        .is_some_and(|a| a.out.header.stream == stream)
    {
        if let Some(mut a) = active.take() {
            Counters::bump(&c.streams_send_failed);
            a.out.finish(SnapshotSent::Failed);
        }
        true
    } else {
        awaiting.refused(c, stream)
    };
    if live {
        Counters::bump(&c.streams_refused_by_peer);
        Counters::bump(c.refused_by_peer(reason));
        tracing::info!(peer = %key, stream, ?reason, "the peer refused a streamed snapshot");
    } else {
        Counters::bump(&c.streams_refusals_ignored);
        tracing::debug!(peer = %key, stream, ?reason, "ignored a refusal for a stream not being sent");
    }
}

/// This sender gives up stream `stream`, whose open frame it wrote: a
/// kind 9 frame in the sender's direction (a cancel; streams go only from
/// the dialer to the acceptor, so the receiver reads it as such) tells the
/// receiver to drop it at once. Counted in `streams_cancelled` by the
/// caller, before the stream's `done` hears.
fn cancel_stream(batch: &mut BytesMut, stream: u64, reason: RefusalReason) {
    batch.extend_from_slice(&encode_stream_refused(stream, reason));
}

/// Appends a queued frame to `batch` if its body fits the connection's send
/// limit (the peer's limit may be below the one it was queued under); returns
/// the raft frames appended.
fn push_frame(shared: &Shared, batch: &mut BytesMut, frame: &[u8], send_limit: usize) -> u64 {
    if frame.len() - FRAME_LENGTH_BYTES > send_limit {
        Counters::bump(&shared.counters.frames_dropped_above_peer_limit);
        return 0;
    }
    batch.extend_from_slice(frame);
    1
}

/// Appends snapshot chunks to `batch` up to `batch_bytes_max`; a snapshot
/// whose last chunk went in moves to `finished`.
fn push_chunks(
    shared: &Shared,
    link: &crate::link::PeerLink,
    batch: &mut BytesMut,
    finished: &mut Vec<OutSnapshot>,
    send_limit: usize,
) {
    while batch.len() < shared.config.batch_bytes_max {
        let Some((chunk, last)) = link.next_chunk(send_limit) else {
            break;
        };
        batch.extend_from_slice(&chunk);
        Counters::bump(&shared.counters.snapshot_chunks_sent);
        if let Some(snapshot) = last {
            finished.push(snapshot);
        }
    }
}

/// Reports the snapshots whose last chunk was just written.
fn report_written(shared: &Shared, finished: &mut Vec<OutSnapshot>) {
    for mut snapshot in finished.drain(..) {
        Counters::bump(&shared.counters.snapshots_sent);
        snapshot.finish(SnapshotSent::Written);
    }
}

/// Refused and delivered frames and the peer's words waiting for the
/// writer, which writes all those waiting in one batch (a peer refused more
/// than this at once by the read loop gets no word on the rest; it fails
/// with its connection or times out). A file worker waits for room only
/// for its last word, once it decided its stream's end (never for a
/// credit: `CreditsToGrant`; never once its stream was let go).
const CONTROL_QUEUED_MAX: usize = 64;

/// Waits until the link's streamed snapshot being sent (taken from the link
/// when none is and `room` says another may wait for delivery) has a frame
/// to write, ended, or failed.
async fn stream_ready(
    link: &Option<Arc<crate::link::PeerLink>>,
    active: &mut Option<ActiveStream>,
    room: bool,
    credits: &Arc<StreamCredits>,
    credit_timeout: Duration,
) -> StreamEvent {
    let Some(link) = link else {
        return std::future::pending().await;
    };
    if active.is_none() {
        if !room {
            return std::future::pending().await;
        }
        let out = link.next_stream().await;
        *active = Some(ActiveStream::new(out, Arc::clone(credits), credit_timeout));
    }
    match active {
        Some(a) => a.ready().await,
        None => std::future::pending().await,
    }
}

async fn snapshot_pending(link: &Option<Arc<crate::link::PeerLink>>) {
    match link {
        Some(link) => link.snapshot_pending().await,
        None => std::future::pending().await,
    }
}

async fn next_queued(queue: &mut Option<&mut Queue>) -> Option<bytes::Bytes> {
    match queue {
        Some(q) => q.recv().await,
        None => std::future::pending().await,
    }
}

/// Seals `plaintext` (whole frames) into records and writes them in one write.
async fn write_batch(
    shared: &Shared,
    writer: &mut OwnedWriteHalf,
    noise: &Noise,
    plaintext: &[u8],
    raft_frames: u64,
) -> Result<(), ConnectionError> {
    let mut out = BytesMut::with_capacity(plaintext.len() + plaintext.len() / 1000 + 64);
    seal_records(&mut noise.lock(), plaintext, &mut out).map_err(ConnectionError::Encrypt)?;
    match timeout(shared.config.write_timeout, writer.write_all(&out)).await {
        Err(_) => {
            Counters::bump(&shared.counters.connections_closed_write_timeout);
            return Err(ConnectionError::WriteTimeout);
        }
        Ok(Err(e)) => return Err(ConnectionError::Io(e)),
        Ok(Ok(())) => {}
    }
    let c = &shared.counters;
    Counters::bump(&c.writes);
    Counters::add(&c.bytes_written, out.len() as u64);
    Counters::add(&c.frames_sent, raft_frames);
    Ok(())
}

/// Reads records until the connection fails; returns why. `accepted`: this
/// process accepted the connection (the peer dialed it and sends streams on
/// it).
#[allow(clippy::too_many_arguments)]
async fn read_loop(
    shared: Arc<Shared>,
    mut reader: RecordReader,
    noise: Noise,
    key: PublicKey,
    first: Vec<u8>,
    control: mpsc::Sender<Control>,
    to_grant: Arc<CreditsToGrant>,
    credits: Arc<StreamCredits>,
    accepted: bool,
) -> ConnectionError {
    let mut streams = InStreams::new(
        Arc::clone(&shared),
        key,
        control,
        to_grant,
        credits,
        accepted,
    );
    let mut assembler = FrameAssembler::new(shared.config.frame_bytes_max);
    let mut snapshots = Reassembler::new(
        shared.config.snapshot_bytes_max,
        shared.config.snapshot_chunk_timeout,
    );
    let mut plaintext = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
    let mut pending = Some(first);
    loop {
        if let Some(first) = pending.take() {
            assembler.push(&first);
            if let Err(e) = drain_frames(&shared, key, &mut assembler, &mut snapshots, &mut streams)
            {
                return e;
            }
            continue;
        }
        let idle = shared.config.idle_timeout;
        let n = match read_plaintext(&mut reader, &noise, idle, &mut plaintext).await {
            Ok(n) => n,
            Err(e) => {
                let c = &shared.counters;
                match e {
                    ConnectionError::Idle => Counters::bump(&c.connections_closed_idle),
                    ConnectionError::Decrypt(_) => {
                        Counters::bump(&c.records_undecryptable);
                        Counters::bump(&c.connections_closed_protocol);
                    }
                    _ => {}
                }
                return e;
            }
        };
        assembler.push(&plaintext[..n]);
        if let Err(e) = drain_frames(&shared, key, &mut assembler, &mut snapshots, &mut streams) {
            return e;
        }
        let expired = snapshots.expire(Instant::now());
        Counters::add(&shared.counters.snapshots_abandoned, expired);
        streams.expire(Instant::now());
    }
}

/// Takes every whole frame out of `assembler` and handles it; never waits
/// (file work runs on the streams' workers).
fn drain_frames(
    shared: &Shared,
    key: PublicKey,
    assembler: &mut FrameAssembler,
    snapshots: &mut Reassembler,
    streams: &mut InStreams,
) -> Result<(), ConnectionError> {
    loop {
        let body = match assembler.next_frame() {
            Ok(None) => return Ok(()),
            Ok(Some(body)) => body,
            Err(e) => {
                Counters::bump(&shared.counters.connections_closed_protocol);
                return Err(match e {
                    AssembleError::TooLarge { len } => {
                        Counters::bump(&shared.counters.frames_oversize);
                        ConnectionError::FrameTooLarge {
                            len,
                            max: shared.config.frame_bytes_max,
                        }
                    }
                    AssembleError::Empty => {
                        Counters::bump(&shared.counters.frames_malformed);
                        ConnectionError::Frame(DecodeError::Invalid {
                            what: "empty frame",
                        })
                    }
                });
            }
        };
        let frame = match Frame::decode(&body) {
            Ok(frame) => frame,
            Err(e) => {
                Counters::bump(&shared.counters.frames_malformed);
                Counters::bump(&shared.counters.connections_closed_protocol);
                return Err(ConnectionError::Frame(e));
            }
        };
        match frame {
            Frame::StreamOpen {
                header,
                descriptor,
                message,
            } => {
                let inbox = check_header(shared, key, header.raft);
                streams.open(inbox, header, descriptor, message);
            }
            Frame::StreamData { header, seq, data } => streams.data(header, seq, data),
            Frame::StreamEnd { header } => streams.end(header),
            Frame::StreamRefused { stream, reason } => streams.refused_frame(stream, reason),
            Frame::StreamCredit { stream, granted } => streams.peer_credit(stream, granted),
            Frame::StreamDelivered { stream } => streams.peer_delivered(stream),
            other => accept_frame(shared, key, other, snapshots),
        }
    }
}

/// Checks one frame from the peer proving `key` and delivers it if it passes.
/// A header that does not decode is an error (the connection closes); a frame
/// that fails a check is dropped and counted.
fn accept_frame(shared: &Shared, key: PublicKey, frame: Frame<'_>, snapshots: &mut Reassembler) {
    let c = &shared.counters;
    let (header, payload) = match frame {
        Frame::Keepalive => {
            Counters::bump(&c.keepalives_received);
            return;
        }
        Frame::Raft { header, payload } => (header, payload),
        Frame::SnapshotChunk { header, data } => {
            accept_chunk(shared, key, header, data, snapshots);
            return;
        }
        // Handled by the caller.
        Frame::StreamOpen { .. }
        | Frame::StreamData { .. }
        | Frame::StreamEnd { .. }
        | Frame::StreamRefused { .. }
        | Frame::StreamCredit { .. }
        | Frame::StreamDelivered { .. } => return,
    };
    Counters::bump(&c.frames_received);
    let Some(inbox) = check_header(shared, key, header) else {
        return;
    };
    let message = match decode_message(payload) {
        Ok(message) => message,
        Err(e) => {
            Counters::bump(&c.frames_dropped_undecodable);
            tracing::debug!(peer = %key, error = %e, "dropped an authenticated frame that is not a raft message");
            return;
        }
    };
    if message.from != header.from || message.to != header.to {
        Counters::bump(&c.frames_dropped_header_mismatch);
        tracing::debug!(peer = %key, "dropped a raft message whose from/to differ from its frame header");
        return;
    }
    inbox.deliver(Envelope {
        group: header.group,
        message,
    });
    Counters::bump(&c.frames_delivered);
}

/// Buffers one snapshot chunk after the header checks; decodes, checks and
/// delivers the snapshot once whole.
fn accept_chunk(
    shared: &Shared,
    key: PublicKey,
    header: ChunkHeader,
    data: &[u8],
    snapshots: &mut Reassembler,
) {
    let c = &shared.counters;
    Counters::bump(&c.snapshot_chunks_received);
    let Some(inbox) = check_header(shared, key, header.raft) else {
        return;
    };
    let bytes = match snapshots.push(Instant::now(), header, data) {
        Chunk::Incomplete { abandoned } => {
            Counters::add(&c.snapshots_abandoned, abandoned);
            return;
        }
        Chunk::Refused(why) => {
            Counters::bump(&c.snapshot_chunks_refused);
            tracing::debug!(peer = %key, ?why, "refused a snapshot chunk");
            return;
        }
        Chunk::Complete { bytes, abandoned } => {
            Counters::add(&c.snapshots_abandoned, abandoned);
            bytes
        }
    };
    let message = match decode_message(&bytes) {
        Ok(message) => message,
        Err(e) => {
            Counters::bump(&c.snapshots_dropped);
            tracing::debug!(peer = %key, error = %e, "dropped a reassembled snapshot that is not a raft message");
            return;
        }
    };
    let metadata = message.get_snapshot().get_metadata();
    if message.get_msg_type() != MessageType::MsgSnapshot
        || message.from != header.raft.from
        || message.to != header.raft.to
        || metadata.index != header.index
        || metadata.term != header.term
    {
        Counters::bump(&c.snapshots_dropped);
        tracing::debug!(peer = %key, "dropped a reassembled snapshot that differs from its chunks' header");
        return;
    }
    inbox.deliver(Envelope {
        group: header.raft.group,
        message,
    });
    Counters::bump(&c.snapshots_received);
}

/// Checks 1 to 3 on a raft or chunk header: the inbox to deliver to, or
/// `None` (counted) when the frame is to be dropped.
fn check_header(
    shared: &Shared,
    key: PublicKey,
    header: RaftHeader,
) -> Option<Arc<dyn vaultfleet::transport::Inbox>> {
    let c = &shared.counters;
    let directory = shared.directory();
    if directory.key_of(header.from) != Some(key) || directory.is_local(header.from) {
        Counters::bump(&c.frames_dropped_forged_from);
        tracing::debug!(peer = %key, from = header.from, "dropped a frame whose sender is not the authenticated peer");
        return None;
    }
    if !directory.is_local(header.to) {
        Counters::bump(&c.frames_refused_unknown_replica);
        tracing::debug!(peer = %key, to = header.to, "refused a frame for a replica not hosted here");
        return None;
    }
    match shared.route(header.group, header.to) {
        Ok(inbox) => Some(inbox),
        Err(RouteMiss::Group) => {
            Counters::bump(&c.frames_refused_unknown_group);
            tracing::debug!(peer = %key, group = header.group, "refused a frame for a group not hosted here");
            None
        }
        Err(RouteMiss::Replica) => {
            Counters::bump(&c.frames_refused_unknown_replica);
            tracing::debug!(peer = %key, group = header.group, to = header.to, "refused a frame for a replica without an inbox");
            None
        }
    }
}

/// A timer that first fires one `period` from now, then every `period`,
/// delaying (not bursting) the ticks it missed: when a connection checks
/// whether a keepalive is due.
pub(crate) fn keepalive_timer(period: std::time::Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval_at(Instant::now() + period, period);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}
