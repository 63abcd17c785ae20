//! The Backup Key Vault on a fleet of 5 replicas in 3 datacenters, each on
//! HSM-sealed sled storage: users register a backup key behind a recovery code,
//! recover it with right and wrong codes, an attacker exhausts one user's
//! attempts, a whole datacenter is cut off, and recovery goes on.
//!
//! Run: `cargo run --release --example vault` (options: `--users N`,
//! `--inter-dc-ms D`, `--ksf recommended|tests-only`; `--help` lists them).
// The example runs the threaded runtime and measures it in wall-clock time.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use vaultfleet::replica::ReplicaConfig;
use vaultfleet::runtime::{Node, NodeConfig};
use vaultfleet::NodeHandle;
use vaultfleet::{ChannelNetwork, FleetConfig, MemberSpec, Replica, Sealed, SealedConfig, SoftHsm};
use vaultfleet_vault::{
    BackupVault, KsfParams, Unreachable, VaultClient, VaultClientConfig, VaultClientError,
    VaultEndpoint, VaultKeys, VaultPublicKeys, VaultServer, VaultService, VaultServiceConfig,
};

/// The Backup Key Vault on a fleet of 5 replicas in 3 datacenters, each on
/// HSM-sealed sled storage.
#[derive(Debug, Parser)]
#[command(name = "vault")]
struct Options {
    /// Users registering a backup key (at least 4).
    #[arg(long, value_name = "N", default_value_t = 6)]
    users: usize,
    /// One-way delay between datacenters, in milliseconds.
    #[arg(long, value_name = "D", default_value_t = 5)]
    inter_dc_ms: u64,
    /// The key-stretching function's cost: recommended, or tests-only (fast, weak).
    #[arg(long, value_enum, default_value_t = Ksf::Recommended)]
    ksf: Ksf,
}

/// The key-stretching function's cost.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Ksf {
    /// The recommended Argon2 parameters.
    Recommended,
    /// Fast and weak parameters, for tests only.
    TestsOnly,
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

/// A vault service as clients reach it: over a network that can be cut.
struct Reachable {
    service: Arc<VaultService<SoftHsm>>,
    up: AtomicBool,
}

impl VaultEndpoint for Reachable {
    fn replica(&self) -> u64 {
        self.service.replica()
    }

    fn call(&self, request: &[u8]) -> Result<Vec<u8>, Unreachable> {
        if !self.up.load(Ordering::SeqCst) {
            return Err(Unreachable {
                replica: self.replica(),
            });
        }
        self.service.call(request)
    }
}

/// Runs `f`, prints `what` with its outcome and duration.
fn step<T: std::fmt::Debug>(
    what: &str,
    f: impl FnOnce() -> Result<T, VaultClientError>,
) -> Result<T, VaultClientError> {
    let start = Instant::now();
    let r = f();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    match &r {
        Ok(_) => println!("  {what:<52} ok            {ms:>7.1} ms"),
        Err(e) => println!("  {what:<52} {e}  ({ms:.1} ms)"),
    }
    r
}

type Error = Box<dyn std::error::Error>;

/// The running demo: the fleet's nodes on HSM-sealed sled, the services as
/// clients reach them, one client, and the users.
struct Demo {
    fleet: FleetConfig,
    dir: tempfile::TempDir,
    net: ChannelNetwork,
    nodes: Vec<Node>,
    handles: Vec<NodeHandle>,
    endpoints: Vec<Arc<Reachable>>,
    client: VaultClient,
    names: Vec<String>,
}

fn code(u: &str) -> String {
    format!("recovery code of {u}")
}

fn secret(u: &str) -> String {
    format!("backup key of {u}: {:x}", u.len() * 0x9e37_79b9)
}

fn main() -> Result<(), Error> {
    let options = Options::parse();
    init_tracing();
    let demo = start(&options)?;
    register_and_recover(&demo)?;
    attacker_guesses(&demo)?;
    cut_off_a_datacenter(&demo)?;
    heal(&demo)?;
    scan_disks(demo)
}

