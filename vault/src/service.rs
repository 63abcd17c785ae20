//! `VaultService`: the vault's server beside a node of the threaded runtime. It
//! answers the client's OPAQUE messages, proposes each step through consensus
//! with a runtime [`Client`] session, and signs every reply with its replica's
//! response key.
//!
//! The order that makes the guess limit hold: a login's `consume` command must be
//! committed (durable on a majority) before the OPAQUE response, the only message
//! that lets a client test a guess, leaves the service. A crash after the commit
//! leaves the attempt spent; a crash before it leaves nothing to test.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use zeroize::Zeroize;

use crate::bundle_source::{BundleSource, ReplyExtras};
use crate::crypto::{request_is_authentic, sha256};
use crate::error::{Unreachable, VaultError};
use crate::machine::{decode_outcome, BackupVault};
use crate::server::{PendingLogin, Registration, RegistrationTerms, VaultServer, VerifiedLogin};
use crate::user_id::{InvalidUserId, UserId};
use crate::wire::{self};
use crate::wire::{
    vault_client_request, VaultClientRequest, VaultLoginFinish, VaultLoginPurpose, VaultOutcome,
    VaultRegisterFinish, VaultReplyBody, VaultReplyStatus, VaultRequestId, VaultStatus,
};
use vaultfleet::hsm::Hsm;
use vaultfleet::runtime::{Client, ClientConfig, ClientError};
use vaultfleet::{NodeHandle, ReplicaId};

/// Something a [`VaultClient`](super::VaultClient) can send requests to: a
/// [`VaultService`] in process, or a network stub in front of one.
pub trait VaultEndpoint: Send + Sync {
    /// The replica that answers.
    fn replica(&self) -> ReplicaId;
    /// Sends one encoded `VaultClientRequest`; returns the encoded, signed
    /// `VaultReply`.
    fn call(&self, request: &[u8]) -> Result<Vec<u8>, Unreachable>;
}

/// Limits of a [`VaultService`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaultServiceConfig {
    /// Logins kept at most between their start and their finish (or a
    /// re-registration's upload). Beyond it a new login is refused *before* its
    /// attempt is spent; no login is ever evicted to make room.
    pub logins_max: usize,
    /// Logins of one user kept at most (refused beyond it, before spending).
    pub logins_per_user_max: usize,
    /// How long a login may await its finalization.
    pub login_ttl: Duration,
    /// The runtime client session the service proposes through.
    pub client: ClientConfig,
}

impl Default for VaultServiceConfig {
    fn default() -> Self {
        Self {
            logins_max: 10_000,
            logins_per_user_max: 8,
            login_ttl: Duration::from_secs(60),
            client: ClientConfig::default(),
        }
    }
}

/// A login the service keeps between two client messages.
struct Held {
    at: Instant,
    login: PendingLogin,
    /// The `LoginStart` request id it answers.
    request: (u64, u64),
    /// The OPAQUE credential response sent for it: a re-delivered `LoginStart`
    /// (same request id, so the fleet gives the same attempt back) gets it
    /// again, and no second login.
    response: Vec<u8>,
    /// After a verified `VAULT_REREGISTER_START` finish: the login, awaiting
    /// the new registration's upload (its session key authenticates it).
    proven: Option<VerifiedLogin>,
}

/// Where a login is filed besides its id: its user and its `LoginStart`'s
/// request id (client, sequence), which it knows before the consume commits.
/// Tickets are unique too (the vault's ticket clock), but only once committed.
type LoginKey = (UserId, u64, u64);

fn login_key(user: &UserId, request: (u64, u64)) -> LoginKey {
    (user.clone(), request.0, request.1)
}

/// The logins kept, by login id and by (user, request id): one per consume.
#[derive(Default)]
struct Logins {
    by_id: BTreeMap<u64, Held>,
    by_request: BTreeMap<LoginKey, u64>,
}

impl Logins {
    fn of_user(&self, user: &UserId) -> usize {
        self.by_request
            .range(login_key(user, (0, 0))..=login_key(user, (u64::MAX, u64::MAX)))
            .count()
    }

