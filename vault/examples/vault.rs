//! The Backup Key Vault on a fleet of 5 replicas in 3 datacenters, each on
//! HSM-sealed sled storage: users register a backup key behind a recovery code,
//! recover it with right and wrong codes, an attacker exhausts one user's
//! attempts, a whole datacenter is cut off, and recovery goes on.
//!
//! Run: `cargo run --release --example vault` (options: `--users N`,
//! `--inter-dc-ms D`, `--ksf recommended|tests-only`).
// The example runs the threaded runtime and measures it in wall-clock time.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vaultfleet::replica::ReplicaConfig;
use vaultfleet::runtime::{Node, NodeConfig};
use vaultfleet::{ChannelNetwork, FleetConfig, MemberSpec, Replica, Sealed, SealedConfig, SoftHsm};
use vaultfleet_vault::{
    BackupVault, KsfParams, Unreachable, VaultClient, VaultClientConfig, VaultClientError,
    VaultEndpoint, VaultKeys, VaultPublicKeys, VaultServer, VaultService, VaultServiceConfig,
};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let users: usize = arg("--users", "6").parse()?;
    let users = users.max(4);
    let inter_dc = Duration::from_millis(arg("--inter-dc-ms", "5").parse()?);
    let ksf = match arg("--ksf", "recommended").as_str() {
        "recommended" => KsfParams::RECOMMENDED,
        "tests-only" => KsfParams::TESTS_ONLY,
        other => {
            return Err(format!("--ksf must be recommended or tests-only, not {other:?}").into())
        }
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
    let client = VaultClient::new(as_endpoints, pinned, cfg);

    let names: Vec<String> = (0..users).map(|i| format!("user-{i:02}")).collect();
    let code = |u: &str| format!("recovery code of {u}");
    let secret = |u: &str| format!("backup key of {u}: {:x}", u.len() * 0x9e37_79b9);

    println!("\n1. registration");
    for u in &names {
        step(&format!("register {u}"), || {
            client.register(u.as_bytes(), code(u).as_bytes(), secret(u).as_bytes())
        })?;
    }

    println!("\n2. recovery with right and wrong codes");
    let (alice, bob, carol) = (&names[0], &names[1], &names[2]);
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
    assert_eq!(r.err(), Some(VaultClientError::Locked));

    println!("\n4. a datacenter is cut off");
    let leader = handles.iter().find_map(|h| h.status().leader).unwrap_or(1);
    let dc = fleet.datacenter_of(leader).unwrap_or("dc-a").to_string();
    let cut = fleet.datacenters()[dc.as_str()].clone();
    println!("  cutting off {dc} (replicas {cut:?}, with the leader {leader}): its hosts are unreachable to peers and clients");
    net.isolate(&cut);
    for e in &endpoints {
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

    println!("\n5. healed");
    net.heal();
    for e in &endpoints {
        e.up.store(true, Ordering::SeqCst);
    }
    let r = step(&format!("{alice} after deleting"), || {
        client.recover(alice.as_bytes(), code(alice).as_bytes())
    });
    assert_eq!(r.err(), Some(VaultClientError::NotRegistered));
    step(&format!("{bob} recovers"), || {
        client.recover(bob.as_bytes(), code(bob).as_bytes())
    })?;
    let commit = handles.iter().map(|h| h.status().commit).max().unwrap_or(0);
    let healed_at = Instant::now();
    while handles.iter().any(|h| h.status().applied < commit) {
        if healed_at.elapsed() > Duration::from_secs(30) {
            return Err("replicas did not catch up after healing".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
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
    // What an attacker with the disks would find.
    let mut files = 0;
    let mut leaks = Vec::new();
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&path)?;
            for u in &names {
                for needle in [secret(u), code(u), u.clone()] {
                    if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                        leaks.push(format!("{} holds {needle:?}", path.display()));
                    }
                }
            }
        }
    }
    if leaks.is_empty() {
        println!(
            "\ndisks: {files} files scanned; no secret, recovery code or user id in plain text"
        );
    } else {
        return Err(format!("plain text on disk: {leaks:?}").into());
    }
    Ok(())
}
