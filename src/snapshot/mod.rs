//! Snapshot files: a replica's snapshot kept beside its log as a file of
//! fixed-size chunks, named by a small [`SnapshotDescriptor`].
//!
//! raft-rs 0.7 carries a snapshot's bytes inside its `Snapshot` message, which
//! cannot hold a vault of millions of users (protobuf's 2 GiB cap, several
//! whole copies in memory, an encode on the replica's thread). As TiKV does, the
//! raft snapshot will carry only a descriptor, and the bytes live here: written
//! once as a stream ([`SnapshotWriter`]), read back chunk by chunk
//! ([`SnapshotReader`]), received from a leader chunk by chunk
//! ([`ChunkReceiver`]), and garbage-collected ([`SnapshotFiles::retain`]).
//! `docs/proposals/streamed-snapshots.md` is the design; this module is its
//! step 3 (the files), and the replica does not use it yet.
//!
//! **Integrity.** The descriptor's [`digest`](SnapshotDescriptor::digest) is a
//! hash list: SHA-256 under a label over the descriptor's fields and the
//! SHA-256 of each plaintext chunk in order. Every implementation checks it
//! when a reader reaches the end and when a receiver finishes: a reader returns
//! an error instead of its end, so a machine restoring from it (which reads to
//! the end) fails rather than taking a cut or edited state. A sealed store's
//! files (kept with a [`ChunkSealer`] such as [`HsmSealer`]) also open each
//! chunk with an AEAD bound to its position, so an edit is refused at the
//! chunk it is in.
//!
//! ```text
//! a snapshot file (both implementations keep this layout; DirFiles on disk):
//!   header: magic, the storing replica, the sealer's clear header (a salt;
//!           empty when plain)
//!   chunk 0 .. chunk n-1: each a length-prefixed record, sealed or plain
//!   trailer (finished files only): the descriptor, an end magic
//! ```
//!
//! The private module `layout` gives the bytes field by field.
//!
//! Implementations: [`MemFiles`] (memory) and [`DirFiles`] (a directory beside
//! a sled log, written to a temporary file, made durable and renamed). Either
//! can keep its chunks sealed by a [`ChunkSealer`]: a sealed store's files use
//! [`HsmSealer`], whose per-file key is derived in the HSM, so an untrusted
//! disk learns nothing from them and can change nothing unnoticed.

mod descriptor;
mod dir;
mod error;
mod layout;
mod mem;
mod read;
mod sealed;
#[cfg(test)]
mod tests;

pub use descriptor::{chunk_count, chunk_digest, snapshot_id, SnapshotDigester, DESCRIPTOR_BYTES};
pub use dir::DirFiles;
pub use error::SnapshotFileError;
pub use mem::MemFiles;
pub use read::{copy_snapshot, ChunkRead};
pub use sealed::HsmSealer;

use bytes::Bytes;

use crate::ReplicaId;

/// The descriptor layout this build writes and reads.
pub const DESCRIPTOR_FORMAT: u8 = 1;

/// The chunk size a new snapshot is cut into unless its files say otherwise.
pub const CHUNK_BYTES_DEFAULT: u32 = 1 << 20;

/// The smallest chunk size a descriptor may name.
pub const CHUNK_BYTES_MIN: u32 = 64 << 10;

/// The largest chunk size a descriptor may name: the most a reader or a
/// receiver holds of one snapshot in memory at once.
pub const CHUNK_BYTES_MAX: u32 = 4 << 20;

/// The largest snapshot a descriptor may name (64 GiB): a bound on what a
/// peer's descriptor can make a receiver reserve, far above a vault of 10
/// million users (about 4.3 GB).
pub const SNAPSHOT_BYTES_MAX: u64 = 64 << 30;

/// The name of one snapshot: 16 bytes derived from the group, the creating
/// replica and the digest, so the same state written by the same replica gets
/// the same id (deterministic, as the simulator needs).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId(pub [u8; 16]);

impl std::fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotId(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// What the raft snapshot carries instead of the state: enough to find the
/// file, check it, and reserve room for it before a byte arrives.
///
/// Invariants (checked by its decoder and by every [`SnapshotFiles`] method
/// that takes one): `chunk_bytes` is in
/// [`CHUNK_BYTES_MIN`]`..=`[`CHUNK_BYTES_MAX`]; `total_bytes <=`
/// [`SNAPSHOT_BYTES_MAX`]; `chunks == ceil(total_bytes / chunk_bytes)` exactly
/// (an empty snapshot has no chunk); every chunk but the last holds
/// `chunk_bytes` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotDescriptor {
    /// The raft group.
    pub group: u64,
    /// The replica that wrote the snapshot of its own applied state.
    pub creator: ReplicaId,
    /// The last log index the snapshot covers.
    pub index: u64,
    /// The term of that index.
    pub term: u64,
    /// The snapshot's name.
    pub id: SnapshotId,
    /// The plaintext length of the whole stream.
    pub total_bytes: u64,
    /// The plaintext length of every chunk but the last.
    pub chunk_bytes: u32,
    /// The number of chunks.
    pub chunks: u32,
    /// The hash list's root (see the module documentation).
    pub digest: [u8; 32],
}

