//! The engine's metrics, through the [`metrics`] facade: their names, their
//! descriptions, and the stopwatch the runtime and the stores time with.
//!
//! Nothing here is exported anywhere unless the process installs a recorder
//! (the node daemon's Prometheus endpoint does): without one every call is a
//! no-op. Label sets are small and fixed (a reason, a kind, a record type):
//! never an id, a payload or anything a client sends. The consensus core
//! (`src/replica/`) records nothing; what it does is measured from the runtime
//! that drives it and from the stores it writes through.
//!
//! Wall-clock readings taken here only ever feed a histogram: they never reach
//! the replica, its store's contents or any decision, so the simulator stays
//! deterministic when it drives a store that is timed.

use std::time::Instant;

use crate::replica::RequestError;

/// Histogram (seconds), label `kind` (`command`, `session`, `read`,
/// `membership`, `digest`): from a request accepted by the replica to its outcome
/// delivered (for a command, its commit and apply on a majority).
pub const COMMIT_SECONDS: &str = "vaultfleet_commit_seconds";
/// Counter, label `reason`: requests refused before the replica took them
/// (`not_leader`, `overloaded`, `stopped`, `too_large`, ...).
pub const REQUESTS_REFUSED: &str = "vaultfleet_requests_refused_total";
/// Counter, label `reason`: requests the replica took that ended in an error
/// (`dropped`, `leader_changed`, `stopped`, ...).
pub const REQUESTS_FAILED: &str = "vaultfleet_requests_failed_total";
/// Gauge: inputs (requests and raft messages) the node took from its mailbox
/// in its last turn; near [`MAILBOX_CAPACITY`] means overload.
pub const MAILBOX_DEPTH: &str = "vaultfleet_mailbox_depth";
/// Gauge: the mailbox's capacity (requests beyond it are refused `overloaded`).
pub const MAILBOX_CAPACITY: &str = "vaultfleet_mailbox_capacity";
/// Counter, label `result` (`written`, `failed`): snapshots sent to a peer.
pub const SNAPSHOTS_SENT: &str = "vaultfleet_snapshots_sent_total";
/// Counter: snapshots received from a leader.
pub const SNAPSHOTS_RECEIVED: &str = "vaultfleet_snapshots_received_total";
/// Counter, label `stage` (`pre_vote`, `vote`): campaigns this replica started.
pub const ELECTIONS_STARTED: &str = "vaultfleet_elections_started_total";
/// Counter: leaderships this replica saw begin (a leader known in a new term,
/// or another leader).
pub const LEADER_CHANGES: &str = "vaultfleet_leader_changes_total";
/// Histogram (seconds): the sled log's write of a batch and its fsync.
pub const LOG_FSYNC_SECONDS: &str = "vaultfleet_log_fsync_seconds";
/// Histogram (seconds): the sealed store's whole persist point (seal the new
/// entries, write them and the sealed head, fsync, advance the HSM counter).
pub const LOG_PERSIST_SECONDS: &str = "vaultfleet_log_persist_seconds";
/// Histogram (seconds), label `record` (`batch`, `snapshot`): the HSM sealing
/// a record of the sealed store.
pub const SEAL_SECONDS: &str = "vaultfleet_seal_seconds";
/// Histogram (seconds): the HSM advancing the sealed store's monotonic counter.
pub const COUNTER_ADVANCE_SECONDS: &str = "vaultfleet_counter_advance_seconds";

/// Counter: turns of a [`Pool`](super::Pool) worker that ran longer than
/// its `stall_after` (a replica blocked in its store's `sync`, say); each one
/// lets the pool start a spare worker.
pub const POOL_STALLS: &str = "vaultfleet_pool_stalls_total";
/// Gauge: worker threads of the pools of this process that are alive (spares
/// included).
pub const POOL_WORKERS: &str = "vaultfleet_pool_workers";

