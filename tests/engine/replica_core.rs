//! Targeted tests of the replica core on the deterministic [`Network`] harness:
//! paths that otherwise only the randomized simulator reaches, walked one message
//! at a time (reads across a change of leader, proposals covered by snapshots,
//! corrupt committed entries).

use crate::core_harness;

use core_harness::{kv_value, Network};
use protobuf2::Message as _;
use raft::prelude::{ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType};
use vaultfleet::replica::{CorruptEntry, Output, Reply, StateDigest, STATE_DIGESTS_KEPT};
use vaultfleet::state_machine::{CaptureError, RestoreError};
use vaultfleet::wire::{self, ConfChangeContext};
use vaultfleet::{
    FleetConfig, KvStore, LogStore, MemLog, MemberSpec, Replica, ReplicaConfig, ReplicaError,
    ReplicatedSettings, RequestError, StateMachine,
};

/// Snapshots after a few entries, keeping one entry behind them, so a replica
/// that misses a handful of entries must be sent a snapshot.
fn small_snapshots(cfg: &mut ReplicaConfig) {
    cfg.snapshot_entries_min = 4;
    cfg.compaction_entries_retained = 1;
}

/// Writes through `leader` with session `client` until `leader` has compacted its
/// log past `index` (so a replica missing `index` needs a snapshot). Sequences
/// start at `sequence_first`; each write acknowledges the previous one.
fn write_until_compacted_past(net: &mut Network, leader: u64, client: u64, index: u64) {
    for sequence in 1..=64 {
        let command = KvStore::put(format!("filler-{sequence}"), "x");
        let request = net
            .propose(leader, client, sequence, sequence, command)
            .expect("propose on the leader");
        net.settle();
        assert!(matches!(net.take(request), Some(Ok(Reply::Applied(_)))));
        if net.status(leader).first_index > index + 1 {
            return;
        }
    }
    panic!("replica {leader} never compacted past index {index}");
}

/// Ticks the replicas `ids` until one of them leads in a term above `term`, and
/// stops at that moment: before the new leader has sent anything or committed an
/// entry of its term.
fn elect_without_committing(net: &mut Network, ids: &[u64], term: u64) -> u64 {
    let leader_among = |net: &Network| {
        ids.iter()
            .copied()
            .find(|&id| net.replica(id).is_leader() && net.status(id).term > term)
    };
    for _ in 0..core_harness::ELECTION_TICKS_MAX {
        for &id in ids {
            net.tick(id);
        }
        if net.run_until(|n| leader_among(n).is_some()) {
            return leader_among(net).expect("a leader");
        }
    }
    panic!("no leader among {ids:?}");
}

#[test]
fn a_read_waits_until_the_new_leader_commits_an_entry_of_its_own_term() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    let term = net.elect(1);
    let client = net.register(1);
    let put = net
        .propose(1, client, 1, 1, KvStore::put("k", "v1"))
        .unwrap();
    net.settle();
    assert_eq!(kv_value(&net.take(put).unwrap()), None);

    // Replica 1 is cut off; 2 and 3 elect a leader and stop right there.
    net.isolate(1);
    let leader = elect_without_committing(&mut net, &[2, 3], term);
    let other = if leader == 2 { 3 } else { 2 };
    let read = net.read(leader, KvStore::get("k")).unwrap();

    // The new leader's first entry goes out, but nothing is acknowledged yet: the
    // read must wait (raft-rs 0.7 would silently drop a ReadIndex now).
    net.drop_in_flight();
    net.cycle(leader);
    for _ in 0..3 {
        net.tick(leader);
        net.cycle(leader);
    }
    let s = net.status(leader);
    assert!(
        s.commit < s.last_index,
        "the new leader committed nothing yet"
    );
    assert!(
        !net.completed(read),
        "a read answered before the leader committed in its term"
    );

    // Once the follower acknowledges, the leader commits in its term and the
    // read is confirmed and served, seeing the write of the previous term.
    net.deliver_where(|m| m.from == leader && m.to == other);
    net.settle();
    assert_eq!(net.status(leader).term, s.term, "still the same leader");
    assert_eq!(
        kv_value(&net.take(read).expect("read served")),
        Some(b"v1".to_vec())
    );
}

#[test]
fn unconfirmed_reads_fail_with_not_leader_when_leadership_is_lost() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    let term = net.elect(1);
    let client = net.register(1);
    net.propose(1, client, 1, 1, KvStore::put("k", "v1"))
        .unwrap();
    net.settle();

    // A read whose ReadIndex heartbeats are lost, and one queued while the
    // leader is already cut off: neither is confirmed by a quorum.
    let awaiting_index = net.read(1, KvStore::get("k")).unwrap();
    net.cycle(1);
    net.drop_in_flight();
    net.isolate(1);
    let queued = net.read(1, KvStore::get("k")).unwrap();
    net.cycle(1);
    let leader = net.elect_among(&[2, 3], term);
    assert!(!net.completed(awaiting_index) && !net.completed(queued));

    // The old leader hears from the new one, steps down, and fails both reads
    // at once, naming the new leader (not at their timeout, not with a value).
    net.recover();
    for _ in 0..2 {
        net.tick(leader);
    }
    net.settle();
    assert!(!net.replica(1).is_leader());
    let expected = Some(Err(RequestError::NotLeader {
        leader: Some(leader),
    }));
    assert_eq!(net.take(awaiting_index), expected);
    assert_eq!(net.take(queued), expected);
}

#[test]
fn a_leader_cut_off_from_its_majority_stops_serving_reads() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.elect(1);
    let client = net.register(1);
    net.propose(1, client, 1, 1, KvStore::put("k", "v1"))
        .unwrap();
    net.settle();

    net.isolate(1);
    let read = net.read(1, KvStore::get("k")).unwrap();
    // check_quorum: without hearing from a majority for an election timeout, the
    // leader steps down, failing the read it could not confirm.
    let election_ticks = ReplicaConfig::new(1).election_ticks;
    for _ in 0..2 * election_ticks {
        net.tick(1);
        net.cycle(1);
    }
    assert!(
        !net.replica(1).is_leader(),
        "still leading without a majority"
    );
    assert!(matches!(
        net.take(read),
        Some(Err(RequestError::NotLeader { .. }))
    ));
    assert!(matches!(
        net.read(1, KvStore::get("k")),
        Err(RequestError::NotLeader { .. })
    ));
}

