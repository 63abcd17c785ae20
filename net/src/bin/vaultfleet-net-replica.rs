//! `vaultfleet-net-replica`: one replica of a fleet in its own OS process, for
//! the multi-process and chaos tests (`net/tests/net/processes.rs`,
//! `net/tests/chaos.rs`) and `vaultfleet-bench --transport tcp`. It is a test and
//! bench process, not the node daemon (issue 15): no HSM-sealed key, no fleet
//! artifact, no membership beyond the peers file.
//!
//! It runs one engine replica (a [`Standalone`]: on a pool of one worker by
//! default, or on a thread of its own with `--runtime threads`) on a
//! [`SledLog`] (`--store sled`, the default) or on sled sealed by a soft HSM
//! kept in a file (`--store sealed-sled --hsm-file`; the file holds the HSM's
//! keys in the clear: tests and benchmarks only) with the engine's
//! [`KvStore`], the [`NetTransport`] (Noise IK, every peer key pinned) and
//! [`NetTransport::serve_clients`] for remote client sessions. Once it serves,
//! it prints `ready <listen address>` on stdout; logs go to stderr (`RUST_LOG`,
//! `info` when unset). It exits 0 after a clean shutdown on SIGTERM, SIGINT or
//! when its standard input closes (so a test's children die with the test).
//!
//! The peers file, one item per line (`#` starts a comment):
//!
//! ```text
//! fleet <fleet id>
//! group <raft group>                                      (optional, default 1)
//! replica <id> <address> <datacenter> <public key, 64 hex digits>
//! client <public key, 64 hex digits> [admin]
//! ```
//!
//! Every `replica` line is a voter of the bootstrap configuration (every
//! process must list the same ids and datacenters; the addresses may differ,
//! e.g. a fault-injecting proxy's listener per pair). `client` lines are the
//! keys allowed to open remote sessions; `admin` also lets that key change
//! membership and transfer leadership. The key file holds this process's
//! X25519 static secret as 64 hex digits and must not be readable by group or
//! others (mode 0600).
// A process's main loop waits on wall-clock time and owns its threads.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Arc;

use clap::Parser;
use vaultfleet::replica::ReplicaConfig;
use vaultfleet::runtime::{NodeConfig, RuntimeKind, Standalone};
use vaultfleet::storage::SnapshotFilesHost as _;
use vaultfleet::{
    FleetConfig, KvStore, LogStore, MemberSpec, Replica, ReplicaId, Sealed, SealedConfig, SledLog,
    SoftHsm,
};
use vaultfleet_net::keys::KEY_BYTES;
use vaultfleet_net::{
    ClientRole, NetConfig, NetTransport, PeerDirectory, PeerEntry, PublicKey, StaticSecret,
};
use zeroize::Zeroizing;

/// The peers file's format, shown by `--help`.
const PEERS_FILE_HELP: &str = "\
The peers file, one item per line (# starts a comment):
  fleet <fleet id>
  group <raft group>                                  (optional, default 1)
  replica <id> <ip:port> <datacenter> <public key: 64 hex digits>
  client <public key: 64 hex digits> [admin]
Every replica line is a voter of the bootstrap configuration; client lines are
the keys allowed to open remote sessions (admin: also membership changes and
leadership transfers). Logs go to stderr (RUST_LOG).";

