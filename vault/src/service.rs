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
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use zeroize::Zeroize;

use crate::crypto::sha256;
use crate::error::{Unreachable, VaultError};
use crate::machine::decode_outcome;
use crate::server::{PendingLogin, RegistrationNonce, VaultServer};
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
    /// Logins awaiting the client's finalization kept at most (the oldest is
    /// dropped beyond it; its attempt stays spent).
    pub logins_max: usize,
    /// How long a login may await its finalization.
    pub login_ttl: Duration,
    /// The runtime client session the service proposes through.
    pub client: ClientConfig,
}

impl Default for VaultServiceConfig {
    fn default() -> Self {
        Self {
            logins_max: 10_000,
            login_ttl: Duration::from_secs(60),
            client: ClientConfig::default(),
        }
    }
}

struct Logins {
    /// Awaiting the client's finalization.
    pending: BTreeMap<u64, (Instant, PendingLogin)>,
    /// Proven, awaiting the new registration of a re-registration.
    proven: BTreeMap<u64, (Instant, PendingLogin)>,
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
    bundle: Mutex<Vec<u8>>,
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
    }
}

fn from_outcome(o: &VaultOutcome) -> VaultReplyBody {
    let mut b = body(outcome_status(o), o.detail.clone());
    b.attempts_left = o.attempts_left;
    b.generation = o.generation;
    b
}

