//! The consensus core: one replica of a raft group, wrapping raft-rs's
//! [`RawNode`], sans-IO.
//!
//! **What this module never does:** spawn a thread, read a clock, touch a socket or
//! draw randomness that is not seeded by its [`ReplicaConfig`]. Its inputs are
//! calls — [`Replica::step`] (a message from a peer), [`Replica::tick`] (one unit
//! of logical time), [`Replica::propose`], [`Replica::read`],
//! [`Replica::change_membership`] — and its outputs are collected by
//! [`Replica::handle_ready`] into an [`Output`]: messages to send and completions
//! of requests. The runtime (`runtime/`, real threads and clocks) and the
//! simulator (`sim/`, virtual time) are two drivers of this same code.
//!
//! ## The Ready contract (raft-rs), followed in [`Replica::handle_ready`]
//! 1. messages of `Ready::messages` may be sent at once (a leader's appends may
//!    go out before its own write, Raft thesis §10.2.1);
//! 2. a snapshot, then new entries, then the hard state are written to the
//!    [`LogStore`], followed by **one** [`LogStore::sync`]: the durability point
//!    for everything proposed during the cycle (group commit). raft-rs says
//!    when one is due (`Ready::must_sync`); a cycle that moved only the commit
//!    index writes it for the next sync, as etcd does;
//! 3. only then are `Ready::persisted_messages` (votes, append acknowledgements)
//!    released to the output;
//! 4. committed entries are applied in log order; `advance` and the light ready
//!    follow, and `advance_apply` closes the cycle.
//!
//! ## Determinism
//! raft-rs draws its election timeout from the thread RNG. The replica pins that
//! draw to one value (`max_election_tick = min_election_tick + 1`; raft-rs's
//! `set_randomized_election_timeout` asserts the value lies in that range, so it
//! cannot be overwritten), and randomizes the timeout itself: while no leader is
//! known, it swallows a number of ticks drawn from its seeded RNG each time the
//! election clock restarts, so competing candidates back off by different,
//! reproducible amounts (uniform in `[election_ticks, 2 * election_ticks)`).
//! Followers of a live leader keep raft's plain clock: raft's lease check
//! (a follower ignores votes while it heard from a leader within
//! `election_ticks`) then sees them time out together when the leader dies.
//! Every map here is ordered.

mod config;
mod error;
mod intake;
mod logging;
mod restore;
mod sessions;
mod streamed;

use std::collections::{BTreeMap, VecDeque};

pub use config::{ReplicaConfig, ReplicaConfigError, ENTRY_BYTES_LIMIT};
pub use error::{
    ConfChangeRejection, ConfStateDefect, CorruptEntry, ReplicaError, RequestError, SnapshotError,
    StepError, StepRefusal,
};
pub use intake::{INDEX_JUMP_MAX, INDEX_MAX};
pub use restore::{RestoredSnapshot, SnapshotRestore};
pub use streamed::{SnapshotBuild, SnapshotBuildError};

use bytes::Bytes;
use protobuf2::Message as _;
use raft::prelude::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message, Snapshot,
};
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest as _, Sha256};

use crate::config::{FleetConfig, DATACENTER_BYTES_MAX, MEMBERS_MAX};
use crate::state_machine::StateMachine;
use crate::storage::LogStore;
use crate::wire::{
    self, entry_payload, ConfChangeContext, EntryPayload, Member, Request, RequestAt, RequestBatch,
    RequestView, SnapshotPayload,
};
use crate::ReplicaId;
use sessions::Sessions;

/// Identifies one request of a driver, to match its [`Completion`].
pub type RequestId = u64;

/// Version of [`SnapshotPayload`] this code writes and reads.
const SNAPSHOT_FORMAT_VERSION: u32 = 1;
// 0 is protobuf's default: an envelope without a version must never pass as one.
const _: () = assert!(SNAPSHOT_FORMAT_VERSION > 0);
// A conf-change context names at most every member with its label (plus a few
// bytes of field overhead each): far below what protobuf encodes, so
// `wire::encode_bounded` holds for it.
const _: () =
    assert!(((MEMBERS_MAX * (DATACENTER_BYTES_MAX + 32)) as u64) < wire::MESSAGE_BYTES_MAX);
/// Entries applied per cycle, at most, from the backlog a restore off the
/// thread left (see `apply_backlog`).
pub const APPLY_BACKLOG_ENTRIES: u64 = 256;

/// Ready cycles that apply backlog entries ([`Replica::applying_backlog`]) a
/// driver runs per turn, at most, before it takes its inputs again: the node,
/// the pool and the simulator all stop there and come back at once.
pub const BACKLOG_STEPS_PER_TURN: usize = 1;

/// The context of the `MsgTransferLeader` a replica that restores a snapshot
/// off its thread sends back to its leader instead of campaigning on a
/// `MsgTimeoutNow`: the leader aborts the transfer at once (raft-rs drops
/// every proposal while one is in progress, for up to an election timeout)
/// and does not rebalance to it again for a while (review 2, R2-2). raft-rs
/// ignores such a message from the transferee it is transferring to, so a
/// leader that does not know the marker loses nothing.
///
/// A leader stamps each `MsgTimeoutNow` it sends with the number of the
/// announcement of its transfer ([`TRANSFER_ANNOUNCED`]) in the message's
/// `index`, which raft-rs does not read for that type; the decline echoes it
/// in its own `index`. A leader takes a decline only if it echoes the number
/// of the transfer in progress: a late or repeated decline of an earlier
/// transfer to the same replica in the same term does not abort a later one.
/// A decline without a number (0, from a build before the stamp, during a
/// rolling upgrade) is taken only for the first transfer to that replica this
/// leader announced in its term, the one transfer it cannot be confused with;
/// any later one runs until it times out, as before declines existed.
pub const TRANSFER_DECLINED: &[u8] = b"vaultfleet/transfer-declined";

/// The context of the `MsgTransferLeader` a leader sends every other voter
/// (the transferee included) when it starts a leadership transfer, followed
/// by the 8 big-endian bytes of the transferee's id. raft-rs lets a vote request whose context is
/// [`raft::CAMPAIGN_TRANSFER`] skip every lease check, so one forged by any
/// voter would depose the leader; a replica honours that force only from the
/// transferee its leader announced, in the next term, within an election
/// timeout (review 5). The id 0 announces that the transfer ended (it timed
/// out, or the transferee declined), and the force no longer holds. The
/// message's `index` numbers the leader's announcements, counting up: one
/// not above the last taken from that leader in that term is ignored. A
/// replica that does not know the marker refuses the message as a transfer
/// sent to a follower, and loses nothing.
pub const TRANSFER_ANNOUNCED: &[u8] = b"vaultfleet/transfer-announced/";

/// The transferee id of an announcement that the transfer ended.
const TRANSFER_ENDED: ReplicaId = raft::INVALID_ID;

/// Periods a leader leaves a replica out of rebalancing after transfers to
/// it failed or were declined, at most: the wait doubles with each one in a
/// row, from one period (a rebalance period for a decline, an election
/// timeout for a transfer that ended without it leading). So a voter in a
/// preferred datacenter may wait up to this many periods after the faults
/// that failed its transfers have healed before the leader hands over to it.
pub const DECLINED_PERIODS_MAX: u64 = 64;

// Read contexts travel as the 8 big-endian bytes of a u64.
const READ_CONTEXT_BYTES: usize = 8;
const _: () = assert!(READ_CONTEXT_BYTES == std::mem::size_of::<u64>());

/// A change of the fleet's membership, one step at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a new replica as a learner (it receives the log but does not vote).
    AddLearner {
        /// The new replica's id.
        id: ReplicaId,
        /// The datacenter it runs in.
        datacenter: String,
    },
    /// Promote a caught-up learner to voter.
    Promote {
        /// The learner's id.
        id: ReplicaId,
    },
    /// Remove a replica (voter or learner) from the fleet.
    Remove {
        /// The replica's id.
        id: ReplicaId,
    },
}

/// The successful result of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The state machine's response to an applied command. It is the same
    /// buffer the session table caches for a retry, shared, not copied.
    Applied(Bytes),
    /// The state machine's answer to a linearizable read.
    Read(Vec<u8>),
    /// A client session was registered with this id.
    SessionRegistered(u64),
    /// A membership change applied; the new voters and learners.
    MembershipChanged(ConfState),
    /// A state digest marker applied ([`Replica::mark_state_digest`]): its
    /// index and the leader's digest of its replicated state there.
    StateDigest(StateDigest),
}

/// Bytes of a [`StateDigest`] (SHA-256).
pub const STATE_DIGEST_BYTES: usize = 32;

/// State digests a replica keeps ([`Status::state_digests`]): the newest
/// ones, older ones are forgotten.
pub const STATE_DIGESTS_KEPT: usize = 8;

/// A replica's digest of its replicated state at one applied log index,
/// computed when it applied a state digest marker there
/// ([`Replica::mark_state_digest`]). Replicas that applied the same log agree
/// on it; two that differ at one index hold different state (etcd's `hashkv`).
///
/// The digest is SHA-256 over a labeled, deterministic encoding
/// ([`crate::codec::labeled`]'s layout, label `vaultfleet/state-digest/v1`)
/// of two fields: the replicated metadata a snapshot carries (session table,
/// members with their datacenters, replicated session limits; the snapshot
/// payload's protobuf without its `state`, which has no map fields and is
/// written in field order from ordered maps) and the state machine's snapshot
/// bytes. The index itself is not hashed: equal state at two indexes gives
/// equal digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateDigest {
    /// The marker's log index.
    pub index: u64,
    /// SHA-256 of the replicated state there.
    pub digest: [u8; STATE_DIGEST_BYTES],
}

impl StateDigest {
    /// The digest in lower-case hex (64 digits).
    pub fn hex(&self) -> String {
        self.digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The driver's id for the request.
    pub id: RequestId,
    /// Its result.
    pub result: Result<Reply, RequestError>,
}

/// What one [`Replica::handle_ready`] produced: messages for the transport and
/// completed requests. Reuse one `Output` across cycles to avoid allocations.
#[derive(Debug, Default)]
pub struct Output {
    /// Raft messages to send, each addressed by `Message::to`.
    pub messages: Vec<Message>,
    /// Requests that finished.
    pub completions: Vec<Completion>,
    /// Streamed snapshots to write. The driver must run each one (off the
    /// replica's thread) and report it with [`Replica::snapshot_built`]:
    /// until it does, the replica takes no other snapshot.
    pub jobs: Vec<SnapshotBuild>,
    /// Streamed snapshots to restore. The driver must run each one (off the
    /// replica's thread) and report it with [`Replica::snapshot_restored`]:
    /// until it does, the replica applies nothing past the snapshot. One
    /// dropped unrun is restored in place at the replica's next cycle.
    pub restores: Vec<SnapshotRestore>,
    /// Large values the replica is done with (a machine replaced by a
    /// restored one, a restore's outcome it ignored): freeing one can take
    /// as long as building it, so a driver drops them off the replica's
    /// thread. Dropping them anywhere is correct.
    pub garbage: Vec<Garbage>,
}

/// A value the replica is done with, for its driver to drop (see
/// [`Output::garbage`]).
pub struct Garbage(#[allow(dead_code)] Box<dyn Send>);

impl Garbage {
    pub(crate) fn new<T: Send + 'static>(value: T) -> Self {
        Self(Box::new(value))
    }
}

impl std::fmt::Debug for Garbage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Garbage")
    }
}

impl Output {
    /// Empties the output for the next cycle, keeping its capacity.
    pub fn clear(&mut self) {
        self.messages.clear();
        self.completions.clear();
        self.jobs.clear();
        self.restores.clear();
        self.garbage.clear();
    }
}

/// A replica's view of the group, for drivers and operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This replica.
    pub id: ReplicaId,
    /// Its role.
    pub role: StateRole,
    /// The leader it knows of.
    pub leader: Option<ReplicaId>,
    /// Current term.
    pub term: u64,
    /// Highest committed index known.
    pub commit: u64,
    /// Highest index applied to the state machine (while a snapshot is
    /// restored off the thread, the index before it).
    pub applied: u64,
    /// First index the log store holds.
    pub first_index: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// Voters, ascending.
    pub voters: Vec<ReplicaId>,
    /// Learners, ascending.
    pub learners: Vec<ReplicaId>,
    /// On the leader: every other member's replication progress, by
    /// ascending id (at most [`MEMBERS_MAX`]);
    /// empty on any other replica.
    pub followers: Vec<FollowerProgress>,
    /// The digests of the replicated state this replica computed at the state
    /// digest markers it applied, by ascending index (newest last, at most
    /// [`STATE_DIGESTS_KEPT`]). A replica that installed a snapshot past a
    /// marker never applied it and has no digest for it.
    pub state_digests: Vec<StateDigest>,
    /// The host's health as the node daemon last checked it; the engine
    /// never knows it (all `None` from [`Replica::status`]).
    pub host: HostHealth,
}

impl Status {
    /// The status of replica `id` before anything is known of it: a follower
    /// of term 0 with an empty log and no configuration.
    pub fn unknown(id: ReplicaId) -> Status {
        Status {
            id,
            role: StateRole::Follower,
            leader: None,
            term: 0,
            commit: 0,
            applied: 0,
            first_index: 0,
            last_index: 0,
            voters: Vec::new(),
            learners: Vec::new(),
            followers: Vec::new(),
            state_digests: Vec::new(),
            host: HostHealth::UNKNOWN,
        }
    }
}

/// The health of the host a replica runs on, as its node daemon's periodic
/// check last found it. Typed flags only: the cause of a failure (a path,
/// an OS error) stays in the node's log, never on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostHealth {
    /// The HSM answers: `Some(true)` it does, `Some(false)` it failed the
    /// last check, `None` not known (no check runs where the status was made).
    pub hsm: Option<bool>,
    /// The data directory takes a write and its sync; `None` as for `hsm`.
    pub disk: Option<bool>,
}

impl HostHealth {
    /// Nothing known (what the engine reports).
    pub const UNKNOWN: HostHealth = HostHealth {
        hsm: None,
        disk: None,
    };
}

/// One follower's (or learner's) replication progress as the leader's raft
/// progress tracker sees it. Deterministic: no clock is read. raft-rs 0.7
/// keeps no time or tick count of a follower's last response, so a "last
/// contact" is not available; `recent_active` is what it keeps instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerProgress {
    /// The follower.
    pub id: ReplicaId,
    /// The highest log index known to be replicated on it.
    pub matched: u64,
    /// The leader's last index minus `matched` (entries it still lacks).
    pub lag: u64,
    /// True if the leader heard from it since the start of the current
    /// election-timeout window (with check-quorum; raft-rs resets it at each
    /// such window on the leader).
    pub recent_active: bool,
}

/// What a leader holds against a replica as a transfer target (see
/// `Replica::transfer_declined` and `Replica::notice_transfer_end`).
#[derive(Debug, Default)]
struct TransferBackOff {
    /// The tick it last declined, or a transfer to it failed.
    refused_at: Option<u64>,
    /// Not a rebalancing target before this tick.
    rebalance_until: u64,
    /// The end of the back-off after the last failed transfer to it.
    failed_until: u64,
    /// Declines in a row.
    declines: u64,
    /// Failed transfers in a row.
    failures: u64,
    /// A transfer to it was announced in this term (see
    /// [`TransferNumber::first`]).
    announced: bool,
}

/// A leadership transfer this replica's leader announced
/// ([`TRANSFER_ANNOUNCED`]).
#[derive(Clone, Copy, Debug)]
struct TransferAnnounced {
    /// The leader that announced it, and its term.
    leader: ReplicaId,
    term: u64,
    /// The transferee; [`TRANSFER_ENDED`] once the leader said the transfer
    /// ended.
    to: ReplicaId,
    /// The announcement's number (its `index`): the leader counts its
    /// announcements up, so a repeated, late or replayed one is told from a
    /// new transfer to the same replica (review 7).
    number: u64,
    /// The tick it was taken.
    at: u64,
}

/// A transfer a leader announced, as a decline of it must name it
/// ([`TRANSFER_DECLINED`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TransferNumber {
    /// The transferee.
    to: ReplicaId,
    /// The leader's term.
    term: u64,
    /// The announcement's number, stamped on the transfer's `MsgTimeoutNow`.
    number: u64,
    /// The first transfer to `to` the leader announced in `term`: a decline
    /// without a number (a build before the stamp) can only be of this one.
    first: bool,
}

/// When a peer last answered this replica, as leader or granting it a vote.
#[derive(Debug, Clone, Copy)]
struct Heard {
    id: ReplicaId,
    /// This replica's tick.
    tick: u64,
    /// This replica's term then: an answer of an earlier term may come from
    /// a voter that has gone down since.
    term: u64,
}

/// One more back-off in a row: `period` ticks from `now`, doubling with each
/// one in a row up to [`DECLINED_PERIODS_MAX`] periods; a streak starts again
/// once the last wait (until `last_until`) is long past. Saturating
/// throughout: `leader_rebalance_ticks` has no upper bound (review 3,
/// MEDIUM-1: `u64::MAX` overflowed, a panic on a peer's message in checked
/// builds).
fn doubled(streak: &mut u64, last_until: u64, now: u64, period: u64) -> u64 {
    if now > last_until.saturating_add(period.saturating_mul(DECLINED_PERIODS_MAX)) {
        *streak = 0;
    }
    *streak = (*streak + 1).min(u64::from(DECLINED_PERIODS_MAX.trailing_zeros()) + 1);
    let periods = (1u64 << (*streak - 1)).min(DECLINED_PERIODS_MAX);
    now.saturating_add(period.saturating_mul(periods))
}

/// A client command in flight: the driver's id, and the session key under which
/// its response is cached once applied.
struct Batched {
    id: RequestId,
    client_id: u64,
    sequence: u64,
    /// The request's owner: a cached response goes only to its session's owner.
    owner: Bytes,
}

enum InFlightKind {
    Batch(Vec<Batched>),
    Register(RequestId),
    Membership(RequestId),
    Digest(RequestId),
}

struct InFlight {
    term: u64,
    deadline_tick: u64,
    kind: InFlightKind,
}

