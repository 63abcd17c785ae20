//! A fleet of real engine nodes, each with its own `NetTransport` (as if each
//! were its own process), talking over loopback TCP + Noise: elections,
//! replication, and a replica that restarts, reconnects and catches up.
// Tests of the threaded runtime wait in wall-clock time, bounded.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vaultfleet::replica::ReplicaConfig;
use vaultfleet::runtime::{Client, ClientConfig, Node, NodeConfig};
use vaultfleet::{FleetConfig, KvStore, MemberSpec, Replica, SledLog};
use vaultfleet_net::{NetConfig, NetTransport, PeerDirectory, PeerEntry, StaticSecret};

const GROUP: u64 = 1;
const FLEET: &str = "fleet-over-tcp";
const WAIT: Duration = Duration::from_secs(30);
const MEMBERS: [(u64, &str); 3] = [(1, "dc-a"), (2, "dc-b"), (3, "dc-c")];

struct Process {
    transport: NetTransport,
    node: Option<Node>,
}

struct TcpFleet {
    config: FleetConfig,
    secrets: BTreeMap<u64, StaticSecret>,
    addresses: BTreeMap<u64, SocketAddr>,
    processes: BTreeMap<u64, Process>,
    dir: tempfile::TempDir,
}

fn net_config(address: SocketAddr) -> NetConfig {
    let mut c = NetConfig::new(address);
    c.worker_threads = 1;
    c.backoff_max = Duration::from_millis(200);
    c
}

impl TcpFleet {
    fn start() -> Self {
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
            processes: BTreeMap::new(),
            dir: tempfile::tempdir().expect("temporary directory"),
        };
        // Each process binds a free port first; the directory then pins them all.
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

    fn directory(&self, id: u64) -> PeerDirectory {
        let mut d = PeerDirectory::new(FLEET, [id], self.secrets[&id].clone()).expect("directory");
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
        d
    }

    fn dir_of(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("replica-{id}"))
    }

    fn spawn_node(&mut self, id: u64) {
        let mut log = SledLog::open(self.dir_of(id)).expect("sled");
        Replica::bootstrap(&mut log, &KvStore::new(), &self.config).expect("bootstrap");
        let process = self.processes.get_mut(&id).expect("process");
        let transport = Arc::new(process.transport.clone());
        let node = Node::spawn(
            NodeConfig::new(ReplicaConfig::new(id)),
            log,
            KvStore::new(),
            transport,
        )
        .expect("spawn");
        process
            .transport
            .register(GROUP, id, Arc::new(node.handle()))
            .expect("register");
        process.node = Some(node);
    }

    /// Stops replica `id` and its whole "process" (transport included).
    fn kill(&mut self, id: u64) {
        let process = self.processes.remove(&id).expect("process");
        process.transport.shutdown();
        if let Some(node) = process.node {
            node.shutdown().expect("clean shutdown");
        }
    }

    /// Starts replica `id` again from its disk, on the same address and key.
    fn restart(&mut self, id: u64) {
        let transport = NetTransport::start(self.directory(id), net_config(self.addresses[&id]))
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

    fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.processes.values().filter_map(|p| p.node.as_ref())
    }

    fn client(&self) -> Client {
        Client::connect(
            self.nodes().map(Node::handle).collect(),
            ClientConfig::default(),
        )
        .expect("client session")
    }

    fn wait_until(&self, what: &str, mut cond: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while !cond(self) {
            assert!(
                start.elapsed() < WAIT,
                "timed out waiting for {what}; statuses: {:#?}",
                self.nodes()
                    .map(|n| n.handle().status())
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_leader(&self) -> u64 {
        let mut leader = 0;
        self.wait_until("an agreed leader", |f| {
            let statuses: Vec<_> = f.nodes().map(|n| n.handle().status()).collect();
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

    fn status(&self, id: u64) -> vaultfleet::replica::Status {
        self.processes[&id]
            .node
            .as_ref()
            .expect("node")
            .handle()
            .status()
    }
}

fn put(client: &Client, key: &str, value: &str) {
    client
        .propose(KvStore::put(key, value))
        .expect("put committed");
}

fn get(client: &Client, key: &str) -> Option<Vec<u8>> {
    KvStore::decode_response(&client.read(KvStore::get(key)).expect("read served"))
        .expect("kv response")
}

#[test]
fn three_replicas_over_tcp_elect_a_leader_commit_and_a_restarted_replica_catches_up() {
    let mut fleet = TcpFleet::start();
    let leader = fleet.wait_leader();
    let client = fleet.client();
    for i in 0..30 {
        put(&client, &format!("k{i}"), &format!("v{i}"));
    }
    let commit = fleet.status(leader).commit;
    fleet.wait_until("every replica applies", |f| {
        MEMBERS
            .iter()
            .all(|&(id, _)| f.status(id).applied >= commit)
    });
    for &(id, _) in &MEMBERS {
        let stats = fleet.processes[&id].transport.stats();
        assert!(stats.frames_delivered > 0, "replica {id}: {stats:#?}");
        assert!(stats.connections_accepted >= 1 && stats.connections_dialed >= 1);
        assert_eq!(stats.handshakes_refused_unpinned, 0);
        assert_eq!(stats.handshakes_failed, 0);
        assert_eq!(stats.frames_dropped_forged_from, 0);
        assert_eq!(stats.frames_dropped_header_mismatch, 0);
        assert_eq!(stats.frames_dropped_undecodable, 0);
        assert!(
            stats.writes <= stats.frames_sent + stats.frames_sent / 2 + 64,
            "writes are coalesced: {stats:#?}"
        );
    }

    // A follower's whole process goes away; the others keep committing.
    let victim = MEMBERS
        .iter()
        .map(|&(id, _)| id)
        .find(|&id| id != leader)
        .expect("a follower");
    fleet.kill(victim);
    let client = fleet.client();
    for i in 30..60 {
        put(&client, &format!("k{i}"), &format!("v{i}"));
    }
    fleet.restart(victim);
    let leader = fleet.wait_leader();
    let commit = fleet.status(leader).commit;
    fleet.wait_until("the restarted replica catches up", |f| {
        f.status(victim).applied >= commit
    });
    let stats = fleet.processes[&victim].transport.stats();
    assert!(stats.frames_delivered > 0, "{stats:#?}");
    let client = fleet.client();
    assert_eq!(get(&client, "k59").as_deref(), Some(&b"v59"[..]));
    let survivors: Vec<u64> = MEMBERS
        .iter()
        .map(|&(id, _)| id)
        .filter(|&id| id != victim)
        .collect();
    assert!(
        survivors
            .iter()
            .any(|&id| fleet.processes[&id].transport.stats().connections_dialed >= 2),
        "a survivor reconnected to the restarted process"
    );
    for &(id, _) in &MEMBERS {
        fleet.kill(id);
    }
}
