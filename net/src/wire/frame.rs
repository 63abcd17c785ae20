//! Frames: what the Noise records carry once the handshake is done.
//!
//! ```text
//! u32 body length (1..=frame_bytes_max)
//! body: u8 kind
//!   kind 1, raft:      u64 group, u64 from, u64 to, raft message (protobuf 2, the rest)
//!   kind 2, keepalive: nothing
//!   kind 5, snapshot chunk: u64 group, u64 from, u64 to, u64 snapshot index,
//!                     u64 snapshot term, u64 offset, u64 total, data (the rest, non-empty)
//!   kind 6, stream open:   u64 group, u64 from, u64 to, u64 stream id,
//!                     descriptor (97 bytes), raft message (the rest, non-empty)
//!   kind 7, stream data:   u64 group, u64 from, u64 to, u64 stream id, u32 chunk seq,
//!                     data (the rest, non-empty; a part of chunk seq)
//!   kind 8, stream end:    u64 group, u64 from, u64 to, u64 stream id
//!   kind 9, stream refused (receiver to sender) or cancelled (sender to
//!           receiver): u64 stream id, u8 reason
//!   kind 10, stream credit (receiver to sender): u64 stream id, u32 granted
//!   kind 11, stream delivered (receiver to sender): u64 stream id
//! ```
//!
//! A streamed snapshot (a format-2 `MsgSnapshot` whose state lives in a
//! snapshot file) travels as one open frame (the file's descriptor and the
//! small raft message), the file's chunks in order, each cut into data frames
//! of at most `snapshot_chunk_bytes` (and the frame limit), then an end frame.
//! The receiver writes each chunk into its replica's snapshot files once
//! whole, and delivers the message only after the file checked against the
//! descriptor's digest. A receiver that refuses a stream says so with a
//! refused frame on the same connection, with a [`RefusalReason`] (an unknown
//! reason byte reads as [`RefusalReason::Other`]), so the sender stops and
//! reports `Failed`. The receiver paces the sender with credit frames:
//! `granted` is the number of chunks the sender may have sent in all so far
//! (cumulative, never lower than before); data for chunk `seq` may be sent
//! only while `seq < granted`. Once the receiver delivered the message (the
//! file checked and durable), it says so with a delivered frame; only then
//! does the sender report `Written`, so the raft frames it sends after that
//! (an append at the snapshot's index + 1) reach the receiver's replica after
//! the snapshot. A sender that gives up a stream it opened (no credit or no
//! delivered frame in time, its file unreadable) says so with a kind 9 frame
//! in its own direction (a cancel), so the receiver drops the stream's file
//! work, slot and partial file at once rather than at its own timeout. The
//! direction is never ambiguous: streams go only from the process that
//! dialed a connection to the one that accepted it, so a kind 9 from the
//! acceptor refuses a stream and one from the dialer cancels one (a
//! receiver of an older build ignores the cancel as a refusal of a stream
//! it does not send). A peer of an older build does not know kinds 6 to 11
//! and closes the connection on the first one (`docs/network.md`, "Streamed
//! snapshots"; kinds 6 to 11 are unreleased and may still change).
//!
//! A snapshot (a `MsgSnapshot` raft message, encoded once) travels as chunk
//! frames of consecutive byte ranges `[offset, offset + data)` of its
//! encoding, `total` bytes in all; the receiver decodes it only once whole.
//!
//! The header is decoded (by the engine's strict [`Reader`]) and checked before a
//! single byte of the raft message is (the checks are listed in `docs/network.md`).

use bytes::{BufMut, Bytes, BytesMut};
use vaultfleet::codec::{DecodeError, Reader};
use vaultfleet::ReplicaId;

/// Bytes of a frame's length prefix.
pub const FRAME_LENGTH_BYTES: usize = 4;
/// Bytes of a raft frame's body before the raft message: kind, group, from, to.
pub const RAFT_HEADER_BYTES: usize = 1 + 8 + 8 + 8;
/// Smallest frame limit a configuration may set or a peer may announce (a
/// snapshot chunk header and a byte: every kind of frame then fits).
pub const FRAME_BODY_BYTES_MIN: usize = CHUNK_HEADER_BYTES + 1;
/// Hard cap on `frame_bytes_max`, in bytes.
pub const FRAME_BYTES_LIMIT: usize = 16 << 20;