struct ReadBatch {
    deadline_tick: u64,
    reads: Vec<(RequestId, Vec<u8>)>,
}

/// Requests whose places a replica keeps room for between batch entries
/// (`Replica::batch_read`, 56 bytes each): 224 KiB, beyond any batch of the
/// 4096-client bench.
const BATCH_READ_KEPT: usize = 4096;

/// One replica of a raft group: raft-rs's `RawNode` plus proposal batching,
/// client sessions, linearizable reads, snapshots and membership, with no I/O of
/// its own.
pub struct Replica<L: LogStore, S: StateMachine> {
    cfg: ReplicaConfig,
    raw: RawNode<L>,
    machine: S,
    sessions: Sessions,
    members: BTreeMap<ReplicaId, String>,
    rng: ChaCha8Rng,
    ticks: u64,
    election_skip_ticks: usize,
    election_skip_armed: bool,
    batch: Vec<(RequestId, Request)>,
    batch_bytes: usize,
    /// Where the requests of the batch entry being applied lie in it: kept
    /// between entries so that reading one allocates nothing.
    batch_read: Vec<RequestAt>,
    /// Session registrations queued: the request and the session's owner.
    registrations: Vec<(RequestId, Vec<u8>)>,
    /// State digest markers queued ([`Replica::mark_state_digest`]).
    digest_marks: Vec<RequestId>,
    /// The newest digests computed at applied markers, by ascending index (at
    /// most [`STATE_DIGESTS_KEPT`]).
    state_digests: VecDeque<StateDigest>,
    in_flight: BTreeMap<u64, InFlight>,
    reads_queued: Vec<(RequestId, Vec<u8>)>,
    reads_queued_since_tick: u64,
    reads_awaiting_index: BTreeMap<u64, ReadBatch>,
    reads_awaiting_apply: BTreeMap<(u64, u64), ReadBatch>,
    read_context_next: u64,
    completions: Vec<Completion>,
    was_leader: bool,
    failed: bool,
    snapshots_taken: u64,
    /// Snapshots the state machine could not capture (see [`Replica::snapshots_failed`]).
    snapshots_failed: u64,
    /// Peer messages refused by [`Replica::step`] (see [`Replica::messages_refused`]).
    messages_refused: u64,
    /// After a failed snapshot, the applied index before which none is tried again.
    snapshot_retry_after: u64,
    snapshot_wanted: bool,
    /// The streamed snapshot being written by the driver, if any.
    building: Option<streamed::PendingBuild>,
    /// The newest snapshot's file could not be read to send it: take it
    /// again even if nothing was applied since.
    snapshot_rebuild: bool,
    /// A snapshot installed this cycle: older files go once the cycle's sync
    /// has made it the store's.
    retain_after_sync: Option<u64>,
    /// Streamed snapshots to hand to the driver with the cycle's output.
    jobs: Vec<SnapshotBuild>,
    /// Restores to hand to the driver with the cycle's output.
    restores: Vec<SnapshotRestore>,
    /// The streamed snapshot being restored off the thread, if any: until it
    /// is, `applied_index` is the machine's (before the snapshot) and
    /// committed entries wait in it.
    restoring: Option<restore::Restoring>,
    /// Committed entries up to this index wait in the store to be applied
    /// (after a restore off the thread), a bounded step per cycle.
    apply_backlog_to: u64,
    /// Entries (and their bytes) that joined the backlog since its last step,
    /// once the restore was done: the next step applies them on top of its
    /// own bound, so the backlog shrinks by a whole step per cycle whatever
    /// the commit rate (review 3, LOW-2).
    backlog_joined: (u64, u64),
    /// Messages that leave with the next cycle's output outside raft's own:
    /// those raft queued while this replica led, taken when it stepped down
    /// on applying its own removal, and a transfer declined while restoring.
    outbox: Vec<Message>,
    /// Replicas that declined a leadership transfer while this replica led
    /// (they were restoring a snapshot), or to which a transfer failed.
    transfer_back_off: BTreeMap<ReplicaId, TransferBackOff>,
    /// The target of the transfer in progress when last looked at (see
    /// `notice_transfer_end`).
    transfer_watch: Option<ReplicaId>,
    /// The transfer this replica's leader announced last, if any: the one
    /// campaign whose forced vote requests it honours.
    transfer_announced: Option<TransferAnnounced>,
    /// The number of this replica's last announcement as leader
    /// ([`TransferAnnounced::number`]).
    announcements: u64,
    /// As leader, the transfer announced last, while it lasts: the number
    /// its `MsgTimeoutNow` carries and a decline of it must echo
    /// ([`TRANSFER_DECLINED`]).
    transfer_number: Option<TransferNumber>,
    /// A forced vote request taken as an ordinary one (no announcement yet)
    /// and the tick it came at: re-stepped with its force if the leader's
    /// announcement of that campaign follows within an election timeout (it
    /// overtook the announcement, review 6, MEDIUM-2).
    /// One per voter, so that no voter's request displaces the
    /// transferee's (review 7).
    held_forced_votes: BTreeMap<ReplicaId, (Message, u64)>,
    /// The leader's `MsgTimeoutNow` taken while a membership change was
    /// committed here but not applied (raft-rs would not campaign, and the
    /// transfer would end in an election), and the tick it came at:
    /// re-stepped once the change is applied (review 6, MEDIUM-3).
    held_timeout_now: Option<(Message, u64)>,
    /// When each peer last answered this replica (a few entries: the
    /// members, at most twice `MEMBERS_MAX`).
    heard_at: Vec<Heard>,
    /// The term the back-offs were set in: they are forgotten in a new one.
    back_off_term: u64,
    /// The last streamed build this replica started was cancelled for a new
    /// member (M4); cleared once a build's outcome is taken.
    build_cancelled_last: bool,
    /// The last index applied to the state machine (or restored from a snapshot):
    /// entries apply consecutively after it.
    applied_index: u64,
    /// A commit index the store holds durably (read at open, or written before
    /// a sync since); at most the durable one. A membership change applies only
    /// once it is covered ([`Replica::commit_durably`]).
    commit_synced: u64,
}

/// Completes every request in `ids` with `error`.
fn fail_ids(
    ids: impl IntoIterator<Item = RequestId>,
    error: &RequestError,
    out: &mut Vec<Completion>,
) {
    out.extend(ids.into_iter().map(|id| Completion {
        id,
        result: Err(error.clone()),
    }));
}

fn fail_kind(kind: InFlightKind, error: &RequestError, out: &mut Vec<Completion>) {
    match kind {
        InFlightKind::Batch(requests) => fail_ids(requests.into_iter().map(|b| b.id), error, out),
        InFlightKind::Register(id) | InFlightKind::Membership(id) | InFlightKind::Digest(id) => {
            fail_ids([id], error, out)
        }
    }
}

impl<L: LogStore, S: StateMachine> std::fmt::Debug for Replica<L, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("status", &self.status())
            .finish()
    }
}

/// The replicated session limits a snapshot carries: `None` for a snapshot
/// from before they were replicated (both zero), an error for limits out of
/// range (a leader never sends those).
fn replicated_limits(payload: &SnapshotPayload) -> Result<Option<(usize, usize)>, SnapshotError> {
    if payload.sessions_max == 0 && payload.session_responses_max == 0 {
        return Ok(None);
    }
    let settings = crate::config::ReplicatedSettings {
        sessions_max: payload.sessions_max,
        session_responses_max: payload.session_responses_max,
    };
    let bad = || SnapshotError::Settings {
        sessions_max: payload.sessions_max,
        session_responses_max: payload.session_responses_max,
    };
    settings.check().map_err(|_| bad())?;
    match (
        usize::try_from(settings.sessions_max),
        usize::try_from(settings.session_responses_max),
    ) {
        (Ok(s), Ok(r)) => Ok(Some((s, r))),
        _ => Err(bad()),
    }
}

fn snapshot_payload(
    sessions: &Sessions,
    members: &BTreeMap<ReplicaId, String>,
    state: Vec<u8>,
) -> Result<Vec<u8>, wire::EncodeError> {
    let mut p = SnapshotPayload::new();
    p.format_version = SNAPSHOT_FORMAT_VERSION;
    p.sessions = sessions.to_wire();
    // 0 and 0 ("not replicated") for a store bootstrapped before the limits
    // were replicated: this replica's own config values are not the group's.
    if let Some((sessions_max, responses_max)) = sessions.replicated_limits() {
        p.sessions_max = sessions_max as u64;
        p.session_responses_max = responses_max as u64;
    }
    p.members = wire_members(members);
    p.state = state;
    wire::encode(&p)
}

/// The members as a snapshot payload lists them.
fn wire_members(members: &BTreeMap<ReplicaId, String>) -> Vec<Member> {
    members
        .iter()
        .map(|(&id, dc)| {
            let mut m = Member::new();
            m.id = id;
            m.datacenter = dc.clone();
            m
        })
        .collect()
}

impl<L: LogStore, S: StateMachine> Replica<L, S> {
    /// Writes the initial state of a new fleet into an empty store: a snapshot at
    /// index 1 holding the voters, learners, datacenter labels and the state
    /// machine's initial state. Every initial member runs this with the same
    /// `fleet`; members added later start from an empty store instead and receive a
    /// snapshot from the leader.
    ///
    /// Returns `false`, writing nothing, if the store already holds a replica's
    /// state (a restart).
    pub fn bootstrap(
        store: &mut L,
        machine: &S,
        fleet: &FleetConfig,
    ) -> Result<bool, ReplicaError> {
        let id = 0;
        fleet
            .validate()
            .map_err(|source| ReplicaError::Fleet { source })?;
        let initialized = store
            .last_index()
            .map_err(|source| ReplicaError::Raft { id, source })?
            > 0
            || !store.latest_snapshot().is_empty()
            || *store.hard_state() != Default::default();
        if initialized {
            return Ok(false);
        }
        let members: BTreeMap<ReplicaId, String> = fleet
            .members
            .iter()
            .map(|m| (m.id, m.datacenter.clone()))
            .collect();
        // The replicated settings go into the bootstrap snapshot, hence into
        // every later one: no replica's own config decides them.
        let sessions = match (
            usize::try_from(fleet.settings.sessions_max),
            usize::try_from(fleet.settings.session_responses_max),
        ) {
            (Ok(s), Ok(r)) => {
                let mut sessions = Sessions::new(s, r);
                sessions.set_replicated_limits(s, r);
                sessions
            }
            _ => {
                return Err(ReplicaError::Fleet {
                    source: crate::config::ConfigError::Settings {
                        sessions_max: fleet.settings.sessions_max,
                        session_responses_max: fleet.settings.session_responses_max,
                    },
                })
            }
        };
        let data = machine
            .snapshot()
            .map_err(SnapshotError::from)
            .and_then(|state| {
                snapshot_payload(&sessions, &members, state).map_err(SnapshotError::from)
            })
            .map_err(|source| ReplicaError::Snapshot {
                id,
                index: 1,
                source,
            })?;
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = 1;
        meta.term = 1;
        let cs = meta.mut_conf_state();
        cs.voters = fleet.voters();
        cs.learners = fleet.learners();
        store
            .apply_snapshot(&snap)
            .and_then(|()| store.sync())
            .map_err(|source| ReplicaError::Storage { id, source })?;
        Ok(true)
    }