    fn insert(&mut self, id: u64, held: Held) {
        self.by_request
            .insert(login_key(held.login.user(), held.request), id);
        self.by_id.insert(id, held);
    }

    fn remove(&mut self, id: u64) -> Option<Held> {
        let held = self.by_id.remove(&id)?;
        self.by_request
            .remove(&login_key(held.login.user(), held.request));
        Some(held)
    }

    fn retain(&mut self, keep: impl Fn(&Held) -> bool) {
        let gone: Vec<u64> = self
            .by_id
            .iter()
            .filter(|(_, h)| !keep(h))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.remove(id);
        }
    }

    fn clear(&mut self) {
        self.by_id.clear();
        self.by_request.clear();
    }
}

/// The vault's server for one replica, over the threaded runtime.
///
/// Every reply's `detail` is text of this crate, the same in every build:
/// never a dependency's error message (those go to the log).
pub struct VaultService<H: Hsm> {
    server: VaultServer<H>,
    client: Client,
    logins: Mutex<Logins>,
    cfg: VaultServiceConfig,
    stopped: AtomicBool,
    /// What replies carry for clients that trust the fleet through bundles.
    bundles: Mutex<Option<Arc<BundleSource>>>,
}

impl<H: Hsm> std::fmt::Debug for VaultService<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultService")
            .field("replica", &self.server.replica())
            .field("session", &self.client.session())
            .finish_non_exhaustive()
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

