//! A streamed snapshot restored off the replica's thread (issue 18): while a
//! follower's restore runs, it still steps, appends and acknowledges; it
//! applies nothing past the snapshot until the restore is handed back; a
//! restore dropped unrun is done in place; one that panics stops the replica.
//! Driven by hand on the core harness: the test decides when each restore
//! runs.

use crate::core_harness;

use core_harness::{announced, Network};
use vaultfleet::replica::{
    MembershipChange, Output, ReplicaError, RequestError, SnapshotBuildError, SnapshotError,
    StepRefusal, APPLY_BACKLOG_ENTRIES, TRANSFER_DECLINED,
};
use vaultfleet::state_machine::{CaptureError, RestoreError};
use vaultfleet::{FleetConfig, KvStore, MemberSpec, ReplicaConfig, StateMachine};

/// A [`KvStore`] that offers a blank copy, so its snapshots restore off the
/// thread; with `POISON`, a blank panics when it restores.
#[derive(Debug, Default)]
struct BlankKv<const POISON: bool = false> {
    kv: KvStore,
    poisoned: bool,
}

impl<const POISON: bool> StateMachine for BlankKv<POISON> {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        self.kv.apply(index, command)
    }
    fn query(&self, query: &[u8]) -> Vec<u8> {
        self.kv.query(query)
    }
    fn snapshot(&self) -> Result<Vec<u8>, CaptureError> {
        self.kv.snapshot()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        assert!(!self.poisoned, "a poisoned blank restores");
        self.kv.restore(snapshot)
    }
    fn blank(&self) -> Option<Self> {
        Some(Self {
            kv: KvStore::new(),
            poisoned: POISON,
        })
    }
}

fn small_snapshots(rc: &mut ReplicaConfig) {
    rc.snapshot_entries_min = 20;
    rc.compaction_entries_retained = 2;
}

fn fleet<const POISON: bool>() -> Network<BlankKv<POISON>> {
    fleet_with(|_| {})
}

/// Like [`fleet`], with `tweak` applied to each replica's settings after the
/// small snapshots.
fn fleet_with<const POISON: bool>(tweak: impl Fn(&mut ReplicaConfig)) -> Network<BlankKv<POISON>> {
    let fleet = FleetConfig::new(
        (1..=3)
            .map(|id| MemberSpec::voter(id, format!("dc-{id}")))
            .collect(),
    );
    Network::with_files(
        &fleet,
        |rc: &mut ReplicaConfig| {
            small_snapshots(rc);
            tweak(rc);
        },
        BlankKv::default,
    )
}

/// Replica 3 holds the leader's applied index and state.
fn assert_caught_up<const P: bool>(net: &Network<BlankKv<P>>) {
    assert_eq!(net.status(3).applied, net.status(1).applied);
    assert_eq!(
        net.replica(3).state_machine().snapshot().unwrap(),
        net.replica(1).state_machine().snapshot().unwrap()
    );
}

/// Replica `id` starts again from `store` (what a crash left).
fn restart(net: &mut Network<BlankKv>, id: u64, store: vaultfleet::MemLog) {
    let mut cfg = core_harness::test_config(id);
    small_snapshots(&mut cfg);
    let replica = vaultfleet::Replica::new(cfg, store, BlankKv::default()).expect("restart");
    net.replicas.insert(id, replica);
}

fn value<const P: bool>(net: &Network<BlankKv<P>>, id: u64, key: &str) -> Vec<u8> {
    net.replica(id)
        .state_machine()
        .query(&KvStore::get(key.as_bytes()))
}

/// Leader 1 and follower 2 apply `n` puts while 3 is cut off, so 1 compacts
/// past 3; then 3 comes back and receives a streamed snapshot, whose restore
/// waits in `net.restores`. Returns the session and the next sequence.
fn behind_then_snapshot<const P: bool>(net: &mut Network<BlankKv<P>>, n: u64) -> (u64, u64) {
    net.elect(1);
    let client = net.register(1);
    net.isolate(3);
    for seq in 1..=n {
        let put = KvStore::put(format!("k{seq}"), format!("v{seq}"));
        net.propose(1, client, seq, seq, put).expect("propose");
        net.settle();
    }
    assert!(
        net.status(1).first_index > net.status(3).last_index + 1,
        "the leader compacted past replica 3: {:?} {:?}",
        net.status(1),
        net.status(3)
    );
    net.recover();
    net.tick_all(4);
    assert_eq!(net.restores.len(), 1, "replica 3 handed out one restore");
    assert_eq!(net.restores[0].0, 3);
    (client, n + 1)
}

#[test]
fn a_follower_restoring_off_its_thread_still_acknowledges_and_applies_once_restored() {
    let mut net = fleet::<false>();
    let (client, mut seq) = behind_then_snapshot(&mut net, 60);
    let snapshot = net.replica(3).restoring_snapshot().expect("restoring");
    let before = net.status(3);
    assert!(before.applied < snapshot, "{before:?}");
    let missing = value(&net, 1, "no such key");
    assert_eq!(
        value(&net, 3, "k1"),
        missing,
        "the old machine is still in place"
    );

    // With replica 2 cut off, only replica 3's acknowledgements can commit:
    // entries commit while its restore has not run.
    net.isolate(2);
    let committed_before = net.status(1).commit;
    let mut writes = Vec::new();
    for _ in 0..5 {
        let put = KvStore::put(format!("k{seq}"), format!("v{seq}"));
        writes.push(net.propose(1, client, seq, seq, put).expect("propose"));
        seq += 1;
        net.settle();
    }
    assert!(
        net.status(1).commit >= committed_before + 5,
        "{:?}",
        net.status(1)
    );
    assert!(writes.iter().all(|&w| net.completed(w)));
    let waiting = net.status(3);
    assert_eq!(
        waiting.applied, before.applied,
        "nothing applied past the snapshot"
    );
    assert!(waiting.last_index >= net.status(1).commit, "{waiting:?}");
    assert_eq!(net.replica(3).restoring_snapshot(), Some(snapshot));

    // 3 learns the last writes' commit from a heartbeat, its restore
    // still waiting: all of it applies once the restore is taken.
    net.heartbeat(1);
    net.run_restores(3);
    net.settle();
    assert_eq!(net.replica(3).restoring_snapshot(), None);
    assert_eq!(net.status(3).applied, net.status(1).applied);
    for k in [1, 60, seq - 1] {
        let key = format!("k{k}");
        assert_ne!(value(&net, 1, &key), missing, "{key}");
        assert_eq!(value(&net, 3, &key), value(&net, 1, &key), "{key}");
    }
    assert_eq!(
        net.replica(3).state_machine().snapshot().unwrap(),
        net.replica(1).state_machine().snapshot().unwrap()
    );
    assert!(net.failures.is_empty(), "{:?}", net.failures);
}

#[test]
fn a_restore_dropped_unrun_is_restored_in_place_at_the_next_cycle() {
    let mut net = fleet::<false>();
    behind_then_snapshot(&mut net, 40);
    net.restores.clear();
    assert!(net.replica(3).has_ready(), "a dropped restore is work");
    net.settle();
    assert_eq!(net.replica(3).restoring_snapshot(), None);
    assert_eq!(net.status(3).applied, net.status(1).applied);
    assert_ne!(value(&net, 1, "k40"), value(&net, 1, "no such key"));
    assert_eq!(value(&net, 3, "k40"), value(&net, 1, "k40"));
    assert!(net.failures.is_empty(), "{:?}", net.failures);
}

