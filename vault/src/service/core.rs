//! The vault service's sans-IO core: what a service does with one client request,
//! as a sequence of steps it asks its driver to take through the fleet.
//!
//! [`ServiceCore::begin`] takes a request's bytes and either answers at once or
//! returns a [`Call`] with the [`FleetStep`] it waits for (a command to commit,
//! or a linearizable read); the driver takes the step and hands the fleet's
//! answer to [`ServiceCore::resume`], which answers or asks for the next step.
//! The core draws no randomness but the HSM's, reads no clock (the driver passes
//! its time), and never blocks: the threaded [`VaultService`](super::VaultService)
//! drives it over the runtime's `Client`, the simulator over simulated consensus.
//!
//! The order that makes the guess limit hold: a login's `consume` command must be
//! committed (durable on a majority) before the OPAQUE response, the only message
//! that lets a client test a guess, leaves the service. A crash after the commit
//! leaves the attempt spent; a crash before it leaves nothing to test.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use zeroize::Zeroize;

use super::logins::{Held, Logins};
use super::telemetry;
use crate::bundle_source::{BundleSource, ReplyExtras};
use crate::crypto::{request_is_authentic, sha256};
use crate::error::VaultError;
use crate::machine::{decode_outcome, BackupVault};
use crate::server::{Registration, RegistrationTerms, VaultServer, VerifiedLogin};
use crate::user_id::{InvalidUserId, UserId};
use crate::wire::{self};
use crate::wire::{
    vault_client_request, VaultClientRequest, VaultLoginFinish, VaultLoginPurpose, VaultOutcome,
    VaultRegisterFinish, VaultReplyBody, VaultReplyStatus, VaultRequestId, VaultStatus,
};
use vaultfleet::hsm::Hsm;
use vaultfleet::ReplicaId;

/// Limits of a service's login table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Logins kept at most between their start and their finish (or a
    /// re-registration's upload). Beyond it a new login is refused *before* its
    /// attempt is spent; no login is ever evicted to make room.
    pub logins_max: usize,
    /// Logins of one user kept at most (refused beyond it, before spending).
    pub logins_per_user_max: usize,
    /// How long a login may await its finalization, and how long the answer to
    /// a concluded finish is kept for a repeat of it.
    pub login_ttl: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            logins_max: 10_000,
            logins_per_user_max: 8,
            login_ttl: Duration::from_secs(60),
        }
    }
}

/// What a request waits for from the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetStep {
    /// A command to commit through the log; the answer is its output.
    Propose(Vec<u8>),
    /// A linearizable read of the state machine; the answer is its output.
    Read(Vec<u8>),
}

/// The fleet did not commit the step, or it is not known whether it did (the
/// driver logs why). The core answers the client "unavailable" and keeps what a
/// retry needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the fleet did not commit the step (or it is not known whether it did)")]
pub struct NotCommitted;

/// Where a request is: its reply, or a fleet step to take first.
#[derive(Debug)]
#[must_use = "a call waits for its fleet step; resume it or drop the request"]
pub enum Progress {
    /// The encoded, signed `VaultReply` to send back (empty if the service
    /// could not sign: the client refuses it and retries).
    Reply(Vec<u8>),
    /// Take `step` through the fleet, then [`ServiceCore::resume`] `call` with
    /// its answer.
    Wait {
        /// The request, waiting.
        call: Call,
        /// What it waits for.
        step: FleetStep,
    },
}

/// A request waiting for its fleet step. Dropping it abandons the request
/// (as a crash would): a login it was committing stays marked (a copy of the
/// same finish is told to ask again) until the login expires.
pub struct Call {
    digest: [u8; 32],
    known_checkpoint_size: Option<u64>,
    stage: Stage,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stage = match &self.stage {
            Stage::RegisterStart { .. } => "register start",
            Stage::Register => "register",
            Stage::Replace { .. } => "replace",
            Stage::Consume { .. } => "consume",
            Stage::Conclude { .. } => "conclude",
        };
        f.debug_struct("Call")
            .field("stage", &stage)
            .finish_non_exhaustive()
    }
}

