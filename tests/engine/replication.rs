//! The replication core driven by the threaded runtime: elections, replication,
//! crashes and restarts, snapshots, membership, reads and deduplication.
//! No test asserts a duration; waits are bounded only to fail instead of hanging.
// Tests of the threaded runtime use threads and wall-clock waits.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use crate::harness;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use harness::{get, put, Fleet, Store};
use vaultfleet::replica::{MembershipChange, Reply, RequestError};
use vaultfleet::transport::{Envelope, SnapshotDone, SnapshotSent, Transport, TransportError};
use vaultfleet::wire::Request;
use vaultfleet::{FleetConfig, KvStore, MemberSpec};

const THREE: [(u64, &str); 3] = [(1, "dc-a"), (2, "dc-b"), (3, "dc-c")];
const FIVE_IN_THREE: [(u64, &str); 5] = [
    (1, "dc-a"),
    (2, "dc-a"),
    (3, "dc-b"),
    (4, "dc-b"),
    (5, "dc-c"),
];

#[test]
fn three_replicas_elect_one_leader_they_all_agree_on() {
    let fleet = Fleet::start(&THREE, Store::Mem);
    let leader = fleet.wait_leader();
    let term = fleet.status(leader).term;
    for id in 1..=3 {
        assert_eq!(fleet.status(id).leader, Some(leader));
        assert_eq!(fleet.status(id).term, term);
    }
}

#[test]
fn commands_replicate_to_every_replica_in_order() {
    let fleet = Fleet::start(&THREE, Store::Mem);
    let client = fleet.client();
    for i in 0..200 {
        assert_eq!(put(&client, &format!("k{i}"), &format!("v{i}")), None);
    }
    assert_eq!(put(&client, "k7", "again"), Some(b"v7".to_vec()));
    let commit = fleet.leader_status().commit;
    fleet.wait_applied(commit);
    for i in 0..200 {
        assert_eq!(
            get(&client, &format!("k{i}")).as_deref(),
            Some(if i == 7 {
                &b"again"[..]
            } else {
                format!("v{i}").into_bytes().leak()
            })
        );
    }
}

#[test]
fn a_new_leader_is_elected_after_the_leader_crashes_and_nothing_acknowledged_is_lost() {
    let mut fleet = Fleet::start(&THREE, Store::Sled);
    let client = fleet.client();
    for i in 0..50 {
        put(&client, &format!("k{i}"), "before");
    }
    let old = fleet.wait_leader();
    fleet.stop(old);
    let new = fleet.wait_leader();
    assert_ne!(new, old);
    for i in 0..50 {
        assert_eq!(
            get(&client, &format!("k{i}")),
            Some(b"before".to_vec()),
            "acknowledged k{i} lost"
        );
    }
    put(&client, "after", "crash");
    fleet.restart(old);
    let commit = fleet.leader_status().commit;
    fleet.wait_applied(commit);
}

#[test]
fn a_follower_restarted_from_sled_keeps_every_acknowledged_entry() {
    let mut fleet = Fleet::start(&THREE, Store::Sled);
    let client = fleet.client();
    let leader = fleet.wait_leader();
    let follower = (1..=3).find(|&id| id != leader).unwrap_or(1);
    for i in 0..100 {
        put(&client, &format!("k{i}"), "v");
    }
    let acked = fleet.status(leader).commit;
    fleet.wait_applied(acked);
    fleet.stop(follower);
    for i in 100..150 {
        put(&client, &format!("k{i}"), "v");
    }
    fleet.restart(follower);
    // The restarted follower's own disk already holds what it had acknowledged.
    assert!(fleet.status(follower).last_index >= acked);
    let commit = fleet.leader_status().commit;
    fleet.wait_applied(commit);

    // A full-fleet restart: every replica comes back from its own directory.
    for id in 1..=3 {
        fleet.stop(id);
    }
    for id in 1..=3 {
        fleet.restart(id);
    }
    let client = fleet.client();
    for i in 0..150 {
        assert_eq!(
            get(&client, &format!("k{i}")),
            Some(b"v".to_vec()),
            "acknowledged k{i} lost after restart"
        );
    }
}

fn small_snapshots(rc: &mut vaultfleet::ReplicaConfig) {
    rc.snapshot_entries_min = 40;
    rc.compaction_entries_retained = 5;
}