/// Where a replica's snapshot files live. Shared by the replica (which writes
/// its own snapshots and reads them back to restore), the transport (which
/// reads them to send and receives a leader's) and a background worker, so the
/// methods take `&self` and implementations lock what they share.
pub trait SnapshotFiles: Send + Sync + 'static {
    /// Starts writing `creator`'s snapshot of group `group` at `index` / `term`.
    /// The writer takes the stream in any pieces and cuts it into chunks of
    /// the files' chunk size; nothing is visible to [`SnapshotFiles::open`]
    /// until [`SnapshotWriter::finish`] returns. Dropping an unfinished writer
    /// abandons it and leaves nothing behind.
    fn create(
        &self,
        group: u64,
        creator: ReplicaId,
        index: u64,
        term: u64,
    ) -> Result<Box<dyn SnapshotWriter>, SnapshotFileError>;

    /// Starts receiving the snapshot `descriptor` names, chunk by chunk in
    /// order, from the replica that sends it. The descriptor is checked (its
    /// invariants, its size against what the files may hold) before anything
    /// is reserved. A receiver of the same id replaces an unfinished one.
    fn receive(
        &self,
        descriptor: &SnapshotDescriptor,
    ) -> Result<Box<dyn ChunkReceiver>, SnapshotFileError>;

    /// Opens a complete snapshot for reading, chunk by chunk. An open reader
    /// keeps its snapshot readable even if [`SnapshotFiles::retain`] drops it.
    fn open(
        &self,
        descriptor: &SnapshotDescriptor,
    ) -> Result<Box<dyn SnapshotReader>, SnapshotFileError>;

    /// True when the snapshot `descriptor` names was finished here (written
    /// and durable, or received, checked against its digest and durable).
    fn is_complete(&self, descriptor: &SnapshotDescriptor) -> bool;

    /// Deletes every complete snapshot whose id is not in `keep`, and every
    /// abandoned partial one. Readers already open are not disturbed.
    fn retain(&self, keep: &[SnapshotId]) -> Result<(), SnapshotFileError>;

    /// Deletes every complete snapshot whose index is below `index`, and
    /// every abandoned partial one: what a replica keeps once its newest
    /// snapshot is at `index` (a newer one received but not yet installed
    /// stays). Readers already open are not disturbed.
    fn retain_below(&self, index: u64) -> Result<(), SnapshotFileError>;
}

/// A snapshot being written: the bytes go in through [`std::io::Write`].
pub trait SnapshotWriter: std::io::Write + Send {
    /// Cuts the last chunk, makes the file durable and visible, and returns
    /// its descriptor.
    fn finish(self: Box<Self>) -> Result<SnapshotDescriptor, SnapshotFileError>;
}

/// A snapshot being received from another replica.
pub trait ChunkReceiver: Send {
    /// Takes chunk `seq`: chunks arrive in order from 0, each of exactly the
    /// size its descriptor implies. Anything else is refused.
    fn put(&mut self, seq: u32, chunk: &[u8]) -> Result<(), SnapshotFileError>;

    /// Checks that every chunk came and that the hash list matches the
    /// descriptor's digest, then makes the file durable and visible. A
    /// mismatch leaves nothing behind.
    fn finish(self: Box<Self>) -> Result<(), SnapshotFileError>;
}

/// How a store protects its snapshot chunks at rest. `None` where a store
/// takes one keeps them plain (as [`MemLog`](crate::MemLog) and
/// [`SledLog`](crate::SledLog) keep their logs).
pub trait ChunkSealer: Send + Sync + 'static {
    /// Starts a new file of the snapshot at `index` / `term`, to be kept by
    /// `replica` of `group` (the replica that stores it, which for a received
    /// snapshot is not its creator). Draws what makes this file's sealing
    /// unique (a salt) and returns it as a clear header to store in front of
    /// the chunks.
    fn begin(
        &self,
        group: u64,
        replica: ReplicaId,
        index: u64,
        term: u64,
    ) -> Result<Box<dyn FileSeal>, SnapshotFileError>;

    /// Reopens a file written by [`ChunkSealer::begin`] from its clear header.
    /// A header that was edited makes every chunk fail to open.
    fn resume(
        &self,
        header: &[u8],
        group: u64,
        replica: ReplicaId,
        index: u64,
        term: u64,
    ) -> Result<Box<dyn FileSeal>, SnapshotFileError>;
}

/// The sealing of one snapshot file.
pub trait FileSeal: Send {
    /// The clear header to store in front of the chunks.
    fn header(&self) -> &[u8];

    /// Seals plaintext chunk `seq`; `last` says whether it is the file's last
    /// chunk (bound, so a file cut at a chunk boundary fails to open).
    fn seal(
        &mut self,
        seq: u32,
        last: bool,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SnapshotFileError>;

    /// Opens what [`FileSeal::seal`] gave for the same `seq` and `last`;
    /// anything else is [`SnapshotFileError::Tampered`].
    fn open(&self, seq: u32, last: bool, sealed: &[u8]) -> Result<Vec<u8>, SnapshotFileError>;
}

/// A complete snapshot being read, chunk by chunk in order.
pub trait SnapshotReader: Send {
    /// The snapshot's descriptor.
    fn descriptor(&self) -> &SnapshotDescriptor;

    /// The next chunk and its sequence number, or `None` after the last one
    /// once the hash list matched the descriptor's digest. A mismatch is an
    /// error in place of the end.
    fn next_chunk(&mut self) -> Result<Option<(u32, Bytes)>, SnapshotFileError>;
}
