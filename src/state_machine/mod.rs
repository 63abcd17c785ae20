//! The state-machine seam: the deterministic application that the fleet replicates.
//!
//! Every replica applies the same commands in the same order, so a
//! [`StateMachine`] must be a pure function of the commands it was given: no clocks,
//! no randomness, no iteration over hash maps, no I/O. Randomness a command needs
//! (a salt, a nonce) is drawn by the caller *before* proposing and travels inside
//! the command.

mod kv;

pub use kv::KvStore;

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
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the whole state with one produced by [`StateMachine::snapshot`].
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError>;
}

/// A snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
#[error("state machine snapshot rejected: {0}")]
pub struct RestoreError(pub String);