fn unavailable(e: &ClientError) -> VaultReplyBody {
    tracing::warn!("vault service: the fleet did not commit a step: {e}");
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

impl<H: Hsm> VaultService<H> {
    /// A service for `server`'s replica proposing through the fleet of `nodes`
    /// (a runtime client session is registered now).
    pub fn start(
        server: VaultServer<H>,
        nodes: Vec<NodeHandle>,
        cfg: VaultServiceConfig,
    ) -> Result<Self, ClientError> {
        let client = Client::connect(nodes, cfg.client)?;
        Ok(Self {
            server,
            client,
            logins: Mutex::new(Logins::default()),
            cfg,
            stopped: AtomicBool::new(false),
            bundles: Mutex::new(None),
        })
    }

    /// Stops answering (as when the host goes down): every call is unreachable
    /// and logins awaiting finalization are forgotten. Their attempts stay spent.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.logins.lock().clear();
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
        self.logins.lock().by_id.len()
    }

    /// Proposes `command` and waits for its committed outcome; the error is the
    /// reply to give when the fleet did not commit it.
    fn propose(&self, command: Vec<u8>) -> Result<VaultOutcome, Box<VaultReplyBody>> {
        let bytes = self
            .client
            .propose(command)
            .map_err(|e| Box::new(unavailable(&e)))?;
        decode_outcome(&bytes).map_err(|e| {
            tracing::error!("vault service: {e}");
            Box::new(body(
                VaultReplyStatus::REPLY_UNAVAILABLE,
                "the fleet's outcome does not decode",
            ))
        })
    }

    /// A fresh, unguessable login id (from the HSM, the service's one source of
    /// randomness).
    fn login_id(&self) -> Result<u64, VaultError> {
        let mut id = [0u8; 8];
        self.server.random(&mut id)?;
        Ok(u64::from_be_bytes(id).max(1))
    }

    #[allow(clippy::disallowed_methods)] // logins expire by the host's clock
    fn now() -> Instant {
        Instant::now()
    }

    fn expire(&self) {
        let now = Self::now();
        let ttl = self.cfg.login_ttl;
        self.logins
            .lock()
            .retain(|h| now.duration_since(h.at) < ttl);
    }

    /// Handles one encoded `VaultClientRequest` and returns the encoded signed
    /// `VaultReply`. Never panics on what a client sends.
    pub fn handle(&self, request: &[u8]) -> Vec<u8> {
        let digest = sha256(request);
        let mut known_checkpoint_size = None;
        let mut reply = match wire::decode::<VaultClientRequest>(request, "vault request") {
            Ok(mut r) => {
                known_checkpoint_size = r.known_checkpoint_size;
                let reply = self.dispatch(&r, &digest);
                if let Some(vault_client_request::Op::RegisterFinish(x)) = r.op.as_mut() {
                    x.secret.zeroize();
                }
                reply
            }
            Err(e) => {
                tracing::debug!("vault service: {e}");
                body(
                    VaultReplyStatus::REPLY_BAD_REQUEST,
                    "the request does not decode",
                )
            }
        };
        reply.request_digest = digest.to_vec();
        let source = self.bundles.lock().clone();
        let extras = source.map_or_else(ReplyExtras::default, |s| s.extras(known_checkpoint_size));
        match self.server.sign_with(reply, &extras) {
            Ok(signed) => signed,
            Err(e) => {
                // Without a signature the client will refuse the reply and retry.
                tracing::error!("vault service cannot sign its reply: {e}");
                Vec::new()
            }
        }
    }

    fn dispatch(&self, r: &VaultClientRequest, digest: &[u8; 32]) -> VaultReplyBody {
        self.expire();
        // Every request names its (client, sequence): the fleet deduplicates
        // by it, so a missing one is refused, never taken as (0, 0).
        let Some(id) = r.request.as_ref() else {
            return body(
                VaultReplyStatus::REPLY_BAD_REQUEST,
                "request has no request id",
            );
        };
        // A user id is checked once, here, where it enters the service.
        match r.op.as_ref() {
            Some(vault_client_request::Op::RegisterStart(x)) => match UserId::new(&x.user[..]) {
                Ok(user) => self.register_start(&user, &x.registration_request, x),
                Err(e) => bad_user_id(e),
            },
            Some(vault_client_request::Op::RegisterFinish(x)) => {
                match UserId::new(x.user.as_slice()) {
                    Ok(user) => self.register_finish(r, id, &user, x),
                    Err(e) => bad_user_id(e),
                }
            }
            Some(vault_client_request::Op::LoginStart(x)) => match UserId::new(&x.user[..]) {
                Ok(user) => self.login_start(id, &user, &x.credential_request),
                Err(e) => bad_user_id(e),
            },
            Some(vault_client_request::Op::LoginFinish(x)) => self.login_finish(r, x, digest),
            None => body(
                VaultReplyStatus::REPLY_BAD_REQUEST,
                "request has no operation",
            ),
        }
    }

    fn register_start(
        &self,
        user: &UserId,
        registration_request: &[u8],
        x: &crate::wire::VaultRegisterStart,
    ) -> VaultReplyBody {
        // The generation the registration is issued at, read through the log
        // (linearizable): it binds into the nonce tag, and the fleet applies the
        // registration only while the user is still deleted at it.
        let read = match self.client.read(BackupVault::query_user(user.as_bytes())) {
            Ok(bytes) => bytes,
            Err(e) => return unavailable(&e),
        };
        let issued_generation = match decode_outcome(&read) {
            // Only a deleted (or never registered) user may start a registration:
            // a tag issued while the user is registered or locked would bind a
            // generation the user can return to by deleting, and a finish
            // withheld from then could be replayed after the delete (found by the
            // tampering harness, `finding_r1_*`).
            Ok(o) if o.status.enum_value() == Ok(VaultStatus::VAULT_NOT_REGISTERED) => o.generation,
            Ok(o) if o.status.enum_value() == Ok(VaultStatus::VAULT_LOCKED) => {
                return body(
                    VaultReplyStatus::REPLY_LOCKED,
                    "this user's record was erased after its last attempt; it cannot be registered again",
                );
            }
            Ok(o) => {
                let mut b = body(
                    VaultReplyStatus::REPLY_ALREADY_REGISTERED,
                    "already registered: re-register through a login with the current code",
                );
                b.generation = o.generation;
                b.attempts_left = o.attempts_left;
                return b;
            }
            Err(e) => {
                tracing::error!("vault service: {e}");
                return body(
                    VaultReplyStatus::REPLY_UNAVAILABLE,
                    "the fleet's answer does not decode",
                );
            }
        };
        let terms = RegistrationTerms {
            max_attempts: x.max_attempts,
            secret_digest: &x.secret_digest,
            issued_generation,
        };
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
    ) -> VaultReplyBody {
        if x.login == 0 {
            return match self
                .server
                .register_command(id, user, &Registration::of_finish(x))
            {
                Ok(c) => match self.propose(c) {
                    Ok(o) => from_outcome(&o),
                    Err(b) => *b,
                },
                Err(e) => server_error(&e),
            };
        }
        // Every check that does not need the HSM runs under the lock, before the
        // login leaves the table: an altered copy leaves it for the genuine one.
        let held = {
            let mut l = self.logins.lock();
            let Some(proven) = l.by_id.get(&x.login).and_then(|h| h.proven.as_ref()) else {
                return login_unknown();
            };
            if proven.user() != user {
                return body(
                    VaultReplyStatus::REPLY_BAD_REQUEST,
                    "the login is for another user",
                );
            }
            // The replacement is authorised by the login's session, not by its
            // id (which travels in clear): every byte must carry its intent tag.
            if !request_is_authentic(
                self.server.group(),
                proven.user(),
                proven.session_key(),
                request,
            ) {
                return server_error(&VaultError::IntentNotAuthentic);
            }
            match l.remove(x.login) {
                Some(h) => h,
                None => return login_unknown(),
            }
        };
        let Some(proven) = held.proven.as_ref() else {
            return login_unknown();
        };
        let reply = match self.server.replace_command(request, proven) {
            Ok(c) => self.propose(c).map(|o| from_outcome(&o)),
            Err(e) => Err(Box::new(server_error(&e))),
        };
        match reply {
            Ok(b) => b,
            Err(b) => {
                // Not committed (or not known to be): keep the login for a retry.
                self.logins.lock().insert(x.login, held);
                *b
            }
        }
    }

    fn login_start(
        &self,
        id: &VaultRequestId,
        user: &UserId,
        credential_request: &[u8],
    ) -> VaultReplyBody {
        let command = match self.server.consume_command(id, user, credential_request) {
            Ok(c) => c,
            Err(e) => return server_error(&e),
        };
        // Room is checked before the attempt is spent: a full table refuses new
        // logins, and never evicts one (its attempt is spent and its client may
        // still finish it).
        {
            let l = self.logins.lock();
            if l.by_id.len() >= self.cfg.logins_max.max(1)
                || l.of_user(user) >= self.cfg.logins_per_user_max.max(1)
            {
                return body(
                    VaultReplyStatus::REPLY_BUSY,
                    "too many logins await their finalization here; nothing was spent: try later",
                );
            }
        }
        // The attempt is spent, durably, before anything that depends on the
        // record leaves this service.
        let o = match self.propose(command) {
            Ok(o) => o,
            Err(b) => return *b,
        };
        if o.status.enum_value_or(VaultStatus::VAULT_MALFORMED) != VaultStatus::VAULT_OK {
            return from_outcome(&o);
        }
        let request = (id.client, id.sequence);
        if let Some(b) = self.login_again(user, request, &o) {
            return b;
        }
        let Some(record) = o.record.clone().into_option() else {
            return body(
                VaultReplyStatus::REPLY_UNAVAILABLE,
                "consume outcome without a record",
            );
        };
        let (login, response) =
            match self
                .server
                .login_respond(user, credential_request, o.ticket, record, o.erased)
            {
                Ok(x) => x,
                Err(e) => return server_error(&e),
            };
        let login_id = match self.login_id() {
            Ok(l) => l,
            Err(e) => return server_error(&e),
        };
        {
            let mut l = self.logins.lock();
            // A copy of the same request may have won the race.
            if let Some(b) = Self::held_reply(&l, user, request, &o) {
                return b;
            }
            l.insert(
                login_id,
                Held {
                    at: Self::now(),
                    request,
                    login,
                    response: response.clone(),
                    proven: None,
                },
            );
        }
        let mut b = from_outcome(&o);
        b.credential_response = response;
        b.login = login_id;
        b
    }

    /// A re-delivered `LoginStart` (same request id: its consume got the same
    /// attempt back, nothing spent): the login already kept for it, answered
    /// again as it was, and no second login.
    fn login_again(
        &self,
        user: &UserId,
        request: (u64, u64),
        o: &VaultOutcome,
    ) -> Option<VaultReplyBody> {
        Self::held_reply(&self.logins.lock(), user, request, o)
    }

    fn held_reply(
        l: &Logins,
        user: &UserId,
        request: (u64, u64),
        o: &VaultOutcome,
    ) -> Option<VaultReplyBody> {
        let id = *l.by_request.get(&login_key(user, request))?;
        let held = l.by_id.get(&id)?;
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
    ) -> VaultReplyBody {
        // Verified under the lock, without taking the login out: a finish that
        // does not verify (a wrong code, an altered copy) leaves the login for
        // the client's genuine one.
        let verified = {
            let l = self.logins.lock();
            let Some(held) = l.by_id.get(&x.login) else {
                return login_unknown();
            };
            match self.server.login_finish(&held.login, request) {
                Ok(v) => v,
                Err(e) => {
                    let mut b = server_error(&e);
                    b.attempts_left = held.login.attempts_left();
                    b.generation = held.login.generation();
                    return b;
                }
            }
        };
        let purpose = verified.purpose();
        let mut b = match purpose {
            VaultLoginPurpose::VAULT_REREGISTER_START => self.reregister_start(x.login, verified),
            VaultLoginPurpose::VAULT_DELETE => self.conclude(x.login, verified, None),
            VaultLoginPurpose::VAULT_RECOVER => self.conclude(x.login, verified, Some(digest)),
        };
        b.purpose = purpose.into();
        b
    }

    /// A verified login for a re-registration: the new registration's first
    /// answer; the login stays, proven, for the upload.
    fn reregister_start(&self, id: u64, login: VerifiedLogin) -> VaultReplyBody {
        let started = match self.server.reregistration_start(&login) {
            Ok(started) => started,
            Err(e) => return server_error(&e),
        };
        let generation = login.generation();
        {
            let mut l = self.logins.lock();
            let Some(held) = l.by_id.get_mut(&id) else {
                return login_unknown();
            };
            held.at = Self::now();
            held.proven = Some(login);
        }
        let mut b = body(VaultReplyStatus::REPLY_OK, "");
        b.registration_response = started.response;
        b.credential_nonce = started.nonce.to_vec();
        b.nonce_tag = started.tag.to_vec();
        b.login = id;
        b.generation = generation;
        b
    }

    /// A verified login for a recovery (`digest` of its request, for the
    /// secret's transport) or a delete (`None`): proposes its command; a step not
    /// committed puts the login back for the client's retry.
    fn conclude(
        &self,
        id: u64,
        login: VerifiedLogin,
        recover: Option<&[u8; 32]>,
    ) -> VaultReplyBody {
        let command = match recover {
            Some(_) => self.server.reset_command(&login),
            None => self.server.delete_command(&login),
        };
        let command = match command {
            Ok(c) => c,
            Err(e) => return server_error(&e),
        };
        let Some(held) = self.logins.lock().remove(id) else {
            // Another copy of this finish took it first.
            return login_unknown();
        };
        let o = match self.propose(command) {
            Ok(o) => o,
            Err(b) => {
                self.logins.lock().insert(id, held);
                return *b;
            }
        };
        let Some(digest) = recover else {
            return from_outcome(&o);
        };
        if o.status.enum_value_or(VaultStatus::VAULT_MALFORMED) != VaultStatus::VAULT_OK {
            return from_outcome(&o);
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
        let mut b = from_outcome(&o);
        match self.server.encrypt_for_client(&login, digest, &secret) {
            Ok((nonce, ct)) => {
                b.secret_nonce = nonce;
                b.encrypted_secret = ct;
                b
            }
            Err(e) => server_error(&e),
        }
    }
}

impl<H: Hsm> VaultEndpoint for VaultService<H> {
    fn replica(&self) -> ReplicaId {
        self.server.replica()
    }

    fn call(&self, request: &[u8]) -> Result<Vec<u8>, Unreachable> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(Unreachable {
                replica: self.server.replica(),
            });
        }
        Ok(self.handle(request))
    }
}