#[test]
fn a_restore_that_panics_stops_the_replica_and_the_others_go_on() {
    let mut net = fleet::<true>();
    behind_then_snapshot(&mut net, 40);
    net.run_restores(3);
    match net.failures.get(&3) {
        Some(ReplicaError::Snapshot {
            source: SnapshotError::RestorePanicked,
            ..
        }) => {}
        other => panic!("replica 3 should stop on its restore's panic: {other:?}"),
    }
    assert!(net.replica(3).has_failed());
    let mut out = Output::default();
    assert!(net.replica_mut(3).handle_ready(&mut out).is_err());
    // The leader and replica 2 still commit.
    let client = net.register(1);
    let put = KvStore::put("after", "yes");
    let w = net.propose(1, client, 1, 1, put).expect("propose");
    net.settle();
    assert!(net.completed(w));
}

/// raft counts the entries waiting for a restore as not applied, so a
/// follower holding a committed, unapplied membership change does not
/// campaign under the old membership (raft-rs refuses to with one pending).
/// Counting them applied at once would let it.
#[test]
fn a_membership_change_waiting_for_a_restore_keeps_the_follower_from_campaigning() {
    let mut net = fleet::<false>();
    behind_then_snapshot(&mut net, 40);
    let change = MembershipChange::AddLearner {
        id: 9,
        datacenter: "dc-9".into(),
    };
    net.replica_mut(1)
        .change_membership(1_000_001, change)
        .expect("propose the change");
    net.settle();
    assert!(net.completed(1_000_001), "the change committed");
    assert!(net.status(3).commit > net.replica(3).restoring_snapshot().unwrap());
    // The leader and replica 2 go; replica 3 times out again and again.
    net.isolate(1);
    net.isolate(2);
    for _ in 0..100 {
        net.tick(3);
        net.cycle(3);
        net.in_flight.clear();
        assert_eq!(
            net.status(3).role,
            raft::StateRole::Follower,
            "no campaign (not even a pre-vote) with the change unapplied"
        );
    }
    // Once restored, the change applies and replica 3 may campaign.
    net.run_restores(3);
    while net.replica(3).has_ready() {
        net.cycle(3);
        net.in_flight.clear();
    }
    assert!(net.status(3).learners.contains(&9), "{:?}", net.status(3));
    let campaigned = (0..100).any(|_| {
        net.tick(3);
        net.cycle(3);
        net.in_flight.clear();
        net.status(3).role != raft::StateRole::Follower
    });
    assert!(campaigned, "it campaigns once the change applied");
}

fn put_many<const P: bool>(net: &mut Network<BlankKv<P>>, client: u64, seq: &mut u64, n: u64) {
    for _ in 0..n {
        let put = KvStore::put(format!("k{seq}"), format!("v{seq}"));
        net.propose(1, client, *seq, *seq, put).expect("propose");
        *seq += 1;
        net.settle();
    }
}

fn is_snapshot_to(m: &raft::prelude::Message, to: u64) -> bool {
    m.get_msg_type() == raft::prelude::MessageType::MsgSnapshot && m.to == to
}

/// Review of the restore, finding 1 (critical): a node steps its inputs, then
/// takes finished restores, then runs its Ready cycle. A newer snapshot
/// stepped before the older restore's outcome is taken has already switched
/// raft to its membership: the membership change waiting behind the older
/// snapshot must never apply over it (a removed learner came back, and
/// spread through the replica's own snapshots).
#[test]
fn a_membership_change_waiting_behind_an_older_snapshot_never_applies_over_a_newer_one() {
    let mut net = fleet::<false>();
    let (client, mut seq) = behind_then_snapshot(&mut net, 40);
    let s1 = net.replica(3).restoring_snapshot().expect("restoring");
    // AddLearner 9 commits through 3 and waits behind its restore.
    let add = MembershipChange::AddLearner {
        id: 9,
        datacenter: "dc-9".into(),
    };
    net.replica_mut(1)
        .change_membership(1_000_001, add)
        .unwrap();
    net.settle();
    assert!(net.completed(1_000_001));
    assert!(net.status(3).commit > s1);
    // 3 is cut off; 9 is removed again and the leader compacts past 3.
    net.isolate(3);
    let remove = MembershipChange::Remove { id: 9 };
    net.replica_mut(1)
        .change_membership(1_000_002, remove)
        .unwrap();
    net.settle();
    assert!(net.completed(1_000_002));
    put_many(&mut net, client, &mut seq, 60);
    assert!(!net.status(1).learners.contains(&9));
    net.recover();
    // Until the leader's snapshot for 3 is in flight, not delivered.
    let mut found = false;
    for _ in 0..200 {
        if net.in_flight.iter().any(|m| is_snapshot_to(m, 3)) {
            found = true;
            break;
        }
        net.tick(1);
        net.cycle_all();
        net.deliver_where(|m| !is_snapshot_to(m, 3));
        net.cycle_all();
    }
    assert!(found, "no snapshot sent to 3");
    // The node's order: the message stepped, the older restore's outcome
    // taken, then the Ready cycle.
    net.deliver_where(|m| is_snapshot_to(m, 3));
    net.run_restores(3);
    net.settle();
    net.run_restores(3);
    net.settle();
    assert!(net.failures.is_empty(), "{:?}", net.failures);
    assert_eq!(net.replica(3).restoring_snapshot(), None);
    let (leader, three) = (net.status(1), net.status(3));
    assert_eq!(
        (three.voters, three.learners),
        (leader.voters, leader.learners),
        "replica 3's membership differs from the leader's"
    );
    assert_eq!(three.applied, leader.applied);
}

/// Review finding 2: a replica restoring its snapshot refuses a leadership
/// transfer to itself (it could commit but answer nothing until restored).
#[test]
fn a_restoring_replica_refuses_a_leadership_transfer() {
    let mut net = fleet::<false>();
    behind_then_snapshot(&mut net, 40);
    let refused = net.replica(3).messages_refused();
    net.replica_mut(1).transfer_leader(3);
    net.settle();
    net.tick_all(2);
    assert!(net.replica(1).is_leader(), "{:?}", net.status(1));
    assert!(!net.replica(3).is_leader(), "{:?}", net.status(3));
    assert!(
        net.replica(3).messages_refused() > refused,
        "the MsgTimeoutNow was refused"
    );
    // Once restored, a transfer goes through.
    net.run_restores(3);
    net.settle();
    net.replica_mut(1).transfer_leader(3);
    net.settle();
    assert!(net.replica(3).is_leader(), "{:?}", net.status(3));
}

/// Proposes one put on leader 1 and settles; the outcome.
fn put_one<const P: bool>(
    net: &mut Network<BlankKv<P>>,
    client: u64,
    seq: &mut u64,
) -> Result<(), RequestError> {
    let put = KvStore::put(format!("k{seq}"), format!("v{seq}"));
    let request = net.propose(1, client, *seq, *seq, put)?;
    *seq += 1;
    net.settle();
    match net.take(request) {
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(e),
        None => panic!("put {} not answered", *seq - 1),
    }
}

