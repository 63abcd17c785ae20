//! The vault over the wire with every replica host in its own OS process: each
//! child process (this test binary, re-run as `replica_host_process`) hosts one
//! replica over the net crate's TCP transport, a `VaultService` proposing
//! through a remote client session (so a follower's service works), and a
//! `VaultListener`. The test process is the user's device: a `VaultClient`
//! trusting only the witness and the operator, with `RemoteVaultEndpoint`s.
// Tests of sockets and processes run in wall-clock time, every wait bounded.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use vaultfleet::hsm::{Hsm, KeyKind};
use vaultfleet::replica::ReplicaConfig;
use vaultfleet::runtime::{ClientConfig, Node, NodeConfig};
use vaultfleet::{FleetConfig, MemberSpec, Replica, SledLog, SoftHsm};
use vaultfleet_audit::fleet::{FleetArtifact, ReplicaKeys};
use vaultfleet_audit::merkle::MerkleTree;
use vaultfleet_audit::witness::countersign;
use vaultfleet_audit::{Bundle, FleetVerifier, Witness, WitnessKey, WitnessKeySpec};
use vaultfleet_net::open::{OpenClientConfig, OpenServerConfig};
use vaultfleet_net::{
    NetConfig, NetTransport, PeerDirectory, PeerEntry, RemoteClient, RemoteConfig, StaticSecret,
};
use vaultfleet_vault::{
    BackupVault, BundleSource, BundleTrust, KsfParams, RemoteVaultEndpoint, ServerTrust,
    VaultClient, VaultClientConfig, VaultClientError, VaultEndpoint, VaultKeys, VaultListener,
    VaultServer, VaultService, VaultServiceConfig,
};
use zeroize::Zeroizing;

const GROUP: u64 = 1;
const FLEET: &str = "process-fleet";
const NS: &str = "example.vault.fleet_keys.v1";
const NOW: u64 = 1_800_000_000;
const HSM_SEED: u64 = 0x7072_6f63;
const MEMBERS: [(u64, &str); 3] = [(1, "dc-a"), (2, "dc-b"), (3, "dc-c")];
const WAIT: Duration = Duration::from_secs(60);
const CODE: &[u8] = b"correct horse battery staple";
const NEW_CODE: &[u8] = b"purple monkey dishwasher 42";
const WRONG: &[u8] = b"wrong horse";
const SECRET: &[u8] = b"backup-key:0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const NEW_SECRET: &[u8] = b"backup-key:second-generation";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// A static key derived from the run's master seed, for `role` of replica `id`
/// (both processes derive the same keys; the seed is drawn fresh per run).
fn derived(master: &[u8], role: &str, id: u64) -> StaticSecret {
    let digest: [u8; 32] = Sha256::new()
        .chain_update(master)
        .chain_update(role.as_bytes())
        .chain_update(id.to_be_bytes())
        .finalize()
        .into();
    StaticSecret::from_bytes(Zeroizing::new(digest)).expect("key")
}

/// Replica `id`'s vault keys, as its host makes them from the shared HSM seed.
fn vault_keys(id: u64) -> VaultKeys<SoftHsm> {
    let world = SoftHsm::from_seed(HSM_SEED);
    let sealed = VaultKeys::provision(&world).expect("provision");
    VaultKeys::open(world, &sealed, GROUP, id).expect("open")
}

fn member_config() -> FleetConfig {
    FleetConfig::new(
        MEMBERS
            .iter()
            .map(|&(id, dc)| MemberSpec::voter(id, dc))
            .collect(),
    )
}

fn small_net(listen: SocketAddr) -> NetConfig {
    let mut c = NetConfig::new(listen);
    c.worker_threads = 1;
    c.backoff_max = Duration::from_millis(200);
    c
}

