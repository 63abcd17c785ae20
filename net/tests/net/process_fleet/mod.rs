//! A fleet whose replicas are OS processes (`vaultfleet-net-replica`) on
//! loopback, optionally behind the fault-injecting proxy (`vaultfleet-netem`),
//! and a remote client session in the test process. Shared by
//! `tests/net/processes.rs` and `tests/net/chaos.rs`.
//!
//! Every child is killed when the fleet drops (also on a failing assertion);
//! each child also exits by itself when its stdin (a pipe held here) closes, so
//! none outlives the test process. Each child's log is a file in the fleet's
//! temporary directory, printed (its tail) when a test fails.
#![allow(dead_code, clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::StateRole;
use rand::RngCore;
use vaultfleet::replica::{Reply, RequestError};
use vaultfleet::runtime::{Client, ClientConfig, NodeApi};
use vaultfleet::KvStore;
use vaultfleet_net::{PeerDirectory, PeerEntry, RemoteClient, RemoteConfig, RemoteNode};
use vaultfleet_net::{PublicKey, StaticSecret};
use vaultfleet_netem::Proxy;
use zeroize::Zeroizing;

pub const GROUP: u64 = 1;
/// Bound of every wait in these tests (never an expectation of speed).
pub const WAIT: Duration = Duration::from_secs(60);
/// The proxy endpoint of the test process's remote client, in a datacenter of
/// its own (a datacenter cut off also cuts it from the client).
pub const CLIENT_ENDPOINT: &str = "client";
pub const CLIENT_DC: &str = "dc-app";

const BIN: &str = env!("CARGO_BIN_EXE_vaultfleet-net-replica");

use crate::wait;

/// Polls `cond` every 20 ms until it holds, for at most [`WAIT`].
pub fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait::wait_until_within(WAIT, Duration::from_millis(20), what, cond, String::new);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A listening address for a child: a loopback address of its own, and a
/// port free on it (bound, read back, released; the child binds it, again
/// after a restart).
///
/// The address is `127.H.L.N`: `H.L` from this process's id (the second octet
/// never 0), `N` counting up, so that no other listener of this process or of
/// another test process uses it. Only the port is released meanwhile, and a
/// socket on another address handed the same port number by the kernel (a
/// client's connection from `127.0.0.1`, another test's listener on
/// `127.0.0.1`) cannot stop the child's bind. A port picked on `127.0.0.1`
/// could be handed to such a socket between release and bind. What remains:
/// a process binding the wildcard address (`0.0.0.0:0`) in that instant;
/// these tests bind loopback addresses only.
fn free_port() -> SocketAddr {
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let address = Ipv4Addr::new(
        127,
        1 + ((pid >> 8) % 255) as u8,
        pid as u8,
        // 1..=254: a fleet has at most a few dozen listeners per process.
        1 + (n % 254) as u8,
    );
    let listener = TcpListener::bind((address, 0)).expect("bind a free port");
    listener.local_addr().expect("local address")
}

/// The proxy endpoint name of replica `id`.
pub fn endpoint(id: u64) -> String {
    format!("r{id}")
}

struct ReplicaProcess {
    child: Child,
    stdin: Option<ChildStdin>,
}

pub struct ProcessFleet {
    pub fleet_id: String,
    pub members: Vec<(u64, String)>,
    secrets: BTreeMap<u64, Zeroizing<[u8; 32]>>,
    pub publics: BTreeMap<u64, PublicKey>,
    pub listen: BTreeMap<u64, SocketAddr>,
    client_secret: StaticSecret,
    processes: BTreeMap<u64, ReplicaProcess>,
    /// Process starts so far, per replica (names the log files).
    starts: BTreeMap<u64, u32>,
    proxy: Option<Arc<Proxy>>,
    pub remote: Option<RemoteClient>,
    pub nodes: BTreeMap<u64, Arc<RemoteNode>>,
    pub tmp: tempfile::TempDir,
}