/// What a [`Call`] does with its fleet answer.
enum Stage {
    /// The user's state was read: issue the registration.
    RegisterStart {
        user: UserId,
        registration_request: Vec<u8>,
        max_attempts: u32,
        secret_digest: Vec<u8>,
    },
    /// A first registration was committed (or not).
    Register,
    /// A proven login's replacement was committed (or not).
    Replace { login: u64 },
    /// A login's attempt was spent (or not): answer the OPAQUE response.
    Consume {
        user: UserId,
        request: (u64, u64),
        credential_request: Vec<u8>,
    },
    /// A verified login's reset or delete was committed (or not).
    Conclude {
        login: u64,
        verified: Box<VerifiedLogin>,
        /// The recovery's request digest (the secret's transport), or `None`
        /// for a delete.
        recover: Option<[u8; 32]>,
    },
}

/// What one step of a request gives: a reply body, or a fleet step.
enum Next {
    Answer(VaultReplyBody),
    Fleet(Stage, FleetStep),
}

impl From<VaultReplyBody> for Next {
    fn from(b: VaultReplyBody) -> Self {
        Next::Answer(b)
    }
}

fn body(status: VaultReplyStatus, detail: impl Into<String>) -> VaultReplyBody {
    let mut b = VaultReplyBody::new();
    b.status = status.into();
    b.detail = detail.into();
    b
}

/// The reply status for a committed outcome that is not OK.
fn outcome_status(o: &VaultOutcome) -> VaultReplyStatus {
    match o.status.enum_value_or(VaultStatus::VAULT_MALFORMED) {
        VaultStatus::VAULT_OK => VaultReplyStatus::REPLY_OK,
        VaultStatus::VAULT_NOT_REGISTERED => VaultReplyStatus::REPLY_NOT_REGISTERED,
        VaultStatus::VAULT_LOCKED => VaultReplyStatus::REPLY_LOCKED,
        VaultStatus::VAULT_ALREADY_REGISTERED => VaultReplyStatus::REPLY_ALREADY_REGISTERED,
        VaultStatus::VAULT_REQUEST_REUSED => VaultReplyStatus::REPLY_REQUEST_REUSED,
        VaultStatus::VAULT_BAD_TICKET => VaultReplyStatus::REPLY_LOGIN_UNKNOWN,
        VaultStatus::VAULT_MALFORMED => VaultReplyStatus::REPLY_BAD_REQUEST,
        VaultStatus::VAULT_REGISTRATION_CONFLICT => VaultReplyStatus::REPLY_REGISTRATION_CONFLICT,
        VaultStatus::VAULT_REGISTRATION_STALE => VaultReplyStatus::REPLY_REGISTRATION_STALE,
    }
}

fn from_outcome(o: &VaultOutcome) -> VaultReplyBody {
    let mut b = body(outcome_status(o), o.detail.clone());
    b.attempts_left = o.attempts_left;
    b.generation = o.generation;
    b.max_attempts = o.max_attempts;
    b.registration_tag = o.registration_tag.clone();
    b
}

/// Counts a registration the fleet committed (`kind`: `first`, `replace`).
fn count_registration(o: &VaultOutcome, kind: &'static str) {
    if o.status.enum_value_or(VaultStatus::VAULT_MALFORMED) == VaultStatus::VAULT_OK {
        metrics::counter!(telemetry::REGISTRATIONS, "kind" => kind).increment(1);
    }
}

fn unavailable() -> VaultReplyBody {
    body(
        VaultReplyStatus::REPLY_UNAVAILABLE,
        "the fleet did not commit the step",
    )
}

fn login_unknown() -> VaultReplyBody {
    body(
        VaultReplyStatus::REPLY_LOGIN_UNKNOWN,
        "no login with this id here (expired, finished, or another service's): start again",
    )
}

fn committing() -> VaultReplyBody {
    body(
        VaultReplyStatus::REPLY_UNAVAILABLE,
        "this login's step is being committed: send the same request again to learn its outcome",
    )
}