fn is_timeout_now_to(m: &raft::prelude::Message, to: u64) -> bool {
    m.get_msg_type() == raft::prelude::MessageType::MsgTimeoutNow && m.to == to
}

/// Review 2, R2-2: a restoring replica declines a transfer to itself back to
/// the leader, which aborts it at once: raft-rs drops every proposal while a
/// transfer is in progress, and without the decline the leader kept
/// dropping them for an election timeout.
#[test]
fn a_declined_transfer_aborts_at_once_and_the_leader_takes_writes() {
    let mut net = fleet::<false>();
    let (client, mut seq) = behind_then_snapshot(&mut net, 40);
    net.replica_mut(1).transfer_leader(3);
    net.settle();
    assert!(net.replica(1).is_leader(), "{:?}", net.status(1));
    // No tick has passed: only the decline can have ended the transfer.
    for _ in 0..5 {
        put_one(&mut net, client, &mut seq).expect("the leader takes writes at once");
    }
}

/// R2-2, for the leader's own rebalancing to a preferred datacenter: a
/// replica that declined is left out for one rebalance period, then two,
/// four... so a long restore costs a few round trips of dropped writes, not
/// one per period; and every write in between succeeds.
#[test]
fn a_leader_rebalancing_backs_off_from_a_replica_that_declined() {
    let mut net = fleet_with::<false>(|rc| {
        rc.leader_rebalance_ticks = 3;
        rc.preferred_leader_datacenters = vec!["dc-3".to_string()];
    });
    let (client, mut seq) = behind_then_snapshot(&mut net, 40);
    let periods = 300;
    let mut transfers = 0;
    for _ in 0..periods * 3 {
        for id in net.ids() {
            net.tick(id);
        }
        net.cycle_all();
        transfers += net
            .in_flight
            .iter()
            .filter(|m| is_timeout_now_to(m, 3))
            .count();
        net.settle();
        assert!(net.replica(1).is_leader(), "{:?}", net.status(1));
        put_one(&mut net, client, &mut seq).expect("a write while replica 3 restores");
    }
    // Waits of 1, 2, 4 ... 64 periods, then 64 each: tries at about periods
    // 1, 2, 4, 8, 16, 32, 64, 128, 192, 256 (a cap of 8 would make ~39).
    assert!(
        (6..=14).contains(&transfers),
        "{transfers} transfers to the restoring replica in {periods} periods"
    );
    // Restored, it becomes leader at the next try (within 64 periods).
    net.run_restores(3);
    net.settle();
    let led = net.run_until(|n| n.replica(3).is_leader())
        || (0..=64 * 3).any(|_| {
            net.tick_all(1);
            net.replica(3).is_leader()
        });
    assert!(led, "replica 3 leads once restored: {:?}", net.status(3));
}

/// Takes the `MsgTimeoutNow` to `to` out of the messages in flight, so
/// that its transfer stays in progress.
fn hold_timeout_now(net: &mut Network<BlankKv>, to: u64) -> raft::prelude::Message {
    let at = net
        .in_flight
        .iter()
        .position(|m| is_timeout_now_to(m, to))
        .unwrap_or_else(|| panic!("no MsgTimeoutNow to {to} in flight"));
    let m = net.in_flight.remove(at).expect("in flight");
    net.in_flight.clear();
    m
}

/// Asserts that the leader `1` refuses `m` as a stale decline.
fn assert_stale_decline(net: &mut Network<BlankKv>, m: raft::prelude::Message) {
    let (from, term, number) = (m.from, m.term, m.index);
    match net.replica_mut(1).step(m) {
        Err(e) => assert!(
            matches!(e.reason, StepRefusal::StaleTransferDecline { .. }),
            "from {from} at {term}, number {number}: {e}"
        ),
        Ok(()) => panic!("a decline from {from} at term {term}, number {number} was taken"),
    }
}

/// A decline that does not match the transfer in progress (another
/// replica's, another term's, or one that echoes another number than the
/// transfer's `MsgTimeoutNow`) is refused and changes nothing. (Without a
/// number: `a_decline_without_a_number_is_taken_for_the_first_transfer_only`.)
#[test]
fn a_stale_or_foreign_transfer_decline_is_refused() {
    let mut net = fleet::<false>();
    behind_then_snapshot(&mut net, 40);
    let term = net.status(1).term;
    // Held: the MsgTimeoutNow never reaches 3, so 1 keeps transferring.
    net.replica_mut(1).transfer_leader(3);
    net.cycle(1);
    let number = hold_timeout_now(&mut net, 3).index;
    assert_ne!(number, 0, "the MsgTimeoutNow carries its transfer's number");
    for (from, t, n) in [
        (2, term, number),
        (3, term + 1, number),
        (3, term - 1, number),
        (3, term, number + 1),
        (3, term, number + 100),
    ] {
        assert_stale_decline(&mut net, decline(from, 1, t, n));
    }
    assert!(net.replica(1).is_leader());
    let (client, seq) = (1, 1_000);
    let put = KvStore::put("x", "y");
    let request = net.propose(1, client, seq, seq, put).expect("propose");
    net.settle();
    assert!(
        net.take(request).is_some_and(|r| r.is_err()),
        "the transfer is still in progress: raft drops the write"
    );
    // The matching one is taken.
    net.replica_mut(1)
        .step(decline(3, 1, term, number))
        .expect("decline");
}

/// A decline delayed or repeated by the network does not abort a later
/// transfer to the same replica in the same term: each transfer's
/// `MsgTimeoutNow` carries its own number, and a decline must echo the one
/// in progress.
#[test]
fn a_late_decline_of_an_earlier_transfer_does_not_abort_the_next() {
    let mut net = fleet::<false>();
    behind_then_snapshot(&mut net, 40);
    let term = net.status(1).term;
    net.replica_mut(1).transfer_leader(3);
    net.cycle(1);
    let first = hold_timeout_now(&mut net, 3);
    // 3 restores, so it declines: the leader aborts the transfer.
    assert!(matches!(
        net.replica_mut(3).step(first.clone()),
        Err(e) if matches!(e.reason, StepRefusal::TimeoutNowWhileRestoring { .. })
    ));
    net.cycle(3);
    let declined = net
        .in_flight
        .iter()
        .find(|m| m.context.as_ref() == TRANSFER_DECLINED && m.to == 1)
        .cloned()
        .expect("3 declined");
    assert_eq!(declined.index, first.index, "the decline echoes the number");
    net.in_flight.clear();
    net.replica_mut(1)
        .step(declined.clone())
        .expect("the decline of the transfer in progress");
    // The operator asks again, in the same term (a declined replica is still
    // an operator's target).
    net.replica_mut(1).transfer_leader(3);
    net.cycle(1);
    let second = hold_timeout_now(&mut net, 3);
    assert_eq!(net.status(1).term, term);
    assert!(
        second.index > first.index,
        "{} after {}",
        second.index,
        first.index
    );
    // The first decline again (late, or duplicated): refused, and the
    // second transfer still in progress.
    assert_stale_decline(&mut net, declined);
    let request = net
        .propose(1, 1, 1_000, 1_000, KvStore::put("x", "y"))
        .expect("propose");
    net.settle();
    assert!(
        net.take(request).is_some_and(|r| r.is_err()),
        "the second transfer is still in progress: raft drops the write"
    );
    net.replica_mut(1)
        .step(decline(3, 1, term, second.index))
        .expect("the decline of the second transfer");
}

