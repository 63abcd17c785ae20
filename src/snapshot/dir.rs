//! [`DirFiles`]: snapshot files in a directory, one file per snapshot, for
//! [`SledLog`](crate::SledLog). The node will keep them in `<sled dir>/snap`
//! (wired in step 4 of `docs/proposals/streamed-snapshots.md`).
//!
//! A finished snapshot is `{index:020}-{term:020}-{id hex}.snap`, in the layout
//! of [`layout`](super::layout). A writer or receiver writes a `<unique>.tmp`
//! (a writer's id is known only at its finish: it is derived from the
//! digest), calls `fdatasync` every [`SYNC_BYTES`] so dirty pages do not pile
//! up behind the log's own fsync, and at its finish writes the trailer, fsyncs
//! the file, renames it to its final name and fsyncs the directory: a file
//! with a final name is complete and durable. A crash leaves at most a `.tmp`,
//! deleted when the directory is opened again; dropping an unfinished writer
//! or receiver deletes its `.tmp` at once.
//!
//! Readers keep their open file, so [`SnapshotFiles::retain`] unlinking it
//! does not disturb them. One [`DirFiles`] per directory: a second one would
//! delete the first's `.tmp` files when opened.
//!
//! A receive of a snapshot already held checks its chunks and digest as usual
//! but writes nothing: its finish leaves the held file as it is (should
//! `retain` delete that file meanwhile, nothing is left: receive it again).
//! Two receives
//! of the same id running at once each write their own `.tmp`; the later
//! finish wins (renamed over the earlier, which readers already open keep).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::layout::{
    self, ChunkIntake, Decoder, Origin, Sink, StreamWriter, HEADER_FIXED_BYTES, TRAILER_BYTES,
};
use super::{
    ChunkReceiver, ChunkSealer, SnapshotDescriptor, SnapshotFileError, SnapshotFiles, SnapshotId,
    SnapshotReader, SnapshotWriter,
};
use crate::ReplicaId;

/// A writer or receiver calls `fdatasync` after this many bytes.
pub const SYNC_BYTES: u64 = 16 << 20;

/// The buffer a writer collects small writes in.
/// What a chunk's record adds on disk at most: its length prefix and, sealed,
/// its tag (with room to spare).
const CHUNK_FRAMING_BYTES: u64 = 64;

/// Free space a received snapshot must leave on its disk, for the log and
/// the files' own header and trailer.
pub const FREE_SPACE_MARGIN_BYTES: u64 = 64 << 20;

const WRITE_BUFFER_BYTES: usize = 256 << 10;

/// The buffer a reader reads records through.
const READ_BUFFER_BYTES: usize = 64 << 10;

/// Whether `retain` keeps the finished file of this index and id.
type KeepFile<'a> = &'a dyn Fn(u64, &SnapshotId) -> bool;

/// The `.tmp` files of live writers and receivers, which `retain` keeps.
type LiveTmp = Arc<Mutex<BTreeSet<PathBuf>>>;

/// Snapshot files in a directory (see the module documentation).
pub struct DirFiles {
    dir: PathBuf,
    chunk_bytes: u32,
    sealer: Option<Arc<dyn ChunkSealer>>,
    replica: ReplicaId,
    live: LiveTmp,
    next_tmp: AtomicU64,
    keep_free: u64,
    /// Bytes promised to receives in progress, not yet on the disk: a
    /// second transfer sees the first one's file as taken.
    reserved: Arc<Mutex<u64>>,
    /// A test's free space, in place of the disk's (which other processes
    /// change under a test).
    #[cfg(test)]
    pub(super) free_for_test: Option<u64>,
}

/// Bytes of free space promised to one receive, given back when it ends
/// (finished, its file then on the disk, or dropped, its file deleted).
struct Reservation {
    bytes: u64,
    reserved: Arc<Mutex<u64>>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut reserved = self.reserved.lock();
        *reserved = reserved.saturating_sub(self.bytes);
    }
}

impl DirFiles {
    /// Opens (creating it if needed) the directory of `replica`'s snapshot
    /// files, cutting new snapshots into chunks of `chunk_bytes` (refused
    /// outside [`CHUNK_BYTES_MIN`](super::CHUNK_BYTES_MIN)`..=`[`CHUNK_BYTES_MAX`](super::CHUNK_BYTES_MAX)),
    /// sealed by `sealer` if one is given. Deletes every `.tmp` left by a
    /// crash.
    pub fn open(
        dir: impl AsRef<Path>,
        chunk_bytes: u32,
        sealer: Option<Arc<dyn ChunkSealer>>,
        replica: ReplicaId,
    ) -> Result<Self, SnapshotFileError> {
        layout::check_chunk_bytes(chunk_bytes)?;
        let dir = dir.as_ref().to_owned();
        fs::create_dir_all(&dir).map_err(|e| SnapshotFileError::io(&dir, "create directory", e))?;
        let files = Self {
            dir,
            chunk_bytes,
            sealer,
            replica,
            live: LiveTmp::default(),
            next_tmp: AtomicU64::new(0),
            keep_free: FREE_SPACE_MARGIN_BYTES,
            reserved: Arc::default(),
            #[cfg(test)]
            free_for_test: None,
        };
        files.sweep(None)?;
        Ok(files)
    }