/// One replica of a vaultfleet fleet in its own process, over TCP + Noise.
///
/// A TEST AND BENCH PROCESS until the node daemon of issue 15 exists: its key
/// is a plain file (mode 0600), its fleet a hand-written peers file. Prints
/// `ready <address>` on stdout once serving; exits 0 on SIGTERM, SIGINT or
/// when stdin closes (unless --ignore-stdin).
#[derive(Debug, Parser)]
#[command(
    name = "vaultfleet-net-replica",
    version,
    verbatim_doc_comment,
    after_help = PEERS_FILE_HELP
)]
struct Options {
    /// This replica's id (listed in the peers file).
    #[arg(long)]
    id: ReplicaId,
    /// The replica's data directory (its sled log); reused on restart.
    #[arg(long)]
    dir: PathBuf,
    /// Where to listen for peers and clients (e.g. 127.0.0.1:7001).
    #[arg(long)]
    listen: SocketAddr,
    /// The peers file: fleet id, every replica (id, address, datacenter,
    /// public key) and the allowed client keys.
    #[arg(long)]
    peers: PathBuf,
    /// This process's X25519 static secret: 64 hex digits, mode 0600.
    #[arg(long)]
    key: PathBuf,
    /// Keep running when standard input closes (stop with SIGTERM only).
    #[arg(long)]
    ignore_stdin: bool,
    /// The log store: sled (an fsync per Ready cycle that appends) or sealed-sled (the same
    /// sled, every record sealed and the log's counter advanced by the soft HSM
    /// of --hsm-file).
    #[arg(long, default_value = "sled", value_parser = ["sled", "sealed-sled"])]
    store: String,
    /// The soft HSM's file for --store sealed-sled (created if missing; it holds
    /// the HSM's keys in the clear, mode 0600: tests and benchmarks only).
    #[arg(long, value_name = "PATH")]
    hsm_file: Option<PathBuf>,
    /// What drives the replica: pool (the engine's worker pool, one worker
    /// and a timer) or threads (a thread of the replica's own). Default:
    /// $VAULTFLEET_NET_REPLICA_RUNTIME if set (so a test run can switch every
    /// replica process it starts), else pool.
    #[arg(long, value_parser = [RUNTIMES[0], RUNTIMES[1]])]
    runtime: Option<String>,
    /// Open the store's snapshot files before the replica starts (sealed by
    /// the soft HSM with --store sealed-sled): snapshots are then written to
    /// files and streamed over the transport in chunks. Every process of the
    /// fleet must run a build that streams.
    #[arg(long)]
    streamed_snapshots: bool,
}

/// The values of `--runtime`, the default first.
const RUNTIMES: [&str; 2] = ["pool", "threads"];
/// The environment variable giving `--runtime`'s default.
const RUNTIME_ENV: &str = "VAULTFLEET_NET_REPLICA_RUNTIME";

impl Options {
    /// `--runtime`, else the environment's, else pool.
    fn runtime(&self) -> Result<&'static str, StartError> {
        let chosen = match &self.runtime {
            Some(r) => r.clone(),
            None => match std::env::var(RUNTIME_ENV) {
                Ok(r) => r,
                Err(std::env::VarError::NotPresent) => return Ok(RUNTIMES[0]),
                Err(std::env::VarError::NotUnicode(_)) => String::from("(not UTF-8)"),
            },
        };
        RUNTIMES
            .into_iter()
            .find(|r| *r == chosen)
            .ok_or(StartError::Runtime { value: chosen })
    }
}