/// Review finding 2: a replica that wins an election while restoring hands
/// leadership over at once to a voter that can answer.
#[test]
fn a_replica_elected_while_restoring_hands_leadership_over() {
    let mut net = fleet::<false>();
    behind_then_snapshot(&mut net, 40);
    // The leader goes, and 2 restarts (so it follows no leader and grants
    // a vote at once); only 3 times out, so it campaigns and wins.
    net.isolate(1);
    let store = net.replica(2).store().clone();
    restart(&mut net, 2, store);
    let term = net.status(3).term;
    let mut led = false;
    for _ in 0..200 {
        net.tick(3);
        net.settle();
        led |= net.status(3).term > term && net.status(2).leader.is_some();
        if led {
            break;
        }
    }
    assert!(led, "no election: {:?}", net.status(3));
    net.tick_all(4);
    assert!(
        net.replica(2).is_leader(),
        "2: {:?} 3: {:?}",
        net.status(2),
        net.status(3)
    );
    assert!(net.replica(3).restoring_snapshot().is_some());
}

/// Review finding 3: what committed during a restore applies afterwards a
/// bounded step per cycle, read back from the store, never all at once.
#[test]
fn entries_waiting_for_a_restore_apply_a_bounded_step_per_cycle() {
    let mut net = fleet::<false>();
    let (client, mut seq) = behind_then_snapshot(&mut net, 40);
    let s = net.replica(3).restoring_snapshot().unwrap();
    put_many(&mut net, client, &mut seq, 2 * APPLY_BACKLOG_ENTRIES + 10);
    // 3 learns the last puts' commit (a heartbeat), its restore still waiting.
    net.heartbeat(1);
    let (_, job) = net.restores.pop().unwrap();
    let mut out = Output::default();
    assert!(net
        .replica_mut(3)
        .snapshot_restored(job.run(), &mut out)
        .unwrap());
    assert_eq!(
        net.status(3).applied,
        s,
        "the restore itself applies nothing"
    );
    assert!(
        !out.garbage.is_empty(),
        "the old machine goes to the driver"
    );
    let mut steps = 0;
    while net.status(3).applied < net.status(1).applied {
        let before = net.status(3).applied;
        net.cycle(3);
        let applied = net.status(3).applied - before;
        assert!(
            (1..=APPLY_BACKLOG_ENTRIES).contains(&applied),
            "{applied} entries in one cycle"
        );
        steps += 1;
    }
    assert!(steps >= 3, "{steps} steps");
    assert_eq!(
        net.replica(3).state_machine().snapshot().unwrap(),
        net.replica(1).state_machine().snapshot().unwrap()
    );
}

/// Review finding 5: a restore's outcome is taken only by the replica that
/// asked for it, even at the same index.
#[test]
fn a_restore_outcome_of_another_replica_is_ignored() {
    let mut a = fleet::<false>();
    let mut b = fleet::<false>();
    behind_then_snapshot(&mut a, 40);
    behind_then_snapshot(&mut b, 40);
    let (_, job) = a.restores.pop().unwrap();
    let index = b.replica(3).restoring_snapshot().unwrap();
    assert_eq!(job.index(), index, "the same index in both groups");
    let mut out = Output::default();
    assert!(!b
        .replica_mut(3)
        .snapshot_restored(job.run(), &mut out)
        .unwrap());
    assert_eq!(b.replica(3).restoring_snapshot(), Some(index));
}

/// A newer snapshot supersedes a restore in flight: the older outcome is
/// ignored, the newer one taken, and the state is the leader's.
#[test]
fn a_newer_snapshot_supersedes_a_restore_in_flight() {
    let mut net = fleet::<false>();
    let (client, mut seq) = behind_then_snapshot(&mut net, 40);
    let first = net.replica(3).restoring_snapshot().expect("restoring");
    put_many(&mut net, client, &mut seq, 3);
    net.isolate(3);
    put_many(&mut net, client, &mut seq, 60);
    net.recover();
    net.tick_all(4);
    let second = net
        .replica(3)
        .restoring_snapshot()
        .expect("restoring again");
    assert!(second > first, "{first} {second}");
    assert_eq!(net.restores.len(), 2);
    net.run_restores(3);
    net.settle();
    assert!(net.failures.is_empty(), "{:?}", net.failures);
    assert_eq!(net.replica(3).restoring_snapshot(), None);
    assert_caught_up(&net);
}

/// A crash while restoring (the store durably at the snapshot, the machine
/// not restored): the restart restores from the file and catches up.
#[test]
fn a_restart_while_restoring_restores_from_the_file() {
    let mut net = fleet::<false>();
    let (client, mut seq) = behind_then_snapshot(&mut net, 40);
    put_many(&mut net, client, &mut seq, 5);
    let store = net.replica(3).store().clone();
    net.restores.clear();
    restart(&mut net, 3, store);
    net.settle();
    net.tick_all(4);
    assert!(net.failures.is_empty(), "{:?}", net.failures);
    assert_caught_up(&net);
}

/// Review 2: a membership change left in the backlog (entries read back from
/// the store after a restore) must not apply once a newer snapshot has been
/// stepped (raft already follows that snapshot's membership). A driver that
/// runs one Ready cycle per turn steps messages between backlog steps.
#[test]
fn a_backlog_membership_change_never_applies_over_a_newer_snapshot() {
    let mut net = fleet::<false>();
    let (client, mut seq) = behind_then_snapshot(&mut net, 40);
    let s1 = net.replica(3).restoring_snapshot().expect("restoring");
    // More than one backlog step of puts, then AddLearner 9, commit through 3.
    put_many(&mut net, client, &mut seq, APPLY_BACKLOG_ENTRIES + 10);
    let add = MembershipChange::AddLearner {
        id: 9,
        datacenter: "dc-9".into(),
    };
    net.replica_mut(1)
        .change_membership(1_000_001, add)
        .unwrap();
    net.settle();
    assert!(net.completed(1_000_001));
    let commit3 = net.status(3).commit;
    assert!(
        commit3 > s1 + APPLY_BACKLOG_ENTRIES + 10,
        "{:?}",
        net.status(3)
    );
    // The outcome is taken; one backlog step runs (the change stays behind).
    let (_, job) = net.restores.pop().unwrap();
    let mut out = Output::default();
    assert!(net
        .replica_mut(3)
        .snapshot_restored(job.run(), &mut out)
        .unwrap());
    net.cycle(3);
    net.drop_in_flight();
    assert!(net.status(3).applied < commit3, "{:?}", net.status(3));
    // 3 is away (no cycles): 9 is removed and the leader compacts past 3.
    let three = net.replicas.remove(&3).unwrap();
    let remove = MembershipChange::Remove { id: 9 };
    net.replica_mut(1)
        .change_membership(1_000_002, remove)
        .unwrap();
    net.settle();
    assert!(net.completed(1_000_002));
    put_many(&mut net, client, &mut seq, 60);
    assert!(!net.status(1).learners.contains(&9));
    net.replicas.insert(3, three);
    net.drop_in_flight();
    // The leader's snapshot, as it would send it to 3.
    let snap = vaultfleet::LogStore::latest_snapshot(net.replica(1).store()).clone();
    assert!(snap.get_metadata().index > commit3);
    let mut m = raft::prelude::Message::default();
    m.set_msg_type(raft::prelude::MessageType::MsgSnapshot);
    m.from = 1;
    m.to = 3;
    m.term = net.status(1).term;
    m.set_snapshot(snap);
    net.in_flight.push_back(m);
    let refused = net.replica(3).messages_refused();
    net.deliver_where(|_| true);
    assert_eq!(
        net.replica(3).messages_refused(),
        refused,
        "snapshot stepped"
    );
    // 3's next Ready cycle, then its restore, then settle.
    net.cycle(3);
    net.run_restores(3);
    net.settle();
    assert!(net.failures.is_empty(), "{:?}", net.failures);
    let (leader, three) = (net.status(1), net.status(3));
    assert_eq!(
        (three.voters, three.learners),
        (leader.voters, leader.learners),
        "replica 3's membership differs from the leader's"
    );
}

