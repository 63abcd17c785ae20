//! Streamed snapshots (docs/proposals/streamed-snapshots.md, steps 3-5) on the
//! threaded runtime over the in-process network: the raft snapshot carries a
//! file's descriptor, the file is written off the replica's thread and sent
//! chunk by chunk into the receiver's files, on plain and on sealed sled.
//! No test asserts a duration; waits are bounded only to fail instead of hanging.
// Tests of the threaded runtime use threads and wall-clock waits.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use crate::harness;

use harness::{get, put, Fleet, Store};
use protobuf::Message as _;
use vaultfleet::codec::Codec as _;
use vaultfleet::snapshot::SnapshotDescriptor;
use vaultfleet::wire::SnapshotPayload;
use vaultfleet::{FleetConfig, LogStore, MemberSpec, ReplicaError};

const THREE: [(u64, &str); 3] = [(1, "dc-a"), (2, "dc-b"), (3, "dc-c")];

fn small_snapshots(rc: &mut vaultfleet::ReplicaConfig) {
    rc.snapshot_entries_min = 40;
    rc.compaction_entries_retained = 5;
}

fn three() -> FleetConfig {
    FleetConfig::new(
        THREE
            .iter()
            .map(|&(id, dc)| MemberSpec::voter(id, dc))
            .collect(),
    )
}

/// The descriptor of the newest snapshot in replica `id`'s sled directory
/// (read through a plain sled log: the test reads the raft snapshot record of
/// a plain store only).
fn stored_descriptor(fleet: &Fleet, id: u64) -> Option<SnapshotDescriptor> {
    let log = vaultfleet::SledLog::open(fleet.dir_of(id)).expect("reopen");
    let snap = log.latest_snapshot();
    let payload = SnapshotPayload::parse_from_bytes(&snap.data).expect("payload");
    (payload.format_version == 2).then(|| {
        assert!(payload.sessions.is_empty() && payload.state.is_empty());
        SnapshotDescriptor::from_bytes(&payload.descriptor).expect("descriptor")
    })
}