/// One replica host: entered only when the parent test runs this binary with
/// `VF_HOST_ID` set; speaks a line protocol on stdin/stdout ("VF ..." lines).
#[test]
#[ignore = "a child process of the multi-process test, run by it"]
fn replica_host_process() {
    let Ok(id) = std::env::var("VF_HOST_ID") else {
        return;
    };
    let id: u64 = id.parse().expect("id");
    let master = unhex(&std::env::var("VF_MASTER").expect("master seed"));
    let dir = tempfile::tempdir().expect("dir");
    let mut stdin = BufReader::new(std::io::stdin()).lines();
    let mut line = || stdin.next().expect("parent closed").expect("read");

    let own = PeerDirectory::new(FLEET, [id], derived(&master, "peer", id)).expect("directory");
    let transport =
        NetTransport::start(own, small_net("127.0.0.1:0".parse().unwrap())).expect("transport");
    println!("VF net {}", transport.local_addr());
    // "peers <addr1> <addr2> <addr3>"
    let peers: Vec<SocketAddr> = line()
        .split(' ')
        .skip(1)
        .map(|a| a.parse().expect("address"))
        .collect();
    let pin = |d: &mut PeerDirectory| {
        for (&(peer, dc), address) in MEMBERS.iter().zip(&peers) {
            d.insert(
                peer,
                PeerEntry {
                    address: *address,
                    datacenter: dc.into(),
                    public_key: derived(&master, "peer", peer).public_key(),
                },
            )
            .expect("pin");
        }
    };
    let mut directory =
        PeerDirectory::new(FLEET, [id], derived(&master, "peer", id)).expect("directory");
    pin(&mut directory);
    for &(host, _) in &MEMBERS {
        directory
            .allow_client(derived(&master, "service", host).public_key())
            .expect("client key");
    }
    transport.update_directory(directory).expect("update");
    let mut log = SledLog::open(dir.path().join("log")).expect("sled");
    Replica::bootstrap(&mut log, &BackupVault::new(), &member_config()).expect("bootstrap");
    let node = Node::spawn(
        NodeConfig::new(ReplicaConfig::new(id)),
        log,
        BackupVault::new(),
        Arc::new(transport.clone()),
    )
    .expect("node");
    transport
        .register(GROUP, id, Arc::new(node.handle()))
        .expect("register");
    transport
        .serve_clients(GROUP, Arc::new(node.handle()))
        .expect("serve clients");

    // The service proposes through a remote session to whichever node leads.
    let mut client_dir =
        PeerDirectory::client(FLEET, derived(&master, "service", id)).expect("client directory");
    pin(&mut client_dir);
    let mut remote_config = RemoteConfig::default();
    remote_config.net.worker_threads = 1;
    remote_config.net.backoff_max = Duration::from_millis(200);
    let remote = RemoteClient::start(client_dir, remote_config).expect("remote client");
    let deadline = Instant::now() + WAIT;
    let session = loop {
        match remote.session(GROUP, ClientConfig::default()) {
            Ok(session) => break session,
            Err(e) if Instant::now() < deadline => {
                eprintln!("replica {id}: no session yet: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("replica {id}: no session: {e}"),
        }
    };
    let service = Arc::new(VaultService::with_client(
        VaultServer::new(vault_keys(id)),
        session,
        VaultServiceConfig::default(),
    ));
    let listener = VaultListener::start(
        service,
        FLEET,
        derived(&master, "transport", id),
        OpenServerConfig::new("127.0.0.1:0".parse().unwrap()),
    )
    .expect("listen");
    println!("VF listen {}", listener.local_addr());
    // "bundle <hex> <leaf hash hex>,<leaf hash hex>..."
    let bundle_line = line();
    let mut parts = bundle_line.split(' ').skip(1);
    let bundle = unhex(parts.next().expect("bundle"));
    let leaves = parts
        .next()
        .expect("leaves")
        .split(',')
        .map(|h| <[u8; 32]>::try_from(unhex(h).as_slice()).expect("leaf hash"))
        .collect();
    let source =
        BundleSource::new(bundle, MerkleTree::from_leaf_hashes(leaves)).expect("bundle source");
    listener.serve(source).expect("serve");
    println!("VF serving");
    // Serve until the parent closes stdin (or says quit).
    while let Some(Ok(l)) = stdin.next() {
        if l == "quit" {
            break;
        }
    }
    listener.shutdown();
    remote.shutdown();
    transport.shutdown();
    node.shutdown().ok();
}

/// A child replica host and its output lines.
struct Host {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Host {
    fn spawn(id: u64, master: &[u8]) -> Host {
        // libtest names a test by its module path without the crate's name.
        let test = match module_path!().split_once("::") {
            Some((_, module)) => format!("{module}::replica_host_process"),
            None => "replica_host_process".to_string(),
        };
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                test.as_str(),
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("VF_HOST_ID", id.to_string())
            .env("VF_MASTER", hex(master))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // `VF_HOST_STDERR=1` shows the hosts' own output (and logs).
            .stderr(if std::env::var_os("VF_HOST_STDERR").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("spawn a replica host");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest may print "test replica_host_process ... " first on the line.
                if let Some(at) = l.find("VF ") {
                    if tx.send(l[at + 3..].to_string()).is_err() {
                        return;
                    }
                }
            }
        });
        Host {
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    /// The next protocol line, which must start with `tag`; its rest.
    fn expect(&self, tag: &str) -> String {
        let l = self
            .lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("no '{tag}' line from a host: {e}"));
        l.strip_prefix(tag)
            .unwrap_or_else(|| panic!("'{l}' is not '{tag}'"))
            .trim()
            .to_string()
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to a host");
        stdin.flush().expect("flush");
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Closing stdin ends the host; kill it if it does not end in time.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn register_recover_and_lock_out_with_every_replica_host_in_its_own_process() {
    let mut master = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut master);
    let mut hosts: Vec<Host> = MEMBERS
        .iter()
        .map(|&(id, _)| Host::spawn(id, &master))
        .collect();
    let net: Vec<String> = hosts.iter().map(|h| h.expect("net")).collect();
    let peers = format!("peers {}", net.join(" "));
    for h in &mut hosts {
        h.send(&peers);
    }
    let listen: Vec<SocketAddr> = hosts
        .iter()
        .map(|h| h.expect("listen").parse().expect("address"))
        .collect();

    // The operator publishes epoch 1, listing each host's transport key.
    let dir = tempfile::tempdir().unwrap();
    let authority = SoftHsm::from_seed(99);
    let mut witness = Witness::open(
        authority.clone(),
        vec![WitnessKeySpec {
            name: "witness".into(),
            not_before: 0,
        }],
        dir.path().join("witness"),
    )
    .unwrap();
    let replicas: Vec<ReplicaKeys> = MEMBERS
        .iter()
        .map(|&(id, dc)| {
            let keys = vault_keys(id);
            ReplicaKeys {
                id,
                datacenter: dc.into(),
                response_key: keys.response_public_key().unwrap(),
                transport_key: *derived(&master, "transport", id).public_key().as_bytes(),
                opaque_key: keys.opaque_public_key(),
            }
        })
        .collect();
    let artifact = FleetArtifact {
        fleet_id: FLEET.into(),
        epoch: 1,
        voters: replicas.iter().map(|r| r.id).collect(),
        replicas,
        learners: vec![],
        not_before: NOW - 10,
        not_after: NOW + 86_400,
    };
    let w = witness
        .sign(NS, 1, artifact.digest().unwrap(), NOW)
        .unwrap();
    let cs = countersign(&authority, "operator", &w).unwrap();
    let tree = witness.tree(NS).unwrap().clone();
    let proof = tree.inclusion_proof(w.leaf_index, tree.size()).unwrap();
    let cp = witness.checkpoint(NS, NOW).unwrap();
    let bundle = Bundle::assemble(artifact.encode().unwrap(), &w, cs, proof, &cp)
        .encode()
        .unwrap();
    let leaves: Vec<String> = tree.leaf_hashes().iter().map(|h| hex(h)).collect();
    let bundle_line = format!("bundle {} {}", hex(&bundle), leaves.join(","));
    for h in &mut hosts {
        h.send(&bundle_line);
    }
    for h in &hosts {
        h.expect("serving");
    }

    // The user's device: pinned only to the witness and the operator.
    let operator = authority
        .public_key(authority.key("operator", KeyKind::Signing).unwrap())
        .unwrap();
    let verifier = FleetVerifier::new(
        NS,
        vec![WitnessKey {
            name: "witness".into(),
            public_key: witness.public_key("witness").unwrap(),
            not_before: 0,
        }],
        operator,
    );
    let trust = BundleTrust::new(verifier.clone(), Arc::new(|| NOW));
    let endpoints: Vec<Arc<dyn VaultEndpoint>> = MEMBERS
        .iter()
        .zip(&listen)
        .map(|(&(id, _), &address)| {
            Arc::new(
                RemoteVaultEndpoint::new(
                    id,
                    address,
                    FLEET,
                    ServerTrust::Bundles(Arc::clone(&trust)),
                    OpenClientConfig::default(),
                )
                .unwrap(),
            ) as Arc<dyn VaultEndpoint>
        })
        .collect();
    let client = VaultClient::with_verifier(
        endpoints,
        GROUP,
        verifier,
        Arc::new(|| NOW),
        VaultClientConfig {
            ksf: KsfParams::TESTS_ONLY,
            backoff: Duration::from_millis(50),
            rounds: 5,
            ..VaultClientConfig::default()
        },
    )
    .unwrap();

    let user = b"remote-process-user";
    assert!(matches!(
        client.register_with_limit(user, CODE, SECRET, 3),
        Ok(1)
    ));
    assert!(matches!(
        client.recover(user, WRONG),
        Err(VaultClientError::WrongCode { attempts_left: 2 })
    ));
    assert_eq!(client.recover(user, CODE).unwrap().as_slice(), SECRET);
    assert!(matches!(
        client.reregister(user, CODE, NEW_CODE, NEW_SECRET, 3),
        Ok(2)
    ));
    assert_eq!(
        client.recover(user, NEW_CODE).unwrap().as_slice(),
        NEW_SECRET
    );
    for left in (0..3).rev() {
        let r = client.recover(user, WRONG);
        assert!(
            matches!(r, Err(VaultClientError::WrongCode { attempts_left }) if attempts_left == left),
            "{r:?}"
        );
    }
    assert!(matches!(
        client.recover(user, NEW_CODE),
        Err(VaultClientError::Locked)
    ));
    assert_eq!(trust.newest_epoch(), Some(1));
    // Every service answers, the followers' too: each replica's own endpoint.
    for (&(id, _), &address) in MEMBERS.iter().zip(&listen) {
        let only = VaultClient::with_verifier(
            vec![Arc::new(
                RemoteVaultEndpoint::new(
                    id,
                    address,
                    FLEET,
                    ServerTrust::Bundles(Arc::clone(&trust)),
                    OpenClientConfig::default(),
                )
                .unwrap(),
            ) as Arc<dyn VaultEndpoint>],
            GROUP,
            FleetVerifier::new(
                NS,
                vec![WitnessKey {
                    name: "witness".into(),
                    public_key: witness.public_key("witness").unwrap(),
                    not_before: 0,
                }],
                operator,
            ),
            Arc::new(|| NOW),
            VaultClientConfig {
                ksf: KsfParams::TESTS_ONLY,
                ..VaultClientConfig::default()
            },
        )
        .unwrap();
        let user = format!("user-of-replica-{id}");
        let r = only.register(user.as_bytes(), CODE, SECRET);
        assert!(matches!(r, Ok(1)), "replica {id}: {r:?}");
        assert_eq!(
            only.recover(user.as_bytes(), CODE).unwrap().as_slice(),
            SECRET
        );
    }
}
