//! The blocking client of the open channel: `std::net` and `snow` directly, so
//! a synchronous caller (a `VaultEndpoint::call`) needs no async runtime, no
//! background thread and nothing to shut down; every wait is bounded by a
//! deadline that is re-armed before each socket read or write, so a server
//! that trickles bytes cannot stretch a timeout.
//!
//! [`OpenConnection::connect`] runs the handshake and then the caller's check
//! of the server's static key and payload; nothing is sent after the first
//! handshake message unless the check passes. [`OpenConnection::call`] sends
//! one request and waits for its reply.
// The client runs in wall-clock time (socket deadlines), outside any simulation.
#![allow(clippy::disallowed_methods)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::error::{ChannelError, ConnectError};
use super::frame::{seal_frame, split_reply, Assembler};
use super::{check_durations_and_sizes, ChannelId, Pattern, Status, PAYLOAD_BYTES_MAX};
use crate::keys::PublicKey;
use crate::wire::record::{put_record, NOISE_MESSAGE_BYTES_MAX, RECORD_LENGTH_BYTES};

/// Limits and timeouts of a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenClientConfig {
    /// Longest wait for the TCP connection (default 2 s).
    pub connect_timeout: Duration,
    /// Longest wait for the whole handshake (default 2 s).
    pub handshake_timeout: Duration,
    /// Longest wait for one request to be written and its reply read (default
    /// 30 s: a vault request waits for a commit through consensus).
    pub request_timeout: Duration,
    /// Largest request body (default 1 MiB).
    pub request_bytes_max: usize,
    /// Largest reply body accepted (default 1 MiB).
    pub reply_bytes_max: usize,
}

impl Default for OpenClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            request_bytes_max: 1 << 20,
            reply_bytes_max: 1 << 20,
        }
    }
}

impl OpenClientConfig {
    /// Checks that every duration and limit is above zero and every size at
    /// most [`BODY_BYTES_HARD_MAX`](super::BODY_BYTES_HARD_MAX).
    pub fn validate(&self) -> Result<(), ChannelError> {
        let durations = [
            ("connect_timeout", self.connect_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("request_timeout", self.request_timeout),
        ];
        let sizes = [
            ("request_bytes_max", self.request_bytes_max),
            ("reply_bytes_max", self.reply_bytes_max),
        ];
        check_durations_and_sizes(&durations, &sizes)
    }
}

/// How the client learns the server's static key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerKey {
    /// Not known: the server proves one in the handshake (NX) and the caller's
    /// check decides whether it is the right one.
    Prove,
    /// Known in advance (pinned, or accepted from a bundle before): NK, and only
    /// the holder of this key can complete the handshake.
    Pinned(PublicKey),
}

/// An established connection to an open-channel server whose key and payload
/// the caller accepted. One request at a time; after any failure it is broken
/// and must be dropped (the stream's state is unknown).
pub struct OpenConnection {
    stream: TcpStream,
    noise: snow::TransportState,
    server_key: PublicKey,
    pattern: Pattern,
    config: OpenClientConfig,
    assembler: Assembler,
    broken: bool,
}

impl std::fmt::Debug for OpenConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenConnection")
            .field("server_key", &self.server_key)
            .field("pattern", &self.pattern)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn left(deadline: Instant, timeout: fn() -> ChannelError) -> Result<Duration, ChannelError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(timeout())
    } else {
        Ok(left)
    }
}

fn read_exact_by(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
    timeout: fn() -> ChannelError,
) -> Result<(), ChannelError> {
    let mut filled = 0;
    while filled < buf.len() {
        stream
            .set_read_timeout(Some(left(deadline, timeout)?))
            .map_err(ChannelError::Io)?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(ChannelError::Closed),
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if timed_out(&e) => return Err(timeout()),
            Err(e) => return Err(ChannelError::Io(e)),
        }
    }
    Ok(())
}

fn write_all_by(
    stream: &mut TcpStream,
    mut bytes: &[u8],
    deadline: Instant,
    timeout: fn() -> ChannelError,
) -> Result<(), ChannelError> {
    while !bytes.is_empty() {
        stream
            .set_write_timeout(Some(left(deadline, timeout)?))
            .map_err(ChannelError::Io)?;
        match stream.write(bytes) {
            Ok(0) => return Err(ChannelError::Closed),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if timed_out(&e) => return Err(timeout()),
            Err(e) => return Err(ChannelError::Io(e)),
        }
    }
    Ok(())
}

/// Reads one record (at most one Noise message) into `out`.
fn read_record_by(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    deadline: Instant,
    timeout: fn() -> ChannelError,
) -> Result<(), ChannelError> {
    let mut len = [0u8; RECORD_LENGTH_BYTES];
    read_exact_by(stream, &mut len, deadline, timeout)?;
    let len = usize::from(u16::from_be_bytes(len));
    debug_assert!(len <= NOISE_MESSAGE_BYTES_MAX);
    out.clear();
    out.resize(len, 0);
    read_exact_by(stream, out, deadline, timeout)
}