    /// Free space every received snapshot must leave on the disk (default
    /// 64 MiB, `FREE_SPACE_MARGIN_BYTES`): a transfer that would leave less is
    /// refused before a byte is written ([`SnapshotFileError::NoSpace`]).
    pub fn keep_free(mut self, bytes: u64) -> Self {
        self.keep_free = bytes;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The final path of `descriptor`'s file.
    fn path(&self, descriptor: &SnapshotDescriptor) -> PathBuf {
        self.dir.join(file_name(descriptor))
    }

    /// Registers and creates a new `.tmp` file.
    /// Refuses a snapshot the disk cannot hold: its bytes, each chunk's
    /// framing and seal, and [`DirFiles::keep_free`] left for the log, over
    /// what the receives in progress were promised. Checked when a transfer
    /// starts, and the space is then promised to it until it ends: a disk
    /// that fills from elsewhere during it still fails the write (the
    /// partial file is deleted).
    fn reserve_space(
        &self,
        descriptor: &SnapshotDescriptor,
    ) -> Result<Reservation, SnapshotFileError> {
        let file = descriptor
            .total_bytes
            .saturating_add(u64::from(descriptor.chunks).saturating_mul(CHUNK_FRAMING_BYTES));
        let mut reserved = self.reserved.lock();
        #[cfg(test)]
        let disk = match self.free_for_test {
            Some(free) => Ok(free),
            None => fs2::available_space(&self.dir),
        };
        #[cfg(not(test))]
        let disk = fs2::available_space(&self.dir);
        let available = disk
            .map_err(|e| SnapshotFileError::io(&self.dir, "statvfs", e))?
            .saturating_sub(*reserved);
        let needed = file.saturating_add(self.keep_free);
        if needed > available {
            return Err(SnapshotFileError::NoSpace { needed, available });
        }
        *reserved = reserved.saturating_add(file);
        Ok(Reservation {
            bytes: file,
            reserved: Arc::clone(&self.reserved),
        })
    }

    fn new_tmp(&self) -> Result<(TmpFile, DirSink), SnapshotFileError> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        // A random part: a second `DirFiles` on the directory (a replica
        // restarted in the same process while its old build still writes)
        // never takes another's name (`create_new` refuses it anyway).
        // The OS's randomness, for a file name only (nothing is keyed by it).
        let nonce = rand::RngCore::next_u64(&mut rand::rngs::OsRng);
        let path = self
            .dir
            .join(format!("{}-{n:08}-{nonce:016x}.tmp", std::process::id()));
        // Registered before it exists, so a concurrent retain never takes it.
        self.live.lock().insert(path.clone());
        let tmp = TmpFile {
            path: path.clone(),
            live: self.live.clone(),
            keep: false,
        };
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| SnapshotFileError::io(&path, "create", e))?;
        let sink = DirSink {
            file: BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
            path,
            unsynced: 0,
        };
        Ok((tmp, sink))
    }

    /// The open file of `descriptor`, checked against its trailer and
    /// positioned at its start, and its path.
    fn file(&self, descriptor: &SnapshotDescriptor) -> Result<(File, PathBuf), SnapshotFileError> {
        descriptor.check()?;
        let path = self.path(descriptor);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotFileError::NotFound { id: descriptor.id })
            }
            Err(e) => return Err(SnapshotFileError::io(&path, "open", e)),
        };
        let len = file
            .metadata()
            .map_err(|e| SnapshotFileError::io(&path, "stat", e))?
            .len();
        if len < (HEADER_FIXED_BYTES + TRAILER_BYTES) as u64 {
            return Err(SnapshotFileError::Corrupt {
                path,
                what: "it is shorter than a header and a trailer",
            });
        }
        let mut tail = [0u8; TRAILER_BYTES];
        file.seek(SeekFrom::Start(len - TRAILER_BYTES as u64))
            .and_then(|_| file.read_exact(&mut tail))
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .map_err(|e| SnapshotFileError::io(&path, "read", e))?;
        if layout::decode_trailer(&path, &tail)? != *descriptor {
            return Err(SnapshotFileError::Corrupt {
                path,
                what: "its trailer names another snapshot",
            });
        }
        Ok((file, path))
    }

    /// Deletes every `.tmp` not live and, when `keep` is given, every
    /// finished file for whose index and id it is false. Files whose names
    /// are not a snapshot's are left alone.
    ///
    /// Freeing a large file's blocks takes long (about 80 ms for 391 MiB
    /// here), and this runs on the replica's thread: a file is renamed to a
    /// `.del` name at once (metadata only) and unlinked, with the directory's
    /// fsync, on a thread of its own. A `.del` left by a crash is deleted by
    /// the next sweep; one that reappears as its old name after a crash is
    /// simply deleted again.
    fn sweep(&self, keep: Option<KeepFile<'_>>) -> Result<(), SnapshotFileError> {
        let io = |op, e| SnapshotFileError::io(&self.dir, op, e);
        let mut doomed = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| io("list", e))? {
            let path = entry.map_err(|e| io("list", e))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(".del") {
                doomed.push(path);
                continue;
            }
            let delete = if name.ends_with(".tmp") {
                !self.live.lock().contains(&path)
            } else if let (Some(keep), Some((index, id))) = (keep, parse_name(name)) {
                !keep(index, &id)
            } else {
                false
            };
            if delete {
                let to = path.with_extension("del");
                match fs::rename(&path, &to) {
                    Ok(()) => doomed.push(to),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(SnapshotFileError::io(&path, "delete", e)),
                }
            }
        }
        if doomed.is_empty() {
            return Ok(());
        }
        let dir = self.dir.clone();
        let unlink = move || {
            for path in doomed {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot delete an old snapshot file")
                    }
                }
            }
            if let Err(e) = sync_dir(&dir) {
                tracing::warn!(error = %e, "cannot sync the snapshot directory after deletions");
            }
        };
        if std::thread::Builder::new()
            .name("vf-snap-delete".into())
            .spawn(unlink)
            .is_err()
        {
            // No thread: the deletion waits for the next sweep.
            tracing::warn!("cannot start a thread to delete old snapshot files");
        }
        Ok(())
    }
}

