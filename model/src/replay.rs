//! Replays a path of the model through the real service: a
//! [`ServiceCore`] per model service, each over a real [`VaultServer`] with
//! keys in a [`SoftHsm`], the real OPAQUE client flows, and a [`BackupVault`]
//! standing in for the replicated log (commands applied in the order the path
//! commits them, as the vault's own service tests do).
//!
//! Each model action maps to what the real parts do:
//!
//! | model action | real step |
//! | --- | --- |
//! | `NewStart` | a `ClientLoginFlow` blinds the code; the `LoginStart` bytes are kept |
//! | `Deliver(Start)`, `Deliver(Finish)` | `ServiceCore::begin` on that service with the request's bytes |
//! | `Deliver(Answer)` | none: the finish was built when the response arrived (opened with the right code) |
//! | `Drop`, `Replay` | none: they only change what the model will deliver |
//! | `Commit` | `BackupVault::apply` of the proposal's command, then `ServiceCore::resume` with its output |
//! | `CommitSilently` | `apply`, then `resume` with `NotCommitted` |
//! | `Duplicate` | `apply` and `resume`; the same command bytes stay queued |
//! | `Timeout` | `resume` with `NotCommitted`; the command bytes stay queued |
//! | `Lose` | `resume` with `NotCommitted`; the command is dropped |
//! | `Crash` | the service's `ServiceCore` is replaced by a fresh one (same keys) and its `Call`s are dropped |
//!
//! After every step the replay compares the real state with the model's (the
//! vault's attempts left or lock-out, each service's kept logins, whether a
//! fleet step is pending, the wrong guesses answered, the successes) and
//! checks the properties on the real outcomes: the wrong guesses the real
//! client could test (a real credential response that its wrong code failed
//! to open) against the real tickets and the real successful resets.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use stateright::Model;
use vaultfleet::state_machine::StateMachine;
use vaultfleet::SoftHsm;
use vaultfleet_vault::wire::{
    self, vault_client_request, VaultClientRequest, VaultLoginFinish, VaultLoginPurpose,
    VaultLoginStart, VaultOutcome, VaultRegisterFinish, VaultRegisterStart, VaultReply,
    VaultReplyBody, VaultReplyStatus, VaultRequestId, VaultStatus,
};
use vaultfleet_vault::{
    authenticate_request, registration_secret_digest, BackupVault, Call, ClientLoginFlow,
    ClientRegistrationFlow, FleetStep, KsfParams, LoginLimits, NotCommitted, Progress, ServiceCore,
    UserId, UserView, VaultError, VaultKeys, VaultServer,
};

use crate::model::{
    Action, Bounds, Cmd, Code, LoginId, LoginModel, Msg, Proposal, Standing, State, Waiter,
};

const GROUP: u64 = 1;
const USER: &[u8] = b"ada";
const CODE: &[u8] = b"the right code";
const SECRET: &[u8] = b"the secret";
const KSF: KsfParams = KsfParams::TESTS_ONLY;
const CLIENT: u64 = 7;
/// The driver's clock: fixed, so no login expires during a replay.
const NOW: Duration = Duration::from_secs(1);

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The real service's keys could not be set up.
    #[error("setting up the real service")]
    Setup(#[source] VaultError),
    /// A real client flow failed.
    #[error("a client flow failed at step {step}")]
    Client {
        /// The step (0: registration).
        step: usize,
        /// Why.
        #[source]
        source: vaultfleet_vault::VaultClientError,
    },
    /// A real reply or outcome did not decode.
    #[error("a reply or outcome did not decode at step {step}")]
    Decode {
        /// The step.
        step: usize,
        /// Why.
        #[source]
        source: wire::DecodeError,
    },
    /// The registration before the replay did not succeed.
    #[error("registering the user failed: {0:?}")]
    Register(VaultReplyStatus),
    /// The action is not enabled in the model's state.
    #[error("step {step}: {action} is not enabled in the model")]
    NotEnabled {
        /// The step.
        step: usize,
        /// The action.
        action: Action,
    },
    /// The real service did something the model did not.
    #[error("step {step} ({action}): the real service diverged from the model: {what}")]
    Diverged {
        /// The step.
        step: usize,
        /// The action.
        action: Action,
        /// What differs.
        what: String,
    },
    /// A property failed on the real outcomes.
    #[error("step {step} ({action}): the real service violates \"{property}\": {detail}")]
    Violated {
        /// The step.
        step: usize,
        /// The action.
        action: Action,
        /// The property.
        property: &'static str,
        /// The numbers.
        detail: String,
    },
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Steps replayed.
    pub steps: usize,
    /// Real OPAQUE responses that let the client test a wrong guess.
    pub wrong_answered: usize,
    /// Real successful resets committed.
    pub successes: u32,
    /// Whether the real user ended locked.
    pub locked: bool,
    /// Real fleet steps (commands) applied.
    pub commits: u64,
}

