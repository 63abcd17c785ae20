//! What a service attaches to its signed replies for clients that trust the
//! fleet through validation bundles: the current bundle, a consistency proof
//! from the checkpoint the client last accepted (the size its request names) to
//! the bundle's checkpoint, and the operator's early epoch retirements.
//!
//! [`BundleSource`] is sans-IO: the operator hands it the bundle and the
//! witness's log (its leaf hashes, `Witness::tree(namespace)`), and it answers
//! each request's `known_checkpoint_size` with the proof. It checks, when built,
//! that the log is the one the bundle's checkpoint signs, so it never serves a
//! proof that cannot verify. Nothing it attaches needs trusting the service:
//! the proof links two witness-signed roots, and the bundle and retirements
//! carry their own signatures.

use vaultfleet_audit::merkle::MerkleTree;
use vaultfleet_audit::note::{Checkpoint, SignedNote};
use vaultfleet_audit::{Bundle, ConsistencyProof, EpochRetirement};

use crate::error::BundleSourceError;

/// Most epoch retirements a reply carries (and a client reads): each costs the
/// client two signature checks, and one retirement covers every older epoch.
pub const RETIREMENTS_MAX: usize = 4;

/// What a reply carries beside its signed body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyExtras {
    /// The fleet's validation bundle (`audit::Bundle` encoding), or empty.
    pub bundle: Vec<u8>,
    /// The consistency proof (`audit::ConsistencyProof` encoding) from the
    /// request's `known_checkpoint_size` to the bundle's checkpoint, or empty.
    pub consistency_proof: Vec<u8>,
    /// Early epoch retirements (`audit::EpochRetirement` encodings).
    pub retirements: Vec<Vec<u8>>,
}

/// The bundle a service serves, the witness log that proves its checkpoint
/// extends older ones, and the retirements to hand out.
#[derive(Debug, Clone)]
pub struct BundleSource {
    bundle: Vec<u8>,
    checkpoint_size: u64,
    log: MerkleTree,
    retirements: Vec<Vec<u8>>,
}

impl BundleSource {
    /// A source serving `bundle` with proofs from `log`, the witness's log for
    /// the bundle's namespace (at least as long as the bundle's checkpoint, and
    /// whose root at that size is the checkpoint's). The log may be longer (a
    /// client that already saw a newer checkpoint, while this replica still
    /// serves the previous epoch, gets a proof back to this one).
    pub fn new(bundle: Vec<u8>, log: MerkleTree) -> Result<Self, BundleSourceError> {
        let b = Bundle::decode(&bundle).map_err(BundleSourceError::Bundle)?;
        let note = SignedNote::parse(&b.checkpoint).map_err(BundleSourceError::Checkpoint)?;
        let checkpoint = Checkpoint::parse(&note.text).map_err(BundleSourceError::Checkpoint)?;
        let root = log
            .root_at(checkpoint.size)
            .map_err(|_| BundleSourceError::LogTooShort {
                size: checkpoint.size,
                held: log.size(),
            })?;
        if root != checkpoint.root {
            return Err(BundleSourceError::NotTheCheckpointedLog {
                size: checkpoint.size,
            });
        }
        Ok(Self {
            bundle,
            checkpoint_size: checkpoint.size,
            log,
            retirements: Vec::new(),
        })
    }

    /// Also hands out `retirements` (`audit::EpochRetirement` encodings,
    /// witnessed and countersigned) with every reply; at most
    /// [`RETIREMENTS_MAX`].
    pub fn with_retirements(
        mut self,
        retirements: Vec<Vec<u8>>,
    ) -> Result<Self, BundleSourceError> {
        if retirements.len() > RETIREMENTS_MAX {
            return Err(BundleSourceError::TooManyRetirements {
                count: retirements.len(),
                max: RETIREMENTS_MAX,
            });
        }
        for r in &retirements {
            EpochRetirement::decode(r).map_err(BundleSourceError::Retirement)?;
        }
        self.retirements = retirements;
        Ok(self)
    }

    /// The bundle served.
    pub fn bundle(&self) -> &[u8] {
        &self.bundle
    }

    /// The size of the bundle's checkpoint.
    pub fn checkpoint_size(&self) -> u64 {
        self.checkpoint_size
    }

    /// The encoded consistency proof between `known` (a request's
    /// `known_checkpoint_size`) and the bundle's checkpoint: `None` when the
    /// request names no size, the sizes are equal, or the log cannot prove it
    /// (a size beyond the log, which no honest client holds: the client then
    /// refuses the reply for want of a proof and asks another replica).
    pub fn consistency_proof(&self, known: Option<u64>) -> Option<Vec<u8>> {
        let known = known.filter(|&k| k != self.checkpoint_size)?;
        match ConsistencyProof::between(&self.log, known, self.checkpoint_size) {
            Ok(proof) => match proof.encode() {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    tracing::error!("vault service: a consistency proof does not encode: {e}");
                    None
                }
            },
            Err(e) => {
                tracing::debug!(
                    "vault service: no consistency proof from size {known} to {}: {e}",
                    self.checkpoint_size
                );
                None
            }
        }
    }

    /// Everything a reply to a request naming `known` carries beside its body.
    pub fn extras(&self, known: Option<u64>) -> ReplyExtras {
        ReplyExtras {
            bundle: self.bundle.clone(),
            consistency_proof: self.consistency_proof(known).unwrap_or_default(),
            retirements: self.retirements.clone(),
        }
    }
}