#[test]
fn a_proposer_that_loses_leadership_before_a_snapshot_covers_its_proposal_says_it_may_have_applied()
{
    let mut net = Network::new(&[1, 2, 3], small_snapshots);
    let term = net.elect(1);
    let client = net.register(1);
    let filler = net.register(1);

    // Replica 1 proposes, its appends reach 2 and 3, but it hears nothing back.
    let put = net
        .propose(1, client, 1, 1, KvStore::put("k", "v1"))
        .unwrap();
    net.cycle(1);
    let put_index = net.status(1).last_index;
    net.deliver_where(|m| m.from == 1);
    net.isolate(1);
    net.cycle_all();
    let leader = net.elect_among(&[2, 3], term);
    assert_eq!(
        net.replica(leader).state_machine().value(b"k"),
        Some(&b"v1"[..])
    );
    write_until_compacted_past(&mut net, leader, filler, put_index);

    // Back on the network, replica 1 steps down and catches up by snapshot.
    net.recover();
    net.tick_all(4);
    assert!(!net.replica(1).is_leader());
    assert!(
        net.status(1).first_index > put_index,
        "caught up by snapshot"
    );
    assert_eq!(net.replica(1).state_machine().value(b"k"), Some(&b"v1"[..]));
    // It answered "may still apply", never "dropped" (the command did apply).
    assert_eq!(net.take(put), Some(Err(RequestError::LeaderChanged)));
    // A retry with the same sequence gets the first apply's response: applied once.
    let retry = net
        .propose(leader, client, 1, 1, KvStore::put("k", "v1"))
        .unwrap();
    net.settle();
    assert_eq!(kv_value(&net.take(retry).unwrap()), None);
}

#[test]
fn a_follower_that_learns_a_command_from_a_snapshot_answers_its_retry_once_leader() {
    let mut net = Network::new(&[1, 2, 3], small_snapshots);
    net.elect(1);
    let client = net.register(1);
    let filler = net.register(1);
    net.isolate(3);
    let put = net
        .propose(1, client, 1, 1, KvStore::put("k", "v1"))
        .unwrap();
    net.settle();
    let put_index = net.status(1).last_index;
    assert_eq!(kv_value(&net.take(put).unwrap()), None);
    write_until_compacted_past(&mut net, 1, filler, put_index);

    net.recover();
    net.tick_all(4);
    assert!(
        net.status(3).first_index > put_index,
        "replica 3 never held the entry; it learned it from a snapshot"
    );
    net.replica_mut(1).transfer_leader(3);
    net.settle();
    net.tick_all(2);
    assert!(net.replica(3).is_leader());

    // The retry is answered from the session table the snapshot carried: the
    // first apply's response ("absent"), not a second apply ("was v1").
    let retry = net
        .propose(3, client, 1, 1, KvStore::put("k", "v1"))
        .unwrap();
    net.settle();
    assert_eq!(kv_value(&net.take(retry).unwrap()), None);
    let next = net
        .propose(3, client, 2, 2, KvStore::put("k", "v2"))
        .unwrap();
    net.settle();
    assert_eq!(kv_value(&net.take(next).unwrap()), Some(b"v1".to_vec()));
}

#[test]
fn a_leader_that_installs_a_snapshot_covering_its_proposal_answers_it_from_the_snapshot() {
    let mut net = Network::new(&[1, 2, 3], small_snapshots);
    let term = net.elect(1);
    let client = net.register(1);
    let filler = net.register(1);
    let put = net
        .propose(1, client, 1, 1, KvStore::put("k", "v1"))
        .unwrap();
    net.cycle(1);
    let put_index = net.status(1).last_index;
    net.deliver_where(|m| m.from == 1);
    net.isolate(1);
    net.cycle_all();
    let leader = net.elect_among(&[2, 3], term);
    write_until_compacted_past(&mut net, leader, filler, put_index);

    // The new leader's snapshot reaches replica 1 while it still believes it
    // leads with the proposal in flight: the first message it hears of the new
    // term, stepped in the same Ready cycle as its loss of leadership.
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    m.from = leader;
    m.to = 1;
    m.term = net.status(leader).term;
    m.set_snapshot(net.replica(leader).store().latest_snapshot().clone());
    assert!(net.replica(1).is_leader());
    net.replica_mut(1).step(m).expect("step the snapshot");
    net.cycle(1);
    assert!(net.failures.is_empty());
    assert_eq!(
        net.take(put),
        Some(Ok(Reply::Applied(
            KvStore::decode_response_bytes(None).into()
        ))),
        "answered with the response the snapshot's session table holds"
    );
}

/// Steps into replica 2 an append from leader 1 carrying a committed
/// membership change (add learner 4) with `context`, and returns the failure.
fn commit_conf_change_with_context(context: Vec<u8>) -> (Network, u64, Option<ReplicaError>) {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    let term = net.elect(1);
    net.heartbeat(1);
    let last = net.status(2).last_index;
    assert_eq!(net.status(2).applied, last);
    let mut cc = ConfChangeV2::default();
    cc.set_changes(
        vec![raft_proto::new_conf_change_single(
            4,
            ConfChangeType::AddLearnerNode,
        )]
        .into(),
    );
    let mut entry = Entry::default();
    entry.set_entry_type(EntryType::EntryConfChangeV2);
    entry.index = last + 1;
    entry.term = term;
    entry.data = cc.write_to_bytes().unwrap().into();
    entry.context = context.into();
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.from = 1;
    m.to = 2;
    m.term = term;
    m.index = last;
    m.log_term = raft::Storage::term(net.replica(2).store(), last).unwrap();
    m.commit = last + 1;
    m.set_entries(vec![entry].into());
    net.replica_mut(2).step(m).expect("step the append");
    net.cycle(2);
    let failure = net.failures.remove(&2);
    (net, last, failure)
}

/// Starts replica 2 of a fleet of three on a store whose log holds, committed
/// after the bootstrap snapshot, a membership change (add learner 4) with
/// `context`, and runs its first Ready cycle. Returns the replica, the index
/// before the change and the failure. A peer can no longer send such an entry
/// (the intake refuses it: `tests/engine/hostile_peer.rs`,
/// `finding_8_append_with_undecodable_membership_change_is_refused` and
/// `finding_8_append_adding_an_unlabelled_learner_is_refused`), so it comes
/// from the replica's own store, as a corrupt disk would hand it over.
fn committed_conf_change_on_disk(
    context: Vec<u8>,
) -> (Replica<MemLog, KvStore>, u64, Option<ReplicaError>) {
    let fleet = FleetConfig::new(
        [1, 2, 3]
            .iter()
            .map(|&id| MemberSpec::voter(id, format!("dc-{id}")))
            .collect(),
    );
    let mut store = MemLog::new();
    assert!(Replica::bootstrap(&mut store, &KvStore::new(), &fleet).unwrap());
    let last = raft::Storage::last_index(&store).unwrap();
    let mut cc = ConfChangeV2::default();
    cc.set_changes(
        vec![raft_proto::new_conf_change_single(
            4,
            ConfChangeType::AddLearnerNode,
        )]
        .into(),
    );
    let mut entry = Entry::default();
    entry.set_entry_type(EntryType::EntryConfChangeV2);
    entry.index = last + 1;
    entry.term = 1;
    entry.data = cc.write_to_bytes().unwrap().into();
    entry.context = context.into();
    store.append(&[entry]).unwrap();
    let mut hs = store.hard_state().clone();
    hs.term = 1;
    hs.commit = last + 1;
    store.set_hard_state(&hs).unwrap();
    store.sync().unwrap();
    let mut replica = Replica::new(core_harness::test_config(2), store, KvStore::new()).unwrap();
    let failure = replica.handle_ready(&mut Output::default()).err();
    (replica, last, failure)
}

