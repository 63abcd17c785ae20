//! Moving the preferred leader datacenters while the chaos schedule runs.
//!
//! The engine reads `ReplicaConfig::preferred_leader_datacenters` once, when a
//! replica starts: there is no call that changes it on a running replica, and
//! the node daemon's configuration file has no such setting yet. So an operator
//! moves the preference the only way there is: it writes the new list into
//! the configuration of every replica it runs (members, and a new host still
//! joining), then restarts the running replicas **one at a
//! time**, waiting for each to be back before the next (a rolling restart). A
//! replica down at the time, or started later (a crash, a new host), starts
//! with the new list anyway. The simulated operator does exactly that, at
//! [`Faults::prefer_rate`](crate::Faults) per chaos step; the rollout goes on
//! into the liveness phase until every member runs the new list.
//!
//! Its checker is [`checkers::placement`](super::checkers).

use std::collections::{BTreeMap, BTreeSet};

use raft::prelude::{Message, MessageType};
use rand::Rng;
use vaultfleet::replica::TRANSFER_DECLINED;

use super::events::Event;
use super::{Phase, Simulation};
use crate::options::MembershipBug;
use crate::workload::Workload;

/// Virtual time between two restarts of a rollout, in µs.
const ROLLOUT_GAP_US: u64 = 1_000_000;
/// How often a rollout checks whether the replica it restarted is back, in µs.
const ROLLOUT_POLL_US: u64 = 100_000;
/// How long a replica restarted by the rollout stays down, in µs (a range).
const RESTART_US: (u64, u64) = (50_000, 500_000);

/// The operator's preference and the state of its rollout.
#[derive(Default)]
pub(in crate::world) struct Preference {
    /// The list the operator last wrote (empty: no preference).
    pub(in crate::world) current: Vec<String>,
    /// A [`Event::Rollout`] is scheduled.
    rollout_scheduled: bool,
    /// The host the rollout restarted last, until it is back.
    waiting_for: Option<usize>,
    /// Since when (virtual µs) the converged fleet's leader has been outside
    /// the preferred datacenters, for the placement checker.
    pub(in crate::world) misplaced_since: Option<u64>,
    /// The back-off (virtual µs) the leader reported then for the voters it
    /// could hand over to: the shortest wait before one becomes eligible.
    pub(in crate::world) misplaced_back_off_us: u64,
    /// The simulator's own count of `MsgTimeoutNow`s, by (leader, transferee,
    /// term): each one sent, and each extra copy the network made. A failed
    /// transfer needs one behind it (the placement checker).
    pub(in crate::world) timeout_now: BTreeMap<(u64, u64, u64), u64>,
    /// The transfer numbers those `MsgTimeoutNow`s carried (their `index`),
    /// by the same key.
    pub(in crate::world) timeout_now_numbers: BTreeMap<(u64, u64, u64), BTreeSet<u64>>,
    /// The transfer numbers that transfer declines (`TRANSFER_DECLINED`)
    /// echoed, by (leader, the replica that declined, term). A leader takes
    /// one decline per transfer it started, so copies of one count once.
    pub(in crate::world) declines: BTreeMap<(u64, u64, u64), BTreeSet<u64>>,
}

impl Preference {
    /// One more copy of `message` on the wire, counted if it is a
    /// `MsgTimeoutNow` or a transfer decline.
    pub(in crate::world) fn count_transfer_message(&mut self, message: &Message) {
        if message.get_msg_type() == MessageType::MsgTimeoutNow {
            let key = (message.from, message.to, message.term);
            *self.timeout_now.entry(key).or_default() += 1;
            self.timeout_now_numbers
                .entry(key)
                .or_default()
                .insert(message.index);
        } else if message.get_msg_type() == MessageType::MsgTransferLeader
            && message.context.as_ref() == TRANSFER_DECLINED
        {
            self.declines
                .entry((message.to, message.from, message.term))
                .or_default()
                .insert(message.index);
        }
    }

    /// The declines leader `me` could have taken from `t` in `term`: the
    /// distinct numbers they echoed that a `MsgTimeoutNow` it sent `t` in
    /// that term carried (0 never: it numbers no transfer).
    pub(in crate::world) fn declines_taken(&self, me: u64, t: u64, term: u64) -> u64 {
        let key = (me, t, term);
        let (Some(declined), Some(sent)) =
            (self.declines.get(&key), self.timeout_now_numbers.get(&key))
        else {
            return 0;
        };
        declined.intersection(sent).filter(|&&n| n != 0).count() as u64
    }
}

/// The datacenter label of datacenter `dc` (as in the fleet's configuration).
pub(in crate::world) fn label(dc: usize) -> String {
    format!("dc-{dc}")
}

