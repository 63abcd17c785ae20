//! `Node`: one thread that drives one [`Replica`] for real — wall-clock ticks, the
//! mailbox, the log store's durability point and the transport.
//!
//! The loop: wait for inputs until the next tick is due; drain the whole mailbox
//! into the replica; tick if due; run Ready cycles until none is left, sending
//! messages and filling response slots. Everything that arrived during one cycle
//! is persisted by the next cycle's single `sync` (group commit).
//!
//! The body of that loop is `Driver::turn`; a [`Pool`](super::Pool) runs the
//! same turns of many replicas on a few workers (the `Fsm` trait), so both
//! runtimes share one copy of the logic.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex as StatusLock;
use raft::prelude::{Message, MessageType};
use raft::{SnapshotStatus, StateRole};

use super::pool::PoolLink;
use super::telemetry::{self, Stopwatch};
use super::Slot;
use super::{Mailbox, PushError};
use crate::replica::{
    Completion, MembershipChange, Output, Replica, ReplicaConfig, ReplicaError, Reply,
    RequestError, RequestId, RestoredSnapshot, SnapshotBuild, SnapshotBuildError, SnapshotRestore,
    Status, BACKLOG_STEPS_PER_TURN, INDEX_JUMP_MAX,
};
use crate::snapshot::{SnapshotDescriptor, SnapshotFiles};
use crate::state_machine::StateMachine;
use crate::storage::LogStore;
use crate::transport::{
    Dropped, Envelope, Inbox, SnapshotDone, SnapshotSent, StreamRefused, Transport, TransportError,
};
use crate::wire::Request;
use crate::ReplicaId;

/// Where a request's outcome is delivered.
pub type ResponseSlot = Arc<Slot<Result<Reply, RequestError>>>;

/// Settings of a [`Node`].
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The replica's settings.
    pub replica: ReplicaConfig,
    /// Wall-clock length of one tick.
    pub tick_interval: Duration,
    /// Inputs the mailbox holds before new requests are refused with
    /// [`RequestError::Overloaded`] (and raft messages dropped).
    pub mailbox_inputs_max: usize,
    /// Most ticks run back to back after the thread was delayed (a stall longer
    /// than this is not replayed tick by tick).
    pub catch_up_ticks_max: u32,
}

impl NodeConfig {
    /// Defaults: 10 ms ticks (so an election timeout of 10 ticks is 100–200 ms).
    pub fn new(replica: ReplicaConfig) -> Self {
        Self {
            replica,
            tick_interval: Duration::from_millis(10),
            mailbox_inputs_max: 65_536,
            catch_up_ticks_max: 10,
        }
    }
}

/// What a node's thread or a pool's worker takes from a mailbox.
pub(crate) enum Input {
    Raft(Message),
    Propose(Request, ResponseSlot),
    RegisterSession(Vec<u8>, ResponseSlot),
    Read(Vec<u8>, ResponseSlot),
    Membership(MembershipChange, ResponseSlot),
    StateDigest(ResponseSlot),
    TransferLeader(ReplicaId),
    /// How the send of the snapshot at an index to a peer ended (from its
    /// transport).
    SnapshotSent(ReplicaId, u64, SnapshotSent),
    /// A snapshot build or restore finished: its outcome waits in
    /// `Shared::builds_done` or `Shared::restores_done` (this input only wakes
    /// the node, and may be dropped when the mailbox is full: the outcome is
    /// taken on the next turn anyway).
    SnapshotJobDone,
}

/// What a node's handles and its driver share.
pub(super) struct Shared {
    pub(super) id: ReplicaId,
    group: u64,
    pub(super) mailbox: Mailbox<Input>,
    status: StatusLock<Status>,
    /// `status.role`, readable without the lock ([`role_code`]): a client
    /// reads it for every command it sends, and the lock's line would
    /// bounce between the client's core and the driver's.
    role: AtomicU8,
    /// The replica's `command_bytes_max` (fixed at spawn).
    command_bytes_max: usize,
    /// Snapshot outcomes that found the mailbox full: never lost (raft holds
    /// the peer back until it hears one), taken by the node on its next turn.
    snapshot_reports: parking_lot::Mutex<Vec<(ReplicaId, u64, SnapshotSent)>>,
    /// Streamed snapshots' messages that found the mailbox full, at most
    /// [`SNAPSHOTS_WAITING_MAX`]: stepped first at the node's next turn, so a
    /// snapshot that crossed the network whole is not lost (and sent again)
    /// for want of a mailbox slot.
    snapshots_waiting: parking_lot::Mutex<Vec<Message>>,
    /// Outcomes of snapshot builds, by index, taken by the node each turn.
    builds_done: parking_lot::Mutex<Vec<(u64, Result<SnapshotDescriptor, SnapshotBuildError>)>>,
    /// Outcomes of snapshot restores, taken by the node each turn.
    restores_done: parking_lot::Mutex<Vec<RestoredSnapshot>>,
    /// The replica's snapshot files, where a streamed snapshot for it is
    /// received ([`Inbox::snapshot_files`]).
    files: Option<Arc<dyn SnapshotFiles>>,
    /// Set when the replica runs on a pool: a push that raises the mailbox's
    /// `scheduled` flag puts the replica on the pool's ready queue.
    pub(super) pool: std::sync::OnceLock<PoolLink>,
}

/// A role as [`Shared::role`] holds it.
fn role_code(role: StateRole) -> u8 {
    match role {
        StateRole::Follower => 0,
        StateRole::Candidate => 1,
        StateRole::Leader => 2,
        StateRole::PreCandidate => 3,
    }
}

/// The role [`role_code`] gave `code`.
fn role_of_code(code: u8) -> StateRole {
    match code {
        1 => StateRole::Candidate,
        2 => StateRole::Leader,
        3 => StateRole::PreCandidate,
        _ => StateRole::Follower,
    }
}