#[test]
fn a_committed_membership_change_with_a_malformed_context_stops_the_replica() {
    let (replica, last, failure) = committed_conf_change_on_disk(b"\xff\xff\xff".to_vec());
    assert!(
        matches!(
            failure,
            Some(ReplicaError::CorruptEntry { id: 2, index, source: CorruptEntry::ConfChangeContext(_) })
                if index == last + 1
        ),
        "{failure:?}"
    );
    assert!(
        replica.has_failed(),
        "the replica must stop, not apply past it"
    );
    assert_eq!(replica.status().applied, last, "the change was not applied");
    assert!(!replica.members().contains_key(&4));
    assert_eq!(replica.status().learners, Vec::<u64>::new());
}

#[test]
fn a_committed_learner_addition_without_a_label_stops_the_replica() {
    let empty = wire::encode(&ConfChangeContext::new()).unwrap();
    let (replica, _, failure) = committed_conf_change_on_disk(empty);
    assert!(
        matches!(
            failure,
            Some(ReplicaError::CorruptEntry {
                source: CorruptEntry::MissingLabel { member: 4 },
                ..
            })
        ),
        "{failure:?}"
    );
    assert!(replica.has_failed());
}

#[test]
fn a_well_formed_committed_learner_addition_applies_with_its_label() {
    let mut context = ConfChangeContext::new();
    let mut m = wire::Member::new();
    m.id = 4;
    m.datacenter = "dc-4".into();
    context.members.push(m);
    let (net, _, failure) = commit_conf_change_with_context(wire::encode(&context).unwrap());
    assert!(failure.is_none(), "{failure:?}");
    let replica = net.replica(2);
    assert_eq!(replica.members().get(&4).map(String::as_str), Some("dc-4"));
    assert_eq!(replica.status().learners, vec![4]);
}

/// Set while [`Unsnapshottable`] cannot capture its state.
static SNAPSHOTS_FAIL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A [`KvStore`] whose snapshot fails while [`SNAPSHOTS_FAIL`] is set: a state
/// that has outgrown what one snapshot can hold. Only the test below uses it.
#[derive(Default)]
struct Unsnapshottable(KvStore);

impl StateMachine for Unsnapshottable {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        self.0.apply(index, command)
    }
    fn query(&self, query: &[u8]) -> Vec<u8> {
        self.0.query(query)
    }
    fn snapshot(&self) -> Result<Vec<u8>, CaptureError> {
        if SNAPSHOTS_FAIL.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(CaptureError::Other("the state outgrew one snapshot".into()));
        }
        self.0.snapshot()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        self.0.restore(snapshot)
    }
}

#[test]
fn a_state_machine_that_cannot_snapshot_leaves_the_log_uncompacted_and_the_fleet_running() {
    let mut net = Network::with_machine(&[1, 2, 3], small_snapshots, Unsnapshottable::default);
    let leader = 1;
    net.elect(leader);
    let client = net.register(leader);
    let first_before: Vec<u64> = net
        .ids()
        .iter()
        .map(|&id| net.status(id).first_index)
        .collect();
    SNAPSHOTS_FAIL.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut sequence = 0;
    let mut write = |net: &mut Network<Unsnapshottable>, n: u64| {
        for _ in 0..n {
            sequence += 1;
            let command = KvStore::put(format!("key-{sequence}"), "v");
            let request = net
                .propose(leader, client, sequence, sequence, command)
                .expect("propose on the leader");
            net.settle();
            assert!(
                matches!(net.take(request), Some(Ok(Reply::Applied(_)))),
                "write {sequence} was not applied"
            );
        }
    };
    write(&mut net, 24);
    assert!(
        net.failures.is_empty(),
        "a replica stopped: {:?}",
        net.failures
    );
    for (&id, &before) in net.ids().iter().zip(&first_before) {
        let r = net.replica(id);
        assert!(
            r.snapshots_failed() >= 1,
            "replica {id} never tried to snapshot"
        );
        assert_eq!(
            net.status(id).first_index,
            before,
            "replica {id} compacted its log without a snapshot"
        );
    }
    // The failure is retried, not hammered: at most once per `snapshot_entries_min`.
    let failed = net.replica(leader).snapshots_failed();
    assert!(failed <= 24 / 4 + 1, "{failed} attempts for 24 entries");
    // Once the machine can capture its state again, the log is compacted.
    SNAPSHOTS_FAIL.store(false, std::sync::atomic::Ordering::SeqCst);
    write(&mut net, 8);
    for (&id, &before) in net.ids().iter().zip(&first_before) {
        assert!(
            net.status(id).first_index > before,
            "replica {id} did not compact once snapshots worked again"
        );
    }
}

#[test]
fn review_a_membership_beyond_members_max_is_refused_by_the_leader() {
    // Intake refuses every snapshot whose membership exceeds MEMBERS_MAX, so a
    // change that grew the fleet past it would leave every new member, and every
    // follower that needs a snapshot, stranded. The leader refuses the change.
    use vaultfleet::config::MEMBERS_MAX;
    use vaultfleet::replica::{ConfChangeRejection, MembershipChange};
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.elect(1);
    // Request ids far above the harness's own, which count from 1.
    let mut request = 1_000_000;
    let mut learner = 100;
    let refused = loop {
        request += 1;
        learner += 1;
        let change = MembershipChange::AddLearner {
            id: learner,
            datacenter: format!("dc-{learner}"),
        };
        match net.replica_mut(1).change_membership(request, change) {
            Ok(()) => net.settle(),
            Err(e) => break e,
        }
        assert!(
            learner < 100 + MEMBERS_MAX as u64,
            "no refusal at the limit"
        );
    };
    let members = {
        let s = net.status(1);
        s.voters.len() + s.learners.len()
    };
    assert_eq!(members, MEMBERS_MAX, "the fleet grew to exactly the limit");
    assert!(
        matches!(
            refused,
            RequestError::ConfChangeRejected(ConfChangeRejection::TooManyMembers { members: m })
                if m == MEMBERS_MAX
        ),
        "{refused:?}"
    );
    assert!(net.failures.is_empty(), "{:?}", net.failures);
}

/// The session limits are the fleet's, not each replica's: replicas whose own
/// configs say 4096 and 1 both keep exactly the bootstrap's 2 sessions, so a
/// retried request gets the same answer whichever of them leads. (Before the
/// limits were replicated, replica 1 kept all three sessions and replica 2
/// only the newest.)
#[test]
fn session_limits_come_from_the_bootstrap_not_from_each_replicas_config() {
    let fleet = FleetConfig::new(vec![
        MemberSpec::voter(1, "dc-1"),
        MemberSpec::voter(2, "dc-2"),
        MemberSpec::voter(3, "dc-3"),
    ])
    .with_settings(ReplicatedSettings {
        sessions_max: 2,
        session_responses_max: 8,
    });
    let mut net = Network::with_fleet(
        &fleet,
        |cfg| {
            cfg.sessions_max = match cfg.id {
                1 => 4096,
                2 => 1,
                _ => 100,
            }
        },
        KvStore::new,
    );
    net.elect(1);
    let first = net.register(1);
    let second = net.register(1);
    let third = net.register(1);
    // Replica 1 leads: the oldest session was evicted under the fleet's limit.
    let request = net
        .propose(1, first, 1, 1, KvStore::put("k", "first"))
        .expect("propose");
    net.settle();
    assert!(
        matches!(
            net.take(request),
            Some(Err(RequestError::SessionExpired { .. }))
        ),
        "replica 1 kept a third session"
    );
    // Replica 2 leads: the two newest sessions are both still there.
    net.replica_mut(1).transfer_leader(2);
    net.settle();
    net.tick_all(2);
    assert!(net.replica(2).is_leader());
    for (client, value) in [(second, "second"), (third, "third")] {
        let request = net
            .propose(2, client, 1, 1, KvStore::put("k", value))
            .expect("propose");
        net.settle();
        assert!(
            matches!(net.take(request), Some(Ok(Reply::Applied(_)))),
            "replica 2 lost session {client}"
        );
    }
}

