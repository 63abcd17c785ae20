//! The Backup Key Vault end to end: a threaded fleet running `BackupVault`, a
//! `VaultService` beside every node, and `VaultClient`s speaking OPAQUE to them.
// Tests of the threaded runtime run client threads in wall-clock time.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use crate::harness;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use harness::{no_tweak, Fleet, Store};
use vaultfleet::runtime::{Client, ClientConfig};
use vaultfleet::{FleetConfig, MemberSpec, SoftHsm};
use vaultfleet_vault::wire::{
    vault_client_request, VaultClientRequest, VaultLoginStart, VaultReply, VaultReplyBody,
    VaultReplyStatus, VaultRequestId,
};
use vaultfleet_vault::{
    BackupVault, ClientLoginFlow, InvalidInput, InvalidUserId, KsfParams, ReplyError, UserId,
    UserView, VaultClient, VaultClientConfig, VaultClientError, VaultEndpoint, VaultKeys,
    VaultPublicKeys, VaultServer, VaultService, VaultServiceConfig,
};

type Service = VaultService<SoftHsm>;

/// Asserts that `$value` matches `$pattern`, showing the value when it does not
/// (`VaultClientError` nests typed causes that are not `PartialEq`).
macro_rules! assert_matches {
    ($value:expr, $pattern:pat $(if $guard:expr)? $(,)?) => {
        assert_matches!($value, $pattern $(if $guard)?, "")
    };
    ($value:expr, $pattern:pat $(if $guard:expr)?, $($message:tt)+) => {
        match $value {
            $pattern $(if $guard)? => {}
            other => panic!(
                "{other:?} does not match {}: {}",
                stringify!($pattern $(if $guard)?),
                format_args!($($message)+)
            ),
        }
    };
}

const CODE: &[u8] = b"correct horse battery staple";
const WRONG: &[u8] = b"wrong horse";
const SECRET: &[u8] = b"backup-key:7d0f1e9a4b8c2d3e5f6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708";

struct VaultFleet {
    fleet: Fleet<BackupVault>,
    /// The fleet's HSM security world: every service's HSM holds its keys.
    world: SoftHsm,
    sealed_setup: Vec<u8>,
    services: BTreeMap<u64, Arc<Service>>,
    keys: VaultPublicKeys,
}

impl VaultFleet {
    fn start(n: u64, store: Store) -> VaultFleet {
        let dcs = ["dc-a", "dc-b", "dc-c"];
        let config = FleetConfig::new(
            (1..=n)
                .map(|id| MemberSpec::voter(id, dcs[(id as usize - 1) % dcs.len()]))
                .collect(),
        );
        let fleet = Fleet::start_machine(config, store, no_tweak, BackupVault::new);
        fleet.wait_leader();
        let world = SoftHsm::from_seed(0x0076_6175_6c74);
        let sealed_setup = VaultKeys::provision(&world).expect("provision the vault keys");
        let mut vf = VaultFleet {
            fleet,
            world,
            sealed_setup,
            services: BTreeMap::new(),
            keys: VaultPublicKeys {
                group: 1,
                replicas: BTreeMap::new(),
            },
        };
        for id in 1..=n {
            vf.start_service(id);
        }
        vf
    }

    fn start_service(&mut self, id: u64) {
        let keys =
            VaultKeys::open(self.world.clone(), &self.sealed_setup, 1, id).expect("open keys");
        self.keys
            .replicas
            .insert(id, keys.response_public_key().expect("response key"));
        let service = VaultService::start(
            VaultServer::new(keys),
            self.fleet.handles(),
            VaultServiceConfig::default(),
        )
        .expect("service session");
        self.services.insert(id, Arc::new(service));
    }

    fn endpoints(&self) -> Vec<Arc<dyn VaultEndpoint>> {
        self.services
            .values()
            .map(|s| Arc::clone(s) as Arc<dyn VaultEndpoint>)
            .collect()
    }

    /// A new client (a user's device) of every service.
    fn client(&self) -> VaultClient {
        self.client_of(self.endpoints())
    }

    fn client_of(&self, endpoints: Vec<Arc<dyn VaultEndpoint>>) -> VaultClient {
        VaultClient::new(endpoints, self.keys.clone(), cfg()).expect("the OS RNG")
    }

    /// `user`'s state, read linearizably through the leader.
    fn view(&self, user: &[u8]) -> Option<UserView> {
        let bytes = self
            .fleet
            .client()
            .read(BackupVault::query_user(user))
            .expect("read");
        decode_view(&bytes)
    }
}

fn decode_view(bytes: &[u8]) -> Option<UserView> {
    use vaultfleet_vault::wire::{VaultOutcome, VaultStatus};
    let o: VaultOutcome = vaultfleet::wire::decode(bytes, "outcome").expect("outcome");
    match o.status.enum_value_or(VaultStatus::VAULT_MALFORMED) {
        VaultStatus::VAULT_OK => Some(UserView::Registered {
            generation: o.generation,
            attempts_left: o.attempts_left,
            max_attempts: 0,
        }),
        VaultStatus::VAULT_LOCKED => Some(UserView::Locked {
            generation: o.generation,
        }),
        _ => None,
    }
}

fn attempts_left(vf: &VaultFleet, user: &[u8]) -> u32 {
    match vf.view(user) {
        Some(UserView::Registered { attempts_left, .. }) => attempts_left,
        other => panic!(
            "{} is not registered: {other:?}",
            String::from_utf8_lossy(user)
        ),
    }
}

fn cfg() -> VaultClientConfig {
    VaultClientConfig {
        ksf: KsfParams::TESTS_ONLY,
        backoff: Duration::from_millis(20),
        ..VaultClientConfig::default()
    }
}

#[test]
fn register_and_recover() {
    let vf = VaultFleet::start(3, Store::Mem);
    let client = vf.client();
    assert_matches!(client.register(b"alice", CODE, SECRET), Ok(1));
    assert_eq!(
        client.recover(b"alice", CODE).expect("recover").as_slice(),
        SECRET
    );
    // Another device of the same user (a new client) recovers too.
    let phone = vf.client();
    assert_eq!(
        phone.recover(b"alice", CODE).expect("recover").as_slice(),
        SECRET
    );
    assert_eq!(attempts_left(&vf, b"alice"), 10);
    assert_matches!(
        client.recover(b"bob", CODE),
        Err(VaultClientError::NotRegistered)
    );
    assert_matches!(
        client.register(b"alice", b"attacker's code", b"attacker's key"),
        Err(VaultClientError::AlreadyRegistered),
        "an existing record is never overwritten without its code"
    );
    assert_eq!(
        client.recover(b"alice", CODE).expect("recover").as_slice(),
        SECRET
    );
}

#[test]
fn ten_wrong_codes_then_the_right_one_is_locked() {
    let vf = VaultFleet::start(3, Store::Mem);
    let client = vf.client();
    client.register(b"carol", CODE, SECRET).expect("register");
    for left in (0..10).rev() {
        assert_matches!(
            client.recover(b"carol", WRONG),
            Err(VaultClientError::WrongCode { attempts_left }) if attempts_left == left
        );
    }
    assert_matches!(
        client.recover(b"carol", CODE),
        Err(VaultClientError::Locked)
    );
    assert_eq!(vf.view(b"carol"), Some(UserView::Locked { generation: 1 }));
    // Locked for good: no re-registration, no delete, no re-registration with the code.
    assert_matches!(
        client.register(b"carol", CODE, SECRET),
        Err(VaultClientError::Locked)
    );
    assert_matches!(client.delete(b"carol", CODE), Err(VaultClientError::Locked));
    assert_matches!(
        client.reregister(b"carol", CODE, b"new", SECRET, 10),
        Err(VaultClientError::Locked)
    );
}

#[test]
fn the_right_code_after_nine_wrong_ones_succeeds_and_resets() {
    let vf = VaultFleet::start(3, Store::Mem);
    let client = vf.client();
    client.register(b"dave", CODE, SECRET).expect("register");
    for left in (1..10).rev() {
        assert_matches!(
            client.recover(b"dave", WRONG),
            Err(VaultClientError::WrongCode { attempts_left }) if attempts_left == left
        );
    }
    assert_eq!(
        client.recover(b"dave", CODE).expect("recover").as_slice(),
        SECRET
    );
    assert_eq!(attempts_left(&vf, b"dave"), 10);
    assert_matches!(
        client.recover(b"dave", WRONG),
        Err(VaultClientError::WrongCode { attempts_left: 9 })
    );
    // The limit is the registration's: one attempt, and the last one may still succeed.
    client
        .register_with_limit(b"erin", CODE, SECRET, 1)
        .expect("register");
    assert_eq!(
        client.recover(b"erin", CODE).expect("recover").as_slice(),
        SECRET
    );
    assert_eq!(attempts_left(&vf, b"erin"), 1);
    assert_matches!(
        client.recover(b"erin", WRONG),
        Err(VaultClientError::WrongCode { attempts_left: 0 })
    );
    assert_matches!(client.recover(b"erin", CODE), Err(VaultClientError::Locked));
}

fn login_start(user: &[u8], flow: &ClientLoginFlow, sequence: u64) -> Vec<u8> {
    let mut start = VaultLoginStart::new();
    start.user = user.to_vec();
    start.credential_request = flow.request().to_vec();
    let mut id = VaultRequestId::new();
    id.client = 77;
    id.sequence = sequence;
    let mut r = VaultClientRequest::new();
    r.request = Some(id).into();
    r.op = Some(vault_client_request::Op::LoginStart(start));
    vaultfleet::wire::encode_bounded(&r)
}

fn body(reply: &[u8]) -> VaultReplyBody {
    let r: VaultReply = vaultfleet::wire::decode(reply, "reply").expect("reply");
    vaultfleet::wire::decode(&r.body, "body").expect("body")
}

#[test]
fn refusals_carry_the_vaults_own_words_and_typed_client_errors() {
    use rand::SeedableRng;
    let vf = VaultFleet::start(3, Store::Mem);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
    let flow = ClientLoginFlow::start_with_insecure_rng(&mut rng, CODE).expect("login");
    // A user id out of bounds, and an OPAQUE message that does not decode: the
    // reply's detail is stable text, never opaque-ke's or protobuf's wording.
    let long = body(
        &vf.services[&1]
            .call(&login_start(&[b'u'; 257], &flow, 1))
            .expect("service up"),
    );
    assert_eq!(
        (long.status.enum_value(), long.detail.as_str()),
        (Ok(VaultReplyStatus::REPLY_BAD_REQUEST), "invalid user id")
    );
    let mut garbage = VaultLoginStart::new();
    garbage.user = b"trent".to_vec();
    garbage.credential_request = vec![0xff; 7];
    let mut r = VaultClientRequest::new();
    let mut id = VaultRequestId::new();
    id.client = 78;
    id.sequence = 1;
    r.request = Some(id).into();
    r.op = Some(vault_client_request::Op::LoginStart(garbage));
    let refused = body(
        &vf.services[&1]
            .call(&vaultfleet::wire::encode_bounded(&r))
            .expect("service up"),
    );
    assert_eq!(
        (refused.status.enum_value(), refused.detail.as_str()),
        (
            Ok(VaultReplyStatus::REPLY_BAD_REQUEST),
            "OPAQUE credential request"
        )
    );
    let undecodable = body(&vf.services[&1].call(b"\xff\xff").expect("service up"));
    assert_eq!(undecodable.detail, "the request does not decode");
    // The client checks its arguments once, with typed errors.
    let client = vf.client();
    assert_matches!(
        client.recover(b"", CODE),
        Err(VaultClientError::InvalidInput(InvalidInput::UserId(
            InvalidUserId { bytes: 0 }
        )))
    );
    assert_matches!(
        client.register_with_limit(b"trent", CODE, SECRET, 0),
        Err(VaultClientError::InvalidInput(InvalidInput::MaxAttempts(0)))
    );
    assert_matches!(
        client.register(b"trent", CODE, &[]),
        Err(VaultClientError::InvalidInput(InvalidInput::Secret {
            bytes: 0
        }))
    );
}

