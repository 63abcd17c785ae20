//! What goes wrong in a log store: [`StorageError`] and the typed causes it nests
//! ([`StoredRecord`] and [`Corruption`] for bad data in a plain store,
//! [`SealedRecord`] and [`Tampering`] for a sealed store's failed checks).
//!
//! Causes are kept as typed values (a [`DecodeError`], an [`HsmError`], the
//! backend's own error as a boxed source, as raft-rs does), never flattened into
//! text, so a caller can match on what was wrong.

use std::path::PathBuf;
use std::sync::Arc;

use crate::codec::{DecodeError, EncodeError};
use crate::hsm::HsmError;
use crate::ReplicaId;

/// What to do about a store that cannot be trusted any more.
const REPLACE: &str = "remove the replica from the fleet and re-add it as a fresh member \
                       (new replica id, empty data directory)";

/// What went wrong in a [`LogStore`](super::LogStore). Every variant says what the
/// operator can do.
///
/// It is `Clone` so that a store that refuses writes after a failure
/// ([`StorageError::Poisoned`]) can keep the very failure it returned; that is why
/// the backend's cause is an `Arc` rather than a `Box`.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The store's backend (the embedded database, the disk) failed: I/O error,
    /// full disk, lock held by another process, ...
    #[error("log store backend failed: {0}; check the disk and the data directory permissions")]
    Backend(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The store's snapshot files could not be opened.
    #[error("snapshot files: {0}")]
    SnapshotFiles(#[from] crate::snapshot::SnapshotFileError),
    /// A sealed store was asked to open its snapshot files, but its inner
    /// store had opened files already (perhaps unsealed).
    #[error("replica {replica}: the sealed store's inner store already keeps snapshot files; open them only through the sealed store (`Sealed::open_snapshot_files`), so they are sealed")]
    SnapshotFilesOpenedPlain {
        /// The replica.
        replica: ReplicaId,
    },
    /// Data read back from the store does not decode or breaks an invariant.
    #[error(
        "corrupt log store ({record}): {cause}; this replica's store cannot be trusted: {REPLACE}"
    )]
    Corrupt {
        /// Which record was bad.
        record: StoredRecord,
        /// What was wrong with it.
        #[source]
        cause: Corruption,
    },
    /// A record cannot be encoded (a field longer than the format allows).
    #[error("cannot encode the {record}: {source}")]
    Encode {
        /// Which record.
        record: StoredRecord,
        /// The field that does not fit.
        #[source]
        source: EncodeError,
    },
    /// The directory holds something that is not a vaultfleet log store.
    #[error(
        "{} is not a vaultfleet log store (found format marker {}); point the replica at \
         its own data directory",
        path.display(),
        marker(found)
    )]
    ForeignFormat {
        /// The data directory.
        path: PathBuf,
        /// The format marker that was found (`None`: none, though the directory
        /// holds data).
        found: Option<Vec<u8>>,
    },
    /// The store's container says it was written by an older vaultfleet, in a
    /// format this build no longer reads. The marker is not authenticated.
    #[error(
        "{what} says it was written by an older vaultfleet: format {found} is no longer \
         read (this build reads format {current}); {REPLACE}. The format marker is not \
         authenticated: if no older vaultfleet ever wrote this directory, treat it as \
         tampering"
    )]
    OldFormat {
        /// The store or record (for example `"sled log store"`).
        what: &'static str,
        /// The format found.
        found: u8,
        /// The format this build reads and writes.
        current: u8,
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
    /// The HSM's counter for this store moved by more than the store's own write:
    /// another store shares its counter label.
    #[error(
        "replica {replica}: HSM counter {label:?} moved to {now}, expected {expected}: \
         another store shares this counter label; give each store its own label"
    )]
    CounterShared {
        /// The replica whose store it is.
        replica: ReplicaId,
        /// The counter's label.
        label: String,
        /// The value the counter reported.
        now: u64,
        /// The value this store's write should have given.
        expected: u64,
    },
    /// Sealed data on disk failed its check: it was edited, reordered, cut short or
    /// copied from elsewhere. The store is not served from.
    #[error(
        "replica {replica}: tampered log store ({record}): {cause}; this replica's disk \
         cannot be trusted: {REPLACE}"
    )]
    Tampered {
        /// The replica whose store it is.
        replica: ReplicaId,
        /// Which sealed record failed.
        record: SealedRecord,
        /// What was wrong with it.
        #[source]
        cause: Tampering,
    },
    /// The store is older than the HSM's monotonic counter: the disk was rolled back
    /// to an earlier image (or replaced by an empty one). Votes and acknowledgements
    /// this replica gave since then are missing, so it must never vote again.
    #[error(
        "replica {replica}: log store was rolled back: it was last written at write \
         {disk}, but the HSM counter is at {hsm}; this replica must not vote or \
         acknowledge: {REPLACE}"
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
         this replica must not vote or acknowledge: {REPLACE}"
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
        #[source]
        cause: Arc<StorageError>,
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

