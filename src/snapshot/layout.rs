//! The bytes of one snapshot file, shared by [`MemFiles`](super::MemFiles)
//! (which keeps them in memory) and [`DirFiles`](super::DirFiles) (which keeps
//! them on disk), and the chunk cutting, digesting and checking both run.
//!
//! ```text
//! header:  [8] FILE_MAGIC | u64 replica (the one that stores the file)
//!          | u32 len | sealer header (len <= SEAL_HEADER_BYTES_MAX; empty when plain)
//! chunk i: u32 len | record (the plaintext chunk, or what FileSeal::seal gave for it)
//! trailer: the encoded descriptor (DESCRIPTOR_BYTES) | [8] END_MAGIC   (finished files only)
//! ```
//!
//! Integers are big-endian ([`crate::codec`]). A file is finished when its last
//! [`TRAILER_BYTES`] decode as a descriptor followed by [`END_MAGIC`], so the
//! descriptor is read back without touching the chunks.
//!
//! Invariants kept here: nothing read from a file is trusted before it is
//! bounded. A record's length is checked against its descriptor's chunk size
//! (exactly the chunk's length when plain, at most [`SEAL_OVERHEAD_BYTES_MAX`]
//! more when sealed) before a byte of it is allocated; a plaintext chunk's size
//! is checked against the descriptor; and a [`Decoder`] returns
//! [`SnapshotFileError::DigestMismatch`] in place of its end unless the hash
//! list matches. The replica in the header is a guard against files moved
//! between replicas' directories by mistake; it is not authenticated in a plain
//! file (a sealed file's chunks are bound to the replica by its sealer).

use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{
    ChunkSealer, FileSeal, SnapshotDescriptor, SnapshotDigester, SnapshotFileError, SnapshotReader,
    DESCRIPTOR_BYTES, SNAPSHOT_BYTES_MAX,
};
use crate::codec::{Codec, Reader, Writer};
use crate::ReplicaId;

/// The first bytes of every snapshot file.
pub(super) const FILE_MAGIC: [u8; 8] = *b"vfsnap\0\x01";

/// The last bytes of every finished snapshot file.
pub(super) const END_MAGIC: [u8; 8] = *b"vfsnap\xff\x01";

/// The largest sealer header a file may carry.
pub(super) const SEAL_HEADER_BYTES_MAX: usize = 256;

/// The most a sealed record may exceed its plaintext chunk (nonce, tag).
pub(super) const SEAL_OVERHEAD_BYTES_MAX: usize = 64;

/// The length of a header's fixed part (magic, replica, sealer header length).
pub(super) const HEADER_FIXED_BYTES: usize = 8 + 8 + 4;

/// The length of a finished file's trailer.
pub(super) const TRAILER_BYTES: usize = DESCRIPTOR_BYTES + END_MAGIC.len();

/// Where the bytes of a file being written go.
pub(super) trait Sink {
    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]) -> Result<(), SnapshotFileError>;
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), SnapshotFileError> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// Writes a file's header, records and trailer to a [`Sink`] (no digesting,
/// no cutting: [`StreamWriter`] and [`ChunkIntake`] do those).
struct Encoder<S> {
    sink: S,
    seal: Option<Box<dyn FileSeal>>,
    /// Where errors point (a path, or a name for memory).
    path: PathBuf,
}

impl<S: Sink> Encoder<S> {
    fn start(
        mut sink: S,
        path: PathBuf,
        replica: ReplicaId,
        seal: Option<Box<dyn FileSeal>>,
    ) -> Result<Self, SnapshotFileError> {
        let sealer_header = seal.as_ref().map_or(&[][..], |s| s.header());
        let mut w = Writer::with_capacity(HEADER_FIXED_BYTES + sealer_header.len());
        w.raw(&FILE_MAGIC).u64(replica);
        w.bytes(
            SEAL_HEADER_BYTES_MAX,
            sealer_header,
            "snapshot file sealer header",
        )
        .map_err(|_| SnapshotFileError::Corrupt {
            path: path.clone(),
            what: "the sealer's header is longer than a file may carry",
        })?;
        sink.put(w.as_slice())?;
        Ok(Self { sink, seal, path })
    }