/// A snapshot whose replicated limits are out of range is refused before
/// anything of it is applied.
#[test]
fn replicated_settings_out_of_range_are_refused_at_bootstrap() {
    // Zero; and each limit at its maximum together (a table without a bound
    // that fits in memory; from the review of the replicated limits).
    for (sessions_max, session_responses_max) in [
        (0, 8),
        (
            vaultfleet::config::REPLICATED_SESSIONS_MAX,
            vaultfleet::config::REPLICATED_SESSION_RESPONSES_MAX,
        ),
    ] {
        let fleet = FleetConfig::new(vec![MemberSpec::voter(1, "dc-1")]).with_settings(
            ReplicatedSettings {
                sessions_max,
                session_responses_max,
            },
        );
        let mut store = MemLog::new();
        let r = Replica::bootstrap(&mut store, &KvStore::new(), &fleet);
        assert!(matches!(r, Err(ReplicaError::Fleet { .. })), "{r:?}");
        assert_eq!(
            raft::Storage::last_index(&store).unwrap(),
            0,
            "nothing was written"
        );
    }
}

/// Marks a state digest on `leader` and settles; the leader's answer.
fn mark_state_digest(net: &mut Network, leader: u64, request: u64) -> StateDigest {
    net.replica_mut(leader)
        .mark_state_digest(request)
        .expect("mark on the leader");
    // No tick: the leader that applies its own marker sends a heartbeat
    // carrying its commit at once (commits are not broadcast otherwise), so
    // every follower digests the marker within the settle.
    net.settle();
    match net.take(request) {
        Some(Ok(Reply::StateDigest(d))) => d,
        other => panic!("a marker answered {other:?}"),
    }
}

/// Every replica's digest at `index` (`None`: it has none).
fn digests_at(net: &Network, index: u64) -> Vec<Option<[u8; 32]>> {
    net.ids()
        .into_iter()
        .map(|id| {
            net.status(id)
                .state_digests
                .iter()
                .find(|d| d.index == index)
                .map(|d| d.digest)
        })
        .collect()
}

fn write(net: &mut Network, leader: u64, client: u64, sequence: u64, key: &str) {
    let put = net
        .propose(leader, client, sequence, sequence, KvStore::put(key, "v"))
        .expect("propose on the leader");
    net.settle();
    assert!(matches!(net.take(put), Some(Ok(Reply::Applied(_)))));
}

#[test]
fn every_replica_digests_its_state_at_a_marker_and_the_digest_follows_the_state() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.elect(1);
    let client = net.register(1);
    for sequence in 1..=3 {
        write(&mut net, 1, client, sequence, &format!("k{sequence}"));
    }
    // Only the leader takes a marker.
    assert!(matches!(
        net.replica_mut(2).mark_state_digest(1_000_000),
        Err(RequestError::NotLeader { leader: Some(1) })
    ));
    let first = mark_state_digest(&mut net, 1, 1_000_001);
    assert_eq!(first.index, net.status(1).applied, "the marker's own index");
    assert_eq!(digests_at(&net, first.index), vec![Some(first.digest); 3]);
    assert_eq!(first.hex().len(), 64);

    // Nothing changed: a second marker gives the same digest (the index is
    // not hashed), at another index.
    let again = mark_state_digest(&mut net, 1, 1_000_002);
    assert!(again.index > first.index);
    assert_eq!(again.digest, first.digest);

    // More writes: the digest moves with the state, alike on every replica.
    for sequence in 4..=5 {
        write(&mut net, 1, client, sequence, &format!("k{sequence}"));
    }
    let second = mark_state_digest(&mut net, 1, 1_000_003);
    assert_ne!(second.digest, first.digest, "the digest is not constant");
    assert_eq!(digests_at(&net, second.index), vec![Some(second.digest); 3]);
    // Earlier digests are kept, ascending, with the newest last.
    let kept = net.status(3).state_digests;
    let indexes: Vec<u64> = kept.iter().map(|d| d.index).collect();
    assert_eq!(indexes, [first.index, again.index, second.index]);

    // At most STATE_DIGESTS_KEPT, the newest ones.
    let mut last = second;
    for n in 0..STATE_DIGESTS_KEPT as u64 {
        last = mark_state_digest(&mut net, 1, 1_000_100 + n);
    }
    for id in net.ids() {
        let kept = net.status(id).state_digests;
        assert_eq!(kept.len(), STATE_DIGESTS_KEPT);
        assert_eq!(kept.last(), Some(&last));
        assert!(kept.windows(2).all(|w| w[0].index < w[1].index));
        assert!(kept.iter().all(|d| d.digest == second.digest));
    }
}

#[test]
fn a_replica_with_diverged_state_reports_a_different_digest_at_the_same_index() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    // Replica 3 is rebuilt by hand: bootstrapped from a store holding one
    // key the others never had (a diverged state machine).
    let fleet = FleetConfig::new(
        [1, 2, 3]
            .iter()
            .map(|&id| MemberSpec::voter(id, format!("dc-{id}")))
            .collect(),
    );
    let mut diverged = KvStore::new();
    diverged.apply(1, &KvStore::put("only-on-3", "x"));
    let mut store = MemLog::new();
    assert!(Replica::bootstrap(&mut store, &diverged, &fleet).unwrap());
    let replica =
        Replica::new(core_harness::test_config(3), store, diverged.clone()).expect("start");
    net.replicas.insert(3, replica);

    net.elect(1);
    let client = net.register(1);
    write(&mut net, 1, client, 1, "k");
    let marker = mark_state_digest(&mut net, 1, 1_000_001);
    let digests = digests_at(&net, marker.index);
    assert_eq!(digests[0], Some(marker.digest));
    assert_eq!(digests[1], Some(marker.digest), "replicas 1 and 2 agree");
    let three = digests[2].expect("replica 3 applied the marker");
    assert_ne!(three, marker.digest, "replica 3 differs");
    // The same log applied: every replica is at the same index.
    let applied: Vec<u64> = net.ids().iter().map(|&id| net.status(id).applied).collect();
    assert_eq!(applied, vec![marker.index; 3]);
}