fn undecodable(e: &impl std::fmt::Display) -> VaultReplyBody {
    tracing::error!("vault service: {e}");
    body(
        VaultReplyStatus::REPLY_UNAVAILABLE,
        "the fleet's answer does not decode",
    )
}

/// The reply for a server-side error: a stable detail per kind of error; the
/// error itself, with its causes, goes to the log.
fn server_error(e: &VaultError) -> VaultReplyBody {
    match e {
        VaultError::Invalid(invalid) => {
            tracing::debug!("vault service: request refused: {e}");
            body(VaultReplyStatus::REPLY_BAD_REQUEST, invalid.reply_detail())
        }
        VaultError::LoginFailed => body(
            VaultReplyStatus::REPLY_LOGIN_FAILED,
            "the OPAQUE login did not verify",
        ),
        VaultError::IntentNotAuthentic => {
            tracing::warn!("vault service: {e}");
            body(
                VaultReplyStatus::REPLY_INTENT_NOT_AUTHENTIC,
                "the request's intent tag does not verify under its login's session",
            )
        }
        VaultError::PurposeMismatch { .. } => {
            tracing::warn!("vault service: {e}");
            body(
                VaultReplyStatus::REPLY_BAD_REQUEST,
                "the login was authenticated for another purpose",
            )
        }
        _ => {
            tracing::error!("vault service: {e}");
            body(
                VaultReplyStatus::REPLY_UNAVAILABLE,
                "the vault service failed (HSM or keys); see its log",
            )
        }
    }
}

/// The reply to a client message whose user id is out of bounds.
fn bad_user_id(e: InvalidUserId) -> VaultReplyBody {
    server_error(&e.into())
}

/// The vault's server for one replica, without IO: see the module docs.
///
/// Every reply's `detail` is text of this crate, the same in every build:
/// never a dependency's error message (those go to the log). Safe to share
/// between threads: the login table has its own lock, held for table
/// operations (and a finish's verification) only, never across a fleet step.
pub struct ServiceCore<H: Hsm> {
    server: VaultServer<H>,
    logins: Mutex<Logins>,
    limits: LoginLimits,
    /// What replies carry for clients that trust the fleet through bundles.
    bundles: Mutex<Option<Arc<BundleSource>>>,
}

impl<H: Hsm> std::fmt::Debug for ServiceCore<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceCore")
            .field("replica", &self.server.replica())
            .field("logins", &self.logins.lock().len())
            .finish_non_exhaustive()
    }
}

impl<H: Hsm> ServiceCore<H> {
    /// A core answering for `server`'s replica.
    pub fn new(server: VaultServer<H>, limits: LoginLimits) -> Self {
        Self {
            server,
            logins: Mutex::new(Logins::default()),
            limits,
            bundles: Mutex::new(None),
        }
    }

    /// The replica this core answers for.
    pub fn replica(&self) -> ReplicaId {
        self.server.replica()
    }

    /// Attaches `source`'s validation bundle to every reply from now on, with
    /// the consistency proof from the checkpoint size each request names and
    /// the source's epoch retirements, so clients that pin only the witness and
    /// the operator can check the replies and that the witness's log did not
    /// fork. Call it again at each fleet rotation (or retirement).
    pub fn serve(&self, source: BundleSource) {
        *self.bundles.lock() = Some(Arc::new(source));
    }

    /// Logins kept (awaiting their finalization, or a re-registration's upload).
    pub fn pending_logins(&self) -> usize {
        self.logins.lock().len()
    }

    /// Forgets every login and every concluded finish, as a restart of the
    /// service does. The attempts they spent stay spent.
    pub fn forget_logins(&self) {
        self.logins.lock().clear();
    }