/// Describes every engine metric to the installed recorder (its help text
/// and unit). Call it once after installing a recorder; harmless without one.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "From a request accepted by the replica to its outcome delivered, by kind"
    );
    describe_counter!(
        REQUESTS_REFUSED,
        "Requests refused before the replica took them, by reason"
    );
    describe_counter!(
        REQUESTS_FAILED,
        "Requests the replica took that ended in an error, by reason"
    );
    describe_gauge!(
        MAILBOX_DEPTH,
        "Inputs the node took from its mailbox in its last turn"
    );
    describe_gauge!(MAILBOX_CAPACITY, "Inputs the node's mailbox holds at most");
    describe_counter!(
        SNAPSHOTS_SENT,
        "Snapshots sent to peers, by result (written, failed)"
    );
    describe_counter!(SNAPSHOTS_RECEIVED, "Snapshots received from a leader");
    describe_counter!(
        ELECTIONS_STARTED,
        "Campaigns this replica started (pre_vote, vote)"
    );
    describe_counter!(
        LEADER_CHANGES,
        "Leaderships this replica saw begin (a leader in a new term)"
    );
    describe_histogram!(
        LOG_FSYNC_SECONDS,
        Unit::Seconds,
        "The sled log's write of a batch and its fsync"
    );
    describe_histogram!(
        LOG_PERSIST_SECONDS,
        Unit::Seconds,
        "The sealed store's persist point: seal, write, fsync, HSM counter advance"
    );
    describe_histogram!(
        SEAL_SECONDS,
        Unit::Seconds,
        "The HSM sealing a record of the sealed store (batch, snapshot)"
    );
    describe_counter!(
        POOL_STALLS,
        "Pool worker turns that ran longer than stall_after (a spare worker was due)"
    );
    describe_gauge!(POOL_WORKERS, "Live pool worker threads, spares included");
    describe_histogram!(
        COUNTER_ADVANCE_SECONDS,
        Unit::Seconds,
        "The HSM advancing the sealed store's monotonic counter"
    );
}

/// Measures one operation for a histogram.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stopwatch(Instant);

impl Stopwatch {
    /// Starts measuring now.
    pub(crate) fn start() -> Self {
        Self(Instant::now())
    }

    /// Records the seconds since the start in histogram `name`.
    pub(crate) fn record(self, name: &'static str) {
        metrics::histogram!(name).record(self.0.elapsed().as_secs_f64());
    }

    /// Records the seconds since the start in histogram `name`, labelled.
    pub(crate) fn record_labelled(
        self,
        name: &'static str,
        key: &'static str,
        value: &'static str,
    ) {
        metrics::histogram!(name, key => value).record(self.0.elapsed().as_secs_f64());
    }
}

/// The fixed label value for why a request failed or was refused.
pub(crate) fn reason(e: &RequestError) -> &'static str {
    match e {
        RequestError::NotSessionOwner { .. } => "not_session_owner",
        RequestError::OwnerTooLong { .. } => "owner_too_long",
        RequestError::NotLeader { .. } => "not_leader",
        RequestError::Dropped => "dropped",
        RequestError::TimedOut => "timed_out",
        RequestError::LeaderChanged => "leader_changed",
        RequestError::SessionExpired { .. } => "session_expired",
        RequestError::Stale { .. } => "stale",
        RequestError::TooManyOutstanding { .. } => "too_many_outstanding",
        RequestError::CommandTooLarge { .. } => "too_large",
        RequestError::ConfChangeRejected(_) => "membership_rejected",
        RequestError::NotCaughtUp { .. } => "not_caught_up",
        RequestError::Overloaded => "overloaded",
        RequestError::Stopped => "stopped",
        RequestError::Forbidden => "forbidden",
        RequestError::ReplyTooLarge { .. } => "reply_too_large",
        #[allow(unreachable_patterns)] // the enum may grow
        _ => "other",
    }
}

/// Counts a request refused before the replica took it.
pub(crate) fn refused(e: &RequestError) {
    metrics::counter!(REQUESTS_REFUSED, "reason" => reason(e)).increment(1);
}

/// Counts a request taken that ended in an error.
pub(crate) fn failed(e: &RequestError) {
    metrics::counter!(REQUESTS_FAILED, "reason" => reason(e)).increment(1);
}
