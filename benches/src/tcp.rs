//! `--transport tcp`: every replica its own process (`vaultfleet-net-replica`:
//! SledLog, KvStore, the Noise TCP transport, remote client sessions served) on
//! loopback, and the bench's clients as remote sessions (`RemoteClient`).
//!
//! Clients share connections: the sessions are spread over groups of remote
//! nodes (one connection per replica per group), each group carrying at most
//! [`IN_FLIGHT_PER_CONNECTION`] commands in flight, under the nodes' default
//! `client_in_flight_max` (256).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use vaultfleet::runtime::{Client, ClientConfig, NodeApi};
use vaultfleet_net::{
    PeerDirectory, PeerEntry, PublicKey, RemoteClient, RemoteConfig, StaticSecret,
};
use zeroize::Zeroizing;

/// Commands in flight one client connection carries at most.
pub const IN_FLIGHT_PER_CONNECTION: u64 = 128;

const GROUP: u64 = 1;
const FLEET: &str = "vaultfleet-bench";
const READY_WAIT: Duration = Duration::from_secs(60);

/// The replica binary: `--replica-bin`, else next to this executable (both
/// are built into the same target directory).
pub fn replica_binary(given: Option<&Path>) -> Result<PathBuf, String> {
    let path = match given {
        Some(p) => p.to_owned(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this executable: {e}"))?
            .with_file_name("vaultfleet-net-replica"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: build it first (cargo build --release -p vaultfleet-net --bin vaultfleet-net-replica) or pass --replica-bin",
            path.display()
        ))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Replica {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// The replica processes and the remote clients reaching them.
pub struct TcpFleet {
    replicas: Vec<Replica>,
    remotes: Vec<RemoteClient>,
    nodes: Vec<Vec<Arc<dyn NodeApi>>>,
    dir: tempfile::TempDir,
}

impl TcpFleet {
    /// Starts `members` replica processes (datacenters `dcs` in turn) on
    /// `store` (`sled`, or `sealed-sled`: each replica's soft HSM in a file of
    /// its own) and `connections` remote clients, each with a node per replica.
    pub fn start(
        binary: &Path,
        members: u64,
        dcs: &[&str],
        store: &str,
        connections: u64,
    ) -> Result<TcpFleet, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut secrets = Vec::new();
        let mut addresses = Vec::new();
        for _ in 0..members {
            let mut bytes = Zeroizing::new([0u8; 32]);
            rand::rngs::OsRng.fill_bytes(bytes.as_mut());
            secrets.push(bytes);
            // Ports picked here, released for the child to bind.
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("no free port: {e}"))?;
            addresses.push(port);
        }
        let publics: Vec<PublicKey> = secrets
            .iter()
            .map(|s| StaticSecret::from_bytes(s.clone()).map(|k| k.public_key()))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let client_key = StaticSecret::generate().map_err(|e| e.to_string())?;
        let dc = |i: usize| dcs[i % dcs.len()];
        let mut peers = format!("fleet {FLEET}\ngroup {GROUP}\n");
        for (i, (address, key)) in addresses.iter().zip(&publics).enumerate() {
            peers.push_str(&format!(
                "replica {} {address} {} {}\n",
                i + 1,
                dc(i),
                hex(key.as_bytes())
            ));
        }
        peers.push_str(&format!(
            "client {}\n",
            hex(client_key.public_key().as_bytes())
        ));
        let peers_path = dir.path().join("peers");
        std::fs::write(&peers_path, peers).map_err(|e| e.to_string())?;

        let mut fleet = TcpFleet {
            replicas: Vec::new(),
            remotes: Vec::new(),
            nodes: Vec::new(),
            dir,
        };
        for (i, secret) in secrets.iter().enumerate() {
            let id = i as u64 + 1;
            let key_path = fleet.dir.path().join(format!("key-{id}"));
            write_key(&key_path, secret)?;
            let log_path = fleet.dir.path().join(format!("replica-{id}.log"));
            let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
            let mut command = Command::new(binary);
            command.arg("--store").arg(store);
            if store == "sealed-sled" {
                command
                    .arg("--hsm-file")
                    .arg(fleet.dir.path().join(format!("replica-{id}.hsm")));
            }
            let mut child = command
                .arg("--id")
                .arg(id.to_string())
                .arg("--dir")
                .arg(fleet.dir.path().join(format!("replica-{id}")))
                .arg("--listen")
                .arg(addresses[i].to_string())
                .arg("--peers")
                .arg(&peers_path)
                .arg("--key")
                .arg(&key_path)
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
            let stdout = child.stdout.take().ok_or("no stdout")?;
            let stdin = child.stdin.take();
            fleet.replicas.push(Replica { child, stdin });
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                let _ = tx.send(lines.next());
                for _ in lines {}
            });
            match rx.recv_timeout(READY_WAIT) {
                Ok(Some(Ok(line))) if line.starts_with("ready ") => {}
                other => {
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    return Err(format!("replica {id} did not start ({other:?}):\n{log}"));
                }
            }
        }

        let mut config = RemoteConfig::default();
        config.net.worker_threads = 1;
        for _ in 0..connections {
            let mut directory =
                PeerDirectory::client(FLEET, client_key.clone()).map_err(|e| e.to_string())?;
            for (i, (address, key)) in addresses.iter().zip(&publics).enumerate() {
                directory
                    .insert(
                        i as u64 + 1,
                        PeerEntry {
                            address: *address,
                            datacenter: dc(i).into(),
                            public_key: *key,
                        },
                    )
                    .map_err(|e| e.to_string())?;
            }
            let remote =
                RemoteClient::start(directory, config.clone()).map_err(|e| e.to_string())?;
            fleet
                .nodes
                .push(remote.nodes(GROUP).map_err(|e| e.to_string())?);
            fleet.remotes.push(remote);
        }
        Ok(fleet)
    }

    /// `count` sessions, spread over the connections in turn.
    pub fn clients(&self, count: u64, cfg: ClientConfig) -> Result<Vec<Client>, String> {
        (0..count as usize)
            .map(|c| {
                Client::connect_to(self.nodes[c % self.nodes.len()].clone(), cfg)
                    .map_err(|e| e.to_string())
            })
            .collect()
    }

    /// The replica processes' ids.
    pub fn pids(&self) -> Vec<u32> {
        self.replicas.iter().map(|r| r.child.id()).collect()
    }

    /// Closes the connections, then each process's stdin (a clean exit), and
    /// waits for every process; kills one that does not exit in time.
    pub fn shutdown(mut self) -> Result<(), String> {
        for remote in &self.remotes {
            remote.shutdown();
        }
        self.nodes.clear();
        let mut failed = Vec::new();
        for (i, r) in self.replicas.iter_mut().enumerate() {
            drop(r.stdin.take());
            let start = Instant::now();
            let status = loop {
                match r.child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if start.elapsed() < READY_WAIT => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    _ => {
                        let _ = r.child.kill();
                        let _ = r.child.wait();
                        break None;
                    }
                }
            };
            if !status.is_some_and(|s| s.success()) {
                failed.push(format!("replica {}: {status:?}", i + 1));
            }
        }
        self.replicas.clear();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "replicas did not exit cleanly: {}",
                failed.join(", ")
            ))
        }
    }
}

impl Drop for TcpFleet {
    fn drop(&mut self) {
        for r in &mut self.replicas {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}

fn write_key(path: &Path, secret: &[u8; 32]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(hex(secret).as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// CPU seconds (user + system) of process `pid`, from /proc.
pub fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Peak resident memory of process `pid` in MiB, from /proc.
pub fn peak_mib_of(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
