//! A deterministic harness for the replica core, after raft-rs's
//! `harness/src/network.rs` and quinn's `tests/util.rs` `Pair`: a [`Network`] of
//! [`Replica`]s on [`MemLog`] with [`KvStore`], driven by explicit ticks and
//! explicit message delivery. No threads, no clocks, no sleeps: a test decides
//! which replica ticks, which messages arrive and which are lost, so a core path
//! that only the randomized simulator reaches can be walked step by step.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use vaultfleet::replica::{
    Completion, Output, Reply, RequestId, SnapshotBuild, SnapshotRestore, Status,
};
use vaultfleet::storage::SnapshotFilesHost as _;
use vaultfleet::wire::Request;
use vaultfleet::{
    FleetConfig, KvStore, MemLog, MemberSpec, Replica, ReplicaConfig, ReplicaError, RequestError,
    StateMachine,
};

use raft::prelude::Message;

/// Rounds [`Network::settle`] runs before it declares the network livelocked.
pub const SETTLE_ROUNDS_MAX: usize = 1_000;
/// Ticks [`Network::elect`] gives a replica to win an election.
pub const ELECTION_TICKS_MAX: usize = 200;

/// The replica type under test.
pub type CoreReplica<M = KvStore> = Replica<MemLog, M>;

/// Replicas, the messages in flight between them, and the links that are cut.
pub struct Network<M: StateMachine = KvStore> {
    /// The replicas, by id.
    pub replicas: BTreeMap<u64, CoreReplica<M>>,
    /// Messages sent and not yet delivered or dropped, in send order.
    pub in_flight: VecDeque<Message>,
    /// Directed links (from, to) that lose every message.
    cut: BTreeSet<(u64, u64)>,
    /// Outcomes of requests, by request id, as replicas reported them.
    completions: BTreeMap<RequestId, (u64, Result<Reply, RequestError>)>,
    /// Replicas that stopped, with the error they stopped on.
    pub failures: BTreeMap<u64, ReplicaError>,
    request_next: RequestId,
    output: Output,
    /// Snapshot restores the replicas handed out, by replica, not yet run:
    /// a test runs, holds or drops each ([`Network::run_restores`]).
    pub restores: Vec<(u64, SnapshotRestore)>,
    /// Whether [`Network::cycle`] runs snapshot builds (made by
    /// [`Network::with_files`]); otherwise they are dropped unrun.
    run_builds: bool,
    /// With `run_builds`: builds wait in [`Network::builds`] instead of
    /// running at once; a test runs them ([`Network::run_builds_of`]).
    pub hold_builds: bool,
    /// Snapshot builds held, by replica (see `hold_builds`).
    pub builds: Vec<(u64, SnapshotBuild)>,
    /// The longest `heartbeat_ticks` the replicas were built with: bounds
    /// [`Network::heartbeat`].
    heartbeat_ticks: usize,
}

/// Settings the core tests use unless they say otherwise: small snapshots, so a
/// handful of entries compacts the log.
pub fn test_config(id: u64) -> ReplicaConfig {
    let mut cfg = ReplicaConfig::new(id);
    cfg.election_ticks = 10;
    cfg.heartbeat_ticks = 2;
    cfg.request_ticks_max = 1_000;
    cfg.leader_rebalance_ticks = 0;
    cfg
}

impl Network<KvStore> {
    /// A new fleet of voters `ids` (one datacenter each) replicating a
    /// [`KvStore`], bootstrapped and started with `configure` applied to each
    /// replica's settings.
    pub fn new(ids: &[u64], configure: impl Fn(&mut ReplicaConfig)) -> Self {
        Network::with_machine(ids, configure, KvStore::new)
    }
}

impl<M: StateMachine> Network<M> {
    /// A new fleet of voters `ids` replicating the machine `make` builds.
    pub fn with_machine(
        ids: &[u64],
        configure: impl Fn(&mut ReplicaConfig),
        make: fn() -> M,
    ) -> Self {
        let fleet = FleetConfig::new(
            ids.iter()
                .map(|&id| MemberSpec::voter(id, format!("dc-{id}")))
                .collect(),
        );
        Network::with_fleet(&fleet, configure, make)
    }