#[test]
fn a_retried_consume_does_not_spend_twice() {
    use rand::SeedableRng;
    let vf = VaultFleet::start(3, Store::Mem);
    vf.client()
        .register(b"frank", CODE, SECRET)
        .expect("register");
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
    let flow = ClientLoginFlow::start_with_insecure_rng(&mut rng, WRONG).expect("login");
    let request = login_start(b"frank", &flow, 1);
    // The same request delivered to every service (a client retrying after lost
    // replies): one attempt, one ticket.
    let answers: Vec<VaultReplyBody> = vf
        .services
        .values()
        .map(|s| body(&s.call(&request).expect("service up")))
        .collect();
    for a in &answers {
        assert_eq!(a.attempts_left, 9, "{a:?}");
    }
    assert_eq!(attempts_left(&vf, b"frank"), 9);
    // The same request id with another credential request (another guess) is refused.
    let other =
        ClientLoginFlow::start_with_insecure_rng(&mut rng, b"another guess").expect("login");
    let reused = body(
        &vf.services[&1]
            .call(&login_start(b"frank", &other, 1))
            .expect("up"),
    );
    assert_eq!(
        reused.status.enum_value_or(VaultReplyStatus::REPLY_OK),
        VaultReplyStatus::REPLY_REQUEST_REUSED,
        "{reused:?}"
    );
    assert!(
        reused.credential_response.is_empty(),
        "no OPAQUE answer for a reused id"
    );
    assert_eq!(attempts_left(&vf, b"frank"), 9);
}

#[test]
fn a_leader_crash_between_consume_and_response_gives_no_extra_attempt() {
    let mut vf = VaultFleet::start(5, Store::Sled);
    let client = vf.client();
    client.register(b"grace", CODE, SECRET).expect("register");
    let leader = vf.fleet.wait_leader();
    // The leader's service commits the consume of a guess ...
    let keys = VaultKeys::open(vf.world.clone(), &vf.sealed_setup, 1, leader).expect("keys");
    let server = VaultServer::new(keys);
    let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(6);
    let flow = ClientLoginFlow::start_with_insecure_rng(&mut rng, WRONG).expect("login");
    let mut id = VaultRequestId::new();
    id.client = 99;
    id.sequence = 1;
    let consume = server
        .consume_command(
            &id,
            &UserId::new(b"grace".as_slice()).expect("user id"),
            flow.request(),
        )
        .expect("command");
    let session =
        Client::connect(vec![vf.fleet.handle(leader)], ClientConfig::default()).expect("session");
    session.propose(consume).expect("consume commits");
    // ... and its host dies before the OPAQUE response leaves it.
    vf.services[&leader].stop();
    vf.fleet.stop(leader);
    vf.services.remove(&leader);
    let survivors = vf.client();
    assert_matches!(
        survivors.recover(b"grace", WRONG),
        Err(VaultClientError::WrongCode { attempts_left: 8 }),
        "the crashed leader's committed attempt stays spent"
    );
    // A host that crashes after answering a login, before the finalization: the
    // client asks another service with the same request, which spends nothing.
    let flaky = vf.services.values().next().expect("a service").clone();
    let mut endpoints: Vec<Arc<dyn VaultEndpoint>> =
        vec![Arc::new(CrashBeforeFinish { inner: flaky })];
    endpoints.extend(vf.endpoints().into_iter().skip(1));
    let client = vf.client_of(endpoints);
    assert_eq!(
        client.recover(b"grace", CODE).expect("recover").as_slice(),
        SECRET
    );
    assert_eq!(attempts_left(&vf, b"grace"), 10);
    vf.fleet.restart(leader);
    vf.start_service(leader);
    assert_eq!(
        vf.client()
            .recover(b"grace", CODE)
            .expect("recover")
            .as_slice(),
        SECRET
    );
}

/// A service whose host dies right after it answered a login start.
struct CrashBeforeFinish {
    inner: Arc<Service>,
}

impl VaultEndpoint for CrashBeforeFinish {
    fn replica(&self) -> u64 {
        self.inner.replica()
    }

    fn call(&self, request: &[u8]) -> Result<Vec<u8>, vaultfleet_vault::Unreachable> {
        let r: VaultClientRequest = vaultfleet::wire::decode(request, "request").expect("request");
        if matches!(r.op, Some(vault_client_request::Op::LoginFinish(_))) {
            self.inner.stop();
        }
        self.inner.call(request)
    }
}

#[test]
fn parallel_recoveries_each_spend_their_own_attempt() {
    let vf = VaultFleet::start(3, Store::Mem);
    vf.client()
        .register(b"heidi", CODE, SECRET)
        .expect("register");
    let vf = Arc::new(vf);
    let wrong: Vec<_> = (0..4)
        .map(|_| {
            let vf = Arc::clone(&vf);
            std::thread::spawn(move || vf.client().recover(b"heidi", WRONG))
        })
        .collect();
    let mut left: Vec<u32> = wrong
        .into_iter()
        .map(|t| match t.join().expect("thread") {
            Err(VaultClientError::WrongCode { attempts_left }) => attempts_left,
            other => panic!("{other:?}"),
        })
        .collect();
    left.sort_unstable();
    assert_eq!(
        left,
        vec![6, 7, 8, 9],
        "four guesses at once spend four attempts"
    );
    assert_eq!(attempts_left(&vf, b"heidi"), 6);
    let right: Vec<_> = (0..3)
        .map(|_| {
            let vf = Arc::clone(&vf);
            std::thread::spawn(move || vf.client().recover(b"heidi", CODE))
        })
        .collect();
    for t in right {
        assert_eq!(
            t.join().expect("thread").expect("recover").as_slice(),
            SECRET
        );
    }
    assert_eq!(attempts_left(&vf, b"heidi"), 10);
}

#[test]
fn reregistration_and_delete_need_the_current_code() {
    let vf = VaultFleet::start(3, Store::Mem);
    let client = vf.client();
    client.register(b"ivan", CODE, SECRET).expect("register");
    assert_matches!(
        client.reregister(b"ivan", WRONG, b"new code", b"new secret", 5),
        Err(VaultClientError::WrongCode { attempts_left: 9 })
    );
    assert_matches!(
        client.delete(b"ivan", WRONG),
        Err(VaultClientError::WrongCode { attempts_left: 8 })
    );
    assert_matches!(
        client.reregister(b"ivan", CODE, b"new code", b"new secret", 5),
        Ok(2)
    );
    assert_matches!(
        client.recover(b"ivan", CODE),
        Err(VaultClientError::WrongCode { attempts_left: 4 })
    );
    assert_eq!(
        client
            .recover(b"ivan", b"new code")
            .expect("recover")
            .as_slice(),
        b"new secret"
    );
    assert_matches!(client.delete(b"ivan", b"new code"), Ok(()));
    assert_matches!(
        client.recover(b"ivan", b"new code"),
        Err(VaultClientError::NotRegistered)
    );
    assert_matches!(client.register(b"ivan", CODE, SECRET), Ok(3));
}

/// An intermediary that alters every reply.
struct Tamper {
    inner: Arc<Service>,
}

impl VaultEndpoint for Tamper {
    fn replica(&self) -> u64 {
        self.inner.replica()
    }

    fn call(&self, request: &[u8]) -> Result<Vec<u8>, vaultfleet_vault::Unreachable> {
        let mut reply = self.inner.call(request)?;
        if let Some(b) = reply.get_mut(12) {
            *b ^= 1;
        }
        Ok(reply)
    }
}

#[test]
fn replies_not_signed_by_a_pinned_replica_are_refused() {
    let vf = VaultFleet::start(3, Store::Mem);
    vf.client()
        .register(b"judy", CODE, SECRET)
        .expect("register");
    let tampered: Vec<Arc<dyn VaultEndpoint>> = vf
        .services
        .values()
        .map(|s| {
            Arc::new(Tamper {
                inner: Arc::clone(s),
            }) as Arc<dyn VaultEndpoint>
        })
        .collect();
    let client = vf.client_of(tampered);
    assert!(
        matches!(
            client.recover(b"judy", CODE),
            Err(VaultClientError::BadReply { .. })
        ),
        "altered replies are refused"
    );
    let mut wrong_keys = vf.keys.clone();
    for k in wrong_keys.replicas.values_mut() {
        k[0] ^= 1;
    }
    let client = VaultClient::new(vf.endpoints(), wrong_keys, cfg()).expect("the OS RNG");
    assert!(matches!(
        client.register(b"mallory", CODE, SECRET),
        Err(VaultClientError::BadReply {
            cause: ReplyError::Signature,
            ..
        })
    ));
}

/// Mutation test (issue 13) of `verify_pinned_reply`, the sans-IO clients'
/// check of a reply under pinned keys: the signature, the replica and the
/// request.
#[test]
fn mutant_client_verify_pinned_reply_checks_the_signature_the_replica_and_the_request() {
    use sha2::Digest as _;
    use vaultfleet_vault::verify_pinned_reply;
    let vf = VaultFleet::start(3, Store::Mem);
    let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(13);
    let flow = ClientLoginFlow::start_with_insecure_rng(&mut rng, CODE).expect("login");
    let request = login_start(b"nobody", &flow, 1);
    let digest: [u8; 32] = sha2::Sha256::digest(&request).into();
    let reply = vf.services[&1].call(&request).expect("up");
    let b = verify_pinned_reply(&vf.keys, 1, &reply, &digest).expect("replica 1's reply");
    assert_eq!(
        (
            b.replica,
            b.status.enum_value_or(VaultReplyStatus::REPLY_OK)
        ),
        (1, VaultReplyStatus::REPLY_NOT_REGISTERED)
    );
    assert_matches!(
        verify_pinned_reply(&vf.keys, 2, &reply, &digest),
        Err(ReplyError::Signature)
    );
    assert_matches!(
        verify_pinned_reply(&vf.keys, 9, &reply, &digest),
        Err(ReplyError::UnknownReplica)
    );
    assert_matches!(
        verify_pinned_reply(&vf.keys, 1, &reply, &[0; 32]),
        Err(ReplyError::OtherRequest)
    );
}