/// Review of the streamed snapshots, M4: a member added while the leader's
/// build runs would wait for that build (whose membership does not name it,
/// so raft-rs refuses it) and then for the next. The leader cancels the
/// build in flight and takes one that names the member at once.
#[test]
fn a_member_added_while_a_build_runs_cancels_it_for_one_that_names_it() {
    let mut net = fleet::<false>();
    net.hold_builds = true;
    net.elect(1);
    let client = net.register(1);
    let mut seq = 1;
    put_many(&mut net, client, &mut seq, 25);
    let old = net
        .builds
        .iter()
        .position(|(id, _)| *id == 1)
        .expect("the leader handed out a build");
    let (_, old) = net.builds.remove(old);
    net.builds.retain(|(id, _)| *id == 1);
    let change = MembershipChange::AddLearner {
        id: 9,
        datacenter: "dc-9".into(),
    };
    net.replica_mut(1)
        .change_membership(1_000_001, change)
        .expect("propose the change");
    net.settle();
    assert!(net.completed(1_000_001), "the change committed");
    let added_at = net.status(1).applied;
    let old_index = old.index();
    assert!(
        matches!(old.run(), Err(SnapshotBuildError::Cancelled)),
        "the build in flight was cancelled"
    );
    let new = net
        .builds
        .iter()
        .find(|(id, _)| *id == 1)
        .map(|(_, b)| b.index())
        .expect("a new build was handed out at once");
    assert!(
        new > old_index && new <= added_at,
        "new build at {new}, old at {old_index}, change applied by {added_at}"
    );
    // The cancelled outcome is ignored; the new snapshot serves the learner.
    let mut out = Output::default();
    net.replica_mut(1)
        .snapshot_built(old_index, Err(SnapshotBuildError::Cancelled), &mut out)
        .expect("a stale outcome is ignored");
    net.run_builds_of(1);
    let mut store = vaultfleet::MemLog::new();
    vaultfleet::storage::SnapshotFilesHost::open_snapshot_files(&mut store, 9, None)
        .expect("files");
    let mut cfg = core_harness::test_config(9);
    small_snapshots(&mut cfg);
    let learner = vaultfleet::Replica::new(cfg, store, BlankKv::default()).expect("learner");
    net.replicas.insert(9, learner);
    net.tick_all(4);
    net.run_restores(9);
    net.settle();
    assert_eq!(net.status(9).applied, net.status(1).applied);
    assert!(net.failures.is_empty(), "{:?}", net.failures);
}

/// During a rolling upgrade a transferee of a build before the stamp
/// declines without a number (0). The leader takes that for the first
/// transfer to it it announced in its term, the one transfer it can only be
/// of; a later transfer to it runs until it times out, then writes resume.
#[test]
fn a_decline_without_a_number_is_taken_for_the_first_transfer_only() {
    let mut net = fleet::<false>();
    let (client, mut seq) = behind_then_snapshot(&mut net, 40);
    let term = net.status(1).term;
    net.replica_mut(1).transfer_leader(3);
    net.cycle(1);
    hold_timeout_now(&mut net, 3);
    net.replica_mut(1)
        .step(decline(3, 1, term, 0))
        .expect("a decline without a number, of the first transfer");
    net.replica_mut(1).transfer_leader(3);
    net.cycle(1);
    hold_timeout_now(&mut net, 3);
    assert_stale_decline(&mut net, decline(3, 1, term, 0));
    assert!(
        put_one(&mut net, client, &mut seq).is_err(),
        "the second transfer is in progress: raft drops the write"
    );
    let election = core_harness::test_config(1).election_ticks;
    for _ in 0..=election {
        net.tick(1);
        for _ in 0..core_harness::SETTLE_ROUNDS_MAX {
            net.cycle_all();
            net.in_flight.retain(|m| !is_timeout_now_to(m, 3));
            if net.in_flight.is_empty() {
                break;
            }
            while net.deliver_one() {}
        }
    }
    assert!(net.replica(1).is_leader(), "{:?}", net.status(1));
    put_one(&mut net, client, &mut seq).expect("writes resume once the transfer timed out");
}

/// Transfers replaced within one turn (to 3, then 2, then 3 again, before
/// the leader's next Ready cycle) are numbered apart: the `MsgTimeoutNow`s to
/// 3 carry the last transfer's number, one to 2 (its transfer ended) none,
/// and a decline echoing the first transfer's number is refused.
#[test]
fn transfers_replaced_within_one_turn_are_numbered_apart() {
    let mut net = fleet::<false>();
    behind_then_snapshot(&mut net, 40);
    let term = net.status(1).term;
    for to in [3, 2, 3] {
        net.replica_mut(1).transfer_leader(to);
    }
    net.cycle(1);
    let announced_to_2: Vec<(u64, u64)> = net
        .in_flight
        .iter()
        .filter(|m| m.to == 2)
        .filter_map(|m| announced(m).map(|to| (to, m.index)))
        .collect();
    let targets: Vec<u64> = announced_to_2.iter().map(|&(to, _)| to).collect();
    assert_eq!(targets, [3, 2, 3], "{announced_to_2:?}");
    let numbers: Vec<u64> = announced_to_2.iter().map(|&(_, n)| n).collect();
    assert!(
        numbers[0] < numbers[1] && numbers[1] < numbers[2],
        "{numbers:?}"
    );
    let stamps: Vec<(u64, u64)> = net
        .in_flight
        .iter()
        .filter(|m| m.get_msg_type() == raft::prelude::MessageType::MsgTimeoutNow)
        .map(|m| (m.to, m.index))
        .collect();
    assert!(stamps.iter().any(|&(to, _)| to == 3), "{stamps:?}");
    for &(to, number) in &stamps {
        let expected = if to == 3 { numbers[2] } else { 0 };
        assert_eq!(number, expected, "MsgTimeoutNow to {to}: {stamps:?}");
    }
    net.in_flight.clear();
    assert_stale_decline(&mut net, decline(3, 1, term, numbers[0]));
    net.replica_mut(1)
        .step(decline(3, 1, term, numbers[2]))
        .expect("the decline of the transfer in progress");
}

