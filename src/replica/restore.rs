//! Restoring a streamed snapshot off the replica's thread (issue 18): a
//! follower that receives a snapshot of a large state would otherwise spend
//! seconds in `restore_from` on its own thread, answering no heartbeat and
//! appending nothing meanwhile.
//!
//! When the store keeps snapshot files and the machine offers a
//! [`StateMachine::blank`], installing a format 2 snapshot makes the store
//! durable at once (the snapshot saved, the log replaced, as before) and
//! hands the driver a [`SnapshotRestore`] in [`Output::restores`]: the blank
//! machine and fresh sessions, to fill from the file on another thread. The
//! replica goes on: it steps messages, appends and syncs entries and
//! acknowledges them, and raft counts its snapshot as applied. What it does
//! not do until [`Replica::snapshot_restored`] is apply: committed entries
//! after the snapshot wait in the store (only their last index is kept),
//! reads wait unless the machine it still holds (the one before the
//! snapshot) already answers them, it takes no snapshot of its own, refuses
//! a leadership transfer to itself and hands leadership over if it wins an
//! election. The restored machine then replaces the old one (which goes to
//! the driver to drop, [`Output::garbage`](super::Output::garbage)), and the
//! waiting entries apply from the store, a bounded step per Ready cycle
//! (the driver runs cycles back to back while there is work, so the thread
//! is still busy for the backlog's length: bounded memory, not time); raft
//! hears of each step only then, so raft never counts a membership change
//! applied that the replica has not applied. An outcome is taken only while
//! no newer snapshot has been stepped (raft then already follows that
//! snapshot's membership, and the entries waiting behind the older one must
//! never apply) and only by the replica that asked for it.
//!
//! A newer snapshot supersedes a restore in flight (its outcome is ignored,
//! its run stops at the next chunk). A restore dropped without being run (a
//! driver that cannot run it) falls back to restoring in place at the next
//! cycle; one that fails, or panics, stops the replica as an in-place restore
//! failure does. A crash at any point reopens on the installed snapshot and
//! restores it at start.
//!
//! [`Output::restores`]: super::Output::restores

use std::any::Any;
use std::io::Read;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use raft::prelude::Snapshot;

use super::error::SnapshotError;
use super::sessions::Sessions;
use super::{streamed, Replica, ReplicaError};
use crate::snapshot::{ChunkRead, SnapshotDescriptor, SnapshotFiles};
use crate::state_machine::StateMachine;
use crate::storage::LogStore;
use crate::wire::{self, Member, SnapshotPayload};

/// What a restore hands back: the filled machine and sessions, type-erased
/// so that [`Output`](super::Output) stays one type for every machine.
type Filled = Box<dyn Any + Send>;

type RestoreWork = Box<dyn FnOnce(&AtomicBool) -> Result<Filled, SnapshotError> + Send>;

/// A streamed snapshot to restore off the replica's thread: a blank machine
/// and the file to fill it from. Run it with [`SnapshotRestore::run`] and
/// hand the result to [`Replica::snapshot_restored`]. Dropping it unrun makes
/// the replica restore in place at its next cycle.
pub struct SnapshotRestore {
    index: u64,
    total_bytes: u64,
    work: Option<RestoreWork>,
    /// Set by the replica when a newer snapshot supersedes this one.
    superseded: Arc<AtomicBool>,
    /// Set when the restore is dropped without having run.
    dropped: Arc<AtomicBool>,
}

impl std::fmt::Debug for SnapshotRestore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotRestore")
            .field("index", &self.index)
            .field("total_bytes", &self.total_bytes)
            .field("run", &self.work.is_none())
            .finish_non_exhaustive()
    }
}

impl Drop for SnapshotRestore {
    fn drop(&mut self) {
        if self.work.is_some() {
            self.dropped.store(true, Ordering::Release);
        }
    }
}

impl SnapshotRestore {
    /// The log index of the snapshot being restored.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The length of the snapshot's stream, in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Reads the snapshot's file into the blank machine and sessions, checking
    /// the file's digest to its end. It takes as long as restoring the whole
    /// state does: call it on another thread than the replica's. A panic of
    /// the machine's `restore_from` is caught and reported as a failure.
    pub fn run(mut self) -> RestoredSnapshot {
        let result = match self.work.take() {
            Some(work) => {
                let superseded = Arc::clone(&self.superseded);
                std::panic::catch_unwind(AssertUnwindSafe(move || work(&superseded)))
                    .unwrap_or(Err(SnapshotError::RestorePanicked))
            }
            None => Err(SnapshotError::RestorePanicked),
        };
        RestoredSnapshot {
            index: self.index,
            token: Arc::clone(&self.superseded),
            result,
        }
    }
}

/// The outcome of [`SnapshotRestore::run`], for [`Replica::snapshot_restored`].
pub struct RestoredSnapshot {
    index: u64,
    /// Names the restore it came from (its replica's `Restoring` holds the
    /// same): an outcome is taken only by the replica that asked for it.
    token: Arc<AtomicBool>,
    result: Result<Filled, SnapshotError>,
}

