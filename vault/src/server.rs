//! `VaultServer`: the server side of the vault's OPAQUE flows, sans-IO.
//!
//! It turns client messages into the commands the fleet must commit, and
//! committed outcomes into the replies the client gets, without proposing or
//! waiting itself: [`VaultService`](super::VaultService) drives it over the
//! threaded runtime, the simulator's vault workload over virtual time. All its
//! randomness comes from the HSM.

use opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload,
    ServerLogin, ServerLoginParameters, ServerRegistration,
};
use zeroize::Zeroizing;

use crate::bundle_source::ReplyExtras;
use crate::crypto::{
    credential_identifier, hsm_rng, nonce_mac_input, registration_secret_digest,
    reply_signed_bytes, request_is_authentic, seal_for_client, secret_aad, sha256, NonceBinding,
    RegistrationKind, TRANSPORT_NONCE_BYTES,
};
use crate::error::{InvalidInput, RecordError, VaultError};
use crate::keys::VaultKeys;
use crate::user_id::UserId;
use crate::wire;
use crate::wire::{
    vault_client_request, vault_command, VaultClientRequest, VaultCommand, VaultConsume,
    VaultDelete, VaultLoginFinish, VaultLoginPurpose, VaultRecord, VaultRegister,
    VaultRegisterFinish, VaultReplace, VaultReply, VaultReplyBody, VaultRequestId, VaultReset,
};
use crate::{Suite, OPAQUE_CONTEXT};
use vaultfleet::hsm::{Hsm, HsmError};
use vaultfleet::ReplicaId;

/// The credential nonce's length, in bytes.
const CREDENTIAL_NONCE_BYTES: usize = 32;

fn opaque(message: &'static str) -> impl FnOnce(opaque_ke::errors::ProtocolError) -> VaultError {
    move |source| VaultError::Invalid(InvalidInput::Opaque { message, source })
}

/// Checks what a registration asks for against the vault's limits.
fn check_registration(secret: &[u8], max_attempts: u32, nonce: &[u8]) -> Result<(), InvalidInput> {
    InvalidInput::check_registration(secret, max_attempts)?;
    if nonce.len() != CREDENTIAL_NONCE_BYTES {
        return Err(InvalidInput::NonceLength { bytes: nonce.len() });
    }
    Ok(())
}

fn command(request: &VaultRequestId, user: &UserId, op: vault_command::Op) -> Vec<u8> {
    let mut c = VaultCommand::new();
    c.user = user.as_bytes().to_vec();
    c.request = Some(request.clone()).into();
    c.op = Some(op);
    wire::encode_bounded(&c)
}

/// A login whose attempt has been spent and whose OPAQUE response was sent: the
/// server's half of the key exchange, waiting for the client's finalization.
pub struct PendingLogin {
    user: UserId,
    ticket: u64,
    generation: u64,
    record: VaultRecord,
    erased: bool,
    state: ServerLogin<Suite>,
}

impl PendingLogin {
    /// The user logging in.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// The spent attempt's ticket.
    pub fn ticket(&self) -> u64 {
        self.ticket
    }

    /// The registration generation the attempt was counted against.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The record as the consume returned it (without the sealed secret, unless
    /// the consume erased it).
    pub fn record(&self) -> &VaultRecord {
        &self.record
    }

    /// True when the consume erased the record (its last attempt): a successful
    /// login must carry the record back.
    pub fn erased(&self) -> bool {
        self.erased
    }

    /// Attempts left after this login's attempt.
    pub fn attempts_left(&self) -> u32 {
        self.record
            .max_attempts
            .saturating_sub(self.record.spent.len() as u32)
    }
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLogin")
            .field("ticket", &self.ticket)
            .field("generation", &self.generation)
            .field("erased", &self.erased)
            .finish_non_exhaustive()
    }
}

/// A login whose finalization proved the code and whose request (purpose, new
/// registration, request id: every byte) verified under its session key. Only
/// [`VaultServer::login_finish`] makes one, and every command that acts on a
/// login's authority takes one: an unproven or unauthenticated login cannot
/// reach the fleet.
pub struct VerifiedLogin {
    user: UserId,
    ticket: u64,
    generation: u64,
    record: VaultRecord,
    erased: bool,
    purpose: VaultLoginPurpose,
    request: VaultRequestId,
    finish: VaultLoginFinish,
    session_key: Zeroizing<Vec<u8>>,
}

impl VerifiedLogin {
    /// The user who proved the code.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// The login's ticket (its consume's, from the vault's ticket clock).
    pub fn ticket(&self) -> u64 {
        self.ticket
    }

