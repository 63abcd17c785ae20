//! `MemLog`: the in-memory raft log. It is a store of its own (durable at once,
//! for tests and benchmarks) and the read cache inside every disk-backed store, so
//! raft-rs's hot-path reads never touch the disk.
//!
//! Layout (as etcd's `MemoryStorage`): the log is `entries`, preceded by an
//! "offset" — the index and term of the last discarded entry — so that
//! `term(first_index - 1)` is always answerable, which raft needs to match logs.
//! Invariants: `offset.index <= snapshot index` once a snapshot exists, and
//! `entries[i].index == offset.index + 1 + i`.

use std::collections::VecDeque;
use std::sync::Arc;

use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};

use super::{Corruption, LogStore, SnapshotFilesHost, StorageError, StoredRecord, WrapperRecord};
use crate::snapshot::{ChunkSealer, MemFiles, SnapshotFiles, CHUNK_BYTES_DEFAULT};
use crate::ReplicaId;

/// An in-memory [`LogStore`]: fast, not persistent; `sync` is a no-op.
#[derive(Debug, Default, Clone)]
pub struct MemLog {
    hard_state: HardState,
    snapshot: Snapshot,
    offset_index: u64,
    offset_term: u64,
    entries: VecDeque<Entry>,
    wrapper: Vec<u8>,
    files: FilesSlot,
}

/// The snapshot files a [`MemLog`] keeps, if it was given some (a clone
/// shares them).
#[derive(Default, Clone)]
struct FilesSlot(Option<Arc<dyn SnapshotFiles>>);

impl std::fmt::Debug for FilesSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "files"
        } else {
            "no files"
        })
    }
}

impl MemLog {
    /// An empty store: no entries, no snapshot, no membership.
    pub fn new() -> Self {
        Self::default()
    }

    /// Index of the first entry held (one past the compacted prefix).
    pub fn first(&self) -> u64 {
        self.offset_index + 1
    }

    /// Index of the last entry held (the offset when the log is empty).
    pub fn last(&self) -> u64 {
        self.offset_index + self.entries.len() as u64
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no entries are held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The membership configuration of the newest snapshot.
    pub fn conf_state(&self) -> &ConfState {
        self.snapshot.get_metadata().get_conf_state()
    }

    /// Index and term of the last discarded entry.
    pub fn offset(&self) -> (u64, u64) {
        (self.offset_index, self.offset_term)
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        if index < self.first() {
            return None;
        }
        self.entries.get((index - self.first()) as usize)
    }

    /// Checks that `entries` may be appended; returns nothing on success.
    pub(crate) fn check_append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(head) = entries.first() else {
            return Ok(());
        };
        if head.index < self.first() {
            return Err(StorageError::OverwriteCompacted {
                first: head.index,
                first_index: self.first(),
            });
        }
        if head.index > self.last() + 1 {
            return Err(StorageError::Gap {
                first: head.index,
                last: self.last(),
            });
        }
        for pair in entries.windows(2) {
            if pair[1].index != pair[0].index + 1 {
                return Err(StorageError::NotConsecutive {
                    previous: pair[0].index,
                    found: pair[1].index,
                });
            }
        }
        Ok(())
    }

    /// Checks that compacting to `compact_index` keeps what raft still needs.
    pub(crate) fn check_compact(&self, compact_index: u64) -> Result<(), StorageError> {
        let snapshot_index = self.snapshot.get_metadata().index;
        if compact_index > self.first()
            && (compact_index > snapshot_index + 1 || compact_index > self.last() + 1)
        {
            return Err(StorageError::CompactPastSnapshot {
                index: compact_index,
                snapshot_index,
                limit: (snapshot_index + 1).min(self.last() + 1),
            });
        }
        Ok(())
    }

    /// Restores a store from parts read back from disk, checking its invariants.
    pub(crate) fn from_parts(
        hard_state: HardState,
        snapshot: Snapshot,
        offset: (u64, u64),
        entries: Vec<Entry>,
    ) -> Result<Self, StorageError> {
        let (offset_index, offset_term) = offset;
        let snapshot_index = snapshot.get_metadata().index;
        if snapshot_index != 0 && offset_index > snapshot_index {
            return Err(StorageError::corrupt(
                StoredRecord::Offset,
                Corruption::CompactedPastSnapshot {
                    offset: offset_index,
                    snapshot: snapshot_index,
                },
            ));
        }
        let last = offset_index
            .checked_add(entries.len() as u64)
            .filter(|l| *l < u64::MAX);
        let Some(last) = last else {
            return Err(StorageError::corrupt(
                StoredRecord::Offset,
                Corruption::NoRoomForLog {
                    offset: offset_index,
                },
            ));
        };
        if hard_state.commit > last.max(snapshot_index) {
            return Err(StorageError::corrupt(
                StoredRecord::HardState,
                Corruption::CommitPastLast {
                    commit: hard_state.commit,
                    last,
                },
            ));
        }
        for (i, e) in entries.iter().enumerate() {
            let expected = offset_index + 1 + i as u64;
            if e.index != expected {
                return Err(StorageError::corrupt(
                    StoredRecord::Entry { index: expected },
                    Corruption::WrongIndex {
                        found: e.index,
                        expected,
                    },
                ));
            }
        }
        Ok(Self {
            hard_state,
            snapshot,
            offset_index,
            offset_term,
            entries: entries.into(),
            wrapper: Vec::new(),
            files: FilesSlot::default(),
        })
    }
}

