//! Membership: the configuration the fleet committed is tracked from the
//! replica that applied the most, and two invariants are checked after every
//! event that touched a replica:
//!
//! * **a removed replica never counts toward a quorum:** whenever a leader's
//!   commit index advances while its configuration stays the same, the new
//!   commit index must be acknowledged (by `MsgAppendResponse`s of the
//!   leader's term delivered in the simulated network, or by the leader's own
//!   log) by a majority of that configuration's voters *not counting removed
//!   replicas*;
//! * **a removed replica's old disk never rejoins:** once a removal has been
//!   seen committed, the id never appears in the configuration again, and the
//!   removed replica never leads once its own applied configuration leaves it
//!   out (before it learns of its removal it may win a term under the old
//!   configuration: Raft's removed-server disruption, safe by the log rule).

use vaultfleet::replica::Status;

use crate::workload::Workload;
use crate::world::Simulation;

impl<W: Workload> Simulation<W> {
    /// Runs the membership checkers on replica `h`, whose status is `status`.
    pub(in crate::world) fn check_membership(&mut self, h: usize, status: &Status) {
        self.track_config(status);
        self.check_removed_never_rejoins(h, status);
        self.check_quorum_without_removed(h, status);
    }

    /// Keeps the newest applied configuration.
    fn track_config(&mut self, status: &Status) {
        if status.applied <= self.churn.config_at || status.voters.is_empty() {
            return;
        }
        let changed = status.voters.iter().ne(self.churn.voters.iter())
            || status.learners.iter().ne(self.churn.learners.iter());
        self.churn.config_at = status.applied;
        if !changed {
            return;
        }
        self.churn.voters = status.voters.iter().copied().collect();
        self.churn.learners = status.learners.iter().copied().collect();
        let (voters, learners, at) = (
            status.voters.clone(),
            status.learners.clone(),
            status.applied,
        );
        self.note(|| format!("configuration at {at}: voters {voters:?} learners {learners:?}"));
        let mut back = None;
        for (&id, removal) in self.churn.removed.iter_mut() {
            let present = self.churn.voters.contains(&id) || self.churn.learners.contains(&id);
            if !present {
                removal.seen_out = true;
            } else if removal.seen_out && back.is_none() {
                back = Some(id);
            }
        }
        if let Some(id) = back {
            self.violate(
                "a removed replica's old disk never rejoins",
                format!(
                    "replica {id} was removed, and the configuration applied at {at} lists it \
                     again (voters {voters:?}, learners {learners:?})"
                ),
            );
        }
    }

    fn check_removed_never_rejoins(&mut self, h: usize, status: &Status) {
        let id = self.hosts[h].id;
        let Some(removal) = self.churn.removed.get(&id).copied() else {
            return;
        };
        // A removed replica that has not applied its own removal yet (the new
        // leader stopped sending to it before it learned the commit) may
        // still win a later term under the configuration it knows: the
        // removed-server disruption of the Raft paper (§6), not a safety
        // break. It needs a majority of the old configuration whose logs are
        // no fresher than its own, so it holds every committed entry; the
        // same-command and durability checkers watch what it commits, and it
        // steps down the moment it applies its removal. What must never happen
        // is leading once its own configuration says it is out (swarm seed
        // 3851 of sim ba973e6 flagged the first case: a false alarm).
        let knows = !status.voters.contains(&id) && !status.learners.contains(&id);
        if removal.seen_out
            && knows
            && status.role == raft::StateRole::Leader
            && status.term > removal.term
        {
            let restarted = self.hosts[h].generation > removal.generation;
            self.violate(
                "a removed replica's old disk never rejoins",
                format!(
                    "replica {id}, removed by term {}, leads term {} (restarted since: {restarted})",
                    removal.term, status.term
                ),
            );
        }
    }

    fn check_quorum_without_removed(&mut self, h: usize, status: &Status) {
        if status.role != raft::StateRole::Leader {
            self.churn.leader_seen.remove(&h);
            return;
        }
        let previous = self
            .churn
            .leader_seen
            .insert(h, (status.term, status.commit, status.voters.clone()));
        let Some((term, commit, voters)) = previous else {
            return;
        };
        // Only a commit decided under one unchanged configuration is judged.
        if term != status.term || voters != status.voters || status.commit <= commit {
            return;
        }
        let c = status.commit;
        let acks = self.churn.acks.get(&h);
        let acked = |id: u64| {
            id == status.id
                || acks
                    .and_then(|a| a.at(status.term, id))
                    .is_some_and(|i| i >= c)
        };
        let majority = status.voters.len() / 2 + 1;
        let backers: Vec<u64> = status
            .voters
            .iter()
            .copied()
            .filter(|id| !self.churn.removed.contains_key(id))
            .filter(|&id| acked(id))
            .collect();
        if backers.len() < majority {
            let removed_counted: Vec<u64> = status
                .voters
                .iter()
                .copied()
                .filter(|id| self.churn.removed.contains_key(id))
                .filter(|&id| acked(id))
                .collect();
            self.violate(
                "a removed replica never counts toward a quorum",
                format!(
                    "leader {} of term {} committed index {c} under voters {:?} with only {:?} \
                     of the members acknowledging it ({majority} needed); removed replicas \
                     that hold it: {removed_counted:?}",
                    status.id, status.term, status.voters, backers
                ),
            );
        }
    }
}
