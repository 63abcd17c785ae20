//! Issue 13, finding 8: a storm of well-formed but hostile raft messages from a
//! compromised member never panics a replica nor stops it.
//!
//! Replica 3 of a three-replica fleet on the deterministic core harness is the
//! compromised member: besides its honest traffic, messages in its name with
//! arbitrary types, terms, indexes, commit indexes, entries and snapshots
//! (values drawn near the target's own log, term and commit, where the
//! dangerous edges are, and sometimes far from them) are stepped into
//! replicas 1 and 2, interleaved with honest delivery, ticks and writes.
//!
//! Two properties:
//! * any storm: no replica panics or stops, during the storm or while honest
//!   traffic runs after it;
//! * a storm in which the compromised member never acts as an honest
//!   replica's leader (its appends, heartbeats and snapshots carry a term below
//!   the target's; every other message any term): the fleet also elects a
//!   leader and commits a write afterwards. A member that does lead can break
//!   raft's safety (raft tolerates crashes, not lies: a snapshot claiming a
//!   newer term can make a replica with a shorter log win an election), which
//!   the threat model lists as open; the first property holds for it too.
//!
//! Each case is one `u64` seed; a failing seed is printed, and
//! `HOSTILE_STORM_SEED=<seed>` replays just that one.

use crate::core_harness;

use core_harness::Network;
use proptest::prelude::*;
use raft::prelude::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use vaultfleet::replica::Reply;
use vaultfleet::{KvStore, LogStore};

/// The compromised member.
const HOSTILE: u64 = 3;
/// Hostile messages per storm.
const STORM_MESSAGES: usize = 60;

/// splitmix64: a small, seedable generator (the storm must replay from its seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A value near `base` (an index or term of the target), sometimes 0 or
    /// far away.
    fn near(&mut self, base: u64) -> u64 {
        match self.below(10) {
            0 => 0,
            1 => self.next(),
            2 => u64::MAX - self.below(3),
            3 => (1 << 62) + self.below(3) - 1,
            _ => base.saturating_add(self.below(7)).saturating_sub(3),
        }
    }
}

const TYPES: [MessageType; 19] = [
    MessageType::MsgHup,
    MessageType::MsgBeat,
    MessageType::MsgPropose,
    MessageType::MsgAppend,
    MessageType::MsgAppendResponse,
    MessageType::MsgRequestVote,
    MessageType::MsgRequestVoteResponse,
    MessageType::MsgSnapshot,
    MessageType::MsgHeartbeat,
    MessageType::MsgHeartbeatResponse,
    MessageType::MsgUnreachable,
    MessageType::MsgSnapStatus,
    MessageType::MsgCheckQuorum,
    MessageType::MsgTransferLeader,
    MessageType::MsgTimeoutNow,
    MessageType::MsgReadIndex,
    MessageType::MsgReadIndexResp,
    MessageType::MsgRequestPreVote,
    MessageType::MsgRequestPreVoteResponse,
];

/// The entry types, most often normal.
fn entry_type(rng: &mut Rng) -> EntryType {
    match rng.below(6) {
        0 => EntryType::EntryConfChange,
        1 => EntryType::EntryConfChangeV2,
        _ => EntryType::EntryNormal,
    }
}

fn bytes(rng: &mut Rng, max: u64) -> Vec<u8> {
    (0..rng.below(max + 1)).map(|_| rng.next() as u8).collect()
}