    /// Starts handling one encoded `VaultClientRequest` at `now` (the driver's
    /// monotonic clock). Never panics on what a client sends.
    pub fn begin(&self, request: &[u8], now: Duration) -> Progress {
        let digest = sha256(request);
        let (next, known_checkpoint_size) =
            match wire::decode::<VaultClientRequest>(request, "vault request") {
                Ok(mut r) => {
                    let next = self.dispatch(&r, &digest, now);
                    if let Some(vault_client_request::Op::RegisterFinish(x)) = r.op.as_mut() {
                        x.secret.zeroize();
                    }
                    (next, r.known_checkpoint_size)
                }
                Err(e) => {
                    tracing::debug!("vault service: {e}");
                    let b = body(
                        VaultReplyStatus::REPLY_BAD_REQUEST,
                        "the request does not decode",
                    );
                    (b.into(), None)
                }
            };
        self.progress(digest, known_checkpoint_size, next)
    }

    /// Goes on with `call` now that the fleet answered its step (`Err` if the
    /// step was not committed, or is not known to have been).
    pub fn resume(
        &self,
        call: Call,
        answer: Result<Vec<u8>, NotCommitted>,
        now: Duration,
    ) -> Progress {
        let Call {
            digest,
            known_checkpoint_size,
            stage,
        } = call;
        let next = self.advance(stage, answer, now, digest);
        self.progress(digest, known_checkpoint_size, next)
    }

    fn progress(&self, digest: [u8; 32], known: Option<u64>, next: Next) -> Progress {
        match next {
            Next::Answer(b) => Progress::Reply(self.sign(b, digest, known)),
            Next::Fleet(stage, step) => Progress::Wait {
                call: Call {
                    digest,
                    known_checkpoint_size: known,
                    stage,
                },
                step,
            },
        }
    }

    fn sign(&self, mut reply: VaultReplyBody, digest: [u8; 32], known: Option<u64>) -> Vec<u8> {
        reply.request_digest = digest.to_vec();
        let source = self.bundles.lock().clone();
        let extras = source.map_or_else(ReplyExtras::default, |s| s.extras(known));
        match self.server.sign_with(reply, &extras) {
            Ok(signed) => signed,
            Err(e) => {
                // Without a signature the client will refuse the reply and retry.
                tracing::error!("vault service cannot sign its reply: {e}");
                Vec::new()
            }
        }
    }

    fn dispatch(&self, r: &VaultClientRequest, digest: &[u8; 32], now: Duration) -> Next {
        self.logins.lock().expire(now, self.limits.login_ttl);
        // Every request names its (client, sequence): the fleet deduplicates
        // by it, so a missing one is refused, never taken as (0, 0).
        let Some(id) = r.request.as_ref() else {
            return body(
                VaultReplyStatus::REPLY_BAD_REQUEST,
                "request has no request id",
            )
            .into();
        };
        // A user id is checked once, here, where it enters the service.
        match r.op.as_ref() {
            Some(vault_client_request::Op::RegisterStart(x)) => match UserId::new(&x.user[..]) {
                Ok(user) => Next::Fleet(
                    Stage::RegisterStart {
                        user: user.clone(),
                        registration_request: x.registration_request.clone(),
                        max_attempts: x.max_attempts,
                        secret_digest: x.secret_digest.clone(),
                    },
                    // The generation the registration is issued at, read
                    // through the log (linearizable): it binds into the nonce
                    // tag, and the fleet applies the registration only while
                    // the user is still deleted at it.
                    FleetStep::Read(BackupVault::query_user(user.as_bytes())),
                ),
                Err(e) => bad_user_id(e).into(),
            },
            Some(vault_client_request::Op::RegisterFinish(x)) => {
                match UserId::new(x.user.as_slice()) {
                    Ok(user) => self.register_finish(r, id, &user, x, digest),
                    Err(e) => bad_user_id(e).into(),
                }
            }
            Some(vault_client_request::Op::LoginStart(x)) => match UserId::new(&x.user[..]) {
                Ok(user) => self.login_start(id, user, &x.credential_request),
                Err(e) => bad_user_id(e).into(),
            },
            Some(vault_client_request::Op::LoginFinish(x)) => self.login_finish(r, x, digest, now),
            None => body(
                VaultReplyStatus::REPLY_BAD_REQUEST,
                "request has no operation",
            )
            .into(),
        }
    }

