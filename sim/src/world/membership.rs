//! Membership under faults: the simulated operator changes the fleet through
//! the engine's own calls, one change at a time, while the chaos schedule runs.
//!
//! * **Grow:** a new host with a new replica id (never reused), its own disk and
//!   HSM, starts empty; `AddLearner` on the leader, then `Promote` once the
//!   leader's progress shows it caught up (the engine refuses it earlier).
//! * **Shrink:** `Remove` a voter, never below [`VOTERS_MIN`] voters and never
//!   leaving a minority of the remaining voters lost for good.
//! * **Replace** (`docs/operations.md`, "Replacing a replica"): a voter's disk is
//!   destroyed (or its host taken away); a new id joins as a learner, is
//!   promoted once caught up, then the old id is removed. If the old host comes
//!   back later with its old disk, the fleet must ignore it.
//! * **Transfer:** the leader hands leadership to another voter.
//!
//! The workload hears of each change ([`Workload::membership_change`]): before
//! a new replica's `AddLearner`, and after a plain removal.
//!
//! The configuration the fleet has committed is tracked from the replica that
//! applied the most; removals are recorded once that configuration no longer
//! lists the removed id. Its checkers live in
//! [`checkers::membership`](super::checkers).

use std::collections::{BTreeMap, BTreeSet};

use raft::eraftpb::MessageType;
use raft::prelude::Message;
use rand::Rng;
use vaultfleet::replica::{Completion, MembershipChange, RequestId};

use super::{Phase, Simulation};
use crate::disk::Disk;
use crate::options::MembershipBug;
use crate::workload::{MemberChange, Workload};

/// Terms whose append acknowledgements the quorum checker keeps per leader
/// host.
const ACK_TERMS_KEPT: usize = 4;

/// The append acknowledgements one leader host received: per term (the
/// newest [`ACK_TERMS_KEPT`]), per sender id, the highest index acknowledged.
#[derive(Clone, Debug, Default)]
pub(in crate::world) struct Acks {
    terms: BTreeMap<u64, BTreeMap<u64, u64>>,
}

impl Acks {
    /// Notes that `from` acknowledged `index` at `term`.
    pub(in crate::world) fn note(&mut self, term: u64, from: u64, index: u64) {
        let i = self.terms.entry(term).or_default().entry(from).or_insert(0);
        *i = (*i).max(index);
        while self.terms.len() > ACK_TERMS_KEPT {
            self.terms.pop_first();
        }
    }

    /// The highest index `from` acknowledged at `term`, if any.
    pub(in crate::world) fn at(&self, term: u64, from: u64) -> Option<u64> {
        self.terms.get(&term)?.get(&from).copied()
    }
}

/// The fewest voters a removal may leave.
pub(in crate::world) const VOTERS_MIN: usize = 3;
/// Hosts a run may add beyond its initial replicas (each costs events).
const HOSTS_ADDED_MAX: usize = 8;
/// Voters a run may grow to beyond its initial replicas.
const VOTERS_GROWTH_MAX: usize = 2;
/// How long the operator waits for an admin call's answer before trying again.
const ADMIN_CALL_TIMEOUT_US: u64 = 3_000_000;
/// A learner whose matched index is this close to the leader's last index is
/// promoted (the engine's own bound, `promotion_lag_entries_max`, is 64).
const PROMOTION_LAG_MAX: u64 = 16;

/// One membership plan of the simulated operator; its steps run one admin call
/// at a time.
#[derive(Clone, Debug)]
pub(in crate::world) enum Plan {
    /// Add a new replica (`new` once its host exists) and promote it.
    Grow { new: Option<u64> },
    /// Remove the voter or learner `old`; then, if `then_replace` names a
    /// replica whose replacement `old` was (a joiner lost before its
    /// promotion), replace that one again with a fresh host.
    Shrink { old: u64, then_replace: Option<u64> },
    /// Replace `old` (its disk destroyed): add `new`, promote it, remove `old`.
    Replace { old: u64, new: Option<u64> },
}

