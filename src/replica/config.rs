//! Per-replica settings of the consensus core. Every queue, batch and message has
//! a bound here, named with its unit.

use crate::ReplicaId;

/// Settings of one [`Replica`](super::Replica).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// This replica's id (non-zero).
    pub id: u64,
    /// The raft group this replica belongs to; carried in every envelope.
    pub group: u64,
    /// Ticks a follower waits without hearing from a leader before it campaigns.
    /// The actual timeout is drawn from `[election_ticks, 2 * election_ticks)`
    /// (plus `election_ticks_extra_unpreferred` outside the preferred
    /// datacenters) by the replica's seeded RNG each time the election clock
    /// restarts.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats; must be below `election_ticks`.
    pub heartbeat_ticks: usize,
    /// Seed of the replica's own RNG (election timeouts). Distinct replicas should
    /// get distinct seeds; the simulator derives them from its seed.
    pub seed: u64,
    /// Upper bound of one append message's entries, in bytes.
    pub message_bytes_max: u64,
    /// Append messages in flight to one follower before the leader waits.
    pub inflight_messages_max: usize,
    /// Bytes of proposed but uncommitted entries before new proposals are dropped.
    pub uncommitted_bytes_max: u64,
    /// Bytes of client commands packed into one log entry.
    pub entry_bytes_max: usize,
    /// Largest single command, in bytes.
    pub command_bytes_max: usize,
    /// Ticks a proposal or read may wait before it fails with `TimedOut`.
    pub request_ticks_max: u64,
    /// Take a snapshot and compact once this many applied entries are held.
    pub snapshot_entries_min: u64,
    /// Entries kept behind a snapshot for followers that are only a little behind.
    pub compaction_entries_retained: u64,
    /// Client sessions remembered for deduplication, for a store bootstrapped
    /// before the limits were replicated only. A store bootstrapped now takes
    /// the limit from its snapshots ([`crate::ReplicatedSettings`], set in the
    /// bootstrap [`crate::FleetConfig`]), so replicas cannot disagree on it;
    /// with an older store this value must be equal on every replica.
    pub sessions_max: usize,
    /// Unacknowledged responses remembered per session; like `sessions_max`,
    /// only for a store bootstrapped before the limits were replicated.
    pub session_responses_max: usize,
    /// A learner is promoted only once it lags the leader's last index by at most
    /// this many entries.
    pub promotion_lag_entries_max: u64,
    /// Serve reads on the leader's lease instead of a ReadIndex round trip. Faster,
    /// but **unsafe under clock skew**: a leader whose clock runs slow may serve a
    /// stale read after a new leader was elected. Off by default.
    pub lease_reads: bool,
    /// Every this many ticks, a leader outside the preferred datacenters hands
    /// leadership to a caught-up voter inside them.
    pub leader_rebalance_ticks: u64,
    /// Extra election ticks for replicas outside the preferred leader datacenters,
    /// so that preferred replicas usually win elections.
    pub election_ticks_extra_unpreferred: usize,
    /// Datacenters the leader should be in (empty: no preference). Usually
    /// [`FleetConfig::preferred_leader_datacenters`](crate::FleetConfig).
    pub preferred_leader_datacenters: Vec<String>,
}

impl ReplicaConfig {
    /// Defaults for replica `id` in group 1.
    pub fn new(id: ReplicaId) -> Self {
        Self {
            id,
            group: 1,
            election_ticks: 10,
            heartbeat_ticks: 2,
            seed: id.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            message_bytes_max: 1 << 20,
            inflight_messages_max: 256,
            uncommitted_bytes_max: 64 << 20,
            entry_bytes_max: 1 << 20,
            command_bytes_max: 512 << 10,
            request_ticks_max: 100,
            snapshot_entries_min: 10_000,
            compaction_entries_retained: 1_000,
            sessions_max: 4096,
            session_responses_max: 1024,
            promotion_lag_entries_max: 64,
            lease_reads: false,
            leader_rebalance_ticks: 20,
            election_ticks_extra_unpreferred: 5,
            preferred_leader_datacenters: Vec::new(),
        }
    }

