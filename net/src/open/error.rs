//! The open channel's errors: [`ChannelError`] for everything about the socket,
//! the handshake and the frames; [`ConnectError`] adds the caller's refusal of
//! the server's key or payload; [`OpenServerError`] for starting a server.

use crate::keys::PublicKey;

/// A connection, handshake, request or configuration of the open channel failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// A service label or fleet id of the wrong length.
    #[error("a {what} is 1 to 255 bytes, not {len}")]
    IdLength {
        /// Which one.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A setting is zero or above its hard limit.
    #[error("the setting {what} is out of range")]
    Config {
        /// The setting.
        what: &'static str,
    },
    /// The TCP connection could not be opened.
    #[error("could not connect")]
    Connect(#[source] std::io::Error),
    /// Connecting took longer than the connect timeout.
    #[error("connecting timed out")]
    ConnectTimeout,
    /// The handshake did not finish within its time limit.
    #[error("the handshake timed out")]
    HandshakeTimeout,
    /// No complete reply within the request timeout (or a write did not finish
    /// within the write timeout).
    #[error("timed out waiting on the other end")]
    Timeout,
    /// A socket error.
    #[error("socket error")]
    Io(#[source] std::io::Error),
    /// The other end closed the connection.
    #[error("the other end closed the connection")]
    Closed,
    /// The Noise handshake or a record's encryption failed (another fleet,
    /// service or key, bytes that are not a handshake, a tampered record).
    #[error("the Noise layer refused")]
    Noise(#[source] snow::Error),
    /// The first record names no known pattern, or a handshake message carries
    /// a payload it must not.
    #[error("the handshake is malformed")]
    HandshakeMalformed,
    /// The server's payload is above [`PAYLOAD_BYTES_MAX`](super::PAYLOAD_BYTES_MAX).
    #[error("a server payload of {len} bytes is above the limit of {max}")]
    PayloadTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame announced a length of zero or above the limit.
    #[error("a frame of {len} bytes is outside 1..={max}")]
    FrameSize {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame or record broke the framing rules (bytes past a frame's end, a
    /// record too short to hold a length, an unknown reply status).
    #[error("a frame is malformed")]
    FrameMalformed,
    /// The server is running as many requests as it may: try again or elsewhere.
    #[error("the server is busy")]
    Busy,
    /// The server's handler had no answer (its service is stopped).
    #[error("the server's service is unavailable")]
    Unavailable,
    /// This connection failed before and cannot be used again.
    #[error("the connection failed before; open a new one")]
    Broken,
}

/// A client's connection was not established.
///
/// Exhaustive: a connection either failed or was refused by the caller.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError<E: std::error::Error + 'static> {
    /// The channel failed (socket, timeouts, Noise, framing).
    #[error("the open channel failed")]
    Channel(#[from] ChannelError),
    /// The caller's check refused the server's static key or its payload: the
    /// connection was closed before any application byte was sent.
    #[error("the server's key {key} or its handshake payload was refused")]
    Refused {
        /// The key the server proved.
        key: PublicKey,
        /// The caller's reason.
        #[source]
        cause: E,
    },
}

/// An [`OpenServer`](super::OpenServer) did not start or could not be updated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenServerError {
    /// A setting or the payload is invalid.
    #[error("invalid open channel setting")]
    Channel(#[from] ChannelError),
    /// The async runtime could not start.
    #[error("could not start the server's runtime")]
    Runtime(#[source] std::io::Error),
    /// The listening socket could not be bound.
    #[error("could not listen on {address}")]
    Listen {
        /// The address.
        address: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