fn snapshot_files(fleet: &Fleet, id: u64) -> Vec<std::path::PathBuf> {
    let dir = fleet.dir_of(id).join(vaultfleet::storage::SNAPSHOT_DIR);
    // `.del` files are being deleted on a thread of their own.
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_none_or(|e| e != "del"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Stops `behind`, writes until the leader compacted past it, restarts it and
/// waits until it has caught up; returns the leader's commit then.
fn leave_behind_and_catch_up<M: vaultfleet::StateMachine>(
    fleet: &mut Fleet<M>,
    behind: u64,
) -> u64 {
    let client = fleet.client();
    put(&client, "early", "1");
    fleet.stop(behind);
    for i in 0..400 {
        put(&client, &format!("k{i}"), "v");
    }
    let behind_last = {
        // Read through the raw sled log: what the stopped replica holds
        // (sealed or not, the inner store keeps one record per index).
        let log = vaultfleet::SledLog::open(fleet.dir_of(behind)).expect("reopen");
        raft::Storage::last_index(&log).unwrap_or(0)
    };
    let leader = fleet.leader_status();
    assert!(
        leader.first_index > behind_last + 1,
        "the leader compacted past the stopped replica ({} > {})",
        leader.first_index,
        behind_last + 1
    );
    fleet.restart(behind);
    fleet.wait_applied(leader.commit);
    let s = fleet.status(behind);
    assert!(
        s.first_index > behind_last + 1,
        "the replica caught up from a snapshot (first index {} past {})",
        s.first_index,
        behind_last + 1
    );
    leader.commit
}

fn a_far_behind_replica_catches_up_from_a_streamed_snapshot(store: Store) {
    let mut fleet = Fleet::start_with(three(), store, small_snapshots);
    let leader = fleet.wait_leader();
    let behind = (1..=3).find(|&id| id != leader).unwrap_or(1);
    leave_behind_and_catch_up(&mut fleet, behind);
    // The replica serves the state after a hand-over to it.
    let client = fleet.client();
    client.transfer_leader(behind).expect("transfer");
    assert_eq!(get(&client, "k399"), Some(b"v".to_vec()));
    assert_eq!(get(&client, "early"), Some(b"1".to_vec()));
    // Every replica took streamed snapshots and keeps few files.
    for id in 1..=3 {
        let files = snapshot_files(&fleet, id);
        assert!(!files.is_empty(), "replica {id} keeps snapshot files");
        assert!(
            files.len() <= 3,
            "replica {id} deletes old snapshot files: {files:?}"
        );
        assert!(
            files
                .iter()
                .all(|f| f.extension().is_some_and(|e| e == "snap")),
            "no temporary file left: {files:?}"
        );
        // The state holds the keys in the clear; a sealed store's files never do.
        let clear = files.iter().any(|f| {
            std::fs::read(f)
                .expect("read a snapshot file")
                .windows(5)
                .any(|w| w == b"early")
        });
        assert_eq!(
            clear,
            store == Store::SledStreamed,
            "replica {id}: keys in the clear only in plain files"
        );
    }
}

#[test]
fn plain_sled_a_far_behind_replica_catches_up_from_a_streamed_snapshot() {
    a_far_behind_replica_catches_up_from_a_streamed_snapshot(Store::SledStreamed);
}

#[test]
fn sealed_sled_a_far_behind_replica_catches_up_from_a_streamed_snapshot() {
    a_far_behind_replica_catches_up_from_a_streamed_snapshot(Store::SealedSledStreamed);
}

#[test]
fn the_raft_snapshot_carries_only_a_descriptor_and_a_restart_restores_from_the_file() {
    let mut fleet = Fleet::start_with(three(), Store::SledStreamed, small_snapshots);
    let client = fleet.client();
    for i in 0..200 {
        put(&client, &format!("k{i}"), "v");
    }
    let commit = fleet.leader_status().commit;
    fleet.wait_applied(commit);
    for id in 1..=3 {
        fleet.stop(id);
    }
    for id in 1..=3 {
        let d = stored_descriptor(&fleet, id).expect("a streamed snapshot is stored");
        assert_eq!(d.creator, id, "each replica wrote its own");
        assert!(d.total_bytes > 0 && d.index > 1);
    }
    for id in 1..=3 {
        fleet.restart(id);
    }
    let client = fleet.client();
    for i in 0..200 {
        assert_eq!(get(&client, &format!("k{i}")), Some(b"v".to_vec()), "k{i}");
    }
}

#[test]
fn a_snapshot_file_edited_on_disk_is_detected_at_restart_never_served() {
    let mut fleet = Fleet::start_with(three(), Store::SledStreamed, small_snapshots);
    let client = fleet.client();
    for i in 0..200 {
        put(&client, &format!("k{i}"), "value");
    }
    let commit = fleet.leader_status().commit;
    fleet.wait_applied(commit);
    let victim = 1;
    fleet.stop(victim);
    let d = stored_descriptor(&fleet, victim).expect("a streamed snapshot");
    let file = snapshot_files(&fleet, victim)
        .into_iter()
        .find(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{:020}-", d.index)))
        })
        .expect("the stored snapshot's file");
    let mut bytes = std::fs::read(&file).expect("read");
    // The last byte of the last chunk, just before the trailer (the encoded
    // descriptor and an 8-byte mark): inside the state machine's bytes, which
    // decode either way; only the hash list can tell.
    let at = bytes.len() - vaultfleet::snapshot::DESCRIPTOR_BYTES - 8 - 1;
    bytes[at] ^= 0x01;
    std::fs::write(&file, &bytes).expect("write");
    let log = vaultfleet::SledLog::open(fleet.dir_of(victim)).expect("reopen");
    let mut log = log;
    vaultfleet::storage::SnapshotFilesHost::open_snapshot_files(&mut log, victim, None)
        .expect("files");
    let cfg = vaultfleet::ReplicaConfig::new(victim);
    match vaultfleet::Replica::new(cfg, log, vaultfleet::KvStore::new()) {
        Err(e @ ReplicaError::Snapshot { .. }) => assert!(
            is_digest_mismatch(&e),
            "refused by the hash list, not by chance: {e}"
        ),
        Err(other) => panic!("refused, but with {other}"),
        Ok(_) => panic!("a replica started from an edited snapshot file"),
    }
}

/// True when `e` or a cause of it is the files' `DigestMismatch` (also
/// inside an `io::Error`, as a machine's reader reports it).
fn is_digest_mismatch(e: &(dyn std::error::Error + 'static)) -> bool {
    use vaultfleet::snapshot::SnapshotFileError;
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(SnapshotFileError::DigestMismatch { .. }) = e.downcast_ref() {
            return true;
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if is_digest_mismatch(inner) {
                return true;
            }
        }
        next = e.source();
    }
    false
}

#[test]
fn a_sealed_store_never_uses_snapshot_files_its_inner_store_opened_plain() {
    use vaultfleet::storage::SnapshotFilesHost as _;
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut inner = vaultfleet::SledLog::open(dir.path()).expect("open");
    inner.open_snapshot_files(1, None).expect("plain files");
    let mut sealed = vaultfleet::Sealed::open(
        inner,
        vaultfleet::SoftHsm::from_seed(1),
        vaultfleet::SealedConfig::new(0, 1),
    )
    .expect("open sealed");
    assert!(
        sealed.snapshot_files().is_none(),
        "plain files are not used"
    );
    assert!(matches!(
        sealed.open_snapshot_files(),
        Err(vaultfleet::StorageError::SnapshotFilesOpenedPlain { replica: 1 })
    ));
    assert!(sealed.snapshot_files().is_none());
}

/// Issue 18 review, H2: a replica admits a stream only from the leader it
/// follows, of a term it knows, past what it applied and near its log; a
/// refused stream leaves nothing on disk.
#[test]
fn a_replica_admits_a_streamed_snapshot_only_from_its_leader_and_within_bounds() {
    use vaultfleet::snapshot::{snapshot_id, SnapshotDescriptor, CHUNK_BYTES_DEFAULT};
    use vaultfleet::transport::{Inbox as _, StreamRefused};
    let fleet = Fleet::start_with(three(), Store::SledStreamed, small_snapshots);
    let client = fleet.client();
    put(&client, "k", "v");
    let leader = fleet.wait_leader();
    let follower = (1..=3).find(|&id| id != leader).unwrap_or(1);
    let other = (1..=3)
        .find(|&id| id != leader && id != follower)
        .unwrap_or(1);
    let commit = fleet.leader_status().commit;
    fleet.wait_applied(commit);
    let s = fleet.status(follower);
    let group = vaultfleet::ReplicaConfig::new(1).group;
    let descriptor = |creator: u64, index: u64, term: u64| {
        let digest = [3; 32];
        SnapshotDescriptor {
            group,
            creator,
            index,
            term,
            id: snapshot_id(group, creator, &digest),
            total_bytes: 0,
            chunk_bytes: CHUNK_BYTES_DEFAULT,
            chunks: 0,
            digest,
        }
    };
    let inbox = fleet.handle(follower);
    let refused = |from: u64, d: SnapshotDescriptor| inbox.admit_snapshot(from, &d).err();
    assert!(matches!(
        refused(other, descriptor(other, s.applied + 1, s.term)),
        Some(StreamRefused::NotLeader { .. })
    ));
    assert!(matches!(
        refused(leader, descriptor(leader, s.applied, s.term)),
        Some(StreamRefused::Stale { .. })
    ));
    // Committed but not yet applied is stale too: raft would refuse it.
    assert!(matches!(
        refused(leader, descriptor(leader, s.commit, s.term)),
        Some(StreamRefused::Stale { .. })
    ));
    assert!(matches!(
        refused(leader, descriptor(leader, u64::MAX - 1, s.term)),
        Some(StreamRefused::TooFar { .. })
    ));
    assert!(matches!(
        refused(leader, descriptor(leader, s.applied + 1, s.term + 1)),
        Some(StreamRefused::FutureTerm { .. })
    ));
    let mut other_group = descriptor(leader, s.applied + 1, s.term);
    other_group.group += 1;
    other_group.id = snapshot_id(other_group.group, leader, &other_group.digest);
    assert!(matches!(
        refused(leader, other_group),
        Some(StreamRefused::WrongGroup { .. })
    ));
    let mut forged = descriptor(leader, s.applied + 1, s.term);
    forged.id.0[0] ^= 1;
    assert!(matches!(
        refused(leader, forged),
        Some(StreamRefused::BadDescriptor)
    ));
    assert!(inbox
        .admit_snapshot(leader, &descriptor(leader, s.applied + 1, s.term))
        .is_ok());
    assert!(
        snapshot_files(&fleet, follower)
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "snap")),
        "admission writes nothing"
    );
}

