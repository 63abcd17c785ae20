//! The fleet the remote-client tests share: replicas over loopback TCP, each
//! with its own `NetTransport` (as if each were its own process) that serves
//! clients whose keys it allows.
#![allow(dead_code, clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::StateRole;
use vaultfleet::replica::ReplicaConfig;
use vaultfleet::runtime::{Node, NodeConfig};
use vaultfleet::{FleetConfig, MemberSpec, Replica, SledLog, StateMachine};
use vaultfleet_net::{
    NetConfig, NetTransport, PeerDirectory, PeerEntry, PublicKey, RemoteConfig, StaticSecret,
};

pub const GROUP: u64 = 1;
pub const FLEET: &str = "fleet-with-remote-clients";
pub const WAIT: Duration = Duration::from_secs(30);
pub const MEMBERS: [(u64, &str); 3] = [(1, "dc-a"), (2, "dc-b"), (3, "dc-c")];

pub struct Process {
    pub transport: NetTransport,
    pub node: Option<Node>,
}

pub struct TcpFleet<M: StateMachine> {
    pub config: FleetConfig,
    pub secrets: BTreeMap<u64, StaticSecret>,
    pub addresses: BTreeMap<u64, SocketAddr>,
    pub clients: Vec<PublicKey>,
    pub processes: BTreeMap<u64, Process>,
    pub machine: fn() -> M,
    pub dir: tempfile::TempDir,
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
    /// Starts the fleet; every node allows the client keys `clients`.
    pub fn start(clients: Vec<PublicKey>, machine: fn() -> M) -> Self {
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
            processes: BTreeMap::new(),
            machine,
            dir: tempfile::tempdir().expect("temporary directory"),
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
        let mut log = SledLog::open(self.dir_of(id)).expect("sled");
        Replica::bootstrap(&mut log, &(self.machine)(), &self.config).expect("bootstrap");
        let process = self.processes.get_mut(&id).expect("process");
        let transport = Arc::new(process.transport.clone());
        let node = Node::spawn(
            NodeConfig::new(ReplicaConfig::new(id)),
            log,
            (self.machine)(),
            transport,
        )
        .expect("spawn");
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

    /// Stops replica `id` and its whole "process" (transport included).
    pub fn kill(&mut self, id: u64) {
        let process = self.processes.remove(&id).expect("process");
        process.transport.shutdown();
        if let Some(node) = process.node {
            node.shutdown().expect("clean shutdown");
        }
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.processes.values().filter_map(|p| p.node.as_ref())
    }

    pub fn wait_leader(&self) -> u64 {
        let mut leader = 0;
        wait_until("an agreed leader", || {
            let statuses: Vec<_> = self.nodes().map(|n| n.handle().status()).collect();
            let leaders: Vec<u64> = statuses
                .iter()
                .filter(|s| s.role == StateRole::Leader)
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

pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
