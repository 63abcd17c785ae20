//! Tests of the sans-IO service core, driven by hand over a local `BackupVault`
//! standing in for the fleet: each fleet step can commit and answer, fail, or
//! commit with its answer lost, at a time the test chooses.

use std::time::Duration;

use vaultfleet::state_machine::StateMachine;
use vaultfleet::SoftHsm;

use super::core::{FleetStep, LoginLimits, NotCommitted, Progress, ServiceCore};
use crate::client::{ClientLoginFlow, ClientRegistrationFlow, KsfParams};
use crate::crypto::{authenticate_request, registration_secret_digest};
use crate::keys::VaultKeys;
use crate::machine::BackupVault;
use crate::server::VaultServer;
use crate::user_id::UserId;
use crate::wire::{
    self, vault_client_request, VaultClientRequest, VaultLoginFinish, VaultLoginPurpose,
    VaultLoginStart, VaultRegisterFinish, VaultRegisterStart, VaultReply, VaultReplyBody,
    VaultReplyStatus, VaultRequestId,
};

const KSF: KsfParams = KsfParams::TESTS_ONLY;
const USER: &[u8] = b"ada";
const CODE: &[u8] = b"the code";
const SECRET: &[u8] = b"the secret";

/// What the stand-in fleet does with the next step.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fleet {
    /// Commits (or reads) and answers.
    Answer,
    /// Neither commits nor answers.
    Fail,
    /// Commits, and the answer is lost.
    CommitSilently,
}

struct Rig {
    core: ServiceCore<SoftHsm>,
    vault: BackupVault,
    index: u64,
    sequence: u64,
}

impl Rig {
    fn new() -> Self {
        let hsm = SoftHsm::from_seed(13);
        let sealed = VaultKeys::provision(&hsm).expect("provision");
        let keys = VaultKeys::open(hsm, &sealed, 1, 1).expect("open");
        Rig {
            core: ServiceCore::new(VaultServer::new(keys), LoginLimits::default()),
            vault: BackupVault::new(),
            index: 0,
            sequence: 0,
        }
    }

    fn request(&mut self, op: vault_client_request::Op) -> VaultClientRequest {
        self.sequence += 1;
        let mut id = VaultRequestId::new();
        id.client = 7;
        id.sequence = self.sequence;
        let mut r = VaultClientRequest::new();
        r.request = Some(id).into();
        r.op = Some(op);
        r
    }

    /// Sends `bytes` at `now`, every fleet step handled as `fleet` says.
    fn call(&mut self, bytes: &[u8], now: Duration, fleet: Fleet) -> VaultReplyBody {
        let mut progress = self.core.begin(bytes, now);
        loop {
            match progress {
                Progress::Reply(reply) => return body(&reply),
                Progress::Wait { call, step } => {
                    let answer = self.step(step, fleet);
                    progress = self.core.resume(call, answer, now);
                }
            }
        }
    }

    /// Sends `bytes` and stops at its first fleet step (a request in flight).
    fn begin(&mut self, bytes: &[u8], now: Duration) -> Progress {
        self.core.begin(bytes, now)
    }

    fn step(&mut self, step: FleetStep, fleet: Fleet) -> Result<Vec<u8>, NotCommitted> {
        match (step, fleet) {
            (_, Fleet::Fail) => Err(NotCommitted),
            (FleetStep::Read(q), _) => Ok(self.vault.query(&q)),
            (FleetStep::Propose(c), Fleet::Answer) => {
                self.index += 1;
                Ok(self.vault.apply(self.index, &c))
            }
            (FleetStep::Propose(c), Fleet::CommitSilently) => {
                self.index += 1;
                self.vault.apply(self.index, &c);
                Err(NotCommitted)
            }
        }
    }

    fn register(&mut self) {
        self.register_with(10);
    }

