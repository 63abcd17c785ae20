//! [`ChunkRead`]: a snapshot reader as a [`std::io::Read`], what a state
//! machine's restore reads through.
//!
//! A reader's error (a chunk that fails to open, a hash list that does not
//! match at the end) becomes an [`std::io::Error`] whose inner error is the
//! [`SnapshotFileError`], so a restore reading to the end fails instead of
//! taking a cut or edited state, and its caller can get the cause back with
//! `io_error.get_ref().and_then(|e| e.downcast_ref::<SnapshotFileError>())`.

use std::io::Read;

use bytes::{Buf as _, Bytes};

use super::{SnapshotFileError, SnapshotReader};

/// A [`SnapshotReader`]'s chunks as one byte stream. End of stream
/// (`Ok(0)`) comes only once the reader reached its end with the hash list
/// matching its descriptor.
pub struct ChunkRead {
    reader: Box<dyn SnapshotReader>,
    /// What is left of the current chunk.
    chunk: Bytes,
    done: bool,
}

impl ChunkRead {
    /// Reads `reader`'s chunks in order.
    pub fn new(reader: Box<dyn SnapshotReader>) -> Self {
        Self {
            reader,
            chunk: Bytes::new(),
            done: false,
        }
    }

    /// The reader's descriptor.
    pub fn descriptor(&self) -> &super::SnapshotDescriptor {
        self.reader.descriptor()
    }
}

impl Read for ChunkRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.chunk.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.reader.next_chunk() {
                Ok(Some((_, chunk))) => self.chunk = chunk,
                Ok(None) => self.done = true,
                Err(e) => return Err(std::io::Error::other::<SnapshotFileError>(e)),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}

/// Copies a snapshot chunk by chunk from `source` into `files` as a received
/// one (checked there against its descriptor's digest and made durable at
/// the end), asking `go_on` before each chunk: `Ok(false)` if it said stop
/// (the partial file is dropped). What an in-process transport does in place
/// of a network.
pub fn copy_snapshot(
    mut source: Box<dyn super::SnapshotReader>,
    files: &dyn super::SnapshotFiles,
    mut go_on: impl FnMut() -> bool,
) -> Result<bool, super::SnapshotFileError> {
    let mut receiver = files.receive(source.descriptor())?;
    while let Some((seq, chunk)) = source.next_chunk()? {
        if !go_on() {
            return Ok(false);
        }
        receiver.put(seq, &chunk)?;
    }
    receiver.finish()?;
    Ok(true)
}
