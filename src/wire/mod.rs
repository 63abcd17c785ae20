//! vaultfleet's own wire and disk messages, generated from `proto/vaultfleet.proto`
//! by pure-Rust protobuf 3 codegen, plus the helpers that encode and decode them
//! with typed errors. raft-rs's own messages (`eraftpb`, protobuf 2) are not
//! defined here; their decoder's error is nested the same way.

#[allow(missing_docs, clippy::all, clippy::pedantic, unused_qualifications)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/protos/mod.rs"));
}

pub use generated::vaultfleet::*;

mod batch;
pub use batch::{canonical_batch, RequestAt, RequestView};

/// Largest encoding protobuf writes or reads: 2 GiB - 1 (protobuf's own limit).
/// Encoding a larger message is the only way [`encode`] fails for the proto3
/// messages of this crate (they have no required fields).
pub const MESSAGE_BYTES_MAX: u64 = i32::MAX as u64;

/// Bytes that should hold a message did not decode.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what}: {source}")]
pub struct DecodeError {
    /// Which message was expected.
    pub what: &'static str,
    /// What the decoder reported.
    #[source]
    pub source: ProtobufError,
}

/// The protobuf library's error behind a [`DecodeError`] or [`EncodeError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtobufError {
    /// protobuf 3, which encodes vaultfleet's own messages.
    #[error(transparent)]
    Protobuf(#[from] protobuf::Error),
    /// protobuf 2, which raft-rs 0.7 uses for its messages (`eraftpb`).
    #[error(transparent)]
    Raft(#[from] protobuf2::ProtobufError),
    /// A bound of ours, checked on the wire bytes before the library decodes:
    /// a raft message carrying more log entries than any this engine sends
    /// (each tiny entry costs ~100 bytes decoded for 2 on the wire).
    #[error("{entries} or more log entries in one message; at most {max} are accepted")]
    TooManyEntries {
        /// Entries counted (the count stops just past the bound).
        entries: usize,
        /// [`MESSAGE_ENTRIES_MAX`](crate::replica::MESSAGE_ENTRIES_MAX).
        max: usize,
    },
}

/// A message could not be encoded: it is larger than [`MESSAGE_BYTES_MAX`].
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {what}: {source}; keep messages below {MESSAGE_BYTES_MAX} bytes")]
pub struct EncodeError {
    /// Which message was being encoded.
    pub what: &'static str,
    /// What the encoder reported.
    #[source]
    pub source: ProtobufError,
}

/// Decodes `bytes` as message `M`, naming `what` in the error.
pub fn decode<M: protobuf::Message>(bytes: &[u8], what: &'static str) -> Result<M, DecodeError> {
    M::parse_from_bytes(bytes).map_err(|e| DecodeError {
        what,
        source: e.into(),
    })
}

/// As [`decode`], and a nested message whose length runs past the end of
/// `bytes` is refused. [`decode`], as the protobuf library reads, takes such a
/// message as ending where the bytes end: a cut inside the last nested message
/// decodes as a shorter message. For state restored from a snapshot, where a
/// cut must be refused. Not for committed log entries, which every build must
/// decode alike (a stricter decoder on some replicas would skip what others
/// apply).
pub fn decode_whole<M: protobuf::Message>(
    bytes: &[u8],
    what: &'static str,
) -> Result<M, DecodeError> {
    let error = |e: protobuf::Error| DecodeError {
        what,
        source: e.into(),
    };
    let mut input = protobuf::CodedInputStream::from_bytes(bytes);
    input.push_limit(bytes.len() as u64).map_err(error)?;
    let message = M::parse_from(&mut input).map_err(error)?;
    input.check_eof().map_err(error)?;
    Ok(message)
}

/// Decodes `bytes` as message `M`, naming `what` in the error. Its
/// `bytes::Bytes` fields (a command, a cached response) are slices of `bytes`,
/// not copies: a command is decoded from its log entry without copying it.
pub fn decode_shared<M: protobuf::Message>(
    bytes: &bytes::Bytes,
    what: &'static str,
) -> Result<M, DecodeError> {
    M::parse_from_tokio_bytes(bytes).map_err(|e| DecodeError {
        what,
        source: e.into(),
    })
}

/// Encodes a message. It fails only for a message larger than
/// [`MESSAGE_BYTES_MAX`]; the error names the message type.
pub fn encode<M: protobuf::Message>(message: &M) -> Result<Vec<u8>, EncodeError> {
    message.write_to_bytes().map_err(|e| EncodeError {
        what: M::NAME,
        source: e.into(),
    })
}

/// Encodes a message whose size the caller's limits keep far below
/// [`MESSAGE_BYTES_MAX`] (a state machine's response, a batch bounded by
/// `entry_bytes_max`, a conf-change context bounded by
/// [`DATACENTER_BYTES_MAX`](crate::config::DATACENTER_BYTES_MAX)), for callers
/// that have no error path, such as [`StateMachine::apply`](crate::StateMachine::apply).
///
/// # Panics
/// If the message is larger than [`MESSAGE_BYTES_MAX`] after all: the caller's
/// bound was broken, a bug. It never returns empty bytes in place of a message.
pub fn encode_bounded<M: protobuf::Message>(message: &M) -> Vec<u8> {
    match encode(message) {
        Ok(bytes) => bytes,
        Err(e) => panic!("a message bounded by the engine's limits failed to encode: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every replica decodes a batch's commands as slices of the log entry,
    /// not copies: the command's bytes lie inside the entry's buffer.
    #[test]
    fn a_batch_decodes_its_commands_as_slices_of_the_entry() {
        let mut batch = RequestBatch::new();
        for k in 0..3u8 {
            let mut r = Request::new();
            r.client_id = 7;
            r.sequence = u64::from(k) + 1;
            r.command = vec![k; 100].into();
            r.owner = vec![9; 32].into();
            batch.requests.push(r);
        }
        let mut payload = EntryPayload::new();
        payload.kind = Some(entry_payload::Kind::Batch(batch.clone()));
        let entry = bytes::Bytes::from(encode_bounded(&payload));
        let decoded: EntryPayload = decode_shared(&entry, "log entry payload").unwrap();
        let Some(entry_payload::Kind::Batch(decoded)) = decoded.kind else {
            panic!("a batch was encoded");
        };
        assert_eq!(decoded, batch);
        let inside = entry.as_ptr_range();
        for r in &decoded.requests {
            assert!(
                inside.contains(&r.command.as_ptr()),
                "the command was copied"
            );
            assert!(inside.contains(&r.owner.as_ptr()), "the owner was copied");
        }
    }
}
