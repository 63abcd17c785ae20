//! Streamed snapshots on the replica's side (step 4 of
//! `docs/proposals/streamed-snapshots.md`): when the replica's store keeps
//! snapshot files ([`LogStore::snapshot_files`]), a snapshot is taken as a
//! frozen view of the state on the replica's thread and written to a file by
//! whoever drives the replica ([`SnapshotBuild::run`], off the replica's
//! thread); the raft snapshot then carries only a descriptor of that file.
//!
//! The replica stays sans-IO: it hands the build to its driver in
//! [`Output::jobs`](super::Output::jobs) and hears back through
//! [`Replica::snapshot_built`]. A replica whose store keeps no files takes
//! inline snapshots as before (format 1).
//!
//! The raft snapshot's `data` is a [`SnapshotPayload`] of format 2: the
//! members, the replicated limits and the encoded [`SnapshotDescriptor`], no
//! sessions and no state. The file holds the rest as one stream:
//!
//! ```text
//! magic "vfstrm\0\x01" | u64 sessions length | sessions (a SnapshotPayload
//! with only its sessions) | the state machine's `snapshot_to` bytes, to the end
//! ```
//!
//! A replica installs or restarts from a format 2 snapshot only from a complete
//! file of its own files whose descriptor matches the one the snapshot
//! carries, and the file's reader checks the descriptor's digest before it
//! reports the end: a machine reads its stream to the end, so a cut or edited
//! file fails the restore instead of being served.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use raft::prelude::{ConfState, Snapshot};

use super::error::SnapshotError;
use super::sessions::Sessions;
use super::{Replica, ReplicaError};
use crate::codec::Codec as _;
use crate::snapshot::{
    ChunkRead, SnapshotDescriptor, SnapshotFileError, SnapshotFiles, SnapshotReader,
};
use crate::state_machine::{CaptureError, SnapshotView, StateMachine};
use crate::storage::LogStore;
use crate::wire::{self, SnapshotPayload};
use crate::ReplicaId;

/// The [`SnapshotPayload`] format of a streamed snapshot.
pub(super) const SNAPSHOT_FORMAT_STREAMED: u32 = 2;

const STREAM_MAGIC: &[u8; 8] = b"vfstrm\0\x01";

/// The largest sessions section a stream may carry: one protobuf message.
const SESSIONS_BYTES_MAX: u64 = wire::MESSAGE_BYTES_MAX;

/// A snapshot for the driver to write off the replica's thread: a frozen view
/// of the state at [`SnapshotBuild::index`] and the files to write it to.
/// Run it with [`SnapshotBuild::run`] and hand the result to
/// [`Replica::snapshot_built`].
///
/// A build dropped without being run (a driver that clears its output, a
/// thread that could not start) tells its replica so, which then counts a
/// failed snapshot and can take the next one.
pub struct SnapshotBuild {
    group: u64,
    creator: ReplicaId,
    index: u64,
    term: u64,
    sessions: Vec<u8>,
    view: Option<Box<dyn SnapshotView>>,
    files: Arc<dyn SnapshotFiles>,
    /// Set when the build is dropped unrun; the replica reads it.
    abandoned: Arc<AtomicBool>,
    /// Set by the replica when it no longer wants the snapshot; the run
    /// stops at its next write.
    cancelled: Arc<AtomicBool>,
}