fn unavailable(e: &ClientError) -> VaultReplyBody {
    tracing::warn!("vault service: the fleet did not commit a step: {e}");
    body(
        VaultReplyStatus::REPLY_UNAVAILABLE,
        "the fleet did not commit the step",
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
            logins: Mutex::new(Logins {
                pending: BTreeMap::new(),
                proven: BTreeMap::new(),
            }),
            cfg,
            stopped: AtomicBool::new(false),
            bundle: Mutex::new(Vec::new()),
        })
    }

    /// Stops answering (as when the host goes down): every call is unreachable
    /// and logins awaiting finalization are forgotten. Their attempts stay spent.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let mut l = self.logins.lock();
        l.pending.clear();
        l.proven.clear();
    }

    /// Attaches the fleet's validation bundle (`audit::Bundle` encoding) to every
    /// reply from now on, so clients that pin only the witness and the operator
    /// can check the replies. Call it again at each fleet rotation.
    pub fn serve_bundle(&self, bundle: Vec<u8>) {
        *self.bundle.lock() = bundle;
    }

    /// Logins awaiting their finalization.
    pub fn pending_logins(&self) -> usize {
        self.logins.lock().pending.len()
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

    fn keep(
        map: &mut BTreeMap<u64, (Instant, PendingLogin)>,
        id: u64,
        login: PendingLogin,
        max: usize,
    ) {
        while map.len() >= max.max(1) {
            let oldest = map.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| *k);
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(id, (Self::now(), login));
    }

    fn expire(&self) {
        let now = Self::now();
        let ttl = self.cfg.login_ttl;
        let mut l = self.logins.lock();
        l.pending.retain(|_, (at, _)| now.duration_since(*at) < ttl);
        l.proven.retain(|_, (at, _)| now.duration_since(*at) < ttl);
    }

    /// Handles one encoded `VaultClientRequest` and returns the encoded signed
    /// `VaultReply`. Never panics on what a client sends.
    pub fn handle(&self, request: &[u8]) -> Vec<u8> {
        let digest = sha256(request);
        let mut reply = match wire::decode::<VaultClientRequest>(request, "vault request") {
            Ok(r) => self.dispatch(r, &digest),
            Err(e) => {
                tracing::debug!("vault service: {e}");
                body(
                    VaultReplyStatus::REPLY_BAD_REQUEST,
                    "the request does not decode",
                )
            }
        };
        reply.request_digest = digest.to_vec();
        let bundle = self.bundle.lock().clone();
        match self.server.sign_with_bundle(reply, &bundle) {
            Ok(signed) => signed,
            Err(e) => {
                // Without a signature the client will refuse the reply and retry.
                tracing::error!("vault service cannot sign its reply: {e}");
                Vec::new()
            }
        }
    }

    fn dispatch(&self, r: VaultClientRequest, digest: &[u8; 32]) -> VaultReplyBody {
        self.expire();
        let id = r.request.clone().into_option().unwrap_or_default();
        // A user id is checked once, here, where it enters the service.
        match r.op {
            Some(vault_client_request::Op::RegisterStart(x)) => match UserId::new(x.user) {
                Ok(user) => self.register_start(&user, &x.registration_request),
                Err(e) => bad_user_id(e),
            },
            Some(vault_client_request::Op::RegisterFinish(x)) => self.register_finish(&id, x),
            Some(vault_client_request::Op::LoginStart(x)) => match UserId::new(x.user) {
                Ok(user) => self.login_start(&id, &user, &x.credential_request),
                Err(e) => bad_user_id(e),
            },
            Some(vault_client_request::Op::LoginFinish(x)) => self.login_finish(&id, x, digest),
            None => body(
                VaultReplyStatus::REPLY_BAD_REQUEST,
                "request has no operation",
            ),
        }
    }

    fn register_start(&self, user: &UserId, registration_request: &[u8]) -> VaultReplyBody {
        match self.server.registration_start(user, registration_request) {
            Ok(started) => {
                let mut b = body(VaultReplyStatus::REPLY_OK, "");
                b.registration_response = started.response;
                b.credential_nonce = started.nonce.to_vec();
                b.nonce_tag = started.tag.to_vec();
                b
            }
            Err(e) => server_error(&e),
        }
    }

    fn register_finish(&self, id: &VaultRequestId, mut x: VaultRegisterFinish) -> VaultReplyBody {
        let reply = match UserId::new(x.user.as_slice()) {
            Ok(user) => self.register_finish_inner(id, &user, &x),
            Err(e) => bad_user_id(e),
        };
        x.secret.zeroize();
        reply
    }

    fn register_finish_inner(
        &self,
        id: &VaultRequestId,
        user: &UserId,
        x: &VaultRegisterFinish,
    ) -> VaultReplyBody {
        let nonce = RegistrationNonce {
            nonce: &x.credential_nonce,
            tag: &x.nonce_tag,
        };
        if x.login == 0 {
            return match self.server.register_command(
                id,
                user,
                &x.registration_upload,
                &nonce,
                &x.secret,
                x.max_attempts,
            ) {
                Ok(c) => match self.propose(c) {
                    Ok(o) => from_outcome(&o),
                    Err(b) => *b,
                },
                Err(e) => server_error(&e),
            };
        }
        let Some((at, login)) = self.logins.lock().proven.remove(&x.login) else {
            return body(
                VaultReplyStatus::REPLY_LOGIN_UNKNOWN,
                "no proven login with this id here (expired, used, or another service's): log in again",
            );
        };
        if login.user() != user {
            return body(
                VaultReplyStatus::REPLY_BAD_REQUEST,
                "the login is for another user",
            );
        }
        let command = self.server.replace_command(
            id,
            &login,
            &x.registration_upload,
            &nonce,
            &x.secret,
            x.max_attempts,
        );
        let reply = match command {
            Ok(c) => self.propose(c).map(|o| from_outcome(&o)),
            Err(e) => Ok(server_error(&e)),
        };
        match reply {
            Ok(b) => b,
            Err(b) => {
                // Not committed (or not known to be): the client may retry.
                self.logins.lock().proven.insert(x.login, (at, login));
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
        // The attempt is spent, durably, before anything that depends on the
        // record leaves this service.
        let o = match self.propose(command) {
            Ok(o) => o,
            Err(b) => return *b,
        };
        if o.status.enum_value_or(VaultStatus::VAULT_MALFORMED) != VaultStatus::VAULT_OK {
            return from_outcome(&o);
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
        Self::keep(
            &mut self.logins.lock().pending,
            login_id,
            login,
            self.cfg.logins_max,
        );
        let mut b = from_outcome(&o);
        b.credential_response = response;
        b.login = login_id;
        b
    }

    fn login_finish(
        &self,
        id: &VaultRequestId,
        x: VaultLoginFinish,
        digest: &[u8; 32],
    ) -> VaultReplyBody {
        let Some((at, login)) = self.logins.lock().pending.remove(&x.login) else {
            return body(
                VaultReplyStatus::REPLY_LOGIN_UNKNOWN,
                "no login awaiting finalization with this id here (expired, finished, or another service's): start again",
            );
        };
        let session_key = match self.server.login_finish(&login, &x.credential_finalization) {
            Ok(k) => k,
            Err(e) => {
                // The attempt stays spent.
                let mut b = server_error(&e);
                b.attempts_left = login.attempts_left();
                b.generation = login.generation();
                return b;
            }
        };
        let proven = ProvenLogin {
            id: x.login,
            at,
            login,
        };
        match x.purpose.enum_value_or(VaultLoginPurpose::VAULT_RECOVER) {
            VaultLoginPurpose::VAULT_REREGISTER_START => {
                self.reregister_start(proven, &x.registration_request)
            }
            VaultLoginPurpose::VAULT_DELETE => self.delete(id, proven),
            VaultLoginPurpose::VAULT_RECOVER => self.recover(id, proven, &session_key, digest),
        }
    }

    /// A proven login for a re-registration: the new registration's first
    /// answer; the login waits among the proven ones for the upload.
    fn reregister_start(&self, proven: ProvenLogin, registration_request: &[u8]) -> VaultReplyBody {
        let ProvenLogin { id, login, .. } = proven;
        let started = match self
            .server
            .registration_start(login.user(), registration_request)
        {
            Ok(started) => started,
            Err(e) => return server_error(&e),
        };
        let generation = login.generation();
        Self::keep(
            &mut self.logins.lock().proven,
            id,
            login,
            self.cfg.logins_max,
        );
        let mut b = body(VaultReplyStatus::REPLY_OK, "");
        b.registration_response = started.response;
        b.credential_nonce = started.nonce.to_vec();
        b.nonce_tag = started.tag.to_vec();
        b.login = id;
        b.generation = generation;
        b
    }

    /// A proven login for a delete: proposes it.
    fn delete(&self, request: &VaultRequestId, proven: ProvenLogin) -> VaultReplyBody {
        let c = self.server.delete_command(request, &proven.login);
        match self.propose(c) {
            Ok(o) => from_outcome(&o),
            Err(b) => {
                self.restore_pending(proven);
                *b
            }
        }
    }

    /// A proven login for a recovery: forgives its attempts, then sends the
    /// secret encrypted under the login's session key.
    fn recover(
        &self,
        request: &VaultRequestId,
        proven: ProvenLogin,
        session_key: &[u8],
        digest: &[u8; 32],
    ) -> VaultReplyBody {
        let c = self.server.reset_command(request, &proven.login);
        let o = match self.propose(c) {
            Ok(o) => o,
            Err(b) => {
                // Let the client retry its finalization.
                self.restore_pending(proven);
                return *b;
            }
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
        let user = proven.login.user();
        let secret = match self.server.open_secret(user, &record) {
            Ok(s) => s,
            Err(e) => return server_error(&e),
        };
        let mut b = from_outcome(&o);
        match self
            .server
            .encrypt_for_client(session_key, digest, user, &secret)
        {
            Ok((nonce, ct)) => {
                b.secret_nonce = nonce;
                b.encrypted_secret = ct;
                b
            }
            Err(e) => server_error(&e),
        }
    }

    /// Puts a login back among those awaiting their finalization (its step was
    /// not committed, so the client may retry it).
    fn restore_pending(&self, proven: ProvenLogin) {
        self.logins
            .lock()
            .pending
            .insert(proven.id, (proven.at, proven.login));
    }
}

/// A login whose finalization verified, as its purpose's step gets it.
struct ProvenLogin {
    id: u64,
    at: Instant,
    login: PendingLogin,
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
