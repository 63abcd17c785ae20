//! Counters of everything the transport did, refused or dropped: atomics bumped
//! on the hot path, read as one [`NetStats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::wire::frame::RefusalReason;

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
    /// Client requests answered `Overloaded`: the connection had `client_in_flight_max` in flight, or a process-wide or byte bound was reached (counted apart below).
    pub client_requests_overloaded: u64,
    /// Client requests for a (group, replica) not served here.
    pub client_requests_unknown_node: u64,
    /// Client requests answered `TimedOut` after `client_request_timeout`.
    pub client_requests_timed_out: u64,
    /// Client replies written.
    pub client_replies: u64,
    /// Inbound connections refused because `handshakes_max` connections were in their handshake.
    pub handshakes_refused_limit: u64,
    /// Inbound connections refused because their source IP had `handshakes_per_ip_max` connections in their handshake.
    pub handshakes_refused_ip_limit: u64,
    /// Inbound handshakes whose initiator sent no transport record that decrypts within `handshake_timeout` of the accept (a replayed first message, a silent peer): never counted as established.
    pub handshakes_unconfirmed: u64,
    /// Authenticated inbound connections closed because a newer one with the same key replaced them (`connections_per_peer_key_max`, `connections_per_client_key_max`).
    pub connections_replaced: u64,
    /// Replica ids claimed in a handshake that are not pinned to the peer's key, ignored.
    pub hello_claims_ignored: u64,
    /// Queued frames dropped because they exceed the frame limit the peer announced in its handshake.
    pub frames_dropped_above_peer_limit: u64,
    /// Snapshots whose last chunk was written to the socket (reported `Written`).
    pub snapshots_sent: u64,
    /// Snapshots reported `Failed`: their connection failed or their link closed first.
    pub snapshots_send_failed: u64,
    /// Snapshot chunk frames written.
    pub snapshot_chunks_sent: u64,
    /// Snapshot chunk frames received.
    pub snapshot_chunks_received: u64,
    /// Snapshot chunks refused (order, offset, total or the `snapshot_bytes_max` budget); their partial snapshot is dropped.
    pub snapshot_chunks_refused: u64,
    /// Partial snapshots dropped because a new one replaced them or no chunk came within `snapshot_chunk_timeout`.
    pub snapshots_abandoned: u64,
    /// Reassembled snapshots that passed every check and were delivered.
    pub snapshots_received: u64,
    /// Reassembled snapshots dropped: not a raft `MsgSnapshot`, or `from`, `to`, index or term differ from the chunks' header.
    pub snapshots_dropped: u64,
    /// Streamed snapshots the receiver said it delivered to its replica (a delivered frame after the end frame; reported `Written`).
    pub streams_sent: u64,
    /// Streamed snapshots reported `Failed`: unreadable file, connection lost (before or after the end frame), link closed, refused by the receiver, no credit or no delivered frame in time.
    pub streams_send_failed: u64,
    /// Streamed snapshots of this sender the receiver refused while they were being sent or awaited delivery, whatever the reason (each also counted under its reason below, and in `streams_send_failed`): each stream at most once. Refusals of any other stream count in `streams_refusals_ignored`.
    pub streams_refused_by_peer: u64,
    /// Refusals received with reason `Other`: anything else: a duplicate or unknown stream id, a file error of no other reason, the sender's key no longer pinned for its replica at the end, an internal failure, or a reason byte this build does not know.
    pub streams_refused_by_peer_other: u64,
    /// Refusals received with reason `Busy`: the receiver had no stream slot free (`snapshot_streams_max` or this process's share of it).
    pub streams_refused_by_peer_busy: u64,
    /// Refusals received with reason `NotAdmitted`: the receiving replica did not admit it (not hosted, no snapshot files, not its leader, stale term or index).
    pub streams_refused_by_peer_not_admitted: u64,
    /// Refusals received with reason `BadDescriptor`: the descriptor or the message naming it was refused.
    pub streams_refused_by_peer_bad_descriptor: u64,
    /// Refusals received with reason `TooLarge`: above the receiver's `snapshot_file_bytes_max`.
    pub streams_refused_by_peer_too_large: u64,
    /// Refusals received with reason `NoSpace`: the receiver's snapshot disk had too little free space, or a write found it full.
    pub streams_refused_by_peer_no_space: u64,
    /// Refusals received with reason `BadChunk`: a data frame out of order or oversize, an early end, or a chunk its files refused.
    pub streams_refused_by_peer_bad_chunk: u64,
    /// Refusals received with reason `Digest`: at the end, the file did not match its digest, a chunk failed authentication, or chunks were missing.
    pub streams_refused_by_peer_digest: u64,
    /// Refusals received with reason `Timeout`: no whole chunk reached the receiver within `snapshot_chunk_timeout` while this sender had credit.
    pub streams_refused_by_peer_timeout: u64,
    /// Refusals received with reason `Credit`: this sender sent beyond the credit granted (a bug here).
    pub streams_refused_by_peer_credit: u64,
    /// Streamed snapshots given up by this sender because the receiver granted no credit for `snapshot_chunk_timeout` (also counted in `streams_send_failed`).
    pub streams_credit_timed_out: u64,
    /// Streamed snapshots given up by this sender because the receiver did not say it delivered them (nor refused them) within `snapshot_chunk_timeout` of their end frame, or of the last credit it granted them since (also counted in `streams_send_failed`).
    pub streams_delivery_timed_out: u64,
    /// Delivered frames received for a stream not awaiting delivery on that connection (an unknown id, or one already refused, timed out or delivered): ignored.
    pub streams_delivered_unknown: u64,
    /// Kind 9 frames ignored: a refusal of a stream this sender neither sends nor awaits the delivery of (an unknown id, or one it gave up, refused or delivered already), counted here only so each stream counts in `streams_refused_by_peer` at most once; or a sender's cancel of a stream this receiver no longer holds (refused, finished or unknown).
    pub streams_refusals_ignored: u64,
    /// Streamed snapshots this sender gave up after their open frame (no credit or no delivered frame in time, an unreadable file) and cancelled at the receiver (a kind 9 frame in the sender's direction; also counted in `streams_send_failed`).
    pub streams_cancelled: u64,
    /// Streamed snapshots the sender cancelled (a kind 9 frame from the dialer): dropped here at once, their slot given back and their partial file deleted; nothing delivered.
    pub streams_cancelled_by_peer: u64,
    /// Streamed snapshots refused at their end because the sender's key was no longer pinned for its replica (the directory changed during the transfer; also counted in `streams_refused`): nothing delivered.
    pub streams_refused_unpinned: u64,
    /// Streamed snapshots received whole but refused at their end because the replica's inbox could not take their message (its mailbox full, or the replica stopped; also counted in `streams_refused`, reason `other`): the sender hears `Failed`, never that it was delivered.
    pub streams_refused_dropped: u64,
    /// Snapshot file bytes (plaintext chunk data) written in stream data frames.
    pub stream_bytes_sent: u64,
    /// Streamed snapshots received whole, checked by the replica's snapshot files against their digest, and whose message the replica's inbox took (`Inbox::deliver_snapshot`).
    pub streams_received: u64,
    /// Streamed snapshots refused by this receiver (each once): bad descriptor or message, over `snapshot_file_bytes_max` or `snapshot_streams_max`, not admitted by the inbox, no space on the snapshot disk, a part out of order, oversize or beyond the credit granted, an early end, a file error, a digest mismatch, or the sender's key no longer pinned. Nothing is delivered and the partial file is deleted.
    pub streams_refused: u64,
    /// Streamed snapshots dropped unfinished by this receiver (each once, and never one refused already): no whole chunk within `snapshot_chunk_timeout` while the sender had credit (refused with reason `Timeout`), replaced by a new admitted stream for the same replica, or the connection ended (then nothing is delivered, even if the file was being finished).
    pub streams_abandoned: u64,
    /// Snapshot file bytes received in stream data frames.
    pub stream_bytes_received: u64,
    /// Client requests refused `Forbidden`: a membership change or a leadership transfer from a client key without the admin role.
    pub client_requests_forbidden: u64,
    /// Client requests answered `Overloaded` because the process had `client_in_flight_total_max` in flight (also counted in `client_requests_overloaded`).
    pub client_requests_overloaded_process: u64,
    /// Client requests answered `Overloaded` because the connection's or the process's byte budget (`client_bytes_in_flight_max`, `client_bytes_in_flight_total_max`) was spent (also counted in `client_requests_overloaded`).
    pub client_requests_overloaded_bytes: u64,
    /// Client proposals refused `CommandTooLarge` by the server, above the node's `command_bytes_max`, without reaching the node.
    pub client_requests_too_large: u64,
    /// Client replies above the frame limit, answered `ReplyTooLarge` (the request was carried out: a proposal applied).
    pub client_replies_too_large: u64,
    /// Client connections refused because `client_connections_max` client connections were open.
    pub client_connections_refused_limit: u64,
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
    pub handshakes_refused_limit: AtomicU64,
    pub handshakes_refused_ip_limit: AtomicU64,
    pub handshakes_unconfirmed: AtomicU64,
    pub connections_replaced: AtomicU64,
    pub hello_claims_ignored: AtomicU64,
    pub frames_dropped_above_peer_limit: AtomicU64,
    pub snapshots_sent: AtomicU64,
    pub snapshots_send_failed: AtomicU64,
    pub snapshot_chunks_sent: AtomicU64,
    pub snapshot_chunks_received: AtomicU64,
    pub snapshot_chunks_refused: AtomicU64,
    pub snapshots_abandoned: AtomicU64,
    pub snapshots_received: AtomicU64,
    pub snapshots_dropped: AtomicU64,
    pub streams_sent: AtomicU64,
    pub streams_send_failed: AtomicU64,
    pub streams_refused_by_peer: AtomicU64,
    pub streams_refused_by_peer_other: AtomicU64,
    pub streams_refused_by_peer_busy: AtomicU64,
    pub streams_refused_by_peer_not_admitted: AtomicU64,
    pub streams_refused_by_peer_bad_descriptor: AtomicU64,
    pub streams_refused_by_peer_too_large: AtomicU64,
    pub streams_refused_by_peer_no_space: AtomicU64,
    pub streams_refused_by_peer_bad_chunk: AtomicU64,
    pub streams_refused_by_peer_digest: AtomicU64,
    pub streams_refused_by_peer_timeout: AtomicU64,
    pub streams_refused_by_peer_credit: AtomicU64,
    pub streams_credit_timed_out: AtomicU64,
    pub streams_delivery_timed_out: AtomicU64,
    pub streams_delivered_unknown: AtomicU64,
    pub streams_refusals_ignored: AtomicU64,
    pub streams_cancelled: AtomicU64,
    pub streams_cancelled_by_peer: AtomicU64,
    pub streams_refused_unpinned: AtomicU64,
    pub streams_refused_dropped: AtomicU64,
    pub stream_bytes_sent: AtomicU64,
    pub streams_received: AtomicU64,
    pub streams_refused: AtomicU64,
    pub streams_abandoned: AtomicU64,
    pub stream_bytes_received: AtomicU64,
    pub client_requests_forbidden: AtomicU64,
    pub client_requests_overloaded_process: AtomicU64,
    pub client_requests_overloaded_bytes: AtomicU64,
    pub client_requests_too_large: AtomicU64,
    pub client_replies_too_large: AtomicU64,
    pub client_connections_refused_limit: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counter of refusals received with `reason`.
    pub fn refused_by_peer(&self, reason: RefusalReason) -> &AtomicU64 {
        match reason {
            RefusalReason::Other => &self.streams_refused_by_peer_other,
            RefusalReason::Busy => &self.streams_refused_by_peer_busy,
            RefusalReason::NotAdmitted => &self.streams_refused_by_peer_not_admitted,
            RefusalReason::BadDescriptor => &self.streams_refused_by_peer_bad_descriptor,
            RefusalReason::TooLarge => &self.streams_refused_by_peer_too_large,
            RefusalReason::NoSpace => &self.streams_refused_by_peer_no_space,
            RefusalReason::BadChunk => &self.streams_refused_by_peer_bad_chunk,
            RefusalReason::Digest => &self.streams_refused_by_peer_digest,
            RefusalReason::Timeout => &self.streams_refused_by_peer_timeout,
            RefusalReason::Credit => &self.streams_refused_by_peer_credit,
        }
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
            handshakes_refused_limit: self.handshakes_refused_limit.load(Ordering::Relaxed),
            handshakes_refused_ip_limit: self.handshakes_refused_ip_limit.load(Ordering::Relaxed),
            handshakes_unconfirmed: self.handshakes_unconfirmed.load(Ordering::Relaxed),
            connections_replaced: self.connections_replaced.load(Ordering::Relaxed),
            hello_claims_ignored: self.hello_claims_ignored.load(Ordering::Relaxed),
            frames_dropped_above_peer_limit: self
                .frames_dropped_above_peer_limit
                .load(Ordering::Relaxed),
            snapshots_sent: self.snapshots_sent.load(Ordering::Relaxed),
            snapshots_send_failed: self.snapshots_send_failed.load(Ordering::Relaxed),
            snapshot_chunks_sent: self.snapshot_chunks_sent.load(Ordering::Relaxed),
            snapshot_chunks_received: self.snapshot_chunks_received.load(Ordering::Relaxed),
            snapshot_chunks_refused: self.snapshot_chunks_refused.load(Ordering::Relaxed),
            snapshots_abandoned: self.snapshots_abandoned.load(Ordering::Relaxed),
            snapshots_received: self.snapshots_received.load(Ordering::Relaxed),
            snapshots_dropped: self.snapshots_dropped.load(Ordering::Relaxed),
            streams_sent: self.streams_sent.load(Ordering::Relaxed),
            streams_send_failed: self.streams_send_failed.load(Ordering::Relaxed),
            streams_refused_by_peer: self.streams_refused_by_peer.load(Ordering::Relaxed),
            streams_refused_by_peer_other: self
                .streams_refused_by_peer_other
                .load(Ordering::Relaxed),
            streams_refused_by_peer_busy: self.streams_refused_by_peer_busy.load(Ordering::Relaxed),
            streams_refused_by_peer_not_admitted: self
                .streams_refused_by_peer_not_admitted
                .load(Ordering::Relaxed),
            streams_refused_by_peer_bad_descriptor: self
                .streams_refused_by_peer_bad_descriptor
                .load(Ordering::Relaxed),
            streams_refused_by_peer_too_large: self
                .streams_refused_by_peer_too_large
                .load(Ordering::Relaxed),
            streams_refused_by_peer_no_space: self
                .streams_refused_by_peer_no_space
                .load(Ordering::Relaxed),
            streams_refused_by_peer_bad_chunk: self
                .streams_refused_by_peer_bad_chunk
                .load(Ordering::Relaxed),
            streams_refused_by_peer_digest: self
                .streams_refused_by_peer_digest
                .load(Ordering::Relaxed),
            streams_refused_by_peer_timeout: self
                .streams_refused_by_peer_timeout
                .load(Ordering::Relaxed),
            streams_refused_by_peer_credit: self
                .streams_refused_by_peer_credit
                .load(Ordering::Relaxed),
            streams_credit_timed_out: self.streams_credit_timed_out.load(Ordering::Relaxed),
            streams_delivery_timed_out: self.streams_delivery_timed_out.load(Ordering::Relaxed),
            streams_delivered_unknown: self.streams_delivered_unknown.load(Ordering::Relaxed),
            streams_refusals_ignored: self.streams_refusals_ignored.load(Ordering::Relaxed),
            streams_cancelled: self.streams_cancelled.load(Ordering::Relaxed),
            streams_cancelled_by_peer: self.streams_cancelled_by_peer.load(Ordering::Relaxed),
            streams_refused_unpinned: self.streams_refused_unpinned.load(Ordering::Relaxed),
            streams_refused_dropped: self.streams_refused_dropped.load(Ordering::Relaxed),
            stream_bytes_sent: self.stream_bytes_sent.load(Ordering::Relaxed),
            streams_received: self.streams_received.load(Ordering::Relaxed),
            streams_refused: self.streams_refused.load(Ordering::Relaxed),
            streams_abandoned: self.streams_abandoned.load(Ordering::Relaxed),
            stream_bytes_received: self.stream_bytes_received.load(Ordering::Relaxed),
            client_requests_forbidden: self.client_requests_forbidden.load(Ordering::Relaxed),
            client_requests_overloaded_process: self
                .client_requests_overloaded_process
                .load(Ordering::Relaxed),
            client_requests_overloaded_bytes: self
                .client_requests_overloaded_bytes
                .load(Ordering::Relaxed),
            client_requests_too_large: self.client_requests_too_large.load(Ordering::Relaxed),
            client_replies_too_large: self.client_replies_too_large.load(Ordering::Relaxed),
            client_connections_refused_limit: self
                .client_connections_refused_limit
                .load(Ordering::Relaxed),
        }
    }
}