impl Drop for SnapshotBuild {
    fn drop(&mut self) {
        if self.view.is_some() {
            self.abandoned.store(true, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for SnapshotBuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotBuild")
            .field("group", &self.group)
            .field("creator", &self.creator)
            .field("index", &self.index)
            .field("term", &self.term)
            .field("sessions_bytes", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// Why a snapshot build failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotBuildError {
    /// The state machine's view could not be written.
    #[error("the state machine could not write its snapshot: {0}")]
    Capture(#[from] CaptureError),
    /// The snapshot file could not be written.
    #[error("the snapshot file could not be written: {0}")]
    Files(#[from] SnapshotFileError),
    /// Writing the stream's header failed.
    #[error("the snapshot stream could not be written: {0}")]
    Io(#[source] std::io::Error),
    /// The driver could not start the build (no thread).
    #[error("the snapshot build could not be started: {0}")]
    Start(#[source] std::io::Error),
    /// The build panicked (the state machine's view, most likely).
    #[error("the snapshot build panicked; see the log for the panic")]
    Panicked,
    /// The build had already run.
    #[error("the snapshot build had already run")]
    Spent,
    /// The replica cancelled the build: a member was added while it ran, and
    /// the snapshot, whose membership does not name it, could not serve it.
    #[error("the snapshot build was cancelled: a newer one is taken instead")]
    Cancelled,
}

impl SnapshotBuild {
    /// The log index the snapshot covers.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Writes the snapshot to its file and returns the file's descriptor. It
    /// takes as long as writing the whole state does: call it on another
    /// thread than the replica's.
    pub fn run(mut self) -> Result<SnapshotDescriptor, SnapshotBuildError> {
        // Taken: the build ran (its outcome goes to `snapshot_built`), even if
        // what follows fails or panics.
        let Some(view) = self.view.take() else {
            return Err(SnapshotBuildError::Spent);
        };
        let cancelled = |flag: &AtomicBool| flag.load(Ordering::Acquire);
        if cancelled(&self.cancelled) {
            return Err(SnapshotBuildError::Cancelled);
        }
        let mut out = self
            .files
            .create(self.group, self.creator, self.index, self.term)?;
        out.write_all(STREAM_MAGIC)
            .and_then(|()| out.write_all(&(self.sessions.len() as u64).to_be_bytes()))
            .and_then(|()| out.write_all(&self.sessions))
            .map_err(SnapshotBuildError::Io)?;
        let captured = view.snapshot_to(&mut Cancellable {
            inner: &mut *out,
            cancelled: &self.cancelled,
        });
        // Whatever the view made of the refused write, a cancelled build
        // says so; its `.tmp` goes with `out`, unfinished.
        if cancelled(&self.cancelled) {
            return Err(SnapshotBuildError::Cancelled);
        }
        captured?;
        Ok(out.finish()?)
    }
}

/// The most a cancelled build writes before it notices.
const CANCEL_CHECK_BYTES: usize = 64 << 10;

/// A writer that refuses every write once its build is cancelled, so a
/// view writing a large state stops within one write (or one
/// [`CANCEL_CHECK_BYTES`] piece of a large one).
struct Cancellable<'a> {
    inner: &'a mut dyn Write,
    cancelled: &'a AtomicBool,
}

impl Write for Cancellable<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.cancelled.load(Ordering::Acquire) {
            return Err(std::io::Error::other("the snapshot build was cancelled"));
        }
        self.inner.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // In pieces, so a view that writes its whole state in one call stops
        // within a piece too.
        for piece in buf.chunks(CANCEL_CHECK_BYTES) {
            if self.cancelled.load(Ordering::Acquire) {
                return Err(std::io::Error::other("the snapshot build was cancelled"));
            }
            self.inner.write_all(piece)?;
        }
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What the replica remembers of a build in flight.
pub(super) struct PendingBuild {
    index: u64,
    term: u64,
    conf_state: ConfState,
    payload_head: SnapshotPayload,
    abandoned: Arc<AtomicBool>,
    cancelled: Arc<AtomicBool>,
    /// Taken again at the newest snapshot's index because its file could not
    /// be read: saved in its place.
    rebuild: bool,
}

impl PendingBuild {
    /// True once its build was dropped without running.
    /// True when the membership this snapshot records names `id`.
    pub(super) fn names(&self, id: ReplicaId) -> bool {
        // raft-rs takes a snapshot that names the receiver in any of these.
        let cs = &self.conf_state;
        cs.voters.contains(&id) || cs.learners.contains(&id) || cs.voters_outgoing.contains(&id)
    }

    /// Stops its build at the next write (see `SnapshotBuild::run`).
    pub(super) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    pub(super) fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }
}

/// The format 2 payload without its descriptor: the members and the
/// replicated limits of the state at the snapshot's index.
fn payload_head(sessions: &Sessions, members: &BTreeMap<ReplicaId, String>) -> SnapshotPayload {
    let mut p = SnapshotPayload::new();
    p.format_version = SNAPSHOT_FORMAT_STREAMED;
    if let Some((sessions_max, responses_max)) = sessions.replicated_limits() {
        p.sessions_max = sessions_max as u64;
        p.session_responses_max = responses_max as u64;
    }
    p.members = super::wire_members(members);
    p
}

/// The descriptor a format 2 payload carries, checked against the raft
/// snapshot's own index and term and the replica's group.
pub(super) fn descriptor_of(
    payload: &SnapshotPayload,
    snap: &Snapshot,
    group: u64,
) -> Result<SnapshotDescriptor, SnapshotError> {
    let d =
        SnapshotDescriptor::from_bytes(&payload.descriptor).map_err(SnapshotError::Descriptor)?;
    let meta = snap.get_metadata();
    if d.index != meta.index || d.term != meta.term || d.group != group {
        return Err(SnapshotError::DescriptorMismatch {
            descriptor: (d.group, d.index, d.term),
            snapshot: (group, meta.index, meta.term),
        });
    }
    Ok(d)
}

/// Restores `machine` and `sessions` from the file `descriptor` names.
pub(super) fn restore_stream<S: StateMachine>(
    files: &dyn SnapshotFiles,
    descriptor: &SnapshotDescriptor,
    machine: &mut S,
    sessions: &mut Sessions,
) -> Result<(), SnapshotError> {
    restore_stream_from(
        &mut ChunkRead::new(files.open(descriptor)?),
        machine,
        sessions,
    )
}

/// Restores `machine` and `sessions` from a snapshot file's stream, read to
/// its end (so its digest is checked).
pub(super) fn restore_stream_from<S: StateMachine>(
    mut input: &mut dyn Read,
    machine: &mut S,
    sessions: &mut Sessions,
) -> Result<(), SnapshotError> {
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(stream_error)?;
    if &magic != STREAM_MAGIC {
        return Err(SnapshotError::Stream {
            what: "the stream does not start with the streamed snapshot magic",
        });
    }
    let mut len = [0u8; 8];
    input.read_exact(&mut len).map_err(stream_error)?;
    let len = u64::from_be_bytes(len);
    if len > SESSIONS_BYTES_MAX {
        return Err(SnapshotError::Stream {
            what: "the sessions section is longer than one message can be",
        });
    }
    let mut section = Vec::new();
    (&mut input)
        .take(len)
        .read_to_end(&mut section)
        .map_err(stream_error)?;
    if section.len() as u64 != len {
        return Err(SnapshotError::Stream {
            what: "the stream ends inside its sessions section",
        });
    }
    let section: SnapshotPayload = wire::decode(&section, "snapshot sessions section")?;
    machine.restore_from(input)?;
    // The machine may stop before the end; reading on to it makes the file's
    // reader check the digest, so a stream with anything after the state, or
    // cut or edited anywhere, is refused.
    let mut rest = [0u8; 1];
    match input.read(&mut rest).map_err(stream_error)? {
        0 => {}
        _ => {
            return Err(SnapshotError::Stream {
                what: "the state machine stopped reading before the end of its stream",
            })
        }
    }
    sessions.restore(section.sessions);
    Ok(())
}

fn stream_error(e: std::io::Error) -> SnapshotError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<SnapshotFileError>())
    {
        Some(files) => SnapshotError::Files(files.clone()),
        None => SnapshotError::Stream {
            what: "the stream could not be read",
        },
    }
}

impl<L: LogStore, S: StateMachine> Replica<L, S> {
    /// Starts a streamed snapshot at `applied` (term `term`) if the store
    /// keeps snapshot files; `Ok(false)` if it does not (take one inline).
    pub(super) fn start_snapshot_build(
        &mut self,
        applied: u64,
        term: u64,
        rebuild: bool,
    ) -> Result<bool, SnapshotError> {
        let Some(files) = self.raw.store().snapshot_files() else {
            return Ok(false);
        };
        let view = self.machine.snapshot_view()?;
        let mut sessions = SnapshotPayload::new();
        sessions.format_version = SNAPSHOT_FORMAT_STREAMED;
        sessions.sessions = self.sessions.to_wire();
        let sessions = wire::encode(&sessions)?;
        let abandoned = Arc::new(AtomicBool::new(false));
        let cancelled = Arc::new(AtomicBool::new(false));
        self.building = Some(PendingBuild {
            index: applied,
            term,
            conf_state: self.raw.raft.prs().conf().to_conf_state(),
            payload_head: payload_head(&self.sessions, &self.members),
            abandoned: Arc::clone(&abandoned),
            cancelled: Arc::clone(&cancelled),
            rebuild,
        });
        self.jobs.push(SnapshotBuild {
            group: self.cfg.group,
            creator: self.cfg.id,
            index: applied,
            term,
            sessions,
            view: Some(view),
            files,
            abandoned,
            cancelled,
        });
        Ok(true)
    }

    /// Forgets a build in flight whose job was dropped without running:
    /// counted as a failed snapshot, so the next one can be taken.
    pub(super) fn forget_abandoned_build(&mut self) {
        if let Some(index) = self.building.take_if(|b| b.abandoned()).map(|b| b.index) {
            self.snapshot_failed(index, &"its build was dropped without running");
        }
    }

    /// Tells the replica that a snapshot it meant to send could not be read
    /// (its file is missing or failed its checks): the next cycle takes a new
    /// one, so the peer that needs it is not held back forever.
    pub fn snapshot_unreadable(&mut self) {
        self.snapshot_rebuild = true;
    }

    /// Takes the outcome of a [`SnapshotBuild`] this replica handed out: on
    /// success the snapshot is recorded (its descriptor in the store's raft
    /// snapshot), the log is compacted behind it and the store synced; a
    /// failure is counted and retried after another `snapshot_entries_min`
    /// entries, as for an inline snapshot. An outcome for a build the replica
    /// no longer waits for (a newer snapshot was installed meanwhile, or the
    /// replica restarted) is ignored.
    ///
    /// A storage error stops the replica, as in [`Replica::handle_ready`]
    /// (the requests it fails go to `out`).
    pub fn snapshot_built(
        &mut self,
        index: u64,
        result: Result<SnapshotDescriptor, SnapshotBuildError>,
        out: &mut super::Output,
    ) -> Result<(), ReplicaError> {
        let id = self.cfg.id;
        if self.failed {
            return Err(ReplicaError::Failed { id });
        }
        let Some(pending) = self.building.take_if(|p| p.index == index) else {
            return Ok(());
        };
        self.build_cancelled_last = false;
        let descriptor = match result {
            Ok(d)
                if d.index == pending.index
                    && d.term == pending.term
                    && d.group == self.cfg.group
                    && d.creator == id =>
            {
                d
            }
            Ok(d) => {
                self.snapshot_failed(
                    index,
                    &format_args!(
                        "the build returned a descriptor for another snapshot \
                         (group {}, creator {}, index {}, term {})",
                        d.group, d.creator, d.index, d.term
                    ),
                );
                return Ok(());
            }
            Err(error) => {
                self.snapshot_failed(index, &error);
                return Ok(());
            }
        };
        let store = self.raw.store();
        let latest = store.latest_snapshot().get_metadata().index;
        if descriptor.index < latest || (descriptor.index == latest && !pending.rebuild) {
            return Ok(());
        }
        let first = store
            .first_index()
            .map_err(|source| ReplicaError::Raft { id, source })?;
        let mut payload = pending.payload_head;
        payload.descriptor = descriptor.to_bytes().map_err(|_| ReplicaError::Snapshot {
            id,
            index,
            source: SnapshotError::Stream {
                what: "the descriptor could not be encoded",
            },
        })?;
        let data = wire::encode(&payload).map_err(|e| ReplicaError::Snapshot {
            id,
            index,
            source: e.into(),
        })?;
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = descriptor.index;
        meta.term = descriptor.term;
        meta.set_conf_state(pending.conf_state);
        let compact_to = (descriptor.index + 1)
            .saturating_sub(self.cfg.compaction_entries_retained)
            .max(first);
        let store = self.raw.mut_store();
        let saved = store
            .save_snapshot(&snap)
            .and_then(|()| store.compact(compact_to))
            .and_then(|()| store.sync());
        if let Err(source) = saved {
            self.fail_everything(out);
            return Err(ReplicaError::Storage { id, source });
        }
        self.snapshots_taken += 1;
        self.retain_snapshot_files(descriptor.index);
        tracing::debug!(
            replica = id,
            index = descriptor.index,
            compact_to,
            bytes = descriptor.total_bytes,
            "took a streamed snapshot and compacted the log"
        );
        Ok(())
    }

    fn snapshot_failed(&mut self, index: u64, error: &dyn std::fmt::Display) {
        self.snapshots_failed += 1;
        let applied = self.raw.raft.raft_log.applied;
        self.snapshot_retry_after = applied.saturating_add(self.cfg.snapshot_entries_min);
        tracing::error!(
            replica = self.cfg.id,
            index,
            failures = self.snapshots_failed,
            %error,
            "cannot take a snapshot; the log is not compacted until one succeeds"
        );
    }

    /// Drops the files of snapshots older than the store's newest one. Files
    /// at or above `index` stay: one a leader sent that is not installed yet
    /// must not vanish under it.
    pub(super) fn retain_snapshot_files(&self, index: u64) {
        let Some(files) = self.raw.store().snapshot_files() else {
            return;
        };
        if let Err(error) = files.retain_below(index) {
            tracing::warn!(
                replica = self.cfg.id,
                %error,
                "cannot delete old snapshot files; they stay until the next snapshot"
            );
        }
    }

    /// The snapshot files of the replica's store, if it keeps any.
    pub fn snapshot_files(&self) -> Option<Arc<dyn SnapshotFiles>> {
        self.raw.store().snapshot_files()
    }

    /// For a snapshot this replica sends: its file, opened for reading, if it
    /// is a streamed one (`None` for an inline one, which travels whole in
    /// the message).
    pub fn snapshot_body(
        &self,
        snap: &Snapshot,
    ) -> Result<Option<Box<dyn SnapshotReader>>, SnapshotError> {
        // A store without files only holds inline snapshots: not decoded here
        // (one can be large).
        let Some(files) = self.snapshot_files() else {
            return Ok(None);
        };
        let payload: SnapshotPayload = wire::decode(&snap.data, "snapshot payload")?;
        if payload.format_version != SNAPSHOT_FORMAT_STREAMED {
            return Ok(None);
        }
        let descriptor = descriptor_of(&payload, snap, self.cfg.group)?;
        Ok(Some(files.open(&descriptor)?))
    }

    /// For a streamed snapshot a peer sent: true once this replica holds its
    /// complete file (the transport received and checked it).
    pub(super) fn check_streamed_snapshot(
        &self,
        snap: &Snapshot,
    ) -> Result<(), super::error::StepRefusal> {
        use super::error::StepRefusal;
        let payload: SnapshotPayload = wire::decode(&snap.data, "snapshot payload")
            .map_err(|e| StepRefusal::SnapshotPayload { source: e.into() })?;
        if payload.format_version != SNAPSHOT_FORMAT_STREAMED {
            return Ok(());
        }
        let descriptor = descriptor_of(&payload, snap, self.cfg.group)
            .map_err(|source| StepRefusal::SnapshotPayload { source })?;
        match self.raw.store().snapshot_files() {
            Some(files) if files.is_complete(&descriptor) => Ok(()),
            _ => Err(StepRefusal::SnapshotNotReceived {
                index: descriptor.index,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::snapshot::MemFiles;
    use crate::state_machine::{CaptureError, SnapshotView};

    /// Writes `chunks` chunks of 4 KiB, cancelling its own build after the
    /// `cancel_after`th (as a replica would, from its thread, meanwhile).
    struct CountingView {
        chunks: usize,
        cancel_after: usize,
        cancel: Arc<AtomicBool>,
        written: Arc<AtomicUsize>,
    }

    impl SnapshotView for CountingView {
        fn snapshot_to(&self, out: &mut dyn Write) -> Result<(), CaptureError> {
            for i in 0..self.chunks {
                if i == self.cancel_after {
                    self.cancel.store(true, Ordering::Release);
                }
                out.write_all(&[7u8; 4096]).map_err(CaptureError::Io)?;
                self.written.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
    }

    fn build(view: CountingView, files: Arc<dyn SnapshotFiles>) -> SnapshotBuild {
        SnapshotBuild {
            group: 1,
            creator: 1,
            index: 40,
            term: 2,
            sessions: Vec::new(),
            cancelled: Arc::clone(&view.cancel),
            view: Some(Box::new(view)),
            files,
            abandoned: Arc::default(),
        }
    }

    /// Review M4: a build cancelled while its view writes stops at the next
    /// write (not after the whole state), says `Cancelled`, and leaves no
    /// snapshot behind; one not cancelled writes everything.
    #[test]
    fn a_build_cancelled_while_it_runs_stops_at_the_next_write() {
        let files: Arc<dyn SnapshotFiles> = Arc::new(MemFiles::new(64 << 10, None, 1));
        let written = Arc::new(AtomicUsize::new(0));
        let view = CountingView {
            chunks: 1_000,
            cancel_after: 10,
            cancel: Arc::default(),
            written: Arc::clone(&written),
        };
        let outcome = build(view, Arc::clone(&files)).run();
        assert!(
            matches!(outcome, Err(SnapshotBuildError::Cancelled)),
            "{outcome:?}"
        );
        assert_eq!(written.load(Ordering::Relaxed), 10, "stopped at once");
        // The same build, not cancelled: the whole state, a finished file.
        let written = Arc::new(AtomicUsize::new(0));
        let view = CountingView {
            chunks: 1_000,
            cancel_after: usize::MAX,
            cancel: Arc::default(),
            written: Arc::clone(&written),
        };
        let descriptor = build(view, Arc::clone(&files)).run().expect("build");
        assert_eq!(written.load(Ordering::Relaxed), 1_000);
        assert!(files.is_complete(&descriptor));
    }
}
