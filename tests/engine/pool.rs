//! The pooled runtime: replicas of one or many groups on a few worker threads,
//! reached through the same `NodeHandle` and `Client` as thread-per-node `Node`s;
//! a group whose store blocks in `sync` does not stall the others; one replica
//! stops (or panics) while the rest run.
// Tests of the threaded runtime wait in wall-clock time.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use raft::prelude::{Entry, HardState, Snapshot};
use vaultfleet::replica::{MembershipChange, ReplicaConfig, Reply, RequestError};
use vaultfleet::runtime::{
    Client, ClientConfig, Node, NodeConfig, NodeHandle, Pool, PoolConfig, PooledNode, ResponseSlot,
};
use vaultfleet::storage::StorageError;
use vaultfleet::{ChannelNetwork, FleetConfig, KvStore, LogStore, MemLog, MemberSpec, Replica};

const WAIT: Duration = Duration::from_secs(60);

/// A gate a store's `sync` waits at while it is closed.
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn close(&self) {
        *self.closed.lock().unwrap() = true;
    }
    fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.opened.notify_all();
    }
    fn pass(&self) {
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
    }
}

/// Opens a gate when dropped.
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// What a test makes one replica's store do.
#[derive(Default)]
struct Hooks {
    /// `sync` panics (a replica whose turn panics).
    panic_sync: AtomicBool,
    /// `last_index` panics (raft-rs panics on a storage read error).
    panic_reads: AtomicBool,
    /// Dropping the store takes a while (a store closing its files).
    slow_drop: AtomicBool,
    /// Set when a slow drop began.
    drop_started: AtomicBool,
    /// Set when the store was dropped.
    dropped: AtomicBool,
    /// Opening a replica on the store takes a while (a long log replay).
    slow_open: AtomicBool,
    /// Set when `sync` was entered (it may be waiting at the gate).
    in_sync: AtomicBool,
    /// A gate only this replica's `sync` waits at (one slow disk).
    hold: Arc<Gate>,
}

/// A MemLog whose `sync` waits at a gate (a disk or HSM that blocks) and that
/// can be told to panic or to close slowly (see [`Hooks`]).
struct TestLog {
    live: MemLog,
    gate: Arc<Gate>,
    hooks: Arc<Hooks>,
}

impl raft::Storage for TestLog {
    fn initial_state(&self) -> raft::Result<raft::RaftState> {
        if self.hooks.slow_open.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(500));
        }
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
        assert!(
            !self.hooks.panic_reads.load(Ordering::Acquire),
            "test: this replica's storage read panics"
        );
        self.live.last_index()
    }
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.live.snapshot(request_index, to)
    }
}

impl Drop for TestLog {
    fn drop(&mut self) {
        if self.hooks.slow_drop.load(Ordering::Acquire) {
            self.hooks.drop_started.store(true, Ordering::Release);
            std::thread::sleep(Duration::from_millis(500));
        }
        self.hooks.dropped.store(true, Ordering::Release);
    }
}

impl LogStore for TestLog {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.live.append(entries)
    }
    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError> {
        self.live.set_hard_state(hs)
    }
    fn apply_snapshot(&mut self, s: &Snapshot) -> Result<(), StorageError> {
        self.live.apply_snapshot(s)
    }
    fn save_snapshot(&mut self, s: &Snapshot) -> Result<(), StorageError> {
        self.live.save_snapshot(s)
    }
    fn compact(&mut self, i: u64) -> Result<(), StorageError> {
        self.live.compact(i)
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        self.hooks.in_sync.store(true, Ordering::Release);
        self.gate.pass();
        self.hooks.hold.pass();
        assert!(
            !self.hooks.panic_sync.load(Ordering::Acquire),
            "test: this replica's turn panics"
        );
        self.live.sync()
    }
    fn latest_snapshot(&self) -> &Snapshot {
        self.live.latest_snapshot()
    }
    fn hard_state(&self) -> &HardState {
        self.live.hard_state()
    }
}

/// One group of `members` replicas on the pool, with its own network.
struct Group {
    _net: ChannelNetwork,
    nodes: Vec<Option<PooledNode>>,
    handles: Vec<NodeHandle>,
    gate: Arc<Gate>,
    hooks: Vec<Arc<Hooks>>,
}

