//! The crate's errors, one enum per boundary, each cause kept as a typed value.
//!
//! * [`NetError`]: starting or reconfiguring a [`NetTransport`](crate::NetTransport).
//! * [`SendError`]: why [`NetTransport::try_send`](crate::NetTransport::try_send)
//!   refused a message (mapped onto the engine's `TransportError` for raft).
//! * [`HandshakeError`]: why a connection never became a session.
//! * [`ConnectionError`]: why an established connection closed.

use vaultfleet::codec::DecodeError;
use vaultfleet::wire::EncodeError;
use vaultfleet::ReplicaId;

use crate::keys::PublicKey;

/// A key could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The Noise library refused.
    #[error("the Noise library could not make a key")]
    Noise(#[source] snow::Error),
    /// The Noise library has no X25519.
    #[error("the Noise library has no X25519 implementation")]
    Unsupported,
    /// A key of the wrong length came back.
    #[error("an X25519 key is not 32 bytes long")]
    Length,
}

/// A [`PeerDirectory`](crate::PeerDirectory) that breaks one of its rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// Replica ids are non-zero.
    #[error("replica id 0 is not a replica")]
    ZeroId,
    /// A fleet id is 1 to 255 bytes of text.
    #[error("a fleet id is 1 to 255 bytes, not {len}")]
    FleetIdLength {
        /// The length given.
        len: usize,
    },
    /// A datacenter label is at most 255 bytes.
    #[error("datacenter label of replica {id} is {len} bytes, at most 255")]
    DatacenterLength {
        /// The replica.
        id: ReplicaId,
        /// The label's length.
        len: usize,
    },
    /// This process hosts no replica.
    #[error("this process must host at least one replica id")]
    NoLocalIds,
    /// Too many replica ids for one process (they travel in the handshake).
    #[error("{count} local replica ids, at most {max}")]
    TooManyLocalIds {
        /// Ids given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A replica this process hosts is listed with another process's key.
    #[error("replica {id} is hosted here but pinned to key {pinned}, not this process's key")]
    LocalKeyMismatch {
        /// The replica.
        id: ReplicaId,
        /// The key the directory pins it to.
        pinned: PublicKey,
    },
    /// A replica this process does not host is pinned to this process's own
    /// key: its frames could only come from this process itself, which never
    /// dials itself. (A client process's directory is exempt: it hosts no
    /// replica and receives no raft frame.)
    #[error("replica {id} is not hosted here but pinned to this process's own key")]
    ForeignIdOnOwnKey {
        /// The replica.
        id: ReplicaId,
    },
    /// Two replicas pinned to one key (one process) are given different addresses.
    #[error("replicas {first} and {second} share key {key} but not an address")]
    AddressConflict {
        /// The key (the process).
        key: PublicKey,
        /// One replica.
        first: ReplicaId,
        /// The other.
        second: ReplicaId,
    },
    /// A key given two roles that exclude each other: pinned to a replica and
    /// allowed as an admin client's, or this process's own key allowed as a
    /// client's.
    #[error("key {key} cannot be both a peer's (or this process's) and an admin client's (or, for this process's own key, any client's)")]
    KeyRoleConflict {
        /// The key.
        key: PublicKey,
    },
    /// A client process's directory was given to a transport (a client hosts
    /// no replica and does not listen).
    #[error("a client process's directory cannot start a transport")]
    ClientDirectory,
    /// An update changed this process's own key or fleet (a new process, not an update).
    #[error("a directory update may not change this process's key, fleet id or protocol version")]
    IdentityChanged,
}

