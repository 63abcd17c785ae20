//! The store a simulated replica runs on: the simulated disk, plain or sealed by
//! the host's soft HSM.

use std::sync::Arc;

use raft::prelude::{Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};
use vaultfleet::snapshot::SnapshotFiles;
use vaultfleet::{LogStore, Sealed, SoftHsm, StorageError};

use crate::disk::SimDisk;

/// A simulated replica's log store.
pub enum SimStore {
    /// The simulated disk as it is (boxed as the sealed one is: a store
    /// moves into its replica whole).
    Plain(Box<SimDisk>),
    /// The simulated disk under `Sealed`, with the host's soft HSM.
    Sealed(Box<Sealed<SimDisk, SoftHsm>>),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            SimStore::Plain($s) => $e,
            SimStore::Sealed($s) => $e,
        }
    };
}

impl Storage for SimStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        each!(self, s => s.initial_state())
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        each!(self, s => s.entries(low, high, max_size, context))
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        each!(self, s => s.term(idx))
    }
    fn first_index(&self) -> raft::Result<u64> {
        each!(self, s => s.first_index())
    }
    fn last_index(&self) -> raft::Result<u64> {
        each!(self, s => s.last_index())
    }
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        each!(self, s => s.snapshot(request_index, to))
    }
}

impl LogStore for SimStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        each!(self, s => s.append(entries))
    }
    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
        each!(self, s => s.set_hard_state(hard_state))
    }
    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        each!(self, s => s.apply_snapshot(snapshot))
    }
    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        each!(self, s => s.save_snapshot(snapshot))
    }
    fn compact(&mut self, compact_index: u64) -> Result<(), StorageError> {
        each!(self, s => s.compact(compact_index))
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        each!(self, s => s.sync())
    }
    fn latest_snapshot(&self) -> &Snapshot {
        each!(self, s => s.latest_snapshot())
    }
    fn hard_state(&self) -> &HardState {
        each!(self, s => s.hard_state())
    }
    fn snapshot_files(&self) -> Option<Arc<dyn SnapshotFiles>> {
        each!(self, s => s.snapshot_files())
    }
}
