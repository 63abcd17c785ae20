//! The fleet the remote-client tests share: replicas over loopback TCP, each
//! with its own `NetTransport` (as if each were its own process) that serves
//! clients whose keys it allows.
#![allow(dead_code, clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vaultfleet::replica::ReplicaConfig;
use vaultfleet::runtime::{Node, NodeConfig};
use vaultfleet::{
    FleetConfig, MemberSpec, Replica, Sealed, SealedConfig, SledLog, SoftHsm, StateMachine,
};
use vaultfleet_net::{
    ClientRole, NetConfig, NetTransport, PeerDirectory, PeerEntry, PublicKey, RemoteConfig,
    StaticSecret,
};

pub const GROUP: u64 = 1;
pub const FLEET: &str = "fleet-with-remote-clients";
pub const WAIT: Duration = Duration::from_secs(30);
pub const MEMBERS: [(u64, &str); 3] = [(1, "dc-a"), (2, "dc-b"), (3, "dc-c")];

use crate::wait;
pub use crate::wait::agreed_leader;

pub struct Process {
    pub transport: NetTransport,
    pub node: Option<Node>,
}

pub struct TcpFleet<M: StateMachine> {
    pub config: FleetConfig,
    pub secrets: BTreeMap<u64, StaticSecret>,
    pub addresses: BTreeMap<u64, SocketAddr>,
    pub clients: Vec<PublicKey>,
    /// Client keys allowed with the admin role (membership, transfers).
    pub admins: Vec<PublicKey>,
    pub processes: BTreeMap<u64, Process>,
    pub machine: fn() -> M,
    /// The transport settings of a replica listening on the given address.
    pub net_config: fn(SocketAddr) -> NetConfig,
    /// The settings of replica `id`.
    pub replica_config: fn(u64) -> ReplicaConfig,
    pub dir: tempfile::TempDir,
    /// Each replica's store: `None` plain sled; else sled sealed by the
    /// replica's soft HSM with its snapshot files open (streamed snapshots).
    pub sealed: Option<BTreeMap<u64, SoftHsm>>,
}

pub fn net_config(address: SocketAddr) -> NetConfig {
    let mut c = NetConfig::new(address);
    c.worker_threads = 1;
    c.backoff_max = Duration::from_millis(200);
    c.client_in_flight_max = 16;
    c.write_timeout = Duration::from_secs(1);
    c
}

pub fn remote_config() -> RemoteConfig {
    let mut c = RemoteConfig::default();
    c.net.worker_threads = 1;
    c.net.backoff_max = Duration::from_millis(200);
    c.status_interval = Duration::from_millis(50);
    c.in_flight_max = 16;
    c
}

impl<M: StateMachine> TcpFleet<M> {
    /// Starts the fleet; every node allows the client keys `clients` (as
    /// services: no membership changes, no leadership transfers).
    pub fn start(clients: Vec<PublicKey>, machine: fn() -> M) -> Self {
        Self::start_with_roles(clients, Vec::new(), machine)
    }

    /// Starts the fleet; every node allows `services` as service client keys
    /// and `admins` as admin client keys.
    pub fn start_with_roles(
        services: Vec<PublicKey>,
        admins: Vec<PublicKey>,
        machine: fn() -> M,
    ) -> Self {
        Self::start_tuned(services, admins, machine, net_config, ReplicaConfig::new)
    }

    /// Starts the fleet like [`start_with_roles`](Self::start_with_roles), each
    /// replica with the settings `net_config` and `replica_config` give.
    pub fn start_tuned(
        services: Vec<PublicKey>,
        admins: Vec<PublicKey>,
        machine: fn() -> M,
        net_config: fn(SocketAddr) -> NetConfig,
        replica_config: fn(u64) -> ReplicaConfig,
    ) -> Self {
        Self::start_stored(services, admins, machine, net_config, replica_config, false)
    }

    /// Starts the fleet like [`start_tuned`](Self::start_tuned); with
    /// `streamed`, every replica's store is sealed sled (a soft HSM of its
    /// own, seeded by its id) with its snapshot files open, so its snapshots
    /// are streamed.
    pub fn start_stored(
        services: Vec<PublicKey>,
        admins: Vec<PublicKey>,
        machine: fn() -> M,
        net_config: fn(SocketAddr) -> NetConfig,
        replica_config: fn(u64) -> ReplicaConfig,
        streamed: bool,
    ) -> Self {
        let clients = services;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let config = FleetConfig::new(
            MEMBERS
                .iter()
                .map(|&(id, dc)| MemberSpec::voter(id, dc))
                .collect(),
        );
        let mut fleet = TcpFleet {
            config,
            secrets: BTreeMap::new(),
            addresses: BTreeMap::new(),
            clients,
            admins,
            processes: BTreeMap::new(),
            machine,
            net_config,
            replica_config,
            dir: tempfile::tempdir().expect("temporary directory"),
            sealed: streamed.then(|| {
                MEMBERS
                    .iter()
                    .map(|&(id, _)| (id, SoftHsm::from_seed(0x5eed_0000 + id)))
                    .collect()
            }),
        };
        for &(id, _) in &MEMBERS {
            let secret = StaticSecret::generate().expect("key");
            let own = PeerDirectory::new(FLEET, [id], secret.clone()).expect("directory");
            let transport =
                NetTransport::start(own, net_config(SocketAddr::from(([127, 0, 0, 1], 0))))
                    .expect("transport");
            fleet.addresses.insert(id, transport.local_addr());
            fleet.secrets.insert(id, secret);
            fleet.processes.insert(
                id,
                Process {
                    transport,
                    node: None,
                },
            );
        }
        for &(id, _) in &MEMBERS {
            let directory = fleet.directory(id);
            fleet.processes[&id]
                .transport
                .update_directory(directory)
                .expect("update");
        }
        for &(id, _) in &MEMBERS {
            fleet.spawn_node(id);
        }
        fleet
    }