/// raft-rs sends a lagging transferee its `MsgTimeoutNow` only once an
/// append response shows it caught up, in a later cycle than the
/// transfer's start: that one carries the transfer's number too.
#[test]
fn a_timeout_now_sent_once_the_transferee_caught_up_carries_the_number() {
    let mut net = fleet::<false>();
    net.elect(1);
    let client = net.register(1);
    let mut seq = 1;
    net.isolate(3);
    for _ in 0..3 {
        put_one(&mut net, client, &mut seq).expect("a write while 3 is cut off");
    }
    net.replica_mut(1).transfer_leader(3);
    net.cycle(1);
    assert!(
        !net.in_flight.iter().any(|m| is_timeout_now_to(m, 3)),
        "3 lags: raft sends no MsgTimeoutNow yet"
    );
    let number = net
        .in_flight
        .iter()
        .find(|m| m.to == 2 && announced(m) == Some(3))
        .map(|m| m.index)
        .expect("the transfer to 3 is announced");
    net.in_flight.clear();
    net.recover();
    let mut stamped = None;
    'ticks: for _ in 0..core_harness::test_config(1).election_ticks {
        net.tick(1);
        for _ in 0..core_harness::SETTLE_ROUNDS_MAX {
            net.cycle_all();
            if let Some(m) = net.in_flight.iter().find(|m| is_timeout_now_to(m, 3)) {
                stamped = Some(m.index);
                break 'ticks;
            }
            if net.in_flight.is_empty() {
                break;
            }
            while net.deliver_one() {}
        }
    }
    assert_eq!(
        stamped,
        Some(number),
        "the MsgTimeoutNow sent once 3 caught up"
    );
}

/// A transfer declined by `from` to leader `to` at `term`, echoing the
/// transfer's `number` (what a restoring replica sends back on a
/// `MsgTimeoutNow`).
fn decline(from: u64, to: u64, term: u64, number: u64) -> raft::prelude::Message {
    let mut m = raft::prelude::Message::default();
    m.set_msg_type(raft::prelude::MessageType::MsgTransferLeader);
    m.from = from;
    m.to = to;
    m.term = term;
    m.index = number;
    m.context = TRANSFER_DECLINED.to_vec().into();
    m
}

/// Review 3, MEDIUM-1: the back-off is computed saturating, so a decline
/// under `leader_rebalance_ticks = u64::MAX` ("never rebalance") does not
/// overflow (a panic on a peer's message in checked builds).
#[test]
fn a_decline_under_the_largest_rebalance_period_does_not_overflow() {
    let mut net = fleet_with::<false>(|rc| {
        rc.leader_rebalance_ticks = u64::MAX;
    });
    let (client, mut seq) = behind_then_snapshot(&mut net, 40);
    for _ in 0..3 {
        net.replica_mut(1).transfer_leader(3);
        net.settle();
        put_one(&mut net, client, &mut seq).expect("a write after the decline");
    }
    assert!(net.failures.is_empty(), "{:?}", net.failures);
}

/// Review 3, MEDIUM-2: a replica leading while it restores hands over to a
/// voter that declined before as soon as an election timeout has passed,
/// not after the rebalancing back-off (which doubles with each decline and
/// scales with `leader_rebalance_ticks`, unrelated to how soon it must hand
/// over: the group answers nothing meanwhile).
#[test]
fn a_restoring_leader_hands_over_within_an_election_timeout_of_a_decline() {
    let mut net = fleet_with::<false>(|rc| {
        rc.leader_rebalance_ticks = 1_000;
    });
    behind_then_snapshot(&mut net, 40);
    // As in the test above it: 1 goes, 2 restarts, 3 wins while restoring.
    net.isolate(1);
    let store = net.replica(2).store().clone();
    let mut cfg = core_harness::test_config(2);
    small_snapshots(&mut cfg);
    cfg.leader_rebalance_ticks = 1_000;
    let replica = vaultfleet::Replica::new(cfg, store, BlankKv::default()).expect("restart");
    net.replicas.insert(2, replica);
    // Each hand-over's MsgTimeoutNow is answered with a decline from 2, five
    // times; then 2 takes over.
    let answer = |net: &mut Network<BlankKv>, declines: &mut u32| {
        while *declines < 5 {
            let Some(at) = net.in_flight.iter().position(|m| is_timeout_now_to(m, 2)) else {
                break;
            };
            let m = net.in_flight.remove(at).unwrap();
            net.replica_mut(3)
                .step(decline(2, 3, m.term, m.index))
                .expect("the decline of the transfer in progress");
            *declines += 1;
        }
    };
    let mut declines = 0;
    let mut ticks_after_last = 0;
    for _ in 0..2_000 {
        net.tick(3);
        net.tick(2);
        for _ in 0..3 {
            net.cycle_all();
            answer(&mut net, &mut declines);
            while net.deliver_one() {}
        }
        if declines == 5 {
            if net.replica(2).is_leader() {
                break;
            }
            ticks_after_last += 1;
        }
    }
    assert_eq!(declines, 5, "3 handed over five times: {:?}", net.status(3));
    assert!(net.replica(2).is_leader(), "2: {:?}", net.status(2));
    // One election timeout (10 ticks) and the transfer's round.
    assert!(
        ticks_after_last <= 12,
        "2 led {ticks_after_last} ticks after the last decline"
    );
    assert!(net.replica(3).restoring_snapshot().is_some());
}

/// Review 3, LOW-1: a restore dropped unrun settles in place at the next
/// cycle, which applies a backlog step too: drivers count it as one
/// (`applying_backlog`), so a turn never applies two steps.
#[test]
fn a_restore_dropped_unrun_counts_its_first_backlog_step() {
    let mut net = fleet::<false>();
    let (client, mut seq) = behind_then_snapshot(&mut net, 40);
    let s = net.replica(3).restoring_snapshot().unwrap();
    put_many(&mut net, client, &mut seq, 2 * APPLY_BACKLOG_ENTRIES + 10);
    // 3 learns the last puts' commit (a heartbeat), its restore still waiting.
    net.heartbeat(1);
    drop(net.restores.pop());
    // Bounded: a replica that stops applying (say, short of a commit only a
    // heartbeat would bring; no tick runs here) fails instead of spinning.
    let mut idle_cycles = 0;
    while net.status(3).applied < net.status(1).applied {
        let counted = net.replica(3).applying_backlog();
        let before = net.status(3).applied.max(s);
        net.cycle(3);
        let past_snapshot = net.status(3).applied.max(s) - before;
        assert!(
            past_snapshot == 0 || counted,
            "{past_snapshot} backlog entries applied in a cycle no driver counted"
        );
        idle_cycles = if past_snapshot == 0 {
            idle_cycles + 1
        } else {
            0
        };
        assert!(
            idle_cycles < 100,
            "3 applied nothing in 100 cycles: {:?} against the leader's {:?}",
            net.status(3).applied,
            net.status(1).applied
        );
    }
    assert_caught_up(&net);
}

