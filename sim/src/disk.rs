//! The simulated disk: a [`LogStore`] whose durable state lives with the simulator,
//! so a replica can crash (be dropped) and restart from exactly what was durable.
//!
//! Writes go to the live view at once and to a pending list; `sync` moves the
//! pending list to the durable state as one atomic batch, as `SledLog` does. On a
//! crash the pending batch ends up whole (it reached the disk before `sync`
//! returned), missing, torn or corrupted; the engine's recovery (checksummed,
//! committed batches, as sled's) discards a torn or corrupted batch whole, so
//! after recovery the durable state is always a synced state or that plus the
//! whole pending batch. The simulator can also flip a bit in durable data, roll
//! the durable state back to an older image, and switch on deliberate bugs that
//! the checkers must catch.
//!
//! A disk may also keep snapshot files ([`SnapshotFilesHost`]): one
//! [`MemFiles`] that belongs to the durable part of the disk, so it survives
//! crashes and restarts. A file is visible only once finished (the engine's
//! `DirFiles` fsyncs it before its rename), so a crash never leaves part of one.
//! Under a sealed store the simulator can flip a bit in a chunk of the file
//! the durable snapshot names ([`Disk::damage_snapshot_file`]): the files'
//! sealer is wrapped so that every later read of that chunk sees the flipped
//! bit, as a read of a damaged disk block would.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use parking_lot::Mutex;
use raft::prelude::{Entry, HardState, Snapshot};
use raft::{GetEntriesContext, Storage};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use vaultfleet::snapshot::{
    ChunkSealer, FileSeal, MemFiles, SnapshotFileError, SnapshotFiles, CHUNK_BYTES_MIN,
};
use vaultfleet::storage::{AtomicSync, SnapshotFilesHost, WrapperRecord};
use vaultfleet::{LogStore, MemLog, StorageError};

/// A deliberate defect of the disk, switched on only by the tests that show a
/// checker catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DiskBug {
    /// A correct disk.
    #[default]
    None,
    /// `sync` returns without making anything durable (acknowledge before persist).
    LieOnSync,
    /// A restart forgets the vote of the hard state.
    ForgetVote,
    /// A crash silently corrupts the data of a stored entry (no checksum).
    SilentCorruption,
}

/// What became of the writes pending at a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashOutcome {
    /// Nothing was pending.
    Clean,
    /// The pending batch reached the disk whole.
    Whole,
    /// The pending batch never reached the disk.
    Missing,
    /// Part of the pending batch reached the disk; recovery discarded it.
    Torn,
    /// The pending batch reached the disk with a corrupt byte; recovery discarded it.
    Corrupted,
}

#[derive(Clone, Debug)]
enum Write {
    Append(Vec<Entry>),
    HardState(HardState),
    ApplySnapshot(Snapshot),
    SaveSnapshot(Snapshot),
    Compact(u64),
    Wrapper(Vec<u8>),
}

fn apply(m: &mut MemLog, w: &Write) -> Result<(), StorageError> {
    match w {
        Write::Append(e) => m.append(e),
        Write::HardState(h) => m.set_hard_state(h),
        Write::ApplySnapshot(s) => m.apply_snapshot(s),
        Write::SaveSnapshot(s) => m.save_snapshot(s),
        Write::Compact(i) => m.compact(*i),
        Write::Wrapper(r) => m.set_wrapper_record(r),
    }
}

/// The failure an armed crash makes the simulated disk's `sync` return (as the
/// store's backend error), so the simulator can tell it from a real failure.
#[derive(Debug)]
pub struct SimulatedCrash {
    /// Where the crash cut the write.
    pub at: &'static str,
}

impl std::fmt::Display for SimulatedCrash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "simulated crash {}", self.at)
    }
}

impl std::error::Error for SimulatedCrash {}

/// Where an armed crash cuts the next `sync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// Before anything reaches the disk: the pending writes' fate is drawn at the crash.
    BeforeSync,
    /// Right after the writes became durable, before `sync` returns (so, under a
    /// sealed store, before the HSM counter advances).
    AfterSync,
}

/// The part of a disk that outlives the replica using it.
#[derive(Default)]
pub struct DiskState {
    durable: MemLog,
    pending: Vec<Write>,
    bug: DiskBug,
    armed: Option<CrashPoint>,
    /// An armed crash cut a `sync` before its writes reached the disk.
    cut_mid_write: bool,
    /// The snapshot files, once a replica opened them: durable, shared by
    /// every store opened on this disk.
    files: Option<Arc<MemFiles>>,
    /// The files were opened sealed.
    files_sealed: bool,
    /// Which sealed files were written here, and which are damaged.
    file_damage: Arc<Mutex<FileDamage>>,
}