impl Shared {
    /// Queues `input`, scheduling the replica if it runs on a pool and this
    /// push raised its flag.
    // The input is handed back on refusal, as `Mailbox::push` does.
    #[allow(clippy::result_large_err)]
    fn push(&self, input: Input) -> Result<(), PushError<Input>> {
        match self.pool.get() {
            None => self.mailbox.push(input),
            Some(link) => {
                if self.mailbox.push_scheduling(input)? {
                    link.schedule();
                }
                Ok(())
            }
        }
    }

    fn snapshot_built(&self, index: u64, result: Result<SnapshotDescriptor, SnapshotBuildError>) {
        self.builds_done.lock().push((index, result));
        let _ = self.push(Input::SnapshotJobDone);
    }

    fn snapshot_restored(&self, restored: RestoredSnapshot) {
        self.restores_done.lock().push(restored);
        if let Err(PushError::Closed(_)) = self.push(Input::SnapshotJobDone) {
            // The node stopped (before or after this outcome went in): no
            // one will take it, so do not keep its machine.
            drop(std::mem::take(&mut *self.restores_done.lock()));
        }
    }

    fn report_snapshot(&self, to: ReplicaId, index: u64, sent: SnapshotSent) {
        match self.push(Input::SnapshotSent(to, index, sent)) {
            Ok(()) | Err(PushError::Closed(_)) => {}
            Err(PushError::Full(_)) => self.snapshot_reports.lock().push((to, index, sent)),
        }
    }
}

/// A cloneable handle to a running node: submit requests, read its status,
/// deliver messages to it (it is the node's [`Inbox`]).
#[derive(Clone)]
pub struct NodeHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("id", &self.shared.id)
            .finish()
    }
}

impl NodeHandle {
    pub(super) fn from_shared(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The replica's id.
    pub fn id(&self) -> ReplicaId {
        self.shared.id
    }

    /// The replica's status as of its last Ready cycle.
    pub fn status(&self) -> Status {
        self.shared.status.lock().clone()
    }

    /// The replica's role as of its last Ready cycle (cheaper than `status`).
    pub fn role(&self) -> raft::StateRole {
        role_of_code(self.shared.role.load(Ordering::Acquire))
    }

    /// True once the node stopped.
    pub fn is_stopped(&self) -> bool {
        self.shared.mailbox.is_closed()
    }

    fn submit(&self, input: Input) -> Result<(), RequestError> {
        self.shared.push(input).map_err(|e| {
            let e = match e {
                PushError::Full(_) => RequestError::Overloaded,
                PushError::Closed(_) => RequestError::Stopped,
            };
            telemetry::refused(&e);
            e
        })
    }

    /// Submits a command; its outcome arrives in the returned slot.
    pub fn propose(&self, request: Request) -> Result<ResponseSlot, RequestError> {
        let slot = ResponseSlot::default();
        self.propose_into(request, Arc::clone(&slot))?;
        Ok(slot)
    }

    /// Submits a command whose outcome goes to `slot` (one made with
    /// [`Slot::with_notify`](super::Slot::with_notify), say).
    pub fn propose_into(&self, request: Request, slot: ResponseSlot) -> Result<(), RequestError> {
        self.submit(Input::Propose(request, slot))
    }

    /// Submits a session registration.
    pub fn register_session(&self) -> Result<ResponseSlot, RequestError> {
        let slot = ResponseSlot::default();
        self.register_session_into(Arc::clone(&slot))?;
        Ok(slot)
    }

    /// Submits a session registration whose outcome goes to `slot` (one made
    /// with [`Slot::with_notify`](super::Slot::with_notify), say).
    pub fn register_session_into(&self, slot: ResponseSlot) -> Result<(), RequestError> {
        self.submit(Input::RegisterSession(Vec::new(), slot))
    }

    /// Submits the registration of a session belonging to `owner` (a network
    /// front end's authenticated client key): only commands naming the same
    /// owner may use it.
    pub fn register_session_of_into(
        &self,
        owner: Vec<u8>,
        slot: ResponseSlot,
    ) -> Result<(), RequestError> {
        self.submit(Input::RegisterSession(owner, slot))
    }

    /// Submits a linearizable read.
    pub fn read(&self, query: Vec<u8>) -> Result<ResponseSlot, RequestError> {
        let slot = ResponseSlot::default();
        self.read_into(query, Arc::clone(&slot))?;
        Ok(slot)
    }

    /// Submits a linearizable read whose outcome goes to `slot`.
    pub fn read_into(&self, query: Vec<u8>, slot: ResponseSlot) -> Result<(), RequestError> {
        self.submit(Input::Read(query, slot))
    }

    /// Submits a membership change.
    pub fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<ResponseSlot, RequestError> {
        let slot = ResponseSlot::default();
        self.change_membership_into(change, Arc::clone(&slot))?;
        Ok(slot)
    }

    /// Submits a membership change whose outcome goes to `slot`.
    pub fn change_membership_into(
        &self,
        change: MembershipChange,
        slot: ResponseSlot,
    ) -> Result<(), RequestError> {
        self.submit(Input::Membership(change, slot))
    }

    /// Submits a state digest marker (see
    /// [`Replica::mark_state_digest`](crate::Replica::mark_state_digest))
    /// whose outcome goes to `slot`: [`Reply::StateDigest`] on the leader.
    pub fn mark_state_digest_into(&self, slot: ResponseSlot) -> Result<(), RequestError> {
        self.submit(Input::StateDigest(slot))
    }

    /// The largest command the replica accepts (its
    /// `ReplicaConfig::command_bytes_max`): a larger one is refused with
    /// [`RequestError::CommandTooLarge`].
    pub fn command_bytes_max(&self) -> usize {
        self.shared.command_bytes_max
    }

    /// Asks this node, if leader, to hand leadership to `to`. `Ok` only
    /// says the request was queued: a node that does not lead when it takes
    /// it ignores it (replicas never ask their leader on another's behalf),
    /// so callers watch for the new leader and retry through the leader, as
    /// the `Client` and the admin tools do.
    pub fn transfer_leader(&self, to: ReplicaId) -> Result<(), RequestError> {
        self.submit(Input::TransferLeader(to))
    }
}

impl Inbox for NodeHandle {
    fn deliver(&self, envelope: Envelope) {
        if envelope.group != self.shared.group {
            tracing::warn!(
                replica = self.shared.id,
                group = envelope.group,
                "dropping a message for another group"
            );
            return;
        }
        // A full mailbox drops the message; raft retransmits.
        let _ = self.shared.push(Input::Raft(envelope.message));
    }