/// A call of the real service waiting for its fleet step, under the model's
/// proposal it stands for.
struct Pending {
    key: Proposal,
    command: Vec<u8>,
    call: Option<Call>,
}

/// The real parts, driven in step with the model.
pub struct Replayer {
    model: LoginModel,
    state: State,
    hsm: SoftHsm,
    sealed: Vec<u8>,
    cores: Vec<ServiceCore<SoftHsm>>,
    vault: BackupVault,
    index: u64,
    rng: ChaCha20Rng,
    sequence: u64,
    starts: Vec<(ClientLoginFlow, Vec<u8>)>,
    finishes: BTreeMap<LoginId, Vec<u8>>,
    real_logins: BTreeMap<LoginId, u64>,
    pending: Vec<Pending>,
    answered_wrong: BTreeSet<u8>,
    tickets: BTreeMap<u8, u64>,
    best_success: Option<u64>,
    successes: u32,
    commits: u64,
    step: usize,
}

impl Replayer {
    /// Real services for `bounds` (its bug is ignored: the real code runs),
    /// with the user registered with `bounds.max_attempts`; `seed` seeds the
    /// HSM and the client flows.
    pub fn new(bounds: Bounds, seed: u64) -> Result<Self, ReplayError> {
        let bounds = Bounds {
            bug: None,
            ..bounds
        };
        let model = LoginModel::new(bounds);
        let state = model.initial();
        let hsm = SoftHsm::from_seed(seed);
        let sealed = VaultKeys::provision(&hsm).map_err(ReplayError::Setup)?;
        let mut r = Self {
            cores: Vec::new(),
            model,
            state,
            hsm,
            sealed,
            vault: BackupVault::new(),
            index: 0,
            rng: ChaCha20Rng::seed_from_u64(seed),
            sequence: 0,
            starts: Vec::new(),
            finishes: BTreeMap::new(),
            real_logins: BTreeMap::new(),
            pending: Vec::new(),
            answered_wrong: BTreeSet::new(),
            tickets: BTreeMap::new(),
            best_success: None,
            successes: 0,
            commits: 0,
            step: 0,
        };
        for svc in 0..bounds.services.max(1) {
            let core = r.core(svc)?;
            r.cores.push(core);
        }
        r.register()?;
        Ok(r)
    }

    fn core(&self, svc: u8) -> Result<ServiceCore<SoftHsm>, ReplayError> {
        let keys = VaultKeys::open(self.hsm.clone(), &self.sealed, GROUP, u64::from(svc) + 1)
            .map_err(ReplayError::Setup)?;
        Ok(ServiceCore::new(
            VaultServer::new(keys),
            LoginLimits::default(),
        ))
    }

    /// The model's state after the steps so far.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The model being replayed (without a planted bug).
    pub fn model(&self) -> &LoginModel {
        &self.model
    }

    /// What the real service did so far.
    pub fn summary(&self) -> ReplaySummary {
        ReplaySummary {
            steps: self.step,
            wrong_answered: self.answered_wrong.len(),
            successes: self.successes,
            locked: matches!(self.vault.user(USER), Some(UserView::Locked { .. })),
            commits: self.commits,
        }
    }

