//! The checkers, one file per invariant, as in TigerBeetle's simulator. Those
//! that look at a replica run after every event that touched it
//! ([`Simulation::check_replica`]); those over the whole run at its end
//! ([`Simulation::final_checks`]); storage and liveness checks where their
//! event happens.
//!
//! * [`leaders`]: at most one leader per term;
//! * [`agreement`]: every replica applies the same command at the same index;
//! * [`replica_invariant`]: the caller's own invariant over each replica's state machine;
//! * [`storage`]: damaged storage is detected, never served, and an honest crash
//!   raises no false alarm;
//! * [`liveness`]: pending operations finish once faults heal;
//! * [`history`]: the workload's invariant and linearizability of the client history;
//! * [`durability`]: acknowledged writes survive, and converged replicas hold the
//!   same state;
//! * [`membership`]: a removed replica never counts toward a quorum, and its old
//!   disk never rejoins;
//! * [`placement`]: after the preferred datacenters moved and the fleet healed
//!   and converged, the leader hands over to a preferred datacenter in bound.

mod agreement;
mod durability;
mod history;
mod leaders;
mod liveness;
mod membership;
mod placement;
mod replica_invariant;
mod storage;

use super::Simulation;
use crate::workload::Workload;

impl<W: Workload> Simulation<W> {
    /// The checkers that look at replica `h` after an event touched it.
    pub(in crate::world) fn check_replica(&mut self, h: usize) {
        let Some(replica) = self.hosts[h].replica.as_ref() else {
            return;
        };
        let status = replica.status();
        self.stats.max_term = self.stats.max_term.max(status.term);
        self.stats.max_commit = self.stats.max_commit.max(status.commit);
        self.check_one_leader_per_term(&status);
        self.check_same_command_at_each_index();
        self.check_replica_invariant(h);
        self.check_membership(h, &status);
    }

    /// The end-of-run checks. The history's own checks (the workload invariant,
    /// linearizability) always run; durability and convergence only when the
    /// liveness phase completed (`complete`). Returns a stall, if the majority is
    /// lost for good.
    pub(in crate::world) fn final_checks(&mut self, complete: bool) -> Option<String> {
        let n = self.voter_hosts().len().max(1);
        let stall = (self.lost_count() > (n - 1) / 2).then(|| {
            format!(
                "{} of {n} replicas lost for good: no majority left, the fleet stalls as it must",
                self.lost_count()
            )
        });
        if !self.check_history() {
            return stall;
        }
        if !complete || stall.is_some() || self.phase != super::Phase::Done {
            return stall;
        }
        self.check_durability_and_convergence();
        None
    }
}
