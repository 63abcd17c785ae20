//! The open channel: a server-authenticated, client-anonymous request/response
//! channel over TCP and Noise, for clients that hold no key of their own (a
//! user's device speaking to a vault service).
//!
//! Two handshake patterns, chosen by the client:
//!
//! ```text
//! prologue = labeled("vaultfleet-net/open/v1", [protocol version (u32 BE), service label, fleet id])
//!
//! NX (the client does not know the server's key yet):
//!   -> pattern byte 1 ‖ e                          payload: empty
//!   <- e, ee, s, es                                payload: the server's payload (a validation bundle)
//! NK (the client pinned the server's key, or accepted it from a bundle before):
//!   -> pattern byte 2 ‖ e, es                      payload: empty
//!   <- e, ee                                       payload: the server's payload
//! ```
//!
//! After message 2 the client calls the caller's check with the server's static
//! key (proved in NX by `es`, known in advance in NK) and the payload. Only if
//! it passes does the client send anything more: no application byte ever goes
//! to a key the caller has not accepted. A refused server sees the connection
//! close after its handshake message, having received no frame.
//!
//! Then requests and replies alternate, one in flight per connection:
//!
//! ```text
//! record  = u16 length (BE) ‖ one Noise message (as in the peer transport)
//! request = u32 length (BE, 1..=request_bytes_max) ‖ body            sealed into records
//! reply   = u32 length (BE, 1..=reply_bytes_max + 1) ‖ u8 status ‖ body
//! status  = 0 answered (body: the handler's reply) | 1 busy | 2 unavailable (body empty)
//! ```
//!
//! A frame starts at a record boundary and ends at one; a record carrying bytes
//! past its frame is malformed. Everything is bounded: connections (beyond the
//! limit a connection is closed at once), handlers running at once (beyond it a
//! request is answered `busy`, never queued), frame sizes, the handshake, the
//! idle time between requests, every write and, on the client, every request.
//! Nothing panics on what the other side sends, and neither side logs payloads
//! or keys.
//!
//! [`client`] is blocking (`std::net` and `snow` directly: a caller such as a
//! synchronous `VaultEndpoint::call` needs no runtime, no background thread and
//! nothing to shut down); [`server`] is async, on a tokio runtime of its own, and
//! runs each request's handler on the runtime's bounded blocking pool.

pub mod client;
mod error;
mod frame;
pub mod server;
#[cfg(test)]
mod tests;

pub use client::{OpenClientConfig, OpenConnection, ServerKey};
pub use error::{ChannelError, ConnectError, OpenServerError};
pub use server::{OpenHandler, OpenServer, OpenServerConfig, OpenStats};

use vaultfleet::codec::labeled;

use crate::wire::record::NOISE_MESSAGE_BYTES_MAX;

/// The protocol version bound into the prologue.
pub const OPEN_PROTOCOL_VERSION: u32 = 1;

/// The domain-separation label of the open channel's prologue.
pub const OPEN_PROLOGUE_LABEL: &[u8] = b"vaultfleet-net/open/v1";

/// The Noise protocol of a client that does not know the server's key.
pub const NX_PARAMS: &str = "Noise_NX_25519_ChaChaPoly_BLAKE2s";

/// The Noise protocol of a client that knows the server's key.
pub const NK_PARAMS: &str = "Noise_NK_25519_ChaChaPoly_BLAKE2s";

/// Largest server payload, in bytes: what fits in NX's second message beside
/// the ephemeral key (32), the encrypted static key (32 + 16) and the tag (16).
pub const PAYLOAD_BYTES_MAX: usize = NOISE_MESSAGE_BYTES_MAX - 32 - 48 - 16;

/// Largest request or reply body this channel can be configured for (16 MiB).
pub const BODY_BYTES_HARD_MAX: usize = 16 << 20;

/// Refuses the first of `durations` that is zero, then the first of `sizes`
/// that is zero or above [`BODY_BYTES_HARD_MAX`], naming the setting: the
/// checks a client's and a server's settings share.
pub(crate) fn check_durations_and_sizes(
    durations: &[(&'static str, std::time::Duration)],
    sizes: &[(&'static str, usize)],
) -> Result<(), ChannelError> {
    if let Some((what, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
        return Err(ChannelError::Config { what });
    }
    if let Some((what, _)) = sizes
        .iter()
        .find(|(_, s)| *s == 0 || *s > BODY_BYTES_HARD_MAX)
    {
        return Err(ChannelError::Config { what });
    }
    Ok(())
}

/// Longest service label or fleet id, in bytes.
pub const ID_BYTES_MAX: usize = 255;

/// The handshake pattern a client chose (its first byte on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pattern {
    /// `Noise_NX`: the server sends its static key, encrypted, in message 2.
    Nx,
    /// `Noise_NK`: the client knows the server's static key in advance.
    Nk,
}

impl Pattern {
    pub(crate) fn byte(self) -> u8 {
        match self {
            Pattern::Nx => 1,
            Pattern::Nk => 2,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Pattern::Nx),
            2 => Some(Pattern::Nk),
            _ => None,
        }
    }

    pub(crate) fn params(self) -> Result<snow::params::NoiseParams, snow::Error> {
        match self {
            Pattern::Nx => NX_PARAMS.parse(),
            Pattern::Nk => NK_PARAMS.parse(),
        }
    }
}

/// What both ends bind into the handshake: the service (a label such as
/// `"vaultfleet-vault"`) and the fleet. A server of another service or fleet
/// computes another prologue, and the handshake fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelId {
    label: String,
    fleet_id: String,
}

impl ChannelId {
    /// The channel of `label` on fleet `fleet_id`, each 1 to [`ID_BYTES_MAX`] bytes.
    pub fn new(label: &str, fleet_id: &str) -> Result<Self, ChannelError> {
        for (what, value) in [("service label", label), ("fleet id", fleet_id)] {
            if value.is_empty() || value.len() > ID_BYTES_MAX {
                return Err(ChannelError::IdLength {
                    what,
                    len: value.len(),
                });
            }
        }
        Ok(Self {
            label: label.to_string(),
            fleet_id: fleet_id.to_string(),
        })
    }

    /// The service label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The fleet id.
    pub fn fleet_id(&self) -> &str {
        &self.fleet_id
    }

    /// The prologue both ends mix into the handshake.
    pub fn prologue(&self) -> Vec<u8> {
        labeled(
            OPEN_PROLOGUE_LABEL,
            &[
                &OPEN_PROTOCOL_VERSION.to_be_bytes(),
                self.label.as_bytes(),
                self.fleet_id.as_bytes(),
            ],
        )
    }
}

/// A reply's status byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Answered,
    Busy,
    Unavailable,
}

impl Status {
    pub(crate) fn byte(self) -> u8 {
        match self {
            Status::Answered => 0,
            Status::Busy => 1,
            Status::Unavailable => 2,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Status::Answered),
            1 => Some(Status::Busy),
            2 => Some(Status::Unavailable),
            _ => None,
        }
    }
}