/// An admin call proposed on a leader and not yet answered.
pub(in crate::world) struct AdminCall {
    pub(in crate::world) request: RequestId,
    pub(in crate::world) deadline: u64,
}

/// A removal the operator saw committed.
#[derive(Clone, Copy, Debug)]
pub(in crate::world) struct Removal {
    /// The host's replica generation when the removal was seen: a higher one
    /// means its old disk was started again.
    pub(in crate::world) generation: u64,
    /// The highest term seen when the removal was seen.
    pub(in crate::world) term: u64,
    /// The fleet's tracked configuration no longer lists it (false only under
    /// [`MembershipBug::CountRemovedVoter`], whose operator never proposed it).
    pub(in crate::world) seen_out: bool,
}

/// The membership state of a run: the tracked configuration, the operator's
/// plan, and what the checkers need.
pub(in crate::world) struct Churn {
    /// Voters of the newest configuration any replica applied.
    pub(in crate::world) voters: BTreeSet<u64>,
    /// Learners of that configuration.
    pub(in crate::world) learners: BTreeSet<u64>,
    /// The applied index that configuration was seen at.
    pub(in crate::world) config_at: u64,
    pub(in crate::world) plan: Option<Plan>,
    pub(in crate::world) call: Option<AdminCall>,
    /// Removed ids, never to count or serve again.
    pub(in crate::world) removed: BTreeMap<u64, Removal>,
    /// Per leader host: the append acknowledgements it received.
    pub(in crate::world) acks: BTreeMap<usize, Acks>,
    /// Per leader host: term, commit and voters at its last check.
    pub(in crate::world) leader_seen: BTreeMap<usize, (u64, u64, Vec<u64>)>,
    /// Replicas announced joining to the workload (its epochs list them)
    /// that are not yet voters and not removed again.
    pub(in crate::world) announced_in: BTreeSet<u64>,
    /// Replicas announced leaving at their replacement's joining (the
    /// epochs no longer list them) whose removal is not yet seen.
    pub(in crate::world) announced_out: BTreeSet<u64>,
    initial: usize,
}

impl Churn {
    pub(in crate::world) fn new(voters: Vec<u64>) -> Self {
        Self {
            initial: voters.len(),
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
            config_at: 0,
            plan: None,
            call: None,
            removed: BTreeMap::new(),
            acks: BTreeMap::new(),
            leader_seen: BTreeMap::new(),
            announced_in: BTreeSet::new(),
            announced_out: BTreeSet::new(),
        }
    }

    /// A voter or learner of the tracked configuration, not removed.
    pub(in crate::world) fn is_member(&self, id: u64) -> bool {
        (self.voters.contains(&id) || self.learners.contains(&id))
            && !self.removed.contains_key(&id)
    }
}

