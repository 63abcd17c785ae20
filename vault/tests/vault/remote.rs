//! The vault over the wire: a threaded fleet whose `VaultService`s are served
//! by `VaultListener`s on loopback TCP, and `VaultClient`s that reach them only
//! through `RemoteVaultEndpoint`s (Noise NX with the validation bundle in the
//! handshake, or NK with a pinned key). Every client connection goes through a
//! recording relay, and the bytes on the wire are scanned for the code, the
//! secret and the user id.
// Tests of the threaded runtime and of sockets run in wall-clock time.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use crate::harness;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{no_tweak, Fleet, Store};
use vaultfleet::hsm::{Hsm, KeyKind};
use vaultfleet::{FleetConfig, MemberSpec, SoftHsm};
use vaultfleet_audit::fleet::{FleetArtifact, ReplicaKeys};
use vaultfleet_audit::witness::countersign;
use vaultfleet_audit::{Bundle, BundleError, FleetVerifier, Witness, WitnessKey, WitnessKeySpec};
use vaultfleet_net::open::{OpenClientConfig, OpenServer, OpenServerConfig};
use vaultfleet_net::{ChannelId, PublicKey, StaticSecret};
use vaultfleet_vault::{
    BackupVault, BundleSource, BundleTrust, KsfParams, RemoteVaultEndpoint, RemoteVaultError,
    ServerTrust, VaultClient, VaultClientConfig, VaultClientError, VaultEndpoint, VaultKeys,
    VaultListener, VaultPublicKeys, VaultServer, VaultService, VaultServiceConfig,
    VAULT_CHANNEL_LABEL,
};

/// Asserts that `$value` matches `$pattern`, showing the value when it does not.
macro_rules! assert_matches {
    ($value:expr, $pattern:pat $(if $guard:expr)? $(,)?) => {
        match $value {
            $pattern $(if $guard)? => {}
            other => panic!("{other:?} does not match {}", stringify!($pattern $(if $guard)?)),
        }
    };
}

const NS: &str = "example.vault.fleet_keys.v1";
const NOW: u64 = 1_800_000_000;
const FLEET: &str = "test-fleet";
const USER: &[u8] = b"user-0f9e8d7c-remote-alice";
const CODE: &[u8] = b"correct horse battery staple";
const NEW_CODE: &[u8] = b"purple monkey dishwasher 42";
const WRONG: &[u8] = b"wrong horse";
const SECRET: &[u8] = b"backup-key:7d0f1e9a4b8c2d3e5f6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708";
const NEW_SECRET: &[u8] = b"backup-key:second-generation-0123456789abcdef0123456789abcdef";

/// A fleet whose vault services listen on loopback, each with its own
/// transport key, with the witness and operator that publish its bundles.
struct RemoteFleet {
    fleet: Fleet<BackupVault>,
    world: SoftHsm,
    sealed_setup: Vec<u8>,
    listeners: BTreeMap<u64, VaultListener<SoftHsm>>,
    keys: VaultPublicKeys,
    authority: SoftHsm,
    witness: Witness<SoftHsm>,
    _dir: tempfile::TempDir,
}

impl RemoteFleet {
    fn start(n: u64) -> RemoteFleet {
        let dcs = ["dc-a", "dc-b", "dc-c"];
        let config = FleetConfig::new(
            (1..=n)
                .map(|id| MemberSpec::voter(id, dcs[(id as usize - 1) % dcs.len()]))
                .collect(),
        );
        let fleet = Fleet::start_machine(config, Store::Mem, no_tweak, BackupVault::new);
        fleet.wait_leader();
        let world = SoftHsm::from_seed(0x0076_6175_6c74);
        let sealed_setup = VaultKeys::provision(&world).expect("provision the vault keys");
        let dir = tempfile::tempdir().unwrap();
        let authority = SoftHsm::from_seed(99);
        let witness = Witness::open(
            authority.clone(),
            vec![WitnessKeySpec {
                name: "witness".into(),
                not_before: 0,
            }],
            dir.path().join("witness"),
        )
        .unwrap();
        let mut rf = RemoteFleet {
            fleet,
            world,
            sealed_setup,
            listeners: BTreeMap::new(),
            keys: VaultPublicKeys {
                group: 1,
                replicas: BTreeMap::new(),
            },
            authority,
            witness,
            _dir: dir,
        };
        for id in 1..=n {
            let keys = VaultKeys::open(rf.world.clone(), &rf.sealed_setup, 1, id).unwrap();
            rf.keys
                .replicas
                .insert(id, keys.response_public_key().unwrap());
            let service = VaultService::start(
                VaultServer::new(keys),
                rf.fleet.handles(),
                VaultServiceConfig::default(),
            )
            .expect("service session");
            let listener = VaultListener::start(
                Arc::new(service),
                FLEET,
                StaticSecret::generate().unwrap(),
                OpenServerConfig::new("127.0.0.1:0".parse().unwrap()),
            )
            .expect("listen");
            rf.listeners.insert(id, listener);
        }
        rf
    }