/// A [`NetConfig`](crate::NetConfig) whose limits do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A limit or duration is zero.
    #[error("{what} must be above zero")]
    Zero {
        /// The setting.
        what: &'static str,
    },
    /// The frame limit is above the hard cap or below one header.
    #[error("frame_bytes_max is {value}; it must lie in {min}..={max}")]
    FrameBytes {
        /// The value given.
        value: usize,
        /// Smallest allowed.
        min: usize,
        /// Largest allowed.
        max: usize,
    },
    /// The queue's byte bound cannot hold one largest frame.
    #[error("queue_bytes_max must hold at least one frame of frame_bytes_max")]
    QueueBytes,
    /// The idle timeout must be longer than the keepalive interval, or a quiet
    /// but healthy connection would be closed.
    #[error("idle_timeout must be longer than keepalive_interval")]
    IdleTimeout,
    /// The backoff bounds are reversed.
    #[error("backoff_min must not be above backoff_max")]
    Backoff,
    /// A count is above what the transport can allocate (tokio's channels
    /// and semaphores panic above their own maximum).
    #[error("{what} is {value}; at most {max}")]
    AboveLimit {
        /// The setting.
        what: &'static str,
        /// The value given.
        value: usize,
        /// The largest allowed.
        max: usize,
    },
    /// The snapshot limit is zero or above the hard cap.
    #[error("snapshot_bytes_max is {value}; it must lie in 1..={max}")]
    SnapshotBytes {
        /// The value given.
        value: u64,
        /// The largest allowed.
        max: u64,
    },
    /// The streamed snapshot limit is zero or above the engine's cap.
    #[error("snapshot_file_bytes_max is {value}; it must lie in 1..={max}")]
    SnapshotFileBytes {
        /// The value given.
        value: u64,
        /// The largest allowed.
        max: u64,
    },
    /// The frame limit cannot carry one largest log entry: an append always
    /// carries at least one entry, so such an entry could never be sent.
    #[error("frame_bytes_max is {frame_bytes_max}; one entry of entry_bytes_max {entry_bytes_max} needs {required}")]
    FrameBelowEntry {
        /// The frame limit given.
        frame_bytes_max: usize,
        /// The entry limit given.
        entry_bytes_max: usize,
        /// The smallest frame limit that carries such an entry.
        required: usize,
    },
    /// A client byte budget cannot hold one largest request: the
    /// per-connection budget must hold one frame of `frame_bytes_max`, and
    /// the process-wide one the per-connection one.
    #[error("client_bytes_in_flight_max ({per_connection}) must be at least frame_bytes_max ({frame_bytes_max}), and client_bytes_in_flight_total_max ({total}) at least client_bytes_in_flight_max")]
    ClientBytes {
        /// The per-connection budget given.
        per_connection: usize,
        /// The process-wide budget given.
        total: usize,
        /// The frame limit given.
        frame_bytes_max: usize,
    },
}

