//! Frames of the open channel, shared by the blocking client and the async
//! server: sealing one frame into records, and reassembling one frame from the
//! records that carry it. Plaintext buffers are wiped when dropped (requests
//! carry registration secrets and OPAQUE messages).

use bytes::BytesMut;
use zeroize::{Zeroize, Zeroizing};

use super::error::ChannelError;
use super::Status;
use crate::wire::record::{seal_records, NOISE_MESSAGE_BYTES_MAX};

/// Bytes of a frame's length prefix.
pub(crate) const LEN_BYTES: usize = 4;

/// Seals one frame (an optional status byte, then `body`) into records.
pub(crate) fn seal_frame(
    noise: &mut snow::TransportState,
    status: Option<Status>,
    body: &[u8],
) -> Result<BytesMut, ChannelError> {
    let len = body.len() + usize::from(status.is_some());
    let len32 = u32::try_from(len).map_err(|_| ChannelError::FrameSize {
        len,
        max: u32::MAX as usize,
    })?;
    let mut plain = Zeroizing::new(Vec::with_capacity(LEN_BYTES + len));
    plain.extend_from_slice(&len32.to_be_bytes());
    if let Some(s) = status {
        plain.push(s.byte());
    }
    plain.extend_from_slice(body);
    let mut out = BytesMut::new();
    seal_records(noise, &plain, &mut out).map_err(ChannelError::Noise)?;
    Ok(out)
}

/// Reassembles one frame at a time from decrypted records. Holds at most one
/// frame (its announced length is checked against `max` before anything is kept).
pub(crate) struct Assembler {
    max: usize,
    need: Option<usize>,
    buf: Zeroizing<Vec<u8>>,
    scratch: Vec<u8>,
}

impl Assembler {
    /// An assembler of frames of 1 to `max` bytes (after the length prefix).
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            need: None,
            buf: Zeroizing::new(Vec::new()),
            scratch: vec![0u8; NOISE_MESSAGE_BYTES_MAX],
        }
    }

    /// Whether a frame has started and not ended.
    pub(crate) fn in_frame(&self) -> bool {
        self.need.is_some()
    }

    /// Decrypts `record` and adds its plaintext; returns the frame (without its
    /// length prefix) once complete. A record must start a frame when none is
    /// open, and may not carry bytes past the frame's end.
    pub(crate) fn push(
        &mut self,
        noise: &mut snow::TransportState,
        record: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>, ChannelError> {
        let n = noise
            .read_message(record, &mut self.scratch)
            .map_err(ChannelError::Noise)?;
        let result = self.take(n);
        self.scratch[..n].zeroize();
        result
    }

    fn take(&mut self, n: usize) -> Result<Option<Zeroizing<Vec<u8>>>, ChannelError> {
        let plain = &self.scratch[..n];
        let need = match self.need {
            Some(need) => {
                self.buf.extend_from_slice(plain);
                need
            }
            None => {
                let Some((prefix, rest)) = plain.split_first_chunk::<LEN_BYTES>() else {
                    return Err(ChannelError::FrameMalformed);
                };
                let len = u32::from_be_bytes(*prefix) as usize;
                if len == 0 || len > self.max {
                    return Err(ChannelError::FrameSize { len, max: self.max });
                }
                self.buf.clear();
                // The whole frame at once (its length is checked): the buffer is
                // never reallocated, so no copy of its plaintext is freed
                // unwiped (only the final buffer is wiped on drop).
                self.buf.reserve_exact(len);
                self.buf.extend_from_slice(rest);
                self.need = Some(len);
                len
            }
        };
        match self.buf.len() {
            have if have > need => Err(ChannelError::FrameMalformed),
            have if have == need => {
                self.need = None;
                Ok(Some(std::mem::take(&mut self.buf)))
            }
            _ => Ok(None),
        }
    }
}

/// Splits a reply frame into its status and body.
pub(crate) fn split_reply(frame: &[u8]) -> Result<(Status, &[u8]), ChannelError> {
    let (&status, body) = frame.split_first().ok_or(ChannelError::FrameMalformed)?;
    let status = Status::from_byte(status).ok_or(ChannelError::FrameMalformed)?;
    if status != Status::Answered && !body.is_empty() {
        return Err(ChannelError::FrameMalformed);
    }
    Ok((status, body))
}
