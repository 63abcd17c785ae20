//! vaultfleet's own wire and disk messages, generated from `proto/vaultfleet.proto`
//! by pure-Rust protobuf 3 codegen, plus the helpers that decode them with typed
//! errors. raft-rs's own messages (`eraftpb`, protobuf 2) are not defined here.

#[allow(missing_docs, clippy::all, clippy::pedantic, unused_qualifications)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/protos/mod.rs"));
}

pub mod bytes;

pub use generated::vaultfleet::*;

/// Bytes that should hold a vaultfleet message did not decode.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what}: {detail}")]
pub struct DecodeError {
    /// Which message was expected.
    pub what: &'static str,
    /// What the decoder reported.
    pub detail: String,
}

/// Decodes `bytes` as message `M`, naming `what` in the error.
pub fn decode<M: protobuf::Message>(bytes: &[u8], what: &'static str) -> Result<M, DecodeError> {
    M::parse_from_bytes(bytes).map_err(|e| DecodeError {
        what,
        detail: e.to_string(),
    })
}

/// Encodes a message. Encoding an in-memory message into a `Vec` does not fail.
pub fn encode<M: protobuf::Message>(message: &M) -> Vec<u8> {
    message.write_to_bytes().unwrap_or_default()
}