    /// The artifact of `epoch`, listing each listener's transport key except
    /// those `listed` overrides.
    fn artifact(&self, epoch: u64, listed: &BTreeMap<u64, [u8; 32]>) -> FleetArtifact {
        let replicas = self
            .keys
            .replicas
            .iter()
            .map(|(&id, key)| ReplicaKeys {
                id,
                datacenter: ["dc-a", "dc-b", "dc-c"][(id as usize - 1) % 3].into(),
                response_key: *key,
                transport_key: listed
                    .get(&id)
                    .copied()
                    .unwrap_or(*self.listeners[&id].public_key().as_bytes()),
                opaque_key: VaultKeys::open(self.world.clone(), &self.sealed_setup, 1, id)
                    .unwrap()
                    .opaque_public_key(),
            })
            .collect::<Vec<_>>();
        FleetArtifact {
            fleet_id: FLEET.into(),
            epoch,
            voters: replicas.iter().map(|r| r.id).collect(),
            replicas,
            learners: vec![],
            not_before: NOW - 10,
            not_after: NOW + 86_400,
        }
    }

    /// Witnesses and countersigns `a`, and every listener serves it.
    fn publish(&mut self, a: &FleetArtifact) -> BundleSource {
        let w = self
            .witness
            .sign(NS, a.epoch, a.digest().unwrap(), NOW)
            .unwrap();
        let cs = countersign(&self.authority, "operator", &w).unwrap();
        let tree = self.witness.tree(NS).unwrap();
        let proof = tree.inclusion_proof(w.leaf_index, tree.size()).unwrap();
        let cp = self.witness.checkpoint(NS, NOW).unwrap();
        let bundle = Bundle::assemble(a.encode().unwrap(), &w, cs, proof, &cp)
            .encode()
            .unwrap();
        let source = BundleSource::new(bundle, tree.clone()).unwrap();
        for l in self.listeners.values() {
            l.serve(source.clone()).unwrap();
        }
        source
    }

    /// A verifier pinned only to the witness's and the operator's keys.
    fn verifier(&self) -> FleetVerifier {
        let operator = self
            .authority
            .public_key(self.authority.key("operator", KeyKind::Signing).unwrap())
            .unwrap();
        FleetVerifier::new(
            NS,
            vec![WitnessKey {
                name: "witness".into(),
                public_key: self.witness.public_key("witness").unwrap(),
                not_before: 0,
            }],
            operator,
        )
    }

    /// Bundle-mode endpoints of `ids`, each reached at `address(id)`.
    fn bundle_endpoints(
        &self,
        trust: &Arc<BundleTrust>,
        ids: &[u64],
        address: impl Fn(u64) -> SocketAddr,
    ) -> Vec<Arc<dyn VaultEndpoint>> {
        ids.iter()
            .map(|&id| bundle_endpoint(trust, id, address(id)) as Arc<dyn VaultEndpoint>)
            .collect()
    }

    fn bundle_client(&self, endpoints: Vec<Arc<dyn VaultEndpoint>>) -> VaultClient {
        VaultClient::with_verifier(endpoints, 1, self.verifier(), Arc::new(|| NOW), cfg())
            .expect("the OS RNG")
    }