impl OpenConnection {
    /// Connects to `address`, runs the handshake of `channel` (NX for
    /// [`ServerKey::Prove`], NK for [`ServerKey::Pinned`]) and calls `check`
    /// with the server's static key and its handshake payload. Returns the
    /// connection only if `check` passes; otherwise the socket is closed having
    /// carried nothing but the first handshake message.
    pub fn connect<E, F>(
        address: SocketAddr,
        channel: &ChannelId,
        server: ServerKey,
        config: &OpenClientConfig,
        check: F,
    ) -> Result<Self, ConnectError<E>>
    where
        E: std::error::Error + 'static,
        F: FnOnce(&[u8; 32], &[u8]) -> Result<(), E>,
    {
        config.validate()?;
        let mut stream =
            TcpStream::connect_timeout(&address, config.connect_timeout).map_err(|e| {
                if timed_out(&e) {
                    ChannelError::ConnectTimeout
                } else {
                    ChannelError::Connect(e)
                }
            })?;
        stream.set_nodelay(true).map_err(ChannelError::Io)?;
        let deadline = Instant::now() + config.handshake_timeout;
        let timeout = || ChannelError::HandshakeTimeout;
        let pattern = match server {
            ServerKey::Prove => Pattern::Nx,
            ServerKey::Pinned(_) => Pattern::Nk,
        };
        let prologue = channel.prologue();
        let params = pattern.params().map_err(ChannelError::Noise)?;
        let pinned = match server {
            ServerKey::Pinned(key) => Some(key),
            ServerKey::Prove => None,
        };
        let builder = snow::Builder::new(params).prologue(&prologue);
        let builder = match &pinned {
            Some(key) => builder.remote_public_key(key.as_bytes()),
            None => builder,
        };
        let mut hs = builder.build_initiator().map_err(ChannelError::Noise)?;
        // Message 1: the pattern byte, then the Noise message with an empty payload.
        let mut message = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
        message[0] = pattern.byte();
        let n = hs
            .write_message(&[], &mut message[1..])
            .map_err(ChannelError::Noise)?;
        let mut out = bytes::BytesMut::new();
        put_record(&mut out, &message[..1 + n]);
        write_all_by(&mut stream, &out, deadline, timeout)?;
        // Message 2: the server's ephemeral (and, in NX, static) key and payload.
        let mut record = Vec::new();
        read_record_by(&mut stream, &mut record, deadline, timeout)?;
        let mut payload = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
        let n = hs
            .read_message(&record, &mut payload)
            .map_err(ChannelError::Noise)?;
        if n > PAYLOAD_BYTES_MAX || !hs.is_handshake_finished() {
            return Err(ChannelError::HandshakeMalformed.into());
        }
        let key = hs
            .get_remote_static()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or(ChannelError::HandshakeMalformed)?;
        // The caller decides before anything else is written.
        check(&key, &payload[..n]).map_err(|cause| ConnectError::Refused {
            key: PublicKey::from_bytes(key),
            cause,
        })?;
        let noise = hs.into_transport_mode().map_err(ChannelError::Noise)?;
        Ok(Self {
            stream,
            noise,
            server_key: PublicKey::from_bytes(key),
            pattern,
            config: *config,
            // A reply frame is its status byte and its body.
            assembler: Assembler::new(config.reply_bytes_max + 1),
            broken: false,
        })
    }

    /// The static key the server proved (or was pinned to).
    pub fn server_key(&self) -> PublicKey {
        self.server_key
    }

    /// The pattern the handshake ran.
    pub fn pattern(&self) -> Pattern {
        self.pattern
    }

    /// Sends `request` and waits (at most the request timeout) for its reply.
    /// A busy or unavailable server is an error ([`ChannelError::Busy`],
    /// [`ChannelError::Unavailable`]) that leaves the connection usable; any
    /// other error breaks it.
    pub fn call(&mut self, request: &[u8]) -> Result<Vec<u8>, ChannelError> {
        if self.broken {
            return Err(ChannelError::Broken);
        }
        if request.is_empty() || request.len() > self.config.request_bytes_max {
            return Err(ChannelError::FrameSize {
                len: request.len(),
                max: self.config.request_bytes_max,
            });
        }
        self.broken = true;
        let deadline = Instant::now() + self.config.request_timeout;
        let timeout = || ChannelError::Timeout;
        let sealed = seal_frame(&mut self.noise, None, request)?;
        write_all_by(&mut self.stream, &sealed, deadline, timeout)?;
        let mut record = Vec::new();
        let frame = loop {
            read_record_by(&mut self.stream, &mut record, deadline, timeout)?;
            if let Some(frame) = self.assembler.push(&mut self.noise, &record)? {
                break frame;
            }
        };
        let (status, body) = split_reply(&frame)?;
        self.broken = false;
        match status {
            Status::Answered => Ok(body.to_vec()),
            Status::Busy => Err(ChannelError::Busy),
            Status::Unavailable => Err(ChannelError::Unavailable),
        }
    }
}
