//! A fleet of 5 replicas in 3 datacenters on sled, in a temporary directory:
//! replicate a stream of commands from concurrent clients, cut off the leader's
//! whole datacenter, carry on, heal, and check every replica converged.
//!
//! Run: `cargo run --release --example fleet` (options: `--commands N`,
//! `--clients C`, `--inter-dc-ms D`, `--store sled|sealed`; `--help` lists them). `--store sealed`
//! wraps each replica's sled store in `Sealed`, sealed by its own soft HSM.
// The example runs the threaded runtime and measures it in wall-clock time.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use vaultfleet::replica::ReplicaConfig;
use vaultfleet::runtime::{Client, ClientConfig, Node, NodeConfig};
use vaultfleet::{
    ChannelNetwork, FleetConfig, KvStore, LogStore, MemberSpec, Replica, Sealed, SealedConfig,
    SledLog, SoftHsm,
};

/// A fleet of 5 replicas in 3 datacenters on sled: stream commands, cut off the
/// leader's datacenter, carry on, heal, and check every replica converged.
#[derive(Debug, Parser)]
#[command(name = "fleet")]
struct Options {
    /// Commands streamed in each phase.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    commands: u64,
    /// Concurrent client threads.
    #[arg(long, value_name = "C", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    clients: u64,
    /// One-way delay between datacenters, in milliseconds.
    #[arg(long, value_name = "D", default_value_t = 5)]
    inter_dc_ms: u64,
    /// Each replica's store: sled, or sled sealed by its own soft HSM.
    #[arg(long, value_enum, default_value_t = StoreKind::Sled)]
    store: StoreKind,
}

/// Each replica's store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    /// Plain sled.
    Sled,
    /// Sled wrapped in `Sealed`, sealed by the replica's own soft HSM.
    Sealed,
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

fn spawn<L: LogStore>(
    mut log: L,
    id: u64,
    fleet: &FleetConfig,
    net: &ChannelNetwork,
) -> Result<Node, Box<dyn std::error::Error>> {
    Replica::bootstrap(&mut log, &KvStore::new(), fleet)?;
    Ok(Node::spawn(
        NodeConfig::new(ReplicaConfig::new(id)),
        log,
        KvStore::new(),
        net.transport(id),
    )?)
}

/// Sends `commands` puts from `clients` threads; returns committed ops/s.
fn stream(client: &Client, phase: &str, commands: u64, clients: u64) -> f64 {
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let client = client.clone();
            let per_thread = commands / clients;
            let phase = phase.to_string();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    client
                        .propose(KvStore::put(format!("{phase}/{t}/{i}"), vec![b'x'; 64]))
                        .expect("the fleet keeps committing");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    (commands / clients * clients) as f64 / start.elapsed().as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = Options::parse();
    init_tracing();
    let (commands, clients) = (options.commands, options.clients);
    let inter_dc = Duration::from_millis(options.inter_dc_ms);
    let store = options.store;
    let fleet = FleetConfig::new(vec![
        MemberSpec::voter(1, "dc-a"),
        MemberSpec::voter(2, "dc-a"),
        MemberSpec::voter(3, "dc-b"),
        MemberSpec::voter(4, "dc-b"),
        MemberSpec::voter(5, "dc-c"),
    ]);
    for warning in fleet.validate()? {
        println!("config warning: {warning}");
    }
    let dir = tempfile::tempdir()?;
    let net = ChannelNetwork::new();
    net.set_datacenter_delays(&fleet, Duration::ZERO, inter_dc);
    let mut nodes = Vec::new();
    for m in &fleet.members {
        let path = dir.path().join(format!("replica-{}", m.id));
        let node = if store == StoreKind::Sealed {
            // One HSM per host; here an in-process soft HSM per replica.
            let hsm = SoftHsm::new();
            let log = Sealed::open_sled(
                path,
                hsm,
                SealedConfig::new(ReplicaConfig::new(m.id).group, m.id),
            )?;
            spawn(log, m.id, &fleet, &net)?
        } else {
            spawn(SledLog::open(path)?, m.id, &fleet, &net)?
        };
        net.register(m.id, Arc::new(node.handle()));
        nodes.push(node);
    }
    println!(
        "fleet: 5 replicas in 3 datacenters (dc-a: 1,2  dc-b: 3,4  dc-c: 5), {} stores under {}, {} ms between datacenters",
        if store == StoreKind::Sealed { "HSM-sealed sled" } else { "sled" },
        dir.path().display(),
        inter_dc.as_millis()
    );
    let handles: Vec<_> = nodes.iter().map(Node::handle).collect();
    let client = Client::connect(handles.clone(), ClientConfig::default())?;
    let leader = handles.iter().find_map(|h| h.status().leader).unwrap_or(1);
    println!(
        "leader: replica {leader} in {}",
        fleet.datacenter_of(leader).unwrap_or("?")
    );

    let rate = stream(&client, "healthy", commands, clients);
    println!("healthy fleet: {commands} commands from {clients} clients, {rate:.0} committed ops/s (every command fsynced by a majority)");

    let leader = handles.iter().find_map(|h| h.status().leader).unwrap_or(1);
    let dc = fleet.datacenter_of(leader).unwrap_or("dc-a").to_string();
    let cut = fleet.datacenters()[dc.as_str()].clone();
    println!("cutting off {dc} (replicas {cut:?}, including the leader {leader})");
    let cut_at = Instant::now();
    net.isolate(&cut);
    client.propose(KvStore::put("after-cut", "first"))?;
    let new_leader = handles
        .iter()
        .map(|h| h.status())
        .find(|s| s.role == raft::StateRole::Leader && !cut.contains(&s.id))
        .map(|s| s.id);
    println!(
        "first command committed {} ms after the cut, new leader: {}",
        cut_at.elapsed().as_millis(),
        new_leader.map_or("?".to_string(), |l| format!(
            "replica {l} in {}",
            fleet.datacenter_of(l).unwrap_or("?")
        ))
    );
    let rate = stream(&client, "degraded", commands, clients);
    println!("with {dc} cut off: {commands} commands, {rate:.0} committed ops/s (3 of 5 replicas)");

    net.heal();
    let commit = handles.iter().map(|h| h.status().commit).max().unwrap_or(0);
    let healed_at = Instant::now();
    while handles.iter().any(|h| h.status().applied < commit) {
        if healed_at.elapsed() > Duration::from_secs(30) {
            return Err("replicas did not catch up after healing".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "healed: every replica applied index {commit} within {} ms",
        healed_at.elapsed().as_millis()
    );
    for h in &handles {
        let s = h.status();
        println!(
            "  replica {} ({}): {:?}, term {}, applied {}",
            s.id,
            fleet.datacenter_of(s.id).unwrap_or("?"),
            s.role,
            s.term,
            s.applied
        );
    }
    for node in nodes {
        node.shutdown()?;
    }
    Ok(())
}