/// One hostile message to `to`, its values drawn near `to`'s state. Unless
/// `may_lead`, appends, heartbeats and snapshots carry a term below `to`'s.
fn hostile_message(rng: &mut Rng, net: &Network, to: u64, may_lead: bool) -> Message {
    let s = net.status(to);
    let mut m = Message::default();
    m.set_msg_type(TYPES[rng.below(TYPES.len() as u64) as usize]);
    m.to = to;
    // The transport authenticates senders (threat model), so the compromised
    // member speaks in its own name; 0 and the target's own id test the checks.
    m.from = match rng.below(20) {
        0 => 0,
        1 => to,
        _ => HOSTILE,
    };
    m.term = if rng.chance(80) {
        s.term.saturating_add(rng.below(3))
    } else {
        rng.near(s.term)
    };
    let leads = matches!(
        m.get_msg_type(),
        MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
    );
    if leads && !may_lead {
        m.term = s.term.saturating_sub(1 + rng.below(2));
    }
    // A member that does not lead also does not burn the term space: one
    // message with a term near INDEX_MAX is adopted (raft adopts every higher
    // term, and a relative bound would partition honest replicas), after which
    // no election fits under the limit. That availability attack by a
    // compromised member is open (docs/threat-model.md); this storm keeps its
    // terms within 2^20 of the target's, or beyond the limit (refused).
    if !may_lead
        && m.term > s.term.saturating_add(1 << 20)
        && m.term <= vaultfleet::replica::INDEX_MAX
    {
        m.term = vaultfleet::replica::INDEX_MAX + 1;
    }
    let anchor = match rng.below(3) {
        0 => s.commit,
        1 => s.last_index,
        _ => s.first_index,
    };
    m.index = rng.near(anchor);
    m.log_term = if rng.chance(70) {
        raft::Storage::term(net.replica(to).store(), m.index).unwrap_or(s.term)
    } else {
        rng.near(s.term)
    };
    let commit_base = if rng.chance(50) {
        s.commit
    } else {
        s.last_index
    };
    m.commit = rng.near(commit_base);
    m.commit_term = rng.near(s.term);
    m.reject = rng.chance(30);
    m.reject_hint = rng.near(s.last_index);
    if rng.chance(5) {
        m.request_snapshot = rng.near(s.last_index);
    }
    if rng.chance(20) {
        m.context = bytes(rng, 8).into();
    }
    let mut entries = Vec::new();
    let mut index = m.index.wrapping_add(1);
    for _ in 0..rng.below(4) {
        let mut e = Entry::default();
        e.set_entry_type(entry_type(rng));
        e.index = if rng.chance(80) {
            index
        } else {
            rng.near(index)
        };
        e.term = if rng.chance(70) {
            m.term
        } else {
            rng.near(m.term)
        };
        e.data = bytes(rng, 16).into();
        e.context = bytes(rng, 8).into();
        entries.push(e);
        index = index.wrapping_add(1);
    }
    m.set_entries(entries.into());
    if m.get_msg_type() == MessageType::MsgSnapshot || rng.chance(5) {
        let mut snap = Snapshot::default();
        snap.data = if rng.chance(70) {
            net.replica(to).store().latest_snapshot().data.clone()
        } else {
            bytes(rng, 32).into()
        };
        let meta = snap.mut_metadata();
        let index_base = if rng.chance(50) {
            s.commit
        } else {
            s.last_index.saturating_add(3)
        };
        meta.index = rng.near(index_base);
        meta.term = if rng.chance(60) {
            m.term
        } else {
            rng.near(m.term)
        };
        let mut cs = ConfState::default();
        cs.voters = vec![1, 2, 3];
        if rng.chance(30) {
            cs.voters = (0..rng.below(4)).map(|_| rng.below(5)).collect();
            cs.learners = (0..rng.below(3)).map(|_| rng.below(5)).collect();
        }
        if rng.chance(10) {
            cs.voters_outgoing = vec![rng.below(5)];
        }
        cs.auto_leave = rng.chance(5);
        meta.set_conf_state(cs);
        m.set_snapshot(snap);
    }
    m
}

/// Prints the seed of a storm that panics.
struct SeedOnPanic(u64);

impl Drop for SeedOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "hostile storm seed {0} failed; replay with HOSTILE_STORM_SEED={0}",
                self.0
            );
        }
    }
}

/// Runs one storm from `seed` and returns the fleet after it, with honest
/// traffic settled; panics on a replica that panics or stops.
fn storm(seed: u64, may_lead: bool) -> Network {
    let mut rng = Rng(seed);
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.elect(1);
    let client = net.register(1);
    let mut sequence = 0;
    for _ in 0..STORM_MESSAGES {
        let to = 1 + rng.below(2);
        let m = hostile_message(&mut rng, &net, to, may_lead);
        // Refused or stepped: either way the replica must not panic.
        let _ = net.replica_mut(to).step(m);
        match rng.below(4) {
            0 => {
                let id = 1 + rng.below(3);
                net.tick(id);
            }
            1 => {
                if let Some(leader) = net
                    .ids()
                    .into_iter()
                    .find(|&id| net.replica(id).is_leader())
                {
                    sequence += 1;
                    let _ = net.propose(leader, client, sequence, sequence, KvStore::put("k", "v"));
                }
            }
            _ => {}
        }
        net.settle();
    }
    assert_running(&net);
    net
}

fn assert_running(net: &Network) {
    for id in net.ids() {
        assert!(
            !net.replica(id).has_failed(),
            "replica {id} stopped: {:?}",
            net.failures
        );
    }
}

/// Any storm: afterwards honest traffic runs without a panic or a stop.
fn any_storm(seed: u64) {
    let _guard = SeedOnPanic(seed);
    let mut net = storm(seed, true);
    net.tick_all(3 * core_harness::test_config(1).election_ticks);
    assert_running(&net);
}

/// A storm in which the compromised member never leads: afterwards the fleet
/// elects a leader and commits.
fn storm_without_lead(seed: u64) {
    let _guard = SeedOnPanic(seed);
    let mut net = storm(seed, false);
    let term = (1..=3).map(|id| net.status(id).term).max().unwrap_or(0);
    let leader = net.elect_among(&[1, 2, 3], term.saturating_sub(1));
    let fresh = net.register(leader);
    let put = net
        .propose(leader, fresh, 1, 1, KvStore::put("after", "storm"))
        .expect("propose after the storm");
    net.settle();
    // Followers learn the write's commit from the leader's next heartbeat.
    net.heartbeat(leader);
    assert!(
        matches!(net.take(put), Some(Ok(Reply::Applied(_)))),
        "the fleet did not commit after the storm"
    );
    assert_running(&net);
    for id in net.ids() {
        assert_eq!(
            net.status(id).applied,
            net.status(leader).commit,
            "replica {id} did not apply the write"
        );
    }
}

/// The seed to run: `HOSTILE_STORM_SEED` when set (to replay a failure), else
/// the one proptest drew.
fn seed_or_replay(drawn: u64) -> u64 {
    std::env::var("HOSTILE_STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(drawn)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn hostile_messages_never_panic_or_stop_a_replica(seed in any::<u64>()) {
        any_storm(seed_or_replay(seed));
    }

    #[test]
    fn the_fleet_still_commits_after_a_storm_from_a_member_that_does_not_lead(seed in any::<u64>()) {
        storm_without_lead(seed_or_replay(seed));
    }
}