    /// A new fleet bootstrapped with `fleet` (its members and its replicated
    /// settings), every member started with `configure` applied.
    pub fn with_fleet(
        fleet: &FleetConfig,
        configure: impl Fn(&mut ReplicaConfig),
        make: fn() -> M,
    ) -> Self {
        Network::with_fleet_prepared(fleet, |_| {}, configure, make)
    }

    /// Like [`Network::with_fleet`], with `prepare` applied to each store
    /// after its bootstrap (e.g. to make it look like an older build's).
    pub fn with_fleet_prepared(
        fleet: &FleetConfig,
        prepare: impl Fn(&mut MemLog),
        configure: impl Fn(&mut ReplicaConfig),
        make: fn() -> M,
    ) -> Self {
        Network::build(fleet, |_, store| prepare(store), configure, make)
    }

    fn build(
        fleet: &FleetConfig,
        prepare: impl Fn(u64, &mut MemLog),
        configure: impl Fn(&mut ReplicaConfig),
        make: fn() -> M,
    ) -> Self {
        let ids = fleet.voters();
        let mut heartbeat_ticks = 0;
        let replicas = ids
            .iter()
            .map(|&id| {
                let mut store = MemLog::new();
                assert!(Replica::bootstrap(&mut store, &make(), fleet).expect("bootstrap"));
                prepare(id, &mut store);
                let mut cfg = test_config(id);
                configure(&mut cfg);
                heartbeat_ticks = heartbeat_ticks.max(cfg.heartbeat_ticks);
                let replica = Replica::new(cfg, store, make()).expect("start replica");
                (id, replica)
            })
            .collect();
        Self {
            replicas,
            in_flight: VecDeque::new(),
            cut: BTreeSet::new(),
            completions: BTreeMap::new(),
            failures: BTreeMap::new(),
            request_next: 1,
            output: Output::default(),
            restores: Vec::new(),
            run_builds: false,
            hold_builds: false,
            builds: Vec::new(),
            heartbeat_ticks,
        }
    }

    /// Like [`Network::with_fleet`], every store keeping snapshot files in
    /// memory: snapshots are streamed, built at once by [`Network::cycle`]
    /// and copied to their receiver's files on delivery; restores wait in
    /// [`Network::restores`].
    pub fn with_files(
        fleet: &FleetConfig,
        configure: impl Fn(&mut ReplicaConfig),
        make: fn() -> M,
    ) -> Self {
        let files = |id, store: &mut MemLog| {
            store.open_snapshot_files(id, None).expect("snapshot files");
        };
        let mut net = Network::build(fleet, files, configure, make);
        net.run_builds = true;
        net
    }

    /// Runs the restores replica `id` handed out and hands it their outcomes.
    pub fn run_restores(&mut self, id: u64) {
        let (mine, others) = std::mem::take(&mut self.restores)
            .into_iter()
            .partition::<Vec<_>, _>(|(r, _)| *r == id);
        self.restores = others;
        for (_, job) in mine {
            let restored = job.run();
            let replica = self.replicas.get_mut(&id).expect("no such replica");
            self.output.clear();
            if let Err(e) = replica.snapshot_restored(restored, &mut self.output) {
                self.failures.insert(id, e);
            }
            self.take_output(id);
        }
    }

    /// Runs the builds replica `id` handed out that are held, and hands it
    /// their outcomes.
    pub fn run_builds_of(&mut self, id: u64) {
        let (mine, others) = std::mem::take(&mut self.builds)
            .into_iter()
            .partition::<Vec<_>, _>(|(r, _)| *r == id);
        self.builds = others;
        for (_, job) in mine {
            let (index, result) = (job.index(), job.run());
            let replica = self.replicas.get_mut(&id).expect("no such replica");
            self.output.clear();
            if let Err(e) = replica.snapshot_built(index, result, &mut self.output) {
                self.failures.insert(id, e);
            }
            self.take_output(id);
        }
    }