    /// The registration generation the attempt was counted against.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The record as the consume returned it.
    pub fn record(&self) -> &VaultRecord {
        &self.record
    }

    /// What the authenticated finish asks for.
    pub fn purpose(&self) -> VaultLoginPurpose {
        self.purpose
    }

    /// The authenticated finish's request id.
    pub fn request(&self) -> &VaultRequestId {
        &self.request
    }

    /// The OPAQUE session key shared with the client that proved the code.
    pub(crate) fn session_key(&self) -> &[u8] {
        &self.session_key
    }

    fn reinstate(&self) -> Option<VaultRecord> {
        self.erased.then(|| self.record.clone())
    }

    fn require(&self, needed: VaultLoginPurpose) -> Result<(), VaultError> {
        if self.purpose == needed {
            Ok(())
        } else {
            Err(VaultError::PurposeMismatch {
                verified: self.purpose,
                needed,
            })
        }
    }
}

impl std::fmt::Debug for VerifiedLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedLogin")
            .field("ticket", &self.ticket)
            .field("generation", &self.generation)
            .field("purpose", &self.purpose)
            .finish_non_exhaustive()
    }
}

/// What [`VaultServer::registration_start`] returns to the client.
#[derive(Debug, Clone)]
pub struct RegistrationStarted {
    /// The OPAQUE registration response.
    pub response: Vec<u8>,
    /// The credential nonce the fleet drew for this registration.
    pub nonce: [u8; 32],
    /// The HSM's MAC over (fleet, user, nonce, max_attempts, secret digest,
    /// kind, issue generation).
    pub tag: [u8; 32],
    /// The generation the registration was issued at (the client echoes it).
    pub issued_generation: u64,
}

/// What a registration will store, as the client announces it in its first
/// message (and the nonce tag then binds).
#[derive(Debug, Clone, Copy)]
pub struct RegistrationTerms<'a> {
    /// The attempt limit.
    pub max_attempts: u32,
    /// [`registration_secret_digest`](crate::registration_secret_digest) of the secret.
    pub secret_digest: &'a [u8],
    /// The user's registration generation now (0 if never registered), as a
    /// linearizable read of the fleet gives it: the registration applies only
    /// while the user is still deleted at this generation.
    pub issued_generation: u64,
}

/// A registration's second message, as the client sends it: what the server
/// seals and the fleet stores.
#[derive(Clone, Copy)]
pub struct Registration<'a> {
    /// The OPAQUE registration upload.
    pub upload: &'a [u8],
    /// The credential nonce the fleet drew.
    pub nonce: &'a [u8],
    /// Its tag.
    pub tag: &'a [u8],
    /// The secret to seal.
    pub secret: &'a [u8],
    /// The attempt limit.
    pub max_attempts: u32,
    /// The generation the start reported.
    pub issued_generation: u64,
}

impl std::fmt::Debug for Registration<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("max_attempts", &self.max_attempts)
            .field("issued_generation", &self.issued_generation)
            .finish_non_exhaustive()
    }
}

impl<'a> Registration<'a> {
    pub(crate) fn of_finish(finish: &'a VaultRegisterFinish) -> Self {
        Registration {
            upload: &finish.registration_upload,
            nonce: &finish.credential_nonce,
            tag: &finish.nonce_tag,
            secret: &finish.secret,
            max_attempts: finish.max_attempts,
            issued_generation: finish.issued_generation,
        }
    }
}

fn request_id(request: &VaultClientRequest) -> Result<VaultRequestId, VaultError> {
    request
        .request
        .clone()
        .into_option()
        .ok_or(VaultError::Invalid(InvalidInput::NoRequestId))
}

/// The server side of the vault's OPAQUE flows for one replica (sans-IO).
pub struct VaultServer<H: Hsm> {
    keys: VaultKeys<H>,
}

impl<H: Hsm> std::fmt::Debug for VaultServer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultServer")
            .field("keys", &self.keys)
            .finish()
    }
}

impl<H: Hsm> VaultServer<H> {
    /// A server over `keys`.
    pub fn new(keys: VaultKeys<H>) -> Self {
        Self { keys }
    }

    /// The replica this server answers for.
    pub fn replica(&self) -> ReplicaId {
        self.keys.replica
    }

    /// The raft group of the fleet.
    pub fn group(&self) -> u64 {
        self.keys.group
    }

    /// Random bytes from the HSM.
    pub fn random(&self, out: &mut [u8]) -> Result<(), VaultError> {
        Ok(self.keys.hsm.random(out)?)
    }

