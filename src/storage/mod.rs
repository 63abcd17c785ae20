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
mod mem;
mod sealed;
mod sled_log;

pub use mem::MemLog;
pub use sealed::{Sealed, SealedConfig, SealedRecord};

pub use sled_log::SledLog;

use crate::hsm::HsmError;
use crate::ReplicaId;

use raft::prelude::{Entry, HardState, Snapshot};

/// What went wrong in a [`LogStore`]. Every variant says what the operator can do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The embedded database failed (I/O error, full disk, ...).
    #[error("log store database error: {0}; check the disk and the data directory permissions")]
    Database(#[from] sled::Error),
    /// Data read back from the store does not decode or breaks an invariant.
    #[error(
        "corrupt log store ({what}): {detail}; this replica's store cannot be trusted, \
         remove the replica and re-add it as a fresh member"
    )]
    Corrupt {
        /// Which record was bad (for example `entry 42`).
        what: String,
        /// What was wrong with it.
        detail: String,
    },
    /// The directory holds something that is not a vaultfleet log store.
    #[error("{path} is not a vaultfleet log store (found format {found:?}); point the replica at its own data directory")]
    ForeignFormat {
        /// The data directory.
        path: String,
        /// The format marker that was found.
        found: String,
    },
    /// An append does not continue the log.
    #[error("append of entries starting at {first} would leave a gap after the last index {last}")]
    Gap {
        /// First index of the rejected entries.
        first: u64,
        /// Last index the store holds.
        last: u64,
    },
    /// An append would overwrite entries that are already compacted.
    #[error("append of entries starting at {first} overwrites compacted entries (first index is {first_index})")]
    OverwriteCompacted {
        /// First index of the rejected entries.
        first: u64,
        /// First index the store holds.
        first_index: u64,
    },
    /// Entries of one append are not consecutive.
    #[error("entries to append are not consecutive: index {found} follows {previous}")]
    NotConsecutive {
        /// Index of the entry before the gap.
        previous: u64,
        /// Index that followed it.
        found: u64,
    },
    /// A snapshot older than what the store already holds.
    #[error("snapshot at index {index} is older than the store's compacted index {compacted}")]
    SnapshotOutOfDate {
        /// Index of the rejected snapshot.
        index: u64,
        /// Index the store is compacted to.
        compacted: u64,
    },
    /// A local snapshot at an index the store cannot describe.
    #[error("cannot save a snapshot at index {index}: the store holds indexes {first_index}..={last_index}")]
    SnapshotOutOfRange {
        /// Index of the rejected snapshot.
        index: u64,
        /// First index held.
        first_index: u64,
        /// Last index held.
        last_index: u64,
    },
    /// The HSM that seals the store failed.
    #[error("HSM failed: {0}")]
    Hsm(#[from] HsmError),
    /// Sealed data on disk failed its check: it was edited, reordered, cut short or
    /// copied from elsewhere. The store is not served from.
    #[error(
        "replica {replica}: tampered log store ({record}): {detail}; this replica's disk \
         cannot be trusted, remove the replica and re-add it as a fresh member \
         (new replica id, empty data directory)"
    )]
    Tampered {
        /// The replica whose store it is.
        replica: ReplicaId,
        /// Which sealed record failed.
        record: SealedRecord,
        /// What was wrong with it.
        detail: String,
    },
    /// The store is older than the HSM's monotonic counter: the disk was rolled back
    /// to an earlier image (or replaced by an empty one). Votes and acknowledgements
    /// this replica gave since then are missing, so it must never vote again.
    #[error(
        "replica {replica}: log store was rolled back: it was last written at write \
         {disk}, but the HSM counter is at {hsm}; this replica must not vote or \
         acknowledge: remove it from the fleet and re-add it as a fresh member (new \
         replica id, empty data directory)"
    )]
    RolledBack {
        /// The replica whose store it is.
        replica: ReplicaId,
        /// The write counter the newest sealed state on disk carries (0: none).
        disk: u64,
        /// The HSM's counter.
        hsm: u64,
    },
    /// The store's newest write is not the one the HSM's counter is bound to (nor
    /// the one that follows it): it is a write that was abandoned by a crash and
    /// replaced later, so the disk was swapped for an image that forked off the
    /// replica's real history. Treated exactly like a rollback.
    #[error(
        "replica {replica}: log store holds a forked write {write}: the HSM counter \
         is bound to a different write, so this disk image was abandoned and replaced; \
         this replica must not vote or acknowledge: remove it from the fleet and re-add \
         it as a fresh member (new replica id, empty data directory)"
    )]
    Forked {
        /// The replica whose store it is.
        replica: ReplicaId,
        /// The write counter of the forked head on disk.
        write: u64,
    },
    /// The store is more than one write ahead of the HSM's counter: the HSM was
    /// reset or replaced, or the store was sealed by another HSM's counter.
    #[error(
        "replica {replica}: log store is at write {disk} but the HSM counter is only at \
         {hsm}: the HSM was reset or replaced; attach the HSM this store was sealed with"
    )]
    CounterBehind {
        /// The replica whose store it is.
        replica: ReplicaId,
        /// The write counter on disk.
        disk: u64,
        /// The HSM's counter.
        hsm: u64,
    },
    /// An earlier write failed, so what is durable is unknown; the store refuses
    /// further writes until it is reopened (which checks the disk again).
    #[error("replica {replica}: log store refuses writes after an earlier failure ({cause}); restart the replica")]
    Poisoned {
        /// The replica whose store it is.
        replica: ReplicaId,
        /// The earlier failure.
        cause: String,
    },
    /// Compaction past the newest snapshot would lose the log with nothing to replace it.
    #[error("cannot compact to {index}: the newest snapshot is at {snapshot_index}, compact at most to {limit}")]
    CompactPastSnapshot {
        /// Requested compaction index.
        index: u64,
        /// Index of the newest snapshot.
        snapshot_index: u64,
        /// The highest allowed compaction index.
        limit: u64,
    },
}

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

    /// Records an opaque record that a wrapping store keeps beside the log (the
    /// [`Sealed`] store's sealed head). It is written with the same durability as
    /// every other write: made durable by the next [`LogStore::sync`], as a whole.
    fn set_wrapper_record(&mut self, record: &[u8]) -> Result<(), StorageError>;

    /// The record last given to [`LogStore::set_wrapper_record`] (empty if none).
    fn wrapper_record(&self) -> &[u8];
}