/// Issue 18 review, H1: a descriptor that reuses a held file's id for other
/// content is refused, and the held file stays readable.
#[test]
fn a_held_snapshot_file_cannot_be_replaced_under_its_id() {
    use std::io::Write as _;
    use vaultfleet::snapshot::{DirFiles, SnapshotFiles as _, CHUNK_BYTES_MIN};
    let dir = tempfile::tempdir().expect("temporary directory");
    let files = DirFiles::open(dir.path(), CHUNK_BYTES_MIN, None, 2).expect("open");
    let mut w = files.create(0, 1, 10, 2).expect("create");
    w.write_all(b"the honest state").expect("write");
    let held = w.finish().expect("finish");
    // Another stream, under the held id.
    let mut other = vaultfleet::snapshot::SnapshotDigester::new();
    other.add(b"junk");
    let mut forged = other
        .descriptor(0, 1, 10, 2, CHUNK_BYTES_MIN)
        .expect("descriptor");
    forged.id = held.id;
    assert!(files.receive(&forged).is_err(), "a forged id is refused");
    assert!(files.is_complete(&held));
    let mut reader = files.open(&held).expect("open the held file");
    let mut read = Vec::new();
    while let Some((_, chunk)) = reader.next_chunk().expect("chunk") {
        read.extend_from_slice(&chunk);
    }
    assert_eq!(read, b"the honest state");
}

