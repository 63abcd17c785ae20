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
/// in its last turn; near [`MAILBOX_CAPACITY`] means overload. On a
/// [`Pool`](super::Pool): the most any one of its replicas took in its last
/// turn (the deepest mailbox), over every pool of the process.
///
/// A [`Node`](super::Node) sets it for its own replica at each turn: a
/// process runs one `Node` (the node daemon with `runtime = "threads"`),
/// or else the gauge is whichever node turned last. A pool sets it from its
/// timer (at least every [`PoolConfig::tick_interval`](super::PoolConfig)),
/// not per turn.
pub const MAILBOX_DEPTH: &str = "vaultfleet_mailbox_depth";
/// Gauge: the mailbox's capacity (requests beyond it are refused
/// `overloaded`); on a pool, the smallest mailbox of its replicas.
pub const MAILBOX_CAPACITY: &str = "vaultfleet_mailbox_capacity";
/// Gauge, pools only: the inputs every replica of the process's pools took
/// in its last turn, summed (the backlog the workers work through; compare
/// with [`MAILBOX_DEPTH`]: one deep replica, or many busy ones).
pub const MAILBOX_DEPTH_SUM: &str = "vaultfleet_mailbox_depth_sum";
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
        "Inputs the node took from its mailbox in its last turn (on a pool: the most any replica took)"
    );
    describe_gauge!(
        MAILBOX_CAPACITY,
        "Inputs the node's mailbox holds at most (on a pool: its smallest mailbox)"
    );
    describe_gauge!(
        MAILBOX_DEPTH_SUM,
        "Inputs the pool's replicas took from their mailboxes in their last turns, summed"
    );
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

/// One pool's gauges, as its timer last saw them: its mailboxes
/// ([`MAILBOX_DEPTH`], [`MAILBOX_DEPTH_SUM`], [`MAILBOX_CAPACITY`]) and its
/// workers ([`POOL_WORKERS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolGauges {
    /// The most inputs one replica took in its last turn.
    pub(crate) deepest: usize,
    /// The inputs every replica took in its last turn, summed.
    pub(crate) sum: usize,
    /// The smallest mailbox capacity (`None`: the pool has no replica).
    pub(crate) capacity: Option<usize>,
    /// Live worker threads, spares included.
    pub(crate) workers: usize,
}

/// Every live pool's [`PoolGauges`], by the pool's serial number: the gauges
/// are the process's, so several pools combine (max, sum, min, sum) instead
/// of overwriting each other. Set by each pool's timer at every wake (at
/// least every tick, and every half `stall_after`), so a gauge is never left
/// unset long enough for a recorder to expire it as idle; never by a push or
/// a turn.
static POOL_GAUGES: std::sync::Mutex<Vec<(u64, PoolGauges)>> = std::sync::Mutex::new(Vec::new());

/// Records pool `pool`'s gauges (`None`: it stopped) and sets the process's
/// gauges from every pool's.
pub(crate) fn pool_gauges(pool: u64, now: Option<PoolGauges>) {
    let mut pools = POOL_GAUGES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    pools.retain(|(p, _)| *p != pool);
    if let Some(now) = now {
        pools.push((pool, now));
    }
    let deepest = pools.iter().map(|(_, m)| m.deepest).max().unwrap_or(0);
    let sum = pools.iter().map(|(_, m)| m.sum).sum::<usize>();
    let capacity = pools.iter().filter_map(|(_, m)| m.capacity).min();
    let workers = pools.iter().map(|(_, m)| m.workers).sum::<usize>();
    metrics::gauge!(MAILBOX_DEPTH).set(deepest as f64);
    metrics::gauge!(MAILBOX_DEPTH_SUM).set(sum as f64);
    metrics::gauge!(POOL_WORKERS).set(workers as f64);
    // No pool has a replica any more: no capacity to show.
    metrics::gauge!(MAILBOX_CAPACITY).set(capacity.unwrap_or(0) as f64);
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
        self.record_labelled_at(Instant::now(), name, key, value);
    }

    /// Starts measuring at `at`, a time the caller read already (a driver
    /// reads the clock once per turn, not once per request).
    pub(crate) fn started_at(at: Instant) -> Self {
        Self(at)
    }

    /// Records the seconds from the start to `now` in histogram `name`,
    /// labelled.
    pub(crate) fn record_labelled_at(
        self,
        now: Instant,
        name: &'static str,
        key: &'static str,
        value: &'static str,
    ) {
        self.record_at(now, &metrics::histogram!(name, key => value));
    }

    /// Records the seconds from the start to `now` in `histogram`, a handle
    /// the caller looked up once for many records.
    pub(crate) fn record_at(self, now: Instant, histogram: &metrics::Histogram) {
        histogram.record(now.saturating_duration_since(self.0).as_secs_f64());
    }
}

/// The commit-time histogram of each kind of request, looked up in the
/// recorder once per kind and kept until [`clear`](Self::clear) (a lookup
/// builds the key and hashes it: one per answer was 1% of a 5-member run's
/// samples, and one per cycle two allocations per operation at 1 client).
#[derive(Default)]
pub(crate) struct CommitHistograms(Vec<(&'static str, metrics::Histogram)>);

impl CommitHistograms {
    /// Forgets the handles: the next answers look them up again (in the
    /// recorder installed by then, if it was installed after this replica
    /// started).
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    /// The [`COMMIT_SECONDS`] histogram of requests of `kind`.
    pub(crate) fn of(&mut self, kind: &'static str) -> &metrics::Histogram {
        let at = match self.0.iter().position(|(k, _)| *k == kind) {
            Some(at) => at,
            None => {
                self.0
                    .push((kind, metrics::histogram!(COMMIT_SECONDS, "kind" => kind)));
                self.0.len() - 1
            }
        };
        &self.0[at].1
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
