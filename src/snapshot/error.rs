//! [`SnapshotFileError`]: what went wrong with a snapshot file, and what the
//! operator can do about it.

use std::path::PathBuf;
use std::sync::Arc;

use super::SnapshotId;
use crate::hsm::HsmError;

/// What went wrong writing, receiving, reading or deleting a snapshot file.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotFileError {
    /// The file system refused an operation.
    #[error("snapshot file {}: {op} failed: {source}; check the disk and the data directory permissions", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done ("create", "write", "fsync", "rename", ...).
        op: &'static str,
        /// The system's error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A descriptor breaks its own invariants (a peer's or a store's).
    #[error("snapshot descriptor refused: {what}")]
    BadDescriptor {
        /// The rule it broke.
        what: &'static str,
    },
    /// No complete snapshot of this id is held here.
    #[error(
        "snapshot {id:?} is not held here (never finished, or deleted); take or receive a new one"
    )]
    NotFound {
        /// The snapshot asked for.
        id: SnapshotId,
    },
    /// A chunk came out of order, with the wrong size, or past the last one.
    #[error("snapshot {id:?}: chunk {seq} refused: {what}")]
    BadChunk {
        /// The snapshot being received.
        id: SnapshotId,
        /// The chunk's sequence number.
        seq: u32,
        /// What was wrong.
        what: &'static str,
    },
    /// A writer was given more than a descriptor may name.
    #[error("snapshot is larger than {max} bytes; the state machine's snapshot cannot be kept as a file")]
    TooLarge {
        /// The largest snapshot allowed.
        max: u64,
    },
    /// The files' disk has too little free space for a snapshot offered to
    /// this replica: it was refused before a byte was written.
    #[error("snapshot of {needed} bytes refused: the snapshot directory's disk has {available} bytes free; free space or move the data directory")]
    NoSpace {
        /// Bytes the file would take, with its framing and a margin.
        needed: u64,
        /// Bytes free for this process on the disk.
        available: u64,
    },
    /// A receiver finished before the last chunk came.
    #[error("snapshot {id:?}: finished after {got} of {want} chunks; the transfer was cut")]
    Incomplete {
        /// The snapshot being received.
        id: SnapshotId,
        /// Chunks received.
        got: u32,
        /// Chunks the descriptor names.
        want: u32,
    },
    /// The chunks' hash list does not match the descriptor's digest: the file
    /// or the transfer was altered, cut or swapped. Nothing of it was used.
    #[error("snapshot {id:?}: its chunks do not match the descriptor's digest (altered, cut or swapped); it was not used; take or receive it again")]
    DigestMismatch {
        /// The snapshot.
        id: SnapshotId,
    },
    /// A sealed chunk or file header did not authenticate: edited, moved from
    /// another snapshot, position or replica, or cut.
    #[error("snapshot chunk {seq} failed authentication (edited, moved from another file or position, or cut); it was not used; take or receive the snapshot again")]
    Tampered {
        /// The chunk.
        seq: u32,
    },
    /// A file on disk does not decode as a snapshot file.
    #[error("snapshot file {}: {what}; delete it, the replica takes or receives a new snapshot", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: &'static str,
    },
    /// The HSM failed while deriving or using a snapshot file key.
    #[error("snapshot file key: {0}")]
    Hsm(#[from] HsmError),
}

impl SnapshotFileError {
    /// True when the disk had no room: refused before the transfer
    /// ([`SnapshotFileError::NoSpace`]) or a write that found it full.
    pub fn is_no_space(&self) -> bool {
        match self {
            Self::NoSpace { .. } => true,
            Self::Io { source, .. } => source.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }

    /// An I/O failure on `path` during `op`.
    pub fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            op,
            source: Arc::new(source),
        }
    }
}
