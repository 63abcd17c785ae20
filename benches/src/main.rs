//! `vaultfleet-bench`: replication throughput of an in-process fleet, with the
//! knobs of openraft's benchmark so the two can be run side by side.
//!
//! ```text
//! cargo run --release -p vaultfleet-bench -- -c 256 -n 200k -m 3 --store mem
//! ```
//!
//! Every operation is a `KvStore` put committed by a majority and applied (through
//! the threaded runtime: `Node`s (a thread per replica, `--runtime threads`) or a
//! `Pool` of `--workers` threads (`--runtime pool`), `Client`, the in-process
//! `ChannelNetwork`; `--groups G` runs G independent groups of `-m` members in
//! one process, the clients spread evenly over them; with
//! `--transport tcp`, each replica is its own `vaultfleet-net-replica` process
//! and every client a remote session over TCP + Noise). The last
//! line is `ops/s=<n> ns/op=<n> p50_us=<n> p99_us=<n>` for scripts. `--help`
//! lists every knob; logs go to stderr, filtered by `RUST_LOG`.
// A benchmark measures wall-clock time on real threads.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use vaultfleet::replica::ReplicaConfig;
use vaultfleet::runtime::{
    Client, ClientConfig, Node, NodeConfig, NodeHandle, Notify, PendingCommand, Pool, PoolConfig,
    PooledNode,
};
use vaultfleet::{
    ChannelNetwork, FleetConfig, KvStore, LogStore, MemLog, MemberSpec, Replica, Sealed,
    SealedConfig, SledLog, SoftHsm,
};
use vaultfleet_bench::Noop;

mod tcp;

/// Replication throughput of a fleet (in process, or one process per replica
/// over TCP with --transport tcp), with the knobs of openraft's benchmark.
/// Sizes take suffixes: 2m, 4k.
#[derive(Debug, Parser)]
#[command(name = "vaultfleet-bench", version)]
struct Options {
    /// Concurrent clients, each with its own session.
    #[arg(short = 'c', value_name = "CLIENTS", default_value = "256", value_parser = count)]
    clients: u64,
    /// Total operations.
    #[arg(short = 'n', value_name = "OPERATIONS", default_value = "100k", value_parser = count)]
    ops: u64,
    /// Members: 1, 3, 5 or 7.
    #[arg(short = 'm', value_name = "MEMBERS", default_value = "3", value_parser = members)]
    members: u64,
    /// Commands each client keeps in flight; the leader batches everything that
    /// arrives in one Ready cycle into one proposal.
    #[arg(short = 'b', value_name = "IN_FLIGHT", default_value = "1", value_parser = count)]
    in_flight: u64,
    /// Driver threads the clients are spread over.
    #[arg(long, value_name = "T", default_value = "1", value_parser = count)]
    threads: u64,
    /// Bytes per put.
    #[arg(long, value_name = "BYTES", default_value = "64", value_parser = bytes)]
    payload: usize,
    /// noop (a state machine with no data, as openraft's benchmark) or kv
    /// (KvStore: every put inserted into an ordered map).
    #[arg(long, default_value = "noop", value_parser = ["noop", "kv"])]
    machine: String,
    /// mem (durable at once, as openraft's benchmark store), sled (fsync per
    /// Ready cycle), sealed-sled (sled sealed by a soft HSM), sealed-pkcs11 (sled
    /// sealed by SoftHSM2 over PKCS#11).
    #[arg(long, default_value = "mem", value_parser = ["mem", "sled", "sealed-sled", "sealed-pkcs11"])]
    store: String,
    /// in-process (every replica a thread, the in-process ChannelNetwork) or
    /// tcp (every replica its own vaultfleet-net-replica process on loopback,
    /// over TCP + Noise; clients are remote sessions). tcp runs the replica
    /// binary's KvStore on sled or sealed sled (a soft HSM in a file per
    /// replica): pass --store sled or sealed-sled, and --machine kv.
    #[arg(long, default_value = "in-process", value_parser = ["in-process", "tcp"])]
    transport: String,
    /// The vaultfleet-net-replica binary for --transport tcp (default: next to
    /// this executable; build it with `cargo build --release -p vaultfleet-net
    /// --bin vaultfleet-net-replica`).
    #[arg(long, value_name = "PATH")]
    replica_bin: Option<std::path::PathBuf>,
    /// threads (a thread per replica: `Node`) or pool (every replica of the
    /// process on one `Pool` of --workers threads). In process only.
    #[arg(long, default_value = "pool", value_parser = ["threads", "pool"])]
    runtime: String,
    /// Worker threads of the pool (--runtime pool).
    #[arg(long, value_name = "N", default_value = "2", value_parser = count)]
    workers: u64,
    /// How long an idle pool worker watches the queue before it parks, in
    /// microseconds (--runtime pool; 0: park at once).
    #[arg(long, value_name = "US", default_value = "50")]
    spin_us: u64,
    /// Independent raft groups of -m members each, all in this process; the
    /// clients are spread evenly over them. In process only.
    #[arg(long, value_name = "G", default_value = "1", value_parser = count)]
    groups: u64,
    /// One line of JSON instead of the table.
    #[arg(long)]
    json: bool,
}

