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

use super::machine::decode_outcome;
use super::server::{sha256, PendingLogin, RegistrationNonce, VaultError, VaultServer};
use crate::wire::{self};
use crate::wire::{
    vault_client_request, VaultClientRequest, VaultLoginPurpose, VaultOutcome, VaultReplyBody,
    VaultReplyStatus, VaultRequestId, VaultStatus,
};
use vaultfleet::hsm::Hsm;
use vaultfleet::runtime::{Client, ClientConfig, ClientError};
use vaultfleet::{NodeHandle, ReplicaId};

/// The service at the other end could not be reached (its host is down, or it
/// was stopped). The request may or may not have had an effect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("vault service of replica {replica} unreachable")]
pub struct Unreachable {
    /// The replica whose service did not answer.
    pub replica: ReplicaId,
}

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
    body(
        VaultReplyStatus::REPLY_UNAVAILABLE,
        format!("the fleet did not commit the step: {e}"),
    )
}

fn server_error(e: &VaultError) -> VaultReplyBody {
    match e {
        VaultError::Invalid { .. } => body(VaultReplyStatus::REPLY_BAD_REQUEST, e.to_string()),
        VaultError::LoginFailed => body(VaultReplyStatus::REPLY_LOGIN_FAILED, e.to_string()),
        _ => {
            tracing::error!("vault service: {e}");
            body(VaultReplyStatus::REPLY_UNAVAILABLE, e.to_string())
        }
    }
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
            Box::new(body(VaultReplyStatus::REPLY_UNAVAILABLE, e.to_string()))
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
            Err(e) => body(VaultReplyStatus::REPLY_BAD_REQUEST, e.to_string()),
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
        match r.op {
            Some(vault_client_request::Op::RegisterStart(x)) => {
                match self
                    .server
                    .registration_start(&x.user, &x.registration_request)
                {
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
            Some(vault_client_request::Op::RegisterFinish(x)) => self.register_finish(&id, x),
            Some(vault_client_request::Op::LoginStart(x)) => {
                self.login_start(&id, &x.user, &x.credential_request)
            }
            Some(vault_client_request::Op::LoginFinish(x)) => self.login_finish(&id, x, digest),
            None => body(
                VaultReplyStatus::REPLY_BAD_REQUEST,
                "request has no operation",
            ),
        }
    }

    fn register_finish(
        &self,
        id: &VaultRequestId,
        mut x: crate::wire::VaultRegisterFinish,
    ) -> VaultReplyBody {
        let reply = self.register_finish_inner(id, &x);
        x.secret.zeroize();
        reply
    }

    fn register_finish_inner(
        &self,
        id: &VaultRequestId,
        x: &crate::wire::VaultRegisterFinish,
    ) -> VaultReplyBody {
        let nonce = RegistrationNonce {
            nonce: &x.credential_nonce,
            tag: &x.nonce_tag,
        };
        if x.login == 0 {
            return match self.server.register_command(
                id,
                &x.user,
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
        if login.user() != x.user.as_slice() {
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
        user: &[u8],
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
        x: crate::wire::VaultLoginFinish,
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
        let purpose = x.purpose.enum_value_or(VaultLoginPurpose::VAULT_RECOVER);
        match purpose {
            VaultLoginPurpose::VAULT_REREGISTER_START => {
                match self
                    .server
                    .registration_start(login.user(), &x.registration_request)
                {
                    Ok(started) => {
                        let generation = login.generation();
                        Self::keep(
                            &mut self.logins.lock().proven,
                            x.login,
                            login,
                            self.cfg.logins_max,
                        );
                        let mut b = body(VaultReplyStatus::REPLY_OK, "");
                        b.registration_response = started.response;
                        b.credential_nonce = started.nonce.to_vec();
                        b.nonce_tag = started.tag.to_vec();
                        b.login = x.login;
                        b.generation = generation;
                        b
                    }
                    Err(e) => server_error(&e),
                }
            }
            VaultLoginPurpose::VAULT_DELETE => {
                let c = self.server.delete_command(id, &login);
                match self.propose(c) {
                    Ok(o) => from_outcome(&o),
                    Err(b) => {
                        self.logins.lock().pending.insert(x.login, (at, login));
                        *b
                    }
                }
            }
            VaultLoginPurpose::VAULT_RECOVER => {
                let c = self.server.reset_command(id, &login);
                let o = match self.propose(c) {
                    Ok(o) => o,
                    Err(b) => {
                        // Let the client retry its finalization.
                        self.logins.lock().pending.insert(x.login, (at, login));
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
                let secret = match self.server.open_secret(login.user(), &record) {
                    Ok(s) => s,
                    Err(e) => return server_error(&e),
                };
                let mut b = from_outcome(&o);
                match self
                    .server
                    .encrypt_for_client(&session_key, digest, login.user(), &secret)
                {
                    Ok((nonce, ct)) => {
                        b.secret_nonce = nonce;
                        b.encrypted_secret = ct;
                        b
                    }
                    Err(e) => server_error(&e),
                }
            }
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
