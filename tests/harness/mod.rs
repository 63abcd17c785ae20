//! A threaded test fleet: nodes on MemLog, SledLog or sealed SledLog (one soft HSM
//! per replica, kept across restarts) in a temporary directory,
//! connected by a ChannelNetwork, with start / stop / restart per replica.
//! Each replica runs on its own `Node` thread, or, with
//! `VAULTFLEET_TEST_RUNTIME=pool` (scripts/test.sh runs the suites that use
//! this harness both ways), on one 2-worker `Pool` per fleet.
// Tests of the threaded runtime wait in wall-clock time.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vaultfleet::replica::{ReplicaConfig, Status};
use vaultfleet::runtime::{
    Client, ClientConfig, Node, NodeConfig, NodeHandle, Pool, PoolConfig, PooledNode,
};
use vaultfleet::storage::SnapshotFilesHost as _;
use vaultfleet::transport::Transport;
use vaultfleet::{
    ChannelNetwork, FleetConfig, KvStore, LogStore, MemLog, MemberSpec, Replica, Sealed,
    SealedConfig, SledLog, SoftHsm, StateMachine,
};

pub const WAIT: Duration = Duration::from_secs(20);

/// A replica on either runtime.
pub enum Running {
    Thread(Node),
    Pooled(PooledNode),
}

impl Running {
    pub fn handle(&self) -> NodeHandle {
        match self {
            Running::Thread(n) => n.handle(),
            Running::Pooled(n) => n.handle(),
        }
    }

    pub fn shutdown(self) -> Result<(), vaultfleet::ReplicaError> {
        match self {
            Running::Thread(n) => n.shutdown(),
            Running::Pooled(n) => n.shutdown(),
        }
    }
}

/// Whether this run's fleets use the pool (`VAULTFLEET_TEST_RUNTIME=pool`).
pub fn on_pool() -> bool {
    std::env::var("VAULTFLEET_TEST_RUNTIME").is_ok_and(|v| v == "pool")
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Mem,
    Sled,
    SealedSled,
    /// Sled with snapshot files: streamed snapshots.
    SledStreamed,
    /// Sealed sled with sealed snapshot files: streamed snapshots.
    SealedSledStreamed,
}

/// A fleet replicating `M` (the kv store unless a test names another machine).
pub struct Fleet<M: StateMachine = KvStore> {
    pub net: ChannelNetwork,
    pub config: FleetConfig,
    pub nodes: BTreeMap<u64, Running>,
    /// The pool the nodes run on (`VAULTFLEET_TEST_RUNTIME=pool`); declared
    /// after `nodes`, so the nodes stop first.
    pool: Option<Pool>,
    store: Store,
    /// Makes each replica's (empty) state machine.
    make: fn() -> M,
    dir: tempfile::TempDir,
    hsms: BTreeMap<u64, SoftHsm>,
    tweak: fn(&mut ReplicaConfig),
    /// Wraps each node's transport (a test's fault or probe), if set.
    wrap: Option<Wrap>,
}

/// Wraps replica `id`'s transport.
pub type Wrap = Arc<dyn Fn(u64, Arc<dyn Transport>) -> Arc<dyn Transport> + Send + Sync>;

pub fn no_tweak(_: &mut ReplicaConfig) {}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

impl Fleet<KvStore> {
    pub fn start(members: &[(u64, &str)], store: Store) -> Fleet {
        Self::start_with(
            FleetConfig::new(
                members
                    .iter()
                    .map(|&(id, dc)| MemberSpec::voter(id, dc))
                    .collect(),
            ),
            store,
            no_tweak,
        )
    }

    pub fn start_with(config: FleetConfig, store: Store, tweak: fn(&mut ReplicaConfig)) -> Self {
        Fleet::start_machine(config, store, tweak, KvStore::new)
    }

    /// As [`Fleet::start_with`], every node's transport wrapped by `wrap`.
    pub fn start_wrapped(
        config: FleetConfig,
        store: Store,
        tweak: fn(&mut ReplicaConfig),
        wrap: Wrap,
    ) -> Self {
        Fleet::start_inner(config, store, tweak, KvStore::new, Some(wrap))
    }
}

impl<M: StateMachine> Fleet<M> {
    pub fn start_machine(
        config: FleetConfig,
        store: Store,
        tweak: fn(&mut ReplicaConfig),
        make: fn() -> M,
    ) -> Self {
        Self::start_inner(config, store, tweak, make, None)
    }

    fn start_inner(
        config: FleetConfig,
        store: Store,
        tweak: fn(&mut ReplicaConfig),
        make: fn() -> M,
        wrap: Option<Wrap>,
    ) -> Self {
        init_tracing();
        let mut fleet = Fleet {
            net: ChannelNetwork::new(),
            config,
            nodes: BTreeMap::new(),
            pool: on_pool().then(|| Pool::new(PoolConfig::new()).expect("start the pool")),
            store,
            make,
            dir: tempfile::tempdir().expect("temporary directory"),
            hsms: BTreeMap::new(),
            tweak,
            wrap,
        };
        let ids: Vec<u64> = fleet.config.members.iter().map(|m| m.id).collect();
        for id in ids {
            fleet.boot(id, true);
        }
        fleet
    }

