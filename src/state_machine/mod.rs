//! The state-machine seam: the deterministic application that the fleet replicates.
//!
//! Every replica applies the same commands in the same order, so a
//! [`StateMachine`] must be a pure function of the commands it was given: no clocks,
//! no randomness, no iteration over hash maps, no I/O. Randomness a command needs
//! (a salt, a nonce) is drawn by the caller *before* proposing and travels inside
//! the command.

mod cow;
mod kv;

use std::io::{Read, Write};

use crate::wire::{DecodeError, EncodeError, MESSAGE_BYTES_MAX};

pub use cow::{CowMap, CowView, LEAF_ENTRIES_MAX};
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

    /// Writes the whole state to `out`: exactly the bytes [`StateMachine::snapshot`]
    /// returns, so state digests agree whichever path computed them.
    ///
    /// The default captures the state whole and writes it; a machine with a large
    /// state writes it record by record instead, never holding its encoding whole.
    fn snapshot_to(&self, out: &mut dyn Write) -> Result<(), CaptureError> {
        let bytes = self.snapshot()?;
        out.write_all(&bytes).map_err(CaptureError::Io)
    }

    /// A frozen view of the state as it is now: `Send + 'static`, so it can be
    /// written out on another thread while [`StateMachine::apply`] goes on, and
    /// what it writes is what [`StateMachine::snapshot_to`] would have written when
    /// the view was taken.
    ///
    /// The default captures the state whole, on the caller's thread (today's
    /// cost); a machine built on [`CowMap`] takes its view in O(leaves).
    fn snapshot_view(&self) -> Result<Box<dyn SnapshotView>, CaptureError> {
        Ok(Box::new(BytesView::new(self.snapshot()?)))
    }

    /// Replaces the whole state with one read from `input`, a stream that
    /// [`StateMachine::snapshot_to`] wrote. The state is unchanged on an error.
    ///
    /// The default reads the stream whole (at most [`MESSAGE_BYTES_MAX`] bytes,
    /// what one snapshot can hold) and calls [`StateMachine::restore`];
    /// implementations with a large state should parse it record by record.
    fn restore_from(&mut self, input: &mut dyn Read) -> Result<(), RestoreError> {
        let mut bytes = Vec::new();
        input
            .take(MESSAGE_BYTES_MAX + 1)
            .read_to_end(&mut bytes)
            .map_err(RestoreError::Io)?;
        if bytes.len() as u64 > MESSAGE_BYTES_MAX {
            return Err(RestoreError::Malformed {
                what: "snapshot stream is longer than one snapshot can be",
            });
        }
        self.restore(&bytes)
    }

    /// An empty machine of the same configuration, to restore a snapshot into
    /// off the replica's thread; `None` (the default) restores in place.
    fn blank(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }
}

/// A frozen view of a machine's state, taken by [`StateMachine::snapshot_view`]
/// and written out later, possibly on another thread.
pub trait SnapshotView: Send + 'static {
    /// Writes the state as it was when the view was taken: the bytes
    /// [`StateMachine::snapshot`] returned then.
    fn snapshot_to(&self, out: &mut dyn Write) -> Result<(), CaptureError>;
}

/// A [`SnapshotView`] over bytes already captured: what the default
/// [`StateMachine::snapshot_view`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BytesView(Vec<u8>);

impl BytesView {
    /// A view that writes `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl SnapshotView for BytesView {
    fn snapshot_to(&self, out: &mut dyn Write) -> Result<(), CaptureError> {
        out.write_all(&self.0).map_err(CaptureError::Io)
    }
}

/// The state could not be captured in a snapshot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// The state does not fit in one snapshot: shard it across groups.
    #[error("the state does not fit in one snapshot ({0}); shard it across groups")]
    Encode(#[from] EncodeError),
    /// The writer a snapshot streamed into failed.
    #[error("the snapshot could not be written: {0}")]
    Io(#[source] std::io::Error),
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
    /// The reader a snapshot streamed from failed (a truncated stream is
    /// [`RestoreError::Malformed`], not this).
    #[error("state machine snapshot could not be read: {0}")]
    Io(#[source] std::io::Error),
    /// Any other reason, kept as a typed cause.
    #[error("state machine snapshot rejected: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}