    fn trust(&self) -> Arc<BundleTrust> {
        BundleTrust::new(self.verifier(), Arc::new(|| NOW))
    }

    fn requests_received(&self, id: u64) -> u64 {
        self.listeners[&id].stats().requests_received
    }
}

fn bundle_endpoint(
    trust: &Arc<BundleTrust>,
    id: u64,
    address: SocketAddr,
) -> Arc<RemoteVaultEndpoint> {
    Arc::new(
        RemoteVaultEndpoint::new(
            id,
            address,
            FLEET,
            ServerTrust::Bundles(Arc::clone(trust)),
            client_config(),
        )
        .unwrap(),
    )
}

fn cfg() -> VaultClientConfig {
    VaultClientConfig {
        ksf: KsfParams::TESTS_ONLY,
        backoff: Duration::from_millis(20),
        ..VaultClientConfig::default()
    }
}

fn client_config() -> OpenClientConfig {
    OpenClientConfig {
        request_timeout: Duration::from_secs(20),
        ..OpenClientConfig::default()
    }
}

/// A TCP relay in front of one listener that records every byte both ways.
/// Its threads stop when it drops (reads wake every 50 ms to look).
struct Relay {
    address: SocketAddr,
    captured: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let captured = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (Arc::clone(&captured), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(target) else {
                            continue;
                        };
                        client.set_nonblocking(false).unwrap();
                        for (from, to) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server, client),
                        ] {
                            let (c, s) = (Arc::clone(&c), Arc::clone(&s));
                            std::thread::spawn(move || pump(from, to, &c, &s));
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(_) => return,
                }
            }
        });
        Relay {
            address,
            captured,
            stop,
        }
    }

    fn captured(&self) -> Vec<u8> {
        self.captured.lock().unwrap().clone()
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, captured: &Mutex<Vec<u8>>, stop: &AtomicBool) {
    from.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                captured.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Register, a wrong and a right code, a re-registration, then the lock-out,
/// all through NX handshakes whose bundle the client checks before sending
/// anything; nothing of the user's crosses the wire in clear.
#[test]
fn a_client_trusting_bundles_registers_recovers_and_is_locked_out_over_tcp() {
    let mut rf = RemoteFleet::start(3);
    let e1 = rf.artifact(1, &BTreeMap::new());
    rf.publish(&e1);
    let relays: BTreeMap<u64, Relay> = rf
        .listeners
        .iter()
        .map(|(&id, l)| (id, Relay::start(l.local_addr())))
        .collect();
    let trust = rf.trust();
    let taps: Vec<Arc<Tap>> = relays
        .iter()
        .map(|(&id, relay)| bundle_endpoint(&trust, id, relay.address))
        .map(|inner| {
            Arc::new(Tap {
                inner,
                seen: Mutex::new(Vec::new()),
                calls: Default::default(),
            })
        })
        .collect();
    let client = rf.bundle_client(
        taps.iter()
            .map(|t| Arc::clone(t) as Arc<dyn VaultEndpoint>)
            .collect(),
    );

    assert_matches!(client.register_with_limit(USER, CODE, SECRET, 3), Ok(1));
    assert_matches!(
        client.recover(USER, WRONG),
        Err(VaultClientError::WrongCode { attempts_left: 2 })
    );
    assert_eq!(client.recover(USER, CODE).unwrap().as_slice(), SECRET);
    assert_matches!(
        client.reregister(USER, CODE, NEW_CODE, NEW_SECRET, 3),
        Ok(2)
    );
    assert_matches!(
        client.recover(USER, CODE),
        Err(VaultClientError::WrongCode { attempts_left: 2 })
    );
    assert_eq!(
        client.recover(USER, NEW_CODE).unwrap().as_slice(),
        NEW_SECRET
    );
    // Rotation: the listeners serve epoch 2; new connections verify it in the
    // handshake and replies carry it with its consistency proof.
    let e2 = rf.artifact(2, &BTreeMap::new());
    rf.publish(&e2);
    for tap in &taps {
        tap.inner.close_idle();
    }
    assert_eq!(
        client.recover(USER, NEW_CODE).unwrap().as_slice(),
        NEW_SECRET
    );
    assert_eq!(trust.newest_epoch(), Some(2));
    assert_eq!(client.fleet_epoch(), Some(2));
    for left in (0..3).rev() {
        assert_matches!(
            client.recover(USER, WRONG),
            Err(VaultClientError::WrongCode { attempts_left }) if attempts_left == left
        );
    }
    assert_matches!(
        client.recover(USER, NEW_CODE),
        Err(VaultClientError::Locked)
    );
    assert_matches!(
        client.register(USER, NEW_CODE, NEW_SECRET),
        Err(VaultClientError::Locked)
    );
    assert_eq!(trust.newest_epoch(), Some(2));
    assert_eq!(client.fleet_epoch(), Some(2));

    let wire: Vec<u8> = relays.values().flat_map(Relay::captured).collect();
    assert!(
        wire.len() > 10_000,
        "the relays carried the traffic ({} bytes)",
        wire.len()
    );
    let served: u64 = (1..=3).map(|id| rf.requests_received(id)).sum();
    let calls: usize = taps.iter().map(|t| t.calls.load(Ordering::Relaxed)).sum();
    assert_eq!(served, calls as u64, "every request crossed the wire once");
    for (what, needle) in [
        ("the code", CODE),
        ("the new code", NEW_CODE),
        ("the secret", SECRET),
        ("the new secret", NEW_SECRET),
        ("the user id", USER),
    ] {
        assert!(!contains(&wire, needle), "{what} crossed the wire in clear");
    }
    // The scan finds what is there: the requests handed to the endpoints,
    // before the channel encrypts them, carry the user id and (registration)
    // the secret in clear.
    let plain: Vec<u8> = taps
        .iter()
        .flat_map(|t| t.seen.lock().unwrap().clone())
        .collect();
    assert!(contains(&plain, USER) && contains(&plain, SECRET) && contains(&plain, NEW_SECRET));
}

/// Records the requests a client hands to an endpoint (in clear, before the
/// channel), as a positive control of the wire scan.
struct Tap {
    inner: Arc<RemoteVaultEndpoint>,
    seen: Mutex<Vec<u8>>,
    calls: std::sync::atomic::AtomicUsize,
}

impl VaultEndpoint for Tap {
    fn replica(&self) -> u64 {
        self.inner.replica()
    }

    fn call(&self, request: &[u8]) -> Result<Vec<u8>, vaultfleet_vault::Unreachable> {
        self.seen.lock().unwrap().extend_from_slice(request);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.call(request)
    }
}

/// A server that proves a static key its bundle does not list for its replica
/// (a stolen bundle replayed by another host) is refused after the handshake,
/// before the client sends a single request; the other replicas serve.
#[test]
fn a_server_proving_an_unlisted_key_receives_no_request() {
    let mut rf = RemoteFleet::start(3);
    let stranger = StaticSecret::generate().unwrap().public_key();
    let e1 = rf.artifact(1, &BTreeMap::from([(1, *stranger.as_bytes())]));
    rf.publish(&e1);
    let trust = rf.trust();
    let address = |id: u64| rf.listeners[&id].local_addr();
    let one = RemoteVaultEndpoint::new(
        1,
        address(1),
        FLEET,
        ServerTrust::Bundles(Arc::clone(&trust)),
        client_config(),
    )
    .unwrap();
    match one.connect() {
        Err(RemoteVaultError::TransportKeyNotListed { replica, proved }) => {
            assert_eq!(replica, 1);
            assert_eq!(proved, rf.listeners[&1].public_key());
        }
        other => panic!("{other:?}"),
    }
    let only_one = rf.bundle_client(rf.bundle_endpoints(&trust, &[1], address));
    assert_matches!(
        only_one.register(USER, CODE, SECRET),
        Err(VaultClientError::Unavailable(_))
    );
    let all = rf.bundle_client(rf.bundle_endpoints(&trust, &[1, 2, 3], address));
    assert_matches!(all.register(USER, CODE, SECRET), Ok(1));
    assert_eq!(all.recover(USER, CODE).unwrap().as_slice(), SECRET);
    let stats = rf.listeners[&1].stats();
    assert!(stats.handshakes_completed >= 2, "{stats:?}");
    assert_eq!(stats.requests_received, 0, "{stats:?}");
    assert!(rf.requests_received(2) + rf.requests_received(3) > 0);
}

/// A handshake payload that is not a valid bundle (none served yet, or bytes
/// that are no bundle, or a bundle the client's pins do not verify) is refused
/// with the bundle's own error, and nothing is sent.
#[test]
fn a_handshake_payload_that_is_not_a_valid_bundle_is_refused() {
    let mut rf = RemoteFleet::start(3);
    let trust = rf.trust();
    let endpoint = |address: SocketAddr| {
        RemoteVaultEndpoint::new(
            1,
            address,
            FLEET,
            ServerTrust::Bundles(Arc::clone(&trust)),
            client_config(),
        )
        .unwrap()
    };
    // Nothing served yet: an empty payload.
    assert_matches!(
        endpoint(rf.listeners[&1].local_addr()).connect(),
        Err(RemoteVaultError::Bundle { replica: 1, .. })
    );
    // Garbage from a server that holds the right channel but no bundle.
    let handled = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&handled);
    let garbage = OpenServer::start(
        ChannelId::new(VAULT_CHANNEL_LABEL, FLEET).unwrap(),
        StaticSecret::generate().unwrap(),
        b"not a bundle at all".to_vec(),
        Arc::new(move |_: &[u8]| {
            flag.store(true, Ordering::SeqCst);
            None
        }),
        OpenServerConfig::new("127.0.0.1:0".parse().unwrap()),
    )
    .unwrap();
    assert_matches!(
        endpoint(garbage.local_addr()).connect(),
        Err(RemoteVaultError::Bundle { replica: 1, .. })
    );
    // A well-formed bundle from a witness the client does not pin.
    let e1 = rf.artifact(1, &BTreeMap::new());
    let rogue_dir = tempfile::tempdir().unwrap();
    let mut rogue = Witness::open(
        SoftHsm::from_seed(5),
        vec![WitnessKeySpec {
            name: "witness".into(),
            not_before: 0,
        }],
        rogue_dir.path().join("w"),
    )
    .unwrap();
    let w = rogue.sign(NS, 1, e1.digest().unwrap(), NOW).unwrap();
    let tree = rogue.tree(NS).unwrap().clone();
    let forged = Bundle::assemble(
        e1.encode().unwrap(),
        &w,
        [0; 64],
        tree.inclusion_proof(0, 1).unwrap(),
        &rogue.checkpoint(NS, NOW).unwrap(),
    )
    .encode()
    .unwrap();
    for l in rf.listeners.values() {
        l.serve(BundleSource::new(forged.clone(), tree.clone()).unwrap())
            .unwrap();
    }
    assert_matches!(
        endpoint(rf.listeners[&1].local_addr()).connect(),
        Err(RemoteVaultError::Bundle {
            source: BundleError::WitnessSignature,
            ..
        })
    );
    let client = rf.bundle_client(
        rf.bundle_endpoints(&trust, &[1, 2, 3], |id| rf.listeners[&id].local_addr()),
    );
    assert_matches!(
        client.register(USER, CODE, SECRET),
        Err(VaultClientError::Unavailable(_))
    );
    assert!(!handled.load(Ordering::SeqCst));
    assert_eq!(garbage.stats().requests_received, 0);
    for id in 1..=3 {
        assert_eq!(rf.requests_received(id), 0, "replica {id}");
    }
    assert_eq!(trust.newest_epoch(), None);
    // The genuine bundle then opens the way.
    rf.publish(&e1);
    assert_matches!(client.register(USER, CODE, SECRET), Ok(1));
}