impl ProcessFleet {
    /// Starts one process per member `(id, datacenter)`; with `proxy`, every
    /// replica-to-replica and client-to-replica connection crosses it (each
    /// replica's peers file lists the proxy's link for each peer).
    pub fn start(fleet_id: &str, members: &[(u64, &str)], proxy: Option<Arc<Proxy>>) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let mut rng = rand::rngs::OsRng;
        let mut fleet = ProcessFleet {
            fleet_id: fleet_id.to_owned(),
            members: members
                .iter()
                .map(|&(id, dc)| (id, dc.to_owned()))
                .collect(),
            secrets: BTreeMap::new(),
            publics: BTreeMap::new(),
            listen: BTreeMap::new(),
            client_secret: StaticSecret::generate().expect("client key"),
            processes: BTreeMap::new(),
            starts: BTreeMap::new(),
            proxy,
            remote: None,
            nodes: BTreeMap::new(),
            tmp: tempfile::tempdir().expect("temporary directory"),
        };
        for &(id, _) in members {
            let mut bytes = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(bytes.as_mut());
            let secret = StaticSecret::from_bytes(bytes.clone()).expect("key");
            fleet.publics.insert(id, secret.public_key());
            fleet.secrets.insert(id, bytes);
            fleet.listen.insert(id, free_port());
        }
        if let Some(proxy) = &fleet.proxy {
            for (id, dc) in &fleet.members {
                proxy.add_endpoint(&endpoint(*id), dc).expect("endpoint");
                proxy
                    .set_target(&endpoint(*id), fleet.listen[id])
                    .expect("target");
            }
            proxy
                .add_endpoint(CLIENT_ENDPOINT, CLIENT_DC)
                .expect("client endpoint");
        }
        for &(id, _) in members {
            fleet.write_files(id);
            fleet.spawn(id);
        }
        fleet.connect_client();
        fleet
    }

    pub fn ids(&self) -> Vec<u64> {
        self.members.iter().map(|&(id, _)| id).collect()
    }

    pub fn proxy(&self) -> &Proxy {
        self.proxy.as_deref().expect("a fleet behind the proxy")
    }

    /// Where `from` (a replica id, or `None` for the client) finds replica `to`.
    fn address(&self, from: Option<u64>, to: u64) -> SocketAddr {
        match &self.proxy {
            Some(_) if from == Some(to) => self.listen[&to],
            Some(proxy) => {
                let from = from.map_or(CLIENT_ENDPOINT.to_owned(), endpoint);
                proxy.link(&from, &endpoint(to)).expect("link").addr()
            }
            None => self.listen[&to],
        }
    }

    fn dir_of(&self, id: u64) -> PathBuf {
        self.tmp.path().join(format!("replica-{id}"))
    }

    fn write_files(&self, id: u64) {
        let mut peers = format!(
            "# replica {id}'s view of the fleet\nfleet {}\ngroup {GROUP}\n",
            self.fleet_id
        );
        for (peer, dc) in &self.members {
            peers.push_str(&format!(
                "replica {peer} {} {dc} {}\n",
                self.address(Some(id), *peer),
                hex(self.publics[peer].as_bytes())
            ));
        }
        peers.push_str(&format!(
            // An admin key: the tests move leadership through it.
            "client {} admin\n",
            hex(self.client_secret.public_key().as_bytes())
        ));
        std::fs::write(self.tmp.path().join(format!("peers-{id}")), peers).expect("peers file");
        let key_path = self.tmp.path().join(format!("key-{id}"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode_0600()
            .open(&key_path)
            .expect("key file");
        file.write_all(hex(self.secrets[&id].as_ref()).as_bytes())
            .expect("write key");
    }

    fn log_path(&self, id: u64, start: u32) -> PathBuf {
        self.tmp.path().join(format!("replica-{id}.{start}.log"))
    }

    /// Starts replica `id`'s process (again: same directory, port and key)
    /// and waits for its `ready` line.
    pub fn spawn(&mut self, id: u64) {
        assert!(!self.processes.contains_key(&id), "replica {id} runs");
        let start = {
            let n = self.starts.entry(id).or_insert(0);
            *n += 1;
            *n
        };
        let log = std::fs::File::create(self.log_path(id, start)).expect("log file");
        let mut child = Command::new(BIN)
            .arg("--id")
            .arg(id.to_string())
            .arg("--dir")
            .arg(self.dir_of(id))
            .arg("--listen")
            .arg(self.listen[&id].to_string())
            .arg("--peers")
            .arg(self.tmp.path().join(format!("peers-{id}")))
            .arg("--key")
            .arg(self.tmp.path().join(format!("key-{id}")))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn vaultfleet-net-replica");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        self.processes.insert(id, ReplicaProcess { child, stdin });
        let line = rx.recv_timeout(WAIT);
        match line {
            Ok(Some(Ok(line))) if line.starts_with("ready ") => {}
            other => panic!(
                "replica {id} did not start ({other:?}); log:\n{}",
                self.log_tail(id)
            ),
        }
    }

    /// The last lines of replica `id`'s latest log.
    pub fn log_tail(&self, id: u64) -> String {
        let start = self.starts.get(&id).copied().unwrap_or(1);
        let text = std::fs::read_to_string(self.log_path(id, start)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// kill -9: the process gets no chance to flush or say goodbye.
    pub fn kill9(&mut self, id: u64) {
        let mut p = self.processes.remove(&id).expect("running");
        p.child.kill().expect("kill -9");
        p.child.wait().expect("reap");
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self, id: u64) -> ExitStatus {
        let mut p = self.processes.remove(&id).expect("running");
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(p.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success());
        wait_exit(&mut p.child)
    }

    /// Closes the process's stdin, then waits for the exit.
    pub fn close_stdin(&mut self, id: u64) -> ExitStatus {
        let mut p = self.processes.remove(&id).expect("running");
        drop(p.stdin.take());
        wait_exit(&mut p.child)
    }

    fn client_directory(&self) -> PeerDirectory {
        let mut d = PeerDirectory::client(self.fleet_id.clone(), self.client_secret.clone())
            .expect("client directory");
        for (id, dc) in &self.members {
            d.insert(
                *id,
                PeerEntry {
                    address: self.address(None, *id),
                    datacenter: dc.clone(),
                    public_key: self.publics[id],
                },
            )
            .expect("pin");
        }
        d
    }

    fn connect_client(&mut self) {
        let mut config = RemoteConfig::default();
        config.net.worker_threads = 1;
        config.net.backoff_max = Duration::from_millis(300);
        config.status_interval = Duration::from_millis(50);
        let remote = RemoteClient::start(self.client_directory(), config).expect("remote client");
        for id in self.ids() {
            self.nodes
                .insert(id, remote.node(GROUP, id).expect("remote node"));
        }
        self.remote = Some(remote);
    }

    /// A new remote session over every replica. Generous timeouts: a call
    /// waits through elections and cuts rather than fail.
    pub fn session(&self) -> Client {
        let cfg = ClientConfig {
            timeout: Duration::from_secs(30),
            ..ClientConfig::default()
        };
        let nodes: Vec<Arc<dyn NodeApi>> = self
            .nodes
            .values()
            .map(|n| Arc::clone(n) as Arc<dyn NodeApi>)
            .collect();
        Client::connect_to(nodes, cfg).expect("remote session")
    }

    /// The leader every reachable replica agrees on, seen through the remote
    /// nodes' cached statuses (of the replicas in `among`).
    pub fn wait_leader_among(&self, among: &[u64]) -> u64 {
        let mut leader = 0;
        wait_until("an agreed leader", || {
            let statuses: Vec<_> = among.iter().map(|id| self.nodes[id].status()).collect();
            wait::agreed_leader(&statuses).map(|l| leader = l).is_some()
        });
        leader
    }

    pub fn wait_leader(&self) -> u64 {
        self.wait_leader_among(&self.ids())
    }

    /// Waits until every replica applied everything the leader committed.
    pub fn wait_converged(&self) {
        wait_until("every replica applies the leader's commit", || {
            let statuses: Vec<_> = self.nodes.values().map(|n| n.status()).collect();
            let Some(leader) = statuses.iter().find(|s| s.role == StateRole::Leader) else {
                return false;
            };
            statuses
                .iter()
                .all(|s| s.applied >= leader.commit && s.commit == leader.commit)
        });
    }

    /// Makes replica `id` the leader (transfers, waits, retries), bounded.
    pub fn make_leader(&self, session: &Client, id: u64) {
        let start = Instant::now();
        loop {
            let node = &self.nodes[&id];
            if node.status().role == StateRole::Leader {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "replica {id} never became leader: {:?}",
                node.status()
            );
            let _ = session.transfer_leader(id);
            let asked = Instant::now();
            while asked.elapsed() < Duration::from_secs(3)
                && node.status().role != StateRole::Leader
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Reads `keys` at replica `id` itself (linearizable reads it serves as
    /// leader): its own applied state. Retries the whole read after losing
    /// leadership.
    pub fn read_at(&self, session: &Client, id: u64, keys: &[String]) -> Vec<Option<Vec<u8>>> {
        let start = Instant::now();
        'again: loop {
            assert!(start.elapsed() < WAIT, "reads at replica {id} never served");
            self.make_leader(session, id);
            let node = &self.nodes[&id];
            let mut values = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(64) {
                let mut slots = Vec::with_capacity(chunk.len());
                for key in chunk {
                    match node.read(KvStore::get(key.as_bytes())) {
                        Ok(slot) => slots.push(slot),
                        Err(_) => continue 'again,
                    }
                }
                for slot in slots {
                    match slot.wait(WAIT) {
                        Some(Ok(Reply::Read(bytes))) => {
                            values.push(KvStore::decode_response(&bytes).expect("kv response"))
                        }
                        Some(Err(RequestError::NotLeader { .. }))
                        | Some(Err(RequestError::LeaderChanged))
                        | Some(Err(RequestError::TimedOut))
                        | Some(Err(RequestError::Dropped))
                        | Some(Err(RequestError::Overloaded))
                        | Some(Err(RequestError::Stopped))
                        | None => continue 'again,
                        other => panic!("read at replica {id}: {other:?}"),
                    }
                }
            }
            return values;
        }
    }

    /// The end of every scenario: every replica (each made leader in turn, so
    /// each answers from its own state machine) holds every acknowledged write
    /// with its value, and all replicas answer the same for every key ever
    /// written, acknowledged or not.
    pub fn check_no_acknowledged_write_lost(&self, workload: &Workload) {
        self.wait_converged();
        let session = self.session();
        let keys = workload.every_key();
        let mut answers: BTreeMap<u64, Vec<Option<Vec<u8>>>> = BTreeMap::new();
        for id in self.ids() {
            let values = self.read_at(&session, id, &keys);
            for (key, value) in keys.iter().zip(&values) {
                if let Some(acked) = workload.acknowledged.get(key) {
                    assert_eq!(
                        value.as_deref(),
                        Some(acked.as_bytes()),
                        "replica {id} lost the acknowledged write of {key}"
                    );
                }
            }
            answers.insert(id, values);
        }
        let first = answers.values().next().expect("a replica");
        for (id, values) in &answers {
            assert_eq!(values, first, "replica {id} diverges");
        }
        println!(
            "checked {} acknowledged and {} unacknowledged writes at {} replicas",
            workload.acknowledged.len(),
            workload.unacknowledged.len(),
            answers.len()
        );
    }
}

/// What a workload wrote: acknowledged puts (key → value) and the keys of
/// puts whose outcome is unknown (they may or may not have been applied).
#[derive(Debug, Default)]
pub struct Workload {
    pub acknowledged: BTreeMap<String, String>,
    pub unacknowledged: Vec<String>,
}

impl Workload {
    /// Whether some put of `prefix` (a key `prefix/i`) was acknowledged.
    pub fn acknowledged_under(&self, prefix: &str) -> bool {
        let start = format!("{prefix}/");
        self.acknowledged.keys().any(|k| k.starts_with(&start))
    }

    /// `count` puts of fresh keys `prefix/i`, one at a time through `session`.
    pub fn put(&mut self, session: &Client, prefix: &str, count: usize) {
        for i in 0..count {
            let key = format!("{prefix}/{i}");
            let value = format!("value of {key}");
            match session.propose(KvStore::put(key.as_bytes(), value.as_bytes())) {
                Ok(response) => {
                    assert_eq!(
                        KvStore::decode_response(&response).expect("kv response"),
                        None,
                        "{key} is fresh"
                    );
                    self.acknowledged.insert(key, value);
                }
                Err(e) => {
                    println!("put {key}: {e}");
                    self.unacknowledged.push(key);
                }
            }
        }
    }

    pub fn every_key(&self) -> Vec<String> {
        self.acknowledged
            .keys()
            .cloned()
            .chain(self.unacknowledged.iter().cloned())
            .collect()
    }
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > WAIT {
            let _ = child.kill();
            panic!("the replica process did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for ProcessFleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for id in self.ids() {
                eprintln!("--- replica {id} log tail ---\n{}", self.log_tail(id));
            }
        }
        if let Some(remote) = self.remote.take() {
            remote.shutdown();
        }
        for (_, mut p) in std::mem::take(&mut self.processes) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if let Some(proxy) = self.proxy.take() {
            let _ = proxy.shutdown(Duration::from_secs(5));
        }
    }
}

/// `OpenOptions::mode(0o600)` on unix.
trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}
