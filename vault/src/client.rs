//! `VaultClient`: the user's side of the vault. The recovery code never leaves
//! it; the fleet only ever sees OPAQUE messages. Every reply must carry a valid
//! signature of a pinned replica over the exact request it answers, or it is
//! refused.
//!
//! [`ClientRegistrationFlow`] and [`ClientLoginFlow`] are the sans-IO OPAQUE
//! steps; the simulator's vault workload drives them directly.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use argon2::{Algorithm, Argon2, Params, Version};
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, RegistrationResponse,
};
use parking_lot::Mutex;
use rand::RngCore;
use zeroize::{Zeroize, Zeroizing};

use crate::bundle_source::RETIREMENTS_MAX;
use crate::crypto::{
    authenticate_request, open_recovered_secret, registration_secret_digest, reply_signed_bytes,
    sha256, KeyErasingRng,
};
use crate::error::{
    InvalidInput, Mismatch, ProtocolFailure, Rejection, ReplyError, Unavailability, Uncertain,
    VaultClientError,
};
use crate::keys::VaultPublicKeys;
use crate::limits::DEFAULT_MAX_ATTEMPTS;
use crate::service::VaultEndpoint;
use crate::user_id::UserId;
use crate::wire;
use crate::wire::{
    vault_client_request, VaultClientRequest, VaultLoginFinish, VaultLoginPurpose, VaultLoginStart,
    VaultRegisterFinish, VaultRegisterStart, VaultReply, VaultReplyBody, VaultReplyStatus,
    VaultRequestId,
};
use crate::{Suite, OPAQUE_CONTEXT};
use vaultfleet::hsm::verify_signature;
use vaultfleet::ReplicaId;
use vaultfleet_audit::{Accepted, BundleError, FleetVerifier};

/// Argon2id parameters of the key-stretching step. They are part of the
/// deployment: registration and every recovery must use the same ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KsfParams {
    /// Memory, in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KsfParams {
    /// OWASP's Argon2id recommendation (19 MiB, 2 passes, 1 lane): the default.
    pub const RECOMMENDED: KsfParams = KsfParams {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };

    /// 64 KiB and one pass: for tests and simulations only, where thousands of
    /// logins run on one core. Never deploy it: it makes offline guessing cheap.
    pub const TESTS_ONLY: KsfParams = KsfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn argon2(&self) -> Result<Argon2<'static>, VaultClientError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(VaultClientError::KsfParams)?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

impl Default for KsfParams {
    fn default() -> Self {
        Self::RECOMMENDED
    }
}

fn protocol(e: opaque_ke::errors::ProtocolError) -> VaultClientError {
    VaultClientError::Protocol(ProtocolFailure::Opaque(e))
}

/// Randomness for a client flow: the operating system's, through the
/// key-erasing RNG; its failure is an error, never a fixed seed.
fn os_rng() -> Result<KeyErasingRng, VaultClientError> {
    KeyErasingRng::from_os().map_err(VaultClientError::Randomness)
}

/// A registration in progress, on the client (sans-IO).
pub struct ClientRegistrationFlow {
    state: ClientRegistration<Suite>,
    request: Vec<u8>,
}

impl ClientRegistrationFlow {
    /// Blinds `code` with randomness from the operating system; send
    /// [`ClientRegistrationFlow::request`] to the fleet.
    pub fn start(code: &[u8]) -> Result<Self, VaultClientError> {
        Self::start_from(&mut os_rng()?, code)
    }

    /// As [`ClientRegistrationFlow::start`], with randomness from `rng`.
    ///
    /// INSECURE unless `rng` is a CSPRNG seeded from the operating system: a
    /// known seed gives the blind, and with it an offline dictionary attack on
    /// the code. Only for deterministic tests and the simulator, behind the
    /// `insecure-seeded-rng` feature.
    #[cfg(feature = "insecure-seeded-rng")]
    pub fn start_with_insecure_rng<R: RngCore + rand::CryptoRng>(
        rng: &mut R,
        code: &[u8],
    ) -> Result<Self, VaultClientError> {
        Self::start_from(rng, code)
    }

    pub(crate) fn start_from<R: RngCore + rand::CryptoRng>(
        rng: &mut R,
        code: &[u8],
    ) -> Result<Self, VaultClientError> {
        let start = ClientRegistration::<Suite>::start(rng, code).map_err(protocol)?;
        Ok(Self {
            request: start.message.serialize().to_vec(),
            state: start.state,
        })
    }

    /// The OPAQUE registration request.
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// Completes the registration with the fleet's response, with randomness
    /// from the operating system: the upload to send.
    pub fn finish(
        self,
        code: &[u8],
        response: &[u8],
        ksf: &KsfParams,
    ) -> Result<Vec<u8>, VaultClientError> {
        self.finish_from(&mut os_rng()?, code, response, ksf)
    }

    /// As [`ClientRegistrationFlow::finish`], with randomness from `rng`
    /// (INSECURE unless it is an OS-seeded CSPRNG; see
    /// [`ClientRegistrationFlow::start_with_insecure_rng`]).
    #[cfg(feature = "insecure-seeded-rng")]
    pub fn finish_with_insecure_rng<R: RngCore + rand::CryptoRng>(
        self,
        rng: &mut R,
        code: &[u8],
        response: &[u8],
        ksf: &KsfParams,
    ) -> Result<Vec<u8>, VaultClientError> {
        self.finish_from(rng, code, response, ksf)
    }

    pub(crate) fn finish_from<R: RngCore + rand::CryptoRng>(
        self,
        rng: &mut R,
        code: &[u8],
        response: &[u8],
        ksf: &KsfParams,
    ) -> Result<Vec<u8>, VaultClientError> {
        let response = RegistrationResponse::<Suite>::deserialize(response).map_err(protocol)?;
        let argon = ksf.argon2()?;
        let mut done = self
            .state
            .finish(
                rng,
                code,
                response,
                ClientRegistrationFinishParameters::new(Default::default(), Some(&argon)),
            )
            .map_err(protocol)?;
        // The export key is not used: wipe it rather than leave it to the allocator.
        done.export_key.as_mut_slice().zeroize();
        Ok(done.message.serialize().to_vec())
    }
}

/// A login in progress, on the client (sans-IO). It can be finished against
/// several responses to the same credential request (a retry to another service
/// after a crash), each time from the same state.
pub struct ClientLoginFlow {
    state: ClientLogin<Suite>,
    request: Vec<u8>,
}

impl ClientLoginFlow {
    /// Blinds `code` with randomness from the operating system; send
    /// [`ClientLoginFlow::request`] to the fleet.
    pub fn start(code: &[u8]) -> Result<Self, VaultClientError> {
        Self::start_from(&mut os_rng()?, code)
    }

    /// As [`ClientLoginFlow::start`], with randomness from `rng`.
    ///
    /// INSECURE unless `rng` is a CSPRNG seeded from the operating system: a
    /// known seed gives the blind, and with it an offline dictionary attack on
    /// the code from one captured message. Only for deterministic tests and the
    /// simulator, behind the `insecure-seeded-rng` feature.
    #[cfg(feature = "insecure-seeded-rng")]
    pub fn start_with_insecure_rng<R: RngCore + rand::CryptoRng>(
        rng: &mut R,
        code: &[u8],
    ) -> Result<Self, VaultClientError> {
        Self::start_from(rng, code)
    }

