//! `SledLog`: the embedded, durable default store, on sled.
//!
//! Every read is served from an in-memory [`MemLog`] copy of the un-compacted log.
//! Writes go to the cache at once and are staged in one `sled::Batch`; [`LogStore::sync`]
//! applies the batch atomically and flushes sled to disk (`fsync`) before it returns,
//! so one Ready cycle is one atomic, durable write (a cycle that moved only the commit
//! index leaves it staged for the next one). sled's own background flush is
//! never relied on: a crash before `sync` loses the whole pending batch, never part
//! of it.
//!
//! Records are encoded by [`codec`](super::codec), a strict layout of our own, not
//! protobuf: the disk is untrusted, and nothing read back from it reaches the
//! protobuf 2 decoder.
//!
//! One sled tree holds everything, so a batch is atomic across entries and metadata:
//! `e` + big-endian index → entry, `m/…` → metadata (format, hard state, snapshot, log
//! offset, a wrapping store's record). Keys and values are read with the engine's
//! [`codec`](crate::codec) too.
//!
//! Format 3 (`vaultfleet-sled-log-v3`) stores records in the one codec's layout
//! (`u32` length prefixes); formats 1 and 2 are refused with
//! [`StorageError::OldFormat`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft::prelude::{Entry, HardState, Snapshot};
use raft::Storage;

use super::{
    codec, Corruption, LogStore, MemLog, SnapshotFilesHost, StorageError, StoredRecord,
    WrapperRecord,
};
use crate::codec::{Codec, Reader, Writer};
use crate::runtime::telemetry::{self, Stopwatch};
use crate::snapshot::{ChunkSealer, DirFiles, SnapshotFiles, CHUNK_BYTES_DEFAULT};
use crate::ReplicaId;

/// The format this build reads and writes.
const FORMAT_VERSION: u8 = 3;
/// The format marker's text before the version number.
const FORMAT_PREFIX: &[u8] = b"vaultfleet-sled-log-v";
const FORMAT: &[u8] = b"vaultfleet-sled-log-v3";
const _: () = assert!(FORMAT.len() == FORMAT_PREFIX.len() + 1);
const _: () = assert!(FORMAT[FORMAT.len() - 1] == b'0' + FORMAT_VERSION);
const KEY_FORMAT: &[u8] = b"m/format";
const KEY_HARD_STATE: &[u8] = b"m/hard_state";
const KEY_SNAPSHOT: &[u8] = b"m/snapshot";
const KEY_OFFSET: &[u8] = b"m/offset";
const KEY_WRAPPER: &[u8] = b"m/wrapper";
const ENTRY_PREFIX: u8 = b'e';
const ENTRY_KEY_LEN: usize = 1 + 8;
const OFFSET_LEN: usize = 8 + 8;

fn entry_key(index: u64) -> [u8; ENTRY_KEY_LEN] {
    let mut w = Writer::with_capacity(ENTRY_KEY_LEN);
    w.u8(ENTRY_PREFIX).u64(index);
    let mut k = [0u8; ENTRY_KEY_LEN];
    k.copy_from_slice(w.as_slice());
    k
}

/// The index an entry key names.
fn entry_key_index(key: &[u8]) -> Result<u64, StorageError> {
    let mut r = Reader::new(key);
    let index = (|| {
        r.magic(&[ENTRY_PREFIX], "entry key prefix")?;
        let index = r.u64("entry key index")?;
        r.expect_empty("entry key")?;
        Ok(index)
    })();
    index.map_err(|e: crate::codec::DecodeError| StorageError::corrupt(StoredRecord::EntryKey, e))
}

fn encode_offset((index, term): (u64, u64)) -> Vec<u8> {
    let mut w = Writer::with_capacity(OFFSET_LEN);
    w.u64(index).u64(term);
    debug_assert_eq!(w.len(), OFFSET_LEN);
    w.into_vec()
}

fn decode_offset(bytes: &[u8]) -> Result<(u64, u64), StorageError> {
    let mut r = Reader::new(bytes);
    let offset = (|| {
        let index = r.u64("log offset index")?;
        let term = r.u64("log offset term")?;
        r.expect_empty("log offset")?;
        Ok((index, term))
    })();
    offset.map_err(|e: crate::codec::DecodeError| StorageError::corrupt(StoredRecord::Offset, e))
}

fn encode<'a, T: Codec<'a>>(value: &T, record: StoredRecord) -> Result<Vec<u8>, StorageError> {
    codec::encode_record(value).map_err(|source| StorageError::Encode { record, source })
}

fn decode<'a, T: Codec<'a>>(bytes: &'a [u8], record: StoredRecord) -> Result<T, StorageError> {
    codec::decode_record(bytes).map_err(|e| StorageError::corrupt(record, e))
}