/// Review 3, LOW-2: each backlog step also applies what joined the backlog
/// since the last one, so the backlog drains even while more commits per
/// cycle than one step holds (here: steps of 2 KiB, 12 puts of 200 bytes
/// committing between cycles). Without it the backlog only grew.
#[test]
fn a_backlog_drains_while_entries_keep_committing() {
    let mut net = fleet_with::<false>(|rc| {
        rc.message_bytes_max = 2048;
    });
    let (client, mut seq) = behind_then_snapshot(&mut net, 40);
    let value = "v".repeat(200);
    let put = |net: &mut Network<BlankKv>, seq: &mut u64| {
        let command = KvStore::put(format!("k{seq}"), value.clone());
        net.propose(1, client, *seq, *seq, command)
            .expect("propose");
        *seq += 1;
    };
    for _ in 0..200 {
        put(&mut net, &mut seq);
        net.settle();
    }
    let (_, job) = net.restores.pop().unwrap();
    let mut out = Output::default();
    assert!(net
        .replica_mut(3)
        .snapshot_restored(job.run(), &mut out)
        .unwrap());
    let backlog = |net: &Network<BlankKv>| net.status(3).commit - net.status(3).applied;
    let start = backlog(&net);
    assert!(start >= 150, "a backlog of {start} entries");
    for round in 0..200 {
        for _ in 0..12 {
            put(&mut net, &mut seq);
            net.cycle(1);
        }
        for _ in 0..3 {
            net.cycle(1);
            net.cycle(2);
            while net.deliver_one() {}
        }
        net.cycle(3);
        while net.deliver_one() {}
        if backlog(&net) == 0 {
            assert!(
                round > 5,
                "drained in {round} rounds: the steps were not bounded"
            );
            return;
        }
    }
    panic!(
        "the backlog never drained: {} entries left of {start}",
        backlog(&net)
    );
}

/// Review 3 of the delivered frame, LOW-4: an outcome is tied to the index
/// of the snapshot it is about. A late one about another snapshot than the
/// one raft waits for is ignored (it moved the peer on as if the pending one
/// had arrived or failed); the right one is taken.
#[test]
fn a_snapshot_outcome_for_another_index_is_ignored() {
    let mut net = fleet::<false>();
    net.elect(1);
    let client = net.register(1);
    net.isolate(3);
    let mut seq = 1;
    put_many(&mut net, client, &mut seq, 40);
    net.recover();
    let mut sent = None;
    for _ in 0..50 {
        for id in net.ids() {
            net.tick(id);
        }
        if net.run_until(|n| n.in_flight.iter().any(|m| is_snapshot_to(m, 3))) {
            let at = net
                .in_flight
                .iter()
                .position(|m| is_snapshot_to(m, 3))
                .unwrap();
            sent = net.in_flight.remove(at);
            break;
        }
    }
    let index = sent
        .expect("the leader sent replica 3 a snapshot")
        .get_snapshot()
        .get_metadata()
        .index;
    net.in_flight.clear();
    // A heartbeat round between 1 and 3 (raft pauses a peer after a
    // snapshot's outcome until it answers one); then whether 1 sends 3
    // anything to catch up with.
    let sends_to_3 = |net: &mut Network<BlankKv>| {
        use raft::prelude::MessageType::{MsgHeartbeat, MsgHeartbeatResponse};
        let heartbeat = |m: &raft::prelude::Message| {
            matches!(m.get_msg_type(), MsgHeartbeat | MsgHeartbeatResponse)
                && (m.from == 3 || m.to == 3)
        };
        for _ in 0..4 {
            net.tick(1);
            net.cycle(1);
            net.deliver_where(heartbeat);
            net.cycle(3);
            net.deliver_where(heartbeat);
            net.cycle(1);
            let sent = net.in_flight.iter().any(|m| {
                m.to == 3
                    && matches!(
                        m.get_msg_type(),
                        raft::prelude::MessageType::MsgAppend
                            | raft::prelude::MessageType::MsgSnapshot
                    )
            });
            net.in_flight.retain(|m| m.to != 3 && m.from != 3);
            if sent {
                return true;
            }
        }
        false
    };
    // A late outcome of an older send: raft keeps waiting for this one.
    net.replica_mut(1)
        .report_snapshot(3, index - 1, raft::SnapshotStatus::Failure);
    let put = KvStore::put("after", "1");
    net.propose(1, client, seq, seq, put).expect("propose");
    seq += 1;
    assert!(!sends_to_3(&mut net), "a stale outcome moved the peer on");
    net.in_flight.clear();
    // The outcome of this send: the leader tries again.
    net.replica_mut(1)
        .report_snapshot(3, index, raft::SnapshotStatus::Failure);
    let put = KvStore::put("after", "2");
    net.propose(1, client, seq, seq, put).expect("propose");
    assert!(
        sends_to_3(&mut net),
        "the outcome of the pending send was ignored"
    );
}

/// Review 4: a voter that declined while restoring may lead once restored:
/// a decline leaves it out of rebalancing, not out of the operator's
/// transfers (peers never ask for leadership themselves: review 6).
#[test]
fn a_replica_that_declined_may_lead_once_restored() {
    let mut net = fleet_with::<false>(|rc| {
        rc.leader_rebalance_ticks = 1_000;
    });
    behind_then_snapshot(&mut net, 40);
    net.replica_mut(1).transfer_leader(3);
    net.settle();
    assert!(
        net.replica(1).is_leader(),
        "3 declined: {:?}",
        net.status(1)
    );
    net.run_restores(3);
    net.settle();
    net.replica_mut(1).transfer_leader(3);
    net.settle();
    net.tick_all(2);
    assert!(net.replica(3).is_leader(), "{:?}", net.status(3));
}

/// Review 4 of M4: a build is cancelled at most once in a row, so adds more
/// frequent than a build still let the log be compacted.
#[test]
fn a_build_is_cancelled_at_most_once_in_a_row() {
    let mut net = fleet::<false>();
    net.hold_builds = true;
    net.elect(1);
    let client = net.register(1);
    let mut seq = 1;
    put_many(&mut net, client, &mut seq, 25);
    net.builds.retain(|(id, _)| *id == 1);
    let (_, first) = net.builds.pop().expect("the leader handed out a build");
    let add = |net: &mut Network<BlankKv>, request: u64, id: u64| {
        let change = MembershipChange::AddLearner {
            id,
            datacenter: format!("dc-{id}"),
        };
        net.replica_mut(1)
            .change_membership(request, change)
            .expect("propose the change");
        net.settle();
        assert!(net.completed(request), "the change committed");
    };
    add(&mut net, 1_000_001, 9);
    assert!(matches!(first.run(), Err(SnapshotBuildError::Cancelled)));
    net.builds.retain(|(id, _)| *id == 1);
    assert_eq!(net.builds.len(), 1, "a new build, naming 9");
    let (_, second) = net.builds.pop().expect("the second build is held");
    // A second add while that one runs does not cancel it.
    add(&mut net, 1_000_002, 10);
    net.builds.retain(|(id, _)| *id == 1);
    assert!(
        net.builds.is_empty(),
        "no third build while the second runs"
    );
    let index = second.index();
    let built = second.run();
    assert!(built.is_ok(), "the build after a cancel was cancelled too");
    net.replica_mut(1)
        .snapshot_built(index, built, &mut Output::default())
        .expect("take the build");
}