impl SnapshotFiles for DirFiles {
    fn create(
        &self,
        group: u64,
        creator: ReplicaId,
        index: u64,
        term: u64,
    ) -> Result<Box<dyn SnapshotWriter>, SnapshotFileError> {
        let (tmp, sink) = self.new_tmp()?;
        let origin = Origin {
            group,
            creator,
            index,
            term,
        };
        let writer = StreamWriter::start(
            sink,
            tmp.path.clone(),
            self.replica,
            self.sealer.as_deref(),
            origin,
            self.chunk_bytes,
        )?;
        Ok(Box::new(DirWriter {
            writer,
            tmp,
            dir: self.dir.clone(),
        }))
    }

    fn receive(
        &self,
        descriptor: &SnapshotDescriptor,
    ) -> Result<Box<dyn ChunkReceiver>, SnapshotFileError> {
        descriptor.check()?;
        let final_path = self.path(descriptor);
        let (tmp, sink, reservation) = if self.is_complete(descriptor) {
            (None, None, None)
        } else {
            let reservation = self.reserve_space(descriptor)?;
            let (tmp, sink) = self.new_tmp()?;
            (Some(tmp), Some(sink), Some(reservation))
        };
        let intake = ChunkIntake::start(
            sink,
            final_path.clone(),
            self.replica,
            self.sealer.as_deref(),
            descriptor,
        )?;
        Ok(Box::new(DirReceiver {
            intake,
            tmp,
            final_path,
            dir: self.dir.clone(),
            _reservation: reservation,
        }))
    }

    fn open(
        &self,
        descriptor: &SnapshotDescriptor,
    ) -> Result<Box<dyn SnapshotReader>, SnapshotFileError> {
        let (file, path) = self.file(descriptor)?;
        let decoder = Decoder::start(
            BufReader::with_capacity(READ_BUFFER_BYTES, file),
            path,
            self.replica,
            self.sealer.as_deref(),
            descriptor,
        )?;
        Ok(Box::new(decoder))
    }

    fn is_complete(&self, descriptor: &SnapshotDescriptor) -> bool {
        self.file(descriptor).is_ok()
    }

    /// Also deletes every abandoned `.tmp`; live writers' and receivers'
    /// stay.
    fn retain_below(&self, index: u64) -> Result<(), SnapshotFileError> {
        self.sweep(Some(&|at, _| at >= index))
    }

    fn retain(&self, keep: &[SnapshotId]) -> Result<(), SnapshotFileError> {
        self.sweep(Some(&|_, id| keep.contains(id)))
    }
}