    /// Starts a replica on `store`, restoring the state machine from the store's
    /// newest snapshot; the committed log after it is re-applied by the first
    /// Ready cycles.
    pub fn new(cfg: ReplicaConfig, mut store: L, mut machine: S) -> Result<Self, ReplicaError> {
        let id = cfg.id;
        cfg.validate()
            .map_err(|source| ReplicaError::Config { id, source })?;
        let snap = store.latest_snapshot().clone();
        let snap_index = snap.get_metadata().index;
        if store.hard_state().commit < snap_index {
            // A snapshot is committed state by definition.
            let mut hs = store.hard_state().clone();
            hs.commit = snap_index;
            store
                .set_hard_state(&hs)
                .and_then(|()| store.sync())
                .map_err(|source| ReplicaError::Storage { id, source })?;
        }
        let mut sessions = Sessions::new(cfg.sessions_max, cfg.session_responses_max);
        let mut members = BTreeMap::new();
        if !snap.is_empty() {
            let files = store.snapshot_files();
            Self::restore_payload(
                id,
                cfg.group,
                files.as_deref(),
                &snap,
                &mut machine,
                &mut sessions,
                &mut members,
                (cfg.sessions_max, cfg.session_responses_max),
            )?;
        }
        let raft_cfg = raft::Config {
            id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: snap_index,
            max_size_per_msg: cfg.message_bytes_max,
            max_inflight_msgs: cfg.inflight_messages_max,
            check_quorum: true,
            pre_vote: true,
            min_election_tick: cfg.election_ticks,
            max_election_tick: cfg.election_ticks + 1,
            read_only_option: if cfg.lease_reads {
                ReadOnlyOption::LeaseBased
            } else {
                ReadOnlyOption::Safe
            },
            batch_append: true,
            // A leader whose commit index moved does not send each follower an
            // append carrying only that index (TiKV's raftstore sets the same):
            // followers learn it from the next append or heartbeat, so their
            // applied state trails the leader's by up to a heartbeat when the
            // fleet is idle. Nothing waits on a follower's commit: reads are
            // the leader's, promotion and transfer look at `matched`, and
            // raft-rs still broadcasts while a membership change is pending.
            skip_bcast_commit: true,
            max_uncommitted_size: cfg.uncommitted_bytes_max,
            ..Default::default()
        };
        // Read from the store as it opened: durable.
        let commit_synced = store.hard_state().commit;
        let raw = RawNode::new(&raft_cfg, store, &logging::raft_logger(id))
            .map_err(|source| ReplicaError::Raft { id, source })?;
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        Ok(Self {
            sessions,
            members,
            rng,
            raw,
            machine,
            ticks: 0,
            election_skip_ticks: 0,
            election_skip_armed: false,
            batch: Vec::new(),
            batch_bytes: 0,
            batch_read: Vec::new(),
            registrations: Vec::new(),
            digest_marks: Vec::new(),
            state_digests: VecDeque::with_capacity(STATE_DIGESTS_KEPT),
            in_flight: BTreeMap::new(),
            reads_queued: Vec::new(),
            reads_queued_since_tick: 0,
            reads_awaiting_index: BTreeMap::new(),
            reads_awaiting_apply: BTreeMap::new(),
            read_context_next: 1,
            completions: Vec::new(),
            was_leader: false,
            failed: false,
            snapshots_taken: 0,
            snapshots_failed: 0,
            messages_refused: 0,
            snapshot_retry_after: 0,
            snapshot_wanted: false,
            building: None,
            snapshot_rebuild: false,
            retain_after_sync: None,
            jobs: Vec::new(),
            restores: Vec::new(),
            restoring: None,
            apply_backlog_to: 0,
            backlog_joined: (0, 0),
            outbox: Vec::new(),
            transfer_back_off: BTreeMap::new(),
            transfer_watch: None,
            transfer_announced: None,
            announcements: 0,
            transfer_number: None,
            held_forced_votes: BTreeMap::new(),
            held_timeout_now: None,
            heard_at: Vec::new(),
            back_off_term: 0,
            build_cancelled_last: false,
            applied_index: snap_index,
            commit_synced,
            cfg,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn restore_payload(
        id: ReplicaId,
        group: u64,
        files: Option<&dyn crate::snapshot::SnapshotFiles>,
        snap: &Snapshot,
        machine: &mut S,
        sessions: &mut Sessions,
        members: &mut BTreeMap<ReplicaId, String>,
        own_limits: (usize, usize),
    ) -> Result<(), ReplicaError> {
        let index = snap.get_metadata().index;
        let bad = |source: SnapshotError| ReplicaError::Snapshot { id, index, source };
        let payload: SnapshotPayload =
            wire::decode(&snap.data, "snapshot payload").map_err(|e| bad(e.into()))?;
        match payload.format_version {
            SNAPSHOT_FORMAT_VERSION => {
                let limits = replicated_limits(&payload).map_err(bad)?;
                machine.restore(&payload.state).map_err(|e| bad(e.into()))?;
                sessions.restore(payload.sessions);
                Self::restore_settings(limits, sessions, members, payload.members, own_limits);
            }
            streamed::SNAPSHOT_FORMAT_STREAMED => {
                let limits = replicated_limits(&payload).map_err(bad)?;
                let descriptor = streamed::descriptor_of(&payload, snap, group).map_err(bad)?;
                let files = files.ok_or_else(|| bad(SnapshotError::NoFiles))?;
                streamed::restore_stream(files, &descriptor, machine, sessions).map_err(bad)?;
                Self::restore_settings(limits, sessions, members, payload.members, own_limits);
            }
            found => {
                return Err(bad(SnapshotError::Version {
                    found,
                    supported: streamed::SNAPSHOT_FORMAT_STREAMED,
                }))
            }
        }
        Ok(())
    }

    /// The limits and members a snapshot carries, once its state is restored.
    fn restore_settings(
        limits: Option<(usize, usize)>,
        sessions: &mut Sessions,
        members: &mut BTreeMap<ReplicaId, String>,
        wire_members: Vec<Member>,
        own_limits: (usize, usize),
    ) {
        match limits {
            Some((sessions_max, responses_max)) => {
                sessions.set_replicated_limits(sessions_max, responses_max);
            }
            // A snapshot of a group from before the limits were replicated:
            // every replica of it runs on its own config's, this one too.
            None => sessions.set_own_limits(own_limits.0, own_limits.1),
        }
        *members = wire_members
            .into_iter()
            .map(|m| (m.id, m.datacenter))
            .collect();
    }

    // ---- inputs -------------------------------------------------------------

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        if self.failed {
            return;
        }
        self.ticks += 1;
        if self.raw.raft.state != StateRole::Leader && self.raw.raft.leader_id == raft::INVALID_ID {
            // Randomized election timeout from the seeded RNG (see module docs),
            // only while no leader is known: followers of a live leader keep raft's
            // own clock, so its lease check sees them time out together and they
            // grant each other's pre-votes when the leader dies.
            if self.raw.raft.election_elapsed == 0 {
                if !self.election_skip_armed {
                    let extra = if self.in_preferred_datacenter() {
                        0
                    } else {
                        self.cfg.election_ticks_extra_unpreferred
                    };
                    self.election_skip_ticks =
                        self.rng.gen_range(0..self.cfg.election_ticks) + extra;
                    self.election_skip_armed = true;
                }
                if self.election_skip_ticks > 0 {
                    self.election_skip_ticks -= 1;
                    self.expire_requests();
                    return;
                }
            }
            self.election_skip_armed = false;
        }
        // Before raft's tick: at an election timeout its check-quorum clears
        // every follower's `recent_active`, which rebalancing requires, so a
        // rebalance tick that fell there never found a target (review 4).
        if self.cfg.leader_rebalance_ticks > 0 && self.ticks % self.cfg.leader_rebalance_ticks == 0
        {
            self.rebalance_leader();
        }
        self.raw.tick();
        // A transfer raft ended at this tick (timed out) is counted now.
        self.notice_transfer_end();
        self.expire_requests();
    }

    /// Steps a message from a peer. Messages that are not for this replica, that
    /// fail the intake checks (every field that could drive raft-rs into a panic
    /// or this replica into a stop is checked first against its own log, term,
    /// commit and membership; see `docs/threat-model.md`), or that raft refuses
    /// are dropped with a [`StepError`] and counted in
    /// [`Replica::messages_refused`]; the replica carries on.
    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        let (id, from) = (self.cfg.id, message.from);
        // Only an answer to this leader in its term shows the sender hears
        // it (a peer that can send but not receive also sends pre-votes).
        let answers_leader = message.term == self.raw.raft.term
            && match message.get_msg_type() {
                raft::prelude::MessageType::MsgAppendResponse
                | raft::prelude::MessageType::MsgHeartbeatResponse => true,
                raft::prelude::MessageType::MsgRequestVoteResponse => !message.reject,
                _ => false,
            };
        self.step_checked(message).map_err(|reason| {
            self.messages_refused += 1;
            StepError { id, from, reason }
        })?;
        if answers_leader {
            self.heard_from(from);
        }
        Ok(())
    }

    /// Notes that `from` answered this leader at this tick (see
    /// `check_voters_keep_quorum`).
    fn heard_from(&mut self, from: ReplicaId) {
        let now = Heard {
            id: from,
            tick: self.ticks,
            term: self.raw.raft.term,
        };
        if let Some(entry) = self.heard_at.iter_mut().find(|h| h.id == from) {
            *entry = now;
        } else if self.heard_at.len() < MEMBERS_MAX * 2 {
            self.heard_at.push(now);
        } else if let Some(oldest) = self.heard_at.iter_mut().min_by_key(|h| h.tick) {
            // Full of members long gone: the one heard from longest ago goes.
            *oldest = now;
        }
    }

    /// When `id` last answered this replica, if it did within an election
    /// timeout, and at least two heartbeat rounds however close the settings
    /// put the heartbeat to the election timeout.
    fn heard_recently(&self, id: ReplicaId) -> Option<&Heard> {
        let recent = (self.cfg.election_ticks as u64).max(self.cfg.heartbeat_ticks as u64 * 2 + 2);
        self.heard_at
            .iter()
            .find(|h| h.id == id && self.ticks.saturating_sub(h.tick) <= recent)
    }

    /// Whether `id` answered this replica (as leader, or granting it a vote)
    /// lately: see [`Self::heard_recently`].
    fn heard_lately(&self, id: ReplicaId) -> bool {
        self.heard_recently(id).is_some()
    }

    /// Refuses a membership change whose voters (`voters`, after it) would
    /// not hold a majority this leader heard answer it within an election
    /// timeout: the fleet would stall until a replica it lost came back
    /// (etcd's `--strict-reconfig-check`; a simulator seed lost its majority
    /// when a healthy voter's removal committed while two others were lost).
    /// Checked when the change is proposed: one proposed earlier can still
    /// commit after later losses. Skipped while a change is pending (raft
    /// refuses it then, and says so).
    fn check_voters_keep_quorum(&self, voters: &[ReplicaId]) -> Result<(), RequestError> {
        let raft = &self.raw.raft;
        if raft.pending_conf_index > raft.raft_log.applied {
            return Ok(());
        }
        let active = voters
            .iter()
            .filter(|&&v| v == self.cfg.id || self.heard_lately(v))
            .count();
        if active < voters.len() / 2 + 1 {
            return Err(RequestError::ConfChangeRejected(
                ConfChangeRejection::QuorumAtRisk {
                    active,
                    voters: voters.len(),
                },
            ));
        }
        Ok(())
    }

    fn step_checked(&mut self, message: Message) -> Result<(), StepRefusal> {
        if self.failed {
            return Err(StepRefusal::Failed);
        }
        if message.to != self.cfg.id {
            return Err(StepRefusal::Misaddressed { to: message.to });
        }
        if raft::raw_node::is_local_msg(message.get_msg_type()) {
            return Err(StepRefusal::LocalMessage(message.get_msg_type()));
        }
        intake::check(&self.raw.raft, &message)?;
        if message.get_msg_type() == raft::prelude::MessageType::MsgSnapshot {
            self.check_streamed_snapshot(message.get_snapshot())?;
        }
        if let (raft::prelude::MessageType::MsgTimeoutNow, Some(index)) =
            (message.get_msg_type(), self.restoring_snapshot())
        {
            self.decline_transfer(message.from, message.index);
            return Err(StepRefusal::TimeoutNowWhileRestoring { index });
        }
        if message.get_msg_type() == raft::prelude::MessageType::MsgTimeoutNow
            && self.membership_change_unapplied()
        {
            tracing::debug!(
                replica = self.cfg.id,
                from = message.from,
                "leadership transfer held until the committed membership change is applied"
            );
            self.held_timeout_now = Some((message, self.ticks));
            return Ok(());
        }
        if message.get_msg_type() == raft::prelude::MessageType::MsgTransferLeader {
            if let Some(to) = message.context.strip_prefix(TRANSFER_ANNOUNCED) {
                return self.transfer_announced(&message, to);
            }
            // Never stepped into raft: a follower would forward it, and
            // raft-rs's send is fatal on a forwarded message with a term.
            // Intake let nothing else through (a peer's ask is refused).
            return self.transfer_declined(&message);
        }
        let mut message = message;
        // raft-rs commits `commit` on a vote or pre-vote message (and their
        // responses) whenever its term matches `commit_term` in the local log
        // (`maybe_commit_by_vote`): one forged pre-vote would make a follower
        // commit and apply entries the fleet never committed. The optimisation
        // only shortens catching up after an election; drop it.
        if matches!(
            message.get_msg_type(),
            raft::prelude::MessageType::MsgRequestVote
                | raft::prelude::MessageType::MsgRequestPreVote
                | raft::prelude::MessageType::MsgRequestVoteResponse
                | raft::prelude::MessageType::MsgRequestPreVoteResponse
        ) {
            message.commit = 0;
            message.commit_term = 0;
        }
        // raft-rs lets a vote request with this context skip every lease
        // check, so any voter could depose the leader with one (review 5):
        // the force holds only for the campaign this replica's leader
        // announced. Without it, the request is an ordinary vote, which a
        // replica that heard from its leader lately ignores.
        if message.context.as_ref() == raft::CAMPAIGN_TRANSFER && !self.campaign_announced(&message)
        {
            self.hold_forced_vote(&message);
            // Debug: a hostile voter could send one per message.
            tracing::debug!(
                replica = self.cfg.id,
                from = message.from,
                term = message.term,
                "a forced vote request for a leadership transfer this replica's leader did not \
                 announce: taken as an ordinary one"
            );
            message.context = Default::default();
        }
        self.raw.step(message).map_err(StepRefusal::Raft)?;
        self.notice_newer_snapshot();
        Ok(())
    }

    fn check_leader(&self) -> Result<(), RequestError> {
        if self.failed {
            return Err(RequestError::Stopped);
        }
        if self.raw.raft.state != StateRole::Leader {
            let leader = self.raw.raft.leader_id;
            return Err(RequestError::NotLeader {
                leader: (leader != raft::INVALID_ID).then_some(leader),
            });
        }
        Ok(())
    }

    /// Queues a client command. It is packed with the others queued in this cycle
    /// into one log entry at the next [`Replica::handle_ready`]; its completion
    /// carries the state machine's response.
    pub fn propose(&mut self, id: RequestId, request: Request) -> Result<(), RequestError> {
        debug_assert!(self.batch_bytes <= self.cfg.entry_bytes_max + self.cfg.command_bytes_max);
        check_owner(&request.owner)?;
        self.check_leader()?;
        if request.command.len() > self.cfg.command_bytes_max {
            return Err(RequestError::CommandTooLarge {
                bytes: request.command.len(),
                limit: self.cfg.command_bytes_max,
            });
        }
        // Rough size of the request inside the batch: payload plus field overhead.
        let bytes = request.command.len() + 32;
        if self.batch_bytes + bytes > self.cfg.entry_bytes_max {
            self.flush_batch();
        }
        self.batch_bytes += bytes;
        self.batch.push((id, request));
        Ok(())
    }

    /// Queues the registration of a new client session; the completion carries
    /// the session id.
    pub fn register_session(&mut self, id: RequestId) -> Result<(), RequestError> {
        self.register_session_of(id, Vec::new())
    }

    /// Queues the registration of a session belonging to `owner` (a network
    /// front end's authenticated client key, at most [`OWNER_BYTES_MAX`]
    /// bytes): only commands naming the same owner may use it.
    pub fn register_session_of(
        &mut self,
        id: RequestId,
        owner: Vec<u8>,
    ) -> Result<(), RequestError> {
        check_owner(&owner)?;
        self.check_leader()?;
        self.registrations.push((id, owner));
        Ok(())
    }

    /// Queues a state digest marker (leader only; `NotLeader` otherwise): a
    /// log entry that changes no state, at whose index every replica applying
    /// it computes a [`StateDigest`] of its replicated state (kept in
    /// [`Status::state_digests`]). The completion carries the marker's index
    /// and the leader's own digest ([`Reply::StateDigest`]).
    ///
    /// Replicas of a build from before markers apply the entry as a no-op and
    /// report no digest: comparing state needs every replica on a build that
    /// knows markers.
    pub fn mark_state_digest(&mut self, id: RequestId) -> Result<(), RequestError> {
        self.check_leader()?;
        // One marker at a time: each one makes every replica capture its whole
        // state at the same index, so a burst of them would stall the fleet.
        let pending = !self.digest_marks.is_empty()
            || self
                .in_flight
                .values()
                .any(|f| matches!(f.kind, InFlightKind::Digest(_)));
        if pending {
            return Err(RequestError::Overloaded);
        }
        self.digest_marks.push(id);
        Ok(())
    }

    /// Queues a linearizable read (ReadIndex; or the leader's lease if
    /// [`ReplicaConfig::lease_reads`]). Reads queued in one cycle share one round
    /// of heartbeats.
    pub fn read(&mut self, id: RequestId, query: Vec<u8>) -> Result<(), RequestError> {
        self.check_leader()?;
        if self.reads_queued.is_empty() {
            self.reads_queued_since_tick = self.ticks;
        }
        self.reads_queued.push((id, query));
        Ok(())
    }

    /// Proposes one membership change.
    pub fn change_membership(
        &mut self,
        id: RequestId,
        change: MembershipChange,
    ) -> Result<(), RequestError> {
        self.check_leader()?;
        let mut context = ConfChangeContext::new();
        let single = match &change {
            MembershipChange::AddLearner { id, datacenter } => {
                let cs = self.raw.raft.prs().conf().to_conf_state();
                let members = cs.voters.len() + cs.learners.len();
                if members >= MEMBERS_MAX {
                    // Every snapshot of a larger membership would be refused on
                    // intake (`ConfStateDefect::TooMany`): refuse the change instead.
                    return Err(RequestError::ConfChangeRejected(
                        ConfChangeRejection::TooManyMembers { members },
                    ));
                }
                if datacenter.len() > DATACENTER_BYTES_MAX {
                    return Err(RequestError::ConfChangeRejected(
                        ConfChangeRejection::DatacenterTooLong {
                            bytes: datacenter.len(),
                        },
                    ));
                }
                let mut m = Member::new();
                m.id = *id;
                m.datacenter = datacenter.clone();
                context.members.push(m);
                raft_proto::new_conf_change_single(*id, ConfChangeType::AddLearnerNode)
            }
            MembershipChange::Promote { id: learner } => {
                let last_index = self.raw.raft.raft_log.last_index();
                let progress = self.raw.raft.prs().get(*learner);
                let matched = progress.map_or(0, |p| p.matched);
                // Replicate state means the learner acknowledged a matching log;
                // the lag bound alone would pass trivially on a short log.
                let replicating =
                    progress.is_some_and(|p| p.state == raft::ProgressState::Replicate);
                if !replicating
                    || matched.saturating_add(self.cfg.promotion_lag_entries_max) < last_index
                {
                    return Err(RequestError::NotCaughtUp {
                        id: *learner,
                        matched,
                        last_index,
                    });
                }
                // A promoted learner that has gone quiet since it caught up
                // would count toward the quorum it cannot help make.
                let mut after: Vec<ReplicaId> =
                    self.raw.raft.prs().conf().voters().ids().iter().collect();
                if !after.contains(learner) {
                    after.push(*learner);
                }
                self.check_voters_keep_quorum(&after)?;
                raft_proto::new_conf_change_single(*learner, ConfChangeType::AddNode)
            }
            MembershipChange::Remove { id: gone } => {
                if *gone == self.cfg.id {
                    return Err(RequestError::ConfChangeRejected(
                        ConfChangeRejection::RemovesLeader,
                    ));
                }
                let voters = self.raw.raft.prs().conf().voters().ids();
                if voters.contains(*gone) {
                    let left: Vec<ReplicaId> = voters.iter().filter(|&v| v != *gone).collect();
                    self.check_voters_keep_quorum(&left)?;
                }
                raft_proto::new_conf_change_single(*gone, ConfChangeType::RemoveNode)
            }
        };
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        let before = self.raw.raft.raft_log.last_index();
        // One member of at most DATACENTER_BYTES_MAX label bytes: far below the
        // encoder's limit.
        match self
            .raw
            .propose_conf_change(wire::encode_bounded(&context), cc)
        {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                if index == before {
                    return Err(RequestError::Dropped);
                }
                self.in_flight.insert(
                    index,
                    InFlight {
                        term: self.raw.raft.term,
                        deadline_tick: self.ticks + self.cfg.request_ticks_max,
                        kind: InFlightKind::Membership(id),
                    },
                );
                Ok(())
            }
            Err(raft::Error::ProposalDropped) => Err(RequestError::Dropped),
            Err(e) => Err(RequestError::ConfChangeRejected(ConfChangeRejection::Raft(
                e.into(),
            ))),
        }
    }

    /// Hands leadership to `to`, if this replica leads; ignored otherwise
    /// (raft-rs would forward it to the leader as an ask, which every
    /// replica refuses: [`StepRefusal::TransferAskRefused`]). The transfer
    /// is announced to every other voter with this cycle's output
    /// ([`TRANSFER_ANNOUNCED`]).
    pub fn transfer_leader(&mut self, to: ReplicaId) {
        if !self.failed && self.is_leader() {
            self.raw.transfer_leader(to);
            // Announced (and numbered) now: a second call in the same turn
            // that replaces it must not reuse its number.
            self.notice_transfer_end();
        }
    }

    /// Tells raft that `to` could not be reached, so the leader probes it instead of
    /// streaming.
    pub fn report_unreachable(&mut self, to: ReplicaId) {
        self.raw.report_unreachable(to);
    }

    /// Tells raft whether the snapshot at `index` sent to `to` arrived. A
    /// report about another snapshot than the one raft waits for (a late
    /// outcome of an older send) is ignored: it would move the peer on as if
    /// the newer one had arrived or failed (review 3 of the delivered frame,
    /// LOW-4).
    pub fn report_snapshot(&mut self, to: ReplicaId, index: u64, status: SnapshotStatus) {
        let waits = self.raw.raft.prs().get(to).is_some_and(|p| {
            p.state == raft::ProgressState::Snapshot && p.pending_snapshot == index
        });
        if waits {
            self.raw.report_snapshot(to, status);
        } else {
            tracing::debug!(
                replica = self.cfg.id,
                to,
                index,
                ?status,
                "ignoring the outcome of a snapshot send raft no longer waits for"
            );
        }
    }

    // ---- the Ready cycle ------------------------------------------------------

    /// True when [`Replica::handle_ready`] has work.
    pub fn has_ready(&self) -> bool {
        if self.failed {
            return false;
        }
        !self.batch.is_empty()
            || !self.registrations.is_empty()
            || !self.digest_marks.is_empty()
            || !self.completions.is_empty()
            || self.restoring.as_ref().is_some_and(|r| r.dropped())
            || self.applying_backlog()
            || !self.outbox.is_empty()
            || (!self.reads_queued.is_empty() && self.raw.raft.commit_to_current_term())
            || self.raw.has_ready()
    }