    pub fn pin_members(&self, d: &mut PeerDirectory) {
        for &(peer, dc) in &MEMBERS {
            d.insert(
                peer,
                PeerEntry {
                    address: self.addresses[&peer],
                    datacenter: dc.into(),
                    public_key: self.secrets[&peer].public_key(),
                },
            )
            .expect("pin");
        }
    }

    pub fn directory(&self, id: u64) -> PeerDirectory {
        let mut d = PeerDirectory::new(FLEET, [id], self.secrets[&id].clone()).expect("directory");
        self.pin_members(&mut d);
        for key in &self.clients {
            d.allow_client(*key).expect("client key");
        }
        for key in &self.admins {
            d.allow_client_as(*key, ClientRole::Admin)
                .expect("admin client key");
        }
        d
    }

    /// A client process's directory proving `secret`.
    pub fn client_directory(&self, secret: StaticSecret) -> PeerDirectory {
        let mut d = PeerDirectory::client(FLEET, secret).expect("client directory");
        self.pin_members(&mut d);
        d
    }

    pub fn dir_of(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("replica-{id}"))
    }

    pub fn spawn_node(&mut self, id: u64) {
        let node = match self.sealed.as_ref().map(|hsms| hsms[&id].clone()) {
            None => {
                let mut log = SledLog::open(self.dir_of(id)).expect("sled");
                Replica::bootstrap(&mut log, &(self.machine)(), &self.config).expect("bootstrap");
                self.spawn_on(id, log)
            }
            Some(hsm) => {
                let mut log = Sealed::open_sled(self.dir_of(id), hsm, SealedConfig::new(GROUP, id))
                    .expect("sealed sled");
                log.open_snapshot_files().expect("snapshot files");
                Replica::bootstrap(&mut log, &(self.machine)(), &self.config).expect("bootstrap");
                self.spawn_on(id, log)
            }
        };
        let process = self.processes.get_mut(&id).expect("process");
        process
            .transport
            .register(GROUP, id, Arc::new(node.handle()))
            .expect("register");
        process
            .transport
            .serve_clients(GROUP, Arc::new(node.handle()))
            .expect("serve clients");
        process.node = Some(node);
    }

    fn spawn_on<L: vaultfleet::LogStore>(&self, id: u64, log: L) -> Node {
        let transport = Arc::new(self.processes[&id].transport.clone());
        Node::spawn(
            NodeConfig::new((self.replica_config)(id)),
            log,
            (self.machine)(),
            transport,
        )
        .expect("spawn")
    }

    /// Stops replica `id` and its whole "process" (transport included).
    pub fn kill(&mut self, id: u64) {
        let process = self.processes.remove(&id).expect("process");
        process.transport.shutdown();
        if let Some(node) = process.node {
            node.shutdown().expect("clean shutdown");
        }
    }

    /// Starts replica `id` again from its disk, on the same address and key.
    pub fn restart(&mut self, id: u64) {
        let transport =
            NetTransport::start(self.directory(id), (self.net_config)(self.addresses[&id]))
                .expect("transport on the same port");
        self.processes.insert(
            id,
            Process {
                transport,
                node: None,
            },
        );
        self.spawn_node(id);
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.processes.values().filter_map(|p| p.node.as_ref())
    }

    /// Waits (at most [`WAIT`]) until `cond` holds of the fleet; a timeout
    /// shows every running replica's status.
    pub fn wait_for(&self, what: &str, mut cond: impl FnMut(&Self) -> bool) {
        wait::wait_until_within(
            WAIT,
            Duration::from_millis(10),
            what,
            || cond(self),
            || {
                let statuses: Vec<_> = self.nodes().map(|n| n.handle().status()).collect();
                format!("; statuses: {statuses:#?}")
            },
        );
    }

    pub fn wait_leader(&self) -> u64 {
        let mut leader = 0;
        self.wait_for("an agreed leader", |f| {
            let statuses: Vec<_> = f.nodes().map(|n| n.handle().status()).collect();
            agreed_leader(&statuses).map(|l| leader = l).is_some()
        });
        leader
    }

    /// The status of running replica `id`.
    pub fn status(&self, id: u64) -> vaultfleet::replica::Status {
        self.processes[&id]
            .node
            .as_ref()
            .expect("node")
            .handle()
            .status()
    }

    pub fn stats(&self, id: u64) -> vaultfleet_net::NetStats {
        self.processes[&id].transport.stats()
    }

    pub fn shutdown(mut self) {
        let ids: Vec<u64> = self.processes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

/// Polls `cond` every 10 ms until it holds, for at most [`WAIT`].
pub fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait::wait_until_within(WAIT, Duration::from_millis(10), what, cond, String::new);
}