    pub(crate) fn start_from<R: RngCore + rand::CryptoRng>(
        rng: &mut R,
        code: &[u8],
    ) -> Result<Self, VaultClientError> {
        let start = ClientLogin::<Suite>::start(rng, code).map_err(protocol)?;
        Ok(Self {
            request: start.message.serialize().to_vec(),
            state: start.state,
        })
    }

    /// The OPAQUE credential request.
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// Opens the fleet's credential response with `code`, with randomness from
    /// the operating system. `Ok(None)` means the code is wrong (or the
    /// response was not made for this request).
    pub fn finish(
        &self,
        code: &[u8],
        response: &[u8],
        ksf: &KsfParams,
    ) -> Result<Option<LoginOpened>, VaultClientError> {
        self.finish_from(&mut os_rng()?, code, response, ksf)
    }

    /// As [`ClientLoginFlow::finish`], with randomness from `rng` (INSECURE
    /// unless it is an OS-seeded CSPRNG; see
    /// [`ClientLoginFlow::start_with_insecure_rng`]).
    #[cfg(feature = "insecure-seeded-rng")]
    pub fn finish_with_insecure_rng<R: RngCore + rand::CryptoRng>(
        &self,
        rng: &mut R,
        code: &[u8],
        response: &[u8],
        ksf: &KsfParams,
    ) -> Result<Option<LoginOpened>, VaultClientError> {
        self.finish_from(rng, code, response, ksf)
    }

    pub(crate) fn finish_from<R: RngCore + rand::CryptoRng>(
        &self,
        rng: &mut R,
        code: &[u8],
        response: &[u8],
        ksf: &KsfParams,
    ) -> Result<Option<LoginOpened>, VaultClientError> {
        let response = CredentialResponse::<Suite>::deserialize(response).map_err(protocol)?;
        let argon = ksf.argon2()?;
        let finished = self.state.clone().finish(
            rng,
            code,
            response,
            ClientLoginFinishParameters::new(
                Some(OPAQUE_CONTEXT),
                Default::default(),
                Some(&argon),
            ),
        );
        let mut done = match finished {
            Ok(done) => done,
            Err(opaque_ke::errors::ProtocolError::InvalidLoginError) => return Ok(None),
            Err(other) => return Err(protocol(other)),
        };
        let opened = LoginOpened {
            finalization: done.message.serialize().to_vec(),
            session_key: Zeroizing::new(done.session_key.to_vec()),
        };
        done.session_key.as_mut_slice().zeroize();
        done.export_key.as_mut_slice().zeroize();
        Ok(Some(opened))
    }
}

/// A credential response opened with the right code.
pub struct LoginOpened {
    /// The OPAQUE finalization to send to the service that answered.
    pub finalization: Vec<u8>,
    /// The OPAQUE session key (shared with that service only).
    pub session_key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for LoginOpened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginOpened").finish_non_exhaustive()
    }
}

/// Retries of a [`VaultClient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaultClientConfig {
    /// The key-stretching parameters (the deployment's).
    pub ksf: KsfParams,
    /// Passes over the services per step before giving up.
    pub rounds: u32,
    /// Pause between passes.
    pub backoff: Duration,
    /// Fresh logins a `recover` may start when a login is lost mid-way (its
    /// service went down after answering).
    pub login_restarts: u32,
}

impl Default for VaultClientConfig {
    fn default() -> Self {
        Self {
            ksf: KsfParams::RECOMMENDED,
            rounds: 3,
            backoff: Duration::from_millis(100),
            login_restarts: 3,
        }
    }
}

/// How a client decides which replica keys to trust.
enum Trust {
    /// Response keys pinned by the application.
    Pinned(VaultPublicKeys),
    /// Keys from validation bundles checked against the witness and operator.
    Bundles {
        group: u64,
        verifier: Box<Mutex<FleetVerifier>>,
        clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    },
}

impl Trust {
    fn group(&self) -> u64 {
        match self {
            Trust::Pinned(k) => k.group,
            Trust::Bundles { group, .. } => *group,
        }
    }
}

/// A user's client of the Backup Key Vault.
pub struct VaultClient {
    endpoints: Vec<Arc<dyn VaultEndpoint>>,
    trust: Trust,
    client_id: u64,
    sequence: AtomicU64,
    preferred: AtomicUsize,
    rng: Mutex<KeyErasingRng>,
    cfg: VaultClientConfig,
    /// The handshake trust of remote endpoints, kept in step with this
    /// client's retirements ([`VaultClient::keep_in_step`]).
    handshake: Option<Arc<crate::remote::BundleTrust>>,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient")
            .field("client_id", &self.client_id)
            .field("endpoints", &self.endpoints.len())
            .finish_non_exhaustive()
    }
}

/// A step's verified reply and the endpoint that gave it.
struct Answer {
    endpoint: usize,
    body: VaultReplyBody,
    digest: [u8; 32],
}

impl VaultClient {
    /// A client of the services `endpoints`, trusting replies signed by the
    /// replicas in `keys`. Its randomness (OPAQUE blinds, its client id) comes
    /// from the operating system; if that fails, so does this (there is no
    /// seeded client: a known seed gives the blind, and with it an offline
    /// dictionary attack on the code from one captured message).
    pub fn new(
        endpoints: Vec<Arc<dyn VaultEndpoint>>,
        keys: VaultPublicKeys,
        cfg: VaultClientConfig,
    ) -> Result<Self, VaultClientError> {
        Self::build(endpoints, Trust::Pinned(keys), cfg)
    }

    /// A client that pins no fleet key at all: every reply must carry a
    /// validation bundle that `verifier` (pinned to the witness and the operator)
    /// accepts at the time `clock` gives, and the reply must be signed by the
    /// answering replica's response key from that bundle. `group` is the fleet's
    /// raft group. Randomness from the operating system, as for [`VaultClient::new`].
    ///
    /// The verifier is switched to
    /// [`FleetVerifier::require_consistency_proofs`]: each request names the
    /// size of the newest checkpoint it accepted, and a reply whose bundle's
    /// checkpoint is of another size must carry a consistency proof from it,
    /// so a forked (rolled-back) witness log is refused. Epoch retirements a
    /// reply carries are applied before its bundle is checked.
    pub fn with_verifier(
        endpoints: Vec<Arc<dyn VaultEndpoint>>,
        group: u64,
        verifier: FleetVerifier,
        clock: Arc<dyn Fn() -> u64 + Send + Sync>,
        cfg: VaultClientConfig,
    ) -> Result<Self, VaultClientError> {
        Self::build(
            endpoints,
            Trust::Bundles {
                group,
                verifier: Box::new(Mutex::new(verifier.require_consistency_proofs())),
                clock,
            },
            cfg,
        )
    }

    /// The newest fleet epoch this client has accepted (bundle mode).
    pub fn fleet_epoch(&self) -> Option<u64> {
        match &self.trust {
            Trust::Bundles { verifier, .. } => verifier.lock().newest_epoch(),
            Trust::Pinned(_) => None,
        }
    }

