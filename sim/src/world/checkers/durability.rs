//! Durability (every acknowledged write is in every converged replica, as the
//! workload's [`check_final`](crate::Workload::check_final) defines it) and
//! convergence (converged replicas hold the same state, byte for byte).

use crate::workload::Workload;
use vaultfleet::StateMachine;

use crate::world::Simulation;

impl<W: Workload> Simulation<W> {
    /// Runs at the end of a completed liveness phase.
    pub(in crate::world) fn check_durability_and_convergence(&mut self) {
        let mut converged: Option<(u64, Vec<u8>)> = None;
        for h in self.alive() {
            let Some(r) = self.hosts[h].replica.as_ref() else {
                continue;
            };
            let id = self.hosts[h].id;
            let machine = &r.state_machine().inner;
            if let Err(detail) = self.workload.check_final(machine, &self.history) {
                self.violate("durability", format!("replica {id}: {detail}"));
                return;
            }
            // Every converged replica must hold the same state, byte for byte.
            let state = match machine.snapshot() {
                Ok(state) => state,
                Err(e) => {
                    self.violate(
                        "converged replicas hold the same state",
                        format!("replica {id} cannot capture its state: {e}"),
                    );
                    return;
                }
            };
            match &converged {
                Some((first, s)) if *s != state => {
                    let first = *first;
                    self.violate(
                        "converged replicas hold the same state",
                        format!(
                            "replicas {first} and {id} applied the same log to different states"
                        ),
                    );
                    return;
                }
                Some(_) => {}
                None => converged = Some((id, state)),
            }
        }
    }
}
