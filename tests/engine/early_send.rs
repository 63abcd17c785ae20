//! `Replica::handle_ready_sending`: what a leader sends before its own sync
//! (review 11). Only a leader's appends and heartbeats leave early, never a
//! follower's or candidate's messages (which must wait for the sync), never a
//! snapshot or a `MsgTimeoutNow`, and nothing in a cycle that takes a new term.

use crate::core_harness;

use core_harness::Network;
use raft::prelude::{Message, MessageType};
use vaultfleet::replica::{Output, Reply};
use vaultfleet::{KvStore, ReplicaConfig};

/// Messages that must never leave before the sender's sync.
fn must_wait_for_sync(m: &Message) -> bool {
    match m.get_msg_type() {
        MessageType::MsgRequestVote
        | MessageType::MsgRequestPreVote
        | MessageType::MsgAppendResponse
        | MessageType::MsgHeartbeatResponse
        | MessageType::MsgSnapshot => true,
        MessageType::MsgRequestVoteResponse => !m.reject,
        _ => false,
    }
}

/// Counts of what the early path carried.
#[derive(Default)]
struct Seen {
    early_batches: usize,
    snapshots_late: usize,
    /// The messages of the last cycle that left early, and those that
    /// waited for its sync.
    early: Vec<Message>,
    late: Vec<Message>,
}

/// One Ready cycle of `id` through `handle_ready_sending`; early and late
/// messages join the in-flight queue in the order a driver sends them.
fn cycle_sending(net: &mut Network, id: u64, seen: &mut Seen) {
    let replica = net.replica_mut(id);
    let leader = replica.is_leader();
    let mut out = Output::default();
    let mut early: Vec<Message> = Vec::new();
    replica
        .handle_ready_sending(&mut out, &mut |m| early.extend(m))
        .expect("ready cycle");
    if !early.is_empty() {
        assert!(
            leader,
            "replica {id} sent early while not leading: {early:?}"
        );
        seen.early_batches += 1;
    }
    for m in &early {
        assert!(!must_wait_for_sync(m), "sent before the sync: {m:?}");
    }
    seen.snapshots_late += out
        .messages
        .iter()
        .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
        .count();
    seen.early = early.clone();
    seen.late = out.messages.clone();
    net.in_flight.extend(early);
    net.in_flight.extend(out.messages.drain(..));
}

/// Cycles every replica and delivers everything, `rounds` times.
fn run(net: &mut Network, rounds: usize, seen: &mut Seen) {
    for _ in 0..rounds {
        for id in net.ids() {
            cycle_sending(net, id, seen);
        }
        while net.deliver_one() {}
    }
}

#[test]
fn only_a_leader_sends_before_its_sync_and_never_a_vote_or_an_answer() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    let mut seen = Seen::default();
    // Replica 1 campaigns (its vote requests must wait) and wins.
    for _ in 0..200 {
        net.tick(1);
        run(&mut net, 3, &mut seen);
        if net.replica(1).is_leader() {
            break;
        }
    }
    assert!(net.replica(1).is_leader());
    // Heartbeats and appends to followers, whose answers must wait.
    for _ in 0..10 {
        net.tick(1);
        run(&mut net, 3, &mut seen);
    }
    // Replica 1 is cut off; replica 2 campaigns in a higher term.
    net.isolate(1);
    for _ in 0..200 {
        net.tick(2);
        net.tick(3);
        run(&mut net, 3, &mut seen);
        if net.replica(2).is_leader() || net.replica(3).is_leader() {
            break;
        }
    }
    assert!(net.replica(2).is_leader() || net.replica(3).is_leader());
    net.recover();
    for _ in 0..10 {
        net.tick(2);
        net.tick(3);
        run(&mut net, 3, &mut seen);
    }
    assert!(seen.early_batches > 0, "no leader message ever left early");
}

fn small_snapshots(cfg: &mut ReplicaConfig) {
    cfg.snapshot_entries_min = 4;
    cfg.compaction_entries_retained = 1;
}

