//! [`NetConfig`]: every limit and timeout of the transport, named with its unit,
//! with defaults sized for replicas of one fleet across datacenters (a few to a
//! few hundred milliseconds apart). `docs/network.md` explains each default.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::error::ConfigError;
use crate::wire::frame::{FRAME_BODY_BYTES_MIN, FRAME_BYTES_LIMIT};

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
    /// default) plus protobuf framing, so the default is twice that. A snapshot
    /// travels as one message today and is refused above this limit: snapshots
    /// must be chunked (`docs/network.md`).
    pub frame_bytes_max: usize,
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
    /// Inbound connections (handshaking or established) held at once.
    pub inbound_connections_max: usize,
    /// Worker threads of the runtime the transport starts for itself.
    pub worker_threads: usize,
    /// Client requests one client connection may have in flight (submitted
    /// to a node, reply not yet written); beyond it a request is answered
    /// `Overloaded` at once. At most 2^20 are used.
    pub client_in_flight_max: usize,
    /// Longest a served client request waits for its node's answer before it
    /// is answered `TimedOut` (the node answers far sooner: its own request
    /// timeout is a few election timeouts).
    pub client_request_timeout: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen_address: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            frame_bytes_max: 2 << 20,
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
            worker_threads: 2,
            client_in_flight_max: 256,
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
            ("worker_threads", self.worker_threads),
            ("client_in_flight_max", self.client_in_flight_max),
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
    }
}