    fn register_with(&mut self, max_attempts: u32) {
        let flow = ClientRegistrationFlow::start(CODE).expect("flow");
        let user = UserId::new(USER).expect("user");
        let mut s = VaultRegisterStart::new();
        s.user = USER.to_vec();
        s.registration_request = flow.request().to_vec();
        s.max_attempts = max_attempts;
        s.secret_digest = registration_secret_digest(&user, SECRET).to_vec();
        let r = self.request(vault_client_request::Op::RegisterStart(s));
        let b = self.call(&encode(&r), Duration::ZERO, Fleet::Answer);
        assert_eq!(status(&b), VaultReplyStatus::REPLY_OK, "{b:?}");
        let upload = flow
            .finish(CODE, &b.registration_response, &KSF)
            .expect("upload");
        let mut f = VaultRegisterFinish::new();
        f.user = USER.to_vec();
        f.registration_upload = upload;
        f.credential_nonce = b.credential_nonce;
        f.nonce_tag = b.nonce_tag;
        f.secret = SECRET.to_vec();
        f.max_attempts = max_attempts;
        f.issued_generation = b.generation;
        let r = self.request(vault_client_request::Op::RegisterFinish(f));
        let b = self.call(&encode(&r), Duration::ZERO, Fleet::Answer);
        assert_eq!(status(&b), VaultReplyStatus::REPLY_OK, "{b:?}");
    }

    /// A login with the right code, up to its authenticated finish's bytes.
    fn login(
        &mut self,
        purpose: VaultLoginPurpose,
        now: Duration,
        edit: impl FnOnce(&mut VaultLoginFinish),
    ) -> (Vec<u8>, Vec<u8>) {
        let flow = ClientLoginFlow::start(CODE).expect("flow");
        let mut s = VaultLoginStart::new();
        s.user = USER.to_vec();
        s.credential_request = flow.request().to_vec();
        let r = self.request(vault_client_request::Op::LoginStart(s));
        let b = self.call(&encode(&r), now, Fleet::Answer);
        assert_eq!(status(&b), VaultReplyStatus::REPLY_OK, "{b:?}");
        let opened = flow
            .finish(CODE, &b.credential_response, &KSF)
            .expect("finish")
            .expect("the right code opens");
        let mut f = VaultLoginFinish::new();
        f.login = b.login;
        f.credential_finalization = opened.finalization.clone();
        f.purpose = purpose.into();
        edit(&mut f);
        let mut r = self.request(vault_client_request::Op::LoginFinish(f));
        let user = UserId::new(USER).expect("user");
        authenticate_request(1, &user, &opened.session_key, &mut r);
        (encode(&r), opened.session_key.to_vec())
    }

    fn registered(&self) -> bool {
        self.vault
            .user(USER)
            .is_some_and(|v| matches!(v, crate::machine::UserView::Registered { .. }))
    }
}

fn encode(r: &VaultClientRequest) -> Vec<u8> {
    wire::encode_bounded(r)
}

fn body(reply: &[u8]) -> VaultReplyBody {
    let r: VaultReply = wire::decode(reply, "reply").expect("a signed reply");
    wire::decode(&r.body, "body").expect("its body")
}