    /// Never drops a snapshot in silence: one that finds the mailbox full
    /// waits beside it for the node's next turn (two at most); beyond that,
    /// a stopped node or another group says [`Dropped`], and the transport
    /// refuses the stream rather than tell the leader it arrived.
    fn deliver_snapshot(&self, envelope: Envelope) -> Result<(), Dropped> {
        if envelope.group != self.shared.group {
            tracing::warn!(
                replica = self.shared.id,
                group = envelope.group,
                "refusing a snapshot for another group"
            );
            return Err(Dropped);
        }
        match self.shared.push(Input::Raft(envelope.message)) {
            Ok(()) => Ok(()),
            Err(PushError::Full(Input::Raft(message))) => {
                let mut waiting = self.shared.snapshots_waiting.lock();
                if waiting.len() >= SNAPSHOTS_WAITING_MAX {
                    return Err(Dropped);
                }
                waiting.push(message);
                Ok(())
            }
            Err(_) => Err(Dropped),
        }
    }

    fn snapshot_files(&self) -> Option<Arc<dyn SnapshotFiles>> {
        self.shared.files.clone()
    }

    /// Admits a stream only from the leader this replica follows, of its
    /// group, of a term it has seen, past what it applied and within
    /// [`INDEX_JUMP_MAX`] of its log: a peer cannot make it store snapshots
    /// it would never install (the files' own checks come after).
    fn admit_snapshot(
        &self,
        from: ReplicaId,
        descriptor: &SnapshotDescriptor,
    ) -> Result<Arc<dyn SnapshotFiles>, StreamRefused> {
        descriptor
            .check()
            .map_err(|_| StreamRefused::BadDescriptor)?;
        if descriptor.group != self.shared.group {
            return Err(StreamRefused::WrongGroup {
                found: descriptor.group,
                group: self.shared.group,
            });
        }
        let files = self.shared.files.clone().ok_or(StreamRefused::NoFiles)?;
        let status = self.shared.status.lock();
        if status.leader != Some(from) {
            return Err(StreamRefused::NotLeader {
                from,
                leader: status.leader,
            });
        }
        if descriptor.term > status.term {
            return Err(StreamRefused::FutureTerm {
                term: descriptor.term,
                current: status.term,
            });
        }
        // Against the commit index, not the applied one: raft refuses a
        // snapshot at or below what it committed, and while a restore runs
        // off the thread the applied index is the one before that snapshot
        // (a re-sent one would be transferred whole for nothing).
        if descriptor.index <= status.commit {
            return Err(StreamRefused::Stale {
                index: descriptor.index,
                commit: status.commit,
            });
        }
        if descriptor.index > status.last_index.saturating_add(INDEX_JUMP_MAX) {
            return Err(StreamRefused::TooFar {
                index: descriptor.index,
                last: status.last_index,
                jump_max: INDEX_JUMP_MAX,
            });
        }
        Ok(files)
    }
}

/// A replica running on its own thread.
pub struct Node {
    handle: NodeHandle,
    thread: Option<JoinHandle<Result<(), ReplicaError>>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.handle.id())
            .finish()
    }
}

impl Node {
    /// Starts a replica on `store` with `machine` on a new thread. Bootstrap the
    /// store first ([`Replica::bootstrap`]) for an initial member; a member added
    /// later starts from an empty store.
    pub fn spawn<L: LogStore, S: StateMachine>(
        cfg: NodeConfig,
        store: L,
        machine: S,
        transport: Arc<dyn Transport>,
    ) -> Result<Node, ReplicaError> {
        let mut driver = Driver::new(&cfg, store, machine, transport)?;
        driver.node_gauges = true;
        let shared = Arc::clone(&driver.shared);
        let thread = std::thread::Builder::new()
            .name(format!("vaultfleet-node-{}", shared.id))
            .spawn(move || run(driver))
            .map_err(|source| ReplicaError::Spawn {
                id: shared.id,
                source,
            })?;
        Ok(Node {
            handle: NodeHandle { shared },
            thread: Some(thread),
        })
    }

    /// A handle to this node.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// The replica's id.
    pub fn id(&self) -> ReplicaId {
        self.handle.id()
    }

