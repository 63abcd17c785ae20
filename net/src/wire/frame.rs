//! Frames: what the Noise records carry once the handshake is done.
//!
//! ```text
//! u32 body length (1..=frame_bytes_max)
//! body: u8 kind
//!   kind 1, raft:      u64 group, u64 from, u64 to, raft message (protobuf 2, the rest)
//!   kind 2, keepalive: nothing
//! ```
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
/// Smallest `frame_bytes_max` a configuration may set (a raft header and a byte).
pub const FRAME_BODY_BYTES_MIN: usize = RAFT_HEADER_BYTES + 1;
/// Hard cap on `frame_bytes_max`, in bytes.
pub const FRAME_BYTES_LIMIT: usize = 16 << 20;

const KIND_RAFT: u8 = 1;
const KIND_KEEPALIVE: u8 = 2;

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
    }
}