impl<W: Workload> Simulation<W> {
    /// Hosts of the current members (voters and learners, removed ids left out).
    pub(in crate::world) fn member_hosts(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&h| self.churn.is_member(self.hosts[h].id))
            .collect()
    }

    /// Hosts of the current voters (removed ids left out).
    pub(in crate::world) fn voter_hosts(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&h| {
                let id = self.hosts[h].id;
                self.churn.voters.contains(&id) && !self.churn.removed.contains_key(&id)
            })
            .collect()
    }

    /// Host `h` is gone for good, or will be refused at its next start.
    pub(in crate::world) fn unhealthy(&self, h: usize) -> bool {
        self.hosts[h].lost.is_some() || self.hosts[h].damaged.is_some()
    }

    /// The running leader of the highest term, if any.
    pub(in crate::world) fn leader_host(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for (h, host) in self.hosts.iter().enumerate() {
            if self.churn.removed.contains_key(&host.id) {
                continue;
            }
            if let Some(r) = host.replica.as_ref().filter(|r| r.is_leader()) {
                let term = r.status().term;
                if best.is_none_or(|(t, _)| term > t) {
                    best = Some((term, h));
                }
            }
        }
        best.map(|(_, h)| h)
    }

    /// One step of the operator, drawn with the chaos schedule.
    pub(in crate::world) fn membership_step(&mut self) {
        if self.phase != Phase::Safety {
            return;
        }
        let f = self.opts.faults.clone();
        if f.transfer_rate > 0.0 && self.rng.gen_bool(f.transfer_rate) {
            self.transfer_leadership();
        }
        if self.churn.plan.is_none() {
            if f.replace_rate > 0.0 && self.rng.gen_bool(f.replace_rate) {
                self.start_replacement();
            } else if f.membership_rate > 0.0 && self.rng.gen_bool(f.membership_rate) {
                self.start_change();
            }
        }
        if let Some(call) = &self.churn.call {
            if self.now < call.deadline {
                return;
            }
            self.churn.call = None;
        }
        self.advance_plan();
    }

    fn transfer_leadership(&mut self) {
        let Some(l) = self.leader_host() else { return };
        let leader = self.hosts[l].id;
        let targets: Vec<u64> = self
            .voter_hosts()
            .into_iter()
            .filter(|&h| self.hosts[h].replica.is_some())
            .map(|h| self.hosts[h].id)
            .filter(|&id| id != leader)
            .collect();
        if targets.is_empty() {
            return;
        }
        let to = targets[self.rng.gen_range(0..targets.len())];
        if let Some(r) = self.hosts[l].replica.as_mut() {
            r.transfer_leader(to);
        }
        self.stats.transfers += 1;
        self.note(|| format!("operator: transfer leadership {leader} -> {to}"));
        self.pump(l);
    }

    /// Unhealthy voters among `voters` (host indexes).
    fn unhealthy_count(&self, voters: &[usize]) -> usize {
        voters.iter().filter(|&&h| self.unhealthy(h)).count()
    }

    fn start_replacement(&mut self) {
        let voters = self.voter_hosts();
        let healthy: Vec<usize> = voters
            .iter()
            .copied()
            .filter(|&h| !self.unhealthy(h))
            .collect();
        // The old replica is dead until it is removed: keep the rest a majority.
        if healthy.is_empty() || self.unhealthy_count(&voters) + 1 > (voters.len() - 1) / 2 {
            return;
        }
        let h = healthy[self.rng.gen_range(0..healthy.len())];
        let old = self.hosts[h].id;
        self.crash_host(h, "its host fails: the operator replaces it");
        let destroy = self.opts.sealed && self.rng.gen_bool(0.5);
        if destroy {
            // An emptied data directory: its sealed store must refuse it.
            self.hosts[h].disk = Disk::new(self.opts.disk_bug);
            self.hosts[h].images.clear();
            self.hosts[h].damaged = Some("its disk destroyed (an empty directory)".into());
            self.hosts[h].damaged_file = false;
            self.note(|| format!("disk of replica {old} destroyed; replacing it"));
        } else {
            // The host is taken away; it may come back later with its old disk,
            // which the fleet must then ignore.
            self.note(|| format!("host of replica {old} taken away; replacing it"));
        }
        self.stats.replacements += 1;
        self.churn.plan = Some(Plan::Replace { old, new: None });
    }

    fn start_change(&mut self) {
        let voters = self.voter_hosts();
        let cap = self.churn.initial + VOTERS_GROWTH_MAX;
        let grow = if voters.len() <= VOTERS_MIN {
            true
        } else if voters.len() >= cap {
            false
        } else {
            self.rng.gen_bool(0.5)
        };
        if grow {
            self.churn.plan = Some(Plan::Grow { new: None });
            return;
        }
        let candidates: Vec<usize> = voters
            .iter()
            .copied()
            .filter(|&h| {
                let rest: Vec<usize> = voters.iter().copied().filter(|&v| v != h).collect();
                self.unhealthy_count(&rest) <= (rest.len() - 1) / 2
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let h = candidates[self.rng.gen_range(0..candidates.len())];
        let old = self.hosts[h].id;
        self.note(|| format!("operator: remove voter {old}"));
        self.churn.plan = Some(Plan::Shrink {
            old,
            then_replace: None,
        });
    }

    /// Adds a host with a new id in datacenter `dc` and starts its replica on an
    /// empty store. Returns its id.
    fn add_host(&mut self, dc: usize) -> u64 {
        let k = self.hosts.len();
        let id = k as u64 + 1;
        let mut host = super::hosts::fresh_host(&self.opts, &mut self.rng, id, dc);
        // Its configuration carries the operator's current preference.
        host.preferred = self.prefer.current.clone();
        self.hosts.push(host);
        // Its links: those of the first host in its datacenter (round robin: host `dc`).
        let twin = dc.min(k - 1);
        for row in &mut self.base_latency {
            let l = row[twin];
            row.push(l);
        }
        let mut row = self.base_latency[twin].clone();
        row[k] = self.base_latency[twin][twin];
        self.base_latency.push(row);
        self.note(|| format!("operator: new host for replica {id} in dc-{dc}"));
        self.start_host(k, false);
        id
    }

    fn propose(&mut self, l: usize, change: MembershipChange) {
        let request = self.next_request;
        self.next_request += 1;
        let Some(r) = self.hosts[l].replica.as_mut() else {
            return;
        };
        let result = r.change_membership(request, change.clone());
        let leader = self.hosts[l].id;
        match result {
            Ok(()) => {
                self.churn.call = Some(AdminCall {
                    request,
                    deadline: self.now + ADMIN_CALL_TIMEOUT_US,
                });
                self.stats.membership_changes += 1;
                self.note(|| format!("operator: {change:?} proposed on {leader}"));
            }
            Err(e) => self.note(|| format!("operator: {change:?} refused by {leader}: {e}")),
        }
        self.pump(l);
    }

    /// A completion for the operator's admin call: consumed (true) or not ours.
    pub(in crate::world) fn admin_completion(&mut self, completion: &Completion) -> bool {
        if self.churn.call.as_ref().map(|c| c.request) != Some(completion.id) {
            return false;
        }
        self.churn.call = None;
        let outcome = match &completion.result {
            Ok(_) => "applied".to_string(),
            Err(e) => format!("failed: {e}"),
        };
        self.note(|| format!("operator: membership change {outcome}"));
        true
    }

    /// Records that `old` is removed.
    fn record_removal(&mut self, old: u64, seen_out: bool) {
        let h = (old - 1) as usize;
        let removal = Removal {
            generation: self.hosts[h].generation,
            term: self.stats.max_term,
            seen_out,
        };
        self.churn.removed.insert(old, removal);
        self.churn.announced_in.remove(&old);
        self.churn.announced_out.remove(&old);
        self.note(|| format!("operator: replica {old} removed"));
    }

    /// The next step of `new`'s joining: add it as a learner, promote it once
    /// caught up. Returns true when it is a voter.
    fn join_step(&mut self, l: usize, new: u64) -> bool {
        if self.churn.voters.contains(&new) {
            self.churn.announced_in.remove(&new);
            return true;
        }
        if !self.churn.learners.contains(&new) {
            let dc = self.hosts[(new - 1) as usize].dc;
            let datacenter = format!("dc-{dc}");
            self.propose(
                l,
                MembershipChange::AddLearner {
                    id: new,
                    datacenter,
                },
            );
            return false;
        }
        let h = (new - 1) as usize;
        if self.hosts[h].replica.is_none() {
            return false;
        }
        let Some(r) = self.hosts[l].replica.as_ref() else {
            return false;
        };
        let caught_up = r
            .status()
            .followers
            .iter()
            .any(|p| p.id == new && p.matched > 0 && p.lag <= PROMOTION_LAG_MAX);
        if caught_up {
            self.propose(l, MembershipChange::Promote { id: new });
        }
        false
    }

    /// The next step of removing `old`. Returns true once the configuration no
    /// longer lists it.
    fn remove_step(&mut self, l: usize, old: u64) -> bool {
        if !self.churn.voters.contains(&old) && !self.churn.learners.contains(&old) {
            return true;
        }
        if self.hosts[l].id == old {
            // The engine refuses to remove its leader: hand leadership over first.
            self.transfer_away(l, old);
            return false;
        }
        if self.churn.voters.contains(&old) {
            let rest: Vec<usize> = self
                .voter_hosts()
                .into_iter()
                .filter(|&h| self.hosts[h].id != old)
                .collect();
            if rest.len() < VOTERS_MIN || self.unhealthy_count(&rest) > (rest.len() - 1) / 2 {
                return false;
            }
        }
        self.propose(l, MembershipChange::Remove { id: old });
        false
    }

    /// Asks leader host `l` (replica `old`) to hand leadership to another
    /// running voter.
    fn transfer_away(&mut self, l: usize, old: u64) {
        let to = self
            .voter_hosts()
            .into_iter()
            .map(|h| self.hosts[h].id)
            .find(|&id| id != old && self.hosts[(id - 1) as usize].replica.is_some());
        if let (Some(to), Some(r)) = (to, self.hosts[l].replica.as_mut()) {
            r.transfer_leader(to);
            self.pump(l);
        }
    }

    fn advance_plan(&mut self) {
        let Some(plan) = self.churn.plan.clone() else {
            return;
        };
        // A joining replica lost for good is removed instead; the replica it
        // was replacing (already out of the published fleet) is then
        // replaced again.
        let (joining, replacing) = match plan {
            Plan::Grow { new } => (new, None),
            Plan::Replace { old, new } => (new, Some(old)),
            Plan::Shrink { .. } => (None, None),
        };
        if let Some(new) = joining {
            if self.unhealthy((new - 1) as usize) && !self.churn.voters.contains(&new) {
                if replacing.is_some() {
                    self.stats.replacements_resumed += 1;
                }
                self.churn.plan = Some(Plan::Shrink {
                    old: new,
                    then_replace: replacing,
                });
                return;
            }
        }
        let Some(l) = self.leader_host() else { return };
        if let Plan::Shrink { old, .. } = plan {
            if self.opts.membership_bug == MembershipBug::CountRemovedVoter {
                // The bug: the tool reports the removal without proposing it
                // (after handing leadership over, as for a real removal).
                if self.hosts[l].id == old {
                    self.transfer_away(l, old);
                } else {
                    self.record_removal(old, false);
                    self.churn.plan = None;
                    self.workload.clock(self.now);
                    self.workload
                        .membership_change(&MemberChange::Removed { id: old });
                }
                return;
            }
        }
        match plan {
            Plan::Grow { new: None } | Plan::Replace { new: None, .. } => {
                let reused = (self.opts.membership_bug == MembershipBug::OldDiskRejoins)
                    .then(|| {
                        self.churn.removed.iter().find_map(|(&id, _)| {
                            self.hosts[(id - 1) as usize]
                                .replica
                                .is_some()
                                .then_some(id)
                        })
                    })
                    .flatten();
                let new = match reused {
                    // The bug: an old id (and its old disk) comes back.
                    Some(id) => id,
                    None if self.hosts.len() >= self.opts.replicas + HOSTS_ADDED_MAX => {
                        // No host left to add: the plan is dropped, but a
                        // replica replaced again (already out of the
                        // published fleet) is removed instead.
                        self.churn.plan = match plan {
                            Plan::Replace { old, .. }
                                if self.churn.announced_out.contains(&old) =>
                            {
                                Some(Plan::Shrink {
                                    old,
                                    then_replace: None,
                                })
                            }
                            _ => None,
                        };
                        return;
                    }
                    None => {
                        let dc = match plan {
                            Plan::Replace { old, .. } => self.hosts[(old - 1) as usize].dc,
                            _ => self.rng.gen_range(
                                0..self.opts.datacenters.clamp(1, self.opts.replicas.max(1)),
                            ),
                        };
                        self.add_host(dc)
                    }
                };
                let replacing = match plan {
                    Plan::Replace { old, .. } => Some(old),
                    _ => None,
                };
                self.churn.plan = Some(match replacing {
                    Some(old) => Plan::Replace {
                        old,
                        new: Some(new),
                    },
                    None => Plan::Grow { new: Some(new) },
                });
                // The operator publishes the fleet's next epoch (the new
                // replica's keys in, a replaced one's out) before `add-learner`.
                let datacenter = format!("dc-{}", self.hosts[(new - 1) as usize].dc);
                self.churn.announced_in.insert(new);
                self.churn.announced_out.extend(replacing);
                self.workload.clock(self.now);
                self.workload.membership_change(&MemberChange::Joining {
                    id: new,
                    datacenter,
                    replacing,
                });
                self.join_step(l, new);
            }
            Plan::Grow { new: Some(new) } => {
                if self.join_step(l, new) {
                    self.churn.plan = None;
                }
            }
            Plan::Replace {
                old,
                new: Some(new),
            } => {
                if self.join_step(l, new) && self.remove_step(l, old) {
                    self.record_removal(old, true);
                    self.churn.plan = None;
                }
            }
            Plan::Shrink { old, then_replace } => {
                if self.remove_step(l, old) {
                    self.record_removal(old, true);
                    self.churn.plan = then_replace.map(|old| Plan::Replace { old, new: None });
                    self.workload.clock(self.now);
                    self.workload
                        .membership_change(&MemberChange::Removed { id: old });
                }
            }
        }
    }

    /// A delivered append acknowledgement, kept for the quorum checker. Kept
    /// per term: one of a higher term than the receiver's leads nowhere when
    /// the receiver refuses it (raft-rs drops a response from a replica
    /// that left the configuration), and must not hide the acknowledgements
    /// the receiver still leads by (a removed replica whose late transfer
    /// campaign failed answered at its higher term: a false alarm).
    pub(in crate::world) fn note_ack(&mut self, to: usize, message: &Message) {
        if message.get_msg_type() != MessageType::MsgAppendResponse || message.reject {
            return;
        }
        self.churn
            .acks
            .entry(to)
            .or_default()
            .note(message.term, message.from, message.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Swarm seed 5239 (sim 39ac8fd): a removed replica's late transfer
    /// campaign answered the leader at a higher term; the old book reset on
    /// that term and lost the acknowledgements the leader still led by.
    #[test]
    fn an_acknowledgement_of_a_higher_term_keeps_the_lower_terms() {
        let mut acks = Acks::default();
        acks.note(7, 2, 40);
        acks.note(7, 3, 38);
        acks.note(7, 2, 39);
        acks.note(8, 5, 41);
        assert_eq!(acks.at(7, 2), Some(40), "the highest index is kept");
        assert_eq!(acks.at(7, 3), Some(38));
        assert_eq!(acks.at(8, 5), Some(41));
        assert_eq!(acks.at(8, 2), None, "terms are not mixed");
    }

    #[test]
    fn only_the_newest_terms_are_kept() {
        let mut acks = Acks::default();
        for term in 1..=ACK_TERMS_KEPT as u64 + 2 {
            acks.note(term, 2, term * 10);
        }
        assert_eq!(acks.at(1, 2), None);
        assert_eq!(acks.at(2, 2), None);
        assert_eq!(acks.at(3, 2), Some(30));
        assert_eq!(acks.terms.len(), ACK_TERMS_KEPT);
    }
}