    fn request(&mut self, op: vault_client_request::Op) -> VaultClientRequest {
        self.sequence += 1;
        let mut id = VaultRequestId::new();
        id.client = CLIENT;
        id.sequence = self.sequence;
        let mut r = VaultClientRequest::new();
        r.request = Some(id).into();
        r.op = Some(op);
        r
    }

    fn client_err(&self, source: vaultfleet_vault::VaultClientError) -> ReplayError {
        ReplayError::Client {
            step: self.step,
            source,
        }
    }

    fn decode_err(&self, source: wire::DecodeError) -> ReplayError {
        ReplayError::Decode {
            step: self.step,
            source,
        }
    }

    /// Runs `bytes` through core 0 with every fleet step answered.
    fn call_through(&mut self, bytes: &[u8]) -> Result<VaultReplyBody, ReplayError> {
        let mut progress = self.cores[0].begin(bytes, NOW);
        loop {
            match progress {
                Progress::Reply(reply) => return self.body(&reply),
                Progress::Wait { call, step } => {
                    let answer = match step {
                        FleetStep::Read(q) => self.vault.query(&q),
                        FleetStep::Propose(c) => {
                            self.index += 1;
                            self.vault.apply(self.index, &c)
                        }
                    };
                    progress = self.cores[0].resume(call, Ok(answer), NOW);
                }
            }
        }
    }

    fn body(&self, reply: &[u8]) -> Result<VaultReplyBody, ReplayError> {
        let r: VaultReply = wire::decode(reply, "vault reply").map_err(|e| self.decode_err(e))?;
        wire::decode(&r.body, "vault reply body").map_err(|e| self.decode_err(e))
    }

    fn register(&mut self) -> Result<(), ReplayError> {
        let max = u32::from(self.model.bounds.max_attempts);
        let user = UserId::new(USER).map_err(|e| ReplayError::Setup(e.into()))?;
        let flow = ClientRegistrationFlow::start_with_insecure_rng(&mut self.rng, CODE)
            .map_err(|e| self.client_err(e))?;
        let mut s = VaultRegisterStart::new();
        s.user = USER.to_vec();
        s.registration_request = flow.request().to_vec();
        s.max_attempts = max;
        s.secret_digest = registration_secret_digest(&user, SECRET).to_vec();
        let r = self.request(vault_client_request::Op::RegisterStart(s));
        let b = self.call_through(&wire::encode_bounded(&r))?;
        if status(&b) != VaultReplyStatus::REPLY_OK {
            return Err(ReplayError::Register(status(&b)));
        }
        let upload = flow
            .finish_with_insecure_rng(&mut self.rng, CODE, &b.registration_response, &KSF)
            .map_err(|e| self.client_err(e))?;
        let mut f = VaultRegisterFinish::new();
        f.user = USER.to_vec();
        f.registration_upload = upload;
        f.credential_nonce = b.credential_nonce;
        f.nonce_tag = b.nonce_tag;
        f.secret = SECRET.to_vec();
        f.max_attempts = max;
        f.issued_generation = b.generation;
        let r = self.request(vault_client_request::Op::RegisterFinish(f));
        let b = self.call_through(&wire::encode_bounded(&r))?;
        if status(&b) != VaultReplyStatus::REPLY_OK {
            return Err(ReplayError::Register(status(&b)));
        }
        Ok(())
    }

    fn code_bytes(code: Code, req: u8) -> Vec<u8> {
        match code {
            Code::Right => CODE.to_vec(),
            Code::Wrong => format!("wrong guess {req}").into_bytes(),
        }
    }

    /// Takes one step of the model and the same step of the real service, then
    /// compares them and checks the properties on the real outcomes.
    pub fn step(&mut self, action: Action) -> Result<(), ReplayError> {
        self.step += 1;
        let before = self.state.clone();
        let Some(after) = self.model.next_state(&before, action) else {
            return Err(ReplayError::NotEnabled {
                step: self.step,
                action,
            });
        };
        let successes_before = self.successes;
        self.real_step(&before, &after, action)?;
        self.state = after;
        self.compare(action)?;
        self.check(action, &before, successes_before)
    }