    fn build(
        endpoints: Vec<Arc<dyn VaultEndpoint>>,
        trust: Trust,
        cfg: VaultClientConfig,
    ) -> Result<Self, VaultClientError> {
        let mut rng = KeyErasingRng::from_os().map_err(VaultClientError::Randomness)?;
        // Never 0: a request id of client 0 would look like a missing one.
        let client_id = rng.next_u64().max(1);
        Ok(Self {
            endpoints,
            trust,
            client_id,
            sequence: AtomicU64::new(1),
            preferred: AtomicUsize::new(0),
            rng: Mutex::new(rng),
            cfg,
            handshake: None,
        })
    }

    /// Keeps `trust`, the handshake check of this client's
    /// [`RemoteVaultEndpoint`](crate::RemoteVaultEndpoint)s, in step with the
    /// client: every epoch retirement a reply carries is applied to it too, so
    /// a transport key of a retired epoch is refused at the next handshake
    /// (and connections checked before are not reused), not only in replies.
    /// Give it the same pins as the client's verifier.
    pub fn keep_in_step(mut self, trust: Arc<crate::remote::BundleTrust>) -> Self {
        self.handshake = Some(trust);
        self
    }

    fn next_id(&self) -> VaultRequestId {
        let mut id = VaultRequestId::new();
        id.client = self.client_id;
        id.sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        id
    }

    /// The response key `reply` must be signed with: the pinned one, or the one
    /// of a bundle that verifies (returned too, to accept once the reply does).
    fn reply_key(
        &self,
        replica: ReplicaId,
        reply: &VaultReply,
    ) -> Result<([u8; 32], Option<Accepted>), ReplyError> {
        match &self.trust {
            Trust::Pinned(keys) => keys
                .replicas
                .get(&replica)
                .map(|key| (*key, None))
                .ok_or(ReplyError::UnknownReplica),
            Trust::Bundles {
                verifier, clock, ..
            } => {
                check_bundle_shape(reply)?;
                let now = clock();
                let mut verifier = verifier.lock();
                // Retirements first, even before the reply verifies: each is
                // signed by the witness and countersigned by the operator, and
                // only ever narrows what this client accepts. One that does not
                // verify (signed by a witness key since rotated out, say) is
                // skipped, not fatal: the network can strip retirements anyway,
                // so refusing the reply for it would protect nothing and would
                // let one stale retirement fail every honest reply.
                for r in &reply.retirements {
                    if let Err(e) = verifier.retire(r, now) {
                        tracing::warn!(replica, "vault client: an epoch retirement skipped: {e}");
                    }
                    if let Some(trust) = &self.handshake {
                        if let Err(e) = trust.retire(r) {
                            tracing::debug!(replica, "vault client: handshake trust: {e}");
                        }
                    }
                }
                // Checked now, accepted only once the reply itself verified: a
                // valid newer bundle on a forged reply must not move the client.
                let accepted = verifier
                    .check_with_proof(&reply.bundle, consistency_proof(reply), now, replica)
                    .map_err(ReplyError::Bundle)?;
                let key = response_key(&accepted, replica)?;
                Ok((key, Some(accepted)))
            }
        }
    }

    /// Moves the verifier forward to `accepted`, the check of `reply`'s bundle
    /// whose response key `key` verified the reply. If another reply moved the
    /// verifier's newest checkpoint since the check ([`BundleError::StaleCheck`]),
    /// the bundle is checked once more against the new one (under the same lock,
    /// so it cannot go stale twice) and must give the same response key.
    fn accept(
        &self,
        replica: ReplicaId,
        reply: &VaultReply,
        key: &[u8; 32],
        accepted: &Accepted,
    ) -> Result<(), ReplyError> {
        let Trust::Bundles {
            verifier, clock, ..
        } = &self.trust
        else {
            return Ok(());
        };
        let mut verifier = verifier.lock();
        match verifier.accept(accepted) {
            Err(BundleError::StaleCheck { .. }) => {
                let again = verifier
                    .check_with_proof(&reply.bundle, consistency_proof(reply), clock(), replica)
                    .map_err(ReplyError::Bundle)?;
                if response_key(&again, replica)? != *key {
                    return Err(ReplyError::Signature);
                }
                verifier.accept(&again).map_err(ReplyError::AcceptEpoch)
            }
            other => other.map_err(ReplyError::AcceptEpoch),
        }
    }

    fn verify(
        &self,
        endpoint: &dyn VaultEndpoint,
        bytes: &[u8],
        digest: &[u8; 32],
    ) -> Result<VaultReplyBody, VaultClientError> {
        let replica = endpoint.replica();
        self.verify_reply(replica, bytes, digest)
            .map_err(|cause| VaultClientError::BadReply { replica, cause })
    }

    fn verify_reply(
        &self,
        replica: ReplicaId,
        bytes: &[u8],
        digest: &[u8; 32],
    ) -> Result<VaultReplyBody, ReplyError> {
        let reply: VaultReply = wire::decode(bytes, "vault reply")?;
        let (key, pending) = self.reply_key(replica, &reply)?;
        let body = check_signed_reply(self.trust.group(), &key, replica, &reply, digest)?;
        if let Some(accepted) = pending {
            self.accept(replica, &reply, &key, &accepted)?;
        }
        Ok(body)
    }