/// A client that pins the replicas' response and transport keys runs NK: only
/// the holder of the pinned key completes the handshake.
#[test]
fn a_client_with_pinned_keys_runs_nk() {
    let rf = RemoteFleet::start(3);
    let pinned = |id: u64, key: PublicKey| {
        Arc::new(
            RemoteVaultEndpoint::new(
                id,
                rf.listeners[&id].local_addr(),
                FLEET,
                ServerTrust::Pinned(key),
                client_config(),
            )
            .unwrap(),
        )
    };
    let endpoints: Vec<Arc<dyn VaultEndpoint>> = rf
        .listeners
        .iter()
        .map(|(&id, l)| pinned(id, l.public_key()) as Arc<dyn VaultEndpoint>)
        .collect();
    let client = VaultClient::new(endpoints, rf.keys.clone(), cfg()).unwrap();
    assert_matches!(client.register(USER, CODE, SECRET), Ok(1));
    assert_eq!(client.recover(USER, CODE).unwrap().as_slice(), SECRET);
    let wrong = pinned(1, StaticSecret::generate().unwrap().public_key());
    assert_matches!(
        wrong.connect(),
        Err(RemoteVaultError::Channel { replica: 1, .. })
    );
    let stats = rf.listeners[&1].stats();
    assert!(stats.handshakes_failed >= 1, "{stats:?}");
}

