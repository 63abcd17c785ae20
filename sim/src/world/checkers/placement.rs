//! Leader placement after the preferred datacenters moved: what the engine
//! promises (`docs/architecture.md`, "Preferred leader datacenters";
//! `docs/operations.md`, "a leader outside them hands over when it can") is
//! that every `leader_rebalance_ticks` a leader outside the preferred
//! datacenters hands leadership to a voter inside them that has matched its
//! last index and is recently active. The election bias
//! (`election_ticks_extra_unpreferred`) is only a bias and is not checked.
//!
//! So once the liveness phase has healed the faults, the rolling restart has
//! finished (every member runs the operator's final list), the clients are
//! idle and every member has applied the same commit (each voter is then
//! matched and active), a leader outside the final preferred datacenters must
//! hand over within [`Simulation::placement_bound_us`] whenever a running voter
//! of the final configuration sits in one of them. With no such voter there is
//! nothing to hand over to, and nothing is checked.
//!
//! Transfers that failed or were declined before the fleet converged (a
//! target that took `MsgTimeoutNow` and did not win, one that declined while
//! it restored a snapshot) may still leave a voter out of rebalancing then,
//! for up to [`DECLINED_PERIODS_MAX`] periods: the bound starts after the
//! shortest such wait the leader reports for the voters it could hand over to
//! (`Replica::rebalance_back_off_ticks`), not after the longest possible one,
//! so a hand-over that comes late without a reason is still caught. Seed
//! 40740 of the streamed vault swarm found six transfers to a partitioned
//! preferred voter, which never got `MsgTimeoutNow`, counted as its failures:
//! the engine no longer counts those, and the checker now sees a back-off.
//!
//! The reported back-off is checked against the simulator's own counts, so a
//! miscount in the engine cannot lengthen the bound unseen. A failed transfer
//! backs its target off for an election timeout, and needs a `MsgTimeoutNow`
//! the leader sent it in its term (raft-rs sends one only to a caught-up
//! target); a decline backs the replica that declined off for a rebalance
//! period, and needs a decline it sent in that term echoing the number of a
//! `MsgTimeoutNow` the leader sent it (copies of one decline count once: the
//! leader takes one decline per transfer). `n` of either justify at most `2^(n-1)` of its periods,
//! [`DECLINED_PERIODS_MAX`] at most ([`back_off_allowed_ticks`]); a leader
//! reporting more than the longer of the two breaks "a leader backs off only
//! a voter it asked to campaign".

use vaultfleet::replica::DECLINED_PERIODS_MAX;

use crate::workload::Workload;
use crate::world::preference::label;
use crate::world::Simulation;

impl<W: Workload> Simulation<W> {
    /// How long a converged, healed fleet may keep its leader outside the
    /// preferred datacenters once no back-off holds it: ten rounds of the
    /// engine's rebalance period plus an election timeout, in virtual µs.
    pub(in crate::world) fn placement_bound_us(&self) -> u64 {
        let rebalance = Self::leader_rebalance_ticks();
        let ticks = 10 * (rebalance + self.opts.election_ticks as u64);
        ticks * self.opts.tick_ms * 1000
    }

    /// The longest back-off the simulator's counts allow leader `me` in
    /// `term` against voter `t`, with the counts behind it: failed transfers
    /// in election timeouts, declines in rebalance periods, as the engine
    /// counts them.
    fn back_off_allowed(&self, me: u64, t: u64, term: u64) -> (u64, u64, u64) {
        let key = (me, t, term);
        let sent = self.prefer.timeout_now.get(&key).copied().unwrap_or(0);
        let declined = self.prefer.declines_taken(me, t, term);
        let failed = back_off_allowed_ticks(sent, (self.opts.election_ticks as u64).max(1));
        let refused = back_off_allowed_ticks(declined, Self::leader_rebalance_ticks().max(1));
        (failed.max(refused), sent, declined)
    }