    fn advance(
        &self,
        stage: Stage,
        answer: Result<Vec<u8>, NotCommitted>,
        now: Duration,
        digest: [u8; 32],
    ) -> Next {
        let cap = self.limits.logins_max;
        let outcome = answer.map(|bytes| decode_outcome(&bytes));
        match stage {
            Stage::RegisterStart {
                user,
                registration_request,
                max_attempts,
                secret_digest,
            } => match outcome {
                Ok(Ok(o)) => {
                    let terms = RegistrationTerms {
                        max_attempts,
                        secret_digest: &secret_digest,
                        issued_generation: 0,
                    };
                    self.register_start(&user, &registration_request, terms, &o)
                        .into()
                }
                Ok(Err(e)) => undecodable(&e).into(),
                Err(NotCommitted) => unavailable().into(),
            },
            Stage::Register => match outcome {
                Ok(Ok(o)) => {
                    count_registration(&o, "first");
                    from_outcome(&o).into()
                }
                Ok(Err(e)) => undecodable(&e).into(),
                Err(NotCommitted) => unavailable().into(),
            },
            Stage::Replace { login } => {
                let mut l = self.logins.lock();
                match outcome {
                    Ok(Ok(o)) => {
                        count_registration(&o, "replace");
                        let b = from_outcome(&o);
                        l.conclude(login, digest, b.clone(), now, cap);
                        b.into()
                    }
                    Ok(Err(e)) => {
                        l.abort_commit(login);
                        undecodable(&e).into()
                    }
                    Err(NotCommitted) => {
                        // Not committed (or not known to be): keep the login
                        // for the client's retry of the same request.
                        l.abort_commit(login);
                        unavailable().into()
                    }
                }
            }
            Stage::Consume {
                user,
                request,
                credential_request,
            } => match outcome {
                Ok(Ok(o)) => self.login_respond(&user, request, &credential_request, o, now),
                Ok(Err(e)) => undecodable(&e).into(),
                Err(NotCommitted) => unavailable().into(),
            },
            Stage::Conclude {
                login,
                verified,
                recover,
            } => match outcome {
                Ok(Ok(o)) => {
                    let mut b = self.concluded(&verified, recover.as_ref(), &o);
                    b.purpose = verified.purpose().into();
                    self.logins
                        .lock()
                        .conclude(login, digest, b.clone(), now, cap);
                    b.into()
                }
                Ok(Err(e)) => {
                    self.logins.lock().abort_commit(login);
                    undecodable(&e).into()
                }
                Err(NotCommitted) => {
                    self.logins.lock().abort_commit(login);
                    unavailable().into()
                }
            },
        }
    }

    fn register_start(
        &self,
        user: &UserId,
        registration_request: &[u8],
        mut terms: RegistrationTerms<'_>,
        read: &VaultOutcome,
    ) -> VaultReplyBody {
        match read.status.enum_value() {
            // Only a deleted (or never registered) user may start a
            // registration: a tag issued while the user is registered or locked
            // would bind a generation the user can return to by deleting, and a
            // finish withheld from then could be replayed after the delete
            // (found by the tampering harness, `finding_r1_*`).
            Ok(VaultStatus::VAULT_NOT_REGISTERED) => {}
            Ok(VaultStatus::VAULT_LOCKED) => {
                return body(
                    VaultReplyStatus::REPLY_LOCKED,
                    "this user's record was erased after its last attempt; it cannot be registered again",
                );
            }
            _ => {
                let mut b = body(
                    VaultReplyStatus::REPLY_ALREADY_REGISTERED,
                    "already registered: re-register through a login with the current code",
                );
                b.generation = read.generation;
                b.attempts_left = read.attempts_left;
                return b;
            }
        }
        terms.issued_generation = read.generation;
        match self
            .server
            .registration_start(user, registration_request, &terms)
        {
            Ok(started) => {
                let mut b = body(VaultReplyStatus::REPLY_OK, "");
                b.registration_response = started.response;
                b.credential_nonce = started.nonce.to_vec();
                b.nonce_tag = started.tag.to_vec();
                b.generation = started.issued_generation;
                b
            }
            Err(e) => server_error(&e),
        }
    }