/// Issue 18 review, M2: a leader whose snapshot file is gone takes its
/// snapshot again instead of holding a lagging follower back for good.
#[test]
fn a_leader_whose_snapshot_file_is_gone_takes_it_again() {
    let mut fleet = Fleet::start_with(three(), Store::SledStreamed, small_snapshots);
    let client = fleet.client();
    let leader = fleet.wait_leader();
    let behind = (1..=3).find(|&id| id != leader).unwrap_or(1);
    put(&client, "early", "1");
    fleet.stop(behind);
    for i in 0..200 {
        put(&client, &format!("k{i}"), "v");
    }
    let commit = fleet.leader_status().commit;
    // Every file of the leader's (and of the other follower's) is lost.
    for id in (1..=3).filter(|&id| id != behind) {
        for f in snapshot_files(&fleet, id) {
            // A file retained away meanwhile is already gone (its deletion
            // runs on a thread of its own).
            match std::fs::remove_file(&f) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("remove {f:?}: {e}"),
                _ => {}
            }
        }
    }
    fleet.restart(behind);
    fleet.wait_applied(commit);
    let client = fleet.client();
    client.transfer_leader(behind).expect("transfer");
    assert_eq!(get(&client, "k199"), Some(b"v".to_vec()));
}

/// Where a [`BlankKv`] restored from a stream, and where a non-empty one was
/// dropped: thread names.
static RESTORED_ON: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
static DROPPED_ON: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_string()
}

/// A [`vaultfleet::KvStore`] that offers a blank copy (so the node restores
/// its streamed snapshots off the replica's thread) and records the threads
/// it restores and is dropped on.
#[derive(Default)]
struct BlankKv(vaultfleet::KvStore);