#[test]
fn a_snapshot_brings_a_far_behind_replica_up_to_date() {
    let config = FleetConfig::new(
        THREE
            .iter()
            .map(|&(id, dc)| MemberSpec::voter(id, dc))
            .collect(),
    );
    let mut fleet = Fleet::start_with(config, Store::Sled, small_snapshots);
    let client = fleet.client();
    let leader = fleet.wait_leader();
    let behind = (1..=3).find(|&id| id != leader).unwrap_or(1);
    put(&client, "early", "1");
    fleet.stop(behind);
    for i in 0..400 {
        put(&client, &format!("k{i}"), "v");
    }
    let leader_status = fleet.leader_status();
    let behind_last = {
        let log = vaultfleet::SledLog::open(fleet.dir_of(behind)).expect("reopen");
        vaultfleet::LogStore::hard_state(&log)
            .commit
            .max(raft::Storage::last_index(&log).unwrap_or(0))
    };
    assert!(
        leader_status.first_index > behind_last + 1,
        "the leader compacted past what the stopped replica holds ({} > {})",
        leader_status.first_index,
        behind_last + 1
    );
    fleet.restart(behind);
    fleet.wait_applied(leader_status.commit);
    let s = fleet.status(behind);
    assert!(
        s.first_index > behind_last + 1,
        "the replica caught up from a snapshot, not from entries"
    );
    // And it serves the state after a leadership hand-over to it (a new client: the
    // old one holds the stopped node's handle).
    let client = fleet.client();
    client
        .transfer_leader(behind)
        .expect("transfer to the caught-up replica");
    assert_eq!(get(&client, "k399"), Some(b"v".to_vec()));
    assert_eq!(get(&client, "early"), Some(b"1".to_vec()));
}

/// A transport that sends snapshots in the background, as a network transport
/// sending in chunks does: each one's first send fails (reported `Failed`
/// later, nothing delivered), the next is delivered and reported `Written`
/// later, from another thread.
struct BackgroundSnapshots {
    inner: Arc<dyn Transport>,
    failed_once: AtomicBool,
    reports: Arc<AtomicU64>,
}

impl Transport for BackgroundSnapshots {
    fn send(&self, envelope: Envelope) -> Result<(), TransportError> {
        self.inner.send(envelope)
    }

    fn send_snapshot(&self, envelope: Envelope, done: SnapshotDone) -> Result<(), TransportError> {
        let fail = !self.failed_once.swap(true, Ordering::SeqCst);
        let inner = Arc::clone(&self.inner);
        let reports = Arc::clone(&self.reports);
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            if fail {
                done(SnapshotSent::Failed);
            } else {
                let sent = match inner.send(envelope) {
                    Ok(()) => SnapshotSent::Written,
                    Err(_) => SnapshotSent::Failed,
                };
                done(sent);
            }
            reports.fetch_add(1, Ordering::SeqCst);
        });
        Ok(())
    }
}

/// Issue 14: a transport reports a snapshot's outcome when the send has ended,
/// not when it was queued; the node hands it to raft through its mailbox, so a
/// failed send is retried and a written one lets the peer go on.
#[test]
fn a_snapshot_reported_later_by_its_transport_still_brings_a_replica_up() {
    let config = FleetConfig::new(
        THREE
            .iter()
            .map(|&(id, dc)| MemberSpec::voter(id, dc))
            .collect(),
    );
    let reports = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&reports);
    let wrap: harness::Wrap = Arc::new(move |_, inner| {
        Arc::new(BackgroundSnapshots {
            inner,
            failed_once: AtomicBool::new(false),
            reports: Arc::clone(&counted),
        })
    });
    let mut fleet = Fleet::start_wrapped(config, Store::Sled, small_snapshots, wrap);
    let client = fleet.client();
    let leader = fleet.wait_leader();
    let behind = (1..=3).find(|&id| id != leader).unwrap_or(1);
    put(&client, "early", "1");
    fleet.stop(behind);
    for i in 0..400 {
        put(&client, &format!("k{i}"), "v");
    }
    // The leader compacted past the stopped replica: only a snapshot brings it up.
    fleet.restart(behind);
    let commit = fleet.leader_status().commit;
    fleet.wait_applied(commit);
    assert!(
        reports.load(Ordering::SeqCst) >= 2,
        "the first snapshot failed and a second one was written"
    );
    let client = fleet.client();
    client.transfer_leader(behind).expect("transfer");
    assert_eq!(get(&client, "k399"), Some(b"v".to_vec()));
}