/// A replica that wins an election while it restores hands leadership over
/// at once, when raft knows no follower's progress yet (it resets it on
/// election). Among the voters that granted it their votes (a live voter,
/// unlike the isolated 1), the one in a preferred datacenter, so rebalancing
/// need not move leadership a second time. (Ranked by `matched` alone, all 0
/// then, the pick was 1: a transfer that could only time out.)
#[test]
fn a_restoring_leader_hands_over_to_a_preferred_datacenter() {
    assert_eq!(restoring_leaders_target("dc-5"), 5);
}

/// The preference never sends leadership to a voter that has not answered:
/// the isolated 1 is in the preferred datacenter, and the target is the
/// lowest id among the voters that granted their votes.
#[test]
fn a_restoring_leader_hands_over_to_a_voter_that_answered_before_a_preferred_one() {
    assert_eq!(restoring_leaders_target("dc-1"), 2);
}

/// A vote granted to an earlier campaign ranks below one granted to this
/// term's: that voter may have gone down since. With the heartbeat close to
/// the election timeout (9 and 10 ticks) an answer counts as recent for 20
/// ticks, longer than a candidate waits before it campaigns again. 1 grants
/// 3's vote in a campaign that fails (no other vote arrives), then goes down;
/// 2, 4 and 5 elect 3 in the next term. Ranked by "heard lately" alone, all
/// four tie and the pick was 1, the lowest id: a transfer to a voter that is
/// down, which could only time out.
#[test]
fn a_restoring_leader_hands_over_to_a_voter_that_answered_this_term() {
    use raft::prelude::MessageType;
    let fleet = five_voters();
    let tweak = |rc: &mut ReplicaConfig| {
        small_snapshots(rc);
        rc.leader_rebalance_ticks = 1_000;
        rc.heartbeat_ticks = 9;
    };
    let mut net = Network::with_files(&fleet, tweak, BlankKv::<false>::default);
    net.elect(1);
    let client = net.register(1);
    net.isolate(3);
    for seq in 1..=40 {
        let put = KvStore::put(format!("k{seq}"), format!("v{seq}"));
        net.propose(1, client, seq, seq, put).expect("propose");
        net.settle();
    }
    net.recover();
    for _ in 0..core_harness::ELECTION_TICKS_MAX {
        if !net.restores.is_empty() {
            break;
        }
        net.tick_all(1);
    }
    assert_eq!(net.restores.len(), 1, "replica 3 handed out one restore");
    assert!(net.replica(3).restoring_snapshot().is_some());
    // Every other replica restarts: no leader, no lease, votes to give.
    restart_fresh(&mut net, &[1, 2, 4, 5], tweak);
    net.drop_in_flight();
    // 3's first campaign: every pre-vote arrives, only 1's vote.
    let term_before = net.status(3).term;
    for _ in 0..core_harness::ELECTION_TICKS_MAX {
        net.tick(3);
        for _ in 0..core_harness::SETTLE_ROUNDS_MAX {
            net.cycle_all();
            net.in_flight
                .retain(|m| m.get_msg_type() != MessageType::MsgRequestVote || m.to == 1);
            if net.in_flight.is_empty() {
                break;
            }
            while net.deliver_one() {}
        }
        if net.status(3).term > term_before {
            break;
        }
    }
    let failed_term = net.status(3).term;
    assert!(failed_term > term_before, "3 campaigned");
    assert!(!net.replica(3).is_leader(), "one vote besides its own");
    let voted = raft::Storage::initial_state(net.replica(1).store())
        .expect("1's hard state")
        .hard_state;
    assert_eq!(
        (voted.term, voted.vote),
        (failed_term, 3),
        "1 granted 3 its vote in the campaign that failed"
    );
    // 1 goes down; 3 campaigns again, and 2, 4 and 5 elect it, while 1's
    // answer is still recent: within twice the heartbeat and two ticks.
    net.isolate(1);
    let (target, ticks) = until_3_hands_over(&mut net, core_harness::ELECTION_TICKS_MAX);
    assert!(net.replica(3).is_leader(), "{:?}", net.status(3));
    assert!(net.status(3).term > failed_term);
    assert!(net.replica(3).restoring_snapshot().is_some());
    assert!(
        ticks <= 2 * 9 + 2,
        "1's answer is {ticks} ticks old: no longer recent, so the test shows nothing"
    );
    assert_eq!(
        target,
        Some(2),
        "the lowest id among the voters of this term"
    );
}

/// In a fleet of five (replica `i` in `dc-i`, `preferred` the preferred
/// datacenter), the voter that 3, elected while it restores, hands
/// leadership over to: 1 (the old leader) is isolated, 2 and 5 restart and
/// grant 3 their votes, 4 still heard 1 lately and refuses.
fn restoring_leaders_target(preferred: &str) -> u64 {
    let fleet = five_voters();
    let tweak = |rc: &mut ReplicaConfig| {
        small_snapshots(rc);
        rc.leader_rebalance_ticks = 1_000;
        rc.preferred_leader_datacenters = vec![preferred.to_string()];
    };
    let mut net = Network::with_files(&fleet, tweak, BlankKv::<false>::default);
    behind_then_snapshot(&mut net, 40);
    net.isolate(1);
    restart_fresh(&mut net, &[2, 5], tweak);
    let (target, _) =
        until_3_hands_over(&mut net, 10 * core_harness::test_config(3).election_ticks);
    assert!(net.replica(3).is_leader(), "{:?}", net.status(3));
    assert!(net.replica(3).restoring_snapshot().is_some());
    target.expect("3 handed leadership over")
}

/// Five voters, replica `i` in `dc-i`.
fn five_voters() -> FleetConfig {
    FleetConfig::new(
        (1..=5)
            .map(|id| MemberSpec::voter(id, format!("dc-{id}")))
            .collect(),
    )
}

/// Restarts replicas `ids` from their stores, with the test settings and
/// `tweak`: no leader, no lease, votes to give.
fn restart_fresh(
    net: &mut Network<BlankKv<false>>,
    ids: &[u64],
    tweak: impl Fn(&mut ReplicaConfig),
) {
    for &id in ids {
        let store = net.replica(id).store().clone();
        let mut cfg = core_harness::test_config(id);
        tweak(&mut cfg);
        let replica = vaultfleet::Replica::new(cfg, store, BlankKv::default()).expect("restart");
        net.replicas.insert(id, replica);
    }
}

/// Ticks replica 3, settling the fleet after each tick, until 3 announces a
/// leadership transfer (at most `ticks_max` ticks): its target, if any, and
/// the ticks it took.
fn until_3_hands_over(net: &mut Network<BlankKv<false>>, ticks_max: usize) -> (Option<u64>, usize) {
    for tick in 1..=ticks_max {
        net.tick(3);
        for _ in 0..core_harness::SETTLE_ROUNDS_MAX {
            net.cycle_all();
            if let Some(to) = net
                .in_flight
                .iter()
                .filter(|m| m.from == 3)
                .find_map(announced)
            {
                return (Some(to), tick);
            }
            if net.in_flight.is_empty() {
                break;
            }
            while net.deliver_one() {}
        }
    }
    (None, ticks_max)
}