/// Starts 5 replicas in 3 datacenters, a vault service beside each, and a client.
fn start(options: &Options) -> Result<Demo, Error> {
    let inter_dc = Duration::from_millis(options.inter_dc_ms);
    let ksf = match options.ksf {
        Ksf::Recommended => KsfParams::RECOMMENDED,
        Ksf::TestsOnly => KsfParams::TESTS_ONLY,
    };
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

    // The fleet's HSM security world: at the key ceremony the OPAQUE server setup
    // is created and sealed; every HSM of the fleet holds the same vault keys.
    let world = SoftHsm::new();
    let sealed_setup = VaultKeys::provision(&world)?;

    let mut nodes = Vec::new();
    for m in &fleet.members {
        let group = ReplicaConfig::new(m.id).group;
        // Each host's own HSM seals its log against the untrusted disk.
        let mut log = Sealed::open_sled(
            dir.path().join(format!("replica-{}", m.id)),
            SoftHsm::new(),
            SealedConfig::new(group, m.id),
        )?;
        Replica::bootstrap(&mut log, &BackupVault::new(), &fleet)?;
        let node = Node::spawn(
            NodeConfig::new(ReplicaConfig::new(m.id)),
            log,
            BackupVault::new(),
            net.transport(m.id),
        )?;
        net.register(m.id, Arc::new(node.handle()));
        nodes.push(node);
    }
    let handles: Vec<_> = nodes.iter().map(Node::handle).collect();
    let mut pinned = VaultPublicKeys {
        group: 1,
        replicas: BTreeMap::new(),
    };
    let mut endpoints = Vec::new();
    for m in &fleet.members {
        let keys = VaultKeys::open(world.clone(), &sealed_setup, 1, m.id)?;
        pinned.replicas.insert(m.id, keys.response_public_key()?);
        let service = VaultService::start(
            VaultServer::new(keys),
            handles.clone(),
            VaultServiceConfig::default(),
        )?;
        endpoints.push(Arc::new(Reachable {
            service: Arc::new(service),
            up: AtomicBool::new(true),
        }));
    }
    println!(
        "vault fleet: 5 replicas in 3 datacenters (dc-a: 1,2  dc-b: 3,4  dc-c: 5), HSM-sealed sled under {}, {} ms between datacenters, Argon2id {} KiB x {}",
        dir.path().display(),
        inter_dc.as_millis(),
        ksf.memory_kib,
        ksf.iterations
    );
    let as_endpoints: Vec<Arc<dyn VaultEndpoint>> = endpoints
        .iter()
        .map(|e| Arc::clone(e) as Arc<dyn VaultEndpoint>)
        .collect();
    let cfg = VaultClientConfig {
        ksf,
        ..VaultClientConfig::default()
    };
    let client = VaultClient::new(as_endpoints, pinned, cfg)?;
    let names = (0..options.users.max(4))
        .map(|i| format!("user-{i:02}"))
        .collect();
    Ok(Demo {
        fleet,
        dir,
        net,
        nodes,
        handles,
        endpoints,
        client,
        names,
    })
}

/// 1 and 2: every user registers; right and wrong codes.
fn register_and_recover(demo: &Demo) -> Result<(), Error> {
    let client = &demo.client;
    println!("\n1. registration");
    for u in &demo.names {
        step(&format!("register {u}"), || {
            client.register(u.as_bytes(), code(u).as_bytes(), secret(u).as_bytes())
        })?;
    }

    println!("\n2. recovery with right and wrong codes");
    let (alice, bob) = (&demo.names[0], &demo.names[1]);
    let got = step(&format!("{alice} recovers with the right code"), || {
        client.recover(alice.as_bytes(), code(alice).as_bytes())
    })?;
    assert_eq!(got.as_slice(), secret(alice).as_bytes());
    for _ in 0..3 {
        let _ = step(&format!("{bob} mistypes the code"), || {
            client.recover(bob.as_bytes(), b"1234")
        });
    }
    step(&format!("{bob} gets it right (counter back to 10)"), || {
        client.recover(bob.as_bytes(), code(bob).as_bytes())
    })?;
    Ok(())
}