    /// Sends `request` (the same bytes on every retry) to `only` or, when `None`,
    /// to the services in turn until one gives a verified answer that is not
    /// "unavailable".
    #[allow(clippy::disallowed_methods)] // the client backs off on the host's clock
    fn send(
        &self,
        request: &VaultClientRequest,
        only: Option<usize>,
    ) -> Result<Answer, VaultClientError> {
        // The bytes may carry a secret (registration): wiped when sent.
        let bytes = Zeroizing::new(wire::encode_bounded(request));
        let digest = sha256(&bytes);
        let n = self.endpoints.len();
        if n == 0 {
            return Err(VaultClientError::Unavailable(Unavailability::NoService));
        }
        let mut last = VaultClientError::Unavailable(Unavailability::NotAsked);
        let start = self.preferred.load(Ordering::Relaxed);
        for round in 0..self.cfg.rounds.max(1) {
            if round > 0 {
                std::thread::sleep(self.cfg.backoff);
            }
            let targets: Vec<usize> = match only {
                Some(i) => vec![i],
                None => (0..n).map(|k| (start + k) % n).collect(),
            };
            for i in targets {
                match self.ask(i, &bytes, &digest) {
                    Ok(body) => {
                        if only.is_none() {
                            self.preferred.store(i, Ordering::Relaxed);
                        }
                        return Ok(Answer {
                            endpoint: i,
                            body,
                            digest,
                        });
                    }
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    }

    /// Asks endpoint `i` once: its verified reply, unless it is "unavailable".
    fn ask(
        &self,
        i: usize,
        bytes: &[u8],
        digest: &[u8; 32],
    ) -> Result<VaultReplyBody, VaultClientError> {
        let endpoint = self.endpoints[i].as_ref();
        let raw = endpoint
            .call(bytes)
            .map_err(|e| VaultClientError::Unavailable(e.into()))?;
        let body = self.verify(endpoint, &raw, digest)?;
        // "Unavailable" and "busy" (nothing was done): ask another service.
        if matches!(
            body.status
                .enum_value_or(VaultReplyStatus::REPLY_UNAVAILABLE),
            VaultReplyStatus::REPLY_UNAVAILABLE | VaultReplyStatus::REPLY_BUSY
        ) {
            return Err(VaultClientError::Unavailable(Unavailability::Service {
                replica: body.replica,
                detail: body.detail,
            }));
        }
        Ok(body)
    }

    /// Sends a registration's upload and secret (`request`, a `RegisterFinish`),
    /// then wipes the secret.
    fn send_registration(
        &self,
        mut request: VaultClientRequest,
        only: Option<usize>,
    ) -> Result<Answer, VaultClientError> {
        let answer = self.send(&request, only);
        if let Some(vault_client_request::Op::RegisterFinish(f)) = request.op.as_mut() {
            f.secret.zeroize();
        }
        answer
    }

    /// A request for `op` with a fresh request id and, in bundle mode, the size
    /// of the newest checkpoint accepted (inside the request's bytes, so the
    /// signed reply and any intent tag cover it): the reply's consistency proof
    /// starts there.
    fn request(&self, op: vault_client_request::Op) -> VaultClientRequest {
        let mut r = VaultClientRequest::new();
        r.request = Some(self.next_id()).into();
        if let Trust::Bundles { verifier, .. } = &self.trust {
            r.known_checkpoint_size = verifier.lock().last_checkpoint_size();
        }
        r.op = Some(op);
        r
    }

    /// Registers `user` with `secret`, protected by `code`, allowing
    /// [`DEFAULT_MAX_ATTEMPTS`] wrong guesses. Returns the registration generation.
    pub fn register(
        &self,
        user: &[u8],
        code: &[u8],
        secret: &[u8],
    ) -> Result<u64, VaultClientError> {
        self.register_with_limit(user, code, secret, DEFAULT_MAX_ATTEMPTS)
    }

    /// Registers `user` allowing `max_attempts` (1 to 255) wrong guesses.
    pub fn register_with_limit(
        &self,
        user: &[u8],
        code: &[u8],
        secret: &[u8],
        max_attempts: u32,
    ) -> Result<u64, VaultClientError> {
        let user = UserId::new(user)?;
        InvalidInput::check_registration(secret, max_attempts)?;
        let flow = ClientRegistrationFlow::start_from(&mut *self.rng.lock(), code)?;
        let mut start = VaultRegisterStart::new();
        start.user = user.as_bytes().to_vec();
        start.registration_request = flow.request().to_vec();
        // The limit and the secret's digest go in the first message, whose
        // signed reply carries the fleet's tag binding them to the nonce.
        start.max_attempts = max_attempts;
        start.secret_digest = registration_secret_digest(&user, secret).to_vec();
        let a = self.send(
            &self.request(vault_client_request::Op::RegisterStart(start)),
            None,
        )?;
        expect_ok(&a.body)?;
        // Forked in a statement of its own, so the lock is not held through
        // the Argon2id step (a temporary guard lives to the end of its statement).
        let mut rng = self.rng.lock().fork();
        let upload =
            flow.finish_from(&mut rng, code, &a.body.registration_response, &self.cfg.ksf)?;
        let tag = a.body.nonce_tag.clone();
        let mut finish = VaultRegisterFinish::new();
        finish.user = user.as_bytes().to_vec();
        finish.registration_upload = upload;
        finish.credential_nonce = a.body.credential_nonce;
        finish.nonce_tag = a.body.nonce_tag;
        finish.secret = secret.to_vec();
        finish.max_attempts = max_attempts;
        // The generation the fleet issued the nonce at (its tag covers it).
        finish.issued_generation = a.body.generation;
        let request = self.request(vault_client_request::Op::RegisterFinish(finish));
        let a = self.send_registration(request, None)?;
        expect_ok(&a.body)?;
        confirm_registration(&a.body, max_attempts, &tag)?;
        Ok(a.body.generation)
    }

    /// Runs a login for `user` with `code` up to the finalization: returns the
    /// answer to the finalization and the session key.
    fn login(
        &self,
        user: &UserId,
        code: &[u8],
        purpose: VaultLoginPurpose,
        registration: Option<NewRegistration<'_>>,
    ) -> Result<(Answer, Zeroizing<Vec<u8>>), VaultClientError> {
        let finish_sent = std::cell::Cell::new(false);
        match self.login_restarting(user, code, purpose, registration, &finish_sent) {
            // A delete whose finish was sent, then found the user deleted on a
            // fresh login (its service restarted, or forgot the concluded
            // finish): the first finish may be what deleted it.
            Err(e @ VaultClientError::NotRegistered)
                if purpose == VaultLoginPurpose::VAULT_DELETE && finish_sent.get() =>
            {
                Err(VaultClientError::OutcomeUnknown {
                    operation: Uncertain::Delete,
                    cause: Box::new(e),
                })
            }
            other => other,
        }
    }

    fn login_restarting(
        &self,
        user: &UserId,
        code: &[u8],
        purpose: VaultLoginPurpose,
        registration: Option<NewRegistration<'_>>,
        finish_sent: &std::cell::Cell<bool>,
    ) -> Result<(Answer, Zeroizing<Vec<u8>>), VaultClientError> {
        let mut last = VaultClientError::Unavailable(Unavailability::NotAsked);
        for _ in 0..self.cfg.login_restarts.max(1) {
            // One credential request and one request id per login: re-sending them
            // after a lost reply gets the same attempt back, never a second one.
            let flow = ClientLoginFlow::start_from(&mut *self.rng.lock(), code)?;
            let mut start = VaultLoginStart::new();
            start.user = user.as_bytes().to_vec();
            start.credential_request = flow.request().to_vec();
            let start = self.request(vault_client_request::Op::LoginStart(start));
            let login = LoginAttempt {
                user,
                flow: &flow,
                start: &start,
                code,
                purpose,
                registration,
                finish_sent,
            };
            match self.login_attempt(&login)? {
                LoginStep::Done(answer, session_key) => return Ok((*answer, session_key)),
                // The same request no longer yields a login (its attempt was
                // concluded by a reply we never got): start a fresh login.
                LoginStep::Restart(e) => last = e,
            }
        }
        Err(last)
    }

    /// One login's credential request, sent (again) until its finalization is
    /// answered, or until it no longer yields a login.
    fn login_attempt(&self, login: &LoginAttempt<'_>) -> Result<LoginStep, VaultClientError> {
        let mut last = VaultClientError::Unavailable(Unavailability::NotAsked);
        for _ in 0..self.cfg.login_restarts.max(1) {
            let a = self.send(login.start, None)?;
            if a.body
                .status
                .enum_value_or(VaultReplyStatus::REPLY_BAD_REQUEST)
                == VaultReplyStatus::REPLY_LOGIN_UNKNOWN
            {
                // This request's attempt was concluded by a reply we never
                // got: start a fresh login.
                return Ok(LoginStep::Restart(login_lost(&a.body)));
            }
            expect_ok(&a.body)?;
            // Forked in a statement of its own, so the lock is not held through
            // the Argon2id step (a temporary guard lives to the end of its statement).
            let mut rng = self.rng.lock().fork();
            let opened = login.flow.finish_from(
                &mut rng,
                login.code,
                &a.body.credential_response,
                &self.cfg.ksf,
            )?;
            let Some(LoginOpened {
                finalization,
                session_key,
            }) = opened
            else {
                return Err(VaultClientError::WrongCode {
                    attempts_left: a.body.attempts_left,
                });
            };
            let mut finish = VaultLoginFinish::new();
            finish.login = a.body.login;
            finish.credential_finalization = finalization;
            finish.purpose = login.purpose.into();
            if let Some(r) = &login.registration {
                finish.registration_request = r.request.to_vec();
                finish.max_attempts = r.max_attempts;
                finish.secret_digest = r.secret_digest.to_vec();
            }
            // Every byte of the request (what the fleet is to do, and its request
            // id), authenticated to the session that proved the code.
            let mut finish = self.request(vault_client_request::Op::LoginFinish(finish));
            authenticate_request(self.trust.group(), login.user, &session_key, &mut finish);
            login.finish_sent.set(true);
            match self.send(&finish, Some(a.endpoint)) {
                Ok(f) => match f
                    .body
                    .status
                    .enum_value_or(VaultReplyStatus::REPLY_BAD_REQUEST)
                {
                    // The login is gone (its service restarted, or it expired):
                    // ask again with the same request, which spends nothing.
                    VaultReplyStatus::REPLY_LOGIN_UNKNOWN => last = login_lost(&f.body),
                    VaultReplyStatus::REPLY_OK if f.body.purpose != login.purpose.into() => {
                        return Err(VaultClientError::NotConfirmed(Mismatch::Purpose))
                    }
                    _ => return Ok(LoginStep::Done(Box::new(f), session_key)),
                },
                // A delete may still be applied from a copy delivered late:
                // say so, rather than start another login that would report
                // the user's standing as if nothing had been sent.
                Err(e @ (VaultClientError::Unavailable(_) | VaultClientError::BadReply { .. }))
                    if login.purpose == VaultLoginPurpose::VAULT_DELETE =>
                {
                    return Err(VaultClientError::OutcomeUnknown {
                        operation: Uncertain::Delete,
                        cause: Box::new(e),
                    })
                }
                Err(e @ VaultClientError::Unavailable(_)) => last = e,
                Err(e) => return Err(e),
            }
        }
        Ok(LoginStep::Restart(last))
    }

    /// Recovers `user`'s secret with `code`. A wrong code spends one attempt; the
    /// right one forgives the attempts spent before it.
    pub fn recover(
        &self,
        user: &[u8],
        code: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, VaultClientError> {
        let user = UserId::new(user)?;
        let (a, session_key) = self.login(&user, code, VaultLoginPurpose::VAULT_RECOVER, None)?;
        expect_ok(&a.body)?;
        Ok(open_recovered_secret(
            &session_key,
            &a.digest,
            &user,
            &a.body.secret_nonce,
            &a.body.encrypted_secret,
        )?)
    }

    /// Deletes `user`'s record; needs the current code (one attempt is spent
    /// if it is wrong).
    pub fn delete(&self, user: &[u8], code: &[u8]) -> Result<(), VaultClientError> {
        let user = UserId::new(user)?;
        let (a, _) = self.login(&user, code, VaultLoginPurpose::VAULT_DELETE, None)?;
        expect_ok(&a.body)
    }

    /// Replaces `user`'s record with a new code and secret; needs the current
    /// code. Returns the new generation.
    pub fn reregister(
        &self,
        user: &[u8],
        old_code: &[u8],
        new_code: &[u8],
        new_secret: &[u8],
        max_attempts: u32,
    ) -> Result<u64, VaultClientError> {
        let user = UserId::new(user)?;
        InvalidInput::check_registration(new_secret, max_attempts)?;
        let flow = ClientRegistrationFlow::start_from(&mut *self.rng.lock(), new_code)?;
        let secret_digest = registration_secret_digest(&user, new_secret);
        let (a, session_key) = self.login(
            &user,
            old_code,
            VaultLoginPurpose::VAULT_REREGISTER_START,
            Some(NewRegistration {
                request: flow.request(),
                max_attempts,
                secret_digest: &secret_digest,
            }),
        )?;
        expect_ok(&a.body)?;
        let login_generation = a.body.generation;
        let tag = a.body.nonce_tag.clone();
        // Forked in a statement of its own, so the lock is not held through
        // the Argon2id step (a temporary guard lives to the end of its statement).
        let mut rng = self.rng.lock().fork();
        let upload = flow.finish_from(
            &mut rng,
            new_code,
            &a.body.registration_response,
            &self.cfg.ksf,
        )?;
        let mut finish = VaultRegisterFinish::new();
        finish.user = user.as_bytes().to_vec();
        finish.registration_upload = upload;
        finish.credential_nonce = a.body.credential_nonce;
        finish.nonce_tag = a.body.nonce_tag;
        finish.secret = new_secret.to_vec();
        finish.max_attempts = max_attempts;
        finish.login = a.body.login;
        finish.issued_generation = login_generation;
        let mut request = self.request(vault_client_request::Op::RegisterFinish(finish));
        authenticate_request(self.trust.group(), &user, &session_key, &mut request);
        let f = match self.send_registration(request, Some(a.endpoint)) {
            Ok(f) => f,
            Err(e @ (VaultClientError::Unavailable(_) | VaultClientError::BadReply { .. })) => {
                return Err(VaultClientError::OutcomeUnknown {
                    operation: Uncertain::Reregistration,
                    cause: Box::new(e),
                })
            }
            Err(e) => return Err(e),
        };
        expect_ok(&f.body)?;
        confirm_registration(&f.body, max_attempts, &tag)?;
        if f.body.generation <= login_generation {
            return Err(VaultClientError::NotConfirmed(Mismatch::Generation {
                new: f.body.generation,
                login: login_generation,
            }));
        }
        Ok(f.body.generation)
    }
}

/// Checks an encoded `VaultReply` from `replica` against the response keys
/// the client pins (`keys`, with the fleet's raft group): the signature under
/// `replica`'s key over the group and the body, the body's replica, and that
/// it answers the request whose SHA-256 is `request_digest`. Returns the
/// verified body; its status is the caller's to read.
///
/// Sans-IO: the same check a [`VaultClient`] built with [`VaultClient::new`]
/// makes of every reply, for drivers of [`ClientLoginFlow`] and
/// [`ClientRegistrationFlow`] that do their own IO (the simulator's devices).
/// A reply it refuses must be treated as no reply at all.
pub fn verify_pinned_reply(
    keys: &VaultPublicKeys,
    replica: ReplicaId,
    reply: &[u8],
    request_digest: &[u8; 32],
) -> Result<VaultReplyBody, ReplyError> {
    let reply: VaultReply = wire::decode(reply, "vault reply")?;
    let key = keys
        .replicas
        .get(&replica)
        .ok_or(ReplyError::UnknownReplica)?;
    check_signed_reply(keys.group, key, replica, &reply, request_digest)
}

/// A reply that [`verify_bundled_reply`] accepted.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BundledReply {
    /// The verified body; its status is the caller's to read.
    pub body: VaultReplyBody,
    /// The fleet epoch of the bundle whose response key verified the reply.
    pub epoch: u64,
    /// The answering replica's response key in that epoch's artifact.
    pub response_key: [u8; 32],
}

/// Checks an encoded `VaultReply` from `replica` as a [`VaultClient`] built
/// with [`VaultClient::with_verifier`] does, against `verifier` (give it
/// [`FleetVerifier::require_consistency_proofs`], as `with_verifier` does) at
/// the verifier's time `now`: it applies the epoch retirements the reply
/// carries (one that does not verify is skipped), checks the reply's bundle
/// with its consistency proof, checks the signature under the answering
/// replica's response key from that bundle's artifact (with the fleet's raft
/// `group`) and that it answers the request whose SHA-256 is
/// `request_digest`, and only then accepts the bundle (the verifier moves
/// forward). A reply it refuses must be treated as no reply at all.
///
/// The caller's obligations, which this function cannot check:
///
/// * the request must carry `known_checkpoint_size =
///   verifier.last_checkpoint_size()` (read just before the request is
///   built), so that the reply's consistency proof starts from the
///   checkpoint the verifier holds;
/// * `verifier` must be built with
///   [`FleetVerifier::require_consistency_proofs`]: without it a checkpoint
///   of another size is taken without a proof that both are one log, so a
///   split view of the witness's log goes unnoticed;
/// * a caller that also keeps a handshake trust (a [`BundleTrust`](crate::BundleTrust) its
///   Noise handshakes check transport keys against, as a [`VaultClient`]
///   given [`VaultClient::keep_in_step`] does) must apply the retirements
///   the reply carries there too ([`BundleTrust::retire`](crate::BundleTrust::retire)): this function
///   retires epochs in `verifier` only, so a retired epoch's transport key
///   would otherwise still pass the next handshake.
///
/// Sans-IO: for drivers of [`ClientLoginFlow`] and [`ClientRegistrationFlow`]
/// that do their own IO (the simulator's devices). The caller holds the
/// verifier exclusively, so no other reply can make the check stale.
pub fn verify_bundled_reply(
    verifier: &mut FleetVerifier,
    group: u64,
    replica: ReplicaId,
    reply: &[u8],
    request_digest: &[u8; 32],
    now: u64,
) -> Result<BundledReply, ReplyError> {
    let reply: VaultReply = wire::decode(reply, "vault reply")?;
    check_bundle_shape(&reply)?;
    // As `VaultClient::reply_key`: retirements first, a bad one skipped.
    for r in &reply.retirements {
        if let Err(e) = verifier.retire(r, now) {
            tracing::debug!(
                replica,
                "vault reply check: an epoch retirement skipped: {e}"
            );
        }
    }
    let accepted = verifier
        .check_with_proof(&reply.bundle, consistency_proof(&reply), now, replica)
        .map_err(ReplyError::Bundle)?;
    let key = response_key(&accepted, replica)?;
    let body = check_signed_reply(group, &key, replica, &reply, request_digest)?;
    verifier
        .accept(&accepted)
        .map_err(ReplyError::AcceptEpoch)?;
    Ok(BundledReply {
        body,
        epoch: accepted.epoch,
        response_key: key,
    })
}

/// A reply in bundle mode carries a bundle and at most [`RETIREMENTS_MAX`]
/// retirements (checked before any of them is verified).
fn check_bundle_shape(reply: &VaultReply) -> Result<(), ReplyError> {
    if reply.bundle.is_empty() {
        return Err(ReplyError::NoBundle);
    }
    if reply.retirements.len() > RETIREMENTS_MAX {
        return Err(ReplyError::TooManyRetirements {
            count: reply.retirements.len(),
            max: RETIREMENTS_MAX,
        });
    }
    Ok(())
}

/// The signature, replica and request checks of a decoded reply under the
/// response key `key` of `replica` (pinned, or from a verified bundle).
fn check_signed_reply(
    group: u64,
    key: &[u8; 32],
    replica: ReplicaId,
    reply: &VaultReply,
    digest: &[u8; 32],
) -> Result<VaultReplyBody, ReplyError> {
    let signature: [u8; 64] = reply
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| ReplyError::SignatureLength)?;
    if !verify_signature(key, &reply_signed_bytes(group, &reply.body), &signature) {
        return Err(ReplyError::Signature);
    }
    let body: VaultReplyBody = wire::decode(&reply.body, "vault reply body")?;
    if body.replica != replica {
        return Err(ReplyError::OtherReplica);
    }
    if body.request_digest.as_slice() != digest.as_slice() {
        return Err(ReplyError::OtherRequest);
    }
    Ok(body)
}

/// The consistency proof a reply carries, if any.
fn consistency_proof(reply: &VaultReply) -> Option<&[u8]> {
    Some(reply.consistency_proof.as_slice()).filter(|p| !p.is_empty())
}

/// `replica`'s response key in an accepted bundle's fleet.
fn response_key(accepted: &Accepted, replica: ReplicaId) -> Result<[u8; 32], ReplyError> {
    accepted
        .artifact
        .replica(replica)
        .map(|r| r.response_key)
        .ok_or(ReplyError::NotInFleet)
}

/// What a re-registration's login asks for besides the login: the new
/// registration's OPAQUE request, limit and secret digest.
#[derive(Clone, Copy)]
struct NewRegistration<'a> {
    request: &'a [u8],
    max_attempts: u32,
    secret_digest: &'a [u8],
}

/// Checks that a registration's signed reply reports the record this client
/// asked for: its limit, and the tag the fleet gave this registration's nonce
/// (which binds the limit and the secret's digest).
fn confirm_registration(
    b: &VaultReplyBody,
    max_attempts: u32,
    tag: &[u8],
) -> Result<(), VaultClientError> {
    if b.max_attempts != max_attempts {
        return Err(VaultClientError::NotConfirmed(Mismatch::MaxAttempts {
            stored: b.max_attempts,
            asked: max_attempts,
        }));
    }
    if b.registration_tag.as_slice() != tag {
        return Err(VaultClientError::NotConfirmed(Mismatch::Registration));
    }
    Ok(())
}

/// What one login sends, and what it needs to open the answer.
struct LoginAttempt<'a> {
    user: &'a UserId,
    flow: &'a ClientLoginFlow,
    start: &'a VaultClientRequest,
    code: &'a [u8],
    purpose: VaultLoginPurpose,
    registration: Option<NewRegistration<'a>>,
    /// Set once a finish of this operation was sent.
    finish_sent: &'a std::cell::Cell<bool>,
}