/// A bit flipped in one stored chunk of a sealed snapshot file.
#[derive(Clone, Copy, Debug)]
struct ChunkDamage {
    seq: u32,
    /// The byte, modulo the sealed chunk's length.
    at: usize,
    mask: u8,
}

/// The sealed snapshot files of a disk, by (index, term): those ever begun
/// here, and those damaged since.
#[derive(Debug, Default)]
struct FileDamage {
    written: BTreeSet<(u64, u64)>,
    damaged: BTreeMap<(u64, u64), ChunkDamage>,
}

/// The files' sealer, wrapped to read damaged chunks as damaged.
struct DamageSealer {
    inner: Arc<dyn ChunkSealer>,
    damage: Arc<Mutex<FileDamage>>,
}

impl ChunkSealer for DamageSealer {
    fn begin(
        &self,
        group: u64,
        replica: u64,
        index: u64,
        term: u64,
    ) -> Result<Box<dyn FileSeal>, SnapshotFileError> {
        self.damage.lock().written.insert((index, term));
        self.inner.begin(group, replica, index, term)
    }

    fn resume(
        &self,
        header: &[u8],
        group: u64,
        replica: u64,
        index: u64,
        term: u64,
    ) -> Result<Box<dyn FileSeal>, SnapshotFileError> {
        let seal = self.inner.resume(header, group, replica, index, term)?;
        Ok(match self.damage.lock().damaged.get(&(index, term)) {
            Some(&damage) => Box::new(DamagedSeal {
                inner: seal,
                damage,
            }),
            None => seal,
        })
    }
}

/// A damaged file's sealing: the damaged chunk is opened with its bit flipped.
struct DamagedSeal {
    inner: Box<dyn FileSeal>,
    damage: ChunkDamage,
}

impl FileSeal for DamagedSeal {
    fn header(&self) -> &[u8] {
        self.inner.header()
    }

    fn seal(
        &mut self,
        seq: u32,
        last: bool,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SnapshotFileError> {
        self.inner.seal(seq, last, plaintext)
    }

    fn open(&self, seq: u32, last: bool, sealed: &[u8]) -> Result<Vec<u8>, SnapshotFileError> {
        if seq != self.damage.seq || sealed.is_empty() {
            return self.inner.open(seq, last, sealed);
        }
        let mut flipped = sealed.to_vec();
        let at = self.damage.at % flipped.len();
        flipped[at] ^= self.damage.mask;
        self.inner.open(seq, last, &flipped)
    }
}

impl std::fmt::Debug for DiskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskState")
            .field("durable", &self.durable)
            .field("pending", &self.pending.len())
            .field("bug", &self.bug)
            .field("armed", &self.armed)
            .field("cut_mid_write", &self.cut_mid_write)
            .field("files", &self.files.is_some())
            .finish()
    }
}

/// The simulator's handle on one host's disk.
#[derive(Clone, Debug, Default)]
pub struct Disk(Arc<Mutex<DiskState>>);

impl Disk {
    /// An empty disk with `bug` switched on (normally [`DiskBug::None`]).
    pub fn new(bug: DiskBug) -> Self {
        Self(Arc::new(Mutex::new(DiskState {
            bug,
            ..DiskState::default()
        })))
    }

    /// Opens the store a (re)starting replica uses: the durable state.
    pub fn open(&self) -> SimDisk {
        let mut s = self.0.lock();
        s.pending.clear();
        SimDisk {
            live: s.durable.clone(),
            disk: self.clone(),
            files: None,
        }
    }

    /// Makes the next `sync` fail at `point`, as a crash in the middle of a write
    /// would; the simulator then crashes the host.
    pub fn arm(&self, point: CrashPoint) {
        self.0.lock().armed = Some(point);
    }

    /// Takes back an armed crash (faults heal).
    pub fn disarm(&self) {
        self.0.lock().armed = None;
    }

