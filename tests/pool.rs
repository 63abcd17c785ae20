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
use vaultfleet::replica::{ReplicaConfig, RequestError};
use vaultfleet::runtime::{
    Client, ClientConfig, NodeConfig, NodeHandle, Pool, PoolConfig, PooledNode,
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

/// A MemLog whose `sync` waits at a gate (a disk or HSM that blocks) and can be
/// told to panic (a replica whose turn panics).
struct TestLog {
    live: MemLog,
    gate: Arc<Gate>,
    panic: Arc<AtomicBool>,
}

impl raft::Storage for TestLog {
    vaultfleet::storage_reads_from!(live);
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
        self.gate.pass();
        assert!(
            !self.panic.load(Ordering::Acquire),
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
    panics: Vec<Arc<AtomicBool>>,
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
        let mut panics = Vec::new();
        for id in 1..=members {
            let panic = Arc::new(AtomicBool::new(false));
            let mut log = TestLog {
                live: MemLog::new(),
                gate: Arc::clone(&gate),
                panic: Arc::clone(&panic),
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
            panics.push(panic);
        }
        Group {
            _net: net,
            nodes,
            handles,
            gate,
            panics,
        }
    }

    fn client(&self) -> Client {
        let cfg = ClientConfig {
            timeout: WAIT,
            ..ClientConfig::default()
        };
        Client::connect(self.handles.clone(), cfg).expect("client session")
    }
}

fn put(client: &Client, key: &str) {
    client
        .propose(KvStore::put(key, "v"))
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

fn pool(workers: usize) -> Pool {
    Pool::new(PoolConfig {
        workers,
        stall_after: Duration::from_millis(100),
        ..PoolConfig::new()
    })
    .expect("pool")
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
    let pool = pool(2);
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
    // The other 63 groups keep committing, and the stalled group's workers
    // were replaced by spares.
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
    wait_until("a spare worker", || pool.live_workers() > 2);
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
        pool.live_workers() == 2 && pool.stalled_workers() == 0
    });
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
    a.panics[0].store(true, Ordering::Release);
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

#[test]
fn the_pool_and_its_replicas_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Pool>();
    send_sync::<PooledNode>();
}
