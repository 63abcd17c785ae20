//! The two phases of a run: the safety phase under faults, then the liveness
//! phase, which heals the faults and waits for every pending operation to finish
//! and every replica to converge.

use super::events::Event;
use super::{Phase, Simulation};
use crate::workload::Workload;

impl<W: Workload> Simulation<W> {
    pub(super) fn start_liveness(&mut self) {
        self.phase = Phase::Liveness;
        self.liveness_deadline = self
            .now
            .saturating_add(self.opts.liveness_ms.saturating_mul(1000));
        self.note(|| "liveness phase: faults healed, no new operations".to_string());
        if self.opts.heal_for_liveness {
            self.heal();
            let tick = self.opts.tick_ms * 1000;
            for h in 0..self.hosts.len() {
                self.hosts[h].disk.disarm();
                self.hosts[h].hsm.set_available(true);
                self.hosts[h].tick_us = tick;
                if self.hosts[h].replica.is_none() && self.hosts[h].lost.is_none() {
                    self.schedule(0, Event::Restart { host: h });
                }
            }
        }
        // Operations started under faults get the whole liveness bound.
        let deadline = self.liveness_deadline;
        for c in &mut self.clients {
            if let Some(p) = c.current.as_mut() {
                p.deadline = p.deadline.max(deadline);
            }
        }
        self.poll_done();
    }

    /// The running members (voters and learners of the fleet's configuration;
    /// removed replicas left out, even if their old disk runs again).
    pub(super) fn alive(&self) -> Vec<usize> {
        self.member_hosts()
            .into_iter()
            .filter(|&h| self.hosts[h].replica.is_some())
            .collect()
    }

    pub(super) fn poll_done(&mut self) {
        if self.phase != Phase::Liveness {
            return;
        }
        let idle = self.clients.iter().all(|c| c.current.is_none());
        let alive = self.alive();
        let commits: Vec<(u64, u64)> = alive
            .iter()
            .filter_map(|&h| self.hosts[h].replica.as_ref())
            .map(|r| {
                let s = r.status();
                (s.commit, s.applied)
            })
            .collect();
        let max_commit = commits.iter().map(|c| c.0).max().unwrap_or(0);
        let members = self.member_hosts();
        let lost = members
            .iter()
            .filter(|&&h| self.hosts[h].lost.is_some())
            .count();
        let converged = alive.len() + lost == members.len()
            && commits
                .iter()
                .all(|&(c, a)| c == max_commit && a == max_commit);
        // Converged: the leader must also have found the preferred
        // datacenters, if the operator moved them (the placement checker).
        if idle && converged && self.placement_settled() {
            self.phase = Phase::Done;
        } else {
            // Keep polling while the world runs.
            self.schedule(50_000, Event::Poll);
        }
    }

    /// Voters of the fleet's configuration lost for good.
    pub(super) fn lost_count(&self) -> usize {
        self.voter_hosts()
            .into_iter()
            .filter(|&h| self.hosts[h].lost.is_some())
            .count()
    }
}