    fn real_step(
        &mut self,
        before: &State,
        after: &State,
        action: Action,
    ) -> Result<(), ReplayError> {
        match action {
            Action::NewStart { code, .. } => {
                let req = self.starts.len() as u8;
                let flow = ClientLoginFlow::start_with_insecure_rng(
                    &mut self.rng,
                    &Self::code_bytes(code, req),
                )
                .map_err(|e| self.client_err(e))?;
                let mut s = VaultLoginStart::new();
                s.user = USER.to_vec();
                s.credential_request = flow.request().to_vec();
                // The start's request id is its model id: a retry sends the same bytes.
                let mut r = VaultClientRequest::new();
                let mut id = VaultRequestId::new();
                id.client = CLIENT;
                id.sequence = 1_000 + u64::from(req);
                r.request = Some(id).into();
                r.op = Some(vault_client_request::Op::LoginStart(s));
                self.starts.push((flow, wire::encode_bounded(&r)));
            }
            Action::Deliver(Msg::Start { svc, req, code }) => {
                let bytes = self.starts[usize::from(req)].1.clone();
                let progress = self.cores[usize::from(svc)].begin(&bytes, NOW);
                let key = Proposal {
                    cmd: Cmd::Consume { req },
                    waiter: Some(Waiter::Consume {
                        svc,
                        epoch: before.services[usize::from(svc)].epoch,
                        req,
                        code,
                    }),
                };
                self.progress(progress, Some(key), action)?;
            }
            Action::Deliver(Msg::Finish { login }) => {
                let Some(bytes) = self.finishes.get(&login).cloned() else {
                    return Err(self.diverged(action, "no real finish for this login"));
                };
                let progress = self.cores[usize::from(login.svc)].begin(&bytes, NOW);
                let key = after
                    .proposals
                    .iter()
                    .find(|p| p.waiter == Some(Waiter::Conclude { login }))
                    .copied();
                self.progress(progress, key, action)?;
            }
            Action::Deliver(Msg::Answer { .. }) | Action::Drop(_) | Action::Replay(_) => {}
            Action::Commit(p) | Action::CommitSilently(p) | Action::Duplicate(p) => {
                let Some(i) = self.pending.iter().position(|x| x.key == p) else {
                    return Err(self.diverged(action, "no real command for this proposal"));
                };
                let Pending { key, command, call } = self.pending.remove(i);
                self.index += 1;
                let output = self.vault.apply(self.index, &command);
                self.commits += 1;
                self.observe(key.cmd, &output)?;
                if matches!(action, Action::Duplicate(_)) {
                    self.pending.push(Pending {
                        key: Proposal {
                            cmd: key.cmd,
                            waiter: None,
                        },
                        command,
                        call: None,
                    });
                }
                let answer = match action {
                    Action::CommitSilently(_) => Err(NotCommitted),
                    _ => Ok(output),
                };
                self.resume(key, call, answer, action)?;
            }
            Action::Timeout(p) | Action::Lose(p) => {
                let Some(i) = self.pending.iter().position(|x| x.key == p) else {
                    return Err(self.diverged(action, "no real command for this proposal"));
                };
                let Pending { key, command, call } = self.pending.remove(i);
                if matches!(action, Action::Timeout(_)) {
                    self.pending.push(Pending {
                        key: Proposal {
                            cmd: key.cmd,
                            waiter: None,
                        },
                        command,
                        call: None,
                    });
                }
                self.resume(key, call, Err(NotCommitted), action)?;
            }
            Action::Crash(svc) => {
                self.cores[usize::from(svc)] = self.core(svc)?;
                for p in &mut self.pending {
                    let of_svc = match p.key.waiter {
                        Some(Waiter::Consume { svc: s, .. }) => s == svc,
                        Some(Waiter::Conclude { login }) => login.svc == svc,
                        None => false,
                    };
                    if of_svc {
                        // Dropping a call abandons it, as the crash does.
                        p.call = None;
                    }
                }
            }
        }
        Ok(())
    }