/// Bytes of a snapshot chunk frame's body before its data.
pub const CHUNK_HEADER_BYTES: usize = 1 + 8 * 7;

const KIND_RAFT: u8 = 1;
const KIND_KEEPALIVE: u8 = 2;
// Kinds 3 and 4 are the client protocol's (`wire::client`).
const KIND_SNAPSHOT_CHUNK: u8 = 5;

/// Bytes of a stream frame's header (kind, group, from, to, stream id).
pub const STREAM_HEADER_BYTES: usize = 1 + 8 * 4;
/// Bytes of a stream data frame's body before its data.
pub const STREAM_DATA_HEADER_BYTES: usize = STREAM_HEADER_BYTES + 4;

const KIND_STREAM_OPEN: u8 = 6;
const KIND_STREAM_DATA: u8 = 7;
const KIND_STREAM_END: u8 = 8;
const KIND_STREAM_REFUSED: u8 = 9;
const KIND_STREAM_CREDIT: u8 = 10;
const KIND_STREAM_DELIVERED: u8 = 11;

/// Bytes of a stream refused frame's body (kind, stream id, reason).
const STREAM_REFUSED_BYTES: usize = 1 + 8 + 1;
/// Bytes of a stream credit frame's body (kind, stream id, granted).
const STREAM_CREDIT_BYTES: usize = 1 + 8 + 4;
/// Bytes of a stream delivered frame's body (kind, stream id).
const STREAM_DELIVERED_BYTES: usize = 1 + 8;

/// Why a receiver refused a streamed snapshot (the byte after the stream id
/// in a refused frame). A byte this build does not know decodes as
/// [`RefusalReason::Other`]: a newer peer's reason is never a protocol error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefusalReason {
    /// Anything else (a duplicate or unknown stream id, the replica's inbox
    /// unable to take the message, an internal failure, or a reason this
    /// build does not know).
    Other,
    /// The receiver had no stream slot free (`snapshot_streams_max`, or the
    /// sending peer's share of it).
    Busy,
    /// The replica did not admit the stream: not hosted here, no snapshot
    /// files, or its own checks (leader, term, index, group).
    NotAdmitted,
    /// The descriptor (or the message naming it) is malformed or does not match.
    BadDescriptor,
    /// Above the receiver's `snapshot_file_bytes_max` or its files' cap.
    TooLarge,
    /// The receiver's snapshot disk has too little free space.
    NoSpace,
    /// A data frame out of order, past its chunk or with another header, an
    /// early end, or a chunk the files refused.
    BadChunk,
    /// The whole file failed its digest check (or could not be made durable).
    Digest,
    /// No whole chunk arrived within `snapshot_chunk_timeout` while the
    /// sender had credit.
    Timeout,
    /// The sender sent a chunk beyond the credit granted.
    Credit,
}

impl RefusalReason {
    /// Every reason, in wire-byte order.
    pub const ALL: [RefusalReason; 10] = [
        RefusalReason::Other,
        RefusalReason::Busy,
        RefusalReason::NotAdmitted,
        RefusalReason::BadDescriptor,
        RefusalReason::TooLarge,
        RefusalReason::NoSpace,
        RefusalReason::BadChunk,
        RefusalReason::Digest,
        RefusalReason::Timeout,
        RefusalReason::Credit,
    ];

    /// The reason's byte on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            RefusalReason::Other => 0,
            RefusalReason::Busy => 1,
            RefusalReason::NotAdmitted => 2,
            RefusalReason::BadDescriptor => 3,
            RefusalReason::TooLarge => 4,
            RefusalReason::NoSpace => 5,
            RefusalReason::BadChunk => 6,
            RefusalReason::Digest => 7,
            RefusalReason::Timeout => 8,
            RefusalReason::Credit => 9,
        }
    }

    /// The reason a byte names; an unknown byte is [`RefusalReason::Other`].
    pub fn from_byte(byte: u8) -> Self {
        Self::ALL
            .into_iter()
            .find(|r| r.to_byte() == byte)
            .unwrap_or(RefusalReason::Other)
    }
}

/// The clear header of a streamed snapshot's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    /// Group, sender and receiver, checked as a raft frame's.
    pub raft: RaftHeader,
    /// The sender's number for this transfer (unique per sending process).
    pub stream: u64,
}