    fn flush_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let mut requests = RequestBatch::new();
        requests.requests.reserve_exact(batch.len());
        let mut ids = Vec::with_capacity(batch.len());
        for (id, request) in batch {
            ids.push(Batched {
                id,
                client_id: request.client_id,
                sequence: request.sequence,
                owner: request.owner.clone(),
            });
            requests.requests.push(request);
        }
        let mut payload = EntryPayload::new();
        payload.kind = Some(entry_payload::Kind::Batch(requests));
        self.propose_entry(payload, InFlightKind::Batch(ids));
    }

    fn propose_entry(&mut self, payload: EntryPayload, kind: InFlightKind) {
        let before = self.raw.raft.raft_log.last_index();
        // A batch is bounded by entry_bytes_max <= ENTRY_BYTES_LIMIT (validated),
        // far below the encoder's limit.
        let proposed = self.raw.propose(Vec::new(), wire::encode_bounded(&payload));
        let index = self.raw.raft.raft_log.last_index();
        if proposed.is_ok() && index > before {
            self.in_flight.insert(
                index,
                InFlight {
                    term: self.raw.raft.term,
                    deadline_tick: self.ticks + self.cfg.request_ticks_max,
                    kind,
                },
            );
        } else {
            // Dropped by raft (leadership transfer under way, uncommitted limit, ...).
            fail_kind(kind, &RequestError::Dropped, &mut self.completions);
        }
    }

    fn flush_proposals(&mut self) {
        if self.raw.raft.state != StateRole::Leader {
            // Leadership was lost after these were queued (a higher-term message in
            // the same drain). raft-rs would forward them to the new leader and
            // they could apply although reported failed: refuse them instead.
            let error = RequestError::NotLeader {
                leader: self.leader(),
            };
            fail_ids(
                std::mem::take(&mut self.batch)
                    .into_iter()
                    .map(|(id, _)| id),
                &error,
                &mut self.completions,
            );
            self.batch_bytes = 0;
            fail_ids(
                std::mem::take(&mut self.registrations)
                    .into_iter()
                    .map(|(id, _)| id),
                &error,
                &mut self.completions,
            );
            fail_ids(
                std::mem::take(&mut self.digest_marks),
                &error,
                &mut self.completions,
            );
            return;
        }
        self.flush_entries();
        self.flush_reads();
    }

    /// Proposes the queued batch, registrations and digest markers.
    fn flush_entries(&mut self) {
        self.flush_batch();
        for (id, owner) in std::mem::take(&mut self.registrations) {
            let mut payload = EntryPayload::new();
            let mut register = wire::RegisterSession::new();
            register.owner = owner;
            payload.kind = Some(entry_payload::Kind::RegisterSession(register));
            self.propose_entry(payload, InFlightKind::Register(id));
        }
        for id in std::mem::take(&mut self.digest_marks) {
            let mut payload = EntryPayload::new();
            payload.kind = Some(entry_payload::Kind::StateDigestMarker(
                wire::StateDigestMarker::new(),
            ));
            self.propose_entry(payload, InFlightKind::Digest(id));
        }
    }

    /// Asks raft for a read index for the queued reads.
    fn flush_reads(&mut self) {
        // raft-rs 0.7 silently drops a ReadIndex before the leader has committed an
        // entry of its own term, so reads wait in the queue until then.
        if !self.reads_queued.is_empty() && self.raw.raft.commit_to_current_term() {
            let context = self.read_context_next;
            self.read_context_next += 1;
            let reads = std::mem::take(&mut self.reads_queued);
            self.reads_awaiting_index.insert(
                context,
                ReadBatch {
                    deadline_tick: self.reads_queued_since_tick + self.cfg.request_ticks_max,
                    reads,
                },
            );
            self.raw.read_index(context.to_be_bytes().to_vec());
        }
    }

    /// Runs one Ready cycle (see the module docs for the contract): flushes queued
    /// proposals and reads into raft, persists with one durability point, applies
    /// what committed, and appends messages and completions to `out`.
    ///
    /// A storage failure stops the replica: every later call fails, pending
    /// requests complete with [`RequestError::Stopped`], and the error is returned.
    pub fn handle_ready(&mut self, out: &mut Output) -> Result<(), ReplicaError> {
        self.ready_or_fail(out, None)
    }

    /// As [`handle_ready`](Self::handle_ready), but the messages raft-rs lets
    /// a leader send before it persists (its appends and heartbeats) go to
    /// `send_now` at once, before this cycle writes and syncs the log: the
    /// leader's fsync then overlaps its followers' instead of preceding
    /// them (Raft thesis §10.2.1; raft-rs's `Ready::messages`, as against
    /// `persisted_messages`). A commit still needs a majority that persisted
    /// the entry, the leader's own acknowledgement counts only after its
    /// sync, and nothing is acknowledged to a client before the commit.
    /// Only the Ready's leading appends and heartbeats go early, and none in
    /// a cycle that takes a new term or vote; the rest goes to
    /// `out.messages`, after them, as from `handle_ready` (a snapshot, which
    /// the driver sends its own way, included). `send_now` must only hand
    /// the messages to the transport. They stay sent if the cycle then fails
    /// (a leader may send entries it has not persisted; they count for
    /// nothing until it has).
    pub fn handle_ready_sending(
        &mut self,
        out: &mut Output,
        send_now: &mut dyn FnMut(Vec<Message>),
    ) -> Result<(), ReplicaError> {
        self.ready_or_fail(out, Some(send_now))
    }

    /// How many of a Ready's `messages`, from the front, may leave before
    /// the cycle's sync: appends and heartbeats only, and none while the
    /// cycle's hard state takes a new term or vote (review 11: a single
    /// voter's first append of a term it has not made durable; a crash would
    /// bring it back in the old term to win the same term again). A
    /// `MsgTimeoutNow` or a snapshot waits, and so does everything after it,
    /// so messages to one peer keep raft's order, and a `MsgTimeoutNow`
    /// never leaves ahead of the announcements that go with the output.
    fn early_prefix(&self, rd: &raft::Ready, messages: &[Message]) -> usize {
        use raft::prelude::MessageType;
        let durable = self.raw.store().hard_state();
        if rd
            .hs()
            .is_some_and(|hs| (hs.term, hs.vote) != (durable.term, durable.vote))
        {
            return 0;
        }
        messages
            .iter()
            .take_while(|m| {
                matches!(
                    m.get_msg_type(),
                    MessageType::MsgAppend | MessageType::MsgHeartbeat
                )
            })
            .count()
    }

    fn ready_or_fail(
        &mut self,
        out: &mut Output,
        send_now: Option<&mut dyn FnMut(Vec<Message>)>,
    ) -> Result<(), ReplicaError> {
        if self.failed {
            return Err(ReplicaError::Failed { id: self.cfg.id });
        }
        let released = out.messages.len();
        let result = self.ready_cycle(out, send_now);
        if result.is_err() {
            // A failed cycle releases nothing it held back for its sync
            // (review 14: the appends of a term that never became durable).
            out.messages.truncate(released);
            self.fail_everything(out);
        }
        result
    }

    fn ready_cycle(
        &mut self,
        out: &mut Output,
        send_now: Option<&mut dyn FnMut(Vec<Message>)>,
    ) -> Result<(), ReplicaError> {
        let id = self.cfg.id;
        let storage = |source| ReplicaError::Storage { id, source };
        let first_held = out.messages.len();
        self.restore_dropped_in_place()?;
        self.apply_backlog()?;
        let commit_before = self.raw.raft.raft_log.committed;
        debug_assert!(self.applied_index <= commit_before);
        debug_assert_eq!(self.raft_applied(), self.raw.raft.raft_log.applied);
        self.flush_proposals();
        if self.raw.has_ready() {
            let mut rd = self.raw.ready();
            let limit = self.cfg.message_bytes_max;
            // raft-rs fills `messages` for a leader only (a candidate's vote
            // requests and every follower's answer wait for the sync, in
            // `persisted_messages`).
            let mut messages = split_appends(rd.take_messages(), limit);
            if let Some(send) = send_now {
                let early = self.early_prefix(&rd, &messages);
                if early > 0 {
                    let rest = messages.split_off(early);
                    send(std::mem::replace(&mut messages, rest));
                }
            }
            out.messages.append(&mut messages);
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                self.raw
                    .mut_store()
                    .apply_snapshot(&snap)
                    .map_err(storage)?;
                self.install_snapshot(&snap)?;
            }
            self.apply_entries(rd.take_committed_entries())?;
            if let Some(last) = rd.entries().last().map(|e| e.index) {
                self.raw.mut_store().append(rd.entries()).map_err(storage)?;
                // Appending truncates a conflicting tail: the store ends where the
                // appended entries end.
                debug_assert_eq!(raft::Storage::last_index(self.raw.store()).ok(), Some(last));
            }
            if let Some(hs) = rd.hs() {
                self.raw.mut_store().set_hard_state(hs).map_err(storage)?;
            }
            // The durability point of this cycle: every entry proposed since the last
            // cycle, the vote and the term become durable together (group commit).
            // A cycle that wrote none of them (raft-rs's `must_sync`: at most the
            // commit index moved) has nothing to make durable before its messages
            // go: its acknowledgements name entries synced in earlier cycles, and
            // a lost commit index is relearned from the leader (etcd's `MustSync`).
            // Its hard state is written now and made durable by the next sync.
            if rd.must_sync() {
                let written = self.raw.store().hard_state().commit;
                self.raw.mut_store().sync().map_err(storage)?;
                self.commit_synced = self.commit_synced.max(written);
                if let Some(index) = self.retain_after_sync.take() {
                    self.retain_snapshot_files(index);
                }
            }
            out.messages.extend(rd.take_persisted_messages());
            for rs in rd.take_read_states() {
                self.read_index_ready(rs.index, &rs.request_ctx);
            }
            // What raft counts applied: everything handed over, or, while a
            // snapshot is restored off the thread, the snapshot alone (the
            // entries after it wait for the restore).
            let mut light = self.raw.advance_append(rd);
            self.raw.advance_apply_to(self.raft_applied());
            if let Some(commit) = light.commit_index() {
                // Not synced here: a lost commit index is relearned from the leader.
                let mut hs = self.raw.store().hard_state().clone();
                hs.commit = commit;
                self.raw.mut_store().set_hard_state(&hs).map_err(storage)?;
            }
            out.messages
                .extend(split_appends(light.take_messages(), limit));
            self.apply_entries(light.take_committed_entries())?;
            self.raw.advance_apply_to(self.raft_applied());
            debug_assert_eq!(self.raft_applied(), self.raw.raft.raft_log.applied);
        }
        debug_assert!(
            self.raw.raft.raft_log.committed >= commit_before,
            "the commit index moved back"
        );
        debug_assert!(self.applied_index <= self.raw.raft.raft_log.committed);
        self.serve_reads();
        self.notice_role_change();
        self.step_held_timeout_now();
        self.notice_transfer_end();
        self.hand_over_while_restoring();
        // A hand-over started just now is announced with this cycle's output.
        self.notice_transfer_end();
        if !self.outbox.is_empty() {
            let limit = self.cfg.message_bytes_max;
            out.messages
                .extend(split_appends(std::mem::take(&mut self.outbox), limit));
        }
        // After the last `notice_transfer_end`: a transfer started in this
        // cycle is announced, and its number known.
        self.stamp_timeouts(&mut out.messages[first_held..]);
        self.maybe_snapshot()?;
        out.jobs.append(&mut self.jobs);
        out.restores.append(&mut self.restores);
        out.completions.append(&mut self.completions);
        Ok(())
    }

    /// The index raft counts applied: the applied index, or the snapshot
    /// being restored off the thread.
    fn raft_applied(&self) -> u64 {
        self.restoring
            .as_ref()
            .map_or(self.applied_index, |r| r.index)
    }

    fn fail_everything(&mut self, out: &mut Output) {
        self.failed = true;
        let stopped = RequestError::Stopped;
        self.fail_in_flight(&stopped);
        let queued = std::mem::take(&mut self.batch)
            .into_iter()
            .map(|(id, _)| id);
        fail_ids(queued, &stopped, &mut self.completions);
        fail_ids(
            std::mem::take(&mut self.registrations)
                .into_iter()
                .map(|(id, _)| id),
            &stopped,
            &mut self.completions,
        );
        fail_ids(
            std::mem::take(&mut self.digest_marks),
            &stopped,
            &mut self.completions,
        );
        self.fail_unconfirmed_reads(&stopped);
        let confirmed = std::mem::take(&mut self.reads_awaiting_apply)
            .into_values()
            .flat_map(|b| b.reads)
            .map(|(id, _)| id);
        fail_ids(confirmed, &stopped, &mut self.completions);
        out.completions.append(&mut self.completions);
    }

    /// Fails every proposal in flight with `error`.
    fn fail_in_flight(&mut self, error: &RequestError) {
        for (_, f) in std::mem::take(&mut self.in_flight) {
            fail_kind(f.kind, error, &mut self.completions);
        }
    }

    /// Fails every read a quorum has not yet confirmed (queued, or awaiting its
    /// read index) with `error`.
    fn fail_unconfirmed_reads(&mut self, error: &RequestError) {
        let reads = std::mem::take(&mut self.reads_queued).into_iter().chain(
            std::mem::take(&mut self.reads_awaiting_index)
                .into_values()
                .flat_map(|b| b.reads),
        );
        fail_ids(reads.map(|(id, _)| id), error, &mut self.completions);
    }

    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), ReplicaError> {
        // raft-rs hands over only snapshots beyond what this replica committed.
        debug_assert!(snap.get_metadata().index > self.raft_applied());
        // A restore in flight is superseded, and the entries waiting for it
        // are all covered by this snapshot (they were committed, and raft
        // installs only snapshots past its commit index).
        if let Some(old) = self.restoring.take() {
            debug_assert!(old.index < snap.get_metadata().index);
        }
        debug_assert!(self.apply_backlog_to < snap.get_metadata().index);
        self.apply_backlog_to = 0;
        self.backlog_joined = (0, 0);
        // Files older than the installed snapshot are of no use any more (a
        // replica that only ever installs would otherwise keep them all), but
        // only once the store durably names the new one: a crash before this
        // cycle's sync reopens on the old snapshot, whose file must be there.
        self.retain_after_sync = Some(snap.get_metadata().index);
        if self.start_restore(snap)? {
            return Ok(());
        }
        let files = self.raw.store().snapshot_files();
        Self::restore_payload(
            self.cfg.id,
            self.cfg.group,
            files.as_deref(),
            snap,
            &mut self.machine,
            &mut self.sessions,
            &mut self.members,
            (self.cfg.sessions_max, self.cfg.session_responses_max),
        )?;
        self.finish_install(snap.get_metadata().index);
        Ok(())
    }

    /// The machine and sessions hold the snapshot at `index`: answers the
    /// proposals it covers and makes it the applied index.
    fn finish_install(&mut self, index: u64) {
        // Our proposals at or below the snapshot were either applied inside it or
        // replaced by another leader's entries. A client command that was applied
        // left its response in the restored session table (keyed by its session and
        // sequence, so it is the answer whoever proposed it): answer with it. For
        // anything else the outcome is unknown here: `TimedOut` says it may have
        // applied and that a retry with the same sequence is safe.
        let covered: Vec<u64> = self.in_flight.range(..=index).map(|(&i, _)| i).collect();
        for i in covered {
            let Some(f) = self.in_flight.remove(&i) else {
                continue;
            };
            match f.kind {
                InFlightKind::Batch(requests) => {
                    for b in requests {
                        let cached =
                            self.sessions
                                .cached_response(b.client_id, b.sequence, &b.owner);
                        let result = match cached {
                            Some(response) => Ok(Reply::Applied(response.clone())),
                            None => Err(RequestError::TimedOut),
                        };
                        self.completions.push(Completion { id: b.id, result });
                    }
                }
                kind => fail_kind(kind, &RequestError::TimedOut, &mut self.completions),
            }
        }
        debug_assert!(self.in_flight.range(..=index).next().is_none());
        self.applied_index = index;
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), ReplicaError> {
        if self.restoring.is_some() || self.apply_backlog_to > self.applied_index {
            // Applied from the store once the snapshot before them is
            // restored, after those already waiting, a bounded step per cycle.
            if let Some(last) = entries.last() {
                self.apply_backlog_to = self.apply_backlog_to.max(last.index);
            }
            if self.restoring.is_none() {
                // As raft-rs sizes entries against `message_bytes_max`.
                let bytes: u64 = entries
                    .iter()
                    .map(|e| u64::from(protobuf2::Message::compute_size(e)))
                    .sum();
                let (n, b) = self.backlog_joined;
                self.backlog_joined = (
                    n.saturating_add(entries.len() as u64),
                    b.saturating_add(bytes),
                );
            }
            return Ok(());
        }
        self.apply_committed(entries)
    }

    /// Applies committed entries that waited for a restore: at most
    /// [`APPLY_BACKLOG_ENTRIES`] entries or `message_bytes_max` bytes (and at
    /// least one entry) per call, plus those that joined the backlog since
    /// the last call, read back from the store: no cycle applies more than a
    /// Ready would hand over on top of one step, and the backlog shrinks by a
    /// step per cycle even while entries keep committing.
    fn apply_backlog(&mut self) -> Result<(), ReplicaError> {
        // Nor once a newer snapshot was stepped: raft already follows its
        // membership, and its install replaces the backlog (review 2, R2-1).
        if self.restoring.is_some()
            || self.apply_backlog_to <= self.applied_index
            || self.raw.snap().is_some()
        {
            return Ok(());
        }
        let id = self.cfg.id;
        let (joined, joined_bytes) = std::mem::take(&mut self.backlog_joined);
        let low = self.applied_index + 1;
        let high = (self.apply_backlog_to + 1)
            .min(low.saturating_add(APPLY_BACKLOG_ENTRIES.saturating_add(joined)));
        let entries = raft::Storage::entries(
            self.raw.store(),
            low,
            high,
            Some(self.cfg.message_bytes_max.saturating_add(joined_bytes)),
            raft::GetEntriesContext::empty(false),
        )
        .map_err(|source| ReplicaError::Raft { id, source })?;
        self.apply_committed(entries)?;
        self.raw.advance_apply_to(self.applied_index);
        Ok(())
    }

    /// Hands leadership over at once when this replica won an election while
    /// restoring a snapshot: it could commit but apply nothing, and so answer
    /// nothing, until the restore is done (a transfer to it is refused
    /// earlier, `StepRefusal::TimeoutNowWhileRestoring`).
    ///
    /// The target: a voter that answered it in this term (the votes it was
    /// just granted, included), then one heard from lately in an earlier
    /// term, then the furthest along, then one in a preferred datacenter (so
    /// rebalancing need not move leadership a second time), then the lowest
    /// id. Right after the election raft knows no follower's progress (it
    /// resets `matched` and `recent_active`), but this replica's own record
    /// of who answered it (`heard_at`) tells a live voter from one that is
    /// down, which would cost an election timeout. An answer of an earlier
    /// term within the window (a vote granted to a campaign that failed, with
    /// a heartbeat close to the election timeout) is weaker: that voter may
    /// have gone down since.
    fn hand_over_while_restoring(&mut self) {
        if self.restoring.is_none() || !self.is_leader() || self.raw.raft.lead_transferee.is_some()
        {
            return;
        }
        let me = self.cfg.id;
        let term = self.raw.raft.term;
        let prs = self.raw.raft.prs();
        let next = prs
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|&id| id != me && !self.declined_just_now(id))
            .max_by_key(|&id| {
                let matched = prs.get(id).map_or(0, |p| p.matched);
                let heard = self.heard_recently(id);
                (
                    heard.is_some_and(|h| h.term == term),
                    heard.is_some(),
                    matched,
                    self.is_preferred(id),
                    std::cmp::Reverse(id),
                )
            });
        if let Some(next) = next {
            tracing::info!(
                replica = me,
                to = next,
                "leading while restoring a snapshot: handing leadership over"
            );
            self.raw.transfer_leader(next);
        }
    }

    fn apply_committed(&mut self, entries: Vec<Entry>) -> Result<(), ReplicaError> {
        for entry in entries {
            let index = entry.index;
            debug_assert_eq!(
                index,
                self.applied_index + 1,
                "committed entries apply consecutively"
            );
            if matches!(
                entry.get_entry_type(),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2
            ) {
                // Before its proposal is taken from `in_flight`: a failed sync
                // fails the replica, and `fail_everything` answers it.
                self.commit_durably(index)?;
            }
            let mine = self.in_flight.remove(&index);
            let mine = match mine {
                Some(f) if f.term == entry.term => Some(f),
                Some(f) => {
                    // Another leader's entry replaced ours at this index.
                    fail_kind(f.kind, &RequestError::Dropped, &mut self.completions);
                    None
                }
                None => None,
            };
            match entry.get_entry_type() {
                EntryType::EntryNormal => self.apply_normal(index, &entry.data, mine),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(&entry, mine)?
                }
            }
            // Only once applied: a change that stops the replica was not.
            self.applied_index = index;
        }
        Ok(())
    }

    fn apply_normal(&mut self, index: u64, data: &Bytes, mine: Option<InFlight>) {
        if data.is_empty() {
            // The empty entry a new leader appends: nothing to apply.
            if let Some(f) = mine {
                fail_kind(f.kind, &RequestError::Dropped, &mut self.completions);
            }
            return;
        }
        // A batch in protobuf's own encoding, the entry of every command, is
        // read in place: commands are slices of the entry. Anything else is
        // decoded by protobuf, which reads that batch alike.
        let mut read = std::mem::take(&mut self.batch_read);
        if wire::canonical_batch(data, &mut read) {
            let requests = read.iter().map(|r| r.view(data));
            self.apply_batch(index, requests, mine);
            self.keep_batch_read(read);
            return;
        }
        self.keep_batch_read(read);
        let payload: EntryPayload = match wire::decode_shared(data, "log entry payload") {
            Ok(p) => p,
            Err(e) => {
                // Committed bytes every replica sees alike: skip them on all replicas.
                tracing::error!(
                    replica = self.cfg.id,
                    index,
                    "skipping undecodable committed entry: {e}"
                );
                if let Some(f) = mine {
                    fail_kind(f.kind, &RequestError::Dropped, &mut self.completions);
                }
                return;
            }
        };
        match payload.kind {
            Some(entry_payload::Kind::Batch(batch)) => {
                self.apply_batch(index, batch.requests.iter().map(RequestView::from), mine);
            }
            Some(entry_payload::Kind::RegisterSession(r)) => {
                let client = self.sessions.register(index, r.owner);
                if let Some(InFlight {
                    kind: InFlightKind::Register(id),
                    ..
                }) = mine
                {
                    self.completions.push(Completion {
                        id,
                        result: Ok(Reply::SessionRegistered(client)),
                    });
                }
            }
            Some(entry_payload::Kind::StateDigestMarker(_)) => {
                let digest = self.state_digest(index);
                if let Some(d) = digest {
                    if self.state_digests.len() == STATE_DIGESTS_KEPT {
                        self.state_digests.pop_front();
                    }
                    debug_assert!(self
                        .state_digests
                        .back()
                        .is_none_or(|last| last.index < index));
                    self.state_digests.push_back(d);
                }
                debug_assert!(self.state_digests.len() <= STATE_DIGESTS_KEPT);
                if let Some(f) = mine {
                    // Commits are not broadcast (`skip_bcast_commit`): an
                    // operator comparing digests should not wait for the next
                    // heartbeat, so the leader that proposed the marker sends
                    // one now, carrying its commit (as TiKV broadcasts the
                    // commit of an urgent admin proposal). A no-op on a replica
                    // that no longer leads; it leaves with the next cycle,
                    // which `has_ready` asks for.
                    self.raw.ping();
                    match (f.kind, digest) {
                        (InFlightKind::Digest(id), Some(d)) => self.completions.push(Completion {
                            id,
                            result: Ok(Reply::StateDigest(d)),
                        }),
                        (InFlightKind::Digest(id), None) => self.completions.push(Completion {
                            id,
                            result: Err(RequestError::StateCaptureFailed { index }),
                        }),
                        (kind, _) => {
                            debug_assert!(
                                false,
                                "entry {index} does not match its in-flight proposal"
                            );
                            fail_kind(kind, &RequestError::Dropped, &mut self.completions);
                        }
                    }
                }
            }
            // An empty oneof: a kind of a later build (fields are only added),
            // or none. Applied as a no-op on every replica alike.
            None => {
                if let Some(f) = mine {
                    fail_kind(f.kind, &RequestError::Dropped, &mut self.completions);
                }
            }
        }
    }

    /// Keeps `read`'s room for the next batch entry, but not the room of an
    /// outsized one (an entry of empty requests holds one per 2 bytes; review
    /// 10 LOW-1).
    fn keep_batch_read(&mut self, mut read: Vec<RequestAt>) {
        read.clear();
        read.shrink_to(BATCH_READ_KEPT);
        self.batch_read = read;
    }

    /// Applies the client commands of a batch entry, each at most once, and
    /// completes those this replica proposed.
    fn apply_batch<'r>(
        &mut self,
        index: u64,
        requests: impl ExactSizeIterator<Item = RequestView<'r>>,
        mine: Option<InFlight>,
    ) {
        let ids = match mine.map(|f| f.kind) {
            Some(InFlightKind::Batch(ids)) if ids.len() == requests.len() => ids,
            Some(kind) => {
                // Same index and term as our proposal, so the same entry:
                // a mismatch is a bug, never an input.
                debug_assert!(false, "entry {index} does not match its in-flight proposal");
                fail_kind(kind, &RequestError::Dropped, &mut self.completions);
                Vec::new()
            }
            None => Vec::new(),
        };
        for (k, request) in requests.enumerate() {
            let result = self.sessions.apply(index, request, &mut self.machine);
            if let Some(b) = ids.get(k) {
                debug_assert_eq!(
                    (b.client_id, b.sequence),
                    (request.client_id, request.sequence)
                );
                self.completions.push(Completion {
                    id: b.id,
                    result: result.map(|r| Reply::Applied(r.clone())),
                });
            }
        }
    }

    /// Makes the store's commit index cover `index` durably, before the
    /// membership change at `index` takes effect. raft-rs takes a configuration
    /// when it is applied, and a restarted replica rebuilds it by applying its
    /// log up to its durable commit index; the commit index is otherwise synced
    /// only with appends and votes (a lost one is relearned from the leader).
    /// Without this, a replica that applied a removal could restart holding the
    /// configuration before it, and need a majority of a voter set that
    /// includes the replica the operator removed and shut down: with one more
    /// voter lost, no majority of it remains, and the fleet, live under the
    /// configuration every running replica had applied, elects no leader
    /// (swarm seed 100529). A sync per membership change per replica.
    fn commit_durably(&mut self, index: u64) -> Result<(), ReplicaError> {
        if self.commit_synced >= index {
            return Ok(());
        }
        let id = self.cfg.id;
        let storage = |source| ReplicaError::Storage { id, source };
        let store = self.raw.mut_store();
        let mut hs = store.hard_state().clone();
        // The entry is committed, and raft-rs hands over only entries it
        // persisted: it is in the store.
        hs.commit = hs.commit.max(index);
        store.set_hard_state(&hs).map_err(storage)?;
        store.sync().map_err(storage)?;
        self.commit_synced = hs.commit;
        Ok(())
    }

    /// Applies a committed membership change. A change or context that does not
    /// decode is a corrupt log: the replica stops rather than apply a membership
    /// (and datacenter labels) that could differ from the other replicas'.
    fn apply_conf_change(
        &mut self,
        entry: &Entry,
        mine: Option<InFlight>,
    ) -> Result<(), ReplicaError> {
        let id = self.cfg.id;
        let index = entry.index;
        let corrupt = |source: CorruptEntry| ReplicaError::CorruptEntry { id, index, source };
        let undecodable = |e: protobuf2::ProtobufError| {
            corrupt(CorruptEntry::ConfChange(wire::DecodeError {
                what: "conf change",
                source: e.into(),
            }))
        };
        let cc = if entry.get_entry_type() == EntryType::EntryConfChange {
            raft::prelude::ConfChange::parse_from_bytes(&entry.data)
                .map(raft_proto::ConfChangeI::into_v2)
                .map_err(undecodable)?
        } else {
            ConfChangeV2::parse_from_bytes(&entry.data).map_err(undecodable)?
        };
        let labels = self
            .conf_change_labels(&cc, &entry.context)
            .map_err(corrupt)?;
        let result = match self.raw.apply_conf_change(&cc) {
            Ok(cs) => {
                self.update_members(&cc, labels);
                let me = self.cfg.id;
                let removed = !cs.voters.contains(&me) && !cs.learners.contains(&me);
                if removed && self.is_leader() {
                    // Removed while leading (leadership moved here after the
                    // removal was proposed): hand over to the most caught-up voter.
                    let prs = self.raw.raft.prs();
                    let next = cs
                        .voters
                        .iter()
                        .copied()
                        .max_by_key(|id| prs.get(*id).map_or(0, |p| p.matched));
                    if let Some(next) = next {
                        self.raw.transfer_leader(next);
                        if self.raw.raft.lead_transferee == Some(next) {
                            self.announce_transfer(next);
                        }
                    }
                    // raft-rs leaves a removed leader leading (its
                    // `post_conf_change`: "TODO(tbg): step down ... It is
                    // untested"), and the next thing that touches its own
                    // progress (an append response stepped, or this cycle's
                    // `advance` persisting a write flushed with it) unwraps
                    // it: a panic. The simulator's membership swarm found it
                    // (seed 2476); review R4 the second path. Step down now,
                    // in this term; the messages raft queued as leader (the
                    // transfer's MsgTimeoutNow) leave with this cycle's output,
                    // so raft never holds a follower's messages across
                    // `advance`. In-flight proposals fail as on any loss of
                    // leadership (`notice_role_change`).
                    self.outbox.append(&mut self.raw.raft.msgs);
                    let term = self.raw.raft.term;
                    self.raw.raft.become_follower(term, raft::INVALID_ID);
                }
                Ok(Reply::MembershipChanged(cs))
            }
            // raft refuses the same committed change alike on every replica.
            Err(e) => Err(RequestError::ConfChangeRejected(ConfChangeRejection::Raft(
                e.into(),
            ))),
        };
        if let Err(e) = &result {
            tracing::warn!(replica = id, index, "membership change not applied: {e}");
        }
        if let Some(InFlight {
            kind: InFlightKind::Membership(id),
            ..
        }) = mine
        {
            self.completions.push(Completion { id, result });
        }
        Ok(())
    }

    /// The datacenter labels a committed change's context gives its new members.
    /// Every learner added must be labelled (`change_membership` always does).
    fn conf_change_labels(
        &self,
        cc: &ConfChangeV2,
        context: &[u8],
    ) -> Result<BTreeMap<ReplicaId, String>, CorruptEntry> {
        let labels: BTreeMap<ReplicaId, String> =
            wire::decode::<ConfChangeContext>(context, "conf change context")
                .map_err(CorruptEntry::ConfChangeContext)?
                .members
                .into_iter()
                .map(|m| (m.id, m.datacenter))
                .collect();
        for change in cc.get_changes() {
            let member = change.node_id;
            if change.get_change_type() == ConfChangeType::AddLearnerNode
                && !labels.contains_key(&member)
                && !self.members.contains_key(&member)
            {
                return Err(CorruptEntry::MissingLabel { member });
            }
        }
        Ok(labels)
    }

    fn update_members(&mut self, cc: &ConfChangeV2, labels: BTreeMap<ReplicaId, String>) {
        for change in cc.get_changes() {
            let ConfChangeSingle { node_id, .. } = change;
            match change.get_change_type() {
                ConfChangeType::RemoveNode => {
                    self.members.remove(node_id);
                }
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    if let Some(dc) = labels.get(node_id) {
                        self.members.insert(*node_id, dc.clone());
                    }
                    // raft-rs refuses a snapshot whose membership does not name the
                    // receiver, so a new member needs a snapshot taken after its
                    // addition: take one at the end of this cycle.
                    self.snapshot_wanted = true;
                    // A leader's build in flight could not serve it: stop it
                    // rather than make the member wait for it and then for
                    // the next (review of the streamed snapshots, M4).
                    // At most one cancel in a row, so adds more frequent than
                    // a build still let the log be compacted (review 4).
                    if self.is_leader() && !self.build_cancelled_last {
                        if let Some(build) = self.building.take_if(|b| !b.names(*node_id)) {
                            build.cancel();
                            self.build_cancelled_last = true;
                            tracing::info!(
                                replica = self.cfg.id,
                                member = node_id,
                                "member added: the snapshot build in flight, which \
                                 does not name it, is cancelled for a newer one"
                            );
                        }
                    }
                }
            }
        }
    }

    fn read_index_ready(&mut self, index: u64, context: &[u8]) {
        let Ok(bytes) = <[u8; READ_CONTEXT_BYTES]>::try_from(context) else {
            return;
        };
        let context = u64::from_be_bytes(bytes);
        if let Some(batch) = self.reads_awaiting_index.remove(&context) {
            self.reads_awaiting_apply.insert((index, context), batch);
        }
    }

    fn serve_reads(&mut self) {
        // The machine's: while a snapshot is restored off the thread, the
        // machine before it answers only reads at or below its own index.
        let applied = self.applied_index;
        while let Some(entry) = self.reads_awaiting_apply.first_entry() {
            if entry.key().0 > applied {
                break;
            }
            for (id, query) in entry.remove().reads {
                let answer = self.machine.query(&query);
                self.completions.push(Completion {
                    id,
                    result: Ok(Reply::Read(answer)),
                });
            }
        }
    }

    fn notice_role_change(&mut self) {
        let is_leader = self.raw.raft.state == StateRole::Leader;
        if self.was_leader && !is_leader {
            // Proposals in flight can no longer be committed by this replica; a new
            // leader may still commit them. Say so now rather than at the timeout,
            // so clients fail over at election speed.
            self.fail_in_flight(&RequestError::LeaderChanged);
            // Reads not yet confirmed by a quorum can no longer be confirmed here.
            let error = RequestError::NotLeader {
                leader: self.leader(),
            };
            self.fail_unconfirmed_reads(&error);
        }
        self.was_leader = is_leader;
    }

    fn expire_requests(&mut self) {
        let now = self.ticks;
        let expired: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline_tick <= now)
            .map(|(&i, _)| i)
            .collect();
        for i in expired {
            if let Some(f) = self.in_flight.remove(&i) {
                fail_kind(f.kind, &RequestError::TimedOut, &mut self.completions);
            }
        }
        let timed_out = RequestError::TimedOut;
        let contexts: Vec<u64> = self
            .reads_awaiting_index
            .iter()
            .filter(|(_, b)| b.deadline_tick <= now)
            .map(|(&c, _)| c)
            .collect();
        for c in contexts {
            if let Some(b) = self.reads_awaiting_index.remove(&c) {
                fail_ids(
                    b.reads.into_iter().map(|(id, _)| id),
                    &timed_out,
                    &mut self.completions,
                );
            }
        }
        if !self.reads_queued.is_empty()
            && self.reads_queued_since_tick + self.cfg.request_ticks_max <= now
        {
            fail_ids(
                std::mem::take(&mut self.reads_queued)
                    .into_iter()
                    .map(|(id, _)| id),
                &timed_out,
                &mut self.completions,
            );
        }
    }

    fn maybe_snapshot(&mut self) -> Result<(), ReplicaError> {
        let id = self.cfg.id;
        let applied = self.raw.raft.raft_log.applied;
        let first = self
            .raw
            .store()
            .first_index()
            .map_err(|source| ReplicaError::Raft { id, source })?;
        let snap_index = self.raw.store().latest_snapshot().get_metadata().index;
        let due = applied - snap_index.min(applied) >= self.cfg.snapshot_entries_min
            && applied >= self.snapshot_retry_after;
        self.forget_abandoned_build();
        if self.restoring.is_some() {
            // The machine is the one before the snapshot being restored.
            return Ok(());
        }
        // At the same index when nothing was applied since: saved in place.
        let rebuild = self.snapshot_rebuild && self.raw.store().snapshot_files().is_some();
        if self.building.is_some()
            || applied < first.saturating_sub(1)
            || (applied <= snap_index && !rebuild)
            || !(due || self.snapshot_wanted || rebuild)
        {
            return Ok(());
        }
        self.snapshot_wanted = false;
        self.snapshot_rebuild = false;
        let term = self
            .raw
            .raft
            .raft_log
            .term(applied)
            .map_err(|source| ReplicaError::Raft { id, source })?;
        let captured = match self.start_snapshot_build(applied, term, rebuild) {
            Ok(true) => return Ok(()),
            Ok(false) => self
                .machine
                .snapshot()
                .map_err(SnapshotError::from)
                .and_then(|state| {
                    snapshot_payload(&self.sessions, &self.members, state)
                        .map_err(SnapshotError::from)
                }),
            Err(error) => Err(error),
        };
        let data = match captured {
            Ok(data) => data,
            Err(error) => {
                // Every replica applies the same state, so every replica fails here
                // alike: stopping would stop the fleet. Run on, uncompacted, and try
                // again once another `snapshot_entries_min` entries are applied.
                self.snapshots_failed += 1;
                self.snapshot_retry_after = applied.saturating_add(self.cfg.snapshot_entries_min);
                tracing::error!(
                    replica = id,
                    index = applied,
                    failures = self.snapshots_failed,
                    %error,
                    "cannot take a snapshot; the log is not compacted until one succeeds"
                );
                return Ok(());
            }
        };
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = applied;
        meta.term = term;
        meta.set_conf_state(self.raw.raft.prs().conf().to_conf_state());
        let compact_to = (applied + 1)
            .saturating_sub(self.cfg.compaction_entries_retained)
            .max(first);
        let store = self.raw.mut_store();
        store
            .save_snapshot(&snap)
            .and_then(|()| store.compact(compact_to))
            .and_then(|()| store.sync())
            .map_err(|source| ReplicaError::Storage { id, source })?;
        self.snapshots_taken += 1;
        tracing::debug!(
            replica = id,
            index = applied,
            compact_to,
            "took a snapshot and compacted the log"
        );
        Ok(())
    }

    fn in_preferred_datacenter(&self) -> bool {
        self.is_preferred(self.cfg.id)
    }

    /// Whether `id` is in a preferred datacenter (every member is when none
    /// is preferred).
    fn is_preferred(&self, id: ReplicaId) -> bool {
        let preferred = &self.cfg.preferred_leader_datacenters;
        preferred.is_empty()
            || self
                .members
                .get(&id)
                .is_some_and(|dc| preferred.contains(dc))
    }

    /// A replica this leader is transferring to declined (it restores a
    /// snapshot): the transfer aborts, so proposals are taken again at once,
    /// and the replica is left out of rebalancing for one rebalance period,
    /// doubling with each decline in a row up to [`DECLINED_PERIODS_MAX`]
    /// (an operator's transfer to it is still taken).
    fn transfer_declined(&mut self, m: &Message) -> Result<(), StepRefusal> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader
            || m.term != raft.term
            || raft.lead_transferee != Some(m.from)
            || !self.transfer_number.is_some_and(|t| {
                t.to == m.from
                    && t.term == m.term
                    && (t.number == m.index || (m.index == 0 && t.first))
            })
        {
            return Err(StepRefusal::StaleTransferDecline {
                from: m.from,
                term: m.term,
                number: m.index,
            });
        }
        self.raw.raft.abort_leader_transfer();
        self.forget_old_back_offs();
        // Ended by the decline, not failed: not counted by the watch. The
        // followers forget the announced transfer.
        self.transfer_watch = None;
        self.announce_transfer(TRANSFER_ENDED);
        let period = self.cfg.leader_rebalance_ticks.max(1);
        let now = self.ticks;
        let b = self.transfer_back_off.entry(m.from).or_default();
        let until = doubled(&mut b.declines, b.rebalance_until, now, period);
        b.rebalance_until = b.rebalance_until.max(until);
        b.refused_at = Some(now);
        tracing::info!(
            replica = self.cfg.id,
            to = m.from,
            until_tick = until,
            "leadership transfer declined (the replica restores a snapshot); aborted"
        );
        Ok(())
    }

    /// This replica's leader announces a transfer to the replica whose id
    /// `to` holds ([`TRANSFER_ANNOUNCED`]). Taken only from the leader of the
    /// current term; never stepped into raft (a follower would forward it).
    fn transfer_announced(&mut self, m: &Message, to: &[u8]) -> Result<(), StepRefusal> {
        let raft = &self.raw.raft;
        if m.term != raft.term || raft.leader_id == raft::INVALID_ID || m.from != raft.leader_id {
            return Err(StepRefusal::AnnouncementNotFromLeader {
                from: m.from,
                leader: raft.leader_id,
            });
        }
        let to = <[u8; 8]>::try_from(to)
            .map(u64::from_be_bytes)
            .map_err(|_| StepRefusal::AnnouncementMalformed { bytes: to.len() })?;
        // Number 0 is an announcement of a build that numbered none
        // (before 65d479d): only its exact repeat is ignored (review 8).
        if self.transfer_announced.is_some_and(|a| {
            (a.leader, a.term) == (m.from, m.term)
                && if m.index == 0 {
                    a.number == 0 && a.to == to
                } else {
                    m.index <= a.number
                }
        }) {
            // Said again (the window runs from the first time), or older
            // than the last one: a late or replayed announcement revives no
            // transfer and ends none.
            return Ok(());
        }
        self.transfer_announced = Some(TransferAnnounced {
            leader: m.from,
            term: m.term,
            to,
            number: m.index,
            at: self.ticks,
        });
        if to != self.cfg.id {
            // The transfer to this replica, if it was one, ended or was
            // replaced: a held MsgTimeoutNow of it must not campaign later.
            self.held_timeout_now = None;
        }
        self.step_held_forced_vote();
        Ok(())
    }

    /// Whether `m`, a vote request forced by [`raft::CAMPAIGN_TRANSFER`], is
    /// the campaign of a transfer this replica knows of: as leader, the one in
    /// progress; as follower, the one its leader announced within an election
    /// timeout. Either way in the term after this replica's. A forced
    /// pre-vote never is: raft-rs's transfers campaign without one.
    fn campaign_announced(&self, m: &Message) -> bool {
        let raft = &self.raw.raft;
        if m.get_msg_type() != raft::prelude::MessageType::MsgRequestVote
            || m.term != raft.term.saturating_add(1)
        {
            return false;
        }
        if raft.state == StateRole::Leader {
            return raft.lead_transferee == Some(m.from);
        }
        let window = self.cfg.election_ticks as u64;
        self.transfer_announced.is_some_and(|a| {
            a.term == raft.term
                && a.leader == raft.leader_id
                && a.to == m.from
                && self.ticks <= a.at.saturating_add(window)
        })
    }

    /// Keeps `m`, a forced vote request about to be taken as an ordinary one,
    /// in case the announcement of its campaign is still on its way: only a
    /// follower's, of the next term, from a voter other than its leader.
    fn hold_forced_vote(&mut self, m: &Message) {
        let raft = &self.raw.raft;
        if raft.state == StateRole::Follower
            && raft.leader_id != raft::INVALID_ID
            && m.from != raft.leader_id
            && m.get_msg_type() == raft::prelude::MessageType::MsgRequestVote
            && m.term == raft.term.saturating_add(1)
            && raft.prs().conf().voters().contains(m.from)
        {
            let window = self.cfg.election_ticks as u64;
            let now = self.ticks;
            self.held_forced_votes
                .retain(|_, (_, at)| now <= at.saturating_add(window));
            // A vote request carries no entries and no snapshot: a hostile
            // voter's must not pin them (review 8).
            let mut held = m.clone();
            held.entries = Default::default();
            held.snapshot = Default::default();
            self.held_forced_votes.insert(m.from, (held, now));
        }
    }

    /// Steps the held forced vote request with its force if the
    /// announcement just taken is of its campaign, and it came within an
    /// election timeout; drops it otherwise.
    fn step_held_forced_vote(&mut self) {
        let Some(to) = self.transfer_announced.map(|a| a.to) else {
            return;
        };
        let Some((m, at)) = self.held_forced_votes.remove(&to) else {
            return;
        };
        let window = self.cfg.election_ticks as u64;
        if self.ticks > at.saturating_add(window) || !self.campaign_announced(&m) {
            return;
        }
        tracing::debug!(
            replica = self.cfg.id,
            from = m.from,
            term = m.term,
            "a forced vote request that overtook its announcement stepped with its force"
        );
        if let Err(e) = self.raw.step(m) {
            tracing::debug!(replica = self.cfg.id, error = %e, "held vote request refused");
        }
    }

    /// Whether a membership change is committed but not applied here:
    /// raft-rs refuses to campaign then.
    fn membership_change_unapplied(&self) -> bool {
        let log = &self.raw.raft.raft_log;
        if log.committed <= log.applied {
            return false;
        }
        log.slice(
            log.applied + 1,
            log.committed + 1,
            None,
            raft::GetEntriesContext::empty(false),
        )
        .is_ok_and(|entries| {
            entries.iter().any(|e| {
                matches!(
                    e.get_entry_type(),
                    EntryType::EntryConfChange | EntryType::EntryConfChangeV2
                )
            })
        })
    }

    /// Steps the held `MsgTimeoutNow` once no committed membership change
    /// waits: while its leader still leads this term as far as this replica
    /// knows, within an election timeout (the leader's transfer has timed
    /// out after that).
    fn step_held_timeout_now(&mut self) {
        let Some((m, at)) = self.held_timeout_now.take() else {
            return;
        };
        let raft = &self.raw.raft;
        // Half the leader's transfer timeout: a campaign forced later would
        // likely follow the leader's abort, and end in an election.
        let window = (self.cfg.election_ticks as u64 / 2).max(1);
        if self.ticks > at.saturating_add(window)
            || m.term != raft.term
            || m.from != raft.leader_id
            || raft.state != StateRole::Follower
        {
            return;
        }
        if self.restoring_snapshot().is_some() {
            // A restore started meanwhile: declined, as in `step_checked`.
            self.decline_transfer(m.from, m.index);
            return;
        }
        if self.membership_change_unapplied() {
            self.held_timeout_now = Some((m, at));
            return;
        }
        if let Err(e) = self.raw.step(m) {
            tracing::debug!(replica = self.cfg.id, error = %e, "held MsgTimeoutNow refused");
        }
    }

    /// Tells `leader` that this replica declines the transfer to it, as it
    /// restores a snapshot ([`TRANSFER_DECLINED`]): the leader takes
    /// proposals again at once instead of dropping them until its transfer
    /// times out (R2-2). `number` is the `index` of the transfer's
    /// `MsgTimeoutNow`, echoed so that the leader tells this transfer from
    /// another to this replica.
    fn decline_transfer(&mut self, leader: ReplicaId, number: u64) {
        let mut decline = Message::default();
        decline.set_msg_type(raft::prelude::MessageType::MsgTransferLeader);
        decline.to = leader;
        decline.from = self.cfg.id;
        decline.term = self.raw.raft.term;
        decline.index = number;
        decline.context = TRANSFER_DECLINED.to_vec().into();
        self.outbox.push(decline);
    }

    /// Stamps each `MsgTimeoutNow` among `messages` with the number of the
    /// announcement of the transfer it belongs to ([`TRANSFER_DECLINED`]);
    /// one to a replica this leader is no longer transferring to keeps 0, so
    /// a decline of it is refused.
    fn stamp_timeouts(&self, messages: &mut [Message]) {
        for m in messages
            .iter_mut()
            .filter(|m| m.get_msg_type() == raft::prelude::MessageType::MsgTimeoutNow)
        {
            m.index = match self.transfer_number {
                Some(t) if t.to == m.to && t.term == m.term => t.number,
                _ => 0,
            };
        }
    }

    /// Tells every other voter that this leader transfers leadership to
    /// `to`, so that they honour its forced vote requests
    /// ([`TRANSFER_ANNOUNCED`]). Leaves with the cycle's output, beside the
    /// transfer's `MsgTimeoutNow`; a vote request that overtakes it is taken
    /// as an ordinary one, and the transfer may then end in an election.
    fn announce_transfer(&mut self, to: ReplicaId) {
        let (me, term) = (self.cfg.id, self.raw.raft.term);
        let mut context = TRANSFER_ANNOUNCED.to_vec();
        context.extend_from_slice(&to.to_be_bytes());
        let context = bytes::Bytes::from(context);
        self.announcements += 1;
        let number = self.announcements;
        // The per-replica records are of this term (a removed leader's
        // hand-over announces without a `notice_transfer_end` first).
        self.forget_old_back_offs();
        self.transfer_number = (to != TRANSFER_ENDED).then(|| TransferNumber {
            to,
            term,
            number,
            first: !std::mem::replace(
                &mut self.transfer_back_off.entry(to).or_default().announced,
                true,
            ),
        });
        for voter in self.raw.raft.prs().conf().voters().ids().iter() {
            // The transferee too: it records the number, so that a late
            // announcement of an older transfer does not drop the
            // MsgTimeoutNow it holds (review 8).
            if voter == me {
                continue;
            }
            let mut m = Message::default();
            m.set_msg_type(raft::prelude::MessageType::MsgTransferLeader);
            m.from = me;
            m.to = voter;
            m.term = term;
            m.index = number;
            m.context = context.clone();
            self.outbox.push(m);
        }
    }

    /// Forgets the back-offs of an earlier term: they answered an earlier
    /// leadership's transfers (an ask stepped in the turn this replica won
    /// an election met the previous leadership's, review 5).
    fn forget_old_back_offs(&mut self) {
        let term = self.raw.raft.term;
        if self.back_off_term != term {
            self.back_off_term = term;
            self.transfer_back_off.clear();
        }
    }

    /// Watches the transfer in progress, whoever started it (a peer's ask,
    /// rebalancing, a hand-over, the operator): one that ends with this
    /// replica still leading (it timed out, or was replaced) and its target
    /// caught up (so raft-rs had sent it `MsgTimeoutNow`) backs the target
    /// off for an election timeout, doubling up to [`DECLINED_PERIODS_MAX`]:
    /// its asks are refused and rebalancing leaves it out for that long
    /// (review 4: a preferred voter that never campaigned stalled writes for
    /// an election timeout every rebalance period). Called after every tick,
    /// before and after an ask is stepped, after an operator's transfer, and
    /// every Ready cycle.
    fn notice_transfer_end(&mut self) {
        let leading = self.is_leader();
        let now_to = if leading {
            self.raw.raft.lead_transferee
        } else {
            None
        };
        self.forget_old_back_offs();
        if let Some(to) = self.transfer_watch.filter(|&to| now_to != Some(to)) {
            let last_index = self.raw.raft.raft_log.last_index();
            let caught_up = self
                .raw
                .raft
                .prs()
                .get(to)
                .is_some_and(|p| p.matched >= last_index);
            if leading && !caught_up {
                // raft-rs sends `MsgTimeoutNow` only to a transferee that has
                // matched the last index, and takes no proposal while the
                // transfer lasts, so this target was never asked to campaign:
                // it was behind the log, and declined nothing. Rebalancing
                // never picks a voter that lags, so it is not backed off for
                // this; a replica leading while it restores skips it for an
                // election timeout (review of the placement checker, seed
                // 40740: six operator transfers to a partitioned preferred voter had
                // left it out of rebalancing for 32 election timeouts).
                self.transfer_back_off.entry(to).or_default().refused_at = Some(self.ticks);
                tracing::info!(
                    replica = self.cfg.id,
                    to,
                    "a leadership transfer ended before replica {to} caught up; it is not \
                     backed off"
                );
            } else if leading {
                let period = (self.cfg.election_ticks as u64).max(1);
                let now = self.ticks;
                let b = self.transfer_back_off.entry(to).or_default();
                let until = doubled(&mut b.failures, b.failed_until, now, period);
                b.failed_until = until;
                b.rebalance_until = b.rebalance_until.max(until);
                b.refused_at = Some(now);
                tracing::warn!(
                    replica = self.cfg.id,
                    to,
                    until_tick = until,
                    "a leadership transfer ended without replica {to} leading; rebalancing \
                     leaves it out until then"
                );
            }
        }
        if self.transfer_watch != now_to && leading {
            // A new transfer, or the end of one: the followers honour a
            // forced vote only while the leader's transfer lasts (review 5
            // of the announced transfers, MEDIUM-4).
            self.announce_transfer(now_to.unwrap_or(TRANSFER_ENDED));
        }
        self.transfer_watch = now_to;
    }

    /// On a leader, the ticks for which rebalancing still leaves `id` out
    /// because it declined a transfer, or one to it failed, lately; 0 when it
    /// does not (and on any other replica). A voter in a preferred datacenter
    /// gets leadership from a leader outside them no sooner than this.
    pub fn rebalance_back_off_ticks(&self, id: ReplicaId) -> u64 {
        if !self.is_leader() || self.back_off_term != self.raw.raft.term {
            return 0;
        }
        self.transfer_back_off
            .get(&id)
            .map_or(0, |b| b.rebalance_until.saturating_sub(self.ticks))
    }

    /// Whether rebalancing leaves `id` out (it declined, or a transfer to it
    /// failed, lately).
    fn declined_lately(&self, id: ReplicaId) -> bool {
        self.transfer_back_off
            .get(&id)
            .is_some_and(|b| self.ticks < b.rebalance_until)
    }

    /// Whether `id` declined, or a transfer to it failed, within the last
    /// election timeout: a replica leading while it restores skips it for
    /// that long only, never for the rebalancing back-off, which has nothing
    /// to do with how soon it must hand over (review 3, MEDIUM-2).
    fn declined_just_now(&self, id: ReplicaId) -> bool {
        let wait = self.cfg.election_ticks as u64;
        self.transfer_back_off
            .get(&id)
            .and_then(|b| b.refused_at)
            .is_some_and(|at| self.ticks < at.saturating_add(wait))
    }

    fn rebalance_leader(&mut self) {
        if self.raw.raft.state != StateRole::Leader
            || self.in_preferred_datacenter()
            || self.raw.raft.lead_transferee.is_some()
        {
            return;
        }
        let last_index = self.raw.raft.raft_log.last_index();
        let voters = self.raw.raft.prs().conf().voters().ids();
        let target = self.members.iter().find(|(id, dc)| {
            **id != self.cfg.id
                && self.cfg.preferred_leader_datacenters.contains(dc)
                && voters.contains(**id)
                && !self.declined_lately(**id)
                && self
                    .raw
                    .raft
                    .prs()
                    .get(**id)
                    .is_some_and(|p| p.matched == last_index && p.recent_active)
        });
        if let Some((&to, dc)) = target {
            tracing::info!(replica = self.cfg.id, to, datacenter = %dc, "handing leadership to the preferred datacenter");
            self.raw.transfer_leader(to);
        }
    }

    // ---- accessors ----------------------------------------------------------------

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.cfg.id
    }

    /// The group this replica belongs to.
    pub fn group(&self) -> u64 {
        self.cfg.group
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<ReplicaId> {
        let l = self.raw.raft.leader_id;
        (l != raft::INVALID_ID).then_some(l)
    }

    /// True when this replica is the leader.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// True once the replica stopped on a storage failure.
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// A summary of the replica's state.
    pub fn status(&self) -> Status {
        let mut status = Status::unknown(self.cfg.id);
        self.status_into(&mut status);
        status
    }

    /// Writes [`Replica::status`] into `out`, reusing its vectors: once `out`
    /// holds a status of this configuration's size, nothing is allocated. The
    /// runtimes publish a status after every turn, and rebuilding one there
    /// (the configuration's two id lists, the followers, the digests) was the
    /// engine's largest cost in a 1-client profile.
    pub fn status_into(&self, out: &mut Status) {
        let raft = &self.raw.raft;
        let conf = raft.prs().conf();
        out.id = self.cfg.id;
        out.role = raft.state;
        out.leader = self.leader();
        out.term = raft.term;
        out.commit = raft.raft_log.committed;
        out.applied = self.applied_index;
        out.first_index = raft.raft_log.first_index();
        out.last_index = raft.raft_log.last_index();
        // The fleet never enters a joint configuration (one change at a time;
        // `intake` refuses a joint one in a snapshot), so every voter is an
        // incoming one.
        debug_assert!(conf.to_conf_state().voters_outgoing.is_empty());
        let voters = conf.voters().ids();
        same_ids(&mut out.voters, voters.len(), voters.iter(), |id| {
            voters.contains(id)
        });
        let learners = conf.learners();
        same_ids(
            &mut out.learners,
            learners.len(),
            learners.iter().copied(),
            |id| learners.contains(&id),
        );
        self.follower_progress_into(&mut out.followers);
        out.state_digests.clear();
        out.state_digests.extend(self.state_digests.iter().copied());
        out.host = HostHealth::UNKNOWN;
    }

    /// The digest of the replicated state as it stands (see [`StateDigest`]),
    /// labeled with the marker's `index`; `None` (logged) when the state
    /// machine cannot capture its snapshot or it cannot be encoded — then
    /// every replica with the same state fails alike, and no digest is kept.
    fn state_digest(&self, index: u64) -> Option<StateDigest> {
        const LABEL: &[u8] = b"vaultfleet/state-digest/v1";
        let captured = self
            .machine
            .snapshot()
            .map_err(SnapshotError::from)
            .and_then(|state| {
                snapshot_payload(&self.sessions, &self.members, Vec::new())
                    .map(|metadata| (metadata, state))
                    .map_err(SnapshotError::from)
            });
        let (metadata, state) = match captured {
            Ok(parts) => parts,
            Err(error) => {
                tracing::error!(
                    replica = self.cfg.id,
                    index,
                    %error,
                    "cannot compute the state digest at a marker"
                );
                return None;
            }
        };
        // `codec::labeled`'s layout, hashed as it is written (the state can be
        // large: it is not copied into one buffer).
        let fields: [&[u8]; 2] = [&metadata, &state];
        let mut hash = Sha256::new();
        hash.update((LABEL.len() as u64).to_be_bytes());
        hash.update(LABEL);
        hash.update((fields.len() as u64).to_be_bytes());
        for field in fields {
            hash.update((field.len() as u64).to_be_bytes());
            hash.update(field);
        }
        Some(StateDigest {
            index,
            digest: hash.finalize().into(),
        })
    }

    /// Every other member's progress, if this replica leads (ascending id),
    /// written over `followers`.
    fn follower_progress_into(&self, followers: &mut Vec<FollowerProgress>) {
        followers.clear();
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return;
        }
        let last_index = raft.raft_log.last_index();
        followers.extend(raft.prs().iter().filter(|(id, _)| **id != self.cfg.id).map(
            |(id, pr)| FollowerProgress {
                id: *id,
                matched: pr.matched,
                lag: last_index.saturating_sub(pr.matched),
                recent_active: pr.recent_active,
            },
        ));
        followers.sort_unstable_by_key(|f| f.id);
        // The member count is bounded by every path that changes membership.
        debug_assert!(followers.len() <= MEMBERS_MAX);
        followers.truncate(MEMBERS_MAX);
    }

    /// The datacenter label of every member, by id.
    pub fn members(&self) -> &BTreeMap<ReplicaId, String> {
        &self.members
    }

    /// The state machine (read-only).
    pub fn state_machine(&self) -> &S {
        &self.machine
    }

    /// The log store (read-only).
    pub fn store(&self) -> &L {
        self.raw.store()
    }

    /// Snapshots this replica took of its own state.
    pub fn snapshots_taken(&self) -> u64 {
        self.snapshots_taken
    }

    /// How many times the state machine could not capture a snapshot
    /// ([`StateMachine::snapshot`] failed). The replica runs on without compacting
    /// its log; a rising count is an alarm: the state has outgrown one snapshot.
    pub fn snapshots_failed(&self) -> u64 {
        self.snapshots_failed
    }

    /// Peer messages [`Replica::step`] refused since the replica started (for any
    /// [`StepRefusal`]). Honest peers send none that are refused, except after
    /// this replica failed or across a change of membership: a rising count is an
    /// alarm that a peer misbehaves.
    pub fn messages_refused(&self) -> u64 {
        self.messages_refused
    }

    /// Number of client sessions held.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Ticks since the replica started.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }
}