impl vaultfleet::StateMachine for BlankKv {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        self.0.apply(index, command)
    }
    fn query(&self, query: &[u8]) -> Vec<u8> {
        self.0.query(query)
    }
    fn snapshot(&self) -> Result<Vec<u8>, vaultfleet::state_machine::CaptureError> {
        self.0.snapshot()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), vaultfleet::state_machine::RestoreError> {
        self.0.restore(snapshot)
    }
    fn restore_from(
        &mut self,
        input: &mut dyn std::io::Read,
    ) -> Result<(), vaultfleet::state_machine::RestoreError> {
        RESTORED_ON.lock().unwrap().push(thread_name());
        self.0.restore_from(input)
    }
    fn blank(&self) -> Option<Self> {
        Some(Self::default())
    }
}

impl Drop for BlankKv {
    fn drop(&mut self) {
        // Every drop, empty or not: the machine a restore replaces may be
        // empty (a restart can replay none of its log before the snapshot
        // comes), and it still goes to the drop thread.
        DROPPED_ON.lock().unwrap().push(thread_name());
    }
}

/// Review of the restore, test gap: the node runtime restores a streamed
/// snapshot on a thread of its own (not the replica's), serves the state
/// afterwards, and drops the machine it replaced off the replica's thread.
#[test]
fn the_node_restores_a_streamed_snapshot_on_a_thread_and_drops_the_old_machine_off_the_replicas() {
    let mut fleet = Fleet::start_machine(
        three(),
        Store::SealedSledStreamed,
        small_snapshots,
        BlankKv::default,
    );
    let leader = fleet.wait_leader();
    let behind = (1..=3).find(|&id| id != leader).unwrap_or(1);
    leave_behind_and_catch_up(&mut fleet, behind);
    let restored = RESTORED_ON.lock().unwrap().clone();
    let on_thread = format!("vf-snap-restore-{behind}");
    assert!(
        restored.contains(&on_thread),
        "restored on {restored:?}, not on {on_thread}"
    );
    let client = fleet.client();
    client.transfer_leader(behind).expect("transfer");
    assert_eq!(get(&client, "k399"), Some(b"v".to_vec()));
    assert_eq!(get(&client, "early"), Some(b"1".to_vec()));
    // The old machine is dropped on a thread of its own, maybe still running.
    let on_drop_thread = format!("vf-drop-{behind}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !DROPPED_ON.lock().unwrap().contains(&on_drop_thread)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let dropped = DROPPED_ON.lock().unwrap().clone();
    assert!(
        dropped.contains(&on_drop_thread),
        "the replaced machine was dropped on {dropped:?}"
    );
}

/// Held by a [`SlowKv`] restore until the test opens it (bounded, so a
/// failing test does not hang), with whether a restore has begun.
static RESTORE_GATE: (std::sync::Mutex<(bool, bool)>, std::sync::Condvar) = (
    std::sync::Mutex::new((false, false)),
    std::sync::Condvar::new(),
);
/// The node whose applies [`SlowKv`] records, and what it recorded: each
/// applied index with the applied index that node had published then.
static WATCHED: std::sync::Mutex<Option<vaultfleet::NodeHandle>> = std::sync::Mutex::new(None);
static APPLIED_SEEN: std::sync::Mutex<Vec<(u64, u64)>> = std::sync::Mutex::new(Vec::new());

/// A [`vaultfleet::KvStore`] whose streamed restores wait at
/// [`RESTORE_GATE`]; a machine made by `blank` records its applies against
/// the watched node's published status.
#[derive(Default)]
struct SlowKv {
    kv: vaultfleet::KvStore,
    restored: bool,
}

impl vaultfleet::StateMachine for SlowKv {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        if self.restored {
            if let Some(node) = WATCHED.lock().unwrap().as_ref() {
                let published = node.status().applied;
                APPLIED_SEEN.lock().unwrap().push((index, published));
            }
        }
        self.kv.apply(index, command)
    }
    fn query(&self, query: &[u8]) -> Vec<u8> {
        self.kv.query(query)
    }
    fn snapshot(&self) -> Result<Vec<u8>, vaultfleet::state_machine::CaptureError> {
        self.kv.snapshot()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), vaultfleet::state_machine::RestoreError> {
        self.kv.restore(snapshot)
    }
    fn restore_from(
        &mut self,
        input: &mut dyn std::io::Read,
    ) -> Result<(), vaultfleet::state_machine::RestoreError> {
        let (lock, opened) = &RESTORE_GATE;
        let mut gate = lock.lock().unwrap_or_else(|e| e.into_inner());
        gate.1 = true;
        opened.notify_all();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !gate.0 && std::time::Instant::now() < deadline {
            gate = opened
                .wait_timeout(gate, std::time::Duration::from_millis(50))
                .unwrap()
                .0;
        }
        drop(gate);
        self.kv.restore_from(input)
    }
    fn blank(&self) -> Option<Self> {
        Some(SlowKv {
            kv: vaultfleet::KvStore::default(),
            restored: true,
        })
    }
}