#[test]
fn learner_add_promote_and_voter_removal_while_proposals_flow() {
    let mut fleet = Fleet::start(&THREE, Store::Mem);
    let client = fleet.client();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (client, stop, written) = (client.clone(), Arc::clone(&stop), Arc::clone(&written));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let i = written.load(Ordering::Relaxed);
                client
                    .propose(KvStore::put(format!("w{i}"), "x"))
                    .expect("proposal during membership change");
                written.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    fleet.boot(4, false);
    let reply = client
        .change_membership(MembershipChange::AddLearner {
            id: 4,
            datacenter: "dc-d".into(),
        })
        .expect("add learner");
    assert!(matches!(reply, Reply::MembershipChanged(ref cs) if cs.learners.contains(&4)));
    client.promote_when_caught_up(4).expect("promote");
    if fleet.wait_leader() == 3 {
        client
            .transfer_leader(1)
            .expect("move leadership off replica 3");
    }
    let reply = client
        .change_membership(MembershipChange::Remove { id: 3 })
        .expect("remove voter 3");
    match reply {
        Reply::MembershipChanged(cs) => {
            let mut voters = cs.voters.clone();
            voters.sort_unstable();
            assert_eq!(voters, vec![1, 2, 4]);
        }
        other => panic!("unexpected reply {other:?}"),
    }
    fleet.stop(3);
    let before = written.load(Ordering::Relaxed);
    fleet.wait_until("proposals to keep flowing", |_| {
        written.load(Ordering::Relaxed) > before + 20
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer thread");
    let commit = fleet.leader_status().commit;
    fleet.wait_applied(commit);
    assert_eq!(fleet.status(4).voters, vec![1, 2, 4]);
    assert_eq!(get(&client, "w0"), Some(b"x".to_vec()));
    let members = fleet.status(4);
    assert!(members.learners.is_empty());
}

#[test]
fn leadership_transfers_on_request() {
    let fleet = Fleet::start(&THREE, Store::Mem);
    let client = fleet.client();
    put(&client, "a", "1");
    let leader = fleet.wait_leader();
    let target = (1..=3).find(|&id| id != leader).unwrap_or(1);
    client.transfer_leader(target).expect("transfer");
    assert_eq!(fleet.wait_leader(), target);
    put(&client, "b", "2");
}

#[test]
fn a_linearizable_read_after_a_write_sees_it() {
    let fleet = Fleet::start(&THREE, Store::Mem);
    let writer = fleet.client();
    let reader = fleet.client();
    for i in 0..50 {
        let v = format!("v{i}");
        put(&writer, "key", &v);
        assert_eq!(
            get(&reader, "key"),
            Some(v.into_bytes()),
            "read {i} missed the acknowledged write"
        );
    }
}

#[test]
fn a_retried_command_is_applied_once() {
    let fleet = Fleet::start(&THREE, Store::Mem);
    let client = fleet.client();
    let leader = fleet.handle(fleet.wait_leader());
    let request = |sequence: u64, value: &str| {
        let mut r = Request::new();
        r.client_id = client.session();
        r.sequence = sequence;
        r.acked_below = 1;
        r.command = KvStore::put("counter", value).into();
        r
    };
    let send = |r: Request| {
        leader
            .propose(r)
            .expect("submitted")
            .wait(harness::WAIT)
            .expect("answered")
    };
    let first = send(request(1, "one"));
    let second = send(request(2, "two"));
    let retry = send(request(1, "one"));
    assert_eq!(
        first, retry,
        "the retry returned the first response, from the session table"
    );
    assert_eq!(
        first,
        Ok(Reply::Applied(KvStore::decode_response_bytes(None).into()))
    );
    assert!(matches!(second, Ok(Reply::Applied(_))));
    assert_eq!(
        get(&client, "counter"),
        Some(b"two".to_vec()),
        "the retry was not applied again"
    );
    // Once acknowledged, a replay is rejected outright.
    let mut stale = request(1, "one");
    stale.acked_below = 3;
    let replay = send(stale);
    assert!(
        matches!(replay, Err(RequestError::Stale { .. })),
        "{replay:?}"
    );
}

#[test]
fn five_replicas_in_three_datacenters_keep_committing_with_one_datacenter_cut_off() {
    let fleet = Fleet::start(&FIVE_IN_THREE, Store::Mem);
    fleet.net.set_datacenter_delays(
        &fleet.config,
        std::time::Duration::ZERO,
        std::time::Duration::from_millis(2),
    );
    let client = fleet.client();
    put(&client, "before", "1");
    // Cut off the leader's datacenter: the worst case.
    let leader = fleet.wait_leader();
    let dc = fleet
        .config
        .datacenter_of(leader)
        .unwrap_or("dc-a")
        .to_string();
    let cut: Vec<u64> = fleet.config.datacenters()[dc.as_str()].clone();
    fleet.net.isolate(&cut);
    for i in 0..100 {
        put(&client, &format!("k{i}"), "during");
    }
    let new_leader = fleet
        .handles()
        .iter()
        .map(|h| h.status())
        .find(|s| s.role == raft::StateRole::Leader && !cut.contains(&s.id))
        .map(|s| s.id);
    assert!(new_leader.is_some(), "a replica outside {dc} leads");
    assert_eq!(get(&client, "before"), Some(b"1".to_vec()));
    fleet.net.heal();
    let commit = fleet.status(new_leader.unwrap_or(1)).commit;
    fleet.wait_applied(commit);
}

#[test]
fn leadership_moves_to_a_preferred_datacenter() {
    let config = FleetConfig::new(
        FIVE_IN_THREE
            .iter()
            .map(|&(id, dc)| MemberSpec::voter(id, dc))
            .collect(),
    )
    .with_preferred_leader_datacenters(["dc-c"]);
    let fleet = Fleet::start_with(config, Store::Mem, |_| {});
    let client = fleet.client();
    put(&client, "a", "1");
    fleet.wait_until("leader in dc-c", |f| f.wait_leader() == 5);
}