fn scan(dir: &std::path::Path, needles: &[&[u8]]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                for n in needles {
                    if bytes.windows(n.len()).any(|w| w == *n) {
                        found.push(format!(
                            "{} holds {:?}",
                            path.display(),
                            String::from_utf8_lossy(n)
                        ));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn neither_the_secret_nor_the_code_is_ever_in_plain_text_on_disk() {
    for store in [Store::Sled, Store::SealedSled] {
        let mut vf = VaultFleet::start(3, store);
        let client = vf.client();
        client.register(b"ken", CODE, SECRET).expect("register");
        assert_matches!(
            client.recover(b"ken", WRONG),
            Err(VaultClientError::WrongCode { attempts_left: 9 })
        );
        assert_eq!(
            client.recover(b"ken", CODE).expect("recover").as_slice(),
            SECRET
        );
        let ids: Vec<u64> = vf.fleet.nodes.keys().copied().collect();
        for id in ids {
            vf.services[&id].stop();
            vf.fleet.stop(id);
        }
        let found = scan(
            vf.fleet.dir_of(1).parent().expect("fleet dir"),
            &[SECRET, &SECRET[..16], CODE],
        );
        assert!(found.is_empty(), "plain text on disk: {found:?}");
        // The files are the real thing: the fleet restarts from them and recovers.
        for id in 1..=3 {
            vf.fleet.restart(id);
        }
        vf.fleet.wait_leader();
        vf.services.clear();
        for id in 1..=3 {
            vf.start_service(id);
        }
        assert_eq!(
            vf.client()
                .recover(b"ken", CODE)
                .expect("recover")
                .as_slice(),
            SECRET
        );
    }
}

#[test]
fn a_registration_must_use_a_nonce_the_fleet_drew() {
    use rand::SeedableRng;
    use vaultfleet_vault::wire::{VaultRegisterFinish, VaultRegisterStart};
    use vaultfleet_vault::{registration_secret_digest, ClientRegistrationFlow, KsfParams};
    let vf = VaultFleet::start(3, Store::Mem);
    let service = &vf.services[&1];
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(17);
    let request = |sequence: u64, op: vault_client_request::Op| {
        let mut id = VaultRequestId::new();
        id.client = 5;
        id.sequence = sequence;
        let mut r = VaultClientRequest::new();
        r.request = Some(id).into();
        r.op = Some(op);
        vaultfleet::wire::encode_bounded(&r)
    };
    let flow = ClientRegistrationFlow::start_with_insecure_rng(&mut rng, CODE).expect("flow");
    let mut start = VaultRegisterStart::new();
    start.user = b"oscar".to_vec();
    start.registration_request = flow.request().to_vec();
    start.max_attempts = 10;
    start.secret_digest =
        registration_secret_digest(&UserId::new(&b"oscar"[..]).unwrap(), SECRET).to_vec();
    let started = body(
        &service
            .call(&request(1, vault_client_request::Op::RegisterStart(start)))
            .expect("up"),
    );
    let upload = flow
        .finish_with_insecure_rng(
            &mut rng,
            CODE,
            &started.registration_response,
            &KsfParams::TESTS_ONLY,
        )
        .expect("upload");
    let finish = |nonce: Vec<u8>, user: &[u8]| {
        let mut f = VaultRegisterFinish::new();
        f.user = user.to_vec();
        f.registration_upload = upload.clone();
        f.credential_nonce = nonce;
        f.nonce_tag = started.nonce_tag.clone();
        f.secret = SECRET.to_vec();
        f.max_attempts = 10;
        f.issued_generation = started.generation;
        vault_client_request::Op::RegisterFinish(f)
    };
    let status = |b: VaultReplyBody| b.status.enum_value_or(VaultReplyStatus::REPLY_OK);
    // A nonce the client chose, or the fleet's nonce for another user: refused.
    let mut chosen = started.credential_nonce.clone();
    chosen[0] ^= 1;
    let r = body(
        &service
            .call(&request(2, finish(chosen, b"oscar")))
            .expect("up"),
    );
    assert_eq!(status(r), VaultReplyStatus::REPLY_BAD_REQUEST);
    let r = body(
        &service
            .call(&request(
                3,
                finish(started.credential_nonce.clone(), b"trudy"),
            ))
            .expect("up"),
    );
    assert_eq!(status(r), VaultReplyStatus::REPLY_BAD_REQUEST);
    let r = body(
        &service
            .call(&request(
                4,
                finish(started.credential_nonce.clone(), b"oscar"),
            ))
            .expect("up"),
    );
    assert_eq!(status(r), VaultReplyStatus::REPLY_OK);
    assert_eq!(
        vf.client()
            .recover(b"oscar", CODE)
            .expect("recover")
            .as_slice(),
        SECRET
    );
}

#[test]
fn the_right_code_on_the_last_attempt_may_delete() {
    let vf = VaultFleet::start(3, Store::Mem);
    let client = vf.client();
    client
        .register_with_limit(b"peggy", CODE, SECRET, 2)
        .expect("register");
    assert_matches!(
        client.recover(b"peggy", WRONG),
        Err(VaultClientError::WrongCode { attempts_left: 1 })
    );
    assert_matches!(client.delete(b"peggy", CODE), Ok(()));
    assert_matches!(
        client.recover(b"peggy", CODE),
        Err(VaultClientError::NotRegistered)
    );
    assert_matches!(client.register(b"peggy", CODE, SECRET), Ok(2));
}

mod over_the_air {
    use super::*;
    use vaultfleet::hsm::{Hsm, KeyKind};
    use vaultfleet_audit::fleet::{FleetArtifact, ReplicaKeys};
    use vaultfleet_audit::witness::countersign;
    use vaultfleet_audit::{
        Bundle, BundleError, ConsistencyProof, FleetVerifier, Witness, WitnessKey, WitnessKeySpec,
    };
    use vaultfleet_vault::BundleSource;

    const NS: &str = "example.vault.fleet_keys.v1";
    const NOW: u64 = 1_800_000_000;

    /// The witness signs `a` at `NOW`, the operator countersigns, and the
    /// services are handed the bundle with the witness's whole log.
    fn publish(
        witness: &mut Witness<SoftHsm>,
        authority: &SoftHsm,
        a: &FleetArtifact,
    ) -> BundleSource {
        let w = witness.sign(NS, a.epoch, a.digest().unwrap(), NOW).unwrap();
        let cs = countersign(authority, "operator", &w).unwrap();
        let tree = witness.tree(NS).unwrap();
        let proof = tree.inclusion_proof(w.leaf_index, tree.size()).unwrap();
        let cp = witness.checkpoint(NS, NOW).unwrap();
        let bundle = Bundle::assemble(a.encode().unwrap(), &w, cs, proof, &cp)
            .encode()
            .unwrap();
        BundleSource::new(bundle, tree.clone()).expect("the log is the checkpointed one")
    }

    fn open_witness(authority: &SoftHsm, path: &std::path::Path) -> Witness<SoftHsm> {
        Witness::open(
            authority.clone(),
            vec![WitnessKeySpec {
                name: "witness".into(),
                not_before: 0,
            }],
            path,
        )
        .unwrap()
    }

    /// A client of `endpoints` pinned only to `witness`'s and the operator's keys.
    fn bundle_client(
        endpoints: Vec<Arc<dyn VaultEndpoint>>,
        witness: &Witness<SoftHsm>,
        authority: &SoftHsm,
    ) -> VaultClient {
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
        VaultClient::with_verifier(endpoints, 1, verifier, Arc::new(|| NOW), cfg())
            .expect("the OS RNG")
    }

    fn serve(vf: &VaultFleet, source: &BundleSource) {
        for s in vf.services.values() {
            s.serve(source.clone());
        }
    }

    /// Between a client and one service: records each request's
    /// `known_checkpoint_size` with the consistency proof its reply carried,
    /// and (as a network attacker may) strips the proof when told to.
    struct Tap {
        inner: Arc<Service>,
        strip_proof: bool,
        seen: std::sync::Mutex<Vec<(Option<u64>, Vec<u8>)>>,
    }

    impl VaultEndpoint for Tap {
        fn replica(&self) -> u64 {
            self.inner.replica()
        }

        fn call(&self, request: &[u8]) -> Result<Vec<u8>, vaultfleet_vault::Unreachable> {
            let r: VaultClientRequest = vaultfleet::wire::decode(request, "request").unwrap();
            let raw = self.inner.call(request)?;
            let mut reply: VaultReply = vaultfleet::wire::decode(&raw, "reply").unwrap();
            self.seen
                .lock()
                .unwrap()
                .push((r.known_checkpoint_size, reply.consistency_proof.clone()));
            if !self.strip_proof {
                return Ok(raw);
            }
            reply.consistency_proof.clear();
            Ok(vaultfleet::wire::encode_bounded(&reply))
        }
    }

    fn taps(vf: &VaultFleet, strip_proof: bool) -> Vec<Arc<Tap>> {
        vf.services
            .values()
            .map(|s| {
                Arc::new(Tap {
                    inner: Arc::clone(s),
                    strip_proof,
                    seen: std::sync::Mutex::new(Vec::new()),
                })
            })
            .collect()
    }

    fn tap_endpoints(taps: &[Arc<Tap>]) -> Vec<Arc<dyn VaultEndpoint>> {
        taps.iter()
            .map(|t| Arc::clone(t) as Arc<dyn VaultEndpoint>)
            .collect()
    }

    /// Issue 13, finding 5: a witness rolled back to an older state forks its
    /// log; a client that accepted checkpoint 2 of the honest log is sent a
    /// checkpoint of size 3 of the fork, with the fork's own (internally valid)
    /// consistency proof. Its root at size 2 is not the client's: refused.
    #[test]
    fn finding_5_a_checkpoint_of_a_forked_witness_log_is_refused() {
        let vf = VaultFleet::start(3, Store::Mem);
        let dir = tempfile::tempdir().unwrap();
        let authority = SoftHsm::from_seed(99);
        let mut witness = open_witness(&authority, &dir.path().join("witness"));
        let e1 = publish(&mut witness, &authority, &artifact(&vf, 1));
        // The witness's state as it was at size 1, restored later (a rollback).
        std::fs::copy(dir.path().join("witness"), dir.path().join("forked")).unwrap();
        let e2 = publish(&mut witness, &authority, &artifact(&vf, 2));
        let client = bundle_client(vf.endpoints(), &witness, &authority);
        serve(&vf, &e1);
        assert_matches!(client.register(b"quinn", CODE, SECRET), Ok(1));
        serve(&vf, &e2);
        assert_matches!(client.register(b"rita", CODE, SECRET), Ok(1));
        assert_eq!(client.fleet_epoch(), Some(2));

        let mut forked = open_witness(&authority, &dir.path().join("forked"));
        let mut other = artifact(&vf, 2);
        other.not_after -= 1;
        publish(&mut forked, &authority, &other);
        let e3 = publish(&mut forked, &authority, &artifact(&vf, 3));
        assert_eq!(e3.checkpoint_size(), 3);
        serve(&vf, &e3);
        assert_matches!(
            client.register(b"sam", CODE, SECRET),
            Err(VaultClientError::BadReply {
                cause: ReplyError::Bundle(BundleError::NotAnExtension { from: 2, to: 3, .. }),
                ..
            })
        );
        assert_eq!(client.fleet_epoch(), Some(2));
    }

    /// Finding 5: each request names the size of the checkpoint the client last
    /// accepted, each reply proves its checkpoint extends it, and the client
    /// follows the honest log through two rotations.
    #[test]
    fn finding_5_the_honest_extension_is_accepted_with_its_proof() {
        let vf = VaultFleet::start(3, Store::Mem);
        let dir = tempfile::tempdir().unwrap();
        let authority = SoftHsm::from_seed(99);
        let mut witness = open_witness(&authority, &dir.path().join("witness"));
        let e1 = publish(&mut witness, &authority, &artifact(&vf, 1));
        let taps = taps(&vf, false);
        let client = bundle_client(tap_endpoints(&taps), &witness, &authority);
        serve(&vf, &e1);
        assert_matches!(client.register(b"quinn", CODE, SECRET), Ok(1));
        let seen = |taps: &[Arc<Tap>]| -> Vec<(Option<u64>, Vec<u8>)> {
            taps.iter()
                .flat_map(|t| std::mem::take(&mut *t.seen.lock().unwrap()))
                .collect()
        };
        // The first request knows no checkpoint; then size 1, needing no proof.
        let first = seen(&taps);
        assert_eq!(first[0], (None, vec![]));
        assert!(first[1..].iter().all(|s| *s == (Some(1), vec![])));
        for epoch in 2..=3 {
            let e = publish(&mut witness, &authority, &artifact(&vf, epoch));
            serve(&vf, &e);
            assert_eq!(client.recover(b"quinn", CODE).unwrap().as_slice(), SECRET);
            assert_eq!(client.fleet_epoch(), Some(epoch));
            let seen = seen(&taps);
            let (known, proof) = &seen[0];
            assert_eq!(*known, Some(epoch - 1));
            let proof = ConsistencyProof::decode(proof).expect("a consistency proof");
            assert_eq!((proof.from_size, proof.to_size), (epoch - 1, epoch));
            assert!(seen[1..].iter().all(|s| *s == (Some(epoch), vec![])));
        }
    }

    /// Finding 5: once the client holds a checkpoint, a reply whose bundle is
    /// of a newer checkpoint and that carries no proof (stripped on the way) is
    /// refused.
    #[test]
    fn finding_5_a_reply_without_its_proof_is_refused_once_the_client_has_a_checkpoint() {
        let vf = VaultFleet::start(3, Store::Mem);
        let dir = tempfile::tempdir().unwrap();
        let authority = SoftHsm::from_seed(99);
        let mut witness = open_witness(&authority, &dir.path().join("witness"));
        let e1 = publish(&mut witness, &authority, &artifact(&vf, 1));
        let taps = taps(&vf, true);
        let client = bundle_client(tap_endpoints(&taps), &witness, &authority);
        serve(&vf, &e1);
        // No checkpoint yet, or the same one: no proof is needed.
        assert_matches!(client.register(b"quinn", CODE, SECRET), Ok(1));
        let e2 = publish(&mut witness, &authority, &artifact(&vf, 2));
        serve(&vf, &e2);
        assert_matches!(
            client.register(b"rita", CODE, SECRET),
            Err(VaultClientError::BadReply {
                cause: ReplyError::Bundle(BundleError::NoConsistencyProof { from: 1, to: 2 }),
                ..
            })
        );
        assert_eq!(client.fleet_epoch(), Some(1));
    }

    /// Adds `extra` to every reply's retirements (outside the signed body, as a
    /// network attacker may).
    struct AddRetirement {
        inner: Arc<Service>,
        extra: Vec<u8>,
    }

    impl VaultEndpoint for AddRetirement {
        fn replica(&self) -> u64 {
            self.inner.replica()
        }

        fn call(&self, request: &[u8]) -> Result<Vec<u8>, vaultfleet_vault::Unreachable> {
            let raw = self.inner.call(request)?;
            let mut reply: VaultReply = vaultfleet::wire::decode(&raw, "reply").unwrap();
            reply.retirements.push(self.extra.clone());
            Ok(vaultfleet::wire::encode_bounded(&reply))
        }
    }

    /// Mutation test (issue 13) of `reply_key`'s bound on retirements: a reply
    /// with `RETIREMENTS_MAX` of them is taken, one more is refused whole.
    #[test]
    fn mutant_client_reply_key_takes_retirements_max_and_refuses_one_more() {
        use vaultfleet_vault::RETIREMENTS_MAX;
        let vf = VaultFleet::start(3, Store::Mem);
        let dir = tempfile::tempdir().unwrap();
        let authority = SoftHsm::from_seed(99);
        let mut witness = open_witness(&authority, &dir.path().join("witness"));
        publish(&mut witness, &authority, &artifact(&vf, 1));
        let e2 = publish(&mut witness, &authority, &artifact(&vf, 2));
        let mut retirement = witness.sign_retirement(NS, 1, NOW).unwrap();
        retirement.countersign(&authority, "operator").unwrap();
        let retirement = retirement.encode().unwrap();
        let e2 = e2
            .with_retirements(vec![retirement.clone(); RETIREMENTS_MAX])
            .unwrap();
        serve(&vf, &e2);
        let client = bundle_client(vf.endpoints(), &witness, &authority);
        assert_matches!(client.register(b"quinn", CODE, SECRET), Ok(1));
        assert_eq!(client.fleet_epoch(), Some(2));
        let one_more: Vec<Arc<dyn VaultEndpoint>> = vf
            .services
            .values()
            .map(|s| {
                Arc::new(AddRetirement {
                    inner: Arc::clone(s),
                    extra: retirement.clone(),
                }) as Arc<dyn VaultEndpoint>
            })
            .collect();
        let client = bundle_client(one_more, &witness, &authority);
        assert_matches!(
            client.register(b"rita", CODE, SECRET),
            Err(VaultClientError::BadReply {
                cause: ReplyError::TooManyRetirements { count, max },
                ..
            }) if count == RETIREMENTS_MAX + 1 && max == RETIREMENTS_MAX
        );
        assert_eq!(client.fleet_epoch(), None);
    }

    /// Finding 5 and the low "retire an epoch early": a reply carries the
    /// operator's witnessed retirement of epoch 1; afterwards a reply with the
    /// epoch-1 bundle (a replica still on it, or a replayed reply), which the
    /// client would otherwise take as the previous epoch, is refused.
    #[test]
    fn finding_5_an_early_retired_epoch_delivered_in_a_reply_is_refused_afterwards() {
        let vf = VaultFleet::start(3, Store::Mem);
        let dir = tempfile::tempdir().unwrap();
        let authority = SoftHsm::from_seed(99);
        let mut witness = open_witness(&authority, &dir.path().join("witness"));
        let e1 = publish(&mut witness, &authority, &artifact(&vf, 1));
        let client = bundle_client(vf.endpoints(), &witness, &authority);
        serve(&vf, &e1);
        assert_matches!(client.register(b"quinn", CODE, SECRET), Ok(1));
        let e2 = publish(&mut witness, &authority, &artifact(&vf, 2));
        let mut retirement = witness.sign_retirement(NS, 1, NOW).unwrap();
        retirement.countersign(&authority, "operator").unwrap();
        let e2 = e2
            .with_retirements(vec![retirement.encode().unwrap()])
            .unwrap();
        serve(&vf, &e2);
        assert_matches!(client.register(b"rita", CODE, SECRET), Ok(1));
        assert_eq!(client.fleet_epoch(), Some(2));
        // Epoch 1's bundle, served with the current log (so its proof back from
        // size 2 holds): only the retirement stands in its way.
        let late =
            BundleSource::new(e1.bundle().to_vec(), witness.tree(NS).unwrap().clone()).unwrap();
        serve(&vf, &late);
        assert_matches!(
            client.register(b"sam", CODE, SECRET),
            Err(VaultClientError::BadReply {
                cause: ReplyError::Bundle(BundleError::EpochRetired {
                    epoch: 1,
                    retired_through: 1
                }),
                ..
            })
        );
    }

    /// Review of issue 13 (Low): a retirement that does not verify (one the
    /// operator never countersigned here; one signed by a witness key since
    /// rotated out fails the same way) made the client refuse the whole reply, so one stale
    /// retirement in a `BundleSource` failed every honest reply. It is now
    /// skipped (the network can strip retirements anyway), and not applied.
    #[test]
    fn review_low_a_retirement_that_does_not_verify_is_skipped_not_fatal() {
        let vf = VaultFleet::start(3, Store::Mem);
        let dir = tempfile::tempdir().unwrap();
        let authority = SoftHsm::from_seed(99);
        let mut witness = open_witness(&authority, &dir.path().join("witness"));
        let e1 = publish(&mut witness, &authority, &artifact(&vf, 1));
        let client = bundle_client(vf.endpoints(), &witness, &authority);
        serve(&vf, &e1);
        assert_matches!(client.register(b"tess", CODE, SECRET), Ok(1));
        let e2 = publish(&mut witness, &authority, &artifact(&vf, 2));
        // Witnessed but never countersigned by the operator.
        let uncountersigned = witness.sign_retirement(NS, 1, NOW).unwrap();
        let e2 = e2
            .with_retirements(vec![uncountersigned.encode().unwrap()])
            .unwrap();
        serve(&vf, &e2);
        assert_matches!(client.register(b"uma", CODE, SECRET), Ok(1));
        assert_eq!(client.fleet_epoch(), Some(2));
        // Neither retirement applied: epoch 1 is still within its window.
        let late =
            BundleSource::new(e1.bundle().to_vec(), witness.tree(NS).unwrap().clone()).unwrap();
        serve(&vf, &late);
        assert_matches!(client.register(b"vera", CODE, SECRET), Ok(1));
    }

    /// The fleet's artifact for `epoch`, from the services' real keys.
    fn artifact(vf: &VaultFleet, epoch: u64) -> FleetArtifact {
        let replicas = vf
            .keys
            .replicas
            .iter()
            .map(|(&id, key)| ReplicaKeys {
                id,
                datacenter: ["dc-a", "dc-b", "dc-c"][(id as usize - 1) % 3].into(),
                response_key: *key,
                transport_key: [id as u8; 32],
                opaque_key: VaultKeys::open(vf.world.clone(), &vf.sealed_setup, 1, id)
                    .unwrap()
                    .opaque_public_key(),
            })
            .collect::<Vec<_>>();
        FleetArtifact {
            fleet_id: "test-fleet".into(),
            epoch,
            voters: replicas.iter().map(|r| r.id).collect(),
            replicas,
            learners: vec![],
            not_before: NOW - 10,
            not_after: NOW + 86_400,
        }
    }

    #[test]
    fn a_client_pinned_only_to_witness_and_operator_trusts_the_fleet_through_bundles() {
        let vf = VaultFleet::start(3, Store::Mem);
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
        let publish =
            |witness: &mut Witness<SoftHsm>, a: &FleetArtifact| publish(witness, &authority, a);
        let e1 = publish(&mut witness, &artifact(&vf, 1));
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
        let client =
            VaultClient::with_verifier(vf.endpoints(), 1, verifier, Arc::new(|| NOW), cfg())
                .expect("the OS RNG");
        // No bundle served yet: the client refuses every reply.
        assert!(matches!(
            client.register(b"quinn", CODE, SECRET),
            Err(VaultClientError::BadReply {
                cause: ReplyError::NoBundle,
                ..
            })
        ));
        for s in vf.services.values() {
            s.serve(e1.clone());
        }
        assert_matches!(client.register(b"quinn", CODE, SECRET), Ok(1));
        assert_eq!(client.recover(b"quinn", CODE).unwrap().as_slice(), SECRET);
        assert_eq!(client.fleet_epoch(), Some(1));
        // Rotation: the fleet serves epoch 2; the client moves forward.
        let e2 = publish(&mut witness, &artifact(&vf, 2));
        for s in vf.services.values() {
            s.serve(e2.clone());
        }
        assert_eq!(client.recover(b"quinn", CODE).unwrap().as_slice(), SECRET);
        assert_eq!(client.fleet_epoch(), Some(2));
        // A bundle from a witness the client does not pin: refused.
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
        let forged_bundle = {
            let a = artifact(&vf, 3);
            let w = rogue.sign(NS, 1, a.digest().unwrap(), NOW).unwrap();
            let tree = rogue.tree(NS).unwrap();
            let proof = tree.inclusion_proof(0, 1).unwrap();
            Bundle::assemble(
                a.encode().unwrap(),
                &w,
                [0; 64],
                proof,
                &rogue.checkpoint(NS, NOW).unwrap(),
            )
            .encode()
            .unwrap()
        };
        let forged = BundleSource::new(forged_bundle, rogue.tree(NS).unwrap().clone()).unwrap();
        for s in vf.services.values() {
            s.serve(forged.clone());
        }
        // The bundle's own typed error is kept as the cause.
        assert!(matches!(
            client.recover(b"quinn", CODE),
            Err(VaultClientError::BadReply {
                cause: ReplyError::Bundle(_),
                ..
            })
        ));
    }
}

/// Issue 13's findings: each test alters *requests* on the way, as a network
/// attacker does, and checks what the honest user ends up with.
mod findings {
    use super::*;
    use std::sync::Mutex;
    use vaultfleet_vault::wire::{VaultLoginPurpose, VaultRegisterFinish, VaultRegisterStart};
    use vaultfleet_vault::ClientRegistrationFlow;

    fn decode_request(bytes: &[u8]) -> VaultClientRequest {
        vaultfleet::wire::decode(bytes, "request").expect("the client's request decodes")
    }

    fn encode(r: &VaultClientRequest) -> Vec<u8> {
        vaultfleet::wire::encode_bounded(r)
    }

    /// An intermediary between the client and one service that rewrites
    /// requests with `rewrite` (which returns `None` to pass them on unchanged).
    struct Rewriter<F> {
        inner: Arc<Service>,
        rewrite: F,
    }

    impl<F> VaultEndpoint for Rewriter<F>
    where
        F: Fn(&Service, &mut VaultClientRequest) -> bool + Send + Sync,
    {
        fn replica(&self) -> u64 {
            self.inner.replica()
        }

        fn call(&self, request: &[u8]) -> Result<Vec<u8>, vaultfleet_vault::Unreachable> {
            let mut r = decode_request(request);
            if (self.rewrite)(&self.inner, &mut r) {
                return self.inner.call(&encode(&r));
            }
            self.inner.call(request)
        }
    }

    fn rewriting<F>(vf: &VaultFleet, rewrite: F) -> Vec<Arc<dyn VaultEndpoint>>
    where
        F: Fn(&Service, &mut VaultClientRequest) -> bool + Send + Sync + Clone + 'static,
    {
        vf.services
            .values()
            .map(|s| {
                Arc::new(Rewriter {
                    inner: Arc::clone(s),
                    rewrite: rewrite.clone(),
                }) as Arc<dyn VaultEndpoint>
            })
            .collect()
    }

    #[test]
    fn finding_1_a_registration_rewritten_to_255_attempts_never_succeeds() {
        let vf = VaultFleet::start(3, Store::Mem);
        // Every RegisterFinish rewritten to 255 attempts: the client must report
        // an error, and the fleet must hold no registration.
        let always = rewriting(&vf, |_, r| match r.op.as_mut() {
            Some(vault_client_request::Op::RegisterFinish(f)) => {
                f.max_attempts = 255;
                true
            }
            _ => false,
        });
        let client = vf.client_of(always);
        let result = client.register_with_limit(b"rita", CODE, SECRET, 3);
        assert_matches!(
            result,
            Err(VaultClientError::BadReply {
                cause: ReplyError::OtherRequest,
                ..
            }),
            "a rewritten registration is never reported as a success"
        );
        assert_eq!(vf.view(b"rita"), None, "nothing was registered");
        // Only the first RegisterFinish rewritten (the client's retry carries
        // its original bytes): whatever the client reports, the fleet holds
        // exactly the limit the user chose.
        let tampered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let once = rewriting(&vf, move |_, r| match r.op.as_mut() {
            Some(vault_client_request::Op::RegisterFinish(f))
                if !tampered.swap(true, std::sync::atomic::Ordering::SeqCst) =>
            {
                f.max_attempts = 255;
                true
            }
            _ => false,
        });
        let client = vf.client_of(once);
        let result = client.register_with_limit(b"rita", CODE, SECRET, 3);
        match vf.view(b"rita") {
            Some(UserView::Registered { attempts_left, .. }) => {
                assert_matches!(result, Ok(1));
                assert_eq!(attempts_left, 3, "the user's own limit, not the attacker's");
            }
            other => {
                assert!(result.is_err(), "success reported for {other:?}");
            }
        }
        for left in (0..3).rev() {
            assert_matches!(
                vf.client().recover(b"rita", WRONG),
                Err(VaultClientError::WrongCode { attempts_left }) if attempts_left == left
            );
        }
        assert_eq!(vf.view(b"rita"), Some(UserView::Locked { generation: 1 }));
    }

    #[test]
    fn finding_1_a_registration_rewritten_to_another_secret_never_succeeds() {
        let vf = VaultFleet::start(3, Store::Mem);
        let always = rewriting(&vf, |_, r| match r.op.as_mut() {
            Some(vault_client_request::Op::RegisterFinish(f)) => {
                f.secret = b"the attacker's key".to_vec();
                true
            }
            _ => false,
        });
        assert!(vf
            .client_of(always)
            .register(b"sybil", CODE, SECRET)
            .is_err());
        assert_eq!(vf.view(b"sybil"), None);
    }

    /// Rewrites every RECOVER finalization to `purpose`; for a re-registration
    /// it puts in the attacker's own registration request and, when the fleet
    /// answers it, finishes the replacement with the attacker's code and secret.
    fn hijack(
        purpose: VaultLoginPurpose,
    ) -> impl Fn(&Service, &mut VaultClientRequest) -> bool + Send + Sync + Clone + 'static {
        const ATTACKER_CODE: &[u8] = b"the attacker's code";
        let flow = Arc::new(Mutex::new(None::<ClientRegistrationFlow>));
        move |service: &Service, r: &mut VaultClientRequest| {
            let Some(vault_client_request::Op::LoginFinish(f)) = r.op.as_mut() else {
                return false;
            };
            f.purpose = purpose.into();
            if purpose != VaultLoginPurpose::VAULT_REREGISTER_START {
                return true;
            }
            use rand::SeedableRng;
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(66);
            let attacker = ClientRegistrationFlow::start_with_insecure_rng(&mut rng, ATTACKER_CODE)
                .expect("flow");
            f.registration_request = attacker.request().to_vec();
            f.max_attempts = 255;
            *flow.lock().unwrap() = Some(attacker);
            // Send it ourselves, and on a proven login finish the replacement.
            let reply = body(&service.call(&encode(r)).expect("up"));
            if reply.login != 0 && !reply.registration_response.is_empty() {
                let attacker = flow.lock().unwrap().take().expect("flow");
                let upload = attacker
                    .finish_with_insecure_rng(
                        &mut rng,
                        ATTACKER_CODE,
                        &reply.registration_response,
                        &KsfParams::TESTS_ONLY,
                    )
                    .expect("upload");
                let mut finish = VaultRegisterFinish::new();
                finish.user = b"trent".to_vec();
                finish.registration_upload = upload;
                finish.credential_nonce = reply.credential_nonce;
                finish.nonce_tag = reply.nonce_tag;
                finish.secret = b"the attacker's key".to_vec();
                finish.max_attempts = 255;
                finish.login = reply.login;
                let mut req = VaultClientRequest::new();
                let mut id = VaultRequestId::new();
                id.client = 666;
                id.sequence = reply.login;
                req.request = Some(id).into();
                req.op = Some(vault_client_request::Op::RegisterFinish(finish));
                service.call(&encode(&req)).expect("up");
            }
            true
        }
    }

    #[test]
    fn finding_2_a_recovery_rewritten_to_delete_or_reregister_is_refused() {
        for purpose in [
            VaultLoginPurpose::VAULT_DELETE,
            VaultLoginPurpose::VAULT_REREGISTER_START,
        ] {
            let vf = VaultFleet::start(3, Store::Mem);
            vf.client()
                .register(b"trent", CODE, SECRET)
                .expect("register");
            let result = vf
                .client_of(rewriting(&vf, hijack(purpose)))
                .recover(b"trent", CODE);
            assert!(result.is_err(), "{purpose:?}: {result:?}");
            // The record is the user's, unchanged: same generation, same code,
            // same secret; the attacker's code opens nothing.
            assert_matches!(
                vf.view(b"trent"),
                Some(UserView::Registered { generation: 1, .. }),
                "{purpose:?}"
            );
            assert_eq!(
                vf.client()
                    .recover(b"trent", CODE)
                    .expect("recover")
                    .as_slice(),
                SECRET,
                "{purpose:?}"
            );
            assert_eq!(attempts_left(&vf, b"trent"), 10, "{purpose:?}");
            assert_matches!(
                vf.client().recover(b"trent", b"the attacker's code"),
                Err(VaultClientError::WrongCode { attempts_left: 9 }),
                "{purpose:?}"
            );
        }
    }

    #[test]
    fn finding_2_a_reregistration_rewritten_on_the_way_is_refused() {
        let vf = VaultFleet::start(3, Store::Mem);
        vf.client()
            .register(b"uma", CODE, SECRET)
            .expect("register");
        // The re-registration's RegisterFinish with the attacker's limit.
        let limit = rewriting(&vf, |_, r| match r.op.as_mut() {
            Some(vault_client_request::Op::RegisterFinish(f)) if f.login != 0 => {
                f.max_attempts = 255;
                true
            }
            _ => false,
        });
        let result = vf
            .client_of(limit)
            .reregister(b"uma", CODE, b"new code", b"new secret", 5);
        assert!(result.is_err(), "{result:?}");
        assert_matches!(
            vf.view(b"uma"),
            Some(UserView::Registered { generation: 1, .. })
        );
        // The new registration request and limit in the LoginFinish.
        let request = rewriting(&vf, |_, r| match r.op.as_mut() {
            Some(vault_client_request::Op::LoginFinish(f)) => {
                f.max_attempts = 255;
                true
            }
            _ => false,
        });
        let result = vf
            .client_of(request)
            .reregister(b"uma", CODE, b"new code", b"new secret", 5);
        assert_matches!(
            result,
            Err(VaultClientError::BadReply {
                cause: ReplyError::OtherRequest,
                ..
            })
        );
        assert_matches!(
            vf.view(b"uma"),
            Some(UserView::Registered { generation: 1, .. })
        );
        assert_eq!(
            vf.client()
                .recover(b"uma", CODE)
                .expect("recover")
                .as_slice(),
            SECRET
        );
        // Unaltered, it works and reports the new generation.
        assert_matches!(
            vf.client()
                .reregister(b"uma", CODE, b"new code", b"new secret", 5),
            Ok(2)
        );
    }

    /// A service whose replies are re-signed with its own response key after
    /// `alter` changed the body: a compromised service, or a bug, that reports
    /// something else than what the client asked for.
    struct Misreporting<F> {
        inner: Arc<Service>,
        server: VaultServer<SoftHsm>,
        alter: F,
    }

    impl<F> VaultEndpoint for Misreporting<F>
    where
        F: Fn(&VaultClientRequest, &mut VaultReplyBody) + Send + Sync,
    {
        fn replica(&self) -> u64 {
            self.inner.replica()
        }

        fn call(&self, request: &[u8]) -> Result<Vec<u8>, vaultfleet_vault::Unreachable> {
            let reply = self.inner.call(request)?;
            let mut b = body(&reply);
            (self.alter)(&decode_request(request), &mut b);
            Ok(self.server.sign(b).expect("sign"))
        }
    }

    fn misreporting<F>(vf: &VaultFleet, alter: F) -> Vec<Arc<dyn VaultEndpoint>>
    where
        F: Fn(&VaultClientRequest, &mut VaultReplyBody) + Send + Sync + Clone + 'static,
    {
        vf.services
            .iter()
            .map(|(&id, s)| {
                let keys =
                    VaultKeys::open(vf.world.clone(), &vf.sealed_setup, 1, id).expect("keys");
                Arc::new(Misreporting {
                    inner: Arc::clone(s),
                    server: VaultServer::new(keys),
                    alter: alter.clone(),
                }) as Arc<dyn VaultEndpoint>
            })
            .collect()
    }

    #[test]
    fn finding_1_and_2_the_client_refuses_a_reply_that_does_not_confirm_what_it_asked() {
        use vaultfleet_vault::Mismatch;
        let vf = VaultFleet::start(3, Store::Mem);
        let is_finish = |r: &VaultClientRequest| {
            matches!(r.op, Some(vault_client_request::Op::RegisterFinish(_)))
        };
        let limit = misreporting(&vf, move |r, b| {
            if is_finish(r) {
                b.max_attempts = 255;
            }
        });
        assert_matches!(
            vf.client_of(limit)
                .register_with_limit(b"zed", CODE, SECRET, 3),
            Err(VaultClientError::NotConfirmed(Mismatch::MaxAttempts {
                stored: 255,
                asked: 3
            }))
        );
        let tag = misreporting(&vf, move |r, b| {
            if is_finish(r) {
                b.registration_tag = vec![0; 32];
            }
        });
        assert_matches!(
            vf.client_of(tag).register(b"zoe", CODE, SECRET),
            Err(VaultClientError::NotConfirmed(Mismatch::Registration))
        );
        let purpose = misreporting(&vf, |r, b| {
            if matches!(r.op, Some(vault_client_request::Op::LoginFinish(_))) {
                b.purpose = VaultLoginPurpose::VAULT_DELETE.into();
            }
        });
        assert_matches!(
            vf.client_of(purpose).recover(b"zoe", CODE),
            Err(VaultClientError::NotConfirmed(Mismatch::Purpose))
        );
        let generation = misreporting(&vf, move |r, b| {
            if is_finish(r) {
                b.generation = 1;
            }
        });
        assert_matches!(
            vf.client_of(generation)
                .reregister(b"zoe", CODE, b"new", b"new secret", 4),
            Err(VaultClientError::NotConfirmed(Mismatch::Generation {
                new: 1,
                login: 1
            }))
        );
    }

    /// Records every request and answers none (the client then gives up).
    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<Vec<u8>>>,
    }

    impl VaultEndpoint for Recorder {
        fn replica(&self) -> u64 {
            1
        }

        fn call(&self, request: &[u8]) -> Result<Vec<u8>, vaultfleet_vault::Unreachable> {
            self.seen.lock().unwrap().push(request.to_vec());
            Err(vaultfleet_vault::Unreachable { replica: 1 })
        }
    }

    /// The first request a client sends for `recover`: its id and OPAQUE
    /// credential request (which carries the blinded code).
    fn first_login(client: &VaultClient, recorder: &Recorder) -> (u64, Vec<u8>) {
        assert!(client.recover(b"wendy", CODE).is_err());
        let seen = recorder.seen.lock().unwrap();
        let r = decode_request(seen.last().expect("a request was sent"));
        let Some(vault_client_request::Op::LoginStart(s)) = r.op else {
            panic!("not a login: {r:?}")
        };
        (r.request.client, s.credential_request)
    }

    #[test]
    fn finding_3_clients_built_normally_draw_their_blinds_from_the_os() {
        use vaultfleet_audit::{FleetVerifier, WitnessKey};
        let config = VaultClientConfig {
            rounds: 1,
            login_restarts: 1,
            ..cfg()
        };
        let mut firsts = Vec::new();
        for _ in 0..2 {
            let recorder = Arc::new(Recorder::default());
            let endpoints = vec![Arc::clone(&recorder) as Arc<dyn VaultEndpoint>];
            // The constructor that trusts bundles (it took a u64 seed), and the
            // one that pins keys.
            let verifier = FleetVerifier::new(
                "ns",
                vec![WitnessKey {
                    name: "witness".into(),
                    public_key: [1; 32],
                    not_before: 0,
                }],
                [2; 32],
            );
            let bundles =
                VaultClient::with_verifier(endpoints.clone(), 1, verifier, Arc::new(|| 0), config)
                    .expect("the OS RNG");
            firsts.push(first_login(&bundles, &recorder));
            let pinned = VaultClient::new(endpoints, VaultPublicKeys::default(), config)
                .expect("the OS RNG");
            firsts.push(first_login(&pinned, &recorder));
        }
        for (i, a) in firsts.iter().enumerate() {
            for b in &firsts[i + 1..] {
                assert_ne!(a.0, b.0, "two clients share a client id");
                assert_ne!(
                    a.1, b.1,
                    "two clients' blinded codes are equal: a fixed seed"
                );
            }
        }
    }

    #[test]
    fn finding_low_a_request_without_a_request_id_is_refused() {
        let vf = VaultFleet::start(3, Store::Mem);
        vf.client()
            .register(b"xena", CODE, SECRET)
            .expect("register");
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(13);
        let flow = ClientLoginFlow::start_with_insecure_rng(&mut rng, WRONG).expect("login");
        let mut start = VaultLoginStart::new();
        start.user = b"xena".to_vec();
        start.credential_request = flow.request().to_vec();
        let mut r = VaultClientRequest::new();
        r.op = Some(vault_client_request::Op::LoginStart(start));
        let reply = body(&vf.services[&1].call(&encode(&r)).expect("up"));
        assert_eq!(
            (reply.status.enum_value(), reply.detail.as_str()),
            (
                Ok(VaultReplyStatus::REPLY_BAD_REQUEST),
                "request has no request id"
            )
        );
        assert!(reply.credential_response.is_empty());
        assert_eq!(
            attempts_left(&vf, b"xena"),
            10,
            "no attempt spent under id (0, 0)"
        );
        let mut start = VaultRegisterStart::new();
        start.user = b"yara".to_vec();
        start.registration_request = vec![1; 32];
        r.op = Some(vault_client_request::Op::RegisterStart(start));
        let reply = body(&vf.services[&1].call(&encode(&r)).expect("up"));
        assert_eq!(reply.detail, "request has no request id");
    }
}

/// The start of issue 13's request-tampering harness: every field of every
/// request type, enumerated by protobuf reflection, rewritten on the way (every
/// time, or only the first time), while an honest user registers, recovers and
/// re-registers. A field added later without a line in `FIELDS` fails the test.
mod tampering_harness {
    use super::*;
    use protobuf::reflect::{ReflectValueBox, ReflectValueRef};
    use protobuf::{MessageDyn, MessageFull};
    use std::sync::atomic::{AtomicBool, Ordering};
    use vaultfleet_vault::wire::{
        VaultLoginFinish, VaultRegisterFinish, VaultRegisterStart, VaultRequestId,
    };

    /// Every field of every request type, with what an attacker gains by
    /// rewriting it (checked by the harness; the list must name every field).
    const FIELDS: &[(&str, &[&str])] = &[
        (
            "VaultRegisterStart",
            &[
                "user",
                "registration_request",
                "max_attempts",
                "secret_digest",
            ],
        ),
        (
            "VaultRegisterFinish",
            &[
                "user",
                "registration_upload",
                "credential_nonce",
                "secret",
                "max_attempts",
                "nonce_tag",
                "login",
                "intent_tag",
                "issued_generation",
            ],
        ),
        ("VaultLoginStart", &["user", "credential_request"]),
        (
            "VaultLoginFinish",
            &[
                "login",
                "credential_finalization",
                "purpose",
                "registration_request",
                "intent_tag",
                "max_attempts",
                "secret_digest",
            ],
        ),
        ("VaultRequestId", &["client", "sequence"]),
        // The envelope's own scalar fields; its message fields are the entries
        // above.
        ("VaultClientRequest", &["known_checkpoint_size"]),
    ];

    /// A first registration's upload is authenticated by nothing the fleet can
    /// check (no session exists yet, and the transport is not authenticated):
    /// rewritten, it stores a record no code opens. The client reports an
    /// error; docs/protocol.md states this denial of service.
    fn known_denial_of_service(message: &str, field: &str) -> bool {
        message == "VaultRegisterFinish" && field == "registration_upload"
    }

    #[test]
    fn every_request_field_is_listed() {
        let descriptors = [
            VaultRegisterStart::descriptor(),
            VaultRegisterFinish::descriptor(),
            VaultLoginStart::descriptor(),
            VaultLoginFinish::descriptor(),
            VaultRequestId::descriptor(),
            VaultClientRequest::descriptor(),
        ];
        for d in descriptors {
            let listed = FIELDS
                .iter()
                .find(|(m, _)| *m == d.name())
                .map(|(_, f)| f.to_vec())
                .unwrap_or_default();
            let mut listed: Vec<&str> = listed;
            // A message-typed field is covered by its own message's entry.
            let mut actual: Vec<String> = d
                .fields()
                .filter(|f| {
                    !matches!(
                        f.runtime_field_type(),
                        protobuf::reflect::RuntimeFieldType::Singular(
                            protobuf::reflect::RuntimeType::Message(_)
                        )
                    )
                })
                .map(|f| f.name().to_string())
                .collect();
            listed.sort_unstable();
            actual.sort_unstable();
            assert_eq!(
                actual,
                listed,
                "{}: a request field without a tamper case",
                d.name()
            );
        }
    }

    /// Rewrites field `field` of `m`, whatever its type.
    fn tamper(m: &mut dyn MessageDyn, field: &str) {
        let d = m.descriptor_dyn();
        let f = d.field_by_name(field).expect("a listed field exists");
        let new = match f.get_singular_field_or_default(&*m) {
            ReflectValueRef::Bytes(&[]) => ReflectValueBox::Bytes(vec![0x41; 32]),
            ReflectValueRef::Bytes(b) => {
                let mut b = b.to_vec();
                if let Some(last) = b.last_mut() {
                    *last ^= 1;
                }
                ReflectValueBox::Bytes(b)
            }
            ReflectValueRef::U32(v) => ReflectValueBox::U32(if v == 255 { 1 } else { 255 }),
            ReflectValueRef::U64(v) => ReflectValueBox::U64(v ^ 1),
            ReflectValueRef::Enum(e, v) => ReflectValueBox::Enum(e, (v + 1) % 3),
            other => panic!("{field}: no tamper case for {other:?}"),
        };
        f.set_singular_field(m, new);
    }

    struct Tampering {
        inner: Arc<Service>,
        message: &'static str,
        field: &'static str,
        once: bool,
        done: AtomicBool,
    }

    impl VaultEndpoint for Tampering {
        fn replica(&self) -> u64 {
            self.inner.replica()
        }

        fn call(&self, request: &[u8]) -> Result<Vec<u8>, vaultfleet_vault::Unreachable> {
            let mut r: VaultClientRequest =
                vaultfleet::wire::decode(request, "request").expect("request");
            let name = match &r.op {
                Some(vault_client_request::Op::RegisterStart(_)) => "VaultRegisterStart",
                Some(vault_client_request::Op::RegisterFinish(_)) => "VaultRegisterFinish",
                Some(vault_client_request::Op::LoginStart(_)) => "VaultLoginStart",
                Some(vault_client_request::Op::LoginFinish(_)) => "VaultLoginFinish",
                _ => "",
            };
            let target = self.message == name
                || self.message == "VaultClientRequest"
                || (self.message == "VaultRequestId" && name == "VaultLoginStart");
            if !target || (self.once && self.done.swap(true, Ordering::SeqCst)) {
                return self.inner.call(request);
            }
            if self.message == "VaultClientRequest" {
                tamper(&mut r, self.field);
                return self.inner.call(&vaultfleet::wire::encode_bounded(&r));
            }
            let m: &mut dyn MessageDyn = match (&mut r.op, self.message) {
                (_, "VaultRequestId") => r.request.mut_or_insert_default(),
                (Some(vault_client_request::Op::RegisterStart(x)), _) => x,
                (Some(vault_client_request::Op::RegisterFinish(x)), _) => x,
                (Some(vault_client_request::Op::LoginStart(x)), _) => x,
                (Some(vault_client_request::Op::LoginFinish(x)), _) => x,
                _ => return self.inner.call(request),
            };
            tamper(m, self.field);
            self.inner.call(&vaultfleet::wire::encode_bounded(&r))
        }
    }

    const NEW_CODE: &[u8] = b"the user's new code";
    const NEW_SECRET: &[u8] = b"the user's new secret";

    /// The honest user's registration as the fleet holds it, checked by
    /// recovering with an untampered client: (generation, attempts left).
    fn check_standing(vf: &VaultFleet, user: &[u8], case: &str) -> u64 {
        let honest = vf.client();
        match vf.view(user) {
            Some(UserView::Registered { generation: 1, .. }) => {
                let s = honest
                    .recover(user, CODE)
                    .unwrap_or_else(|e| panic!("{case}: {e}"));
                assert_eq!(s.as_slice(), SECRET, "{case}");
                assert_eq!(attempts_left(vf, user), 3, "{case}: the user's own limit");
                1
            }
            Some(UserView::Registered { generation: 2, .. }) => {
                let s = honest
                    .recover(user, NEW_CODE)
                    .unwrap_or_else(|e| panic!("{case}: {e}"));
                assert_eq!(s.as_slice(), NEW_SECRET, "{case}");
                assert_eq!(attempts_left(vf, user), 4, "{case}: the user's own limit");
                2
            }
            other => panic!("{case}: the user's registration is {other:?}"),
        }
    }

    #[test]
    fn every_request_field_rewritten_leaves_the_user_what_they_registered() {
        let vf = VaultFleet::start(3, Store::Mem);
        let config = VaultClientConfig {
            rounds: 2,
            login_restarts: 2,
            backoff: Duration::from_millis(1),
            ..cfg()
        };
        let mut cases = 0;
        for &(message, fields) in FIELDS {
            for &field in fields {
                for once in [false, true] {
                    cases += 1;
                    let case = format!("{message}.{field} (once: {once})");
                    let user = format!("h{cases}x").into_bytes();
                    let endpoints: Vec<Arc<dyn VaultEndpoint>> = vf
                        .services
                        .values()
                        .map(|s| {
                            Arc::new(Tampering {
                                inner: Arc::clone(s),
                                message,
                                field,
                                once,
                                done: AtomicBool::new(false),
                            }) as Arc<dyn VaultEndpoint>
                        })
                        .collect();
                    let client =
                        VaultClient::new(endpoints, vf.keys.clone(), config).expect("the OS RNG");
                    // Register: success means exactly what was asked.
                    match client.register_with_limit(&user, CODE, SECRET, 3) {
                        Ok(g) => assert_eq!(g, 1, "{case}"),
                        Err(_) if known_denial_of_service(message, field) => continue,
                        Err(_) => {}
                    }
                    if vf.view(&user).is_none() {
                        vf.client()
                            .register_with_limit(&user, CODE, SECRET, 3)
                            .unwrap_or_else(|e| panic!("{case}: {e}"));
                    }
                    assert_eq!(check_standing(&vf, &user, &case), 1);
                    // Recover: never changes the registration.
                    if let Ok(s) = client.recover(&user, CODE) {
                        assert_eq!(s.as_slice(), SECRET, "{case}");
                    }
                    assert_eq!(
                        check_standing(&vf, &user, &case),
                        1,
                        "a recovery changed it"
                    );
                    // Re-register: the old one or exactly the new one, never another.
                    let result = client.reregister(&user, CODE, NEW_CODE, NEW_SECRET, 4);
                    let standing = check_standing(&vf, &user, &case);
                    if let Ok(g) = result {
                        assert_eq!((g, standing), (2, 2), "{case}");
                    }
                }
            }
        }
        assert!(cases >= 40, "{cases} cases");
    }
}

/// The adversarial review of issue 13's request binding (slice V2): each test
/// is named after the review's finding it covers.
mod review {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    use vaultfleet_vault::wire::{VaultLoginFinish, VaultLoginPurpose, VaultRegisterFinish};
    use vaultfleet_vault::{
        authenticate_request, registration_secret_digest, ClientRegistrationFlow, LoginOpened,
        Rejection, Uncertain,
    };

    /// The seed of every seeded flow below; printed by each assertion.
    const SEED: u64 = 0x5eed_0013;

    fn rng(salt: u64) -> rand_chacha::ChaCha20Rng {
        <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(SEED ^ salt)
    }

    fn request(client: u64, sequence: u64, op: vault_client_request::Op) -> VaultClientRequest {
        let mut id = VaultRequestId::new();
        id.client = client;
        id.sequence = sequence;
        let mut r = VaultClientRequest::new();
        r.request = Some(id).into();
        r.op = Some(op);
        r
    }

    fn encode(r: &VaultClientRequest) -> Vec<u8> {
        vaultfleet::wire::encode_bounded(r)
    }

    fn status(b: &VaultReplyBody) -> VaultReplyStatus {
        b.status.enum_value_or(VaultReplyStatus::REPLY_OK)
    }

    /// A login started by hand on `service`: its id, its reply, and the
    /// client's opened answer (`None` for a wrong code).
    fn start_login(
        service: &Service,
        user: &[u8],
        code: &[u8],
        client: u64,
        sequence: u64,
    ) -> (VaultReplyBody, Option<LoginOpened>) {
        let flow = ClientLoginFlow::start_with_insecure_rng(&mut rng(client ^ sequence), code)
            .expect("login");
        let mut start = VaultLoginStart::new();
        start.user = user.to_vec();
        start.credential_request = flow.request().to_vec();
        let r = request(
            client,
            sequence,
            vault_client_request::Op::LoginStart(start),
        );
        let b = body(&service.call(&encode(&r)).expect("up"));
        if status(&b) != VaultReplyStatus::REPLY_OK {
            return (b, None);
        }
        let opened = flow
            .finish_with_insecure_rng(
                &mut rng(sequence),
                code,
                &b.credential_response,
                &KsfParams::TESTS_ONLY,
            )
            .expect("finish");
        (b, opened)
    }

    /// The client's authenticated `LoginFinish` for login `login`.
    fn finish(
        user: &[u8],
        login: u64,
        opened: &LoginOpened,
        purpose: VaultLoginPurpose,
        client: u64,
        sequence: u64,
        edit: impl FnOnce(&mut VaultLoginFinish),
    ) -> VaultClientRequest {
        let mut f = VaultLoginFinish::new();
        f.login = login;
        f.credential_finalization = opened.finalization.clone();
        f.purpose = purpose.into();
        edit(&mut f);
        let mut r = request(client, sequence, vault_client_request::Op::LoginFinish(f));
        authenticate_request(
            1,
            &UserId::new(user).expect("user"),
            &opened.session_key,
            &mut r,
        );
        r
    }

    /// Withholds (captures, and answers nothing to) every request `holds`
    /// picks while `withhold` is set; passes everything else on.
    struct Withholder {
        inner: Arc<Service>,
        withhold: AtomicBool,
        holds: fn(&VaultClientRequest) -> bool,
        captured: Mutex<Vec<Vec<u8>>>,
    }

    impl VaultEndpoint for Withholder {
        fn replica(&self) -> u64 {
            self.inner.replica()
        }

        fn call(&self, request: &[u8]) -> Result<Vec<u8>, vaultfleet_vault::Unreachable> {
            let r: VaultClientRequest =
                vaultfleet::wire::decode(request, "request").expect("request");
            if self.withhold.load(Ordering::SeqCst) && (self.holds)(&r) {
                self.captured.lock().unwrap().push(request.to_vec());
                return Err(vaultfleet_vault::Unreachable {
                    replica: self.inner.replica(),
                });
            }
            self.inner.call(request)
        }
    }

    /// A withholder in front of replica 1's service, on from the start.
    fn withholding(vf: &VaultFleet, holds: fn(&VaultClientRequest) -> bool) -> Arc<Withholder> {
        Arc::new(Withholder {
            inner: Arc::clone(&vf.services[&1]),
            withhold: AtomicBool::new(true),
            holds,
            captured: Mutex::new(Vec::new()),
        })
    }

    /// Every `RegisterFinish`.
    fn register_finishes(r: &VaultClientRequest) -> bool {
        matches!(r.op, Some(vault_client_request::Op::RegisterFinish(_)))
    }

    /// Every finish that changes the fleet's record: a delete's login finish, a
    /// re-registration's upload.
    fn record_changes(r: &VaultClientRequest) -> bool {
        match &r.op {
            Some(vault_client_request::Op::LoginFinish(f)) => {
                f.purpose.enum_value_or(VaultLoginPurpose::VAULT_RECOVER)
                    == VaultLoginPurpose::VAULT_DELETE
            }
            Some(vault_client_request::Op::RegisterFinish(f)) => f.login != 0,
            _ => false,
        }
    }

    #[test]
    fn review_f1_a_withheld_registration_replayed_after_a_delete_is_stale() {
        let vf = VaultFleet::start(3, Store::Mem);
        let withholder = withholding(&vf, register_finishes);
        let client = vf.client_of(vec![Arc::clone(&withholder) as Arc<dyn VaultEndpoint>]);
        // The first registration's finish never arrives: the client errors.
        assert_matches!(
            client.register(b"yuri", b"old code", b"old secret"),
            Err(VaultClientError::Unavailable(_))
        );
        let captured = withholder.captured.lock().unwrap().clone();
        assert!(!captured.is_empty());
        // The user tries again and succeeds, then deletes.
        withholder.withhold.store(false, Ordering::SeqCst);
        assert_eq!(client.register(b"yuri", CODE, SECRET).expect("register"), 1);
        client.delete(b"yuri", CODE).expect("delete");
        assert_eq!(vf.view(b"yuri"), None, "deleted");
        // The attacker replays the withheld finish: stale, the user stays deleted.
        for bytes in &captured {
            let b = body(&vf.services[&2].call(bytes).expect("up"));
            assert_eq!(
                status(&b),
                VaultReplyStatus::REPLY_REGISTRATION_STALE,
                "{b:?}"
            );
        }
        assert_eq!(vf.view(b"yuri"), None, "the old registration came back");
        assert_matches!(
            client.recover(b"yuri", b"old code"),
            Err(VaultClientError::NotRegistered)
        );
        // The same with a re-registration's issue point: a new registration
        // works, and the typed client error for a stale one exists.
        assert_eq!(client.register(b"yuri", CODE, SECRET).expect("again"), 2);
        let _ = Rejection::RegistrationStale;
    }

    #[test]
    fn review_f2_redelivered_login_starts_keep_one_login_and_evict_nobody() {
        let vf = VaultFleet::start(3, Store::Mem);
        let client = vf.client();
        client.register(b"alice", CODE, SECRET).expect("alice");
        client.register(b"bob", CODE, SECRET).expect("bob");
        let service = &vf.services[&1];
        // Bob's honest login waits for its finalization.
        let (bob, bob_opened) = start_login(service, b"bob", CODE, 2, 1);
        let bob_opened = bob_opened.expect("bob's right code opens");
        assert_eq!(service.pending_logins(), 1);
        // The same LoginStart of alice's, delivered 50 times: one attempt, one
        // login, the same answer every time.
        let flow = ClientLoginFlow::start_with_insecure_rng(&mut rng(9), WRONG).expect("login");
        let bytes = login_start(b"alice", &flow, 1);
        let first = body(&service.call(&bytes).expect("up"));
        assert_eq!(status(&first), VaultReplyStatus::REPLY_OK, "seed {SEED}");
        for _ in 0..49 {
            let again = body(&service.call(&bytes).expect("up"));
            assert_eq!(
                (again.login, &again.credential_response),
                (first.login, &first.credential_response),
                "seed {SEED}: a re-delivery made another login"
            );
        }
        assert_eq!(service.pending_logins(), 2, "seed {SEED}");
        assert_eq!(attempts_left(&vf, b"alice"), 9);
        // Alice's own logins are capped per user, refused *before* spending.
        let cap = VaultServiceConfig::default().logins_per_user_max as u64;
        for sequence in 2..=cap {
            let b = body(
                &service
                    .call(&login_start(b"alice", &flow, sequence))
                    .expect("up"),
            );
            assert_eq!(status(&b), VaultReplyStatus::REPLY_OK, "seed {SEED}");
        }
        let spent = attempts_left(&vf, b"alice");
        let b = body(
            &service
                .call(&login_start(b"alice", &flow, cap + 1))
                .expect("up"),
        );
        assert_eq!(status(&b), VaultReplyStatus::REPLY_BUSY, "seed {SEED}");
        assert_eq!(
            attempts_left(&vf, b"alice"),
            spent,
            "a refusal spent nothing"
        );
        // Bob's login was never evicted: it finishes.
        let r = finish(
            b"bob",
            bob.login,
            &bob_opened,
            VaultLoginPurpose::VAULT_RECOVER,
            2,
            2,
            |_| {},
        );
        let b = body(&service.call(&encode(&r)).expect("up"));
        assert_eq!(status(&b), VaultReplyStatus::REPLY_OK, "seed {SEED}: {b:?}");
    }

    #[test]
    fn review_f3_altered_copies_never_take_the_genuine_login() {
        let vf = VaultFleet::start(3, Store::Mem);
        let client = vf.client();
        client.register(b"carol", CODE, SECRET).expect("register");
        let service = &vf.services[&1];
        let (started, opened) = start_login(service, b"carol", CODE, 3, 1);
        let opened = opened.expect("right code");
        let genuine = finish(
            b"carol",
            started.login,
            &opened,
            VaultLoginPurpose::VAULT_DELETE,
            3,
            2,
            |_| {},
        );
        // The request id altered on a DELETE finish: not authentic.
        let mut other_id = genuine.clone();
        other_id.request.as_mut().expect("id").sequence ^= 1;
        let b = body(&service.call(&encode(&other_id)).expect("up"));
        assert_eq!(status(&b), VaultReplyStatus::REPLY_INTENT_NOT_AUTHENTIC);
        // A finalization that does not verify: refused, the login stays.
        let mut garbage = genuine.clone();
        if let Some(vault_client_request::Op::LoginFinish(f)) = garbage.op.as_mut() {
            f.credential_finalization = vec![7; 64];
        }
        for _ in 0..5 {
            let b = body(&service.call(&encode(&garbage)).expect("up"));
            assert_eq!(status(&b), VaultReplyStatus::REPLY_LOGIN_FAILED);
        }
        assert_matches!(vf.view(b"carol"), Some(UserView::Registered { .. }));
        let b = body(&service.call(&encode(&genuine)).expect("up"));
        assert_eq!(status(&b), VaultReplyStatus::REPLY_OK, "{b:?}");
        assert_eq!(vf.view(b"carol"), None, "deleted as asked");

        // A re-registration: its RegisterFinish altered (nonce tag, user) never
        // drops the proven login; the genuine one then replaces the record.
        client.register(b"dave", CODE, SECRET).expect("register");
        let user = UserId::new(&b"dave"[..]).expect("user");
        let (started, opened) = start_login(service, b"dave", CODE, 4, 1);
        let opened = opened.expect("right code");
        let new_flow = ClientRegistrationFlow::start_with_insecure_rng(&mut rng(4), b"new code")
            .expect("flow");
        let digest = registration_secret_digest(&user, b"new secret");
        let r = finish(
            b"dave",
            started.login,
            &opened,
            VaultLoginPurpose::VAULT_REREGISTER_START,
            4,
            2,
            |f| {
                f.registration_request = new_flow.request().to_vec();
                f.max_attempts = 5;
                f.secret_digest = digest.to_vec();
            },
        );
        let proven = body(&service.call(&encode(&r)).expect("up"));
        assert_eq!(status(&proven), VaultReplyStatus::REPLY_OK, "{proven:?}");
        let upload = new_flow
            .finish_with_insecure_rng(
                &mut rng(5),
                b"new code",
                &proven.registration_response,
                &KsfParams::TESTS_ONLY,
            )
            .expect("upload");
        let mut f = VaultRegisterFinish::new();
        f.user = b"dave".to_vec();
        f.registration_upload = upload;
        f.credential_nonce = proven.credential_nonce.clone();
        f.nonce_tag = proven.nonce_tag.clone();
        f.secret = b"new secret".to_vec();
        f.max_attempts = 5;
        f.login = proven.login;
        f.issued_generation = proven.generation;
        let mut genuine = request(4, 3, vault_client_request::Op::RegisterFinish(f));
        authenticate_request(1, &user, &opened.session_key, &mut genuine);
        let altered = |edit: &dyn Fn(&mut VaultRegisterFinish)| {
            let mut r = genuine.clone();
            if let Some(vault_client_request::Op::RegisterFinish(f)) = r.op.as_mut() {
                edit(f);
            }
            r
        };
        let nonce_tag = altered(&|f| f.nonce_tag[0] ^= 1);
        let b = body(&service.call(&encode(&nonce_tag)).expect("up"));
        assert_eq!(status(&b), VaultReplyStatus::REPLY_INTENT_NOT_AUTHENTIC);
        let other_user = altered(&|f| f.user = b"carol".to_vec());
        let b = body(&service.call(&encode(&other_user)).expect("up"));
        assert_eq!(status(&b), VaultReplyStatus::REPLY_BAD_REQUEST);
        let b = body(&service.call(&encode(&genuine)).expect("up"));
        assert_eq!(
            (status(&b), b.generation, b.max_attempts),
            (VaultReplyStatus::REPLY_OK, 2, 5),
            "{b:?}"
        );
        assert_eq!(
            client
                .recover(b"dave", b"new code")
                .expect("recover")
                .as_slice(),
            b"new secret"
        );
    }

    #[test]
    fn review_f4_commands_need_a_verified_login_of_their_purpose() {
        use vaultfleet::StateMachine;
        use vaultfleet_vault::{Registration, RegistrationTerms, VaultError};
        let hsm = SoftHsm::from_seed(SEED);
        let sealed = VaultKeys::provision(&hsm).expect("provision");
        let server = VaultServer::new(VaultKeys::open(hsm, &sealed, 1, 1).expect("keys"));
        let user = UserId::new(&b"erin"[..]).expect("user");
        let mut vault = BackupVault::new();
        let flow =
            ClientRegistrationFlow::start_with_insecure_rng(&mut rng(1), CODE).expect("flow");
        let digest = registration_secret_digest(&user, SECRET);
        let started = server
            .registration_start(
                &user,
                flow.request(),
                &RegistrationTerms {
                    max_attempts: 10,
                    secret_digest: &digest,
                    issued_generation: 0,
                },
            )
            .expect("start");
        let upload = flow
            .finish_with_insecure_rng(&mut rng(2), CODE, &started.response, &KsfParams::TESTS_ONLY)
            .expect("upload");
        let mut id = VaultRequestId::new();
        id.client = 1;
        id.sequence = 1;
        vault.apply(
            1,
            &server
                .register_command(
                    &id,
                    &user,
                    &Registration {
                        upload: &upload,
                        nonce: &started.nonce,
                        tag: &started.tag,
                        secret: SECRET,
                        max_attempts: 10,
                        issued_generation: started.issued_generation,
                    },
                )
                .expect("register"),
        );
        let login = ClientLoginFlow::start_with_insecure_rng(&mut rng(3), CODE).expect("login");
        id.sequence = 2;
        let consume = server
            .consume_command(&id, &user, login.request())
            .expect("consume");
        let o: vaultfleet_vault::wire::VaultOutcome =
            vaultfleet::wire::decode(&vault.apply(2, &consume), "outcome").expect("outcome");
        let (pending, response) = server
            .login_respond(
                &user,
                login.request(),
                o.ticket,
                o.record.unwrap(),
                o.erased,
            )
            .expect("respond");
        let opened = login
            .finish_with_insecure_rng(&mut rng(4), CODE, &response, &KsfParams::TESTS_ONLY)
            .expect("finish")
            .expect("right code");
        let delete = finish(
            b"erin",
            0,
            &opened,
            VaultLoginPurpose::VAULT_DELETE,
            1,
            3,
            |_| {},
        );
        // Not authenticated: no verified login at all.
        let mut forged = delete.clone();
        if let Some(vault_client_request::Op::LoginFinish(f)) = forged.op.as_mut() {
            f.purpose = VaultLoginPurpose::VAULT_RECOVER.into();
        }
        assert_matches!(
            server.login_finish(&pending, &forged),
            Err(VaultError::IntentNotAuthentic)
        );
        // Verified for DELETE: it builds a delete, and nothing else.
        let verified = server.login_finish(&pending, &delete).expect("verified");
        assert_matches!(
            server.reset_command(&verified),
            Err(VaultError::PurposeMismatch {
                verified: VaultLoginPurpose::VAULT_DELETE,
                needed: VaultLoginPurpose::VAULT_RECOVER,
            })
        );
        assert_matches!(
            server.replace_command(&delete, &verified),
            Err(VaultError::PurposeMismatch { .. })
        );
        assert_matches!(
            server.reregistration_start(&verified),
            Err(VaultError::PurposeMismatch { .. })
        );
        let command = server.delete_command(&verified).expect("delete");
        vault.apply(3, &command);
        assert_eq!(
            vault.user(b"erin"),
            Some(UserView::Deleted { generation: 1 })
        );
    }

    #[test]
    fn review_f5_the_public_client_flows_draw_from_the_os() {
        // `start` takes no RNG: two flows for one code blind it differently.
        let a = ClientLoginFlow::start(CODE).expect("OS RNG");
        let b = ClientLoginFlow::start(CODE).expect("OS RNG");
        assert_ne!(a.request(), b.request());
        let a = ClientRegistrationFlow::start(CODE).expect("OS RNG");
        let b = ClientRegistrationFlow::start(CODE).expect("OS RNG");
        assert_ne!(a.request(), b.request());
    }

    #[test]
    fn finding_2_an_intent_not_authentic_is_refused_with_its_own_status() {
        let vf = VaultFleet::start(3, Store::Mem);
        vf.client()
            .register(b"vic", CODE, SECRET)
            .expect("register");
        let service = &vf.services[&1];
        let (started, opened) = start_login(service, b"vic", CODE, 6, 1);
        let opened = opened.expect("right code");
        let genuine = finish(
            b"vic",
            started.login,
            &opened,
            VaultLoginPurpose::VAULT_RECOVER,
            6,
            2,
            |_| {},
        );
        let mut flipped = genuine.clone();
        if let Some(vault_client_request::Op::LoginFinish(f)) = flipped.op.as_mut() {
            f.intent_tag[0] ^= 1;
        }
        let b = body(&service.call(&encode(&flipped)).expect("up"));
        assert_eq!(status(&b), VaultReplyStatus::REPLY_INTENT_NOT_AUTHENTIC);
        assert_eq!(
            b.detail,
            "the request's intent tag does not verify under its login's session"
        );
        assert_eq!(attempts_left(&vf, b"vic"), 9, "nothing was acted on");
        // The untampered finish still succeeds, and its secret opens.
        let b = body(&service.call(&encode(&genuine)).expect("up"));
        assert_eq!(status(&b), VaultReplyStatus::REPLY_OK, "{b:?}");
        assert!(!b.encrypted_secret.is_empty());
        assert_eq!(attempts_left(&vf, b"vic"), 10, "forgiven");
    }

    // ---- Mutation tests (issue 13) of the server's checks, on the sans-IO
    // server itself (the service refuses some of these inputs before them).

    /// A server, and a registration started on it for `erin` with `secret`
    /// and `max_attempts` announced: the start and the client's upload.
    fn started_registration(
        secret: &[u8],
        max_attempts: u32,
    ) -> (
        VaultServer<SoftHsm>,
        UserId,
        vaultfleet_vault::RegistrationStarted,
        Vec<u8>,
    ) {
        use vaultfleet_vault::RegistrationTerms;
        let hsm = SoftHsm::from_seed(SEED);
        let sealed = VaultKeys::provision(&hsm).expect("provision");
        let server = VaultServer::new(VaultKeys::open(hsm, &sealed, 1, 1).expect("keys"));
        let user = UserId::new(&b"erin"[..]).expect("user");
        let flow =
            ClientRegistrationFlow::start_with_insecure_rng(&mut rng(1), CODE).expect("flow");
        let digest = registration_secret_digest(&user, secret);
        let started = server
            .registration_start(
                &user,
                flow.request(),
                &RegistrationTerms {
                    max_attempts,
                    secret_digest: &digest,
                    issued_generation: 0,
                },
            )
            .expect("start");
        let upload = flow
            .finish_with_insecure_rng(&mut rng(2), CODE, &started.response, &KsfParams::TESTS_ONLY)
            .expect("upload");
        (server, user, started, upload)
    }

    fn id(sequence: u64) -> VaultRequestId {
        let mut id = VaultRequestId::new();
        id.client = 1;
        id.sequence = sequence;
        id
    }

    #[test]
    fn mutant_server_register_command_checks_the_secret_and_the_nonce_itself() {
        use vaultfleet_vault::{Registration, VaultError, SECRET_MAX};
        // A secret over the limit, announced at the start (so its tag holds):
        // refused for its length, never sealed.
        let long = vec![7u8; SECRET_MAX + 1];
        let (server, user, started, upload) = started_registration(&long, 10);
        let registration = Registration {
            upload: &upload,
            nonce: &started.nonce,
            tag: &started.tag,
            secret: &long,
            max_attempts: 10,
            issued_generation: started.issued_generation,
        };
        assert_matches!(
            server.register_command(&id(1), &user, &registration),
            Err(VaultError::Invalid(InvalidInput::Secret { bytes })) if bytes == SECRET_MAX + 1
        );
        // A nonce of the wrong length: refused for its length.
        let (server, user, started, upload) = started_registration(SECRET, 10);
        let short = &started.nonce[..31];
        let registration = Registration {
            upload: &upload,
            nonce: short,
            tag: &started.tag,
            secret: SECRET,
            max_attempts: 10,
            issued_generation: started.issued_generation,
        };
        assert_matches!(
            server.register_command(&id(1), &user, &registration),
            Err(VaultError::Invalid(InvalidInput::NonceLength { bytes: 31 }))
        );
        // The genuine one builds the command.
        let registration = Registration {
            nonce: &started.nonce,
            ..registration
        };
        assert!(server
            .register_command(&id(1), &user, &registration)
            .is_ok());
    }

    #[test]
    fn mutant_server_registration_start_refuses_a_limit_outside_one_to_the_maximum() {
        use vaultfleet_vault::{RegistrationTerms, VaultError, MAX_ATTEMPTS_LIMIT};
        let (server, user, _, _) = started_registration(SECRET, 10);
        let flow =
            ClientRegistrationFlow::start_with_insecure_rng(&mut rng(5), CODE).expect("flow");
        let digest = registration_secret_digest(&user, SECRET);
        let start = |max_attempts| {
            server.registration_start(
                &user,
                flow.request(),
                &RegistrationTerms {
                    max_attempts,
                    secret_digest: &digest,
                    issued_generation: 0,
                },
            )
        };
        for bad in [0, MAX_ATTEMPTS_LIMIT + 1, MAX_ATTEMPTS_LIMIT + 45] {
            assert_matches!(
                start(bad),
                Err(VaultError::Invalid(InvalidInput::MaxAttempts(m))) if m == bad
            );
        }
        for good in [1, MAX_ATTEMPTS_LIMIT] {
            assert!(start(good).is_ok(), "limit {good}");
        }
    }

    #[test]
    fn mutant_server_login_finish_refuses_a_request_without_an_id() {
        use vaultfleet::StateMachine;
        use vaultfleet_vault::{Registration, VaultError};
        let (server, user, started, upload) = started_registration(SECRET, 10);
        let mut vault = BackupVault::new();
        vault.apply(
            1,
            &server
                .register_command(
                    &id(1),
                    &user,
                    &Registration {
                        upload: &upload,
                        nonce: &started.nonce,
                        tag: &started.tag,
                        secret: SECRET,
                        max_attempts: 10,
                        issued_generation: started.issued_generation,
                    },
                )
                .expect("register"),
        );
        let login = ClientLoginFlow::start_with_insecure_rng(&mut rng(3), CODE).expect("login");
        let consume = server
            .consume_command(&id(2), &user, login.request())
            .expect("consume");
        let o: vaultfleet_vault::wire::VaultOutcome =
            vaultfleet::wire::decode(&vault.apply(2, &consume), "outcome").expect("outcome");
        let (pending, response) = server
            .login_respond(
                &user,
                login.request(),
                o.ticket,
                o.record.unwrap(),
                o.erased,
            )
            .expect("respond");
        let opened = login
            .finish_with_insecure_rng(&mut rng(4), CODE, &response, &KsfParams::TESTS_ONLY)
            .expect("finish")
            .expect("right code");
        let recover = finish(
            b"erin",
            0,
            &opened,
            VaultLoginPurpose::VAULT_RECOVER,
            1,
            3,
            |_| {},
        );
        let mut no_id = recover.clone();
        no_id.request = None.into();
        assert_matches!(
            server.login_finish(&pending, &no_id),
            Err(VaultError::Invalid(InvalidInput::NoRequestId))
        );
        let verified = server.login_finish(&pending, &recover).expect("verified");
        assert_eq!(
            (verified.request().client, verified.request().sequence),
            (1, 3)
        );
    }

    /// Finding R2 (the tampering harness): a delete whose finish an attacker
    /// held back was reported as failed, then applied when the attacker let it
    /// through (within the login's life). The client now says the outcome is
    /// unknown, and the same finish delivered again learns the committed
    /// outcome (it was "no such login" before), never applied twice.
    #[test]
    fn finding_r2_a_withheld_delete_is_of_unknown_outcome_and_a_repeat_learns_it() {
        let vf = VaultFleet::start(3, Store::Mem);
        let w = withholding(&vf, record_changes);
        let client = vf.client_of(vec![Arc::clone(&w) as Arc<dyn VaultEndpoint>]);
        client.register(b"rita", CODE, SECRET).expect("register");
        let e = client.delete(b"rita", CODE).expect_err("withheld");
        assert_matches!(
            e,
            VaultClientError::OutcomeUnknown {
                operation: Uncertain::Delete,
                ..
            }
        );
        assert!(vf.view(b"rita").is_some(), "nothing delivered yet");
        // The attacker lets the first withheld finish through, late.
        let captured = w.captured.lock().unwrap().clone();
        let first = body(&vf.services[&1].call(&captured[0]).expect("up"));
        assert_eq!(status(&first), VaultReplyStatus::REPLY_OK, "{first:?}");
        assert_eq!(vf.view(b"rita"), None, "the late delete applied");
        // The same finish again: the committed outcome, not "no such login".
        let again = body(&vf.services[&1].call(&captured[0]).expect("up"));
        assert_eq!(status(&again), VaultReplyStatus::REPLY_OK, "{again:?}");
        assert_eq!(again.purpose, first.purpose);
        assert_eq!(again.generation, first.generation);
    }

    /// Finding R2 for a re-registration's upload: withheld, it is of unknown
    /// outcome (it was reported as plain unavailability before), and a late
    /// delivery followed by a repeat applies once.
    #[test]
    fn finding_r2_a_withheld_reregistration_is_of_unknown_outcome_and_applies_once() {
        let vf = VaultFleet::start(3, Store::Mem);
        let w = withholding(&vf, record_changes);
        let client = vf.client_of(vec![Arc::clone(&w) as Arc<dyn VaultEndpoint>]);
        assert_eq!(client.register(b"ravi", CODE, SECRET).expect("register"), 1);
        let e = client
            .reregister(b"ravi", CODE, b"new code", b"new secret", 5)
            .expect_err("withheld");
        assert_matches!(
            e,
            VaultClientError::OutcomeUnknown {
                operation: Uncertain::Reregistration,
                ..
            }
        );
        let captured = w.captured.lock().unwrap().clone();
        assert!(!captured.is_empty());
        for _ in 0..2 {
            let b = body(&vf.services[&1].call(&captured[0]).expect("up"));
            assert_eq!(status(&b), VaultReplyStatus::REPLY_OK, "{b:?}");
            assert_eq!(b.generation, 2, "applied once: {b:?}");
        }
        assert_matches!(
            vf.view(b"ravi"),
            Some(UserView::Registered {
                generation: 2,
                attempts_left: 5,
                ..
            })
        );
        w.withhold.store(false, Ordering::SeqCst);
        assert_eq!(
            client
                .recover(b"ravi", b"new code")
                .expect("new code")
                .as_slice(),
            b"new secret"
        );
    }
}
