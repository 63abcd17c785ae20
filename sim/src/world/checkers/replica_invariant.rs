//! The caller's own invariant over each replica's state machine
//! ([`Simulation::check_each_replica`]).

use crate::workload::Workload;
use crate::world::Simulation;

impl<W: Workload> Simulation<W> {
    /// Runs the caller's check, if any, on replica `h`'s state machine.
    pub(in crate::world) fn check_replica_invariant(&mut self, h: usize) {
        if let Some(check) = self.extra_check.as_mut() {
            if let Some(r) = self.hosts[h].replica.as_ref() {
                if let Err(detail) = check(self.hosts[h].id, &r.state_machine().inner) {
                    self.violate("the workload's replica invariant", detail);
                }
            }
        }
    }
}