/// Makes `out` the ascending list of a set of `len` ids: left as it is when it
/// already holds exactly them (`out` has no repeats, so `len` members that are
/// all in the set are the set), rebuilt from `ids` otherwise.
fn same_ids(
    out: &mut Vec<u64>,
    len: usize,
    ids: impl Iterator<Item = u64>,
    contains: impl Fn(u64) -> bool,
) {
    if out.len() == len && out.windows(2).all(|w| w[0] < w[1]) && out.iter().all(|&id| contains(id))
    {
        return;
    }
    out.clear();
    out.extend(ids);
    out.sort_unstable();
}

/// Decodes a raft message received from an authenticated peer (protobuf 2; see
/// `docs/architecture.md` on why only authenticated bytes may reach this decoder).
pub fn decode_message(bytes: &[u8]) -> Result<Message, wire::DecodeError> {
    // protobuf 2 allocates ~100 bytes per entry, and an entry can be 2 bytes on
    // the wire: count them first, without allocating, so an authenticated but
    // hostile peer cannot turn a 2 MiB frame into 100 MiB (issue 14's review).
    if let Some(entries) = count_entries(bytes) {
        if entries > MESSAGE_ENTRIES_MAX {
            return Err(wire::DecodeError {
                what: "raft message",
                source: wire::ProtobufError::TooManyEntries {
                    entries,
                    max: MESSAGE_ENTRIES_MAX,
                },
            });
        }
    }
    Message::parse_from_bytes(bytes).map_err(|e| wire::DecodeError {
        what: "raft message",
        source: e.into(),
    })
}