impl Group {
    fn start(pool: &Pool, group: u64, members: u64) -> Group {
        let dcs = ["dc-a", "dc-b", "dc-c"];
        let fleet = FleetConfig::new(
            (1..=members)
                .map(|id| MemberSpec::voter(id, dcs[(id as usize - 1) % 3]))
                .collect(),
        );
        let net = ChannelNetwork::new();
        let gate = Arc::new(Gate::default());
        let mut nodes = Vec::new();
        let mut handles = Vec::new();
        let mut all_hooks = Vec::new();
        for id in 1..=members {
            let hooks = Arc::new(Hooks::default());
            let mut log = TestLog {
                live: MemLog::new(),
                gate: Arc::clone(&gate),
                hooks: Arc::clone(&hooks),
            };
            Replica::bootstrap(&mut log, &KvStore::new(), &fleet).expect("bootstrap");
            let mut rc = ReplicaConfig::new(id);
            rc.group = group;
            let node = pool
                .spawn(NodeConfig::new(rc), log, KvStore::new(), net.transport(id))
                .expect("spawn on the pool");
            net.register(id, Arc::new(node.handle()));
            handles.push(node.handle());
            nodes.push(Some(node));
            all_hooks.push(hooks);
        }
        Group {
            _net: net,
            nodes,
            handles,
            gate,
            hooks: all_hooks,
        }
    }

    fn client(&self) -> Client {
        let cfg = ClientConfig {
            timeout: WAIT,
            ..ClientConfig::default()
        };
        Client::connect(self.handles.clone(), cfg).expect("client session")
    }

    /// The index of the group's leader (waiting for one to be known).
    fn leader(&self) -> usize {
        let mut found = None;
        wait_until("a leader", || {
            found = self
                .handles
                .iter()
                .position(|h| h.role() == raft::StateRole::Leader);
            found.is_some()
        });
        found.expect("a leader")
    }
}

