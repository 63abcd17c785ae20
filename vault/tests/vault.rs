//! The Backup Key Vault end to end: a threaded fleet running `BackupVault`, a
//! `VaultService` beside every node, and `VaultClient`s speaking OPAQUE to them.
// Tests of the threaded runtime run client threads in wall-clock time.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

#[path = "../../tests/harness/mod.rs"]
mod harness;

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

    fn client(&self, seed: u64) -> VaultClient {
        self.client_of(self.endpoints(), seed)
    }

    fn client_of(&self, endpoints: Vec<Arc<dyn VaultEndpoint>>, seed: u64) -> VaultClient {
        VaultClient::with_seed(endpoints, self.keys.clone(), cfg(), seed)
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
    let client = vf.client(1);
    assert_matches!(client.register(b"alice", CODE, SECRET), Ok(1));
    assert_eq!(
        client.recover(b"alice", CODE).expect("recover").as_slice(),
        SECRET
    );
    // Another device of the same user (a new client) recovers too.
    let phone = vf.client(2);
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
    let client = vf.client(3);
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
    let client = vf.client(4);
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
    let flow = ClientLoginFlow::start(&mut rng, CODE).expect("login");
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
    let client = vf.client(9);
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
    vf.client(5)
        .register(b"frank", CODE, SECRET)
        .expect("register");
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
    let flow = ClientLoginFlow::start(&mut rng, WRONG).expect("login");
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
    let other = ClientLoginFlow::start(&mut rng, b"another guess").expect("login");
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
    let client = vf.client(6);
    client.register(b"grace", CODE, SECRET).expect("register");
    let leader = vf.fleet.wait_leader();
    // The leader's service commits the consume of a guess ...
    let keys = VaultKeys::open(vf.world.clone(), &vf.sealed_setup, 1, leader).expect("keys");
    let server = VaultServer::new(keys);
    let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(6);
    let flow = ClientLoginFlow::start(&mut rng, WRONG).expect("login");
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
    let survivors = vf.client(7);
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
    let client = vf.client_of(endpoints, 8);
    assert_eq!(
        client.recover(b"grace", CODE).expect("recover").as_slice(),
        SECRET
    );
    assert_eq!(attempts_left(&vf, b"grace"), 10);
    vf.fleet.restart(leader);
    vf.start_service(leader);
    assert_eq!(
        vf.client(9)
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
    vf.client(10)
        .register(b"heidi", CODE, SECRET)
        .expect("register");
    let vf = Arc::new(vf);
    let wrong: Vec<_> = (0..4)
        .map(|t| {
            let vf = Arc::clone(&vf);
            std::thread::spawn(move || vf.client(100 + t).recover(b"heidi", WRONG))
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
        .map(|t| {
            let vf = Arc::clone(&vf);
            std::thread::spawn(move || vf.client(200 + t).recover(b"heidi", CODE))
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
    let client = vf.client(11);
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
    vf.client(12)
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
    let client = vf.client_of(tampered, 13);
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
    let client = VaultClient::with_seed(vf.endpoints(), wrong_keys, cfg(), 14);
    assert!(matches!(
        client.register(b"mallory", CODE, SECRET),
        Err(VaultClientError::BadReply {
            cause: ReplyError::Signature,
            ..
        })
    ));
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
        let client = vf.client(15);
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
            vf.client(16)
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
    use vaultfleet_vault::{ClientRegistrationFlow, KsfParams};
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
    let flow = ClientRegistrationFlow::start(&mut rng, CODE).expect("flow");
    let mut start = VaultRegisterStart::new();
    start.user = b"oscar".to_vec();
    start.registration_request = flow.request().to_vec();
    let started = body(
        &service
            .call(&request(1, vault_client_request::Op::RegisterStart(start)))
            .expect("up"),
    );
    let upload = flow
        .finish(
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
        vf.client(18)
            .recover(b"oscar", CODE)
            .expect("recover")
            .as_slice(),
        SECRET
    );
}

#[test]
fn the_right_code_on_the_last_attempt_may_delete() {
    let vf = VaultFleet::start(3, Store::Mem);
    let client = vf.client(19);
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
    use vaultfleet_audit::{Bundle, FleetVerifier, Witness, WitnessKey, WitnessKeySpec};

    const NS: &str = "example.vault.fleet_keys.v1";
    const NOW: u64 = 1_800_000_000;

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
        let publish = |witness: &mut Witness<SoftHsm>, a: &FleetArtifact| {
            let w = witness.sign(NS, a.epoch, a.digest().unwrap(), NOW).unwrap();
            let cs = countersign(&authority, "operator", &w).unwrap();
            let tree = witness.tree(NS).unwrap();
            let proof = tree.inclusion_proof(w.leaf_index, tree.size()).unwrap();
            let cp = witness.checkpoint(NS, NOW).unwrap();
            Bundle::assemble(a.encode().unwrap(), &w, cs, proof, &cp)
                .encode()
                .unwrap()
        };
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
            VaultClient::with_verifier(vf.endpoints(), 1, verifier, Arc::new(|| NOW), cfg(), 31);
        // No bundle served yet: the client refuses every reply.
        assert!(matches!(
            client.register(b"quinn", CODE, SECRET),
            Err(VaultClientError::BadReply {
                cause: ReplyError::NoBundle,
                ..
            })
        ));
        for s in vf.services.values() {
            s.serve_bundle(e1.clone());
        }
        assert_matches!(client.register(b"quinn", CODE, SECRET), Ok(1));
        assert_eq!(client.recover(b"quinn", CODE).unwrap().as_slice(), SECRET);
        assert_eq!(client.fleet_epoch(), Some(1));
        // Rotation: the fleet serves epoch 2; the client moves forward.
        let e2 = publish(&mut witness, &artifact(&vf, 2));
        for s in vf.services.values() {
            s.serve_bundle(e2.clone());
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
        let forged = {
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
        for s in vf.services.values() {
            s.serve_bundle(forged.clone());
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