/// Starting or reconfiguring a transport failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The directory is invalid.
    #[error("invalid peer directory")]
    Directory(#[from] DirectoryError),
    /// The settings are invalid.
    #[error("invalid transport settings")]
    Config(#[from] ConfigError),
    /// The async runtime could not start.
    #[error("could not start the transport's runtime")]
    Runtime(#[source] std::io::Error),
    /// The listening socket could not be bound or read.
    #[error("could not listen on {address}")]
    Listen {
        /// The address.
        address: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An inbox was registered for a replica this process does not host.
    #[error("replica {0} is not one of this process's replica ids")]
    NotLocal(ReplicaId),
    /// The transport was shut down.
    #[error("the transport is shut down")]
    Closed,
}

/// Why a message was not queued for sending.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The destination is not in the directory.
    #[error("replica {0} is not in the peer directory")]
    UnknownPeer(ReplicaId),
    /// The message's `from` is not a replica this process hosts.
    #[error("replica {0} is not hosted by this process; it cannot send as it")]
    NotLocal(ReplicaId),
    /// The peer's connection failed and is waiting to be retried.
    #[error("replica {0}'s process is down; reconnecting with backoff")]
    PeerDown(ReplicaId),
    /// The peer's queue is full.
    #[error("the queue to replica {0} is full")]
    QueueFull(ReplicaId),
    /// The message is above the frame limit.
    #[error("a message of {bytes} bytes for replica {to} is above the frame limit of {bytes_max}")]
    TooLarge {
        /// The destination.
        to: ReplicaId,
        /// The frame's size.
        bytes: usize,
        /// The limit.
        bytes_max: usize,
    },
    /// The message could not be encoded.
    #[error("the raft message could not be encoded")]
    Encode(#[source] EncodeError),
    /// A streamed snapshot's descriptor could not be encoded.
    #[error("the descriptor of a streamed snapshot for replica {to} could not be encoded")]
    Descriptor {
        /// The destination.
        to: ReplicaId,
        /// Why.
        #[source]
        source: vaultfleet::codec::EncodeError,
    },
    /// The transport was shut down.
    #[error("the transport is shut down")]
    Closed,
}

impl From<SendError> for vaultfleet::transport::TransportError {
    fn from(e: SendError) -> Self {
        use vaultfleet::transport::TransportError as T;
        match e {
            SendError::UnknownPeer(id) => T::UnknownPeer(id),
            SendError::TooLarge {
                to,
                bytes,
                bytes_max,
            } => T::TooLarge {
                to,
                bytes,
                bytes_max,
            },
            SendError::PeerDown(id)
            | SendError::QueueFull(id)
            | SendError::NotLocal(id)
            | SendError::Descriptor { to: id, .. } => T::Unreachable(id),
            // An encoding failure is a message above protobuf's own limit.
            SendError::Encode(_) => T::Closed,
            SendError::Closed => T::Closed,
        }
    }
}

/// A connection that never became an authenticated session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The handshake did not finish within its time limit.
    #[error("the handshake timed out")]
    Timeout,
    /// The TCP connection could not be opened within its time limit.
    #[error("connecting timed out")]
    ConnectTimeout,
    /// A socket error.
    #[error("socket error during the handshake")]
    Io(#[source] std::io::Error),
    /// The peer closed the connection mid-handshake.
    #[error("the peer closed the connection during the handshake")]
    Closed,
    /// The Noise handshake failed: a wrong key, another fleet or protocol
    /// version (both bound by the prologue), or bytes that are not a handshake.
    #[error("the Noise handshake failed")]
    Noise(#[source] snow::Error),
    /// The initiator's static key is not pinned to any peer replica here.
    #[error("the peer's key {0} is not pinned in the directory")]
    UnpinnedKey(PublicKey),
    /// The responder's key is not the one pinned for the address dialled.
    #[error("the responder proved key {found}, not the pinned {expected}")]
    WrongResponderKey {
        /// The pinned key.
        expected: PublicKey,
        /// The proved key.
        found: PublicKey,
    },
    /// The handshake payload did not decode.
    #[error("the handshake payload is malformed")]
    Hello(#[source] DecodeError),
    /// The peer speaks another protocol version.
    #[error("the peer speaks protocol version {theirs}, this process {ours}")]
    Version {
        /// Ours.
        ours: u32,
        /// Theirs.
        theirs: u32,
    },
    /// The hello claims another role than the one the key is pinned for: a
    /// client key speaking as a peer, a peer key speaking as a client, or a
    /// responder that does not answer as a peer.
    #[error("key {key} is pinned as a {pinned} but its hello says {claimed}")]
    RoleMismatch {
        /// The key.
        key: PublicKey,
        /// The role the directory pins it to.
        pinned: crate::handshake::Role,
        /// The role its hello claims.
        claimed: crate::handshake::Role,
    },
    /// The peer claims a replica id not pinned to its key. No longer
    /// produced: such claims are ignored and counted (`hello_claims_ignored`),
    /// per-frame `from` checks bind ids to keys.
    #[error("the peer claims replica {0}, which is not pinned to its key")]
    ClaimNotPinned(ReplicaId),
}

/// Why an established connection closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// Nothing arrived within the idle timeout (a half-open or silent peer).
    #[error("nothing received within the idle timeout")]
    Idle,
    /// A write did not finish within its time limit (a peer that does not read).
    #[error("a write did not finish within the write timeout")]
    WriteTimeout,
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    PeerClosed,
    /// A socket error.
    #[error("socket error")]
    Io(#[source] std::io::Error),
    /// A record could not be encrypted (the Noise library refused).
    #[error("a record could not be encrypted")]
    Encrypt(#[source] snow::Error),
    /// A record did not decrypt (tampered, replayed or out of order).
    #[error("a record did not decrypt")]
    Decrypt(#[source] snow::Error),
    /// A frame announced a length above the limit.
    #[error("a frame of {len} bytes is above the limit of {max}")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame's header did not decode.
    #[error("a frame is malformed")]
    Frame(#[source] DecodeError),
    /// The peer's key was dropped from the directory (a new fleet epoch).
    #[error("the peer's key was dropped from the directory")]
    KeyDropped,
    /// A client kept sending requests while its replies piled up unread
    /// (`client_in_flight_max` replies waiting, and more refusals to write).
    #[error("the client sends requests without reading its replies")]
    RepliesNotRead,
    /// A newer connection authenticated with the same key replaced this one
    /// (`connections_per_peer_key_max`, `connections_per_client_key_max`).
    #[error("a newer connection with the same key replaced this one")]
    Replaced,
    /// The transport is shutting down.
    #[error("the transport is shutting down")]
    Shutdown,
}