    fn record(&mut self, seq: u32, last: bool, plaintext: &[u8]) -> Result<(), SnapshotFileError> {
        let sealed;
        let record = match self.seal.as_mut() {
            None => plaintext,
            Some(seal) => {
                sealed = seal.seal(seq, last, plaintext)?;
                if sealed.len() > plaintext.len() + SEAL_OVERHEAD_BYTES_MAX {
                    return Err(SnapshotFileError::Corrupt {
                        path: self.path.clone(),
                        what: "the sealer's record exceeds its overhead bound",
                    });
                }
                &sealed[..]
            }
        };
        // A chunk is at most CHUNK_BYTES_MAX (4 MiB), so its length fits a u32.
        let len = u32::try_from(record.len()).map_err(|_| SnapshotFileError::Corrupt {
            path: self.path.clone(),
            what: "a chunk record is longer than 4 GiB",
        })?;
        self.sink.put(&len.to_be_bytes())?;
        self.sink.put(record)
    }

    fn end(mut self, descriptor: &SnapshotDescriptor) -> Result<S, SnapshotFileError> {
        self.sink.put(&encode_trailer(descriptor))?;
        Ok(self.sink)
    }
}

/// A finished file's trailer for `descriptor`.
pub(super) fn encode_trailer(descriptor: &SnapshotDescriptor) -> Vec<u8> {
    let mut w = Writer::with_capacity(TRAILER_BYTES);
    // A descriptor's encoding cannot fail (fixed-width fields only).
    let _ = descriptor.encode(&mut w);
    w.raw(&END_MAGIC);
    debug_assert_eq!(w.len(), TRAILER_BYTES);
    w.into_vec()
}

/// The descriptor in a finished file's trailer (`tail`: its last
/// [`TRAILER_BYTES`]).
pub(super) fn decode_trailer(
    path: &Path,
    tail: &[u8],
) -> Result<SnapshotDescriptor, SnapshotFileError> {
    let corrupt = |what| SnapshotFileError::Corrupt {
        path: path.to_owned(),
        what,
    };
    if tail.len() != TRAILER_BYTES || tail[DESCRIPTOR_BYTES..] != END_MAGIC {
        return Err(corrupt("it has no trailer (never finished, or cut)"));
    }
    SnapshotDescriptor::from_bytes(&tail[..DESCRIPTOR_BYTES])
        .map_err(|_| corrupt("its trailer does not decode as a descriptor"))
}

/// The descriptor of the finished file `bytes` (a whole file in memory).
pub(super) fn trailer_of(
    path: &Path,
    bytes: &[u8],
) -> Result<SnapshotDescriptor, SnapshotFileError> {
    match bytes.len().checked_sub(TRAILER_BYTES) {
        Some(at) if at >= HEADER_FIXED_BYTES => decode_trailer(path, &bytes[at..]),
        _ => Err(SnapshotFileError::Corrupt {
            path: path.to_owned(),
            what: "it is shorter than a header and a trailer",
        }),
    }
}

/// Refuses a chunk size a descriptor may not name (the files' configuration).
pub(super) fn check_chunk_bytes(chunk_bytes: u32) -> Result<(), SnapshotFileError> {
    if (super::CHUNK_BYTES_MIN..=super::CHUNK_BYTES_MAX).contains(&chunk_bytes) {
        Ok(())
    } else {
        Err(SnapshotFileError::BadDescriptor {
            what: "the files' chunk size is outside 64 KiB..=4 MiB",
        })
    }
}

/// The fields a new snapshot's descriptor takes from its writer.
#[derive(Clone, Copy, Debug)]
pub(super) struct Origin {
    /// The raft group.
    pub group: u64,
    /// The replica whose state it is.
    pub creator: ReplicaId,
    /// The last index it covers.
    pub index: u64,
    /// That index's term.
    pub term: u64,
}

/// Cuts a stream into chunks, digests and writes them: the core of both
/// implementations' [`SnapshotWriter`](super::SnapshotWriter)s.
///
/// A chunk is cut only when bytes arrive beyond a full one, so the last chunk
/// is known at [`StreamWriter::finish`] and sealed with `last = true`.
pub(super) struct StreamWriter<S> {
    enc: Encoder<S>,
    origin: Origin,
    chunk_bytes: u32,
    pending: Vec<u8>,
    digester: SnapshotDigester,
    bytes_max: u64,
    /// The first error: every later write and the finish return it.
    failed: Option<SnapshotFileError>,
}

