//! [`NetConfig`]: every limit and timeout of the transport, named with its unit,
//! with defaults sized for replicas of one fleet across datacenters (a few to a
//! few hundred milliseconds apart). `docs/network.md` explains each default.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::error::ConfigError;
use crate::wire::frame::{FRAME_BODY_BYTES_MIN, FRAME_BYTES_LIMIT, RAFT_HEADER_BYTES};

/// Bytes a raft message adds around one entry's data (its own fields, the
/// entry's term, index, type and context), rounded well up.
pub const ENTRY_MESSAGE_OVERHEAD_BYTES: usize = 1024;

/// The encoding of one entry of `entry_bytes_max` is at most about three times
/// that (`src/replica/config.rs`: each request adds at most ~48 bytes of fields
/// for its 32 counted bytes).
pub const ENTRY_ENCODING_FACTOR: usize = 3;

/// Largest `queue_frames_max` (tokio's channels panic above their own maximum).
pub const QUEUE_FRAMES_LIMIT: usize = 1 << 20;

/// Largest `inbound_connections_max` and `handshakes_max`.
pub const CONNECTIONS_LIMIT: usize = 1 << 16;

/// Largest `client_in_flight_total_max` (client requests in flight in one
/// process).
pub const CLIENT_IN_FLIGHT_TOTAL_LIMIT: usize = 1 << 20;

/// Largest client byte budget (`client_bytes_in_flight_max`,
/// `client_bytes_in_flight_total_max`): 64 GiB.
pub const CLIENT_BYTES_LIMIT: usize = 1 << 36;

/// Largest `snapshot_bytes_max`: 4 GiB.
pub const SNAPSHOT_BYTES_LIMIT: u64 = 4 << 30;

/// The smallest `frame_bytes_max` that carries one entry of `entry_bytes_max`.
pub fn frame_bytes_for_entry(entry_bytes_max: usize) -> usize {
    entry_bytes_max
        .saturating_mul(ENTRY_ENCODING_FACTOR)
        .saturating_add(ENTRY_MESSAGE_OVERHEAD_BYTES + RAFT_HEADER_BYTES)
}