    fn register_finish(
        &self,
        request: &VaultClientRequest,
        id: &VaultRequestId,
        user: &UserId,
        x: &VaultRegisterFinish,
        digest: &[u8; 32],
    ) -> Next {
        if x.login == 0 {
            return match self
                .server
                .register_command(id, user, &Registration::of_finish(x))
            {
                Ok(c) => Next::Fleet(Stage::Register, FleetStep::Propose(c)),
                Err(e) => server_error(&e).into(),
            };
        }
        // Every check that does not need the HSM runs under the lock, before the
        // login is marked: an altered copy leaves it for the genuine one. The
        // command is built (HSM work) outside the lock, with the proven login
        // taken out while it is marked committing (nothing else may use it).
        let proven = {
            let mut l = self.logins.lock();
            if let Some(b) = l.concluded_reply(x.login, digest) {
                // The same upload again (a retry, or a copy held back): what
                // was committed for it, never a second replacement.
                return b.clone().into();
            }
            if l.is_committing(x.login, digest) {
                return committing().into();
            }
            let Some(proven) = l.get(x.login).and_then(|h| h.proven.as_ref()) else {
                return login_unknown().into();
            };
            if proven.user() != user {
                return body(
                    VaultReplyStatus::REPLY_BAD_REQUEST,
                    "the login is for another user",
                )
                .into();
            }
            // The replacement is authorised by the login's session, not by its
            // id (which travels in clear): every byte must carry its intent tag.
            if !request_is_authentic(
                self.server.group(),
                proven.user(),
                proven.session_key(),
                request,
            ) {
                return server_error(&VaultError::IntentNotAuthentic).into();
            }
            if !l.begin_commit(x.login, *digest) {
                return committing().into();
            }
            match l.get_mut(x.login).and_then(|h| h.proven.take()) {
                Some(p) => p,
                None => return login_unknown().into(),
            }
        };
        let command = self.server.replace_command(request, &proven);
        let mut l = self.logins.lock();
        if let Some(h) = l.get_mut(x.login) {
            h.proven = Some(proven);
        }
        match command {
            Ok(c) => Next::Fleet(Stage::Replace { login: x.login }, FleetStep::Propose(c)),
            Err(e) => {
                l.abort_commit(x.login);
                server_error(&e).into()
            }
        }
    }

    fn login_start(&self, id: &VaultRequestId, user: UserId, credential_request: &[u8]) -> Next {
        let command = match self.server.consume_command(id, &user, credential_request) {
            Ok(c) => c,
            Err(e) => return server_error(&e).into(),
        };
        // Room is checked before the attempt is spent: a full table refuses new
        // logins, and never evicts one (its attempt is spent and its client may
        // still finish it).
        {
            let l = self.logins.lock();
            if l.len() >= self.limits.logins_max.max(1)
                || l.of_user(&user) >= self.limits.logins_per_user_max.max(1)
            {
                return body(
                    VaultReplyStatus::REPLY_BUSY,
                    "too many logins await their finalization here; nothing was spent: try later",
                )
                .into();
            }
        }
        // The attempt is spent, durably, before anything that depends on the
        // record leaves this service.
        Next::Fleet(
            Stage::Consume {
                user,
                request: (id.client, id.sequence),
                credential_request: credential_request.to_vec(),
            },
            FleetStep::Propose(command),
        )
    }