impl<S: Sink> StreamWriter<S> {
    /// Writes the header to `sink` and starts cutting chunks of `chunk_bytes`.
    pub fn start(
        sink: S,
        path: PathBuf,
        replica: ReplicaId,
        sealer: Option<&dyn ChunkSealer>,
        origin: Origin,
        chunk_bytes: u32,
    ) -> Result<Self, SnapshotFileError> {
        check_chunk_bytes(chunk_bytes)?;
        let seal = match sealer {
            None => None,
            Some(s) => Some(s.begin(origin.group, replica, origin.index, origin.term)?),
        };
        Ok(Self {
            enc: Encoder::start(sink, path, replica, seal)?,
            origin,
            chunk_bytes,
            pending: Vec::new(),
            digester: SnapshotDigester::new(),
            bytes_max: SNAPSHOT_BYTES_MAX,
            failed: None,
        })
    }

    /// The same writer with a smaller size limit (tests of the limit).
    #[cfg(test)]
    pub fn with_bytes_max(mut self, bytes_max: u64) -> Self {
        self.bytes_max = bytes_max;
        self
    }

    fn cut(&mut self, last: bool) -> Result<(), SnapshotFileError> {
        let seq = self.digester.chunks();
        self.digester.add(&self.pending);
        self.enc.record(seq, last, &self.pending)?;
        self.pending.clear();
        Ok(())
    }

    fn write_inner(&mut self, mut data: &[u8]) -> Result<(), SnapshotFileError> {
        let total = self.digester.total_bytes() + self.pending.len() as u64 + data.len() as u64;
        if total > self.bytes_max {
            return Err(SnapshotFileError::TooLarge {
                max: self.bytes_max,
            });
        }
        let chunk = self.chunk_bytes as usize;
        while !data.is_empty() {
            if self.pending.len() == chunk {
                self.cut(false)?;
            }
            if self.pending.capacity() < chunk {
                self.pending.reserve_exact(chunk - self.pending.len());
            }
            let n = (chunk - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        Ok(())
    }

    /// Takes the next piece of the stream ([`std::io::Write::write`]).
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(std::io::Error::other(e.clone()));
        }
        match self.write_inner(data) {
            Ok(()) => Ok(data.len()),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(std::io::Error::other(e))
            }
        }
    }

    /// Cuts the last chunk, writes the trailer and gives the sink back with
    /// the descriptor.
    pub fn finish(mut self) -> Result<(S, SnapshotDescriptor), SnapshotFileError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if !self.pending.is_empty() {
            self.cut(true)?;
        }
        let o = self.origin;
        let descriptor =
            self.digester
                .descriptor(o.group, o.creator, o.index, o.term, self.chunk_bytes)?;
        Ok((self.enc.end(&descriptor)?, descriptor))
    }
}

/// Takes a received snapshot's chunks in order, checks and digests them, and
/// writes them (unless `sink` is `None`: a snapshot already held here, whose
/// chunks are checked and dropped): the core of both implementations'
/// [`ChunkReceiver`](super::ChunkReceiver)s.
pub(super) struct ChunkIntake<S> {
    enc: Option<Encoder<S>>,
    descriptor: SnapshotDescriptor,
    digester: SnapshotDigester,
    failed: Option<SnapshotFileError>,
}

impl<S: Sink> ChunkIntake<S> {
    /// Starts receiving `descriptor` (already checked) into `sink`, sealed
    /// for `replica` when a sealer is given.
    pub fn start(
        sink: Option<S>,
        path: PathBuf,
        replica: ReplicaId,
        sealer: Option<&dyn ChunkSealer>,
        descriptor: &SnapshotDescriptor,
    ) -> Result<Self, SnapshotFileError> {
        let enc = match sink {
            None => None,
            Some(sink) => {
                let d = descriptor;
                let seal = match sealer {
                    None => None,
                    Some(s) => Some(s.begin(d.group, replica, d.index, d.term)?),
                };
                Some(Encoder::start(sink, path, replica, seal)?)
            }
        };
        Ok(Self {
            enc,
            descriptor: descriptor.clone(),
            digester: SnapshotDigester::new(),
            failed: None,
        })
    }