    /// Stops the node: pending requests complete with [`RequestError::Stopped`],
    /// the thread exits, and the store is closed. Everything acknowledged before
    /// is durable already (acknowledgements follow `sync`).
    pub fn shutdown(mut self) -> Result<(), ReplicaError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), ReplicaError> {
        for input in self.handle.shared.mailbox.close() {
            fail_input(input, RequestError::Stopped);
        }
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| {
                Err(ReplicaError::Failed {
                    id: self.handle.id(),
                })
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

pub(super) fn fail_input(input: Input, error: RequestError) {
    match input {
        Input::Propose(_, slot)
        | Input::RegisterSession(_, slot)
        | Input::Read(_, slot)
        | Input::Membership(_, slot)
        | Input::StateDigest(slot) => {
            let _ = slot.fill(Err(error));
        }
        Input::Raft(_)
        | Input::TransferLeader(_)
        | Input::SnapshotSent(..)
        | Input::SnapshotJobDone => {}
    }
}

/// Where `input`'s outcome goes, if it has one.
fn input_slot(input: &Input) -> Option<&ResponseSlot> {
    match input {
        Input::Propose(_, slot)
        | Input::RegisterSession(_, slot)
        | Input::Read(_, slot)
        | Input::Membership(_, slot)
        | Input::StateDigest(slot) => Some(slot),
        Input::Raft(_)
        | Input::TransferLeader(_)
        | Input::SnapshotSent(..)
        | Input::SnapshotJobDone => None,
    }
}

/// The requests a replica took and has not answered, by id. Ids are handed
/// out in increasing order and most are answered in that order, so this is a
/// ring indexed by `id - first` rather than a map: an insert is a push at the
/// back, an answer takes its entry and drops the answered ones from the front
/// (a B-tree's insert and remove were 2.5% of a 4096-client bench's samples).
/// A request answered late (a read waiting for its index) only holds the
/// front back: the entries behind it are empty until it is answered.
/// Entries of [`PendingRequests`]' ring kept after a spike drains.
const RING_KEPT: usize = 4096;

/// Streamed snapshots' messages a node keeps beside a full mailbox for its
/// next turn (one per sender is the most an honest fleet sends at once:
/// only a leader sends, one snapshot at a time per follower).
const SNAPSHOTS_WAITING_MAX: usize = 2;

#[derive(Debug)]
struct PendingRequests<T> {
    /// The id of `ring[0]`.
    first: RequestId,
    ring: VecDeque<Option<T>>,
}

impl<T> Default for PendingRequests<T> {
    fn default() -> Self {
        Self {
            first: 0,
            ring: VecDeque::new(),
        }
    }
}

impl<T> PendingRequests<T> {
    /// The id the next insert must carry (`None` while empty: any).
    fn next_id(&self) -> Option<RequestId> {
        (!self.ring.is_empty()).then(|| self.first + self.ring.len() as RequestId)
    }

    /// Adds request `id`, larger than every id inserted before.
    fn insert(&mut self, id: RequestId, value: T) {
        if self.ring.is_empty() {
            self.first = id;
        }
        // The driver never skips an id (a refused request takes none); a gap
        // would be left as empty entries.
        debug_assert!(id >= self.first + self.ring.len() as RequestId);
        while self.first + (self.ring.len() as RequestId) < id {
            self.ring.push_back(None);
        }
        self.ring.push_back(Some(value));
    }

    /// Takes request `id` out, if it is pending.
    fn remove(&mut self, id: RequestId) -> Option<T> {
        let at = usize::try_from(id.checked_sub(self.first)?).ok()?;
        let value = self.ring.get_mut(at)?.take();
        while matches!(self.ring.front(), Some(None)) {
            self.ring.pop_front();
            self.first += 1;
        }
        // One request held back for its whole timeout grows the ring by every
        // request answered meanwhile; give the room back once it has drained.
        if self.ring.capacity() > RING_KEPT && self.ring.len() < self.ring.capacity() / 4 {
            self.ring.shrink_to((self.ring.len() * 2).max(RING_KEPT));
        }
        value
    }

    /// Every pending request, in id order.
    fn drain(self) -> impl Iterator<Item = T> {
        self.ring.into_iter().flatten()
    }
}

/// A request the replica took: where its outcome goes, and since when it waits
/// (for [`telemetry::COMMIT_SECONDS`]).
struct Pending {
    slot: ResponseSlot,
    kind: &'static str,
    since: Stopwatch,
}

/// One replica and everything its turns need: the thread of a [`Node`] owns
/// one, a [`Pool`](super::Pool) holds many as `Fsm`s.
pub(super) struct Driver<L: LogStore, S: StateMachine> {
    replica: Replica<L, S>,
    transport: Arc<dyn Transport>,
    pub(super) shared: Arc<Shared>,
    slots: PendingRequests<Pending>,
    next_request: RequestId,
    out: Output,
    /// The inputs of the current turn not yet taken by the replica: kept here,
    /// not in a local, so that if the replica panics mid-batch `finish` still
    /// fails them (a client gets `Stopped` instead of waiting out its timeout).
    inputs: VecDeque<Input>,
    /// The slot of the input being handed to the replica, for the same reason
    /// (filling a slot twice is a no-op).
    in_flight: Option<ResponseSlot>,
    next_tick: Instant,
    tick_interval: Duration,
    catch_up_ticks_max: u32,
    mailbox_inputs_max: usize,
    /// When the current turn took its inputs: every request it accepts is
    /// timed from here (one clock read per turn, not per request; a read
    /// per request and per answer were 3% of a 256-client bench's samples).
    turn_began: Instant,
    /// Inputs taken from the mailbox in the last turn (the mailbox depth
    /// gauges: a `Node` sets them, a pool aggregates them).
    last_inputs: usize,
    /// Whether each turn sets the mailbox gauges itself (a `Node`'s driver;
    /// a pool's are set by its timer).
    node_gauges: bool,
    /// The last turn stopped with Ready cycles left (at most
    /// [`BACKLOG_STEPS_PER_TURN`] backlog steps per turn): the next one does
    /// not wait for inputs.
    more: bool,
    seen: Seen,
    /// The replica's status as the last turn found it, or the one published
    /// before it when that turn's differed (the two are swapped): what the next
    /// turn writes its status over ([`Replica::status_into`]).
    status: Status,
    /// The commit-time histograms of the answers, kept from one tick to the
    /// next (a recorder installed later is picked up at the next tick).
    histograms: telemetry::CommitHistograms,
}

/// A replica a [`Pool`](super::Pool) drives: one [`Driver`] behind a trait
/// object, so one pool runs any mix of log stores and state machines.
pub(super) trait Fsm: Send {
    /// One turn (see [`Driver::turn`]) without waiting for inputs.
    fn turn(&mut self) -> Result<bool, ReplicaError>;
    /// When the replica's next tick is due.
    fn next_tick(&self) -> Instant;
    /// Fails whatever is queued or pending with `Stopped`; the replica is
    /// dropped next (its store closes).
    fn finish(&mut self);
    /// Inputs taken from the mailbox in the last turn.
    fn last_inputs(&self) -> usize;
    /// Whether the last turn stopped with work left (a restore's backlog):
    /// the pool queues the replica again at once.
    fn more(&self) -> bool;
}

impl<L: LogStore, S: StateMachine> Fsm for Driver<L, S> {
    fn turn(&mut self) -> Result<bool, ReplicaError> {
        Driver::turn(self, Duration::ZERO)
    }
    fn next_tick(&self) -> Instant {
        self.next_tick
    }
    fn finish(&mut self) {
        Driver::finish(self);
    }
    fn last_inputs(&self) -> usize {
        self.last_inputs
    }
    fn more(&self) -> bool {
        self.more
    }
}

impl<L: LogStore, S: StateMachine> Driver<L, S> {
    /// Opens the replica on `store` and makes its shared half; its first tick
    /// is due one interval after the store is open (opening and replaying it
    /// do not count as elapsed ticks: they would fire at once and start an
    /// election).
    pub(super) fn new(
        cfg: &NodeConfig,
        store: L,
        machine: S,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, ReplicaError> {
        let replica = Replica::new(cfg.replica.clone(), store, machine)?;
        let status = replica.status();
        let shared = Arc::new(Shared {
            id: replica.id(),
            group: replica.group(),
            mailbox: Mailbox::new(cfg.mailbox_inputs_max),
            status: StatusLock::new(status.clone()),
            role: AtomicU8::new(role_code(status.role)),
            command_bytes_max: cfg.replica.command_bytes_max,
            snapshot_reports: parking_lot::Mutex::new(Vec::new()),
            snapshots_waiting: parking_lot::Mutex::new(Vec::new()),
            builds_done: parking_lot::Mutex::new(Vec::new()),
            restores_done: parking_lot::Mutex::new(Vec::new()),
            files: replica.snapshot_files(),
            pool: std::sync::OnceLock::new(),
        });
        Ok(Driver {
            replica,
            transport,
            shared,
            slots: PendingRequests::default(),
            next_request: 1,
            out: Output::default(),
            inputs: VecDeque::new(),
            in_flight: None,
            next_tick: Instant::now() + cfg.tick_interval,
            tick_interval: cfg.tick_interval,
            catch_up_ticks_max: cfg.catch_up_ticks_max.max(1),
            mailbox_inputs_max: cfg.mailbox_inputs_max.max(1),
            turn_began: Instant::now(),
            last_inputs: 0,
            node_gauges: false,
            more: false,
            seen: Seen::default(),
            status,
            histograms: telemetry::CommitHistograms::default(),
        })
    }

    /// Moves the first tick to `at` (a pool's grid), before the first turn.
    pub(super) fn set_first_tick(&mut self, at: Instant) {
        self.next_tick = at;
    }

    /// One turn: drain the whole mailbox into the replica (waiting up to `wait`
    /// for the first input, or until the next tick if sooner), take late
    /// snapshot reports, tick if due (at most `catch_up_ticks_max` ticks back
    /// to back), run Ready cycles until none is left, publish the status.
    /// `Ok(false)` once the mailbox is closed and empty; an error stops the
    /// replica.
    pub(super) fn turn(&mut self, wait: Duration) -> Result<bool, ReplicaError> {
        // The last turn left work (a restore's backlog): take what arrived
        // and go on without waiting.
        let wait = if self.more { Duration::ZERO } else { wait };
        let until_tick = if wait.is_zero() {
            wait
        } else {
            self.next_tick.saturating_duration_since(Instant::now())
        };
        debug_assert!(self.inputs.is_empty() && self.in_flight.is_none());
        let mut inputs = Vec::from(std::mem::take(&mut self.inputs));
        if !self.shared.mailbox.drain(&mut inputs, wait.min(until_tick)) {
            self.inputs = VecDeque::from(inputs);
            return Ok(false);
        }
        self.last_inputs = inputs.len();
        self.turn_began = Instant::now();
        if self.node_gauges {
            // One replica per thread: its own gauges, set before the turn's
            // work so that a turn stuck in `sync` shows its own batch (a
            // pool's timer sets its replicas' aggregates instead).
            metrics::gauge!(telemetry::MAILBOX_DEPTH).set(self.last_inputs as f64);
            metrics::gauge!(telemetry::MAILBOX_CAPACITY).set(self.mailbox_inputs_max as f64);
        }
        // `VecDeque::from(Vec)` keeps the allocation; so does the way back
        // above once the deque is empty.
        self.inputs = VecDeque::from(inputs);
        // Snapshots that found the mailbox full go first, even before inputs
        // that arrived earlier (raft takes independent messages in any
        // order): the leader sends nothing past a snapshot before it hears
        // it was delivered. A push that found the mailbox full raised no
        // wake-up of its own; the mailbox's items or the next tick bring
        // this turn.
        let waiting = std::mem::take(&mut *self.shared.snapshots_waiting.lock());
        for message in waiting.into_iter().rev() {
            self.inputs.push_front(Input::Raft(message));
        }
        while let Some(input) = self.inputs.pop_front() {
            self.accept(input);
        }
        let late = std::mem::take(&mut *self.shared.snapshot_reports.lock());
        for (to, index, sent) in late {
            self.accept(Input::SnapshotSent(to, index, sent));
        }
        let now = Instant::now();
        let mut ticks = 0;
        while now >= self.next_tick {
            if ticks == self.catch_up_ticks_max {
                // The ticks beyond the limit are skipped by whole intervals, so
                // the next one stays on the grid (a pool's timer serves every
                // replica of a tick length with one wake).
                self.next_tick = next_on_grid(self.next_tick, self.tick_interval, now);
                break;
            }
            self.replica.tick();
            self.next_tick += self.tick_interval;
            ticks += 1;
            self.histograms.clear();
        }
        if let Err(e) = self.cycle() {
            tracing::error!(replica = self.shared.id, "node stopped: {e}");
            return Err(e);
        }
        // Written over the status published before the last change, whose
        // vectors it reuses: a turn allocates nothing for its status.
        self.replica.status_into(&mut self.status);
        let mut published = self.shared.status.lock();
        if *published != self.status {
            self.seen.observe(&published, &self.status);
            self.shared
                .role
                .store(role_code(self.status.role), Ordering::Release);
            std::mem::swap(&mut *published, &mut self.status);
        }
        Ok(true)
    }

    /// Closes the mailbox and fails what it held and every request the replica
    /// took but did not answer with [`RequestError::Stopped`].
    pub(super) fn finish(&mut self) {
        if let Some(slot) = self.in_flight.take() {
            let _ = slot.fill(Err(RequestError::Stopped));
        }
        for input in std::mem::take(&mut self.inputs) {
            fail_input(input, RequestError::Stopped);
        }
        for input in self.shared.mailbox.close() {
            fail_input(input, RequestError::Stopped);
        }
        for pending in std::mem::take(&mut self.slots).drain() {
            telemetry::failed(&RequestError::Stopped);
            let _ = pending.slot.fill(Err(RequestError::Stopped));
        }
        // A restore finished for a stopped replica: its machine is not kept
        // for as long as a handle lives (one still running drops its outcome
        // when it finds the mailbox closed, `Shared::snapshot_restored`).
        drop(std::mem::take(&mut *self.shared.restores_done.lock()));
    }

    fn accept(&mut self, input: Input) {
        self.in_flight = input_slot(&input).cloned();
        self.accept_input(input);
        self.in_flight = None;
    }

    fn accept_input(&mut self, input: Input) {
        let id = self.next_request;
        let (slot, kind, submitted) = match input {
            Input::Raft(m) => {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    metrics::counter!(telemetry::SNAPSHOTS_RECEIVED).increment(1);
                }
                if let Err(e) = self.replica.step(m) {
                    tracing::debug!("{e}");
                }
                return;
            }
            Input::TransferLeader(to) => {
                self.replica.transfer_leader(to);
                return;
            }
            Input::SnapshotJobDone => return,
            Input::SnapshotSent(to, index, sent) => {
                let (status, result) = match sent {
                    SnapshotSent::Written => (SnapshotStatus::Finish, "written"),
                    SnapshotSent::Failed => (SnapshotStatus::Failure, "failed"),
                };
                metrics::counter!(telemetry::SNAPSHOTS_SENT, "result" => result).increment(1);
                self.replica.report_snapshot(to, index, status);
                return;
            }
            Input::Propose(request, slot) => (slot, "command", self.replica.propose(id, request)),
            Input::RegisterSession(owner, slot) => {
                (slot, "session", self.replica.register_session_of(id, owner))
            }
            Input::Read(query, slot) => (slot, "read", self.replica.read(id, query)),
            Input::Membership(change, slot) => (
                slot,
                "membership",
                self.replica.change_membership(id, change),
            ),
            Input::StateDigest(slot) => (slot, "digest", self.replica.mark_state_digest(id)),
        };
        match submitted {
            Ok(()) => {
                self.next_request += 1;
                let since = Stopwatch::started_at(self.turn_began);
                self.slots.insert(id, Pending { slot, kind, since });
                debug_assert_eq!(self.slots.next_id(), Some(self.next_request));
            }
            Err(e) => {
                telemetry::refused(&e);
                let _ = slot.fill(Err(e));
            }
        }
    }

    fn cycle(&mut self) -> Result<(), ReplicaError> {
        let built = std::mem::take(&mut *self.shared.builds_done.lock());
        for (index, result) in built {
            self.out.clear();
            let result = self.replica.snapshot_built(index, result, &mut self.out);
            self.dispatch();
            result?;
        }
        let restored = std::mem::take(&mut *self.shared.restores_done.lock());
        for restored in restored {
            self.out.clear();
            let result = self.replica.snapshot_restored(restored, &mut self.out);
            self.dispatch();
            result?;
        }
        self.more = false;
        let mut backlog_steps = 0;
        while self.replica.has_ready() {
            if self.replica.applying_backlog() {
                // The rest of a restore's backlog waits for the next turn,
                // which comes at once: inputs (heartbeats, votes) are stepped
                // between its steps (R2-3).
                if backlog_steps == BACKLOG_STEPS_PER_TURN {
                    self.more = true;
                    break;
                }
                backlog_steps += 1;
            }
            self.out.clear();
            // A leader's appends leave before its sync, so that its fsync
            // overlaps its followers' (`Replica::handle_ready_sending`).
            let group = self.replica.group();
            let transport = &self.transport;
            let mut unreachable = Vec::new();
            let result = self
                .replica
                .handle_ready_sending(&mut self.out, &mut |messages| {
                    for message in messages {
                        let to = message.to;
                        if transport.send(Envelope { group, message }).is_err() {
                            unreachable.push(to);
                        }
                    }
                });
            for to in unreachable {
                self.replica.report_unreachable(to);
            }
            self.dispatch();
            result?;
        }
        Ok(())
    }

    /// Runs a streamed snapshot's build on a thread of its own; its outcome
    /// comes back through `Shared::builds_done`.
    fn start_build(&self, job: SnapshotBuild) {
        let shared = Arc::clone(&self.shared);
        let index = job.index();
        let spawned = std::thread::Builder::new()
            .name(format!("vf-snap-build-{}", self.shared.id))
            .spawn(move || {
                // A panicking view must not leave the replica waiting for an
                // outcome that never comes.
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| job.run()))
                    .unwrap_or(Err(SnapshotBuildError::Panicked));
                shared.snapshot_built(index, result);
            });
        if let Err(e) = spawned {
            self.shared
                .snapshot_built(index, Err(SnapshotBuildError::Start(e)));
        }
    }

    /// Runs a streamed snapshot's restore on a thread of its own; its outcome
    /// comes back through `Shared::restores_done`. If no thread starts, the
    /// restore is dropped unrun and the replica restores in place.
    fn start_restore(&self, job: SnapshotRestore) {
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name(format!("vf-snap-restore-{}", self.shared.id))
            .spawn(move || shared.snapshot_restored(job.run()));
        if let Err(e) = spawned {
            tracing::warn!(
                replica = self.shared.id,
                "no thread for the snapshot restore ({e}); restoring in place"
            );
            let _ = self.shared.push(Input::SnapshotJobDone);
        }
    }

    /// Sends a snapshot message: a streamed one with its file's chunks.
    fn send_snapshot(&mut self, envelope: Envelope) {
        let to = envelope.message.to;
        // raft pauses a peer it sent a snapshot to until told how the send
        // went: the transport says, once it has written it out (or failed),
        // through the node's mailbox.
        let shared = Arc::clone(&self.shared);
        let index = envelope.message.get_snapshot().get_metadata().index;
        let done: SnapshotDone = Box::new(move |sent| shared.report_snapshot(to, index, sent));
        let sent = match self.replica.snapshot_body(envelope.message.get_snapshot()) {
            Ok(None) => self.transport.send_snapshot(envelope, done),
            Ok(Some(body)) => self.transport.send_snapshot_stream(envelope, body, done),
            Err(e) => {
                // Its file is gone or failed its checks: take the snapshot
                // again rather than hold the peer back for good.
                tracing::warn!(
                    replica = self.shared.id,
                    to,
                    "cannot read the snapshot to send, taking it again: {e}"
                );
                self.replica.snapshot_unreadable();
                Err(TransportError::Unreachable(to))
            }
        };
        if let Err(e) = &sent {
            tracing::debug!(replica = self.shared.id, to, "snapshot not sent: {e}");
        }
        if sent.is_err() {
            metrics::counter!(telemetry::SNAPSHOTS_SENT, "result" => "failed").increment(1);
            self.replica.report_unreachable(to);
            self.replica
                .report_snapshot(to, index, SnapshotStatus::Failure);
        }
    }

    /// Sends the messages, answers the completions and starts the builds of
    /// one cycle's output.
    fn dispatch(&mut self) {
        for job in std::mem::take(&mut self.out.jobs) {
            self.start_build(job);
        }
        for job in std::mem::take(&mut self.out.restores) {
            self.start_restore(job);
        }
        let garbage = std::mem::take(&mut self.out.garbage);
        if !garbage.is_empty() {
            // A replaced machine can take as long to free as to build: not
            // on the replica's thread (inline only if no thread starts).
            let _ = std::thread::Builder::new()
                .name(format!("vf-drop-{}", self.shared.id))
                .spawn(move || drop(garbage));
        }
        {
            let group = self.replica.group();
            let messages = std::mem::take(&mut self.out.messages);
            for message in messages {
                let to = message.to;
                let envelope = Envelope { group, message };
                if envelope.message.get_msg_type() == MessageType::MsgSnapshot {
                    self.send_snapshot(envelope);
                } else if self.transport.send(envelope).is_err() {
                    self.replica.report_unreachable(to);
                }
            }
            // One clock read for every answer of this cycle, taken at the
            // first; the histograms are looked up again after each tick.
            let mut answered = None;
            for Completion { id, result } in self.out.completions.drain(..) {
                if let Some(pending) = self.slots.remove(id) {
                    match &result {
                        Ok(_) => pending.since.record_at(
                            *answered.get_or_insert_with(Instant::now),
                            self.histograms.of(pending.kind),
                        ),
                        Err(e) => telemetry::failed(e),
                    }
                    let _ = pending.slot.fill(result);
                }
            }
        }
    }
}