    /// The consume committed: the OPAQUE response, and a login kept for the
    /// finish.
    fn login_respond(
        &self,
        user: &UserId,
        request: (u64, u64),
        credential_request: &[u8],
        o: VaultOutcome,
        now: Duration,
    ) -> Next {
        if o.status.enum_value_or(VaultStatus::VAULT_MALFORMED) != VaultStatus::VAULT_OK {
            return from_outcome(&o).into();
        }
        // A re-delivered `LoginStart` (same request id: its consume got the
        // same attempt back, nothing spent): the login already kept for it,
        // answered again as it was, and no second login.
        if let Some(b) = Self::held_reply(&self.logins.lock(), user, request, &o) {
            return b.into();
        }
        let Some(record) = o.record.clone().into_option() else {
            return body(
                VaultReplyStatus::REPLY_UNAVAILABLE,
                "consume outcome without a record",
            )
            .into();
        };
        let (login, response) =
            match self
                .server
                .login_respond(user, credential_request, o.ticket, record, o.erased)
            {
                Ok(x) => x,
                Err(e) => return server_error(&e).into(),
            };
        let login_id = match self.login_id() {
            Ok(l) => l,
            Err(e) => return server_error(&e).into(),
        };
        {
            let mut l = self.logins.lock();
            // A copy of the same request may have won the race.
            if let Some(b) = Self::held_reply(&l, user, request, &o) {
                return b.into();
            }
            l.insert(
                login_id,
                Held {
                    at: now,
                    request,
                    login,
                    response: response.clone(),
                    proven: None,
                    proven_reply: None,
                    committing: None,
                },
            );
        }
        metrics::counter!(telemetry::LOGINS_STARTED).increment(1);
        let mut b = from_outcome(&o);
        b.credential_response = response;
        b.login = login_id;
        b.into()
    }

    /// A fresh, unguessable login id (from the HSM, the service's one source of
    /// randomness).
    fn login_id(&self) -> Result<u64, VaultError> {
        let mut id = [0u8; 8];
        self.server.random(&mut id)?;
        Ok(u64::from_be_bytes(id).max(1))
    }

    fn held_reply(
        l: &Logins,
        user: &UserId,
        request: (u64, u64),
        o: &VaultOutcome,
    ) -> Option<VaultReplyBody> {
        let id = l.id_of(user, request)?;
        let held = l.get(id)?;
        let mut b = from_outcome(o);
        b.credential_response = held.response.clone();
        b.login = id;
        Some(b)
    }

    fn login_finish(
        &self,
        request: &VaultClientRequest,
        x: &VaultLoginFinish,
        digest: &[u8; 32],
        now: Duration,
    ) -> Next {
        // Verified under the lock, without taking the login out: a finish that
        // does not verify (a wrong code, an altered copy) leaves the login for
        // the client's genuine one.
        let verified = {
            let l = self.logins.lock();
            if let Some(b) = l.concluded_reply(x.login, digest) {
                // The same finish again (a retry, or a copy held back): what
                // was committed for it, never a second step.
                return b.clone().into();
            }
            if l.is_committing(x.login, digest) {
                return committing().into();
            }
            let Some(held) = l.get(x.login) else {
                return login_unknown().into();
            };
            if let Some((d, reply)) = &held.proven_reply {
                if d == digest {
                    // The same re-registration finish again: the same answer
                    // (the same nonce and tag), nothing drawn twice.
                    return reply.clone().into();
                }
            }
            if held.committing.is_some() || held.proven.is_some() {
                // Another finish of this login is being committed, or this
                // login was proven for a re-registration and awaits its upload.
                return login_unknown().into();
            }
            match self.server.login_finish(&held.login, request) {
                Ok(v) => v,
                Err(e) => {
                    // The login stays for the genuine finish; if none comes,
                    // its expiry counts the wrong code.
                    metrics::counter!(telemetry::FINISHES_REFUSED).increment(1);
                    let mut b = server_error(&e);
                    b.attempts_left = held.login.attempts_left();
                    b.generation = held.login.generation();
                    return b.into();
                }
            }
        };
        let purpose = verified.purpose();
        let purpose_label = match purpose {
            VaultLoginPurpose::VAULT_REREGISTER_START => "reregister",
            VaultLoginPurpose::VAULT_DELETE => "delete",
            VaultLoginPurpose::VAULT_RECOVER => "recover",
        };
        metrics::counter!(telemetry::LOGINS_SUCCEEDED, "purpose" => purpose_label).increment(1);
        let next = match purpose {
            VaultLoginPurpose::VAULT_REREGISTER_START => {
                self.reregister_start(x.login, verified, digest, now).into()
            }
            VaultLoginPurpose::VAULT_DELETE => self.conclude(x.login, verified, None, digest),
            VaultLoginPurpose::VAULT_RECOVER => {
                self.conclude(x.login, verified, Some(*digest), digest)
            }
        };
        match next {
            Next::Answer(mut b) => {
                b.purpose = purpose.into();
                Next::Answer(b)
            }
            fleet => fleet,
        }
    }