    /// Takes chunk `seq` (see [`ChunkReceiver::put`](super::ChunkReceiver::put)).
    pub fn put(&mut self, seq: u32, chunk: &[u8]) -> Result<(), SnapshotFileError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let d = &self.descriptor;
        let bad = |what| SnapshotFileError::BadChunk {
            id: d.id,
            seq,
            what,
        };
        let Some(len) = d.chunk_len(seq) else {
            return Err(bad("past the last chunk"));
        };
        if seq != self.digester.chunks() {
            return Err(bad("out of order"));
        }
        if chunk.len() != len {
            return Err(bad("its size is not the one the descriptor implies"));
        }
        let last = seq + 1 == d.chunks;
        self.digester.add(chunk);
        if let Some(enc) = self.enc.as_mut() {
            if let Err(e) = enc.record(seq, last, chunk) {
                self.failed = Some(e.clone());
                return Err(e);
            }
        }
        Ok(())
    }

    /// Checks that every chunk came and matched the digest, writes the
    /// trailer and gives the sink back (`None` if there was none).
    pub fn finish(self) -> Result<Option<S>, SnapshotFileError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let d = &self.descriptor;
        if self.digester.chunks() < d.chunks {
            return Err(SnapshotFileError::Incomplete {
                id: d.id,
                got: self.digester.chunks(),
                want: d.chunks,
            });
        }
        if !self.digester.matches(d) {
            return Err(SnapshotFileError::DigestMismatch { id: d.id });
        }
        self.enc.map(|enc| enc.end(d)).transpose()
    }
}

/// Reads a finished file's chunks in order, opening, bounding and digesting
/// each: the reader of both implementations.
pub(super) struct Decoder<R> {
    src: R,
    path: PathBuf,
    seal: Option<Box<dyn FileSeal>>,
    descriptor: SnapshotDescriptor,
    digester: SnapshotDigester,
    /// Set once the end was reached after the digest matched.
    done: bool,
    /// The first error: every later call returns it.
    failed: Option<SnapshotFileError>,
}

impl<R: Read> Decoder<R> {
    /// Reads the header of the file `src` (positioned at its start), which
    /// the caller found finished with `descriptor` in its trailer, as stored
    /// by `replica`.
    pub fn start(
        mut src: R,
        path: PathBuf,
        replica: ReplicaId,
        sealer: Option<&dyn ChunkSealer>,
        descriptor: &SnapshotDescriptor,
    ) -> Result<Self, SnapshotFileError> {
        let corrupt = |what| SnapshotFileError::Corrupt {
            path: path.clone(),
            what,
        };
        let mut fixed = [0u8; HEADER_FIXED_BYTES];
        read_exact(&mut src, &mut fixed, &path, "its header is cut short")?;
        let mut r = Reader::new(&fixed);
        r.magic(&FILE_MAGIC, "snapshot file magic")
            .map_err(|_| corrupt("it does not start as a snapshot file"))?;
        let (stored_by, header_len) = match (r.u64("replica"), r.u32("sealer header length")) {
            (Ok(replica), Ok(len)) => (replica, len as usize),
            _ => return Err(corrupt("its header is cut short")),
        };
        if stored_by != replica {
            return Err(corrupt("it was written for another replica"));
        }
        if header_len > SEAL_HEADER_BYTES_MAX {
            return Err(corrupt("its sealer header is longer than allowed"));
        }
        let mut header = vec![0u8; header_len];
        read_exact(
            &mut src,
            &mut header,
            &path,
            "its sealer header is cut short",
        )?;
        let d = descriptor;
        let seal = match sealer {
            None if header.is_empty() => None,
            None => return Err(corrupt("it is sealed but this store keeps plain files")),
            Some(_) if header.is_empty() => {
                return Err(corrupt("it is plain but this store keeps sealed files"))
            }
            Some(s) => Some(s.resume(&header, d.group, replica, d.index, d.term)?),
        };
        Ok(Self {
            src,
            path,
            seal,
            descriptor: d.clone(),
            digester: SnapshotDigester::new(),
            done: false,
            failed: None,
        })
    }