impl Storage for MemLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state().clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let start = (low - self.first()) as usize;
        let end = (high - self.first()) as usize;
        let mut out = Vec::with_capacity(end - start);
        let mut size = 0u64;
        for e in self.entries.range(start..end) {
            size += protobuf2::Message::compute_size(e) as u64;
            // Always return at least one entry, as raft-rs requires.
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.offset_index {
            return Ok(self.offset_term);
        }
        let snap = self.snapshot.get_metadata();
        if idx == snap.index && snap.index != 0 {
            return Ok(snap.term);
        }
        if idx < self.offset_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        match self.entry(idx) {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(raft::StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot.get_metadata().index < request_index || self.snapshot.is_empty() {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

impl LogStore for MemLog {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.check_append(entries)?;
        let Some(head) = entries.first() else {
            return Ok(());
        };
        let keep = (head.index - self.first()) as usize;
        self.entries.truncate(keep);
        self.entries.extend(entries.iter().cloned());
        // The store's last index covers exactly what was appended.
        debug_assert_eq!(self.last(), entries[entries.len() - 1].index);
        debug_assert_eq!(self.entries.front().map(|e| e.index), Some(self.first()));
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
        self.hard_state = hard_state.clone();
        Ok(())
    }

    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let meta = snapshot.get_metadata();
        if meta.index < self.offset_index {
            return Err(StorageError::SnapshotOutOfDate {
                index: meta.index,
                compacted: self.offset_index,
            });
        }
        self.snapshot = snapshot.clone();
        self.offset_index = meta.index;
        self.offset_term = meta.term;
        self.entries.clear();
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = meta.index;
        Ok(())
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let meta = snapshot.get_metadata();
        if meta.index < self.offset_index || meta.index > self.last() {
            return Err(StorageError::SnapshotOutOfRange {
                index: meta.index,
                first_index: self.first(),
                last_index: self.last(),
            });
        }
        if meta.index >= self.snapshot.get_metadata().index {
            self.snapshot = snapshot.clone();
        }
        Ok(())
    }

    fn compact(&mut self, compact_index: u64) -> Result<(), StorageError> {
        if compact_index <= self.first() {
            return Ok(());
        }
        self.check_compact(compact_index)?;
        let drop = (compact_index - self.first()) as usize;
        let last_dropped = self.entries.drain(..drop).last();
        if let Some(e) = last_dropped {
            self.offset_index = e.index;
            self.offset_term = e.term;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    fn snapshot_files(&self) -> Option<Arc<dyn SnapshotFiles>> {
        self.files.0.clone()
    }
}

impl SnapshotFilesHost for MemLog {
    /// Keeps the files in memory ([`MemFiles`], chunks of
    /// [`CHUNK_BYTES_DEFAULT`]); a second call keeps the first files.
    fn open_snapshot_files(
        &mut self,
        replica: ReplicaId,
        sealer: Option<Arc<dyn ChunkSealer>>,
    ) -> Result<(), StorageError> {
        if self.files.0.is_none() {
            self.files.0 = Some(Arc::new(MemFiles::new(
                CHUNK_BYTES_DEFAULT,
                sealer,
                replica,
            )));
        }
        Ok(())
    }
}

impl WrapperRecord for MemLog {
    fn set_wrapper_record(&mut self, record: &[u8]) -> Result<(), StorageError> {
        self.wrapper = record.to_vec();
        Ok(())
    }

    fn wrapper_record(&self) -> &[u8] {
        &self.wrapper
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e
    }

    fn snapshot(index: u64, term: u64) -> Snapshot {
        let mut s = Snapshot::default();
        s.mut_metadata().index = index;
        s.mut_metadata().term = term;
        s
    }

    #[test]
    fn append_overwrites_conflicting_tail_and_rejects_gaps() {
        let mut log = MemLog::new();
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)])
            .unwrap();
        log.append(&[entry(2, 2)]).unwrap();
        assert_eq!(log.last(), 2);
        assert_eq!(log.term(2).unwrap(), 2);
        assert!(matches!(
            log.append(&[entry(4, 2)]),
            Err(StorageError::Gap { first: 4, last: 2 })
        ));
        assert!(matches!(
            log.append(&[entry(3, 2), entry(5, 2)]),
            Err(StorageError::NotConsecutive { .. })
        ));
    }

    #[test]
    fn compaction_keeps_the_term_before_the_first_index() {
        let mut log = MemLog::new();
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 2)])
            .unwrap();
        assert!(matches!(
            log.compact(3),
            Err(StorageError::CompactPastSnapshot { .. })
        ));
        log.save_snapshot(&snapshot(2, 1)).unwrap();
        log.compact(3).unwrap();
        assert_eq!(log.first(), 3);
        assert_eq!(log.term(2).unwrap(), 1);
        assert!(log.term(1).is_err());
        assert!(matches!(
            log.append(&[entry(2, 3)]),
            Err(StorageError::OverwriteCompacted { .. })
        ));
    }

    #[test]
    fn installing_a_snapshot_replaces_the_log() {
        let mut log = MemLog::new();
        log.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        log.apply_snapshot(&snapshot(10, 3)).unwrap();
        assert_eq!((log.first(), log.last()), (11, 10));
        assert_eq!(log.term(10).unwrap(), 3);
        assert_eq!(log.hard_state().commit, 10);
        assert!(matches!(
            log.apply_snapshot(&snapshot(5, 3)),
            Err(StorageError::SnapshotOutOfDate { .. })
        ));
    }
}