fn status(b: &VaultReplyBody) -> VaultReplyStatus {
    b.status.enum_value_or(VaultReplyStatus::REPLY_BAD_REQUEST)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Review of the service core, H2: a delete that committed while its answer
/// was lost is proposed again by the repeat of its finish (under a new runtime
/// sequence, so the engine cannot deduplicate it). The repeat reported "not
/// registered", which the client took as a failure of a delete that took
/// effect; it now reports the delete, and the concluded answer after it.
#[test]
fn review_h2_a_delete_committed_unanswered_then_repeated_reports_the_delete() {
    let mut rig = Rig::new();
    rig.register();
    let (finish, _) = rig.login(VaultLoginPurpose::VAULT_DELETE, secs(1), |_| {});
    let b = rig.call(&finish, secs(1), Fleet::CommitSilently);
    assert_eq!(status(&b), VaultReplyStatus::REPLY_UNAVAILABLE, "{b:?}");
    assert!(!rig.registered(), "the delete committed");
    let again = rig.call(&finish, secs(2), Fleet::Answer);
    assert_eq!(status(&again), VaultReplyStatus::REPLY_OK, "{again:?}");
    assert_eq!(again.generation, 1);
    let third = rig.call(&finish, secs(3), Fleet::Fail);
    assert_eq!(third, again, "the concluded answer, without a fleet step");
}

/// Two copies of one finish in flight at once: the second is told to ask
/// again, never "no such login" (which makes the client start a fresh login
/// and report the user's standing as a failure), then gets the outcome. (Two
/// threads racing past this check meet the same answer in `conclude`.)
#[test]
fn a_copy_of_a_finish_in_flight_is_told_to_ask_again() {
    let mut rig = Rig::new();
    rig.register();
    let (finish, _) = rig.login(VaultLoginPurpose::VAULT_DELETE, secs(1), |_| {});
    let Progress::Wait { call, step } = rig.begin(&finish, secs(1)) else {
        panic!("the delete waits for its commit");
    };
    let copy = rig.call(&finish, secs(1), Fleet::Answer);
    assert_eq!(
        status(&copy),
        VaultReplyStatus::REPLY_UNAVAILABLE,
        "{copy:?}"
    );
    assert!(
        copy.detail.contains("send the same request again"),
        "{copy:?}"
    );
    let answer = rig.step(step, Fleet::Answer);
    let Progress::Reply(reply) = rig.core.resume(call, answer, secs(1)) else {
        panic!("one step");
    };
    assert_eq!(status(&body(&reply)), VaultReplyStatus::REPLY_OK);
    let copy = rig.call(&finish, secs(2), Fleet::Answer);
    assert_eq!(status(&copy), VaultReplyStatus::REPLY_OK, "{copy:?}");
}

/// Review of the service core, H1: the first finish of a re-registration, sent
/// twice (a retry after a lost reply, or a copy an attacker delivered first),
/// was refused the second time as "no such login"; every later finish of that
/// login was too, so each `reregister` burnt attempts it never got back. The
/// repeat now gets the first answer, and the upload goes through.
#[test]
fn review_h1_a_repeated_reregistration_finish_gets_the_first_answer() {
    let mut rig = Rig::new();
    rig.register();
    let user = UserId::new(USER).expect("user");
    let new_flow = ClientRegistrationFlow::start(b"new code").expect("flow");
    let (finish, session_key) =
        rig.login(VaultLoginPurpose::VAULT_REREGISTER_START, secs(1), |f| {
            f.registration_request = new_flow.request().to_vec();
            f.max_attempts = 4;
            f.secret_digest = registration_secret_digest(&user, b"new secret").to_vec();
        });
    let first = rig.call(&finish, secs(1), Fleet::Answer);
    assert_eq!(status(&first), VaultReplyStatus::REPLY_OK, "{first:?}");
    let again = rig.call(&finish, secs(2), Fleet::Answer);
    assert_eq!(again, first, "the same answer: the same nonce and tag");
    let upload = new_flow
        .finish(b"new code", &first.registration_response, &KSF)
        .expect("upload");
    let mut f = VaultRegisterFinish::new();
    f.user = USER.to_vec();
    f.registration_upload = upload;
    f.credential_nonce = first.credential_nonce.clone();
    f.nonce_tag = first.nonce_tag.clone();
    f.secret = b"new secret".to_vec();
    f.max_attempts = 4;
    f.login = first.login;
    f.issued_generation = first.generation;
    let mut r = rig.request(vault_client_request::Op::RegisterFinish(f));
    authenticate_request(1, &user, &session_key, &mut r);
    let done = rig.call(&encode(&r), secs(3), Fleet::Answer);
    assert_eq!(
        (status(&done), done.generation, done.max_attempts),
        (VaultReplyStatus::REPLY_OK, 2, 4),
        "{done:?}"
    );
}

/// Review of the service core, M2: marking a login as committing reset its
/// time, so re-delivering a finish whose step fails kept the login (and the
/// finish's power to take effect) alive past `login_ttl` for as long as the
/// attacker liked. A login now expires `login_ttl` after it was filed.
#[test]
fn review_m2_failed_commits_do_not_keep_a_login_alive() {
    let mut rig = Rig::new();
    rig.register();
    let ttl = LoginLimits::default().login_ttl;
    let (finish, _) = rig.login(VaultLoginPurpose::VAULT_DELETE, Duration::ZERO, |_| {});
    let b = rig.call(&finish, ttl - secs(5), Fleet::Fail);
    assert_eq!(status(&b), VaultReplyStatus::REPLY_UNAVAILABLE, "{b:?}");
    let late = rig.call(&finish, ttl + secs(1), Fleet::Answer);
    assert_eq!(
        status(&late),
        VaultReplyStatus::REPLY_LOGIN_UNKNOWN,
        "{late:?}"
    );
    assert!(rig.registered(), "the expired login deleted nothing");
}

/// The service's counters, through a recorder local to this thread: logins
/// started and proven, a refused finish, wrong codes and a lock-out counted
/// when their unproven logins expire, a registration. No label carries the
/// user id.
#[test]
fn the_service_counts_logins_wrong_codes_lockouts_and_registrations() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::telemetry;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let ttl = LoginLimits::default().login_ttl;
    metrics::with_local_recorder(&recorder, || {
        let mut rig = Rig::new();
        rig.register_with(2);
        // The right code, recovering: proven, and its attempt forgiven.
        let (finish, _) = rig.login(VaultLoginPurpose::VAULT_RECOVER, secs(1), |_| {});
        let b = rig.call(&finish, secs(1), Fleet::Answer);
        assert_eq!(status(&b), VaultReplyStatus::REPLY_OK, "{b:?}");
        // A finish that does not verify: refused, its login left unproven
        // (one attempt spent, one left).
        let (forged, _) = rig.login(VaultLoginPurpose::VAULT_RECOVER, secs(2), |f| {
            f.credential_finalization = vec![7; 64];
        });
        let b = rig.call(&forged, secs(2), Fleet::Answer);
        assert_eq!(status(&b), VaultReplyStatus::REPLY_LOGIN_FAILED, "{b:?}");
        // A wrong code on the last attempt: the client cannot finish.
        let flow = ClientLoginFlow::start(b"a wrong code").expect("flow");
        let mut start = VaultLoginStart::new();
        start.user = USER.to_vec();
        start.credential_request = flow.request().to_vec();
        let r = rig.request(vault_client_request::Op::LoginStart(start.clone()));
        let b = rig.call(&encode(&r), secs(3), Fleet::Answer);
        assert_eq!(status(&b), VaultReplyStatus::REPLY_OK, "{b:?}");
        assert_eq!(b.attempts_left, 0, "{b:?}");
        assert!(flow
            .finish(b"a wrong code", &b.credential_response, &KSF)
            .expect("finish")
            .is_none());
        // Both unproven logins expire at the next request, which finds the
        // record erased.
        let r = rig.request(vault_client_request::Op::LoginStart(start));
        let b = rig.call(&encode(&r), secs(4) + ttl, Fleet::Answer);
        assert_eq!(status(&b), VaultReplyStatus::REPLY_LOCKED, "{b:?}");
    });

    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |name: &str, label: Option<(&str, &str)>| -> u64 {
        snapshot
            .iter()
            .filter(|(k, ..)| k.key().name() == name)
            .filter(|(k, ..)| {
                label.is_none_or(|(lk, lv)| {
                    k.key().labels().any(|l| l.key() == lk && l.value() == lv)
                })
            })
            .map(|(.., v)| match v {
                DebugValue::Counter(c) => *c,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .sum()
    };
    assert_eq!(counter(telemetry::LOGINS_STARTED, None), 3);
    assert_eq!(
        counter(telemetry::LOGINS_SUCCEEDED, Some(("purpose", "recover"))),
        1
    );
    assert_eq!(counter(telemetry::FINISHES_REFUSED, None), 1);
    assert_eq!(counter(telemetry::WRONG_CODES, None), 2);
    assert_eq!(counter(telemetry::LOCKOUTS, None), 1);
    assert_eq!(
        counter(telemetry::REGISTRATIONS, Some(("kind", "first"))),
        1
    );
    let user = String::from_utf8_lossy(USER);
    for (key, ..) in &snapshot {
        for label in key.key().labels() {
            assert!(
                !label.value().contains(user.as_ref()) && label.key() != "user",
                "{key:?}"
            );
        }
    }
}