/// How one login ended.
enum LoginStep {
    /// The finalization was answered (whatever the answer): it and the session key.
    Done(Box<Answer>, Zeroizing<Vec<u8>>),
    /// The login was lost; a fresh one may succeed.
    Restart(VaultClientError),
}

fn login_lost(b: &VaultReplyBody) -> VaultClientError {
    VaultClientError::Unavailable(Unavailability::LoginLost {
        replica: b.replica,
        detail: b.detail.clone(),
    })
}

/// Maps a verified reply's status to the client's error.
fn expect_ok(b: &VaultReplyBody) -> Result<(), VaultClientError> {
    let rejected = |reason| VaultClientError::Rejected {
        reason,
        detail: b.detail.clone(),
    };
    match b.status.enum_value_or(VaultReplyStatus::REPLY_BAD_REQUEST) {
        VaultReplyStatus::REPLY_OK => Ok(()),
        VaultReplyStatus::REPLY_NOT_REGISTERED => Err(VaultClientError::NotRegistered),
        VaultReplyStatus::REPLY_LOCKED => Err(VaultClientError::Locked),
        VaultReplyStatus::REPLY_ALREADY_REGISTERED => Err(VaultClientError::AlreadyRegistered),
        VaultReplyStatus::REPLY_LOGIN_FAILED => Err(VaultClientError::WrongCode {
            attempts_left: b.attempts_left,
        }),
        VaultReplyStatus::REPLY_LOGIN_UNKNOWN => Err(login_lost(b)),
        VaultReplyStatus::REPLY_UNAVAILABLE => {
            Err(VaultClientError::Unavailable(Unavailability::Service {
                replica: b.replica,
                detail: b.detail.clone(),
            }))
        }
        VaultReplyStatus::REPLY_BAD_REQUEST => Err(rejected(Rejection::BadRequest)),
        VaultReplyStatus::REPLY_REQUEST_REUSED => Err(rejected(Rejection::RequestReused)),
        VaultReplyStatus::REPLY_REGISTRATION_CONFLICT => {
            Err(VaultClientError::RegistrationConflict)
        }
        VaultReplyStatus::REPLY_INTENT_NOT_AUTHENTIC => {
            Err(rejected(Rejection::IntentNotAuthentic))
        }
        VaultReplyStatus::REPLY_REGISTRATION_STALE => Err(rejected(Rejection::RegistrationStale)),
        VaultReplyStatus::REPLY_BUSY => {
            Err(VaultClientError::Unavailable(Unavailability::Service {
                replica: b.replica,
                detail: b.detail.clone(),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    //! Mutation tests (issue 13) of what only a race between two replies
    //! reaches: a bundle's check made stale, before it was accepted, by
    //! another reply that moved the client's newest checkpoint.
    use super::*;
    use vaultfleet::hsm::{Hsm, KeyKind};
    use vaultfleet::SoftHsm;
    use vaultfleet_audit::fleet::{FleetArtifact, ReplicaKeys};
    use vaultfleet_audit::witness::countersign;
    use vaultfleet_audit::{Bundle, Witness, WitnessKey, WitnessKeySpec};

    const NS: &str = "example.vault.client.v1";
    const NOW: u64 = 1_800_000_000;

    fn artifact(epoch: u64) -> FleetArtifact {
        FleetArtifact {
            fleet_id: "example-fleet".into(),
            epoch,
            replicas: (1..=5u64)
                .map(|id| ReplicaKeys {
                    id,
                    datacenter: ["dc-a", "dc-b", "dc-c"][(id as usize - 1) % 3].into(),
                    response_key: [id as u8; 32],
                    transport_key: [0x40 + id as u8; 32],
                    opaque_key: [0x80; 32],
                })
                .collect(),
            voters: vec![1, 2, 3, 4, 5],
            learners: vec![],
            not_before: NOW - 1,
            not_after: NOW + 1000,
        }
    }

    /// The witness signs epoch `epoch`; returns its bundle.
    fn publish(witness: &mut Witness<SoftHsm>, hsm: &SoftHsm, epoch: u64) -> Vec<u8> {
        let digest = artifact(epoch).digest().unwrap();
        witness.sign(NS, epoch, digest, NOW - 1).unwrap();
        bundle_of(witness, hsm, epoch)
    }

    /// The bundle of the signed epoch `epoch`, countersigned, with a
    /// checkpoint of the witness's log as it is now.
    fn bundle_of(witness: &Witness<SoftHsm>, hsm: &SoftHsm, epoch: u64) -> Vec<u8> {
        let w = witness.entries(NS)[epoch as usize - 1].clone();
        let cs = countersign(hsm, "operator", &w).unwrap();
        let tree = witness.tree(NS).unwrap();
        let proof = tree.inclusion_proof(w.leaf_index, tree.size()).unwrap();
        let cp = witness.checkpoint(NS, NOW - 1).unwrap();
        Bundle::assemble(artifact(epoch).encode().unwrap(), &w, cs, proof, &cp)
            .encode()
            .unwrap()
    }

    #[test]
    fn mutant_client_accept_rechecks_a_stale_check_and_needs_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let hsm = SoftHsm::from_seed(13);
        let spec = WitnessKeySpec {
            name: "w".into(),
            not_before: 0,
        };
        let mut witness =
            Witness::open(hsm.clone(), vec![spec], dir.path().join("witness")).unwrap();
        let operator_key = hsm
            .public_key(hsm.key("operator", KeyKind::Signing).unwrap())
            .unwrap();
        let e1 = publish(&mut witness, &hsm, 1);
        let e2 = publish(&mut witness, &hsm, 2);
        publish(&mut witness, &hsm, 3);
        // Epoch 2 again, with the checkpoint of size 3.
        let e2_at_3 = bundle_of(&witness, &hsm, 2);
        let proof = |a, b| {
            witness
                .consistency_proof(NS, a, b)
                .unwrap()
                .encode()
                .unwrap()
        };
        let pinned = vec![WitnessKey {
            name: "w".into(),
            public_key: witness.public_key("w").unwrap(),
            not_before: 0,
        }];
        let client = VaultClient::with_verifier(
            Vec::new(),
            1,
            FleetVerifier::new(NS, pinned, operator_key),
            Arc::new(|| NOW),
            VaultClientConfig::default(),
        )
        .unwrap();
        let Trust::Bundles { verifier, .. } = &client.trust else {
            unreachable!("a client of bundles")
        };
        let replica = 1;
        // The client holds checkpoint 1; a reply with bundle 2 is checked
        // against it.
        verifier.lock().verify(&e1, NOW, replica).unwrap();
        let mut reply = VaultReply::new();
        reply.bundle = e2;
        reply.consistency_proof = proof(1, 2);
        let (key, accepted) = client.reply_key(replica, &reply).unwrap();
        let accepted = accepted.expect("a bundle's check");
        assert_eq!(key, [1; 32]);
        // Another reply, with epoch 2 at checkpoint 3, is accepted first.
        verifier
            .lock()
            .verify_with_proof(&e2_at_3, Some(&proof(1, 3)), NOW, replica)
            .unwrap();
        // The stale check is made again against checkpoint 3 (the proof of
        // 2 to 3 is the one such a reply carries): a reply verified under
        // another key than the check gives now is refused, and nothing moves.
        reply.consistency_proof = proof(2, 3);
        assert!(matches!(
            client.accept(replica, &reply, &[2; 32], &accepted),
            Err(ReplyError::Signature)
        ));
        assert_eq!(verifier.lock().last_checkpoint_size(), Some(3));
        // Under the same key it is accepted, and the newest stays the newest.
        client.accept(replica, &reply, &key, &accepted).unwrap();
        assert_eq!(client.fleet_epoch(), Some(2));
        assert_eq!(verifier.lock().last_checkpoint_size(), Some(3));
    }
}

#[cfg(test)]
mod bundled_reply_tests {
    //! `verify_bundled_reply`, the sans-IO bundle-mode check the simulator's
    //! devices make: a replica's key is good only in an epoch the verifier may
    //! still accept, and the verifier moves only on a reply that verified.
    use super::*;
    use vaultfleet::hsm::{Hsm, KeyKind};
    use vaultfleet::SoftHsm;
    use vaultfleet_audit::fleet::{FleetArtifact, ReplicaKeys};
    use vaultfleet_audit::witness::countersign;
    use vaultfleet_audit::{Bundle, Witness, WitnessKey, WitnessKeySpec};

    const NS: &str = "example.vault.bundled.v1";
    const NOW: u64 = 1_800_000_000;
    const GROUP: u64 = 7;

    fn response_key(hsm: &SoftHsm, id: u64) -> [u8; 32] {
        let k = hsm
            .key(&format!("response/{id}"), KeyKind::Signing)
            .unwrap();
        hsm.public_key(k).unwrap()
    }

    /// Epoch `epoch` lists replicas `ids`.
    fn artifact(hsm: &SoftHsm, epoch: u64, ids: &[u64]) -> FleetArtifact {
        FleetArtifact {
            fleet_id: "example-fleet".into(),
            epoch,
            replicas: ids
                .iter()
                .map(|&id| ReplicaKeys {
                    id,
                    datacenter: "dc-a".into(),
                    response_key: response_key(hsm, id),
                    transport_key: [0x40 + id as u8; 32],
                    opaque_key: [0x80; 32],
                })
                .collect(),
            voters: ids.to_vec(),
            learners: vec![],
            not_before: NOW - 1,
            not_after: NOW + 1000,
        }
    }

    /// The witness logs `a`; returns its bundle, checkpointed now.
    fn publish(witness: &mut Witness<SoftHsm>, hsm: &SoftHsm, a: &FleetArtifact) -> Vec<u8> {
        let w = witness
            .sign(NS, a.epoch, a.digest().unwrap(), NOW - 1)
            .unwrap();
        let cs = countersign(hsm, "operator", &w).unwrap();
        let tree = witness.tree(NS).unwrap();
        let proof = tree.inclusion_proof(w.leaf_index, tree.size()).unwrap();
        let cp = witness.checkpoint(NS, NOW - 1).unwrap();
        Bundle::assemble(a.encode().unwrap(), &w, cs, proof, &cp)
            .encode()
            .unwrap()
    }

    /// Replica `id`'s reply to the request `digest`, signed with `signer`'s
    /// key, carrying `bundle`.
    fn reply(hsm: &SoftHsm, id: u64, signer: u64, digest: [u8; 32], bundle: &[u8]) -> Vec<u8> {
        let mut body = VaultReplyBody::new();
        body.replica = id;
        body.request_digest = digest.to_vec();
        body.status = VaultReplyStatus::REPLY_OK.into();
        let body = wire::encode_bounded(&body);
        let k = hsm
            .key(&format!("response/{signer}"), KeyKind::Signing)
            .unwrap();
        let signature = hsm
            .sign(k, &crate::crypto::reply_signed_bytes(GROUP, &body))
            .unwrap();
        let mut r = VaultReply::new();
        r.body = body;
        r.signature = signature.to_vec();
        r.bundle = bundle.to_vec();
        wire::encode_bounded(&r)
    }

    #[test]
    fn a_replaced_replicas_key_is_refused_two_epochs_on() {
        let dir = tempfile::tempdir().unwrap();
        let hsm = SoftHsm::from_seed(17);
        let spec = WitnessKeySpec {
            name: "w".into(),
            not_before: 0,
        };
        let mut witness =
            Witness::open(hsm.clone(), vec![spec], dir.path().join("witness")).unwrap();
        let operator_key = hsm
            .public_key(hsm.key("operator", KeyKind::Signing).unwrap())
            .unwrap();
        let pins = vec![WitnessKey {
            name: "w".into(),
            public_key: witness.public_key("w").unwrap(),
            not_before: 0,
        }];
        // No consistency proofs here: the sizes are taken as they come.
        let mut verifier = FleetVerifier::new(NS, pins, operator_key);
        // Epoch 1: replicas 1..=3; epoch 2 replaces 3 by 4; epoch 3 adds 5.
        let e1 = publish(&mut witness, &hsm, &artifact(&hsm, 1, &[1, 2, 3]));
        let e2 = publish(&mut witness, &hsm, &artifact(&hsm, 2, &[1, 2, 4]));
        let e3 = publish(&mut witness, &hsm, &artifact(&hsm, 3, &[1, 2, 4, 5]));
        let d = [9; 32];
        let ok = verify_bundled_reply(&mut verifier, GROUP, 3, &reply(&hsm, 3, 3, d, &e1), &d, NOW)
            .unwrap();
        assert_eq!((ok.epoch, ok.response_key), (1, response_key(&hsm, 3)));
        // Another request's digest, or another replica's key: refused, and
        // the verifier does not move to the newer bundle they carry.
        assert!(matches!(
            verify_bundled_reply(
                &mut verifier,
                GROUP,
                4,
                &reply(&hsm, 4, 4, d, &e2),
                &[8; 32],
                NOW
            ),
            Err(ReplyError::OtherRequest)
        ));
        assert!(matches!(
            verify_bundled_reply(&mut verifier, GROUP, 4, &reply(&hsm, 4, 3, d, &e2), &d, NOW),
            Err(ReplyError::Signature)
        ));
        assert_eq!(verifier.newest_epoch(), Some(1));
        // Epoch 2 accepted: replica 3, still running on epoch 1, keeps the
        // one epoch of grace; epoch 3 accepted: it is refused.
        verify_bundled_reply(&mut verifier, GROUP, 4, &reply(&hsm, 4, 4, d, &e2), &d, NOW).unwrap();
        verify_bundled_reply(&mut verifier, GROUP, 3, &reply(&hsm, 3, 3, d, &e1), &d, NOW).unwrap();
        let r = verify_bundled_reply(&mut verifier, GROUP, 5, &reply(&hsm, 5, 5, d, &e3), &d, NOW)
            .unwrap();
        assert_eq!(r.epoch, 3);
        assert!(matches!(
            verify_bundled_reply(&mut verifier, GROUP, 3, &reply(&hsm, 3, 3, d, &e1), &d, NOW),
            Err(ReplyError::Bundle(BundleError::EpochRollback {
                got: 1,
                newest: 3
            }))
        ));
        // Replica 3 is not in epoch 2 or 3 at all.
        assert!(matches!(
            verify_bundled_reply(&mut verifier, GROUP, 3, &reply(&hsm, 3, 3, d, &e3), &d, NOW),
            Err(ReplyError::Bundle(BundleError::ReplicaNotInBundle(3)))
        ));
        // No bundle: refused.
        assert!(matches!(
            verify_bundled_reply(&mut verifier, GROUP, 1, &reply(&hsm, 1, 1, d, &[]), &d, NOW),
            Err(ReplyError::NoBundle)
        ));
        assert_eq!(verifier.newest_epoch(), Some(3));
    }
}
