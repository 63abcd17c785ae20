//! `vaultfleet-audit`: the fleet's keys and the append-only, publicly checkable
//! log of everything the fleet's witness signs. It builds on the engine
//! (`vaultfleet`, for the [`Hsm`](vaultfleet::hsm::Hsm) seam) and never on the vault.
//!
//! * [`fleet`]: the fleet artifact (one per epoch: every replica's keys, the
//!   quorum, a validity window) and the deployment evidence an auditor checks.
//! * [`merkle`]: RFC 6962 Merkle trees with inclusion and consistency proofs,
//!   checked against the transparency-dev test vectors.
//! * [`note`]: C2SP signed notes, tlog checkpoints and `cosignature/v1`, so
//!   third-party witnesses can cosign the log's checkpoints.
//!
//! * [`consistency`]: the wire form of a consistency proof a reply carries from
//!   the checkpoint a client last accepted.
//! * [`cosigner`]: a C2SP tlog-witness cosigner (sans-IO `add-checkpoint` and
//!   monitoring endpoint, state persisted before it cosigns) and the log's side.
//! * [`pins`]: the pins file an auditor is handed out of band, and its parser.
//! * [`retirement`]: a witnessed, countersigned early retirement of epochs.
//! * [`submission`]: the operator's signed request to a served witness, and its receipt.
//! * [`tiles`]: C2SP tlog-tiles, sans-IO: tile paths, the log as hash tiles and
//!   entry bundles for a server, and a client's reading of them.
//! * [`witness`]: the witness (rules persisted before it signs, per-namespace
//!   logs, checkpoints) and the operator's countersignature.
//! * [`bundle`]: the validation bundle a vault reply carries, and
//!   [`FleetVerifier`], the client's check of every link.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bundle;
pub mod consistency;
pub mod cosigner;
mod durable;
pub mod fleet;
pub mod merkle;
pub mod note;
pub mod pins;
pub mod retirement;
pub mod submission;
pub mod tiles;
pub mod witness;

pub use bundle::{
    Accepted, Bundle, BundleError, CosignerKey, CosignerPinError, FleetVerifier, WitnessKey,
};
pub use consistency::ConsistencyProof;
pub use cosigner::{AddCheckpoint, Cosigner, CosignerError, FollowedLog, Refusal};
pub use fleet::{ArtifactError, ArtifactRule, FleetArtifact};
pub use merkle::{MerkleTree, ProofError};
pub use note::{Checkpoint, NoteError, NoteSignature, NoteVerifier, SignedNote};
pub use retirement::EpochRetirement;
pub use witness::{
    CountersignError, LeafError, LogError, Statement, Witness, WitnessError, WitnessKeySpec,
    Witnessed,
};
