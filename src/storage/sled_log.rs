//! `SledLog`: the embedded, durable default store, on sled.
//!
//! Every read is served from an in-memory [`MemLog`] copy of the un-compacted log.
//! Writes go to the cache at once and are staged in one `sled::Batch`; [`LogStore::sync`]
//! applies the batch atomically and flushes sled to disk (`fsync`) before it returns,
//! so one Ready cycle is one atomic, durable write. sled's own background flush is
//! never relied on: a crash before `sync` loses the whole pending batch, never part
//! of it.
//!
//! Records are encoded by [`codec`](super::codec), a strict layout of our own, not
//! protobuf: the disk is untrusted, and nothing read back from it reaches the
//! protobuf 2 decoder.
//!
//! One sled tree holds everything, so a batch is atomic across entries and metadata:
//! `e` + big-endian index → entry, `m/…` → metadata (format, hard state, snapshot, log
//! offset, a wrapping store's record).

use std::path::{Path, PathBuf};

use raft::prelude::{Entry, HardState, Snapshot};
use raft::Storage;

use super::{codec, LogStore, MemLog, StorageError};

const FORMAT: &[u8] = b"vaultfleet-sled-log-v2";
const KEY_FORMAT: &[u8] = b"m/format";
const KEY_HARD_STATE: &[u8] = b"m/hard_state";
const KEY_SNAPSHOT: &[u8] = b"m/snapshot";
const KEY_OFFSET: &[u8] = b"m/offset";
const KEY_WRAPPER: &[u8] = b"m/wrapper";
const ENTRY_PREFIX: u8 = b'e';

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = ENTRY_PREFIX;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
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
            other => return Ok(other?),
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
}

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
        let tree = db.open_tree("raft")?;
        let location = path.display().to_string();
        match tree.get(KEY_FORMAT)? {
            Some(found) if found.as_ref() == FORMAT => {}
            Some(found) => {
                return Err(StorageError::ForeignFormat {
                    path: location,
                    found: String::from_utf8_lossy(&found).into_owned(),
                })
            }
            None => {
                if tree.iter().next().is_some() {
                    return Err(StorageError::ForeignFormat {
                        path: location,
                        found: "<no format marker>".into(),
                    });
                }
                tree.insert(KEY_FORMAT, FORMAT)?;
                db.flush()?;
            }
        }
        let hard_state = match tree.get(KEY_HARD_STATE)? {
            Some(b) => codec::decode_hard_state(&b)?,
            None => HardState::default(),
        };
        let snapshot = match tree.get(KEY_SNAPSHOT)? {
            Some(b) => codec::decode_snapshot(&b)?,
            None => Snapshot::default(),
        };
        let offset = match tree.get(KEY_OFFSET)? {
            Some(b) if b.len() == 16 => {
                let mut i = [0u8; 8];
                let mut t = [0u8; 8];
                i.copy_from_slice(&b[..8]);
                t.copy_from_slice(&b[8..]);
                (u64::from_be_bytes(i), u64::from_be_bytes(t))
            }
            Some(b) => {
                return Err(StorageError::Corrupt {
                    what: "log offset".into(),
                    detail: format!("expected 16 bytes, found {}", b.len()),
                })
            }
            None => (0, 0),
        };
        let mut entries = Vec::new();
        for kv in tree.range(entry_key(offset.0.saturating_add(1))..entry_key(u64::MAX)) {
            let (k, v) = kv?;
            let key_index = k
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            let what = match key_index {
                Some(i) if k.len() == 9 => format!("entry {i}"),
                _ => format!("entry at key {k:?}"),
            };
            let entry: Entry = codec::decode_entry(&v, &what)?;
            if k.as_ref() != entry_key(entry.index) {
                return Err(StorageError::Corrupt {
                    what,
                    detail: format!("holds entry {}", entry.index),
                });
            }
            entries.push(entry);
        }
        let mut cache = MemLog::from_parts(hard_state, snapshot, offset, entries)?;
        if let Some(record) = tree.get(KEY_WRAPPER)? {
            cache.set_wrapper_record(&record)?;
        }
        Ok(Self {
            path,
            db,
            tree,
            cache,
            pending: sled::Batch::default(),
            pending_writes: 0,
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
        let (i, t) = self.cache.offset();
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&i.to_be_bytes());
        v.extend_from_slice(&t.to_be_bytes());
        self.stage_insert(KEY_OFFSET, v);
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
        for index in tail.index + 1..=self.cache.last() {
            self.stage_remove(&entry_key(index));
        }
        for e in entries {
            self.stage_insert(&entry_key(e.index), codec::encode_entry(e));
        }
        self.cache.append(entries)
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
        self.stage_insert(KEY_HARD_STATE, codec::encode_hard_state(hard_state));
        self.cache.set_hard_state(hard_state)
    }

    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let (first, last) = (self.cache.first(), self.cache.last());
        self.cache.apply_snapshot(snapshot)?;
        for index in first..=last {
            self.stage_remove(&entry_key(index));
        }
        self.stage_insert(KEY_SNAPSHOT, codec::encode_snapshot(snapshot));
        self.stage_offset();
        let hs = self.cache.hard_state().clone();
        self.stage_insert(KEY_HARD_STATE, codec::encode_hard_state(&hs));
        Ok(())
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.cache.save_snapshot(snapshot)?;
        // The cache keeps the newer of two snapshots; the disk must agree with it.
        if self.cache.latest_snapshot().get_metadata().index == snapshot.get_metadata().index {
            self.stage_insert(KEY_SNAPSHOT, codec::encode_snapshot(snapshot));
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
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    fn latest_snapshot(&self) -> &Snapshot {
        self.cache.latest_snapshot()
    }

    fn hard_state(&self) -> &HardState {
        self.cache.hard_state()
    }

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
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    }
}