/// A store bootstrapped before the session limits were replicated (its
/// snapshots carry 0 and 0) keeps this replica's own config limits, and its
/// later snapshots still say "not replicated": a replica's own values never
/// pass themselves off as the group's (from the review of the replicated
/// limits: they were written into the next snapshot, and frozen there).
#[test]
fn a_store_from_before_replicated_limits_never_writes_its_own_limits_as_the_groups() {
    let fleet = FleetConfig::new(vec![MemberSpec::voter(1, "dc-1")]);
    let legacy = |store: &mut MemLog| {
        let mut snap = store.latest_snapshot().clone();
        let mut payload: wire::SnapshotPayload =
            wire::decode(&snap.data, "snapshot payload").expect("decode");
        payload.sessions_max = 0;
        payload.session_responses_max = 0;
        snap.data = wire::encode(&payload).expect("encode").into();
        let mut fresh = MemLog::new();
        fresh.apply_snapshot(&snap).expect("the legacy snapshot");
        *store = fresh;
    };
    let mut net = Network::with_fleet_prepared(
        &fleet,
        legacy,
        |cfg| {
            cfg.sessions_max = 2;
            small_snapshots(cfg);
        },
        KvStore::new,
    );
    net.elect(1);
    let first = net.register(1);
    let _second = net.register(1);
    let third = net.register(1);
    // The replica's own limit (2) applies: the oldest session is gone.
    let request = net
        .propose(1, first, 1, 1, KvStore::put("k", "v"))
        .expect("propose");
    net.settle();
    assert!(matches!(
        net.take(request),
        Some(Err(RequestError::SessionExpired { .. }))
    ));
    write_until_compacted_past(&mut net, 1, third, 8);
    let snap = net.replica(1).store().latest_snapshot();
    assert!(snap.get_metadata().index > 1, "the log was compacted");
    let payload: wire::SnapshotPayload =
        wire::decode(&snap.data, "snapshot payload").expect("decode");
    assert_eq!(
        (payload.sessions_max, payload.session_responses_max),
        (0, 0),
        "a legacy replica wrote its own limits into a snapshot as the group's"
    );
}

/// One state digest marker at a time: a second one while the first is queued
/// or in flight is refused as `Overloaded` (each makes every replica capture
/// its whole state; from the review of compare-state). Once the first is
/// applied, the next is accepted.
#[test]
fn a_second_state_digest_marker_while_one_is_pending_is_refused() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.elect(1);
    net.replica_mut(1)
        .mark_state_digest(2_000_001)
        .expect("the first marker");
    assert_eq!(
        net.replica_mut(1).mark_state_digest(2_000_002),
        Err(RequestError::Overloaded),
        "a second marker while the first is queued"
    );
    net.cycle(1);
    assert_eq!(
        net.replica_mut(1).mark_state_digest(2_000_003),
        Err(RequestError::Overloaded),
        "a second marker while the first is in flight"
    );
    net.settle();
    assert!(net.completed(2_000_001));
    net.replica_mut(1)
        .mark_state_digest(2_000_004)
        .expect("the next marker once the first is applied");
}

/// A leader that commits its own removal while a write is queued (review R4
/// of the fix for simulator seed 2476): the removal of replica 1 is proposed on
/// leader 2 and reaches 1 and 3, then 1 wins the next term with it in its log
/// and commits it while a client write waits to be flushed. The cycle that
/// applies the removal also persists the write, and raft-rs's
/// `on_persist_entries` unwrapped the leader's own progress, which the removal
/// had just dropped: a panic, before a step-down at the end of the cycle could
/// run. The replica now steps down the moment it applies its removal.
#[test]
fn r4_a_leader_committing_its_own_removal_with_a_write_queued_steps_down() {
    use vaultfleet::replica::MembershipChange;
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.elect(2);
    let client = net.register(2);
    net.replica_mut(2)
        .change_membership(1_000_001, MembershipChange::Remove { id: 1 })
        .unwrap();
    net.cycle(2);
    let removal = net.status(2).last_index;
    // The removal reaches 1 and 3; their acknowledgements never reach 2.
    net.deliver_where(|m| m.from == 2);
    net.cycle(1);
    net.cycle(3);
    net.drop_in_flight();
    net.isolate(2);
    let term = net.status(2).term;
    // 2 hands leadership to 1 (as an operator's transfer would: it announces
    // the transfer to 3, and tells 1 to campaign), then is cut off: 1 wins
    // the next term with the removal in its log, uncommitted.
    hand_over(&mut net, 2, 1, term);
    let led = net.run_until(|n| n.replica(1).is_leader() && n.status(1).term > term);
    assert!(
        led,
        "replica 1 never led: 1 {:?} 3 {:?}",
        net.status(1),
        net.status(3)
    );
    assert!(
        net.status(1).voters.contains(&1),
        "the removal is not applied yet"
    );
    // 3's acknowledgement commits the removal (stepped, not yet applied);
    // then a write is queued, so the cycle that applies the removal also
    // appends and persists the write.
    assert!(net.run_until(|n| n.status(1).commit >= removal));
    assert!(net.status(1).voters.contains(&1), "applied too early");
    let write = net.propose(1, client, 1, 1, b"k=v".to_vec()).unwrap();
    net.cycle(1);
    assert!(net.failures.is_empty(), "{:?}", net.failures);
    net.settle();
    assert!(net.failures.is_empty(), "{:?}", net.failures);
    assert!(
        !net.replica(1).is_leader(),
        "the removed replica still leads"
    );
    assert!(!net.status(3).voters.contains(&1));
    // The write's outcome is unknown to its client (leadership changed): it
    // fails as on any loss of leadership, never silently.
    assert!(matches!(net.take(write), Some(Err(_)) | Some(Ok(_))));
    // The fleet carries on with 2 and 3.
    net.recover();
    let leader = net.elect_among(&[2, 3], term);
    assert!(leader == 2 || leader == 3);
}

/// While raft hands leadership over it drops every proposal; reads are not
/// proposals and go on, and the replica is not left busy.
#[test]
fn reads_go_on_during_a_pending_leadership_transfer() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.elect(1);
    let client = net.register(1);
    // A transfer to a replica that cannot answer stays pending.
    net.isolate(3);
    net.replica_mut(1).transfer_leader(3);
    net.settle();
    let write = net
        .propose(1, client, 1, 1, KvStore::put("k", "v"))
        .expect("queued");
    let read = net.read(1, KvStore::get("k")).expect("queued");
    net.settle();
    assert!(!net.replica(1).has_ready());
    assert!(net.completed(read), "the read went on");
    assert!(
        matches!(net.take(write), Some(Err(RequestError::Dropped))),
        "raft drops a write during a transfer"
    );
    // The transfer aborts after an election timeout; writes go in again.
    net.tick_all(15);
    assert!(net.replica(1).is_leader());
    let write = net
        .propose(1, client, 2, 2, KvStore::put("k", "v"))
        .expect("queued");
    net.settle();
    assert!(matches!(net.take(write), Some(Ok(Reply::Applied(_)))));
}