    fn take_output(&mut self, id: u64) {
        self.in_flight.extend(self.output.messages.drain(..));
        for Completion {
            id: request,
            result,
        } in self.output.completions.drain(..)
        {
            let previous = self.completions.insert(request, (id, result));
            assert!(previous.is_none(), "request {request} completed twice");
        }
        self.restores
            .extend(self.output.restores.drain(..).map(|job| (id, job)));
    }

    /// Replica `id`.
    pub fn replica(&self, id: u64) -> &CoreReplica<M> {
        &self.replicas[&id]
    }

    /// Replica `id`, mutably (to call `propose`, `read`, `step` directly).
    pub fn replica_mut(&mut self, id: u64) -> &mut CoreReplica<M> {
        self.replicas.get_mut(&id).expect("no such replica")
    }

    /// Replica `id`'s status.
    pub fn status(&self, id: u64) -> Status {
        self.replica(id).status()
    }

    /// The ids of every replica.
    pub fn ids(&self) -> Vec<u64> {
        self.replicas.keys().copied().collect()
    }

    // ---- faults ----------------------------------------------------------

    /// Cuts both directions between `a` and `b`.
    pub fn cut(&mut self, a: u64, b: u64) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    /// Cuts `id` off from every other replica.
    pub fn isolate(&mut self, id: u64) {
        for other in self.ids() {
            if other != id {
                self.cut(id, other);
            }
        }
    }

    /// Heals every link.
    pub fn recover(&mut self) {
        self.cut.clear();
    }

    /// Drops every message in flight.
    pub fn drop_in_flight(&mut self) {
        self.in_flight.clear();
    }

    // ---- time and Ready cycles ---------------------------------------------

    /// One tick of replica `id`'s logical clock.
    pub fn tick(&mut self, id: u64) {
        self.replica_mut(id).tick();
    }

    /// Runs one Ready cycle of replica `id`: its messages join the in-flight
    /// queue, its completions are recorded.
    pub fn cycle(&mut self, id: u64) {
        let replica = self.replicas.get_mut(&id).expect("no such replica");
        if replica.has_failed() {
            return;
        }
        self.output.clear();
        if let Err(e) = replica.handle_ready(&mut self.output) {
            self.failures.insert(id, e);
        }
        let builds: Vec<_> = self.output.jobs.drain(..).collect();
        let builds = match (self.run_builds, self.hold_builds) {
            (true, false) => builds,
            (true, true) => {
                self.builds.extend(builds.into_iter().map(|job| (id, job)));
                Vec::new()
            }
            (false, _) => Vec::new(),
        };
        self.take_output(id);
        // Streamed snapshots are written at once and reported at once.
        for job in builds {
            let (index, result) = (job.index(), job.run());
            let replica = self.replicas.get_mut(&id).expect("no such replica");
            self.output.clear();
            if let Err(e) = replica.snapshot_built(index, result, &mut self.output) {
                self.failures.insert(id, e);
            }
            self.take_output(id);
        }
    }

    /// Runs a Ready cycle on every replica.
    pub fn cycle_all(&mut self) {
        for id in self.ids() {
            self.cycle(id);
        }
    }

    /// Delivers the oldest message in flight (dropping it if its link is cut).
    /// Returns false when none is left.
    pub fn deliver_one(&mut self) -> bool {
        let Some(message) = self.in_flight.pop_front() else {
            return false;
        };
        if !self.cut.contains(&(message.from, message.to)) {
            self.copy_snapshot_file(&message);
            if let Some(to) = self.replicas.get_mut(&message.to) {
                // A refused message is dropped, as a driver would drop it.
                let _ = to.step(message);
            }
        }
        true
    }

