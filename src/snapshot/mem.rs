//! [`MemFiles`]: snapshot files kept in memory, for [`MemLog`](crate::MemLog)
//! and tests.
//!
//! A finished file is one [`Bytes`] holding exactly the bytes
//! [`DirFiles`](super::DirFiles) would write (the layout of
//! [`layout`](super::layout)), so both implementations run the same writer,
//! receiver and reader code. A reader holds its own reference to the bytes, so
//! [`SnapshotFiles::retain`] never disturbs it. Writers and receivers keep
//! their bytes to themselves until they finish: nothing partial is ever in the
//! map, and dropping one leaves nothing behind.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::layout::{self, ChunkIntake, Decoder, Origin, StreamWriter};
use super::{
    ChunkReceiver, ChunkSealer, SnapshotDescriptor, SnapshotFileError, SnapshotFiles, SnapshotId,
    SnapshotReader, SnapshotWriter,
};
use crate::ReplicaId;

type Finished = Arc<Mutex<BTreeMap<SnapshotId, Bytes>>>;

/// Snapshot files kept in memory.
///
/// A receive of a snapshot already held checks its chunks and digest as usual
/// but keeps nothing: its finish leaves the held file as it is. Two receives
/// of the same id running at once both may finish; the later finish wins.
pub struct MemFiles {
    finished: Finished,
    chunk_bytes: u32,
    sealer: Option<Arc<dyn ChunkSealer>>,
    replica: ReplicaId,
}

impl MemFiles {
    /// Files of `replica` (the replica that stores them), cutting new
    /// snapshots into chunks of `chunk_bytes` (which must be in
    /// [`CHUNK_BYTES_MIN`](super::CHUNK_BYTES_MIN)`..=`[`CHUNK_BYTES_MAX`](super::CHUNK_BYTES_MAX),
    /// else [`SnapshotFiles::create`] fails), sealed by `sealer` if one is
    /// given.
    pub fn new(chunk_bytes: u32, sealer: Option<Arc<dyn ChunkSealer>>, replica: ReplicaId) -> Self {
        Self {
            finished: Arc::default(),
            chunk_bytes,
            sealer,
            replica,
        }
    }

    /// The name errors give a file kept in memory.
    fn path(id: &SnapshotId) -> PathBuf {
        PathBuf::from(format!("memory:{}", super::dir::id_hex(id)))
    }

    /// The finished file of `descriptor`, if its trailer names exactly it.
    fn file(&self, descriptor: &SnapshotDescriptor) -> Result<Bytes, SnapshotFileError> {
        descriptor.check()?;
        let not_found = SnapshotFileError::NotFound { id: descriptor.id };
        let bytes = self
            .finished
            .lock()
            .get(&descriptor.id)
            .cloned()
            .ok_or(not_found)?;
        let path = Self::path(&descriptor.id);
        if layout::trailer_of(&path, &bytes)? != *descriptor {
            return Err(SnapshotFileError::Corrupt {
                path,
                what: "its trailer names another snapshot",
            });
        }
        Ok(bytes)
    }

    /// The number of finished files held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.finished.lock().len()
    }

    /// The bytes of a finished file (tests of the layout).
    #[cfg(test)]
    pub(super) fn raw(&self, id: &SnapshotId) -> Option<Bytes> {
        self.finished.lock().get(id).cloned()
    }
}

impl SnapshotFiles for MemFiles {
    fn create(
        &self,
        group: u64,
        creator: ReplicaId,
        index: u64,
        term: u64,
    ) -> Result<Box<dyn SnapshotWriter>, SnapshotFileError> {
        let origin = Origin {
            group,
            creator,
            index,
            term,
        };
        let writer = StreamWriter::start(
            Vec::new(),
            PathBuf::from("memory:writer"),
            self.replica,
            self.sealer.as_deref(),
            origin,
            self.chunk_bytes,
        )?;
        Ok(Box::new(MemWriter {
            writer,
            finished: self.finished.clone(),
        }))
    }

    fn receive(
        &self,
        descriptor: &SnapshotDescriptor,
    ) -> Result<Box<dyn ChunkReceiver>, SnapshotFileError> {
        descriptor.check()?;
        let sink = (!self.is_complete(descriptor)).then(Vec::new);
        let intake = ChunkIntake::start(
            sink,
            Self::path(&descriptor.id),
            self.replica,
            self.sealer.as_deref(),
            descriptor,
        )?;
        Ok(Box::new(MemReceiver {
            intake,
            id: descriptor.id,
            finished: self.finished.clone(),
        }))
    }

    fn open(
        &self,
        descriptor: &SnapshotDescriptor,
    ) -> Result<Box<dyn SnapshotReader>, SnapshotFileError> {
        let bytes = self.file(descriptor)?;
        let decoder = Decoder::start(
            Cursor::new(bytes),
            Self::path(&descriptor.id),
            self.replica,
            self.sealer.as_deref(),
            descriptor,
        )?;
        Ok(Box::new(decoder))
    }

    fn is_complete(&self, descriptor: &SnapshotDescriptor) -> bool {
        self.file(descriptor).is_ok()
    }

    fn retain_below(&self, index: u64) -> Result<(), SnapshotFileError> {
        self.finished.lock().retain(|id, bytes| {
            // A file whose trailer does not decode is not a snapshot of any
            // index: dropped too.
            layout::trailer_of(&Self::path(id), bytes).is_ok_and(|d| d.index >= index)
        });
        Ok(())
    }

    fn retain(&self, keep: &[SnapshotId]) -> Result<(), SnapshotFileError> {
        self.finished.lock().retain(|id, _| keep.contains(id));
        Ok(())
    }
}

/// A snapshot being written into memory.
struct MemWriter {
    writer: StreamWriter<Vec<u8>>,
    finished: Finished,
}

impl std::io::Write for MemWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.write(buf)
    }

    /// Does nothing: a chunk is cut when the next bytes come, or at finish.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SnapshotWriter for MemWriter {
    fn finish(self: Box<Self>) -> Result<SnapshotDescriptor, SnapshotFileError> {
        let MemWriter { writer, finished } = *self;
        let (bytes, descriptor) = writer.finish()?;
        finished
            .lock()
            .entry(descriptor.id)
            .or_insert_with(|| Bytes::from(bytes));
        Ok(descriptor)
    }
}

/// A snapshot being received into memory.
struct MemReceiver {
    intake: ChunkIntake<Vec<u8>>,
    id: SnapshotId,
    finished: Finished,
}

impl ChunkReceiver for MemReceiver {
    fn put(&mut self, seq: u32, chunk: &[u8]) -> Result<(), SnapshotFileError> {
        self.intake.put(seq, chunk)
    }

    fn finish(self: Box<Self>) -> Result<(), SnapshotFileError> {
        let MemReceiver {
            intake,
            id,
            finished,
        } = *self;
        if let Some(bytes) = intake.finish()? {
            finished
                .lock()
                .entry(id)
                .or_insert_with(|| Bytes::from(bytes));
        }
        Ok(())
    }
}
