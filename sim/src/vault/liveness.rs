//! Logins keep working across epochs: at the end of a completed run, once
//! the newest artifact was found to list exactly raft's converged
//! configuration and the operator's pending reloads happened, every device of
//! the run (its verifier as the run left it) registers a fresh user through
//! each member's own service (the run's [`ServiceCore`], serving what its
//! reloads left it) and recovers it through the next member's. Its fleet
//! steps run against a copy of the converged state; every reply is checked
//! with [`verify_bundled_reply`], as the run's devices check theirs.

use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};
use vaultfleet::SoftHsm;
use vaultfleet::StateMachine;
use vaultfleet_audit::FleetVerifier;
use vaultfleet_vault::wire::{
    vault_client_request, VaultClientRequest, VaultLoginFinish, VaultLoginStart,
    VaultRegisterFinish, VaultRegisterStart, VaultReplyBody, VaultReplyStatus, VaultRequestId,
};
use vaultfleet_vault::{
    authenticate_request, open_recovered_secret, registration_secret_digest, verify_bundled_reply,
    BackupVault, ClientLoginFlow, ClientRegistrationFlow, FleetStep, Progress, ServiceCore, UserId,
};

use super::epochs::UNIX_AT_START;
use super::{code, reply_status, secret, user_id, GROUP, KSF};

/// A device of the final check and the fleet state its services act on.
pub(super) struct FinalDevice<'a> {
    pub(super) verifier: FleetVerifier,
    pub(super) machine: &'a mut BackupVault,
    /// The log index of the next command applied to `machine`.
    pub(super) index: u64,
    pub(super) now: Duration,
    pub(super) sequence: u64,
    pub(super) max_attempts: u32,
}

impl FinalDevice<'_> {
    fn request(&mut self, op: vault_client_request::Op) -> VaultClientRequest {
        self.sequence += 1;
        let mut id = VaultRequestId::new();
        id.client = u64::MAX - 1;
        id.sequence = self.sequence;
        let mut r = VaultClientRequest::new();
        r.request = Some(id).into();
        r.known_checkpoint_size = self.verifier.last_checkpoint_size();
        r.op = Some(op);
        r
    }

    /// `r` through `core` (replica `replica`), its fleet steps applied to the
    /// machine; the reply must verify and be OK. Returns its body and the
    /// request's digest.
    fn call(
        &mut self,
        core: &ServiceCore<SoftHsm>,
        replica: u64,
        r: &VaultClientRequest,
    ) -> Result<(VaultReplyBody, [u8; 32]), String> {
        let bytes = vaultfleet_vault::wire::encode_bounded(r);
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let mut progress = core.begin(&bytes, self.now);
        let reply = loop {
            match progress {
                Progress::Reply(reply) => break reply,
                Progress::Wait { call, step } => {
                    let out = match step {
                        FleetStep::Propose(c) => {
                            self.index += 1;
                            self.machine.apply(self.index, &c)
                        }
                        FleetStep::Read(q) => self.machine.query(&q),
                    };
                    progress = core.resume(call, Ok(out), self.now);
                }
            }
        };
        let now = UNIX_AT_START + self.now.as_secs();
        let v = verify_bundled_reply(&mut self.verifier, GROUP, replica, &reply, &digest, now)
            .map_err(|e| format!("replica {replica}'s reply refused: {e}"))?;
        if reply_status(&v.body) != VaultReplyStatus::REPLY_OK {
            return Err(format!(
                "replica {replica} answered {:?}: {}",
                reply_status(&v.body),
                v.body.detail
            ));
        }
        Ok((v.body, digest))
    }

    /// Registers user `key` through `a`, then recovers its secret through
    /// `b` (each a service and its replica id).
    pub(super) fn register_and_recover(
        &mut self,
        key: u64,
        a: (&ServiceCore<SoftHsm>, u64),
        b: (&ServiceCore<SoftHsm>, u64),
    ) -> Result<(), String> {
        let user: UserId = user_id(key);
        let mut rng = ChaCha20Rng::seed_from_u64(key);
        let (code, secret) = (code(key, 1), secret(key, 1));
        let flow = ClientRegistrationFlow::start_with_insecure_rng(&mut rng, &code)
            .map_err(|e| e.to_string())?;
        let mut start = VaultRegisterStart::new();
        start.user = user.as_bytes().to_vec();
        start.registration_request = flow.request().to_vec();
        start.max_attempts = self.max_attempts;
        start.secret_digest = registration_secret_digest(&user, &secret).to_vec();
        let r = self.request(vault_client_request::Op::RegisterStart(start));
        let (started, _) = self.call(a.0, a.1, &r)?;
        let upload = flow
            .finish_with_insecure_rng(&mut rng, &code, &started.registration_response, &KSF)
            .map_err(|e| e.to_string())?;
        let mut finish = VaultRegisterFinish::new();
        finish.user = user.as_bytes().to_vec();
        finish.registration_upload = upload;
        finish.credential_nonce = started.credential_nonce.clone();
        finish.nonce_tag = started.nonce_tag.clone();
        finish.secret = secret.clone();
        finish.max_attempts = self.max_attempts;
        finish.issued_generation = started.generation;
        let r = self.request(vault_client_request::Op::RegisterFinish(finish));
        self.call(a.0, a.1, &r)?;
        // The recovery, through `b`.
        let flow =
            ClientLoginFlow::start_with_insecure_rng(&mut rng, &code).map_err(|e| e.to_string())?;
        let mut start = VaultLoginStart::new();
        start.user = user.as_bytes().to_vec();
        start.credential_request = flow.request().to_vec();
        let r = self.request(vault_client_request::Op::LoginStart(start));
        let (answer, _) = self.call(b.0, b.1, &r)?;
        let opened = flow
            .finish_with_insecure_rng(&mut rng, &code, &answer.credential_response, &KSF)
            .map_err(|e| e.to_string())?
            .ok_or("the right code did not open the fleet's answer")?;
        let mut f = VaultLoginFinish::new();
        f.login = answer.login;
        f.credential_finalization = opened.finalization.clone();
        f.purpose = super::Purpose::Recover.wire().into();
        let mut r = self.request(vault_client_request::Op::LoginFinish(f));
        authenticate_request(GROUP, &user, &opened.session_key, &mut r);
        let (done, digest) = self.call(b.0, b.1, &r)?;
        let s = open_recovered_secret(
            &opened.session_key,
            &digest,
            &user,
            &done.secret_nonce,
            &done.encrypted_secret,
        )
        .map_err(|e| format!("the recovered secret does not open: {e}"))?;
        if s.as_slice() != secret.as_slice() {
            return Err("the recovery yielded another secret".into());
        }
        Ok(())
    }
}