    pub fn dir_of(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("replica-{id}"))
    }

    fn node_config(&self, id: u64) -> NodeConfig {
        let mut rc = ReplicaConfig::new(id);
        rc.preferred_leader_datacenters = self.config.preferred_leader_datacenters.clone();
        (self.tweak)(&mut rc);
        NodeConfig::new(rc)
    }

    /// Starts replica `id`; `initial` members bootstrap their store from the fleet
    /// config, others (added later) start empty.
    pub fn boot(&mut self, id: u64, initial: bool) {
        let node = match self.store {
            Store::Mem => self.spawn(id, MemLog::new(), initial),
            Store::Sled => {
                let log = SledLog::open(self.dir_of(id)).expect("open sled log");
                self.spawn(id, log, initial)
            }
            Store::SealedSled | Store::SealedSledStreamed => {
                let hsm = self
                    .hsms
                    .entry(id)
                    .or_insert_with(|| SoftHsm::from_seed(id))
                    .clone();
                let inner = SledLog::open(self.dir_of(id)).expect("open sled log");
                let group = self.node_config(id).replica.group;
                let mut log = Sealed::open(inner, hsm, SealedConfig::new(group, id))
                    .expect("open sealed log");
                if self.store == Store::SealedSledStreamed {
                    log.open_snapshot_files()
                        .expect("open the sealed snapshot files");
                }
                self.spawn(id, log, initial)
            }
            Store::SledStreamed => {
                let mut log = SledLog::open(self.dir_of(id)).expect("open sled log");
                log.open_snapshot_files(id, None)
                    .expect("open the snapshot files");
                self.spawn(id, log, initial)
            }
        };
        self.net.register(id, std::sync::Arc::new(node.handle()));
        self.nodes.insert(id, node);
    }

    fn spawn<L: LogStore>(&self, id: u64, mut log: L, initial: bool) -> Running {
        let cfg = self.node_config(id);
        let transport: Arc<dyn Transport> = self.net.transport(id);
        let transport = match &self.wrap {
            Some(wrap) => wrap(id, transport),
            None => transport,
        };
        if initial {
            Replica::bootstrap(&mut log, &(self.make)(), &self.config).expect("bootstrap");
        }
        match &self.pool {
            Some(pool) => Running::Pooled(
                pool.spawn(cfg, log, (self.make)(), transport)
                    .expect("spawn"),
            ),
            None => {
                Running::Thread(Node::spawn(cfg, log, (self.make)(), transport).expect("spawn"))
            }
        }
    }

    pub fn stop(&mut self, id: u64) {
        self.net.unregister(id);
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().expect("clean shutdown");
        }
    }

    /// Restarts a stopped sled replica from its directory.
    pub fn restart(&mut self, id: u64) {
        assert!(
            self.store != Store::Mem,
            "only sled replicas survive a restart"
        );
        self.boot(id, true);
    }

    pub fn handles(&self) -> Vec<NodeHandle> {
        self.nodes.values().map(Running::handle).collect()
    }

    pub fn handle(&self, id: u64) -> NodeHandle {
        self.nodes[&id].handle()
    }

    pub fn status(&self, id: u64) -> Status {
        self.nodes[&id].handle().status()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.handles(), ClientConfig::default()).expect("client session")
    }

    pub fn wait_until(&self, what: &str, mut cond: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while !cond(self) {
            if start.elapsed() > WAIT {
                let statuses: Vec<Status> =
                    self.nodes.values().map(|n| n.handle().status()).collect();
                panic!("timed out waiting for: {what}; replicas: {statuses:#?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for one leader that every running replica agrees on.
    pub fn wait_leader(&self) -> u64 {
        let mut leader = 0;
        self.wait_until("an agreed leader", |f| {
            let statuses: Vec<Status> = f.nodes.values().map(|n| n.handle().status()).collect();
            let leaders: Vec<u64> = statuses
                .iter()
                .filter(|s| s.role == raft::StateRole::Leader)
                .map(|s| s.id)
                .collect();
            if leaders.len() == 1 && statuses.iter().all(|s| s.leader == Some(leaders[0])) {
                leader = leaders[0];
                true
            } else {
                false
            }
        });
        leader
    }

    /// Waits until every running replica applied at least `index`.
    pub fn wait_applied(&self, index: u64) {
        self.wait_until("every replica to apply", |f| {
            f.nodes
                .values()
                .all(|n| n.handle().status().applied >= index)
        });
    }

    pub fn leader_status(&self) -> Status {
        let leader = self.wait_leader();
        self.status(leader)
    }
}

pub fn put(client: &Client, key: &str, value: &str) -> Option<Vec<u8>> {
    KvStore::decode_response(
        &client
            .propose(KvStore::put(key, value))
            .expect("put committed"),
    )
    .expect("kv response")
}

pub fn get(client: &Client, key: &str) -> Option<Vec<u8>> {
    KvStore::decode_response(&client.read(KvStore::get(key)).expect("read served"))
        .expect("kv response")
}