    /// A streamed snapshot's file goes from its sender's files to its
    /// receiver's before the message (as a transport does).
    fn copy_snapshot_file(&self, message: &Message) {
        if message.get_msg_type() != raft::prelude::MessageType::MsgSnapshot {
            return;
        }
        let (Some(from), Some(to)) = (
            self.replicas.get(&message.from),
            self.replicas.get(&message.to),
        ) else {
            return;
        };
        let (Ok(Some(body)), Some(files)) = (
            from.snapshot_body(message.get_snapshot()),
            to.snapshot_files(),
        ) else {
            return;
        };
        vaultfleet::snapshot::copy_snapshot(body, &*files, || true)
            .expect("copy the snapshot file");
    }

    /// Delivers the messages in flight that `select` picks, keeping the others
    /// in flight in their order.
    pub fn deliver_where(&mut self, select: impl Fn(&Message) -> bool) {
        let (picked, kept): (VecDeque<_>, VecDeque<_>) =
            self.in_flight.drain(..).partition(|m| select(m));
        self.in_flight = picked;
        while self.deliver_one() {}
        self.in_flight = kept;
    }

    /// Delivers messages and runs Ready cycles until nothing is in flight and no
    /// replica has work. Time does not move.
    pub fn settle(&mut self) {
        for _ in 0..SETTLE_ROUNDS_MAX {
            self.cycle_all();
            if self.in_flight.is_empty() && !self.replicas.values().any(|r| r.has_ready()) {
                return;
            }
            while self.deliver_one() {}
        }
        panic!("the network did not settle in {SETTLE_ROUNDS_MAX} rounds");
    }

    /// Like [`Network::settle`], but stops as soon as `done` holds (checked after
    /// every delivery and cycle), leaving the rest in flight.
    pub fn run_until(&mut self, done: impl Fn(&Self) -> bool) -> bool {
        for _ in 0..SETTLE_ROUNDS_MAX {
            if done(self) {
                return true;
            }
            for id in self.ids() {
                self.cycle(id);
                if done(self) {
                    return true;
                }
            }
            if self.in_flight.is_empty() {
                return done(self);
            }
            while !self.in_flight.is_empty() {
                self.deliver_one();
                if done(self) {
                    return true;
                }
            }
        }
        done(self)
    }

    /// Ticks the replicas `ids` (and only them), settling after each round, until
    /// one of them leads in a term above `term_above`. Returns the leader.
    pub fn elect_among(&mut self, ids: &[u64], term_above: u64) -> u64 {
        for _ in 0..ELECTION_TICKS_MAX {
            for &id in ids {
                self.tick(id);
            }
            self.settle();
            if let Some(&leader) = ids.iter().find(|&&id| {
                let s = self.status(id);
                s.leader == Some(id) && s.term > term_above
            }) {
                return leader;
            }
        }
        panic!("no leader among {ids:?} after {ELECTION_TICKS_MAX} ticks");
    }

    /// Ticks only replica `id` until it leads (the others do not tick, so only it
    /// times out), then settles so it commits its first entry. Returns its term.
    pub fn elect(&mut self, id: u64) -> u64 {
        for _ in 0..ELECTION_TICKS_MAX {
            self.tick(id);
            self.settle();
            if self.replica(id).is_leader() {
                return self.status(id).term;
            }
        }
        panic!("replica {id} did not win an election in {ELECTION_TICKS_MAX} ticks");
    }

    /// Ticks `leader` alone, settling after each tick, until every member it
    /// can reach (not cut off from it, not stopped) has its commit index, and
    /// panics if two heartbeats do not bring it (the second for a follower
    /// whose replicated index lagged: its answer to the first draws the
    /// append). Commits are not broadcast (`skip_bcast_commit`): a follower
    /// learns the last one from the next append or heartbeat, and
    /// [`Network::settle`] does not move time.
    pub fn heartbeat(&mut self, leader: u64) {
        assert!(
            self.replica(leader).is_leader(),
            "replica {leader} does not lead: {:?}",
            self.status(leader)
        );
        let ticks_max = 2 * self.heartbeat_ticks;
        let behind = |net: &Self| -> Vec<(u64, u64)> {
            let status = net.status(leader);
            status
                .voters
                .iter()
                .chain(&status.learners)
                .copied()
                .filter(|&id| {
                    id != leader
                        && !net.cut.contains(&(leader, id))
                        && net.replicas.get(&id).is_some_and(|r| !r.has_failed())
                })
                .map(|id| (id, net.status(id).commit))
                .filter(|&(_, commit)| commit < status.commit)
                .collect()
        };
        for _ in 0..ticks_max {
            if behind(self).is_empty() {
                return;
            }
            self.tick(leader);
            self.settle();
        }
        let behind = behind(self);
        assert!(
            behind.is_empty(),
            "{ticks_max} ticks of {leader} did not bring its commit {} to \
             (replica, commit) {behind:?}",
            self.status(leader).commit
        );
    }

