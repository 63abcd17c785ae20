//! The bytes on the wire, in two layers (`docs/network.md` draws them):
//!
//! * [`record`]: the TCP stream is a sequence of records, each a `u16` length and
//!   one Noise message (handshake or transport), so no record can be longer than
//!   Noise allows (65535 bytes).
//! * [`frame`]: after the handshake, the decrypted records form a stream of
//!   frames, each a `u32` length, a kind byte and, for raft, the clear header
//!   (group, from, to) and the raft message. A frame may span several records.
//! * [`hello`]: the only payload a handshake message carries.
//! * [`client`]: the frames of a client connection (requests and replies).

pub mod client;
pub mod frame;
pub mod hello;
pub mod record;