    /// Checks the settings; the error says which one is wrong.
    pub fn validate(&self) -> Result<(), ReplicaConfigError> {
        if self.id == 0 {
            return Err(ReplicaConfigError::ZeroId);
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return Err(ReplicaConfigError::HeartbeatTicks {
                heartbeat_ticks: self.heartbeat_ticks,
                election_ticks: self.election_ticks,
            });
        }
        if self.entry_bytes_max > ENTRY_BYTES_LIMIT {
            return Err(ReplicaConfigError::EntryBytesAboveLimit {
                entry_bytes_max: self.entry_bytes_max,
            });
        }
        if self.command_bytes_max > self.entry_bytes_max {
            return Err(ReplicaConfigError::CommandAboveEntry {
                command_bytes_max: self.command_bytes_max,
                entry_bytes_max: self.entry_bytes_max,
            });
        }
        if self.sessions_max == 0 || self.session_responses_max == 0 {
            return Err(ReplicaConfigError::Zero {
                setting: "sessions_max and session_responses_max",
            });
        }
        if self.sessions_max as u64 > crate::config::REPLICATED_SESSIONS_MAX
            || self.session_responses_max as u64 > crate::config::REPLICATED_SESSION_RESPONSES_MAX
            || (self.sessions_max as u64).saturating_mul(self.session_responses_max as u64)
                > crate::config::REPLICATED_CACHED_RESPONSES_MAX
        {
            return Err(ReplicaConfigError::SessionLimits {
                sessions_max: self.sessions_max,
                session_responses_max: self.session_responses_max,
            });
        }
        if self.snapshot_entries_min == 0 {
            return Err(ReplicaConfigError::Zero {
                setting: "snapshot_entries_min",
            });
        }
        if self.request_ticks_max == 0 {
            return Err(ReplicaConfigError::Zero {
                setting: "request_ticks_max",
            });
        }
        // Every entry with data is at least 8 bytes on the wire, so an append
        // filled to `message_bytes_max` carries at most that / 8 entries: keep
        // it within what `decode_message` accepts from a peer.
        let message_bytes_limit = (crate::replica::MESSAGE_ENTRIES_MAX as u64) * 8;
        if self.message_bytes_max > message_bytes_limit {
            return Err(ReplicaConfigError::MessageBytesAboveLimit {
                message_bytes_max: self.message_bytes_max,
                limit: message_bytes_limit,
            });
        }
        Ok(())
    }
}

/// The largest `entry_bytes_max` [`ReplicaConfig::validate`] accepts: 256 MiB.
/// A batch is packed up to `entry_bytes_max` counting each request's command and
/// a fixed overhead, so the encoded batch stays well below protobuf's
/// [`MESSAGE_BYTES_MAX`](crate::wire::MESSAGE_BYTES_MAX) and always encodes.
pub const ENTRY_BYTES_LIMIT: usize = 256 << 20;

// A batch's encoding is at most about three times `entry_bytes_max` (each request
// adds at most ~48 bytes of field overhead for its 32 counted bytes).
const _: () = assert!(3 * (ENTRY_BYTES_LIMIT as u64) < crate::wire::MESSAGE_BYTES_MAX);

/// A [`ReplicaConfig`] setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaConfigError {
    /// The session limits are above what a group may replicate.
    #[error(
        "sessions_max {sessions_max} must be at most {}, session_responses_max \
         {session_responses_max} at most {}, and their product at most {}",
        crate::config::REPLICATED_SESSIONS_MAX,
        crate::config::REPLICATED_SESSION_RESPONSES_MAX,
        crate::config::REPLICATED_CACHED_RESPONSES_MAX
    )]
    SessionLimits {
        /// The sessions limit given.
        sessions_max: usize,
        /// The responses limit given.
        session_responses_max: usize,
    },
    /// Replica id 0 is reserved by raft.
    #[error("replica id 0 is reserved by raft; number replicas from 1")]
    ZeroId,
    /// The heartbeat must be at least one tick and shorter than the election timeout.
    #[error("heartbeat_ticks ({heartbeat_ticks}) must be at least 1 and below election_ticks ({election_ticks})")]
    HeartbeatTicks {
        /// The heartbeat setting.
        heartbeat_ticks: usize,
        /// The election setting.
        election_ticks: usize,
    },
    /// One command must fit into one entry.
    #[error("command_bytes_max ({command_bytes_max}) must not exceed entry_bytes_max ({entry_bytes_max})")]
    CommandAboveEntry {
        /// The command limit.
        command_bytes_max: usize,
        /// The entry limit.
        entry_bytes_max: usize,
    },
    /// Entries above [`ENTRY_BYTES_LIMIT`] could fail to encode.
    #[error("entry_bytes_max ({entry_bytes_max}) exceeds the limit of {ENTRY_BYTES_LIMIT} bytes")]
    EntryBytesAboveLimit {
        /// The entry limit.
        entry_bytes_max: usize,
    },
    /// Appends this large could carry more entries than a peer decodes.
    #[error("message_bytes_max ({message_bytes_max}) exceeds the limit of {limit} bytes (8 × MESSAGE_ENTRIES_MAX)")]
    MessageBytesAboveLimit {
        /// The setting.
        message_bytes_max: u64,
        /// The largest accepted.
        limit: u64,
    },
    /// A setting that must be at least 1 is 0.
    #[error("{setting} must be at least 1")]
    Zero {
        /// The setting (or settings) at fault.
        setting: &'static str,
    },
}