/// Settings of a [`NetTransport`](crate::NetTransport).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetConfig {
    /// Where to listen for peers (port 0 picks a free port; read it back with
    /// [`NetTransport::local_addr`](crate::NetTransport::local_addr)).
    pub listen_address: SocketAddr,
    /// Largest frame body (header and raft message), in bytes. A larger raft
    /// message is refused with [`SendError::TooLarge`](crate::SendError::TooLarge).
    ///
    /// Keep it above the largest append the replicas send: raft-rs fills an
    /// append up to `ReplicaConfig::message_bytes_max` of entries (1 MiB by
    /// default) plus protobuf framing, but always sends at least one entry, so
    /// it must carry one largest entry: [`start`](crate::NetTransport::start)
    /// refuses a limit below [`frame_bytes_for_entry`]`(entry_bytes_max)`
    /// (4 MiB by default). Snapshots travel in chunks of at most
    /// `snapshot_chunk_bytes`, whatever their size. Peers exchange their limits
    /// in the handshake and each sends with the smaller of the two.
    pub frame_bytes_max: usize,
    /// The replicas' `ReplicaConfig::entry_bytes_max` (1 MiB by default): the
    /// largest log entry the engine packs. Every append carries at least one
    /// entry, so `frame_bytes_max` must hold one encoded entry of this size
    /// (about three times it, plus overhead).
    pub entry_bytes_max: usize,
    /// Bytes of snapshot data per chunk frame (at most the frame limit less
    /// the chunk header; the smaller is used).
    pub snapshot_chunk_bytes: usize,
    /// Largest snapshot (the encoded raft message) sent or reassembled, in
    /// bytes; a larger one is refused. Each inbound connection buffers at most
    /// this much of snapshots in flight.
    pub snapshot_bytes_max: u64,
    /// A snapshot being reassembled (or a streamed snapshot being received)
    /// with no chunk for this long is dropped (the leader sends it again).
    pub snapshot_chunk_timeout: Duration,
    /// Largest streamed snapshot (its file's plaintext, the descriptor's
    /// `total_bytes`) received, in bytes; a larger one is refused at its open
    /// frame. Only one chunk of it is in memory at a time (it goes to the
    /// replica's snapshot files), so it may be far above
    /// `snapshot_bytes_max`. At most the engine's `SNAPSHOT_BYTES_MAX` (64 GiB).
    pub snapshot_file_bytes_max: u64,
    /// Streamed snapshots received at once by this process, across every
    /// connection; a stream opened beyond it is refused (the sender hears
    /// `Failed`, raft sends again later). Each holds one chunk (at most 4 MiB)
    /// in memory.
    pub snapshot_streams_max: usize,
    /// Frames queued for one peer process before sends are refused.
    pub queue_frames_max: usize,
    /// Bytes queued for one peer process before sends are refused.
    pub queue_bytes_max: usize,
    /// Most bytes of queued frames coalesced into one socket write.
    pub batch_bytes_max: usize,
    /// Time to open a TCP connection.
    pub connect_timeout: Duration,
    /// Time for the whole Noise handshake, from the first byte.
    pub handshake_timeout: Duration,
    /// Time for one (coalesced) write to be taken by the socket.
    pub write_timeout: Duration,
    /// A keepalive frame is written after this long without a write.
    pub keepalive_interval: Duration,
    /// A connection with nothing received for this long is closed (half-open).
    pub idle_timeout: Duration,
    /// First reconnect delay after a failure (jittered).
    pub backoff_min: Duration,
    /// Largest reconnect delay (jittered).
    pub backoff_max: Duration,
    /// Authenticated inbound *peer* connections held at once (client
    /// connections have their own pool, `client_connections_max`).
    /// A connection counts as authenticated once its first transport record
    /// decrypted, within `handshake_timeout` of its accept.
    pub inbound_connections_max: usize,
    /// Inbound connections still in their handshake (not yet authenticated)
    /// held at once: a separate, small pool, so unauthenticated connections
    /// cannot take the slots of authenticated ones.
    pub handshakes_max: usize,
    /// Handshaking inbound connections from one source IP address held at once.
    pub handshakes_per_ip_max: usize,
    /// Authenticated inbound connections per peer key; a newer one closes the
    /// oldest (a restarted peer reconnects at once).
    pub connections_per_peer_key_max: usize,
    /// Authenticated inbound connections per client key; a newer one closes
    /// the oldest.
    pub connections_per_client_key_max: usize,
    /// Worker threads of the runtime the transport starts for itself.
    pub worker_threads: usize,
    /// Client requests one client connection may have in flight (submitted
    /// to a node, reply not yet written); beyond it a request is answered
    /// `Overloaded` at once. At most 2^20 are used.
    pub client_in_flight_max: usize,
    /// Client requests in flight in this whole process, across every client
    /// connection (each also bounded by `client_in_flight_max`); beyond it a
    /// request is answered `Overloaded` at once. Keep it well below the
    /// nodes' mailbox (`NodeConfig::mailbox_inputs_max`, 65,536), so client
    /// traffic cannot crowd raft's own messages out of it.
    pub client_in_flight_total_max: usize,
    /// Bytes of client request frames (commands, queries) one client
    /// connection may have in flight; beyond it a request is answered
    /// `Overloaded` at once. At least `frame_bytes_max`.
    pub client_bytes_in_flight_max: usize,
    /// Bytes of client request frames in flight in this whole process,
    /// across every client connection; beyond it `Overloaded`. At least
    /// `client_bytes_in_flight_max`.
    pub client_bytes_in_flight_total_max: usize,
    /// Authenticated client connections held at once, in a pool of their own:
    /// client connections never take the `inbound_connections_max` slots
    /// that peers need. Beyond it a new client connection is refused.
    pub client_connections_max: usize,
    /// Longest a served client request waits for its node's answer before it
    /// is answered `TimedOut` (the node answers far sooner: its own request
    /// timeout is a few election timeouts).
    pub client_request_timeout: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen_address: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            frame_bytes_max: 4 << 20,
            entry_bytes_max: 1 << 20,
            snapshot_chunk_bytes: 256 << 10,
            snapshot_bytes_max: 1 << 30,
            snapshot_chunk_timeout: Duration::from_secs(30),
            snapshot_file_bytes_max: vaultfleet::snapshot::SNAPSHOT_BYTES_MAX,
            snapshot_streams_max: 4,
            queue_frames_max: 4096,
            queue_bytes_max: 16 << 20,
            batch_bytes_max: 256 << 10,
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            inbound_connections_max: 256,
            handshakes_max: 64,
            handshakes_per_ip_max: 8,
            connections_per_peer_key_max: 2,
            connections_per_client_key_max: 16,
            worker_threads: 2,
            client_in_flight_max: 256,
            client_in_flight_total_max: 4096,
            client_bytes_in_flight_max: 16 << 20,
            client_bytes_in_flight_total_max: 64 << 20,
            client_connections_max: 64,
            client_request_timeout: Duration::from_secs(30),
        }
    }
}

