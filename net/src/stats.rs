//! Counters of everything the transport did, refused or dropped: atomics bumped
//! on the hot path, read as one [`NetStats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the transport's counters (each counts since start).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetStats {
    /// Outbound connections that finished their handshake.
    pub connections_dialed: u64,
    /// Inbound connections that finished their handshake.
    pub connections_accepted: u64,
    /// Established connections closed, for any reason.
    pub connections_closed: u64,
    /// Connections closed because nothing arrived within the idle timeout (half-open or silent peers).
    pub connections_closed_idle: u64,
    /// Connections closed because a write was not taken within the write timeout (a peer that does not read).
    pub connections_closed_write_timeout: u64,
    /// Connections closed because a directory update dropped the peer's key.
    pub connections_closed_key_dropped: u64,
    /// Connections closed for a protocol violation: an undecryptable record, an oversize or malformed frame.
    pub connections_closed_protocol: u64,
    /// Inbound connections refused because `inbound_connections_max` were open.
    pub inbound_refused_limit: u64,
    /// Outbound attempts that failed to connect or handshake.
    pub dials_failed: u64,
    /// Inbound handshakes that failed (bad bytes, another fleet or version, a bad hello).
    pub handshakes_failed: u64,
    /// Inbound handshakes refused because the initiator's key is not pinned; nothing it sent was decoded.
    pub handshakes_refused_unpinned: u64,
    /// Inbound handshakes that did not finish in time.
    pub handshakes_timed_out: u64,
    /// Records that failed to decrypt (each closes its connection).
    pub records_undecryptable: u64,
    /// Frames announced above the frame limit (each closes its connection).
    pub frames_oversize: u64,
    /// Frames whose header did not decode (each closes its connection).
    pub frames_malformed: u64,
    /// Keepalive frames received.
    pub keepalives_received: u64,
    /// Raft frames received on authenticated connections.
    pub frames_received: u64,
    /// Raft frames dropped because `from` is not pinned to the authenticated key; their payload was not decoded.
    pub frames_dropped_forged_from: u64,
    /// Raft frames refused because `to` is not hosted here (not routed).
    pub frames_refused_unknown_replica: u64,
    /// Raft frames refused because their group is not hosted here (not routed).
    pub frames_refused_unknown_group: u64,
    /// Raft frames whose (authenticated) payload is not a raft message.
    pub frames_dropped_undecodable: u64,
    /// Raft frames whose message's own from/to differ from the header's.
    pub frames_dropped_header_mismatch: u64,
    /// Raft messages handed to an inbox from the network.
    pub frames_delivered: u64,
    /// Raft messages between two replicas of this process, handed over without the network.
    pub frames_delivered_local: u64,
    /// Raft frames written to a socket.
    pub frames_sent: u64,
    /// Socket writes of (coalesced) batches.
    pub writes: u64,
    /// Bytes written to sockets after the handshake (records and their prefixes).
    pub bytes_written: u64,
    /// Queued frames dropped when their connection failed (raft retransmits).
    pub frames_dropped_on_disconnect: u64,
    /// Sends refused because the peer's queue was full.
    pub sends_refused_queue_full: u64,
    /// Sends refused because the peer's process was down and in backoff.
    pub sends_refused_peer_down: u64,
    /// Sends refused because the message was above the frame limit.
    pub sends_refused_too_large: u64,
    /// Sends refused because the destination is not in the directory.
    pub sends_refused_unknown_peer: u64,
    /// Client connections whose handshake succeeded (an allowed client key).
    pub client_connections_accepted: u64,
    /// Handshakes refused because the hello claimed another role than the key is pinned for (a client key as a peer, a peer key as a client).
    pub handshakes_refused_role: u64,
    /// Client requests received and decoded.
    pub client_requests: u64,
    /// Client requests answered `Overloaded` because the connection had `client_in_flight_max` in flight.
    pub client_requests_overloaded: u64,
    /// Client requests for a (group, replica) not served here.
    pub client_requests_unknown_node: u64,
    /// Client requests answered `TimedOut` after `client_request_timeout`.
    pub client_requests_timed_out: u64,
    /// Client replies written.
    pub client_replies: u64,
}