/// Why the process could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {what}")]
    Peers {
        path: PathBuf,
        line: usize,
        what: String,
    },
    #[error("{path}: {what}")]
    PeersFile { path: PathBuf, what: &'static str },
    #[error("the key file {path} is readable by group or others (mode {mode:o}): chmod 600 it")]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("the key file {path} does not hold 64 hex digits")]
    KeyFormat { path: PathBuf },
    #[error("bad key")]
    Key(#[from] vaultfleet_net::KeyError),
    #[error("replica {id} is not listed in the peers file")]
    NotListed { id: ReplicaId },
    #[error("replica {id} is listed with key {listed}, but the key file holds {own}")]
    WrongKey {
        id: ReplicaId,
        listed: PublicKey,
        own: PublicKey,
    },
    #[error("invalid peers")]
    Directory(#[from] vaultfleet_net::DirectoryError),
    #[error("the transport did not start")]
    Net(#[from] vaultfleet_net::NetError),
    #[error("the replica did not start")]
    Replica(#[from] vaultfleet::replica::ReplicaError),
    #[error("{RUNTIME_ENV}={value:?} is not a runtime: use pool or threads")]
    Runtime { value: String },
    #[error("the replica's runtime did not start")]
    Standalone(#[from] vaultfleet::runtime::StandaloneError),
    #[error("cannot open the log")]
    Log(#[from] vaultfleet::storage::StorageError),
    #[error("cannot install the signal handler")]
    Signal(#[from] ctrlc::Error),
    #[error("--store sealed-sled needs --hsm-file PATH (the soft HSM's file)")]
    NoHsmFile,
    #[error("cannot open the soft HSM file {path}")]
    Hsm {
        path: PathBuf,
        #[source]
        source: vaultfleet::HsmError,
    },
}

/// One `replica` line.
struct Member {
    id: ReplicaId,
    entry: PeerEntry,
}

/// The peers file, parsed.
struct Peers {
    fleet: String,
    group: u64,
    members: Vec<Member>,
    clients: Vec<(PublicKey, ClientRole)>,
}

fn parse_key(text: &str) -> Option<[u8; KEY_BYTES]> {
    if text.len() != 2 * KEY_BYTES || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; KEY_BYTES];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn read_peers(path: &Path) -> Result<Peers, StartError> {
    let text = std::fs::read_to_string(path).map_err(|source| StartError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut fleet = None;
    let mut group = 1;
    let mut members = Vec::new();
    let mut clients = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let bad = |what: &str| StartError::Peers {
            path: path.to_owned(),
            line: n + 1,
            what: what.to_owned(),
        };
        let line = raw.split('#').next().unwrap_or("").trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            ["fleet", id] => fleet = Some((*id).to_owned()),
            ["group", g] => group = g.parse().map_err(|_| bad("the group is not a number"))?,
            ["replica", id, address, datacenter, key] => {
                let id = id
                    .parse()
                    .map_err(|_| bad("the replica id is not a number"))?;
                let address = address
                    .parse()
                    .map_err(|_| bad("the address is not ip:port"))?;
                let key = parse_key(key).ok_or_else(|| bad("the key is not 64 hex digits"))?;
                members.push(Member {
                    id,
                    entry: PeerEntry {
                        address,
                        datacenter: (*datacenter).to_owned(),
                        public_key: PublicKey::from_bytes(key),
                    },
                });
            }
            ["client", key, role @ ..] => {
                let key = parse_key(key).ok_or_else(|| bad("the key is not 64 hex digits"))?;
                let role = match role {
                    [] => ClientRole::Service,
                    ["admin"] => ClientRole::Admin,
                    _ => return Err(bad("expected `client KEY` or `client KEY admin`")),
                };
                clients.push((PublicKey::from_bytes(key), role));
            }
            _ => return Err(bad(
                "expected `fleet ID`, `group N`, `replica ID ADDR DC KEY` or `client KEY [admin]`",
            )),
        }
    }
    let fleet = fleet.ok_or_else(|| StartError::PeersFile {
        path: path.to_owned(),
        what: "no `fleet` line",
    })?;
    if members.is_empty() {
        return Err(StartError::PeersFile {
            path: path.to_owned(),
            what: "no `replica` line",
        });
    }
    Ok(Peers {
        fleet,
        group,
        members,
        clients,
    })
}

fn read_key(path: &Path) -> Result<StaticSecret, StartError> {
    let read = |source| StartError::Read {
        path: path.to_owned(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StartError::KeyPermissions {
                path: path.to_owned(),
                mode,
            });
        }
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(read)?);
    let bytes =
        parse_key(text.trim())
            .map(Zeroizing::new)
            .ok_or_else(|| StartError::KeyFormat {
                path: path.to_owned(),
            })?;
    Ok(StaticSecret::from_bytes(bytes)?)
}

/// What asked the process to stop.
#[derive(Debug)]
enum Stop {
    Signal,
    StdinClosed,
}

fn run(o: &Options) -> Result<Stop, StartError> {
    let runtime = o.runtime()?;
    let peers = read_peers(&o.peers)?;
    let secret = read_key(&o.key)?;
    let own = peers
        .members
        .iter()
        .find(|m| m.id == o.id)
        .ok_or(StartError::NotListed { id: o.id })?;
    if own.entry.public_key != secret.public_key() {
        return Err(StartError::WrongKey {
            id: o.id,
            listed: own.entry.public_key,
            own: secret.public_key(),
        });
    }
    let mut directory = PeerDirectory::new(peers.fleet.clone(), [o.id], secret)?;
    for m in &peers.members {
        directory.insert(m.id, m.entry.clone())?;
    }
    for &(key, role) in &peers.clients {
        directory.allow_client_as(key, role)?;
    }
    let fleet = FleetConfig::new(
        peers
            .members
            .iter()
            .map(|m| MemberSpec::voter(m.id, m.entry.datacenter.clone()))
            .collect(),
    );

    let (stop_tx, stop_rx) = mpsc::channel::<Stop>();
    let on_signal = stop_tx.clone();
    ctrlc::set_handler(move || {
        let _ = on_signal.send(Stop::Signal);
    })?;
    if !o.ignore_stdin {
        // A detached thread: it ends with the process.
        std::thread::Builder::new()
            .name("stdin-watch".into())
            .spawn(move || {
                let mut sink = std::io::sink();
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut sink);
                let _ = stop_tx.send(Stop::StdinClosed);
            })
            .map_err(|source| StartError::Read {
                path: "<stdin>".into(),
                source,
            })?;
    }

    let group = peers.group;
    let started = match o.store.as_str() {
        "sealed-sled" => {
            let path = o.hsm_file.as_ref().ok_or(StartError::NoHsmFile)?;
            let hsm = SoftHsm::open(path).map_err(|source| StartError::Hsm {
                path: path.clone(),
                source,
            })?;
            let mut log = Sealed::open_sled(&o.dir, hsm, SealedConfig::new(group, o.id))?;
            if o.streamed_snapshots {
                log.open_snapshot_files()?;
            }
            start(o, group, log, &fleet, directory)?
        }
        _ => {
            let mut log = SledLog::open(&o.dir)?;
            if o.streamed_snapshots {
                log.open_snapshot_files(o.id, None)?;
            }
            start(o, group, log, &fleet, directory)?
        }
    };
    let (transport, node, fresh) = started;
    tracing::info!(
        replica = o.id,
        group,
        fleet = %peers.fleet,
        store = %o.store,
        runtime,
        streamed_snapshots = o.streamed_snapshots,
        listen = %transport.local_addr(),
        bootstrapped = fresh,
        key = %transport.directory().local_public_key(),
        "serving"
    );
    println!("ready {}", transport.local_addr());

    // Every sender lives as long as its thread or handler: a closed channel
    // cannot happen, but would mean stop too.
    let why = stop_rx.recv().unwrap_or(Stop::Signal);
    tracing::info!(replica = o.id, reason = ?why, "stopping");
    transport.shutdown();
    node.shutdown()?;
    Ok(why)
}

/// Bootstraps `log` if it is empty, starts the transport and the node on it,
/// and serves peers and clients. Returns the transport, the node and whether
/// the log was bootstrapped now.
fn start<L: LogStore>(
    o: &Options,
    group: u64,
    mut log: L,
    fleet: &FleetConfig,
    directory: PeerDirectory,
) -> Result<(NetTransport, Standalone, bool), StartError> {
    let fresh = Replica::bootstrap(&mut log, &KvStore::new(), fleet)?;
    let transport = NetTransport::start(directory, NetConfig::new(o.listen))?;
    let mut node_config = NodeConfig::new(ReplicaConfig::new(o.id));
    node_config.replica.group = group;
    let node = spawn(o, node_config, log, Arc::new(transport.clone()));
    let node = match node {
        Ok(node) => node,
        Err(e) => {
            transport.shutdown();
            return Err(e);
        }
    };
    let served = transport
        .register(group, o.id, Arc::new(node.handle()))
        .and_then(|()| transport.serve_clients(group, Arc::new(node.handle())));
    if let Err(e) = served {
        transport.shutdown();
        let _ = node.shutdown();
        return Err(e.into());
    }
    Ok((transport, node, fresh))
}

/// Spawns the replica on `--runtime`'s runtime.
fn spawn<L: LogStore>(
    o: &Options,
    node_config: NodeConfig,
    log: L,
    transport: Arc<NetTransport>,
) -> Result<Standalone, StartError> {
    let kind = if o.runtime()? == "threads" {
        RuntimeKind::Threads
    } else {
        RuntimeKind::Pool
    };
    Ok(Standalone::spawn(
        kind,
        node_config,
        log,
        KvStore::new(),
        transport,
    )?)
}

fn main() -> ExitCode {
    let options = Options::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(&options) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            let mut text = format!("vaultfleet-net-replica: {e}");
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            eprintln!("{text}");
            ExitCode::from(2)
        }
    }
}
