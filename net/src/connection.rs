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

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use vaultfleet::codec::DecodeError;
use vaultfleet::replica::decode_message;
use vaultfleet::transport::Envelope;

use crate::error::ConnectionError;
use crate::handshake::Session;
use crate::keys::PublicKey;
use crate::link::Queue;
use crate::stats::Counters;
use crate::transport::{RouteMiss, Shared};
use crate::wire::frame::{encode_keepalive, AssembleError, Frame, FrameAssembler};
use crate::wire::record::{seal_records, NOISE_MESSAGE_BYTES_MAX};

/// The read half as a stream of records.
pub(crate) type RecordReader = FramedRead<OwnedReadHalf, LengthDelimitedCodec>;

type Noise = Arc<Mutex<snow::TransportState>>;

/// Runs the connection until it fails or is closed; returns why it ended.
/// `queue` is the peer's outbound queue (outbound connections); an inbound
/// connection writes keepalives only.
pub(crate) async fn run(
    shared: Arc<Shared>,
    reader: RecordReader,
    mut writer: OwnedWriteHalf,
    session: Session,
    mut queue: Option<&mut Queue>,
) -> ConnectionError {
    let key = session.remote_key;
    let noise: Noise = Arc::new(Mutex::new(session.noise));
    let mut reader_task = shared.runtime.spawn(read_loop(
        Arc::clone(&shared),
        reader,
        Arc::clone(&noise),
        key,
    ));
    let config = &shared.config;
    let mut directory = shared.directory_changed.subscribe();
    let mut keepalive = tokio::time::interval_at(
        Instant::now() + config.keepalive_interval,
        config.keepalive_interval,
    );
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_write = Instant::now();
    let mut batch = BytesMut::new();
    // The handshake checked a snapshot of the directory; an update may have
    // landed since, before `directory` subscribed. Check once more now: later
    // updates wake the `changed` branch below.
    let still_pinned = shared.directory().is_pinned_peer(&key);
    let reason = loop {
        if !still_pinned {
            Counters::bump(&shared.counters.connections_closed_key_dropped);
            break ConnectionError::KeyDropped;
        }
        tokio::select! {
            _ = shared.cancel.cancelled() => break ConnectionError::Shutdown,
            ended = &mut reader_task => {
                break ended.unwrap_or(ConnectionError::Shutdown);
            }
            changed = directory.changed() => {
                if changed.is_err() {
                    break ConnectionError::Shutdown;
                }
                if !shared.directory().is_pinned_peer(&key) {
                    Counters::bump(&shared.counters.connections_closed_key_dropped);
                    break ConnectionError::KeyDropped;
                }
            }
            first = next_queued(&mut queue) => {
                let Some(first) = first else { break ConnectionError::Shutdown };
                batch.clear();
                batch.extend_from_slice(&first);
                let mut frames = 1;
                if let Some(q) = queue.as_deref_mut() {
                    while batch.len() < config.batch_bytes_max {
                        let Some(next) = q.try_recv() else { break };
                        batch.extend_from_slice(&next);
                        frames += 1;
                    }
                }
                if let Err(e) = write_batch(&shared, &mut writer, &noise, &batch, frames).await {
                    break e;
                }
                last_write = Instant::now();
            }
            _ = keepalive.tick() => {
                if last_write.elapsed() >= config.keepalive_interval {
                    if let Err(e) = write_batch(&shared, &mut writer, &noise, &encode_keepalive(), 0).await {
                        break e;
                    }
                    last_write = Instant::now();
                }
            }
        }
    };
    reader_task.abort();
    let _ = timeout(Duration::from_millis(100), writer.shutdown()).await;
    reason
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

/// Reads records until the connection fails; returns why.
async fn read_loop(
    shared: Arc<Shared>,
    mut reader: RecordReader,
    noise: Noise,
    key: PublicKey,
) -> ConnectionError {
    let mut assembler = FrameAssembler::new(shared.config.frame_bytes_max);
    let mut plaintext = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
    loop {
        let record = match timeout(shared.config.idle_timeout, reader.next()).await {
            Err(_) => {
                Counters::bump(&shared.counters.connections_closed_idle);
                return ConnectionError::Idle;
            }
            Ok(None) => return ConnectionError::PeerClosed,
            Ok(Some(Err(e))) => return ConnectionError::Io(e),
            Ok(Some(Ok(record))) => record,
        };
        let decrypted = noise.lock().read_message(&record, &mut plaintext);
        let n = match decrypted {
            Ok(n) => n,
            Err(e) => {
                Counters::bump(&shared.counters.records_undecryptable);
                Counters::bump(&shared.counters.connections_closed_protocol);
                return ConnectionError::Decrypt(e);
            }
        };
        assembler.push(&plaintext[..n]);
        loop {
            let body = match assembler.next_frame() {
                Ok(None) => break,
                Ok(Some(body)) => body,
                Err(e) => {
                    Counters::bump(&shared.counters.connections_closed_protocol);
                    return match e {
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
                    };
                }
            };
            if let Err(e) = accept_frame(&shared, key, &body) {
                Counters::bump(&shared.counters.frames_malformed);
                Counters::bump(&shared.counters.connections_closed_protocol);
                return ConnectionError::Frame(e);
            }
        }
    }
}

/// Checks one frame from the peer proving `key` and delivers it if it passes.
/// A header that does not decode is an error (the connection closes); a frame
/// that fails a check is dropped and counted.
fn accept_frame(shared: &Shared, key: PublicKey, body: &[u8]) -> Result<(), DecodeError> {
    let c = &shared.counters;
    let (header, payload) = match Frame::decode(body)? {
        Frame::Keepalive => {
            Counters::bump(&c.keepalives_received);
            return Ok(());
        }
        Frame::Raft { header, payload } => (header, payload),
    };
    Counters::bump(&c.frames_received);
    let directory = shared.directory();
    if directory.key_of(header.from) != Some(key) || directory.is_local(header.from) {
        Counters::bump(&c.frames_dropped_forged_from);
        tracing::debug!(peer = %key, from = header.from, "dropped a frame whose sender is not the authenticated peer");
        return Ok(());
    }
    if !directory.is_local(header.to) {
        Counters::bump(&c.frames_refused_unknown_replica);
        tracing::debug!(peer = %key, to = header.to, "refused a frame for a replica not hosted here");
        return Ok(());
    }
    let inbox = match shared.route(header.group, header.to) {
        Ok(inbox) => inbox,
        Err(RouteMiss::Group) => {
            Counters::bump(&c.frames_refused_unknown_group);
            tracing::debug!(peer = %key, group = header.group, "refused a frame for a group not hosted here");
            return Ok(());
        }
        Err(RouteMiss::Replica) => {
            Counters::bump(&c.frames_refused_unknown_replica);
            tracing::debug!(peer = %key, group = header.group, to = header.to, "refused a frame for a replica without an inbox");
            return Ok(());
        }
    };
    let message = match decode_message(payload) {
        Ok(message) => message,
        Err(e) => {
            Counters::bump(&c.frames_dropped_undecodable);
            tracing::debug!(peer = %key, error = %e, "dropped an authenticated frame that is not a raft message");
            return Ok(());
        }
    };
    if message.from != header.from || message.to != header.to {
        Counters::bump(&c.frames_dropped_header_mismatch);
        tracing::debug!(peer = %key, "dropped a raft message whose from/to differ from its frame header");
        return Ok(());
    }
    inbox.deliver(Envelope {
        group: header.group,
        message,
    });
    Counters::bump(&c.frames_delivered);
    Ok(())
}
