//! `Node`: one thread that drives one [`Replica`] for real — wall-clock ticks, the
//! mailbox, the log store's durability point and the transport.
//!
//! The loop: wait for inputs until the next tick is due; drain the whole mailbox
//! into the replica; tick if due; run Ready cycles until none is left, sending
//! messages and filling response slots. Everything that arrived during one cycle
//! is persisted by the next cycle's single `sync` (group commit).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex as StatusLock;
use raft::prelude::{Message, MessageType};
use raft::SnapshotStatus;

use super::mailbox::{Mailbox, PushError};
use super::slot::Slot;
use super::telemetry::{self, Stopwatch};
use crate::replica::{
    Completion, MembershipChange, Output, Replica, ReplicaConfig, ReplicaError, Reply,
    RequestError, RequestId, Status,
};
use crate::state_machine::StateMachine;
use crate::storage::LogStore;
use crate::transport::{Envelope, Inbox, SnapshotDone, SnapshotSent, Transport};
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

pub(crate) enum Input {
    Raft(Message),
    Propose(Request, ResponseSlot),
    RegisterSession(Vec<u8>, ResponseSlot),
    Read(Vec<u8>, ResponseSlot),
    Membership(MembershipChange, ResponseSlot),
    StateDigest(ResponseSlot),
    TransferLeader(ReplicaId),
    /// How the send of a snapshot to a peer ended (from its transport).
    SnapshotSent(ReplicaId, SnapshotSent),
}

struct Shared {
    id: ReplicaId,
    group: u64,
    mailbox: Mailbox<Input>,
    status: StatusLock<Status>,
    /// The replica's `command_bytes_max` (fixed at spawn).
    command_bytes_max: usize,
    /// Snapshot outcomes that found the mailbox full: never lost (raft holds
    /// the peer back until it hears one), taken by the node on its next turn.
    snapshot_reports: parking_lot::Mutex<Vec<(ReplicaId, SnapshotSent)>>,
}