    /// Called when the liveness phase has converged with idle clients: true
    /// once leader placement is settled too (or not applicable). While a
    /// leader outside the preferred datacenters could still hand over, false;
    /// past [`Self::placement_bound_us`] it is a violation.
    pub(in crate::world) fn placement_settled(&mut self) -> bool {
        let preferred = self.prefer.current.clone();
        if preferred.is_empty() {
            return true;
        }
        if self.rollout_pending().is_some() {
            self.prefer.misplaced_since = None;
            return false;
        }
        let inside = |h: usize| preferred.contains(&label(self.hosts[h].dc));
        let targets: Vec<u64> = self
            .voter_hosts()
            .into_iter()
            .filter(|&h| self.hosts[h].replica.is_some() && inside(h))
            .map(|h| self.hosts[h].id)
            .collect();
        if targets.is_empty() {
            return true;
        }
        let leader = self.leader_host();
        if leader.is_some_and(inside) {
            return true;
        }
        // (voter, the back-off the leader reports, the leader, its term)
        let reported: Vec<(u64, u64, u64, u64)> = leader
            .and_then(|h| self.hosts[h].replica.as_ref())
            .map(|r| {
                let (me, term) = (r.id(), r.status().term);
                targets
                    .iter()
                    .map(|&t| (t, r.rebalance_back_off_ticks(t), me, term))
                    .collect()
            })
            .unwrap_or_default();
        for &(t, ticks, me, term) in &reported {
            let (allowed, sent, declined) = self.back_off_allowed(me, t, term);
            if ticks > allowed {
                self.violate(
                    "a leader backs off only a voter it asked to campaign",
                    format!(
                        "leader {me} (term {term}) leaves voter {t} out of rebalancing for \
                         {ticks} more ticks, but sent it {sent} MsgTimeoutNow and got {declined} \
                         declines from it in this term, which justify {allowed} ticks at most"
                    ),
                );
            }
        }
        if self.prefer.misplaced_since.is_none() {
            self.stats.placement_waits += 1;
            // The leader hands over no sooner than the first of the targets
            // leaves its back-off (transfers that failed before convergence).
            let back_off_ticks = reported
                .iter()
                .map(|&(_, ticks, ..)| ticks)
                .min()
                .unwrap_or(0);
            self.prefer.misplaced_back_off_us = back_off_ticks
                .saturating_mul(self.opts.tick_ms)
                .saturating_mul(1000);
        }
        let since = *self.prefer.misplaced_since.get_or_insert(self.now);
        let bound = self
            .prefer
            .misplaced_back_off_us
            .saturating_add(self.placement_bound_us());
        // The wait gets its whole bound, even past the liveness bound.
        self.liveness_deadline = self.liveness_deadline.max(since + bound + 100_000);
        if self.now >= since + bound {
            let leader = leader.map(|h| {
                let host = &self.hosts[h];
                format!(
                    "replica {} in {} (its own list {:?})",
                    host.id,
                    label(host.dc),
                    host.running_preferred
                )
            });
            self.violate(
                "the leader moves to a preferred datacenter",
                format!(
                    "{} ms after the fleet converged (of which {} ms the leader's back-off) the \
                     leader is {leader:?}, outside the preferred datacenters {preferred:?}, though \
                     voters {targets:?} in them are running and caught up",
                    bound / 1000,
                    self.prefer.misplaced_back_off_us / 1000
                ),
            );
        }
        false
    }
}

/// The longest back-off, in ticks, that `counted` messages of one kind
/// between a leader and one voter in one term justify (`MsgTimeoutNow`s for
/// failed transfers, declines for declined ones), with back-off periods of
/// `period` ticks: none without one; each one in a row doubles the wait, from
/// one period up to [`DECLINED_PERIODS_MAX`].
pub(in crate::world) fn back_off_allowed_ticks(counted: u64, period: u64) -> u64 {
    if counted == 0 {
        return 0;
    }
    let doublings = u32::try_from(counted - 1).unwrap_or(u32::MAX).min(63);
    let periods = (1u64 << doublings).min(DECLINED_PERIODS_MAX);
    period.saturating_mul(periods)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_timeout_now_justifies_no_back_off() {
        assert_eq!(back_off_allowed_ticks(0, 20), 0);
        assert_eq!(back_off_allowed_ticks(0, u64::MAX), 0);
    }

    #[test]
    fn each_timeout_now_doubles_the_allowance_up_to_the_engines_maximum() {
        assert_eq!(back_off_allowed_ticks(1, 20), 20);
        assert_eq!(back_off_allowed_ticks(2, 20), 40);
        assert_eq!(back_off_allowed_ticks(3, 20), 80);
        assert_eq!(back_off_allowed_ticks(7, 20), 20 * DECLINED_PERIODS_MAX);
        assert_eq!(back_off_allowed_ticks(8, 20), 20 * DECLINED_PERIODS_MAX);
        assert_eq!(
            back_off_allowed_ticks(u64::MAX, 20),
            20 * DECLINED_PERIODS_MAX
        );
        assert_eq!(back_off_allowed_ticks(u64::MAX, u64::MAX), u64::MAX);
    }
}