/// The clear header of a snapshot chunk frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Group, sender and receiver, checked as a raft frame's.
    pub raft: RaftHeader,
    /// The snapshot's index (its metadata's).
    pub index: u64,
    /// The snapshot's term.
    pub term: u64,
    /// Where this chunk's data starts in the encoded message.
    pub offset: u64,
    /// The encoded message's length.
    pub total: u64,
}

/// The clear header of a raft frame, inside the encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftHeader {
    /// The raft group.
    pub group: u64,
    /// The sending replica (must be pinned to the authenticated key).
    pub from: ReplicaId,
    /// The receiving replica (must be hosted by the receiving process).
    pub to: ReplicaId,
}

/// A decoded frame body; the raft message is still undecoded bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A raft message.
    Raft {
        /// Its header.
        header: RaftHeader,
        /// The encoded raft message.
        payload: &'a [u8],
    },
    /// A keepalive: proof that the peer is alive and reading keys.
    Keepalive,
    /// One chunk of a snapshot message.
    SnapshotChunk {
        /// Its header.
        header: ChunkHeader,
        /// Its bytes of the encoded message.
        data: &'a [u8],
    },
    /// The start of a streamed snapshot.
    StreamOpen {
        /// Its header.
        header: StreamHeader,
        /// The encoded snapshot descriptor (decoded and checked by the receiver).
        descriptor: &'a [u8],
        /// The encoded `MsgSnapshot` naming the file.
        message: &'a [u8],
    },
    /// A part of one chunk of a streamed snapshot.
    StreamData {
        /// Its header.
        header: StreamHeader,
        /// The chunk this part belongs to.
        seq: u32,
        /// The bytes (non-empty).
        data: &'a [u8],
    },
    /// The end of a streamed snapshot: every chunk was sent.
    StreamEnd {
        /// Its header.
        header: StreamHeader,
    },
    /// From the process that accepted the connection: the receiver refused
    /// the sender's stream `stream`. From the one that dialed it: the sender
    /// cancelled its stream `stream` (gave it up).
    StreamRefused {
        /// The sender's stream id.
        stream: u64,
        /// Why (an unknown byte reads as [`RefusalReason::Other`]).
        reason: RefusalReason,
    },
    /// The receiver lets the sender have sent `granted` chunks of stream
    /// `stream` in all (cumulative).
    StreamCredit {
        /// The sender's stream id.
        stream: u64,
        /// Chunks the sender may have sent in all so far.
        granted: u32,
    },
    /// The receiver delivered the message of the sender's stream `stream`
    /// to its replica (the file checked against its digest and durable).
    StreamDelivered {
        /// The sender's stream id.
        stream: u64,
    },
}

fn read_stream_header(r: &mut Reader<'_>) -> Result<StreamHeader, DecodeError> {
    Ok(StreamHeader {
        raft: RaftHeader {
            group: r.u64("stream group")?,
            from: r.u64("stream from")?,
            to: r.u64("stream to")?,
        },
        stream: r.u64("stream id")?,
    })
}

