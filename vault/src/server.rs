//! `VaultServer`: the server side of the vault's OPAQUE flows, sans-IO.
//!
//! It turns client messages into the commands the fleet must commit, and
//! committed outcomes into the replies the client gets, without proposing or
//! waiting itself: [`VaultService`](super::VaultService) drives it over the
//! threaded runtime, the simulator's vault workload over virtual time. All its
//! randomness comes from the HSM.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload,
    ServerLogin, ServerLoginParameters, ServerRegistration,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::keys::{hsm_rng, VaultKeys};
use super::machine::{SECRET_MAX, USER_ID_MAX};
use super::{Suite, OPAQUE_CONTEXT};
use crate::wire;
use crate::wire::{
    vault_command, VaultCommand, VaultConsume, VaultDelete, VaultRecord, VaultRegister,
    VaultReplace, VaultReply, VaultReplyBody, VaultRequestId, VaultReset,
};
use vaultfleet::hsm::{Hsm, HsmError};
use vaultfleet::ReplicaId;

/// What went wrong on the server side of the vault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The HSM refused or failed.
    #[error("vault HSM operation failed: {0}")]
    Hsm(#[from] HsmError),
    /// The vault's keys are missing or unusable.
    #[error("vault keys: {0}")]
    Keys(String),
    /// A client message did not decode or is out of bounds.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// Which message or field.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The client's OPAQUE finalization did not verify: it does not know the code,
    /// or the messages were tampered with.
    #[error("the OPAQUE login did not verify")]
    LoginFailed,
    /// A stored record or sealed secret does not open (tampered state, or another
    /// fleet's record key).
    #[error("stored vault record unusable: {0}")]
    Record(String),
}

fn invalid(what: &'static str, detail: impl std::fmt::Display) -> VaultError {
    VaultError::Invalid {
        what,
        detail: detail.to_string(),
    }
}

/// The OPAQUE credential identifier of one registration: the user id and the
/// registration's random nonce, so the OPRF key differs per registration.
fn credential_identifier(user: &[u8], nonce: &[u8]) -> Vec<u8> {
    let mut id = Vec::with_capacity(16 + user.len() + nonce.len());
    id.extend_from_slice(b"vaultfleet/v1");
    id.extend_from_slice(&(user.len() as u16).to_be_bytes());
    id.extend_from_slice(user);
    id.extend_from_slice(nonce);
    id
}

fn secret_aad(group: u64, user: &[u8], opaque_record: &[u8], nonce: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(96 + user.len());
    aad.extend_from_slice(b"vaultfleet/vault/secret/v1");
    aad.extend_from_slice(&group.to_be_bytes());
    aad.extend_from_slice(&(user.len() as u16).to_be_bytes());
    aad.extend_from_slice(user);
    aad.extend_from_slice(&Sha256::digest(opaque_record));
    aad.extend_from_slice(nonce);
    aad
}

/// What the registration MAC covers: the fleet, the user and the nonce.
fn nonce_mac_input(group: u64, user: &[u8], nonce: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + user.len());
    m.extend_from_slice(b"vaultfleet/vault/credential-nonce/v1");
    m.extend_from_slice(&group.to_be_bytes());
    m.extend_from_slice(&(user.len() as u16).to_be_bytes());
    m.extend_from_slice(user);
    m.extend_from_slice(nonce);
    m
}