    /// The host crashed: decides what became of the pending writes.
    pub fn crash(&self, rng: &mut ChaCha8Rng) -> CrashOutcome {
        let mut s = self.0.lock();
        s.armed = None;
        let mid_write = std::mem::take(&mut s.cut_mid_write);
        let pending = std::mem::take(&mut s.pending);
        let outcome = if pending.is_empty() {
            CrashOutcome::Clean
        } else if !mid_write {
            // Writes never handed to `sync` were only staged: lost whole, as
            // SledLog's staged batch is.
            CrashOutcome::Missing
        } else {
            match rng.gen_range(0..4) {
                0 => CrashOutcome::Whole,
                1 => CrashOutcome::Missing,
                2 => CrashOutcome::Torn,
                _ => CrashOutcome::Corrupted,
            }
        };
        if outcome == CrashOutcome::Whole && s.bug != DiskBug::LieOnSync {
            let mut next = s.durable.clone();
            if pending.iter().all(|w| apply(&mut next, w).is_ok()) {
                s.durable = next;
            }
        }
        if s.bug == DiskBug::SilentCorruption {
            // The last byte of a stored entry: still decodable, another command.
            let d = &mut s.durable;
            let (first, last) = (d.first(), d.last());
            let with_data: Vec<u64> = (first..=last)
                .filter(|i| d.entry(*i).is_some_and(|e| e.data.len() > 1))
                .collect();
            if !with_data.is_empty() {
                let index = with_data[rng.gen_range(0..with_data.len())];
                if let Ok(mut tail) =
                    d.entries(index, last + 1, None, GetEntriesContext::empty(false))
                {
                    let mut data = tail[0].data.to_vec();
                    if let Some(b) = data.last_mut() {
                        *b ^= 1;
                    }
                    tail[0].data = data.into();
                    let _ = d.append(&tail);
                }
            }
            return outcome;
        }
        if s.bug == DiskBug::ForgetVote {
            let mut hs = s.durable.hard_state().clone();
            hs.vote = 0;
            let _ = s.durable.set_hard_state(&hs);
        }
        outcome
    }

    /// A copy of the durable state (an image a hostile host could put back).
    pub fn image(&self) -> MemLog {
        self.0.lock().durable.clone()
    }

    /// Puts an old image back (the host rolls the disk back).
    pub fn restore(&self, image: MemLog) {
        let mut s = self.0.lock();
        s.durable = image;
        s.pending.clear();
    }

    /// Flips a bit in the first chunk of the sealed snapshot file the durable
    /// snapshot names, if the disk holds one; returns what was flipped. The
    /// replica finds it when it restores from the file at its next start.
    pub fn damage_snapshot_file(&self, rng: &mut ChaCha8Rng) -> Option<String> {
        let s = self.0.lock();
        let meta = s.durable.latest_snapshot().get_metadata();
        let key = (meta.index, meta.term);
        let mut damage = s.file_damage.lock();
        if !s.files_sealed || key.0 == 0 || !damage.written.contains(&key) {
            return None;
        }
        if damage.damaged.contains_key(&key) {
            return None;
        }
        let at = rng.gen_range(0..1 << 16);
        let mask = 1 << rng.gen_range(0..8u32);
        damage.damaged.insert(key, ChunkDamage { seq: 0, at, mask });
        Some(format!("snapshot file at {} (its first chunk)", key.0))
    }

    /// Flips one bit of one durable record with content (an entry's data, the
    /// snapshot's data or the wrapper record); returns what was flipped.
    pub fn flip_bit(&self, rng: &mut ChaCha8Rng) -> Option<String> {
        let mut s = self.0.lock();
        let d = &mut s.durable;
        let first = d.first();
        let last = d.last();
        let mut candidates: Vec<u64> = (first..=last)
            .filter(|i| d.entry(*i).is_some_and(|e| !e.data.is_empty()))
            .collect();
        let has_wrapper = !d.wrapper_record().is_empty();
        let has_snapshot = !d.latest_snapshot().data.is_empty();
        if has_wrapper {
            candidates.push(0);
        }
        if has_snapshot {
            candidates.push(u64::MAX);
        }
        if candidates.is_empty() {
            return None;
        }
        let pick = candidates[rng.gen_range(0..candidates.len())];
        let bit = rng.gen_range(0..8u32);
        match pick {
            0 => {
                let mut w = d.wrapper_record().to_vec();
                let at = rng.gen_range(0..w.len());
                w[at] ^= 1 << bit;
                let _ = d.set_wrapper_record(&w);
                Some(format!("wrapper record byte {at}"))
            }
            u64::MAX => {
                let mut snap = d.latest_snapshot().clone();
                let mut data = snap.data.to_vec();
                let at = rng.gen_range(0..data.len());
                data[at] ^= 1 << bit;
                snap.data = data.into();
                let index = snap.get_metadata().index;
                let _ = d.save_snapshot(&snap);
                Some(format!("snapshot at {index} byte {at}"))
            }
            index => {
                let mut tail = d
                    .entries(index, last + 1, None, GetEntriesContext::empty(false))
                    .ok()?;
                let mut data = tail[0].data.to_vec();
                let at = rng.gen_range(0..data.len());
                data[at] ^= 1 << bit;
                tail[0].data = data.into();
                let _ = d.append(&tail);
                Some(format!("entry {index} byte {at}"))
            }
        }
    }
}