/// The first of `from + k * interval` (k >= 1) later than `now`.
fn next_on_grid(from: Instant, interval: Duration, now: Instant) -> Instant {
    let interval_ns = interval.as_nanos().max(1);
    let behind = now.saturating_duration_since(from).as_nanos();
    let skipped = u32::try_from(behind / interval_ns + 1).unwrap_or(u32::MAX);
    interval
        .checked_mul(skipped)
        .and_then(|d| from.checked_add(d))
        .unwrap_or(now + interval)
}

fn run<L: LogStore, S: StateMachine>(mut driver: Driver<L, S>) -> Result<(), ReplicaError> {
    // If raft-rs panics (its `fatal!` on an impossible state), close the mailbox so
    // clients fail fast with `Stopped` instead of waiting on a dead node.
    struct CloseOnExit(Arc<Shared>);
    impl Drop for CloseOnExit {
        fn drop(&mut self) {
            for input in self.0.mailbox.close() {
                fail_input(input, RequestError::Stopped);
            }
        }
    }
    let _close_on_exit = CloseOnExit(Arc::clone(&driver.shared));
    let id = driver.shared.id;
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| loop {
        // Waits for inputs until the next tick is due.
        match driver.turn(Duration::MAX) {
            Ok(true) => {}
            Ok(false) => break Ok(()),
            Err(e) => break Err(e),
        }
    }));
    let result = outcome.unwrap_or_else(|_| {
        tracing::error!(replica = id, "replica panicked in its turn; stopped");
        Err(ReplicaError::Failed { id })
    });
    // After a panic too: the batch's rest and every request the replica took
    // fail with `Stopped` (the replica may be broken, so contain a second panic).
    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| driver.finish()));
    result
}