#[test]
fn a_batch_holding_a_snapshot_waits_for_the_driver() {
    let mut net = Network::new(&[1, 2, 3], small_snapshots);
    net.elect(1);
    let client = net.register(1);
    net.isolate(3);
    for sequence in 1..=64 {
        let command = KvStore::put(format!("filler-{sequence}"), "x");
        let request = net
            .propose(1, client, sequence, sequence, command)
            .expect("propose on the leader");
        net.settle();
        assert!(matches!(net.take(request), Some(Ok(Reply::Applied(_)))));
        if net.status(1).first_index > net.status(3).last_index + 1 {
            break;
        }
    }
    assert!(net.status(1).first_index > net.status(3).last_index + 1);
    net.recover();
    let mut seen = Seen::default();
    for _ in 0..20 {
        net.tick(1);
        run(&mut net, 3, &mut seen);
    }
    assert!(
        seen.snapshots_late > 0,
        "the leader sent replica 3 no snapshot"
    );
    assert!(seen.early_batches > 0, "no leader message ever left early");
}

/// Ticks `id` (without any Ready cycle) until it leads: a single voter wins
/// within the tick, its new term still only in memory.
fn tick_until_leader(net: &mut Network, id: u64) {
    for _ in 0..500 {
        net.tick(id);
        if net.replica(id).is_leader() {
            return;
        }
    }
    panic!("replica {id} never campaigned");
}

/// Review 11 (LOW): a single voter wins its election inside one step, so
/// the Ready that carries its new term (hard state, not yet synced) also
/// carries its append to a learner, which leaves early. If it crashes before
/// the sync it comes back in the old term and wins the same term again; the
/// learner must not keep entries of the lost incarnation at the same (index,
/// term) as different ones of the new (Log Matching). Holds today only
/// because raft-rs pauses a probing peer after the no-op append.
#[test]
fn a_single_voter_that_crashes_before_syncing_its_new_term_does_not_fork_a_learner() {
    use vaultfleet::Replica;
    let (mut net, client) = voter_and_learner();
    let restart = |net: &mut Network, durable: vaultfleet::MemLog| {
        let r =
            Replica::new(core_harness::test_config(1), durable, KvStore::new()).expect("restart");
        net.replicas.insert(1, r);
    };
    // Restart the voter (everything it held was synced), then let it win.
    let durable = net.replica(1).store().clone();
    restart(&mut net, durable.clone());
    let term = net.status(1).term;
    tick_until_leader(&mut net, 1);
    assert_eq!(net.status(1).term, term + 1);
    net.propose(1, client, 1, 1, KvStore::put("k", "first"))
        .expect("propose");
    let mut seen = Seen::default();
    cycle_sending(&mut net, 1, &mut seen);
    // Only what left before the sync reaches the learner; then the voter
    // crashes before its sync: it comes back from `durable`.
    net.in_flight
        .retain(|m| m.to == 2 && m.get_msg_type() == MessageType::MsgAppend);
    let early = net.in_flight.len();
    while net.deliver_one() {}
    net.cycle(2);
    net.drop_in_flight();
    restart(&mut net, durable);
    tick_until_leader(&mut net, 1);
    assert_eq!(net.status(1).term, term + 1, "the same term again");
    net.propose(1, client, 1, 1, KvStore::put("k", "second"))
        .expect("propose");
    net.settle();
    net.tick_all(5);
    let last = net.status(1).last_index;
    for index in 1..=last {
        let (a, b) = (
            net.replica(1).store().entry(index),
            net.replica(2).store().entry(index),
        );
        if let (Some(a), Some(b)) = (a, b) {
            assert_eq!(
                (a.term, &a.data),
                (b.term, &b.data),
                "learner forked at index {index} ({early} early messages)"
            );
        }
    }
}