/// The [`LogStore`] a simulated replica writes to.
pub struct SimDisk {
    live: MemLog,
    disk: Disk,
    /// The disk's snapshot files, once this store opened them.
    files: Option<Arc<dyn SnapshotFiles>>,
}

impl SimDisk {
    fn record(&self, w: Write) {
        self.disk.0.lock().pending.push(w);
    }
}

impl Storage for SimDisk {
    vaultfleet::storage_reads_from!(live);
}

impl LogStore for SimDisk {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.live.append(entries)?;
        self.record(Write::Append(entries.to_vec()));
        Ok(())
    }
    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
        self.live.set_hard_state(hard_state)?;
        self.record(Write::HardState(hard_state.clone()));
        Ok(())
    }
    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.live.apply_snapshot(snapshot)?;
        self.record(Write::ApplySnapshot(snapshot.clone()));
        Ok(())
    }
    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.live.save_snapshot(snapshot)?;
        self.record(Write::SaveSnapshot(snapshot.clone()));
        Ok(())
    }
    fn compact(&mut self, compact_index: u64) -> Result<(), StorageError> {
        self.live.compact(compact_index)?;
        self.record(Write::Compact(compact_index));
        Ok(())
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        let mut s = self.disk.0.lock();
        let crash = |at: &'static str| StorageError::backend(SimulatedCrash { at });
        if s.armed == Some(CrashPoint::BeforeSync) && !s.pending.is_empty() {
            s.cut_mid_write = true;
            return Err(crash("before the write reached the disk"));
        }
        if s.bug == DiskBug::LieOnSync || s.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut s.pending);
        for w in &pending {
            apply(&mut s.durable, w).map_err(StorageError::backend)?;
        }
        if s.armed == Some(CrashPoint::AfterSync) {
            return Err(crash("after the write became durable"));
        }
        Ok(())
    }
    fn latest_snapshot(&self) -> &Snapshot {
        self.live.latest_snapshot()
    }
    fn hard_state(&self) -> &HardState {
        self.live.hard_state()
    }
    fn snapshot_files(&self) -> Option<Arc<dyn SnapshotFiles>> {
        self.files.clone()
    }
}

impl SnapshotFilesHost for SimDisk {
    /// Opens the disk's snapshot files (chunks of [`CHUNK_BYTES_MIN`], so
    /// a state of a few hundred KiB already makes several), creating them on
    /// the first open; a restart finds the files already there, still sealed
    /// by the sealer they were first opened with (the host's HSM: the same
    /// device across restarts).
    fn open_snapshot_files(
        &mut self,
        replica: u64,
        sealer: Option<Arc<dyn ChunkSealer>>,
    ) -> Result<(), StorageError> {
        let mut s = self.disk.0.lock();
        let files = match &s.files {
            Some(files) => files.clone(),
            None => {
                s.files_sealed = sealer.is_some();
                let damage = s.file_damage.clone();
                let sealer = sealer
                    .map(|inner| Arc::new(DamageSealer { inner, damage }) as Arc<dyn ChunkSealer>);
                let files = Arc::new(MemFiles::new(CHUNK_BYTES_MIN, sealer, replica));
                s.files = Some(files.clone());
                files
            }
        };
        self.files = Some(files);
        Ok(())
    }
}

impl WrapperRecord for SimDisk {
    fn set_wrapper_record(&mut self, record: &[u8]) -> Result<(), StorageError> {
        self.live.set_wrapper_record(record)?;
        self.record(Write::Wrapper(record.to_vec()));
        Ok(())
    }
    fn wrapper_record(&self) -> &[u8] {
        self.live.wrapper_record()
    }
}

impl AtomicSync for SimDisk {}