/// Review 3 of the restore (outside R2-2), and review 5 of the announced
/// transfers: raft-rs drops every proposal while a leadership transfer is in
/// progress, and starts one whenever a voter asks for leadership for itself;
/// voters that asked and never campaigned stalled every write, and with
/// announced transfers a voter that asked would be elected at will. Every
/// ask is refused, by the leader and by followers, and no write is dropped.
#[test]
fn voters_asking_for_leadership_are_refused_and_drop_no_write() {
    use vaultfleet::replica::StepRefusal;
    let mut net = Network::new(&[1, 2, 3, 4, 5], |_| {});
    net.elect(1);
    let client = net.register(1);
    let term = net.status(1).term;
    let total = 300;
    let mut dropped = 0;
    for seq in 1..=total {
        let asker = 2 + seq % 2;
        for to in [1, 4] {
            let refusal = net
                .replica_mut(to)
                .step(ask_from(asker, to, term))
                .expect_err("an ask is refused");
            assert!(
                matches!(refusal.reason, StepRefusal::TransferAskRefused { from } if from == asker),
                "{refusal}"
            );
        }
        if !put_on_leader(&mut net, client, seq) {
            dropped += 1;
        }
        net.tick_all(1);
        assert!(net.replica(1).is_leader(), "{:?}", net.status(1));
    }
    assert_eq!(dropped, 0, "writes dropped by transfers a voter asked for");
    assert_eq!(net.status(1).term, term);
}

/// A follower's `transfer_leader` does nothing: raft-rs would forward it to
/// the leader as an ask, which is refused.
#[test]
fn transfer_leader_on_a_follower_sends_nothing() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.elect(1);
    net.settle();
    net.replica_mut(2).transfer_leader(2);
    net.cycle(2);
    assert!(
        !net.in_flight
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgTransferLeader),
        "{:?}",
        net.in_flight
    );
}

/// Puts `k{seq}` through leader 1 and settles; whether it was applied (a
/// leader drops proposals while a transfer is in progress).
fn put_on_leader(net: &mut Network, client: u64, seq: u64) -> bool {
    let put = KvStore::put(format!("k{seq}"), "v");
    let request = net.propose(1, client, seq, seq, put).expect("propose");
    net.settle();
    matches!(net.take(request), Some(Ok(_)))
}

/// `from`'s ask to `to` for leadership (a `MsgTransferLeader` naming
/// itself, as raft-rs forwards one), at `term`.
fn ask_from(from: u64, to: u64, term: u64) -> Message {
    let mut ask = Message::default();
    ask.set_msg_type(MessageType::MsgTransferLeader);
    ask.from = from;
    ask.to = to;
    ask.term = term;
    ask
}

/// Review 4: a voter in a preferred datacenter that acknowledges everything
/// but never campaigns made rebalancing stall writes for an election timeout
/// every rebalance period. A transfer the leader starts itself that fails
/// backs its target off too. With the default settings rebalancing also
/// tries again after a failure (it never did: raft's check-quorum had just
/// cleared `recent_active` on every rebalance tick).
#[test]
fn rebalancing_backs_off_from_a_preferred_voter_that_never_campaigns() {
    let mut net = Network::new(&[1, 2, 3], |rc| {
        rc.leader_rebalance_ticks = ReplicaConfig::new(1).leader_rebalance_ticks;
        rc.preferred_leader_datacenters = vec!["dc-2".to_string()];
    });
    net.elect(1);
    let client = net.register(1);
    let ticks = 600;
    let (mut transfers, mut dropped) = (0, 0);
    for seq in 1..=ticks {
        for id in net.ids() {
            net.tick(id);
        }
        // 2 takes everything but a MsgTimeoutNow.
        for _ in 0..core_harness::SETTLE_ROUNDS_MAX {
            net.cycle_all();
            let before = net.in_flight.len();
            net.in_flight
                .retain(|m| !(m.get_msg_type() == MessageType::MsgTimeoutNow && m.to == 2));
            transfers += before - net.in_flight.len();
            if net.in_flight.is_empty() {
                break;
            }
            while net.deliver_one() {}
        }
        let put = KvStore::put(format!("k{seq}"), "v");
        let request = net.propose(1, client, seq, seq, put).expect("propose");
        for _ in 0..core_harness::SETTLE_ROUNDS_MAX {
            net.cycle_all();
            net.in_flight
                .retain(|m| !(m.get_msg_type() == MessageType::MsgTimeoutNow && m.to == 2));
            if net.in_flight.is_empty() {
                break;
            }
            while net.deliver_one() {}
        }
        if !matches!(net.take(request), Some(Ok(_))) {
            dropped += 1;
        }
        assert!(net.replica(1).is_leader(), "{:?}", net.status(1));
    }
    // Every 20 ticks without the back-off (30 tries); with it, tries at
    // about 20, 40, 80, 140, 240, 420.
    assert!(
        (3..=9).contains(&transfers),
        "{transfers} transfers to the voter that never campaigns in {ticks} ticks"
    );
    assert!(dropped < ticks / 5, "{dropped} of {ticks} writes dropped");
}

/// Seed 40740 of the streamed vault swarm: transfers to the preferred voter
/// while it was cut off timed out one after another, and each counted as its
/// failure, so rebalancing left it out for 32 election timeouts after the
/// partition healed. raft-rs sends `MsgTimeoutNow` only to a transferee that
/// has matched the leader's log, so such a transfer asked nothing of its
/// target and does not back it off; once the voter catches up, rebalancing
/// hands it leadership within a rebalance period or two.
#[test]
fn transfers_that_end_before_their_target_caught_up_do_not_back_it_off() {
    let rebalance = ReplicaConfig::new(1).leader_rebalance_ticks as usize;
    let mut net = Network::new(&[1, 2, 3], |rc| {
        rc.leader_rebalance_ticks = rebalance as u64;
        rc.preferred_leader_datacenters = vec!["dc-2".to_string()];
    });
    net.elect(1);
    let client = net.register(1);
    net.isolate(2);
    for seq in 1..=3 {
        assert!(put_on_leader(&mut net, client, seq), "put {seq} without 2");
    }
    let election = core_harness::test_config(1).election_ticks;
    for attempt in 1..=6 {
        net.replica_mut(1).transfer_leader(2);
        // Past the transfer's election timeout (only 1 and 3 tick, so 2
        // stays a follower and nobody else campaigns).
        for _ in 0..election + 2 {
            net.tick(1);
            net.tick(3);
            net.settle();
        }
        assert!(net.replica(1).is_leader(), "{:?}", net.status(1));
        assert_eq!(
            net.replica(1).rebalance_back_off_ticks(2),
            0,
            "transfer {attempt} to a voter that never caught up backed it off"
        );
    }
    net.recover();
    let mut ticks = 0;
    while !net.replica(2).is_leader() {
        assert!(
            ticks < 3 * rebalance,
            "the caught-up preferred voter did not get leadership in {ticks} ticks: {:?}",
            net.status(1)
        );
        net.tick_all(1);
        ticks += 1;
    }
}

/// Review 4: while a transfer to one voter is in progress, another voter's
/// ask is refused rather than replacing it (raft-rs would abort the first).
#[test]
fn an_ask_during_another_voters_transfer_is_refused_and_that_transfer_goes_on() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.elect(1);
    let term = net.status(1).term;
    net.replica_mut(1).transfer_leader(3);
    match net.replica_mut(1).step(ask_from(2, 1, term)) {
        Err(e) => assert!(
            matches!(
                e.reason,
                vaultfleet::replica::StepRefusal::TransferAskRefused { from: 2 }
            ),
            "{e}"
        ),
        Ok(()) => panic!("2's ask replaced the transfer to 3"),
    }
    net.settle();
    net.tick_all(2);
    assert!(net.replica(3).is_leader(), "{:?}", net.status(3));
}