/// The lowercase hex of an id, as in file names.
pub(super) fn id_hex(id: &SnapshotId) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// `{index:020}-{term:020}-{id hex}.snap`.
pub(super) fn file_name(d: &SnapshotDescriptor) -> String {
    format!("{:020}-{:020}-{}.snap", d.index, d.term, id_hex(&d.id))
}

/// The index and id in a finished file's name, or `None` if it is not one.
fn parse_name(name: &str) -> Option<(u64, SnapshotId)> {
    let stem = name.strip_suffix(".snap")?;
    let mut parts = stem.split('-');
    let (index, _term, hex) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || index.len() != 20 || hex.len() != 32 {
        return None;
    }
    let index = index.parse().ok()?;
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((index, SnapshotId(id)))
}

/// Makes renames and deletions in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), SnapshotFileError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SnapshotFileError::io(dir, "fsync directory", e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// A `.tmp` file of a live writer or receiver: deleted when dropped unless
/// renamed, and kept by `retain` while it lives.
struct TmpFile {
    path: PathBuf,
    live: LiveTmp,
    /// Set once renamed to its final name.
    keep: bool,
}

impl TmpFile {
    /// Makes the finished `.tmp` (its sink already synced) durable under
    /// `final_path`.
    fn commit(mut self, final_path: &Path, dir: &Path) -> Result<(), SnapshotFileError> {
        fs::rename(&self.path, final_path)
            .map_err(|e| SnapshotFileError::io(&self.path, "rename", e))?;
        self.keep = true;
        sync_dir(dir)
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if !self.keep {
            // Best effort: a `.tmp` left behind is deleted at the next open
            // or retain.
            let _ = fs::remove_file(&self.path);
        }
        self.live.lock().remove(&self.path);
    }
}

/// A `.tmp` file being written, synced every [`SYNC_BYTES`].
struct DirSink {
    file: BufWriter<File>,
    path: PathBuf,
    unsynced: u64,
}

impl Sink for DirSink {
    fn put(&mut self, bytes: &[u8]) -> Result<(), SnapshotFileError> {
        self.file
            .write_all(bytes)
            .map_err(|e| SnapshotFileError::io(&self.path, "write", e))?;
        self.unsynced += bytes.len() as u64;
        if self.unsynced >= SYNC_BYTES {
            self.file
                .flush()
                .map_err(|e| SnapshotFileError::io(&self.path, "write", e))?;
            self.file
                .get_ref()
                .sync_data()
                .map_err(|e| SnapshotFileError::io(&self.path, "fdatasync", e))?;
            self.unsynced = 0;
        }
        Ok(())
    }
}

impl DirSink {
    /// Flushes and fsyncs the whole file.
    fn sync(self) -> Result<(), SnapshotFileError> {
        let path = self.path;
        let file = self
            .file
            .into_inner()
            .map_err(|e| SnapshotFileError::io(&path, "write", e.into_error()))?;
        file.sync_all()
            .map_err(|e| SnapshotFileError::io(&path, "fsync", e))
    }
}

/// A snapshot being written to a `.tmp` file.
struct DirWriter {
    writer: StreamWriter<DirSink>,
    tmp: TmpFile,
    dir: PathBuf,
}

impl Write for DirWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.write(buf)
    }

    /// Does nothing: a chunk is cut when the next bytes come, and the file is
    /// made durable at finish.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SnapshotWriter for DirWriter {
    fn finish(self: Box<Self>) -> Result<SnapshotDescriptor, SnapshotFileError> {
        // On an error `tmp` is dropped: the partial file is deleted.
        let DirWriter { writer, tmp, dir } = *self;
        let (sink, descriptor) = writer.finish()?;
        sink.sync()?;
        tmp.commit(&dir.join(file_name(&descriptor)), &dir)?;
        Ok(descriptor)
    }
}

/// A snapshot being received into a `.tmp` file (none when it is already
/// held here).
struct DirReceiver {
    intake: ChunkIntake<DirSink>,
    tmp: Option<TmpFile>,
    final_path: PathBuf,
    dir: PathBuf,
    /// Held until the receive ends (after the commit, its file is on disk).
    _reservation: Option<Reservation>,
}

impl ChunkReceiver for DirReceiver {
    fn put(&mut self, seq: u32, chunk: &[u8]) -> Result<(), SnapshotFileError> {
        self.intake.put(seq, chunk)
    }

    fn finish(self: Box<Self>) -> Result<(), SnapshotFileError> {
        // On an error `tmp` is dropped: the partial file is deleted.
        let DirReceiver {
            intake,
            tmp,
            final_path,
            dir,
            _reservation,
        } = *self;
        if let (Some(sink), Some(tmp)) = (intake.finish()?, tmp) {
            sink.sync()?;
            tmp.commit(&final_path, &dir)?;
        }
        Ok(())
    }
}