/// Review of the vault channel, H1: the handshake's trust never learnt of early
/// retirements (they arrive in replies, and only the client's own verifier
/// applied them), so a transport key of a retired epoch (a compromised host's,
/// say) still received the user's bytes until the epoch's `not_after`. A client
/// kept in step hands every retirement to the handshake trust: the retired
/// epoch's key gets no request.
#[test]
fn review_h1_a_retired_epochs_transport_key_receives_no_request() {
    let mut rf = RemoteFleet::start(3);
    // Epoch 1 lists, for replica 1, a key the attacker holds (a host it
    // compromised); epoch 2 lists the honest listener's key and retires 1.
    let stolen = StaticSecret::generate().unwrap();
    let listed = BTreeMap::from([(1, *stolen.public_key().as_bytes())]);
    let e1 = rf.artifact(1, &listed);
    let e1_source = rf.publish(&e1);
    let keys = VaultKeys::open(rf.world.clone(), &rf.sealed_setup, 1, 1).unwrap();
    let attacker = VaultListener::start(
        Arc::new(
            VaultService::start(
                VaultServer::new(keys),
                rf.fleet.handles(),
                VaultServiceConfig::default(),
            )
            .expect("service session"),
        ),
        FLEET,
        stolen,
        OpenServerConfig::new("127.0.0.1:0".parse().unwrap()),
    )
    .expect("listen");
    attacker.serve(e1_source).unwrap();
    let trust = rf.trust();
    let honest = rf.bundle_endpoints(&trust, &[2, 3], |id| rf.listeners[&id].local_addr());
    let client = rf.bundle_client(honest).keep_in_step(Arc::clone(&trust));
    assert_matches!(client.register(USER, CODE, SECRET), Ok(1));
    let e2 = rf.artifact(2, &BTreeMap::new());
    let e2_source = rf.publish(&e2);
    let mut retirement = rf.witness.sign_retirement(NS, 1, NOW).unwrap();
    retirement.countersign(&rf.authority, "operator").unwrap();
    let e2_source = e2_source
        .with_retirements(vec![retirement.encode().unwrap()])
        .unwrap();
    for l in rf.listeners.values() {
        l.serve(e2_source.clone()).unwrap();
    }
    // A reply carries the retirement: the client, and its handshake trust, take it.
    assert_eq!(client.recover(USER, CODE).unwrap().as_slice(), SECRET);
    // The attacker answers for replica 1 with epoch 1's bundle and key.
    let to_attacker = bundle_endpoint(&trust, 1, attacker.local_addr());
    assert_matches!(
        to_attacker.connect(),
        Err(RemoteVaultError::Bundle {
            replica: 1,
            source: BundleError::EpochRetired { .. }
        })
    );
    let victim = rf
        .bundle_client(vec![to_attacker as Arc<dyn VaultEndpoint>])
        .keep_in_step(Arc::clone(&trust));
    assert!(client_fails(&victim));
    assert_eq!(
        attacker.stats().requests_received,
        0,
        "nothing of the user's"
    );
}

fn client_fails(client: &VaultClient) -> bool {
    client.recover(USER, CODE).is_err()
}