/// raft-rs 0.7 with `batch_append` merges appends to one peer queued in one
/// Ready without re-applying `max_size_per_msg`, so one append can carry far
/// more than [`ReplicaConfig::message_bytes_max`] (a network transport then
/// refuses it as too large). This splits every append above `bytes_max` (or
/// [`MESSAGE_ENTRIES_MAX`] entries) into consecutive appends: each after the
/// first starts where the previous one ended (its `index` and `log_term` are
/// the previous part's last entry), and all carry the original commit, which a
/// follower caps at the last entry it holds. A single entry above the bound
/// travels alone.
fn split_appends(messages: Vec<Message>, bytes_max: u64) -> Vec<Message> {
    use protobuf2::Message as _;
    let fits = |m: &Message| {
        m.get_msg_type() != raft::prelude::MessageType::MsgAppend
            || (m.entries.len() <= MESSAGE_ENTRIES_MAX
                && m.entries
                    .iter()
                    .map(|e| u64::from(e.compute_size()) + 6)
                    .sum::<u64>()
                    <= bytes_max)
    };
    // The common case, nothing to split: the vector goes on as it came.
    if messages.iter().all(fits) {
        return messages;
    }
    let mut out = Vec::with_capacity(messages.len());
    for mut m in messages {
        if fits(&m) {
            out.push(m);
            continue;
        }
        let entries: Vec<Entry> = m.take_entries().into();
        let (mut index, mut log_term) = (m.index, m.log_term);
        let mut part: Vec<Entry> = Vec::new();
        let mut part_bytes = 0u64;
        let flush =
            |part: &mut Vec<Entry>, index: &mut u64, log_term: &mut u64, out: &mut Vec<Message>| {
                let Some(last) = part.last() else {
                    return;
                };
                let (last_index, last_term) = (last.index, last.term);
                let mut piece = m.clone();
                piece.index = *index;
                piece.log_term = *log_term;
                piece.set_entries(std::mem::take(part).into());
                out.push(piece);
                *index = last_index;
                *log_term = last_term;
            };
        for e in entries {
            let bytes = u64::from(e.compute_size()) + 6;
            if !part.is_empty()
                && (part_bytes + bytes > bytes_max || part.len() >= MESSAGE_ENTRIES_MAX)
            {
                flush(&mut part, &mut index, &mut log_term, &mut out);
                part_bytes = 0;
            }
            part_bytes += bytes;
            part.push(e);
        }
        flush(&mut part, &mut index, &mut log_term, &mut out);
    }
    out
}