impl StorageError {
    /// The backend failed with `source` (for example a `sled::Error`, an
    /// `std::io::Error`, or a simulated fault).
    pub fn backend(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Arc::new(source))
    }

    /// Bad data in `record`.
    pub fn corrupt(record: StoredRecord, cause: impl Into<Corruption>) -> Self {
        Self::Corrupt {
            record,
            cause: cause.into(),
        }
    }
}

fn marker(found: &Option<Vec<u8>>) -> String {
    match found {
        Some(m) => format!("{:?}", String::from_utf8_lossy(m)),
        None => "none".to_string(),
    }
}

/// A record of a plain (unsealed) store, named in [`StorageError::Corrupt`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoredRecord {
    /// The hard state (term, vote, commit).
    HardState,
    /// The newest snapshot.
    Snapshot,
    /// The log offset (index and term of the entry before the first).
    Offset,
    /// The entry at this index.
    Entry {
        /// Index of the entry.
        index: u64,
    },
    /// A key in the entry range that is not a well-formed entry key.
    EntryKey,
    /// The record a wrapping store keeps beside the log.
    WrapperRecord,
    /// The log as a whole (raft-rs's reads of it failed).
    Log,
}

impl std::fmt::Display for StoredRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoredRecord::HardState => f.write_str("hard state"),
            StoredRecord::Snapshot => f.write_str("snapshot"),
            StoredRecord::Offset => f.write_str("log offset"),
            StoredRecord::Entry { index } => write!(f, "entry {index}"),
            StoredRecord::EntryKey => f.write_str("entry key"),
            StoredRecord::WrapperRecord => f.write_str("wrapper record"),
            StoredRecord::Log => f.write_str("log"),
        }
    }
}

/// What was wrong with a record of a plain store.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// The bytes do not decode.
    #[error("does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// An entry is stored where another index belongs.
    #[error("holds index {found} where {expected} belongs")]
    WrongIndex {
        /// The index the entry carries.
        found: u64,
        /// The index its place calls for.
        expected: u64,
    },
    /// The log is compacted past the newest snapshot.
    #[error("log is compacted to {offset}, past the newest snapshot at {snapshot}")]
    CompactedPastSnapshot {
        /// The log offset.
        offset: u64,
        /// The newest snapshot's index.
        snapshot: u64,
    },
    /// The log offset leaves no room for the log.
    #[error("offset {offset} leaves no room for the log")]
    NoRoomForLog {
        /// The log offset.
        offset: u64,
    },
    /// The commit index is past the last index held.
    #[error("commit index {commit} is past the last index {last}")]
    CommitPastLast {
        /// The hard state's commit index.
        commit: u64,
        /// The last index held.
        last: u64,
    },
    /// An entry the store's own index says it holds is missing.
    #[error("missing")]
    Missing,
    /// raft-rs's read of the log failed.
    #[error("cannot be read: {0}")]
    Read(#[source] Arc<raft::Error>),
}

/// Which sealed record a [`StorageError::Tampered`] is about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealedRecord {
    /// The sealed head (the description of the whole durable state).
    Head,
    /// The hard state (term, vote, commit).
    HardState,
    /// The snapshot at this index.
    Snapshot {
        /// Index of the snapshot.
        index: u64,
    },
    /// The batch sealing entries `first..=last`.
    Batch {
        /// First index of the batch.
        first: u64,
        /// Last index of the batch.
        last: u64,
    },
    /// The entry at this index.
    Entry {
        /// Index of the entry.
        index: u64,
    },
    /// A record the inner store itself could not read back (its own structural
    /// checks failed before any seal was checked).
    Container {
        /// What the inner store reported as unreadable.
        record: StoredRecord,
    },
}