    /// Registration, first message: evaluates the OPRF under a fresh credential
    /// nonce. Returns the OPAQUE registration response, the nonce and the HSM's
    /// MAC over (user, nonce, `terms`, first registration); the client sends both
    /// back with its upload, which proves the fleet drew the nonce for exactly
    /// these terms: a finish with another limit, secret or issue generation is
    /// refused, and the fleet applies it only while the user is still at
    /// `terms.issued_generation`. Nothing is stored.
    pub fn registration_start(
        &self,
        user: &UserId,
        request: &[u8],
        terms: &RegistrationTerms<'_>,
    ) -> Result<RegistrationStarted, VaultError> {
        self.start_registration(user, request, terms, RegistrationKind::First)
    }

    /// Re-registration, first message, for a login whose authenticated finish
    /// asked for it (purpose `VAULT_REREGISTER_START`): as
    /// [`VaultServer::registration_start`] with the finish's request, limit and
    /// secret digest, bound to this login's ticket and generation.
    pub fn reregistration_start(
        &self,
        login: &VerifiedLogin,
    ) -> Result<RegistrationStarted, VaultError> {
        login.require(VaultLoginPurpose::VAULT_REREGISTER_START)?;
        self.start_registration(
            &login.user,
            &login.finish.registration_request,
            &RegistrationTerms {
                max_attempts: login.finish.max_attempts,
                secret_digest: &login.finish.secret_digest,
                issued_generation: login.generation,
            },
            RegistrationKind::Replace {
                ticket: login.ticket,
            },
        )
    }

    fn start_registration(
        &self,
        user: &UserId,
        request: &[u8],
        terms: &RegistrationTerms<'_>,
        kind: RegistrationKind,
    ) -> Result<RegistrationStarted, VaultError> {
        if terms.max_attempts == 0 || terms.max_attempts > crate::limits::MAX_ATTEMPTS_LIMIT {
            return Err(InvalidInput::MaxAttempts(terms.max_attempts).into());
        }
        if terms.secret_digest.len() != 32 {
            return Err(InvalidInput::SecretDigestLength {
                bytes: terms.secret_digest.len(),
            }
            .into());
        }
        let request = RegistrationRequest::<Suite>::deserialize(request)
            .map_err(opaque("OPAQUE registration request"))?;
        let mut nonce = [0u8; 32];
        self.keys.hsm.random(&mut nonce)?;
        let start = ServerRegistration::<Suite>::start(
            &self.keys.setup,
            request,
            &credential_identifier(user, &nonce),
        )
        .map_err(opaque("OPAQUE registration request"))?;
        let tag = self.keys.hsm.mac(
            self.keys.registration_key,
            &nonce_mac_input(&NonceBinding {
                group: self.keys.group,
                user,
                nonce: &nonce,
                max_attempts: terms.max_attempts,
                secret_digest: terms.secret_digest,
                kind,
                issued_generation: terms.issued_generation,
            }),
        )?;
        Ok(RegistrationStarted {
            response: start.message.serialize().to_vec(),
            nonce,
            tag,
            issued_generation: terms.issued_generation,
        })
    }

    fn sealed_registration(
        &self,
        user: &UserId,
        registration: &Registration<'_>,
        kind: RegistrationKind,
    ) -> Result<VaultRegister, VaultError> {
        let Registration {
            upload,
            nonce,
            tag,
            secret,
            max_attempts,
            issued_generation,
        } = *registration;
        check_registration(secret, max_attempts, nonce)?;
        // The tag binds the nonce to the limit and the secret the client
        // announced in its first message, to the kind of registration and to the
        // generation it was issued at: a rewritten finish does not verify.
        let digest = registration_secret_digest(user, secret);
        let genuine = self.keys.hsm.verify_mac(
            self.keys.registration_key,
            &nonce_mac_input(&NonceBinding {
                group: self.keys.group,
                user,
                nonce,
                max_attempts,
                secret_digest: &digest,
                kind,
                issued_generation,
            }),
            tag,
        )?;
        if !genuine {
            return Err(InvalidInput::NonceNotGenuine.into());
        }
        let upload = RegistrationUpload::<Suite>::deserialize(upload)
            .map_err(opaque("OPAQUE registration upload"))?;
        let record = ServerRegistration::<Suite>::finish(upload)
            .serialize()
            .to_vec();
        let aad = secret_aad(self.keys.group, user, &record, nonce);
        let sealed = self.keys.hsm.seal(self.keys.record_key, &aad, secret)?;
        let mut r = VaultRegister::new();
        r.opaque_record = record;
        r.sealed_secret = sealed;
        r.credential_nonce = nonce.to_vec();
        r.max_attempts = max_attempts;
        r.registration_tag = tag.to_vec();
        r.issued_generation = Some(issued_generation);
        Ok(r)
    }