impl<'a> Frame<'a> {
    /// Decodes a frame body (without its length prefix). Only the header is read.
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        match r.u8("frame kind")? {
            KIND_RAFT => {
                let header = RaftHeader {
                    group: r.u64("frame group")?,
                    from: r.u64("frame from")?,
                    to: r.u64("frame to")?,
                };
                Ok(Frame::Raft {
                    header,
                    payload: r.rest(),
                })
            }
            KIND_KEEPALIVE => {
                r.expect_empty("keepalive frame")?;
                Ok(Frame::Keepalive)
            }
            KIND_SNAPSHOT_CHUNK => {
                let raft = RaftHeader {
                    group: r.u64("chunk group")?,
                    from: r.u64("chunk from")?,
                    to: r.u64("chunk to")?,
                };
                let header = ChunkHeader {
                    raft,
                    index: r.u64("chunk snapshot index")?,
                    term: r.u64("chunk snapshot term")?,
                    offset: r.u64("chunk offset")?,
                    total: r.u64("chunk total")?,
                };
                let data = r.rest();
                if data.is_empty() {
                    return Err(DecodeError::Invalid {
                        what: "empty snapshot chunk",
                    });
                }
                Ok(Frame::SnapshotChunk { header, data })
            }
            KIND_STREAM_OPEN => {
                let header = read_stream_header(&mut r)?;
                let descriptor =
                    r.take(vaultfleet::snapshot::DESCRIPTOR_BYTES, "stream descriptor")?;
                let message = r.rest();
                if message.is_empty() {
                    return Err(DecodeError::Invalid {
                        what: "stream open without a message",
                    });
                }
                Ok(Frame::StreamOpen {
                    header,
                    descriptor,
                    message,
                })
            }
            KIND_STREAM_DATA => {
                let header = read_stream_header(&mut r)?;
                let seq = r.u32("stream chunk seq")?;
                let data = r.rest();
                if data.is_empty() {
                    return Err(DecodeError::Invalid {
                        what: "empty stream data",
                    });
                }
                Ok(Frame::StreamData { header, seq, data })
            }
            KIND_STREAM_END => {
                let header = read_stream_header(&mut r)?;
                r.expect_empty("stream end frame")?;
                Ok(Frame::StreamEnd { header })
            }
            KIND_STREAM_REFUSED => {
                let stream = r.u64("refused stream id")?;
                let reason = RefusalReason::from_byte(r.u8("refusal reason")?);
                r.expect_empty("stream refused frame")?;
                Ok(Frame::StreamRefused { stream, reason })
            }
            KIND_STREAM_CREDIT => {
                let stream = r.u64("credit stream id")?;
                let granted = r.u32("credit granted")?;
                r.expect_empty("stream credit frame")?;
                Ok(Frame::StreamCredit { stream, granted })
            }
            KIND_STREAM_DELIVERED => {
                let stream = r.u64("delivered stream id")?;
                r.expect_empty("stream delivered frame")?;
                Ok(Frame::StreamDelivered { stream })
            }
            other => Err(DecodeError::UnknownValue {
                what: "frame kind",
                found: other.into(),
            }),
        }
    }
}

/// A raft frame, length prefix included, ready to queue. The caller has
/// checked `payload.len() + RAFT_HEADER_BYTES` against the frame limit.
pub fn encode_raft(header: RaftHeader, payload: &[u8]) -> Bytes {
    let body = RAFT_HEADER_BYTES + payload.len();
    let mut out = BytesMut::with_capacity(FRAME_LENGTH_BYTES + body);
    // The caller bounds `body` by frame_bytes_max <= FRAME_BYTES_LIMIT.
    debug_assert!(body <= FRAME_BYTES_LIMIT);
    out.put_u32(u32::try_from(body).unwrap_or(u32::MAX));
    out.put_u8(KIND_RAFT);
    out.put_u64(header.group);
    out.put_u64(header.from);
    out.put_u64(header.to);
    out.put_slice(payload);
    out.freeze()
}

/// A snapshot chunk frame, length prefix included. The caller keeps
/// `CHUNK_HEADER_BYTES + data.len()` within the frame limit.
pub fn encode_chunk(header: ChunkHeader, data: &[u8]) -> Bytes {
    let body = CHUNK_HEADER_BYTES + data.len();
    debug_assert!(body <= FRAME_BYTES_LIMIT && !data.is_empty());
    let mut out = BytesMut::with_capacity(FRAME_LENGTH_BYTES + body);
    out.put_u32(u32::try_from(body).unwrap_or(u32::MAX));
    out.put_u8(KIND_SNAPSHOT_CHUNK);
    out.put_u64(header.raft.group);
    out.put_u64(header.raft.from);
    out.put_u64(header.raft.to);
    out.put_u64(header.index);
    out.put_u64(header.term);
    out.put_u64(header.offset);
    out.put_u64(header.total);
    out.put_slice(data);
    out.freeze()
}

fn put_stream_header(out: &mut BytesMut, kind: u8, header: StreamHeader) {
    out.put_u8(kind);
    out.put_u64(header.raft.group);
    out.put_u64(header.raft.from);
    out.put_u64(header.raft.to);
    out.put_u64(header.stream);
}

fn put_length(out: &mut BytesMut, body: usize) {
    debug_assert!(body <= FRAME_BYTES_LIMIT);
    out.put_u32(u32::try_from(body).unwrap_or(u32::MAX));
}

