//! Frames: what the Noise records carry once the handshake is done.
//!
//! ```text
//! u32 body length (1..=frame_bytes_max)
//! body: u8 kind
//!   kind 1, raft:      u64 group, u64 from, u64 to, raft message (protobuf 2, the rest)
//!   kind 2, keepalive: nothing
//!   kind 5, snapshot chunk: u64 group, u64 from, u64 to, u64 snapshot index,
//!                     u64 snapshot term, u64 offset, u64 total, data (the rest, non-empty)
//! ```
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
            Frame::decode(&[9]),
            Err(DecodeError::UnknownValue { found: 9, .. })
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
}