/// A transfer decline from `from` to `leader` at `term`, echoing transfer
/// number `number`.
fn decline_from(from: u64, leader: u64, term: u64, number: u64) -> Message {
    let mut decline = Message::default();
    decline.index = number;
    decline.set_msg_type(MessageType::MsgTransferLeader);
    decline.from = from;
    decline.to = leader;
    decline.term = term;
    decline.context = vaultfleet::replica::TRANSFER_DECLINED.to_vec().into();
    decline
}

/// Review 5: a voter that asked for leadership, declined its own transfer
/// just before it timed out and asked again kept a transfer (and the
/// dropping of every proposal) going for ever. Asks are refused, and a
/// decline of no transfer in progress is stale: nothing is dropped.
#[test]
fn a_voter_that_asks_and_declines_in_a_loop_drops_no_write() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.elect(1);
    let client = net.register(1);
    let term = net.status(1).term;
    net.cut(1, 2);
    let total = 300;
    let mut dropped = 0;
    for seq in 1..=total {
        net.tick_all(1);
        // Whatever transfer number it echoes (0: a build before the stamp).
        for number in 0..8 {
            let _ = net.replica_mut(1).step(decline_from(2, 1, term, number));
        }
        let _ = net.replica_mut(1).step(ask_from(2, 1, term));
        if !put_on_leader(&mut net, client, seq) {
            dropped += 1;
        }
        assert!(net.replica(1).is_leader(), "{:?}", net.status(1));
    }
    assert_eq!(dropped, 0, "{dropped} of {total} writes dropped");
}

/// Review 5: raft-rs resets the leader's election clock at each transfer it
/// starts, so the same ask/decline loop kept a leader cut off from the
/// majority from ever running its check-quorum: it stayed leader beside a
/// newer one (with lease reads, answering from its own stale state). Backed
/// off, the loop stops and the old leader steps down.
#[test]
fn a_transfer_loop_does_not_keep_an_isolated_leader_leading() {
    let mut net = Network::new(&[1, 2, 3, 4, 5], |rc| rc.lease_reads = true);
    net.elect(1);
    let term = net.status(1).term;
    for other in [3, 4, 5] {
        net.cut(1, other);
        net.cut(2, other);
    }
    for _ in 0..200 {
        net.tick_all(1);
        if net.replica(1).is_leader() {
            for number in 0..8 {
                let _ = net.replica_mut(1).step(decline_from(2, 1, term, number));
            }
            let _ = net.replica_mut(1).step(ask_from(2, 1, term));
        }
        for _ in 0..core_harness::SETTLE_ROUNDS_MAX {
            net.cycle_all();
            net.in_flight
                .retain(|m| !(m.get_msg_type() == MessageType::MsgTimeoutNow && m.to == 2));
            if net.in_flight.is_empty() {
                break;
            }
            while net.deliver_one() {}
        }
    }
    assert!(
        !net.replica(1).is_leader(),
        "1 never stepped down: {:?}",
        net.status(1)
    );
}

/// The simulator's seed 569 (vault, membership, streamed): two voters of
/// five were lost for good, and the operator's removal of a healthy voter
/// committed, leaving four voters with two lost: no majority, for good. A
/// leader refuses to remove a voter when fewer than a majority of the voters
/// left are ones it heard from within an election timeout (etcd's strict
/// reconfiguration check); removing a silent one is still taken.
#[test]
fn a_removal_that_would_leave_no_heard_majority_is_refused() {
    use vaultfleet::replica::{ConfChangeRejection, MembershipChange};
    let mut net = Network::new(&[1, 2, 3, 4, 5], |_| {});
    net.elect(1);
    net.isolate(2);
    net.isolate(4);
    net.tick_all(15);
    assert!(net.replica(1).is_leader(), "{:?}", net.status(1));
    match net
        .replica_mut(1)
        .change_membership(1_000_001, MembershipChange::Remove { id: 5 })
    {
        Err(RequestError::ConfChangeRejected(ConfChangeRejection::QuorumAtRisk {
            active: 2,
            voters: 4,
        })) => {}
        other => panic!("removing a heard voter was not refused: {other:?}"),
    }
    net.replica_mut(1)
        .change_membership(1_000_002, MembershipChange::Remove { id: 2 })
        .expect("removing a silent voter keeps a heard majority");
    net.settle();
    assert!(net.completed(1_000_002), "the removal committed");
    assert_eq!(net.status(1).voters, vec![1, 3, 4, 5]);
}

/// Review of the check: only an answer to the leader in its term counts as
/// heard. A voter that can send to the leader but not receive from it (its
/// pre-votes reach the leader) no longer makes a removal look safe.
#[test]
fn a_voter_that_only_sends_is_not_counted_as_heard() {
    use vaultfleet::replica::{ConfChangeRejection, MembershipChange};
    let mut net = Network::new(&[1, 2, 3, 4, 5], |_| {});
    net.elect(1);
    net.isolate(2);
    net.cut(1, 5);
    net.tick_all(30);
    assert!(net.replica(1).is_leader(), "{:?}", net.status(1));
    // What 5 sends when it hears no leader: a pre-vote, which the leader,
    // in its lease, takes and ignores.
    let status = net.status(1);
    let mut pre_vote = Message::default();
    pre_vote.set_msg_type(MessageType::MsgRequestPreVote);
    pre_vote.from = 5;
    pre_vote.to = 1;
    pre_vote.term = status.term + 1;
    pre_vote.index = status.last_index;
    pre_vote.log_term = status.term;
    net.replica_mut(1)
        .step(pre_vote)
        .expect("a pre-vote is taken (and ignored in the lease)");
    match net
        .replica_mut(1)
        .change_membership(1_000_001, MembershipChange::Remove { id: 3 })
    {
        Err(RequestError::ConfChangeRejected(ConfChangeRejection::QuorumAtRisk {
            active: 2,
            voters: 4,
        })) => {}
        other => panic!("removal with only 1 and 4 answering was not refused: {other:?}"),
    }
}

/// Review of the check: a learner that caught up and then went quiet is not
/// promoted into a quorum it cannot help make.
#[test]
fn promoting_a_quiet_learner_that_would_leave_no_heard_majority_is_refused() {
    use vaultfleet::replica::{ConfChangeRejection, MembershipChange};
    let fleet = FleetConfig::new(vec![
        MemberSpec::voter(1, "dc-1"),
        MemberSpec::voter(2, "dc-2"),
        MemberSpec::voter(3, "dc-3"),
        MemberSpec::learner(4, "dc-4"),
    ]);
    let mut net = Network::with_fleet(&fleet, |_| {}, KvStore::default);
    let mut store = MemLog::new();
    Replica::bootstrap(&mut store, &KvStore::default(), &fleet).expect("bootstrap");
    let learner =
        Replica::new(core_harness::test_config(4), store, KvStore::default()).expect("learner");
    net.replicas.insert(4, learner);
    net.elect(1);
    let client = net.register(1);
    assert!(put_on_leader(&mut net, client, 1));
    net.tick_all(4);
    net.isolate(3);
    net.isolate(4);
    net.tick_all(15);
    match net
        .replica_mut(1)
        .change_membership(1_000_001, MembershipChange::Promote { id: 4 })
    {
        Err(RequestError::ConfChangeRejected(ConfChangeRejection::QuorumAtRisk {
            active: 2,
            voters: 4,
        })) => {}
        other => panic!("promoting a quiet learner was not refused: {other:?}"),
    }
}