impl NetConfig {
    /// The defaults, listening on `listen_address`.
    pub fn new(listen_address: SocketAddr) -> Self {
        Self {
            listen_address,
            ..Self::default()
        }
    }

    /// Checks that the limits fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let counts = [
            ("queue_frames_max", self.queue_frames_max),
            ("queue_bytes_max", self.queue_bytes_max),
            ("batch_bytes_max", self.batch_bytes_max),
            ("inbound_connections_max", self.inbound_connections_max),
            ("handshakes_max", self.handshakes_max),
            ("handshakes_per_ip_max", self.handshakes_per_ip_max),
            (
                "connections_per_peer_key_max",
                self.connections_per_peer_key_max,
            ),
            (
                "connections_per_client_key_max",
                self.connections_per_client_key_max,
            ),
            ("entry_bytes_max", self.entry_bytes_max),
            ("snapshot_chunk_bytes", self.snapshot_chunk_bytes),
            ("snapshot_streams_max", self.snapshot_streams_max),
            ("worker_threads", self.worker_threads),
            ("client_in_flight_max", self.client_in_flight_max),
            (
                "client_in_flight_total_max",
                self.client_in_flight_total_max,
            ),
            (
                "client_bytes_in_flight_max",
                self.client_bytes_in_flight_max,
            ),
            (
                "client_bytes_in_flight_total_max",
                self.client_bytes_in_flight_total_max,
            ),
            ("client_connections_max", self.client_connections_max),
        ];
        for (what, value) in counts {
            if value == 0 {
                return Err(ConfigError::Zero { what });
            }
        }
        let durations = [
            ("connect_timeout", self.connect_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("write_timeout", self.write_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("idle_timeout", self.idle_timeout),
            ("backoff_min", self.backoff_min),
            ("client_request_timeout", self.client_request_timeout),
            ("snapshot_chunk_timeout", self.snapshot_chunk_timeout),
        ];
        for (what, value) in durations {
            if value.is_zero() {
                return Err(ConfigError::Zero { what });
            }
        }
        if !(FRAME_BODY_BYTES_MIN..=FRAME_BYTES_LIMIT).contains(&self.frame_bytes_max) {
            return Err(ConfigError::FrameBytes {
                value: self.frame_bytes_max,
                min: FRAME_BODY_BYTES_MIN,
                max: FRAME_BYTES_LIMIT,
            });
        }
        let limits = [
            (
                "queue_frames_max",
                self.queue_frames_max,
                QUEUE_FRAMES_LIMIT,
            ),
            (
                "inbound_connections_max",
                self.inbound_connections_max,
                CONNECTIONS_LIMIT,
            ),
            ("handshakes_max", self.handshakes_max, CONNECTIONS_LIMIT),
            (
                "handshakes_per_ip_max",
                self.handshakes_per_ip_max,
                CONNECTIONS_LIMIT,
            ),
            (
                "connections_per_peer_key_max",
                self.connections_per_peer_key_max,
                CONNECTIONS_LIMIT,
            ),
            (
                "connections_per_client_key_max",
                self.connections_per_client_key_max,
                CONNECTIONS_LIMIT,
            ),
            (
                "client_connections_max",
                self.client_connections_max,
                CONNECTIONS_LIMIT,
            ),
            (
                "client_in_flight_total_max",
                self.client_in_flight_total_max,
                CLIENT_IN_FLIGHT_TOTAL_LIMIT,
            ),
            (
                "client_bytes_in_flight_max",
                self.client_bytes_in_flight_max,
                CLIENT_BYTES_LIMIT,
            ),
            (
                "client_bytes_in_flight_total_max",
                self.client_bytes_in_flight_total_max,
                CLIENT_BYTES_LIMIT,
            ),
        ];
        for (what, value, max) in limits {
            if value > max {
                return Err(ConfigError::AboveLimit { what, value, max });
            }
        }
        if self.snapshot_bytes_max == 0 || self.snapshot_bytes_max > SNAPSHOT_BYTES_LIMIT {
            return Err(ConfigError::SnapshotBytes {
                value: self.snapshot_bytes_max,
                max: SNAPSHOT_BYTES_LIMIT,
            });
        }
        let file_max = vaultfleet::snapshot::SNAPSHOT_BYTES_MAX;
        if self.snapshot_file_bytes_max == 0 || self.snapshot_file_bytes_max > file_max {
            return Err(ConfigError::SnapshotFileBytes {
                value: self.snapshot_file_bytes_max,
                max: file_max,
            });
        }
        if self.snapshot_streams_max > CONNECTIONS_LIMIT {
            return Err(ConfigError::AboveLimit {
                what: "snapshot_streams_max",
                value: self.snapshot_streams_max,
                max: CONNECTIONS_LIMIT,
            });
        }
        let required = frame_bytes_for_entry(self.entry_bytes_max);
        if self.frame_bytes_max < required {
            return Err(ConfigError::FrameBelowEntry {
                frame_bytes_max: self.frame_bytes_max,
                entry_bytes_max: self.entry_bytes_max,
                required,
            });
        }
        if self.client_bytes_in_flight_max < self.frame_bytes_max
            || self.client_bytes_in_flight_total_max < self.client_bytes_in_flight_max
        {
            return Err(ConfigError::ClientBytes {
                per_connection: self.client_bytes_in_flight_max,
                total: self.client_bytes_in_flight_total_max,
                frame_bytes_max: self.frame_bytes_max,
            });
        }
        if self.queue_bytes_max < self.frame_bytes_max {
            return Err(ConfigError::QueueBytes);
        }
        if self.idle_timeout <= self.keepalive_interval {
            return Err(ConfigError::IdleTimeout);
        }
        if self.backoff_min > self.backoff_max {
            return Err(ConfigError::Backoff);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_frame_holds_the_largest_default_append() {
        let replica = vaultfleet::ReplicaConfig::new(1);
        let append_bytes_max = usize::try_from(replica.message_bytes_max).unwrap();
        // An append of message_bytes_max of entries, each entry with its own
        // few bytes of protobuf framing, the smallest entry being its header.
        assert!(NetConfig::default().frame_bytes_max >= append_bytes_max * 3 / 2);
    }

    #[test]
    fn defaults_are_valid_and_broken_relations_are_named() {
        assert_eq!(NetConfig::default().validate(), Ok(()));
        let mut c = NetConfig::default();
        c.idle_timeout = c.keepalive_interval;
        assert_eq!(c.validate(), Err(ConfigError::IdleTimeout));
        let mut c = NetConfig::default();
        c.frame_bytes_max = FRAME_BYTES_LIMIT + 1;
        assert!(matches!(c.validate(), Err(ConfigError::FrameBytes { .. })));
        let mut c = NetConfig::default();
        c.queue_bytes_max = c.frame_bytes_max - 1;
        assert_eq!(c.validate(), Err(ConfigError::QueueBytes));
        let mut c = NetConfig::default();
        c.queue_frames_max = 0;
        assert_eq!(
            c.validate(),
            Err(ConfigError::Zero {
                what: "queue_frames_max"
            })
        );
        let mut c = NetConfig::default();
        c.backoff_min = c.backoff_max * 2;
        assert_eq!(c.validate(), Err(ConfigError::Backoff));
        let mut c = NetConfig::default();
        c.client_bytes_in_flight_max = c.frame_bytes_max - 1;
        assert!(matches!(c.validate(), Err(ConfigError::ClientBytes { .. })));
        let mut c = NetConfig::default();
        c.client_bytes_in_flight_total_max = c.client_bytes_in_flight_max - 1;
        assert!(matches!(c.validate(), Err(ConfigError::ClientBytes { .. })));
        let default = NetConfig::default();
        assert!(
            default.client_in_flight_total_max <= 65_536 / 8,
            "client requests stay well below the node's mailbox"
        );
    }
}