/// A stream open frame, length prefix included. The caller keeps the body
/// (`STREAM_HEADER_BYTES + descriptor + message`) within the frame limit.
pub fn encode_stream_open(header: StreamHeader, descriptor: &[u8], message: &[u8]) -> Bytes {
    let body = STREAM_HEADER_BYTES + descriptor.len() + message.len();
    let mut out = BytesMut::with_capacity(FRAME_LENGTH_BYTES + body);
    put_length(&mut out, body);
    put_stream_header(&mut out, KIND_STREAM_OPEN, header);
    out.put_slice(descriptor);
    out.put_slice(message);
    out.freeze()
}

/// A stream data frame, length prefix included. The caller keeps
/// `STREAM_DATA_HEADER_BYTES + data.len()` within the frame limit.
pub fn encode_stream_data(header: StreamHeader, seq: u32, data: &[u8]) -> Bytes {
    let body = STREAM_DATA_HEADER_BYTES + data.len();
    let mut out = BytesMut::with_capacity(FRAME_LENGTH_BYTES + body);
    put_length(&mut out, body);
    put_stream_header(&mut out, KIND_STREAM_DATA, header);
    out.put_u32(seq);
    out.put_slice(data);
    out.freeze()
}

/// A stream end frame, length prefix included.
pub fn encode_stream_end(header: StreamHeader) -> Bytes {
    let mut out = BytesMut::with_capacity(FRAME_LENGTH_BYTES + STREAM_HEADER_BYTES);
    put_length(&mut out, STREAM_HEADER_BYTES);
    put_stream_header(&mut out, KIND_STREAM_END, header);
    out.freeze()
}

/// A stream refused frame, length prefix included.
pub fn encode_stream_refused(stream: u64, reason: RefusalReason) -> Bytes {
    let mut out = BytesMut::with_capacity(FRAME_LENGTH_BYTES + STREAM_REFUSED_BYTES);
    put_length(&mut out, STREAM_REFUSED_BYTES);
    out.put_u8(KIND_STREAM_REFUSED);
    out.put_u64(stream);
    out.put_u8(reason.to_byte());
    out.freeze()
}

/// A stream credit frame, length prefix included.
pub fn encode_stream_credit(stream: u64, granted: u32) -> Bytes {
    let mut out = BytesMut::with_capacity(FRAME_LENGTH_BYTES + STREAM_CREDIT_BYTES);
    put_length(&mut out, STREAM_CREDIT_BYTES);
    out.put_u8(KIND_STREAM_CREDIT);
    out.put_u64(stream);
    out.put_u32(granted);
    out.freeze()
}

/// A stream delivered frame, length prefix included.
pub fn encode_stream_delivered(stream: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(FRAME_LENGTH_BYTES + STREAM_DELIVERED_BYTES);
    put_length(&mut out, STREAM_DELIVERED_BYTES);
    out.put_u8(KIND_STREAM_DELIVERED);
    out.put_u64(stream);
    out.freeze()
}

/// A keepalive frame, length prefix included.
pub fn encode_keepalive() -> Bytes {
    Bytes::from_static(&[0, 0, 0, 1, KIND_KEEPALIVE])
}

/// Splits the decrypted byte stream into frame bodies, refusing any frame
/// announced above `frame_bytes_max` as soon as its length prefix arrives.
///
/// Bound: the buffer never holds more than one incomplete frame plus one record
/// (`FRAME_LENGTH_BYTES + frame_bytes_max + NOISE_PLAINTEXT_BYTES_MAX`).
#[derive(Debug)]
pub struct FrameAssembler {
    buf: BytesMut,
    frame_bytes_max: usize,
}

/// A frame's length prefix broke the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssembleError {
    /// A frame of length zero (it has no kind).
    Empty,
    /// A frame above the limit.
    TooLarge {
        /// The announced length.
        len: usize,
    },
}