impl Shared {
    fn report_snapshot(&self, to: ReplicaId, sent: SnapshotSent) {
        match self.mailbox.push(Input::SnapshotSent(to, sent)) {
            Ok(()) | Err(PushError::Closed(_)) => {}
            Err(PushError::Full(_)) => self.snapshot_reports.lock().push((to, sent)),
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
        self.shared.status.lock().role
    }

    /// True once the node stopped.
    pub fn is_stopped(&self) -> bool {
        self.shared.mailbox.is_closed()
    }

    fn submit(&self, input: Input) -> Result<(), RequestError> {
        self.shared.mailbox.push(input).map_err(|e| {
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

    /// Asks this node, if leader, to hand leadership to `to`.
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
        let _ = self.shared.mailbox.push(Input::Raft(envelope.message));
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
        let replica = Replica::new(cfg.replica.clone(), store, machine)?;
        let shared = Arc::new(Shared {
            id: replica.id(),
            group: replica.group(),
            mailbox: Mailbox::new(cfg.mailbox_inputs_max),
            status: StatusLock::new(replica.status()),
            command_bytes_max: cfg.replica.command_bytes_max,
            snapshot_reports: parking_lot::Mutex::new(Vec::new()),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("vaultfleet-node-{}", replica.id()))
            .spawn(move || run(cfg, replica, &thread_shared, transport.as_ref()))
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

fn fail_input(input: Input, error: RequestError) {
    match input {
        Input::Propose(_, slot)
        | Input::RegisterSession(_, slot)
        | Input::Read(_, slot)
        | Input::Membership(_, slot)
        | Input::StateDigest(slot) => {
            let _ = slot.fill(Err(error));
        }
        Input::Raft(_) | Input::TransferLeader(_) | Input::SnapshotSent(..) => {}
    }
}

/// A request the replica took: where its outcome goes, and since when it waits
/// (for [`telemetry::COMMIT_SECONDS`]).
struct Pending {
    slot: ResponseSlot,
    kind: &'static str,
    since: Stopwatch,
}

struct Driver<'a, L: LogStore, S: StateMachine> {
    replica: Replica<L, S>,
    transport: &'a dyn Transport,
    shared: Arc<Shared>,
    slots: BTreeMap<RequestId, Pending>,
    next_request: RequestId,
    out: Output,
}

impl<L: LogStore, S: StateMachine> Driver<'_, L, S> {
    fn accept(&mut self, input: Input) {
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
            Input::SnapshotSent(to, sent) => {
                let (status, result) = match sent {
                    SnapshotSent::Written => (SnapshotStatus::Finish, "written"),
                    SnapshotSent::Failed => (SnapshotStatus::Failure, "failed"),
                };
                metrics::counter!(telemetry::SNAPSHOTS_SENT, "result" => result).increment(1);
                self.replica.report_snapshot(to, status);
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
                let since = Stopwatch::start();
                self.slots.insert(id, Pending { slot, kind, since });
            }
            Err(e) => {
                telemetry::refused(&e);
                let _ = slot.fill(Err(e));
            }
        }
    }

    fn cycle(&mut self) -> Result<(), ReplicaError> {
        while self.replica.has_ready() {
            self.out.clear();
            let result = self.replica.handle_ready(&mut self.out);
            let group = self.replica.group();
            for message in self.out.messages.drain(..) {
                let to = message.to;
                let envelope = Envelope { group, message };
                if envelope.message.get_msg_type() == MessageType::MsgSnapshot {
                    // raft pauses a peer it sent a snapshot to until told how the
                    // send went: the transport says, once it has written it out
                    // (or failed), through the node's mailbox.
                    let shared = Arc::clone(&self.shared);
                    let done: SnapshotDone = Box::new(move |sent| shared.report_snapshot(to, sent));
                    if self.transport.send_snapshot(envelope, done).is_err() {
                        metrics::counter!(telemetry::SNAPSHOTS_SENT, "result" => "failed")
                            .increment(1);
                        self.replica.report_unreachable(to);
                        self.replica.report_snapshot(to, SnapshotStatus::Failure);
                    }
                } else if self.transport.send(envelope).is_err() {
                    self.replica.report_unreachable(to);
                }
            }
            for Completion { id, result } in self.out.completions.drain(..) {
                if let Some(pending) = self.slots.remove(&id) {
                    match &result {
                        Ok(_) => pending.since.record_labelled(
                            telemetry::COMMIT_SECONDS,
                            "kind",
                            pending.kind,
                        ),
                        Err(e) => telemetry::failed(e),
                    }
                    let _ = pending.slot.fill(result);
                }
            }
            result?;
        }
        Ok(())
    }
}

fn run<L: LogStore, S: StateMachine>(
    cfg: NodeConfig,
    replica: Replica<L, S>,
    shared: &Arc<Shared>,
    transport: &dyn Transport,
) -> Result<(), ReplicaError> {
    let mut driver = Driver {
        replica,
        transport,
        shared: Arc::clone(shared),
        slots: BTreeMap::new(),
        next_request: 1,
        out: Output::default(),
    };
    // If raft-rs panics (its `fatal!` on an impossible state), close the mailbox so
    // clients fail fast with `Stopped` instead of waiting on a dead node.
    struct CloseOnExit<'a>(&'a Shared);
    impl Drop for CloseOnExit<'_> {
        fn drop(&mut self) {
            for input in self.0.mailbox.close() {
                fail_input(input, RequestError::Stopped);
            }
        }
    }
    let _close_on_exit = CloseOnExit(shared.as_ref());
    let catch_up_ticks_max = cfg.catch_up_ticks_max.max(1);
    let mut seen = Seen::default();
    let mut inputs = Vec::new();
    let mut next_tick = Instant::now() + cfg.tick_interval;
    let result = loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        if !shared.mailbox.drain(&mut inputs, wait) {
            break Ok(());
        }
        metrics::gauge!(telemetry::MAILBOX_DEPTH).set(inputs.len() as f64);
        metrics::gauge!(telemetry::MAILBOX_CAPACITY).set(cfg.mailbox_inputs_max.max(1) as f64);
        for input in inputs.drain(..) {
            driver.accept(input);
        }
        let late = std::mem::take(&mut *shared.snapshot_reports.lock());
        for (to, sent) in late {
            driver.accept(Input::SnapshotSent(to, sent));
        }
        let now = Instant::now();
        let mut ticks = 0;
        while now >= next_tick {
            if ticks == catch_up_ticks_max {
                next_tick = now + cfg.tick_interval;
                break;
            }
            driver.replica.tick();
            next_tick += cfg.tick_interval;
            ticks += 1;
        }
        if let Err(e) = driver.cycle() {
            tracing::error!(replica = shared.id, "node stopped: {e}");
            break Err(e);
        }
        let status = driver.replica.status();
        let mut published = shared.status.lock();
        if *published != status {
            seen.observe(&published, &status);
            *published = status;
        }
    };
    for input in shared.mailbox.close() {
        fail_input(input, RequestError::Stopped);
    }
    for (_, pending) in std::mem::take(&mut driver.slots) {
        telemetry::failed(&RequestError::Stopped);
        let _ = pending.slot.fill(Err(RequestError::Stopped));
    }
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