impl<W: Workload> Simulation<W> {
    /// One draw of the operator's preference moves, with the chaos schedule.
    pub(in crate::world) fn preference_step(&mut self) {
        let rate = self.opts.faults.prefer_rate;
        if self.phase != Phase::Safety || rate <= 0.0 || !self.rng.gen_bool(rate) {
            return;
        }
        // `FleetConfig::validate` wants each preferred datacenter to hold a
        // voter: pick among those of the current configuration.
        let dcs: Vec<usize> = self
            .voter_hosts()
            .into_iter()
            .map(|h| self.hosts[h].dc)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if dcs.is_empty() {
            return;
        }
        let mut next: Vec<String> = match self.rng.gen_range(0..5) {
            0 => Vec::new(),
            1 if dcs.len() >= 3 => {
                let a = self.rng.gen_range(0..dcs.len());
                let b = (a + self.rng.gen_range(1..dcs.len())) % dcs.len();
                vec![label(dcs[a]), label(dcs[b])]
            }
            _ => vec![label(dcs[self.rng.gen_range(0..dcs.len())])],
        };
        next.sort();
        if next == self.prefer.current {
            return;
        }
        // The planted bug: the leader's host is left for last, and forgotten.
        let skipped = (self.opts.membership_bug == MembershipBug::PreferenceSkipsLeader)
            .then(|| self.leader_host())
            .flatten();
        for h in self.operated_hosts() {
            if Some(h) != skipped {
                self.hosts[h].preferred = next.clone();
            }
        }
        self.prefer.current = next.clone();
        self.stats.preference_moves += 1;
        self.note(|| {
            format!("operator: preferred leader datacenters now {next:?}; rolling restart")
        });
        self.schedule_rollout(0);
    }

    fn schedule_rollout(&mut self, after: u64) {
        if !self.prefer.rollout_scheduled {
            self.prefer.rollout_scheduled = true;
            self.schedule(after, Event::Rollout);
        }
    }

    /// The hosts the operator runs: every one not removed, including a new
    /// host whose `AddLearner` has not been applied yet (swarm seed 11 with
    /// `--prefer 0.02`: a host added just before a move kept the old list when
    /// only the configuration's members got the new one, then joined, led, and
    /// never handed over).
    fn operated_hosts(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&h| !self.churn.removed.contains_key(&self.hosts[h].id))
            .collect()
    }

    /// A host the operator runs whose replica runs a list other than its
    /// configuration's: the rollout still has to restart it.
    pub(in crate::world) fn rollout_pending(&self) -> Option<usize> {
        self.operated_hosts().into_iter().find(|&h| {
            let host = &self.hosts[h];
            host.replica.is_some() && host.running_preferred != host.preferred
        })
    }

    /// The next step of the rolling restart: once the replica restarted last
    /// is back (or gone for good, or removed), restart the next member that
    /// runs an old list.
    pub(in crate::world) fn on_rollout(&mut self) {
        self.prefer.rollout_scheduled = false;
        if self.phase == Phase::Done {
            return;
        }
        if let Some(w) = self.prefer.waiting_for {
            let host = &self.hosts[w];
            let removed = self.churn.removed.contains_key(&host.id);
            if !removed && host.replica.is_none() && host.lost.is_none() {
                self.schedule_rollout(ROLLOUT_POLL_US);
                return;
            }
            self.prefer.waiting_for = None;
        }
        let Some(h) = self.rollout_pending() else {
            return;
        };
        // A clean stop between events: every write of the replica's last
        // Ready cycle was synced; the next open reads the durable state.
        if !self.stop_replica(h) {
            return;
        }
        self.hosts[h].generation += 1;
        self.hosts[h].requests.clear();
        self.hosts[h].restart_pending = true;
        let id = self.hosts[h].id;
        let list = self.hosts[h].preferred.clone();
        self.note(|| {
            format!("operator: restarts replica {id} with preferred datacenters {list:?}")
        });
        self.stats.rollout_restarts += 1;
        let after = self.rng.gen_range(RESTART_US.0..=RESTART_US.1);
        self.schedule(after, Event::Restart { host: h });
        self.prefer.waiting_for = Some(h);
        self.schedule_rollout(ROLLOUT_GAP_US);
        if self.phase == Phase::Liveness {
            // A restart is a disruption like a healed fault: the liveness
            // bound counts from the rollout's last one.
            let bound = self.opts.liveness_ms.saturating_mul(1000);
            self.liveness_deadline = self.liveness_deadline.max(self.now.saturating_add(bound));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: MessageType, from: u64, to: u64, term: u64, index: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.from = from;
        m.to = to;
        m.term = term;
        m.index = index;
        if kind == MessageType::MsgTransferLeader {
            m.context = TRANSFER_DECLINED.to_vec().into();
        }
        m
    }

    /// The placement checker's count of the declines a leader could take:
    /// one per transfer number it stamped on a `MsgTimeoutNow` to that
    /// replica in that term, however many copies; never number 0, nor one it
    /// did not send, nor another term's or another leader's.
    #[test]
    fn declines_count_once_per_number_the_leader_sent() {
        let mut p = Preference::default();
        let (leader, t, term) = (1, 3, 7);
        for n in [4, 4, 9] {
            p.count_transfer_message(&message(MessageType::MsgTimeoutNow, leader, t, term, n));
        }
        assert_eq!(
            p.timeout_now[&(leader, t, term)],
            3,
            "copies of MsgTimeoutNow count"
        );
        for (from, to, at, n) in [
            (t, leader, term, 4),
            (t, leader, term, 4),     // a copy
            (t, leader, term, 0),     // no number
            (t, leader, term, 5),     // a number never sent
            (t, leader, term + 1, 9), // another term
            (t, 2, term, 9),          // another leader
        ] {
            p.count_transfer_message(&message(MessageType::MsgTransferLeader, from, to, at, n));
        }
        assert_eq!(p.declines_taken(leader, t, term), 1);
        p.count_transfer_message(&message(MessageType::MsgTransferLeader, t, leader, term, 9));
        assert_eq!(p.declines_taken(leader, t, term), 2);
        assert_eq!(p.declines_taken(leader, 2, term), 0);
    }
}