/// Review 2 of the restore, R2-3: the entries that committed while a restore
/// ran apply afterwards a bounded step per turn, not back to back in one: the
/// node publishes its status (and takes its inputs: heartbeats, votes)
/// between steps. Without the bound the whole backlog applied in one turn,
/// under one published status.
#[test]
fn a_restores_backlog_applies_one_bounded_step_per_node_turn() {
    let mut fleet = Fleet::start_machine(
        three(),
        Store::SledStreamed,
        small_snapshots,
        SlowKv::default,
    );
    let leader = fleet.wait_leader();
    let behind = (1..=3).find(|&id| id != leader).unwrap_or(1);
    let client = fleet.client();
    fleet.stop(behind);
    for i in 0..200 {
        put(&client, &format!("k{i}"), "v");
    }
    fleet.restart(behind);
    *WATCHED.lock().unwrap() = Some(fleet.handle(behind));
    // The restore has begun and waits: what commits now waits behind it.
    {
        let (lock, opened) = &RESTORE_GATE;
        let mut gate = lock.lock().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !gate.1 {
            assert!(
                std::time::Instant::now() < deadline,
                "no streamed restore began"
            );
            gate = opened
                .wait_timeout(gate, std::time::Duration::from_millis(50))
                .unwrap()
                .0;
        }
    }
    let steps = 4;
    let backlog = steps * vaultfleet::replica::APPLY_BACKLOG_ENTRIES;
    for i in 0..backlog + 20 {
        put(&client, &format!("b{i}"), "v");
    }
    let commit = fleet.leader_status().commit;
    fleet.wait_until("the restoring follower to learn the commit", |f| {
        f.status(behind).commit >= commit
    });
    {
        let (lock, opened) = &RESTORE_GATE;
        lock.lock().unwrap().0 = true;
        opened.notify_all();
    }
    fleet.wait_applied(commit);
    let seen = std::mem::take(&mut *APPLIED_SEEN.lock().unwrap());
    // Applies grouped by the status published meanwhile: one group per turn.
    let mut turns: Vec<(u64, u64)> = Vec::new(); // (published, applies)
    for &(_, published) in &seen {
        match turns.last_mut() {
            Some((p, n)) if *p == published => *n += 1,
            _ => turns.push((published, 1)),
        }
    }
    let applied: u64 = turns.iter().map(|t| t.1).sum();
    assert!(
        applied > backlog,
        "the backlog applied after the restore: {applied} applies"
    );
    // A step is APPLY_BACKLOG_ENTRIES plus what joined the backlog since the
    // last (entries raft handed over only after the restore): at most twice
    // a step here, where the whole backlog is four.
    let most = turns.iter().map(|t| t.1).max().unwrap_or(0);
    assert!(
        most <= 2 * vaultfleet::replica::APPLY_BACKLOG_ENTRIES,
        "{most} entries applied in one turn; turns (published, applies): {turns:?}"
    );
    assert!(
        turns.len() >= 3,
        "the backlog applied over {} turns",
        turns.len()
    );
    assert_eq!(
        get(&client, &format!("b{}", backlog + 19)),
        Some(b"v".to_vec())
    );
}