fn put(client: &Client, key: &str) {
    client
        .propose(KvStore::put(key, "v"))
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

/// A pool for tests not about stalls: a turn counts as stalled only after
/// seconds, so a loaded machine never starts a spare.
fn pool(workers: usize) -> Pool {
    Pool::new(PoolConfig {
        workers,
        stall_after: Duration::from_secs(5),
        ..PoolConfig::new()
    })
    .expect("pool")
}

/// A pool that sees a stall after `stall_after` and starts up to `spares`
/// spare workers.
fn stalling_pool(workers: usize, stall_after: Duration, spares: usize) -> Pool {
    Pool::new(PoolConfig {
        workers,
        stall_after,
        spare_workers_max: spares,
        ..PoolConfig::new()
    })
    .expect("pool")
}

/// The outcome of a request submitted with `submit`, waiting up to `within`.
fn outcome(
    submit: Result<ResponseSlot, RequestError>,
    within: Duration,
) -> Option<Result<Reply, RequestError>> {
    match submit {
        Err(e) => Some(Err(e)),
        Ok(slot) => slot.wait(within),
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_three_member_fleet_on_two_workers_commits_through_a_client() {
    let pool = pool(2);
    let group = Group::start(&pool, 1, 3);
    let client = group.client();
    for i in 0..50 {
        put(&client, &format!("k{i}"));
    }
    let got = KvStore::decode_response(&client.read(KvStore::get("k49")).expect("read"))
        .expect("kv response");
    assert_eq!(got, Some(b"v".to_vec()));
    assert_eq!(pool.replicas(), 3);
    assert_eq!(pool.live_workers(), 2, "no spare without a stall");
    for node in group.nodes.into_iter().flatten() {
        node.shutdown().expect("clean shutdown");
    }
    assert_eq!(pool.replicas(), 0);
}

#[test]
fn sixty_four_groups_on_one_pool_each_commit() {
    let pool = pool(2);
    let groups: Vec<Group> = (1..=64).map(|g| Group::start(&pool, g, 3)).collect();
    assert_eq!(pool.replicas(), 192);
    let clients: Vec<Client> = groups.iter().map(Group::client).collect();
    let pending: Vec<_> = clients
        .iter()
        .enumerate()
        .flat_map(|(g, c)| {
            (0..4).map(move |i| c.propose_async(KvStore::put(format!("g{g}/{i}"), "v")))
        })
        .collect();
    for p in pending {
        p.wait().expect("committed");
    }
    // Each group applied its 4 puts (a status is published at the end of the
    // turn that answered, so it may trail the answers by a moment).
    for (g, group) in groups.iter().enumerate() {
        wait_until(&format!("group {g} to publish its applied index"), || {
            group.handles.iter().map(|h| h.status().applied).max() >= Some(4)
        });
    }
}

#[test]
fn a_stalled_group_does_not_stall_the_others() {
    // One worker: the stalled group holds it, so the others commit only
    // because a spare replaces it.
    let pool = stalling_pool(1, Duration::from_millis(100), 8);
    let groups: Vec<Group> = (1..=64).map(|g| Group::start(&pool, g, 3)).collect();
    let clients: Vec<Client> = groups.iter().map(Group::client).collect();
    for (g, c) in clients.iter().enumerate() {
        put(c, &format!("warm-{g}"));
    }
    // Group 7's disks block: every `sync` of its replicas waits at the gate.
    let stalled = 6;
    groups[stalled].gate.close();
    // Opens it again if an assertion fails, so the pool can stop.
    let _reopen = OpenOnDrop(Arc::clone(&groups[stalled].gate));
    let blocked = clients[stalled].propose_async(KvStore::put("blocked", "v"));
    // The other 63 groups keep committing, and the stalled group's worker
    // was replaced by a spare.
    for round in 0..3 {
        let pending: Vec<_> = clients
            .iter()
            .enumerate()
            .filter(|(g, _)| *g != stalled)
            .map(|(g, c)| c.propose_async(KvStore::put(format!("g{g}/{round}"), "v")))
            .collect();
        for p in pending {
            p.wait()
                .expect("a healthy group commits while group 7 is stalled");
        }
    }
    wait_until("a spare worker", || pool.live_workers() > 1);
    assert!(pool.stalled_workers() >= 1);
    let leader_applied = |g: usize| {
        groups[g]
            .handles
            .iter()
            .map(|h| h.status().applied)
            .max()
            .unwrap_or(0)
    };
    let before = leader_applied(stalled);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(leader_applied(stalled), before, "group 7 is really stalled");
    // The disks come back: group 7 catches up and the spares retire.
    groups[stalled].gate.open();
    blocked
        .wait()
        .expect("group 7 commits once its disks answer");
    put(&clients[stalled], "after");
    wait_until("the spares to retire", || {
        pool.live_workers() == 1 && pool.stalled_workers() == 0
    });
}

/// Review 14 (LOW-3): the leader sends its appends before its own sync
/// (`Replica::handle_ready_sending`), so on the pooled runtime its followers
/// receive and persist an entry while the leader's disk is still blocked.
/// If the appends waited for the sync, the followers would hear nothing from
/// the blocked leader and elect another.
#[test]
fn a_leaders_append_reaches_its_followers_while_it_syncs() {
    // Slow ticks (elections after 0.5 to 1 s) leave the early appends ample
    // time to arrive before a follower gives up on the blocked leader.
    let pool = Pool::new(PoolConfig {
        workers: 2,
        stall_after: Duration::from_secs(5),
        tick_interval: Duration::from_millis(50),
        ..PoolConfig::new()
    })
    .expect("pool");
    let group = Group::start(&pool, 1, 3);
    let client = group.client();
    put(&client, "k0");
    let leader = group.leader();
    let hooks = &group.hooks[leader];
    hooks.hold.close();
    // Opens it again if an assertion fails, so the pool can stop.
    let _reopen = OpenOnDrop(Arc::clone(&hooks.hold));
    hooks.in_sync.store(false, Ordering::Release);
    let pending = client.propose_async(KvStore::put("k1", "v"));
    wait_until("the leader to sync the new entry", || {
        hooks.in_sync.load(Ordering::Acquire)
    });
    // The leader is blocked inside the turn that appended k1; the status it
    // published at the end of its previous turn holds every entry before k1.
    let before = group.handles[leader].status();
    for i in (0..group.handles.len()).filter(|&i| i != leader) {
        wait_until(&format!("follower {} to append k1", i + 1), || {
            let s = group.handles[i].status();
            assert_eq!(
                s.term,
                before.term,
                "follower {} left the blocked leader's term before k1 reached it",
                i + 1
            );
            s.last_index > before.last_index
        });
    }
    hooks.hold.open();
    pending
        .wait()
        .expect("committed once the leader's disk answers");
    put(&client, "k2");
}

#[test]
fn one_replica_shuts_down_while_the_others_run() {
    let pool = pool(2);
    let a = Group::start(&pool, 1, 3);
    let mut b = Group::start(&pool, 2, 3);
    let (ca, cb) = (a.client(), b.client());
    put(&ca, "a0");
    put(&cb, "b0");
    // Stop a follower of group 2 with requests in flight.
    let follower = b
        .handles
        .iter()
        .position(|h| h.role() != raft::StateRole::Leader)
        .expect("a follower");
    let in_flight: Vec<_> = (0..20)
        .map(|i| cb.propose_async(KvStore::put(format!("b/{i}"), "v")))
        .collect();
    let node = b.nodes[follower].take().expect("running");
    node.shutdown().expect("clean shutdown");
    assert!(b.handles[follower].is_stopped());
    assert!(matches!(
        b.handles[follower].register_session(),
        Err(RequestError::Stopped)
    ));
    for p in in_flight {
        p.wait().expect("two of three still commit");
    }
    put(&ca, "a1");
    put(&cb, "b1");
    assert_eq!(pool.replicas(), 5);
}

#[test]
fn a_replica_whose_turn_panics_does_not_take_down_the_others() {
    let pool = pool(2);
    let mut a = Group::start(&pool, 1, 3);
    let b = Group::start(&pool, 2, 3);
    let (ca, cb) = (a.client(), b.client());
    put(&ca, "a0");
    put(&cb, "b0");
    // Replica 1 of group 1 panics at its next sync.
    a.hooks[0].panic_sync.store(true, Ordering::Release);
    for i in 0..5 {
        put(&ca, &format!("a/{i}"));
    }
    wait_until("the panicking replica to stop", || {
        a.handles[0].is_stopped()
    });
    // Its group runs on with two of three, the other group is untouched, and
    // the pool still has its workers.
    for i in 0..5 {
        put(&ca, &format!("a/after/{i}"));
        put(&cb, &format!("b/after/{i}"));
    }
    assert_eq!(pool.live_workers(), 2);
    let node = a.nodes[0].take().expect("held");
    assert!(node.shutdown().is_err(), "shutdown reports the failure");
}

/// P1: raft-rs panics on a storage read error mid-batch. The input whose
/// step panicked and the rest of its batch must fail with `Stopped`, not be
/// dropped with their slots (clients would wait out their timeout).
#[test]
fn p1_a_panic_mid_batch_fails_the_rest_of_the_batch() {
    // One worker, no spare: while group 1's store blocks it, group 2's
    // requests pile up in its leader's mailbox and are taken as one batch.
    let pool = stalling_pool(1, Duration::from_millis(100), 0);
    let a = Group::start(&pool, 1, 3);
    // A lone voter: no raft message reaches its mailbox, so the batch is
    // exactly the three requests below and the first one's step panics.
    let b = Group::start(&pool, 2, 1);
    let (ca, cb) = (a.client(), b.client());
    put(&ca, "a0");
    put(&cb, "b0");
    let leader = b.leader();
    a.gate.close();
    let _reopen = OpenOnDrop(Arc::clone(&a.gate));
    let _blocked = ca.propose_async(KvStore::put("a1", "v"));
    wait_until("the only worker to stall in group 1's sync", || {
        pool.stalled_workers() == 1
    });
    // Group 2's leader reads its log's last index in its next membership
    // change: that read panics, the change in hand and the rest of the batch
    // are left.
    b.hooks[leader].panic_reads.store(true, Ordering::Release);
    let h = &b.handles[leader];
    let change = h.change_membership(MembershipChange::Remove { id: 2 });
    let read = h.read(KvStore::get("b0"));
    let session = h.register_session();
    a.gate.open();
    for (what, submitted) in [("change", change), ("read", read), ("session", session)] {
        assert!(
            matches!(
                outcome(submitted, Duration::from_secs(5)),
                Some(Err(RequestError::Stopped))
            ),
            "the {what} of the batch whose step panicked is answered with Stopped"
        );
    }
    wait_until("the panicking replica to stop", || h.is_stopped());
}

/// P1 on a `Node`: a panic in its turn (here a storage read after a `sync`)
/// must fail the requests the replica took with `Stopped`: its thread used
/// to unwind past `finish`, dropping their slots.
#[test]
fn p1_a_node_whose_turn_panics_fails_its_pending_requests() {
    let fleet = FleetConfig::new(
        (1..=3)
            .map(|id| MemberSpec::voter(id, ["dc-a", "dc-b", "dc-c"][id as usize - 1]))
            .collect(),
    );
    let net = ChannelNetwork::new();
    let gate = Arc::new(Gate::default());
    let mut nodes = Vec::new();
    let mut hooks = Vec::new();
    for id in 1..=3 {
        let h = Arc::new(Hooks::default());
        let mut log = TestLog {
            live: MemLog::new(),
            gate: Arc::clone(&gate),
            hooks: Arc::clone(&h),
        };
        Replica::bootstrap(&mut log, &KvStore::new(), &fleet).expect("bootstrap");
        let node = Node::spawn(
            NodeConfig::new(ReplicaConfig::new(id)),
            log,
            KvStore::new(),
            net.transport(id),
        )
        .expect("spawn");
        net.register(id, Arc::new(node.handle()));
        nodes.push(node);
        hooks.push(h);
    }
    let handles: Vec<NodeHandle> = nodes.iter().map(Node::handle).collect();
    let cfg = ClientConfig {
        timeout: WAIT,
        ..ClientConfig::default()
    };
    let client = Client::connect(handles.clone(), cfg).expect("client session");
    put(&client, "k");
    let mut leader = None;
    wait_until("a leader", || {
        leader = handles
            .iter()
            .position(|h| h.role() == raft::StateRole::Leader);
        leader.is_some()
    });
    let leader = leader.expect("a leader");
    gate.close();
    let reopen = OpenOnDrop(Arc::clone(&gate));
    hooks[leader].in_sync.store(false, Ordering::Release);
    let h = &handles[leader];
    // Taken by the replica, then its turn waits in `sync`.
    let session = h.register_session();
    wait_until("the leader's sync", || {
        hooks[leader].in_sync.load(Ordering::Acquire)
    });
    // Its next read of the log's last index panics.
    hooks[leader].panic_reads.store(true, Ordering::Release);
    let read = h.read(KvStore::get("k"));
    drop(reopen);
    for (what, submitted) in [("session", session), ("read", read)] {
        assert!(
            matches!(
                outcome(submitted, Duration::from_secs(5)),
                Some(Err(RequestError::Stopped))
            ),
            "the {what} at the panicking node is answered with Stopped"
        );
    }
}

/// P2: dropping the pool while one group's store is stalled must not strand
/// requests to the healthy groups until that store returns.
#[test]
fn p2_dropping_the_pool_fails_requests_while_a_store_is_stalled() {
    let pool = stalling_pool(2, Duration::from_millis(100), 8);
    let a = Group::start(&pool, 1, 3);
    let b = Group::start(&pool, 2, 3);
    let (ca, cb) = (a.client(), b.client());
    put(&ca, "a0");
    put(&cb, "b0");
    let leader = b.leader();
    a.gate.close();
    let reopen = OpenOnDrop(Arc::clone(&a.gate));
    let _blocked = ca.propose_async(KvStore::put("a1", "v"));
    wait_until("a worker to stall in group 1's sync", || {
        pool.stalled_workers() >= 1
    });
    let dropper = std::thread::spawn(move || drop(pool));
    std::thread::sleep(Duration::from_millis(200));
    let h = &b.handles[leader];
    assert!(
        matches!(
            outcome(h.read(KvStore::get("b0")), Duration::from_secs(10)),
            Some(Err(RequestError::Stopped))
        ),
        "a request to a healthy group fails with Stopped while group 1 is stalled"
    );
    drop(reopen);
    dropper
        .join()
        .expect("the pool drops once the store returns");
}

/// P5: `shutdown` racing `Pool::drop` returns only once the store is closed
/// (a sled path could not be reopened otherwise).
#[test]
fn p5_shutdown_racing_the_pool_drop_returns_once_the_store_is_closed() {
    let pool = pool(2);
    let mut g = Group::start(&pool, 1, 3);
    put(&g.client(), "k");
    let hooks = Arc::clone(&g.hooks[0]);
    hooks.slow_drop.store(true, Ordering::Release);
    let node = g.nodes[0].take().expect("running");
    let dropper = std::thread::spawn(move || drop(pool));
    wait_until("the pool to start closing replica 1's store", || {
        hooks.drop_started.load(Ordering::Acquire)
    });
    let _ = node.shutdown();
    assert!(
        hooks.dropped.load(Ordering::Acquire),
        "shutdown returned before the store was closed"
    );
    dropper.join().expect("pool dropped");
}

/// P7c: a replica's shutdown fails the requests pending at it with `Stopped`.
#[test]
fn p7c_shutdown_fails_the_requests_pending_at_the_replica() {
    let pool = pool(2);
    let mut g = Group::start(&pool, 1, 3);
    put(&g.client(), "k");
    let leader = g.leader();
    // Without its followers the leader cannot commit: requests wait there.
    for i in 0..3 {
        if i != leader {
            g.nodes[i]
                .take()
                .expect("running")
                .shutdown()
                .expect("clean");
        }
    }
    let h = &g.handles[leader];
    let propose = h.register_session();
    let read = h.read(KvStore::get("k"));
    std::thread::sleep(Duration::from_millis(20));
    g.nodes[leader]
        .take()
        .expect("running")
        .shutdown()
        .expect("clean shutdown");
    for (what, submitted) in [("session", propose), ("read", read)] {
        assert!(
            matches!(
                outcome(submitted, Duration::from_secs(5)),
                Some(Err(RequestError::Stopped))
            ),
            "the {what} pending at the stopped replica fails with Stopped"
        );
    }
}

/// P6: the time a store takes to open is no elapsed ticks: a replica whose
/// replay took 500 ms must not fire them all in its first turn (an instant
/// election) but wait its election timeout like any other.
#[test]
fn p6_opening_a_slow_store_counts_no_ticks() {
    let pool = pool(2);
    let fleet = FleetConfig::new(
        (1..=3)
            .map(|id| MemberSpec::voter(id, ["dc-a", "dc-b", "dc-c"][id as usize - 1]))
            .collect(),
    );
    let hooks = Arc::new(Hooks::default());
    let mut log = TestLog {
        live: MemLog::new(),
        gate: Arc::new(Gate::default()),
        hooks: Arc::clone(&hooks),
    };
    Replica::bootstrap(&mut log, &KvStore::new(), &fleet).expect("bootstrap");
    hooks.slow_open.store(true, Ordering::Release);
    let mut cfg = NodeConfig::new(ReplicaConfig::new(1));
    // Every elapsed tick would be replayed (the default replays up to 10).
    cfg.catch_up_ticks_max = 1_000;
    let net = ChannelNetwork::new();
    let node = pool
        .spawn(cfg, log, KvStore::new(), net.transport(1))
        .expect("spawn");
    // An election timeout is 10 to 20 ticks of 10 ms.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(60) {
        let status = node.handle().status();
        assert_eq!(
            status.role,
            raft::StateRole::Follower,
            "campaigned {:?} after the store opened",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    node.shutdown().expect("clean shutdown");
}

/// P4: a client's callback that panics while a stopping replica fails its
/// requests must not kill the worker (with one worker, nothing would be
/// served again while the pool still counted it).
#[test]
fn p4_a_panicking_callback_on_the_stop_path_keeps_the_worker() {
    let pool = stalling_pool(1, Duration::from_millis(100), 0);
    let a = Group::start(&pool, 1, 3);
    let b = Group::start(&pool, 2, 3);
    let (ca, cb) = (a.client(), b.client());
    put(&ca, "a0");
    put(&cb, "b0");
    let leader = a.leader();
    a.gate.close();
    let reopen = OpenOnDrop(Arc::clone(&a.gate));
    let _blocked = ca.propose_async(KvStore::put("a1", "v"));
    // The only worker waits in the leader's sync, which panics once it passes;
    // meanwhile a request whose callback panics waits in its mailbox.
    wait_until("the only worker to stall in the leader's sync", || {
        pool.stalled_workers() == 1
    });
    a.hooks[leader].panic_sync.store(true, Ordering::Release);
    let slot = Arc::new(vaultfleet::runtime::Slot::with_notify(Arc::new(|| {
        panic!("test: a client's callback panics")
    })));
    a.handles[leader]
        .read_into(KvStore::get("a0"), Arc::clone(&slot))
        .expect("queued");
    drop(reopen);
    wait_until("the panicking replica to stop", || {
        a.handles[leader].is_stopped()
    });
    let lb = b.leader();
    assert!(
        matches!(
            outcome(
                b.handles[lb].read(KvStore::get("b0")),
                Duration::from_secs(10)
            ),
            Some(Ok(_))
        ),
        "the worker still serves the other group"
    );
    assert_eq!(pool.live_workers(), 1);
}

#[test]
fn the_pool_and_its_replicas_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Pool>();
    send_sync::<PooledNode>();
}