/// What leader `from` sends, at `term`, when it hands leadership to `to`:
/// the transfer's announcement to every other voter, and `MsgTimeoutNow`
/// to `to`. Stepped at once.
fn hand_over(net: &mut Network, from: u64, to: u64, term: u64) {
    for voter in net.status(from).voters {
        let m = if voter == to {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgTimeoutNow);
            m.from = from;
            m.to = voter;
            m.term = term;
            m
        } else if voter != from {
            core_harness::announcement(from, voter, term, &to.to_be_bytes(), 0)
        } else {
            continue;
        };
        net.replica_mut(voter).step(m).unwrap();
    }
}

/// Review 5: a leader that applies its own removal (leadership moved to it
/// after the removal was proposed) hands leadership to the most caught-up
/// voter and steps down. It announces that transfer, so the voters honour
/// the transferee's campaign and a new leader is elected without waiting for
/// an election timeout (a vote forced by a transfer counts only when the
/// leader announced it).
#[test]
fn a_leader_applying_its_own_removal_hands_over_at_once_in_a_fleet_of_five() {
    use vaultfleet::replica::MembershipChange;
    let mut net = Network::new(&[1, 2, 3, 4, 5], |_| {});
    net.elect(2);
    net.register(2);
    net.replica_mut(2)
        .change_membership(1_000_001, MembershipChange::Remove { id: 1 })
        .unwrap();
    net.cycle(2);
    // The removal reaches 1, 3 and 4; their acknowledgements never reach 2,
    // which hands leadership to 1 and is cut off.
    net.deliver_where(|m| m.from == 2 && m.to != 5);
    for id in [1, 3, 4] {
        net.cycle(id);
    }
    net.drop_in_flight();
    net.isolate(2);
    let term = net.status(2).term;
    hand_over(&mut net, 2, 1, term);
    // 1 leads, commits and applies its own removal, and hands over. Its
    // MsgTimeoutNow reaches the transferee with the commit of the removal,
    // before the transferee applied it: raft-rs does not campaign with a
    // membership change committed but not applied, so the transferee holds
    // the MsgTimeoutNow until it has (review 6, MEDIUM-3).
    let led = |n: &Network| {
        [3, 4, 5]
            .iter()
            .any(|&id| n.replica(id).is_leader() && n.status(id).term == term + 2)
    };
    for _ in 0..core_harness::SETTLE_ROUNDS_MAX {
        net.cycle_all();
        while net.deliver_one() {}
        if led(&net) {
            break;
        }
    }
    assert!(
        led(&net),
        "no leader after 1's removal without an election timeout: 1 {:?} 3 {:?}",
        net.status(1),
        net.status(3)
    );
    assert!(!net.replica(1).is_leader());
}

/// A fleet of three led by 1, in which 1 committed and applied a membership
/// change (a learner added) that 2 and 3 appended but have not heard
/// committed; and the term.
fn a_change_committed_on_the_leader_only() -> (Network, u64) {
    use vaultfleet::replica::MembershipChange;
    let mut net = Network::new(&[1, 2, 3], |_| {});
    let term = net.elect(1);
    net.register(1);
    net.settle();
    net.replica_mut(1)
        .change_membership(
            1_000_001,
            MembershipChange::AddLearner {
                id: 4,
                datacenter: "dc-d".into(),
            },
        )
        .unwrap();
    net.cycle(1);
    net.deliver_where(|m| m.from == 1);
    net.cycle(2);
    net.cycle(3);
    net.deliver_where(|m| m.to == 1);
    net.cycle(1);
    assert!(
        net.status(1).applied > net.status(3).applied,
        "{:?}",
        net.status(1)
    );
    (net, term)
}

/// Review 7 (LOW-4): a `MsgTimeoutNow` held while a membership change was
/// committed but not applied must not campaign once its transfer ended: the
/// leader's end announcement drops it.
#[test]
fn review_7_a_held_timeout_now_is_dropped_when_its_transfer_ends() {
    let (mut net, term) = a_change_committed_on_the_leader_only();
    net.replica_mut(1).transfer_leader(3);
    net.cycle(1);
    // 3 takes the commit and the MsgTimeoutNow before it cycles: held.
    net.deliver_where(|m| m.to == 3);
    assert_eq!(net.status(3).term, term);
    let end = core_harness::announcement(1, 3, term, &0u64.to_be_bytes(), 9);
    net.replica_mut(3)
        .step(end)
        .expect("the leader's end announcement");
    net.cycle(3);
    assert_eq!(
        net.status(3).term,
        term,
        "3 campaigned after its transfer ended: {:?}",
        net.status(3)
    );
}

/// Review 8 (LOW-2): a transferee did not hear the announcement of its own
/// transfer, so a late announcement of an earlier, replaced transfer (to 2)
/// was new to it and dropped the MsgTimeoutNow it held for the newer one.
/// The transferee hears every announcement now, and ignores the older one.
#[test]
fn review_8_a_late_older_announcement_does_not_drop_a_newer_held_timeout_now() {
    let names_2 = |m: &Message| core_harness::announced(m) == Some(2);
    let (mut net, term) = a_change_committed_on_the_leader_only();
    net.cut(1, 2);
    net.replica_mut(1).transfer_leader(2);
    net.cycle(1);
    net.replica_mut(1).transfer_leader(3);
    net.cycle(1);
    // 3 takes the commit and the MsgTimeoutNow (held), then the late
    // announcement of the replaced transfer to 2.
    net.deliver_where(|m| m.to == 3 && !names_2(m));
    assert_eq!(net.status(3).term, term);
    net.deliver_where(|m| m.to == 3);
    net.cycle(3);
    net.cycle(3);
    assert_eq!(
        net.status(3).term,
        term + 1,
        "3 dropped its held MsgTimeoutNow: {:?}",
        net.status(3)
    );
}

/// Every membership refusal equals itself (`Eq` promises it): the
/// equality had no arm for `QuorumAtRisk`, so such a refusal compared
/// unequal to its own clone.
#[test]
fn every_conf_change_rejection_equals_itself() {
    use vaultfleet::replica::ConfChangeRejection;
    let rejections = [
        ConfChangeRejection::RemovesLeader,
        ConfChangeRejection::DatacenterTooLong { bytes: 300 },
        ConfChangeRejection::TooManyMembers { members: 9 },
        ConfChangeRejection::NotInAcceptedFleet {
            epoch: 3,
            reason: "not listed".into(),
        },
        ConfChangeRejection::QuorumAtRisk {
            active: 2,
            voters: 4,
        },
        ConfChangeRejection::Raft(std::sync::Arc::new(raft::Error::ConfChangeError(
            "pending".into(),
        ))),
    ];
    for r in &rejections {
        assert_eq!(r, &r.clone(), "{r}");
    }
    assert_ne!(
        ConfChangeRejection::QuorumAtRisk {
            active: 2,
            voters: 4
        },
        ConfChangeRejection::QuorumAtRisk {
            active: 2,
            voters: 5
        }
    );
}