/// Review 11 (LOW-1), the guard itself: a single voter wins its election
/// inside one step, so the Ready that carries its new term also carries its
/// appends to a learner. They wait for the sync of that term; the next
/// cycle's appends, in a term already durable, leave early.
#[test]
fn a_cycle_that_takes_a_new_term_sends_nothing_early() {
    use vaultfleet::Replica;
    let (mut net, client) = voter_and_learner();
    let durable = net.replica(1).store().clone();
    let restarted =
        Replica::new(core_harness::test_config(1), durable, KvStore::new()).expect("restart");
    net.replicas.insert(1, restarted);
    let term = net.status(1).term;
    tick_until_leader(&mut net, 1);
    assert_eq!(net.status(1).term, term + 1, "won a new term in one step");
    let mut seen = Seen::default();
    cycle_sending(&mut net, 1, &mut seen);
    assert!(
        seen.early.is_empty(),
        "sent before its new term was durable: {:?}",
        seen.early
    );
    assert!(
        seen.late
            .iter()
            .any(|m| m.to == 2 && m.get_msg_type() == MessageType::MsgAppend),
        "the append to the learner waited for the sync: {:?}",
        seen.late
    );
    while net.deliver_one() {}
    net.cycle(2);
    while net.deliver_one() {}
    net.propose(1, client, 1, 1, KvStore::put("k", "v"))
        .expect("propose");
    cycle_sending(&mut net, 1, &mut seen);
    assert!(
        seen.early
            .iter()
            .any(|m| m.to == 2 && m.get_msg_type() == MessageType::MsgAppend),
        "an append in a durable term leaves early: early {:?}, late {:?}",
        seen.early,
        seen.late
    );
}

/// Review 11 (MEDIUM): the transfer's `MsgTimeoutNow` must not leave ahead
/// of the leader's sync while its announcement to the other voters waits
/// for it: the transferee's forced vote requests then overtake the
/// announcement more often, are taken as ordinary ones and refused (lease).
#[test]
fn a_transfers_announcement_leaves_no_later_than_its_timeout_now() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.elect(1);
    net.tick_all(3);
    net.replica_mut(1).transfer_leader(2);
    let replica = net.replica_mut(1);
    let mut out = Output::default();
    let mut early: Vec<Message> = Vec::new();
    replica
        .handle_ready_sending(&mut out, &mut |m| early.extend(m))
        .expect("ready cycle");
    let timeout_now_early = early
        .iter()
        .any(|m| m.get_msg_type() == MessageType::MsgTimeoutNow);
    let announced_late = out
        .messages
        .iter()
        .any(|m| core_harness::announced(m) == Some(2));
    assert!(
        !(timeout_now_early && announced_late),
        "MsgTimeoutNow left before the sync, its announcement after: early {early:?}"
    );
}

/// Review 14 (LOW-4): only a leading run of appends and heartbeats leaves
/// early, not every append and heartbeat of the Ready. A transfer to a
/// caught-up replica puts its `MsgTimeoutNow` first; heartbeats queued after
/// it in the same Ready wait with it, so the transferee gets them in raft's
/// order.
#[test]
fn heartbeats_queued_after_a_timeout_now_wait_with_it() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.elect(1);
    net.tick_all(3);
    let replica = net.replica_mut(1);
    replica.transfer_leader(2);
    for _ in 0..2 {
        replica.tick();
    }
    let mut out = Output::default();
    let mut early: Vec<Message> = Vec::new();
    replica
        .handle_ready_sending(&mut out, &mut |m| early.extend(m))
        .expect("ready cycle");
    let late_types: Vec<MessageType> = out.messages.iter().map(|m| m.get_msg_type()).collect();
    let timeout_now = late_types
        .iter()
        .position(|t| *t == MessageType::MsgTimeoutNow)
        .expect("the transfer's MsgTimeoutNow waited for the sync");
    assert!(
        late_types[timeout_now..].contains(&MessageType::MsgHeartbeat),
        "a heartbeat queued after the MsgTimeoutNow: {late_types:?}"
    );
    assert!(
        early.is_empty(),
        "left ahead of the MsgTimeoutNow they followed: {early:?}"
    );
}

/// A single voter (1, elected) and a learner (2), settled, with a client
/// session registered through the voter.
fn voter_and_learner() -> (Network, u64) {
    use vaultfleet::{FleetConfig, MemberSpec, Replica};
    let fleet = FleetConfig::new(vec![
        MemberSpec::voter(1, "dc1"),
        MemberSpec::learner(2, "dc2"),
    ]);
    let mut net = Network::with_fleet(&fleet, |_| {}, KvStore::new);
    let mut store = vaultfleet::MemLog::new();
    assert!(Replica::bootstrap(&mut store, &KvStore::new(), &fleet).expect("bootstrap"));
    let learner =
        Replica::new(core_harness::test_config(2), store, KvStore::new()).expect("learner");
    net.replicas.insert(2, learner);
    net.elect(1);
    let client = net.register(1);
    net.tick_all(5);
    (net, client)
}