    /// Ticks every replica not cut off `n` times, settling after each tick.
    pub fn tick_all(&mut self, n: usize) {
        for _ in 0..n {
            for id in self.ids() {
                self.tick(id);
            }
            self.settle();
        }
    }

    // ---- requests ----------------------------------------------------------

    fn request_id(&mut self) -> RequestId {
        let id = self.request_next;
        self.request_next += 1;
        id
    }

    /// Registers a client session through `leader` and settles; returns its id.
    pub fn register(&mut self, leader: u64) -> u64 {
        let request = self.request_id();
        self.replica_mut(leader)
            .register_session(request)
            .expect("register on the leader");
        self.settle();
        match self.take(request) {
            Some(Ok(Reply::SessionRegistered(client))) => client,
            other => panic!("registration answered {other:?}"),
        }
    }

    /// Queues command `command` of session `client` at `sequence` on `at`.
    pub fn propose(
        &mut self,
        at: u64,
        client: u64,
        sequence: u64,
        acked_below: u64,
        command: Vec<u8>,
    ) -> Result<RequestId, RequestError> {
        let mut r = Request::new();
        r.client_id = client;
        r.sequence = sequence;
        r.acked_below = acked_below;
        r.command = command.into();
        let request = self.request_id();
        self.replica_mut(at).propose(request, r)?;
        Ok(request)
    }

    /// Queues a linearizable read on `at`.
    pub fn read(&mut self, at: u64, query: Vec<u8>) -> Result<RequestId, RequestError> {
        let request = self.request_id();
        self.replica_mut(at).read(request, query)?;
        Ok(request)
    }

    /// The outcome of `request`, if it completed (removing it).
    pub fn take(&mut self, request: RequestId) -> Option<Result<Reply, RequestError>> {
        self.completions.remove(&request).map(|(_, r)| r)
    }

    /// True when `request` completed.
    pub fn completed(&self, request: RequestId) -> bool {
        self.completions.contains_key(&request)
    }

    /// Which replica answered `request`.
    pub fn answered_by(&self, request: RequestId) -> Option<u64> {
        self.completions.get(&request).map(|(by, _)| *by)
    }
}

/// The decoded value of a kv response (`None`: absent).
pub fn kv_value(reply: &Result<Reply, RequestError>) -> Option<Vec<u8>> {
    let bytes: &[u8] = match reply {
        Ok(Reply::Applied(b)) => b,
        Ok(Reply::Read(b)) => b,
        other => panic!("expected a kv response, got {other:?}"),
    };
    KvStore::decode_response(bytes).expect("a kv response")
}

/// A leader's announcement number `number` of a transfer to `transferee`
/// (its id's 8 bytes, or any bytes to test a malformed one), as `from`
/// sends it to `to` at `term`.
pub fn announcement(from: u64, to: u64, term: u64, transferee: &[u8], number: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(raft::prelude::MessageType::MsgTransferLeader);
    m.from = from;
    m.to = to;
    m.term = term;
    m.index = number;
    let mut context = vaultfleet::replica::TRANSFER_ANNOUNCED.to_vec();
    context.extend_from_slice(transferee);
    m.context = context.into();
    m
}

/// The transferee an announcement names (0 for an end), if `m` is one.
pub fn announced(m: &Message) -> Option<u64> {
    let to = m
        .context
        .strip_prefix(vaultfleet::replica::TRANSFER_ANNOUNCED)?;
    Some(u64::from_be_bytes(to.try_into().ok()?))
}