    fn resume(
        &mut self,
        key: Proposal,
        call: Option<Call>,
        answer: Result<Vec<u8>, NotCommitted>,
        action: Action,
    ) -> Result<(), ReplayError> {
        let Some(call) = call else {
            return Ok(());
        };
        let svc = match key.waiter {
            Some(Waiter::Consume { svc, .. }) => svc,
            Some(Waiter::Conclude { login }) => login.svc,
            None => return Err(self.diverged(action, "a real call without a model waiter")),
        };
        let progress = self.cores[usize::from(svc)].resume(call, answer, NOW);
        self.progress(progress, Some(key), action)
    }

    /// A real request's progress: a reply to the client, or a fleet step that
    /// must be the model's proposal `key`.
    fn progress(
        &mut self,
        progress: Progress,
        key: Option<Proposal>,
        action: Action,
    ) -> Result<(), ReplayError> {
        match progress {
            Progress::Wait { call, step } => {
                let Some(key) = key else {
                    return Err(
                        self.diverged(action, "the real service proposed; the model did not")
                    );
                };
                let FleetStep::Propose(command) = step else {
                    return Err(self.diverged(action, "the real service read; the model proposes"));
                };
                self.pending.push(Pending {
                    key,
                    command,
                    call: Some(call),
                });
                Ok(())
            }
            Progress::Reply(reply) => {
                let b = self.body(&reply)?;
                if let Some(Waiter::Consume {
                    svc,
                    epoch,
                    req,
                    code,
                }) = key.and_then(|k| k.waiter)
                {
                    if !b.credential_response.is_empty() {
                        self.responded(LoginId { svc, epoch, req }, code, &b, action)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// A real credential response reached the client: it opens it with its code.
    fn responded(
        &mut self,
        login: LoginId,
        code: Code,
        b: &VaultReplyBody,
        action: Action,
    ) -> Result<(), ReplayError> {
        if let Some(known) = self.real_logins.insert(login, b.login) {
            if known != b.login {
                return Err(self.diverged(action, "a re-delivered start got a second login"));
            }
        }
        let req = login.req;
        let opened = {
            let (flow, _) = &self.starts[usize::from(req)];
            flow.finish_with_insecure_rng(
                &mut self.rng,
                &Self::code_bytes(code, req),
                &b.credential_response,
                &KSF,
            )
            .map_err(|e| self.client_err(e))?
        };
        match (code, opened) {
            (Code::Wrong, None) => {
                // The client tested its guess: wrong.
                self.answered_wrong.insert(req);
            }
            (Code::Right, Some(opened)) => {
                if !self.finishes.contains_key(&login) {
                    let mut f = VaultLoginFinish::new();
                    f.login = b.login;
                    f.credential_finalization = opened.finalization.clone();
                    f.purpose = VaultLoginPurpose::VAULT_RECOVER.into();
                    let mut r = self.request(vault_client_request::Op::LoginFinish(f));
                    let user = UserId::new(USER).map_err(|e| ReplayError::Setup(e.into()))?;
                    authenticate_request(GROUP, &user, &opened.session_key, &mut r);
                    self.finishes.insert(login, wire::encode_bounded(&r));
                }
            }
            (Code::Wrong, Some(_)) => {
                return Err(self.diverged(action, "a wrong code opened the response"));
            }
            (Code::Right, None) => {
                return Err(self.diverged(action, "the right code did not open the response"));
            }
        }
        Ok(())
    }

    /// Notes what a committed command did in the real vault.
    fn observe(&mut self, cmd: Cmd, output: &[u8]) -> Result<(), ReplayError> {
        let o: VaultOutcome =
            wire::decode(output, "vault outcome").map_err(|e| self.decode_err(e))?;
        let ok = o.status.enum_value_or(VaultStatus::VAULT_MALFORMED) == VaultStatus::VAULT_OK;
        match cmd {
            Cmd::Consume { req } if ok => {
                self.tickets.entry(req).or_insert(o.ticket);
            }
            Cmd::Reset { .. } if ok => {
                self.successes += 1;
                self.best_success = Some(self.best_success.map_or(o.ticket, |b| b.max(o.ticket)));
            }
            _ => {}
        }
        Ok(())
    }

    fn diverged(&self, action: Action, what: impl Into<String>) -> ReplayError {
        ReplayError::Diverged {
            step: self.step,
            action,
            what: what.into(),
        }
    }

    /// The real state against the model's.
    fn compare(&self, action: Action) -> Result<(), ReplayError> {
        let max = self.model.bounds.max_attempts;
        let s = &self.state;
        match (&s.log.standing, self.vault.user(USER)) {
            (
                Standing::Registered { spent, .. },
                Some(UserView::Registered { attempts_left, .. }),
            ) => {
                let model_left = u32::from(max) - spent.len() as u32;
                if attempts_left != model_left {
                    return Err(self.diverged(
                        action,
                        format!("attempts left: real {attempts_left}, model {model_left}"),
                    ));
                }
            }
            (Standing::Locked { .. }, Some(UserView::Locked { .. })) => {}
            (model, real) => {
                return Err(
                    self.diverged(action, format!("standing: real {real:?}, model {model:?}"))
                )
            }
        }
        for (i, svc) in s.services.iter().enumerate() {
            let real = self.cores[i].pending_logins();
            if real != svc.logins.len() {
                return Err(self.diverged(
                    action,
                    format!(
                        "service {i} keeps {real} logins, the model {}",
                        svc.logins.len()
                    ),
                ));
            }
        }
        let mut real_keys: Vec<Proposal> = self.pending.iter().map(|p| p.key).collect();
        real_keys.sort_unstable();
        if real_keys != s.proposals {
            return Err(self.diverged(
                action,
                format!("fleet steps: real {real_keys:?}, model {:?}", s.proposals),
            ));
        }
        let model_wrong: BTreeSet<u8> = s.ghost.answered_wrong.iter().copied().collect();
        if model_wrong != self.answered_wrong {
            return Err(self.diverged(
                action,
                format!(
                    "wrong guesses answered: real {:?}, model {model_wrong:?}",
                    self.answered_wrong
                ),
            ));
        }
        if u32::from(s.ghost.successes) != self.successes {
            return Err(self.diverged(
                action,
                format!(
                    "successes: real {}, model {}",
                    self.successes, s.ghost.successes
                ),
            ));
        }
        Ok(())
    }

    /// The properties, on the real outcomes.
    fn check(
        &self,
        action: Action,
        before: &State,
        successes_before: u32,
    ) -> Result<(), ReplayError> {
        let max = usize::from(self.model.bounds.max_attempts);
        let unforgiven = self
            .answered_wrong
            .iter()
            .filter(|r| match (self.tickets.get(r), self.best_success) {
                (Some(t), Some(best)) => *t > best,
                _ => true,
            })
            .count();
        if unforgiven > max {
            return Err(ReplayError::Violated {
                step: self.step,
                action,
                property: crate::model::PROP_WRONG_LIMIT,
                detail: format!(
                    "{unforgiven} wrong guesses answered since the last success, max {max}"
                ),
            });
        }
        if before.ghost.locked_for_good && self.successes > successes_before {
            return Err(ReplayError::Violated {
                step: self.step,
                action,
                property: crate::model::PROP_LOCKED_STAYS,
                detail: "a real reset succeeded after the lock-out".into(),
            });
        }
        Ok(())
    }

    /// Property (2) on the real service: if attempts remain and the client
    /// has a login start left, a fresh right-code login, every step delivered
    /// and committed, succeeds. Returns whether it was checked.
    pub fn check_right_code_works(&mut self) -> Result<bool, ReplayError> {
        let s = self.state.clone();
        if s.attempts_left(self.model.bounds.max_attempts) == 0
            || s.starts.len() >= usize::from(self.model.bounds.logins)
        {
            return Ok(false);
        }
        let Some(path) = self.model.honest_completion(&s) else {
            return Err(ReplayError::Violated {
                step: self.step,
                action: Action::NewStart {
                    code: Code::Right,
                    svc: 0,
                },
                property: crate::model::PROP_RIGHT_CODE_WORKS,
                detail: "the model's own honest completion fails".into(),
            });
        };
        let before = self.successes;
        for a in &path {
            self.step(*a)?;
        }
        if self.successes <= before {
            return Err(ReplayError::Violated {
                step: self.step,
                action: *path.last().unwrap_or(&Action::Crash(0)),
                property: crate::model::PROP_RIGHT_CODE_WORKS,
                detail: "the real right-code login did not succeed".into(),
            });
        }
        Ok(true)
    }
}

fn status(b: &VaultReplyBody) -> VaultReplyStatus {
    b.status.enum_value_or(VaultReplyStatus::REPLY_BAD_REQUEST)
}

/// Replays `actions` (a model path, e.g. a counterexample found with a planted
/// bug) through the real service under `bounds` (without the bug).
pub fn replay(bounds: Bounds, seed: u64, actions: &[Action]) -> Result<ReplaySummary, ReplayError> {
    let mut r = Replayer::new(bounds, seed)?;
    for a in actions {
        r.step(*a)?;
    }
    Ok(r.summary())
}

/// What a batch of random walks covered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WalkSummary {
    /// Walks replayed.
    pub walks: usize,
    /// Steps replayed in all.
    pub steps: usize,
    /// Walks whose real user ended locked.
    pub locked: usize,
    /// Real successes in all.
    pub successes: u32,
    /// Real wrong guesses answered in all.
    pub wrong_answered: usize,
    /// Walks ended by the right-code check (property 2) on the real service.
    pub right_code_checked: usize,
    /// How many times each kind of action was replayed.
    pub actions: BTreeMap<&'static str, usize>,
}

fn kind(a: &Action) -> &'static str {
    match a {
        Action::NewStart { .. } => "NewStart",
        Action::Deliver(Msg::Start { .. }) => "Deliver(Start)",
        Action::Deliver(Msg::Finish { .. }) => "Deliver(Finish)",
        Action::Deliver(_) => "Deliver(Answer)",
        Action::Drop(_) => "Drop",
        Action::Replay(_) => "Replay",
        Action::Commit(_) => "Commit",
        Action::CommitSilently(_) => "CommitSilently",
        Action::Duplicate(_) => "Duplicate",
        Action::Timeout(_) => "Timeout",
        Action::Lose(_) => "Lose",
        Action::Crash(_) => "Crash",
    }
}

/// Replays `walks` random walks of the model (each at most `steps` long,
/// choices seeded by `seed`, walk `i` by `seed + i`) through the real service;
/// each walk then checks property (2) on the real service where attempts
/// remain, with one login start kept back for it.
pub fn random_walks(
    bounds: Bounds,
    seed: u64,
    walks: usize,
    steps: usize,
) -> Result<WalkSummary, (u64, ReplayError)> {
    let mut total = WalkSummary::default();
    for i in 0..walks {
        let walk_seed = seed.wrapping_add(i as u64);
        let mut chooser = SplitMix(walk_seed);
        // One login start more than the walk may use, kept for the right-code
        // check at its end.
        let spare = Bounds {
            logins: bounds.logins.saturating_add(1),
            ..bounds
        };
        let mut r = Replayer::new(spare, walk_seed).map_err(|e| (walk_seed, e))?;
        let mut actions = Vec::new();
        for _ in 0..steps {
            actions.clear();
            r.model.actions(&r.state, &mut actions);
            if r.state.starts.len() >= usize::from(bounds.logins) {
                actions.retain(|a| !matches!(a, Action::NewStart { .. }));
            }
            if actions.is_empty() {
                break;
            }
            let a = actions[(chooser.next() % actions.len() as u64) as usize];
            *total.actions.entry(kind(&a)).or_default() += 1;
            r.step(a).map_err(|e| (walk_seed, e))?;
        }
        if r.check_right_code_works().map_err(|e| (walk_seed, e))? {
            total.right_code_checked += 1;
        }
        let s = r.summary();
        total.walks += 1;
        total.steps += s.steps;
        total.locked += usize::from(s.locked);
        total.successes += s.successes;
        total.wrong_answered += s.wrong_answered;
    }
    Ok(total)
}

/// A small seeded generator for the walks' choices (SplitMix64).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
