//! The storage seam: where a replica's raft log, hard state and snapshots live.
//!
//! A [`LogStore`] is everything raft-rs's [`raft::Storage`] reads, plus the writes
//! the replica's Ready loop performs and one explicit durability point,
//! [`LogStore::sync`]. The durability contract (see `docs/architecture.md`):
//!
//! * writes made since the last `sync` may be lost in a crash, **as a whole or as a
//!   prefix in call order**, never reordered;
//! * after `sync` returns `Ok`, every earlier write survives a crash;
//! * the replica never sends a message that depends on a write (a vote, an append
//!   acknowledgement) before the `sync` that covers it has returned.
//!
//! raft-rs calls the [`raft::Storage`] read methods on hot paths (`term`,
//! `entries`), so every implementation keeps the un-compacted log in memory and
//! never touches the disk to answer them.
//!
//! Implementations: [`MemLog`] (memory only; `sync` is a no-op, so it models a
//! store that is durable at once), [`SledLog`] (the embedded default, flushed to
//! disk by `sync`) and [`Sealed`], which wraps either and seals everything it
//! writes with an HSM so an untrusted disk cannot edit, reorder or roll it back
//! unnoticed (`docs/storage.md`).

pub mod codec;
mod error;
mod mem;
mod sealed;
mod sled_log;

pub use error::{Corruption, SealedRecord, StorageError, StoredRecord, Tampering};
pub use mem::MemLog;
pub use sealed::{Sealed, SealedConfig};
pub use sled_log::{SledLog, SNAPSHOT_DIR};

use std::sync::Arc;

use raft::prelude::{Entry, HardState, Snapshot};

use crate::snapshot::{ChunkSealer, SnapshotFiles};
use crate::ReplicaId;

#[doc(hidden)]
pub use raft as __raft;

/// Implements raft-rs's [`raft::Storage`] reads by delegating each one to a field
/// that implements it (normally the store's in-memory [`MemLog`] view), inside an
/// `impl raft::Storage for ...` block:
///
/// ```
/// use vaultfleet::MemLog;
///
/// struct MyStore {
///     cache: MemLog,
/// }
///
/// impl raft::Storage for MyStore {
///     vaultfleet::storage_reads_from!(cache);
/// }
/// ```
#[macro_export]
macro_rules! storage_reads_from {
    ($field:ident) => {
        fn initial_state(
            &self,
        ) -> $crate::storage::__raft::Result<$crate::storage::__raft::RaftState> {
            self.$field.initial_state()
        }
        fn entries(
            &self,
            low: u64,
            high: u64,
            max_size: impl Into<Option<u64>>,
            context: $crate::storage::__raft::GetEntriesContext,
        ) -> $crate::storage::__raft::Result<Vec<$crate::storage::__raft::prelude::Entry>> {
            self.$field.entries(low, high, max_size, context)
        }
        fn term(&self, idx: u64) -> $crate::storage::__raft::Result<u64> {
            self.$field.term(idx)
        }
        fn first_index(&self) -> $crate::storage::__raft::Result<u64> {
            self.$field.first_index()
        }
        fn last_index(&self) -> $crate::storage::__raft::Result<u64> {
            self.$field.last_index()
        }
        fn snapshot(
            &self,
            request_index: u64,
            to: u64,
        ) -> $crate::storage::__raft::Result<$crate::storage::__raft::prelude::Snapshot> {
            self.$field.snapshot(request_index, to)
        }
    };
}

/// A [`LogStore`] whose [`LogStore::sync`] makes every write since the previous
/// `sync` durable as a whole or not at all (never a prefix). [`Sealed`] needs it:
/// it stages sealed batches and then the head that names them, and a prefix
/// would leave batches the head does not know.
pub trait AtomicSync: LogStore {}

impl AtomicSync for MemLog {}
impl AtomicSync for SledLog {}

/// The replica's persistent log: raft-rs [`raft::Storage`] reads plus the writes of
/// the Ready loop and an explicit durability point.
///
/// Mutating methods take `&mut self`: the replica owns its store exclusively, so
/// implementations need no locking.
pub trait LogStore: raft::Storage + Send + 'static {
    /// Appends `entries` (consecutive indexes), replacing every held entry at or
    /// after `entries[0].index`. The first index must be in
    /// `first_index()..=last_index() + 1`.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError>;

    /// Records the raft hard state (term, vote, commit).
    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError>;

    /// Installs a snapshot received from the leader: the whole log is replaced by
    /// it, and the hard state's commit follows it.
    ///
    /// The membership a store reports in `initial_state` is always the newest
    /// snapshot's: on restart the replica replays the committed log from that
    /// snapshot, re-applying later membership changes in order (as etcd does).
    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError>;

    /// Keeps a snapshot the replica took of its own applied state at an index it
    /// holds; the log is kept (see [`LogStore::compact`]).
    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError>;

    /// Discards every entry below `compact_index`. It may not pass the newest
    /// snapshot: `compact_index <= snapshot index + 1`.
    fn compact(&mut self, compact_index: u64) -> Result<(), StorageError>;

    /// The durability point: returns once every earlier write survives a crash.
    fn sync(&mut self) -> Result<(), StorageError>;

    /// The newest snapshot held (empty, with index 0, if none).
    fn latest_snapshot(&self) -> &Snapshot;

    /// The hard state last recorded.
    fn hard_state(&self) -> &HardState;

    /// The snapshot files this store keeps beside its log, if it keeps any:
    /// then the replica takes streamed snapshots (the raft snapshot carries a
    /// descriptor of a file, see [`crate::snapshot`]) instead of inline ones.
    /// `None` (the default) keeps snapshots inline.
    fn snapshot_files(&self) -> Option<Arc<dyn SnapshotFiles>> {
        None
    }
}

/// A [`LogStore`] that can keep snapshot files beside its log ([`MemLog`]
/// in memory, [`SledLog`] in a directory inside its own). Opening them turns
/// on streamed snapshots for the replica on this store; a [`Sealed`] store
/// opens its inner store's files with its own sealer
/// ([`Sealed::open_snapshot_files`]).
pub trait SnapshotFilesHost: LogStore {
    /// Starts keeping snapshot files for `replica` (the replica this store
    /// belongs to), sealed by `sealer` if one is given. Files already there
    /// (a restart) are found again; leftovers of a crash are deleted.
    fn open_snapshot_files(
        &mut self,
        replica: ReplicaId,
        sealer: Option<Arc<dyn ChunkSealer>>,
    ) -> Result<(), StorageError>;
}

/// A [`LogStore`] that keeps one opaque record beside the log for a store that
/// wraps it: [`Sealed`] keeps its sealed head there. Only wrapping stores need
/// it, so it is not part of [`LogStore`]; [`MemLog`] and [`SledLog`] implement it.
pub trait WrapperRecord: LogStore {
    /// Records the wrapping store's record, replacing the previous one. It is
    /// written with the same durability as every other write: made durable by the
    /// next [`LogStore::sync`], together with the writes before it.
    fn set_wrapper_record(&mut self, record: &[u8]) -> Result<(), StorageError>;

    /// The record last given to [`WrapperRecord::set_wrapper_record`] (empty if none).
    fn wrapper_record(&self) -> &[u8];
}