impl FrameAssembler {
    /// An empty assembler.
    pub fn new(frame_bytes_max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            frame_bytes_max,
        }
    }

    /// Appends decrypted bytes.
    pub fn push(&mut self, plaintext: &[u8]) {
        self.buf.extend_from_slice(plaintext);
    }

    /// The next whole frame body, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, AssembleError> {
        let Some(prefix) = self.buf.get(..FRAME_LENGTH_BYTES) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; FRAME_LENGTH_BYTES];
        len_bytes.copy_from_slice(prefix);
        let len = usize::try_from(u32::from_be_bytes(len_bytes)).unwrap_or(usize::MAX);
        if len == 0 {
            return Err(AssembleError::Empty);
        }
        if len > self.frame_bytes_max {
            return Err(AssembleError::TooLarge { len });
        }
        if self.buf.len() < FRAME_LENGTH_BYTES + len {
            return Ok(None);
        }
        let _ = self.buf.split_to(FRAME_LENGTH_BYTES);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Bytes buffered.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_across_arbitrary_splits_and_oversize_is_refused_early() {
        let header = RaftHeader {
            group: 7,
            from: 2,
            to: 1,
        };
        let mut stream = Vec::new();
        stream.extend_from_slice(&encode_raft(header, b"payload"));
        stream.extend_from_slice(&encode_keepalive());
        stream.extend_from_slice(&encode_raft(header, &[9u8; 300]));
        for split in [1, 3, 4, 5, 29, 100, stream.len()] {
            let mut a = FrameAssembler::new(1024);
            let mut bodies = Vec::new();
            for chunk in stream.chunks(split) {
                a.push(chunk);
                while let Some(body) = a.next_frame().unwrap() {
                    bodies.push(body);
                }
            }
            assert_eq!(bodies.len(), 3, "split {split}");
            assert_eq!(
                Frame::decode(&bodies[0]).unwrap(),
                Frame::Raft {
                    header,
                    payload: b"payload"
                }
            );
            assert_eq!(Frame::decode(&bodies[1]).unwrap(), Frame::Keepalive);
            assert!(
                matches!(Frame::decode(&bodies[2]).unwrap(), Frame::Raft { payload, .. } if payload.len() == 300)
            );
            assert_eq!(a.buffered(), 0);
        }
        let mut a = FrameAssembler::new(1024);
        a.push(&(2000u32).to_be_bytes());
        assert_eq!(a.next_frame(), Err(AssembleError::TooLarge { len: 2000 }));
        let mut a = FrameAssembler::new(1024);
        a.push(&[0, 0, 0, 0]);
        assert_eq!(a.next_frame(), Err(AssembleError::Empty));
        assert!(matches!(
            Frame::decode(&[200]),
            Err(DecodeError::UnknownValue { found: 200, .. })
        ));
        assert!(matches!(
            Frame::decode(&[KIND_KEEPALIVE, 0]),
            Err(DecodeError::TrailingBytes { .. })
        ));
        assert!(matches!(
            Frame::decode(&[KIND_RAFT, 0, 0]),
            Err(DecodeError::Truncated { .. })
        ));
        let chunk = ChunkHeader {
            raft: header,
            index: 10,
            term: 2,
            offset: 5,
            total: 9,
        };
        let frame = encode_chunk(chunk, b"abcd");
        assert_eq!(
            Frame::decode(&frame[FRAME_LENGTH_BYTES..]).unwrap(),
            Frame::SnapshotChunk {
                header: chunk,
                data: b"abcd"
            }
        );
        let empty = encode_chunk(chunk, b"x");
        assert!(matches!(
            Frame::decode(&empty[FRAME_LENGTH_BYTES..empty.len() - 1]),
            Err(DecodeError::Invalid { .. })
        ));
    }

    #[test]
    fn stream_frames_round_trip_and_truncated_or_empty_ones_are_refused() {
        let header = StreamHeader {
            raft: RaftHeader {
                group: 7,
                from: 2,
                to: 1,
            },
            stream: 9,
        };
        let descriptor = [5u8; vaultfleet::snapshot::DESCRIPTOR_BYTES];
        let open = encode_stream_open(header, &descriptor, b"msg");
        assert_eq!(
            Frame::decode(&open[FRAME_LENGTH_BYTES..]).unwrap(),
            Frame::StreamOpen {
                header,
                descriptor: &descriptor,
                message: b"msg"
            }
        );
        let data = encode_stream_data(header, 3, b"abc");
        assert_eq!(
            Frame::decode(&data[FRAME_LENGTH_BYTES..]).unwrap(),
            Frame::StreamData {
                header,
                seq: 3,
                data: b"abc"
            }
        );
        let end = encode_stream_end(header);
        assert_eq!(
            Frame::decode(&end[FRAME_LENGTH_BYTES..]).unwrap(),
            Frame::StreamEnd { header }
        );
        let refused = encode_stream_refused(9, RefusalReason::NoSpace);
        assert_eq!(
            Frame::decode(&refused[FRAME_LENGTH_BYTES..]).unwrap(),
            Frame::StreamRefused {
                stream: 9,
                reason: RefusalReason::NoSpace
            }
        );
        let credit = encode_stream_credit(9, 12);
        assert_eq!(
            Frame::decode(&credit[FRAME_LENGTH_BYTES..]).unwrap(),
            Frame::StreamCredit {
                stream: 9,
                granted: 12
            }
        );
        let delivered = encode_stream_delivered(9);
        assert_eq!(
            Frame::decode(&delivered[FRAME_LENGTH_BYTES..]).unwrap(),
            Frame::StreamDelivered { stream: 9 }
        );
        assert_eq!(delivered.len(), FRAME_LENGTH_BYTES + STREAM_DELIVERED_BYTES);
        // Every length prefix matches its body.
        for frame in [&open, &data, &end, &refused, &credit, &delivered] {
            let mut a = FrameAssembler::new(1024);
            a.push(frame);
            assert!(a.next_frame().unwrap().is_some());
            assert_eq!(a.buffered(), 0);
        }
        // An open frame without its message, a short descriptor, empty data,
        // trailing bytes after an end or a refusal: refused.
        let no_message = &open[FRAME_LENGTH_BYTES..open.len() - 3];
        assert!(Frame::decode(no_message).is_err());
        let short = &open[FRAME_LENGTH_BYTES..FRAME_LENGTH_BYTES + STREAM_HEADER_BYTES + 50];
        assert!(Frame::decode(short).is_err());
        assert!(Frame::decode(&data[FRAME_LENGTH_BYTES..data.len() - 3]).is_err());
        let mut long_end = end[FRAME_LENGTH_BYTES..].to_vec();
        long_end.push(0);
        assert!(Frame::decode(&long_end).is_err());
        let mut long_refused = refused[FRAME_LENGTH_BYTES..].to_vec();
        long_refused.push(0);
        assert!(Frame::decode(&long_refused).is_err());
        // A refusal without its reason, a credit short or long: refused.
        assert!(Frame::decode(&refused[FRAME_LENGTH_BYTES..refused.len() - 1]).is_err());
        assert!(Frame::decode(&credit[FRAME_LENGTH_BYTES..credit.len() - 1]).is_err());
        let mut long_credit = credit[FRAME_LENGTH_BYTES..].to_vec();
        long_credit.push(0);
        assert!(Frame::decode(&long_credit).is_err());
        // A delivered frame truncated at any byte, or with a byte more: refused.
        let body = &delivered[FRAME_LENGTH_BYTES..];
        for len in 1..body.len() {
            assert!(
                matches!(
                    Frame::decode(&body[..len]),
                    Err(DecodeError::Truncated { .. })
                ),
                "a delivered frame of {len} bytes decoded"
            );
        }
        let mut long_delivered = body.to_vec();
        long_delivered.push(0);
        assert!(matches!(
            Frame::decode(&long_delivered),
            Err(DecodeError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn every_refusal_reason_round_trips_and_an_unknown_byte_reads_as_other() {
        for reason in RefusalReason::ALL {
            assert_eq!(RefusalReason::from_byte(reason.to_byte()), reason);
            let frame = encode_stream_refused(3, reason);
            assert_eq!(
                Frame::decode(&frame[FRAME_LENGTH_BYTES..]).unwrap(),
                Frame::StreamRefused { stream: 3, reason }
            );
        }
        let bytes: Vec<u8> = RefusalReason::ALL.iter().map(|r| r.to_byte()).collect();
        let mut unique = bytes.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), bytes.len(), "each reason has its own byte");
        // A reason byte from a newer peer: not a connection error.
        for unknown in [10u8, 77, 255] {
            let mut body =
                encode_stream_refused(4, RefusalReason::Busy)[FRAME_LENGTH_BYTES..].to_vec();
            *body.last_mut().unwrap() = unknown;
            assert_eq!(
                Frame::decode(&body).unwrap(),
                Frame::StreamRefused {
                    stream: 4,
                    reason: RefusalReason::Other
                }
            );
        }
    }
}