fn size(v: &str) -> Result<u64, String> {
    let (num, mult) = match v.chars().last() {
        Some('k' | 'K') => (&v[..v.len() - 1], 1_000),
        Some('m' | 'M') => (&v[..v.len() - 1], 1_000_000),
        _ => (v, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{v:?} is not a size (examples: 256, 4k, 2m)"))
}

/// A size of at least 1.
fn count(v: &str) -> Result<u64, String> {
    match size(v)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

fn members(v: &str) -> Result<u64, String> {
    match size(v)? {
        n @ (1 | 3 | 5 | 7) => Ok(n),
        _ => Err("must be 1, 3, 5 or 7".into()),
    }
}

fn bytes(v: &str) -> Result<usize, String> {
    usize::try_from(size(v)?).map_err(|_| format!("{v:?} is too large"))
}

/// Logs to stderr, filtered by `RUST_LOG` (warnings and errors when unset).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// A replica of the in-process fleet, on either runtime.
enum Running {
    Thread(Node),
    Pooled(PooledNode),
}

impl Running {
    fn handle(&self) -> NodeHandle {
        match self {
            Running::Thread(n) => n.handle(),
            Running::Pooled(n) => n.handle(),
        }
    }

    fn shutdown(self) -> Result<(), String> {
        match self {
            Running::Thread(n) => n.shutdown(),
            Running::Pooled(n) => n.shutdown(),
        }
        .map_err(|e| e.to_string())
    }
}

/// Starts replica `id` of `group` on `pool`, or on a thread of its own.
fn spawn<L: LogStore>(
    mut log: L,
    (group, id): (u64, u64),
    fleet: &FleetConfig,
    net: &ChannelNetwork,
    machine: &str,
    pool: Option<&Pool>,
) -> Result<Running, String> {
    let mut rc = ReplicaConfig::new(id);
    rc.group = group;
    let cfg = NodeConfig::new(rc);
    let transport = net.transport(id);
    fn start<L: LogStore, S: vaultfleet::StateMachine>(
        cfg: NodeConfig,
        log: L,
        machine: S,
        transport: Arc<dyn vaultfleet::transport::Transport>,
        pool: Option<&Pool>,
    ) -> Result<Running, vaultfleet::replica::ReplicaError> {
        match pool {
            Some(pool) => pool
                .spawn(cfg, log, machine, transport)
                .map(Running::Pooled),
            None => Node::spawn(cfg, log, machine, transport).map(Running::Thread),
        }
    }
    let spawned = if machine == "kv" {
        Replica::bootstrap(&mut log, &KvStore::new(), fleet).map_err(|e| e.to_string())?;
        start(cfg, log, KvStore::new(), transport, pool)
    } else {
        Replica::bootstrap(&mut log, &Noop::default(), fleet).map_err(|e| e.to_string())?;
        start(cfg, log, Noop::default(), transport, pool)
    };
    spawned.map_err(|e| e.to_string())
}

/// CPU seconds (user + system) of this process and of `children`, from /proc.
fn cpu_seconds(children: &[String]) -> Option<f64> {
    let mut total = tcp::cpu_seconds_of("self")?;
    for pid in children {
        total += tcp::cpu_seconds_of(pid)?;
    }
    Some(total)
}

/// Peak resident memory of this process and of `children` (summed) in MiB,
/// from /proc.
fn peak_mib(children: &[String]) -> Option<f64> {
    let mut total = tcp::peak_mib_of("self")?;
    for pid in children {
        total += tcp::peak_mib_of(pid)?;
    }
    Some(total)
}

/// What an in-process fleet's nodes need kept alive (their directory, network
/// and token).
type Keep = Vec<Box<dyn std::any::Any>>;

/// The replicas: threads of this process (or a pool's), or processes of their own.
enum Fleet {
    InProcess(Vec<Running>, Option<Pool>, Keep),
    Tcp(tcp::TcpFleet),
}

/// One command in flight: which client sent it, and since when.
struct InFlight {
    client: usize,
    pending: Option<PendingCommand>,
    started: Instant,
}

/// Drives `clients` (index, session) until each has committed `per_client`
/// puts, keeping `in_flight` of each outstanding. Returns every latency in µs.
fn drive(
    clients: Vec<(u64, Client)>,
    per_client: u64,
    in_flight: u64,
    payload: &[u8],
    done: &AtomicU64,
) -> Result<Vec<u32>, String> {
    let (tx, rx) = crossbeam_channel::unbounded::<usize>();
    let mut latencies = Vec::with_capacity(clients.len() * per_client as usize);
    let mut sent = vec![0u64; clients.len()];
    let mut slots: Vec<InFlight> = Vec::new();
    let mut notifiers: Vec<Notify> = Vec::new();
    let put = |c: usize, i: u64| KvStore::put(format!("{}/{i}", clients[c].0), payload.to_vec());
    for c in 0..clients.len() {
        for _ in 0..in_flight.min(per_client) {
            let slot = slots.len();
            let tx = tx.clone();
            let notify: Notify = Arc::new(move || {
                let _ = tx.send(slot);
            });
            let started = Instant::now();
            let pending = clients[c]
                .1
                .propose_notify(put(c, sent[c]), Arc::clone(&notify));
            sent[c] += 1;
            notifiers.push(notify);
            slots.push(InFlight {
                client: c,
                pending: Some(pending),
                started,
            });
        }
    }
    let mut live = slots.len();
    let mut ready = Vec::new();
    // Every 20 ms, poll everything whatever arrived: a retry the node refused at
    // once produces no notification.
    let sweep_every = Duration::from_millis(20);
    let mut next_sweep = Instant::now() + sweep_every;
    while live > 0 {
        let now = Instant::now();
        if now >= next_sweep {
            ready.extend(0..slots.len());
            next_sweep = now + sweep_every;
        } else if let Ok(i) = rx.recv_timeout(next_sweep - now) {
            ready.push(i);
        }
        ready.extend(rx.try_iter());
        // One clock read for the whole batch: it follows every completion
        // taken below and precedes every submit, so no latency is counted
        // short (a read per command was 3% of a 5-member run's samples).
        let now = Instant::now();
        for i in ready.drain(..) {
            let s = &mut slots[i];
            let Some(p) = s.pending.as_mut() else {
                continue;
            };
            match p.poll() {
                None => continue,
                Some(Err(e)) => return Err(format!("client {}: {e}", clients[s.client].0)),
                Some(Ok(_)) => {}
            }
            let us = now
                .saturating_duration_since(s.started)
                .as_micros()
                .min(u32::MAX as u128) as u32;
            latencies.push(us);
            done.fetch_add(1, Ordering::Relaxed);
            let c = s.client;
            if sent[c] < per_client {
                // Started before the submit: the commit may complete before
                // `propose_notify` returns (a woken worker can preempt this thread).
                s.started = now;
                s.pending = Some(
                    clients[c]
                        .1
                        .propose_notify(put(c, sent[c]), Arc::clone(&notifiers[i])),
                );
                sent[c] += 1;
            } else {
                s.pending = None;
                live -= 1;
            }
        }
    }
    Ok(latencies)
}

fn main() -> ExitCode {
    let options = Options::parse();
    init_tracing();
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

fn run(o: &Options) -> Result<(), String> {
    let dcs = ["dc-a", "dc-b", "dc-c"];
    let cfg = ClientConfig {
        timeout: Duration::from_secs(60),
        ..ClientConfig::default()
    };
    let (fleet, clients) = if o.transport == "tcp" {
        if !matches!(o.store.as_str(), "sled" | "sealed-sled") || o.machine != "kv" {
            return Err(
                "--transport tcp runs vaultfleet-net-replica (SledLog or sealed sled, KvStore): pass --store sled or sealed-sled, and --machine kv"
                    .into(),
            );
        }
        if o.groups != 1 {
            return Err("--groups runs in process only".into());
        }
        let binary = tcp::replica_binary(o.replica_bin.as_deref())?;
        let connections = (o.clients * o.in_flight).div_ceil(tcp::IN_FLIGHT_PER_CONNECTION);
        let fleet = tcp::TcpFleet::start(&binary, o.members, &dcs, &o.store, connections)?;
        let clients = fleet.clients(o.clients, cfg)?;
        (Fleet::Tcp(fleet), clients)
    } else {
        let pool = match o.runtime.as_str() {
            "pool" => Some(
                Pool::new(PoolConfig {
                    workers: usize::try_from(o.workers).map_err(|e| e.to_string())?,
                    spin: Duration::from_micros(o.spin_us),
                    ..PoolConfig::new()
                })
                .map_err(|e| e.to_string())?,
            ),
            _ => None,
        };
        let (nodes, keep) = in_process(o, &dcs, pool.as_ref())?;
        let handles: Vec<NodeHandle> = nodes.iter().map(Running::handle).collect();
        // Client c talks to group c % G (the groups' members are consecutive).
        let members = o.members as usize;
        let clients: Vec<Client> = (0..o.clients as usize)
            .map(|c| {
                let group = c % o.groups as usize;
                let handles = handles[group * members..(group + 1) * members].to_vec();
                Client::connect(handles, cfg).map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        (Fleet::InProcess(nodes, pool, keep), clients)
    };
    let children: Vec<String> = match &fleet {
        Fleet::Tcp(f) => f.pids().iter().map(u32::to_string).collect(),
        Fleet::InProcess(..) => Vec::new(),
    };
    measure(o, clients, &children)?;
    match fleet {
        Fleet::InProcess(nodes, pool, keep) => {
            for node in nodes {
                let _ = node.shutdown();
            }
            drop(pool);
            drop(keep);
        }
        Fleet::Tcp(fleet) => fleet.shutdown()?,
    }
    Ok(())
}

/// Starts the in-process fleet (`--groups` groups of `-m` members, group by
/// group) on `pool` or on threads; returns its replicas and what must outlive
/// them.
fn in_process(
    o: &Options,
    dcs: &[&str],
    pool: Option<&Pool>,
) -> Result<(Vec<Running>, Keep), String> {
    let fleet = FleetConfig::new(
        (1..=o.members)
            .map(|id| MemberSpec::voter(id, dcs[(id as usize - 1) % 3]))
            .collect(),
    );
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
    #[cfg(feature = "pkcs11")]
    let mut token = None;
    let mut nodes = Vec::new();
    for group in 1..=o.groups {
        let net = ChannelNetwork::new();
        for id in 1..=o.members {
            let at = (group, id);
            let path = dir.path().join(format!("group-{group}-replica-{id}"));
            let node = match o.store.as_str() {
                "mem" => spawn(MemLog::new(), at, &fleet, &net, &o.machine, pool)?,
                "sled" => spawn(
                    SledLog::open(&path).map_err(|e| e.to_string())?,
                    at,
                    &fleet,
                    &net,
                    &o.machine,
                    pool,
                )?,
                "sealed-sled" => {
                    let log =
                        Sealed::open_sled(&path, SoftHsm::new(), SealedConfig::new(group, id))
                            .map_err(|e| e.to_string())?;
                    spawn(log, at, &fleet, &net, &o.machine, pool)?
                }
                _ => {
                    #[cfg(feature = "pkcs11")]
                    {
                        if token.is_none() {
                            token = Some(vaultfleet_bench::softhsm2::throwaway()?);
                        }
                        let hsm = token.as_ref().map(|(h, _)| h.clone()).ok_or("no token")?;
                        let log = Sealed::open_sled(&path, hsm, SealedConfig::new(group, id))
                            .map_err(|e| e.to_string())?;
                        spawn(log, at, &fleet, &net, &o.machine, pool)?
                    }
                    #[cfg(not(feature = "pkcs11"))]
                    return Err("--store sealed-pkcs11 needs the pkcs11 feature".into());
                }
            };
            net.register(id, Arc::new(node.handle()));
            nodes.push(node);
        }
        keep.push(Box::new(net));
    }
    // The directory, the networks and the token live as long as the nodes.
    keep.push(Box::new(dir));
    #[cfg(feature = "pkcs11")]
    keep.push(Box::new(token));
    Ok((nodes, keep))
}

/// Runs the workload on `clients` and prints the figures (CPU and peak memory
/// include the replica processes `children`).
fn measure(o: &Options, clients: Vec<Client>, children: &[String]) -> Result<(), String> {
    // Warm up: a leader, sessions registered.
    clients[0]
        .propose(KvStore::put("warm-up", "x"))
        .map_err(|e| format!("the fleet did not come up: {e}"))?;

    let done = Arc::new(AtomicU64::new(0));
    let per_client = o.ops.div_ceil(o.clients);
    let total = per_client * o.clients;
    let cpu0 = cpu_seconds(children);
    let start = Instant::now();
    let progress = std::io::stderr().is_terminal() && !o.json;
    let reporter = progress.then(|| {
        let done = Arc::clone(&done);
        std::thread::spawn(move || loop {
            let n = done.load(Ordering::Relaxed);
            let filled = (n * 30 / total) as usize;
            eprint!(
                "\r[{}{}] {n}/{total}",
                "#".repeat(filled),
                " ".repeat(30 - filled.min(30))
            );
            let _ = std::io::stderr().flush();
            if n >= total {
                eprintln!();
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        })
    });
    let payload = vec![b'v'; o.payload];
    // Clients are spread over a few driver threads; each driver keeps `in_flight`
    // commands per client outstanding and sleeps until a node fills a response
    // slot (one wake-up per batch of completions, not one per command).
    let threads = o.threads.min(o.clients) as usize;
    let mut shares: Vec<Vec<(u64, Client)>> = (0..threads).map(|_| Vec::new()).collect();
    for (c, client) in clients.into_iter().enumerate() {
        shares[c % threads].push((c as u64, client));
    }
    let workers: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let done = Arc::clone(&done);
            let payload = payload.clone();
            let in_flight = o.in_flight;
            std::thread::spawn(move || drive(share, per_client, in_flight, &payload, &done))
        })
        .collect();
    let mut latencies = Vec::with_capacity(total as usize);
    for w in workers {
        latencies.extend(w.join().map_err(|_| "a client thread panicked")??);
    }
    let wall = start.elapsed().as_secs_f64();
    if let Some(r) = reporter {
        done.store(total, Ordering::Relaxed);
        let _ = r.join();
    }
    let cpu = cpu_seconds(children).zip(cpu0).map(|(a, b)| a - b);
    let peak = peak_mib(children);
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    let ops_s = total as f64 / wall;
    let ns_op = wall * 1e9 / total as f64;
    let (p50, p99, p999) = (pct(0.50), pct(0.99), pct(0.999));
    let runtime = if o.transport == "tcp" {
        "processes"
    } else {
        o.runtime.as_str()
    };
    if o.json {
        println!(
            "{{\"transport\":\"{}\",\"runtime\":\"{}\",\"groups\":{},\"machine\":\"{}\",\"store\":\"{}\",\"members\":{},\"clients\":{},\"in_flight\":{},\"payload\":{},\"operations\":{total},\"seconds\":{wall:.3},\"ops_per_s\":{ops_s:.0},\"ns_per_op\":{ns_op:.0},\"p50_us\":{p50},\"p99_us\":{p99},\"p999_us\":{p999},\"cpu_s\":{},\"peak_mib\":{}}}",
            o.transport, runtime, o.groups, o.machine, o.store, o.members, o.clients, o.in_flight, o.payload,
            cpu.map_or("null".into(), |c| format!("{c:.2}")),
            peak.map_or("null".into(), |m| format!("{m:.1}")),
        );
    } else {
        println!("| transport | runtime | groups | machine | store | members | clients | in flight | payload | ops | ops/s | ns/op | p50 µs | p99 µs | p999 µs | CPU s | peak MiB |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {total} | {ops_s:.0} | {ns_op:.0} | {p50} | {p99} | {p999} | {} | {} |",
            o.transport, runtime, o.groups, o.machine, o.store, o.members, o.clients, o.in_flight, o.payload,
            cpu.map_or("?".into(), |c| format!("{c:.2}")),
            peak.map_or("?".into(), |m| format!("{m:.1}")),
        );
    }
    println!("ops/s={ops_s:.0} ns/op={ns_op:.0} p50_us={p50} p99_us={p99}");
    Ok(())
}
