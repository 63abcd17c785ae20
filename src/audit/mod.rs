//! The audit layer: an append-only, publicly checkable log of everything the
//! fleet's witness signs.
//!
//! * [`merkle`]: RFC 6962 Merkle trees with inclusion and consistency proofs,
//!   checked against the transparency-dev test vectors.
//! * [`note`]: C2SP signed notes, tlog checkpoints and `cosignature/v1`, so
//!   third-party witnesses can cosign the log's checkpoints.
//!
//! The witness, the validation bundles and `FleetVerifier` build on these
//! (issue 7, in progress).

pub mod merkle;
pub mod note;

pub use merkle::{MerkleTree, ProofError};
pub use note::{Checkpoint, NoteError, NoteSignature, NoteVerifier, SignedNote};
