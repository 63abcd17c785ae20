//! Early retirement of fleet epochs: the operator's way to stop clients from
//! accepting an epoch (say, one whose response key leaked) before its
//! `not_after`, even while it is the previous epoch that would still serve.
//!
//! A retirement says "in namespace N, every epoch up to and including E is
//! retired", dated T. Like a fleet statement it is signed by the witness (with
//! the key valid at T) and countersigned by the operator's HSM key, so neither
//! alone can retire a fleet, and a network attacker cannot forge one. A
//! [`FleetVerifier`](crate::FleetVerifier) that has seen it refuses those epochs
//! for good (`BundleError::EpochRetired`) and persists it.
//!
//! A retirement only ever narrows what a client accepts, so it is not a leaf of
//! the witness's log: a rogue witness and operator together could use one to
//! deny service, which they can do anyway.
//!
//! Encoding (engine codec, version 1): the magic `vaultfleet/epoch-retirement`,
//! a version byte, the namespace (`u8` length), the timestamp and the last
//! retired epoch (`u64`), the witness key's name (`u8` length), the witness's
//! signature, the operator's countersignature. The witness signs
//! [`EpochRetirement::signed_bytes`], the operator
//! [`EpochRetirement::countersigned_bytes`], both built with
//! [`labeled`] under their own labels.

use vaultfleet::codec::{labeled, DecodeError, EncodeError, Reader, Writer};
use vaultfleet::hsm::{verify_signature, Hsm, KeyKind};

use crate::witness::CountersignError;

const MAGIC: &[u8] = b"vaultfleet/epoch-retirement";
/// The encoding's version.
pub const VERSION: u8 = 1;
const WITNESS_LABEL: &[u8] = b"vaultfleet/epoch-retirement/witness/v1";
const OPERATOR_LABEL: &[u8] = b"vaultfleet/epoch-retirement/operator/v1";

/// A witnessed and countersigned retirement of every epoch up to
/// `retired_through` in `namespace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochRetirement {
    /// The operator's log.
    pub namespace: String,
    /// When the witness signed (seconds since the Unix epoch).
    pub timestamp: u64,
    /// The newest epoch retired (every older one is retired too).
    pub retired_through: u64,
    /// The witness key that signed.
    pub witness_key: String,
    /// Ed25519 over [`EpochRetirement::signed_bytes`].
    pub witness_signature: [u8; 64],
    /// The operator's Ed25519 over [`EpochRetirement::countersigned_bytes`].
    pub countersignature: [u8; 64],
}

impl EpochRetirement {
    /// The bytes the witness signs: namespace, timestamp and the last retired
    /// epoch under the retirement's own label.
    pub fn signed_bytes(namespace: &str, timestamp: u64, retired_through: u64) -> Vec<u8> {
        labeled(
            WITNESS_LABEL,
            &[
                namespace.as_bytes(),
                &timestamp.to_be_bytes(),
                &retired_through.to_be_bytes(),
            ],
        )
    }

    /// The bytes the operator countersigns: the witness key's name and its
    /// signature, under a label of their own (a retirement's countersignature is
    /// never a fleet statement's).
    pub fn countersigned_bytes(witness_key: &str, witness_signature: &[u8; 64]) -> Vec<u8> {
        labeled(OPERATOR_LABEL, &[witness_key.as_bytes(), witness_signature])
    }

    /// The operator countersigns this retirement with its HSM key `label`,
    /// filling in [`EpochRetirement::countersignature`].
    pub fn countersign<H: Hsm>(&mut self, hsm: &H, label: &str) -> Result<(), CountersignError> {
        let key = hsm.key(label, KeyKind::Signing)?;
        self.countersignature = hsm.sign(
            key,
            &Self::countersigned_bytes(&self.witness_key, &self.witness_signature),
        )?;
        Ok(())
    }

    /// Whether the witness's signature verifies under `witness_key`.
    pub fn witness_signature_holds(&self, witness_key: &[u8; 32]) -> bool {
        verify_signature(
            witness_key,
            &Self::signed_bytes(&self.namespace, self.timestamp, self.retired_through),
            &self.witness_signature,
        )
    }

    /// Whether the operator's countersignature verifies under `operator_key`.
    pub fn countersignature_holds(&self, operator_key: &[u8; 32]) -> bool {
        verify_signature(
            operator_key,
            &Self::countersigned_bytes(&self.witness_key, &self.witness_signature),
            &self.countersignature,
        )
    }

    /// The canonical encoding (see the module's documentation).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::with_capacity(MAGIC.len() + 160 + self.namespace.len());
        w.raw(MAGIC)
            .u8(VERSION)
            .short_text(&self.namespace, "retirement namespace")?
            .u64(self.timestamp)
            .u64(self.retired_through)
            .short_text(&self.witness_key, "retirement witness key")?
            .raw(&self.witness_signature)
            .raw(&self.countersignature);
        Ok(w.into_vec())
    }

    /// Decodes [`EpochRetirement::encode`]'s output and nothing else.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.magic(MAGIC, "retirement magic")?;
        r.version(VERSION, "retirement")?;
        let namespace = r.short_text("retirement namespace")?.to_owned();
        let timestamp = r.u64("retirement timestamp")?;
        let retired_through = r.u64("retired epoch")?;
        let witness_key = r.short_text("retirement witness key")?.to_owned();
        let witness_signature = r.array("retirement witness signature")?;
        let countersignature = r.array("retirement countersignature")?;
        r.expect_empty("retirement")?;
        Ok(Self {
            namespace,
            timestamp,
            retired_through,
            witness_key,
            witness_signature,
            countersignature,
        })
    }
}