/// 3: an attacker spends every attempt on one user; the record is erased.
fn attacker_guesses(demo: &Demo) -> Result<(), Error> {
    let (client, carol) = (&demo.client, &demo.names[2]);
    println!("\n3. an attacker guesses {carol}'s code");
    let mut guesses = 0;
    loop {
        guesses += 1;
        match client.recover(carol.as_bytes(), format!("guess {guesses}").as_bytes()) {
            Err(VaultClientError::WrongCode { attempts_left }) if attempts_left > 0 => continue,
            Err(VaultClientError::WrongCode { .. }) => break,
            other => return Err(format!("unexpected outcome of a guess: {other:?}").into()),
        }
    }
    println!("  {guesses} wrong guesses accepted, then the record was erased in the same committed command");
    let r = step(&format!("{carol} with the RIGHT code afterwards"), || {
        client.recover(carol.as_bytes(), code(carol).as_bytes())
    });
    assert!(matches!(r, Err(VaultClientError::Locked)), "{r:?}");
    Ok(())
}

/// 4: the leader's datacenter is cut off; the others go on.
fn cut_off_a_datacenter(demo: &Demo) -> Result<(), Error> {
    let (client, names) = (&demo.client, &demo.names);
    let (alice, bob) = (&names[0], &names[1]);
    println!("\n4. a datacenter is cut off");
    let leader = demo
        .handles
        .iter()
        .find_map(|h| h.status().leader)
        .unwrap_or(1);
    let dc = demo
        .fleet
        .datacenter_of(leader)
        .unwrap_or("dc-a")
        .to_string();
    let cut = demo.fleet.datacenters()[dc.as_str()].clone();
    println!("  cutting off {dc} (replicas {cut:?}, with the leader {leader}): its hosts are unreachable to peers and clients");
    demo.net.isolate(&cut);
    for e in &demo.endpoints {
        if cut.contains(&e.replica()) {
            e.up.store(false, Ordering::SeqCst);
        }
    }
    let cut_at = Instant::now();
    for u in &names[3..] {
        let got = step(&format!("{u} recovers"), || {
            client.recover(u.as_bytes(), code(u).as_bytes())
        })?;
        assert_eq!(got.as_slice(), secret(u).as_bytes());
    }
    println!(
        "  {} recoveries with {dc} cut off, finished {} ms after the cut",
        names.len() - 3,
        cut_at.elapsed().as_millis()
    );
    let _ = step(&format!("{bob} mistypes once more"), || {
        client.recover(bob.as_bytes(), b"4321")
    });
    step(&format!("{alice} deletes her record"), || {
        client.delete(alice.as_bytes(), code(alice).as_bytes())
    })?;
    Ok(())
}

/// 5: the network heals and every replica catches up.
fn heal(demo: &Demo) -> Result<(), Error> {
    let client = &demo.client;
    let (alice, bob) = (&demo.names[0], &demo.names[1]);
    println!("\n5. healed");
    demo.net.heal();
    for e in &demo.endpoints {
        e.up.store(true, Ordering::SeqCst);
    }
    let r = step(&format!("{alice} after deleting"), || {
        client.recover(alice.as_bytes(), code(alice).as_bytes())
    });
    assert!(matches!(r, Err(VaultClientError::NotRegistered)), "{r:?}");
    step(&format!("{bob} recovers"), || {
        client.recover(bob.as_bytes(), code(bob).as_bytes())
    })?;
    let commit = demo
        .handles
        .iter()
        .map(|h| h.status().commit)
        .max()
        .unwrap_or(0);
    let healed_at = Instant::now();
    while demo.handles.iter().any(|h| h.status().applied < commit) {
        if healed_at.elapsed() > Duration::from_secs(30) {
            return Err("replicas did not catch up after healing".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for h in &demo.handles {
        let s = h.status();
        println!(
            "  replica {} ({}): {:?}, term {}, applied {}",
            s.id,
            demo.fleet.datacenter_of(s.id).unwrap_or("?"),
            s.role,
            s.term,
            s.applied
        );
    }
    Ok(())
}

/// Stops the fleet and looks at its disks as an attacker would.
fn scan_disks(demo: Demo) -> Result<(), Error> {
    for node in demo.nodes {
        node.shutdown()?;
    }
    let mut files = 0;
    let mut leaks = Vec::new();
    let mut stack = vec![demo.dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&path)?;
            for u in &demo.names {
                for needle in [secret(u), code(u), u.clone()] {
                    if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                        leaks.push(format!("{} holds {needle:?}", path.display()));
                    }
                }
            }
        }
    }
    if !leaks.is_empty() {
        return Err(format!("plain text on disk: {leaks:?}").into());
    }
    println!("\ndisks: {files} files scanned; no secret, recovery code or user id in plain text");
    Ok(())
}
