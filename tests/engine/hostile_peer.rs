//! Issue 13, finding 8: one bad peer message must not stop a replica. One test
//! per row of the "hostile peer" table of `docs/threat-model.md`: a compromised
//! member sends a well-formed raft message whose fields would drive raft-rs 0.7
//! (or this replica's apply path) into a `fatal!`, a panic or a stop; the
//! replica refuses it with its typed [`StepRefusal`], counts it, and the fleet
//! still commits afterwards with the target applying the new entry.

use crate::core_harness;

use core_harness::{announced, announcement, Network};
use protobuf2::Message as _;
use raft::prelude::{
    ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::StateRole;
use vaultfleet::replica::{ConfStateDefect, CorruptEntry, Reply, StepRefusal};
use vaultfleet::{KvStore, LogStore};

/// A fleet of three led by replica 1 that committed one write; returns the
/// fleet, the leader's term and the client session.
fn fleet() -> (Network, u64, u64) {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    let term = net.elect(1);
    let client = net.register(1);
    let put = net
        .propose(1, client, 1, 1, KvStore::put("k", "v0"))
        .unwrap();
    net.settle();
    assert!(matches!(net.take(put), Some(Ok(Reply::Applied(_)))));
    (net, term, client)
}

fn message(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

fn entry(index: u64, term: u64) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e
}

/// A snapshot message from `from` to `to` at `index`/`term` whose membership is
/// the fleet's and whose payload is one `to` can install (its own bootstrap
/// snapshot's).
fn snapshot_message(net: &Network, from: u64, to: u64, term: u64, index: u64) -> Message {
    let mut snap = Snapshot::default();
    snap.data = net.replica(to).store().latest_snapshot().data.clone();
    let meta = snap.mut_metadata();
    meta.index = index;
    meta.term = term;
    let mut cs = ConfState::default();
    cs.voters = vec![1, 2, 3];
    meta.set_conf_state(cs);
    let mut m = message(MessageType::MsgSnapshot, from, to, term);
    m.set_snapshot(snap);
    m
}

/// The term of the entry at `index` in replica `id`'s log.
fn log_term(net: &Network, id: u64, index: u64) -> u64 {
    raft::Storage::term(net.replica(id).store(), index).expect("term of a stored index")
}

/// Steps `m` into `target` and checks it is refused as `expected` says, that
/// the refusal is counted, and that the fleet still commits a write that
/// `target` applies.
fn assert_refused_and_fleet_commits(
    net: &mut Network,
    client: u64,
    target: u64,
    m: Message,
    expected: impl Fn(&StepRefusal) -> bool,
) {
    let refused_before = net.replica(target).messages_refused();
    let outcome = net.replica_mut(target).step(m);
    match &outcome {
        Err(e) if expected(&e.reason) => {}
        other => panic!("expected a typed refusal, got {other:?}"),
    }
    assert_eq!(
        net.replica(target).messages_refused(),
        refused_before + 1,
        "the refusal was not counted"
    );
    // The replica keeps working: a new write commits everywhere, the target
    // applies it, and nothing stopped.
    net.settle();
    let leader = match net
        .ids()
        .into_iter()
        .find(|&id| net.replica(id).is_leader())
    {
        Some(leader) => leader,
        None => {
            net.elect(1);
            1
        }
    };
    let put = net
        .propose(leader, client, 2, 2, KvStore::put("k", "v1"))
        .expect("propose after the hostile message");
    net.settle();
    // The target learns the commit from the leader's next heartbeat.
    net.heartbeat(leader);
    assert!(
        matches!(net.take(put), Some(Ok(Reply::Applied(_)))),
        "the fleet did not commit after the hostile message"
    );
    let leader_commit = net.status(leader).commit;
    assert!(
        net.failures.is_empty(),
        "a replica stopped: {:?}",
        net.failures
    );
    assert!(!net.replica(target).has_failed());
    assert_eq!(
        net.status(target).applied,
        leader_commit,
        "replica {target} did not apply the write"
    );
}

#[test]
fn finding_8_heartbeat_commit_beyond_log_is_refused() {
    let (mut net, term, client) = fleet();
    let last = net.status(2).last_index;
    let mut m = message(MessageType::MsgHeartbeat, 1, 2, term);
    m.commit = last + 100;
    assert_refused_and_fleet_commits(
        &mut net,
        client,
        2,
        m,
        |r| matches!(r, StepRefusal::CommitBeyondLog { commit, last_index } if *commit == last + 100 && *last_index == last),
    );
}

#[test]
fn finding_8_append_anchored_on_termless_index_is_refused() {
    // Log term 0 matches any index beyond the log: raft-rs would commit up to it.
    let (mut net, term, client) = fleet();
    let last = net.status(2).last_index;
    let mut m = message(MessageType::MsgAppend, 1, 2, term);
    m.index = last + 5;
    m.log_term = 0;
    m.commit = last + 5;
    assert_refused_and_fleet_commits(
        &mut net,
        client,
        2,
        m,
        |r| matches!(r, StepRefusal::AnchorTerm { index, log_term: 0, .. } if *index == last + 5),
    );
}

#[test]
fn finding_8_append_with_gapped_entries_is_refused() {
    let (mut net, term, client) = fleet();
    let last = net.status(2).last_index;
    let mut m = message(MessageType::MsgAppend, 1, 2, term);
    m.index = last;
    m.log_term = log_term(&net, 2, last);
    m.commit = last;
    m.set_entries(vec![entry(last + 1, term), entry(last + 3, term)].into());
    assert_refused_and_fleet_commits(
        &mut net,
        client,
        2,
        m,
        |r| matches!(r, StepRefusal::EntriesNotConsecutive { position: 1, expected, found } if *expected == last + 2 && *found == last + 3),
    );
}

#[test]
fn finding_8_append_conflicting_with_committed_entries_is_refused() {
    // Anchored at the commit index, but its entry rewrites the committed entry
    // there with another term: raft-rs's maybe_append is fatal on it.
    let (mut net, term, client) = fleet();
    let committed = net.status(2).commit;
    assert_eq!(log_term(&net, 2, committed), term);
    let mut m = message(MessageType::MsgAppend, 1, 2, term);
    m.index = committed;
    m.log_term = term;
    m.commit = committed;
    m.set_entries(vec![entry(committed, 1)].into());
    assert_refused_and_fleet_commits(
        &mut net,
        client,
        2,
        m,
        |r| matches!(r, StepRefusal::EntriesNotConsecutive { position: 0, found, .. } if *found == committed),
    );
}

#[test]
fn finding_8_append_with_termless_entry_is_refused() {
    // An entry of term 0 beyond the log "matches" (term 0 is what raft-rs reads
    // there), so raft-rs would take it as present and commit past its log.
    let (mut net, term, client) = fleet();
    let last = net.status(2).last_index;
    let mut m = message(MessageType::MsgAppend, 1, 2, term);
    m.index = last;
    m.log_term = log_term(&net, 2, last);
    m.commit = last + 1;
    m.set_entries(vec![entry(last + 1, 0)].into());
    assert_refused_and_fleet_commits(
        &mut net,
        client,
        2,
        m,
        |r| matches!(r, StepRefusal::EntryTerm { index, term: 0, .. } if *index == last + 1),
    );
}

#[test]
fn finding_8_append_with_undecodable_membership_change_is_refused() {
    // Committed, it would stop the replica on a CorruptEntry.
    let (mut net, term, client) = fleet();
    let last = net.status(2).last_index;
    let mut cc = ConfChangeV2::default();
    cc.set_changes(
        vec![raft_proto::new_conf_change_single(
            4,
            ConfChangeType::AddLearnerNode,
        )]
        .into(),
    );
    let mut e = entry(last + 1, term);
    e.set_entry_type(EntryType::EntryConfChangeV2);
    e.data = cc.write_to_bytes().unwrap().into();
    e.context = b"\xff\xff\xff".to_vec().into();
    let mut m = message(MessageType::MsgAppend, 1, 2, term);
    m.index = last;
    m.log_term = log_term(&net, 2, last);
    m.commit = last + 1;
    m.set_entries(vec![e].into());
    assert_refused_and_fleet_commits(
        &mut net,
        client,
        2,
        m,
        |r| matches!(r, StepRefusal::EntryMalformed { index, source: CorruptEntry::ConfChangeContext(_) } if *index == last + 1),
    );
}

#[test]
fn finding_8_snapshot_with_termless_metadata_is_refused() {
    // Term 0 "matches" beyond the log: raft-rs would fast-forward its commit there.
    let (mut net, term, client) = fleet();
    let last = net.status(2).last_index;
    let m = snapshot_message(&net, 1, 2, term, last + 5);
    let mut m = m;
    m.mut_snapshot().mut_metadata().term = 0;
    assert_refused_and_fleet_commits(
        &mut net,
        client,
        2,
        m,
        |r| matches!(r, StepRefusal::SnapshotMetadata { term: 0, index, .. } if *index == last + 5),
    );
}

#[test]
fn finding_8_snapshot_index_overflow_is_refused() {
    // raft-rs sets its unstable offset to the snapshot index plus one.
    let (mut net, term, client) = fleet();
    let m = snapshot_message(&net, 1, 2, term, u64::MAX);
    assert_refused_and_fleet_commits(&mut net, client, 2, m, |r| {
        matches!(
            r,
            StepRefusal::OutOfRange {
                field: "snapshot index",
                value: u64::MAX
            }
        )
    });
}

#[test]
fn finding_8_snapshot_conflicting_with_commit_is_refused() {
    // At the commit index but of another term: raft-rs would restore it over
    // the applied state (the replica's install asserts it is past what it applied).
    let (mut net, term, client) = fleet();
    let committed = net.status(2).commit;
    assert_eq!(net.status(2).applied, committed);
    let m = snapshot_message(&net, 1, 2, term, committed);
    let mut m = m;
    m.mut_snapshot().mut_metadata().term = 1;
    assert!(term > 1);
    assert_refused_and_fleet_commits(
        &mut net,
        client,
        2,
        m,
        |r| matches!(r, StepRefusal::SnapshotConflictsWithCommit { index, term: 1, committed_term } if *index == committed && *committed_term == term),
    );
}

#[test]
fn finding_8_snapshot_with_unrestorable_membership_is_refused() {
    // Replica 3 both voter and learner: raft-rs's restore demotes it, its
    // round-trip check then fails (`fatal!("invalid restore")`).
    let (mut net, term, client) = fleet();
    let last = net.status(2).last_index;
    let mut m = snapshot_message(&net, 1, 2, term, last + 5);
    m.mut_snapshot()
        .mut_metadata()
        .mut_conf_state()
        .learners
        .push(3);
    assert_refused_and_fleet_commits(&mut net, client, 2, m, |r| {
        matches!(
            r,
            StepRefusal::SnapshotConfState {
                defect: ConfStateDefect::Duplicate { id: 3 }
            }
        )
    });
}

#[test]
fn finding_8_snapshot_with_joint_membership_is_refused() {
    // auto_leave without outgoing voters does not round-trip either.
    let (mut net, term, client) = fleet();
    let last = net.status(2).last_index;
    let mut m = snapshot_message(&net, 1, 2, term, last + 5);
    m.mut_snapshot().mut_metadata().mut_conf_state().auto_leave = true;
    assert_refused_and_fleet_commits(&mut net, client, 2, m, |r| {
        matches!(
            r,
            StepRefusal::SnapshotConfState {
                defect: ConfStateDefect::Joint
            }
        )
    });
}

#[test]
fn finding_8_snapshot_with_undecodable_payload_is_refused() {
    // Installed, it would stop the replica on a ReplicaError::Snapshot.
    let (mut net, term, client) = fleet();
    let last = net.status(2).last_index;
    let mut m = snapshot_message(&net, 1, 2, term, last + 5);
    m.mut_snapshot().data = b"\xff\xff\xff".to_vec().into();
    assert_refused_and_fleet_commits(&mut net, client, 2, m, |r| {
        matches!(r, StepRefusal::SnapshotPayload { .. })
    });
}

#[test]
fn finding_8_empty_proposal_from_a_peer_is_refused() {
    // raft-rs: fatal!("stepped empty MsgProp") on the leader.
    let (mut net, _, client) = fleet();
    let m = message(MessageType::MsgPropose, 2, 1, 0);
    assert_refused_and_fleet_commits(&mut net, client, 1, m, |r| {
        matches!(r, StepRefusal::NeverSent(MessageType::MsgPropose))
    });
}

#[test]
fn finding_8_read_index_without_context_is_refused() {
    // raft-rs indexes `m.entries[0]` of a ReadIndex on the leader.
    let (mut net, _, client) = fleet();
    let m = message(MessageType::MsgReadIndex, 2, 1, 0);
    assert_refused_and_fleet_commits(&mut net, client, 1, m, |r| {
        matches!(r, StepRefusal::NeverSent(MessageType::MsgReadIndex))
    });
}

#[test]
fn finding_8_termless_read_index_response_is_refused() {
    // Term 0 skips raft-rs's term checks; its commit check then matches term 0
    // beyond the log and commits past it.
    let (mut net, _, client) = fleet();
    let last = net.status(2).last_index;
    let mut m = message(MessageType::MsgReadIndexResp, 1, 2, 0);
    m.index = last + 5;
    m.set_entries(vec![entry(0, 0)].into());
    assert_refused_and_fleet_commits(&mut net, client, 2, m, |r| {
        matches!(r, StepRefusal::NeverSent(MessageType::MsgReadIndexResp))
    });
}

#[test]
fn finding_8_termless_heartbeat_to_a_candidate_is_refused() {
    // Term 0 skips raft-rs's term checks, and a candidate asserts that a
    // heartbeat carries its own term.
    let (mut net, term, client) = fleet();
    net.isolate(3);
    for _ in 0..core_harness::ELECTION_TICKS_MAX {
        if net.status(3).role != StateRole::Follower {
            break;
        }
        net.tick(3);
        net.cycle(3);
    }
    assert_ne!(
        net.status(3).role,
        StateRole::Follower,
        "3 never campaigned"
    );
    assert!(net.status(3).term >= term);
    let m = message(MessageType::MsgHeartbeat, 1, 3, 0);
    let refused_before = net.replica(3).messages_refused();
    let outcome = net.replica_mut(3).step(m);
    assert!(
        matches!(&outcome, Err(e) if matches!(e.reason, StepRefusal::NoTerm(MessageType::MsgHeartbeat))),
        "{outcome:?}"
    );
    assert_eq!(net.replica(3).messages_refused(), refused_before + 1);
    net.drop_in_flight();
    net.recover();
    // Pre-vote keeps the isolated candidate from disturbing the leader.
    net.settle();
    net.tick_all(20);
    assert_refused_and_fleet_commits(
        &mut net,
        client,
        3,
        message(MessageType::MsgHeartbeat, 1, 3, 0),
        |r| matches!(r, StepRefusal::NoTerm(_)),
    );
}

#[test]
fn finding_8_snapshot_request_from_a_peer_is_refused() {
    // The leader would look up a snapshot at the requested index; with a store
    // that answers anything but "temporarily unavailable", raft-rs is fatal.
    let (mut net, term, client) = fleet();
    let mut m = message(MessageType::MsgAppendResponse, 2, 1, term);
    m.reject = true;
    m.index = net.status(1).last_index;
    m.request_snapshot = 1;
    assert_refused_and_fleet_commits(&mut net, client, 1, m, |r| {
        matches!(r, StepRefusal::SnapshotRequested { index: 1 })
    });
}

#[test]
fn finding_8_append_acknowledgement_beyond_leader_log_is_refused() {
    // The leader would record the follower as holding entries that do not exist
    // (and pass it as caught up for promotion or leadership transfer).
    let (mut net, term, client) = fleet();
    let last = net.status(1).last_index;
    let mut m = message(MessageType::MsgAppendResponse, 2, 1, term);
    m.index = last + 1_000;
    assert_refused_and_fleet_commits(
        &mut net,
        client,
        1,
        m,
        |r| matches!(r, StepRefusal::AckBeyondLog { index, last_index } if *index == last + 1_000 && *last_index == last),
    );
}

#[test]
fn finding_8_second_leader_in_a_term_is_refused() {
    // Replica 3 claims to lead replica 1's term; it could fast-forward 2's
    // commit over entries the real leader never committed.
    let (mut net, term, client) = fleet();
    let last = net.status(2).last_index;
    let mut m = message(MessageType::MsgHeartbeat, 3, 2, term);
    m.commit = last;
    assert_refused_and_fleet_commits(
        &mut net,
        client,
        2,
        m,
        |r| matches!(r, StepRefusal::SecondLeader { leader: 1, term: t } if *t == term),
    );
    assert_eq!(net.status(2).leader, Some(1));
}

#[test]
fn finding_8_message_from_sender_zero_or_self_is_refused() {
    // Sender 0 is raft-rs's "local": a read index from it would be served as
    // the leader's own read.
    let (mut net, term, client) = fleet();
    let mut m = message(MessageType::MsgHeartbeatResponse, 0, 1, term);
    m.commit = 1;
    assert_refused_and_fleet_commits(&mut net, client, 1, m, |r| {
        matches!(r, StepRefusal::BadSender { from: 0 })
    });
    let mut m = message(MessageType::MsgAppendResponse, 1, 1, term);
    m.index = 1;
    let refused = net.replica(1).messages_refused();
    let outcome = net.replica_mut(1).step(m);
    assert!(
        matches!(&outcome, Err(e) if matches!(e.reason, StepRefusal::BadSender { from: 1 })),
        "{outcome:?}"
    );
    assert_eq!(net.replica(1).messages_refused(), refused + 1);
}

#[test]
fn review_a_far_higher_term_is_adopted_not_refused() {
    // A relative bound on term jumps partitioned replicas whose terms drifted
    // apart (two messages from a hostile peer sufficed, and a member added at
    // term 0 to an old fleet could never join). A higher term is adopted, as
    // raft requires, and the fleet carries on.
    let (mut net, term, client) = fleet();
    let far = term + (1 << 21);
    let m = message(MessageType::MsgHeartbeatResponse, 2, 1, far);
    net.replica_mut(1)
        .step(m)
        .expect("a far higher term is adopted, not refused");
    assert_eq!(
        net.status(1).term,
        far,
        "the leader adopted the higher term"
    );
    let leader = net.elect_among(&[1, 2, 3], far);
    let put = net
        .propose(leader, client, 2, 2, KvStore::put("k", "v1"))
        .expect("propose after the term moved");
    net.settle();
    assert!(matches!(net.take(put), Some(Ok(Reply::Applied(_)))));
}

#[test]
fn review_a_forged_pre_vote_does_not_commit_entries_the_fleet_never_committed() {
    // raft-rs commits a vote message's `commit` when its `commit_term` matches
    // the local log (`maybe_commit_by_vote`): a forged pre-vote would make a
    // follower apply entries that were only appended, never committed.
    let (mut net, term, client) = fleet();
    net.propose(1, client, 2, 2, KvStore::put("k", "uncommitted"))
        .unwrap();
    // The leader sends the entry; only replica 2 receives it, and its ack is lost.
    net.cycle(1);
    net.deliver_where(|m| m.to == 2 && m.get_msg_type() == MessageType::MsgAppend);
    net.cycle(2);
    net.drop_in_flight();
    let before = net.status(2);
    assert!(
        before.last_index > before.commit,
        "replica 2 holds an uncommitted entry"
    );
    let mut m = message(MessageType::MsgRequestPreVote, 3, 2, term + 1);
    m.context = b"CampaignTransfer".to_vec().into();
    m.commit = before.last_index;
    m.commit_term = log_term(&net, 2, before.last_index);
    net.replica_mut(2)
        .step(m)
        .expect("a pre-vote is stepped (its commit fields dropped)");
    net.cycle(2);
    assert_eq!(
        net.status(2).commit,
        before.commit,
        "a pre-vote moved replica 2's commit index"
    );
}

#[test]
fn review_timeout_now_from_a_replica_that_is_not_the_leader_is_refused() {
    // MsgTimeoutNow makes a voter campaign at once, skipping pre-vote and every
    // lease check: from anyone but the leader it would depose the leader at will.
    let (mut net, term, client) = fleet();
    let m = message(MessageType::MsgTimeoutNow, 3, 2, term);
    assert_refused_and_fleet_commits(&mut net, client, 2, m, |r| {
        matches!(
            r,
            StepRefusal::TimeoutNowNotFromLeader { from: 3, leader: 1 }
        )
    });
    assert_eq!(net.status(2).term, term, "replica 2 did not campaign");
}

#[test]
fn finding_8_leadership_transfer_to_a_follower_is_refused() {
    // A follower forwards it to its leader; raft-rs's send is fatal on a
    // forwarded message that already carries a term. Every peer's ask is
    // refused now (review 6).
    let (mut net, term, client) = fleet();
    let m = message(MessageType::MsgTransferLeader, 3, 2, term);
    assert_refused_and_fleet_commits(&mut net, client, 2, m, |r| {
        matches!(r, StepRefusal::TransferAskRefused { from: 3 })
    });
}

#[test]
fn finding_8_snapshot_index_jump_is_refused() {
    // One snapshot at the top of the index range would leave the replica
    // refusing every honest append after it.
    let (mut net, term, client) = fleet();
    let last = net.status(2).last_index;
    let m = snapshot_message(&net, 1, 2, term, last + (1 << 48) + 1);
    assert_refused_and_fleet_commits(
        &mut net,
        client,
        2,
        m,
        |r| matches!(r, StepRefusal::SnapshotIndexJump { last_index, .. } if *last_index == last),
    );
    assert_eq!(net.status(2).last_index, net.status(1).last_index);
}

#[test]
fn finding_8_append_adding_an_unlabelled_learner_is_refused() {
    // Committed, it would stop the replica on CorruptEntry::MissingLabel.
    let (mut net, term, client) = fleet();
    let last = net.status(2).last_index;
    let mut cc = ConfChangeV2::default();
    cc.set_changes(
        vec![raft_proto::new_conf_change_single(
            4,
            ConfChangeType::AddLearnerNode,
        )]
        .into(),
    );
    let mut e = entry(last + 1, term);
    e.set_entry_type(EntryType::EntryConfChangeV2);
    e.data = cc.write_to_bytes().unwrap().into();
    e.context = vaultfleet::wire::encode(&vaultfleet::wire::ConfChangeContext::new())
        .unwrap()
        .into();
    let mut m = message(MessageType::MsgAppend, 1, 2, term);
    m.index = last;
    m.log_term = log_term(&net, 2, last);
    m.commit = last + 1;
    m.set_entries(vec![e].into());
    assert_refused_and_fleet_commits(&mut net, client, 2, m, |r| {
        matches!(
            r,
            StepRefusal::EntryMalformed {
                source: CorruptEntry::MissingLabel { member: 4 },
                ..
            }
        )
    });
}

/// Issue 14's review: protobuf 2 decodes each log entry into ~100 bytes, and an
/// entry can be 2 bytes on the wire (`3a 00`), so a 2 MiB frame from an
/// authenticated peer decoded to 100 MiB. `decode_message` counts entries on the
/// wire bytes first and refuses more than `MESSAGE_ENTRIES_MAX`.
#[test]
fn review_net_2_a_message_of_countless_empty_entries_is_refused_before_decoding() {
    use vaultfleet::replica::{decode_message, encode_message, MESSAGE_ENTRIES_MAX};
    use vaultfleet::wire::ProtobufError;
    let mut m = message(MessageType::MsgAppend, 1, 2, 5);
    m.index = 7;
    let mut bytes = encode_message(&m).expect("encode");
    for _ in 0..=MESSAGE_ENTRIES_MAX {
        bytes.extend_from_slice(&[0x3a, 0x00]);
    }
    let e = decode_message(&bytes).expect_err("too many entries");
    assert!(
        matches!(
            e.source,
            ProtobufError::TooManyEntries { entries, max }
                if entries == MESSAGE_ENTRIES_MAX + 1 && max == MESSAGE_ENTRIES_MAX
        ),
        "{e}"
    );
    // At the bound it decodes, and an honest append round-trips.
    bytes.truncate(bytes.len() - 2);
    let decoded = decode_message(&bytes).expect("at the bound");
    assert_eq!(decoded.entries.len(), MESSAGE_ENTRIES_MAX);
    let mut honest = message(MessageType::MsgAppend, 1, 2, 5);
    honest.entries = (1..=3)
        .map(|i| {
            let mut e = Entry::default();
            e.term = 5;
            e.index = i;
            e.data = b"a command".to_vec().into();
            e
        })
        .collect();
    let back = decode_message(&encode_message(&honest).expect("encode")).expect("decode");
    assert_eq!(back, honest);
}

/// A streamed snapshot (format 2) naming the file `descriptor`, with the
/// target's own members and limits.
fn streamed_snapshot_message(
    net: &Network,
    to: u64,
    term: u64,
    index: u64,
    descriptor: &vaultfleet::snapshot::SnapshotDescriptor,
) -> Message {
    use vaultfleet::codec::Codec as _;
    let mut m = snapshot_message(net, 1, to, term, index);
    let mut payload: vaultfleet::wire::SnapshotPayload =
        vaultfleet::wire::decode(&m.get_snapshot().data, "payload").expect("bootstrap payload");
    payload.format_version = 2;
    payload.sessions.clear();
    payload.state.clear();
    payload.descriptor = descriptor.to_bytes().expect("descriptor");
    m.mut_snapshot().data = vaultfleet::wire::encode(&payload).expect("encode").into();
    m
}

/// A well-formed descriptor (its id is its digest's) of a file no replica
/// holds.
fn descriptor(index: u64, term: u64) -> vaultfleet::snapshot::SnapshotDescriptor {
    let group = vaultfleet::ReplicaConfig::new(1).group;
    let digest = [7; 32];
    vaultfleet::snapshot::SnapshotDescriptor {
        group,
        creator: 1,
        index,
        term,
        id: vaultfleet::snapshot::snapshot_id(group, 1, &digest),
        total_bytes: 0,
        chunk_bytes: vaultfleet::snapshot::CHUNK_BYTES_DEFAULT,
        chunks: 0,
        digest,
    }
}

/// As [`fleet`], every replica's store keeping snapshot files (streamed
/// snapshots on).
fn fleet_with_files() -> (Network, u64, u64) {
    use vaultfleet::storage::SnapshotFilesHost as _;
    let config = vaultfleet::FleetConfig::new(
        [1, 2, 3]
            .iter()
            .map(|&id| vaultfleet::MemberSpec::voter(id, format!("dc-{id}")))
            .collect(),
    );
    let mut net = Network::with_fleet_prepared(
        &config,
        |store| store.open_snapshot_files(0, None).expect("files"),
        |_| {},
        KvStore::new,
    );
    let term = net.elect(1);
    let client = net.register(1);
    let put = net
        .propose(1, client, 1, 1, KvStore::put("k", "v0"))
        .unwrap();
    net.settle();
    assert!(matches!(net.take(put), Some(Ok(Reply::Applied(_)))));
    (net, term, client)
}

#[test]
fn a_streamed_snapshot_whose_file_was_never_received_is_refused() {
    // Installed, it would stop the replica: there is no file to restore from.
    // The target keeps files, so the refusal is the files' answer (it does not
    // hold this one), not the absence of files.
    let (mut net, term, client) = fleet_with_files();
    assert!(net.replica(2).snapshot_files().is_some());
    let last = net.status(2).last_index;
    let m = streamed_snapshot_message(&net, 2, term, last + 5, &descriptor(last + 5, term));
    assert_refused_and_fleet_commits(&mut net, client, 2, m, |r| {
        matches!(r, StepRefusal::SnapshotNotReceived { .. })
    });
}

#[test]
fn a_streamed_snapshot_to_a_replica_without_files_is_refused() {
    let (mut net, term, client) = fleet();
    assert!(net.replica(2).snapshot_files().is_none());
    let last = net.status(2).last_index;
    let m = streamed_snapshot_message(&net, 2, term, last + 5, &descriptor(last + 5, term));
    assert_refused_and_fleet_commits(&mut net, client, 2, m, |r| {
        matches!(r, StepRefusal::SnapshotNotReceived { .. })
    });
}

#[test]
fn a_streamed_snapshot_whose_descriptor_names_another_snapshot_is_refused() {
    let (mut net, term, client) = fleet_with_files();
    let last = net.status(2).last_index;
    // Another index, another term, another group.
    for d in [
        descriptor(last + 6, term),
        descriptor(last + 5, term + 1),
        {
            let mut d = descriptor(last + 5, term);
            d.group += 1;
            d.id = vaultfleet::snapshot::snapshot_id(d.group, d.creator, &d.digest);
            d
        },
    ] {
        let m = streamed_snapshot_message(&net, 2, term, last + 5, &d);
        assert_refused_and_fleet_commits(&mut net, client, 2, m, |r| {
            matches!(
                r,
                StepRefusal::SnapshotPayload {
                    source: vaultfleet::replica::SnapshotError::DescriptorMismatch { .. }
                }
            )
        });
    }
}

/// Issue 18 review, M5: a build the driver drops without running (the core
/// harness clears its output) must not stop snapshots for good.
#[test]
fn a_snapshot_build_dropped_unrun_is_counted_and_the_next_one_taken() {
    use vaultfleet::storage::SnapshotFilesHost as _;
    let config = vaultfleet::FleetConfig::new(
        [1, 2, 3]
            .iter()
            .map(|&id| vaultfleet::MemberSpec::voter(id, format!("dc-{id}")))
            .collect(),
    );
    let mut net = Network::with_fleet_prepared(
        &config,
        |store| store.open_snapshot_files(0, None).expect("files"),
        |cfg| cfg.snapshot_entries_min = 5,
        KvStore::new,
    );
    net.elect(1);
    let client = net.register(1);
    for sequence in 1..=40 {
        let put = net
            .propose(1, client, sequence, sequence, KvStore::put("k", "v"))
            .unwrap();
        net.settle();
        assert!(matches!(net.take(put), Some(Ok(Reply::Applied(_)))));
    }
    // Every build was dropped; each was noticed and the next one started.
    assert!(
        net.replica(1).snapshots_failed() >= 2,
        "builds dropped unrun: {} counted",
        net.replica(1).snapshots_failed()
    );
}

/// A vote request at the term after `term` from `from` to `to`, forced as a
/// leadership transfer's campaign (`CAMPAIGN_TRANSFER`), with `from`'s log.
fn forced_vote(net: &Network, kind: MessageType, from: u64, to: u64, term: u64) -> Message {
    let status = net.status(from);
    let mut m = message(kind, from, to, term + 1);
    m.index = status.last_index;
    m.log_term = log_term(net, from, status.last_index);
    m.context = raft::CAMPAIGN_TRANSFER.to_vec().into();
    m
}

/// Steps replica 3's forced vote request (at `term + 1`) into replica 2,
/// which takes it, forced or as an ordinary one.
fn step_3s_forced_vote(net: &mut Network, term: u64) {
    let m = forced_vote(net, MessageType::MsgRequestVote, 3, 2, term);
    net.replica_mut(2)
        .step(m)
        .expect("a vote request is stepped");
}

/// Review 5: raft-rs lets a vote request whose context is `CampaignTransfer`
/// skip every lease check, so one from any voter, at the next term, made the
/// leader and every follower step to that term at once; the voter could do
/// it again every election, and no write went in meanwhile. The force is
/// honoured only for a transfer the leader started (and announced).
#[test]
fn review_5_a_forged_transfer_campaign_does_not_depose_the_leader() {
    let mut net = Network::new(&[1, 2, 3, 4, 5], |_| {});
    let term = net.elect(1);
    let client = net.register(1);
    for seq in 1..=5 {
        for to in [1, 2, 4, 5] {
            let m = forced_vote(&net, MessageType::MsgRequestVote, 3, to, term);
            net.replica_mut(to)
                .step(m)
                .expect("stepped as an ordinary vote");
        }
        net.settle();
        for id in [1, 2, 4, 5] {
            assert_eq!(net.status(id).term, term, "replica {id} moved to 3's term");
        }
        assert!(net.replica(1).is_leader(), "{:?}", net.status(1));
        let put = net
            .propose(1, client, seq, seq, KvStore::put("k", "v"))
            .unwrap();
        net.settle();
        assert!(matches!(net.take(put), Some(Ok(Reply::Applied(_)))));
        net.tick_all(1);
    }
}

/// Review 5: a forced pre-vote is never honoured (raft-rs's transfers
/// campaign without one): a follower that hears its leader ignores it
/// rather than granting it.
#[test]
fn review_5_a_forced_pre_vote_is_not_granted_within_the_lease() {
    let (mut net, term, _) = fleet();
    let m = forced_vote(&net, MessageType::MsgRequestPreVote, 3, 2, term);
    net.replica_mut(2)
        .step(m)
        .expect("stepped as an ordinary pre-vote");
    net.cycle(2);
    let granted = net.in_flight.iter().any(|m| {
        m.get_msg_type() == MessageType::MsgRequestPreVoteResponse && m.to == 3 && !m.reject
    });
    assert!(
        !granted,
        "replica 2 granted a forced pre-vote: {:?}",
        net.in_flight
    );
}

/// A leader's transfer in a fleet of five still hands over without waiting
/// for an election timeout: the leader announces it, and the voters honour
/// the transferee's forced campaign (it needs three votes, two more than the
/// leader's and its own).
#[test]
fn review_5_an_announced_transfer_hands_over_at_once_in_a_fleet_of_five() {
    let mut net = Network::new(&[1, 2, 3, 4, 5], |_| {});
    let term = net.elect(1);
    net.register(1);
    net.replica_mut(1).transfer_leader(3);
    net.settle();
    assert!(net.replica(3).is_leader(), "3 {:?}", net.status(3));
    assert_eq!(net.status(3).term, term + 1);
    for id in [1, 2, 4, 5] {
        assert_eq!(net.status(id).leader, Some(3), "{id} {:?}", net.status(id));
    }
}

/// Review 5: only the leader, in its term, announces a transfer; anyone
/// else's announcement is refused, and the replica it names gets no force.
#[test]
fn review_5_a_transfer_announcement_not_from_the_leader_is_refused() {
    let (mut net, term, client) = fleet();
    let m = announcement(3, 2, term, &3u64.to_be_bytes(), 1);
    assert_refused_and_fleet_commits(&mut net, client, 2, m, |r| {
        matches!(
            r,
            StepRefusal::AnnouncementNotFromLeader { from: 3, leader: 1 }
        )
    });
    let m = announcement(1, 2, term + 1, &3u64.to_be_bytes(), 1);
    assert!(matches!(
        net.replica_mut(2).step(m).map_err(|e| e.reason),
        Err(StepRefusal::AnnouncementNotFromLeader { from: 1, leader: 1 })
    ));
    let m = announcement(1, 2, term, &[0, 3], 1);
    assert!(matches!(
        net.replica_mut(2).step(m).map_err(|e| e.reason),
        Err(StepRefusal::AnnouncementMalformed { bytes: 2 })
    ));
    let term = net.status(2).term;
    step_3s_forced_vote(&mut net, term);
    assert_eq!(net.status(2).term, term, "replica 2 honoured the force");
}

/// Review 5: a leader's announcement forces 3's campaign at 2 for an
/// election timeout, not longer; within it, it does.
#[test]
fn review_5_an_announced_transfer_forces_its_campaign_for_an_election_timeout_only() {
    let (mut net, term, _) = fleet();
    let m = announcement(1, 2, term, &3u64.to_be_bytes(), 1);
    net.replica_mut(2)
        .step(m)
        .expect("the leader's announcement");
    // 1's heartbeats keep 2 in its lease past the announcement's window.
    let election = core_harness::test_config(2).election_ticks;
    net.tick_all(election + 1);
    assert_eq!(net.status(2).term, term);
    step_3s_forced_vote(&mut net, term);
    assert_eq!(net.status(2).term, term, "the force outlived its window");
    // Said again, the window still runs from the first time.
    let m = announcement(1, 2, term, &3u64.to_be_bytes(), 1);
    net.replica_mut(2).step(m).unwrap();
    step_3s_forced_vote(&mut net, term);
    assert_eq!(net.status(2).term, term, "a repeat extended the window");
    // Ended, then a fresh transfer: now 3's campaign moves 2 to its term.
    let m = announcement(1, 2, term, &0u64.to_be_bytes(), 2);
    net.replica_mut(2).step(m).unwrap();
    let m = announcement(1, 2, term, &3u64.to_be_bytes(), 3);
    net.replica_mut(2).step(m).unwrap();
    step_3s_forced_vote(&mut net, term);
    assert_eq!(
        net.status(2).term,
        term + 1,
        "the announced campaign was ignored"
    );
}

/// Review 6 (HIGH-1): a voter that asked for leadership had the leader start
/// the transfer and announce it, so its forced campaign then deposed the
/// leader: any voter could lead at will, every term. An ask is refused, the
/// leader announces nothing, and the voter's forced campaign is an ordinary
/// one the others ignore while they hear their leader.
#[test]
fn review_6_a_voters_ask_for_leadership_is_refused_and_gives_it_no_force() {
    let mut net = Network::new(&[1, 2, 3, 4, 5], |_| {});
    let term = net.elect(1);
    let client = net.register(1);
    let ask = message(MessageType::MsgTransferLeader, 3, 1, term);
    assert_refused_and_fleet_commits(&mut net, client, 1, ask, |r| {
        matches!(r, StepRefusal::TransferAskRefused { from: 3 })
    });
    net.cycle(1);
    assert!(
        !net.in_flight.iter().any(|m| matches!(
            m.get_msg_type(),
            MessageType::MsgTimeoutNow | MessageType::MsgTransferLeader
        )),
        "the leader started or announced a transfer: {:?}",
        net.in_flight
    );
    for to in [2, 4, 5, 1] {
        let m = forced_vote(&net, MessageType::MsgRequestVote, 3, to, term);
        net.replica_mut(to).step(m).expect("an ordinary vote");
    }
    net.settle();
    for id in [1, 2, 4, 5] {
        assert_eq!(net.status(id).term, term, "replica {id} moved to 3's term");
    }
    assert!(net.replica(1).is_leader(), "{:?}", net.status(1));
}

/// Review 6 (MEDIUM-4): a transfer that timed out left the transferee's
/// force standing at the followers for the rest of their window: its
/// campaign, cut off from the leader, could still depose it. The leader
/// announces the end, and the followers forget the transfer.
#[test]
fn review_6_a_transfer_that_timed_out_is_announced_ended() {
    let mut net = Network::new(&[1, 2, 3, 4, 5], |_| {});
    let term = net.elect(1);
    net.register(1);
    // 3 never hears the MsgTimeoutNow.
    net.cut(1, 3);
    net.replica_mut(1).transfer_leader(3);
    net.cycle(1);
    let started: Vec<_> = net.in_flight.iter().filter_map(announced).collect();
    assert_eq!(started, [3, 3, 3, 3], "announced to 2, 3, 4 and 5");
    let election = core_harness::test_config(1).election_ticks;
    let mut ended = false;
    for _ in 0..2 * election {
        for id in net.ids() {
            net.tick(id);
        }
        net.cycle_all();
        ended |= net.in_flight.iter().any(|m| announced(m) == Some(0));
        net.settle();
        if ended {
            break;
        }
    }
    assert!(ended, "the leader never announced the end of its transfer");
    assert!(net.replica(1).is_leader(), "{:?}", net.status(1));
    step_3s_forced_vote(&mut net, term);
    assert_eq!(net.status(2).term, term, "the force outlived the transfer");
}

/// Review 6 (MEDIUM-4): a transferee that declines (it restores a snapshot)
/// ends the transfer; the leader announces that end too.
#[test]
fn review_6_a_declined_transfer_is_announced_ended() {
    let mut net = Network::new(&[1, 2, 3, 4, 5], |_| {});
    let term = net.elect(1);
    net.register(1);
    net.cut(1, 3);
    net.replica_mut(1).transfer_leader(3);
    net.cycle(1);
    // The transfer's number, as its announcement (and its MsgTimeoutNow,
    // had 3 been reachable) carries it; a decline echoes it.
    let number = net
        .in_flight
        .iter()
        .find(|m| announced(m) == Some(3))
        .map(|m| m.index)
        .expect("the transfer to 3 is announced");
    net.settle();
    let mut decline = message(MessageType::MsgTransferLeader, 3, 1, term);
    decline.index = number;
    decline.context = vaultfleet::replica::TRANSFER_DECLINED.to_vec().into();
    net.replica_mut(1)
        .step(decline)
        .expect("the transferee's decline");
    net.cycle(1);
    let ended: Vec<_> = net.in_flight.iter().filter_map(announced).collect();
    assert_eq!(ended, [0, 0, 0, 0], "announced to every other voter");
    net.settle();
    step_3s_forced_vote(&mut net, term);
    assert_eq!(net.status(2).term, term, "the force outlived the transfer");
}

/// Whether `m`, a forced vote request to replica 2 (at `term`), moved 2 off
/// `term` or, for a pre-vote, was granted.
fn force_taken(net: &mut Network, m: Message, term: u64) -> bool {
    let from = m.from;
    net.replica_mut(2).step(m).expect("stepped");
    net.cycle(2);
    let granted = net.in_flight.iter().any(|m| {
        m.get_msg_type() == MessageType::MsgRequestPreVoteResponse && m.to == from && !m.reject
    });
    granted || net.status(2).term != term
}

/// Review 6 (test gaps): the force holds only for the transferee named, at
/// the term right after the leader's, and never for a pre-vote.
#[test]
fn review_6_an_announcement_forces_only_the_transferees_vote_at_the_next_term() {
    let (mut net, term, _) = fleet();
    let m = announcement(1, 2, term, &3u64.to_be_bytes(), 1);
    net.replica_mut(2)
        .step(m)
        .expect("the leader's announcement");
    let other = forced_vote(&net, MessageType::MsgRequestVote, 1, 2, term);
    assert!(
        !force_taken(&mut net, other, term),
        "a vote from another replica than the transferee was forced"
    );
    let pre_vote = forced_vote(&net, MessageType::MsgRequestPreVote, 3, 2, term);
    assert!(
        !force_taken(&mut net, pre_vote, term),
        "the transferee's forced pre-vote was granted"
    );
    let mut later = forced_vote(&net, MessageType::MsgRequestVote, 3, 2, term);
    later.term += 1;
    assert!(
        !force_taken(&mut net, later, term),
        "the transferee's vote two terms on was forced"
    );
    let vote = forced_vote(&net, MessageType::MsgRequestVote, 3, 2, term);
    assert!(
        force_taken(&mut net, vote, term),
        "the transferee's vote at the next term was not forced"
    );
}

/// Review 6 (test gaps): an announcement holds for the term it was made in
/// only: once 2 follows a later term (of the same leader), 3's forced vote
/// is an ordinary one.
#[test]
fn review_6_an_announcement_of_an_earlier_term_forces_nothing() {
    let (mut net, term, _) = fleet();
    let m = announcement(1, 2, term, &3u64.to_be_bytes(), 1);
    net.replica_mut(2)
        .step(m)
        .expect("the leader's announcement");
    let heartbeat = message(MessageType::MsgHeartbeat, 1, 2, term + 1);
    net.replica_mut(2).step(heartbeat).expect("a heartbeat");
    assert_eq!(net.status(2).term, term + 1);
    assert_eq!(net.status(2).leader, Some(1));
    step_3s_forced_vote(&mut net, term + 1);
    assert_eq!(
        net.status(2).term,
        term + 1,
        "a stale announcement forced a vote"
    );
}

/// Review 6 (MEDIUM-2): the transferee's forced vote requests can overtake
/// the leader's announcement (two hops against one, on other connections).
/// Taken as ordinary ones, the lease ignored them and the transfer ended in
/// an election. A follower keeps the last one and steps it with its force
/// when the announcement follows.
#[test]
fn review_6_a_forced_vote_that_overtakes_its_announcement_still_hands_over() {
    let mut net = Network::new(&[1, 2, 3, 4, 5], |_| {});
    let term = net.elect(1);
    net.register(1);
    net.replica_mut(1).transfer_leader(3);
    net.cycle(1);
    net.deliver_where(|m| m.get_msg_type() == MessageType::MsgTimeoutNow);
    net.cycle(3);
    net.deliver_where(|m| m.get_msg_type() == MessageType::MsgRequestVote);
    for id in [2, 4, 5] {
        assert_eq!(
            net.status(id).term,
            term,
            "{id} took a vote before its announcement"
        );
    }
    net.settle();
    assert!(net.replica(3).is_leader(), "{:?}", net.status(3));
    assert_eq!(net.status(3).term, term + 1);
}

/// Review 6 (MEDIUM-2): a held vote request is honoured only for the
/// campaign the announcement names; another voter's is dropped.
#[test]
fn review_6_a_held_vote_of_another_voter_is_not_forced_by_an_announcement() {
    let mut net = Network::new(&[1, 2, 3, 4, 5], |_| {});
    let term = net.elect(1);
    net.register(1);
    let m = forced_vote(&net, MessageType::MsgRequestVote, 4, 2, term);
    net.replica_mut(2).step(m).expect("an ordinary vote");
    let m = announcement(1, 2, term, &3u64.to_be_bytes(), 1);
    net.replica_mut(2)
        .step(m)
        .expect("the leader's announcement");
    assert_eq!(net.status(2).term, term, "4's held vote was forced");
}

/// Review 7 (LOW-3): an announcement older than the last one taken (late,
/// reordered or replayed) revives no transfer: after the end, the first
/// announcement again gives its transferee no force.
#[test]
fn review_7_an_announcement_older_than_the_last_revives_nothing() {
    let (mut net, term, _) = fleet();
    for m in [
        announcement(1, 2, term, &3u64.to_be_bytes(), 1),
        announcement(1, 2, term, &0u64.to_be_bytes(), 2),
        announcement(1, 2, term, &3u64.to_be_bytes(), 1),
    ] {
        net.replica_mut(2)
            .step(m)
            .expect("the leader's announcement");
    }
    step_3s_forced_vote(&mut net, term);
    assert_eq!(
        net.status(2).term,
        term,
        "a stale announcement revived the force"
    );
}

/// Review 7 (MEDIUM-2): the end of a transfer to 3 was lost; the leader's
/// next transfer to 3 in the same term was taken as a repeat of the first,
/// whose window had closed, so it ended in an election. Each announcement
/// has its number: the new one opens a new window.
#[test]
fn review_7_a_new_transfer_to_the_same_voter_after_a_lost_end_hands_over() {
    let mut net = Network::new(&[1, 2, 3, 4, 5], |_| {});
    let term = net.elect(1);
    net.register(1);
    net.cut(1, 3);
    net.replica_mut(1).transfer_leader(3);
    net.settle();
    let election = core_harness::test_config(1).election_ticks;
    let mut ended = false;
    for _ in 0..2 * election {
        for id in net.ids() {
            net.tick(id);
        }
        net.cycle_all();
        ended |= net.in_flight.iter().any(|m| announced(m) == Some(0));
        net.in_flight.retain(|m| announced(m) != Some(0));
        net.settle();
        if ended {
            break;
        }
    }
    assert!(ended, "the transfer never ended");
    net.tick_all(election + 1);
    net.recover();
    for _ in 0..3 * election {
        net.tick_all(1);
        if net.status(3).leader == Some(1) && net.status(3).role == StateRole::Follower {
            break;
        }
    }
    assert_eq!(net.status(1).term, term, "{:?}", net.status(1));
    net.replica_mut(1).transfer_leader(3);
    net.settle();
    assert!(
        net.replica(3).is_leader(),
        "3 {:?}; 2 {:?}",
        net.status(3),
        net.status(2)
    );
    assert_eq!(net.status(3).term, term + 1);
}

/// Review 7 (LOW-5): a follower holds one forced vote per voter: another
/// voter's does not displace the transferee's before the announcement.
#[test]
fn review_7_a_held_vote_is_not_displaced_by_another_voters() {
    let mut net = Network::new(&[1, 2, 3, 4, 5], |_| {});
    let term = net.elect(1);
    net.register(1);
    for from in [3, 4] {
        let m = forced_vote(&net, MessageType::MsgRequestVote, from, 2, term);
        net.replica_mut(2).step(m).expect("an ordinary vote");
    }
    let m = announcement(1, 2, term, &3u64.to_be_bytes(), 1);
    net.replica_mut(2)
        .step(m)
        .expect("the leader's announcement");
    assert_eq!(net.status(2).term, term + 1, "3's held vote was lost");
}

/// Review 7 (test gaps): a transfer replaced by another is announced, and
/// the first transferee's force ends with it.
#[test]
fn review_7_a_replaced_transfer_is_announced() {
    let mut net = Network::new(&[1, 2, 3, 4, 5], |_| {});
    let term = net.elect(1);
    net.register(1);
    net.cut(1, 3);
    net.cut(1, 4);
    net.replica_mut(1).transfer_leader(3);
    net.settle();
    net.replica_mut(1).transfer_leader(4);
    net.cycle(1);
    let named: Vec<_> = net.in_flight.iter().filter_map(announced).collect();
    assert_eq!(named, [4, 4, 4, 4], "announced to 2, 3, 4 and 5");
    net.settle();
    step_3s_forced_vote(&mut net, term);
    assert_eq!(
        net.status(2).term,
        term,
        "the replaced transferee kept its force"
    );
}

/// Review 7 (test gaps): a leader that hands over announces nothing once it
/// no longer leads (its followers would refuse it anyway).
#[test]
fn review_7_a_leader_that_handed_over_announces_no_end() {
    let mut net = Network::new(&[1, 2, 3, 4, 5], |_| {});
    net.elect(1);
    net.register(1);
    net.replica_mut(1).transfer_leader(3);
    for _ in 0..core_harness::SETTLE_ROUNDS_MAX {
        net.cycle_all();
        let ends: Vec<_> = net
            .in_flight
            .iter()
            .filter(|m| m.from == 1 && announced(m) == Some(0))
            .collect();
        assert!(
            ends.is_empty(),
            "1 announced an end after handing over: {ends:?}"
        );
        if net.in_flight.is_empty() {
            break;
        }
        while net.deliver_one() {}
    }
    assert!(net.replica(3).is_leader(), "{:?}", net.status(3));
}

/// Review 7 (test gaps): a `MsgTransferLeader` naming the receiver as its
/// sender is refused, with a marker or without.
#[test]
fn review_7_a_transfer_message_from_the_receivers_own_id_is_refused() {
    let (mut net, term, client) = fleet();
    let m = announcement(2, 2, term, &3u64.to_be_bytes(), 1);
    assert_refused_and_fleet_commits(&mut net, client, 2, m, |r| {
        matches!(r, StepRefusal::BadSender { from: 2 })
    });
    let m = message(MessageType::MsgTransferLeader, 1, 1, term);
    assert_refused_and_fleet_commits(&mut net, client, 1, m, |r| {
        matches!(r, StepRefusal::BadSender { from: 1 })
    });
}

/// Review 8 (MEDIUM-1): a leader of a build that numbered no announcement
/// (index 0, b7fb552 to 4e32124) is still heard: its end ends the force, and
/// its second transfer in the term is honoured; only an exact repeat is
/// ignored.
#[test]
fn review_8_an_unnumbered_leaders_announcements_are_taken() {
    let mut net = Network::new(&[1, 2, 3, 4, 5], |_| {});
    let term = net.elect(1);
    net.register(1);
    for m in [
        announcement(1, 2, term, &3u64.to_be_bytes(), 0),
        announcement(1, 2, term, &0u64.to_be_bytes(), 0),
    ] {
        net.replica_mut(2)
            .step(m)
            .expect("the leader's announcement");
    }
    step_3s_forced_vote(&mut net, term);
    assert_eq!(
        net.status(2).term,
        term,
        "the ended transfer kept its force"
    );
    let m = announcement(1, 2, term, &4u64.to_be_bytes(), 0);
    net.replica_mut(2)
        .step(m)
        .expect("the leader's announcement");
    let m = forced_vote(&net, MessageType::MsgRequestVote, 4, 2, term);
    net.replica_mut(2).step(m).expect("a forced vote");
    assert_eq!(
        net.status(2).term,
        term + 1,
        "4's announced campaign was not forced"
    );
}

/// Review 8 (test gap): announcement numbers count per (leader, term): a new
/// leader's first announcement is taken although the previous leader's last
/// number was higher.
#[test]
fn review_8_a_new_leaders_first_announcement_is_taken_after_a_higher_old_number() {
    let mut net = Network::new(&[1, 2, 3, 4, 5], |_| {});
    let term = net.elect(1);
    net.register(1);
    for id in [2, 3, 4, 5] {
        let m = announcement(1, id, term, &3u64.to_be_bytes(), 5);
        net.replica_mut(id)
            .step(m)
            .expect("the leader's announcement");
    }
    net.isolate(1);
    let leader = net.elect_among(&[2, 3, 4, 5], term);
    let term2 = net.status(leader).term;
    let others: Vec<u64> = [2, 3, 4, 5]
        .into_iter()
        .filter(|&id| id != leader)
        .collect();
    let (f, x) = (others[0], others[1]);
    assert_eq!(net.status(f).leader, Some(leader));
    let m = announcement(leader, f, term2, &x.to_be_bytes(), 1);
    net.replica_mut(f)
        .step(m)
        .expect("the new leader's announcement");
    let m = forced_vote(&net, MessageType::MsgRequestVote, x, f, term2);
    net.replica_mut(f).step(m).expect("a forced vote");
    assert_eq!(
        net.status(f).term,
        term2 + 1,
        "the new leader's announcement was ignored"
    );
}