    /// A verified login for a re-registration: the new registration's first
    /// answer; the login stays, proven, for the upload.
    fn reregister_start(
        &self,
        id: u64,
        login: VerifiedLogin,
        digest: &[u8; 32],
        now: Duration,
    ) -> VaultReplyBody {
        let started = match self.server.reregistration_start(&login) {
            Ok(started) => started,
            Err(e) => return server_error(&e),
        };
        let mut b = body(VaultReplyStatus::REPLY_OK, "");
        b.registration_response = started.response;
        b.credential_nonce = started.nonce.to_vec();
        b.nonce_tag = started.tag.to_vec();
        b.login = id;
        b.generation = login.generation();
        b.purpose = VaultLoginPurpose::VAULT_REREGISTER_START.into();
        let mut l = self.logins.lock();
        let Some(held) = l.get_mut(id) else {
            return login_unknown();
        };
        if let Some((d, reply)) = &held.proven_reply {
            // A copy of this finish won the race: its answer, if it is the same
            // finish (this one's nonce is dropped unused).
            return if d == digest {
                reply.clone()
            } else {
                login_unknown()
            };
        }
        if held.proven.is_some() || held.committing.is_some() {
            return login_unknown();
        }
        // The upload is awaited from now: the login lives `login_ttl` more.
        held.at = now;
        held.proven = Some(login);
        held.proven_reply = Some((*digest, b.clone()));
        b
    }

    /// A verified login for a recovery (`recover`: its request digest, for the
    /// secret's transport) or a delete (`None`): its command, to commit; the
    /// login is marked committing `digest` until the fleet answers.
    fn conclude(
        &self,
        id: u64,
        login: VerifiedLogin,
        recover: Option<[u8; 32]>,
        digest: &[u8; 32],
    ) -> Next {
        let command = match recover {
            Some(_) => self.server.reset_command(&login),
            None => self.server.delete_command(&login),
        };
        let command = match command {
            Ok(c) => c,
            Err(e) => return server_error(&e).into(),
        };
        {
            let mut l = self.logins.lock();
            if !l.begin_commit(id, *digest) {
                // A copy of this same finish took it first: ask again for its
                // outcome; another finish of this login finds no login.
                return if l.is_committing(id, digest) {
                    committing().into()
                } else {
                    login_unknown().into()
                };
            }
        }
        Next::Fleet(
            Stage::Conclude {
                login: id,
                verified: Box::new(login),
                recover,
            },
            FleetStep::Propose(command),
        )
    }

    /// The reply to a verified login's committed reset (with the secret, for
    /// the client's session) or delete.
    fn concluded(
        &self,
        login: &VerifiedLogin,
        recover: Option<&[u8; 32]>,
        o: &VaultOutcome,
    ) -> VaultReplyBody {
        let Some(digest) = recover else {
            return from_outcome(o);
        };
        if o.status.enum_value_or(VaultStatus::VAULT_MALFORMED) != VaultStatus::VAULT_OK {
            return from_outcome(o);
        }
        let Some(record) = o.record.clone().into_option() else {
            return body(
                VaultReplyStatus::REPLY_UNAVAILABLE,
                "reset outcome without a record",
            );
        };
        let secret = match self.server.open_secret(login.user(), &record) {
            Ok(s) => s,
            Err(e) => return server_error(&e),
        };
        let mut b = from_outcome(o);
        match self.server.encrypt_for_client(login, digest, &secret) {
            Ok((nonce, ct)) => {
                b.secret_nonce = nonce;
                b.encrypted_secret = ct;
                b
            }
            Err(e) => server_error(&e),
        }
    }
}
