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

use crate::crypto::{
    credential_identifier, hsm_rng, nonce_mac_input, reply_signed_bytes, seal_for_client,
    secret_aad, sha256, TRANSPORT_NONCE_BYTES,
};
use crate::error::{InvalidInput, RecordError, VaultError};
use crate::keys::VaultKeys;
use crate::user_id::UserId;
use crate::wire;
use crate::wire::{
    vault_command, VaultCommand, VaultConsume, VaultDelete, VaultRecord, VaultRegister,
    VaultReplace, VaultReply, VaultReplyBody, VaultRequestId, VaultReset,
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
        user: &UserId,
        request: &[u8],
    ) -> Result<RegistrationStarted, VaultError> {
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
        user: &UserId,
        upload: &[u8],
        nonce: &RegistrationNonce<'_>,
        secret: &[u8],
        max_attempts: u32,
    ) -> Result<VaultRegister, VaultError> {
        let RegistrationNonce { nonce, tag } = *nonce;
        let genuine = self.keys.hsm.verify_mac(
            self.keys.registration_key,
            &nonce_mac_input(self.keys.group, user, nonce),
            tag,
        )?;
        if !genuine {
            return Err(InvalidInput::NonceNotGenuine.into());
        }
        check_registration(secret, max_attempts, nonce)?;
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
        Ok(r)
    }

    /// Registration, second message: seals the secret under the HSM record key
    /// and returns the `register` command to propose.
    pub fn register_command(
        &self,
        request: &VaultRequestId,
        user: &UserId,
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

    /// Encrypts `secret` for the client under a key derived from the session key:
    /// returns (nonce, ciphertext).
    pub fn encrypt_for_client(
        &self,
        session_key: &[u8],
        request_digest: &[u8],
        user: &UserId,
        secret: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), VaultError> {
        let mut nonce = [0u8; TRANSPORT_NONCE_BYTES];
        self.keys.hsm.random(&mut nonce)?;
        let ct = seal_for_client(session_key, request_digest, user, &nonce, secret)
            .ok_or(VaultError::Encrypt)?;
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
        let body = wire::encode_bounded(&body);
        let signature = self.keys.hsm.sign(
            self.keys.response_key,
            &reply_signed_bytes(self.keys.group, &body),
        )?;
        let mut reply = VaultReply::new();
        reply.body = body;
        reply.signature = signature.to_vec();
        reply.bundle = bundle.to_vec();
        Ok(wire::encode_bounded(&reply))
    }
}