    /// Registration, second message: seals the secret under the HSM record key
    /// and returns the `register` command to propose.
    pub fn register_command(
        &self,
        request: &VaultRequestId,
        user: &UserId,
        registration: &Registration<'_>,
    ) -> Result<Vec<u8>, VaultError> {
        let r = self.sealed_registration(user, registration, RegistrationKind::First)?;
        Ok(command(request, user, vault_command::Op::Register(r)))
    }

    /// Re-registration authorised by `login` (whose authenticated finish asked
    /// for it): checks that `request` is a `RegisterFinish` for the login's user
    /// whose intent tag verifies under the login's session (every byte, the
    /// request id included), and returns the `replace` command to propose.
    pub fn replace_command(
        &self,
        request: &VaultClientRequest,
        login: &VerifiedLogin,
    ) -> Result<Vec<u8>, VaultError> {
        login.require(VaultLoginPurpose::VAULT_REREGISTER_START)?;
        let Some(vault_client_request::Op::RegisterFinish(finish)) = request.op.as_ref() else {
            return Err(InvalidInput::UnexpectedOperation.into());
        };
        if finish.user.as_slice() != login.user.as_bytes() {
            return Err(InvalidInput::LoginOfAnotherUser.into());
        }
        if !request_is_authentic(self.keys.group, &login.user, &login.session_key, request) {
            return Err(VaultError::IntentNotAuthentic);
        }
        let id = request_id(request)?;
        let r = self.sealed_registration(
            &login.user,
            &Registration::of_finish(finish),
            RegistrationKind::Replace {
                ticket: login.ticket,
            },
        )?;
        let mut x = VaultReplace::new();
        x.ticket = login.ticket;
        x.generation = login.generation;
        x.record = Some(r).into();
        x.reinstate = login.reinstate().into();
        Ok(command(&id, &login.user, vault_command::Op::Replace(x)))
    }

    /// Login, first message: checks the credential request decodes and returns
    /// the `consume` command that must commit before any answer.
    pub fn consume_command(
        &self,
        request: &VaultRequestId,
        user: &UserId,
        credential_request: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        CredentialRequest::<Suite>::deserialize(credential_request)
            .map_err(opaque("OPAQUE credential request"))?;
        let mut x = VaultConsume::new();
        x.request_digest = sha256(credential_request).to_vec();
        Ok(command(request, user, vault_command::Op::Consume(x)))
    }

    /// Login, after the consume committed: the OPAQUE credential response for
    /// `record`, and the login state kept until the client finishes.
    pub fn login_respond(
        &self,
        user: &UserId,
        credential_request: &[u8],
        ticket: u64,
        record: VaultRecord,
        erased: bool,
    ) -> Result<(PendingLogin, Vec<u8>), VaultError> {
        let request = CredentialRequest::<Suite>::deserialize(credential_request)
            .map_err(opaque("OPAQUE credential request"))?;
        let password_file = ServerRegistration::<Suite>::deserialize(&record.opaque_record)
            .map_err(RecordError::OpaqueRecord)?;
        let mut rng = hsm_rng(&self.keys.hsm)?;
        let start = ServerLogin::start(
            &mut rng,
            &self.keys.setup,
            Some(password_file),
            request,
            &credential_identifier(user, &record.credential_nonce),
            ServerLoginParameters {
                context: Some(OPAQUE_CONTEXT),
                ..Default::default()
            },
        )
        .map_err(opaque("OPAQUE credential request"))?;
        let login = PendingLogin {
            user: user.clone(),
            ticket,
            generation: record.generation,
            record,
            erased,
            state: start.state,
        };
        Ok((login, start.message.serialize().to_vec()))
    }

