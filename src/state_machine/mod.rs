//! The state-machine seam: the deterministic application that the fleet replicates.
//!
//! Every replica applies the same commands in the same order, so a
//! [`StateMachine`] must be a pure function of the commands it was given: no clocks,
//! no randomness, no iteration over hash maps, no I/O. Randomness a command needs
//! (a salt, a nonce) is drawn by the caller *before* proposing and travels inside
//! the command.

mod kv;

use crate::wire::{DecodeError, EncodeError};

pub use kv::{KvError, KvStore};

/// A replicated, deterministic state machine.
///
/// Commands and responses are bytes: the state machine owns their encoding. A
/// command the machine cannot decode must produce an error *response*, never a
/// panic, because it has already been committed to the log and every replica will
/// apply it.
pub trait StateMachine: Send + 'static {
    /// Applies one committed command and returns the response for its proposer.
    ///
    /// `index` is the log index of the entry that carried the command; commands
    /// batched into one entry share it and are applied in order.
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8>;

    /// Answers a read-only query against the current state.
    fn query(&self, query: &[u8]) -> Vec<u8>;

    /// Serialises the whole state.
    ///
    /// A machine that cannot (its state has outgrown what one snapshot can hold,
    /// say) returns a [`CaptureError`]: the replica then keeps running on its
    /// uncompacted log, counts the failure and tries again later. It never stops
    /// for it, and it never stores an empty or partial snapshot in its place.
    fn snapshot(&self) -> Result<Vec<u8>, CaptureError>;

    /// Replaces the whole state with one produced by [`StateMachine::snapshot`].
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError>;
}

/// The state could not be captured in a snapshot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// The state does not fit in one snapshot: shard it across groups.
    #[error("the state does not fit in one snapshot ({0}); shard it across groups")]
    Encode(#[from] EncodeError),
    /// Any other reason, kept as a typed cause.
    #[error("the state could not be captured: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A snapshot could not be restored. Implementors of
/// [`StateMachine::restore`] build it from typed parts, never from an error's text.
///
/// ```
/// use vaultfleet::state_machine::RestoreError;
/// let short = RestoreError::Malformed { what: "counter snapshot is not 8 bytes" };
/// assert!(short.to_string().contains("not 8 bytes"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The snapshot's bytes do not have the shape the machine writes; `what` says
    /// which part was wrong.
    #[error("state machine snapshot is malformed: {what}")]
    Malformed {
        /// What was wrong, as static text.
        what: &'static str,
    },
    /// A protocol buffer in the snapshot did not decode.
    #[error("state machine snapshot did not decode: {0}")]
    Decode(#[from] DecodeError),
    /// The snapshot was written in a format version this build does not read.
    #[error("state machine snapshot has format version {found}; this build reads version {supported}: upgrade this replica")]
    Version {
        /// The version found in the snapshot.
        found: u64,
        /// The version this build reads.
        supported: u64,
    },
    /// Any other reason, kept as a typed cause.
    #[error("state machine snapshot rejected: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}