/// Longest session owner: a network front end's client key (32 bytes).
pub const OWNER_BYTES_MAX: usize = 32;

fn check_owner(owner: &[u8]) -> Result<(), RequestError> {
    if owner.len() > OWNER_BYTES_MAX {
        return Err(RequestError::OwnerTooLong {
            bytes: owner.len(),
            limit: OWNER_BYTES_MAX,
        });
    }
    Ok(())
}

/// Log entries one raft message may carry when it is decoded by
/// [`decode_message`]. This engine writes one entry per batch of commands, and
/// appends are bounded in bytes ([`ReplicaConfig::message_bytes_max`], 1 MiB
/// by default, at most 8 × this, which [`ReplicaConfig::validate`] checks): an
/// entry with data is at least 8 bytes on the wire, so an honest append never
/// carries more. At the bound a message decodes to at most ~14 MiB of entries.
pub const MESSAGE_ENTRIES_MAX: usize = 131_072;

/// The number of `entries` fields (field 7 of `eraftpb.Message`) in `bytes`,
/// counted on the wire format without allocating, stopping just past
/// [`MESSAGE_ENTRIES_MAX`]; `None` when the bytes are not a well-formed field
/// sequence (the decoder then reports why).
fn count_entries(bytes: &[u8]) -> Option<usize> {
    const ENTRIES_FIELD: u64 = 7;
    fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *bytes.get(*at)?;
            *at += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    let mut at = 0;
    let mut entries = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        match key & 7 {
            0 => {
                varint(bytes, &mut at)?;
            }
            1 => at = at.checked_add(8)?,
            2 => {
                let len = usize::try_from(varint(bytes, &mut at)?).ok()?;
                at = at.checked_add(len)?;
                if key >> 3 == ENTRIES_FIELD {
                    entries += 1;
                    if entries > MESSAGE_ENTRIES_MAX {
                        return Some(entries);
                    }
                }
            }
            5 => at = at.checked_add(4)?,
            _ => return None,
        }
        if at > bytes.len() {
            return None;
        }
    }
    Some(entries)
}