/// Checks the format marker, or writes it into an empty tree.
fn check_format(db: &sled::Db, tree: &sled::Tree, path: &Path) -> Result<(), StorageError> {
    match tree.get(KEY_FORMAT).map_err(StorageError::backend)? {
        Some(found) if found.as_ref() == FORMAT => Ok(()),
        Some(found) => {
            let old = found
                .strip_prefix(FORMAT_PREFIX)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<u8>().ok())
                .filter(|v| *v < FORMAT_VERSION);
            Err(match old {
                Some(found) => StorageError::OldFormat {
                    what: "sled log store",
                    found,
                    current: FORMAT_VERSION,
                },
                None => StorageError::ForeignFormat {
                    path: path.to_path_buf(),
                    found: Some(found.to_vec()),
                },
            })
        }
        None => {
            if tree.iter().next().is_some() {
                return Err(StorageError::ForeignFormat {
                    path: path.to_path_buf(),
                    found: None,
                });
            }
            tree.insert(KEY_FORMAT, FORMAT)
                .map_err(StorageError::backend)?;
            db.flush().map_err(StorageError::backend)?;
            Ok(())
        }
    }
}

/// Opens the sled database. sled's background threads can hold the directory's
/// file lock for a moment after the last handle is dropped, so a reopen in the
/// same process (a restart) retries the lock for up to two seconds; a lock held
/// longer is another live store and is reported.
#[allow(clippy::disallowed_methods)] // waits out sled's lock in wall-clock time
fn open_db(path: &Path) -> Result<sled::Db, StorageError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let result = sled::Config::new()
            .path(path)
            .mode(sled::Mode::LowSpace)
            // No background flusher: `sync` flushes explicitly.
            .flush_every_ms(None)
            .open();
        match result {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other.map_err(StorageError::backend),
        }
    }
}

/// A durable [`LogStore`] on the embedded sled database.
pub struct SledLog {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    cache: MemLog,
    pending: sled::Batch,
    pending_writes: usize,
    files: Option<Arc<DirFiles>>,
}

/// The directory, inside the sled store's own, of its snapshot files.
pub const SNAPSHOT_DIR: &str = "vaultfleet-snapshots";

impl std::fmt::Debug for SledLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledLog")
            .field("path", &self.path)
            .field("first", &self.cache.first())
            .field("last", &self.cache.last())
            .finish()
    }
}

impl SledLog {
    /// Opens (or creates) the store in directory `path`, reading the whole
    /// un-compacted log into memory and checking it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let db = open_db(&path)?;
        let tree = db.open_tree("raft").map_err(StorageError::backend)?;
        check_format(&db, &tree, &path)?;
        let get = |key: &[u8]| tree.get(key).map_err(StorageError::backend);
        let hard_state = match get(KEY_HARD_STATE)? {
            Some(b) => decode(&b, StoredRecord::HardState)?,
            None => HardState::default(),
        };
        let snapshot = match get(KEY_SNAPSHOT)? {
            Some(b) => decode(&b, StoredRecord::Snapshot)?,
            None => Snapshot::default(),
        };
        let offset = match get(KEY_OFFSET)? {
            Some(b) => decode_offset(&b)?,
            None => (0, 0),
        };
        let mut entries = Vec::new();
        for kv in tree.range(entry_key(offset.0.saturating_add(1))..entry_key(u64::MAX)) {
            let (k, v) = kv.map_err(StorageError::backend)?;
            let index = entry_key_index(&k)?;
            let record = StoredRecord::Entry { index };
            let entry: Entry = decode(&v, record)?;
            if entry.index != index {
                return Err(StorageError::corrupt(
                    record,
                    Corruption::WrongIndex {
                        found: entry.index,
                        expected: index,
                    },
                ));
            }
            entries.push(entry);
        }
        let mut cache = MemLog::from_parts(hard_state, snapshot, offset, entries)?;
        if let Some(record) = get(KEY_WRAPPER)? {
            cache.set_wrapper_record(&record)?;
        }
        Ok(Self {
            path,
            db,
            tree,
            cache,
            pending: sled::Batch::default(),
            pending_writes: 0,
            files: None,
        })
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The in-memory view of the log.
    pub fn cached(&self) -> &MemLog {
        &self.cache
    }

    fn stage_insert(&mut self, key: &[u8], value: Vec<u8>) {
        self.pending.insert(key, value);
        self.pending_writes += 1;
    }

    fn stage_remove(&mut self, key: &[u8]) {
        self.pending.remove(key);
        self.pending_writes += 1;
    }

    fn stage_offset(&mut self) {
        let offset = encode_offset(self.cache.offset());
        self.stage_insert(KEY_OFFSET, offset);
    }
}

impl Storage for SledLog {
    crate::storage_reads_from!(cache);
}

