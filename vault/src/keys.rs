//! The vault's keys: the OPAQUE server setup (OPRF seed and server key pair),
//! the record key that seals users' secrets, and each replica's response-signing
//! key. All of them belong to the fleet's HSM "security world": every HSM of the
//! fleet holds the same record key and can open the same sealed server setup, as
//! the HSMs of a production fleet share keys through the vendor's key-sharing
//! ceremony.

use std::collections::BTreeMap;

use opaque_ke::ServerSetup;
use zeroize::Zeroizing;

use crate::crypto::hsm_rng;
use crate::error::{KeysError, VaultError};
use crate::Suite;
use vaultfleet::hsm::{Hsm, KeyHandle, KeyKind};
use vaultfleet::ReplicaId;

const SETUP_LABEL: &str = "vault/opaque-setup";
const SETUP_AAD: &[u8] = b"vaultfleet/vault/opaque-setup/v1";
pub(crate) const RECORD_LABEL: &str = "vault/record";
pub(crate) const REGISTRATION_LABEL: &str = "vault/registration";

pub(crate) fn response_label(replica: ReplicaId) -> String {
    format!("vault/response/{replica}")
}

/// One replica's view of the vault's keys: the opened OPAQUE server setup and
/// handles to the HSM-held record and response keys.
pub struct VaultKeys<H: Hsm> {
    pub(crate) hsm: H,
    pub(crate) setup: ServerSetup<Suite>,
    pub(crate) record_key: KeyHandle,
    pub(crate) registration_key: KeyHandle,
    pub(crate) response_key: KeyHandle,
    pub(crate) replica: ReplicaId,
    pub(crate) group: u64,
}

impl<H: Hsm> std::fmt::Debug for VaultKeys<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultKeys")
            .field("replica", &self.replica)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl<H: Hsm> VaultKeys<H> {
    /// Creates the fleet's OPAQUE server setup (once per fleet, at the key
    /// ceremony) from HSM randomness and returns it sealed under the HSM's setup
    /// key. Keep the sealed bytes with the fleet's configuration; they are useless
    /// without the HSM.
    pub fn provision(hsm: &H) -> Result<Vec<u8>, VaultError> {
        let mut rng = hsm_rng(hsm)?;
        let setup = ServerSetup::<Suite>::new(&mut rng);
        let bytes = Zeroizing::new(setup.serialize().to_vec());
        let key = hsm.key(SETUP_LABEL, KeyKind::Aead)?;
        hsm.key(RECORD_LABEL, KeyKind::Aead)?;
        hsm.key(REGISTRATION_LABEL, KeyKind::Mac)?;
        Ok(hsm.seal(key, SETUP_AAD, &bytes)?)
    }

    /// Opens the sealed server setup for replica `replica` of raft group `group`
    /// and makes sure its response key exists.
    pub fn open(
        hsm: H,
        sealed_setup: &[u8],
        group: u64,
        replica: ReplicaId,
    ) -> Result<Self, VaultError> {
        let key = hsm
            .find_key(SETUP_LABEL, KeyKind::Aead)?
            .ok_or(KeysError::SetupKeyMissing { label: SETUP_LABEL })?;
        let bytes = hsm.unseal(key, SETUP_AAD, sealed_setup)?;
        let setup =
            ServerSetup::<Suite>::deserialize(&bytes).map_err(KeysError::SetupUndecodable)?;
        let record_key = hsm.key(RECORD_LABEL, KeyKind::Aead)?;
        let registration_key = hsm.key(REGISTRATION_LABEL, KeyKind::Mac)?;
        let response_key = hsm.key(&response_label(replica), KeyKind::Signing)?;
        Ok(Self {
            hsm,
            setup,
            record_key,
            registration_key,
            response_key,
            replica,
            group,
        })
    }

    /// This replica's response-signing public key.
    pub fn response_public_key(&self) -> Result<[u8; 32], VaultError> {
        Ok(self.hsm.public_key(self.response_key)?)
    }

    /// The OPAQUE server public key (Ristretto255, 32 bytes) clients will see.
    pub fn opaque_public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let bytes = self.setup.keypair().public().serialize();
        let n = bytes.len().min(32);
        out[..n].copy_from_slice(&bytes[..n]);
        out
    }

    /// The replica these keys answer for.
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }
}

/// What a client pins to talk to a fleet: the raft group and each replica's
/// response-signing public key. (Issue 7's validation bundles deliver these
/// over the air; until then the application ships them.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VaultPublicKeys {
    /// The fleet's raft group id.
    pub group: u64,
    /// Response-signing public key of each replica.
    pub replicas: BTreeMap<ReplicaId, [u8; 32]>,
}