impl std::fmt::Display for SealedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SealedRecord::Head => f.write_str("sealed head"),
            SealedRecord::HardState => f.write_str("hard state"),
            SealedRecord::Snapshot { index } => write!(f, "snapshot at index {index}"),
            SealedRecord::Batch { first, last } => write!(f, "batch of entries {first}..={last}"),
            SealedRecord::Entry { index } => write!(f, "entry {index}"),
            SealedRecord::Container { record } => write!(f, "inner store's {record}"),
        }
    }
}

/// What a sealed record's failed check found.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Tampering {
    /// The seal does not open: the record was edited, or sealed for another
    /// replica or group.
    #[error("{0}: edited, or sealed for another replica or group")]
    Unsealed(#[source] HsmError),
    /// The record (or what its seal held) does not decode.
    #[error("does not decode: {0}")]
    Decode(#[source] DecodeError),
    /// The inner store's own structural check failed.
    #[error("{0}")]
    Container(#[source] Corruption),
    /// The store holds a log but no sealed head.
    #[error(
        "the store holds a log but no sealed head: it was not written by a sealed \
         store, or its head was removed"
    )]
    NoHead,
    /// The sealed head names no snapshot, but the store holds one.
    #[error("the sealed head names no snapshot, but the store holds one")]
    UnexpectedSnapshot,
    /// The stored snapshot is not the one the sealed head names.
    #[error(
        "the stored snapshot (index {stored_index}) is not the one the sealed head names: \
         replaced, edited or rolled back"
    )]
    SnapshotReplaced {
        /// Index of the snapshot the store holds.
        stored_index: u64,
    },
    /// A snapshot's clear metadata differs from the sealed one.
    #[error("the clear metadata differs from the sealed one")]
    MetadataMismatch,
    /// The log starts elsewhere than the sealed head says.
    #[error(
        "the log starts after ({found_index}, term {found_term}) but the sealed head says \
         after ({sealed_index}, term {sealed_term}): entries were removed or added at the front"
    )]
    FrontMoved {
        /// Index before the first stored entry.
        found_index: u64,
        /// Its term.
        found_term: u64,
        /// The offset index the head names.
        sealed_index: u64,
        /// The offset term the head names.
        sealed_term: u64,
    },
    /// The log ends elsewhere than the sealed head says.
    #[error(
        "the log ends at {found} but the sealed head says {sealed}: the log was cut short \
         or extended"
    )]
    EndMoved {
        /// The last index stored.
        found: u64,
        /// The last index the head names.
        sealed: u64,
    },
    /// An entry is not covered by any sealed batch.
    #[error("the entry is not covered by any sealed batch")]
    Uncovered,
    /// A batch is stored at another index than its own first index.
    #[error("found at index {at}: moved or spliced")]
    Moved {
        /// Where it was found.
        at: u64,
    },
    /// A batch's later entries are missing from the store.
    #[error("cut short: entries {from}..={to} are missing")]
    CutShort {
        /// First missing index.
        from: u64,
        /// Last missing index.
        to: u64,
    },
    /// A batch does not chain to the batch before it.
    #[error(
        "does not chain to the batch before it: a batch between them was removed, \
         replaced or reordered"
    )]
    BrokenChain,
    /// A sealed entry carries another index than its place in the batch.
    #[error("holds index {found} where {expected} belongs")]
    WrongIndex {
        /// The index the sealed entry carries.
        found: u64,
        /// The index its place calls for.
        expected: u64,
    },
    /// The sealed entries do not end where the batch header says.
    #[error("the sealed entries do not match the batch header")]
    HeaderMismatch,
    /// A stored placeholder differs from the sealed entry it stands for.
    #[error("the stored entry differs from the sealed batch (index, term or placeholder edited)")]
    PlaceholderEdited,
    /// The newest batch is not the one the sealed head names.
    #[error(
        "the newest batch is not the one the sealed head names: replaced by an older or \
         foreign batch"
    )]
    TailReplaced,
}