    /// Login, client's finalization: checks that `request` is a `LoginFinish`
    /// whose OPAQUE finalization proves the code, and whose intent tag verifies
    /// under the session key that proves (every byte: purpose, new registration,
    /// request id). Only then is there a [`VerifiedLogin`] for the commands to
    /// act on. `login` is only read: a failed check leaves it usable for the
    /// client's genuine finish.
    pub fn login_finish(
        &self,
        login: &PendingLogin,
        request: &VaultClientRequest,
    ) -> Result<VerifiedLogin, VaultError> {
        let Some(vault_client_request::Op::LoginFinish(finish)) = request.op.as_ref() else {
            return Err(InvalidInput::UnexpectedOperation.into());
        };
        let id = request_id(request)?;
        let message = CredentialFinalization::<Suite>::deserialize(&finish.credential_finalization)
            .map_err(|_| VaultError::LoginFailed)?;
        let done = login
            .state
            .clone()
            .finish(
                message,
                ServerLoginParameters {
                    context: Some(OPAQUE_CONTEXT),
                    ..Default::default()
                },
            )
            .map_err(|_| VaultError::LoginFailed)?;
        let mut raw = done.session_key;
        let session_key = Zeroizing::new(raw.to_vec());
        zeroize::Zeroize::zeroize(raw.as_mut_slice());
        // The purpose and the new registration travel in clear: act on them only
        // once the intent tag verifies under this login's session key.
        if !request_is_authentic(self.keys.group, &login.user, &session_key, request) {
            return Err(VaultError::IntentNotAuthentic);
        }
        let purpose = finish
            .purpose
            .enum_value()
            .map_err(|_| InvalidInput::UnknownPurpose)?;
        Ok(VerifiedLogin {
            user: login.user.clone(),
            ticket: login.ticket,
            generation: login.generation,
            record: login.record.clone(),
            erased: login.erased,
            purpose,
            request: id,
            finish: finish.clone(),
            session_key,
        })
    }

    /// After a verified recovery login: the `reset` command forgiving its
    /// attempt (and carrying the record back if that attempt erased it).
    pub fn reset_command(&self, login: &VerifiedLogin) -> Result<Vec<u8>, VaultError> {
        login.require(VaultLoginPurpose::VAULT_RECOVER)?;
        let mut x = VaultReset::new();
        x.ticket = login.ticket;
        x.generation = login.generation;
        x.reinstate = login.reinstate().into();
        Ok(command(
            &login.request,
            &login.user,
            vault_command::Op::Reset(x),
        ))
    }

    /// After a verified delete login: the `delete` command.
    pub fn delete_command(&self, login: &VerifiedLogin) -> Result<Vec<u8>, VaultError> {
        login.require(VaultLoginPurpose::VAULT_DELETE)?;
        let mut x = VaultDelete::new();
        x.ticket = login.ticket;
        x.generation = login.generation;
        x.reinstate = login.reinstate().into();
        Ok(command(
            &login.request,
            &login.user,
            vault_command::Op::Delete(x),
        ))
    }

    /// Opens the secret sealed in `record`, for `user`.
    pub fn open_secret(
        &self,
        user: &UserId,
        record: &VaultRecord,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let aad = secret_aad(
            self.keys.group,
            user,
            &record.opaque_record,
            &record.credential_nonce,
        );
        self.keys
            .hsm
            .unseal(self.keys.record_key, &aad, &record.sealed_secret)
            .map_err(|e| match e {
                HsmError::Unauthentic | HsmError::Malformed(_) => {
                    VaultError::Record(RecordError::SealedSecret(e))
                }
                other => VaultError::Hsm(other),
            })
    }

    /// Encrypts `secret` for the client of `login` under a key derived from its
    /// session key, bound to the request it answers: returns (nonce, ciphertext).
    pub fn encrypt_for_client(
        &self,
        login: &VerifiedLogin,
        request_digest: &[u8],
        secret: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), VaultError> {
        let mut nonce = [0u8; TRANSPORT_NONCE_BYTES];
        self.keys.hsm.random(&mut nonce)?;
        let ct = seal_for_client(
            login.session_key(),
            request_digest,
            &login.user,
            &nonce,
            secret,
        )
        .ok_or(VaultError::Encrypt)?;
        Ok((nonce.to_vec(), ct))
    }

    /// Signs a reply body with this replica's response key.
    pub fn sign(&self, body: VaultReplyBody) -> Result<Vec<u8>, VaultError> {
        self.sign_with(body, &ReplyExtras::default())
    }

    /// Signs a reply body and attaches `extras` outside the signed body: the
    /// fleet's validation bundle, the consistency proof for the request's
    /// `known_checkpoint_size` and early epoch retirements (see
    /// [`BundleSource::extras`](crate::BundleSource::extras)). Each
    /// authenticates itself against witness-signed data.
    pub fn sign_with(
        &self,
        mut body: VaultReplyBody,
        extras: &ReplyExtras,
    ) -> Result<Vec<u8>, VaultError> {
        body.replica = self.keys.replica;
        let body = wire::encode_bounded(&body);
        let signature = self.keys.hsm.sign(
            self.keys.response_key,
            &reply_signed_bytes(self.keys.group, &body),
        )?;
        let mut reply = VaultReply::new();
        reply.body = body;
        reply.signature = signature.to_vec();
        reply.bundle = extras.bundle.clone();
        reply.consistency_proof = extras.consistency_proof.clone();
        reply.retirements = extras.retirements.clone();
        Ok(wire::encode_bounded(&reply))
    }
}
