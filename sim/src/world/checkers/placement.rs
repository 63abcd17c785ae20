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

use vaultfleet::replica::ReplicaConfig;
#[cfg(doc)]
use vaultfleet::replica::DECLINED_PERIODS_MAX;

use crate::workload::Workload;
use crate::world::preference::label;
use crate::world::Simulation;

impl<W: Workload> Simulation<W> {
    /// How long a converged, healed fleet may keep its leader outside the
    /// preferred datacenters once no back-off holds it: ten rounds of the
    /// engine's rebalance period plus an election timeout, in virtual µs.
    pub(in crate::world) fn placement_bound_us(&self) -> u64 {
        let rebalance = ReplicaConfig::new(1).leader_rebalance_ticks;
        let ticks = 10 * (rebalance + self.opts.election_ticks as u64);
        ticks * self.opts.tick_ms * 1000
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
        if self.prefer.misplaced_since.is_none() {
            self.stats.placement_waits += 1;
            // The leader hands over no sooner than the first of the targets
            // leaves its back-off (transfers that failed before convergence).
            let back_off_ticks = leader
                .and_then(|h| self.hosts[h].replica.as_ref())
                .and_then(|r| targets.iter().map(|&t| r.rebalance_back_off_ticks(t)).min())
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