impl RestoredSnapshot {
    /// The log index of the snapshot that was restored.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// True when the restore succeeded.
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }
}

impl std::fmt::Debug for RestoredSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoredSnapshot")
            .field("index", &self.index)
            .field("result", &self.result.as_ref().map(|_| ()))
            .finish()
    }
}

/// A reader that fails once its restore is superseded, so a run nobody
/// waits for stops at its next read.
struct StopRead<'a, R> {
    inner: R,
    stop: &'a AtomicBool,
}

impl<R: Read> Read for StopRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.stop.load(Ordering::Acquire) {
            return Err(std::io::Error::other(
                "the restore was superseded by a newer snapshot",
            ));
        }
        self.inner.read(buf)
    }
}

/// What the replica keeps of a restore in flight.
pub(super) struct Restoring {
    pub(super) index: u64,
    limits: Option<(usize, usize)>,
    members: Vec<Member>,
    files: Arc<dyn SnapshotFiles>,
    descriptor: SnapshotDescriptor,
    superseded: Arc<AtomicBool>,
    dropped: Arc<AtomicBool>,
}

impl Restoring {
    /// True once its [`SnapshotRestore`] was dropped without running.
    pub(super) fn dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }
}

impl Drop for Restoring {
    fn drop(&mut self) {
        // Whoever still runs it need not finish: nobody will use the result.
        self.superseded.store(true, Ordering::Release);
    }
}

/// Restores `machine` and `sessions` from `descriptor`'s file, stopping with
/// an error once `stop` is set.
fn restore_into<S: StateMachine>(
    files: &dyn SnapshotFiles,
    descriptor: &SnapshotDescriptor,
    machine: &mut S,
    sessions: &mut Sessions,
    stop: &AtomicBool,
) -> Result<(), SnapshotError> {
    let mut input = StopRead {
        inner: ChunkRead::new(files.open(descriptor)?),
        stop,
    };
    streamed::restore_stream_from(&mut input, machine, sessions)
}