/// Encodes a raft message for a transport. It fails only for a message above
/// protobuf's size limit ([`wire::MESSAGE_BYTES_MAX`]); appends are bounded by
/// [`ReplicaConfig::message_bytes_max`], but a snapshot travels whole.
pub fn encode_message(message: &Message) -> Result<Vec<u8>, wire::EncodeError> {
    message.write_to_bytes().map_err(|e| wire::EncodeError {
        what: "raft message",
        source: e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::MessageType;

    fn entry(index: u64, term: u64, bytes: usize) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = vec![7u8; bytes].into();
        e
    }

    /// raft-rs merges appends queued in one Ready without re-applying its size
    /// bound (seen at 98 KiB against a 64 KiB transport frame by the network
    /// transport's review): every append leaves the replica within
    /// `message_bytes_max`, as consecutive appends a follower accepts in order.
    #[test]
    fn merged_appends_are_split_into_consecutive_appends_within_the_bound() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.term = 3;
        m.index = 10;
        m.log_term = 2;
        m.commit = 17;
        m.set_entries(
            (11..=17)
                .map(|i| entry(i, 3, 100))
                .collect::<Vec<_>>()
                .into(),
        );
        let mut other = Message::default();
        other.set_msg_type(MessageType::MsgHeartbeat);
        let parts = split_appends(vec![m, other.clone()], 250);
        assert_eq!(parts.last(), Some(&other), "other messages pass unchanged");
        let appends = &parts[..parts.len() - 1];
        assert!(appends.len() >= 3, "{} parts", appends.len());
        let (mut index, mut log_term) = (10, 2);
        let mut next = 11;
        for p in appends {
            assert_eq!(
                (p.index, p.log_term, p.commit, p.term),
                (index, log_term, 17, 3)
            );
            let bytes: u64 = p
                .entries
                .iter()
                .map(|e| u64::from(protobuf2::Message::compute_size(e)) + 6)
                .sum();
            assert!(bytes <= 250, "{bytes}");
            for e in p.entries.iter() {
                assert_eq!(e.index, next);
                next += 1;
            }
            let last = p.entries.last().expect("a part is never empty");
            (index, log_term) = (last.index, last.term);
        }
        assert_eq!(next, 18, "every entry, once, in order");
        // A single entry above the bound travels alone.
        let mut big = Message::default();
        big.set_msg_type(MessageType::MsgAppend);
        big.set_entries(vec![entry(1, 1, 1000), entry(2, 1, 10)].into());
        let parts = split_appends(vec![big], 250);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].entries.len(), 1);
    }

    type Core = Replica<crate::MemLog, crate::KvStore>;

    /// Review 10 LOW-1: the room kept between batch entries for the places
    /// of their requests is bounded, whatever one entry held (empty requests
    /// are 2 bytes each: 20,000 of them need about 1.1 MiB of places).
    #[test]
    fn the_room_kept_for_reading_batches_is_bounded() {
        let fleet = crate::FleetConfig::new(vec![crate::MemberSpec::voter(1, "dc-1")]);
        let mut store = crate::MemLog::new();
        Replica::bootstrap(&mut store, &crate::KvStore::new(), &fleet).expect("bootstrap");
        let mut replica: Core =
            Replica::new(ReplicaConfig::new(1), store, crate::KvStore::new()).expect("start");
        let entry = |requests: usize| -> Bytes {
            let batch = [0x0a, 0x00].repeat(requests);
            let mut e = vec![0x0a];
            let mut len = batch.len();
            while len >= 0x80 {
                e.push(len as u8 | 0x80);
                len >>= 7;
            }
            e.push(len as u8);
            e.extend(batch);
            e.into()
        };
        replica.apply_normal(5, &entry(10), None);
        let small = replica.batch_read.capacity();
        assert!(small >= 10, "the room of a small entry is kept: {small}");
        replica.apply_normal(6, &entry(20_000), None);
        let kept = replica.batch_read.capacity();
        assert!(
            (small..=BATCH_READ_KEPT).contains(&kept),
            "kept room for {kept} places"
        );
    }

    /// Runs Ready cycles and delivers messages until nothing moves, dropping
    /// every message to `cut_off`.
    fn settle<L: LogStore>(
        replicas: &mut BTreeMap<ReplicaId, Replica<L, crate::KvStore>>,
        cut_off: Option<ReplicaId>,
    ) {
        settle_inspecting(replicas, cut_off, |_, _, _| ());
    }

    /// [`settle`], handing every cycle's released messages and the store
    /// that released them to `inspect`.
    fn settle_inspecting<L: LogStore>(
        replicas: &mut BTreeMap<ReplicaId, Replica<L, crate::KvStore>>,
        cut_off: Option<ReplicaId>,
        mut inspect: impl FnMut(ReplicaId, &L, &[Message]),
    ) {
        let mut out = Output::default();
        for _ in 0..1_000 {
            let mut messages = Vec::new();
            for (id, r) in replicas.iter_mut() {
                out.clear();
                r.handle_ready(&mut out).expect("ready");
                inspect(*id, r.store(), &out.messages);
                messages.append(&mut out.messages);
            }
            if messages.is_empty() && !replicas.values().any(|r| r.has_ready()) {
                return;
            }
            for m in messages {
                if Some(m.to) == cut_off || Some(m.from) == cut_off {
                    continue;
                }
                if let Some(to) = replicas.get_mut(&m.to) {
                    let _ = to.step(m);
                }
            }
        }
        panic!("the replicas did not settle");
    }

    /// Ticks `leader` alone, settling after each tick, until every replica
    /// has its commit index: commits are not broadcast (`skip_bcast_commit`),
    /// so an idle follower learns the last one from a heartbeat.
    fn heartbeat<L: LogStore>(
        replicas: &mut BTreeMap<ReplicaId, Replica<L, crate::KvStore>>,
        leader: ReplicaId,
    ) {
        heartbeat_inspecting(replicas, leader, |_, _, _| ());
    }

    /// [`heartbeat`], handing every cycle's messages to `inspect` as
    /// [`settle_inspecting`] does.
    fn heartbeat_inspecting<L: LogStore>(
        replicas: &mut BTreeMap<ReplicaId, Replica<L, crate::KvStore>>,
        leader: ReplicaId,
        mut inspect: impl FnMut(ReplicaId, &L, &[Message]),
    ) {
        let commit = replicas[&leader].status().commit;
        // A heartbeat goes out every `heartbeat_ticks` ticks of the leader.
        for _ in 0..=test_config(leader).heartbeat_ticks {
            if replicas.values().all(|r| r.status().commit >= commit) {
                return;
            }
            replicas.get_mut(&leader).expect("the leader").tick();
            settle_inspecting(replicas, None, &mut inspect);
        }
        let behind: Vec<_> = replicas
            .iter()
            .map(|(id, r)| (*id, r.status().commit))
            .filter(|&(_, c)| c < commit)
            .collect();
        assert!(
            behind.is_empty(),
            "a heartbeat of {leader} did not carry commit {commit}: (replica, commit) {behind:?}"
        );
    }

    fn test_config(id: ReplicaId) -> ReplicaConfig {
        let mut cfg = ReplicaConfig::new(id);
        cfg.election_ticks = 10;
        cfg.heartbeat_ticks = 2;
        cfg.leader_rebalance_ticks = 0;
        cfg
    }

    /// Replicas 1, 2 and 3 on `stores` (bootstrapped if `bootstrap`), with
    /// replica 1 elected by ticking it alone.
    fn elect_three<L: LogStore>(
        stores: impl IntoIterator<Item = (ReplicaId, L)>,
        bootstrap: bool,
        configure: fn(&mut ReplicaConfig),
    ) -> BTreeMap<ReplicaId, Replica<L, crate::KvStore>> {
        let fleet = crate::FleetConfig::new(
            [1, 2, 3]
                .iter()
                .map(|&id| crate::MemberSpec::voter(id, format!("dc-{id}")))
                .collect(),
        );
        elect_first(&fleet, stores, bootstrap, configure)
    }

    /// The members of `fleet` on `stores` (bootstrapped if `bootstrap`), with
    /// replica 1 elected by ticking it alone.
    fn elect_first<L: LogStore>(
        fleet: &crate::FleetConfig,
        stores: impl IntoIterator<Item = (ReplicaId, L)>,
        bootstrap: bool,
        configure: fn(&mut ReplicaConfig),
    ) -> BTreeMap<ReplicaId, Replica<L, crate::KvStore>> {
        let mut replicas: BTreeMap<ReplicaId, Replica<L, crate::KvStore>> = stores
            .into_iter()
            .map(|(id, mut store)| {
                if bootstrap {
                    Replica::bootstrap(&mut store, &crate::KvStore::new(), fleet)
                        .expect("bootstrap");
                }
                let mut cfg = test_config(id);
                configure(&mut cfg);
                let replica = Replica::new(cfg, store, crate::KvStore::new()).expect("start");
                (id, replica)
            })
            .collect();
        for _ in 0..200 {
            replicas.get_mut(&1).expect("replica 1").tick();
            settle(&mut replicas, None);
            if replicas[&1].is_leader() {
                break;
            }
        }
        assert!(replicas[&1].is_leader(), "replica 1 won no election");
        replicas
    }

    #[test]
    fn the_leader_reports_each_followers_progress_and_lag_and_no_one_else_does() {
        let mut replicas: BTreeMap<ReplicaId, Core> =
            elect_three([1, 2, 3].map(|id| (id, crate::MemLog::new())), true, |_| ());
        let status = replicas[&1].status();
        let ids: Vec<_> = status.followers.iter().map(|f| f.id).collect();
        assert_eq!(
            ids,
            [2, 3],
            "every other member, ascending, never the leader"
        );
        for f in &status.followers {
            assert_eq!((f.matched, f.lag), (status.last_index, 0), "{f:?}");
        }
        for id in [2, 3] {
            assert!(
                replicas[&id].status().followers.is_empty(),
                "only a leader knows progress"
            );
        }
        // Replica 3 is cut off while the leader appends: its lag grows by what
        // it missed, replica 2 keeps up.
        for sequence in 1..=3 {
            let leader = replicas.get_mut(&1).expect("leader");
            leader.register_session(sequence).expect("register");
            settle(&mut replicas, Some(3));
        }
        let status = replicas[&1].status();
        let (two, three) = (status.followers[0], status.followers[1]);
        assert_eq!((two.id, two.matched, two.lag), (2, status.last_index, 0));
        assert_eq!(three.id, 3);
        assert_eq!(three.lag, 3, "{three:?}, last index {}", status.last_index);
        assert_eq!(three.matched + three.lag, status.last_index);
        assert!(two.recent_active);
    }

    /// A [`crate::MemLog`] with a crash: `durable` is what the last sync left,
    /// and a crashed replica restarts from it alone.
    #[derive(Clone, Debug, Default)]
    struct CrashLog {
        live: crate::MemLog,
        durable: crate::MemLog,
        syncs: u64,
        /// Every `sync` fails (a full disk, an I/O error).
        fail_sync: bool,
    }

    impl CrashLog {
        fn crashed(&self) -> CrashLog {
            CrashLog {
                live: self.durable.clone(),
                durable: self.durable.clone(),
                syncs: 0,
                fail_sync: false,
            }
        }
    }

    impl raft::Storage for CrashLog {
        fn initial_state(&self) -> raft::Result<raft::RaftState> {
            self.live.initial_state()
        }
        fn entries(
            &self,
            low: u64,
            high: u64,
            max_size: impl Into<Option<u64>>,
            context: raft::GetEntriesContext,
        ) -> raft::Result<Vec<Entry>> {
            self.live.entries(low, high, max_size, context)
        }
        fn term(&self, idx: u64) -> raft::Result<u64> {
            self.live.term(idx)
        }
        fn first_index(&self) -> raft::Result<u64> {
            self.live.first_index()
        }
        fn last_index(&self) -> raft::Result<u64> {
            self.live.last_index()
        }
        fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
            self.live.snapshot(request_index, to)
        }
    }

    impl LogStore for CrashLog {
        fn append(&mut self, entries: &[Entry]) -> Result<(), crate::StorageError> {
            self.live.append(entries)
        }
        fn set_hard_state(
            &mut self,
            hard_state: &raft::prelude::HardState,
        ) -> Result<(), crate::StorageError> {
            self.live.set_hard_state(hard_state)
        }
        fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), crate::StorageError> {
            self.live.apply_snapshot(snapshot)
        }
        fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), crate::StorageError> {
            self.live.save_snapshot(snapshot)
        }
        fn compact(&mut self, compact_index: u64) -> Result<(), crate::StorageError> {
            self.live.compact(compact_index)
        }
        fn sync(&mut self) -> Result<(), crate::StorageError> {
            if self.fail_sync {
                return Err(crate::StorageError::backend(std::io::Error::other(
                    "sync failed",
                )));
            }
            self.durable = self.live.clone();
            self.syncs += 1;
            Ok(())
        }
        fn latest_snapshot(&self) -> &Snapshot {
            self.live.latest_snapshot()
        }
        fn hard_state(&self) -> &raft::prelude::HardState {
            self.live.hard_state()
        }
    }

    /// A cycle that only moves the commit index (raft-rs's `must_sync` is
    /// false) writes it without a sync, as etcd does: one sync per replica per
    /// committed entry, not two, so a client's answer waits for one durability
    /// point on the leader, not two. A crash that loses the commit index loses
    /// nothing acknowledged: the restarted fleet relearns it and applies the
    /// same entries.
    #[test]
    fn a_cycle_that_only_moves_the_commit_index_does_not_sync() {
        let mut replicas = elect_three([1, 2, 3].map(|id| (id, CrashLog::default())), true, |_| ());
        let before: BTreeMap<ReplicaId, u64> = replicas
            .iter()
            .map(|(id, r)| (*id, r.store().syncs))
            .collect();
        replicas
            .get_mut(&1)
            .expect("leader")
            .register_session(1)
            .expect("register");
        settle(&mut replicas, None);
        // The followers learn the commit from a heartbeat: a cycle that
        // moves nothing else.
        heartbeat(&mut replicas, 1);
        let last = replicas[&1].status().last_index;
        for (id, r) in &replicas {
            let store = r.store();
            assert_eq!(
                store.syncs - before[id],
                1,
                "replica {id}: one sync, for the entry"
            );
            assert_eq!(raft::Storage::last_index(&store.durable).ok(), Some(last));
            assert_eq!(
                store.hard_state().commit,
                last,
                "replica {id}: commit written"
            );
            assert!(
                store.durable.hard_state().commit < last,
                "replica {id}: the commit index is not made durable on its own"
            );
            assert_eq!(r.sessions(), 1, "replica {id}: the entry is applied");
        }
        // Every replica crashes with its commit index lost.
        let restarted = elect_three(
            replicas.iter().map(|(id, r)| (*id, r.store().crashed())),
            false,
            |_| (),
        );
        for (id, r) in &restarted {
            assert!(r.store().hard_state().commit > last, "replica {id}");
            assert_eq!(r.sessions(), 1, "replica {id}: the entry is applied again");
        }
    }

    /// A replica that applied a membership change restarts holding it, even
    /// after a crash that lost every write since its last sync: the change's
    /// commit index is made durable before the change takes effect. Otherwise
    /// the commit index of a commit-only cycle is lost (the test above), and
    /// raft-rs, which takes a configuration when it is applied, rebuilds the
    /// configuration before the change: here one that still counts the
    /// removed replica, which the operator may have shut down already (swarm
    /// seed 100529).
    #[test]
    fn a_replica_restarts_holding_the_membership_it_applied() {
        let fleet = crate::FleetConfig::new(
            [1, 2, 3, 4]
                .iter()
                .map(|&id| crate::MemberSpec::voter(id, format!("dc-{id}")))
                .collect(),
        );
        let mut replicas = elect_first(
            &fleet,
            [1, 2, 3, 4].map(|id| (id, CrashLog::default())),
            true,
            |_| (),
        );
        replicas
            .get_mut(&1)
            .expect("leader")
            .change_membership(1, MembershipChange::Remove { id: 4 })
            .expect("remove 4");
        settle(&mut replicas, None);
        replicas.remove(&4);
        for (id, r) in &replicas {
            assert_eq!(
                r.status().voters,
                [1, 2, 3],
                "replica {id} applied the removal"
            );
        }
        for (id, r) in &replicas {
            let mut restarted =
                Replica::new(test_config(*id), r.store().crashed(), crate::KvStore::new())
                    .expect("restart");
            let mut out = Output::default();
            while restarted.has_ready() {
                out.clear();
                restarted.handle_ready(&mut out).expect("ready");
            }
            assert_eq!(
                restarted.status().voters,
                [1, 2, 3],
                "replica {id} restarted (before hearing from anyone) with the voters it applied"
            );
        }
    }

    /// `status_into` writes what `status` returns over any `Status`: one
    /// holding garbage (repeated, unsorted ids, another replica's fields), the
    /// status before a membership change, and its own last value.
    #[test]
    fn status_into_writes_what_status_returns_over_anything() {
        let mut replicas =
            elect_three([1, 2, 3].map(|id| (id, crate::MemLog::new())), true, |_| ());
        let garbage = Status {
            id: 9,
            role: StateRole::Candidate,
            leader: Some(7),
            term: 99,
            commit: 99,
            applied: 99,
            first_index: 99,
            last_index: 99,
            voters: vec![3, 1, 1],
            learners: vec![2, 2],
            followers: vec![FollowerProgress {
                id: 5,
                matched: 1,
                lag: 1,
                recent_active: true,
            }],
            state_digests: vec![StateDigest {
                index: 4,
                digest: [7; 32],
            }],
            host: HostHealth {
                hsm: Some(false),
                disk: Some(true),
            },
        };
        let check = |replicas: &BTreeMap<ReplicaId, Replica<crate::MemLog, crate::KvStore>>,
                     before: &mut BTreeMap<ReplicaId, Status>| {
            for (id, r) in replicas {
                let mut out = garbage.clone();
                r.status_into(&mut out);
                assert_eq!(out, r.status(), "replica {id}, over garbage");
                let last = before.entry(*id).or_insert_with(|| garbage.clone());
                r.status_into(last);
                assert_eq!(*last, r.status(), "replica {id}, over its last status");
            }
        };
        let mut before = BTreeMap::new();
        check(&replicas, &mut before);
        replicas
            .get_mut(&1)
            .expect("leader")
            .change_membership(1, MembershipChange::Remove { id: 3 })
            .expect("remove 3");
        settle(&mut replicas, None);
        assert_eq!(replicas[&1].status().voters, [1, 2]);
        check(&replicas, &mut before);
    }

    /// A snapshot taken in a cycle that only moved the commit index is made
    /// durable with that commit index: a replica restarted from it opens (raft
    /// refuses a hard state whose commit is below the snapshot).
    #[test]
    fn a_snapshot_after_an_unsynced_commit_restarts() {
        let small = |cfg: &mut ReplicaConfig| {
            cfg.snapshot_entries_min = 1;
            cfg.compaction_entries_retained = 0;
        };
        let mut replicas = elect_three([1, 2, 3].map(|id| (id, CrashLog::default())), true, small);
        replicas
            .get_mut(&1)
            .expect("leader")
            .register_session(1)
            .expect("register");
        settle(&mut replicas, None);
        heartbeat(&mut replicas, 1);
        let last = replicas[&1].status().last_index;
        for (id, r) in &replicas {
            let durable = &r.store().durable;
            assert_eq!(
                durable.latest_snapshot().get_metadata().index,
                last,
                "replica {id}: snapshot of the applied entry"
            );
            assert!(durable.hard_state().commit >= last, "replica {id}");
        }
        let restarted = elect_three(
            replicas.iter().map(|(id, r)| (*id, r.store().crashed())),
            false,
            small,
        );
        for (id, r) in &restarted {
            assert_eq!(r.sessions(), 1, "replica {id}: restored from the snapshot");
        }
    }

    /// Every vote grant and append acknowledgement a replica releases names
    /// state its store had made durable when the cycle returned: the vote and
    /// term of a grant, the entries (index and term) of an acknowledgement.
    /// Checked after every cycle of an election and of three proposals, so a
    /// cycle that skips the sync while it wrote entries, a term or a vote
    /// fails here (the release order inside a cycle is what
    /// `a_failed_sync_releases_no_acknowledgement` checks).
    fn check_released(id: ReplicaId, store: &CrashLog, messages: &[Message]) {
        for m in messages {
            match m.get_msg_type() {
                MessageType::MsgAppendResponse if !m.reject => {
                    assert!(
                        raft::Storage::last_index(&store.durable).unwrap_or(0) >= m.index,
                        "replica {id} acknowledged index {} before it was durable",
                        m.index
                    );
                    assert_eq!(
                        raft::Storage::term(&store.durable, m.index).ok(),
                        raft::Storage::term(&store.live, m.index).ok(),
                        "replica {id}: the acknowledged entry {} is durable as written",
                        m.index
                    );
                }
                MessageType::MsgRequestVoteResponse if !m.reject => {
                    let hs = store.durable.hard_state();
                    assert_eq!(
                        (hs.term, hs.vote),
                        (m.term, m.to),
                        "replica {id} granted a vote before it was durable"
                    );
                }
                _ => {}
            }
        }
    }

    #[test]
    fn every_released_grant_and_acknowledgement_names_durable_state() {
        let fleet = crate::FleetConfig::new(
            [1, 2, 3]
                .iter()
                .map(|&id| crate::MemberSpec::voter(id, format!("dc-{id}")))
                .collect(),
        );
        let mut replicas: BTreeMap<ReplicaId, Replica<CrashLog, crate::KvStore>> = [1, 2, 3]
            .into_iter()
            .map(|id| {
                let mut store = CrashLog::default();
                Replica::bootstrap(&mut store, &crate::KvStore::new(), &fleet).expect("bootstrap");
                let r = Replica::new(test_config(id), store, crate::KvStore::new()).expect("start");
                (id, r)
            })
            .collect();
        for _ in 0..200 {
            replicas.get_mut(&1).expect("replica 1").tick();
            settle_inspecting(&mut replicas, None, check_released);
            if replicas[&1].is_leader() {
                break;
            }
        }
        assert!(replicas[&1].is_leader(), "replica 1 won no election");
        for request in 1..=3 {
            replicas
                .get_mut(&1)
                .expect("leader")
                .register_session(request)
                .expect("register");
            settle_inspecting(&mut replicas, None, check_released);
        }
        heartbeat_inspecting(&mut replicas, 1, check_released);
        assert_eq!(replicas[&3].sessions(), 3);
    }

    /// A cycle whose sync fails releases no acknowledgement of what it wrote:
    /// persisted messages go out only after the sync returned `Ok`.
    #[test]
    fn a_failed_sync_releases_no_acknowledgement() {
        let mut replicas = elect_three([1, 2, 3].map(|id| (id, CrashLog::default())), true, |_| ());
        replicas
            .get_mut(&2)
            .expect("follower")
            .raw
            .mut_store()
            .fail_sync = true;
        let leader = replicas.get_mut(&1).expect("leader");
        leader.register_session(1).expect("register");
        let mut out = Output::default();
        leader.handle_ready(&mut out).expect("ready");
        let appends: Vec<Message> = std::mem::take(&mut out.messages)
            .into_iter()
            .filter(|m| m.to == 2 && !m.entries.is_empty())
            .collect();
        assert!(
            !appends.is_empty(),
            "the leader sent the entry to replica 2"
        );
        let follower = replicas.get_mut(&2).expect("follower");
        for m in appends {
            follower.step(m).expect("step");
        }
        assert!(follower.handle_ready(&mut out).is_err(), "the sync failed");
        assert!(
            !out.messages
                .iter()
                .any(|m| m.get_msg_type() == raft::prelude::MessageType::MsgAppendResponse),
            "an acknowledgement left before its sync: {:?}",
            out.messages
        );
    }

    /// Review 14 (LOW-1): a cycle that takes a new term and then fails to
    /// sync releases none of the messages it held back for that sync. A
    /// single voter wins inside one step, so its first appends of the new
    /// term wait for the sync (`early_prefix`); if they stayed in the
    /// output, the driver would send entries of a term never made durable.
    #[test]
    fn a_failed_cycle_releases_nothing_it_held_back() {
        let fleet = crate::FleetConfig::new(vec![
            crate::MemberSpec::voter(1, "dc-1"),
            crate::MemberSpec::learner(2, "dc-2"),
        ]);
        let replicas = elect_first(
            &fleet,
            [1, 2].map(|id| (id, CrashLog::default())),
            true,
            |_| (),
        );
        let mut voter: Replica<CrashLog, crate::KvStore> = Replica::new(
            test_config(1),
            replicas[&1].store().crashed(),
            crate::KvStore::new(),
        )
        .expect("restart");
        let term = voter.status().term;
        for _ in 0..500 {
            voter.tick();
            if voter.is_leader() {
                break;
            }
        }
        assert_eq!(
            (voter.is_leader(), voter.status().term),
            (true, term + 1),
            "won a new term inside the tick"
        );
        voter.raw.mut_store().fail_sync = true;
        let mut out = Output::default();
        let mut early = Vec::new();
        let result = voter.handle_ready_sending(&mut out, &mut |m| early.extend(m));
        assert!(result.is_err(), "the sync failed");
        assert!(
            early.is_empty(),
            "sent before the term was durable: {early:?}"
        );
        assert!(
            out.messages.is_empty(),
            "a failed cycle released what it held back: {:?}",
            out.messages
        );
    }
}