    fn next_inner(&mut self) -> Result<Option<(u32, Bytes)>, SnapshotFileError> {
        let d = &self.descriptor;
        let seq = self.digester.chunks();
        let Some(len) = d.chunk_len(seq) else {
            // Past the last chunk: the end only if the hash list matches.
            if self.digester.matches(d) {
                self.done = true;
                return Ok(None);
            }
            return Err(SnapshotFileError::DigestMismatch { id: d.id });
        };
        let corrupt = |what| SnapshotFileError::Corrupt {
            path: self.path.clone(),
            what,
        };
        let mut prefix = [0u8; 4];
        read_exact(
            &mut self.src,
            &mut prefix,
            &self.path,
            "a chunk is cut short",
        )?;
        let record_len = u32::from_be_bytes(prefix) as usize;
        let plausible = match self.seal {
            None => record_len == len,
            Some(_) => record_len <= len + SEAL_OVERHEAD_BYTES_MAX,
        };
        if !plausible {
            return Err(corrupt("a chunk's length does not fit its descriptor"));
        }
        let mut record = vec![0u8; record_len];
        read_exact(
            &mut self.src,
            &mut record,
            &self.path,
            "a chunk is cut short",
        )?;
        let last = seq + 1 == d.chunks;
        let plaintext = match self.seal.as_ref() {
            None => record,
            Some(seal) => seal.open(seq, last, &record)?,
        };
        if plaintext.len() != len {
            return Err(corrupt("a chunk's size does not match its descriptor"));
        }
        self.digester.add(&plaintext);
        Ok(Some((seq, Bytes::from(plaintext))))
    }
}

impl<R: Read + Send> SnapshotReader for Decoder<R> {
    fn descriptor(&self) -> &SnapshotDescriptor {
        &self.descriptor
    }

    fn next_chunk(&mut self) -> Result<Option<(u32, Bytes)>, SnapshotFileError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.done {
            return Ok(None);
        }
        self.next_inner()
            .inspect_err(|e| self.failed = Some(e.clone()))
    }
}

/// `read_exact`, a short file being [`SnapshotFileError::Corrupt`] (`what`).
fn read_exact(
    src: &mut impl Read,
    buf: &mut [u8],
    path: &Path,
    what: &'static str,
) -> Result<(), SnapshotFileError> {
    src.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            SnapshotFileError::Corrupt {
                path: path.to_owned(),
                what,
            }
        } else {
            SnapshotFileError::io(path, "read", e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::CHUNK_BYTES_MIN;

    fn origin() -> Origin {
        Origin {
            group: 1,
            creator: 2,
            index: 3,
            term: 4,
        }
    }

    #[test]
    fn a_writer_refuses_more_than_its_limit_and_stays_failed() {
        let mut w = StreamWriter::start(Vec::new(), "t".into(), 2, None, origin(), CHUNK_BYTES_MIN)
            .unwrap()
            .with_bytes_max(10);
        assert_eq!(w.write(&[1; 10]).unwrap(), 10);
        let e = w.write(&[1]).unwrap_err();
        assert!(matches!(
            e.get_ref()
                .and_then(|e| e.downcast_ref::<SnapshotFileError>()),
            Some(SnapshotFileError::TooLarge { max: 10 })
        ));
        assert!(w.write(&[]).is_err(), "a failed writer stays failed");
        assert!(matches!(
            w.finish(),
            Err(SnapshotFileError::TooLarge { max: 10 })
        ));
    }

    #[test]
    fn a_file_has_the_documented_layout() {
        let mut w = StreamWriter::start(Vec::new(), "t".into(), 9, None, origin(), CHUNK_BYTES_MIN)
            .unwrap();
        w.write(b"abc").unwrap();
        let (bytes, d) = w.finish().unwrap();
        let mut expect = FILE_MAGIC.to_vec();
        expect.extend_from_slice(&9u64.to_be_bytes());
        expect.extend_from_slice(&0u32.to_be_bytes());
        expect.extend_from_slice(&3u32.to_be_bytes());
        expect.extend_from_slice(b"abc");
        expect.extend_from_slice(&d.to_bytes().unwrap());
        expect.extend_from_slice(&END_MAGIC);
        assert_eq!(bytes, expect);
        assert_eq!(trailer_of(Path::new("t"), &bytes).unwrap(), d);
        assert!(trailer_of(Path::new("t"), &bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn a_files_chunk_size_must_be_one_a_descriptor_may_name() {
        for bad in [0, CHUNK_BYTES_MIN - 1, crate::snapshot::CHUNK_BYTES_MAX + 1] {
            assert!(
                StreamWriter::start(Vec::new(), "t".into(), 1, None, origin(), bad).is_err(),
                "{bad}"
            );
        }
    }
}