impl<L: LogStore, S: StateMachine> Replica<L, S> {
    /// Starts restoring `snap` off the thread if it is a streamed snapshot,
    /// the store keeps files and the machine offers a blank copy; false when
    /// it must be restored in place.
    pub(super) fn start_restore(&mut self, snap: &Snapshot) -> Result<bool, ReplicaError> {
        let Some(files) = self.raw.store().snapshot_files() else {
            return Ok(false);
        };
        let id = self.cfg.id;
        let index = snap.get_metadata().index;
        let bad = |source: SnapshotError| ReplicaError::Snapshot { id, index, source };
        let payload: SnapshotPayload =
            wire::decode(&snap.data, "snapshot payload").map_err(|e| bad(e.into()))?;
        if payload.format_version != streamed::SNAPSHOT_FORMAT_STREAMED {
            return Ok(false);
        }
        let Some(mut blank) = self.machine.blank() else {
            return Ok(false);
        };
        let limits = super::replicated_limits(&payload).map_err(bad)?;
        let descriptor = streamed::descriptor_of(&payload, snap, self.cfg.group).map_err(bad)?;
        let (sessions_max, responses_max) = (self.cfg.sessions_max, self.cfg.session_responses_max);
        let superseded = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicBool::new(false));
        let work: RestoreWork = {
            let files = Arc::clone(&files);
            let descriptor = descriptor.clone();
            Box::new(move |stop: &AtomicBool| {
                let mut sessions = Sessions::new(sessions_max, responses_max);
                restore_into(&*files, &descriptor, &mut blank, &mut sessions, stop)?;
                Ok(Box::new((blank, sessions)) as Filled)
            })
        };
        self.restores.push(SnapshotRestore {
            index,
            total_bytes: descriptor.total_bytes,
            work: Some(work),
            superseded: Arc::clone(&superseded),
            dropped: Arc::clone(&dropped),
        });
        self.restoring = Some(Restoring {
            index,
            limits,
            members: payload.members,
            files,
            descriptor,
            superseded,
            dropped,
        });
        tracing::info!(
            replica = id,
            index,
            bytes = self
                .restoring
                .as_ref()
                .map_or(0, |r| r.descriptor.total_bytes),
            "restoring a streamed snapshot off the replica's thread"
        );
        Ok(true)
    }

    /// Takes the outcome of a [`SnapshotRestore`] the driver ran: the
    /// restored machine replaces the one before the snapshot, and the
    /// committed entries that waited for it apply. The outcome of a restore
    /// superseded by a newer snapshot is ignored.
    ///
    /// A failed restore stops the replica, as a failed in-place restore does
    /// (the requests it fails go to `out`); a crash-restart restores the same
    /// snapshot again, or a newer one arrives.
    ///
    /// Returns whether the outcome was taken.
    pub fn snapshot_restored(
        &mut self,
        restored: RestoredSnapshot,
        out: &mut super::Output,
    ) -> Result<bool, ReplicaError> {
        let id = self.cfg.id;
        if self.failed {
            return Err(ReplicaError::Failed { id });
        }
        let RestoredSnapshot {
            index: _,
            token,
            result,
        } = restored;
        let Some(restoring) = self
            .restoring
            .take_if(|r| Arc::ptr_eq(&r.superseded, &token))
        else {
            // Another restore's (superseded, or another replica's).
            if let Ok(filled) = result {
                out.garbage.push(super::Garbage::new(filled));
            }
            return Ok(false);
        };
        if self.raw.snap().is_some() {
            // A newer snapshot was stepped and its Ready has not run: raft
            // already follows that snapshot's membership, so the entries
            // waiting behind this one must never apply. Its install
            // supersedes this restore.
            self.restoring = Some(restoring);
            if let Ok(filled) = result {
                out.garbage.push(super::Garbage::new(filled));
            }
            return Ok(false);
        }
        let index = restoring.index;
        let result = result
            .and_then(|filled| {
                filled
                    .downcast::<(S, Sessions)>()
                    .map_err(|_| SnapshotError::Stream {
                        what: "the restore handed back another kind of machine",
                    })
            })
            .map_err(|source| ReplicaError::Snapshot { id, index, source })
            .map(|filled| {
                let (machine, sessions) = *filled;
                let old = (
                    std::mem::replace(&mut self.machine, machine),
                    std::mem::replace(&mut self.sessions, sessions),
                );
                out.garbage.push(super::Garbage::new(old));
                self.settle_restore(restoring);
            });
        match result {
            Ok(()) => {
                out.completions.append(&mut self.completions);
                Ok(true)
            }
            Err(e) => {
                self.fail_everything(out);
                Err(e)
            }
        }
    }

    /// A newer snapshot was stepped: a restore in flight need not finish.
    pub(super) fn notice_newer_snapshot(&mut self) {
        if let Some(restoring) = &self.restoring {
            if self.raw.snap().is_some() {
                restoring.superseded.store(true, Ordering::Release);
            }
        }
    }

    /// Restores in place a restore whose job was dropped unrun.
    pub(super) fn restore_dropped_in_place(&mut self) -> Result<(), ReplicaError> {
        if self.raw.snap().is_some() {
            // A newer snapshot is about to be installed in its place.
            return Ok(());
        }
        let Some(restoring) = self.restoring.take_if(|r| r.dropped()) else {
            return Ok(());
        };
        let id = self.cfg.id;
        let index = restoring.index;
        tracing::warn!(
            replica = id,
            index,
            "the snapshot restore was dropped unrun; restoring in place"
        );
        restore_into(
            &*restoring.files,
            &restoring.descriptor,
            &mut self.machine,
            &mut self.sessions,
            &AtomicBool::new(false),
        )
        .map_err(|source| ReplicaError::Snapshot { id, index, source })?;
        self.settle_restore(restoring);
        Ok(())
    }

    /// The restored state is in place: its settings, then the requests it
    /// answers. The entries that waited apply from the store, a bounded
    /// step per cycle (`apply_backlog`).
    fn settle_restore(&mut self, mut restoring: Restoring) {
        Self::restore_settings(
            restoring.limits,
            &mut self.sessions,
            &mut self.members,
            std::mem::take(&mut restoring.members),
            (self.cfg.sessions_max, self.cfg.session_responses_max),
        );
        self.finish_install(restoring.index);
        drop(restoring);
        self.serve_reads();
        tracing::info!(
            replica = self.cfg.id,
            applied = self.applied_index,
            backlog = self.apply_backlog_to.saturating_sub(self.applied_index),
            "streamed snapshot restored"
        );
    }

    /// The index of the snapshot being restored off the thread, if any.
    pub fn restoring_snapshot(&self) -> Option<u64> {
        self.restoring.as_ref().map(|r| r.index)
    }

    /// True while committed entries that waited for a restore are still to
    /// apply: each [`Replica::handle_ready`] applies one bounded step of them
    /// (at most [`APPLY_BACKLOG_ENTRIES`](super::APPLY_BACKLOG_ENTRIES)).
    ///
    /// A driver runs at most [`BACKLOG_STEPS_PER_TURN`](super::BACKLOG_STEPS_PER_TURN)
    /// such cycles per turn and then takes its inputs again, so a backlog of
    /// many steps never keeps a replica from stepping heartbeats, votes and
    /// appends (review 2, R2-3).
    pub fn applying_backlog(&self) -> bool {
        // A restore dropped unrun settles in place at the next cycle, which
        // then applies a step too (review 3, LOW-1: that step went uncounted).
        self.restoring.as_ref().is_none_or(|r| r.dropped())
            && self.apply_backlog_to > self.applied_index
    }
}