/// The live counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub connections_dialed: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub connections_closed: AtomicU64,
    pub connections_closed_idle: AtomicU64,
    pub connections_closed_write_timeout: AtomicU64,
    pub connections_closed_key_dropped: AtomicU64,
    pub connections_closed_protocol: AtomicU64,
    pub inbound_refused_limit: AtomicU64,
    pub dials_failed: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub handshakes_refused_unpinned: AtomicU64,
    pub handshakes_timed_out: AtomicU64,
    pub records_undecryptable: AtomicU64,
    pub frames_oversize: AtomicU64,
    pub frames_malformed: AtomicU64,
    pub keepalives_received: AtomicU64,
    pub frames_received: AtomicU64,
    pub frames_dropped_forged_from: AtomicU64,
    pub frames_refused_unknown_replica: AtomicU64,
    pub frames_refused_unknown_group: AtomicU64,
    pub frames_dropped_undecodable: AtomicU64,
    pub frames_dropped_header_mismatch: AtomicU64,
    pub frames_delivered: AtomicU64,
    pub frames_delivered_local: AtomicU64,
    pub frames_sent: AtomicU64,
    pub writes: AtomicU64,
    pub bytes_written: AtomicU64,
    pub frames_dropped_on_disconnect: AtomicU64,
    pub sends_refused_queue_full: AtomicU64,
    pub sends_refused_peer_down: AtomicU64,
    pub sends_refused_too_large: AtomicU64,
    pub sends_refused_unknown_peer: AtomicU64,
    pub client_connections_accepted: AtomicU64,
    pub handshakes_refused_role: AtomicU64,
    pub client_requests: AtomicU64,
    pub client_requests_overloaded: AtomicU64,
    pub client_requests_unknown_node: AtomicU64,
    pub client_requests_timed_out: AtomicU64,
    pub client_replies: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> NetStats {
        NetStats {
            connections_dialed: self.connections_dialed.load(Ordering::Relaxed),
            connections_accepted: self.connections_accepted.load(Ordering::Relaxed),
            connections_closed: self.connections_closed.load(Ordering::Relaxed),
            connections_closed_idle: self.connections_closed_idle.load(Ordering::Relaxed),
            connections_closed_write_timeout: self
                .connections_closed_write_timeout
                .load(Ordering::Relaxed),
            connections_closed_key_dropped: self
                .connections_closed_key_dropped
                .load(Ordering::Relaxed),
            connections_closed_protocol: self.connections_closed_protocol.load(Ordering::Relaxed),
            inbound_refused_limit: self.inbound_refused_limit.load(Ordering::Relaxed),
            dials_failed: self.dials_failed.load(Ordering::Relaxed),
            handshakes_failed: self.handshakes_failed.load(Ordering::Relaxed),
            handshakes_refused_unpinned: self.handshakes_refused_unpinned.load(Ordering::Relaxed),
            handshakes_timed_out: self.handshakes_timed_out.load(Ordering::Relaxed),
            records_undecryptable: self.records_undecryptable.load(Ordering::Relaxed),
            frames_oversize: self.frames_oversize.load(Ordering::Relaxed),
            frames_malformed: self.frames_malformed.load(Ordering::Relaxed),
            keepalives_received: self.keepalives_received.load(Ordering::Relaxed),
            frames_received: self.frames_received.load(Ordering::Relaxed),
            frames_dropped_forged_from: self.frames_dropped_forged_from.load(Ordering::Relaxed),
            frames_refused_unknown_replica: self
                .frames_refused_unknown_replica
                .load(Ordering::Relaxed),
            frames_refused_unknown_group: self.frames_refused_unknown_group.load(Ordering::Relaxed),
            frames_dropped_undecodable: self.frames_dropped_undecodable.load(Ordering::Relaxed),
            frames_dropped_header_mismatch: self
                .frames_dropped_header_mismatch
                .load(Ordering::Relaxed),
            frames_delivered: self.frames_delivered.load(Ordering::Relaxed),
            frames_delivered_local: self.frames_delivered_local.load(Ordering::Relaxed),
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            frames_dropped_on_disconnect: self.frames_dropped_on_disconnect.load(Ordering::Relaxed),
            sends_refused_queue_full: self.sends_refused_queue_full.load(Ordering::Relaxed),
            sends_refused_peer_down: self.sends_refused_peer_down.load(Ordering::Relaxed),
            sends_refused_too_large: self.sends_refused_too_large.load(Ordering::Relaxed),
            sends_refused_unknown_peer: self.sends_refused_unknown_peer.load(Ordering::Relaxed),
            client_connections_accepted: self.client_connections_accepted.load(Ordering::Relaxed),
            handshakes_refused_role: self.handshakes_refused_role.load(Ordering::Relaxed),
            client_requests: self.client_requests.load(Ordering::Relaxed),
            client_requests_overloaded: self.client_requests_overloaded.load(Ordering::Relaxed),
            client_requests_unknown_node: self.client_requests_unknown_node.load(Ordering::Relaxed),
            client_requests_timed_out: self.client_requests_timed_out.load(Ordering::Relaxed),
            client_replies: self.client_replies.load(Ordering::Relaxed),
        }
    }
}
