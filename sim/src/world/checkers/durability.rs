//! Durability (every acknowledged write is in every converged replica, as the
//! workload's [`check_final`](crate::Workload::check_final) defines it) and
//! convergence (converged replicas hold the same state, byte for byte).

use crate::workload::{Converged, Workload};
use vaultfleet::StateMachine;

use crate::world::membership::Plan;
use crate::world::Simulation;

impl<W: Workload> Simulation<W> {
    /// Runs at the end of a completed liveness phase.
    pub(in crate::world) fn check_durability_and_convergence(&mut self) {
        // The workload's own check of the converged fleet, once, on the
        // first converged replica's state.
        let (mut listed_ahead, mut unlisted_ahead) = (Vec::new(), Vec::new());
        if let Some(plan) = &self.churn.plan {
            listed_ahead.extend(self.churn.announced_in.iter().copied());
            if let Plan::Shrink { old, .. } = plan {
                listed_ahead.push(*old);
            }
            unlisted_ahead.extend(self.churn.announced_out.iter().copied());
        }
        let fleet = Converged {
            voters: self.churn.voters.iter().copied().collect(),
            learners: self.churn.learners.iter().copied().collect(),
            listed_ahead,
            unlisted_ahead,
            now_us: self.now,
        };
        let first = self
            .alive()
            .into_iter()
            .find(|&h| self.hosts[h].replica.is_some());
        if let Some(h) = first {
            let id = self.hosts[h].id;
            let Some(r) = self.hosts[h].replica.as_ref() else {
                return;
            };
            let machine = &r.state_machine().inner;
            if let Err(detail) = self.workload.check_converged(machine, &fleet) {
                self.violate(
                    "the workload's converged fleet",
                    format!("replica {id}: {detail}"),
                );
                return;
            }
        }
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