/// What the node saw of elections and leaderships, for the counters of
/// campaigns started and leaderships begun.
#[derive(Default)]
struct Seen {
    /// The last leader known, with its term.
    leadership: Option<(ReplicaId, u64)>,
}

impl Seen {
    /// Counts what changed from `old` to `new` (two published statuses).
    fn observe(&mut self, old: &Status, new: &Status) {
        use raft::StateRole;
        let new_term = old.term != new.term;
        let campaign = match new.role {
            StateRole::PreCandidate if old.role != StateRole::PreCandidate || new_term => {
                Some("pre_vote")
            }
            // A campaign starts a term; one won within a single turn (a lone
            // voter) is seen as a leader in a new term.
            StateRole::Candidate | StateRole::Leader if new_term => Some("vote"),
            _ => None,
        };
        if let Some(stage) = campaign {
            metrics::counter!(telemetry::ELECTIONS_STARTED, "stage" => stage).increment(1);
        }
        if let Some(leader) = new.leader {
            let leadership = (leader, new.term);
            if self.leadership != Some(leadership) {
                self.leadership = Some(leadership);
                metrics::counter!(telemetry::LEADER_CHANGES).increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The ring of pending requests against a map, over answers in every
    /// order (in order, reversed, one held back).
    #[test]
    fn pending_requests_behave_as_a_map() {
        let orders: [Vec<u64>; 4] = [
            (1..=50).collect(),
            (1..=50).rev().collect(),
            (2..=50).chain([1]).collect(),
            (1..=50).map(|i| (i * 17) % 50 + 1).collect(),
        ];
        for order in orders {
            let mut ring = PendingRequests::default();
            let mut map = BTreeMap::new();
            for id in 1..=50u64 {
                ring.insert(id, id * 10);
                map.insert(id, id * 10);
            }
            assert_eq!(ring.remove(0), None);
            assert_eq!(ring.remove(51), None);
            for (k, &id) in order.iter().enumerate() {
                assert_eq!(ring.remove(id), map.remove(&id), "id {id}");
                assert_eq!(ring.remove(id), None, "answered twice");
                if k == 25 {
                    // New requests while some are still pending.
                    for new in 51..=53 {
                        ring.insert(new, new * 10);
                        map.insert(new, new * 10);
                    }
                }
            }
            let left: Vec<u64> = ring.drain().collect();
            assert_eq!(left, map.into_values().collect::<Vec<_>>());
        }
        // Skipped ids leave no entry behind.
        let mut ring = PendingRequests::default();
        ring.insert(5, 'a');
        ring.insert(8, 'b');
        assert_eq!(ring.remove(6), None);
        assert_eq!(ring.remove(5), Some('a'));
        assert_eq!(ring.ring.len(), 1, "the front advanced past the holes");
        assert_eq!(ring.remove(8), Some('b'));
        assert!(ring.ring.is_empty());
        // Review finding: one request held back while many are answered grew
        // the ring for good; its room is given back once it drains.
        let mut ring = PendingRequests::default();
        for id in 1..=100_000u64 {
            ring.insert(id, id);
        }
        for id in 2..=100_000u64 {
            assert_eq!(ring.remove(id), Some(id));
        }
        assert_eq!(ring.remove(1), Some(1));
        assert!(ring.ring.is_empty());
        assert!(
            ring.ring.capacity() <= 2 * RING_KEPT,
            "capacity {} kept after the spike",
            ring.ring.capacity()
        );
    }

    /// A streamed snapshot that finds the mailbox full waits beside it (at
    /// most `SNAPSHOTS_WAITING_MAX`) and is stepped at the next turn, before
    /// what the mailbox held: it crossed the network whole, and dropping it
    /// would make the leader send it all again (review 3, MEDIUM-3).
    #[test]
    fn a_snapshot_that_finds_the_mailbox_full_is_stepped_at_the_next_turn() {
        struct Quiet;
        impl Transport for Quiet {
            fn send(&self, _envelope: Envelope) -> Result<(), TransportError> {
                Ok(())
            }
        }
        let fleet = crate::FleetConfig::new(vec![
            crate::MemberSpec::voter(1, "dc-a"),
            crate::MemberSpec::voter(2, "dc-b"),
            crate::MemberSpec::voter(3, "dc-c"),
        ]);
        let mut log = crate::MemLog::new();
        Replica::bootstrap(&mut log, &crate::KvStore::default(), &fleet).expect("bootstrap");
        let mut cfg = NodeConfig::new(ReplicaConfig::new(1));
        cfg.mailbox_inputs_max = 2;
        let mut driver =
            Driver::new(&cfg, log, crate::KvStore::default(), Arc::new(Quiet)).expect("driver");
        let handle = NodeHandle {
            shared: Arc::clone(&driver.shared),
        };
        while handle.transfer_leader(2).is_ok() {}
        // A snapshot from a replica that is not this one's leader: the replica
        // refuses it, which shows it was stepped.
        let snapshot = || {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgSnapshot);
            m.from = 2;
            m.to = 1;
            m.term = 2;
            m.mut_snapshot().mut_metadata().index = 10;
            m.mut_snapshot().mut_metadata().term = 2;
            Envelope {
                group: 1,
                message: m,
            }
        };
        for _ in 0..SNAPSHOTS_WAITING_MAX {
            assert_eq!(handle.deliver_snapshot(snapshot()), Ok(()));
        }
        assert_eq!(handle.deliver_snapshot(snapshot()), Err(Dropped));
        let refused = driver.replica.messages_refused();
        assert!(driver.turn(Duration::ZERO).expect("turn"));
        assert!(driver.shared.snapshots_waiting.lock().is_empty());
        assert_eq!(
            driver.replica.messages_refused() - refused,
            SNAPSHOTS_WAITING_MAX as u64,
            "the waiting snapshots were stepped"
        );
    }

    #[test]
    fn p6_a_catch_up_skips_ticks_by_whole_intervals() {
        let from = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(next_on_grid(from, ms(10), from + ms(35)), from + ms(40));
        assert_eq!(next_on_grid(from, ms(10), from + ms(40)), from + ms(50));
        assert_eq!(next_on_grid(from, ms(10), from), from + ms(10));
        // A zero interval never loops or divides by zero.
        assert!(next_on_grid(from, Duration::ZERO, from + ms(1)) >= from);
    }
}