impl LogStore for SledLog {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.cache.check_append(entries)?;
        let Some(tail) = entries.last() else {
            return Ok(());
        };
        // Encoded first: a refused encoding leaves nothing staged.
        let encoded = entries
            .iter()
            .map(|e| Ok((e.index, encode(e, StoredRecord::Entry { index: e.index })?)))
            .collect::<Result<Vec<_>, StorageError>>()?;
        for index in tail.index + 1..=self.cache.last() {
            self.stage_remove(&entry_key(index));
        }
        for (index, value) in encoded {
            self.stage_insert(&entry_key(index), value);
        }
        self.cache.append(entries)
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
        let value = encode(hard_state, StoredRecord::HardState)?;
        self.stage_insert(KEY_HARD_STATE, value);
        self.cache.set_hard_state(hard_state)
    }

    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let (first, last) = (self.cache.first(), self.cache.last());
        let value = encode(snapshot, StoredRecord::Snapshot)?;
        self.cache.apply_snapshot(snapshot)?;
        for index in first..=last {
            self.stage_remove(&entry_key(index));
        }
        self.stage_insert(KEY_SNAPSHOT, value);
        self.stage_offset();
        let hs = encode(self.cache.hard_state(), StoredRecord::HardState)?;
        self.stage_insert(KEY_HARD_STATE, hs);
        Ok(())
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let value = encode(snapshot, StoredRecord::Snapshot)?;
        self.cache.save_snapshot(snapshot)?;
        // The cache keeps the newer of two snapshots; the disk must agree with it.
        if self.cache.latest_snapshot().get_metadata().index == snapshot.get_metadata().index {
            self.stage_insert(KEY_SNAPSHOT, value);
        }
        Ok(())
    }

    fn compact(&mut self, compact_index: u64) -> Result<(), StorageError> {
        let first = self.cache.first();
        self.cache.compact(compact_index)?;
        for index in first..self.cache.first() {
            self.stage_remove(&entry_key(index));
        }
        self.stage_offset();
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        if self.pending_writes == 0 {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        self.pending_writes = 0;
        let fsync = Stopwatch::start();
        self.tree
            .apply_batch(batch)
            .map_err(StorageError::backend)?;
        self.db.flush().map_err(StorageError::backend)?;
        fsync.record(telemetry::LOG_FSYNC_SECONDS);
        Ok(())
    }

    fn latest_snapshot(&self) -> &Snapshot {
        self.cache.latest_snapshot()
    }

    fn hard_state(&self) -> &HardState {
        self.cache.hard_state()
    }

    fn snapshot_files(&self) -> Option<Arc<dyn SnapshotFiles>> {
        self.files.clone().map(|f| f as Arc<dyn SnapshotFiles>)
    }
}

impl SnapshotFilesHost for SledLog {
    /// Keeps the files in [`SNAPSHOT_DIR`] inside the store's directory
    /// ([`DirFiles`], chunks of [`CHUNK_BYTES_DEFAULT`]); a second call keeps
    /// the first files.
    fn open_snapshot_files(
        &mut self,
        replica: ReplicaId,
        sealer: Option<Arc<dyn ChunkSealer>>,
    ) -> Result<(), StorageError> {
        if self.files.is_none() {
            let dir = self.path.join(SNAPSHOT_DIR);
            self.files = Some(Arc::new(DirFiles::open(
                dir,
                CHUNK_BYTES_DEFAULT,
                sealer,
                replica,
            )?));
        }
        Ok(())
    }
}

impl WrapperRecord for SledLog {
    fn set_wrapper_record(&mut self, record: &[u8]) -> Result<(), StorageError> {
        self.stage_insert(KEY_WRAPPER, record.to_vec());
        self.cache.set_wrapper_record(record)
    }

    fn wrapper_record(&self) -> &[u8] {
        self.cache.wrapper_record()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = data.to_vec().into();
        e
    }

    #[test]
    fn synced_writes_survive_reopen_and_unsynced_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = SledLog::open(dir.path()).unwrap();
            log.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")]).unwrap();
            let mut hs = HardState::default();
            hs.term = 1;
            hs.commit = 2;
            log.set_hard_state(&hs).unwrap();
            log.sync().unwrap();
            log.append(&[entry(3, 1, b"lost")]).unwrap();
            // dropped without sync: the pending batch is never applied
        }
        let log = SledLog::open(dir.path()).unwrap();
        assert_eq!(log.last_index().unwrap(), 2);
        assert_eq!(log.hard_state().commit, 2);
        let got = log
            .entries(1, 3, None, raft::GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(&got[1].data[..], b"b");
    }

    #[test]
    fn refuses_a_directory_of_another_format() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("raft")
                .unwrap()
                .insert(KEY_FORMAT, b"something-else")
                .unwrap();
            db.flush().unwrap();
        }
        assert!(matches!(
            SledLog::open(dir.path()),
            Err(StorageError::ForeignFormat { .. })
        ));
    }

    #[test]
    fn a_store_of_an_older_format_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("raft")
                .unwrap()
                .insert(KEY_FORMAT, b"vaultfleet-sled-log-v2")
                .unwrap();
            db.flush().unwrap();
        }
        let err = SledLog::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::OldFormat {
                    found: 2,
                    current: FORMAT_VERSION,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("written by an older vaultfleet"));
    }

    #[test]
    fn a_corrupt_entry_is_reported_not_served() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = SledLog::open(dir.path()).unwrap();
            log.append(&[entry(1, 1, b"a")]).unwrap();
            log.sync().unwrap();
            log.tree.insert(entry_key(1), &b"\xff\xff\xff"[..]).unwrap();
            log.db.flush().unwrap();
        }
        let err = SledLog::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::Corrupt {
                    record: StoredRecord::Entry { index: 1 },
                    cause: Corruption::Decode(_),
                }
            ),
            "{err}"
        );
    }
}