/// The key that carries a recovered secret to the client, derived from the OPAQUE
/// session key (which only the client and this server know).
pub(crate) fn transport_key(session_key: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(session_key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(b"vaultfleet/vault/secret-transport/v1");
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// The associated data of a secret in transit: the request it answers and the user.
pub(crate) fn transport_aad(request_digest: &[u8], user: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64 + user.len());
    aad.extend_from_slice(b"vaultfleet/vault/secret-transport/v1");
    aad.extend_from_slice(request_digest);
    aad.extend_from_slice(user);
    aad
}

/// What a reply signature covers.
pub(crate) fn reply_signed_bytes(group: u64, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(40 + body.len());
    m.extend_from_slice(b"vaultfleet/vault/reply/v1");
    m.extend_from_slice(&group.to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// SHA-256, the digest of requests and credential requests.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn check_user(user: &[u8]) -> Result<(), VaultError> {
    if user.is_empty() || user.len() > USER_ID_MAX {
        return Err(invalid(
            "user id",
            format!("must be 1..={USER_ID_MAX} bytes"),
        ));
    }
    Ok(())
}

fn command(request: &VaultRequestId, user: &[u8], op: vault_command::Op) -> Vec<u8> {
    let mut c = VaultCommand::new();
    c.user = user.to_vec();
    c.request = Some(request.clone()).into();
    c.op = Some(op);
    wire::encode(&c)
}

/// A login whose attempt has been spent and whose OPAQUE response was sent: the
/// server's half of the key exchange, waiting for the client's finalization.
pub struct PendingLogin {
    user: Vec<u8>,
    ticket: u64,
    generation: u64,
    record: VaultRecord,
    erased: bool,
    state: ServerLogin<Suite>,
}

impl PendingLogin {
    /// The user logging in.
    pub fn user(&self) -> &[u8] {
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

    fn reinstate(&self) -> Option<VaultRecord> {
        self.erased.then(|| self.record.clone())
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

/// What [`VaultServer::registration_start`] returns to the client.
#[derive(Debug, Clone)]
pub struct RegistrationStarted {
    /// The OPAQUE registration response.
    pub response: Vec<u8>,
    /// The credential nonce the fleet drew for this registration.
    pub nonce: [u8; 32],
    /// The HSM's MAC over (fleet, user, nonce).
    pub tag: [u8; 32],
}

/// A credential nonce and its tag, as the client sends them back.
#[derive(Debug, Clone, Copy)]
pub struct RegistrationNonce<'a> {
    /// The nonce.
    pub nonce: &'a [u8],
    /// Its tag.
    pub tag: &'a [u8],
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
    /// MAC over (user, nonce); the client sends both back with its upload, which
    /// proves the fleet drew the nonce. Nothing is stored.
    pub fn registration_start(
        &self,
        user: &[u8],
        request: &[u8],
    ) -> Result<RegistrationStarted, VaultError> {
        check_user(user)?;
        let request = RegistrationRequest::<Suite>::deserialize(request)
            .map_err(|e| invalid("OPAQUE registration request", e))?;
        let mut nonce = [0u8; 32];
        self.keys.hsm.random(&mut nonce)?;
        let start = ServerRegistration::<Suite>::start(
            &self.keys.setup,
            request,
            &credential_identifier(user, &nonce),
        )
        .map_err(|e| invalid("OPAQUE registration request", e))?;
        let tag = self.keys.hsm.mac(
            self.keys.registration_key,
            &nonce_mac_input(self.keys.group, user, &nonce),
        )?;
        Ok(RegistrationStarted {
            response: start.message.serialize().to_vec(),
            nonce,
            tag,
        })
    }

    fn sealed_registration(
        &self,
        user: &[u8],
        upload: &[u8],
        nonce: &RegistrationNonce<'_>,
        secret: &[u8],
        max_attempts: u32,
    ) -> Result<VaultRegister, VaultError> {
        check_user(user)?;
        let RegistrationNonce { nonce, tag } = *nonce;
        let genuine = self.keys.hsm.verify_mac(
            self.keys.registration_key,
            &nonce_mac_input(self.keys.group, user, nonce),
            tag,
        )?;
        if !genuine {
            return Err(invalid(
                "credential nonce",
                "not drawn by this fleet for this user (its tag does not verify)",
            ));
        }
        if secret.is_empty() || secret.len() > SECRET_MAX {
            return Err(invalid("secret", format!("must be 1..={SECRET_MAX} bytes")));
        }
        if max_attempts == 0 || max_attempts > super::MAX_ATTEMPTS_LIMIT {
            return Err(invalid(
                "max_attempts",
                format!(
                    "{max_attempts} is outside 1..={}",
                    super::MAX_ATTEMPTS_LIMIT
                ),
            ));
        }
        if nonce.len() != 32 {
            return Err(invalid("credential nonce", "must be 32 bytes"));
        }
        let upload = RegistrationUpload::<Suite>::deserialize(upload)
            .map_err(|e| invalid("OPAQUE registration upload", e))?;
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
        Ok(r)
    }

    /// Registration, second message: seals the secret under the HSM record key
    /// and returns the `register` command to propose.
    pub fn register_command(
        &self,
        request: &VaultRequestId,
        user: &[u8],
        upload: &[u8],
        nonce: &RegistrationNonce<'_>,
        secret: &[u8],
        max_attempts: u32,
    ) -> Result<Vec<u8>, VaultError> {
        let r = self.sealed_registration(user, upload, nonce, secret, max_attempts)?;
        Ok(command(request, user, vault_command::Op::Register(r)))
    }

    /// Re-registration authorised by `login`: the `replace` command to propose.
    #[allow(clippy::too_many_arguments)]
    pub fn replace_command(
        &self,
        request: &VaultRequestId,
        login: &PendingLogin,
        upload: &[u8],
        nonce: &RegistrationNonce<'_>,
        secret: &[u8],
        max_attempts: u32,
    ) -> Result<Vec<u8>, VaultError> {
        let r = self.sealed_registration(&login.user, upload, nonce, secret, max_attempts)?;
        let mut x = VaultReplace::new();
        x.ticket = login.ticket;
        x.generation = login.generation;
        x.record = Some(r).into();
        x.reinstate = login.reinstate().into();
        Ok(command(request, &login.user, vault_command::Op::Replace(x)))
    }

    /// Login, first message: checks the credential request decodes and returns
    /// the `consume` command that must commit before any answer.
    pub fn consume_command(
        &self,
        request: &VaultRequestId,
        user: &[u8],
        credential_request: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        check_user(user)?;
        CredentialRequest::<Suite>::deserialize(credential_request)
            .map_err(|e| invalid("OPAQUE credential request", e))?;
        let mut x = VaultConsume::new();
        x.request_digest = sha256(credential_request).to_vec();
        Ok(command(request, user, vault_command::Op::Consume(x)))
    }

    /// Login, after the consume committed: the OPAQUE credential response for
    /// `record`, and the login state kept until the client finishes.
    pub fn login_respond(
        &self,
        user: &[u8],
        credential_request: &[u8],
        ticket: u64,
        record: VaultRecord,
        erased: bool,
    ) -> Result<(PendingLogin, Vec<u8>), VaultError> {
        let request = CredentialRequest::<Suite>::deserialize(credential_request)
            .map_err(|e| invalid("OPAQUE credential request", e))?;
        let password_file = ServerRegistration::<Suite>::deserialize(&record.opaque_record)
            .map_err(|e| VaultError::Record(format!("OPAQUE record does not decode: {e}")))?;
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
        .map_err(|e| invalid("OPAQUE credential request", e))?;
        let login = PendingLogin {
            user: user.to_vec(),
            ticket,
            generation: record.generation,
            record,
            erased,
            state: start.state,
        };
        Ok((login, start.message.serialize().to_vec()))
    }

    /// Login, client's finalization: the OPAQUE session key if the client proved
    /// the code. The caller must drop the login after one finalization, whatever
    /// its result (`VaultService` removes it from its table first).
    pub fn login_finish(
        &self,
        login: &PendingLogin,
        finalization: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let message = CredentialFinalization::<Suite>::deserialize(finalization)
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
        Ok(Zeroizing::new(done.session_key.to_vec()))
    }

    /// After a proven login: the `reset` command forgiving its attempt (and
    /// carrying the record back if that attempt erased it).
    pub fn reset_command(&self, request: &VaultRequestId, login: &PendingLogin) -> Vec<u8> {
        let mut x = VaultReset::new();
        x.ticket = login.ticket;
        x.generation = login.generation;
        x.reinstate = login.reinstate().into();
        command(request, &login.user, vault_command::Op::Reset(x))
    }

    /// After a proven login: the `delete` command.
    pub fn delete_command(&self, request: &VaultRequestId, login: &PendingLogin) -> Vec<u8> {
        let mut x = VaultDelete::new();
        x.ticket = login.ticket;
        x.generation = login.generation;
        x.reinstate = login.reinstate().into();
        command(request, &login.user, vault_command::Op::Delete(x))
    }

    /// Opens the secret sealed in `record`, for `user`.
    pub fn open_secret(
        &self,
        user: &[u8],
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
                    VaultError::Record(format!("sealed secret does not open: {e}"))
                }
                other => VaultError::Hsm(other),
            })
    }

    /// Encrypts `secret` for the client under a key derived from the session key:
    /// returns (nonce, ciphertext).
    pub fn encrypt_for_client(
        &self,
        session_key: &[u8],
        request_digest: &[u8],
        user: &[u8],
        secret: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), VaultError> {
        let key = transport_key(session_key);
        let mut nonce = [0u8; 24];
        self.keys.hsm.random(&mut nonce)?;
        let aead = XChaCha20Poly1305::new(key.as_ref().into());
        let aad = transport_aad(request_digest, user);
        let ct = aead
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret,
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::Keys("XChaCha20-Poly1305 refused to encrypt".into()))?;
        Ok((nonce.to_vec(), ct))
    }

    /// Signs a reply body with this replica's response key.
    pub fn sign(&self, body: VaultReplyBody) -> Result<Vec<u8>, VaultError> {
        self.sign_with_bundle(body, &[])
    }

    /// Signs a reply body and attaches the fleet's validation bundle.
    pub fn sign_with_bundle(
        &self,
        mut body: VaultReplyBody,
        bundle: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        body.replica = self.keys.replica;
        let body = wire::encode(&body);
        let signature = self.keys.hsm.sign(
            self.keys.response_key,
            &reply_signed_bytes(self.keys.group, &body),
        )?;
        let mut reply = VaultReply::new();
        reply.body = body;
        reply.signature = signature.to_vec();
        reply.bundle = bundle.to_vec();
        Ok(wire::encode(&reply))
    }
}
